//! Call control: registered connections, 1:1 and group calls, their states and end reasons (docs/protocol.md).
//!
//! One task (the hub) owns all call state; WebSocket sessions talk to it by [`HubCommand`]s and receive
//! [`Outbound`] messages on their own channel. The media plane is reached through the [`MediaPlane`] trait so the
//! hub never imports an IO shell. States and end-reason codes follow the ACS Calling SDK.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde_json::json;
use tokio::sync::{mpsc, oneshot};

use crate::proto::signal::{
    Caller, ClientMessage, EndReason, OutTrackInfo, ParticipantInfo, RequestId, ServerMessage,
    Target, TrackSpec, phone_of_raw_id,
};

/// A WebSocket connection, numbered by the hub's owner.
pub type ConnId = u64;

/// Media participant id handed to the media plane (one per connection per call).
pub type MediaParticipant = u64;

/// Why the media plane refused an offer or answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MediaFailure {
    /// The server has an offer of its own outstanding (client must answer it first).
    Glare,
    /// An answer came with no server offer outstanding.
    NoPendingOffer,
    /// The SDP was refused; the text says why (no internals).
    BadSdp(String),
    /// The media plane is gone or the participant is unknown.
    Unavailable(String),
}

/// Boxed future returned by [`MediaPlane`] calls.
pub type MediaFuture<T> = Pin<Box<dyn Future<Output = Result<T, MediaFailure>> + Send>>;

/// What the hub needs of the media plane (the SFU), implemented in `app.rs` over `media::MediaHandle`.
pub trait MediaPlane: Send + Sync + 'static {
    /// Adds or renegotiates `participant` (labelled with its identity) in room `call_id` with an SDP offer whose
    /// sending m-lines carry `tracks`; resolves to the SDP answer.
    fn offer(
        &self,
        call_id: String,
        participant: MediaParticipant,
        label: String,
        sdp: String,
        tracks: Vec<TrackSpec>,
    ) -> MediaFuture<String>;
    /// Applies the client's answer to the last server offer.
    fn answer(&self, participant: MediaParticipant, sdp: String) -> MediaFuture<()>;
    /// Trickle ICE candidate line for the participant.
    fn add_candidate(&self, participant: MediaParticipant, candidate: String);
    /// The participant renders the video of its receiving m-line `mid` at `width` x `height` pixels.
    fn set_preferred_size(
        &self,
        participant: MediaParticipant,
        mid: String,
        width: u32,
        height: u32,
    );
    /// Frees the participant's media state.
    fn remove(&self, participant: MediaParticipant);
}

/// A message from the hub to one connection.
#[derive(Debug, Clone, PartialEq)]
pub enum Outbound {
    /// Send this frame.
    Message(ServerMessage),
    /// Close the socket with this code and reason.
    Close {
        /// WebSocket close code.
        code: u16,
        /// Close reason.
        reason: String,
    },
}

/// Most messages queued for one connection; a client that reads slower than that is disconnected (1008).
pub const OUTBOUND_QUEUE: usize = 1024;

/// The hub's side of one connection's outbound queue.
#[derive(Debug, Clone)]
pub struct OutboundTx {
    tx: mpsc::Sender<Outbound>,
    overflow: tokio_util::sync::CancellationToken,
}

impl OutboundTx {
    /// A bounded queue of [`OUTBOUND_QUEUE`] messages; the token is cancelled when it overflows.
    pub fn channel() -> (
        OutboundTx,
        mpsc::Receiver<Outbound>,
        tokio_util::sync::CancellationToken,
    ) {
        let (tx, rx) = mpsc::channel(OUTBOUND_QUEUE);
        let overflow = tokio_util::sync::CancellationToken::new();
        (
            OutboundTx {
                tx,
                overflow: overflow.clone(),
            },
            rx,
            overflow,
        )
    }

    /// Queues without waiting; on overflow the connection is marked for closing and the message dropped.
    pub fn send(&self, msg: Outbound) {
        if let Err(mpsc::error::TrySendError::Full(_)) = self.tx.try_send(msg) {
            self.overflow.cancel();
        }
    }
}

/// A server -> client m-line as the media plane reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaTrack {
    /// The subscriber's mid.
    pub mid: String,
    /// The publishing participant.
    pub publisher: MediaParticipant,
    /// `audio`, `camera` or `screenShare`.
    pub source: String,
}

/// Media-plane notifications the hub reacts to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MediaNotice {
    /// ICE/DTLS connected.
    Connected(MediaParticipant),
    /// The participant's media session died (ICE timeout, DTLS failure).
    Disconnected(MediaParticipant, String),
    /// The SFU renegotiates: send this offer to the participant.
    Offer {
        participant: MediaParticipant,
        sdp: String,
        tracks: Vec<MediaTrack>,
    },
    /// The room's dominant speakers changed (most dominant first).
    DominantSpeakers {
        call_id: String,
        speakers: Vec<MediaParticipant>,
    },
    /// A participant started or stopped speaking.
    Speaking {
        participant: MediaParticipant,
        speaking: bool,
    },
    /// Dynacast: `participant` should send only these simulcast layers of its m-line `mid`.
    LayersWanted {
        participant: MediaParticipant,
        mid: String,
        rids: Vec<String>,
    },
    /// `subscriber` cannot receive a track of `publisher` in codec `codec`.
    CodecUnsupported {
        subscriber: MediaParticipant,
        publisher: MediaParticipant,
        source: String,
        codec: String,
    },
}

/// A phone call the hub asks the SIP gateway to place (`startCall` to a `phoneNumber`). The hub has registered
/// the phone leg's connection (`conn`, raw id `4:+E164`, media participant `participant`); what the hub tells
/// that connection arrives on `events`. The gateway reports with [`HubCommand::PhoneProgress`],
/// [`HubCommand::PhoneFailed`], and `accept`/`hangUp`/`sendDtmf` requests from `conn`.
#[derive(Debug)]
pub struct DialRequest {
    /// The hub's call id (the SFU room).
    pub call_id: String,
    /// The number dialled, `+E164`.
    pub number: String,
    /// The caller's raw id.
    pub caller: String,
    /// The phone leg's connection.
    pub conn: ConnId,
    /// The phone leg's media participant (an SFU media agent).
    pub participant: MediaParticipant,
    /// Messages to the phone leg's connection.
    pub events: mpsc::Receiver<Outbound>,
}

/// Commands to the hub.
#[derive(Debug)]
pub enum HubCommand {
    /// Where phone calls go (the SIP gateway); without one, `startCall` to a phone number fails.
    SetDialer(mpsc::UnboundedSender<DialRequest>),
    /// The phone side of an outbound call progressed: `Ringing` (180) or `EarlyMedia` (183 with SDP).
    PhoneProgress {
        call_id: String,
        /// The phone leg's connection ([`DialRequest::conn`]).
        conn: ConnId,
        state: &'static str,
    },
    /// The phone side of an outbound call failed before answering (busy, not found, no trunk...).
    PhoneFailed {
        call_id: String,
        /// The phone leg's connection ([`DialRequest::conn`]).
        conn: ConnId,
        reason: EndReason,
    },
    /// An authenticated connection.
    Register {
        conn: ConnId,
        identity: String,
        display_name: Option<String>,
        out: OutboundTx,
    },
    /// A connection driven by the server itself: a SIP leg of the gateway (`sip::bridge`). It
    /// speaks the same protocol as a WebSocket client (requests through [`HubCommand::Client`],
    /// answers and events on `out`) but is never rung (it is not registered under `identity`), and
    /// its leg in a call uses the media participant `participant`, a media agent the gateway adds
    /// to the SFU room itself (no SDP).
    RegisterAgent {
        conn: ConnId,
        /// Raw id shown to the others, e.g. `4:+15551230000`.
        identity: String,
        display_name: Option<String>,
        participant: MediaParticipant,
        out: OutboundTx,
    },
    /// The connection closed.
    Unregister { conn: ConnId },
    /// A call-control message from the connection (requests answered through its `out`).
    Client { conn: ConnId, msg: ClientMessage },
    /// From the media plane.
    Media(MediaNotice),
    /// Close every connection of an identity (tokens revoked, identity deleted).
    Kick {
        identity: String,
        code: u16,
        reason: String,
    },
    /// Identities with at least one connection.
    Online {
        reply: oneshot::Sender<HashSet<String>>,
    },
    /// Internal: ring timer fired.
    RingTimeout { call_id: String },
    /// Internal: a media offer or answer finished (`Ok(None)` for answers).
    MediaDone {
        conn: ConnId,
        id: RequestId,
        call_id: String,
        participant: MediaParticipant,
        result: Result<Option<String>, MediaFailure>,
    },
}

