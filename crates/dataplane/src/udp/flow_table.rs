//! The UDP flow table of one worker and one listener: pure, with the time passed in.
//!
//! A flow is keyed by the client's address. The table keeps flows in least-recently-used order
//! (the intrusive doubly linked list of `crate::lru`), so touching a flow, expiring idle ones and
//! evicting the oldest when full are all O(1) per flow. It stores a payload per flow (the
//! worker keeps the flow's upstream socket there) and hands it back when the flow ends, so the
//! caller closes what it owns. No syscalls, no clock: unit- and property-tested without sockets.

use std::collections::HashMap;
use std::net::SocketAddr;

use slab::Slab;

use crate::clock::Millis;
use crate::lru::{Linked, Links, LruOrder};

/// Why a flow left the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlowEnd {
    /// No datagram either way for the idle timeout.
    Expired,
    /// The table was full and this was the least recently used flow.
    Evicted,
    /// The caller removed it (backend refused, backend down, listener gone).
    Removed,
}

#[derive(Debug)]
struct Entry<T> {
    client: SocketAddr,
    last_seen: Millis,
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

/// Lifetime counts; `created == expired + evicted + removed + active` always holds.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct FlowStats {
    pub created: u64,
    pub expired: u64,
    pub evicted: u64,
    pub removed: u64,
}

#[derive(Debug)]
pub struct FlowTable<T> {
    by_client: HashMap<SocketAddr, usize>,
    entries: Slab<Entry<T>>,
    /// Every flow, least recently used first.
    order: LruOrder,
    max_flows: usize,
    idle: Millis,
    pub stats: FlowStats,
}

