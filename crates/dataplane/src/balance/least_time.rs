//! Least time: power of two choices on measured latency × load.

use std::sync::atomic::Ordering;

use super::power_of_two::draw_two;
use super::tier::{active, cmp_per_weight, Tier};
use super::TimeMetric;
use crate::route::{BackendView, FlowKey, Millis, Pick, PoolView};

/// Draws two backends by effective weight and keeps the one with the lower
/// `EWMA × (active + 1) / effective weight`: a backend that answers twice as fast may carry twice the
/// sessions. The `+ 1` counts the session being placed, so idle backends still compare by
/// latency.
///
/// A backend with no sample yet (EWMA 0) must be tried to be measured: when idle it beats any
/// measured rival. Once it has a session in flight and still no sample it borrows its rival's
/// EWMA and competes on load alone, so a new backend that never answers (a black hole, whose
/// connects time out without a sample) cannot swallow every draw it appears in.
#[derive(Debug)]
pub struct LeastTime {
    metric: TimeMetric,
    primary: Tier,
    backup: Tier,
}

impl LeastTime {
    pub fn new(metric: TimeMetric, backends: &[BackendView]) -> Self {
        Self {
            metric,
            primary: Tier::new(backends, false),
            backup: Tier::new(backends, true),
        }
    }

    fn ewma(&self, pool: &PoolView, index: usize) -> u64 {
        pool.backends.get(index).map_or(0, |b| match self.metric {
            TimeMetric::Connect => b.state.connect_time_ewma_us.load(Ordering::Relaxed),
            TimeMetric::FirstByte => b.state.first_byte_time_ewma_us.load(Ordering::Relaxed),
        })
    }

    fn pick_tier(
        &self,
        tier: &Tier,
        pool: &PoolView,
        now: Millis,
        tried: &[usize],
    ) -> Option<usize> {
        let (a, b) = draw_two(tier, pool, now, tried)?;
        let (a_ewma, b_ewma) = (self.ewma(pool, a.index), self.ewma(pool, b.index));
        let (a_active, b_active) = (active(pool, a.index), active(pool, b.index));
        let (a_weight, b_weight) = (a.effective_weight(pool, now), b.effective_weight(pool, now));
        Some(
            if better(b_weight, b_ewma, b_active, a_weight, a_ewma, a_active) {
                b.index
            } else {
                a.index
            },
        )
    }
}

/// True when `x` should be chosen over `y` (given their effective weights); ties keep `y` (the
/// first draw).
fn better(
    x_weight: u32,
    x_ewma: u64,
    x_active: u64,
    y_weight: u32,
    y_ewma: u64,
    y_active: u64,
) -> bool {
    let x_fresh = x_ewma == 0 && x_active == 0;
    let y_fresh = y_ewma == 0 && y_active == 0;
    if x_fresh || y_fresh {
        return x_fresh && !y_fresh;
    }
    // Unsampled but busy: borrow the rival's latency (1 µs when neither has one) so the
    // comparison falls back to load per weight.
    let (x_ewma, y_ewma) = match (x_ewma, y_ewma) {
        (0, 0) => (1, 1),
        (0, y) => (y, y),
        (x, 0) => (x, x),
        both => both,
    };
    let x_cost = u128::from(x_ewma) * u128::from(x_active.saturating_add(1));
    let y_cost = u128::from(y_ewma) * u128::from(y_active.saturating_add(1));
    cmp_per_weight(x_cost, x_weight, y_cost, y_weight) == std::cmp::Ordering::Less
}

impl Pick for LeastTime {
    fn pick(&self, _key: &FlowKey, pool: &PoolView, now: Millis, tried: &[usize]) -> Option<usize> {
        self.pick_tier(&self.primary, pool, now, tried)
            .or_else(|| self.pick_tier(&self.backup, pool, now, tried))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::balance::rng;
    use crate::balance::testkit::{backend, key, pile_up, pool_of};
    use crate::balance::Algorithm;

    #[test]
    fn cost_is_latency_times_load_over_weight() {
        // 100 µs × 3 / 1 = 300 vs 50 µs × 5 / 1 = 250.
        assert!(better(1, 50, 4, 1, 100, 2));
        // Same, but the slower one has weight 2: 150 < 250.
        assert!(!better(1, 50, 4, 2, 100, 2));
        // Equal cost keeps the first draw.
        assert!(!better(1, 100, 1, 1, 100, 1));
    }

    #[test]
    fn unmeasured_idle_backends_are_tried_first() {
        assert!(better(1, 0, 0, 1, 1, 0));
        assert!(!better(1, 1, 0, 1, 0, 0));
        assert!(!better(1, 0, 0, 1, 0, 0));
        // Unmeasured with a session in flight competes on load with the rival's latency.
        assert!(!better(1, 0, 3, 1, 100, 1));
        assert!(better(1, 0, 1, 1, 100, 3));
    }

    #[test]
    fn faster_backend_takes_more() {
        rng::reseed(5);
        let pool = pool_of(
            Algorithm::LeastTime {
                metric: TimeMetric::FirstByte,
            },
            vec![backend(1, 1, false), backend(2, 1, false)],
        );
        pool.backends[0]
            .state
            .record_first_byte_time(Duration::from_micros(100));
        pool.backends[1]
            .state
            .record_first_byte_time(Duration::from_micros(400));
        // The connect metric is unsampled on both and must not matter here.
        let active = pile_up(&pool, 2_000);
        let (fast, slow) = (active[0], active[1]);
        // Balance point: 100 × (fast + 1) ≈ 400 × (slow + 1).
        assert!((1_550..=1_650).contains(&fast), "{fast} vs {slow}");
    }

    #[test]
    fn connect_metric_reads_connect_times() {
        rng::reseed(6);
        let pool = pool_of(
            Algorithm::LeastTime {
                metric: TimeMetric::Connect,
            },
            vec![backend(1, 1, false), backend(2, 1, false)],
        );
        pool.backends[0]
            .state
            .record_connect_time(Duration::from_millis(50));
        pool.backends[1]
            .state
            .record_connect_time(Duration::from_millis(1));
        pool.backends[0]
            .state
            .record_first_byte_time(Duration::from_micros(1));
        let to_fast = (0..1_000)
            .filter(|_| pool.picker.pick(&key(0), &pool, 0, &[]) == Some(1))
            .count();
        assert!(to_fast > 850, "{to_fast}");
    }
}
