//! A pool: its algorithm and the algorithm's options, retries, passive health,
//! `on_backend_down`, `slow_start`, its backends, and pools no listener uses.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use super::access::resolve_send_proxy;
use super::address::{discovery_name, parse_backend_address, ADDRESS_EXAMPLE};
use super::common::{parsed_items, resolve_choice, resolve_duration, resolve_limit, unknown_value};
use super::health::resolve_health_check;
use super::MAX_MAGLEV_TABLE_SIZE;
use crate::config::diagnostic::{Checked, Diagnostics, Reported};
use crate::config::locate::{child_index, child_key};
use crate::config::model::*;
use crate::config::raw::{Document, Item, RawBackend, RawPool};

/// Maglev spreads load evenly only when the table is much larger than the backend count.
const MAGLEV_SLOTS_PER_BACKEND: usize = 100;

const ALGORITHMS: [&str; 6] = [
    "round_robin",
    "least_connections",
    "random",
    "power_of_two",
    "least_time",
    "maglev",
];
/// The spellings of each enumerated key; the first is the default.
const HASH_KEYS: [(&str, HashKey); 2] = [
    ("source_ip", HashKey::SourceIp),
    ("five_tuple", HashKey::FiveTuple),
];
const TIME_METRICS: [(&str, TimeMetric); 2] = [
    ("connect", TimeMetric::Connect),
    ("first_byte", TimeMetric::FirstByte),
];
const ON_BACKEND_DOWN: [(&str, OnBackendDown); 2] = [
    ("keep", OnBackendDown::Keep),
    ("close", OnBackendDown::Close),
];

pub(super) fn resolve_pool(path: &str, raw: &RawPool, diag: &mut Diagnostics<'_>) -> Checked<Pool> {
    let name = raw.name.clone().ok_or(Reported);
    let backends = resolve_backends(path, raw, diag);
    let backend_count = raw.backends.as_ref().map_or(0, Vec::len);
    let algorithm = resolve_algorithm(path, raw, backend_count, diag);

    let retries_path = child_key(path, "retries");
    let retries = match raw.retries.unwrap_or(DEFAULT_RETRIES) {
        r if r > MAX_RETRIES => {
            diag.error(
                &retries_path,
                format!("{r} is too many; at most {MAX_RETRIES}"),
            );
            Err(Reported)
        }
        r => {
            // One backend is the first try; each retry needs another, untried one.
            let possible = backend_count.saturating_sub(1);
            // The default is only worth a word when no retry can ever happen: warning on
            // every two-backend pool for a setting nobody wrote would be noise.
            let written = raw.retries.is_some();
            let warn = if written {
                r as usize > possible
            } else {
                possible == 0 && r > 0
            };
            if backend_count > 0 && warn {
                let default = if written { "" } else { " (the default)" };
                diag.warning(
                    &retries_path,
                    format!(
                        "retries is {r}{default} but the pool has {backend_count} backend(s), \
                         so at most {possible} retry(ies) can happen"
                    ),
                );
            }
            Ok(r)
        }
    };

    let passive = resolve_passive(path, raw, diag);
    let send_proxy = resolve_send_proxy(path, raw, diag);
    let health_check = match &raw.health_check {
        None => Ok(None),
        Some(check) => {
            let pool_proxy = send_proxy.as_ref().ok().copied().flatten();
            resolve_health_check(&child_key(path, "health_check"), check, pool_proxy, diag)
                .map(Some)
        }
    };
    let on_backend_down = resolve_choice(
        raw.on_backend_down.as_deref(),
        &child_key(path, "on_backend_down"),
        "on_backend_down",
        &ON_BACKEND_DOWN,
        diag,
    );
    if raw.on_backend_down.as_deref() == Some("close") && raw.health_check.is_none() {
        diag.warning(
            child_key(path, "on_backend_down"),
            "has no effect without a `health_check`: only active checks close sessions",
        );
    }

    let slow_start = resolve_slow_start(path, raw, diag);
    let queue = resolve_queue(path, raw, diag);
    let backend_tcp = super::tcp::resolve_tcp_options(
        path,
        raw.keepalive.as_ref(),
        raw.user_timeout.as_ref(),
        diag,
    );
    let backends = backends?;

    Ok(Pool {
        name: name?,
        algorithm: algorithm?,
        retries: retries?,
        passive: passive?,
        health_check: health_check?,
        on_backend_down: on_backend_down?,
        slow_start: slow_start?,
        backends: backends.0,
        discover: backends.1,
        send_proxy: send_proxy?,
        queue: queue?,
        backend_tcp: backend_tcp?,
    })
}

