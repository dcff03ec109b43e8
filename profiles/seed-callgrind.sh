#!/bin/bash
# Instructions the seeder executes in user space per GiB served, counted by callgrind: a figure
# that does not move with the machine's load, unlike perf's cpu-clock samples
# (seed-swarm.sh). The kernel's share (the copies, TCP) is not counted: callgrind sees user
# space only, so this is the engine's own cost, the part a code change can move.
#
#   cargo build --release -p uring-bt
#   profiles/seed-callgrind.sh [PEERS] [SECONDS] > profiles/seed-callgrind-8-peers.txt
#   (URING_BT=PATH: another binary; CALLGRIND_OUT=FILE: keep the raw callgrind output)
#
# The seeder (`uring-bt seed --shards 1`, trusting the resume data of a native run: one shard, as valgrind runs one thread
# at a time anyway) runs under `valgrind --tool=callgrind --instr-atstart=no`; instruction
# counting is switched on (callgrind_control -i on) once it listens, so start-up is not
# counted, and `uring-bt bench swarm --against` drives PEERS peers of our own against it for
# SECONDS (plus a second of warm-up); counting goes off before the seeder is stopped. Ir per
# GiB = counted instructions / block bytes the peers received while counting.
# Loopback only; the seeder is stopped by its PID, the scratch directory removed.
set -euo pipefail
cd "$(dirname "$0")/.."
peers=${1:-8}
secs=${2:-10}
bin=${URING_BT:-target/release/uring-bt}
[ -x "$bin" ] || { echo "build first: cargo build --release -p uring-bt ($bin)" >&2; exit 1; }
for t in valgrind callgrind_control callgrind_annotate; do
  command -v "$t" >/dev/null || { echo "$t not found (Debian: valgrind)" >&2; exit 1; }
done
out=$(mktemp -d /var/tmp/ubt-callgrind.XXXXXX)
vpid=
cleanup() {
  if [ -n "$vpid" ] && kill -0 "$vpid" 2>/dev/null; then kill -KILL "$vpid" 2>/dev/null || true; fi
  rm -rf "$out"
}
trap cleanup EXIT
mkdir "$out/data"
head -c 256M /dev/urandom > "$out/data/payload.bin"
"$bin" create "$out/data/payload.bin" -o "$out/payload.torrent" --piece-length 1MiB > /dev/null 2>&1
cat "$out/data/payload.bin" > /dev/null
# A native run checks the data once and leaves resume data, so that the run under valgrind
# trusts it (no SHA-1 of every piece in the counted window: valgrind hides SHA-NI, and the
# software SHA-1 would swamp the figures).
"$bin" seed "$out/payload.torrent" --data "$out/data" --listen 127.0.0.1:0 --no-announce \
  --shards 1 --state-dir "$out/state" > "$out/check.out" 2> "$out/check.err" &
vpid=$!
for _ in $(seq 600); do
  grep -q '^listening: ' "$out/check.out" && break
  kill -0 "$vpid" 2>/dev/null || { echo "the seeder exited: $(tail -5 "$out/check.err")" >&2; exit 1; }
  sleep 0.1
done
kill -TERM "$vpid"
wait "$vpid" || { echo "the checking run did not stop cleanly: $(tail -5 "$out/check.err")" >&2; exit 1; }
vpid=
valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$out/callgrind.out" \
  "$bin" seed "$out/payload.torrent" --data "$out/data" --listen 127.0.0.1:0 \
  --state-dir "$out/state" --no-announce --shards 1 --upload-slots "$peers" \
  > "$out/seed.out" 2> "$out/seed.err" &
vpid=$!
addr=
for _ in $(seq 600); do
  addr=$(awk '/^listening: / { print $2; exit }' "$out/seed.out")
  [ -n "$addr" ] && break
  kill -0 "$vpid" 2>/dev/null || { echo "the seeder exited: $(tail -5 "$out/seed.err")" >&2; exit 1; }
  sleep 0.1
done
[ -n "$addr" ] || { echo "the seeder did not listen within 60 s" >&2; exit 1; }
callgrind_control -i on "$vpid" > /dev/null 2>&1
"$bin" bench swarm --against "$addr" --torrent "$out/payload.torrent" --data "$out/data" \
  --seeder-pid "$vpid" --peers "$peers" --duration "$secs" --no-net --json > "$out/swarm.json" \
  2> "$out/swarm.err" || { echo "bench swarm failed: $(tail -5 "$out/swarm.err")" >&2; exit 1; }
callgrind_control -i off "$vpid" > /dev/null 2>&1
kill -TERM "$vpid"
wait "$vpid" || { echo "the seeder did not stop cleanly: $(tail -5 "$out/seed.err")" >&2; exit 1; }
vpid=
bytes=$(/usr/bin/python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["bytes_total"])' \
  "$out/swarm.json")
callgrind_annotate --inclusive=no --threshold=99 "$out/callgrind.out" > "$out/excl.txt" 2>&1
callgrind_annotate --inclusive=yes --threshold=99 "$out/callgrind.out" > "$out/incl.txt" 2>&1
# CALLGRIND_OUT=FILE keeps the raw profile (for callgrind_annotate --tree=caller, kcachegrind).
[ -z "${CALLGRIND_OUT:-}" ] || cp "$out/callgrind.out" "$CALLGRIND_OUT"
ir=$(awk '/PROGRAM TOTALS/ { gsub(",", "", $1); print $1; exit }' "$out/excl.txt")
grep -q 'resum\|trust' "$out/seed.err" || echo "note: the seeder's log says nothing of resume data" >&2
[ -n "$ir" ] && [ "$bytes" -gt 0 ] || { echo "no instruction count or no bytes served" >&2; exit 1; }
echo "# uring-bt seed under valgrind --tool=callgrind, $peers peers of bench swarm --against, ${secs} s"
echo "# $(date -u '+%Y-%m-%d %H:%M UTC'), $(uname -r), $(nproc) CPUs, $(valgrind --version), git $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
echo "# bench swarm's figures (the seeder runs under valgrind: its MB/s and CPU are not the seeder's own):"
sed 's/^/#   /' "$out/swarm.json"
/usr/bin/python3 - "$ir" "$bytes" <<'EOF'
import sys
ir, b = int(sys.argv[1]), int(sys.argv[2])
gib = b / 2**30
print("#")
print("# counted: %d instructions (user space) while %d bytes of blocks were served (%.2f GiB)" % (ir, b, gib))
print("# per GiB served: %.1f M instructions; per 16 KiB block: %.0f" % (ir / gib / 1e6, ir / (b / 16384)))
EOF
echo
echo "## Top functions by instructions (exclusive)"
sed -n '/^Ir/,$p' "$out/excl.txt" | awk 'NR <= 45'
echo
echo "## Top functions by instructions (inclusive)"
sed -n '/^Ir/,$p' "$out/incl.txt" | awk 'NR <= 40'
