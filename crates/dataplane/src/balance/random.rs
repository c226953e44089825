//! Weighted random.

use super::tier::Tier;
use crate::route::{BackendView, FlowKey, Millis, Pick, PoolView};

/// Each eligible backend of the tier is drawn with probability weight / (sum of the eligible
/// weights), from the calling thread's own generator: no shared state is written, so workers on
/// different cores never contend. O(log backends) while most of the tier is up.
#[derive(Debug)]
pub struct WeightedRandom {
    primary: Tier,
    backup: Tier,
}

impl WeightedRandom {
    pub fn new(backends: &[BackendView]) -> Self {
        Self {
            primary: Tier::new(backends, false),
            backup: Tier::new(backends, true),
        }
    }
}

impl Pick for WeightedRandom {
    fn pick(&self, _key: &FlowKey, pool: &PoolView, now: Millis, tried: &[usize]) -> Option<usize> {
        self.primary
            .weighted_random(pool, now, tried)
            .or_else(|| self.backup.weighted_random(pool, now, tried))
            .map(|m| m.index)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use crate::balance::rng;
    use crate::balance::testkit::{backend, key, pool_of};
    use crate::balance::Algorithm;

    #[test]
    fn shares_follow_weights() {
        rng::reseed(1);
        let pool = pool_of(
            Algorithm::Random,
            vec![
                backend(1, 5, false),
                backend(2, 1, false),
                backend(3, 4, false),
            ],
        );
        let mut counts = [0u32; 3];
        for _ in 0..100_000 {
            counts[pool.picker.pick(&key(0), &pool, 0, &[]).unwrap()] += 1;
        }
        for (count, expected) in counts.iter().zip([50_000, 10_000, 40_000]) {
            assert!(count.abs_diff(expected) < 1_000, "{counts:?}");
        }
    }

    #[test]
    fn never_draws_a_tried_backend_even_when_it_dominates() {
        rng::reseed(2);
        let pool = pool_of(
            Algorithm::Random,
            vec![
                backend(1, 256, false),
                backend(2, 1, false),
                backend(3, 1, true),
            ],
        );
        for _ in 0..1_000 {
            assert_eq!(pool.picker.pick(&key(0), &pool, 0, &[0]), Some(1));
        }
        assert_eq!(pool.picker.pick(&key(0), &pool, 0, &[0, 1]), Some(2));
        assert_eq!(pool.picker.pick(&key(0), &pool, 0, &[0, 1, 2]), None);
    }
}
