//! A running Ballast: the data plane started from a resolved configuration, the control
//! runtime beside it, and live reload.
//!
//! `ballast run` and `ballast demo` both start through [`Server::start`]; the binary only wires
//! signals to [`Server::reload`] and [`Server::drain`]. The control runtime is a small tokio
//! runtime of its own (one thread) that runs health probes and the admin HTTP server, so
//! neither ever runs on a data-plane worker.
//!
//! [`Control`] is the part the admin API, the probes and the signal loop share: the current
//! configuration, the [`StateRegistry`] whose per-backend atomics survive reloads, and the
//! data-plane handle. Locks, always taken in this order: `live`, then `dataplane`; a probe
//! takes only `dataplane`, for a moment.
//!
//! File descriptors: the data plane's workers own every listening socket and session; probes
//! own theirs (see [`crate::health`]); the admin server's listening socket and connections
//! belong to its task on the control runtime.
//!
//! One address, one Ballast: [`Server::start`] binds the admin socket, then checks and binds
//! every listener address (see `ballast_dataplane::claim`), and only then listens on any of
//! them, so a second instance that finds an address taken exits without having queued, and
//! so reset, a single connection of the first. A reload checks and binds its new listeners the
//! same way before changing anything: it is applied whole or refused whole.
//!
//! Binary upgrade ([`Control::upgrade`], see [`crate::upgrade`]): a process started with a
//! [`Takeover`] serves the sockets, locks and backend states it was handed instead of binding
//! and checking; the process that hands them over keeps a duplicate of its admin socket for
//! that (in `handover_admin`), and stops its admin accept loop once the new process serves.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::{Duration, Instant};

use ballast_dataplane::route::{AdminState, BackendState, Protocol};
use ballast_dataplane::{
    claim, clock, sys, Command, Dataplane, DataplaneConfig, DataplaneError, DataplaneHandle,
    ListenerSpec,
};
use serde::Serialize;

use crate::config::{self, Config, ConfigError, LoadError, OnBackendDown, MAX_WEIGHT};
use crate::discovery::{self, DiscoveryEngine, DiscoveryError, Resolver};
use crate::fastpath::{SocketFastpath, SYNC_INTERVAL};
use crate::health::{CloseSessions, HealthEngine, Target};
use crate::membership::{self, Added, NameSlot, Outcome, PoolChanges, Source, Sources};
use crate::reload::plan_listeners;
use crate::routes::{build_routes, StateRegistry};
use crate::status::{self, BackendStateName, Reloads, Status};
use crate::udp_offload::UdpFastpath;
use crate::upgrade::{self, Takeover, UpgradeError, UpgradeReport};

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Dataplane(#[from] DataplaneError),
    #[error("cannot start the control runtime: {0}")]
    Runtime(std::io::Error),
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error("admin: cannot listen on {addr}: {source}")]
    Admin {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("admin.listen {addr} is already in use by {holder}")]
    AdminInUse {
        addr: SocketAddr,
        holder: claim::Holder,
    },
    #[error("fastpath.socket_lb (mode: required): {0}")]
    Fastpath(ballast_fastpath::FastpathError),
    #[error("fastpath.udp_offload (mode: required): {0}")]
    UdpOffload(ballast_fastpath::FastpathError),
    #[error(transparent)]
    Discovery(#[from] DiscoveryError),
}

