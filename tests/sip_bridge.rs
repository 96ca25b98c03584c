//! Inbound SIP calls bridged to a browser user (issue 5, phase 2), signalling paths over real sockets: a raw UDP UAC
//! written here and a WebSocket client of the signaling protocol. The browser side gets `incomingCall` with the
//! caller's number; 180 while it rings; reject -> 603; offline -> 480; CANCEL ends the ringing (`incomingCallEnded`
//! 487); accept -> 200 with SDP; BYE from the phone ends the browser's call; the browser's hang-up sends BYE; DTMF by
//! SIP INFO arrives as `dtmfReceived`. Media (audio both ways, RFC 4733) is proven with Chromium and sipp in
//! `tests/e2e/sip_bridge.test.mjs`.

mod common;
mod sip_support;

use std::net::SocketAddr;
use std::time::Duration;

use common::{Client, TestServer, state_event};
use serde_json::{Value, json};
use sip_support::{code, sip_server_with, udp_until};
use switchboard::config::Config;
use switchboard::proto::sip::message::Message;
use switchboard::proto::sip::route::NumberConfig;
use tokio::net::UdpSocket;

const NUMBER: &str = "+15550200";
/// A number routed to the group call `GROUP`.
const GROUP_NUMBER: &str = "+15550201";
const GROUP: &str = "0b7e7d4e-4d51-4b8e-9d0c-6c1f0f3a2b10";

/// A server whose number `NUMBER` rings a user created beforehand (the route names the identity, so the store
/// is made by a first run on the same data directory) and whose number `GROUP_NUMBER` joins the group call
/// `GROUP`. Returns the server, the user's id and a token.
async fn bridged_server(rtp_min: u16) -> (TestServer, String, String) {
    let first = common::server().await;
    let (id, token) = first.user().await;
    let dir = first.dir.clone();
    first.running.shutdown().await;
    let user = id.clone();
    let data_dir = dir.clone();
    let mut s = sip_server_with(rtp_min, move |c: &mut Config| {
        c.data_dir = data_dir;
        c.sip.rtp_port_max = rtp_min + 99;
        let route = |number: &str| NumberConfig {
            number: number.into(),
            user: None,
            group: None,
            echo: false,
            answer_after_ms: 0,
        };
        c.sip.numbers = vec![
            NumberConfig {
                user: Some(user),
                ..route(NUMBER)
            },
            NumberConfig {
                group: Some(GROUP.into()),
                ..route(GROUP_NUMBER)
            },
        ];
    })
    .await;
    s.dir = dir;
    (s, id, token)
}

/// A phone: raw SIP over UDP from 127.0.0.1.
struct Phone {
    sock: UdpSocket,
    /// Where its SDP says it receives RTP.
    rtp: UdpSocket,
    gw: SocketAddr,
    call_id: String,
    to_tag: Option<String>,
    /// The number dialled.
    number: &'static str,
    /// The caller's number.
    from: &'static str,
}

impl Phone {
    /// +15550999 calling `NUMBER`.
    async fn new(gw: SocketAddr) -> Phone {
        Phone::calling(gw, NUMBER, "+15550999").await
    }

    async fn calling(gw: SocketAddr, number: &'static str, from: &'static str) -> Phone {
        let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let rtp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let call_id = format!("phone-{}", sock.local_addr().unwrap().port());
        Phone {
            sock,
            rtp,
            gw,
            call_id,
            to_tag: None,
            number,
            from,
        }
    }

    fn request(
        &self,
        method: &str,
        cseq: u32,
        cseq_method: &str,
        extra: &str,
        body: &str,
    ) -> String {
        let local = self.sock.local_addr().unwrap();
        let to_tag = self
            .to_tag
            .as_ref()
            .map(|t| format!(";tag={t}"))
            .unwrap_or_default();
        let branch = if method == "INVITE" || method == "CANCEL" {
            format!("z9hG4bK{}1", self.call_id)
        } else {
            format!("z9hG4bK{}{cseq}{method}", self.call_id)
        };
        format!(
            "{method} sip:{number}@{gw} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch={branch}\r\nMax-Forwards: 70\r\nFrom: \"Phone\" <sip:{from}@{local}>;tag=ph1\r\nTo: <sip:{number}@{gw}>{to_tag}\r\nCall-ID: {cid}\r\nCSeq: {cseq} {cseq_method}\r\nContact: <sip:phone@{local}>\r\n{extra}Content-Length: {len}\r\n\r\n{body}",
            number = self.number,
            from = self.from,
            gw = self.gw,
            cid = self.call_id,
            len = body.len()
        )
    }

