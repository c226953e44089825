//! Weighted Maglev consistent hashing (Eisenbud et al., "Maglev: A Fast and Reliable Software
//! Network Load Balancer", NSDI 2016).
//!
//! Each tier gets a lookup table of prime size M whose entries name backends. Backend i walks
//! its own permutation of the slots, `(offset_i + j · skip_i) mod M`, and the backends take turns
//! claiming the next free slot of their permutation until the table is full. A flow's key hashes
//! to a slot; the slot's backend serves it.
//!
//! - **Deterministic across processes.** Offsets and skips come from a fixed, seedless hash
//!   (FNV-1a, then the splitmix64 finaliser for avalanche) of the backend's canonical address
//!   bytes, and the turn order follows the backends sorted by address: the same backend set
//!   yields the same table in every Ballast, on every platform, whatever order the
//!   configuration lists it in — so two instances behind ECMP or VRRP agree on every flow.
//! - **Weighted.** Backend i takes `weight_i` turns per round and so ends with a share of the
//!   entries proportional to its weight. Its turns are spread through the round at times fixed
//!   by its own address and weight (see [`turn_order`]), which keeps a table that fills
//!   mid-round fair (it does when the weights add up to more than M) and keeps the order of the
//!   other backends' turns when one is removed.
//! - **Minimal disruption.** Removing a backend from the configuration rebuilds the table, which
//!   moves about that backend's share of keys and little else (Maglev's property), except when
//!   two backends drew the same skip (about 1 set of 40 backends in 80): they walk one cycle of
//!   slots, and a removal then moves up to ~2x the share (`a_skip_collision_disturbs_more`).
//!   A backend that is merely out at pick time (down, draining, full, tried) does not touch the
//!   table at all: a key whose entry names it is rehashed to other entries a bounded number of
//!   times, then walks the table from there, then scans the backends — each step a function of
//!   the key and the set of eligible backends only — so only that backend's keys move, they move
//!   to the same place in every process, and they come back when it does.
//!
//! - **Slow start.** A backend ramping up after coming back is not taken out of the table
//!   (that would move every key twice more) nor rebuilt into it in steps: its keys come back
//!   one by one, each when a fixed hash of the key falls below the backend's growing share
//!   (see [`keeps_key`]); until then the key goes to the substitute an outage would give it.
//!   So during the window the backend serves its effective share of keys, a client moves
//!   back at most once, and when the window ends every key is home. Two instances agree on
//!   a key once both are past the ramp; during it they may differ on keys near the share,
//!   as each saw the backend come back at its own moment.
//!
//! Tables are built by [`Maglev::new`] off the hot path: O(M log M) probes.

use std::fmt;
use std::net::{IpAddr, SocketAddr};

use super::rng::mix64;
use super::tier::Tier;
use super::{weight, HashKey};
use crate::route::{BackendView, FlowKey, Millis, Pick, PoolView, Protocol};

/// Maglev's recommended table size for up to a few hundred backends: the smallest prime above
/// 2^16.
pub const DEFAULT_TABLE_SIZE: usize = 65_537;

/// Extra table entries a key tries when its own entry's backend is out, before scanning. Each
/// rehash lands on an entry owned by backend i with probability ∝ weight_i, so the displaced
/// keys spread over the others by weight.
const REHASHES: u64 = 8;

/// Consecutive entries walked after the rehashes miss, before the per-backend scan. Bounds the
/// cost of a key in a tier that is almost entirely out (or entirely: the scan proves that in
/// O(backends) where walking the whole table would take O(M)).
const MAX_PROBES: usize = 4096;

const EMPTY: u32 = u32::MAX;

// Fixed seeds keep the hashes independent of each other and identical in every process.
const OFFSET_SEED: u64 = 0x6d61_676c_6576_6f66; // "maglevof"
const SKIP_SEED: u64 = 0x6d61_676c_6576_736b; // "maglevsk"
const KEY_SEED: u64 = 0x6d61_676c_6576_6b79; // "maglevky"
const PHASE_SEED: u64 = 0x6d61_676c_6576_7068; // "maglevph"
const REHASH_GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;
const RAMP_SEED: u64 = 0x6d61_676c_6576_7273; // "maglevrs"

