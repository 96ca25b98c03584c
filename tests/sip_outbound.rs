//! Outbound calls (issue 5, phase 2) over real sockets: a WebSocket client calls `{phoneNumber}`, raw UDP sockets
//! written here play the carriers. Failures become end reasons (486, 404), 503 fails over to the next trunk whose
//! prefix matches, a number no trunk serves ends with 404, the caller's hang-up while ringing sends CANCEL (and the
//! 487 is ACKed), and a BYE from the carrier ends the browser's call. The 407 digest flow with audio is proven with
//! sipp and Chromium in `tests/e2e/sip_outbound.test.mjs`.

mod common;
mod sip_support;

use std::net::SocketAddr;
use std::time::Duration;

use common::{Client, TestServer, state_event};
use serde_json::{Value, json};
use switchboard::proto::sip::message::{self, Message, ReplyBase, StartLine};
use switchboard::proto::sip::route::{TrunkConfig, TrunkTransport};
use switchboard::proto::sip::sdp::G711;
use tokio::net::UdpSocket;

/// A carrier: one UDP socket that receives the gateway's requests and answers them.
struct Carrier {
    sock: UdpSocket,
}

impl Carrier {
    async fn new() -> Carrier {
        Carrier {
            sock: UdpSocket::bind("127.0.0.1:0").await.unwrap(),
        }
    }

    fn addr(&self) -> SocketAddr {
        self.sock.local_addr().unwrap()
    }

    /// The next request with this method (other messages are skipped), and where it came from.
    async fn request(&self, method: &str) -> (Message, SocketAddr) {
        let mut buf = vec![0u8; 65535];
        let end = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let (n, from) = tokio::time::timeout_at(end, self.sock.recv_from(&mut buf))
                .await
                .unwrap_or_else(|_| panic!("no {method} from the gateway"))
                .unwrap();
            let m = message::parse(&buf[..n]).expect("the gateway sends well-formed SIP");
            if m.method() == Some(method) {
                return (m, from);
            }
        }
    }

    async fn respond(&self, to: SocketAddr, req: &Message, code: u16, reason: &str, body: &str) {
        let mut extra = vec![("Contact", format!("<sip:carrier@{}>", self.addr()))];
        if !body.is_empty() {
            extra.push(("Content-Type", "application/sdp".to_string()));
        }
        let bytes =
            ReplyBase::of(req).response(code, reason, Some("carrier1"), &extra, body.as_bytes());
        self.sock.send_to(&bytes, to).await.unwrap();
    }
}

fn trunk(name: &str, addr: SocketAddr, prefix: &str) -> TrunkConfig {
    TrunkConfig {
        name: name.into(),
        address: addr.to_string(),
        transport: TrunkTransport::Udp,
        username: None,
        password: None,
        allow: vec!["127.0.0.1/32".into()],
        caller_id: Some("+15550999".into()),
        codecs: vec![G711::Pcma, G711::Pcmu],
        prefixes: vec![prefix.into()],
        keepalive_secs: 0,
    }
}

async fn server(rtp_min: u16, trunks: Vec<TrunkConfig>) -> TestServer {
    common::server_with(|c| {
        c.sip.port = 0;
        c.sip.bind = "127.0.0.1".parse().unwrap();
        c.sip.rtp_port_min = rtp_min;
        c.sip.rtp_port_max = rtp_min + 99;
        c.sip.trunks = trunks;
    })
    .await
}

async fn caller(s: &TestServer) -> Client {
    let (_, token) = s.user().await;
    Client::authed(&s.ws_url(), &token, "Alice").await
}

/// `startCall` to a phone number; returns the call id.
async fn call(alice: &mut Client, number: &str) -> String {
    let r = alice
        .request(
            "startCall",
            json!({ "targets": [{ "phoneNumber": number }], "video": false }),
        )
        .await;
    assert_eq!(r["ok"], true, "{r}");
    r["result"]["callId"].as_str().unwrap().to_string()
}

/// `join` of a group call; returns the call id.
async fn join(alice: &mut Client, group: &str) -> String {
    let r = alice
        .request("join", json!({ "groupId": group, "video": false }))
        .await;
    assert_eq!(r["ok"], true, "{r}");
    r["result"]["callId"].as_str().unwrap().to_string()
}

