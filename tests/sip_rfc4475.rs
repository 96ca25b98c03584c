//! RFC 4475 torture messages (cases C001, C003–C005, C007–C010, C012, C014), parsed in-process (the fields each
//! case names) and sent to a running gateway over real UDP and TCP: valid requests are processed (never 400),
//! invalid ones answered 400 where a response is possible, responses dropped, and the gateway keeps serving.

mod common;
mod sip_support;

use std::time::Duration;

use sip_support::*;
use switchboard::proto::sip::message::{self, MessageError, StartLine, Via, uri_user};
use switchboard::proto::sip::sdp;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpStream, UdpSocket};

fn case(name: &str) -> Vec<u8> {
    let path = format!(
        "{}/tests/data/sip/msg/{name}.sip",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn rsip_user(data: &[u8]) -> Option<String> {
    match rsipstack::sip::SipMessage::try_from(data).ok()? {
        rsipstack::sip::SipMessage::Request(r) => r.uri.user().map(String::from),
        rsipstack::sip::SipMessage::Response(_) => None,
    }
}

#[test]
fn c001_wsinv_parsed() {
    let data = case("valid-wsinv");
    let m = message::parse(&data).unwrap();
    m.validate_request().unwrap();
    assert_eq!(m.method(), Some("INVITE"));
    assert_eq!(m.max_forwards(), Some(68));
    assert_eq!(m.cseq().unwrap(), (9, "INVITE".into()));
    let vias = m.via_values();
    assert_eq!(vias.len(), 3, "{vias:?}");
    let first = Via::parse(&vias[0]).unwrap();
    assert_eq!(
        (first.sent_by.as_str(), first.branch()),
        ("192.0.2.2", Some("390skdjuw"))
    );
    assert_eq!(Via::parse(&vias[1]).unwrap().sent_by, "spindle.example.com");
    assert_eq!(Via::parse(&vias[1]).unwrap().transport, "TCP");
    assert_eq!(Via::parse(&vias[2]).unwrap().branch(), Some("z9hG4bK30239"));
    assert!(
        m.header("From")
            .unwrap()
            .starts_with(r#""J Rosenberg \\\"""#),
        "{:?}",
        m.header("From")
    );
    assert_eq!(m.from_tag().as_deref(), Some("98asjd8"));
    assert_eq!(m.to_tag().as_deref(), Some("1918181833n"));
    assert_eq!(m.header("Subject"), Some(""));
    assert_eq!(
        m.header("NewFangledHeader"),
        Some("newfangled value continued newfangled value")
    );
    assert_eq!(m.header("UnknownHeaderWithUnusualValue"), Some(";;,,;;,;"));
    assert!(
        m.header("Contact")
            .unwrap()
            .contains("<sip:jdrosen@example.com>")
    );
    assert_eq!(m.body.len(), 150);
    let sd = sdp::parse(&String::from_utf8_lossy(&m.body)).unwrap();
    assert_eq!(sd.media.len(), 2);
    assert_eq!(
        rsip_user(&data).as_deref(),
        Some("vivekg"),
        "rsipstack reads the Request-URI"
    );
}

#[test]
fn c003_esc01_uri_unescaped() {
    let data = case("valid-esc01");
    let m = message::parse(&data).unwrap();
    m.validate_request().unwrap();
    let StartLine::Request { uri, .. } = &m.start else {
        panic!()
    };
    assert_eq!(uri_user(uri).as_deref(), Some("sips:user@example.com"));
    assert!(
        uri.ends_with("@example.net"),
        "Request-URI host is example.net"
    );
    // rsipstack keeps the escapes in the user part; the gateway unescapes before comparing.
    let raw = rsip_user(&data).unwrap();
    assert_eq!(raw, "sips%3Auser%40example.com");
    assert_eq!(message::unescape(&raw), "sips:user@example.com");
    // To `sip:%75se%72@example.com` compares equal to sip:user@example.com after unescaping.
    assert_eq!(uri_user(m.header("To").unwrap()).as_deref(), Some("user"));
    assert_eq!(m.body.len(), 150);
}

#[test]
fn c004_lwsdisp_display_name_without_space() {
    let m = message::parse(&case("valid-lwsdisp")).unwrap();
    m.validate_request().unwrap();
    let from = m.header("From").unwrap();
    assert!(from.starts_with("caller<sip:caller@example.com>"), "{from}");
    assert_eq!(m.from_tag().as_deref(), Some("323"));
}

#[test]
fn c005_longreq_intact() {
    let data = case("valid-longreq");
    let m = message::parse(&data).unwrap();
    m.validate_request().unwrap();
    let vias = m.via_values();
    assert_eq!(vias.len(), 34);
    assert!(vias[0].contains("sip33.example.com") && vias[32].contains("sip1.example.com"));
    assert!(vias[33].contains("host.example.com"));
    assert!(m.header("To").unwrap().contains("extremeextreme"));
    assert!(m.call_id().unwrap().len() > 100);
    let unknown = m
        .headers
        .iter()
        .find(|h| h.name.starts_with("Unknown-LongLong"))
        .unwrap();
    assert!(unknown.value.len() > 100);
    assert_eq!(
        m.body.len(),
        usize::from(m.header("Content-Length").unwrap().parse::<u16>().unwrap())
    );
}

#[test]
fn c007_unreason_response_accepted() {
    let m = message::parse(&case("valid-unreason")).unwrap();
    let StartLine::Response { code, reason } = &m.start else {
        panic!()
    };
    assert_eq!(*code, 200);
    assert!(reason.starts_with("= 2**3 * 5**2"));
    assert_eq!(m.body.len(), 154);
}

#[test]
fn c008_noreason_empty_phrase() {
    let m = message::parse(&case("valid-noreason")).unwrap();
    assert_eq!(
        m.start,
        StartLine::Response {
            code: 100,
            reason: String::new()
        }
    );
}

#[test]
fn c009_badinv01_refused() {
    let m = message::parse(&case("invalid-badinv01")).unwrap();
    assert!(
        matches!(m.validate_request(), Err(MessageError::Via(_))),
        "{:?}",
        m.validate_request()
    );
}

#[test]
fn c010_clerr_refused_on_datagram() {
    assert!(matches!(
        message::parse(&case("invalid-clerr")),
        Err(MessageError::Truncated { declared: 9999, .. })
    ));
    assert_eq!(
        message::frame(&case("invalid-clerr")),
        message::Framing::Incomplete,
        "a stream waits for more"
    );
}

#[test]
fn c012_lwsstart_refused() {
    assert!(matches!(
        message::parse(&case("invalid-lwsstart")),
        Err(MessageError::StartLine(_))
    ));
}

#[test]
fn c014_mismatch01_refused() {
    let m = message::parse(&case("invalid-mismatch01")).unwrap();
    assert!(matches!(
        m.validate_request(),
        Err(MessageError::CSeqMethod { .. })
    ));
}

/// (file, expected final status over the network: None = no response, as for responses). wsinv carries a To tag,
/// so it is a re-INVITE of a dialog the gateway does not know: 481 (RFC 3261 §12.2.2); the others reach routing
/// and dial numbers the gateway does not own: 404.
const CASES: [(&str, Option<u16>); 10] = [
    ("valid-wsinv", Some(481)),
    ("valid-esc01", Some(404)),
    ("valid-lwsdisp", Some(200)),
    ("valid-longreq", Some(404)),
    ("valid-unreason", None),
    ("valid-noreason", None),
    ("invalid-badinv01", Some(400)),
    ("invalid-clerr", Some(400)),
    ("invalid-lwsstart", Some(400)),
    ("invalid-mismatch01", Some(400)),
];

#[tokio::test]
async fn rfc4475_over_udp_answered_and_server_keeps_serving() {
    let s = sip_server(41000).await;
    let (udp, tcp) = sip_addrs(&s);
    for (i, (name, want)) in CASES.iter().enumerate() {
        let data = case(name);
        let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        sock.send_to(&data, udp).await.unwrap();
        let got = udp_collect(&sock, Duration::from_millis(700)).await;
        let finals: Vec<u16> = got.iter().map(code).filter(|c| *c >= 200).collect();
        match want {
            Some(w) => assert_eq!(
                finals,
                [*w],
                "{name}: {:?}",
                got.iter().map(code).collect::<Vec<_>>()
            ),
            None => assert!(got.is_empty(), "{name}: a response gets no response"),
        }
        if let Some(r) = got.last() {
            // Responses copy every Via (C005: all 34), Call-ID and CSeq of the request.
            let req_vias = message::parse(&data).map(|m| m.via_values().len()).ok();
            if let Some(n) = req_vias {
                assert_eq!(r.via_values().len(), n, "{name}: every Via copied");
            }
            if *want == Some(400) {
                assert!(r.header("Warning").is_some(), "{name}: 400 says why");
            }
        }
        assert_serving(udp, tcp, i as u32 + 1).await;
    }
    assert_eq!(
        s.running.sip.as_ref().unwrap().ports.in_use(),
        0,
        "no call, no RTP port"
    );
    s.running.shutdown().await;
}

#[tokio::test]
async fn rfc4475_over_tcp_answered_and_server_keeps_serving() {
    let s = sip_server(41200).await;
    let (udp, tcp) = sip_addrs(&s);
    for (i, (name, want)) in CASES.iter().enumerate() {
        let data = case(name);
        let mut stream = TcpStream::connect(tcp).await.unwrap();
        stream.write_all(&data).await.unwrap();
        let (got, closed) = tcp_collect(&mut stream, Duration::from_millis(800)).await;
        let finals: Vec<u16> = got.iter().map(code).filter(|c| *c >= 200).collect();
        if *name == "invalid-clerr" {
            // C010 on a stream: Content-Length 9999 means "more is coming"; nothing is processed, no response,
            // the connection stays open (bounded by the idle timeout and the size limit).
            assert!(
                got.is_empty() && !closed,
                "{name}: {finals:?} closed={closed}"
            );
        } else {
            match want {
                Some(w) => assert_eq!(finals, [*w], "{name}"),
                None => assert!(got.is_empty(), "{name}"),
            }
        }
        assert_serving(udp, tcp, 100 + i as u32).await;
    }
    // A stream that promises more than the size limit is closed at once.
    let mut stream = TcpStream::connect(tcp).await.unwrap();
    let huge = String::from_utf8_lossy(&case("invalid-clerr"))
        .replace("Content-Length: 9999", "Content-Length: 999999999");
    stream.write_all(huge.as_bytes()).await.unwrap();
    let (got, closed) = tcp_collect(&mut stream, Duration::from_secs(3)).await;
    assert!(closed, "oversized message closes the connection");
    assert_eq!(got.iter().map(code).collect::<Vec<_>>(), [400]);
    assert_serving(udp, tcp, 200).await;
    s.running.shutdown().await;
}
