//! What a run measured: the JSON document (field names carry their units) and the human table.

use serde::Serialize;

use crate::histogram::Histogram;

/// Percentiles of a distribution, in the unit its field name says.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Percentiles {
    /// Number of samples.
    pub samples: u64,
    /// Median.
    pub p50: Option<f64>,
    /// 99th percentile.
    pub p99: Option<f64>,
    /// Largest sample.
    pub max: Option<f64>,
    /// Mean.
    pub mean: Option<f64>,
}

impl Percentiles {
    /// From a histogram whose samples are in some unit, divided by `scale` (1000 turns µs into ms).
    pub fn of(h: &Histogram, scale: f64) -> Percentiles {
        let f = |v: Option<u64>| v.map(|v| v as f64 / scale);
        Percentiles {
            samples: h.count(),
            p50: f(h.percentile(50.0)),
            p99: f(h.percentile(99.0)),
            max: f(h.max()),
            mean: h.mean().map(|m| m / scale),
        }
    }
}

/// CPU and memory of one process over the measurement window.
#[derive(Debug, Clone, Serialize, Default)]
pub struct ProcessReport {
    /// Process id.
    pub pid: Option<u32>,
    /// User + system CPU time used inside the window, seconds.
    pub cpu_s: Option<f64>,
    /// `cpu_s` / window length, percent of one core (200 = two cores busy).
    pub cpu_percent: Option<f64>,
    /// Resident set at the end of the window (VmRSS), MiB.
    pub rss_mib: Option<f64>,
    /// Peak resident set since the process started (VmHWM), MiB.
    pub peak_rss_mib: Option<f64>,
    /// Datagrams the kernel dropped inside the window because one of the process's UDP sockets had a full receive
    /// buffer (`drops` of `/proc/net/udp` for its sockets): the process did not read fast enough.
    pub udp_receive_drops: Option<u64>,
}

/// Datagram rates, per second over the window.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Rates {
    /// Datagrams into the server (sent by the simulated clients), packets/s.
    pub in_pps: f64,
    /// Datagrams out of the server (received by the simulated clients), packets/s.
    pub out_pps: f64,
    /// Bytes into the server (UDP payload), bytes/s.
    pub in_bytes_per_s: f64,
    /// Bytes out of the server, bytes/s.
    pub out_bytes_per_s: f64,
}

/// Frames sent inside the window and how many of them arrived at each subscriber that should have them.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Delivery {
    /// Frames the publishers sent inside the window (a simulcast frame counts once).
    pub frames_sent: u64,
    /// Sum over subscribers of the frames they should have received.
    pub frames_expected: u64,
    /// Of those, frames received.
    pub frames_received: u64,
    /// `frames_expected - frames_received`.
    pub frames_lost: u64,
    /// `frames_lost / frames_expected`, percent.
    pub loss_percent: f64,
}

/// Client counts.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Clients {
    /// Clients that publish.
    pub publishers: usize,
    /// Clients that only listen.
    pub subscribers: usize,
    /// Clients whose ICE+DTLS connected.
    pub connected: usize,
    /// Clients that received every track they should before the window opened.
    pub ready: usize,
    /// Clients that gave up (signaling closed, error).
    pub failed: usize,
}

/// The report of a media scenario (`audio-room`, `video-meeting`, `livestream`).
#[derive(Debug, Clone, Serialize, Default)]
pub struct MediaReport {
    /// Scenario name.
    pub scenario: String,
    /// The scenario's parameters as given.
    pub params: serde_json::Value,
    /// The server's base URL.
    pub server_url: String,
    /// Client counts.
    pub clients: Clients,
    /// Time from the first join to the window's start, seconds.
    pub setup_s: f64,
    /// Length of the measurement window, seconds.
    pub window_s: f64,
    /// Rates counted by the clients (UDP datagrams sent and received by all simulated clients).
    pub client_rates: Rates,
    /// Rates the server counts on its media sockets (`/metrics`); `None` if unavailable.
    pub server_rates: Option<Rates>,
    /// Server process.
    pub server: ProcessReport,
    /// This load generator.
    pub loadgen: ProcessReport,
    /// Load generator threads (runtime workers, or client shards with `--sharded`).
    pub loadgen_threads: usize,
    /// Datagrams the server sent per second of its CPU time (`server_rates.out_pps * window / server.cpu_s`);
    /// from client counts if the server has no metrics.
    pub forwarded_packets_per_server_cpu_s: Option<f64>,
    /// Frame delivery inside the window.
    pub delivery: Delivery,
    /// Added forwarding latency of frames sent inside the window: arrival at the subscriber minus the send stamp
    /// (both clients' str0m processing + server forwarding + loopback), milliseconds.
    pub latency_ms: Percentiles,
    /// From opening the WebSocket to ICE+DTLS connected, per client, milliseconds.
    pub join_ms: Percentiles,
    /// How late publishers sent their frames against schedule, milliseconds: large values mean the load
    /// generator's timers run late (it is overloaded), so its latency figures include its own delay.
    pub send_lag_ms: Percentiles,
    /// Datagrams the clients could not send (socket buffer full).
    pub client_send_drops: u64,
    /// Received frames without a stamp.
    pub unstamped_frames: u64,
    /// Number of client errors.
    pub error_count: u64,
    /// The first few client errors.
    pub errors: Vec<String>,
}

