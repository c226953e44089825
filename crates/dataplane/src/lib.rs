//! Ballast's data plane: the hot path of an L4 load balancer.
//!
//! [`Dataplane::prepare`] checks that no other process holds a listener's address (see
//! [`claim`]) and binds it once per worker (SO_REUSEPORT, so the kernel spreads new connections
//! over workers); [`PreparedDataplane::start`] then listens and starts one thread per worker,
//! each with its own `mio::Poll`. A worker accepts a connection, admits it (listener and backend limits), asks the
//! pool's [`route::Pick`] for a backend, connects without blocking (retrying other backends),
//! then relays both directions with splice(2) through pooled pipes.
//!
//! Rules of this crate:
//! - It knows nothing of YAML, serde, tokio or Prometheus. The control plane fills in the
//!   [`route::RouteTable`] it reads and reads back the atomics it bumps.
//! - The hot path takes no lock and does no per-packet allocation: workers `load()` the route
//!   snapshot once per new session and touch only atomics shared with other threads. The one
//!   exception is on purpose: a listener with per-source limits admits and releases each
//!   connection through a sharded table behind short locks, so its counts are exact across
//!   workers (`proto::rate_limit::SharedSourceLimiter`); no byte or datagram ever takes it.
//! - Pure parts (pickers, health windows) take the time as an argument and make no syscalls.
//! - `unsafe` lives in [`sys`] only.
//!
//! File descriptors: each worker owns its own socket of every listener address (closed on
//! drain, on removal, or at exit). For a binary upgrade each worker makes a duplicate of its
//! sockets on request ([`DataplaneHandle::hand_over_listeners`]), which goes straight into the
//! message to the new process: nothing holds a second descriptor in between, so a socket
//! leaves its SO_REUSEPORT group when its worker closes it, and a descriptor limit counts each
//! listening socket once. A new
//! process started with [`Dataplane::prepare_inheriting`] takes the sockets it was handed
//! instead of binding: the same sockets, not new members of the group, so the old process
//! closing its descriptors later drops no queued connection.

pub mod balance;
pub mod claim;
pub mod clock;
pub mod histogram;
mod lru;
mod pipes;
pub mod proto;
pub mod queue;
mod relay;
pub mod route;
pub mod sni;
pub mod sys;
pub mod udp;
mod worker;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use arc_swap::ArcSwap;
use crossbeam_channel::{Receiver, Sender};
use mio::{Poll, Waker};
use socket2::{Domain, Socket, Type};

pub use worker::Command;

use route::BackendState;
use route::RouteTable;
use worker::{BoundListener, BoundSocket, Worker, WorkerCommand, WorkerSetup};

/// Listen backlog per socket; the kernel caps it at net.core.somaxconn.
const BACKLOG: i32 = 4096;

/// Errors that stop the data plane from starting.
#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    #[error("listener {listener}: cannot listen on {addr}: {source}")]
    Bind {
        listener: String,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("listener {listener}: {} is already in use by {holder}; set shared_port: true to share it", shown(*.protocol, *.addr))]
    InUse {
        listener: String,
        protocol: route::Protocol,
        addr: SocketAddr,
        holder: claim::Holder,
    },
    #[error("cannot start worker {worker}: {source}")]
    Worker {
        worker: usize,
        source: std::io::Error,
    },
    #[error(
        "listener {listener}: {addr} was handed over with {got} sockets for {workers} workers"
    )]
    Inherited {
        listener: String,
        addr: SocketAddr,
        got: usize,
        workers: usize,
    },
}

/// One listener address's sockets, handed from an old process to a new one (binary upgrade).
#[derive(Debug)]
pub struct HandedListener {
    pub name: Arc<str>,
    pub protocol: route::Protocol,
    /// The address as configured (port 0 included) and as bound.
    pub requested: SocketAddr,
    pub bound: SocketAddr,
    /// One per worker, in worker order: a socket's place in its SO_REUSEPORT group, and so
    /// which clients land on it, goes with its index.
    pub sockets: Vec<OwnedFd>,
}

