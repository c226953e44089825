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

#[cfg(test)]
mod tests;
mod timers;
mod tokens;
mod udp;

use std::io::{self, Read};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use crossbeam_channel::{Receiver, TryRecvError};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use slab::Slab;

use crate::clock;
use crate::pipes::PipePool;
use crate::proto::client_hello;
use crate::proto::proxy_protocol;
use crate::proto::rate_limit::{Admission, Reject, SharedSourceLimiter};
use crate::proto::ParseError;
use crate::relay::ReadStop::{self, ShortRead, WouldBlock};
use crate::relay::{Direction, PumpError, Side};
use crate::route::{
    BackendState, ConnectError, FlowKey, ListenerRoute, Millis, PoolView, Protocol, ProxyVersion,
    RouteTable,
};
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
    Broadcast(Command),
    /// Start accepting on this worker's own socket of a new listener.
    AddListener(BoundListener),
    /// Stop accepting on the listener's sockets; its sessions run on until they end.
    RemoveListener(Arc<str>),
    /// Close every session to the backend with this state (`on_backend_down: close`).
    CloseBackend(Arc<BackendState>),
    /// A new route snapshot is published: UDP flows follow their backends into it.
    RoutesChanged,
}

/// Most connect attempts per session: the first plus `MAX_RETRIES`.
const MAX_ATTEMPTS: usize = 17;
/// How long listeners rest after running out of descriptors or memory.
const ACCEPT_BACKOFF: Millis = 100;
const RESOURCE_WARN_INTERVAL: Millis = 10_000;
/// Longest PROXY header accepted: v1 is at most 107 bytes; v2 with the TLVs balancers send
/// in practice stays far below this, and the spec's 64 KiB ceiling would let a trusted but
/// broken peer make every session hold a large buffer.
const PROXY_HEADER_MAX: usize = 4096;
/// Sources a listener's per-source limiter tracks (all workers together); beyond it the
/// longest idle is forgotten.
const SOURCE_TABLE_CAPACITY: usize = 65_536;

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

/// Which counter a refused connection bumps.
enum RejectCounter {
    Proxy(proxy_protocol::Reason),
    Tls(client_hello::Reason),
    TlsNoRoute,
    Acl,
    Source(Reject),
}

fn proxy_counter(reason: proxy_protocol::Reason) -> RejectCounter {
    RejectCounter::Proxy(reason)
}

fn counter_of(route: &ListenerRoute, reject: Reject) -> &std::sync::atomic::AtomicU64 {
    match reject {
        Reject::RateLimited => &route.state.rejected_rate_limit,
        Reject::TooManyConnections | Reject::TableFull => &route.state.rejected_per_source,
    }
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
    /// Datagrams from clients, received in batches on UDP listener sockets.
    udp_in: crate::sys::DatagramBatch,
    /// Datagrams from backends, received in batches on flow sockets.
    udp_out: crate::sys::DatagramBatch,
    /// Scratch list of flows that left a table, reused so ending flows allocates nothing.
    ended_flows: Vec<(SocketAddr, udp::Flow)>,
    /// Scratch buffer for a PROXY v2 header plus a datagram.
    udp_scratch: Vec<u8>,
    /// Scratch buffer for small TCP reads (see `relay::Mode::Small`).
    scratch: Box<[u8]>,
}

