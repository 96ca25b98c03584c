//! SIP over UDP and TCP (RFC 3261 §18): one UDP socket and one TCP listener on the SIP port. Every received
//! message goes to the UA task with the peer to answer; TCP streams are framed by Content-Length with a bounded
//! buffer and an idle timeout (case C010: never read beyond the data, never wait forever).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::proto::sip::message::{Framing, MAX_MESSAGE_BYTES, ReplyBase, frame};

/// A TCP connection that sends nothing for this long (or leaves a message incomplete for this long) is closed.
pub const TCP_IDLE: Duration = Duration::from_secs(30);

/// Who sent a message, and how to answer them (RFC 3261 §18.2.2: responses go back over the same connection,
/// or for UDP to the source address and port, as with `rport`, RFC 3581).
#[derive(Debug, Clone)]
pub enum Peer {
    /// A UDP source address.
    Udp(SocketAddr),
    /// A TCP connection: its address and its writer.
    Tcp(SocketAddr, mpsc::UnboundedSender<Vec<u8>>),
    /// A TLS connection (RFC 3261 §26.3.1): its address and its writer.
    Tls(SocketAddr, mpsc::UnboundedSender<Vec<u8>>),
}

impl Peer {
    /// The remote address.
    pub fn addr(&self) -> SocketAddr {
        match self {
            Peer::Udp(a) | Peer::Tcp(a, _) | Peer::Tls(a, _) => *a,
        }
    }

    /// `UDP` or `TCP`.
    pub fn transport(&self) -> &'static str {
        match self {
            Peer::Udp(_) => "UDP",
            Peer::Tcp(..) => "TCP",
            Peer::Tls(..) => "TLS",
        }
    }

    /// Whether the transport is reliable (no retransmissions needed: RFC 3261 §17.2.1).
    pub fn reliable(&self) -> bool {
        matches!(self, Peer::Tcp(..) | Peer::Tls(..))
    }

    /// Sends bytes to the peer.
    pub async fn send(&self, udp: &UdpSocket, bytes: &[u8]) {
        match self {
            Peer::Udp(a) => {
                if let Err(e) = udp.send_to(bytes, a).await {
                    tracing::debug!(peer = %a, error = %e, "SIP UDP send failed");
                }
            }
            Peer::Tcp(a, tx) | Peer::Tls(a, tx) => {
                if tx.send(bytes.to_vec()).is_err() {
                    tracing::debug!(peer = %a, "SIP stream connection gone");
                }
            }
        }
    }
}

/// One received message.
#[derive(Debug)]
pub struct Received {
    /// The bytes of exactly one message.
    pub data: Vec<u8>,
    /// Where it came from.
    pub peer: Peer,
}

/// Reads datagrams until cancelled.
pub async fn udp_loop(
    sock: Arc<UdpSocket>,
    to_ua: mpsc::Sender<Received>,
    stop: CancellationToken,
) {
    let mut buf = vec![0u8; 65_535];
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            r = sock.recv_from(&mut buf) => match r {
                Ok((n, from)) => {
                    let data = &buf[..n];
                    // RFC 5626 keep-alives (CRLF, double CRLF) and stray whitespace are not messages.
                    if data.iter().all(u8::is_ascii_whitespace) {
                        continue;
                    }
                    if to_ua.try_send(Received { data: data.to_vec(), peer: Peer::Udp(from) }).is_err() {
                        tracing::warn!(peer = %from, "SIP UA busy: datagram dropped");
                    }
                }
                Err(e) => tracing::debug!(error = %e, "SIP UDP receive error"),
            }
        }
    }
}

