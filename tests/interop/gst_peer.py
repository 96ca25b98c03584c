#!/usr/bin/python3
"""A headless group-call participant on GStreamer webrtcbin (Debian gstreamer1.0-plugins-bad 1.22).

Run with Debian's /usr/bin/python3 (python3-gi and python3-websockets come from apt; a pyenv python has no `gi`):

    /usr/bin/python3 tests/interop/gst_peer.py --server http://127.0.0.1:8080 --group-id UUID \
        [--name Gstreamer] [--duration 20] [--verbose]

Signs in (POST /demo/signin), authenticates on ws://.../calling/v1/ws, joins the group call, publishes
videotestsrc (VP8 320x240@15) and audiotestsrc (Opus) on two sendonly m-lines (`offer` request with `tracks`),
answers the server's `offer` events (set-remote-description -> create-answer -> set-local-description -> `answer`),
decodes every incoming stream (rtpvp8depay ! vp8dec / rtpopusdepay ! opusdec) and counts decoded buffers per
(publisher, kind) through the `tracks` mapping of the server offers and the src pad's transceiver mid.

Prints one JSON line at the end and exits 0:
    {"id": "8:acs:...", "received": {"8:acs:...": {"audio": n, "video": n}}, "rtpPackets": {...}, ...}
Logs go to stderr.
"""

import argparse
import asyncio
import base64
import hashlib
import itertools
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstWebRTC", "1.0")
gi.require_version("GstSdp", "1.0")
from gi.repository import GLib, Gst, GstSdp, GstWebRTC  # noqa: E402

import websockets  # noqa: E402  (python3-websockets)

START = time.monotonic()
VERBOSE = False


def log(msg):
    print(f"[gst_peer {time.monotonic() - START:6.2f}s] {msg}", file=sys.stderr, flush=True)


def vlog(msg):
    if VERBOSE:
        log(msg)


PIPELINE = """
webrtcbin name=webrtc bundle-policy=max-bundle
videotestsrc is-live=true pattern=ball ! video/x-raw,width=320,height=240,framerate=15/1 !
  videoconvert ! queue ! vp8enc deadline=1 target-bitrate=300000 keyframe-max-dist=60 ! rtpvp8pay pt=96 mtu=1200 !
  application/x-rtp,media=video,encoding-name=VP8,payload=96,clock-rate=90000 ! webrtc.
audiotestsrc is-live=true wave=sine freq=440 volume=0.3 ! audioconvert ! audioresample ! queue !
  opusenc ! rtpopuspay pt=111 mtu=1200 !
  application/x-rtp,media=audio,encoding-name=OPUS,payload=111,clock-rate=48000 ! webrtc.
"""


