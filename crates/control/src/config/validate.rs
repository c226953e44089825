//! Stage two: checks the raw document and resolves it into the model, reporting every problem
//! it finds (not just the first) with its path and line, plus warnings for configs that work
//! but probably do not do what was meant.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::time::Duration;

use super::duration::parse_duration;
use super::locate::{child_index, child_key, Locator};
use super::model::*;
use super::raw::{
    Document, Item, OneOrMany, RawAdmin, RawDuration, RawHealthCheck, RawListener, RawPool,
    RawWorkers,
};

/// One problem in a config file. Errors and warnings share this type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: String,
    /// 1-based; `None` when the problem has no place in the text (e.g. a required top-level
    /// key that is absent).
    pub line: Option<usize>,
    /// 1-based.
    pub column: Option<usize>,
    /// Like `listeners[1].pool`; empty for the document as a whole (YAML syntax errors).
    pub path: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.file)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if !self.path.is_empty() {
            write!(f, ": {}", self.path)?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ConfigError {}

/// Collects errors and warnings, placing each one in the text.
pub struct Diagnostics<'a> {
    file: &'a str,
    locator: &'a Locator,
    pub errors: Vec<ConfigError>,
    pub warnings: Vec<ConfigError>,
}

impl<'a> Diagnostics<'a> {
    pub fn new(file: &'a str, locator: &'a Locator) -> Self {
        Diagnostics {
            file,
            locator,
            errors: Vec::new(),
            warnings: Vec::new(),
        }
    }

    /// An error at `path`, placed at the path or its nearest written parent.
    pub fn error(&mut self, path: impl Into<String>, message: impl Into<String>) {
        let error = self.make(path.into(), message.into());
        self.errors.push(error);
    }

    pub fn warning(&mut self, path: impl Into<String>, message: impl Into<String>) {
        let warning = self.make(path.into(), message.into());
        self.warnings.push(warning);
    }

    /// An error whose position is already known (serde_yaml's syntax errors).
    pub fn error_at(
        &mut self,
        path: impl Into<String>,
        line: Option<usize>,
        column: Option<usize>,
        message: impl Into<String>,
    ) {
        self.errors.push(ConfigError {
            file: self.file.to_owned(),
            line,
            column,
            path: path.into(),
            message: message.into(),
        });
    }

    fn make(&self, path: String, message: String) -> ConfigError {
        let position = self.locator.find(&path);
        ConfigError {
            file: self.file.to_owned(),
            line: position.map(|p| p.line),
            column: position.map(|p| p.column),
            path,
            message,
        }
    }

    pub fn locator(&self) -> &Locator {
        self.locator
    }

    fn has_error_at(&self, path: &str) -> bool {
        self.errors.iter().any(|e| e.path == path)
    }

    fn line_of(&self, path: &str) -> Option<usize> {
        self.locator.find(path).map(|p| p.line)
    }

    /// Puts errors and warnings in file order (those without a line last). The sort is stable,
    /// so problems at one place keep the order they were found in.
    pub fn sort(&mut self) {
        let key = |e: &ConfigError| (e.line.is_none(), e.line, e.column);
        self.errors.sort_by_key(key);
        self.warnings.sort_by_key(key);
    }
}

/// The message for values whose features are parsed but not built yet. Every key of the
/// design is built; a future key that is parsed before its feature lands must be refused with
/// this message rather than ignored.
pub const NOT_SUPPORTED_YET: &str = "not supported yet";

/// Most worker threads; more than this is a typo, not a machine.
pub const MAX_WORKERS: i64 = 1024;
/// Largest Maglev table. Each pool has its own, refilled on every backend change; far past a
/// few million entries the refill stalls the control plane for no gain in balance.
pub const MAX_MAGLEV_TABLE_SIZE: u64 = 1 << 22;
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
const PROTOCOLS: [(&str, Protocol); 2] = [("tcp", Protocol::Tcp), ("udp", Protocol::Udp)];
const PROBE_KINDS: [(&str, ProbeKind); 2] = [("tcp", ProbeKind::Tcp), ("udp", ProbeKind::Udp)];
const ON_BACKEND_DOWN: [(&str, OnBackendDown); 2] = [
    ("keep", OnBackendDown::Keep),
    ("close", OnBackendDown::Close),
];
const ADDRESS_EXAMPLE: &str = "expected IP:port, e.g. 10.0.0.1:5432 or [::1]:5432";

/// Marks a value whose error has already been reported.
pub(super) struct Reported;

pub(super) type Checked<T> = Result<T, Reported>;

