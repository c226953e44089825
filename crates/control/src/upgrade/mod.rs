//! Binary upgrade: a running Ballast starts a new binary as its child and hands it the
//! listening sockets themselves, its UDP flows, and its backends' health and admin states,
//! then drains; not a connection is refused or reset, not a UDP flow changes backend.
//!
//! The steps (old process = parent, new process = child):
//!
//! 1. The parent makes a `SOCK_SEQPACKET` socket pair and starts the binary (the path
//!    `/proc/self/exe` named when it started, or the one asked for) with its own arguments;
//!    the child inherits one end, whose number is in `BALLAST_UPGRADE_FD`. The parent sends
//!    [`wire::State`]: duplicates of every worker's listening sockets (TCP and UDP), of the
//!    admin socket, and of every address lock's socket, with health and admin states.
//! 2. The child loads the configuration with the loader `run` uses, and starts on the
//!    sockets it was handed: an address it was handed is never bound again; a new one is
//!    checked and bound as at start; a handed-over one no longer configured is closed. Its
//!    UDP listeners are not read yet. It answers [`wire::Report`]: ready, or failed with the
//!    reasons. A child that fails, exits, or does not answer within [`READY_TIMEOUT`] is
//!    killed; the parent has changed nothing and serves on, and says why in its log and in
//!    the API's answer.
//! 3. Only then the parent stops accepting (its workers take their listening sockets out of
//!    epoll and close their descriptors: the sockets live on in the child, so they stay in
//!    their SO_REUSEPORT groups with their queued connections; closing a socket that is the
//!    last holder is what drops queued connections, and that never happens here), stops its
//!    admin server's accept loop, takes its UDP flows out of its workers, and sends them
//!    with their sockets ([`wire::Flows`]). Its sessions drain as on SIGTERM.
//! 4. While it drains, the parent sends [`wire::Draining`] every [`DRAIN_REPORT_EVERY`]:
//!    the sessions it still holds, so that the child, which now owns the admin address,
//!    reports them (its status and `/metrics` count them as active, marked as the old
//!    process's). The socket closes when the parent exits.
//! 5. The child gives each of its workers the flows of the parent's worker of the same
//!    index, which held the same socket of the group and so sees the same clients, then
//!    starts reading its UDP listeners: datagrams that arrived meanwhile waited in the
//!    socket's buffer.
//!
//! File descriptors during the hand-over: until step 3 the parent's workers own their
//! listening sockets; for step 1 each worker makes a duplicate of its own, held by the
//! message being sent and closed once sent; the duplicates in flight belong to the kernel, then to the child, whose workers own them
//! from step 2. Both processes hold every listening socket and lock from step 1 to step 3,
//! which is why no stranger can bind or lock an address in between. A UDP flow socket
//! belongs to the parent's worker until step 3, then to the message, then to the child's
//! worker. The socket pair's child end is closed in the parent as soon as the child runs.

pub mod wire;

use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ballast_dataplane::{claim, sys, HandedFlow, HandedListener, HandedLock, Inherited};

use crate::config::Config;
use crate::routes::StateRegistry;
use serde::Serialize;
use socket2::{Domain, Socket, Type};

pub use wire::HandoverError;

/// The environment variable that gives the child the number of its end of the socket pair.
pub const FD_ENV: &str = "BALLAST_UPGRADE_FD";
/// How long a child may take to load its configuration and start.
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// How long one message may take to be sent, and the flows to arrive once the child is ready.
const MESSAGE_TIMEOUT: Duration = Duration::from_secs(10);
/// How often a draining old process tells the new one what it still holds.
pub const DRAIN_REPORT_EVERY: Duration = Duration::from_millis(250);
/// How long one such report may wait to be sent: a child that does not read misses it.
const DRAIN_REPORT_TIMEOUT: Duration = Duration::from_millis(100);

/// How long the parent's workers have to give up their flows.
pub const FLOWS_TIMEOUT: Duration = Duration::from_secs(2);