impl ServerError {
    /// Whether the configuration cannot be served here as written (an address taken or not
    /// local, a token file unreadable): `ballast run` exits 2 for these, as for an invalid
    /// file, and 1 for the rest (the process itself could not start threads).
    pub fn is_configuration(&self) -> bool {
        match self {
            ServerError::Dataplane(DataplaneError::Worker { .. }) | ServerError::Runtime(_) => {
                false
            }
            ServerError::Dataplane(_)
            | ServerError::Token(_)
            | ServerError::Admin { .. }
            | ServerError::AdminInUse { .. }
            | ServerError::Fastpath(_)
            | ServerError::UdpOffload(_)
            | ServerError::Discovery(_) => true,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("admin.token_file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("admin.token_file {path}: the file is empty")]
    Empty { path: String },
}

#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("nothing to reload: this process runs from a built-in configuration, not a file")]
    NoConfigFile,
    #[error("stopping: a draining process takes no new configuration")]
    Draining,
    #[error("a binary upgrade is under way; reload once it is done")]
    Upgrading,
    #[error(transparent)]
    Load(LoadError),
    #[error(transparent)]
    Token(TokenError),
    /// A new listener's address is taken or cannot be bound; nothing was changed.
    #[error(transparent)]
    Listener(DataplaneError),
    /// The new `dns:` block cannot be served (no resolver configuration); nothing was changed.
    #[error(transparent)]
    Discovery(DiscoveryError),
}

impl ReloadError {
    /// One line per problem, as logged and returned by the admin API.
    pub fn lines(&self) -> Vec<String> {
        match self {
            ReloadError::Load(LoadError::Invalid(errors)) => {
                errors.iter().map(ConfigError::to_string).collect()
            }
            other => vec![other.to_string()],
        }
    }
}

/// What a successful reload changed.
#[derive(Debug, Clone, Serialize)]
pub struct ReloadReport {
    pub listeners_kept: Vec<String>,
    pub listeners_opened: Vec<String>,
    pub listeners_closed: Vec<String>,
    /// (old name, new name): same sockets, new name.
    pub listeners_renamed: Vec<(String, String)>,
    pub pools: usize,
    pub backends: usize,
    pub health_probes: usize,
    pub warnings: Vec<String>,
}

/// Why an admin action on a backend was refused.
#[derive(Debug, thiserror::Error)]
pub enum BackendActionError {
    #[error("no pool named {0:?}")]
    UnknownPool(String),
    #[error("pool {pool:?} has no backend {backend}")]
    UnknownBackend { pool: String, backend: SocketAddr },
    #[error("weight must be between 1 and {MAX_WEIGHT}, got {0}")]
    BadWeight(u32),
    #[error("pool {pool:?} already has backend {backend}")]
    AlreadyInPool { pool: String, backend: SocketAddr },
    #[error("{0} cannot be connected to (port 0 or a wildcard address)")]
    BadAddress(SocketAddr),
}

impl BackendActionError {
    /// True when the request named something that does not exist (404), false when what it
    /// asked is refused (409 or 400).
    pub fn is_not_found(&self) -> bool {
        matches!(
            self,
            BackendActionError::UnknownPool(_) | BackendActionError::UnknownBackend { .. }
        )
    }
}

/// Whether a caller may make a mutating admin call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Authorization {
    /// No `token_file` is configured, or the token matched.
    Allowed,
    Missing,
    Wrong,
}

#[derive(Default)]
pub struct StartOptions {
    /// Relay with a user-space copy instead of splice.
    pub force_copy: bool,
    /// The file that reloads read again; `None` (the demo) refuses reloads and upgrades.
    pub config_path: Option<PathBuf>,
    /// Sockets and states handed over by the process this one upgrades from.
    pub takeover: Option<Takeover>,
}

/// What the current configuration drives.
struct Live {
    /// As loaded from the file: each pool's fixed backends, and its names unresolved.
    file: Config,
    /// What runs: `file` with what its names resolve to and the runtime changes merged in
    /// (see [`membership::merge`]). Everything else (routes, probes, status, the fast path)
    /// reads this one.
    config: Config,
    registry: StateRegistry,
    health: HealthEngine,
    /// Every name of `file`, and what it resolved to.
    names: Vec<NameSlot>,
    /// The admin API's changes, by pool; they outlive reloads and, with `state_file`,
    /// restarts.
    changes: BTreeMap<String, PoolChanges>,
    /// Where each backend of `config` comes from.
    sources: Sources,
    /// Backends a name no longer gives (or the API removed) whose sessions still run: they
    /// are out of every pick, shown until their last session ends.
    departing: Vec<Departing>,
    resolver: Option<Arc<Resolver>>,
    discovery: DiscoveryEngine,
    /// Bumped whenever `names` is replaced: an answer for an older list is dropped.
    generation: u64,
}

/// A backend out of its pool whose sessions finish.
#[derive(Debug, Clone)]
pub struct Departing {
    pub pool: String,
    pub address: SocketAddr,
    /// The name it came from, or "".
    pub name: String,
    pub state: Arc<BackendState>,
}

/// State shared by the signal loop, the admin API and the health probes.
pub struct Control {
    config_path: Option<PathBuf>,
    live: Mutex<Live>,
    dataplane: Arc<Mutex<DataplaneHandle>>,
    runtime: tokio::runtime::Handle,
    token: RwLock<Option<String>>,
    /// `admin.allowed_hosts`, replaced on reload.
    allowed_hosts: RwLock<Arc<[String]>>,
    reloads_success: AtomicU64,
    reloads_failure: AtomicU64,
    draining: AtomicBool,
    /// Told to stop, in its `grace`: not ready, still serving.
    withdrawn: AtomicBool,
    started: Instant,
    /// The socket fast path; locked after `live` when both are needed.
    fastpath: Mutex<SocketFastpath>,
    /// The UDP offload, loaded at start or never.
    udp_fastpath: UdpFastpath,
    /// The admin address's lock, as listeners have theirs: a second instance asks it who
    /// holds the port instead of scanning /proc.
    admin_lock: Option<claim::AddressLock>,
    /// A duplicate of the admin listening socket (address asked for, address bound), kept
    /// only to hand it over in an upgrade; the accept task owns the socket it serves on.
    handover_admin: Option<(SocketAddr, SocketAddr, OwnedFd)>,
    /// The admin accept loop, stopped once an upgrade's new process serves.
    admin_task: Mutex<Option<tokio::task::AbortHandle>>,
    /// The binary an upgrade starts when none is named: this one, as it was at start.
    binary: Option<PathBuf>,
    upgrading: AtomicBool,
    /// Set once a new process took over: the signal loop then waits for the drain.
    handed_over: AtomicBool,
    /// Once handed over: where this process tells the new one what it still holds.
    drain_reporter: Mutex<Option<upgrade::DrainReporter>>,
    /// In a process an upgrade started: what the processes before it still hold.
    predecessors: upgrade::Predecessors,
    /// Set by an agent check that changed a backend's weight percentage; the sync loop then
    /// publishes a snapshot built with the new weights ([`Control::reweigh`]).
    weights_changed: Arc<AtomicBool>,
    /// This control itself, for the discovery tasks (which must not keep it alive).
    me: std::sync::OnceLock<std::sync::Weak<Control>>,
}

pub struct Server {
    control: Arc<Control>,
    admin_addr: Option<SocketAddr>,
    /// Last, so that it is dropped after everything that spawned onto it.
    _runtime: tokio::runtime::Runtime,
}

/// A poisoned lock only means another thread panicked while holding it; the data behind it
/// (a config, a registry of atomics, a handle of channels) is still consistent.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Server {
    pub fn start(config: Config, options: StartOptions) -> Result<Self, ServerError> {
        match sys::raise_nofile_limit() {
            Ok(limit) => {
                tracing::info!(
                    open_files = limit,
                    "file descriptor limit; each TCP session uses 2, plus up to 4 for pipes while data is in flight"
                );
                log_udp_capacity(&config, limit);
            }
            Err(e) => tracing::warn!(error = %e, "cannot raise the open-file limit"),
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("ballast-control")
            .enable_all()
            .build()
            .map_err(ServerError::Runtime)?;
        let token = read_configured_token(&config)?;
        // Before any socket: `mode: required` refuses to start here, with nothing to undo.
        let fastpath = SocketFastpath::start(&config).map_err(ServerError::Fastpath)?;
        let udp_fastpath = UdpFastpath::start(&config).map_err(ServerError::UdpOffload)?;
        let mut takeover = options.takeover;
        let file = config;
        let resolver = start_resolver(&runtime, &file)?;
        let mut names = membership::name_slots(&file, &[]);
        if let Some(resolver) = &resolver {
            resolve_names(runtime.handle(), resolver, &file.dns, &mut names);
        }
        let saved = file.state_file.as_deref().and_then(read_state_file);
        let mut changes = saved
            .as_ref()
            .map(|s| s.changes.clone())
            .unwrap_or_default();
        changes.retain(|pool, _| file.pool(pool).is_some());
        let (config, sources) = membership::merge(&file, &names, &changes);
        let mut registry = StateRegistry::default();
        registry.udp_offload = udp_fastpath.handle();
        let routes = build_routes(&config, &mut registry);
        if let Some(saved) = &saved {
            apply_saved_states(saved, &registry);
        }
        if let Some(takeover) = &takeover {
            upgrade::apply_backend_states(&takeover.backends, &registry);
        }
        let listeners = config.listeners.iter().map(listener_spec).collect();
        let workers = match takeover.as_ref().and_then(|t| t.dataplane.workers()) {
            // A client's flow lives in the worker that holds its socket of the group.
            Some(handed) => {
                if handed != config.workers.resolve() {
                    tracing::warn!(
                        workers = handed,
                        "`workers` changed: takes effect on restart; serving with the workers of the process upgraded from"
                    );
                }
                handed
            }
            None => config.workers.resolve(),
        };
        // Everything that can fail is bound and checked before any socket listens: the admin
        // address first, then every listener's; then the admin socket, then the listeners.
        let inherited_admin = takeover.as_mut().and_then(|t| t.admin.take()).filter(|a| {
            config
                .admin
                .as_ref()
                .is_some_and(|c| c.listen == a.requested)
        });
        let (admin_socket, inherited_admin_lock) = match (&config.admin, inherited_admin) {
            (Some(_), Some(inherited)) => (Some(inherited.socket), inherited.lock),
            (Some(admin), None) => (
                Some(crate::admin::bind(admin.listen).map_err(|e| admin_error(admin.listen, e))?),
                None,
            ),
            (None, _) => (None, None),
        };
        let dataplane_config = DataplaneConfig {
            workers,
            listeners,
            force_copy: options.force_copy,
        };
        let prepared = match takeover {
            Some(takeover) => Dataplane::prepare_inheriting(dataplane_config, takeover.dataplane)?,
            None => Dataplane::prepare(dataplane_config)?,
        };
        // Best effort: without it a second instance still finds us, through /proc.
        let admin_lock = inherited_admin_lock.or_else(|| {
            config
                .admin
                .as_ref()
                .filter(|a| admin_socket.is_some() && a.listen.port() != 0)
                .and_then(|a| claim::lock(Protocol::Tcp, a.listen).ok())
        });
        let admin_listener = match (admin_socket, &config.admin) {
            (Some(socket), Some(admin)) => {
                Some(crate::admin::listen(socket).map_err(|e| admin_error(admin.listen, e))?)
            }
            _ => None,
        };
        let dataplane = prepared.start(Arc::new(routes))?;
        tracing::info!(workers, "data plane started");
        let admin = config.admin.clone();
        let handover_admin = match (&admin, &admin_listener) {
            (Some(admin), Some(listener)) => listener
                .try_clone()
                .and_then(|copy| Ok((admin.listen, copy.local_addr()?, OwnedFd::from(copy))))
                .map_err(|source| ServerError::Admin {
                    addr: admin.listen,
                    source,
                })
                .map(Some)?,
            _ => None,
        };
        let allowed_hosts = allowed_hosts(&config);
        let control = Arc::new(Control {
            config_path: options.config_path,
            live: Mutex::new(Live {
                file,
                config,
                registry,
                health: HealthEngine::default(),
                names,
                changes,
                sources,
                departing: Vec::new(),
                resolver,
                discovery: DiscoveryEngine::default(),
                generation: 0,
            }),
            dataplane: Arc::new(Mutex::new(dataplane)),
            runtime: runtime.handle().clone(),
            token: RwLock::new(token),
            allowed_hosts: RwLock::new(allowed_hosts),
            reloads_success: AtomicU64::new(0),
            reloads_failure: AtomicU64::new(0),
            draining: AtomicBool::new(false),
            withdrawn: AtomicBool::new(false),
            started: Instant::now(),
            fastpath: Mutex::new(fastpath),
            udp_fastpath,
            admin_lock,
            handover_admin,
            admin_task: Mutex::new(None),
            binary: upgrade::own_binary(),
            upgrading: AtomicBool::new(false),
            handed_over: AtomicBool::new(false),
            drain_reporter: Mutex::new(None),
            predecessors: upgrade::Predecessors::default(),
            weights_changed: Arc::new(AtomicBool::new(false)),
            me: std::sync::OnceLock::new(),
        });
        let _ = control.me.set(Arc::downgrade(&control));
        control.restart_health(&mut lock(&control.live));
        control.sync_fastpath(&mut lock(&control.live));
        control.restart_discovery(&mut lock(&control.live));
        let weak = Arc::downgrade(&control);
        runtime.spawn(async move {
            loop {
                tokio::time::sleep(SYNC_INTERVAL).await;
                let Some(control) = weak.upgrade() else {
                    return;
                };
                control.sync_fastpath(&mut lock(&control.live));
                control.reweigh();
                lock(&control.dataplane).answer_lock_lookups();
                if let Some(admin_lock) = &control.admin_lock {
                    admin_lock.answer_lookups();
                }
            }
        });
        let admin_addr = match (admin, admin_listener) {
            (Some(admin), Some(listener)) => {
                let (addr, task) = crate::admin::start(&runtime, control.clone(), &admin, listener)
                    .map_err(|source| ServerError::Admin {
                        addr: admin.listen,
                        source,
                    })?;
                *lock(&control.admin_task) = Some(task);
                tracing::info!(
                    addr = %addr,
                    max_connections = admin.max_connections,
                    header_timeout = ?admin.header_timeout,
                    idle_timeout = ?admin.idle_timeout,
                    "admin listening"
                );
                Some(addr)
            }
            _ => None,
        };
        Ok(Self {
            control,
            admin_addr,
            _runtime: runtime,
        })
    }

    /// The admin server's address (port 0 resolved), when the config has an `admin:` block.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    pub fn drain_timeout(&self) -> Duration {
        lock(&self.control.live).config.drain_timeout
    }

