//! The SIP gateway over real sockets with a small UAC written here: trunk ACL (403 and nothing else), 404, 480,
//! OPTIONS, 501, 481, the echo line with in-band DTMF (Goertzel) and RTCP, 2xx retransmission until ACK, CANCEL
//! before answer (487) and the CANCEL/200 race.

mod common;
mod sip_support;

use std::net::SocketAddr;
use std::time::Duration;

use sip_support::*;
use switchboard::proto::sip::message::{Message, uri_user};
use switchboard::proto::sip::{g711, rtcp, rtp, sdp};
use tokio::net::UdpSocket;

fn offer(rtp_port: u16, te: bool) -> String {
    let (fmts, te_lines) = if te {
        (
            "0 101",
            "a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-15\r\n",
        )
    } else {
        ("0", "")
    };
    format!(
        "v=0\r\no=uac 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio {rtp_port} RTP/AVP {fmts}\r\na=rtpmap:0 PCMU/8000\r\n{te_lines}a=ptime:20\r\na=sendrecv\r\n"
    )
}

fn codes(ms: &[Message]) -> Vec<u16> {
    ms.iter().map(code).collect()
}

#[tokio::test]
async fn untrusted_source_gets_403_and_nothing_else() {
    let s = sip_server(42000).await;
    let (udp, _) = sip_addrs(&s);
    let calls_before = counter(&s, "switchboard_sip_calls_total", &[]).await;
    let uac = Uac::new("127.0.0.2:0", udp).await;
    let media = UdpSocket::bind("127.0.0.2:0").await.unwrap();
    uac.invite(ECHO, &offer(media.local_addr().unwrap().port(), true))
        .await;
    let got = udp_collect(&uac.sock, Duration::from_millis(1500)).await;
    assert_eq!(codes(&got), [403], "403 and nothing else (no 100 Trying)");
    let ports = &s.running.sip.as_ref().unwrap().ports;
    assert_eq!(ports.in_use(), 0, "no RTP port allocated");
    assert_eq!(
        counter(&s, "switchboard_sip_calls_total", &[]).await,
        calls_before,
        "no call"
    );
    let mut buf = [0u8; 2048];
    assert!(
        tokio::time::timeout(Duration::from_millis(300), media.recv_from(&mut buf))
            .await
            .is_err(),
        "no RTP"
    );
    // The same INVITE from the trusted address is routed (the 403 was the ACL, not the message).
    let uac = Uac::new("127.0.0.1:0", udp).await;
    uac.invite(USER, &offer(4000, true)).await;
    let got = udp_until(&uac.sock, Duration::from_secs(2), |m| code(m) >= 200).await;
    assert_eq!(codes(&got), [100, 480], "the routed user is offline: 480");
    s.running.shutdown().await;
}

