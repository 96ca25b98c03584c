//! User access tokens: claims, signing and verification (sans-IO: `now` is an argument).
//!
//! Tokens are JWTs (RFC 7519) signed with ES256 (ECDSA P-256, RFC 7518 §3.4). Each signing key has a `kid`; the
//! verifier looks the key up by the header's `kid` and uses the algorithm *pinned to that key*, never the one the
//! token header names, so `alg: none` or an HMAC token made with the public key are refused (cases C039, C040).
//! Claims follow DESIGN.md §2: `sub`, `scp`, `resourceId`, `iat`, `exp` (seconds since the Unix epoch).

use std::collections::HashMap;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// Scopes a token may carry (ACS names).
pub const KNOWN_SCOPES: [&str; 5] = [
    "chat",
    "voip",
    "chat.join",
    "chat.join.limited",
    "voip.join",
];

/// Leeway for `exp`, in seconds: tokens are refused at most this long after they expire (case C042 allows ≤ 60 s).
pub const EXP_LEEWAY_SECS: i64 = 30;

/// Claims of a user access token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The communication identity, `8:acs:{resourceId}_{uuid}`.
    pub sub: String,
    /// Granted scopes, e.g. `["voip"]`.
    pub scp: Vec<String>,
    /// The deployment's resource id (UUID).
    #[serde(rename = "resourceId")]
    pub resource_id: String,
    /// Issued-at, seconds since the epoch.
    pub iat: i64,
    /// Expiry, seconds since the epoch.
    pub exp: i64,
}

impl Claims {
    /// True when the token allows placing or joining calls (`voip` or `voip.join`).
    pub fn can_call(&self) -> bool {
        self.scp.iter().any(|s| s == "voip" || s == "voip.join")
    }
}

/// Why a token was refused. Messages never echo the token's claims (case C040).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// Not three base64url parts, or the header/claims are not the expected JSON.
    #[error("malformed token")]
    Malformed,
    /// The header has no `kid`, or names a key this server does not have.
    #[error("unknown signing key")]
    UnknownKey,
    /// The header's `alg` is not the algorithm pinned to the key (includes `none`).
    #[error("token algorithm not allowed")]
    AlgorithmNotAllowed,
    /// The signature does not verify.
    #[error("invalid token signature")]
    BadSignature,
    /// A required claim (`sub`, `scp`, `iat`, `exp`, `resourceId`) is missing or has the wrong type.
    #[error("token lacks required claim")]
    MissingClaim,
    /// `exp` is in the past (beyond the leeway).
    #[error("token expired")]
    Expired,
    /// `iat` is after `exp`, or `iat` lies in the future by more than the leeway.
    #[error("token issue time invalid")]
    BadIssueTime,
    /// The token belongs to another deployment.
    #[error("token issued for another resource")]
    WrongResource,
    /// The key could not be used.
    #[error("signing key unusable: {0}")]
    Key(String),
}

/// A private signing key (ES256) with its key id.
pub struct SigningKey {
    kid: String,
    key: EncodingKey,
}

impl SigningKey {
    /// Builds a signing key from a PKCS#8 DER-encoded P-256 private key.
    pub fn from_pkcs8_der(kid: impl Into<String>, der: &[u8]) -> SigningKey {
        SigningKey {
            kid: kid.into(),
            key: EncodingKey::from_ec_der(der),
        }
    }

    /// The key id put in the JWT header.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// Signs `claims` into a compact JWT.
    ///
    /// # Errors
    /// [`TokenError::Key`] when the key material is not a valid P-256 PKCS#8 key.
    pub fn sign(&self, claims: &Claims) -> Result<String, TokenError> {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.key).map_err(|e| TokenError::Key(e.to_string()))
    }
}

/// A public verification key, published in the JWKS.
#[derive(Clone)]
pub struct VerifyingKey {
    kid: String,
    x: String,
    y: String,
    key: DecodingKey,
}

