//! One data-plane worker: a thread with its own `mio::Poll`, its own SO_REUSEPORT listening
//! socket per listener, its own slab of sessions, timer heap and pipe pool. Workers share
//! nothing mutable but atomics, the route snapshot and, on listeners with per-source limits,
//! that listener's sharded limiter, locked briefly once when a connection is admitted and once
//! when it closes; no byte or datagram waits on another worker.
//!
//! File descriptors: the worker owns its listening sockets (closed on drain or exit), and
//! every session it accepted owns its client socket and, once connecting, its backend socket;
//! both close when the session leaves the slab. Pipes belong to the worker's pool or, while
//! bytes sit in them, to a session direction. Each UDP flow owns its connected upstream socket,
//! held in the listener's flow table and closed when the flow ends (see `udp`).
//!
//! One concern per file: `tokens` (what an event's token names, with a generation so a
//! reused slot never gets a closed session's events), `accept` (draining listen queues,
//! backing off when descriptors run out), `admission` (limits, ACLs, the PROXY header and
//! ClientHello before routing), `connect` (picking a backend, retries, passive health),
//! `queue` (sessions waiting for a backend slot), `session` (the relay, timers and close),
//! `udp` (flows), `udp_exchange` (`udp.responses`: a datagram and its replies), `udp_spray`
//! (`udp.per_datagram`), `timers` (the deadline heap).
//! This file holds the types they share, the event loop and the control plane's commands.

mod accept;
mod admission;
mod connect;
mod queue;
mod session;
#[cfg(test)]
mod tests;
mod timers;
mod tokens;
mod udp;
mod udp_exchange;
mod udp_spray;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use crossbeam_channel::{Receiver, TryRecvError};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use slab::Slab;

use crate::clock;
use crate::pipes::PipePool;
use crate::proto::rate_limit::Admission;
use crate::relay::ReadStop::{self, ShortRead, WouldBlock};
use crate::relay::{Direction, Side};
use crate::route::{BackendState, ListenerRoute, Millis, PoolView, RouteTable};
use timers::Timers;
pub(crate) use tokens::WAKER;
use tokens::{Target, FLOW_BIT, MAX_LISTENERS};

/// Commands the control plane broadcasts to every worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Stop accepting; exit once every session has ended.
    Drain,
    /// Exit now, closing every session.
    Shutdown,
}

/// What a worker receives: a broadcast command or a change that concerns this worker only.
pub(crate) enum WorkerCommand {
    /// A binary upgrade: give up every UDP flow (its socket included) on the channel, then
    /// drain as on [`Command::Drain`].
    HandOver(crossbeam_channel::Sender<Vec<crate::HandedFlow>>),
    /// The flows of the process this one upgrades from (this worker's share); then start
    /// reading the UDP listeners, which were held until now.
    AdoptFlows(Vec<crate::HandedFlow>),
    /// A binary upgrade: a duplicate of each listening socket (listener, socket address).
    DuplicateListeners(
        crossbeam_channel::Sender<Vec<(Arc<str>, SocketAddr, std::os::fd::OwnedFd)>>,
    ),
    Broadcast(Command),
    /// Start accepting on this worker's own socket of a new listener.
    AddListener(BoundListener),
    /// Stop accepting on the listener's sockets; its sessions run on until they end.
    RemoveListener(Arc<str>),
    /// The listener (old name, new name) keeps its sockets under a new name.
    RenameListener(Arc<str>, Arc<str>),
    /// Close every session to the backend with this state (`on_backend_down: close`).
    CloseBackend(Arc<BackendState>),
    /// A new route snapshot is published: UDP flows follow their backends into it.
    RoutesChanged,
}

/// Most connect attempts per session: the first plus `route::MAX_RETRIES`, the one limit the
/// config loader also checks `retries` against.
const MAX_ATTEMPTS: usize = crate::route::MAX_CONNECT_ATTEMPTS;
/// How long listeners rest after running out of descriptors or memory.
const ACCEPT_BACKOFF: Millis = 100;
const RESOURCE_WARN_INTERVAL: Millis = 10_000;

