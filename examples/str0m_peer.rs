//! A headless group-call participant built on str0m (a second, independent Rust WebRTC stack in client role:
//! full ICE, not lite) for the cross-stack interop test (`tests/e2e/interop.test.mjs`).
//!
//! ```text
//! cargo build --examples
//! $CARGO_TARGET_DIR/debug/examples/str0m_peer --server http://127.0.0.1:8080 --name Stroma \
//!     --group-id 29a0e7d6-4f0b-4c36-9d6f-0d3c1e1f8a11 --duration 20
//! ```
//!
//! It signs in through `POST /demo/signin`, authenticates on the signaling WebSocket, joins the group call, offers
//! two `sendonly` m-lines (Opus audio, VP8 camera) and publishes:
//! - audio: a 3-byte Opus packet every 20 ms (TOC 0xF8 = CELT fullband 20 ms mono, one frame, the usual "silence"
//!   payload); the SFU forwards frames without decoding them.
//! - video: a real 64x48 VP8 keyframe (made once with GStreamer `vp8enc`), repeated at 15 fps, so receivers that
//!   decode it (Chromium) can.
//!
//! Server `offer` events (other participants' tracks) are accepted and answered. Received frames (str0m frame mode)
//! are counted per (publisher, kind) through the `tracks` mapping of those offers. After `--duration` seconds it
//! prints one JSON line and exits 0:
//! `{"id":"8:acs:...","received":{"8:acs:...":{"audio":n,"video":n}},"sent":{"audio":n,"video":n},...}`.
//! Logs go to stderr; `--verbose` adds per-event lines.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::media::{Direction, Frequency, MediaKind, MediaTime, Mid};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, IceConnectionState, Input, Output, Rtc};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio_tungstenite::tungstenite::Message;

/// Opus "silence" packet: TOC 0xF8 (config 31: CELT FB 20 ms, mono, code 0) + 2 bytes of range-coder data.
const OPUS_FRAME: [u8; 3] = [0xf8, 0xff, 0xfe];

