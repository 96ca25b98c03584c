//! Session timers (RFC 4028) on inbound dialogs, over real UDP sockets against the echo line: 422 below Min-SE, the
//! 2xx's Session-Expires/Require, refreshes by UPDATE answered, BYE when the caller stops refreshing, and our own
//! refreshes (UPDATE when the caller allows it, else a re-INVITE whose 2xx we ACK) when the caller does not support
//! the extension. The intervals are RFC 4028's smallest (90 s), so the expiry and refresh tests take 45-60 s each;
//! they run in parallel.

mod common;
mod sip_support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use sip_support::{ECHO, Uac, code, sip_addrs, sip_server, udp_until};
use switchboard::proto::sip::message::Message;

/// A caller on 127.0.0.1 dialling the echo line ([`Uac`]), with the dialog steps these tests need.
struct Caller {
    uac: Uac,
}

impl Caller {
    async fn new(gw: SocketAddr) -> Caller {
        Caller {
            uac: Uac::new("127.0.0.1:0", gw).await,
        }
    }

    /// A request to the echo line; an SDP `body` gets its Content-Type.
    fn request(&self, method: &str, cseq: u32, extra: &str, body: &str) -> Vec<u8> {
        let ct = if body.is_empty() {
            ""
        } else {
            "Content-Type: application/sdp\r\n"
        };
        let extra = format!("{extra}{ct}");
        self.uac.request(method, ECHO, cseq, method, &extra, body)
    }

    async fn send(&self, bytes: &[u8]) {
        self.uac.send(bytes).await;
    }

    /// INVITE with `extra` headers, the final response (its To tag kept), and the ACK of a 2xx.
    async fn invite(&mut self, cseq: u32, extra: &str) -> Message {
        let sdp = "v=0\r\no=c 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=ptime:20\r\n";
        self.send(&self.request("INVITE", cseq, extra, sdp)).await;
        let got = udp_until(&self.uac.sock, Duration::from_secs(5), |m| code(m) >= 200).await;
        let last = got.last().expect("a final response").clone();
        if let Some(t) = last.to_tag() {
            self.uac.to_tag = Some(t);
        }
        self.send(&self.request("ACK", cseq, "", "")).await;
        last
    }

    /// BYE with CSeq `cseq`, and its 200.
    async fn hang_up(&self, cseq: u32) {
        self.send(&self.request("BYE", cseq, "", "")).await;
        let got = udp_until(&self.uac.sock, Duration::from_secs(5), |m| code(m) >= 200).await;
        assert_eq!(got.last().map(code), Some(200), "BYE answered");
    }

    /// Waits up to `within` for a request from the gateway.
    async fn next_request(&self, within: Duration) -> Option<Message> {
        let got = udp_until(&self.uac.sock, within, |m| m.method().is_some()).await;
        got.into_iter().find(|m| m.method().is_some())
    }

    /// Answers a request of the gateway with `code` (its Via, From, To, Call-ID and CSeq echoed).
    async fn answer(&self, req: &Message, code: u16, extra: &str, body: &str) {
        let mut head = format!("SIP/2.0 {code} OK\r\n");
        for name in ["Via", "From", "To", "Call-ID", "CSeq"] {
            for v in req.headers_named(name) {
                head.push_str(&format!("{name}: {v}\r\n"));
            }
        }
        let ct = if body.is_empty() {
            ""
        } else {
            "Content-Type: application/sdp\r\n"
        };
        head.push_str(&format!(
            "Contact: <sip:caller@{}>\r\n{extra}{ct}Content-Length: {}\r\n\r\n{body}",
            self.uac.sock.local_addr().unwrap(),
            body.len()
        ));
        self.send(head.as_bytes()).await;
    }
}

