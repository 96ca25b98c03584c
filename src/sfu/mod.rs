//! Sans-IO media core: one str0m [`Rtc`](str0m::Rtc) per participant, grouped in rooms, forwarding media
//! frames between the members of a room.
//!
//! No sockets, no tasks, no clock reads: every input carries `now`, and the caller (the IO shell in
//! `media/`) drives the [`Sfu`] with [`Sfu::handle_receive`] and [`Sfu::handle_timeout`], then drains
//! [`Sfu::poll_transmit`] and [`Sfu::poll_event`] and sleeps until [`Sfu::poll_timeout`].
//!
//! The server is ICE-lite (RFC 8445 §2.5): it advertises host candidates only and answers the
//! browser's connectivity checks; peer-reflexive remote candidates (RFC 8445 §7.3.1.3) are learnt from
//! those checks, so browsers that hide their addresses behind mDNS names connect too.
//!
//! Media is forwarded in str0m's frame mode, 1:1 model: each participant offers one `sendrecv` audio
//! and one `sendrecv` video m-line, and a frame received on a participant's audio (video) m-line is
//! written to every other room member's first audio (video) m-line, with the payload type mapped to
//! the subscriber's negotiated one. Keyframe requests (PLI/FIR, RFC 4585 §6.3.1, RFC 5104 §3.5.1)
//! flow back to the publisher, throttled per publisher m-line.

mod candidate;
mod engine;
mod error;
mod participant;
mod throttle;
mod types;

pub use engine::{CONNECT_TIMEOUT, Sfu};
pub use error::SfuError;
pub use throttle::KEYFRAME_REQUEST_INTERVAL;
pub use types::{ParticipantId, SfuConfig, SfuEvent, SfuStats, Transmit};

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
