import sys,collections,re
# inclusive share of functions (by substring) within a thread's samples
want=sys.argv[3].split(',')
thread=sys.argv[2]
c=collections.Counter(); tot=0
for line in open(sys.argv[1]):
    s,n=line.rsplit(' ',1); n=int(n)
    fr=s.split(';')
    tot+=n
    seen=set()
    for f in fr:
        for w in want:
            if w in f and w not in seen: seen.add(w); c[w]+=n
print('total',tot)
for w in want: print(f"{100*c[w]/tot:5.1f}% {w}")