/// A 64x48 VP8 keyframe, 752 bytes: `gst-launch-1.0 videotestsrc num-buffers=1 pattern=smpte !
/// video/x-raw,width=64,height=48 ! vp8enc keyframe-max-dist=1 ! filesink` (GStreamer 1.22, libvpx).
#[rustfmt::skip]
const VP8_KEYFRAME: &[u8] = &[
    0x50, 0x17, 0x00, 0x9d, 0x01, 0x2a, 0x40, 0x00, 0x30, 0x00, 0x00, 0x47, 0x08, 0x85, 0x85, 0x88, 0x85, 0x84, 0x88, 0x02, 0x02, 0x03, 0x05, 0x2e,
    0x39, 0xf8, 0xde, 0x03, 0xf8, 0x03, 0xfa, 0x7b, 0xfd, 0x9b, 0xa2, 0xb3, 0x41, 0x7b, 0x03, 0xfa, 0x7b, 0xc4, 0xc3, 0x20, 0x7f, 0x01, 0xfc, 0x01,
    0xf7, 0x62, 0xe0, 0x1f, 0xe3, 0x5f, 0x88, 0x5f, 0xc9, 0x78, 0x00, 0x7f, 0xe1, 0xfe, 0x80, 0xfe, 0x20, 0x69, 0x8a, 0x7f, 0x4b, 0xe9, 0x01, 0xf4,
    0x01, 0xeb, 0x20, 0xfe, 0x25, 0xfc, 0xc7, 0xd0, 0xdb, 0xfa, 0x5f, 0xfb, 0x3f, 0x83, 0xbf, 0x21, 0x5c, 0xd0, 0x1f, 0xe0, 0x3f, 0x80, 0x3f, 0xb0,
    0x1f, 0xb0, 0x1e, 0x40, 0x78, 0x40, 0x72, 0x4e, 0xfc, 0x5b, 0xf1, 0x8b, 0xf6, 0x2b, 0xfc, 0x94, 0xdb, 0x37, 0x90, 0x2f, 0xe4, 0x1f, 0x92, 0x5c,
    0xa6, 0x7f, 0x88, 0x1e, 0xc0, 0xff, 0x01, 0xfe, 0x4b, 0xc4, 0x07, 0xfb, 0x27, 0xe2, 0xef, 0xf4, 0x0e, 0x60, 0x1f, 0xc8, 0x0f, 0x90, 0xaf, 0xe1,
    0xbf, 0xc9, 0xff, 0x11, 0xbf, 0x7d, 0xf9, 0x40, 0x7f, 0x4c, 0xf8, 0xa1, 0xe4, 0x1b, 0xf8, 0x48, 0x19, 0xde, 0x37, 0xa1, 0x27, 0xd3, 0x18, 0xf9,
    0x13, 0x60, 0xba, 0x33, 0xe1, 0xde, 0xa0, 0x38, 0x43, 0xc7, 0x93, 0x92, 0xf5, 0x7b, 0xff, 0xf1, 0xf8, 0x4b, 0x65, 0x2d, 0x04, 0x6f, 0x17, 0x91,
    0xd5, 0xcf, 0xb2, 0x00, 0xf9, 0x0c, 0xba, 0x41, 0x0f, 0xc9, 0xc1, 0x1d, 0xd8, 0x4b, 0x55, 0xd4, 0x67, 0xa8, 0x65, 0xdd, 0x1f, 0xb4, 0xff, 0x3b,
    0x50, 0xf0, 0xd7, 0xa1, 0xc0, 0xa2, 0x2f, 0x39, 0x16, 0x1d, 0x44, 0x42, 0x98, 0x74, 0x18, 0x35, 0x3e, 0x9b, 0xc3, 0xbd, 0x68, 0x82, 0xe7, 0x8f,
    0x39, 0x09, 0x89, 0x58, 0x87, 0x74, 0x85, 0x65, 0x9f, 0xc6, 0xf5, 0x3b, 0xef, 0x86, 0xf0, 0xc3, 0x9d, 0xf2, 0x3b, 0x94, 0x13, 0x3d, 0xc3, 0x52,
    0xab, 0xc3, 0x11, 0x44, 0xe5, 0xd2, 0x55, 0x00, 0x39, 0x10, 0xe9, 0xc3, 0xad, 0x00, 0x5e, 0x45, 0xa0, 0xe8, 0xdf, 0x7f, 0x56, 0xd8, 0xf2, 0x25,
    0xf8, 0xae, 0x12, 0xdf, 0x6f, 0xa8, 0x1d, 0x52, 0x58, 0xe2, 0xa9, 0xf2, 0xb7, 0xea, 0x30, 0xaa, 0xab, 0xea, 0x56, 0xce, 0xbe, 0x44, 0x91, 0x53,
    0xff, 0xfd, 0x53, 0x97, 0x8b, 0x07, 0x4a, 0x59, 0xff, 0xfe, 0xa9, 0xcb, 0xc5, 0x83, 0x8a, 0x29, 0xb5, 0xf3, 0x39, 0x7f, 0x84, 0x36, 0xd3, 0x52,
    0x79, 0xe0, 0x81, 0x28, 0xb1, 0x27, 0xd3, 0xd0, 0x1e, 0x90, 0xb4, 0x54, 0xdb, 0x78, 0x9c, 0xaf, 0xb6, 0xf7, 0x81, 0xee, 0xb7, 0x20, 0xc5, 0xbc,
    0x7f, 0xfe, 0xb9, 0xdb, 0xff, 0xa1, 0x0c, 0xb4, 0xd5, 0x8d, 0x06, 0x97, 0xd7, 0xe1, 0xfc, 0x4a, 0xbf, 0x59, 0x21, 0x32, 0xa2, 0xe1, 0xa4, 0xff,
    0xfe, 0xf1, 0xc7, 0xff, 0xe5, 0x9c, 0xa6, 0x25, 0x4e, 0x6e, 0x63, 0x42, 0x66, 0x96, 0x88, 0xce, 0x93, 0xec, 0x43, 0xb1, 0x83, 0x50, 0x55, 0x71,
    0xac, 0xf8, 0x88, 0x86, 0x02, 0x00, 0x3a, 0xa6, 0x9b, 0xc7, 0xc8, 0x9c, 0x98, 0x9b, 0xbe, 0xcb, 0x5b, 0x61, 0xc4, 0x85, 0x10, 0xd1, 0x48, 0x14,
    0xed, 0x24, 0x1f, 0x27, 0xb4, 0x5e, 0x5b, 0xd6, 0x41, 0x49, 0x43, 0xf1, 0xcf, 0xfd, 0x3c, 0x67, 0xed, 0xe9, 0x38, 0x2d, 0xe8, 0x98, 0xab, 0x9b,
    0x1d, 0x97, 0xfc, 0x60, 0x5f, 0xf5, 0x40, 0x71, 0x88, 0xdb, 0x4e, 0x1b, 0xda, 0x9a, 0xcf, 0xf3, 0x21, 0x02, 0xd2, 0xbf, 0xe1, 0x1e, 0x15, 0x68,
    0x72, 0x6f, 0x58, 0x18, 0x86, 0x5f, 0xe2, 0x28, 0xeb, 0xed, 0x78, 0x6b, 0xce, 0xf5, 0x8c, 0x5f, 0xd5, 0xf8, 0xe0, 0xe7, 0x80, 0x03, 0x4c, 0x0f,
    0xa8, 0xf5, 0x41, 0x4d, 0x49, 0x77, 0x04, 0x8c, 0xa7, 0x60, 0xbe, 0xcd, 0x33, 0x36, 0xda, 0x32, 0xdd, 0x8e, 0xb7, 0x5b, 0xb7, 0xa5, 0xa4, 0x7b,
    0xb6, 0x50, 0x29, 0xa2, 0xbe, 0x34, 0xdb, 0x89, 0x93, 0x65, 0xa9, 0x64, 0x95, 0x27, 0x4b, 0x35, 0xd9, 0xfe, 0x36, 0x35, 0xd6, 0xdb, 0x11, 0x99,
    0xd1, 0x9f, 0x41, 0x8c, 0x9b, 0x30, 0x6b, 0xc4, 0xf4, 0x9c, 0x1b, 0x24, 0x1b, 0xa1, 0x31, 0xda, 0x06, 0xe2, 0xc7, 0xf7, 0x18, 0xc1, 0xf8, 0x79,
    0xe4, 0x25, 0x9e, 0xf6, 0x15, 0xb4, 0x3e, 0x5d, 0xdf, 0xb5, 0x3f, 0xf1, 0xb8, 0x94, 0x8e, 0xc8, 0x72, 0xe9, 0x91, 0xe1, 0x87, 0x7f, 0x02, 0x9e,
    0x72, 0xbf, 0x89, 0x88, 0x80, 0xcb, 0xff, 0x9d, 0xfe, 0x6e, 0x0b, 0x67, 0x79, 0x3b, 0x4b, 0xc6, 0x09, 0x80, 0x12, 0x3e, 0x87, 0xfb, 0x57, 0xe8,
    0xee, 0x67, 0x18, 0x3c, 0xb0, 0x93, 0x60, 0x62, 0xe4, 0x8c, 0xcc, 0x4f, 0x84, 0x3f, 0x49, 0xff, 0x1b, 0xe0, 0xc5, 0x5c, 0x45, 0x96, 0x61, 0x73,
    0x98, 0x40, 0xc1, 0xf3, 0xe4, 0x48, 0xb6, 0x2d, 0xd1, 0x42, 0x84, 0xdc, 0x6a, 0x69, 0xbc, 0x4a, 0x61, 0x33, 0x60, 0xf7, 0x64, 0xde, 0x94, 0x63,
    0x88, 0xdc, 0xfe, 0x9a, 0x4f, 0xff, 0xfd, 0xeb, 0x7d, 0x7a, 0xbf, 0xe3, 0x0e, 0x8a, 0xe6, 0x3c, 0xa7, 0xcc, 0x71, 0x0b, 0x0c, 0xff, 0x2c, 0xff,
    0x73, 0x86, 0xeb, 0x7f, 0x5b, 0x3c, 0xcd, 0x95, 0x4d, 0xe8, 0x4a, 0xff, 0x52, 0x3b, 0x32, 0x6a, 0xea, 0x9f, 0xfd, 0x5e, 0x6c, 0xe9, 0x8b, 0xd3,
    0xbd, 0x93, 0xaa, 0x24, 0xf5, 0x9e, 0xfe, 0xf5, 0xff, 0x93, 0xea, 0x8d, 0xbf, 0xfd, 0x90, 0x44, 0x0c, 0xb6, 0xb2, 0x4d, 0x9d, 0x3e, 0xb6, 0x38,
    0x5a, 0x90, 0x47, 0xe4, 0xbc, 0x2e, 0x78, 0x00,
];

