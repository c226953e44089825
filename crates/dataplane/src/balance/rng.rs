//! A per-thread PRNG for the randomised pickers.
//!
//! Workers must not share a generator (a shared atomic state would bounce its cache line between
//! cores on every pick) and the data plane takes no `rand` dependency, so each thread keeps a
//! splitmix64 state in a thread-local. Balancing needs spread, not secrecy: splitmix64 passes
//! BigCrush and costs an add and three multiply-xorshifts.

use std::cell::Cell;
use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hash, Hasher};
use std::time::{SystemTime, UNIX_EPOCH};

const GOLDEN_GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;

thread_local! {
    // 0 means "not seeded yet": seeding is lazy so threads that never pick pay nothing.
    static STATE: Cell<u64> = const { Cell::new(0) };
}

/// The splitmix64 / murmur3 finaliser: a bijection on u64 with full avalanche.
pub(crate) fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Two threads started in the same nanosecond still differ: the std hasher's keys are random
/// per process and per `RandomState`, and the thread id separates threads.
fn fresh_seed() -> u64 {
    let mut hasher = RandomState::new().build_hasher();
    std::thread::current().id().hash(&mut hasher);
    if let Ok(since) = SystemTime::now().duration_since(UNIX_EPOCH) {
        since.as_nanos().hash(&mut hasher);
    }
    hasher.finish() | 1
}

pub(crate) fn next_u64() -> u64 {
    STATE.with(|cell| {
        let mut state = cell.get();
        if state == 0 {
            state = fresh_seed();
        }
        state = state.wrapping_add(GOLDEN_GAMMA);
        cell.set(state);
        mix64(state)
    })
}

/// Uniform in `0..bound` (0 when `bound` is 0). Lemire's multiply-shift: no division, and the
/// bias (at most bound / 2^64) is far below anything a balancer could notice.
pub(crate) fn below(bound: u64) -> u64 {
    ((u128::from(next_u64()) * u128::from(bound)) >> 64) as u64
}

/// Makes this thread's sequence reproducible, so a failing statistical test can be replayed.
#[cfg(test)]
pub(crate) fn reseed(seed: u64) {
    STATE.with(|cell| cell.set(seed | 1));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn below_stays_in_range_and_covers_it() {
        reseed(7);
        let mut seen = [0u32; 10];
        for _ in 0..10_000 {
            let v = below(10);
            assert!(v < 10);
            seen[v as usize] += 1;
        }
        assert!(seen.iter().all(|&n| (800..1200).contains(&n)), "{seen:?}");
        assert_eq!(below(0), 0);
    }

    #[test]
    fn threads_get_different_streams() {
        let a = std::thread::spawn(next_u64).join().ok();
        let b = std::thread::spawn(next_u64).join().ok();
        assert!(a.is_some());
        assert_ne!(a, b);
    }
}
