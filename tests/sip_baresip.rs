//! A real phone: baresip (Debian) calls the echo line, sends a 3 s test signal from a WAV file (aufile) and records
//! what it hears (sndfile). The recording must carry the signal back: speech-band energy comparable to what was
//! sent. baresip is required (`scripts/test` installs it); `SWITCHBOARD_SKIP_SIPP=1` skips, like the sipp tests.

mod common;
mod sip_support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use sip_support::*;

/// One baresip at a time: the assertions read process-wide counters.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn write_wav(path: &Path, samples: &[i16]) {
    let mut b = Vec::new();
    let data_len = (samples.len() * 2) as u32;
    b.extend_from_slice(b"RIFF");
    b.extend_from_slice(&(36 + data_len).to_le_bytes());
    b.extend_from_slice(b"WAVEfmt ");
    b.extend_from_slice(&16u32.to_le_bytes());
    b.extend_from_slice(&1u16.to_le_bytes()); // PCM
    b.extend_from_slice(&1u16.to_le_bytes()); // mono
    b.extend_from_slice(&8000u32.to_le_bytes());
    b.extend_from_slice(&16000u32.to_le_bytes());
    b.extend_from_slice(&2u16.to_le_bytes());
    b.extend_from_slice(&16u16.to_le_bytes());
    b.extend_from_slice(b"data");
    b.extend_from_slice(&data_len.to_le_bytes());
    for s in samples {
        b.extend_from_slice(&s.to_le_bytes());
    }
    std::fs::write(path, b).unwrap();
}

/// Samples of a 16-bit PCM WAV (the `data` chunk).
fn read_wav(path: &Path) -> Vec<i16> {
    let b = std::fs::read(path).unwrap();
    let mut off = 12;
    while off + 8 <= b.len() {
        let len = u32::from_le_bytes(b[off + 4..off + 8].try_into().unwrap()) as usize;
        if &b[off..off + 4] == b"data" {
            let end = (off + 8 + len).min(b.len());
            return b[off + 8..end]
                .chunks_exact(2)
                .map(|c| i16::from_le_bytes([c[0], c[1]]))
                .collect();
        }
        off += 8 + len + (len & 1);
    }
    Vec::new()
}

/// A port below the ephemeral range (busy hosts have most ephemeral TCP ports taken) with it and the next one free
/// for TCP and UDP: baresip listens on SIP UDP+TCP at the port and SIP/TLS on the next one.
fn free_low_port(salt: u16) -> u16 {
    let start = 20_000 + (std::process::id() as u16 % 500) * 20 + salt * 4;
    (start..32_000)
        .step_by(3)
        .find(|p| {
            (0..2).all(|i| {
                std::net::TcpListener::bind(("127.0.0.1", p + i)).is_ok()
                    && std::net::UdpSocket::bind(("127.0.0.1", p + i)).is_ok()
            })
        })
        .expect("a free port pair below 32000")
}

fn rms(x: &[i16]) -> f64 {
    if x.is_empty() {
        return 0.0;
    }
    (x.iter().map(|s| f64::from(*s).powi(2)).sum::<f64>() / x.len() as f64).sqrt() / 32768.0
}

