//! One simulated WebRTC client: str0m in client role (full ICE against the ICE-lite SFU) over its own UDP socket,
//! signaling over its own WebSocket. It joins a group call, offers its sending tracks (or one `recvonly` audio
//! m-line when it only listens, so the SFU publishes nothing for it), answers the server's renegotiation offers,
//! publishes stamped synthetic frames and measures the frames it receives.
//!
//! Each client is one tokio task; the runtime's few worker threads carry hundreds of them. The task sleeps until the
//! earliest of: a datagram, a signaling frame, str0m's timer, the next frame to send, or the stop signal.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{Value, json};
use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::format::Codec;
use str0m::media::{
    Direction, Frequency, MediaKind, MediaTime, Mid, Pt, Rid, Simulcast, SimulcastLayer,
};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, IceConnectionState, Input, Output, Rtc};
use switchboard::proto::signal::{OutTrackInfo, TrackSpec};
use tokio::net::UdpSocket;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;

use crate::histogram::Histogram;
use crate::identity::User;
use crate::payload::{self, Kind, Stamp};
use crate::signal::SignalClient;

/// Simulcast layers: rid, keyframe picture size (pixels), share of the video bitrate.
pub const LAYERS: [(&str, u16, u16, f64); 3] = [
    ("q", 320, 180, 0.10),
    ("h", 640, 360, 0.25),
    ("f", 1280, 720, 0.65),
];
/// Picture size of keyframes without simulcast, pixels.
const SINGLE_LAYER_SIZE: (u16, u16) = (1280, 720);
/// A keyframe is this many times an average frame of its layer.
const KEYFRAME_FACTOR: u64 = 3;
/// Audio frame interval (50 frames/s).
const AUDIO_INTERVAL: Duration = Duration::from_millis(20);
/// If sending falls this far behind schedule (an overloaded load generator), skip ahead instead of bursting.
const MAX_SEND_LAG: Duration = Duration::from_millis(200);
/// Datagrams read per wake-up before timers and signaling get a turn.
const RECV_BATCH: usize = 64;
/// Errors kept per client (the rest are only counted).
const MAX_ERRORS: usize = 5;

/// A published video track.
#[derive(Debug, Clone, Copy)]
pub struct VideoSpec {
    /// Total send bitrate of the track (all simulcast layers), bit/s.
    pub bitrate_bps: u64,
    /// Frames per second (per layer).
    pub fps: u32,
    /// A keyframe at least this often (also on every keyframe request).
    pub keyframe_every: Duration,
    /// Three layers (q/h/f at 320x180, 640x360, 1280x720) instead of one.
    pub simulcast: bool,
}

/// What one client does.
#[derive(Debug, Clone)]
pub struct ClientSpec {
    /// Index in the run (written into the frames it publishes).
    pub index: u32,
    /// Its identity and token.
    pub user: User,
    /// The group call to join.
    pub group_id: String,
    /// Publishes audio.
    pub audio: bool,
    /// Audio frame size, bytes.
    pub audio_bytes: usize,
    /// Publishes video.
    pub video: Option<VideoSpec>,
    /// Publisher tracks it should receive ((publisher index, kind)), for readiness and loss.
    pub expected: Vec<(u32, Kind)>,
}

/// The measurement window and the run's clock, shared by all clients.
#[derive(Debug)]
pub struct RunClock {
    epoch: Instant,
    window_start_us: AtomicU64,
    window_end_us: AtomicU64,
}

impl RunClock {
    /// A clock starting now, with no window yet.
    pub fn new() -> RunClock {
        RunClock {
            epoch: Instant::now(),
            window_start_us: AtomicU64::new(u64::MAX),
            window_end_us: AtomicU64::new(u64::MAX),
        }
    }

    /// Microseconds since the epoch.
    pub fn now_us(&self) -> u64 {
        self.epoch.elapsed().as_micros() as u64
    }

