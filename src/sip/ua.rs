//! The gateway's user agent server: one task that owns every dialog. It checks each message (our strict
//! checks first, then rsipstack's parser for the typed Request-URI), applies the trunk ACL and number routes, and
//! runs the server side of RFC 3261 transactions: 100 Trying, 180/200 for INVITE with the 2xx (or 487)
//! retransmitted on UDP until ACK (§13.3.1.4, §17.2.1, timers G/H), final responses of non-INVITE requests
//! replayed for retransmissions (§17.2.2, timer J), CANCEL (§9.2, including the CANCEL/200 race), BYE, re-INVITE
//! hold/resume (RFC 3264 §8.4), INFO DTMF (RFC 6086 with `application/dtmf-relay`), OPTIONS (§11.2),
//! session timers (RFC 4028: 422 for short intervals, refreshes answered by re-INVITE or UPDATE, our
//! own refreshes by UPDATE or re-INVITE at half the interval, BYE when the session expires),
//! 481 for unknown dialogs, 501 for methods we do not implement, 400 for malformed requests.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::bridge::{self, BridgeDeps, BridgeMedia, HubEvent, HubLeg};
use super::digest;
use super::media::{DtmfSource, MediaParams, MediaSession, PortPool, report_dtmf};
use super::outbound::{self, OutCall, OutState};
use super::transport::{self, Peer, Received};
use crate::proto::signal::ServerMessage;
use crate::proto::sip::dtmf;
use crate::proto::sip::keepalive::{Health, KeepAlive};
use crate::proto::sip::message::{self, Message, ReplyBase, StartLine};
use crate::proto::sip::route::{Decision, RouteTarget, Router, TrunkTransport};
use crate::proto::sip::sdp::{self, Negotiated, SessionDescription};
use crate::proto::sip::timer::{self, SessionTimer, UasDecision};
use crate::service::calls::{DialRequest, HubCommand, Outbound};

/// RFC 3261 T1: RTT estimate, first retransmission interval.
pub const T1: Duration = Duration::from_millis(500);
/// RFC 3261 T2: longest retransmission interval.
pub const T2: Duration = Duration::from_secs(4);
/// Methods this UA implements (the `Allow` header).
pub const ALLOW: &str = "INVITE, ACK, CANCEL, BYE, OPTIONS, INFO, UPDATE";
/// Extensions this UA supports (the `Supported` header): session timers (RFC 4028).
pub const SUPPORTED: &str = "timer";
const USER_AGENT: &str = concat!("switchboard/", env!("CARGO_PKG_VERSION"));

/// Settings of the UA.
#[derive(Debug, Clone)]
pub struct UaSettings {
    /// Trunks and numbers.
    pub router: Router,
    /// Address media sockets bind to.
    pub media_bind: IpAddr,
    /// Address put in SDP `c=` and Contact when `media_bind` is a wildcard (public IP of a 1:1 NAT).
    pub advertise: Option<IpAddr>,
    /// SIP port (for Contact).
    pub sip_port: u16,
    /// Trunks probed with OPTIONS: name, resolved address, interval.
    pub keepalive: Vec<(String, std::net::SocketAddr, Duration)>,
    /// The call hub and the SFU, for numbers routed to a `user` (without them such numbers answer 480).
    pub bridge: Option<BridgeDeps>,
    /// No RTP from the phone for this long ends an answered call with BYE (zero: never).
    pub rtp_timeout: Duration,
}

struct Probe {
    trunk: String,
    addr: std::net::SocketAddr,
    state: KeepAlive,
}

#[derive(Debug)]
struct Retransmit {
    bytes: Vec<u8>,
    next: Instant,
    interval: Duration,
    deadline: Instant,
}

impl Retransmit {
    fn new(bytes: Vec<u8>, now: Instant) -> Retransmit {
        Retransmit {
            bytes,
            next: now + T1,
            interval: T1,
            deadline: now + 64 * T1,
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum State {
    /// 180 sent; answering at the instant.
    Ringing(Instant),
    /// Bridged to a browser call that has not been answered yet (180 follows the hub's `Ringing`).
    Proceeding,
    /// 200 sent (maybe not yet ACKed).
    Answered,
    /// Final non-2xx sent (487 after CANCEL); waiting for its ACK only.
    Ended,
}

struct Call {
    local_tag: String,
    peer: Peer,
    /// Response base of the INVITE that is being processed (initial or re-INVITE).
    base: ReplyBase,
    invite_cseq: u32,
    /// Highest CSeq seen from the peer in this dialog.
    remote_cseq: u32,
    state: State,
    /// The last response to the current INVITE, for retransmitted INVITEs.
    last_invite_response: Vec<u8>,
    /// 2xx or 487 being retransmitted until ACK (UDP only).
    retransmit: Option<Retransmit>,
    offer: SessionDescription,
    neg: Negotiated,
    media: Option<MediaSession>,
    session_id: u64,
    sdp_version: u64,
    trunk: String,
    /// The browser call this dialog is bridged to (routes to a `user`).
    leg: Option<HubLeg>,
    /// Record-Route values of the INVITE: our route set for requests we send (RFC 3261 §12.1.1).
    record_route: Vec<String>,
    /// The INVITE's Contact URI: where our in-dialog requests go (remote target).
    remote_target: String,
    /// Our CSeq for requests we send in the dialog.
    local_cseq: u32,
    /// The session timer (RFC 4028), when the INVITE asked for one.
    timer: Option<SessionTimer>,
    /// Whether the caller's INVITE listed UPDATE in `Allow` (our refreshes use it, else re-INVITE).
    peer_allows_update: bool,
    /// Our session refresh in flight.
    refresh: Option<PendingRefresh>,
    /// The ACK of our last refreshing re-INVITE's 2xx (CSeq, bytes), repeated for its retransmissions.
    refresh_ack: Option<(u32, Vec<u8>)>,
}

/// A session refresh request we sent (RFC 4028 §10), retransmitted over UDP until a response.
struct PendingRefresh {
    method: &'static str,
    cseq: u32,
    branch: String,
    /// Retransmissions (UDP) and the transaction timeout (64*T1, both transports).
    retransmit: Retransmit,
    /// No more retransmissions after a provisional response (INVITE).
    provisional: bool,
}

impl Call {
    /// Before the final response to the initial INVITE.
    fn early(&self) -> bool {
        matches!(self.state, State::Ringing(_) | State::Proceeding)
    }
}

/// A BYE we sent, retransmitted over UDP until a response (RFC 3261 §17.1.2.2, timer E).
struct PendingBye {
    peer: Peer,
    retransmit: Retransmit,
}

/// A TCP connect to a trunk finished: (SIP Call-ID, the trunk's address, the peer or why not).
type Connected = (String, std::net::SocketAddr, Result<Peer, String>);

/// The UA: every dialog of the gateway.
pub struct Ua {
    settings: UaSettings,
    udp: Arc<UdpSocket>,
    ports: Arc<PortPool>,
    calls: HashMap<String, Call>,
    /// Final responses of non-INVITE transactions, replayed for retransmissions: (Call-ID, CSeq, method).
    finals: HashMap<(String, u32, String), (Vec<u8>, Instant)>,
    probes: Vec<Probe>,
    /// BYEs we sent, by Call-ID.
    byes: HashMap<String, PendingBye>,
    hub_tx: mpsc::UnboundedSender<HubEvent>,
    hub_rx: Option<mpsc::UnboundedReceiver<HubEvent>>,
    /// Outbound calls (browser -> phone), by SIP Call-ID.
    outs: HashMap<String, OutCall>,
    /// Our 2xx to a trunk's re-INVITE in an outbound call, by Call-ID: (its CSeq, the peer, the
    /// retransmission state until the ACK).
    out_reinvite_oks: HashMap<String, (u32, Peer, Retransmit)>,
    dial_rx: Option<mpsc::UnboundedReceiver<DialRequest>>,
    /// Where messages of connections we open go (the transports' channel to this UA), and the
    /// gateway's stop token; set by [`Ua::with_streams`]. Without it TCP trunks are not dialled.
    streams: Option<(mpsc::Sender<Received>, CancellationToken)>,
    /// Outcomes of TCP connects to trunks: (SIP Call-ID, the trunk's address, the peer or why not).
    connected_tx: mpsc::UnboundedSender<Connected>,
    connected_rx: Option<mpsc::UnboundedReceiver<Connected>>,
}

fn tag() -> String {
    format!("sb{:016x}", rand::random::<u64>())
}

fn class(code: u16) -> &'static str {
    match code / 100 {
        1 => "1xx",
        2 => "2xx",
        3 => "3xx",
        4 => "4xx",
        5 => "5xx",
        _ => "6xx",
    }
}

impl Ua {
    /// A UA answering on `udp` (TCP replies go through each connection's writer).
    pub fn new(settings: UaSettings, udp: Arc<UdpSocket>, ports: Arc<PortPool>) -> Ua {
        let now = Instant::now();
        let probes = settings
            .keepalive
            .iter()
            .enumerate()
            .map(|(i, (trunk, addr, every))| Probe {
                trunk: trunk.clone(),
                addr: *addr,
                state: KeepAlive::new(
                    now,
                    *every,
                    format!("sbka{i}x{:08x}", rand::random::<u32>()),
                ),
            })
            .collect();
        let (hub_tx, hub_rx) = mpsc::unbounded_channel();
        let (dial_tx, dial_rx) = mpsc::unbounded_channel();
        let (connected_tx, connected_rx) = mpsc::unbounded_channel();
        if let Some(b) = &settings.bridge {
            b.hub.send(HubCommand::SetDialer(dial_tx));
        }
        Ua {
            outs: HashMap::new(),
            out_reinvite_oks: HashMap::new(),
            dial_rx: Some(dial_rx),
            streams: None,
            connected_tx,
            connected_rx: Some(connected_rx),
            probes,
            byes: HashMap::new(),
            hub_tx,
            hub_rx: Some(hub_rx),
            settings,
            udp,
            ports,
            calls: HashMap::new(),
            finals: HashMap::new(),
        }
    }

    /// Runs until cancelled: messages from the transports, timers every 50 ms.
    /// Lets the UA open TCP connections to trunks: what they receive goes to `to_ua` (the channel
    /// the transports feed [`Ua::run`]), and they close with `stop`.
    pub fn with_streams(mut self, to_ua: mpsc::Sender<Received>, stop: CancellationToken) -> Ua {
        self.streams = Some((to_ua, stop));
        self
    }

    pub async fn run(mut self, mut rx: mpsc::Receiver<Received>, stop: CancellationToken) {
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let (Some(mut hub_rx), Some(mut dial_rx), Some(mut connected_rx)) = (
            self.hub_rx.take(),
            self.dial_rx.take(),
            self.connected_rx.take(),
        ) else {
            return;
        };
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                m = rx.recv() => match m {
                    Some(r) => self.handle(r.data, r.peer).await,
                    None => break,
                },
                Some(ev) = hub_rx.recv() => self.on_hub_event(ev).await,
                Some(req) = dial_rx.recv() => self.dial(req).await,
                Some((id, addr, r)) = connected_rx.recv() => self.out_connected(&id, addr, r).await,
                _ = tick.tick() => self.handle_timers(Instant::now()).await,
            }
        }
        self.calls.clear();
    }

    async fn send(&self, peer: &Peer, bytes: &[u8]) {
        peer.send(&self.udp, bytes).await;
    }

    async fn reply(
        &self,
        peer: &Peer,
        base: &ReplyBase,
        (code, reason): (u16, &str),
        to_tag: Option<&str>,
        extra: &[(&str, String)],
        body: &[u8],
    ) -> Vec<u8> {
        let mut headers: Vec<(&str, String)> = vec![("Server", USER_AGENT.to_string())];
        headers.extend(extra.iter().cloned());
        let bytes = base.response(code, reason, to_tag, &headers, body);
        metrics::counter!("switchboard_sip_responses_total", "class" => class(code)).increment(1);
        tracing::debug!(peer = %peer.addr(), code, call_id = %base.call_id, "SIP response");
        self.send(peer, &bytes).await;
        bytes
    }

