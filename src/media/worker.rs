//! A media worker: a thread with its own current-thread runtime that owns one [`Sfu`] (the rooms
//! pinned to it) and its sockets, applies commands, moves datagrams, fires timers.

use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::Poll;
use std::time::{Duration, Instant};

use metrics::{Counter, Gauge, counter, gauge};
use tokio::io::ReadBuf;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::placement::Placement;
use super::send::{SEND_BATCH, send_batch};
use super::sockets::{BoundSocket, MediaSocket};
use super::{Command, MediaError};
use crate::sfu::{Sfu, SfuConfig, SfuEvent, SfuStats, Transmit};

/// Receive buffer: larger than any datagram a WebRTC peer sends (str0m and browsers stay under
/// 1200-1500 bytes); longer datagrams are truncated by the kernel and then fail SRTP authentication.
const RECV_BUFFER: usize = 2048;

/// How long the worker sleeps when the SFU has no timer (no participants).
const IDLE_TICK: Duration = Duration::from_secs(1);

/// At most one socket-error warning per this interval; the rest are counted.
const ERROR_LOG_INTERVAL: Duration = Duration::from_secs(10);

enum Step {
    Stop,
    Command(Option<Command>),
    Datagram(usize, io::Result<(usize, SocketAddr)>),
    Timeout,
}

/// What a worker shares with the handle and the other workers.
pub(crate) struct Shared {
    /// Where rooms and participants live; a worker forgets participants whose connection ended.
    pub(crate) placement: Arc<Mutex<Placement>>,
    /// Every worker's events go to this one channel.
    pub(crate) events: mpsc::UnboundedSender<SfuEvent>,
    pub(crate) shutdown: CancellationToken,
}

/// Starts worker `index` on its own thread (`media-{index}`) with a current-thread runtime, owning
/// `sockets` and an [`Sfu`] that advertises them. Returns once the sockets are registered with the
/// worker's runtime; `done` is dropped when the thread ends.
///
/// # Errors
/// [`MediaError::Worker`] if the runtime or the thread cannot be made or a socket cannot be
/// registered.
pub(crate) async fn spawn(
    index: usize,
    sockets: Vec<BoundSocket>,
    commands: mpsc::UnboundedReceiver<Command>,
    shared: Shared,
    done: oneshot::Sender<()>,
) -> Result<(), MediaError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(MediaError::Worker)?;
    let (ready_tx, ready) = oneshot::channel::<io::Result<()>>();
    std::thread::Builder::new()
        .name(format!("media-{index}"))
        .spawn(move || {
            let _done = done;
            runtime.block_on(async move {
                let registered: io::Result<Vec<MediaSocket>> =
                    sockets.into_iter().map(BoundSocket::register).collect();
                let sockets = match registered {
                    Ok(s) => {
                        let _ = ready_tx.send(Ok(()));
                        s
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let sfu = Sfu::new(SfuConfig {
                    local_candidates: sockets.iter().map(|s| s.advertised).collect(),
                });
                run(index, sfu, sockets, commands, shared).await;
            });
        })
        .map_err(MediaError::Worker)?;
    match ready.await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(MediaError::Worker(e)),
        Err(_) => Err(MediaError::Stopped),
    }
}

