//! Least connections: fewest active sessions per unit of weight.

use std::cmp::Ordering as CmpOrdering;

use super::round_robin::Schedule;
use super::tier::{active, cmp_per_weight, Member};
use crate::route::{BackendView, FlowKey, Millis, Pick, PoolView};

/// Scans the tier for the lowest `active / effective weight`. The scan starts at the backend the weighted
/// round-robin cycle points at and only a strictly lighter backend displaces the current best,
/// so ties go round robin *by weight*: on an idle pool (every count 0) a 5:1 pool still gets
/// 5:1, as nginx's `least_conn` does.
///
/// Each pick reads every backend of the tier once: O(backends), inherent to an exact minimum.
#[derive(Debug)]
pub struct LeastConnections {
    primary: Schedule,
    backup: Schedule,
}

impl LeastConnections {
    pub fn new(backends: &[BackendView]) -> Self {
        Self {
            primary: Schedule::new(backends, false),
            backup: Schedule::new(backends, true),
        }
    }
}

fn pick_tier(schedule: &Schedule, pool: &PoolView, now: Millis, tried: &[usize]) -> Option<usize> {
    let members = schedule.tier.members();
    if members.is_empty() {
        return None;
    }
    // An ineligible start would hand its ties to whichever backend follows it in the list; an
    // eligible one from the cycle keeps tie shares weighted.
    let start = schedule
        .next_eligible(pool, now, tried)
        .map_or(0, |(position, _)| position);
    let mut best: Option<(Member, u64, u32)> = None;
    for offset in 0..members.len() {
        let m = members[(start + offset) % members.len()];
        if !pool.eligible(m.index, now, tried) {
            continue;
        }
        let load = active(pool, m.index);
        let weight = m.effective_weight(pool, now);
        let lighter = match best {
            None => true,
            Some((_, b_load, b_weight)) => {
                cmp_per_weight(load.into(), weight, b_load.into(), b_weight) == CmpOrdering::Less
            }
        };
        if lighter {
            best = Some((m, load, weight));
        }
    }
    best.map(|(m, _, _)| m.index)
}

impl Pick for LeastConnections {
    fn pick(&self, _key: &FlowKey, pool: &PoolView, now: Millis, tried: &[usize]) -> Option<usize> {
        pick_tier(&self.primary, pool, now, tried)
            .or_else(|| pick_tier(&self.backup, pool, now, tried))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::atomic::Ordering;

    use crate::balance::testkit::{backend, key, pile_up, pool_of};
    use crate::balance::Algorithm;

    #[test]
    fn picks_the_fewest_active_per_weight() {
        let pool = pool_of(
            Algorithm::LeastConnections,
            vec![
                backend(1, 1, false),
                backend(2, 3, false),
                backend(3, 1, false),
            ],
        );
        pool.backends[0].state.active.store(2, Ordering::Relaxed);
        pool.backends[1].state.active.store(4, Ordering::Relaxed); // 4/3 < 2/1
        pool.backends[2].state.active.store(2, Ordering::Relaxed);
        for _ in 0..10 {
            assert_eq!(pool.picker.pick(&key(0), &pool, 0, &[]), Some(1));
        }
        assert_eq!(
            pool.picker.pick(&key(0), &pool, 0, &[1]).map(|i| i != 1),
            Some(true)
        );
    }

    #[test]
    fn ties_rotate_by_weight() {
        let pool = pool_of(
            Algorithm::LeastConnections,
            vec![
                backend(1, 2, false),
                backend(2, 1, false),
                backend(3, 1, false),
            ],
        );
        let mut counts = [0; 3];
        for _ in 0..400 {
            counts[pool.picker.pick(&key(0), &pool, 0, &[]).unwrap()] += 1;
        }
        assert_eq!(counts, [200, 100, 100]);
    }

    #[test]
    fn long_sessions_pile_up_in_proportion_to_weight() {
        let pool = pool_of(
            Algorithm::LeastConnections,
            vec![
                backend(1, 5, false),
                backend(2, 1, false),
                backend(3, 2, false),
            ],
        );
        assert_eq!(pile_up(&pool, 800), vec![500, 100, 200]);
    }

    #[test]
    fn backups_only_when_every_primary_is_out() {
        let pool = pool_of(
            Algorithm::LeastConnections,
            vec![backend(1, 1, false), backend(2, 1, true)],
        );
        pool.backends[0].state.active.store(1000, Ordering::Relaxed);
        assert_eq!(pool.picker.pick(&key(0), &pool, 0, &[]), Some(0));
        assert_eq!(pool.picker.pick(&key(0), &pool, 0, &[0]), Some(1));
        assert_eq!(pool.picker.pick(&key(0), &pool, 0, &[0, 1]), None);
    }
}
