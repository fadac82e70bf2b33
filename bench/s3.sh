#!/usr/bin/env bash
# S3 store benchmark: a 1 GiB random file over 127.0.0.1 with 8 MiB chunks, alternating runs of
#   s3x2   robusto send → bench/rr-proxy.mjs (round robin) → two `robusto serve --store s3`
#          nodes on one bucket → Ceph radosgw
#   fs     robusto send → one `robusto serve` on the fs store (--data, fsync per chunk)
#   tus-s3 tus-js-client → @tus/server + @tus/s3-store (bench/tus-s3-server.mjs, 8 MiB parts)
#          → the same Ceph
# Reports, per setup, the median and min–max over the runs of client-seen MB/s (1e6 bytes/s),
# server CPU seconds per GiB (utime+stime from /proc/PID/stat, summed over the nodes), server
# peak RSS (VmHWM) per node, and ratios against the @tus/s3-store row. Also logged: the CPU of
# the proxy and of Ceph (radosgw + OSD, when their pid files are known). Every run's upload is
# downloaded again (GET through the server) and its MD5 compared with the file's; then the
# run's bucket is removed (the memstore OSD keeps objects in RAM).
# As in bench/send.sh, robusto send's manifest (chunk MD5s) is computed once before timing.
#
# usage: bash bench/s3.sh [RUNS]   (default 2 runs of each setup)
# Ceph: with ROBUSTO_BENCH_S3_ENDPOINT, AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY set, that
# endpoint is used (ROBUSTO_BENCH_CEPH_CONF=…/ceph.conf lets the script purge buckets with
# radosgw-admin, bypassing the garbage collector, and read the Ceph daemons' CPU); otherwise a
# single-node Ceph is started with ci/s3-engines.sh in $TMPDIR/robusto-bench-ceph and stopped on
# exit. To use the one .ci/run started:
#   source /tmp/robusto-ceph/env; ROBUSTO_BENCH_S3_ENDPOINT=$ROBUSTO_TEST_CEPH_ENDPOINT \
#   AWS_ACCESS_KEY_ID=$ROBUSTO_TEST_CEPH_KEY AWS_SECRET_ACCESS_KEY=$ROBUSTO_TEST_CEPH_SECRET \
#   ROBUSTO_BENCH_CEPH_CONF=/tmp/robusto-ceph/ceph.conf bash bench/s3.sh
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-${RUNS:-2}}
size=$((1 << 30))
chunk=8388608
out=bench/out
corpus=bench/corpus
mkdir -p "$out" "$corpus"
# the same 1 GiB random file bench/corpus.sh and bench/serve.sh use (and with the same marker)
file=$corpus/big/random.bin
if [ ! -f "$corpus/big/.done" ]; then
  rm -rf "$corpus/big"; mkdir -p "$corpus/big"
  head -c "$size" /dev/urandom > "$file"
  touch "$corpus/big/.done"
fi
[ -d node_modules/tus-js-client ] && [ -d node_modules/@tus/s3-store ] ||
  { echo "run 'npm ci' first (tus-js-client, @tus/server, @tus/s3-store)" >&2; exit 1; }
cargo build --release --quiet
bin=target/release/robusto
tck=$(getconf CLK_TCK)
state=$out/s3-state
port_proxy=${PORT:-18180}
port_a=$((port_proxy + 1)) port_b=$((port_proxy + 2)) port_fs=$((port_proxy + 3)) port_tus=$((port_proxy + 4))
export NODE_NO_WARNINGS=1 # the AWS SDK's "node >= 22 from 2027" notice on every start

pids=()
own_ceph=
cleanup() {
  local p
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  if [ -n "$own_ceph" ]; then ceph_stop "$own_ceph" || true; fi
}
trap cleanup EXIT

# ---- the S3 engine
if [ -n "${ROBUSTO_BENCH_S3_ENDPOINT:-}" ] && [ -n "${AWS_ACCESS_KEY_ID:-}" ] && [ -n "${AWS_SECRET_ACCESS_KEY:-}" ]; then
  ceph_conf=${ROBUSTO_BENCH_CEPH_CONF:-}
