//! First-start set-up of a deployment: resource id, access keys, token signing key, connection string file.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use rand::RngCore as _;

use super::store::{Deployment, KeyKind, Store, StoreError, StoredSigningKey};

/// Deployment set-up failures.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DeploymentError {
    /// Store access failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The connection string file could not be written.
    #[error("writing {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Key generation failed.
    #[error("generating the token signing key: {0}")]
    KeyGen(String),
    /// `keys` commands on a data dir that was never served.
    #[error("no deployment in this data dir yet: run `switchboard serve` once")]
    NotInitialised,
}

/// A fresh random access key: 64 random bytes, base64 (the ACS key form).
pub fn new_access_key() -> String {
    let mut bytes = [0u8; 64];
    rand::rng().fill_bytes(&mut bytes);
    STANDARD.encode(bytes)
}

/// `endpoint=https://HOST:PORT/;accesskey=KEY` (DESIGN.md §2).
pub fn connection_string(host: &str, https_port: u16, key: &str) -> String {
    let host = if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host.to_string()
    };
    format!("endpoint=https://{host}:{https_port}/;accesskey={key}")
}

/// Path of the connection string file in a data dir.
pub fn connection_string_path(data_dir: &Path) -> PathBuf {
    data_dir.join("connection-string.txt")
}

/// Writes the connection string with mode 0600.
///
/// # Errors
/// [`DeploymentError::Io`] when the file cannot be written.
pub fn write_connection_string(data_dir: &Path, text: &str) -> Result<PathBuf, DeploymentError> {
    use std::io::Write as _;
    use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
    let path = connection_string_path(data_dir);
    let io = |source| DeploymentError::Io {
        path: path.clone(),
        source,
    };
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .map_err(io)?;
    // A file made earlier with other permissions keeps them through open(): set them explicitly.
    f.set_permissions(std::fs::Permissions::from_mode(0o600))
        .map_err(io)?;
    f.write_all(format!("{text}\n").as_bytes()).map_err(io)?;
    Ok(path)
}

/// Makes the deployment on first start (resource id, keys, signing key); returns it and whether it was new.
///
/// # Errors
/// [`DeploymentError`] on store or key generation failures.
pub async fn bootstrap(store: &Store, now: i64) -> Result<(Deployment, bool), DeploymentError> {
    let existing = store.deployment().await?;
    let created = existing.is_none();
    let deployment = match existing {
        Some(d) => d,
        None => {
            let fresh = Deployment {
                resource_id: uuid::Uuid::new_v4().to_string(),
                primary_key: new_access_key(),
                secondary_key: new_access_key(),
            };
            store.init_deployment(&fresh, now).await?
        }
    };
    if store.signing_keys().await?.is_empty() {
        store.add_signing_key(&new_signing_key()?, now).await?;
    }
    Ok((deployment, created))
}

/// A new ES256 signing key with a random key id.
///
/// # Errors
/// [`DeploymentError::KeyGen`] if the crypto library fails.
pub fn new_signing_key() -> Result<StoredSigningKey, DeploymentError> {
    let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|e| DeploymentError::KeyGen(e.to_string()))?;
    Ok(StoredSigningKey {
        kid: uuid::Uuid::new_v4().simple().to_string(),
        pkcs8_der: kp.serialize_der(),
        public_point: kp.public_key_raw().to_vec(),
    })
}

/// Replaces an access key; returns the new deployment.
///
/// # Errors
/// [`DeploymentError::NotInitialised`] when the data dir has no deployment.
pub async fn rotate_key(store: &Store, which: KeyKind) -> Result<Deployment, DeploymentError> {
    if store.deployment().await?.is_none() {
        return Err(DeploymentError::NotInitialised);
    }
    store.set_access_key(which, &new_access_key()).await?;
    store
        .deployment()
        .await?
        .ok_or(DeploymentError::NotInitialised)
}
