//! Sans-IO protocol cores: no tokio, no sockets, no clock reads (`now` is an argument).

pub mod signal;
pub mod sip;
pub mod token;