#[tokio::test]
async fn unknown_number_404_options_501_481() {
    let s = sip_server(42200).await;
    let (udp, tcp) = sip_addrs(&s);
    let uac = Uac::new("127.0.0.1:0", udp).await;
    uac.invite("+15559999", &offer(4000, true)).await;
    assert_eq!(
        codes(&udp_until(&uac.sock, Duration::from_secs(2), |m| code(m) >= 200).await),
        [404]
    );

    uac.send(&uac.request("OPTIONS", "gw", 1, "OPTIONS", "", ""))
        .await;
    let got = udp_until(&uac.sock, Duration::from_secs(2), |_| true).await;
    assert_eq!(codes(&got), [200]);
    assert!(got[0].header("Allow").unwrap().contains("INVITE"));

    uac.send(&uac.request("FROB", "gw", 2, "FROB", "", ""))
        .await;
    let got = udp_until(&uac.sock, Duration::from_secs(2), |_| true).await;
    assert_eq!(codes(&got), [501]);
    uac.send(&uac.request("SUBSCRIBE", "gw", 3, "SUBSCRIBE", "Event: presence\r\n", ""))
        .await;
    assert_eq!(
        codes(&udp_until(&uac.sock, Duration::from_secs(2), |_| true).await),
        [501]
    );

    let mut lost = Uac::new("127.0.0.1:0", udp).await;
    lost.to_tag = Some("nope".into());
    lost.send(&lost.request("BYE", ECHO, 5, "BYE", "", ""))
        .await;
    assert_eq!(
        codes(&udp_until(&lost.sock, Duration::from_secs(2), |_| true).await),
        [481]
    );
    lost.send(&lost.request(
        "INFO",
        ECHO,
        6,
        "INFO",
        "Content-Type: application/dtmf\r\n",
        "5",
    ))
    .await;
    assert_eq!(
        codes(&udp_until(&lost.sock, Duration::from_secs(2), |_| true).await),
        [481]
    );
    // A retransmitted BYE gets the same answer.
    lost.send(&lost.request("BYE", ECHO, 5, "BYE", "", ""))
        .await;
    assert_eq!(
        codes(&udp_until(&lost.sock, Duration::from_secs(2), |_| true).await),
        [481]
    );
    // An ACK never gets a response, malformed or not.
    lost.send(b"ACK sip:x@y SIP/2.0\r\nVia: SIP/2.0/UDP h;;\r\nFrom: a\r\nTo: b\r\nCall-ID: c\r\nCSeq: 1 ACK\r\n\r\n").await;
    assert!(
        udp_collect(&lost.sock, Duration::from_millis(500))
            .await
            .is_empty()
    );
    assert_serving(udp, tcp, 1).await;
    s.running.shutdown().await;
}

fn dtmf_tone(key_rows: (f32, f32), ms: usize) -> Vec<i16> {
    (0..ms * 8)
        .map(|i| {
            let t = i as f32 / 8000.0;
            let v = 0.25
                * ((2.0 * std::f32::consts::PI * key_rows.0 * t).sin()
                    + (2.0 * std::f32::consts::PI * key_rows.1 * t).sin());
            (v * 32767.0) as i16
        })
        .collect()
}