    /// Handles one received message; never panics on its content.
    pub async fn handle(&mut self, data: Vec<u8>, peer: Peer) {
        let msg = match message::parse(&data) {
            Ok(m) => m,
            Err(e) => {
                self.malformed(&data, None, &peer, &e.to_string()).await;
                return;
            }
        };
        let (method, request_uri) = match &msg.start {
            StartLine::Response { code, .. } => {
                // The only client transactions are keepalive probes; other responses are dropped (§18.1.2).
                let call_id = msg.call_id().unwrap_or("");
                if let Some(p) = self.probes.iter_mut().find(|p| p.state.owns(call_id)) {
                    if p.state.handle_response(call_id) == Some(Health::Up) {
                        tracing::info!(trunk = %p.trunk, addr = %p.addr, code, "trunk up (answers OPTIONS)");
                        metrics::gauge!("switchboard_sip_trunk_up", "trunk" => p.trunk.clone())
                            .set(1.0);
                    }
                    return;
                }
                if let Ok((cseq, m)) = msg.cseq()
                    && m == "INVITE"
                    && let Some(out) = self.outs.get(call_id)
                {
                    // Only our INVITE's transaction (top Via branch) from the trunk it went to (RFC 3261
                    // §17.1.3): a forged response from elsewhere must not answer the call.
                    if top_branch(&msg).as_deref() != Some(out.branch.as_str())
                        || peer.addr() != out.peer.addr()
                    {
                        tracing::info!(call_id, peer = %peer.addr(), code, "response to an outbound INVITE from another transaction or source: dropped");
                        return;
                    }
                    let call_id = call_id.to_string();
                    self.on_out_response(&msg, *code, &call_id, cseq).await;
                    return;
                }
                if let Ok((cseq, m)) = msg.cseq()
                    && let Some(p) = self.calls.get(call_id).and_then(|c| c.refresh.as_ref())
                    && p.cseq == cseq
                    && p.method == m
                {
                    let call_id = call_id.to_string();
                    self.on_refresh_response(&msg, *code, &call_id).await;
                    return;
                }
                if let Ok((cseq, m)) = msg.cseq()
                    && m == "INVITE"
                    && (200..300).contains(code)
                    && let Some((peer_, ack)) = self.calls.get(call_id).and_then(|c| {
                        let (n, ack) = c.refresh_ack.as_ref()?;
                        (*n == cseq).then(|| (c.peer.clone(), ack.clone()))
                    })
                {
                    // A retransmitted 2xx of our refreshing re-INVITE: the same ACK again (§13.2.2.4).
                    self.send(&peer_, &ack).await;
                    return;
                }
                if *code >= 200 && self.byes.remove(call_id).is_some() {
                    tracing::debug!(call_id, code, "BYE answered");
                    return;
                }
                tracing::debug!(peer = %peer.addr(), code, "SIP response without client transaction: dropped");
                return;
            }
            StartLine::Request { method, uri } => (method.clone(), uri.clone()),
        };
        metrics::counter!("switchboard_sip_requests_total", "method" => metric_method(&method))
            .increment(1);
        if let Err(e) = msg.validate_request() {
            self.malformed(&data, Some(&msg), &peer, &e.to_string())
                .await;
            return;
        }
        if !ALLOW.split(", ").any(|m| m == method) {
            if method != "ACK" {
                let base = ReplyBase::of(&msg);
                self.reply(
                    &peer,
                    &base,
                    (501, "Not Implemented"),
                    Some(&tag()),
                    &[("Allow", ALLOW.into())],
                    b"",
                )
                .await;
            }
            return;
        }
        // Requests inside dialogs (and CANCEL/ACK/BYE...) come from trusted trunks only; a dialog-creating
        // INVITE gets its 403 from the router below, OPTIONS is answered to anyone (it carries no call).
        let in_dialog_or_not_invite = method != "INVITE" || msg.to_tag().is_some();
        if in_dialog_or_not_invite
            && method != "OPTIONS"
            && self.settings.router.trunk_for(peer.addr().ip()).is_none()
        {
            tracing::debug!(peer = %peer.addr(), method = %method, "request from an address no trunk allows: 403");
            metrics::counter!("switchboard_sip_rejected_total", "reason" => "forbidden")
                .increment(1);
            if method != "ACK" {
                let base = ReplyBase::of(&msg);
                self.reply(&peer, &base, (403, "Forbidden"), Some(&tag()), &[], b"")
                    .await;
            }
            return;
        }
        // The stack underneath types the Request-URI. It keeps %-escapes in the user part, so compare after
        // unescaping (RFC 3261 §19.1.4, case C003).
        let dialled = match rsipstack::sip::SipMessage::try_from(data.as_slice()) {
            // A `tel:` URI has no user part for rsipstack (the number is its host): read it ourselves.
            Ok(rsipstack::sip::SipMessage::Request(req)) => req
                .uri
                .user()
                .map(message::unescape)
                .or_else(|| message::uri_user(&request_uri)),
            Ok(_) => None,
            Err(e) => {
                self.malformed(&data, Some(&msg), &peer, &format!("rsipstack: {e}"))
                    .await;
                return;
            }
        };
        let Some(call_id) = msg.call_id().map(str::to_string) else {
            return;
        };
        let Ok((cseq, _)) = msg.cseq() else { return };
        let base = ReplyBase::of(&msg);
        match method.as_str() {
            "INVITE" | "BYE" | "INFO" | "UPDATE"
                if self.outs.contains_key(&call_id) && !self.out_dialog_matches(&msg, &call_id) =>
            {
                // A Call-ID of one of our outbound calls with tags of no dialog of ours (a new INVITE reusing
                // it, a forged request): not this dialog (RFC 3261 §12.2.2).
                let status = if method == "INVITE" && msg.to_tag().is_none() {
                    (400, "Bad Request")
                } else {
                    (481, "Call/Transaction Does Not Exist")
                };
                self.reply(&peer, &base, status, Some(&tag()), &[], b"")
                    .await;
            }
            "INVITE" if self.outs.contains_key(&call_id) => {
                self.out_reinvite(&msg, base, peer, &call_id, cseq).await
            }
            "INVITE" => {
                self.invite(msg, base, peer, call_id, cseq, dialled.unwrap_or_default())
                    .await
            }
            "ACK"
                if self
                    .out_reinvite_oks
                    .get(&call_id)
                    .is_some_and(|(n, _, _)| *n == cseq) =>
            {
                self.out_reinvite_oks.remove(&call_id);
            }
            "ACK" => self.ack(&call_id, cseq),
            "CANCEL" => self.cancel(base, peer, &call_id, cseq).await,
            "BYE" | "INFO" if self.outs.contains_key(&call_id) => {
                self.out_in_dialog(&msg, base, peer, &method, &call_id)
                    .await
            }
            "BYE" | "INFO" => {
                self.in_dialog(&msg, base, peer, &method, &call_id, cseq)
                    .await
            }
            "UPDATE" => self.update(&msg, base, peer, &call_id, cseq).await,
            "OPTIONS" => {
                let extra = [
                    ("Allow", ALLOW.to_string()),
                    ("Accept", "application/sdp".to_string()),
                ];
                let bytes = self
                    .reply(&peer, &base, (200, "OK"), Some(&tag()), &extra, b"")
                    .await;
                self.finals
                    .insert((call_id, cseq, method), (bytes, Instant::now() + 64 * T1));
            }
            _ => {}
        }
    }

    async fn malformed(&self, data: &[u8], msg: Option<&Message>, peer: &Peer, why: &str) {
        tracing::debug!(peer = %peer.addr(), transport = peer.transport(), error = why, "malformed SIP message");
        metrics::counter!("switchboard_sip_malformed_total").increment(1);
        // Never answer an ACK or a response (RFC 3261 §17.1.1.3, §18.1.2).
        let is_ack = msg.and_then(Message::method) == Some("ACK") || data.starts_with(b"ACK ");
        if is_ack {
            return;
        }
        let base = match msg {
            Some(m) if matches!(m.start, StartLine::Request { .. }) => {
                let b = ReplyBase::of(m);
                (!b.vias.is_empty()).then_some(b)
            }
            _ => ReplyBase::salvage(data),
        };
        if let Some(base) = base {
            let warning = format!(
                "399 switchboard \"{}\"",
                why.replace(['"', '\\', '\r', '\n'], " ")
                    .chars()
                    .take(120)
                    .collect::<String>()
            );
            self.reply(
                peer,
                &base,
                (400, "Bad Request"),
                Some(&tag()),
                &[("Warning", warning)],
                b"",
            )
            .await;
        }
    }

    fn contact(&self, peer: &Peer) -> String {
        let ip = self.local_ip(peer.addr().ip());
        let host = if ip.is_ipv6() {
            format!("[{ip}]")
        } else {
            ip.to_string()
        };
        let transport = match peer {
            Peer::Udp(_) => "",
            Peer::Tcp(..) => ";transport=tcp",
            Peer::Tls(..) => ";transport=tls",
        };
        format!(
            "<sip:switchboard@{host}:{}{transport}>",
            self.settings.sip_port
        )
    }

    /// The address the peer reaches us at: the bind address, the advertised one, or the local address of the
    /// route towards the peer.
    fn local_ip(&self, towards: IpAddr) -> IpAddr {
        if !self.settings.media_bind.is_unspecified() {
            return self.settings.media_bind;
        }
        if let Some(a) = self.settings.advertise {
            return a;
        }
        let any: IpAddr = if towards.is_ipv4() {
            std::net::Ipv4Addr::UNSPECIFIED.into()
        } else {
            std::net::Ipv6Addr::UNSPECIFIED.into()
        };
        std::net::UdpSocket::bind((any, 0))
            .and_then(|s| {
                s.connect((towards, 9))?;
                s.local_addr()
            })
            .map(|a| a.ip())
            .unwrap_or(towards)
    }