/// Why an upgrade did not happen; the running process serves on, unchanged.
#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    #[error("upgrade needs a process started by `ballast run` with a configuration file")]
    NoConfigFile,
    #[error("stopping: a draining process starts no upgrade")]
    Draining,
    #[error("an upgrade is already under way")]
    InProgress,
    #[error("this process cannot tell which binary it runs (/proc/self/exe); name one")]
    NoBinary,
    #[error("cannot hand over the sockets: {0}")]
    Sockets(std::io::Error),
    #[error("cannot start {binary}: {source}")]
    Spawn {
        binary: String,
        source: std::io::Error,
    },
    #[error("the new process (pid {pid}) refused to start: {}", .errors.join("; "))]
    ChildFailed { pid: u32, errors: Vec<String> },
    #[error("the new process (pid {pid}) exited before it was ready ({status})")]
    ChildExited { pid: u32, status: String },
    #[error("the new process (pid {pid}) was not ready within {timeout:?}; killed")]
    NotReady { pid: u32, timeout: Duration },
    #[error("hand-over to the new process (pid {pid}) failed: {source}")]
    Handover { pid: u32, source: HandoverError },
}

impl UpgradeError {
    /// One line per problem, as logged and returned by the admin API.
    pub fn lines(&self) -> Vec<String> {
        match self {
            UpgradeError::ChildFailed { errors, .. } if !errors.is_empty() => errors.clone(),
            other => vec![other.to_string()],
        }
    }
}

/// What a successful upgrade handed over.
#[derive(Debug, Clone, Serialize)]
pub struct UpgradeReport {
    pub pid: u32,
    pub binary: String,
    pub listener_sockets: usize,
    pub udp_flows: usize,
}

/// The parent's end of a hand-over whose child reported ready: [`Parent::send_flows`]
/// completes it.
pub struct Parent {
    socket: Socket,
    child: Child,
    binary: String,
}

/// Step 1 and 2 on the parent's side: starts `binary` with this process's arguments, sends
/// it `state` with the descriptors, and waits for its report. On any failure the child is
/// killed and reaped before this returns.
pub fn start_child(
    binary: &std::path::Path,
    handed: &Handed,
    backends: Vec<wire::BackendEntry>,
) -> Result<Parent, UpgradeError> {
    let (ours, theirs) =
        Socket::pair(Domain::UNIX, Type::SEQPACKET, None).map_err(UpgradeError::Sockets)?;
    theirs.set_cloexec(false).map_err(UpgradeError::Sockets)?;
    let shown = binary.display().to_string();
    let spawned = Command::new(binary)
        .args(std::env::args_os().skip(1))
        .env(FD_ENV, theirs.as_raw_fd().to_string())
        .stdin(Stdio::null())
        .spawn();
    // The child has its own copy now (or there is no child): ours must not keep its end open,
    // or a child that dies would never look closed.
    drop(theirs);
    let mut child = spawned.map_err(|source| UpgradeError::Spawn {
        binary: shown.clone(),
        source,
    })?;
    let pid = child.id();
    let (state, fds) = handed.message(backends);
    let outcome = wire::send(&ours, &state, &fds, MESSAGE_TIMEOUT)
        .and_then(|()| wire::recv::<wire::Report>(&ours, Instant::now() + READY_TIMEOUT));
    let failure = match outcome {
        Ok((wire::Report::Ready { .. }, _)) => {
            return Ok(Parent {
                socket: ours,
                child,
                binary: shown,
            })
        }
        Ok((wire::Report::Failed { errors, .. }, _)) => UpgradeError::ChildFailed { pid, errors },
        Err(HandoverError::Timeout(_)) => UpgradeError::NotReady {
            pid,
            timeout: READY_TIMEOUT,
        },
        Err(HandoverError::Closed) => {
            // It exited (or closed its end, which it does only by exiting): say how.
            let status = wait_briefly(&mut child);
            return Err(UpgradeError::ChildExited { pid, status });
        }
        Err(source) => UpgradeError::Handover { pid, source },
    };
    let _ = child.kill();
    let _ = child.wait();
    Err(failure)
}

/// The child's exit status, waiting a moment for it; killed if it lingers.
fn wait_briefly(child: &mut Child) -> String {
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return status.to_string();
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    child
        .wait()
        .map_or_else(|e| e.to_string(), |status| status.to_string())
}

