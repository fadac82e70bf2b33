#!/usr/bin/env bash
# Runs every fuzz target (or those named as arguments) for FUZZ_SECONDS (60) each on nightly,
# starting from the seeds in fuzz/corpus/<target>/ and growing a scratch copy of them (the
# committed corpus stays the seeds). A crash is copied into fuzz/regressions/<target>/, which
# `cargo test --test fuzz_regressions` replays on stable. Exits 1 if any target crashed.
#
#   bash fuzz/run.sh                     # all targets, 60 s each
#   FUZZ_SECONDS=600 bash fuzz/run.sh restore_tar
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${FUZZ_SECONDS:-60}

if ! cargo +nightly --version >/dev/null 2>&1; then
  echo "the nightly toolchain is needed: rustup toolchain install nightly" >&2
  exit 2
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked
fi

if [ $# -gt 0 ]; then
  targets=("$@")
else
  targets=()
  for f in fuzz/fuzz_targets/*.rs; do
    targets+=("$(basename "$f" .rs)")
  done
fi

# scratch: grown corpora, crash artifacts, and the targets' own temporary files (restores,
# journals), on tmpfs when there is one
base=/tmp
[ -d /dev/shm ] && [ -w /dev/shm ] && base=/dev/shm
scratch=$(mktemp -d "$base/robusto-fuzz.XXXXXX")
trap 'rm -rf "$scratch"' EXIT

# debug assertions on (-a): an overflow is a crash, as it is in `cargo test`
cargo +nightly fuzz build -a

failed=0
summary=()
for t in "${targets[@]}"; do
  corpus="$scratch/corpus/$t" artifacts="$scratch/artifacts/$t" tmp="$scratch/tmp/$t"
  mkdir -p "$corpus" "$artifacts" "$tmp"
  log="$scratch/$t.log"
  echo "== $t: ${seconds}s"
  status=ok
  started=$SECONDS
  if ! TMPDIR="$tmp" cargo +nightly fuzz run -a "$t" "$corpus" "fuzz/corpus/$t" -- \
    -max_total_time="$seconds" -rss_limit_mb=2048 -artifact_prefix="$artifacts/" \
    -print_final_stats=1 >"$log" 2>&1; then
    status=CRASHED
    failed=1
  fi
  # libFuzzer's own count and time (the build before it is not counted)
  runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1 || true)
  [ -n "$runs" ] || runs=$(grep -oE '^#[0-9]+' "$log" | tail -1 | tr -d '#' || true)
  took=$(grep -oE 'Done [0-9]+ runs in [0-9]+ second' "$log" | grep -oE '[0-9]+ second' | grep -oE '[0-9]+' | tail -1 || true)
  [ -n "$took" ] || took="$((SECONDS - started)) (with the build)"
  found=()
  for a in "$artifacts"/*; do
    [ -e "$a" ] || continue
    mkdir -p "fuzz/regressions/$t"
    cp "$a" "fuzz/regressions/$t/"
    found+=("fuzz/regressions/$t/$(basename "$a")")
  done
  if [ "$status" = CRASHED ]; then
    grep -E 'panicked at|ERROR: libFuzzer|SUMMARY' "$log" | head -5 || true
    if [ ${#found[@]} -eq 0 ]; then
      tail -30 "$log"
    fi
    mkdir -p fuzz/artifacts && cp "$log" "fuzz/artifacts/$t.log"
    echo "(the whole log: fuzz/artifacts/$t.log)"
  fi
  line="$t: ${runs:-?} runs in ${took}s, $status"
  [ ${#found[@]} -gt 0 ] && line="$line, kept ${found[*]}"
  summary+=("$line")
  echo "$line"
done

echo
echo "== summary"
printf '%s\n' "${summary[@]}"
exit $failed
