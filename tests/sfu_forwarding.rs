//! The sans-IO SFU with real str0m peers over an in-memory network and a virtual clock: no sockets,
//! no sleeps. Datagrams are delivered by address; when none is in flight, time jumps to the earliest
//! timeout of any party.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use str0m::change::{SdpAnswer, SdpPendingOffer};
use str0m::format::Codec;
use str0m::media::{Direction, KeyframeRequestKind, MediaData, MediaKind, MediaTime, Mid};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, Input, Output, Rtc, RtcConfig};
use switchboard::sfu::{
    CONNECT_TIMEOUT, ParticipantId, Sfu, SfuConfig, SfuError, SfuEvent, install_crypto_provider,
};

const ROOM: &str = "room-1";

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("test address")
}

fn sfu_addr() -> SocketAddr {
    addr("10.0.0.1:4000")
}

struct Datagram {
    source: SocketAddr,
    destination: SocketAddr,
    contents: Vec<u8>,
}

/// A browser stand-in: a full (non-lite) str0m peer with one sendrecv audio and one sendrecv video
/// m-line.
struct Client {
    id: ParticipantId,
    addr: SocketAddr,
    rtc: Rtc,
    audio: Mid,
    video: Mid,
    pending: Option<SdpPendingOffer>,
    offer: String,
    events: Vec<Event>,
    timeout: Option<Instant>,
    /// Every datagram this client sent to the SFU, for replays.
    sent: Vec<Vec<u8>>,
    /// Unplugged clients neither send nor receive.
    plugged: bool,
}

impl Client {
    fn new(id: u64, address: &str, now: Instant, codecs: fn(RtcConfig) -> RtcConfig) -> Client {
        let address = addr(address);
        let mut rtc = codecs(Rtc::builder()).build(now);
        let host = Candidate::host(address, "udp").expect("host candidate");
        rtc.add_local_candidate(host);
        let mut change = rtc.sdp_api();
        let audio = change.add_media(MediaKind::Audio, Direction::SendRecv, None, None, None);
        let video = change.add_media(MediaKind::Video, Direction::SendRecv, None, None, None);
        let (offer, pending) = change.apply().expect("offer");
        Client {
            id: ParticipantId(id),
            addr: address,
            rtc,
            audio,
            video,
            pending: Some(pending),
            offer: offer.to_sdp_string(),
            events: Vec::new(),
            timeout: None,
            sent: Vec::new(),
            plugged: true,
        }
    }

    /// The offer without `a=candidate` lines, as a browser that trickles or hides its addresses
    /// (mDNS) sends it.
    fn offer_without_candidates(&self) -> String {
        self.offer
            .split("\r\n")
            .filter(|l| !l.starts_with("a=candidate"))
            .collect::<Vec<_>>()
            .join("\r\n")
    }

    fn candidate_line(&self) -> String {
        let c = Candidate::host(self.addr, "udp").expect("host candidate");
        format!("a={}", c.to_sdp_string())
    }

    fn accept_answer(&mut self, answer: &str) {
        let answer = SdpAnswer::from_sdp_string(answer).expect("answer parses");
        let pending = self.pending.take().expect("offer pending");
        self.rtc
            .sdp_api()
            .accept_answer(pending, answer)
            .expect("answer accepted");
    }

    /// Writes one frame on `mid` with the first negotiated payload type of `codec`.
    fn write(
        &mut self,
        mid: Mid,
        codec: Codec,
        since_start: Duration,
        now: Instant,
        data: Vec<u8>,
    ) {
        let writer = self.rtc.writer(mid).expect("writer");
        let pt = writer
            .payload_params()
            .find(|p| p.spec().codec == codec)
            .unwrap_or_else(|| panic!("{codec:?} negotiated"))
            .pt();
        writer
            .write(pt, now, MediaTime::from(since_start), data)
            .expect("write");
    }

    fn media(&self, mid: Mid) -> Vec<&MediaData> {
        self.events
            .iter()
            .filter_map(|e| match e {
                Event::MediaData(d) if d.mid == mid => Some(d),
                _ => None,
            })
            .collect()
    }

