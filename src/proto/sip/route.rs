//! Trunks, phone numbers and the routing decision for an inbound INVITE: which trunk (if any) the source address
//! belongs to, and what the dialled number does. Pure functions over the configuration.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use super::sdp::G711;

/// A configuration problem, naming the key (`sip.trunks[0].allow[1]`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("key `{key}`: {why}")]
pub struct RouteConfigError {
    /// The offending key.
    pub key: String,
    /// What is wrong.
    pub why: String,
}

/// An IPv4/IPv6 network, `addr/len` (a bare address is a /32 or /128).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    len: u8,
}

impl Cidr {
    /// Parses `192.0.2.0/24`, `2001:db8::/32` or a bare address.
    ///
    /// # Errors
    /// A message when the address or length is invalid.
    pub fn parse(s: &str) -> Result<Cidr, String> {
        let (a, l) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (s, None),
        };
        let addr: IpAddr = a
            .trim()
            .parse()
            .map_err(|_| format!("not an IP address: {a:?}"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let len = match l {
            Some(l) => l
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|l| *l <= max)
                .ok_or_else(|| format!("bad prefix length {l:?}"))?,
            None => max,
        };
        Ok(Cidr { addr, len })
    }

    /// Whether `ip` is inside (IPv4-mapped IPv6 addresses are compared as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.len)).unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.len))
                    .unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

/// SIP transport of a trunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TrunkTransport {
    /// UDP (default).
    #[default]
    Udp,
    /// TCP.
    Tcp,
}

fn default_codecs() -> Vec<G711> {
    vec![G711::Pcmu, G711::Pcma]
}

/// `[[sip.trunks]]`: a carrier, PBX or SBC.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrunkConfig {
    /// Name used in logs and metrics.
    pub name: String,
    /// Where outbound INVITEs go, `host[:port]`.
    pub address: String,
    /// `udp` or `tcp`.
    #[serde(default)]
    pub transport: TrunkTransport,
    /// Digest username for outbound authentication (RFC 3261 §22).
    #[serde(default)]
    pub username: Option<String>,
    /// Digest password.
    #[serde(default)]
    pub password: Option<String>,
    /// Source addresses or CIDRs allowed to send INVITEs to us.
    #[serde(default)]
    pub allow: Vec<String>,
    /// Caller-id number presented on outbound calls (E.164).
    #[serde(default)]
    pub caller_id: Option<String>,
    /// Codecs accepted, in preference order (`PCMU`, `PCMA`).
    #[serde(default = "default_codecs")]
    pub codecs: Vec<G711>,
    /// Outbound number prefixes routed to this trunk (`+1`, `+44`).
    #[serde(default)]
    pub prefixes: Vec<String>,
    /// Seconds between OPTIONS keepalives to `address` (RFC 3261 §11); 3 unanswered in a row mark the trunk down.
    /// 0 disables them. UDP trunks only.
    #[serde(default = "default_keepalive")]
    pub keepalive_secs: u64,
}

fn default_keepalive() -> u64 {
    30
}

/// What an inbound call to a number does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteTarget {
    /// Ring a communication user (`8:acs:...`).
    User(String),
    /// Join a group call by id.
    Group(String),
    /// Answer and send back what is heard.
    Echo,
}

/// `[[sip.numbers]]`: an owned E.164 number.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NumberConfig {
    /// The number, E.164 with `+`.
    pub number: String,
    /// Route to a user: `8:acs:...`.
    #[serde(default)]
    pub user: Option<String>,
    /// Route to a group call: a UUID.
    #[serde(default)]
    pub group: Option<String>,
    /// The echo test line.
    #[serde(default)]
    pub echo: bool,
    /// Milliseconds the echo line rings (180) before answering (0).
    #[serde(default)]
    pub answer_after_ms: u64,
}

