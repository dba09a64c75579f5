#!/usr/bin/env bash
# Recovery of a large backlog after kill -9: N QoS 1 messages (64 B) queued for one offline
# persistent session, the broker killed, restarted, and the backlog drained.
# Usage: loadtest/recovery/run.sh [N] (default 1000000), from the repository root after
# `cargo build --release`. Loopback only; every step is bounded in time.
set -euo pipefail
n=${1:-1000000}
port=18850
culex=${CULEX:-target/release/culex}
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
trap 'pkill -9 -f "culex -c $work/r.conf" 2>/dev/null || true; rm -rf "$work"' EXIT
cat > "$work/r.conf" <<CONF
listener $port 127.0.0.1
allow_anonymous true
max_queued_messages 0
persistence true
persistence_location $work/store/
CONF
now() { date +%s.%N; }
answering() {
    for _ in $(seq 200); do
        mosquitto_sub -p $port -t probe -i probe -E 2>/dev/null && return 0
        sleep 0.05
    done
    return 1
}
"$culex" -c "$work/r.conf" 2> "$work/first.log" &
answering
mosquitto_sub -p $port -c -i backlog -q 1 -t 'b/#' -E
timeout 600 python3 "$here/publish_backlog.py" $port "$n"
echo "store: $(du -sh "$work/store" | cut -f1)"
pkill -9 -f "culex -c $work/r.conf"
sleep 1
start=$(now)
"$culex" -c "$work/r.conf" 2> "$work/second.log" &
answering
echo "restart until answering: $(echo "$(now) - $start" | bc) s"
grep -o "recovered from the persistence store.*" "$work/second.log"
start=$(now)
timeout 600 mosquitto_sub -p $port -c -i backlog -q 1 -t 'b/#' -C "$n" > /dev/null
echo "drained $n in $(echo "$(now) - $start" | bc) s"
