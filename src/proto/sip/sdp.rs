//! SDP offer/answer for G.711 audio on a SIP trunk (RFC 4566 syntax, RFC 3264 offer/answer, RFC 3551 static
//! payload types, RFC 4733 §7 telephone-event negotiation).
//!
//! The parser is tolerant of what carriers send (session-level attributes, unknown codecs, `a=rtcp:` with an
//! address, a malformed `o=` line — cases C019, C020); the answer keeps every offered m-line in order, rejecting
//! all but the first usable audio one with port 0 (RFC 3264 §6).

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};

/// Why an offer cannot be answered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SdpError {
    /// Not SDP at all (no `v=0`, or a line without `x=`).
    #[error("not SDP: {0}")]
    Syntax(String),
    /// No audio stream with a codec we take (answer 488, RFC 3261 §13.3.1.1).
    #[error("no common audio codec")]
    NoCommonCodec,
    /// The audio stream has no connection address.
    #[error("no connection address for audio")]
    NoAddress,
}

/// A G.711 codec (RFC 3551 §4.5.14).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum G711 {
    /// µ-law, static payload type 0.
    #[serde(rename = "PCMU")]
    Pcmu,
    /// A-law, static payload type 8.
    #[serde(rename = "PCMA")]
    Pcma,
}

impl G711 {
    /// Encoding name as in `a=rtpmap`.
    pub fn name(self) -> &'static str {
        match self {
            G711::Pcmu => "PCMU",
            G711::Pcma => "PCMA",
        }
    }

    /// Static payload type (RFC 3551 table 4).
    pub fn static_pt(self) -> u8 {
        match self {
            G711::Pcmu => 0,
            G711::Pcma => 8,
        }
    }

    /// Parses an encoding name, case-insensitively.
    pub fn from_name(s: &str) -> Option<G711> {
        if s.eq_ignore_ascii_case("PCMU") {
            Some(G711::Pcmu)
        } else if s.eq_ignore_ascii_case("PCMA") {
            Some(G711::Pcma)
        } else {
            None
        }
    }
}

/// Media direction (RFC 3264 §5.1, §6.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Both ways.
    SendRecv,
    /// Offerer only sends (puts us on hold).
    SendOnly,
    /// Offerer only receives.
    RecvOnly,
    /// Neither.
    Inactive,
}

impl Direction {
    /// The attribute name.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::SendRecv => "sendrecv",
            Direction::SendOnly => "sendonly",
            Direction::RecvOnly => "recvonly",
            Direction::Inactive => "inactive",
        }
    }

    fn parse(s: &str) -> Option<Direction> {
        Some(match s {
            "sendrecv" => Direction::SendRecv,
            "sendonly" => Direction::SendOnly,
            "recvonly" => Direction::RecvOnly,
            "inactive" => Direction::Inactive,
            _ => return None,
        })
    }

    /// The answerer's direction for an offered one (RFC 3264 §6.1: sendonly -> recvonly and so on).
    pub fn answer(self) -> Direction {
        match self {
            Direction::SendRecv => Direction::SendRecv,
            Direction::SendOnly => Direction::RecvOnly,
            Direction::RecvOnly => Direction::SendOnly,
            Direction::Inactive => Direction::Inactive,
        }
    }

    /// Whether the side holding this direction sends media.
    pub fn sends(self) -> bool {
        matches!(self, Direction::SendRecv | Direction::SendOnly)
    }
}

/// One `m=` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaSection {
    /// `audio`, `video`, ...
    pub kind: String,
    /// Port; 0 means rejected/disabled.
    pub port: u16,
    /// `RTP/AVP`, ...
    pub proto: String,
    /// Formats in offered order.
    pub formats: Vec<String>,
    /// `c=` of this section.
    pub connection: Option<IpAddr>,
    /// `a=rtpmap:PT name/rate[/channels]` as (pt, name, clock rate).
    pub rtpmaps: Vec<(u8, String, u32)>,
    /// `a=fmtp:PT params`.
    pub fmtps: Vec<(u8, String)>,
    /// `a=ptime` in milliseconds.
    pub ptime: Option<u32>,
    /// Direction attribute of this section.
    pub direction: Option<Direction>,
    /// `a=rtcp:port [IN IP4 addr]` (RFC 3605).
    pub rtcp: Option<(u16, Option<IpAddr>)>,
}

