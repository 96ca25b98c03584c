//! Composition root: builds the store, services, media workers and HTTP listeners, and owns shutdown.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::Context as _;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::http::{AppState, router};
use crate::media::{MediaConfig, MediaError, MediaHandle};
use crate::proto::signal::TrackSpec;
use crate::service::calls::{
    Hub, HubCommand, HubConfig, MediaFailure, MediaFuture, MediaNotice, MediaParticipant,
    MediaPlane, MediaTrack,
};
use crate::service::deployment;
use crate::service::identity::IdentityService;
use crate::service::store::Store;
use crate::sfu::{ParticipantId, SfuError, SfuEvent, TrackSource};

/// A client must send a request's headers within this time of connecting (or of its previous request), so idle
/// and slow-header connections (slowloris) are closed.
pub const HEADER_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);

/// How long open HTTP requests may take to finish after SIGTERM.
pub const DRAIN_GRACE: Duration = Duration::from_secs(10);

/// A started server: its bound addresses and handles for tests and `run`.
pub struct Running {
    /// Plain HTTP listener (127.0.0.1).
    pub http_addr: SocketAddr,
    /// HTTPS listener.
    pub https_addr: SocketAddr,
    /// Media UDP sockets.
    pub media_addrs: Vec<SocketAddr>,
    /// The connection string (primary key).
    pub connection_string: String,
    /// Path of the TLS certificate in use.
    pub cert_path: PathBuf,
    /// The identity service (tests sign unusual tokens with it).
    pub identity: IdentityService,
    /// The SIP gateway's UDP and TCP addresses, when it runs.
    pub sip: Option<SipAddrs>,
    shutdown: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
    https: axum_server::Handle<SocketAddr>,
    http: axum_server::Handle<SocketAddr>,
    store: Store,
}

impl Running {
    /// Drains: closes WebSockets (1001), stops listeners, waits up to [`DRAIN_GRACE`] for requests to finish.
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        self.https.graceful_shutdown(Some(DRAIN_GRACE));
        self.http.graceful_shutdown(Some(DRAIN_GRACE));
        for t in self.tasks {
            let _ = tokio::time::timeout(DRAIN_GRACE + Duration::from_secs(2), t).await;
        }
        self.store.close().await;
    }
}

/// Where the SIP gateway listens, and its RTP port pool.
#[derive(Clone)]
pub struct SipAddrs {
    /// UDP address.
    pub udp: SocketAddr,
    /// TCP address.
    pub tcp: SocketAddr,
    /// TLS address, when `sip.tls_port` is not 0.
    pub tls: Option<SocketAddr>,
    /// RTP port pool (leases in use are observable).
    pub ports: Arc<crate::sip::media::PortPool>,
}

/// Installs the process-wide crypto providers (rustls, str0m) once; a second call is a no-op.
pub fn install_crypto() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    });
    crate::sfu::install_crypto_provider();
}

/// The Prometheus recorder, installed once per process.
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new().build_recorder();
            let handle = recorder.handle();
            // Fails only when another recorder is installed (tests embedding us): then rendering is empty.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

struct MediaAdapter(MediaHandle);

fn media_failure(e: MediaError) -> MediaFailure {
    match e {
        MediaError::Sfu(SfuError::Glare) => MediaFailure::Glare,
        MediaError::Sfu(SfuError::NoPendingOffer) => MediaFailure::NoPendingOffer,
        MediaError::Sfu(SfuError::BadSdp(why)) => MediaFailure::BadSdp(why),
        other => MediaFailure::Unavailable(other.to_string()),
    }
}

impl MediaPlane for MediaAdapter {
    fn offer(
        &self,
        call_id: String,
        participant: MediaParticipant,
        label: String,
        sdp: String,
        tracks: Vec<TrackSpec>,
    ) -> MediaFuture<String> {
        // The decoder admits only known source names, so parsing cannot fail here; unknown ones are skipped.
        let sources = tracks
            .into_iter()
            .filter_map(|t| Some((t.mid, t.source.parse::<TrackSource>().ok()?)))
            .collect();
        // Sent now, so that candidates trickled after this call reach the participant's worker after it.
        let offer = self
            .0
            .offer(call_id, ParticipantId(participant), label, sdp, sources);
        Box::pin(async move { offer.await.map_err(media_failure) })
    }

    fn answer(&self, participant: MediaParticipant, sdp: String) -> MediaFuture<()> {
        let answer = self.0.answer(ParticipantId(participant), sdp);
        Box::pin(async move { answer.await.map_err(media_failure) })
    }

    fn add_candidate(&self, participant: MediaParticipant, candidate: String) {
        self.0.add_candidate(ParticipantId(participant), candidate);
    }

