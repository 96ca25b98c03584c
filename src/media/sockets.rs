//! Binding the media UDP sockets and choosing the addresses advertised as ICE host candidates.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use tokio::net::UdpSocket;
use tracing::{debug, warn};

use super::{MediaConfig, MediaError};

/// One bound socket of a worker and the address the SFU knows it by.
#[derive(Debug)]
pub(crate) struct MediaSocket {
    pub(crate) socket: UdpSocket,
    /// The address the socket is bound to (`0.0.0.0:port` for the wildcard socket).
    pub(crate) local: SocketAddr,
    /// The host candidate advertised for it, given to the SFU as the destination of every datagram
    /// received on it and matched against `Transmit::source` to pick the socket to send from.
    pub(crate) advertised: SocketAddr,
}

/// A socket bound (non-blocking) but not yet registered with a runtime: workers bind in the
/// caller's thread, so that errors are reported by `start`, and register in their own runtime.
#[derive(Debug)]
pub(crate) struct BoundSocket {
    socket: std::net::UdpSocket,
    pub(crate) local: SocketAddr,
    pub(crate) advertised: SocketAddr,
}

impl BoundSocket {
    /// Registers the socket with the runtime of the calling context.
    ///
    /// # Errors
    /// When the runtime's reactor refuses it.
    pub(crate) fn register(self) -> io::Result<MediaSocket> {
        Ok(MediaSocket {
            socket: UdpSocket::from_std(self.socket)?,
            local: self.local,
            advertised: self.advertised,
        })
    }
}

/// Binds the sockets of one worker on `port`.
///
/// Without `config.public_ip`: one socket per usable interface address (see
/// [`host_candidate_ips`]), all on the same port; port 0 lets the first bind choose it. An address
/// that fails to bind is skipped with a warning. With `public_ip`: one wildcard socket, advertised
/// as `public_ip:port`.
///
/// # Errors
/// [`MediaError::Interfaces`] if the interfaces cannot be listed; [`MediaError::Bind`] if no socket
/// could be bound.
pub(crate) fn bind(config: &MediaConfig, port: u16) -> Result<Vec<BoundSocket>, MediaError> {
    if let Some(public_ip) = config.public_ip {
        let wildcard = match public_ip {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        };
        let requested = SocketAddr::new(wildcard, port);
        let (socket, local) = bind_one(requested).map_err(|source| MediaError::Bind {
            addr: requested,
            source,
        })?;
        return Ok(vec![BoundSocket {
            socket,
            local,
            advertised: SocketAddr::new(public_ip, local.port()),
        }]);
    }

    let interfaces = if_addrs::get_if_addrs().map_err(MediaError::Interfaces)?;
    let ips = host_candidate_ips(interfaces.iter().map(if_addrs::Interface::ip));
    let mut port = port;
    let mut sockets = Vec::with_capacity(ips.len());
    let mut last_error = None;
    for ip in ips {
        let requested = SocketAddr::new(ip, port);
        match bind_one(requested) {
            Ok((socket, local)) => {
                debug!(%local, "media socket bound");
                port = local.port();
                sockets.push(BoundSocket {
                    socket,
                    local,
                    advertised: local,
                });
            }
            Err(e) => {
                warn!(addr = %requested, error = %e, "media socket not bound on this address");
                last_error = Some((requested, e));
            }
        }
    }
    match (sockets.is_empty(), last_error) {
        (false, _) => Ok(sockets),
        (true, Some((addr, source))) => Err(MediaError::Bind { addr, source }),
        (true, None) => Err(MediaError::NoAddress),
    }
}

/// Receive buffer asked for on every media socket, bytes: about 1,300 small (audio) datagrams as the kernel counts
/// them, a few hundred milliseconds of a busy worker's input, so that a worker descheduled for a moment does not
/// drop datagrams. The kernel caps it at `net.core.rmem_max` (often 208 KiB; raise it with
/// `sysctl -w net.core.rmem_max=1048576` to get all of it).
pub(crate) const RECEIVE_BUFFER_BYTES: usize = 1 << 20;

fn bind_one(addr: SocketAddr) -> io::Result<(std::net::UdpSocket, SocketAddr)> {
    let socket = std::net::UdpSocket::bind(addr)?;
    socket.set_nonblocking(true)?;
    grow_receive_buffer(&socket);
    let local = socket.local_addr()?;
    Ok((socket, local))
}

/// Asks for [`RECEIVE_BUFFER_BYTES`]; the default buffer stays when the kernel refuses.
#[cfg(target_os = "linux")]
fn grow_receive_buffer(socket: &std::net::UdpSocket) {
    use rustix::net::sockopt;
    if let Err(e) = sockopt::set_socket_recv_buffer_size(socket, RECEIVE_BUFFER_BYTES) {
        warn!(error = %e, "media socket receive buffer not enlarged");
        return;
    }
    // The kernel reports twice what it grants (it counts its own overhead).
    if let Ok(granted) = sockopt::socket_recv_buffer_size(socket) {
        debug!(
            asked = RECEIVE_BUFFER_BYTES,
            granted, "media socket receive buffer"
        );
    }
}

#[cfg(not(target_os = "linux"))]
fn grow_receive_buffer(_socket: &std::net::UdpSocket) {}

/// The interface addresses worth a socket and a host candidate, deduplicated, in input order, with
/// `127.0.0.1` added if missing: every IPv4 address but unspecified, link-local (RFC 3927),
/// multicast and broadcast; IPv6 loopback and global unicast (not link-local `fe80::/10`, which needs
/// a scope id, nor unique-local `fc00::/7`).
pub(crate) fn host_candidate_ips(ips: impl IntoIterator<Item = IpAddr>) -> Vec<IpAddr> {
    let mut out: Vec<IpAddr> = Vec::new();
    for ip in ips {
        let usable = match ip {
            IpAddr::V4(v4) => {
                !(v4.is_unspecified()
                    || v4.is_link_local()
                    || v4.is_multicast()
                    || v4.is_broadcast())
            }
            IpAddr::V6(v6) => v6.is_loopback() || is_global_unicast_v6(v6),
        };
        if usable && !out.contains(&ip) {
            out.push(ip);
        }
    }
    let localhost = IpAddr::V4(Ipv4Addr::LOCALHOST);
    if !out.contains(&localhost) {
        out.push(localhost);
    }
    out
}

fn is_global_unicast_v6(v6: Ipv6Addr) -> bool {
    let first = v6.segments()[0];
    let link_local = first & 0xffc0 == 0xfe80;
    let unique_local = first & 0xfe00 == 0xfc00;
    !(v6.is_unspecified()
        || v6.is_loopback()
        || v6.is_multicast()
        || link_local
        || unique_local
        || v6.to_ipv4_mapped().is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ips(list: &[&str]) -> Vec<IpAddr> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn keeps_v4_loopback_and_global_v6_only() {
        let got = host_candidate_ips(ips(&[
            "127.0.0.1",
            "192.168.1.20",
            "169.254.3.4",
            "0.0.0.0",
            "::1",
            "fe80::1",
            "fd00::2",
            "2001:db8::7",
            "::ffff:10.0.0.1",
            "192.168.1.20",
        ]));
        assert_eq!(
            got,
            ips(&["127.0.0.1", "192.168.1.20", "::1", "2001:db8::7"])
        );
    }

    #[test]
    fn adds_localhost_when_missing() {
        assert_eq!(
            host_candidate_ips(ips(&["10.1.2.3"])),
            ips(&["10.1.2.3", "127.0.0.1"])
        );
        assert_eq!(host_candidate_ips(Vec::new()), ips(&["127.0.0.1"]));
    }
}
