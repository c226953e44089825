//! Access control by client address: a listener's `allow` / `deny` CIDR lists, and the CIDR sets
//! behind them (also the `trusted` list of `accept_proxy_protocol`).
//!
//! A [`CidrSet`] is built once, when a route snapshot is built: each family's networks become
//! sorted, merged, disjoint address ranges, so a match is one binary search with no allocation,
//! however many networks the list has.
//!
//! Rules: deny wins over allow; an empty allow list allows everyone. Clients are matched by
//! family: an IPv4-mapped IPv6 client (`::ffff:10.1.2.3`, as a dual-stack socket reports an IPv4
//! peer) is the IPv4 client it stands for, so IPv4 rules apply to it. An IPv6 rule that lies
//! wholly inside `::ffff:0:0/96` is the IPv4 rule it spells; other IPv6 rules, `::/0` included,
//! match IPv6 clients only, so `deny: ["::/0"]` shuts out IPv6 and leaves IPv4 alone.

// Input comes off the network: every access is checked (`get`, `split_at_checked`, ...).
#![deny(clippy::indexing_slicing)]

use std::net::IpAddr;

use ipnet::{IpNet, Ipv6Net};

/// Where IPv4-mapped IPv6 addresses live: `::ffff:0:0/96`.
const MAPPED_PREFIX: u8 = 96;
const MAPPED_HIGH_BITS: u128 = 0xffff;

/// A set of networks of both families, matched by binary search.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CidrSet {
    /// Inclusive ranges, sorted, disjoint and not touching.
    v4: Box<[(u32, u32)]>,
    v6: Box<[(u128, u128)]>,
}

impl CidrSet {
    /// Host bits in a network (`10.1.2.3/8`) are ignored: it stands for `10.0.0.0/8`.
    pub fn new(nets: impl IntoIterator<Item = IpNet>) -> Self {
        let mut v4 = Vec::new();
        let mut v6 = Vec::new();
        for net in nets {
            match net {
                IpNet::V4(n) => v4.push((u32::from(n.network()), u32::from(n.broadcast()))),
                IpNet::V6(n) => match as_mapped_v4(&n) {
                    Some(range) => v4.push(range),
                    None => v6.push((u128::from(n.network()), u128::from(n.broadcast()))),
                },
            }
        }
        Self {
            v4: merge(v4, |x| x.checked_add(1)),
            v6: merge(v6, |x| x.checked_add(1)),
        }
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match ip.to_canonical() {
            IpAddr::V4(v4) => in_ranges(&self.v4, u32::from(v4)),
            IpAddr::V6(v6) => in_ranges(&self.v6, u128::from(v6)),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.v4.is_empty() && self.v6.is_empty()
    }
}

/// The IPv4 range an IPv6 network inside `::ffff:0:0/96` spells, if it lies wholly there.
fn as_mapped_v4(net: &Ipv6Net) -> Option<(u32, u32)> {
    let network = u128::from(net.network());
    if net.prefix_len() < MAPPED_PREFIX || network >> 32 != MAPPED_HIGH_BITS {
        return None;
    }
    let low = |x: u128| u32::try_from(x & u128::from(u32::MAX)).ok();
    Some((low(network)?, low(u128::from(net.broadcast()))?))
}

/// Sorts ranges and merges the ones that overlap or touch; `next` is the successor of an
/// address, `None` at the top of the family.
fn merge<T: Ord + Copy>(mut ranges: Vec<(T, T)>, next: fn(T) -> Option<T>) -> Box<[(T, T)]> {
    ranges.sort_unstable();
    let mut merged: Vec<(T, T)> = Vec::with_capacity(ranges.len());
    for (start, end) in ranges {
        if let Some(last) = merged.last_mut() {
            // Touches when the last range ends at the top of the family or right before start.
            if next(last.1).is_none_or(|after| after >= start) {
                last.1 = last.1.max(end);
                continue;
            }
        }
        merged.push((start, end));
    }
    merged.into_boxed_slice()
}

fn in_ranges<T: Ord + Copy>(ranges: &[(T, T)], x: T) -> bool {
    let after = ranges.partition_point(|&(start, _)| start <= x);
    after
        .checked_sub(1)
        .and_then(|i| ranges.get(i))
        .is_some_and(|&(_, end)| x <= end)
}

/// What the ACL says about a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Decision {
    Allowed,
    /// A deny rule matched.
    Denied,
    /// There is an allow list and no rule in it matched.
    NotAllowed,
}

