//! Trunk liveness by OPTIONS keepalive (RFC 3261 §11): one probe per interval; any response means the trunk is
//! up; [`MISSES_DOWN`] probes in a row without one mark it down. Sans-IO: `now` is an argument, the caller sends.

use std::time::{Duration, Instant};

/// Unanswered probes in a row after which a trunk is down.
pub const MISSES_DOWN: u32 = 3;

/// Liveness of one trunk.
#[derive(Debug, Clone)]
pub struct KeepAlive {
    interval: Duration,
    next: Instant,
    /// Call-ID of the probe in flight.
    pending: Option<String>,
    misses: u32,
    up: Option<bool>,
    counter: u64,
    prefix: String,
}

/// A change of a trunk's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// Answers again (or for the first time).
    Up,
    /// [`MISSES_DOWN`] probes unanswered.
    Down,
}

impl KeepAlive {
    /// Probes every `interval`, the first right away; probe Call-IDs start with `prefix`.
    pub fn new(now: Instant, interval: Duration, prefix: String) -> Self {
        KeepAlive {
            interval,
            next: now,
            pending: None,
            misses: 0,
            up: None,
            counter: 0,
            prefix,
        }
    }

    /// Whether the trunk is known up (`None` before the first answer or miss limit).
    pub fn is_up(&self) -> Option<bool> {
        self.up
    }

    /// At `now`: the Call-ID of a probe to send, if one is due, and a state change from a missed probe.
    pub fn poll(&mut self, now: Instant) -> (Option<String>, Option<Health>) {
        if now < self.next {
            return (None, None);
        }
        let mut change = None;
        if self.pending.take().is_some() {
            self.misses += 1;
            if self.misses >= MISSES_DOWN && self.up != Some(false) {
                self.up = Some(false);
                change = Some(Health::Down);
            }
        }
        self.counter += 1;
        let id = format!("{}-{}", self.prefix, self.counter);
        self.pending = Some(id.clone());
        self.next = now + self.interval;
        (Some(id), change)
    }

    /// A response with `call_id` arrived: returns the state change, if any.
    pub fn handle_response(&mut self, call_id: &str) -> Option<Health> {
        if self.pending.as_deref() != Some(call_id) {
            return None;
        }
        self.pending = None;
        self.misses = 0;
        if self.up != Some(true) {
            self.up = Some(true);
            return Some(Health::Up);
        }
        None
    }

    /// Whether a Call-ID belongs to this trunk's probes.
    pub fn owns(&self, call_id: &str) -> bool {
        call_id
            .strip_prefix(self.prefix.as_str())
            .is_some_and(|r| r.starts_with('-'))
    }

    /// When [`Self::poll`] next has something to do.
    pub fn poll_timeout(&self) -> Instant {
        self.next
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn up_on_answer_down_after_three_misses_up_again() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let mut k = KeepAlive::new(t0, s, "ka0".into());
        let (id, ch) = k.poll(t0);
        let id = id.unwrap();
        assert!(k.owns(&id) && !k.owns("ka01-1") && !k.owns("other"));
        assert_eq!(ch, None);
        assert_eq!(k.poll(t0 + s / 2), (None, None), "not due");
        assert_eq!(k.handle_response(&id), Some(Health::Up));
        assert_eq!(k.handle_response(&id), None, "late duplicate");
        let mut changes = Vec::new();
        for i in 1..=4 {
            let (_, ch) = k.poll(t0 + s * i);
            changes.extend(ch);
        }
        assert_eq!(
            changes,
            [Health::Down],
            "3 misses in a row (the 4th poll counts the 3rd)"
        );
        assert_eq!(k.is_up(), Some(false));
        let (id, _) = k.poll(t0 + s * 5);
        assert_eq!(k.handle_response(&id.unwrap()), Some(Health::Up));
        assert_eq!(
            k.handle_response("ka0-1"),
            None,
            "an old probe's answer is not this one"
        );
    }
}