/// `addParticipant` of a phone number; returns the response.
async fn add_phone(alice: &mut Client, call_id: &str, number: &str) -> Value {
    alice
        .request(
            "addParticipant",
            json!({ "callId": call_id, "target": { "phoneNumber": number } }),
        )
        .await
}

async fn ended(alice: &mut Client, call_id: &str) -> Value {
    alice
        .event(
            Duration::from_secs(10),
            state_event(call_id, "Disconnected"),
        )
        .await
}

fn ports_in_use(s: &TestServer) -> usize {
    s.running.sip.as_ref().unwrap().ports.in_use()
}

fn cseq_method(m: &Message) -> String {
    m.cseq().map(|(_, m)| m).unwrap_or_default()
}

#[tokio::test]
async fn busy_486_ends_the_call_with_486_and_the_final_response_is_acked() {
    let carrier = Carrier::new().await;
    let s = server(47000, vec![trunk("carrier", carrier.addr(), "+1")]).await;
    let mut alice = caller(&s).await;
    let call_id = call(&mut alice, "+15550100").await;
    let (invite, gw) = carrier.request("INVITE").await;
    assert!(
        invite.header("From").unwrap().contains("+15550999"),
        "caller id from the trunk"
    );
    let sdp = String::from_utf8_lossy(&invite.body).to_string();
    assert!(
        sdp.contains("PCMA/8000") && sdp.contains("telephone-event/8000"),
        "{sdp}"
    );
    carrier.respond(gw, &invite, 100, "Trying", "").await;
    carrier.respond(gw, &invite, 486, "Busy Here", "").await;
    let (ack, _) = carrier.request("ACK").await;
    assert_eq!(ack.call_id(), invite.call_id());
    let via = |m: &Message| m.header("Via").unwrap_or("").to_string();
    assert_eq!(
        message::header_param(&via(&ack), "branch"),
        message::header_param(&via(&invite), "branch"),
        "the ACK of a non-2xx is in the INVITE's transaction"
    );
    let ev = ended(&mut alice, &call_id).await;
    assert_eq!(ev["endReason"]["code"], 486, "{ev}");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(ports_in_use(&s), 0, "the RTP port is freed");
    s.running.shutdown().await;
}

#[tokio::test]
async fn a_503_fails_over_to_the_next_trunk_and_its_404_ends_the_call() {
    let first = Carrier::new().await;
    let second = Carrier::new().await;
    let s = server(
        47100,
        vec![
            trunk("primary", first.addr(), "+1555"),
            trunk("backup", second.addr(), "+1"),
        ],
    )
    .await;
    let mut alice = caller(&s).await;
    let call_id = call(&mut alice, "+15550100").await;
    let (invite, gw) = first.request("INVITE").await;
    first
        .respond(gw, &invite, 503, "Service Unavailable", "")
        .await;
    first.request("ACK").await;
    let (invite2, gw2) = second.request("INVITE").await;
    second.respond(gw2, &invite2, 180, "Ringing", "").await;
    alice
        .event(Duration::from_secs(5), state_event(&call_id, "Ringing"))
        .await;
    second.respond(gw2, &invite2, 404, "Not Found", "").await;
    let ev = ended(&mut alice, &call_id).await;
    assert_eq!(ev["endReason"]["code"], 404, "{ev}");
    s.running.shutdown().await;
}

#[tokio::test]
async fn a_number_no_trunk_serves_ends_with_404() {
    let carrier = Carrier::new().await;
    let s = server(47200, vec![trunk("carrier", carrier.addr(), "+1")]).await;
    let mut alice = caller(&s).await;
    let call_id = call(&mut alice, "+4420700000").await;
    let ev = ended(&mut alice, &call_id).await;
    assert_eq!(ev["endReason"]["code"], 404, "{ev}");
    let r = alice
        .request(
            "startCall",
            json!({ "targets": [{ "phoneNumber": "15550100" }] }),
        )
        .await;
    assert_eq!(r["error"]["code"], "BadTarget", "not E.164: {r}");
    s.running.shutdown().await;
}

