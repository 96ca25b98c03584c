//! Simulcast through the sans-IO SFU: a str0m publisher sending three VP8 layers (rids q/h/f at
//! 320x180, 640x360, 1280x720) and str0m subscribers, over an in-memory network with a virtual
//! clock. Also: the answers to real Chrome and Firefox simulcast offers (cases C016, C017, C034).

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::format::Codec;
use str0m::media::{
    Direction, MediaData, MediaKind, MediaTime, Mid, Rid, Simulcast, SimulcastLayer,
};
use str0m::net::{Protocol, Receive};
use str0m::rtp::{ExtensionValues, RtpPacket, RtpWrite, SeqNo};
use str0m::{Candidate, Event, Input, Output, Rtc};
use switchboard::sfu::{
    KEYFRAME_REQUEST_INTERVAL, OutTrack, ParticipantId, Sfu, SfuConfig, SfuError, SfuEvent,
    TrackSource, install_crypto_provider,
};

const ROOM: &str = "room-sim";

/// rid, width, height, delta frame size (bytes), layer marker.
const LAYERS: [(&str, u16, u16, usize, u8); 3] = [
    ("q", 320, 180, 150, 1),
    ("h", 640, 360, 500, 2),
    ("f", 1280, 720, 1_200, 3),
];

/// Largest frame an RTP-mode publisher sends (one packet per frame).
const RTP_MODE_FRAME_SIZE: usize = 900;

/// Every layer sends a keyframe at least this often by itself.
const KEYFRAME_PERIOD: u32 = 90;

fn sfu_addr() -> SocketAddr {
    "10.0.0.1:4000".parse().expect("address")
}

/// A VP8 frame of a layer: a keyframe carries the RFC 6386 §9.1 header with the layer's size.
/// Byte 10 is the layer marker, bytes 11..15 the frame counter.
fn vp8_frame(layer: usize, counter: u32, key: bool) -> Vec<u8> {
    let (_, w, h, size, marker) = LAYERS[layer];
    let mut f = if key {
        let mut f = vec![0x10, 0x02, 0x00, 0x9d, 0x01, 0x2a];
        f.extend(w.to_le_bytes());
        f.extend(h.to_le_bytes());
        f
    } else {
        vec![0x11, 0x02, 0x00, 0, 0, 0, 0, 0, 0, 0]
    };
    f.push(marker);
    f.extend(counter.to_be_bytes());
    let size = if key { size * 3 } else { size };
    f.resize(size, 0x55);
    f
}

fn marker(d: &MediaData) -> u8 {
    d.data.get(10).copied().unwrap_or(0)
}

struct Client {
    id: ParticipantId,
    /// str0m's RTP mode: it writes and receives RTP packets, not frames.
    rtp_mode: bool,
    addr: SocketAddr,
    rtc: Rtc,
    /// Its own sending m-line: simulcast video for the publisher, audio for subscribers.
    own: Mid,
    pending: Option<SdpPendingOffer>,
    offer: String,
    events: Vec<(Instant, Event)>,
    timeout: Option<Instant>,
    tracks: HashMap<String, OutTrack>,
    plugged: bool,
}

impl Client {
    fn with_mode(id: u64, now: Instant, simulcast: bool, rtp_mode: bool) -> Client {
        let addr: SocketAddr = format!("10.0.1.{}:5000", id).parse().expect("address");
        let mut rtc = Rtc::builder()
            .set_rtp_mode(rtp_mode)
            .clear_codecs()
            .enable_opus(true, false)
            .enable_vp8(true)
            .build(now);
        rtc.add_local_candidate(Candidate::host(addr, "udp").expect("candidate"));
        let mut change = rtc.sdp_api();
        let own = if simulcast {
            let mut sim = Simulcast::new();
            for (rid, ..) in LAYERS {
                sim.add_send_layer(SimulcastLayer::new(rid));
            }
            change.add_media(MediaKind::Video, Direction::SendOnly, None, None, Some(sim))
        } else {
            change.add_media(MediaKind::Audio, Direction::SendOnly, None, None, None)
        };
        let (offer, pending) = change.apply().expect("offer");
        Client {
            id: ParticipantId(id),
            rtp_mode,
            addr,
            rtc,
            own,
            pending: Some(pending),
            offer: offer.to_sdp_string(),
            events: Vec::new(),
            timeout: None,
            tracks: HashMap::new(),
            plugged: true,
        }
    }

