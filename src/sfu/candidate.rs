//! Parsing of trickled ICE candidates as browsers send them (`RTCIceCandidate.candidate`).

use str0m::Candidate;

use super::error::SfuError;

/// Parses one trickled remote candidate (RFC 8839 §5.1 `candidate-attribute`), with or without the
/// `a=` prefix and surrounding whitespace.
///
/// Returns `Ok(None)` for what is valid but useless to an ICE-lite UDP server: the empty string and
/// `end-of-candidates` (RFC 8838 §8.2), mDNS host names (`*.local`, the browser default, which the
/// browser's connectivity checks replace with a peer-reflexive candidate), and TCP candidates.
///
/// # Errors
/// [`SfuError::BadCandidate`] when the line is not a candidate or a field does not parse.
pub(crate) fn parse_remote_candidate(line: &str) -> Result<Option<Candidate>, SfuError> {
    let line = line.trim();
    let line = line.strip_prefix("a=").unwrap_or(line);
    if line.is_empty() || line == "end-of-candidates" {
        return Ok(None);
    }
    if !line.starts_with("candidate:") {
        return Err(SfuError::BadCandidate(format!(
            "not a candidate line: {line:?}"
        )));
    }
    // Fields: foundation component transport priority address port "typ" type ...
    let mut fields = line.split_whitespace();
    let transport = fields.nth(2);
    let address = fields.nth(1);
    if transport.is_some_and(|t| !t.eq_ignore_ascii_case("udp")) {
        return Ok(None);
    }
    if address.is_some_and(|a| a.to_ascii_lowercase().ends_with(".local")) {
        return Ok(None);
    }
    Candidate::from_sdp_string(line)
        .map(Some)
        .map_err(|e| SfuError::BadCandidate(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOST: &str = "candidate:842163049 1 udp 1677729535 192.0.2.7 56143 typ host generation 0 \
                        ufrag sXpA network-cost 999";

    #[test]
    fn parses_with_and_without_prefix_and_whitespace() {
        let plain = parse_remote_candidate(HOST).unwrap().unwrap();
        assert_eq!(plain.addr(), "192.0.2.7:56143".parse().unwrap());
        let prefixed = parse_remote_candidate(&format!("a={HOST}\r\n"))
            .unwrap()
            .unwrap();
        assert_eq!(prefixed.addr(), plain.addr());
    }

    #[test]
    fn parses_ipv6_and_server_reflexive() {
        let c = parse_remote_candidate(
            "candidate:1 1 UDP 1686052607 2001:db8::5 40000 typ srflx raddr 0.0.0.0 rport 0",
        )
        .unwrap()
        .unwrap();
        assert_eq!(c.addr(), "[2001:db8::5]:40000".parse().unwrap());
    }

    #[test]
    fn end_of_candidates_is_none() {
        assert!(parse_remote_candidate("").unwrap().is_none());
        assert!(parse_remote_candidate("  \r\n").unwrap().is_none());
        assert!(
            parse_remote_candidate("a=end-of-candidates")
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn mdns_and_tcp_are_ignored() {
        let mdns = "candidate:1 1 udp 2122260223 4b1a7c1e-1b3c-4d8e-9f00-0123456789ab.local 54321 typ host";
        assert!(parse_remote_candidate(mdns).unwrap().is_none());
        let tcp = "candidate:2 1 tcp 1518280447 192.0.2.7 9 typ host tcptype active";
        assert!(parse_remote_candidate(tcp).unwrap().is_none());
    }

    #[test]
    fn garbage_is_an_error() {
        for bad in [
            "hello",
            "candidate:",
            "candidate:1 1 udp",
            "candidate:1 1 udp 12 192.0.2.7 notaport typ host",
            "candidate:1 1 udp 12 not-an-ip 5 typ host",
            "candidate:1 1 udp 12 192.0.2.7 5 typ martian",
        ] {
            assert!(
                matches!(parse_remote_candidate(bad), Err(SfuError::BadCandidate(_))),
                "{bad:?} should be refused"
            );
        }
    }
}
