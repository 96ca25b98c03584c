//! The per-packet forwarding path of the sans-IO SFU (`switchboard::sfu::Sfu`): one publisher sends Opus-sized
//! audio (80 bytes, one RTP packet per 20 ms frame) into a room with N subscribers; every participant is a real
//! str0m peer (full ICE, DTLS, SRTP) on an in-memory network with a virtual clock (the harness of
//! tests/sfu_forwarding.rs, kept here in small).
//!
//! Only the SFU's own work is timed: `handle_receive` for the publisher's packet and for the RTCP and STUN the
//! subscribers send back, `handle_timeout` when due, and draining `poll_transmit`/`poll_event`. The clients' str0m
//! work is outside the clock. Throughput is reported in elements/s where one element is one packet the SFU sent to
//! a subscriber: criterion's `thrpt` line is forwarded packets per second of one core (sockets excluded; the
//! floor example `examples/forwarding_floor.rs` measures the socket side).

use std::collections::{HashMap, VecDeque};
use std::hint::black_box;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::format::Codec;
use str0m::media::{Direction, Frequency, MediaKind, MediaTime, Mid, Pt};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, Input, Output, Rtc};
use switchboard::sfu::{ParticipantId, Sfu, SfuConfig, SfuEvent};

const ROOM: &str = "bench";
/// Audio frame payload, bytes (Opus at 32 kbit/s, 20 ms).
const AUDIO_BYTES: usize = 80;
/// Audio frame interval.
const FRAME: Duration = Duration::from_millis(20);
/// Longest virtual time the set-up may take.
const SETUP_LIMIT: Duration = Duration::from_secs(30);

fn sfu_addr() -> SocketAddr {
    // A literal address.
    "10.0.0.1:4000".parse().expect("address")
}

struct Datagram {
    source: SocketAddr,
    destination: SocketAddr,
    contents: Vec<u8>,
}

/// A str0m peer in client role: the publisher offers one `sendonly` audio m-line, a subscriber one `recvonly`
/// (as the load tester's listeners do); the SFU adds the publisher's track to subscribers by its own offer.
struct Client {
    id: ParticipantId,
    addr: SocketAddr,
    rtc: Rtc,
    mid: Mid,
    pt: Option<Pt>,
    timeout: Instant,
    connected: bool,
    frames_in: u64,
}

impl Client {
    /// A client and its offer (a new m-line always makes one).
    fn new(id: u64, now: Instant, direction: Direction) -> (Client, SdpOffer, SdpPendingOffer) {
        let addr = SocketAddr::from(([10, 1, (id >> 8) as u8, id as u8], 5000));
        let mut rtc = Rtc::builder()
            .clear_codecs()
            .enable_opus(true, false)
            .build(now);
        // 10.1.x.y is a usable host candidate address.
        rtc.add_local_candidate(Candidate::host(addr, "udp").expect("candidate"));
        let mut api = rtc.sdp_api();
        let mid = api.add_media(MediaKind::Audio, direction, None, None, None);
        let (offer, pending) = api.apply().expect("offer");
        let c = Client {
            id: ParticipantId(id),
            addr,
            mid,
            rtc,
            pt: None,
            timeout: now,
            connected: false,
            frames_in: 0,
        };
        (c, offer, pending)
    }

    /// Drains str0m's output into `net`.
    fn drive(&mut self, net: &mut VecDeque<Datagram>) {
        loop {
            // The harness feeds only valid input; a str0m error is a bench bug.
            match self.rtc.poll_output().expect("client poll_output") {
                Output::Timeout(t) => {
                    self.timeout = t;
                    return;
                }
                Output::Transmit(t) => net.push_back(Datagram {
                    source: t.source,
                    destination: t.destination,
                    contents: t.contents.to_vec(),
                }),
                Output::Event(Event::Connected) => self.connected = true,
                Output::Event(Event::MediaData(_)) => self.frames_in += 1,
                Output::Event(_) => {}
            }
        }
    }
}

/// The SFU, its clients (index 0 publishes) and the datagrams in flight towards the SFU.
struct Bench {
    now: Instant,
    sfu: Sfu,
    clients: Vec<Client>,
    by_addr: HashMap<SocketAddr, usize>,
    to_sfu: VecDeque<Datagram>,
    seq: u64,
    next_frame: Instant,
}

