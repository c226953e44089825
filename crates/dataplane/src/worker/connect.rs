//! Connecting a session to a backend without blocking: the pool's picker chooses, a refused
//! or timed-out connect counts against the backend (passive health) and the next backend is
//! tried, up to the pool's `retries`; running out of descriptors is not the backend's fault
//! and does not count.
//!
//! File descriptors: each attempt's socket belongs to the session (`Session::backend`) from
//! the connect call; a failed attempt's socket is dropped before the next one opens, so a
//! session holds at most one backend socket.

use std::io;
use std::sync::atomic::Ordering;
use std::time::Instant;

use mio::net::TcpStream;
use mio::Interest;

use super::{millis, tokens, End, Worker, MAX_ATTEMPTS};
use crate::relay::Side;
use crate::route::{ConnectError, FlowKey, Millis, PoolView, Protocol};

impl Worker {
    /// Starts a connect to the next eligible backend, or ends the session when none is left.
    pub(super) fn connect_next(&mut self, key: usize, now: Millis) {
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
            // A session served from the pool's queue was given its slot there.
            let picked = match s.reserved.take() {
                Some(index) => Some(index),
                None => acquire_slot(&pool, &flow, now, tried),
            };
            let Some(index) = picked else {
                if s.attempts == 0 && pool.queue.is_some() && pool.is_saturated(now) {
                    self.enqueue(key, now);
                    return;
                }
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
                    if !pool.backend_tcp.is_empty() {
                        if let Err(e) = pool.backend_tcp.apply(socket2::SockRef::from(&stream)) {
                            tracing::debug!(backend = %backend.addr, error = %e, "cannot set keepalive or user timeout on a backend socket");
                        }
                    }
                    if let Err(e) = self.poll.registry().register(
                        &mut stream,
                        tokens::session(key, Side::Backend, s.serial),
                        Interest::READABLE | Interest::WRITABLE,
                    ) {
                        tracing::warn!(error = %e, "cannot register backend socket");
                        backend.state.active.fetch_sub(1, Ordering::Relaxed);
                        self.close(key, End::Internal);
                        return;
                    }
                    s.backend = Some((index, stream));
                    let timeout = millis(s.route.connect_timeout);
                    s.deadline = now + timeout;
                    self.timers.push(s.deadline, key, s.serial);
                    return;
                }
                Err(e) if is_fd_exhaustion(&e) => {
                    backend.state.active.fetch_sub(1, Ordering::Relaxed);
                    // Not the backend's fault: nothing counts against it. Holding the client
                    // for its connect timeout would only pin its descriptor while the table
                    // is full, so it is closed at once (as nginx does) and counted; the
                    // clients behind it wait in the kernel's accept queue while accepts rest.
                    s.route
                        .state
                        .rejected_no_descriptors
                        .fetch_add(1, Ordering::Relaxed);
                    self.pause_accepting(now, &e);
                    self.close(key, End::NoDescriptors);
                    return;
                }
                Err(e) => {
                    backend.state.active.fetch_sub(1, Ordering::Relaxed);
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
    pub(super) fn connect_failed(&mut self, key: usize, reason: ConnectError, now: Millis) {
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
        let pool = s.pool.clone();
        self.connect_next(key, now);
        // The failed attempt's slot went back; the retry may have taken another.
        self.slot_given_back(&pool);
    }
}

/// Picks a backend for a new session and takes one of its slots in the same step: a backend
/// that fills up between the pick and the count (another worker took its last slot) is
/// picked around, a bounded number of times.
pub(super) fn acquire_slot(
    pool: &PoolView,
    flow: &FlowKey,
    now: Millis,
    tried: &[usize],
) -> Option<usize> {
    for _ in 0..=pool.backends.len() {
        let index = pool.picker.pick(flow, pool, now, tried)?;
        if pool.backends.get(index)?.try_acquire() {
            return Some(index);
        }
    }
    None
}

pub(super) enum ConnectStatus {
    Connected,
    Failed(io::Error),
}

/// Called on readiness of a connecting backend socket (client-side events never get here):
/// epoll reports it only once the connect has finished, writable on success, in error
/// otherwise, so SO_ERROR alone tells the two apart and the getpeername that mio's docs
/// suggest for platforms with spurious wakeups is one syscall per connection saved.
pub(super) fn connect_status(stream: &TcpStream) -> ConnectStatus {
    match stream.take_error() {
        Ok(Some(e)) | Err(e) => ConnectStatus::Failed(e),
        Ok(None) => ConnectStatus::Connected,
    }
}

pub(super) fn classify_connect_error(e: &io::Error) -> ConnectError {
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