#[tokio::test]
async fn baresip_hears_its_own_signal_from_the_echo_line() {
    let have = Command::new("sh")
        .args(["-c", "command -v baresip"])
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !have {
        if std::env::var("SWITCHBOARD_SKIP_SIPP").as_deref() == Ok("1") {
            return;
        }
        panic!("baresip is needed (apt-get install baresip); SWITCHBOARD_SKIP_SIPP=1 skips");
    }
    let _g = SERIAL.lock().await;
    let s = sip_server(44000).await;
    let (udp, _) = sip_addrs(&s);
    let dir = std::env::temp_dir().join(format!("sb-baresip-{}", std::process::id()));
    let out = dir.join("out");
    std::fs::create_dir_all(&out).unwrap();
    // 3 s of a speech-band signal: 300-3000 Hz partials with a 4 Hz syllable-like envelope.
    let signal: Vec<i16> = (0..24_000)
        .map(|i| {
            let t = i as f64 / 8000.0;
            let env = 0.5 + 0.5 * (2.0 * std::f64::consts::PI * 4.0 * t).sin();
            let v: f64 = [300.0, 700.0, 1200.0, 2500.0]
                .iter()
                .map(|f| (2.0 * std::f64::consts::PI * f * t).sin())
                .sum::<f64>()
                / 4.0;
            (0.5 * env * v * 32767.0) as i16
        })
        .collect();
    let wav = dir.join("signal.wav");
    write_wav(&wav, &signal);
    let sip_port = free_low_port(0);
    let config = format!(
        "poll_method\tepoll\nsip_listen\t127.0.0.1:{sip_port}\nsip_transports\tudp\ncall_local_timeout\t120\ncall_max_calls\t4\n\
         audio_player\taubridge,nil\naudio_source\taufile,{wav}\naudio_alert\taubridge,nil\nausrc_srate\t8000\nausrc_channels\t1\n\
         rtp_ports\t44500-44600\nnet_interface\t127.0.0.1\nmodule_path\t/usr/lib/baresip/modules\nmodule\tg711.so\nmodule\taufile.so\n\
         module\taubridge.so\nmodule\tsndfile.so\nmodule_tmp\taccount.so\nmodule_app\tmenu.so\nsnd_path\t{out}\n",
        wav = wav.display(),
        out = out.display()
    );
    std::fs::write(dir.join("config"), config).unwrap();
    std::fs::write(
        dir.join("accounts"),
        format!(
            "<sip:+15550999@127.0.0.1:{sip_port};transport=udp>;regint=0;audio_codecs=PCMU,PCMA\n"
        ),
    )
    .unwrap();
    std::fs::write(dir.join("contacts"), "").unwrap();
    let mut cmd = tokio::process::Command::new("baresip");
    cmd.arg("-f")
        .arg(&dir)
        .args(["-e", &format!("/dial sip:{ECHO}@{udp}"), "-t", "8"]);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    let run = tokio::time::timeout(Duration::from_secs(30), cmd.output())
        .await
        .expect("baresip ends")
        .expect("baresip runs");
    let log = String::from_utf8_lossy(&run.stdout).to_string();
    assert!(log.contains("Call established"), "{log}");
    let heard = std::fs::read_dir(&out)
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.to_string_lossy().ends_with("-dec.wav"))
        .unwrap_or_else(|| panic!("no recording of what baresip heard: {log}"));
    let heard = read_wav(&heard);
    let (sent_rms, heard_rms) = (rms(&signal), rms(&heard));
    eprintln!(
        "baresip: sent RMS {sent_rms:.4}, heard RMS {heard_rms:.4} over {} samples",
        heard.len()
    );
    assert!(
        heard.len() >= 16_000,
        "at least 2 s heard, got {} samples",
        heard.len()
    );
    assert!(
        heard_rms > 0.5 * sent_rms,
        "echo energy {heard_rms:.4} vs sent {sent_rms:.4}"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        s.running.sip.as_ref().unwrap().ports.in_use(),
        0,
        "baresip hung up: ports released"
    );
    let _ = std::fs::remove_dir_all(&dir);
    s.running.shutdown().await;
}

