//! The `signaling` scenario: N idle authenticated WebSockets held open (server memory per connection), then 1:1
//! call set-ups (`startCall` -> `Ringing` -> callee `accept` -> `Connected` -> `hangUp`) by concurrent pairs for
//! the window (set-up latency and rate).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Result;
use futures_util::StreamExt;
use serde_json::{Value, json};
use switchboard::proto::signal::Target as CallTarget;
use tokio::sync::{Mutex, watch};
use tracing::info;

use crate::histogram::Histogram;
use crate::identity::{IdentityApi, User};
use crate::meter::{self, CpuMark};
use crate::report::{Percentiles, SignalingReport};
use crate::signal::{SignalClient, SignalError};
use crate::target::Target;

/// What to do.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Idle authenticated WebSockets to hold open.
    pub connections: usize,
    /// Identities shared by the idle connections (an identity may have many connections).
    pub identities: usize,
    /// Caller/callee pairs doing call set-ups at once.
    pub concurrency: usize,
    /// WebSocket handshakes in flight while opening.
    pub connect_parallel: usize,
    /// Parameters as given (for the report).
    pub params: Value,
}

/// Time allowed for each step of a call set-up.
const STEP_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Default)]
struct SetupStats {
    ringing: Histogram,
    connected: Histogram,
    ok: u64,
    failed: u64,
    errors: Vec<String>,
}

impl SetupStats {
    fn error(&mut self, e: String) {
        self.failed += 1;
        if self.errors.len() < 10 && !self.errors.contains(&e) {
            self.errors.push(e);
        }
    }
}

fn state_is<'a>(call_id: &'a str, state: &'static str) -> impl Fn(&Value) -> bool + 'a {
    move |v| v["type"] == "callStateChanged" && v["callId"] == call_id && v["state"] == state
}

/// One set-up: returns (ringing, connected) latencies in microseconds.
async fn one_call(
    caller: &mut SignalClient,
    callee: &mut SignalClient,
    callee_id: &str,
) -> Result<(u64, u64), SignalError> {
    let t0 = Instant::now();
    let target = serde_json::to_value(vec![CallTarget {
        communication_user_id: callee_id.to_string(),
        phone_number: None,
    }])
    .unwrap_or_default();
    let r = caller
        .request(
            "startCall",
            json!({ "targets": target, "video": false }),
            STEP_TIMEOUT,
        )
        .await?;
    let call_id = r["callId"].as_str().unwrap_or_default().to_string();
    caller
        .event(STEP_TIMEOUT, "Ringing", state_is(&call_id, "Ringing"))
        .await?;
    let ringing = t0.elapsed().as_micros() as u64;
    callee
        .event(STEP_TIMEOUT, "incomingCall", |v| {
            v["type"] == "incomingCall" && v["callId"] == call_id.as_str()
        })
        .await?;
    callee
        .request("accept", json!({ "callId": call_id }), STEP_TIMEOUT)
        .await?;
    caller
        .event(STEP_TIMEOUT, "Connected", state_is(&call_id, "Connected"))
        .await?;
    let connected = t0.elapsed().as_micros() as u64;
    caller
        .request("hangUp", json!({ "callId": call_id }), STEP_TIMEOUT)
        .await?;
    callee
        .event(
            STEP_TIMEOUT,
            "callee Disconnected",
            state_is(&call_id, "Disconnected"),
        )
        .await?;
    caller.queued.clear();
    callee.queued.clear();
    Ok((ringing, connected))
}

async fn pair_loop(
    url: String,
    caller: User,
    callee: User,
    until: Instant,
    stats: Arc<Mutex<SetupStats>>,
) {
    let open = async |u: &User, name: &str| -> Result<SignalClient, SignalError> {
        let mut c = SignalClient::connect(&url).await?;
        c.auth(&u.token, name).await?;
        Ok(c)
    };
    let (mut a, mut b) = match (open(&caller, "caller").await, open(&callee, "callee").await) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(e), _) | (_, Err(e)) => {
            stats.lock().await.error(format!("pair connect: {e}"));
            return;
        }
    };
    while Instant::now() < until {
        match one_call(&mut a, &mut b, &callee.id).await {
            Ok((ringing, connected)) => {
                let mut s = stats.lock().await;
                s.ringing.record(ringing);
                s.connected.record(connected);
                s.ok += 1;
            }
            Err(e) => {
                let closed = matches!(e, SignalError::Closed(_) | SignalError::Ws(_));
                stats.lock().await.error(e.to_string());
                if closed {
                    return;
                }
            }
        }
    }
}

