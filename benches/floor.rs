//! The forwarding floor: the least work any SFU must do per forwarded packet on this machine, as a plain loop with
//! no WebRTC state. A publisher thread sends SRTP packets to a forwarder socket on loopback; the forwarder thread
//! receives them in batches (`recvmmsg`), SRTP-unprotects each once, and for each of S subscribers rewrites SSRC and
//! sequence number, SRTP-protects its own copy and sends the whole batch with one `sendmmsg`. A sink thread drains
//! the subscribers' sockets.
//!
//! SRTP here is AES-128-CM with HMAC-SHA1-80 (RFC 3711 §4.1.1, §4.2, the `SRTP_AES128_CM_HMAC_SHA1_80` profile)
//! written for this benchmark over `aws-lc-rs` primitives, without the key-derivation function (random session keys)
//! and without replay lists: the per-packet cost is the same as a full implementation's. It is not used anywhere
//! else. No maintained SRTP crate was added for it: str0m's own SRTP is private.
//!
//! Reported per packet size: forwarded packets (one per subscriber per received packet), the forwarder thread's CPU
//! (`getrusage(RUSAGE_THREAD)`, user + system), forwarded packets per CPU-second, and the split of wall time
//! between SRTP and the kernel's `sendmmsg`. Run with `cargo bench --bench floor` (optionally
//! `-- --seconds 5 --subscribers 10 --sizes 100,1200 --rate 20000`). Numbers are printed, never asserted. Linux only.