/// Runs until `shutdown` is cancelled.
async fn run(
    index: usize,
    mut sfu: Sfu,
    sockets: Vec<MediaSocket>,
    mut commands: mpsc::UnboundedReceiver<Command>,
    shared: Shared,
) {
    let Shared {
        placement,
        events,
        shutdown,
    } = shared;
    let mut buf = vec![0u8; RECV_BUFFER];
    let mut first_socket = 0;
    let mut commands_open = true;
    let mut meters = Meters::new(index);
    let mut out = Outlet {
        events,
        placement,
        batch: Vec::with_capacity(SEND_BATCH),
    };
    info!(worker = index, sockets = ?sockets.iter().map(|s| s.local).collect::<Vec<_>>(), "media worker started");
    loop {
        out.flush(&mut sfu, &sockets, &mut meters).await;
        let deadline = sfu
            .poll_timeout()
            .unwrap_or_else(|| Instant::now() + IDLE_TICK);
        let step = tokio::select! {
            () = shutdown.cancelled() => Step::Stop,
            command = commands.recv(), if commands_open => Step::Command(command),
            (index, result) = recv_any(&sockets, &mut buf, first_socket) => Step::Datagram(index, result),
            () = tokio::time::sleep_until(deadline.into()) => Step::Timeout,
        };
        match step {
            Step::Stop => break,
            Step::Command(Some(command)) => apply(&mut sfu, command),
            Step::Command(None) => {
                // Every handle is gone: no new participants, but running calls go on until shutdown.
                commands_open = false;
            }
            Step::Datagram(index, Ok((len, source))) => {
                first_socket = (index + 1) % sockets.len().max(1);
                meters.packets_in.increment(1);
                meters.bytes_in.increment(len as u64);
                if let (Some(socket), Some(contents)) = (sockets.get(index), buf.get(..len)) {
                    sfu.handle_receive(Instant::now(), source, socket.advertised, contents);
                }
                receive_ready(&mut sfu, &sockets, &mut buf, index, &mut meters);
            }
            Step::Datagram(index, Err(e)) => {
                // Typically ECONNREFUSED from an ICMP port-unreachable for an earlier send.
                first_socket = (index + 1) % sockets.len().max(1);
                meters.socket_error("receive", &e);
                tokio::task::yield_now().await;
            }
            Step::Timeout => {}
        }
        // Timers are checked after every step, so a stream of datagrams cannot starve them.
        let now = Instant::now();
        if sfu.poll_timeout().is_some_and(|t| t <= now) {
            sfu.handle_timeout(now);
        }
    }
    out.flush(&mut sfu, &sockets, &mut meters).await;
    info!(
        worker = index,
        participants = sfu.participant_count(),
        "media worker stopped"
    );
}

fn apply(sfu: &mut Sfu, command: Command) {
    match command {
        Command::Offer {
            room,
            participant,
            label,
            sdp,
            sources,
            reply,
        } => {
            let answer =
                sfu.handle_offer(Instant::now(), &room, participant, &label, &sdp, &sources);
            if let Err(e) = &answer {
                info!(%participant, %room, error = %e, "offer refused");
            }
            // The requester may have given up waiting; nothing to do then.
            let _ = reply.send(answer);
        }
        Command::Answer {
            participant,
            sdp,
            reply,
        } => {
            let result = sfu.handle_answer(Instant::now(), participant, &sdp);
            if let Err(e) = &result {
                info!(%participant, error = %e, "answer refused");
            }
            let _ = reply.send(result);
        }
        Command::AddCandidate {
            participant,
            candidate,
        } => {
            if let Err(e) = sfu.add_remote_candidate(participant, &candidate) {
                info!(%participant, error = %e, "remote candidate refused");
            }
        }
        Command::Remove { participant } => sfu.remove_participant(participant),
        Command::SetPreferredSize {
            participant,
            mid,
            width,
            height,
        } => {
            if let Err(e) = sfu.set_preferred_size(Instant::now(), participant, &mid, width, height)
            {
                debug!(%participant, %mid, error = %e, "preferred video size ignored");
            }
        }
        Command::AddAgent {
            room,
            participant,
            label,
            sink,
        } => {
            if let Err(e) = sfu.add_agent(Instant::now(), &room, participant, &label, sink) {
                info!(%participant, %room, error = %e, "media agent refused");
            }
        }
        Command::AgentAudio {
            participant,
            timestamp,
            level,
            opus,
        } => sfu.handle_agent_audio(Instant::now(), participant, timestamp, level, &opus),
    }
}

/// Most datagrams taken without waiting after one that was waited for, before timers and sends are
/// served: the per-wake-up work (finding the next timer, flushing) is shared by the batch.
const RECEIVE_BATCH: usize = 64;

