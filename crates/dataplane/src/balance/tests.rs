//! Properties every picker must keep, checked for every algorithm.

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;

use proptest::prelude::*;

use super::rng::{self, mix64};
use super::testkit::{
    backend, expected_tier, key, pile_up, pool_of, ramping_pool, scenario, specs, ALGORITHMS, NOW,
    SLOW_START,
};
use super::weight::{slow_start_share, WEIGHT_SCALE};
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

/// Share of `picks` new sessions that go to backend 0, each from its own flow.
fn share_of_first(pool: &crate::route::PoolView, picks: u64, seed: u64) -> f64 {
    let to_first = (0..picks)
        .filter(|&n| pool.picker.pick(&key(mix64(seed ^ n)), pool, NOW, &[]) == Some(0))
        .count();
    to_first as f64 / picks as f64
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Slow start: a backend that came back part-way through the window gets the share of its
    /// effective weight, for every algorithm, on an idle pool.
    #[test]
    fn a_ramping_backend_gets_its_effective_share(
        algorithm in algorithm(),
        weights in prop::collection::vec(1u32..=5, 2..=5),
        elapsed in 0..=SLOW_START,
        seed in any::<u64>(),
    ) {
        rng::reseed(seed);
        let backends = weights.iter().enumerate().map(|(i, &w)| backend(i as u16, w, false)).collect();
        let pool = ramping_pool(algorithm, backends, elapsed);
        let share = u64::from(slow_start_share(NOW, NOW - elapsed, SLOW_START));
        let ramped = u64::from(weights[0]) * share;
        let others: u64 = weights[1..].iter().map(|&w| u64::from(w) * u64::from(WEIGHT_SCALE)).sum();
        let expected = ramped as f64 / (ramped + others) as f64;
        let got = share_of_first(&pool, 20_000, seed);
        prop_assert!((got - expected).abs() < 0.03,
            "{:?}: {:?} at {} ms got {:.4}, expected {:.4}", algorithm, weights, elapsed, got, expected);
    }
}

/// The share grows over the window and ends at the weight's, whatever the algorithm.
#[test]
fn the_share_grows_from_small_to_the_weights_over_the_window() {
    for algorithm in ALGORITHMS {
        let shares: Vec<f64> = [0, SLOW_START / 4, SLOW_START / 2, SLOW_START]
            .iter()
            .map(|&elapsed| {
                rng::reseed(elapsed + 1);
                let backends = vec![backend(0, 1, false), backend(1, 1, false)];
                share_of_first(&ramping_pool(algorithm, backends, elapsed), 10_000, elapsed)
            })
            .collect();
        // 1% of weight 1 against 1: 1/101; a quarter: 1/5; half: 1/3; full: 1/2.
        let expected = [1.0 / 101.0, 0.2, 1.0 / 3.0, 0.5];
        for (got, want) in shares.iter().zip(expected) {
            assert!((got - want).abs() < 0.03, "{algorithm:?}: {shares:?}");
        }
    }
}

/// Going down during the ramp and coming back restarts it from the bottom.
#[test]
fn a_backend_that_goes_down_mid_ramp_restarts_its_ramp() {
    for algorithm in ALGORITHMS {
        rng::reseed(9);
        let backends = vec![backend(0, 1, false), backend(1, 1, false)];
        let pool = ramping_pool(algorithm, backends, SLOW_START / 2);
        assert!((share_of_first(&pool, 10_000, 1) - 1.0 / 3.0).abs() < 0.03);
        pool.backends[0].state.set_healthy_at(false, NOW - 10);
        assert_eq!(share_of_first(&pool, 100, 2), 0.0, "{algorithm:?}: down");
        pool.backends[0].state.set_healthy_at(true, NOW);
        let restarted = share_of_first(&pool, 10_000, 3);
        assert!(restarted < 0.03, "{algorithm:?}: {restarted}");
    }
}

/// Load-aware pickers hold a ramping backend's concurrent sessions to its effective weight.
#[test]
fn long_sessions_pile_up_by_effective_weight() {
    use super::TimeMetric;
    for algorithm in [
        Algorithm::LeastConnections,
        Algorithm::PowerOfTwo,
        Algorithm::LeastTime {
            metric: TimeMetric::Connect,
        },
    ] {
        rng::reseed(10);
        // Weight 4 at half its share against weight 2: 2:2.
        let backends = vec![backend(0, 4, false), backend(1, 2, false)];
        let pool = ramping_pool(algorithm, backends, SLOW_START / 2);
        for b in pool.backends.iter() {
            b.state
                .record_connect_time(std::time::Duration::from_micros(100));
        }
        let active = pile_up(&pool, 4_000);
        assert!(active[0].abs_diff(2_000) < 100, "{algorithm:?}: {active:?}");
    }
}

/// A pool without slow start never consults the ramp: a backend that came back a moment ago
/// gets its full share at once.
#[test]
fn without_slow_start_a_returning_backend_is_at_full_weight() {
    for algorithm in ALGORITHMS {
        rng::reseed(11);
        let backends = vec![backend(0, 1, false), backend(1, 1, false)];
        backends[0].state.set_healthy_at(false, NOW - 1);
        backends[0].state.set_healthy_at(true, NOW);
        let pool = pool_of(algorithm, backends);
        assert!(
            (share_of_first(&pool, 10_000, 4) - 0.5).abs() < 0.03,
            "{algorithm:?}"
        );
    }
}
