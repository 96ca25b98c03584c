//! IO shell of the media plane: media workers, each a thread driving its own sans-IO [`Sfu`] on its
//! own UDP sockets.
//!
//! [`start`] starts [`MediaConfig::workers`] workers. Worker `i` binds its sockets on port
//! `port + i` (each on a free port of its own when `port` is 0), advertises them as ICE host
//! candidates of its [`Sfu`], and runs on a thread of its own (`media-{i}`, a current-thread tokio
//! runtime). A room is pinned to one worker while it has members (the least loaded one when its
//! first participant offers), so every member of a room is in the same [`Sfu`] and a room's
//! clients connect to its worker's port. The signaling layer talks to the workers only through a
//! [`MediaHandle`], which sends each command over the channel of the worker owning the
//! participant (never a shared lock on the media path), and hears about connections through the
//! one [`SfuEvent`] channel given to [`start`], which every worker feeds. Datagrams are received in
//! batches of ready ones and sent in batches (`sendmmsg` on Linux).
//!
//! Metrics: counters `switchboard_media_packets_in_total`, `switchboard_media_packets_out_total`,
//! `switchboard_media_bytes_in_total`, `switchboard_media_bytes_out_total`,
//! `switchboard_media_keyframe_requests_total`, `switchboard_media_renegotiations_total` (server
//! offers), `switchboard_media_layer_switches_total` (simulcast layer switches of subscriber
//! m-lines), `switchboard_media_socket_errors_total`; gauges `switchboard_media_participants`,
//! `switchboard_media_rooms`, `switchboard_media_tracks` (published tracks). Every media metric has
//! a `worker` label (`0`, `1`, ...): sum over it for the server's totals.

mod placement;
mod send;
mod sockets;
mod worker;

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

#[cfg(doc)]
use crate::sfu::Sfu;
use crate::sfu::{AgentSink, ParticipantId, SfuError, SfuEvent, TrackSource};

/// Where the media plane listens, and on how many workers.
#[derive(Clone, Debug, Default)]
pub struct MediaConfig {
    /// UDP port of worker 0's sockets; worker `i` listens on `port + i`. 0: each worker picks a free
    /// port (the same one on every interface).
    pub port: u16,
    /// Media workers (threads, each with its own port and rooms); 0 means one per core
    /// ([`std::thread::available_parallelism`]).
    pub workers: usize,
    /// Public address for a host behind 1:1 NAT (cloud VMs): when set, one wildcard socket is bound
    /// and `public_ip:port` is the only advertised candidate. When unset, one socket per interface
    /// address is bound and each is advertised.
    pub public_ip: Option<IpAddr>,
}