/// Hands the SFU the datagrams already queued on the sockets (up to [`RECEIVE_BATCH`]), starting
/// with socket `first`, without waiting.
fn receive_ready(
    sfu: &mut Sfu,
    sockets: &[MediaSocket],
    buf: &mut [u8],
    first: usize,
    meters: &mut Meters,
) {
    let count = sockets.len();
    let mut taken = 0;
    for offset in 0..count {
        let index = (first + offset) % count;
        // Indexing cannot fail: index < count == sockets.len().
        let socket = &sockets[index];
        while taken < RECEIVE_BATCH {
            match socket.socket.try_recv_from(buf) {
                Ok((len, source)) => {
                    taken += 1;
                    meters.packets_in.increment(1);
                    meters.bytes_in.increment(len as u64);
                    if let Some(contents) = buf.get(..len) {
                        sfu.handle_receive(Instant::now(), source, socket.advertised, contents);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    meters.socket_error("receive", &e);
                    break;
                }
            }
        }
    }
}

/// Waits for a datagram on any socket, polling them round-robin from `first` so that a busy socket
/// cannot starve the others. Cancel-safe: nothing is received unless the future completes.
async fn recv_any(
    sockets: &[MediaSocket],
    buf: &mut [u8],
    first: usize,
) -> (usize, io::Result<(usize, SocketAddr)>) {
    let count = sockets.len();
    std::future::poll_fn(|cx| {
        for offset in 0..count {
            let index = (first + offset) % count;
            let mut read = ReadBuf::new(&mut *buf);
            // Indexing cannot fail: index < count == sockets.len().
            match sockets[index].socket.poll_recv_from(cx, &mut read) {
                Poll::Ready(Ok(source)) => {
                    return Poll::Ready((index, Ok((read.filled().len(), source))));
                }
                Poll::Ready(Err(e)) => return Poll::Ready((index, Err(e))),
                Poll::Pending => {}
            }
        }
        Poll::Pending
    })
    .await
}

/// Where a worker's output goes: datagrams to its sockets (in batches), events to the shared
/// channel.
struct Outlet {
    events: mpsc::UnboundedSender<SfuEvent>,
    placement: Arc<Mutex<Placement>>,
    /// Datagrams from one socket waiting to be sent together.
    batch: Vec<Transmit>,
}

impl Outlet {
    /// Sends what the SFU produced, passes its events on, and updates the metrics.
    async fn flush(&mut self, sfu: &mut Sfu, sockets: &[MediaSocket], meters: &mut Meters) {
        let mut from: Option<&MediaSocket> = None;
        while let Some(transmit) = sfu.poll_transmit() {
            if from.is_none_or(|s| s.advertised != transmit.source) {
                if let Some(socket) = from {
                    send_all(socket, &mut self.batch, meters).await;
                }
                from = sockets.iter().find(|s| s.advertised == transmit.source);
                if from.is_none() {
                    // Cannot happen: str0m only sends from the candidates the SFU was given, which are ours.
                    debug!(source = %transmit.source, "no socket for transmit source");
                    continue;
                }
            }
            self.batch.push(transmit);
            if self.batch.len() >= SEND_BATCH
                && let Some(socket) = from
            {
                send_all(socket, &mut self.batch, meters).await;
            }
        }
        if let Some(socket) = from {
            send_all(socket, &mut self.batch, meters).await;
        }
        while let Some(event) = sfu.poll_event() {
            if let SfuEvent::Disconnected { participant, .. } = &event {
                self.placement
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .release(*participant);
            }
            if self.events.send(event).is_err() {
                debug!("media event receiver gone; event dropped");
            }
        }
        meters.publish(sfu);
    }
}

/// Sends and empties `batch`, counting what went out and what failed.
async fn send_all(socket: &MediaSocket, batch: &mut Vec<Transmit>, meters: &mut Meters) {
    if batch.is_empty() {
        return;
    }
    send_batch(&socket.socket, batch, &mut |result| match result {
        Ok(len) => {
            meters.packets_out.increment(1);
            meters.bytes_out.increment(len as u64);
        }
        Err(e) => meters.socket_error("send", &e),
    })
    .await;
    batch.clear();
}

/// Metric handles, and what is needed to turn the SFU's cumulative counters into increments.
struct Meters {
    packets_in: Counter,
    packets_out: Counter,
    bytes_in: Counter,
    bytes_out: Counter,
    keyframe_requests: Counter,
    renegotiations: Counter,
    layer_switches: Counter,
    socket_errors: Counter,
    participants: Gauge,
    rooms: Gauge,
    tracks: Gauge,
    nacks_received: Counter,
    plis_received: Counter,
    nacks_sent: Counter,
    plis_sent: Counter,
    audio_frames_backlogged: Counter,
    reported: SfuStats,
    last_error_log: Option<Instant>,
    suppressed_errors: u64,
    /// The worker's index, for logs.
    worker: usize,
}

impl Meters {
    /// Handles labelled `worker = index`.
    fn new(index: usize) -> Self {
        let worker = index.to_string();
        let w = || worker.clone();
        Meters {
            packets_in: counter!("switchboard_media_packets_in_total", "worker" => w()),
            packets_out: counter!("switchboard_media_packets_out_total", "worker" => w()),
            bytes_in: counter!("switchboard_media_bytes_in_total", "worker" => w()),
            bytes_out: counter!("switchboard_media_bytes_out_total", "worker" => w()),
            keyframe_requests: counter!("switchboard_media_keyframe_requests_total", "worker" => w()),
            renegotiations: counter!("switchboard_media_renegotiations_total", "worker" => w()),
            layer_switches: counter!("switchboard_media_layer_switches_total", "worker" => w()),
            socket_errors: counter!("switchboard_media_socket_errors_total", "worker" => w()),
            participants: gauge!("switchboard_media_participants", "worker" => w()),
            rooms: gauge!("switchboard_media_rooms", "worker" => w()),
            tracks: gauge!("switchboard_media_tracks", "worker" => w()),
            nacks_received: counter!("switchboard_media_rtcp_feedback_total", "worker" => w(), "kind" => "nack", "direction" => "received"),
            plis_received: counter!("switchboard_media_rtcp_feedback_total", "worker" => w(), "kind" => "pli", "direction" => "received"),
            nacks_sent: counter!("switchboard_media_rtcp_feedback_total", "worker" => w(), "kind" => "nack", "direction" => "sent"),
            plis_sent: counter!("switchboard_media_rtcp_feedback_total", "worker" => w(), "kind" => "pli", "direction" => "sent"),
            audio_frames_backlogged: counter!("switchboard_media_audio_frames_backlogged_total", "worker" => w()),
            reported: SfuStats::default(),
            last_error_log: None,
            worker: index,
            suppressed_errors: 0,
        }
    }

    fn publish(&mut self, sfu: &Sfu) {
        let stats = sfu.stats();
        let requests = stats.keyframe_requests_forwarded + stats.keyframe_requests_generated;
        let reported =
            self.reported.keyframe_requests_forwarded + self.reported.keyframe_requests_generated;
        self.keyframe_requests
            .increment(requests.saturating_sub(reported));
        self.renegotiations.increment(
            stats
                .renegotiations
                .saturating_sub(self.reported.renegotiations),
        );
        self.layer_switches.increment(
            stats
                .layer_switches
                .saturating_sub(self.reported.layer_switches),
        );
        self.nacks_received.increment(
            stats
                .nacks_received
                .saturating_sub(self.reported.nacks_received),
        );
        self.plis_received.increment(
            stats
                .plis_received
                .saturating_sub(self.reported.plis_received),
        );
        self.nacks_sent
            .increment(stats.nacks_sent.saturating_sub(self.reported.nacks_sent));
        self.plis_sent
            .increment(stats.plis_sent.saturating_sub(self.reported.plis_sent));
        self.audio_frames_backlogged.increment(
            stats
                .frames_backlogged
                .saturating_sub(self.reported.frames_backlogged),
        );
        self.reported = stats;
        self.participants.set(sfu.participant_count() as f64);
        self.rooms.set(sfu.room_count() as f64);
        self.tracks.set(sfu.track_count() as f64);
    }

    /// Counts a failed send or receive; logs it unless one was logged recently. Never fatal: one
    /// datagram is lost, UDP tolerates that.
    fn socket_error(&mut self, op: &'static str, error: &io::Error) {
        self.socket_errors.increment(1);
        let now = Instant::now();
        if self
            .last_error_log
            .is_some_and(|last| now.duration_since(last) < ERROR_LOG_INTERVAL)
        {
            self.suppressed_errors += 1;
            return;
        }
        warn!(worker = self.worker, op, %error, suppressed = self.suppressed_errors, "media socket error");
        self.last_error_log = Some(now);
        self.suppressed_errors = 0;
    }
}
