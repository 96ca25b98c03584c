//! Outbound calls (issue 5, phase 2): a browser's `startCall([{phoneNumber}])` becomes an INVITE to the trunk
//! whose `prefixes` match the number (longest prefix first, the others as failover). This file holds the state of
//! one such call and the requests it sends (RFC 3261 §8.1, §13.2, §17.1: INVITE, ACK for non-2xx in the same
//! transaction and for 2xx as its own, CANCEL §9.1, BYE §15.1.1, digest credentials §22.2); the UA task
//! (`ua.rs`) drives it.

use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use super::bridge::HubEvent;
use super::media::{Lease, MediaSession};
use super::transport::Peer;
use crate::proto::sip::sdp::Negotiated;
use crate::service::calls::{ConnId, MediaParticipant};

/// Where an outbound call is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutState {
    /// INVITE sent, no response yet (retransmitted over UDP, timer A/B).
    Calling,
    /// A provisional response arrived (CANCEL is now possible).
    Proceeding,
    /// 2xx received and ACKed.
    Connected,
    /// CANCEL sent; waiting for the 487.
    Cancelling,
}

/// One outbound call.
pub struct OutCall {
    /// The hub's call id (the SFU room).
    pub hub_call_id: String,
    /// `+E164` dialled.
    pub number: String,
    /// The phone leg's hub connection.
    pub conn: ConnId,
    /// Its media agent.
    pub participant: MediaParticipant,
    /// Trunks still to try (indexes into the router), after the current one.
    pub failover: Vec<usize>,
    /// The current trunk.
    pub trunk: usize,
    /// The trunk's address.
    pub peer: Peer,
    /// Our From tag.
    pub local_tag: String,
    /// CSeq of the current INVITE.
    pub cseq: u32,
    /// Branch of the current INVITE (its CANCEL and non-2xx ACK reuse it).
    pub branch: String,
    /// The current INVITE, for retransmission and CANCEL.
    pub invite: Vec<u8>,
    /// Next retransmission of the INVITE (UDP, until a response), its interval and the give-up time.
    pub retransmit: Option<(Instant, std::time::Duration, Instant)>,
    /// Where the call is.
    pub state: OutState,
    /// Whether credentials were already sent (a second challenge fails the call).
    pub authenticated: bool,
    /// The To header of the dialog (with the remote tag once known).
    pub remote_to: String,
    /// The remote target (Contact of the 2xx or 18x).
    pub remote_target: Option<String>,
    /// Record-Route of the 2xx, reversed: our route set (RFC 3261 §12.1.2).
    pub route_set: Vec<String>,
    /// Negotiated media, once an SDP answer came (183 or 2xx).
    pub neg: Option<Negotiated>,
    /// The RTP sockets, until the media starts.
    pub sockets: Option<(std::net::UdpSocket, std::net::UdpSocket, Lease)>,
    /// Our RTP port.
    pub port: u16,
    /// The media, once started.
    pub media: Option<MediaSession>,
    /// Session id of our SDP (its `o=` line), fixed by the INVITE that was answered.
    pub sdp_session: u64,
    /// Version of our SDP, raised by every answer to a re-INVITE's offer.
    pub sdp_version: u64,
    /// The TCP connection to a TCP trunk: closed when the call is dropped.
    pub connection: Option<tokio_util::sync::DropGuard>,
    /// Credentials to send once the TCP connection is up (the INVITE waits for it).
    pub pending_auth: Option<(&'static str, String)>,
    /// Highest CSeq of the trunk's requests in the dialog (re-INVITEs out of order get 500).
    pub remote_cseq: u32,
    /// The last call state reported to the hub (`Ringing`, `EarlyMedia`): repeats are not sent.
    pub progress: Option<&'static str>,
    /// Forwards what the hub tells the phone leg to the UA.
    pub forwarder: tokio::task::JoinHandle<()>,
}

impl Drop for OutCall {
    fn drop(&mut self) {
        self.forwarder.abort();
    }
}

impl std::fmt::Debug for OutCall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutCall")
            .field("hub_call_id", &self.hub_call_id)
            .field("state", &self.state)
            .field("trunk", &self.trunk)
            .finish_non_exhaustive()
    }
}

/// Forwards a phone leg's hub messages to the UA, tagged with the SIP Call-ID.
pub fn forward_events(
    sip_call_id: String,
    mut events: tokio::sync::mpsc::Receiver<crate::service::calls::Outbound>,
    to_ua: tokio::sync::mpsc::UnboundedSender<HubEvent>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while let Some(message) = events.recv().await {
            let ev = HubEvent {
                sip_call_id: sip_call_id.clone(),
                message,
            };
            if to_ua.send(ev).is_err() {
                break;
            }
        }
    })
}

