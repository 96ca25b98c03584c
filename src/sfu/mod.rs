//! Sans-IO media core: one str0m [`Rtc`](str0m::Rtc) per participant, grouped in rooms, forwarding media
//! frames between the members of a room.
//!
//! No sockets, no tasks, no clock reads: every input carries `now`, and the caller (the IO shell in
//! `media/`) drives the [`Sfu`] with [`Sfu::handle_receive`] and [`Sfu::handle_timeout`], then drains
//! [`Sfu::poll_transmit`] and [`Sfu::poll_event`] and sleeps until [`Sfu::poll_timeout`].
//!
//! The server is ICE-lite (RFC 8445 §2.5): it advertises host candidates only and answers the
//! browser's connectivity checks; peer-reflexive remote candidates (RFC 8445 §7.3.1.3) are learnt from
//! those checks, so browsers that hide their addresses behind mDNS names connect too. Sending no
//! checks itself, it takes a connected peer for alive while any datagram comes from it and ends the
//! connection after [`IDLE_TIMEOUT`] of silence, not when str0m's ICE-lite agent stops seeing binding
//! requests (some peers keep the path with binding indications only).
//!
//! Media is forwarded in str0m's frame mode (str0m packetizes, answers NACKs and sends RTX per leg).
//! A client offers only its own sending m-lines; each is a published track with a
//! [`TrackSource`]. For every track another room member publishes, the SFU adds a `sendonly` m-line
//! to the subscriber by its own offer ([`SfuEvent::Offer`], answered through
//! [`Sfu::handle_answer`]) and stops it when the track goes; at most one server offer is
//! outstanding per participant, changes meanwhile are batched into the next, and a client offer
//! crossing a server offer is refused with [`SfuError::Glare`]. Frames of a track are written only
//! to the m-lines made for it, with the payload type mapped to the subscriber's negotiated one.
//! Keyframe requests (PLI/FIR, RFC 4585 §6.3.1, RFC 5104 §3.5.1) flow back to the publisher of
//! the m-line's track, throttled per publisher m-line; a subscriber m-line that becomes writable
//! asks for one too. Simulcast publishers (RFC 8853 rids) have each layer measured (resolution
//! from keyframes, else bitrate); every subscriber m-line gets one layer, chosen from the size
//! it renders ([`Sfu::set_preferred_size`]) and its downlink estimate (str0m's TWCC bandwidth
//! estimation), and switched at a keyframe of the new layer, with its RTP timestamps rebased so
//! the subscriber sees one continuous stream. RFC 6464 audio levels feed a per-room speaker detector
//! ([`SfuEvent::Speaking`], [`SfuEvent::DominantSpeakers`]).

mod agent;
mod backlog;
mod candidate;
mod downlink;
mod engine;
mod error;
mod participant;
mod simulcast;
mod speaker;
mod throttle;
mod types;

pub use agent::{AGENT_AUDIO_MID, AgentAudio, AgentSink};
pub use engine::{CONNECT_TIMEOUT, IDLE_TIMEOUT, Sfu};
pub use error::SfuError;
pub use throttle::KEYFRAME_REQUEST_INTERVAL;
pub use types::{
    OutTrack, ParseTrackSourceError, ParticipantId, SfuConfig, SfuEvent, SfuStats, TrackSource,
    Transmit,
};

use std::sync::Once;

/// Installs str0m's crypto provider (aws-lc-rs) as the process default, once.
///
/// Every [`str0m::Rtc`] needs a process-wide crypto provider for DTLS and SRTP. Safe to call any
/// number of times from any thread; only the first call installs. [`Sfu::new`] calls it, so only code
/// that builds its own `Rtc` without an `Sfu` (tests, tools) needs to call it directly.
pub fn install_crypto_provider() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| str0m::crypto::from_feature_flags().install_process_default());
}
