#!/usr/bin/env bash
# Packing and sending at once: `robusto push` against `robusto pack` then `robusto send` of the
# same archive, over 127.0.0.1 to `robusto serve`, on two folders:
#   random  one 1 GiB random file (bench/corpus/big), tar, no compression
#   small   the small-files corpus (bench/corpus/small), tar + zstd -3
# Per folder and run: pack alone, send alone (the packed archive), and push (pack and send at
# once, pipelined). Reports medians (and min–max) of the wall times and push ÷ max(pack, send):
# 1.0 means the push takes as long as the slower of its two halves, pack + send would be ~2.0.
# Runs alternate; the caches are warm (the folder is read once before timing).
# usage: bash bench/push.sh [RUNS]   (default 3)   ROBUSTO_BIN: the binary (default target/release/robusto)
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-3}
bin=${ROBUSTO_BIN:-target/release/robusto}
if [ -z "${ROBUSTO_BIN:-}" ]; then cargo build --release --quiet; fi
bash bench/corpus.sh > /dev/null
out=bench/out/push
port=${PORT:-18093}
mkdir -p "$out"

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null || { echo "port $port is busy: set PORT=…" >&2; exit 1; }; }
wait_up() { for _ in $(seq 200); do curl -s -o /dev/null -X OPTIONS "http://127.0.0.1:$port/files/" && return 0; sleep 0.05; done; echo "server did not start" >&2; exit 1; }
now() { date +%s.%N; }
start_server() { rm -rf "$out/data"; port_free; "$bin" -q serve --listen "127.0.0.1:$port" --data "$out/data" & pid=$!; wait_up; }
stop_server() { kill "$pid"; wait "$pid" 2>/dev/null || true; rm -rf "$out/data"; }
trap 'kill "${pid:-}" 2>/dev/null || true' EXIT

# one_run DIR FLAGS… → prints "pack send push" seconds
one_run() {
  local dir=$1; shift
  local t0 t1 t2 t3 archive=$out/archive.tar
  rm -rf "$out/state" "$archive" "$archive.manifest.json"
  t0=$(now)
  "$bin" -q pack "$dir" -o "$archive" "$@" > /dev/null
  t1=$(now)
  start_server
  "$bin" -q send "$archive" --to "http://127.0.0.1:$port/files/" --state-dir "$out/state" > /dev/null
  t2=$(now)
  stop_server
  rm -rf "$out/state"
  start_server
  local p0; p0=$(now)
  "$bin" -q push "$dir" --to "http://127.0.0.1:$port/files/" --state-dir "$out/state" "$@" > /dev/null
  t3=$(now)
  stop_server
  awk -v a="$t0" -v b="$t1" -v c="$t2" -v p="$p0" -v d="$t3" 'BEGIN { printf "%.2f %.2f %.2f\n", b - a, c - b, d - p }'
}

med() { sort -n | awk '{ v[NR] = $1 } END { m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2; printf "%.2f (%.2f–%.2f)", m, v[1], v[NR] }'; }
echo "| folder | pack alone s | send alone s | push s | push ÷ max(pack, send) |"
echo "|---|---|---|---|---|"
for case in random small; do
  case $case in
    random) dir=bench/corpus/big; flags=(--format tar --compress none) ;;
    small) dir=bench/corpus/small; flags=(--format tar --compress zstd --level 3) ;;
  esac
  cat "$dir"/* > /dev/null 2>&1 || find "$dir" -type f -exec cat {} + > /dev/null
  : > "$out/$case.runs"
  for _ in $(seq "$runs"); do one_run "$dir" "${flags[@]}" >> "$out/$case.runs"; done
  pk=$(cut -d' ' -f1 "$out/$case.runs" | med); sd=$(cut -d' ' -f2 "$out/$case.runs" | med); pu=$(cut -d' ' -f3 "$out/$case.runs" | med)
  ratio=$(awk '{ m = ($1 > $2 ? $1 : $2); print $3 / m }' "$out/$case.runs" | med)
  echo "| $case | $pk | $sd | $pu | $ratio |"
done
echo
echo "command: bash bench/push.sh $runs  ($(nproc) cores; $(date -u +%F))"
