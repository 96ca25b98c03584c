//! The [`Sfu`]: participants grouped in rooms, datagram demultiplexing, and the propagation of media
//! frames and keyframe requests between participants.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use str0m::change::SdpOffer;
use str0m::media::{KeyframeRequest, MediaData, MediaKind};
use str0m::net::{DatagramRecv, Protocol, Receive};
use str0m::{Candidate, Input, Rtc};
use tracing::{debug, trace, warn};

use super::candidate::parse_remote_candidate;
use super::error::SfuError;
use super::install_crypto_provider;
use super::participant::{Outbox, Participant, Source, Work};
use super::types::{ParticipantId, SfuConfig, SfuEvent, SfuStats, Transmit};

/// How long a participant may take from its first offer to ICE `connected` before it is dropped with
/// [`SfuEvent::Disconnected`]. An ICE-lite agent never gives up by itself while it has seen no
/// connectivity check, so without this an abandoned offer would hold its state forever.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// Most trickled candidates kept for one participant whose offer has not arrived yet.
const MAX_QUEUED_CANDIDATES: usize = 64;

/// Most participants with candidates queued before their offer.
const MAX_QUEUED_PARTICIPANTS: usize = 4096;

/// The media core: one str0m `Rtc` per participant, grouped in rooms.
///
/// Sans-IO: every method that needs the time takes `now`; the caller sends what
/// [`Sfu::poll_transmit`] returns and calls [`Sfu::handle_timeout`] at [`Sfu::poll_timeout`]. After
/// every `handle_*` call, drain [`Sfu::poll_transmit`] and [`Sfu::poll_event`].
pub struct Sfu {
    local_candidates: Vec<Candidate>,
    participants: HashMap<ParticipantId, Participant>,
    /// Members of each room in join order; a room exists while it has a member.
    rooms: HashMap<Arc<str>, Vec<ParticipantId>>,
    /// Candidates trickled before the participant's first offer.
    queued_candidates: HashMap<ParticipantId, Vec<Candidate>>,
    /// Which participant accepted the last datagram from each remote address: the fast path of
    /// demultiplexing.
    by_source: HashMap<SocketAddr, ParticipantId>,
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
            queued_candidates: HashMap::new(),
            by_source: HashMap::new(),
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

    /// The room `participant` is in, if it is live.
    pub fn room_of(&self, participant: ParticipantId) -> Option<&str> {
        self.participants.get(&participant).map(|p| &**p.room())
    }

    // ---- input ----