    async fn invite(
        &mut self,
        msg: Message,
        base: ReplyBase,
        peer: Peer,
        call_id: String,
        cseq: u32,
        dialled: String,
    ) {
        if let Some(call) = self.calls.get(&call_id) {
            if msg.to_tag().is_none() || cseq == call.invite_cseq {
                // A retransmission of an INVITE we are processing or have answered: repeat our last response.
                let (p, last) = (peer.clone(), call.last_invite_response.clone());
                self.send(&p, &last).await;
                return;
            }
            self.reinvite(msg, base, peer, call_id, cseq).await;
            return;
        }
        if msg.to_tag().is_some() {
            self.reply(
                &peer,
                &base,
                (481, "Call/Transaction Does Not Exist"),
                None,
                &[],
                b"",
            )
            .await;
            return;
        }
        let source = peer.addr().ip();
        let decision = self.settings.router.decide(source, &dialled);
        let (trunk_idx, target, answer_after_ms) = match decision {
            Decision::Forbidden => {
                // Nothing else happens: no 100, no call, no media port (issue 5, acceptance 4).
                tracing::debug!(%source, call_id = %call_id, dialled = %dialled, "INVITE from an address no trunk allows: 403");
                metrics::counter!("switchboard_sip_rejected_total", "reason" => "forbidden")
                    .increment(1);
                self.reply(&peer, &base, (403, "Forbidden"), Some(&tag()), &[], b"")
                    .await;
                return;
            }
            Decision::NotFound => {
                tracing::info!(%source, call_id = %call_id, dialled = %dialled, "INVITE to a number we do not own: 404");
                self.reply(&peer, &base, (404, "Not Found"), Some(&tag()), &[], b"")
                    .await;
                return;
            }
            Decision::Route {
                trunk,
                target,
                answer_after_ms,
            } => (trunk, target, answer_after_ms),
        };
        let timer = match session_timer(&msg) {
            UasDecision::TooSmall { min_se } => {
                tracing::info!(call_id = %call_id, min_se, "Session-Expires below our Min-SE: 422");
                self.reply(
                    &peer,
                    &base,
                    too_small(),
                    Some(&tag()),
                    &min_se_header(min_se),
                    b"",
                )
                .await;
                return;
            }
            UasDecision::Use { timer, require } => {
                Some(SessionTimer::new(timer, require, Instant::now()))
            }
            UasDecision::None => None,
        };
        let peer_allows_update = msg
            .headers_named("Allow")
            .flat_map(|v| v.split(','))
            .any(|m| m.trim().eq_ignore_ascii_case("UPDATE"));
        let trunk = self.settings.router.trunk(trunk_idx).cloned();
        let trunk_name = trunk.as_ref().map(|t| t.name.clone()).unwrap_or_default();
        let codecs = trunk.map(|t| t.codecs).unwrap_or_default();
        let trying = self
            .reply(&peer, &base, (100, "Trying"), None, &[], b"")
            .await;
        let local_tag = tag();
        let bridged = match &target {
            RouteTarget::Echo => None,
            t => self.settings.bridge.as_ref().map(|_| t.clone()),
        };
        if !matches!(target, RouteTarget::Echo) && bridged.is_none() {
            // A UA without the call hub (unit harnesses) cannot bridge: say so instead of ringing nobody.
            tracing::info!(call_id = %call_id, dialled = %dialled, route = ?target, "route not available without the call hub: 480");
            self.reply(
                &peer,
                &base,
                (480, "Temporarily Unavailable"),
                Some(&local_tag),
                &[],
                b"",
            )
            .await;
            return;
        }
        let offer = match body_sdp(&msg) {
            Some(Ok(o)) => o,
            _ => {
                self.reply(
                    &peer,
                    &base,
                    (488, "Not Acceptable Here"),
                    Some(&local_tag),
                    &[(
                        "Warning",
                        "399 switchboard \"an SDP offer is required\"".into(),
                    )],
                    b"",
                )
                .await;
                return;
            }
        };
        let neg = match sdp::negotiate(&offer, &codecs) {
            Ok(n) => n,
            Err(e) => {
                tracing::info!(call_id = %call_id, error = %e, "SDP offer refused");
                self.reply(
                    &peer,
                    &base,
                    (488, "Not Acceptable Here"),
                    Some(&local_tag),
                    &[("Warning", format!("305 switchboard \"{e}\""))],
                    b"",
                )
                .await;
                return;
            }
        };
        let now = Instant::now();
        let record_route: Vec<String> = msg
            .headers_named("Record-Route")
            .flat_map(message::split_list)
            .collect();
        let remote_target = msg
            .header("Contact")
            .and_then(angle_uri)
            .unwrap_or_else(|| format!("sip:{}", peer.addr()));
        let mut leg = None;
        if let (Some(target), Some(deps)) = (bridged, self.settings.bridge.clone()) {
            let caller = msg
                .header("From")
                .and_then(angle_uri)
                .and_then(|u| message::uri_user(&u))
                .unwrap_or_default();
            let codec = neg.codec.name();
            let telephone_event = neg.telephone_event.is_some();
            leg = match &target {
                RouteTarget::Group(group) => {
                    tracing::info!(call_id = %call_id, trunk = %trunk_name, %source, dialled = %dialled, caller = %caller, group = %group, codec, telephone_event, "inbound call to a group: joining it");
                    metrics::counter!("switchboard_sip_calls_total", "route" => "group")
                        .increment(1);
                    Some(HubLeg::join_group(
                        &deps.hub,
                        &call_id,
                        &caller,
                        group,
                        self.hub_tx.clone(),
                    ))
                }
                RouteTarget::User(user) => {
                    tracing::info!(call_id = %call_id, trunk = %trunk_name, %source, dialled = %dialled, caller = %caller, user = %user, codec, telephone_event, "inbound call to a user: ringing its browsers");
                    metrics::counter!("switchboard_sip_calls_total", "route" => "user")
                        .increment(1);
                    Some(HubLeg::start_call(
                        &deps.hub,
                        &call_id,
                        &caller,
                        user,
                        self.hub_tx.clone(),
                    ))
                }
                RouteTarget::Echo => None,
            };
        }
        if let Some(leg) = leg {
            let call = Call {
                local_tag,
                peer: peer.clone(),
                base,
                invite_cseq: cseq,
                remote_cseq: cseq,
                state: State::Proceeding,
                // A retransmitted INVITE gets the 100 again until the 180 replaces it.
                last_invite_response: trying,
                retransmit: None,
                offer,
                neg,
                media: None,
                session_id: rand::random::<u32>().into(),
                sdp_version: 1,
                trunk: trunk_name,
                leg: Some(leg),
                record_route,
                remote_target,
                local_cseq: 0,
                timer,
                peer_allows_update,
                refresh: None,
                refresh_ack: None,
            };
            self.calls.insert(call_id, call);
            return;
        }
        tracing::info!(call_id = %call_id, trunk = %trunk_name, %source, dialled = %dialled, codec = neg.codec.name(), telephone_event = neg.telephone_event.is_some(), "inbound call to the echo line");
        metrics::counter!("switchboard_sip_calls_total", "route" => "echo").increment(1);
        let mut call = Call {
            local_tag,
            peer: peer.clone(),
            base,
            invite_cseq: cseq,
            remote_cseq: cseq,
            state: State::Ringing(now + Duration::from_millis(answer_after_ms)),
            last_invite_response: Vec::new(),
            retransmit: None,
            offer,
            neg,
            media: None,
            session_id: rand::random::<u32>().into(),
            sdp_version: 1,
            trunk: trunk_name,
            leg: None,
            record_route,
            remote_target,
            local_cseq: 0,
            timer,
            peer_allows_update,
            refresh: None,
            refresh_ack: None,
        };
        if answer_after_ms > 0 {
            let contact = self.contact(&peer);
            let r = self
                .reply(
                    &peer,
                    &call.base,
                    (180, "Ringing"),
                    Some(&call.local_tag),
                    &[("Contact", contact)],
                    b"",
                )
                .await;
            call.last_invite_response = r;
            self.calls.insert(call_id, call);
        } else {
            self.calls.insert(call_id.clone(), call);
            self.answer(&call_id, now).await;
        }
    }