impl Parent {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Step 3's end: sends the flows the workers gave up (by worker index). The child is left
    /// to run; this process will exit before it, and reports its draining sessions to it
    /// through the [`DrainReporter`] (step 4).
    pub fn send_flows(
        self,
        flows: Vec<Vec<HandedFlow>>,
        sockets: usize,
    ) -> (UpgradeReport, DrainReporter) {
        let mut entries = Vec::new();
        let mut fds = Vec::new();
        for (worker, share) in flows.iter().enumerate() {
            for flow in share {
                entries.push(wire::FlowEntry {
                    worker,
                    listener: flow.listener.to_string(),
                    listener_addr: flow.listener_addr,
                    client: flow.client,
                    backend: flow.backend,
                    local: flow.local,
                    reply_from: flow.reply_from,
                    fd: fds.len(),
                });
                fds.push(flow.socket.as_fd());
            }
        }
        let udp_flows = entries.len();
        let message = wire::Flows { flows: entries };
        if let Err(e) = wire::send(&self.socket, &message, &fds, MESSAGE_TIMEOUT) {
            tracing::warn!(error = %e, "upgrade: the UDP flows could not be handed over; their clients start new ones");
        }
        let report = UpgradeReport {
            pid: self.child.id(),
            binary: self.binary,
            listener_sockets: sockets,
            udp_flows,
        };
        let reporter = DrainReporter {
            socket: Some(self.socket),
            last: None,
        };
        (report, reporter)
    }
}

/// The old process's end of the socket pair once it drains: step 4's reports go there.
pub struct DrainReporter {
    /// `None` once the child is gone (or stopped reading): nothing more is sent.
    socket: Option<Socket>,
    last: Option<Instant>,
}

impl DrainReporter {
    /// Sends `sample()` if [`DRAIN_REPORT_EVERY`] has passed since the last report.
    pub fn tick(&mut self, sample: impl FnOnce() -> wire::Draining) {
        let Some(socket) = &self.socket else {
            return;
        };
        if self
            .last
            .is_some_and(|at| at.elapsed() < DRAIN_REPORT_EVERY)
        {
            return;
        }
        self.last = Some(Instant::now());
        match wire::send(socket, &sample(), &[], DRAIN_REPORT_TIMEOUT) {
            Ok(()) | Err(HandoverError::Timeout(_)) => {}
            Err(_) => self.socket = None,
        }
    }
}

/// The new process's record of what the processes before it still hold, kept current by a
/// thread reading their reports until their socket closes.
#[derive(Clone, Default)]
pub struct Predecessors(std::sync::Arc<std::sync::Mutex<Option<wire::Draining>>>);

impl Predecessors {
    /// What they held at their last report; `None` once they have all exited (or there
    /// were none).
    pub fn current(&self) -> Option<wire::Draining> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn set(&self, value: Option<wire::Draining>) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = value;
    }
}

/// What the parent hands over in step 1, duplicates all.
pub struct Handed {
    pub dataplane: Inherited,
    pub admin: Option<HandedAdmin>,
}

/// The admin server's listening socket and its address lock.
pub struct HandedAdmin {
    pub requested: SocketAddr,
    pub bound: SocketAddr,
    pub socket: OwnedFd,
    pub lock: Option<OwnedFd>,
}

impl Handed {
    /// The listener sockets handed over.
    pub fn sockets(&self) -> usize {
        self.dataplane
            .listeners
            .iter()
            .map(|l| l.sockets.len())
            .sum()
    }

    fn message(&self, backends: Vec<wire::BackendEntry>) -> (wire::State, Vec<BorrowedFd<'_>>) {
        let mut fds: Vec<BorrowedFd<'_>> = Vec::new();
        let mut listeners = Vec::new();
        for l in &self.dataplane.listeners {
            listeners.push(wire::ListenerEntry {
                name: l.name.to_string(),
                protocol: l.protocol.into(),
                requested: l.requested,
                bound: l.bound,
                fds: l.sockets.iter().map(|s| attach(&mut fds, s)).collect(),
            });
        }
        let mut locks = Vec::new();
        for l in &self.dataplane.locks {
            locks.push(wire::LockEntry {
                protocol: l.protocol.into(),
                addr: l.addr,
                fd: attach(&mut fds, &l.socket),
            });
        }
        let admin = self.admin.as_ref().map(|a| wire::AdminEntry {
            requested: a.requested,
            bound: a.bound,
            fd: attach(&mut fds, &a.socket),
            lock_fd: a.lock.as_ref().map(|l| attach(&mut fds, l)),
        });
        let state = wire::State {
            version: wire::VERSION,
            parent_pid: std::process::id(),
            listeners,
            locks,
            admin,
            backends,
        };
        (state, fds)
    }
}

