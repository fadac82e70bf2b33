#!/usr/bin/env bash
# A link that breaks more often than it carries a chunk: a 64 MiB random file, 8 MiB chunks,
# through bench/cut-proxy.mjs cutting the link every 2 MB and every 10 MB, alternating runs of
#   robusto send  → robusto serve                      (robusto-chunk-prefix: a cut chunk is held)
#   robusto send  → robusto serve --no-chunk-prefix    (checks chunks, cannot hold a cut one)
#   tus-js-client → robusto serve                      (no checksums: tus keeps what arrived)
# Reports, per case, the bytes that crossed the link from the client (headers included) per
# byte of the file and the wall time, as medians with the spread (min–max) over the runs, and
# the time ratio robusto/tus-js-client. Every run's stored file is checked against the source.
# usage: bash bench/flaky.sh [RUNS]   (default 3 runs of each)
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-3}
size=$((64 << 20))
chunk=8388608
out=bench/out
corpus=bench/corpus
mkdir -p "$out" "$corpus"
file=$corpus/random-64MiB.bin
[ -f "$file" ] && [ "$(stat -c %s "$file")" = "$size" ] || head -c "$size" /dev/urandom > "$file"
want=$(md5sum < "$file" | cut -d' ' -f1)
[ -d node_modules/tus-js-client ] || { echo "run 'bash .ci/run' (or npm ci) first" >&2; exit 1; }
cargo build --release --quiet
bin=target/release/robusto
state=$out/flaky-state
port=${PORT:-18095}

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null || { echo "port $port is busy: set PORT=…" >&2; exit 1; }; }
wait_up() { for _ in $(seq 200); do curl -s -o /dev/null -X OPTIONS "http://127.0.0.1:$port/files/" && return 0; sleep 0.05; done; echo "server did not start" >&2; exit 1; }

# The manifest, once (cached in the state directory), as a packed file has one.
rm -rf "$state"
port_free
"$bin" -q serve --listen "127.0.0.1:$port" --data "$out/flaky-warm" & pid=$!; wait_up
"$bin" -q send "$file" --to "http://127.0.0.1:$port/files/" --state-dir "$state" > /dev/null
kill "$pid"; wait "$pid" 2>/dev/null || true; rm -rf "$out/flaky-warm"

# run_one KIND CUT → prints "wire_ratio seconds cuts"
run_one() {
  local kind=$1 cut=$2 data=$out/flaky-data t0 t1 pport stats
  rm -rf "$data" "$state/jobs"; mkdir -p "$data"
  port_free
  case $kind in
    noext) "$bin" -q serve --listen "127.0.0.1:$port" --data "$data" --no-chunk-prefix & pid=$! ;;
    *) "$bin" -q serve --listen "127.0.0.1:$port" --data "$data" & pid=$! ;;
  esac
  wait_up
  coproc PROXY { exec node bench/cut-proxy.mjs "$port" "$cut"; }
  read -r pport <&"${PROXY[0]}"
  local endpoint="http://127.0.0.1:$pport/files/"
  t0=$(date +%s.%N)
  case $kind in
    robusto|noext) "$bin" -q send "$file" --to "$endpoint" --state-dir "$state" > /dev/null ;;
    tus) node interop/tus-js-upload.mjs "$endpoint" "$file" "$chunk" > /dev/null ;;
  esac
  t1=$(date +%s.%N)
  kill "$PROXY_PID"
  read -r stats <&"${PROXY[0]}"
  wait "$PROXY_PID" 2>/dev/null || true
  kill "$pid"; wait "$pid" 2>/dev/null || true
  local got
  got=$(md5sum < "$(find "$data/files" -type f | head -n 1)" | cut -d' ' -f1)
  [ "$got" = "$want" ] || { echo "$kind, cut $cut: the stored file differs" >&2; exit 1; }
  rm -rf "$data"
  node -e 'const s = JSON.parse(process.argv[1]); console.log((s.bytes / Number(process.argv[2])).toFixed(4), (Number(process.argv[4]) - Number(process.argv[3])).toFixed(2), s.cuts)' \
    "$stats" "$size" "$t0" "$t1"
}

declare -A res
for i in $(seq "$runs"); do
  for cut in 2000000 10000000; do
    for kind in robusto noext tus; do
      line=$(run_one "$kind" "$cut")
      echo "run $i, cut $cut, $kind: $line" >&2
      res[$kind-$cut]="${res[$kind-$cut]:-}$line"$'\n'
    done
  done
done
# median and spread (min–max) of column COL of the runs
column() { printf '%s' "$1" | awk -v c="$2" 'NF { print $c }' | sort -g; }
stat() { column "$1" "$2" | awk '{ v[NR] = $1 } END { m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2; printf "%s (%s–%s)", m, v[1], v[NR] }'; }
med() { column "$1" "$2" | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
printf '64 MiB, 8 MiB chunks, %s runs each: medians (min–max)\n' "$runs"
printf '%-9s %-52s %-26s %-24s %s\n' "cut every" "client → server" "wire bytes / file" "seconds" "cuts"
for cut in 2000000 10000000; do
  for kind in robusto noext tus; do
    case $kind in
      robusto) label="robusto send → robusto serve" ;;
      noext) label="robusto send → robusto serve --no-chunk-prefix" ;;
      tus) label="tus-js-client → robusto serve (no checksums)" ;;
    esac
    r=${res[$kind-$cut]}
    printf '%-9s %-52s %-26s %-24s %s\n' "$((cut / 1000000)) MB" "$label" "$(stat "$r" 1)" "$(stat "$r" 2)" "$(med "$r" 3)"
  done
  awk -v a="$(med "${res[robusto-$cut]}" 2)" -v b="$(med "${res[noext-$cut]}" 2)" -v t="$(med "${res[tus-$cut]}" 2)" -v c="$((cut / 1000000))" \
    'BEGIN { printf "%s MB: time ratio robusto/tus-js-client %.2fx (with held chunks), %.2fx (without)\n", c, a / t, b / t }'
done