    fn keyframe_requests(&self, mid: Mid) -> usize {
        self.events
            .iter()
            .filter(|e| matches!(e, Event::KeyframeRequest(r) if r.mid == mid))
            .count()
    }
}

/// The SFU and its clients on one in-memory network.
struct Net {
    start: Instant,
    now: Instant,
    sfu: Sfu,
    clients: Vec<Client>,
    sfu_events: Vec<SfuEvent>,
    in_flight: VecDeque<Datagram>,
    /// Datagrams the SFU refused.
    refused: usize,
    /// Loss on the way to the SFU that retransmissions cannot repair: from this address, every
    /// retransmission (RTX payload type) is dropped, and while `video_lost` every video packet too.
    lossy: Option<Lossy>,
}

struct Lossy {
    from: SocketAddr,
    video_pt: u8,
    rtx_pt: u8,
    video_lost: bool,
}

impl Lossy {
    fn drops(&self, d: &Datagram) -> bool {
        // RTP header (RFC 3550 §5.1, in the clear under SRTP): version 2, then marker + PT.
        let Some(&[first, second]) = d.contents.get(..2) else {
            return false;
        };
        let pt = second & 0x7f;
        d.source == self.from
            && first >> 6 == 2
            && (pt == self.rtx_pt || (self.video_lost && pt == self.video_pt))
    }
}

impl Net {
    fn new() -> Net {
        install_crypto_provider();
        let now = Instant::now();
        Net {
            start: now,
            now,
            sfu: Sfu::new(SfuConfig {
                local_candidates: vec![sfu_addr()],
            }),
            clients: Vec::new(),
            sfu_events: Vec::new(),
            in_flight: VecDeque::new(),
            refused: 0,
            lossy: None,
        }
    }

    fn add_client(&mut self, id: u64, address: &str, codecs: fn(RtcConfig) -> RtcConfig) -> usize {
        let client = Client::new(id, address, self.now, codecs);
        self.clients.push(client);
        self.clients.len() - 1
    }

    fn join(&mut self, client: usize, offer: &str) {
        let id = self.clients[client].id;
        let answer = self
            .sfu
            .handle_offer(self.now, ROOM, id, offer)
            .expect("offer answered");
        assert!(answer.contains("a=ice-lite"), "the SFU answers as ICE-lite");
        assert!(
            answer.contains("10.0.0.1 4000 typ host"),
            "answer carries the host candidate"
        );
        self.clients[client].accept_answer(&answer);
    }

    /// One step: drain everyone, deliver what is in flight, or else advance time.
    fn step(&mut self) {
        for c in &mut self.clients {
            loop {
                match c.rtc.poll_output().expect("client poll") {
                    Output::Timeout(t) => {
                        c.timeout = Some(t);
                        break;
                    }
                    Output::Transmit(t) => {
                        let contents: Vec<u8> = t.contents.into();
                        if !c.plugged {
                            continue;
                        }
                        if t.destination == sfu_addr() {
                            c.sent.push(contents.clone());
                        }
                        self.in_flight.push_back(Datagram {
                            source: t.source,
                            destination: t.destination,
                            contents,
                        });
                    }
                    Output::Event(e) => c.events.push(e),
                }
            }
        }
        while let Some(t) = self.sfu.poll_transmit() {
            assert_eq!(t.source, sfu_addr(), "the SFU sends from its candidate");
            self.in_flight.push_back(Datagram {
                source: t.source,
                destination: t.destination,
                contents: t.contents,
            });
        }
        while let Some(e) = self.sfu.poll_event() {
            self.sfu_events.push(e);
        }

        if !self.in_flight.is_empty() {
            while let Some(d) = self.in_flight.pop_front() {
                self.deliver(d);
            }
            return;
        }

        let next = self
            .clients
            .iter()
            .filter_map(|c| c.timeout)
            .chain(self.sfu.poll_timeout())
            .min()
            .unwrap_or(self.now + Duration::from_millis(10));
        self.now = next
            .max(self.now + Duration::from_millis(1))
            .min(self.now + Duration::from_millis(50));
        let now = self.now;
        for c in &mut self.clients {
            c.rtc
                .handle_input(Input::Timeout(now))
                .expect("client timeout");
        }
        self.sfu.handle_timeout(now);
    }

