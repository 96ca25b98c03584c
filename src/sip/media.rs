//! RTP/RTCP for one SIP call: a port pair from the configured range, the echo line (what is heard goes back,
//! re-stamped with our own SSRC, sequence numbers and timestamps), DTMF detection (RFC 4733, or in-band Goertzel
//! when no telephone-event was negotiated), symmetric RTP latching and RTCP SR/RR every 5 s (RFC 3550 §6.2).

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use crate::proto::sip::dtmf::{Rfc4733Decoder, ToneEvent};
use crate::proto::sip::goertzel::ToneDetector;
use crate::proto::sip::jitter::JitterBuffer;
use crate::proto::sip::rtcp::{self, ReceiverStats, SenderInfo};
use crate::proto::sip::sdp::{G711, Negotiated};
use crate::proto::sip::{g711, rtp};

/// RTCP report interval (RFC 3550 §6.2 minimum of 5 s).
pub const RTCP_INTERVAL: Duration = Duration::from_secs(5);
/// How long the jitter buffer waits for a missing packet.
pub const JITTER_DEPTH: Duration = Duration::from_millis(40);

/// Media errors.
#[derive(Debug, thiserror::Error)]
pub enum MediaError {
    /// Every even port of the range is taken (or cannot be bound).
    #[error("no free RTP port pair in {0}-{1}")]
    NoPorts(u16, u16),
}

/// The RTP port range: even RTP ports, RTCP on the next odd one (RFC 3550 §11).
#[derive(Debug)]
pub struct PortPool {
    min: u16,
    max: u16,
    in_use: Mutex<BTreeSet<u16>>,
    cursor: Mutex<u16>,
}

/// A port pair taken from the pool; given back on drop.
#[derive(Debug)]
pub struct Lease {
    pool: Arc<PortPool>,
    port: u16,
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Ok(mut s) = self.pool.in_use.lock() {
            s.remove(&self.port);
            metrics::gauge!("switchboard_sip_rtp_ports_in_use").set(s.len() as f64);
        }
    }
}

impl PortPool {
    /// A pool over `min..=max`.
    pub fn new(min: u16, max: u16) -> Arc<PortPool> {
        let first = min + (min % 2);
        Arc::new(PortPool {
            min: first,
            max,
            in_use: Mutex::new(BTreeSet::new()),
            cursor: Mutex::new(first),
        })
    }

    /// Port pairs currently leased.
    pub fn in_use(&self) -> usize {
        self.in_use.lock().map(|s| s.len()).unwrap_or(0)
    }

    /// Binds an RTP/RTCP socket pair on `ip` from the range.
    ///
    /// # Errors
    /// [`MediaError::NoPorts`] when no pair could be bound.
    pub fn allocate(
        self: &Arc<Self>,
        ip: IpAddr,
    ) -> Result<(std::net::UdpSocket, std::net::UdpSocket, Lease), MediaError> {
        let pairs = usize::from(self.max.saturating_sub(self.min) / 2) + 1;
        for _ in 0..pairs {
            let port = {
                let Ok(mut c) = self.cursor.lock() else { break };
                let p = *c;
                *c = if p.saturating_add(2) > self.max.saturating_sub(1) {
                    self.min
                } else {
                    p + 2
                };
                p
            };
            if port.checked_add(1).is_none_or(|p| p > self.max) {
                continue;
            }
            {
                let Ok(mut s) = self.in_use.lock() else { break };
                if !s.insert(port) {
                    continue;
                }
            }
            let lease = Lease {
                pool: self.clone(),
                port,
            };
            let bound = std::net::UdpSocket::bind((ip, port))
                .and_then(|a| Ok((a, std::net::UdpSocket::bind((ip, port + 1))?)));
            match bound {
                Ok((a, b)) => {
                    metrics::gauge!("switchboard_sip_rtp_ports_in_use").set(self.in_use() as f64);
                    return Ok((a, b, lease));
                }
                Err(_) => continue, // taken by another process: the lease's drop frees our mark
            }
        }
        Err(MediaError::NoPorts(self.min, self.max))
    }
}