/// A parsed session description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionDescription {
    /// Address of the `o=` line, when it parses (it is never used for media: case C019).
    pub origin_addr: Option<IpAddr>,
    /// Session-level `c=`.
    pub connection: Option<IpAddr>,
    /// Session-level direction.
    pub direction: Option<Direction>,
    /// Media sections in order.
    pub media: Vec<MediaSection>,
}

fn parse_connection(v: &str) -> Option<IpAddr> {
    // c=IN IP4 192.0.2.1[/ttl]
    let mut it = v.split_whitespace();
    let (_net, _kind, addr) = (it.next()?, it.next()?, it.next()?);
    addr.split('/').next()?.parse().ok()
}

/// Parses an SDP body.
///
/// # Errors
/// [`SdpError::Syntax`] when the first line is not `v=0` or a line is not `<letter>=<value>`.
pub fn parse(body: &str) -> Result<SessionDescription, SdpError> {
    let mut lines = body
        .split('\n')
        .map(|l| l.trim_end_matches('\r'))
        .filter(|l| !l.is_empty());
    if lines.next().map(str::trim) != Some("v=0") {
        return Err(SdpError::Syntax("first line is not v=0".into()));
    }
    let mut sd = SessionDescription {
        origin_addr: None,
        connection: None,
        direction: None,
        media: Vec::new(),
    };
    for line in lines {
        let Some((k, v)) = line.split_once('=') else {
            return Err(SdpError::Syntax(line.chars().take(40).collect()));
        };
        if k.len() != 1 {
            return Err(SdpError::Syntax(line.chars().take(40).collect()));
        }
        let cur = sd.media.last_mut();
        match (k, cur) {
            // A malformed origin (`o=-1307081803 2 IN IP4 x`, case C020) is tolerated: only its address is read.
            ("o", None) => {
                sd.origin_addr = v.split_whitespace().last().and_then(|a| a.parse().ok())
            }
            ("c", None) => sd.connection = parse_connection(v),
            ("c", Some(m)) => m.connection = parse_connection(v),
            ("m", _) => {
                let mut it = v.split_whitespace();
                let kind = it.next().unwrap_or("").to_string();
                let port = it
                    .next()
                    .and_then(|p| p.split('/').next())
                    .and_then(|p| p.parse().ok())
                    .ok_or_else(|| SdpError::Syntax(format!("m={v}")))?;
                let proto = it.next().unwrap_or("").to_string();
                sd.media.push(MediaSection {
                    kind,
                    port,
                    proto,
                    formats: it.map(str::to_string).collect(),
                    connection: None,
                    rtpmaps: Vec::new(),
                    fmtps: Vec::new(),
                    ptime: None,
                    direction: None,
                    rtcp: None,
                });
            }
            ("a", cur) => {
                let (name, value) = v.split_once(':').unwrap_or((v, ""));
                if let Some(d) = Direction::parse(name) {
                    match cur {
                        Some(m) => m.direction = Some(d),
                        None => sd.direction = Some(d),
                    }
                    continue;
                }
                let Some(m) = cur else { continue };
                match name {
                    "rtpmap" => {
                        let (pt, enc) = value.split_once(' ').unwrap_or((value, ""));
                        let mut e = enc.trim().split('/');
                        if let (Ok(pt), Some(n), Some(r)) =
                            (pt.parse(), e.next(), e.next().and_then(|r| r.parse().ok()))
                        {
                            m.rtpmaps.push((pt, n.to_string(), r));
                        }
                    }
                    "fmtp" => {
                        let (pt, params) = value.split_once(' ').unwrap_or((value, ""));
                        if let Ok(pt) = pt.parse() {
                            m.fmtps.push((pt, params.trim().to_string()));
                        }
                    }
                    "ptime" => m.ptime = value.trim().parse().ok(),
                    "rtcp" => {
                        let mut it = value.split_whitespace();
                        if let Some(port) = it.next().and_then(|p| p.parse().ok()) {
                            let rest: Vec<&str> = it.collect();
                            let addr = (rest.len() == 3).then(|| rest[2].parse().ok()).flatten();
                            m.rtcp = Some((port, addr));
                        }
                    }
                    _ => {}
                }
            }
            _ => {}
        }
    }
    Ok(sd)
}

