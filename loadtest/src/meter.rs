//! CPU and memory sampling of the server and of this process over a measurement window.

use std::time::Instant;

use crate::procstat::{self, CpuTicks};
use crate::report::ProcessReport;

/// A CPU reading of one process at one instant.
#[derive(Debug, Clone, Copy)]
pub struct CpuMark {
    pid: Option<u32>,
    ticks: Option<CpuTicks>,
    udp_drops: Option<u64>,
    at: Instant,
}

/// Bytes in a MiB.
const MIB: f64 = 1024.0 * 1024.0;

impl CpuMark {
    /// Reads `pid` (`None`: this process) now. A process that cannot be read gives a mark without ticks.
    pub fn now(pid: Option<u32>) -> CpuMark {
        CpuMark {
            pid,
            ticks: procstat::cpu_ticks(pid).ok(),
            udp_drops: None,
            at: Instant::now(),
        }
    }

    /// Like [`CpuMark::now`], also reading the UDP receive drops of the process's sockets (a scan of its fds).
    pub fn with_udp(pid: Option<u32>) -> CpuMark {
        CpuMark {
            udp_drops: procstat::udp_drops(pid),
            ..CpuMark::now(pid)
        }
    }

    /// CPU seconds and percent of one core from this mark to `later`.
    pub fn since(&self, later: &CpuMark, ticks_per_s: u64) -> (Option<f64>, Option<f64>) {
        let (Some(a), Some(b)) = (self.ticks, later.ticks) else {
            return (None, None);
        };
        let cpu_s = b.total().saturating_sub(a.total()) as f64 / ticks_per_s as f64;
        let wall = later.at.duration_since(self.at).as_secs_f64();
        (Some(cpu_s), (wall > 0.0).then(|| 100.0 * cpu_s / wall))
    }

    /// The process report from this mark to `later`, with memory read now.
    pub fn report(&self, later: &CpuMark, ticks_per_s: u64) -> ProcessReport {
        let (cpu_s, cpu_percent) = self.since(later, ticks_per_s);
        let mem = procstat::memory_kib(self.pid).ok();
        ProcessReport {
            pid: Some(self.pid.unwrap_or_else(std::process::id)),
            cpu_s,
            cpu_percent,
            rss_mib: mem.map(|m| m.0 as f64 * 1024.0 / MIB),
            peak_rss_mib: mem.map(|m| m.1 as f64 * 1024.0 / MIB),
            udp_receive_drops: match (self.udp_drops, later.udp_drops) {
                (Some(a), Some(b)) => Some(b.saturating_sub(a)),
                _ => None,
            },
        }
    }
}

/// Resident set of `pid` (`None`: this process), bytes.
pub fn rss_bytes(pid: Option<u32>) -> Option<f64> {
    procstat::memory_kib(pid).ok().map(|m| m.0 as f64 * 1024.0)
}
