//! The [`Sfu`]: participants grouped in rooms, datagram demultiplexing, and the propagation of media
//! frames and keyframe requests between participants.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use str0m::bwe::Bitrate;
use str0m::change::{SdpAnswer, SdpOffer};
use str0m::media::{KeyframeRequest, KeyframeRequestKind, MediaData, Rid};
use str0m::net::{DatagramRecv, Protocol, Receive};
use str0m::{Candidate, Input, Rtc};
use tracing::{debug, info, trace, warn};

use super::agent::{Agent, AgentAudio, AgentSink};
use super::candidate::parse_remote_candidate;
use super::error::SfuError;
use super::install_crypto_provider;
use super::participant::{
    ForwardSide, Outbox, Participant, Published, TrackRef, Work, WriteOutcome,
};
use super::speaker::{SpeakerDetector, SpeakingChange};
use super::types::{ParticipantId, SfuConfig, SfuEvent, SfuStats, TrackSource, Transmit};

/// How long a participant may take from its first offer to ICE `connected` before it is dropped with
/// [`SfuEvent::Disconnected`]. An ICE-lite agent never gives up by itself while it has seen no
/// connectivity check, so without this an abandoned offer would hold its state forever.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a connected participant may send nothing at all (no STUN, DTLS, SRTP or SRTCP
/// datagram) before it is dropped with [`SfuEvent::Disconnected`].
///
/// An ICE-lite server sends no checks of its own (RFC 8445 §2.5), so liveness can only come from
/// what the peer sends. str0m's ICE-lite agent declares the pair dead after 15 s without a binding
/// *request*, which drops peers that keep their NAT binding with binding *indications* (libnice
/// 0.1.21 sends one every 25 s, RFC 8445 §11) while media flows; that state change is therefore
/// not taken as the end of a connection that ever connected. A peer sending media or RTCP
/// (receivers send reports every few seconds) or indications stays; one that is gone is noticed
/// after this long.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Most trickled candidates kept for one participant whose offer has not arrived yet.
const MAX_QUEUED_CANDIDATES: usize = 64;

/// Most participants with candidates queued before their offer.
const MAX_QUEUED_PARTICIPANTS: usize = 4096;

/// How long the SFU keeps trying to get a keyframe for a newly writable subscriber m-line (the
/// publisher's throttle may hold the request back, or its stream may not have started yet).
const KEYFRAME_WANT_TTL: Duration = Duration::from_secs(3);

/// Pause between two attempts of a wanted keyframe request.
const KEYFRAME_WANT_RETRY: Duration = Duration::from_millis(100);

/// Downlink estimate a connection starts from, before TWCC feedback refines it.
const INITIAL_BITRATE_ESTIMATE: Bitrate = Bitrate::kbps(1_500);

/// How often the SFU tells each connection's bandwidth estimator what it sends and wants (twice
/// per [`super::downlink::PROBE_INTERVAL`], see there), and reviews dynacast.
const BITRATE_TARGET_INTERVAL: Duration = Duration::from_millis(500);

/// The members of a room and their speaker state. A room exists while it has a member.
#[derive(Debug, Default)]
struct Room {
    /// In join order.
    members: Vec<ParticipantId>,
    speakers: SpeakerDetector,
}

/// A keyframe the SFU wants from a publisher track because a subscriber m-line for it became
/// writable.
#[derive(Debug, Clone, Copy)]
struct KeyframeWant {
    track: TrackRef,
    retry_at: Instant,
    expires: Instant,
}

/// The media core: one str0m `Rtc` per participant, grouped in rooms.
///
/// Sans-IO: every method that needs the time takes `now`; the caller sends what
/// [`Sfu::poll_transmit`] returns and calls [`Sfu::handle_timeout`] at [`Sfu::poll_timeout`]. After
/// every `handle_*` call, drain [`Sfu::poll_transmit`] and [`Sfu::poll_event`].
pub struct Sfu {
    local_candidates: Vec<Candidate>,
    participants: HashMap<ParticipantId, Participant>,
    rooms: HashMap<Arc<str>, Room>,
    /// Rooms whose subscriptions must be reconciled (membership or published tracks changed, or
    /// an answer made room for the next server offer).
    dirty_rooms: Vec<Arc<str>>,
    keyframe_wants: Vec<KeyframeWant>,
    /// Candidates trickled before the participant's first offer.
    queued_candidates: HashMap<ParticipantId, Vec<Candidate>>,
    /// Which participant accepted the last datagram from each remote address: the fast path of
    /// demultiplexing.
    by_source: HashMap<SocketAddr, ParticipantId>,
    /// Latest `now` given to any method (`None` before the first).
    last_now: Option<Instant>,
    /// Next update of the bandwidth estimators' targets.
    next_bitrate_targets: Option<Instant>,
    /// Server-side media agents (SIP legs): room members without an `Rtc` (`agent.rs`).
    agents: HashMap<ParticipantId, Agent>,
    out: Outbox,
}

