//! Route snapshots for the data-plane tests: a round-robin pool and a listener route with
//! the defaults tests start from (override fields with struct update syntax).
#![allow(dead_code)]

// The one skip policy of the integration tests (a "skipped: ..." line, or a failure under
// CI=true), shared with the ballast crate's tests.
#[path = "../../../ballast/tests/common/require.rs"]
pub mod require;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ballast_dataplane::balance::{self, Algorithm};
use ballast_dataplane::route::{
    BackendState, BackendView, ListenerRoute, ListenerState, PassivePolicy, PoolView, Protocol,
};

/// A round-robin pool over `backends`, weight 1 each, every one with fresh state.
pub fn round_robin_pool(
    backends: &[SocketAddr],
    retries: u32,
    passive: Option<PassivePolicy>,
) -> Arc<PoolView> {
    let views: Vec<BackendView> = backends
        .iter()
        .map(|addr| BackendView {
            addr: *addr,
            weight: 1,
            backup: false,
            max_connections: None,
            state: Arc::new(BackendState::new()),
        })
        .collect();
    let picker = balance::build(Algorithm::RoundRobin, &views);
    Arc::new(PoolView {
        name: "pool".into(),
        backends: views.into(),
        picker,
        retries,
        passive,
        send_proxy: None,
        slow_start: 0,
        queue: None,
        waiting: Default::default(),
        backend_tcp: Default::default(),
    })
}

/// A listener route to `pool` with no limits, no preface and a fresh listener state.
pub fn listener_route(name: &str, protocol: Protocol, pool: Arc<PoolView>) -> ListenerRoute {
    ListenerRoute {
        name: name.into(),
        protocol,
        pool,
        connect_timeout: Duration::from_secs(2),
        idle_timeout: Duration::from_secs(60),
        max_connections: None,
        client_tcp: Default::default(),
        max_lifetime: None,
        access_log: Default::default(),
        udp: Default::default(),
        tls: None,
        accept_proxy: None,
        acl: None,
        per_source: None,
        udp_offload: None,
        state: Arc::new(ListenerState::default()),
    }
}