/// A listener's allow and deny lists.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Acl {
    allow: CidrSet,
    deny: CidrSet,
}

impl Acl {
    /// An empty `allow` allows every client that `deny` does not match.
    pub fn new(
        allow: impl IntoIterator<Item = IpNet>,
        deny: impl IntoIterator<Item = IpNet>,
    ) -> Self {
        Self {
            allow: CidrSet::new(allow),
            deny: CidrSet::new(deny),
        }
    }

    pub fn decide(&self, client: IpAddr) -> Decision {
        if self.deny.contains(client) {
            Decision::Denied
        } else if self.allow.is_empty() || self.allow.contains(client) {
            Decision::Allowed
        } else {
            Decision::NotAllowed
        }
    }

    pub fn allows(&self, client: IpAddr) -> bool {
        self.decide(client) == Decision::Allowed
    }

    /// True when the ACL lets everyone in, so the worker can skip it.
    pub fn is_open(&self) -> bool {
        self.allow.is_empty() && self.deny.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn allow_and_deny_by_family() {
        let acl = Acl::new(
            nets(&["10.0.0.0/8", "192.168.1.0/24", "2001:db8::/32"]),
            nets(&["10.9.0.0/16", "2001:db8:bad::/48"]),
        );
        assert_eq!(acl.decide(ip("10.1.2.3")), Decision::Allowed);
        assert_eq!(acl.decide(ip("10.9.1.1")), Decision::Denied);
        assert_eq!(acl.decide(ip("11.0.0.0")), Decision::NotAllowed);
        assert_eq!(acl.decide(ip("9.255.255.255")), Decision::NotAllowed);
        assert!(acl.allows(ip("192.168.1.255")));
        assert!(!acl.allows(ip("192.168.2.0")));
        assert!(acl.allows(ip("2001:db8::1")));
        assert_eq!(acl.decide(ip("2001:db8:bad::1")), Decision::Denied);
        assert_eq!(acl.decide(ip("2001:db9::1")), Decision::NotAllowed);
    }

    #[test]
    fn empty_allow_list_allows_all_but_the_denied() {
        let open = Acl::default();
        assert!(open.is_open());
        assert!(open.allows(ip("203.0.113.9")));
        assert!(open.allows(ip("::1")));
        let acl = Acl::new([], nets(&["203.0.113.0/24"]));
        assert!(!acl.is_open());
        assert!(acl.allows(ip("198.51.100.1")));
        assert_eq!(acl.decide(ip("203.0.113.9")), Decision::Denied);
    }

    #[test]
    fn deny_wins_over_allow() {
        let acl = Acl::new(
            nets(&["0.0.0.0/0", "::/0"]),
            nets(&["127.0.0.2/32", "::1/128"]),
        );
        assert!(acl.allows(ip("127.0.0.1")));
        assert_eq!(acl.decide(ip("127.0.0.2")), Decision::Denied);
        assert_eq!(acl.decide(ip("::1")), Decision::Denied);
    }

    #[test]
    fn ipv4_mapped_clients_match_ipv4_rules() {
        let acl = Acl::new(nets(&["10.0.0.0/8"]), nets(&["10.0.0.66/32"]));
        assert!(acl.allows(ip("::ffff:10.1.2.3")));
        assert_eq!(acl.decide(ip("::ffff:10.0.0.66")), Decision::Denied);
        assert_eq!(acl.decide(ip("::ffff:11.0.0.1")), Decision::NotAllowed);
        // A rule written in the mapped space is the IPv4 rule.
        let mapped_rule = Acl::new(nets(&["::ffff:192.0.2.0/120"]), []);
        assert!(mapped_rule.allows(ip("192.0.2.7")));
        assert!(mapped_rule.allows(ip("::ffff:192.0.2.7")));
        assert!(!mapped_rule.allows(ip("192.0.3.7")));
        // IPv6 rules that merely cover the mapped space stay IPv6 rules.
        let v6_only = Acl::new([], nets(&["::/0"]));
        assert!(v6_only.allows(ip("192.0.2.7")));
        assert!(v6_only.allows(ip("::ffff:192.0.2.7")));
        assert!(!v6_only.allows(ip("2001:db8::1")));
    }

    #[test]
    fn edges_of_the_address_space() {
        let set = CidrSet::new(nets(&[
            "255.255.255.255/32",
            "0.0.0.0/32",
            "ffff::/16",
            "::/128",
        ]));
        assert!(set.contains(ip("255.255.255.255")));
        assert!(set.contains(ip("0.0.0.0")));
        assert!(!set.contains(ip("0.0.0.1")));
        assert!(!set.contains(ip("255.255.255.254")));
        assert!(set.contains(ip("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff")));
        assert!(set.contains(ip("::")));
        assert!(!set.contains(ip("::2")));
        assert!(!CidrSet::default().contains(ip("1.2.3.4")));
        assert!(CidrSet::default().is_empty());
    }

    #[test]
    fn host_bits_overlaps_and_neighbours_merge() {
        let set = CidrSet::new(nets(&[
            "10.1.2.3/8",
            "10.0.0.0/16",
            "11.0.0.0/8",
            "13.0.0.0/8",
            "2001:db8::1/64",
            "2001:db8:0:1::/64",
        ]));
        assert_eq!(
            set.v4.as_ref(),
            &[
                (
                    u32::from(Ipv4Addr::new(10, 0, 0, 0)),
                    u32::from(Ipv4Addr::new(11, 255, 255, 255))
                ),
                (
                    u32::from(Ipv4Addr::new(13, 0, 0, 0)),
                    u32::from(Ipv4Addr::new(13, 255, 255, 255))
                ),
            ]
        );
        assert_eq!(set.v6.len(), 1);
        assert!(set.contains(ip("10.200.0.1")));
        assert!(!set.contains(ip("12.0.0.1")));
        assert!(set.contains(ip("2001:db8:0:1:ffff::")));
        assert!(!set.contains(ip("2001:db8:0:2::")));
    }

    /// The rules above spelled out one network at a time, for comparison.
    fn naive_contains(list: &[IpNet], client: IpAddr) -> bool {
        let client = client.to_canonical();
        list.iter().any(|net| match (net, client) {
            (IpNet::V4(n), IpAddr::V4(c)) => n.contains(&c),
            (IpNet::V6(n), IpAddr::V6(c)) => n.contains(&c),
            (IpNet::V6(n), IpAddr::V4(c)) => {
                as_mapped_v4(n).is_some() && n.contains(&c.to_ipv6_mapped())
            }
            (IpNet::V4(_), IpAddr::V6(_)) => false,
        })
    }

    /// Addresses from a small space, so that networks and clients overlap often.
    fn near_ip() -> impl Strategy<Value = IpAddr> {
        prop_oneof![
            (
                prop::sample::select(vec![0u8, 10, 11, 127, 255]),
                any::<u8>(),
                any::<u8>(),
                any::<u8>()
            )
                .prop_map(|(a, b, c, d)| IpAddr::V4(Ipv4Addr::new(a, b, c, d))),
            (
                prop::sample::select(vec![0u16, 0x2001, 0xffff]),
                any::<u16>(),
                any::<u16>()
            )
                .prop_map(|(a, b, h)| IpAddr::V6(Ipv6Addr::new(a, b, 0, 0, 0, 0, 0, h))),
            (any::<u8>(), any::<u8>(), any::<u8>())
                .prop_map(|(b, c, d)| IpAddr::V6(Ipv4Addr::new(10, b, c, d).to_ipv6_mapped())),
        ]
    }

    fn near_net() -> impl Strategy<Value = IpNet> {
        (near_ip(), any::<u8>()).prop_map(|(addr, len)| {
            let max = if addr.is_ipv4() { 32 } else { 128 };
            IpNet::new(addr, len % (max + 1)).unwrap()
        })
    }

    proptest! {
        #[test]
        fn set_matches_like_its_networks_one_by_one(
            list in proptest::collection::vec(near_net(), 0..20),
            clients in proptest::collection::vec(near_ip(), 1..50),
        ) {
            let set = CidrSet::new(list.iter().copied());
            for w in set.v4.windows(2) {
                prop_assert!(w[0].1 < w[1].0 && w[0].1 + 1 < w[1].0);
            }
            for w in set.v6.windows(2) {
                prop_assert!(w[0].1 < w[1].0 && w[0].1 + 1 < w[1].0);
            }
            for client in clients {
                prop_assert_eq!(set.contains(client), naive_contains(&list, client), "{}", client);
            }
        }

        #[test]
        fn deny_always_wins(
            allow in proptest::collection::vec(near_net(), 0..8),
            deny in proptest::collection::vec(near_net(), 0..8),
            client in near_ip(),
        ) {
            let acl = Acl::new(allow.iter().copied(), deny.iter().copied());
            let expected = !naive_contains(&deny, client)
                && (allow.is_empty() || naive_contains(&allow, client));
            prop_assert_eq!(acl.allows(client), expected);
        }
    }
}
