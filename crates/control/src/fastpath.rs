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
//! The hook balances round robin, random and power of two on the weighted cycle, least
//! connections on one slot per backend, and Maglev as the relay does: with `hash_key: source`
//! every client on this host has the source address the kernel picks toward the listener, so
//! the relay's own Maglev picker, asked here for that address, names the one backend the table
//! holds (one definition of Maglev, and the same answer as the relay's); with `five_tuple` the
//! source port is not chosen until after the hook, so a connect takes a weighted random slot.
//!
//! Steered TCP sessions are accounted here, at each sync: their live count (from the kernel's
//! `steered_active`) is added to the backend's `active`, which the relay's pickers and limits
//! read, and the relay's own count is written back for the hook's; each ended session's record
//! adds its bytes and connect time to the backend's counters, logs an access line with
//! `path=socket`, and a failed connect counts against the backend's passive health.
//!
//! File descriptors: the BPF programs, maps and links belong to the [`SocketLb`] held here;
//! dropping it (on drain, or when the process dies) detaches every program. Learning the
//! source address toward a listener opens and closes one UDP socket (no datagram is sent).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::sync::atomic::Ordering;
use std::time::Duration;

use ballast_dataplane::balance::{Algorithm as PoolAlgorithm, HashKey};
use ballast_dataplane::route::{ConnectError, FlowKey, Millis, PoolView, Protocol};
use ballast_fastpath::table::Layout;
use ballast_fastpath::{
    table, Algorithm, Candidate, FastpathError, ServiceAddr, SessionEnd, SessionEvent, SocketLb,
    Transport, MAX_COUNTERS,
};
use serde::Serialize;

use crate::config::{Config, FastpathMode, ListenerFastpath, Pool};
use crate::routes::{pool_view, StateRegistry};

/// How often the kernel tables are compared with the backends' live state.
pub const SYNC_INTERVAL: Duration = Duration::from_millis(100);

/// Session records read per sync; more wait for the next one (the ring buffer holds about
/// 50 000).
const EVENTS_PER_SYNC: usize = 65_536;

/// A failed connect that took this long timed out (the first SYN retransmission comes after
/// a second); a faster one was refused. sock_ops does not say which.
const TIMEOUT_AFTER: Duration = Duration::from_secs(1);

/// How the hook serves one pool.
enum Plan {
    /// A table of this layout, picked from by this algorithm.
    Table(Algorithm, Layout),
    /// One slot: the relay's Maglev pick for the source address of this host's clients.
    MaglevBySource,
}