/// What the call's signalling tells its media task.
#[derive(Debug, Clone)]
pub struct MediaParams {
    /// The negotiated stream.
    pub neg: Negotiated,
    /// Whether we send (false on hold: our answer was `recvonly`/`inactive`).
    pub send: bool,
    /// The signalling peer's address (symmetric RTP latches only on packets from it or the SDP address).
    pub signalling_ip: IpAddr,
}

/// Where a DTMF digit came from (the `source` label of `switchboard_sip_dtmf_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DtmfSource {
    /// RFC 4733 telephone-event packets.
    Rfc4733,
    /// SIP INFO.
    Info,
    /// In-band tones (Goertzel).
    Inband,
}

impl DtmfSource {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            DtmfSource::Rfc4733 => "rfc4733",
            DtmfSource::Info => "info",
            DtmfSource::Inband => "inband",
        }
    }
}

/// Records a detected DTMF event: the metric and a tracing event.
pub fn report_dtmf(call_id: &str, event: ToneEvent, source: DtmfSource, duration_ms: Option<u32>) {
    match event {
        ToneEvent::Digit(d) => {
            metrics::counter!("switchboard_sip_dtmf_total", "source" => source.as_str())
                .increment(1);
            tracing::info!(call_id, digit = %d, source = source.as_str(), duration_ms, "DTMF digit");
        }
        ToneEvent::Flash => {
            tracing::info!(
                call_id,
                source = source.as_str(),
                "hook flash (event 16), not a digit"
            );
        }
    }
}

/// A running media session; dropping it stops the task and frees the ports.
#[derive(Debug)]
pub struct MediaSession {
    /// Our RTP port (RTCP is the next one).
    pub port: u16,
    activity: Arc<RtpActivity>,
    tx: mpsc::UnboundedSender<MediaParams>,
    task: tokio::task::JoinHandle<()>,
    /// DTMF to play to the SIP peer (bridged sessions only).
    dtmf: Option<mpsc::UnboundedSender<char>>,
}

impl Drop for MediaSession {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl MediaSession {
    /// How long the phone has sent no RTP (since the session started when it never did).
    pub fn rtp_silence(&self, now: Instant) -> Duration {
        self.activity.silent_for(now)
    }

    /// Applies new parameters (re-INVITE: hold, resume, new address).
    pub fn update(&self, p: MediaParams) {
        let _ = self.tx.send(p);
    }

    /// Plays a DTMF digit to the SIP peer as RFC 4733 events (bridged sessions; the echo line
    /// ignores it).
    pub fn send_dtmf(&self, digit: char) {
        if let Some(d) = &self.dtmf {
            let _ = d.send(digit);
        }
    }

    /// A session run by another task of this module tree (the bridge).
    pub(super) fn from_parts(
        port: u16,
        activity: Arc<RtpActivity>,
        tx: mpsc::UnboundedSender<MediaParams>,
        task: tokio::task::JoinHandle<()>,
        dtmf: mpsc::UnboundedSender<char>,
    ) -> MediaSession {
        MediaSession {
            port,
            activity,
            tx,
            task,
            dtmf: Some(dtmf),
        }
    }

    /// Starts the echo session on an allocated socket pair.
    ///
    /// # Errors
    /// Socket registration with tokio failing.
    pub fn start_echo(
        call_id: String,
        sockets: (std::net::UdpSocket, std::net::UdpSocket, Lease),
        params: MediaParams,
    ) -> std::io::Result<MediaSession> {
        let (rtp_std, rtcp_std, lease) = sockets;
        let port = rtp_std.local_addr()?.port();
        rtp_std.set_nonblocking(true)?;
        rtcp_std.set_nonblocking(true)?;
        let rtp = UdpSocket::from_std(rtp_std)?;
        let rtcp = UdpSocket::from_std(rtcp_std)?;
        let (tx, rx) = mpsc::unbounded_channel();
        let activity = RtpActivity::new();
        let leg_activity = activity.clone();
        let task = tokio::spawn(async move {
            let _lease = lease;
            Echo::new(call_id, params, leg_activity)
                .run(rtp, rtcp, rx)
                .await;
        });
        Ok(MediaSession {
            port,
            activity,
            tx,
            task,
            dtmf: None,
        })
    }
}

struct Queued {
    pt: u8,
    timestamp: u32,
    ssrc: u32,
    payload: Vec<u8>,
}

/// When the phone last sent RTP, shared by a media session's task (writer) and the UA (reader, for
/// the RTP inactivity timeout).
#[derive(Debug)]
pub(super) struct RtpActivity {
    started: Instant,
    /// Milliseconds after `started` of the last RTP packet (0: none yet).
    last_ms: AtomicU64,
}

impl RtpActivity {
    pub(super) fn new() -> Arc<RtpActivity> {
        Arc::new(RtpActivity {
            started: Instant::now(),
            last_ms: AtomicU64::new(0),
        })
    }