    fn deliver(&mut self, d: Datagram) {
        if d.destination == sfu_addr() {
            if self.lossy.as_ref().is_some_and(|l| l.drops(&d)) {
                return;
            }
            if !self
                .sfu
                .handle_receive(self.now, d.source, d.destination, &d.contents)
            {
                self.refused += 1;
            }
            return;
        }
        let Some(c) = self
            .clients
            .iter_mut()
            .find(|c| c.addr == d.destination && c.plugged)
        else {
            return;
        };
        let input = Input::Receive(
            self.now,
            Receive {
                proto: Protocol::Udp,
                source: d.source,
                destination: d.destination,
                contents: d.contents.as_slice().try_into().expect("datagram parses"),
            },
        );
        c.rtc.handle_input(input).expect("client input");
    }

    /// Steps until `done` holds; panics after `limit` of virtual time.
    fn run_until(&mut self, limit: Duration, what: &str, mut done: impl FnMut(&Net) -> bool) {
        let end = self.now + limit;
        while !done(self) {
            assert!(self.now < end, "timed out waiting for {what}");
            self.step();
        }
    }

    /// Steps until `duration` of virtual time has passed.
    fn run_for(&mut self, duration: Duration) {
        let end = self.now + duration;
        while self.now < end {
            self.step();
        }
    }

    fn sfu_connected(&self, client: usize) -> bool {
        let id = self.clients[client].id;
        self.sfu_events
            .contains(&SfuEvent::Connected { participant: id })
    }

    fn connect_all(&mut self) {
        let n = self.clients.len();
        self.run_until(Duration::from_secs(10), "connections", |net| {
            (0..n).all(|i| net.sfu_connected(i) && net.clients[i].rtc.is_connected())
        });
        // Let DTLS settle on the SFU side too.
        self.run_for(Duration::from_millis(200));
    }

    fn elapsed(&self) -> Duration {
        self.now - self.start
    }

    /// 20 ms of a call: every client writes one audio frame, and every other tick a video frame.
    fn talk(&mut self, tick: u8, video_codec: Codec, video_frame: fn(u64, u8) -> Vec<u8>) {
        let (now, since) = (self.now, self.elapsed());
        for c in &mut self.clients {
            if !c.plugged {
                continue;
            }
            let audio = c.audio;
            c.write(audio, Codec::Opus, since, now, audio_frame(c.id.0, tick));
            if tick.is_multiple_of(2) {
                let video = c.video;
                c.write(video, video_codec, since, now, video_frame(c.id.0, tick));
            }
        }
        self.run_for(Duration::from_millis(20));
    }
}

fn default_codecs(c: RtcConfig) -> RtcConfig {
    c
}

fn h264_only(c: RtcConfig) -> RtcConfig {
    c.clear_codecs().enable_opus(true, false).enable_h264(true)
}

fn audio_frame(from: u64, tick: u8) -> Vec<u8> {
    vec![0xa0, from as u8, tick, 1, 2, 3, 4, 5]
}

/// A VP8 frame: bit 0 of the first byte clear marks a key frame (RFC 6386 §9.1); the rest is opaque
/// to the SFU.
fn vp8_frame(from: u64, tick: u8) -> Vec<u8> {
    let mut f = vec![0x10, 0x02, 0x00, 0x9d, 0x01, 0x2a, from as u8, tick];
    f.extend(std::iter::repeat_n(tick, 300));
    f
}

/// An H.264 access unit in Annex B: an IDR slice NAL unit (type 5) with a marker payload.
fn h264_frame(from: u64, tick: u8) -> Vec<u8> {
    let mut f = vec![0, 0, 0, 1, 0x65, 0x88, 0x84, from as u8, tick];
    f.extend(std::iter::repeat_n(0x11, 200));
    f
}

