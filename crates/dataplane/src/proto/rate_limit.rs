//! Per-source admission for `max_connections_per_source` and
//! `new_connections_per_second_per_source` (and, on UDP listeners, for
//! `udp.new_flows_per_second_per_source`, a rate without a cap, and per flow for
//! `udp.datagrams_per_second_per_flow`, a lone [`TokenBucket`]): pure, with the time passed
//! in, bounded in memory.
//!
//! A [`SourceLimiter`] keeps, per client IP, the count of its live connections and a token bucket
//! of new connections (refilled at the configured rate, holding at most `burst` tokens, exact in
//! integer milli-tokens). [`SourceLimiter::admit`] checks the cap, then takes a token; a refused
//! attempt takes none. [`SourceLimiter::release`] gives the connection back.
//!
//! Memory is bounded by the capacity given at construction: the table never holds more entries,
//! and its map and slab are sized once, so admitting never allocates. When a new source arrives
//! and the table is full, the entry idle longest is evicted. Only sources with no live
//! connection are idle: their count is zero, and a bucket left alone refills, so the oldest idle
//! entry is the one that carries the least. A source with live connections is never evicted, so
//! its count stays exact and a release can never underflow. When every entry has a live
//! connection, a new source is refused ([`Reject::TableFull`]); size the table above the
//! listener's `max_connections` and that never happens before the listener is full anyway. A
//! shared limiter's shards each hold an equal part of its capacity and fill unevenly, so near
//! capacity a new source may be refused a little before the whole table is full.
//!
//! A [`SourceLimiter`] takes no lock. The workers share one [`SharedSourceLimiter`] per
//! listener: the kernel spreads a source's connections over the workers by 4-tuple hash, and a
//! cap counted per worker either lets a source reach `W` times it or, split as `ceil(value /
//! W)`, refuses it early when its connections land unevenly. Operators expect the exact count
//! that HAProxy's `src_conn_cur` and nginx's `limit_conn` keep. So the shared limiter is a fixed
//! array of `SourceLimiter` shards, each behind its own mutex, and a source always hashes to the
//! same shard. Hashing uses per-process random keys, so a client cannot aim at a victim's
//! shard. The lock is taken once when a connection is admitted and once when it closes, never
//! per byte, and only on listeners with per-source limits. It is held for one table
//! operation, and with many shards per worker two workers rarely want the same one. A fixed
//! array of atomic counters would need no lock, but sources that collide in it (or an attacker
//! aiming at a victim's slot) would use up each other's limits.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::{Mutex, MutexGuard};

use slab::Slab;

use crate::clock::Millis;
use crate::lru::{Linked, Links, LruOrder};

/// Tokens are kept in thousandths so that a refill of `per_second` tokens per second is exact
/// per millisecond.
const MILLI: u64 = 1000;

/// New connections per second for one source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub per_second: u32,
    /// How many new connections a source that was quiet may open at once.
    pub burst: u32,
}