    async fn send(&self, req: String) {
        self.sock.send_to(req.as_bytes(), self.gw).await.unwrap();
    }

    async fn invite(&self) {
        self.invite_offering(
            "8 101",
            "a=rtpmap:8 PCMA/8000\r\na=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-15\r\n",
        )
        .await;
    }

    /// INVITE whose audio m-line offers the formats `fmts` with these attribute lines.
    async fn invite_offering(&self, fmts: &str, attributes: &str) {
        let port = self.rtp.local_addr().unwrap().port();
        let sdp = format!(
            "v=0\r\no=ph 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio {port} RTP/AVP {fmts}\r\n{attributes}a=ptime:20\r\n"
        );
        let r = self.request(
            "INVITE",
            1,
            "INVITE",
            "Content-Type: application/sdp\r\n",
            &sdp,
        );
        self.send(r).await;
    }

    /// Waits for a response with this code (or any final one when 0), keeping the To tag.
    async fn until(&mut self, want: u16) -> Vec<Message> {
        let got = udp_until(&self.sock, Duration::from_secs(10), |m| {
            let c = code(m);
            if want == 0 { c >= 200 } else { c == want }
        })
        .await;
        if let Some(t) = got.iter().rev().find_map(|m| m.to_tag()) {
            self.to_tag = Some(t);
        }
        got
    }
}

fn codes(ms: &[Message]) -> Vec<u16> {
    ms.iter().map(code).collect()
}

fn sip_udp(s: &TestServer) -> SocketAddr {
    s.running.sip.as_ref().expect("SIP gateway runs").udp
}

fn ports_in_use(s: &TestServer) -> usize {
    s.running.sip.as_ref().unwrap().ports.in_use()
}

async fn incoming(bob: &mut Client) -> Value {
    bob.event(Duration::from_secs(5), |v| v["type"] == "incomingCall")
        .await
}

#[tokio::test]
async fn ringing_shows_the_callers_number_sends_180_and_reject_answers_603() {
    let (s, _id, token) = bridged_server(46000).await;
    let mut bob = Client::authed(&s.ws_url(), &token, "Bob").await;
    let mut phone = Phone::new(sip_udp(&s)).await;
    phone.invite().await;
    let ev = incoming(&mut bob).await;
    assert_eq!(
        ev["caller"],
        json!({ "phoneNumber": "+15550999", "rawId": "4:+15550999" })
    );
    assert_eq!(ev["video"], false);
    let got = phone.until(180).await;
    assert_eq!(
        codes(&got).last(),
        Some(&180),
        "180 while the browser rings"
    );
    let call_id = ev["callId"].as_str().unwrap().to_string();
    let r = bob.request("reject", json!({ "callId": call_id })).await;
    assert_eq!(r["ok"], true, "{r}");
    let got = phone.until(0).await;
    assert_eq!(codes(&got).last(), Some(&603), "reject -> 603 Decline");
    phone.send(phone.request("ACK", 1, "ACK", "", "")).await;
    assert_eq!(ports_in_use(&s), 0, "no RTP port for an unanswered call");
    s.running.shutdown().await;
}

#[tokio::test]
async fn offline_user_answers_480() {
    let (s, _id, _token) = bridged_server(46100).await;
    let mut phone = Phone::new(sip_udp(&s)).await;
    phone.invite().await;
    let got = phone.until(0).await;
    assert_eq!(
        codes(&got),
        [100, 480],
        "nobody connected for the user: 480"
    );
    s.running.shutdown().await;
}

#[tokio::test]
async fn cancel_ends_the_ringing_in_the_browser() {
    let (s, _id, token) = bridged_server(46200).await;
    let mut bob = Client::authed(&s.ws_url(), &token, "Bob").await;
    let mut phone = Phone::new(sip_udp(&s)).await;
    phone.invite().await;
    let ev = incoming(&mut bob).await;
    phone.until(180).await;
    let tag = phone.to_tag.take();
    phone
        .send(phone.request("CANCEL", 1, "CANCEL", "", ""))
        .await;
    phone.to_tag = tag;
    let got = phone.until(487).await;
    assert!(
        codes(&got).contains(&200),
        "CANCEL answered 200: {:?}",
        codes(&got)
    );
    let ended = bob
        .event(Duration::from_secs(5), |v| v["type"] == "incomingCallEnded")
        .await;
    assert_eq!(ended["callId"], ev["callId"]);
    assert_eq!(ended["endReason"]["code"], 487);
    // Accepting now is too late.
    let r = bob
        .request("accept", json!({ "callId": ev["callId"] }))
        .await;
    assert_eq!(r["ok"], false, "{r}");
    s.running.shutdown().await;
}

