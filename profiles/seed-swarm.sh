#!/bin/bash
# Where the seeder's CPU goes under `uring-bt bench swarm` (K peers of our own on loopback: the
# seeder is the only real work, unlike the python-libtorrent leechers of seed-4-leechers-*.txt).
#
#   cargo build --release -p uring-bt
#   profiles/seed-swarm.sh [PEERS] [SECONDS] > profiles/seed-swarm-8-peers.txt
#
# perf records the whole bench (it follows the child `uring-bt seed`); the report keeps the
# seeder's shard threads and io_uring workers (comm `shard-*` and `iou-wrk-*` of the child) and
# drops the peer threads and bench net's sockets. This VM has no hardware counters: cpu-clock.
# Loopback only; every process it starts ends with the bench (the seeder is killed by PID).
set -euo pipefail
cd "$(dirname "$0")/.."
peers=${1:-8}
secs=${2:-8}
bin=${URING_BT:-target/release/uring-bt}
[ -x "$bin" ] || { echo "build first: cargo build --release -p uring-bt ($bin)" >&2; exit 1; }
command -v perf >/dev/null || { echo "perf not found (Debian: linux-perf)" >&2; exit 1; }
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
perf record -q -e cpu-clock -g -o "$out/perf.data" -- \
  "$bin" bench swarm --peers "$peers" --duration "$secs" --json > "$out/swarm.json"
echo "# uring-bt bench swarm --peers $peers --duration $secs, perf record -e cpu-clock -g"
echo "# $(date -u '+%Y-%m-%d %H:%M UTC'), $(uname -r), $(nproc) CPUs, git $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
echo "# bench swarm's own figures:"
sed 's/^/#   /' "$out/swarm.json"
# The seeder is the child process bench swarm reports (its threads: shard-N, io_uring workers).
seeder=$(/usr/bin/python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["seeder_pid"])' \
  "$out/swarm.json")
echo "# seeder pid: ${seeder:-none}"
[ -n "${seeder:-}" ] || { echo "no seeder pid in bench swarm's JSON" >&2; exit 1; }
# perf's --pid/--comm filters drop kernel samples here, so: sort by comm first and keep the
# seeder's shard threads (bench net's and the peers' threads have other names), with each
# share given again as a share of the shards' samples.
report() { # $1: sort keys after comm; $2: lines
  perf report -i "$out/perf.data" --no-children --sort "comm,$1" -g none 2>/dev/null |
    awk '$2 ~ /^shard-/ { sub("%", "", $1); print }' > "$out/rows"
  awk '{ t += $1 } END { printf "# shard threads: %.1f%% of all samples\n", t }' "$out/rows"
  awk -v n="$2" 'NR == FNR { t += $1; next }
       { $1 = sprintf("%6.2f%%", 100 * $1 / t); if (++k <= n) print }' "$out/rows" "$out/rows"
}
echo
echo "## The seeder's shard threads by object (share of their samples)"
report dso 12
echo
echo "## Top symbols (share of the shard threads' samples)"
report sym 45