    /// The configured `grace`: how long to stay up, unready, before draining.
    pub fn grace(&self) -> Duration {
        lock(&self.control.live).config.grace
    }

    /// Says "not ready" (`/readyz` 503, `ready: false`) while everything keeps serving, so
    /// whatever sends traffic here (a BGP announcer, a balancer in front) stops first.
    pub fn withdraw(&self) {
        self.control.withdrawn.store(true, Ordering::Relaxed);
    }

    /// Every listener's bound address (port 0 resolved).
    pub fn bound(&self) -> Vec<(Arc<str>, SocketAddr)> {
        lock(&self.control.dataplane).bound().to_vec()
    }

    pub fn reload(&self) -> Result<ReloadReport, ReloadError> {
        self.control.reload()
    }

    /// Starts `binary` (or this one) as a new process that takes over every socket; see
    /// [`Control::upgrade`].
    pub fn upgrade(&self, binary: Option<PathBuf>) -> Result<UpgradeReport, UpgradeError> {
        self.control.upgrade(binary)
    }

    /// Whether a new process took over (by signal or through the admin API): this one then
    /// only drains.
    pub fn handed_over(&self) -> bool {
        self.control.handed_over.load(Ordering::Relaxed)
    }

    /// Where a process started with a [`Takeover`] keeps what the old one still holds (see
    /// [`upgrade::Link::ready`]); the status API and `/metrics` count it.
    pub fn predecessors(&self) -> &upgrade::Predecessors {
        &self.control.predecessors
    }

    /// After a handover, while draining: tells the new process the sessions this one (and
    /// any before it) still holds, at most every [`upgrade::DRAIN_REPORT_EVERY`]. Call it
    /// from the drain loop; without a handover it does nothing.
    pub fn report_draining(&self) {
        let mut reporter = lock(&self.control.drain_reporter);
        if let Some(reporter) = reporter.as_mut() {
            reporter.tick(|| self.control.draining_sample());
        }
    }

    /// In a process started with a [`Takeover`]: gives the workers the UDP flows the old
    /// process handed over (by worker index), which lets them read their UDP listeners.
    pub fn adopt_flows(&self, flows: Vec<Vec<ballast_dataplane::HandedFlow>>) {
        lock(&self.control.dataplane).adopt_flows(flows);
    }

    /// Stops accepting and starts letting sessions finish.
    pub fn begin_drain(&self) {
        self.control.draining.store(true, Ordering::Relaxed);
        // Detach first, so that clients land on the listeners while they drain.
        let live = lock(&self.control.live);
        lock(&self.control.fastpath).detach(&live.registry);
        drop(live);
        lock(&self.control.dataplane).command(Command::Drain);
    }

    /// Waits up to `timeout` for draining workers to exit; true when they all did.
    pub fn wait(&mut self, timeout: Duration) -> bool {
        lock(&self.control.dataplane).wait(timeout)
    }

