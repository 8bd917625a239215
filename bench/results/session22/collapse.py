# perf script output (one process) -> folded stacks, the thread's name first:
#   python3 collapse.py SCRIPT FOLDED
import collections
import re
import sys

stacks = collections.Counter()
frames = []
thread = None
for line in open(sys.argv[1]):
    line = line.rstrip('\n')
    if not line.strip():
        if frames:
            stacks[thread + ';' + ';'.join(reversed(frames))] += 1
        frames = []
        continue
    if line[0] not in ' \t':
        thread = line.split()[0]
        frames = []
        continue
    parts = line.strip().split(' ', 1)
    if len(parts) == 2:
        symbol = re.sub(r'\+0x[0-9a-f]+ \(.*\)$', '', parts[1])
        frames.append(re.sub(r' \(.*\)$', '', symbol))
if frames:
    stacks[thread + ';' + ';'.join(reversed(frames))] += 1
with open(sys.argv[2], 'w') as out:
    for stack, count in stacks.items():
        out.write(f"{stack} {count}\n")