struct Args {
    server: String,
    name: String,
    group_id: String,
    duration: Duration,
    verbose: bool,
}

fn usage() -> ! {
    eprintln!(
        "usage: str0m_peer --server http://127.0.0.1:PORT --group-id UUID [--name NAME] [--duration SECONDS] [--verbose]"
    );
    std::process::exit(2);
}

fn parse_args() -> Args {
    let mut server = None;
    let mut name = "str0m".to_string();
    let mut group_id = None;
    let mut duration = Duration::from_secs(20);
    let mut verbose = false;
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--server" => server = it.next(),
            "--name" => name = it.next().unwrap_or_else(|| usage()),
            "--group-id" => group_id = it.next(),
            "--duration" => {
                let s: f64 = it
                    .next()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_else(|| usage());
                duration = Duration::from_secs_f64(s);
            }
            "--verbose" => verbose = true,
            _ => usage(),
        }
    }
    Args {
        server: server
            .unwrap_or_else(|| usage())
            .trim_end_matches('/')
            .to_string(),
        name,
        group_id: group_id.unwrap_or_else(|| usage()),
        duration,
        verbose,
    }
}

type Error = Box<dyn std::error::Error + Send + Sync>;

fn err(msg: impl Into<String>) -> Error {
    msg.into().into()
}

