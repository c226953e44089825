//! Validation of a listener's access keys (`allow`, `deny`, `accept_proxy_protocol`,
//! `tls_passthrough`, per-source limits) and a pool's `send_proxy_protocol`: stage two of the
//! loader for issue 6's features, in the same collect-every-error style as the rest of validation.

use std::net::IpAddr;

use ballast_dataplane::sni::SniPattern;

use super::common::{check_pool_reference, resolve_duration, KnownPools};
use crate::config::diagnostic::{Checked, Diagnostics, Reported};
use crate::config::locate::{child_index, child_key};
use crate::config::model::*;
use crate::config::raw::{RawListener, RawPool};

pub(super) fn resolve_send_proxy(
    pool_path: &str,
    raw: &RawPool,
    diag: &mut Diagnostics<'_>,
) -> Checked<Option<ProxyVersion>> {
    match raw.send_proxy_protocol.as_deref() {
        None => Ok(None),
        Some("v1") => Ok(Some(ProxyVersion::V1)),
        Some("v2") => Ok(Some(ProxyVersion::V2)),
        Some(other) => {
            diag.error(
                child_key(pool_path, "send_proxy_protocol"),
                format!("unknown PROXY protocol version {other:?}; expected v1 or v2"),
            );
            Err(Reported)
        }
    }
}

