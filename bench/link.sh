#!/usr/bin/env bash
# A slow, lossy link: the same folder (small files plus one large random file, SIZE_MB in all)
# gets onto a server over an emulated link of RATE_MBIT and RTT_MS, once as it is and once with
# the link cut every CUT_MB of client→server bytes, by
#   robusto-tar  robusto push --format tar --compress zstd -l 3          → robusto serve
#   robusto-zip  robusto push --format zip --compress deflate -l 6       → robusto serve
#   restic       restic backup (a fresh repository each run)             → rclone serve restic
#   rclone-copy  rclone copy                                             → rclone serve webdav
#   rclone-rcat  tar | zstd -3 -T0 | rclone rcat                         → rclone serve webdav
#   tus          tar | zstd -3 -T0 > FILE, then tus-js-client (8 MiB chunks) → @tus/server
# The link: a network namespace of its own (removed at the end, on failure and on Ctrl-C too)
# where client, proxy and server run on its loopback. Its `lo` carries an htb root whose two
# classes hold a tbf each, one per direction of the client↔proxy hop (u32 on the proxy's port);
# bench/link-proxy.mjs adds the round trip (a delay line holding each piece RTT/2 each way, one
# RTT for a new connection's handshake), counts the bytes both ways and cuts every connection
# every CUT_MB. Per run: wall time, bytes through the proxy (both ways) ÷ the folder's bytes,
# the client's CPU (user+sys, GNU time), and whether the server holds the right content
# (robusto: the published file's MD5 against a local `robusto pack`; restic: `restic check
# --read-data` of the repository on disk; rclone copy: `rclone check` of the served folder;
# tar.zst uploads: MD5 against a local tar | zstd). Tools alternate within a round (the order
# rotates each round); medians and spread (min–max) over RUNS rounds; prints a Markdown table.
#
# usage: sudo bash bench/link.sh [--rate MBIT] [--rtt MS] [--size MB] [--cut MB] [--runs N]
#                                [--tools "robusto-tar restic …"] [--timeout S]
#   or the same as variables: RATE_MBIT=50 RTT_MS=80 SIZE_MB=500 CUT_MB=50 RUNS=1 TOOLS=… RUN_TIMEOUT=…
#   ROBUSTO_BIN: the binary (default target/release/robusto, after `cargo build --release`)
#   Quick check: SIZE_MB=40 bash bench/link.sh. Needs root (netns, tc), restic, rclone, zstd,
#   GNU time, node with `npm ci` done. A full default round is ~25 min, most of it rclone copy.
set -euo pipefail
cd "$(dirname "$0")/.."

RATE_MBIT=${RATE_MBIT:-50}
RTT_MS=${RTT_MS:-80}
SIZE_MB=${SIZE_MB:-500}
CUT_MB=${CUT_MB:-50}
RUNS=${RUNS:-1}
TOOLS=${TOOLS:-"robusto-tar robusto-zip restic rclone-copy rclone-rcat tus"}
RUN_TIMEOUT=${RUN_TIMEOUT:-}
# rclone's default is 4; it opens a new connection for nearly every request (1,415 requests on
# 911 connections for 437 files, with or without the delay), so on this link more transfers
# help: 437 files + 1 big, 40 MB, took 49.7 s with 4 and 19.8 s with 16
RCLONE_TRANSFERS=${RCLONE_TRANSFERS:-16}
TUS_CHUNK=${TUS_CHUNK:-8388608}
while [ $# -gt 0 ]; do
  case $1 in
    --rate) RATE_MBIT=$2; shift 2 ;;
    --rtt) RTT_MS=$2; shift 2 ;;
    --size) SIZE_MB=$2; shift 2 ;;
    --cut) CUT_MB=$2; shift 2 ;;
    --runs) RUNS=$2; shift 2 ;;
    --tools) TOOLS=$2; shift 2 ;;
    --timeout) RUN_TIMEOUT=$2; shift 2 ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
done
for v in RATE_MBIT RTT_MS SIZE_MB CUT_MB RUNS; do
  if ! [[ ${!v} =~ ^[0-9]+$ ]] || { [ "${!v}" = 0 ] && [ "$v" != CUT_MB ]; }; then echo "$v must be a positive integer (is '${!v}')" >&2; exit 2; fi
done
for t in $TOOLS; do
  case $t in robusto-tar | robusto-zip | restic | rclone-copy | rclone-rcat | tus) ;;
    *) echo "unknown tool: $t" >&2; exit 2 ;; esac