/// Adds `fd` to the descriptors of a message; its index there.
fn attach<'a>(fds: &mut Vec<BorrowedFd<'a>>, fd: &'a OwnedFd) -> usize {
    fds.push(fd.as_fd());
    fds.len() - 1
}

/// What the child was handed, for [`crate::server::Server::start`].
pub struct Takeover {
    pub parent_pid: u32,
    pub dataplane: Inherited,
    pub admin: Option<InheritedAdmin>,
    pub backends: Vec<wire::BackendEntry>,
}

pub struct InheritedAdmin {
    pub requested: SocketAddr,
    pub bound: SocketAddr,
    pub socket: Socket,
    pub lock: Option<claim::AddressLock>,
}

/// The child's end of the socket pair: its reports go there, and the flows come from there.
pub struct Link {
    socket: Socket,
}

impl Takeover {
    /// The hand-over this process was started for, if `BALLAST_UPGRADE_FD` names one: takes
    /// the socket and receives step 1's message.
    pub fn from_env() -> Result<Option<(Link, Self)>, HandoverError> {
        let Some(value) = std::env::var_os(FD_ENV) else {
            return Ok(None);
        };
        let raw: i32 = value
            .to_str()
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| HandoverError::Malformed(format!("{FD_ENV} is not a descriptor")))?;
        let link = Socket::from(sys::adopt_inherited_socket(raw)?);
        link.set_cloexec(true)?;
        let (state, mut fds) = wire::recv::<wire::State>(&link, Instant::now() + MESSAGE_TIMEOUT)?;
        let link = Link { socket: link };
        if state.version != wire::VERSION {
            let error = HandoverError::Malformed(format!(
                "hand-over version {} (this binary knows {})",
                state.version,
                wire::VERSION
            ));
            link.fail(vec![error.to_string()]);
            return Err(error);
        }
        match Self::from_state(state, &mut fds) {
            Ok(takeover) => Ok(Some((link, takeover))),
            Err(error) => {
                link.fail(vec![error.to_string()]);
                Err(error)
            }
        }
    }

    fn from_state(state: wire::State, fds: &mut wire::Descriptors) -> Result<Self, HandoverError> {
        let mut dataplane = Inherited::default();
        for l in state.listeners {
            let sockets = l
                .fds
                .iter()
                .map(|&i| fds.take(i))
                .collect::<Result<Vec<_>, _>>()?;
            if sockets.is_empty() {
                return Err(HandoverError::Malformed(format!(
                    "listener {} has no socket",
                    l.name
                )));
            }
            dataplane.listeners.push(HandedListener {
                name: l.name.as_str().into(),
                protocol: l.protocol.into(),
                requested: l.requested,
                bound: l.bound,
                sockets,
            });
        }
        if let Some(workers) = dataplane.workers() {
            if dataplane
                .listeners
                .iter()
                .any(|l| l.sockets.len() != workers)
            {
                return Err(HandoverError::Malformed(
                    "listeners handed over for different numbers of workers".into(),
                ));
            }
        }
        for l in state.locks {
            dataplane.locks.push(HandedLock {
                protocol: l.protocol.into(),
                addr: l.addr,
                socket: fds.take(l.fd)?,
            });
        }
        let admin = match state.admin {
            Some(a) => Some(InheritedAdmin {
                requested: a.requested,
                bound: a.bound,
                socket: Socket::from(fds.take(a.fd)?),
                lock: match a.lock_fd {
                    Some(i) => Some(claim::AddressLock::from_handed(fds.take(i)?)),
                    None => None,
                },
            }),
            None => None,
        };
        Ok(Self {
            parent_pid: state.parent_pid,
            dataplane,
            admin,
            backends: state.backends,
        })
    }
}

impl Link {
    /// Tells the parent this process will not serve, and why; it then kills and reaps us.
    pub fn fail(&self, errors: Vec<String>) {
        let report = wire::Report::Failed {
            pid: std::process::id(),
            errors,
        };
        let _ = wire::send(&self.socket, &report, &[], MESSAGE_TIMEOUT);
    }