    /// The m-line on which it receives `publisher`'s camera.
    fn camera_mid(&self, publisher: ParticipantId) -> Mid {
        let mid = self
            .tracks
            .values()
            .find(|t| t.publisher == publisher && t.source == TrackSource::Camera)
            .map(|t| t.mid.clone())
            .expect("camera m-line announced");
        Mid::from(mid.as_str())
    }

    /// Frames received on `mid` after `since`.
    fn frames(&self, mid: Mid, since: Instant) -> Vec<&MediaData> {
        self.events
            .iter()
            .filter(|(at, _)| *at >= since)
            .filter_map(|(_, e)| match e {
                Event::MediaData(d) if d.mid == mid => Some(d),
                _ => None,
            })
            .collect()
    }

    /// When keyframe requests for layer `rid` arrived.
    fn keyframe_requests(&self, rid: &str) -> Vec<Instant> {
        self.events
            .iter()
            .filter_map(|(at, e)| match e {
                Event::KeyframeRequest(r) if r.rid == Some(Rid::from(rid)) => Some(*at),
                _ => None,
            })
            .collect()
    }
}

/// What the network does with a datagram ([`Net::filter`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Verdict {
    Pass,
    Drop,
    /// Kept until [`Net::release_held`].
    Hold,
}

type Filter = Box<dyn FnMut(&Datagram) -> Verdict>;

struct Datagram {
    source: SocketAddr,
    destination: SocketAddr,
    contents: Vec<u8>,
}

struct Net {
    now: Instant,
    sfu: Sfu,
    clients: Vec<Client>,
    in_flight: VecDeque<Datagram>,
    sfu_events: Vec<SfuEvent>,
    /// Publisher frame counter, and layers owing a keyframe.
    frame: u32,
    force_key: [bool; 3],
    requests_seen: usize,
    /// Next RTP sequence number and timestamp of each layer of an RTP-mode publisher.
    rtp_seq: [u64; 3],
    rtp_time: [u32; 3],
    /// Decides the fate of each datagram; all pass without one.
    filter: Option<Filter>,
    held: Vec<Datagram>,
    /// Layers of the publisher (client 0) paused on the SFU's request (dynacast).
    paused: [bool; 3],
}

impl Net {
    fn new() -> Net {
        install_crypto_provider();
        let now = Instant::now();
        Net {
            now,
            sfu: Sfu::new(SfuConfig {
                local_candidates: vec![sfu_addr()],
            }),
            clients: Vec::new(),
            in_flight: VecDeque::new(),
            sfu_events: Vec::new(),
            frame: 0,
            force_key: [true; 3],
            requests_seen: 0,
            rtp_seq: [0; 3],
            rtp_time: [0; 3],
            filter: None,
            held: Vec::new(),
            paused: [false; 3],
        }
    }

    fn join(&mut self, id: u64, simulcast: bool) -> usize {
        self.join_with_mode(id, simulcast, false)
    }

    fn join_with_mode(&mut self, id: u64, simulcast: bool, rtp_mode: bool) -> usize {
        let mut c = Client::with_mode(id, self.now, simulcast, rtp_mode);
        let answer = self
            .sfu
            .handle_offer(self.now, ROOM, c.id, &format!("user-{id}"), &c.offer, &[])
            .expect("offer answered");
        let answer = SdpAnswer::from_sdp_string(&answer).expect("answer parses");
        let pending = c.pending.take().expect("pending");
        c.rtc
            .sdp_api()
            .accept_answer(pending, answer)
            .expect("answer accepted");
        self.clients.push(c);
        self.clients.len() - 1
    }

