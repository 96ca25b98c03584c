//! Test support for the SIP gateway: a server with a trunk for 127.0.0.1 and a few numbers, raw SIP over UDP and
//! TCP, and reading counters from `/metrics`.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use switchboard::config::Config;
use switchboard::proto::sip::message::{self, Message, StartLine};
use switchboard::proto::sip::route::{NumberConfig, TrunkConfig, TrunkTransport};
use switchboard::proto::sip::sdp::G711;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

use crate::common::{TestServer, server_with};

/// The echo line (answers at once).
pub const ECHO: &str = "+15550100";
/// The echo line that rings 2 s before answering (CANCEL tests).
pub const ECHO_SLOW: &str = "+15550101";
/// A number routed to a user that never connects (answered 480: callee offline).
pub const USER: &str = "+15550102";

/// A server whose SIP gateway trusts 127.0.0.1 only, RTP from `rtp_min` (100 pairs).
pub async fn sip_server(rtp_min: u16) -> TestServer {
    sip_server_with(rtp_min, |_| {}).await
}

/// [`sip_server`] with a last change to the configuration.
pub async fn sip_server_with(rtp_min: u16, tweak: impl FnOnce(&mut Config)) -> TestServer {
    server_with(|c: &mut Config| {
        c.sip.port = 0;
        c.sip.bind = "127.0.0.1".parse().unwrap();
        c.sip.rtp_port_min = rtp_min;
        c.sip.rtp_port_max = rtp_min + 199;
        c.sip.trunks = vec![TrunkConfig {
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
        let num = |n: &str, echo: bool, after: u64, user: Option<&str>| NumberConfig {
            number: n.into(),
            user: user.map(String::from),
            group: None,
            echo,
            answer_after_ms: after,
        };
        c.sip.numbers = vec![
            num(ECHO, true, 0, None),
            num(ECHO_SLOW, true, 2000, None),
            num(
                USER,
                false,
                0,
                Some("8:acs:00000000-0000-0000-0000-000000000000_00000000-0000-0000-0000-000000000001"),
            ),
        ];
        tweak(c);
    })
    .await
}

/// The gateway's UDP and TCP addresses.
pub fn sip_addrs(s: &TestServer) -> (SocketAddr, SocketAddr) {
    let sip = s.running.sip.as_ref().expect("SIP gateway runs");
    (sip.udp, sip.tcp)
}

/// Sum of a counter's samples in `/metrics` whose line contains every one of `labels`.
pub async fn counter(s: &TestServer, name: &str, labels: &[&str]) -> f64 {
    let text = s
        .http
        .get(format!("{}/metrics", s.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|l| {
            l.starts_with(name)
                && (l.as_bytes().get(name.len()) == Some(&b'{')
                    || l.as_bytes().get(name.len()) == Some(&b' '))
        })
        .filter(|l| labels.iter().all(|x| l.contains(x)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Status code of a response.
pub fn code(m: &Message) -> u16 {
    match m.start {
        StartLine::Response { code, .. } => code,
        StartLine::Request { .. } => 0,
    }
}

/// Receives SIP messages on a UDP socket for `wait`.
pub async fn udp_collect(sock: &UdpSocket, wait: Duration) -> Vec<Message> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 65535];
    let end = tokio::time::Instant::now() + wait;
    while let Ok(Ok((n, _))) = tokio::time::timeout_at(end, sock.recv_from(&mut buf)).await {
        out.push(message::parse(&buf[..n]).expect("the gateway sends well-formed SIP"));
    }
    out
}

/// Receives until a message satisfying `done` arrives (or `wait` passes).
pub async fn udp_until(
    sock: &UdpSocket,
    wait: Duration,
    done: impl Fn(&Message) -> bool,
) -> Vec<Message> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 65535];
    let end = tokio::time::Instant::now() + wait;
    while let Ok(Ok((n, _))) = tokio::time::timeout_at(end, sock.recv_from(&mut buf)).await {
        let m = message::parse(&buf[..n]).expect("the gateway sends well-formed SIP");
        let stop = done(&m);
        out.push(m);
        if stop {
            break;
        }
    }
    out
}

/// Reads framed SIP messages from a TCP stream for `wait` (or until it closes).
pub async fn tcp_collect(stream: &mut TcpStream, wait: Duration) -> (Vec<Message>, bool) {
    let mut buf = Vec::new();
    let mut out = Vec::new();
    let mut chunk = vec![0u8; 65535];
    let end = tokio::time::Instant::now() + wait;
    let mut closed = false;
    loop {
        while let message::Framing::Complete(n) = message::frame(&buf) {
            let m: Vec<u8> = buf.drain(..n).collect();
            out.push(message::parse(&m).expect("well-formed SIP over TCP"));
        }
        match tokio::time::timeout_at(end, stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                closed = true;
                break;
            }
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            Err(_) => break,
        }
    }
    (out, closed)
}

/// An OPTIONS request from `local` (UDP) or over TCP.
pub fn options(local: SocketAddr, transport: &str, n: u32) -> Vec<u8> {
    format!(
        "OPTIONS sip:gateway@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/{transport} {local};branch=z9hG4bKopt{n}\r\nMax-Forwards: 70\r\nFrom: <sip:probe@127.0.0.1>;tag=p{n}\r\nTo: <sip:gateway@127.0.0.1>\r\nCall-ID: options-{n}-{local}\r\nCSeq: {n} OPTIONS\r\nContent-Length: 0\r\n\r\n"
    )
    .into_bytes()
}

/// Asserts the gateway still answers OPTIONS over UDP and TCP.
pub async fn assert_serving(udp: SocketAddr, tcp: SocketAddr, n: u32) {
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    sock.send_to(&options(sock.local_addr().unwrap(), "UDP", n), udp)
        .await
        .unwrap();
    let got = udp_until(&sock, Duration::from_secs(3), |_| true).await;
    assert_eq!(
        got.iter().map(code).collect::<Vec<_>>(),
        [200],
        "OPTIONS over UDP answered"
    );
    let mut s = TcpStream::connect(tcp).await.unwrap();
    s.write_all(&options(s.local_addr().unwrap(), "TCP", n))
        .await
        .unwrap();
    let (got, _) = tcp_collect(&mut s, Duration::from_millis(1500)).await;
    assert_eq!(
        got.iter().map(code).collect::<Vec<_>>(),
        [200],
        "OPTIONS over TCP answered"
    );
}

/// A SIP caller (UAC) over raw UDP with its own socket and Call-ID, dialling numbers at `gw`.
pub struct Uac {
    pub sock: UdpSocket,
    /// The gateway's SIP address.
    pub gw: SocketAddr,
    pub call_id: String,
    /// The dialog's remote tag, once a response carried one: put in To of later requests.
    pub to_tag: Option<String>,
}

impl Uac {
    pub async fn new(bind: &str, gw: SocketAddr) -> Uac {
        let sock = UdpSocket::bind(bind).await.unwrap();
        let call_id = format!("uac-{}-{}", sock.local_addr().unwrap().port(), rand_u32());
        Uac {
            sock,
            gw,
            call_id,
            to_tag: None,
        }
    }

    pub fn local(&self) -> SocketAddr {
        self.sock.local_addr().unwrap()
    }

    /// A request `method` to `number` with CSeq `cseq cseq_method`, `extra` header lines (each ending in CRLF) and
    /// `body`; the To tag once known. CANCEL shares the INVITE's branch (RFC 3261 §9.1).
    pub fn request(
        &self,
        method: &str,
        number: &str,
        cseq: u32,
        cseq_method: &str,
        extra: &str,
        body: &str,
    ) -> Vec<u8> {
        let to_tag = self
            .to_tag
            .as_ref()
            .map(|t| format!(";tag={t}"))
            .unwrap_or_default();
        let local = self.local();
        let branch = if method == "CANCEL" {
            format!("z9hG4bK{}{cseq}", self.call_id)
        } else {
            format!("z9hG4bK{}{cseq}{method}", self.call_id)
        };
        format!(
            "{method} sip:{number}@{gw} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch={branch}\r\nMax-Forwards: 70\r\nFrom: <sip:+15550999@{local}>;tag=uac1\r\nTo: <sip:{number}@{gw}>{to_tag}\r\nCall-ID: {cid}\r\nCSeq: {cseq} {cseq_method}\r\nContact: <sip:uac@{local}>\r\n{extra}Content-Length: {len}\r\n\r\n{body}",
            gw = self.gw,
            cid = self.call_id,
            len = body.len()
        )
        .into_bytes()
    }

    pub async fn send(&self, bytes: &[u8]) {
        self.sock.send_to(bytes, self.gw).await.unwrap();
    }

    /// Sends an INVITE with SDP `sdp` (CSeq 2 once a dialog exists, as a re-INVITE).
    pub async fn invite(&self, number: &str, sdp: &str) {
        let extra = "Content-Type: application/sdp\r\n";
        let mut r = self.request("INVITE", number, 1, "INVITE", extra, sdp);
        if self.to_tag.is_some() {
            r = self.request("INVITE", number, 2, "INVITE", extra, sdp);
        }
        self.send(&r).await;
    }
}

fn rand_u32() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos()
}