fn payloads(data: &[&MediaData]) -> Vec<Vec<u8>> {
    data.iter().map(|d| d.data.to_vec()).collect()
}

/// Two clients, A announcing its address by trickle before its offer and B only through its
/// connectivity checks (peer-reflexive, like a browser with mDNS-only candidates).
fn two_clients(codecs: fn(RtcConfig) -> RtcConfig) -> (Net, usize, usize) {
    let mut net = Net::new();
    let a = net.add_client(1, "10.0.0.2:5000", codecs);
    let b = net.add_client(2, "10.0.0.3:5000", codecs);

    let line = net.clients[a].candidate_line();
    net.sfu
        .add_remote_candidate(ParticipantId(1), &line)
        .expect("candidate queued before the offer");
    let offer_a = net.clients[a].offer_without_candidates();
    net.join(a, &offer_a);
    net.sfu
        .add_remote_candidate(ParticipantId(1), "")
        .expect("end of candidates");
    let offer_b = net.clients[b].offer_without_candidates();
    net.join(b, &offer_b);

    assert_eq!(net.sfu.participant_count(), 2);
    assert_eq!(net.sfu.room_count(), 1);
    net.connect_all();
    (net, a, b)
}

#[test]
fn one_to_one_call_forwards_audio_and_video_both_ways() {
    let (mut net, a, b) = two_clients(default_codecs);
    for tick in 0..50 {
        net.talk(tick, Codec::Vp8, vp8_frame);
    }
    net.run_for(Duration::from_millis(200));

    for (to, from) in [(b, a), (a, b)] {
        let from_id = net.clients[from].id.0;
        let client = &net.clients[to];
        let audio = payloads(&client.media(client.audio));
        let video = payloads(&client.media(client.video));
        let sent_audio: Vec<_> = (0..50).map(|t| audio_frame(from_id, t)).collect();
        let sent_video: Vec<_> = (0..50).step_by(2).map(|t| vp8_frame(from_id, t)).collect();
        assert!(
            audio.len() >= 40,
            "client {to}: {} audio frames",
            audio.len()
        );
        assert!(
            video.len() >= 20,
            "client {to}: {} video frames",
            video.len()
        );
        assert!(
            audio.iter().all(|p| sent_audio.contains(p)),
            "audio payloads intact"
        );
        assert!(
            video.iter().all(|p| sent_video.contains(p)),
            "video payloads intact"
        );
        let codecs: Vec<Codec> = client
            .media(client.video)
            .iter()
            .map(|d| d.params.spec().codec)
            .collect();
        assert!(codecs.iter().all(|c| *c == Codec::Vp8));
    }
    let stats = net.sfu.stats();
    assert!(stats.frames_forwarded >= 140, "{stats:?}");
    assert!(stats.packets_in > 0 && stats.bytes_in > stats.packets_in);
    assert!(stats.packets_out > 0 && stats.bytes_out > stats.packets_out);
}

#[test]
fn keyframe_request_from_subscriber_reaches_publisher() {
    let (mut net, a, b) = two_clients(default_codecs);
    for tick in 0..50 {
        net.talk(tick, Codec::Vp8, vp8_frame);
    }
    assert!(!net.clients[b].media(net.clients[b].video).is_empty());
    // More than the throttle interval without any request.
    net.run_for(Duration::from_millis(600));
    net.clients[a].events.clear();
    let before = net.sfu.stats().keyframe_requests_forwarded;

    let video_b = net.clients[b].video;
    net.clients[b]
        .rtc
        .writer(video_b)
        .expect("writer")
        .request_keyframe(None, KeyframeRequestKind::Pli)
        .expect("PLI possible");
    let video_a = net.clients[a].video;
    net.run_until(Duration::from_secs(2), "keyframe request at A", |net| {
        net.clients[a].keyframe_requests(video_a) > 0
    });
    assert_eq!(net.sfu.stats().keyframe_requests_forwarded, before + 1);

    // A second request right away is throttled.
    net.clients[a].events.clear();
    net.clients[b]
        .rtc
        .writer(video_b)
        .expect("writer")
        .request_keyframe(None, KeyframeRequestKind::Pli)
        .expect("PLI possible");
    net.run_for(Duration::from_millis(100));
    assert_eq!(net.clients[a].keyframe_requests(video_a), 0, "throttled");
}

