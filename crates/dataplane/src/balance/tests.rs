//! Properties every picker must keep, checked for every algorithm.

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;

use proptest::prelude::*;

use super::rng::{self, mix64};
use super::testkit::{expected_tier, key, scenario, specs, ALGORITHMS, NOW};
use super::Algorithm;

fn algorithm() -> impl Strategy<Value = Algorithm> {
    prop::sample::select(ALGORITHMS.to_vec())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Only eligible backends, from the primaries whenever one is eligible, and `None` only when
    /// nothing is.
    #[test]
    fn picks_only_eligible_backends_of_the_right_tier(
        algorithm in algorithm(),
        specs in specs(12),
        seed in any::<u64>(),
    ) {
        rng::reseed(seed);
        let (pool, tried) = scenario(algorithm, &specs);
        let allowed = expected_tier(&pool, &tried);
        for n in 0..64 {
            let pick = pool.picker.pick(&key(mix64(seed ^ n)), &pool, NOW, &tried);
            match pick {
                Some(i) => {
                    prop_assert!(allowed.contains(&i), "{:?} picked {} outside {:?}", algorithm, i, allowed);
                    prop_assert!(pool.eligible(i, NOW, &tried));
                }
                None => prop_assert!(allowed.is_empty(), "{:?} found nothing among {:?}", algorithm, allowed),
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// On an idle pool, each eligible backend of the chosen tier gets its weight's share.
    #[test]
    fn shares_follow_weights(
        algorithm in algorithm(),
        specs in specs(8),
        seed in any::<u64>(),
    ) {
        rng::reseed(seed);
        let (pool, tried) = scenario(algorithm, &specs);
        let allowed = expected_tier(&pool, &tried);
        prop_assume!(!allowed.is_empty());
        let total_weight: u32 = allowed.iter().map(|&i| pool.backends[i].weight).sum();
        let picks = 20_000u64;
        let mut counts: HashMap<usize, u64> = HashMap::new();
        for n in 0..picks {
            let i = pool.picker.pick(&key(mix64(seed ^ n)), &pool, NOW, &tried).unwrap();
            *counts.entry(i).or_default() += 1;
        }
        for &i in &allowed {
            let share = counts.get(&i).copied().unwrap_or(0) as f64 / picks as f64;
            let expected = f64::from(pool.backends[i].weight) / f64::from(total_weight);
            prop_assert!((share - expected).abs() < 0.03,
                "{:?}: backend {} got {:.4}, weight share {:.4} ({:?})", algorithm, i, share, expected, specs);
        }
    }
}