/// `queue`: `max` at least 1, `timeout` above zero; a warning where no backend has a
/// `max_connections`, since then no session ever waits.
fn resolve_queue(
    pool_path: &str,
    raw: &RawPool,
    diag: &mut Diagnostics<'_>,
) -> Checked<Option<QueueSettings>> {
    let Some(queue) = raw.queue.as_ref() else {
        return Ok(None);
    };
    let path = child_key(pool_path, "queue");
    let max = match queue.max {
        None => Ok(DEFAULT_QUEUE_MAX),
        Some(0) => {
            diag.error(
                child_key(&path, "max"),
                "must be at least 1; leave `queue` out to refuse instead of queueing",
            );
            Err(Reported)
        }
        Some(n) if n > MAX_QUEUE_MAX => {
            diag.error(
                child_key(&path, "max"),
                format!("{n} is too many; at most {MAX_QUEUE_MAX}"),
            );
            Err(Reported)
        }
        Some(n) => Ok(usize::try_from(n).unwrap_or(usize::MAX)),
    };
    let timeout = resolve_duration(
        queue.timeout.as_ref(),
        &child_key(&path, "timeout"),
        DEFAULT_QUEUE_TIMEOUT,
        false,
        diag,
    );
    let limited = raw
        .backends
        .iter()
        .flatten()
        .any(|b| b.max_connections.is_some());
    if !limited {
        diag.warning(
            &path,
            "has no effect: sessions wait only when every usable backend is at its \
             `max_connections`, and no backend of this pool has one",
        );
    }
    Ok(Some(QueueSettings {
        max: max?,
        timeout: timeout?,
    }))
}

/// `slow_start`, with a warning where it can change nothing: slow start shifts new sessions
/// between the backends of one tier, and a tier of one has nobody to shift them to.
fn resolve_slow_start(
    pool_path: &str,
    raw: &RawPool,
    diag: &mut Diagnostics<'_>,
) -> Checked<Option<Duration>> {
    let Some(written) = raw.slow_start.as_ref() else {
        return Ok(None);
    };
    let path = child_key(pool_path, "slow_start");
    let window = resolve_duration(Some(written), &path, Duration::ZERO, true, diag)?;
    let backends = raw.backends.iter().flatten();
    let backups = backends.clone().filter(|b| b.backup == Some(true)).count();
    let primaries = backends.count() - backups;
    if !window.is_zero() && primaries <= 1 && backups <= 1 {
        diag.warning(
            path,
            "has no effect here: slow start moves new sessions from a recovering backend to the \
             other backends of its tier (primaries or backups), and no tier of this pool has \
             two, so a backend that comes back takes all of its tier's sessions at once",
        );
    }
    Ok((!window.is_zero()).then_some(window))
}

/// `None` when passive health is turned off with `max_fails: 0`.
fn resolve_passive(
    pool_path: &str,
    raw: &RawPool,
    diag: &mut Diagnostics<'_>,
) -> Checked<Option<PassivePolicy>> {
    let Some(passive) = &raw.passive else {
        return Ok(Some(DEFAULT_PASSIVE));
    };
    let path = child_key(pool_path, "passive");
    let timeout_path = child_key(&path, "fail_timeout");
    let max_fails = passive.max_fails.unwrap_or(DEFAULT_PASSIVE.max_fails);
    if max_fails == 0 {
        if passive.fail_timeout.is_some() {
            diag.warning(
                timeout_path,
                "ignored: `max_fails: 0` turns passive health checks off",
            );
        }
        return Ok(None);
    }
    let fail_timeout = resolve_duration(
        passive.fail_timeout.as_ref(),
        &timeout_path,
        DEFAULT_PASSIVE.fail_timeout,
        false,
        diag,
    )?;
    Ok(Some(PassivePolicy {
        max_fails,
        fail_timeout,
    }))
}