impl Worker {
    pub(crate) fn new(setup: WorkerSetup) -> io::Result<Self> {
        let mut listeners = Vec::with_capacity(setup.listeners.len());
        for (i, bound) in setup.listeners.into_iter().enumerate() {
            if i >= MAX_LISTENERS {
                return Err(io::Error::other("too many listening sockets"));
            }
            let mut socket = ListenerSocket::from(bound.socket);
            socket.register(&setup.poll, tokens::listener(i))?;
            let flows = matches!(socket, ListenerSocket::Udp(_)).then(udp::Flows::default);
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
            udp_in: crate::sys::DatagramBatch::new(crate::sys::MAX_BATCH, udp::DATAGRAM_SLOT),
            udp_out: crate::sys::DatagramBatch::new(crate::sys::MAX_BATCH, udp::DATAGRAM_SLOT),
            ended_flows: Vec::new(),
            udp_scratch: Vec::with_capacity(udp::DATAGRAM_SLOT + 64),
            scratch: vec![0u8; crate::relay::SCRATCH].into_boxed_slice(),
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
        let next = [timer, paused, flows].into_iter().flatten().min()?;
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
                Ok(WorkerCommand::CloseBackend(state)) => self.close_backend_sessions(&state),
                Ok(WorkerCommand::RoutesChanged) => self.rebind_flows(),
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
                slot.socket = None;
                slot.paused_until = None;
                slot.flows = None;
            }
        }
    }

    fn close_backend_sessions(&mut self, state: &Arc<BackendState>) {
        let doomed: Vec<usize> = self
            .sessions
            .iter()
            .filter(|(_, s)| {
                // `s.pool`, not the listener's: SNI routing may have chosen another pool,
                // and indexes are per pool.
                s.backend.as_ref().is_some_and(|(index, _)| {
                    s.pool
                        .backends
                        .get(*index)
                        .is_some_and(|b| Arc::ptr_eq(&b.state, state))
                })
            })
            .map(|(key, _)| key)
            .collect();
        for key in doomed {
            self.close(key, End::BackendDown);
        }
    }

    fn start_drain(&mut self) {
        self.draining = true;
        for index in 0..self.listeners.len() {
            self.end_all_flows(index);
            let slot = &mut self.listeners[index];
            // Closing the socket takes this worker out of the SO_REUSEPORT group at once.
            slot.socket = None;
            slot.paused_until = None;
            slot.flows = None;
        }
    }

    fn listener_readable(&mut self, index: usize, now: Millis) {
        match self.listeners.get(index).and_then(|l| l.socket.as_ref()) {
            Some(ListenerSocket::Tcp(_)) => self.accept_all(index, now),
            Some(ListenerSocket::Udp(_)) => self.udp_readable(index, now),
            None => {}
        }
    }

    fn resume_listeners(&mut self, now: Millis) {
        for i in 0..self.listeners.len() {
            if matches!(self.listeners[i].paused_until, Some(at) if at <= now) {
                self.listeners[i].paused_until = None;
                self.listener_readable(i, now);
            }
        }
    }

    fn accept_all(&mut self, index: usize, now: Millis) {
        loop {
            let Some(slot) = self.listeners.get_mut(index) else {
                return;
            };
            if slot.paused_until.is_some() {
                return;
            }
            let Some(ListenerSocket::Tcp(socket)) = slot.socket.as_ref() else {
                return;
            };
            let (stream, client_addr) = match socket.accept() {
                Ok(pair) => pair,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if is_transient_accept_error(&e) => continue,
                Err(e) => {
                    let name = slot.name.clone();
                    if let Some(route) = self.routes.load().listener(&name) {
                        route.state.accept_errors.fetch_add(1, Ordering::Relaxed);
                    }
                    self.pause_accepting(now, &e);
                    return;
                }
            };
            self.admit(index, stream, client_addr, now);
        }
    }

    /// Out of descriptors or memory: every listener of this worker rests for
    /// `ACCEPT_BACKOFF`, logged at most every `RESOURCE_WARN_INTERVAL`. Retrying at once would spin, since the queued
    /// connection keeps the socket readable.
    fn pause_accepting(&mut self, now: Millis, error: &io::Error) {
        for slot in &mut self.listeners {
            if matches!(slot.socket, Some(ListenerSocket::Tcp(_))) {
                slot.paused_until = Some(now + ACCEPT_BACKOFF);
            }
        }
        if self
            .resource_warned_at
            .is_none_or(|at| now >= at + RESOURCE_WARN_INTERVAL)
        {
            self.resource_warned_at = Some(now);
            tracing::warn!(worker = self.id, error = %error, "out of resources; pausing accepts, retrying every {ACCEPT_BACKOFF} ms; established sessions continue");
        }
    }

    fn admit(&mut self, slot: usize, stream: TcpStream, client_addr: SocketAddr, now: Millis) {
        let Some(listener) = self.listeners.get(slot).map(|l| l.name.clone()) else {
            return;
        };
        let Some(route) = self.routes.load().listener(&listener).cloned() else {
            // The listener left the configuration; its socket is about to close.
            return;
        };
        let active = route.state.active.fetch_add(1, Ordering::Relaxed);
        let reject = |counter: &std::sync::atomic::AtomicU64, why: &str| {
            route.state.active.fetch_sub(1, Ordering::Relaxed);
            counter.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(listener = %route.name, client = %client_addr, "rejected: {why}");
        };
        if route.max_connections.is_some_and(|max| active >= max) {
            reject(&route.state.rejected_max_connections, "max_connections");
            return;
        }
        if self.sessions.vacant_key() >= tokens::MAX_SESSIONS {
            // Tokens could not tell its sockets apart; never near at any real fd limit.
            reject(
                &route.state.rejected_max_connections,
                "worker session table full",
            );
            return;
        }
        let ip = client_addr.ip();
        if route.acl.as_ref().is_some_and(|acl| !acl.allows(ip)) {
            reject(&route.state.rejected_acl, "acl");
            return;
        }
        if let Some(proxy) = &route.accept_proxy {
            if !proxy.trusted.contains(ip) {
                reject(
                    &route.state.rejected_proxy_untrusted,
                    "PROXY header from an untrusted source",
                );
                return;
            }
        }
        // Behind a PROXY header the real source is known only once the header is read.
        let admission = if route.accept_proxy.is_none() {
            match admit_source(&route, ip, now) {
                Ok(admission) => admission,
                Err(counter) => {
                    reject(counter_of(&route, counter), counter.as_str());
                    return;
                }
            }
        } else {
            None
        };
        route
            .state
            .connections_total
            .fetch_add(1, Ordering::Relaxed);
        // Nagle would delay small request/response exchanges by up to 40 ms through the relay.
        // TCP_NODELAY is inherited from the listening socket (set at bind), so accepted
        // sockets need no setsockopt of their own.
        // A listener bound to one address already knows the local address; only a wildcard
        // one needs getsockname to learn which of the host's addresses the client used.
        let local_addr = match self.listeners.get(slot).and_then(|l| l.local) {
            Some(local) if !local.ip().is_unspecified() => local,
            _ => stream
                .local_addr()
                .unwrap_or_else(|_| unspecified(client_addr)),
        };
        let preface_timeout = match (&route.accept_proxy, &route.tls) {
            (Some(proxy), _) => Some(proxy.timeout),
            (None, Some(tls)) => Some(tls.peek_timeout),
            (None, None) => None,
        };
        let preface = preface_timeout.map(|_| {
            Box::new(Preface {
                buf: Vec::new(),
                need_proxy: route.accept_proxy.is_some(),
                need_hello: route.tls.is_some(),
            })
        });
        let serial = self.next_serial;
        self.next_serial += 1;
        let opened_at = Instant::now();
        let pool = route.pool.clone();
        let key = self.sessions.insert(Session {
            serial,
            client: stream,
            client_addr,
            local_addr,
            route,
            pool,
            preface,
            early: Vec::new(),
            admission,
            backend: None,
            connected: false,
            // Bytes read during the preface say nothing of what is still queued.
            client_edge: preface_timeout.map(|_| WouldBlock),
            connect_started: opened_at,
            tried: [usize::MAX; MAX_ATTEMPTS],
            attempts: 0,
            up: Direction::new(Side::Client, Side::Backend, self.force_copy),
            down: Direction::new(Side::Backend, Side::Client, self.force_copy),
            client_muted: false,
            backend_muted: false,
            opened_at,
            last_activity: now,
            deadline: 0,
            first_up_at: None,
            first_byte_seen: false,
        });
        let registry = self.poll.registry();
        let Some(session) = self.sessions.get_mut(key) else {
            return;
        };
        if let Err(e) = registry.register(
            &mut session.client,
            tokens::session(key, Side::Client, session.serial),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            tracing::warn!(error = %e, "cannot register client socket");
            self.close(key, End::Internal);
            return;
        }
        if let Some(timeout) = preface_timeout {
            session.deadline = now + millis(timeout);
            self.timers.push(session.deadline, key, session.serial);
            // Edge-triggered: bytes that came with the handshake raise no further event.
            self.read_preface(key, now);
            return;
        }
        self.connect_next(key, now);
    }

    /// Reads what the client sent so far and parses the PROXY header and/or ClientHello the
    /// listener expects; once routing is decided, starts the connect.
    fn read_preface(&mut self, key: usize, now: Millis) {
        let Some(s) = self.sessions.get_mut(key) else {
            return;
        };
        let Some(preface) = s.preface.as_mut() else {
            return;
        };
        let limit = PROXY_HEADER_MAX + client_hello::MAX_HELLO;
        // A client may send its whole request and its FIN before the worker reads (an
        // upstream HAProxy relaying a one-shot client does): routing goes on with what was
        // read, and the relay's own read of the client then sees the end of stream (a TCP
        // socket reports it to every later read) and half-closes toward the backend.
        let mut ended = false;
        loop {
            let have = preface.buf.len();
            if have >= limit {
                break;
            }
            let want = (limit - have).min(4096);
            preface.buf.resize(have + want, 0);
            match s.client.read(&mut preface.buf[have..]) {
                Ok(0) => {
                    preface.buf.truncate(have);
                    ended = true;
                    break;
                }
                Ok(n) => preface.buf.truncate(have + n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    preface.buf.truncate(have);
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => preface.buf.truncate(have),
                Err(_) => {
                    preface.buf.truncate(have);
                    self.close(key, End::ClientError);
                    return;
                }
            }
        }
        if preface.need_proxy {
            match proxy_protocol::parse_proxy_header(&preface.buf) {
                Ok((header, used)) => {
                    preface.buf.drain(..used);
                    preface.need_proxy = false;
                    if let Some((source, destination)) = header.addresses() {
                        s.client_addr = source;
                        s.local_addr = destination;
                    }
                }
                Err(ParseError::Incomplete { needed }) => {
                    if needed.is_some_and(|n| n > PROXY_HEADER_MAX) {
                        let slot = proxy_protocol::Reason::BadLength;
                        self.reject_preface(key, &proxy_counter(slot), slot.as_str());
                    } else if ended {
                        self.close(key, End::ClientError);
                    }
                    return;
                }
                Err(ParseError::Malformed(reason)) => {
                    self.reject_preface(key, &proxy_counter(reason), reason.as_str());
                    return;
                }
            }
            // The header named the real client: the listener's rules apply to it.
            let Some(s) = self.sessions.get_mut(key) else {
                return;
            };
            let route = s.route.clone();
            let ip = s.client_addr.ip();
            if route.acl.as_ref().is_some_and(|acl| !acl.allows(ip)) {
                self.reject_preface(key, &RejectCounter::Acl, "acl");
                return;
            }
            match admit_source(&route, ip, now) {
                Ok(admission) => {
                    if let Some(s) = self.sessions.get_mut(key) {
                        s.admission = admission;
                    }
                }
                Err(reject) => {
                    self.reject_preface(key, &RejectCounter::Source(reject), reject.as_str());
                    return;
                }
            }
            if let Some(s) = self.sessions.get_mut(key) {
                if let Some(tls) = &s.route.tls {
                    // The ClientHello gets its own time once the header is in.
                    s.deadline = now + millis(tls.peek_timeout);
                    self.timers.push(s.deadline, key, s.serial);
                }
            }
        }
        let Some(s) = self.sessions.get_mut(key) else {
            return;
        };
        let Some(preface) = s.preface.as_mut() else {
            return;
        };
        if preface.need_hello {
            let Some(tls) = s.route.tls.clone() else {
                return;
            };
            match client_hello::parse_client_hello(&preface.buf) {
                Ok(hello) => {
                    let chosen =
                        tls.route(hello.server_name.as_deref(), |p| hello.alpn.contains(p));
                    match chosen {
                        Some(pool) => s.pool = pool.clone(),
                        None => {
                            self.reject_preface(key, &RejectCounter::TlsNoRoute, "no SNI route");
                            return;
                        }
                    }
                }
                Err(ParseError::Incomplete { .. }) => {
                    if preface.buf.len() >= client_hello::MAX_HELLO {
                        let reason = client_hello::Reason::TooLarge;
                        self.reject_preface(key, &RejectCounter::Tls(reason), reason.as_str());
                    } else if ended {
                        self.close(key, End::ClientError);
                    }
                    return;
                }
                Err(ParseError::Malformed(reason)) => {
                    self.reject_preface(key, &RejectCounter::Tls(reason), reason.as_str());
                    return;
                }
            }
        }
        if let Some(preface) = s.preface.take() {
            s.early = preface.buf;
        }
        self.connect_next(key, now);
    }

    /// Closes a session refused while reading its preface, counting why.
    fn reject_preface(&mut self, key: usize, counter: &RejectCounter, why: &str) {
        if let Some(s) = self.sessions.get(key) {
            let state = &s.route.state;
            let cell = match counter {
                RejectCounter::Proxy(reason) => state.rejected_proxy_malformed.get(reason.index()),
                RejectCounter::Tls(reason) => state.rejected_tls_malformed.get(reason.index()),
                RejectCounter::TlsNoRoute => Some(&state.rejected_tls_no_route),
                RejectCounter::Acl => Some(&state.rejected_acl),
                RejectCounter::Source(reject) => Some(counter_of(&s.route, *reject)),
            };
            if let Some(cell) = cell {
                cell.fetch_add(1, Ordering::Relaxed);
            }
            tracing::debug!(listener = %s.route.name, client = %s.client_addr, "closed while routing: {why}");
        }
        self.close(key, End::Rejected);
    }

    /// Starts a connect to the next eligible backend, or ends the session when none is left.
    fn connect_next(&mut self, key: usize, now: Millis) {
        loop {
            let Some(s) = self.sessions.get_mut(key) else {
                return;
            };
            let pool = s.pool.clone();
            let max_attempts = (pool.retries as usize + 1).min(MAX_ATTEMPTS);
            if s.attempts >= max_attempts {
                self.close(key, End::ConnectFailed);
                return;
            }
            let flow = FlowKey {
                protocol: Protocol::Tcp,
                client: s.client_addr,
                local: s.local_addr,
            };
            let tried = &s.tried[..s.attempts];
            let Some(index) = pool.picker.pick(&flow, &pool, now, tried) else {
                let end = if s.attempts == 0 {
                    s.route
                        .state
                        .rejected_no_backend
                        .fetch_add(1, Ordering::Relaxed);
                    End::NoBackend
                } else {
                    End::ConnectFailed
                };
                self.close(key, end);
                return;
            };
            let Some(backend) = pool.backends.get(index) else {
                self.close(key, End::Internal);
                return;
            };
            s.tried[s.attempts] = index;
            s.attempts += 1;
            s.connect_started = Instant::now();
            match TcpStream::connect(backend.addr) {
                Ok(mut stream) => {
                    if let Err(e) = self.poll.registry().register(
                        &mut stream,
                        tokens::session(key, Side::Backend, s.serial),
                        Interest::READABLE | Interest::WRITABLE,
                    ) {
                        tracing::warn!(error = %e, "cannot register backend socket");
                        self.close(key, End::Internal);
                        return;
                    }
                    backend.state.active.fetch_add(1, Ordering::Relaxed);
                    s.backend = Some((index, stream));
                    let timeout = millis(s.route.connect_timeout);
                    s.deadline = now + timeout;
                    self.timers.push(s.deadline, key, s.serial);
                    return;
                }
                Err(e) if is_fd_exhaustion(&e) => {
                    // Not the backend's fault: this attempt does not count. The session waits
                    // (within its connect timeout) for descriptors to free up, and the clients
                    // behind it wait in the kernel's accept queue.
                    s.attempts -= 1;
                    s.tried[s.attempts] = usize::MAX;
                    s.deadline = now + ACCEPT_BACKOFF;
                    self.timers.push(s.deadline, key, s.serial);
                    self.pause_accepting(now, &e);
                    return;
                }
                Err(e) => {
                    let reason = classify_connect_error(&e);
                    backend
                        .state
                        .record_connect_failure(reason, now, pool.passive);
                    tracing::debug!(backend = %backend.addr, error = %e, "connect failed");
                }
            }
        }
    }

    /// A connect failed or timed out: count it, drop the socket, try another backend.
    fn connect_failed(&mut self, key: usize, reason: ConnectError, now: Millis) {
        let Some(s) = self.sessions.get_mut(key) else {
            return;
        };
        if let Some((index, stream)) = s.backend.take() {
            drop(stream);
            if let Some(backend) = s.pool.backends.get(index) {
                backend.state.active.fetch_sub(1, Ordering::Relaxed);
                let went_down = backend
                    .state
                    .record_connect_failure(reason, now, s.pool.passive);
                tracing::debug!(backend = %backend.addr, ?reason, "connect failed");
                if went_down {
                    tracing::warn!(pool = %s.pool.name, backend = %backend.addr, "backend marked down by passive health");
                }
            }
        }
        self.connect_next(key, now);
    }

    /// Handles readiness of one of a session's sockets. Epoll reports a socket writable along
    /// with every readable edge, so a direction is pumped only when its source became
    /// readable or when it is waiting for its destination; pumping both on every event would
    /// cost a read that returns EAGAIN per event.
    fn drive(&mut self, key: usize, side: Side, ready: Ready, now: Millis) {
        let Some(s) = self.sessions.get_mut(key) else {
            return;
        };
        if s.preface.is_some() {
            self.read_preface(key, now);
            return;
        }
        if !s.connected {
            // Client bytes wait in the kernel until the backend is connected; only the backend
            // socket's readiness says the connect finished.
            if side == Side::Client {
                if let Some(stop) = ready.read() {
                    s.client_edge = Some(match s.client_edge {
                        Some(WouldBlock) => WouldBlock,
                        _ => stop,
                    });
                }
                return;
            }
            let Some((index, stream)) = s.backend.as_ref() else {
                return;
            };
            match connect_status(stream) {
                ConnectStatus::Failed(e) => {
                    let reason = classify_connect_error(&e);
                    self.connect_failed(key, reason, now);
                    return;
                }
                ConnectStatus::Connected => {
                    let index = *index;
                    let _ = stream.set_nodelay(true);
                    s.connected = true;
                    let mut prefix = Vec::new();
                    match s.pool.send_proxy {
                        Some(ProxyVersion::V1) => {
                            proxy_protocol::encode_v1(s.client_addr, s.local_addr, &mut prefix);
                        }
                        Some(ProxyVersion::V2) => {
                            proxy_protocol::encode_v2(
                                s.client_addr,
                                s.local_addr,
                                proxy_protocol::Transport::Stream,
                                &mut prefix,
                            );
                        }
                        None => {}
                    }
                    if prefix.is_empty() {
                        prefix = std::mem::take(&mut s.early);
                    } else {
                        prefix.append(&mut s.early);
                    }
                    if !prefix.is_empty() {
                        s.up.set_prefix(prefix);
                    }
                    if let Some(backend) = s.pool.backends.get(index) {
                        backend.state.record_connect_success();
                        backend
                            .state
                            .record_connect_time(s.connect_started.elapsed());
                    }
                    s.last_activity = now;
                    s.deadline = now + millis(s.route.idle_timeout);
                    self.timers.push(s.deadline, key, s.serial);
                }
            }
            // Each direction starts only if there is something to move: client bytes that
            // raised an edge during the connect (or a PROXY header / ClientHello to send), and
            // backend bytes that came with the connect's own event (a server that speaks
            // first). Anything later raises a new edge. On a short-lived connection this saves
            // the read of an empty backend socket and of a drained client socket.
            let up = match s.client_edge {
                Some(stop) => Some(stop),
                None => s.up.wants_writable().then_some(WouldBlock),
            };
            self.relay(key, up, ready.read(), now);
            return;
        }
        let (up, down) = match side {
            Side::Client => (ready.read(), s.down.wants_writable().then_some(WouldBlock)),
            Side::Backend => (s.up.wants_writable().then_some(WouldBlock), ready.read()),
        };
        self.relay(key, up, down, now);
    }

    /// Pumps the directions given a stop condition (`None`: leave that direction alone).
    fn relay(&mut self, key: usize, up: Option<ReadStop>, down: Option<ReadStop>, now: Millis) {
        let Some(s) = self.sessions.get_mut(key) else {
            return;
        };
        let Some((index, backend_stream)) = s.backend.as_mut() else {
            return;
        };
        let index = *index;
        let scratch = &mut self.scratch[..];
        let up = match up {
            Some(stop) => s.up.pump(
                &mut s.client,
                backend_stream,
                &mut self.pipes,
                scratch,
                stop,
                s.down.done(),
            ),
            None => Ok(0),
        };
        let down = match down {
            Some(stop) => s.down.pump(
                backend_stream,
                &mut s.client,
                &mut self.pipes,
                scratch,
                stop,
                s.up.done(),
            ),
            None => Ok(0),
        };
        let moved = |r: &Result<u64, PumpError>| match r {
            Ok(n) => *n,
            Err(e) => e.moved,
        };
        let (sent, received) = (moved(&up), moved(&down));
        if sent > 0 || received > 0 {
            s.last_activity = now;
            if let Some(backend) = s.pool.backends.get(index) {
                if sent > 0 {
                    backend.state.bytes_sent.fetch_add(sent, Ordering::Relaxed);
                    if s.first_up_at.is_none() {
                        s.first_up_at = Some(Instant::now());
                    }
                }
                if received > 0 {
                    backend
                        .state
                        .bytes_received
                        .fetch_add(received, Ordering::Relaxed);
                    if !s.first_byte_seen {
                        s.first_byte_seen = true;
                        if let Some(at) = s.first_up_at {
                            backend.state.record_first_byte_time(at.elapsed());
                        }
                    }
                }
            }
        }
        let end = match (up, down) {
            (Err(e), _) | (_, Err(e)) => Some(pump_end(&e)),
            _ if s.up.done() && s.down.done() => Some(End::Closed),
            _ => None,
        };
        match end {
            Some(end) => self.close(key, end),
            None => self.mute_sources_of_full_destinations(key),
        }
    }

    /// While a direction's destination is full (bytes wait in its pipe or buffer), its source
    /// socket leaves epoll's read interest, and comes back once the destination took them, as
    /// HAProxy does. Otherwise every chunk the source receives wakes the worker only to find
    /// the destination still full: during an iperf3 stream to a busy server that was about
    /// 1 900 wake-ups and EAGAIN splices a second against HAProxy's ~200. Re-adding the
    /// interest (EPOLL_CTL_MOD) reports bytes or an end of stream that came in meanwhile, so
    /// nothing waits longer than the destination does.
    fn mute_sources_of_full_destinations(&mut self, key: usize) {
        let Some(s) = self.sessions.get_mut(key) else {
            return;
        };
        let Some((_, backend)) = s.backend.as_mut() else {
            return;
        };
        let registry = self.poll.registry();
        let (up_waits, down_waits) = (s.up.wants_writable(), s.down.wants_writable());
        let (client, backend_token) = (
            tokens::session(key, Side::Client, s.serial),
            tokens::session(key, Side::Backend, s.serial),
        );
        set_read_interest(
            registry,
            &mut s.client,
            client,
            up_waits,
            &mut s.client_muted,
        );
        set_read_interest(
            registry,
            backend,
            backend_token,
            down_waits,
            &mut s.backend_muted,
        );
    }

    fn expire_timers(&mut self, now: Millis) {
        while let Some((at, key, serial)) = self.timers.pop_due(now) {
            let Some(s) = self.sessions.get_mut(key) else {
                continue;
            };
            if s.serial != serial || s.deadline != at {
                continue;
            }
            if s.preface.is_some() {
                s.route
                    .state
                    .rejected_preface_timeout
                    .fetch_add(1, Ordering::Relaxed);
                self.close(key, End::PrefaceTimeout);
                continue;
            }
            if !s.connected {
                if s.backend.is_some() {
                    self.connect_failed(key, ConnectError::Timeout, now);
                } else if s.opened_at.elapsed() >= s.route.connect_timeout {
                    self.close(key, End::Internal);
                } else {
                    // Waiting for descriptors (see `connect_next`): try again.
                    self.connect_next(key, now);
                }
                continue;
            }
            let idle = millis(s.route.idle_timeout);
            if now.saturating_sub(s.last_activity) >= idle {
                self.close(key, End::IdleTimeout);
            } else {
                // Activity since the timer was set: re-arm lazily instead of on every byte.
                s.deadline = s.last_activity + idle;
                self.timers.push(s.deadline, key, s.serial);
            }
        }
    }

    fn close(&mut self, key: usize, end: End) {
        if !self.sessions.contains(key) {
            return;
        }
        let mut s = self.sessions.remove(key);
        if let (Some(admission), Some(limiter)) =
            (s.admission.take(), s.route.state.source_limiter.get())
        {
            limiter.release(admission);
        }
        s.up.release(&mut self.pipes);
        s.down.release(&mut self.pipes);
        s.route.state.active.fetch_sub(1, Ordering::Relaxed);
        let backend_addr = match s.backend.take() {
            Some((index, _stream)) => match s.pool.backends.get(index) {
                Some(backend) => {
                    backend.state.active.fetch_sub(1, Ordering::Relaxed);
                    Some(backend.addr)
                }
                None => None,
            },
            None => None,
        };
        let backend = backend_addr.map_or_else(|| "-".to_string(), |a| a.to_string());
        tracing::info!(
            target: "ballast::access",
            listener = %s.route.name,
            client = %s.client_addr,
            backend = %backend,
            sent = s.up.bytes,
            received = s.down.bytes,
            duration_ms = u64::try_from(s.opened_at.elapsed().as_millis()).unwrap_or(u64::MAX),
            end = %end.as_str(),
            "session closed"
        );
    }

    fn close_all(&mut self) {
        for index in 0..self.listeners.len() {
            self.end_all_flows(index);
        }
        let keys: Vec<usize> = self.sessions.iter().map(|(k, _)| k).collect();
        for key in keys {
            self.close(key, End::Shutdown);
        }
    }
}