/// `POST {server}/demo/signin {"name"}` over a plain HTTP/1.1 connection (loopback only, no TLS).
async fn demo_signin(server: &str, name: &str) -> Result<(String, String), Error> {
    let hostport = server
        .strip_prefix("http://")
        .ok_or_else(|| err("--server must be http://HOST:PORT"))?;
    let body = json!({ "name": name }).to_string();
    let mut tcp = TcpStream::connect(hostport).await?;
    let req = format!(
        "POST /demo/signin HTTP/1.1\r\nHost: {hostport}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    tcp.write_all(req.as_bytes()).await?;
    let mut raw = Vec::new();
    tcp.read_to_end(&mut raw).await?;
    let text = String::from_utf8_lossy(&raw);
    let (head, rest) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| err("bad HTTP response"))?;
    if !head.starts_with("HTTP/1.1 200") {
        return Err(err(format!("/demo/signin failed: {head}")));
    }
    // The body is one JSON object; tolerate chunked framing by taking the outermost braces.
    let (start, end) = (rest.find('{'), rest.rfind('}'));
    let (Some(start), Some(end)) = (start, end) else {
        return Err(err(format!("/demo/signin: no JSON body: {rest}")));
    };
    let v: Value = serde_json::from_str(&rest[start..=end])?;
    let id = v["communicationUserId"]
        .as_str()
        .ok_or_else(|| err("no communicationUserId"))?;
    let token = v["token"].as_str().ok_or_else(|| err("no token"))?;
    Ok((id.to_string(), token.to_string()))
}

#[derive(Default, Clone, Copy)]
struct Counts {
    audio: u64,
    video: u64,
}

/// What a receiving mid carries, from a server offer's `tracks`.
struct TrackInfo {
    user: String,
    source: String,
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

struct Peer {
    args: Args,
    ws: Ws,
    next_id: u64,
    rtc: Rtc,
    socket: UdpSocket,
    local_addr: SocketAddr,
    call_id: String,
    /// Our local offer, until its response arrives: (request id, pending).
    pending_offer: Option<(u64, SdpPendingOffer)>,
    /// Request ids of our answers to server offers.
    answer_ids: Vec<u64>,
    tracks: HashMap<Mid, TrackInfo>,
    received: BTreeMap<String, Counts>,
    sent: Counts,
    audio_mid: Mid,
    video_mid: Mid,
    connected: bool,
    ice_state: String,
    server_offers: u64,
    started: Instant,
    errors: Vec<String>,
}

impl Peer {
    fn log(&self, msg: impl AsRef<str>) {
        eprintln!(
            "[str0m_peer {:>6.2}s] {}",
            self.started.elapsed().as_secs_f64(),
            msg.as_ref()
        );
    }