impl NumberConfig {
    /// The route, when exactly one is given.
    pub fn target(&self) -> Option<RouteTarget> {
        match (&self.user, &self.group, self.echo) {
            (Some(u), None, false) => Some(RouteTarget::User(u.clone())),
            (None, Some(g), false) => Some(RouteTarget::Group(g.clone())),
            (None, None, true) => Some(RouteTarget::Echo),
            _ => None,
        }
    }
}

/// Digits of a number for comparison: `+1 (555) 010-0` -> `15550100`.
pub fn digits(number: &str) -> String {
    number.chars().filter(char::is_ascii_digit).collect()
}

fn e164_ok(n: &str) -> bool {
    let d = n.strip_prefix('+').unwrap_or("");
    !d.is_empty() && d.len() <= 15 && d.bytes().all(|b| b.is_ascii_digit())
}

/// Routing table built from validated configuration.
#[derive(Debug, Clone, Default)]
pub struct Router {
    trunks: Vec<(TrunkConfig, Vec<Cidr>)>,
    numbers: Vec<(String, RouteTarget, u64)>,
}

/// The decision for an inbound INVITE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// No trunk allows the source: 403, nothing else (RFC 3261 §21.4.4).
    Forbidden,
    /// Not an owned number: 404.
    NotFound,
    /// Route it.
    Route {
        /// Index of the trunk the source belongs to.
        trunk: usize,
        /// What to do.
        target: RouteTarget,
        /// Ring time before answering, ms (echo line).
        answer_after_ms: u64,
    },
}

impl Router {
    /// Validates and indexes trunks and numbers.
    ///
    /// # Errors
    /// [`RouteConfigError`] naming the first bad key.
    pub fn new(
        trunks: &[TrunkConfig],
        numbers: &[NumberConfig],
    ) -> Result<Router, RouteConfigError> {
        let mut r = Router::default();
        for (i, t) in trunks.iter().enumerate() {
            let key = |k: &str| format!("sip.trunks[{i}].{k}");
            if t.name.trim().is_empty() {
                return Err(RouteConfigError {
                    key: key("name"),
                    why: "must not be empty".into(),
                });
            }
            if trunks[..i].iter().any(|o| o.name == t.name) {
                return Err(RouteConfigError {
                    key: key("name"),
                    why: format!("duplicate trunk name {:?}", t.name),
                });
            }
            if t.address.trim().is_empty() || t.address.contains(char::is_whitespace) {
                return Err(RouteConfigError {
                    key: key("address"),
                    why: format!("not host[:port]: {:?}", t.address),
                });
            }
            if t.username.is_some() != t.password.is_some() {
                return Err(RouteConfigError {
                    key: key("password"),
                    why: "username and password go together".into(),
                });
            }
            if t.codecs.is_empty() {
                return Err(RouteConfigError {
                    key: key("codecs"),
                    why: "at least one of PCMU, PCMA".into(),
                });
            }
            if let Some(c) = &t.caller_id
                && !e164_ok(c)
            {
                return Err(RouteConfigError {
                    key: key("caller_id"),
                    why: format!("not E.164 (+digits): {c:?}"),
                });
            }
            for (j, p) in t.prefixes.iter().enumerate() {
                if !p.starts_with('+') || !p[1..].bytes().all(|b| b.is_ascii_digit()) {
                    return Err(RouteConfigError {
                        key: format!("sip.trunks[{i}].prefixes[{j}]"),
                        why: format!("not a + and digits: {p:?}"),
                    });
                }
            }
            if t.keepalive_secs > 3600 {
                return Err(RouteConfigError {
                    key: key("keepalive_secs"),
                    why: "at most 3600 (0 disables)".into(),
                });
            }
            let mut nets = Vec::new();
            for (j, a) in t.allow.iter().enumerate() {
                nets.push(Cidr::parse(a).map_err(|why| RouteConfigError {
                    key: format!("sip.trunks[{i}].allow[{j}]"),
                    why,
                })?);
            }
            r.trunks.push((t.clone(), nets));
        }
        for (i, n) in numbers.iter().enumerate() {
            let key = |k: &str| format!("sip.numbers[{i}].{k}");
            if !e164_ok(&n.number) {
                return Err(RouteConfigError {
                    key: key("number"),
                    why: format!("not E.164 (+digits): {:?}", n.number),
                });
            }
            if r.numbers.iter().any(|(d, _, _)| *d == digits(&n.number)) {
                return Err(RouteConfigError {
                    key: key("number"),
                    why: format!("duplicate number {}", n.number),
                });
            }
            let target = n.target().ok_or_else(|| RouteConfigError {
                key: key("user"),
                why: "give exactly one of `user`, `group`, `echo = true`".into(),
            })?;
            match &target {
                RouteTarget::User(u) if !u.starts_with("8:acs:") => {
                    return Err(RouteConfigError {
                        key: key("user"),
                        why: format!("not a communication user id (8:acs:...): {u:?}"),
                    });
                }
                RouteTarget::Group(g) if !is_uuid(g) => {
                    return Err(RouteConfigError {
                        key: key("group"),
                        why: format!("not a UUID: {g:?}"),
                    });
                }
                _ => {}
            }
            if n.answer_after_ms > 60_000 {
                return Err(RouteConfigError {
                    key: key("answer_after_ms"),
                    why: "at most 60000".into(),
                });
            }
            r.numbers
                .push((digits(&n.number), target, n.answer_after_ms));
        }
        Ok(r)
    }

