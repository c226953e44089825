//! A listener: its protocol, `listen` addresses, pool, limits and timeouts, the `udp` block
//! of UDP listeners, its `fastpath` key (what it may be combined with is `fastpath`'s), and
//! addresses that two listeners would both bind.

use std::net::SocketAddr;

use super::access::resolve_access;
use super::address::{overlaps, parse_address};
use super::common::{
    check_pool_reference, parsed_items, resolve_choice, resolve_duration, resolve_limit, KnownPools,
};
use super::fastpath::resolve_listener_fastpath;
use crate::config::diagnostic::{Checked, Diagnostics, Reported};
use crate::config::locate::{child_index, child_key};
use crate::config::model::*;
use crate::config::raw::{Document, OneOrMany, RawListener};

const PROTOCOLS: [(&str, Protocol); 2] = [("tcp", Protocol::Tcp), ("udp", Protocol::Udp)];

pub(super) fn resolve_listener(
    path: &str,
    raw: &RawListener,
    pools: &KnownPools,
    diag: &mut Diagnostics<'_>,
) -> Checked<Listener> {
    let name = raw.name.clone().ok_or(Reported);

    let protocol = resolve_choice(
        raw.protocol.as_deref(),
        &child_key(path, "protocol"),
        "protocol",
        &PROTOCOLS,
        diag,
    );

    let listen = match &raw.listen {
        None => {
            diag.error(
                child_key(path, "listen"),
                "missing `listen`: the address(es) to accept connections on, e.g. 0.0.0.0:5432",
            );
            Err(Reported)
        }
        Some(OneOrMany::Many(list)) if list.is_empty() => {
            diag.error(
                child_key(path, "listen"),
                "empty list: give at least one address",
            );
            Err(Reported)
        }
        Some(listen) => {
            let mut addresses = Vec::new();
            let mut failed = false;
            for (item, text) in listen.entries() {
                let item_path = listen_path(path, item);
                match parse_address(text) {
                    Ok(address) => addresses.push(address),
                    Err(message) => {
                        diag.error(item_path, message);
                        failed = true;
                    }
                }
            }
            if failed {
                Err(Reported)
            } else {
                Ok(addresses)
            }
        }
    };

    let access = resolve_access(path, raw, protocol.as_ref().ok().copied(), pools, diag);
    let pool = match (&raw.pool, &raw.tls_passthrough) {
        (None, None) => {
            diag.error(
                child_key(path, "pool"),
                "missing `pool`: name the pool this listener sends connections to",
            );
            Err(Reported)
        }
        (Some(pool), None) => check_pool_reference(&child_key(path, "pool"), pool, pools, diag),
        (Some(_), Some(_)) => {
            diag.error(
                child_key(path, "pool"),
                "a TLS passthrough listener routes by SNI: name its pools under \
                 `tls_passthrough` (`routes` and `default_pool`) instead",
            );
            Err(Reported)
        }
        // The SNI table names the pools; the listener's own is the fallback it routes to.
        (None, Some(_)) => match &access {
            Ok(access) => access.tls_fallback_pool().ok_or(Reported),
            Err(Reported) => Err(Reported),
        },
    };

    let max_connections = resolve_limit(
        raw.max_connections,
        &child_key(path, "max_connections"),
        diag,
    );
    let timeouts = raw.timeouts.as_ref();
    let timeouts_path = child_key(path, "timeouts");
    let connect_timeout = resolve_duration(
        timeouts.and_then(|t| t.connect.as_ref()),
        &child_key(&timeouts_path, "connect"),
        DEFAULT_CONNECT_TIMEOUT,
        false,
        diag,
    );
    let idle_timeout = resolve_duration(
        timeouts.and_then(|t| t.idle.as_ref()),
        &child_key(&timeouts_path, "idle"),
        DEFAULT_IDLE_TIMEOUT,
        false,
        diag,
    );

    let udp = resolve_udp(path, raw, protocol.as_ref().ok().copied(), diag);
    let max_lifetime = match protocol {
        Ok(Protocol::Udp) => Ok(None),
        _ => super::tcp::resolve_max_lifetime(&timeouts_path, timeouts, diag),
    };
    let client_tcp = match protocol {
        Ok(Protocol::Udp) => {
            let ok = super::tcp::refuse_on_udp(
                path,
                raw.keepalive.is_some(),
                raw.user_timeout.is_some(),
                raw.timeouts
                    .as_ref()
                    .is_some_and(|t| t.max_lifetime.is_some() || t.max_lifetime_jitter.is_some()),
                diag,
            );
            ok.then(TcpOptions::default).ok_or(Reported)
        }
        _ => super::tcp::resolve_tcp_options(
            path,
            raw.keepalive.as_ref(),
            raw.user_timeout.as_ref(),
            diag,
        ),
    };
    let fastpath = resolve_listener_fastpath(path, raw, diag);

    Ok(Listener {
        name: name?,
        protocol: protocol?,
        listen: listen?,
        pool: pool?,
        max_connections: max_connections?,
        connect_timeout: connect_timeout?,
        idle_timeout: idle_timeout?,
        udp: udp?,
        access: access?,
        shared_port: raw.shared_port.unwrap_or(false),
        fastpath: fastpath?,
        client_tcp: client_tcp?,
        max_lifetime: max_lifetime?,
    })
}

