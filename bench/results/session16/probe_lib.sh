# Sourced by auditprobe.sh and filterprobe.sh.
#
# `cpu_per_call PID COMMAND…`
# runs COMMAND 5 times unmeasured, then 40 times, and prints PID's CPU
# (user + system, from /proc/PID/stat) per measured run in µs.
cpu_per_call() {
  local pid=$1; shift
  for i in 1 2 3 4 5; do "$@"; done
  local before after
  before=$(awk '{print $14+$15}' "/proc/$pid/stat")
  for i in $(seq 40); do "$@"; done
  after=$(awk '{print $14+$15}' "/proc/$pid/stat")
  echo $(( (after - before) * 10000 / 40 ))
}

# `start_pair BIN ROLE`: stops a pair left running, starts BIN's pair over
# the seeded copy (probe.sh), and sets PID (the registry's) and TOKEN (a
# token of tenant `bench` with ROLE).
start_pair() {
  stop_pair
  BIN=$1 "$(dirname "$0")/probe.sh" > /dev/null
  TOKEN=$(JWT_HS256_SECRET=probe-secret-probe-secret-probe-secret "$1/registry-service" token --subject bench --tenant bench --roles "$2" --ttl-seconds 3600)
  PID=$(pgrep -f 'registry-service --listen 127.0.0.1:50162')
}

stop_pair() {
  pkill -f 'registry-service --listen 127.0.0.1:50162'
  pkill -f 'crypto-service --listen 127.0.0.1:50161'
  sleep 0.5
}