/// Stage two. Returns the resolved config when neither stage found an error.
pub fn validate(doc: &Document, diag: &mut Diagnostics<'_>) -> Option<Config> {
    let admin = resolve_admin(doc.admin.as_ref(), diag);
    let workers = resolve_workers(doc.workers.as_ref(), diag);
    let drain_timeout = resolve_duration(
        doc.drain_timeout.as_ref(),
        "drain_timeout",
        DEFAULT_DRAIN_TIMEOUT,
        // Zero is meaningful here: close everything at once on SIGTERM.
        true,
        diag,
    );

    let pool_names = unique_names(&doc.pools, "pools", "pool", diag);
    let pools: Vec<Checked<Pool>> = parsed_items(&doc.pools)
        .map(|(index, pool)| resolve_pool(&child_index("pools", index), pool, diag))
        .collect();

    unique_names(&doc.listeners, "listeners", "listener", diag);
    let known_pools = KnownPools {
        names: pool_names,
        section_broken: diag.has_error_at("pools"),
        section_present: doc.pools.is_some(),
    };
    let listeners: Vec<Checked<Listener>> = parsed_items(&doc.listeners)
        .map(|(index, listener)| {
            resolve_listener(
                &child_index("listeners", index),
                listener,
                &known_pools,
                diag,
            )
        })
        .collect();

    let no_listeners = doc.listeners.as_ref().map_or(0, Vec::len) == 0;
    if no_listeners && !diag.has_error_at("listeners") {
        diag.error(
            "listeners",
            "no listeners defined; add at least one under `listeners:`",
        );
    }
    check_listen_conflicts(doc, diag);
    if let Ok(Some(admin)) = &admin {
        check_admin_conflicts(doc, admin.listen, diag);
    }
    check_probe_protocols(doc, diag);
    warn_unused_pools(doc, diag);

    let admin = admin.ok()?;
    let workers = workers.ok()?;
    let drain_timeout = drain_timeout.ok()?;
    let listeners: Vec<Listener> = listeners.into_iter().collect::<Result<_, _>>().ok()?;
    let pools: Vec<Pool> = pools.into_iter().collect::<Result<_, _>>().ok()?;
    if !diag.errors.is_empty() {
        return None;
    }
    Some(Config {
        admin,
        workers,
        drain_timeout,
        listeners,
        pools,
    })
}

fn parsed_items<T>(items: &Option<Vec<Item<T>>>) -> impl Iterator<Item = (usize, &T)> {
    items
        .iter()
        .flatten()
        .enumerate()
        .filter_map(|(index, item)| item.parsed().map(|parsed| (index, parsed)))
}

/// Names every item has, good or broken, or would have: used to judge references.
trait Named {
    fn name(&self) -> Option<&str>;
}

impl Named for RawListener {
    fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }
}

impl Named for RawPool {
    fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }
}

fn item_name<T: Named>(item: &Item<T>) -> Option<&str> {
    match item {
        Item::Parsed(parsed) => parsed.name(),
        Item::Broken { name } => name.as_deref(),
    }
}

/// Checks the `name` of every item (present, well-formed, unique) and returns all names seen.
fn unique_names<T: Named>(
    items: &Option<Vec<Item<T>>>,
    section: &str,
    what: &str,
    diag: &mut Diagnostics<'_>,
) -> Vec<String> {
    let mut first_seen: HashMap<&str, usize> = HashMap::new();
    let mut names = Vec::new();
    for (index, item) in items.iter().flatten().enumerate() {
        let path = child_key(&child_index(section, index), "name");
        let name = item_name(item);
        if let Item::Parsed(_) = item {
            match name {
                None => diag.error(&path, format!("missing `name`: every {what} needs one")),
                Some(name) => check_name_syntax(&path, name, diag),
            }
        }
        let Some(name) = name else { continue };
        names.push(name.to_owned());
        match first_seen.get(name) {
            Some(&first) => {
                let first_path = child_index(section, first);
                let place = match diag.line_of(&first_path) {
                    Some(line) => format!("{first_path}, line {line}"),
                    None => first_path,
                };
                diag.error(
                    path,
                    format!("duplicate {what} name {name:?} (first defined at {place})"),
                );
            }
            None => {
                first_seen.insert(name, index);
            }
        }
    }
    names
}

/// Names appear in metrics labels, log fields and admin API paths: keep them plain.
fn check_name_syntax(path: &str, name: &str, diag: &mut Diagnostics<'_>) {
    if name.is_empty() {
        diag.error(path, "name must not be empty");
    } else if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
    {
        diag.error(
            path,
            format!("{name:?}: names may contain only letters, digits, '_', '-' and '.'"),
        );
    }
}

