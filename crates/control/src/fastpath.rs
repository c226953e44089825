//! The control plane's side of the socket fast path: whether it is on, and the kernel tables
//! of the listeners with `fastpath: socket`, kept equal to what the relay would choose from.
//!
//! Tables are rebuilt off the hot path from the same live backend state the relay's pickers
//! read (`BackendState::is_available`: enabled, healthy, not passively down), at start, after
//! every reload, and every [`SYNC_INTERVAL`] in between, so a backend that goes down, is
//! drained or disabled leaves the hook's view within that interval. An unchanged table is not
//! rewritten. `mode: auto` serves through the relay when the programs cannot be loaded (the
//! reason is logged, in `/api/v1/status` and `ballast_fastpath_enabled`); `mode: required`
//! refuses to start.
//!
//! File descriptors: the BPF programs, maps and links belong to the [`SocketLb`] held here;
//! dropping it (on drain, or when the process dies) detaches every program.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use ballast_dataplane::balance::Algorithm as PoolAlgorithm;
use ballast_dataplane::route::{Millis, Protocol};
use ballast_fastpath::{
    table, Algorithm, Candidate, FastpathError, ServiceAddr, SocketLb, Transport, MAX_COUNTERS,
};
use serde::Serialize;

use crate::config::{Config, FastpathMode, ListenerFastpath};
use crate::routes::StateRegistry;

/// How often the kernel tables are compared with the backends' live state.
pub const SYNC_INTERVAL: Duration = Duration::from_millis(100);

/// What `/api/v1/status` says of the socket fast path.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct SocketLbStatus {
    pub enabled: bool,
    /// Why it is off; `None` when it is on.
    pub reason: Option<String>,
    /// The cgroup whose processes are steered, when on.
    pub cgroup: Option<String>,
}

pub struct SocketFastpath {
    /// The configuration it started from asked for the socket fast path (whether or not it
    /// could attach).
    requested: bool,
    lb: Option<SocketLb>,
    off_reason: Option<String>,
    /// Kernel counter index of each (pool, backend), stable for the process's life so a
    /// backend keeps its count across reloads.
    counters: HashMap<(String, SocketAddr), u16>,
    /// The services of each listener with `fastpath: socket`, and their table capacity.
    services: HashMap<String, Vec<(ServiceAddr, usize)>>,
}

impl std::fmt::Debug for SocketFastpath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SocketFastpath")
            .field("enabled", &self.lb.is_some())
            .field("off_reason", &self.off_reason)
            .finish()
    }
}

impl SocketFastpath {
    /// Attaches the programs when the configuration asks for them. `Err` only under
    /// `mode: required`.
    pub fn start(config: &Config) -> Result<Self, FastpathError> {
        // Validation fills in `socket_lb` whenever a listener asks for `fastpath: socket`.
        let settings = config.fastpath.socket_lb.clone();
        let mut fastpath = Self {
            requested: settings.is_some(),
            lb: None,
            off_reason: None,
            counters: HashMap::new(),
            services: HashMap::new(),
        };
        if settings.is_none() {
            fastpath.off_reason = Some("not configured".into());
            return Ok(fastpath);
        }
        let mode = settings.as_ref().map(|s| s.mode).unwrap_or_default();
        let cgroup = settings.as_ref().and_then(|s| s.cgroup.clone());
        match SocketLb::attach(cgroup.as_deref()) {
            Ok(lb) => {
                tracing::info!(cgroup = %lb.cgroup().display(), "socket fast path on");
                fastpath.lb = Some(lb);
            }
            Err(e) if mode == FastpathMode::Required => return Err(e),
            Err(e) => {
                tracing::warn!(error = %e, "socket fast path off (mode: auto): listeners with `fastpath: socket` are served by the relay");
                fastpath.off_reason = Some(e.to_string());
            }
        }
        Ok(fastpath)
    }

    /// Whether the configuration it started from asked for the socket fast path.
    pub fn requested(&self) -> bool {
        self.requested
    }

    pub fn status(&self) -> SocketLbStatus {
        SocketLbStatus {
            enabled: self.lb.is_some(),
            reason: self.off_reason.clone(),
            cgroup: self.lb.as_ref().map(|lb| lb.cgroup().display().to_string()),
        }
    }

    /// Detaches every program (SIGTERM): from here on clients reach the listeners, which
    /// drain as usual.
    pub fn detach(&mut self) {
        if self.lb.take().is_some() {
            tracing::info!("socket fast path detached");
            self.off_reason = Some("detached: draining".into());
        }
    }

