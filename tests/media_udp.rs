//! The media IO shell on real UDP sockets: `media::start` on every interface (port 0), two str0m
//! clients on `127.0.0.1` sockets, a 1:1 call through it (a room of two: each client offers its own
//! sendonly m-lines and answers the server's offer carrying the other's tracks); with two workers,
//! two rooms on two ports.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use str0m::change::{SdpAnswer, SdpOffer};
use str0m::format::Codec;
use str0m::media::{Direction, MediaKind, MediaTime, Mid};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, Input, Output, Rtc};
use switchboard::media::{self, MediaConfig, MediaError};
use switchboard::sfu::{
    OutTrack, ParticipantId, SfuError, SfuEvent, TrackSource, install_crypto_provider,
};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

struct UdpClient {
    rtc: Rtc,
    socket: UdpSocket,
    local: SocketAddr,
    audio: Mid,
    video: Mid,
    events: Vec<Event>,
    /// Server m-lines announced by the server's offers.
    tracks: Vec<OutTrack>,
}

impl UdpClient {
    async fn new() -> (UdpClient, String, str0m::change::SdpPendingOffer) {
        let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind client");
        let local = socket.local_addr().expect("client addr");
        let mut rtc = Rtc::new(Instant::now());
        rtc.add_local_candidate(Candidate::host(local, "udp").expect("candidate"));
        let mut change = rtc.sdp_api();
        let audio = change.add_media(MediaKind::Audio, Direction::SendOnly, None, None, None);
        let video = change.add_media(MediaKind::Video, Direction::SendOnly, None, None, None);
        let (offer, pending) = change.apply().expect("offer");
        let client = UdpClient {
            rtc,
            socket,
            local,
            audio,
            video,
            events: Vec::new(),
            tracks: Vec::new(),
        };
        (client, offer.to_sdp_string(), pending)
    }

    /// Feeds time and received datagrams, sends what str0m produces. Non-blocking.
    async fn pump(&mut self) {
        let mut buf = [0u8; 2048];
        while let Ok((n, source)) = self.socket.try_recv_from(&mut buf) {
            let Ok(contents) = buf[..n].try_into() else {
                continue;
            };
            let input = Input::Receive(
                Instant::now(),
                Receive {
                    proto: Protocol::Udp,
                    source,
                    destination: self.local,
                    contents,
                },
            );
            self.rtc.handle_input(input).expect("client input");
        }
        self.rtc
            .handle_input(Input::Timeout(Instant::now()))
            .expect("client timeout");
        loop {
            match self.rtc.poll_output().expect("client poll") {
                Output::Timeout(_) => break,
                Output::Transmit(t) => {
                    let _ = self.socket.send_to(&t.contents, t.destination).await;
                }
                Output::Event(e) => self.events.push(e),
            }
        }
    }

    fn write(&mut self, mid: Mid, codec: Codec, at: Duration, data: Vec<u8>) {
        let writer = self.rtc.writer(mid).expect("writer");
        let pt = writer
            .payload_params()
            .find(|p| p.spec().codec == codec)
            .expect("codec negotiated")
            .pt();
        writer
            .write(pt, Instant::now(), MediaTime::from(at), data)
            .expect("write");
    }

    /// Frames received on the server m-line carrying `source`.
    fn received(&self, source: TrackSource) -> Vec<Vec<u8>> {
        let Some(track) = self.tracks.iter().find(|t| t.source == source) else {
            return Vec::new();
        };
        self.events
            .iter()
            .filter_map(|e| match e {
                Event::MediaData(d) if d.mid.to_string() == track.mid => Some(d.data.to_vec()),
                _ => None,
            })
            .collect()
    }
}

