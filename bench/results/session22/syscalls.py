import sys,collections,re
c=collections.Counter(); comm=None; frames=[]; tot=0
def flush():
    global frames
    if frames and frames[0][1]=='[kernel.kallsyms]':
        key='?'
        for sym,dso in frames:
            m=re.match(r'(__x64_sys_\w+|__do_sys_\w+|asm_exc_page_fault|asm_sysvec_\w+|asm_common_interrupt|ret_from_fork\w*|schedule_tail|irqentry_exit_to_user_mode|exit_to_user_mode\w*)',sym)
            if m: key=m.group(1); break
        c[(comm,key)]+=1
    frames=[]
for line in open(sys.argv[1]):
    line=line.rstrip('\n')
    if not line.strip(): flush(); continue
    if line[0] not in ' \t':
        flush(); comm=line.split()[0]; tot+=1; continue
    m=re.match(r'\s*[0-9a-f]+ (.*?)(\+0x[0-9a-f]+)? \((.*)\)$',line)
    if m: frames.append((m.group(1),m.group(3).split('/')[-1]))
flush()
print('total samples',tot)
for k,v in c.most_common(25): print(f"{100*v/tot:5.1f}% {k}")
