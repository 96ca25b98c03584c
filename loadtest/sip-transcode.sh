#!/usr/bin/env bash
# Transcoded SIP legs per core (issue 5, acceptance 6, second half).
#
# sipp places CALLS concurrent calls (default 200) to numbers routed to group calls, two phones per group, each
# streaming /usr/share/sip-tester/g711a.pcap for 30 s (loadtest/sip/group_pcap.xml). Every leg is transcoded both
# ways by the gateway: PCMA -> 48 kHz -> Opus into the SFU room, and the other phone's Opus -> 8 kHz -> PCMA back.
# The server's CPU is read from /proc/PID/stat over the window in which every call is up; the script prints the
# calls that failed, the server's CPU, transcoded legs per core, and how many Opus frames were encoded and decoded
# (from /metrics) against how many the legs should have produced.
#
# Usage: loadtest/sip-transcode.sh [CALLS]
#   SWITCHBOARD_BIN  server binary (default: $CARGO_TARGET_DIR/release/switchboard, built when missing)
#   RATE             call set-up rate while ramping up, calls/s (default 20)
#   JSON             also write the result as JSON to this file
# Needs sipp (Debian package sip-tester: installed when missing, as root). Loopback only; ports 25060-25061 (SIP),
# 18080/18443 (HTTP/HTTPS), 19000 (WebRTC media), 30000-30999 (the gateway's RTP), 40000+ (sipp's RTP).
set -euo pipefail
cd "$(dirname "$0")/.."
CALLS=${1:-200}
RATE=${RATE:-20}
T=${CARGO_TARGET_DIR:-target}
BIN=${SWITCHBOARD_BIN:-$T/release/switchboard}
[ $((CALLS % 2)) = 0 ] || { echo "CALLS must be even (two phones per group call)" >&2; exit 64; }
if ! command -v sipp >/dev/null; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q sip-tester
fi
if [ ! -x "$BIN" ]; then
  cargo build --release --bin switchboard
fi