impl VerifyingKey {
    /// Builds a verifying key from the uncompressed SEC1 point `0x04 || X || Y` (65 bytes).
    ///
    /// # Errors
    /// [`TokenError::Key`] when the point is not 65 bytes starting with 0x04.
    pub fn from_sec1_uncompressed(
        kid: impl Into<String>,
        point: &[u8],
    ) -> Result<VerifyingKey, TokenError> {
        if point.len() != 65 || point[0] != 4 {
            return Err(TokenError::Key(
                "expected a 65-byte uncompressed P-256 point".into(),
            ));
        }
        let x = URL_SAFE_NO_PAD.encode(&point[1..33]);
        let y = URL_SAFE_NO_PAD.encode(&point[33..65]);
        let key =
            DecodingKey::from_ec_components(&x, &y).map_err(|e| TokenError::Key(e.to_string()))?;
        Ok(VerifyingKey {
            kid: kid.into(),
            x,
            y,
            key,
        })
    }

    /// The key id.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The key as a JWK (RFC 7517) for `/.well-known/jwks.json`.
    pub fn to_jwk(&self) -> serde_json::Value {
        serde_json::json!({
            "kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig",
            "kid": self.kid, "x": self.x, "y": self.y,
        })
    }
}

/// Verifies tokens against a set of keys, each pinned to ES256.
#[derive(Clone, Default)]
pub struct TokenVerifier {
    keys: HashMap<String, VerifyingKey>,
    resource_id: Option<String>,
}

#[derive(Deserialize)]
struct RawHeader {
    alg: String,
    kid: Option<String>,
}

impl TokenVerifier {
    /// A verifier for `keys`; when `resource_id` is set, tokens of other deployments are refused.
    pub fn new(keys: Vec<VerifyingKey>, resource_id: Option<String>) -> TokenVerifier {
        TokenVerifier {
            keys: keys.into_iter().map(|k| (k.kid.clone(), k)).collect(),
            resource_id,
        }
    }

    /// The keys, for publishing.
    pub fn keys(&self) -> impl Iterator<Item = &VerifyingKey> {
        self.keys.values()
    }

    /// Verifies `token` at `now` (seconds since the epoch) and returns its claims.
    ///
    /// Checks, in order: shape, `kid` names a known key, header `alg` equals the key's pinned ES256, signature,
    /// required claims present and typed, `exp` not passed (leeway [`EXP_LEEWAY_SECS`]), `iat <= exp` and not in the
    /// future, resource id. Scope, identity existence and revocation are the identity service's checks.
    ///
    /// # Errors
    /// A [`TokenError`] naming the first failed check.
    pub fn verify(&self, token: &str, now: i64) -> Result<Claims, TokenError> {
        let mut parts = token.split('.');
        let (Some(h), Some(_), Some(_), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed);
        };
        let header_json = URL_SAFE_NO_PAD
            .decode(h.trim_end_matches('='))
            .map_err(|_| TokenError::Malformed)?;
        let header: RawHeader =
            serde_json::from_slice(&header_json).map_err(|_| TokenError::Malformed)?;
        let kid = header.kid.ok_or(TokenError::UnknownKey)?;
        let key = self.keys.get(&kid).ok_or(TokenError::UnknownKey)?;
        if header.alg != "ES256" {
            return Err(TokenError::AlgorithmNotAllowed);
        }
        let mut validation = Validation::new(Algorithm::ES256);
        // Time checks are ours, against `now`, so this stays a pure function.
        validation.validate_exp = false;
        validation.required_spec_claims.clear();
        validation.validate_aud = false;
        let data = jsonwebtoken::decode::<serde_json::Value>(token, &key.key, &validation)
            .map_err(|e| {
                use jsonwebtoken::errors::ErrorKind as K;
                match e.kind() {
                    K::InvalidSignature | K::InvalidEcdsaKey => TokenError::BadSignature,
                    K::InvalidAlgorithm | K::InvalidAlgorithmName => {
                        TokenError::AlgorithmNotAllowed
                    }
                    _ => TokenError::Malformed,
                }
            })?;
        let claims: Claims =
            serde_json::from_value(data.claims).map_err(|_| TokenError::MissingClaim)?;
        if claims.sub.is_empty() {
            return Err(TokenError::MissingClaim);
        }
        if now > claims.exp.saturating_add(EXP_LEEWAY_SECS) {
            return Err(TokenError::Expired);
        }
        if claims.iat > claims.exp || claims.iat > now.saturating_add(EXP_LEEWAY_SECS) {
            return Err(TokenError::BadIssueTime);
        }
        if let Some(rid) = &self.resource_id
            && &claims.resource_id != rid
        {
            return Err(TokenError::WrongResource);
        }
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // A fixed P-256 key (PKCS#8 DER) made for these tests only.
    const TEST_PKCS8_B64: &str = "MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgIV1A1X1LI++4LvezyiM96b4po9uEIOmfezM82I4IDyihRANCAASTbXIcW9AJiyPiyfAqWhEUd0Z9ZRLvWj+ch65ZofSlnQIpv7DfaIlzURHLJrdHPrAvQS0706LXaekOh9Nwhol9";
    const TEST_POINT_B64: &str =
        "BJNtchxb0AmLI+LJ8CpaERR3Rn1lEu9aP5yHrlmh9KWdAim/sN9oiXNREcsmt0c+sC9BLTvTotdp6Q6H03CGiX0=";