#[tokio::test]
async fn hanging_up_while_it_rings_sends_cancel_and_acks_the_487() {
    let carrier = Carrier::new().await;
    let s = server(47300, vec![trunk("carrier", carrier.addr(), "+1")]).await;
    let mut alice = caller(&s).await;
    let call_id = call(&mut alice, "+15550100").await;
    let (invite, gw) = carrier.request("INVITE").await;
    carrier.respond(gw, &invite, 180, "Ringing", "").await;
    alice
        .event(Duration::from_secs(5), state_event(&call_id, "Ringing"))
        .await;
    let r = alice.request("hangUp", json!({ "callId": call_id })).await;
    assert_eq!(r["ok"], true, "{r}");
    let (cancel, _) = carrier.request("CANCEL").await;
    assert_eq!(cancel.call_id(), invite.call_id());
    assert_eq!(cseq_method(&cancel), "CANCEL");
    assert_eq!(
        cancel.cseq().unwrap().0,
        invite.cseq().unwrap().0,
        "CANCEL has the INVITE's CSeq number"
    );
    carrier.respond(gw, &cancel, 200, "OK", "").await;
    carrier
        .respond(gw, &invite, 487, "Request Terminated", "")
        .await;
    let (ack, _) = carrier.request("ACK").await;
    assert_eq!(ack.call_id(), invite.call_id());
    let ev = ended(&mut alice, &call_id).await;
    assert_eq!(ev["endReason"]["code"], 487, "{ev}");
    s.running.shutdown().await;
}