/// The report of the `signaling` scenario.
#[derive(Debug, Clone, Serialize, Default)]
pub struct SignalingReport {
    /// Always `signaling`.
    pub scenario: String,
    /// The scenario's parameters as given.
    pub params: serde_json::Value,
    /// The server's base URL.
    pub server_url: String,
    /// Idle WebSockets asked for.
    pub idle_requested: usize,
    /// Idle WebSockets open and authenticated.
    pub idle_open: usize,
    /// Idle WebSockets that failed to open or authenticate.
    pub idle_failed: usize,
    /// Time to open and authenticate them all, seconds.
    pub idle_open_s: f64,
    /// Idle WebSockets still open at the end.
    pub idle_open_at_end: usize,
    /// Server RSS before opening them, MiB.
    pub server_rss_before_mib: Option<f64>,
    /// Server RSS with them all open (after settling), MiB.
    pub server_rss_idle_mib: Option<f64>,
    /// (RSS with them open - RSS before) / open connections, bytes per connection.
    pub server_rss_per_connection_bytes: Option<f64>,
    /// This process's RSS delta per connection (the client side), bytes.
    pub loadgen_rss_per_connection_bytes: Option<f64>,
    /// Server CPU while the idle connections were held (no call set-up), percent of one core.
    pub server_idle_cpu_percent: Option<f64>,
    /// Concurrent caller/callee pairs doing set-ups.
    pub setup_concurrency: usize,
    /// Length of the set-up phase, seconds.
    pub setup_window_s: f64,
    /// Calls that reached Connected.
    pub calls_connected: u64,
    /// Calls that failed (refusal, timeout).
    pub calls_failed: u64,
    /// Connected calls per second.
    pub calls_per_s: f64,
    /// `startCall` sent -> caller sees `Ringing`, milliseconds.
    pub ringing_ms: Percentiles,
    /// `startCall` sent -> caller sees `Connected` (the callee accepts as soon as `incomingCall` arrives), ms.
    pub connected_ms: Percentiles,
    /// Server process over the set-up phase.
    pub server: ProcessReport,
    /// This load generator over the set-up phase.
    pub loadgen: ProcessReport,
    /// The first few errors.
    pub errors: Vec<String>,
}

/// Writes a progress line to stderr: rewritten in place on a terminal, one line each otherwise (logs, CI).
pub fn progress(line: &str) {
    use std::io::IsTerminal;
    if std::io::stderr().is_terminal() {
        eprint!("\r{line}   ");
    } else {
        eprintln!("{line}");
    }
}

/// Ends the in-place progress line (a newline on a terminal).
pub fn end_progress() {
    use std::io::IsTerminal;
    if std::io::stderr().is_terminal() {
        eprintln!();
    }
}

fn opt(v: Option<f64>, digits: usize, unit: &str) -> String {
    match v {
        Some(v) => format!("{v:.digits$}{unit}"),
        None => "-".to_string(),
    }
}

fn pct(p: &Percentiles, unit: &str) -> String {
    format!(
        "p50 {}  p99 {}  max {}  ({} samples)",
        opt(p.p50, 2, unit),
        opt(p.p99, 2, unit),
        opt(p.max, 2, unit),
        p.samples
    )
}