/// Handle to the hub task; cheap to clone.
#[derive(Clone)]
pub struct Hub {
    tx: mpsc::UnboundedSender<HubCommand>,
    next_conn: Arc<AtomicU64>,
}

/// Hub settings.
#[derive(Debug, Clone)]
pub struct HubConfig {
    /// How long an unanswered call rings before ending with 408 (default 60 s).
    pub ring_timeout: Duration,
}

impl Default for HubConfig {
    fn default() -> Self {
        HubConfig {
            ring_timeout: Duration::from_secs(60),
        }
    }
}

impl Hub {
    /// Spawns the hub task on the current tokio runtime.
    pub fn spawn(config: HubConfig, media: Arc<dyn MediaPlane>) -> Hub {
        let (tx, rx) = mpsc::unbounded_channel();
        let hub = Hub {
            tx,
            next_conn: Arc::new(AtomicU64::new(1)),
        };
        let state = HubState {
            config,
            media,
            tx: hub.tx.downgrade(),
            conns: HashMap::new(),
            by_identity: HashMap::new(),
            calls: HashMap::new(),
            groups: HashMap::new(),
            participants: HashMap::new(),
            next_participant: 1,
            dialer: None,
            dialing: HashMap::new(),
            next_conn: hub.next_conn.clone(),
        };
        tokio::spawn(state.run(rx));
        hub
    }

    /// A fresh connection id.
    pub fn next_conn_id(&self) -> ConnId {
        self.next_conn.fetch_add(1, Ordering::Relaxed)
    }

    /// Sends a command; dropped silently when the hub has stopped (shutdown).
    pub fn send(&self, cmd: HubCommand) {
        let _ = self.tx.send(cmd);
    }

    /// Identities that have a connection now.
    pub async fn online(&self) -> HashSet<String> {
        let (reply, rx) = oneshot::channel();
        self.send(HubCommand::Online { reply });
        rx.await.unwrap_or_default()
    }
}

struct Conn {
    identity: String,
    display_name: Option<String>,
    out: OutboundTx,
    /// Set for a server-driven connection ([`HubCommand::RegisterAgent`]): its media participant.
    agent: Option<MediaParticipant>,
}

#[derive(Debug, Clone)]
struct Leg {
    conn: ConnId,
    identity: String,
    display_name: Option<String>,
    participant: MediaParticipant,
    muted: bool,
    speaking: bool,
    /// A client offer is with the SFU: server offers wait until its answer went out (else the client sees glare).
    offer_in_flight: bool,
    deferred_offer: Option<ServerMessage>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Ringing,
    Connected,
}

#[derive(Debug)]
enum Kind {
    /// A 1:1 call: the caller's leg first, the callee's after `accept`.
    OneToOne {
        callee_identity: String,
        phase: Phase,
    },
    /// A group call by group id; `organizer` (the first joiner) may end it for everyone.
    Group { group_id: String, organizer: String },
}

#[derive(Debug)]
struct Call {
    kind: Kind,
    legs: Vec<Leg>,
}

impl Call {
    fn leg_of(&self, conn: ConnId) -> Option<&Leg> {
        self.legs.iter().find(|l| l.conn == conn)
    }

    fn leg_mut(&mut self, conn: ConnId) -> Option<&mut Leg> {
        self.legs.iter_mut().find(|l| l.conn == conn)
    }

    fn ringing(&self) -> bool {
        matches!(
            self.kind,
            Kind::OneToOne {
                phase: Phase::Ringing,
                ..
            }
        )
    }
}

struct HubState {
    config: HubConfig,
    media: Arc<dyn MediaPlane>,
    tx: mpsc::WeakUnboundedSender<HubCommand>,
    conns: HashMap<ConnId, Conn>,
    by_identity: HashMap<String, HashSet<ConnId>>,
    calls: HashMap<String, Call>,
    /// Group id -> call id.
    groups: HashMap<String, String>,
    /// Media participant -> (call id, connection).
    participants: HashMap<MediaParticipant, (String, ConnId)>,
    next_participant: MediaParticipant,
    /// The SIP gateway, for calls to phone numbers.
    dialer: Option<mpsc::UnboundedSender<DialRequest>>,
    /// Phone legs being dialled into group calls (`addParticipant`): phone connection -> call id.
    dialing: HashMap<ConnId, String>,
    /// Connection ids (shared with [`Hub::next_conn_id`]): phone legs get one.
    next_conn: Arc<AtomicU64>,
}

/// End reasons used by the hub (codes and subcodes as docs/protocol.md lists them).
mod reason {
    use super::EndReason;
    pub fn normal(msg: &str) -> EndReason {
        EndReason::new(0, 0, msg)
    }
    pub fn ended_for_everyone() -> EndReason {
        EndReason::new(0, 5001, "call ended for everyone")
    }
    pub fn answered_elsewhere() -> EndReason {
        EndReason::new(0, 5003, "answered on another device")
    }
    pub fn peer_lost() -> EndReason {
        EndReason::new(0, 5010, "the other participant's connection was lost")
    }
    pub fn media_lost() -> EndReason {
        EndReason::new(0, 5020, "media connection lost")
    }
    pub fn timeout() -> EndReason {
        EndReason::new(408, 10004, "no answer")
    }
    pub fn offline() -> EndReason {
        EndReason::new(480, 10037, "callee is offline")
    }
    pub fn cancelled(msg: &str) -> EndReason {
        EndReason::new(487, 0, msg)
    }
    pub fn declined() -> EndReason {
        EndReason::new(603, 0, "call declined")
    }
    pub fn unavailable() -> EndReason {
        EndReason::new(503, 0, "the SIP gateway is not available")
    }
}

fn not_in_call(id: RequestId, call_id: &str) -> ServerMessage {
    ServerMessage::fail(
        id,
        "CallNotFound",
        format!("no call {call_id} on this connection"),
    )
}

