import sys, re, collections
stacks=collections.Counter()
cur=[];comm=None
for line in open(sys.argv[1]):
    line=line.rstrip('\n')
    if not line.strip():
        if cur: stacks[';'.join(reversed(cur))]+=1
        cur=[]; continue
    if line[0] not in ' \t':
        comm=line.split()[0]; cur=[]; continue
    parts=line.strip().split(' ',1)
    if len(parts)==2:
        sym=parts[1]
        sym=re.sub(r'\+0x[0-9a-f]+ \(.*\)$','',sym)
        sym=re.sub(r' \(.*\)$','',sym)
        cur.append(sym)
if cur: stacks[';'.join(reversed(cur))]+=1
with open(sys.argv[2],'w') as f:
    for s,c in stacks.items(): f.write(f"{s} {c}\n")
