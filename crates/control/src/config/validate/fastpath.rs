//! The kernel fast path (issue 14): the top-level `fastpath` block, a listener's `fastpath`
//! key, and what a listener with `fastpath: socket` and its pool may not use.
//!
//! The socket fast path picks the backend inside the client's `connect()` (or `sendmsg()`),
//! and the client then talks to the backend directly. Nothing that needs Ballast in the byte
//! path can hold there; the hook does not balance `least_time` (it learns a session's connect
//! time only at its close) nor checks access lists, least connections compares at most
//! [`ballast_fastpath::MAX_SCAN`] backends, and a hook of one address family steers only to
//! backends of that family: a config asking for any of that is refused here rather than half
//! served at run time.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use super::address::parse_address;
use super::common::{parsed_items, resolve_choice};
use super::listener::listen_path;
use crate::config::diagnostic::{Checked, Diagnostics, Reported};
use crate::config::locate::{child_index, child_key};
use crate::config::model::*;
use crate::config::raw::{Document, RawFastpath, RawListener, RawPool};

/// The spellings of each enumerated key; the first is the default.
const MODES: [(&str, FastpathMode); 2] = [
    ("auto", FastpathMode::Auto),
    ("required", FastpathMode::Required),
];
const LISTENER_FASTPATHS: [(&str, ListenerFastpath); 3] = [
    ("none", ListenerFastpath::None),
    ("socket", ListenerFastpath::Socket),
    ("udp_offload", ListenerFastpath::UdpOffload),
];

/// The `algorithm`s the socket fast path balances.
pub(super) const SOCKET_ALGORITHMS: [&str; 5] = [
    "round_robin",
    "random",
    "least_connections",
    "power_of_two",
    "maglev",
];

const SOCKET: &str = "socket";
const UDP_OFFLOAD: &str = "udp_offload";

fn wants_socket(listener: &RawListener) -> bool {
    listener.fastpath.as_deref() == Some(SOCKET)
}

fn wants_udp_offload(listener: &RawListener) -> bool {
    listener.fastpath.as_deref() == Some(UDP_OFFLOAD)
}

/// The top-level `fastpath` block. A listener with `fastpath: socket` and no
/// `fastpath.socket_lb` block gets the socket fast path with its defaults.
pub(super) fn resolve_fastpath(doc: &Document, diag: &mut Diagnostics<'_>) -> Checked<Fastpath> {
    let socket_lb = resolve_socket_lb(doc, diag);
    let udp_offload = resolve_udp_offload(doc, diag);
    Ok(Fastpath {
        socket_lb: socket_lb?,
        udp_offload: udp_offload?,
    })
}

fn resolve_socket_lb(doc: &Document, diag: &mut Diagnostics<'_>) -> Checked<Option<SocketLb>> {
    let any_socket_listener = parsed_items(&doc.listeners).any(|(_, l)| wants_socket(l));
    let raw = doc
        .fastpath
        .as_ref()
        .and_then(|f: &RawFastpath| f.socket_lb.as_ref());
    let Some(raw) = raw else {
        return Ok(any_socket_listener.then_some(SocketLb {
            cgroup: None,
            mode: FastpathMode::default(),
        }));
    };
    let cgroup_path = "fastpath.socket_lb.cgroup";
    let cgroup = match raw.cgroup.as_deref() {
        None => Ok(None),
        Some(text) if text.trim().is_empty() => {
            diag.error(
                cgroup_path,
                "must not be empty; leave `cgroup` out for the root of the cgroup2 mount",
            );
            Err(Reported)
        }
        Some(text) if !Path::new(text).is_absolute() => {
            diag.error(
                cgroup_path,
                format!(
                    "{text:?} is not an absolute path; give the cgroup v2 directory from /, \
                     e.g. /sys/fs/cgroup/myapp"
                ),
            );
            Err(Reported)
        }
        Some(text) => Ok(Some(PathBuf::from(text))),
    };
    let mode = resolve_choice(
        raw.mode.as_deref(),
        "fastpath.socket_lb.mode",
        "mode",
        &MODES,
        diag,
    );
    Ok(Some(SocketLb {
        cgroup: cgroup?,
        mode: mode?,
    }))
}

