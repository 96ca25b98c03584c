//! Rate limit for keyframe requests sent to a publisher.
//!
//! A keyframe is large (often 10x a delta frame), so answering every PLI from every subscriber would
//! flood the publisher's uplink; one request per interval is enough for all subscribers to recover.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

/// Minimum time between two keyframe requests sent upstream for one publisher m-line.
pub const KEYFRAME_REQUEST_INTERVAL: Duration = Duration::from_millis(500);

/// Allows one event per key per interval.
#[derive(Debug)]
pub(crate) struct Throttle<K> {
    interval: Duration,
    last: HashMap<K, Instant>,
}

impl<K: Eq + Hash> Throttle<K> {
    pub(crate) fn new(interval: Duration) -> Self {
        Throttle {
            interval,
            last: HashMap::new(),
        }
    }

    /// Whether an event for `key` may happen at `now`: true when none happened yet, or the last one
    /// is at least the interval ago. A clock going backwards counts as "too soon".
    pub(crate) fn allows(&self, key: &K, now: Instant) -> bool {
        match self.last.get(key) {
            None => true,
            Some(last) => now
                .checked_duration_since(*last)
                .is_some_and(|d| d >= self.interval),
        }
    }

    /// Records that an event for `key` happened at `now`.
    pub(crate) fn record(&mut self, key: K, now: Instant) {
        self.last.insert(key, now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_request_passes_then_one_per_interval() {
        let t0 = Instant::now();
        let mut t = Throttle::new(KEYFRAME_REQUEST_INTERVAL);
        assert!(t.allows(&"v", t0));
        t.record("v", t0);
        assert!(!t.allows(&"v", t0));
        assert!(!t.allows(&"v", t0 + Duration::from_millis(499)));
        assert!(t.allows(&"v", t0 + Duration::from_millis(500)));
        t.record("v", t0 + Duration::from_millis(600));
        assert!(!t.allows(&"v", t0 + Duration::from_millis(1000)));
        assert!(t.allows(&"v", t0 + Duration::from_millis(1100)));
    }

    #[test]
    fn keys_are_independent() {
        let t0 = Instant::now();
        let mut t = Throttle::new(KEYFRAME_REQUEST_INTERVAL);
        t.record("a", t0);
        assert!(!t.allows(&"a", t0));
        assert!(t.allows(&"b", t0));
    }

    #[test]
    fn clock_going_backwards_is_too_soon() {
        let t0 = Instant::now() + Duration::from_secs(10);
        let mut t = Throttle::new(KEYFRAME_REQUEST_INTERVAL);
        t.record("v", t0);
        assert!(!t.allows(&"v", t0 - Duration::from_secs(5)));
    }
}
