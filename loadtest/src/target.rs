//! The server under load: one already running (`--server`, `--connection-string` or `--data-dir`, `--server-pid`),
//! or one this process starts (`--spawn-server PATH`) in a temporary data directory on free loopback ports.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use tracing::info;

/// How to reach the server and account for it.
pub struct Target {
    /// Plain-HTTP base URL (`http://127.0.0.1:PORT`), for the identity API, `/metrics` and the WebSocket.
    pub base: String,
    /// `host:port` as sent in the `Host` header (signed by the HMAC scheme).
    pub host: String,
    /// The deployment's access key (base64), from the connection string.
    pub access_key: String,
    /// The server's process id, for CPU and RSS; `None` when not known.
    pub pid: Option<u32>,
    /// The spawned server, killed on drop.
    child: Option<SpawnedServer>,
}

struct SpawnedServer {
    child: Child,
    _dir: tempfile::TempDir,
}

impl Drop for SpawnedServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The access key of a connection string `endpoint=...;accesskey=KEY`.
pub fn access_key_of(connection_string: &str) -> Result<String> {
    connection_string
        .trim()
        .split(';')
        .find_map(|part| {
            let (k, v) = part.split_once('=')?;
            k.trim()
                .eq_ignore_ascii_case("accesskey")
                .then(|| v.trim().to_string())
        })
        .filter(|k| !k.is_empty())
        .ok_or_else(|| anyhow!("connection string has no accesskey=..."))
}

fn host_of(base: &str) -> Result<String> {
    let rest = base.strip_prefix("http://").ok_or_else(|| {
        anyhow!("--server must be http://HOST:PORT (the plain-HTTP listener), got {base}")
    })?;
    let host = rest.trim_end_matches('/').to_string();
    if !is_loopback_host(&host) {
        bail!(
            "--server must be on this machine (127.0.0.0/8, [::1] or localhost): the load tester runs on loopback only, got {host}"
        );
    }
    Ok(host)
}

