//! The exchanges of one worker and one `udp.responses` listener: pure, with the time passed in.
//!
//! With `udp.responses: N` (nginx `proxy_responses` with `proxy_requests 1`) each client
//! datagram is an exchange of its own: balanced on its own, sent on a socket of its own (the
//! kernel then tells its replies apart from every other exchange's, with no look into the
//! payload), and ended once `N` replies came back. An exchange that waits longer than the reply
//! timeout for its first (or next) reply times out; the caller counts one that got no reply at
//! all as a failure of its backend and may send its datagram again elsewhere.
//!
//! Several exchanges of one client may be open at once (a resolver sends its queries from one
//! socket), so the table is not keyed by client: an exchange is found by the id its socket's
//! token carries. Exchanges are kept in the order their deadlines were set, in the intrusive
//! list of `crate::lru`: with one timeout for the whole table, that is deadline order, so
//! arming, finding the next deadline and expiring are O(1) per exchange. (After a reload that
//! shortens the timeout, an exchange armed before it may keep later ones waiting, for at most
//! the old timeout.) Bounded: when full, the exchange closest to its deadline is evicted.
//! No syscalls, no clock: unit- and property-tested without sockets.

use std::net::SocketAddr;

use slab::Slab;

use crate::clock::Millis;
use crate::lru::{Linked, Links, LruOrder};

/// Most `udp.retries`: a datagram goes to at most this many backends after the first.
pub const MAX_UDP_RETRIES: u32 = 3;
const MAX_SENDS: usize = MAX_UDP_RETRIES as usize + 1;

/// The backends one client datagram was sent to, in order, and whether it may go to another
/// after its exchange got no reply at all (one with any reply is not a failure: the backend
/// answered, if not as often as expected).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attempts {
    sent_to: [usize; MAX_SENDS],
    count: usize,
}

impl Default for Attempts {
    fn default() -> Self {
        Self {
            sent_to: [usize::MAX; MAX_SENDS],
            count: 0,
        }
    }
}

impl Attempts {
    /// The datagram went to backend `backend`; beyond [`MAX_UDP_RETRIES`] sends, ignored.
    pub fn record(&mut self, backend: usize) {
        if let Some(slot) = self.sent_to.get_mut(self.count) {
            *slot = backend;
            self.count += 1;
        }
    }

    /// The backends it went to: a picker must not choose them again.
    pub fn tried(&self) -> &[usize] {
        &self.sent_to[..self.count]
    }

    /// After an exchange that got `replies`, under `udp.retries: retries`: send the datagram
    /// again (to another backend)?
    pub fn retry_after(&self, replies: u32, retries: u32) -> bool {
        let allowed = retries.min(MAX_UDP_RETRIES) as usize + 1;
        replies == 0 && self.count > 0 && self.count < allowed
    }
}

#[derive(Debug)]
struct Entry<T> {
    client: SocketAddr,
    /// Replies this exchange ends after.
    expected: u32,
    replies: u32,
    deadline: Millis,
    links: Links,
    payload: T,
}

impl<T> Linked for Entry<T> {
    fn links(&self) -> &Links {
        &self.links
    }
    fn links_mut(&mut self) -> &mut Links {
        &mut self.links
    }
}

/// An exchange that left the table, handed back so the caller closes what it owns.
#[derive(Debug, PartialEq, Eq)]
pub struct Ended<T> {
    pub client: SocketAddr,
    /// Replies it got; 0 for one whose backend never answered.
    pub replies: u32,
    pub payload: T,
}

/// Lifetime counts; `created == answered + timed_out + evicted + removed + active` always holds.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ExchangeStats {
    pub created: u64,
    /// Got all the replies it expected.
    pub answered: u64,
    /// The reply timeout ran out before it did.
    pub timed_out: u64,
    /// The table was full and this was the one closest to its deadline.
    pub evicted: u64,
    /// The caller removed it (backend refused, listener gone).
    pub removed: u64,
}