/// An address lock's socket (see [`claim`]), handed over so that the new process holds the
/// very lock the old one took, and a stranger still cannot take it between the two.
#[derive(Debug)]
pub struct HandedLock {
    pub protocol: route::Protocol,
    pub addr: SocketAddr,
    pub socket: OwnedFd,
}

/// One UDP flow moved from an old process's worker to the same worker of the new one.
#[derive(Debug)]
pub struct HandedFlow {
    /// The listener and the address of its socket the flow came in on.
    pub listener: Arc<str>,
    pub listener_addr: SocketAddr,
    pub client: SocketAddr,
    pub backend: SocketAddr,
    /// The listener address the client sent to, and on a wildcard listener the address the
    /// replies leave from.
    pub local: SocketAddr,
    pub reply_from: Option<IpAddr>,
    /// The flow's socket, connected to `backend`.
    pub socket: OwnedFd,
}

/// What a new process takes over instead of binding: the old process's listener sockets and
/// address locks. An address the new configuration no longer has is closed once it starts.
#[derive(Debug, Default)]
pub struct Inherited {
    pub listeners: Vec<HandedListener>,
    pub locks: Vec<HandedLock>,
}

impl Inherited {
    /// The number of workers the sockets were spread over: the new process must have as
    /// many, one socket each, for its clients to land where their flows are.
    pub fn workers(&self) -> Option<usize> {
        self.listeners.first().map(|l| l.sockets.len())
    }

    /// The handed-over sockets of `addr` for listener `name`: by address, or by name too for
    /// a port 0, which two listeners may both ask for.
    fn take(
        &mut self,
        protocol: route::Protocol,
        addr: SocketAddr,
        name: &str,
    ) -> Option<HandedListener> {
        let i = self.listeners.iter().position(|l| {
            l.protocol == protocol && l.requested == addr && (addr.port() != 0 || *l.name == *name)
        })?;
        Some(self.listeners.swap_remove(i))
    }

    fn has(&self, protocol: route::Protocol, addr: SocketAddr, name: &str) -> bool {
        self.listeners.iter().any(|l| {
            l.protocol == protocol && l.requested == addr && (addr.port() != 0 || *l.name == *name)
        })
    }

    fn take_lock(
        &mut self,
        protocol: route::Protocol,
        addr: SocketAddr,
    ) -> Option<claim::AddressLock> {
        let i = self
            .locks
            .iter()
            .position(|l| l.protocol == protocol && l.addr == addr)?;
        Some(claim::AddressLock::from_handed(
            self.locks.swap_remove(i).socket,
        ))
    }
}

/// A listener to bind: a name that the route snapshot knows, its protocol and addresses.
#[derive(Debug, Clone)]
pub struct ListenerSpec {
    pub name: Arc<str>,
    pub protocol: route::Protocol,
    pub addrs: Vec<SocketAddr>,
    /// Skip the one-process-per-address checks ([`claim`]): another process of the same user
    /// that binds the address with SO_REUSEPORT takes a share of new connections.
    pub shared_port: bool,
}

/// An address as the errors show it: `127.0.0.1:80`, or `udp 127.0.0.1:53`.
fn shown(protocol: route::Protocol, addr: SocketAddr) -> String {
    match protocol {
        route::Protocol::Tcp => addr.to_string(),
        route::Protocol::Udp => format!("udp {addr}"),
    }
}

#[derive(Debug, Clone)]
pub struct DataplaneConfig {
    pub workers: usize,
    pub listeners: Vec<ListenerSpec>,
    /// Relay with a user-space copy instead of splice (for tests and odd kernels).
    pub force_copy: bool,
}

struct WorkerHandle {
    commands: Sender<WorkerCommand>,
    waker: Arc<Waker>,
    thread: Option<JoinHandle<()>>,
}

/// The running data plane, owned by the control plane.
pub struct DataplaneHandle {
    routes: Arc<ArcSwap<RouteTable>>,
    workers: Vec<WorkerHandle>,
    done: Receiver<usize>,
    bound: Vec<(Arc<str>, SocketAddr)>,
    claims: Claims,
    /// Every listener address the workers serve, to find their sockets for a hand-over.
    copies: Vec<ListenerCopy>,
}

