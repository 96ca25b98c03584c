//! The bridge between a SIP leg and a browser call (issue 5, phase 2).
//!
//! Signalling: each bridged SIP dialog is one server-driven connection of the call hub
//! ([`HubCommand::RegisterAgent`]) that speaks the WebSocket protocol: it starts the call with
//! `startCall`, hangs up with `hangUp`, forwards the caller's DTMF with `sendDtmf`, and hears
//! `callStateChanged` (Ringing -> 180, Connected -> 200, Disconnected -> final response or BYE) and
//! `dtmfReceived` (-> RFC 4733 to the phone). [`HubLeg`] owns that connection; dropping it hangs up
//! and unregisters, so a SIP dialog that ends in any way leaves nothing in the hub.
//!
//! Media: the leg is a media agent in the call's SFU room ([`AgentMedia`], DESIGN §5). RTP from the
//! phone goes through the jitter buffer, G.711 decoding and Opus encoding (libopus at 8 kHz), and is
//! published into the room; the Opus frames other members publish are decoded to 8 kHz, mixed every
//! 20 ms and sent to the phone as G.711 (`transcode.rs`).

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use super::media::{
    DtmfSource, JITTER_DEPTH, Lease, MediaParams, MediaSession, RTCP_INTERVAL, RtpActivity, RtpLeg,
    report_dtmf,
};
use super::transcode::{self, Downlink, FRAME_8K, Uplink};
use crate::proto::signal::{ClientMessage, Target};
use crate::proto::sip::dtmf::{self, Rfc4733Decoder, ToneEvent};
use crate::proto::sip::goertzel::{self, ToneDetector};
use crate::proto::sip::jitter::JitterBuffer;
use crate::service::calls::{ConnId, Hub, HubCommand, MediaParticipant, Outbound, OutboundTx};
use crate::sfu::{AgentAudio, AgentSink, ParticipantId};

/// The request id of a leg's `startCall` or `join`: its failure refuses the INVITE.
pub const START_REQUEST: &str = "sip-start";

/// Media participant ids of SIP legs start here, far above the hub's own (which count from 1).
pub const AGENT_PARTICIPANT_BASE: u64 = 1 << 62;

/// Duration of a DTMF digit played to the phone: 100 ms (800 samples at 8 kHz).
pub const DTMF_DURATION: u16 = 800;

/// Pause between two digits played to the phone, in 20 ms packet times.
const DTMF_GAP_PACKETS: u32 = 3;

/// Most 8 kHz frames queued per remote publisher before the oldest is dropped (200 ms).
const MIX_QUEUE: usize = 10;

/// What the bridge needs of the media plane: agents in SFU rooms (implemented in `app.rs` over
/// `media::MediaHandle`).
pub trait AgentMedia: Send + Sync + 'static {
    /// Adds agent `participant` to the SFU room `room` under `label`; room audio goes to `sink`.
    fn add_agent(&self, room: String, participant: ParticipantId, label: String, sink: AgentSink);
    /// Publishes one Opus frame of the agent (`timestamp` at 48 kHz, `level` RFC 6464 -dBov).
    fn agent_audio(&self, participant: ParticipantId, timestamp: u64, level: u8, opus: Vec<u8>);
}

/// The call hub and the media plane, for bridged routes.
#[derive(Clone)]
pub struct BridgeDeps {
    /// The call hub.
    pub hub: Hub,
    /// The SFU.
    pub media: Arc<dyn AgentMedia>,
}

impl std::fmt::Debug for BridgeDeps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BridgeDeps")
    }
}

/// An event of the hub for one SIP dialog (Call-ID), forwarded to the UA task.
#[derive(Debug)]
pub struct HubEvent {
    /// The SIP Call-ID.
    pub sip_call_id: String,
    /// What the hub sent the leg's connection.
    pub message: Outbound,
}

static NEXT_AGENT: AtomicU64 = AtomicU64::new(0);

/// A SIP dialog's connection to the call hub. Dropping it hangs the call up (when one was
/// started) and unregisters the connection.
pub struct HubLeg {
    hub: Hub,
    /// The hub connection id.
    pub conn: ConnId,
    /// The media agent's participant id.
    pub participant: MediaParticipant,
    /// `4:+E164` of the phone side.
    pub raw_id: String,
    /// The hub's call id, once known.
    pub call_id: Option<String>,
    forwarder: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for HubLeg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HubLeg")
            .field("conn", &self.conn)
            .field("participant", &self.participant)
            .field("call_id", &self.call_id)
            .finish()
    }
}

