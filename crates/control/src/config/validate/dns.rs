//! `dns:` (where and how often backend names are looked up again) and `state_file:`.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use super::common::resolve_duration;
use crate::config::diagnostic::{Checked, Diagnostics, Reported};
use crate::config::locate::{child_index, child_key};
use crate::config::model::*;
use crate::config::raw::RawDns;

/// The DNS port, when a resolver is written without one.
const DNS_PORT: u16 = 53;

pub(super) fn resolve_dns(raw: Option<&RawDns>, diag: &mut Diagnostics<'_>) -> Checked<Dns> {
    let Some(raw) = raw else {
        return Ok(Dns::default());
    };
    let mut resolvers = Vec::new();
    let mut failed = false;
    for (index, text) in raw.resolvers.iter().flatten().enumerate() {
        let path = child_index("dns.resolvers", index);
        let parsed = text.parse::<SocketAddr>().ok().or_else(|| {
            text.parse::<IpAddr>()
                .ok()
                .map(|ip| SocketAddr::new(ip, DNS_PORT))
        });
        match parsed {
            Some(addr) if addr.port() != 0 && !addr.ip().is_unspecified() => resolvers.push(addr),
            _ => {
                diag.error(
                    path,
                    format!("{text:?}: expected a name server's IP or IP:port, e.g. 10.0.0.2 or 127.0.0.1:5353"),
                );
                failed = true;
            }
        }
    }
    if raw.resolvers.as_ref().is_some_and(Vec::is_empty) {
        diag.error(
            "dns.resolvers",
            "is empty; leave `resolvers` out to use the name servers of /etc/resolv.conf",
        );
        failed = true;
    }
    let timeout = resolve_duration(
        raw.timeout.as_ref(),
        "dns.timeout",
        DEFAULT_DNS_TIMEOUT,
        false,
        diag,
    );
    let interval = raw.resolve_interval.as_ref();
    let min = resolve_duration(
        interval.and_then(|i| i.min.as_ref()),
        "dns.resolve_interval.min",
        DEFAULT_RESOLVE_INTERVAL_MIN,
        false,
        diag,
    );
    let max = resolve_duration(
        interval.and_then(|i| i.max.as_ref()),
        "dns.resolve_interval.max",
        DEFAULT_RESOLVE_INTERVAL_MAX,
        false,
        diag,
    );
    let hold = resolve_duration(raw.hold.as_ref(), "dns.hold", DEFAULT_DNS_HOLD, true, diag);
    let (timeout, min, max, hold) = (timeout?, min?, max?, hold?);
    if min > max {
        diag.error(
            child_key("dns.resolve_interval", "min"),
            format!("{min:?} is above `max` ({max:?})"),
        );
        return Err(Reported);
    }
    if failed {
        return Err(Reported);
    }
    Ok(Dns {
        resolvers,
        timeout,
        interval_min: min,
        interval_max: max,
        hold,
    })
}

pub(super) fn resolve_state_file(
    raw: Option<&str>,
    diag: &mut Diagnostics<'_>,
) -> Checked<Option<PathBuf>> {
    match raw {
        None => Ok(None),
        Some(path) if path.trim().is_empty() => {
            diag.error(
                "state_file",
                "must not be empty; leave `state_file` out to keep no state across restarts",
            );
            Err(Reported)
        }
        Some(path) => Ok(Some(PathBuf::from(path))),
    }
}