    fn touch(&self, now: Instant) {
        let ms = now.saturating_duration_since(self.started).as_millis() as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    fn silent_for(&self, now: Instant) -> Duration {
        let last = self.started + Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        now.saturating_duration_since(last)
    }
}

/// One RTP/RTCP leg towards a phone (RFC 3550), shared by the echo line and the bridge: where RTP
/// and RTCP go (the signalled addresses, then the first source from the signalled host: symmetric
/// RTP behind NAT), our SSRC, sequence numbers and sender-report counts, and receiver statistics of
/// what arrives.
pub(super) struct RtpLeg {
    call_id: String,
    rtp_to: SocketAddr,
    rtcp_to: SocketAddr,
    latched: bool,
    rtcp_latched: bool,
    ssrc: u32,
    seq: u16,
    last_ts: u32,
    last_send: Option<Instant>,
    /// RTP packets sent.
    pub(super) sent_packets: u32,
    sent_octets: u32,
    /// RTP packets received.
    pub(super) received: u64,
    stats: ReceiverStats,
    started: Instant,
    activity: Arc<RtpActivity>,
}

impl RtpLeg {
    /// A leg to the addresses `p` negotiated, random SSRC and first sequence number; received RTP
    /// is noted in `activity`.
    pub(super) fn new(call_id: &str, p: &MediaParams, activity: Arc<RtpActivity>) -> RtpLeg {
        RtpLeg {
            activity,
            call_id: call_id.to_string(),
            rtp_to: p.neg.remote_rtp,
            rtcp_to: p.neg.remote_rtcp,
            latched: false,
            rtcp_latched: false,
            ssrc: rand::random::<u32>(),
            seq: rand::random::<u16>() & 0x7fff,
            last_ts: 0,
            last_send: None,
            sent_packets: 0,
            sent_octets: 0,
            received: 0,
            stats: ReceiverStats::default(),
            started: Instant::now(),
        }
    }

    /// A new negotiation (re-INVITE): when the remote address changed, RTP and RTCP go to the new
    /// one and latch again.
    pub(super) fn renegotiated(&mut self, old: &MediaParams, new: &MediaParams) {
        if new.neg.remote_rtp != old.neg.remote_rtp {
            self.rtp_to = new.neg.remote_rtp;
            self.rtcp_to = new.neg.remote_rtcp;
            self.latched = false;
            self.rtcp_latched = false;
        }
    }

    /// Whether packets from `from` may move our destination: the signalling peer's or the
    /// signalled media host.
    fn may_latch(p: &MediaParams, from: SocketAddr) -> bool {
        from.ip() == p.signalling_ip || from.ip() == p.neg.remote_rtp.ip()
    }

    /// 1/65536 s since the leg started (RTCP's middle 32 bits of NTP, RFC 3550 §6.4.1).
    fn now_16(&self, now: Instant) -> u64 {
        (now.saturating_duration_since(self.started).as_micros() as u64 * 65536) / 1_000_000
    }

    /// An RTP datagram from `from`: latches, counts and feeds the receiver statistics; the packet
    /// when it parses.
    pub(super) fn on_rtp<'a>(
        &mut self,
        p: &MediaParams,
        buf: &'a [u8],
        from: SocketAddr,
        now: Instant,
    ) -> Option<rtp::RtpPacket<'a>> {
        let pkt = rtp::parse(buf).ok()?;
        if !self.latched && RtpLeg::may_latch(p, from) {
            if from != self.rtp_to {
                tracing::info!(call_id = %self.call_id, signalled = %self.rtp_to, latched = %from, "symmetric RTP: latched");
            }
            self.rtp_to = from;
            self.latched = true;
        }
        self.received += 1;
        self.activity.touch(now);
        metrics::counter!("switchboard_sip_rtp_packets_total", "direction" => "received")
            .increment(1);
        let arrival =
            (now.saturating_duration_since(self.started).as_micros() as u64 * 8 / 1000) as u32;
        self.stats.on_rtp(pkt.ssrc, pkt.seq, pkt.timestamp, arrival);
        Some(pkt)
    }

