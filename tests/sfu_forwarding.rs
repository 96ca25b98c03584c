//! The sans-IO SFU with real str0m peers over an in-memory network and a virtual clock: no sockets,
//! no sleeps. Datagrams are delivered by address; when none is in flight, time jumps to the earliest
//! timeout of any party. Clients offer only their own `sendonly` m-lines; the SFU's offers
//! (`SfuEvent::Offer`) add the other members' tracks and are answered by the clients (automatically
//! unless a test holds them back).

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::format::Codec;
use str0m::media::{Direction, KeyframeRequestKind, MediaData, MediaKind, MediaTime, Mid};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, Input, Output, Rtc, RtcConfig};
use switchboard::sfu::{
    CONNECT_TIMEOUT, IDLE_TIMEOUT, KEYFRAME_REQUEST_INTERVAL, OutTrack, ParticipantId, Sfu,
    SfuConfig, SfuError, SfuEvent, TrackSource, install_crypto_provider,
};

const ROOM: &str = "room-1";

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("test address")
}

fn sfu_addr() -> SocketAddr {
    addr("10.0.0.1:4000")
}

fn label(id: ParticipantId) -> String {
    format!("user-{}", id.0)
}

struct Datagram {
    source: SocketAddr,
    destination: SocketAddr,
    contents: Vec<u8>,
}

/// A browser stand-in: a full (non-lite) str0m peer offering one sendonly audio and one sendonly
/// video m-line of its own.
struct Client {
    id: ParticipantId,
    addr: SocketAddr,
    rtc: Rtc,
    audio: Mid,
    video: Mid,
    /// Its own outstanding offer.
    pending: Option<SdpPendingOffer>,
    offer: String,
    events: Vec<Event>,
    timeout: Option<Instant>,
    /// Every datagram this client sent to the SFU, for replays.
    sent: Vec<Vec<u8>>,
    /// Unplugged clients neither send nor receive.
    plugged: bool,
    /// Its STUN binding requests are lost (everything else goes through), as from a peer that
    /// sends no consent checks once connected (libnice 0.1.21 sends only binding indications).
    drop_binding_requests: bool,
    /// Answer server offers as they come (else they wait in `inbox`).
    auto_answer: bool,
    inbox: VecDeque<(String, Vec<OutTrack>)>,
    /// The `tracks` of every server offer answered, in order.
    offers: Vec<Vec<OutTrack>>,
    /// Every server m-line ever announced, by mid.
    track_of: HashMap<String, OutTrack>,
    /// Audio level (-dBov) put on written audio frames, if any.
    level: Option<u8>,
}

