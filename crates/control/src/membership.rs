//! What a pool is made of at run time: the file's fixed backends, what its names resolve to
//! now (DNS discovery), and the changes made through the admin API. Pure: no socket, no
//! clock (the time is passed in), no lock. [`crate::discovery`] feeds it lookups;
//! [`crate::server`] turns the result into the configuration the data plane runs.
//!
//! - **A name's members** ([`NameState::apply`]). A lookup that finds records replaces the
//!   name's members with them, sorted by address and cut at `max` (so every instance that
//!   gets the same answer has the same members, and the same Maglev table). `resolve: first`
//!   keeps its one member while the answer still has it, so a server that rotates its
//!   answers does not move the backend on every lookup. A lookup that fails (timeout,
//!   SERVFAIL, refused) changes nothing: the last good answer stays, marked stale. A name
//!   that is gone (NXDOMAIN, or no record) keeps its members for `dns.hold`, then loses them.
//! - **The pool** ([`effective_backends`]). The fixed backends in file order, then each name's
//!   members in the order of the file's entries, then backends added at run time; an address
//!   that two of these give is one backend (the first wins). Runtime weights apply to all;
//!   runtime removals hide any.
//! - **Identity.** A backend is its address within its pool, as for reloads: one that stays
//!   keeps its `BackendState` (health, admin state, counters) through the route builder's
//!   registry, and its Maglev slots, since Maglev hashes addresses.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::config::{Backend, Config, Discover, Dns, Pool, Resolve, MAX_WEIGHT};

/// One backend a name gives: an address record with the entry's port, or an SRV target's
/// address with the record's port, weight and priority.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Record {
    pub addr: SocketAddr,
    /// SRV priority (lower is preferred); 0 for address records.
    pub priority: u16,
    /// 1..=MAX_WEIGHT.
    pub weight: u32,
}

impl Record {
    /// An SRV target: weight 0 ("rarely") becomes 1, the smallest Ballast weight; weights
    /// above [`MAX_WEIGHT`] are capped.
    pub fn srv(addr: SocketAddr, priority: u16, weight: u16) -> Self {
        Self {
            addr,
            priority,
            weight: u32::from(weight).clamp(1, MAX_WEIGHT),
        }
    }
}

/// What one lookup of a name found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Records, and the TTL of the answer (the shortest of its records).
    Found { records: Vec<Record>, ttl: Duration },
    /// NXDOMAIN, or the name has no record of the types asked.
    Gone,
    /// The lookup itself failed: timeout, SERVFAIL, refused, no server answered.
    Failed(String),
}

/// Counts of lookup results, by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Results {
    pub found: u64,
    pub gone: u64,
    pub failed: u64,
}

/// One name's members and the story of its lookups.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NameState {
    /// Sorted by address.
    pub members: Vec<Record>,
    /// When a lookup last found records.
    pub last_success: Option<Instant>,
    /// Since when the name has been gone (NXDOMAIN or no record), while it is.
    pub gone_since: Option<Instant>,
    /// Why the last lookup did not find records; `None` after one that did.
    pub last_error: Option<String>,
    pub results: Results,
    /// True once any lookup has answered (found or gone): until then the name is pending.
    pub answered: bool,
}

impl NameState {
    /// Folds one lookup into the state; returns true when the members changed.
    pub fn apply(
        &mut self,
        entry: &Discover,
        outcome: Outcome,
        now: Instant,
        hold: Duration,
    ) -> bool {
        let before = self.members.clone();
        match outcome {
            Outcome::Found { records, .. } if !records.is_empty() => {
                self.results.found += 1;
                self.members = select(entry, &records, &self.members);
                self.last_success = Some(now);
                self.gone_since = None;
                self.last_error = None;
                self.answered = true;
            }
            Outcome::Found { .. } | Outcome::Gone => {
                self.results.gone += 1;
                self.answered = true;
                let since = *self.gone_since.get_or_insert(now);
                let held = now.saturating_duration_since(since);
                if held >= hold {
                    self.members.clear();
                    self.last_error =
                        Some("the name does not exist (NXDOMAIN or no record)".into());
                } else {
                    self.last_error = Some(format!(
                        "the name does not exist (NXDOMAIN or no record); keeping the last answer for {:?} more",
                        hold - held
                    ));
                }
            }
            Outcome::Failed(error) => {
                self.results.failed += 1;
                self.last_error = Some(error);
            }
        }
        self.members != before
    }

    /// True when the members are not what the last lookup said: it failed, or the name is
    /// gone and held.
    pub fn stale(&self) -> bool {
        self.last_error.is_some() && !self.members.is_empty()
    }
}

