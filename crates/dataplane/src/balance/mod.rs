//! Balancing algorithms behind the [`Pick`] interface.
//!
//! Every picker is pure: it reads the pool's atomics, the time and the flow it is given, makes
//! no syscalls, takes no lock and allocates nothing, so workers on every core share one picker
//! per pool. [`build`] constructs pickers off the hot path (Maglev fills its tables there) and
//! the control plane swaps them in with the route snapshot. This module owns no file descriptor.
//!
//! Rules every picker keeps (and the property tests in `tests.rs` check for all of them):
//!
//! - it returns only backends that [`PoolView::eligible`](crate::route::PoolView::eligible)
//!   accepts — up, enabled, not passively down, under `max_connections`, not in `tried` — and
//!   `None` only when no backend is eligible;
//! - it returns a `backup` backend only when no primary is eligible: each picker keeps separate
//!   state per tier (primaries, backups) and consults the backups' only when the primaries'
//!   yields nothing;
//! - shares follow weights: over many picks on an otherwise idle pool, each eligible backend of
//!   the chosen tier gets weight / (sum of eligible weights) of them, where a backend ramping
//!   up under `slow_start` counts with its effective weight ([`weight`] says how each picker
//!   applies it).
//!
//! The pickers, each in its own file:
//!
//! | algorithm | picker | per pick |
//! |---|---|---|
//! | `round_robin` | [`SmoothRoundRobin`]: a precomputed weighted cycle, interleaved evenly even across its wrap, walked by a shared atomic cursor | O(1) |
//! | `least_connections` | [`LeastConnections`]: lowest active / weight, ties broken by the weighted cycle | O(backends) |
//! | `random` | [`WeightedRandom`]: a draw by weight from a per-thread PRNG | O(log backends) |
//! | `power_of_two` | [`PowerOfTwo`]: two weighted draws, keep the lower active / weight | O(log backends) |
//! | `least_time` | [`LeastTime`]: two weighted draws, keep the lower EWMA × (active + 1) / weight | O(log backends) |
//! | `maglev` | [`Maglev`]: weighted Maglev table per tier, keyed by client IP or five-tuple | O(1) |
//!
//! Costs are for a mostly healthy pool; when most of a tier is out, the O(1) and O(log) pickers
//! fall back to an O(backends) scan after a bounded number of misses rather than loop.
//!
//! The weights a picker uses are those of the backends it was built from: `build` and the
//! `PoolView` it serves must list the same backends in the same order, as the control plane
//! builds them together. A mismatched index is merely never eligible.

mod least_connections;
mod least_time;
mod maglev;
mod power_of_two;
mod random;
pub(crate) mod rng;
mod round_robin;
mod tier;
pub mod weight;

#[cfg(test)]
mod testkit;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use crate::route::{BackendView, Pick};

pub use least_connections::LeastConnections;
pub use least_time::LeastTime;
pub use maglev::{Maglev, DEFAULT_TABLE_SIZE as DEFAULT_MAGLEV_TABLE_SIZE};
pub use power_of_two::PowerOfTwo;
pub use random::WeightedRandom;
pub use round_robin::SmoothRoundRobin;

/// The weighted round-robin cycle over members of these weights: positions, each appearing
/// (reduced) weight times, interleaved as [`SmoothRoundRobin`] walks them. The socket fast
/// path writes the same cycle into its kernel table, so both paths share one order.
pub fn round_robin_order(weights: &[u32]) -> Vec<u32> {
    tier::interleave(weights)
}

/// What `least_time` measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeMetric {
    Connect,
    FirstByte,
}

/// What `maglev` hashes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HashKey {
    SourceIp,
    FiveTuple,
}

/// A balancing algorithm and its options, as the control plane resolved them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    RoundRobin,
    LeastConnections,
    Random,
    PowerOfTwo,
    LeastTime {
        metric: TimeMetric,
    },
    Maglev {
        hash_key: HashKey,
        table_size: usize,
    },
}

/// Builds the picker for a pool's backends. May be slow (Maglev fills its table here): call it
/// off the hot path.
pub fn build(algorithm: Algorithm, backends: &[BackendView]) -> Arc<dyn Pick> {
    match algorithm {
        Algorithm::RoundRobin => Arc::new(SmoothRoundRobin::new(backends)),
        Algorithm::LeastConnections => Arc::new(LeastConnections::new(backends)),
        Algorithm::Random => Arc::new(WeightedRandom::new(backends)),
        Algorithm::PowerOfTwo => Arc::new(PowerOfTwo::new(backends)),
        Algorithm::LeastTime { metric } => Arc::new(LeastTime::new(metric, backends)),
        Algorithm::Maglev {
            hash_key,
            table_size,
        } => Arc::new(Maglev::new(hash_key, table_size, backends)),
    }
}