impl fmt::Debug for Sfu {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sfu")
            .field("participants", &self.participants.len())
            .field("rooms", &self.rooms.len())
            .field("stats", &self.out.stats)
            .finish_non_exhaustive()
    }
}

impl Sfu {
    /// Creates an SFU advertising `config.local_candidates` as host candidates. Installs the crypto
    /// provider if needed ([`install_crypto_provider`]). Addresses str0m refuses as candidates
    /// (unspecified, multicast, IPv4 link-local) are skipped with a warning.
    pub fn new(config: SfuConfig) -> Sfu {
        install_crypto_provider();
        let local_candidates = config
            .local_candidates
            .iter()
            .filter_map(|addr| match Candidate::host(*addr, "udp") {
                Ok(c) => Some(c),
                Err(e) => {
                    warn!(%addr, error = %e, "local address not usable as ICE candidate");
                    None
                }
            })
            .collect::<Vec<_>>();
        if local_candidates.is_empty() {
            warn!("SFU has no usable local candidate: no participant can connect");
        }
        Sfu {
            local_candidates,
            participants: HashMap::new(),
            rooms: HashMap::new(),
            dirty_rooms: Vec::new(),
            keyframe_wants: Vec::new(),
            queued_candidates: HashMap::new(),
            by_source: HashMap::new(),
            last_now: None,
            next_bitrate_targets: None,
            agents: HashMap::new(),
            out: Outbox::default(),
        }
    }

    // ---- getters ----

    /// Number of live participants (offer answered, connection not ended).
    pub fn participant_count(&self) -> usize {
        self.participants.len()
    }

    /// Number of rooms with at least one participant.
    pub fn room_count(&self) -> usize {
        self.rooms.len()
    }

    /// Cumulative counters since creation.
    pub fn stats(&self) -> SfuStats {
        self.out.stats
    }

    /// Number of published tracks (each a client -> server m-line) of live participants.
    pub fn track_count(&self) -> usize {
        self.participants
            .values()
            .map(|p| p.published().len())
            .sum()
    }

    /// Number of server -> client m-lines (subscriptions) of live participants, stopping ones
    /// excluded.
    pub fn subscription_count(&self) -> usize {
        self.participants
            .values()
            .map(Participant::subscription_count)
            .sum()
    }

    /// The room `participant` is in, if it is live.
    pub fn room_of(&self, participant: ParticipantId) -> Option<&str> {
        self.participants.get(&participant).map(|p| &**p.room())
    }

    // ---- input ----

    /// Answers an SDP offer (RFC 3264, JSEP RFC 8829) from `participant`.
    ///
    /// The offer carries the participant's own sending m-lines (`sendonly`; `sendrecv` is taken the
    /// same, the SFU never sends on them): each is a published track, its source taken from
    /// `sources` (mid -> source), else the one it had, else audio m-lines are
    /// [`TrackSource::Audio`], the first video [`TrackSource::Camera`], later video
    /// [`TrackSource::ScreenShare`]. Other members' tracks reach the participant on m-lines the SFU
    /// adds by its own offers ([`SfuEvent::Offer`]), never in this answer.
    ///
    /// On the participant's first offer it joins `room` (created if needed) under `label` (its
    /// public id, the `a=msid` stream id of its tracks at subscribers), and candidates trickled
    /// earlier are applied. A later offer renegotiates (it must name the same room): tracks added,
    /// stopped, or turned `inactive`/`recvonly` start or stop at every subscriber. Returns the SDP
    /// answer, which carries the SFU's ICE-lite credentials, DTLS fingerprint and host candidates.
    ///
    /// # Errors
    /// [`SfuError::BadSdp`] if the offer does not parse or is refused (then a new participant is not
    /// created); [`SfuError::WrongRoom`] if the participant is live in another room;
    /// [`SfuError::Glare`] if a server offer to it is outstanding (nothing changes).
    pub fn handle_offer(
        &mut self,
        now: Instant,
        room: &str,
        participant: ParticipantId,
        label: &str,
        offer_sdp: &str,
        sources: &[(String, TrackSource)],
    ) -> Result<String, SfuError> {
        if let Some(p) = self.participants.get(&participant) {
            if &**p.room() != room {
                return Err(SfuError::WrongRoom {
                    participant,
                    room: p.room().to_string(),
                });
            }
            if p.has_pending_offer() {
                return Err(SfuError::Glare);
            }
        }
        let offer =
            SdpOffer::from_sdp_string(offer_sdp).map_err(|e| SfuError::BadSdp(e.to_string()))?;
        let answer = if let Some(p) = self.participants.get_mut(&participant) {
            p.set_label(label);
            let answer = p.accept_offer(offer, sources);
            p.drain(now, &mut self.out);
            let room = Arc::clone(p.room());
            self.mark_dirty(room);
            answer
        } else {
            let room: Arc<str> = self
                .rooms
                .get_key_value(room)
                .map_or_else(|| Arc::from(room), |(k, _)| Arc::clone(k));
            let mut p = Participant::new(
                participant,
                Arc::clone(&room),
                label,
                self.build_rtc(now),
                now,
                now + CONNECT_TIMEOUT,
            );
            let answer = p
                .accept_offer(offer, sources)
                .map_err(|e| SfuError::BadSdp(e.to_string()))?;
            for c in self
                .queued_candidates
                .remove(&participant)
                .unwrap_or_default()
            {
                p.rtc_mut().add_remote_candidate(c);
            }
            p.drain(now, &mut self.out);
            debug!(%participant, %room, "participant joined");
            self.rooms
                .entry(Arc::clone(&room))
                .or_default()
                .members
                .push(participant);
            self.participants.insert(participant, p);
            self.mark_dirty(room);
            Ok(answer)
        };
        self.settle(now);
        answer
            .map(|a| a.to_sdp_string())
            .map_err(|e| SfuError::BadSdp(e.to_string()))
    }

