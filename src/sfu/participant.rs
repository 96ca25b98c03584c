//! One participant: its str0m `Rtc`, its m-lines, and the translation of str0m output into SFU work.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use str0m::format::PayloadParams;
use str0m::media::{
    Direction, KeyframeRequest, KeyframeRequestKind, MediaData, MediaKind, Mid, Pt, Rid, Writer,
};
use str0m::{Event, IceConnectionState, Input, Output, Rtc};
use tracing::{debug, info, warn};

use super::throttle::{KEYFRAME_REQUEST_INTERVAL, Throttle};
use super::types::{ParticipantId, SfuEvent, SfuStats, Transmit};

/// Upper bound of outputs taken from one `Rtc` in one drain. str0m always ends a drain with
/// `Output::Timeout`; the bound only keeps a bug from hanging the worker (the rest is drained on the
/// next timeout, scheduled immediately).
const MAX_OUTPUTS_PER_DRAIN: usize = 20_000;

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

/// Where the frames written to one of a subscriber's m-lines come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Source {
    pub(crate) publisher: ParticipantId,
    pub(crate) mid: Mid,
}

#[derive(Debug)]
struct Track {
    mid: Mid,
    kind: MediaKind,
    /// Direction from the SFU's point of view: `SendRecv` for a browser's `sendrecv` m-line.
    direction: Direction,
}

#[derive(Debug, Clone, Copy)]
enum Link {
    /// Offer answered, ICE not connected yet; given up at `deadline`.
    Connecting { deadline: Instant },
    /// ICE connected at least once.
    Connected,
}

#[derive(Debug)]
pub(crate) struct Participant {
    id: ParticipantId,
    room: Arc<str>,
    rtc: Rtc,
    tracks: Vec<Track>,
    link: Link,
    /// When str0m wants `Input::Timeout`; `None` until the first drain.
    next_timeout: Option<Instant>,
    /// Latest `now` given to the `Rtc`, for the close drain of `shutdown`.
    last_now: Instant,
    keyframe_throttle: Throttle<Mid>,
    /// For each m-line the SFU sends on, the publisher track last written to it, so keyframe requests
    /// for that m-line reach the right publisher.
    sources: HashMap<Mid, Source>,
    /// Set once the connection is over; the engine then frees the participant.
    failure: Option<String>,
}