impl Rate {
    /// `per_second` with a burst of one second's worth.
    pub fn per_second(per_second: u32) -> Self {
        Self {
            per_second,
            burst: per_second,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SourceLimits {
    /// Live connections per source; `None` for no cap.
    pub max_connections: Option<u32>,
    /// New connections per second per source; `None` for no rate limit.
    pub rate: Option<Rate>,
}

impl SourceLimits {
    pub fn is_unlimited(&self) -> bool {
        self.max_connections.is_none() && self.rate.is_none()
    }
}

reasons! {
    /// Why a new connection was refused.
    pub enum Reject {
        /// The source already has `max_connections` live connections.
        TooManyConnections => "max_connections",
        /// The source's token bucket is empty.
        RateLimited => "rate_limit",
        /// Every entry of the table has a live connection: no room to track a new source.
        TableFull => "table_full",
    }
}

/// Proof that a connection was admitted; give it back to [`SourceLimiter::release`] when the
/// connection closes. Neither `Clone` nor `Copy`, so a connection is released at most once.
#[must_use = "a tracked admission must be released when its connection closes"]
#[derive(Debug, PartialEq, Eq)]
pub struct Admission {
    /// `None` when no limit applied, so there is nothing to give back.
    slot: Option<usize>,
    ip: IpAddr,
}

impl Admission {
    pub fn is_tracked(&self) -> bool {
        self.slot.is_some()
    }

    /// The source as counted (IPv4-mapped addresses as IPv4).
    pub fn ip(&self) -> IpAddr {
        self.ip
    }
}

/// Lifetime counts, for metrics and tests.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct LimiterStats {
    pub admitted: u64,
    pub too_many_connections: u64,
    pub rate_limited: u64,
    pub table_full: u64,
    /// Idle entries dropped to make room for a new source.
    pub evicted: u64,
}

/// A token bucket on its own, refilled at a [`Rate`] and holding at most its burst, exact in
/// milli-tokens: what each source of a [`SourceLimiter`] has, and what a UDP flow has for
/// `udp.datagrams_per_second_per_flow`. Pure: the time is passed in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenBucket {
    /// Thousandths of a token.
    tokens: u64,
    refilled_at: Millis,
}

impl TokenBucket {
    /// A full bucket at `now`.
    pub fn full(rate: Option<Rate>, now: Millis) -> Self {
        Self {
            tokens: bucket_size(rate),
            refilled_at: now,
        }
    }

    /// Takes `n` tokens at `now` under `rate` if the bucket holds them; none otherwise.
    pub fn take(&mut self, rate: Rate, n: u32, now: Millis) -> bool {
        self.refill(Some(rate), now);
        let want = u64::from(n) * MILLI;
        if self.tokens < want {
            return false;
        }
        self.tokens -= want;
        true
    }

    /// Takes as many of `n` tokens as the bucket holds at `now` under `rate`; how many.
    pub fn take_up_to(&mut self, rate: Rate, n: u32, now: Millis) -> u32 {
        self.refill(Some(rate), now);
        let whole = u32::try_from(self.tokens / MILLI).unwrap_or(u32::MAX);
        let taken = whole.min(n);
        self.tokens -= u64::from(taken) * MILLI;
        taken
    }

    fn refill(&mut self, rate: Option<Rate>, now: Millis) {
        let Some(rate) = rate else {
            return;
        };
        // A clock read on another core may be a little behind; time never runs backwards here.
        let elapsed = now.saturating_sub(self.refilled_at);
        let added = elapsed.saturating_mul(u64::from(rate.per_second));
        self.tokens = self
            .tokens
            .saturating_add(added)
            .min(bucket_size(Some(rate)));
        self.refilled_at = self.refilled_at.max(now);
    }
}

#[derive(Debug)]
struct Entry {
    ip: IpAddr,
    active: u32,
    bucket: TokenBucket,
    /// Place in the idle list; unlinked while the entry has live connections.
    links: Links,
}

impl Linked for Entry {
    fn links(&self) -> &Links {
        &self.links
    }
    fn links_mut(&mut self) -> &mut Links {
        &mut self.links
    }
}

#[derive(Debug)]
pub struct SourceLimiter {
    limits: SourceLimits,
    capacity: usize,
    by_ip: HashMap<IpAddr, usize>,
    entries: Slab<Entry>,
    /// Idle entries (no live connection), least recently used first.
    idle: LruOrder,
    pub stats: LimiterStats,
}

impl SourceLimiter {
    /// A limiter that tracks at most `capacity` sources (at least 1).
    pub fn new(limits: SourceLimits, capacity: usize) -> Self {
        let capacity = capacity.max(1);
        Self {
            limits,
            capacity,
            // Twice the entries: a hash map refills the slots of removed keys by rehashing in
            // place only while at most half full, so at this size evictions never make it grow.
            by_ip: HashMap::with_capacity(capacity.saturating_mul(2)),
            entries: Slab::with_capacity(capacity),
            idle: LruOrder::default(),
            stats: LimiterStats::default(),
        }
    }

