//! Fuzzes SIP message handling the way the gateway's UA drives it: our framing (`frame`, as the TCP transport),
//! `parse` and `validate_request` (as for every datagram), the salvage of a reply base from refused bytes (the
//! 400 path), Via and URI helpers, and the parser of the stack underneath (rsipstack, pinned like the server).
//!
//! Checks: no panic anywhere; `frame` never claims more bytes than it was given; a request that passes our checks
//! gets a response that parses back with the same Via values, Call-ID and CSeq.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchboard::proto::sip::message::{self, Framing, ReplyBase, StartLine, Via};

fuzz_target!(|data: &[u8]| {
    if let Framing::Complete(n) = message::frame(data) {
        assert!(n <= data.len(), "frame() beyond the buffer");
    }
    let _ = rsipstack::sip::SipMessage::try_from(data);
    let _ = ReplyBase::salvage(data);
    let Ok(msg) = message::parse(data) else {
        return;
    };
    for v in msg.via_values() {
        let _ = Via::parse(&v).map(|v| v.branch().map(str::len));
    }
    let _ = (msg.from_tag(), msg.to_tag(), msg.max_forwards(), msg.cseq());
    if let StartLine::Request { uri, .. } = &msg.start {
        let _ = message::uri_user(uri);
    }
    if msg.validate_request().is_ok() && msg.method().is_some() {
        let base = ReplyBase::of(&msg);
        let reply = base.response(400, "Bad Request", Some("t1"), &[("Warning", "399 x \"y\"".into())], b"");
        let back = message::parse(&reply).expect("our response parses");
        assert_eq!(back.via_values(), msg.via_values(), "every Via copied");
        assert_eq!(back.call_id(), msg.call_id());
        assert_eq!(back.cseq().ok(), msg.cseq().ok());
    }
});