#[tokio::test]
async fn accept_answers_200_with_sdp_info_dtmf_arrives_and_the_phones_bye_ends_the_call() {
    let (s, _id, token) = bridged_server(46300).await;
    let mut bob = Client::authed(&s.ws_url(), &token, "Bob").await;
    let mut phone = Phone::new(sip_udp(&s)).await;
    phone.invite().await;
    let ev = incoming(&mut bob).await;
    let call_id = ev["callId"].as_str().unwrap().to_string();
    let r = bob.request("accept", json!({ "callId": call_id })).await;
    assert_eq!(r["ok"], true, "{r}");
    let got = phone.until(200).await;
    let ok = got.last().unwrap();
    let sdp = String::from_utf8_lossy(&ok.body).to_string();
    assert!(sdp.contains("m=audio "), "{sdp}");
    assert!(sdp.contains("PCMA/8000"), "the offer's codec: {sdp}");
    assert!(sdp.contains("telephone-event/8000"), "{sdp}");
    assert_eq!(ports_in_use(&s), 1);
    phone.send(phone.request("ACK", 1, "ACK", "", "")).await;
    let joined = bob
        .event(Duration::from_secs(5), |v| {
            v["type"] == "participantsUpdated"
        })
        .await;
    assert_eq!(joined["added"][0]["phoneNumber"], "+15550999");
    assert_eq!(joined["added"][0]["communicationUserId"], "4:+15550999");
    phone
        .send(phone.request(
            "INFO",
            2,
            "INFO",
            "Content-Type: application/dtmf-relay\r\n",
            "Signal=7\r\nDuration=160\r\n",
        ))
        .await;
    let dtmf = bob
        .event(Duration::from_secs(5), |v| v["type"] == "dtmfReceived")
        .await;
    assert_eq!(
        dtmf,
        json!({ "type": "dtmfReceived", "callId": call_id, "tone": "7" })
    );
    phone.send(phone.request("BYE", 3, "BYE", "", "")).await;
    let ended = bob
        .event(
            Duration::from_secs(5),
            state_event(&call_id, "Disconnected"),
        )
        .await;
    assert_eq!(ended["endReason"]["code"], 0);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(ports_in_use(&s), 0, "the RTP port is freed");
    s.running.shutdown().await;
}