done
[ "$(id -u)" = 0 ] || { echo "needs root (network namespace, tc)" >&2; exit 1; }
for c in restic rclone zstd node curl tc ip timeout python3; do
  command -v "$c" > /dev/null || { echo "needs $c" >&2; exit 1; }
done
[ -x /usr/bin/time ] || { echo "needs GNU time (apt-get install time)" >&2; exit 1; }
if [ ! -d node_modules/tus-js-client ] || [ ! -d node_modules/@tus/server ]; then echo "run 'npm ci --no-audit --no-fund' first" >&2; exit 1; fi
bin=$(realpath "${ROBUSTO_BIN:-target/release/robusto}" 2> /dev/null || true)
[ -x "$bin" ] || { echo "no robusto binary at ${ROBUSTO_BIN:-target/release/robusto}: cargo build --release, or set ROBUSTO_BIN" >&2; exit 1; }

out=$PWD/bench/out/link
ns=robusto-link-$$
pport=18200 # the proxy: the end of the link clients talk to
sport=18201 # the server, behind the proxy
sinkport=18202
delay=$((RTT_MS / 2))
rate_bps=$((RATE_MBIT * 1000000))
cut_bytes=$((CUT_MB * 1000000))
export RESTIC_PASSWORD=bench RCLONE_CONFIG=$out/rclone.conf
mkdir -p "$out"
: > "$RCLONE_CONFIG"

# ---- the corpus: corpus.sh's small files (its rule: regular files under 8 MiB from /usr/lib and
# /usr/share, in path order) up to half of SIZE_MB, and one random file of the other half
corpus=$PWD/bench/corpus/link-$SIZE_MB
if [ ! -f "$corpus.done" ]; then
  echo "building the corpus $corpus ($SIZE_MB MB)…" >&2
  rm -rf "$corpus"; mkdir -p "$corpus/small"
  half=$((SIZE_MB * 500000))
  find /usr/share /usr/lib -xdev -type f -size -8M -readable -printf '%s\t%p\n' 2> /dev/null | sort -t$'\t' -k2 |
    awk -F'\t' -v cap="$half" '{ if (total + $1 > cap) exit; total += $1; print $2 }' > "$corpus.list" || true
  tar -cf - --files-from="$corpus.list" 2> /dev/null | tar -xf - -C "$corpus/small" || true
  head -c "$half" /dev/urandom > "$corpus/random.bin"
  touch "$corpus.done"
fi
folder_bytes=$(find "$corpus" -type f -printf '%s\n' | awk '{ s += $1 } END { print s }')
folder_files=$(find "$corpus" -type f | wc -l)

# ---- references, once per corpus (outside the link): robusto's archives (its output is the
# same for any thread count) and the tar.zst of `tar | zstd`
ref=$out/ref-$SIZE_MB
mkdir -p "$ref"
tarzst() { tar -cf - -C "$(dirname "$corpus")" "$(basename "$corpus")" | zstd -3 -T0 -q -c; }
for f in tar zip; do
  [ -f "$ref/robusto.$f.md5" ] && continue
  case $f in
    tar) a=$ref/r.tar.zst; "$bin" -q pack "$corpus" -o "$a" --format tar --compress zstd -l 3 > /dev/null ;;
    zip) a=$ref/r.zip; "$bin" -q pack "$corpus" -o "$a" --format zip --compress deflate -l 6 > /dev/null ;;
  esac
  stat -c %s "$a" > "$ref/robusto.$f.bytes"
  md5sum < "$a" | cut -d' ' -f1 > "$ref/robusto.$f.md5"
  rm -f "$ref"/r.*
done
if [ ! -f "$ref/tarzst.md5" ]; then
  tarzst > "$ref/t.tar.zst"
  stat -c %s "$ref/t.tar.zst" > "$ref/tarzst.bytes"
  md5sum < "$ref/t.tar.zst" | cut -d' ' -f1 > "$ref/tarzst.md5"
  rm -f "$ref/t.tar.zst"
fi

