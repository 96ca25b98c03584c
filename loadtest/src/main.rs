//! `switchboard-loadtest`: load generator for Switchboard (docs/loadtest.md).
//!
//! Simulated WebRTC clients (str0m) that get tokens from the identity API, join group calls over the real
//! signaling WebSocket and media UDP and publish stamped synthetic audio and video; or many idle WebSockets plus
//! 1:1 call set-ups. Prints a live progress line on stderr, then a table and a JSON report.
#![forbid(unsafe_code)]

mod histogram;
mod identity;
mod janus;
mod media_client;
mod media_run;
mod meter;
mod payload;
mod procstat;
mod report;
mod shards;
mod signal;
mod signaling_run;
mod target;
mod units;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use serde_json::json;
use tracing::{info, warn};

use crate::media_client::VideoSpec;
use crate::target::Target;

/// Load generator for Switchboard: simulated WebRTC and signaling clients, with a report.
#[derive(Parser, Debug)]
#[command(name = "switchboard-loadtest", version, about)]
struct Cli {
    #[command(flatten)]
    common: Common,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Args, Debug)]
struct Common {
    /// The server's plain-HTTP listener (identity API, /metrics, WebSocket). Ignored with --spawn-server.
    #[arg(long, global = true, default_value = "http://127.0.0.1:8080")]
    server: String,
    /// The deployment's connection string (`endpoint=...;accesskey=...`); default: read from --data-dir.
    #[arg(
        long,
        global = true,
        env = "SWITCHBOARD_CONNECTION_STRING",
        hide_env_values = true
    )]
    connection_string: Option<String>,
    /// The server's data directory, to read `connection-string.txt` from.
    #[arg(long, global = true, default_value = "./data")]
    data_dir: PathBuf,
    /// The server's process id, for its CPU time and RSS (from /proc). Without it they are not reported.
    #[arg(long, global = true)]
    server_pid: Option<u32>,
    /// Start this `switchboard` binary (`serve`) in a temporary data directory on free loopback ports and load it.
    #[arg(long, global = true, value_name = "PATH_TO_SWITCHBOARD")]
    spawn_server: Option<PathBuf>,
    /// Log filter of a spawned server.
    #[arg(long, global = true, default_value = "warn")]
    server_log: String,
    /// Length of the measurement window (`30s`, `2m`, `500ms`).
    #[arg(long, global = true, default_value = "30s", value_parser = units::parse_duration)]
    duration: Duration,
    /// Also write the JSON report to this file (it always goes to stdout after the table).
    #[arg(long, global = true)]
    json: Option<PathBuf>,
    /// Load generator threads (default: the number of CPUs): the workers of its tokio runtime (or, with --sharded,
    /// the client shards).
    #[arg(long, global = true)]
    threads: Option<usize>,
    /// Clients joining per second.
    #[arg(long, global = true, default_value_t = 50.0)]
    join_rate: f64,
    /// Longest wait for every client to connect and receive its tracks before measuring anyway.
    #[arg(long, global = true, default_value = "120s", value_parser = units::parse_duration)]
    join_timeout: Duration,
    /// Media flows this long after every client is ready before the window opens (lets bandwidth estimates and
    /// pacers settle; the default measures from the first second).
    #[arg(long, global = true, default_value = "0s", value_parser = units::parse_duration)]
    warmup: Duration,
    /// Load Janus' VideoRoom plugin at this WebSocket URL (e.g. `ws://127.0.0.1:8188`) instead of Switchboard
    /// (`audio-room`, `livestream`, `video-meeting`); pass Janus' pid as --server-pid for its CPU and RSS.
    #[arg(long, global = true, value_name = "WS_URL")]
    janus: Option<String>,
    /// VideoRoom room id to join with --janus (it must exist in Janus' config).
    #[arg(long, global = true, default_value_t = 1234)]
    janus_room: u64,
    /// Address the clients bind with --janus (default: this host's primary IPv4 address; Janus does not use
    /// loopback).
    #[arg(long, global = true)]
    janus_bind: Option<std::net::IpAddr>,
    /// Pin media clients to --threads single-threaded runtimes (shards) instead of one work-stealing runtime.
    #[arg(long, global = true)]
    sharded: bool,
}