    /// Opens the measurement window now.
    pub fn start_window(&self) {
        self.window_start_us.store(self.now_us(), Ordering::SeqCst);
    }

    /// Closes the measurement window now.
    pub fn end_window(&self) {
        self.window_end_us.store(self.now_us(), Ordering::SeqCst);
    }

    /// Whether a frame sent at `us` is inside the window.
    pub fn in_window(&self, us: u64) -> bool {
        us >= self.window_start_us.load(Ordering::Relaxed)
            && us < self.window_end_us.load(Ordering::Relaxed)
    }
}

impl Default for RunClock {
    fn default() -> Self {
        RunClock::new()
    }
}

/// Live counters of one client, read by the progress line.
#[derive(Debug, Default)]
pub struct Counters {
    /// Datagrams received.
    pub datagrams_in: AtomicU64,
    /// Bytes received (UDP payload).
    pub bytes_in: AtomicU64,
    /// Datagrams sent.
    pub datagrams_out: AtomicU64,
    /// Bytes sent.
    pub bytes_out: AtomicU64,
    /// Frames received (any time).
    pub frames_in: AtomicU64,
    /// ICE and DTLS connected.
    pub connected: AtomicBool,
    /// Distinct expected publisher tracks from which a frame arrived.
    pub tracks_seen: AtomicU32,
    /// The client gave up (signaling closed, str0m error).
    pub failed: AtomicBool,
}

/// What a client measured, returned when it stops.
#[derive(Debug, Default)]
pub struct ClientResult {
    /// From opening the WebSocket to ICE+DTLS connected, milliseconds.
    pub join_ms: Option<u64>,
    /// Added latency of frames sent inside the window: receive time - send stamp, microseconds.
    pub latency_us: Histogram,
    /// How late frames inside the window were sent against their schedule (20 ms audio, 1/fps video),
    /// microseconds: the load generator's own timer lag.
    pub send_lag_us: Histogram,
    /// Frames sent inside the window that arrived, by (publisher, kind).
    pub received: HashMap<(u32, Kind), u64>,
    /// Frames this client sent inside the window, by kind (a simulcast frame counts once).
    pub sent: HashMap<Kind, u64>,
    /// Datagrams that could not be sent (socket buffer full).
    pub send_drops: u64,
    /// Frames without a readable stamp.
    pub unstamped: u64,
    /// The first few errors.
    pub errors: Vec<String>,
    /// Number of errors.
    pub error_count: u64,
}

impl ClientResult {
    /// Counts an error and keeps the first few.
    pub(crate) fn error(&mut self, e: impl Into<String>) {
        self.error_count += 1;
        if self.errors.len() < MAX_ERRORS {
            self.errors.push(e.into());
        }
    }
}

/// One outgoing track's send state.
pub(crate) struct Outgoing {
    mid: Mid,
    pt: Option<Pt>,
    kind: Kind,
    next: Instant,
    interval: Duration,
    seq: u32,
    /// Per layer: frame size (bytes), keyframe wanted.
    layers: Vec<(usize, bool)>,
    last_key: Instant,
    keyframe_every: Duration,
    simulcast: bool,
    /// RTP clock ticks per frame (48 kHz audio, 90 kHz video).
    rtp_step: u64,
}

pub(crate) struct Peer {
    spec: ClientSpec,
    clock: Arc<RunClock>,
    counters: Arc<Counters>,
    rtc: Rtc,
    socket: UdpSocket,
    local: SocketAddr,
    signal: SignalClient,
    call_id: String,
    pending: Option<(u64, SdpPendingOffer)>,
    answer_ids: Vec<u64>,
    outgoing: Vec<Outgoing>,
    tracks_seen: HashSet<(u32, Kind)>,
    expected: HashSet<(u32, Kind)>,
    started: Instant,
    /// When str0m next wants `Input::Timeout` (its last `Output::Timeout`).
    rtc_deadline: Instant,
    /// This peer's ICE+DTLS connected (with Janus a publishing client has two peers sharing one `Counters`).
    connected: bool,
    /// Set when the peer talks to Janus' VideoRoom instead of Switchboard's signaling.
    janus: Option<crate::janus::JanusLink>,
    result: ClientResult,
}

