//! HMAC-SHA256 request signing as Azure Communication Services does it (DESIGN.md §2, spec/acs/identity.md).
//!
//! `StringToSign = VERB \n PathAndQuery \n x-ms-date;Host;x-ms-content-sha256`, signed with the base64-decoded access
//! key. The path is tried as sent, percent-decoded, and re-quoted (SDKs differ); the host as the `Host` header the
//! client sent and with a trailing `/` (an endpoint configured with a trailing slash). Dates more than 15 minutes
//! off are refused. Signatures are compared in constant time (`Mac::verify_slice`).

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};
use sha2::{Digest, Sha256};

use super::AppState;
use super::error::ApiError;

/// Largest signed request body, bytes.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;
/// Allowed clock skew of `x-ms-date`, seconds.
pub const MAX_SKEW_SECS: i64 = 15 * 60;

/// Python's `urllib.parse.quote(path, safe="/")`: everything but unreserved characters and `/` escaped.
const QUOTE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'_')
    .remove(b'.')
    .remove(b'-')
    .remove(b'~')
    .remove(b'/');

/// The parts of a request the signature covers.
#[derive(Debug, Clone)]
pub struct SignedRequest<'a> {
    /// Upper-case method.
    pub method: &'a str,
    /// Path and query as on the wire.
    pub path_and_query: &'a str,
    /// The Host the client sent.
    pub host: &'a str,
    /// Request headers.
    pub headers: &'a HeaderMap,
    /// Body bytes.
    pub body: &'a [u8],
}

/// Checks a request's HMAC signature against any of `keys` (base64) at `now` (seconds since the epoch).
///
/// # Errors
/// A message saying which check failed (missing header, content hash, date skew, signature).
pub fn verify(req: &SignedRequest<'_>, keys: &[&str], now: i64) -> Result<(), String> {
    let header = |name: &str| req.headers.get(name).and_then(|v| v.to_str().ok());
    let auth = header("authorization").ok_or("missing Authorization header")?;
    let rest = auth
        .strip_prefix("HMAC-SHA256 ")
        .ok_or("Authorization scheme must be HMAC-SHA256")?;
    let (signed_headers, signature) = rest
        .strip_prefix("SignedHeaders=")
        .and_then(|r| r.split_once("&Signature="))
        .ok_or("Authorization must be HMAC-SHA256 SignedHeaders=...&Signature=...")?;
    if !signed_headers.eq_ignore_ascii_case("x-ms-date;host;x-ms-content-sha256") {
        return Err("SignedHeaders must be x-ms-date;host;x-ms-content-sha256".into());
    }
    let signature = STANDARD
        .decode(signature)
        .map_err(|_| "Signature is not base64")?;
    let date = header("x-ms-date")
        .or_else(|| header("date"))
        .ok_or("missing x-ms-date header")?;
    let content_hash = header("x-ms-content-sha256").ok_or("missing x-ms-content-sha256 header")?;
    if STANDARD.encode(Sha256::digest(req.body)) != content_hash {
        return Err("x-ms-content-sha256 does not match the body".into());
    }
    let when = httpdate::parse_http_date(date).map_err(|_| "x-ms-date is not an RFC 1123 date")?;
    let when = when
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    if (now - when).abs() > MAX_SKEW_SECS {
        return Err("x-ms-date is more than 15 minutes from the server's time".into());
    }
    let (path, query) = match req.path_and_query.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (req.path_and_query, None),
    };
    let decoded_path = percent_decode_str(path).decode_utf8_lossy().into_owned();
    let with_query = |p: &str| match query {
        Some(q) => format!("{p}?{q}"),
        None => p.to_string(),
    };
    let targets = [
        req.path_and_query.to_string(),
        percent_decode_str(req.path_and_query)
            .decode_utf8_lossy()
            .into_owned(),
        with_query(&utf8_percent_encode(&decoded_path, QUOTE).to_string()),
    ];
    for key in keys {
        let Ok(key) = STANDARD.decode(key) else {
            continue;
        };
        for host in [req.host.to_string(), format!("{}/", req.host)] {
            for target in &targets {
                let sts = format!(
                    "{}\n{}\n{};{};{}",
                    req.method, target, date, host, content_hash
                );
                // HMAC accepts keys of any length.
                let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(&key) else {
                    continue;
                };
                mac.update(sts.as_bytes());
                if mac.verify_slice(&signature).is_ok() {
                    return Ok(());
                }
            }
        }
    }
    Err("signature does not match".into())
}