#[derive(Args, Debug, Clone)]
struct VideoArgs {
    /// Video send bitrate per publisher (all simulcast layers together), bit/s (`500k`, `2M`).
    #[arg(long, default_value = "500k", value_parser = units::parse_bitrate)]
    video_bitrate: u64,
    /// Video frames per second.
    #[arg(long, default_value_t = 30)]
    fps: u32,
    /// A keyframe at least this often (and whenever the SFU asks).
    #[arg(long, default_value = "2s", value_parser = units::parse_duration)]
    keyframe_interval: Duration,
    /// Three simulcast layers (320x180, 640x360, 1280x720 at 10/25/65 % of the bitrate).
    #[arg(long)]
    simulcast: bool,
}

impl VideoArgs {
    fn spec(&self) -> VideoSpec {
        VideoSpec {
            bitrate_bps: self.video_bitrate,
            fps: self.fps.clamp(1, 120),
            keyframe_every: self.keyframe_interval,
            simulcast: self.simulcast,
        }
    }
}

#[derive(Subcommand, Debug)]
enum Scenario {
    /// P audio publishers and S listeners in one group call (or in each of R group calls).
    AudioRoom {
        /// Clients that publish audio (50 packets/s each), per room.
        #[arg(long, default_value_t = 10)]
        publishers: usize,
        /// Clients that only listen, per room.
        #[arg(long, default_value_t = 100)]
        subscribers: usize,
        /// Identical group calls, each with --publishers and --subscribers (rooms spread over the server's media
        /// workers).
        #[arg(long, default_value_t = 1)]
        rooms: usize,
        /// Audio frame size, bytes (80 = Opus at 32 kbit/s, 20 ms).
        #[arg(long, default_value_t = 80)]
        audio_bytes: usize,
    },
    /// N participants in one group call, each publishing audio and video and receiving everyone else.
    VideoMeeting {
        /// Participants.
        #[arg(long, default_value_t = 8)]
        participants: usize,
        /// Audio frame size, bytes.
        #[arg(long, default_value_t = 80)]
        audio_bytes: usize,
        #[command(flatten)]
        video: VideoArgs,
    },
    /// One publisher (audio and video) and S viewers.
    Livestream {
        /// Viewers.
        #[arg(long, default_value_t = 100)]
        viewers: usize,
        /// Audio frame size, bytes.
        #[arg(long, default_value_t = 80)]
        audio_bytes: usize,
        #[command(flatten)]
        video: VideoArgs,
    },
    /// N idle authenticated WebSockets (server RSS per connection), then 1:1 call set-ups for --duration.
    Signaling {
        /// Idle WebSockets to hold open.
        #[arg(long, default_value_t = 1000)]
        connections: usize,
        /// Identities the idle connections share.
        #[arg(long, default_value_t = 100)]
        identities: usize,
        /// Caller/callee pairs setting up calls at once.
        #[arg(long, default_value_t = 10)]
        concurrency: usize,
        /// WebSocket handshakes in flight while opening.
        #[arg(long, default_value_t = 200)]
        connect_parallel: usize,
    },
}

/// Open files wanted: a UDP socket per media client, a TCP socket per WebSocket, and room for the rest.
const NOFILE_WANTED: u64 = 65_536;

fn raise_nofile() {
    // As root the hard limit can be raised too; otherwise settle for the hard limit.
    let (soft, hard) = rlimit::Resource::NOFILE.get().unwrap_or((0, 0));
    if soft >= NOFILE_WANTED {
        return;
    }
    if rlimit::Resource::NOFILE
        .set(NOFILE_WANTED, NOFILE_WANTED.max(hard))
        .is_ok()
    {
        info!(
            from = soft,
            to = NOFILE_WANTED,
            "raised the open-file limit"
        );
        return;
    }
    match rlimit::increase_nofile_limit(NOFILE_WANTED) {
        Ok(n) if n < NOFILE_WANTED => warn!(
            limit = n,
            "open-file limit stays below {NOFILE_WANTED}: see docs/loadtest.md"
        ),
        Ok(n) => info!(limit = n, "raised the open-file limit"),
        Err(e) => warn!(error = %e, "cannot raise the open-file limit"),
    }
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    raise_nofile();
    str0m::crypto::from_feature_flags().install_process_default();
    let threads = cli
        .common
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()))
        .max(1);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
        .context("tokio runtime")?;
    rt.block_on(run(cli, threads))
}