    async fn send(&mut self, mut msg: Value) -> Result<u64, Error> {
        self.next_id += 1;
        let id = self.next_id;
        msg["id"] = json!(id);
        self.ws.send(Message::text(msg.to_string())).await?;
        Ok(id)
    }

    /// Sends a request and waits for its response (only used before media starts: events that arrive meanwhile are
    /// handled in order).
    async fn request(&mut self, msg: Value) -> Result<Value, Error> {
        let id = self.send(msg).await?;
        loop {
            let v = self.next_ws_json().await?;
            if v["type"] == "response" && v["id"] == json!(id) {
                if v["ok"] == json!(true) {
                    return Ok(v["result"].clone());
                }
                return Err(err(format!("request failed: {v}")));
            }
            self.handle_ws(v).await?;
        }
    }

    async fn next_ws_json(&mut self) -> Result<Value, Error> {
        loop {
            match self.ws.next().await {
                Some(Ok(Message::Text(t))) => return Ok(serde_json::from_str(t.as_str())?),
                Some(Ok(Message::Close(c))) => return Err(err(format!("websocket closed: {c:?}"))),
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(e.into()),
                None => return Err(err("websocket ended")),
            }
        }
    }

    async fn handle_ws(&mut self, v: Value) -> Result<(), Error> {
        match v["type"].as_str().unwrap_or("") {
            "offer" => self.on_server_offer(v).await?,
            "response" => {
                let id = v["id"].as_u64().unwrap_or(0);
                if let Some((pid, _)) = &self.pending_offer
                    && *pid == id
                {
                    let (_, pending) = self.pending_offer.take().unwrap();
                    if v["ok"] != json!(true) {
                        return Err(err(format!("our offer was refused: {v}")));
                    }
                    let sdp = v["result"]["sdp"]
                        .as_str()
                        .ok_or_else(|| err("offer response without sdp"))?;
                    let answer = SdpAnswer::from_sdp_string(sdp)?;
                    self.rtc.sdp_api().accept_answer(pending, answer)?;
                    self.log("local offer answered by the server");
                } else if self.answer_ids.contains(&id) && v["ok"] != json!(true) {
                    let e = format!("answer refused: {v}");
                    self.log(&e);
                    self.errors.push(e);
                }
            }
            "error" => {
                let e = format!("server error event: {v}");
                self.log(&e);
                self.errors.push(e);
            }
            other => {
                if self.args.verbose {
                    self.log(format!("event {other}: {v}"));
                }
            }
        }
        Ok(())
    }

    async fn on_server_offer(&mut self, v: Value) -> Result<(), Error> {
        self.server_offers += 1;
        if let Some(tracks) = v["tracks"].as_array() {
            for t in tracks {
                let (Some(mid), Some(user), Some(source)) = (
                    t["mid"].as_str(),
                    t["communicationUserId"].as_str(),
                    t["source"].as_str(),
                ) else {
                    continue;
                };
                self.tracks.insert(
                    Mid::from(mid),
                    TrackInfo {
                        user: user.to_string(),
                        source: source.to_string(),
                    },
                );
                self.received.entry(user.to_string()).or_default();
            }
        }
        if self.pending_offer.is_some() {
            // Cannot happen with this server (it answers our offer before offering), but be explicit.
            self.log("server offer while our own offer is outstanding: rolling ours back");
            self.pending_offer = None;
        }
        let sdp = v["sdp"].as_str().ok_or_else(|| err("offer without sdp"))?;
        let offer = SdpOffer::from_sdp_string(sdp)?;
        let answer = self.rtc.sdp_api().accept_offer(offer)?;
        let call_id = self.call_id.clone();
        let id = self
            .send(json!({"type": "answer", "callId": call_id, "sdp": answer.to_sdp_string()}))
            .await?;
        self.answer_ids.push(id);
        self.log(format!(
            "answered server offer #{} ({} receiving tracks known)",
            self.server_offers,
            self.tracks.len()
        ));
        Ok(())
    }