/// `fastpath.udp_offload`; like `socket_lb`, implied with its defaults by a listener that
/// asks for it.
fn resolve_udp_offload(doc: &Document, diag: &mut Diagnostics<'_>) -> Checked<Option<UdpOffload>> {
    let any_listener = parsed_items(&doc.listeners).any(|(_, l)| wants_udp_offload(l));
    let raw = doc.fastpath.as_ref().and_then(|f| f.udp_offload.as_ref());
    let Some(raw) = raw else {
        return Ok(any_listener.then(UdpOffload::default));
    };
    let mut interfaces_ok = true;
    if let Some(list) = &raw.interfaces {
        if list.is_empty() {
            diag.error(
                "fastpath.udp_offload.interfaces",
                "must name at least one interface; leave `interfaces` out for every interface \
                 but loopback",
            );
            interfaces_ok = false;
        }
        for (index, name) in list.iter().enumerate() {
            // The kernel's own limit (IFNAMSIZ less the NUL) and characters.
            let valid = !name.is_empty()
                && name.len() <= 15
                && !name.contains(['/', ' ', '\0'])
                && name != "."
                && name != "..";
            if !valid {
                diag.error(
                    child_index("fastpath.udp_offload.interfaces", index),
                    format!("{name:?} is not a network interface name"),
                );
                interfaces_ok = false;
            } else if name == "lo" {
                diag.error(
                    child_index("fastpath.udp_offload.interfaces", index),
                    "the UDP offload does not serve loopback: clients on this host are the \
                     socket fast path's (`fastpath: socket`)",
                );
                interfaces_ok = false;
            }
        }
    }
    let mode = resolve_choice(
        raw.mode.as_deref(),
        "fastpath.udp_offload.mode",
        "mode",
        &MODES,
        diag,
    );
    if !interfaces_ok {
        return Err(Reported);
    }
    Ok(Some(UdpOffload {
        interfaces: raw.interfaces.clone(),
        mode: mode?,
    }))
}

/// Every listener with `fastpath: udp_offload`: a UDP listener whose pool writes no PROXY
/// header (a header goes in front of each datagram, in user space).
pub(super) fn check_udp_offload_listeners(doc: &Document, diag: &mut Diagnostics<'_>) {
    for (index, listener) in parsed_items(&doc.listeners) {
        if !wants_udp_offload(listener) {
            continue;
        }
        let path = child_index("listeners", index);
        if listener.protocol.as_deref() != Some("udp") {
            diag.error(
                child_key(&path, "fastpath"),
                "`udp_offload` forwards UDP datagrams in the kernel and this is a TCP listener; \
                 for clients on this host use `fastpath: socket`, or set `fastpath: none`",
            );
            continue;
        }
        for key in per_datagram_udp_keys(listener) {
            diag.error(
                child_key(&child_key(&path, "udp"), key),
                format!(
                    "the UDP offload cannot honour `udp.{key}`: the kernel forwards a flow's \
                     later datagrams itself, and `{key}` needs Ballast to see every datagram; \
                     remove `udp.{key}` or set `fastpath: none`"
                ),
            );
        }
        let Some(pool) = listener.pool.as_deref() else {
            continue;
        };
        let found = parsed_items(&doc.pools).find(|(_, p)| p.name.as_deref() == Some(pool));
        if let Some((pool_index, raw)) = found {
            if raw.send_proxy_protocol.is_some() {
                diag.error(
                    child_key(&child_index("pools", pool_index), "send_proxy_protocol"),
                    format!(
                        "the UDP offload cannot honour `send_proxy_protocol`: a PROXY v2 header \
                         goes in front of each datagram, written in user space, and the kernel \
                         forwards datagrams as they are (the pool of listener {}, which has \
                         `fastpath: udp_offload`); remove it or set `fastpath: none`",
                        listener
                            .name
                            .as_deref()
                            .map_or(path.clone(), |n| format!("{n:?}"))
                    ),
                );
            }
        }
    }
}

