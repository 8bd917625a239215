import sys,collections,re
tot=0; inc=collections.Counter()
pat=sys.argv[2] if len(sys.argv)>2 else None
for line in open(sys.argv[1]):
    s,c=line.rsplit(' ',1); c=int(c); tot+=c
    frames=s.split(';')
    seen=set()
    for f in frames:
        f=re.sub(r'<[^<>]*>','',f) if False else f
        if f not in seen:
            seen.add(f); inc[f]+=c
print("total",tot)
for f,c in inc.most_common(400):
    if pat and not re.search(pat,f): continue
    print(f"{100*c/tot:5.1f}% {f[:170]}")
