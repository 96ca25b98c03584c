//! Connection-level limits for the HTTP listeners: an idle read timeout on every accepted TCP stream, below TLS,
//! so a client that connects (or finishes the TLS handshake) and then sends nothing is disconnected.

use std::future::Ready;
use std::io;
use std::pin::Pin;
use std::time::Duration;

use axum_server::accept::Accept;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_io_timeout::TimeoutStream;

/// A connection that sends nothing for this long is closed. WebSockets stay open: the server pings every 15 s
/// and the client's pongs are reads.
pub const IDLE_READ_TIMEOUT: Duration = Duration::from_secs(60);

/// An [`Accept`] that wraps each stream in a read timeout of [`IDLE_READ_TIMEOUT`].
#[derive(Clone, Copy, Debug, Default)]
pub struct IdleTimeoutAcceptor;

impl<I, S> Accept<I, S> for IdleTimeoutAcceptor
where
    I: AsyncRead + AsyncWrite,
{
    type Stream = Pin<Box<TimeoutStream<I>>>;
    type Service = S;
    type Future = Ready<io::Result<(Self::Stream, Self::Service)>>;

    fn accept(&self, stream: I, service: S) -> Self::Future {
        let mut stream = TimeoutStream::new(stream);
        stream.set_read_timeout(Some(IDLE_READ_TIMEOUT));
        std::future::ready(Ok((Box::pin(stream), service)))
    }
}
