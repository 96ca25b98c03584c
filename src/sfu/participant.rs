//! One participant: its str0m `Rtc`, its m-lines, and the translation of str0m output into SFU work.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use str0m::bwe::{Bitrate, BweKind};
use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::format::PayloadParams;
use str0m::media::{
    Direction, KeyframeRequest, KeyframeRequestKind, MediaData, MediaKind, MediaTime, Mid, Pt, Rid,
    Rids, Writer,
};
use str0m::{Event, IceConnectionState, Input, Output, Rtc, RtcError};
use tracing::{debug, info, warn};

use super::backlog::{Admit, Backlog, pacing_time};
use super::downlink::Downlink;
use super::engine::IDLE_TIMEOUT;
use super::simulcast::{LayerView, TrackLayers, select};
use super::throttle::{KEYFRAME_REQUEST_INTERVAL, Throttle};
use super::types::{OutTrack, ParticipantId, SfuEvent, SfuStats, TrackSource, Transmit};

/// Upper bound of outputs taken from one `Rtc` in one drain. str0m always ends a drain with
/// `Output::Timeout`; the bound only keeps a bug from hanging the worker (the rest is drained on the
/// next timeout, scheduled immediately).
const MAX_OUTPUTS_PER_DRAIN: usize = 20_000;

/// How long a simulcast layer goes unwatched before the publisher is asked to pause it.
pub(crate) const DYNACAST_PAUSE_AFTER: Duration = Duration::from_secs(3);

/// Dynacast state of one published simulcast m-line.
#[derive(Debug, Default)]
struct Dynacast {
    /// Since when each unwanted layer is unwanted.
    unwanted_since: HashMap<Rid, Instant>,
}

/// Work one participant's output creates for the others.
#[derive(Debug)]
pub(crate) enum Work {
    /// A media frame received from `from`, to write to the other members of its room.
    /// Boxed: a `MediaData` is over 500 bytes, the other variant 34.
    Media {
        from: ParticipantId,
        data: Box<MediaData>,
    },
    /// A keyframe request `from` a subscriber, for one of the m-lines the SFU sends to it.
    KeyframeRequest {
        from: ParticipantId,
        request: KeyframeRequest,
    },
}

/// Everything the participants produce, collected for the engine and the IO shell.
#[derive(Debug, Default)]
pub(crate) struct Outbox {
    pub(crate) transmits: VecDeque<Transmit>,
    pub(crate) events: VecDeque<SfuEvent>,
    pub(crate) work: VecDeque<Work>,
    /// Participants whose connection ended, for the engine to free.
    pub(crate) failed: Vec<ParticipantId>,
    /// Participants whose ICE connected, for the engine to ask keyframes for their m-lines.
    pub(crate) connected: Vec<ParticipantId>,
    pub(crate) stats: SfuStats,
}

impl Outbox {
    fn push_transmit(&mut self, t: str0m::net::Transmit) {
        let contents: Vec<u8> = t.contents.into();
        self.stats.packets_out += 1;
        self.stats.bytes_out += contents.len() as u64;
        self.transmits.push_back(Transmit {
            source: t.source,
            destination: t.destination,
            contents,
        });
    }
}

/// A track the participant publishes: one of its own m-lines the SFU receives on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Published {
    pub(crate) mid: Mid,
    pub(crate) kind: MediaKind,
    pub(crate) source: TrackSource,
}

/// A publisher track, as seen by subscribers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct TrackRef {
    pub(crate) publisher: ParticipantId,
    pub(crate) mid: Mid,
}

/// Lifecycle of a server -> client m-line (offer/answer, RFC 3264 §8).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum OutState {
    /// Wanted; goes into the next server offer.
    ToOpen,
    /// Added in the outstanding server offer.
    Negotiating(Mid),
    /// Answered: frames of the publisher track are written here.
    Open(Mid),
    /// The publisher track is gone; goes into the next server offer as `inactive`.
    ToStop(Mid),
    /// Made `inactive` in the outstanding server offer; becomes a [`Spare`] when it is answered.
    NegotiatingStop(Mid),
}

/// A server -> client m-line that carries no track any more, kept `inactive` for the next track of
/// its kind.
///
/// JSEP (RFC 8829 §5.2.2) lets an offerer reuse the slot of a stopped m-line, but str0m's own offers
/// never do: every `add_media` appends an m-line and a stopped (port 0) one stays in the session
/// for good. Stopping the m-lines of leaving publishers would so grow every subscriber's SDP with
/// each join and leave, until it no longer fits a signaling frame. Instead such an m-line is turned
/// `inactive` and given, with a new direction, to the next track of the same kind: the m-lines of
/// a session are bounded by the most tracks it received at once (plus those changing hands).
/// The m-line keeps its `a=msid` (str0m cannot change it); clients map mids to publishers by the
/// `tracks` of each server offer, which never lists a spare.
#[derive(Debug, Clone, Copy)]
struct Spare {
    mid: Mid,
    kind: MediaKind,
    /// RTP time and arrival of the last frame written on it, so that the next track continues
    /// its timeline.
    last_out: Option<(u64, Instant)>,
}

/// A subscription: one publisher track sent to this participant on an m-line the SFU added.
#[derive(Debug)]
struct Subscription {
    track: TrackRef,
    kind: MediaKind,
    source: TrackSource,
    /// The publisher's label, the `a=msid` stream id.
    stream_id: String,
    state: OutState,
    /// [`SfuEvent::CodecUnsupported`] was emitted for it.
    codec_reported: bool,
    /// The size the subscriber renders it at (`setPreferredVideoSize`); `(0, 0)`: not rendered.
    preferred: Option<(u32, u32)>,
    /// Simulcast layer forwarded now (`None`: none yet, or the track has no layers).
    current: Option<Rid>,
    /// Simulcast layer wanted, switched to at its next keyframe.
    target: Option<Rid>,
    /// Added to the publisher's RTP time (in the codec clock) so that the m-line's timestamps
    /// continue across layer switches (each layer has its own random RTP timestamp base).
    time_offset: i64,
    /// RTP time and arrival of the last frame written, for the offset at the next switch.
    last_out: Option<(u64, Instant)>,
    /// The m-line was a [`Spare`]: its first frame continues the timeline of the last one written
    /// on it (`last_out`), so the receiver sees no jump in RTP time.
    rebase: bool,
    /// Whether video frames go to str0m's pacer queue now (simulcast m-lines of a constrained
    /// downlink stop while the queue is backed up).
    backlog: Backlog,
    /// Audio frames written since str0m's unsent packets were last looked at (every
    /// [`UNSENT_AUDIO_CHECK_EVERY`] frames: the lookup scans the streams).
    unchecked_audio: u8,
}