    fn step(&mut self) {
        for c in &mut self.clients {
            loop {
                match c.rtc.poll_output().expect("client poll") {
                    Output::Timeout(t) => {
                        c.timeout = Some(t);
                        break;
                    }
                    Output::Transmit(t) if c.plugged => self.in_flight.push_back(Datagram {
                        source: t.source,
                        destination: t.destination,
                        contents: t.contents.into(),
                    }),
                    Output::Transmit(_) => {}
                    Output::Event(e) => c.events.push((self.now, e)),
                }
            }
        }
        while let Some(t) = self.sfu.poll_transmit() {
            self.in_flight.push_back(Datagram {
                source: t.source,
                destination: t.destination,
                contents: t.contents,
            });
        }
        let mut answered = false;
        while let Some(e) = self.sfu.poll_event() {
            if let SfuEvent::Offer {
                participant,
                sdp,
                tracks,
            } = &e
                && let Some(c) = self
                    .clients
                    .iter_mut()
                    .find(|c| c.id == *participant && c.plugged)
            {
                let offer = SdpOffer::from_sdp_string(sdp).expect("server offer parses");
                let answer = c.rtc.sdp_api().accept_offer(offer).expect("offer accepted");
                for t in tracks {
                    c.tracks.insert(t.mid.clone(), t.clone());
                }
                self.sfu
                    .handle_answer(self.now, c.id, &answer.to_sdp_string())
                    .expect("answer accepted");
                answered = true;
            }
            if let SfuEvent::LayersWanted {
                participant, rids, ..
            } = &e
                && *participant == self.clients[0].id
            {
                for (i, (rid, ..)) in LAYERS.iter().enumerate() {
                    let paused = !rids.iter().any(|r| r == rid);
                    if self.paused[i] && !paused {
                        // A resumed encoding starts with a keyframe, as browsers do.
                        self.force_key[i] = true;
                    }
                    self.paused[i] = paused;
                }
            }
            self.sfu_events.push(e);
        }
        if answered {
            return;
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
            .min(self.now + Duration::from_millis(10));
        let now = self.now;
        for c in &mut self.clients {
            c.rtc.handle_input(Input::Timeout(now)).expect("timeout");
        }
        self.sfu.handle_timeout(now);
    }

    fn deliver(&mut self, d: Datagram) {
        if let Some(filter) = &mut self.filter {
            match filter(&d) {
                Verdict::Pass => {}
                Verdict::Drop => return,
                Verdict::Hold => {
                    self.held.push(d);
                    return;
                }
            }
        }
        self.deliver_now(d);
    }

    /// Delivers the held datagrams, in the order they were sent.
    fn release_held(&mut self) {
        for d in std::mem::take(&mut self.held) {
            self.deliver_now(d);
        }
    }

    fn deliver_now(&mut self, d: Datagram) {
        if d.destination == sfu_addr() {
            self.sfu
                .handle_receive(self.now, d.source, d.destination, &d.contents);
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
                contents: d.contents.as_slice().try_into().expect("datagram"),
            },
        );
        c.rtc.handle_input(input).expect("client input");
    }

    fn run_for(&mut self, duration: Duration) {
        let end = self.now + duration;
        while self.now < end {
            self.step();
        }
    }

    fn connect_all(&mut self) {
        let end = self.now + Duration::from_secs(10);
        while !self.clients.iter().all(|c| {
            c.rtc.is_connected()
                && self
                    .sfu_events
                    .contains(&SfuEvent::Connected { participant: c.id })
        }) {
            assert!(self.now < end, "clients did not connect");
            self.step();
        }
        self.run_for(Duration::from_millis(300));
    }

    /// Publisher (client 0) sends one frame on every layer every 33 ms for `duration`; a layer
    /// sends a keyframe when asked (RTCP PLI/FIR for its rid) or every [`KEYFRAME_PERIOD`] frames.
    fn publish_for(&mut self, duration: Duration) {
        let end = self.now + duration;
        while self.now < end {
            let requests: Vec<Rid> = self.clients[0].events[self.requests_seen..]
                .iter()
                .filter_map(|(_, e)| match e {
                    Event::KeyframeRequest(r) => r.rid,
                    _ => None,
                })
                .collect();
            self.requests_seen = self.clients[0].events.len();
            for rid in requests {
                if let Some(i) = LAYERS.iter().position(|l| Rid::from(l.0) == rid) {
                    self.force_key[i] = true;
                }
            }
            let (now, frame) = (self.now, self.frame);
            let publisher = &mut self.clients[0];
            let mid = publisher.own;
            for (i, (rid, ..)) in LAYERS.iter().enumerate() {
                if self.paused[i] {
                    continue;
                }
                let key = self.force_key[i] || frame.is_multiple_of(KEYFRAME_PERIOD);
                self.force_key[i] = false;
                if publisher.rtp_mode {
                    // One RTP packet per frame: a VP8 payload descriptor (RFC 7741 §4.2, S bit
                    // set, partition 0) and a frame small enough for one packet.
                    let mut payload = vec![0x10];
                    let mut f = vp8_frame(i, frame, key);
                    f.truncate(RTP_MODE_FRAME_SIZE);
                    payload.extend(f);
                    let pt = publisher
                        .rtc
                        .codec_config()
                        .find(|p| p.spec().codec == Codec::Vp8)
                        .expect("VP8")
                        .pt();
                    let mut api = publisher.rtc.direct_api();
                    let tx = api
                        .stream_tx_by_mid(mid, Some(Rid::from(*rid)))
                        .expect("send stream of the layer");
                    tx.write_rtp(
                        RtpWrite::new(
                            pt,
                            SeqNo::from(self.rtp_seq[i]),
                            self.rtp_time[i],
                            now,
                            payload,
                        )
                        .marker(true)
                        .nackable(true)
                        .ext_vals(ExtensionValues {
                            mid: Some(mid),
                            rid: Some(Rid::from(*rid)),
                            ..Default::default()
                        }),
                    );
                    self.rtp_seq[i] += 1;
                    self.rtp_time[i] = self.rtp_time[i].wrapping_add(3_000);
                    continue;
                }
                let mut writer = publisher.rtc.writer(mid).expect("writer");
                let pt = writer
                    .payload_params()
                    .find(|p| p.spec().codec == Codec::Vp8)
                    .expect("VP8")
                    .pt();
                writer = writer.rid(Rid::from(*rid));
                // Each layer has its own RTP timestamp base, as browsers do.
                let time =
                    MediaTime::from_90khz(u64::from(frame) * 3_000 + (i as u64 + 1) * 1_000_000);
                writer
                    .write(pt, now, time, vp8_frame(i, frame, key))
                    .expect("write layer");
            }
            self.frame += 1;
            self.run_for(Duration::from_millis(33));
        }
    }