# ---- the link
cleanup() {
  local pids
  pids=$(ip netns pids "$ns" 2> /dev/null || true)
  # shellcheck disable=SC2086
  [ -z "$pids" ] || { kill $pids 2> /dev/null || true; sleep 0.5; }
  pids=$(ip netns pids "$ns" 2> /dev/null || true)
  # shellcheck disable=SC2086
  [ -z "$pids" ] || kill -9 $pids 2> /dev/null || true
  ip netns del "$ns" 2> /dev/null || true
  rm -rf "$out/run"
}
trap cleanup EXIT
trap 'echo "interrupted" >&2; exit 130' INT TERM
ip netns add "$ns"
inns() { ip netns exec "$ns" "$@"; }
inns ip link set lo up
# burst: above lo's 64 KiB GSO packets (else nothing passes), or 20 ms of the rate if larger
burst=$((rate_bps / 8 / 50)); [ "$burst" -gt 262144 ] || burst=262144
inns tc qdisc add dev lo root handle 1: htb default 30
for c in 10 20 30; do inns tc class add dev lo parent 1: classid "1:$c" htb rate 20gbit ceil 20gbit quantum 200000; done
for c in 10 20; do inns tc qdisc add dev lo parent "1:$c" handle "$c:" tbf rate "${RATE_MBIT}mbit" burst "$burst" limit 33554432; done
inns tc filter add dev lo parent 1: protocol ip prio 1 u32 match ip dport "$pport" 0xffff flowid 1:10 # client → proxy
inns tc filter add dev lo parent 1: protocol ip prio 1 u32 match ip sport "$pport" 0xffff flowid 1:20 # proxy → client
tbf_drops() { inns tc -s qdisc show dev lo | awk '/^qdisc tbf/ { t = 1; next } t && /dropped/ { gsub(/[(,]/, " "); for (i = 1; i <= NF; i++) if ($i == "dropped") d += $(i + 1); t = 0 } END { print d + 0 }'; }

wait_port() {
  local p=$1
  for _ in $(seq 400); do inns bash -c "exec 3<>/dev/tcp/127.0.0.1/$p" 2> /dev/null && return 0; sleep 0.05; done
  echo "nothing listens on $p" >&2; return 1
}
proxy_pid=
proxy_start() { # proxy_start CUT_BYTES_OR_0 TARGET_PORT
  : > "$out/run/proxy.out"
  ip netns exec "$ns" node bench/link-proxy.mjs "$pport" "${2:-$sport}" "$delay" "$1" > "$out/run/proxy.out" 2> "$out/run/proxy.err" &
  proxy_pid=$!
  for _ in $(seq 200); do grep -q ready "$out/run/proxy.out" && return 0; sleep 0.05; done
  echo "the proxy did not start" >&2; return 1
}
proxy_stats=
proxy_stop() { # sets proxy_stats to "up down cuts conns" (not in a $(…): wait needs this shell)
  kill "$proxy_pid" 2> /dev/null || true
  wait "$proxy_pid" 2> /dev/null || true
  if [ -s "$out/run/proxy.err" ]; then cat "$out/run/proxy.err" >&2; fi
  proxy_stats=$(tail -n 1 "$out/run/proxy.out" | python3 -c 'import json, sys; s = json.load(sys.stdin); print(s["up"], s["down"], s["cuts"], s["conns"])')
}

# ---- check the link: a small request ≈ RTT, an upload ≈ size ÷ rate
mkdir -p "$out/run"
ip netns exec "$ns" node bench/put-sink.mjs "$sinkport" > /dev/null & sink=$!
wait_port "$sinkport"
proxy_start 0 "$sinkport"
cal=$((SIZE_MB < 40 ? SIZE_MB / 2 : 20))
head -c $((cal * 1000000)) /dev/urandom > "$out/run/cal.bin"
small=$(inns curl -sS -o /dev/null -o /dev/null -w '%{time_total}\n' "http://127.0.0.1:$pport/a" "http://127.0.0.1:$pport/b" | tail -n 1)
big=$(inns curl -sS -o /dev/null -w '%{time_total}' -T "$out/run/cal.bin" "http://127.0.0.1:$pport/c")
proxy_stop
kill "$sink"; wait "$sink" 2> /dev/null || true
link_check=$(awk -v s="$small" -v b="$big" -v n="$cal" -v r="$RATE_MBIT" -v rtt="$RTT_MS" 'BEGIN {
  printf "link check: a request on an open connection took %.0f ms (RTT %d ms); %d MB up on a new connection %.2f s (%d MB ÷ %d Mbit/s + 2 RTT: %.2f s)",
    s * 1000, rtt, n, b, n, r, n * 8 / r + 2 * rtt / 1000 }')
echo "$link_check" >&2
[ "$(tbf_drops)" = 0 ] || echo "warning: tbf dropped packets during the link check" >&2

