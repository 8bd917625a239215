#!/bin/bash
# `bench filter` on PostgreSQL again, now with a deployment's defaults (the
# first runs, pgfilter.sh, had the suite's minute-long page time: the bench
# started its registry with the test stack's settings): 100,000 agents,
# planner statistics taken after the load, 50 calls a case, alternating,
# two rounds. /work/rel-base2: 30f26aa's registry-service and
# crypto-service (the session's start) beside this build's bench;
# /work/rel-new2: this build's three (the window's per-row probe).
#   bash pgfilter2.sh
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
for round in 1 2; do
  for side in base2 new2; do
    date -u +"%H:%M:%S $side round $round"
    /work/rel-$side/bench filter --db postgres --writes 0 --calls 50 \
      --out "$here/pgfilter-$side-$round.json" > "$here/pgfilter-$side-$round.txt" 2>&1
  done
done
