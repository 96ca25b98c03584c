//! HTTP Digest authentication for SIP requests we send (RFC 3261 §22.4 with RFC 2617 `MD5`, `qop=auth`):
//! answering a trunk's `401` (`WWW-Authenticate` -> `Authorization`) or `407` (`Proxy-Authenticate` ->
//! `Proxy-Authorization`). Pure functions; the caller supplies the client nonce.

use md5::{Digest as _, Md5};

/// A parsed `Digest` challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    /// `realm`.
    pub realm: String,
    /// `nonce`.
    pub nonce: String,
    /// `opaque`, echoed back when present.
    pub opaque: Option<String>,
    /// Whether `qop` offers `auth` (then `nc` and `cnonce` are used).
    pub qop_auth: bool,
    /// `algorithm` (only `MD5`, the default, is answered).
    pub algorithm: String,
}

/// Parses a `WWW-Authenticate` / `Proxy-Authenticate` value; `None` unless it is a Digest challenge with
/// realm and nonce and the MD5 algorithm.
pub fn parse_challenge(value: &str) -> Option<Challenge> {
    let rest = value.trim();
    let (scheme, params) = rest.split_once(char::is_whitespace)?;
    if !scheme.eq_ignore_ascii_case("digest") {
        return None;
    }
    let mut realm = None;
    let mut nonce = None;
    let mut opaque = None;
    let mut qop_auth = false;
    let mut algorithm = "MD5".to_string();
    for (k, v) in split_params(params) {
        match k.to_ascii_lowercase().as_str() {
            "realm" => realm = Some(v),
            "nonce" => nonce = Some(v),
            "opaque" => opaque = Some(v),
            "qop" => qop_auth = v.split(',').any(|q| q.trim().eq_ignore_ascii_case("auth")),
            "algorithm" => algorithm = v,
            _ => {}
        }
    }
    if !algorithm.eq_ignore_ascii_case("MD5") {
        return None;
    }
    Some(Challenge {
        realm: realm?,
        nonce: nonce?,
        opaque,
        qop_auth,
        algorithm,
    })
}

/// `k=v` / `k="v, w"` pairs of a challenge, quotes removed.
fn split_params(s: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let key: String = std::iter::from_fn(|| chars.next_if(|c| *c != '=' && *c != ','))
            .collect::<String>()
            .trim()
            .to_string();
        if key.is_empty() {
            break;
        }
        if chars.next_if_eq(&'=').is_none() {
            out.push((key, String::new()));
            continue;
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let value = if chars.next_if_eq(&'"').is_some() {
            let mut v = String::new();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => {
                        if let Some(n) = chars.next() {
                            v.push(n);
                        }
                    }
                    '"' => break,
                    c => v.push(c),
                }
            }
            v
        } else {
            std::iter::from_fn(|| chars.next_if(|c| *c != ','))
                .collect::<String>()
                .trim()
                .to_string()
        };
        out.push((key, value));
    }
    out
}

fn hex_md5(s: &str) -> String {
    Md5::digest(s.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The `Authorization` / `Proxy-Authorization` value answering `c` for `method` on `uri` (RFC 2617 §3.2.2),
/// with nonce count 1 and client nonce `cnonce`.
pub fn authorization(
    c: &Challenge,
    user: &str,
    password: &str,
    method: &str,
    uri: &str,
    cnonce: &str,
) -> String {
    let ha1 = hex_md5(&format!("{user}:{}:{password}", c.realm));
    let ha2 = hex_md5(&format!("{method}:{uri}"));
    let nc = "00000001";
    let response = if c.qop_auth {
        hex_md5(&format!("{ha1}:{}:{nc}:{cnonce}:auth:{ha2}", c.nonce))
    } else {
        hex_md5(&format!("{ha1}:{}:{ha2}", c.nonce))
    };
    let q = |s: &str| s.replace(['"', '\\'], "");
    let mut v = format!(
        "Digest username=\"{}\", realm=\"{}\", nonce=\"{}\", uri=\"{}\", response=\"{response}\", algorithm=MD5",
        q(user),
        q(&c.realm),
        q(&c.nonce),
        q(uri)
    );
    if c.qop_auth {
        v.push_str(&format!(", qop=auth, nc={nc}, cnonce=\"{}\"", q(cnonce)));
    }
    if let Some(o) = &c.opaque {
        v.push_str(&format!(", opaque=\"{}\"", q(o)));
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc2617_example_response() {
        // RFC 2617 §3.5: Mufasa / "Circle Of Life", GET /dir/index.html, qop=auth, nc=00000001.
        let c = parse_challenge(
            r#"Digest realm="testrealm@host.com", qop="auth,auth-int", nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", opaque="5ccc069c403ebaf9f0171e9517f40e41""#,
        )
        .unwrap();
        assert!(c.qop_auth);
        let v = authorization(
            &c,
            "Mufasa",
            "Circle Of Life",
            "GET",
            "/dir/index.html",
            "0a4f113b",
        );
        assert!(
            v.contains(r#"response="6629fae49393a05397450978507c4ef1""#),
            "{v}"
        );
        assert!(v.contains(r#"opaque="5ccc069c403ebaf9f0171e9517f40e41""#));
    }

    #[test]
    fn challenges_without_nonce_or_with_other_algorithms_are_refused() {
        assert_eq!(parse_challenge(r#"Digest realm="r""#), None);
        assert_eq!(parse_challenge(r#"Basic realm="r""#), None);
        assert_eq!(
            parse_challenge(r#"Digest realm="r", nonce="n", algorithm=SHA-256"#),
            None
        );
        let c = parse_challenge(r#"Digest realm="sip.example", nonce="abc""#).unwrap();
        assert!(!c.qop_auth);
        assert_eq!(c.opaque, None);
    }
}