#[tokio::test]
async fn the_browsers_hang_up_sends_bye_to_the_phone() {
    let (s, _id, token) = bridged_server(46400).await;
    let mut bob = Client::authed(&s.ws_url(), &token, "Bob").await;
    let mut phone = Phone::new(sip_udp(&s)).await;
    phone.invite().await;
    let ev = incoming(&mut bob).await;
    let call_id = ev["callId"].as_str().unwrap().to_string();
    bob.request("accept", json!({ "callId": call_id })).await;
    phone.until(200).await;
    phone.send(phone.request("ACK", 1, "ACK", "", "")).await;
    let r = bob
        .request("hangUp", json!({ "callId": call_id, "forEveryone": false }))
        .await;
    assert_eq!(r["ok"], true, "{r}");
    let got = udp_until(&phone.sock, Duration::from_secs(5), |m| {
        m.method() == Some("BYE")
    })
    .await;
    let bye = got.last().expect("a BYE");
    assert_eq!(bye.method(), Some("BYE"));
    assert_eq!(bye.call_id(), Some(phone.call_id.as_str()));
    assert_eq!(
        bye.to_tag().as_deref(),
        Some("ph1"),
        "To is the phone's From"
    );
    assert_eq!(bye.from_tag(), phone.to_tag, "From carries our tag");
    assert!(
        bye.header("Via")
            .is_some_and(|v| v.contains("branch=z9hG4bK")),
        "{bye:?}"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(ports_in_use(&s), 0, "the RTP port is freed");
    s.running.shutdown().await;
}

/// The first port of `m=audio` in an SDP body.
fn audio_port(sdp: &[u8]) -> u16 {
    let sdp = String::from_utf8_lossy(sdp);
    sdp.lines()
        .find_map(|l| l.strip_prefix("m=audio "))
        .and_then(|l| l.split(' ').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no m=audio port in {sdp}"))
}

/// Dials `GROUP_NUMBER` from `from` and completes the INVITE (200 + ACK); returns the phone and where the
/// gateway receives its RTP.
async fn join_by_phone(s: &TestServer, from: &'static str) -> (Phone, SocketAddr) {
    let mut phone = Phone::calling(sip_udp(s), GROUP_NUMBER, from).await;
    phone.invite().await;
    let got = phone.until(0).await;
    let ok = got.last().expect("a final response");
    assert_eq!(
        code(ok),
        200,
        "a group route answers at once: {:?}",
        codes(&got)
    );
    phone.send(phone.request("ACK", 1, "ACK", "", "")).await;
    let port = audio_port(&ok.body);
    (phone, SocketAddr::from(([127, 0, 0, 1], port)))
}

/// Root mean square of the PCMA payloads of the RTP packets on `sock` for `window`, per packet; the loudest.
async fn loudest_pcma_packet(sock: &UdpSocket, window: Duration) -> (usize, f64) {
    use switchboard::proto::sip::{g711, rtp};
    let (mut packets, mut loudest) = (0, 0.0f64);
    let mut buf = [0u8; 2048];
    let deadline = tokio::time::Instant::now() + window;
    while let Ok(Ok(n)) = tokio::time::timeout_at(deadline, sock.recv(&mut buf)).await {
        let Ok(p) = rtp::parse(&buf[..n]) else {
            continue;
        };
        if p.pt != 8 || p.payload.is_empty() {
            continue;
        }
        packets += 1;
        let sum: f64 = p
            .payload
            .iter()
            .map(|b| f64::from(g711::alaw_decode(*b)).powi(2))
            .sum();
        loudest = loudest.max((sum / p.payload.len() as f64).sqrt());
    }
    (packets, loudest)
}

/// Issue 5 §2 (a number that joins a group call): two phones dial a number routed to a group while a WebSocket
/// client is in it. Each phone's leg is a participant named by its number; a tone one phone sends reaches the
/// other transcoded (PCMA -> Opus -> the SFU -> Opus -> PCMA) and loud, silence before it stays quiet;
/// `hangUp({forEveryone})` from the group's first joiner sends BYE to both phones and frees their RTP ports.
#[tokio::test]
async fn a_group_route_joins_the_group_call_and_its_phones_hear_each_other() {
    use switchboard::proto::sip::{g711, rtp};
    let (s, _id, token) = bridged_server(46500).await;
    let mut alice = Client::authed(&s.ws_url(), &token, "Alice").await;
    let r = alice
        .request("join", json!({ "groupId": GROUP, "video": false }))
        .await;
    assert_eq!(r["ok"], true, "{r}");
    let call_id = r["result"]["callId"].as_str().unwrap().to_string();

    let (a, a_gw) = join_by_phone(&s, "+15550901").await;
    let (b, b_gw) = join_by_phone(&s, "+15550902").await;
    for number in ["+15550901", "+15550902"] {
        let ev = alice
            .event(Duration::from_secs(5), |v| {
                v["type"] == "participantsUpdated" && v["added"][0]["phoneNumber"] == number
            })
            .await;
        assert_eq!(ev["callId"], call_id.as_str());
        assert_eq!(ev["added"][0]["communicationUserId"], format!("4:{number}"));
    }
    assert_eq!(ports_in_use(&s), 2);

    // B speaks too (silence), so the gateway has latched both phones' addresses.
    let silence = vec![g711::alaw_encode(0); 160];
    for seq in 0..5u16 {
        let pkt = rtp::write(seq == 0, 8, seq, u32::from(seq) * 160, 0xb0b, &silence);
        b.rtp.send_to(&pkt, b_gw).await.unwrap();
        a.rtp.send_to(&pkt, a_gw).await.unwrap();
    }
    let (_, quiet) = loudest_pcma_packet(&b.rtp, Duration::from_millis(600)).await;
    assert!(
        quiet < 200.0,
        "B hears no tone before A sends one: RMS {quiet:.0}"
    );

    // A sends a 400 Hz tone (amplitude 8000) for 2 s at 20 ms per packet; B listens meanwhile.
    let sender = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        for n in 0..100u32 {
            tick.tick().await;
            let payload: Vec<u8> = (0..160u32)
                .map(|i| {
                    let t = f64::from(n * 160 + i) / 8000.0;
                    g711::alaw_encode(
                        (8000.0 * (2.0 * std::f64::consts::PI * 400.0 * t).sin()) as i16,
                    )
                })
                .collect();
            let pkt = rtp::write(n == 0, 8, n as u16 + 10, n * 160, 0xa, &payload);
            a.rtp.send_to(&pkt, a_gw).await.unwrap();
        }
        a
    });
    let (packets, loud) = loudest_pcma_packet(&b.rtp, Duration::from_millis(2500)).await;
    let a = sender.await.unwrap();
    println!(
        "B before the tone: loudest RMS {quiet:.0}; during it: {packets} packets, loudest RMS {loud:.0}"
    );
    assert!(packets > 50, "B gets RTP from the group: {packets} packets");
    assert!(
        loud > 2000.0,
        "B hears A's tone through the SFU: loudest packet RMS {loud:.0}"
    );

    let r = alice
        .request("hangUp", json!({ "callId": call_id, "forEveryone": true }))
        .await;
    assert_eq!(r["ok"], true, "{r}");
    for phone in [&a, &b] {
        let got = udp_until(&phone.sock, Duration::from_secs(5), |m| {
            m.method() == Some("BYE")
        })
        .await;
        let bye = got.last().expect("a BYE");
        assert_eq!(bye.method(), Some("BYE"), "{} gets BYE", phone.from);
        assert_eq!(bye.call_id(), Some(phone.call_id.as_str()));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(ports_in_use(&s), 0, "the RTP ports are freed");
    s.running.shutdown().await;
}

/// A phone that negotiated no telephone-event hears the browser's `sendDtmf` as the in-band tone (ITU-T Q.23
/// frequencies in its PCMA audio), which a Goertzel detector on the phone's side reads back as the digit.
#[tokio::test]
async fn dtmf_to_a_phone_without_telephone_event_is_played_in_band() {
    use switchboard::proto::sip::goertzel::ToneDetector;
    use switchboard::proto::sip::{g711, rtp};
    let (s, _id, token) = bridged_server(46600).await;
    let mut bob = Client::authed(&s.ws_url(), &token, "Bob").await;
    let mut phone = Phone::new(sip_udp(&s)).await;
    phone.invite_offering("8", "a=rtpmap:8 PCMA/8000\r\n").await;
    let ev = incoming(&mut bob).await;
    let call_id = ev["callId"].as_str().unwrap().to_string();
    bob.request("accept", json!({ "callId": call_id })).await;
    let got = phone.until(200).await;
    let sdp = String::from_utf8_lossy(&got.last().unwrap().body).to_string();
    assert!(!sdp.contains("telephone-event"), "{sdp}");
    phone.send(phone.request("ACK", 1, "ACK", "", "")).await;
    let gw = SocketAddr::from(([127, 0, 0, 1], audio_port(&got.last().unwrap().body)));
    // The phone speaks first (silence), so its address is latched.
    let silence = vec![g711::alaw_encode(0); 160];
    phone
        .rtp
        .send_to(&rtp::write(true, 8, 1, 0, 0x99, &silence), gw)
        .await
        .unwrap();
    let r = bob
        .request("sendDtmf", json!({ "callId": call_id, "tones": "7" }))
        .await;
    assert_eq!(r["ok"], true, "{r}");
    let mut detector = ToneDetector::new();
    let mut digits = Vec::new();
    let mut buf = [0u8; 2048];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    while let Ok(Ok(n)) = tokio::time::timeout_at(deadline, phone.rtp.recv(&mut buf)).await {
        let Ok(p) = rtp::parse(&buf[..n]) else {
            continue;
        };
        assert_eq!(p.pt, 8, "no telephone-event packets: PCMA only");
        let samples: Vec<i16> = p.payload.iter().map(|b| g711::alaw_decode(*b)).collect();
        digits.extend(detector.push(&samples));
    }
    assert_eq!(digits, ['7'], "the tone heard in the audio");
    s.running.shutdown().await;
}
