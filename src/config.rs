//! Configuration: defaults, then `switchboard.toml` (or `--config FILE`), then `SWITCHBOARD_*` environment
//! variables, then command-line flags. Every key is documented in `deploy/switchboard.sample.toml`.
//! An invalid value is reported with its key; the binary exits with code 64 (EX_USAGE) before binding any port.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

/// Server configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Directory for the SQLite store, the TLS certificate and the connection string (`./data`).
    pub data_dir: PathBuf,
    /// HTTPS + WSS port, all interfaces (8443).
    pub https_port: u16,
    /// Plain HTTP port, bound to 127.0.0.1 only (8080).
    pub http_port: u16,
    /// Media UDP port for WebRTC (10000): media worker `i` listens on `media_port + i`; 0 lets each worker pick a
    /// free port.
    pub media_port: u16,
    /// Media workers, each a thread with its own UDP port and its own rooms (0: one per core, the default).
    pub media_workers: usize,
    /// Host name or address clients use to reach this server: put in the connection string and the certificate.
    pub public_host: Option<String>,
    /// Public IPv4/IPv6 of a 1:1 NAT (cloud VM): advertised as the media ICE candidate.
    pub public_ip: Option<IpAddr>,
    /// PEM certificate chain; with `tls_key`, replaces the self-signed certificate.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// Seconds an unanswered call rings before it ends with 408 (60).
    pub ring_timeout: u64,
    /// Serve the demo identity sample (`/demo/...`) to every client, not only to loopback ones (false).
    pub demo: bool,
    /// Log filter in `tracing` EnvFilter syntax (`info`).
    pub log: String,
    /// Log format: `text` or `json`.
    pub log_format: String,
    /// SIP/PSTN gateway (`[sip]`, `[[sip.trunks]]`, `[[sip.numbers]]`).
    pub sip: SipConfig,
}

/// `[sip]`: the SIP/PSTN gateway. It starts when at least one trunk or number is configured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SipConfig {
    /// SIP port, UDP and TCP (5060).
    pub port: u16,
    /// SIP over TLS port (5061), with the server's certificate (`tls_cert`/`tls_key` or the self-signed one);
    /// 0 disables it.
    pub tls_port: u16,
    /// Address the SIP and RTP sockets bind to (`0.0.0.0`).
    pub bind: IpAddr,
    /// First port of the RTP/RTCP range (20000); RTP on even ports, RTCP on the next odd one.
    pub rtp_port_min: u16,
    /// Last port of the RTP/RTCP range (20999).
    pub rtp_port_max: u16,
    /// An answered call whose phone side sends no RTP for this long (seconds) is ended with BYE, as
    /// a phone that vanished without one would otherwise hold its dialog and port forever (120;
    /// 0 disables). Calls the phone put on hold (`sendonly`/`inactive`) are exempt.
    pub rtp_timeout_secs: u64,
    /// Trunks: carriers, PBXs, SBCs.
    pub trunks: Vec<crate::proto::sip::route::TrunkConfig>,
    /// Owned numbers and their routes.
    pub numbers: Vec<crate::proto::sip::route::NumberConfig>,
}

impl Default for SipConfig {
    fn default() -> Self {
        SipConfig {
            port: 5060,
            tls_port: 5061,
            bind: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            rtp_port_min: 20000,
            rtp_port_max: 20999,
            rtp_timeout_secs: 120,
            trunks: Vec::new(),
            numbers: Vec::new(),
        }
    }
}

impl SipConfig {
    /// Whether the gateway runs: something to route.
    pub fn enabled(&self) -> bool {
        !self.trunks.is_empty() || !self.numbers.is_empty()
    }

    /// Checks the section; trunks and numbers through [`crate::proto::sip::route::Router::new`].
    ///
    /// # Errors
    /// [`ConfigError`] naming the key (`sip.trunks[0].allow[1]`).
    pub fn validate(&self) -> Result<crate::proto::sip::route::Router, ConfigError> {
        if self.rtp_port_min < 1024 || self.rtp_port_min >= self.rtp_port_max {
            return Err(ConfigError(format!(
                "key `sip.rtp_port_min`: must be 1024..sip.rtp_port_max, got {}..{}",
                self.rtp_port_min, self.rtp_port_max
            )));
        }
        if self.rtp_port_max - self.rtp_port_min < 1 {
            return Err(ConfigError(
                "key `sip.rtp_port_max`: the range holds no port pair".into(),
            ));
        }
        crate::proto::sip::route::Router::new(&self.trunks, &self.numbers)
            .map_err(|e| ConfigError(e.to_string()))
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("./data"),
            https_port: 8443,
            http_port: 8080,
            media_port: 10000,
            media_workers: 0,
            public_host: None,
            public_ip: None,
            tls_cert: None,
            tls_key: None,
            ring_timeout: 60,
            demo: false,
            log: "info".into(),
            log_format: "text".into(),
            sip: SipConfig::default(),
        }
    }
}