/// Computes the `x-ms-*` and `Authorization` headers for a request (for clients and tests).
pub fn sign(
    method: &str,
    path_and_query: &str,
    host: &str,
    body: &[u8],
    key_b64: &str,
    date: &str,
) -> Vec<(String, String)> {
    let content_hash = STANDARD.encode(Sha256::digest(body));
    let sts = format!("{method}\n{path_and_query}\n{date};{host};{content_hash}");
    let key = STANDARD.decode(key_b64).unwrap_or_default();
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).expect("HMAC takes any key length");
    mac.update(sts.as_bytes());
    let sig = STANDARD.encode(mac.finalize().into_bytes());
    vec![
        ("x-ms-date".into(), date.into()),
        ("x-ms-content-sha256".into(), content_hash),
        (
            "authorization".into(),
            format!("HMAC-SHA256 SignedHeaders=x-ms-date;host;x-ms-content-sha256&Signature={sig}"),
        ),
    ]
}

/// Middleware: buffers the body, verifies the signature against the deployment's current keys, passes the request
/// on with its body, or answers 401.
pub async fn require_hmac(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let (parts, body) = req.into_parts();
    let bytes: Bytes = match axum::body::to_bytes(body, MAX_BODY_BYTES).await {
        Ok(b) => b,
        Err(_) => {
            return ApiError::new(
                axum::http::StatusCode::PAYLOAD_TOO_LARGE,
                "RequestTooLarge",
                "request body over 1 MiB",
            )
            .into_response();
        }
    };
    let host = parts
        .headers
        .get(axum::http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string)
        .or_else(|| parts.uri.authority().map(|a| a.to_string()))
        .unwrap_or_default();
    let path_and_query = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let deployment = match state.identity.store().deployment().await {
        Ok(Some(d)) => d,
        _ => {
            return ApiError::new(
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                "Unavailable",
                "store unavailable",
            )
            .into_response();
        }
    };
    let signed = SignedRequest {
        method: parts.method.as_str(),
        path_and_query,
        host: &host,
        headers: &parts.headers,
        body: &bytes,
    };
    if let Err(why) = verify(
        &signed,
        &[&deployment.primary_key, &deployment.secondary_key],
        crate::service::unix_now(),
    ) {
        tracing::info!(path = %parts.uri.path(), reason = %why, "HMAC authentication failed");
        metrics::counter!("switchboard_http_auth_failures_total").increment(1);
        return ApiError::new(
            axum::http::StatusCode::UNAUTHORIZED,
            "Denied",
            format!("authentication failed: {why}"),
        )
        .into_response();
    }
    next.run(Request::from_parts(parts, Body::from(bytes)))
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worked_example_from_the_spec() {
        // spec/acs/identity.md: the SDK's signature for a known key, date, host and body.
        let body = br#"{"createTokenWithScopes": ["voip"], "expiresInMinutes": 60}"#;
        let date = "Sun, 29 Nov 2026 11:34:18 GMT";
        let h = sign(
            "POST",
            "/identities?api-version=2023-10-01",
            "127.0.0.1:33675",
            body,
            "ZmFrZS1hY3MtYWNjZXNzLWtleS0wMTIzNDU2Nzg5YWJjZGVm",
            date,
        );
        assert_eq!(h[1].1, "TjiBQh+AQykznm1T6Hlc2ByxjUkWCHdBspHizN+AeCA=");
        assert!(
            h[2].1
                .ends_with("Signature=AkKHm0GIo26piZFWpaoMObklXFO59/qP6bCnB3qMHRI=")
        );
        let mut headers = HeaderMap::new();
        for (k, v) in &h {
            headers.insert(
                axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        let req = SignedRequest {
            method: "POST",
            path_and_query: "/identities?api-version=2023-10-01",
            host: "127.0.0.1:33675",
            headers: &headers,
            body,
        };
        let now = httpdate::parse_http_date(date)
            .unwrap()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        assert_eq!(
            verify(
                &req,
                &["ZmFrZS1hY3MtYWNjZXNzLWtleS0wMTIzNDU2Nzg5YWJjZGVm"],
                now
            ),
            Ok(())
        );
        assert!(
            verify(&req, &["d3Jvbmc="], now)
                .unwrap_err()
                .contains("signature")
        );
        assert!(
            verify(
                &req,
                &["ZmFrZS1hY3MtYWNjZXNzLWtleS0wMTIzNDU2Nzg5YWJjZGVm"],
                now + 16 * 60
            )
            .unwrap_err()
            .contains("15 minutes")
        );
        let tampered = SignedRequest {
            body: b"{}",
            ..req.clone()
        };
        assert!(
            verify(
                &tampered,
                &["ZmFrZS1hY3MtYWNjZXNzLWtleS0wMTIzNDU2Nzg5YWJjZGVm"],
                now
            )
            .unwrap_err()
            .contains("x-ms-content-sha256")
        );
        let other_host = SignedRequest {
            host: "127.0.0.1:1",
            ..req
        };
        assert!(
            verify(
                &other_host,
                &["ZmFrZS1hY3MtYWNjZXNzLWtleS0wMTIzNDU2Nzg5YWJjZGVm"],
                now
            )
            .is_err()
        );
    }
}