/// The `udp` keys of a listener that need Ballast to see each datagram (to count replies,
/// balance it, or rate it): neither fast path can honour them.
fn per_datagram_udp_keys(raw: &RawListener) -> Vec<&'static str> {
    let Some(udp) = raw.udp.as_ref() else {
        return Vec::new();
    };
    [
        ("responses", udp.responses.is_some()),
        ("per_datagram", udp.per_datagram == Some(true)),
        (
            "datagrams_per_second_per_flow",
            udp.datagrams_per_second_per_flow.is_some(),
        ),
    ]
    .into_iter()
    .filter_map(|(key, present)| present.then_some(key))
    .collect()
}

/// A listener's own `fastpath` key; what it may be combined with is checked by
/// `check_socket_listeners`.
pub(super) fn resolve_listener_fastpath(
    path: &str,
    raw: &RawListener,
    diag: &mut Diagnostics<'_>,
) -> Checked<ListenerFastpath> {
    resolve_choice(
        raw.fastpath.as_deref(),
        &child_key(path, "fastpath"),
        "fastpath",
        &LISTENER_FASTPATHS,
        diag,
    )
}

/// The error for a key that a `fastpath: socket` listener (or its pool) cannot have.
fn cannot_honour(key: &str, why: &str, whose: &str) -> String {
    format!(
        "the socket fast path cannot honour `{key}`: {why} ({whose}); remove `{key}` or set \
         `fastpath: none`"
    )
}

const DIRECT: &str = "the client connects to the backend directly";

/// Every listener with `fastpath: socket`: its own keys and addresses, and its pool's
/// algorithm, PROXY header and backends. `pools` are the resolved pools, one for each
/// parsed item of `doc.pools`, in order. Each problem is reported once, at the key to change.
pub(super) fn check_socket_listeners(
    doc: &Document,
    pools: &[Checked<Pool>],
    diag: &mut Diagnostics<'_>,
) {
    // Pool index -> the listeners that steer to it, so a shared pool is reported once.
    // Pool index -> the family of the first of them with a parsed address (IPv4: `true`).
    let mut families: BTreeMap<usize, bool> = BTreeMap::new();
    let mut steered: BTreeMap<usize, Vec<String>> = BTreeMap::new();
    for (index, listener) in parsed_items(&doc.listeners) {
        if !wants_socket(listener) {
            continue;
        }
        let path = child_index("listeners", index);
        let whose = "this listener has `fastpath: socket`";
        check_listener_features(&path, listener, whose, diag);
        let family = check_listen_addresses(&path, listener, diag);
        warn_relay_only_settings(&path, listener, diag);

        let Some(pool) = listener.pool.as_deref() else {
            continue;
        };
        let found = parsed_items(&doc.pools).find(|(_, p)| p.name.as_deref() == Some(pool));
        if let Some((pool_index, _)) = found {
            let name = match listener.name.as_deref() {
                Some(name) => format!("{name:?}"),
                None => path,
            };
            steered.entry(pool_index).or_default().push(name);
            if let Some(ipv4) = family {
                families.entry(pool_index).or_insert(ipv4);
            }
        }
    }

    for ((index, raw), resolved) in parsed_items(&doc.pools).zip(pools) {
        let Some(listeners) = steered.get(&index) else {
            continue;
        };
        let whose = match listeners.as_slice() {
            [one] => format!("the pool of listener {one}, which has `fastpath: socket`"),
            many => format!(
                "the pool of listeners {}, which have `fastpath: socket`",
                many.join(", ")
            ),
        };
        check_pool(
            &child_index("pools", index),
            raw,
            resolved.as_ref().ok(),
            families.get(&index).copied(),
            &whose,
            diag,
        );
    }
}