    /// Answers an SDP offer (RFC 3264, JSEP RFC 8829) from `participant`.
    ///
    /// On the participant's first offer it joins `room` (created if needed), and candidates trickled
    /// earlier are applied. A later offer from the same participant renegotiates its session (it must
    /// name the same room). Returns the SDP answer, which carries the SFU's ICE-lite credentials, DTLS
    /// fingerprint and host candidates.
    ///
    /// # Errors
    /// [`SfuError::BadSdp`] if the offer does not parse or is refused (then a new participant is not
    /// created); [`SfuError::WrongRoom`] if the participant is live in another room.
    pub fn handle_offer(
        &mut self,
        now: Instant,
        room: &str,
        participant: ParticipantId,
        offer_sdp: &str,
    ) -> Result<String, SfuError> {
        let offer =
            SdpOffer::from_sdp_string(offer_sdp).map_err(|e| SfuError::BadSdp(e.to_string()))?;
        let answer = if let Some(p) = self.participants.get_mut(&participant) {
            if &**p.room() != room {
                return Err(SfuError::WrongRoom {
                    participant,
                    room: p.room().to_string(),
                });
            }
            let answer = p.rtc_mut().sdp_api().accept_offer(offer);
            p.drain(now, &mut self.out);
            answer
        } else {
            let room: Arc<str> = self
                .rooms
                .get_key_value(room)
                .map_or_else(|| Arc::from(room), |(k, _)| Arc::clone(k));
            let mut p = Participant::new(
                participant,
                Arc::clone(&room),
                self.build_rtc(now),
                now,
                now + CONNECT_TIMEOUT,
            );
            let answer = p
                .rtc_mut()
                .sdp_api()
                .accept_offer(offer)
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
            self.rooms.entry(room).or_default().push(participant);
            self.participants.insert(participant, p);
            Ok(answer)
        };
        self.settle(now);
        answer
            .map(|a| a.to_sdp_string())
            .map_err(|e| SfuError::BadSdp(e.to_string()))
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

    /// Removes `participant` and frees all its state (its room too when it was the last member). Its
    /// connection is closed (RTCP BYE, DTLS close_notify) so the browser notices at once; no
    /// [`SfuEvent::Disconnected`] is emitted. Unknown ids are ignored.
    pub fn remove_participant(&mut self, participant: ParticipantId) {
        self.queued_candidates.remove(&participant);
        if let Some(p) = self.free(participant) {
            debug!(%participant, "participant removed");
            p.shutdown(&mut self.out);
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
    /// consent, connect timeout). Calling it early or late is harmless.
    pub fn handle_timeout(&mut self, now: Instant) {
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
        self.settle(now);
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
            .enable_h264(true)
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

    /// Propagates queued work between participants until there is none, then frees participants
    /// whose connection ended. Terminates: frames and keyframe requests only come from network
    /// input, so writing to and draining subscribers produces no new work items of its own.
    fn settle(&mut self, now: Instant) {
        while let Some(work) = self.out.work.pop_front() {
            match work {
                Work::Media { from, data } => self.forward_media(now, from, &data),
                Work::KeyframeRequest { from, request } => {
                    self.forward_keyframe_request(now, from, request)
                }
            }
        }
        for id in std::mem::take(&mut self.out.failed) {
            let Some(p) = self.free(id) else {
                continue;
            };
            let reason = p.failure().unwrap_or("connection ended").to_string();
            self.out.events.push_back(SfuEvent::Disconnected {
                participant: id,
                reason,
            });
        }
    }

    /// Writes a frame from `from` to the first m-line of the same kind of every other room member.
    fn forward_media(&mut self, now: Instant, from: ParticipantId, data: &MediaData) {
        let kind = if data.params.spec().codec.is_audio() {
            MediaKind::Audio
        } else {
            MediaKind::Video
        };
        let Some(room) = self.participants.get(&from).map(|p| Arc::clone(p.room())) else {
            return;
        };
        let Some(members) = self.rooms.get(&room) else {
            return;
        };
        for member in members.iter().filter(|m| **m != from) {
            let Some(sub) = self.participants.get_mut(member) else {
                continue;
            };
            if sub.failure().is_some() {
                continue;
            }
            let Some(mid) = sub.send_mid(kind) else {
                continue;
            };
            match sub.write_media(mid, data) {
                Ok(()) => {
                    self.out.stats.frames_forwarded += 1;
                    sub.set_source(
                        mid,
                        Source {
                            publisher: from,
                            mid: data.mid,
                        },
                    );
                }
                Err(reason) => {
                    self.out.stats.frames_dropped += 1;
                    trace!(%from, to = %member, %reason, "frame dropped");
                }
            }
            sub.drain(now, &mut self.out);
        }
    }

    /// Passes a keyframe request from subscriber `from` to the publisher of the m-line it concerns:
    /// the one whose frames were last written there, else every other member publishing that kind.
    fn forward_keyframe_request(
        &mut self,
        now: Instant,
        from: ParticipantId,
        request: KeyframeRequest,
    ) {
        let Some(sub) = self.participants.get(&from) else {
            return;
        };
        let Some(kind) = sub.track_kind(request.mid) else {
            return;
        };
        let targets: Vec<Source> = match sub.source(request.mid) {
            Some(source) => vec![source],
            None => self
                .rooms
                .get(sub.room())
                .into_iter()
                .flatten()
                .filter(|m| **m != from)
                .filter_map(|m| {
                    let mid = self.participants.get(m)?.receive_mid(kind)?;
                    Some(Source { publisher: *m, mid })
                })
                .collect(),
        };
        for target in targets {
            let Some(publisher) = self.participants.get_mut(&target.publisher) else {
                continue;
            };
            if publisher.request_keyframe(target.mid, None, request.kind, now) {
                self.out.stats.keyframe_requests_forwarded += 1;
                publisher.drain(now, &mut self.out);
            }
        }
    }

    /// Removes a participant from every map; returns it for a last close or inspection.
    fn free(&mut self, id: ParticipantId) -> Option<Participant> {
        let p = self.participants.remove(&id)?;
        if let Some(members) = self.rooms.get_mut(p.room()) {
            members.retain(|m| *m != id);
            if members.is_empty() {
                self.rooms.remove(p.room());
            }
        }
        self.by_source.retain(|_, owner| *owner != id);
        for other in self.participants.values_mut() {
            other.forget_publisher(id);
        }
        Some(p)
    }
}
