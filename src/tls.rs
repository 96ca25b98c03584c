//! TLS certificates: the operator's, or a self-signed one made in the data dir on first start.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

/// Certificate problems.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Certificate generation failed.
    #[error("generating the self-signed certificate: {0}")]
    Generate(String),
}

/// Paths of the certificate chain and key in use, and whether a new self-signed one was made.
#[derive(Debug, Clone)]
pub struct CertPaths {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
    /// A self-signed certificate was made on this start.
    pub created: bool,
}

/// Names the self-signed certificate covers: localhost, 127.0.0.1, ::1, the hostname, and `public_host`/`public_ip`.
pub fn subject_alt_names(public_host: Option<&str>, public_ip: Option<IpAddr>) -> Vec<String> {
    let mut names = vec!["localhost".to_string(), "127.0.0.1".into(), "::1".into()];
    if let Ok(h) = hostname::get()
        && let Some(h) = h.to_str()
    {
        names.push(h.to_string());
    }
    names.extend(public_host.map(str::to_string));
    names.extend(public_ip.map(|ip| ip.to_string()));
    names.dedup();
    let mut seen = std::collections::HashSet::new();
    names.retain(|n| seen.insert(n.clone()));
    names
}

/// Returns the operator's certificate when given, else the self-signed one under `data_dir/tls/`, made (or
/// remade, when the names it must cover changed) as needed.
///
/// # Errors
/// [`TlsError`] when files cannot be written or the certificate cannot be generated.
pub fn ensure_certificate(
    data_dir: &Path,
    given: Option<(&Path, &Path)>,
    names: &[String],
) -> Result<CertPaths, TlsError> {
    if let Some((cert, key)) = given {
        return Ok(CertPaths {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            created: false,
        });
    }
    let dir = data_dir.join("tls");
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    let names_file = dir.join("names.txt");
    let wanted = names.join("\n");
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| TlsError::Io { path, source }
    };
    if cert.exists()
        && key.exists()
        && std::fs::read_to_string(&names_file).ok().as_deref() == Some(wanted.as_str())
    {
        return Ok(CertPaths {
            cert,
            key,
            created: false,
        });
    }
    std::fs::create_dir_all(&dir).map_err(io(&dir))?;
    let mut params = rcgen::CertificateParams::new(names.to_vec())
        .map_err(|e| TlsError::Generate(e.to_string()))?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "Switchboard self-signed");
    params.not_before = rcgen::date_time_ymd(2025, 1, 1);
    params.not_after = rcgen::date_time_ymd(2035, 1, 1);
    let kp = rcgen::KeyPair::generate().map_err(|e| TlsError::Generate(e.to_string()))?;
    let c = params
        .self_signed(&kp)
        .map_err(|e| TlsError::Generate(e.to_string()))?;
    write_private(&key, kp.serialize_pem().as_bytes()).map_err(io(&key))?;
    std::fs::write(&cert, c.pem()).map_err(io(&cert))?;
    std::fs::write(&names_file, wanted).map_err(io(&names_file))?;
    Ok(CertPaths {
        cert,
        key,
        created: true,
    })
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)
}
