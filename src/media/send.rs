//! Sending a worker's datagrams in batches: on Linux one `sendmmsg` (through rustix's safe wrapper)
//! per run of up to [`SEND_BATCH`] datagrams from the same socket, whatever their destinations;
//! elsewhere one `send_to` per datagram.
//!
//! quinn-udp is not used here: it sends one destination per call (UDP GSO batches segments to a
//! single peer), while the SFU's fan-out sends each packet to many different peers.

use std::io;

use tokio::net::UdpSocket;

use crate::sfu::Transmit;

/// Most datagrams handed to the kernel in one call.
pub(crate) const SEND_BATCH: usize = 64;

/// Sends `batch` from `socket`, waiting while the socket's send buffer is full; calls `report` once
/// per datagram with its length sent or its error. A datagram the kernel refuses is reported and
/// skipped; the rest of the batch is still sent.
pub(crate) async fn send_batch(
    socket: &UdpSocket,
    batch: &[Transmit],
    report: &mut impl FnMut(io::Result<usize>),
) {
    let mut next = 0;
    while let Some(rest) = batch.get(next..).filter(|r| !r.is_empty()) {
        match send_some(socket, rest).await {
            Ok(0) => {
                // Not expected: the kernel fails rather than sending nothing. Skip one so the loop ends.
                report(Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    "batch send sent nothing",
                )));
                next += 1;
            }
            Ok(sent) => {
                for t in rest.iter().take(sent) {
                    report(Ok(t.contents.len()));
                }
                next += sent;
            }
            Err(e) => {
                // The first datagram of `rest` failed (ECONNREFUSED, EAFNOSUPPORT, ...): skip it.
                report(Err(e));
                next += 1;
            }
        }
    }
}

/// Sends a prefix of `batch` (at least one datagram, or an error for the first one).
#[cfg(target_os = "linux")]
async fn send_some(socket: &UdpSocket, batch: &[Transmit]) -> io::Result<usize> {
    socket
        .async_io(tokio::io::Interest::WRITABLE, || sendmmsg(socket, batch))
        .await
}

#[cfg(target_os = "linux")]
fn sendmmsg(socket: &UdpSocket, batch: &[Transmit]) -> io::Result<usize> {
    use rustix::net::{MMsgHdr, SendAncillaryBuffer, SendFlags, SocketAddrAny};
    use std::io::IoSlice;

    let batch = batch.get(..SEND_BATCH).unwrap_or(batch);
    let addrs: Vec<SocketAddrAny> = batch
        .iter()
        .map(|t| SocketAddrAny::from(t.destination))
        .collect();
    let iovs: Vec<[IoSlice<'_>; 1]> = batch.iter().map(|t| [IoSlice::new(&t.contents)]).collect();
    let mut controls: Vec<SendAncillaryBuffer<'_, '_, '_>> = batch
        .iter()
        .map(|_| SendAncillaryBuffer::default())
        .collect();
    let mut messages: Vec<MMsgHdr<'_>> = addrs
        .iter()
        .zip(&iovs)
        .zip(controls.iter_mut())
        .map(|((addr, iov), control)| MMsgHdr::new_with_addr(addr, iov, control))
        .collect();
    rustix::net::sendmmsg(socket, &mut messages, SendFlags::empty()).map_err(io::Error::from)
}

#[cfg(not(target_os = "linux"))]
async fn send_some(socket: &UdpSocket, batch: &[Transmit]) -> io::Result<usize> {
    match batch.first() {
        Some(t) => socket.send_to(&t.contents, t.destination).await.map(|_| 1),
        None => Ok(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;

    #[tokio::test]
    async fn a_batch_reaches_several_destinations_and_a_refused_datagram_is_skipped() {
        let sender = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        // Plain sockets: their receives are syscalls, not gated on a runtime's readiness events.
        let a = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        a.set_nonblocking(true).unwrap();
        b.set_nonblocking(true).unwrap();
        let source = sender.local_addr().unwrap();
        let to = |dest: SocketAddr, byte: u8| Transmit {
            source,
            destination: dest,
            contents: vec![byte; 10 + byte as usize],
        };
        // An IPv6 destination from an IPv4 socket fails for that datagram alone.
        let v6: SocketAddr = "[::1]:9".parse().unwrap();
        let batch: Vec<Transmit> = (0..(SEND_BATCH as u8 + 6))
            .map(|i| match i {
                3 => to(v6, i),
                i if i % 2 == 0 => to(a.local_addr().unwrap(), i),
                i => to(b.local_addr().unwrap(), i),
            })
            .collect();
        let (mut ok, mut failed) = (Vec::new(), 0);
        send_batch(&sender, &batch, &mut |r| match r {
            Ok(len) => ok.push(len),
            Err(_) => failed += 1,
        })
        .await;
        assert_eq!(failed, 1);
        assert_eq!(ok.len(), batch.len() - 1);
        let mut buf = [0u8; 256];
        let mut got = Vec::new();
        for socket in [&a, &b] {
            // Loopback delivers during the send, so everything is queued already.
            while let Ok((n, from)) = socket.recv_from(&mut buf) {
                assert_eq!(from, source);
                got.push(buf[0]);
                assert_eq!(n, 10 + buf[0] as usize);
            }
        }
        got.sort_unstable();
        let want: Vec<u8> = (0..(SEND_BATCH as u8 + 6)).filter(|i| *i != 3).collect();
        assert_eq!(got, want);
    }
}