/// Per-source admission in the listener's limiter, which every worker shares.
fn admit_source(
    route: &ListenerRoute,
    ip: std::net::IpAddr,
    now: Millis,
) -> Result<Option<Admission>, Reject> {
    let Some(limits) = route.per_source else {
        return Ok(None);
    };
    route
        .state
        .source_limiter
        .get_or_init(|| SharedSourceLimiter::new(limits, SOURCE_TABLE_CAPACITY))
        .admit(limits, ip, now)
        .map(Some)
}

/// Takes `source` out of epoll's read interest (`mute`) or puts it back, when that changes
/// what `muted` records; a failed re-register leaves the record as it was, so the next relay
/// step tries again.
fn set_read_interest(
    registry: &mio::Registry,
    source: &mut TcpStream,
    token: Token,
    mute: bool,
    muted: &mut bool,
) {
    if mute == *muted {
        return;
    }
    let interest = if mute {
        Interest::WRITABLE
    } else {
        Interest::READABLE | Interest::WRITABLE
    };
    if registry.reregister(source, token, interest).is_ok() {
        *muted = mute;
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

fn pump_end(e: &PumpError) -> End {
    tracing::debug!(side = ?e.side, error = %e.error, "relay error");
    match e.side {
        Side::Client => End::ClientError,
        Side::Backend => End::BackendError,
    }
}

enum ConnectStatus {
    Connected,
    Failed(io::Error),
}

/// Called on readiness of a connecting backend socket (client-side events never get here):
/// epoll reports it only once the connect has finished, writable on success, in error
/// otherwise, so SO_ERROR alone tells the two apart and the getpeername that mio's docs
/// suggest for platforms with spurious wakeups is one syscall per connection saved.
fn connect_status(stream: &TcpStream) -> ConnectStatus {
    match stream.take_error() {
        Ok(Some(e)) | Err(e) => ConnectStatus::Failed(e),
        Ok(None) => ConnectStatus::Connected,
    }
}

fn classify_connect_error(e: &io::Error) -> ConnectError {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => ConnectError::Refused,
        io::ErrorKind::TimedOut => ConnectError::Timeout,
        _ => ConnectError::Other,
    }
}

fn is_fd_exhaustion(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// Errors after which the next accept may well succeed: the connection died in the queue.
fn is_transient_accept_error(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ECONNABORTED | libc::EINTR | libc::EPROTO | libc::EPERM)
    ) || e.kind() == io::ErrorKind::Interrupted
}