#[tokio::test]
async fn a_short_interval_gets_422_and_a_refreshing_caller_keeps_the_call_until_it_stops() {
    let s = sip_server(47000).await;
    let (udp, _) = sip_addrs(&s);

    let mut short = Caller::new(udp).await;
    let r = short
        .invite(1, "Supported: timer\r\nSession-Expires: 60\r\n")
        .await;
    assert_eq!(code(&r), 422, "below RFC 4028's 90 s");
    assert_eq!(r.header("Min-SE"), Some("90"));

    let mut c = Caller::new(udp).await;
    let ok = c
        .invite(
            1,
            "Supported: timer\r\nSession-Expires: 90;refresher=uac\r\nMin-SE: 90\r\n",
        )
        .await;
    assert_eq!(code(&ok), 200);
    assert_eq!(ok.header("Session-Expires"), Some("90;refresher=uac"));
    assert_eq!(ok.header("Require"), Some("timer"));
    assert!(
        ok.header("Allow").is_some_and(|a| a.contains("UPDATE")),
        "{:?}",
        ok.header("Allow")
    );

    // An offer in UPDATE is refused; a refresh UPDATE is answered with the timer.
    c.send(&c.request("UPDATE", 2, "", "v=0\r\n")).await;
    let got = udp_until(&c.uac.sock, Duration::from_secs(3), |m| code(m) >= 200).await;
    assert_eq!(got.last().map(code), Some(488));
    let refreshed = Instant::now();
    c.send(&c.request(
        "UPDATE",
        3,
        "Supported: timer\r\nSession-Expires: 90;refresher=uac\r\n",
        "",
    ))
    .await;
    let got = udp_until(&c.uac.sock, Duration::from_secs(3), |m| code(m) >= 200).await;
    let upd = got.last().expect("a response to UPDATE");
    assert_eq!(code(upd), 200);
    assert_eq!(upd.header("Session-Expires"), Some("90;refresher=uac"));
    assert_eq!(upd.header("Require"), Some("timer"));
    // An UPDATE out of order (CSeq below the last one) is refused and refreshes nothing.
    c.send(&c.request("UPDATE", 1, "Session-Expires: 90;refresher=uac\r\n", ""))
        .await;
    let got = udp_until(&c.uac.sock, Duration::from_secs(3), |m| code(m) >= 200).await;
    assert_eq!(got.last().map(code), Some(500));

    // We stop refreshing: the gateway ends the session min(32, 90/3) = 30 s before the interval would (60 s).
    let bye = c
        .next_request(Duration::from_secs(75))
        .await
        .expect("BYE once the session expired");
    let after = refreshed.elapsed();
    assert_eq!(bye.method(), Some("BYE"));
    assert!(
        after >= Duration::from_secs(55) && after <= Duration::from_secs(70),
        "BYE {after:?} after the last refresh (expected about 60 s)"
    );
    c.answer(&bye, 200, "", "").await;
    assert_eq!(
        sip_support::counter(&s, "switchboard_sip_session_expired_total", &[]).await,
        1.0
    );
    s.running.shutdown().await;
}

/// A caller without the extension is refreshed by us at half the interval: by UPDATE when it allows UPDATE, else by
/// a re-INVITE whose 2xx we ACK (both callers at once on one server: each waits 45 s).
#[tokio::test]
async fn without_the_extension_the_gateway_refreshes_by_update_or_re_invite_at_half_the_interval() {
    let s = sip_server(47200).await;
    let (udp, _) = sip_addrs(&s);
    tokio::join!(refreshed_by_update(udp), refreshed_by_re_invite(udp));
    s.running.shutdown().await;
}

async fn refreshed_by_update(udp: SocketAddr) {
    let mut c = Caller::new(udp).await;
    // A proxy inserted Session-Expires; the caller itself does not support timers but allows UPDATE.
    let ok = c
        .invite(
            1,
            "Allow: INVITE, ACK, BYE, CANCEL, UPDATE\r\nSession-Expires: 90\r\n",
        )
        .await;
    let answered = Instant::now();
    assert_eq!(code(&ok), 200);
    assert_eq!(ok.header("Session-Expires"), Some("90;refresher=uas"));
    assert_eq!(ok.header("Require"), None, "the caller does not support it");
    let upd = c
        .next_request(Duration::from_secs(60))
        .await
        .expect("our refresh");
    assert_eq!(upd.method(), Some("UPDATE"));
    let at = answered.elapsed();
    assert!(
        at >= Duration::from_secs(40) && at <= Duration::from_secs(50),
        "refresh {at:?} after the 200 (expected 45 s)"
    );
    assert_eq!(upd.header("Session-Expires"), Some("90;refresher=uas"));
    assert!(upd.body.is_empty());
    assert_eq!(upd.to_tag().as_deref(), Some("uac1"), "To is the caller");
    c.answer(&upd, 200, "Session-Expires: 90;refresher=uas\r\n", "")
        .await;
    // Answered: no BYE follows (the next refresh is 45 s later).
    let next = c.next_request(Duration::from_secs(5)).await;
    assert!(next.is_none(), "nothing after the refresh: {next:?}");
    c.hang_up(2).await;
}

async fn refreshed_by_re_invite(udp: SocketAddr) {
    let mut c = Caller::new(udp).await;
    let ok = c
        .invite(
            1,
            "Allow: INVITE, ACK, BYE, CANCEL\r\nSession-Expires: 90\r\n",
        )
        .await;
    assert_eq!(code(&ok), 200);
    let sdp = String::from_utf8_lossy(&ok.body).to_string();
    let inv = c
        .next_request(Duration::from_secs(60))
        .await
        .expect("our refresh");
    assert_eq!(inv.method(), Some("INVITE"));
    let offer = String::from_utf8_lossy(&inv.body).to_string();
    let origin = |s: &str| s.lines().find(|l| l.starts_with("o=")).map(str::to_string);
    assert_eq!(
        origin(&offer),
        origin(&sdp),
        "the unchanged session: same o= line and version"
    );
    let answer = "v=0\r\no=c 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n";
    c.answer(&inv, 200, "", answer).await;
    let ack = c
        .next_request(Duration::from_secs(3))
        .await
        .expect("the ACK of our re-INVITE's 2xx");
    assert_eq!(ack.method(), Some("ACK"));
    assert_eq!(ack.cseq().unwrap().0, inv.cseq().unwrap().0);
    // A retransmitted 2xx gets the ACK again.
    c.answer(&inv, 200, "", answer).await;
    let again = c
        .next_request(Duration::from_secs(3))
        .await
        .expect("ACK again");
    assert_eq!(again.method(), Some("ACK"));
    c.hang_up(2).await;
}
