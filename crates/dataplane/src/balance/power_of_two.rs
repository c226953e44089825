//! Power of two choices.

use std::cmp::Ordering as CmpOrdering;

use super::tier::{active, cmp_per_weight, Member, Tier};
use crate::route::{BackendView, FlowKey, Millis, Pick, PoolView};

/// Draws allowed for the second choice to differ from the first. Comparing a backend with
/// itself wastes the second choice, and a heavy backend often meets itself; bounded because a
/// tier with one eligible backend can only ever draw that one.
pub(crate) const SECOND_DRAWS: usize = 3;

/// Draws two backends by effective weight and keeps the one with fewer active sessions per unit
/// of it (the first on a tie, so an idle pool's shares are exactly the weighted draw's).
/// Mitzenmacher's
/// two choices give almost all of least-connections' balance while reading two backends'
/// counters instead of every one, and never herd: workers holding a stale view of the counts
/// still spread over different pairs.
#[derive(Debug)]
pub struct PowerOfTwo {
    primary: Tier,
    backup: Tier,
}

impl PowerOfTwo {
    pub fn new(backends: &[BackendView]) -> Self {
        Self {
            primary: Tier::new(backends, false),
            backup: Tier::new(backends, true),
        }
    }
}

/// Two weighted draws from `tier`, distinct when possible, or `None` when none is eligible.
pub(crate) fn draw_two(
    tier: &Tier,
    pool: &PoolView,
    now: Millis,
    tried: &[usize],
) -> Option<(Member, Member)> {
    let first = tier.weighted_random(pool, now, tried)?;
    let mut second = first;
    for _ in 0..SECOND_DRAWS {
        match tier.weighted_random(pool, now, tried) {
            Some(m) if m.index != first.index => {
                second = m;
                break;
            }
            _ => {}
        }
    }
    Some((first, second))
}

fn pick_tier(tier: &Tier, pool: &PoolView, now: Millis, tried: &[usize]) -> Option<usize> {
    let (a, b) = draw_two(tier, pool, now, tried)?;
    let order = cmp_per_weight(
        active(pool, b.index).into(),
        b.effective_weight(pool, now),
        active(pool, a.index).into(),
        a.effective_weight(pool, now),
    );
    Some(if order == CmpOrdering::Less {
        b.index
    } else {
        a.index
    })
}

impl Pick for PowerOfTwo {
    fn pick(&self, _key: &FlowKey, pool: &PoolView, now: Millis, tried: &[usize]) -> Option<usize> {
        pick_tier(&self.primary, pool, now, tried)
            .or_else(|| pick_tier(&self.backup, pool, now, tried))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::atomic::Ordering;

    use crate::balance::rng;
    use crate::balance::testkit::{backend, key, pile_up, pool_of};
    use crate::balance::Algorithm;

    #[test]
    fn prefers_the_less_loaded_of_two() {
        rng::reseed(3);
        let pool = pool_of(
            Algorithm::PowerOfTwo,
            vec![backend(1, 1, false), backend(2, 1, false)],
        );
        pool.backends[0].state.active.store(10, Ordering::Relaxed);
        // With two eligible backends the draws are distinct unless all three second draws
        // repeat the first (1/8): 15/16 of picks go to the idle one.
        let to_idle = (0..1_000)
            .filter(|_| pool.picker.pick(&key(0), &pool, 0, &[]) == Some(1))
            .count();
        assert!(to_idle > 900, "{to_idle}");
    }

    #[test]
    fn load_settles_in_proportion_to_weight() {
        rng::reseed(4);
        let pool = pool_of(
            Algorithm::PowerOfTwo,
            vec![
                backend(1, 4, false),
                backend(2, 1, false),
                backend(3, 2, false),
                backend(4, 1, false),
            ],
        );
        let active = pile_up(&pool, 8_000);
        for (got, expected) in active.iter().zip([4_000u64, 1_000, 2_000, 1_000]) {
            assert!(got.abs_diff(expected) < 80, "{active:?}");
        }
    }

    #[test]
    fn a_single_eligible_backend_is_returned() {
        let pool = pool_of(
            Algorithm::PowerOfTwo,
            vec![backend(1, 1, false), backend(2, 9, false)],
        );
        pool.backends[1].state.set_healthy(false);
        for _ in 0..100 {
            assert_eq!(pool.picker.pick(&key(0), &pool, 0, &[]), Some(0));
        }
    }
}