    pub fn limits(&self) -> SourceLimits {
        self.limits
    }

    /// New limits (after a reload). Live counts are kept; buckets are cut to the new burst.
    pub fn set_limits(&mut self, limits: SourceLimits) {
        self.limits = limits;
        let cap = bucket_size(limits.rate);
        for (_, e) in self.entries.iter_mut() {
            e.bucket.tokens = e.bucket.tokens.min(cap);
        }
    }

    /// Sources tracked now; never more than [`capacity`](Self::capacity).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Live connections of `ip` that this limiter tracks.
    pub fn active(&self, ip: IpAddr) -> u32 {
        self.by_ip
            .get(&ip.to_canonical())
            .and_then(|&id| self.entries.get(id))
            .map_or(0, |e| e.active)
    }

    /// Admits a new connection from `ip` at `now`, or says why not. An IPv4-mapped address
    /// counts as the IPv4 source it stands for.
    pub fn admit(&mut self, ip: IpAddr, now: Millis) -> Result<Admission, Reject> {
        let ip = ip.to_canonical();
        if self.limits.is_unlimited() {
            self.stats.admitted += 1;
            return Ok(Admission { slot: None, ip });
        }
        let id = match self.by_ip.get(&ip) {
            Some(&id) => id,
            None => self
                .insert(ip, now)
                .inspect_err(|_| self.stats.table_full += 1)?,
        };
        let limits = self.limits;
        let Some(e) = self.entries.get_mut(id) else {
            return Err(Reject::TableFull);
        };
        e.bucket.refill(limits.rate, now);
        let verdict = if limits.max_connections.is_some_and(|max| e.active >= max) {
            Err(Reject::TooManyConnections)
        } else if limits.rate.is_some() && e.bucket.tokens < MILLI {
            Err(Reject::RateLimited)
        } else {
            if limits.rate.is_some() {
                e.bucket.tokens -= MILLI;
            }
            e.active = e.active.saturating_add(1);
            Ok(())
        };
        let now_busy = e.active > 0;
        match verdict {
            Ok(()) => {
                self.stats.admitted += 1;
                if now_busy {
                    self.idle.unlink(&mut self.entries, id);
                }
                Ok(Admission { slot: Some(id), ip })
            }
            Err(reject) => {
                match reject {
                    Reject::TooManyConnections => self.stats.too_many_connections += 1,
                    Reject::RateLimited => self.stats.rate_limited += 1,
                    Reject::TableFull => self.stats.table_full += 1,
                }
                // A refused source was just seen: its bucket is worth keeping.
                if !now_busy {
                    self.idle.push_back(&mut self.entries, id);
                }
                Err(reject)
            }
        }
    }

    /// Gives back the connection `admission` stood for.
    pub fn release(&mut self, admission: Admission) {
        let Some(id) = admission.slot else {
            return;
        };
        let Some(e) = self.entries.get_mut(id) else {
            return;
        };
        // An admission from another limiter cannot match here; ignore it rather than miscount.
        if e.ip != admission.ip || e.active == 0 {
            return;
        }
        e.active -= 1;
        if e.active == 0 {
            self.idle.push_back(&mut self.entries, id);
        }
    }