fn check_listener_features(path: &str, raw: &RawListener, whose: &str, diag: &mut Diagnostics<'_>) {
    let never_sees = format!("{DIRECT}, so Ballast never sees the connection to count it");
    let features: [(&str, bool, &str); 7] = [
        (
            "tls_passthrough",
            raw.tls_passthrough.is_some(),
            "the client connects to the backend directly, so Ballast never reads the \
             ClientHello to route by SNI",
        ),
        (
            "accept_proxy_protocol",
            raw.accept_proxy_protocol.is_some(),
            "the client connects to the backend directly, so Ballast never reads the PROXY \
             header, and the backend would get it as data",
        ),
        (
            "max_connections_per_source",
            raw.max_connections_per_source.is_some(),
            &never_sees,
        ),
        (
            "new_connections_per_second_per_source",
            raw.new_connections_per_second_per_source.is_some(),
            &never_sees,
        ),
        (
            "max_connections",
            raw.max_connections.is_some(),
            &never_sees,
        ),
        (
            "allow",
            raw.allow.is_some(),
            "the hook does not check `allow` and `deny` in this version, so every client \
             would reach the backend",
        ),
        (
            "deny",
            raw.deny.is_some(),
            "the hook does not check `allow` and `deny` in this version, so every client \
             would reach the backend",
        ),
    ];
    for (key, present, why) in features {
        if present {
            diag.error(child_key(path, key), cannot_honour(key, why, whose));
        }
    }
    let new_flows = raw
        .udp
        .as_ref()
        .is_some_and(|u| u.new_flows_per_second_per_source.is_some());
    let new_flows = new_flows.then_some("new_flows_per_second_per_source");
    for key in per_datagram_udp_keys(raw).into_iter().chain(new_flows) {
        diag.error(
            child_key(&child_key(path, "udp"), key),
            cannot_honour(
                &format!("udp.{key}"),
                "the client sends to the backend directly, so Ballast never sees its datagrams",
                whose,
            ),
        );
    }
}

/// The name of an address family, as the messages say it.
fn family_name(ipv4: bool) -> &'static str {
    if ipv4 {
        "IPv4"
    } else {
        "IPv6"
    }
}

/// The hook matches the address a client connects to: addresses of one family (the first
/// one's, which is returned as "IPv4?") with a fixed port.
fn check_listen_addresses(
    path: &str,
    raw: &RawListener,
    diag: &mut Diagnostics<'_>,
) -> Option<bool> {
    let listen = raw.listen.as_ref()?;
    let mut first: Option<SocketAddr> = None;
    for (item, text) in listen.entries() {
        // A malformed address is reported by the listener's own checks.
        let Ok(address) = parse_address(text) else {
            continue;
        };
        let at = listen_path(path, item);
        let first = *first.get_or_insert(address);
        if address.is_ipv4() != first.is_ipv4() {
            diag.error(
                at,
                format!(
                    "{address} is an {} address and {first} an {} one: the socket fast path \
                     wants all listen addresses of a `fastpath: socket` listener, and every \
                     backend of its pool, of one family; use a listener per family or set \
                     `fastpath: none`",
                    family_name(address.is_ipv4()),
                    family_name(first.is_ipv4()),
                ),
            );
        } else if address.port() == 0 {
            diag.error(
                at,
                format!(
                    "{address}: port 0 picks a new port on every start, and the socket fast \
                     path needs a fixed address to match connects against; give a port or \
                     set `fastpath: none`"
                ),
            );
        }
    }
    first.map(|address| address.is_ipv4())
}

/// Settings that only the relay applies: one warning per `fastpath: socket` listener.
fn warn_relay_only_settings(path: &str, raw: &RawListener, diag: &mut Diagnostics<'_>) {
    let message = if raw.protocol.as_deref() == Some("udp") {
        "`retries` and the flow timeout and limit (`udp.idle_timeout`, `udp.max_flows`) do \
         not apply to datagrams the socket fast path steers: the client sends to the backend \
         directly, so Ballast keeps no flow for them; they still apply to what reaches the \
         listener itself"
    } else {
        "`retries` and `timeouts` (`connect`, `idle`) do not apply to connections the socket \
         fast path steers: the client connects to the backend directly, so a failed connect \
         is not retried on another backend and Ballast closes no idle session; they still \
         apply to connections that reach the listener itself"
    };
    diag.warning(child_key(path, "fastpath"), message);
}

