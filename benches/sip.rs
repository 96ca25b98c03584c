//! The SIP gateway's per-message and per-leg costs: parsing a carrier INVITE with its SDP
//! (`switchboard::proto::sip::message::parse`), and transcoding one bridged call leg for 20 ms of
//! audio in both directions (`switchboard::sip::transcode`: G.711 -> Opus towards the room, a
//! browser's 48 kHz Opus -> 8 kHz -> G.711 towards the phone), on sipp's recorded speech when
//! sip-tester is installed (else a tone, much cheaper to encode). Reports time per message and per
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
fn pcma_tone_frame(n: usize) -> Vec<u8> {
    (0..FRAME_8K)
        .map(|i| {
            let t = (n * FRAME_8K + i) as f32 / 8000.0;
            let s = (8192.0 * (2.0 * std::f32::consts::PI * 440.0 * t).sin()) as i16;
            switchboard::proto::sip::g711::alaw_encode(s)
        })
        .collect()
}

/// sipp's recorded speech (`/usr/share/sip-tester/g711a.pcap` from Debian's sip-tester: 236 PCMA packets of
/// 160 bytes, 4.72 s), when installed: speech costs the Opus encoder several times what a tone does. Each pcap
/// record ends with the RTP payload, so the last 160 bytes of each 214-byte Ethernet/IPv4/UDP/RTP frame are it.
fn pcma_speech() -> Option<Vec<Vec<u8>>> {
    let pcap = std::fs::read("/usr/share/sip-tester/g711a.pcap").ok()?;
    let mut frames = Vec::new();
    let mut at = 24; // global header
    while at + 16 <= pcap.len() {
        let len = u32::from_le_bytes(pcap[at + 8..at + 12].try_into().ok()?) as usize;
        let record = pcap.get(at + 16..at + 16 + len)?;
        if len >= 42 + 12 + FRAME_8K {
            frames.push(record[len - FRAME_8K..].to_vec());
        }
        at += 16 + len;
    }
    (frames.len() > 100).then_some(frames)
}

fn bench_transcode(c: &mut Criterion) {
    // Bench setup: libopus and the resampler accept these fixed settings.
    let mut up = Uplink::new(G711::Pcma).expect("uplink");
    let mut down = Downlink::new().expect("downlink");
    let (frames, input) = match pcma_speech() {
        Some(f) => (f, "speech"),
        None => ((0..50).map(pcma_tone_frame).collect(), "tone"),
    };
    println!(
        "transcode input: {input} ({} frames of 20 ms)",
        frames.len()
    );
    // Opus packets of the same audio as a browser sends them: 48 kHz, 32 kbit/s (Chromium's default), so
    // the decoder works on a wideband stream, not on the narrowband one our own uplink makes.
    let mut browser = opus::Encoder::new(48_000, opus::Channels::Mono, opus::Application::Voip)
        .expect("48 kHz encoder");
    browser
        .set_bitrate(opus::Bitrate::Bits(32_000))
        .expect("bitrate");
    let mut opus: Vec<Vec<u8>> = Vec::new();
    let mut packet = vec![0u8; 1500];
    for f in frames.iter().take(200) {
        // 8 kHz -> 48 kHz by holding each sample six times: crude, but it gives the encoder a full-band signal.
        let pcm: Vec<i16> = f
            .iter()
            .flat_map(|b| std::iter::repeat_n(switchboard::proto::sip::g711::alaw_decode(*b), 6))
            .collect();
        let n = browser.encode(&pcm, &mut packet).expect("encode");
        opus.push(packet[..n].to_vec());
    }
    assert!(!opus.is_empty(), "the uplink produced Opus packets");
    let mut i = 0usize;
    c.bench_function(&format!("transcode/uplink_20ms/{input}"), |b| {
        b.iter(|| {
            i = i.wrapping_add(1);
            black_box(
                up.push_g711(black_box(&frames[i % frames.len()]))
                    .expect("encode"),
            )
        })
    });
    c.bench_function(&format!("transcode/downlink_20ms/{input}"), |b| {
        b.iter(|| {
            i = i.wrapping_add(1);
            let pcm = down
                .push_opus(black_box(&opus[i % opus.len()]))
                .expect("decode");
            black_box(mix_to_g711(G711::Pcma, &pcm))
        })
    });
    c.bench_function(
        &format!("transcode/leg_20ms_both_directions/{input}"),
        |b| {
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
        },
    );
}

criterion_group!(benches, bench_parse, bench_transcode);
criterion_main!(benches);