impl Bench {
    fn new(subscribers: usize) -> Bench {
        let now = Instant::now();
        let mut b = Bench {
            now,
            sfu: Sfu::new(SfuConfig {
                local_candidates: vec![sfu_addr()],
            }),
            clients: Vec::new(),
            by_addr: HashMap::new(),
            to_sfu: VecDeque::new(),
            seq: 0,
            next_frame: now,
        };
        for i in 0..=subscribers {
            let dir = if i == 0 {
                Direction::SendOnly
            } else {
                Direction::RecvOnly
            };
            let (mut c, offer, pending) = Client::new(i as u64, now, dir);
            let answer = b
                .sfu
                .handle_offer(
                    now,
                    ROOM,
                    c.id,
                    &format!("user-{i}"),
                    &offer.to_sdp_string(),
                    &[],
                )
                .expect("SFU answers");
            c.rtc
                .sdp_api()
                .accept_answer(pending, SdpAnswer::from_sdp_string(&answer).expect("sdp"))
                .expect("answer accepted");
            b.by_addr.insert(c.addr, b.clients.len());
            b.clients.push(c);
        }
        for c in &mut b.clients {
            c.drive(&mut b.to_sfu);
        }
        b.drain_sfu();
        let deadline = now + SETUP_LIMIT;
        while !b.clients[1..]
            .iter()
            .all(|c| c.connected && c.frames_in > 0)
        {
            assert!(b.now < deadline, "set-up did not complete");
            b.step();
        }
        b
    }

    /// Sends what the SFU has for the clients and answers its offers; returns packets sent to subscribers.
    fn drain_sfu(&mut self) -> u64 {
        let mut forwarded = 0;
        while let Some(t) = self.sfu.poll_transmit() {
            let Some(&i) = self.by_addr.get(&t.destination) else {
                continue;
            };
            if i != 0 {
                forwarded += 1;
            }
            let c = &mut self.clients[i];
            let input = Input::Receive(
                self.now,
                Receive {
                    proto: Protocol::Udp,
                    source: t.source,
                    destination: t.destination,
                    // The SFU sends STUN, DTLS, SRTP or SRTCP only.
                    contents: t.contents.as_slice().try_into().expect("datagram"),
                },
            );
            c.rtc.handle_input(input).expect("client input");
            c.drive(&mut self.to_sfu);
        }
        while let Some(e) = self.sfu.poll_event() {
            if let SfuEvent::Offer {
                participant, sdp, ..
            } = e
            {
                let i = participant.0 as usize;
                let c = &mut self.clients[i];
                let offer = SdpOffer::from_sdp_string(&sdp).expect("server offer");
                let answer = c.rtc.sdp_api().accept_offer(offer).expect("accept offer");
                c.drive(&mut self.to_sfu);
                self.sfu
                    .handle_answer(self.now, participant, &answer.to_sdp_string())
                    .expect("SFU takes the answer");
            }
        }
        forwarded
    }

    /// One step of the set-up: deliver what is in flight, else advance time.
    fn step(&mut self) {
        if let Some(d) = self.to_sfu.pop_front() {
            self.sfu
                .handle_receive(self.now, d.source, d.destination, &d.contents);
            self.drain_sfu();
            return;
        }
        self.advance();
    }

    /// The earliest timeout after now (or the next audio frame). Timers already due were fired by the caller; an
    /// SFU timer that stays in the past must not stop the clock.
    fn next_instant(&self) -> Instant {
        let now = self.now;
        let mut next = self.next_frame.max(now);
        let later = |t: Instant| if t > now { Some(t) } else { None };
        if let Some(t) = self.sfu.poll_timeout().and_then(later) {
            next = next.min(t);
        }
        for c in &self.clients {
            if let Some(t) = later(c.timeout) {
                next = next.min(t);
            }
        }
        next
    }

    /// Jumps to the earliest timeout (or the next audio frame), fires what is due.
    fn advance(&mut self) {
        self.now = self.next_instant();
        for c in &mut self.clients {
            if c.timeout <= self.now {
                c.rtc
                    .handle_input(Input::Timeout(self.now))
                    .expect("client timeout");
                c.drive(&mut self.to_sfu);
            }
        }
        if self.sfu.poll_timeout().is_some_and(|t| t <= self.now) {
            self.sfu.handle_timeout(self.now);
            self.drain_sfu();
        }
        if self.next_frame <= self.now {
            self.next_frame = self.now + FRAME;
            self.write_frame();
        }
    }