pub(crate) struct BoundListener {
    pub name: Arc<str>,
    pub socket: BoundSocket,
}

pub(crate) enum BoundSocket {
    Tcp(std::net::TcpListener),
    Udp(std::net::UdpSocket),
}

enum ListenerSocket {
    Tcp(TcpListener),
    Udp(mio::net::UdpSocket),
}

impl ListenerSocket {
    fn local_addr(&self) -> Option<SocketAddr> {
        match self {
            ListenerSocket::Tcp(s) => s.local_addr().ok(),
            ListenerSocket::Udp(s) => s.local_addr().ok(),
        }
    }

    fn register(&mut self, poll: &Poll, token: Token) -> io::Result<()> {
        match self {
            ListenerSocket::Tcp(s) => poll.registry().register(s, token, Interest::READABLE),
            ListenerSocket::Udp(s) => poll.registry().register(s, token, Interest::READABLE),
        }
    }

    /// Out of this worker's epoll before the socket is closed: after a hand-over another
    /// process holds the same socket, and epoll forgets a socket only when its last
    /// descriptor closes, so it would go on waking this worker for the new owner's clients.
    fn deregister(&mut self, poll: &Poll) {
        let _ = match self {
            ListenerSocket::Tcp(s) => poll.registry().deregister(s),
            ListenerSocket::Udp(s) => poll.registry().deregister(s),
        };
    }

    fn duplicate(&self) -> io::Result<std::os::fd::OwnedFd> {
        use std::os::fd::AsFd;
        match self {
            ListenerSocket::Tcp(s) => s.as_fd().try_clone_to_owned(),
            ListenerSocket::Udp(s) => s.as_fd().try_clone_to_owned(),
        }
    }

    fn is_udp(&self) -> bool {
        matches!(self, ListenerSocket::Udp(_))
    }
}

impl From<BoundSocket> for ListenerSocket {
    fn from(bound: BoundSocket) -> Self {
        match bound {
            BoundSocket::Tcp(s) => ListenerSocket::Tcp(TcpListener::from_std(s)),
            BoundSocket::Udp(s) => ListenerSocket::Udp(mio::net::UdpSocket::from_std(s)),
        }
    }
}

pub(crate) struct WorkerSetup {
    pub id: usize,
    pub poll: Poll,
    pub listeners: Vec<BoundListener>,
    pub routes: Arc<ArcSwap<RouteTable>>,
    pub commands: Receiver<WorkerCommand>,
    pub force_copy: bool,
    /// Number of workers, to split a UDP listener's `max_flows` between them.
    pub workers: usize,
    /// Leave UDP listeners unread until [`WorkerCommand::AdoptFlows`]: a binary upgrade's
    /// new process must know the old one's flows before a client's datagram could open a
    /// second flow, to another backend.
    pub hold_udp: bool,
    /// Every worker's waker, to serve a pool's queue whose first waiter is another worker's.
    pub signals: Arc<crate::queue::Signals>,
}

struct ListenerSlot {
    name: Arc<str>,
    socket: Option<ListenerSocket>,
    /// The socket's own address; a wildcard one says nothing of the address a client used.
    local: Option<SocketAddr>,
    paused_until: Option<Millis>,
    /// UDP listeners only: this worker's flows.
    flows: Option<udp::Flows>,
}

/// How a session ended, as logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    Closed,
    IdleTimeout,
    ClientError,
    BackendError,
    ConnectFailed,
    NoBackend,
    Shutdown,
    BackendDown,
    /// Refused while reading a PROXY header or ClientHello (counted by reason).
    Rejected,
    /// The PROXY header or ClientHello did not arrive in time.
    PrefaceTimeout,
    /// No descriptor was left for the backend socket (counted, closed at once).
    NoDescriptors,
    /// Waited in the pool's queue for `queue.timeout` without a slot (counted).
    QueueTimeout,
    /// Open for `timeouts.max_lifetime` (less its jitter), whatever its traffic (counted).
    MaxLifetime,
    /// Every backend was full and the pool's queue too (counted, closed at once).
    QueueFull,
    Internal,
}