impl Subscription {
    fn rendered(&self) -> bool {
        self.preferred != Some((0, 0))
    }
}

/// Most packets of one audio m-line str0m may hold unsent before further frames for it are
/// dropped (10: 200 ms of 20 ms Opus frames). Audio is not paced, so a healthy m-line holds 0-1;
/// more means the media worker fell behind, and queueing more would only add latency and memory.
pub(crate) const MAX_UNSENT_AUDIO_PACKETS: usize = 10;

/// How often (in audio frames written to an m-line) its unsent packets are counted: at most this
/// many more than [`MAX_UNSENT_AUDIO_PACKETS`] can be queued. The count cost 2.4 % of the server's
/// CPU in `audio-room 10 x 100` when taken for every frame.
const UNSENT_AUDIO_CHECK_EVERY: u8 = 8;

/// What forwarding a frame to a subscriber asked of the engine besides the write.
#[derive(Debug, Default)]
pub(crate) struct ForwardSide {
    /// A keyframe of this layer is needed (the subscriber waits to switch to it, or to resume
    /// after its pacer queue drained).
    pub(crate) keyframe_for: Option<Rid>,
    /// The subscriber m-line switched layer at this frame.
    pub(crate) switched: bool,
}

/// What a subscriber m-line made of a frame written to it.
pub(crate) enum WriteOutcome {
    Written,
    /// Dropped: the m-line negotiated no codec for the frame. Reported once per subscription
    /// (`first` is true that time).
    Unsupported {
        source: TrackSource,
        first: bool,
    },
    /// Dropped for a passing reason (not connected yet, m-line not open).
    Dropped(String),
    /// Not for this subscriber: another simulcast layer than the one it gets, or not rendered.
    Skipped,
    /// Dropped: str0m still holds more than [`MAX_UNSENT_AUDIO_PACKETS`] unsent packets of the
    /// m-line (the worker is behind), and late audio is worth less than none.
    Backlogged,
}

#[derive(Debug, Clone, Copy)]
enum Link {
    /// Offer answered, ICE not connected yet; given up at `deadline`.
    Connecting { deadline: Instant },
    /// ICE connected at least once. From then on the connection lives as long as datagrams keep
    /// coming from the peer (see [`IDLE_TIMEOUT`]), whatever str0m's ICE-lite agent says.
    Connected,
}

pub(crate) struct Participant {
    id: ParticipantId,
    room: Arc<str>,
    /// The public id, used as the `a=msid` stream id of its tracks at subscribers.
    label: String,
    rtc: Rtc,
    published: Vec<Published>,
    subscriptions: Vec<Subscription>,
    /// Inactive server m-lines, reused before new ones are added.
    spares: Vec<Spare>,
    /// The outstanding server offer.
    pending: Option<SdpPendingOffer>,
    link: Link,
    /// When str0m wants `Input::Timeout`; `None` until the first drain.
    next_timeout: Option<Instant>,
    /// Latest `now` given to the `Rtc`, for the close drain of `shutdown`.
    last_now: Instant,
    /// When the last datagram from the peer was accepted (any kind: STUN, DTLS, SRTP, SRTCP), or
    /// when the participant was made. Once connected, the connection ends `IDLE_TIMEOUT` after it.
    last_recv: Instant,
    /// Per published m-line and simulcast layer.
    keyframe_throttle: Throttle<(Mid, Option<Rid>)>,
    /// Simulcast layers of its published m-lines, by mid.
    layers: HashMap<Mid, TrackLayers>,
    /// Dynacast state of its published simulcast m-lines, by mid.
    dynacast: HashMap<Mid, Dynacast>,
    /// Congestion state of its downlink (egress estimate, layer cap, probing).
    downlink: Downlink,
    /// Last cumulative (NACK, PLI + FIR) counts str0m reported per (mid, rid, direction: true = egress), so each
    /// stats event adds only what is new to [`SfuStats`](super::SfuStats).
    feedback_seen: HashMap<(Mid, Option<Rid>, bool), (u64, u64)>,
    /// Bytes sent to it (str0m's `PeerStats::peer_bytes_tx`) at the previous stats event, for
    /// the rate logged while its downlink is constrained.
    peer_bytes_tx: Option<(Instant, u64)>,
    /// Set once the connection is over; the engine then frees the participant.
    failure: Option<String>,
}

impl std::fmt::Debug for Participant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Participant")
            .field("id", &self.id)
            .field("room", &self.room)
            .field("published", &self.published)
            .field("subscriptions", &self.subscriptions)
            .field("spares", &self.spares)
            .field("pending", &self.pending.is_some())
            .field("link", &self.link)
            .field("failure", &self.failure)
            .finish_non_exhaustive()
    }
}

impl Participant {
    pub(crate) fn new(
        id: ParticipantId,
        room: Arc<str>,
        label: &str,
        rtc: Rtc,
        now: Instant,
        connect_deadline: Instant,
    ) -> Self {
        Participant {
            id,
            room,
            label: label.to_string(),
            rtc,
            published: Vec::new(),
            subscriptions: Vec::new(),
            spares: Vec::new(),
            pending: None,
            link: Link::Connecting {
                deadline: connect_deadline,
            },
            next_timeout: None,
            last_now: now,
            last_recv: now,
            keyframe_throttle: Throttle::new(KEYFRAME_REQUEST_INTERVAL),
            layers: HashMap::new(),
            dynacast: HashMap::new(),
            downlink: Downlink::default(),
            feedback_seen: HashMap::new(),
            peer_bytes_tx: None,
            failure: None,
        }
    }

    // ---- getters ----

    pub(crate) fn room(&self) -> &Arc<str> {
        &self.room
    }

    pub(crate) fn rtc_mut(&mut self) -> &mut Rtc {
        &mut self.rtc
    }

    pub(crate) fn accepts(&self, input: &Input) -> bool {
        self.failure.is_none() && self.rtc.accepts(input)
    }

    /// Why the connection ended, once it has.
    pub(crate) fn failure(&self) -> Option<&str> {
        self.failure.as_deref()
    }

