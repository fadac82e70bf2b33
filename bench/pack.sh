#!/usr/bin/env bash
# Packing benchmark: `robusto pack` against the classic pipelines on the same corpus, in the same
# run, alternating, medians of $RUNS runs (after one warm-up run of each, which is not counted).
#
#   bench/pack.sh                 # corpus in bench/corpus, results in bench/out/pack.md
#   RUNS=5 CORPUS=/tmp/corpus bench/pack.sh
#
# Cases (from issue 2):
#   small files, tar+zstd -3 : robusto pack --format tar --compress zstd -l 3  vs  tar -cf - DIR | zstd -3 -T0 | md5sum
#   1 GiB random, tar+zstd -3: the same two commands on the 1 GiB file
#   small files, zip deflate 6: robusto pack --format zip --compress deflate -l 6  vs  zip -qr -6
# robusto also writes and fsyncs its archive, hashes it twice (whole + per chunk) and writes the
# manifest; the tar pipeline only hashes its output once and writes nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-3}
CORPUS=${CORPUS:-bench/corpus}
OUT=${OUT:-bench/out}
mkdir -p "$OUT"
command -v zip >/dev/null && command -v zstd >/dev/null && [ -x /usr/bin/time ] || {
  echo "needs zip, zstd and /usr/bin/time (apt-get install zip zstd time)" >&2; exit 1; }
bench/corpus.sh "$CORPUS"
[ -x target/release/robusto ] || cargo build --release --locked
R=$PWD/target/release/robusto
C=$(cd "$CORPUS" && pwd)
O=$(cd "$OUT" && pwd)
: > "$O/times"

# run NAME CMD: wall seconds and peak RSS (KiB) of CMD, appended to $O/times
run() {
  sync; /usr/bin/time -f "%e %M" -o "$O/t.tmp" bash -c "$2" >/dev/null 2>"$O/err.tmp" || {
    code=$?; if [ "$code" != 0 ] && [ "$code" != 3 ]; then echo "FAILED: $2" >&2; cat "$O/err.tmp" >&2; exit 1; fi; }
  echo "$1 $(tail -n1 "$O/t.tmp")" >> "$O/times"
}

declare -A ROB PEER
ROB[small-tarzst]="$R -q pack '$C/small' -o '$O/r.tar.zst' --format tar --compress zstd -l 3"
PEER[small-tarzst]="tar -cf - -C '$C' small | zstd -q -3 -T0 | md5sum"
ROB[big-tarzst]="$R -q pack '$C/big' -o '$O/rb.tar.zst' --format tar --compress zstd -l 3"
PEER[big-tarzst]="tar -cf - -C '$C' big | zstd -q -3 -T0 | md5sum"
ROB[small-zip6]="$R -q pack '$C/small' -o '$O/r.zip' --format zip --compress deflate -l 6"
PEER[small-zip6]="rm -f '$O/p.zip'; cd '$C' && zip -qr -6 '$O/p.zip' small"
CASES="small-tarzst big-tarzst small-zip6"

for c in $CASES; do
  run "warmup" "${ROB[$c]}"; run "warmup" "${PEER[$c]}"
  for i in $(seq 1 "$RUNS"); do
    run "$c robusto" "${ROB[$c]}"
    run "$c peer" "${PEER[$c]}"
  done
done

median() { sort -n | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
bytes_of() { case "$1" in small-*) du -sb "$C/small" | cut -f1;; big-*) stat -c %s "$C/big/random.bin";; esac; }
{
  echo "| case | robusto s | peer s | time ratio (robusto/peer) | robusto MB/s | robusto peak RSS MiB | peer peak RSS MiB |"
  echo "|---|---|---|---|---|---|---|"
  for c in $CASES; do
    rs=$(grep "^$c robusto " "$O/times" | awk '{print $3}' | median)
    ps=$(grep "^$c peer " "$O/times" | awk '{print $3}' | median)
    rr=$(grep "^$c robusto " "$O/times" | awk '{print $4}' | sort -n | tail -1)
    pr=$(grep "^$c peer " "$O/times" | awk '{print $4}' | sort -n | tail -1)
    b=$(bytes_of "$c")
    awk -v c="$c" -v rs="$rs" -v ps="$ps" -v rr="$rr" -v pr="$pr" -v b="$b" 'BEGIN {
      printf "| %s | %.2f | %.2f | %.2f | %.0f | %.0f | %.0f |\n", c, rs, ps, rs/ps, b/rs/1e6, rr/1024, pr/1024 }'
  done
  zs=$(stat -c %s "$O/r.zip"); zp=$(stat -c %s "$O/p.zip")
  awk -v a="$zs" -v b="$zp" 'BEGIN { printf "\nzip size: robusto %d bytes, zip -6 %d bytes (%+.2f%%)\n", a, b, (a/b-1)*100 }'
  echo "runs: $RUNS (medians), $(nproc) cores, $(date -u +%F)"
} | tee "$O/pack.md"
