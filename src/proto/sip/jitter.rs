//! A small jitter buffer for the SIP leg: packets come out in sequence order, a gap is waited for at most `depth`
//! before being skipped, duplicates and packets older than what was already played are dropped. Sans-IO: `now` is
//! an argument.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Packets kept at most; beyond this the oldest are released regardless of gaps.
pub const MAX_PACKETS: usize = 64;
/// A packet this far behind what was played is not late but a restarted sequence (RFC 3550 §A.1 MAX_MISORDER).
pub const MAX_MISORDER: u64 = 100;
/// A forward jump this large restarts the sequence too (RFC 3550 §A.1 MAX_DROPOUT).
pub const MAX_DROPOUT: u64 = 3000;

/// Reordering buffer keyed by extended (32-bit, wrap-aware) sequence number.
#[derive(Debug)]
pub struct JitterBuffer<T> {
    depth: Duration,
    packets: BTreeMap<u64, (Instant, T)>,
    /// Extended sequence number expected next.
    next: Option<u64>,
    /// Highest extended sequence number seen (to extend the next 16-bit one).
    highest: Option<u64>,
    /// Packets dropped as late or duplicate.
    pub dropped: u64,
}

impl<T> JitterBuffer<T> {
    /// A buffer that waits up to `depth` for a missing packet.
    pub fn new(depth: Duration) -> Self {
        JitterBuffer {
            depth,
            packets: BTreeMap::new(),
            next: None,
            highest: None,
            dropped: 0,
        }
    }

    fn extend(&self, seq: u16) -> u64 {
        let Some(h) = self.highest else {
            return u64::from(seq) + (1 << 16);
        };
        // Pick the candidate (this, previous or next 16-bit cycle) nearest the highest seen.
        let cycle = h & !0xffff;
        [cycle.wrapping_sub(1 << 16), cycle, cycle + (1 << 16)]
            .into_iter()
            .map(|c| c | u64::from(seq))
            .min_by_key(|c| c.abs_diff(h))
            .unwrap_or(cycle | u64::from(seq))
    }

    /// Adds a packet received at `now`.
    pub fn push(&mut self, now: Instant, seq: u16, item: T) {
        let ext = self.extend(seq);
        let restart = self
            .next
            .is_some_and(|n| ext + MAX_MISORDER < n || ext > n + MAX_DROPOUT);
        if restart {
            // The sender restarted its sequence (or a replayed stream): start over from this packet.
            self.packets.clear();
            self.next = None;
            self.highest = None;
            let ext = self.extend(seq);
            self.highest = Some(ext);
            self.next = Some(ext);
            self.packets.insert(ext, (now, item));
            return;
        }
        if self.next.is_some_and(|n| ext < n) || self.packets.contains_key(&ext) {
            self.dropped += 1;
            return;
        }
        self.highest = Some(self.highest.map_or(ext, |h| h.max(ext)));
        if self.next.is_none() {
            self.next = Some(ext);
        }
        self.packets.insert(ext, (now, item));
    }

    /// The next packet to play at `now`, if any: the expected one, or after a gap older than the depth (or a
    /// full buffer) the first one after the gap.
    pub fn pop(&mut self, now: Instant) -> Option<(u16, T)> {
        let (&first, &(arrived, _)) = self.packets.iter().next()?;
        let next = self.next.unwrap_or(first);
        if first != next
            && now.saturating_duration_since(arrived) < self.depth
            && self.packets.len() < MAX_PACKETS
        {
            return None;
        }
        let (_, item) = self.packets.remove(&first)?;
        self.next = Some(first + 1);
        Some(((first & 0xffff) as u16, item))
    }

    /// When a waiting packet will be released by the depth rule.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.packets.values().next().map(|(t, _)| *t + self.depth)
    }

    /// Number of packets held.
    pub fn len(&self) -> usize {
        self.packets.len()
    }

    /// Whether no packet is held.
    pub fn is_empty(&self) -> bool {
        self.packets.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reorders_and_skips_gaps_after_depth() {
        let t0 = Instant::now();
        let mut j = JitterBuffer::new(Duration::from_millis(40));
        j.push(t0, 10, 'a');
        assert_eq!(j.pop(t0), Some((10, 'a')));
        j.push(t0, 12, 'c');
        assert_eq!(j.pop(t0), None, "waits for 11");
        j.push(t0, 11, 'b');
        assert_eq!(j.pop(t0), Some((11, 'b')));
        assert_eq!(j.pop(t0), Some((12, 'c')));
        j.push(t0, 14, 'e');
        assert_eq!(j.pop(t0 + Duration::from_millis(10)), None);
        assert_eq!(j.pop(t0 + Duration::from_millis(41)), Some((14, 'e')));
        j.push(t0, 13, 'd');
        assert_eq!(
            j.pop(t0 + Duration::from_millis(50)),
            None,
            "13 came too late"
        );
        assert_eq!(j.dropped, 1);
    }

    #[test]
    fn restarted_sequence_is_followed() {
        let t0 = Instant::now();
        let mut j = JitterBuffer::new(Duration::from_millis(40));
        for s in 5000..5200u16 {
            j.push(t0, s, s);
            assert_eq!(j.pop(t0), Some((s, s)));
        }
        // The same stream replayed from the start (sipp replays a pcap): far behind, so a restart.
        j.push(t0, 5000, 1);
        assert_eq!(j.pop(t0), Some((5000, 1)));
        j.push(t0, 5001, 2);
        assert_eq!(j.pop(t0), Some((5001, 2)));
        // A jump far ahead restarts too.
        j.push(t0, 30000, 3);
        assert_eq!(j.pop(t0), Some((30000, 3)));
    }

    #[test]
    fn sequence_wrap() {
        let t0 = Instant::now();
        let mut j = JitterBuffer::new(Duration::from_millis(40));
        j.push(t0, 65534, 1);
        j.push(t0, 0, 3);
        j.push(t0, 65535, 2);
        let out: Vec<_> = std::iter::from_fn(|| j.pop(t0)).collect();
        assert_eq!(out, [(65534, 1), (65535, 2), (0, 3)]);
        j.push(t0, 0, 9);
        assert_eq!(j.dropped, 1, "duplicate after wrap is late");
    }
}