/// FNV-1a over a few bytes, finished with a full-avalanche mix: FNV alone leaves the low bits
/// depending only on the low bits of the input, and addresses that differ in their last octet
/// would get correlated permutations.
struct Fnv(u64);

impl Fnv {
    const BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;

    fn new(seed: u64) -> Self {
        let mut h = Self(Self::BASIS);
        h.bytes(&seed.to_le_bytes());
        h
    }

    fn bytes(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(Self::PRIME);
        }
    }

    /// IPv4-mapped IPv6 addresses hash as the IPv4 address they carry, so a dual-stack listener
    /// sends a client to the same backend whichever family it arrived on.
    fn ip(&mut self, ip: IpAddr) {
        match ip.to_canonical() {
            IpAddr::V4(v4) => {
                self.bytes(&[4]);
                self.bytes(&v4.octets());
            }
            IpAddr::V6(v6) => {
                self.bytes(&[6]);
                self.bytes(&v6.octets());
            }
        }
    }

    /// Address and port only: flow info and scope id are not part of a backend's identity.
    fn addr(&mut self, addr: &SocketAddr) {
        self.ip(addr.ip());
        self.bytes(&addr.port().to_be_bytes());
    }

    fn finish(&self) -> u64 {
        mix64(self.0)
    }
}

fn addr_hash(seed: u64, addr: &SocketAddr, occurrence: u32) -> u64 {
    let mut h = Fnv::new(seed);
    h.addr(addr);
    // Separates a backend listed twice under one address (each copy still gets its own turns).
    if occurrence > 0 {
        h.bytes(&occurrence.to_le_bytes());
    }
    h.finish()
}

/// The canonical ordering key of a backend address: family, address bytes, port.
fn addr_order(addr: &SocketAddr) -> (u8, [u8; 16], u16) {
    match addr.ip().to_canonical() {
        IpAddr::V4(v4) => {
            let mut bytes = [0; 16];
            bytes[..4].copy_from_slice(&v4.octets());
            (4, bytes, addr.port())
        }
        IpAddr::V6(v6) => (6, v6.octets(), addr.port()),
    }
}

/// Trial division; runs once per table build. (`checked_rem` rather than `is_multiple_of`,
/// which needs Rust 1.87, above the workspace's `rust-version`.)
fn is_prime(n: u64) -> bool {
    if n < 4 {
        return n >= 2;
    }
    let mut d = 2;
    while d * d <= n {
        if n.checked_rem(d) == Some(0) {
            return false;
        }
        d += if d == 2 { 1 } else { 2 };
    }
    true
}

/// The smallest prime ≥ `n`: Maglev needs a prime M so that every skip in 1..M generates a full
/// permutation of the slots.
pub(crate) fn next_prime(n: usize) -> usize {
    let mut candidate = n.max(2) as u64;
    while !is_prime(candidate) {
        candidate += 1;
    }
    usize::try_from(candidate).unwrap_or(usize::MAX)
}

/// One round of turns for members with these weights: member p's k-th turn falls at virtual time
/// `(k + phase_p / 2^32) / weight_p` within the round, and turns are taken in time order (ties by
/// position, i.e. address order).
///
/// Every member's turns are spread evenly through the round, so a table that fills mid-round is
/// still shared by weight. And a member's turn times depend on nothing but its own address and
/// weight: removing a backend deletes its turns and leaves the relative order of everyone
/// else's unchanged, as plain Maglev's fixed round-robin order does. (An order computed from the
/// whole weight set, like the round-robin picker's interleaving, reshuffles when one backend
/// goes, and the table with it: that measured ~1.7× the minimal disruption at 100 backends.)
fn turn_order(weights: &[u32], phases: &[u32]) -> Vec<u32> {
    let mut turns: Vec<(u64, u32, u32)> = Vec::new();
    for (position, (&weight, &phase)) in weights.iter().zip(phases).enumerate() {
        let Ok(position) = u32::try_from(position) else {
            break;
        };
        for k in 0..u64::from(weight.max(1)) {
            turns.push(((k << 32) | u64::from(phase), weight.max(1), position));
        }
    }
    // Compares n_a / w_a with n_b / w_b exactly.
    turns.sort_unstable_by(|&(na, wa, pa), &(nb, wb, pb)| {
        (u128::from(na) * u128::from(wb))
            .cmp(&(u128::from(nb) * u128::from(wa)))
            .then(pa.cmp(&pb))
    });
    turns.into_iter().map(|(_, _, position)| position).collect()
}