class GstPeer:
    def __init__(self, args, loop):
        self.args = args
        self.loop = loop  # asyncio loop (signaling); GStreamer callbacks hop onto it with call_soon_threadsafe
        self.ws = None
        self.ids = itertools.count(1)
        self.waiting = {}  # request id -> future
        self.my_id = None
        self.call_id = None
        self.lock = threading.Lock()
        self.tracks = {}  # receiving mid -> (communicationUserId, source)
        self.decoded = {}  # user -> {"audio": n, "video": n}
        self.rtp = {}  # user -> {"audio": n, "video": n} RTP packets leaving webrtcbin's src pads
        self.unmapped = 0
        self.server_offers = 0
        self.offered = False
        self.errors = []
        self.offer_done = asyncio.Event()
        self.pipe = None
        self.webrtc = None
        self.pem = ecdsa_certificate_pem()
        self.fingerprint = sha256_fingerprint(self.pem)

    # ---------------- signaling (asyncio thread) ----------------

    async def request(self, msg):
        rid = next(self.ids)
        msg["id"] = rid
        fut = self.loop.create_future()
        self.waiting[rid] = fut
        await self.ws.send(json.dumps(msg))
        res = await fut
        if not res.get("ok"):
            raise RuntimeError(f"{msg['type']} failed: {res}")
        return res["result"]

    def send_threadsafe(self, msg):
        """From a GStreamer thread: send a notice (no response expected)."""
        asyncio.run_coroutine_threadsafe(self.ws.send(json.dumps(msg)), self.loop)

    def call_threadsafe(self, coro_fn, *a):
        asyncio.run_coroutine_threadsafe(coro_fn(*a), self.loop)

    async def reader(self):
        async for raw in self.ws:
            msg = json.loads(raw)
            t = msg.get("type")
            if t == "response":
                fut = self.waiting.pop(msg.get("id"), None)
                if fut and not fut.done():
                    fut.set_result(msg)
            elif t == "offer":
                # The response to our offer precedes this event, but its answer is applied in send_offer():
                # wait for that, else webrtcbin is still in have-local-offer and refuses the remote offer.
                await self.offer_done.wait()
                self.on_server_offer(msg)
            elif t == "error":
                log(f"server error event: {msg}")
                self.errors.append(str(msg))
            else:
                vlog(f"event {t}: {msg}")

    # ---------------- media ----------------

    def build(self):
        self.pipe = Gst.parse_launch(PIPELINE)
        self.webrtc = self.pipe.get_by_name("webrtc")
        self.pipe.connect("deep-element-added", self.on_deep_element_added)
        self.webrtc.connect("on-negotiation-needed", self.on_negotiation_needed)
        self.webrtc.connect("on-ice-candidate", self.on_ice_candidate)
        self.webrtc.connect("pad-added", self.on_pad_added)
        self.webrtc.connect("notify::ice-connection-state", lambda el, _p: log(f"ICE {el.get_property('ice-connection-state').value_nick}"))
        self.webrtc.connect("notify::connection-state", lambda el, _p: log(f"connection {el.get_property('connection-state').value_nick}"))
        bus = self.pipe.get_bus()
        bus.add_signal_watch()
        bus.connect("message::error", self.on_bus_error)
        bus.connect("message::warning", lambda _b, m: log(f"GStreamer warning: {m.parse_warning()[0].message}"))

    def on_bus_error(self, _bus, msg):
        err, dbg = msg.parse_error()
        log(f"GStreamer error: {err.message} ({dbg})")
        self.errors.append(f"GStreamer error: {err.message}")

    def on_deep_element_added(self, _bin, _sub_bin, element):
        """Gives each DTLS decoder our ECDSA certificate the moment webrtcbin creates it (still in NULL state).

        Setting GstWebRTCDTLSTransport:certificate later does not work in 1.22: dtlsdec then makes a new
        connection but connects its on-peer-certificate handler only on NULL->READY, so the peer's certificate is
        refused (the server sees alert 48 unknown_ca). webrtcbin reads the certificate back from the transport for
        the SDP fingerprint, so offers and answers carry the ECDSA fingerprint.
        """
        factory = element.get_factory()
        if factory is not None and factory.get_name() == "dtlssrtpdec":
            element.set_property("pem", self.pem)
            vlog(f"ECDSA certificate set on {element.get_name()}")

    def on_negotiation_needed(self, element):
        # Only our first offer: later renegotiation is driven by the server's offers.
        if self.offered:
            vlog("on-negotiation-needed again (ignored: the server drives renegotiation)")
            return
        self.offered = True
        i = 0
        while True:
            trans = element.emit("get-transceiver", i)
            if trans is None:
                break
            trans.set_property("direction", GstWebRTC.WebRTCRTPTransceiverDirection.SENDONLY)
            i += 1
        log(f"creating our offer ({i} sendonly transceivers)")
        element.emit("create-offer", None, Gst.Promise.new_with_change_func(self.on_offer_created, None))

    def on_offer_created(self, promise, _):
        promise.wait()
        reply = promise.get_reply()  # keep the Structure referenced while reading from it
        offer = reply.get_value("offer")
        text = offer.sdp.as_text()  # read before handing the description to webrtcbin
        self.webrtc.emit("set-local-description", offer, Gst.Promise.new())
        tracks, kind = [], None
        for line in text.splitlines():
            if line.startswith("m="):
                kind = line[2:].split(" ", 1)[0]
            elif line.startswith("a=mid:") and kind:
                tracks.append({"mid": line[6:].strip(), "source": "audio" if kind == "audio" else "camera"})
        self.call_threadsafe(self.send_offer, text, tracks)

    async def send_offer(self, sdp_text, tracks):
        sdp_text = fix_fingerprint(sdp_text, self.fingerprint)
        vlog("our offer:\n" + sdp_text)
        log(f"sending offer, tracks {tracks}")
        result = await self.request({"type": "offer", "callId": self.call_id, "sdp": sdp_text, "tracks": tracks})
        res, sdp = GstSdp.SDPMessage.new_from_text(result["sdp"])
        answer = GstWebRTC.WebRTCSessionDescription.new(GstWebRTC.WebRTCSDPType.ANSWER, sdp)
        self.webrtc.emit("set-remote-description", answer, Gst.Promise.new())
        log("server answered our offer")
        self.offer_done.set()

    def on_ice_candidate(self, _element, mline, candidate):
        if not self.call_id or not candidate:
            return
        self.send_threadsafe({"type": "iceCandidate", "callId": self.call_id, "candidate": {"candidate": candidate, "sdpMLineIndex": mline}})

    def on_server_offer(self, msg):
        self.server_offers += 1
        with self.lock:
            for t in msg.get("tracks") or []:
                self.tracks[t["mid"]] = (t["communicationUserId"], t["source"])
                self.decoded.setdefault(t["communicationUserId"], {"audio": 0, "video": 0})
                self.rtp.setdefault(t["communicationUserId"], {"audio": 0, "video": 0})
        log(f"server offer #{self.server_offers}: tracks {[(t['mid'], t['source']) for t in msg.get('tracks') or []]}")
        res, sdp = GstSdp.SDPMessage.new_from_text(msg["sdp"])
        offer = GstWebRTC.WebRTCSessionDescription.new(GstWebRTC.WebRTCSDPType.OFFER, sdp)
        n = self.server_offers
        self.webrtc.emit("set-remote-description", offer, Gst.Promise.new_with_change_func(self.on_remote_offer_set, n))

    def on_remote_offer_set(self, promise, n):
        promise.wait()
        reply = promise.get_reply()
        if reply is not None and reply.has_field("error"):
            e = f"set-remote-description(offer #{n}) failed: {reply.get_value('error')}"
            log(e)
            self.errors.append(e)
            return
        self.webrtc.emit("create-answer", None, Gst.Promise.new_with_change_func(self.on_answer_created, n))

    def on_answer_created(self, promise, n):
        promise.wait()
        reply = promise.get_reply()
        if reply is None or not reply.has_field("answer"):
            e = f"create-answer #{n} failed: {reply.get_value('error') if reply and reply.has_field('error') else reply}"
            log(e)
            self.errors.append(e)
            return
        answer = reply.get_value("answer")
        text = answer.sdp.as_text()
        self.webrtc.emit("set-local-description", answer, Gst.Promise.new())
        self.call_threadsafe(self.send_answer, text, n)

    async def send_answer(self, sdp_text, n):
        sdp_text = fix_fingerprint(sdp_text, self.fingerprint)
        vlog(f"our answer #{n}:\n" + sdp_text)
        try:
            await self.request({"type": "answer", "callId": self.call_id, "sdp": sdp_text})
            log(f"answered server offer #{n}")
        except Exception as e:  # noqa: BLE001
            log(f"answer #{n} refused: {e}")
            self.errors.append(str(e))

    def on_pad_added(self, _element, pad):
        if pad.direction != Gst.PadDirection.SRC:
            return
        trans = pad.get_property("transceiver")
        mid = trans.get_property("mid") if trans is not None else None
        caps = pad.get_current_caps()
        s = caps.get_structure(0) if caps else None
        media = s.get_value("media") if s else None
        kind = "video" if media == "video" else "audio"
        with self.lock:
            who = self.tracks.get(mid)
        log(f"incoming {kind} stream on mid {mid}: {who[0] if who else 'unmapped'} {who[1] if who else ''}")
        desc = ("queue ! rtpvp8depay request-keyframe=true wait-for-keyframe=true ! vp8dec ! fakesink name=sink sync=false async=false"
                if kind == "video" else
                "queue ! rtpopusdepay ! opusdec plc=true ! fakesink name=sink sync=false async=false")
        dec = Gst.parse_bin_from_description(desc, True)
        self.pipe.add(dec)
        dec.sync_state_with_parent()
        pad.link(dec.get_static_pad("sink"))

        def count(table):
            def probe(_pad, _info):
                with self.lock:
                    who = self.tracks.get(mid)
                    if who is None:
                        self.unmapped += 1
                    else:
                        table.setdefault(who[0], {"audio": 0, "video": 0})[kind] += 1
                return Gst.PadProbeReturn.OK
            return probe

        pad.add_probe(Gst.PadProbeType.BUFFER, count(self.rtp))
        dec.get_by_name("sink").get_static_pad("sink").add_probe(Gst.PadProbeType.BUFFER, count(self.decoded))

    # ---------------- main ----------------

    async def run(self):
        self.my_id, token = await asyncio.to_thread(signin, self.args.server, self.args.name)
        ws_url = self.args.server.replace("http://", "ws://", 1) + "/calling/v1/ws"
        self.ws = await websockets.connect(ws_url, max_size=None, ping_interval=None)
        reader = asyncio.create_task(self.reader())
        auth = await self.request({"type": "auth", "token": token, "displayName": self.args.name})
        log(f"authenticated as {auth['communicationUserId']}")
        joined = await self.request({"type": "join", "groupId": self.args.group_id, "video": True})
        self.call_id = joined["callId"]
        log(f"joined call {self.call_id} with {len(joined.get('participants', []))} participant(s) present")

        self.build()
        self.pipe.set_state(Gst.State.PLAYING)
        await asyncio.sleep(self.args.duration)

        with self.lock:
            decoded = json.loads(json.dumps(self.decoded))
            rtp = json.loads(json.dumps(self.rtp))
        summary = {
            "id": self.my_id,
            "received": decoded,
            "rtpPackets": rtp,
            "unmappedBuffers": self.unmapped,
            "ice": self.webrtc.get_property("ice-connection-state").value_nick,
            "connection": self.webrtc.get_property("connection-state").value_nick,
            "serverOffers": self.server_offers,
            "errors": self.errors,
        }
        try:
            await asyncio.wait_for(self.ws.send(json.dumps({"type": "hangUp", "id": next(self.ids), "callId": self.call_id})), 1)
            await asyncio.wait_for(self.ws.close(), 1)
        except Exception:  # noqa: BLE001
            pass
        reader.cancel()
        self.pipe.set_state(Gst.State.NULL)
        return summary


