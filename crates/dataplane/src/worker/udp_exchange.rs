//! The worker's shell for `udp.responses` listeners: each client datagram is an exchange of
//! its own (the pure rules are `udp::exchange`). It gets a backend picked for it alone and an
//! upstream socket connected to that backend, so the kernel hands this exchange exactly its
//! own replies; they go back to the client from the listener socket, and once the expected
//! number came the exchange ends and its socket closes. A resolver that sends its queries
//! from one socket thus has each query balanced on its own, as nginx does with
//! `proxy_responses 1; proxy_requests 1;`.
//!
//! File descriptors: each open exchange owns its upstream socket, in the listener slot's
//! exchange table (bounded, as flows are, by the worker's share of `udp.max_flows`); it closes
//! when the exchange is answered, times out, is evicted, or its listener goes.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsFd;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use mio::Interest;

use super::udp::{
    client_facing, flow_token, millis, relay_replies, upstream_socket, ReplyTo,
    MAX_BATCHES_PER_EVENT,
};
use super::{ListenerSocket, Worker};
use crate::proto::proxy_protocol;
use crate::route::{ConnectError, FlowKey, ListenerRoute, Millis, Protocol, ProxyVersion};
use crate::udp::exchange::{Attempts, Ended, ExchangeTable};

/// Set in the id part of a flow token for an exchange (flow ids stay far below it: a table
/// holds at most `udp.max_flows` entries).
const EXCHANGE_BIT: usize = 1 << 31;
/// Most backends tried for one datagram when opening its socket fails at once (an ICMP
/// refusal already known to the kernel); each such failure counts toward passive health.
const OPEN_ATTEMPTS: usize = 4;
/// Room for the backends one datagram must not go to: those it went to, and those that
/// refused at once.
const EXCLUDED: usize = crate::udp::exchange::MAX_UDP_RETRIES as usize + 1 + OPEN_ATTEMPTS;

/// The exchange id a flow token's id part names, if it names an exchange.
pub(super) fn exchange_id(token_id: usize) -> Option<usize> {
    (token_id & EXCHANGE_BIT != 0).then_some(token_id & !EXCHANGE_BIT)
}

/// One client datagram on its way to a backend, and the replies it waits for.
pub(super) struct Exchange {
    socket: mio::net::UdpSocket,
    route: Arc<ListenerRoute>,
    backend: usize,
    origin: Origin,
    /// The backends the datagram went to, this one last.
    attempts: Attempts,
    /// The datagram, kept while it may have to go to another backend (`udp.retries`).
    query: Option<Box<[u8]>>,
}