/// The `udp` block of a UDP listener, and the TCP-only keys a UDP listener must not carry
/// (a UDP flow has no connect, and its idle time and limit have their own names).
fn resolve_udp(
    path: &str,
    raw: &RawListener,
    protocol: Option<Protocol>,
    diag: &mut Diagnostics<'_>,
) -> Checked<Option<UdpOptions>> {
    match protocol {
        Some(Protocol::Tcp) => {
            if raw.udp.is_some() {
                diag.error(
                    child_key(path, "udp"),
                    "applies only to `protocol: udp` listeners",
                );
                return Err(Reported);
            }
            Ok(None)
        }
        None => Err(Reported),
        Some(Protocol::Udp) => {
            let mut ok = true;
            if raw.max_connections.is_some() {
                diag.error(
                    child_key(path, "max_connections"),
                    "does not apply to UDP listeners; use `udp.max_flows`",
                );
                ok = false;
            }
            if let Some(timeouts) = &raw.timeouts {
                let timeouts_path = child_key(path, "timeouts");
                if timeouts.connect.is_some() {
                    diag.error(
                        child_key(&timeouts_path, "connect"),
                        "does not apply to UDP listeners: a UDP flow has no connect",
                    );
                    ok = false;
                }
                if timeouts.idle.is_some() {
                    diag.error(
                        child_key(&timeouts_path, "idle"),
                        "does not apply to UDP listeners; use `udp.idle_timeout`",
                    );
                    ok = false;
                }
            }
            let block = raw.udp.as_ref();
            let udp_path = child_key(path, "udp");
            let idle_timeout = resolve_duration(
                block.and_then(|u| u.idle_timeout.as_ref()),
                &child_key(&udp_path, "idle_timeout"),
                DEFAULT_UDP_IDLE_TIMEOUT,
                false,
                diag,
            );
            let max_flows = match block.and_then(|u| u.max_flows) {
                None => Ok(DEFAULT_UDP_MAX_FLOWS),
                Some(n) if (1..=MAX_UDP_FLOWS).contains(&n) => Ok(n),
                Some(n) => {
                    diag.error(
                        child_key(&udp_path, "max_flows"),
                        format!("must be between 1 and {MAX_UDP_FLOWS}, got {n}"),
                    );
                    Err(Reported)
                }
            };
            let responses = match block.and_then(|u| u.responses) {
                None => Ok(None),
                Some(0) => {
                    diag.error(
                        child_key(&udp_path, "responses"),
                        "must be at least 1: the replies each client datagram expects; for \
                         senders that expect none (syslog, metrics) use `per_datagram: true`",
                    );
                    Err(Reported)
                }
                Some(n) => match u32::try_from(n) {
                    Ok(n) if n <= MAX_UDP_RESPONSES => Ok(Some(n)),
                    _ => {
                        diag.error(
                            child_key(&udp_path, "responses"),
                            format!("must be between 1 and {MAX_UDP_RESPONSES}, got {n}"),
                        );
                        Err(Reported)
                    }
                },
            };
            let reply_timeout_raw = block.and_then(|u| u.reply_timeout.as_ref());
            let reply_timeout = resolve_duration(
                reply_timeout_raw,
                &child_key(&udp_path, "reply_timeout"),
                DEFAULT_UDP_REPLY_TIMEOUT,
                false,
                diag,
            );
            if reply_timeout_raw.is_some() && block.is_some_and(|u| u.responses.is_none()) {
                diag.error(
                    child_key(&udp_path, "reply_timeout"),
                    "applies only with `responses`: without it a flow expects no number of \
                     replies and ends after `idle_timeout`",
                );
                ok = false;
            }
            let retries = match block.and_then(|u| u.retries) {
                Some(n) if n > MAX_UDP_RETRIES => {
                    diag.error(
                        child_key(&udp_path, "retries"),
                        format!("must be between 0 and {MAX_UDP_RETRIES}, got {n}"),
                    );
                    Err(Reported)
                }
                Some(_) if block.is_some_and(|u| u.responses.is_none()) => {
                    diag.error(
                        child_key(&udp_path, "retries"),
                        "applies only with `responses`: only an exchange knows that its \
                         reply is missing and what to send again",
                    );
                    Err(Reported)
                }
                other => Ok(other.unwrap_or(0)),
            };
            let per_datagram = block.and_then(|u| u.per_datagram).unwrap_or(false);
            if per_datagram && block.is_some_and(|u| u.responses.is_some()) {
                diag.error(
                    child_key(&udp_path, "per_datagram"),
                    "a `per_datagram` listener relays no reply, and `responses` waits for \
                     replies: keep `responses` for request/reply traffic (DNS), \
                     `per_datagram` for senders that expect none (syslog, metrics)",
                );
                ok = false;
            }
            let rate = |key: &str, value: Option<u64>, diag: &mut Diagnostics<'_>| match value {
                None => Ok(None),
                Some(n) if n >= 1 => match u32::try_from(n) {
                    Ok(n) => Ok(Some(n)),
                    Err(_) => {
                        diag.error(
                            child_key(&udp_path, key),
                            format!("must be between 1 and {}, got {n}", u32::MAX),
                        );
                        Err(Reported)
                    }
                },
                Some(_) => {
                    diag.error(
                        child_key(&udp_path, key),
                        "must be at least 1; leave it out for no limit",
                    );
                    Err(Reported)
                }
            };
            let new_flows = rate(
                "new_flows_per_second_per_source",
                block.and_then(|u| u.new_flows_per_second_per_source),
                diag,
            );
            let per_flow = rate(
                "datagrams_per_second_per_flow",
                block.and_then(|u| u.datagrams_per_second_per_flow),
                diag,
            );
            if block.is_some_and(|u| {
                u.datagrams_per_second_per_flow.is_some()
                    && (u.responses.is_some() || u.per_datagram == Some(true))
            }) {
                diag.error(
                    child_key(&udp_path, "datagrams_per_second_per_flow"),
                    "with `responses` or `per_datagram` each datagram is balanced on its own \
                     and no flow carries more than one: limit the datagrams of a source with \
                     `new_flows_per_second_per_source`",
                );
                ok = false;
            }
            if !ok {
                return Err(Reported);
            }
            Ok(Some(UdpOptions {
                idle_timeout: idle_timeout?,
                max_flows: max_flows?,
                responses: responses?,
                reply_timeout: reply_timeout?,
                retries: retries?,
                per_datagram,
                new_flows_per_second_per_source: new_flows?,
                datagrams_per_second_per_flow: per_flow?,
            }))
        }
    }
}

