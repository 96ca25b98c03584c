//! Signaling message decoding (`switchboard::proto::signal::decode_client_message`): the cost of every frame a
//! client sends on `/calling/v1/ws`, from a 60-byte `ping` to an `offer` carrying a browser-sized SDP. Reports
//! time per frame and throughput in bytes/s of frame text.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use serde_json::json;
use switchboard::proto::signal::decode_client_message;

/// A browser-like SDP offer with one audio and one simulcast video m-line (about 3 KB).
fn browser_offer_sdp() -> String {
    let mut s = String::from(
        "v=0\r\no=- 4611731400430051336 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0 1\r\n\
         a=extmap-allow-mixed\r\na=msid-semantic: WMS stream\r\n",
    );
    s.push_str(
        "m=audio 9 UDP/TLS/RTP/SAVPF 111 63 9 0 8 13 110 126\r\nc=IN IP4 0.0.0.0\r\na=rtcp:9 IN IP4 0.0.0.0\r\n\
         a=ice-ufrag:Xk3f\r\na=ice-pwd:3kPqg7uO0sBzXG0lZlTjfA7p\r\na=ice-options:trickle\r\n\
         a=fingerprint:sha-256 6B:8B:5D:EA:59:04:20:23:29:C8:87:1C:CC:87:32:BE:DD:8C:66:A5:8E:50:55:EA:9C:5A:1B:46:AB:AE:2D:4F\r\n\
         a=setup:actpass\r\na=mid:0\r\na=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level\r\n\
         a=extmap:2 http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time\r\n\
         a=extmap:3 http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01\r\n\
         a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid\r\na=sendonly\r\na=msid:stream audio0\r\na=rtcp-mux\r\n\
         a=rtpmap:111 opus/48000/2\r\na=rtcp-fb:111 transport-cc\r\na=fmtp:111 minptime=10;useinbandfec=1\r\n\
         a=rtpmap:63 red/48000/2\r\na=fmtp:63 111/111\r\na=rtpmap:9 G722/8000\r\na=rtpmap:0 PCMU/8000\r\n\
         a=rtpmap:8 PCMA/8000\r\na=rtpmap:13 CN/8000\r\na=rtpmap:110 telephone-event/48000\r\n\
         a=rtpmap:126 telephone-event/8000\r\na=ssrc:1001 cname:abcdefgh\r\na=ssrc:1001 msid:stream audio0\r\n",
    );
    s.push_str(
        "m=video 9 UDP/TLS/RTP/SAVPF 96 97 98 99 45 46\r\nc=IN IP4 0.0.0.0\r\na=rtcp:9 IN IP4 0.0.0.0\r\n\
         a=ice-ufrag:Xk3f\r\na=ice-pwd:3kPqg7uO0sBzXG0lZlTjfA7p\r\na=ice-options:trickle\r\n\
         a=fingerprint:sha-256 6B:8B:5D:EA:59:04:20:23:29:C8:87:1C:CC:87:32:BE:DD:8C:66:A5:8E:50:55:EA:9C:5A:1B:46:AB:AE:2D:4F\r\n\
         a=setup:actpass\r\na=mid:1\r\na=extmap:14 urn:ietf:params:rtp-hdrext:toffset\r\n\
         a=extmap:2 http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time\r\n\
         a=extmap:13 urn:3gpp:video-orientation\r\n\
         a=extmap:3 http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01\r\n\
         a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid\r\n\
         a=extmap:10 urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id\r\n\
         a=extmap:11 urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id\r\n\
         a=sendonly\r\na=msid:stream video0\r\na=rtcp-mux\r\na=rtcp-rsize\r\n\
         a=rtpmap:96 VP8/90000\r\na=rtcp-fb:96 goog-remb\r\na=rtcp-fb:96 transport-cc\r\na=rtcp-fb:96 ccm fir\r\n\
         a=rtcp-fb:96 nack\r\na=rtcp-fb:96 nack pli\r\na=rtpmap:97 rtx/90000\r\na=fmtp:97 apt=96\r\n\
         a=rtpmap:98 VP9/90000\r\na=rtcp-fb:98 nack\r\na=rtcp-fb:98 nack pli\r\na=fmtp:98 profile-id=0\r\n\
         a=rtpmap:99 rtx/90000\r\na=fmtp:99 apt=98\r\na=rtpmap:45 AV1/90000\r\na=rtcp-fb:45 nack pli\r\n\
         a=rtpmap:46 rtx/90000\r\na=fmtp:46 apt=45\r\n\
         a=rid:q send\r\na=rid:h send\r\na=rid:f send\r\na=simulcast:send q;h;f\r\n",
    );
    s
}

fn bench_decode(c: &mut Criterion) {
    let frames = [
        ("ping", json!({ "type": "ping", "id": 7 }).to_string()),
        (
            "auth",
            json!({ "type": "auth", "id": 1, "token": "eyJhbGciOiJFUzI1NiIsImtpZCI6ImsxIiwidHlwIjoiSldUIn0.eyJzdWIiOiI4OmFjczpyZXNfMSIsInNjcCI6WyJ2b2lwIl0sInJlc291cmNlSWQiOiJyZXMiLCJpYXQiOjE4MDAwMDAwMDAsImV4cCI6MTgwMDA4NjQwMH0.c2lnbmF0dXJlc2lnbmF0dXJlc2lnbmF0dXJlc2lnbmF0dXJlc2lnbmF0dXJlc2lnbmF0dXJlc2lnbmF0dXJl", "displayName": "Alice" })
                .to_string(),
        ),
        (
            "join",
            json!({ "type": "join", "id": 2, "groupId": "0f6c7b1e-2c1d-4c55-9a56-1f1b5c9d2e11", "video": true })
                .to_string(),
        ),
        (
            "offer",
            json!({
                "type": "offer", "id": 3, "callId": "c-0f6c7b1e-2c1d-4c55-9a56-1f1b5c9d2e11",
                "sdp": browser_offer_sdp(),
                "tracks": [{ "mid": "0", "source": "audio" }, { "mid": "1", "source": "camera" }]
            })
            .to_string(),
        ),
        ("garbage", "{\"type\": 12, \"id\": }".to_string()),
    ];
    let mut g = c.benchmark_group("signal_decode");
    for (name, text) in &frames {
        g.throughput(Throughput::Bytes(text.len() as u64));
        g.bench_function(*name, |b| b.iter(|| decode_client_message(black_box(text))));
    }
    g.finish();
}

criterion_group!(benches, bench_decode);
criterion_main!(benches);
