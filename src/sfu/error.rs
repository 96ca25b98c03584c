//! Errors of the media core.

use super::types::ParticipantId;

/// Why the [`Sfu`](super::Sfu) refused a request from the signaling layer.
///
/// Network input never produces an error: bad datagrams are dropped and counted, broken connections
/// end in [`SfuEvent::Disconnected`](super::SfuEvent::Disconnected).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SfuError {
    /// The SDP offer could not be parsed or was refused (RFC 8866 syntax, RFC 3264 offer/answer
    /// rules, missing `a=fingerprint`, ICE-lite offerer...). The text says why.
    #[error("bad SDP offer: {0}")]
    BadSdp(String),
    /// A trickled ICE candidate (RFC 8839 §5.1 `candidate-attribute`) could not be parsed.
    #[error("bad ICE candidate: {0}")]
    BadCandidate(String),
    /// No participant with this id.
    #[error("unknown participant {0}")]
    UnknownParticipant(ParticipantId),
    /// The participant already belongs to another room; it must be removed before joining this one.
    #[error("participant {participant} is already in room {room:?}")]
    WrongRoom {
        /// The participant.
        participant: ParticipantId,
        /// The room it is in.
        room: String,
    },
    /// Too many ICE candidates were trickled before the participant's first offer.
    #[error("too many candidates queued for participant {0} before its offer")]
    TooManyCandidates(ParticipantId),
}