#[tokio::test]
async fn an_answered_call_connects_and_the_carriers_bye_ends_it() {
    let carrier = Carrier::new().await;
    let media = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let s = server(47400, vec![trunk("carrier", carrier.addr(), "+1")]).await;
    let mut alice = caller(&s).await;
    let call_id = call(&mut alice, "+15550100").await;
    let (invite, gw) = carrier.request("INVITE").await;
    let answer = format!(
        "v=0\r\no=c 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio {} RTP/AVP 8 101\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:101 telephone-event/8000\r\na=ptime:20\r\n",
        media.local_addr().unwrap().port()
    );
    carrier.respond(gw, &invite, 200, "OK", &answer).await;
    let (ack, _) = carrier.request("ACK").await;
    assert!(
        matches!(&ack.start, StartLine::Request { uri, .. } if uri.contains("carrier@")),
        "the 2xx ACK goes to the Contact"
    );
    alice
        .event(Duration::from_secs(5), state_event(&call_id, "Connected"))
        .await;
    let joined = alice
        .event(Duration::from_secs(5), |v| {
            v["type"] == "participantsUpdated"
        })
        .await;
    assert_eq!(joined["added"][0]["phoneNumber"], "+15550100");
    assert_eq!(ports_in_use(&s), 1);
    let bye = format!(
        "BYE sip:switchboard@{gw} SIP/2.0\r\nVia: SIP/2.0/UDP {c};branch=z9hG4bKbye1\r\nMax-Forwards: 70\r\nFrom: {to};tag=carrier1\r\nTo: {from}\r\nCall-ID: {cid}\r\nCSeq: 1 BYE\r\nContent-Length: 0\r\n\r\n",
        c = carrier.addr(),
        to = invite.header("To").unwrap(),
        from = invite.header("From").unwrap(),
        cid = invite.call_id().unwrap(),
    );
    carrier.sock.send_to(bye.as_bytes(), gw).await.unwrap();
    let ev = ended(&mut alice, &call_id).await;
    assert_eq!(ev["endReason"]["code"], 0, "{ev}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(ports_in_use(&s), 0, "the RTP port is freed");
    s.running.shutdown().await;
}

/// Sum of the samples of a metric in `/metrics`.
async fn metric(s: &TestServer, name: &str) -> f64 {
    sip_support::counter(s, name, &[]).await
}

#[tokio::test]
async fn early_media_joins_the_room_at_183_and_a_later_486_frees_it() {
    let carrier = Carrier::new().await;
    let media = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let s = server(47500, vec![trunk("carrier", carrier.addr(), "+1")]).await;
    let mut alice = caller(&s).await;
    let call_id = call(&mut alice, "+15550100").await;
    let (invite, gw) = carrier.request("INVITE").await;
    let answer = format!(
        "v=0\r\no=c 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio {} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=ptime:20\r\n",
        media.local_addr().unwrap().port()
    );
    carrier
        .respond(gw, &invite, 183, "Session Progress", &answer)
        .await;
    alice
        .event(Duration::from_secs(5), state_event(&call_id, "EarlyMedia"))
        .await;
    // The phone's media agent is in the call's SFU room before the answer (the caller has no media yet).
    let mut rooms = 0.0;
    for _ in 0..50 {
        rooms = metric(&s, "switchboard_media_rooms").await;
        if rooms == 1.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(rooms, 1.0, "the agent's room exists during early media");
    assert_eq!(ports_in_use(&s), 1);
    carrier.respond(gw, &invite, 486, "Busy Here", "").await;
    carrier.request("ACK").await;
    let ev = ended(&mut alice, &call_id).await;
    assert_eq!(ev["endReason"]["code"], 486, "{ev}");
    for _ in 0..50 {
        rooms = metric(&s, "switchboard_media_rooms").await;
        if rooms == 0.0 && ports_in_use(&s) == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(rooms, 0.0, "the agent left the SFU with the failed call");
    assert_eq!(ports_in_use(&s), 0, "the RTP port is freed");
    s.running.shutdown().await;
}

/// `addParticipant` with a phone number in a group call (ACS `call.addParticipant({phoneNumber})`): the members
/// see the phone `Connecting`, `Ringing` at the carrier's 180, `Connected` after its 200 (ACKed), and removed when
/// the carrier hangs up; a second number that is busy (486) shows up and is removed again; the call itself goes on.
#[tokio::test]
async fn a_phone_number_added_to_a_group_call_rings_joins_and_leaves() {
    let carrier = Carrier::new().await;
    let media = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let s = server(47600, vec![trunk("carrier", carrier.addr(), "+1")]).await;
    let mut alice = caller(&s).await;
    let call_id = join(&mut alice, "5d7c1f0e-2b4a-4c1e-9f3a-7e6d5c4b3a21").await;

    // Refused: not E.164, a communication user, a call we are not in.
    for (target, call, code) in [
        (
            json!({ "phoneNumber": "5550100" }),
            call_id.as_str(),
            "BadTarget",
        ),
        (
            json!({ "communicationUserId": "8:acs:x_y" }),
            call_id.as_str(),
            "BadTarget",
        ),
        (
            json!({ "phoneNumber": "+15550100" }),
            "no-such-call",
            "CallNotFound",
        ),
    ] {
        let r = alice
            .request(
                "addParticipant",
                json!({ "callId": call, "target": target }),
            )
            .await;
        assert_eq!(r["ok"], false, "{r}");
        assert_eq!(r["error"]["code"], code, "{r}");
    }

    let r = add_phone(&mut alice, &call_id, "+15550100").await;
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["result"]["participant"]["state"], "Connecting");
    let phone = |state: &'static str, list: &'static str| {
        move |v: &Value| {
            v["type"] == "participantsUpdated"
                && v[list].as_array().is_some_and(|a| {
                    a.iter()
                        .any(|p| p["phoneNumber"] == "+15550100" && p["state"] == state)
                })
        }
    };
    alice
        .event(Duration::from_secs(5), phone("Connecting", "added"))
        .await;
    let (invite, gw) = carrier.request("INVITE").await;
    assert!(
        invite.header("To").is_some_and(|t| t.contains("+15550100")),
        "{:?}",
        invite.header("To")
    );
    carrier.respond(gw, &invite, 180, "Ringing", "").await;
    alice
        .event(Duration::from_secs(5), phone("Ringing", "updated"))
        .await;
    let answer = format!(
        "v=0\r\no=c 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio {} RTP/AVP 8\r\na=rtpmap:8 PCMA/8000\r\na=ptime:20\r\n",
        media.local_addr().unwrap().port()
    );
    carrier.respond(gw, &invite, 200, "OK", &answer).await;
    carrier.request("ACK").await;
    alice
        .event(Duration::from_secs(5), phone("Connected", "added"))
        .await;
    assert_eq!(ports_in_use(&s), 1);

    // A second number is busy: it appears, then goes.
    let r = add_phone(&mut alice, &call_id, "+15550111").await;
    assert_eq!(r["ok"], true, "{r}");
    let (busy, _) = carrier.request("INVITE").await;
    carrier.respond(gw, &busy, 486, "Busy Here", "").await;
    carrier.request("ACK").await;
    alice
        .event(Duration::from_secs(5), |v| {
            v["type"] == "participantsUpdated" && v["removed"][0]["phoneNumber"] == "+15550111"
        })
        .await;

    // The carrier hangs the first phone up: it leaves; Alice's call goes on.
    let bye = format!(
        "BYE sip:switchboard@{gw} SIP/2.0\r\nVia: SIP/2.0/UDP {c};branch=z9hG4bKbye2\r\nMax-Forwards: 70\r\nFrom: {to};tag=carrier1\r\nTo: {from}\r\nCall-ID: {cid}\r\nCSeq: 1 BYE\r\nContent-Length: 0\r\n\r\n",
        c = carrier.addr(),
        to = invite.header("To").unwrap(),
        from = invite.header("From").unwrap(),
        cid = invite.call_id().unwrap(),
    );
    carrier.sock.send_to(bye.as_bytes(), gw).await.unwrap();
    alice
        .event(Duration::from_secs(5), |v| {
            v["type"] == "participantsUpdated" && v["removed"][0]["phoneNumber"] == "+15550100"
        })
        .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(ports_in_use(&s), 0, "the RTP ports are freed");
    let r = alice.request("mute", json!({ "callId": call_id })).await;
    assert_eq!(r["ok"], true, "Alice is still in her call: {r}");
    s.running.shutdown().await;
}

/// A phone still ringing when the group call ends (its last member leaves) is cancelled.
#[tokio::test]
async fn a_phone_still_ringing_when_the_group_call_ends_is_cancelled() {
    let carrier = Carrier::new().await;
    let s = server(47700, vec![trunk("carrier", carrier.addr(), "+1")]).await;
    let mut alice = caller(&s).await;
    let call_id = join(&mut alice, "0f1e2d3c-4b5a-4978-8695-a4b3c2d1e0f9").await;
    let r = add_phone(&mut alice, &call_id, "+15550100").await;
    assert_eq!(r["ok"], true, "{r}");
    let (invite, gw) = carrier.request("INVITE").await;
    carrier.respond(gw, &invite, 180, "Ringing", "").await;
    let r = alice.request("hangUp", json!({ "callId": call_id })).await;
    assert_eq!(r["ok"], true, "{r}");
    let (cancel, _) = carrier.request("CANCEL").await;
    assert_eq!(cancel.call_id(), invite.call_id());
    carrier.respond(gw, &cancel, 200, "OK", "").await;
    carrier
        .respond(gw, &invite, 487, "Request Terminated", "")
        .await;
    carrier.request("ACK").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(ports_in_use(&s), 0, "the RTP port is freed");
    s.running.shutdown().await;
}

/// A re-INVITE from the carrier inside an outbound call (hold, then resume, as a PBX or a session-timer refresh
/// sends it) is answered 200 with our SDP for its offer: `sendonly` -> `recvonly`, `sendrecv` -> `sendrecv`, the `o=`
/// version raised each time; a retransmission gets the same 200; the call goes on.
#[tokio::test]
async fn a_re_invite_from_the_carrier_holds_and_resumes_an_outbound_call() {
    let carrier = Carrier::new().await;
    let media = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let s = server(47800, vec![trunk("carrier", carrier.addr(), "+1")]).await;
    let mut alice = caller(&s).await;
    let call_id = call(&mut alice, "+15550100").await;
    let (invite, gw) = carrier.request("INVITE").await;
    let port = media.local_addr().unwrap().port();
    let sdp = |dir: &str| {
        format!(
            "v=0\r\no=c 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio {port} RTP/AVP 8\r\na=rtpmap:8 PCMA/8000\r\na=ptime:20\r\na={dir}\r\n"
        )
    };
    carrier
        .respond(gw, &invite, 200, "OK", &sdp("sendrecv"))
        .await;
    carrier.request("ACK").await;
    alice
        .event(Duration::from_secs(5), state_event(&call_id, "Connected"))
        .await;
    let reinvite = |cseq: u32, dir: &str| {
        let body = sdp(dir);
        format!(
            "INVITE sip:switchboard@{gw} SIP/2.0\r\nVia: SIP/2.0/UDP {c};branch=z9hG4bKre{cseq}\r\nMax-Forwards: 70\r\nFrom: {to};tag=carrier1\r\nTo: {from}\r\nCall-ID: {cid}\r\nCSeq: {cseq} INVITE\r\nContact: <sip:carrier@{c}>\r\nContent-Type: application/sdp\r\nContent-Length: {len}\r\n\r\n{body}",
            c = carrier.addr(),
            to = invite.header("To").unwrap(),
            from = invite.header("From").unwrap(),
            cid = invite.call_id().unwrap(),
            len = body.len(),
        )
    };
    let mut versions = Vec::new();
    for (cseq, dir, want) in [(2, "sendonly", "a=recvonly"), (3, "sendrecv", "a=sendrecv")] {
        let req = reinvite(cseq, dir);
        carrier.sock.send_to(req.as_bytes(), gw).await.unwrap();
        let ok = carrier_response(&carrier, cseq).await;
        let body = String::from_utf8_lossy(&ok.body).to_string();
        assert!(body.contains(want), "{dir} is answered {want}: {body}");
        versions.push(
            body.lines()
                .find_map(|l| l.strip_prefix("o="))
                .and_then(|o| o.split(' ').nth(2))
                .unwrap_or_default()
                .to_string(),
        );
        if cseq == 2 {
            // A retransmitted re-INVITE gets the same 200.
            carrier.sock.send_to(req.as_bytes(), gw).await.unwrap();
            let again = carrier_response(&carrier, cseq).await;
            assert_eq!(again.body, ok.body);
        }
        let ack = format!(
            "ACK sip:switchboard@{gw} SIP/2.0\r\nVia: SIP/2.0/UDP {c};branch=z9hG4bKack{cseq}\r\nMax-Forwards: 70\r\nFrom: {to};tag=carrier1\r\nTo: {from}\r\nCall-ID: {cid}\r\nCSeq: {cseq} ACK\r\nContent-Length: 0\r\n\r\n",
            c = carrier.addr(),
            to = invite.header("To").unwrap(),
            from = ok.header("To").unwrap(),
            cid = invite.call_id().unwrap(),
        );
        carrier.sock.send_to(ack.as_bytes(), gw).await.unwrap();
    }
    assert_eq!(versions, ["2", "3"], "a new o= version per answer");
    let r = alice.request("mute", json!({ "callId": call_id })).await;
    assert_eq!(r["ok"], true, "the call goes on: {r}");
    s.running.shutdown().await;
}

/// The next response with this CSeq number at the carrier.
async fn carrier_response(carrier: &Carrier, cseq: u32) -> Message {
    let mut buf = vec![0u8; 65535];
    let end = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let (n, _) = tokio::time::timeout_at(end, carrier.sock.recv_from(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("no response to CSeq {cseq}"))
            .unwrap();
        let m = message::parse(&buf[..n]).expect("well-formed SIP");
        if m.method().is_none() && m.cseq().is_ok_and(|(n, _)| n == cseq) {
            return m;
        }
    }
}

/// A carrier on TCP: one accepted connection, messages framed by Content-Length.
struct TcpCarrier {
    stream: tokio::net::TcpStream,
    buf: Vec<u8>,
}

impl TcpCarrier {
    /// The next request with this method on the connection (other messages are skipped).
    async fn request(&mut self, method: &str) -> Message {
        use tokio::io::AsyncReadExt;
        let end = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            while self.buf.first().is_some_and(|b| *b == b'\r' || *b == b'\n') {
                self.buf.remove(0);
            }
            if let message::Framing::Complete(n) = message::frame(&self.buf) {
                let m = message::parse(&self.buf[..n]).expect("well-formed SIP");
                self.buf.drain(..n);
                if m.method() == Some(method) {
                    return m;
                }
                continue;
            }
            let mut chunk = [0u8; 4096];
            let n = tokio::time::timeout_at(end, self.stream.read(&mut chunk))
                .await
                .unwrap_or_else(|_| panic!("no {method} on the TCP connection"))
                .unwrap();
            assert!(n > 0, "the gateway closed the connection before {method}");
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    async fn respond(&mut self, req: &Message, code: u16, reason: &str, body: &str) {
        use tokio::io::AsyncWriteExt;
        let mut extra = vec![(
            "Contact",
            "<sip:carrier@127.0.0.1;transport=tcp>".to_string(),
        )];
        if !body.is_empty() {
            extra.push(("Content-Type", "application/sdp".to_string()));
        }
        let bytes =
            ReplyBase::of(req).response(code, reason, Some("carrier1"), &extra, body.as_bytes());
        self.stream.write_all(&bytes).await.unwrap();
    }
}

/// A TCP trunk (`transport = "tcp"`): the gateway connects, sends the INVITE with a TCP Via and `;transport=tcp`, and
/// keeps the dialog on that connection (the 2xx ACK, the BYE when the browser hangs up). A TCP trunk nobody listens
/// on counts as failed: the next matching trunk (UDP here) gets the call.
#[tokio::test]
async fn a_tcp_trunk_carries_the_whole_dialog_and_an_unreachable_one_fails_over() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let udp_carrier = Carrier::new().await;
    let mut tcp = trunk("tcp", listener.local_addr().unwrap(), "+1555");
    tcp.transport = TrunkTransport::Tcp;
    let mut dead = trunk("dead", closed, "+1666");
    dead.transport = TrunkTransport::Tcp;
    let backup = trunk("backup", udp_carrier.addr(), "+1");
    let s = server(47900, vec![tcp, dead, backup]).await;
    let mut alice = caller(&s).await;

    let call_id = call(&mut alice, "+15550100").await;
    let (stream, _) = tokio::time::timeout(Duration::from_secs(5), listener.accept())
        .await
        .expect("the gateway connects")
        .unwrap();
    let mut carrier = TcpCarrier {
        stream,
        buf: Vec::new(),
    };
    let invite = carrier.request("INVITE").await;
    assert!(
        invite
            .header("Via")
            .is_some_and(|v| v.starts_with("SIP/2.0/TCP ")),
        "{:?}",
        invite.header("Via")
    );
    assert!(
        matches!(&invite.start, StartLine::Request { uri, .. } if uri.ends_with(";transport=tcp")),
        "{:?}",
        invite.start
    );
    carrier.respond(&invite, 100, "Trying", "").await;
    let answer = "v=0\r\no=c 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 8\r\na=rtpmap:8 PCMA/8000\r\na=ptime:20\r\n";
    carrier.respond(&invite, 200, "OK", answer).await;
    carrier.request("ACK").await;
    alice
        .event(Duration::from_secs(5), state_event(&call_id, "Connected"))
        .await;
    let r = alice.request("hangUp", json!({ "callId": call_id })).await;
    assert_eq!(r["ok"], true, "{r}");
    let bye = carrier.request("BYE").await;
    assert_eq!(bye.call_id(), invite.call_id());
    carrier.respond(&bye, 200, "OK", "").await;

    // +1666... matches the dead TCP trunk first (longest prefix), then the UDP backup.
    let call_id = call(&mut alice, "+16660100").await;
    let (invite, gw) = udp_carrier.request("INVITE").await;
    assert!(
        invite
            .header("Via")
            .is_some_and(|v| v.starts_with("SIP/2.0/UDP "))
    );
    udp_carrier.respond(gw, &invite, 486, "Busy Here", "").await;
    udp_carrier.request("ACK").await;
    let ev = ended(&mut alice, &call_id).await;
    assert_eq!(ev["endReason"]["code"], 486, "{ev}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(ports_in_use(&s), 0, "the RTP ports are freed");
    s.running.shutdown().await;
}

/// Hostile or broken carrier traffic inside an outbound call: a 200 from another address (or another transaction)
/// does not answer the call; requests with tags of no dialog of ours get 481 and end nothing; an UPDATE offer gets
/// 488 and a 5 s Session-Expires 422; a 200 without usable SDP is ACKed, ended with BYE and fails the call with 488.
#[tokio::test]
async fn forged_responses_foreign_tags_and_unusable_answers_do_not_take_over_an_outbound_call() {
    let carrier = Carrier::new().await;
    let forger = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let s = server(48000, vec![trunk("carrier", carrier.addr(), "+1")]).await;
    let mut alice = caller(&s).await;
    let call_id = call(&mut alice, "+15550100").await;
    let (invite, gw) = carrier.request("INVITE").await;
    carrier.respond(gw, &invite, 180, "Ringing", "").await;
    let answer = "v=0\r\no=c 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 8\r\na=rtpmap:8 PCMA/8000\r\n";
    // The INVITE's own 200, but sent from another socket: dropped.
    let forged = ReplyBase::of(&invite).response(
        200,
        "OK",
        Some("evil"),
        &[
            ("Contact", "<sip:evil@127.0.0.1:9>".to_string()),
            ("Content-Type", "application/sdp".to_string()),
        ],
        answer.as_bytes(),
    );
    forger.send_to(&forged, gw).await.unwrap();
    // From the carrier's address but for another branch: dropped too.
    let other_branch =
        String::from_utf8(forged.clone())
            .unwrap()
            .replacen(";branch=", ";branch=z9hG4bKother", 1);
    carrier
        .sock
        .send_to(other_branch.as_bytes(), gw)
        .await
        .unwrap();
    let connected = tokio::time::timeout(
        Duration::from_millis(800),
        alice.event(Duration::from_secs(1), state_event(&call_id, "Connected")),
    )
    .await;
    assert!(connected.is_err(), "a forged 200 connected the call");

    // The real 200 without any SDP (and no early media): no usable audio.
    carrier.respond(gw, &invite, 200, "OK", "").await;
    carrier.request("ACK").await;
    let (bye, _) = carrier.request("BYE").await;
    assert_eq!(bye.call_id(), invite.call_id());
    let ev = ended(&mut alice, &call_id).await;
    assert_eq!(ev["endReason"]["code"], 488, "{ev}");

    // A second call that connects: foreign tags get 481, an UPDATE offer 488, a short Session-Expires 422.
    let call_id = call(&mut alice, "+15550100").await;
    let (invite, gw) = carrier.request("INVITE").await;
    carrier.respond(gw, &invite, 200, "OK", answer).await;
    carrier.request("ACK").await;
    alice
        .event(Duration::from_secs(5), state_event(&call_id, "Connected"))
        .await;
    let request = |method: &str, cseq: u32, from_tag: &str, extra: &str, body: &str| {
        format!(
            "{method} sip:switchboard@{gw} SIP/2.0\r\nVia: SIP/2.0/UDP {c};branch=z9hG4bK{method}{cseq}\r\nMax-Forwards: 70\r\nFrom: {to};tag={from_tag}\r\nTo: {from}\r\nCall-ID: {cid}\r\nCSeq: {cseq} {method}\r\n{extra}Content-Length: {len}\r\n\r\n{body}",
            c = carrier.addr(),
            to = invite.header("To").unwrap(),
            from = invite.header("From").unwrap(),
            cid = invite.call_id().unwrap(),
            len = body.len(),
        )
    };
    for (req, cseq, want) in [
        (request("BYE", 5, "stranger", "", ""), 5, 481),
        (
            request(
                "UPDATE",
                6,
                "carrier1",
                "Content-Type: application/sdp\r\n",
                answer,
            ),
            6,
            488,
        ),
        (
            request("UPDATE", 7, "carrier1", "Session-Expires: 5\r\n", ""),
            7,
            422,
        ),
        (
            request(
                "UPDATE",
                8,
                "carrier1",
                "Session-Expires: 1800;refresher=uas\r\n",
                "",
            ),
            8,
            200,
        ),
    ] {
        carrier.sock.send_to(req.as_bytes(), gw).await.unwrap();
        let r = carrier_response(&carrier, cseq).await;
        assert_eq!(code_of(&r), want, "{req}");
        if want == 200 {
            assert_eq!(r.header("Session-Expires"), Some("1800;refresher=uas"));
        }
    }
    let r = alice.request("mute", json!({ "callId": call_id })).await;
    assert_eq!(r["ok"], true, "the call goes on: {r}");
    s.running.shutdown().await;
}

fn code_of(m: &Message) -> u16 {
    match m.start {
        StartLine::Response { code, .. } => code,
        _ => 0,
    }
}

/// At most 8 phone numbers are dialled into one group call at once: the 9th `addParticipant` is refused.
#[tokio::test]
async fn add_participant_is_capped_per_call() {
    let carrier = Carrier::new().await;
    let s = server(48100, vec![trunk("carrier", carrier.addr(), "+1")]).await;
    let mut alice = caller(&s).await;
    let call_id = join(&mut alice, "3e9a7c1d-5b2f-4d8e-a6c4-1f0e9d8c7b6a").await;
    for n in 0..8 {
        let r = add_phone(&mut alice, &call_id, &format!("+1555020{n:04}")).await;
        assert_eq!(r["ok"], true, "{r}");
    }
    let r = add_phone(&mut alice, &call_id, "+15550299999").await;
    assert_eq!(r["ok"], false, "{r}");
    assert_eq!(r["error"]["code"], "TooManyCalls", "{r}");
    s.running.shutdown().await;
}