/// A new str0m client on `socket` with the m-lines `spec` publishes (or one `recvonly` audio m-line when
/// `listen_offer` and it publishes nothing), and its offer when it has m-lines.
pub(crate) struct Built {
    pub rtc: Rtc,
    pub outgoing: Vec<Outgoing>,
    pub tracks: Vec<TrackSpec>,
    pub offer: Option<(SdpOffer, SdpPendingOffer)>,
}

/// Runs a client until `stop` turns true (or it fails); returns what it measured.
pub async fn run(
    spec: ClientSpec,
    clock: Arc<RunClock>,
    counters: Arc<Counters>,
    ws_url: String,
    mut stop: watch::Receiver<bool>,
) -> ClientResult {
    let started = Instant::now();
    let mut peer = match Peer::join(spec, clock, Arc::clone(&counters), &ws_url, started).await {
        Ok(p) => p,
        Err(e) => {
            counters.failed.store(true, Ordering::Relaxed);
            let mut r = ClientResult::default();
            r.error(format!("join: {e:#}"));
            return r;
        }
    };
    if let Err(e) = peer.run(&mut stop).await {
        counters.failed.store(true, Ordering::Relaxed);
        peer.result.error(format!("{e:#}"));
    }
    peer.rtc.disconnect();
    let _ = tokio::time::timeout(Duration::from_millis(200), peer.signal.ws.close(None)).await;
    peer.result
}

/// Builds the str0m client of `spec` for the socket at `local`: see [`Built`]. Only the sending tracks' m-lines
/// when `spec` publishes; otherwise one `recvonly` audio m-line if `listen_offer`, else none (the peer then
/// answers the server's offer).
pub(crate) fn build(
    spec: &ClientSpec,
    local: SocketAddr,
    now: Instant,
    listen_offer: bool,
) -> anyhow::Result<Built> {
    let mut rtc = Rtc::builder()
        .clear_codecs()
        .enable_opus(true, false)
        .enable_vp8(true)
        .build(now);
    rtc.add_local_candidate(Candidate::host(local, "udp")?)
        .ok_or_else(|| anyhow::anyhow!("host candidate refused"))?;

    let mut api = rtc.sdp_api();
    let mut tracks = Vec::new();
    let mut outgoing = Vec::new();
    if spec.audio {
        let mid = api.add_media(MediaKind::Audio, Direction::SendOnly, None, None, None);
        tracks.push(TrackSpec {
            mid: mid.to_string(),
            source: "audio".into(),
        });
        outgoing.push(Outgoing {
            mid,
            pt: None,
            kind: Kind::Audio,
            next: now,
            interval: AUDIO_INTERVAL,
            seq: 0,
            layers: vec![(spec.audio_bytes, false)],
            last_key: now,
            keyframe_every: Duration::MAX,
            simulcast: false,
            rtp_step: 960,
        });
    }
    if let Some(v) = spec.video {
        let sim = v.simulcast.then(|| {
            let mut s = Simulcast::new();
            for (rid, ..) in LAYERS {
                s.add_send_layer(SimulcastLayer::new(rid));
            }
            s
        });
        let mid = api.add_media(MediaKind::Video, Direction::SendOnly, None, None, sim);
        tracks.push(TrackSpec {
            mid: mid.to_string(),
            source: "camera".into(),
        });
        let fps = v.fps.max(1);
        let frame_bytes = |share: f64| {
            ((v.bitrate_bps as f64 * share / 8.0 / f64::from(fps)) as usize)
                .max(payload::VIDEO_STAMP_OFFSET + payload::STAMP_LEN)
        };
        let layers = if v.simulcast {
            LAYERS.iter().map(|l| (frame_bytes(l.3), true)).collect()
        } else {
            vec![(frame_bytes(1.0), true)]
        };
        outgoing.push(Outgoing {
            mid,
            pt: None,
            kind: Kind::Video,
            next: now,
            interval: Duration::from_secs(1) / fps,
            seq: 0,
            layers,
            last_key: now,
            keyframe_every: v.keyframe_every,
            simulcast: v.simulcast,
            rtp_step: 90_000 / u64::from(fps),
        });
    }
    if outgoing.is_empty() && listen_offer {
        api.add_media(MediaKind::Audio, Direction::RecvOnly, None, None, None);
    }
    let offer = api.apply();
    Ok(Built {
        rtc,
        outgoing,
        tracks,
        offer,
    })
}

