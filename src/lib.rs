//! Switchboard: a self-hosted communications server.
//!
//! Identities and user access tokens (ACS Identity REST shape), token-checked WebSocket signaling, 1:1 calls
//! through an SFU built on str0m, and a browser SDK with a calling page.
//!
//! # Layout
//! - [`proto`]: sans-IO protocol cores (signaling messages, tokens, SIP/SDP/RTP/DTMF). No tokio, no sockets, no clock reads.
//! - `sfu`: sans-IO media core on str0m (rooms, participants, forwarding).
//! - `media`: IO shell: media workers (a thread per core, each with its own UDP port and SFU core, rooms pinned to
//!   them), commanded by channel.
//! - `sip`: IO shell of the SIP/PSTN gateway: SIP over UDP/TCP, the user agent, RTP sessions (cores in `proto::sip`).
//! - `service`: domain logic without HTTP types: store, identities, deployment keys, call control.
//! - `http`: axum only: router, HMAC auth, REST handlers, WebSocket sessions, static web files.
//! - `config`, `tls`, `app`: configuration, certificates, and the composition root.
#![forbid(unsafe_code)]

pub mod proto;

#[cfg(feature = "server")]
pub mod app;
#[cfg(feature = "server")]
pub mod config;
#[cfg(feature = "server")]
pub mod http;
#[cfg(feature = "server")]
pub mod media;
#[cfg(feature = "server")]
pub mod service;
#[cfg(feature = "server")]
pub mod sfu;
#[cfg(feature = "server")]
pub mod sip;
#[cfg(feature = "server")]
pub mod tls;
