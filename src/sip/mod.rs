//! IO shell of the SIP/PSTN gateway: UDP and TCP transports on the SIP port, the user agent that owns every
//! dialog, and RTP/RTCP sessions on the configured port range. The protocol logic it drives is sans-IO, in
//! [`crate::proto::sip`].
//!
//! Underneath: rsipstack (pinned `=0.7.14`) parses every request that passed our checks and types its Request-URI.
//! Its transport and transaction layers are not used, because they cannot do what the gateway must (issue 5):
//! they silently drop a message their parser refuses (`transport/udp.rs` `serve_loop`: "error parsing SIP
//! message" -> `continue`), so no 400 can ever be sent; their parser accepts RFC 4475 messages that must be
//! refused (Content-Length beyond the datagram is truncated to what arrived, `INVITE  sip:..` with two spaces,
//! empty Via parameters); and its `Method` is a closed enum, so an unknown method fails to parse and gets no 501.

pub mod bridge;
pub mod digest;
pub mod media;
pub mod outbound;
pub mod transcode;
pub mod transport;
pub mod ua;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::proto::sip::route::Router;
use media::PortPool;

/// Gateway start-up errors.
#[derive(Debug, thiserror::Error)]
pub enum SipError {
    /// A socket could not be bound.
    #[error("binding SIP {transport} {addr}: {source}")]
    Bind {
        /// `UDP` or `TCP`.
        transport: &'static str,
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// What the gateway needs from the configuration.
#[derive(Debug, Clone)]
pub struct SipSettings {
    /// Address for SIP and RTP sockets.
    pub bind: IpAddr,
    /// SIP port, UDP and TCP (0: any free port, for tests).
    pub port: u16,
    /// SIP over TLS: the port (0: any free one) and the server configuration. `None` disables TLS.
    pub tls: Option<(u16, Arc<tokio_rustls::rustls::ServerConfig>)>,
    /// RTP port range, inclusive.
    pub rtp_ports: (u16, u16),
    /// Address put into SDP and Contact when `bind` is a wildcard.
    pub advertise: Option<IpAddr>,
    /// Trunks and numbers.
    pub router: Router,
    /// The call hub and the SFU, for numbers routed to a `user` (`None`: such numbers answer 480).
    pub bridge: Option<bridge::BridgeDeps>,
    /// No RTP from the phone for this long ends an answered call (zero: never).
    pub rtp_timeout: std::time::Duration,
}

/// A running gateway.
pub struct SipGateway {
    /// Bound UDP address.
    pub udp_addr: SocketAddr,
    /// Bound TCP address.
    pub tcp_addr: SocketAddr,
    /// Bound TLS address, when TLS is on.
    pub tls_addr: Option<SocketAddr>,
    /// The RTP port pool (tests check that nothing leaks).
    pub ports: Arc<PortPool>,
    /// Its tasks.
    pub tasks: Vec<JoinHandle<()>>,
}

/// Binds the SIP port (UDP and TCP on the same number; with port 0 a free one) and starts the UA.
///
/// # Errors
/// [`SipError::Bind`].
pub async fn start(s: SipSettings, stop: CancellationToken) -> Result<SipGateway, SipError> {
    let (udp, tcp) = bind_pair(s.bind, s.port).await?;
    let udp_addr = udp.local_addr().map_err(|source| SipError::Bind {
        transport: "UDP",
        addr: SocketAddr::new(s.bind, s.port),
        source,
    })?;
    let tcp_addr = tcp.local_addr().map_err(|source| SipError::Bind {
        transport: "TCP",
        addr: udp_addr,
        source,
    })?;
    let udp = Arc::new(udp);
    let ports = PortPool::new(s.rtp_ports.0, s.rtp_ports.1);
    let keepalive = resolve_keepalives(&s.router).await;
    let (tx, rx) = mpsc::channel(1024);
    let ua = ua::Ua::new(
        ua::UaSettings {
            router: s.router,
            media_bind: s.bind,
            advertise: s.advertise,
            sip_port: udp_addr.port(),
            keepalive,
            bridge: s.bridge,
            rtp_timeout: s.rtp_timeout,
        },
        udp.clone(),
        ports.clone(),
    )
    .with_streams(tx.clone(), stop.clone());
    let mut tasks = vec![
        tokio::spawn(transport::udp_loop(udp, tx.clone(), stop.clone())),
        tokio::spawn(transport::tcp_loop(tcp, tx.clone(), stop.clone())),
    ];
    let mut tls_addr = None;
    if let Some((port, config)) = s.tls {
        let want = SocketAddr::new(s.bind, port);
        let listener = TcpListener::bind(want)
            .await
            .map_err(|source| SipError::Bind {
                transport: "TLS",
                addr: want,
                source,
            })?;
        tls_addr = Some(listener.local_addr().map_err(|source| SipError::Bind {
            transport: "TLS",
            addr: want,
            source,
        })?);
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        tasks.push(tokio::spawn(transport::tls_loop(
            listener,
            acceptor,
            tx,
            stop.clone(),
        )));
    }
    tasks.push(tokio::spawn(ua.run(rx, stop)));
    tracing::info!(%udp_addr, %tcp_addr, ?tls_addr, rtp_ports = ?s.rtp_ports, "SIP gateway listening");
    Ok(SipGateway {
        udp_addr,
        tcp_addr,
        tls_addr,
        ports,
        tasks,
    })
}

/// A rustls server configuration from PEM files (certificate chain, private key).
///
/// # Errors
/// A message naming the file that cannot be read or used.
pub fn tls_server_config(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<Arc<tokio_rustls::rustls::ServerConfig>, String> {
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{}: {e}", cert.display()))?;
    let key_der =
        PrivateKeyDer::from_pem_file(key).map_err(|e| format!("{}: {e}", key.display()))?;
    let config = tokio_rustls::rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(chain, key_der)
        .map_err(|e| format!("{}: {e}", cert.display()))?;
    Ok(Arc::new(config))
}

/// Resolves the address of every UDP trunk with keepalives on (once, at start; 2 s per name). A name that does
/// not resolve is logged and not probed.
async fn resolve_keepalives(router: &Router) -> Vec<(String, SocketAddr, std::time::Duration)> {
    let mut out = Vec::new();
    for t in router.trunks() {
        if t.keepalive_secs == 0 || t.transport != crate::proto::sip::route::TrunkTransport::Udp {
            continue;
        }
        let target = if t
            .address
            .rsplit_once(':')
            .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
            && !t.address.ends_with(']')
        {
            t.address.clone()
        } else {
            format!("{}:5060", t.address)
        };
        let found = tokio::time::timeout(
            std::time::Duration::from_secs(2),
            tokio::net::lookup_host(target.clone()),
        )
        .await;
        match found {
            Ok(Ok(mut addrs)) => match addrs.next() {
                Some(a) => out.push((
                    t.name.clone(),
                    a,
                    std::time::Duration::from_secs(t.keepalive_secs),
                )),
                None => {
                    tracing::warn!(trunk = %t.name, address = %target, "trunk address resolves to nothing: no keepalive")
                }
            },
            _ => {
                tracing::warn!(trunk = %t.name, address = %target, "trunk address does not resolve: no keepalive")
            }
        }
    }
    out
}

/// Binds UDP and TCP on the same port. With port 0 (tests) a free port is searched: TCP first (ephemeral TCP
/// ports are the scarcer ones on a busy host), then UDP on the same number, retried a few times.
async fn bind_pair(ip: std::net::IpAddr, port: u16) -> Result<(UdpSocket, TcpListener), SipError> {
    if port != 0 {
        let addr = SocketAddr::new(ip, port);
        let udp = UdpSocket::bind(addr)
            .await
            .map_err(|source| SipError::Bind {
                transport: "UDP",
                addr,
                source,
            })?;
        let tcp = TcpListener::bind(addr)
            .await
            .map_err(|source| SipError::Bind {
                transport: "TCP",
                addr,
                source,
            })?;
        return Ok((udp, tcp));
    }
    let mut last = None;
    for _ in 0..64 {
        let any = SocketAddr::new(ip, 0);
        let tcp = TcpListener::bind(any)
            .await
            .map_err(|source| SipError::Bind {
                transport: "TCP",
                addr: any,
                source,
            })?;
        let addr = tcp.local_addr().map_err(|source| SipError::Bind {
            transport: "TCP",
            addr: any,
            source,
        })?;
        match UdpSocket::bind(addr).await {
            Ok(udp) => return Ok((udp, tcp)),
            Err(source) => {
                last = Some(SipError::Bind {
                    transport: "UDP",
                    addr,
                    source,
                })
            }
        }
    }
    Err(last.unwrap_or(SipError::Bind {
        transport: "UDP",
        addr: SocketAddr::new(ip, 0),
        source: std::io::Error::other("no free port pair"),
    }))
}