#[test]
fn lost_video_makes_the_sfu_request_a_keyframe_upstream() {
    let (mut net, a, b) = two_clients(default_codecs);
    for tick in 0..20 {
        net.talk(tick, Codec::Vp8, vp8_frame);
    }
    net.run_for(Duration::from_millis(600));
    let video_a = net.clients[a].video;
    net.clients[a].events.clear();
    assert_eq!(net.sfu.stats().keyframe_requests_generated, 0);

    let vp8 = net.clients[a]
        .rtc
        .writer(video_a)
        .expect("writer")
        .payload_params()
        .find(|p| p.spec().codec == Codec::Vp8)
        .copied()
        .expect("VP8 negotiated");
    net.lossy = Some(Lossy {
        from: net.clients[a].addr,
        video_pt: *vp8.pt(),
        rtx_pt: *vp8.resend().expect("RTX negotiated"),
        video_lost: true,
    });
    for tick in 20..26 {
        net.talk(tick, Codec::Vp8, vp8_frame);
    }
    if let Some(lossy) = &mut net.lossy {
        lossy.video_lost = false;
    }
    for tick in 26..60 {
        net.talk(tick, Codec::Vp8, vp8_frame);
    }
    assert!(
        net.sfu.stats().keyframe_requests_generated >= 1,
        "{:?}",
        net.sfu.stats()
    );
    assert!(net.clients[a].keyframe_requests(video_a) >= 1);
    // B still gets the frames after the gap.
    let video_b = net.clients[b].video;
    let late = payloads(&net.clients[b].media(video_b));
    assert!(late.contains(&vp8_frame(1, 58)));
}

#[test]
fn h264_only_offers_forward_h264() {
    let (mut net, a, b) = two_clients(h264_only);
    let video_a = net.clients[a].video;
    let answer_has_vp8 = net.clients[a]
        .rtc
        .writer(video_a)
        .expect("writer")
        .payload_params()
        .any(|p| p.spec().codec == Codec::Vp8);
    assert!(!answer_has_vp8);
    for tick in 0..30 {
        net.talk(tick, Codec::H264, h264_frame);
    }
    net.run_for(Duration::from_millis(200));
    for (to, from) in [(b, a), (a, b)] {
        let from_id = net.clients[from].id.0;
        let client = &net.clients[to];
        let video = client.media(client.video);
        assert!(
            video.len() >= 10,
            "client {to}: {} H.264 frames",
            video.len()
        );
        for frame in &video {
            assert_eq!(frame.params.spec().codec, Codec::H264);
            let expected = h264_frame(from_id, frame.data[8]);
            assert!(
                frame.data.ends_with(&expected[4..]),
                "NAL unit intact: {:?}",
                &frame.data[..12.min(frame.data.len())]
            );
        }
        assert!(client.media(client.audio).len() >= 20);
    }
}

#[test]
fn removed_participant_is_freed_and_its_datagrams_refused() {
    let (mut net, a, b) = two_clients(default_codecs);
    for tick in 0..10 {
        net.talk(tick, Codec::Vp8, vp8_frame);
    }
    let replay = net.clients[a]
        .sent
        .last()
        .expect("A sent datagrams")
        .clone();
    let a_addr = net.clients[a].addr;
    let accepted = net.sfu.handle_receive(net.now, a_addr, sfu_addr(), &replay);
    assert!(accepted, "A's datagram is accepted while A is in the room");

    net.sfu.remove_participant(ParticipantId(1));
    assert_eq!(net.sfu.participant_count(), 1);
    assert_eq!(net.sfu.room_count(), 1);
    assert_eq!(net.sfu.room_of(ParticipantId(2)), Some(ROOM));
    assert!(!net.sfu.handle_receive(net.now, a_addr, sfu_addr(), &replay));
    // Also every datagram A sent during the call, STUN included.
    let sent = net.clients[a].sent.clone();
    assert!(
        sent.iter()
            .all(|d| !net.sfu.handle_receive(net.now, a_addr, sfu_addr(), d))
    );

    // B's call goes on (nobody to forward to), and A's timers no longer run.
    net.clients[a].plugged = false;
    net.run_for(Duration::from_millis(500));
    assert_eq!(net.sfu.participant_count(), 1);

    net.sfu.remove_participant(ParticipantId(2));
    net.sfu.remove_participant(ParticipantId(2));
    assert_eq!(net.sfu.participant_count(), 0);
    assert_eq!(net.sfu.room_count(), 0);
    assert_eq!(net.sfu.poll_timeout(), None);
    let b_addr = net.clients[b].addr;
    let last_b = net.clients[b].sent.last().expect("B sent").clone();
    assert!(!net.sfu.handle_receive(net.now, b_addr, sfu_addr(), &last_b));
    assert!(
        !net.sfu_events
            .iter()
            .any(|e| matches!(e, SfuEvent::Disconnected { .. })),
        "removal emits no Disconnected"
    );
}

