//! The media scenarios: clients join one group call, or `rooms` identical group calls (publishers first, then
//! subscribers, at a bounded rate), the run waits until every subscriber receives every track it should, measures
//! for the window, then stops.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Result;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::histogram::Histogram;
use crate::identity::{IdentityApi, User};
use crate::janus::JanusTarget;
use crate::media_client::{self, ClientResult, ClientSpec, Counters, RunClock, VideoSpec};
use crate::meter::CpuMark;
use crate::payload::Kind;
use crate::report::{Clients, Delivery, MediaReport, Percentiles, Rates};
use crate::shards::Shards;
use crate::target::{self, Target};

/// What each client of a scenario publishes.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Scenario name.
    pub scenario: &'static str,
    /// Parameters as given (for the report).
    pub params: serde_json::Value,
    /// Publishers: (audio, video).
    pub publishers: Vec<(bool, Option<VideoSpec>)>,
    /// Listen-only clients.
    pub subscribers: usize,
    /// Identical group calls, each with `publishers` and `subscribers` (1 but for `audio-room --rooms`).
    pub rooms: usize,
    /// Audio frame size, bytes.
    pub audio_bytes: usize,
}

/// Run-wide knobs.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Measurement window.
    pub duration: Duration,
    /// New clients per second while joining.
    pub join_rate: f64,
    /// Longest wait for every client to connect and receive its tracks before measuring anyway.
    pub join_timeout: Duration,
    /// Media flows this long after every client is ready, before the window opens (bandwidth estimates settle).
    pub warmup: Duration,
    /// Identity API requests in flight.
    pub identity_parallel: usize,
    /// Load generator threads.
    pub threads: usize,
    /// Clients pinned to `threads` single-threaded runtimes instead of sharing one multi-threaded runtime.
    pub sharded: bool,
    /// Clock ticks per second of `/proc/PID/stat`.
    pub ticks_per_s: u64,
    /// Load Janus' VideoRoom instead of Switchboard (`--janus`).
    pub janus: Option<JanusOptions>,
}

/// How to reach Janus (see [`crate::janus`]).
#[derive(Debug, Clone)]
pub struct JanusOptions {
    /// WebSocket URL.
    pub url: String,
    /// VideoRoom room id.
    pub room: u64,
    /// Address the clients bind.
    pub bind: std::net::IpAddr,
}

struct Totals {
    din: u64,
    bin: u64,
    dout: u64,
    bout: u64,
    connected: usize,
    ready: usize,
    failed: usize,
}

fn totals(counters: &[Arc<Counters>], specs: &[ClientSpec]) -> Totals {
    let mut t = Totals {
        din: 0,
        bin: 0,
        dout: 0,
        bout: 0,
        connected: 0,
        ready: 0,
        failed: 0,
    };
    for (c, s) in counters.iter().zip(specs) {
        t.din += c.datagrams_in.load(Ordering::Relaxed);
        t.bin += c.bytes_in.load(Ordering::Relaxed);
        t.dout += c.datagrams_out.load(Ordering::Relaxed);
        t.bout += c.bytes_out.load(Ordering::Relaxed);
        let connected = c.connected.load(Ordering::Relaxed);
        t.connected += usize::from(connected);
        t.ready += usize::from(
            connected && c.tracks_seen.load(Ordering::Relaxed) as usize >= s.expected.len(),
        );
        t.failed += usize::from(c.failed.load(Ordering::Relaxed));
    }
    t
}

/// The live progress line (stderr, rewritten in place).
struct Progress {
    last: Totals,
    last_at: Instant,
    server: CpuMark,
    me: CpuMark,
    started: Instant,
}