pub(super) fn listen_path(listener_path: &str, item: Option<usize>) -> String {
    let listen = child_key(listener_path, "listen");
    match item {
        Some(index) => child_index(&listen, index),
        None => listen,
    }
}

/// Addresses two listeners cannot both bind. Port 0 picks a fresh port on every bind, so it
/// never conflicts.
pub(super) fn check_listen_conflicts(doc: &Document, diag: &mut Diagnostics<'_>) {
    struct Bound<'a> {
        listener: usize,
        name: Option<&'a str>,
        path: String,
        address: SocketAddr,
        udp: bool,
    }
    let mut bound: Vec<Bound<'_>> = Vec::new();
    for (index, listener) in parsed_items(&doc.listeners) {
        let path = child_index("listeners", index);
        let Some(listen) = &listener.listen else {
            continue;
        };
        for (item, text) in listen.entries() {
            let Ok(address) = parse_address(text) else {
                continue;
            };
            if address.port() == 0 {
                continue;
            }
            let udp = listener.protocol.as_deref() == Some("udp");
            let this = Bound {
                listener: index,
                name: listener.name.as_deref(),
                path: listen_path(&path, item),
                address,
                udp,
            };
            // TCP and UDP ports are separate name spaces: DNS listens on both 53s.
            if let Some(other) = bound
                .iter()
                .find(|b| b.udp == udp && overlaps(b.address, address))
            {
                let owner = match other.name {
                    _ if other.listener == index => "this listener".to_owned(),
                    Some(name) => format!("listener {name:?}"),
                    None => "another listener".to_owned(),
                };
                let message = if other.address == address && other.listener == index {
                    format!("{address} is listed twice (also at {})", other.path)
                } else if other.address == address {
                    format!("{address} is already used by {owner} ({})", other.path)
                } else {
                    format!(
                        "{address} overlaps {} of {owner} ({}): a wildcard address takes the \
                         port on every address of its family",
                        other.address, other.path
                    )
                };
                diag.error(this.path, message);
                continue;
            }
            bound.push(this);
        }
    }
}
