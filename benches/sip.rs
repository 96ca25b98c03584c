//! The SIP gateway's per-message and per-leg costs: parsing a carrier INVITE with its SDP
//! (`switchboard::proto::sip::message::parse`), and transcoding one bridged call leg for 20 ms of
//! audio in both directions (`switchboard::sip::transcode`: G.711 -> 8 -> 48 kHz -> Opus towards
//! the room, Opus -> 48 -> 8 kHz -> G.711 towards the phone). Reports time per message and per
//! 20 ms leg-frame; a leg needs 50 such frames a second, so legs per core = 1 s / (50 x time).
//!
//! ```text
//! cargo bench --bench sip
//! ```

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use switchboard::proto::sip::message;
use switchboard::proto::sip::sdp::G711;
use switchboard::sip::transcode::{Downlink, FRAME_8K, Uplink, mix_to_g711};

/// A carrier's INVITE as they come (case C019's shape): Via with branch, Record-Route, P-Asserted-Identity, SDP
/// with PCMU, PCMA and telephone-event.
const INVITE: &str = "INVITE sip:+15550100@198.51.100.10:5060 SIP/2.0\r\n\
Via: SIP/2.0/UDP 192.0.2.20:5060;branch=z9hG4bK-524287-1---a3f1c0d2e5b6;rport\r\n\
Max-Forwards: 69\r\n\
Record-Route: <sip:192.0.2.20;lr;ftag=as5f3c2b1a>\r\n\
From: \"Caller\" <sip:+15550999@192.0.2.20>;tag=as5f3c2b1a\r\n\
To: <sip:+15550100@198.51.100.10>\r\n\
Contact: <sip:+15550999@192.0.2.20:5060>\r\n\
Call-ID: 3c26700c4f6a11ef8b5d0242ac120002@192.0.2.20\r\n\
CSeq: 102 INVITE\r\n\
P-Asserted-Identity: <sip:+15550999@192.0.2.20>\r\n\
Allow: INVITE, ACK, CANCEL, OPTIONS, BYE, REFER, NOTIFY, INFO\r\n\
Supported: replaces, timer\r\n\
Session-Expires: 1800;refresher=uac\r\n\
User-Agent: CarrierSBC 4.2\r\n\
Content-Type: application/sdp\r\n\
Content-Length: 298\r\n\
\r\n\
v=0\r\n\
o=SBC 1186 2117 IN IP4 192.0.2.20\r\n\
s=SIP Call\r\n\
c=IN IP4 192.0.2.21\r\n\
t=0 0\r\n\
m=audio 41234 RTP/AVP 0 8 101\r\n\
a=rtpmap:0 PCMU/8000\r\n\
a=rtpmap:8 PCMA/8000\r\n\
a=rtpmap:101 telephone-event/8000\r\n\
a=fmtp:101 0-16\r\n\
a=ptime:20\r\n\
a=maxptime:40\r\n\
a=sendrecv\r\n\
a=rtcp:41235\r\n\
a=silenceSupp:off - - - -\r\n\
a=label:1\r\n";

fn bench_parse(c: &mut Criterion) {
    // The bench input is a fixed, valid message.
    message::parse(INVITE.as_bytes()).expect("bench INVITE parses");
    c.bench_function("sip_parse/carrier_invite_with_sdp", |b| {
        b.iter(|| message::parse(black_box(INVITE.as_bytes())))
    });
}

/// 20 ms of a 440 Hz tone at -12 dBFS as PCMA, 8 kHz.
fn pcma_frame(n: usize) -> Vec<u8> {
    (0..FRAME_8K)
        .map(|i| {
            let t = (n * FRAME_8K + i) as f32 / 8000.0;
            let s = (8192.0 * (2.0 * std::f32::consts::PI * 440.0 * t).sin()) as i16;
            switchboard::proto::sip::g711::alaw_encode(s)
        })
        .collect()
}

fn bench_transcode(c: &mut Criterion) {
    // Bench setup: libopus and the resampler accept these fixed settings.
    let mut up = Uplink::new(G711::Pcma).expect("uplink");
    let mut down = Downlink::new().expect("downlink");
    let frames: Vec<Vec<u8>> = (0..50).map(pcma_frame).collect();
    // Opus packets of the same audio, as the room would send them.
    let mut opus: Vec<Vec<u8>> = Vec::new();
    for f in frames.iter().cycle().take(200) {
        opus.extend(up.push_g711(f).expect("encode").into_iter().map(|(p, _)| p));
    }
    assert!(!opus.is_empty(), "the uplink produced Opus packets");
    let mut i = 0usize;
    c.bench_function("transcode/leg_20ms_both_directions", |b| {
        b.iter(|| {
            i = i.wrapping_add(1);
            let out = up
                .push_g711(black_box(&frames[i % frames.len()]))
                .expect("encode");
            let pcm = down
                .push_opus(black_box(&opus[i % opus.len()]))
                .expect("decode");
            let g711 = mix_to_g711(G711::Pcma, &pcm);
            black_box((out, g711))
        })
    });
}

criterion_group!(benches, bench_parse, bench_transcode);
criterion_main!(benches);