    /// An RTCP datagram from `from`: latches its address, takes the sender reports of the source
    /// we receive (for our reports' LSR/DLSR).
    pub(super) fn on_rtcp(&mut self, p: &MediaParams, buf: &[u8], from: SocketAddr, now: Instant) {
        metrics::counter!("switchboard_sip_rtcp_packets_total", "direction" => "received")
            .increment(1);
        if !self.rtcp_latched && RtpLeg::may_latch(p, from) {
            self.rtcp_to = from;
            self.rtcp_latched = true;
        }
        let now_16 = self.now_16(now);
        for (ssrc, ntp) in rtcp::sender_reports(buf) {
            if ssrc == self.stats.ssrc {
                self.stats.on_sr(ntp, now_16);
            }
        }
    }

    /// Sends one RTP packet (payload type `pt`, timestamp `ts`, 8 kHz units).
    pub(super) async fn send_rtp(
        &mut self,
        sock: &UdpSocket,
        pt: u8,
        marker: bool,
        ts: u32,
        payload: &[u8],
        now: Instant,
    ) {
        self.seq = self.seq.wrapping_add(1);
        let out = rtp::write(marker, pt, self.seq, ts, self.ssrc, payload);
        if sock.send_to(&out, self.rtp_to).await.is_ok() {
            self.sent_packets = self.sent_packets.wrapping_add(1);
            self.sent_octets = self.sent_octets.wrapping_add(payload.len() as u32);
            self.last_ts = ts;
            self.last_send = Some(now);
            metrics::counter!("switchboard_sip_rtp_packets_total", "direction" => "sent")
                .increment(1);
        }
    }

    /// Our compound RTCP report: SR when we sent RTP (its RTP time extrapolated from the last
    /// packet at 8 kHz), else RR; report blocks when we received; SDES CNAME.
    pub(super) async fn send_rtcp(&mut self, sock: &UdpSocket, now: Instant) {
        let sender = self.last_send.map(|at| SenderInfo {
            ntp: ntp_now(),
            rtp_ts: self.last_ts.wrapping_add(
                (now.saturating_duration_since(at).as_millis() as u32).wrapping_mul(8),
            ),
            packets: self.sent_packets,
            octets: self.sent_octets,
        });
        let now_16 = self.now_16(now);
        let stats = (self.received > 0).then_some(&mut self.stats);
        let pkt = rtcp::compound(self.ssrc, sender, stats, now_16, "switchboard");
        if sock.send_to(&pkt, self.rtcp_to).await.is_ok() {
            metrics::counter!("switchboard_sip_rtcp_packets_total", "direction" => "sent")
                .increment(1);
        }
    }
}

struct Echo {
    call_id: String,
    p: MediaParams,
    leg: RtpLeg,
    restamp: rtp::Restamper,
    jitter: JitterBuffer<Queued>,
    rfc4733: Rfc4733Decoder,
    inband: ToneDetector,
}

/// Now as a 64-bit NTP timestamp (RFC 3550 §4).
pub(crate) fn ntp_now() -> u64 {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let secs = d.as_secs() + 2_208_988_800;
    (secs << 32) | ((u64::from(d.subsec_nanos()) << 32) / 1_000_000_000)
}

impl Echo {
    fn new(call_id: String, p: MediaParams, activity: Arc<RtpActivity>) -> Echo {
        Echo {
            leg: RtpLeg::new(&call_id, &p, activity),
            call_id,
            p,
            restamp: rtp::Restamper::new(rand::random::<u32>(), 160),
            jitter: JitterBuffer::new(JITTER_DEPTH),
            rfc4733: Rfc4733Decoder::default(),
            inband: ToneDetector::new(),
        }
    }