    /// Adds `ip`, evicting the longest idle source when full. The new entry starts idle, with a
    /// full bucket.
    fn insert(&mut self, ip: IpAddr, now: Millis) -> Result<usize, Reject> {
        if self.entries.len() >= self.capacity {
            let Some((oldest, gone)) = self
                .idle
                .front()
                .and_then(|id| self.entries.get(id).map(|e| (id, e.ip)))
            else {
                return Err(Reject::TableFull);
            };
            self.idle.unlink(&mut self.entries, oldest);
            self.entries.remove(oldest);
            self.by_ip.remove(&gone);
            self.stats.evicted += 1;
        }
        let id = self.entries.insert(Entry {
            ip,
            active: 0,
            bucket: TokenBucket::full(self.limits.rate, now),
            links: Links::UNLINKED,
        });
        self.by_ip.insert(ip, id);
        self.idle.push_back(&mut self.entries, id);
        Ok(id)
    }
}

/// Shards of a [`SharedSourceLimiter`]: many per worker, so two workers rarely contend.
const SHARDS: usize = 64;

/// One listener's per-source limiter, shared by every worker (see the module doc): exact caps
/// and rates whatever worker a connection lands on.
#[derive(Debug)]
pub struct SharedSourceLimiter {
    shards: Box<[Mutex<SourceLimiter>]>,
    hasher: RandomState,
}

impl SharedSourceLimiter {
    /// Tracks at most about `capacity` sources in all: each shard holds its share, rounded up.
    pub fn new(limits: SourceLimits, capacity: usize) -> Self {
        let per_shard = capacity.div_ceil(SHARDS).max(1);
        Self {
            shards: (0..SHARDS)
                .map(|_| Mutex::new(SourceLimiter::new(limits, per_shard)))
                .collect(),
            hasher: RandomState::new(),
        }
    }

    /// [`SourceLimiter::admit`] under the listener's current `limits` (a reload may have changed
    /// them since the shard last saw them).
    pub fn admit(
        &self,
        limits: SourceLimits,
        ip: IpAddr,
        now: Millis,
    ) -> Result<Admission, Reject> {
        let mut shard = self.shard(ip);
        if shard.limits() != limits {
            shard.set_limits(limits);
        }
        shard.admit(ip, now)
    }

    /// [`SourceLimiter::release`]: the admission's source names its shard.
    pub fn release(&self, admission: Admission) {
        if admission.is_tracked() {
            self.shard(admission.ip()).release(admission);
        }
    }

    /// Live connections of `ip`.
    pub fn active(&self, ip: IpAddr) -> u32 {
        self.shard(ip).active(ip)
    }

    fn shard(&self, ip: IpAddr) -> MutexGuard<'_, SourceLimiter> {
        let ip = ip.to_canonical();
        let index = usize::try_from(self.hasher.hash_one(ip) % SHARDS as u64).unwrap_or(0);
        // A panic while a shard was locked leaves at worst a count off by one; keep serving.
        self.shards[index]
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn bucket_size(rate: Option<Rate>) -> u64 {
    rate.map_or(0, |r| u64::from(r.burst) * MILLI)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::net::Ipv4Addr;

    fn src(n: u32) -> IpAddr {
        IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + n))
    }

    #[test]
    fn the_shared_limiter_counts_one_source_exactly_across_threads() {
        let cap = SourceLimits {
            max_connections: Some(10),
            rate: None,
        };
        let shared = SharedSourceLimiter::new(cap, 1024);
        // Four "workers" race to admit 100 connections each from one source.
        let admitted: Vec<Admission> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..4)
                .map(|_| {
                    scope.spawn(|| {
                        (0..100)
                            .filter_map(|_| shared.admit(cap, src(7), 0).ok())
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().unwrap())
                .collect()
        });
        assert_eq!(admitted.len(), 10);
        assert_eq!(shared.active(src(7)), 10);
        // Other sources are counted on their own, in whatever shard they hash to.
        for n in 100..200 {
            let a = shared.admit(cap, src(n), 0).unwrap();
            assert_eq!(shared.active(src(n)), 1);
            shared.release(a);
            assert_eq!(shared.active(src(n)), 0);
        }
        for a in admitted {
            shared.release(a);
        }
        assert_eq!(shared.active(src(7)), 0);
        assert!(shared.admit(cap, src(7), 0).is_ok());
    }

