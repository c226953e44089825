//! Smooth weighted round robin, shared lock-free across workers.

use std::sync::atomic::{AtomicUsize, Ordering};

use super::tier::{interleave, Member, Tier};
use crate::route::{BackendView, FlowKey, Millis, Pick, PoolView};

/// Ineligible slots a pick steps over before it stops walking the schedule. Past it, most of the
/// tier is out and an O(backends) weighted draw is cheaper than walking a long schedule one
/// contended `fetch_add` at a time.
pub(crate) const MAX_SKIPS: usize = 32;

/// A weighted cycle computed once per tier when the pool is built (see `interleave`: a 5:1:1
/// pool runs a,c,a,a,a,b,a, never more than three a's in a row even across cycles); workers
/// advance one shared atomic cursor through it.
#[derive(Debug)]
pub struct SmoothRoundRobin {
    primary: Schedule,
    backup: Schedule,
}

#[derive(Debug)]
pub(crate) struct Schedule {
    pub tier: Tier,
    /// Positions in `tier`, each appearing (reduced) weight times.
    order: Box<[u32]>,
    cursor: AtomicUsize,
}

impl Schedule {
    pub fn new(backends: &[BackendView], backup: bool) -> Self {
        let tier = Tier::new(backends, backup);
        let weights: Vec<u32> = tier.members().iter().map(|m| m.weight).collect();
        Self {
            order: interleave(&weights).into_boxed_slice(),
            tier,
            cursor: AtomicUsize::new(0),
        }
    }

    /// Takes the next slot of the cycle whatever its backend's state: the member and its
    /// position in the tier.
    fn next(&self) -> Option<(usize, Member)> {
        let slot = self.cursor.fetch_add(1, Ordering::Relaxed) % self.order.len().max(1);
        let position = *self.order.get(slot)? as usize;
        Some((position, self.tier.member(position)?))
    }

    /// The next slot whose backend is eligible and keeps its turn, within [`MAX_SKIPS`] slots.
    pub fn next_eligible(
        &self,
        pool: &PoolView,
        now: Millis,
        tried: &[usize],
    ) -> Option<(usize, Member)> {
        // Skipping an ineligible slot consumes it, so over a cycle every eligible backend gets
        // exactly its slots and shares among the eligible stay proportional to weight. A
        // ramping backend keeps each of its slots with probability effective / full weight,
        // so it gets that fraction of its turns and shares follow effective weights.
        for _ in 0..self.order.len().min(MAX_SKIPS) {
            match self.next() {
                Some((position, m))
                    if pool.eligible(m.index, now, tried) && m.keeps_turn(pool, now) =>
                {
                    return Some((position, m))
                }
                _ => {}
            }
        }
        None
    }

    fn pick(&self, pool: &PoolView, now: Millis, tried: &[usize]) -> Option<usize> {
        if self.tier.is_empty() {
            return None;
        }
        self.next_eligible(pool, now, tried)
            .map(|(_, m)| m)
            .or_else(|| self.tier.weighted_random(pool, now, tried))
            .map(|m| m.index)
    }
}

impl SmoothRoundRobin {
    pub fn new(backends: &[BackendView]) -> Self {
        Self {
            primary: Schedule::new(backends, false),
            backup: Schedule::new(backends, true),
        }
    }
}

impl Pick for SmoothRoundRobin {
    fn pick(&self, _key: &FlowKey, pool: &PoolView, now: Millis, tried: &[usize]) -> Option<usize> {
        self.primary
            .pick(pool, now, tried)
            .or_else(|| self.backup.pick(pool, now, tried))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use crate::balance::testkit::{backend, key, pool_of};
    use crate::balance::Algorithm;
    use crate::route::AdminState;

    #[test]
    fn five_one_one_never_runs_the_heavy_backend_more_than_three_times() {
        let pool = pool_of(
            Algorithm::RoundRobin,
            vec![
                backend(1, 5, false),
                backend(2, 1, false),
                backend(3, 1, false),
            ],
        );
        let picks: Vec<usize> = (0..700)
            .map(|_| pool.picker.pick(&key(0), &pool, 0, &[]).unwrap())
            .collect();
        let longest = picks
            .chunk_by(|a, b| a == b)
            .filter(|run| run[0] == 0)
            .map(<[usize]>::len)
            .max()
            .unwrap();
        // Exact 5:1:1 shares force some run of three (five a's, two separators per cycle);
        // nginx's sequence reaches four at every cycle boundary.
        assert_eq!(longest, 3);
        assert_eq!(picks.iter().filter(|&&p| p == 0).count(), 500);
        assert_eq!(picks.iter().filter(|&&p| p == 1).count(), 100);
        assert_eq!(picks.iter().filter(|&&p| p == 2).count(), 100);
        assert_eq!(&picks[..7], &[0, 2, 0, 0, 0, 1, 0]);
    }

    #[test]
    fn skips_a_draining_backend_and_keeps_the_others_proportional() {
        let backends = vec![
            backend(1, 3, false),
            backend(2, 1, false),
            backend(3, 2, false),
        ];
        backends[0].state.set_admin(AdminState::Draining);
        let pool = pool_of(Algorithm::RoundRobin, backends);
        let mut counts = [0; 3];
        for _ in 0..600 {
            counts[pool.picker.pick(&key(0), &pool, 0, &[]).unwrap()] += 1;
        }
        assert_eq!(counts, [0, 200, 400]);
    }

    #[test]
    fn falls_back_to_backups_and_back() {
        let backends = vec![
            backend(1, 1, false),
            backend(2, 1, true),
            backend(3, 1, true),
        ];
        let pool = pool_of(Algorithm::RoundRobin, backends);
        assert_eq!(pool.picker.pick(&key(0), &pool, 0, &[]), Some(0));
        assert_eq!(
            pool.picker.pick(&key(0), &pool, 0, &[0]).map(|i| i >= 1),
            Some(true)
        );
        pool.backends[0].state.set_healthy(false);
        let a = pool.picker.pick(&key(0), &pool, 0, &[]).unwrap();
        let b = pool.picker.pick(&key(0), &pool, 0, &[]).unwrap();
        assert_ne!(a, b, "backups are round-robined too");
        assert_eq!(pool.picker.pick(&key(0), &pool, 0, &[1, 2]), None);
        pool.backends[0].state.set_healthy(true);
        assert_eq!(pool.picker.pick(&key(0), &pool, 0, &[]), Some(0));
    }

    #[test]
    fn a_long_outage_falls_back_to_a_weighted_draw() {
        // 60 backends, all but the last out: the schedule walk gives up after MAX_SKIPS slots
        // and the draw still finds the survivor.
        let backends: Vec<_> = (0..60).map(|i| backend(i, 1, false)).collect();
        for b in &backends[..59] {
            b.state.set_healthy(false);
        }
        let pool = pool_of(Algorithm::RoundRobin, backends);
        for _ in 0..100 {
            assert_eq!(pool.picker.pick(&key(0), &pool, 0, &[]), Some(59));
        }
    }
}