impl Participant {
    pub(crate) fn new(
        id: ParticipantId,
        room: Arc<str>,
        rtc: Rtc,
        now: Instant,
        connect_deadline: Instant,
    ) -> Self {
        Participant {
            id,
            room,
            rtc,
            tracks: Vec::new(),
            link: Link::Connecting {
                deadline: connect_deadline,
            },
            next_timeout: None,
            last_now: now,
            keyframe_throttle: Throttle::new(KEYFRAME_REQUEST_INTERVAL),
            sources: HashMap::new(),
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
        let connect = match self.link {
            Link::Connecting { deadline } => Some(deadline),
            Link::Connected => None,
        };
        match (self.next_timeout, connect) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Kind of the m-line `mid`, if the participant has one.
    pub(crate) fn track_kind(&self, mid: Mid) -> Option<MediaKind> {
        self.tracks.iter().find(|t| t.mid == mid).map(|t| t.kind)
    }

    /// The m-line on which this participant receives frames of `kind` from others (1:1 model: the
    /// first one that lets the SFU send).
    pub(crate) fn send_mid(&self, kind: MediaKind) -> Option<Mid> {
        self.tracks
            .iter()
            .find(|t| t.kind == kind && t.direction.is_sending())
            .map(|t| t.mid)
    }

    /// The m-line on which this participant publishes `kind` (the first one the SFU receives on).
    pub(crate) fn receive_mid(&self, kind: MediaKind) -> Option<Mid> {
        self.tracks
            .iter()
            .find(|t| t.kind == kind && t.direction.is_receiving())
            .map(|t| t.mid)
    }

    pub(crate) fn source(&self, mid: Mid) -> Option<Source> {
        self.sources.get(&mid).copied()
    }

    // ---- input ----

    /// Gives a datagram or a timeout to the `Rtc`. An error (DTLS failure) ends the connection.
    pub(crate) fn handle_input(&mut self, input: Input) {
        let now = match &input {
            Input::Timeout(now) | Input::Receive(now, _) => *now,
        };
        self.last_now = self.last_now.max(now);
        if let Err(e) = self.rtc.handle_input(input) {
            self.rtc.disconnect();
            self.fail(format!("connection error: {e}"));
        }
    }

    /// Advances timers; gives up when ICE has not connected by the connect deadline.
    pub(crate) fn handle_timeout(&mut self, now: Instant) {
        if let Link::Connecting { deadline } = self.link
            && now >= deadline
        {
            self.rtc.disconnect();
            self.fail("ICE did not connect in time".to_string());
            return;
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

    pub(crate) fn set_source(&mut self, mid: Mid, source: Source) {
        self.sources.insert(mid, source);
    }

    /// Forgets every source published by `publisher` (it left).
    pub(crate) fn forget_publisher(&mut self, publisher: ParticipantId) {
        self.sources.retain(|_, s| s.publisher != publisher);
    }

    /// Writes a frame received from another participant to this participant's m-line `mid`, mapping
    /// the payload type to the one negotiated here. The caller must drain before the next write to the
    /// same m-line (str0m's `WriteWithoutPoll`).
    ///
    /// # Errors
    /// A short reason when the frame cannot be written (no common codec, m-line not sending, not
    /// connected yet); the frame is then dropped.
    pub(crate) fn write_media(&mut self, mid: Mid, data: &MediaData) -> Result<(), String> {
        let Some(writer) = self.rtc.writer(mid) else {
            return Err(format!("no writable m-line {mid}"));
        };
        let Some(pt) = negotiated_pt(&writer, data.params) else {
            return Err(format!(
                "{:?} not negotiated on m-line {mid}",
                data.params.spec().codec
            ));
        };
        let mut writer = writer;
        if let Some(level) = data.ext_vals.audio_level {
            writer = writer.audio_level(level, data.ext_vals.voice_activity.unwrap_or(false));
        }
        if let Some(orientation) = data.ext_vals.video_orientation {
            writer = writer.video_orientation(orientation);
        }
        writer
            .write(pt, data.network_time, data.time, data.data.clone())
            .map_err(|e| e.to_string())
    }

    /// Asks this participant (a publisher) for a keyframe on its m-line `mid`, at most once per
    /// [`KEYFRAME_REQUEST_INTERVAL`]. Uses `kind` if negotiated, else the other kind. Returns whether a
    /// request was queued; the caller must drain.
    pub(crate) fn request_keyframe(
        &mut self,
        mid: Mid,
        rid: Option<Rid>,
        kind: KeyframeRequestKind,
        now: Instant,
    ) -> bool {
        if !self.keyframe_throttle.allows(&mid, now) {
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
                self.keyframe_throttle.record(mid, now);
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
                        info!(participant = %self.id, room = %self.room, "media connected");
                        out.events.push_back(SfuEvent::Connected {
                            participant: self.id,
                        });
                    }
                }
                IceConnectionState::Disconnected => {
                    self.rtc.disconnect();
                    self.fail("ICE disconnected".to_string());
                }
                IceConnectionState::New | IceConnectionState::Checking => {}
            },
            Event::MediaAdded(added) => {
                self.tracks.retain(|t| t.mid != added.mid);
                self.tracks.push(Track {
                    mid: added.mid,
                    kind: added.kind,
                    direction: added.direction,
                });
            }
            Event::MediaChanged(changed) => {
                if let Some(track) = self.tracks.iter_mut().find(|t| t.mid == changed.mid) {
                    track.direction = changed.direction;
                }
            }
            Event::MediaData(data) => {
                if data.rid.is_some() {
                    // Simulcast layers are not selected yet; forwarding every layer into one m-line
                    // would garble the picture.
                    return;
                }
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
            Event::KeyframeRequest(request) => {
                out.work.push_back(Work::KeyframeRequest {
                    from: self.id,
                    request,
                });
            }
            _ => {}
        }
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