/// Accepts TCP connections until cancelled.
pub async fn tcp_loop(
    listener: TcpListener,
    to_ua: mpsc::Sender<Received>,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            r = listener.accept() => match r {
                Ok((stream, from)) => {
                    let (tx, rx) = mpsc::unbounded_channel();
                    tokio::spawn(stream_connection(stream, from, false, (tx, rx), Some(TCP_IDLE), to_ua.clone(), stop.clone()));
                }
                Err(e) => {
                    tracing::debug!(error = %e, "SIP TCP accept error");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
}

/// Accepts TLS connections until cancelled (handshake within 10 s).
pub async fn tls_loop(
    listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    to_ua: mpsc::Sender<Received>,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            r = listener.accept() => match r {
                Ok((stream, from)) => {
                    let (acceptor, to_ua, stop) = (acceptor.clone(), to_ua.clone(), stop.clone());
                    tokio::spawn(async move {
                        match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream)).await {
                            Ok(Ok(tls)) => {
                                let (tx, rx) = mpsc::unbounded_channel();
                                stream_connection(tls, from, true, (tx, rx), Some(TCP_IDLE), to_ua, stop).await
                            }
                            _ => tracing::debug!(peer = %from, "SIP TLS handshake failed"),
                        }
                    });
                }
                Err(e) => {
                    tracing::debug!(error = %e, "SIP TLS accept error");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
}

/// Connects to a TCP trunk (`addr`) for an outbound call: within 5 s, or the error. Messages the
/// trunk sends on the connection go to the UA like any received message; the returned peer writes
/// to it. The connection has no idle timeout (a call may be silent on signalling for hours); it
/// closes when `stop` is cancelled (the call ended) or the trunk closes it.
///
/// # Errors
/// The connect failing or timing out.
pub async fn connect_tcp(
    addr: SocketAddr,
    to_ua: mpsc::Sender<Received>,
    stop: CancellationToken,
) -> std::io::Result<Peer> {
    let stream = tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(addr))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))??;
    let _ = stream.set_nodelay(true);
    let (tx, rx) = mpsc::unbounded_channel();
    let peer = Peer::Tcp(addr, tx.clone());
    tokio::spawn(stream_connection(
        stream,
        addr,
        false,
        (tx, rx),
        None,
        to_ua,
        stop,
    ));
    Ok(peer)
}

#[allow(clippy::type_complexity)]
async fn stream_connection<S>(
    stream: S,
    from: SocketAddr,
    tls: bool,
    (tx, mut rx): (
        mpsc::UnboundedSender<Vec<u8>>,
        mpsc::UnboundedReceiver<Vec<u8>>,
    ),
    idle: Option<Duration>,
    to_ua: mpsc::Sender<Received>,
    stop: CancellationToken,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
{
    let (mut rd, mut wr) = tokio::io::split(stream);
    let writer = tokio::spawn(async move {
        while let Some(b) = rx.recv().await {
            if wr.write_all(&b).await.is_err() {
                break;
            }
        }
    });
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    let mut chunk = vec![0u8; 16 * 1024];
    'conn: loop {
        // Cut every whole message out of the buffer.
        loop {
            let skip = buf
                .iter()
                .take_while(|b| **b == b'\r' || **b == b'\n')
                .count();
            buf.drain(..skip);
            if buf.is_empty() {
                break;
            }
            match frame(&buf) {
                Framing::Complete(n) => {
                    let data: Vec<u8> = buf.drain(..n).collect();
                    if to_ua
                        .send(Received {
                            data,
                            peer: if tls {
                                Peer::Tls(from, tx.clone())
                            } else {
                                Peer::Tcp(from, tx.clone())
                            },
                        })
                        .await
                        .is_err()
                    {
                        break 'conn;
                    }
                }
                Framing::Incomplete => break,
                Framing::Invalid(e) => {
                    tracing::info!(peer = %from, error = %e, "SIP TCP stream unframable: closing");
                    if let Some(base) = ReplyBase::salvage(&buf) {
                        let _ = tx.send(base.response(400, "Bad Request", None, &[], b""));
                    }
                    break 'conn;
                }
            }
        }
        let read = tokio::select! {
            _ = stop.cancelled() => break,
            r = tokio::time::timeout(idle.unwrap_or(Duration::MAX), rd.read(&mut chunk)) => r,
        };
        match read {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => {
                if buf.len() + n > MAX_MESSAGE_BYTES {
                    tracing::info!(peer = %from, "SIP TCP message too large: closing");
                    break;
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            Err(_) => {
                tracing::debug!(peer = %from, pending = buf.len(), "SIP TCP idle: closing");
                break;
            }
        }
    }
    drop(tx);
    // Let queued replies go out before the socket closes.
    let _ = tokio::time::timeout(Duration::from_secs(1), writer).await;
}