    fn on_event(&mut self, e: Event) {
        match e {
            Event::Connected => {
                self.connected = true;
                self.log("connected (ICE + DTLS)");
            }
            Event::IceConnectionStateChange(s) => {
                self.ice_state = format!("{s:?}");
                self.log(format!("ICE {s:?}"));
                if s == IceConnectionState::Disconnected {
                    self.errors.push("ICE disconnected".into());
                }
            }
            Event::MediaAdded(m) if self.args.verbose => {
                self.log(format!(
                    "media added {:?} {:?} {:?}",
                    m.mid, m.kind, m.direction
                ));
            }
            Event::MediaData(d) => {
                let kind = self.rtc.media(d.mid).map(|m| m.kind());
                match self.tracks.get(&d.mid) {
                    Some(t) => {
                        let c = self.received.entry(t.user.clone()).or_default();
                        match kind {
                            Some(MediaKind::Audio) => c.audio += 1,
                            Some(MediaKind::Video) => c.video += 1,
                            None => {}
                        }
                        if self.args.verbose && (c.audio + c.video) % 100 == 1 {
                            let s = format!("frame from {} {} on mid {}", t.user, t.source, d.mid);
                            self.log(s);
                        }
                    }
                    None => {
                        if self.args.verbose {
                            self.log(format!("media on unmapped mid {}", d.mid));
                        }
                    }
                }
            }
            Event::KeyframeRequest(_) => {} // every video frame we send is a keyframe
            _ => {}
        }
    }

    /// Runs str0m until it wants to be woken at the returned instant.
    async fn drive(&mut self) -> Result<Instant, Error> {
        loop {
            match self.rtc.poll_output()? {
                Output::Timeout(t) => return Ok(t),
                Output::Transmit(t) => {
                    if let Err(e) = self.socket.send_to(&t.contents, t.destination).await {
                        self.log(format!("udp send to {}: {e}", t.destination));
                    }
                }
                Output::Event(e) => self.on_event(e),
            }
        }
    }