impl<T> FlowTable<T> {
    pub fn new(max_flows: usize, idle: Millis) -> Self {
        Self {
            by_client: HashMap::new(),
            entries: Slab::new(),
            order: LruOrder::default(),
            max_flows: max_flows.max(1),
            idle: idle.max(1),
            stats: FlowStats::default(),
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn max_flows(&self) -> usize {
        self.max_flows
    }

    /// Applies new limits (after a reload); a smaller bound takes effect at the next insert.
    pub fn set_limits(&mut self, max_flows: usize, idle: Millis) {
        self.max_flows = max_flows.max(1);
        self.idle = idle.max(1);
    }

    /// Whether `client` has a flow.
    pub fn contains(&self, client: &SocketAddr) -> bool {
        self.by_client.contains_key(client)
    }

    /// The flow of `client`, marked as used now.
    pub fn touch(&mut self, client: &SocketAddr, now: Millis) -> Option<usize> {
        let id = *self.by_client.get(client)?;
        self.mark_used(id, now);
        Some(id)
    }

    /// Marks flow `id` as used now (a datagram went either way).
    pub fn mark_used(&mut self, id: usize, now: Millis) {
        let Some(e) = self.entries.get_mut(id) else {
            return;
        };
        e.last_seen = e.last_seen.max(now);
        self.order.push_back(&mut self.entries, id);
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

    /// Adds a flow for `client` (which must not have one). When the table is full, the least
    /// recently used flows are evicted first and returned so the caller can close them.
    pub fn insert(
        &mut self,
        client: SocketAddr,
        payload: T,
        now: Millis,
        evicted: &mut Vec<(SocketAddr, T)>,
    ) -> usize {
        if let Some(old) = self.by_client.get(&client).copied() {
            if let Some((addr, payload)) = self.take(old) {
                self.stats.removed += 1;
                evicted.push((addr, payload));
            }
        }
        while self.entries.len() >= self.max_flows {
            let Some(oldest) = self.order.front() else {
                break;
            };
            match self.take(oldest) {
                Some(gone) => {
                    self.stats.evicted += 1;
                    evicted.push(gone);
                }
                None => break,
            }
        }
        let id = self.entries.insert(Entry {
            client,
            last_seen: now,
            links: Links::UNLINKED,
            payload,
        });
        self.order.push_back(&mut self.entries, id);
        self.by_client.insert(client, id);
        self.stats.created += 1;
        id
    }

    /// Removes flow `id` at the caller's request.
    pub fn remove(&mut self, id: usize) -> Option<(SocketAddr, T)> {
        let gone = self.take(id)?;
        self.stats.removed += 1;
        Some(gone)
    }

    /// Removes every flow idle for the idle timeout at `now`, oldest first.
    pub fn expire(&mut self, now: Millis, expired: &mut Vec<(SocketAddr, T)>) {
        while let Some(oldest) = self.order.front() {
            let Some(e) = self.entries.get(oldest) else {
                return;
            };
            if now.saturating_sub(e.last_seen) < self.idle {
                return;
            }
            if let Some(gone) = self.take(oldest) {
                self.stats.expired += 1;
                expired.push(gone);
            }
        }
    }

    /// When the oldest flow expires, if there is one.
    pub fn next_expiry(&self) -> Option<Millis> {
        self.order
            .front()
            .and_then(|id| self.entries.get(id))
            .map(|e| e.last_seen.saturating_add(self.idle))
    }

    /// The least recently used flow, if the idle timeout has run out for it at `now`.
    pub fn oldest_due(&self, now: Millis) -> Option<usize> {
        let oldest = self.order.front()?;
        let e = self.entries.get(oldest)?;
        (now.saturating_sub(e.last_seen) >= self.idle).then_some(oldest)
    }

    /// Marks flow `id` as last used at `seen` (a time learned after the fact, for a flow
    /// the caller does not see every datagram of) if that is later than what the table has;
    /// false, and nothing changes, otherwise.
    pub fn mark_used_if_later(&mut self, id: usize, seen: Millis) -> bool {
        let Some(e) = self.entries.get(id) else {
            return false;
        };
        if seen <= e.last_seen {
            return false;
        }
        self.mark_used(id, seen);
        true
    }

    /// Removes every flow (listener gone, worker stopping).
    pub fn drain_all(&mut self) -> Vec<(SocketAddr, T)> {
        let mut out = Vec::with_capacity(self.entries.len());
        while let Some(gone) = self.order.front().and_then(|id| self.take(id)) {
            self.stats.removed += 1;
            out.push(gone);
        }
        out
    }

    /// Ids of all flows, for scans off the per-datagram path.
    pub fn ids(&self) -> Vec<usize> {
        self.entries.iter().map(|(id, _)| id).collect()
    }

    fn take(&mut self, id: usize) -> Option<(SocketAddr, T)> {
        if !self.entries.contains(id) {
            return None;
        }
        self.order.unlink(&mut self.entries, id);
        let e = self.entries.remove(id);
        self.by_client.remove(&e.client);
        Some((e.client, e.payload))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn addr(n: u16) -> SocketAddr {
        SocketAddr::from(([10, 0, (n >> 8) as u8, n as u8], 1000 + n))
    }

    #[test]
    fn evicts_the_least_recently_used_when_full() {
        let mut t = FlowTable::new(2, 1000);
        let mut gone = Vec::new();
        t.insert(addr(1), 1, 0, &mut gone);
        t.insert(addr(2), 2, 1, &mut gone);
        t.touch(&addr(1), 2);
        t.insert(addr(3), 3, 3, &mut gone);
        assert_eq!(gone, vec![(addr(2), 2)]);
        assert!(t.touch(&addr(1), 4).is_some());
        assert!(t.touch(&addr(3), 4).is_some());
        assert_eq!(t.stats.evicted, 1);
    }

    #[test]
    fn expires_on_time_and_not_before() {
        let mut t = FlowTable::new(10, 100);
        let mut gone = Vec::new();
        t.insert(addr(1), (), 0, &mut gone);
        t.insert(addr(2), (), 50, &mut gone);
        assert_eq!(t.next_expiry(), Some(100));
        t.expire(99, &mut gone);
        assert!(gone.is_empty());
        t.expire(100, &mut gone);
        assert_eq!(gone.len(), 1);
        assert_eq!(gone[0].0, addr(1));
        t.touch(&addr(2), 120);
        t.expire(160, &mut gone);
        assert_eq!(gone.len(), 1, "touched flow lives on");
        t.expire(220, &mut gone);
        assert_eq!(gone.len(), 2);
        assert!(t.is_empty());
        assert_eq!(t.stats.expired, 2);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Datagram(u16, u64),
        Remove(u16),
        Expire(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => (0u16..300, 0u64..50).prop_map(|(c, dt)| Op::Datagram(c, dt)),
            1 => (0u16..300).prop_map(Op::Remove),
            1 => (0u64..400).prop_map(Op::Expire),
        ]
    }

    proptest! {
        #[test]
        fn invariants_hold_under_any_traffic(
            max in 1usize..64,
            idle in 1u64..300,
            ops in proptest::collection::vec(op(), 1..400),
        ) {
            let mut t = FlowTable::new(max, idle);
            let mut now = 0u64;
            let mut out = Vec::new();
            let mut live: HashMap<SocketAddr, u64> = HashMap::new();
            for op in ops {
                match op {
                    Op::Datagram(c, dt) => {
                        now += dt;
                        let client = addr(c);
                        if t.touch(&client, now).is_none() {
                            out.clear();
                            t.insert(client, c, now, &mut out);
                            for (gone, _) in &out { live.remove(gone); }
                        }
                        live.insert(client, now);
                    }
                    Op::Remove(c) => {
                        if let Some(id) = t.by_client.get(&addr(c)).copied() {
                            t.remove(id);
                            live.remove(&addr(c));
                        }
                    }
                    Op::Expire(dt) => {
                        now += dt;
                        out.clear();
                        t.expire(now, &mut out);
                        for (gone, _) in &out {
                            // Only flows idle for the whole timeout expire.
                            let seen = live.remove(gone).unwrap();
                            prop_assert!(now - seen >= idle);
                        }
                    }
                }
                prop_assert!(t.len() <= max);
                let s = t.stats;
                prop_assert_eq!(s.created, s.expired + s.evicted + s.removed + t.len() as u64);
                prop_assert_eq!(t.len(), live.len());
                prop_assert_eq!(t.by_client.len(), t.len());
                prop_assert_eq!(t.order.ids(&t.entries).len(), t.len());
            }
            // Nothing still in the table is overdue once expiry ran.
            out.clear();
            t.expire(now, &mut out);
            for (_, seen) in live.iter().filter(|(a, _)| t.by_client.contains_key(a)) {
                prop_assert!(now - seen < idle);
            }
        }
    }
}