impl Client {
    fn new(
        id: u64,
        address: &str,
        now: Instant,
        codecs: fn(RtcConfig) -> RtcConfig,
        direction: Direction,
    ) -> Client {
        let address = addr(address);
        let mut rtc = codecs(Rtc::builder()).build(now);
        let host = Candidate::host(address, "udp").expect("host candidate");
        rtc.add_local_candidate(host);
        let mut change = rtc.sdp_api();
        let audio = change.add_media(MediaKind::Audio, direction, None, None, None);
        let video = change.add_media(MediaKind::Video, direction, None, None, None);
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
            drop_binding_requests: false,
            auto_answer: true,
            inbox: VecDeque::new(),
            offers: Vec::new(),
            track_of: HashMap::new(),
            level: None,
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

    /// Accepts a server offer (rolling back an own offer, as a polite peer does) and returns the
    /// answer.
    fn answer_server_offer(&mut self, sdp: &str, tracks: Vec<OutTrack>) -> String {
        self.pending = None;
        let offer = SdpOffer::from_sdp_string(sdp).expect("server offer parses");
        let answer = self
            .rtc
            .sdp_api()
            .accept_offer(offer)
            .expect("server offer accepted");
        for t in &tracks {
            self.track_of.insert(t.mid.clone(), t.clone());
        }
        self.offers.push(tracks);
        answer.to_sdp_string()
    }

    /// The latest server m-line for `publisher`'s `source` track.
    fn mid_for(&self, publisher: ParticipantId, source: TrackSource) -> Option<Mid> {
        let tracks = self.offers.last()?;
        tracks
            .iter()
            .find(|t| t.publisher == publisher && t.source == source)
            .map(|t| Mid::from(t.mid.as_str()))
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
        let level = self.level;
        let mut writer = self.rtc.writer(mid).expect("writer");
        let pt = writer
            .payload_params()
            .find(|p| p.spec().codec == codec)
            .unwrap_or_else(|| panic!("{codec:?} negotiated"))
            .pt();
        if let (Some(level), Codec::Opus) = (level, codec) {
            writer = writer.audio_level(-(level as i8), level < 127);
        }
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

    /// Frames received on m-lines announced for `publisher`'s `source` track.
    fn media_from(&self, publisher: ParticipantId, source: TrackSource) -> Vec<&MediaData> {
        self.events
            .iter()
            .filter_map(|e| match e {
                Event::MediaData(d) => Some(d),
                _ => None,
            })
            .filter(|d| {
                self.track_of
                    .get(&d.mid.to_string())
                    .is_some_and(|t| t.publisher == publisher && t.source == source)
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
    /// Datagrams to the SFU from this address are held in `held` instead of delivered (a media
    /// worker that is descheduled while its socket fills).
    hold_from: Option<SocketAddr>,
    held: Vec<Datagram>,
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
            hold_from: None,
            held: Vec::new(),
        }
    }

    fn add_client(&mut self, id: u64, address: &str, codecs: fn(RtcConfig) -> RtcConfig) -> usize {
        let client = Client::new(id, address, self.now, codecs, Direction::SendOnly);
        self.clients.push(client);
        self.clients.len() - 1
    }

    fn join(&mut self, client: usize, offer: &str) {
        let id = self.clients[client].id;
        let answer = self
            .sfu
            .handle_offer(self.now, ROOM, id, &label(id), offer, &[])
            .expect("offer answered");
        assert!(answer.contains("a=ice-lite"), "the SFU answers as ICE-lite");
        assert!(
            answer.contains("10.0.0.1 4000 typ host"),
            "answer carries the host candidate"
        );
        assert!(
            answer.contains("urn:ietf:params:rtp-hdrext:ssrc-audio-level"),
            "the answer keeps the audio-level extension"
        );
        self.clients[client].accept_answer(&answer);
    }

    /// Adds a client and joins with its full offer.
    fn add_and_join(
        &mut self,
        id: u64,
        address: &str,
        codecs: fn(RtcConfig) -> RtcConfig,
    ) -> usize {
        let c = self.add_client(id, address, codecs);
        let offer = self.clients[c].offer.clone();
        self.join(c, &offer);
        c
    }

    /// The client's re-offer of `change`'s result, with `sources`; returns the SFU's verdict.
    fn reoffer(
        &mut self,
        client: usize,
        sources: &[(String, TrackSource)],
    ) -> Result<(), SfuError> {
        let id = self.clients[client].id;
        let offer = self.clients[client].offer.clone();
        let answer = self
            .sfu
            .handle_offer(self.now, ROOM, id, &label(id), &offer, sources)?;
        self.clients[client].accept_answer(&answer);
        Ok(())
    }

    fn client(&self, id: ParticipantId) -> usize {
        self.clients
            .iter()
            .position(|c| c.id == id)
            .expect("known client")
    }

    /// Answers the server offers waiting at `client`.
    fn answer_inbox(&mut self, client: usize) {
        while let Some((sdp, tracks)) = self.clients[client].inbox.pop_front() {
            let answer = self.clients[client].answer_server_offer(&sdp, tracks);
            let id = self.clients[client].id;
            self.sfu
                .handle_answer(self.now, id, &answer)
                .expect("answer to the server offer accepted");
        }
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
                        if !c.plugged || (c.drop_binding_requests && is_binding_request(&contents))
                        {
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
            if let SfuEvent::Offer {
                participant,
                sdp,
                tracks,
            } = &e
                && let Some(c) = self.clients.iter_mut().find(|c| c.id == *participant)
            {
                c.inbox.push_back((sdp.clone(), tracks.clone()));
            }
            self.sfu_events.push(e);
        }
        for i in 0..self.clients.len() {
            if self.clients[i].auto_answer && !self.clients[i].inbox.is_empty() {
                self.answer_inbox(i);
                return;
            }
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
            if self.hold_from == Some(d.source) {
                self.held.push(d);
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
            (0..n).all(|i| {
                !net.clients[i].plugged
                    || (net.sfu_connected(i) && net.clients[i].rtc.is_connected())
            })
        });
        // Let DTLS settle on the SFU side too, and the server offers be answered.
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

    /// Server offers made to `id`, in order.
    fn offers_to(&self, id: ParticipantId) -> Vec<&Vec<OutTrack>> {
        self.sfu_events
            .iter()
            .filter_map(|e| match e {
                SfuEvent::Offer {
                    participant,
                    tracks,
                    ..
                } if *participant == id => Some(tracks),
                _ => None,
            })
            .collect()
    }
}

/// A STUN Binding request (RFC 8489 §5: type 0x0001, magic cookie 0x2112A442).
fn is_binding_request(datagram: &[u8]) -> bool {
    datagram.get(..2) == Some(&[0x00, 0x01])
        && datagram.get(4..8) == Some(&[0x21, 0x12, 0xa4, 0x42])
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

fn vp8_only(c: RtcConfig) -> RtcConfig {
    c.clear_codecs().enable_opus(true, false).enable_vp8(true)
}

/// Two clients, A announcing its address by trickle before its offer (C036) and B only through
/// its connectivity checks (peer-reflexive, like a browser with mDNS-only candidates).
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

/// Checks that `to` received `from`'s audio and video on the m-lines announced for them.
fn assert_receives(
    net: &Net,
    to: usize,
    from: usize,
    ticks: u8,
    video_frame: fn(u64, u8) -> Vec<u8>,
) {
    let from_id = net.clients[from].id;
    let client = &net.clients[to];
    let audio = payloads(&client.media_from(from_id, TrackSource::Audio));
    let video = payloads(&client.media_from(from_id, TrackSource::Camera));
    let sent_audio: Vec<_> = (0..ticks).map(|t| audio_frame(from_id.0, t)).collect();
    let sent_video: Vec<_> = (0..ticks)
        .step_by(2)
        .map(|t| video_frame(from_id.0, t))
        .collect();
    let min_audio = usize::from(ticks) * 4 / 5;
    assert!(
        audio.len() >= min_audio,
        "client {to} from {from}: {} audio frames",
        audio.len()
    );
    assert!(
        video.len() >= min_audio / 2,
        "client {to} from {from}: {} video frames",
        video.len()
    );
    assert!(
        audio.iter().all(|p| sent_audio.contains(p)),
        "audio payloads are {from}'s"
    );
    assert!(
        video.iter().all(|p| sent_video.contains(p)),
        "video payloads are {from}'s"
    );
}

#[test]
fn one_to_one_call_forwards_audio_and_video_both_ways() {
    let (mut net, a, b) = two_clients(default_codecs);
    for (me, other) in [(a, b), (b, a)] {
        let other_id = net.clients[other].id;
        let offers = net.offers_to(net.clients[me].id);
        assert_eq!(offers.len(), 1, "one server offer each");
        let mut sources: Vec<_> = offers[0].iter().map(|t| (t.publisher, t.source)).collect();
        sources.sort_by_key(|(_, s)| s.as_str());
        assert_eq!(
            sources,
            [
                (other_id, TrackSource::Audio),
                (other_id, TrackSource::Camera)
            ]
        );
    }
    for tick in 0..50 {
        net.talk(tick, Codec::Vp8, vp8_frame);
    }
    net.run_for(Duration::from_millis(200));

    for (to, from) in [(b, a), (a, b)] {
        assert_receives(&net, to, from, 50, vp8_frame);
        let client = &net.clients[to];
        let from_id = net.clients[from].id;
        assert!(
            client
                .media_from(from_id, TrackSource::Camera)
                .iter()
                .all(|d| d.params.spec().codec == Codec::Vp8)
        );
        // Nothing arrives on the client's own sendonly m-lines.
        assert!(client.media(client.audio).is_empty());
        assert!(client.media(client.video).is_empty());
    }
    let stats = net.sfu.stats();
    assert!(stats.frames_forwarded >= 140, "{stats:?}");
    assert_eq!(stats.renegotiations, 2);
    assert!(stats.packets_in > 0 && stats.bytes_in > stats.packets_in);
    assert!(stats.packets_out > 0 && stats.bytes_out > stats.packets_out);
    assert_eq!(net.sfu.track_count(), 4);
    assert_eq!(net.sfu.subscription_count(), 4);
}

#[test]
fn sendrecv_offers_are_taken_as_sendonly() {
    let mut net = Net::new();
    for (id, address) in [(1, "10.0.0.2:5000"), (2, "10.0.0.3:5000")] {
        let client = Client::new(id, address, net.now, default_codecs, Direction::SendRecv);
        net.clients.push(client);
        let c = net.clients.len() - 1;
        let offer = net.clients[c].offer.clone();
        net.join(c, &offer);
    }
    net.connect_all();
    for tick in 0..30 {
        net.talk(tick, Codec::Vp8, vp8_frame);
    }
    net.run_for(Duration::from_millis(200));
    assert_receives(&net, 0, 1, 30, vp8_frame);
    assert_receives(&net, 1, 0, 30, vp8_frame);
    for c in &net.clients {
        assert!(c.media(c.audio).is_empty() && c.media(c.video).is_empty());
    }
}

#[test]
fn keyframe_request_from_subscriber_reaches_publisher() {
    let (mut net, a, b) = two_clients(default_codecs);
    for tick in 0..50 {
        net.talk(tick, Codec::Vp8, vp8_frame);
    }
    let video_b = net.clients[b]
        .mid_for(ParticipantId(1), TrackSource::Camera)
        .expect("B has an m-line for A's camera");
    assert!(!net.clients[b].media(video_b).is_empty());
    // More than the throttle interval without any request.
    net.run_for(Duration::from_millis(600));
    net.clients[a].events.clear();
    let before = net.sfu.stats().keyframe_requests_forwarded;

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
    let plis = net.sfu.stats().plis_received;

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
    // Both PLIs show in the RTCP feedback counters (str0m reports stats once a second).
    net.run_for(Duration::from_millis(1100));
    assert!(
        net.sfu.stats().plis_received >= plis + 2,
        "{:?}",
        net.sfu.stats()
    );
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
    let generated = net.sfu.stats().keyframe_requests_generated;

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
        net.sfu.stats().keyframe_requests_generated > generated,
        "{:?}",
        net.sfu.stats()
    );
    assert!(net.clients[a].keyframe_requests(video_a) >= 1);
    net.run_for(Duration::from_millis(1100));
    assert!(net.sfu.stats().plis_sent >= 1, "{:?}", net.sfu.stats());
    // B still gets the frames after the gap.
    let late = payloads(&net.clients[b].media_from(ParticipantId(1), TrackSource::Camera));
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
        let from_id = net.clients[from].id;
        let client = &net.clients[to];
        let video = client.media_from(from_id, TrackSource::Camera);
        assert!(
            video.len() >= 10,
            "client {to}: {} H.264 frames",
            video.len()
        );
        for frame in &video {
            assert_eq!(frame.params.spec().codec, Codec::H264);
            let expected = h264_frame(from_id.0, frame.data[8]);
            assert!(
                frame.data.ends_with(&expected[4..]),
                "NAL unit intact: {:?}",
                &frame.data[..12.min(frame.data.len())]
            );
        }
        assert!(client.media_from(from_id, TrackSource::Audio).len() >= 20);
    }
    assert!(
        !net.sfu_events
            .iter()
            .any(|e| matches!(e, SfuEvent::CodecUnsupported { .. }))
    );
}

fn vp9_only(c: RtcConfig) -> RtcConfig {
    c.clear_codecs().enable_opus(true, false).enable_vp9(true)
}

fn av1_only(c: RtcConfig) -> RtcConfig {
    c.clear_codecs().enable_opus(true, false).enable_av1(true)
}

/// A VP9 frame with a marker: the SFU forwards it without looking inside.
fn vp9_frame(from: u64, tick: u8) -> Vec<u8> {
    let mut f = vec![0x82, 0x49, 0x83, from as u8, tick];
    f.extend(std::iter::repeat_n(0x22, 250));
    f
}

/// An AV1 temporal unit: one OBU_FRAME (type 6, `obu_has_size_field`, AV1 spec §5.3) whose
/// payload starts with a marker.
fn av1_frame(from: u64, tick: u8) -> Vec<u8> {
    let mut payload = vec![0xa5, from as u8, tick];
    payload.extend(std::iter::repeat_n(0x22, 100));
    let mut f = vec![(6 << 3) | 0x02, payload.len() as u8];
    f.extend(payload);
    f
}

/// Clients offering only VP9 (or only AV1) get it answered and forwarded between them.
fn only_codec_is_forwarded(
    codecs: fn(RtcConfig) -> RtcConfig,
    codec: Codec,
    frame: fn(u64, u8) -> Vec<u8>,
) {
    let (mut net, a, b) = two_clients(codecs);
    for tick in 0..30 {
        net.talk(tick, codec, frame);
    }
    net.run_for(Duration::from_millis(200));
    for (to, from) in [(b, a), (a, b)] {
        let from_id = net.clients[from].id;
        let video = net.clients[to].media_from(from_id, TrackSource::Camera);
        assert!(
            video.len() >= 10,
            "client {to}: {} {codec} frames",
            video.len()
        );
        for frame in &video {
            assert_eq!(frame.params.spec().codec, codec);
            // The byte before the marker: last of the VP9 prefix, or the AV1 payload's first.
            let from = from_id.0 as u8;
            assert!(
                frame
                    .data
                    .windows(3)
                    .any(|w| (w[0] == 0x83 || w[0] == 0xa5) && w[1] == from && w[2] < 30),
                "the frame carries its marker: {:?}",
                &frame.data[..8.min(frame.data.len())]
            );
        }
    }
    assert!(
        !net.sfu_events
            .iter()
            .any(|e| matches!(e, SfuEvent::CodecUnsupported { .. }))
    );
}

#[test]
fn vp9_only_offers_forward_vp9() {
    only_codec_is_forwarded(vp9_only, Codec::Vp9, vp9_frame);
}

#[test]
fn av1_only_offers_forward_av1() {
    only_codec_is_forwarded(av1_only, Codec::Av1, av1_frame);
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
    assert_eq!(net.sfu.track_count(), 2);
    assert!(!net.sfu.handle_receive(net.now, a_addr, sfu_addr(), &replay));
    // Also every datagram A sent during the call, STUN included.
    let sent = net.clients[a].sent.clone();
    assert!(
        sent.iter()
            .all(|d| !net.sfu.handle_receive(net.now, a_addr, sfu_addr(), d))
    );

    // B's call goes on: it gets an offer stopping A's tracks, and A's timers no longer run.
    net.clients[a].plugged = false;
    let mids: Vec<Mid> = [TrackSource::Audio, TrackSource::Camera]
        .iter()
        .map(|s| net.clients[b].mid_for(ParticipantId(1), *s).expect("mid"))
        .collect();
    net.run_for(Duration::from_millis(500));
    assert_eq!(net.sfu.participant_count(), 1);
    let offers = net.offers_to(ParticipantId(2));
    assert_eq!(offers.len(), 2);
    assert!(offers[1].is_empty(), "A's tracks are gone: {:?}", offers[1]);
    for mid in mids {
        let media = net.clients[b].rtc.media(mid).expect("m-line");
        assert_eq!(
            media.direction(),
            Direction::Inactive,
            "m-line {mid} inactive at B (kept for the next track)"
        );
    }
    assert_eq!(net.sfu.subscription_count(), 0);

    net.sfu.remove_participant(ParticipantId(2));
    net.sfu.remove_participant(ParticipantId(2));
    assert_eq!(net.sfu.participant_count(), 0);
    assert_eq!(net.sfu.room_count(), 0);
    assert_eq!(net.sfu.track_count(), 0);
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

/// When `id`'s `Disconnected` was emitted, with its reason.
fn disconnected(net: &Net, id: ParticipantId) -> Option<String> {
    net.sfu_events.iter().find_map(|e| match e {
        SfuEvent::Disconnected {
            participant,
            reason,
        } if *participant == id => Some(reason.clone()),
        _ => None,
    })
}

#[test]
fn silent_client_is_disconnected_and_freed() {
    let (mut net, _a, b) = two_clients(default_codecs);
    net.clients[b].plugged = false;
    let unplugged = net.now;
    net.run_until(
        IDLE_TIMEOUT + Duration::from_secs(5),
        "B disconnected",
        |net| disconnected(net, ParticipantId(2)).is_some(),
    );
    // Ended by the SFU's idle timeout, not by str0m's 15 s ICE-lite binding-request timeout.
    let silence = net.now - unplugged;
    assert!(
        silence >= IDLE_TIMEOUT - Duration::from_secs(1)
            && silence <= IDLE_TIMEOUT + Duration::from_secs(1),
        "B dropped after {silence:?} of silence"
    );
    let reason = disconnected(&net, ParticipantId(2)).unwrap_or_default();
    assert!(reason.contains("nothing received"), "{reason}");
    assert_eq!(net.sfu.participant_count(), 1);
    assert_eq!(net.sfu.room_of(ParticipantId(2)), None);
    // A's m-lines for B are stopped.
    net.run_for(Duration::from_millis(200));
    let offers = net.offers_to(ParticipantId(1));
    assert!(offers.last().is_some_and(|t| t.is_empty()), "{offers:?}");
}

/// A peer that sends no binding requests once connected (Debian 12's libnice 0.1.21 in GStreamer
/// 1.22 keeps the path with a binding indication every 25 s) while media flows both ways: str0m's
/// ICE-lite agent gives its pair up after 15 s without requests, but the SFU keeps the connection as
/// long as datagrams arrive, and media keeps flowing both ways. Silent, it is dropped after
/// `IDLE_TIMEOUT`.
#[test]
fn peer_without_binding_requests_stays_connected_while_media_flows() {
    let (mut net, a, b) = two_clients(default_codecs);
    net.clients[a].drop_binding_requests = true;
    let media = |net: &Net, to: usize, from: usize, source: TrackSource| {
        net.clients[to]
            .media_from(net.clients[from].id, source)
            .len()
    };
    let counts = |net: &Net| {
        [
            media(net, a, b, TrackSource::Audio),
            media(net, a, b, TrackSource::Camera),
            media(net, b, a, TrackSource::Audio),
            media(net, b, a, TrackSource::Camera),
        ]
    };
    let start = net.now;
    let mut tick = 0u8;
    // Well past str0m's 15 s and the idle timeout.
    while net.now - start < IDLE_TIMEOUT + Duration::from_secs(10) {
        net.talk(tick, Codec::Vp8, vp8_frame);
        tick = tick.wrapping_add(1);
    }
    let before = counts(&net);
    let window = Duration::from_secs(5);
    let window_start = net.now;
    let mut talks = 0;
    while net.now - window_start < window {
        net.talk(tick, Codec::Vp8, vp8_frame);
        tick = tick.wrapping_add(1);
        talks += 1;
    }
    assert_eq!(disconnected(&net, ParticipantId(1)), None, "A is kept");
    assert_eq!(net.sfu.participant_count(), 2);
    // Of what each sent in the last 5 s (an audio frame per talk, a video frame every other),
    // nearly all arrived.
    let after = counts(&net);
    let got: Vec<usize> = after.iter().zip(before).map(|(n, m)| n - m).collect();
    let (audio, video) = (talks * 9 / 10, talks / 2 * 9 / 10);
    let want = [audio, video, audio, video];
    assert!(
        got.iter().zip(want).all(|(g, w)| *g >= w),
        "frames in the last 5 s (A<-B audio, video, B<-A audio, video): {got:?}, want {want:?}"
    );
    assert!(
        !net.sfu_events
            .iter()
            .any(|e| matches!(e, SfuEvent::Disconnected { .. })),
        "no one disconnected"
    );

    // Silent from now on: dropped after the idle timeout.
    net.clients[a].plugged = false;
    let unplugged = net.now;
    net.run_until(
        IDLE_TIMEOUT + Duration::from_secs(5),
        "A disconnected",
        |net| disconnected(net, ParticipantId(1)).is_some(),
    );
    let silence = net.now - unplugged;
    assert!(
        silence >= IDLE_TIMEOUT - Duration::from_secs(1)
            && silence <= IDLE_TIMEOUT + Duration::from_secs(1),
        "A dropped after {silence:?} of silence"
    );
    assert_eq!(net.sfu.participant_count(), 1);
}

#[test]
fn offer_that_never_connects_times_out() {
    let mut net = Net::new();
    let a = net.add_client(1, "10.0.0.2:5000", default_codecs);
    let offer = net.clients[a].offer.clone();
    net.sfu
        .handle_offer(net.now, ROOM, ParticipantId(1), "user-1", &offer, &[])
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
        .handle_offer(net.now, ROOM, ParticipantId(9), "u", "v=0\r\nnonsense", &[])
        .unwrap_err();
    assert!(matches!(err, SfuError::BadSdp(_)), "{err}");
    assert_eq!(net.sfu.participant_count(), 0);
    assert_eq!(net.sfu.room_count(), 0);
    assert!(matches!(
        net.sfu
            .add_remote_candidate(ParticipantId(9), "candidate:garbage"),
        Err(SfuError::BadCandidate(_))
    ));
    assert!(matches!(
        net.sfu.handle_answer(net.now, ParticipantId(9), "v=0"),
        Err(SfuError::UnknownParticipant(_))
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
        .handle_offer(net.now, ROOM, ParticipantId(1), "user-1", &offer, &[])
        .expect("answer");
    let err = net
        .sfu
        .handle_offer(net.now, "other", ParticipantId(1), "user-1", &offer, &[])
        .unwrap_err();
    assert!(matches!(err, SfuError::WrongRoom { .. }), "{err}");
    assert_eq!(net.sfu.room_count(), 1);
    // An answer without a server offer.
    let err = net
        .sfu
        .handle_answer(net.now, ParticipantId(1), "v=0")
        .unwrap_err();
    assert!(matches!(err, SfuError::NoPendingOffer), "{err}");
}

// ---- group calls ----

fn ids(tracks: &[OutTrack]) -> Vec<(ParticipantId, TrackSource)> {
    let mut v: Vec<_> = tracks.iter().map(|t| (t.publisher, t.source)).collect();
    v.sort_by_key(|(p, s)| (*p, s.as_str()));
    v
}

fn audio_and_camera(of: &[u64]) -> Vec<(ParticipantId, TrackSource)> {
    let mut v: Vec<_> = of
        .iter()
        .flat_map(|id| {
            [
                (ParticipantId(*id), TrackSource::Audio),
                (ParticipantId(*id), TrackSource::Camera),
            ]
        })
        .collect();
    v.sort_by_key(|(p, s)| (*p, s.as_str()));
    v
}

/// Three clients join one after another before any answer or ICE: the server offers for the
/// later joiners are batched behind the outstanding ones.
fn three_clients() -> Net {
    let mut net = Net::new();
    net.add_and_join(1, "10.0.0.2:5000", default_codecs);
    net.add_and_join(2, "10.0.0.3:5000", default_codecs);
    net.add_and_join(3, "10.0.0.4:5000", default_codecs);
    net.connect_all();
    net
}

#[test]
fn three_party_room_forwards_everyone_to_everyone() {
    let mut net = three_clients();
    // Offers were made and answered before ICE connected (str0m renegotiates before connecting).
    for (me, others) in [(1, [2, 3]), (2, [1, 3]), (3, [1, 2])] {
        let offers = net.offers_to(ParticipantId(me));
        let last = offers.last().expect("an offer");
        assert_eq!(ids(last), audio_and_camera(&others), "client {me}");
        // At most one outstanding: 1 got B's tracks, then C's in a second offer.
        assert!(offers.len() <= 2, "client {me}: {offers:?}");
    }
    assert_eq!(net.offers_to(ParticipantId(1)).len(), 2);
    assert_eq!(net.offers_to(ParticipantId(3)).len(), 1);
    for c in &net.clients {
        let labels: Vec<String> = c
            .track_of
            .values()
            .map(|t| {
                let mid = Mid::from(t.mid.as_str());
                c.rtc.media(mid).expect("m-line").stream_id().to_string()
            })
            .collect();
        assert!(
            labels.iter().all(|l| l.starts_with("user-")),
            "msid stream ids are the publishers' labels: {labels:?}"
        );
    }

    for tick in 0..40 {
        net.talk(tick, Codec::Vp8, vp8_frame);
    }
    net.run_for(Duration::from_millis(200));
    for to in 0..3 {
        for from in (0..3).filter(|f| *f != to) {
            assert_receives(&net, to, from, 40, vp8_frame);
        }
    }
    assert_eq!(net.sfu.track_count(), 6);
    assert_eq!(net.sfu.subscription_count(), 12);
}

#[test]
fn late_joiner_gets_one_offer_with_everyones_tracks() {
    let mut net = three_clients();
    for tick in 0..10 {
        net.talk(tick, Codec::Vp8, vp8_frame);
    }
    let before: Vec<usize> = (1..=3)
        .map(|id| net.offers_to(ParticipantId(id)).len())
        .collect();
    let generated = net.sfu.stats().keyframe_requests_generated;
    for c in &mut net.clients {
        c.events.clear();
    }

    let d = net.add_and_join(4, "10.0.0.5:5000", default_codecs);
    net.connect_all();
    for (i, id) in (1..=3).enumerate() {
        let offers = net.offers_to(ParticipantId(id));
        assert_eq!(offers.len(), before[i] + 1, "client {id}");
        let added: Vec<_> = ids(offers[offers.len() - 1])
            .into_iter()
            .filter(|(p, _)| *p == ParticipantId(4))
            .collect();
        assert_eq!(added, audio_and_camera(&[4]));
    }
    let offers = net.offers_to(ParticipantId(4));
    assert_eq!(offers.len(), 1);
    assert_eq!(ids(offers[0]), audio_and_camera(&[1, 2, 3]));

    // Each camera is asked for a keyframe for the new subscriber (within the publisher's
    // throttle interval: the others' subscriptions asked for one shortly before).
    net.run_for(KEYFRAME_REQUEST_INTERVAL + Duration::from_millis(100));
    for c in 0..3 {
        let video = net.clients[c].video;
        assert!(net.clients[c].keyframe_requests(video) >= 1, "client {c}");
    }
    assert!(net.sfu.stats().keyframe_requests_generated >= generated + 3);

    let ticks = 40;
    for tick in 0..ticks {
        net.talk(tick, Codec::Vp8, vp8_frame);
    }
    net.run_for(Duration::from_millis(200));
    for from in 0..3 {
        assert_receives(&net, d, from, ticks, vp8_frame);
    }
    assert!(
        !net.clients[0]
            .media_from(ParticipantId(4), TrackSource::Camera)
            .is_empty()
    );
}

#[test]
fn screen_share_is_added_and_stopped_by_renegotiation() {
    let mut net = three_clients();
    let a = net.client(ParticipantId(1));
    // A adds a screen-share m-line.
    let mut change = net.clients[a].rtc.sdp_api();
    let screen = change.add_media(MediaKind::Video, Direction::SendOnly, None, None, None);
    let (offer, pending) = change.apply().expect("offer");
    net.clients[a].offer = offer.to_sdp_string();
    net.clients[a].pending = Some(pending);
    // Explicit sources, as the SDK sends them.
    let sources = [
        (net.clients[a].audio.to_string(), TrackSource::Audio),
        (net.clients[a].video.to_string(), TrackSource::Camera),
        (screen.to_string(), TrackSource::ScreenShare),
    ];
    net.reoffer(a, &sources).expect("re-offer answered");
    assert_eq!(net.sfu.track_count(), 7);
    net.run_for(Duration::from_millis(200));
    for id in [2, 3] {
        let offers = net.offers_to(ParticipantId(id));
        let last = offers.last().expect("offer");
        assert!(
            last.iter()
                .any(|t| t.publisher == ParticipantId(1) && t.source == TrackSource::ScreenShare),
            "client {id}: {last:?}"
        );
        assert_eq!(last.len(), 5);
    }

    let (now, since) = (net.now, net.elapsed());
    for tick in 0..20u8 {
        let frame = vp8_frame(101, tick);
        net.clients[a].write(
            screen,
            Codec::Vp8,
            since + Duration::from_millis(u64::from(tick) * 40),
            now,
            frame,
        );
        net.run_for(Duration::from_millis(40));
    }
    for id in [2, 3] {
        let c = net.client(ParticipantId(id));
        let shared =
            payloads(&net.clients[c].media_from(ParticipantId(1), TrackSource::ScreenShare));
        assert!(
            shared.len() >= 15,
            "client {id}: {} screen frames",
            shared.len()
        );
        assert!(
            shared.iter().all(|f| f[6] == 101),
            "screen frames, not camera frames"
        );
        assert!(
            net.clients[c]
                .media_from(ParticipantId(1), TrackSource::Camera)
                .iter()
                .all(|d| d.data[6] == 1)
        );
    }

    // A stops sharing.
    let screen_at_b = net.clients[net.client(ParticipantId(2))]
        .mid_for(ParticipantId(1), TrackSource::ScreenShare)
        .expect("B has the screen m-line");
    let mut change = net.clients[a].rtc.sdp_api();
    change.stop_media(screen);
    let (offer, pending) = change.apply().expect("offer");
    net.clients[a].offer = offer.to_sdp_string();
    net.clients[a].pending = Some(pending);
    net.reoffer(a, &[]).expect("re-offer answered");
    assert_eq!(net.sfu.track_count(), 6);
    net.run_for(Duration::from_millis(200));
    for id in [2, 3] {
        let offers = net.offers_to(ParticipantId(id));
        let last = offers.last().expect("offer");
        let others: Vec<u64> = [1, 2, 3].into_iter().filter(|x| *x != id).collect();
        assert_eq!(ids(last), audio_and_camera(&others));
    }
    let b = net.client(ParticipantId(2));
    assert_eq!(
        net.clients[b]
            .rtc
            .media(screen_at_b)
            .expect("m-line")
            .direction(),
        Direction::Inactive
    );
    // The camera goes on at B with its source kept (no sources given in the second re-offer).
    net.clients[b].events.clear();
    for tick in 0..10 {
        net.talk(tick, Codec::Vp8, vp8_frame);
    }
    assert!(
        !net.clients[b]
            .media_from(ParticipantId(1), TrackSource::Camera)
            .is_empty()
    );
}

#[test]
fn leaving_member_is_stopped_at_the_others() {
    let mut net = three_clients();
    for tick in 0..10 {
        net.talk(tick, Codec::Vp8, vp8_frame);
    }
    let c = net.client(ParticipantId(3));
    net.sfu.remove_participant(ParticipantId(3));
    net.clients[c].plugged = false;
    assert_eq!(net.sfu.participant_count(), 2);
    assert_eq!(net.sfu.track_count(), 4);
    net.run_for(Duration::from_millis(200));
    for (me, other) in [(1, 2), (2, 1)] {
        let offers = net.offers_to(ParticipantId(me));
        assert_eq!(
            ids(offers.last().expect("offer")),
            audio_and_camera(&[other])
        );
        let client = &net.clients[net.client(ParticipantId(me))];
        let stopped = client
            .track_of
            .values()
            .filter(|t| t.publisher == ParticipantId(3))
            .all(|t| {
                client
                    .rtc
                    .media(Mid::from(t.mid.as_str()))
                    .expect("m-line")
                    .direction()
                    == Direction::Inactive
            });
        assert!(stopped, "client {me}: the leaver's m-lines are inactive");
    }
    assert_eq!(net.sfu.subscription_count(), 4);
    for c in &mut net.clients {
        c.events.clear();
    }
    for tick in 0..20 {
        net.talk(tick, Codec::Vp8, vp8_frame);
    }
    assert_receives(&net, 0, 1, 20, vp8_frame);
}

#[test]
fn glare_is_refused_until_the_server_offer_is_answered() {
    let mut net = Net::new();
    let a = net.add_and_join(1, "10.0.0.2:5000", default_codecs);
    net.clients[a].auto_answer = false;
    net.add_and_join(2, "10.0.0.3:5000", default_codecs);
    net.run_until(Duration::from_secs(1), "server offer to A", |net| {
        !net.clients[a].inbox.is_empty()
    });

    // A's own offer (a screen share) crosses the server's offer.
    let mut change = net.clients[a].rtc.sdp_api();
    let screen = change.add_media(MediaKind::Video, Direction::SendOnly, None, None, None);
    let (offer, pending) = change.apply().expect("offer");
    net.clients[a].offer = offer.to_sdp_string();
    net.clients[a].pending = Some(pending);
    let tracks = net.sfu.track_count();
    let events = net.sfu_events.len();
    let err = net.reoffer(a, &[]).unwrap_err();
    assert!(matches!(err, SfuError::Glare), "{err}");
    net.run_for(Duration::from_millis(50));
    assert_eq!(net.sfu.track_count(), tracks, "nothing changed");
    assert!(
        net.sfu_events[events..]
            .iter()
            .all(|e| !matches!(e, SfuEvent::Offer { .. })),
        "no new offer"
    );

    // A rolls back, answers, and offers again: nothing is lost.
    net.answer_inbox(a);
    net.clients[a].auto_answer = true;
    let mut change = net.clients[a].rtc.sdp_api();
    let screen2 = change.add_media(MediaKind::Video, Direction::SendOnly, None, None, None);
    let (offer, pending) = change.apply().expect("offer");
    net.clients[a].offer = offer.to_sdp_string();
    net.clients[a].pending = Some(pending);
    let _ = screen;
    net.reoffer(a, &[]).expect("re-offer after the answer");
    assert_eq!(net.sfu.track_count(), tracks + 1);
    net.connect_all();
    let offers = net.offers_to(ParticipantId(2));
    let last = offers.last().expect("offer to B");
    assert!(
        last.iter()
            .any(|t| t.publisher == ParticipantId(1) && t.source == TrackSource::ScreenShare),
        "{last:?}"
    );
    assert_eq!(
        ids(net.offers_to(ParticipantId(1)).last().expect("offer")),
        audio_and_camera(&[2])
    );
    for tick in 0..30 {
        net.talk(tick, Codec::Vp8, vp8_frame);
    }
    let (now, since) = (net.now, net.elapsed());
    net.clients[a].write(screen2, Codec::Vp8, since, now, vp8_frame(101, 0));
    net.run_for(Duration::from_millis(200));
    assert_receives(&net, 0, 1, 30, vp8_frame);
    assert_receives(&net, 1, 0, 30, vp8_frame);
    assert_eq!(
        payloads(&net.clients[1].media_from(ParticipantId(1), TrackSource::ScreenShare)),
        [vp8_frame(101, 0)]
    );
}

#[test]
fn subscriber_without_the_publishers_codec_is_reported_once() {
    let mut net = Net::new();
    let h = net.add_and_join(1, "10.0.0.2:5000", h264_only);
    let v = net.add_and_join(2, "10.0.0.3:5000", vp8_only);
    net.connect_all();
    let (now, since) = (net.now, net.elapsed());
    for tick in 0..20u8 {
        let t = since + Duration::from_millis(u64::from(tick) * 40);
        let (hv, ha, vv) = (
            net.clients[h].video,
            net.clients[h].audio,
            net.clients[v].video,
        );
        net.clients[h].write(hv, Codec::H264, t, now, h264_frame(1, tick));
        net.clients[h].write(ha, Codec::Opus, t, now, audio_frame(1, tick));
        net.clients[v].write(vv, Codec::Vp8, t, now, vp8_frame(2, tick));
        net.run_for(Duration::from_millis(40));
    }
    let reports: Vec<&SfuEvent> = net
        .sfu_events
        .iter()
        .filter(|e| matches!(e, SfuEvent::CodecUnsupported { .. }))
        .collect();
    assert_eq!(
        reports,
        [
            &SfuEvent::CodecUnsupported {
                subscriber: ParticipantId(2),
                publisher: ParticipantId(1),
                source: TrackSource::Camera,
                codec: "H264".to_string(),
            },
            &SfuEvent::CodecUnsupported {
                subscriber: ParticipantId(1),
                publisher: ParticipantId(2),
                source: TrackSource::Camera,
                codec: "VP8".to_string(),
            },
        ]
    );
    // Audio still flows.
    assert!(
        net.clients[v]
            .media_from(ParticipantId(1), TrackSource::Audio)
            .len()
            >= 15
    );
}

#[test]
fn audio_levels_drive_speaking_and_dominant_speakers() {
    let mut net = three_clients();
    for (id, level) in [(1, 127), (2, 20), (3, 127)] {
        let c = net.client(ParticipantId(id));
        net.clients[c].level = Some(level);
    }
    for tick in 0..100 {
        net.talk(tick, Codec::Vp8, vp8_frame);
    }
    let b = net.client(ParticipantId(2));
    net.clients[b].level = Some(127);
    let c = net.client(ParticipantId(3));
    net.clients[c].level = Some(25);
    for tick in 0..150 {
        net.talk(tick, Codec::Vp8, vp8_frame);
    }
    let speaking: Vec<(u64, bool)> = net
        .sfu_events
        .iter()
        .filter_map(|e| match e {
            SfuEvent::Speaking {
                participant,
                speaking,
            } => Some((participant.0, *speaking)),
            _ => None,
        })
        .collect();
    assert_eq!(speaking, [(2, true), (3, true), (2, false)]);
    let rankings: Vec<Vec<u64>> = net
        .sfu_events
        .iter()
        .filter_map(|e| match e {
            SfuEvent::DominantSpeakers { room, speakers } => {
                assert_eq!(room, ROOM);
                Some(speakers.iter().map(|p| p.0).collect())
            }
            _ => None,
        })
        .collect();
    assert_eq!(rankings.first().map(Vec::as_slice), Some(&[2][..]));
    assert_eq!(rankings.last().map(Vec::as_slice), Some(&[3, 2][..]));
    // Levels reach the subscribers too.
    let a = net.client(ParticipantId(1));
    assert!(
        net.clients[a]
            .media_from(ParticipantId(3), TrackSource::Audio)
            .iter()
            .any(|d| d.ext_vals.audio_level == Some(-25))
    );
}

// ---- churn ----

/// Number of m-lines in an SDP.
fn m_lines(sdp: &str) -> usize {
    sdp.split("\r\n").filter(|l| l.starts_with("m=")).count()
}

/// The SDP of the last server offer made to `id`.
fn last_offer_sdp(net: &Net, id: ParticipantId) -> Option<&str> {
    net.sfu_events.iter().rev().find_map(|e| match e {
        SfuEvent::Offer {
            participant, sdp, ..
        } if *participant == id => Some(sdp.as_str()),
        _ => None,
    })
}

#[test]
fn churn_reuses_inactive_m_lines_so_the_sdp_stays_bounded() {
    let mut net = Net::new();
    let stayer_id = ParticipantId(1);
    net.add_and_join(1, "10.0.0.2:5000", default_codecs);
    net.connect_all();
    let mut first_mids: Vec<Mid> = Vec::new();
    let mut sizes = Vec::new();
    let mut last_time: Option<u64> = None;
    let cycles = 30u64;
    for i in 0..cycles {
        let id = 100 + i;
        let c = net.add_and_join(id, &format!("10.0.1.{}:5000", i + 1), default_codecs);
        net.connect_all();
        let stayer = net.client(stayer_id);
        let mids: Vec<Mid> = [TrackSource::Audio, TrackSource::Camera]
            .iter()
            .map(|s| {
                net.clients[stayer]
                    .mid_for(ParticipantId(id), *s)
                    .expect("the stayer has an m-line for the publisher")
            })
            .collect();
        if i == 0 {
            first_mids = mids.clone();
        } else {
            assert_eq!(
                mids, first_mids,
                "cycle {i}: the m-lines of the first publisher are reused"
            );
        }
        let sdp = last_offer_sdp(&net, stayer_id).expect("a server offer");
        // Its own audio and camera, and one audio and one video m-line for the publisher.
        assert_eq!(m_lines(sdp), 4, "cycle {i}");
        sizes.push(sdp.len());

        let last = i + 1 == cycles;
        // Media on a few of the cycles (every one costs virtual time), and on the last.
        if i % 10 == 0 || last {
            for c in &mut net.clients {
                c.events.clear();
            }
            let ticks = 20;
            // Each publisher's RTP timeline starts a minute before the previous one's.
            let base = Duration::from_secs(3600 - 60 * i);
            for tick in 0..ticks {
                let now = net.now;
                let at = base + Duration::from_millis(20 * u64::from(tick));
                let p = &mut net.clients[c];
                let (audio, video) = (p.audio, p.video);
                p.write(audio, Codec::Opus, at, now, audio_frame(id, tick));
                if tick.is_multiple_of(2) {
                    p.write(video, Codec::Vp8, at, now, vp8_frame(id, tick));
                }
                net.run_for(Duration::from_millis(20));
            }
            net.run_for(Duration::from_millis(200));
            let stayer = net.client(stayer_id);
            assert_receives(&net, stayer, c, ticks, vp8_frame);
            // On the announced mids: the frames there are the publisher's.
            for (mid, source) in mids.iter().zip([TrackSource::Audio, TrackSource::Camera]) {
                let on_mid = net.clients[stayer].media(*mid);
                assert!(!on_mid.is_empty(), "cycle {i}: frames on {mid}");
                let at = if source == TrackSource::Audio { 1 } else { 6 };
                assert!(
                    on_mid.iter().all(|d| d.data[at] == id as u8),
                    "cycle {i}: {source:?} frames on {mid} are {id}'s"
                );
            }
            // The publisher's timeline continues that of the m-line's previous track.
            let times: Vec<u64> = net.clients[stayer]
                .media(mids[0])
                .iter()
                .map(|d| d.time.numer())
                .collect();
            assert!(
                times.windows(2).all(|w| w[0] < w[1]),
                "cycle {i}: audio RTP times increase: {times:?}"
            );
            if let (Some(prev), Some(first)) = (last_time, times.first()) {
                assert!(
                    *first > prev,
                    "cycle {i}: the RTP time continues on the reused m-line: {prev} -> {first}"
                );
            }
            last_time = times.last().copied();
        }
        if last {
            break;
        }
        net.sfu.remove_participant(ParticipantId(id));
        net.clients.remove(c);
        net.run_for(Duration::from_millis(200));
        let sdp = last_offer_sdp(&net, stayer_id).expect("a server offer");
        assert_eq!(m_lines(sdp), 4, "cycle {i}: after the leave");
        assert!(
            net.offers_to(stayer_id).last().expect("offer").is_empty(),
            "cycle {i}: the leaver's m-lines are no longer announced"
        );
        assert_eq!(net.sfu.subscription_count(), 0);
    }
    let (min, max) = (
        sizes.iter().min().copied().unwrap_or(0),
        sizes.iter().max().copied().unwrap_or(0),
    );
    assert!(
        max - min < 1024,
        "the server offer does not grow: {sizes:?}"
    );
    assert_eq!(net.sfu.subscription_count(), 4);
}

/// A server-side media agent (a SIP leg, DESIGN §5): its Opus frames reach a member on an m-line the SFU
/// offered for it, the member's audio (not its video) reaches the agent's sink, and removing the agent stops
/// its track.
#[test]
fn media_agent_publishes_audio_to_members_and_hears_their_audio() {
    use std::sync::{Arc, Mutex};
    use switchboard::sfu::{AgentAudio, AgentSink};

    let mut net = Net::new();
    let a = net.add_client(1, "10.0.0.2:5000", default_codecs);
    let offer = net.clients[a].offer_without_candidates();
    net.join(a, &offer);
    net.connect_all();
    let agent = ParticipantId(9);
    let heard: Arc<Mutex<Vec<AgentAudio>>> = Arc::default();
    let sink = heard.clone();
    let now = net.now;
    net.sfu
        .add_agent(
            now,
            ROOM,
            agent,
            "4:+15550999",
            AgentSink::new(move |x| sink.lock().unwrap().push(x)),
        )
        .expect("agent joins");
    assert_eq!(net.sfu.room_count(), 1, "the agent joins the member's room");
    assert!(
        net.sfu
            .add_agent(now, ROOM, ParticipantId(1), "x", AgentSink::new(|_| {}))
            .is_err(),
        "a live id is refused"
    );
    net.run_for(Duration::from_millis(200));
    let offers = net.offers_to(ParticipantId(1));
    let last = offers
        .last()
        .expect("a server offer with the agent's track");
    assert_eq!(ids(last), [(agent, TrackSource::Audio)]);
    for tick in 0..50u8 {
        let now = net.now;
        net.sfu.handle_agent_audio(
            now,
            agent,
            u64::from(tick) * 960,
            30,
            &audio_frame(agent.0, tick),
        );
        net.talk(tick, Codec::Vp8, vp8_frame);
    }
    net.run_for(Duration::from_millis(200));
    let got = payloads(&net.clients[a].media_from(agent, TrackSource::Audio));
    assert!(got.len() >= 40, "{} agent frames at the member", got.len());
    assert!(
        got.iter().all(|p| p[1] == agent.0 as u8),
        "they are the agent's"
    );
    let heard = heard.lock().unwrap().clone();
    assert!(
        heard.len() >= 40,
        "{} member frames at the agent",
        heard.len()
    );
    assert!(
        heard
            .iter()
            .all(|x| x.agent == agent && x.from == ParticipantId(1) && x.data[0] == 0xa0),
        "only the member's audio, no video"
    );
    net.sfu.remove_participant(agent);
    net.run_for(Duration::from_millis(200));
    let offers = net.offers_to(ParticipantId(1));
    assert!(
        offers.last().is_some_and(|t| t.is_empty()),
        "the agent's track is stopped at the member"
    );
    assert_eq!(net.sfu.room_count(), 1);
}

/// A media worker that falls behind takes a whole socket's worth of datagrams between two timer
/// passes (`media::worker` takes up to 64). str0m packetizes a written frame only on a timeout, one
/// per m-line, so without running the subscriber's timeout right after each audio write a backlog
/// of 200 frames would leave at one frame per timer pass: queued audio, latency and memory grew
/// without bound under load (`audio-room 10 x 300`: 11 s and 1.5 GiB). Every held frame goes out
/// in the same pass that received it.
#[test]
fn held_audio_frames_go_out_in_the_pass_that_received_them() {
    let (mut net, a, b) = two_clients(default_codecs);
    net.run_for(Duration::from_millis(500));
    net.hold_from = Some(net.clients[a].addr);
    let frames = 200u8;
    for tick in 0..frames {
        let (now, since) = (net.now, net.elapsed());
        let publisher = &mut net.clients[a];
        let audio = publisher.audio;
        publisher.write(audio, Codec::Opus, since, now, audio_frame(1, tick));
        net.run_for(Duration::from_millis(20));
    }
    let held = std::mem::take(&mut net.held);
    net.hold_from = None;
    assert!(
        held.len() >= usize::from(frames),
        "{} datagrams held",
        held.len()
    );
    let before = net.sfu.stats();
    let now = net.now;
    let subscriber = net.clients[b].addr;
    let mut to_subscriber = 0;
    for batch in held.chunks(64) {
        for d in batch {
            net.sfu
                .handle_receive(now, d.source, d.destination, &d.contents);
        }
        net.sfu.handle_timeout(now);
        while let Some(t) = net.sfu.poll_transmit() {
            if t.destination == subscriber {
                to_subscriber += 1;
            }
        }
    }
    let stats = net.sfu.stats();
    assert_eq!(
        stats.frames_forwarded - before.frames_forwarded,
        u64::from(frames)
    );
    assert_eq!(stats.frames_backlogged, 0);
    assert!(
        to_subscriber >= usize::from(frames),
        "{to_subscriber} datagrams to the subscriber for {frames} frames"
    );
}