def ecdsa_certificate_pem():
    """A self-signed ECDSA P-256 certificate and key, PEM, for webrtcbin's DTLS.

    webrtcbin (1.22) makes an RSA-2048 certificate by default. Switchboard's SFU is str0m, whose DTLS stack
    (dimpl) supports ECDSA only: its CertificateRequest advertises ECDSA_SIGN, so OpenSSL in webrtcbin sends an empty
    client Certificate and the server ends the handshake ("no client certificate received"). Browsers use ECDSA.
    """
    with tempfile.TemporaryDirectory() as d:
        key, crt = os.path.join(d, "key.pem"), os.path.join(d, "cert.pem")
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", key, "-out", crt, "-days", "30", "-subj", "/CN=gst_peer"],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        with open(crt) as c, open(key) as k:
            return c.read() + k.read()


def sha256_fingerprint(pem):
    """The SDP fingerprint (`sha-256 AB:CD:...`) of the first certificate in `pem`."""
    body = pem.split("-----BEGIN CERTIFICATE-----", 1)[1].split("-----END CERTIFICATE-----", 1)[0]
    digest = hashlib.sha256(base64.b64decode("".join(body.split()))).hexdigest().upper()
    return "sha-256 " + ":".join(digest[i:i + 2] for i in range(0, len(digest), 2))


