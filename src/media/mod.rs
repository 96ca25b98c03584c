//! IO shell of the media plane: UDP sockets and one tokio task driving the sans-IO [`Sfu`].
//!
//! [`start`] binds the sockets, advertises them as ICE host candidates, and spawns the worker task
//! that owns the [`Sfu`]. The signaling layer talks to it only through a [`MediaHandle`] (commands
//! over a channel, never a shared lock) and hears about connections through the
//! [`SfuEvent`] channel given to [`start`].
//!
//! Metrics: counters `switchboard_media_packets_in_total`, `switchboard_media_packets_out_total`,
//! `switchboard_media_bytes_in_total`, `switchboard_media_bytes_out_total`,
//! `switchboard_media_keyframe_requests_total`, `switchboard_media_renegotiations_total` (server
//! offers), `switchboard_media_layer_switches_total` (simulcast layer switches of subscriber
//! m-lines), `switchboard_media_socket_errors_total`; gauges `switchboard_media_participants`,
//! `switchboard_media_rooms`, `switchboard_media_tracks` (published tracks).

mod sockets;
mod worker;

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use crate::sfu::{AgentSink, ParticipantId, Sfu, SfuConfig, SfuError, SfuEvent, TrackSource};

/// Where the media plane listens.
#[derive(Clone, Debug, Default)]
pub struct MediaConfig {
    /// UDP port of every media socket; 0 picks a free port (the same one on every interface).
    pub port: u16,
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
    /// The worker task has stopped (shutdown or panic).
    #[error("media worker stopped")]
    Stopped,
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

/// Cheap, cloneable access to the media worker.
#[derive(Clone, Debug)]
pub struct MediaHandle {
    commands: mpsc::UnboundedSender<Command>,
    local_addrs: Arc<[SocketAddr]>,
    advertised_addrs: Arc<[SocketAddr]>,
}

impl MediaHandle {
    /// Answers `participant`'s SDP offer, adding it to `room` under `label` (its public id) on its
    /// first offer; `sources` names what each of its sending m-lines carries, by mid
    /// ([`Sfu::handle_offer`]). Returns the SDP answer. Server offers for the other members' tracks
    /// follow as [`SfuEvent::Offer`].
    ///
    /// # Errors
    /// [`MediaError::Sfu`] with [`SfuError::BadSdp`], [`SfuError::WrongRoom`] or
    /// [`SfuError::Glare`]; [`MediaError::Stopped`] if the worker is gone.
    pub async fn offer(
        &self,
        room: String,
        participant: ParticipantId,
        label: String,
        sdp: String,
        sources: Vec<(String, TrackSource)>,
    ) -> Result<String, MediaError> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::Offer {
                room,
                participant,
                label,
                sdp,
                sources,
                reply,
            })
            .map_err(|_| MediaError::Stopped)?;
        answer
            .await
            .map_err(|_| MediaError::Stopped)?
            .map_err(MediaError::Sfu)
    }

    /// Passes `participant`'s answer to the last [`SfuEvent::Offer`] sent to it
    /// ([`Sfu::handle_answer`]).
    ///
    /// # Errors
    /// [`MediaError::Sfu`] with [`SfuError::NoPendingOffer`], [`SfuError::BadSdp`] or
    /// [`SfuError::UnknownParticipant`]; [`MediaError::Stopped`] if the worker is gone.
    pub async fn answer(&self, participant: ParticipantId, sdp: String) -> Result<(), MediaError> {
        let (reply, done) = oneshot::channel();
        self.commands
            .send(Command::Answer {
                participant,
                sdp,
                reply,
            })
            .map_err(|_| MediaError::Stopped)?;
        done.await
            .map_err(|_| MediaError::Stopped)?
            .map_err(MediaError::Sfu)
    }

    /// Passes a trickled ICE candidate line from the client ([`Sfu::add_remote_candidate`]); an empty
    /// string marks the end of candidates. Fire and forget: a bad line is logged by the worker.
    pub fn add_candidate(&self, participant: ParticipantId, candidate: String) {
        self.send(Command::AddCandidate {
            participant,
            candidate,
        });
    }

    /// Removes the participant and frees its media state ([`Sfu::remove_participant`]).
    pub fn remove(&self, participant: ParticipantId) {
        self.send(Command::Remove { participant });
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
        self.send(Command::SetPreferredSize {
            participant,
            mid,
            width,
            height,
        });
    }

    /// Adds a server-side media agent (a SIP leg) to `room` ([`Sfu::add_agent`]): the audio the
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
        self.send(Command::AddAgent {
            room,
            participant,
            label,
            sink,
        });
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
        self.send(Command::AgentAudio {
            participant,
            timestamp,
            level,
            opus,
        });
    }

    /// The addresses the media sockets are bound to (`0.0.0.0:port` with a public IP).
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.local_addrs.to_vec()
    }

    /// The addresses advertised to clients as ICE host candidates.
    pub fn advertised_addrs(&self) -> Vec<SocketAddr> {
        self.advertised_addrs.to_vec()
    }

    fn send(&self, command: Command) {
        if self.commands.send(command).is_err() {
            debug!("media worker stopped; command dropped");
        }
    }
}

/// Binds the media sockets and spawns the worker task that owns the [`Sfu`]. Events go to `events`
/// (a closed receiver is tolerated); the task ends when `shutdown` is cancelled.
///
/// # Errors
/// [`MediaError::Interfaces`], [`MediaError::NoAddress`] or [`MediaError::Bind`] when no socket could
/// be bound.
pub async fn start(
    config: MediaConfig,
    events: mpsc::UnboundedSender<SfuEvent>,
    shutdown: CancellationToken,
) -> Result<(MediaHandle, JoinHandle<()>), MediaError> {
    let sockets = sockets::bind(&config).await?;
    let local_addrs: Arc<[SocketAddr]> = sockets.iter().map(|s| s.local).collect();
    let advertised_addrs: Arc<[SocketAddr]> = sockets.iter().map(|s| s.advertised).collect();
    info!(bound = ?local_addrs, advertised = ?advertised_addrs, "media sockets bound");
    let sfu = Sfu::new(SfuConfig {
        local_candidates: advertised_addrs.to_vec(),
    });
    let (commands, command_rx) = mpsc::unbounded_channel();
    let task = tokio::spawn(worker::run(sfu, sockets, command_rx, events, shutdown));
    Ok((
        MediaHandle {
            commands,
            local_addrs,
            advertised_addrs,
        },
        task,
    ))
}
