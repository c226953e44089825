//! Pools and flows for the pickers' tests.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;

use super::{build, Algorithm, HashKey, TimeMetric};
use crate::route::{
    AdminState, BackendState, BackendView, ConnectError, FlowKey, Millis, PassivePolicy, PoolView,
    Protocol,
};

/// A backend at 10.0.(n / 256).(n % 256):8000+n.
pub fn backend(n: u16, weight: u32, backup: bool) -> BackendView {
    let [hi, lo] = n.to_be_bytes();
    BackendView {
        addr: SocketAddr::new(
            IpAddr::V4(Ipv4Addr::new(10, 0, hi, lo)),
            8000u16.wrapping_add(n),
        ),
        weight,
        backup,
        max_connections: None,
        state: Arc::new(BackendState::new()),
    }
}

pub fn pool_of(algorithm: Algorithm, backends: Vec<BackendView>) -> PoolView {
    let picker = build(algorithm, &backends);
    pool_with(picker, backends)
}

/// The `slow_start` window of [`ramping_pool`], in ms.
pub const SLOW_START: Millis = 10_000;

/// A pool with a [`SLOW_START`] window whose backend 0 came back (from active health down)
/// `elapsed` ms before [`NOW`]; the others were never away.
pub fn ramping_pool(algorithm: Algorithm, backends: Vec<BackendView>, elapsed: Millis) -> PoolView {
    let back = NOW - elapsed;
    backends[0].state.set_healthy_at(false, back - 1);
    backends[0].state.set_healthy_at(true, back);
    PoolView {
        slow_start: SLOW_START,
        queue: None,
        waiting: Default::default(),
        backend_tcp: Default::default(),
        ..pool_of(algorithm, backends)
    }
}

/// A test pool around an already built picker.
fn pool_with(picker: Arc<dyn crate::route::Pick>, backends: Vec<BackendView>) -> PoolView {
    PoolView {
        name: Arc::from("test"),
        backends: backends.into(),
        picker,
        retries: 1,
        passive: None,
        send_proxy: None,
        slow_start: 0,
        queue: None,
        waiting: Default::default(),
        backend_tcp: Default::default(),
    }
}

/// Picks `n` times, each pick opening a session that stays open (active + 1), as long-lived
/// connections pile up; returns every backend's active count.
pub fn pile_up(pool: &PoolView, n: usize) -> Vec<u64> {
    use std::sync::atomic::Ordering;
    for _ in 0..n {
        let Some(i) = pool.picker.pick(&key(0), pool, NOW, &[]) else {
            panic!("no backend picked while every one is eligible");
        };
        pool.backends[i]
            .state
            .active
            .fetch_add(1, Ordering::Relaxed);
    }
    pool.backends
        .iter()
        .map(|b| b.state.active.load(Ordering::Relaxed))
        .collect()
}

/// A TCP flow from a client derived from `n` to a fixed listener address.
pub fn key(n: u64) -> FlowKey {
    let [a, b, c, d, e, f, ..] = n.to_le_bytes();
    FlowKey {
        protocol: Protocol::Tcp,
        client: SocketAddr::new(
            IpAddr::V4(Ipv4Addr::new(a, b, c, d)),
            u16::from_le_bytes([e, f]),
        ),
        local: SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)), 5432),
    }
}

/// Every algorithm with each of its options.
pub const ALGORITHMS: [Algorithm; 9] = [
    Algorithm::RoundRobin,
    Algorithm::LeastConnections,
    Algorithm::Random,
    Algorithm::PowerOfTwo,
    Algorithm::LeastTime {
        metric: TimeMetric::Connect,
    },
    Algorithm::LeastTime {
        metric: TimeMetric::FirstByte,
    },
    Algorithm::Maglev {
        hash_key: HashKey::SourceIp,
        table_size: 1009,
    },
    Algorithm::Maglev {
        hash_key: HashKey::FiveTuple,
        table_size: 65537,
    },
    Algorithm::Maglev {
        hash_key: HashKey::FiveTuple,
        table_size: 0,
    },
];

/// The time the tests pick at; passive outages are set relative to it.
pub const NOW: Millis = 1_000_000;

/// Why a generated backend may be unable to take a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Condition {
    Up,
    Unhealthy,
    Draining,
    Disabled,
    PassivelyDown,
    AtMaxConnections,
    Tried,
}

impl Condition {
    /// Puts `b` in this condition; returns whether to list it in `tried` instead.
    pub fn apply(self, b: &mut BackendView) -> bool {
        match self {
            Condition::Up => {}
            Condition::Unhealthy => b.state.set_healthy(false),
            Condition::Draining => b.state.set_admin(AdminState::Draining),
            Condition::Disabled => b.state.set_admin(AdminState::Disabled),
            Condition::PassivelyDown => {
                let policy = PassivePolicy {
                    max_fails: 1,
                    fail_timeout: Duration::from_secs(10),
                };
                b.state
                    .record_connect_failure(ConnectError::Refused, NOW, Some(policy));
            }
            Condition::AtMaxConnections => {
                b.max_connections = Some(2);
                b.state
                    .active
                    .store(2, std::sync::atomic::Ordering::Relaxed);
            }
            Condition::Tried => return true,
        }
        false
    }
}

pub fn condition() -> impl Strategy<Value = Condition> {
    prop_oneof![
        6 => Just(Condition::Up),
        1 => Just(Condition::Unhealthy),
        1 => Just(Condition::Draining),
        1 => Just(Condition::Disabled),
        1 => Just(Condition::PassivelyDown),
        1 => Just(Condition::AtMaxConnections),
        1 => Just(Condition::Tried),
    ]
}

/// (weight, backup, condition) per backend.
pub type Spec = (u32, bool, Condition);

pub fn specs(max: usize) -> impl Strategy<Value = Vec<Spec>> {
    prop::collection::vec((1u32..=10, prop::bool::weighted(0.3), condition()), 1..=max)
}

/// Builds the pool the specs describe (the picker sees every backend as configured: conditions
/// are live state, applied after the build) and the `tried` list.
pub fn scenario(algorithm: Algorithm, specs: &[Spec]) -> (PoolView, Vec<usize>) {
    let mut backends: Vec<BackendView> = specs
        .iter()
        .enumerate()
        .map(|(i, &(weight, backup, _))| backend(i as u16, weight, backup))
        .collect();
    let picker = build(algorithm, &backends);
    let mut tried = Vec::new();
    for (i, (b, &(_, _, condition))) in backends.iter_mut().zip(specs).enumerate() {
        if condition.apply(b) {
            tried.push(i);
        }
    }
    (pool_with(picker, backends), tried)
}

/// The tier a correct picker must choose from: eligible primaries, or else eligible backups.
pub fn expected_tier(pool: &PoolView, tried: &[usize]) -> Vec<usize> {
    let eligible = |backup: bool| -> Vec<usize> {
        pool.tier(backup)
            .filter(|&i| pool.eligible(i, NOW, tried))
            .collect()
    };
    let primaries = eligible(false);
    if primaries.is_empty() {
        eligible(true)
    } else {
        primaries
    }
}