async fn run(cli: Cli, threads: usize) -> Result<()> {
    let c = &cli.common;
    let target = match (&c.janus, &c.spawn_server) {
        (Some(_), _) => {
            if matches!(cli.scenario, Scenario::Signaling { .. }) {
                anyhow::bail!("--janus loads media scenarios only");
            }
            Target::foreign(c.server_pid)
        }
        (None, Some(path)) => Target::spawn(path, &c.server_log).await?,
        (None, None) => Target::existing(
            &c.server,
            c.connection_string.as_deref(),
            &c.data_dir,
            c.server_pid,
        )?,
    };
    if target.pid.is_none() {
        warn!("no --server-pid: server CPU and RSS are not reported");
    }
    let ticks_per_s = procstat::ticks_per_second();
    let opts = media_run::RunOptions {
        duration: c.duration,
        join_rate: c.join_rate,
        join_timeout: c.join_timeout,
        warmup: c.warmup,
        sharded: c.sharded,
        identity_parallel: 16,
        threads,
        ticks_per_s,
        janus: c.janus.as_ref().map(|url| media_run::JanusOptions {
            url: url.clone(),
            room: c.janus_room,
            bind: c.janus_bind.unwrap_or_else(janus::default_bind),
        }),
    };
    let scenario = async {
        let r: Result<(String, serde_json::Value)> = Ok(match &cli.scenario {
            Scenario::AudioRoom {
                publishers,
                subscribers,
                rooms,
                audio_bytes,
            } => {
                let plan = media_run::Plan {
                    scenario: "audio-room",
                    params: json!({ "publishers": publishers, "subscribers": subscribers, "rooms": rooms, "audio_bytes": audio_bytes, "duration_s": c.duration.as_secs_f64() }),
                    publishers: vec![(true, None); *publishers],
                    subscribers: *subscribers,
                    rooms: *rooms,
                    audio_bytes: *audio_bytes,
                };
                let r = media_run::run(&target, plan, &opts).await?;
                (report::media_table(&r), serde_json::to_value(&r)?)
            }
            Scenario::VideoMeeting {
                participants,
                audio_bytes,
                video,
            } => {
                let plan = media_run::Plan {
                    scenario: "video-meeting",
                    params: json!({ "participants": participants, "video_bitrate_bps": video.video_bitrate, "fps": video.fps,
                        "simulcast": video.simulcast, "keyframe_interval_s": video.keyframe_interval.as_secs_f64(), "duration_s": c.duration.as_secs_f64() }),
                    publishers: vec![(true, Some(video.spec())); *participants],
                    subscribers: 0,
                    rooms: 1,
                    audio_bytes: *audio_bytes,
                };
                let r = media_run::run(&target, plan, &opts).await?;
                (report::media_table(&r), serde_json::to_value(&r)?)
            }
            Scenario::Livestream {
                viewers,
                audio_bytes,
                video,
            } => {
                let plan = media_run::Plan {
                    scenario: "livestream",
                    params: json!({ "viewers": viewers, "video_bitrate_bps": video.video_bitrate, "fps": video.fps,
                        "simulcast": video.simulcast, "keyframe_interval_s": video.keyframe_interval.as_secs_f64(), "duration_s": c.duration.as_secs_f64() }),
                    publishers: vec![(true, Some(video.spec()))],
                    subscribers: *viewers,
                    rooms: 1,
                    audio_bytes: *audio_bytes,
                };
                let r = media_run::run(&target, plan, &opts).await?;
                (report::media_table(&r), serde_json::to_value(&r)?)
            }
            Scenario::Signaling {
                connections,
                identities,
                concurrency,
                connect_parallel,
            } => {
                let plan = signaling_run::Plan {
                    connections: *connections,
                    identities: *identities,
                    concurrency: *concurrency,
                    connect_parallel: *connect_parallel,
                    params: json!({ "connections": connections, "identities": identities, "concurrency": concurrency, "duration_s": c.duration.as_secs_f64() }),
                };
                let r = signaling_run::run(&target, plan, c.duration, ticks_per_s).await?;
                (report::signaling_table(&r), serde_json::to_value(&r)?)
            }
        });
        r
    };
    // Ctrl-C ends the run early; returning drops `target`, which stops a spawned server.
    let (table, doc) = tokio::select! {
        r = scenario => r?,
        _ = tokio::signal::ctrl_c() => anyhow::bail!("interrupted"),
    };
    let text = serde_json::to_string_pretty(&doc)?;
    println!("{table}");
    println!("{text}");
    if let Some(path) = &c.json {
        std::fs::write(path, format!("{text}\n"))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if target.spawned() {
        info!("stopping the spawned server");
    }
    drop(target);
    Ok(())
}