/// A listener address as configured and as bound; the workers hold its sockets.
struct ListenerCopy {
    name: Arc<str>,
    protocol: route::Protocol,
    requested: SocketAddr,
    bound: SocketAddr,
}

impl ListenerCopy {
    fn of(listener: &PreparedListener, address: &PreparedAddress) -> Result<Self, DataplaneError> {
        Ok(Self {
            name: listener.name.clone(),
            protocol: listener.protocol,
            requested: address.requested,
            bound: address.bound,
        })
    }
}

/// What this process holds on each address it listens on (port 0 excepted): the address's
/// lock, `None` while every listener on it has `shared_port: true`, and the listeners using it.
/// The lock is released when the last listener on the address is removed.
#[derive(Default)]
struct Claims(HashMap<(route::Protocol, SocketAddr), Claim>);

struct Claim {
    lock: Option<claim::AddressLock>,
    users: Vec<Arc<str>>,
}

impl Claims {
    /// Whether this process already listens on `addr` or on an address that conflicts with it
    /// (the wildcard of its family, or the reverse): a probe would only find ourselves.
    fn serves_conflicting(&self, protocol: route::Protocol, addr: SocketAddr) -> bool {
        self.0.keys().any(|(p, held)| {
            *p == protocol
                && held.port() == addr.port()
                && held.is_ipv4() == addr.is_ipv4()
                && (*held == addr || held.ip().is_unspecified() || addr.ip().is_unspecified())
        })
    }

    fn has_lock(&self, protocol: route::Protocol, addr: SocketAddr) -> bool {
        self.0
            .get(&(protocol, addr))
            .is_some_and(|c| c.lock.is_some())
    }

    fn add(&mut self, prepared: &mut PreparedListener) {
        for address in &mut prepared.addrs {
            if address.requested.port() == 0 {
                continue;
            }
            let claim = self
                .0
                .entry((prepared.protocol, address.requested))
                .or_insert_with(|| Claim {
                    lock: None,
                    users: Vec::new(),
                });
            if let Some(lock) = address.lock.take() {
                claim.lock = Some(lock);
            }
            claim.users.push(prepared.name.clone());
        }
    }

    fn rename_user(&mut self, old: &str, new: &Arc<str>) {
        for claim in self.0.values_mut() {
            for user in claim.users.iter_mut().filter(|u| ***u == *old) {
                *user = new.clone();
            }
        }
    }

    fn remove_user(&mut self, name: &str) {
        for claim in self.0.values_mut() {
            claim.users.retain(|u| **u != *name);
        }
    }

    /// An address no listener uses any more drops its lock.
    fn drop_unused(&mut self) {
        self.0.retain(|_, claim| !claim.users.is_empty());
    }
}

/// A listener whose addresses passed the checks and are bound on every worker, not yet
/// listening: dropping it closes the sockets without having queued any connection.
struct PreparedListener {
    name: Arc<str>,
    protocol: route::Protocol,
    addrs: Vec<PreparedAddress>,
}

struct PreparedAddress {
    requested: SocketAddr,
    /// The bound address (port 0 resolved).
    bound: SocketAddr,
    /// Taken for this address by this preparation (`None`: shared, port 0, or already held).
    lock: Option<claim::AddressLock>,
    sockets: Vec<Socket>,
}

/// Every listener checked and bound; nothing listens yet and no thread runs.
pub struct PreparedDataplane {
    config: DataplaneConfig,
    listeners: Vec<PreparedListener>,
    /// Started from handed-over sockets: UDP listeners wait for the flows.
    inherited: bool,
}

pub struct Dataplane;

impl Dataplane {
    /// [`Dataplane::prepare`], then [`PreparedDataplane::start`].
    pub fn start(
        config: DataplaneConfig,
        routes: Arc<RouteTable>,
    ) -> Result<DataplaneHandle, DataplaneError> {
        Self::prepare(config)?.start(routes)
    }

    /// Checks every listener's addresses and binds them in every worker, listening on none:
    /// an error here leaves no socket in any reuseport group or listen queue behind. A port 0
    /// is resolved by the first bind and reused by the other workers.
    pub fn prepare(config: DataplaneConfig) -> Result<PreparedDataplane, DataplaneError> {
        let workers = config.workers.max(1);
        let listeners = prepare_listeners(
            &config.listeners,
            &Claims::default(),
            workers,
            &mut Inherited::default(),
        )?;
        Ok(PreparedDataplane {
            config,
            listeners,
            inherited: false,
        })
    }

