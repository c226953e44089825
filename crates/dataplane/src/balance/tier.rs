//! What every picker shares: one tier (primaries or backups) of a pool, frozen at build time,
//! with its weights laid out for sampling and interleaving.

use std::cmp::{Ordering as CmpOrdering, Reverse};
use std::collections::BinaryHeap;
use std::sync::atomic::Ordering;

use super::{rng, weight};
use crate::route::{BackendView, Millis, PoolView};

/// Random draws tried before a weighted sample falls back to an exact scan. Each draw that
/// lands on an ineligible backend is simply rejected, which keeps the distribution exact among
/// the eligible ones; the bound caps the cost when most of the tier is out.
const REJECTION_DRAWS: usize = 8;

/// One backend of a tier as a picker sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Member {
    /// Index into `PoolView::backends`.
    pub index: usize,
    /// As configured; what the tier's sampling and cycles are built from.
    pub weight: u32,
}

impl Member {
    /// The weight to compare loads by now, in `weight::WEIGHT_SCALE` parts.
    pub fn effective_weight(&self, pool: &PoolView, now: Millis) -> u32 {
        weight::of_backend(pool, self.index, now).0
    }

    /// Whether a draw or a turn that landed on this member keeps it: always at full weight,
    /// with probability effective / full while it ramps up.
    pub fn keeps_turn(&self, pool: &PoolView, now: Millis) -> bool {
        let (effective, full) = weight::of_backend(pool, self.index, now);
        weight::keeps(effective, full, rng::below)
    }
}

#[derive(Debug, Default)]
pub(crate) struct Tier {
    members: Box<[Member]>,
    /// `cumulative[i]` is the sum of the weights of members `0..=i`, for binary-search sampling.
    cumulative: Box<[u64]>,
}

impl Tier {
    pub fn new(backends: &[BackendView], backup: bool) -> Self {
        let members: Box<[Member]> = backends
            .iter()
            .enumerate()
            .filter(|(_, b)| b.backup == backup)
            .map(|(index, b)| Member {
                index,
                weight: b.weight.max(1),
            })
            .collect();
        let cumulative = members
            .iter()
            .scan(0u64, |sum, m| {
                *sum += u64::from(m.weight);
                Some(*sum)
            })
            .collect();
        Self {
            members,
            cumulative,
        }
    }