impl HubLeg {
    /// Registers a connection for the phone number `caller` (E.164 or digits) and starts a 1:1
    /// call to `callee`; hub events come back on `events` tagged with `sip_call_id`.
    pub fn start_call(
        hub: &Hub,
        sip_call_id: &str,
        caller: &str,
        callee: &str,
        events: mpsc::UnboundedSender<HubEvent>,
    ) -> HubLeg {
        let leg = HubLeg::register(hub, sip_call_id, caller, events);
        hub.send(HubCommand::Client {
            conn: leg.conn,
            msg: ClientMessage::StartCall {
                id: json!(START_REQUEST),
                targets: vec![Target {
                    communication_user_id: callee.to_string(),
                    phone_number: None,
                }],
                video: false,
            },
        });
        leg
    }

    /// Registers a connection for the phone number `caller` and joins the group call `group_id`
    /// (a UUID; the call is created when nobody is in it yet), as a browser's `join` would. The
    /// hub answers with `Connected` at once (or a failed response to [`START_REQUEST`]).
    pub fn join_group(
        hub: &Hub,
        sip_call_id: &str,
        caller: &str,
        group_id: &str,
        events: mpsc::UnboundedSender<HubEvent>,
    ) -> HubLeg {
        let leg = HubLeg::register(hub, sip_call_id, caller, events);
        hub.send(HubCommand::Client {
            conn: leg.conn,
            msg: ClientMessage::Join {
                id: json!(START_REQUEST),
                group_id: group_id.to_string(),
                video: false,
            },
        });
        leg
    }

    /// A server-driven hub connection (`RegisterAgent`) whose messages are forwarded to `events`.
    fn register(
        hub: &Hub,
        sip_call_id: &str,
        caller: &str,
        events: mpsc::UnboundedSender<HubEvent>,
    ) -> HubLeg {
        let conn = hub.next_conn_id();
        let participant = AGENT_PARTICIPANT_BASE + NEXT_AGENT.fetch_add(1, Ordering::Relaxed);
        let raw_id = format!("4:{}", e164(caller));
        let (out, mut rx, _overflow) = OutboundTx::channel();
        let id = sip_call_id.to_string();
        let forwarder = tokio::spawn(async move {
            while let Some(message) = rx.recv().await {
                let ev = HubEvent {
                    sip_call_id: id.clone(),
                    message,
                };
                if events.send(ev).is_err() {
                    break;
                }
            }
        });
        hub.send(HubCommand::RegisterAgent {
            conn,
            identity: raw_id.clone(),
            display_name: None,
            participant,
            out,
        });
        HubLeg {
            hub: hub.clone(),
            conn,
            participant,
            raw_id,
            call_id: None,
            forwarder,
        }
    }

    /// Forwards a DTMF digit the phone sent to the call (`sendDtmf`).
    pub fn send_dtmf(&self, digit: char) {
        send_dtmf(&self.hub, self.conn, self.call_id.as_deref(), digit);
    }
}

fn send_dtmf(hub: &Hub, conn: ConnId, call_id: Option<&str>, digit: char) {
    let Some(call_id) = call_id else { return };
    hub.send(HubCommand::Client {
        conn,
        msg: ClientMessage::SendDtmf {
            id: json!("sip-dtmf"),
            call_id: call_id.to_string(),
            tones: digit.to_string(),
        },
    });
}

impl Drop for HubLeg {
    fn drop(&mut self) {
        if let Some(call_id) = self.call_id.take() {
            self.hub.send(HubCommand::Client {
                conn: self.conn,
                msg: ClientMessage::HangUp {
                    id: json!("sip-hangup"),
                    call_id,
                    for_everyone: false,
                },
            });
        }
        self.hub.send(HubCommand::Unregister { conn: self.conn });
        self.forwarder.abort();
    }
}

/// `+E164` from a From user part (`+15551230000`, `15551230000`); other strings are kept as
/// they are, behind a `+`.
pub fn e164(user: &str) -> String {
    let digits: String = user.chars().filter(char::is_ascii_digit).collect();
    if digits.is_empty() {
        "+0".to_string()
    } else {
        format!("+{digits}")
    }
}

/// Where the bridge media task publishes and how it reaches the hub.
pub struct BridgeMedia {
    /// The SFU.
    pub media: Arc<dyn AgentMedia>,
    /// The hub, for DTMF from the phone.
    pub hub: Hub,
    /// The leg's hub connection.
    pub conn: ConnId,
    /// The hub call id (the SFU room).
    pub call_id: String,
    /// The agent's participant id.
    pub participant: MediaParticipant,
    /// Its label in the room (`4:+E164`).
    pub label: String,
}