/// Most media workers `media_workers` accepts.
pub const MAX_MEDIA_WORKERS: usize = 256;

/// A configuration problem, naming the key.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(pub String);

/// Values given on the command line; `None` leaves the key to the file, the environment or the default.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Overrides {
    /// `--data-dir`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
    /// `--https-port`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub https_port: Option<u16>,
    /// `--http-port`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_port: Option<u16>,
    /// `--media-port`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub media_port: Option<u16>,
    /// `--media-workers`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub media_workers: Option<usize>,
    /// `--public-host`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub public_host: Option<String>,
    /// `--public-ip`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub public_ip: Option<IpAddr>,
    /// `--tls-cert`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<PathBuf>,
    /// `--tls-key`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<PathBuf>,
    /// `--ring-timeout`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ring_timeout: Option<u64>,
    /// `--demo`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub demo: Option<bool>,
    /// `--log`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log: Option<String>,
    /// `--log-format`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_format: Option<String>,
    /// `--sip-port` (key `sip.port`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sip: Option<SipOverrides>,
}

/// Flags under `[sip]`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SipOverrides {
    /// `--sip-port`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
}

impl Config {
    /// Loads the configuration: `file` (or `./switchboard.toml` when it exists), the given environment variables
    /// (`SWITCHBOARD_*` keys), then `flags`; validates the result.
    ///
    /// # Errors
    /// [`ConfigError`] naming the key whose value is invalid, or the unreadable file.
    pub fn load(
        file: Option<&Path>,
        env: &[(String, String)],
        flags: &Overrides,
    ) -> Result<Config, ConfigError> {
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        match file {
            Some(f) if !f.exists() => {
                return Err(ConfigError(format!(
                    "config file {} does not exist",
                    f.display()
                )));
            }
            Some(f) => fig = fig.merge(Toml::file_exact(f)),
            None if Path::new("switchboard.toml").exists() => {
                fig = fig.merge(Toml::file_exact("switchboard.toml"))
            }
            None => {}
        }
        // Environment: a pure function of the pairs given, so tests need not touch the process environment.
        // Other programs' SWITCHBOARD_* variables (SWITCHBOARD_CONFIG, test tooling) are not config keys.
        let known = Config::keys();
        let mut env_toml = toml_table(env);
        // SWITCHBOARD_SIP_PORT, SWITCHBOARD_SIP_BIND, ... -> [sip] port, bind, ...
        let sip_keys = ["port", "tls_port", "bind", "rtp_port_min", "rtp_port_max"];
        let mut sip = toml::Table::new();
        for k in sip_keys {
            if let Some(v) = env_toml.remove(&format!("sip_{k}")) {
                sip.insert(k.to_string(), v);
            }
        }
        env_toml.retain(|k, _| k != "sip" && known.iter().any(|n| n == k));
        if !sip.is_empty() {
            env_toml.insert("sip".into(), toml::Value::Table(sip));
        }
        fig = fig.merge(Toml::string(&env_toml.to_string()));
        fig = fig.merge(Serialized::defaults(flags));
        let config: Config = fig.extract().map_err(|e| ConfigError(describe(&e)))?;
        config.validate()?;
        Ok(config)
    }

    /// Every key name (`https_port`, ...).
    pub fn keys() -> Vec<String> {
        let optional = ["public_host", "public_ip", "tls_cert", "tls_key"].map(String::from);
        match toml::Table::try_from(Config::default()) {
            Ok(t) => t.keys().cloned().chain(optional).collect(),
            Err(_) => Vec::new(),
        }
    }

