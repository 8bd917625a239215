import sys,collections,re
# per sample: leaf frame's dso, and thread comm
c=collections.Counter(); th=collections.Counter(); thd=collections.Counter()
comm=None; first=True; tot=0
for line in open(sys.argv[1]):
    line=line.rstrip('\n')
    if not line.strip(): first=True; continue
    if line[0] not in ' \t':
        comm=line.split()[0]; first=True; continue
    if first:
        first=False
        m=re.search(r'\(([^()]*)\)$',line.strip())
        dso=m.group(1).split('/')[-1] if m else '?'
        c[dso]+=1; th[comm]+=1; thd[(comm,dso)]+=1; tot+=1
print('total',tot)
for k,v in c.most_common(12): print(f"{100*v/tot:5.1f}% {k}")
print('-- by thread')
for k,v in th.most_common(6): print(f"{100*v/tot:5.1f}% {k}")
print('-- thread x dso')
for k,v in thd.most_common(14): print(f"{100*v/tot:5.1f}% {k}")