    fn prefer(&mut self, client: usize, width: u32, height: u32) {
        let publisher = self.clients[0].id;
        let mid = self.clients[client].camera_mid(publisher);
        let id = self.clients[client].id;
        self.sfu
            .set_preferred_size(self.now, id, &mid, width, height)
            .expect("preferred size set");
    }
}

/// Asserts a subscriber's decoder could play `frames` from the first: it starts on a keyframe,
/// the RTP sequence continues without a gap and the timestamps keep increasing.
fn assert_playable(frames: &[&MediaData], who: &str) {
    assert!(!frames.is_empty(), "{who} received frames");
    assert!(frames[0].is_keyframe(), "{who} starts on a keyframe");
    for pair in frames.windows(2) {
        assert!(pair[1].contiguous, "{who}: frames continue without a gap");
        assert!(
            pair[1].time.numer() > pair[0].time.numer(),
            "{who}: timestamps increase ({:?} then {:?})",
            pair[0].time,
            pair[1].time
        );
        assert!(
            pair[1].time.numer() - pair[0].time.numer() < 90_000,
            "{who}: no timestamp jump across a switch"
        );
    }
}

fn assert_spaced(requests: &[Instant], what: &str) {
    for pair in requests.windows(2) {
        assert!(
            pair[1] - pair[0] >= KEYFRAME_REQUEST_INTERVAL,
            "{what}: keyframe requests {:?} apart",
            pair[1] - pair[0]
        );
    }
}