    /// Accepts `participant`'s answer to the server offer last sent to it ([`SfuEvent::Offer`]).
    /// The m-lines it added start carrying their tracks (a keyframe is asked of each video
    /// publisher); changes that waited for the answer go into the next offer.
    ///
    /// # Errors
    /// [`SfuError::UnknownParticipant`]; [`SfuError::NoPendingOffer`] if no server offer is
    /// outstanding; [`SfuError::BadSdp`] if the answer does not parse (the offer stays outstanding)
    /// or is refused (the offer is void; a new one follows with its changes).
    pub fn handle_answer(
        &mut self,
        now: Instant,
        participant: ParticipantId,
        answer_sdp: &str,
    ) -> Result<(), SfuError> {
        let p = self
            .participants
            .get_mut(&participant)
            .ok_or(SfuError::UnknownParticipant(participant))?;
        if !p.has_pending_offer() {
            return Err(SfuError::NoPendingOffer);
        }
        let answer =
            SdpAnswer::from_sdp_string(answer_sdp).map_err(|e| SfuError::BadSdp(e.to_string()))?;
        let result = p.accept_answer(answer);
        p.drain(now, &mut self.out);
        let room = Arc::clone(p.room());
        self.mark_dirty(room);
        let result = match result {
            Ok(opened) => {
                for track in opened {
                    self.want_keyframe(now, track);
                }
                Ok(())
            }
            Err(None) => Err(SfuError::NoPendingOffer),
            Err(Some(reason)) => {
                info!(%participant, %reason, "answer refused; offering again");
                Err(SfuError::BadSdp(reason))
            }
        };
        self.settle(now);
        result
    }

    /// Adds a remote ICE candidate trickled by `participant` (RFC 8838): a `candidate:...` line with
    /// or without `a=`. The empty string (end of candidates), mDNS names and TCP candidates are
    /// accepted and ignored. Before the participant's first offer the candidate is queued and applied
    /// when the offer is answered.
    ///
    /// # Errors
    /// [`SfuError::BadCandidate`] if the line does not parse; [`SfuError::TooManyCandidates`] if too
    /// many are queued before the offer.
    pub fn add_remote_candidate(
        &mut self,
        participant: ParticipantId,
        candidate: &str,
    ) -> Result<(), SfuError> {
        let Some(candidate) = parse_remote_candidate(candidate)? else {
            return Ok(());
        };
        if let Some(p) = self.participants.get_mut(&participant) {
            p.rtc_mut().add_remote_candidate(candidate);
            p.wake();
            return Ok(());
        }
        let queued_participants = self.queued_candidates.len();
        let queue = match self.queued_candidates.get_mut(&participant) {
            Some(queue) => queue,
            None if queued_participants >= MAX_QUEUED_PARTICIPANTS => {
                return Err(SfuError::TooManyCandidates(participant));
            }
            None => self.queued_candidates.entry(participant).or_default(),
        };
        if queue.len() >= MAX_QUEUED_CANDIDATES {
            return Err(SfuError::TooManyCandidates(participant));
        }
        queue.push(candidate);
        Ok(())
    }