/// The lookup table of one tier.
struct Table {
    /// Backend indices into `PoolView::backends`.
    entries: Box<[u32]>,
    /// The tier's backends in address order, for the last-resort scan.
    members: Box<[usize]>,
}

impl Table {
    fn new(backends: &[BackendView], backup: bool, size: usize) -> Self {
        let tier = Tier::new(backends, backup);
        let mut members: Vec<(SocketAddr, u32, u32)> = tier
            .members()
            .iter()
            .filter_map(|m| {
                let index = u32::try_from(m.index).ok().filter(|&i| i != EMPTY)?;
                Some((backends.get(m.index)?.addr, m.weight, index))
            })
            .collect();
        // Address order, then weight: the only things a table may depend on. Two copies of one
        // address with one weight are interchangeable, so their index order cannot matter.
        members.sort_by_key(|&(addr, weight, _)| (addr_order(&addr), weight));
        if members.is_empty() {
            return Self {
                entries: Box::new([]),
                members: Box::new([]),
            };
        }

        let m = next_prime(size.max(members.len())) as u64;
        let mut cursor = Vec::with_capacity(members.len());
        let mut skip = Vec::with_capacity(members.len());
        let mut phase = Vec::with_capacity(members.len());
        let mut occurrence = 0;
        for (i, (addr, _, _)) in members.iter().enumerate() {
            occurrence = match i.checked_sub(1).and_then(|p| members.get(p)) {
                Some((prev, _, _)) if addr_order(prev) == addr_order(addr) => occurrence + 1,
                _ => 0,
            };
            cursor.push(addr_hash(OFFSET_SEED, addr, occurrence) % m);
            skip.push(addr_hash(SKIP_SEED, addr, occurrence) % (m - 1) + 1);
            phase.push(addr_hash(PHASE_SEED, addr, occurrence) as u32);
        }

        let weights: Vec<u32> = members.iter().map(|&(_, w, _)| w).collect();
        let turns = turn_order(&weights, &phase);
        let mut entries = vec![EMPTY; m as usize];
        let mut filled = 0u64;
        'fill: loop {
            for &p in &turns {
                let p = p as usize;
                // A prime M and 0 < skip < M visit every slot once per M steps, and the table is
                // not full yet, so this finds a free slot.
                loop {
                    let slot = cursor[p];
                    cursor[p] = (slot + skip[p]) % m;
                    if let Some(entry @ &mut EMPTY) = entries.get_mut(slot as usize) {
                        *entry = members[p].2;
                        break;
                    }
                }
                filled += 1;
                if filled == m {
                    break 'fill;
                }
            }
        }
        Self {
            entries: entries.into_boxed_slice(),
            members: members.iter().map(|&(_, _, i)| i as usize).collect(),
        }
    }

    fn entry(&self, hash: u64) -> Option<usize> {
        let slot = hash % (self.entries.len().max(1) as u64);
        self.entries.get(slot as usize).map(|&i| i as usize)
    }

    fn lookup(&self, hash: u64, pool: &PoolView, now: Millis, tried: &[usize]) -> Option<usize> {
        if self.entries.is_empty() {
            return None;
        }
        let takes =
            |i: usize, hash: u64| pool.eligible(i, now, tried) && keeps_key(pool, i, hash, now);
        if let Some(i) = self.entry(hash).filter(|&i| takes(i, hash)) {
            return Some(i);
        }
        // Every step below depends only on the key, on which backends are eligible and on
        // the ramp of those coming back, so a displaced key lands on the same substitute in
        // every process.
        for round in 1..=REHASHES {
            let rehash = mix64(hash ^ round.wrapping_mul(REHASH_GAMMA));
            if let Some(i) = self.entry(rehash).filter(|&i| takes(i, rehash)) {
                return Some(i);
            }
        }
        // Most of the tier is out or ramping up. Walking the table from the key's slot still
        // lands on each eligible backend in proportion to its entries, hence its weight, and
        // on a ramping one in proportion to its effective weight.
        let m = self.entries.len();
        let start = (mix64(hash) % m as u64) as usize;
        for k in 0..m.min(MAX_PROBES) {
            let i = self.entries[(start + k) % m] as usize;
            if takes(i, hash.wrapping_add(k as u64)) {
                return Some(i);
            }
        }
        // Nearly all of it is out, or all of it ramps up from a tiny share: the one scan that
        // is sure to find a survivor, or prove none, ignoring ramps.
        let n = self.members.len();
        let start = (hash % n as u64) as usize;
        (0..n)
            .map(|k| self.members[(start + k) % n])
            .find(|&i| pool.eligible(i, now, tried))
    }
}