fn resolve_algorithm(
    pool_path: &str,
    raw: &RawPool,
    backend_count: usize,
    diag: &mut Diagnostics<'_>,
) -> Checked<Algorithm> {
    let algorithm_path = child_key(pool_path, "algorithm");
    let name = raw.algorithm.as_deref().unwrap_or("round_robin");
    let known = ALGORITHMS.contains(&name);
    if !known {
        diag.error(
            &algorithm_path,
            unknown_value("algorithm", name, &ALGORITHMS),
        );
    }

    let hash_key_path = child_key(pool_path, "hash_key");
    let hash_key = resolve_choice(
        raw.hash_key.as_deref(),
        &hash_key_path,
        "hash_key",
        &HASH_KEYS,
        diag,
    );

    let metric_path = child_key(pool_path, "time_metric");
    let metric = resolve_choice(
        raw.time_metric.as_deref(),
        &metric_path,
        "time_metric",
        &TIME_METRICS,
        diag,
    );

    let table_path = child_key(pool_path, "table_size");
    let table_size = match raw.table_size {
        None => Ok(DEFAULT_MAGLEV_TABLE_SIZE),
        Some(size) if size > MAX_MAGLEV_TABLE_SIZE => {
            diag.error(
                &table_path,
                format!("{size} is too large; at most {MAX_MAGLEV_TABLE_SIZE}"),
            );
            Err(Reported)
        }
        Some(size) if !is_prime(size) => {
            let hint = next_prime(size)
                .map(|p| format!(", e.g. {p}"))
                .unwrap_or_default();
            diag.error(
                &table_path,
                format!("{size} is not prime; Maglev needs a prime table size{hint}"),
            );
            Err(Reported)
        }
        Some(size) => usize::try_from(size).map_err(|_| {
            diag.error(&table_path, "does not fit this platform");
            Reported
        }),
    };

    // Options of another algorithm are a sign the user expects behaviour they will not get.
    if known {
        let misplaced = [
            ("hash_key", raw.hash_key.is_some(), "maglev"),
            ("table_size", raw.table_size.is_some(), "maglev"),
            ("time_metric", raw.time_metric.is_some(), "least_time"),
        ];
        for (key, present, owner) in misplaced {
            if present && name != owner {
                diag.error(
                    child_key(pool_path, key),
                    format!("`{key}` only applies to `algorithm: {owner}` (this pool uses {name})"),
                );
            }
        }
    }

    if name == "maglev" {
        if let Ok(size) = table_size {
            let wanted = backend_count.saturating_mul(MAGLEV_SLOTS_PER_BACKEND);
            if size < wanted {
                let at = if raw.table_size.is_some() {
                    table_path
                } else {
                    algorithm_path
                };
                diag.warning(
                    at,
                    format!(
                        "Maglev table size {size} is below {MAGLEV_SLOTS_PER_BACKEND} × \
                         {backend_count} backends; load will spread unevenly"
                    ),
                );
            }
        }
    }

    // Values of options that do not apply were still checked above: fail on those too.
    let (hash_key, metric, table_size) = (hash_key?, metric?, table_size?);
    let algorithm = match name {
        "round_robin" => Algorithm::RoundRobin,
        "least_connections" => Algorithm::LeastConnections,
        "random" => Algorithm::Random,
        "power_of_two" => Algorithm::PowerOfTwo,
        "least_time" => Algorithm::LeastTime { metric },
        "maglev" => Algorithm::Maglev {
            hash_key,
            table_size,
        },
        _ => return Err(Reported),
    };
    Ok(algorithm)
}

const RESOLVE: [(&str, Resolve); 2] = [
    ("first", Resolve::First),
    ("every_record", Resolve::EveryRecord),
];