/// The members a name's answer gives `entry`: deduplicated by address (an address that two
/// SRV records give keeps the better priority), sorted by SRV priority then address, cut at
/// `max` (so the preferred records are the ones kept). Records of a worse priority than the
/// best stay members: [`effective_backends`] makes them backups, used only when no preferred
/// target can serve, as RFC 2782 asks. `resolve: first` keeps `current`'s member while it is
/// still among the best priority's records, else takes the first IPv4 address of those
/// (sorted), else the first.
pub fn select(entry: &Discover, records: &[Record], current: &[Record]) -> Vec<Record> {
    let mut chosen: Vec<Record> = records.to_vec();
    chosen.sort();
    chosen.dedup_by_key(|r| r.addr);
    chosen.sort_by_key(|r| (r.priority, r.addr));
    match entry.resolve {
        Resolve::First => {
            let best = chosen.first().map(|r| r.priority).unwrap_or(0);
            chosen.retain(|r| r.priority == best);
            let kept = current
                .first()
                .and_then(|c| chosen.iter().find(|r| r.addr == c.addr));
            let pick = kept
                .or_else(|| chosen.iter().find(|r| r.addr.is_ipv4()))
                .or_else(|| chosen.first())
                .copied();
            pick.into_iter().collect()
        }
        Resolve::EveryRecord => {
            chosen.truncate(entry.max);
            chosen
        }
    }
}

/// How long until `entry` is looked up again after `outcome`: the answer's TTL within
/// `resolve_interval`; the interval's minimum after a failure or while the name is gone, so a
/// name comes back (or its hold runs out) in good time.
pub fn next_lookup(outcome: &Outcome, dns: &Dns) -> Duration {
    match outcome {
        Outcome::Found { records, ttl } if !records.is_empty() => {
            (*ttl).clamp(dns.interval_min, dns.interval_max)
        }
        _ => dns.interval_min,
    }
}

/// A backend added through the admin API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Added {
    pub weight: u32,
    #[serde(default)]
    pub backup: bool,
    #[serde(default)]
    pub max_connections: Option<u64>,
}

/// The admin API's changes to one pool.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolChanges {
    /// Weights set at run time, for any backend of the pool.
    #[serde(default)]
    pub weights: BTreeMap<SocketAddr, u32>,
    #[serde(default)]
    pub added: BTreeMap<SocketAddr, Added>,
    /// Backends taken out of the pool at run time (configured, discovered or added).
    #[serde(default)]
    pub removed: BTreeSet<SocketAddr>,
}

impl PoolChanges {
    pub fn is_empty(&self) -> bool {
        self.weights.is_empty() && self.added.is_empty() && self.removed.is_empty()
    }
}

/// Where a backend of the running pool comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A fixed address in the file.
    Config,
    /// What the name (its label, `host:port` or the SRV name) resolves to.
    Name(String),
    /// Added through the admin API.
    Runtime,
}

impl Source {
    /// The name an address came from, or "" (the `name` label of `ballast_backend_info`).
    pub fn name(&self) -> &str {
        match self {
            Source::Name(label) => label,
            Source::Config | Source::Runtime => "",
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Source::Config => "config",
            Source::Name(_) => "dns",
            Source::Runtime => "runtime",
        }
    }
}

/// The backends `pool` runs with, and where each comes from (see the module doc for the
/// order). `names[i]` is the state of `pool.discover[i]`, `None` while it has none.
pub fn effective_backends(
    pool: &Pool,
    names: &[Option<&NameState>],
    changes: Option<&PoolChanges>,
) -> Vec<(Backend, Source)> {
    let mut out: Vec<(Backend, Source)> = Vec::new();
    let mut push = |backend: Backend, source: Source| {
        if !out.iter().any(|(b, _)| b.address == backend.address) {
            out.push((backend, source));
        }
    };
    for backend in &pool.backends {
        push(backend.clone(), Source::Config);
    }
    for (entry, state) in pool.discover.iter().zip(names) {
        let members = state.map(|s| s.members.as_slice()).unwrap_or_default();
        let best = members.iter().map(|r| r.priority).min().unwrap_or(0);
        for record in members {
            let weight = if entry.is_srv() {
                record.weight
            } else {
                entry.weight
            };
            push(
                Backend {
                    address: record.addr,
                    weight,
                    // A worse SRV priority is a fallback: Ballast's backup tier.
                    backup: entry.backup || record.priority > best,
                    max_connections: entry.max_connections,
                },
                Source::Name(entry.label()),
            );
        }
    }
    if let Some(changes) = changes {
        for (addr, added) in &changes.added {
            push(
                Backend {
                    address: *addr,
                    weight: added.weight,
                    backup: added.backup,
                    max_connections: added.max_connections,
                },
                Source::Runtime,
            );
        }
        out.retain(|(b, _)| !changes.removed.contains(&b.address));
        for (backend, _) in &mut out {
            if let Some(weight) = changes.weights.get(&backend.address) {
                backend.weight = *weight;
            }
        }
    }
    out
}