fn resolve_workers(raw: Option<&RawWorkers>, diag: &mut Diagnostics<'_>) -> Checked<Workers> {
    match raw {
        None => Ok(Workers::Auto),
        Some(RawWorkers::Name(name)) if name == "auto" => Ok(Workers::Auto),
        Some(RawWorkers::Count(n)) if (1..=MAX_WORKERS).contains(n) => {
            usize::try_from(*n).map(Workers::Count).map_err(|_| {
                diag.error("workers", "does not fit this platform");
                Reported
            })
        }
        Some(RawWorkers::Count(n)) => {
            diag.error(
                "workers",
                format!("must be `auto` or a number from 1 to {MAX_WORKERS}, got {n}"),
            );
            Err(Reported)
        }
        Some(RawWorkers::Name(name)) => {
            diag.error(
                "workers",
                format!("must be `auto` or a number from 1 to {MAX_WORKERS}, got {name:?}"),
            );
            Err(Reported)
        }
    }
}

pub(super) fn resolve_duration(
    raw: Option<&RawDuration>,
    path: &str,
    default: Duration,
    zero_allowed: bool,
    diag: &mut Diagnostics<'_>,
) -> Checked<Duration> {
    let Some(RawDuration(text)) = raw else {
        return Ok(default);
    };
    match parse_duration(text) {
        Ok(duration) if duration.is_zero() && !zero_allowed => {
            diag.error(path, format!("{text:?}: must be greater than zero"));
            Err(Reported)
        }
        Ok(duration) => Ok(duration),
        Err(error) => {
            diag.error(path, error.to_string());
            Err(Reported)
        }
    }
}

/// An enumerated value: absent means the first choice; an unknown one is reported with the
/// closest valid spelling.
fn resolve_choice<T: Copy>(
    raw: Option<&str>,
    path: &str,
    what: &str,
    choices: &[(&str, T)],
    diag: &mut Diagnostics<'_>,
) -> Checked<T> {
    let found = match raw {
        None => choices.first(),
        Some(text) => choices.iter().find(|(name, _)| *name == text),
    };
    if let Some((_, value)) = found {
        return Ok(*value);
    }
    let names: Vec<&str> = choices.iter().map(|(name, _)| *name).collect();
    diag.error(path, unknown_value(what, raw.unwrap_or_default(), &names));
    Err(Reported)
}

/// A connection limit: absent means unlimited, and 0 would refuse everything.
fn resolve_limit(raw: Option<u64>, path: &str, diag: &mut Diagnostics<'_>) -> Checked<Option<u64>> {
    match raw {
        Some(0) => {
            diag.error(
                path,
                "must be at least 1; leave `max_connections` out for no limit",
            );
            Err(Reported)
        }
        other => Ok(other),
    }
}

pub(super) struct KnownPools {
    names: Vec<String>,
    /// `pools:` itself did not parse: every reference would look unknown.
    section_broken: bool,
    section_present: bool,
}

fn resolve_listener(
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

    let access =
        super::access::resolve_access(path, raw, protocol.as_ref().ok().copied(), pools, diag);
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
            if !ok {
                return Err(Reported);
            }
            Ok(Some(UdpOptions {
                idle_timeout: idle_timeout?,
                max_flows: max_flows?,
            }))
        }
    }
}

fn listen_path(listener_path: &str, item: Option<usize>) -> String {
    let listen = child_key(listener_path, "listen");
    match item {
        Some(index) => child_index(&listen, index),
        None => listen,
    }
}

pub(super) fn check_pool_reference(
    path: &str,
    name: &str,
    pools: &KnownPools,
    diag: &mut Diagnostics<'_>,
) -> Checked<String> {
    if pools.names.iter().any(|known| known == name) {
        return Ok(name.to_owned());
    }
    if !pools.section_broken {
        let mut message = format!("no pool named {name:?}");
        if let Some(suggestion) = did_you_mean(name, pools.names.iter().map(String::as_str)) {
            message.push_str(&format!("; did you mean {suggestion:?}?"));
        } else if !pools.section_present {
            message.push_str(" (there is no `pools:` section)");
        }
        diag.error(path, message);
    }
    Err(Reported)
}