    #[test]
    fn the_shared_limiter_applies_the_limits_of_each_admit() {
        let one = SourceLimits {
            max_connections: Some(1),
            rate: None,
        };
        let two = SourceLimits {
            max_connections: Some(2),
            ..one
        };
        let shared = SharedSourceLimiter::new(one, 64);
        let first = shared.admit(one, src(1), 0).unwrap();
        assert_eq!(
            shared.admit(one, src(1), 0),
            Err(Reject::TooManyConnections)
        );
        // A reload raised the cap: the live connection still counts.
        let second = shared.admit(two, src(1), 0).unwrap();
        assert_eq!(
            shared.admit(two, src(1), 0),
            Err(Reject::TooManyConnections)
        );
        shared.release(first);
        shared.release(second);
        assert_eq!(shared.active(src(1)), 0);
        // An untracked admission (no limit applied) gives nothing back.
        let free = shared.admit(SourceLimits::default(), src(1), 0).unwrap();
        assert!(!free.is_tracked());
        shared.release(free);
    }

    fn limiter(max: Option<u32>, rate: Option<Rate>, capacity: usize) -> SourceLimiter {
        SourceLimiter::new(
            SourceLimits {
                max_connections: max,
                rate,
            },
            capacity,
        )
    }

    /// A connection that opens (and must be admitted) and closes.
    fn admit_and_close(l: &mut SourceLimiter, ip: IpAddr, now: Millis) {
        let a = l.admit(ip, now).unwrap();
        l.release(a);
    }

    /// Checks the idle list against the entries: exactly the entries with no live connection,
    /// linked both ways.
    fn check_links(l: &SourceLimiter) {
        // `ids` checks the prev links and the tail as it walks.
        let linked = l.idle.ids(&l.entries);
        for &id in &linked {
            assert_eq!(l.entries.get(id).unwrap().active, 0);
        }
        let idle = l.entries.iter().filter(|(_, e)| e.active == 0).count();
        assert_eq!(linked.len(), idle);
        assert_eq!(l.by_ip.len(), l.entries.len());
    }

    #[test]
    fn caps_live_connections_per_source() {
        let mut l = limiter(Some(2), None, 16);
        let a1 = l.admit(src(1), 0).unwrap();
        let a2 = l.admit(src(1), 0).unwrap();
        assert_eq!(l.admit(src(1), 0), Err(Reject::TooManyConnections));
        let b = l.admit(src(2), 0).unwrap();
        assert_eq!(l.active(src(1)), 2);
        l.release(a1);
        let a3 = l.admit(src(1), 1).unwrap();
        assert_eq!(l.stats.too_many_connections, 1);
        for a in [a2, a3, b] {
            l.release(a);
        }
        assert_eq!(l.active(src(1)), 0);
        check_links(&l);
    }

    #[test]
    fn token_bucket_refills_at_the_rate() {
        let mut l = limiter(
            None,
            Some(Rate {
                per_second: 10,
                burst: 3,
            }),
            16,
        );
        for _ in 0..3 {
            admit_and_close(&mut l, src(1), 1000);
        }
        assert_eq!(l.admit(src(1), 1000), Err(Reject::RateLimited));
        // One token every 100 ms.
        assert_eq!(l.admit(src(1), 1099), Err(Reject::RateLimited));
        admit_and_close(&mut l, src(1), 1100);
        assert_eq!(l.admit(src(1), 1150), Err(Reject::RateLimited));
        // A long quiet spell refills only up to the burst.
        for _ in 0..3 {
            admit_and_close(&mut l, src(1), 60_000);
        }
        assert_eq!(l.admit(src(1), 60_000), Err(Reject::RateLimited));
        // A clock that steps back refills nothing; other sources have their own bucket.
        assert_eq!(l.admit(src(1), 500), Err(Reject::RateLimited));
        assert_eq!(l.admit(src(1), 60_099), Err(Reject::RateLimited));
        admit_and_close(&mut l, src(1), 60_100);
        admit_and_close(&mut l, src(2), 500);
        assert_eq!(l.stats.rate_limited, 6);
    }

