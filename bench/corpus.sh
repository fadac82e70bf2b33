#!/usr/bin/env bash
# Builds the benchmark corpus (idempotent):
#   $CORPUS/small  ~50,000 small files, ~750 MB, copied from this machine's /usr/share and /usr/lib
#   $CORPUS/big    one 1 GiB incompressible file
# Usage: bench/corpus.sh [DIR]   (default: bench/corpus)
set -euo pipefail
CORPUS=${1:-$(dirname "$0")/corpus}
mkdir -p "$CORPUS"
if [ ! -f "$CORPUS/small/.done" ]; then
  rm -rf "$CORPUS/small"; mkdir -p "$CORPUS/small"
  # regular files up to 8 MiB, in path order, until 50,000 files or 750 MB
  find /usr/share /usr/lib -xdev -type f -size -8M -readable -printf '%s\t%p\n' 2>/dev/null | sort -t$'\t' -k2 |
    awk -F'\t' '{ if (n >= 50000 || total + $1 > 750000000) exit; n++; total += $1; print $2 }' > "$CORPUS/small.list" || true
  tar -cf - --files-from="$CORPUS/small.list" 2>/dev/null | tar -xf - -C "$CORPUS/small" || true
  touch "$CORPUS/small/.done"
fi
if [ ! -f "$CORPUS/big/.done" ]; then
  rm -rf "$CORPUS/big"; mkdir -p "$CORPUS/big"
  head -c $((1 << 30)) /dev/urandom > "$CORPUS/big/random.bin"
  touch "$CORPUS/big/.done"
fi
echo "small: $(find "$CORPUS/small" -type f | wc -l) files, $(du -sb "$CORPUS/small" | cut -f1) bytes"
echo "big:   $(du -sb "$CORPUS/big" | cut -f1) bytes"