    /// Closes every session now and waits briefly for the workers.
    pub fn shutdown(&mut self) -> bool {
        let mut dataplane = lock(&self.control.dataplane);
        dataplane.command(Command::Shutdown);
        dataplane.wait(Duration::from_secs(5))
    }

    /// Stop accepting, let sessions finish for up to the configured `drain_timeout`, then close
    /// what is left. Returns true when every session finished on its own.
    pub fn drain(&mut self) -> bool {
        self.begin_drain();
        let deadline = Instant::now() + self.drain_timeout();
        let finished = self.wait(deadline.saturating_duration_since(Instant::now()));
        if !finished {
            self.shutdown();
        }
        finished
    }
}

/// Each UDP flow holds one socket: say how many flows the descriptor limit leaves room for,
/// so an operator sees at start-up when `max_flows` cannot be reached.
fn log_udp_capacity(config: &Config, open_files: u64) {
    let udp: Vec<_> = config
        .listeners
        .iter()
        .filter_map(|l| Some((l, l.udp?)))
        .collect();
    if udp.is_empty() {
        return;
    }
    // Listening sockets, epoll, wakers, logs: a generous reserve before flows.
    let reserve = 64 + 4 * config.listeners.len() as u64 * config.workers.resolve() as u64;
    let room = open_files.saturating_sub(reserve);
    let wanted: u64 = udp.iter().map(|(_, u)| u.max_flows).sum();
    for (listener, options) in &udp {
        tracing::info!(
            listener = %listener.name,
            max_flows = options.max_flows,
            idle_timeout = ?options.idle_timeout,
            "UDP flow table"
        );
    }
    if wanted > room {
        tracing::warn!(
            max_flows = wanted,
            fit = room,
            "the UDP listeners' max_flows exceed what the open-file limit leaves room for; flows beyond it are dropped (raise LimitNOFILE)"
        );
    } else {
        tracing::info!(
            max_flows = wanted,
            fit = room,
            "every UDP flow fits in the open-file limit"
        );
    }
}

impl Control {
    /// Not ready while draining; otherwise the configuration is loaded and every listener
    /// bound, since a server exists only once both happened.
    pub fn ready(&self) -> bool {
        !self.draining.load(Ordering::Relaxed) && !self.withdrawn.load(Ordering::Relaxed)
    }

    /// What this process holds while it drains after a handover, with what the processes
    /// before it still hold (its status counts them already).
    fn draining_sample(&self) -> upgrade::wire::Draining {
        let status = self.status();
        let mut pids = vec![std::process::id()];
        pids.extend(status.previous_processes.iter().copied());
        upgrade::wire::Draining {
            pids,
            listeners: status
                .listeners
                .iter()
                .map(|l| (l.name.clone(), l.connections_active))
                .collect(),
            backends: status
                .pools
                .iter()
                .flat_map(|p| {
                    p.backends
                        .iter()
                        .map(|b| (p.name.clone(), b.address, b.connections_active))
                })
                .collect(),
        }
    }

    pub fn status(&self) -> Status {
        let mut guard = lock(&self.live);
        let live = &mut *guard;
        let bound = lock(&self.dataplane).bound().to_vec();
        let mut status = Status {
            version: env!("CARGO_PKG_VERSION"),
            pid: std::process::id(),
            ready: self.ready(),
            uptime_seconds: self.started.elapsed().as_secs_f64(),
            reloads: Reloads {
                success: self.reloads_success.load(Ordering::Relaxed),
                failure: self.reloads_failure.load(Ordering::Relaxed),
            },
            listeners: status::listeners(&live.config, &mut live.registry, &bound),
            pools: status::pools(&live.config, &mut live.registry, clock::now_ms()),
            fastpath: status::FastpathStatus::default(),
            previous_processes: Vec::new(),
        };
        let fastpath = lock(&self.fastpath);
        status.fastpath.socket_lb = fastpath.status();
        for listener in &mut status.listeners {
            listener.fastpath_connections_total = fastpath.listener_connects(&listener.name);
        }
        status.fastpath.udp_offload = self.udp_fastpath.status();
        fill_membership(&mut status, live);
        for pool in &mut status.pools {
            for backend in &mut pool.backends {
                let steered = fastpath.backend_connects(&pool.name, backend.address);
                backend.fastpath_connections_total = steered;
                backend.connections_total += steered;
                let (to, from) = self
                    .udp_fastpath
                    .backend_traffic(&pool.name, backend.address);
                backend.offloaded_datagrams_to_backend = to.datagrams;
                backend.offloaded_datagrams_from_backend = from.datagrams;
                backend.datagrams_to_backend += to.datagrams;
                backend.datagrams_from_backend += from.datagrams;
                backend.sent_bytes += to.bytes;
                backend.received_bytes += from.bytes;
            }
        }
        if let Some(previous) = self.predecessors.current() {
            status.count_predecessors(&previous);
        }
        status
    }

    /// Rewrites the socket fast path's tables from the live state, when it is on; a reload
    /// that first asks for it attaches it (as `mode: auto` whatever the mode: a running
    /// process does not stop for it).
    fn sync_fastpath(&self, live: &mut Live) {
        if self.draining.load(Ordering::Relaxed) {
            return;
        }
        let mut fastpath = lock(&self.fastpath);
        // Validation fills in `socket_lb` whenever a listener asks for `fastpath: socket`.
        if live.config.fastpath.socket_lb.is_some() && !fastpath.requested() {
            let mut config = live.config.clone();
            if let Some(settings) = config.fastpath.socket_lb.as_mut() {
                settings.mode = config::FastpathMode::Auto;
            }
            if let Ok(started) = SocketFastpath::start(&config) {
                *fastpath = started;
            }
        }
        fastpath.sync(&live.config, &mut live.registry, clock::now_ms());
    }

    /// Publishes a snapshot with the weights agents asked for, when one asked for a change
    /// since the last. The pickers lay their weights out when they are built (round robin's
    /// interleaving, maglev's table), so a new weight needs a new snapshot, as a reload
    /// gives; it is built under the `live` lock, so never beside a reload. Sessions keep
    /// the snapshot they started with.
    fn reweigh(&self) {
        if !self.weights_changed.swap(false, Ordering::Relaxed) {
            return;
        }
        let mut live = lock(&self.live);
        let live = &mut *live;
        let routes = build_routes(&live.config, &mut live.registry);
        lock(&self.dataplane).publish(Arc::new(routes));
        tracing::debug!("route snapshot rebuilt with the agents' weights");
    }

    pub fn metrics(&self) -> String {
        crate::metrics::render(&self.status())
    }