impl HubState {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<HubCommand>) {
        while let Some(cmd) = rx.recv().await {
            self.handle(cmd);
        }
    }

    fn handle(&mut self, cmd: HubCommand) {
        match cmd {
            HubCommand::Register {
                conn,
                identity,
                display_name,
                out,
            } => {
                self.by_identity
                    .entry(identity.clone())
                    .or_default()
                    .insert(conn);
                self.conns.insert(
                    conn,
                    Conn {
                        identity,
                        display_name,
                        out,
                        agent: None,
                    },
                );
            }
            HubCommand::RegisterAgent {
                conn,
                identity,
                display_name,
                participant,
                out,
            } => {
                self.conns.insert(
                    conn,
                    Conn {
                        identity,
                        display_name,
                        out,
                        agent: Some(participant),
                    },
                );
            }
            HubCommand::Unregister { conn } => self.unregister(conn),
            HubCommand::SetDialer(tx) => self.dialer = Some(tx),
            HubCommand::PhoneProgress {
                call_id,
                conn,
                state,
            } if self.dialing.get(&conn) == Some(&call_id) => {
                if let Some(raw) = self.conns.get(&conn).map(|c| c.identity.clone()) {
                    let update = phone_info(&raw, state);
                    self.broadcast(
                        &call_id,
                        participants_updated(&call_id, vec![], vec![], vec![update]),
                    );
                }
            }
            HubCommand::PhoneProgress { call_id, state, .. } => {
                let Some(call) = self.calls.get(&call_id).filter(|c| c.ringing()) else {
                    return;
                };
                let conns: Vec<ConnId> = call.legs.iter().map(|l| l.conn).collect();
                for c in conns {
                    self.send_state(c, &call_id, state, None);
                }
            }
            HubCommand::PhoneFailed { conn, reason, .. } if self.dialing.contains_key(&conn) => {
                self.dialing_failed(conn, reason);
            }
            HubCommand::PhoneFailed {
                call_id, reason, ..
            } => {
                if self.calls.get(&call_id).is_some_and(Call::ringing) {
                    self.end_ringing(&call_id, reason.clone(), reason, None);
                }
            }
            HubCommand::Client { conn, msg } => self.client(conn, msg),
            HubCommand::Media(notice) => self.media_notice(notice),
            HubCommand::Kick {
                identity,
                code,
                reason,
            } => {
                for c in self.by_identity.get(&identity).into_iter().flatten() {
                    if let Some(conn) = self.conns.get(c) {
                        conn.out.send(Outbound::Close {
                            code,
                            reason: reason.clone(),
                        });
                    }
                }
            }
            HubCommand::Online { reply } => {
                let _ = reply.send(self.by_identity.keys().cloned().collect());
            }
            HubCommand::RingTimeout { call_id } => {
                if self.calls.get(&call_id).is_some_and(Call::ringing) {
                    self.end_ringing(&call_id, reason::timeout(), reason::timeout(), None);
                }
            }
            HubCommand::MediaDone {
                conn,
                id,
                call_id,
                participant,
                result,
            } => self.media_done(conn, id, call_id, participant, result),
        }
    }

    fn media_done(
        &mut self,
        conn: ConnId,
        id: RequestId,
        call_id: String,
        participant: MediaParticipant,
        result: Result<Option<String>, MediaFailure>,
    ) {
        let live = self
            .calls
            .get(&call_id)
            .and_then(|c| c.leg_of(conn))
            .is_some_and(|l| l.participant == participant);
        if !live {
            // The call ended while the SFU worked: free what the offer may have created.
            self.media.remove(participant);
            self.send(
                conn,
                ServerMessage::fail(id, "CallNotFound", format!("call {call_id} has ended")),
            );
            return;
        }
        let msg = match result {
            Ok(Some(sdp)) => ServerMessage::ok(id, json!({ "type": "answer", "sdp": sdp })),
            Ok(None) => ServerMessage::ok(id, json!({})),
            Err(MediaFailure::Glare) => ServerMessage::fail(
                id,
                "Glare",
                "the server has an offer outstanding on this call: answer it, then offer again",
            ),
            Err(MediaFailure::NoPendingOffer) => {
                ServerMessage::fail(id, "NoPendingOffer", "there is no server offer to answer")
            }
            Err(MediaFailure::BadSdp(e)) => {
                ServerMessage::fail(id, "BadSdp", sanitize_sdp_error(&e))
            }
            Err(MediaFailure::Unavailable(e)) => ServerMessage::fail(id, "MediaUnavailable", e),
        };
        self.send(conn, msg);
        let deferred = self
            .calls
            .get_mut(&call_id)
            .and_then(|c| c.leg_mut(conn))
            .and_then(|leg| {
                leg.offer_in_flight = false;
                leg.deferred_offer.take()
            });
        if let Some(offer) = deferred {
            self.send(conn, offer);
        }
    }

    fn send(&self, conn: ConnId, msg: ServerMessage) {
        if let Some(c) = self.conns.get(&conn) {
            c.out.send(Outbound::Message(msg));
        }
    }

    fn send_state(
        &self,
        conn: ConnId,
        call_id: &str,
        state: &'static str,
        end_reason: Option<EndReason>,
    ) {
        self.send(
            conn,
            ServerMessage::CallStateChanged {
                call_id: call_id.to_string(),
                state,
                end_reason,
            },
        );
    }

    fn identity_conns(&self, identity: &str) -> Vec<ConnId> {
        let mut v: Vec<ConnId> = self
            .by_identity
            .get(identity)
            .into_iter()
            .flatten()
            .copied()
            .collect();
        v.sort_unstable();
        v
    }

    fn identity_of(&self, participant: MediaParticipant) -> Option<String> {
        let (call_id, conn) = self.participants.get(&participant)?;
        match self.calls.get(call_id)?.leg_of(*conn) {
            Some(l) => Some(l.identity.clone()),
            // A phone leg before the answer (early media): its connection is not a leg yet.
            None => self.conns.get(conn).map(|c| c.identity.clone()),
        }
    }

    /// Calls the connection is a leg of or is ringing out from.
    fn calls_of(&self, conn: ConnId) -> usize {
        self.calls
            .values()
            .filter(|c| c.leg_of(conn).is_some())
            .count()
    }

    /// A new leg for `conn` in `call_id`, with a fresh media participant.
    fn leg(&mut self, conn: ConnId, call_id: &str) -> Option<Leg> {
        let c = self.conns.get(&conn)?;
        let (identity, display_name) = (c.identity.clone(), c.display_name.clone());
        let participant = match c.agent {
            Some(p) => p,
            None => {
                self.next_participant += 1;
                self.next_participant - 1
            }
        };
        self.participants
            .insert(participant, (call_id.to_string(), conn));
        Some(Leg {
            conn,
            identity,
            display_name,
            participant,
            muted: false,
            speaking: false,
            offer_in_flight: false,
            deferred_offer: None,
        })
    }

    fn free_leg(&mut self, leg: &Leg) {
        self.media.remove(leg.participant);
        self.participants.remove(&leg.participant);
    }

    fn client(&mut self, conn: ConnId, msg: ClientMessage) {
        match msg {
            ClientMessage::StartCall { id, targets, video } => {
                self.start_call(conn, id, targets, video)
            }
            ClientMessage::Join { id, group_id, .. } => self.join(conn, id, group_id),
            ClientMessage::AddParticipant {
                id,
                call_id,
                target,
            } => self.add_participant(conn, id, &call_id, target),
            ClientMessage::Accept { id, call_id } => self.accept(conn, id, &call_id),
            ClientMessage::Reject { id, call_id } => self.reject(conn, id, &call_id),
            ClientMessage::HangUp {
                id,
                call_id,
                for_everyone,
            } => self.hang_up(conn, id, &call_id, for_everyone),
            ClientMessage::Offer {
                id,
                call_id,
                sdp,
                tracks,
            } => self.offer(conn, id, call_id, sdp, tracks),
            ClientMessage::Answer { id, call_id, sdp } => self.answer(conn, id, call_id, sdp),
            ClientMessage::SetPreferredVideoSize {
                id,
                call_id,
                mid,
                width,
                height,
            } => match self.calls.get(&call_id).and_then(|c| c.leg_of(conn)) {
                Some(leg) => {
                    self.media
                        .set_preferred_size(leg.participant, mid, width, height);
                    self.send(conn, ServerMessage::ok(id, json!({})));
                }
                None => self.send(conn, not_in_call(id, &call_id)),
            },
            ClientMessage::Mute { id, call_id } => self.set_muted(conn, id, &call_id, true),
            ClientMessage::Unmute { id, call_id } => self.set_muted(conn, id, &call_id, false),
            ClientMessage::IceCandidate { call_id, candidate } => {
                if let Some(leg) = self.calls.get(&call_id).and_then(|c| c.leg_of(conn)) {
                    self.media
                        .add_candidate(leg.participant, candidate.candidate);
                }
            }
            ClientMessage::Auth { id, .. } => self.send(
                conn,
                ServerMessage::fail(
                    id,
                    "AlreadyAuthenticated",
                    "this connection is already authenticated",
                ),
            ),
            ClientMessage::Ping { id } => {
                self.send(conn, ServerMessage::ok(id, json!({ "pong": true })))
            }
            ClientMessage::SendDtmf { id, call_id, tones } => {
                self.send_dtmf(conn, id, &call_id, &tones)
            }
        }
    }

    fn too_many_calls(&self, conn: ConnId, id: &RequestId) -> bool {
        if self.calls_of(conn) < MAX_CALLS_PER_CONNECTION {
            return false;
        }
        let msg = format!(
            "a connection may take part in at most {MAX_CALLS_PER_CONNECTION} calls at once"
        );
        self.send(conn, ServerMessage::fail(id.clone(), "TooManyCalls", msg));
        true
    }

    fn start_call(&mut self, conn: ConnId, id: RequestId, targets: Vec<Target>, video: bool) {
        let [target] = targets.as_slice() else {
            let n = targets.len();
            let msg = format!("a 1:1 call needs exactly one target, got {n}");
            return self.send(conn, ServerMessage::fail(id, "BadTarget", msg));
        };
        if let Some(number) = &target.phone_number {
            return self.start_phone_call(conn, id, number.clone());
        }
        let callee = target.communication_user_id.clone();
        if !is_communication_user_id(&callee) {
            let msg = "target is not a communication user id (8:acs:{resourceId}_{uuid})";
            return self.send(conn, ServerMessage::fail(id, "BadTarget", msg));
        }
        if self.too_many_calls(conn, &id) {
            return;
        }
        if self.conns.get(&conn).is_some_and(|c| c.identity == callee) {
            return self.send(
                conn,
                ServerMessage::fail(id, "SelfCall", "an identity cannot call itself"),
            );
        }
        let call_id = uuid::Uuid::new_v4().to_string();
        let Some(caller) = self.leg(conn, &call_id) else {
            return;
        };
        self.send(conn, ServerMessage::ok(id, json!({ "callId": call_id })));
        self.send_state(conn, &call_id, "Connecting", None);
        let callee_conns = self.identity_conns(&callee);
        if callee_conns.is_empty() {
            self.free_leg(&caller);
            self.send_state(conn, &call_id, "Disconnected", Some(reason::offline()));
            return;
        }
        for c in &callee_conns {
            self.send(
                *c,
                ServerMessage::IncomingCall {
                    call_id: call_id.clone(),
                    caller: Caller::from_raw_id(&caller.identity),
                    caller_display_name: caller.display_name.clone(),
                    video,
                },
            );
        }
        self.send_state(conn, &call_id, "Ringing", None);
        tracing::info!(call_id, caller = %caller.identity, callee = %callee, "call ringing");
        metrics::counter!("switchboard_calls_started_total", "kind" => "1:1").increment(1);
        let kind = Kind::OneToOne {
            callee_identity: callee,
            phase: Phase::Ringing,
        };
        self.calls.insert(
            call_id.clone(),
            Call {
                kind,
                legs: vec![caller],
            },
        );
        self.update_gauges();
        if let Some(tx) = self.tx.upgrade() {
            let ring = self.config.ring_timeout;
            tokio::spawn(async move {
                tokio::time::sleep(ring).await;
                let _ = tx.send(HubCommand::RingTimeout { call_id });
            });
        }
    }

    /// `startCall` to a phone number: the SIP gateway places the call ([`DialRequest`]); its connection for the
    /// phone leg is registered here, under the number's raw id, so that the call's end while ringing reaches it
    /// (`incomingCallEnded`) like any callee's.
    fn start_phone_call(&mut self, conn: ConnId, id: RequestId, number: String) {
        let Some(dialer) = self.dialer_for(conn, &id, &number) else {
            return;
        };
        if self.too_many_calls(conn, &id) {
            return;
        }
        let call_id = uuid::Uuid::new_v4().to_string();
        let Some(caller) = self.leg(conn, &call_id) else {
            return;
        };
        let (phone_conn, participant, events) = self.register_phone(&call_id, &number);
        let raw = format!("4:{number}");
        self.send(conn, ServerMessage::ok(id, json!({ "callId": call_id })));
        self.send_state(conn, &call_id, "Connecting", None);
        tracing::info!(call_id, caller = %caller.identity, %number, "phone call: dialling");
        metrics::counter!("switchboard_calls_started_total", "kind" => "phone").increment(1);
        let request = DialRequest {
            call_id: call_id.clone(),
            number,
            caller: caller.identity.clone(),
            conn: phone_conn,
            participant,
            events,
        };
        self.calls.insert(
            call_id.clone(),
            Call {
                kind: Kind::OneToOne {
                    callee_identity: raw,
                    phase: Phase::Ringing,
                },
                legs: vec![caller],
            },
        );
        self.update_gauges();
        if dialer.send(request).is_err() {
            self.end_ringing(&call_id, reason::unavailable(), reason::unavailable(), None);
            return;
        }
        if let Some(tx) = self.tx.upgrade() {
            let ring = self.config.ring_timeout;
            tokio::spawn(async move {
                tokio::time::sleep(ring).await;
                let _ = tx.send(HubCommand::RingTimeout { call_id });
            });
        }
    }

    /// The SIP gateway's dialer for a call to `number` (`+E164`), or a failed response to `id`.
    fn dialer_for(
        &self,
        conn: ConnId,
        id: &RequestId,
        number: &str,
    ) -> Option<mpsc::UnboundedSender<DialRequest>> {
        let digits = number.strip_prefix('+').unwrap_or("");
        if digits.is_empty() || digits.len() > 15 || !digits.bytes().all(|b| b.is_ascii_digit()) {
            let msg = "phoneNumber must be E.164: + and 1 to 15 digits";
            self.send(conn, ServerMessage::fail(id.clone(), "BadTarget", msg));
            return None;
        }
        if self.dialer.is_none() {
            let msg = "phone numbers cannot be called: no SIP gateway runs";
            self.send(conn, ServerMessage::fail(id.clone(), "BadTarget", msg));
        }
        self.dialer.clone()
    }

    /// Registers the connection of a phone leg of `call_id` (raw id `4:+E164`, a media agent
    /// participant), as the SIP gateway's [`DialRequest`] needs it.
    fn register_phone(
        &mut self,
        call_id: &str,
        number: &str,
    ) -> (ConnId, MediaParticipant, mpsc::Receiver<Outbound>) {
        let raw = format!("4:{number}");
        let phone_conn = self.next_conn.fetch_add(1, Ordering::Relaxed);
        let participant = self.next_participant;
        self.next_participant += 1;
        let (out, events, _overflow) = OutboundTx::channel();
        self.conns.insert(
            phone_conn,
            Conn {
                identity: raw.clone(),
                display_name: None,
                out,
                agent: Some(participant),
            },
        );
        self.by_identity.entry(raw).or_default().insert(phone_conn);
        self.participants
            .insert(participant, (call_id.to_string(), phone_conn));
        (phone_conn, participant, events)
    }

    /// `addParticipant` with a phone number in a group call: the SIP gateway dials it; the call's
    /// members see the phone as a participant `Connecting` (then `Ringing`/`EarlyMedia` as the
    /// trunk reports), `Connected` once it answers (its `accept`, [`HubState::accept`]), or removed
    /// when it fails.
    fn add_participant(&mut self, conn: ConnId, id: RequestId, call_id: &str, target: Target) {
        let Some(call) = self.calls.get(call_id).filter(|c| c.leg_of(conn).is_some()) else {
            return self.send(conn, not_in_call(id, call_id));
        };
        if !matches!(call.kind, Kind::Group { .. }) {
            let msg = "participants are added to group calls; a 1:1 call has its two";
            return self.send(conn, ServerMessage::fail(id, "InvalidState", msg));
        }
        let Some(number) = target.phone_number else {
            let msg = "only phone numbers can be added (target {phoneNumber})";
            return self.send(conn, ServerMessage::fail(id, "BadTarget", msg));
        };
        let raw = format!("4:{number}");
        if call.legs.iter().any(|l| l.identity == raw)
            || self.dialing.iter().any(|(c, id)| {
                id == call_id && self.conns.get(c).is_some_and(|c| c.identity == raw)
            })
        {
            let msg = "that number is in the call already";
            return self.send(conn, ServerMessage::fail(id, "AlreadyJoined", msg));
        }
        if self.dialing.values().filter(|c| *c == call_id).count() >= MAX_DIALING_PER_CALL {
            let msg = format!(
                "{MAX_DIALING_PER_CALL} phone numbers are being dialled into this call already"
            );
            return self.send(conn, ServerMessage::fail(id, "TooManyCalls", msg));
        }
        let Some(dialer) = self.dialer_for(conn, &id, &number) else {
            return;
        };
        let adder = self
            .conns
            .get(&conn)
            .map(|c| c.identity.clone())
            .unwrap_or_default();
        let (phone_conn, participant, events) = self.register_phone(call_id, &number);
        self.dialing.insert(phone_conn, call_id.to_string());
        let pending = phone_info(&raw, "Connecting");
        self.send(
            conn,
            ServerMessage::ok(id, json!({ "participant": pending })),
        );
        self.broadcast(
            call_id,
            participants_updated(call_id, vec![pending], vec![], vec![]),
        );
        tracing::info!(call_id, adder = %adder, %number, "adding a phone number to a group call: dialling");
        metrics::counter!("switchboard_calls_started_total", "kind" => "phone_added").increment(1);
        let request = DialRequest {
            call_id: call_id.to_string(),
            number,
            caller: adder,
            conn: phone_conn,
            participant,
            events,
        };
        if dialer.send(request).is_err() {
            self.dialing_failed(phone_conn, reason::unavailable());
        }
    }

    /// A phone being dialled into a group call failed (or was cancelled): the members see it
    /// removed. Its connection is unregistered by the gateway.
    fn dialing_failed(&mut self, phone_conn: ConnId, why: EndReason) {
        let Some(call_id) = self.dialing.remove(&phone_conn) else {
            return;
        };
        let Some(raw) = self.conns.get(&phone_conn).map(|c| c.identity.clone()) else {
            return;
        };
        tracing::info!(call_id, phone = %raw, code = why.code, "phone not added to the group call");
        self.broadcast(
            &call_id,
            participants_updated(
                &call_id,
                vec![],
                vec![phone_info(&raw, "Disconnected")],
                vec![],
            ),
        );
    }

    /// Phones still being dialled into `call_id`, which ended: the gateway cancels them.
    fn cancel_dialing(&mut self, call_id: &str) {
        let phones: Vec<ConnId> = self
            .dialing
            .iter()
            .filter(|(_, c)| *c == call_id)
            .map(|(p, _)| *p)
            .collect();
        for p in phones {
            self.dialing.remove(&p);
            self.send(
                p,
                ServerMessage::IncomingCallEnded {
                    call_id: call_id.to_string(),
                    end_reason: reason::cancelled("the group call ended"),
                },
            );
        }
    }

    /// Sends `msg` to every leg of `call_id`.
    fn broadcast(&self, call_id: &str, msg: ServerMessage) {
        if let Some(call) = self.calls.get(call_id) {
            for l in &call.legs {
                self.send(l.conn, msg.clone());
            }
        }
    }

    fn join(&mut self, conn: ConnId, id: RequestId, group_id: String) {
        let Ok(parsed) = uuid::Uuid::parse_str(&group_id) else {
            return self.send(
                conn,
                ServerMessage::fail(id, "BadGroupId", "groupId must be a UUID"),
            );
        };
        let group_id = parsed.hyphenated().to_string();
        let existing = self.groups.get(&group_id).cloned();
        if existing
            .as_ref()
            .and_then(|c| self.calls.get(c))
            .is_some_and(|c| c.leg_of(conn).is_some())
        {
            let msg = "this connection is in that group call already";
            return self.send(conn, ServerMessage::fail(id, "AlreadyJoined", msg));
        }
        if self.too_many_calls(conn, &id) {
            return;
        }
        let call_id = existing.unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        let Some(leg) = self.leg(conn, &call_id) else {
            return;
        };
        let call = self.calls.entry(call_id.clone()).or_insert_with(|| {
            metrics::counter!("switchboard_calls_started_total", "kind" => "group").increment(1);
            Call {
                kind: Kind::Group {
                    group_id: group_id.clone(),
                    organizer: leg.identity.clone(),
                },
                legs: Vec::new(),
            }
        });
        self.groups.insert(group_id.clone(), call_id.clone());
        let others: Vec<ParticipantInfo> = call.legs.iter().map(|l| info(l, "Connected")).collect();
        let other_conns: Vec<ConnId> = call.legs.iter().map(|l| l.conn).collect();
        let me = info(&leg, "Connected");
        call.legs.push(leg);
        self.send(
            conn,
            ServerMessage::ok(id, json!({ "callId": call_id, "participants": others })),
        );
        self.send_state(conn, &call_id, "Connected", None);
        for o in other_conns {
            self.send(
                o,
                participants_updated(&call_id, vec![me.clone()], vec![], vec![]),
            );
        }
        tracing::info!(call_id, group_id, "joined group call");
        self.update_gauges();
    }

    /// The call if `conn` may answer it (its identity is the callee) and it still rings.
    fn ringing_for(&self, conn: ConnId, call_id: &str) -> Result<&Call, (&'static str, String)> {
        let identity = self.conns.get(&conn).map(|c| c.identity.as_str());
        match self.calls.get(call_id) {
            Some(
                call @ Call {
                    kind:
                        Kind::OneToOne {
                            callee_identity,
                            phase,
                        },
                    ..
                },
            ) if Some(callee_identity.as_str()) == identity => {
                if *phase == Phase::Ringing {
                    Ok(call)
                } else {
                    Err((
                        "InvalidState",
                        format!("call {call_id} was already answered"),
                    ))
                }
            }
            _ => Err((
                "CallNotFound",
                format!("no incoming call {call_id} for this connection"),
            )),
        }
    }

    fn accept(&mut self, conn: ConnId, id: RequestId, call_id: &str) {
        if self.dialing.get(&conn).is_some_and(|c| c == call_id) {
            return self.phone_added(conn, id, call_id);
        }
        if let Err((code, msg)) = self.ringing_for(conn, call_id) {
            return self.send(conn, ServerMessage::fail(id, code, msg));
        }
        if self.too_many_calls(conn, &id) {
            return;
        }
        let Some(callee) = self.leg(conn, call_id) else {
            return;
        };
        let Some(call) = self.calls.get_mut(call_id) else {
            return;
        };
        let Kind::OneToOne {
            callee_identity,
            phase,
        } = &mut call.kind
        else {
            return;
        };
        *phase = Phase::Connected;
        let callee_identity = callee_identity.clone();
        let caller = call.legs[0].clone();
        call.legs.push(callee.clone());
        self.send(conn, ServerMessage::ok(id, json!({})));
        for other in self.identity_conns(&callee_identity) {
            if other != conn {
                let end_reason = reason::answered_elsewhere();
                self.send(
                    other,
                    ServerMessage::IncomingCallEnded {
                        call_id: call_id.into(),
                        end_reason,
                    },
                );
            }
        }
        for (me, them) in [(&caller, &callee), (&callee, &caller)] {
            self.send_state(me.conn, call_id, "Connected", None);
            self.send(
                me.conn,
                participants_updated(call_id, vec![info(them, "Connected")], vec![], vec![]),
            );
        }
        tracing::info!(call_id, "call connected");
        self.update_gauges();
    }

    /// The phone dialled into group call `call_id` answered: it becomes a leg, `Connected` for all.
    fn phone_added(&mut self, conn: ConnId, id: RequestId, call_id: &str) {
        self.dialing.remove(&conn);
        let Some(leg) = self.leg(conn, call_id) else {
            return;
        };
        let Some(call) = self.calls.get_mut(call_id) else {
            // The call ended as the phone answered: the gateway hangs the phone up.
            self.free_leg(&leg);
            return self.send_state(
                conn,
                call_id,
                "Disconnected",
                Some(reason::cancelled("the group call ended")),
            );
        };
        let others: Vec<ParticipantInfo> = call.legs.iter().map(|l| info(l, "Connected")).collect();
        let me = info(&leg, "Connected");
        call.legs.push(leg);
        self.send(
            conn,
            ServerMessage::ok(id, json!({ "callId": call_id, "participants": others })),
        );
        self.send_state(conn, call_id, "Connected", None);
        self.broadcast(
            call_id,
            participants_updated(call_id, vec![me], vec![], vec![]),
        );
        tracing::info!(call_id, "phone added to the group call: connected");
        self.update_gauges();
    }

    fn reject(&mut self, conn: ConnId, id: RequestId, call_id: &str) {
        if let Err((code, msg)) = self.ringing_for(conn, call_id) {
            return self.send(conn, ServerMessage::fail(id, code, msg));
        }
        self.send(conn, ServerMessage::ok(id, json!({})));
        self.end_ringing(call_id, reason::declined(), reason::declined(), Some(conn));
    }

    fn hang_up(&mut self, conn: ConnId, id: RequestId, call_id: &str, for_everyone: bool) {
        let Some(call) = self.calls.get(call_id) else {
            return self.send(conn, not_in_call(id, call_id));
        };
        if call.leg_of(conn).is_none() {
            let msg = if self.ringing_for(conn, call_id).is_ok() {
                "an incoming call is declined with reject, not hangUp"
            } else {
                "this connection is not in the call"
            };
            return self.send(conn, ServerMessage::fail(id, "InvalidState", msg));
        }
        match &call.kind {
            Kind::OneToOne {
                phase: Phase::Ringing,
                ..
            } => {
                self.send(conn, ServerMessage::ok(id, json!({})));
                self.end_ringing(
                    call_id,
                    reason::cancelled("call cancelled"),
                    reason::cancelled("caller hung up"),
                    None,
                )
            }
            Kind::OneToOne {
                phase: Phase::Connected,
                ..
            } => {
                self.send(conn, ServerMessage::ok(id, json!({})));
                let (to_self, to_peer) = (
                    reason::normal("call ended"),
                    reason::normal("remote participant hung up"),
                );
                self.end_call(call_id, Some(conn), to_self, to_peer);
            }
            Kind::Group { organizer, .. } if for_everyone => {
                let me = self.conns.get(&conn).map(|c| c.identity.as_str());
                if me != Some(organizer.as_str()) {
                    let msg = "only the organizer (first joiner) may end a group call for everyone";
                    return self.send(conn, ServerMessage::fail(id, "Forbidden", msg));
                }
                self.send(conn, ServerMessage::ok(id, json!({})));
                self.end_call(
                    call_id,
                    Some(conn),
                    reason::ended_for_everyone(),
                    reason::ended_for_everyone(),
                );
            }
            Kind::Group { .. } => {
                self.send(conn, ServerMessage::ok(id, json!({})));
                self.leave_group(call_id, conn, Some(reason::normal("left the call")));
            }
        }
    }

    fn offer(
        &mut self,
        conn: ConnId,
        id: RequestId,
        call_id: String,
        sdp: String,
        tracks: Vec<TrackSpec>,
    ) {
        let Some(leg) = self.calls.get_mut(&call_id).and_then(|c| c.leg_mut(conn)) else {
            return self.send(conn, not_in_call(id, &call_id));
        };
        let m_lines = sending_m_lines(&sdp);
        if m_lines > MAX_M_LINES {
            let msg =
                format!("an offer may have at most {MAX_M_LINES} sending m-lines, got {m_lines}");
            return self.send(conn, ServerMessage::fail(id, "BadSdp", msg));
        }
        leg.offer_in_flight = true;
        let (participant, label) = (leg.participant, leg.identity.clone());
        let fut = self
            .media
            .offer(call_id.clone(), participant, label, sdp, tracks);
        self.spawn_media(conn, id, call_id, participant, async move {
            fut.await.map(Some)
        });
    }

    fn answer(&mut self, conn: ConnId, id: RequestId, call_id: String, sdp: String) {
        let Some(leg) = self.calls.get(&call_id).and_then(|c| c.leg_of(conn)) else {
            return self.send(conn, not_in_call(id, &call_id));
        };
        let participant = leg.participant;
        let fut = self.media.answer(participant, sdp);
        self.spawn_media(conn, id, call_id, participant, async move {
            fut.await.map(|()| None)
        });
    }

    fn spawn_media(
        &self,
        conn: ConnId,
        id: RequestId,
        call_id: String,
        participant: MediaParticipant,
        fut: impl Future<Output = Result<Option<String>, MediaFailure>> + Send + 'static,
    ) {
        let Some(tx) = self.tx.upgrade() else { return };
        tokio::spawn(async move {
            let result = fut.await;
            let _ = tx.send(HubCommand::MediaDone {
                conn,
                id,
                call_id,
                participant,
                result,
            });
        });
    }

    fn set_muted(&mut self, conn: ConnId, id: RequestId, call_id: &str, muted: bool) {
        let Some(leg) = self.calls.get_mut(call_id).and_then(|c| c.leg_mut(conn)) else {
            return self.send(conn, not_in_call(id, call_id));
        };
        leg.muted = muted;
        self.send(conn, ServerMessage::ok(id, json!({})));
        self.announce_update(call_id, conn);
    }

    /// `sendDtmf`: each tone goes to every other leg of the call as `dtmfReceived` (a phone leg
    /// plays it as RFC 4733 events). Only a connected call carries tones.
    fn send_dtmf(&mut self, conn: ConnId, id: RequestId, call_id: &str, tones: &str) {
        let Some(call) = self.calls.get(call_id) else {
            return self.send(conn, not_in_call(id, call_id));
        };
        if call.leg_of(conn).is_none() {
            return self.send(conn, not_in_call(id, call_id));
        }
        if call.ringing() {
            let msg = "DTMF can be sent once the call is connected";
            return self.send(conn, ServerMessage::fail(id, "InvalidState", msg));
        }
        let others: Vec<ConnId> = call
            .legs
            .iter()
            .filter(|l| l.conn != conn)
            .map(|l| l.conn)
            .collect();
        self.send(conn, ServerMessage::ok(id, json!({})));
        tracing::info!(call_id, tones, legs = others.len(), "DTMF sent");
        for tone in tones.chars() {
            for o in &others {
                self.send(
                    *o,
                    ServerMessage::DtmfReceived {
                        call_id: call_id.to_string(),
                        tone: tone.to_string(),
                    },
                );
            }
        }
    }

    /// Tells the other legs of the call about `conn`'s leg (`participantsUpdated` with it in `updated`).
    fn announce_update(&self, call_id: &str, conn: ConnId) {
        let Some(call) = self.calls.get(call_id) else {
            return;
        };
        let Some(leg) = call.leg_of(conn) else { return };
        let me = info(leg, "Connected");
        for other in call.legs.iter().filter(|l| l.conn != conn) {
            self.send(
                other.conn,
                participants_updated(call_id, vec![], vec![], vec![me.clone()]),
            );
        }
    }

    /// Ends a ringing 1:1 call: the caller gets `to_caller`, the callee's connections (but `except`) `to_callee`.
    fn end_ringing(
        &mut self,
        call_id: &str,
        to_caller: EndReason,
        to_callee: EndReason,
        except: Option<ConnId>,
    ) {
        let Some(call) = self.calls.remove(call_id) else {
            return;
        };
        let Kind::OneToOne {
            callee_identity, ..
        } = &call.kind
        else {
            return;
        };
        // A phone callee's media agent joins the room at early media (183), before it is a leg: free it too.
        let stray: Vec<MediaParticipant> = self
            .participants
            .iter()
            .filter(|(_, (c, conn))| c == call_id && call.leg_of(*conn).is_none())
            .map(|(p, _)| *p)
            .collect();
        for p in stray {
            self.media.remove(p);
            self.participants.remove(&p);
        }
        for leg in &call.legs {
            self.free_leg(leg);
            self.send_state(leg.conn, call_id, "Disconnected", Some(to_caller.clone()));
        }
        for c in self.identity_conns(callee_identity) {
            if Some(c) != except {
                let end_reason = to_callee.clone();
                self.send(
                    c,
                    ServerMessage::IncomingCallEnded {
                        call_id: call_id.into(),
                        end_reason,
                    },
                );
            }
        }
        tracing::info!(call_id, code = to_caller.code, "call ended before answer");
        metrics::counter!("switchboard_calls_ended_total", "code" => to_caller.code.to_string())
            .increment(1);
        self.update_gauges();
    }

    /// Ends a call for every leg: `by` gets `to_self`, the others `to_peer`.
    fn end_call(
        &mut self,
        call_id: &str,
        by: Option<ConnId>,
        to_self: EndReason,
        to_peer: EndReason,
    ) {
        let Some(call) = self.calls.remove(call_id) else {
            return;
        };
        if let Kind::Group { group_id, .. } = &call.kind {
            self.groups.remove(group_id);
            self.cancel_dialing(call_id);
        }
        for leg in &call.legs {
            self.free_leg(leg);
            let r = if Some(leg.conn) == by {
                to_self.clone()
            } else {
                to_peer.clone()
            };
            self.send_state(leg.conn, call_id, "Disconnected", Some(r));
        }
        tracing::info!(
            call_id,
            code = to_peer.code,
            subcode = to_peer.subcode,
            "call ended"
        );
        metrics::counter!("switchboard_calls_ended_total", "code" => to_peer.code.to_string())
            .increment(1);
        self.update_gauges();
    }

    /// Removes `conn`'s leg from a group call; it gets `to_leaver` (None when its socket is gone), the others
    /// `participantsUpdated` with it removed. The call ends when nobody is left.
    fn leave_group(&mut self, call_id: &str, conn: ConnId, to_leaver: Option<EndReason>) {
        let Some(call) = self.calls.get_mut(call_id) else {
            return;
        };
        let Some(pos) = call.legs.iter().position(|l| l.conn == conn) else {
            return;
        };
        let leg = call.legs.remove(pos);
        let others: Vec<ConnId> = call.legs.iter().map(|l| l.conn).collect();
        let empty = call.legs.is_empty();
        self.free_leg(&leg);
        if let Some(r) = to_leaver {
            self.send_state(conn, call_id, "Disconnected", Some(r));
        }
        let gone = info(&leg, "Disconnected");
        for o in others {
            self.send(
                o,
                participants_updated(call_id, vec![], vec![gone.clone()], vec![]),
            );
        }
        if empty && let Some(call) = self.calls.remove(call_id) {
            if let Kind::Group { group_id, .. } = call.kind {
                self.groups.remove(&group_id);
            }
            self.cancel_dialing(call_id);
            tracing::info!(call_id, "group call ended: nobody left");
        }
        self.update_gauges();
    }

    fn unregister(&mut self, conn: ConnId) {
        if self.dialing.contains_key(&conn) {
            self.dialing_failed(conn, reason::cancelled("the phone leg ended"));
        }
        let Some(c) = self.conns.remove(&conn) else {
            return;
        };
        if let Some(set) = self.by_identity.get_mut(&c.identity) {
            set.remove(&conn);
            if set.is_empty() {
                self.by_identity.remove(&c.identity);
            }
        }
        let callee_gone = !self.by_identity.contains_key(&c.identity);
        let affected: Vec<String> = self
            .calls
            .iter()
            .filter(|(_, call)| {
                call.leg_of(conn).is_some()
                    || matches!(&call.kind, Kind::OneToOne { callee_identity, phase: Phase::Ringing } if *callee_identity == c.identity)
            })
            .map(|(id, _)| id.clone())
            .collect();
        for call_id in affected {
            let Some(call) = self.calls.get(&call_id) else {
                continue;
            };
            let is_leg = call.leg_of(conn).is_some();
            match (&call.kind, is_leg) {
                (
                    Kind::OneToOne {
                        phase: Phase::Ringing,
                        ..
                    },
                    true,
                ) => self.end_ringing(
                    &call_id,
                    reason::cancelled("connection closed"),
                    reason::cancelled("caller disconnected"),
                    None,
                ),
                (
                    Kind::OneToOne {
                        phase: Phase::Ringing,
                        ..
                    },
                    false,
                ) if callee_gone => {
                    self.end_ringing(&call_id, reason::offline(), reason::offline(), None)
                }
                (
                    Kind::OneToOne {
                        phase: Phase::Ringing,
                        ..
                    },
                    false,
                ) => {}
                (
                    Kind::OneToOne {
                        phase: Phase::Connected,
                        ..
                    },
                    _,
                ) => self.end_call(
                    &call_id,
                    Some(conn),
                    reason::peer_lost(),
                    reason::peer_lost(),
                ),
                (Kind::Group { .. }, _) => self.leave_group(&call_id, conn, None),
            }
        }
    }

    fn media_notice(&mut self, notice: MediaNotice) {
        match notice {
            MediaNotice::Connected(p) => tracing::debug!(participant = p, "media connected"),
            MediaNotice::Disconnected(p, why) => {
                let Some((call_id, conn)) = self.participants.get(&p).cloned() else {
                    return;
                };
                let Some(call) = self.calls.get(&call_id) else {
                    return;
                };
                tracing::info!(call_id, participant = p, reason = %why, "media lost");
                match call.kind {
                    Kind::OneToOne {
                        phase: Phase::Connected,
                        ..
                    } => self.end_call(
                        &call_id,
                        Some(conn),
                        reason::media_lost(),
                        reason::media_lost(),
                    ),
                    Kind::OneToOne {
                        phase: Phase::Ringing,
                        ..
                    } => self.end_ringing(
                        &call_id,
                        reason::media_lost(),
                        reason::cancelled("caller media lost"),
                        None,
                    ),
                    Kind::Group { .. } => {
                        self.leave_group(&call_id, conn, Some(reason::media_lost()))
                    }
                }
            }
            MediaNotice::Offer {
                participant,
                sdp,
                tracks,
            } => {
                let Some((call_id, conn)) = self.participants.get(&participant).cloned() else {
                    return;
                };
                let tracks = tracks
                    .into_iter()
                    .filter_map(|t| {
                        let id = self.identity_of(t.publisher)?;
                        Some(OutTrackInfo {
                            mid: t.mid,
                            phone_number: phone_of_raw_id(&id).map(str::to_string),
                            communication_user_id: id,
                            source: t.source,
                        })
                    })
                    .collect();
                let msg = ServerMessage::Offer {
                    call_id: call_id.clone(),
                    sdp,
                    tracks,
                };
                let Some(leg) = self.calls.get_mut(&call_id).and_then(|c| c.leg_mut(conn)) else {
                    return;
                };
                if leg.offer_in_flight {
                    leg.deferred_offer = Some(msg);
                } else {
                    self.send(conn, msg);
                }
            }
            MediaNotice::DominantSpeakers { call_id, speakers } => {
                let Some(call) = self.calls.get(&call_id) else {
                    return;
                };
                let ids: Vec<String> = speakers
                    .iter()
                    .filter_map(|p| self.identity_of(*p))
                    .collect();
                for leg in &call.legs {
                    let msg = ServerMessage::DominantSpeakersChanged {
                        call_id: call_id.clone(),
                        speakers: ids.clone(),
                    };
                    self.send(leg.conn, msg);
                }
            }
            MediaNotice::Speaking {
                participant,
                speaking,
            } => {
                let Some((call_id, conn)) = self.participants.get(&participant).cloned() else {
                    return;
                };
                let Some(leg) = self.calls.get_mut(&call_id).and_then(|c| c.leg_mut(conn)) else {
                    return;
                };
                leg.speaking = speaking;
                self.announce_update(&call_id, conn);
            }
            MediaNotice::LayersWanted {
                participant,
                mid,
                rids,
            } => {
                let Some((call_id, conn)) = self.participants.get(&participant).cloned() else {
                    return;
                };
                self.send(conn, ServerMessage::LayersWanted { call_id, mid, rids });
            }
            MediaNotice::CodecUnsupported {
                subscriber,
                publisher,
                source,
                codec,
            } => {
                let Some((call_id, conn)) = self.participants.get(&subscriber).cloned() else {
                    return;
                };
                let who = self.identity_of(publisher).unwrap_or_default();
                let message = format!(
                    "this client cannot receive the {source} track of {who}: codec {codec} is not supported here"
                );
                let error = json!({ "code": "CodecUnsupported", "message": message });
                self.send(
                    conn,
                    ServerMessage::Error {
                        call_id: Some(call_id),
                        error,
                    },
                );
            }
        }
    }

    fn update_gauges(&self) {
        metrics::gauge!("switchboard_calls").set(self.calls.len() as f64);
        let legs: usize = self.calls.values().map(|c| c.legs.len()).sum();
        metrics::gauge!("switchboard_call_participants").set(legs as f64);
    }
}