    /// [`Dataplane::prepare`] for the new process of a binary upgrade: an address handed over
    /// in `inherited` takes its sockets and lock, with no check and no bind; the others are
    /// checked and bound as usual, and handed-over addresses no listener asks for any more are
    /// closed. `config.workers` must be [`Inherited::workers`]. The UDP listeners are read
    /// only once [`DataplaneHandle::adopt_flows`] has been called.
    pub fn prepare_inheriting(
        config: DataplaneConfig,
        mut inherited: Inherited,
    ) -> Result<PreparedDataplane, DataplaneError> {
        let workers = config.workers.max(1);
        let listeners = prepare_listeners(
            &config.listeners,
            &Claims::default(),
            workers,
            &mut inherited,
        )?;
        for unused in &inherited.listeners {
            tracing::info!(listener = %unused.name, addr = %unused.bound, "handed-over listener no longer configured: closed");
        }
        Ok(PreparedDataplane {
            config,
            listeners,
            inherited: true,
        })
    }
}

impl PreparedDataplane {
    /// Listens on every prepared socket and starts the workers.
    pub fn start(self, routes: Arc<RouteTable>) -> Result<DataplaneHandle, DataplaneError> {
        let config = self.config;
        let workers = config.workers.max(1);
        let mut per_worker: Vec<Vec<BoundListener>> = (0..workers).map(|_| Vec::new()).collect();
        let mut bound = Vec::new();
        let mut claims = Claims::default();
        let mut copies = Vec::new();
        for mut prepared in listen_all(self.listeners)? {
            claims.add(&mut prepared);
            for address in &prepared.addrs {
                copies.push(ListenerCopy::of(&prepared, address)?);
            }
            for address in prepared.addrs {
                for (worker, socket) in per_worker.iter_mut().zip(address.sockets) {
                    worker.push(bound_listener(&prepared.name, prepared.protocol, socket));
                }
                bound.push((prepared.name.clone(), address.bound));
            }
        }
        let routes = Arc::new(ArcSwap::new(routes));
        let (done_tx, done_rx) = crossbeam_channel::unbounded();
        let mut handles = Vec::with_capacity(workers);
        // Every poll and waker first: each worker gets all the wakers, to wake the one whose
        // session is first in a pool's queue.
        let mut polls = Vec::with_capacity(workers);
        for id in 0..workers {
            let fail = |source| DataplaneError::Worker { worker: id, source };
            let poll = Poll::new().map_err(fail)?;
            let waker = Arc::new(Waker::new(poll.registry(), worker::WAKER).map_err(fail)?);
            polls.push((poll, waker));
        }
        let signals = Arc::new(queue::Signals::new(
            polls.iter().map(|(_, waker)| waker.clone()).collect(),
        ));
        for ((id, listeners), (poll, waker)) in per_worker.into_iter().enumerate().zip(polls) {
            let fail = |source| DataplaneError::Worker { worker: id, source };
            let (tx, rx) = crossbeam_channel::unbounded();
            let setup = WorkerSetup {
                id,
                poll,
                listeners,
                routes: routes.clone(),
                commands: rx,
                force_copy: config.force_copy,
                workers,
                hold_udp: self.inherited,
                signals: signals.clone(),
            };
            let worker = Worker::new(setup).map_err(fail)?;
            let done = done_tx.clone();
            let thread = std::thread::Builder::new()
                .name(format!("ballast-worker-{id}"))
                .spawn(move || {
                    worker.run();
                    let _ = done.send(id);
                })
                .map_err(fail)?;
            handles.push(WorkerHandle {
                commands: tx,
                waker,
                thread: Some(thread),
            });
        }
        Ok(DataplaneHandle {
            routes,
            workers: handles,
            done: done_rx,
            bound,
            claims,
            copies,
        })
    }
}

impl DataplaneHandle {
    /// The addresses each listener actually listens on (port 0 resolved).
    pub fn bound(&self) -> &[(Arc<str>, SocketAddr)] {
        &self.bound
    }

