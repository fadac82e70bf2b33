# shellcheck shell=bash
# S3-compatible engines for the S3 store's tests, on 127.0.0.1 only. Source this file (bash).
#
#   ceph_install                  Debian packages radosgw ceph-mon ceph-osd uuid-runtime curl
#                                 (apt only runs when one of them is missing)
#   ceph_start [DIR] [PORT]       single-node Ceph: 1 mon + 1 memstore OSD (data in RAM) + radosgw
#                                 on PORT; S3 user access key "robusto", secret "robusto-secret";
#                                 writes the variables to export into DIR/env and exports them
#   ceph_stop [DIR]               stops rgw, osd and mon by their pid files (SIGTERM, SIGKILL after
#                                 10 s), removes DIR
#   moto_install VENV             pip installs moto[s3]==5.2.1, flask, flask-cors (pinned) into VENV
#                                 (created if missing; nothing is installed when the pins are there)
#   moto_start VENV [PORT] [DIR]  VENV/bin/moto_server -H 127.0.0.1 -p PORT in the background, pid in
#                                 DIR/moto.pid, log in DIR/moto.log, variables in DIR/env
#   moto_stop [DIR]               stops moto_server by its pid file (SIGTERM, then SIGKILL), removes DIR
#   s3_engines_env [CEPH_DIR] [MOTO_DIR]
#                                 exports the variables of both started engines and prints them as
#                                 "export NAME=value" lines; fails if either engine is not running
#
# Defaults: DIR ${TMPDIR:-/tmp}/robusto-ceph and ${TMPDIR:-/tmp}/robusto-moto.
# Ports: Ceph mon 3300 (msgr v2) and 6789 (v1), radosgw 7480, the OSD binds 127.0.0.1 ports in
# 6800-7300; moto 5055. The start functions refuse to start when a port is already taken.
#
# Variables the tests read (both engines: path-style requests, plain http, region us-east-1):
#   ROBUSTO_TEST_CEPH_ENDPOINT=http://127.0.0.1:7480
#   ROBUSTO_TEST_CEPH_KEY=robusto  ROBUSTO_TEST_CEPH_SECRET=robusto-secret
#   ROBUSTO_TEST_MOTO_ENDPOINT=http://127.0.0.1:5055
#   ROBUSTO_TEST_MOTO_KEY=testing  ROBUSTO_TEST_MOTO_SECRET=testing   (moto accepts any key)
#
# Every start function returns non-zero, with the tail of the engine's logs on stderr, when the
# engine does not come up; nothing is skipped silently. Typical use (see .ci/run):
#   source ci/s3-engines.sh
#   ceph_install && moto_install .venv
#   trap 'moto_stop || true; ceph_stop || true' EXIT
#   ceph_start && moto_start .venv && s3_engines_env
# Measured on the 2-core box: ceph_install 37 s (63 packages, first time), ceph_start 13-18 s,
# ceph_stop 5-6 s (radosgw stopped within seconds of its start may need the SIGKILL, +10 s);
# moto_install 12 s (first time), moto_start 0.4-0.8 s, moto_stop 2 s.
#
# Ceph quirks the tests must expect (Ceph 16.2, measured): If-Match works only with the ETag
# unquoted (a quoted ETag always gets 412); If-Match on a missing key gives 412 (AWS: 404);
# CompleteMultipartUpload returns an empty ETag; no conditional CompleteMultipartUpload.

CEPH_DIR_DEFAULT=${TMPDIR:-/tmp}/robusto-ceph
CEPH_PORT_DEFAULT=7480
CEPH_S3_KEY=robusto
CEPH_S3_SECRET=robusto-secret
MOTO_DIR_DEFAULT=${TMPDIR:-/tmp}/robusto-moto
MOTO_PORT_DEFAULT=5055
MOTO_S3_KEY=testing
MOTO_S3_SECRET=testing
MOTO_PIP_PINS=("moto[s3]==5.2.1" "flask==3.1.3" "flask-cors==6.0.2")