impl Peer {
    async fn join(
        spec: ClientSpec,
        clock: Arc<RunClock>,
        counters: Arc<Counters>,
        ws_url: &str,
        started: Instant,
    ) -> anyhow::Result<Peer> {
        let mut signal = SignalClient::connect(ws_url).await?;
        signal
            .auth(&spec.user.token, &format!("load-{}", spec.index))
            .await?;
        let joined = signal
            .request(
                "join",
                json!({ "groupId": spec.group_id, "video": spec.video.is_some() }),
                Duration::from_secs(30),
            )
            .await?;
        let call_id = joined["callId"]
            .as_str()
            .ok_or_else(|| anyhow::anyhow!("join answer without callId"))?
            .to_string();

        let socket = UdpSocket::bind("127.0.0.1:0").await?;
        let local = socket.local_addr()?;
        let now = Instant::now();
        let Built {
            rtc,
            outgoing,
            tracks,
            offer,
        } = build(&spec, local, now, true)?;
        let (offer, pending) = offer.ok_or_else(|| anyhow::anyhow!("str0m made no offer"))?;
        let offer_id = signal
            .send(
                "offer",
                json!({ "callId": call_id, "sdp": offer.to_sdp_string(), "tracks": tracks }),
            )
            .await?;
        let expected = spec.expected.iter().copied().collect();
        Ok(Peer {
            spec,
            clock,
            counters,
            rtc,
            socket,
            local,
            signal,
            call_id,
            pending: Some((offer_id, pending)),
            answer_ids: Vec::new(),
            outgoing,
            tracks_seen: HashSet::new(),
            expected,
            started,
            rtc_deadline: now,
            connected: false,
            janus: None,
            result: ClientResult::default(),
        })
    }