use std::io;
use std::mem;
use std::net::{SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use aws_lc_rs::cipher::{AES_128, EncryptingKey, EncryptionContext, UnboundCipherKey};
use aws_lc_rs::hmac;
use aws_lc_rs::iv::FixedLength;
use aws_lc_rs::rand::{SecureRandom, SystemRandom};

/// RTP fixed header, bytes.
const RTP_HEADER: usize = 12;
/// HMAC-SHA1-80 tag, bytes.
const TAG: usize = 10;
/// Datagrams per `recvmmsg` (and per publisher `sendmmsg`).
const BATCH: usize = 32;
/// Largest datagram handled, bytes.
const MTU: usize = 1500;
/// Socket buffers asked for, bytes (the kernel caps them at `net.core.{r,w}mem_max` unless run as root).
const SOCKET_BUFFER: libc::c_int = 8 << 20;

/// One SRTP context (one direction of one SSRC): session keys and the rollover counter.
struct Srtp {
    cipher: EncryptingKey,
    auth: hmac::Key,
    salt: [u8; 14],
    roc: u32,
    last_seq: Option<u16>,
}

impl Srtp {
    fn random(rng: &SystemRandom) -> Srtp {
        let mut key = [0u8; 16];
        let mut auth = [0u8; 20];
        let mut salt = [0u8; 14];
        // The system RNG does not fail on Linux.
        rng.fill(&mut key).expect("rng");
        rng.fill(&mut auth).expect("rng");
        rng.fill(&mut salt).expect("rng");
        Srtp::new(&key, &auth, salt)
    }

    fn new(key: &[u8; 16], auth: &[u8; 20], salt: [u8; 14]) -> Srtp {
        // A 16-byte key is valid for AES-128, and CTR mode takes any key.
        let unbound = UnboundCipherKey::new(&AES_128, key).expect("AES-128 key");
        Srtp {
            cipher: EncryptingKey::ctr(unbound).expect("AES-CTR key"),
            auth: hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, auth),
            salt,
            roc: 0,
            last_seq: None,
        }
    }

    fn clone_keys(&self, key: &[u8; 16], auth: &[u8; 20]) -> Srtp {
        Srtp::new(key, auth, self.salt)
    }

    /// RFC 3711 §4.1.1: IV = (salt << 16) XOR (SSRC << 64) XOR (index << 16).
    fn iv(&self, ssrc: u32, index: u64) -> [u8; 16] {
        let mut iv = [0u8; 16];
        iv[..14].copy_from_slice(&self.salt);
        for (i, b) in ssrc.to_be_bytes().iter().enumerate() {
            iv[4 + i] ^= b;
        }
        for (i, b) in index.to_be_bytes()[2..].iter().enumerate() {
            iv[8 + i] ^= b;
        }
        iv
    }

    /// RFC 3711 §3.3.1 (simplified): the packet index from the sequence number and the rollover counter.
    fn index(&mut self, seq: u16) -> u64 {
        if let Some(last) = self.last_seq
            && seq < last
            && last - seq > 0x8000
        {
            self.roc = self.roc.wrapping_add(1);
        }
        self.last_seq = Some(seq);
        (u64::from(self.roc) << 16) | u64::from(seq)
    }

    fn tag(&self, packet: &[u8]) -> hmac::Tag {
        let mut ctx = hmac::Context::with_key(&self.auth);
        ctx.update(packet);
        ctx.update(&self.roc.to_be_bytes());
        ctx.sign()
    }

    /// Encrypts `buf[..len]` (an RTP packet) in place and appends the tag; returns the SRTP length.
    fn protect(&mut self, buf: &mut [u8], len: usize) -> usize {
        let seq = u16::from_be_bytes([buf[2], buf[3]]);
        let ssrc = u32::from_be_bytes([buf[8], buf[9], buf[10], buf[11]]);
        let index = self.index(seq);
        let iv = self.iv(ssrc, index);
        let ctx = EncryptionContext::Iv128(FixedLength::from(iv));
        // CTR mode accepts any length and the context matches the mode.
        self.cipher
            .less_safe_encrypt(&mut buf[RTP_HEADER..len], ctx)
            .expect("AES-CTR");
        let tag = self.tag(&buf[..len]);
        buf[len..len + TAG].copy_from_slice(&tag.as_ref()[..TAG]);
        len + TAG
    }

    /// Checks the tag and decrypts `buf[..len]` in place; returns the RTP length, `None` if the tag is wrong.
    fn unprotect(&mut self, buf: &mut [u8], len: usize) -> Option<usize> {
        if len < RTP_HEADER + TAG {
            return None;
        }
        let rtp = len - TAG;
        let seq = u16::from_be_bytes([buf[2], buf[3]]);
        let ssrc = u32::from_be_bytes([buf[8], buf[9], buf[10], buf[11]]);
        let index = self.index(seq);
        let tag = self.tag(&buf[..rtp]);
        if !constant_time_eq(&tag.as_ref()[..TAG], &buf[rtp..len]) {
            return None;
        }
        let ctx = EncryptionContext::Iv128(FixedLength::from(self.iv(ssrc, index)));
        // As in `protect`.
        self.cipher
            .less_safe_encrypt(&mut buf[RTP_HEADER..rtp], ctx)
            .expect("AES-CTR");
        Some(rtp)
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// User + system CPU time of the calling thread.
fn thread_cpu() -> Duration {
    // SAFETY: getrusage writes one `rusage` into the zeroed struct we own.
    let mut ru: libc::rusage = unsafe { mem::zeroed() };
    // SAFETY: valid pointer to an owned struct.
    unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut ru) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

fn set_buffers(sock: &UdpSocket) {
    for (force, plain) in [
        (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF),
        (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF),
    ] {
        let v = SOCKET_BUFFER;
        let len = mem::size_of::<libc::c_int>() as libc::socklen_t;
        let p = (&v as *const libc::c_int).cast();
        // SAFETY: setsockopt reads `len` bytes from a live c_int; failure (not root) falls back to the capped option.
        let forced = unsafe { libc::setsockopt(sock.as_raw_fd(), libc::SOL_SOCKET, force, p, len) };
        if forced != 0 {
            // SAFETY: as above.
            unsafe { libc::setsockopt(sock.as_raw_fd(), libc::SOL_SOCKET, plain, p, len) };
        }
    }
}

fn sockaddr(a: SocketAddrV4) -> libc::sockaddr_in {
    // SAFETY: sockaddr_in is plain data; all-zero is a valid value.
    let mut s: libc::sockaddr_in = unsafe { mem::zeroed() };
    s.sin_family = libc::AF_INET as libc::sa_family_t;
    s.sin_port = a.port().to_be();
    s.sin_addr.s_addr = u32::from_ne_bytes(a.ip().octets());
    s
}

fn v4(a: SocketAddr) -> SocketAddrV4 {
    match a {
        SocketAddr::V4(a) => a,
        SocketAddr::V6(_) => unreachable!("sockets are bound to 127.0.0.1"),
    }
}

/// Sends `bufs[i][..lens[i]]` to `dests[i]` with as few `sendmmsg` calls as the kernel needs; returns datagrams sent.
fn send_batch(fd: i32, bufs: &mut [Vec<u8>], lens: &[usize], dests: &[libc::sockaddr_in]) -> usize {
    let n = lens.len();
    let mut iovs: Vec<libc::iovec> = Vec::with_capacity(n);
    let mut msgs: Vec<libc::mmsghdr> = Vec::with_capacity(n);
    for i in 0..n {
        iovs.push(libc::iovec {
            iov_base: bufs[i].as_mut_ptr().cast(),
            iov_len: lens[i],
        });
    }
    for i in 0..n {
        // SAFETY: mmsghdr is plain data; all-zero is valid.
        let mut m: libc::mmsghdr = unsafe { mem::zeroed() };
        m.msg_hdr.msg_name = (&dests[i] as *const libc::sockaddr_in).cast_mut().cast();
        m.msg_hdr.msg_namelen = mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        m.msg_hdr.msg_iov = &mut iovs[i];
        m.msg_hdr.msg_iovlen = 1;
        msgs.push(m);
    }
    let mut sent = 0;
    while sent < n {
        // SAFETY: msgs[sent..] point at live iovecs, buffers and addresses for the duration of the call.
        let r =
            unsafe { libc::sendmmsg(fd, msgs[sent..].as_mut_ptr(), (n - sent) as libc::c_uint, 0) };
        if r <= 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            // Send buffer full (EAGAIN) or an error: the rest of this batch is dropped, as an SFU would.
            break;
        }
        sent += r as usize;
    }
    sent
}

/// Receives up to `bufs.len()` datagrams, waiting at most 100 ms for the first; fills `lens`.
fn recv_batch(fd: i32, bufs: &mut [Vec<u8>], lens: &mut Vec<usize>) -> usize {
    let n = bufs.len();
    let mut iovs: Vec<libc::iovec> = bufs
        .iter_mut()
        .map(|b| libc::iovec {
            iov_base: b.as_mut_ptr().cast(),
            iov_len: b.len(),
        })
        .collect();
    let mut msgs: Vec<libc::mmsghdr> = iovs
        .iter_mut()
        .map(|iov| {
            // SAFETY: mmsghdr is plain data; all-zero is valid.
            let mut m: libc::mmsghdr = unsafe { mem::zeroed() };
            m.msg_hdr.msg_iov = iov;
            m.msg_hdr.msg_iovlen = 1;
            m
        })
        .collect();
    let mut timeout = libc::timespec {
        tv_sec: 0,
        tv_nsec: 100_000_000,
    };
    // SAFETY: msgs point at live iovecs and buffers; MSG_WAITFORONE returns after the first datagram.
    let r = unsafe {
        libc::recvmmsg(
            fd,
            msgs.as_mut_ptr(),
            n as libc::c_uint,
            libc::MSG_WAITFORONE,
            &mut timeout,
        )
    };
    lens.clear();
    if r <= 0 {
        return 0;
    }
    lens.extend(msgs[..r as usize].iter().map(|m| m.msg_len as usize));
    r as usize
}

struct Run {
    size: usize,
    subscribers: usize,
    received: u64,
    forwarded: u64,
    bad: u64,
    wall: Duration,
    cpu: Duration,
    srtp: Duration,
    send: Duration,
    recv_calls: u64,
}

/// One run: publisher at `rate` packets/s of `size` bytes (SRTP payload+header) for `seconds`.
fn run(size: usize, subscribers: usize, rate: u64, seconds: f64) -> io::Result<Run> {
    let rng = SystemRandom::new();
    let mut key = [0u8; 16];
    let mut auth = [0u8; 20];
    rng.fill(&mut key).map_err(|_| io::Error::other("rng"))?;
    rng.fill(&mut auth).map_err(|_| io::Error::other("rng"))?;
    let publisher_ctx = Srtp::random(&rng);
    let inbound_keys = (key, auth);

    let fwd = UdpSocket::bind("127.0.0.1:0")?;
    set_buffers(&fwd);
    let fwd_addr = v4(fwd.local_addr()?);
    let subs: Vec<UdpSocket> = (0..subscribers)
        .map(|_| UdpSocket::bind("127.0.0.1:0"))
        .collect::<io::Result<_>>()?;
    for s in &subs {
        set_buffers(s);
        s.set_read_timeout(Some(Duration::from_millis(50)))?;
    }
    let sub_addrs: Vec<libc::sockaddr_in> = subs
        .iter()
        .map(|s| s.local_addr().map(|a| sockaddr(v4(a))))
        .collect::<io::Result<_>>()?;
    let stop = Arc::new(AtomicBool::new(false));
    let sunk = Arc::new(AtomicU64::new(0));

    // Sink: drains the subscribers' sockets so they never overflow.
    let sink = {
        let stop = Arc::clone(&stop);
        let sunk = Arc::clone(&sunk);
        thread::spawn(move || {
            let mut bufs = vec![vec![0u8; MTU]; BATCH * 4];
            let mut lens = Vec::new();
            let mut fds: Vec<libc::pollfd> = subs
                .iter()
                .map(|s| libc::pollfd {
                    fd: s.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                })
                .collect();
            while !stop.load(Ordering::Relaxed) {
                // SAFETY: fds is a live array of pollfd.
                let r = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 50) };
                if r <= 0 {
                    continue;
                }
                for f in &fds {
                    if f.revents & libc::POLLIN != 0 {
                        let n = recv_batch(f.fd, &mut bufs, &mut lens);
                        sunk.fetch_add(n as u64, Ordering::Relaxed);
                    }
                }
            }
        })
    };

    // Publisher: SRTP packets in bursts of BATCH, paced to `rate`.
    let publisher = {
        let stop = Arc::clone(&stop);
        let sock = UdpSocket::bind("127.0.0.1:0")?;
        set_buffers(&sock);
        let mut ctx = publisher_ctx.clone_keys(&inbound_keys.0, &inbound_keys.1);
        let dest = sockaddr(fwd_addr);
        thread::spawn(move || {
            let mut bufs = vec![vec![0u8; MTU]; BATCH];
            let dests = vec![dest; BATCH];
            let mut seq: u16 = 0;
            let burst_every = Duration::from_secs_f64(BATCH as f64 / rate as f64);
            let mut next = Instant::now();
            while !stop.load(Ordering::Relaxed) {
                let mut lens = Vec::with_capacity(BATCH);
                for b in bufs.iter_mut() {
                    let rtp = size - TAG;
                    b[0] = 0x80;
                    b[1] = 111;
                    b[2..4].copy_from_slice(&seq.to_be_bytes());
                    b[4..8].copy_from_slice(&u32::from(seq).wrapping_mul(960).to_be_bytes());
                    b[8..12].copy_from_slice(&0x1234_5678u32.to_be_bytes());
                    b[RTP_HEADER..rtp].fill(0x5a);
                    lens.push(ctx.protect(b, rtp));
                    seq = seq.wrapping_add(1);
                }
                send_batch(sock.as_raw_fd(), &mut bufs, &lens, &dests);
                next += burst_every;
                let now = Instant::now();
                if next > now {
                    thread::sleep(next - now);
                } else if now - next > Duration::from_millis(100) {
                    next = now;
                }
            }
        })
    };

    // Forwarder (this thread).
    let mut inbound = publisher_ctx.clone_keys(&inbound_keys.0, &inbound_keys.1);
    let mut outbound: Vec<Srtp> = (0..subscribers).map(|_| Srtp::random(&rng)).collect();
    let mut out_seq: Vec<u16> = vec![1000; subscribers];
    let mut in_bufs = vec![vec![0u8; MTU]; BATCH];
    let mut in_lens = Vec::with_capacity(BATCH);
    let mut out_bufs = vec![vec![0u8; MTU]; BATCH * subscribers];
    let mut out_lens = Vec::with_capacity(BATCH * subscribers);
    let mut out_dests = Vec::with_capacity(BATCH * subscribers);
    let fd = fwd.as_raw_fd();
    // Let the threads start, then measure.
    thread::sleep(Duration::from_millis(200));
    while recv_batch(fd, &mut in_bufs, &mut in_lens) == BATCH {}
    let (mut received, mut forwarded, mut bad, mut recv_calls) = (0u64, 0u64, 0u64, 0u64);
    let (mut srtp, mut send) = (Duration::ZERO, Duration::ZERO);
    let cpu0 = thread_cpu();
    let t0 = Instant::now();
    let end = t0 + Duration::from_secs_f64(seconds);
    while Instant::now() < end {
        let n = recv_batch(fd, &mut in_bufs, &mut in_lens);
        recv_calls += 1;
        if n == 0 {
            continue;
        }
        let ts = Instant::now();
        out_lens.clear();
        out_dests.clear();
        for i in 0..n {
            let Some(rtp) = inbound.unprotect(&mut in_bufs[i], in_lens[i]) else {
                bad += 1;
                continue;
            };
            received += 1;
            for s in 0..subscribers {
                let o = out_lens.len();
                let out = &mut out_bufs[o];
                out[..rtp].copy_from_slice(&in_bufs[i][..rtp]);
                out[2..4].copy_from_slice(&out_seq[s].to_be_bytes());
                out[8..12].copy_from_slice(&(0x1000_0000u32 + s as u32).to_be_bytes());
                out_seq[s] = out_seq[s].wrapping_add(1);
                out_lens.push(outbound[s].protect(out, rtp));
                out_dests.push(sub_addrs[s]);
            }
        }
        let tsend = Instant::now();
        srtp += tsend - ts;
        forwarded += send_batch(fd, &mut out_bufs, &out_lens, &out_dests) as u64;
        send += tsend.elapsed();
    }
    let wall = t0.elapsed();
    let cpu = thread_cpu() - cpu0;
    stop.store(true, Ordering::Relaxed);
    // The threads only loop until `stop`.
    publisher.join().expect("publisher thread");
    sink.join().expect("sink thread");
    Ok(Run {
        size,
        subscribers,
        received,
        forwarded,
        bad,
        wall,
        cpu,
        srtp,
        send,
        recv_calls,
    })
}

