//! Smooth weighted round robin (nginx's interleaving), shared lock-free across workers.

use std::sync::atomic::{AtomicUsize, Ordering};

use crate::route::{BackendView, FlowKey, Millis, Pick, PoolView};

/// The nginx smooth-weighted sequence is computed once per tier when the pool is built; workers
/// advance one shared atomic cursor through it. A 5:1:1 pool gives a,a,b,a,c,a,a.
#[derive(Debug)]
pub struct SmoothRoundRobin {
    primary: Schedule,
    backup: Schedule,
}

#[derive(Debug)]
struct Schedule {
    order: Vec<usize>,
    cursor: AtomicUsize,
}

impl Schedule {
    fn new(backends: &[BackendView], backup: bool) -> Self {
        let members: Vec<(usize, i64)> = backends
            .iter()
            .enumerate()
            .filter(|(_, b)| b.backup == backup)
            .map(|(i, b)| (i, i64::from(b.weight.max(1))))
            .collect();
        let total: i64 = members.iter().map(|(_, w)| w).sum();
        let mut current = vec![0i64; members.len()];
        let mut order = Vec::with_capacity(usize::try_from(total).unwrap_or(0));
        for _ in 0..total {
            let mut best = 0;
            for (slot, (_, weight)) in members.iter().enumerate() {
                current[slot] += weight;
                if current[slot] > current[best] {
                    best = slot;
                }
            }
            current[best] -= total;
            order.push(members[best].0);
        }
        Self {
            order,
            cursor: AtomicUsize::new(0),
        }
    }

    fn pick(&self, pool: &PoolView, now: Millis, tried: &[usize]) -> Option<usize> {
        // Skipping an ineligible slot consumes it, so shares among the eligible backends stay
        // proportional to their weights.
        for _ in 0..self.order.len() {
            let slot = self.cursor.fetch_add(1, Ordering::Relaxed) % self.order.len();
            let index = self.order[slot];
            if pool.eligible(index, now, tried) {
                return Some(index);
            }
        }
        None
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