    /// A peer around an already negotiated (or negotiating) `rtc`, for adapters with their own signaling.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn assemble(
        spec: ClientSpec,
        clock: Arc<RunClock>,
        counters: Arc<Counters>,
        built: Built,
        socket: UdpSocket,
        signal: SignalClient,
        janus: Option<crate::janus::JanusLink>,
        started: Instant,
    ) -> anyhow::Result<Peer> {
        let local = socket.local_addr()?;
        let expected = spec.expected.iter().copied().collect();
        Ok(Peer {
            spec,
            clock,
            counters,
            rtc: built.rtc,
            socket,
            local,
            signal,
            call_id: String::new(),
            pending: None,
            answer_ids: Vec::new(),
            outgoing: built.outgoing,
            tracks_seen: HashSet::new(),
            expected,
            started,
            rtc_deadline: Instant::now(),
            connected: false,
            janus,
            result: ClientResult::default(),
        })
    }

    /// Runs until `stop` (or a failure), then closes; returns what it measured.
    pub(crate) async fn run_to_end(mut self, stop: &mut watch::Receiver<bool>) -> ClientResult {
        if let Err(e) = self.run(stop).await {
            self.counters.failed.store(true, Ordering::Relaxed);
            self.result.error(format!("{e:#}"));
        }
        self.rtc.disconnect();
        if let Some(link) = self.janus.take() {
            crate::janus::leave(&mut self.signal, link).await;
        }
        let _ = tokio::time::timeout(Duration::from_millis(200), self.signal.ws.close(None)).await;
        self.result
    }

    async fn run(&mut self, stop: &mut watch::Receiver<bool>) -> anyhow::Result<()> {
        let mut buf = vec![0u8; 2048];
        // Frames queued by the signaling select branch before the earlier borrow ends.
        for v in std::mem::take(&mut self.signal.queued) {
            self.on_signal(v).await?;
        }
        loop {
            let rtc_wake = self.drive()?;
            let sending = self.connected && self.pending.is_none();
            let media_wake = if sending {
                self.outgoing.iter().map(|o| o.next).min()
            } else {
                None
            };
            let wake = media_wake.map_or(rtc_wake, |m| m.min(rtc_wake));
            let wake = tokio::time::Instant::from_std(wake.max(Instant::now()));
            tokio::select! {
                _ = stop.changed() => return Ok(()),
                r = self.socket.readable() => {
                    r?;
                    self.read_datagrams(&mut buf)?;
                }
                msg = self.signal.ws.next() => match msg {
                    Some(Ok(Message::Text(t))) => {
                        let v: Value = serde_json::from_str(t.as_str())?;
                        if self.janus.is_some() {
                            crate::janus::on_message(&v)?;
                        } else {
                            self.on_signal(v).await?;
                        }
                    }
                    Some(Ok(Message::Close(c))) => anyhow::bail!("signaling closed: {c:?}"),
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return Err(e.into()),
                    None => anyhow::bail!("signaling ended"),
                },
                _ = tokio::time::sleep_until(wake) => {}
            }
            if sending {
                self.send_due_frames()?;
            }
            if let Some(link) = &mut self.janus {
                crate::janus::keepalive(&mut self.signal, link).await?;
            }
            // Only when due: an early timeout is harmless to str0m but costs a pass over all its streams,
            // which with hundreds of clients is a good part of the load generator's CPU.
            let now = Instant::now();
            if now >= self.rtc_deadline {
                self.rtc.handle_input(Input::Timeout(now))?;
            }
        }
    }

    fn read_datagrams(&mut self, buf: &mut [u8]) -> anyhow::Result<()> {
        for _ in 0..RECV_BATCH {
            let (n, source) = match self.socket.try_recv_from(buf) {
                Ok(r) => r,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => continue,
                Err(e) => return Err(e.into()),
            };
            self.counters.datagrams_in.fetch_add(1, Ordering::Relaxed);
            self.counters
                .bytes_in
                .fetch_add(n as u64, Ordering::Relaxed);
            let Ok(contents) = buf[..n].try_into() else {
                continue;
            };
            let input = Input::Receive(
                Instant::now(),
                Receive {
                    proto: Protocol::Udp,
                    source,
                    destination: self.local,
                    contents,
                },
            );
            if self.rtc.accepts(&input) {
                self.rtc.handle_input(input)?;
                self.drive()?;
            }
        }
        Ok(())
    }

    /// Drains str0m's output; returns when it next wants a timeout.
    fn drive(&mut self) -> anyhow::Result<Instant> {
        loop {
            match self.rtc.poll_output()? {
                Output::Timeout(t) => {
                    self.rtc_deadline = t;
                    return Ok(t);
                }
                Output::Transmit(t) => match self.socket.try_send_to(&t.contents, t.destination) {
                    Ok(n) => {
                        self.counters.datagrams_out.fetch_add(1, Ordering::Relaxed);
                        self.counters
                            .bytes_out
                            .fetch_add(n as u64, Ordering::Relaxed);
                    }
                    // Candidate pairs towards the server's non-loopback addresses cannot be used from a
                    // loopback socket; ICE settles on the loopback pair.
                    Err(e) if e.kind() == std::io::ErrorKind::InvalidInput => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NetworkUnreachable => {}
                    Err(_) => self.result.send_drops += 1,
                },
                Output::Event(e) => self.on_event(e),
            }
        }
    }

    fn on_event(&mut self, e: Event) {
        match e {
            Event::Connected => {
                self.connected = true;
                self.result.join_ms = Some(self.started.elapsed().as_millis() as u64);
                self.counters.connected.store(true, Ordering::Relaxed);
                let now = Instant::now();
                for o in &mut self.outgoing {
                    o.next = now;
                }
            }
            Event::IceConnectionStateChange(IceConnectionState::Disconnected) => {
                self.result.error("ICE disconnected");
            }
            Event::MediaData(d) => {
                let now_us = self.clock.now_us();
                self.counters.frames_in.fetch_add(1, Ordering::Relaxed);
                let kind = match d.params.spec().codec {
                    Codec::Opus => Kind::Audio,
                    _ => Kind::Video,
                };
                let Some(stamp) = payload::stamp_of(kind, &d.data) else {
                    self.result.unstamped += 1;
                    return;
                };
                let key = (stamp.publisher, kind);
                if self.tracks_seen.insert(key) && self.expected.contains(&key) {
                    self.counters.tracks_seen.fetch_add(1, Ordering::Relaxed);
                }
                if self.clock.in_window(stamp.sent_us) {
                    self.result
                        .latency_us
                        .record(now_us.saturating_sub(stamp.sent_us));
                    *self.result.received.entry(key).or_default() += 1;
                }
            }
            Event::KeyframeRequest(r) => {
                for o in self.outgoing.iter_mut().filter(|o| o.mid == r.mid) {
                    let layer = match &r.rid {
                        Some(rid) if o.simulcast => {
                            LAYERS.iter().position(|l| Rid::from(l.0) == *rid)
                        }
                        _ => Some(0),
                    };
                    if let Some(l) = layer.and_then(|i| o.layers.get_mut(i)) {
                        l.1 = true;
                    }
                }
            }
            _ => {}
        }
    }

    async fn on_signal(&mut self, v: Value) -> anyhow::Result<()> {
        match v["type"].as_str().unwrap_or("") {
            "response" => {
                let id = v["id"].as_u64().unwrap_or(0);
                if self.pending.as_ref().is_some_and(|(pid, _)| *pid == id) {
                    // Checked just above.
                    let (_, pending) = self.pending.take().expect("pending offer");
                    if v["ok"] != json!(true) {
                        anyhow::bail!("offer refused: {}", v["error"]);
                    }
                    let sdp = v["result"]["sdp"]
                        .as_str()
                        .ok_or_else(|| anyhow::anyhow!("offer answer without sdp"))?;
                    self.rtc
                        .sdp_api()
                        .accept_answer(pending, SdpAnswer::from_sdp_string(sdp)?)?;
                } else if let Some(i) = self.answer_ids.iter().position(|a| *a == id) {
                    self.answer_ids.swap_remove(i);
                    if v["ok"] != json!(true) {
                        self.result.error(format!("answer refused: {}", v["error"]));
                    }
                }
            }
            "offer" => {
                if let Some(tracks) = v.get("tracks") {
                    // Validates the shape against the protocol's own type; the stamps name publishers already.
                    let _: Vec<OutTrackInfo> =
                        serde_json::from_value(tracks.clone()).unwrap_or_default();
                }
                let sdp = v["sdp"]
                    .as_str()
                    .ok_or_else(|| anyhow::anyhow!("server offer without sdp"))?;
                let answer = self
                    .rtc
                    .sdp_api()
                    .accept_offer(SdpOffer::from_sdp_string(sdp)?)?;
                let id = self
                    .signal
                    .send(
                        "answer",
                        json!({ "callId": self.call_id, "sdp": answer.to_sdp_string() }),
                    )
                    .await?;
                self.answer_ids.push(id);
            }
            "error" => self
                .result
                .error(format!("server error event: {}", v["error"])),
            "callStateChanged" if v["state"] == "Disconnected" => {
                anyhow::bail!("call ended by the server: {}", v["endReason"]);
            }
            _ => {}
        }
        Ok(())
    }

    fn send_due_frames(&mut self) -> anyhow::Result<()> {
        let now = Instant::now();
        for i in 0..self.outgoing.len() {
            while self.outgoing[i].next <= now {
                let lag = now.duration_since(self.outgoing[i].next);
                if self.clock.in_window(self.clock.now_us()) {
                    self.result.send_lag_us.record(lag.as_micros() as u64);
                }
                if lag > MAX_SEND_LAG {
                    self.outgoing[i].next = now;
                }
                self.write_frame(i, now)?;
                let o = &mut self.outgoing[i];
                o.next += o.interval;
                o.seq = o.seq.wrapping_add(1);
            }
        }
        Ok(())
    }

    fn write_frame(&mut self, i: usize, now: Instant) -> anyhow::Result<()> {
        let sent_us = self.clock.now_us();
        let in_window = self.clock.in_window(sent_us);
        let index = self.spec.index;
        let o = &mut self.outgoing[i];
        let (mid, kind, seq) = (o.mid, o.kind, o.seq);
        if o.pt.is_none() {
            let codec = if kind == Kind::Audio {
                Codec::Opus
            } else {
                Codec::Vp8
            };
            o.pt = self.rtc.writer(mid).and_then(|w| {
                w.payload_params()
                    .find(|p| p.spec().codec == codec)
                    .map(|p| p.pt())
            });
        }
        let Some(pt) = o.pt else { return Ok(()) };
        if kind == Kind::Video && now.duration_since(o.last_key) >= o.keyframe_every {
            for l in &mut o.layers {
                l.1 = true;
            }
        }
        let layers: Vec<(usize, bool)> = o.layers.clone();
        if layers.iter().any(|l| l.1) {
            o.last_key = now;
        }
        for l in &mut o.layers {
            l.1 = false;
        }
        let (simulcast, rtp_step) = (o.simulcast, o.rtp_step);
        for (layer, (size, key)) in layers.into_iter().enumerate() {
            let stamp = Stamp {
                publisher: index,
                kind,
                layer: layer as u8,
                seq,
                sent_us,
            };
            let Some(writer) = self.rtc.writer(mid) else {
                return Ok(());
            };
            match kind {
                Kind::Audio => {
                    let time =
                        MediaTime::new(u64::from(seq) * rtp_step, Frequency::FORTY_EIGHT_KHZ);
                    writer.audio_level(-30, true).write(
                        pt,
                        now,
                        time,
                        payload::audio_frame(&stamp, size),
                    )?;
                }
                Kind::Video => {
                    let picture = if simulcast {
                        (LAYERS[layer].1, LAYERS[layer].2)
                    } else {
                        SINGLE_LAYER_SIZE
                    };
                    let frame = if key {
                        payload::vp8_frame(&stamp, size * KEYFRAME_FACTOR as usize, Some(picture))
                    } else {
                        payload::vp8_frame(&stamp, size, None)
                    };
                    // Each layer its own RTP timestamp base, as browsers do.
                    let time = MediaTime::from_90khz(
                        u64::from(seq) * rtp_step + (layer as u64) * 1_000_000,
                    );
                    let writer = if simulcast {
                        writer.rid(Rid::from(LAYERS[layer].0))
                    } else {
                        writer
                    };
                    writer.write(pt, now, time, frame)?;
                }
            }
            // str0m refuses a second write before its output is drained.
            self.drive()?;
        }
        if in_window {
            *self.result.sent.entry(kind).or_default() += 1;
        }
        Ok(())
    }
}