_s3e_err() { echo "s3-engines: $*" >&2; }

# _s3e_since T0_MS: seconds (one decimal) since T0_MS (date +%s%3N)
_s3e_since() {
  local d=$(($(date +%s%3N) - $1))
  printf '%d.%d' $((d / 1000)) $((d % 1000 / 100))
}

# _s3e_port_busy PORT: true when something accepts connections on 127.0.0.1:PORT
_s3e_port_busy() {
  timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null
}

# _s3e_kill PIDFILE NAME: SIGTERM the process in PIDFILE if it is still NAME (comm), wait up to
# 10 s, then SIGKILL. A pid file whose process is gone, or was reused by another program, is ignored.
_s3e_kill() {
  local f=$1 name=$2 p i
  [ -f "$f" ] || return 0
  p=$(cat "$f" 2>/dev/null) || p=
  case "$p" in '' | *[!0-9]*) rm -f "$f"; return 0 ;; esac
  if [ "$(cat "/proc/$p/comm" 2>/dev/null || true)" != "$name" ]; then rm -f "$f"; return 0; fi
  kill -TERM "$p" 2>/dev/null || { rm -f "$f"; return 0; }
  for i in $(seq 1 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.2; done
  if kill -0 "$p" 2>/dev/null; then
    _s3e_err "$name (pid $p) still running 10 s after SIGTERM: SIGKILL"
    kill -KILL "$p" 2>/dev/null || true
    for i in $(seq 1 25); do kill -0 "$p" 2>/dev/null || break; sleep 0.2; done
  fi
  rm -f "$f"
}

# _s3e_rmdir DIR: remove a data directory, refusing obviously wrong paths
_s3e_rmdir() {
  case "$1" in '' | / | /tmp | /tmp/ | "${HOME:-/root}" | "${HOME:-/root}"/) _s3e_err "refusing to remove '$1'"; return 1 ;; esac
  rm -rf -- "$1"
}

# ---------------------------------------------------------------------------------------- Ceph

