//! Errors of the media core.

use super::types::ParticipantId;

/// Why the [`Sfu`](super::Sfu) refused a request from the signaling layer.
///
/// Network input never produces an error: bad datagrams are dropped and counted, broken connections
/// end in [`SfuEvent::Disconnected`](super::SfuEvent::Disconnected).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SfuError {
    /// The SDP offer or answer could not be parsed or was refused (RFC 8866 syntax, RFC 3264 offer/answer
    /// rules, missing `a=fingerprint`, ICE-lite offerer...). The text says why.
    #[error("bad SDP: {0}")]
    BadSdp(String),
    /// A trickled ICE candidate (RFC 8839 §5.1 `candidate-attribute`) could not be parsed.
    #[error("bad ICE candidate: {0}")]
    BadCandidate(String),
    /// No participant with this id.
    #[error("unknown participant {0}")]
    UnknownParticipant(ParticipantId),
    /// The participant has no server -> client video m-line with this mid.
    #[error("participant {participant} receives no video on m-line {mid:?}")]
    UnknownMid {
        /// The participant.
        participant: ParticipantId,
        /// The mid it named.
        mid: String,
    },
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
    /// The participant offered while a server offer to it is outstanding (offer glare). Nothing
    /// changed: the client must answer the server's offer (rolling back its own, RFC 8829
    /// §4.1.8.2), then offer again. The SFU is the impolite peer of perfect negotiation.
    #[error("a server offer is outstanding: answer it, then offer again")]
    Glare,
    /// An answer arrived while no server offer is outstanding for the participant.
    #[error("no server offer outstanding")]
    NoPendingOffer,
}
