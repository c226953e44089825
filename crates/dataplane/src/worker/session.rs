//! The life of an established session: readiness of its two sockets drives the relay in
//! both directions, sources leave epoll's read interest while their destination is full,
//! timers end silent or stuck sessions, and `close` gives everything back and logs one
//! access line.
//!
//! File descriptors: a session owns its client socket and, once connecting, its backend
//! socket; both close when `close` takes the session out of the slab. Pipes a direction holds
//! go back to the worker's pool (or are closed, if bytes are left in them).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use mio::net::TcpStream;
use mio::{Interest, Token};

use super::connect::{classify_connect_error, connect_status, ConnectStatus};
use super::{millis, tokens, End, Ready, Session, Worker};
use crate::proto::proxy_protocol;
use crate::relay::ReadStop::{self, WouldBlock};
use crate::relay::{PumpError, Side};
use crate::route::{BackendState, ConnectError, Millis, ProxyVersion};

impl Worker {
    pub(super) fn close_backend_sessions(&mut self, state: &Arc<BackendState>) {
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

    /// Handles readiness of one of a session's sockets. Epoll reports a socket writable along
    /// with every readable edge, so a direction is pumped only when its source became
    /// readable or when it is waiting for its destination; pumping both on every event would
    /// cost a read that returns EAGAIN per event.
    pub(super) fn drive(&mut self, key: usize, side: Side, ready: Ready, now: Millis) {
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
                    let connect_time = s.connect_started.elapsed();
                    if let Some(backend) = s.pool.backends.get(index) {
                        backend.state.record_connect_success();
                        backend.state.record_connect_time(connect_time);
                    }
                    s.connect_ms = Some(millis(connect_time));
                    s.last_activity = now;
                    let lines = s.route.access_log;
                    if let Some(every) = lines.interval {
                        s.next_log_at = now.saturating_add(millis(every));
                    }
                    s.deadline = next_deadline(s);
                    self.timers.push(s.deadline, key, s.serial);
                    if lines.at_connect {
                        log_access(s, "session connected", "-");
                    }
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
    pub(super) fn relay(
        &mut self,
        key: usize,
        up: Option<ReadStop>,
        down: Option<ReadStop>,
        now: Millis,
    ) {
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
    pub(super) fn mute_sources_of_full_destinations(&mut self, key: usize) {
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

    pub(super) fn expire_timers(&mut self, now: Millis) {
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
            if s.queued.is_some() {
                self.queue_timed_out(key);
                continue;
            }
            if !s.connected {
                if s.backend.is_some() {
                    self.connect_failed(key, ConnectError::Timeout, now);
                } else {
                    // Neither connecting nor routing: nothing this session waits for can
                    // come, so it ends rather than hangs.
                    self.close(key, End::Internal);
                }
                continue;
            }
            if now >= s.next_log_at {
                log_access(s, "session open", "-");
                let every = s.route.access_log.interval.map_or(Millis::MAX, millis);
                // Once per interval, even after a long stall of this worker.
                s.next_log_at = now.saturating_add(every);
            }
            if now >= s.ends_at {
                s.route
                    .state
                    .closed_max_lifetime
                    .fetch_add(1, Ordering::Relaxed);
                self.close(key, End::MaxLifetime);
                continue;
            }
            let idle = millis(s.route.idle_timeout);
            if now.saturating_sub(s.last_activity) >= idle {
                self.close(key, End::IdleTimeout);
            } else {
                // Activity since the timer was set: re-arm lazily instead of on every byte.
                s.deadline = next_deadline(s);
                self.timers.push(s.deadline, key, s.serial);
            }
        }
    }

    pub(super) fn close(&mut self, key: usize, end: End) {
        if !self.sessions.contains(key) {
            return;
        }
        self.leave_queue(key);
        let mut s = self.sessions.remove(key);
        if let (Some(admission), Some(limiter)) =
            (s.admission.take(), s.route.state.source_limiter.get())
        {
            limiter.release(admission);
        }
        s.up.release(&mut self.pipes);
        s.down.release(&mut self.pipes);
        s.route.state.active.fetch_sub(1, Ordering::Relaxed);
        log_access(&s, "session closed", end.as_str());
        if let Some((index, _stream)) = s.backend.take() {
            if let Some(backend) = s.pool.backends.get(index) {
                backend.state.active.fetch_sub(1, Ordering::Relaxed);
            }
        }
        // Whatever it held, a slot of the pool may be free now for a session in its queue.
        self.slot_given_back(&s.pool);
    }
}

/// A connected session's one timer entry: the earliest of its idle timeout, its
/// `max_lifetime` and its next `session open` line.
fn next_deadline(s: &Session) -> Millis {
    (s.last_activity + millis(s.route.idle_timeout))
        .min(s.ends_at)
        .min(s.next_log_at)
}

/// One access-log line (target `ballast::access`): `event` is `session connected`, `session
/// open` (with the bytes so far) or `session closed` (with how it ended). `retries` counts
/// the connects after the first; `connect_ms` is the one that succeeded (`-`: none did).
fn log_access(s: &Session, event: &str, end: &str) {
    let backend = match &s.backend {
        Some((index, _)) => s
            .pool
            .backends
            .get(*index)
            .map_or_else(|| "-".to_string(), |b| b.addr.to_string()),
        None => "-".to_string(),
    };
    let connect_ms = s
        .connect_ms
        .map_or_else(|| "-".to_string(), |ms| ms.to_string());
    tracing::info!(
        target: "ballast::access",
        listener = %s.route.name,
        client = %s.client_addr,
        backend = %backend,
        sent = s.up.bytes,
        received = s.down.bytes,
        duration_ms = u64::try_from(s.opened_at.elapsed().as_millis()).unwrap_or(u64::MAX),
        connect_ms = %connect_ms,
        retries = s.attempts.saturating_sub(1),
        end = %end,
        "{event}"
    );
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

fn pump_end(e: &PumpError) -> End {
    tracing::debug!(side = ?e.side, error = %e.error, "relay error");
    match e.side {
        Side::Client => End::ClientError,
        Side::Backend => End::BackendError,
    }
}