#[test]
fn silent_client_is_disconnected_and_freed() {
    let (mut net, _a, b) = two_clients(default_codecs);
    net.clients[b].plugged = false;
    net.run_until(Duration::from_secs(60), "B disconnected", |net| {
        net.sfu_events.iter().any(
            |e| matches!(e, SfuEvent::Disconnected { participant, .. } if *participant == ParticipantId(2)),
        )
    });
    assert_eq!(net.sfu.participant_count(), 1);
    assert_eq!(net.sfu.room_of(ParticipantId(2)), None);
}

#[test]
fn offer_that_never_connects_times_out() {
    let mut net = Net::new();
    let a = net.add_client(1, "10.0.0.2:5000", default_codecs);
    let offer = net.clients[a].offer.clone();
    net.sfu
        .handle_offer(net.now, ROOM, ParticipantId(1), &offer)
        .expect("answer");
    let deadline = net.sfu.poll_timeout().expect("a timer");
    assert!(deadline <= net.now + CONNECT_TIMEOUT);
    net.sfu.handle_timeout(net.now + CONNECT_TIMEOUT);
    let events: Vec<SfuEvent> = std::iter::from_fn(|| net.sfu.poll_event()).collect();
    assert!(matches!(
        events.as_slice(),
        [SfuEvent::Disconnected {
            participant: ParticipantId(1),
            ..
        }]
    ));
    assert_eq!(net.sfu.participant_count(), 0);
    assert_eq!(net.sfu.room_count(), 0);
}

#[test]
fn bad_input_is_refused_without_state() {
    let mut net = Net::new();
    let err = net
        .sfu
        .handle_offer(net.now, ROOM, ParticipantId(9), "v=0\r\nnonsense")
        .unwrap_err();
    assert!(matches!(err, SfuError::BadSdp(_)), "{err}");
    assert_eq!(net.sfu.participant_count(), 0);
    assert_eq!(net.sfu.room_count(), 0);
    assert!(matches!(
        net.sfu
            .add_remote_candidate(ParticipantId(9), "candidate:garbage"),
        Err(SfuError::BadCandidate(_))
    ));
    for junk in [
        &[][..],
        &[0u8; 3][..],
        &[0x80, 0x60, 1, 2][..],
        &[0x16; 40][..],
        &[0u8; 60][..],
    ] {
        assert!(
            !net.sfu
                .handle_receive(net.now, addr("10.9.9.9:9"), sfu_addr(), junk)
        );
    }

    // Renegotiating into another room is refused.
    let a = net.add_client(1, "10.0.0.2:5000", default_codecs);
    let offer = net.clients[a].offer.clone();
    net.sfu
        .handle_offer(net.now, ROOM, ParticipantId(1), &offer)
        .expect("answer");
    let err = net
        .sfu
        .handle_offer(net.now, "other", ParticipantId(1), &offer)
        .unwrap_err();
    assert!(matches!(err, SfuError::WrongRoom { .. }), "{err}");
    assert_eq!(net.sfu.room_count(), 1);
}
