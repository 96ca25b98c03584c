//! Fuzzes our SDP offer/answer for G.711 (`proto::sip::sdp`): parse any text, negotiate with both codecs, write
//! the answer.
//!
//! Checks: no panic; an answer keeps the offer's m-line count (RFC 3264 §6) and negotiates back to the same codec,
//! payload type, telephone-event and direction (our answer is itself a valid offer).
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchboard::proto::sip::sdp::{self, G711};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(offer) = sdp::parse(text) else {
        return;
    };
    let Ok(neg) = sdp::negotiate(&offer, &[G711::Pcmu, G711::Pcma]) else {
        return;
    };
    let answer = sdp::answer(&offer, &neg, "192.0.2.1".parse().unwrap(), 30000, 1, 1);
    let back = sdp::parse(&answer).expect("our answer parses");
    assert_eq!(back.media.len(), offer.media.len(), "m-line count kept");
    let again = sdp::negotiate(&back, &[G711::Pcmu, G711::Pcma]).expect("our answer negotiates");
    assert_eq!((again.codec, again.pt, again.index), (neg.codec, neg.pt, neg.index));
    assert_eq!(again.telephone_event, neg.telephone_event);
    assert_eq!(again.offered, neg.answered);
});