async fn pump_all(clients: &mut [UdpClient], duration: Duration) {
    let end = Instant::now() + duration;
    while Instant::now() < end {
        for c in clients.iter_mut() {
            c.pump().await;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_to_one_call_over_udp_on_every_interface() {
    let config = MediaConfig {
        port: 0,
        public_ip: None,
        workers: 1,
    };
    call_through(config, |handle| {
        let addrs = handle.local_addrs();
        assert!(addrs.iter().any(|a| a.ip().is_loopback()), "{addrs:?}");
        assert_eq!(addrs, handle.advertised_addrs());
        let port = addrs[0].port();
        assert_ne!(port, 0);
        assert!(
            addrs.iter().all(|a| a.port() == port),
            "one port: {addrs:?}"
        );
        port
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_to_one_call_over_udp_behind_a_public_ip() {
    // 127.0.0.1 stands in for the public address of a 1:1 NAT: the wildcard socket receives on it.
    let config = MediaConfig {
        port: 0,
        public_ip: Some("127.0.0.1".parse().expect("ip")),
        workers: 1,
    };
    call_through(config, |handle| {
        let bound = handle.local_addrs();
        assert_eq!(bound.len(), 1);
        assert!(bound[0].ip().is_unspecified(), "{bound:?}");
        let port = bound[0].port();
        assert_eq!(
            handle.advertised_addrs(),
            vec![SocketAddr::from(([127, 0, 0, 1], port))]
        );
        port
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_spread_over_two_workers_each_on_its_own_port() {
    install_crypto_provider();
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let shutdown = CancellationToken::new();
    let config = MediaConfig {
        port: 0,
        public_ip: None,
        workers: 2,
    };
    let (handle, task) = media::start(config, events_tx, shutdown.clone())
        .await
        .expect("media started");
    assert_eq!(handle.worker_count(), 2);
    let mut ports: Vec<u16> = Vec::new();
    for a in handle.local_addrs() {
        if !ports.contains(&a.port()) {
            ports.push(a.port());
        }
    }
    assert_eq!(
        ports.len(),
        2,
        "a port per worker: {:?}",
        handle.local_addrs()
    );

    // The first room goes to worker 0, the second to the then least loaded worker 1; every member
    // of a room is answered with its worker's port, and media flows on both.
    let mut clients = call_in_room(&handle, &mut events, "room-a", [1, 2], ports[0]).await;
    assert_eq!(handle.worker_of_participant(ParticipantId(2)), Some(0));
    clients.extend(call_in_room(&handle, &mut events, "room-b", [3, 4], ports[1]).await);
    assert_eq!(handle.worker_of_participant(ParticipantId(3)), Some(1));

    // Commands reach the participant's worker: a bad answer is refused by the right SFU.
    let err = handle
        .answer(ParticipantId(4), "v=0".to_string())
        .await
        .unwrap_err();
    assert!(
        matches!(err, MediaError::Sfu(SfuError::NoPendingOffer)),
        "{err}"
    );
    // Unknown participants are refused without a worker.
    let err = handle
        .answer(ParticipantId(99), "v=0".to_string())
        .await
        .unwrap_err();
    assert!(
        matches!(err, MediaError::Sfu(SfuError::UnknownParticipant(_))),
        "{err}"
    );

    for id in 1..=4 {
        handle.remove(ParticipantId(id));
        assert_eq!(handle.worker_of_participant(ParticipantId(id)), None);
    }
    pump_all(&mut clients, Duration::from_millis(100)).await;
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("workers stop on shutdown")
        .expect("no worker panicked");
}

/// A 1:1 call through `media::start(config)`; `check` inspects the handle and returns the port.
async fn call_through(config: MediaConfig, check: impl FnOnce(&media::MediaHandle) -> u16) {
    install_crypto_provider();
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let shutdown = CancellationToken::new();
    let (handle, task) = media::start(config, events_tx, shutdown.clone())
        .await
        .expect("media started");
    let port = check(&handle);
    let mut clients = call_in_room(&handle, &mut events, "udp-room", [1, 2], port).await;

    // Errors come back through the handle.
    let err = handle
        .offer(
            "other".to_string(),
            ParticipantId(9),
            "user-9".to_string(),
            "v=0".to_string(),
            Vec::new(),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, MediaError::Sfu(SfuError::BadSdp(_))), "{err}");
    let err = handle
        .answer(ParticipantId(1), "v=0".to_string())
        .await
        .unwrap_err();
    assert!(
        matches!(err, MediaError::Sfu(SfuError::NoPendingOffer)),
        "{err}"
    );

    handle.remove(ParticipantId(1));
    handle.remove(ParticipantId(2));
    pump_all(&mut clients, Duration::from_millis(100)).await;
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("worker stops on shutdown")
        .expect("worker did not panic");
    let err = handle
        .offer(
            "udp-room".to_string(),
            ParticipantId(3),
            "user-3".to_string(),
            "v=0".to_string(),
            Vec::new(),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, MediaError::Stopped), "{err}");
}

/// Two str0m clients (participants `ids`) in `room` through `handle`: both answers carry `port`,
/// both connect, and each receives the other's audio and video. Returns the clients, still pumped by
/// nobody.
async fn call_in_room(
    handle: &media::MediaHandle,
    events: &mut mpsc::UnboundedReceiver<SfuEvent>,
    room: &str,
    ids: [u64; 2],
    port: u16,
) -> Vec<UdpClient> {
    let mut clients = Vec::new();
    for id in ids {
        let (mut client, offer, pending) = UdpClient::new().await;
        let answer = handle
            .offer(
                room.to_string(),
                ParticipantId(id),
                format!("user-{id}"),
                offer,
                Vec::new(),
            )
            .await
            .expect("answer");
        assert!(
            answer.contains(&format!("127.0.0.1 {port} typ host")),
            "{answer}"
        );
        let answer = SdpAnswer::from_sdp_string(&answer).expect("answer parses");
        client
            .rtc
            .sdp_api()
            .accept_answer(pending, answer)
            .expect("answer accepted");
        clients.push(client);
    }

    let mut connected = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while connected.len() < 2
        || !clients
            .iter()
            .all(|c| c.rtc.is_connected() && c.tracks.len() == 2)
    {
        assert!(Instant::now() < deadline, "not connected: {connected:?}");
        pump_all(&mut clients, Duration::from_millis(20)).await;
        while let Ok(event) = events.try_recv() {
            match event {
                SfuEvent::Connected { participant } if ids.contains(&participant.0) => {
                    connected.push(participant)
                }
                SfuEvent::Offer {
                    participant,
                    sdp,
                    tracks,
                } if ids.contains(&participant.0) => {
                    let client = &mut clients[(participant.0 - ids[0]) as usize];
                    let offer = SdpOffer::from_sdp_string(&sdp).expect("server offer parses");
                    let answer = client
                        .rtc
                        .sdp_api()
                        .accept_offer(offer)
                        .expect("server offer accepted");
                    handle
                        .answer(participant, answer.to_sdp_string())
                        .await
                        .expect("answer accepted");
                    client.tracks = tracks;
                }
                _ => {}
            }
        }
    }
    pump_all(&mut clients, Duration::from_millis(200)).await;

    let start = Instant::now();
    for tick in 0u8..40 {
        for (i, c) in clients.iter_mut().enumerate() {
            let (audio, video) = (c.audio, c.video);
            c.write(
                audio,
                Codec::Opus,
                start.elapsed(),
                vec![0xa0, i as u8, tick, 7, 7],
            );
            if tick % 2 == 0 {
                let mut frame = vec![0x10, 0x02, 0x00, 0x9d, 0x01, 0x2a, i as u8, tick];
                frame.extend(std::iter::repeat_n(tick, 500));
                c.write(video, Codec::Vp8, start.elapsed(), frame);
            }
        }
        pump_all(&mut clients, Duration::from_millis(20)).await;
    }
    pump_all(&mut clients, Duration::from_millis(300)).await;

    for (i, c) in clients.iter().enumerate() {
        let from = 1 - i as u8;
        assert!(
            c.tracks
                .iter()
                .all(|t| t.publisher == ParticipantId(ids[usize::from(from)]))
        );
        let audio = c.received(TrackSource::Audio);
        let video = c.received(TrackSource::Camera);
        assert!(
            audio.len() >= 30,
            "client {i}: {} audio frames",
            audio.len()
        );
        assert!(
            video.len() >= 15,
            "client {i}: {} video frames",
            video.len()
        );
        assert!(audio.iter().all(|p| p[1] == from));
        assert!(video.iter().all(|p| p[6] == from && p.len() == 508));
    }

    clients
}