    /// Tells the parent this process serves, and receives its UDP flows, by worker index.
    /// Whatever goes wrong, returns (possibly no flows): the UDP listeners must be read.
    /// Then follows the old process's drain reports (step 4) into `predecessors` from a
    /// thread of its own, which owns the socket from here on and ends when it closes.
    pub fn ready(self, predecessors: &Predecessors) -> Vec<Vec<HandedFlow>> {
        let flows = self.receive_flows();
        let watched = predecessors.clone();
        let socket = self.socket;
        let spawned = std::thread::Builder::new()
            .name("upgrade-predecessor".into())
            .spawn(move || follow_drain_reports(&socket, &watched));
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "upgrade: the old process's draining sessions will not be shown");
        }
        flows
    }

    fn receive_flows(&self) -> Vec<Vec<HandedFlow>> {
        let report = wire::Report::Ready {
            pid: std::process::id(),
        };
        let received = wire::send(&self.socket, &report, &[], MESSAGE_TIMEOUT).and_then(|()| {
            wire::recv::<wire::Flows>(&self.socket, Instant::now() + MESSAGE_TIMEOUT)
        });
        let (message, mut fds) = match received {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "upgrade: no UDP flows from the old process; their clients start new ones");
                return Vec::new();
            }
        };
        let mut flows: Vec<Vec<HandedFlow>> = Vec::new();
        for entry in message.flows {
            let Ok(socket) = fds.take(entry.fd) else {
                tracing::warn!(
                    fd = entry.fd,
                    "upgrade: a handed-over flow names no descriptor; dropped"
                );
                continue;
            };
            if flows.len() <= entry.worker {
                if entry.worker > 4096 {
                    continue;
                }
                flows.resize_with(entry.worker + 1, Vec::new);
            }
            if let Some(share) = flows.get_mut(entry.worker) {
                share.push(HandedFlow {
                    listener: entry.listener.as_str().into(),
                    listener_addr: entry.listener_addr,
                    client: entry.client,
                    backend: entry.backend,
                    local: entry.local,
                    reply_from: entry.reply_from,
                    socket,
                });
            }
        }
        flows
    }
}

/// Reads drain reports until the old process is gone. A silence (a blocked old process) keeps
/// the last report; every wait is bounded, so the thread never spins.
fn follow_drain_reports(socket: &Socket, predecessors: &Predecessors) {
    loop {
        match wire::recv::<wire::Draining>(socket, Instant::now() + Duration::from_secs(5)) {
            Ok((report, _)) => predecessors.set(Some(report)),
            Err(HandoverError::Timeout(_)) => {}
            Err(HandoverError::Closed) => break,
            Err(e) => {
                tracing::debug!(error = %e, "upgrade: the old process's reports stopped");
                break;
            }
        }
    }
    predecessors.set(None);
}

/// The path to start for an upgrade when none is asked for: this binary's, as it was when the
/// process started (a package manager that replaces the file leaves /proc/self/exe naming the
/// deleted one, so the path is read at start, not at upgrade time).
pub fn own_binary() -> Option<PathBuf> {
    std::fs::read_link("/proc/self/exe").ok()
}

/// Every configured backend's health verdict and admin state, to hand over.
pub fn backend_states(config: &Config, registry: &StateRegistry) -> Vec<wire::BackendEntry> {
    let mut entries = Vec::new();
    for pool in &config.pools {
        for backend in &pool.backends {
            if let Some(state) = registry.get_backend(&pool.name, backend.address) {
                entries.push(wire::BackendEntry {
                    pool: pool.name.clone(),
                    address: backend.address,
                    healthy: state.is_healthy(),
                    admin: state.admin().into(),
                });
            }
        }
    }
    entries
}

/// Sets the handed-over states on the backends this configuration still has (by pool name
/// and address); health checks then go on from the verdict they had.
pub fn apply_backend_states(entries: &[wire::BackendEntry], registry: &StateRegistry) {
    for entry in entries {
        if let Some(state) = registry.get_backend(&entry.pool, entry.address) {
            state.set_healthy(entry.healthy);
            state.set_admin(entry.admin.into());
        }
    }
}