impl End {
    fn as_str(self) -> &'static str {
        match self {
            End::Closed => "closed",
            End::IdleTimeout => "idle_timeout",
            End::ClientError => "client_error",
            End::BackendError => "backend_error",
            End::ConnectFailed => "connect_failed",
            End::NoBackend => "no_backend",
            End::Shutdown => "shutdown",
            End::BackendDown => "backend_down",
            End::Rejected => "rejected",
            End::PrefaceTimeout => "preface_timeout",
            End::NoDescriptors => "no_descriptors",
            End::QueueTimeout => "queue_timeout",
            End::MaxLifetime => "max_lifetime",
            End::QueueFull => "queue_full",
            End::Internal => "internal_error",
        }
    }
}

/// What an event said about one socket of a session.
#[derive(Clone, Copy)]
struct Ready {
    readable: bool,
    /// End of stream, hang-up or error was reported with the event.
    closed: bool,
}

impl Ready {
    /// How to read the socket this event is about, if the event says it has something: up
    /// to a short read on a plain readable edge (see [`ReadStop::ShortRead`]), until
    /// `WouldBlock` when the stream ended or failed, so the end is read too.
    fn read(self) -> Option<ReadStop> {
        self.readable
            .then_some(if self.closed { WouldBlock } else { ShortRead })
    }
}

/// What a session reads before it can be routed.
struct Preface {
    buf: Vec<u8>,
    need_proxy: bool,
    need_hello: bool,
}

struct Session {
    serial: u64,
    client: TcpStream,
    client_addr: SocketAddr,
    local_addr: SocketAddr,
    route: Arc<ListenerRoute>,
    /// Where the backend comes from: the listener's pool, or the one SNI routing chose.
    pool: Arc<PoolView>,
    /// `Some` while the PROXY header or ClientHello is being read, before routing.
    preface: Option<Box<Preface>>,
    /// Client bytes read while routing (the ClientHello), sent ahead of the relay.
    early: Vec<u8>,
    /// This session's place in the per-source limiter, given back on close.
    admission: Option<Admission>,
    /// Index into `pool.backends` and the socket, once a connect has started.
    backend: Option<(usize, TcpStream)>,
    connected: bool,
    /// How to read the client once the backend is connected: `None` while no readable edge
    /// came from the client during the connect (its first bytes will raise one), so the
    /// relay spends no read on an empty socket.
    client_edge: Option<ReadStop>,
    connect_started: Instant,
    /// In its pool's queue, with this ticket, waiting for a slot.
    queued: Option<crate::queue::Ticket>,
    /// A backend slot the queue took for this session (index into `pool.backends`), used by
    /// its first connect.
    reserved: Option<usize>,
    tried: [usize; MAX_ATTEMPTS],
    attempts: usize,
    up: Direction,
    down: Direction,
    /// The client (source of `up`) or backend (source of `down`) socket is out of epoll's
    /// read interest while its direction waits for a full destination; see
    /// [`Worker::mute_sources_of_full_destinations`].
    client_muted: bool,
    backend_muted: bool,
    opened_at: Instant,
    /// When `timeouts.max_lifetime` ends the session (`Millis::MAX`: never).
    ends_at: Millis,
    /// When the next `session open` line is due (`Millis::MAX`: never; see `access_log`).
    next_log_at: Millis,
    /// How long the connect that succeeded took, in ms.
    connect_ms: Option<u64>,
    last_activity: Millis,
    /// The one timer entry that counts; older heap entries for this session are ignored.
    deadline: Millis,
    first_up_at: Option<Instant>,
    first_byte_seen: bool,
}