    /// Sets the size at which `participant` renders the video it receives on its m-line `mid`
    /// (protocol `setPreferredVideoSize`). For a simulcast track the m-line then gets the smallest
    /// layer at least that large (within its downlink estimate), switched at that layer's next
    /// keyframe; `0 x 0` means not rendered: nothing is forwarded on it until a size is set again.
    ///
    /// # Errors
    /// [`SfuError::UnknownParticipant`]; [`SfuError::UnknownMid`] if it receives no video on
    /// `mid`.
    pub fn set_preferred_size(
        &mut self,
        now: Instant,
        participant: ParticipantId,
        mid: &str,
        width: u32,
        height: u32,
    ) -> Result<(), SfuError> {
        let p = self
            .participants
            .get_mut(&participant)
            .ok_or(SfuError::UnknownParticipant(participant))?;
        let (track, resumed) =
            p.set_preferred_size(mid, width, height)
                .ok_or_else(|| SfuError::UnknownMid {
                    participant,
                    mid: mid.to_string(),
                })?;
        debug!(%participant, %mid, width, height, "preferred video size");
        if resumed {
            self.want_keyframe(now, track);
        }
        self.update_dynacast(now, Some(track));
        self.settle(now);
        Ok(())
    }

    /// Removes `participant` and frees all its state (its room too when it was the last member). Its
    /// connection is closed (RTCP BYE, DTLS close_notify) so the browser notices at once; no
    /// [`SfuEvent::Disconnected`] is emitted. Its tracks are stopped at every subscriber (server
    /// offers follow). Unknown ids are ignored.
    pub fn remove_participant(&mut self, participant: ParticipantId) {
        self.queued_candidates.remove(&participant);
        self.remove_agent(participant);
        if let Some(p) = self.free(participant) {
            debug!(%participant, "participant removed");
            p.shutdown(&mut self.out);
        }
        if let Some(now) = self.last_now {
            self.settle(now);
        }
    }

    /// Handles one UDP datagram that arrived from `source` on the local address `destination` (which
    /// must be one of [`SfuConfig::local_candidates`]). Returns `false` when no participant accepts it
    /// (unknown sender, garbage, removed participant); such datagrams are only counted.
    pub fn handle_receive(
        &mut self,
        now: Instant,
        source: SocketAddr,
        destination: SocketAddr,
        contents: &[u8],
    ) -> bool {
        let Ok(datagram) = DatagramRecv::try_from(contents) else {
            self.out.stats.packets_unmatched += 1;
            return false;
        };
        let input = Input::Receive(
            now,
            Receive {
                proto: Protocol::Udp,
                source,
                destination,
                contents: datagram,
            },
        );
        let Some(id) = self.acceptor(source, &input) else {
            trace!(%source, len = contents.len(), "datagram accepted by no participant");
            self.out.stats.packets_unmatched += 1;
            return false;
        };
        let Some(p) = self.participants.get_mut(&id) else {
            return false;
        };
        self.out.stats.packets_in += 1;
        self.out.stats.bytes_in += contents.len() as u64;
        p.handle_input(input);
        p.drain(now, &mut self.out);
        self.settle(now);
        true
    }

