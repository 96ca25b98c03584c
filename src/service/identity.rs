//! Identity service: communication identities and their user access tokens (ACS Identity semantics).

use std::sync::Arc;

use crate::proto::token::{
    Claims, KNOWN_SCOPES, SigningKey, TokenError, TokenVerifier, VerifyingKey,
};

use super::store::{Store, StoreError, StoredSigningKey};

/// Token lifetime bounds and default, minutes (ACS: 60–1440, default 1440).
pub const MIN_EXPIRES_MINUTES: i64 = 60;
/// Upper bound of `expiresInMinutes`.
pub const MAX_EXPIRES_MINUTES: i64 = 1440;

/// Identity API failures; each maps to one HTTP status.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// No such identity (404).
    #[error("identity {0} not found")]
    NotFound(String),
    /// The id is not of the form `8:acs:{resourceId}_{uuid}` for this deployment (400; ACS answers 400 too).
    #[error("identity id {0:?} is not a communication user id of this resource")]
    BadId(String),
    /// An unknown scope (400).
    #[error(
        "unknown scope {0:?}; known scopes: chat, voip, chat.join, chat.join.limited, voip.join"
    )]
    UnknownScope(String),
    /// No scope given where one is required (400).
    #[error("scopes must list at least one scope")]
    NoScopes,
    /// `expiresInMinutes` out of range (400).
    #[error("expiresInMinutes must be between 60 and 1440, got {0}")]
    BadExpiry(i64),
    /// Store failure (500).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Signing failure (500).
    #[error(transparent)]
    Token(#[from] TokenError),
}

/// Why a token was refused for signaling; the `Display` text is the WebSocket close reason (≤ 123 bytes).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// Signature, algorithm, shape or time checks failed.
    #[error("{0}")]
    Token(#[from] TokenError),
    /// No `voip` or `voip.join` scope.
    #[error("token lacks the voip scope")]
    Scope,
    /// The identity was deleted.
    #[error("identity deleted")]
    Deleted,
    /// The token was issued before the identity's tokens were revoked.
    #[error("token revoked")]
    Revoked,
    /// Store failure.
    #[error("identity store unavailable")]
    Store(#[from] StoreError),
}

/// An issued token: the JWT and its expiry (seconds since the epoch).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessToken {
    /// Compact JWT.
    pub token: String,
    /// `exp`, seconds since the epoch.
    pub expires_on: i64,
}

/// Identities and tokens over the store. Cheap to clone.
#[derive(Clone)]
pub struct IdentityService {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    resource_id: String,
    signer: SigningKey,
    verifier: TokenVerifier,
}

impl IdentityService {
    /// Builds the service; the newest stored key signs, all stored keys verify.
    ///
    /// # Errors
    /// [`IdentityError`] if the store has no usable signing key.
    pub async fn new(store: Store, resource_id: String) -> Result<IdentityService, IdentityError> {
        let keys = store.signing_keys().await?;
        let Some(newest) = keys.first() else {
            return Err(TokenError::Key("no signing key in the store".into()).into());
        };
        let signer = SigningKey::from_pkcs8_der(newest.kid.clone(), &newest.pkcs8_der);
        let verifying = keys
            .iter()
            .map(verifying_key)
            .collect::<Result<Vec<_>, _>>()?;
        let verifier = TokenVerifier::new(verifying, Some(resource_id.clone()));
        Ok(IdentityService {
            inner: Arc::new(Inner {
                store,
                resource_id,
                signer,
                verifier,
            }),
        })
    }

