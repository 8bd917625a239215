import sys,collections,re
cats=[('malloc',r'^_?mi_|malloc|^free|_int_free|cfree|realloc'),('memmove',r'memmove|memcpy|memset'),('sqlite',r'^sqlite3|^pcache|^wal|^btree|^vdbe|^pager'),('sha',r'sha2|sha256|compress'),('kernel',r'^\[k\]|^[a-z_0-9]+$'),('serde',r'serde'),('h2/hyper',r'^h2::|hyper|http::'),('prost',r'prost'),('tokio',r'tokio'),('sea',r'sea_query|sea_orm'),('sqlx',r'sqlx')]
tot=0; c2=collections.Counter(); other=collections.Counter()
for line in open(sys.argv[1]):
    s,c=line.rsplit(' ',1); c=int(c); tot+=c
    leaf=s.split(';')[-1]
    for name,p in cats:
        if re.search(p,leaf): c2[name]+=c; break
    else: c2['other']+=c; other[leaf[:90]]+=c
for k,v in c2.most_common(): print(f"{100*v/tot:5.1f}% {k}")
print('--- other leaves')
for k,v in other.most_common(25): print(f"{100*v/tot:5.1f}% {k}")
