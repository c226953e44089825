//! Configuration → route snapshot.
//!
//! Builds the data plane's [`RouteTable`] from a resolved [`Config`]: one [`PoolView`] per pool
//! with its picker (Maglev tables are filled here, off the hot path), one [`ListenerRoute`] per
//! listener. Live state (`BackendState`, `ListenerState`) comes from a [`StateRegistry`] so that
//! a backend or listener that stays across a reload keeps its health, counters and active
//! sessions. This module owns no file descriptor.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use ballast_dataplane::balance::{self, weight};
use ballast_dataplane::queue::PoolQueue;
use ballast_dataplane::route::{
    BackendState, BackendView, ListenerRoute, ListenerState, Millis, PoolView, RouteTable,
    UdpSettings,
};

use ballast_dataplane::proto::acl::{Acl, CidrSet};
use ballast_dataplane::proto::rate_limit::{Rate, SourceLimits};
use ballast_dataplane::route::AcceptProxy;
use ballast_dataplane::sni::{SniPattern, SniRoute, SniTable};
use ballast_dataplane::udp::offload::FlowOffload;

use crate::config::{Backend, Config, ListenerAccess, ListenerFastpath, Pool, TlsPassthrough};

/// Live state that outlives any one snapshot, keyed by configuration identity.
#[derive(Debug, Default)]
pub struct StateRegistry {
    backends: HashMap<(String, SocketAddr), Arc<BackendState>>,
    listeners: HashMap<String, Arc<ListenerState>>,
    /// Each pool's wait queue (`queue`), kept across reloads by pool name.
    queues: HashMap<String, Arc<PoolQueue>>,
    /// The kernel's UDP flow forwarding when it is on: every listener with `fastpath:
    /// udp_offload` gets it in its route.
    pub udp_offload: Option<Arc<dyn FlowOffload>>,
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

    /// The wait queue of `pool` (made on first use, kept while the pool exists).
    pub fn queue(&mut self, pool: &str) -> Arc<PoolQueue> {
        self.queues.entry(pool.to_string()).or_default().clone()
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
        self.queues.retain(|name, _| config.pool(name).is_some());
    }
}

/// The data plane's view of one pool: its backends with their live state, and its picker
/// (built here, which for Maglev fills the tables: call it off the hot path).
pub fn pool_view(pool: &Pool, registry: &mut StateRegistry) -> PoolView {
    let backends: Vec<BackendView> = pool
        .backends
        .iter()
        .map(|b| {
            let state = registry.backend(&pool.name, b.address);
            BackendView {
                addr: b.address,
                weight: snapshot_weight(b, &state),
                backup: b.backup,
                max_connections: b.max_connections,
                state,
            }
        })
        .collect();
    let picker = balance::build(pool.algorithm, &backends);
    PoolView {
        name: pool.name.as_str().into(),
        backends: backends.into(),
        picker,
        retries: pool.retries,
        passive: pool.passive,
        send_proxy: pool.send_proxy,
        slow_start: pool.slow_start_ms(),
        queue: pool.queue,
        waiting: registry.queue(&pool.name),
        backend_tcp: pool.backend_tcp,
    }
}

/// The weight a snapshot gives `backend`: as configured, scaled by an agent's percentage
/// (0: no new sessions). An agent's change takes effect in the snapshot built after it (see
/// `Control::reweigh`): the pickers lay out their weights at build.
pub fn snapshot_weight(backend: &Backend, state: &BackendState) -> u32 {
    let percent = state.agent_weight_percent.load(Ordering::Relaxed);
    crate::health::agent::effective_weight(backend.weight, percent)
}

/// The weight pickers give `backend` at `now`, in [`weight::WEIGHT_SCALE`] parts: its
/// [`snapshot_weight`], ramped by the pool's slow start of `slow_start` ms.
pub fn live_weight(
    backend: &Backend,
    state: &BackendState,
    slow_start: Millis,
    now: Millis,
) -> u32 {
    match snapshot_weight(backend, state) {
        0 => 0,
        w => weight::effective_weight(w, state, slow_start, now),
    }
}

/// Builds the snapshot for `config`. The loader guarantees every listener's pool exists; a
/// listener whose pool is missing anyway is left out rather than panicking.
pub fn build_routes(config: &Config, registry: &mut StateRegistry) -> RouteTable {
    let pools: HashMap<&str, Arc<PoolView>> = config
        .pools
        .iter()
        .map(|pool| (pool.name.as_str(), Arc::new(pool_view(pool, registry))))
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
            client_tcp: l.client_tcp,
            max_lifetime: l.max_lifetime,
            access_log: config.access_log.lines,
            udp: l
                .udp
                .map(|u| UdpSettings {
                    idle_timeout: u.idle_timeout,
                    max_flows: u.max_flows,
                    responses: u.responses,
                    reply_timeout: u.reply_timeout,
                    retries: u.retries,
                    per_datagram: u.per_datagram,
                    datagram_rate: u.datagrams_per_second_per_flow.map(Rate::per_second),
                })
                .unwrap_or_default(),
            tls: l
                .access
                .tls
                .as_ref()
                .map(|tls| Arc::new(sni_table(tls, &pools))),
            accept_proxy: l.access.accept_proxy.as_ref().map(|p| AcceptProxy {
                trusted: Arc::new(CidrSet::new(p.trusted.iter().copied())),
                timeout: p.timeout,
            }),
            acl: (!l.access.allow.is_empty() || !l.access.deny.is_empty()).then(|| {
                Arc::new(Acl::new(
                    l.access.allow.iter().copied(),
                    l.access.deny.iter().copied(),
                ))
            }),
            per_source: per_source_limits(&l.access).or_else(|| {
                let rate = l.udp?.new_flows_per_second_per_source?;
                Some(SourceLimits {
                    max_connections: None,
                    rate: Some(Rate::per_second(rate)),
                })
            }),
            udp_offload: registry
                .udp_offload
                .clone()
                .filter(|_| l.fastpath == ListenerFastpath::UdpOffload),
            state: registry.listener(&l.name),
        })
    });
    RouteTable::new(listeners)
}

fn sni_table(tls: &TlsPassthrough, pools: &HashMap<&str, Arc<PoolView>>) -> SniTable {
    // The loader checked every pattern and pool name; anything that slipped through is left
    // out rather than routed somewhere unintended.
    let routes = tls
        .routes
        .iter()
        .filter_map(|r| {
            Some(SniRoute {
                pattern: SniPattern::parse(&r.sni)?,
                alpn: r.alpn.clone(),
                pool: pools.get(r.pool.as_str())?.clone(),
            })
        })
        .collect();
    let default_pool = tls
        .default_pool
        .as_deref()
        .and_then(|name| pools.get(name).cloned());
    SniTable::new(routes, default_pool, tls.peek_timeout)
}

fn per_source_limits(access: &ListenerAccess) -> Option<SourceLimits> {
    let max_connections = access.max_connections_per_source;
    let rate = access
        .new_connections_per_second_per_source
        .map(Rate::per_second);
    (max_connections.is_some() || rate.is_some()).then_some(SourceLimits {
        max_connections,
        rate,
    })
}
