//! Balancing algorithms behind the [`Pick`] interface.
//!
//! Every picker is pure: it reads the pool's atomics and the time it is given, makes no
//! syscalls and takes no lock, so workers on every core share one picker per pool. Pickers are
//! built by the control plane off the hot path (Maglev tables included) and swapped in with
//! the route snapshot. This module owns no file descriptor.

mod round_robin;

use std::sync::Arc;

use crate::route::{BackendView, Pick};

pub use round_robin::SmoothRoundRobin;

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
    // Until the other algorithms land, every pool balances round robin.
    let _ = algorithm;
    Arc::new(SmoothRoundRobin::new(backends))
}