#[test]
fn subscribers_get_the_layer_of_their_size_and_switch_at_a_keyframe() {
    let mut net = Net::new();
    let p = net.join(1, true);
    let a = net.join(2, false);
    let b = net.join(3, false);
    net.connect_all();
    let publisher = net.clients[p].id;
    net.prefer(a, 1280, 720);
    net.prefer(b, 320, 180);
    net.publish_for(Duration::from_secs(3));

    let (mid_a, mid_b) = (
        net.clients[a].camera_mid(publisher),
        net.clients[b].camera_mid(publisher),
    );
    let start = net.now - Duration::from_secs(10);
    let frames_a = net.clients[a].frames(mid_a, start);
    let frames_b = net.clients[b].frames(mid_b, start);
    assert!(frames_a.len() > 40, "A receives ({})", frames_a.len());
    assert!(frames_b.len() > 40, "B receives ({})", frames_b.len());
    assert!(
        frames_a.iter().all(|d| marker(d) == 3),
        "A gets only the 1280x720 layer"
    );
    assert!(
        frames_b.iter().all(|d| marker(d) == 1),
        "B gets only the 320x180 layer"
    );
    assert_playable(&frames_a, "A");
    assert_playable(&frames_b, "B");

    // B switches up: it keeps getting the low layer until the top layer's next keyframe.
    let switches_before = net.sfu.stats().layer_switches;
    let requests_before = net.clients[p].keyframe_requests("f").len();
    let switch_at = net.now;
    net.prefer(b, 1280, 720);
    net.publish_for(Duration::from_secs(2));
    let after = net.clients[b].frames(mid_b, switch_at);
    let first_top = after
        .iter()
        .position(|d| marker(d) == 3)
        .expect("B gets the top layer after switching");
    assert!(
        after[first_top].is_keyframe(),
        "the switch is at a keyframe"
    );
    assert!(
        after[..first_top].iter().all(|d| marker(d) == 1),
        "low layer until the switch"
    );
    assert!(
        after[first_top..].iter().all(|d| marker(d) == 3),
        "only the top layer after the switch"
    );
    assert!(
        after.len() - first_top > 40,
        "top layer frames keep coming ({})",
        after.len() - first_top
    );
    let all_b = net.clients[b].frames(mid_b, start);
    assert_playable(&all_b, "B across the switch");
    let keyframes_after_switch = after[first_top..]
        .iter()
        .filter(|d| d.is_keyframe())
        .count();
    assert_eq!(
        keyframes_after_switch, 1,
        "one keyframe is enough for B's decoder"
    );
    assert_eq!(net.sfu.stats().layer_switches, switches_before + 1);

    // Keyframe requests for the switch: few, and never two within the interval per layer.
    let requests = net.clients[p].keyframe_requests("f");
    assert!(
        requests.len() - requests_before <= 2,
        "{} keyframe requests for the switch",
        requests.len() - requests_before
    );
    for rid in ["q", "h", "f"] {
        assert_spaced(&net.clients[p].keyframe_requests(rid), rid);
    }
    // The middle layer is watched by nobody: never asked for.
    assert!(net.clients[p].keyframe_requests("h").is_empty());
}

#[test]
fn not_rendered_gets_nothing_and_resumes() {
    let mut net = Net::new();
    let p = net.join(1, true);
    let a = net.join(2, false);
    net.connect_all();
    let publisher = net.clients[p].id;
    net.prefer(a, 0, 0);
    net.publish_for(Duration::from_secs(1));
    let mid = net.clients[a].camera_mid(publisher);
    let start = net.now - Duration::from_secs(10);
    assert!(net.clients[a].frames(mid, start).is_empty(), "0x0: nothing");
    let resume = net.now;
    net.prefer(a, 640, 360);
    net.publish_for(Duration::from_secs(1));
    let frames = net.clients[a].frames(mid, resume);
    assert!(frames.len() > 20, "resumed ({})", frames.len());
    assert!(frames.iter().all(|d| marker(d) == 2), "640x360 layer");
    assert_playable(&frames, "A");
}

#[test]
fn unknown_participant_or_mid_is_refused() {
    let mut net = Net::new();
    let a = net.join(2, false);
    let id = net.clients[a].id;
    assert!(matches!(
        net.sfu
            .set_preferred_size(net.now, ParticipantId(99), "1", 1, 1),
        Err(SfuError::UnknownParticipant(_))
    ));
    assert!(matches!(
        net.sfu.set_preferred_size(net.now, id, "77", 1, 1),
        Err(SfuError::UnknownMid { .. })
    ));
}

#[test]
fn twenty_subscribers_all_receive_and_are_freed() {
    let mut net = Net::new();
    let p = net.join(1, true);
    let subs: Vec<usize> = (0..20).map(|i| net.join(10 + i, false)).collect();
    net.connect_all();
    let publisher = net.clients[p].id;
    net.publish_for(Duration::from_secs(2));
    let start = net.now - Duration::from_secs(10);
    for &s in &subs {
        let mid = net.clients[s].camera_mid(publisher);
        let frames = net.clients[s].frames(mid, start);
        assert!(
            frames.len() > 20,
            "subscriber {s} receives ({})",
            frames.len()
        );
        assert!(
            frames.iter().all(|d| marker(d) == 3),
            "no preference: the top layer"
        );
        assert_playable(&frames, "subscriber");
    }
    for rid in ["q", "h", "f"] {
        assert_spaced(&net.clients[p].keyframe_requests(rid), rid);
    }
    assert!(
        net.clients[p].keyframe_requests("f").len() <= 3,
        "20 subscribers joining do not flood the publisher"
    );
    // The publisher gets 20 audio tracks, each subscriber 19 audio tracks and the camera.
    assert_eq!(net.sfu.subscription_count(), 20 + 20 * 20);
    for &s in &subs {
        let id = net.clients[s].id;
        net.clients[s].plugged = false;
        net.sfu.remove_participant(id);
    }
    net.run_for(Duration::from_millis(200));
    assert_eq!(net.sfu.participant_count(), 1);
    assert_eq!(net.sfu.subscription_count(), 0);
    assert_eq!(net.sfu.track_count(), 1);
}

