#!/usr/bin/env bash
# Issue 3 measurements of BENCHMARKS.md, in one session: `bench registry`
# (ours) and the Python peer's bench.sh (measure.py against its own
# uvicorn server), 3 runs each on SQLite and on PostgreSQL (both sides on
# the peer's private PostgreSQL 15 cluster, 127.0.0.1:55432), the
# side-by-side tables (median runs), then `bench versions`.
#
#   bench/issue3.sh [runs]          (from the workspace root; default 3 runs)
#
# Env: CARGO_TARGET_DIR (default target), PEER_SRC (default
# ../shared/peers/seed-python), PEER (its writable copy, default
# /tmp/seed-python), VENV (default /tmp/seed-venv), OUT (default
# bench/results), MAX_WAIT (seconds to wait for a quiet machine before
# each run, default 600).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
RUNS=${1:-3}
T=${CARGO_TARGET_DIR:-$ROOT/target}
PEER_SRC=${PEER_SRC:-$ROOT/../shared/peers/seed-python}
PEER=${PEER:-/tmp/seed-python}
VENV=${VENV:-/tmp/seed-venv}
OUT=${OUT:-bench/results}
MAX_WAIT=${MAX_WAIT:-600}
PG_ADMIN=postgres://seed@127.0.0.1:55432/postgres
LOG=$OUT/issue3-log.txt
mkdir -p "$OUT"
case $OUT in /*) ABS_OUT=$OUT ;; *) ABS_OUT=$ROOT/$OUT ;; esac

cargo build --release --workspace --bins
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV" && "$VENV/bin/pip" install -q -r "$PEER_SRC/requirements.txt"
fi
if [ ! -d "$PEER" ]; then
  cp -r "$PEER_SRC" "$PEER" && chmod -R u+w "$PEER" && ln -s "$VENV" "$PEER/.venv"
fi
"$PEER/pg.sh" start >/dev/null

# The machine is shared: wait (up to MAX_WAIT s) until the 1-minute load
# average is below 1, and log the load each run started with.
quiet() {
  local waited=0
  while awk '{exit !($1 >= 1.0)}' /proc/loadavg && [ "$waited" -lt "$MAX_WAIT" ]; do
    sleep 10; waited=$((waited + 10))
  done
  echo "$(date -u +%FT%TZ) $1: load $(cut -d' ' -f1-3 /proc/loadavg) after waiting ${waited}s" | tee -a "$LOG"
}

for i in $(seq "$RUNS"); do
  quiet "ours sqlite run$i"
  "$T/release/bench" registry --db sqlite --out "$OUT/ours-sqlite-run$i.json"
  quiet "peer sqlite run$i"
  OUT="$ABS_OUT/peer-sqlite-run$i.json" "$PEER/bench.sh" sqlite >/dev/null
  quiet "ours postgres run$i"
  "$T/release/bench" registry --db postgres --postgres-url "$PG_ADMIN" --out "$OUT/ours-postgres-run$i.json"
  quiet "peer postgres run$i"
  OUT="$ABS_OUT/peer-postgres-run$i.json" "$PEER/bench.sh" postgres >/dev/null
done

for db in sqlite postgres; do
  target=30; [ "$db" = postgres ] && target=20
  "$T/release/bench" compare --target "$target" \
    --ours "$OUT"/ours-$db-run*.json --peer "$OUT"/peer-$db-run*.json | tee "$OUT/compare-$db.md"
done

quiet "versions sqlite"
"$T/release/bench" versions --db sqlite --out "$OUT/versions-sqlite.json" | tee "$OUT/versions-sqlite.md"
quiet "versions postgres"
"$T/release/bench" versions --db postgres --postgres-url "$PG_ADMIN" --out "$OUT/versions-postgres.json" | tee "$OUT/versions-postgres.md"
