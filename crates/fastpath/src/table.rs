//! What a service's kernel table holds: the slots the hook picks from. Pure: the control plane
//! says which backends are available (the same judgement the relay's pickers make) and this
//! turns them into the slot sequence, nothing here reads a clock or touches a map.
//!
//! A table covers the first tier with an available backend: primaries, or backups when no
//! primary is available. Its [`Layout`] follows the algorithm: round robin, random and power of
//! two pick from the pool's weighted round-robin cycle (the relay's own order, see
//! [`ballast_dataplane::balance::round_robin_order`]), so a uniform slot is a weighted backend;
//! least connections compares every backend once, by sessions per weight. Each slot carries its
//! backend's weight and `max_connections`, which the hook holds against the sessions both
//! paths have.

use std::net::SocketAddr;

use ballast_dataplane::balance::round_robin_order;

/// One backend of a pool as the table builder sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate {
    pub addr: SocketAddr,
    pub weight: u32,
    pub backup: bool,
    /// Enabled, healthy, not passively down.
    pub available: bool,
    /// Index of the backend's counters in the kernel.
    pub counter: u16,
    /// `max_connections` (0: no limit).
    pub limit: u32,
}

/// One slot of a kernel table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    pub addr: SocketAddr,
    pub counter: u16,
    pub weight: u32,
    /// The most sessions the backend may have on both paths together (0: no limit); the hook
    /// passes over it at that count.
    pub limit: u32,
}

/// How a table lays its backends out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// The weighted round-robin cycle: a backend of weight w has w slots (weights reduced).
    Cycle,
    /// One slot per backend, compared by the hook.
    Members,
}

/// The tier a table covers: primaries, or backups when no primary is available.
fn serving_tier(candidates: &[Candidate]) -> Vec<&Candidate> {
    for backup in [false, true] {
        let tier: Vec<&Candidate> = candidates
            .iter()
            .filter(|c| c.backup == backup && c.available && c.weight > 0)
            .collect();
        if !tier.is_empty() {
            return tier;
        }
    }
    Vec::new()
}

fn slot_of(candidate: &Candidate) -> Slot {
    Slot {
        addr: candidate.addr,
        counter: candidate.counter,
        weight: candidate.weight,
        limit: candidate.limit,
    }
}

/// The slots for `candidates`, at most `max` of them (a cycle longer than that is cut, which
/// skews weights only for pools whose reduced weights sum past it). Empty when no backend is
/// available: the hook then leaves connects to the real listener, which answers `no_backend`.
pub fn slots(candidates: &[Candidate], layout: Layout, max: usize) -> Vec<Slot> {
    let tier = serving_tier(candidates);
    match layout {
        Layout::Members => tier.into_iter().take(max).map(slot_of).collect(),
        Layout::Cycle => {
            let weights: Vec<u32> = tier.iter().map(|c| c.weight).collect();
            round_robin_order(&weights)
                .into_iter()
                .filter_map(|position| tier.get(position as usize))
                .take(max)
                .map(|c| slot_of(c))
                .collect()
        }
    }
}

/// The most slots [`slots`] can ever give for these backends, whatever their availability:
/// the longer of the two tiers' tables (at least 1). A service's table is sized by it once.
pub fn capacity(candidates: &[Candidate], layout: Layout) -> usize {
    [false, true]
        .into_iter()
        .map(|backup| {
            let weights: Vec<u32> = candidates
                .iter()
                .filter(|c| c.backup == backup && c.weight > 0)
                .map(|c| c.weight)
                .collect();
            match layout {
                Layout::Members => weights.len(),
                Layout::Cycle if weights.is_empty() => 0,
                Layout::Cycle => round_robin_order(&weights).len(),
            }
        })
        .max()
        .unwrap_or(0)
        .max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn candidate(port: u16, weight: u32, backup: bool, available: bool) -> Candidate {
        Candidate {
            addr: SocketAddr::from(([10, 0, 0, 1], port)),
            weight,
            backup,
            available,
            counter: port,
            limit: 0,
        }
    }

    #[test]
    fn weights_become_slots_and_unavailable_backends_none() {
        let table = slots(
            &[
                candidate(1, 3, false, true),
                candidate(2, 1, false, true),
                candidate(3, 5, false, false),
                candidate(4, 1, true, true),
            ],
            Layout::Cycle,
            1024,
        );
        let count = |port| table.iter().filter(|s| s.addr.port() == port).count();
        assert_eq!((count(1), count(2), count(3), count(4)), (3, 1, 0, 0));
    }

    #[test]
    fn backups_serve_only_when_no_primary_is_available() {
        let table = slots(
            &[candidate(1, 1, false, false), candidate(2, 2, true, true)],
            Layout::Cycle,
            1024,
        );
        assert_eq!(table.len(), 1, "weights reduce: 2 alone is 1");
        assert_eq!(table[0].addr.port(), 2);
        assert!(slots(&[candidate(1, 1, false, false)], Layout::Cycle, 1024).is_empty());
    }

    #[test]
    fn capacity_is_the_longer_tier_whatever_is_available() {
        let pool = [
            candidate(1, 3, false, false),
            candidate(2, 1, false, true),
            candidate(3, 2, true, false),
            candidate(4, 3, true, false),
        ];
        assert_eq!(
            capacity(&pool, Layout::Cycle),
            5,
            "backups 2 + 3 against primaries 3 + 1"
        );
        assert_eq!(capacity(&[], Layout::Cycle), 1);
        // With every backend up, the table fills it: backups serve once the primaries go.
        let backups_up = [
            candidate(1, 3, false, false),
            candidate(2, 1, false, false),
            candidate(3, 2, true, true),
            candidate(4, 3, true, true),
        ];
        assert_eq!(
            slots(&backups_up, Layout::Cycle, usize::MAX).len(),
            capacity(&pool, Layout::Cycle)
        );
    }

    #[test]
    fn members_are_one_slot_each_with_weight_and_limit() {
        let mut heavy = candidate(1, 3, false, true);
        heavy.limit = 7;
        let pool = [
            heavy,
            candidate(2, 1, false, true),
            candidate(3, 1, true, true),
        ];
        let table = slots(&pool, Layout::Members, 64);
        assert_eq!(table.len(), 2, "the backup stays out while primaries serve");
        assert_eq!((table[0].weight, table[0].limit), (3, 7));
        assert_eq!(capacity(&pool, Layout::Members), 2);
    }

    proptest! {
        #[test]
        fn the_table_is_the_relays_round_robin_cycle(weights in prop::collection::vec(1u32..=20, 1..8)) {
            let candidates: Vec<Candidate> = weights
                .iter()
                .enumerate()
                .map(|(i, &w)| candidate(i as u16 + 1, w, false, true))
                .collect();
            let table = slots(&candidates, Layout::Cycle, usize::MAX);
            let order = round_robin_order(&weights);
            prop_assert_eq!(table.len(), order.len());
            for (slot, position) in table.iter().zip(order) {
                prop_assert_eq!(slot.addr.port(), position as u16 + 1);
            }
        }
    }
}
