//! Plain values exchanged with the [`Sfu`](super::Sfu): identifiers, configuration, datagrams, events
//! and counters.

use std::fmt;
use std::net::SocketAddr;

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
    /// The media connection ended (ICE disconnected, DTLS closed or failed, or ICE never connected
    /// within [`CONNECT_TIMEOUT`](super::CONNECT_TIMEOUT)). All its state is already freed; it is not
    /// emitted for [`Sfu::remove_participant`](super::Sfu::remove_participant).
    Disconnected {
        /// Who disconnected.
        participant: ParticipantId,
        /// Human-readable cause, for logs.
        reason: String,
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
    /// Media frames that could not be written to a subscriber (no common codec, not yet connected).
    pub frames_dropped: u64,
    /// Keyframe requests from subscribers passed on to a publisher (after throttling).
    pub keyframe_requests_forwarded: u64,
    /// Keyframe requests the SFU itself sent to a publisher because a frame was missing.
    pub keyframe_requests_generated: u64,
}