    fn set_preferred_size(
        &self,
        participant: MediaParticipant,
        mid: String,
        width: u32,
        height: u32,
    ) {
        self.0
            .set_preferred_size(ParticipantId(participant), mid, width, height);
    }

    fn remove(&self, participant: MediaParticipant) {
        self.0.remove(ParticipantId(participant));
    }
}

/// Translates the SFU's events into the hub's vocabulary.
impl crate::sip::bridge::AgentMedia for MediaHandle {
    fn add_agent(
        &self,
        room: String,
        participant: ParticipantId,
        label: String,
        sink: crate::sfu::AgentSink,
    ) {
        MediaHandle::add_agent(self, room, participant, label, sink);
    }

    fn agent_audio(&self, participant: ParticipantId, timestamp: u64, level: u8, opus: Vec<u8>) {
        MediaHandle::agent_audio(self, participant, timestamp, level, opus);
    }
}

fn media_notice(ev: SfuEvent) -> MediaNotice {
    match ev {
        SfuEvent::Connected { participant } => MediaNotice::Connected(participant.0),
        SfuEvent::Disconnected {
            participant,
            reason,
        } => MediaNotice::Disconnected(participant.0, reason),
        SfuEvent::Offer {
            participant,
            sdp,
            tracks,
        } => MediaNotice::Offer {
            participant: participant.0,
            sdp,
            tracks: tracks
                .into_iter()
                .map(|t| MediaTrack {
                    mid: t.mid,
                    publisher: t.publisher.0,
                    source: t.source.as_str().to_string(),
                })
                .collect(),
        },
        SfuEvent::DominantSpeakers { room, speakers } => MediaNotice::DominantSpeakers {
            call_id: room,
            speakers: speakers.into_iter().map(|p| p.0).collect(),
        },
        SfuEvent::Speaking {
            participant,
            speaking,
        } => MediaNotice::Speaking {
            participant: participant.0,
            speaking,
        },
        SfuEvent::LayersWanted {
            participant,
            mid,
            rids,
        } => MediaNotice::LayersWanted {
            participant: participant.0,
            mid,
            rids,
        },
        SfuEvent::CodecUnsupported {
            subscriber,
            publisher,
            source,
            codec,
        } => MediaNotice::CodecUnsupported {
            subscriber: subscriber.0,
            publisher: publisher.0,
            source: source.as_str().to_string(),
            codec,
        },
    }
}

