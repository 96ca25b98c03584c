//! The binary as an operator runs it: first start, connection string, `keys show/rotate`, exit code 64 on invalid
//! configuration, clean exit on SIGTERM.

use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_switchboard");

fn free_tcp() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn tmp(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("sb-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

#[test]
fn serve_writes_connection_string_and_stops_on_sigterm() {
    let dir = tmp("serve");
    let (http, https) = (free_tcp(), free_tcp());
    let mut child = Command::new(BIN)
        .args([
            "serve",
            "--data-dir",
            dir.to_str().unwrap(),
            "--http-port",
            &http.to_string(),
            "--https-port",
            &https.to_string(),
        ])
        // Port 0: every media worker picks a free port (worker i would need media port + i free too).
        .args(["--media-port", "0", "--public-host", "calls.example.org"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let cs_path = dir.join("connection-string.txt");
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", http)).is_err() {
        assert!(Instant::now() < deadline, "server did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    let cs = std::fs::read_to_string(&cs_path).unwrap();
    assert!(
        cs.starts_with(&format!(
            "endpoint=https://calls.example.org:{https}/;accesskey="
        )),
        "{cs}"
    );
    let cert = std::fs::read_to_string(dir.join("tls/cert.pem")).unwrap();
    assert!(cert.contains("BEGIN CERTIFICATE"));

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    let code = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "no exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(code.success(), "exit status {code}");

    // `keys show` prints what the file holds; `keys rotate` replaces the key and rewrites the file.
    let shown = Command::new(BIN)
        .args(["keys", "show", "--data-dir", dir.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(shown.status.success());
    assert_eq!(String::from_utf8(shown.stdout).unwrap(), cs);
    let rotated = Command::new(BIN)
        .args(["keys", "rotate", "--data-dir", dir.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(rotated.status.success());
    let rotated = String::from_utf8(rotated.stdout).unwrap();
    assert_ne!(rotated, cs);
    assert!(rotated.starts_with(&format!(
        "endpoint=https://calls.example.org:{https}/;accesskey="
    )));
    assert_eq!(std::fs::read_to_string(&cs_path).unwrap(), rotated);
    let secondary = Command::new(BIN)
        .args([
            "keys",
            "rotate",
            "--key",
            "secondary",
            "--data-dir",
            dir.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(secondary.status.success());
    assert_eq!(
        std::fs::read_to_string(&cs_path).unwrap(),
        rotated,
        "rotating the secondary keeps the file's primary"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn invalid_configuration_exits_64_naming_the_key() {
    let dir = tmp("bad");
    let out = Command::new(BIN)
        .args(["serve", "--data-dir", dir.to_str().unwrap()])
        .env("SWITCHBOARD_MEDIA_PORT", "seventy")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("media_port"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let out = Command::new(BIN)
        .args(["serve", "--log-format", "xml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("log_format"));

    let out = Command::new(BIN)
        .args(["serve", "--https-port", "99999"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--https-port"));

    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("s.toml");
    std::fs::write(&file, "ring_timeout = \"soon\"\n").unwrap();
    let out = Command::new(BIN)
        .args(["serve", "--config", file.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("ring_timeout"));

    let out = Command::new(BIN)
        .args(["keys", "show", "--data-dir", "/nonexistent/sb"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("switchboard serve"));
    let _ = std::fs::remove_dir_all(&dir);
}
