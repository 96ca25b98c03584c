//! Property tests of the SIP gateway's sans-IO parsers: no panic on any input, and round trips (responses we
//! build parse back to what the request said; RTP, telephone-event payloads, SDP answers and G.711 survive
//! write-then-read).

use proptest::prelude::*;
use switchboard::proto::sip::dtmf::{EventPayload, Rfc4733Decoder};
use switchboard::proto::sip::message::{self, ReplyBase};
use switchboard::proto::sip::sdp::{self, G711};
use switchboard::proto::sip::{g711, rtp};

fn token() -> impl Strategy<Value = String> {
    "[A-Za-z0-9.!%*_+`'~-]{1,20}"
}

proptest! {
    #[test]
    fn sip_parsing_never_panics(data in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let _ = message::parse(&data);
        let _ = message::frame(&data);
        let _ = ReplyBase::salvage(&data);
        if let Ok(m) = message::parse(&data) {
            let _ = m.validate_request();
            let _ = m.via_values();
        }
    }

    #[test]
    fn response_round_trip(method in "(INVITE|OPTIONS|BYE|INFO)", branch in token(), host in "[a-z]{1,10}\\.example",
                           call_id in token(), cseq in 1u32..100000, ftag in token(), nvias in 1usize..5) {
        let vias: String = (0..nvias).map(|i| format!("Via: SIP/2.0/UDP {host}{i};branch=z9hG4bK{branch}\r\n")).collect();
        let req = format!("{method} sip:+15550100@{host} SIP/2.0\r\n{vias}From: <sip:a@{host}>;tag={ftag}\r\nTo: <sip:b@{host}>\r\nCall-ID: {call_id}\r\nCSeq: {cseq} {method}\r\nContent-Length: 0\r\n\r\n");
        let m = message::parse(req.as_bytes()).unwrap();
        prop_assert!(m.validate_request().is_ok());
        let r = ReplyBase::of(&m).response(486, "Busy Here", Some("x1"), &[], b"");
        let back = message::parse(&r).unwrap();
        prop_assert_eq!(back.via_values(), m.via_values());
        prop_assert_eq!(back.call_id(), Some(call_id.as_str()));
        prop_assert_eq!(back.cseq().unwrap(), (cseq, method.clone()));
        prop_assert_eq!(back.to_tag(), Some("x1".to_string()));
        prop_assert_eq!(back.from_tag(), Some(ftag));
        // The same request over a stream is framed whole, also with a second one behind it.
        let two = format!("{req}{req}");
        prop_assert_eq!(message::frame(two.as_bytes()), message::Framing::Complete(req.len()));
    }

    #[test]
    fn rtp_round_trip(marker: bool, pt in 0u8..128, seq: u16, ts: u32, ssrc: u32, payload in proptest::collection::vec(any::<u8>(), 0..400)) {
        let w = rtp::write(marker, pt, seq, ts, ssrc, &payload);
        let p = rtp::parse(&w).unwrap();
        prop_assert_eq!((p.marker, p.pt, p.seq, p.timestamp, p.ssrc), (marker, pt, seq, ts, ssrc));
        prop_assert_eq!(p.payload, &payload[..]);
    }

    #[test]
    fn rtp_parsing_never_panics(data in proptest::collection::vec(any::<u8>(), 0..300)) {
        if let Ok(p) = rtp::parse(&data) {
            prop_assert!(p.payload_offset + p.payload.len() <= data.len());
        }
    }

    #[test]
    fn event_payload_round_trip_and_decoder_counts_one_press(code in 0u8..16, volume in 0u8..64, duration in 1u16..20000, ts: u32) {
        let e = EventPayload { code, end: true, volume, duration };
        prop_assert_eq!(EventPayload::parse(&e.to_bytes()), Some(e));
        let mut d = Rfc4733Decoder::default();
        let now = std::time::Instant::now();
        let got: Vec<_> = switchboard::proto::sip::dtmf::encode_event(code, ts, duration, 160, volume)
            .iter()
            .flat_map(|(_, t, p)| d.handle_packet(now, *t, p))
            .collect();
        prop_assert_eq!(got.len(), 1);
        prop_assert_eq!(got[0].duration, u32::from(duration));
    }

    #[test]
    fn g711_is_idempotent(s: i16) {
        let u = g711::ulaw_decode(g711::ulaw_encode(s));
        prop_assert_eq!(g711::ulaw_decode(g711::ulaw_encode(u)), u);
        let a = g711::alaw_decode(g711::alaw_encode(s));
        prop_assert_eq!(g711::alaw_decode(g711::alaw_encode(a)), a);
    }

    #[test]
    fn sdp_answer_round_trip(pcma_first: bool, te in proptest::option::of(96u8..128), port in 1024u16..65000, video: bool, sendonly: bool) {
        let fmts = if pcma_first { "8 0" } else { "0 8" };
        let te_fmt = te.map(|t| format!(" {t}")).unwrap_or_default();
        let te_lines = te.map(|t| format!("a=rtpmap:{t} telephone-event/8000\r\na=fmtp:{t} 0-15\r\n")).unwrap_or_default();
        let video_line = if video { "m=video 0 RTP/AVP 31\r\n" } else { "" };
        let dir = if sendonly { "sendonly" } else { "sendrecv" };
        let offer = format!("v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\nm=audio {port} RTP/AVP {fmts}{te_fmt}\r\n{te_lines}a={dir}\r\n{video_line}");
        let o = sdp::parse(&offer).unwrap();
        let n = sdp::negotiate(&o, &[G711::Pcmu, G711::Pcma]).unwrap();
        prop_assert_eq!(n.codec, if pcma_first { G711::Pcma } else { G711::Pcmu });
        prop_assert_eq!(n.telephone_event.as_ref().map(|t| t.0), te);
        let a = sdp::answer(&o, &n, "198.51.100.1".parse().unwrap(), 30000, 7, 2);
        let back = sdp::negotiate(&sdp::parse(&a).unwrap(), &[G711::Pcmu, G711::Pcma]).unwrap();
        prop_assert_eq!(back.codec, n.codec);
        prop_assert_eq!(back.offered, n.answered);
        prop_assert_eq!(sdp::parse(&a).unwrap().media.len(), o.media.len());
    }
}