    /// Advances the timers of every participant due at `now` (retransmissions, RTCP reports, ICE
    /// pair timeouts, connect and idle timeouts) and of every room (speaker detection). Calling it early or late is
    /// harmless.
    pub fn handle_timeout(&mut self, now: Instant) {
        let mut changes = Vec::new();
        for (name, room) in &mut self.rooms {
            if room.speakers.poll_timeout().is_some_and(|t| t <= now) {
                let ranking = room.speakers.tick(now, &mut changes);
                push_speaker_events(&mut self.out, name, &mut changes, ranking);
            }
        }
        let due: Vec<ParticipantId> = self
            .participants
            .iter()
            .filter(|(_, p)| p.deadline().is_none_or(|d| d <= now))
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            if let Some(p) = self.participants.get_mut(&id) {
                p.handle_timeout(now);
                p.drain(now, &mut self.out);
            }
        }
        if self.next_bitrate_targets.is_none_or(|t| t <= now) {
            self.next_bitrate_targets = Some(now + BITRATE_TARGET_INTERVAL);
            self.update_bitrate_targets(now);
            self.update_dynacast(now, None);
        }
        self.settle(now);
    }

    /// Adds a server-side media agent to `room` (created if needed) under `label` (its public id,
    /// the `a=msid` stream id at subscribers): it publishes one audio track, fed by
    /// [`Sfu::handle_agent_audio`], and every audio frame another member of the room publishes goes
    /// to `sink`. The other members get a server offer with the agent's track. An id that is live
    /// already (agent or participant) is refused.
    ///
    /// # Errors
    /// [`SfuError::WrongRoom`] if the id is in use.
    pub fn add_agent(
        &mut self,
        now: Instant,
        room: &str,
        participant: ParticipantId,
        label: &str,
        sink: AgentSink,
    ) -> Result<(), SfuError> {
        if let Some(room) = self
            .participants
            .get(&participant)
            .map(|p| p.room().to_string())
            .or_else(|| self.agents.get(&participant).map(|a| a.room.to_string()))
        {
            return Err(SfuError::WrongRoom { participant, room });
        }
        let room: Arc<str> = self
            .rooms
            .get_key_value(room)
            .map_or_else(|| Arc::from(room), |(k, _)| Arc::clone(k));
        self.agents
            .insert(participant, Agent::new(Arc::clone(&room), label, sink));
        self.rooms
            .entry(Arc::clone(&room))
            .or_default()
            .members
            .push(participant);
        debug!(%participant, %room, "media agent joined");
        self.mark_dirty(room);
        self.settle(now);
        Ok(())
    }

    /// Publishes one Opus frame (RFC 6716) of agent `participant` to its room: `timestamp` in
    /// 48 kHz units (continuous across frames), `level` its RFC 6464 audio level (-dBov,
    /// 0 loudest ..= 127 silence). Unknown ids are ignored.
    pub fn handle_agent_audio(
        &mut self,
        now: Instant,
        participant: ParticipantId,
        timestamp: u64,
        level: u8,
        opus: &[u8],
    ) {
        let Some(agent) = self.agents.get_mut(&participant) else {
            return;
        };
        let data = agent.frame(now, timestamp, level, opus);
        self.forward_media(now, participant, &data);
        self.settle(now);
    }

    /// Removes an agent (its track stops at the subscribers; the room goes when it was the last
    /// member).
    fn remove_agent(&mut self, participant: ParticipantId) {
        let Some(agent) = self.agents.remove(&participant) else {
            return;
        };
        debug!(%participant, room = %agent.room, "media agent removed");
        if let Some(room) = self.rooms.get_mut(&agent.room) {
            room.members.retain(|m| *m != participant);
            room.speakers.remove(participant);
            if room.members.is_empty() {
                self.rooms.remove(&agent.room);
                self.dirty_rooms.retain(|r| *r != agent.room);
            } else {
                self.mark_dirty(Arc::clone(&agent.room));
            }
        }
    }

    // ---- output ----

    /// Next datagram to send, if any.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.out.transmits.pop_front()
    }

    /// Next event for the signaling layer, if any.
    pub fn poll_event(&mut self) -> Option<SfuEvent> {
        self.out.events.pop_front()
    }

    /// Earliest time [`Sfu::handle_timeout`] must be called; `None` without participants.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.participants
            .values()
            .filter_map(Participant::deadline)
            .chain(
                self.rooms
                    .values()
                    .filter_map(|r| r.speakers.poll_timeout()),
            )
            .chain(self.keyframe_wants.iter().map(|w| w.retry_at))
            .chain(
                self.next_bitrate_targets
                    .filter(|_| !self.participants.is_empty()),
            )
            .min()
    }

    // ---- internals ----

    fn build_rtc(&self, now: Instant) -> Rtc {
        let mut rtc = Rtc::builder()
            .set_ice_lite(true)
            // The codecs every browser has, so two browsers nearly always share one.
            .clear_codecs()
            .enable_opus(true, false)
            .enable_vp8(true)
            .enable_vp9(true)
            .enable_h264(true)
            .enable_av1(true)
            .enable_bwe(Some(INITIAL_BITRATE_ESTIMATE))
            // Stats events carry the RTCP feedback counters exported as metrics, and the TWCC
            // loss and unsmoothed estimate of the downlink congestion control.
            .set_stats_interval(Some(super::downlink::STATS_INTERVAL))
            .build(now);
        for c in &self.local_candidates {
            rtc.add_local_candidate(c.clone());
        }
        rtc
    }

    /// The participant that accepts `input` from `source`: the one that accepted the last datagram
    /// from that address if it still does, else the first that does.
    fn acceptor(&mut self, source: SocketAddr, input: &Input) -> Option<ParticipantId> {
        if let Some(id) = self.by_source.get(&source)
            && self.participants.get(id).is_some_and(|p| p.accepts(input))
        {
            return Some(*id);
        }
        let id = self
            .participants
            .iter()
            .find(|(_, p)| p.accepts(input))
            .map(|(id, _)| *id)?;
        self.by_source.insert(source, id);
        Some(id)
    }

    fn mark_dirty(&mut self, room: Arc<str>) {
        if !self.dirty_rooms.contains(&room) {
            self.dirty_rooms.push(room);
        }
    }

    /// Propagates queued work between participants until there is none, frees participants whose
    /// connection ended, reconciles the subscriptions of changed rooms (making server offers), and
    /// sends wanted keyframe requests. Terminates: frames and keyframe requests only come from
    /// network input, so writing to and draining subscribers produces no new work items of its
    /// own.
    fn settle(&mut self, now: Instant) {
        self.last_now = self.last_now.max(Some(now));
        loop {
            while let Some(work) = self.out.work.pop_front() {
                match work {
                    Work::Media { from, data } => self.forward_media(now, from, &data),
                    Work::KeyframeRequest { from, request } => {
                        self.forward_keyframe_request(now, from, request)
                    }
                }
            }
            for id in std::mem::take(&mut self.out.connected) {
                let tracks = self
                    .participants
                    .get(&id)
                    .map(Participant::open_video)
                    .unwrap_or_default();
                for track in tracks {
                    self.want_keyframe(now, track);
                }
            }
            let failed = std::mem::take(&mut self.out.failed);
            for id in failed {
                let Some(p) = self.free(id) else {
                    continue;
                };
                let reason = p.failure().unwrap_or("connection ended").to_string();
                self.out.events.push_back(SfuEvent::Disconnected {
                    participant: id,
                    reason,
                });
            }
            for room in std::mem::take(&mut self.dirty_rooms) {
                self.renegotiate(now, &room);
            }
            if self.out.work.is_empty() && self.out.failed.is_empty() {
                break;
            }
        }
        self.send_wanted_keyframes(now);
    }

    /// Reconciles every member's subscriptions with what the others publish, and makes a server
    /// offer to each member that has changes and no offer outstanding.
    fn renegotiate(&mut self, now: Instant, room: &Arc<str>) {
        let Some(members) = self.rooms.get(room).map(|r| r.members.clone()) else {
            return;
        };
        let tracks: Vec<(TrackRef, Published, String)> = members
            .iter()
            .filter_map(|id| self.participants.get(id).map(|p| (id, p)))
            .flat_map(|(id, p)| {
                p.published().iter().map(move |t| {
                    (
                        TrackRef {
                            publisher: *id,
                            mid: t.mid,
                        },
                        *t,
                        p.label().to_string(),
                    )
                })
            })
            .chain(members.iter().filter_map(|id| {
                self.agents.get(id).map(|a| {
                    (
                        TrackRef {
                            publisher: *id,
                            mid: Agent::mid(),
                        },
                        Agent::published(),
                        a.label.clone(),
                    )
                })
            }))
            .collect();
        for id in &members {
            let Some(p) = self.participants.get_mut(id) else {
                continue;
            };
            let wanted: Vec<(TrackRef, Published, &str)> = tracks
                .iter()
                .filter(|(t, _, _)| t.publisher != *id)
                .map(|(t, p, label)| (*t, *p, label.as_str()))
                .collect();
            p.reconcile(&wanted);
            if let Some((sdp, tracks)) = p.make_offer() {
                debug!(participant = %id, tracks = tracks.len(), "server offer");
                self.out.stats.renegotiations += 1;
                self.out.events.push_back(SfuEvent::Offer {
                    participant: *id,
                    sdp,
                    tracks,
                });
                p.drain(now, &mut self.out);
            }
        }
    }

    /// Writes a frame from `from` to the m-line each subscriber has for that track, and feeds
    /// audio levels to the room's speaker detector.
    fn forward_media(&mut self, now: Instant, from: ParticipantId, data: &MediaData) {
        let (published, room_name) = match self.participants.get(&from) {
            Some(publisher) => {
                let Some(published) = publisher.published_on(data.mid) else {
                    trace!(%from, mid = %data.mid, "frame on an m-line that publishes nothing");
                    return;
                };
                (published, Arc::clone(publisher.room()))
            }
            None => match self.agents.get(&from) {
                Some(agent) => (Agent::published(), Arc::clone(&agent.room)),
                None => return,
            },
        };
        let Some(room) = self.rooms.get_mut(&room_name) else {
            return;
        };
        if published.kind.is_audio()
            && let Some(level) = data.ext_vals.audio_level
        {
            // str0m gives the RFC 6464 level as -dBov in -127..=0.
            let level = level.unsigned_abs().min(127);
            if let Some(change) = room.speakers.observe(now, from, level) {
                push_speaker_events(&mut self.out, &room_name, &mut vec![change], None);
            }
        }
        let track = TrackRef {
            publisher: from,
            mid: data.mid,
        };
        let layers = match self.participants.get(&from) {
            Some(publisher) if data.rid.is_some() => publisher.ranked_layers(data.mid, now),
            _ => Vec::new(),
        };
        let mut wanted_layers: Vec<Rid> = Vec::new();
        // Borrowed out of the room for the loop (given back below) instead of cloned per frame: writing
        // to subscribers never touches room membership.
        let members = std::mem::take(&mut room.members);
        for member in members.iter().filter(|m| **m != from) {
            if published.kind.is_audio()
                && let Some(agent) = self.agents.get_mut(member)
            {
                agent.sink.deliver(AgentAudio {
                    agent: *member,
                    from,
                    timestamp: data.time.numer(),
                    data: Arc::clone(&data.data),
                });
                continue;
            }
            let Some(sub) = self.participants.get_mut(member) else {
                continue;
            };
            if sub.failure().is_some() {
                continue;
            }
            let mut side = ForwardSide::default();
            let outcome = sub.forward(now, track, data, &layers, &mut side);
            if side.switched {
                self.out.stats.layer_switches += 1;
            }
            if let Some(rid) = side.keyframe_for
                && !wanted_layers.contains(&rid)
            {
                wanted_layers.push(rid);
            }
            match outcome {
                None => continue,
                Some(WriteOutcome::Skipped) => continue,
                Some(WriteOutcome::Backlogged) => {
                    self.out.stats.frames_dropped += 1;
                    self.out.stats.frames_backlogged += 1;
                    continue;
                }
                Some(WriteOutcome::Written) => self.out.stats.frames_forwarded += 1,
                Some(WriteOutcome::Unsupported { source, first }) => {
                    self.out.stats.frames_dropped += 1;
                    if first {
                        let codec = data.params.spec().codec.to_string();
                        info!(subscriber = %member, publisher = %from, %source, %codec,
                            "subscriber cannot receive the publisher's codec");
                        self.out.events.push_back(SfuEvent::CodecUnsupported {
                            subscriber: *member,
                            publisher: from,
                            source,
                            codec,
                        });
                    }
                }
                Some(WriteOutcome::Dropped(reason)) => {
                    self.out.stats.frames_dropped += 1;
                    trace!(%from, to = %member, %reason, "frame dropped");
                }
            }
            sub.drain(now, &mut self.out);
        }
        if let Some(room) = self.rooms.get_mut(&room_name) {
            room.members = members;
        }
        if wanted_layers.is_empty() {
            return;
        }
        let Some(publisher) = self.participants.get_mut(&from) else {
            return;
        };
        let mut sent = false;
        for rid in wanted_layers {
            if publisher.request_keyframe(data.mid, Some(rid), KeyframeRequestKind::Pli, now) {
                self.out.stats.keyframe_requests_generated += 1;
                sent = true;
            }
        }
        if sent {
            publisher.drain(now, &mut self.out);
        }
    }

    /// Tells every connection's bandwidth estimator the video rate it sends now and the rate of
    /// the layers its subscribers prefer, so str0m probes for the difference.
    fn update_bitrate_targets(&mut self, now: Instant) {
        let mut layers: HashMap<TrackRef, Vec<super::simulcast::LayerView>> = HashMap::new();
        for (id, p) in &self.participants {
            for t in p.published() {
                if p.is_simulcast(t.mid) {
                    let track = TrackRef {
                        publisher: *id,
                        mid: t.mid,
                    };
                    layers.insert(track, p.ranked_layers(t.mid, now));
                }
            }
        }
        if layers.is_empty() {
            return;
        }
        for p in self.participants.values_mut() {
            let (mut current, mut floor, mut desired) = (0u64, 0u64, 0u64);
            for (track, preferred, layer) in p.video_subscriptions() {
                let Some(views) = layers.get(&track) else {
                    continue;
                };
                let rate = |rid: Option<Rid>| {
                    rid.and_then(|r| views.iter().find(|v| v.rid == r))
                        .map_or(0, |v| v.bitrate)
                };
                current += rate(layer);
                floor += views
                    .iter()
                    .map(|v| v.bitrate)
                    .filter(|&b| b > 0)
                    .min()
                    .unwrap_or(0);
                desired += rate(super::simulcast::select(views, preferred, None, None));
            }
            if desired > 0 {
                debug!(participant = ?p.label(), current, floor, desired,
                    estimate = ?p.egress_estimate(), constrained = p.is_constrained(),
                    "bitrate targets");
                p.set_bitrate_targets(now, current, floor, desired);
                p.drain(now, &mut self.out);
            }
        }
    }

    /// Dynacast: works out which simulcast layers of each published track (or only of `only`) a
    /// subscriber watches or is switching to (the lowest always counts as watched), and asks
    /// publishers to pause layers unwatched for [`super::participant::DYNACAST_PAUSE_AFTER`] and to resume wanted
    /// paused ones ([`SfuEvent::LayersWanted`]).
    fn update_dynacast(&mut self, now: Instant, only: Option<TrackRef>) {
        let tracks: Vec<(TrackRef, Vec<super::simulcast::LayerView>, Arc<str>)> = self
            .participants
            .iter()
            .flat_map(|(id, p)| {
                p.published()
                    .iter()
                    .filter(|t| p.is_simulcast(t.mid))
                    .map(move |t| {
                        (
                            TrackRef {
                                publisher: *id,
                                mid: t.mid,
                            },
                            p.ranked_layers(t.mid, now),
                            Arc::clone(p.room()),
                        )
                    })
            })
            .filter(|(t, views, _)| views.len() > 1 && only.is_none_or(|o| o == *t))
            .collect();
        for (track, views, room) in tracks {
            let mut wanted = vec![views[0].rid];
            let members = self
                .rooms
                .get(&room)
                .map(|r| r.members.clone())
                .unwrap_or_default();
            for member in members.iter().filter(|m| **m != track.publisher) {
                let Some(sub) = self.participants.get(member) else {
                    continue;
                };
                let budget = sub.layer_budget();
                for (t, preferred, current) in sub.layer_wants() {
                    if t != track {
                        continue;
                    }
                    // What it gets now, and what it would be switched to (computed afresh: its
                    // recorded target only changes when a frame is forwarded).
                    wanted.extend(current);
                    wanted.extend(super::simulcast::select(&views, preferred, budget, current));
                }
            }
            let Some(publisher) = self.participants.get_mut(&track.publisher) else {
                continue;
            };
            if let Some(active) = publisher.apply_wanted_layers(track.mid, &wanted, now) {
                self.out.events.push_back(SfuEvent::LayersWanted {
                    participant: track.publisher,
                    mid: track.mid.to_string(),
                    rids: active.iter().map(|r| r.to_string()).collect(),
                });
            }
        }
    }

    /// Passes a keyframe request from subscriber `from` to the publisher of the track on that
    /// m-line.
    fn forward_keyframe_request(
        &mut self,
        now: Instant,
        from: ParticipantId,
        request: KeyframeRequest,
    ) {
        let Some((track, layer)) = self.participants.get(&from).and_then(|s| {
            s.track_on(request.mid)
                .map(|t| (t, s.layer_on(request.mid)))
        }) else {
            return;
        };
        let Some(publisher) = self.participants.get_mut(&track.publisher) else {
            return;
        };
        let rid = if publisher.is_simulcast(track.mid) {
            let Some(rid) = layer else {
                // The subscriber gets no layer yet; its switch asks for the keyframe.
                return;
            };
            Some(rid)
        } else {
            None
        };
        if publisher.request_keyframe(track.mid, rid, request.kind, now) {
            self.out.stats.keyframe_requests_forwarded += 1;
            publisher.drain(now, &mut self.out);
        }
    }

    /// Remembers that a keyframe of `track` is wanted (a subscriber m-line for it became
    /// writable); [`Sfu::send_wanted_keyframes`] asks for it.
    fn want_keyframe(&mut self, now: Instant, track: TrackRef) {
        if let Some(w) = self.keyframe_wants.iter_mut().find(|w| w.track == track) {
            w.retry_at = now;
            w.expires = now + KEYFRAME_WANT_TTL;
            return;
        }
        self.keyframe_wants.push(KeyframeWant {
            track,
            retry_at: now,
            expires: now + KEYFRAME_WANT_TTL,
        });
    }

    /// Sends the wanted keyframe requests that are due; keeps those the publisher's throttle or a
    /// missing stream held back, until they expire.
    fn send_wanted_keyframes(&mut self, now: Instant) {
        if self.keyframe_wants.is_empty() {
            return;
        }
        let mut wants = std::mem::take(&mut self.keyframe_wants);
        wants.retain_mut(|w| {
            if now >= w.expires {
                return false;
            }
            if now < w.retry_at {
                return true;
            }
            let Some(publisher) = self.participants.get_mut(&w.track.publisher) else {
                return false;
            };
            if publisher.published_on(w.track.mid).is_none() {
                return false;
            }
            if publisher.is_simulcast(w.track.mid) {
                // Each subscriber's layer switch asks for the keyframe of its layer.
                return false;
            }
            if publisher.request_keyframe(w.track.mid, None, KeyframeRequestKind::Pli, now) {
                self.out.stats.keyframe_requests_generated += 1;
                publisher.drain(now, &mut self.out);
                return false;
            }
            w.retry_at = now + KEYFRAME_WANT_RETRY;
            true
        });
        self.keyframe_wants = wants;
    }

    /// Removes a participant from every map (its tracks are then stopped at the subscribers by the
    /// next reconciliation); returns it for a last close or inspection.
    fn free(&mut self, id: ParticipantId) -> Option<Participant> {
        let p = self.participants.remove(&id)?;
        if let Some(room) = self.rooms.get_mut(p.room()) {
            room.members.retain(|m| *m != id);
            room.speakers.remove(id);
            if room.members.is_empty() {
                self.rooms.remove(p.room());
                self.dirty_rooms.retain(|r| r != p.room());
            } else {
                self.mark_dirty(Arc::clone(p.room()));
            }
        }
        self.by_source.retain(|_, owner| *owner != id);
        self.keyframe_wants.retain(|w| w.track.publisher != id);
        Some(p)
    }
}

/// Queues the events of speaker-state changes and a new dominant-speaker order of `room`.
fn push_speaker_events(
    out: &mut Outbox,
    room: &str,
    changes: &mut Vec<SpeakingChange>,
    ranking: Option<Vec<ParticipantId>>,
) {
    for c in changes.drain(..) {
        out.events.push_back(SfuEvent::Speaking {
            participant: c.participant,
            speaking: c.speaking,
        });
    }
    if let Some(speakers) = ranking {
        out.events.push_back(SfuEvent::DominantSpeakers {
            room: room.to_string(),
            speakers,
        });
    }
}
