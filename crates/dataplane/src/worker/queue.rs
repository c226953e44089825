//! Sessions waiting in a pool's queue (`pools[].queue`) for a backend slot.
//!
//! A backend's slots are its `active` count in `BackendState`, shared by every worker (and the
//! socket fast path), so a slot freed on one worker may be the one a session of another worker
//! waits for. The line itself is the pool's `PoolQueue`, shared too; the pure ordering and
//! deadlines are `queue::WaitQueue`'s. The rules:
//!
//! - A session waits when the pool is saturated (a backend is usable but every usable one is
//!   full), or when others already wait: a newcomer never overtakes the line.
//! - Whoever gives a slot back (any session of the pool closing, on any worker) looks at the
//!   line, behind a SeqCst fence paired with the one after a session joins it, so that either
//!   the closer sees the newcomer or the newcomer sees the free slot. If the first waiter is
//!   its own, it takes a slot for it under the queue's lock (the pick and the count in one
//!   step, `BackendView::try_acquire`) and connects it; if it is another worker's, it wakes
//!   that worker (`queue::Signals`), which does the same. Only the first waiter is ever served,
//!   so the line is served in order across workers.
//! - Each worker keeps its own waiters' deadlines in its timer heap and closes them itself
//!   (`queue_timeout`). A waiter found expired at the head is never served.
//! - Capacity can also appear without a session ending (a backend comes back up, a reload
//!   raises `max_connections`): a reload wakes every worker's queues at once, and while a
//!   worker has waiters it looks at their queues once a second anyway.
//!
//! File descriptors: none of its own; a waiting session holds its client socket only.

use std::sync::atomic::{fence, Ordering};
use std::sync::Arc;

use super::{millis, End, Worker};
use crate::queue::{Head, PoolQueue, Waiter};
use crate::route::{FlowKey, Millis, PoolView, Protocol};

/// While a worker has waiters, how often it looks at their queues even unasked.
pub(super) const QUEUE_RECHECK: Millis = 1_000;

impl Worker {
    /// Routes a session that is ready to connect: into the pool's line when others wait there
    /// already, else straight to a connect.
    pub(super) fn start_connect(&mut self, key: usize, now: Millis) {
        let Some(s) = self.sessions.get(key) else {
            return;
        };
        if s.pool.queue.is_some() && !s.pool.waiting.is_empty() {
            self.enqueue(key, now);
        } else {
            self.connect_next(key, now);
        }
    }

    /// Puts a session at the end of its pool's line, or closes it when the line is full.
    pub(super) fn enqueue(&mut self, key: usize, now: Millis) {
        let Some(s) = self.sessions.get_mut(key) else {
            return;
        };
        let Some(settings) = s.pool.queue else {
            self.close(key, End::NoBackend);
            return;
        };
        let queue = s.pool.waiting.clone();
        let deadline = now.saturating_add(millis(settings.timeout));
        let waiter = Waiter {
            worker: self.id,
            key,
            serial: s.serial,
        };
        let pushed = queue.lock().push(waiter, deadline, settings.max);
        match pushed {
            Err(_) => {
                queue.full_total.fetch_add(1, Ordering::Relaxed);
                s.route
                    .state
                    .rejected_queue_full
                    .fetch_add(1, Ordering::Relaxed);
                tracing::debug!(pool = %s.pool.name, client = %s.client_addr, "rejected: queue full");
                self.close(key, End::QueueFull);
            }
            Ok(ticket) => {
                queue.queued_total.fetch_add(1, Ordering::Relaxed);
                s.queued = Some(ticket);
                s.deadline = deadline;
                self.timers.push(deadline, key, s.serial);
                self.track(&queue);
                // Pairs with the fence in `slot_given_back`: a slot freed while this session
                // joined is seen here if the closer did not see the session.
                fence(Ordering::SeqCst);
                self.dispatch(queue, now);
            }
        }
    }

    /// A session of `pool` ended or gave its backend slot back: serve the pool's line. On a
    /// pool without a `queue` nobody can join the line (only leave it, after a reload turned
    /// the queue off), so the fence that pairs with a joiner's is not needed there.
    pub(super) fn slot_given_back(&mut self, pool: &PoolView) {
        if pool.queue.is_some() {
            fence(Ordering::SeqCst);
        }
        if !pool.waiting.is_empty() {
            self.dispatch(pool.waiting.clone(), crate::clock::now_ms());
        }
    }