if [ -z "$RUN_TIMEOUT" ]; then
  # ten times the folder's own floor (rclone copy needs 5), and at least two minutes, + 1 min
  RUN_TIMEOUT=$(awk -v b="$folder_bytes" -v r="$rate_bps" 'BEGIN { t = 10 * b * 8 / r; printf "%d", (t < 120 ? 120 : t) + 60 }')
fi
endpoint=http://127.0.0.1:$pport

# ---- one run: run_one TOOL CUT(0|1) → appends "tool cut status wall cpu up down cuts conns" to runs.txt
run_one() {
  local tool=$1 cut=$2 data=$out/run/data state=$out/run/state tf=$out/run/time log server status rc wall cpu got drops0 drops1 stats
  log=$out/logs/$tool-cut$cut-$(date +%H%M%S).log
  rm -rf "$data" "$state"; mkdir -p "$data" "$state" "$out/logs"
  : > "$log"
  case $tool in
    robusto-*) ip netns exec "$ns" "$bin" -q serve --listen "127.0.0.1:$sport" --data "$data" >> "$log" 2>&1 & server=$! ;;
    restic)
      restic init -q -r "$data/repo" >> "$log" 2>&1 # on disk, outside the link
      ip netns exec "$ns" rclone serve restic --addr "127.0.0.1:$sport" "$data/repo" >> "$log" 2>&1 & server=$!
      ;;
    rclone-*) ip netns exec "$ns" rclone serve webdav --addr "127.0.0.1:$sport" "$data" >> "$log" 2>&1 & server=$! ;;
    tus) ip netns exec "$ns" node interop/tus-server.mjs "$data" "$sport" > /dev/null 2>> "$log" & server=$! ;;
  esac
  wait_port "$sport"
  proxy_start "$([ "$cut" = 1 ] && echo "$cut_bytes" || echo 0)"
  drops0=$(tbf_drops)
  local -a cmd
  # shellcheck disable=SC2016 # the pipelines' $1… are the inner bash's
  case $tool in
    robusto-tar) cmd=("$bin" -q push "$corpus" --to "$endpoint/files/" --state-dir "$state" --name link --format tar --compress zstd -l 3) ;;
    robusto-zip) cmd=("$bin" -q push "$corpus" --to "$endpoint/files/" --state-dir "$state" --name link --format zip --compress deflate -l 6) ;;
    restic) cmd=(env "RESTIC_REPOSITORY=rest:$endpoint/" "RESTIC_CACHE_DIR=$state/cache" restic backup -q "$corpus") ;;
    rclone-copy) cmd=(rclone copy "$corpus" :webdav:link --webdav-url "$endpoint/" --transfers "$RCLONE_TRANSFERS"
      --retries 5 --retries-sleep 2s --low-level-retries 10 -q) ;;
    rclone-rcat) cmd=(bash -c 'set -o pipefail; tar -cf - -C "$1" "$2" | zstd -3 -T0 -q -c | rclone rcat :webdav:link.tar.zst --webdav-url "$3" --retries 5 --low-level-retries 10 -q' \
      _ "$(dirname "$corpus")" "$(basename "$corpus")" "$endpoint/") ;;
    tus) cmd=(bash -c 'set -o pipefail; tar -cf - -C "$1" "$2" | zstd -3 -T0 -q -c > "$3" && node interop/tus-js-upload.mjs "$4" "$3" "$5"' \
      _ "$(dirname "$corpus")" "$(basename "$corpus")" "$state/stage.tar.zst" "$endpoint/files/" "$TUS_CHUNK") ;;
  esac
  rc=0
  ip netns exec "$ns" /usr/bin/time -f '%e %U %S' -o "$tf" timeout -k 10 "$RUN_TIMEOUT" "${cmd[@]}" >> "$log" 2>&1 || rc=$?
  drops1=$(tbf_drops)
  proxy_stop
  stats=$proxy_stats
  read -r wall cpu <<< "$(tail -n 1 "$tf" | awk '{ print $1, $2 + $3 }')"
  kill "$server" 2> /dev/null; wait "$server" 2> /dev/null || true
  # did the right content arrive?
  status=ok
  if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
    status=timeout
  elif [ "$rc" != 0 ]; then
    status=exit$rc
  else
    case $tool in
      robusto-tar | robusto-zip)
        got=$(find "$data/files" -type f -name 'link.*' -exec md5sum {} + 2> /dev/null | cut -d' ' -f1)
        [ "$got" = "$(cat "$ref/robusto.${tool#robusto-}.md5")" ] || status=wrong
        ;;
      restic)
        RESTIC_CACHE_DIR=$state/cache restic -r "$data/repo" check -q --read-data >> "$log" 2>&1 || status=wrong
        [ "$(restic -r "$data/repo" snapshots -q --json --no-cache 2>> "$log" | python3 -c 'import json, sys; print(len(json.load(sys.stdin)))')" = 1 ] || status=wrong
        ;;
      rclone-copy) rclone check "$corpus" "$data/link" --one-way -q >> "$log" 2>&1 || status=wrong ;;
      rclone-rcat | tus)
        if [ "$tool" = tus ]; then
          got=$(find "$data" -maxdepth 1 -type f ! -name '*.json' -exec md5sum {} + | cut -d' ' -f1)
        else
          got=$(md5sum < "$data/link.tar.zst" | cut -d' ' -f1)
        fi
        [ "$got" = "$(cat "$ref/tarzst.md5")" ] || status=wrong
        ;;
    esac
  fi
  [ "$drops1" = "$drops0" ] || echo "warning: tbf dropped $((drops1 - drops0)) packets in this run" >&2
  echo "$tool $cut $status $wall $cpu $stats" | tee -a "$out/runs.txt" >&2
  rm -rf "$data" "$state"
}

