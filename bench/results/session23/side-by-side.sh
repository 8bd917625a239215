#!/usr/bin/env bash
set -u
OUT=/work/main/bench/results/session23
for i in 1 2 3 4 5; do
  echo "round $i $(date +%T)"
  /work/rel-base/bench registry --db sqlite --request-ids --out $OUT/base-run$i.json > $OUT/base-run$i.txt 2>&1
  /work/rel-new2/bench registry --db sqlite --request-ids --out $OUT/new-run$i.json > $OUT/new-run$i.txt 2>&1
  (cd /tmp/seed-python && OUT=$OUT/peer-run$i.json ./bench.sh sqlite > $OUT/peer-run$i.txt 2>&1)
done
echo "done $(date +%T)"