pub(super) fn resolve_access(
    path: &str,
    raw: &RawListener,
    protocol: Option<Protocol>,
    pools: &KnownPools,
    diag: &mut Diagnostics<'_>,
) -> Checked<ListenerAccess> {
    let udp = protocol == Some(Protocol::Udp);
    let mut ok = true;
    let mut tcp_only = |key: &str, present: bool, diag: &mut Diagnostics<'_>| {
        if udp && present {
            diag.error(child_key(path, key), "applies only to TCP listeners");
            ok = false;
        }
    };
    tcp_only(
        "accept_proxy_protocol",
        raw.accept_proxy_protocol.is_some(),
        diag,
    );
    tcp_only("tls_passthrough", raw.tls_passthrough.is_some(), diag);
    tcp_only(
        "max_connections_per_source",
        raw.max_connections_per_source.is_some(),
        diag,
    );
    tcp_only(
        "new_connections_per_second_per_source",
        raw.new_connections_per_second_per_source.is_some(),
        diag,
    );

    let allow = networks(&child_key(path, "allow"), raw.allow.as_deref(), diag);
    let deny = networks(&child_key(path, "deny"), raw.deny.as_deref(), diag);

    let accept_proxy = match &raw.accept_proxy_protocol {
        None => Ok(None),
        Some(proxy) => {
            let proxy_path = child_key(path, "accept_proxy_protocol");
            let trusted_path = child_key(&proxy_path, "trusted");
            let trusted = match proxy.trusted.as_deref() {
                None | Some([]) => {
                    diag.error(
                        &trusted_path,
                        "list the networks of the balancers allowed to send PROXY headers, \
                         e.g. [\"10.1.0.0/16\"]; anyone else could forge client addresses",
                    );
                    Err(Reported)
                }
                Some(list) => networks(&trusted_path, Some(list), diag),
            };
            let timeout = resolve_duration(
                proxy.timeout.as_ref(),
                &child_key(&proxy_path, "timeout"),
                DEFAULT_PREFACE_TIMEOUT,
                false,
                diag,
            );
            match (trusted, timeout) {
                (Ok(trusted), Ok(timeout)) => Ok(Some(AcceptProxyConfig { trusted, timeout })),
                _ => Err(Reported),
            }
        }
    };

    let tls = match &raw.tls_passthrough {
        None => Ok(None),
        Some(tls) => {
            let tls_path = child_key(path, "tls_passthrough");
            let mut routes = Vec::new();
            let mut failed = false;
            let routes_path = child_key(&tls_path, "routes");
            for (i, route) in tls.routes.iter().flatten().enumerate() {
                let route_path = child_index(&routes_path, i);
                let sni = match route.sni.as_deref() {
                    None => {
                        diag.error(
                            child_key(&route_path, "sni"),
                            "missing `sni`: a host name or *.domain",
                        );
                        None
                    }
                    Some(text) => match SniPattern::parse(text) {
                        Some(_) => Some(text.trim().to_ascii_lowercase()),
                        None => {
                            diag.error(
                                child_key(&route_path, "sni"),
                                format!("{text:?} is not a host name or a `*.domain` wildcard"),
                            );
                            None
                        }
                    },
                };
                let pool = match route.pool.as_deref() {
                    None => {
                        diag.error(child_key(&route_path, "pool"), "missing `pool`");
                        None
                    }
                    Some(name) => {
                        check_pool_reference(&child_key(&route_path, "pool"), name, pools, diag)
                            .ok()
                    }
                };
                let alpn: Vec<String> = match &route.alpn {
                    None => Vec::new(),
                    Some(list) => list
                        .entries()
                        .into_iter()
                        .map(|(_, p)| p.to_owned())
                        .collect(),
                };
                if alpn.iter().any(|p| p.is_empty() || p.len() > 255) {
                    diag.error(
                        child_key(&route_path, "alpn"),
                        "ALPN protocol names are 1 to 255 bytes, e.g. h2 or http/1.1",
                    );
                    failed = true;
                }
                match (sni, pool) {
                    (Some(sni), Some(pool)) => routes.push(SniRouteConfig { sni, pool, alpn }),
                    _ => failed = true,
                }
            }
            let default_pool = match tls.default_pool.as_deref() {
                None => None,
                Some(name) => {
                    match check_pool_reference(
                        &child_key(&tls_path, "default_pool"),
                        name,
                        pools,
                        diag,
                    ) {
                        Ok(name) => Some(name),
                        Err(Reported) => {
                            failed = true;
                            None
                        }
                    }
                }
            };
            if tls.routes.as_ref().is_none_or(Vec::is_empty) && tls.default_pool.is_none() {
                diag.error(
                    &tls_path,
                    "give `routes` (sni → pool) and/or a `default_pool`",
                );
                failed = true;
            }
            let peek_timeout = resolve_duration(
                tls.peek_timeout.as_ref(),
                &child_key(&tls_path, "peek_timeout"),
                DEFAULT_PREFACE_TIMEOUT,
                false,
                diag,
            );
            match (failed, peek_timeout) {
                (false, Ok(peek_timeout)) => Ok(Some(TlsPassthrough {
                    routes,
                    default_pool,
                    peek_timeout,
                })),
                _ => Err(Reported),
            }
        }
    };

    let per_source =
        |key: &str, value: Option<u64>, diag: &mut Diagnostics<'_>| -> Checked<Option<u32>> {
            match value {
                None => Ok(None),
                Some(n) if n >= 1 && n <= u64::from(u32::MAX) => Ok(u32::try_from(n).ok()),
                Some(n) => {
                    diag.error(
                        child_key(path, key),
                        format!(
                            "must be between 1 and {}, got {n}; leave it out for no limit",
                            u32::MAX
                        ),
                    );
                    Err(Reported)
                }
            }
        };
    let max_per_source = per_source(
        "max_connections_per_source",
        raw.max_connections_per_source,
        diag,
    );
    let rate_per_source = per_source(
        "new_connections_per_second_per_source",
        raw.new_connections_per_second_per_source,
        diag,
    );

    if !ok {
        return Err(Reported);
    }
    Ok(ListenerAccess {
        allow: allow?,
        deny: deny?,
        accept_proxy: accept_proxy?,
        tls: tls?,
        max_connections_per_source: max_per_source?,
        new_connections_per_second_per_source: rate_per_source?,
    })
}

/// CIDR networks (`10.0.0.0/8`, `2001:db8::/32`) or single addresses (`10.1.2.3`).
fn networks(path: &str, raw: Option<&[String]>, diag: &mut Diagnostics<'_>) -> Checked<Vec<IpNet>> {
    let mut out = Vec::new();
    let mut failed = false;
    for (i, text) in raw.unwrap_or_default().iter().enumerate() {
        let text = text.trim();
        let parsed = text
            .parse::<IpNet>()
            .ok()
            .or_else(|| text.parse::<IpAddr>().ok().map(IpNet::from));
        match parsed {
            // A host address with host bits in the mask (10.0.0.1/8) is almost always a typo
            // for the network; take the network, as HAProxy and nginx do.
            Some(net) => out.push(net.trunc()),
            None => {
                diag.error(
                    child_index(path, i),
                    format!("{text:?} is not a network; expected CIDR like 10.0.0.0/8 or 2001:db8::/32, or an address"),
                );
                failed = true;
            }
        }
    }
    if failed {
        Err(Reported)
    } else {
        Ok(out)
    }
}