    /// Checks values that parse but make no sense.
    ///
    /// # Errors
    /// [`ConfigError`] naming the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return Err(ConfigError(
                "keys `tls_cert` and `tls_key` must be given together".into(),
            ));
        }
        if self.ring_timeout == 0 || self.ring_timeout > 3600 {
            return Err(ConfigError(format!(
                "key `ring_timeout`: must be 1..=3600 seconds, got {}",
                self.ring_timeout
            )));
        }
        if self.https_port != 0 && self.https_port == self.http_port {
            return Err(ConfigError(
                "keys `https_port` and `http_port` must differ".into(),
            ));
        }
        if !matches!(self.log_format.as_str(), "text" | "json") {
            return Err(ConfigError(format!(
                "key `log_format`: must be \"text\" or \"json\", got {:?}",
                self.log_format
            )));
        }
        if self.media_workers > MAX_MEDIA_WORKERS {
            return Err(ConfigError(format!(
                "key `media_workers`: must be 0 (one per core) to {MAX_MEDIA_WORKERS}, got {}",
                self.media_workers
            )));
        }
        if self.media_port != 0
            && usize::from(self.media_port) + self.media_workers.max(1) - 1 > usize::from(u16::MAX)
        {
            return Err(ConfigError(format!(
                "keys `media_port` and `media_workers`: ports {}..{} do not fit below 65536",
                self.media_port,
                usize::from(self.media_port) + self.media_workers
            )));
        }
        self.sip.validate()?;
        if let Some(h) = &self.public_host
            && (h.is_empty() || h.contains('/') || h.contains(' '))
        {
            return Err(ConfigError(format!(
                "key `public_host`: not a host name: {h:?}"
            )));
        }
        Ok(())
    }

    /// The host clients use: `public_host`, else `public_ip`, else 127.0.0.1.
    pub fn endpoint_host(&self) -> String {
        self.public_host
            .clone()
            .or_else(|| self.public_ip.map(|ip| ip.to_string()))
            .unwrap_or_else(|| "127.0.0.1".into())
    }
}

/// `SWITCHBOARD_HTTPS_PORT=8443` -> `https_port = 8443` (values parsed as TOML values when they are valid ones,
/// else kept as strings), so types are checked by the same deserializer as the file.
fn toml_table(env: &[(String, String)]) -> toml::Table {
    let mut t = toml::Table::new();
    for (k, v) in env {
        let Some(key) = k.strip_prefix("SWITCHBOARD_") else {
            continue;
        };
        let key = key.to_ascii_lowercase();
        let value = format!("v = {v}")
            .parse::<toml::Table>()
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or_else(|| toml::Value::String(v.clone()));
        t.insert(key, value);
    }
    t
}

