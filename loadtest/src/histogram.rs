//! A mergeable log-linear histogram of non-negative integer samples (latencies in microseconds, join times in
//! milliseconds), with percentiles.
//!
//! Values below 128 get one bucket each; above, every power of two is split into 128 buckets, so a reported
//! percentile is within 1/128 (0.8 %) of the true sample. Buckets grow on demand: a client that only sees
//! millisecond latencies holds about two thousand counters, and thousands of clients' histograms merge cheaply.

/// Sub-buckets per power of two, as a bit count (2^7 = 128).
const SUB_BITS: u32 = 7;
const SUB: u64 = 1 << SUB_BITS;

/// Counts of samples by value bucket, plus exact count, sum, minimum and maximum.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Histogram {
    buckets: Vec<u64>,
    count: u64,
    sum: u128,
    min: u64,
    max: u64,
}

/// The bucket index of `v`.
fn index_of(v: u64) -> usize {
    if v < SUB {
        return v as usize;
    }
    let exponent = 63 - v.leading_zeros(); // >= SUB_BITS
    let shift = exponent - SUB_BITS;
    let mantissa = v >> shift; // in SUB..2*SUB
    ((u64::from(shift) + 1) * SUB + (mantissa - SUB)) as usize
}

/// The smallest value that falls in bucket `i`.
fn lower_bound(i: usize) -> u64 {
    let i = i as u64;
    if i < SUB {
        return i;
    }
    let shift = i / SUB - 1;
    let mantissa = SUB + i % SUB;
    mantissa << shift
}

/// The largest value that falls in bucket `i`.
fn upper_bound(i: usize) -> u64 {
    if (i as u64) < SUB {
        return i as u64;
    }
    lower_bound(i + 1) - 1
}

impl Histogram {
    /// An empty histogram.
    pub fn new() -> Histogram {
        Histogram::default()
    }

    /// Adds one sample.
    pub fn record(&mut self, v: u64) {
        let i = index_of(v);
        if i >= self.buckets.len() {
            self.buckets.resize(i + 1, 0);
        }
        self.buckets[i] += 1;
        if self.count == 0 || v < self.min {
            self.min = v;
        }
        self.max = self.max.max(v);
        self.count += 1;
        self.sum += u128::from(v);
    }

    /// Adds every sample of `other`.
    pub fn merge(&mut self, other: &Histogram) {
        if other.count == 0 {
            return;
        }
        if other.buckets.len() > self.buckets.len() {
            self.buckets.resize(other.buckets.len(), 0);
        }
        for (a, b) in self.buckets.iter_mut().zip(&other.buckets) {
            *a += b;
        }
        if self.count == 0 || other.min < self.min {
            self.min = other.min;
        }
        self.max = self.max.max(other.max);
        self.count += other.count;
        self.sum += other.sum;
    }

    /// Number of samples.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Largest sample (exact); `None` when empty.
    pub fn max(&self) -> Option<u64> {
        (self.count > 0).then_some(self.max)
    }

    /// Mean of the samples; `None` when empty.
    pub fn mean(&self) -> Option<f64> {
        (self.count > 0).then(|| self.sum as f64 / self.count as f64)
    }

    /// The `p`-th percentile (`p` in 0..=100, nearest rank): the smallest bucket such that at least `p` % of the
    /// samples are at or below it, reported as the bucket's upper bound clamped to the exact min and max (so
    /// p0 is the minimum and p100 the maximum). `None` when empty.
    pub fn percentile(&self, p: f64) -> Option<u64> {
        if self.count == 0 {
            return None;
        }
        let p = p.clamp(0.0, 100.0);
        let rank = ((p / 100.0) * self.count as f64).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return Some(upper_bound(i).clamp(self.min, self.max));
            }
        }
        Some(self.max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_values_are_exact() {
        let mut h = Histogram::new();
        for v in 1..=100 {
            h.record(v);
        }
        assert_eq!(h.percentile(50.0), Some(50));
        assert_eq!(h.percentile(99.0), Some(99));
        assert_eq!(h.percentile(100.0), Some(100));
        assert_eq!(h.percentile(0.0), Some(1));
        assert_eq!(h.max(), Some(100));
        assert_eq!(h.mean(), Some(50.5));
    }

    #[test]
    fn large_values_are_within_one_percent() {
        let mut h = Histogram::new();
        for v in 1..=100_000u64 {
            h.record(v * 37);
        }
        for (p, exact) in [
            (50.0, 50_000 * 37),
            (99.0, 99_000 * 37),
            (99.9, 99_900 * 37),
        ] {
            let got = h.percentile(p).unwrap() as f64;
            let err = (got - exact as f64).abs() / exact as f64;
            assert!(err < 0.01, "p{p}: {got} vs {exact}");
        }
        assert_eq!(h.max(), Some(3_700_000));
    }

    #[test]
    fn buckets_tile_the_value_range() {
        for i in 0..3000 {
            assert_eq!(index_of(lower_bound(i)), i, "lower bound of {i}");
            assert_eq!(index_of(upper_bound(i)), i, "upper bound of {i}");
            assert_eq!(upper_bound(i) + 1, lower_bound(i + 1));
        }
        assert!(index_of(u64::MAX) < 8000);
    }

    #[test]
    fn merge_equals_recording_everything_in_one() {
        let (mut a, mut b, mut all) = (Histogram::new(), Histogram::new(), Histogram::new());
        for v in 0..5000u64 {
            let x = v * v % 100_003;
            if v % 3 == 0 {
                a.record(x)
            } else {
                b.record(x)
            }
            all.record(x);
        }
        a.merge(&b);
        assert_eq!(a, all);
        let mut empty = Histogram::new();
        empty.merge(&Histogram::new());
        assert_eq!(empty.percentile(50.0), None);
        empty.merge(&all);
        assert_eq!(empty, all);
    }

    #[test]
    fn single_sample_is_every_percentile() {
        let mut h = Histogram::new();
        h.record(12_345);
        assert_eq!(h.percentile(1.0), Some(12_345));
        assert_eq!(h.percentile(99.0), Some(12_345));
    }
}