#[derive(Debug)]
pub struct ExchangeTable<T> {
    entries: Slab<Entry<T>>,
    /// Every exchange, earliest deadline first.
    order: LruOrder,
    max: usize,
    timeout: Millis,
    pub stats: ExchangeStats,
}

impl<T> ExchangeTable<T> {
    pub fn new(max: usize, timeout: Millis) -> Self {
        Self {
            entries: Slab::new(),
            order: LruOrder::default(),
            max: max.max(1),
            timeout: timeout.max(1),
            stats: ExchangeStats::default(),
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Applies new limits (after a reload); a smaller bound takes effect at the next insert, a
    /// new timeout at the next deadline set.
    pub fn set_limits(&mut self, max: usize, timeout: Millis) {
        self.max = max.max(1);
        self.timeout = timeout.max(1);
    }

    /// Opens an exchange for `client` that ends after `expected` replies (at least 1), due
    /// its first reply by `now` plus the timeout. When the table is full, the exchanges
    /// closest to their deadline are evicted first and returned so the caller can close them.
    pub fn insert(
        &mut self,
        client: SocketAddr,
        expected: u32,
        payload: T,
        now: Millis,
        evicted: &mut Vec<Ended<T>>,
    ) -> usize {
        while self.entries.len() >= self.max {
            let Some(first) = self.order.front() else {
                break;
            };
            match self.take(first) {
                Some(gone) => {
                    self.stats.evicted += 1;
                    evicted.push(gone);
                }
                None => break,
            }
        }
        let id = self.entries.insert(Entry {
            client,
            expected: expected.max(1),
            replies: 0,
            deadline: now.saturating_add(self.timeout),
            links: Links::UNLINKED,
            payload,
        });
        self.order.push_back(&mut self.entries, id);
        self.stats.created += 1;
        id
    }

    pub fn get(&self, id: usize) -> Option<&T> {
        self.entries.get(id).map(|e| &e.payload)
    }

    pub fn get_mut(&mut self, id: usize) -> Option<&mut T> {
        self.entries.get_mut(id).map(|e| &mut e.payload)
    }

    pub fn client(&self, id: usize) -> Option<SocketAddr> {
        self.entries.get(id).map(|e| e.client)
    }

    /// Replies exchange `id` got so far.
    pub fn replies(&self, id: usize) -> Option<u32> {
        self.entries.get(id).map(|e| e.replies)
    }

    /// Replies exchange `id` still waits for (at least 1 while it is open).
    pub fn awaiting(&self, id: usize) -> Option<u32> {
        self.entries
            .get(id)
            .map(|e| e.expected.saturating_sub(e.replies))
    }

    /// `n` replies of exchange `id` arrived at `now`. The exchange is handed back when that
    /// makes all it expected; otherwise (n > 0) it waits for the next one until `now` plus
    /// the timeout.
    pub fn replied(&mut self, id: usize, n: u32, now: Millis) -> Option<Ended<T>> {
        let timeout = self.timeout;
        let e = self.entries.get_mut(id)?;
        if n == 0 {
            return None;
        }
        e.replies = e.replies.saturating_add(n);
        if e.replies >= e.expected {
            let done = self.take(id)?;
            self.stats.answered += 1;
            return Some(done);
        }
        e.deadline = now.saturating_add(timeout);
        self.order.push_back(&mut self.entries, id);
        None
    }

    /// Removes exchange `id` at the caller's request.
    pub fn remove(&mut self, id: usize) -> Option<Ended<T>> {
        let gone = self.take(id)?;
        self.stats.removed += 1;
        Some(gone)
    }

    /// Removes every exchange whose deadline is `now` or earlier, earliest first.
    pub fn expire(&mut self, now: Millis, expired: &mut Vec<Ended<T>>) {
        while let Some(first) = self.order.front() {
            let Some(e) = self.entries.get(first) else {
                return;
            };
            if e.deadline > now {
                return;
            }
            if let Some(gone) = self.take(first) {
                self.stats.timed_out += 1;
                expired.push(gone);
            }
        }
    }

    /// The earliest deadline, if any exchange is open.
    pub fn next_deadline(&self) -> Option<Millis> {
        self.order
            .front()
            .and_then(|id| self.entries.get(id))
            .map(|e| e.deadline)
    }

    /// Removes every exchange (listener gone, worker stopping).
    pub fn drain_all(&mut self) -> Vec<Ended<T>> {
        let mut out = Vec::with_capacity(self.entries.len());
        while let Some(gone) = self.order.front().and_then(|id| self.take(id)) {
            self.stats.removed += 1;
            out.push(gone);
        }
        out
    }

    fn take(&mut self, id: usize) -> Option<Ended<T>> {
        if !self.entries.contains(id) {
            return None;
        }
        self.order.unlink(&mut self.entries, id);
        let e = self.entries.remove(id);
        Some(Ended {
            client: e.client,
            replies: e.replies,
            payload: e.payload,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    fn addr(n: u16) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, 1], 1000 + n))
    }

    #[test]
    fn one_client_has_many_exchanges_each_ended_by_its_replies() {
        let mut t = ExchangeTable::new(10, 100);
        let mut gone = Vec::new();
        let a = t.insert(addr(1), 1, "a", 0, &mut gone);
        let b = t.insert(addr(1), 2, "b", 0, &mut gone);
        assert_eq!(t.len(), 2);
        let done = t.replied(a, 1, 10).unwrap();
        assert_eq!((done.client, done.replies, done.payload), (addr(1), 1, "a"));
        // Two replies expected: the first re-arms the deadline, the second ends it.
        assert_eq!(t.awaiting(b), Some(2));
        assert!(t.replied(b, 1, 50).is_none());
        assert_eq!((t.replies(b), t.awaiting(b)), (Some(1), Some(1)));
        assert_eq!(t.next_deadline(), Some(150));
        assert_eq!(t.replied(b, 1, 60).unwrap().replies, 2);
        assert!(t.is_empty());
        assert_eq!(t.stats.answered, 2);
        // Late replies of an ended exchange find nothing.
        assert!(t.replied(a, 1, 70).is_none());
    }

    #[test]
    fn times_out_on_its_deadline_and_not_before() {
        let mut t = ExchangeTable::new(10, 100);
        let mut gone = Vec::new();
        t.insert(addr(1), 1, (), 0, &mut gone);
        let partial = t.insert(addr(2), 3, (), 20, &mut gone);
        t.replied(partial, 1, 30);
        t.expire(99, &mut gone);
        assert!(gone.is_empty());
        t.expire(100, &mut gone);
        assert_eq!(gone.len(), 1);
        assert_eq!((gone[0].client, gone[0].replies), (addr(1), 0));
        t.expire(129, &mut gone);
        assert_eq!(gone.len(), 1);
        t.expire(130, &mut gone);
        assert_eq!((gone[1].client, gone[1].replies), (addr(2), 1));
        assert_eq!(t.stats.timed_out, 2);
        assert_eq!(t.next_deadline(), None);
    }

    #[test]
    fn a_full_table_evicts_the_exchange_closest_to_its_deadline() {
        let mut t = ExchangeTable::new(2, 100);
        let mut gone = Vec::new();
        let first = t.insert(addr(1), 2, 1, 0, &mut gone);
        t.insert(addr(2), 1, 2, 10, &mut gone);
        // A reply re-arms the first: the second is now closest to its deadline.
        t.replied(first, 1, 20);
        t.insert(addr(3), 1, 3, 30, &mut gone);
        assert_eq!(gone.len(), 1);
        assert_eq!(gone[0].payload, 2);
        assert_eq!(t.stats.evicted, 1);
    }

    #[test]
    fn a_datagram_is_retried_only_without_any_reply_and_within_its_retries() {
        let mut a = Attempts::default();
        assert!(!a.retry_after(0, 1), "never sent: nothing to retry");
        a.record(4);
        assert!(a.retry_after(0, 1));
        assert!(!a.retry_after(1, 1), "a partial answer is not a failure");
        assert!(!a.retry_after(0, 0));
        a.record(7);
        assert_eq!(a.tried(), &[4, 7]);
        assert!(!a.retry_after(0, 1), "one retry used");
        assert!(a.retry_after(0, 2));
        // Past the limit, whatever the config says.
        a.record(1);
        a.record(2);
        a.record(3);
        assert_eq!(a.tried().len(), MAX_SENDS);
        assert!(!a.retry_after(0, u32::MAX));
    }

    #[derive(Debug, Clone)]
    enum Op {
        Query(u16, u32, u64),
        Reply(usize, u32, u64),
        Remove(usize),
        Expire(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0u16..50, 1u32..4, 0u64..30).prop_map(|(c, n, dt)| Op::Query(c, n, dt)),
            4 => (any::<usize>(), 0u32..3, 0u64..30).prop_map(|(k, n, dt)| Op::Reply(k, n, dt)),
            1 => any::<usize>().prop_map(Op::Remove),
            2 => (0u64..200).prop_map(Op::Expire),
        ]
    }