def fix_fingerprint(sdp_text, fingerprint):
    """webrtcbin 1.22 computes the fingerprint of a certificate given as PEM over *every* base64 line of that PEM,
    private key included, so its SDP carries a wrong fingerprint. Put the right one in what we send."""
    return "\r\n".join(
        f"a=fingerprint:{fingerprint}" if line.startswith("a=fingerprint:") else line for line in sdp_text.split("\r\n")
    )


def signin(server, name):
    req = urllib.request.Request(
        server + "/demo/signin",
        data=json.dumps({"name": name}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=10) as res:
        body = json.loads(res.read())
    return body["communicationUserId"], body["token"]


def main():
    global VERBOSE
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--server", required=True, help="http://127.0.0.1:PORT")
    p.add_argument("--group-id", required=True)
    p.add_argument("--name", default="Gstreamer")
    p.add_argument("--duration", type=float, default=20.0)
    p.add_argument("--verbose", action="store_true")
    args = p.parse_args()
    args.server = args.server.rstrip("/")
    VERBOSE = args.verbose

    Gst.init(None)
    if Gst.ElementFactory.find("webrtcbin") is None:
        log("webrtcbin not found (install gstreamer1.0-plugins-bad and gstreamer1.0-nice)")
        sys.exit(3)
    # Bus messages are dispatched by a GLib main loop on its own thread; signaling runs on asyncio in this one.
    glib_loop = GLib.MainLoop()
    threading.Thread(target=glib_loop.run, daemon=True).start()

    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    peer = GstPeer(args, loop)
    try:
        summary = loop.run_until_complete(peer.run())
    except Exception as e:  # noqa: BLE001
        log(f"error: {e!r}")
        if peer.pipe is not None:
            peer.pipe.set_state(Gst.State.NULL)
        sys.exit(1)
    finally:
        glib_loop.quit()
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