    fn apply(&mut self, p: MediaParams) {
        self.leg.renegotiated(&self.p, &p);
        tracing::info!(call_id = %self.call_id, send = p.send, direction = p.neg.answered.as_str(), "media updated");
        self.p = p;
    }

    async fn on_rtp(&mut self, rtp_sock: &UdpSocket, buf: &[u8], from: SocketAddr, now: Instant) {
        let Some(pkt) = self.leg.on_rtp(&self.p, buf, from, now) else {
            return;
        };
        let te = self.p.neg.telephone_event.as_ref().map(|t| t.0);
        if Some(pkt.pt) == te {
            for d in self.rfc4733.handle_packet(now, pkt.timestamp, pkt.payload) {
                report_dtmf(
                    &self.call_id,
                    d.event,
                    DtmfSource::Rfc4733,
                    Some(d.duration / 8),
                );
            }
        } else if pkt.pt == self.p.neg.pt && te.is_none() {
            let samples: Vec<i16> = match self.p.neg.codec {
                G711::Pcmu => pkt.payload.iter().map(|b| g711::ulaw_decode(*b)).collect(),
                G711::Pcma => pkt.payload.iter().map(|b| g711::alaw_decode(*b)).collect(),
            };
            for d in self.inband.push(&samples) {
                report_dtmf(&self.call_id, ToneEvent::Digit(d), DtmfSource::Inband, None);
            }
        }
        if Some(pkt.pt) != te && pkt.pt != self.p.neg.pt {
            return; // neither negotiated payload type: not echoed
        }
        let q = Queued {
            pt: pkt.pt,
            timestamp: pkt.timestamp,
            ssrc: pkt.ssrc,
            payload: pkt.payload.to_vec(),
        };
        self.jitter.push(now, pkt.seq, q);
        self.drain(rtp_sock, now).await;
    }

    async fn drain(&mut self, rtp_sock: &UdpSocket, now: Instant) {
        while let Some((_, q)) = self.jitter.pop(now) {
            let (ts, marker) = self.restamp.map(q.ssrc, q.timestamp);
            if !self.p.send {
                continue;
            }
            self.leg
                .send_rtp(rtp_sock, q.pt, marker, ts, &q.payload, now)
                .await;
        }
    }

    async fn run(
        mut self,
        rtp_sock: UdpSocket,
        rtcp_sock: UdpSocket,
        mut rx: mpsc::UnboundedReceiver<MediaParams>,
    ) {
        let mut buf = vec![0u8; 2048];
        let mut cbuf = vec![0u8; 2048];
        // The first report goes out after half the interval (RFC 3550 §6.2).
        let mut next_rtcp = Instant::now() + RTCP_INTERVAL / 2;
        loop {
            let mut wake = next_rtcp;
            for t in [self.jitter.poll_timeout(), self.rfc4733.poll_timeout()]
                .into_iter()
                .flatten()
            {
                wake = wake.min(t);
            }
            tokio::select! {
                r = rtp_sock.recv_from(&mut buf) => {
                    let Ok((n, from)) = r else { continue };
                    let now = Instant::now();
                    let data = buf[..n].to_vec();
                    self.on_rtp(&rtp_sock, &data, from, now).await;
                }
                r = rtcp_sock.recv_from(&mut cbuf) => {
                    let Ok((n, from)) = r else { continue };
                    self.leg.on_rtcp(&self.p, &cbuf[..n], from, Instant::now());
                }
                p = rx.recv() => match p {
                    Some(p) => self.apply(p),
                    None => break,
                },
                _ = tokio::time::sleep_until(wake.into()) => {
                    let now = Instant::now();
                    if let Some(d) = self.rfc4733.handle_timeout(now) {
                        report_dtmf(&self.call_id, d.event, DtmfSource::Rfc4733, Some(d.duration / 8));
                    }
                    self.drain(&rtp_sock, now).await;
                    if now >= next_rtcp {
                        self.leg.send_rtcp(&rtcp_sock, now).await;
                        next_rtcp = now + RTCP_INTERVAL;
                    }
                }
            }
        }
        tracing::debug!(call_id = %self.call_id, received = self.leg.received, sent = self.leg.sent_packets, "media session ended");
    }
}