impl Worker {
    /// Datagrams `group` of `udp_in`, all from `client`, each opened as an exchange of its
    /// own. A buffer the kernel coalesced (UDP_GRO) is cut back into its datagrams here.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn client_exchanges(
        &mut self,
        index: usize,
        route: &Arc<ListenerRoute>,
        group: &[usize],
        client: SocketAddr,
        destination: Option<IpAddr>,
        expected: u32,
        now: Millis,
    ) {
        let Some(bound) = self.listeners.get(index).and_then(|slot| slot.local) else {
            return;
        };
        let (local, reply_from) = client_facing(bound, destination);
        let mut query = std::mem::take(&mut self.udp_query);
        let mut dropped = 0u64;
        for &k in group {
            let Some(len) = self.udp_in.get(k).map(|(data, _, _)| data.len()) else {
                break;
            };
            let step = self.udp_in.segments(k).1.max(1);
            let mut start = 0;
            // An empty datagram is one exchange too.
            loop {
                let end = (start + step).min(len);
                if route.per_source.is_some()
                    && !super::admission::admit_udp_source(route, client.ip(), now, 1)
                {
                    start = end;
                    if start >= len {
                        break;
                    }
                    continue;
                }
                query.clear();
                if let Some((data, _, _)) = self.udp_in.get(k) {
                    query.extend_from_slice(&data[start..end]);
                }
                let opened = self.open_exchange(
                    index,
                    route,
                    Origin {
                        client,
                        local,
                        reply_from,
                    },
                    &query,
                    expected,
                    Attempts::default(),
                    now,
                );
                if !opened {
                    dropped += 1;
                }
                start = end;
                if start >= len {
                    break;
                }
            }
        }
        self.udp_query = query;
        if dropped > 0 {
            route
                .state
                .udp_dropped_no_backend
                .fetch_add(dropped, Ordering::Relaxed);
        }
    }

    /// Picks a backend for `query` other than those `attempts` went to, opens a socket to
    /// it, sends, and files the exchange; false when no backend could take it (the datagram
    /// is dropped).
    #[allow(clippy::too_many_arguments)]
    fn open_exchange(
        &mut self,
        index: usize,
        route: &Arc<ListenerRoute>,
        origin: Origin,
        query: &[u8],
        expected: u32,
        mut attempts: Attempts,
        now: Millis,
    ) -> bool {
        let key = FlowKey {
            protocol: Protocol::Udp,
            client: origin.client,
            local: origin.local,
        };
        let pool = &route.pool;
        let mut excluded = [usize::MAX; EXCLUDED];
        let before = attempts.tried().len().min(EXCLUDED);
        excluded[..before].copy_from_slice(&attempts.tried()[..before]);
        for attempt in before..(before + OPEN_ATTEMPTS).min(EXCLUDED) {
            let Some(backend_index) = pool.picker.pick(&key, pool, now, &excluded[..attempt])
            else {
                return false;
            };
            excluded[attempt] = backend_index;
            let Some(backend) = pool.backends.get(backend_index) else {
                return false;
            };
            let socket = match upstream_socket(backend.addr) {
                Ok(s) => mio::net::UdpSocket::from_std(s.into()),
                Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) => {
                    backend
                        .state
                        .record_connect_failure(ConnectError::Refused, now, pool.passive);
                    continue;
                }
                Err(e) => {
                    tracing::debug!(backend = %backend.addr, error = %e, "cannot open a UDP exchange socket");
                    return false;
                }
            };
            let proxy = pool.send_proxy == Some(ProxyVersion::V2);
            let sent = send_query(&socket, proxy, &origin, query, &mut self.udp_scratch);
            match sent {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                    backend
                        .state
                        .record_connect_failure(ConnectError::Refused, now, pool.passive);
                    continue;
                }
                Err(e) => {
                    // A full socket buffer or another local failure: dropped, as the network
                    // would; it says nothing about the backend.
                    tracing::trace!(listener = %route.name, error = %e, "UDP datagram dropped");
                    return false;
                }
            }
            backend
                .state
                .datagrams_to_backend
                .fetch_add(1, Ordering::Relaxed);
            backend
                .state
                .bytes_sent
                .fetch_add(query.len() as u64, Ordering::Relaxed);
            attempts.record(backend_index);
            let exchange = Exchange {
                socket,
                route: route.clone(),
                backend: backend_index,
                origin,
                attempts,
                query: (route.udp.retries > 0).then(|| query.into()),
            };
            return self.file_exchange(index, route, origin.client, exchange, expected, now);
        }
        false
    }

    /// Puts a sent exchange in the listener's table and watches its socket for replies.
    fn file_exchange(
        &mut self,
        index: usize,
        route: &Arc<ListenerRoute>,
        client: SocketAddr,
        exchange: Exchange,
        expected: u32,
        now: Millis,
    ) -> bool {
        let workers = self.workers as u64;
        let Some(flows) = self.listeners.get_mut(index).and_then(|l| l.flows.as_mut()) else {
            return false;
        };
        let per_worker = usize::try_from(route.udp.max_flows.div_ceil(workers)).unwrap_or(1);
        let timeout = millis(route.udp.reply_timeout);
        let table = flows
            .exchanges
            .get_or_insert_with(|| ExchangeTable::new(per_worker, timeout));
        table.set_limits(per_worker, timeout);
        let mut evicted = Vec::new();
        let id = table.insert(client, expected, exchange, now, &mut evicted);
        let state = &route.state;
        state.udp_flows_total.fetch_add(1, Ordering::Relaxed);
        state.udp_flows_active.fetch_add(1, Ordering::Relaxed);
        for gone in evicted {
            let state = &gone.payload.route.state;
            state.udp_flows_active.fetch_sub(1, Ordering::Relaxed);
            state.udp_flows_evicted.fetch_add(1, Ordering::Relaxed);
        }
        let Some(exchange) = table.get_mut(id) else {
            return false;
        };
        // A reply may already be queued: epoll reports it when the socket is added.
        let token = flow_token(index, id | EXCHANGE_BIT);
        if let Err(e) =
            self.poll
                .registry()
                .register(&mut exchange.socket, token, Interest::READABLE)
        {
            tracing::warn!(error = %e, "cannot watch a UDP exchange socket");
            if table.remove(id).is_some() {
                state.udp_flows_active.fetch_sub(1, Ordering::Relaxed);
            }
            return false;
        }
        true
    }

    /// Replies are waiting on exchange `id` of listener slot `index`: relay them to the
    /// client, at most as many as it still waits for, and end it once it has them all.
    pub(super) fn exchange_readable(&mut self, index: usize, id: usize, now: Millis) {
        for _ in 0..MAX_BATCHES_PER_EVENT {
            let Some(slot) = self.listeners.get_mut(index) else {
                return;
            };
            let Some(ListenerSocket::Udp(listener)) = slot.socket.as_ref() else {
                return;
            };
            let Some(table) = slot.flows.as_mut().and_then(|f| f.exchanges.as_mut()) else {
                return;
            };
            let (Some(client), Some(awaiting)) = (table.client(id), table.awaiting(id)) else {
                return;
            };
            let Some(exchange) = table.get(id) else {
                return;
            };
            let received = match self.udp_out.recv(exchange.socket.as_fd()) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    self.exchange_refused(index, id, &e, now);
                    return;
                }
            };
            // Replies past the expected number are not relayed: the exchange is over.
            let mut take = 0;
            let mut replies = 0u32;
            while take < received && replies < awaiting {
                let segments = u32::try_from(self.udp_out.segments(take).0).unwrap_or(u32::MAX);
                replies = replies.saturating_add(segments);
                take += 1;
            }
            let to = ReplyTo {
                listener: listener.as_fd(),
                client,
                reply_from: exchange.origin.reply_from,
            };
            relay_replies(&self.udp_out, take, &to, &exchange.route, exchange.backend);
            let route = exchange.route.clone();
            if replies > 0 {
                if let Some(b) = route.pool.backends.get(exchange.backend) {
                    b.state.record_reply();
                }
            }
            self.note_offload_refusal();
            let Some(table) = self.exchange_table(index) else {
                return;
            };
            if table.replied(id, replies, now).is_some() {
                route.state.udp_flows_active.fetch_sub(1, Ordering::Relaxed);
                route
                    .state
                    .udp_flows_answered
                    .fetch_add(1, Ordering::Relaxed);
                return;
            }
            if received < self.udp_out.capacity() {
                return;
            }
        }
    }

    /// The backend of exchange `id` refused it (ICMP port unreachable): count the failure,
    /// end the exchange, and send the datagram to another backend if `udp.retries` allows.
    fn exchange_refused(&mut self, index: usize, id: usize, error: &io::Error, now: Millis) {
        let Some(gone) = self.exchange_table(index).and_then(|t| t.remove(id)) else {
            return;
        };
        let reason = if error.kind() == io::ErrorKind::ConnectionRefused {
            ConnectError::Refused
        } else {
            ConnectError::Other
        };
        tracing::debug!(listener = %gone.payload.route.name, client = %gone.client, error = %error, "UDP exchange refused");
        self.exchange_failed(index, gone, reason, now);
    }

    /// Ends the exchanges whose reply timeout ran out.
    pub(super) fn expire_exchanges(&mut self, now: Millis) {
        let mut ended = std::mem::take(&mut self.ended_exchanges);
        let mut expired = Vec::new();
        for (index, slot) in self.listeners.iter_mut().enumerate() {
            let Some(table) = slot.flows.as_mut().and_then(|f| f.exchanges.as_mut()) else {
                continue;
            };
            if table.next_deadline().is_some_and(|at| at <= now) {
                table.expire(now, &mut expired);
                ended.extend(expired.drain(..).map(|gone| (index, gone)));
            }
        }
        for (index, gone) in ended.drain(..) {
            if gone.replies > 0 {
                // The backend answered, if less often than expected: not a failure.
                let state = &gone.payload.route.state;
                state.udp_flows_active.fetch_sub(1, Ordering::Relaxed);
                state
                    .udp_flows_reply_timeout
                    .fetch_add(1, Ordering::Relaxed);
                continue;
            }
            self.exchange_failed(index, gone, ConnectError::NoReply, now);
        }
        self.ended_exchanges = ended;
    }

    /// Exchange `gone` (of listener slot `index`) failed for `reason` before any reply: the
    /// failure counts toward its backend's passive health, and the datagram goes to a backend
    /// it has not been to when `udp.retries` allows (as a new exchange).
    fn exchange_failed(
        &mut self,
        index: usize,
        gone: Ended<Exchange>,
        reason: ConnectError,
        now: Millis,
    ) {
        let Exchange {
            socket,
            route,
            backend,
            origin,
            attempts,
            query,
        } = gone.payload;
        // The failed socket closes first: a late reply to it is refused by the kernel.
        drop(socket);
        let state = &route.state;
        state.udp_flows_active.fetch_sub(1, Ordering::Relaxed);
        if let Some(b) = route.pool.backends.get(backend) {
            if b.state
                .record_connect_failure(reason, now, route.pool.passive)
            {
                tracing::warn!(pool = %route.pool.name, backend = %b.addr, "backend marked down by passive health");
            }
        }
        let retry = match (&query, route.udp.responses) {
            (Some(query), Some(expected)) if attempts.retry_after(0, route.udp.retries) => {
                self.open_exchange(index, &route, origin, query, expected, attempts, now)
            }
            _ => false,
        };
        if retry {
            state.udp_flows_retried.fetch_add(1, Ordering::Relaxed);
        } else if reason == ConnectError::NoReply {
            state
                .udp_flows_reply_timeout
                .fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Ends every exchange of listener slot `index` (listener removed, drain, hand-over).
    pub(super) fn end_exchanges(&mut self, index: usize) {
        let Some(table) = self.exchange_table(index) else {
            return;
        };
        for gone in table.drain_all() {
            gone.payload
                .route
                .state
                .udp_flows_active
                .fetch_sub(1, Ordering::Relaxed);
        }
    }

    fn exchange_table(&mut self, index: usize) -> Option<&mut ExchangeTable<Exchange>> {
        self.listeners
            .get_mut(index)?
            .flows
            .as_mut()?
            .exchanges
            .as_mut()
    }
}

/// Where a client datagram came from and went to.
#[derive(Clone, Copy)]
struct Origin {
    client: SocketAddr,
    /// The listener address it was sent to.
    local: SocketAddr,
    reply_from: Option<IpAddr>,
}

/// Sends `query` on an exchange's connected socket, behind a PROXY v2 header when `proxy`.
fn send_query(
    socket: &mio::net::UdpSocket,
    proxy: bool,
    origin: &Origin,
    query: &[u8],
    scratch: &mut Vec<u8>,
) -> io::Result<()> {
    if !proxy {
        return socket.send(query).map(drop);
    }
    scratch.clear();
    proxy_protocol::encode_v2(
        origin.client,
        origin.local,
        proxy_protocol::Transport::Dgram,
        scratch,
    );
    scratch.extend_from_slice(query);
    socket.send(scratch).map(drop)
}