/// Whether `host` (`HOST:PORT`) names a loopback address.
fn is_loopback_host(host: &str) -> bool {
    let name = match host.rsplit_once(':') {
        Some((name, port)) if port.chars().all(|c| c.is_ascii_digit()) => name,
        _ => host,
    };
    let name = name.trim_start_matches('[').trim_end_matches(']');
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

impl Target {
    /// A running server at `base`; the key from `connection_string`, else from `data_dir/connection-string.txt`.
    pub fn existing(
        base: &str,
        connection_string: Option<&str>,
        data_dir: &Path,
        pid: Option<u32>,
    ) -> Result<Target> {
        let cs = match connection_string {
            Some(cs) => cs.to_string(),
            None => {
                let path = data_dir.join("connection-string.txt");
                std::fs::read_to_string(&path).with_context(|| {
                    format!(
                        "reading {} (pass --connection-string or --data-dir)",
                        path.display()
                    )
                })?
            }
        };
        let base = base.trim_end_matches('/').to_string();
        Ok(Target {
            host: host_of(&base)?,
            base,
            access_key: access_key_of(&cs)?,
            pid,
            child: None,
        })
    }

    /// A server that is not Switchboard (Janus, through its adapter): no identity API and no `/metrics`; only its
    /// process id, for CPU and RSS. `base` points at a closed port so metric scrapes fail at once.
    pub fn foreign(pid: Option<u32>) -> Target {
        Target {
            base: "http://127.0.0.1:9".into(),
            host: "127.0.0.1:9".into(),
            access_key: String::new(),
            pid,
            child: None,
        }
    }

    /// Starts `binary serve` in a new temporary data directory on free loopback ports and waits until it answers
    /// `/readyz` (at most 60 s). The server inherits this process's open-file limit. Its log goes to
    /// `server.log` in the data directory (kept while it runs).
    pub async fn spawn(binary: &Path, log_filter: &str) -> Result<Target> {
        let dir = tempfile::Builder::new()
            .prefix("sb-loadtest-")
            .tempdir()
            .context("creating a temporary data directory")?;
        let http_port = free_tcp_port()?;
        let https_port = free_tcp_port()?;
        let log = std::fs::File::create(dir.path().join("server.log"))?;
        let child = Command::new(binary)
            .arg("serve")
            .arg("--data-dir")
            .arg(dir.path())
            .args(["--http-port", &http_port.to_string()])
            .args(["--https-port", &https_port.to_string()])
            // Every media worker picks a free port (worker i would otherwise need media port + i free too).
            .args(["--media-port", "0"])
            .args(["--log", log_filter])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let pid = child.id();
        let mut spawned = SpawnedServer { child, _dir: dir };
        let base = format!("http://127.0.0.1:{http_port}");
        let cs_path: PathBuf = spawned._dir.path().join("connection-string.txt");
        let started = Instant::now();
        let http = reqwest::Client::new();
        loop {
            if let Some(status) = spawned.child.try_wait()? {
                let log = std::fs::read_to_string(spawned._dir.path().join("server.log"))
                    .unwrap_or_default();
                bail!("the server exited at start ({status}):\n{log}");
            }
            if cs_path.exists()
                && let Ok(r) = http.get(format!("{base}/readyz")).send().await
                && r.status().is_success()
            {
                break;
            }
            if started.elapsed() > Duration::from_secs(60) {
                bail!("the server did not become ready within 60 s");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let cs = std::fs::read_to_string(&cs_path)?;
        info!(pid, %base, data_dir = %spawned._dir.path().display(), "spawned server ready");
        Ok(Target {
            host: host_of(&base)?,
            base,
            access_key: access_key_of(&cs)?,
            pid: Some(pid),
            child: Some(spawned),
        })
    }

    /// The signaling WebSocket URL.
    pub fn ws_url(&self) -> String {
        format!(
            "{}/calling/v1/ws",
            self.base.replacen("http://", "ws://", 1)
        )
    }

    /// Whether this process started the server.
    pub fn spawned(&self) -> bool {
        self.child.is_some()
    }
}

fn free_tcp_port() -> Result<u16> {
    let l = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))?;
    Ok(l.local_addr()?.port())
}

/// Media-plane counters the server exports on `/metrics` (all media workers summed).
#[derive(Debug, Clone, Copy, Default)]
pub struct ServerMedia {
    /// Datagrams received on the media port(s).
    pub packets_in: f64,
    /// Datagrams sent.
    pub packets_out: f64,
    /// Bytes received.
    pub bytes_in: f64,
    /// Bytes sent.
    pub bytes_out: f64,
}

/// Sums a Prometheus counter over its label sets.
fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Parses the media counters out of a `/metrics` page.
pub fn parse_media_metrics(text: &str) -> ServerMedia {
    ServerMedia {
        packets_in: metric_sum(text, "switchboard_media_packets_in_total"),
        packets_out: metric_sum(text, "switchboard_media_packets_out_total"),
        bytes_in: metric_sum(text, "switchboard_media_bytes_in_total"),
        bytes_out: metric_sum(text, "switchboard_media_bytes_out_total"),
    }
}

/// Reads `/metrics`; `None` if the server does not answer.
pub async fn scrape_media(http: &reqwest::Client, base: &str) -> Option<ServerMedia> {
    let r = http.get(format!("{base}/metrics")).send().await.ok()?;
    let text = r.text().await.ok()?;
    Some(parse_media_metrics(&text))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_key_is_read_from_a_connection_string() {
        let cs = "endpoint=https://127.0.0.1:8443/;accesskey=abc+/=\n";
        assert_eq!(access_key_of(cs).unwrap(), "abc+/=");
        assert!(access_key_of("endpoint=https://x/").is_err());
    }

    #[test]
    fn only_loopback_servers_are_accepted() {
        assert_eq!(host_of("http://127.0.0.1:8080/").unwrap(), "127.0.0.1:8080");
        assert!(host_of("http://localhost:8080").is_ok());
        assert!(host_of("http://[::1]:8080").is_ok());
        assert!(host_of("http://10.0.0.5:8080").is_err());
        assert!(host_of("http://example.com:8080").is_err());
        assert!(host_of("https://127.0.0.1:8443").is_err());
    }

    #[test]
    fn media_counters_are_summed_over_workers() {
        let text = "# TYPE switchboard_media_packets_in_total counter\n\
                    switchboard_media_packets_in_total{worker=\"0\"} 10\n\
                    switchboard_media_packets_in_total{worker=\"1\"} 5\n\
                    switchboard_media_packets_out_total{worker=\"0\"} 300\n\
                    switchboard_media_packets_out_totalx 7\n";
        let m = parse_media_metrics(text);
        assert_eq!(m.packets_in, 15.0);
        assert_eq!(m.packets_out, 300.0);
        assert_eq!(m.bytes_in, 0.0);
    }
}
