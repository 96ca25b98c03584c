#!/usr/bin/env bash
# Side by side: the same load against Switchboard and against Janus 1.1 (VideoRoom), one after the other on this
# machine, then CPU per forwarded packet for both and the ratio (issue 4, acceptance 2).
#
#   loadtest/compare-janus.sh                       # audio-room 10 publishers x 30 listeners, then livestream 20 viewers
#   loadtest/compare-janus.sh audio-room --publishers 10 --subscribers 100
#   DURATION=30s loadtest/compare-janus.sh livestream --viewers 50 --video-bitrate 1M
#
# Installs Janus with apt-get if `janus` is missing (Debian 12; as root or with sudo), builds the release binaries
# (CARGO_TARGET_DIR, default ~/.cache/switchboard-target), starts Janus on loopback with loadtest/janus/*.jcfg on
# free ports, and stops it at the end. Environment: DURATION (default 20s), JOIN_RATE (default 50), OUT (folder for
# the JSON reports and Janus' log, default a new temporary folder). The load tester's own flags go after the
# scenario name. Numbers are printed, never asserted.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/switchboard-target}"
DURATION="${DURATION:-20s}"
JOIN_RATE="${JOIN_RATE:-50}"
OUT="${OUT:-$(mktemp -d -t compare-janus.XXXXXX)}"
mkdir -p "$OUT"
SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo

missing=()
command -v janus >/dev/null 2>&1 || missing+=(janus)
command -v ss >/dev/null 2>&1 || missing+=(iproute2)
command -v python3 >/dev/null 2>&1 || missing+=(python3)
if [ ${#missing[@]} -gt 0 ]; then
  echo "==> installing ${missing[*]} (apt-get)"
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q "${missing[@]}"
fi
# The package's plugin and transport folders (multiarch path).
JANUS_LIB=$(dirname "$(dpkg -L janus | grep -m1 '/janus/plugins/libjanus_videoroom.so$')")
JANUS_LIB=$(dirname "$JANUS_LIB")

echo "==> building release binaries"
cargo build --release -q -p switchboard -p switchboard-loadtest
BIN="$CARGO_TARGET_DIR/release"

# Both processes may hold thousands of sockets.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" || true

free_tcp_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# A free block of 1000 UDP ports for Janus' media (checked against what is bound now).
free_udp_range() {
  python3 - <<'PY'
import socket, random
for _ in range(200):
    lo = random.randrange(20000, 59000, 1000)
    ok = True
    for p in range(lo, lo + 1000, 97):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try: s.bind(("0.0.0.0", p))
        except OSError: ok = False
        finally: s.close()
        if not ok: break
    if ok:
        print(f"{lo}-{lo+999}"); break
PY
}

JANUS_PID=""
cleanup() { if [ -n "$JANUS_PID" ]; then kill "$JANUS_PID" 2>/dev/null || true; wait "$JANUS_PID" 2>/dev/null || true; fi; }
trap cleanup EXIT INT TERM

start_janus() {
  local conf="$OUT/janus-conf" port rtp
  port=$(free_tcp_port); rtp=$(free_udp_range)
  rm -rf "$conf"; mkdir -p "$conf"
  cp "$ROOT"/loadtest/janus/*.jcfg "$conf/"
  sed -i "s#@CONF@#$conf#g; s#@JANUS_LIB@#$JANUS_LIB#g; s#@WS_PORT@#$port#g; s#@RTP_PORTS@#$rtp#g" "$conf"/*.jcfg
  janus -F "$conf" -C "$conf/janus.jcfg" -o >"$OUT/janus.log" 2>&1 &
  JANUS_PID=$!
  for _ in $(seq 100); do ss -Hltn "sport = :$port" | grep -q . && break; sleep 0.1; done
  ss -Hltn "sport = :$port" | grep -q . || { echo "janus did not start; log:" >&2; tail -20 "$OUT/janus.log" >&2; exit 1; }
  JANUS_URL="ws://127.0.0.1:$port"
  echo "    janus $(janus --version 2>/dev/null | head -1) pid $JANUS_PID on $JANUS_URL, media ports $rtp"
}

run_pair() {
  local name="$1"; shift
  echo "==> $name: Switchboard ($*)"
  "$BIN/switchboard-loadtest" --spawn-server "$BIN/switchboard" --duration "$DURATION" --join-rate "$JOIN_RATE" \
    --json "$OUT/$name-switchboard.json" "$@" >"$OUT/$name-switchboard.txt"
  echo "==> $name: Janus ($*)"
  start_janus
  "$BIN/switchboard-loadtest" --janus "$JANUS_URL" --server-pid "$JANUS_PID" --duration "$DURATION" \
    --join-rate "$JOIN_RATE" --json "$OUT/$name-janus.json" "$@" >"$OUT/$name-janus.txt"
  cleanup; JANUS_PID=""
}

if [ $# -gt 0 ]; then
  run_pair "$1" "$@"
  NAMES=("$1")
else
  run_pair audio-room audio-room --publishers 10 --subscribers 30
  run_pair livestream livestream --viewers 20 --video-bitrate 500k
  NAMES=(audio-room livestream)
fi

echo
echo "==> load average during the runs: $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) CPUs; reports in $OUT"
python3 - "$OUT" "${NAMES[@]}" <<'PY'
import json, sys
out, names = sys.argv[1], sys.argv[2:]
def figures(path):
    r = json.load(open(path))
    w = r["window_s"]
    fwd = r["client_rates"]["out_pps"] * w          # datagrams the clients received = the server forwarded
    cpu = (r.get("server") or {}).get("cpu_s")
    d = r["delivery"]
    return dict(fwd_pps=r["client_rates"]["out_pps"], cpu=cpu,
                us_per_pkt=(cpu / fwd * 1e6) if cpu and fwd else None,
                pkts_per_cpu_s=(fwd / cpu) if cpu else None,
                loss=d["loss_percent"], ready=r["clients"]["ready"],
                clients=r["clients"]["publishers"] + r["clients"]["subscribers"],
                p50=r["latency_ms"]["p50"], p99=r["latency_ms"]["p99"],
                rss=(r.get("server") or {}).get("rss_mib"))
fmt = lambda v, f: "-" if v is None else format(v, f)
print(f"{'scenario':<12} {'server':<11} {'fwd pkt/s':>10} {'CPU s':>7} {'µs CPU/fwd pkt':>15} {'fwd pkt/CPU-s':>14} {'loss %':>7} {'ready':>9} {'p50/p99 ms':>13} {'RSS MiB':>8}")
for n in names:
    rows = {}
    for server in ("switchboard", "janus"):
        f = figures(f"{out}/{n}-{server}.json"); rows[server] = f
        print(f"{n:<12} {server:<11} {f['fwd_pps']:>10.0f} {fmt(f['cpu'], '.2f'):>7} {fmt(f['us_per_pkt'], '.2f'):>15} "
              f"{fmt(f['pkts_per_cpu_s'], '.0f'):>14} {f['loss']:>7.2f} {f['ready']:>4}/{f['clients']:<4} "
              f"{fmt(f['p50'], '.1f'):>6}/{fmt(f['p99'], '.1f'):<6} {fmt(f['rss'], '.1f'):>8}")
    s, j = rows["switchboard"]["us_per_pkt"], rows["janus"]["us_per_pkt"]
    if s and j:
        print(f"{n:<12} ratio: Switchboard uses {s / j:.2f}x Janus' CPU per forwarded packet (goal: <= 0.50)")
PY