    pub fn members(&self) -> &[Member] {
        &self.members
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    pub fn member(&self, position: usize) -> Option<Member> {
        self.members.get(position).copied()
    }

    fn total(&self) -> u64 {
        self.cumulative.last().copied().unwrap_or(0)
    }

    /// A member drawn with probability proportional to its effective weight among the
    /// *eligible* members, or `None` when none is eligible.
    pub fn weighted_random(&self, pool: &PoolView, now: Millis, tried: &[usize]) -> Option<Member> {
        let total = self.total();
        if total == 0 {
            return None;
        }
        for _ in 0..REJECTION_DRAWS {
            let ticket = rng::below(total);
            let position = self.cumulative.partition_point(|&c| c <= ticket);
            if let Some(m) = self.member(position) {
                if pool.eligible(m.index, now, tried) && m.keeps_turn(pool, now) {
                    return Some(m);
                }
            }
        }
        self.weighted_random_exact(pool, now, tried)
    }

    /// Two passes over the tier: weigh the eligible members by effective weight, then walk to
    /// the drawn ticket.
    fn weighted_random_exact(
        &self,
        pool: &PoolView,
        now: Millis,
        tried: &[usize],
    ) -> Option<Member> {
        let eligible_total: u64 = self
            .members
            .iter()
            .filter(|m| pool.eligible(m.index, now, tried))
            .map(|m| u64::from(m.effective_weight(pool, now)))
            .sum();
        if eligible_total == 0 {
            return None;
        }
        let mut ticket = rng::below(eligible_total);
        let mut last = None;
        for m in self.members.iter() {
            if !pool.eligible(m.index, now, tried) {
                continue;
            }
            let weight = u64::from(m.effective_weight(pool, now));
            if ticket < weight {
                return Some(*m);
            }
            ticket -= weight;
            last = Some(*m);
        }
        // Health changed between the passes; any backend still eligible will do.
        last
    }
}

/// Sessions currently on a backend, or `u64::MAX` for an index the pool does not have (such a
/// backend is never eligible, so this only keeps the comparison total).
pub(crate) fn active(pool: &PoolView, index: usize) -> u64 {
    pool.backends
        .get(index)
        .map_or(u64::MAX, |b| b.state.active.load(Ordering::Relaxed))
}

/// Compares `load_a / weight_a` with `load_b / weight_b` without division or rounding.
pub(crate) fn cmp_per_weight(
    load_a: u128,
    weight_a: u32,
    load_b: u128,
    weight_b: u32,
) -> CmpOrdering {
    // least_time passes EWMA × (active + 1), which nears 2^128 only for absurd values; saturating
    // keeps those ordered (as very heavy) instead of wrapping around to look light.
    let a = load_a.saturating_mul(u128::from(weight_b.max(1)));
    let b = load_b.saturating_mul(u128::from(weight_a.max(1)));
    a.cmp(&b)
}

pub(crate) fn gcd(mut a: u32, mut b: u32) -> u32 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// Weights divided by their common divisor: 2:2:4 schedules exactly like 1:1:2, only shorter.
pub(crate) fn reduced_weights(weights: &[u32]) -> Vec<u32> {
    let common = weights.iter().fold(0, |g, &w| gcd(g, w.max(1))).max(1);
    weights.iter().map(|&w| w.max(1) / common).collect()
}

/// A cyclic order in which position `i` appears `weights[i]` times, spread as evenly as the
/// weights allow, including across the wrap from the end back to the start.
///
/// nginx's smooth weighted round robin is smooth within one cycle but every backend's credit
/// peaks at the cycle boundary, so the heavy backend ends one cycle and starts the next: a 5:1:1
/// pool runs a,a,b,a,c,a,a,a,a,b,… with four a's in a row. Here groups are merged like a Huffman
/// tree, lightest first, each merge spreading the lighter group's slots evenly (and centred)
/// through the heavier one's; 5:1:1 becomes a,c,a,a,a,b,a, whose longest cyclic run of a is 3,
/// the least possible (five a's between two others). Building costs O(total weight × depth).
pub(crate) fn interleave(weights: &[u32]) -> Vec<u32> {
    let weights = reduced_weights(weights);
    let mut groups: Vec<Vec<u32>> = Vec::with_capacity(weights.len());
    let mut heap = BinaryHeap::with_capacity(weights.len());
    for (position, &w) in weights.iter().enumerate() {
        let Ok(position) = u32::try_from(position) else {
            break;
        };
        heap.push(Reverse((u64::from(w), groups.len())));
        groups.push(vec![position; w as usize]);
    }
    // Ends after popping the last group alone; it is also the last one pushed, hence the
    // `groups.pop()` below.
    while let (Some(Reverse((light_w, light))), Some(Reverse((heavy_w, heavy)))) =
        (heap.pop(), heap.pop())
    {
        let merged = spread(
            &std::mem::take(&mut groups[heavy]),
            &std::mem::take(&mut groups[light]),
        );
        heap.push(Reverse((light_w + heavy_w, groups.len())));
        groups.push(merged);
    }
    groups.pop().unwrap_or_default()
}

/// Places `minor`'s elements at evenly spaced, centred positions among `major`'s, keeping both
/// orders: the k minor slots land at ⌊(2j+1)·n / 2k⌋.
fn spread(major: &[u32], minor: &[u32]) -> Vec<u32> {
    let n = major.len() + minor.len();
    let k = minor.len();
    let mut out = Vec::with_capacity(n);
    let (mut major_it, mut minor_it) = (major.iter(), minor.iter());
    let mut next_minor = 0;
    for slot in 0..n {
        let minor_slot = if next_minor < k {
            (2 * next_minor + 1) * n / (2 * k)
        } else {
            usize::MAX
        };
        let item = if slot == minor_slot {
            next_minor += 1;
            minor_it.next()
        } else {
            major_it.next()
        };
        // The positions are distinct and below n, so each iterator yields exactly its length.
        if let Some(&v) = item.or_else(|| major_it.next()).or_else(|| minor_it.next()) {
            out.push(v);
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Longest run of `who` in `order` read as a cycle.
    pub(crate) fn max_cyclic_run(order: &[u32], who: u32) -> usize {
        if order.iter().all(|&v| v == who) {
            return order.len();
        }
        let start = order.iter().position(|&v| v != who).unwrap();
        let (mut best, mut run) = (0, 0);
        for i in 0..order.len() {
            if order[(start + i) % order.len()] == who {
                run += 1;
                best = best.max(run);
            } else {
                run = 0;
            }
        }
        best
    }

    #[test]
    fn five_one_one_is_spread_with_at_most_three_in_a_row() {
        let order = interleave(&[5, 1, 1]);
        assert_eq!(order.len(), 7);
        assert_eq!(order.iter().filter(|&&v| v == 0).count(), 5);
        // Five a's need two separators; ⌈5/2⌉ = 3 is the shortest longest run possible.
        assert_eq!(max_cyclic_run(&order, 0), 3);
        assert_eq!(max_cyclic_run(&order, 1), 1);
        assert_eq!(max_cyclic_run(&order, 2), 1);
    }

    #[test]
    fn common_divisors_shorten_the_cycle() {
        assert_eq!(interleave(&[4, 2, 2]).len(), 4);
        let mut equal = interleave(&[3, 3, 3]);
        equal.sort_unstable();
        assert_eq!(equal, vec![0, 1, 2]);
        assert!(interleave(&[]).is_empty());
    }

    #[test]
    fn cmp_per_weight_cross_multiplies() {
        assert_eq!(cmp_per_weight(2, 2, 1, 1), CmpOrdering::Equal);
        assert_eq!(cmp_per_weight(3, 2, 1, 1), CmpOrdering::Greater);
        assert_eq!(cmp_per_weight(0, 1, 0, 9), CmpOrdering::Equal);
        assert_eq!(cmp_per_weight(u128::MAX, 1, 0, 1), CmpOrdering::Greater);
    }

    proptest! {
        #[test]
        fn interleave_counts_each_weight_exactly(weights in prop::collection::vec(1u32..=40, 1..12)) {
            let order = interleave(&weights);
            let reduced = reduced_weights(&weights);
            prop_assert_eq!(order.len() as u64, reduced.iter().map(|&w| u64::from(w)).sum::<u64>());
            for (p, &w) in reduced.iter().enumerate() {
                prop_assert_eq!(order.iter().filter(|&&v| v as usize == p).count(), w as usize);
            }
        }

        #[test]
        fn a_dominant_backend_gets_the_shortest_possible_runs(
            (heavy, light) in (1usize..6).prop_flat_map(|light| (light as u32..60, Just(light))),
        ) {
            let mut weights = vec![heavy];
            weights.resize(light + 1, 1);
            let order = interleave(&weights);
            let others = light as u32;
            let bound = heavy.div_ceil(others) as usize;
            prop_assert!(max_cyclic_run(&order, 0) <= bound,
                "{:?}: run {} > {}", weights, max_cyclic_run(&order, 0), bound);
        }
    }
}