    /// Answers a ringing call: media ports, 200 OK with the SDP answer.
    async fn answer(&mut self, call_id: &str, now: Instant) {
        let Some(call) = self.calls.get(call_id) else {
            return;
        };
        let local = self.local_ip(call.peer.addr().ip());
        let bind = if self.settings.media_bind.is_unspecified() {
            self.settings.media_bind
        } else {
            local
        };
        let params = MediaParams {
            neg: call.neg.clone(),
            send: call.neg.answered.sends(),
            signalling_ip: call.peer.addr().ip(),
        };
        let link = match (&call.leg, &self.settings.bridge) {
            (Some(leg), Some(deps)) => match &leg.call_id {
                Some(room) => Some(BridgeMedia {
                    media: deps.media.clone(),
                    hub: deps.hub.clone(),
                    conn: leg.conn,
                    call_id: room.clone(),
                    participant: leg.participant,
                    label: leg.raw_id.clone(),
                }),
                None => return,
            },
            _ => None,
        };
        let media = self
            .ports
            .allocate(bind)
            .map_err(|e| e.to_string())
            .and_then(|s| match link {
                Some(link) => bridge::start_media(call_id.to_string(), s, params, link)
                    .map_err(|e| e.to_string()),
                None => MediaSession::start_echo(call_id.to_string(), s, params)
                    .map_err(|e| e.to_string()),
            });
        let Some(call) = self.calls.get_mut(call_id) else {
            return;
        };
        let media = match media {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(call_id, error = %e, "no media port: 503");
                let (peer, base, tag) =
                    (call.peer.clone(), call.base.clone(), call.local_tag.clone());
                self.calls.remove(call_id);
                self.reply(
                    &peer,
                    &base,
                    (503, "Service Unavailable"),
                    Some(&tag),
                    &[],
                    b"",
                )
                .await;
                return;
            }
        };
        let port = media.port;
        call.media = Some(media);
        call.state = State::Answered;
        if let Some(t) = call.timer.as_mut() {
            t.refreshed(now);
        }
        self.send_invite_ok(call_id, local, port, now).await;
    }

    /// The 2xx to the INVITE (initial or re-INVITE) being processed in `call_id`: our SDP answer
    /// (media at `local`:`port`), Contact, Allow and the session timer's headers; kept for
    /// retransmitted INVITEs and, over UDP, retransmitted until the ACK (RFC 3261 §13.3.1.4).
    async fn send_invite_ok(&mut self, call_id: &str, local: IpAddr, port: u16, now: Instant) {
        let Some(call) = self.calls.get(call_id) else {
            return;
        };
        let answer = sdp::answer(
            &call.offer,
            &call.neg,
            local,
            port,
            call.session_id,
            call.sdp_version,
        );
        let (peer, base, tag) = (call.peer.clone(), call.base.clone(), call.local_tag.clone());
        let timer = timer_headers(call.timer.as_ref());
        let contact = self.contact(&peer);
        let mut extra = vec![
            ("Contact", contact),
            ("Allow", ALLOW.to_string()),
            ("Content-Type", "application/sdp".to_string()),
        ];
        extra.extend(timer);
        let bytes = self
            .reply(
                &peer,
                &base,
                (200, "OK"),
                Some(&tag),
                &extra,
                answer.as_bytes(),
            )
            .await;
        if let Some(call) = self.calls.get_mut(call_id) {
            call.last_invite_response = bytes.clone();
            if !peer.reliable() {
                call.retransmit = Some(Retransmit::new(bytes, now));
            }
        }
    }

    async fn reinvite(
        &mut self,
        msg: Message,
        base: ReplyBase,
        peer: Peer,
        call_id: String,
        cseq: u32,
    ) {
        let Some(call) = self.calls.get_mut(&call_id) else {
            return;
        };
        if msg.to_tag().as_deref() != Some(call.local_tag.as_str()) || call.state != State::Answered
        {
            self.reply(
                &peer,
                &base,
                (481, "Call/Transaction Does Not Exist"),
                None,
                &[],
                b"",
            )
            .await;
            return;
        }
        if cseq <= call.remote_cseq {
            self.reply(
                &peer,
                &base,
                (500, "Server Internal Error"),
                None,
                &[("Retry-After", "1".into())],
                b"",
            )
            .await;
            return;
        }
        call.remote_cseq = cseq;
        if call.retransmit.is_some() {
            // RFC 3261 §14.2: a re-INVITE while our previous 2xx is unacknowledged gets 491.
            let (p, t) = (peer.clone(), call.local_tag.clone());
            self.reply(&p, &base, (491, "Request Pending"), Some(&t), &[], b"")
                .await;
            return;
        }
        let trunk_codecs = self
            .settings
            .router
            .trunk_for(peer.addr().ip())
            .and_then(|i| self.settings.router.trunk(i))
            .map(|t| t.codecs.clone())
            .unwrap_or_else(|| vec![call.neg.codec]);
        let offer = match body_sdp(&msg) {
            Some(Ok(o)) => Some(o),
            Some(Err(_)) => {
                let t = call.local_tag.clone();
                self.reply(
                    &peer,
                    &base,
                    (488, "Not Acceptable Here"),
                    Some(&t),
                    &[],
                    b"",
                )
                .await;
                return;
            }
            None => None, // no offer: ours goes in the 200, the ACK's answer is taken as unchanged
        };
        if let Some(offer) = offer {
            match sdp::negotiate(&offer, &trunk_codecs) {
                Ok(n) => {
                    call.offer = offer;
                    call.neg = n;
                }
                Err(e) => {
                    let t = call.local_tag.clone();
                    self.reply(
                        &peer,
                        &base,
                        (488, "Not Acceptable Here"),
                        Some(&t),
                        &[("Warning", format!("305 switchboard \"{e}\""))],
                        b"",
                    )
                    .await;
                    return;
                }
            }
        }
        match session_timer(&msg) {
            UasDecision::TooSmall { min_se } => {
                let t = call.local_tag.clone();
                self.reply(
                    &peer,
                    &base,
                    too_small(),
                    Some(&t),
                    &min_se_header(min_se),
                    b"",
                )
                .await;
                return;
            }
            // A re-INVITE is a session refresh (RFC 4028 §9): it restarts the timer, or ends it.
            UasDecision::Use { timer, require } => {
                call.timer = Some(SessionTimer::new(timer, require, Instant::now()));
            }
            UasDecision::None => call.timer = None,
        }
        call.sdp_version += 1;
        call.invite_cseq = cseq;
        call.base = base.clone();
        call.peer = peer.clone();
        let hold = !call.neg.answered.sends();
        tracing::info!(call_id = %call_id, trunk = %call.trunk, offered = call.neg.offered.as_str(), answered = call.neg.answered.as_str(), hold, "re-INVITE");
        let port = call.media.as_ref().map(|m| m.port).unwrap_or(0);
        if let Some(m) = &call.media {
            m.update(MediaParams {
                neg: call.neg.clone(),
                send: call.neg.answered.sends(),
                signalling_ip: peer.addr().ip(),
            });
        }
        let local = self.local_ip(peer.addr().ip());
        self.send_invite_ok(&call_id, local, port, Instant::now())
            .await;
    }

    fn ack(&mut self, call_id: &str, cseq: u32) {
        let Some(call) = self.calls.get_mut(call_id) else {
            return; // an ACK for a stateless 403/404, or for nothing: no response ever (RFC 3261 §17.2.3)
        };
        if cseq != call.invite_cseq {
            return;
        }
        call.retransmit = None;
        if call.state == State::Ended {
            self.calls.remove(call_id);
        }
    }

    async fn cancel(&mut self, base: ReplyBase, peer: Peer, call_id: &str, cseq: u32) {
        let key = (call_id.to_string(), cseq, "CANCEL".to_string());
        if let Some((bytes, _)) = self.finals.get(&key) {
            let b = bytes.clone();
            self.send(&peer, &b).await;
            return;
        }
        let Some(call) = self.calls.get_mut(call_id) else {
            self.reply(
                &peer,
                &base,
                (481, "Call/Transaction Does Not Exist"),
                None,
                &[],
                b"",
            )
            .await;
            return;
        };
        if cseq != call.invite_cseq {
            self.reply(
                &peer,
                &base,
                (481, "Call/Transaction Does Not Exist"),
                None,
                &[],
                b"",
            )
            .await;
            return;
        }
        let ringing = call.early();
        let (tag, invite_base, invite_peer) =
            (call.local_tag.clone(), call.base.clone(), call.peer.clone());
        // The CANCEL itself is always answered 200 when its INVITE is known (RFC 3261 §9.2).
        let ok = self
            .reply(&peer, &base, (200, "OK"), Some(&tag), &[], b"")
            .await;
        self.finals.insert(key, (ok, Instant::now() + 64 * T1));
        if !ringing {
            // The CANCEL/200 race: our 200 crossed the CANCEL; the call stands and the caller will BYE.
            tracing::info!(call_id, "CANCEL after the 200 OK: no effect");
            return;
        }
        tracing::info!(call_id, "CANCEL before answer: 487");
        let r = self
            .reply(
                &invite_peer,
                &invite_base,
                (487, "Request Terminated"),
                Some(&tag),
                &[],
                b"",
            )
            .await;
        if let Some(call) = self.calls.get_mut(call_id) {
            call.state = State::Ended;
            call.media = None;
            // The browsers stop ringing (487): the hub leg hangs up as it drops.
            call.leg = None;
            call.last_invite_response = r.clone();
            if invite_peer.reliable() {
                self.calls.remove(call_id);
            } else {
                call.retransmit = Some(Retransmit::new(r, Instant::now()));
            }
        }
    }

    /// UPDATE (RFC 3311) inside a dialog: without a body it is a session refresh (RFC 4028 §9),
    /// answered 200 with the renegotiated timer; offers in UPDATE are refused with 488 (the gateway
    /// takes offers by re-INVITE). For outbound calls the trunk's refresh is answered 200 echoing
    /// its `Session-Expires`.
    async fn update(
        &mut self,
        msg: &Message,
        base: ReplyBase,
        peer: Peer,
        call_id: &str,
        cseq: u32,
    ) {
        let key = (call_id.to_string(), cseq, "UPDATE".to_string());
        if let Some((bytes, _)) = self.finals.get(&key) {
            let b = bytes.clone();
            self.send(&peer, &b).await;
            return;
        }
        let now = Instant::now();
        let contact = self.contact(&peer);
        let offer_refused = || {
            let warning = "399 switchboard \"offers in UPDATE are not supported: use re-INVITE\"";
            (
                (488, "Not Acceptable Here"),
                vec![("Warning", warning.to_string())],
            )
        };
        let (status, extra): ((u16, &str), Vec<(&str, String)>) = if self.outs.contains_key(call_id)
        {
            // The trunk refreshes our outbound call (its tags were checked by the dispatcher).
            let se = msg
                .header("Session-Expires")
                .and_then(timer::parse_session_expires);
            if !msg.body.is_empty() {
                offer_refused()
            } else if se.is_some_and(|se| se.interval < timer::MIN_SE) {
                (too_small(), min_se_header(timer::MIN_SE).to_vec())
            } else {
                let mut extra = vec![("Contact", contact), ("Supported", SUPPORTED.to_string())];
                if let Some(se) = se {
                    // Echoed as parsed (RFC 4028 §9): they stay the refresher.
                    let value = match se.refresher {
                        Some(r) => format!("{};refresher={}", se.interval, r.as_str()),
                        None => se.interval.to_string(),
                    };
                    extra.push(("Session-Expires", value));
                }
                ((200, "OK"), extra)
            }
        } else {
            match self.calls.get_mut(call_id) {
                Some(c)
                    if msg.to_tag().as_deref() == Some(c.local_tag.as_str())
                        && msg.from_tag() == message::header_param(&c.base.from, "tag")
                        && c.state == State::Answered =>
                {
                    if cseq <= c.remote_cseq {
                        // Out of order (RFC 3261 §12.2.2).
                        (
                            (500, "Server Internal Error"),
                            vec![("Retry-After", "1".to_string())],
                        )
                    } else {
                        c.remote_cseq = cseq;
                        if !msg.body.is_empty() {
                            offer_refused()
                        } else {
                            match session_timer(msg) {
                                UasDecision::TooSmall { min_se } => {
                                    (too_small(), min_se_header(min_se).to_vec())
                                }
                                decision => {
                                    c.timer = match decision {
                                        UasDecision::Use { timer, require } => {
                                            Some(SessionTimer::new(timer, require, now))
                                        }
                                        _ => None,
                                    };
                                    let mut extra = vec![("Contact", contact)];
                                    extra.extend(timer_headers(c.timer.as_ref()));
                                    ((200, "OK"), extra)
                                }
                            }
                        }
                    }
                }
                _ => ((481, "Call/Transaction Does Not Exist"), Vec::new()),
            }
        };
        if status.0 == 200 {
            tracing::debug!(call_id, "UPDATE: session refreshed");
        }
        let bytes = self.reply(&peer, &base, status, None, &extra, b"").await;
        self.finals.insert(key, (bytes, now + 64 * T1));
    }

    async fn in_dialog(
        &mut self,
        msg: &Message,
        base: ReplyBase,
        peer: Peer,
        method: &str,
        call_id: &str,
        cseq: u32,
    ) {
        let key = (call_id.to_string(), cseq, method.to_string());
        if let Some((bytes, _)) = self.finals.get(&key) {
            let b = bytes.clone();
            self.send(&peer, &b).await;
            return;
        }
        let known = self.calls.get(call_id).is_some_and(|c| {
            msg.to_tag().as_deref() == Some(c.local_tag.as_str()) && c.state != State::Ended
        });
        if !known {
            let r = self
                .reply(
                    &peer,
                    &base,
                    (481, "Call/Transaction Does Not Exist"),
                    None,
                    &[],
                    b"",
                )
                .await;
            self.finals.insert(key, (r, Instant::now() + 64 * T1));
            return;
        }
        if let Some(c) = self.calls.get_mut(call_id) {
            c.remote_cseq = c.remote_cseq.max(cseq);
        }
        let r = match method {
            "BYE" => {
                if let Some(c) = self.calls.remove(call_id) {
                    tracing::info!(call_id, trunk = %c.trunk, "BYE: call ended");
                    if c.early() {
                        // A BYE in the early dialog ends the INVITE too (RFC 3261 §15.1.2).
                        self.reply(
                            &c.peer,
                            &c.base,
                            (487, "Request Terminated"),
                            Some(&c.local_tag),
                            &[],
                            b"",
                        )
                        .await;
                    }
                }
                self.reply(&peer, &base, (200, "OK"), None, &[], b"").await
            }
            _ => {
                let ct = msg.header("Content-Type").unwrap_or("");
                let body = String::from_utf8_lossy(&msg.body);
                match dtmf::parse_info(ct, &body) {
                    Some((event, duration)) => {
                        report_dtmf(call_id, event, DtmfSource::Info, duration);
                        if let (dtmf::ToneEvent::Digit(d), Some(leg)) =
                            (event, self.calls.get(call_id).and_then(|c| c.leg.as_ref()))
                        {
                            leg.send_dtmf(d);
                        }
                        self.reply(&peer, &base, (200, "OK"), None, &[], b"").await
                    }
                    None if msg.body.is_empty() => {
                        self.reply(&peer, &base, (200, "OK"), None, &[], b"").await
                    }
                    None => {
                        let accept = [(
                            "Accept",
                            "application/dtmf-relay, application/dtmf".to_string(),
                        )];
                        self.reply(
                            &peer,
                            &base,
                            (415, "Unsupported Media Type"),
                            None,
                            &accept,
                            b"",
                        )
                        .await
                    }
                }
            }
        };
        self.finals.insert(key, (r, Instant::now() + 64 * T1));
    }

    /// What the hub told the connection of a bridged dialog: progress of the browser call.
    async fn on_hub_event(&mut self, ev: HubEvent) {
        let sip_call_id = ev.sip_call_id;
        if self.outs.contains_key(&sip_call_id) {
            self.on_out_hub_event(&sip_call_id, ev.message).await;
            return;
        }
        let Some(call) = self.calls.get_mut(&sip_call_id) else {
            return;
        };
        let Outbound::Message(msg) = ev.message else {
            return;
        };
        match msg {
            ServerMessage::Response {
                ok: false,
                error,
                id,
                ..
            } if call.early() && id == bridge::START_REQUEST => {
                // `startCall` or `join` refused (not a communication user id, too many calls...).
                let code = error
                    .as_ref()
                    .and_then(|e| e.get("code"))
                    .and_then(|c| c.as_str())
                    .unwrap_or("");
                let status = match code {
                    "BadTarget" | "SelfCall" | "BadGroupId" => (404, "Not Found"),
                    "TooManyCalls" => (486, "Busy Here"),
                    _ => (480, "Temporarily Unavailable"),
                };
                tracing::info!(call_id = %sip_call_id, hub_error = code, status = status.0, "browser call refused");
                self.finish_early(&sip_call_id, status).await;
            }
            ServerMessage::Response {
                ok: true, result, ..
            } => {
                if let (Some(leg), Some(id)) = (
                    call.leg.as_mut(),
                    result
                        .as_ref()
                        .and_then(|r| r.get("callId"))
                        .and_then(|c| c.as_str()),
                ) && leg.call_id.is_none()
                {
                    leg.call_id = Some(id.to_string());
                }
            }
            ServerMessage::CallStateChanged {
                call_id: hub_call,
                state,
                end_reason,
            } => {
                if let Some(leg) = call.leg.as_mut()
                    && leg.call_id.is_none()
                {
                    leg.call_id = Some(hub_call);
                }
                match state {
                    "Ringing" if call.state == State::Proceeding => {
                        let (peer, base, tag) =
                            (call.peer.clone(), call.base.clone(), call.local_tag.clone());
                        let contact = self.contact(&peer);
                        let r = self
                            .reply(
                                &peer,
                                &base,
                                (180, "Ringing"),
                                Some(&tag),
                                &[("Contact", contact)],
                                b"",
                            )
                            .await;
                        if let Some(c) = self.calls.get_mut(&sip_call_id) {
                            c.last_invite_response = r;
                        }
                    }
                    "Connected" if call.state == State::Proceeding => {
                        tracing::info!(call_id = %sip_call_id, "browser answered: 200 OK");
                        self.answer(&sip_call_id, Instant::now()).await;
                    }
                    "Disconnected" => {
                        let code = end_reason.as_ref().map_or(0, |r| r.code);
                        if let Some(leg) = call.leg.as_mut() {
                            // The hub ended the call: nothing to hang up there.
                            leg.call_id = None;
                        }
                        if call.early() {
                            let status = match code {
                                603 => (603, "Decline"),
                                486 => (486, "Busy Here"),
                                404 => (404, "Not Found"),
                                408 => (408, "Request Timeout"),
                                487 => (487, "Request Terminated"),
                                _ => (480, "Temporarily Unavailable"),
                            };
                            tracing::info!(call_id = %sip_call_id, hub_code = code, status = status.0, "browser call ended before answer");
                            self.finish_early(&sip_call_id, status).await;
                        } else if call.state == State::Answered {
                            tracing::info!(call_id = %sip_call_id, hub_code = code, "browser call ended: BYE");
                            self.send_bye(&sip_call_id).await;
                        }
                    }
                    _ => {}
                }
            }
            ServerMessage::DtmfReceived { tone, .. } => {
                if let (Some(media), Some(d)) = (&call.media, tone.chars().next()) {
                    media.send_dtmf(d);
                }
            }
            _ => {}
        }
    }

    /// Final non-2xx response to a bridged INVITE that is still early; the call waits for its ACK.
    async fn finish_early(&mut self, call_id: &str, (code, reason): (u16, &str)) {
        let Some(call) = self.calls.get_mut(call_id) else {
            return;
        };
        call.leg = None;
        call.state = State::Ended;
        let (peer, base, tag) = (call.peer.clone(), call.base.clone(), call.local_tag.clone());
        let r = self
            .reply(&peer, &base, (code, reason), Some(&tag), &[], b"")
            .await;
        if let Some(call) = self.calls.get_mut(call_id) {
            call.last_invite_response = r.clone();
            if peer.reliable() {
                self.calls.remove(call_id);
            } else {
                call.retransmit = Some(Retransmit::new(r, Instant::now()));
            }
        }
    }

    /// Ends an answered dialog from our side: BYE to the remote target through the route set
    /// (RFC 3261 §15.1.1), retransmitted over UDP until answered.
    async fn send_bye(&mut self, call_id: &str) {
        let Some(mut call) = self.calls.remove(call_id) else {
            return;
        };
        call.leg = None;
        call.local_cseq += 1;
        let branch = format!("z9hG4bK{:016x}", rand::random::<u64>());
        let req = self.dialog_request(call_id, &call, "BYE", call.local_cseq, &branch, &[], b"");
        metrics::counter!("switchboard_sip_requests_sent_total", "method" => "BYE").increment(1);
        self.send(&call.peer, &req).await;
        if !call.peer.reliable() {
            self.byes.insert(
                call_id.to_string(),
                PendingBye {
                    peer: call.peer.clone(),
                    retransmit: Retransmit::new(req, Instant::now()),
                },
            );
        }
    }

    /// A request of ours inside inbound dialog `call_id`: to the remote target through the route set
    /// (RFC 3261 §12.2.1.1), From our side (the INVITE's To with our tag), To the caller.
    #[allow(clippy::too_many_arguments)]
    fn dialog_request(
        &self,
        call_id: &str,
        call: &Call,
        method: &str,
        cseq: u32,
        branch: &str,
        extra: &[(&str, String)],
        body: &[u8],
    ) -> Vec<u8> {
        let ip = self.local_ip(call.peer.addr().ip());
        let host = if ip.is_ipv6() {
            format!("[{ip}]")
        } else {
            ip.to_string()
        };
        let port = self.settings.sip_port;
        let transport = call.peer.transport();
        let mut head = format!(
            "{method} {target} SIP/2.0\r\nVia: SIP/2.0/{transport} {host}:{port};branch={branch};rport\r\nMax-Forwards: 70\r\n",
            target = call.remote_target,
        );
        for r in &call.record_route {
            head.push_str(&format!("Route: {r}\r\n"));
        }
        let from = if call.base.to.contains(";tag=") {
            call.base.to.clone()
        } else {
            format!("{};tag={}", call.base.to, call.local_tag)
        };
        head.push_str(&format!(
            "From: {from}\r\nTo: {to}\r\nCall-ID: {call_id}\r\nCSeq: {cseq} {cseq_method}\r\nUser-Agent: {USER_AGENT}\r\n",
            to = call.base.from,
            // The ACK of a 2xx carries the INVITE's number with its own method (RFC 3261 §13.2.2.4).
            cseq_method = method,
        ));
        for (name, value) in extra {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
        let mut bytes = head.into_bytes();
        bytes.extend_from_slice(body);
        bytes
    }

    /// Our session refresh (RFC 4028 §10): UPDATE without a body when the caller allows it, else a
    /// re-INVITE offering the unchanged session (same SDP version).
    async fn send_refresh(&mut self, call_id: &str, now: Instant) {
        let Some(call) = self.calls.get(call_id) else {
            return;
        };
        let Some(timer) = call.timer.as_ref() else {
            return;
        };
        let method = if call.peer_allows_update {
            "UPDATE"
        } else {
            "INVITE"
        };
        let cseq = call.local_cseq + 1;
        let branch = format!("z9hG4bK{:016x}", rand::random::<u64>());
        let mut extra = vec![
            ("Contact", self.contact(&call.peer)),
            ("Allow", ALLOW.to_string()),
            ("Supported", SUPPORTED.to_string()),
            ("Session-Expires", timer.header()),
        ];
        let body = if method == "INVITE" {
            let local = self.local_ip(call.peer.addr().ip());
            let port = call.media.as_ref().map(|m| m.port).unwrap_or(0);
            extra.push(("Content-Type", "application/sdp".to_string()));
            sdp::answer(
                &call.offer,
                &call.neg,
                local,
                port,
                call.session_id,
                call.sdp_version,
            )
            .into_bytes()
        } else {
            Vec::new()
        };
        let req = self.dialog_request(call_id, call, method, cseq, &branch, &extra, &body);
        let peer = call.peer.clone();
        tracing::debug!(
            call_id,
            method,
            interval = timer.interval,
            "session refresh"
        );
        metrics::counter!("switchboard_sip_requests_sent_total", "method" => method).increment(1);
        self.send(&peer, &req).await;
        if let Some(call) = self.calls.get_mut(call_id) {
            call.local_cseq = cseq;
            call.refresh = Some(PendingRefresh {
                method,
                cseq,
                branch,
                retransmit: Retransmit::new(req, now),
                provisional: false,
            });
        }
    }

    /// A response to our session refresh: 2xx restarts the timer (and a re-INVITE's is ACKed); 408
    /// and 481 end the dialog with BYE (RFC 4028 §10); other failures are retried later.
    async fn on_refresh_response(&mut self, msg: &Message, code: u16, call_id: &str) {
        let now = Instant::now();
        let Some(call) = self.calls.get_mut(call_id) else {
            return;
        };
        let Some(pending) = call.refresh.as_mut() else {
            return;
        };
        if code < 200 {
            pending.provisional = true;
            return;
        }
        let (method, cseq, branch) = (pending.method, pending.cseq, pending.branch.clone());
        call.refresh = None;
        if (200..300).contains(&code) {
            if let Some(t) = call.timer.as_mut() {
                if let Some(se) = msg
                    .header("Session-Expires")
                    .and_then(timer::parse_session_expires)
                {
                    t.interval = se.interval.max(timer::MIN_SE);
                }
                t.refreshed(now);
            }
        } else if matches!(code, 408 | 481) {
            tracing::info!(call_id, code, "session refresh failed: BYE");
        } else if let Some(t) = call.timer.as_mut() {
            tracing::info!(
                call_id,
                code,
                method,
                "session refresh refused: retrying in 10 s"
            );
            t.retry_later(now);
        }
        if method == "INVITE" {
            // 2xx: a new transaction's ACK (new branch); other finals: ACKed in their transaction.
            let ack_branch = if (200..300).contains(&code) {
                format!("z9hG4bK{:016x}", rand::random::<u64>())
            } else {
                branch
            };
            if let Some(call) = self.calls.get(call_id) {
                let ack = self.dialog_request(call_id, call, "ACK", cseq, &ack_branch, &[], b"");
                let peer = call.peer.clone();
                self.send(&peer, &ack).await;
                if (200..300).contains(&code)
                    && let Some(call) = self.calls.get_mut(call_id)
                {
                    call.refresh_ack = Some((cseq, ack));
                }
            }
        }
        if matches!(code, 408 | 481) {
            self.send_bye(call_id).await;
        }
    }

    /// Answered calls (both directions) whose phone sent no RTP for `rtp_timeout` while the session
    /// says it sends (`sendrecv`; a phone holding the call is exempt): it vanished without a BYE, so
    /// we send one and free the dialog and its ports.
    async fn rtp_timeouts(&mut self, now: Instant) {
        let limit = self.settings.rtp_timeout;
        if limit.is_zero() {
            return;
        }
        let silent = |neg: &Negotiated, media: &MediaSession| {
            neg.offered == sdp::Direction::SendRecv && media.rtp_silence(now) >= limit
        };
        let inbound: Vec<String> = self
            .calls
            .iter()
            .filter(|(_, c)| {
                c.state == State::Answered && c.media.as_ref().is_some_and(|m| silent(&c.neg, m))
            })
            .map(|(id, _)| id.clone())
            .collect();
        let outbound: Vec<String> = self
            .outs
            .iter()
            .filter(|(_, o)| {
                o.state == OutState::Connected
                    && matches!((&o.neg, &o.media), (Some(n), Some(m)) if silent(n, m))
            })
            .map(|(id, _)| id.clone())
            .collect();
        for id in &inbound {
            tracing::info!(call_id = %id, timeout_s = limit.as_secs(), "no RTP from the phone: BYE");
            self.send_bye(id).await;
        }
        for id in &outbound {
            tracing::info!(call_id = %id, timeout_s = limit.as_secs(), "no RTP from the phone: BYE");
            self.out_bye(id).await;
        }
        let n = (inbound.len() + outbound.len()) as u64;
        if n > 0 {
            metrics::counter!("switchboard_sip_rtp_timeouts_total").increment(n);
        }
    }

    /// Session timers of answered inbound dialogs: our refreshes when due, their retransmissions
    /// and timeouts, and BYE for sessions that expired without a refresh.
    async fn session_timers(&mut self, now: Instant) {
        let mut refresh = Vec::new();
        let mut expired = Vec::new();
        let mut resend = Vec::new();
        let mut timed_out = Vec::new();
        for (id, c) in self.calls.iter_mut() {
            if c.state != State::Answered {
                continue;
            }
            let Some(t) = c.timer.as_ref() else {
                continue;
            };
            if now >= t.expires_at() {
                expired.push(id.clone());
                continue;
            }
            match c.refresh.as_mut() {
                None if t.refresh_due().is_some_and(|at| now >= at) => refresh.push(id.clone()),
                None => {}
                Some(p) if now >= p.retransmit.deadline => timed_out.push(id.clone()),
                Some(p) if !c.peer.reliable() && !p.provisional && now >= p.retransmit.next => {
                    resend.push((c.peer.clone(), p.retransmit.bytes.clone()));
                    // INVITE doubles without a cap (timer A), non-INVITE up to T2 (timer E).
                    p.retransmit.interval = if p.method == "INVITE" {
                        p.retransmit.interval * 2
                    } else {
                        (p.retransmit.interval * 2).min(T2)
                    };
                    p.retransmit.next = now + p.retransmit.interval;
                }
                Some(_) => {}
            }
        }
        for (peer, bytes) in resend {
            self.send(&peer, &bytes).await;
        }
        for id in refresh {
            self.send_refresh(&id, now).await;
        }
        for id in timed_out {
            tracing::info!(call_id = %id, "session refresh timed out: BYE");
            self.send_bye(&id).await;
        }
        for id in expired {
            tracing::info!(call_id = %id, "session expired without a refresh (RFC 4028 §10): BYE");
            metrics::counter!("switchboard_sip_session_expired_total").increment(1);
            self.send_bye(&id).await;
        }
    }

    // ---- outbound calls (browser -> phone) ----

    /// A browser called a phone number: INVITE through the first matching trunk.
    async fn dial(&mut self, req: DialRequest) {
        let Some(deps) = self.settings.bridge.clone() else {
            return;
        };
        let fail = |code: u16, why: &str| HubCommand::PhoneFailed {
            call_id: req.call_id.clone(),
            conn: req.conn,
            reason: crate::proto::signal::EndReason::new(code, 0, why),
        };
        let trunks: Vec<usize> = self.settings.router.outbound_trunks(&req.number);
        let Some((&first, rest)) = trunks.split_first() else {
            tracing::info!(call_id = %req.call_id, number = %req.number, "no trunk prefix matches the number: 404");
            deps.hub.send(fail(404, "no trunk serves this number"));
            deps.hub.send(HubCommand::Unregister { conn: req.conn });
            return;
        };
        let bind = self.settings.media_bind;
        let sockets = match self.ports.allocate(bind) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(call_id = %req.call_id, error = %e, "no media port for an outbound call: 503");
                deps.hub.send(fail(503, "no media port"));
                deps.hub.send(HubCommand::Unregister { conn: req.conn });
                return;
            }
        };
        let port = sockets.0.local_addr().map(|a| a.port()).unwrap_or(0);
        let sip_call_id = format!("sb{:016x}", rand::random::<u64>());
        let forwarder =
            outbound::forward_events(sip_call_id.clone(), req.events, self.hub_tx.clone());
        tracing::info!(call_id = %req.call_id, sip_call_id = %sip_call_id, number = %req.number, trunks = trunks.len(), "outbound call");
        metrics::counter!("switchboard_sip_calls_total", "route" => "outbound").increment(1);
        let out = OutCall {
            hub_call_id: req.call_id,
            number: req.number,
            conn: req.conn,
            participant: req.participant,
            failover: rest.to_vec(),
            trunk: first,
            peer: Peer::Udp(std::net::SocketAddr::from(([127, 0, 0, 1], 5060))),
            local_tag: tag(),
            cseq: 0,
            branch: String::new(),
            invite: Vec::new(),
            retransmit: None,
            state: OutState::Calling,
            authenticated: false,
            remote_to: String::new(),
            remote_target: None,
            route_set: Vec::new(),
            neg: None,
            sockets: Some(sockets),
            port,
            sdp_session: 0,
            sdp_version: 1,
            connection: None,
            pending_auth: None,
            remote_cseq: 0,
            progress: None,
            media: None,
            forwarder,
        };
        self.outs.insert(sip_call_id.clone(), out);
        self.send_invite(&sip_call_id, None).await;
    }

    /// A request of outbound call `call_id` (`(method, CSeq, branch)`) to `uri`: our Via, From with
    /// our tag and Contact ([`outbound::request`]).
    #[allow(clippy::too_many_arguments)]
    fn out_request(
        &self,
        call_id: &str,
        out: &OutCall,
        (method, cseq, branch): (&str, u32, &str),
        uri: &str,
        to: &str,
        extra: &[(String, String)],
        body: Option<(&str, &str)>,
    ) -> Vec<u8> {
        let (via, from, _, _) = self.out_addressing(out);
        let contact = self.contact(&out.peer);
        let headers = outbound::Headers {
            via_sent_by: &via,
            from: &from,
            tag: &out.local_tag,
            call_id,
            contact: &contact,
        };
        outbound::request(&headers, method, uri, to, cseq, branch, extra, body)
    }

    /// The `Via` sent-by, From, To and Request-URI of an outbound call on its current trunk.
    fn out_addressing(&self, out: &OutCall) -> (String, String, String, String) {
        let ip = self.local_ip(out.peer.addr().ip());
        let host = if ip.is_ipv6() {
            format!("[{ip}]")
        } else {
            ip.to_string()
        };
        let port = self.settings.sip_port;
        let trunk = self.settings.router.trunk(out.trunk);
        let user = trunk
            .and_then(|t| t.caller_id.clone())
            .unwrap_or_else(|| "switchboard".to_string());
        let target = out.peer.addr();
        let uri_transport = if out.peer.reliable() {
            ";transport=tcp"
        } else {
            ""
        };
        (
            format!("SIP/2.0/{} {host}:{port}", out.peer.transport()),
            format!("<sip:{user}@{host}:{port}>"),
            format!("<sip:{}@{target}>", out.number),
            format!("sip:{}@{target}{uri_transport}", out.number),
        )
    }

    /// Sends (or re-sends with credentials) the INVITE of an outbound call on its current trunk.
    async fn send_invite(&mut self, call_id: &str, auth: Option<(&'static str, String)>) {
        let Some(trunk) = self
            .outs
            .get(call_id)
            .and_then(|o| self.settings.router.trunk(o.trunk))
            .cloned()
        else {
            return;
        };
        let Some(addr) = outbound::resolve(&trunk.address).await else {
            tracing::warn!(trunk = %trunk.name, address = %trunk.address, "trunk address does not resolve");
            self.out_failed(call_id, 503, "trunk address does not resolve")
                .await;
            return;
        };
        let Some(out) = self.outs.get_mut(call_id) else {
            return;
        };
        if trunk.transport == TrunkTransport::Tcp {
            if !matches!(&out.peer, Peer::Tcp(a, _) if *a == addr) {
                // Connect first (off the UA task); `out_connected` sends the INVITE.
                let Some((to_ua, stop)) = self.streams.clone() else {
                    self.out_failed(call_id, 503, "TCP trunks need the gateway's transports")
                        .await;
                    return;
                };
                let conn_stop = stop.child_token();
                out.connection = Some(conn_stop.clone().drop_guard());
                out.pending_auth = auth;
                let (done, id) = (self.connected_tx.clone(), call_id.to_string());
                tokio::spawn(async move {
                    let r = transport::connect_tcp(addr, to_ua, conn_stop)
                        .await
                        .map_err(|e| e.to_string());
                    let _ = done.send((id, addr, r));
                });
                return;
            }
        } else {
            out.peer = Peer::Udp(addr);
        }
        out.cseq += 1;
        out.branch = format!("z9hG4bK{:016x}", rand::random::<u64>());
        let local = self.local_ip(addr.ip());
        let Some(out) = self.outs.get(call_id) else {
            return;
        };
        let (_, _, to, uri) = self.out_addressing(out);
        let session = u64::from(out.cseq) << 8;
        let sdp = outbound::offer_sdp(local, out.port, &trunk.codecs, session, 1);
        let extra: Vec<(String, String)> = auth
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .chain([("Allow".to_string(), ALLOW.to_string())])
            .collect();
        let bytes = self.out_request(
            call_id,
            out,
            ("INVITE", out.cseq, &out.branch),
            &uri,
            &to,
            &extra,
            Some(("application/sdp", &sdp)),
        );
        let peer = out.peer.clone();
        tracing::info!(call_id, trunk = %trunk.name, %addr, cseq = out.cseq, "INVITE sent");
        metrics::counter!("switchboard_sip_requests_sent_total", "method" => "INVITE").increment(1);
        self.send(&peer, &bytes).await;
        let now = Instant::now();
        if let Some(out) = self.outs.get_mut(call_id) {
            out.invite = bytes;
            out.sdp_session = session;
            out.remote_to = to;
            out.retransmit = Some((now + T1, T1, now + 64 * T1));
        }
    }

    /// A TCP connect to a trunk finished: the INVITE goes out on it, or the trunk counts as failed
    /// (503: the next matching trunk is tried).
    async fn out_connected(
        &mut self,
        call_id: &str,
        addr: std::net::SocketAddr,
        r: Result<Peer, String>,
    ) {
        let Some(out) = self.outs.get_mut(call_id) else {
            return;
        };
        if out.state != OutState::Calling {
            return;
        }
        match r {
            Ok(peer) => {
                tracing::debug!(call_id, %addr, "TCP connection to the trunk");
                out.peer = peer;
                let auth = out.pending_auth.take();
                self.send_invite(call_id, auth).await;
            }
            Err(e) => {
                tracing::info!(call_id, %addr, error = %e, "TCP trunk unreachable");
                out.connection = None;
                self.out_final_failure(call_id, 503, "trunk unreachable over TCP")
                    .await;
            }
        }
    }

    /// ACK for a non-2xx final response: same branch and Request-URI as the INVITE (RFC 3261 §17.1.1.3).
    async fn ack_failure(&mut self, call_id: &str, to: &str) {
        let Some(out) = self.outs.get(call_id) else {
            return;
        };
        let (_, _, _, uri) = self.out_addressing(out);
        let bytes = self.out_request(
            call_id,
            out,
            ("ACK", out.cseq, &out.branch),
            &uri,
            to,
            &[],
            None,
        );
        let peer = out.peer.clone();
        self.send(&peer, &bytes).await;
    }

    /// A request inside an outbound call's dialog (ACK of a 2xx, BYE): to the remote target, through the route
    /// set, with a new branch.
    async fn out_dialog_request(&mut self, call_id: &str, method: &str, cseq: u32) -> Vec<u8> {
        let Some(out) = self.outs.get(call_id) else {
            return Vec::new();
        };
        let (_, _, _, uri) = self.out_addressing(out);
        let target = out.remote_target.clone().unwrap_or(uri);
        let routes: Vec<(String, String)> = out
            .route_set
            .iter()
            .map(|r| ("Route".to_string(), r.clone()))
            .collect();
        let branch = format!("z9hG4bK{:016x}", rand::random::<u64>());
        let bytes = self.out_request(
            call_id,
            out,
            (method, cseq, &branch),
            &target,
            &out.remote_to,
            &routes,
            None,
        );
        let peer = out.peer.clone();
        self.send(&peer, &bytes).await;
        bytes
    }

    /// Starts the bridge media of an outbound call once an SDP answer came (183 or 2xx).
    fn out_start_media(&mut self, call_id: &str, msg: &Message) {
        let Some(deps) = self.settings.bridge.clone() else {
            return;
        };
        let Some(out) = self.outs.get_mut(call_id) else {
            return;
        };
        if out.media.is_some() {
            return;
        }
        let codecs = self
            .settings
            .router
            .trunk(out.trunk)
            .map(|t| t.codecs.clone())
            .unwrap_or_default();
        let Some(Ok(answer)) = body_sdp(msg) else {
            return;
        };
        let neg = match sdp::negotiate(&answer, &codecs) {
            Ok(n) => n,
            Err(e) => {
                tracing::info!(call_id, error = %e, "SDP answer unusable: no media");
                return;
            }
        };
        let Some(sockets) = out.sockets.take() else {
            return;
        };
        let params = MediaParams {
            neg: neg.clone(),
            send: true,
            signalling_ip: out.peer.addr().ip(),
        };
        let link = BridgeMedia {
            media: deps.media.clone(),
            hub: deps.hub.clone(),
            conn: out.conn,
            call_id: out.hub_call_id.clone(),
            participant: out.participant,
            label: format!("4:{}", out.number),
        };
        match bridge::start_media(call_id.to_string(), sockets, params, link) {
            Ok(m) => {
                out.media = Some(m);
                out.neg = Some(neg);
            }
            Err(e) => tracing::warn!(call_id, error = %e, "outbound media failed to start"),
        }
    }

    async fn on_out_response(&mut self, msg: &Message, code: u16, call_id: &str, cseq: u32) {
        let Some(out) = self.outs.get_mut(call_id) else {
            return;
        };
        if cseq != out.cseq {
            return;
        }
        out.retransmit = None;
        let to = msg.header("To").unwrap_or("").to_string();
        let hub = self.settings.bridge.as_ref().map(|b| b.hub.clone());
        match code {
            100..=199 => {
                if out.state == OutState::Calling {
                    out.state = OutState::Proceeding;
                }
                if code == 100 {
                    return;
                }
                if msg.to_tag().is_some() {
                    out.remote_to = to;
                }
                let hub_call = out.hub_call_id.clone();
                let phone_conn = out.conn;
                let has_sdp = matches!(body_sdp(msg), Some(Ok(_)));
                if has_sdp {
                    self.out_start_media(call_id, msg);
                }
                let state = if has_sdp { "EarlyMedia" } else { "Ringing" };
                // Repeated 18x (retransmitted or a chatty trunk) are reported once per state.
                let Some(out) = self.outs.get_mut(call_id) else {
                    return;
                };
                if out.progress == Some(state) {
                    return;
                }
                out.progress = Some(state);
                tracing::info!(call_id, code, state, "outbound call progress");
                if let Some(h) = hub {
                    h.send(HubCommand::PhoneProgress {
                        call_id: hub_call,
                        conn: phone_conn,
                        state,
                    });
                }
            }
            200..=299 => {
                let already = out.state == OutState::Connected;
                let cancelled = out.state == OutState::Cancelling;
                out.remote_to = to;
                out.remote_target = msg.header("Contact").and_then(angle_uri);
                out.route_set = msg
                    .headers_named("Record-Route")
                    .flat_map(message::split_list)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect();
                let cseq = out.cseq;
                self.out_dialog_request(call_id, "ACK", cseq).await;
                if already {
                    return;
                }
                if cancelled {
                    // The 2xx crossed our CANCEL: end the call that was established (RFC 3261 §9.1).
                    self.out_bye(call_id).await;
                    return;
                }
                self.out_start_media(call_id, msg);
                let Some(out) = self.outs.get_mut(call_id) else {
                    return;
                };
                if out.media.is_none() {
                    // No SDP answer, an unparsable one or no common codec (and no early media): a call
                    // without audio is no call. ACKed above, ended with BYE; the caller sees 488.
                    tracing::info!(call_id, "answer without usable media: BYE");
                    let (hub_call, conn) = (out.hub_call_id.clone(), out.conn);
                    if let Some(h) = hub {
                        // Before the BYE, whose clean-up unregisters the phone leg.
                        h.send(HubCommand::PhoneFailed {
                            call_id: hub_call,
                            conn,
                            reason: crate::proto::signal::EndReason::new(
                                488,
                                0,
                                "the phone answered without usable audio",
                            ),
                        });
                    }
                    self.out_bye(call_id).await;
                    return;
                }
                out.state = OutState::Connected;
                tracing::info!(call_id, hub_call_id = %out.hub_call_id, "outbound call answered");
                if let Some(h) = hub {
                    h.send(HubCommand::Client {
                        conn: out.conn,
                        msg: crate::proto::signal::ClientMessage::Accept {
                            id: serde_json::json!("sip-answered"),
                            call_id: out.hub_call_id.clone(),
                        },
                    });
                }
            }
            401 | 407 if !out.authenticated && out.state != OutState::Cancelling => {
                let (challenge_header, auth_header) = if code == 401 {
                    ("WWW-Authenticate", "Authorization")
                } else {
                    ("Proxy-Authenticate", "Proxy-Authorization")
                };
                out.authenticated = true;
                let trunk = self.settings.router.trunk(out.trunk).cloned();
                let challenge = msg
                    .header(challenge_header)
                    .and_then(digest::parse_challenge);
                self.ack_failure(call_id, &to).await;
                let Some(out) = self.outs.get(call_id) else {
                    return;
                };
                let creds = trunk.and_then(|t| Some((t.username?, t.password?)));
                match (challenge, creds) {
                    (Some(c), Some((user, pass))) => {
                        let (_, _, _, uri) = self.out_addressing(out);
                        let cnonce = format!("{:016x}", rand::random::<u64>());
                        let value =
                            digest::authorization(&c, &user, &pass, "INVITE", &uri, &cnonce);
                        tracing::info!(call_id, code, realm = %c.realm, "digest challenge answered");
                        self.send_invite(call_id, Some((auth_header, value))).await;
                    }
                    _ => {
                        tracing::info!(
                            call_id,
                            code,
                            "challenge without usable credentials: call fails"
                        );
                        self.out_failed(call_id, 403, "the trunk refused our credentials")
                            .await;
                    }
                }
            }
            _ => {
                let state = out.state;
                self.ack_failure(call_id, &to).await;
                let reason = match &msg.start {
                    message::StartLine::Response { reason, .. } => reason.clone(),
                    _ => String::new(),
                };
                if state == OutState::Cancelling {
                    self.outs.remove(call_id);
                    return;
                }
                self.out_final_failure(call_id, code, &reason).await;
            }
        }
    }

    /// A final failure (or timeout, 408) of an outbound INVITE: fail over to the next trunk for 503/408, else
    /// end the browser's call with the mapped reason.
    async fn out_final_failure(&mut self, call_id: &str, code: u16, reason: &str) {
        let Some(out) = self.outs.get_mut(call_id) else {
            return;
        };
        if outbound::fails_over(code) && !out.failover.is_empty() {
            let next = out.failover.remove(0);
            tracing::info!(
                call_id,
                code,
                from = out.trunk,
                to = next,
                "outbound call: failing over to the next trunk"
            );
            out.trunk = next;
            out.authenticated = false;
            out.state = OutState::Calling;
            out.local_tag = tag();
            self.send_invite(call_id, None).await;
            return;
        }
        self.out_failed(call_id, outbound::end_code(code), reason)
            .await;
    }

    async fn out_failed(&mut self, call_id: &str, code: u16, why: &str) {
        let Some(out) = self.outs.remove(call_id) else {
            return;
        };
        tracing::info!(call_id, code, reason = why, hub_call_id = %out.hub_call_id, "outbound call failed");
        if let Some(b) = &self.settings.bridge {
            let msg = if why.is_empty() {
                format!("SIP {code}")
            } else {
                why.to_string()
            };
            b.hub.send(HubCommand::PhoneFailed {
                call_id: out.hub_call_id.clone(),
                conn: out.conn,
                reason: crate::proto::signal::EndReason::new(code, 0, msg),
            });
            b.hub.send(HubCommand::Unregister { conn: out.conn });
        }
    }

    /// Ends an answered outbound call from our side: BYE, retransmitted over UDP until answered.
    async fn out_bye(&mut self, call_id: &str) {
        let Some(out) = self.outs.get_mut(call_id) else {
            return;
        };
        out.cseq += 1;
        let cseq = out.cseq;
        let bytes = self.out_dialog_request(call_id, "BYE", cseq).await;
        metrics::counter!("switchboard_sip_requests_sent_total", "method" => "BYE").increment(1);
        if let Some(out) = self.outs.remove(call_id) {
            if let Some(b) = &self.settings.bridge {
                b.hub.send(HubCommand::Unregister { conn: out.conn });
            }
            self.byes.insert(
                call_id.to_string(),
                PendingBye {
                    peer: out.peer.clone(),
                    retransmit: Retransmit::new(bytes, Instant::now()),
                },
            );
        }
    }

    /// What the hub told an outbound call's phone leg: the caller hung up, DTMF to play.
    async fn on_out_hub_event(&mut self, call_id: &str, message: Outbound) {
        let Outbound::Message(msg) = message else {
            return;
        };
        let Some(out) = self.outs.get(call_id) else {
            return;
        };
        match msg {
            ServerMessage::IncomingCallEnded {
                call_id: hub_call, ..
            } if hub_call == out.hub_call_id && out.state != OutState::Connected => {
                // The caller hung up (or nobody answered in time) before the phone answered: CANCEL (§9.1).
                let (_, _, to, uri) = self.out_addressing(out);
                let bytes = self.out_request(
                    call_id,
                    out,
                    ("CANCEL", out.cseq, &out.branch),
                    &uri,
                    &to,
                    &[],
                    None,
                );
                let peer = out.peer.clone();
                let conn = out.conn;
                if let Some(out) = self.outs.get_mut(call_id) {
                    out.media = None;
                    out.state = OutState::Cancelling;
                    out.retransmit = None;
                }
                tracing::info!(call_id, "caller hung up before the answer: CANCEL");
                metrics::counter!("switchboard_sip_requests_sent_total", "method" => "CANCEL")
                    .increment(1);
                self.send(&peer, &bytes).await;
                if let Some(b) = &self.settings.bridge {
                    b.hub.send(HubCommand::Unregister { conn });
                }
                // Kept until the 487 (ACKed) or 32 s (timer B) pass.
                let now = Instant::now();
                if let Some(out) = self.outs.get_mut(call_id) {
                    out.retransmit = Some((now + 64 * T1, T2, now + 64 * T1));
                }
            }
            ServerMessage::CallStateChanged {
                state: "Disconnected",
                ..
            } if out.state == OutState::Connected => {
                tracing::info!(call_id, "caller hung up: BYE");
                self.out_bye(call_id).await;
            }
            ServerMessage::DtmfReceived { tone, .. } => {
                if let (Some(media), Some(d)) = (&out.media, tone.chars().next()) {
                    media.send_dtmf(d);
                }
            }
            _ => {}
        }
    }

    /// Whether a request from the trunk belongs to outbound call `call_id`'s dialog: To carries our
    /// tag, From the trunk's (RFC 3261 §12.2.2).
    fn out_dialog_matches(&self, msg: &Message, call_id: &str) -> bool {
        let Some(out) = self.outs.get(call_id) else {
            return false;
        };
        let theirs = message::header_param(&out.remote_to, "tag");
        msg.to_tag().as_deref() == Some(out.local_tag.as_str())
            && theirs.is_some()
            && msg.from_tag() == theirs
    }

    /// A re-INVITE from the trunk inside an outbound call: hold/resume, a session refresh (RFC
    /// 4028), a new media address. Its offer is negotiated with the trunk's codecs and the media
    /// follows it (`sendonly` -> we answer `recvonly` and stop sending); without an offer our 200
    /// carries our current session as the offer. The 2xx is retransmitted over UDP until the ACK.
    async fn out_reinvite(
        &mut self,
        msg: &Message,
        base: ReplyBase,
        peer: Peer,
        call_id: &str,
        cseq: u32,
    ) {
        if let Some((n, p, r)) = self.out_reinvite_oks.get(call_id)
            && *n == cseq
        {
            // A retransmission of the re-INVITE we answered.
            let (p, bytes) = (p.clone(), r.bytes.clone());
            self.send(&p, &bytes).await;
            return;
        }
        let codecs = self
            .outs
            .get(call_id)
            .and_then(|o| self.settings.router.trunk(o.trunk))
            .map(|t| t.codecs.clone())
            .unwrap_or_default();
        let local = self.local_ip(peer.addr().ip());
        let contact = self.contact(&peer);
        let Some(out) = self.outs.get_mut(call_id) else {
            return;
        };
        let unacked = self.out_reinvite_oks.contains_key(call_id);
        if out.state != OutState::Connected || out.neg.is_none() || unacked {
            // Ringing still, or our 200 to the previous re-INVITE not ACKed yet (RFC 3261 §14.2).
            let tag = out.local_tag.clone();
            self.reply(&peer, &base, (491, "Request Pending"), Some(&tag), &[], b"")
                .await;
            return;
        }
        if cseq <= out.remote_cseq {
            let tag = out.local_tag.clone();
            self.reply(
                &peer,
                &base,
                (500, "Server Internal Error"),
                Some(&tag),
                &[("Retry-After", "1".into())],
                b"",
            )
            .await;
            return;
        }
        out.remote_cseq = cseq;
        let body = match body_sdp(msg) {
            Some(Ok(offer)) => match sdp::negotiate(&offer, &codecs) {
                Ok(neg) => {
                    out.sdp_version += 1;
                    if let Some(m) = &out.media {
                        m.update(MediaParams {
                            neg: neg.clone(),
                            send: neg.answered.sends(),
                            signalling_ip: peer.addr().ip(),
                        });
                    }
                    tracing::info!(
                        call_id,
                        offered = neg.offered.as_str(),
                        answered = neg.answered.as_str(),
                        "re-INVITE from the trunk"
                    );
                    let answer = sdp::answer(
                        &offer,
                        &neg,
                        local,
                        out.port,
                        out.sdp_session,
                        out.sdp_version,
                    );
                    out.neg = Some(neg);
                    answer
                }
                Err(e) => {
                    let tag = out.local_tag.clone();
                    let warning = format!("305 switchboard \"{e}\"");
                    self.reply(
                        &peer,
                        &base,
                        (488, "Not Acceptable Here"),
                        Some(&tag),
                        &[("Warning", warning)],
                        b"",
                    )
                    .await;
                    return;
                }
            },
            Some(Err(_)) => {
                let tag = out.local_tag.clone();
                self.reply(&peer, &base, (400, "Bad Request"), Some(&tag), &[], b"")
                    .await;
                return;
            }
            // No offer: ours (the session as it is); the answer in the ACK is not needed to go on.
            None => {
                out.sdp_version += 1;
                outbound::offer_sdp(local, out.port, &codecs, out.sdp_session, out.sdp_version)
            }
        };
        let tag = out.local_tag.clone();
        let mut extra = vec![
            ("Contact", contact),
            ("Allow", ALLOW.to_string()),
            ("Supported", SUPPORTED.to_string()),
            ("Content-Type", "application/sdp".to_string()),
        ];
        if let Some(se) = msg.header("Session-Expires") {
            // Their refresh: echoed, they stay the refresher (RFC 4028 §9).
            extra.push(("Session-Expires", se.to_string()));
        }
        let bytes = self
            .reply(
                &peer,
                &base,
                (200, "OK"),
                Some(&tag),
                &extra,
                body.as_bytes(),
            )
            .await;
        let retransmit = Retransmit::new(bytes, Instant::now());
        self.out_reinvite_oks
            .insert(call_id.to_string(), (cseq, peer, retransmit));
    }

    /// BYE or INFO from the trunk in an outbound call's dialog.
    async fn out_in_dialog(
        &mut self,
        msg: &Message,
        base: ReplyBase,
        peer: Peer,
        method: &str,
        call_id: &str,
    ) {
        let Some(out) = self.outs.get(call_id) else {
            return;
        };
        let (conn, hub_call) = (out.conn, out.hub_call_id.clone());
        let hub = self.settings.bridge.as_ref().map(|b| b.hub.clone());
        if method == "BYE" {
            tracing::info!(call_id, "BYE from the phone: call ended");
            self.outs.remove(call_id);
            self.reply(&peer, &base, (200, "OK"), None, &[], b"").await;
            if let Some(h) = hub {
                h.send(HubCommand::Client {
                    conn,
                    msg: crate::proto::signal::ClientMessage::HangUp {
                        id: serde_json::json!("sip-bye"),
                        call_id: hub_call,
                        for_everyone: false,
                    },
                });
                h.send(HubCommand::Unregister { conn });
            }
            return;
        }
        let ct = msg.header("Content-Type").unwrap_or("");
        let body = String::from_utf8_lossy(&msg.body);
        if let Some((event, duration)) = dtmf::parse_info(ct, &body) {
            report_dtmf(call_id, event, DtmfSource::Info, duration);
            if let (dtmf::ToneEvent::Digit(d), Some(h)) = (event, hub) {
                h.send(HubCommand::Client {
                    conn,
                    msg: crate::proto::signal::ClientMessage::SendDtmf {
                        id: serde_json::json!("sip-dtmf"),
                        call_id: hub_call,
                        tones: d.to_string(),
                    },
                });
            }
        }
        self.reply(&peer, &base, (200, "OK"), None, &[], b"").await;
    }

    /// INVITE retransmissions (timer A) and give-ups (timer B) of outbound calls.
    async fn out_timers(&mut self, now: Instant) {
        let mut resend = Vec::new();
        let mut expired = Vec::new();
        for (id, out) in self.outs.iter_mut() {
            let Some((next, interval, deadline)) = out.retransmit else {
                continue;
            };
            if now >= deadline {
                out.retransmit = None;
                expired.push((id.clone(), out.state));
            } else if now >= next && out.state == OutState::Calling && !out.peer.reliable() {
                resend.push((out.peer.clone(), out.invite.clone()));
                let interval = (interval * 2).min(T2);
                out.retransmit = Some((now + interval, interval, deadline));
            }
        }
        for (p, b) in resend {
            self.send(&p, &b).await;
        }
        for (id, state) in expired {
            if state == OutState::Cancelling {
                self.outs.remove(&id);
            } else {
                self.out_final_failure(&id, 408, "no response from the trunk")
                    .await;
            }
        }
    }

    async fn keepalives(&mut self, now: Instant) {
        let mut sends = Vec::new();
        for p in &mut self.probes {
            let (probe, change) = p.state.poll(now);
            if change == Some(Health::Down) {
                tracing::warn!(trunk = %p.trunk, addr = %p.addr, "trunk down: OPTIONS unanswered 3 times");
                metrics::gauge!("switchboard_sip_trunk_up", "trunk" => p.trunk.clone()).set(0.0);
            }
            if let Some(call_id) = probe {
                sends.push((p.addr, call_id));
            }
        }
        for (addr, call_id) in sends {
            let ip = self.local_ip(addr.ip());
            let host = if ip.is_ipv6() {
                format!("[{ip}]")
            } else {
                ip.to_string()
            };
            let port = self.settings.sip_port;
            let req = format!(
                "OPTIONS sip:{addr} SIP/2.0\r\nVia: SIP/2.0/UDP {host}:{port};branch=z9hG4bK{b:016x};rport\r\nMax-Forwards: 70\r\nFrom: <sip:switchboard@{host}:{port}>;tag={t}\r\nTo: <sip:{addr}>\r\nCall-ID: {call_id}\r\nCSeq: 1 OPTIONS\r\nUser-Agent: {USER_AGENT}\r\nAccept: application/sdp\r\nContent-Length: 0\r\n\r\n",
                b = rand::random::<u64>(),
                t = tag(),
            );
            if let Err(e) = self.udp.send_to(req.as_bytes(), addr).await {
                tracing::debug!(%addr, error = %e, "keepalive send failed");
            }
        }
    }

    async fn handle_timers(&mut self, now: Instant) {
        self.keepalives(now).await;
        self.out_timers(now).await;
        self.session_timers(now).await;
        self.rtp_timeouts(now).await;
        self.out_reinvite_oks
            .retain(|_, (_, _, r)| now < r.deadline);
        let mut resend = Vec::new();
        for (_, peer, r) in self.out_reinvite_oks.values_mut() {
            if !peer.reliable() && now >= r.next {
                resend.push((peer.clone(), r.bytes.clone()));
                r.interval = (r.interval * 2).min(T2);
                r.next = now + r.interval;
            }
        }
        for (p, b) in resend {
            self.send(&p, &b).await;
        }
        self.finals.retain(|_, (_, until)| *until > now);
        let due: Vec<String> = self
            .calls
            .iter()
            .filter(|(_, c)| matches!(c.state, State::Ringing(at) if at <= now))
            .map(|(k, _)| k.clone())
            .collect();
        for id in due {
            self.answer(&id, now).await;
        }
        let mut sends = Vec::new();
        let mut dead = Vec::new();
        for (id, c) in self.calls.iter_mut() {
            let Some(r) = c.retransmit.as_mut() else {
                continue;
            };
            if now >= r.deadline {
                // Timer H / 2xx give-up: no ACK within 64*T1 ends the call (RFC 3261 §13.3.1.4).
                dead.push(id.clone());
                continue;
            }
            if now >= r.next {
                sends.push((c.peer.clone(), r.bytes.clone()));
                r.interval = (r.interval * 2).min(T2);
                r.next = now + r.interval;
            }
        }
        self.byes.retain(|_, b| now < b.retransmit.deadline);
        for b in self.byes.values_mut() {
            if now >= b.retransmit.next {
                sends.push((b.peer.clone(), b.retransmit.bytes.clone()));
                b.retransmit.interval = (b.retransmit.interval * 2).min(T2);
                b.retransmit.next = now + b.retransmit.interval;
            }
        }
        for (p, b) in sends {
            self.send(&p, &b).await;
        }
        for id in dead {
            tracing::warn!(call_id = %id, "no ACK for our final response: call dropped");
            self.calls.remove(&id);
        }
        metrics::gauge!("switchboard_sip_calls_active").set(self.calls.len() as f64);
    }
}

