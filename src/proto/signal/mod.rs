//! The signaling protocol (docs/protocol.md): message types and their decoder.
//!
//! Pure data and parsing; the per-connection session and call control live in `service::calls` and `http::ws`.

mod message;

pub use message::{
    Caller, ClientMessage, DTMF_TONES, DecodeError, EndReason, IceCandidate, MAX_FRAME_BYTES,
    OutTrackInfo, ParticipantInfo, RequestId, ServerMessage, TRACK_SOURCES, Target, TrackSpec,
    decode_client_message, phone_of_raw_id,
};
