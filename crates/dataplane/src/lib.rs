//! Ballast's data plane: the hot path of an L4 load balancer.
//!
//! [`Dataplane::start`] binds every listener once per worker (SO_REUSEPORT, so the kernel
//! spreads new connections over workers) and starts one thread per worker, each with its own
//! `mio::Poll`. A worker accepts a connection, admits it (listener and backend limits), asks the
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

pub mod balance;
pub mod clock;
pub mod histogram;
mod lru;
mod pipes;
pub mod proto;
mod relay;
pub mod route;
pub mod sni;
pub mod sys;
pub mod udp;
mod worker;

use std::net::SocketAddr;
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
    #[error("cannot start worker {worker}: {source}")]
    Worker {
        worker: usize,
        source: std::io::Error,
    },
}

/// A listener to bind: a name that the route snapshot knows, its protocol and addresses.
#[derive(Debug, Clone)]
pub struct ListenerSpec {
    pub name: Arc<str>,
    pub protocol: route::Protocol,
    pub addrs: Vec<SocketAddr>,
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
}

pub struct Dataplane;

impl Dataplane {
    /// Binds every listener in every worker, then starts the workers. Binding happens here,
    /// before any thread starts, so a bad address fails the start with a clear error. A port 0
    /// is resolved by the first bind and reused by the other workers.
    pub fn start(
        config: DataplaneConfig,
        routes: Arc<RouteTable>,
    ) -> Result<DataplaneHandle, DataplaneError> {
        let workers = config.workers.max(1);
        let mut per_worker: Vec<Vec<BoundListener>> = (0..workers).map(|_| Vec::new()).collect();
        let mut bound = Vec::new();
        for spec in &config.listeners {
            for (addr, sockets) in bind_listener(spec, workers)? {
                for (worker, socket) in per_worker.iter_mut().zip(sockets) {
                    worker.push(socket);
                }
                bound.push((spec.name.clone(), addr));
            }
        }
        let routes = Arc::new(ArcSwap::new(routes));
        let (done_tx, done_rx) = crossbeam_channel::unbounded();
        let mut handles = Vec::with_capacity(workers);
        for (id, listeners) in per_worker.into_iter().enumerate() {
            let fail = |source| DataplaneError::Worker { worker: id, source };
            let poll = Poll::new().map_err(fail)?;
            let waker = Arc::new(Waker::new(poll.registry(), worker::WAKER).map_err(fail)?);
            let (tx, rx) = crossbeam_channel::unbounded();
            let setup = WorkerSetup {
                id,
                poll,
                listeners,
                routes: routes.clone(),
                commands: rx,
                force_copy: config.force_copy,
                workers,
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

    pub fn command(&self, command: Command) {
        for worker in &self.workers {
            worker.send(WorkerCommand::Broadcast(command));
        }
    }

    /// Binds a new listener on every worker and starts accepting on it; returns the bound
    /// addresses (port 0 resolved). Nothing is started when any bind fails.
    pub fn add_listener(&mut self, spec: &ListenerSpec) -> Result<Vec<SocketAddr>, DataplaneError> {
        let bound = bind_listener(spec, self.workers.len())?;
        let mut addrs = Vec::with_capacity(bound.len());
        for (addr, sockets) in bound {
            for (worker, socket) in self.workers.iter().zip(sockets) {
                worker.send(WorkerCommand::AddListener(socket));
            }
            self.bound.push((spec.name.clone(), addr));
            addrs.push(addr);
        }
        Ok(addrs)
    }

    /// Closes a listener's sockets in every worker; its established sessions continue.
    pub fn remove_listener(&mut self, name: &str) {
        let name: Arc<str> = name.into();
        for worker in &self.workers {
            worker.send(WorkerCommand::RemoveListener(name.clone()));
        }
        self.bound.retain(|(n, _)| *n != name);
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

/// Binds each of a listener's addresses once per worker: (bound address, one socket per
/// worker). A port 0 is resolved by the first bind and reused by the other workers.
fn bind_listener(
    spec: &ListenerSpec,
    workers: usize,
) -> Result<Vec<(SocketAddr, Vec<BoundListener>)>, DataplaneError> {
    let mut out = Vec::with_capacity(spec.addrs.len());
    for requested in &spec.addrs {
        let mut addr = *requested;
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
            let socket = match spec.protocol {
                route::Protocol::Tcp => BoundSocket::Tcp(socket.into()),
                route::Protocol::Udp => BoundSocket::Udp(socket.into()),
            };
            sockets.push(BoundListener {
                name: spec.name.clone(),
                socket,
            });
        }
        out.push((addr, sockets));
    }
    Ok(out)
}

/// Socket buffer asked for UDP listeners: bursts of datagrams wait here between polls. The
/// kernel caps it at net.core.rmem_max / wmem_max.
const UDP_BUFFER: usize = 4 << 20;

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
            socket.set_nodelay(true)?;
            socket.listen(BACKLOG)?;
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
        let addr = listener.local_addr().unwrap().as_socket().unwrap();
        let _client = std::net::TcpStream::connect(addr).unwrap();
        listener.set_nonblocking(false).unwrap();
        let (accepted, _) = listener.accept().unwrap();
        assert!(accepted.nodelay().unwrap(), "TCP_NODELAY was not inherited");
    }
}