    fn write_frame(&mut self) {
        let now = self.now;
        let p = &mut self.clients[0];
        if !p.connected {
            return;
        }
        if p.pt.is_none() {
            p.pt = p.rtc.writer(p.mid).and_then(|w| {
                w.payload_params()
                    .find(|x| x.spec().codec == Codec::Opus)
                    .map(|x| x.pt())
            });
        }
        let (Some(pt), Some(w)) = (p.pt, p.rtc.writer(p.mid)) else {
            return;
        };
        self.seq += 1;
        let time = MediaTime::new(self.seq * 960, Frequency::FORTY_EIGHT_KHZ);
        w.write(pt, now, time, vec![0x5a; AUDIO_BYTES])
            .expect("write frame");
        p.drive(&mut self.to_sfu);
    }

    /// One audio frame through the SFU and everything due until then; returns (SFU time, packets sent to
    /// subscribers).
    fn frame(&mut self) -> (Duration, u64) {
        let mut sfu_time = Duration::ZERO;
        let mut forwarded = 0;
        let target = self.seq + 1;
        loop {
            while let Some(d) = self.to_sfu.pop_front() {
                let t0 = Instant::now();
                self.sfu
                    .handle_receive(self.now, d.source, d.destination, &d.contents);
                // The clients' handling of what the SFU sends is timed apart and subtracted.
                let (spent, n) = self.timed_drain();
                sfu_time += t0.elapsed().saturating_sub(spent);
                forwarded += n;
            }
            if self.seq >= target {
                return (sfu_time, forwarded);
            }
            self.advance_clients_only();
            let t0 = Instant::now();
            if self.sfu.poll_timeout().is_some_and(|t| t <= self.now) {
                self.sfu.handle_timeout(self.now);
            }
            let (spent, n) = self.timed_drain();
            sfu_time += t0.elapsed().saturating_sub(spent);
            forwarded += n;
        }
    }

    /// [`Bench::drain_sfu`], returning the time the clients spent inside it.
    fn timed_drain(&mut self) -> (Duration, u64) {
        let mut client_time = Duration::ZERO;
        let mut forwarded = 0;
        while let Some(t) = self.sfu.poll_transmit() {
            let t0 = Instant::now();
            if let Some(&i) = self.by_addr.get(&t.destination) {
                if i != 0 {
                    forwarded += 1;
                }
                let c = &mut self.clients[i];
                let input = Input::Receive(
                    self.now,
                    Receive {
                        proto: Protocol::Udp,
                        source: t.source,
                        destination: t.destination,
                        contents: t.contents.as_slice().try_into().expect("datagram"),
                    },
                );
                c.rtc.handle_input(input).expect("client input");
                c.drive(&mut self.to_sfu);
            }
            client_time += t0.elapsed();
        }
        let t0 = Instant::now();
        forwarded += self.drain_sfu();
        client_time += t0.elapsed();
        (client_time, forwarded)
    }

    /// Time advance as in [`Bench::advance`] but without firing the SFU's timers (the caller times those).
    fn advance_clients_only(&mut self) {
        self.now = self.next_instant();
        for c in &mut self.clients {
            if c.timeout <= self.now {
                c.rtc
                    .handle_input(Input::Timeout(self.now))
                    .expect("client timeout");
                c.drive(&mut self.to_sfu);
            }
        }
        if self.next_frame <= self.now {
            self.next_frame = self.now + FRAME;
            self.write_frame();
        }
    }
}

fn bench_forwarding(c: &mut Criterion) {
    let mut g = c.benchmark_group("sfu_forward_audio");
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(5));
    for subscribers in [10usize, 100] {
        let mut bench = Bench::new(subscribers);
        // Packets the SFU sends to subscribers per frame: one per subscriber (plus RTCP now and then).
        g.throughput(Throughput::Elements(subscribers as u64));
        g.bench_function(format!("{subscribers}_subscribers"), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let (t, n) = bench.frame();
                    black_box(n);
                    total += t;
                }
                total
            })
        });
        let received: u64 = bench.clients[1..].iter().map(|c| c.frames_in).sum();
        eprintln!("{subscribers} subscribers: {received} frames received in all");
    }
    g.finish();
}

criterion_group!(benches, bench_forwarding);
criterion_main!(benches);
