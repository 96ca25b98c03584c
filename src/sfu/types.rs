//! Plain values exchanged with the [`Sfu`](super::Sfu): identifiers, configuration, datagrams, events
//! and counters.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;

/// Identifies one participant (one peer connection) for the whole process.
///
/// Chosen by the caller (the signaling layer); the SFU only requires it to be unique among live
/// participants.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct ParticipantId(pub u64);

impl fmt::Display for ParticipantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// What a published track carries. Chosen by the publisher (its offer's `tracks`), defaulted from the
/// m-line kind and order: audio m-lines are [`TrackSource::Audio`], the first video m-line
/// [`TrackSource::Camera`], later ones [`TrackSource::ScreenShare`].
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum TrackSource {
    /// A microphone.
    Audio,
    /// A camera.
    Camera,
    /// A shared screen or window.
    ScreenShare,
}

impl TrackSource {
    /// The protocol name: `audio`, `camera` or `screenShare`.
    pub fn as_str(self) -> &'static str {
        match self {
            TrackSource::Audio => "audio",
            TrackSource::Camera => "camera",
            TrackSource::ScreenShare => "screenShare",
        }
    }
}

impl fmt::Display for TrackSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A track source name that is none of `audio`, `camera`, `screenShare`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown track source {0:?} (expected audio, camera or screenShare)")]
pub struct ParseTrackSourceError(pub String);

impl FromStr for TrackSource {
    type Err = ParseTrackSourceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "audio" => Ok(TrackSource::Audio),
            "camera" => Ok(TrackSource::Camera),
            "screenShare" => Ok(TrackSource::ScreenShare),
            other => Err(ParseTrackSourceError(other.to_string())),
        }
    }
}

/// One server -> client m-line: the SFU sends `publisher`'s `source` track to the participant on
/// `mid`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutTrack {
    /// The m-line's `a=mid`.
    pub mid: String,
    /// Whose track it carries.
    pub publisher: ParticipantId,
    /// Which of the publisher's tracks.
    pub source: TrackSource,
}

/// Configuration of an [`Sfu`](super::Sfu).
#[derive(Clone, Debug, Default)]
pub struct SfuConfig {
    /// Addresses advertised to every participant as ICE host candidates (the SFU is ICE-lite, so these
    /// are the only candidates it offers). Each must be an address the IO shell receives on, and the
    /// shell must pass exactly this address as `destination` to
    /// [`Sfu::handle_receive`](super::Sfu::handle_receive). Unspecified (`0.0.0.0`), multicast and
    /// IPv4 link-local addresses are refused by str0m and skipped with a warning.
    pub local_candidates: Vec<SocketAddr>,
}

/// A UDP datagram for the IO shell to send.
#[derive(Clone, PartialEq, Eq)]
pub struct Transmit {
    /// Local address to send from: one of [`SfuConfig::local_candidates`].
    pub source: SocketAddr,
    /// Remote address to send to.
    pub destination: SocketAddr,
    /// The datagram payload (STUN, DTLS, SRTP or SRTCP).
    pub contents: Vec<u8>,
}

impl fmt::Debug for Transmit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Transmit")
            .field("source", &self.source)
            .field("destination", &self.destination)
            .field("len", &self.contents.len())
            .finish()
    }
}