fn proc_line(p: &ProcessReport) -> String {
    format!(
        "cpu {} ({} of one core)  rss {}  peak {}  udp drops {}",
        opt(p.cpu_s, 2, " s"),
        opt(p.cpu_percent, 0, " %"),
        opt(p.rss_mib, 1, " MiB"),
        opt(p.peak_rss_mib, 1, " MiB"),
        p.udp_receive_drops
            .map_or("-".to_string(), |d| d.to_string()),
    )
}

/// Human-readable multi-line table of a media run.
pub fn media_table(r: &MediaReport) -> String {
    let c = &r.clients;
    let mut t = String::new();
    let mut row = |k: &str, v: String| t.push_str(&format!("{k:<34} {v}\n"));
    row("scenario", format!("{} {}", r.scenario, r.params));
    row(
        "clients",
        format!(
            "{} publishers, {} subscribers: {} connected, {} ready, {} failed",
            c.publishers, c.subscribers, c.connected, c.ready, c.failed
        ),
    );
    row(
        "setup / window",
        format!("{:.1} s / {:.1} s", r.setup_s, r.window_s),
    );
    let cr = &r.client_rates;
    row(
        "clients sent (server in)",
        format!("{:.0} pkt/s  {:.0} B/s", cr.in_pps, cr.in_bytes_per_s),
    );
    row(
        "clients received (server out)",
        format!("{:.0} pkt/s  {:.0} B/s", cr.out_pps, cr.out_bytes_per_s),
    );
    if let Some(s) = &r.server_rates {
        row(
            "server media in (/metrics)",
            format!("{:.0} pkt/s  {:.0} B/s", s.in_pps, s.in_bytes_per_s),
        );
        row(
            "server media out (/metrics)",
            format!("{:.0} pkt/s  {:.0} B/s", s.out_pps, s.out_bytes_per_s),
        );
    }
    row("server", proc_line(&r.server));
    row(
        "load generator",
        format!("{}  ({} threads)", proc_line(&r.loadgen), r.loadgen_threads),
    );
    row(
        "forwarded pkt per server CPU-s",
        opt(r.forwarded_packets_per_server_cpu_s, 0, ""),
    );
    let d = &r.delivery;
    row(
        "frames (window)",
        format!(
            "sent {}  expected {}  received {}  lost {} ({:.3} %)",
            d.frames_sent, d.frames_expected, d.frames_received, d.frames_lost, d.loss_percent
        ),
    );
    row("added latency", pct(&r.latency_ms, " ms"));
    row("join time", pct(&r.join_ms, " ms"));
    row("publisher send lag", pct(&r.send_lag_ms, " ms"));
    row(
        "client send drops / unstamped",
        format!("{} / {}", r.client_send_drops, r.unstamped_frames),
    );
    row("errors", format!("{} {:?}", r.error_count, r.errors));
    t
}

/// Human-readable multi-line table of a signaling run.
pub fn signaling_table(r: &SignalingReport) -> String {
    let mut t = String::new();
    let mut row = |k: &str, v: String| t.push_str(&format!("{k:<34} {v}\n"));
    row("scenario", format!("{} {}", r.scenario, r.params));
    row(
        "idle websockets",
        format!(
            "{} of {} open ({} failed) in {:.1} s; {} still open at the end",
            r.idle_open, r.idle_requested, r.idle_failed, r.idle_open_s, r.idle_open_at_end
        ),
    );
    row(
        "server rss before / idle",
        format!(
            "{} / {}",
            opt(r.server_rss_before_mib, 1, " MiB"),
            opt(r.server_rss_idle_mib, 1, " MiB")
        ),
    );
    row(
        "server rss per idle connection",
        opt(r.server_rss_per_connection_bytes, 0, " B"),
    );
    row(
        "load generator rss per connection",
        opt(r.loadgen_rss_per_connection_bytes, 0, " B"),
    );
    row(
        "server cpu while idle",
        opt(r.server_idle_cpu_percent, 1, " %"),
    );
    row(
        "call set-ups",
        format!(
            "{} connected, {} failed in {:.1} s = {:.1} calls/s ({} concurrent pairs)",
            r.calls_connected, r.calls_failed, r.setup_window_s, r.calls_per_s, r.setup_concurrency
        ),
    );
    row("invite -> ringing", pct(&r.ringing_ms, " ms"));
    row("invite -> connected", pct(&r.connected_ms, " ms"));
    row("server (set-up phase)", proc_line(&r.server));
    row("load generator (set-up phase)", proc_line(&r.loadgen));
    row("errors", format!("{:?}", r.errors));
    t
}
