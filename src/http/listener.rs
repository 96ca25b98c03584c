//! Connection-level settings of the HTTP listeners: an idle read timeout on every accepted TCP stream, below TLS,
//! so a client that connects (or finishes the TLS handshake) and then sends nothing is disconnected; and
//! `TCP_NODELAY`, so that small signaling frames sent back to back are not held for the client's delayed ACK
//! (Nagle's algorithm added a constant ~40 ms to call set-up).

use std::future::Ready;
use std::io;
use std::pin::Pin;
use std::time::Duration;

use axum_server::accept::Accept;
use tokio::net::TcpStream;
use tokio_io_timeout::TimeoutStream;

/// A connection that sends nothing for this long is closed. WebSockets stay open: the server pings every 15 s
/// and the client's pongs are reads.
pub const IDLE_READ_TIMEOUT: Duration = Duration::from_secs(60);

/// An [`Accept`] that sets `TCP_NODELAY` and wraps each stream in a read timeout of [`IDLE_READ_TIMEOUT`].
#[derive(Clone, Copy, Debug, Default)]
pub struct IdleTimeoutAcceptor;

impl<S> Accept<TcpStream, S> for IdleTimeoutAcceptor {
    type Stream = Pin<Box<TimeoutStream<TcpStream>>>;
    type Service = S;
    type Future = Ready<io::Result<(Self::Stream, Self::Service)>>;

    fn accept(&self, stream: TcpStream, service: S) -> Self::Future {
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "TCP_NODELAY not set");
        }
        let mut stream = TimeoutStream::new(stream);
        stream.set_read_timeout(Some(IDLE_READ_TIMEOUT));
        std::future::ready(Ok((Box::pin(stream), service)))
    }
}
