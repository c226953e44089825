//! The worker's UDP shell: datagrams from clients arrive in batches (recvmmsg) on the
//! listener's SO_REUSEPORT socket; each client address is a flow with its own connected
//! upstream socket to the backend it was given; replies from that socket go back in batches
//! (sendmmsg) from the listener's socket, so the client sees an ordinary UDP server.
//!
//! File descriptors: each flow owns its upstream socket, stored in the listener slot's
//! [`FlowTable`]; a flow that expires, is evicted, or is removed hands the socket back and it
//! closes here. The table bounds the flows (and so the descriptors) per worker. An offloaded
//! flow (`fastpath: udp_offload`) keeps its socket too, which holds its port and receives what
//! the kernel leaves to the relay; its kernel entries go with it ([`Offloaded`]).
//!
//! A binary upgrade moves flows between processes: the old process's worker takes each flow
//! out of its table and out of its epoll and hands its socket over ([`crate::HandedFlow`]);
//! the new process's worker of the same index (so of the same SO_REUSEPORT slot, where the
//! client's datagrams land) puts it in its own table, to the same backend, before it reads
//! its UDP listeners for the first time. An offloaded flow is handed over as a relayed one:
//! the old process's kernel entries go with its `Offloaded` guard, and the new process offloads
//! it again on its next exchange through the relay.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsFd;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use mio::{Interest, Token};
use socket2::{Domain, SockAddr, Socket, Type};

use super::{ListenerSocket, Worker, FLOW_BIT};
use crate::proto::proxy_protocol;
use crate::proto::rate_limit::TokenBucket;
use crate::route::{ConnectError, FlowKey, ListenerRoute, Millis, Protocol, ProxyVersion};
use crate::sys::MAX_BATCH;
use crate::udp::batch::by_sender;
use crate::udp::exchange::ExchangeTable;
use crate::udp::flow_table::FlowTable;
use crate::udp::offload::{OffloadFlow, Offloaded};

/// Bytes per datagram buffer: the largest UDP payload over IPv6 jumbo-free paths fits.
pub(super) const DATAGRAM_SLOT: usize = 65_536;
/// Most receive batches handled per readiness event, so one busy socket cannot starve the
/// worker's other sockets; what is left is picked up by the next poll.
pub(super) const MAX_BATCHES_PER_EVENT: usize = 64;
/// How often a worker with offloaded flows looks for ones whose backend went down: the relay
/// notices on a flow's next datagram, which for an offloaded flow never comes to it.
const OFFLOAD_SWEEP: Millis = 100;

/// One flow: a client of a UDP listener and the backend it talks to.
pub(super) struct Flow {
    socket: mio::net::UdpSocket,
    route: Arc<ListenerRoute>,
    backend: usize,
    /// The listener address the client sent to, for PROXY v2 headers.
    local: SocketAddr,
    /// On a wildcard listener, the address the client sent to: replies leave from it, or a
    /// multi-homed host (or a keepalived VIP) would answer from its route's preferred address
    /// and the client would drop the reply.
    reply_from: Option<IpAddr>,
    /// The kernel forwards the flow's later datagrams (last, so that the kernel entries go
    /// before the socket whose port they use).
    offloaded: Option<Offloaded>,
    /// `udp.datagrams_per_second_per_flow`: the client's datagrams this flow may still
    /// forward, made full on the first datagram it counts.
    bucket: Option<TokenBucket>,
}

impl Flow {
    /// Moves the flow onto `route`, a newer snapshot of its listener, keeping its backend
    /// (backends that stay keep their state object across reloads); false when the backend
    /// is no longer in the pool, and the flow must end.
    fn follow(&mut self, route: &Arc<ListenerRoute>) -> bool {
        let Some(current) = self.route.pool.backends.get(self.backend) else {
            return false;
        };
        let Some(backend) = route
            .pool
            .backends
            .iter()
            .position(|b| Arc::ptr_eq(&b.state, &current.state))
        else {
            return false;
        };
        self.route = route.clone();
        self.backend = backend;
        true
    }
}