    /// Looks at every queue this worker has waiters in (asked by another worker, after a
    /// reload, or as the once-a-second check).
    pub(super) fn serve_queues(&mut self, now: Millis) {
        let queues: Vec<Arc<PoolQueue>> = self.waiting.iter().map(|(q, _)| q.clone()).collect();
        for queue in queues {
            self.dispatch(queue, now);
        }
        self.queue_check_at = (!self.waiting.is_empty()).then_some(now + QUEUE_RECHECK);
    }

    /// Serves `queue` while its first waiter is this worker's and a slot is free. A close
    /// during a connect may ask for another dispatch: it is done after this one, not inside.
    fn dispatch(&mut self, queue: Arc<PoolQueue>, now: Millis) {
        self.dispatch_pending.push(queue);
        if self.dispatching {
            return;
        }
        self.dispatching = true;
        while let Some(queue) = self.dispatch_pending.pop() {
            self.dispatch_one(&queue, now);
        }
        self.dispatching = false;
    }

    fn dispatch_one(&mut self, queue: &Arc<PoolQueue>, now: Millis) {
        loop {
            let mut line = queue.lock();
            let (ticket, waiter, expired) = match line.head(now) {
                None => return,
                Some(Head::Waiting(ticket, waiter)) => (ticket, *waiter, false),
                Some(Head::Expired(ticket, waiter)) => (ticket, *waiter, true),
            };
            if waiter.worker != self.id {
                drop(line);
                self.signals.notify(waiter.worker);
                return;
            }
            let key = waiter.key;
            let mine = self
                .sessions
                .get(key)
                .filter(|s| s.serial == waiter.serial && s.queued == Some(ticket));
            let Some(s) = mine else {
                // Cannot happen (a session leaves the line when it closes); never block it.
                line.remove(ticket);
                continue;
            };
            if expired {
                line.remove(ticket);
                drop(line);
                self.queue_timed_out(key);
                continue;
            }
            // The slot is taken under the lock, so the next waiter cannot be given it too.
            let flow = FlowKey {
                protocol: Protocol::Tcp,
                client: s.client_addr,
                local: s.local_addr,
            };
            let pool = s.pool.clone();
            let Some(index) = super::connect::acquire_slot(&pool, &flow, now, &[]) else {
                return;
            };
            line.remove(ticket);
            drop(line);
            if let Some(s) = self.sessions.get_mut(key) {
                s.queued = None;
                s.reserved = Some(index);
            }
            self.untrack(queue);
            self.connect_next(key, now);
        }
    }

    /// A waiter's time ran out: out of the line (if still in it), counted, closed.
    pub(super) fn queue_timed_out(&mut self, key: usize) {
        self.leave_queue(key);
        if let Some(s) = self.sessions.get(key) {
            s.pool
                .waiting
                .timeouts_total
                .fetch_add(1, Ordering::Relaxed);
            s.route
                .state
                .rejected_queue_timeout
                .fetch_add(1, Ordering::Relaxed);
            tracing::debug!(pool = %s.pool.name, client = %s.client_addr, "closed: queue timeout");
        }
        self.close(key, End::QueueTimeout);
    }

    /// Takes a waiting session out of its pool's line (it closes, or timed out).
    pub(super) fn leave_queue(&mut self, key: usize) {
        let Some(s) = self.sessions.get_mut(key) else {
            return;
        };
        let Some(ticket) = s.queued.take() else {
            return;
        };
        let queue = s.pool.waiting.clone();
        queue.lock().remove(ticket);
        self.untrack(&queue);
    }

    fn track(&mut self, queue: &Arc<PoolQueue>) {
        match self.waiting.iter_mut().find(|(q, _)| Arc::ptr_eq(q, queue)) {
            Some((_, n)) => *n += 1,
            None => self.waiting.push((queue.clone(), 1)),
        }
        if self.queue_check_at.is_none() {
            self.queue_check_at = Some(crate::clock::now_ms() + QUEUE_RECHECK);
        }
    }

    fn untrack(&mut self, queue: &Arc<PoolQueue>) {
        if let Some(i) = self.waiting.iter().position(|(q, _)| Arc::ptr_eq(q, queue)) {
            if let Some((_, n)) = self.waiting.get_mut(i) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    self.waiting.swap_remove(i);
                }
            }
        }
        if self.waiting.is_empty() {
            self.queue_check_at = None;
        }
    }
}