fn participants_updated(
    call_id: &str,
    added: Vec<ParticipantInfo>,
    removed: Vec<ParticipantInfo>,
    updated: Vec<ParticipantInfo>,
) -> ServerMessage {
    ServerMessage::ParticipantsUpdated {
        call_id: call_id.to_string(),
        added,
        removed,
        updated,
    }
}

/// Calls (ringing or connected) one connection may take part in at once.
pub const MAX_CALLS_PER_CONNECTION: usize = 4;

/// Phone numbers being dialled into one group call at once (`addParticipant`): each holds an RTP
/// port pair and a trunk transaction until it answers or fails.
pub const MAX_DIALING_PER_CALL: usize = 8;

/// Most sending m-lines (tracks the client publishes) accepted in one client offer. The m-lines the
/// SFU added to carry other participants' tracks (`recvonly` or `inactive` in a client's re-offer)
/// do not count: a client receiving many tracks can still renegotiate its own.
pub const MAX_M_LINES: usize = 16;

/// The m-sections of an SDP offer that send media: direction `sendrecv` (the default) or
/// `sendonly` (RFC 3264 §5.1, §6.1; a session-level direction is the default of each section).
fn sending_m_lines(sdp: &str) -> usize {
    let mut session_sends = true;
    let mut in_media = false;
    let mut current: Option<bool> = None;
    let mut count = 0;
    for line in sdp.lines().map(str::trim_end) {
        if line.starts_with("m=") {
            if current.unwrap_or(session_sends) && in_media {
                count += 1;
            }
            in_media = true;
            current = None;
            continue;
        }
        let sends = match line {
            "a=recvonly" | "a=inactive" => Some(false),
            "a=sendrecv" | "a=sendonly" => Some(true),
            _ => None,
        };
        if let Some(sends) = sends {
            if in_media {
                current = Some(sends);
            } else {
                session_sends = sends;
            }
        }
    }
    if in_media && current.unwrap_or(session_sends) {
        count += 1;
    }
    count
}