/// A UDP listener's flows in one worker.
#[derive(Default)]
pub(super) struct Flows {
    table: Option<FlowTable<Flow>>,
    /// When to look at the offloaded flows' backends next; `None` while none is offloaded.
    next_sweep: Option<Millis>,
    /// `udp.responses` listeners: one exchange per client datagram (see `udp_exchange`).
    pub(super) exchanges: Option<ExchangeTable<super::udp_exchange::Exchange>>,
}

impl Flows {
    pub(super) fn next_expiry(&self) -> Option<Millis> {
        let expiry = self.table.as_ref().and_then(FlowTable::next_expiry);
        let deadline = self
            .exchanges
            .as_ref()
            .and_then(ExchangeTable::next_deadline);
        [expiry, self.next_sweep, deadline]
            .into_iter()
            .flatten()
            .min()
    }
}

pub(super) fn millis(d: std::time::Duration) -> Millis {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX / 2)
}

pub(super) fn flow_token(slot: usize, id: usize) -> Token {
    Token(FLOW_BIT | (slot << 32) | id)
}

/// The address a client sent to (for PROXY headers and hashing), and on a wildcard listener
/// the one its replies must leave from.
pub(super) fn client_facing(
    bound: SocketAddr,
    destination: Option<IpAddr>,
) -> (SocketAddr, Option<IpAddr>) {
    let wildcard = bound.ip().is_unspecified();
    let local = match destination {
        Some(ip) if wildcard => SocketAddr::new(ip, bound.port()),
        _ => bound,
    };
    (local, destination.filter(|_| wildcard))
}

