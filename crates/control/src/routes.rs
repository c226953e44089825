//! Configuration → route snapshot.
//!
//! Builds the data plane's [`RouteTable`] from a resolved [`Config`]: one [`PoolView`] per pool
//! with its picker (Maglev tables are filled here, off the hot path), one [`ListenerRoute`] per
//! listener. Live state (`BackendState`, `ListenerState`) comes from a [`StateRegistry`] so that
//! a backend or listener that stays across a reload keeps its health, counters and active
//! sessions. This module owns no file descriptor.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use ballast_dataplane::balance;
use ballast_dataplane::route::{
    BackendState, BackendView, ListenerRoute, ListenerState, PoolView, RouteTable,
};

use crate::config::Config;

/// Live state that outlives any one snapshot, keyed by configuration identity.
#[derive(Debug, Default)]
pub struct StateRegistry {
    backends: HashMap<(String, SocketAddr), Arc<BackendState>>,
    listeners: HashMap<String, Arc<ListenerState>>,
}

impl StateRegistry {
    pub fn backend(&mut self, pool: &str, addr: SocketAddr) -> Arc<BackendState> {
        self.backends
            .entry((pool.to_string(), addr))
            .or_default()
            .clone()
    }

    pub fn listener(&mut self, name: &str) -> Arc<ListenerState> {
        self.listeners.entry(name.to_string()).or_default().clone()
    }

    pub fn get_backend(&self, pool: &str, addr: SocketAddr) -> Option<&Arc<BackendState>> {
        self.backends.get(&(pool.to_string(), addr))
    }

    /// Forgets the state of backends and listeners that `config` no longer has, so that one
    /// added back later starts from zero (a new series to Prometheus) and churn does not grow
    /// the registry. Sessions still running to a removed backend keep its state alive through
    /// their own route snapshot.
    pub fn retain(&mut self, config: &Config) {
        self.backends.retain(|(pool, addr), _| {
            config
                .pool(pool)
                .is_some_and(|p| p.backends.iter().any(|b| b.address == *addr))
        });
        self.listeners
            .retain(|name, _| config.listeners.iter().any(|l| l.name == *name));
    }
}

/// Builds the snapshot for `config`. The loader guarantees every listener's pool exists; a
/// listener whose pool is missing anyway is left out rather than panicking.
pub fn build_routes(config: &Config, registry: &mut StateRegistry) -> RouteTable {
    let pools: HashMap<&str, Arc<PoolView>> = config
        .pools
        .iter()
        .map(|pool| {
            let backends: Vec<BackendView> = pool
                .backends
                .iter()
                .map(|b| BackendView {
                    addr: b.address,
                    weight: b.weight,
                    backup: b.backup,
                    max_connections: b.max_connections,
                    state: registry.backend(&pool.name, b.address),
                })
                .collect();
            let picker = balance::build(pool.algorithm, &backends);
            let view = PoolView {
                name: pool.name.as_str().into(),
                backends: backends.into(),
                picker,
                retries: pool.retries,
                passive: pool.passive,
            };
            (pool.name.as_str(), Arc::new(view))
        })
        .collect();
    let listeners = config.listeners.iter().filter_map(|l| {
        let pool = pools.get(l.pool.as_str())?.clone();
        Some(ListenerRoute {
            name: l.name.as_str().into(),
            protocol: l.protocol,
            pool,
            connect_timeout: l.connect_timeout,
            idle_timeout: l.idle_timeout,
            max_connections: l.max_connections,
            state: registry.listener(&l.name),
        })
    });
    RouteTable::new(listeners)
}