    /// The deployment's resource id.
    pub fn resource_id(&self) -> &str {
        &self.inner.resource_id
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// JWKS document (RFC 7517) with every verifying key.
    pub fn jwks(&self) -> serde_json::Value {
        let keys: Vec<_> = self
            .inner
            .verifier
            .keys()
            .map(VerifyingKey::to_jwk)
            .collect();
        serde_json::json!({ "keys": keys })
    }

    /// Creates an identity `8:acs:{resourceId}_{uuid}`.
    pub async fn create_identity(&self, now: i64) -> Result<String, IdentityError> {
        let id = format!("8:acs:{}_{}", self.inner.resource_id, uuid::Uuid::new_v4());
        self.inner.store.insert_identity(&id, now).await?;
        Ok(id)
    }

    /// Checks scopes and lifetime, then issues a token for an existing identity.
    ///
    /// # Errors
    /// `BadId`/`NotFound` for the id, `NoScopes`/`UnknownScope`, `BadExpiry` outside 60–1440 minutes.
    pub async fn issue_token(
        &self,
        id: &str,
        scopes: &[String],
        expires_in_minutes: Option<i64>,
        now: i64,
    ) -> Result<AccessToken, IdentityError> {
        let minutes = validate_token_request(scopes, expires_in_minutes)?;
        let row = self.existing(id).await?;
        // A token must be issued strictly after the last revocation (revocation compares whole seconds).
        let iat = row.revoked_at.map_or(now, |r| now.max(r + 1));
        let claims = Claims {
            sub: id.to_string(),
            scp: dedup(scopes),
            resource_id: self.inner.resource_id.clone(),
            iat,
            exp: now + minutes * 60,
        };
        Ok(AccessToken {
            token: self.inner.signer.sign(&claims)?,
            expires_on: claims.exp,
        })
    }

    /// Signs arbitrary claims with the deployment's key (tests and tools that need unusual lifetimes).
    ///
    /// # Errors
    /// [`IdentityError::Token`] if signing fails.
    pub fn sign_claims(&self, claims: &Claims) -> Result<String, IdentityError> {
        Ok(self.inner.signer.sign(claims)?)
    }

    /// Revokes every token issued so far for the identity.
    pub async fn revoke(&self, id: &str, now: i64) -> Result<(), IdentityError> {
        self.check_id(id)?;
        if self.inner.store.revoke_identity(id, now).await? {
            Ok(())
        } else {
            Err(IdentityError::NotFound(id.into()))
        }
    }

    /// Deletes the identity; its tokens stop working.
    pub async fn delete(&self, id: &str) -> Result<(), IdentityError> {
        self.check_id(id)?;
        if self.inner.store.delete_identity(id).await? {
            Ok(())
        } else {
            Err(IdentityError::NotFound(id.into()))
        }
    }

    /// Full check of a token presented for calling: signature and times, `voip`/`voip.join` scope, identity
    /// exists, token issued after the last revocation.
    ///
    /// # Errors
    /// [`AuthError`] naming the failed check.
    pub async fn authenticate(&self, token: &str, now: i64) -> Result<Claims, AuthError> {
        let claims = self.inner.verifier.verify(token, now)?;
        if !claims.can_call() {
            return Err(AuthError::Scope);
        }
        let Some(row) = self.inner.store.identity(&claims.sub).await? else {
            return Err(AuthError::Deleted);
        };
        if row.revoked_at.is_some_and(|r| claims.iat <= r) {
            return Err(AuthError::Revoked);
        }
        Ok(claims)
    }

    fn check_id(&self, id: &str) -> Result<(), IdentityError> {
        let prefix = format!("8:acs:{}_", self.inner.resource_id);
        match id.strip_prefix(&prefix) {
            Some(rest) if uuid::Uuid::parse_str(rest).is_ok() => Ok(()),
            _ => Err(IdentityError::BadId(id.chars().take(200).collect())),
        }
    }

    async fn existing(&self, id: &str) -> Result<super::store::IdentityRow, IdentityError> {
        self.check_id(id)?;
        self.inner
            .store
            .identity(id)
            .await?
            .ok_or_else(|| IdentityError::NotFound(id.into()))
    }
}

/// Validates scopes and lifetime; returns the lifetime in minutes.
///
/// # Errors
/// `NoScopes`, `UnknownScope`, `BadExpiry`.
pub fn validate_token_request(
    scopes: &[String],
    expires_in_minutes: Option<i64>,
) -> Result<i64, IdentityError> {
    if scopes.is_empty() {
        return Err(IdentityError::NoScopes);
    }
    if let Some(bad) = scopes.iter().find(|s| !KNOWN_SCOPES.contains(&s.as_str())) {
        return Err(IdentityError::UnknownScope(bad.chars().take(100).collect()));
    }
    let minutes = expires_in_minutes.unwrap_or(MAX_EXPIRES_MINUTES);
    if !(MIN_EXPIRES_MINUTES..=MAX_EXPIRES_MINUTES).contains(&minutes) {
        return Err(IdentityError::BadExpiry(minutes));
    }
    Ok(minutes)
}

/// Scopes in their first order, each once.
fn dedup(scopes: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(scopes.len());
    for s in scopes {
        if !out.contains(s) {
            out.push(s.clone());
        }
    }
    out
}

fn verifying_key(k: &StoredSigningKey) -> Result<VerifyingKey, TokenError> {
    VerifyingKey::from_sec1_uncompressed(k.kid.clone(), &k.public_point)
}