#[tokio::test]
async fn echo_line_returns_rtp_detects_inband_dtmf_sends_rtcp() {
    let s = sip_server(42400).await;
    let (udp, _) = sip_addrs(&s);
    let inband_before = counter(&s, "switchboard_sip_dtmf_total", &["source=\"inband\""]).await;
    let mut uac = Uac::new("127.0.0.1:0", udp).await;
    let media = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let rtcp_sock = UdpSocket::bind(("127.0.0.1", media.local_addr().unwrap().port() + 1)).await;
    uac.invite(ECHO, &offer(media.local_addr().unwrap().port(), false))
        .await;
    let got = udp_until(&uac.sock, Duration::from_secs(3), |m| code(m) >= 200).await;
    assert_eq!(codes(&got), [100, 200]);
    let ok = got.last().unwrap();
    uac.to_tag = ok.to_tag();
    let answer = sdp::parse(&String::from_utf8_lossy(&ok.body)).unwrap();
    let neg = sdp::negotiate(&answer, &[sdp::G711::Pcmu]).unwrap();
    assert_eq!(neg.telephone_event, None, "none offered, none answered");
    assert!(ok.header("Contact").is_some_and(|c| uri_user(c).is_some()));
    uac.send(&uac.request("ACK", ECHO, 1, "ACK", "", "")).await;

    // 0.3 s of silence, '7' for 200 ms, silence: 20 ms PCMU packets.
    let mut pcm = vec![0i16; 2400];
    pcm.extend(dtmf_tone((852.0, 1209.0), 200));
    pcm.extend(vec![0i16; 2400]);
    let ssrc = 0x1234_5678;
    for (i, frame) in pcm.chunks(160).enumerate() {
        let payload: Vec<u8> = frame.iter().map(|s| g711::ulaw_encode(*s)).collect();
        let pkt = rtp::write(
            i == 0,
            0,
            1000 + i as u16,
            8000 + 160 * i as u32,
            ssrc,
            &payload,
        );
        media.send_to(&pkt, neg.remote_rtp).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The echo comes back, re-stamped with its own SSRC and consecutive sequence numbers.
    let mut buf = [0u8; 2048];
    let mut echoed = Vec::new();
    while let Ok(Ok((n, _))) =
        tokio::time::timeout(Duration::from_millis(300), media.recv_from(&mut buf)).await
    {
        let p = rtp::parse(&buf[..n]).unwrap();
        echoed.push((p.ssrc, p.seq, p.timestamp, p.payload.to_vec()));
    }
    assert!(
        echoed.len() >= 40,
        "echoed {} of {} packets",
        echoed.len(),
        pcm.len() / 160
    );
    assert!(
        echoed.iter().all(|e| e.0 != ssrc && e.0 == echoed[0].0),
        "own SSRC"
    );
    assert!(
        echoed.windows(2).all(|w| w[1].1 == w[0].1.wrapping_add(1)),
        "consecutive seq"
    );
    assert!(
        echoed
            .windows(2)
            .all(|w| w[1].2 == w[0].2.wrapping_add(160)),
        "20 ms timestamps"
    );
    assert!(
        echoed.iter().any(|e| e.3.iter().any(|b| *b != 0xff)),
        "the tone comes back"
    );
    // The digit is counted once (in-band: no telephone-event negotiated).
    assert_eq!(
        counter(&s, "switchboard_sip_dtmf_total", &["source=\"inband\""]).await - inband_before,
        1.0
    );
    // RTCP: a report within 2.5 s of the answer, about our stream.
    if let Ok(rtcp_sock) = rtcp_sock {
        let (n, _) = tokio::time::timeout(Duration::from_secs(4), rtcp_sock.recv_from(&mut buf))
            .await
            .expect("RTCP report")
            .unwrap();
        assert!(rtp::is_rtcp(&buf[..n]));
        assert_eq!(buf[1], 200, "SR (we sent RTP)");
        assert_eq!(buf[0] & 0x1f, 1, "one report block");
        assert_eq!(
            u32::from_be_bytes(buf[28..32].try_into().unwrap()),
            ssrc,
            "the block is about our stream"
        );
        assert_eq!(rtcp::sender_reports(&buf[..n]).len(), 1);
    }
    uac.send(&uac.request("BYE", ECHO, 2, "BYE", "", "")).await;
    assert_eq!(
        codes(&udp_until(&uac.sock, Duration::from_secs(2), |m| code(m) >= 200).await),
        [200]
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        s.running.sip.as_ref().unwrap().ports.in_use(),
        0,
        "ports released after BYE"
    );
    s.running.shutdown().await;
}

#[tokio::test]
async fn ok_retransmitted_until_ack_then_bye() {
    let s = sip_server(42600).await;
    let (udp, _) = sip_addrs(&s);
    let mut uac = Uac::new("127.0.0.1:0", udp).await;
    uac.invite(ECHO, &offer(4002, true)).await;
    let got = udp_collect(&uac.sock, Duration::from_millis(2300)).await;
    let oks = got.iter().filter(|m| code(m) == 200).count();
    assert!(
        oks >= 2,
        "200 retransmitted without ACK (T1 500 ms, then 1 s): {:?}",
        codes(&got)
    );
    uac.to_tag = got.last().unwrap().to_tag();
    uac.send(&uac.request("ACK", ECHO, 1, "ACK", "", "")).await;
    let after = udp_collect(&uac.sock, Duration::from_millis(1300)).await;
    assert!(
        after.is_empty(),
        "no retransmission after ACK: {:?}",
        codes(&after)
    );
    uac.send(&uac.request("BYE", ECHO, 2, "BYE", "", "")).await;
    assert_eq!(
        codes(&udp_until(&uac.sock, Duration::from_secs(2), |_| true).await),
        [200]
    );
    s.running.shutdown().await;
}

#[tokio::test]
async fn cancel_before_answer_487_and_cancel_200_race() {
    let s = sip_server(42800).await;
    let (udp, _) = sip_addrs(&s);
    // CANCEL while ringing: 200 for the CANCEL, 487 for the INVITE, no port kept.
    let uac = Uac::new("127.0.0.1:0", udp).await;
    uac.invite(ECHO_SLOW, &offer(4004, true)).await;
    let got = udp_until(&uac.sock, Duration::from_secs(2), |m| code(m) == 180).await;
    assert_eq!(codes(&got), [100, 180]);
    uac.send(&uac.request("CANCEL", ECHO_SLOW, 1, "CANCEL", "", ""))
        .await;
    let got = udp_until(&uac.sock, Duration::from_secs(2), |m| code(m) == 487).await;
    let mut c = codes(&got);
    c.sort();
    assert_eq!(c, [200, 487]);
    let tag = got.iter().find(|m| code(m) == 487).unwrap().to_tag();
    let mut acker = Uac {
        sock: uac.sock,
        gw: uac.gw,
        call_id: uac.call_id.clone(),
        to_tag: tag,
    };
    acker
        .send(&acker.request("ACK", ECHO_SLOW, 1, "ACK", "", ""))
        .await;
    let late = udp_collect(&acker.sock, Duration::from_millis(2500)).await;
    assert!(
        late.iter().all(|m| code(m) != 200),
        "the call was not answered after CANCEL: {:?}",
        codes(&late)
    );
    assert_eq!(s.running.sip.as_ref().unwrap().ports.in_use(), 0);
    acker.to_tag = None;

    // The race: the 200 crosses the CANCEL. The CANCEL gets 200 and has no effect; the call stands until BYE.
    let mut uac = Uac::new("127.0.0.1:0", udp).await;
    uac.invite(ECHO, &offer(4006, true)).await;
    let got = udp_until(&uac.sock, Duration::from_secs(2), |m| code(m) == 200).await;
    uac.to_tag = got.last().unwrap().to_tag();
    uac.send(&uac.request("CANCEL", ECHO, 1, "CANCEL", "", ""))
        .await;
    let got = udp_until(&uac.sock, Duration::from_secs(2), |m| {
        m.cseq().map(|c| c.1 == "CANCEL").unwrap_or(false)
    })
    .await;
    assert_eq!(got.last().map(code), Some(200), "CANCEL answered 200");
    assert!(got.iter().all(|m| code(m) != 487), "no 487 after a 200");
    uac.send(&uac.request("ACK", ECHO, 1, "ACK", "", "")).await;
    assert_eq!(
        s.running.sip.as_ref().unwrap().ports.in_use(),
        1,
        "the call stands"
    );
    uac.send(&uac.request("BYE", ECHO, 2, "BYE", "", "")).await;
    let got = udp_until(&uac.sock, Duration::from_secs(2), |m| {
        m.cseq().map(|c| c.1 == "BYE").unwrap_or(false)
    })
    .await;
    assert_eq!(got.last().map(code), Some(200));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(s.running.sip.as_ref().unwrap().ports.in_use(), 0);
    s.running.shutdown().await;
}

#[tokio::test]
async fn symmetric_rtp_latches_to_the_real_source() {
    let s = sip_server(45000).await;
    let (udp, _) = sip_addrs(&s);
    let mut uac = Uac::new("127.0.0.1:0", udp).await;
    // The SDP names a port nobody listens on (as behind a NAT); RTP really comes from another socket.
    let signalled = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let signalled_port = signalled.local_addr().unwrap().port();
    drop(signalled);
    let real = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    uac.invite(ECHO, &offer(signalled_port, true)).await;
    let got = udp_until(&uac.sock, Duration::from_secs(3), |m| code(m) >= 200).await;
    let ok = got.last().unwrap();
    assert_eq!(code(ok), 200);
    uac.to_tag = ok.to_tag();
    uac.send(&uac.request("ACK", ECHO, 1, "ACK", "", "")).await;
    let neg = sdp::negotiate(
        &sdp::parse(&String::from_utf8_lossy(&ok.body)).unwrap(),
        &[sdp::G711::Pcmu],
    )
    .unwrap();
    for i in 0..20u16 {
        let pkt = rtp::write(i == 0, 0, i, 160 * u32::from(i), 99, &[0x55; 160]);
        real.send_to(&pkt, neg.remote_rtp).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut buf = [0u8; 2048];
    let mut n = 0;
    while let Ok(Ok(_)) =
        tokio::time::timeout(Duration::from_millis(300), real.recv_from(&mut buf)).await
    {
        n += 1;
    }
    assert!(n >= 18, "echo latched to the real source: {n} packets");
    uac.send(&uac.request("BYE", ECHO, 2, "BYE", "", "")).await;
    assert_eq!(
        codes(&udp_until(&uac.sock, Duration::from_secs(2), |_| true).await),
        [200]
    );
    s.running.shutdown().await;
}

#[tokio::test]
async fn options_keepalive_marks_trunk_up_then_down() {
    // A fake carrier: answers the gateway's OPTIONS probes until told to stop.
    let carrier = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = carrier.local_addr().unwrap();
    let s = sip_server_with(45200, |c| {
        let mut t = c.sip.trunks[0].clone();
        t.name = "probed".into();
        t.address = addr.to_string();
        t.allow = vec![];
        t.keepalive_secs = 1;
        c.sip.trunks.push(t);
    })
    .await;
    let up = |s| async move { counter(s, "switchboard_sip_trunk_up", &["trunk=\"probed\""]).await };
    let mut buf = vec![0u8; 4096];
    let (n, from) = tokio::time::timeout(Duration::from_secs(3), carrier.recv_from(&mut buf))
        .await
        .expect("a probe")
        .unwrap();
    let probe = switchboard::proto::sip::message::parse(&buf[..n]).unwrap();
    assert_eq!(probe.method(), Some("OPTIONS"));
    probe.validate_request().unwrap();
    assert_eq!(from, sip_addrs(&s).0, "probes come from the SIP port");
    let ok = switchboard::proto::sip::message::ReplyBase::of(&probe).response(
        200,
        "OK",
        Some("c1"),
        &[],
        b"",
    );
    carrier.send_to(&ok, from).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(up(&s).await, 1.0, "trunk up after an answer");
    // Stop answering: down after three unanswered probes (about 3 s at 1 s intervals).
    let mut probes = 0;
    let end = tokio::time::Instant::now() + Duration::from_millis(5500);
    while let Ok(Ok(_)) = tokio::time::timeout_at(end, carrier.recv_from(&mut buf)).await {
        probes += 1;
    }
    assert!(probes >= 3, "{probes} probes");
    assert_eq!(up(&s).await, 0.0, "trunk down");
    s.running.shutdown().await;
}

#[tokio::test]
async fn tel_uri_is_routed_like_sip() {
    let s = sip_server(45400).await;
    let (udp, _) = sip_addrs(&s);
    let uac = Uac::new("127.0.0.1:0", udp).await;
    let req = String::from_utf8(uac.request(
        "INVITE",
        ECHO,
        1,
        "INVITE",
        "Content-Type: application/sdp\r\n",
        &offer(4008, true),
    ))
    .unwrap();
    let req = req.replacen(
        &format!("INVITE sip:{ECHO}@{udp} SIP/2.0"),
        &format!("INVITE tel:{ECHO} SIP/2.0"),
        1,
    );
    uac.send(req.as_bytes()).await;
    let got = udp_until(&uac.sock, Duration::from_secs(2), |m| code(m) >= 200).await;
    assert_eq!(codes(&got), [100, 200], "tel:{ECHO} reaches the echo line");
    let mut uac = uac;
    uac.to_tag = got.last().unwrap().to_tag();
    uac.send(&uac.request("ACK", ECHO, 1, "ACK", "", "")).await;
    uac.send(&uac.request("BYE", ECHO, 2, "BYE", "", "")).await;
    assert_eq!(
        codes(&udp_until(&uac.sock, Duration::from_secs(2), |_| true).await),
        [200]
    );
    s.running.shutdown().await;
}

#[tokio::test]
async fn bye_in_early_dialog_ends_the_invite_with_487() {
    let s = sip_server(45600).await;
    let (udp, _) = sip_addrs(&s);
    let mut uac = Uac::new("127.0.0.1:0", udp).await;
    uac.invite(ECHO_SLOW, &offer(4010, true)).await;
    let got = udp_until(&uac.sock, Duration::from_secs(2), |m| code(m) == 180).await;
    assert_eq!(codes(&got), [100, 180]);
    uac.to_tag = got.last().unwrap().to_tag();
    uac.send(&uac.request("BYE", ECHO_SLOW, 2, "BYE", "", ""))
        .await;
    let got = udp_collect(&uac.sock, Duration::from_millis(1000)).await;
    let mut c = codes(&got);
    c.sort();
    assert_eq!(c, [200, 487], "BYE answered, INVITE terminated");
    let late = udp_collect(&uac.sock, Duration::from_millis(2500)).await;
    assert!(
        late.iter()
            .all(|m| code(m) != 200 || m.cseq().map(|c| c.1 != "INVITE").unwrap_or(true)),
        "never answered 200 afterwards"
    );
    assert_eq!(s.running.sip.as_ref().unwrap().ports.in_use(), 0);
    s.running.shutdown().await;
}

#[tokio::test]
async fn tls_transport_answers_options_and_calls() {
    use tokio::io::AsyncWriteExt;
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    let s = sip_server(45800).await;
    let tls_addr = s.running.sip.as_ref().unwrap().tls.expect("TLS listener");
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_file_iter(&s.running.cert_path).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let client = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(client));
    let tcp = tokio::net::TcpStream::connect(tls_addr).await.unwrap();
    let local = tcp.local_addr().unwrap();
    let mut tls = connector
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .expect("TLS handshake");
    tls.write_all(&options(local, "TLS", 1)).await.unwrap();
    let sdp = offer(4012, true);
    let invite = format!(
        "INVITE sip:{ECHO}@{tls_addr};transport=tls SIP/2.0\r\nVia: SIP/2.0/TLS {local};branch=z9hG4bKtls1\r\nMax-Forwards: 70\r\nFrom: <sip:+15550999@{local}>;tag=t1\r\nTo: <sip:{ECHO}@{tls_addr}>\r\nCall-ID: tls-call-{local}\r\nCSeq: 1 INVITE\r\nContact: <sip:uac@{local};transport=tls>\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
        sdp.len()
    );
    tls.write_all(invite.as_bytes()).await.unwrap();
    let got = tls_collect(&mut tls, Duration::from_millis(1500)).await;
    assert_eq!(
        codes(&got),
        [200, 100, 200],
        "OPTIONS 200, then INVITE 100 and 200 over TLS"
    );
    assert!(
        got[2].header("Contact").unwrap().contains("transport=tls"),
        "{:?}",
        got[2].header("Contact")
    );
    assert_eq!(
        got[0].via_values()[0],
        format!("SIP/2.0/TLS {local};branch=z9hG4bKopt1")
    );
    let tag = got[2].to_tag().unwrap();
    let bye = format!(
        "BYE sip:switchboard@{tls_addr};transport=tls SIP/2.0\r\nVia: SIP/2.0/TLS {local};branch=z9hG4bKtls2\r\nMax-Forwards: 70\r\nFrom: <sip:+15550999@{local}>;tag=t1\r\nTo: <sip:{ECHO}@{tls_addr}>;tag={tag}\r\nCall-ID: tls-call-{local}\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n"
    );
    tls.write_all(bye.as_bytes()).await.unwrap();
    let got = tls_collect(&mut tls, Duration::from_millis(1000)).await;
    assert_eq!(codes(&got), [200]);
    s.running.shutdown().await;
}

async fn tls_collect<S: tokio::io::AsyncRead + Unpin>(
    stream: &mut S,
    wait: Duration,
) -> Vec<Message> {
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::new();
    let mut out = Vec::new();
    let mut chunk = vec![0u8; 65535];
    let end = tokio::time::Instant::now() + wait;
    loop {
        while let switchboard::proto::sip::message::Framing::Complete(n) =
            switchboard::proto::sip::message::frame(&buf)
        {
            let m: Vec<u8> = buf.drain(..n).collect();
            out.push(switchboard::proto::sip::message::parse(&m).unwrap());
        }
        match tokio::time::timeout_at(end, stream.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            _ => break,
        }
    }
    out
}

/// Requests other than OPTIONS from an address no trunk allows get 403 even inside a dialog (a BYE, an UPDATE, a
/// re-INVITE with a To tag): the trunk ACL is not only for dialog-creating INVITEs. OPTIONS is still answered.
#[tokio::test]
async fn untrusted_sources_get_403_for_in_dialog_requests_too() {
    let s = sip_server(42600).await;
    let (udp, _) = sip_addrs(&s);
    let mut uac = Uac::new("127.0.0.2:0", udp).await;
    uac.to_tag = Some("sbtag".into());
    for method in ["BYE", "UPDATE", "INFO"] {
        uac.send(&uac.request(method, ECHO, 2, method, "", ""))
            .await;
        let got = udp_until(&uac.sock, Duration::from_secs(2), |m| code(m) >= 200).await;
        assert_eq!(codes(&got), [403], "{method}");
    }
    uac.invite(ECHO, &offer(4000, false)).await;
    let got = udp_until(&uac.sock, Duration::from_secs(2), |m| code(m) >= 200).await;
    assert_eq!(codes(&got), [403], "re-INVITE");
    uac.send(&options(uac.sock.local_addr().unwrap(), "UDP", 9))
        .await;
    let got = udp_until(&uac.sock, Duration::from_secs(2), |m| code(m) >= 200).await;
    assert_eq!(codes(&got), [200], "OPTIONS is answered to anyone");
    s.running.shutdown().await;
}

/// A phone that stops sending RTP in an answered call (it vanished without a BYE) is hung up after
/// `sip.rtp_timeout_secs` (2 s here): no BYE while its RTP flows, a BYE once it has been silent that long.
#[tokio::test]
async fn a_phone_silent_for_the_rtp_timeout_is_hung_up() {
    let s = sip_server_with(42700, |c| c.sip.rtp_timeout_secs = 2).await;
    let (udp, _) = sip_addrs(&s);
    let mut uac = Uac::new("127.0.0.1:0", udp).await;
    let media = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    uac.invite(ECHO, &offer(media.local_addr().unwrap().port(), false))
        .await;
    let got = udp_until(&uac.sock, Duration::from_secs(3), |m| code(m) >= 200).await;
    let ok = got.last().expect("a final response");
    assert_eq!(code(ok), 200);
    uac.to_tag = ok.to_tag();
    let port = String::from_utf8_lossy(&ok.body)
        .lines()
        .find_map(|l| {
            l.strip_prefix("m=audio ")
                .map(|r| r.split(' ').next().unwrap_or("").to_string())
        })
        .and_then(|p| p.parse::<u16>().ok())
        .expect("an m=audio port");
    let gw_rtp = SocketAddr::from(([127, 0, 0, 1], port));
    uac.send(&uac.request("ACK", ECHO, 1, "ACK", "", "")).await;
    // 3.5 s of RTP every 100 ms: longer than the timeout, and no BYE.
    let payload = vec![0xffu8; 160];
    for n in 0..35u16 {
        media
            .send_to(
                &rtp::write(n == 0, 0, n, u32::from(n) * 160, 0x77, &payload),
                gw_rtp,
            )
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let early = udp_collect(&uac.sock, Duration::from_millis(10)).await;
    assert!(
        early.iter().all(|m| m.method() != Some("BYE")),
        "no BYE while RTP flows"
    );
    let silent = std::time::Instant::now();
    let got = udp_until(&uac.sock, Duration::from_secs(6), |m| {
        m.method() == Some("BYE")
    })
    .await;
    assert!(
        got.iter().any(|m| m.method() == Some("BYE")),
        "BYE after the phone went silent"
    );
    let after = silent.elapsed();
    assert!(
        after >= Duration::from_millis(1500),
        "BYE only after the timeout: {after:?}"
    );
    assert_eq!(
        counter(&s, "switchboard_sip_rtp_timeouts_total", &[]).await,
        1.0
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        s.running.sip.as_ref().unwrap().ports.in_use(),
        0,
        "the RTP port is freed"
    );
    s.running.shutdown().await;
}