impl Progress {
    fn tick(&mut self, phase: &str, t: Totals, n: usize, server_pid: Option<u32>, ticks: u64) {
        let now = Instant::now();
        let dt = now.duration_since(self.last_at).as_secs_f64().max(1e-3);
        let server = CpuMark::now(server_pid);
        let me = CpuMark::now(None);
        let cpu = |a: &CpuMark, b: &CpuMark| {
            a.since(b, ticks)
                .1
                .map_or("-".into(), |p| format!("{p:.0}%"))
        };
        crate::report::progress(&format!(
            "[{:>6.1}s] {phase:<8} clients {}/{} connected {} ready {} failed | out {:>7.0} pkt/s in {:>8.0} pkt/s | server cpu {} loadgen cpu {}",
            self.started.elapsed().as_secs_f64(),
            t.connected,
            n,
            t.ready,
            t.failed,
            (t.dout - self.last.dout) as f64 / dt,
            (t.din - self.last.din) as f64 / dt,
            cpu(&self.server, &server),
            cpu(&self.me, &me),
        ));
        self.last = t;
        self.last_at = now;
        self.server = server;
        self.me = me;
    }
}

/// Runs a media scenario against `target`.
pub async fn run(target: &Target, plan: Plan, opts: &RunOptions) -> Result<MediaReport> {
    // Clients 0..n_pub publish (publisher slot i / rooms of room i % rooms), the others listen (room (i - n_pub) %
    // rooms); with one room this is the plan as given.
    let rooms = plan.rooms.max(1);
    if rooms > 1 && opts.janus.is_some() {
        anyhow::bail!("--rooms is for Switchboard only (the Janus adapter joins one VideoRoom)");
    }
    let n_pub = plan.publishers.len() * rooms;
    let n = n_pub + plan.subscribers * rooms;
    let room_of = |i: usize| {
        if i < n_pub {
            i % rooms
        } else {
            (i - n_pub) % rooms
        }
    };
    let publisher_plan = |i: usize| {
        if i < n_pub {
            plan.publishers.get(i / rooms).cloned()
        } else {
            None
        }
    };
    let users = if opts.janus.is_some() {
        // Janus has no identities: the adapter signs nobody in.
        (0..n)
            .map(|i| User {
                id: format!("janus-{i}"),
                token: String::new(),
            })
            .collect()
    } else {
        let api = IdentityApi::new(&target.base, &target.host, &target.access_key);
        let t_ids = Instant::now();
        let users = api.create_users(n, opts.identity_parallel).await?;
        info!(
            users = n,
            seconds = t_ids.elapsed().as_secs_f64(),
            "identities created"
        );
        users
    };
    let janus = opts.janus.as_ref().map(|j| {
        Arc::new(JanusTarget {
            url: j.url.clone(),
            room: j.room,
            feed_base: u64::from(uuid::Uuid::new_v4().as_u128() as u32) * 1000,
            publishers: n_pub,
            published: Default::default(),
            bind: j.bind,
        })
    });

    let group_ids: Vec<String> = (0..rooms)
        .map(|_| uuid::Uuid::new_v4().to_string())
        .collect();
    let mut tracks: Vec<(u32, Kind)> = Vec::new();
    for i in 0..n_pub {
        let Some((audio, video)) = publisher_plan(i) else {
            continue;
        };
        if audio {
            tracks.push((i as u32, Kind::Audio));
        }
        if video.is_some() {
            tracks.push((i as u32, Kind::Video));
        }
    }
    let specs: Vec<ClientSpec> = users
        .into_iter()
        .enumerate()
        .map(|(i, user)| {
            let (audio, video) = publisher_plan(i).unwrap_or((false, None));
            ClientSpec {
                index: i as u32,
                user,
                group_id: group_ids[room_of(i)].clone(),
                audio,
                audio_bytes: plan.audio_bytes,
                video,
                expected: tracks
                    .iter()
                    .copied()
                    .filter(|(p, _)| *p != i as u32 && room_of(*p as usize) == room_of(i))
                    .collect(),
            }
        })
        .collect();

    let clock = Arc::new(RunClock::new());
    let counters: Vec<Arc<Counters>> = (0..n).map(|_| Arc::new(Counters::default())).collect();
    let (stop_tx, stop_rx) = watch::channel(false);
    let ws_url = target.ws_url();
    let started = Instant::now();
    let mut progress = Progress {
        last: totals(&counters, &specs),
        last_at: started,
        server: CpuMark::now(target.pid),
        me: CpuMark::now(None),
        started,
    };
    let shards = if opts.sharded {
        Some(Shards::start(opts.threads)?)
    } else {
        None
    };
    let mut handles = Vec::with_capacity(n);
    let gap = Duration::from_secs_f64(1.0 / opts.join_rate.max(0.1));
    let deadline = started + opts.join_timeout;
    let mut last_tick = Instant::now();
    for (i, spec) in specs.iter().enumerate() {
        if i == n_pub && n_pub > 0 {
            // Subscribers join once the publishers are connected, so each gets one renegotiation with every track.
            while totals(&counters[..n_pub], &specs[..n_pub]).connected
                + totals(&counters[..n_pub], &specs[..n_pub]).failed
                < n_pub
                && Instant::now() < deadline
            {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        let (spec, clock_i, counters_i, ws_url, stop_rx, janus) = (
            spec.clone(),
            Arc::clone(&clock),
            Arc::clone(&counters[i]),
            ws_url.clone(),
            stop_rx.clone(),
            janus.clone(),
        );
        let client = async move {
            match janus {
                Some(t) => crate::janus::run(spec, clock_i, counters_i, t, stop_rx).await,
                None => media_client::run(spec, clock_i, counters_i, ws_url, stop_rx).await,
            }
        };
        handles.push(match &shards {
            Some(shards) => shards.spawn(i, client),
            None => tokio::spawn(client),
        });
        tokio::time::sleep(gap).await;
        if last_tick.elapsed() >= Duration::from_secs(1) {
            progress.tick(
                "joining",
                totals(&counters, &specs),
                n,
                target.pid,
                opts.ticks_per_s,
            );
            last_tick = Instant::now();
        }
    }
    loop {
        let t = totals(&counters, &specs);
        if t.ready + t.failed >= n || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        if last_tick.elapsed() >= Duration::from_secs(1) {
            progress.tick(
                "joining",
                totals(&counters, &specs),
                n,
                target.pid,
                opts.ticks_per_s,
            );
            last_tick = Instant::now();
        }
    }
    let setup_s = started.elapsed().as_secs_f64();
    let ready_at_start = totals(&counters, &specs);
    if ready_at_start.ready < n {
        warn!(
            ready = ready_at_start.ready,
            clients = n,
            "measuring although not every client is ready"
        );
    }
    let warm_end = Instant::now() + opts.warmup;
    while Instant::now() < warm_end {
        let left = warm_end
            .saturating_duration_since(Instant::now())
            .min(Duration::from_secs(1));
        tokio::time::sleep(left).await;
        progress.tick(
            "warmup",
            totals(&counters, &specs),
            n,
            target.pid,
            opts.ticks_per_s,
        );
    }

    // The window.
    let http = reqwest::Client::new();
    let metrics0 = target::scrape_media(&http, &target.base).await;
    let server0 = CpuMark::with_udp(target.pid);
    let me0 = CpuMark::with_udp(None);
    let t0 = totals(&counters, &specs);
    let w0 = Instant::now();
    clock.start_window();
    let end = w0 + opts.duration;
    while Instant::now() < end {
        let left = end
            .saturating_duration_since(Instant::now())
            .min(Duration::from_secs(1));
        tokio::time::sleep(left).await;
        progress.tick(
            "measure",
            totals(&counters, &specs),
            n,
            target.pid,
            opts.ticks_per_s,
        );
    }
    clock.end_window();
    let window_s = w0.elapsed().as_secs_f64();
    let server1 = CpuMark::with_udp(target.pid);
    let me1 = CpuMark::with_udp(None);
    let t1 = totals(&counters, &specs);
    let metrics1 = target::scrape_media(&http, &target.base).await;
    crate::report::end_progress();

    // Frames sent just before the window closed are still on their way.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let _ = stop_tx.send(true);
    let mut results: Vec<ClientResult> = Vec::with_capacity(n);
    for h in handles {
        match tokio::time::timeout(Duration::from_secs(10), h).await {
            Ok(Ok(r)) => results.push(r),
            Ok(Err(e)) => results.push(ClientResult {
                errors: vec![format!("client task: {e}")],
                error_count: 1,
                ..Default::default()
            }),
            Err(_) => results.push(ClientResult {
                errors: vec!["client did not stop".into()],
                error_count: 1,
                ..Default::default()
            }),
        }
    }

    drop(shards);
    let server = server0.report(&server1, opts.ticks_per_s);
    let loadgen = me0.report(&me1, opts.ticks_per_s);
    let client_rates = Rates {
        in_pps: (t1.dout - t0.dout) as f64 / window_s,
        out_pps: (t1.din - t0.din) as f64 / window_s,
        in_bytes_per_s: (t1.bout - t0.bout) as f64 / window_s,
        out_bytes_per_s: (t1.bin - t0.bin) as f64 / window_s,
    };
    let server_rates = match (metrics0, metrics1) {
        (Some(a), Some(b)) if b.packets_in > 0.0 => Some(Rates {
            in_pps: (b.packets_in - a.packets_in) / window_s,
            out_pps: (b.packets_out - a.packets_out) / window_s,
            in_bytes_per_s: (b.bytes_in - a.bytes_in) / window_s,
            out_bytes_per_s: (b.bytes_out - a.bytes_out) / window_s,
        }),
        _ => None,
    };
    let out_pps = server_rates
        .as_ref()
        .map_or(client_rates.out_pps, |r| r.out_pps);
    let forwarded = server
        .cpu_s
        .filter(|c| *c > 0.0)
        .map(|c| out_pps * window_s / c);

    // Delivery: each client should have every in-window frame of every other publisher's tracks.
    let sent = |p: u32, k: Kind| {
        results
            .get(p as usize)
            .and_then(|r| r.sent.get(&k))
            .copied()
            .unwrap_or(0)
    };
    let mut delivery = Delivery::default();
    for (p, k) in &tracks {
        delivery.frames_sent += sent(*p, *k);
    }
    let (mut latency, mut join, mut lag) = (Histogram::new(), Histogram::new(), Histogram::new());
    let (mut send_drops, mut unstamped, mut error_count, mut errors) = (0, 0, 0, Vec::new());
    for (spec, r) in specs.iter().zip(&results) {
        for key in &spec.expected {
            let expected = sent(key.0, key.1);
            let got = r.received.get(key).copied().unwrap_or(0).min(expected);
            delivery.frames_expected += expected;
            delivery.frames_received += got;
        }
        latency.merge(&r.latency_us);
        lag.merge(&r.send_lag_us);
        if let Some(j) = r.join_ms {
            join.record(j);
        }
        send_drops += r.send_drops;
        unstamped += r.unstamped;
        error_count += r.error_count;
        for e in &r.errors {
            if errors.len() < 10 && !errors.contains(e) {
                errors.push(e.clone());
            }
        }
    }
    delivery.frames_lost = delivery.frames_expected - delivery.frames_received;
    delivery.loss_percent = if delivery.frames_expected > 0 {
        100.0 * delivery.frames_lost as f64 / delivery.frames_expected as f64
    } else {
        0.0
    };

    Ok(MediaReport {
        scenario: plan.scenario.to_string(),
        params: plan.params,
        server_url: target.base.clone(),
        clients: Clients {
            publishers: n_pub,
            subscribers: n - n_pub,
            connected: t1.connected,
            ready: ready_at_start.ready,
            failed: totals(&counters, &specs).failed,
        },
        setup_s,
        window_s,
        client_rates,
        server_rates,
        server,
        loadgen,
        loadgen_threads: opts.threads,
        forwarded_packets_per_server_cpu_s: forwarded,
        delivery,
        latency_ms: Percentiles::of(&latency, 1000.0),
        join_ms: Percentiles::of(&join, 1.0),
        send_lag_ms: Percentiles::of(&lag, 1000.0),
        client_send_drops: send_drops,
        unstamped_frames: unstamped,
        error_count,
        errors,
    })
}