fn check_pool(
    path: &str,
    raw: &RawPool,
    resolved: Option<&Pool>,
    ipv4: Option<bool>,
    whose: &str,
    diag: &mut Diagnostics<'_>,
) {
    if let Some(algorithm) = raw.algorithm.as_deref() {
        if !SOCKET_ALGORITHMS.contains(&algorithm) {
            diag.error(
                child_key(path, "algorithm"),
                format!(
                    "the socket fast path balances {}, not {algorithm} ({whose}): the hook \
                     learns a session's connect time only when it closes; use one of them or \
                     set `fastpath: none`",
                    SOCKET_ALGORITHMS.join(", ")
                ),
            );
        }
    }
    let algorithm = resolved.map(|pool| pool.algorithm);
    if let Some(ballast_dataplane::balance::Algorithm::LeastConnections) = algorithm {
        let largest_tier = [false, true]
            .into_iter()
            .map(|backup| {
                resolved.map_or(0, |pool| {
                    pool.backends.iter().filter(|b| b.backup == backup).count()
                })
            })
            .max()
            .unwrap_or(0);
        if largest_tier > ballast_fastpath::MAX_SCAN {
            diag.error(
                child_key(path, "backends"),
                format!(
                    "{largest_tier} backends in one tier: the hook compares at most {} for \
                     least_connections ({whose}); use power_of_two, which draws two, or set \
                     `fastpath: none`",
                    ballast_fastpath::MAX_SCAN
                ),
            );
        }
    }
    if let Some(ballast_dataplane::balance::Algorithm::Maglev {
        hash_key: ballast_dataplane::balance::HashKey::FiveTuple,
        ..
    }) = algorithm
    {
        diag.warning(
            child_key(path, "hash_key"),
            format!(
                "a steered connect is hashed before the kernel chooses its source port, so \
                 with `hash_key: five_tuple` each steered connection takes a weighted random \
                 backend (the shares Maglev's table gives new connections) ({whose}); an \
                 unconnected UDP socket keeps its backend for all its datagrams"
            ),
        );
    }
    if raw.on_backend_down.as_deref() == Some("close") {
        diag.warning(
            child_key(path, "on_backend_down"),
            format!(
                "`close` ends only the sessions that go through the relay ({whose}): a \
                 steered client is connected to the backend itself, and a dead backend's \
                 steered sessions end when the client or the backend notices"
            ),
        );
    }
    if raw.slow_start.is_some() {
        diag.error(
            child_key(path, "slow_start"),
            cannot_honour(
                "slow_start",
                "the hook steers by the configured weights, and a backend ramping up needs \
                 the relay's pickers to scale its weight at every connect",
                whose,
            ),
        );
    }
    if raw.send_proxy_protocol.is_some() {
        diag.error(
            child_key(path, "send_proxy_protocol"),
            cannot_honour(
                "send_proxy_protocol",
                "the client connects to the backend directly, so no PROXY header is written",
                whose,
            ),
        );
    }
    let backends_path = child_key(path, "backends");
    for (index, backend) in raw.backends.iter().flatten().enumerate() {
        let backend_path = child_index(&backends_path, index);
        // Resolved when the pool is (host names included), else only an IP written as such.
        let written = backend.address.as_deref();
        let address: Option<SocketAddr> = match resolved {
            Some(pool) => pool.backends.get(index).map(|b| b.address),
            None => written.and_then(|text| parse_address(text).ok()),
        };
        let other_family = |address: &SocketAddr| ipv4.is_some_and(|v4| address.is_ipv4() != v4);
        if let Some(address) = address.filter(other_family) {
            let shown = match written {
                Some(text) if text != address.to_string() => {
                    format!("{text:?} resolves to {address}, which")
                }
                _ => address.to_string(),
            };
            diag.error(
                child_key(&backend_path, "address"),
                format!(
                    "{shown} is an {} address, and every backend of a pool behind `fastpath: \
                     socket` must have the family of the listener's addresses, {} here \
                     ({whose}): the hook cannot steer a connect to the other family; use an {} \
                     backend or set `fastpath: none`",
                    family_name(address.is_ipv4()),
                    family_name(!address.is_ipv4()),
                    family_name(!address.is_ipv4()),
                ),
            );
        }
    }
}
