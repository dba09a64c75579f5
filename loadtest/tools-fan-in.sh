#!/usr/bin/env bash
# Four unmodified `mosquitto_pub -l`, each fed N lines of 64 bytes, into one `mosquitto_sub`, as
# a user would try a broker with Mosquitto's own tools. Prints how many lines arrived and how
# long it took. Loopback only; ends by itself (the subscriber gives up after 60 s).
#
#   loadtest/tools-fan-in.sh BROKER_BINARY [N] [QOS]
#   loadtest/tools-fan-in.sh target/release/culex 100000 0
#   loadtest/tools-fan-in.sh /usr/sbin/mosquitto 100000 0
set -euo pipefail
broker=$1 lines=${2:-100000} qos=${3:-0} port=${PORT:-18870}
dir=$(mktemp -d)
trap 'kill "$broker_pid" 2>/dev/null && wait "$broker_pid" 2>/dev/null; rm -rf "$dir"' EXIT
printf 'listener %s 127.0.0.1\nallow_anonymous true\nmax_queued_messages 0\nmax_inflight_messages 0\n' \
    "$port" >"$dir/broker.conf"
for p in 0 1 2 3; do
    for ((i = 0; i < lines; i++)); do printf 'p%d-%07d-%053d\n' "$p" "$i" 0; done >"$dir/lines$p"
done
"$broker" -c "$dir/broker.conf" >"$dir/broker.log" 2>&1 &
broker_pid=$!
sleep 0.5
total=$((4 * lines))
mosquitto_sub -p "$port" -q "$qos" -t 'fan/#' -C "$total" -W 60 >"$dir/received" &
sub_pid=$!
sleep 0.5
start=$(date +%s.%N)
pubs=()
for p in 0 1 2 3; do
    mosquitto_pub -p "$port" -q "$qos" -t "fan/$p" -l <"$dir/lines$p" &
    pubs+=($!)
done
wait "${pubs[@]}"
wait "$sub_pid" || true
end=$(date +%s.%N)
echo "$(basename "$broker"): delivered $(wc -l <"$dir/received") of $total in $(echo "$end - $start" | bc) s"