/// Starts everything and returns once every listener is bound.
///
/// # Errors
/// Any failure to open the store, make keys or certificates, or bind a port, with context.
pub async fn start(config: Config) -> anyhow::Result<Running> {
    install_crypto();
    let metrics = metrics_handle();
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating data dir {}", config.data_dir.display()))?;
    let store = Store::open(&config.data_dir)
        .await
        .context("opening the store")?;
    let (dep, created) = deployment::bootstrap(&store, crate::service::unix_now()).await?;
    let connection_string =
        deployment::connection_string(&config.endpoint_host(), config.https_port, &dep.primary_key);
    let cs_path = deployment::write_connection_string(&config.data_dir, &connection_string)?;
    if created {
        tracing::info!(resource_id = %dep.resource_id, path = %cs_path.display(), "new deployment: connection string written");
    } else {
        tracing::info!(path = %cs_path.display(), "connection string");
    }
    let identity = IdentityService::new(store.clone(), dep.resource_id.clone()).await?;

    let names = crate::tls::subject_alt_names(config.public_host.as_deref(), config.public_ip);
    let given = config.tls_cert.as_deref().zip(config.tls_key.as_deref());
    let cert = crate::tls::ensure_certificate(&config.data_dir, given, &names)?;
    if cert.created {
        tracing::info!(path = %cert.cert.display(), names = ?names, "self-signed certificate made: give clients this file as their CA (REQUESTS_CA_BUNDLE)");
    }

    let shutdown = CancellationToken::new();
    let (media_tx, mut media_rx) = tokio::sync::mpsc::unbounded_channel::<SfuEvent>();
    let (media, media_task) = crate::media::start(
        MediaConfig {
            port: config.media_port,
            workers: config.media_workers,
            public_ip: config.public_ip,
        },
        media_tx,
        shutdown.clone(),
    )
    .await
    .with_context(|| format!("binding media UDP port {}", config.media_port))?;
    let media_addrs = media.local_addrs();
    let media_for_sip = media.clone();
    let hub = Hub::spawn(
        HubConfig {
            ring_timeout: Duration::from_secs(config.ring_timeout),
        },
        Arc::new(MediaAdapter(media)),
    );
    let hub_for_media = hub.clone();
    let media_events = tokio::spawn(async move {
        while let Some(ev) = media_rx.recv().await {
            hub_for_media.send(HubCommand::Media(media_notice(ev)));
        }
    });

    let hub_for_sip = hub.clone();
    let state = AppState {
        identity: identity.clone(),
        hub,
        metrics,
        demo_for_all: config.demo,
        shutdown: shutdown.clone(),
    };
    let app = router(state).into_make_service_with_connect_info::<SocketAddr>();

    let http_listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, config.http_port))
        .with_context(|| format!("binding HTTP port 127.0.0.1:{}", config.http_port))?;
    http_listener.set_nonblocking(true)?;
    let http_addr = http_listener.local_addr()?;
    let http = axum_server::Handle::new();
    let mut http_server = axum_server::from_tcp(http_listener)?
        .acceptor(crate::http::listener::IdleTimeoutAcceptor)
        .handle(http.clone());
    http_server
        .http_builder()
        .http1()
        .header_read_timeout(HEADER_READ_TIMEOUT);
    let http_app = app.clone();
    let http_task = tokio::spawn(async move {
        if let Err(e) = http_server.serve(http_app).await {
            tracing::error!(error = %e, "HTTP listener failed");
        }
    });

    let tls = axum_server::tls_rustls::RustlsConfig::from_pem_file(&cert.cert, &cert.key)
        .await
        .with_context(|| {
            format!(
                "loading TLS certificate {} and key {}",
                cert.cert.display(),
                cert.key.display()
            )
        })?;
    let https = axum_server::Handle::new();
    let https_bind = SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, config.https_port));
    let https_listener = std::net::TcpListener::bind(https_bind)
        .or_else(|_| std::net::TcpListener::bind((Ipv4Addr::UNSPECIFIED, config.https_port)))
        .with_context(|| format!("binding HTTPS port {}", config.https_port))?;
    https_listener.set_nonblocking(true)?;
    let https_addr = https_listener.local_addr()?;
    let tls_acceptor = axum_server::tls_rustls::RustlsAcceptor::new(tls)
        .acceptor(crate::http::listener::IdleTimeoutAcceptor);
    let mut https_server = axum_server::from_tcp(https_listener)?
        .acceptor(tls_acceptor)
        .handle(https.clone());
    https_server
        .http_builder()
        .http1()
        .header_read_timeout(HEADER_READ_TIMEOUT);
    let https_task = tokio::spawn(async move {
        if let Err(e) = https_server.serve(app).await {
            tracing::error!(error = %e, "HTTPS listener failed");
        }
    });

    let mut tasks = vec![http_task, https_task, media_task, media_events];
    let sip = if config.sip.enabled() {
        let router = config.sip.validate()?;
        // `sip.tls_port = 0` disables TLS; with `sip.port = 0` (tests: any free port) TLS takes a free port too.
        let tls = if config.sip.tls_port == 0 && config.sip.port != 0 {
            None
        } else {
            let tls_port = if config.sip.port == 0 {
                0
            } else {
                config.sip.tls_port
            };
            let server = crate::sip::tls_server_config(&cert.cert, &cert.key)
                .map_err(|e| anyhow::anyhow!("SIP TLS certificate: {e}"))?;
            Some((tls_port, server))
        };
        let gw = crate::sip::start(
            crate::sip::SipSettings {
                bind: config.sip.bind,
                port: config.sip.port,
                tls,
                rtp_ports: (config.sip.rtp_port_min, config.sip.rtp_port_max),
                rtp_timeout: std::time::Duration::from_secs(config.sip.rtp_timeout_secs),
                advertise: config.public_ip,
                router,
                bridge: Some(crate::sip::bridge::BridgeDeps {
                    hub: hub_for_sip,
                    media: Arc::new(media_for_sip),
                }),
            },
            shutdown.clone(),
        )
        .await?;
        tasks.extend(gw.tasks);
        Some(SipAddrs {
            udp: gw.udp_addr,
            tcp: gw.tcp_addr,
            tls: gw.tls_addr,
            ports: gw.ports,
        })
    } else {
        None
    };

    tracing::info!(%http_addr, %https_addr, media = ?media_addrs, sip = ?sip.as_ref().map(|s| s.udp), "switchboard listening");
    Ok(Running {
        http_addr,
        https_addr,
        media_addrs,
        connection_string,
        cert_path: cert.cert,
        identity,
        sip,
        shutdown,
        tasks,
        https,
        http,
        store,
    })
}

/// Runs until SIGTERM or SIGINT, then drains.
///
/// # Errors
/// Start-up failures (see [`start`]).
pub async fn run(config: Config) -> anyhow::Result<()> {
    let running = start(config).await?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: draining"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: draining"),
    }
    running.shutdown().await;
    tracing::info!("stopped");
    Ok(())
}