/// The outcome of negotiating an offer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiated {
    /// Index of the audio m-line used.
    pub index: usize,
    /// Chosen codec.
    pub codec: G711,
    /// Its payload type (static 0 or 8, or the offerer's dynamic number for the name).
    pub pt: u8,
    /// telephone-event/8000 payload type and the event range answered (RFC 4733 §7.1.1), when offered.
    pub telephone_event: Option<(u8, String)>,
    /// Where RTP goes (the `c=` address, never the `o=` one: case C019).
    pub remote_rtp: SocketAddr,
    /// Where RTCP goes: `a=rtcp` or RTP port + 1 (RFC 3605, RFC 3550 §11).
    pub remote_rtcp: SocketAddr,
    /// The offerer's direction.
    pub offered: Direction,
    /// Our answered direction.
    pub answered: Direction,
    /// Packetisation time of our RTP, milliseconds.
    pub ptime: u32,
}

fn te_range_ok(range: &str) -> Option<String> {
    // Answer the offered events we handle, 0-15 (DTMF) and 16 (flash) (RFC 4733 §3.2, §7.1.1: the answer lists
    // a subset of the offer); `None` when the offer lacks the 12 keys 0-9, *, #.
    let mut parts = Vec::new();
    let mut covered = [false; 17];
    for part in range.split(',') {
        let part = part.trim();
        let (lo, hi) = match part.split_once('-') {
            Some((a, b)) => (a.trim().parse::<u32>().ok()?, b.trim().parse::<u32>().ok()?),
            None => {
                let n = part.parse::<u32>().ok()?;
                (n, n)
            }
        };
        if lo > hi || lo > 16 {
            continue;
        }
        let hi = hi.min(16);
        for e in lo..=hi {
            covered[e as usize] = true;
        }
        parts.push(if lo == hi {
            lo.to_string()
        } else {
            format!("{lo}-{hi}")
        });
    }
    covered[..12].iter().all(|c| *c).then(|| parts.join(","))
}

/// Negotiates an offer: the first audio m-line with a non-zero port and a codec from `accept` (in the offer's
/// order: RFC 3264 §6.1 lets the answerer keep the offerer's preference), telephone-event/8000 when offered.
/// A `c=0.0.0.0` (RFC 2543 hold) is read as `sendonly`.
///
/// # Errors
/// [`SdpError::NoCommonCodec`], [`SdpError::NoAddress`].
pub fn negotiate(offer: &SessionDescription, accept: &[G711]) -> Result<Negotiated, SdpError> {
    for (index, m) in offer.media.iter().enumerate() {
        if m.kind != "audio" || m.port == 0 || !m.proto.starts_with("RTP/AVP") {
            continue;
        }
        let name_of = |pt: u8| {
            m.rtpmaps
                .iter()
                .find(|(p, _, _)| *p == pt)
                .map(|(_, n, r)| (n.clone(), *r))
        };
        let mut chosen = None;
        for f in &m.formats {
            let Ok(pt) = f.parse::<u8>() else { continue };
            let codec = match name_of(pt) {
                Some((n, 8000)) => G711::from_name(&n),
                Some(_) => None,
                None if pt == 0 => Some(G711::Pcmu),
                None if pt == 8 => Some(G711::Pcma),
                None => None,
            };
            if let Some(c) = codec.filter(|c| accept.contains(c)) {
                chosen = Some((c, pt));
                break;
            }
        }
        let Some((codec, pt)) = chosen else { continue };
        let telephone_event = m
            .formats
            .iter()
            .filter_map(|f| f.parse::<u8>().ok())
            .find_map(|pt| {
                let (n, r) = name_of(pt)?;
                if !n.eq_ignore_ascii_case("telephone-event") || r != 8000 {
                    return None;
                }
                // No fmtp means 0-15 (RFC 4733 §7.1.1).
                let range = m
                    .fmtps
                    .iter()
                    .find(|(p, _)| *p == pt)
                    .map(|(_, r)| r.as_str())
                    .unwrap_or("0-15");
                Some((pt, te_range_ok(range)?))
            });
        let addr = m
            .connection
            .or(offer.connection)
            .ok_or(SdpError::NoAddress)?;
        let mut offered = m
            .direction
            .or(offer.direction)
            .unwrap_or(Direction::SendRecv);
        if addr.is_unspecified() && offered == Direction::SendRecv {
            offered = Direction::SendOnly;
        }
        let (rtcp_port, rtcp_addr) = match m.rtcp {
            Some((p, a)) => (p, a.unwrap_or(addr)),
            None => (m.port.saturating_add(1), addr),
        };
        return Ok(Negotiated {
            index,
            codec,
            pt,
            telephone_event,
            remote_rtp: SocketAddr::new(addr, m.port),
            remote_rtcp: SocketAddr::new(rtcp_addr, rtcp_port),
            offered,
            answered: offered.answer(),
            ptime: 20,
        });
    }
    Err(SdpError::NoCommonCodec)
}