/// Why the media plane failed to start or to answer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MediaError {
    /// The network interfaces could not be listed.
    #[error("cannot list network interfaces: {0}")]
    Interfaces(#[source] io::Error),
    /// No interface address to bind to.
    #[error("no usable interface address for media")]
    NoAddress,
    /// No media socket could be bound (the error of the last attempt).
    #[error("cannot bind media socket {addr}: {source}")]
    Bind {
        /// The address of the failed attempt.
        addr: SocketAddr,
        /// Why it failed.
        #[source]
        source: io::Error,
    },
    /// The SFU refused the request.
    #[error(transparent)]
    Sfu(#[from] SfuError),
    /// A worker's thread or runtime could not be started.
    #[error("cannot start a media worker: {0}")]
    Worker(#[source] io::Error),
    /// `port + workers - 1` is beyond 65535.
    #[error("media ports {port}..{port}+{workers} do not fit below 65536")]
    PortRange {
        /// The first port.
        port: u16,
        /// How many workers need a port.
        workers: usize,
    },
    /// The worker has stopped (shutdown or panic).
    #[error("media worker stopped")]
    Stopped,
}

impl MediaConfig {
    /// How many workers to start: [`MediaConfig::workers`], or one per core when it is 0.
    pub fn worker_count(&self) -> usize {
        match self.workers {
            0 => std::thread::available_parallelism().map_or(1, std::num::NonZero::get),
            n => n,
        }
    }
}

/// A command for the worker task.
#[derive(Debug)]
enum Command {
    Offer {
        room: String,
        participant: ParticipantId,
        label: String,
        sdp: String,
        sources: Vec<(String, TrackSource)>,
        reply: oneshot::Sender<Result<String, SfuError>>,
    },
    Answer {
        participant: ParticipantId,
        sdp: String,
        reply: oneshot::Sender<Result<(), SfuError>>,
    },
    AddCandidate {
        participant: ParticipantId,
        candidate: String,
    },
    Remove {
        participant: ParticipantId,
    },
    SetPreferredSize {
        participant: ParticipantId,
        mid: String,
        width: u32,
        height: u32,
    },
    AddAgent {
        room: String,
        participant: ParticipantId,
        label: String,
        sink: AgentSink,
    },
    AgentAudio {
        participant: ParticipantId,
        timestamp: u64,
        level: u8,
        opus: Vec<u8>,
    },
}

/// Cheap, cloneable access to the media workers.
#[derive(Clone, Debug)]
pub struct MediaHandle {
    workers: Arc<[mpsc::UnboundedSender<Command>]>,
    placement: Arc<Mutex<placement::Placement>>,
    local_addrs: Arc<[SocketAddr]>,
    advertised_addrs: Arc<[SocketAddr]>,
}

impl MediaHandle {
    /// Answers `participant`'s SDP offer, adding it to `room` under `label` (its public id) on its
    /// first offer; `sources` names what each of its sending m-lines carries, by mid
    /// ([`Sfu::handle_offer`]). Resolves to the SDP answer. Server offers for the other members'
    /// tracks follow as [`SfuEvent::Offer`].
    ///
    /// The command is sent when this is called, not when the future is first polled, so commands
    /// for the participant made after this call reach its worker after the offer.
    ///
    /// # Errors
    /// [`MediaError::Sfu`] with [`SfuError::BadSdp`], [`SfuError::WrongRoom`] or
    /// [`SfuError::Glare`]; [`MediaError::Stopped`] if the worker is gone.
    pub fn offer(
        &self,
        room: String,
        participant: ParticipantId,
        label: String,
        sdp: String,
        sources: Vec<(String, TrackSource)>,
    ) -> impl Future<Output = Result<String, MediaError>> + Send + 'static {
        let placed = self.placement().place(&room, participant);
        let (reply, answer) = oneshot::channel();
        let sent = self.workers.get(placed.worker).is_some_and(|worker| {
            placed.held_candidates.into_iter().all(|candidate| {
                worker
                    .send(Command::AddCandidate {
                        participant,
                        candidate,
                    })
                    .is_ok()
            }) && worker
                .send(Command::Offer {
                    room,
                    participant,
                    label,
                    sdp,
                    sources,
                    reply,
                })
                .is_ok()
        });
        let placement = Arc::clone(&self.placement);
        async move {
            let result = if sent {
                answer
                    .await
                    .map_err(|_| MediaError::Stopped)
                    .and_then(|r| r.map_err(MediaError::Sfu))
            } else {
                Err(MediaError::Stopped)
            };
            if placed.new && result.is_err() {
                // A refused first offer creates no participant in the worker's SFU.
                placement
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .release(participant);
            }
            result
        }
    }

    /// Passes `participant`'s answer to the last [`SfuEvent::Offer`] sent to it
    /// ([`Sfu::handle_answer`]). The command is sent when this is called.
    ///
    /// # Errors
    /// [`MediaError::Sfu`] with [`SfuError::NoPendingOffer`], [`SfuError::BadSdp`] or
    /// [`SfuError::UnknownParticipant`]; [`MediaError::Stopped`] if the worker is gone.
    pub fn answer(
        &self,
        participant: ParticipantId,
        sdp: String,
    ) -> impl Future<Output = Result<(), MediaError>> + Send + 'static {
        let (reply, done) = oneshot::channel();
        let sent = match self.worker_of(participant) {
            None => Err(MediaError::Sfu(SfuError::UnknownParticipant(participant))),
            Some(worker) => worker
                .send(Command::Answer {
                    participant,
                    sdp,
                    reply,
                })
                .map_err(|_| MediaError::Stopped),
        };
        async move {
            sent?;
            done.await
                .map_err(|_| MediaError::Stopped)?
                .map_err(MediaError::Sfu)
        }
    }

    /// Passes a trickled ICE candidate line from the client ([`Sfu::add_remote_candidate`]); an empty
    /// string marks the end of candidates. Fire and forget: a bad line is logged by the worker.
    /// Before the participant's first offer the candidate is held here and passed on with it.
    pub fn add_candidate(&self, participant: ParticipantId, candidate: String) {
        let mut placement = self.placement();
        if placement.worker_of(participant).is_none() {
            if !placement.hold_candidate(participant, candidate) {
                info!(%participant, "too many candidates before the first offer; dropped");
            }
            return;
        }
        drop(placement);
        self.send(
            participant,
            Command::AddCandidate {
                participant,
                candidate,
            },
        );
    }

    /// Removes the participant and frees its media state ([`Sfu::remove_participant`]).
    pub fn remove(&self, participant: ParticipantId) {
        let worker = {
            let mut placement = self.placement();
            let worker = placement.worker_of(participant);
            placement.release(participant);
            worker
        };
        // Unplaced (no offer yet, or its first offer failed): a worker may still hold candidates trickled for it,
        // so every worker is told.
        let targets = match worker {
            Some(w) => self.workers.get(w..=w).unwrap_or_default(),
            None => &self.workers[..],
        };
        for worker in targets {
            if worker.send(Command::Remove { participant }).is_err() {
                debug!("media worker stopped; command dropped");
            }
        }
    }

    /// Sets the size at which `participant` renders the video it receives on its m-line `mid`
    /// ([`Sfu::set_preferred_size`]): the SFU forwards the smallest simulcast layer at least that
    /// large; `0 x 0` means not rendered. Fire and forget: an unknown participant or mid is logged
    /// by the worker.
    pub fn set_preferred_size(
        &self,
        participant: ParticipantId,
        mid: String,
        width: u32,
        height: u32,
    ) {
        self.send(
            participant,
            Command::SetPreferredSize {
                participant,
                mid,
                width,
                height,
            },
        );
    }

    /// Adds a server-side media agent (a SIP leg) to `room` ([`Sfu::add_agent`]) on the worker the room is pinned to: the audio the
    /// room's other members publish goes to `sink` (called on the worker: it must not block), and
    /// [`MediaHandle::agent_audio`] publishes the agent's own. Removed with
    /// [`MediaHandle::remove`]. Fire and forget: a refused id is logged by the worker.
    pub fn add_agent(
        &self,
        room: String,
        participant: ParticipantId,
        label: String,
        sink: AgentSink,
    ) {
        let placed = self.placement().place(&room, participant);
        if let Some(worker) = self.workers.get(placed.worker) {
            // A send fails only when the worker stopped (shutdown): nothing to add then.
            let _ = worker.send(Command::AddAgent {
                room,
                participant,
                label,
                sink,
            });
        }
    }

    /// Publishes one Opus frame of agent `participant` ([`Sfu::handle_agent_audio`]): `timestamp`
    /// in 48 kHz units, `level` the RFC 6464 audio level (-dBov).
    pub fn agent_audio(
        &self,
        participant: ParticipantId,
        timestamp: u64,
        level: u8,
        opus: Vec<u8>,
    ) {
        self.send(
            participant,
            Command::AgentAudio {
                participant,
                timestamp,
                level,
                opus,
            },
        );
    }

    /// The addresses the media sockets of every worker are bound to (`0.0.0.0:port` with a public
    /// IP), worker 0's first.
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.local_addrs.to_vec()
    }

    /// The addresses advertised to clients as ICE host candidates, of every worker (a client is
    /// given those of its room's worker only), worker 0's first.
    pub fn advertised_addrs(&self) -> Vec<SocketAddr> {
        self.advertised_addrs.to_vec()
    }

    /// How many workers there are.
    pub fn worker_count(&self) -> usize {
        self.workers.len()
    }

    /// The worker `participant` lives on (0-based), if it has made an offer and is not gone.
    pub fn worker_of_participant(&self, participant: ParticipantId) -> Option<usize> {
        self.placement().worker_of(participant)
    }

    fn placement(&self) -> std::sync::MutexGuard<'_, placement::Placement> {
        // A panic while holding the lock leaves consistent tables (every update is one step).
        self.placement
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn worker_of(&self, participant: ParticipantId) -> Option<&mpsc::UnboundedSender<Command>> {
        let worker = self.placement().worker_of(participant)?;
        self.workers.get(worker)
    }

    /// Sends a fire-and-forget command to the participant's worker; dropped (logged) when the
    /// participant is unknown or the worker gone.
    fn send(&self, participant: ParticipantId, command: Command) {
        match self.worker_of(participant) {
            Some(worker) if worker.send(command).is_ok() => {}
            Some(_) => debug!("media worker stopped; command dropped"),
            None => debug!(%participant, "no media worker has this participant; command dropped"),
        }
    }
}