pub(crate) struct Worker {
    id: usize,
    poll: Poll,
    listeners: Vec<ListenerSlot>,
    sessions: Slab<Session>,
    timers: Timers,
    next_serial: u64,
    pipes: PipePool,
    routes: Arc<ArcSwap<RouteTable>>,
    commands: Receiver<WorkerCommand>,
    force_copy: bool,
    draining: bool,
    stop: bool,
    resource_warned_at: Option<Millis>,
    /// The UDP batches' offload refusal was logged (once per worker: it lasts).
    udp_offload_warned: bool,
    workers: usize,
    /// UDP listeners not yet registered (see [`WorkerSetup::hold_udp`]).
    udp_held: bool,
    /// Datagrams from clients, received in batches on UDP listener sockets.
    udp_in: crate::sys::DatagramBatch,
    /// Datagrams from backends, received in batches on flow sockets.
    udp_out: crate::sys::DatagramBatch,
    /// Scratch list of flows that left a table, reused so ending flows allocates nothing.
    ended_flows: Vec<(SocketAddr, udp::Flow)>,
    /// Scratch buffer for a PROXY v2 header plus a datagram.
    udp_scratch: Vec<u8>,
    /// `udp.per_datagram`: the unconnected sockets (IPv4, IPv6) this worker sends such
    /// datagrams from, opened on first use.
    udp_spray: udp_spray::SpraySockets,
    /// Scratch copy of one client datagram, for `udp.responses` exchanges.
    udp_query: Vec<u8>,
    /// Scratch list of exchanges that timed out, reused so expiring allocates nothing.
    ended_exchanges: Vec<(usize, crate::udp::exchange::Ended<udp_exchange::Exchange>)>,
    /// Scratch buffer for small TCP reads (see `relay::Mode::Small`).
    scratch: Box<[u8]>,
    signals: Arc<crate::queue::Signals>,
    /// The pool queues this worker has sessions waiting in, with how many.
    waiting: Vec<(Arc<crate::queue::PoolQueue>, usize)>,
    /// While sessions wait: when to look at their queues even unasked (`queue::QUEUE_RECHECK`).
    queue_check_at: Option<Millis>,
    /// Queues to serve, and whether one is being served (a close inside a dispatch queues
    /// its own dispatch here instead of recursing).
    dispatch_pending: Vec<Arc<crate::queue::PoolQueue>>,
    dispatching: bool,
}

impl Worker {
    pub(crate) fn new(setup: WorkerSetup) -> io::Result<Self> {
        let mut listeners = Vec::with_capacity(setup.listeners.len());
        for (i, bound) in setup.listeners.into_iter().enumerate() {
            if i >= MAX_LISTENERS {
                return Err(io::Error::other("too many listening sockets"));
            }
            let mut socket = ListenerSocket::from(bound.socket);
            if !(setup.hold_udp && socket.is_udp()) {
                socket.register(&setup.poll, tokens::listener(i))?;
            }
            let flows = socket.is_udp().then(udp::Flows::default);
            listeners.push(ListenerSlot {
                name: bound.name,
                local: socket.local_addr(),
                socket: Some(socket),
                paused_until: None,
                flows,
            });
        }
        Ok(Self {
            id: setup.id,
            poll: setup.poll,
            listeners,
            sessions: Slab::with_capacity(1024),
            timers: Timers::default(),
            next_serial: 0,
            pipes: PipePool::default(),
            routes: setup.routes,
            commands: setup.commands,
            force_copy: setup.force_copy,
            draining: false,
            stop: false,
            resource_warned_at: None,
            udp_offload_warned: false,
            workers: setup.workers.max(1),
            udp_held: setup.hold_udp,
            udp_in: crate::sys::DatagramBatch::new(crate::sys::MAX_BATCH, udp::DATAGRAM_SLOT),
            udp_out: crate::sys::DatagramBatch::new(crate::sys::MAX_BATCH, udp::DATAGRAM_SLOT),
            ended_flows: Vec::new(),
            udp_scratch: Vec::with_capacity(udp::DATAGRAM_SLOT + 64),
            udp_query: Vec::new(),
            udp_spray: udp_spray::SpraySockets::default(),
            ended_exchanges: Vec::new(),
            scratch: vec![0u8; crate::relay::SCRATCH].into_boxed_slice(),
            signals: setup.signals,
            waiting: Vec::new(),
            queue_check_at: None,
            dispatch_pending: Vec::new(),
            dispatching: false,
        })
    }

