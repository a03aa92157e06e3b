#!/bin/bash
# Where the CPU of an open goes: runs load-bench on one backend, records
# the whole machine with perf during one phase, and prints CPU time per open by
# category (tests/bench/cpu-per-open.py).
#
#   tests/bench/profile-opens.sh OUT_DIR DAYPASS_BIN sqlite|postgres [PHASE] [SECONDS]
#
# PHASE: charging (default; the one-account charging phase), reopen or heartbeats
# (then the figures are per heartbeat). Needs perf
# (linux-perf) and a release build of load-bench; the machine should be otherwise idle.
set -euo pipefail
out=$1; bin=$2; backend=$3; phase=${4:-charging}; secs=${5:-2.5}
here=$(cd "$(dirname "$0")" && pwd)
lb=${LOAD_BENCH:-$here/../../target/release/load-bench}
case $phase in
  charging) marker='setup:'; line='1 account, charging:' ;;
  reopen) marker='1 account, charging:'; line='1 account, reopen:' ;;
  heartbeats) marker='accounts, reopen:'; line='heartbeats:' ;;
  *) echo "phase: charging, reopen or heartbeats" >&2; exit 2 ;;
esac
mkdir -p "$out"
"$lb" --daypass-bin "$bin" --backend "$backend" --ceiling-seconds 3 > "$out/bench.log" 2>&1 &
pid=$!
until grep -q "$marker" "$out/bench.log"; do
  sleep 0.1
  kill -0 $pid 2>/dev/null || { cat "$out/bench.log"; exit 1; }
done
sleep 0.5
perf record -a -F 999 -g -o "$out/perf.data" -- sleep "$secs" > /dev/null 2>&1
wait $pid
rate=$(grep -m1 "  $line" "$out/bench.log" | sed -E 's/.*: ([0-9]+) (opens|heartbeats)\/s.*/\1/')
python3 "$here/cpu-per-open.py" "$out/perf.data" "$rate" "$secs"
