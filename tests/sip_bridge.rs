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
use sip_support::{code, udp_until};
use switchboard::config::Config;
use switchboard::proto::sip::message::Message;
use switchboard::proto::sip::route::{NumberConfig, TrunkConfig, TrunkTransport};
use switchboard::proto::sip::sdp::G711;
use tokio::net::UdpSocket;

const NUMBER: &str = "+15550200";

/// A server whose number `NUMBER` rings a user created beforehand (the route names the identity, so the store
/// is made by a first run on the same data directory). Returns the server, the user's id and a token.
async fn bridged_server(rtp_min: u16) -> (TestServer, String, String) {
    let first = common::server().await;
    let (id, token) = first.user().await;
    let dir = first.dir.clone();
    first.running.shutdown().await;
    let user = id.clone();
    let mut config = Config {
        data_dir: dir.clone(),
        https_port: 0,
        http_port: 0,
        media_port: 0,
        ..Config::default()
    };
    config.sip.port = 0;
    config.sip.bind = "127.0.0.1".parse().unwrap();
    config.sip.rtp_port_min = rtp_min;
    config.sip.rtp_port_max = rtp_min + 99;
    config.sip.trunks = vec![TrunkConfig {
        name: "loopback".into(),
        address: "127.0.0.1:5090".into(),
        transport: TrunkTransport::Udp,
        username: None,
        password: None,
        allow: vec!["127.0.0.1/32".into()],
        caller_id: None,
        codecs: vec![G711::Pcmu, G711::Pcma],
        prefixes: vec!["+1".into()],
        keepalive_secs: 0,
    }];
    config.sip.numbers = vec![NumberConfig {
        number: NUMBER.into(),
        user: Some(user),
        group: None,
        echo: false,
        answer_after_ms: 0,
    }];
    let running = switchboard::app::start(config)
        .await
        .expect("server starts");
    let key = running
        .connection_string
        .split("accesskey=")
        .nth(1)
        .unwrap()
        .to_string();
    let base = format!("http://{}", running.http_addr);
    let s = TestServer {
        running,
        dir,
        key,
        base,
        http: reqwest::Client::new(),
    };
    (s, id, token)
}

/// A phone: raw SIP over UDP from 127.0.0.1.
struct Phone {
    sock: UdpSocket,
    gw: SocketAddr,
    call_id: String,
    to_tag: Option<String>,
}

impl Phone {
    async fn new(gw: SocketAddr) -> Phone {
        let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let call_id = format!("phone-{}", sock.local_addr().unwrap().port());
        Phone {
            sock,
            gw,
            call_id,
            to_tag: None,
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
            "{method} sip:{NUMBER}@{gw} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch={branch}\r\nMax-Forwards: 70\r\nFrom: \"Phone\" <sip:+15550999@{local}>;tag=ph1\r\nTo: <sip:{NUMBER}@{gw}>{to_tag}\r\nCall-ID: {cid}\r\nCSeq: {cseq} {cseq_method}\r\nContact: <sip:phone@{local}>\r\n{extra}Content-Length: {len}\r\n\r\n{body}",
            gw = self.gw,
            cid = self.call_id,
            len = body.len()
        )
    }

    async fn send(&self, req: String) {
        self.sock.send_to(req.as_bytes(), self.gw).await.unwrap();
    }

    async fn invite(&self) {
        let sdp = "v=0\r\no=ph 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 8 101\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-15\r\na=ptime:20\r\n";
        let r = self.request(
            "INVITE",
            1,
            "INVITE",
            "Content-Type: application/sdp\r\n",
            sdp,
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