/// A backend entry with `resolve:` or an SRV name: checked here, looked up at run time.
/// `None` when the entry is a fixed address (then `resolve_backends` checks it).
fn resolve_discover(
    path: &str,
    backend: &RawBackend,
    weight: Checked<u32>,
    max_connections: Checked<Option<u64>>,
    diag: &mut Diagnostics<'_>,
) -> Option<Checked<Discover>> {
    let text = backend.address.as_deref()?;
    let name = discovery_name(text);
    let srv = matches!(name, Some((_, None)));
    if backend.resolve.is_none() && !srv {
        if backend.max.is_some() {
            diag.error(
                child_key(path, "max"),
                "only applies to a name with `resolve: every_record` or an SRV name",
            );
        }
        return None;
    }
    let resolve_path = child_key(path, "resolve");
    let Some((host, port)) = name else {
        diag.error(
            &resolve_path,
            format!(
                "{text:?} is not a name to resolve; `resolve` takes `host:port` or an SRV                  name such as _redis._tcp.example.internal"
            ),
        );
        return Some(Err(Reported));
    };
    let default = if srv { "every_record" } else { "first" };
    let resolve = resolve_choice(
        Some(backend.resolve.as_deref().unwrap_or(default)),
        &resolve_path,
        "resolve",
        &RESOLVE,
        diag,
    );
    if srv && backend.weight.is_some() {
        diag.error(
            child_key(path, "weight"),
            "an SRV name's weights come from its records; leave `weight` out",
        );
    }
    let max_path = child_key(path, "max");
    let max = match (resolve, backend.max) {
        (Ok(Resolve::First), Some(_)) => {
            diag.error(
                &max_path,
                "`resolve: first` gives one backend; leave `max` out",
            );
            Err(Reported)
        }
        (Ok(Resolve::First), None) => Ok(1),
        (_, None) => Ok(DEFAULT_DISCOVER_MAX),
        (_, Some(max)) if (1..=MAX_DISCOVER_MAX).contains(&max) => {
            usize::try_from(max).map_err(|_| Reported)
        }
        (_, Some(max)) => {
            diag.error(
                &max_path,
                format!("must be between 1 and {MAX_DISCOVER_MAX}, got {max}"),
            );
            Err(Reported)
        }
    };
    let checked = (|| {
        Ok(Discover {
            name: host.to_ascii_lowercase(),
            port,
            resolve: resolve?,
            max: max?,
            weight: weight?,
            backup: backend.backup.unwrap_or(false),
            max_connections: max_connections?,
        })
    })();
    if srv && backend.weight.is_some() {
        return Some(Err(Reported));
    }
    Some(checked)
}

fn resolve_weight(raw: Option<u32>, path: &str, diag: &mut Diagnostics<'_>) -> Checked<u32> {
    match raw {
        None => Ok(1),
        Some(w) if (1..=MAX_WEIGHT).contains(&w) => Ok(w),
        Some(w) => {
            diag.error(
                child_key(path, "weight"),
                format!("weight must be between 1 and {MAX_WEIGHT}, got {w}"),
            );
            Err(Reported)
        }
    }
}

