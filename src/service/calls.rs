//! Call control: registered connections, 1:1 calls, their states and end reasons (docs/protocol.md).
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
    ClientMessage, EndReason, ParticipantInfo, RequestId, ServerMessage, Target,
};

/// A WebSocket connection, numbered by the hub's owner.
pub type ConnId = u64;

/// Media participant id handed to the media plane (one per connection per call).
pub type MediaParticipant = u64;

/// What the hub needs of the media plane (the SFU), implemented in `app.rs` over `media::MediaHandle`.
pub trait MediaPlane: Send + Sync + 'static {
    /// Adds or renegotiates `participant` in room `call_id` with an SDP offer; resolves to the SDP answer.
    fn offer(
        &self,
        call_id: String,
        participant: MediaParticipant,
        sdp: String,
    ) -> Pin<Box<dyn Future<Output = Result<String, String>> + Send>>;
    /// Trickle ICE candidate line for the participant.
    fn add_candidate(&self, participant: MediaParticipant, candidate: String);
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

/// Media-plane notifications the hub reacts to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MediaNotice {
    /// ICE/DTLS connected.
    Connected(MediaParticipant),
    /// The participant's media session died (ICE timeout, DTLS failure).
    Disconnected(MediaParticipant, String),
}

/// Commands to the hub.
#[derive(Debug)]
pub enum HubCommand {
    /// An authenticated connection.
    Register {
        conn: ConnId,
        identity: String,
        display_name: Option<String>,
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
    /// Internal: a media offer finished.
    OfferDone {
        conn: ConnId,
        id: RequestId,
        call_id: String,
        participant: MediaParticipant,
        result: Result<String, String>,
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
            next_participant: 1,
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
}

#[derive(Debug, Clone)]
struct Leg {
    conn: ConnId,
    identity: String,
    display_name: Option<String>,
    participant: MediaParticipant,
    muted: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Ringing,
    Connected,
}

#[derive(Debug)]
struct Call {
    caller: Leg,
    callee_identity: String,
    callee: Option<Leg>,
    phase: Phase,
}

impl Call {
    fn legs(&self) -> impl Iterator<Item = &Leg> {
        std::iter::once(&self.caller).chain(self.callee.as_ref())
    }

    fn leg_of(&self, conn: ConnId) -> Option<&Leg> {
        self.legs().find(|l| l.conn == conn)
    }
}

struct HubState {
    config: HubConfig,
    media: Arc<dyn MediaPlane>,
    tx: mpsc::WeakUnboundedSender<HubCommand>,
    conns: HashMap<ConnId, Conn>,
    by_identity: HashMap<String, HashSet<ConnId>>,
    calls: HashMap<String, Call>,
    next_participant: MediaParticipant,
}

/// End reasons used by the hub (codes and subcodes as docs/protocol.md lists them).
mod reason {
    use super::EndReason;
    pub fn normal(msg: &str) -> EndReason {
        EndReason::new(0, 0, msg)
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
                    },
                );
            }
            HubCommand::Unregister { conn } => self.unregister(conn),
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
                if self
                    .calls
                    .get(&call_id)
                    .is_some_and(|c| c.phase == Phase::Ringing)
                {
                    self.end_ringing(&call_id, reason::timeout(), reason::timeout(), None);
                }
            }
            HubCommand::OfferDone {
                conn,
                id,
                call_id,
                participant,
                result,
            } => {
                let live = self
                    .calls
                    .get(&call_id)
                    .and_then(|c| c.leg_of(conn))
                    .is_some_and(|l| l.participant == participant);
                if !live {
                    // The call ended while the SFU answered: free what the offer created.
                    self.media.remove(participant);
                    self.send(
                        conn,
                        ServerMessage::fail(
                            id,
                            "CallNotFound",
                            format!("call {call_id} has ended"),
                        ),
                    );
                    return;
                }
                let msg = match result {
                    Ok(sdp) => ServerMessage::ok(id, json!({ "type": "answer", "sdp": sdp })),
                    Err(e) => ServerMessage::fail(id, "BadSdp", sanitize_sdp_error(&e)),
                };
                self.send(conn, msg);
            }
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

    /// Calls the connection is a leg of or is ringing out from.
    fn calls_of(&self, conn: ConnId) -> usize {
        self.calls
            .values()
            .filter(|c| c.leg_of(conn).is_some())
            .count()
    }

    fn new_participant(&mut self) -> MediaParticipant {
        let p = self.next_participant;
        self.next_participant += 1;
        p
    }

    fn leg(&mut self, conn: ConnId) -> Option<Leg> {
        let c = self.conns.get(&conn)?;
        let (identity, display_name) = (c.identity.clone(), c.display_name.clone());
        Some(Leg {
            conn,
            identity,
            display_name,
            participant: self.new_participant(),
            muted: false,
        })
    }

    fn client(&mut self, conn: ConnId, msg: ClientMessage) {
        match msg {
            ClientMessage::StartCall { id, targets, video } => {
                self.start_call(conn, id, targets, video)
            }
            ClientMessage::Accept { id, call_id } => self.accept(conn, id, &call_id),
            ClientMessage::Reject { id, call_id } => self.reject(conn, id, &call_id),
            ClientMessage::HangUp { id, call_id, .. } => self.hang_up(conn, id, &call_id),
            ClientMessage::Offer { id, call_id, sdp } => self.offer(conn, id, call_id, sdp),
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
        }
    }

    fn start_call(&mut self, conn: ConnId, id: RequestId, targets: Vec<Target>, video: bool) {
        let [target] = targets.as_slice() else {
            let n = targets.len();
            return self.send(
                conn,
                ServerMessage::fail(
                    id,
                    "BadTarget",
                    format!("a 1:1 call needs exactly one target, got {n}"),
                ),
            );
        };
        let callee = target.communication_user_id.clone();
        if !is_communication_user_id(&callee) {
            return self.send(
                conn,
                ServerMessage::fail(
                    id,
                    "BadTarget",
                    "target is not a communication user id (8:acs:{resourceId}_{uuid})",
                ),
            );
        }
        if self.calls_of(conn) >= MAX_CALLS_PER_CONNECTION {
            return self.send(
                conn,
                ServerMessage::fail(
                    id,
                    "TooManyCalls",
                    format!("a connection may take part in at most {MAX_CALLS_PER_CONNECTION} calls at once"),
                ),
            );
        }
        let Some(caller) = self.leg(conn) else { return };
        if caller.identity == callee {
            return self.send(
                conn,
                ServerMessage::fail(id, "SelfCall", "an identity cannot call itself"),
            );
        }
        let call_id = uuid::Uuid::new_v4().to_string();
        self.send(conn, ServerMessage::ok(id, json!({ "callId": call_id })));
        self.send_state(conn, &call_id, "Connecting", None);
        let callee_conns = self.identity_conns(&callee);
        if callee_conns.is_empty() {
            self.send_state(conn, &call_id, "Disconnected", Some(reason::offline()));
            return;
        }
        for c in &callee_conns {
            self.send(
                *c,
                ServerMessage::IncomingCall {
                    call_id: call_id.clone(),
                    caller: Target {
                        communication_user_id: caller.identity.clone(),
                    },
                    caller_display_name: caller.display_name.clone(),
                    video,
                },
            );
        }
        self.send_state(conn, &call_id, "Ringing", None);
        tracing::info!(call_id, caller = %caller.identity, callee = %callee, "call ringing");
        metrics::counter!("switchboard_calls_started_total").increment(1);
        self.calls.insert(
            call_id.clone(),
            Call {
                caller,
                callee_identity: callee,
                callee: None,
                phase: Phase::Ringing,
            },
        );
        if let Some(tx) = self.tx.upgrade() {
            let ring = self.config.ring_timeout;
            tokio::spawn(async move {
                tokio::time::sleep(ring).await;
                let _ = tx.send(HubCommand::RingTimeout { call_id });
            });
        }
    }

    /// The call if `conn` may answer it (its identity is the callee) and it still rings.
    fn ringing_for(&self, conn: ConnId, call_id: &str) -> Result<&Call, (&'static str, String)> {
        let identity = self.conns.get(&conn).map(|c| c.identity.as_str());
        match self.calls.get(call_id) {
            Some(call) if Some(call.callee_identity.as_str()) == identity => {
                if call.phase == Phase::Ringing {
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
        if let Err((code, msg)) = self.ringing_for(conn, call_id) {
            return self.send(conn, ServerMessage::fail(id, code, msg));
        }
        let Some(callee) = self.leg(conn) else { return };
        let Some(call) = self.calls.get_mut(call_id) else {
            return;
        };
        call.callee = Some(callee.clone());
        call.phase = Phase::Connected;
        let caller = call.caller.clone();
        let callee_identity = call.callee_identity.clone();
        self.send(conn, ServerMessage::ok(id, json!({})));
        for other in self.identity_conns(&callee_identity) {
            if other != conn {
                self.send(
                    other,
                    ServerMessage::IncomingCallEnded {
                        call_id: call_id.into(),
                        end_reason: reason::answered_elsewhere(),
                    },
                );
            }
        }
        for (me, them) in [(&caller, &callee), (&callee, &caller)] {
            self.send_state(me.conn, call_id, "Connected", None);
            self.send(
                me.conn,
                ServerMessage::ParticipantsUpdated {
                    call_id: call_id.into(),
                    added: vec![info(them, "Connected")],
                    removed: vec![],
                    updated: vec![],
                },
            );
        }
        tracing::info!(call_id, "call connected");
    }

    fn reject(&mut self, conn: ConnId, id: RequestId, call_id: &str) {
        if let Err((code, msg)) = self.ringing_for(conn, call_id) {
            return self.send(conn, ServerMessage::fail(id, code, msg));
        }
        self.send(conn, ServerMessage::ok(id, json!({})));
        self.end_ringing(call_id, reason::declined(), reason::declined(), Some(conn));
    }

    fn hang_up(&mut self, conn: ConnId, id: RequestId, call_id: &str) {
        let Some(call) = self.calls.get(call_id) else {
            return self.send(
                conn,
                ServerMessage::fail(
                    id,
                    "CallNotFound",
                    format!("no call {call_id} on this connection"),
                ),
            );
        };
        if call.leg_of(conn).is_none() {
            let msg = if call.callee.is_none() && self.ringing_for(conn, call_id).is_ok() {
                "an incoming call is declined with reject, not hangUp"
            } else {
                "this connection is not in the call"
            };
            return self.send(conn, ServerMessage::fail(id, "InvalidState", msg));
        }
        self.send(conn, ServerMessage::ok(id, json!({})));
        match call.phase {
            Phase::Ringing => self.end_ringing(
                call_id,
                reason::cancelled("call cancelled"),
                reason::cancelled("caller hung up"),
                None,
            ),
            Phase::Connected => self.end_connected(
                call_id,
                conn,
                reason::normal("call ended"),
                reason::normal("remote participant hung up"),
            ),
        }
    }

    fn offer(&mut self, conn: ConnId, id: RequestId, call_id: String, sdp: String) {
        let Some(leg) = self.calls.get(&call_id).and_then(|c| c.leg_of(conn)) else {
            return self.send(
                conn,
                ServerMessage::fail(
                    id,
                    "CallNotFound",
                    format!("no call {call_id} on this connection"),
                ),
            );
        };
        let participant = leg.participant;
        let m_lines = sdp.lines().filter(|l| l.starts_with("m=")).count();
        if m_lines > MAX_M_LINES {
            return self.send(
                conn,
                ServerMessage::fail(
                    id,
                    "BadSdp",
                    format!("an offer may have at most {MAX_M_LINES} m-lines, got {m_lines}"),
                ),
            );
        }
        let fut = self.media.offer(call_id.clone(), participant, sdp);
        let Some(tx) = self.tx.upgrade() else { return };
        tokio::spawn(async move {
            let result = fut.await;
            let _ = tx.send(HubCommand::OfferDone {
                conn,
                id,
                call_id,
                participant,
                result,
            });
        });
    }

    fn set_muted(&mut self, conn: ConnId, id: RequestId, call_id: &str, muted: bool) {
        let Some(call) = self.calls.get_mut(call_id) else {
            return self.send(
                conn,
                ServerMessage::fail(
                    id,
                    "CallNotFound",
                    format!("no call {call_id} on this connection"),
                ),
            );
        };
        let leg = if call.caller.conn == conn {
            Some(&mut call.caller)
        } else {
            call.callee.as_mut().filter(|l| l.conn == conn)
        };
        let Some(leg) = leg else {
            return self.send(
                conn,
                ServerMessage::fail(
                    id,
                    "CallNotFound",
                    format!("no call {call_id} on this connection"),
                ),
            );
        };
        leg.muted = muted;
        let me = info(leg, "Connected");
        let others: Vec<ConnId> = call
            .legs()
            .filter(|l| l.conn != conn)
            .map(|l| l.conn)
            .collect();
        self.send(conn, ServerMessage::ok(id, json!({})));
        for o in others {
            self.send(
                o,
                ServerMessage::ParticipantsUpdated {
                    call_id: call_id.into(),
                    added: vec![],
                    removed: vec![],
                    updated: vec![me.clone()],
                },
            );
        }
    }

    /// Ends a ringing call: the caller gets `to_caller`, the callee's connections (but `except`) `to_callee`.
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
        self.media.remove(call.caller.participant);
        self.send_state(
            call.caller.conn,
            call_id,
            "Disconnected",
            Some(to_caller.clone()),
        );
        for c in self.identity_conns(&call.callee_identity) {
            if Some(c) != except {
                self.send(
                    c,
                    ServerMessage::IncomingCallEnded {
                        call_id: call_id.into(),
                        end_reason: to_callee.clone(),
                    },
                );
            }
        }
        tracing::info!(call_id, code = to_caller.code, "call ended before answer");
        metrics::counter!("switchboard_calls_ended_total", "code" => to_caller.code.to_string())
            .increment(1);
    }

    /// Ends a connected call: `by` gets `to_self`, the other leg `to_peer`.
    fn end_connected(&mut self, call_id: &str, by: ConnId, to_self: EndReason, to_peer: EndReason) {
        let Some(call) = self.calls.remove(call_id) else {
            return;
        };
        for leg in call.legs() {
            self.media.remove(leg.participant);
            let r = if leg.conn == by {
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
    }

    fn unregister(&mut self, conn: ConnId) {
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
        let affected: Vec<(String, Phase, bool)> = self
            .calls
            .iter()
            .filter_map(|(id, call)| {
                let is_leg = call.leg_of(conn).is_some();
                let is_pending_callee =
                    call.phase == Phase::Ringing && call.callee_identity == c.identity;
                (is_leg || is_pending_callee).then(|| (id.clone(), call.phase, is_leg))
            })
            .collect();
        for (call_id, phase, is_leg) in affected {
            match (phase, is_leg) {
                (Phase::Ringing, true) => self.end_ringing(
                    &call_id,
                    reason::cancelled("connection closed"),
                    reason::cancelled("caller disconnected"),
                    None,
                ),
                (Phase::Ringing, false) if callee_gone => {
                    self.end_ringing(&call_id, reason::offline(), reason::offline(), None)
                }
                (Phase::Ringing, false) => {}
                (Phase::Connected, _) => {
                    self.end_connected(&call_id, conn, reason::peer_lost(), reason::peer_lost())
                }
            }
        }
    }

    fn media_notice(&mut self, notice: MediaNotice) {
        match notice {
            MediaNotice::Connected(p) => tracing::debug!(participant = p, "media connected"),
            MediaNotice::Disconnected(p, why) => {
                let found = self.calls.iter().find_map(|(id, call)| {
                    call.legs()
                        .find(|l| l.participant == p)
                        .map(|l| (id.clone(), l.conn, call.phase))
                });
                if let Some((call_id, conn, phase)) = found {
                    tracing::info!(call_id, participant = p, reason = %why, "media lost, ending call");
                    match phase {
                        Phase::Connected => self.end_connected(
                            &call_id,
                            conn,
                            reason::media_lost(),
                            reason::media_lost(),
                        ),
                        Phase::Ringing => self.end_ringing(
                            &call_id,
                            reason::media_lost(),
                            reason::cancelled("caller media lost"),
                            None,
                        ),
                    }
                }
            }
        }
    }
}

/// Calls (ringing or connected) one connection may take part in at once.
pub const MAX_CALLS_PER_CONNECTION: usize = 4;

/// Most m-lines accepted in one client offer.
pub const MAX_M_LINES: usize = 16;

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

fn info(leg: &Leg, state: &str) -> ParticipantInfo {
    ParticipantInfo {
        communication_user_id: leg.identity.clone(),
        display_name: leg.display_name.clone(),
        state: state.to_string(),
        is_muted: leg.muted,
    }
}