    /// Swaps in a new route snapshot; workers use it for every session that starts after,
    /// and move their UDP flows onto it (a flow whose backend left ends).
    pub fn publish(&self, table: Arc<RouteTable>) {
        self.routes.store(table);
        for worker in &self.workers {
            worker.send(WorkerCommand::RoutesChanged);
        }
    }

    pub fn routes(&self) -> Arc<RouteTable> {
        self.routes.load_full()
    }

    pub fn command(&mut self, command: Command) {
        // Draining workers close their listening sockets: so do we (see the module doc).
        self.copies.clear();
        for worker in &self.workers {
            worker.send(WorkerCommand::Broadcast(command));
        }
    }

    /// Binds a new listener on every worker and starts accepting on it; returns the bound
    /// addresses (port 0 resolved). Nothing is started when any check or bind fails.
    pub fn add_listener(&mut self, spec: &ListenerSpec) -> Result<Vec<SocketAddr>, DataplaneError> {
        let bound = self.replace_listeners(&[], &[], std::slice::from_ref(spec), || None)?;
        Ok(bound.into_iter().map(|(_, addr)| addr).collect())
    }

    /// A reload's listener changes, all or nothing: checks and binds every listener of `open`
    /// and listens on them (an error here changes nothing), then closes the listeners named in
    /// `close`, publishes the table `routes` returns (if any), and hands the new sockets to
    /// the workers. A new listener on an address this process serves already (a listener
    /// renamed, or moved to another name) reuses its lock. Returns the new bound addresses.
    pub fn replace_listeners(
        &mut self,
        close: &[String],
        rename: &[(String, String)],
        open: &[ListenerSpec],
        routes: impl FnOnce() -> Option<Arc<RouteTable>>,
    ) -> Result<Vec<(Arc<str>, SocketAddr)>, DataplaneError> {
        let prepared = prepare_listeners(
            open,
            &self.claims,
            self.workers.len(),
            &mut Inherited::default(),
        )?;
        let prepared = listen_all(prepared)?;
        let mut copies = Vec::new();
        for listener in &prepared {
            for address in &listener.addrs {
                copies.push(ListenerCopy::of(listener, address)?);
            }
        }
        for name in close {
            self.close_listener(name);
        }
        if let Some(table) = routes() {
            // The old names stay aliases of the new ones in this snapshot: a worker that
            // accepts before it handles the rename still finds its listener's route.
            let table = rename
                .iter()
                .fold(Arc::unwrap_or_clone(table), |t, (old, new)| {
                    t.with_alias(old, new)
                });
            self.publish(Arc::new(table));
        }
        for (old, new) in rename {
            let (old, new): (Arc<str>, Arc<str>) = (old.as_str().into(), new.as_str().into());
            for worker in &self.workers {
                worker.send(WorkerCommand::RenameListener(old.clone(), new.clone()));
            }
            for (name, _) in self.bound.iter_mut().filter(|(n, _)| *n == old) {
                *name = new.clone();
            }
            for copy in self.copies.iter_mut().filter(|c| c.name == old) {
                copy.name = new.clone();
            }
            self.claims.rename_user(&old, &new);
        }
        self.copies.append(&mut copies);
        let mut added = Vec::new();
        for mut listener in prepared {
            self.claims.add(&mut listener);
            for address in listener.addrs {
                for (worker, socket) in self.workers.iter().zip(address.sockets) {
                    let bound = bound_listener(&listener.name, listener.protocol, socket);
                    worker.send(WorkerCommand::AddListener(bound));
                }
                self.bound.push((listener.name.clone(), address.bound));
                added.push((listener.name.clone(), address.bound));
            }
        }
        // Only now: a listener moved to a new name keeps the lock the old name held.
        self.claims.drop_unused();
        Ok(added)
    }

    /// Closes a listener's sockets in every worker; its established sessions continue. An
    /// address no other listener of this process uses gives up its lock at once: its sockets
    /// still close a moment later in the workers, which a newcomer's probe would see.
    pub fn remove_listener(&mut self, name: &str) {
        self.close_listener(name);
        self.claims.drop_unused();
    }