    proptest! {
        #[test]
        fn invariants_hold_under_any_traffic(
            max in 1usize..32,
            timeout in 1u64..150,
            ops in proptest::collection::vec(op(), 1..400),
        ) {
            let mut t = ExchangeTable::new(max, timeout);
            let mut now = 0u64;
            let mut out = Vec::new();
            let mut serial = 0u64;
            // The model: serial (the payload) -> (id, expected, replies, deadline).
            let mut live: HashMap<u64, (usize, u32, u32, u64)> = HashMap::new();
            let pick = |live: &HashMap<u64, (usize, u32, u32, u64)>, k: usize| {
                let mut serials: Vec<u64> = live.keys().copied().collect();
                serials.sort_unstable();
                (!serials.is_empty()).then(|| serials[k % serials.len()])
            };
            for op in ops {
                out.clear();
                match op {
                    Op::Query(c, n, dt) => {
                        now += dt;
                        serial += 1;
                        let earliest = live.values().map(|v| v.3).min();
                        let id = t.insert(addr(c), n, serial, now, &mut out);
                        for gone in &out {
                            // Only an exchange due no later than any other is evicted.
                            let model = live.remove(&gone.payload).unwrap();
                            prop_assert_eq!(Some(model.3), earliest);
                            prop_assert_eq!(gone.replies, model.2);
                        }
                        live.insert(serial, (id, n, 0, now + timeout));
                    }
                    Op::Reply(k, n, dt) => {
                        now += dt;
                        let Some(s) = pick(&live, k) else { continue };
                        let model = live.get_mut(&s).unwrap();
                        let done = t.replied(model.0, n, now);
                        if n > 0 {
                            model.2 += n;
                            model.3 = now + timeout;
                        }
                        if model.2 >= model.1 {
                            let done = done.unwrap();
                            prop_assert_eq!(done.replies, model.2);
                            prop_assert_eq!(done.payload, s);
                            live.remove(&s);
                        } else {
                            prop_assert!(done.is_none());
                        }
                    }
                    Op::Remove(k) => {
                        let Some(s) = pick(&live, k) else { continue };
                        let (id, ..) = live.remove(&s).unwrap();
                        prop_assert_eq!(t.remove(id).map(|e| e.payload), Some(s));
                    }
                    Op::Expire(dt) => {
                        now += dt;
                        t.expire(now, &mut out);
                        for gone in &out {
                            let model = live.remove(&gone.payload).unwrap();
                            prop_assert!(model.3 <= now);
                            prop_assert!(gone.replies < model.1);
                        }
                        // Nothing left is overdue.
                        prop_assert!(live.values().all(|v| v.3 > now));
                    }
                }
                prop_assert!(t.len() <= max);
                prop_assert_eq!(t.len(), live.len());
                let s = t.stats;
                prop_assert_eq!(
                    s.created,
                    s.answered + s.timed_out + s.evicted + s.removed + t.len() as u64
                );
                prop_assert_eq!(t.order.ids(&t.entries).len(), t.len());
                // The next deadline is the earliest of the model's.
                prop_assert_eq!(t.next_deadline(), live.values().map(|v| v.3).min());
            }
        }
    }
}