fn plan(algorithm: PoolAlgorithm) -> Plan {
    match algorithm {
        PoolAlgorithm::Random => Plan::Table(Algorithm::Random, Layout::Cycle),
        PoolAlgorithm::PowerOfTwo => Plan::Table(Algorithm::PowerOfTwo, Layout::Cycle),
        PoolAlgorithm::LeastConnections => {
            Plan::Table(Algorithm::LeastConnections, Layout::Members)
        }
        PoolAlgorithm::Maglev {
            hash_key: HashKey::SourceIp,
            ..
        } => Plan::MaglevBySource,
        PoolAlgorithm::Maglev {
            hash_key: HashKey::FiveTuple,
            ..
        } => Plan::Table(Algorithm::Random, Layout::Cycle),
        // Validation refuses least_time with `fastpath: socket`.
        PoolAlgorithm::RoundRobin | PoolAlgorithm::LeastTime { .. } => {
            Plan::Table(Algorithm::RoundRobin, Layout::Cycle)
        }
    }
}

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
    /// Steered sessions per counter now counted in the backend's `active`.
    applied_active: HashMap<u16, u64>,
    /// The relay's sessions per counter as last written to the kernel.
    written_relay_active: HashMap<u16, u64>,
    /// Pools balanced by Maglev on the source, with the backends their picker was built for.
    maglev_views: HashMap<String, (Vec<crate::config::Backend>, PoolView)>,
    /// The source address the kernel gives this host's connects to each service.
    sources: HashMap<ServiceAddr, Option<IpAddr>>,
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
            applied_active: HashMap::new(),
            written_relay_active: HashMap::new(),
            maglev_views: HashMap::new(),
            sources: HashMap::new(),
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
    pub fn detach(&mut self, registry: &StateRegistry) {
        if self.lb.take().is_some() {
            tracing::info!("socket fast path detached");
            self.off_reason = Some("detached: draining".into());
        }
        // Steered sessions go on without us; no longer followed, they leave the counts.
        for ((pool, addr), counter) in &self.counters {
            let applied = self.applied_active.remove(counter).unwrap_or(0);
            if let Some(state) = registry.get_backend(pool, *addr) {
                state.active.fetch_sub(applied, Ordering::Relaxed);
            }
        }
    }

    /// Brings the kernel tables in line with `config` and the backends' live state at `now`,
    /// and accounts the steered sessions.
    pub fn sync(&mut self, config: &Config, registry: &mut StateRegistry, now: Millis) {
        if self.lb.is_none() {
            return;
        }
        self.write_tables(config, registry, now);
        self.account(config, registry, now);
    }

    fn write_tables(&mut self, config: &Config, registry: &mut StateRegistry, now: Millis) {
        let mut wanted: HashMap<String, Vec<(ServiceAddr, usize)>> = HashMap::new();
        for listener in &config.listeners {
            if listener.fastpath != ListenerFastpath::Socket {
                continue;
            }
            let Some(pool) = config.pool(&listener.pool) else {
                continue;
            };
            let plan = plan(pool.algorithm);
            let mut candidates = Vec::with_capacity(pool.backends.len());
            for backend in &pool.backends {
                let key = (pool.name.clone(), backend.address);
                let next = u16::try_from(self.counters.len()).unwrap_or(MAX_COUNTERS);
                let counter = *self.counters.entry(key).or_insert(next);
                let state = registry.backend(&pool.name, backend.address);
                candidates.push(Candidate {
                    addr: backend.address,
                    weight: backend.weight,
                    backup: backend.backup,
                    available: state.is_available(now),
                    counter,
                    limit: backend
                        .max_connections
                        .map_or(0, |max| u32::try_from(max).unwrap_or(u32::MAX).max(1)),
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
                let family: Vec<Candidate> = candidates
                    .iter()
                    .filter(|c| c.addr.is_ipv4() == ip.is_ipv4())
                    .copied()
                    .collect();
                let (algorithm, capacity, slots) = match plan {
                    Plan::Table(algorithm, layout) => {
                        let capacity = table::capacity(&family, layout);
                        (algorithm, capacity, table::slots(&family, layout, capacity))
                    }
                    Plan::MaglevBySource => {
                        let slots = self
                            .maglev_pick(pool, registry, service, now)
                            .and_then(|addr| family.iter().find(|c| c.addr == addr))
                            .map(|c| table::slots(&[*c], Layout::Members, 1))
                            .unwrap_or_default();
                        (Algorithm::RoundRobin, 1, slots)
                    }
                };
                self.set_table(&listener.name, service, algorithm, capacity, &slots);
                entry.push((service, capacity));
            }
        }
        // Services of listeners that left the configuration or the fast path.
        let kept: Vec<ServiceAddr> = wanted.values().flatten().map(|(s, _)| *s).collect();
        if let Some(lb) = self.lb.as_mut() {
            let stale: Vec<ServiceAddr> = lb.services().filter(|s| !kept.contains(s)).collect();
            for service in stale {
                if let Err(e) = lb.remove_service(service) {
                    tracing::warn!(service = %service.addr, error = %e, "socket fast path: cannot remove a table");
                }
            }
        }
        self.services = wanted;
    }

    fn set_table(
        &mut self,
        listener: &str,
        service: ServiceAddr,
        algorithm: Algorithm,
        capacity: usize,
        slots: &[ballast_fastpath::Slot],
    ) {
        let known = self
            .services
            .get(listener)
            .and_then(|list| list.iter().find(|(s, _)| *s == service))
            .map(|(_, capacity)| *capacity);
        let Some(lb) = self.lb.as_mut() else {
            return;
        };
        if known.is_some_and(|known| known < capacity) {
            // The table grew past its room (a reload added weight or backends): a new table;
            // connects reach the listener for the moment it takes.
            if let Err(e) = lb.remove_service(service) {
                tracing::warn!(%listener, error = %e, "socket fast path: cannot resize a table");
            }
        }
        if let Err(e) = lb.set_service(service, algorithm, capacity, slots) {
            tracing::warn!(%listener, service = %service.addr, error = %e, "socket fast path: cannot write a table; its connects reach the listener");
        }
    }

    /// The backend the relay's Maglev picker gives a client of this host connecting to
    /// `service`, by the source address the kernel chooses toward it.
    fn maglev_pick(
        &mut self,
        pool: &Pool,
        registry: &mut StateRegistry,
        service: ServiceAddr,
        now: Millis,
    ) -> Option<SocketAddr> {
        let source = *self
            .sources
            .entry(service)
            .or_insert_with(|| source_toward(service.addr));
        let source = source?;
        let stale = self
            .maglev_views
            .get(&pool.name)
            .is_none_or(|(backends, _)| *backends != pool.backends);
        if stale {
            let view = pool_view(pool, registry);
            self.maglev_views
                .insert(pool.name.clone(), (pool.backends.clone(), view));
        }
        let (_, view) = self.maglev_views.get(&pool.name)?;
        let key = FlowKey {
            protocol: match service.transport {
                Transport::Tcp => Protocol::Tcp,
                Transport::Udp => Protocol::Udp,
            },
            client: SocketAddr::new(source, 0),
            local: service.addr,
        };
        let index = view.picker.pick(&key, view, now, &[])?;
        view.backends.get(index).map(|b| b.addr)
    }

    /// Live counts both ways, then the sessions that ended.
    fn account(&mut self, config: &Config, registry: &mut StateRegistry, now: Millis) {
        let Some(lb) = self.lb.as_mut() else {
            return;
        };
        for ((pool, addr), counter) in &self.counters {
            let Some(state) = registry.get_backend(pool, *addr) else {
                continue;
            };
            let steered = lb.steered_active(*counter);
            let applied = self.applied_active.entry(*counter).or_insert(0);
            if steered >= *applied {
                state
                    .active
                    .fetch_add(steered - *applied, Ordering::Relaxed);
            } else {
                state
                    .active
                    .fetch_sub(*applied - steered, Ordering::Relaxed);
            }
            *applied = steered;
            let relay = state.active.load(Ordering::Relaxed).saturating_sub(steered);
            if self.written_relay_active.get(counter) != Some(&relay) {
                match lb.set_relay_active(*counter, relay) {
                    Ok(()) => {
                        self.written_relay_active.insert(*counter, relay);
                    }
                    Err(e) => tracing::warn!(error = %e, "socket fast path: cannot write a load"),
                }
            }
        }
        let events = lb.take_events(EVENTS_PER_SYNC);
        if events.is_empty() {
            return;
        }
        let by_counter: HashMap<u16, &(String, SocketAddr)> =
            self.counters.iter().map(|(key, c)| (*c, key)).collect();
        for event in events {
            let listener = lb.service_of(event.service_id).and_then(|service| {
                self.services
                    .iter()
                    .find(|(_, list)| list.iter().any(|(s, _)| *s == service))
                    .map(|(name, _)| name.as_str())
            });
            let Some((pool_name, addr)) = by_counter.get(&event.counter).copied() else {
                continue;
            };
            let Some(state) = registry.get_backend(pool_name, *addr) else {
                continue;
            };
            let end = match event.end {
                SessionEnd::Closed => {
                    state
                        .bytes_sent
                        .fetch_add(event.bytes_to_backend, Ordering::Relaxed);
                    state
                        .bytes_received
                        .fetch_add(event.bytes_from_backend, Ordering::Relaxed);
                    if let Some(connect_time) = event.connect_time {
                        state.record_connect_time(connect_time);
                    }
                    "closed"
                }
                SessionEnd::ConnectFailed => {
                    let reason = if event.duration >= TIMEOUT_AFTER {
                        ConnectError::Timeout
                    } else {
                        ConnectError::Refused
                    };
                    let passive = config.pool(pool_name).and_then(|p| p.passive);
                    if state.record_connect_failure(reason, now, passive) {
                        tracing::warn!(pool = %pool_name, backend = %addr, "backend marked down by passive health");
                    }
                    match reason {
                        ConnectError::Timeout => "connect_timeout",
                        _ => "connect_refused",
                    }
                }
            };
            log_session(listener.unwrap_or("-"), &event, end);
        }
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

/// The access-log line of a steered session, as the relay writes one, with `path=socket`.
fn log_session(listener: &str, event: &SessionEvent, end: &str) {
    tracing::info!(
        target: "ballast::access",
        listener = %listener,
        client = %event.client,
        backend = %event.backend,
        sent = event.bytes_to_backend,
        received = event.bytes_from_backend,
        duration_ms = u64::try_from(event.duration.as_millis()).unwrap_or(u64::MAX),
        connect_ms = event
            .connect_time
            .map_or(0, |t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX)),
        end = %end,
        path = %"socket",
        "session closed"
    );
}

/// The source address the kernel chooses for a connect from this host to `dest`: that of a
/// UDP socket connected to it (no datagram is sent).
fn source_toward(dest: SocketAddr) -> Option<IpAddr> {
    let any: SocketAddr = match dest {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = UdpSocket::bind(any).ok()?;
    socket.connect(dest).ok()?;
    socket.local_addr().ok().map(|a| a.ip())
}
