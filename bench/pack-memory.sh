#!/usr/bin/env bash
# Peak RSS and wall time of `robusto pack` on many files: the bench corpus (~48,000 files, see
# corpus.sh) and a tree of 1,000,000 small files (tree.sh), as zip (deflate 6, the default) and
# as tar + zstd. One warm-up run per case (not counted, it fills the page cache), then $RUNS runs;
# prints the median time and the highest peak RSS.
#
#   bench/pack-memory.sh [ROBUSTO]        # default target/release/robusto
#   RUNS=5 CORPUS=/tmp/corpus bench/pack-memory.sh /tmp/robusto-old
set -euo pipefail
cd "$(dirname "$0")/.."
R=${1:-target/release/robusto}
RUNS=${RUNS:-3}
CORPUS=${CORPUS:-bench/corpus}
OUT=${OUT:-bench/out}
CASES=${CASES:-"small-zip small-tarzst tree-zip tree-tarzst"}
[ -x /usr/bin/time ] || { echo "needs /usr/bin/time (apt-get install time)" >&2; exit 1; }
[ -x "$R" ] || { echo "no $R (cargo build --release --locked)" >&2; exit 1; }
bench/corpus.sh "$CORPUS" >/dev/null
bench/tree.sh "$CORPUS/tree" >/dev/null
mkdir -p "$OUT"
: > "$OUT/memory.times"

args() {
  case $1 in
    small-zip) echo "$CORPUS/small -o $OUT/m.zip" ;;
    small-tarzst) echo "$CORPUS/small -o $OUT/m.tar.zst --format tar --compress zstd" ;;
    tree-zip) echo "$CORPUS/tree -o $OUT/t.zip" ;;
    tree-tarzst) echo "$CORPUS/tree -o $OUT/t.tar.zst --format tar --compress zstd" ;;
  esac
}

# run CASE: appends "CASE seconds peak_KiB" to memory.times
run() {
  # shellcheck disable=SC2046
  /usr/bin/time -f "%e %M" -o "$OUT/m.time" "$R" -q pack $(args "$1") >/dev/null || [ $? = 3 ]
  echo "$1 $(tail -n1 "$OUT/m.time")" >> "$OUT/memory.times"
}

for c in $CASES; do
  run "$c"; sed -i '$d' "$OUT/memory.times"   # warm-up
  for _ in $(seq "$RUNS"); do run "$c"; done
done
median() { sort -n | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
echo "| case | median s | peak RSS MiB (highest) |"
echo "|---|---|---|"
for c in $CASES; do
  s=$(grep "^$c " "$OUT/memory.times" | awk '{print $2}' | median)
  m=$(grep "^$c " "$OUT/memory.times" | awk '{print $3}' | sort -n | tail -1)
  awk -v c="$c" -v s="$s" -v m="$m" 'BEGIN { printf "| %s | %.2f | %.0f |\n", c, s, m/1024 }'
done
