#!/usr/bin/env bash
# Nightly benchmark: the small-files corpus (bench/corpus.sh: ~50,000 files, ~750 MB) backed up on
# night 1, then 1 % of its files modified and 0.1 % deleted, and backed up again on night 2, by
#   robusto push --incremental (tar.zst, level 3) → robusto serve
#   restic backup                                → rclone serve restic (restic's REST protocol)
# both on the loopback of a network namespace of their own, so that the bytes counted on its `lo`
# (packets sent, both directions, headers included) are theirs alone. Reports per tool the bytes
# that crossed on night 1 and night 2, night 2's wall time, and the robusto/restic ratios, as
# medians over RUNS alternating runs with the spread (min–max).
# usage: sudo bash bench/nightly.sh [RUNS]   (default 3; needs root for the namespace;
#        installs restic and rclone from Debian if missing)
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-3}
out=bench/out/nightly
ns=robusto-bench-nightly
port=18110
mkdir -p "$out"
command -v restic > /dev/null && command -v rclone > /dev/null || {
  apt-get install -y -qq --no-install-recommends restic rclone > /dev/null
}
bash bench/corpus.sh bench/corpus > /dev/null
cargo build --release --quiet
bin=$PWD/target/release/robusto
corpus=$PWD/bench/corpus/small

ip netns del "$ns" 2> /dev/null || true
ip netns add "$ns"
trap 'ip netns pids "$ns" 2> /dev/null | xargs -r kill 2> /dev/null; ip netns del "$ns" 2> /dev/null || true' EXIT
ip netns exec "$ns" ip link set lo up
inns() { ip netns exec "$ns" "$@"; }
lo_bytes() { inns cat /sys/class/net/lo/statistics/tx_bytes; }
wait_port() { for _ in $(seq 400); do inns bash -c "exec 3<>/dev/tcp/127.0.0.1/$port" 2> /dev/null && return 0; sleep 0.05; done; echo "server did not start" >&2; exit 1; }

# night 2's changes, the same every run: every 100th file rewritten (same size, one byte
# flipped, mtime kept: only the change time tells), every 1000th (offset 7) deleted
change_tree() {
  local tree=$1
  find "$tree" -type f ! -name .done | sort > "$out/files.list"
  awk 'NR % 100 == 0' "$out/files.list" | python3 -c '
import os, sys
for p in sys.stdin.read().splitlines():
    st = os.stat(p)
    with open(p, "r+b") as f:
        b = f.read(1)
        f.seek(0)
        f.write(bytes([(b[0] ^ 0xFF) if b else 0]))
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))
'
  awk 'NR % 1000 == 7' "$out/files.list" | xargs -r -d '\n' rm -f
}

# run_one TOOL → prints "night1_bytes night2_bytes night2_seconds"
run_one() {
  local tool=$1 tree=$out/tree data=$out/data state=$out/state b0 b1 b2 t0 t1 pid
  rm -rf "$tree" "$data" "$state"
  mkdir -p "$data" "$state"
  cp -a "$corpus" "$tree"
  case $tool in
    robusto)
      # started straight under `ip netns exec` (which execs it): $! is the server, and its
      # output does not hold the $(run_one) pipe open
      ip netns exec "$ns" "$bin" -q serve --listen "127.0.0.1:$port" --data "$data" > /dev/null 2>&1 & pid=$!
      wait_port
      night() { inns "$bin" -q push "$tree" --to "http://127.0.0.1:$port/files/" --state-dir "$state" \
        --incremental --format tar --compress zstd -l 3 --name "nightly-$1" > /dev/null; }
      ;;
    restic)
      ip netns exec "$ns" rclone serve restic --addr "127.0.0.1:$port" "$data" > /dev/null 2>&1 & pid=$!
      wait_port
      export RESTIC_PASSWORD=bench RESTIC_REPOSITORY="rest:http://127.0.0.1:$port/" RESTIC_CACHE_DIR="$state/cache"
      inns restic init -q > /dev/null
      night() { inns restic backup -q "$tree" > /dev/null; }
      ;;
  esac
  b0=$(lo_bytes)
  night 1
  b1=$(lo_bytes)
  change_tree "$tree"
  t0=$(date +%s.%N)
  night 2
  t1=$(date +%s.%N)
  b2=$(lo_bytes)
  kill "$pid"; wait "$pid" 2> /dev/null || true
  echo "$((b1 - b0)) $((b2 - b1)) $(awk "BEGIN { print $t1 - $t0 }")"
}

: > "$out/runs.txt"
for i in $(seq "$runs"); do
  # alternate which tool goes first
  if [ $((i % 2)) = 1 ]; then order="robusto restic"; else order="restic robusto"; fi
  for tool in $order; do
    r=$(run_one "$tool")
    echo "$tool $r" | tee -a "$out/runs.txt"
  done
done

python3 - "$out/runs.txt" << 'EOF'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    tool, n1, n2, secs = line.split()
    rows.setdefault(tool, []).append((int(n1), int(n2), float(secs)))
def med(tool, i):
    v = [r[i] for r in rows[tool]]
    return statistics.median(v), min(v), max(v)
print(f"| tool | night 1 sent (MB) | night 2 sent (MB) | night 2 time (s) |")
print(f"|---|---|---|---|")
for tool in ("robusto", "restic"):
    a, b, c = med(tool, 0), med(tool, 1), med(tool, 2)
    print(f"| {tool} | {a[0]/1e6:.1f} ({a[1]/1e6:.1f}–{a[2]/1e6:.1f}) | {b[0]/1e6:.2f} ({b[1]/1e6:.2f}–{b[2]/1e6:.2f}) | {c[0]:.1f} ({c[1]:.1f}–{c[2]:.1f}) |")
r2 = med("robusto", 1)[0] / med("restic", 1)[0]
rt = med("robusto", 2)[0] / med("restic", 2)[0]
print(f"\nnight 2, robusto/restic: bytes {r2:.2f}, time {rt:.2f} (medians of {len(rows['robusto'])} runs each)")
EOF