/// Starts the media of a bridged call on an allocated socket pair: adds the agent to the room and
/// runs the RTP side.
///
/// # Errors
/// Socket registration with tokio failing.
pub fn start_media(
    sip_call_id: String,
    sockets: (std::net::UdpSocket, std::net::UdpSocket, Lease),
    params: MediaParams,
    link: BridgeMedia,
) -> std::io::Result<MediaSession> {
    let (rtp_std, rtcp_std, lease) = sockets;
    let port = rtp_std.local_addr()?.port();
    rtp_std.set_nonblocking(true)?;
    rtcp_std.set_nonblocking(true)?;
    let rtp_sock = UdpSocket::from_std(rtp_std)?;
    let rtcp_sock = UdpSocket::from_std(rtcp_std)?;
    let (tx, rx) = mpsc::unbounded_channel();
    let (dtmf_tx, dtmf_rx) = mpsc::unbounded_channel();
    // Bounded: a stalled task loses audio rather than memory. 256 frames are 5 s of one speaker.
    let (audio_tx, audio_rx) = mpsc::channel::<AgentAudio>(256);
    link.media.add_agent(
        link.call_id.clone(),
        ParticipantId(link.participant),
        link.label.clone(),
        AgentSink::new(move |a| {
            let _ = audio_tx.try_send(a);
        }),
    );
    let activity = RtpActivity::new();
    let leg_activity = activity.clone();
    let task = tokio::spawn(async move {
        let _lease = lease;
        match Bridge::new(sip_call_id.clone(), params, link, leg_activity) {
            Ok(b) => b.run(rtp_sock, rtcp_sock, rx, dtmf_rx, audio_rx).await,
            Err(e) => {
                tracing::warn!(call_id = %sip_call_id, error = %e, "bridge codecs unavailable: no media")
            }
        }
    });
    Ok(MediaSession::from_parts(port, activity, tx, task, dtmf_tx))
}

struct Bridge {
    call_id: String,
    p: MediaParams,
    link: BridgeMedia,
    leg: RtpLeg,
    out_ts: u32,
    /// The next packet starts a talk spurt (RFC 3551 §4.1: marker bit).
    marker: bool,
    jitter: JitterBuffer<Vec<u8>>,
    rfc4733: Rfc4733Decoder,
    inband: ToneDetector,
    uplink: Uplink,
    /// 48 kHz timestamp of the next Opus frame published.
    opus_ts: u64,
    published: u64,
    downlinks: HashMap<ParticipantId, (Downlink, VecDeque<Vec<f32>>)>,
    dtmf_queue: VecDeque<char>,
    dtmf_packets: VecDeque<dtmf::EventPacket>,
    /// In-band DTMF to play (20 ms frames of 8 kHz samples) when no telephone-event was negotiated.
    inband_out: VecDeque<Vec<i16>>,
    dtmf_gap: u32,
}

impl Bridge {
    fn new(
        call_id: String,
        p: MediaParams,
        link: BridgeMedia,
        activity: std::sync::Arc<RtpActivity>,
    ) -> Result<Bridge, transcode::TranscodeError> {
        let uplink = Uplink::new(p.neg.codec)?;
        Ok(Bridge {
            leg: RtpLeg::new(&call_id, &p, activity),
            call_id,
            p,
            link,
            out_ts: rand::random::<u32>(),
            marker: true,
            jitter: JitterBuffer::new(JITTER_DEPTH),
            rfc4733: Rfc4733Decoder::default(),
            inband: ToneDetector::new(),
            uplink,
            opus_ts: u64::from(rand::random::<u16>()),
            published: 0,
            downlinks: HashMap::new(),
            dtmf_queue: VecDeque::new(),
            dtmf_packets: VecDeque::new(),
            inband_out: VecDeque::new(),
            dtmf_gap: 0,
        })
    }

    fn digit(&self, event: ToneEvent, source: DtmfSource, duration_ms: Option<u32>) {
        report_dtmf(&self.call_id, event, source, duration_ms);
        if let ToneEvent::Digit(d) = event {
            send_dtmf(&self.link.hub, self.link.conn, Some(&self.link.call_id), d);
        }
    }