/// One name of the running configuration, with its state.
#[derive(Debug, Clone, PartialEq)]
pub struct NameSlot {
    pub pool: String,
    pub entry: Discover,
    pub state: NameState,
    /// When to look it up again, from its last lookup.
    pub next: Duration,
}

/// Every name of `file`, each with the state it had in `old` when the same pool has a name
/// of the same label there (a reload keeps what names resolved to), else a fresh one.
pub fn name_slots(file: &Config, old: &[NameSlot]) -> Vec<NameSlot> {
    file.pools
        .iter()
        .flat_map(|pool| pool.discover.iter().map(move |entry| (pool, entry)))
        .map(|(pool, entry)| {
            let kept = old
                .iter()
                .find(|s| s.pool == pool.name && s.entry.label() == entry.label());
            NameSlot {
                pool: pool.name.clone(),
                entry: entry.clone(),
                state: kept.map(|s| s.state.clone()).unwrap_or_default(),
                next: kept.map_or(Duration::ZERO, |s| s.next),
            }
        })
        .collect()
}

/// Where each backend of the running configuration comes from, by (pool, address).
pub type Sources = HashMap<(String, SocketAddr), Source>;

/// The configuration to run: `file` with each pool's backends replaced by
/// [`effective_backends`] (its names' members and its runtime changes merged in).
pub fn merge(
    file: &Config,
    names: &[NameSlot],
    changes: &BTreeMap<String, PoolChanges>,
) -> (Config, Sources) {
    let mut config = file.clone();
    let mut sources = Sources::new();
    for pool in &mut config.pools {
        let states: Vec<Option<&NameState>> = pool
            .discover
            .iter()
            .map(|entry| {
                names
                    .iter()
                    .find(|s| s.pool == pool.name && s.entry.label() == entry.label())
                    .map(|s| &s.state)
            })
            .collect();
        let backends = effective_backends(pool, &states, changes.get(&pool.name));
        pool.backends = backends
            .into_iter()
            .map(|(backend, source)| {
                sources.insert((pool.name.clone(), backend.address), source);
                backend
            })
            .collect();
    }
    (config, sources)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn entry(resolve: Resolve, max: usize) -> Discover {
        Discover {
            name: "app.test".into(),
            port: Some(80),
            resolve,
            max,
            weight: 3,
            backup: false,
            max_connections: None,
        }
    }

    fn rec(last: u8) -> Record {
        Record {
            addr: SocketAddr::from(([127, 0, 0, last], 80)),
            priority: 0,
            weight: 1,
        }
    }

    fn found(records: Vec<Record>) -> Outcome {
        Outcome::Found {
            records,
            ttl: Duration::from_secs(1),
        }
    }

    const HOLD: Duration = Duration::from_secs(30);

    #[test]
    fn every_record_follows_the_answer_sorted_and_capped() {
        let e = entry(Resolve::EveryRecord, 3);
        let mut state = NameState::default();
        let now = Instant::now();
        assert!(state.apply(&e, found(vec![rec(4), rec(2), rec(3), rec(2)]), now, HOLD));
        assert_eq!(state.members, [rec(2), rec(3), rec(4)]);
        // Another order of the same answer changes nothing.
        assert!(!state.apply(&e, found(vec![rec(3), rec(4), rec(2)]), now, HOLD));
        // More than `max`: the lowest addresses, in every instance.
        assert!(state.apply(&e, found(vec![rec(9), rec(5), rec(6), rec(7)]), now, HOLD));
        assert_eq!(state.members, [rec(5), rec(6), rec(7)]);
        assert_eq!(state.results.found, 3);
    }

    #[test]
    fn first_keeps_its_member_while_the_answer_has_it() {
        let e = entry(Resolve::First, 1);
        let mut state = NameState::default();
        let now = Instant::now();
        let v6 = Record {
            addr: "[::1]:80".parse().unwrap(),
            ..rec(0)
        };
        state.apply(&e, found(vec![v6, rec(7), rec(5)]), now, HOLD);
        assert_eq!(state.members, [rec(5)], "IPv4 first, lowest first");
        assert!(!state.apply(&e, found(vec![rec(3), rec(5)]), now, HOLD));
        assert_eq!(state.members, [rec(5)], "kept while answered");
        assert!(state.apply(&e, found(vec![rec(3), rec(4)]), now, HOLD));
        assert_eq!(state.members, [rec(3)]);
    }

    #[test]
    fn a_failed_lookup_keeps_the_last_answer_and_says_so() {
        let e = entry(Resolve::EveryRecord, 8);
        let mut state = NameState::default();
        let now = Instant::now();
        state.apply(&e, found(vec![rec(2), rec(3)]), now, HOLD);
        let later = now + Duration::from_secs(3600);
        assert!(!state.apply(&e, Outcome::Failed("request timed out".into()), later, HOLD));
        assert_eq!(state.members, [rec(2), rec(3)]);
        assert!(state.stale());
        assert_eq!(state.last_error.as_deref(), Some("request timed out"));
        assert_eq!(state.last_success, Some(now));
        state.apply(&e, found(vec![rec(2), rec(3)]), later, HOLD);
        assert!(!state.stale());
    }

    #[test]
    fn a_gone_name_empties_only_after_the_hold() {
        let e = entry(Resolve::EveryRecord, 8);
        let mut state = NameState::default();
        let t0 = Instant::now();
        state.apply(&e, found(vec![rec(2)]), t0, HOLD);
        let t1 = t0 + Duration::from_secs(1);
        assert!(!state.apply(&e, Outcome::Gone, t1, HOLD));
        assert!(!state.apply(
            &e,
            found(Vec::new()),
            t1 + Duration::from_secs(29) - Duration::from_millis(1),
            HOLD
        ));
        assert_eq!(state.members, [rec(2)]);
        assert!(state.stale());
        assert!(state.apply(&e, Outcome::Gone, t1 + HOLD, HOLD));
        assert!(state.members.is_empty());
        // Back: the hold starts afresh next time.
        state.apply(&e, found(vec![rec(4)]), t1 + HOLD, HOLD);
        assert_eq!(state.gone_since, None);
        assert_eq!(state.members, [rec(4)]);
    }

    #[test]
    fn srv_answers_keep_worse_priorities_as_backups_with_their_weights() {
        let srv = Discover {
            name: "_app._tcp.test".into(),
            port: None,
            ..entry(Resolve::EveryRecord, 8)
        };
        let a = Record::srv("127.0.0.2:7001".parse().unwrap(), 10, 60);
        let b = Record::srv("127.0.0.3:7002".parse().unwrap(), 10, 0);
        let c = Record::srv("127.0.0.4:7003".parse().unwrap(), 20, 5000);
        let mut state = NameState::default();
        // The same address twice keeps its better priority.
        let c_again = Record::srv(c.addr, 5, 1);
        state.apply(&srv, found(vec![c, a, b]), Instant::now(), HOLD);
        assert_eq!(state.members, [a, b, c]);
        assert_eq!((a.weight, b.weight, c.weight), (60, 1, MAX_WEIGHT));
        let pool = pool_with(vec![], vec![srv.clone()]);
        let backends = effective_backends(&pool, &[Some(&state)], None);
        let tiers: Vec<(u32, bool)> = backends.iter().map(|(b, _)| (b.weight, b.backup)).collect();
        assert_eq!(tiers, [(60, false), (1, false), (MAX_WEIGHT, true)]);

        state.apply(&srv, found(vec![c, a, b, c_again]), Instant::now(), HOLD);
        assert_eq!(state.members, [c_again, a, b]);
        let backends = effective_backends(&pool, &[Some(&state)], None);
        let backups: Vec<bool> = backends.iter().map(|(b, _)| b.backup).collect();
        assert_eq!(backups, [false, true, true]);

        // `max` keeps the preferred records.
        let two = Discover { max: 2, ..srv };
        let mut state = NameState::default();
        state.apply(&two, found(vec![c, b, a]), Instant::now(), HOLD);
        assert_eq!(state.members, [a, b]);
    }

    #[test]
    fn resolve_first_takes_the_best_srv_priority() {
        let srv = Discover {
            name: "_app._tcp.test".into(),
            port: None,
            ..entry(Resolve::First, 8)
        };
        let near = Record::srv("127.0.0.9:7001".parse().unwrap(), 10, 1);
        let far = Record::srv("127.0.0.2:7002".parse().unwrap(), 20, 1);
        assert_eq!(select(&srv, &[far, near], &[]), [near]);
        assert_eq!(select(&srv, &[far, near], &[far]), [near]);
    }

    fn pool_with(backends: Vec<Backend>, discover: Vec<Discover>) -> Pool {
        let mut pool = crate::config::load_str(
            "listeners: [{ name: l, listen: \"127.0.0.1:0\", pool: p }]\npools: [{ name: p, backends: [{ address: \"127.0.0.1:9\" }] }]\n",
            "t.yaml",
        )
        .unwrap()
        .config
        .pools
        .remove(0);
        pool.backends = backends;
        pool.discover = discover;
        pool
    }

    fn fixed(last: u8) -> Backend {
        Backend {
            address: rec(last).addr,
            weight: 1,
            backup: false,
            max_connections: None,
        }
    }

    #[test]
    fn the_pool_is_fixed_then_named_then_added_with_runtime_changes_on_top() {
        let e = entry(Resolve::EveryRecord, 8);
        let pool = pool_with(vec![fixed(2)], vec![e.clone()]);
        let mut state = NameState::default();
        state.apply(
            &e,
            found(vec![rec(2), rec(3), rec(4)]),
            Instant::now(),
            HOLD,
        );
        let mut changes = PoolChanges::default();
        changes.added.insert(
            rec(9).addr,
            Added {
                weight: 5,
                backup: true,
                max_connections: None,
            },
        );
        changes.added.insert(
            rec(3).addr,
            Added {
                weight: 7,
                backup: false,
                max_connections: None,
            },
        );
        changes.removed.insert(rec(4).addr);
        changes.weights.insert(rec(2).addr, 9);
        let backends = effective_backends(&pool, &[Some(&state)], Some(&changes));
        let got: Vec<(SocketAddr, u32, &str)> = backends
            .iter()
            .map(|(b, s)| (b.address, b.weight, s.kind()))
            .collect();
        assert_eq!(
            got,
            [
                (rec(2).addr, 9, "config"),
                (rec(3).addr, 3, "dns"),
                (rec(9).addr, 5, "runtime"),
            ]
        );
        assert_eq!(backends[1].1.name(), "app.test:80");
        assert!(backends[2].0.backup);
    }

    proptest! {
        /// Whatever the answers, in whatever order: the members are a sorted, duplicate-free
        /// subset of the latest answer of at most `max`, the same for every order of it, and
        /// only a lookup that answers changes them.
        #[test]
        fn members_follow_answers(
            answers in proptest::collection::vec(
                prop_oneof![
                    proptest::collection::vec(1u8..20, 0..10).prop_map(Some),
                    Just(None),
                ],
                1..12,
            ),
            max in 1usize..6,
        ) {
            let e = entry(Resolve::EveryRecord, max);
            let mut state = NameState::default();
            let mut twin = NameState::default();
            let now = Instant::now();
            for answer in answers {
                let before = state.members.clone();
                match answer {
                    Some(lasts) => {
                        let records: Vec<Record> = lasts.iter().map(|l| rec(*l)).collect();
                        let mut reversed = records.clone();
                        reversed.reverse();
                        state.apply(&e, found(records.clone()), now, Duration::ZERO);
                        twin.apply(&e, found(reversed), now, Duration::ZERO);
                        prop_assert_eq!(&state.members, &twin.members);
                        prop_assert!(state.members.len() <= max);
                        prop_assert!(state.members.windows(2).all(|w| w[0].addr < w[1].addr));
                        prop_assert!(state.members.iter().all(|m| records.contains(m)));
                        if !records.is_empty() {
                            prop_assert!(!state.members.is_empty());
                        }
                    }
                    None => {
                        let changed = state.apply(&e, Outcome::Failed("x".into()), now, Duration::ZERO);
                        twin.apply(&e, Outcome::Failed("x".into()), now, Duration::ZERO);
                        prop_assert!(!changed);
                        prop_assert_eq!(&state.members, &before);
                    }
                }
            }
        }
    }

    #[test]
    fn lookups_are_spaced_by_ttl_within_the_interval() {
        let dns = Dns::default();
        let ttl = |secs| found_ttl(Duration::from_secs(secs));
        assert_eq!(next_lookup(&ttl(0), &dns), dns.interval_min);
        assert_eq!(next_lookup(&ttl(60), &dns), Duration::from_secs(60));
        assert_eq!(next_lookup(&ttl(86_400), &dns), dns.interval_max);
        assert_eq!(next_lookup(&Outcome::Gone, &dns), dns.interval_min);
        assert_eq!(
            next_lookup(&Outcome::Failed("x".into()), &dns),
            dns.interval_min
        );
    }

    fn found_ttl(ttl: Duration) -> Outcome {
        Outcome::Found {
            records: vec![rec(2)],
            ttl,
        }
    }
}