fn answer_lines(offer: &str) -> Vec<String> {
    install_crypto_provider();
    let mut sfu = Sfu::new(SfuConfig {
        local_candidates: vec![sfu_addr()],
    });
    let answer = sfu
        .handle_offer(Instant::now(), ROOM, ParticipantId(1), "u", offer, &[])
        .expect("simulcast offer answered");
    answer.split("\r\n").map(str::to_string).collect()
}

fn assert_mirrors(lines: &[String], rids: [&str; 3]) {
    for rid in rids {
        let n = lines
            .iter()
            .filter(|l| **l == format!("a=rid:{rid} recv"))
            .count();
        assert_eq!(n, 1, "one a=rid:{rid} recv");
    }
    let sim: Vec<&String> = lines
        .iter()
        .filter(|l| l.starts_with("a=simulcast"))
        .collect();
    assert_eq!(sim.len(), 1, "one simulcast line: {sim:?}");
    assert_eq!(*sim[0], format!("a=simulcast:recv {}", rids.join(";")));
    assert!(
        !lines
            .iter()
            .any(|l| l.contains(" send") && l.starts_with("a=rid")),
        "no send rids in the answer"
    );
}

#[test]
fn chrome_simulcast_offer_is_answered_with_recv_rids() {
    let lines = answer_lines(include_str!("data/sdp/chrome-simulcast-offer.sdp"));
    assert_mirrors(&lines, ["q", "h", "f"]);
}

#[test]
fn firefox_simulcast_offer_is_answered_with_recv_rids() {
    let lines = answer_lines(include_str!("data/sdp/firefox-simulcast-offer.sdp"));
    assert_mirrors(&lines, ["h", "m", "l"]);
}

impl Client {
    /// The RTP packets with media received since `since` (RTP-mode clients), in arrival order.
    fn rtp_packets(&self, since: Instant) -> Vec<&RtpPacket> {
        self.events
            .iter()
            .filter(|(at, _)| *at >= since)
            .filter_map(|(_, e)| match e {
                Event::RtpPacket(p) if !p.payload.is_empty() => Some(p),
                _ => None,
            })
            .collect()
    }
}

/// The VP8 payload (after the RFC 7741 §4.2 payload descriptor) of an RTP packet.
fn vp8_payload(packet: &RtpPacket) -> &[u8] {
    let p = &packet.payload[..];
    let mut at = 1;
    if p[0] & 0x80 != 0 {
        let ext = p[1];
        at = 2;
        if ext & 0x80 != 0 {
            at += if p[at] & 0x80 != 0 { 2 } else { 1 };
        }
        if ext & 0x40 != 0 {
            at += 1;
        }
        if ext & 0x30 != 0 {
            at += 1;
        }
    }
    &p[at..]
}

/// Layer marker (1..=3) and whether the frame is a keyframe, for a packet that starts a frame.
fn vp8_layer(packet: &RtpPacket) -> (u8, bool) {
    let frame = vp8_payload(packet);
    (frame[10], frame[0] & 1 == 0)
}

/// Asserts what a subscriber's RTP stack sees is one stream: one SSRC, sequence numbers that
/// follow each other (mod 2^16), timestamps that advance by less than a second (mod 2^32), a
/// keyframe first and at every change of layer.
fn assert_one_continuous_stream(packets: &[&RtpPacket], who: &str) {
    assert!(packets.len() > 20, "{who}: received {}", packets.len());
    let ssrc = packets[0].header.ssrc;
    assert!(vp8_layer(packets[0]).1, "{who}: starts on a keyframe");
    for pair in packets.windows(2) {
        let (a, b) = (&pair[0].header, &pair[1].header);
        assert_eq!(b.ssrc, ssrc, "{who}: one SSRC");
        assert_eq!(
            b.sequence_number,
            a.sequence_number.wrapping_add(1),
            "{who}: sequence numbers follow each other"
        );
        let step = b.timestamp.wrapping_sub(a.timestamp) as i32;
        assert!(
            (1..90_000).contains(&step),
            "{who}: timestamp {} then {} (step {step})",
            a.timestamp,
            b.timestamp
        );
        let (layer_a, _) = vp8_layer(pair[0]);
        let (layer_b, key_b) = vp8_layer(pair[1]);
        if layer_a != layer_b {
            assert!(key_b, "{who}: layer {layer_a} -> {layer_b} at a keyframe");
        }
    }
}

