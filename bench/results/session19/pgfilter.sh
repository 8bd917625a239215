#!/bin/bash
# `bench filter` on PostgreSQL (100,000 agents, planner statistics taken
# after the load, 50 calls a case), the session's start and its build
# alternating, two rounds. /work/rel-base: 30f26aa (the session's start),
# /work/rel-new: this session's build (bench, registry-service and
# crypto-service, release).
#   bash pgfilter.sh
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
for round in 1 2; do
  for side in base new; do
    date -u +"%H:%M:%S $side round $round"
    /work/rel-$side/bench filter --db postgres --writes 0 --calls 50 \
      --out "$here/pgfilter-$side-$round.json" > "$here/pgfilter-$side-$round.txt" 2>&1
  done
done