    #[test]
    fn a_bucket_alone_gives_n_tokens_or_none() {
        let rate = Rate::per_second(10);
        let mut b = TokenBucket::full(Some(rate), 1000);
        assert!(b.take(rate, 7, 1000));
        assert!(
            !b.take(rate, 4, 1000),
            "3 left: 4 are refused, and none taken"
        );
        assert!(b.take(rate, 3, 1000));
        assert!(!b.take(rate, 1, 1099));
        assert!(b.take(rate, 1, 1100));
        // Refilled to the burst at most, and a clock stepping back refills nothing.
        assert!(!b.take(rate, 11, 60_000));
        assert!(b.take(rate, 10, 60_000));
        assert!(!b.take(rate, 1, 500));
        // Part of a larger want.
        assert_eq!(b.take_up_to(rate, 4, 60_300), 3);
        assert_eq!(b.take_up_to(rate, 4, 60_300), 0);
        assert_eq!(b.take_up_to(rate, 2, 60_500), 2);
    }

    #[test]
    fn a_refused_attempt_takes_no_token() {
        let mut l = limiter(Some(1), Some(Rate::per_second(2)), 16);
        let held = l.admit(src(1), 0).unwrap();
        for _ in 0..10 {
            assert_eq!(l.admit(src(1), 0), Err(Reject::TooManyConnections));
        }
        l.release(held);
        // One token left of the burst of two.
        admit_and_close(&mut l, src(1), 0);
        assert_eq!(l.admit(src(1), 0), Err(Reject::RateLimited));
    }

    #[test]
    fn unlimited_tracks_nothing() {
        let mut l = SourceLimiter::new(SourceLimits::default(), 4);
        for n in 0..100 {
            let a = l.admit(src(n), 0).unwrap();
            assert!(!a.is_tracked());
            l.release(a);
        }
        assert!(l.is_empty());
        assert_eq!(l.stats.admitted, 100);
    }

    #[test]
    fn ipv4_mapped_sources_are_the_ipv4_source() {
        let mut l = limiter(Some(1), None, 4);
        let a = l.admit(src(1), 0).unwrap();
        let mapped = match src(1) {
            IpAddr::V4(v4) => IpAddr::V6(v4.to_ipv6_mapped()),
            v6 => v6,
        };
        assert_eq!(l.admit(mapped, 0), Err(Reject::TooManyConnections));
        l.release(a);
        assert!(l.admit(mapped, 0).is_ok());
    }

    #[test]
    fn a_flood_of_sources_stays_within_capacity() {
        let capacity = 1024;
        let mut l = limiter(Some(4), Some(Rate::per_second(5)), capacity);
        let map_capacity = l.by_ip.capacity();
        // A few sources keep a connection open throughout.
        let held: Vec<_> = (0..10).map(|n| l.admit(src(n), 0).unwrap()).collect();
        for n in 0..20_000u32 {
            let a = l.admit(src(1_000_000 + n), u64::from(n)).unwrap();
            l.release(a);
            assert!(l.len() <= capacity);
        }
        assert_eq!(l.len(), capacity);
        assert_eq!(l.stats.evicted, 20_000 + 10 - capacity as u64);
        // The sources with live connections were never evicted, and the map never grew (its
        // reported capacity dips while removed keys leave tombstones; growing would double it).
        for n in 0..10 {
            assert_eq!(l.active(src(n)), 1);
        }
        assert!(l.by_ip.capacity() <= map_capacity);
        check_links(&l);
        for a in held {
            l.release(a);
        }
    }

    #[test]
    fn evicts_the_source_idle_longest() {
        let mut l = limiter(None, Some(Rate::per_second(1)), 3);
        for n in 1..=3 {
            admit_and_close(&mut l, src(n), u64::from(n));
        }
        // Source 1 is refused but seen again: it is no longer the oldest.
        assert_eq!(l.admit(src(1), 10), Err(Reject::RateLimited));
        admit_and_close(&mut l, src(4), 11);
        assert!(!l.by_ip.contains_key(&src(2)));
        assert!(l.by_ip.contains_key(&src(1)));
        // Source 1's empty bucket was remembered.
        assert_eq!(l.admit(src(1), 12), Err(Reject::RateLimited));
        check_links(&l);
    }