WORK=$(mktemp -d)
SERVER_PID=""
cleanup() {
  [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null && wait "$SERVER_PID" 2>/dev/null
  rm -rf "$WORK"
}
trap cleanup EXIT

# One number per group call, each dialled twice (the injection file is read in order).
GROUPS_N=$((CALLS / 2))
{
  cat <<EOF
data_dir = "$WORK/data"
https_port = 18443
http_port = 18080
media_port = 19000
log = "warn"
[sip]
port = 25060
tls_port = 0
bind = "127.0.0.1"
rtp_port_min = 30000
rtp_port_max = 30999
[[sip.trunks]]
name = "sipp"
address = "127.0.0.1:25061"
allow = ["127.0.0.1"]
keepalive_secs = 0
EOF
  for i in $(seq 0 $((GROUPS_N - 1))); do
    printf '[[sip.numbers]]\nnumber = "+1555030%04d"\ngroup = "00000000-0000-4000-8000-%012d"\n' "$i" "$i"
  done
} >"$WORK/switchboard.toml"
{
  echo SEQUENTIAL
  for i in $(seq 0 $((GROUPS_N - 1))); do
    printf '+1555030%04d;\n+1555030%04d;\n' "$i" "$i"
  done
} >"$WORK/numbers.csv"

"$BIN" serve --config "$WORK/switchboard.toml" >"$WORK/server.log" 2>&1 &
SERVER_PID=$!
for _ in $(seq 100); do
  curl -sf http://127.0.0.1:18080/readyz >/dev/null && break
  sleep 0.2
done
curl -sf http://127.0.0.1:18080/readyz >/dev/null || { cat "$WORK/server.log"; echo "server did not start" >&2; exit 1; }

cpu_ticks() { awk '{print $14 + $15}' "/proc/$SERVER_PID/stat"; }
metric() { curl -s http://127.0.0.1:18080/metrics | awk -v m="$1" '$1 == m {print $2}' | head -1; }

echo "server $BIN (pid $SERVER_PID); $CALLS calls in $GROUPS_N group calls, set up at $RATE calls/s, 30 s of audio each"
sipp 127.0.0.1:25060 -sf loadtest/sip/group_pcap.xml -inf "$WORK/numbers.csv" -i 127.0.0.1 -p 25061 -mp 40000 \
  -r "$RATE" -m "$CALLS" -l "$CALLS" -nd \
  -trace_screen -screen_file "$WORK/screen.txt" >/dev/null 2>&1 &
SIPP_PID=$!

# The window: from when every call is up (ramp + 2 s) until 4 s before the first call's audio ends.
RAMP=$(( (CALLS + RATE - 1) / RATE ))
sleep $((RAMP + 2))
open=$(metric switchboard_sip_calls_active)
t0=$(date +%s.%N); c0=$(cpu_ticks)
enc0=$(metric 'switchboard_sip_opus_frames_total{direction="encoded"}'); dec0=$(metric 'switchboard_sip_opus_frames_total{direction="decoded"}')
WINDOW=$((30 - RAMP - 2 - 4))
[ "$WINDOW" -ge 5 ] || { echo "RATE too low for 30 s calls: the ramp leaves no window" >&2; exit 64; }
sleep "$WINDOW"
t1=$(date +%s.%N); c1=$(cpu_ticks)
enc1=$(metric 'switchboard_sip_opus_frames_total{direction="encoded"}'); dec1=$(metric 'switchboard_sip_opus_frames_total{direction="decoded"}')
rss_kb=$(awk '/VmRSS/ {print $2}' "/proc/$SERVER_PID/status")
set +e
wait "$SIPP_PID"
sipp_rc=$?
set -e
hz=$(getconf CLK_TCK)
successful=$(grep -E '^ *Successful call' "$WORK/screen.txt" | tail -1 | awk '{print $NF}')
failed=$(grep -E '^ *Failed call' "$WORK/screen.txt" | tail -1 | awk '{print $NF}')
left=$(metric switchboard_sip_rtp_ports_in_use)
python3 - "$CALLS" "$open" "$t0" "$t1" "$c0" "$c1" "$hz" "${enc0:-0}" "${enc1:-0}" "${dec0:-0}" "${dec1:-0}" \
  "$rss_kb" "${successful:-0}" "${failed:-?}" "$sipp_rc" "${left:-?}" "${JSON:-}" <<'PY'
import json, sys
(calls, open_, t0, t1, c0, c1, hz, e0, e1, d0, d1, rss, ok, failed, rc, left, out) = sys.argv[1:]
calls, wall = int(calls), float(t1) - float(t0)
cores = (int(c1) - int(c0)) / int(hz) / wall
enc, dec = (float(e1) - float(e0)) / wall, (float(d1) - float(d0)) / wall
r = {
    "calls": calls, "calls_open_in_window": float(open_ or 0), "window_s": round(wall, 1),
    "server_cpu_cores": round(cores, 3), "transcoded_legs_per_core": round(calls / cores, 1) if cores else None,
    "opus_frames_encoded_per_s": round(enc), "opus_frames_decoded_per_s": round(dec),
    "expected_frames_per_s_each_way": calls * 50, "server_rss_mib": round(int(rss) / 1024, 1),
    "sipp_successful": ok, "sipp_failed": failed, "sipp_exit": int(rc), "rtp_ports_left": left,
}
print(f"calls up in the window: {r['calls_open_in_window']:.0f} of {calls}; window {wall:.1f} s")
print(f"server CPU: {cores:.3f} cores -> {r['transcoded_legs_per_core']} transcoded legs per core; RSS {r['server_rss_mib']} MiB")
print(f"Opus frames/s: {enc:.0f} encoded, {dec:.0f} decoded (each leg at 50/s both ways: {calls * 50})")
print(f"sipp: {ok} successful, {failed} failed calls (exit {rc}); RTP ports still leased after: {left}")
print(json.dumps(r))
if out:
    json.dump(r, open(out, "w"), indent=2)
PY