/// Whether a key whose entry (or rehash) `hash` names backend `index` stays there while that
/// backend ramps up under slow start: when a second hash of the key falls below the backend's
/// effective share. The draw is fixed per key and step, and the share only grows during a
/// ramp, so a key only ever moves back toward an earlier step of its own lookup: with one
/// backend ramping, a key that has come back to it stays, and each key moves at most once.
/// Keys turned away go on to the next step, which makes the backend's share of keys follow
/// its effective weight, as rejection sampling does.
fn keeps_key(pool: &PoolView, index: usize, hash: u64, now: Millis) -> bool {
    let (effective, full) = weight::of_backend(pool, index, now);
    weight::keeps(effective, full, |full| mix64(hash ^ RAMP_SEED) % full)
}

/// Weighted Maglev with one table for the primaries and one for the backups.
pub struct Maglev {
    hash_key: HashKey,
    primary: Table,
    backup: Table,
}

impl Maglev {
    /// Builds both tables. `table_size` is rounded up to a prime (and to at least one entry per
    /// backend); 0 means [`DEFAULT_TABLE_SIZE`]. For a share within 1% of each backend's weight
    /// share, M should be at least 100 × the sum of the weights.
    pub fn new(hash_key: HashKey, table_size: usize, backends: &[BackendView]) -> Self {
        let size = if table_size == 0 {
            DEFAULT_TABLE_SIZE
        } else {
            table_size
        };
        Self {
            hash_key,
            primary: Table::new(backends, false, size),
            backup: Table::new(backends, true, size),
        }
    }

    /// Entries in the primaries' table (0 when there are no primaries).
    pub fn table_size(&self) -> usize {
        self.primary.entries.len()
    }

    fn key_hash(&self, key: &FlowKey) -> u64 {
        let mut h = Fnv::new(KEY_SEED);
        match self.hash_key {
            HashKey::SourceIp => h.ip(key.client.ip()),
            HashKey::FiveTuple => {
                h.bytes(&[match key.protocol {
                    Protocol::Tcp => 6,
                    Protocol::Udp => 17,
                }]);
                h.addr(&key.client);
                h.addr(&key.local);
            }
        }
        h.finish()
    }
}

impl fmt::Debug for Maglev {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Maglev")
            .field("hash_key", &self.hash_key)
            .field("primary_entries", &self.primary.entries.len())
            .field("primary_backends", &self.primary.members.len())
            .field("backup_entries", &self.backup.entries.len())
            .field("backup_backends", &self.backup.members.len())
            .finish()
    }
}