    #[test]
    fn full_of_live_sources_refuses_new_ones() {
        let mut l = limiter(Some(10), None, 2);
        let a = l.admit(src(1), 0).unwrap();
        let b = l.admit(src(2), 0).unwrap();
        assert_eq!(l.admit(src(3), 0), Err(Reject::TableFull));
        assert_eq!(l.stats.table_full, 1);
        l.release(a);
        assert!(l.admit(src(3), 1).is_ok());
        assert_eq!(l.active(src(1)), 0);
        l.release(b);
        check_links(&l);
    }

    #[test]
    fn stale_or_foreign_admissions_do_not_miscount() {
        let mut l = limiter(Some(5), None, 4);
        let mut other = limiter(Some(5), None, 4);
        let mine = l.admit(src(1), 0).unwrap();
        let foreign = other.admit(src(9), 0).unwrap();
        l.release(foreign);
        assert_eq!(l.active(src(1)), 1);
        l.release(mine);
        assert_eq!(l.active(src(1)), 0);
        check_links(&l);
    }

    #[test]
    fn new_limits_keep_counts_and_cut_buckets() {
        let mut l = limiter(Some(5), Some(Rate::per_second(100)), 8);
        let a = l.admit(src(1), 0).unwrap();
        l.set_limits(SourceLimits {
            max_connections: Some(1),
            rate: Some(Rate::per_second(1)),
        });
        assert_eq!(l.admit(src(1), 0), Err(Reject::TooManyConnections));
        l.release(a);
        admit_and_close(&mut l, src(1), 0);
        assert_eq!(l.admit(src(1), 0), Err(Reject::RateLimited));
        assert_eq!(l.limits().max_connections, Some(1));
        assert_eq!(Reject::RateLimited.as_str(), "rate_limit");
        crate::proto::assert_distinct_names(Reject::ALL, Reject::as_str);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Admit(u32, u64),
        Release(usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => (0u32..20_000, 0u64..200).prop_map(|(s, dt)| Op::Admit(s, dt)),
            1 => (0u32..40).prop_map(|s| Op::Admit(s, 7)),
            3 => any::<usize>().prop_map(Op::Release),
        ]
    }

    proptest! {
        #[test]
        fn bounded_and_counts_stay_exact(
            capacity in 1usize..64,
            max in proptest::option::of(0u32..4),
            rate in proptest::option::of((0u32..20, 0u32..5)),
            ops in proptest::collection::vec(op(), 1..400),
        ) {
            let rate = rate.map(|(per_second, burst)| Rate { per_second, burst });
            let mut l = limiter(max, rate, capacity);
            let mut now = 0u64;
            let mut held: Vec<Admission> = Vec::new();
            let mut live: HashMap<IpAddr, u32> = HashMap::new();
            for op in ops {
                match op {
                    Op::Admit(s, dt) => {
                        now += dt;
                        if let Ok(a) = l.admit(src(s), now) {
                            if a.is_tracked() {
                                *live.entry(src(s)).or_default() += 1;
                            }
                            held.push(a);
                        }
                    }
                    Op::Release(k) => {
                        if !held.is_empty() {
                            let a = held.swap_remove(k % held.len());
                            if a.is_tracked() {
                                *live.get_mut(&a.ip).unwrap() -= 1;
                            }
                            l.release(a);
                        }
                    }
                }
                prop_assert!(l.len() <= capacity);
                for (ip, n) in &live {
                    prop_assert_eq!(l.active(*ip), *n);
                    if let Some(max) = max {
                        prop_assert!(*n <= max);
                    }
                }
                let tracked: u64 = l.entries.iter().map(|(_, e)| u64::from(e.active)).sum();
                prop_assert_eq!(tracked, live.values().map(|&n| u64::from(n)).sum::<u64>());
            }
            check_links(&l);
            for a in held.drain(..) {
                l.release(a);
            }
            prop_assert!(l.entries.iter().all(|(_, e)| e.active == 0));
            check_links(&l);
        }
    }
}