    /// The trunk whose `allow` list contains `ip`.
    pub fn trunk_for(&self, ip: IpAddr) -> Option<usize> {
        self.trunks
            .iter()
            .position(|(_, nets)| nets.iter().any(|n| n.contains(ip)))
    }

    /// Every trunk's configuration, in order.
    pub fn trunks(&self) -> impl Iterator<Item = &TrunkConfig> {
        self.trunks.iter().map(|(t, _)| t)
    }

    /// A trunk's configuration.
    pub fn trunk(&self, i: usize) -> Option<&TrunkConfig> {
        self.trunks.get(i).map(|(t, _)| t)
    }

    /// Whether anything is configured.
    pub fn is_empty(&self) -> bool {
        self.trunks.is_empty() && self.numbers.is_empty()
    }

    /// Decides an inbound INVITE from `source` to the Request-URI user `dialled`.
    pub fn decide(&self, source: IpAddr, dialled: &str) -> Decision {
        let Some(trunk) = self.trunk_for(source) else {
            return Decision::Forbidden;
        };
        let d = digits(dialled);
        match self
            .numbers
            .iter()
            .find(|(n, _, _)| !d.is_empty() && *n == d)
        {
            Some((_, target, after)) => Decision::Route {
                trunk,
                target: target.clone(),
                answer_after_ms: *after,
            },
            None => Decision::NotFound,
        }
    }

    /// Every trunk whose `prefixes` match `number`, longest matching prefix first (configuration order among
    /// equals): the first carries an outbound call, the others are its failover (503, 408).
    pub fn outbound_trunks(&self, number: &str) -> Vec<usize> {
        let mut found: Vec<(usize, usize)> = self
            .trunks
            .iter()
            .enumerate()
            .filter_map(|(i, (t, _))| {
                t.prefixes
                    .iter()
                    .filter(|p| number.starts_with(p.as_str()))
                    .map(|p| p.len())
                    .max()
                    .map(|len| (i, len))
            })
            .collect();
        found.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        found.into_iter().map(|(i, _)| i).collect()
    }

    /// The trunk for an outbound call to `number`: longest matching prefix.
    pub fn outbound_trunk(&self, number: &str) -> Option<usize> {
        self.trunks
            .iter()
            .enumerate()
            .flat_map(|(i, (t, _))| t.prefixes.iter().map(move |p| (i, p)))
            .filter(|(_, p)| number.starts_with(p.as_str()))
            .max_by_key(|(_, p)| p.len())
            .map(|(i, _)| i)
    }
}