ceph_install() {
  local need=() p
  for p in radosgw ceph-mon ceph-osd uuid-runtime curl; do
    dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
  done
  [ ${#need[@]} -eq 0 ] && return 0
  echo "s3-engines: apt-get install ${need[*]}"
  apt-get update -qq || { _s3e_err "apt-get update failed"; return 1; }
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null ||
    { _s3e_err "apt-get install ${need[*]} failed"; return 1; }
}

# _ceph_kill DIR: stop the daemons of DIR, keep the directory (logs)
_ceph_kill() {
  local D=$1
  _s3e_kill "$D/run/client.rgw.a.pid" radosgw
  _s3e_kill "$D/run/osd.0.pid" ceph-osd
  _s3e_kill "$D/run/mon.a.pid" ceph-mon
}

ceph_stop() {
  local D=${1:-$CEPH_DIR_DEFAULT}
  [ -d "$D" ] || return 0
  _ceph_kill "$D"
  _s3e_rmdir "$D"
}

# _ceph_fail DIR MESSAGE: report, show the log tails, stop what was started (DIR stays for the logs)
_ceph_fail() {
  local D=$1 f
  shift
  _s3e_err "ceph_start: $*"
  for f in "$D"/log/*.log; do
    [ -s "$f" ] || continue
    echo "---- tail $f" >&2
    tail -n 30 "$f" >&2
  done
  _ceph_kill "$D"
  _s3e_err "ceph_start failed; daemons stopped, logs kept in $D/log"
  return 1
}

ceph_start() {
  local D=${1:-$CEPH_DIR_DEFAULT} PORT=${2:-$CEPH_PORT_DEFAULT} FSID OSD_UUID OSD_KEY i p t0
  t0=$(date +%s%3N)
  local cmd
  for cmd in ceph ceph-mon ceph-osd radosgw radosgw-admin ceph-authtool monmaptool uuidgen curl; do
    command -v "$cmd" >/dev/null || { _s3e_err "ceph_start: $cmd not found (run ceph_install)"; return 1; }
  done
  ceph_stop "$D" || return 1 # leftovers of an interrupted run
  for p in 3300 6789 "$PORT"; do
    if _s3e_port_busy "$p"; then
      _s3e_err "ceph_start: 127.0.0.1:$p is already in use (another Ceph or server running?)"
      return 1
    fi
  done
  mkdir -p "$D/mon.a" "$D/osd.0" "$D/run" "$D/log" "$D/rgw" || return 1
  FSID=$(uuidgen) || return 1
  cat >"$D/ceph.conf" <<EOF
[global]
fsid = $FSID
mon host = [v2:127.0.0.1:3300,v1:127.0.0.1:6789]
public addr = 127.0.0.1
cluster addr = 127.0.0.1
ms bind port min = 6800
ms bind port max = 7300
keyring = $D/keyring
run dir = $D/run
admin socket = $D/run/\$name.asok
pid file = $D/run/\$name.pid
log file = $D/log/\$name.log
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
mon allow pool size one = true
mon warn on pool no redundancy = false
mon max pg per osd = 1000
osd crush chooseleaf type = 0
mon data avail warn = 1
mon data avail crit = 0
[mon]
mon data = $D/mon.\$id
[osd]
osd data = $D/osd.\$id
osd objectstore = memstore
memstore device bytes = 4294967296
[client.rgw.a]
rgw frontends = beast endpoint=127.0.0.1:$PORT
rgw data = $D/rgw
rgw gc obj min wait = 60
rgw gc processor period = 60
EOF
  local C=(ceph -c "$D/ceph.conf" --connect-timeout 30)
  {
    ceph-authtool --create-keyring "$D/keyring" --gen-key -n mon. --cap mon 'allow *' &&
      ceph-authtool "$D/keyring" --gen-key -n client.admin --cap mon 'allow *' --cap osd 'allow *' --cap mgr 'allow *' &&
      ceph-authtool "$D/keyring" --gen-key -n client.rgw.a --cap mon 'allow rw' --cap osd 'allow rwx' &&
      monmaptool --create --clobber --fsid "$FSID" --addv a '[v2:127.0.0.1:3300,v1:127.0.0.1:6789]' "$D/monmap"
  } >>"$D/log/setup.log" 2>&1 || { _ceph_fail "$D" "keyring/monmap creation failed"; return 1; }
  ceph-mon -c "$D/ceph.conf" --mkfs -i a --monmap "$D/monmap" --keyring "$D/keyring" >>"$D/log/setup.log" 2>&1 ||
    { _ceph_fail "$D" "ceph-mon --mkfs failed"; return 1; }
  ceph-mon -c "$D/ceph.conf" -i a >>"$D/log/setup.log" 2>&1 || { _ceph_fail "$D" "ceph-mon did not start"; return 1; }
  OSD_UUID=$(uuidgen) && OSD_KEY=$(ceph-authtool --gen-print-key) || { _ceph_fail "$D" "key generation failed"; return 1; }
  echo "{\"cephx_secret\": \"$OSD_KEY\"}" >"$D/osd.0/new.json"
  "${C[@]}" osd new "$OSD_UUID" -i "$D/osd.0/new.json" >>"$D/log/setup.log" 2>&1 ||
    { _ceph_fail "$D" "'ceph osd new' failed (mon not reachable?)"; return 1; }
  {
    ceph-authtool --create-keyring "$D/osd.0/keyring" -n osd.0 --add-key "$OSD_KEY" &&
      ceph-osd -c "$D/ceph.conf" -i 0 --mkfs --osd-uuid "$OSD_UUID" --keyring "$D/osd.0/keyring"
  } >>"$D/log/osd-mkfs.log" 2>&1 || { _ceph_fail "$D" "ceph-osd --mkfs failed"; return 1; }
  ceph-osd -c "$D/ceph.conf" -i 0 --keyring "$D/osd.0/keyring" >>"$D/log/osd-start.log" 2>&1 ||
    { _ceph_fail "$D" "ceph-osd did not start"; return 1; }
  for i in $(seq 1 120); do
    "${C[@]}" osd stat 2>/dev/null | grep -q ' 1 up' && break
    sleep 0.5
  done
  "${C[@]}" osd stat 2>/dev/null | grep -q ' 1 up' || { _ceph_fail "$D" "the OSD is not up after 60 s"; return 1; }
  radosgw -c "$D/ceph.conf" -n client.rgw.a >>"$D/log/rgw-start.log" 2>&1 || { _ceph_fail "$D" "radosgw did not start"; return 1; }
  for i in $(seq 1 240); do
    curl -s -o /dev/null "http://127.0.0.1:$PORT/" && break
    sleep 0.5
  done
  curl -s -o /dev/null "http://127.0.0.1:$PORT/" || { _ceph_fail "$D" "radosgw does not answer on 127.0.0.1:$PORT after 120 s"; return 1; }
  radosgw-admin -c "$D/ceph.conf" -n client.admin user create --uid=robusto --display-name=robusto \
    --access-key="$CEPH_S3_KEY" --secret-key="$CEPH_S3_SECRET" >>"$D/log/setup.log" 2>&1 ||
    { _ceph_fail "$D" "radosgw-admin user create failed"; return 1; }
  # a signed ListBuckets proves the user works end to end (curl 7.88 does not add the payload
  # hash header S3 requires: send the SHA-256 of the empty body)
  local code
  for i in $(seq 1 20); do
    code=$(curl -s -o "$D/log/listbuckets.xml" -w '%{http_code}' --aws-sigv4 "aws:amz:us-east-1:s3" \
      --user "$CEPH_S3_KEY:$CEPH_S3_SECRET" \
      -H "x-amz-content-sha256: e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855" \
      "http://127.0.0.1:$PORT/") || code=000
    [ "$code" = 200 ] && break
    sleep 0.5
  done
  [ "$code" = 200 ] || { _ceph_fail "$D" "signed ListBuckets as '$CEPH_S3_KEY' gives HTTP $code"; return 1; }
  cat >"$D/env" <<EOF
export ROBUSTO_TEST_CEPH_ENDPOINT=http://127.0.0.1:$PORT
export ROBUSTO_TEST_CEPH_KEY=$CEPH_S3_KEY
export ROBUSTO_TEST_CEPH_SECRET=$CEPH_S3_SECRET
EOF
  # shellcheck disable=SC1091
  source "$D/env"
  echo "s3-engines: Ceph radosgw up on http://127.0.0.1:$PORT in $(_s3e_since "$t0") s (data dir $D)"
}

# ---------------------------------------------------------------------------------------- moto

# _moto_has_pins VENV: the pinned versions are importable in VENV
_moto_has_pins() {
  "$1/bin/python" - <<'EOF' 2>/dev/null
import sys
from importlib.metadata import version
want = {"moto": "5.2.1", "flask": "3.1.3", "flask-cors": "6.0.2"}
ok = all(version(n) == v for n, v in want.items())
import moto.server, flask_cors, boto3  # noqa: F401  (s3 extra and server imports)
sys.exit(0 if ok else 1)
EOF
}

moto_install() {
  local V=${1:?moto_install: VENV argument missing}
  if [ ! -x "$V/bin/python" ]; then
    python3 -m venv "$V" || { _s3e_err "moto_install: cannot create venv $V"; return 1; }
  fi
  if _moto_has_pins "$V" && [ -x "$V/bin/moto_server" ]; then return 0; fi
  echo "s3-engines: pip install ${MOTO_PIP_PINS[*]} into $V"
  "$V/bin/pip" install -q --disable-pip-version-check "${MOTO_PIP_PINS[@]}" ||
    { _s3e_err "moto_install: pip install failed"; return 1; }
  _moto_has_pins "$V" && [ -x "$V/bin/moto_server" ] ||
    { _s3e_err "moto_install: moto_server missing in $V after pip install"; return 1; }
}

moto_stop() {
  local D=${1:-$MOTO_DIR_DEFAULT} p
  [ -d "$D" ] || return 0
  # moto_server is a Python script: its comm is the interpreter's name
  if [ -f "$D/moto.pid" ]; then
    p=$(cat "$D/moto.pid" 2>/dev/null) || p=
    if [ -n "$p" ] && tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null | grep -q moto_server; then
      _s3e_kill "$D/moto.pid" "$(cat "/proc/$p/comm" 2>/dev/null)"
    fi
  fi
  _s3e_rmdir "$D"
}

moto_start() {
  local V=${1:?moto_start: VENV argument missing} PORT=${2:-$MOTO_PORT_DEFAULT} D=${3:-$MOTO_DIR_DEFAULT}
  local p i t0
  t0=$(date +%s%3N)
  [ -x "$V/bin/moto_server" ] || { _s3e_err "moto_start: $V/bin/moto_server not found (run moto_install $V)"; return 1; }
  moto_stop "$D" || return 1
  if _s3e_port_busy "$PORT"; then
    _s3e_err "moto_start: 127.0.0.1:$PORT is already in use (another moto_server running?)"
    return 1
  fi
  mkdir -p "$D" || return 1
  "$V/bin/moto_server" -H 127.0.0.1 -p "$PORT" >"$D/moto.log" 2>&1 </dev/null &
  p=$!
  echo "$p" >"$D/moto.pid"
  for i in $(seq 1 300); do
    kill -0 "$p" 2>/dev/null || break
    curl -fs -o /dev/null "http://127.0.0.1:$PORT/moto-api/" && break
    sleep 0.1
  done
  if ! kill -0 "$p" 2>/dev/null || ! curl -fs -o /dev/null "http://127.0.0.1:$PORT/moto-api/"; then
    _s3e_err "moto_start: moto_server (pid $p) did not come up on 127.0.0.1:$PORT within 30 s; log:"
    tail -n 30 "$D/moto.log" >&2
    kill -KILL "$p" 2>/dev/null || true
    rm -f "$D/moto.pid"
    return 1
  fi
  cat >"$D/env" <<EOF
export ROBUSTO_TEST_MOTO_ENDPOINT=http://127.0.0.1:$PORT
export ROBUSTO_TEST_MOTO_KEY=$MOTO_S3_KEY
export ROBUSTO_TEST_MOTO_SECRET=$MOTO_S3_SECRET
EOF
  # shellcheck disable=SC1091
  source "$D/env"
  echo "s3-engines: moto_server up on http://127.0.0.1:$PORT (pid $p) in $(_s3e_since "$t0") s"
}

# ------------------------------------------------------------------------------------- both

s3_engines_env() {
  local CD=${1:-$CEPH_DIR_DEFAULT} MD=${2:-$MOTO_DIR_DEFAULT} f
  for f in "$CD/env" "$MD/env"; do
    [ -f "$f" ] || { _s3e_err "s3_engines_env: $f missing (engine not started?)"; return 1; }
  done
  _s3e_pid_alive "$CD/run/client.rgw.a.pid" || { _s3e_err "s3_engines_env: radosgw of $CD is not running"; return 1; }
  _s3e_pid_alive "$MD/moto.pid" || { _s3e_err "s3_engines_env: moto_server of $MD is not running"; return 1; }
  # shellcheck disable=SC1090,SC1091
  source "$CD/env" && source "$MD/env"
  cat "$CD/env" "$MD/env"
}

_s3e_pid_alive() {
  local p
  p=$(cat "$1" 2>/dev/null) && [ -n "$p" ] && kill -0 "$p" 2>/dev/null
}