/// Sends one command to baresip's ctrl_tcp module (netstring-framed JSON).
async fn ctrl(port: u16, command: &str) {
    use tokio::io::AsyncWriteExt;
    let body = format!(r#"{{"command":"{command}","params":"","token":"t"}}"#);
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("baresip ctrl_tcp");
    s.write_all(format!("{}:{body},", body.len()).as_bytes())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
}

#[tokio::test]
async fn baresip_hold_and_resume_keep_the_call() {
    let have = Command::new("sh")
        .args(["-c", "command -v baresip"])
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !have {
        if std::env::var("SWITCHBOARD_SKIP_SIPP").as_deref() == Ok("1") {
            return;
        }
        panic!("baresip is needed (apt-get install baresip); SWITCHBOARD_SKIP_SIPP=1 skips");
    }
    let _g = SERIAL.lock().await;
    let s = sip_server(44200).await;
    let (udp, _) = sip_addrs(&s);
    let invites = |s| async move {
        counter(s, "switchboard_sip_requests_total", &["method=\"INVITE\""]).await
    };
    let before = invites(&s).await;
    let dir = std::env::temp_dir().join(format!("sb-baresip-hold-{}", std::process::id()));
    let out = dir.join("out");
    std::fs::create_dir_all(&out).unwrap();
    // 8 s of a steady 1 kHz tone.
    let signal: Vec<i16> = (0..64_000)
        .map(|i| (8000.0 * (2.0 * std::f64::consts::PI * 1000.0 * i as f64 / 8000.0).sin()) as i16)
        .collect();
    let wav = dir.join("tone.wav");
    write_wav(&wav, &signal);
    let sip_port = free_low_port(1);
    let ctrl_port = free_low_port(40);
    let config = format!(
        "poll_method\tepoll\nsip_listen\t127.0.0.1:{sip_port}\nsip_transports\tudp\ncall_local_timeout\t120\ncall_max_calls\t4\n\
         audio_player\taubridge,nil\naudio_source\taufile,{wav}\naudio_alert\taubridge,nil\nausrc_srate\t8000\nausrc_channels\t1\n\
         rtp_ports\t44700-44800\nnet_interface\t127.0.0.1\nmodule_path\t/usr/lib/baresip/modules\nmodule\tg711.so\nmodule\taufile.so\n\
         module\taubridge.so\nmodule\tsndfile.so\nmodule_tmp\taccount.so\nmodule_app\tmenu.so\nmodule_app\tctrl_tcp.so\n\
         ctrl_tcp_listen\t127.0.0.1:{ctrl_port}\nsnd_path\t{out}\n",
        wav = wav.display(),
        out = out.display()
    );
    std::fs::write(dir.join("config"), config).unwrap();
    std::fs::write(
        dir.join("accounts"),
        format!("<sip:+15550999@127.0.0.1:{sip_port};transport=udp>;regint=0;audio_codecs=PCMU\n"),
    )
    .unwrap();
    std::fs::write(dir.join("contacts"), "").unwrap();
    let mut cmd = tokio::process::Command::new("baresip");
    cmd.arg("-f")
        .arg(&dir)
        .args(["-e", &format!("/dial sip:{ECHO}@{udp}"), "-t", "12"]);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    let child = cmd.spawn().expect("baresip runs");
    let sent = |s| async move {
        counter(
            s,
            "switchboard_sip_rtp_packets_total",
            &["direction=\"sent\""],
        )
        .await
    };
    let base = sent(&s).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let before_hold = sent(&s).await - base;
    ctrl(ctrl_port, "hold").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let hold_start = sent(&s).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let on_hold = sent(&s).await - hold_start;
    ctrl(ctrl_port, "resume").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let resumed = sent(&s).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let after_resume = sent(&s).await - resumed;
    eprintln!(
        "baresip hold/resume: echoed {before_hold} before hold, {on_hold} in 1.5 s on hold, {after_resume} in 1.5 s after resume"
    );
    assert!(before_hold >= 50.0, "echo before hold: {before_hold}");
    assert_eq!(on_hold, 0.0, "no echo while on hold (answered recvonly)");
    assert!(
        after_resume >= 50.0,
        "echo restored after resume: {after_resume}"
    );
    let run = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .expect("baresip ends")
        .unwrap();
    let log = String::from_utf8_lossy(&run.stdout).to_string();
    assert_eq!(
        log.matches("Call established").count(),
        1,
        "one call, kept through hold/resume: {log}"
    );
    assert_eq!(
        invites(&s).await - before,
        3.0,
        "INVITE, hold re-INVITE, resume re-INVITE: {log}"
    );
    // What baresip heard (its decoder's recording) is the echoed tone.
    let heard = std::fs::read_dir(&out)
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.to_string_lossy().ends_with("-dec.wav"))
        .map(|f| read_wav(&f))
        .unwrap_or_default();
    assert!(
        heard.len() >= 8000 && rms(&heard) > 0.1,
        "baresip heard the echo: {} samples, RMS {}",
        heard.len(),
        rms(&heard)
    );
    let _ = std::fs::remove_dir_all(&dir);
    s.running.shutdown().await;
}