fn is_uuid(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    parts.len() == 5
        && parts
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(p, n)| p.len() == n && p.bytes().all(|b| b.is_ascii_hexdigit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trunk(allow: &[&str]) -> TrunkConfig {
        TrunkConfig {
            name: "carrier".into(),
            address: "192.0.2.10:5060".into(),
            transport: TrunkTransport::Udp,
            username: None,
            password: None,
            allow: allow.iter().map(|s| s.to_string()).collect(),
            caller_id: None,
            codecs: default_codecs(),
            prefixes: vec!["+1".into(), "+1555".into()],
            keepalive_secs: 30,
        }
    }

    fn echo(n: &str) -> NumberConfig {
        NumberConfig {
            number: n.into(),
            user: None,
            group: None,
            echo: true,
            answer_after_ms: 0,
        }
    }

    #[test]
    fn cidr_matching() {
        let c = Cidr::parse("192.0.2.0/24").unwrap();
        assert!(c.contains("192.0.2.77".parse().unwrap()));
        assert!(!c.contains("192.0.3.1".parse().unwrap()));
        assert!(c.contains("::ffff:192.0.2.1".parse().unwrap()));
        assert!(
            Cidr::parse("127.0.0.1")
                .unwrap()
                .contains("127.0.0.1".parse().unwrap())
        );
        assert!(
            !Cidr::parse("127.0.0.1")
                .unwrap()
                .contains("127.0.0.2".parse().unwrap())
        );
        assert!(
            Cidr::parse("0.0.0.0/0")
                .unwrap()
                .contains("203.0.113.9".parse().unwrap())
        );
        assert!(
            Cidr::parse("2001:db8::/32")
                .unwrap()
                .contains("2001:db8::1".parse().unwrap())
        );
        assert!(Cidr::parse("10.0.0.0/33").is_err());
        assert!(Cidr::parse("nope").is_err());
    }

    #[test]
    fn decisions() {
        let r = Router::new(&[trunk(&["127.0.0.1/32"])], &[echo("+15550100")]).unwrap();
        assert_eq!(
            r.decide("127.0.0.2".parse().unwrap(), "+15550100"),
            Decision::Forbidden
        );
        assert_eq!(
            r.decide("127.0.0.1".parse().unwrap(), "+15550199"),
            Decision::NotFound
        );
        assert_eq!(
            r.decide("127.0.0.1".parse().unwrap(), ""),
            Decision::NotFound
        );
        assert_eq!(
            r.decide("127.0.0.1".parse().unwrap(), "15550100"),
            Decision::Route {
                trunk: 0,
                target: RouteTarget::Echo,
                answer_after_ms: 0
            }
        );
        assert_eq!(r.outbound_trunk("+15550100"), Some(0));
        assert_eq!(r.outbound_trunk("+445550100"), None);
    }

    #[test]
    fn invalid_config_names_the_key() {
        let e = Router::new(&[trunk(&["127.0.0.1/40"])], &[]).unwrap_err();
        assert_eq!(e.key, "sip.trunks[0].allow[0]");
        let e = Router::new(&[], &[echo("5550100")]).unwrap_err();
        assert_eq!(e.key, "sip.numbers[0].number");
        let mut both = echo("+15550100");
        both.user = Some("8:acs:x".into());
        assert_eq!(
            Router::new(&[], &[both]).unwrap_err().key,
            "sip.numbers[0].user"
        );
        let mut g = echo("+15550100");
        g.echo = false;
        g.group = Some("not-a-uuid".into());
        assert_eq!(
            Router::new(&[], &[g]).unwrap_err().key,
            "sip.numbers[0].group"
        );
        let mut t = trunk(&[]);
        t.username = Some("u".into());
        assert_eq!(
            Router::new(&[t], &[]).unwrap_err().key,
            "sip.trunks[0].password"
        );
    }
}