{
  echo "# $(date -u +%FT%TZ) RATE_MBIT=$RATE_MBIT RTT_MS=$RTT_MS SIZE_MB=$SIZE_MB CUT_MB=$CUT_MB RUNS=$RUNS"
  echo "# $link_check"
} >> "$out/history.txt"
: > "$out/runs.txt"
read -r -a tools <<< "$TOOLS"
n=${#tools[@]}
echo "corpus: $folder_files files, $folder_bytes bytes; each run times out after $RUN_TIMEOUT s" >&2
for r in $(seq "$RUNS"); do
  for cut in 0 $([ "$CUT_MB" = 0 ] || echo 1); do
    for k in $(seq 0 $((n - 1))); do
      # rotate the order each round
      run_one "${tools[$(((k + r - 1) % n))]}" "$cut"
    done
  done
done
cat "$out/runs.txt" >> "$out/history.txt"

cmdline="sudo RUNS=$RUNS SIZE_MB=$SIZE_MB RATE_MBIT=$RATE_MBIT RTT_MS=$RTT_MS CUT_MB=$CUT_MB"
[ "$TOOLS" = "robusto-tar robusto-zip restic rclone-copy rclone-rcat tus" ] || cmdline+=" TOOLS=\"$TOOLS\""
[ "$RCLONE_TRANSFERS" = 16 ] || cmdline+=" RCLONE_TRANSFERS=$RCLONE_TRANSFERS"
cmdline+=" bash bench/link.sh"
python3 - "$out/runs.txt" "$folder_bytes" "$folder_files" "$rate_bps" "$RTT_MS" "$CUT_MB" "$RUNS" "$ref" "$cmdline" "$link_check" \
  "$(restic version | cut -d' ' -f2)" "$(rclone version | head -n 1 | cut -d' ' -f2)" \
  "$(node -p 'require("./node_modules/tus-js-client/package.json").version')" \
  "$(node -p 'require("./node_modules/@tus/server/package.json").version')" "$("$bin" --version | cut -d' ' -f2)" "$RCLONE_TRANSFERS" << 'EOF'
import statistics, sys
(runs, folder, files, rate, rtt, cut_mb, nruns, ref, cmdline, link_check,
 v_restic, v_rclone, v_tusjs, v_tus, v_robusto, transfers) = sys.argv[1:]
folder, rate = int(folder), int(rate)
rows = {}
for line in open(runs):
    tool, cut, status, wall, cpu, up, down, cuts, conns = line.split()
    rows.setdefault((tool, cut), []).append(dict(status=status, wall=float(wall), cpu=float(cpu),
                                                  wire=int(up) + int(down), cuts=int(cuts)))
def spread(v, fmt):
    m = statistics.median(v)
    if len(v) == 1:
        return fmt.format(m)
    return f"{fmt.format(m)} ({fmt.format(min(v))}–{fmt.format(max(v))})"
label = {
    "robusto-tar": f"`robusto push --format tar --compress zstd -l 3` → `robusto serve` ({v_robusto})",
    "robusto-zip": f"`robusto push --format zip` (deflate 6) → `robusto serve`",
    "restic": f"`restic backup` ({v_restic}) → `rclone serve restic` ({v_rclone})",
    "rclone-copy": f"`rclone copy --transfers {transfers}` → `rclone serve webdav`",
    "rclone-rcat": "`tar | zstd -3 -T0 | rclone rcat` → `rclone serve webdav`",
    "tus": f"`tar | zstd -3 -T0` to a file, then tus-js-client {v_tusjs} (8 MiB chunks) → @tus/server {v_tus}",
}
order = [t for t in label if (t, "0") in rows or (t, "1") in rows]
mbit = rate / 1e6
print(f"{int(nruns)} round(s), tools alternating; {folder / 1e6:.1f} MB in {files} files (half small files, half one random file); "
      f"link {mbit:g} Mbit/s each way, RTT {rtt} ms; medians (min–max). Time and CPU are the client's, wire bytes "
      f"both ways through the link (payload, no TCP/IP headers). The tus row's time and CPU include staging the tar.zst.")
print()
print(f"| client → server | time (s) | wire ÷ folder | client CPU (s) | cut every {cut_mb} MB: completed | time (s) | wire ÷ uncut |")
print("|---|---:|---:|---:|---|---:|---:|")
def done(rs):
    ok = [r for r in rs if r["status"] == "ok"]
    return ok
for t in order:
    a, b = rows.get((t, "0"), []), rows.get((t, "1"), [])
    aok, bok = done(a), done(b)
    cells = [label[t]]
    if aok:
        cells += [spread([r["wall"] for r in aok], "{:.1f}"), spread([r["wire"] / folder for r in aok], "{:.3f}"),
                  spread([r["cpu"] for r in aok], "{:.1f}")]
        if len(aok) < len(a):
            cells[1] += f" ({len(a) - len(aok)} of {len(a)} failed)"
    else:
        cells += ["failed: " + ", ".join(sorted({r["status"] for r in a})) if a else "—", "—", "—"]
    if b:
        why = ", ".join(sorted({r["status"] for r in b if r["status"] != "ok"}))
        ncuts = spread([r["cuts"] for r in b], "{:.0f}")
        if len(bok) == len(b):
            cells.append(f"yes ({ncuts} cuts)")
        elif not bok:
            cells.append(f"failed ({why}; {ncuts} cuts)")
        else:
            cells.append(f"{len(bok)} of {len(b)} ({why}; {ncuts} cuts)")
        if bok:
            cells.append(spread([r["wall"] for r in bok], "{:.1f}"))
            cells.append(spread([r["wire"] / statistics.median([x["wire"] for x in aok]) for r in bok], "{:.2f}") if aok else "—")
        else:
            cells.append("gave up after " + spread([r["wall"] for r in b], "{:.0f}"))
            cells.append("—")
    else:
        cells += ["—", "—", "—"]
    print("| " + " | ".join(cells) + " |")
print()
def floor(name, bytes_):
    return bytes_ * 8 / rate
for t, f, what in (("robusto-tar", "tar", "tar.zst"), ("robusto-zip", "zip", "zip")):
    if (t, "0") not in rows:
        continue
    size = int(open(f"{ref}/robusto.{f}.bytes").read())
    fl = floor(t, size)
    ok = done(rows[(t, "0")])
    ratio = spread([r["wall"] / fl for r in ok], "{:.2f}") if ok else "—"
    print(f"- robusto's {what}: {size / 1e6:.1f} MB ({size / folder:.3f} of the folder) ÷ {mbit:g} Mbit/s = {fl:.1f} s "
          f"(the floor); robusto's time ÷ floor: {ratio}")
tz = int(open(f"{ref}/tarzst.bytes").read())
print(f"- `tar | zstd -3`: {tz / 1e6:.1f} MB ÷ {mbit:g} Mbit/s = {tz * 8 / rate:.1f} s; the folder itself: {folder * 8 / rate:.1f} s")
print(f"- {link_check}")
print(f"- The link: a tbf of {mbit:g} Mbit/s in each direction on the client↔proxy hop, in a network namespace's loopback; "
      f"`bench/link-proxy.mjs` holds every piece of data RTT/2 each way and a new connection one RTT. Each hop's TCP sees "
      f"the loopback, so TCP's slow start over the RTT is not emulated: tools that open many connections are flattered.")
print(f"- A cut resets every connection each {cut_mb} MB of client→server bytes (what is in flight is lost); "
      f"completed = exit 0 and the right content on the server (robusto: MD5 of the published file against a local "
      f"`robusto pack`; restic: one snapshot and `restic check --read-data`; rclone copy: `rclone check`; tar.zst uploads: MD5).")
print()
print(f"`{cmdline}`")
EOF