else
  # shellcheck source=ci/s3-engines.sh
  source ci/s3-engines.sh
  if (exec 3<>/dev/tcp/127.0.0.1/7480) 2>/dev/null; then
    echo "something (a Ceph?) already listens on 127.0.0.1:7480: set ROBUSTO_BENCH_S3_ENDPOINT, AWS_ACCESS_KEY_ID," \
      "AWS_SECRET_ACCESS_KEY (and ROBUSTO_BENCH_CEPH_CONF) to use it; see the head of $0" >&2
    exit 1
  fi
  ceph_install
  own_ceph=${TMPDIR:-/tmp}/robusto-bench-ceph
  ceph_start "$own_ceph"
  export ROBUSTO_BENCH_S3_ENDPOINT=$ROBUSTO_TEST_CEPH_ENDPOINT
  export AWS_ACCESS_KEY_ID=$ROBUSTO_TEST_CEPH_KEY AWS_SECRET_ACCESS_KEY=$ROBUSTO_TEST_CEPH_SECRET
  ceph_conf=$own_ceph/ceph.conf
fi
export AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY ROBUSTO_BENCH_S3_ENDPOINT
endpoint=$ROBUSTO_BENCH_S3_ENDPOINT
ceph_run=
if [ -n "$ceph_conf" ]; then
  [ -f "$ceph_conf" ] || { echo "ROBUSTO_BENCH_CEPH_CONF=$ceph_conf: no such file" >&2; exit 1; }
  ceph_run=$(dirname "$ceph_conf")/run
fi