    /// Closes a listener's sockets and forgets it as a user of its addresses.
    fn close_listener(&mut self, name: &str) {
        let name: Arc<str> = name.into();
        for worker in &self.workers {
            worker.send(WorkerCommand::RemoveListener(name.clone()));
        }
        self.bound.retain(|(n, _)| *n != name);
        self.copies.retain(|c| c.name != name);
        self.claims.remove_user(&name);
    }

    /// Duplicates of every listening socket and address lock, for a new process to take over
    /// (binary upgrade); this process keeps serving on its own until it drains.
    pub fn hand_over_listeners(&self) -> std::io::Result<Inherited> {
        let mut replies = Vec::with_capacity(self.workers.len());
        for worker in &self.workers {
            let (tx, rx) = crossbeam_channel::bounded(1);
            worker.send(WorkerCommand::DuplicateListeners(tx));
            replies.push(rx);
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        let mut per_worker = Vec::with_capacity(replies.len());
        for rx in replies {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let duplicates = rx
                .recv_timeout(left)
                .map_err(|_| std::io::Error::other("a worker did not hand over its sockets"))?;
            per_worker.push(duplicates);
        }
        let mut inherited = Inherited::default();
        for copy in &self.copies {
            let mut sockets = Vec::with_capacity(per_worker.len());
            for duplicates in &mut per_worker {
                let i = duplicates
                    .iter()
                    .position(|(name, local, _)| *name == copy.name && *local == copy.bound)
                    .ok_or_else(|| {
                        std::io::Error::other(format!(
                            "listener {}: a worker has no socket on {}",
                            copy.name, copy.bound
                        ))
                    })?;
                sockets.push(duplicates.swap_remove(i).2);
            }
            inherited.listeners.push(HandedListener {
                name: copy.name.clone(),
                protocol: copy.protocol,
                requested: copy.requested,
                bound: copy.bound,
                sockets,
            });
        }
        for (&(protocol, addr), claim) in &self.claims.0 {
            if let Some(lock) = &claim.lock {
                inherited.locks.push(HandedLock {
                    protocol,
                    addr,
                    socket: lock.try_clone_socket()?,
                });
            }
        }
        Ok(inherited)
    }

    /// The second half of a hand-over, once the new process is ready: every worker gives up
    /// its UDP flows and starts draining, as on [`Command::Drain`]. Returns each worker's
    /// flows by worker index (a worker that does not answer within `timeout` keeps its own).
    pub fn hand_over_flows(&mut self, timeout: Duration) -> Vec<Vec<HandedFlow>> {
        self.copies.clear();
        let mut replies = Vec::with_capacity(self.workers.len());
        for worker in &self.workers {
            let (tx, rx) = crossbeam_channel::bounded(1);
            worker.send(WorkerCommand::HandOver(tx));
            replies.push(rx);
        }
        let deadline = std::time::Instant::now() + timeout;
        replies
            .into_iter()
            .map(|rx| {
                rx.recv_timeout(deadline.saturating_duration_since(std::time::Instant::now()))
                    .unwrap_or_default()
            })
            .collect()
    }

    /// Gives each worker its share of the flows handed over by the old process (by worker
    /// index) and lets it read its UDP listeners; call it once after start from
    /// [`Dataplane::prepare_inheriting`], with no flows if none came.
    pub fn adopt_flows(&self, mut flows: Vec<Vec<HandedFlow>>) {
        flows.resize_with(self.workers.len(), Vec::new);
        for (worker, share) in self.workers.iter().zip(flows) {
            worker.send(WorkerCommand::AdoptFlows(share));
        }
    }

    /// Clears the address locks' queues of look-ups by refused starts; the control plane
    /// calls it now and then (see [`claim::AddressLock::answer_lookups`]).
    pub fn answer_lock_lookups(&self) {
        for claim in self.claims.0.values() {
            if let Some(lock) = &claim.lock {
                lock.answer_lookups();
            }
        }
    }

    /// Closes every established session to the backend that owns `state`.
    pub fn close_backend_sessions(&self, state: &Arc<BackendState>) {
        for worker in &self.workers {
            worker.send(WorkerCommand::CloseBackend(state.clone()));
        }
    }

    /// Waits until every worker has exited or `timeout` passes; true when all exited.
    pub fn wait(&mut self, timeout: Duration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if self.workers.iter().all(|w| w.thread.is_none()) {
                return true;
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.done.recv_timeout(left) {
                Ok(id) => {
                    if let Some(thread) = self.workers.get_mut(id).and_then(|w| w.thread.take()) {
                        let _ = thread.join();
                    }
                }
                Err(_) => return self.workers.iter().all(|w| w.thread.is_none()),
            }
        }
    }
}

impl WorkerHandle {
    fn send(&self, command: WorkerCommand) {
        // A worker that already exited has dropped its receiver; nothing to tell it.
        if self.commands.send(command).is_ok() {
            let _ = self.waker.wake();
        }
    }
}

/// Checks (lock and probe, see [`claim`]) every address of `specs` that `held` does not
/// already cover, then binds each address once per worker without listening. Every check runs
/// before the first bind: a UDP socket joins its reuseport group at bind time.
fn prepare_listeners(
    specs: &[ListenerSpec],
    held: &Claims,
    workers: usize,
    inherited: &mut Inherited,
) -> Result<Vec<PreparedListener>, DataplaneError> {
    let mut locks: HashMap<(route::Protocol, SocketAddr), claim::AddressLock> = HashMap::new();
    let mut checked = Claims::default();
    for spec in specs {
        for &addr in &spec.addrs {
            let key = (spec.protocol, addr);
            if inherited.has(spec.protocol, addr, &spec.name) {
                // The old process checked it; its lock comes with the sockets.
                if let Some(lock) = inherited.take_lock(spec.protocol, addr) {
                    locks.insert(key, lock);
                }
                checked.0.entry(key).or_insert_with(|| Claim {
                    lock: None,
                    users: Vec::new(),
                });
                continue;
            }
            if addr.port() == 0 || spec.shared_port {
                continue;
            }
            let in_use = |e: claim::ClaimError| match e {
                claim::ClaimError::InUse(holder) => DataplaneError::InUse {
                    listener: spec.name.to_string(),
                    protocol: spec.protocol,
                    addr,
                    holder,
                },
                claim::ClaimError::Io(source) => DataplaneError::Bind {
                    listener: spec.name.to_string(),
                    addr,
                    source,
                },
            };
            // The probe first, so that its holder look-up does not find our own lock; both
            // before any bind, which is what closes the race of two starts.
            if !held.serves_conflicting(spec.protocol, addr)
                && !checked.serves_conflicting(spec.protocol, addr)
            {
                claim::probe(spec.protocol, addr).map_err(in_use)?;
            }
            if !held.has_lock(spec.protocol, addr) && !locks.contains_key(&key) {
                locks.insert(key, claim::lock(spec.protocol, addr).map_err(in_use)?);
            }
            checked.0.entry(key).or_insert_with(|| Claim {
                lock: None,
                users: Vec::new(),
            });
        }
    }
    let mut out = Vec::with_capacity(specs.len());
    for spec in specs {
        let mut addrs = Vec::with_capacity(spec.addrs.len());
        for &requested in &spec.addrs {
            if let Some(handed) = inherited.take(spec.protocol, requested, &spec.name) {
                if handed.sockets.len() != workers {
                    return Err(DataplaneError::Inherited {
                        listener: spec.name.to_string(),
                        addr: handed.bound,
                        got: handed.sockets.len(),
                        workers,
                    });
                }
                addrs.push(PreparedAddress {
                    requested,
                    bound: handed.bound,
                    lock: locks.remove(&(spec.protocol, requested)),
                    sockets: handed.sockets.into_iter().map(Socket::from).collect(),
                });
                continue;
            }
            let mut addr = requested;
            let mut sockets = Vec::with_capacity(workers);
            for _ in 0..workers {
                let socket = bind(addr, spec.protocol).map_err(|source| DataplaneError::Bind {
                    listener: spec.name.to_string(),
                    addr,
                    source,
                })?;
                if addr.port() == 0 {
                    if let Some(local) = socket.local_addr().ok().and_then(|a| a.as_socket()) {
                        addr = local;
                    }
                }
                sockets.push(socket);
            }
            addrs.push(PreparedAddress {
                requested,
                bound: addr,
                lock: locks.remove(&(spec.protocol, requested)),
                sockets,
            });
        }
        out.push(PreparedListener {
            name: spec.name.clone(),
            protocol: spec.protocol,
            addrs,
        });
    }
    Ok(out)
}

/// Starts listening on every prepared TCP socket (UDP sockets receive once bound).
fn listen_all(prepared: Vec<PreparedListener>) -> Result<Vec<PreparedListener>, DataplaneError> {
    for listener in &prepared {
        if listener.protocol != route::Protocol::Tcp {
            continue;
        }
        for address in &listener.addrs {
            for socket in &address.sockets {
                socket
                    .listen(BACKLOG)
                    .map_err(|source| DataplaneError::Bind {
                        listener: listener.name.to_string(),
                        addr: address.bound,
                        source,
                    })?;
            }
        }
    }
    Ok(prepared)
}

fn bound_listener(name: &Arc<str>, protocol: route::Protocol, socket: Socket) -> BoundListener {
    let socket = match protocol {
        route::Protocol::Tcp => BoundSocket::Tcp(socket.into()),
        route::Protocol::Udp => BoundSocket::Udp(socket.into()),
    };
    BoundListener {
        name: name.clone(),
        socket,
    }
}

/// Socket buffer asked for UDP listeners: bursts of datagrams wait here between polls. The
/// kernel caps it at net.core.rmem_max / wmem_max.
const UDP_BUFFER: usize = 4 << 20;

/// Binds one SO_REUSEPORT socket of a listener; a TCP one does not listen yet.
fn bind(addr: SocketAddr, protocol: route::Protocol) -> std::io::Result<Socket> {
    let kind = match protocol {
        route::Protocol::Tcp => Type::STREAM,
        route::Protocol::Udp => Type::DGRAM,
    };
    let socket = Socket::new(Domain::for_address(addr), kind, None)?;
    if addr.is_ipv6() {
        // `[::]:p` and `0.0.0.0:p` may both be listed; each must bind its own family only.
        socket.set_only_v6(true)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.set_cloexec(true)?;
    socket.bind(&addr.into())?;
    match protocol {
        route::Protocol::Tcp => {
            // Nagle would delay small request/response exchanges by up to 40 ms through the
            // relay. Accepted sockets inherit TCP_NODELAY from the listener (Linux copies the
            // listener's TCP state into each child), which saves a setsockopt per connection.
            // listen() comes later, in `listen_all`, once every address has been checked.
            socket.set_nodelay(true)?;
        }
        route::Protocol::Udp => {
            // Best effort: a smaller buffer still works, it only drops bursts sooner.
            let _ = socket.set_recv_buffer_size(UDP_BUFFER);
            let _ = socket.set_send_buffer_size(UDP_BUFFER);
            // Best effort too: without UDP_GRO each datagram is received on its own.
            sys::enable_udp_gro(std::os::fd::AsFd::as_fd(&socket));
            if addr.ip().is_unspecified() {
                // Replies must leave from the address each client sent to (see worker::udp).
                sys::enable_pktinfo(std::os::fd::AsFd::as_fd(&socket), addr.is_ipv6());
            }
        }
    }
    Ok(socket)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// The worker no longer sets TCP_NODELAY on each accepted socket: it relies on the
    /// kernel copying it from the listener. If a kernel ever stopped doing that, small
    /// exchanges through the relay would wait for Nagle; this catches it.
    #[test]
    fn accepted_sockets_inherit_nodelay_from_the_listener() {
        let listener = bind("127.0.0.1:0".parse().unwrap(), route::Protocol::Tcp).unwrap();
        listener.listen(BACKLOG).unwrap();
        let addr = listener.local_addr().unwrap().as_socket().unwrap();
        let _client = std::net::TcpStream::connect(addr).unwrap();
        listener.set_nonblocking(false).unwrap();
        let (accepted, _) = listener.accept().unwrap();
        assert!(accepted.nodelay().unwrap(), "TCP_NODELAY was not inherited");
    }
}