    /// `admin.allowed_hosts` of the configuration in force.
    pub fn allowed_hosts(&self) -> Arc<[String]> {
        self.allowed_hosts
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Whether mutating calls need a token (`admin.token_file` is set).
    pub fn has_token(&self) -> bool {
        self.token
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some()
    }

    /// Compares the presented bearer token with the configured one in constant time.
    pub fn authorize(&self, presented: Option<&str>) -> Authorization {
        let token = self.token.read().unwrap_or_else(PoisonError::into_inner);
        let Some(expected) = token.as_deref() else {
            return Authorization::Allowed;
        };
        let Some(presented) = presented else {
            return Authorization::Missing;
        };
        let (a, b) = (expected.as_bytes(), presented.as_bytes());
        let differ = a
            .iter()
            .zip(b)
            .fold(u8::from(a.len() != b.len()), |acc, (x, y)| acc | (x ^ y));
        if differ == 0 {
            Authorization::Allowed
        } else {
            Authorization::Wrong
        }
    }

    /// Sets a backend's admin state (drain, disable, enable); it survives reloads.
    pub fn set_backend_admin(
        &self,
        pool: &str,
        backend: SocketAddr,
        admin: AdminState,
    ) -> Result<BackendStateName, BackendActionError> {
        let live = lock(&self.live);
        let Some(configured) = live.config.pool(pool) else {
            return Err(BackendActionError::UnknownPool(pool.to_string()));
        };
        let unknown = || BackendActionError::UnknownBackend {
            pool: pool.to_string(),
            backend,
        };
        if !configured.backends.iter().any(|b| b.address == backend) {
            return Err(unknown());
        }
        let state = live
            .registry
            .get_backend(pool, backend)
            .ok_or_else(unknown)?;
        state.set_admin(admin);
        let now = BackendStateName::of(state, clock::now_ms());
        tracing::info!(pool, backend = %backend, admin = ?admin, state = now.as_str(), "backend admin state set");
        save_state(&live);
        Ok(now)
    }

    /// The running backend `backend` of `pool`, or why there is none.
    fn running(
        live: &Live,
        pool: &str,
        backend: SocketAddr,
    ) -> Result<config::Backend, BackendActionError> {
        let configured = live
            .config
            .pool(pool)
            .ok_or_else(|| BackendActionError::UnknownPool(pool.to_string()))?;
        configured
            .backends
            .iter()
            .find(|b| b.address == backend)
            .cloned()
            .ok_or_else(|| BackendActionError::UnknownBackend {
                pool: pool.to_string(),
                backend,
            })
    }

    /// Sets a backend's weight at run time (`None`: back to the file's or the name's). It
    /// applies at once, outlives reloads and, with `state_file`, restarts.
    pub fn set_backend_weight(
        &self,
        pool: &str,
        backend: SocketAddr,
        weight: Option<u32>,
    ) -> Result<u32, BackendActionError> {
        if let Some(w) = weight.filter(|w| !(1..=MAX_WEIGHT).contains(w)) {
            return Err(BackendActionError::BadWeight(w));
        }
        let mut guard = lock(&self.live);
        let live = &mut *guard;
        Self::running(live, pool, backend)?;
        let changes = live.changes.entry(pool.to_string()).or_default();
        match weight {
            Some(w) => changes.weights.insert(backend, w),
            None => changes.weights.remove(&backend),
        };
        self.refresh(live);
        let now = Self::running(live, pool, backend)?.weight;
        tracing::info!(pool, backend = %backend, weight = now, runtime = weight.is_some(), "backend weight set");
        save_state(live);
        Ok(now)
    }

    /// Adds a backend to a pool at run time (or puts back one removed at run time). New
    /// sessions may go to it at once (ramping up under `slow_start`).
    pub fn add_backend(
        &self,
        pool: &str,
        backend: SocketAddr,
        added: Added,
    ) -> Result<(), BackendActionError> {
        if backend.port() == 0 || backend.ip().is_unspecified() {
            return Err(BackendActionError::BadAddress(backend));
        }
        if !(1..=MAX_WEIGHT).contains(&added.weight) {
            return Err(BackendActionError::BadWeight(added.weight));
        }
        let mut guard = lock(&self.live);
        let live = &mut *guard;
        if live.config.pool(pool).is_none() {
            return Err(BackendActionError::UnknownPool(pool.to_string()));
        }
        if Self::running(live, pool, backend).is_ok() {
            return Err(BackendActionError::AlreadyInPool {
                pool: pool.to_string(),
                backend,
            });
        }
        let changes = live.changes.entry(pool.to_string()).or_default();
        if !changes.removed.remove(&backend) {
            changes.added.insert(backend, added);
        }
        self.refresh(live);
        // Put back, but its name no longer gives it: add it after all.
        if Self::running(live, pool, backend).is_err() {
            live.changes
                .entry(pool.to_string())
                .or_default()
                .added
                .insert(backend, added);
            self.refresh(live);
        }
        tracing::info!(pool, backend = %backend, weight = added.weight, "backend added at run time");
        save_state(live);
        Ok(())
    }

    /// Takes a backend out of a pool at run time: no new session goes to it, and its
    /// sessions finish.
    pub fn remove_backend(
        &self,
        pool: &str,
        backend: SocketAddr,
    ) -> Result<(), BackendActionError> {
        let mut guard = lock(&self.live);
        let live = &mut *guard;
        Self::running(live, pool, backend)?;
        let changes = live.changes.entry(pool.to_string()).or_default();
        if changes.added.remove(&backend).is_none() {
            changes.removed.insert(backend);
        }
        changes.weights.remove(&backend);
        self.refresh(live);
        tracing::info!(pool, backend = %backend, "backend removed at run time");
        save_state(live);
        Ok(())
    }

    /// A pool's running membership: its backends with where each comes from, its names and
    /// what they resolved to, the backends still finishing sessions, and the runtime changes.
    pub fn membership(&self, pool: &str) -> Result<Membership, BackendActionError> {
        let changes = lock(&self.live)
            .changes
            .get(pool)
            .cloned()
            .unwrap_or_default();
        let status = self
            .status()
            .pools
            .into_iter()
            .find(|p| p.name == pool)
            .ok_or_else(|| BackendActionError::UnknownPool(pool.to_string()))?;
        Ok(Membership {
            pool: status.name,
            backends: status.backends,
            names: status.names,
            departing: status.departing,
            runtime: changes,
        })
    }

    /// Merges the names' members and the runtime changes into the running configuration
    /// and, when a pool's backends changed, publishes new routes: a backend that stays keeps
    /// its state (and so its counters, health, admin state and Maglev slots), one that joins
    /// ramps up under `slow_start`, one that leaves gets no new session and its sessions
    /// finish. No listener is touched.
    fn refresh(&self, live: &mut Live) {
        let (config, sources) = membership::merge(&live.file, &live.names, &live.changes);
        live.changes.retain(|_, c| !c.is_empty());
        live.departing
            .retain(|d| d.state.active.load(Ordering::Relaxed) > 0);
        let now = clock::now_ms();
        let mut changed = false;
        for (new, old) in config.pools.iter().zip(&live.config.pools) {
            if new.backends == old.backends {
                continue;
            }
            changed = true;
            let has = |pool: &config::Pool, addr: SocketAddr| {
                pool.backends.iter().any(|b| b.address == addr)
            };
            let joined: Vec<SocketAddr> = new
                .backends
                .iter()
                .map(|b| b.address)
                .filter(|a| !has(old, *a))
                .collect();
            let left: Vec<SocketAddr> = old
                .backends
                .iter()
                .map(|b| b.address)
                .filter(|a| !has(new, *a))
                .collect();
            for addr in &joined {
                live.departing
                    .retain(|d| !(d.pool == new.name && d.address == *addr));
                let state = live.registry.backend(&new.name, *addr);
                if new.slow_start.is_some() {
                    state.record_join(now);
                }
            }
            for addr in &left {
                let Some(state) = live.registry.get_backend(&new.name, *addr) else {
                    continue;
                };
                if state.active.load(Ordering::Relaxed) > 0 {
                    let key = (new.name.clone(), *addr);
                    live.departing.push(Departing {
                        pool: new.name.clone(),
                        address: *addr,
                        name: live
                            .sources
                            .get(&key)
                            .map(|s| s.name().to_string())
                            .unwrap_or_default(),
                        state: state.clone(),
                    });
                }
            }
            tracing::info!(
                pool = %new.name,
                joined = ?joined,
                left = ?left,
                backends = new.backends.len(),
                "pool membership changed"
            );
        }
        live.sources = sources;
        if !changed || self.draining.load(Ordering::Relaxed) {
            return;
        }
        live.config = config;
        lock(&self.dataplane).publish(Arc::new(build_routes(&live.config, &mut live.registry)));
        live.registry.retain(&live.config);
        self.restart_health(live);
        self.sync_fastpath(live);
    }

    /// Replaces the discovery tasks with one per name of the running configuration.
    fn restart_discovery(&self, live: &mut Live) {
        live.discovery.stop();
        live.generation += 1;
        let Some(resolver) = live.resolver.clone() else {
            return;
        };
        let generation = live.generation;
        let me = self.me.get().cloned().unwrap_or_default();
        let on_answer: discovery::OnAnswer = Arc::new(move |index, outcome| match me.upgrade() {
            Some(control) => control.on_answer(generation, index, outcome),
            None => Duration::from_secs(3600),
        });
        let names = live
            .names
            .iter()
            .map(|n| (n.entry.clone(), n.next))
            .collect();
        live.discovery = DiscoveryEngine::start(&self.runtime, resolver, names, on_answer);
    }

    /// A background lookup's answer: folds it into its name and applies what changed.
    /// Returns when to look the name up again.
    fn on_answer(&self, generation: u64, index: usize, outcome: Outcome) -> Duration {
        let mut guard = lock(&self.live);
        let live = &mut *guard;
        let next = membership::next_lookup(&outcome, &live.file.dns);
        if live.generation != generation {
            return next;
        }
        let hold = live.file.dns.hold;
        let Some(slot) = live.names.get_mut(index) else {
            return next;
        };
        log_outcome(slot, &outcome);
        slot.next = next;
        if slot.state.apply(&slot.entry, outcome, Instant::now(), hold) {
            self.refresh(live);
        }
        next
    }

    /// Loads the configuration file again through the start-up loader and applies it without
    /// dropping a session; an invalid file changes nothing. Logs and counts the outcome.
    pub fn reload(&self) -> Result<ReloadReport, ReloadError> {
        let result = self.try_reload();
        match &result {
            Ok(report) => {
                self.reloads_success.fetch_add(1, Ordering::Relaxed);
                for warning in &report.warnings {
                    tracing::warn!("{warning}");
                }
                tracing::info!(
                    kept = ?report.listeners_kept,
                    opened = ?report.listeners_opened,
                    closed = ?report.listeners_closed,
                    pools = report.pools,
                    backends = report.backends,
                    "configuration reloaded"
                );
            }
            Err(error) => {
                self.reloads_failure.fetch_add(1, Ordering::Relaxed);
                for line in error.lines() {
                    tracing::error!("{line}");
                }
                tracing::error!("reload refused; the running configuration is unchanged");
            }
        }
        result
    }

    fn try_reload(&self) -> Result<ReloadReport, ReloadError> {
        if self.draining.load(Ordering::Relaxed) {
            return Err(ReloadError::Draining);
        }
        // The new process reads the file and takes the sockets as they were when handed over.
        if self.upgrading.load(Ordering::Relaxed) {
            return Err(ReloadError::Upgrading);
        }
        let path = self.config_path.as_ref().ok_or(ReloadError::NoConfigFile)?;
        let loaded = config::load_file(path).map_err(ReloadError::Load)?;
        let mut warnings: Vec<String> = loaded.warnings.iter().map(|w| w.to_string()).collect();
        let new = loaded.config;
        let token = read_configured_token(&new).map_err(ReloadError::Token)?;

        // Names keep what they resolved to and are all looked up now, before the lock (each
        // lookup bounded by `dns.timeout`); one that fails keeps its last answer.
        let (old_names, old_resolver, old_dns) = {
            let live = lock(&self.live);
            (
                live.names.clone(),
                live.resolver.clone(),
                live.file.dns.clone(),
            )
        };
        let resolver = match old_resolver {
            Some(resolver) if old_dns == new.dns => Some(resolver),
            _ => start_resolver_on(&self.runtime, &new).map_err(ReloadError::Discovery)?,
        }
        .filter(|_| new.pools.iter().any(|p| !p.discover.is_empty()));
        let mut names = membership::name_slots(&new, &old_names);
        if let Some(resolver) = &resolver {
            resolve_names(&self.runtime, resolver, &new.dns, &mut names);
        }

        let mut live = lock(&self.live);
        let plan = plan_listeners(&live.config.listeners, &new.listeners);
        let opening: Vec<ListenerSpec> = new
            .listeners
            .iter()
            .filter(|l| plan.open.contains(&l.name))
            .map(listener_spec)
            .collect();
        for kept in &plan.keep {
            let shared = |c: &Config| {
                c.listeners
                    .iter()
                    .find(|l| l.name == *kept)
                    .map(|l| l.shared_port)
            };
            if shared(&new) != shared(&live.config) {
                warnings.push(format!(
                    "listener {kept}: `shared_port` changed: takes effect when the listener is reopened (a new address, or a restart)"
                ));
            }
        }
        if new.workers != live.config.workers {
            warnings.push("`workers` changed: takes effect on restart".to_string());
        }
        if new.access_log.output != live.config.access_log.output {
            warnings.push(
                "`access_log.file` or `access_log.syslog` changed: takes effect on restart"
                    .to_string(),
            );
        }
        if new.admin.as_ref().map(|a| a.listen) != live.config.admin.as_ref().map(|a| a.listen) {
            warnings.push("`admin.listen` changed: takes effect on restart".to_string());
        }
        let limits = |c: &Config| {
            c.admin
                .as_ref()
                .map(|a| (a.max_connections, a.header_timeout, a.idle_timeout))
        };
        if limits(&new) != limits(&live.config) {
            warnings.push(
                "`admin.max_connections`, `header_timeout` or `idle_timeout` changed: takes effect on restart"
                    .to_string(),
            );
        }

        // New listeners are checked, bound and listening before anything changes (a taken
        // address refuses the whole reload); then close, publish, and hand the new sockets to
        // the workers: a new listener must find its route in the snapshot the moment it
        // accepts, and a closing one is gone before its route is.
        live.changes.retain(|pool, _| new.pool(pool).is_some());
        let (applied, sources) = membership::merge(&new, &names, &live.changes);
        {
            let live = &mut *live;
            let mut dataplane = lock(&self.dataplane);
            let opened = dataplane
                .replace_listeners(&plan.close, &plan.rename, &opening, || {
                    Some(Arc::new(build_routes(&applied, &mut live.registry)))
                })
                .map_err(ReloadError::Listener)?;
            for (listener, addr) in opened {
                tracing::info!(listener = %listener, addr = %addr, "listening");
            }
        }
        live.registry.retain(&applied);
        *self.token.write().unwrap_or_else(PoisonError::into_inner) = token;
        *self
            .allowed_hosts
            .write()
            .unwrap_or_else(PoisonError::into_inner) = allowed_hosts(&applied);
        live.config = applied;
        live.file = new;
        live.names = names;
        live.sources = sources;
        live.resolver = resolver;
        self.restart_health(&mut live);
        self.sync_fastpath(&mut live);
        self.restart_discovery(&mut live);
        save_state(&live);
        Ok(ReloadReport {
            listeners_kept: plan.keep,
            listeners_opened: plan.open,
            listeners_closed: plan.close,
            listeners_renamed: plan.rename,
            pools: live.config.pools.len(),
            backends: live.config.pools.iter().map(|p| p.backends.len()).sum(),
            health_probes: live.health.len(),
            warnings,
        })
    }

    /// Binary upgrade: starts `binary` (by default the one this process started from) with
    /// this process's arguments, hands it every socket, lock and backend state, and once it
    /// reports ready stops accepting, hands it the UDP flows and drains (see
    /// [`crate::upgrade`]). On failure the new process is killed and this one serves on,
    /// unchanged. Logs the outcome.
    pub fn upgrade(&self, binary: Option<PathBuf>) -> Result<UpgradeReport, UpgradeError> {
        let result = self.try_upgrade(binary);
        match &result {
            Ok(report) => tracing::info!(
                pid = report.pid,
                binary = %report.binary,
                listener_sockets = report.listener_sockets,
                udp_flows = report.udp_flows,
                "upgrade: the new process serves; this one stops accepting and drains"
            ),
            Err(error) => {
                for line in error.lines() {
                    tracing::error!("upgrade: {line}");
                }
                tracing::error!("upgrade refused; this process serves on");
            }
        }
        result
    }

    fn try_upgrade(&self, binary: Option<PathBuf>) -> Result<UpgradeReport, UpgradeError> {
        if self.config_path.is_none() {
            return Err(UpgradeError::NoConfigFile);
        }
        if self.draining.load(Ordering::Relaxed) {
            return Err(UpgradeError::Draining);
        }
        if self.upgrading.swap(true, Ordering::SeqCst) {
            return Err(UpgradeError::InProgress);
        }
        let result = self.hand_over(binary);
        if result.is_err() {
            self.upgrading.store(false, Ordering::SeqCst);
        }
        result
    }

    fn hand_over(&self, binary: Option<PathBuf>) -> Result<UpgradeReport, UpgradeError> {
        let binary = binary
            .or_else(|| self.binary.clone())
            .ok_or(UpgradeError::NoBinary)?;
        let backends = {
            let live = lock(&self.live);
            upgrade::backend_states(&live.config, &live.registry)
        };
        let dataplane = lock(&self.dataplane)
            .hand_over_listeners()
            .map_err(UpgradeError::Sockets)?;
        let admin = match &self.handover_admin {
            Some((requested, bound, socket)) => Some(upgrade::HandedAdmin {
                requested: *requested,
                bound: *bound,
                socket: socket.try_clone().map_err(UpgradeError::Sockets)?,
                lock: match &self.admin_lock {
                    Some(lock) => Some(lock.try_clone_socket().map_err(UpgradeError::Sockets)?),
                    None => None,
                },
            }),
            None => None,
        };
        let handed = upgrade::Handed { dataplane, admin };
        let parent = upgrade::start_child(&binary, &handed, backends)?;
        let sockets = handed.sockets();
        drop(handed);
        // The new process serves: from here on this one only drains.
        if let Some(task) = lock(&self.admin_task).take() {
            task.abort();
        }
        self.draining.store(true, Ordering::Relaxed);
        {
            let live = lock(&self.live);
            lock(&self.fastpath).detach(&live.registry);
        }
        let flows = lock(&self.dataplane).hand_over_flows(upgrade::FLOWS_TIMEOUT);
        let (report, reporter) = parent.send_flows(flows, sockets);
        *lock(&self.drain_reporter) = Some(reporter);
        self.handed_over.store(true, Ordering::Relaxed);
        Ok(report)
    }

    /// Replaces every probe task with one per backend of a pool with a `health_check`. A
    /// backend of a pool without one is judged by passive checks alone, so any verdict a
    /// former check left on it is lifted.
    fn restart_health(&self, live: &mut Live) {
        live.health.stop();
        let mut targets = Vec::new();
        for pool in &live.config.pools {
            for backend in &pool.backends {
                let state = live.registry.backend(&pool.name, backend.address);
                // A backend no agent speaks for any more gets its configured weight back.
                let agent = pool.health_check.as_ref().and_then(|c| c.agent.as_ref());
                if agent.is_none() && state.agent_weight_percent.swap(100, Ordering::Relaxed) != 100
                {
                    self.weights_changed.store(true, Ordering::Relaxed);
                }
                match &pool.health_check {
                    None => state.set_healthy(true),
                    Some(check) => targets.push(Target {
                        pool: pool.name.as_str().into(),
                        addr: backend.address,
                        check: Arc::new(check.clone()),
                        state,
                        close_on_down: pool.on_backend_down == OnBackendDown::Close,
                    }),
                }
            }
        }
        let dataplane = self.dataplane.clone();
        let close: CloseSessions = Arc::new(move |state| {
            lock(&dataplane).close_backend_sessions(state);
        });
        live.health =
            HealthEngine::start(&self.runtime, targets, close, self.weights_changed.clone());
    }
}

/// A pool's running membership (`GET /api/v1/pools/{pool}/membership`).
#[derive(Debug, Clone, Serialize)]
pub struct Membership {
    pub pool: String,
    pub backends: Vec<status::BackendStatus>,
    pub names: Vec<status::NameStatus>,
    pub departing: Vec<status::DepartingStatus>,
    /// The admin API's changes to this pool (weights, added, removed).
    pub runtime: PoolChanges,
}

/// The resolver for `config`'s names, or `None` when it has none.
fn start_resolver(
    runtime: &tokio::runtime::Runtime,
    config: &Config,
) -> Result<Option<Arc<Resolver>>, DiscoveryError> {
    start_resolver_on(runtime.handle(), config)
}

fn start_resolver_on(
    runtime: &tokio::runtime::Handle,
    config: &Config,
) -> Result<Option<Arc<Resolver>>, DiscoveryError> {
    if config.pools.iter().all(|p| p.discover.is_empty()) {
        return Ok(None);
    }
    let _context = runtime.enter();
    Resolver::new(&config.dns).map(|r| Some(Arc::new(r)))
}

/// Looks every name up at once and folds the answers in (start and reload).
fn resolve_names(
    runtime: &tokio::runtime::Handle,
    resolver: &Arc<Resolver>,
    dns: &config::Dns,
    names: &mut [NameSlot],
) {
    let entries: Vec<config::Discover> = names.iter().map(|n| n.entry.clone()).collect();
    let outcomes = discovery::lookup_all(runtime, resolver, &entries);
    let now = Instant::now();
    for (slot, outcome) in names.iter_mut().zip(outcomes) {
        log_outcome(slot, &outcome);
        slot.next = membership::next_lookup(&outcome, dns);
        slot.state.apply(&slot.entry, outcome, now, dns.hold);
    }
}

/// Logs a lookup that did not find records, once per change of reason, and the first good
/// one after it.
fn log_outcome(slot: &NameSlot, outcome: &Outcome) {
    let name = slot.entry.label();
    let pool = slot.pool.as_str();
    let was_failing = slot.state.last_error.is_some();
    match outcome {
        Outcome::Found { records, .. } if !records.is_empty() => {
            if was_failing {
                tracing::info!(pool, name = %name, addresses = records.len(), "DNS lookup answers again");
            }
        }
        Outcome::Found { .. } | Outcome::Gone => {
            if slot.state.gone_since.is_none() {
                tracing::warn!(pool, name = %name, kept = slot.state.members.len(), "DNS: the name does not exist (NXDOMAIN or no record); keeping the last answer for dns.hold");
            }
        }
        Outcome::Failed(error) => {
            if slot.state.last_error.as_deref() != Some(error) {
                tracing::warn!(pool, name = %name, error = %error, kept = slot.state.members.len(), "DNS lookup failed; keeping the last answer");
            }
        }
    }
}

/// The state file's content, or `None` (missing, or unreadable: logged).
fn read_state_file(path: &Path) -> Option<crate::state_file::SavedState> {
    match crate::state_file::load(path) {
        Ok(state) => state,
        Err(error) => {
            tracing::warn!(error = %error, "state file ignored");
            None
        }
    }
}

fn apply_saved_states(saved: &crate::state_file::SavedState, registry: &StateRegistry) {
    for backend in &saved.backends {
        let admin = match backend.admin.as_str() {
            "draining" => AdminState::Draining,
            "disabled" => AdminState::Disabled,
            _ => continue,
        };
        if let Some(state) = registry.get_backend(&backend.pool, backend.address) {
            state.set_admin(admin);
            tracing::info!(pool = %backend.pool, backend = %backend.address, admin = admin.as_str(), "admin state restored from the state file");
        }
    }
}

/// Writes the state file, when there is one: admin states other than enabled, and the
/// runtime changes. A write that fails is logged; serving goes on.
fn save_state(live: &Live) {
    let Some(path) = live.file.state_file.as_deref() else {
        return;
    };
    let mut backends = Vec::new();
    for pool in &live.config.pools {
        for backend in &pool.backends {
            let Some(state) = live.registry.get_backend(&pool.name, backend.address) else {
                continue;
            };
            if state.admin() != AdminState::Enabled {
                backends.push(crate::state_file::SavedBackend {
                    pool: pool.name.clone(),
                    address: backend.address,
                    admin: state.admin().as_str().to_string(),
                });
            }
        }
    }
    let saved = crate::state_file::SavedState {
        version: crate::state_file::VERSION,
        backends,
        changes: live.changes.clone(),
    };
    if let Err(error) = crate::state_file::save(path, &saved) {
        tracing::warn!(error = %error, "cannot write the state file");
    }
}

/// Where each backend comes from, runtime weights, each pool's names and departing backends.
fn fill_membership(status: &mut Status, live: &Live) {
    let wall = std::time::SystemTime::now();
    let now = Instant::now();
    for pool in &mut status.pools {
        let changes = live.changes.get(&pool.name);
        for backend in &mut pool.backends {
            let source = live.sources.get(&(pool.name.clone(), backend.address));
            backend.source = source.map_or("config", Source::kind);
            backend.name = source
                .map(|s| s.name().to_string())
                .filter(|n| !n.is_empty());
            backend.runtime_weight =
                changes.is_some_and(|c| c.weights.contains_key(&backend.address));
        }
        pool.names = live
            .names
            .iter()
            .filter(|n| n.pool == pool.name)
            .map(|n| status::NameStatus {
                name: n.entry.label(),
                resolve: n.entry.resolve.as_str(),
                srv: n.entry.is_srv(),
                max: n.entry.max,
                addresses: n.state.members.iter().map(|m| m.addr).collect(),
                pending: !n.state.answered && n.state.last_error.is_none(),
                stale: n.state.stale(),
                last_error: n.state.last_error.clone(),
                last_success_unix_seconds: n.state.last_success.and_then(|at| {
                    let then = wall.checked_sub(now.saturating_duration_since(at))?;
                    then.duration_since(std::time::UNIX_EPOCH)
                        .ok()
                        .map(|d| d.as_secs_f64())
                }),
                lookups: n.state.results,
            })
            .collect();
        pool.departing = live
            .departing
            .iter()
            .filter(|d| d.pool == pool.name)
            .map(|d| status::DepartingStatus {
                address: d.address,
                name: d.name.clone(),
                connections_active: d.state.active.load(Ordering::Relaxed),
            })
            .filter(|d| d.connections_active > 0)
            .collect();
    }
}

fn listener_spec(listener: &config::Listener) -> ListenerSpec {
    ListenerSpec {
        name: listener.name.as_str().into(),
        protocol: listener.protocol,
        addrs: listener.listen.clone(),
        shared_port: listener.shared_port,
    }
}

/// `admin.listen` could not be bound or listened on: who holds it, when it is taken.
fn admin_error(addr: SocketAddr, source: std::io::Error) -> ServerError {
    if source.kind() == std::io::ErrorKind::AddrInUse {
        ServerError::AdminInUse {
            addr,
            holder: claim::holder(Protocol::Tcp, addr),
        }
    } else {
        ServerError::Admin { addr, source }
    }
}

fn allowed_hosts(config: &Config) -> Arc<[String]> {
    config
        .admin
        .as_ref()
        .map_or_else(|| Arc::from([]), |a| a.allowed_hosts.as_slice().into())
}

fn read_configured_token(config: &Config) -> Result<Option<String>, TokenError> {
    match config.admin.as_ref().and_then(|a| a.token_file.as_deref()) {
        Some(path) => read_token(path).map(Some),
        None => Ok(None),
    }
}

fn read_token(path: &Path) -> Result<String, TokenError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| TokenError::Read {
        path: shown.clone(),
        source,
    })?;
    let token = text.trim();
    if token.is_empty() {
        return Err(TokenError::Empty { path: shown });
    }
    Ok(token.to_string())
}
