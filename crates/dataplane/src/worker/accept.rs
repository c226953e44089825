//! Accepting TCP connections: drains a listener's queue on each readable edge and rests every
//! listener of the worker for a moment when descriptors or memory run out, since retrying at
//! once would spin on the connection still queued.
//!
//! File descriptors: the listening sockets belong to the worker's listener slots; an accepted
//! socket goes straight to admission, which either makes it a session's client socket or
//! closes it.

use std::io;

use super::{ListenerSocket, Worker, ACCEPT_BACKOFF, RESOURCE_WARN_INTERVAL};
use crate::route::Millis;
use std::sync::atomic::Ordering;

impl Worker {
    pub(super) fn listener_readable(&mut self, index: usize, now: Millis) {
        match self.listeners.get(index).and_then(|l| l.socket.as_ref()) {
            Some(ListenerSocket::Tcp(_)) => self.accept_all(index, now),
            Some(ListenerSocket::Udp(_)) => self.udp_readable(index, now),
            None => {}
        }
    }

    pub(super) fn resume_listeners(&mut self, now: Millis) {
        for i in 0..self.listeners.len() {
            if matches!(self.listeners[i].paused_until, Some(at) if at <= now) {
                self.listeners[i].paused_until = None;
                self.listener_readable(i, now);
            }
        }
    }

    pub(super) fn accept_all(&mut self, index: usize, now: Millis) {
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
    pub(super) fn pause_accepting(&mut self, now: Millis, error: &io::Error) {
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
}

/// Errors after which the next accept may well succeed: the connection died in the queue.
fn is_transient_accept_error(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ECONNABORTED | libc::EINTR | libc::EPROTO | libc::EPERM)
    ) || e.kind() == io::ErrorKind::Interrupted
}
