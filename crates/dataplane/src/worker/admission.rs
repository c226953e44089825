//! Admission of an accepted connection: the listener's limits and access rules, then the
//! preface (PROXY header and/or ClientHello) that routing waits for. A connection refused here
//! is closed at once and counted by reason; one admitted becomes a session that connects.
//!
//! File descriptors: an accepted socket refused before it becomes a session is closed when
//! it is dropped here; an admitted one is owned by its session in the worker's slab.

use std::io::{self, Read};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Instant;

use mio::net::TcpStream;
use mio::Interest;

use super::{millis, tokens, unspecified, End, Preface, Session, Worker, MAX_ATTEMPTS};
use crate::proto::client_hello;
use crate::proto::proxy_protocol;
use crate::proto::rate_limit::{Admission, Reject, SharedSourceLimiter};
use crate::proto::ParseError;
use crate::relay::ReadStop::WouldBlock;
use crate::relay::{Direction, Side};
use crate::route::{ListenerRoute, Millis};

/// Longest PROXY header accepted: v1 is at most 107 bytes; v2 with the TLVs balancers send
/// in practice stays far below this, and the spec's 64 KiB ceiling would let a trusted but
/// broken peer make every session hold a large buffer.
const PROXY_HEADER_MAX: usize = 4096;
/// Sources a listener's per-source limiter tracks (all workers together); beyond it the
/// longest idle is forgotten.
const SOURCE_TABLE_CAPACITY: usize = 65_536;

impl Worker {
    pub(super) fn admit(
        &mut self,
        slot: usize,
        stream: TcpStream,
        client_addr: SocketAddr,
        now: Millis,
    ) {
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
        if !route.client_tcp.is_empty() {
            if let Err(e) = route.client_tcp.apply(socket2::SockRef::from(&stream)) {
                tracing::debug!(listener = %route.name, error = %e, "cannot set keepalive or user timeout on a client socket");
            }
        }
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
        let ends_at = route.max_lifetime.map_or(Millis::MAX, |m| {
            m.deadline(now, crate::balance::rng::below(m.jitter_ms() + 1))
        });
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
            queued: None,
            reserved: None,
            tried: [usize::MAX; MAX_ATTEMPTS],
            attempts: 0,
            up: Direction::new(Side::Client, Side::Backend, self.force_copy),
            down: Direction::new(Side::Backend, Side::Client, self.force_copy),
            client_muted: false,
            backend_muted: false,
            opened_at,
            ends_at,
            next_log_at: Millis::MAX,
            connect_ms: None,
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
        self.start_connect(key, now);
    }

    /// Reads what the client sent so far and parses the PROXY header and/or ClientHello the
    /// listener expects; once routing is decided, starts the connect.
    pub(super) fn read_preface(&mut self, key: usize, now: Millis) {
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
        self.start_connect(key, now);
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

/// UDP: admits one new flow of `ip` (or, where each datagram is balanced on its own, one
/// datagram) under the listener's `udp.new_flows_per_second_per_source`, in the limiter
/// TCP admits through, and gives the admission back at once: only the rate applies to UDP,
/// so nothing stays counted as live. A refusal counts `datagrams` refused, by reason, in the
/// counters TCP uses.
pub(super) fn admit_udp_source(
    route: &ListenerRoute,
    ip: std::net::IpAddr,
    now: Millis,
    datagrams: u64,
) -> bool {
    match admit_source(route, ip, now) {
        Ok(admission) => {
            if let (Some(admission), Some(limiter)) = (admission, route.state.source_limiter.get())
            {
                limiter.release(admission);
            }
            true
        }
        Err(reject) => {
            counter_of(route, reject).fetch_add(datagrams, Ordering::Relaxed);
            false
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