/// Something the signaling layer needs to know about a participant's media connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SfuEvent {
    /// ICE reached `connected`/`completed` for the first time: the participant's media path is up.
    Connected {
        /// Who connected.
        participant: ParticipantId,
    },
    /// The media connection ended (nothing received from the peer for
    /// [`IDLE_TIMEOUT`](super::IDLE_TIMEOUT), DTLS closed or failed, or ICE never connected within
    /// [`CONNECT_TIMEOUT`](super::CONNECT_TIMEOUT)). All its state is already freed; it is not
    /// emitted for [`Sfu::remove_participant`](super::Sfu::remove_participant).
    Disconnected {
        /// Who disconnected.
        participant: ParticipantId,
        /// Human-readable cause, for logs.
        reason: String,
    },
    /// Server-initiated renegotiation (the SFU adds or stops m-lines carrying other members'
    /// tracks): send this offer to the participant and pass its answer to
    /// [`Sfu::handle_answer`](super::Sfu::handle_answer). At most one is outstanding per
    /// participant.
    Offer {
        /// To whom.
        participant: ParticipantId,
        /// The SDP offer.
        sdp: String,
        /// Every server -> client m-line the participant has once it accepts this offer (stopped
        /// ones are not listed).
        tracks: Vec<OutTrack>,
    },
    /// The room's dominant speakers changed: ordered by recent speech energy, most dominant first.
    /// Only participants that spoke since they joined are listed.
    DominantSpeakers {
        /// The room.
        room: String,
        /// The new order.
        speakers: Vec<ParticipantId>,
    },
    /// A participant started or stopped speaking (RFC 6464 audio levels, with hysteresis).
    Speaking {
        /// Who.
        participant: ParticipantId,
        /// Whether it speaks now.
        speaking: bool,
    },
    /// Dynacast: the simulcast layers of `participant`'s m-line `mid` that someone watches
    /// changed. The publisher should send the listed rids and pause the others (in WebRTC:
    /// `RTCRtpSender.setParameters` with `encodings[i].active`). The lowest layer is always listed.
    /// Emitted when a layer went unwatched for 3 s, or is wanted again.
    LayersWanted {
        /// The publisher.
        participant: ParticipantId,
        /// Its sending m-line.
        mid: String,
        /// The rids (RFC 8851) to keep sending, lowest first.
        rids: Vec<String>,
    },
    /// `subscriber` negotiated no codec able to carry `publisher`'s `source` track, so that track
    /// is not sent to it. Emitted once per (subscriber, publisher track).
    CodecUnsupported {
        /// Who cannot receive.
        subscriber: ParticipantId,
        /// Whose track.
        publisher: ParticipantId,
        /// Which track.
        source: TrackSource,
        /// The publisher's codec (`H264`, `VP8`, `opus`...).
        codec: String,
    },
}

/// Cumulative counters since the [`Sfu`](super::Sfu) was created. Plain numbers: the IO shell turns
/// them into metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SfuStats {
    /// Datagrams accepted by a participant.
    pub packets_in: u64,
    /// Bytes of the datagrams accepted by a participant.
    pub bytes_in: u64,
    /// Datagrams no participant accepted (unknown source, unparseable, removed participant).
    pub packets_unmatched: u64,
    /// Datagrams handed out by [`Sfu::poll_transmit`](super::Sfu::poll_transmit).
    pub packets_out: u64,
    /// Bytes of the datagrams handed out by [`Sfu::poll_transmit`](super::Sfu::poll_transmit).
    pub bytes_out: u64,
    /// Media frames written to a subscriber.
    pub frames_forwarded: u64,
    /// Media frames that could not be written to a subscriber (no common codec, not yet connected,
    /// backlogged).
    pub frames_dropped: u64,
    /// Audio frames dropped because str0m still held too many unsent packets of the subscriber's
    /// m-line (the media worker fell behind; included in `frames_dropped`).
    pub frames_backlogged: u64,
    /// Keyframe requests from subscribers passed on to a publisher (after throttling).
    pub keyframe_requests_forwarded: u64,
    /// Keyframe requests the SFU itself sent to a publisher: a frame was missing, or a subscriber
    /// m-line for the publisher's track became writable.
    pub keyframe_requests_generated: u64,
    /// Server-initiated offers made (each [`SfuEvent::Offer`]).
    pub renegotiations: u64,
    /// Simulcast layer switches of subscriber m-lines (including the first layer chosen).
    pub layer_switches: u64,
    /// NACKs (RFC 4585 generic NACK) received from subscribers.
    pub nacks_received: u64,
    /// PLIs and FIRs received from subscribers (before our throttling).
    pub plis_received: u64,
    /// NACKs sent to publishers.
    pub nacks_sent: u64,
    /// PLIs and FIRs sent to publishers.
    pub plis_sent: u64,
}