/// Binds every worker's sockets and starts the workers. Events of all workers go to `events` (a
/// closed receiver is tolerated); the workers end when `shutdown` is cancelled, and the returned
/// task ends when they all have.
///
/// # Errors
/// [`MediaError::Interfaces`], [`MediaError::NoAddress`] or [`MediaError::Bind`] when a worker's
/// sockets could not be bound; [`MediaError::PortRange`] when the ports do not fit;
/// [`MediaError::Worker`] when a thread could not be started. Workers already started stop.
pub async fn start(
    config: MediaConfig,
    events: mpsc::UnboundedSender<SfuEvent>,
    shutdown: CancellationToken,
) -> Result<(MediaHandle, JoinHandle<()>), MediaError> {
    let count = config.worker_count();
    if config.port != 0 && usize::from(config.port) + count - 1 > usize::from(u16::MAX) {
        return Err(MediaError::PortRange {
            port: config.port,
            workers: count,
        });
    }
    let mut bound = Vec::with_capacity(count);
    for index in 0..count {
        let port = match config.port {
            0 => 0,
            // Cannot overflow: checked above.
            p => p + index as u16,
        };
        bound.push(sockets::bind(&config, port)?);
    }
    let local_addrs: Arc<[SocketAddr]> = bound.iter().flatten().map(|s| s.local).collect();
    let advertised_addrs: Arc<[SocketAddr]> =
        bound.iter().flatten().map(|s| s.advertised).collect();
    let placement = Arc::new(Mutex::new(placement::Placement::new(count)));
    // Stops the workers started so far if a later one fails.
    let stop = shutdown.child_token();
    let mut workers = Vec::with_capacity(count);
    let mut done = Vec::with_capacity(count);
    for (index, sockets) in bound.into_iter().enumerate() {
        let (commands, command_rx) = mpsc::unbounded_channel();
        let (done_tx, done_rx) = oneshot::channel::<()>();
        let shared = worker::Shared {
            placement: Arc::clone(&placement),
            events: events.clone(),
            shutdown: stop.clone(),
        };
        if let Err(e) = worker::spawn(index, sockets, command_rx, shared, done_tx).await {
            stop.cancel();
            return Err(e);
        }
        workers.push(commands);
        done.push(done_rx);
    }
    info!(workers = count, bound = ?local_addrs, advertised = ?advertised_addrs, "media workers started");
    let task = tokio::spawn(async move {
        for worker in done {
            // Resolves (with an error) when the worker's thread drops its sender on exit.
            let _ = worker.await;
        }
    });
    Ok((
        MediaHandle {
            workers: workers.into(),
            placement,
            local_addrs,
            advertised_addrs,
        },
        task,
    ))
}