/// `8:acs:{resourceId}_{uuid}` with UUIDs in the usual 8-4-4-4-12 form.
pub fn is_communication_user_id(id: &str) -> bool {
    let Some(rest) = id.strip_prefix("8:acs:") else {
        return false;
    };
    let Some((resource, user)) = rest.split_once('_') else {
        return false;
    };
    is_uuid(resource) && is_uuid(user)
}

fn is_uuid(s: &str) -> bool {
    s.len() == 36 && uuid::Uuid::parse_str(s).is_ok()
}

/// Parser errors from the SDP library can carry internals (buffer addresses): keep the first line, minus them.
fn sanitize_sdp_error(e: &str) -> String {
    let first = e.lines().next().unwrap_or("");
    if first.contains("PointerOffset") || first.contains("Parse error") {
        "the SDP could not be parsed".to_string()
    } else {
        first.chars().take(200).collect()
    }
}

/// A phone being dialled (not a leg yet), as members see it.
fn phone_info(raw: &str, state: &str) -> ParticipantInfo {
    ParticipantInfo {
        communication_user_id: raw.to_string(),
        phone_number: phone_of_raw_id(raw).map(str::to_string),
        display_name: None,
        state: state.to_string(),
        is_muted: false,
        is_speaking: false,
    }
}

fn info(leg: &Leg, state: &str) -> ParticipantInfo {
    ParticipantInfo {
        communication_user_id: leg.identity.clone(),
        phone_number: phone_of_raw_id(&leg.identity).map(str::to_string),
        display_name: leg.display_name.clone(),
        state: state.to_string(),
        is_muted: leg.muted,
        is_speaking: leg.speaking,
    }
}

#[cfg(test)]
mod tests {
    use super::sending_m_lines;

    #[test]
    fn only_sending_m_lines_count() {
        let sdp = "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n\
            m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\na=sendonly\r\n\
            m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:1\r\n\
            m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:2\r\na=recvonly\r\n\
            m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:3\r\na=inactive\r\n\
            m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:4\r\na=sendrecv\r\n";
        assert_eq!(sending_m_lines(sdp), 3);
        let session_recvonly =
            "v=0\r\na=recvonly\r\nm=audio 9 RTP/AVP 0\r\nm=video 9 RTP/AVP 96\r\na=sendonly\r\n";
        assert_eq!(sending_m_lines(session_recvonly), 1);
        assert_eq!(sending_m_lines(""), 0);
    }
}