    /// Earliest time [`Participant::handle_timeout`] must run.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        let link = match self.link {
            Link::Connecting { deadline } => deadline,
            Link::Connected => self.last_recv + IDLE_TIMEOUT,
        };
        Some(self.next_timeout.map_or(link, |t| t.min(link)))
    }

    pub(crate) fn label(&self) -> &str {
        &self.label
    }

    /// Whether a server offer to this participant awaits its answer.
    pub(crate) fn has_pending_offer(&self) -> bool {
        self.pending.is_some()
    }

    /// The tracks this participant publishes.
    pub(crate) fn published(&self) -> &[Published] {
        &self.published
    }

    /// Its published track on m-line `mid`.
    pub(crate) fn published_on(&self, mid: Mid) -> Option<Published> {
        self.published.iter().find(|p| p.mid == mid).copied()
    }

    /// The publisher track sent to this participant on its m-line `mid` (for keyframe requests).
    pub(crate) fn track_on(&self, mid: Mid) -> Option<TrackRef> {
        self.subscriptions
            .iter()
            .find(|s| match s.state {
                OutState::Open(m) | OutState::ToStop(m) | OutState::NegotiatingStop(m) => m == mid,
                OutState::ToOpen | OutState::Negotiating(_) => false,
            })
            .map(|s| s.track)
    }

    /// The open video m-lines, with the publisher track each carries.
    pub(crate) fn open_video(&self) -> Vec<TrackRef> {
        self.subscriptions
            .iter()
            .filter(|s| s.kind.is_video() && matches!(s.state, OutState::Open(_)))
            .map(|s| s.track)
            .collect()
    }

    /// Number of server -> client m-lines (any state but stopping).
    pub(crate) fn subscription_count(&self) -> usize {
        self.subscriptions
            .iter()
            .filter(|s| !matches!(s.state, OutState::ToStop(_) | OutState::NegotiatingStop(_)))
            .count()
    }

    // ---- input ----

    /// Gives a datagram or a timeout to the `Rtc`. An error (DTLS failure) ends the connection.
    /// Every datagram counts as a sign of life of the peer (see [`IDLE_TIMEOUT`]).
    pub(crate) fn handle_input(&mut self, input: Input) {
        let now = match &input {
            Input::Timeout(now) => *now,
            Input::Receive(now, _) => {
                self.last_recv = self.last_recv.max(*now);
                *now
            }
        };
        self.last_now = self.last_now.max(now);
        if let Err(e) = self.rtc.handle_input(input) {
            self.rtc.disconnect();
            self.fail(format!("connection error: {e}"));
        }
    }

    /// Advances timers; gives up when ICE has not connected by the connect deadline, or when a
    /// connected peer has sent nothing for [`IDLE_TIMEOUT`].
    pub(crate) fn handle_timeout(&mut self, now: Instant) {
        match self.link {
            Link::Connecting { deadline } if now >= deadline => {
                self.rtc.disconnect();
                self.fail("ICE did not connect in time".to_string());
                return;
            }
            Link::Connected if now >= self.last_recv + IDLE_TIMEOUT => {
                self.rtc.disconnect();
                self.fail(format!(
                    "nothing received for {} s",
                    now.saturating_duration_since(self.last_recv).as_secs()
                ));
                return;
            }
            Link::Connecting { .. } | Link::Connected => {}
        }
        self.handle_input(Input::Timeout(now));
    }

    // ---- mutators ----

    fn fail(&mut self, reason: String) {
        if self.failure.is_none() {
            info!(participant = %self.id, room = %self.room, %reason, "media connection ended");
            self.failure = Some(reason);
        }
    }

    /// Asks for a drain soon (`deadline` becomes the latest `now`), after a change made without a
    /// `now` at hand, such as a trickled candidate.
    pub(crate) fn wake(&mut self) {
        self.next_timeout = Some(self.last_now);
    }

    pub(crate) fn set_label(&mut self, label: &str) {
        if self.label != label {
            self.label = label.to_string();
        }
    }

    /// Accepts the participant's own offer (no server offer may be outstanding) and recomputes
    /// its published tracks: each of its m-lines the SFU can receive on, with the source from
    /// `sources` (by mid), else the one it had, else the default by kind and order.
    pub(crate) fn accept_offer(
        &mut self,
        offer: SdpOffer,
        sources: &[(String, TrackSource)],
    ) -> Result<SdpAnswer, RtcError> {
        let mids: Vec<Mid> = offer.media_lines.iter().map(|m| m.mid()).collect();
        let answer = self.rtc.sdp_api().accept_offer(offer)?;
        let ours: Vec<Mid> = self
            .subscriptions
            .iter()
            .filter_map(|s| match s.state {
                OutState::ToOpen => None,
                OutState::Negotiating(m)
                | OutState::Open(m)
                | OutState::ToStop(m)
                | OutState::NegotiatingStop(m) => Some(m),
            })
            .chain(self.spares.iter().map(|s| s.mid))
            .collect();
        let mut published: Vec<Published> = Vec::new();
        for mid in mids.into_iter().filter(|m| !ours.contains(m)) {
            let Some(media) = self.rtc.media(mid) else {
                continue;
            };
            if media.disabled() || !media.direction().is_receiving() {
                continue;
            }
            let kind = media.kind();
            let named = sources
                .iter()
                .find(|(m, _)| m.as_str() == &*mid)
                .map(|(_, s)| *s);
            let had = self
                .published
                .iter()
                .find(|p| p.mid == mid && p.kind == kind)
                .map(|p| p.source);
            let source = named.or(had).unwrap_or_else(|| {
                if kind.is_audio() {
                    TrackSource::Audio
                } else if published.iter().any(|p| p.source == TrackSource::Camera) {
                    TrackSource::ScreenShare
                } else {
                    TrackSource::Camera
                }
            });
            published.push(Published { mid, kind, source });
        }
        if published != self.published {
            debug!(participant = %self.id, ?published, "published tracks changed");
        }
        self.layers
            .retain(|mid, _| published.iter().any(|p| p.mid == *mid));
        self.published = published;
        Ok(answer)
    }

    /// Brings the subscriptions in line with `wanted` (every track of the other room members,
    /// with its kind, source and publisher label): missing ones are opened, gone ones stopped.
    pub(crate) fn reconcile(&mut self, wanted: &[(TrackRef, Published, &str)]) {
        let live = |s: &Subscription| {
            matches!(
                s.state,
                OutState::ToOpen | OutState::Negotiating(_) | OutState::Open(_)
            )
        };
        let is_wanted = |s: &Subscription| {
            wanted
                .iter()
                .any(|(t, p, _)| *t == s.track && p.source == s.source && p.kind == s.kind)
        };
        self.subscriptions
            .retain(|s| s.state != OutState::ToOpen || is_wanted(s));
        for s in &mut self.subscriptions {
            if let OutState::Open(m) = s.state
                && !is_wanted(s)
            {
                s.state = OutState::ToStop(m);
            }
        }
        for (track, published, label) in wanted {
            let present = self
                .subscriptions
                .iter()
                .any(|s| live(s) && s.track == *track && s.source == published.source);
            if !present {
                self.subscriptions.push(Subscription {
                    track: *track,
                    kind: published.kind,
                    source: published.source,
                    stream_id: (*label).to_string(),
                    state: OutState::ToOpen,
                    codec_reported: false,
                    preferred: None,
                    current: None,
                    target: None,
                    time_offset: 0,
                    last_out: None,
                    rebase: false,
                    backlog: Backlog::default(),
                    unchecked_audio: 0,
                });
            }
        }
    }

    /// Makes a server offer for the subscriptions to open or stop, unless one is outstanding.
    /// A subscription to open takes a [`Spare`] m-line of its kind if there is one (made `sendonly`
    /// again), else a new m-line; one to stop turns `inactive`. Returns the offer and the m-lines
    /// the participant has once it accepts it.
    pub(crate) fn make_offer(&mut self) -> Option<(String, Vec<OutTrack>)> {
        if self.pending.is_some() || self.failure.is_some() {
            return None;
        }
        // A spare the session no longer has inactive (an offer of the client turned it): the next
        // offer makes it inactive again.
        let spare_astray = self.spares.iter().any(|sp| {
            self.rtc
                .media(sp.mid)
                .is_some_and(|m| m.direction() != Direction::Inactive)
        });
        if !spare_astray
            && !self
                .subscriptions
                .iter()
                .any(|s| matches!(s.state, OutState::ToOpen | OutState::ToStop(_)))
        {
            return None;
        }
        // Spares the session stopped (rejected by the client) cannot carry a track again.
        let rtc = &self.rtc;
        self.spares
            .retain(|sp| rtc.media(sp.mid).is_some_and(|m| !m.disabled()));
        let mut api = self.rtc.sdp_api();
        for sp in &self.spares {
            api.set_direction(sp.mid, Direction::Inactive);
        }
        for s in &mut self.subscriptions {
            match s.state {
                OutState::ToOpen => {
                    if let Some(i) = self.spares.iter().position(|sp| sp.kind == s.kind) {
                        let spare = self.spares.remove(i);
                        // Already inactive: the second call alone makes the change to negotiate.
                        api.set_direction(spare.mid, Direction::Inactive);
                        api.set_direction(spare.mid, Direction::SendOnly);
                        s.last_out = spare.last_out;
                        s.rebase = spare.last_out.is_some();
                        s.state = OutState::Negotiating(spare.mid);
                        debug!(participant = %self.id, mid = %spare.mid, publisher = %s.track.publisher,
                            "spare m-line reused");
                        continue;
                    }
                    let mid = api.add_media(
                        s.kind,
                        Direction::SendOnly,
                        Some(s.stream_id.clone()),
                        Some(s.source.as_str().to_string()),
                        None,
                    );
                    s.state = OutState::Negotiating(mid);
                }
                OutState::ToStop(mid) => {
                    api.set_direction(mid, Direction::Inactive);
                    s.state = OutState::NegotiatingStop(mid);
                }
                _ => {}
            }
        }
        let Some((offer, pending)) = api.apply() else {
            // Only m-lines already inactive or stopped: nothing to negotiate.
            self.release_stopping();
            return None;
        };
        self.pending = Some(pending);
        Some((offer.to_sdp_string(), self.out_tracks()))
    }

    /// Turns the subscriptions made inactive in the last server offer into [`Spare`]s (those the
    /// client rejected are forgotten: a stopped m-line cannot be enabled again).
    fn release_stopping(&mut self) {
        let rtc = &self.rtc;
        let spares = &mut self.spares;
        self.subscriptions.retain(|s| {
            let OutState::NegotiatingStop(mid) = s.state else {
                return true;
            };
            if rtc.media(mid).is_some_and(|m| !m.disabled())
                && !spares.iter().any(|sp| sp.mid == mid)
            {
                spares.push(Spare {
                    mid,
                    kind: s.kind,
                    last_out: s.last_out,
                });
            }
            false
        });
    }

    /// The server -> client m-lines being negotiated or open.
    fn out_tracks(&self) -> Vec<OutTrack> {
        self.subscriptions
            .iter()
            .filter_map(|s| match s.state {
                OutState::Negotiating(m) | OutState::Open(m) => Some(OutTrack {
                    mid: m.to_string(),
                    publisher: s.track.publisher,
                    source: s.source,
                }),
                _ => None,
            })
            .collect()
    }

    /// Accepts the answer to the outstanding server offer. Returns the publisher tracks of the
    /// video m-lines it opened.
    ///
    /// # Errors
    /// `Err(None)` without an outstanding offer. `Err(Some(reason))` when str0m refuses the
    /// answer: the offer is then void, its additions go into the next one.
    pub(crate) fn accept_answer(
        &mut self,
        answer: SdpAnswer,
    ) -> Result<Vec<TrackRef>, Option<String>> {
        let pending = self.pending.take().ok_or(None)?;
        if let Err(e) = self.rtc.sdp_api().accept_answer(pending, answer) {
            // set_direction already made the stopping m-lines inactive locally; the next offer
            // carries them so.
            self.release_stopping();
            let mut reverted = Vec::new();
            for s in &mut self.subscriptions {
                if let OutState::Negotiating(mid) = s.state {
                    s.state = OutState::ToOpen;
                    // A reused spare was made sendonly locally: it is a spare again (the new
                    // m-lines of the void offer never made it into the session).
                    if self.rtc.media(mid).is_some_and(|m| !m.disabled()) {
                        reverted.push(Spare {
                            mid,
                            kind: s.kind,
                            last_out: s.last_out.take(),
                        });
                    }
                    s.rebase = false;
                }
            }
            let mut api = self.rtc.sdp_api();
            for sp in &reverted {
                api.set_direction(sp.mid, Direction::Inactive);
            }
            drop(api);
            self.spares.extend(reverted);
            return Err(Some(e.to_string()));
        }
        self.release_stopping();
        let mut opened = Vec::new();
        for s in &mut self.subscriptions {
            if let OutState::Negotiating(m) = s.state {
                s.state = OutState::Open(m);
                if s.kind.is_video() {
                    opened.push(s.track);
                }
            }
        }
        Ok(opened)
    }

    /// Writes a frame of publisher track `track` to the m-line open for it, if any. For a
    /// simulcast frame (`data.rid` set) `layers` are the track's live layers, lowest first: only
    /// frames of the m-line's current layer are written, and it switches to the layer
    /// [`select`]ed for it at that layer's next keyframe. While the downlink is constrained, the
    /// m-line still carries a larger layer than the one selected and str0m's pacer queue is
    /// backed up ([`Backlog`]), no frame is written; the m-line resumes at a keyframe of the
    /// layer selected once the queue drained. An audio frame is packetized at once (the
    /// subscriber's str0m timeout is run after the write), or dropped
    /// ([`WriteOutcome::Backlogged`]) while str0m still holds more than
    /// [`MAX_UNSENT_AUDIO_PACKETS`] unsent packets of the m-line. The caller must drain before
    /// the next write (str0m's `WriteWithoutPoll`).
    pub(crate) fn forward(
        &mut self,
        now: Instant,
        track: TrackRef,
        data: &MediaData,
        layers: &[LayerView],
        side: &mut ForwardSide,
    ) -> Option<WriteOutcome> {
        let index = self
            .subscriptions
            .iter()
            .position(|s| s.track == track && matches!(s.state, OutState::Open(_)))?;
        let budget = self.video_budget();
        let constrained = self.downlink.is_constrained();
        let estimate = self.downlink.estimate();
        let queued = if data.rid.is_some() {
            pacing_time(self.queued_video_bytes(), estimate)
        } else {
            Duration::ZERO
        };
        // Indexing cannot fail: `index` was just found.
        let sub = &mut self.subscriptions[index];
        let OutState::Open(mid) = sub.state else {
            return None;
        };
        if !sub.rendered() {
            sub.current = None;
            sub.target = None;
            return Some(WriteOutcome::Skipped);
        }
        if let Some(rid) = data.rid {
            sub.target = select(layers, sub.preferred, budget, sub.current);
            let rank = |r: Option<Rid>| r.and_then(|r| layers.iter().position(|l| l.rid == r));
            let oversized = rank(sub.current) > rank(sub.target);
            let (admit, changed) = sub.backlog.admit(now, queued, constrained, oversized);
            if changed {
                debug!(participant = %self.id, %mid, ?admit, queued_ms = queued.as_millis() as u64,
                    estimate, target = ?sub.target, "downlink backlog");
            }
            match admit {
                Admit::Drop => return Some(WriteOutcome::Skipped),
                Admit::Keyframe if sub.target != Some(rid) || !data.is_keyframe() => {
                    side.keyframe_for = sub.target;
                    return Some(WriteOutcome::Skipped);
                }
                Admit::Keyframe | Admit::Write => {}
            }
            if sub.current != sub.target && sub.target == Some(rid) {
                if data.is_keyframe() {
                    debug!(participant = %self.id, %mid, from = ?sub.current, to = %rid,
                        "simulcast layer switch");
                    sub.current = Some(rid);
                    side.switched = true;
                    // Continue the m-line's timeline: the new layer's first frame follows the
                    // last one written by the wall-clock time between them.
                    sub.time_offset = continued_offset(sub.last_out, data);
                    sub.rebase = false;
                } else {
                    side.keyframe_for = Some(rid);
                }
            }
            if sub.current != Some(rid) {
                return Some(WriteOutcome::Skipped);
            }
            if data.is_keyframe() {
                sub.backlog
                    .on_keyframe_written(now, pacing_time(data.data.len(), estimate));
            }
        } else if sub.rebase {
            // A reused m-line: the new track continues the timeline of the one it carried.
            sub.time_offset = continued_offset(sub.last_out, data);
            sub.rebase = false;
        }
        let time = MediaTime::new(
            data.time.numer().wrapping_add_signed(sub.time_offset),
            data.time.frequency(),
        );
        let source = sub.source;
        let audio = sub.kind.is_audio();
        let check = audio && sub.unchecked_audio == 0;
        if audio {
            sub.unchecked_audio = (sub.unchecked_audio + 1) % UNSENT_AUDIO_CHECK_EVERY;
        }
        if check && self.unsent_packets(mid) > MAX_UNSENT_AUDIO_PACKETS {
            // Looked at again on the next frame while it is backed up.
            self.subscriptions[index].unchecked_audio = 0;
            return Some(WriteOutcome::Backlogged);
        }
        Some(match self.write_media(mid, data, time) {
            Ok(()) => {
                self.subscriptions[index].last_out = Some((time.numer(), data.network_time));
                if audio {
                    // str0m packetizes one written frame per m-line and timeout: run it now, or a
                    // worker that takes many datagrams between timer passes queues audio faster
                    // than it goes out (unbounded latency and memory under load).
                    self.handle_input(Input::Timeout(now));
                }
                WriteOutcome::Written
            }
            Err(WriteError::NoCodec) => {
                let sub = &mut self.subscriptions[index];
                let first = !sub.codec_reported;
                sub.codec_reported = true;
                WriteOutcome::Unsupported { source, first }
            }
            Err(WriteError::Other(reason)) => WriteOutcome::Dropped(reason),
        })
    }

    /// Packets str0m holds unsent for m-line `mid` (at its latest queue update); 0 if unknown.
    fn unsent_packets(&mut self, mid: Mid) -> usize {
        self.rtc
            .direct_api()
            .stream_tx_by_mid(mid, None)
            .and_then(|s| Some(s.queue_info()?.packet_count()))
            .unwrap_or(0)
    }

    /// Bytes str0m's pacer holds for the open video m-lines (media, resends and padding of the
    /// latest pacer update).
    fn queued_video_bytes(&mut self) -> usize {
        // Disjoint field borrows: no list of mids is built per frame.
        let mut api = self.rtc.direct_api();
        self.subscriptions
            .iter()
            .filter(|s| s.kind.is_video())
            .filter_map(|s| match s.state {
                OutState::Open(mid) => Some(mid),
                _ => None,
            })
            .filter_map(|mid| Some(api.stream_tx_by_mid(mid, None)?.queue_info()?.byte_size()))
            .sum()
    }

    /// The downlink estimate shared equally by the rendered video m-lines, bit/s; `None` (no cap)
    /// unless the downlink is constrained ([`Downlink`]: an estimate from an underused link only
    /// says what was sent, so it caps layers only after it showed congestion, until it covers
    /// the preferred layers again).
    fn video_budget(&self) -> Option<u64> {
        let estimate = self.downlink.budget()?;
        let videos = self
            .subscriptions
            .iter()
            .filter(|s| s.kind.is_video() && s.rendered() && matches!(s.state, OutState::Open(_)))
            .count()
            .max(1);
        Some(estimate / videos as u64)
    }

    /// Sets the size the subscriber renders its m-line `mid` at. Returns the publisher track and
    /// whether the m-line went from not rendered to rendered (it then needs a keyframe), or `None`
    /// when no open or negotiating video m-line has this mid.
    pub(crate) fn set_preferred_size(
        &mut self,
        mid: &str,
        width: u32,
        height: u32,
    ) -> Option<(TrackRef, bool)> {
        let sub = self.subscriptions.iter_mut().find(|s| {
            s.kind.is_video()
                && match s.state {
                    OutState::Open(m) | OutState::Negotiating(m) => &*m == mid,
                    _ => false,
                }
        })?;
        let was_rendered = sub.rendered();
        sub.preferred = Some((width, height));
        Some((sub.track, !was_rendered && sub.rendered()))
    }

    /// The simulcast layer forwarded (else wanted) on the subscriber m-line `mid`: where its
    /// keyframe requests go.
    pub(crate) fn layer_on(&self, mid: Mid) -> Option<Rid> {
        self.subscriptions
            .iter()
            .find(|s| matches!(s.state, OutState::Open(m) if m == mid))
            .and_then(|s| s.current.or(s.target))
    }

    /// Accounts a frame of one of its published simulcast m-lines.
    pub(crate) fn observe_layer(&mut self, data: &MediaData) {
        if let Some(rid) = data.rid {
            self.layers.entry(data.mid).or_default().observe(rid, data);
        }
    }

    /// The live simulcast layers of its published m-line `mid`, lowest first; empty without
    /// simulcast.
    pub(crate) fn ranked_layers(&self, mid: Mid, now: Instant) -> Vec<LayerView> {
        let expected = match self.rtc.media(mid).map(|m| m.rids_rx()) {
            Some(Rids::Specific(rids)) => rids.len(),
            _ => 0,
        };
        self.layers
            .get(&mid)
            .map(|l| l.ranked(now, expected))
            .unwrap_or_default()
    }

    /// Pauses the layers of its published simulcast m-line `mid` that no subscriber wants
    /// (`wanted`) since [`DYNACAST_PAUSE_AFTER`], and resumes wanted ones that are paused.
    /// Returns the rids to keep sending (lowest first) when that set changed, for the publisher
    /// to be told ([`SfuEvent::LayersWanted`]).
    pub(crate) fn apply_wanted_layers(
        &mut self,
        mid: Mid,
        wanted: &[Rid],
        now: Instant,
    ) -> Option<Vec<Rid>> {
        let views = self.ranked_layers(mid, now);
        let layers = self.layers.get_mut(&mid)?;
        let state = self.dynacast.entry(mid).or_default();
        let mut changed = false;
        for v in &views {
            if wanted.contains(&v.rid) {
                state.unwanted_since.remove(&v.rid);
                if layers.is_paused(v.rid) {
                    layers.resume(v.rid, now);
                    changed = true;
                }
            } else {
                let since = *state.unwanted_since.entry(v.rid).or_insert(now);
                if !layers.is_paused(v.rid)
                    && now.saturating_duration_since(since) >= DYNACAST_PAUSE_AFTER
                {
                    layers.pause(v.rid, now);
                    changed = true;
                }
            }
        }
        if !changed {
            return None;
        }
        let active: Vec<Rid> = views
            .iter()
            .map(|v| v.rid)
            .filter(|r| !layers.is_paused(*r))
            .collect();
        debug!(participant = %self.id, %mid, ?active, "dynacast: layers wanted");
        Some(active)
    }

    /// The subscribed video tracks with the preferred size and current layer of each rendered
    /// m-line, for dynacast.
    pub(crate) fn layer_wants(
        &self,
    ) -> impl Iterator<Item = (TrackRef, Option<(u32, u32)>, Option<Rid>)> + '_ {
        self.video_subscriptions()
    }

    /// The downlink rate its video layers must fit, bit/s (`None`: no cap).
    pub(crate) fn layer_budget(&self) -> Option<u64> {
        self.video_budget()
    }

    /// Whether its published m-line `mid` sends simulcast layers.
    pub(crate) fn is_simulcast(&self, mid: Mid) -> bool {
        self.layers.contains_key(&mid)
    }

    /// The subscribed video tracks with the preferred size and current layer of each m-line
    /// (`None` while frames are held back from a backed-up pacer queue: it sends nothing), for
    /// the engine's bandwidth targets.
    pub(crate) fn video_subscriptions(
        &self,
    ) -> impl Iterator<Item = (TrackRef, Option<(u32, u32)>, Option<Rid>)> + '_ {
        self.subscriptions
            .iter()
            .filter(|s| s.kind.is_video() && s.rendered() && matches!(s.state, OutState::Open(_)))
            .map(|s| {
                (
                    s.track,
                    s.preferred,
                    s.current.filter(|_| s.backlog.is_flowing()),
                )
            })
    }

    /// Tells str0m's bandwidth estimator the video rate sent now (`current`), the rate of the
    /// lowest layers (`floor`) and the rate the preferred layers need (`desired`), all bit/s;
    /// [`Downlink`] decides what to probe for.
    pub(crate) fn set_bitrate_targets(
        &mut self,
        now: Instant,
        current: u64,
        floor: u64,
        desired: u64,
    ) {
        if self.failure.is_some() {
            return;
        }
        let queued = self
            .subscriptions
            .iter()
            .filter(|s| s.kind.is_video())
            .filter_map(|s| match s.state {
                OutState::Open(mid) => Some(mid),
                _ => None,
            })
            .collect::<Vec<_>>()
            .into_iter()
            .filter_map(|mid| {
                let mut api = self.rtc.direct_api();
                let first = api
                    .stream_tx_by_mid(mid, None)?
                    .queue_info()?
                    .first_unsent()?;
                Some(now.saturating_duration_since(first))
            })
            .max();
        if let Some(delay) = queued
            && self.downlink.on_queue_delay(now, delay)
        {
            debug!(participant = %self.id, delay_ms = delay.as_millis() as u64,
                estimate = ?self.downlink.estimate(), "downlink congested: pacer queue");
        }
        let targets = self.downlink.targets(now, current, floor, desired);
        if let Some(rate) = targets.reset {
            debug!(participant = %self.id, rate, "bandwidth estimator restarted");
            self.rtc.bwe().reset(Bitrate::bps(rate));
        }
        self.rtc
            .bwe()
            .set_bitrate(Bitrate::bps(targets.minimum), Bitrate::bps(targets.desired));
    }

    /// Whether its downlink estimate caps the layers it gets.
    pub(crate) fn is_constrained(&self) -> bool {
        self.downlink.is_constrained()
    }

    /// Latest downlink estimate, bit/s.
    pub(crate) fn egress_estimate(&self) -> Option<u64> {
        self.downlink.estimate()
    }

    /// Writes a frame received from another participant to this participant's m-line `mid`, mapping
    /// the payload type to the one negotiated here. The caller must drain before the next write to the
    /// same m-line (str0m's `WriteWithoutPoll`).
    ///
    /// # Errors
    /// [`WriteError::NoCodec`] when no codec for the frame was negotiated on the m-line, else a
    /// short reason (m-line not sending, not connected yet); the frame is then dropped.
    fn write_media(
        &mut self,
        mid: Mid,
        data: &MediaData,
        time: MediaTime,
    ) -> Result<(), WriteError> {
        let Some(writer) = self.rtc.writer(mid) else {
            return Err(WriteError::Other(format!("no writable m-line {mid}")));
        };
        let Some(pt) = negotiated_pt(&writer, data.params) else {
            return Err(WriteError::NoCodec);
        };
        let mut writer = writer;
        if let Some(level) = data.ext_vals.audio_level {
            writer = writer.audio_level(level, data.ext_vals.voice_activity.unwrap_or(false));
        }
        if let Some(orientation) = data.ext_vals.video_orientation {
            writer = writer.video_orientation(orientation);
        }
        writer
            .write(pt, data.network_time, time, data.data.clone())
            .map_err(|e| WriteError::Other(e.to_string()))
    }

    /// Asks this participant (a publisher) for a keyframe on its m-line `mid` (of simulcast layer
    /// `rid`), at most once per [`KEYFRAME_REQUEST_INTERVAL`] per m-line and layer. Uses `kind` if negotiated, else the other kind. Returns whether a
    /// request was queued; the caller must drain.
    pub(crate) fn request_keyframe(
        &mut self,
        mid: Mid,
        rid: Option<Rid>,
        kind: KeyframeRequestKind,
        now: Instant,
    ) -> bool {
        if !self.keyframe_throttle.allows(&(mid, rid), now) {
            return false;
        }
        let Some(mut writer) = self.rtc.writer(mid) else {
            return false;
        };
        let other = match kind {
            KeyframeRequestKind::Pli => KeyframeRequestKind::Fir,
            KeyframeRequestKind::Fir => KeyframeRequestKind::Pli,
        };
        let kind = if writer.is_request_keyframe_possible(kind) {
            kind
        } else if writer.is_request_keyframe_possible(other) {
            other
        } else {
            return false;
        };
        match writer.request_keyframe(rid, kind) {
            Ok(()) => {
                self.keyframe_throttle.record((mid, rid), now);
                true
            }
            Err(e) => {
                // Normal before the first packet of the stream arrived (no receive stream yet).
                debug!(participant = %self.id, %mid, error = %e, "keyframe request not sent");
                false
            }
        }
    }

    // ---- output ----

    /// Drains the `Rtc` until `Output::Timeout`, collecting datagrams, events and work in `out`.
    pub(crate) fn drain(&mut self, now: Instant, out: &mut Outbox) {
        for _ in 0..MAX_OUTPUTS_PER_DRAIN {
            if self.failure.is_none() && !self.rtc.is_alive() {
                self.fail("connection closed".to_string());
            }
            if self.failure.is_some() {
                out.failed.push(self.id);
                return;
            }
            match self.rtc.poll_output() {
                Ok(Output::Timeout(t)) => {
                    self.next_timeout = Some(t);
                    return;
                }
                Ok(Output::Transmit(t)) => out.push_transmit(t),
                Ok(Output::Event(event)) => self.handle_event(now, event, out),
                Err(e) => {
                    self.rtc.disconnect();
                    self.fail(format!("connection error: {e}"));
                }
            }
        }
        warn!(participant = %self.id, "drain bound reached; continuing on the next timeout");
        self.next_timeout = Some(now);
    }

    fn handle_event(&mut self, now: Instant, event: Event, out: &mut Outbox) {
        match event {
            Event::IceConnectionStateChange(state) => match state {
                IceConnectionState::Connected | IceConnectionState::Completed => {
                    if let Link::Connecting { .. } = self.link {
                        self.link = Link::Connected;
                        out.connected.push(self.id);
                        info!(participant = %self.id, room = %self.room, "media connected");
                        out.events.push_back(SfuEvent::Connected {
                            participant: self.id,
                        });
                    }
                }
                // Before the first connection this is a real failure (the only pair went away).
                IceConnectionState::Disconnected
                    if matches!(self.link, Link::Connecting { .. }) =>
                {
                    self.rtc.disconnect();
                    self.fail("ICE disconnected".to_string());
                }
                // Once connected, str0m's ICE-lite agent reports Disconnected when no binding
                // *request* came for 15 s, but peers need not send any: libnice 0.1.21 (GStreamer
                // 1.22 on Debian 12) only sends a binding indication every 25 s. str0m keeps its
                // send address (media goes on) and still takes the peer's DTLS/SRTP from it, so
                // the connection is kept; `IDLE_TIMEOUT` ends it when the peer really goes quiet.
                IceConnectionState::Disconnected => {
                    debug!(participant = %self.id, room = %self.room,
                        "ICE-lite reports no recent binding request; kept while datagrams arrive");
                }
                IceConnectionState::New | IceConnectionState::Checking => {}
            },
            // Published tracks are recomputed synchronously from the session after each offer,
            // and server m-lines are tracked by their own state machine: these events add nothing.
            Event::MediaAdded(_) | Event::MediaChanged(_) => {}
            Event::MediaData(data) => {
                self.observe_layer(&data);
                if !data.contiguous
                    && data.params.spec().codec.is_video()
                    && self.request_keyframe(data.mid, data.rid, KeyframeRequestKind::Pli, now)
                {
                    out.stats.keyframe_requests_generated += 1;
                }
                out.work.push_back(Work::Media {
                    from: self.id,
                    data: Box::new(data),
                });
            }
            Event::EgressBitrateEstimate(
                BweKind::Twcc { estimate, .. } | BweKind::Remb { estimate, .. },
            ) => {
                let estimate = estimate.as_u64();
                let was_constrained = self.downlink.is_constrained();
                if self.downlink.on_estimate(now, estimate) && !was_constrained {
                    debug!(participant = %self.id, estimate, "downlink congested");
                }
            }
            // The estimator's unsmoothed value and the TWCC loss of the last second: faster than
            // the smoothed estimate and the receiver reports (`Downlink::on_peer_stats`).
            Event::PeerStats(s) => {
                let raw = s.bwe_tx.map(|b| b.as_u64());
                let was_constrained = self.downlink.is_constrained();
                if let Some(t) = self
                    .downlink
                    .on_peer_stats(now, raw, s.egress_loss_fraction)
                {
                    if let Some(rate) = t.reset {
                        debug!(participant = %self.id, rate, "bandwidth estimator restarted: probe result pulled back");
                        self.rtc.bwe().reset(Bitrate::bps(rate));
                    }
                    self.rtc
                        .bwe()
                        .set_bitrate(Bitrate::bps(t.minimum), Bitrate::bps(t.desired));
                }
                let previous = self.peer_bytes_tx.replace((now, s.peer_bytes_tx));
                if was_constrained {
                    let sent = previous.map(|(t, b)| {
                        let secs = now.saturating_duration_since(t).as_secs_f64().max(0.001);
                        (s.peer_bytes_tx.saturating_sub(b) as f64 * 8.0 / secs) as u64
                    });
                    debug!(participant = %self.id, raw, loss = ?s.egress_loss_fraction, sent,
                        estimate = ?self.downlink.estimate(),
                        released = !self.downlink.is_constrained(), "downlink stats");
                }
            }
            Event::KeyframeRequest(request) => {
                out.work.push_back(Work::KeyframeRequest {
                    from: self.id,
                    request,
                });
            }
            // RTCP feedback counters (RFC 4585): egress = what this participant asked of us as a subscriber,
            // ingress = what we asked of it as a publisher.
            Event::MediaEgressStats(s) => {
                let (nacks, plis) =
                    self.feedback_delta((s.mid, s.rid, true), s.nacks, s.plis + s.firs);
                if nacks > 0 {
                    debug!(participant = %self.id, mid = %s.mid, nacks, packets = s.packets, loss = ?s.loss, "egress NACKs");
                }
                if let Some(fraction_lost) = s.loss {
                    if fraction_lost > 0.0 && nacks == 0 {
                        debug!(participant = %self.id, mid = %s.mid, fraction_lost, "egress loss reported");
                    }
                    self.downlink.on_loss_report(now, fraction_lost);
                }
                out.stats.nacks_received += nacks;
                out.stats.plis_received += plis;
            }
            Event::MediaIngressStats(s) => {
                let (nacks, plis) =
                    self.feedback_delta((s.mid, s.rid, false), s.nacks, s.plis + s.firs);
                out.stats.nacks_sent += nacks;
                out.stats.plis_sent += plis;
            }
            _ => {}
        }
    }

    /// New NACKs and keyframe requests since the last stats event of this stream (cumulative counters in).
    fn feedback_delta(
        &mut self,
        key: (Mid, Option<Rid>, bool),
        nacks: u64,
        plis: u64,
    ) -> (u64, u64) {
        let seen = self.feedback_seen.entry(key).or_insert((0, 0));
        let delta = (nacks.saturating_sub(seen.0), plis.saturating_sub(seen.1));
        *seen = (nacks.max(seen.0), plis.max(seen.1));
        delta
    }

    /// Closes the connection (RTCP BYE, DTLS close_notify, RFC 5246 §7.2.1) and hands the last
    /// datagrams to `out`, so the browser learns at once that the call ended.
    pub(crate) fn shutdown(mut self, out: &mut Outbox) {
        if self.failure.is_some() || !self.rtc.is_alive() {
            return;
        }
        if self.rtc.close().is_err() {
            return;
        }
        let now = self.last_now;
        for pass in 0..2 {
            if pass == 1 {
                if !self.rtc.is_alive() {
                    return;
                }
                // Second pass: let timers release what closing scheduled.
                let _ = self.rtc.handle_input(Input::Timeout(now));
            }
            for _ in 0..64 {
                if !self.rtc.is_alive() {
                    return;
                }
                match self.rtc.poll_output() {
                    Ok(Output::Transmit(t)) => out.push_transmit(t),
                    Ok(Output::Event(_)) => {}
                    Ok(Output::Timeout(_)) | Err(_) => break,
                }
            }
        }
    }
}