    pub(crate) fn run(mut self) {
        let mut events = Events::with_capacity(1024);
        tracing::debug!(worker = self.id, "worker started");
        while !self.stop {
            let timeout = self.poll_timeout(clock::now_ms());
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                tracing::error!(worker = self.id, error = %e, "poll failed; worker stops");
                break;
            }
            let now = clock::now_ms();
            for event in events.iter() {
                match tokens::decode(event.token()) {
                    Target::Waker => self.handle_commands(),
                    Target::Flow(flow) => self.flow_readable(flow, now),
                    Target::Listener(index) => self.listener_readable(index, now),
                    Target::Session { .. } => {
                        let Some((key, side)) = self.session_of(event.token()) else {
                            // The session closed earlier in this batch; the slot may already
                            // hold a new one, which this event is not about.
                            continue;
                        };
                        // End of stream and errors surface through a read.
                        let closed =
                            event.is_read_closed() || event.is_write_closed() || event.is_error();
                        let ready = Ready {
                            readable: event.is_readable() || closed,
                            closed,
                        };
                        self.drive(key, side, ready, now);
                    }
                }
            }
            self.expire_timers(now);
            if self.signals.take(self.id) || self.queue_check_at.is_some_and(|at| at <= now) {
                self.serve_queues(now);
            }
            if self.timers.is_bloated(self.sessions.len()) {
                let live = self.sessions.iter().filter(|(_, s)| s.deadline != 0);
                self.timers
                    .rebuild(live.map(|(key, s)| (s.deadline, key, s.serial)));
            }
            self.expire_flows(now);
            self.resume_listeners(now);
            if self.draining && self.sessions.is_empty() {
                break;
            }
        }
        self.close_all();
        tracing::debug!(worker = self.id, "worker stopped");
    }

    /// The live session a session token names, with the side: `None` when the session it
    /// was made for has closed, even if its slot now holds another.
    fn session_of(&self, token: Token) -> Option<(usize, Side)> {
        match tokens::decode(token) {
            Target::Session {
                key,
                side,
                generation,
            } => self
                .sessions
                .get(key)
                .filter(|s| tokens::generation(s.serial) == generation)
                .map(|_| (key, side)),
            _ => None,
        }
    }

    fn poll_timeout(&self, now: Millis) -> Option<Duration> {
        let timer = self.timers.next();
        let paused = self.listeners.iter().filter_map(|l| l.paused_until).min();
        let flows = self
            .listeners
            .iter()
            .filter_map(|l| l.flows.as_ref()?.next_expiry())
            .min();
        let next = [timer, paused, flows, self.queue_check_at]
            .into_iter()
            .flatten()
            .min()?;
        Some(Duration::from_millis(next.saturating_sub(now)))
    }

    fn handle_commands(&mut self) {
        loop {
            match self.commands.try_recv() {
                Ok(WorkerCommand::Broadcast(Command::Drain)) => self.start_drain(),
                Ok(WorkerCommand::Broadcast(Command::Shutdown))
                | Err(TryRecvError::Disconnected) => {
                    self.stop = true;
                    return;
                }
                Ok(WorkerCommand::AddListener(bound)) => self.add_listener(bound),
                Ok(WorkerCommand::RemoveListener(name)) => self.remove_listener(&name),
                Ok(WorkerCommand::RenameListener(old, new)) => {
                    for slot in self.listeners.iter_mut().filter(|s| s.name == old) {
                        slot.name = new.clone();
                    }
                }
                Ok(WorkerCommand::CloseBackend(state)) => self.close_backend_sessions(&state),
                Ok(WorkerCommand::RoutesChanged) => {
                    self.rebind_flows();
                    // A reload may have added backends or raised `max_connections`.
                    self.serve_queues(clock::now_ms());
                }
                Ok(WorkerCommand::HandOver(reply)) => {
                    let _ = reply.send(self.hand_over_flows());
                    self.start_drain();
                }
                Ok(WorkerCommand::AdoptFlows(flows)) => self.adopt_flows(flows, clock::now_ms()),
                Ok(WorkerCommand::DuplicateListeners(reply)) => {
                    let _ = reply.send(self.duplicate_listeners());
                }
                Err(TryRecvError::Empty) => return,
            }
        }
    }

    fn add_listener(&mut self, bound: BoundListener) {
        if self.draining {
            return;
        }
        // Reuse the slot of a removed listener so listener tokens stay in their range.
        let index = match self.listeners.iter().position(|l| l.socket.is_none()) {
            Some(i) => i,
            None if self.listeners.len() < MAX_LISTENERS => {
                self.listeners.push(ListenerSlot {
                    name: bound.name.clone(),
                    local: None,
                    socket: None,
                    paused_until: None,
                    flows: None,
                });
                self.listeners.len() - 1
            }
            None => {
                tracing::error!(listener = %bound.name, "too many listening sockets; not added");
                return;
            }
        };
        let mut socket = ListenerSocket::from(bound.socket);
        if let Err(e) = socket.register(&self.poll, tokens::listener(index)) {
            tracing::error!(listener = %bound.name, error = %e, "cannot watch a new listening socket");
            return;
        }
        let flows = matches!(socket, ListenerSocket::Udp(_)).then(udp::Flows::default);
        let slot = &mut self.listeners[index];
        slot.name = bound.name;
        slot.local = socket.local_addr();
        slot.socket = Some(socket);
        slot.paused_until = None;
        slot.flows = flows;
        // Connections or datagrams may have queued between bind and registration;
        // edge-triggered readiness would not report them.
        self.listener_readable(index, clock::now_ms());
    }

    fn remove_listener(&mut self, name: &str) {
        for index in 0..self.listeners.len() {
            if &*self.listeners[index].name == name {
                // A UDP flow cannot outlive its listener: replies leave through its socket.
                self.end_all_flows(index);
                let slot = &mut self.listeners[index];
                if let Some(socket) = slot.socket.as_mut() {
                    socket.deregister(&self.poll);
                }
                slot.socket = None;
                slot.paused_until = None;
                slot.flows = None;
            }
        }
    }

    /// Duplicates of the live listening sockets, for a binary upgrade; a socket that cannot
    /// be duplicated (no descriptor left) is left out, and the hand-over refused for it.
    fn duplicate_listeners(&self) -> Vec<(Arc<str>, SocketAddr, std::os::fd::OwnedFd)> {
        self.listeners
            .iter()
            .filter_map(|slot| {
                let fd = slot.socket.as_ref()?.duplicate().ok()?;
                Some((slot.name.clone(), slot.local?, fd))
            })
            .collect()
    }

    fn start_drain(&mut self) {
        self.draining = true;
        for index in 0..self.listeners.len() {
            self.end_all_flows(index);
            let slot = &mut self.listeners[index];
            if let Some(socket) = slot.socket.as_mut() {
                socket.deregister(&self.poll);
            }
            // Closing the socket takes this worker out of the SO_REUSEPORT group at once,
            // unless a new process holds it too (an upgrade): then the group is unchanged.
            slot.socket = None;
            slot.paused_until = None;
            slot.flows = None;
        }
    }

    fn close_all(&mut self) {
        for index in 0..self.listeners.len() {
            self.end_all_flows(index);
        }
        // Waiting sessions first, so that no slot the others give back is handed to one.
        let mut keys: Vec<usize> = self.sessions.iter().map(|(k, _)| k).collect();
        keys.sort_by_key(|&k| self.sessions.get(k).is_none_or(|s| s.queued.is_none()));
        for key in keys {
            self.close(key, End::Shutdown);
        }
    }
}

fn millis(d: Duration) -> Millis {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX / 2)
}

fn unspecified(peer: SocketAddr) -> SocketAddr {
    match peer {
        SocketAddr::V4(_) => SocketAddr::from(([0, 0, 0, 0], 0)),
        SocketAddr::V6(_) => SocketAddr::from(([0u16; 8], 0)),
    }
}