fn resolve_pool(path: &str, raw: &RawPool, diag: &mut Diagnostics<'_>) -> Checked<Pool> {
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
            if raw.retries.is_some() && backend_count > 0 && r as usize > possible {
                diag.warning(
                    &retries_path,
                    format!(
                        "retries is {r} but the pool has {backend_count} backend(s), \
                         so at most {possible} retry(ies) can happen"
                    ),
                );
            }
            Ok(r)
        }
    };

    let passive = resolve_passive(path, raw, diag);
    let send_proxy = super::access::resolve_send_proxy(path, raw, diag);
    let health_check = match &raw.health_check {
        None => Ok(None),
        Some(check) => {
            resolve_health_check(&child_key(path, "health_check"), check, diag).map(Some)
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

    Ok(Pool {
        name: name?,
        algorithm: algorithm?,
        retries: retries?,
        passive: passive?,
        health_check: health_check?,
        on_backend_down: on_backend_down?,
        backends: backends?,
        send_proxy: send_proxy?,
    })
}

fn resolve_admin(raw: Option<&RawAdmin>, diag: &mut Diagnostics<'_>) -> Checked<Option<Admin>> {
    let Some(raw) = raw else {
        return Ok(None);
    };
    let listen = match raw.listen.as_deref() {
        None => Ok(DEFAULT_ADMIN_LISTEN),
        Some(text) => parse_address(text).map_err(|message| {
            diag.error("admin.listen", message);
            Reported
        }),
    };
    let token_file = match raw.token_file.as_deref() {
        None => Ok(None),
        Some(path) if path.trim().is_empty() => {
            diag.error(
                "admin.token_file",
                "must not be empty; leave `token_file` out for no token",
            );
            Err(Reported)
        }
        Some(path) => Ok(Some(std::path::PathBuf::from(path))),
    };
    let listen = listen?;
    let token_file = token_file?;
    if token_file.is_none() && !listen.ip().is_loopback() {
        diag.warning(
            "admin.listen",
            format!(
                "{listen} is reachable from other hosts and there is no `token_file`: anyone \
                 who reaches it can drain backends and reload the configuration"
            ),
        );
    }
    super::admin::resolve_admin_settings(raw, listen, token_file, diag).map(Some)
}

fn resolve_health_check(
    path: &str,
    raw: &RawHealthCheck,
    diag: &mut Diagnostics<'_>,
) -> Checked<HealthCheck> {
    let kind = resolve_choice(
        raw.kind.as_deref(),
        &child_key(path, "kind"),
        "health check kind",
        &PROBE_KINDS,
        diag,
    );
    let interval = resolve_duration(
        raw.interval.as_ref(),
        &child_key(path, "interval"),
        DEFAULT_HEALTH_INTERVAL,
        false,
        diag,
    );
    // Without a `timeout`, a short interval brings the default down with it rather than
    // failing a config that never mentioned a timeout.
    let default_timeout = match &interval {
        Ok(interval) => DEFAULT_HEALTH_TIMEOUT.min(*interval),
        Err(Reported) => DEFAULT_HEALTH_TIMEOUT,
    };
    let timeout_path = child_key(path, "timeout");
    let timeout = resolve_duration(
        raw.timeout.as_ref(),
        &timeout_path,
        default_timeout,
        false,
        diag,
    );
    if let (Ok(interval), Ok(timeout), Some(RawDuration(text))) =
        (&interval, &timeout, &raw.timeout)
    {
        if timeout > interval {
            diag.error(
                &timeout_path,
                format!(
                    "{text:?} is longer than the interval ({interval:?}); a probe must end \
                     before the next one starts"
                ),
            );
        }
    }
    let rise = resolve_count(raw.rise, DEFAULT_RISE, &child_key(path, "rise"), diag);
    let fall = resolve_count(raw.fall, DEFAULT_FALL, &child_key(path, "fall"), diag);
    let send = resolve_payload(
        path,
        "send",
        raw.send.as_deref(),
        raw.send_hex.as_deref(),
        diag,
    );
    let expect = resolve_payload(
        path,
        "expect",
        raw.expect.as_deref(),
        raw.expect_hex.as_deref(),
        diag,
    );
    if matches!(kind, Ok(ProbeKind::Udp)) && raw.send.is_none() && raw.send_hex.is_none() {
        diag.error(
            path,
            "a udp health check needs `send` or `send_hex`: the datagram that asks for a reply",
        );
        return Err(Reported);
    }
    let (interval, timeout) = (interval?, timeout?);
    if timeout > interval {
        return Err(Reported);
    }
    Ok(HealthCheck {
        kind: kind?,
        interval,
        timeout,
        rise: rise?,
        fall: fall?,
        send: send?,
        expect: expect?,
    })
}

/// `rise` or `fall`: consecutive probe results, 1..=MAX_RISE_FALL.
fn resolve_count(
    raw: Option<u32>,
    default: u32,
    path: &str,
    diag: &mut Diagnostics<'_>,
) -> Checked<u32> {
    match raw.unwrap_or(default) {
        n if (1..=MAX_RISE_FALL).contains(&n) => Ok(n),
        n => {
            diag.error(
                path,
                format!("must be between 1 and {MAX_RISE_FALL} consecutive probes, got {n}"),
            );
            Err(Reported)
        }
    }
}

/// A probe payload given as text (`send`) or as hex bytes (`send_hex`), never both.
fn resolve_payload(
    path: &str,
    key: &str,
    text: Option<&str>,
    hex: Option<&str>,
    diag: &mut Diagnostics<'_>,
) -> Checked<Option<Vec<u8>>> {
    let hex_key = format!("{key}_hex");
    let (bytes, at) = match (text, hex) {
        (None, None) => return Ok(None),
        (Some(_), Some(_)) => {
            diag.error(
                child_key(path, &hex_key),
                format!("give `{key}` (text) or `{hex_key}` (bytes), not both"),
            );
            return Err(Reported);
        }
        (Some(text), None) => (text.as_bytes().to_vec(), child_key(path, key)),
        (None, Some(hex)) => {
            let at = child_key(path, &hex_key);
            match parse_hex(hex) {
                Ok(bytes) => (bytes, at),
                Err(message) => {
                    diag.error(at, message);
                    return Err(Reported);
                }
            }
        }
    };
    if bytes.is_empty() {
        diag.error(at, format!("empty; leave `{key}` out instead"));
        return Err(Reported);
    }
    if bytes.len() > MAX_PROBE_BYTES {
        diag.error(
            at,
            format!(
                "{} bytes is too long for a probe; at most {MAX_PROBE_BYTES}",
                bytes.len()
            ),
        );
        return Err(Reported);
    }
    Ok(Some(bytes))
}

/// Hex digits, two per byte; whitespace between bytes is ignored (`"2b 50 4f 4e 47"`).
fn parse_hex(text: &str) -> Result<Vec<u8>, String> {
    let mut bytes = Vec::with_capacity(text.len() / 2);
    let mut high: Option<u8> = None;
    for (position, c) in text.chars().enumerate() {
        if c.is_ascii_whitespace() && high.is_none() {
            continue;
        }
        let Some(digit) = c.to_digit(16).and_then(|d| u8::try_from(d).ok()) else {
            return Err(format!(
                "{text:?}: {c:?} at character {} is not a hex digit (0-9, a-f)",
                position + 1
            ));
        };
        match high.take() {
            None => high = Some(digit),
            Some(h) => bytes.push(h << 4 | digit),
        }
    }
    if high.is_some() {
        return Err(format!(
            "{text:?}: odd number of hex digits; each byte takes two"
        ));
    }
    Ok(bytes)
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

fn resolve_backends(
    pool_path: &str,
    raw: &RawPool,
    diag: &mut Diagnostics<'_>,
) -> Checked<Vec<Backend>> {
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
    let mut backends = Vec::new();
    let mut failed = false;
    for (index, backend) in raw_backends.iter().enumerate() {
        let path = child_index(&backends_path, index);
        let address_path = child_key(&path, "address");
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

        let weight = match backend.weight {
            None => Ok(1),
            Some(w) if (1..=MAX_WEIGHT).contains(&w) => Ok(w),
            Some(w) => {
                diag.error(
                    child_key(&path, "weight"),
                    format!("weight must be between 1 and {MAX_WEIGHT}, got {w}"),
                );
                Err(Reported)
            }
        };
        let max_connections = resolve_limit(
            backend.max_connections,
            &child_key(&path, "max_connections"),
            diag,
        );
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
        Ok(backends)
    }
}

/// Parses `IP:port` / `[v6]:port`, explaining what is wrong when it is not one.
fn parse_address(text: &str) -> Result<SocketAddr, String> {
    if let Ok(address) = text.parse::<SocketAddr>() {
        return Ok(address);
    }
    match text.parse::<IpAddr>() {
        Ok(IpAddr::V4(_)) => return Err(format!("{text:?}: missing port; {ADDRESS_EXAMPLE}")),
        // `::1:5432` is itself a valid IPv6 address, so the port may well be in there.
        Ok(IpAddr::V6(_)) => {
            return Err(format!(
                "{text:?}: missing port (IPv6 addresses need brackets); {ADDRESS_EXAMPLE}"
            ))
        }
        Err(_) => {}
    }
    if let Some((host, port)) = text.rsplit_once(':') {
        let port_ok = port.parse::<u16>().is_ok();
        let bare_host = host.trim_start_matches('[').trim_end_matches(']');
        if bare_host.parse::<std::net::Ipv6Addr>().is_ok() && !host.starts_with('[') {
            return Err(format!(
                "{text:?}: IPv6 addresses need brackets; {ADDRESS_EXAMPLE}"
            ));
        }
        if bare_host.parse::<IpAddr>().is_ok() && !port_ok {
            return Err(format!(
                "{text:?}: invalid port {port:?} (0-65535); {ADDRESS_EXAMPLE}"
            ));
        }
        if port_ok && looks_like_hostname(host) {
            return Err(format!(
                "{text:?}: a host name is not taken here (only backend addresses may be \
                 names); {ADDRESS_EXAMPLE}"
            ));
        }
    } else if looks_like_hostname(text) {
        return Err(format!(
            "{text:?}: a host name needs a port, and only backend addresses may be names; \
             {ADDRESS_EXAMPLE}"
        ));
    }
    Err(format!("{text:?}: {ADDRESS_EXAMPLE}"))
}

fn parse_backend_address(text: &str) -> Result<SocketAddr, String> {
    parse_backend_address_with(text, resolve_host)
}

/// A backend's host name through getaddrinfo(3): /etc/hosts, then the system's DNS, which in
/// Docker and Kubernetes answers service names. Only the loader calls it (start, `check`,
/// reload), never the data plane.
fn resolve_host(host: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
    (host, port).to_socket_addrs().map(Iterator::collect)
}

/// `IP:port`, or `host:port` resolved with `resolve` the way HAProxy's `init-addr libc` and
/// nginx do it: once, when the config is loaded, so a reload picks up a changed address and
/// a name that does not resolve fails the load (the running config keeps serving). Of several
/// addresses the first IPv4 one is taken, else the first: `localhost` then means 127.0.0.1,
/// where most test and sidecar backends listen, whatever order the resolver returns.
fn parse_backend_address_with(
    text: &str,
    resolve: impl FnOnce(&str, u16) -> io::Result<Vec<SocketAddr>>,
) -> Result<SocketAddr, String> {
    let address = match parse_address(text) {
        Ok(address) => address,
        Err(message) => {
            let Some((host, port)) = host_and_port(text) else {
                return Err(message);
            };
            let addresses = resolve(host, port)
                .map_err(|e| format!("{text:?}: cannot resolve host name {host:?}: {e}"))?;
            let first_v4 = addresses.iter().find(|a| a.is_ipv4()).copied();
            first_v4
                .or_else(|| addresses.first().copied())
                .ok_or_else(|| format!("{text:?}: host name {host:?} has no address"))?
        }
    };
    if address.port() == 0 {
        return Err(format!("{text:?}: port 0 cannot be connected to"));
    }
    if address.ip().is_unspecified() {
        return Err(format!(
            "{text:?}: {} is a wildcard address and cannot be connected to",
            address.ip()
        ));
    }
    Ok(address)
}

/// `host:port` with a host name and a valid port. A host name has a letter and no `:`, so
/// it is never an IP address.
fn host_and_port(text: &str) -> Option<(&str, u16)> {
    let (host, port) = text.rsplit_once(':')?;
    let port = port.parse::<u16>().ok()?;
    looks_like_hostname(host).then_some((host, port))
}

fn looks_like_hostname(text: &str) -> bool {
    !text.is_empty()
        && text.chars().any(|c| c.is_ascii_alphabetic())
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
}

/// Addresses two listeners cannot both bind. Port 0 picks a fresh port on every bind, so it
/// never conflicts.
fn check_listen_conflicts(doc: &Document, diag: &mut Diagnostics<'_>) {
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

/// True when binding both addresses would fail: the same address, or a wildcard of the same
/// family and port as the other.
fn overlaps(a: SocketAddr, b: SocketAddr) -> bool {
    if a.port() != b.port() || a.is_ipv4() != b.is_ipv4() {
        return false;
    }
    a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified()
}

/// The admin server binds its own socket, without SO_REUSEPORT: it cannot share a listener's.
fn check_admin_conflicts(doc: &Document, admin: SocketAddr, diag: &mut Diagnostics<'_>) {
    if admin.port() == 0 {
        return;
    }
    for (index, listener) in parsed_items(&doc.listeners) {
        let Some(listen) = &listener.listen else {
            continue;
        };
        for (item, text) in listen.entries() {
            match parse_address(text) {
                Ok(address) if overlaps(address, admin) => {
                    let at = listen_path(&child_index("listeners", index), item);
                    diag.error(
                        "admin.listen",
                        format!("{admin} is also the address of {at}"),
                    );
                    return;
                }
                _ => {}
            }
        }
    }
}

/// A UDP probe sent to a backend that only TCP listeners use asks a port that is not there:
/// every backend would be marked down.
fn check_probe_protocols(doc: &Document, diag: &mut Diagnostics<'_>) {
    for (index, pool) in parsed_items(&doc.pools) {
        let udp_probe = pool
            .health_check
            .as_ref()
            .is_some_and(|check| check.kind.as_deref() == Some("udp"));
        let Some(name) = pool.name.as_deref() else {
            continue;
        };
        if !udp_probe {
            continue;
        }
        let protocols: Vec<&str> = parsed_items(&doc.listeners)
            .filter(|(_, l)| l.pool.as_deref() == Some(name))
            .map(|(_, l)| l.protocol.as_deref().unwrap_or("tcp"))
            .collect();
        if !protocols.is_empty() && !protocols.contains(&"udp") {
            diag.error(
                child_key(
                    &child_key(&child_index("pools", index), "health_check"),
                    "kind",
                ),
                format!(
                    "pool {name:?} serves only TCP listeners, so a udp probe would find no \
                     one at its backends' ports; use `kind: tcp`"
                ),
            );
        }
    }
}

fn warn_unused_pools(doc: &Document, diag: &mut Diagnostics<'_>) {
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

/// `unknown <what> "x" (did you mean "y"?); expected one of: a, b, c`.
fn unknown_value(what: &str, value: &str, valid: &[&str]) -> String {
    let mut message = format!("unknown {what} {value:?}");
    if let Some(suggestion) = did_you_mean(value, valid.iter().copied()) {
        message.push_str(&format!(" (did you mean {suggestion:?}?)"));
    }
    message.push_str(&format!("; expected one of: {}", valid.join(", ")));
    message
}

/// The candidate closest to `word`, if it is close enough to be a typo of it.
fn did_you_mean<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    const MAX_DISTANCE: usize = 2;
    let word_len = word.chars().count();
    candidates
        .into_iter()
        .map(|candidate| (edit_distance(word, candidate), candidate))
        // A distance as long as the words themselves is a different word, not a typo.
        .filter(|(distance, candidate)| {
            *distance <= MAX_DISTANCE && *distance < word_len.max(candidate.chars().count())
        })
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, candidate)| candidate)
}

/// Levenshtein distance, ignoring ASCII case.
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().map(|c| c.to_ascii_lowercase()).collect();
    let b: Vec<char> = b.chars().map(|c| c.to_ascii_lowercase()).collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    let mut current = vec![0; b.len() + 1];
    for (i, ca) in a.iter().enumerate() {
        current[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitution = previous[j] + usize::from(ca != cb);
            current[j + 1] = substitution.min(previous[j + 1] + 1).min(current[j] + 1);
        }
        std::mem::swap(&mut previous, &mut current);
    }
    previous[b.len()]
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
    fn edit_distances() {
        assert_eq!(edit_distance("pg", "pgg"), 1);
        assert_eq!(edit_distance("maglv", "maglev"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("Round_Robin", "round_robin"), 0);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }

    #[test]
    fn suggestions() {
        assert_eq!(did_you_mean("pgg", ["pg", "web"]), Some("pg"));
        assert_eq!(did_you_mean("wbe", ["pg", "web"]), Some("web"));
        assert_eq!(did_you_mean("x", ["pg", "web"]), None);
        assert_eq!(did_you_mean("zz", ["pg"]), None);
        assert_eq!(did_you_mean("anything", std::iter::empty()), None);
    }

    #[test]
    fn hex_payloads() {
        assert_eq!(parse_hex("2b504f4e47").unwrap(), b"+PONG");
        assert_eq!(parse_hex("2B 50 4f\t4E 47\n").unwrap(), b"+PONG");
        assert_eq!(parse_hex("").unwrap(), b"");
        assert!(parse_hex("2b5").unwrap_err().contains("odd number"));
        let message = parse_hex("2bzz").unwrap_err();
        assert!(message.contains("'z' at character 3"), "{message}");
        // Whitespace inside a byte is a typo, not a separator.
        assert!(parse_hex("2 b").is_err());
    }

    #[test]
    fn primes() {
        assert!(is_prime(65537));
        assert!(is_prime(2));
        assert!(!is_prime(1));
        assert!(!is_prime(0));
        assert!(!is_prime(65536));
        assert_eq!(next_prime(1000), Some(1009));
    }

    #[test]
    fn addresses() {
        assert!(parse_address("10.0.0.1:5432").is_ok());
        assert!(parse_address("[::1]:5432").is_ok());
        let cases = [
            ("10.0.0.1", "missing port"),
            ("::1", "missing port"),
            ("::1:5432", "IPv6 addresses need brackets"),
            ("fe80::1::2:80", ADDRESS_EXAMPLE),
            ("10.0.0.1:99999", "invalid port"),
            ("db.internal:5432", "only backend addresses may be names"),
            ("localhost", "a host name needs a port"),
            ("10.0.0.1:", "invalid port"),
            ("", ADDRESS_EXAMPLE),
            ("10.0.0.300:80", ADDRESS_EXAMPLE),
        ];
        for (text, expected) in cases {
            let message = parse_address(text).unwrap_err();
            assert!(message.contains(expected), "{text}: {message}");
            assert!(message.contains(ADDRESS_EXAMPLE), "{text}: {message}");
        }
        assert!(parse_backend_address("10.0.0.1:0")
            .unwrap_err()
            .contains("port 0"));
        assert!(parse_backend_address("0.0.0.0:80")
            .unwrap_err()
            .contains("wildcard"));
    }

    #[test]
    fn backend_host_names_resolve_at_load_preferring_ipv4() {
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        let both = |host: &str, port: u16| {
            assert_eq!(host, "db.internal");
            Ok(vec![
                SocketAddr::new("fd00::5".parse().unwrap(), port),
                SocketAddr::new("10.0.0.5".parse().unwrap(), port),
            ])
        };
        assert_eq!(
            parse_backend_address_with("db.internal:5432", both),
            Ok(a("10.0.0.5:5432"))
        );
        let v6 = |_: &str, port: u16| Ok(vec![SocketAddr::new("fd00::5".parse().unwrap(), port)]);
        assert_eq!(
            parse_backend_address_with("db.internal:5432", v6),
            Ok(a("[fd00::5]:5432"))
        );
        let unknown = |_: &str, _: u16| Err(io::Error::other("Name or service not known"));
        let message = parse_backend_address_with("nope.internal:5432", unknown).unwrap_err();
        assert!(
            message.contains("cannot resolve host name \"nope.internal\"")
                && message.contains("Name or service not known"),
            "{message}"
        );
        let none = |_: &str, _: u16| Ok(Vec::new());
        assert!(parse_backend_address_with("db.internal:5432", none)
            .unwrap_err()
            .contains("has no address"));
        let never = |_: &str, _: u16| -> io::Result<Vec<SocketAddr>> {
            panic!("an IP address or a bad port is never resolved")
        };
        assert_eq!(
            parse_backend_address_with("10.0.0.1:5432", never),
            Ok(a("10.0.0.1:5432"))
        );
        for bad in [
            "db.internal",
            "db.internal:99999",
            "db.internal:",
            "db internal:80",
        ] {
            assert!(parse_backend_address_with(bad, never).is_err(), "{bad}");
        }
        assert!(parse_backend_address_with("db.internal:0", both)
            .unwrap_err()
            .contains("port 0"));
        // /etc/hosts, no DNS: the system resolver on any Linux machine.
        assert_eq!(
            parse_backend_address("localhost:5432"),
            Ok(a("127.0.0.1:5432"))
        );
    }

    #[test]
    fn overlapping_addresses() {
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert!(overlaps(a("0.0.0.0:80"), a("10.0.0.1:80")));
        assert!(overlaps(a("10.0.0.1:80"), a("0.0.0.0:80")));
        assert!(overlaps(a("[::]:80"), a("[::1]:80")));
        assert!(!overlaps(a("0.0.0.0:80"), a("[::]:80")));
        assert!(!overlaps(a("0.0.0.0:80"), a("0.0.0.0:81")));
        assert!(!overlaps(a("10.0.0.1:80"), a("10.0.0.2:80")));
    }

    #[test]
    fn display() {
        let mut error = ConfigError {
            file: "b.yaml".into(),
            line: Some(7),
            column: Some(5),
            path: "listeners[1].pool".into(),
            message: "no pool named \"pgg\"".into(),
        };
        assert_eq!(
            error.to_string(),
            "b.yaml:7: listeners[1].pool: no pool named \"pgg\""
        );
        error.line = None;
        error.path.clear();
        assert_eq!(error.to_string(), "b.yaml: no pool named \"pgg\"");
    }
}