fn resolve_backends(
    pool_path: &str,
    raw: &RawPool,
    diag: &mut Diagnostics<'_>,
) -> Checked<(Vec<Backend>, Vec<Discover>)> {
    let backends_path = child_key(pool_path, "backends");
    let raw_backends = raw.backends.as_deref().unwrap_or_default();
    if raw_backends.is_empty() {
        let name = raw.name.as_deref().unwrap_or("this pool");
        diag.error(
            &backends_path,
            format!("pool {name:?} has no backends; list at least one under `backends:`"),
        );
        return Err(Reported);
    }

    let mut first_seen: HashMap<SocketAddr, usize> = HashMap::new();
    let mut names_seen: HashMap<String, usize> = HashMap::new();
    let mut backends = Vec::new();
    let mut discover = Vec::new();
    let mut failed = false;
    for (index, backend) in raw_backends.iter().enumerate() {
        let path = child_index(&backends_path, index);
        let address_path = child_key(&path, "address");
        let weight = resolve_weight(backend.weight, &path, diag);
        let max_connections = resolve_limit(
            backend.max_connections,
            &child_key(&path, "max_connections"),
            diag,
        );
        if let Some(name) = resolve_discover(&path, backend, weight, max_connections, diag) {
            match name {
                Ok(name) => {
                    if let Some(first) = names_seen.insert(name.label(), index) {
                        diag.error(
                            &address_path,
                            format!(
                                "{} is already listed in this pool at backends[{first}]",
                                name.label()
                            ),
                        );
                        failed = true;
                    }
                    discover.push(name);
                }
                Err(Reported) => failed = true,
            }
            continue;
        }
        let address = match backend.address.as_deref() {
            None => {
                diag.error(
                    &address_path,
                    format!("missing `address`; {ADDRESS_EXAMPLE}"),
                );
                Err(Reported)
            }
            Some(text) => parse_backend_address(text).map_err(|message| {
                diag.error(&address_path, message);
                Reported
            }),
        };
        if let Ok(address) = address {
            if let Some(first) = first_seen.insert(address, index) {
                diag.error(
                    &address_path,
                    format!("{address} is already listed in this pool at backends[{first}]"),
                );
                first_seen.insert(address, first);
                failed = true;
            }
        }

        match (address, weight, max_connections) {
            (Ok(address), Ok(weight), Ok(max_connections)) => backends.push(Backend {
                address,
                weight,
                backup: backend.backup.unwrap_or(false),
                max_connections,
            }),
            _ => failed = true,
        }
    }

    if raw_backends.iter().all(|b| b.backup == Some(true)) {
        diag.warning(
            &backends_path,
            "every backend is a backup, so backups are used as primaries",
        );
    }
    if failed {
        Err(Reported)
    } else {
        Ok((backends, discover))
    }
}

pub(super) fn warn_unused_pools(doc: &Document, diag: &mut Diagnostics<'_>) {
    let referenced: Vec<&str> = parsed_items(&doc.listeners)
        .flat_map(|(_, l)| {
            let tls = l.tls_passthrough.as_ref();
            let routes = tls
                .and_then(|t| t.routes.as_ref())
                .into_iter()
                .flatten()
                .filter_map(|r| r.pool.as_deref());
            let default = tls.and_then(|t| t.default_pool.as_deref());
            l.pool.as_deref().into_iter().chain(default).chain(routes)
        })
        .collect();
    // A broken listener may have been the user; stay quiet rather than guess.
    let any_broken = doc
        .listeners
        .iter()
        .flatten()
        .any(|l| matches!(l, Item::Broken { .. }));
    if any_broken {
        return;
    }
    for (index, pool) in parsed_items(&doc.pools) {
        if let Some(name) = pool.name.as_deref() {
            if !referenced.contains(&name) {
                diag.warning(
                    child_key(&child_index("pools", index), "name"),
                    format!("pool {name:?} is not used by any listener"),
                );
            }
        }
    }
}

/// Trial division is plenty: sizes are capped at [`MAX_MAGLEV_TABLE_SIZE`].
// `u64::is_multiple_of` needs Rust 1.87; the workspace targets 1.80.
#[allow(clippy::manual_is_multiple_of)]
fn is_prime(n: u64) -> bool {
    if n < 2 {
        return false;
    }
    let mut divisor = 2;
    while divisor <= n / divisor {
        if n % divisor == 0 {
            return false;
        }
        divisor += 1;
    }
    true
}

fn next_prime(n: u64) -> Option<u64> {
    (n.max(2)..=MAX_MAGLEV_TABLE_SIZE).find(|&c| is_prime(c))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn primes() {
        assert!(is_prime(65537));
        assert!(is_prime(2));
        assert!(!is_prime(1));
        assert!(!is_prime(0));
        assert!(!is_prime(65536));
        assert_eq!(next_prime(1000), Some(1009));
    }
}