fn main() -> io::Result<()> {
    let mut seconds = 5.0;
    let mut subscribers = 10;
    let mut sizes = vec![100usize, 1200];
    let mut rate = 20_000u64;
    let mut args = std::env::args().skip(1);
    // Unknown arguments (`--bench` from cargo, filters) are ignored.
    while let Some(a) = args.next() {
        let mut val = || args.next().unwrap_or_default();
        match a.as_str() {
            "--seconds" => seconds = val().parse().unwrap_or(seconds),
            "--subscribers" => subscribers = val().parse().unwrap_or(subscribers),
            "--rate" => rate = val().parse().unwrap_or(rate),
            "--sizes" => {
                sizes = val()
                    .split(',')
                    .filter_map(|s| s.parse().ok())
                    .filter(|&s| (RTP_HEADER + TAG + 1..=MTU).contains(&s))
                    .collect()
            }
            _ => {}
        }
    }
    println!(
        "forwarding floor: recvmmsg -> SRTP unprotect once -> SRTP protect x{subscribers} -> sendmmsg; \
         publisher {rate} packets/s, {seconds} s per size"
    );
    println!(
        "{:>6} {:>10} {:>11} {:>8} {:>9} {:>16} {:>11} {:>10} {:>10} {:>9}",
        "bytes",
        "in pkt",
        "fwd pkt",
        "cpu s",
        "cpu %",
        "fwd pkt/cpu-s",
        "µs/fwd pkt",
        "srtp µs",
        "send µs",
        "batch"
    );
    for size in sizes {
        let r = run(size, subscribers, rate, seconds)?;
        let per_cpu = r.forwarded as f64 / r.cpu.as_secs_f64().max(1e-9);
        let fwd = r.forwarded.max(1) as f64;
        println!(
            "{:>6} {:>10} {:>11} {:>8.2} {:>9.1} {:>16.0} {:>11.2} {:>10.2} {:>10.2} {:>9.1}",
            r.size,
            r.received,
            r.forwarded,
            r.cpu.as_secs_f64(),
            100.0 * r.cpu.as_secs_f64() / r.wall.as_secs_f64(),
            per_cpu,
            1e6 / per_cpu,
            r.srtp.as_secs_f64() * 1e6 / fwd,
            r.send.as_secs_f64() * 1e6 / fwd,
            r.received as f64 / r.recv_calls.max(1) as f64,
        );
        println!(
            "{{\"floor\":{{\"bytes\":{},\"subscribers\":{},\"received\":{},\"forwarded\":{},\"bad\":{},\"cpu_s\":{:.3},\"wall_s\":{:.3},\"forwarded_per_cpu_s\":{:.0},\"srtp_us_per_fwd\":{:.3},\"send_us_per_fwd\":{:.3}}}}}",
            r.size,
            r.subscribers,
            r.received,
            r.forwarded,
            r.bad,
            r.cpu.as_secs_f64(),
            r.wall.as_secs_f64(),
            per_cpu,
            r.srtp.as_secs_f64() * 1e6 / fwd,
            r.send.as_secs_f64() * 1e6 / fwd,
        );
    }
    Ok(())
}