# s3 mkbucket B | s3 rmbucket B: a bucket made, or emptied (objects, unfinished multipart uploads)
# and removed, with the aws-sdk @tus/s3-store brings
s3() {
  node --input-type=module -e '
import { S3Client, CreateBucketCommand, DeleteBucketCommand, ListObjectsV2Command, DeleteObjectsCommand,
  ListMultipartUploadsCommand, AbortMultipartUploadCommand } from "@aws-sdk/client-s3";
const [cmd, Bucket] = process.argv.slice(1);
const c = new S3Client({ endpoint: process.env.ROBUSTO_BENCH_S3_ENDPOINT, forcePathStyle: true, region: "us-east-1",
  credentials: { accessKeyId: process.env.AWS_ACCESS_KEY_ID, secretAccessKey: process.env.AWS_SECRET_ACCESS_KEY } });
if (cmd === "mkbucket") await c.send(new CreateBucketCommand({ Bucket }));
else if (cmd === "rmbucket") {
  for (;;) {
    const l = await c.send(new ListObjectsV2Command({ Bucket }));
    if (!l.Contents?.length) break;
    await c.send(new DeleteObjectsCommand({ Bucket, Delete: { Objects: l.Contents.map((o) => ({ Key: o.Key })) } }));
  }
  const m = await c.send(new ListMultipartUploadsCommand({ Bucket }));
  for (const u of m.Uploads ?? []) await c.send(new AbortMultipartUploadCommand({ Bucket, Key: u.Key, UploadId: u.UploadId }));
  await c.send(new DeleteBucketCommand({ Bucket }));
} else throw new Error("s3: unknown command " + cmd);
' -- "$@"
}
# remove_bucket B: radosgw-admin frees the RAM at once (no garbage collector wait) when we can
remove_bucket() {
  if [ -n "$ceph_conf" ]; then
    radosgw-admin -c "$ceph_conf" -n client.admin bucket rm --bucket="$1" --purge-objects --bypass-gc \
      >> "$out/s3-radosgw-admin.log" 2>&1 || s3 rmbucket "$1"
  else
    s3 rmbucket "$1"
  fi
}

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null || { echo "port $1 is busy: set PORT=…" >&2; exit 1; }; }
wait_up() { for _ in $(seq 200); do curl -s -o /dev/null -X OPTIONS "http://127.0.0.1:$1/files/" && return 0; sleep 0.05; done; echo "server on port $1 did not start" >&2; exit 1; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
peak_kib() { awk '/VmHWM/ {print $2}' "/proc/$1/status"; }
stop() { local p; for p in "$@"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done; pids=(); }
# ceph_ticks: radosgw + OSD CPU ticks so far (0 when their pids are unknown)
ceph_ticks() {
  local t=0 f
  [ -n "$ceph_run" ] || { echo 0; return; }
  for f in "$ceph_run/client.rgw.a.pid" "$ceph_run/osd.0.pid"; do
    [ -f "$f" ] && t=$((t + $(cpu_ticks "$(cat "$f")")))
  done
  echo "$t"
}
file_md5=$(md5sum "$file" | cut -d' ' -f1)
# verify URL: the upload, downloaded again, has the file's MD5
verify() {
  local got
  got=$(curl -sSf "$1" | md5sum | cut -d' ' -f1)
  [ "$got" = "$file_md5" ] || { echo "MD5 mismatch for $1: $got, want $file_md5" >&2; exit 1; }
}
send() { "$bin" -q send "$file" --to "$1" --chunk-size 8MiB --state-dir "$state"; }

# The manifest, once (cached in the state directory by path, size and mtime); this also warms
# the page cache with the file.
rm -rf "$state"
port_free "$port_fs"
"$bin" -q serve --listen "127.0.0.1:$port_fs" --data "$out/s3-warm" & pids=($!); wait_up "$port_fs"
send "http://127.0.0.1:$port_fs/files/" > /dev/null
stop "${pids[@]}"; rm -rf "$out/s3-warm"

stamp=$(date -u +%H%M%S)
# run_one KIND N → appends to $out/s3-res-KIND (and runs.log) "mbps server_cpu_s_per_gib peak_mib_node1 peak_mib_node2|- ceph_cpu_s_per_gib proxy_cpu_s_per_gib|-"
run_one() {
  local kind=$1 n=$2 bucket="robusto-bench-$stamp-$1-$2" data=$out/s3-data-fs url t0 t1 c0 c1 load0 rustc0
  local srv=() ticks=0 p peaks=() proxy_ticks=-
  rm -rf "$state/jobs"
  sync # start every run with no dirty pages left by the previous one
  case $kind in
    s3x2)
      s3 mkbucket "$bucket"
      port_free "$port_a"; port_free "$port_b"; port_free "$port_proxy"
      for p in "$port_a" "$port_b"; do
        "$bin" -q serve --listen "127.0.0.1:$p" --store s3 --s3-bucket "$bucket" --s3-endpoint "$endpoint" \
          --s3-prefix bench/ & srv+=($!); pids+=($!)
      done
      node bench/rr-proxy.mjs "$port_proxy" "127.0.0.1:$port_a" "127.0.0.1:$port_b" 2>> "$out/s3-proxy.log" &
      proxy=$!; pids+=($!)
      wait_up "$port_a"; wait_up "$port_b"; wait_up "$port_proxy" ;;
    fs)
      rm -rf "$data"; mkdir -p "$data"
      port_free "$port_fs"
      "$bin" -q serve --listen "127.0.0.1:$port_fs" --data "$data" & srv=($!); pids+=($!)
      wait_up "$port_fs" ;;
    tus-s3)
      s3 mkbucket "$bucket"
      port_free "$port_tus"
      node bench/tus-s3-server.mjs "$port_tus" "$bucket" tus- 2>> "$out/s3-tus-server.log" & srv=($!); pids+=($!)
      wait_up "$port_tus" ;;
  esac
  load0=$(cut -d' ' -f1 /proc/loadavg)
  rustc0=$(pgrep -c -x rustc || true)
  c0=$(ceph_ticks)
  t0=$(date +%s.%N)
  case $kind in
    s3x2) url=$(send "http://127.0.0.1:$port_proxy/files/") ;;
    fs) url=$(send "http://127.0.0.1:$port_fs/files/") ;;
    tus-s3) url=$(node interop/tus-js-upload.mjs "http://127.0.0.1:$port_tus/files/" "$file" "$chunk" |
      node -e 'let s = ""; process.stdin.on("data", (d) => (s += d)).on("end", () => console.log(JSON.parse(s).url))') ;;
  esac
  t1=$(date +%s.%N)
  c1=$(ceph_ticks)
  for p in "${srv[@]}"; do
    ticks=$((ticks + $(cpu_ticks "$p"))); peaks+=("$(peak_kib "$p")")
  done
  [ "$kind" = s3x2 ] && proxy_ticks=$(cpu_ticks "$proxy")
  verify "$url"
  stop "${pids[@]}"
  case $kind in fs) rm -rf "$data" ;; *) remove_bucket "$bucket" ;; esac
  awk -v s="$size" -v t0="$t0" -v t1="$t1" -v k="$ticks" -v hz="$tck" -v p1="${peaks[0]}" -v p2="${peaks[1]:--}" \
    -v c="$((c1 - c0))" -v ceph="$ceph_run" -v px="$proxy_ticks" \
    'BEGIN { g = s / 1073741824
      printf "%.1f %.2f %.1f %s %s %s\n", s / (t1 - t0) / 1e6, (k / hz) / g, p1 / 1024,
        (p2 == "-" ? "-" : sprintf("%.1f", p2 / 1024)), (ceph == "" ? "-" : sprintf("%.2f", (c / hz) / g)),
        (px == "-" ? "-" : sprintf("%.2f", (px / hz) / g)) }' |
    tee -a "$out/s3-res-$kind" >> "$out/runs.log"
  echo "  (s3.sh $kind run $n, chunk $chunk, MD5 ok, load $load0 → $(cut -d' ' -f1 /proc/loadavg), rustc procs $rustc0 → $(pgrep -c -x rustc || true))" >> "$out/runs.log"
}

