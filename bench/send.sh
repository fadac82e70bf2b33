#!/usr/bin/env bash
# Sender benchmark: a 1 GiB random file over 127.0.0.1 with 8 MiB chunks, alternating runs of
#   robusto send --parallel 1  → robusto serve (every chunk and the whole file MD5-checked)
#   robusto send --parallel 4  → robusto serve (concatenation)
#   tus-js-client              → @tus/server + @tus/file-store
#   curl -T                    → a trivial PUT sink (reference)
# Reports MB/s (1e6 bytes) per run kind, the robusto/tus ratio, the client's peak RSS, and the
# server's CPU seconds per GiB (user + system of the server process over the transfer, from
# /proc/PID/stat: for robusto serve, its two MD5 streams over every byte plus its writes).
# The manifest of the file is computed once before timing: a packed file has one already, and
# the sender never re-hashes a file that has one.
# usage: bash bench/send.sh [RUNS]   (default 2 runs of each)
#   ROBUSTO_BIN=path  use that release binary instead of building target/release/robusto
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-2}
size=$((1 << 30))
chunk=8388608
out=bench/out
corpus=bench/corpus
mkdir -p "$out" "$corpus"
file=$corpus/random-1GiB.bin
[ -f "$file" ] && [ "$(stat -c %s "$file")" = "$size" ] || head -c "$size" /dev/urandom > "$file"
[ -d node_modules/tus-js-client ] && [ -d node_modules/@tus/server ] || { echo "run 'bash .ci/run' (or npm ci) first" >&2; exit 1; }
[ -f interop/tus-js-upload.mjs ] || { echo "interop/tus-js-upload.mjs is missing (it comes with the serve work)" >&2; exit 1; }
[ -x /usr/bin/time ] || { echo "needs GNU time (apt-get install time) for the client's peak RSS" >&2; exit 1; }
if [ -n "${ROBUSTO_BIN:-}" ]; then
  bin=$ROBUSTO_BIN
else
  cargo build --release --quiet
  bin=${CARGO_TARGET_DIR:-target}/release/robusto
fi
tick=$(getconf CLK_TCK)
# cpu_ticks PID → user + system clock ticks the process has used so far
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
state=$out/send-state
port=${PORT:-18090}

# Never talk to a server someone else left on the port: refuse a busy port.
port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null || { echo "port $port is busy: set PORT=…" >&2; exit 1; }; }
wait_up() { for _ in $(seq 200); do curl -s -o /dev/null -X OPTIONS "http://127.0.0.1:$port/files/" && return 0; sleep 0.05; done; echo "server did not start" >&2; exit 1; }

# The manifest, once (cached in the state directory by path, size and mtime).
rm -rf "$state"
port_free
"$bin" -q serve --listen "127.0.0.1:$port" --data "$out/warm" & pid=$!; wait_up
"$bin" -q send "$file" --to "http://127.0.0.1:$port/files/" --state-dir "$state" > /dev/null
kill "$pid"; wait "$pid" 2>/dev/null || true; rm -rf "$out/warm"

# run_one KIND → prints "mbps client_peak_mib server_cpu_s_per_gib"
run_one() {
  local kind=$1 data=$out/data-$1 t0 t1 rss=$out/rss c0 c1
  rm -rf "$data" "$state/jobs"; mkdir -p "$data"
  port_free
  case $kind in
    robusto1|robusto4) "$bin" -q serve --listen "127.0.0.1:$port" --data "$data" & pid=$! ;;
    tus) node interop/tus-server.mjs "$data" "$port" > /dev/null & pid=$! ;;
    curl) node bench/put-sink.mjs "$port" > /dev/null & pid=$! ;;
  esac
  if [ "$kind" = curl ]; then sleep 0.5; else wait_up; fi
  c0=$(cpu_ticks "$pid")
  t0=$(date +%s.%N)
  case $kind in
    robusto1) /usr/bin/time -f %M -o "$rss" "$bin" -q send "$file" --to "http://127.0.0.1:$port/files/" --state-dir "$state" --parallel 1 > /dev/null ;;
    robusto4) /usr/bin/time -f %M -o "$rss" "$bin" -q send "$file" --to "http://127.0.0.1:$port/files/" --state-dir "$state" --parallel 4 > /dev/null ;;
    tus) /usr/bin/time -f %M -o "$rss" node interop/tus-js-upload.mjs "http://127.0.0.1:$port/files/" "$file" "$chunk" > /dev/null ;;
    curl) /usr/bin/time -f %M -o "$rss" curl -sS -T "$file" "http://127.0.0.1:$port/sink" -o /dev/null ;;
  esac
  t1=$(date +%s.%N)
  c1=$(cpu_ticks "$pid")
  kill "$pid"; wait "$pid" 2>/dev/null || true
  rm -rf "$data"
  awk -v s="$size" -v t0="$t0" -v t1="$t1" -v k="$(tail -n 1 "$rss")" -v c="$((c1 - c0))" -v hz="$tick" \
    'BEGIN { printf "%.1f %.1f %.2f\n", s / (t1 - t0) / 1e6, k / 1024, c / hz / (s / 1073741824) }'
}

declare -A res
for i in $(seq "$runs"); do
  for kind in robusto1 tus robusto4 curl; do
    res[$kind]="${res[$kind]:-}$(run_one "$kind")"$'\n'
  done
done
avg() { printf '%s' "$1" | awk 'NF { a += $1; p = ($2 > p ? $2 : p); c += $3; n++ } END { printf "%.1f %.1f %.2f", a / n, p, c / n }'; }
printf '%-44s %10s %16s %18s\n' "1 GiB, 8 MiB chunks, $runs runs each" "MB/s" "client peak MiB" "server CPU-s/GiB"
for kind in robusto1 robusto4 tus curl; do
  case $kind in
    robusto1) label="robusto send → robusto serve" ;;
    robusto4) label="robusto send --parallel 4 → robusto serve" ;;
    tus) label="tus-js-client → @tus/server" ;;
    curl) label="curl -T → PUT sink (reference)" ;;
  esac
  read -r m p c <<< "$(avg "${res[$kind]}")"
  printf '%-44s %10s %16s %18s\n' "$label" "$m" "$p" "$c"
  eval "mb_$kind=$m"
done
awk -v r="$mb_robusto1" -v q="$mb_robusto4" -v t="$mb_tus" \
  'BEGIN { printf "ratio robusto/tus: %.2fx (parallel 1), %.2fx (parallel 4); parallel 4/1: %.2fx\n", r / t, q / t, q / r }'
