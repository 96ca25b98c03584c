//! Sans-IO cores of the SIP/PSTN gateway: message framing and checks, SDP offer/answer for G.711, RTP/RTCP,
//! RFC 4733 and SIP INFO DTMF, in-band (Goertzel) DTMF, G.711 codecs, a jitter buffer, routing/ACL decisions and session timers (RFC 4028).
//! No sockets, no tokio, no clock reads: time is an argument. The IO shell is `crate::sip`.

pub mod dtmf;
pub mod g711;
pub mod goertzel;
pub mod jitter;
pub mod keepalive;
pub mod message;
pub mod route;
pub mod rtcp;
pub mod rtp;
pub mod sdp;
pub mod timer;