{
  echo "== $(date -u +%FT%TZ) $(nproc) cores, bench/s3.sh $runs runs, endpoint $endpoint, robusto $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- src Cargo.toml Cargo.lock || echo +dirty-src)"
  echo "  fields: MB/s server-CPU-s/GiB peak-MiB-node1 peak-MiB-node2 Ceph-CPU-s/GiB proxy-CPU-s/GiB"
} >> "$out/runs.log"
kinds=(s3x2 fs tus-s3)
for k in "${kinds[@]}"; do : > "$out/s3-res-$k"; done
for i in $(seq "$runs"); do
  for k in "${kinds[@]}"; do
    echo "run $i/$runs: $k" >&2
    run_one "$k" "$i"
    tail -n 1 "$out/s3-res-$k" >&2
  done
done
declare -A res
for k in "${kinds[@]}"; do res[$k]=$(cat "$out/s3-res-$k"); done

# summ LINES COLUMN → "median min max" of that column ("-" when it has none), with the
# column's decimals (1 for MB/s and MiB, 2 for CPU seconds)
summ() {
  local d=1; case $2 in 2 | 5 | 6) d=2 ;; esac
  printf '%s' "$1" | awk -v c="$2" 'NF && $c != "-" { print $c }' | sort -g |
    awk -v d="$d" '{ v[NR] = $1 } END { if (!NR) { print "- - -"; exit }
      m = NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
      f = "%." d "f"; printf f " " f " " f "\n", m, v[1], v[NR] }'
}
spread() { read -r m lo hi <<< "$1"; [ "$m" = - ] && { echo "–"; return; }; printf '%s (%s–%s)' "$m" "$lo" "$hi"; }
med() { read -r m _ <<< "$1"; echo "$m"; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "-" || b == "-" || b == 0) print "–"; else printf "%.2fx", a / b }'; }
declare -A name=([s3x2]="robusto send → proxy → 2× robusto serve --store s3" [fs]="robusto send → robusto serve (fs store)"
  [tus-s3]="tus-js-client → @tus/server + @tus/s3-store")
t_mbps=$(med "$(summ "${res[tus-s3]}" 1)"); t_cpu=$(med "$(summ "${res[tus-s3]}" 2)"); t_rss=$(med "$(summ "${res[tus-s3]}" 3)")
echo
echo "1 GiB random file, 8 MiB chunks, $runs runs each, median (min–max); $(nproc) cores; $(date -u +%F)"
echo
echo "| setup | MB/s | server CPU-s/GiB (all nodes) | server peak RSS MiB per node | Ceph CPU-s/GiB | MB/s vs @tus/s3-store | CPU vs @tus/s3-store | RSS vs @tus/s3-store |"
echo "|---|---|---|---|---|---|---|---|"
for k in "${kinds[@]}"; do
  r=${res[$k]}
  mb=$(summ "$r" 1); cpu=$(summ "$r" 2); p1=$(summ "$r" 3); p2=$(summ "$r" 4); ce=$(summ "$r" 5)
  rss=$(spread "$p1"); [ "$(med "$p2")" != - ] && rss="$rss / $(spread "$p2")"
  peakmax=$(awk -v a="$(med "$p1")" -v b="$(med "$p2")" 'BEGIN { print (b != "-" && b > a) ? b : a }')
  echo "| ${name[$k]} | $(spread "$mb") | $(spread "$cpu") | $rss | $(spread "$ce") | $(ratio "$(med "$mb")" "$t_mbps") | $(ratio "$(med "$cpu")" "$t_cpu") | $(ratio "$peakmax" "$t_rss") |"
done
px=$(summ "${res[s3x2]}" 6)
echo
echo "rr-proxy CPU-s/GiB (not in the server column): $(spread "$px"); per-run lines in $out/runs.log"