impl Worker {
    /// Client datagrams are waiting on UDP listener `index`.
    pub(super) fn udp_readable(&mut self, index: usize, now: Millis) {
        let Some(slot) = self.listeners.get(index) else {
            return;
        };
        let Some(route) = self.routes.load().listener(&slot.name).cloned() else {
            return;
        };
        for _ in 0..MAX_BATCHES_PER_EVENT {
            let Some(ListenerSocket::Udp(socket)) =
                self.listeners.get(index).and_then(|l| l.socket.as_ref())
            else {
                return;
            };
            let received = match self.udp_in.recv(socket.as_fd()) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    tracing::debug!(listener = %route.name, error = %e, "UDP receive failed");
                    return;
                }
            };
            // One client's datagrams leave together, in arrival order (see `by_sender`).
            let mut clients = [None; MAX_BATCH];
            for (i, client) in clients.iter_mut().enumerate().take(received) {
                *client = match self.udp_in.get(i) {
                    Some((_, Some(addr), false)) => Some(addr),
                    _ => None,
                };
            }
            by_sender(&clients[..received], |group| {
                self.client_datagrams(index, &route, group, now);
            });
            self.note_offload_refusal();
            // A short batch means the queue is empty; a datagram arriving later raises a new
            // edge, so there is no need to spend a syscall on the WouldBlock.
            if received < self.udp_in.capacity() {
                return;
            }
        }
    }

    /// Forwards `group`, datagrams of `udp_in` from one client in arrival order, to that
    /// client's flow, creating the flow (and picking the backend) on its first datagram. The
    /// group leaves in one sendmmsg on the flow's socket. A datagram without a sender or cut
    /// short comes alone and is dropped.
    fn client_datagrams(
        &mut self,
        index: usize,
        route: &Arc<ListenerRoute>,
        group: &[usize],
        now: Millis,
    ) {
        let Some(&i) = group.first() else {
            return;
        };
        let Some((_, Some(client), false)) = self.udp_in.get(i) else {
            return;
        };
        let run = group.len();
        if route
            .acl
            .as_ref()
            .is_some_and(|acl| !acl.allows(client.ip()))
        {
            route
                .state
                .rejected_acl
                .fetch_add(run as u64, Ordering::Relaxed);
            return;
        }
        let destination = self.udp_in.destination(i);
        if route.udp.per_datagram {
            self.spray_datagrams(index, route, group, client, destination, now);
            return;
        }
        if let Some(expected) = route.udp.responses {
            self.client_exchanges(index, route, group, client, destination, expected, now);
            return;
        }
        // A new flow from this source must fit its rate (`new_flows_per_second_per_source`).
        let new_flow = route.per_source.is_some()
            && self
                .flow_table(index)
                .is_none_or(|table| !table.contains(&client));
        if new_flow && !super::admission::admit_udp_source(route, client.ip(), now, run as u64) {
            return;
        }
        let Some(flow_id) = self.flow_for(index, route, client, destination, now) else {
            route
                .state
                .udp_dropped_no_backend
                .fetch_add(run as u64, Ordering::Relaxed);
            return;
        };
        let Some(flows) = self.listeners.get_mut(index).and_then(|l| l.flows.as_mut()) else {
            return;
        };
        let Some(table) = flows.table.as_mut() else {
            return;
        };
        let Some(flow) = table.get_mut(flow_id) else {
            return;
        };
        // The flow's own rate (`datagrams_per_second_per_flow`): the datagrams past it are
        // dropped, counted as refused.
        let group = match route.udp.datagram_rate {
            None => group,
            Some(rate) => {
                let bucket = flow
                    .bucket
                    .get_or_insert_with(|| TokenBucket::full(Some(rate), now));
                // A coalesced buffer (UDP_GRO) the bucket covers only in part goes on cut to
                // what it covers.
                let mut allowed = 0;
                let mut refused = 0usize;
                for &k in group {
                    let n = self.udp_in.segments(k).0;
                    let taken = if refused == 0 {
                        bucket.take_up_to(rate, u32::try_from(n).unwrap_or(u32::MAX), now)
                    } else {
                        0
                    };
                    let taken = usize::try_from(taken).unwrap_or(0);
                    if taken > 0 {
                        allowed += 1;
                        if taken < n {
                            self.udp_in.keep_segments(k, taken);
                        }
                    }
                    refused += n - taken;
                }
                if refused > 0 {
                    route
                        .state
                        .rejected_rate_limit
                        .fetch_add(refused as u64, Ordering::Relaxed);
                }
                &group[..allowed]
            }
        };
        if group.is_empty() {
            return;
        }
        let run = group.len();
        let flow = &*flow;
        let mut sent = 0;
        let mut bytes = 0u64;
        let mut failure = None;
        if flow.route.pool.send_proxy == Some(ProxyVersion::V2) {
            // The spec's DGRAM form: a header in front of every datagram, so a UDP backend
            // sees each datagram's real client. A buffer the kernel coalesced (UDP_GRO) is
            // split back into its datagrams here, each with its own header. The header is the
            // same for the whole run (one client, one listener address): encoded once.
            let scratch = &mut self.udp_scratch;
            scratch.clear();
            let header = proxy_protocol::encode_v2(
                client,
                flow.local,
                proxy_protocol::Transport::Dgram,
                scratch,
            );
            'run: for &k in group {
                let Some((data, _, _)) = self.udp_in.get(k) else {
                    break;
                };
                let (_, size) = self.udp_in.segments(k);
                // chunks() yields nothing for an empty datagram, which still gets its header.
                let empty = data.is_empty().then_some(data);
                for datagram in data.chunks(size.max(1)).chain(empty) {
                    scratch.truncate(header);
                    scratch.extend_from_slice(datagram);
                    match flow.socket.send(scratch) {
                        Ok(_) => {
                            sent += 1;
                            bytes += datagram.len() as u64;
                        }
                        Err(e) => {
                            failure = Some(e);
                            break 'run;
                        }
                    }
                }
            }
        } else {
            match self
                .udp_in
                .send(flow.socket.as_fd(), group.iter().copied(), None, None)
            {
                Ok(n) => {
                    for &k in &group[..n.min(run)] {
                        sent += self.udp_in.segments(k).0;
                        bytes += self.udp_in.get(k).map_or(0, |(d, _, _)| d.len() as u64);
                    }
                }
                Err(e) => failure = Some(e),
            }
        }
        if let Some(b) = flow.route.pool.backends.get(flow.backend) {
            b.state
                .datagrams_to_backend
                .fetch_add(sent as u64, Ordering::Relaxed);
            b.state.bytes_sent.fetch_add(bytes, Ordering::Relaxed);
        }
        match failure {
            // ECONNREFUSED: an ICMP port unreachable from an earlier datagram.
            Some(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                self.backend_refused(index, flow_id, &e, now);
            }
            // A full socket buffer (or any other local failure) drops the rest of the run, as
            // the network would; it says nothing about the backend.
            Some(e) => {
                tracing::trace!(listener = %route.name, error = %e, "UDP datagrams dropped");
            }
            None => {}
        }
    }

    /// The live flow of `client`, or a new one to a freshly picked backend. A flow whose
    /// backend went down (health, admin, passive) is moved to another backend here.
    fn flow_for(
        &mut self,
        index: usize,
        route: &Arc<ListenerRoute>,
        client: SocketAddr,
        destination: Option<IpAddr>,
        now: Millis,
    ) -> Option<usize> {
        let workers = self.workers as u64;
        let slot = self.listeners.get_mut(index)?;
        if !matches!(slot.socket, Some(ListenerSocket::Udp(_))) {
            return None;
        }
        // Recorded at bind time: getsockname per datagram cost 8% of a UDP worker's time.
        let (local, reply_from) = client_facing(slot.local?, destination);
        let flows = slot.flows.as_mut()?;
        let per_worker = usize::try_from(route.udp.max_flows.div_ceil(workers)).unwrap_or(1);
        let idle = millis(route.udp.idle_timeout);
        let table = flows
            .table
            .get_or_insert_with(|| FlowTable::new(per_worker, idle));
        if let Some(id) = table.touch(&client, now) {
            let flow = table.get_mut(id)?;
            // A reload may have published a snapshot this flow has not followed yet (the
            // worker's RoutesChanged command can come after this datagram in its batch).
            let kept = Arc::ptr_eq(&flow.route, route) || flow.follow(route);
            let alive = kept
                && flow
                    .route
                    .pool
                    .backends
                    .get(flow.backend)
                    .is_some_and(|b| b.state.is_available(now));
            if alive {
                return Some(id);
            }
            if let Some((_, gone)) = table.remove(id) {
                route.state.udp_flows_active.fetch_sub(1, Ordering::Relaxed);
                if !kept {
                    route
                        .state
                        .udp_flows_backend_removed
                        .fetch_add(1, Ordering::Relaxed);
                }
                drop(gone);
            }
        }
        table.set_limits(per_worker, idle);
        let key = FlowKey {
            protocol: Protocol::Udp,
            client,
            local,
        };
        let pool = &route.pool;
        let mut tried = [usize::MAX; 4];
        for attempt in 0..tried.len() {
            let backend_index = pool.picker.pick(&key, pool, now, &tried[..attempt])?;
            tried[attempt] = backend_index;
            let backend = pool.backends.get(backend_index)?;
            let socket = match upstream_socket(backend.addr) {
                Ok(s) => s,
                Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) => {
                    backend
                        .state
                        .record_connect_failure(ConnectError::Refused, now, pool.passive);
                    continue;
                }
                Err(e) => {
                    tracing::debug!(backend = %backend.addr, error = %e, "cannot open a UDP flow socket");
                    return None;
                }
            };
            let mut ended = std::mem::take(&mut self.ended_flows);
            let socket = mio::net::UdpSocket::from_std(socket.into());
            let offloaded = offload(route, client, local, &socket, backend.addr);
            let offloaded_now = offloaded.is_some();
            let flow = Flow {
                socket,
                route: route.clone(),
                backend: backend_index,
                local,
                reply_from,
                offloaded,
                bucket: None,
            };
            let slot = self.listeners.get_mut(index)?;
            let flows = slot.flows.as_mut()?;
            if offloaded_now && flows.next_sweep.is_none() {
                flows.next_sweep = Some(now.saturating_add(OFFLOAD_SWEEP));
            }
            let table = flows.table.as_mut()?;
            let id = table.insert(client, flow, now, &mut ended);
            let evicted = ended.len();
            route
                .state
                .udp_flows_evicted
                .fetch_add(evicted as u64, Ordering::Relaxed);
            ended.clear();
            self.ended_flows = ended;
            route.state.udp_flows_total.fetch_add(1, Ordering::Relaxed);
            route.state.udp_flows_active.fetch_add(1, Ordering::Relaxed);
            route
                .state
                .udp_flows_active
                .fetch_sub(evicted as u64, Ordering::Relaxed);
            let registry = self.poll.registry();
            let flow = table.get_mut(id)?;
            if let Err(e) =
                registry.register(&mut flow.socket, flow_token(index, id), Interest::READABLE)
            {
                tracing::warn!(error = %e, "cannot watch a UDP flow socket");
                if table.remove(id).is_some() {
                    route.state.udp_flows_active.fetch_sub(1, Ordering::Relaxed);
                }
                return None;
            }
            return Some(id);
        }
        None
    }

    /// Replies are waiting on a flow's upstream socket: relay them to the client in batches.
    pub(super) fn flow_readable(&mut self, token: usize, now: Millis) {
        let index = token >> 32;
        let id = token & 0xffff_ffff;
        if let Some(id) = super::udp_exchange::exchange_id(id) {
            self.exchange_readable(index, id, now);
            return;
        }
        for _ in 0..MAX_BATCHES_PER_EVENT {
            let Some(slot) = self.listeners.get_mut(index) else {
                return;
            };
            let Some(ListenerSocket::Udp(listener)) = slot.socket.as_ref() else {
                return;
            };
            let Some(table) = slot.flows.as_mut().and_then(|f| f.table.as_mut()) else {
                return;
            };
            let Some(client) = table.client(id) else {
                return;
            };
            let Some(flow) = table.get(id) else {
                return;
            };
            let received = match self.udp_out.recv(flow.socket.as_fd()) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    self.backend_refused(index, id, &e, now);
                    return;
                }
            };
            let to = ReplyTo {
                listener: listener.as_fd(),
                client,
                reply_from: flow.reply_from,
            };
            relay_replies(&self.udp_out, received, &to, &flow.route, flow.backend);
            table.mark_used(id, now);
            self.note_offload_refusal();
            if received < self.udp_out.capacity() {
                return;
            }
        }
    }

    /// Says once, when a path first refused UDP segmentation offload, that this worker now
    /// sends one datagram per message: slower, and a sign of a small MTU or IPsec on the way.
    pub(super) fn note_offload_refusal(&mut self) {
        if self.udp_offload_warned || (self.udp_in.offload() && self.udp_out.offload()) {
            return;
        }
        self.udp_offload_warned = true;
        tracing::warn!(
            worker = self.id,
            "a path refused UDP segmentation offload (EMSGSIZE: an MTU below the datagrams' size, or EIO: IPsec); this worker now sends each UDP datagram on its own"
        );
    }

    pub(super) fn flow_table(&mut self, index: usize) -> Option<&mut FlowTable<Flow>> {
        self.listeners
            .get_mut(index)?
            .flows
            .as_mut()?
            .table
            .as_mut()
    }

    /// The backend of flow `id` refused (ICMP port unreachable) or failed: count it, end the
    /// flow, and let the client's next datagram pick another backend.
    fn backend_refused(&mut self, index: usize, id: usize, error: &io::Error, now: Millis) {
        let Some(table) = self.flow_table(index) else {
            return;
        };
        let Some((client, flow)) = table.remove(id) else {
            return;
        };
        let route = &flow.route;
        route.state.udp_flows_active.fetch_sub(1, Ordering::Relaxed);
        if let Some(b) = route.pool.backends.get(flow.backend) {
            let reason = if error.kind() == io::ErrorKind::ConnectionRefused {
                ConnectError::Refused
            } else {
                ConnectError::Other
            };
            let went_down = b
                .state
                .record_connect_failure(reason, now, route.pool.passive);
            tracing::debug!(listener = %route.name, %client, backend = %b.addr, error = %error, "UDP backend failed; the flow moves on its next datagram");
            if went_down {
                tracing::warn!(pool = %route.pool.name, backend = %b.addr, "backend marked down by passive health");
            }
        }
    }

    pub(super) fn expire_flows(&mut self, now: Millis) {
        self.expire_exchanges(now);
        let mut ended = std::mem::take(&mut self.ended_flows);
        for slot in &mut self.listeners {
            let Some(flows) = slot.flows.as_mut() else {
                continue;
            };
            if flows.next_sweep.is_some_and(|at| at <= now) {
                flows.next_sweep = sweep_offloaded(flows, now);
            }
            let Some(table) = flows.table.as_mut() else {
                continue;
            };
            if table.next_expiry().is_none_or(|at| at > now) {
                continue;
            }
            refresh_offloaded(table, now);
            table.expire(now, &mut ended);
            for (_, flow) in ended.drain(..) {
                flow.route
                    .state
                    .udp_flows_active
                    .fetch_sub(1, Ordering::Relaxed);
                flow.route
                    .state
                    .udp_flows_expired
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
        self.ended_flows = ended;
    }

    /// A new route snapshot was published (a reload): each flow follows its backend into
    /// the new snapshot, so its datagrams keep counting where the status API looks. A flow
    /// whose backend left the configuration ends here, and the client's next datagram opens
    /// a new flow on a backend that stayed; a flow pinned to a removed backend would
    /// otherwise go on talking to it, counted nowhere, for as long as the client is active.
    pub(super) fn rebind_flows(&mut self) {
        let routes = self.routes.load_full();
        for index in 0..self.listeners.len() {
            let Some(route) = self
                .listeners
                .get(index)
                .and_then(|slot| routes.listener(&slot.name))
                .filter(|route| route.protocol == Protocol::Udp)
                .cloned()
            else {
                // The listener left too: RemoveListener ends its flows.
                continue;
            };
            let Some(table) = self.flow_table(index) else {
                continue;
            };
            for id in table.ids() {
                let Some(flow) = table.get_mut(id) else {
                    continue;
                };
                // A relayed flow meets a changed access list on its next datagram; an
                // offloaded one only here.
                let denied = flow.offloaded.is_some()
                    && route.acl.as_ref().is_some_and(|acl| {
                        table
                            .client(id)
                            .is_some_and(|client| !acl.allows(client.ip()))
                    });
                let Some(flow) = table.get_mut(id) else {
                    continue;
                };
                if !denied && flow.follow(&route) {
                    continue;
                }
                if let Some((client, flow)) = table.remove(id) {
                    let state = &flow.route.state;
                    state.udp_flows_active.fetch_sub(1, Ordering::Relaxed);
                    state
                        .udp_flows_backend_removed
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(listener = %route.name, %client, "UDP flow ended: its backend left the configuration");
                }
            }
        }
    }

    /// Takes every flow out of this worker for a binary upgrade: out of the tables (they no
    /// longer count as active here) and out of epoll, each with its socket to hand over.
    pub(super) fn hand_over_flows(&mut self) -> Vec<crate::HandedFlow> {
        let mut handed = Vec::new();
        for index in 0..self.listeners.len() {
            let Some(slot) = self.listeners.get(index) else {
                continue;
            };
            let (listener, listener_addr) = (slot.name.clone(), slot.local);
            // An exchange lasts a reply timeout at most: it ends here, and the client asks
            // again, of the new process.
            self.end_exchanges(index);
            let Some(table) = self.flow_table(index) else {
                continue;
            };
            for (client, mut flow) in table.drain_all() {
                flow.route
                    .state
                    .udp_flows_active
                    .fetch_sub(1, Ordering::Relaxed);
                let _ = self.poll.registry().deregister(&mut flow.socket);
                let backend = flow.route.pool.backends.get(flow.backend).map(|b| b.addr);
                let (Some(backend), Some(listener_addr)) = (backend, listener_addr) else {
                    continue;
                };
                handed.push(crate::HandedFlow {
                    listener: listener.clone(),
                    listener_addr,
                    client,
                    backend,
                    local: flow.local,
                    reply_from: flow.reply_from,
                    socket: flow.socket.into(),
                });
            }
        }
        handed
    }

    /// Takes in flows handed over by the process this one upgrades from, each to the backend
    /// it had (found by address in this process's pool), then starts reading the UDP
    /// listeners. A flow whose listener or backend this configuration no longer has is
    /// dropped, its socket closed: the client's next datagram opens a new flow.
    pub(super) fn adopt_flows(&mut self, flows: Vec<crate::HandedFlow>, now: Millis) {
        let routes = self.routes.load_full();
        let workers = self.workers as u64;
        let mut ended = std::mem::take(&mut self.ended_flows);
        for handed in flows {
            let Some(index) = self.listeners.iter().position(|slot| {
                slot.name == handed.listener
                    && slot.local == Some(handed.listener_addr)
                    && slot.socket.as_ref().is_some_and(ListenerSocket::is_udp)
            }) else {
                continue;
            };
            let Some(route) = routes
                .listener(&handed.listener)
                .filter(|r| r.protocol == Protocol::Udp)
                .cloned()
            else {
                continue;
            };
            let Some(backend) = route
                .pool
                .backends
                .iter()
                .position(|b| b.addr == handed.backend)
            else {
                route
                    .state
                    .udp_flows_backend_removed
                    .fetch_add(1, Ordering::Relaxed);
                continue;
            };
            let per_worker = usize::try_from(route.udp.max_flows.div_ceil(workers)).unwrap_or(1);
            let idle = millis(route.udp.idle_timeout);
            let Some(flows) = self.listeners.get_mut(index).and_then(|l| l.flows.as_mut()) else {
                continue;
            };
            let table = flows
                .table
                .get_or_insert_with(|| FlowTable::new(per_worker, idle));
            let socket = mio::net::UdpSocket::from(handed.socket);
            // The process upgraded from took its kernel entries with it; this one offloads
            // the flow again, and learns its way out again from its next exchange.
            let offloaded = route
                .pool
                .backends
                .get(backend)
                .and_then(|b| offload(&route, handed.client, handed.local, &socket, b.addr));
            if offloaded.is_some() && flows.next_sweep.is_none() {
                flows.next_sweep = Some(now.saturating_add(OFFLOAD_SWEEP));
            }
            let flow = Flow {
                socket,
                route: route.clone(),
                backend,
                local: handed.local,
                reply_from: handed.reply_from,
                offloaded,
                bucket: None,
            };
            let id = table.insert(handed.client, flow, now, &mut ended);
            route.state.udp_flows_active.fetch_add(1, Ordering::Relaxed);
            route
                .state
                .udp_flows_active
                .fetch_sub(ended.len() as u64, Ordering::Relaxed);
            ended.clear();
            let Some(flow) = table.get_mut(id) else {
                continue;
            };
            let token = flow_token(index, id);
            if let Err(e) =
                self.poll
                    .registry()
                    .register(&mut flow.socket, token, Interest::READABLE)
            {
                tracing::warn!(error = %e, "cannot watch a handed-over UDP flow socket");
                if table.remove(id).is_some() {
                    route.state.udp_flows_active.fetch_sub(1, Ordering::Relaxed);
                }
            }
        }
        self.ended_flows = ended;
        self.release_udp(now);
    }

    /// Starts reading the UDP listeners held since start ([`super::WorkerSetup::hold_udp`]),
    /// and what queued on them meanwhile.
    pub(super) fn release_udp(&mut self, now: Millis) {
        if !std::mem::take(&mut self.udp_held) {
            return;
        }
        for index in 0..self.listeners.len() {
            let Some(socket) = self
                .listeners
                .get_mut(index)
                .and_then(|l| l.socket.as_mut())
            else {
                continue;
            };
            if !socket.is_udp() {
                continue;
            }
            if let Err(e) = socket.register(&self.poll, super::tokens::listener(index)) {
                tracing::error!(error = %e, "cannot watch a UDP listening socket");
                continue;
            }
            self.udp_readable(index, now);
        }
    }

    /// Ends every flow of listener slot `index` (listener removed, drain, exit).
    pub(super) fn end_all_flows(&mut self, index: usize) {
        self.end_exchanges(index);
        let Some(table) = self.flow_table(index) else {
            return;
        };
        for (_, flow) in table.drain_all() {
            flow.route
                .state
                .udp_flows_active
                .fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// Where replies from a backend go: to the client, from the listener socket.
pub(super) struct ReplyTo<'a> {
    pub(super) listener: std::os::fd::BorrowedFd<'a>,
    pub(super) client: SocketAddr,
    /// On a wildcard listener, the address the client sent to.
    pub(super) reply_from: Option<IpAddr>,
}

/// Sends replies `0..count` of `batch` (received from backend `backend` of `route`) on to
/// the client, and counts them. Datagrams the listener socket cannot send now are dropped,
/// as the network would; retrying would let one slow client stall the worker. Only what left
/// counts as relayed; the rest is counted as dropped.
pub(super) fn relay_replies(
    batch: &crate::sys::DatagramBatch,
    count: usize,
    to: &ReplyTo<'_>,
    route: &ListenerRoute,
    backend: usize,
) {
    let dest = SockAddr::from(to.client);
    let sent = batch
        .send(to.listener, 0..count, Some(&dest), to.reply_from)
        .unwrap_or(0)
        .min(count);
    let (mut bytes, mut datagrams, mut dropped) = (0u64, 0u64, 0u64);
    for i in 0..count {
        if let Some((data, _, _)) = batch.get(i) {
            let segments = batch.segments(i).0 as u64;
            if i < sent {
                bytes += data.len() as u64;
                datagrams += segments;
            } else {
                dropped += segments;
            }
        }
    }
    if let Some(b) = route.pool.backends.get(backend) {
        b.state
            .datagrams_from_backend
            .fetch_add(datagrams, Ordering::Relaxed);
        b.state.bytes_received.fetch_add(bytes, Ordering::Relaxed);
    }
    if dropped > 0 {
        route
            .state
            .udp_replies_dropped
            .fetch_add(dropped, Ordering::Relaxed);
    }
}

/// Hands a new flow to the kernel when its listener offloads (`fastpath: udp_offload`).
fn offload(
    route: &Arc<ListenerRoute>,
    client: SocketAddr,
    local: SocketAddr,
    socket: &mio::net::UdpSocket,
    backend: SocketAddr,
) -> Option<Offloaded> {
    let engine = route.udp_offload.as_ref()?;
    let flow = OffloadFlow {
        client,
        listener: local,
        flow_local: socket.local_addr().ok()?,
        backend,
        pool: route.pool.name.clone(),
    };
    Offloaded::install(engine, flow, &route.state)
}

/// Ends the offloaded flows whose backend is no longer available (down, draining, disabled),
/// so the client's next datagram reaches the relay and moves, as a relayed flow moves on its
/// next datagram. Atomics only, no syscalls. The next sweep's time, while any flow is still
/// offloaded.
fn sweep_offloaded(flows: &mut Flows, now: Millis) -> Option<Millis> {
    let table = flows.table.as_mut()?;
    let mut remaining = false;
    for id in table.ids() {
        let Some(flow) = table.get(id) else {
            continue;
        };
        if flow.offloaded.is_none() {
            continue;
        }
        let available = flow
            .route
            .pool
            .backends
            .get(flow.backend)
            .is_some_and(|b| b.state.is_available(now));
        if available {
            remaining = true;
        } else if let Some((client, flow)) = table.remove(id) {
            flow.route
                .state
                .udp_flows_active
                .fetch_sub(1, Ordering::Relaxed);
            tracing::debug!(listener = %flow.route.name, %client, "offloaded UDP flow ended: its backend is out; the next datagram moves it");
        }
    }
    remaining.then(|| now.saturating_add(OFFLOAD_SWEEP))
}

/// The relay saw nothing of an offloaded flow since its first exchange: before the idle
/// timeout ends one, ask the kernel when it last forwarded a datagram of it, and count that
/// as the flow's last use. Bounded by the flows due now.
fn refresh_offloaded(table: &mut FlowTable<Flow>, now: Millis) {
    for _ in 0..table.len() {
        let Some(id) = table.oldest_due(now) else {
            return;
        };
        let Some(idle) = table
            .get(id)
            .and_then(|flow| flow.offloaded.as_ref())
            .and_then(Offloaded::idle_for)
        else {
            return;
        };
        let seen = now.saturating_sub(millis(idle));
        if !table.mark_used_if_later(id, seen) {
            return;
        }
    }
}

/// A non-blocking UDP socket connected to `backend`: the kernel then filters replies to that
/// backend and reports its ICMP refusals as ECONNREFUSED.
pub(super) fn upstream_socket(backend: SocketAddr) -> io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(backend), Type::DGRAM, None)?;
    socket.set_nonblocking(true)?;
    socket.set_cloexec(true)?;
    socket.connect(&backend.into())?;
    // Replies in bursts arrive coalesced and leave in one send (best effort).
    crate::sys::enable_udp_gro(socket.as_fd());
    Ok(socket)
}