/// The `branch` of a message's top Via.
fn top_branch(msg: &Message) -> Option<String> {
    let first = message::split_list(msg.header("Via")?).into_iter().next()?;
    message::Via::parse(&first)
        .ok()?
        .branch()
        .map(str::to_string)
}

/// RFC 4028 §9 for a dialog-creating or refreshing request: its `Session-Expires`, `Min-SE`, and
/// whether its `Supported` or `Require` lists `timer`.
fn session_timer(msg: &Message) -> UasDecision {
    let supports = msg
        .headers_named("Supported")
        .chain(msg.headers_named("Require"))
        .any(timer::lists_timer);
    timer::negotiate_uas(
        msg.header("Session-Expires"),
        msg.header("Min-SE"),
        supports,
    )
}

/// `422 Session Interval Too Small` (RFC 4028 §6).
fn too_small() -> (u16, &'static str) {
    (422, "Session Interval Too Small")
}

/// The `Min-SE` header of a 422.
fn min_se_header(min_se: u32) -> [(&'static str, String); 1] {
    [("Min-SE", min_se.to_string())]
}

/// Headers of our 2xx to an INVITE or UPDATE: `Supported: timer`, and with a session timer its
/// `Session-Expires` and (the caller supports it) `Require: timer`.
fn timer_headers(t: Option<&SessionTimer>) -> Vec<(&'static str, String)> {
    let mut h = vec![("Supported", SUPPORTED.to_string())];
    if let Some(t) = t {
        h.push(("Session-Expires", t.header()));
        if t.require {
            h.push(("Require", "timer".to_string()));
        }
    }
    h
}

/// The URI of a name-addr (`"Bob" <sip:bob@h>;tag=1` -> `sip:bob@h`) or of an addr-spec
/// (`sip:bob@h;tag=1` -> `sip:bob@h`).
fn angle_uri(value: &str) -> Option<String> {
    let v = value.trim();
    if let Some(start) = v.find('<') {
        let rest = &v[start + 1..];
        let end = rest.find('>')?;
        return Some(rest[..end].trim().to_string());
    }
    let uri = v.split(';').next()?.trim();
    (!uri.is_empty()).then(|| uri.to_string())
}

fn body_sdp(msg: &Message) -> Option<Result<SessionDescription, sdp::SdpError>> {
    let ct = msg.header("Content-Type")?;
    if !ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .eq_ignore_ascii_case("application/sdp")
        || msg.body.is_empty()
    {
        return None;
    }
    Some(sdp::parse(&String::from_utf8_lossy(&msg.body)))
}

fn metric_method(m: &str) -> &'static str {
    match m {
        "INVITE" => "INVITE",
        "ACK" => "ACK",
        "CANCEL" => "CANCEL",
        "BYE" => "BYE",
        "OPTIONS" => "OPTIONS",
        "INFO" => "INFO",
        "UPDATE" => "UPDATE",
        _ => "other",
    }
}
