//! A pool's wait queue (`pools[].queue`, HAProxy `maxconn` + `timeout queue`): when every
//! usable backend of a pool is at its `max_connections`, new sessions wait here, first come
//! first served, until a slot frees up or their time runs out.
//!
//! [`WaitQueue`] is the pure part: order, capacity and deadlines, with the time as an argument,
//! no clock, no syscalls, no file descriptors. [`PoolQueue`] is the one every worker shares for
//! a pool (behind a short lock, taken only while the pool has waiters or is full), and
//! [`Signals`] lets the worker that freed a slot wake the worker whose session is first in line.
//! Each worker keeps its own sessions' deadlines in its timer heap and closes them itself.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use crate::route::Millis;

/// A waiter's place in line: smaller tickets are served first.
pub type Ticket = u64;

/// The queue is at its `max`: the session is refused (`queue_full`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Full;

/// The first waiter in line, as [`WaitQueue::head`] sees it at `now`.
#[derive(Debug, PartialEq, Eq)]
pub enum Head<'a, T> {
    /// Still within its time: serve it when a slot is free.
    Waiting(Ticket, &'a T),
    /// Its deadline passed: it must be closed (`queue_timeout`), never served.
    Expired(Ticket, &'a T),
}

#[derive(Debug)]
struct Entry<T> {
    item: T,
    deadline: Millis,
}

/// Waiters in arrival order, each with its deadline.
#[derive(Debug)]
pub struct WaitQueue<T> {
    entries: BTreeMap<Ticket, Entry<T>>,
    next: Ticket,
}

impl<T> Default for WaitQueue<T> {
    fn default() -> Self {
        Self {
            entries: BTreeMap::new(),
            next: 0,
        }
    }
}

impl<T> WaitQueue<T> {
    /// Puts `item` at the end of the line, waiting until `deadline`; refused when `max`
    /// waiters are already there.
    pub fn push(&mut self, item: T, deadline: Millis, max: usize) -> Result<Ticket, Full> {
        if self.entries.len() >= max {
            return Err(Full);
        }
        let ticket = self.next;
        self.next += 1;
        self.entries.insert(ticket, Entry { item, deadline });
        Ok(ticket)
    }

    /// The first waiter, and whether its time ran out at `now`.
    pub fn head(&self, now: Millis) -> Option<Head<'_, T>> {
        let (&ticket, entry) = self.entries.first_key_value()?;
        Some(if entry.deadline <= now {
            Head::Expired(ticket, &entry.item)
        } else {
            Head::Waiting(ticket, &entry.item)
        })
    }

    /// Takes a waiter out of line (served, timed out, or gone); `None` when it is not there.
    pub fn remove(&mut self, ticket: Ticket) -> Option<T> {
        self.entries.remove(&ticket).map(|e| e.item)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// `pools[].queue` as configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueSettings {
    /// Most sessions waiting at once, all workers together.
    pub max: usize,
    /// How long a session may wait for a slot.
    pub timeout: Duration,
}

/// Who waits: a session of one worker (its slab key and serial).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Waiter {
    pub worker: usize,
    pub key: usize,
    pub serial: u64,
}

/// The wait queue of one pool, shared by every worker and kept across reloads (by pool name),
/// with its counters. The lock is held for a few map operations and a pick, never for I/O.
#[derive(Debug, Default)]
pub struct PoolQueue {
    line: Mutex<WaitQueue<Waiter>>,
    /// Waiters now: read without the lock (by `/metrics`, and by every session's close, which
    /// only looks further when it is not 0).
    length: AtomicU64,
    /// Sessions that ever waited here.
    pub queued_total: AtomicU64,
    /// Of those, the ones whose time ran out.
    pub timeouts_total: AtomicU64,
    /// Sessions refused because `max` were already waiting.
    pub full_total: AtomicU64,
}

impl PoolQueue {
    pub fn new() -> Self {
        Self::default()
    }

    /// The line, locked. The guard keeps [`Self::len`] in step when it is dropped.
    pub fn lock(&self) -> QueueGuard<'_> {
        let line = self
            .line
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        QueueGuard {
            line,
            length: &self.length,
        }
    }

    /// Waiters now, without the lock. Read after a slot was given back, behind a SeqCst fence
    /// (see `worker::queue`), so a waiter that was being added meanwhile is never missed.
    pub fn len(&self) -> u64 {
        self.length.load(Ordering::SeqCst)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The locked line of a [`PoolQueue`].
pub struct QueueGuard<'a> {
    line: MutexGuard<'a, WaitQueue<Waiter>>,
    length: &'a AtomicU64,
}

