//! A lock-free histogram with fixed buckets, for timings the workers record on the hot path
//! (connect time) and the control plane reads at scrape time.
//!
//! Recording is a binary search over a constant table and two relaxed atomic adds: no lock, no
//! allocation, no name look-up. The bucket bounds are fixed at compile time because the
//! Prometheus histogram that the control plane renders from them must keep the same `le`
//! labels for the life of the series. A snapshot is not one atomic read, so a scrape racing a
//! record may see the sum without the bucket or the other way round; every later scrape is
//! exact again, which is what Prometheus counters need.
//!
//! This module owns no file descriptor.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the buckets, in microseconds. Loopback and LAN connects take 50 µs to a
/// few ms; a connect near the top has usually timed out somewhere first.
pub const CONNECT_BOUNDS_US: [u64; 16] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000, 5_000_000, 10_000_000,
];

const BUCKETS: usize = CONNECT_BOUNDS_US.len() + 1;

/// Counts of samples per bucket (the last one is `+Inf`) and their sum.
#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; BUCKETS],
    sum_us: AtomicU64,
}

/// A copy of a [`Histogram`] in the shape Prometheus wants: cumulative counts.
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSnapshot {
    /// `(upper bound in seconds, samples ≤ bound)`, in increasing order, without `+Inf`.
    pub buckets: Vec<(f64, u64)>,
    /// Every sample (the `+Inf` bucket).
    pub count: u64,
    pub sum_seconds: f64,
}

impl HistogramSnapshot {
    /// The `q` quantile (0..=1) in seconds, interpolated linearly inside its bucket as
    /// Prometheus' `histogram_quantile` does; `None` without samples. A quantile in the
    /// `+Inf` bucket is reported as the highest finite bound.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        if self.count == 0 || !(0.0..=1.0).contains(&q) {
            return None;
        }
        let rank = q * self.count as f64;
        let mut lower = (0.0, 0u64);
        for &(bound, cumulative) in &self.buckets {
            if cumulative as f64 >= rank && cumulative > lower.1 {
                let within = (rank - lower.1 as f64) / (cumulative - lower.1) as f64;
                return Some(lower.0 + (bound - lower.0) * within.clamp(0.0, 1.0));
            }
            lower = (bound, cumulative);
        }
        Some(lower.0)
    }
}

impl Histogram {
    pub fn record(&self, sample: Duration) {
        let us = u64::try_from(sample.as_micros()).unwrap_or(u64::MAX);
        // First bound ≥ the sample: Prometheus buckets are "less than or equal".
        let index = CONNECT_BOUNDS_US.partition_point(|&bound| bound < us);
        if let Some(bucket) = self.buckets.get(index) {
            bucket.fetch_add(1, Ordering::Relaxed);
        }
        self.sum_us.fetch_add(us, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut cumulative = 0u64;
        let mut buckets = Vec::with_capacity(CONNECT_BOUNDS_US.len());
        for (bound, bucket) in CONNECT_BOUNDS_US.iter().zip(&self.buckets) {
            cumulative = cumulative.saturating_add(bucket.load(Ordering::Relaxed));
            buckets.push((*bound as f64 / 1e6, cumulative));
        }
        let overflow = self.buckets[BUCKETS - 1].load(Ordering::Relaxed);
        HistogramSnapshot {
            buckets,
            count: cumulative.saturating_add(overflow),
            sum_seconds: self.sum_us.load(Ordering::Relaxed) as f64 / 1e6,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn quantiles_interpolate_inside_their_bucket() {
        let h = Histogram::default();
        assert_eq!(h.snapshot().quantile(0.5), None);
        // Four samples in (100, 250] µs, so the median is half way through that bucket.
        for us in [150, 160, 170, 180] {
            h.record(Duration::from_micros(us));
        }
        let median = h.snapshot().quantile(0.5).unwrap();
        assert!((median - 175e-6).abs() < 1e-9, "{median}");
        assert!((h.snapshot().quantile(1.0).unwrap() - 250e-6).abs() < 1e-9);
        // A sample beyond the last bound: the top quantile is that bound.
        h.record(Duration::from_secs(60));
        assert_eq!(h.snapshot().quantile(1.0), Some(10.0));
        assert_eq!(h.snapshot().quantile(1.5), None);
    }

    #[test]
    fn bounds_are_inclusive_and_cumulative() {
        let h = Histogram::default();
        h.record(Duration::from_micros(100));
        h.record(Duration::from_micros(101));
        h.record(Duration::from_secs(60));
        let s = h.snapshot();
        assert_eq!(s.buckets[0], (0.0001, 1));
        assert_eq!(s.buckets[1], (0.00025, 2));
        assert_eq!(s.buckets.last().unwrap(), &(10.0, 2));
        assert_eq!(s.count, 3);
        assert!((s.sum_seconds - 60.000201).abs() < 1e-9);
    }

    proptest! {
        #[test]
        fn every_sample_is_counted_once_in_the_right_bucket(
            samples in proptest::collection::vec(0u64..20_000_000, 0..200)
        ) {
            let h = Histogram::default();
            for us in &samples {
                h.record(Duration::from_micros(*us));
            }
            let s = h.snapshot();
            prop_assert_eq!(s.count, samples.len() as u64);
            for (bound, count) in &s.buckets {
                let bound_us = (bound * 1e6).round() as u64;
                let expected = samples.iter().filter(|us| **us <= bound_us).count() as u64;
                prop_assert_eq!(*count, expected);
            }
            let total: u64 = samples.iter().sum();
            prop_assert!((s.sum_seconds - total as f64 / 1e6).abs() < 1e-6);
        }
    }
}