    fn on_rtp(&mut self, buf: &[u8], from: SocketAddr, now: Instant) {
        let Some(pkt) = self.leg.on_rtp(&self.p, buf, from, now) else {
            return;
        };
        let te = self.p.neg.telephone_event.as_ref().map(|t| t.0);
        if Some(pkt.pt) == te {
            for d in self.rfc4733.handle_packet(now, pkt.timestamp, pkt.payload) {
                self.digit(d.event, DtmfSource::Rfc4733, Some(d.duration / 8));
            }
            return;
        }
        if pkt.pt != self.p.neg.pt {
            return;
        }
        if te.is_none() {
            let samples: Vec<i16> = match self.p.neg.codec {
                crate::proto::sip::sdp::G711::Pcmu => pkt
                    .payload
                    .iter()
                    .map(|b| crate::proto::sip::g711::ulaw_decode(*b))
                    .collect(),
                crate::proto::sip::sdp::G711::Pcma => pkt
                    .payload
                    .iter()
                    .map(|b| crate::proto::sip::g711::alaw_decode(*b))
                    .collect(),
            };
            for d in self.inband.push(&samples) {
                self.digit(ToneEvent::Digit(d), DtmfSource::Inband, None);
            }
        }
        self.jitter.push(now, pkt.seq, pkt.payload.to_vec());
        self.drain_jitter(now);
    }

    /// Phone -> room: what the jitter buffer releases is transcoded and published.
    fn drain_jitter(&mut self, now: Instant) {
        while let Some((_, payload)) = self.jitter.pop(now) {
            let frames = match self.uplink.push_g711(&payload) {
                Ok(f) => f,
                Err(e) => {
                    tracing::debug!(call_id = %self.call_id, error = %e, "uplink transcoding failed");
                    continue;
                }
            };
            for (opus, level) in frames {
                self.link.media.agent_audio(
                    ParticipantId(self.link.participant),
                    self.opus_ts,
                    level,
                    opus,
                );
                self.opus_ts += transcode::FRAME_48K as u64;
                self.published += 1;
                metrics::counter!("switchboard_sip_opus_frames_total", "direction" => "encoded")
                    .increment(1);
            }
        }
    }