/// Our SDP offer: PCMA and PCMU in the trunk's order, telephone-event/8000 (payload type 101), ptime 20;
/// `o=` with `session` and `version` (RFC 4566 §5.2: a new version for every changed description).
pub fn offer_sdp(
    local: IpAddr,
    port: u16,
    codecs: &[crate::proto::sip::sdp::G711],
    session: u64,
    version: u64,
) -> String {
    use crate::proto::sip::sdp::G711;
    let family = if local.is_ipv4() { "IP4" } else { "IP6" };
    let mut codecs: Vec<G711> = codecs.to_vec();
    if codecs.is_empty() {
        codecs = vec![G711::Pcmu, G711::Pcma];
    }
    let pts: Vec<String> = codecs.iter().map(|c| c.static_pt().to_string()).collect();
    let mut s = format!(
        "v=0\r\no=switchboard {session} {version} IN {family} {local}\r\ns=switchboard\r\nc=IN {family} {local}\r\nt=0 0\r\nm=audio {port} RTP/AVP {} 101\r\n",
        pts.join(" ")
    );
    for c in &codecs {
        s.push_str(&format!("a=rtpmap:{} {}/8000\r\n", c.static_pt(), c.name()));
    }
    s.push_str(
        "a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\na=ptime:20\r\na=sendrecv\r\n",
    );
    s
}

/// Parameters of the requests an outbound call sends.
pub struct Headers<'a> {
    /// `SIP/2.0/UDP host:port` without branch.
    pub via_sent_by: &'a str,
    /// Our From value without tag (`<sip:+1555@host>`).
    pub from: &'a str,
    /// Our tag.
    pub tag: &'a str,
    /// The SIP Call-ID.
    pub call_id: &'a str,
    /// Contact value.
    pub contact: &'a str,
}

/// A request of the call: `Request-URI`, To value, CSeq, branch, extra header lines, body with its type.
#[allow(clippy::too_many_arguments)]
pub fn request(
    h: &Headers<'_>,
    method: &str,
    uri: &str,
    to: &str,
    cseq: u32,
    branch: &str,
    extra: &[(String, String)],
    body: Option<(&str, &str)>,
) -> Vec<u8> {
    let mut s = format!(
        "{method} {uri} SIP/2.0\r\nVia: {};branch={branch};rport\r\nMax-Forwards: 70\r\nFrom: {};tag={}\r\nTo: {to}\r\nCall-ID: {}\r\nCSeq: {cseq} {method}\r\n",
        h.via_sent_by, h.from, h.tag, h.call_id
    );
    if method != "CANCEL" && method != "ACK" {
        s.push_str(&format!("Contact: {}\r\n", h.contact));
    }
    for (k, v) in extra {
        s.push_str(&format!("{k}: {v}\r\n"));
    }
    s.push_str(concat!(
        "User-Agent: switchboard/",
        env!("CARGO_PKG_VERSION"),
        "\r\n"
    ));
    match body {
        Some((ct, b)) => s.push_str(&format!(
            "Content-Type: {ct}\r\nContent-Length: {}\r\n\r\n{b}",
            b.len()
        )),
        None => s.push_str("Content-Length: 0\r\n\r\n"),
    }
    s.into_bytes()
}

/// The end reason code a browser sees for a final SIP failure (ACS codes are SIP codes).
pub fn end_code(sip: u16) -> u16 {
    match sip {
        486 | 600 => 486,
        404 | 484 | 604 => 404,
        480 => 480,
        487 => 487,
        603 => 603,
        408 => 408,
        403 | 401 | 407 => 403,
        c => c,
    }
}

/// Whether a failure makes the call try the next trunk (issue 5: 503 and 408 fail over).
pub fn fails_over(sip: u16) -> bool {
    matches!(sip, 408 | 503)
}

/// The address of a trunk `host[:port]` (5060 by default).
pub async fn resolve(address: &str) -> Option<SocketAddr> {
    let target = if address
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
        && !address.ends_with(']')
    {
        address.to_string()
    } else {
        format!("{address}:5060")
    };
    tokio::time::timeout(
        std::time::Duration::from_secs(2),
        tokio::net::lookup_host(target),
    )
    .await
    .ok()?
    .ok()?
    .next()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::sip::sdp::{self, G711};

    #[test]
    fn our_offer_negotiates_with_the_trunks_codec_and_telephone_event() {
        let o = offer_sdp(
            "192.0.2.1".parse().unwrap(),
            20000,
            &[G711::Pcma, G711::Pcmu],
            7,
            1,
        );
        let parsed = sdp::parse(&o).unwrap();
        let n = sdp::negotiate(&parsed, &[G711::Pcma]).unwrap();
        assert_eq!(n.codec, G711::Pcma);
        assert_eq!(n.telephone_event.map(|t| t.0), Some(101));
        assert_eq!(n.remote_rtp, "192.0.2.1:20000".parse().unwrap());
    }

    #[test]
    fn failures_map_to_end_reasons_and_only_503_408_fail_over() {
        assert_eq!(end_code(486), 486);
        assert_eq!(end_code(600), 486);
        assert_eq!(end_code(404), 404);
        assert_eq!(end_code(407), 403);
        assert!(fails_over(503) && fails_over(408));
        assert!(!fails_over(486) && !fails_over(404));
    }
}