/// Sizes a subscriber asks for, one per layer.
const SIZES: [(u32, u32); 3] = [(320, 180), (640, 360), (1280, 720)];

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 32, ..Default::default() })]

    /// Case C030-style wrap: the publisher's sequence numbers start just below 65536 and its RTP
    /// timestamps just below 2^32, and the subscriber changes the size it renders at random points.
    /// Whatever the switch points, the subscriber sees one continuous stream.
    #[test]
    fn layer_switches_at_random_points_keep_one_continuous_stream(
        seq_start in 65_520u64..65_536,
        frames_to_time_wrap in 25u32..45,
        switches in proptest::collection::vec((3u32..40, 0usize..3), 1..6),
    ) {
        let mut net = Net::new();
        net.join_with_mode(1, true, true);
        let a = net.join_with_mode(2, false, true);
        net.connect_all();
        for i in 0..3 {
            // Below 65536 at the start: a first packet with a rollover counter > 0 would need
            // it signalled out of band (RFC 3711 §3.3.1).
            net.rtp_seq[i] = seq_start - 7 * i as u64;
            // Each layer its own timestamp base, as browsers do; the lowest wraps first.
            net.rtp_time[i] = (u32::MAX - frames_to_time_wrap * 3_000)
                .wrapping_sub(i as u32 * 1_000_000);
        }
        let start = net.now;
        net.prefer(a, 320, 180);
        for (frames, layer) in &switches {
            net.publish_for(Duration::from_millis(33 * u64::from(*frames)));
            let (w, h) = SIZES[*layer];
            net.prefer(a, w, h);
        }
        net.publish_for(Duration::from_millis(2_500));
        assert!(net.rtp_seq.iter().all(|s| *s > 65_536), "input sequence numbers wrapped");

        let packets = net.clients[a].rtp_packets(start);
        assert_one_continuous_stream(&packets, "A");
        assert!(
            packets.windows(2).any(|w| w[1].header.timestamp < w[0].header.timestamp),
            "A's timestamps wrapped"
        );
        // Which layer A ends on is not asserted: the in-memory network's TWCC feedback sometimes
        // makes the estimate dip below the rate sent, and the SFU then caps A for a while (the
        // layer choice by size is covered by the deterministic tests above).
        let layers: std::collections::BTreeSet<u8> =
            packets.iter().map(|p| vp8_layer(p).0).collect();
        let wanted: std::collections::BTreeSet<usize> =
            switches.iter().map(|(_, l)| *l).chain([0]).collect();
        if wanted.len() > 1 {
            proptest::prop_assert!(layers.len() > 1, "A switched layers: {layers:?}");
        }
    }
}

/// Installs a filter dropping the `nth` large (video-sized) datagram from the SFU to `to`, and
/// holding every datagram from `to` to the SFU while `hold_uplink` is set. Returns the shared
/// counters: large datagrams seen, dropped.
fn drop_nth_video_datagram(
    net: &mut Net,
    to: SocketAddr,
    nth: usize,
    hold_uplink: std::rc::Rc<std::cell::Cell<bool>>,
) -> std::rc::Rc<std::cell::Cell<(usize, usize)>> {
    let counters = std::rc::Rc::new(std::cell::Cell::new((0usize, 0usize)));
    let c = counters.clone();
    net.filter = Some(Box::new(move |d: &Datagram| {
        if d.source == to && d.destination == sfu_addr() && hold_uplink.get() {
            return Verdict::Hold;
        }
        if d.source == sfu_addr() && d.destination == to && d.contents.len() > 300 {
            let (seen, dropped) = c.get();
            c.set((seen + 1, dropped));
            if seen + 1 == nth {
                c.set((seen + 1, dropped + 1));
                return Verdict::Drop;
            }
        }
        Verdict::Pass
    }));
    counters
}

/// The sequence numbers missing between the first and last packet (RTP-mode client).
fn missing(packets: &[&RtpPacket]) -> Vec<u64> {
    let mut seqs: Vec<u64> = packets.iter().map(|p| *p.seq_no).collect();
    seqs.sort_unstable();
    seqs.dedup();
    let (Some(first), Some(last)) = (seqs.first(), seqs.last()) else {
        return Vec::new();
    };
    (*first..=*last)
        .filter(|s| seqs.binary_search(s).is_err())
        .collect()
}