    /// Room -> phone: one Opus frame of a room member, decoded and queued for the mixer.
    fn on_room_audio(&mut self, a: AgentAudio) {
        let (down, queue) = match self.downlinks.entry(a.from) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => match Downlink::new() {
                Ok(d) => v.insert((d, VecDeque::new())),
                Err(e) => {
                    tracing::debug!(call_id = %self.call_id, error = %e, "no Opus decoder");
                    return;
                }
            },
        };
        match down.push_opus(&a.data) {
            Ok(frames) => {
                metrics::counter!("switchboard_sip_opus_frames_total", "direction" => "decoded")
                    .increment(1);
                for f in frames {
                    if queue.len() >= MIX_QUEUE {
                        queue.pop_front();
                    }
                    queue.push_back(f);
                }
            }
            Err(e) => {
                tracing::debug!(call_id = %self.call_id, from = %a.from, error = %e, "Opus frame not decodable: dropped")
            }
        }
    }

    async fn send_rtp(&mut self, sock: &UdpSocket, pt: u8, marker: bool, ts: u32, payload: &[u8]) {
        self.leg
            .send_rtp(sock, pt, marker, ts, payload, Instant::now())
            .await;
    }

    /// Every 20 ms: a DTMF event packet when one is being played, else the room's mixed audio.
    /// A digit for a phone that negotiated no telephone-event: 100 ms of its DTMF tone, then 60 ms
    /// of silence, played in the audio instead of the room's mix.
    fn queue_inband(&mut self, d: char) {
        let Some(mut samples) = goertzel::tone(d, 100) else {
            return;
        };
        samples.extend(std::iter::repeat_n(0, 3 * FRAME_8K));
        for frame in samples.chunks(FRAME_8K) {
            self.inband_out.push_back(frame.to_vec());
        }
        tracing::info!(call_id = %self.call_id, digit = %d, "DTMF to the phone (in-band: no telephone-event negotiated)");
    }

    async fn tick(&mut self, sock: &UdpSocket) {
        self.out_ts = self.out_ts.wrapping_add(FRAME_8K as u32);
        if !self.p.send {
            for (_, q) in self.downlinks.values_mut() {
                q.clear();
            }
            return;
        }
        if let Some(frame) = self.inband_out.pop_front() {
            let payload: Vec<u8> = frame
                .iter()
                .map(|s| match self.p.neg.codec {
                    crate::proto::sip::sdp::G711::Pcmu => crate::proto::sip::g711::ulaw_encode(*s),
                    crate::proto::sip::sdp::G711::Pcma => crate::proto::sip::g711::alaw_encode(*s),
                })
                .collect();
            for (_, q) in self.downlinks.values_mut() {
                q.pop_front();
            }
            let (pt, marker, ts) = (self.p.neg.pt, self.marker, self.out_ts);
            self.marker = false;
            self.send_rtp(sock, pt, marker, ts, &payload).await;
            return;
        }
        if self.dtmf_packets.is_empty() && self.dtmf_gap > 0 {
            self.dtmf_gap -= 1;
        }
        if self.dtmf_packets.is_empty()
            && self.dtmf_gap == 0
            && let Some(d) = self.dtmf_queue.pop_front()
            && let (Some(code), Some((_, _))) = (
                dtmf::code_from_digit(d),
                self.p.neg.telephone_event.as_ref(),
            )
        {
            // RFC 4733 §2.5.1: one timestamp for the whole event, the one of its start.
            self.dtmf_packets.extend(dtmf::encode_event(
                code,
                self.out_ts,
                DTMF_DURATION,
                FRAME_8K as u16,
                10,
            ));
            tracing::info!(call_id = %self.call_id, digit = %d, "DTMF to the phone (RFC 4733)");
        }
        if let Some((pt, _)) = self.p.neg.telephone_event.clone()
            && !self.dtmf_packets.is_empty()
        {
            // The three end packets go together (RFC 4733 §2.5.1.4 allows back to back).
            let end_run = self.dtmf_packets.len() <= 3;
            let n = if end_run { self.dtmf_packets.len() } else { 1 };
            for _ in 0..n {
                if let Some((marker, ts, payload)) = self.dtmf_packets.pop_front() {
                    self.send_rtp(sock, pt, marker, ts, &payload).await;
                }
            }
            for (_, q) in self.downlinks.values_mut() {
                q.pop_front();
            }
            if self.dtmf_packets.is_empty() {
                self.dtmf_gap = DTMF_GAP_PACKETS;
                self.marker = true;
            }
            return;
        }
        let frames: Vec<Vec<f32>> = self
            .downlinks
            .values_mut()
            .filter_map(|(_, q)| q.pop_front())
            .collect();
        if frames.is_empty() {
            self.marker = true;
            return;
        }
        let payload = transcode::mix_to_g711(self.p.neg.codec, &frames);
        let (pt, marker, ts) = (self.p.neg.pt, self.marker, self.out_ts);
        self.marker = false;
        self.send_rtp(sock, pt, marker, ts, &payload).await;
    }

    async fn run(
        mut self,
        rtp_sock: UdpSocket,
        rtcp_sock: UdpSocket,
        mut rx: mpsc::UnboundedReceiver<MediaParams>,
        mut dtmf_rx: mpsc::UnboundedReceiver<char>,
        mut audio_rx: mpsc::Receiver<AgentAudio>,
    ) {
        let mut buf = vec![0u8; 2048];
        let mut cbuf = vec![0u8; 2048];
        let mut next_rtcp = Instant::now() + RTCP_INTERVAL / 2;
        let mut ptime = tokio::time::interval(Duration::from_millis(20));
        ptime.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        tracing::info!(call_id = %self.call_id, room = %self.link.call_id, participant = self.link.participant, codec = self.p.neg.codec.name(), "bridge media started");
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
                    let data = buf[..n].to_vec();
                    self.on_rtp(&data, from, Instant::now());
                }
                r = rtcp_sock.recv_from(&mut cbuf) => {
                    let Ok((n, from)) = r else { continue };
                    self.leg.on_rtcp(&self.p, &cbuf[..n], from, Instant::now());
                }
                p = rx.recv() => match p {
                    Some(p) => {
                        self.leg.renegotiated(&self.p, &p);
                        tracing::info!(call_id = %self.call_id, send = p.send, direction = p.neg.answered.as_str(), "bridge media updated");
                        self.p = p;
                    }
                    None => break,
                },
                d = dtmf_rx.recv() => {
                    if let Some(d) = d {
                        if self.p.neg.telephone_event.is_none() {
                            self.queue_inband(d);
                        } else {
                            self.dtmf_queue.push_back(d);
                        }
                    }
                }
                a = audio_rx.recv() => {
                    if let Some(a) = a {
                        self.on_room_audio(a);
                    }
                }
                _ = ptime.tick() => self.tick(&rtp_sock).await,
                _ = tokio::time::sleep_until(wake.into()) => {
                    let now = Instant::now();
                    if let Some(d) = self.rfc4733.handle_timeout(now) {
                        self.digit(d.event, DtmfSource::Rfc4733, Some(d.duration / 8));
                    }
                    self.drain_jitter(now);
                    if now >= next_rtcp {
                        self.leg.send_rtcp(&rtcp_sock, now).await;
                        next_rtcp = now + RTCP_INTERVAL;
                    }
                }
            }
        }
        tracing::info!(call_id = %self.call_id, received = self.leg.received, published = self.published, sent = self.leg.sent_packets, "bridge media ended");
    }
}