/// Figment's error, with the key and source it came from.
fn describe(e: &figment::Error) -> String {
    let mut out = Vec::new();
    for err in e.clone() {
        let key = if err.path.is_empty() {
            "?".to_string()
        } else {
            err.path.join(".")
        };
        let source = match err.metadata.as_ref().map(|m| m.name.to_string()) {
            Some(n) if n == "TOML source string" => format!(
                "environment variable SWITCHBOARD_{}",
                key.replace('.', "_").to_ascii_uppercase()
            ),
            Some(n) => n,
            None => String::new(),
        };
        out.push(format!("key `{key}` ({source}): {}", err.kind));
    }
    out.join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults() {
        let c = Config::load(None, &[], &Overrides::default()).unwrap();
        assert_eq!(c.https_port, 8443);
        assert_eq!(c.http_port, 8080);
        assert_eq!(c.media_port, 10000);
        assert_eq!(c.media_workers, 0);
        assert_eq!(c.ring_timeout, 60);
    }

    #[test]
    fn media_workers_from_env_and_flags_and_their_port_range() {
        let e = env(&[("SWITCHBOARD_MEDIA_WORKERS", "3")]);
        let c = Config::load(None, &e, &Overrides::default()).unwrap();
        assert_eq!(c.media_workers, 3);
        let flags = Overrides {
            media_workers: Some(1),
            ..Default::default()
        };
        assert_eq!(Config::load(None, &e, &flags).unwrap().media_workers, 1);
        let too_many = Overrides {
            media_workers: Some(MAX_MEDIA_WORKERS + 1),
            ..Default::default()
        };
        let err = Config::load(None, &[], &too_many).unwrap_err();
        assert!(err.to_string().contains("media_workers"), "{err}");
        let past_the_last_port = Overrides {
            media_port: Some(65534),
            media_workers: Some(3),
            ..Default::default()
        };
        let err = Config::load(None, &[], &past_the_last_port).unwrap_err();
        assert!(err.to_string().contains("media_port"), "{err}");
        let fits = Overrides {
            media_port: Some(65534),
            media_workers: Some(2),
            ..Default::default()
        };
        assert!(Config::load(None, &[], &fits).is_ok());
    }

    #[test]
    fn env_then_flags() {
        let e = env(&[
            ("SWITCHBOARD_HTTPS_PORT", "9443"),
            ("SWITCHBOARD_PUBLIC_HOST", "calls.example.org"),
            ("SWITCHBOARD_BIN", "/usr/bin/x"),
            ("PATH", "/bin"),
        ]);
        let c = Config::load(None, &e, &Overrides::default()).unwrap();
        assert_eq!(c.https_port, 9443);
        assert_eq!(c.public_host.as_deref(), Some("calls.example.org"));
        let flags = Overrides {
            https_port: Some(7443),
            ..Default::default()
        };
        assert_eq!(Config::load(None, &e, &flags).unwrap().https_port, 7443);
    }

    #[test]
    fn invalid_value_names_the_key() {
        let err = Config::load(
            None,
            &env(&[("SWITCHBOARD_HTTPS_PORT", "lots")]),
            &Overrides::default(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("https_port"), "{err}");
        let err = Config::load(
            None,
            &env(&[("SWITCHBOARD_RING_TIMEOUT", "0")]),
            &Overrides::default(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("ring_timeout"), "{err}");
        let err = Config::load(
            None,
            &env(&[("SWITCHBOARD_PUBLIC_IP", "not-an-ip")]),
            &Overrides::default(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("public_ip"), "{err}");
    }

    #[test]
    fn sip_section_from_file_env_and_flags() {
        let dir = std::env::temp_dir().join(format!("sbcfg-sip-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("s.toml");
        std::fs::write(
            &f,
            r#"
[sip]
port = 5070
[[sip.trunks]]
name = "carrier"
address = "192.0.2.10:5060"
allow = ["192.0.2.0/24", "127.0.0.1"]
codecs = ["PCMA", "PCMU"]
prefixes = ["+1"]
[[sip.numbers]]
number = "+15550100"
echo = true
"#,
        )
        .unwrap();
        let c = Config::load(Some(&f), &[], &Overrides::default()).unwrap();
        assert_eq!(c.sip.port, 5070);
        assert!(c.sip.enabled());
        assert_eq!(
            c.sip.trunks[0].codecs[0],
            crate::proto::sip::sdp::G711::Pcma
        );
        let c = Config::load(
            Some(&f),
            &env(&[("SWITCHBOARD_SIP_PORT", "5080")]),
            &Overrides::default(),
        )
        .unwrap();
        assert_eq!(
            (c.sip.port, c.sip.trunks.len()),
            (5080, 1),
            "env keeps the file's trunks"
        );
        let flags = Overrides {
            sip: Some(SipOverrides { port: Some(5090) }),
            ..Default::default()
        };
        assert_eq!(
            Config::load(Some(&f), &env(&[("SWITCHBOARD_SIP_PORT", "5080")]), &flags)
                .unwrap()
                .sip
                .port,
            5090
        );
        assert!(!Config::default().sip.enabled());
    }

    #[test]
    fn invalid_sip_config_names_the_key() {
        let dir = std::env::temp_dir().join(format!("sbcfg-sipbad-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("s.toml");
        for (toml, key) in [
            (
                "[[sip.trunks]]\nname = \"t\"\naddress = \"x\"\nallow = [\"300.1.1.1\"]\n",
                "sip.trunks[0].allow[0]",
            ),
            (
                "[[sip.numbers]]\nnumber = \"5550100\"\necho = true\n",
                "sip.numbers[0].number",
            ),
            (
                "[[sip.numbers]]\nnumber = \"+15550100\"\n",
                "sip.numbers[0].user",
            ),
            (
                "[[sip.trunks]]\nname = \"t\"\naddress = \"x\"\ncodecs = [\"G729\"]\n",
                "sip.trunks",
            ),
            (
                "[[sip.trunks]]\nname = \"t\"\naddress = \"x\"\ncolour = 1\n",
                "colour",
            ),
            (
                "[sip]\nrtp_port_min = 30000\nrtp_port_max = 20000\n",
                "sip.rtp_port_min",
            ),
        ] {
            std::fs::write(&f, toml).unwrap();
            let err = Config::load(Some(&f), &[], &Overrides::default()).unwrap_err();
            assert!(err.to_string().contains(key), "{toml}: {err}");
        }
    }

    #[test]
    fn sample_config_is_the_defaults() {
        let f = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/switchboard.sample.toml");
        let c = Config::load(Some(&f), &[], &Overrides::default()).unwrap();
        assert_eq!(c, Config::default());
    }

    #[test]
    fn file_values_and_unknown_keys() {
        let dir = std::env::temp_dir().join(format!("sbcfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("s.toml");
        std::fs::write(&f, "media_port = 12000\nring_timeout = 30\n").unwrap();
        let c = Config::load(Some(&f), &[], &Overrides::default()).unwrap();
        assert_eq!((c.media_port, c.ring_timeout), (12000, 30));
        std::fs::write(&f, "media_prot = 12000\n").unwrap();
        let err = Config::load(Some(&f), &[], &Overrides::default()).unwrap_err();
        assert!(err.to_string().contains("media_prot"), "{err}");
    }
}
