#!/usr/bin/env bash
# Builds a tree of many small files for the memory benchmark (idempotent):
#   $TREE/dNNNN/fNNNN  $FILES files (default 1,000,000) in folders of 1,000, each 64 B – 4 KiB of
#   text-like, compressible bytes (the same tree on every run: a fixed seed)
# Usage: bench/tree.sh [DIR] [FILES]   (default: bench/corpus/tree 1000000)
# Then: /usr/bin/time -v target/release/robusto pack DIR -o X.zip   (see bench/pack-results.md)
set -euo pipefail
TREE=${1:-$(dirname "$0")/corpus/tree}
FILES=${2:-1000000}
if [ ! -f "$TREE/.done" ] || [ "$(cat "$TREE/.done")" != "$FILES" ]; then
  rm -rf "$TREE"; mkdir -p "$TREE"
  python3 - "$TREE" "$FILES" <<'EOF'
import os, random, sys
root, n = sys.argv[1], int(sys.argv[2])
rng = random.Random(1)
words = [bytes(rng.choice(b"abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 9))) for _ in range(2000)]
for i in range(n):
    d = os.path.join(root, "d%04d" % (i // 1000))
    if i % 1000 == 0:
        os.mkdir(d)
    size = rng.randint(64, 4096)
    out = bytearray()
    while len(out) < size:
        out += rng.choice(words) + b" "
    with open(os.path.join(d, "f%04d" % (i % 1000)), "wb") as f:
        f.write(out[:size])
EOF
  echo "$FILES" > "$TREE/.done"
fi
echo "tree: $(find "$TREE" -type f ! -name .done | wc -l) files, $(du -sb "$TREE" | cut -f1) bytes"