impl std::ops::Deref for QueueGuard<'_> {
    type Target = WaitQueue<Waiter>;
    fn deref(&self) -> &Self::Target {
        &self.line
    }
}

impl std::ops::DerefMut for QueueGuard<'_> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.line
    }
}

impl Drop for QueueGuard<'_> {
    fn drop(&mut self) {
        let len = u64::try_from(self.line.len()).unwrap_or(u64::MAX);
        self.length.store(len, Ordering::SeqCst);
    }
}

/// How one worker asks another to look at its queued sessions: a flag per worker and the
/// worker's waker (the one the control plane's commands use).
#[derive(Debug, Default)]
pub struct Signals {
    workers: Vec<(Arc<mio::Waker>, AtomicBool)>,
}

impl Signals {
    pub(crate) fn new(wakers: Vec<Arc<mio::Waker>>) -> Self {
        Self {
            workers: wakers
                .into_iter()
                .map(|w| (w, AtomicBool::new(false)))
                .collect(),
        }
    }

    /// Tells `worker` that the first waiter of a queue is its own and a slot may be free.
    pub(crate) fn notify(&self, worker: usize) {
        if let Some((waker, flag)) = self.workers.get(worker) {
            if !flag.swap(true, Ordering::SeqCst) {
                let _ = waker.wake();
            }
        }
    }

    /// True (once) when `worker` was notified since it last asked.
    pub(crate) fn take(&self, worker: usize) -> bool {
        self.workers
            .get(worker)
            .is_some_and(|(_, flag)| flag.swap(false, Ordering::SeqCst))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn ticket_of<T>(head: Option<Head<'_, T>>) -> Option<(Ticket, bool)> {
        head.map(|h| match h {
            Head::Waiting(t, _) => (t, false),
            Head::Expired(t, _) => (t, true),
        })
    }

    #[test]
    fn waiters_come_out_in_arrival_order() {
        let mut q = WaitQueue::default();
        for i in 0..5 {
            q.push(i, 1_000, 10).unwrap();
        }
        let mut served = Vec::new();
        while let Some(Head::Waiting(ticket, _)) = q.head(0) {
            served.push(q.remove(ticket).unwrap());
        }
        assert_eq!(served, [0, 1, 2, 3, 4]);
        assert!(q.is_empty());
    }

    #[test]
    fn a_full_queue_refuses_and_takes_again_once_one_left() {
        let mut q = WaitQueue::default();
        let first = q.push("a", 100, 2).unwrap();
        q.push("b", 100, 2).unwrap();
        assert_eq!(q.push("c", 100, 2), Err(Full));
        q.remove(first);
        assert!(q.push("c", 100, 2).is_ok());
        assert_eq!(q.len(), 2);
    }

    #[test]
    fn the_head_expires_at_its_deadline_not_before() {
        let mut q = WaitQueue::default();
        q.push("a", 100, 10).unwrap();
        q.push("b", 200, 10).unwrap();
        assert_eq!(ticket_of(q.head(99)), Some((0, false)));
        assert_eq!(ticket_of(q.head(100)), Some((0, true)));
        q.remove(0);
        assert_eq!(ticket_of(q.head(150)), Some((1, false)));
    }

    #[test]
    fn a_waiter_gone_from_the_middle_leaves_the_others_in_order() {
        let mut q = WaitQueue::default();
        let tickets: Vec<Ticket> = (0..4).map(|i| q.push(i, 100, 10).unwrap()).collect();
        assert_eq!(q.remove(tickets[1]), Some(1));
        assert_eq!(q.remove(tickets[1]), None);
        let order: Vec<i32> = std::iter::from_fn(|| match q.head(0)? {
            Head::Waiting(t, _) | Head::Expired(t, _) => q.remove(t),
        })
        .collect();
        assert_eq!(order, [0, 2, 3]);
    }

    #[test]
    fn the_shared_length_follows_the_line() {
        let queue = PoolQueue::new();
        let waiter = Waiter {
            worker: 0,
            key: 1,
            serial: 2,
        };
        {
            let mut line = queue.lock();
            line.push(waiter, 10, 5).unwrap();
            line.push(waiter, 10, 5).unwrap();
        }
        assert_eq!(queue.len(), 2);
        {
            let mut line = queue.lock();
            let Some(Head::Waiting(t, _)) = line.head(0) else {
                panic!("no head")
            };
            line.remove(t);
        }
        assert_eq!(queue.len(), 1);
    }
}