    /// Brings the kernel tables in line with `config` and the backends' live state at `now`.
    pub fn sync(&mut self, config: &Config, registry: &mut StateRegistry, now: Millis) {
        let Some(lb) = self.lb.as_mut() else {
            return;
        };
        let mut wanted: HashMap<String, Vec<(ServiceAddr, usize)>> = HashMap::new();
        for listener in &config.listeners {
            if listener.fastpath != ListenerFastpath::Socket {
                continue;
            }
            let Some(pool) = config.pool(&listener.pool) else {
                continue;
            };
            let algorithm = match pool.algorithm {
                PoolAlgorithm::Random => Algorithm::Random,
                // Validation allows only round robin and random with `fastpath: socket`.
                _ => Algorithm::RoundRobin,
            };
            let mut candidates = Vec::with_capacity(pool.backends.len());
            for backend in &pool.backends {
                let addr = backend.address;
                let key = (pool.name.clone(), backend.address);
                let next = u16::try_from(self.counters.len()).unwrap_or(MAX_COUNTERS);
                let counter = *self.counters.entry(key).or_insert(next);
                let state = registry.backend(&pool.name, backend.address);
                candidates.push(Candidate {
                    addr,
                    weight: backend.weight,
                    backup: backend.backup,
                    available: state.is_available(now),
                    counter,
                });
            }
            let transport = match listener.protocol {
                Protocol::Tcp => Transport::Tcp,
                Protocol::Udp => Transport::Udp,
            };
            let entry = wanted.entry(listener.name.clone()).or_default();
            for listen in &listener.listen {
                // A wildcard listener is steered for connects to 127.0.0.1 (`[::1]`): the
                // address a client on this host dials when it means "this host".
                let ip = match listen.ip() {
                    IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
                    IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
                    ip => ip,
                };
                let service = ServiceAddr {
                    addr: SocketAddr::new(ip, listen.port()),
                    transport,
                };
                // The hook of one family cannot steer to the other: validation wants all
                // backends of the listener's family, and any other is left out here.
                let (capacity, slots) = family_table(&candidates, ip.is_ipv4());
                let known = self
                    .services
                    .get(&listener.name)
                    .and_then(|list| list.iter().find(|(s, _)| *s == service))
                    .map(|(_, capacity)| *capacity);
                if known.is_some_and(|known| known < capacity) {
                    // The cycle grew past the table's room (a reload added weight): a new
                    // table; connects reach the listener for the moment it takes.
                    if let Err(e) = lb.remove_service(service) {
                        tracing::warn!(listener = %listener.name, error = %e, "socket fast path: cannot resize a table");
                    }
                }
                if let Err(e) = lb.set_service(service, algorithm, capacity, &slots) {
                    tracing::warn!(listener = %listener.name, service = %service.addr, error = %e, "socket fast path: cannot write a table; its connects reach the listener");
                }
                entry.push((service, capacity));
            }
        }
        // Services of listeners that left the configuration or the fast path.
        let kept: Vec<ServiceAddr> = wanted.values().flatten().map(|(s, _)| *s).collect();
        let stale: Vec<ServiceAddr> = lb.services().filter(|s| !kept.contains(s)).collect();
        for service in stale {
            if let Err(e) = lb.remove_service(service) {
                tracing::warn!(service = %service.addr, error = %e, "socket fast path: cannot remove a table");
            }
        }
        self.services = wanted;
    }

    /// Connects steered for `listener`.
    pub fn listener_connects(&self, listener: &str) -> u64 {
        let (Some(lb), Some(services)) = (self.lb.as_ref(), self.services.get(listener)) else {
            return 0;
        };
        services.iter().map(|(s, _)| lb.service_connects(*s)).sum()
    }

    /// Connects steered to one backend of a pool.
    pub fn backend_connects(&self, pool: &str, backend: SocketAddr) -> u64 {
        let Some(lb) = self.lb.as_ref() else {
            return 0;
        };
        self.counters
            .get(&(pool.to_string(), backend))
            .map_or(0, |counter| lb.backend_connects(*counter))
    }
}

/// The table capacity and current slots of the `candidates` of one address family.
fn family_table(candidates: &[Candidate], ipv4: bool) -> (usize, Vec<ballast_fastpath::Slot>) {
    let candidates: Vec<Candidate> = candidates
        .iter()
        .filter(|c| c.addr.is_ipv4() == ipv4)
        .copied()
        .collect();
    // The largest table this pool can need: every backend of its larger tier up.
    let capacity = table::capacity(&candidates);
    let slots = table::slots(&candidates, capacity);
    (capacity, slots)
}