/// Writes our answer: one m-line per offered one (RFC 3264 §6), the negotiated audio one with our address and
/// port, every other one with port 0 and its offered formats.
pub fn answer(
    offer: &SessionDescription,
    neg: &Negotiated,
    local: IpAddr,
    rtp_port: u16,
    session_id: u64,
    version: u64,
) -> String {
    let family = if local.is_ipv4() { "IP4" } else { "IP6" };
    let mut s = String::new();
    let _ = write!(
        s,
        "v=0\r\no=switchboard {session_id} {version} IN {family} {local}\r\ns=switchboard\r\nc=IN {family} {local}\r\nt=0 0\r\n"
    );
    for (i, m) in offer.media.iter().enumerate() {
        if i != neg.index {
            let formats = if m.formats.is_empty() {
                "0".to_string()
            } else {
                m.formats.join(" ")
            };
            let _ = write!(s, "m={} 0 {} {}\r\n", m.kind, m.proto, formats);
            continue;
        }
        let mut fmts = neg.pt.to_string();
        if let Some((te, _)) = &neg.telephone_event {
            let _ = write!(fmts, " {te}");
        }
        let _ = write!(s, "m=audio {rtp_port} RTP/AVP {fmts}\r\n");
        let _ = write!(s, "a=rtpmap:{} {}/8000\r\n", neg.pt, neg.codec.name());
        if let Some((te, range)) = &neg.telephone_event {
            let _ = write!(
                s,
                "a=rtpmap:{te} telephone-event/8000\r\na=fmtp:{te} {range}\r\n"
            );
        }
        let _ = write!(
            s,
            "a=ptime:{}\r\na=rtcp:{}\r\na={}\r\n",
            neg.ptime,
            rtp_port.wrapping_add(1),
            neg.answered.as_str()
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    const C019_OFFER: &str =
        include_str!("../../../tests/data/sip/sdp/carrier-invite-pcma-pcmu-te-ptime20.sdp");
    const C019_SONUS: &str =
        include_str!("../../../tests/data/sip/sdp/carrier-sonus-200ok-pcmu-te.sdp");
    const C020_ASTERISK: &str =
        include_str!("../../../tests/data/sip/sdp/te-0-16-malformed-origin.sdp");
    const C020_GATEWAY: &str =
        include_str!("../../../tests/data/sip/sdp/gateway-te-0-16-video-port0.sdp");
    const BOTH: [G711; 2] = [G711::Pcmu, G711::Pcma];

    #[test]
    fn c019_carrier_offer_answers_pcma_te101_no_g729() {
        let offer = parse(C019_OFFER).unwrap();
        let n = negotiate(&offer, &BOTH).unwrap();
        assert_eq!((n.codec, n.pt), (G711::Pcma, 8));
        assert_eq!(n.telephone_event, Some((101, "0-15".into())));
        assert_eq!(n.remote_rtp, "192.0.2.241:20026".parse().unwrap());
        assert_eq!(n.remote_rtcp, "192.0.2.241:20027".parse().unwrap());
        assert_eq!(n.ptime, 20);
        let a = answer(&offer, &n, "198.51.100.1".parse().unwrap(), 30000, 1, 1);
        assert!(a.contains("m=audio 30000 RTP/AVP 8 101\r\n"), "{a}");
        assert!(
            a.contains("a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-15"),
            "{a}"
        );
        assert!(a.contains("a=ptime:20"), "{a}");
        assert!(!a.contains("G729") && !a.contains(" 18"), "{a}");
        // Session-level a=sendrecv applies to the stream.
        assert_eq!(n.answered, Direction::SendRecv);
        // With only PCMU accepted, PCMU is answered.
        let n = negotiate(&offer, &[G711::Pcmu]).unwrap();
        assert_eq!((n.codec, n.pt), (G711::Pcmu, 0));
    }

    #[test]
    fn c019_sonus_answer_media_goes_to_c_line_not_origin() {
        let sd = parse(C019_SONUS).unwrap();
        assert_eq!(sd.origin_addr, Some("198.51.100.78".parse().unwrap()));
        let n = negotiate(&sd, &BOTH).unwrap();
        assert_eq!(n.remote_rtp, "198.51.100.164:19144".parse().unwrap());
        assert_eq!(n.remote_rtcp, "198.51.100.164:19145".parse().unwrap());
        assert_eq!(
            (n.codec, n.telephone_event.as_ref().map(|t| t.0)),
            (G711::Pcmu, Some(101))
        );
    }

    #[test]
    fn c020_malformed_origin_and_event_16_accepted() {
        let sd = parse(C020_ASTERISK).unwrap();
        let n = negotiate(&sd, &BOTH).unwrap();
        assert_eq!((n.codec, n.pt), (G711::Pcmu, 0));
        assert_eq!(n.telephone_event, Some((101, "0-16".into())));
        assert_eq!(n.remote_rtp, "192.0.2.10:19722".parse().unwrap());
    }

    #[test]
    fn c020_port0_video_kept_rejected_in_answer() {
        let sd = parse(C020_GATEWAY).unwrap();
        assert_eq!(sd.media.len(), 2);
        let n = negotiate(&sd, &BOTH).unwrap();
        assert_eq!(n.index, 0);
        let a = answer(&sd, &n, "127.0.0.1".parse().unwrap(), 30000, 1, 1);
        let ms: Vec<&str> = a.lines().filter(|l| l.starts_with("m=")).collect();
        assert_eq!(
            ms,
            [
                "m=audio 30000 RTP/AVP 0 101",
                "m=video 0 RTP/AVP 31 34 103 99"
            ]
        );
        // The answer is itself parseable and negotiable (round trip).
        let back = negotiate(&parse(&a).unwrap(), &BOTH).unwrap();
        assert_eq!(back.telephone_event, Some((101, "0-16".into())));
        // sipp's offer `0-11,16` is answered as offered; events beyond 16 are dropped; too few keys: no DTMF.
        for (offered, answered) in [
            ("0-11,16", Some("0-11,16")),
            ("0-15,32-40", Some("0-15")),
            ("0-9", None),
        ] {
            let o = C020_GATEWAY.replace("a=fmtp:101 0-16", &format!("a=fmtp:101 {offered}"));
            let n = negotiate(&parse(&o).unwrap(), &BOTH).unwrap();
            assert_eq!(
                n.telephone_event.map(|t| t.1),
                answered.map(String::from),
                "{offered}"
            );
        }
    }

    #[test]
    fn hold_offer_sendonly_answers_recvonly() {
        let held = C020_ASTERISK.replace("a=sendrecv", "a=sendonly");
        let n = negotiate(&parse(&held).unwrap(), &BOTH).unwrap();
        assert_eq!(
            (n.offered, n.answered),
            (Direction::SendOnly, Direction::RecvOnly)
        );
        let old_hold = C019_SONUS.replace("c=IN IP4 198.51.100.164", "c=IN IP4 0.0.0.0");
        let n = negotiate(&parse(&old_hold).unwrap(), &BOTH).unwrap();
        assert_eq!(n.answered, Direction::RecvOnly);
    }

    #[test]
    fn no_common_codec_and_garbage() {
        let g729 =
            "v=0\r\nc=IN IP4 192.0.2.1\r\nm=audio 4000 RTP/AVP 18\r\na=rtpmap:18 G729/8000\r\n";
        assert_eq!(
            negotiate(&parse(g729).unwrap(), &BOTH),
            Err(SdpError::NoCommonCodec)
        );
        assert!(parse("hello").is_err());
        assert!(parse("v=0\r\nm=audio x RTP/AVP 0\r\n").is_err());
        let noaddr = "v=0\r\nm=audio 4000 RTP/AVP 0\r\n";
        assert_eq!(
            negotiate(&parse(noaddr).unwrap(), &BOTH),
            Err(SdpError::NoAddress)
        );
    }
}