    fn keys() -> (SigningKey, TokenVerifier) {
        let std = base64::engine::general_purpose::STANDARD;
        let sk = SigningKey::from_pkcs8_der("k1", &std.decode(TEST_PKCS8_B64).unwrap());
        let vk = VerifyingKey::from_sec1_uncompressed("k1", &std.decode(TEST_POINT_B64).unwrap())
            .unwrap();
        (sk, TokenVerifier::new(vec![vk], Some("res".into())))
    }

    fn claims(iat: i64, exp: i64) -> Claims {
        Claims {
            sub: "8:acs:res_1".into(),
            scp: vec!["voip".into()],
            resource_id: "res".into(),
            iat,
            exp,
        }
    }

    #[test]
    fn round_trip() {
        let (sk, v) = keys();
        let t = sk.sign(&claims(1000, 4600)).unwrap();
        assert_eq!(v.verify(&t, 2000).unwrap(), claims(1000, 4600));
    }

    #[test]
    fn expired_is_refused() {
        let (sk, v) = keys();
        let t = sk.sign(&claims(1000, 4600)).unwrap();
        assert_eq!(
            v.verify(&t, 4600 + EXP_LEEWAY_SECS + 1),
            Err(TokenError::Expired)
        );
    }

    #[test]
    fn alg_none_is_refused() {
        let (sk, v) = keys();
        let t = sk.sign(&claims(1000, 4600)).unwrap();
        let payload = t.split('.').nth(1).unwrap();
        for alg in ["none", "None", "HS256"] {
            let h = URL_SAFE_NO_PAD.encode(format!(r#"{{"alg":"{alg}","typ":"JWT","kid":"k1"}}"#));
            assert_eq!(
                v.verify(&format!("{h}.{payload}."), 2000),
                Err(TokenError::AlgorithmNotAllowed)
            );
        }
    }

    #[test]
    fn tampered_payload_is_refused() {
        let (sk, v) = keys();
        let t = sk.sign(&claims(1000, 4600)).unwrap();
        let mut parts: Vec<String> = t.split('.').map(String::from).collect();
        let mut c = claims(1000, 4600);
        c.sub = "8:acs:res_9999".into();
        parts[1] = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&c).unwrap());
        assert_eq!(
            v.verify(&parts.join("."), 2000),
            Err(TokenError::BadSignature)
        );
    }

    #[test]
    fn unknown_kid_and_garbage() {
        let (_, v) = keys();
        assert_eq!(v.verify("abc", 0), Err(TokenError::Malformed));
        assert_eq!(v.verify("a.b.c", 0), Err(TokenError::Malformed));
        let h = URL_SAFE_NO_PAD.encode(r#"{"alg":"ES256","kid":"other"}"#);
        assert_eq!(
            v.verify(&format!("{h}.e30.AAAA"), 0),
            Err(TokenError::UnknownKey)
        );
    }
}
