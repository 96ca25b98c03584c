//! Process CPU time and memory from Linux `/proc`: `/proc/PID/stat` (utime + stime, clock ticks) and
//! `/proc/PID/status` (VmRSS, VmHWM).

use std::path::PathBuf;

/// Why a `/proc` file could not be read or parsed.
#[derive(Debug, thiserror::Error)]
pub enum ProcError {
    /// The file could not be read (process gone, not Linux).
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file did not have the expected shape.
    #[error("unexpected format of {0}")]
    Format(&'static str),
}

/// CPU time a process used, in clock ticks (`utime`, `stime` of `/proc/PID/stat`, fields 14 and 15).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CpuTicks {
    /// User-mode ticks.
    pub utime: u64,
    /// Kernel-mode ticks.
    pub stime: u64,
}

impl CpuTicks {
    /// User + kernel ticks.
    pub fn total(&self) -> u64 {
        self.utime + self.stime
    }
}

/// Parses the text of `/proc/PID/stat`. The command name (field 2) is in parentheses and may itself contain spaces
/// and parentheses, so fields are counted from the last `)`.
pub fn parse_stat(text: &str) -> Result<CpuTicks, ProcError> {
    let after = text
        .rfind(')')
        .map(|i| &text[i + 1..])
        .ok_or(ProcError::Format("/proc/PID/stat"))?;
    // After the name: field 3 (state) is index 0, so utime (14) is index 11 and stime (15) index 12.
    let fields: Vec<&str> = after.split_whitespace().collect();
    let field = |i: usize| -> Result<u64, ProcError> {
        fields
            .get(i)
            .and_then(|f| f.parse().ok())
            .ok_or(ProcError::Format("/proc/PID/stat"))
    };
    Ok(CpuTicks {
        utime: field(11)?,
        stime: field(12)?,
    })
}

/// Parses a `kB` line such as `VmRSS: 123456 kB` of `/proc/PID/status`; `None` when the key is missing.
pub fn parse_status_kib(text: &str, key: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

fn read(path: PathBuf) -> Result<String, ProcError> {
    std::fs::read_to_string(&path).map_err(|source| ProcError::Read { path, source })
}

/// `pid`'s CPU ticks so far (`None` reads this process).
pub fn cpu_ticks(pid: Option<u32>) -> Result<CpuTicks, ProcError> {
    parse_stat(&read(proc_path(pid, "stat"))?)
}

/// `pid`'s resident set (VmRSS) and its peak (VmHWM), KiB.
pub fn memory_kib(pid: Option<u32>) -> Result<(u64, u64), ProcError> {
    let text = read(proc_path(pid, "status"))?;
    let rss = parse_status_kib(&text, "VmRSS").ok_or(ProcError::Format("/proc/PID/status"))?;
    let hwm = parse_status_kib(&text, "VmHWM").unwrap_or(rss);
    Ok((rss, hwm))
}

fn proc_path(pid: Option<u32>, file: &str) -> PathBuf {
    match pid {
        Some(pid) => PathBuf::from(format!("/proc/{pid}/{file}")),
        None => PathBuf::from(format!("/proc/self/{file}")),
    }
}

/// Clock ticks per second (`getconf CLK_TCK`; 100 on Linux unless the kernel says otherwise).
pub fn ticks_per_second() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .filter(|&t| t > 0)
        .unwrap_or(100)
}

/// Sums the `drops` column (datagrams the kernel discarded because the socket's receive buffer was full) of the
/// lines of `/proc/net/udp` or `/proc/net/udp6` text whose socket inode is in `inodes`.
pub fn parse_udp_drops(text: &str, inodes: &std::collections::HashSet<u64>) -> u64 {
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            // sl local rem st tx:rx tr:when retrnsmt uid timeout inode ref pointer drops
            let inode: u64 = f.get(9)?.parse().ok()?;
            let drops: u64 = f.get(12)?.parse().ok()?;
            inodes.contains(&inode).then_some(drops)
        })
        .sum()
}

/// Socket inodes of `pid`'s open files (`None`: this process), from the `socket:[N]` links in `/proc/PID/fd`.
fn socket_inodes(pid: Option<u32>) -> std::collections::HashSet<u64> {
    let dir = proc_path(pid, "fd");
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Default::default();
    };
    entries
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|t| {
            let t = t
                .to_str()?
                .strip_prefix("socket:[")?
                .strip_suffix(']')?
                .to_string();
            t.parse().ok()
        })
        .collect()
}

/// Datagrams dropped so far on `pid`'s UDP sockets for want of receive-buffer space (`None` for an unreadable
/// process).
pub fn udp_drops(pid: Option<u32>) -> Option<u64> {
    let inodes = socket_inodes(pid);
    if inodes.is_empty() {
        return None;
    }
    let mut total = 0;
    for file in ["/proc/net/udp", "/proc/net/udp6"] {
        if let Ok(text) = std::fs::read_to_string(file) {
            total += parse_udp_drops(&text, &inodes);
        }
    }
    Some(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_name() {
        let text = "4242 (switch board) (x)) S 1 4242 4242 0 -1 4194560 1200 0 3 0 1234 567 0 0 20 0 9 0 \
                    100 200000 3000 18446744073709551615 1 1 0 0 0 0 0 4096 0 0 0 0 17 1 0 0 0 0 0\n";
        assert_eq!(
            parse_stat(text).unwrap(),
            CpuTicks {
                utime: 1234,
                stime: 567
            }
        );
        assert_eq!(parse_stat(text).unwrap().total(), 1801);
    }

    #[test]
    fn short_or_nameless_stat_is_an_error() {
        assert!(parse_stat("4242 S 1 2 3").is_err());
        assert!(parse_stat("4242 (x) S 1 2").is_err());
    }

    #[test]
    fn status_lines_give_kib() {
        let text = "Name:\tswitchboard\nVmHWM:\t  204800 kB\nVmRSS:\t  102400 kB\nThreads:\t5\n";
        assert_eq!(parse_status_kib(text, "VmRSS"), Some(102_400));
        assert_eq!(parse_status_kib(text, "VmHWM"), Some(204_800));
        assert_eq!(parse_status_kib(text, "VmSwap"), None);
    }

    #[test]
    fn udp_drops_are_summed_for_the_given_sockets() {
        let text = "   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops\n\
                    1402: 0100007F:CA26 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 870637 2 00000000e87b7c83 12\n\
                    1403: 0100007F:CA27 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 870638 2 00000000e87b7c84 5\n\
                    1404: 0100007F:CA28 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 999 2 00000000e87b7c85 100\n";
        let inodes = [870637, 870638].into_iter().collect();
        assert_eq!(parse_udp_drops(text, &inodes), 17);
        assert_eq!(parse_udp_drops(text, &Default::default()), 0);
    }

    #[test]
    fn this_process_can_be_read() {
        cpu_ticks(None).unwrap();
        let (rss, hwm) = memory_kib(None).unwrap();
        assert!(rss > 0 && hwm >= rss);
    }
}