impl Pick for Maglev {
    fn pick(&self, key: &FlowKey, pool: &PoolView, now: Millis, tried: &[usize]) -> Option<usize> {
        let hash = self.key_hash(key);
        self.primary
            .lookup(hash, pool, now, tried)
            .or_else(|| self.backup.lookup(hash, pool, now, tried))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::collections::HashMap;
    use std::net::{Ipv4Addr, Ipv6Addr};

    use proptest::prelude::*;

    use super::*;
    use crate::balance::testkit::{backend, key, pool_of};
    use crate::balance::Algorithm;

    fn addr_table(t: &Table, backends: &[BackendView]) -> Vec<SocketAddr> {
        t.entries
            .iter()
            .map(|&i| backends[i as usize].addr)
            .collect()
    }

    fn backends_at(addrs: &[(SocketAddr, u32)]) -> Vec<BackendView> {
        addrs
            .iter()
            .map(|&(addr, weight)| {
                let mut b = backend(0, weight, false);
                b.addr = addr;
                b
            })
            .collect()
    }

    /// Entries per backend address.
    fn shares(t: &Table, backends: &[BackendView]) -> HashMap<SocketAddr, usize> {
        let mut counts = HashMap::new();
        for addr in addr_table(t, backends) {
            *counts.entry(addr).or_default() += 1;
        }
        counts
    }

    /// Fraction of 20k random keys whose backend changes when backend `removed` leaves the
    /// configuration (default table size), and that backend's weight share.
    fn moved_by_removal(addrs: &[(SocketAddr, u32)], removed: usize) -> (f64, f64) {
        let before = backends_at(addrs);
        let after: Vec<BackendView> = before
            .iter()
            .enumerate()
            .filter(|&(i, _)| i != removed)
            .map(|(_, b)| b.clone())
            .collect();
        let algorithm = Algorithm::Maglev {
            hash_key: HashKey::FiveTuple,
            table_size: 0,
        };
        let (p1, p2) = (pool_of(algorithm, before), pool_of(algorithm, after));
        let keys = 20_000u64;
        let moved = (0..keys)
            .filter(|&k| {
                let k = key(mix64(k));
                let a = p1.backends[p1.picker.pick(&k, &p1, 0, &[]).unwrap()].addr;
                let b = p2.backends[p2.picker.pick(&k, &p2, 0, &[]).unwrap()].addr;
                a != b
            })
            .count();
        let total: u32 = addrs.iter().map(|&(_, w)| w).sum();
        (
            moved as f64 / keys as f64,
            f64::from(addrs[removed].1) / f64::from(total),
        )
    }

    fn distinct_addrs(max: usize) -> impl Strategy<Value = Vec<SocketAddr>> {
        prop::collection::hash_set((any::<u32>(), 1u16..), 1..=max).prop_map(|set| {
            set.into_iter()
                .map(|(ip, port)| SocketAddr::new(IpAddr::V4(Ipv4Addr::from(ip)), port))
                .collect()
        })
    }

    #[test]
    fn primes() {
        assert_eq!(next_prime(0), 2);
        assert_eq!(next_prime(65_536), 65_537);
        assert_eq!(next_prime(65_537), 65_537);
        assert_eq!(next_prime(655_370), 655_373);
        assert_eq!(next_prime(1_000), 1_009);
        assert!(!is_prime(1) && is_prime(2) && is_prime(3) && !is_prime(9));
    }

    #[test]
    fn the_table_is_pinned_across_processes_and_platforms() {
        // A fingerprint of the table for a fixed backend set. If this changes, two Ballast
        // versions would disagree on flows: change it only on purpose, and say so in the notes.
        let backends: Vec<_> = (0..5)
            .map(|i| backend(i, u32::from(i) + 1, false))
            .collect();
        let maglev = Maglev::new(HashKey::FiveTuple, 0, &backends);
        let mut h = Fnv::new(0);
        for &e in maglev.primary.entries.iter() {
            h.bytes(&e.to_le_bytes());
        }
        assert_eq!(maglev.table_size(), 65_537);
        assert_eq!(h.finish(), 7_690_492_881_879_322_649);
    }

    #[test]
    fn source_ip_ignores_ports_and_the_family_of_a_mapped_address() {
        let backends: Vec<_> = (0..16).map(|i| backend(i, 1, false)).collect();
        let pool = pool_of(
            Algorithm::Maglev {
                hash_key: HashKey::SourceIp,
                table_size: 0,
            },
            backends,
        );
        for n in 0..200u64 {
            let k = key(n * 7919);
            let mut other_port = k;
            other_port.client.set_port(k.client.port().wrapping_add(1));
            let mut mapped = other_port;
            if let IpAddr::V4(v4) = k.client.ip() {
                mapped.client.set_ip(IpAddr::V6(v4.to_ipv6_mapped()));
            }
            let pick = |k: &FlowKey| pool.picker.pick(k, &pool, 0, &[]);
            assert_eq!(pick(&k), pick(&other_port));
            assert_eq!(pick(&k), pick(&mapped));
        }
    }

    #[test]
    fn five_tuple_spreads_one_client_over_its_ports() {
        let backends: Vec<_> = (0..16).map(|i| backend(i, 1, false)).collect();
        let pool = pool_of(
            Algorithm::Maglev {
                hash_key: HashKey::FiveTuple,
                table_size: 0,
            },
            backends,
        );
        let mut seen = std::collections::HashSet::new();
        let base = key(42);
        for port in 1000..1200 {
            let mut k = base;
            k.client.set_port(port);
            let first = pool.picker.pick(&k, &pool, 0, &[]);
            assert_eq!(
                first,
                pool.picker.pick(&k, &pool, 0, &[]),
                "sticky per flow"
            );
            seen.insert(first);
        }
        assert!(seen.len() >= 12, "{}", seen.len());
    }

    #[test]
    fn ipv6_backends_and_duplicates_get_entries() {
        let v6 = |last: u16| {
            SocketAddr::new(
                IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, last)),
                53,
            )
        };
        let backends = backends_at(&[(v6(1), 1), (v6(2), 1), (v6(2), 1)]);
        let maglev = Maglev::new(HashKey::SourceIp, 1009, &backends);
        let mut counts = [0usize; 3];
        for &e in maglev.primary.entries.iter() {
            counts[e as usize] += 1;
        }
        assert!(
            counts.iter().all(|&c| (300..=373).contains(&c)),
            "{counts:?}"
        );
    }

    #[test]
    fn backups_have_their_own_table() {
        let backends = vec![
            backend(1, 1, false),
            backend(2, 1, true),
            backend(3, 1, true),
        ];
        let pool = pool_of(
            Algorithm::Maglev {
                hash_key: HashKey::FiveTuple,
                table_size: 101,
            },
            backends,
        );
        for n in 0..100 {
            assert_eq!(pool.picker.pick(&key(n), &pool, 0, &[]), Some(0));
        }
        pool.backends[0].state.set_healthy(false);
        let mut seen = [0; 3];
        for n in 0..1000 {
            seen[pool.picker.pick(&key(n), &pool, 0, &[]).unwrap()] += 1;
        }
        assert_eq!(seen[0], 0);
        assert!(seen[1] > 400 && seen[2] > 400, "{seen:?}");
        assert_eq!(pool.picker.pick(&key(0), &pool, 0, &[1, 2]), None);
    }

    #[test]
    fn a_key_skips_past_every_rehash_to_the_scan() {
        // 40 backends, all out but one: most keys exhaust the rehashes and must scan.
        let backends: Vec<_> = (0..40).map(|i| backend(i, 1, false)).collect();
        for b in &backends[1..] {
            b.state.set_healthy(false);
        }
        let pool = pool_of(
            Algorithm::Maglev {
                hash_key: HashKey::FiveTuple,
                table_size: 4001,
            },
            backends,
        );
        for n in 0..500 {
            assert_eq!(pool.picker.pick(&key(n), &pool, 0, &[]), Some(0));
        }
    }

    /// Whether two of these (distinct) addresses get one skip in the default-size table.
    fn skips_collide(addrs: &[SocketAddr]) -> bool {
        let m = DEFAULT_TABLE_SIZE as u64;
        let mut skips: Vec<u64> = addrs
            .iter()
            .map(|a| addr_hash(SKIP_SEED, a, 0) % (m - 1) + 1)
            .collect();
        skips.sort_unstable();
        skips.windows(2).any(|w| w[0] == w[1])
    }

    /// The known limit the removal properties leave out, pinned so a change to it shows: seven
    /// backends, two of which (119.163.101.215 and 251.39.64.23) share a skip, found by the
    /// property test. Plain Maglev with random permutations moves 1.01-1.03x the share here.
    #[test]
    fn a_skip_collision_disturbs_more() {
        let addrs: Vec<SocketAddr> = [
            "100.153.19.163:11687",
            "149.115.2.9:34825",
            "251.39.64.23:50329",
            "142.116.185.23:28959",
            "227.188.210.17:34359",
            "93.29.61.228:65315",
            "119.163.101.215:54121",
        ]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
        assert!(skips_collide(&addrs));
        let weighted: Vec<(SocketAddr, u32)> = addrs.iter().map(|&a| (a, 1)).collect();
        let worst = (0..addrs.len())
            .map(|v| {
                let (moved, share) = moved_by_removal(&weighted, v);
                moved / share
            })
            .fold(0.0, f64::max);
        assert!(
            (1.5..2.5).contains(&worst),
            "worst removal moved {worst:.2}x its share"
        );
        // Without one of the pair, the same backends behave.
        let rest: Vec<(SocketAddr, u32)> = weighted[..6].to_vec();
        assert!(!skips_collide(
            &rest.iter().map(|&(a, _)| a).collect::<Vec<_>>()
        ));
        for v in 0..rest.len() {
            let (moved, share) = moved_by_removal(&rest, v);
            assert!(moved <= 1.5 * share, "{moved} moved, share {share}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]

        #[test]
        fn the_table_does_not_depend_on_listing_order(
            (addrs, shuffled) in distinct_addrs(40).prop_flat_map(|a| (Just(a.clone()), Just(a).prop_shuffle())),
            weights in prop::collection::vec(1u32..=8, 40),
        ) {
            let weight_of = |addr: &SocketAddr| weights[addrs.iter().position(|a| a == addr).unwrap()];
            let one = backends_at(&addrs.iter().map(|a| (*a, weight_of(a))).collect::<Vec<_>>());
            let two = backends_at(&shuffled.iter().map(|a| (*a, weight_of(a))).collect::<Vec<_>>());
            let (m1, m2) = (Maglev::new(HashKey::FiveTuple, 4099, &one), Maglev::new(HashKey::FiveTuple, 4099, &two));
            prop_assert_eq!(addr_table(&m1.primary, &one), addr_table(&m2.primary, &two));
        }

        #[test]
        fn removing_one_of_n_moves_little_more_than_its_share(
            addrs in distinct_addrs(40).prop_filter("at least 3", |a| a.len() >= 3),
            victim in any::<prop::sample::Index>(),
        ) {
            // Known limit, not covered here: two backends whose skips collide (about 1 set in
            // 80 of 40 backends) walk one cycle of slots and fight over it, and a removal then
            // moves 1.3-1.9x the removed share; see `a_skip_collision_disturbs_more`.
            prop_assume!(!skips_collide(&addrs));
            let weighted: Vec<(SocketAddr, u32)> = addrs.iter().map(|&a| (a, 1)).collect();
            let (moved, share) = moved_by_removal(&weighted, victim.index(addrs.len()));
            prop_assert!(moved <= 1.5 * share, "{} moved, share {}, n = {}", moved, share, addrs.len());
        }

        #[test]
        fn removing_a_weighted_backend_moves_little_more_than_its_share(
            addrs in distinct_addrs(15).prop_filter("at least 3", |a| a.len() >= 3),
            weights in prop::collection::vec(1u32..=4, 15),
            victim in any::<prop::sample::Index>(),
        ) {
            // Weighted turns make the fill order depend on every weight, so removing a backend
            // disturbs a little more than with unit weights: measured up to ~1.6x its share
            // at 65537 entries and ~60 total weight; the bound leaves room for that.
            prop_assume!(!skips_collide(&addrs));
            let weighted: Vec<(SocketAddr, u32)> = addrs.iter().copied().zip(weights).collect();
            let (moved, share) = moved_by_removal(&weighted, victim.index(addrs.len()));
            prop_assert!(moved <= 2.0 * share, "{} moved, share {}, {:?}", moved, share, weighted);
        }

        #[test]
        fn an_outage_moves_only_the_keys_of_the_backend_that_is_out(
            weights in prop::collection::vec(1u32..=5, 2..30),
            victim in any::<prop::sample::Index>(),
        ) {
            let backends: Vec<_> = weights.iter().enumerate().map(|(i, &w)| backend(i as u16, w, false)).collect();
            let pool = pool_of(Algorithm::Maglev { hash_key: HashKey::SourceIp, table_size: 0 }, backends);
            let keys: Vec<FlowKey> = (0..5_000u64).map(|k| key(mix64(k))).collect();
            let before: Vec<usize> = keys.iter().map(|k| pool.picker.pick(k, &pool, 0, &[]).unwrap()).collect();
            let down = victim.index(weights.len());
            pool.backends[down].state.set_healthy(false);
            let mut moved = 0usize;
            for (k, &was) in keys.iter().zip(&before) {
                let now = pool.picker.pick(k, &pool, 0, &[]).unwrap();
                prop_assert_ne!(now, down);
                if was != down {
                    prop_assert_eq!(now, was);
                } else {
                    moved += 1;
                }
            }
            // And they come back when it does.
            pool.backends[down].state.set_healthy(true);
            for (k, &was) in keys.iter().zip(&before) {
                prop_assert_eq!(pool.picker.pick(k, &pool, 0, &[]).unwrap(), was);
            }
            let total: u32 = weights.iter().sum();
            let share = f64::from(weights[down]) / f64::from(total);
            prop_assert!((moved as f64 / keys.len() as f64 - share).abs() < 0.03 + share * 0.2);
        }

        #[test]
        fn entries_are_balanced_by_weight(
            weights in prop::collection::vec(1u32..=4, 1..=200),
            unit in any::<bool>(),
        ) {
            let weights: Vec<u32> = if unit { vec![1; weights.len()] } else { weights };
            let backends: Vec<_> = weights.iter().enumerate().map(|(i, &w)| backend(i as u16, w, false)).collect();
            let size = next_prime(100 * backends.len());
            let maglev = Maglev::new(HashKey::FiveTuple, size, &backends);
            prop_assert_eq!(maglev.table_size(), size);
            let counts = shares(&maglev.primary, &backends);
            let total_w: u32 = weights.iter().sum();
            let normalized: Vec<f64> = backends.iter().map(|b| counts.get(&b.addr).copied().unwrap_or(0) as f64 / f64::from(b.weight)).collect();
            let mean = size as f64 / f64::from(total_w);
            let max = normalized.iter().copied().fold(0.0, f64::max);
            prop_assert!(max / mean <= 1.05, "max/mean {}", max / mean);
            for (b, n) in backends.iter().zip(&normalized) {
                let entry_share = n * f64::from(b.weight) / size as f64;
                let weight_share = f64::from(b.weight) / f64::from(total_w);
                prop_assert!((entry_share - weight_share).abs() <= weight_share * 0.05,
                    "weight {} share {} vs {}", b.weight, entry_share, weight_share);
            }
        }
    }

    #[test]
    fn weights_hold_when_they_outnumber_the_entries() {
        // Weights add up to 6000 > M = 2003 (the next prime above one entry per backend): the
        // table fills mid-round, and interleaved turns still give the weight-5 backends about
        // five times the entries of the weight-1 ones.
        let backends: Vec<_> = (0..2000)
            .map(|i| backend(i, if i % 2 == 0 { 1 } else { 5 }, false))
            .collect();
        let maglev = Maglev::new(HashKey::FiveTuple, 1009, &backends);
        let counts = shares(&maglev.primary, &backends);
        let light: usize = backends
            .iter()
            .filter(|b| b.weight == 1)
            .map(|b| counts.get(&b.addr).copied().unwrap_or(0))
            .sum();
        let heavy: usize = backends
            .iter()
            .filter(|b| b.weight == 5)
            .map(|b| counts.get(&b.addr).copied().unwrap_or(0))
            .sum();
        assert_eq!(light + heavy, 2003);
        let ratio = heavy as f64 / light as f64;
        assert!((4.0..=6.0).contains(&ratio), "{heavy} / {light}");
    }
}