/// The offset to add to `data`'s RTP time so that it follows the last frame written on an m-line
/// (`last_out`: its RTP time and arrival) by the wall-clock time between them; 0 without one.
fn continued_offset(last_out: Option<(u64, Instant)>, data: &MediaData) -> i64 {
    match last_out {
        Some((last, at)) => {
            let elapsed = data.network_time.saturating_duration_since(at);
            let step = (elapsed.as_secs_f64() * f64::from(data.time.denom()))
                .round()
                .max(1.0) as u64;
            (last.wrapping_add(step)).wrapping_sub(data.time.numer()) as i64
        }
        None => 0,
    }
}

enum WriteError {
    NoCodec,
    Other(String),
}

/// The payload type to send `params` with on the writer's m-line: the one str0m matches, if it was
/// negotiated on this m-line, else a negotiated one of the same codec, clock rate and (H.264)
/// packetization mode.
fn negotiated_pt(writer: &Writer<'_>, params: PayloadParams) -> Option<Pt> {
    if let Some(pt) = writer.match_params(params)
        && writer.payload_params().any(|p| p.pt() == pt)
    {
        return Some(pt);
    }
    let spec = params.spec();
    writer
        .payload_params()
        .find(|p| {
            let s = p.spec();
            s.codec == spec.codec
                && s.clock_rate == spec.clock_rate
                && s.format.packetization_mode == spec.format.packetization_mode
        })
        .map(|p| p.pt())
}
