#!/usr/bin/env bash
# Server benchmark: tus-js-client uploads a 1 GiB random file over 127.0.0.1 to `robusto serve`
# (release build, fs store, fsync per chunk) and to @tus/server (FileStore), alternating runs,
# with 8 MiB and 64 MiB chunks. Reports client-seen throughput, server CPU seconds per GiB
# (utime+stime from /proc/PID/stat) and server peak RSS (VmHWM), and robusto/@tus ratios.
# A last row runs robusto with the whole-file `checksum` metadata (running MD5 on the server).
# usage: bash bench/serve.sh [RUNS]   (default 2 runs per server and chunk size)
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-2}
size=$((1 << 30))
out=bench/out
corpus=bench/corpus
mkdir -p "$out" "$corpus"
# the same 1 GiB random file bench/corpus.sh makes (and with the same marker)
file=$corpus/big/random.bin
if [ ! -f "$corpus/big/.done" ]; then
  rm -rf "$corpus/big"; mkdir -p "$corpus/big"
  head -c "$size" /dev/urandom > "$file"
  touch "$corpus/big/.done"
fi
[ -d node_modules/tus-js-client ] || { echo "run 'bash .ci/run' (or npm ci) first" >&2; exit 1; }
cargo build --release --quiet
bin=target/release/robusto
tck=$(getconf CLK_TCK)
port=18080

wait_up() { for _ in $(seq 200); do curl -s -o /dev/null -X OPTIONS "http://127.0.0.1:$port/files/" && return 0; sleep 0.05; done; echo "server did not start" >&2; exit 1; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
peak_kib() { awk '/VmHWM/ {print $2}' "/proc/$1/status"; }

# run_one SERVER CHUNK [META…] → prints "mbps cpu_s_per_gib peak_mib"
run_one() {
  local which=$1 chunk=$2; shift 2
  local data=$out/data-$which
  rm -rf "$data"; mkdir -p "$data"
  sync # start every run with no dirty pages left by the previous one
  if [ "$which" = robusto ]; then
    "$bin" -q serve --listen "127.0.0.1:$port" --data "$data" & pid=$!
  else
    node bench/tus-server.mjs "$port" "$data" 2>/dev/null & pid=$!
  fi
  wait_up
  local t0 t1
  t0=$(date +%s.%N)
  node interop/tus-js-upload.mjs "http://127.0.0.1:$port/files/" "$file" "$chunk" "$@" > /dev/null
  t1=$(date +%s.%N)
  local ticks peak
  ticks=$(cpu_ticks "$pid"); peak=$(peak_kib "$pid")
  kill "$pid"; wait "$pid" 2>/dev/null || true
  rm -rf "$data"
  awk -v s="$size" -v t0="$t0" -v t1="$t1" -v k="$ticks" -v hz="$tck" -v p="$peak" \
    'BEGIN { printf "%.1f %.2f %.1f\n", s / (t1 - t0) / 1e6, (k / hz) / (s / 1073741824), p / 1024 }' |
    tee -a "$out/runs.log"
  echo "  ($which, chunk $chunk $*, load $(cut -d' ' -f1 /proc/loadavg))" >> "$out/runs.log"
}

echo "== $(date -u +%FT%TZ) $(nproc) cores" >> "$out/runs.log"
printf '%-28s %10s %14s %12s\n' "server, chunk" "MB/s" "CPU-s/GiB" "peak MiB"
for chunk in 8388608 67108864; do
  r=""; t=""
  for i in $(seq "$runs"); do
    r="$r$(run_one robusto "$chunk")"$'\n'
    t="$t$(run_one tus "$chunk")"$'\n'
  done
  avg() { printf '%s' "$1" | awk 'NF { a += $1; b += $2; c = ($3 > c ? $3 : c); n++ } END { printf "%.1f %.2f %.1f", a / n, b / n, c }'; }
  ra=$(avg "$r"); ta=$(avg "$t")
  label="$((chunk >> 20)) MiB chunks"
  read -r rm rc rp <<< "$ra"; read -r tm tc tp <<< "$ta"
  printf '%-28s %10s %14s %12s\n' "robusto serve, $label" "$rm" "$rc" "$rp" "@tus/server, $label" "$tm" "$tc" "$tp"
  awk -v rm="$rm" -v rc="$rc" -v rp="$rp" -v tm="$tm" -v tc="$tc" -v tp="$tp" -v l="$label" \
    'BEGIN { printf "%-28s %9.2fx %13.2fx %11.2fx\n", "ratio robusto/@tus, " l, rm / tm, rc / tc, rp / tp }'
done
md5b64=$(python3 -c 'import hashlib,base64,sys; h=hashlib.md5(); f=open(sys.argv[1],"rb")
for b in iter(lambda: f.read(1<<20), b""): h.update(b)
print(base64.b64encode(h.digest()).decode())' "$file")
read -r m c p <<< "$(run_one robusto 8388608 --meta filename=bench.bin --meta "checksum=md5 $md5b64")"
printf '%-28s %10s %14s %12s\n' "robusto + whole-file MD5, 8" "$m" "$c" "$p"