    fn write_frame(&mut self, kind: MediaKind, n: u64) -> Result<(), Error> {
        let (mid, data, time): (Mid, &[u8], MediaTime) = match kind {
            MediaKind::Audio => (
                self.audio_mid,
                &OPUS_FRAME,
                MediaTime::new(n * 960, Frequency::FORTY_EIGHT_KHZ),
            ),
            MediaKind::Video => (
                self.video_mid,
                VP8_KEYFRAME,
                MediaTime::new(n * 6000, Frequency::NINETY_KHZ),
            ),
        };
        let Some(writer) = self.rtc.writer(mid) else {
            return Ok(());
        };
        let Some(pt) = writer.payload_params().next().map(|p| p.pt()) else {
            return Ok(());
        };
        let writer = if kind == MediaKind::Audio {
            writer.audio_level(-30, true).start_of_talkspurt(n == 0)
        } else {
            writer
        };
        writer.write(pt, Instant::now(), time, data.to_vec())?;
        match kind {
            MediaKind::Audio => self.sent.audio += 1,
            MediaKind::Video => self.sent.video += 1,
        }
        Ok(())
    }
}

async fn run(args: Args) -> Result<(), Error> {
    let started = Instant::now();
    let (my_id, token) = demo_signin(&args.server, &args.name).await?;
    let ws_url = format!(
        "{}/calling/v1/ws",
        args.server.replacen("http://", "ws://", 1)
    );
    let (ws, _) = tokio_tungstenite::connect_async(ws_url.as_str()).await?;

    let socket = UdpSocket::bind("127.0.0.1:0").await?;
    let local_addr = socket.local_addr()?;

    let mut rtc = Rtc::builder()
        .clear_codecs()
        .enable_opus(true, false)
        .enable_vp8(true)
        .build(Instant::now());
    rtc.add_local_candidate(Candidate::host(local_addr, "udp")?)
        .ok_or_else(|| err("host candidate refused"))?;

    let mut api = rtc.sdp_api();
    let audio_mid = api.add_media(MediaKind::Audio, Direction::SendOnly, None, None, None);
    let video_mid = api.add_media(MediaKind::Video, Direction::SendOnly, None, None, None);
    let (offer, pending) = api.apply().ok_or_else(|| err("no offer"))?;

    let mut peer = Peer {
        args,
        ws,
        next_id: 0,
        rtc,
        socket,
        local_addr,
        call_id: String::new(),
        pending_offer: None,
        answer_ids: Vec::new(),
        tracks: HashMap::new(),
        received: BTreeMap::new(),
        sent: Counts::default(),
        audio_mid,
        video_mid,
        connected: false,
        ice_state: "New".into(),
        server_offers: 0,
        started,
        errors: Vec::new(),
    };

    let name = peer.args.name.clone();
    let auth = peer
        .request(json!({"type": "auth", "token": token, "displayName": name}))
        .await?;
    peer.log(format!(
        "authenticated as {} (udp {})",
        auth["communicationUserId"], peer.local_addr
    ));
    let group_id = peer.args.group_id.clone();
    let joined = peer
        .request(json!({"type": "join", "groupId": group_id, "video": true}))
        .await?;
    peer.call_id = joined["callId"]
        .as_str()
        .ok_or_else(|| err("join without callId"))?
        .to_string();
    peer.log(format!(
        "joined call {} with {} participant(s) present",
        peer.call_id,
        joined["participants"].as_array().map_or(0, |p| p.len())
    ));

    let call_id = peer.call_id.clone();
    let offer_msg = json!({
        "type": "offer",
        "callId": call_id,
        "sdp": offer.to_sdp_string(),
        "tracks": [
            {"mid": audio_mid.to_string(), "source": "audio"},
            {"mid": video_mid.to_string(), "source": "camera"},
        ],
    });
    let offer_id = peer.send(offer_msg).await?;
    peer.pending_offer = Some((offer_id, pending));

    let deadline = tokio::time::Instant::now() + peer.args.duration;
    let mut audio_tick = tokio::time::interval(Duration::from_millis(20));
    let mut video_tick = tokio::time::interval(Duration::from_micros(66_667));
    audio_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    video_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let (mut audio_n, mut video_n) = (0u64, 0u64);
    let mut buf = vec![0u8; 2000];

    loop {
        let wake = peer.drive().await?;
        let wake = tokio::time::Instant::from_std(wake.max(Instant::now()));
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => break,
            _ = tokio::time::sleep_until(wake) => {}
            msg = peer.ws.next() => match msg {
                Some(Ok(Message::Text(t))) => {
                    let v: Value = serde_json::from_str(t.as_str())?;
                    peer.handle_ws(v).await?;
                }
                Some(Ok(Message::Close(c))) => return Err(err(format!("websocket closed: {c:?}"))),
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e.into()),
                None => return Err(err("websocket ended")),
            },
            r = peer.socket.recv_from(&mut buf) => {
                let (n, source) = r?;
                if let Ok(contents) = buf[..n].try_into() {
                    let input = Input::Receive(Instant::now(), Receive {
                        proto: Protocol::Udp,
                        source,
                        destination: peer.local_addr,
                        contents,
                    });
                    if peer.rtc.accepts(&input) {
                        peer.rtc.handle_input(input)?;
                    }
                }
            }
            _ = audio_tick.tick() => {
                if peer.connected && peer.pending_offer.is_none() {
                    peer.write_frame(MediaKind::Audio, audio_n)?;
                    audio_n += 1;
                }
            }
            _ = video_tick.tick() => {
                if peer.connected && peer.pending_offer.is_none() {
                    peer.write_frame(MediaKind::Video, video_n)?;
                    video_n += 1;
                }
            }
        }
        peer.rtc.handle_input(Input::Timeout(Instant::now()))?;
    }

    // Leave politely; the summary does not depend on it.
    let call_id = peer.call_id.clone();
    let _ = peer
        .send(json!({"type": "hangUp", "callId": call_id}))
        .await;
    let _ = tokio::time::timeout(Duration::from_millis(500), peer.ws.close(None)).await;
    peer.rtc.disconnect();

    let received: serde_json::Map<String, Value> = peer
        .received
        .iter()
        .map(|(k, c)| (k.clone(), json!({"audio": c.audio, "video": c.video})))
        .collect();
    let summary = json!({
        "id": my_id,
        "received": received,
        "sent": {"audio": peer.sent.audio, "video": peer.sent.video},
        "connected": peer.connected,
        "ice": peer.ice_state,
        "serverOffers": peer.server_offers,
        "errors": peer.errors,
    });
    println!("{summary}");
    Ok(())
}

fn main() {
    str0m::crypto::from_feature_flags().install_process_default();
    let args = parse_args();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    if let Err(e) = rt.block_on(run(args)) {
        eprintln!("[str0m_peer] error: {e}");
        std::process::exit(1);
    }
}