/// Runs the scenario.
pub async fn run(
    target: &Target,
    plan: Plan,
    duration: Duration,
    ticks_per_s: u64,
) -> Result<SignalingReport> {
    let api = IdentityApi::new(&target.base, &target.host, &target.access_key);
    let idle_ids = plan.identities.clamp(1, plan.connections.max(1));
    let users = api
        .create_users(idle_ids + 2 * plan.concurrency, 16)
        .await?;
    let (idle_users, pair_users) = users.split_at(idle_ids);
    let url = target.ws_url();

    // Let the server settle after the identity requests before the baseline.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let server_rss_before = meter::rss_bytes(target.pid);
    let me_rss_before = meter::rss_bytes(None);

    let open = Arc::new(AtomicUsize::new(0));
    let (stop_tx, stop_rx) = watch::channel(false);
    let t_open = Instant::now();
    let mut failed = 0usize;
    let mut first_error: Option<String> = None;
    let mut handles = Vec::with_capacity(plan.connections);
    {
        let mut opens = futures_util::stream::iter(0..plan.connections)
            .map(|i| {
                let (url, user) = (url.clone(), idle_users[i % idle_users.len()].clone());
                async move {
                    let mut c = SignalClient::connect(&url).await?;
                    c.auth(&user.token, &format!("idle-{i}")).await?;
                    Ok::<_, SignalError>(c)
                }
            })
            .buffer_unordered(plan.connect_parallel.max(1));
        let mut last_tick = Instant::now();
        while let Some(r) = opens.next().await {
            match r {
                Ok(mut c) => {
                    open.fetch_add(1, Ordering::Relaxed);
                    let (open, mut stop) = (Arc::clone(&open), stop_rx.clone());
                    handles.push(tokio::spawn(async move {
                        // Reading keeps answering the server's pings.
                        loop {
                            tokio::select! {
                                _ = stop.changed() => break,
                                m = c.ws.next() => match m {
                                    Some(Ok(_)) => {}
                                    _ => { open.fetch_sub(1, Ordering::Relaxed); return; }
                                },
                            }
                        }
                        drop(c);
                    }));
                }
                Err(e) => {
                    failed += 1;
                    first_error.get_or_insert_with(|| e.to_string());
                }
            }
            if last_tick.elapsed() >= Duration::from_secs(1) {
                crate::report::progress(&format!(
                    "[{:>6.1}s] opening  {} open, {} failed",
                    t_open.elapsed().as_secs_f64(),
                    open.load(Ordering::Relaxed),
                    failed
                ));
                last_tick = Instant::now();
            }
        }
    }
    let idle_open_s = t_open.elapsed().as_secs_f64();
    let idle_open = open.load(Ordering::Relaxed);
    crate::report::progress(&format!(
        "[{:>6.1}s] opened   {idle_open} open, {failed} failed",
        t_open.elapsed().as_secs_f64()
    ));
    crate::report::end_progress();
    info!(
        idle_open,
        failed,
        seconds = idle_open_s,
        "idle connections open"
    );

    // Settle, then read memory; the CPU over the settle time is the idle cost.
    let s0 = CpuMark::now(target.pid);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let s1 = CpuMark::now(target.pid);
    let server_rss_idle = meter::rss_bytes(target.pid);
    let me_rss_idle = meter::rss_bytes(None);
    let per_conn = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if idle_open > 0 => Some((b - a) / idle_open as f64),
        _ => None,
    };

    // Call set-ups.
    let stats = Arc::new(Mutex::new(SetupStats::default()));
    let server0 = CpuMark::now(target.pid);
    let me0 = CpuMark::now(None);
    let w0 = Instant::now();
    let until = w0 + duration;
    let pairs: Vec<_> = pair_users
        .chunks(2)
        .filter(|p| p.len() == 2)
        .map(|p| {
            tokio::spawn(pair_loop(
                url.clone(),
                p[0].clone(),
                p[1].clone(),
                until,
                Arc::clone(&stats),
            ))
        })
        .collect();
    while Instant::now() < until {
        tokio::time::sleep(
            Duration::from_secs(1).min(until.saturating_duration_since(Instant::now())),
        )
        .await;
        let s = stats.lock().await;
        crate::report::progress(&format!(
            "[{:>6.1}s] set-ups  {} connected, {} failed, {} idle open",
            w0.elapsed().as_secs_f64(),
            s.ok,
            s.failed,
            open.load(Ordering::Relaxed)
        ));
    }
    for p in pairs {
        let _ = tokio::time::timeout(STEP_TIMEOUT * 5, p).await;
    }
    let window_s = w0.elapsed().as_secs_f64();
    let server1 = CpuMark::now(target.pid);
    let me1 = CpuMark::now(None);
    crate::report::end_progress();
    let idle_open_at_end = open.load(Ordering::Relaxed);
    let _ = stop_tx.send(true);
    for h in handles {
        let _ = h.await;
    }

    let s = stats.lock().await;
    let mut errors = s.errors.clone();
    if let Some(e) = first_error {
        errors.insert(0, format!("idle connection: {e}"));
    }
    Ok(SignalingReport {
        scenario: "signaling".into(),
        params: plan.params,
        server_url: target.base.clone(),
        idle_requested: plan.connections,
        idle_open,
        idle_failed: failed,
        idle_open_s,
        idle_open_at_end,
        server_rss_before_mib: server_rss_before.map(|b| b / 1_048_576.0),
        server_rss_idle_mib: server_rss_idle.map(|b| b / 1_048_576.0),
        server_rss_per_connection_bytes: per_conn(server_rss_before, server_rss_idle),
        loadgen_rss_per_connection_bytes: per_conn(me_rss_before, me_rss_idle),
        server_idle_cpu_percent: s0.since(&s1, ticks_per_s).1,
        setup_concurrency: plan.concurrency,
        setup_window_s: window_s,
        calls_connected: s.ok,
        calls_failed: s.failed,
        calls_per_s: s.ok as f64 / window_s,
        ringing_ms: Percentiles::of(&s.ringing, 1000.0),
        connected_ms: Percentiles::of(&s.connected, 1000.0),
        server: server0.report(&server1, ticks_per_s),
        loadgen: me0.report(&me1, ticks_per_s),
        errors,
    })
}