#[test]
fn nack_for_a_cached_packet_is_answered() {
    let mut net = Net::new();
    net.join(1, true);
    let a = net.join_with_mode(2, false, true);
    net.connect_all();
    net.prefer(a, 640, 360);
    net.publish_for(Duration::from_secs(1));
    let to = net.clients[a].addr;
    let counters = drop_nth_video_datagram(&mut net, to, 10, Default::default());
    let nacks_before = net.sfu.stats().nacks_received;
    let start = net.now;
    net.publish_for(Duration::from_secs(2));
    assert_eq!(counters.get().1, 1, "one video datagram dropped");
    assert!(
        net.sfu.stats().nacks_received > nacks_before,
        "the subscriber's NACK reached the SFU"
    );
    let packets = net.clients[a].rtp_packets(start);
    assert!(packets.len() > 40, "A receives ({})", packets.len());
    assert_eq!(
        missing(&packets),
        Vec::<u64>::new(),
        "the dropped packet was retransmitted"
    );
}

#[test]
fn nack_for_an_evicted_packet_is_not_answered() {
    let mut net = Net::new();
    net.join(1, true);
    let a = net.join_with_mode(2, false, true);
    net.connect_all();
    net.prefer(a, 640, 360);
    net.publish_for(Duration::from_secs(1));
    let to = net.clients[a].addr;
    let hold = std::rc::Rc::new(std::cell::Cell::new(true));
    let counters = drop_nth_video_datagram(&mut net, to, 10, hold.clone());
    let nacks_before = net.sfu.stats().nacks_received;
    let start = net.now;
    // The subscriber's NACKs are held past the SFU's retransmission cache age (3 s).
    net.publish_for(Duration::from_secs(4));
    hold.set(false);
    net.release_held();
    net.publish_for(Duration::from_secs(1));
    assert_eq!(counters.get().1, 1, "one video datagram dropped");
    assert!(
        net.sfu.stats().nacks_received > nacks_before,
        "the subscriber's late NACKs reached the SFU"
    );
    let packets = net.clients[a].rtp_packets(start);
    assert_eq!(
        missing(&packets).len(),
        1,
        "the evicted packet is not retransmitted"
    );
}

/// The rids of the last dynacast request to the publisher, if any.
fn last_layers_wanted(net: &Net) -> Option<Vec<String>> {
    let publisher = net.clients[0].id;
    net.sfu_events.iter().rev().find_map(|e| match e {
        SfuEvent::LayersWanted {
            participant, rids, ..
        } if *participant == publisher => Some(rids.clone()),
        _ => None,
    })
}

#[test]
fn unwatched_layers_are_paused_and_resumed_on_demand() {
    let mut net = Net::new();
    let p = net.join(1, true);
    let a = net.join(2, false);
    net.connect_all();
    let publisher = net.clients[p].id;
    net.prefer(a, 320, 180);
    net.publish_for(Duration::from_secs(2));
    assert_eq!(last_layers_wanted(&net), None, "nothing paused within 3 s");
    net.publish_for(Duration::from_secs(3));
    assert_eq!(
        last_layers_wanted(&net),
        Some(vec!["q".to_string()]),
        "the unwatched layers are paused"
    );
    assert_eq!(net.paused, [false, true, true]);

    // A wants the top layer: it is resumed at once, and A switches at its first keyframe.
    let switch_at = net.now;
    net.prefer(a, 1280, 720);
    net.run_for(Duration::from_millis(2));
    assert_eq!(
        last_layers_wanted(&net),
        Some(vec!["q".to_string(), "f".to_string()]),
        "the top layer resumed, the middle one stays paused"
    );
    net.publish_for(Duration::from_secs(1));
    let mid = net.clients[a].camera_mid(publisher);
    let after = net.clients[a].frames(mid, switch_at);
    let first_top = after
        .iter()
        .position(|d| marker(d) == 3)
        .expect("A gets the top layer after it resumed");
    assert!(after[first_top].is_keyframe());
    assert!(
        after[first_top].network_time - switch_at < Duration::from_millis(300),
        "resumed and switched within 300 ms"
    );
    let start = net.now - Duration::from_secs(30);
    assert_playable(
        &net.clients[a].frames(mid, start),
        "A across pause and resume",
    );

    // Nobody renders the track any more: everything but the lowest layer is paused.
    net.prefer(a, 0, 0);
    net.publish_for(Duration::from_secs(4));
    assert_eq!(last_layers_wanted(&net), Some(vec!["q".to_string()]));
}
