//! A pool's active `health_check`: probe kind, timing, rise and fall, the probe payloads, and
//! probes that could never reach the backends' listeners.

use std::time::Duration;

use super::common::{parsed_items, resolve_choice, resolve_duration};
use crate::config::diagnostic::{Checked, Diagnostics, Reported};
use crate::config::locate::{child_index, child_key};
use crate::config::model::*;
use crate::config::raw::{
    Document, RawAgentCheck, RawDuration, RawExpectStatus, RawHealthCheck, RawStatus,
};

const PROBE_KINDS: [(&str, ProbeKind); 6] = [
    ("tcp", ProbeKind::Tcp),
    ("udp", ProbeKind::Udp),
    ("http", ProbeKind::Http),
    ("redis", ProbeKind::Redis),
    ("postgres", ProbeKind::Postgres),
    ("mysql", ProbeKind::Mysql),
];

/// The first is the default.
const REDIS_ROLES: [(&str, RedisRole); 3] = [
    ("any", RedisRole::Any),
    ("master", RedisRole::Master),
    ("replica", RedisRole::Replica),
];

/// The first is the default.
const POSTGRES_ROLES: [(&str, PostgresRole); 3] = [
    ("any", PostgresRole::Any),
    ("primary", PostgresRole::Primary),
    ("replica", PostgresRole::Replica),
];

/// The first is the default.
const MYSQL_ROLES: [(&str, MysqlRole); 3] = [
    ("any", MysqlRole::Any),
    ("writable", MysqlRole::Writable),
    ("read_only", MysqlRole::ReadOnly),
];

const HTTP_METHODS: [(&str, HttpMethod); 2] =
    [("GET", HttpMethod::Get), ("HEAD", HttpMethod::Head)];

pub(super) fn resolve_health_check(
    path: &str,
    raw: &RawHealthCheck,
    pool_proxy: Option<ProxyVersion>,
    diag: &mut Diagnostics<'_>,
) -> Checked<HealthCheck> {
    let kind = resolve_choice(
        raw.kind.as_deref(),
        &child_key(path, "kind"),
        "health check kind",
        &PROBE_KINDS,
        diag,
    );
    let timing = resolve_timing(
        path,
        (raw.interval.as_ref(), raw.timeout.as_ref()),
        (DEFAULT_HEALTH_INTERVAL, DEFAULT_HEALTH_TIMEOUT),
        diag,
    );
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
    let port = resolve_port(raw.port, &child_key(path, "port"), diag);
    let address = resolve_check_address(raw.address.as_deref(), &child_key(path, "address"), diag);
    if let Ok(kind) = kind {
        refuse_foreign_keys(path, kind, raw, diag);
        if let Some(why) = own_request(kind) {
            refuse_payloads(path, raw, why, diag);
        }
    }
    let http = match kind {
        Ok(ProbeKind::Http) => resolve_http(path, raw, diag).map(Some),
        _ => Ok(None),
    };
    let redis = match kind {
        Ok(ProbeKind::Redis) => resolve_redis(path, raw, diag).map(Some),
        _ => Ok(None),
    };
    let postgres = match kind {
        Ok(ProbeKind::Postgres) => resolve_postgres(path, raw, diag).map(Some),
        _ => Ok(None),
    };
    let mysql = match kind {
        Ok(ProbeKind::Mysql) => resolve_mysql(path, raw, diag).map(Some),
        _ => Ok(None),
    };
    let proxy = match kind {
        Ok(kind) => resolve_check_proxy(path, raw.send_proxy, pool_proxy, kind, diag),
        Err(Reported) => Ok(None),
    };
    let agent = match (&raw.agent, &timing) {
        (Some(agent), Ok(timing)) => {
            resolve_agent(&child_key(path, "agent"), agent, *timing, diag).map(Some)
        }
        (Some(_), Err(Reported)) => Err(Reported),
        (None, _) => Ok(None),
    };
    if matches!(kind, Ok(ProbeKind::Udp)) && raw.send.is_none() && raw.send_hex.is_none() {
        diag.error(
            path,
            "a udp health check needs `send` or `send_hex`: the datagram that asks for a reply",
        );
        return Err(Reported);
    }
    let (interval, timeout) = timing?;
    Ok(HealthCheck {
        kind: kind?,
        interval,
        timeout,
        rise: rise?,
        fall: fall?,
        send: send?,
        expect: expect?,
        port: port?,
        address: address?,
        http: http?,
        redis: redis?,
        postgres: postgres?,
        mysql: mysql?,
        agent: agent?,
        proxy: proxy?,
    })
}

/// `send_proxy`: whether the probes carry the pool's PROXY header (on by default where the
/// pool sends one, since a backend that requires the header refuses a probe without it).
fn resolve_check_proxy(
    path: &str,
    wanted: Option<bool>,
    pool_proxy: Option<ProxyVersion>,
    kind: ProbeKind,
    diag: &mut Diagnostics<'_>,
) -> Checked<Option<ProxyVersion>> {
    let at = child_key(path, "send_proxy");
    if wanted == Some(true) && pool_proxy.is_none() {
        diag.warning(
            &at,
            "has no effect: the pool sends no PROXY header (`send_proxy_protocol`)",
        );
    }
    let proxy = if wanted.unwrap_or(true) {
        pool_proxy
    } else {
        None
    };
    match (kind, proxy) {
        (ProbeKind::Mysql, Some(_)) => {
            diag.error(
                &at,
                "a mysql check cannot start with a PROXY header: its client (mysql_async) opens \
                 the connection itself. Set `send_proxy: false` and let the server accept the \
                 prober's address without a header, or use a `tcp`/`http` check",
            );
            Err(Reported)
        }
        // PROXY over UDP exists in v2 only (and so does the pool's datagram header).
        (ProbeKind::Udp, Some(ProxyVersion::V1)) => Ok(None),
        _ => Ok(proxy),
    }
}

/// `agent`: its port is required (an agent never answers on the data port); its timing
/// defaults to the regular check's.
fn resolve_agent(
    path: &str,
    raw: &RawAgentCheck,
    check_timing: (Duration, Duration),
    diag: &mut Diagnostics<'_>,
) -> Checked<AgentCheck> {
    let port = match raw.port {
        None => {
            diag.error(
                path,
                "an agent check needs `port`: where the agent listens (HAProxy's `agent-port`)",
            );
            Err(Reported)
        }
        Some(_) => resolve_port(raw.port, &child_key(path, "port"), diag),
    };
    let address = resolve_check_address(raw.address.as_deref(), &child_key(path, "address"), diag);
    let timing = resolve_timing(
        path,
        (raw.interval.as_ref(), raw.timeout.as_ref()),
        check_timing,
        diag,
    );
    let send = resolve_payload(path, "send", raw.send.as_deref(), None, diag);
    let (interval, timeout) = timing?;
    Ok(AgentCheck {
        port: port?.unwrap_or(1),
        address: address?,
        interval,
        timeout,
        send: send?,
    })
}

/// `interval` and `timeout` (each given or its default). Without a `timeout`, a short
/// interval brings the default down with it rather than failing a config that never
/// mentioned a timeout; a given one longer than the interval is an error.
fn resolve_timing(
    path: &str,
    (interval, timeout): (Option<&RawDuration>, Option<&RawDuration>),
    (default_interval, default_timeout): (Duration, Duration),
    diag: &mut Diagnostics<'_>,
) -> Checked<(Duration, Duration)> {
    let interval_checked = resolve_duration(
        interval,
        &child_key(path, "interval"),
        default_interval,
        false,
        diag,
    );
    let default_timeout = match &interval_checked {
        Ok(interval) => default_timeout.min(*interval),
        Err(Reported) => default_timeout,
    };
    let timeout_path = child_key(path, "timeout");
    let timeout_checked = resolve_duration(timeout, &timeout_path, default_timeout, false, diag);
    let (interval, timeout_value) = (interval_checked?, timeout_checked?);
    if timeout_value > interval {
        let text = timeout
            .map(|RawDuration(text)| text.as_str())
            .unwrap_or_default();
        diag.error(
            &timeout_path,
            format!(
                "{text:?} is longer than the interval ({interval:?}); a probe must end \
                 before the next one starts"
            ),
        );
        return Err(Reported);
    }
    Ok((interval, timeout_value))
}

/// `port`: the check's own port at the backend's IP, 1..=65535.
fn resolve_port(raw: Option<i64>, path: &str, diag: &mut Diagnostics<'_>) -> Checked<Option<u16>> {
    match raw {
        None => Ok(None),
        Some(n) => match u16::try_from(n) {
            Ok(port) if port >= 1 => Ok(Some(port)),
            _ => {
                diag.error(path, format!("must be a port between 1 and 65535, got {n}"));
                Err(Reported)
            }
        },
    }
}

/// `address`: an IP literal, the probes' destination instead of each backend's IP. A name
/// would need resolving like a backend's, and a port belongs in `port`, so both are refused
/// with a message that says where they go.
fn resolve_check_address(
    raw: Option<&str>,
    path: &str,
    diag: &mut Diagnostics<'_>,
) -> Checked<Option<std::net::IpAddr>> {
    let Some(text) = raw else {
        return Ok(None);
    };
    let bare = text
        .strip_prefix('[')
        .and_then(|t| t.strip_suffix(']'))
        .unwrap_or(text);
    match bare.parse::<std::net::IpAddr>() {
        Ok(ip) => Ok(Some(ip)),
        Err(_) => {
            let hint = if text.parse::<std::net::SocketAddr>().is_ok() {
                "an IP address without a port; put the port in `port`"
            } else {
                "an IP address, e.g. 10.0.0.9 or fd00::9"
            };
            diag.error(path, format!("{text:?} is not {hint}"));
            Err(Reported)
        }
    }
}

const HTTP: &[ProbeKind] = &[ProbeKind::Http];
const LOGIN: &[ProbeKind] = &[ProbeKind::Redis, ProbeKind::Postgres, ProbeKind::Mysql];
const SQL: &[ProbeKind] = &[ProbeKind::Postgres, ProbeKind::Mysql];

/// The keys only some kinds read, by name, each with whether it was given and which kinds
/// read it.
fn kind_keys(raw: &RawHealthCheck) -> [(&'static str, bool, &'static [ProbeKind]); 11] {
    [
        ("method", raw.method.is_some(), HTTP),
        ("path", raw.path.is_some(), HTTP),
        ("host", raw.host.is_some(), HTTP),
        ("expect_status", raw.expect_status.is_some(), HTTP),
        ("expect_body", raw.expect_body.is_some(), HTTP),
        ("tls", raw.tls.is_some(), HTTP),
        ("sni", raw.sni.is_some(), HTTP),
        ("role", raw.role.is_some(), LOGIN),
        ("password_file", raw.password_file.is_some(), LOGIN),
        ("user", raw.user.is_some(), SQL),
        ("database", raw.database.is_some(), &[ProbeKind::Postgres]),
    ]
}

/// Each given key that a `kind: kind` check does not read, named with the kinds that do.
fn refuse_foreign_keys(
    path: &str,
    kind: ProbeKind,
    raw: &RawHealthCheck,
    diag: &mut Diagnostics<'_>,
) {
    for (key, given, owners) in kind_keys(raw) {
        if given && !owners.contains(&kind) {
            diag.error(
                child_key(path, key),
                format!(
                    "applies only to {}; this check is `kind: {}`",
                    kind_list(owners),
                    kind.as_str()
                ),
            );
        }
    }
}

/// "`kind: a`", "`kind: a` or `kind: b`", "`kind: a`, `kind: b` or `kind: c`".
fn kind_list(kinds: &[ProbeKind]) -> String {
    let names: Vec<String> = kinds
        .iter()
        .map(|k| format!("`kind: {}`", k.as_str()))
        .collect();
    match names.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} or {last}", rest.join(", ")),
        _ => names.concat(),
    }
}

/// Why `send`/`expect` do not apply to `kind`, when it writes its own request.
fn own_request(kind: ProbeKind) -> Option<&'static str> {
    match kind {
        ProbeKind::Tcp | ProbeKind::Udp => None,
        ProbeKind::Http => Some(
            "applies only to `kind: tcp` and `kind: udp`; an http check sends its own \
             request: use `path`, `expect_status` and `expect_body`",
        ),
        ProbeKind::Redis => Some(
            "applies only to `kind: tcp` and `kind: udp`; a redis check sends its own \
             commands (`AUTH`, `ROLE`): use `role` and `password_file`",
        ),
        ProbeKind::Postgres => Some(
            "applies only to `kind: tcp` and `kind: udp`; a postgres check logs in and asks \
             `pg_is_in_recovery()`: use `user`, `password_file`, `database` and `role`",
        ),
        ProbeKind::Mysql => Some(
            "applies only to `kind: tcp` and `kind: udp`; a mysql check logs in and asks \
             `@@global.read_only`: use `user`, `password_file` and `role`",
        ),
    }
}

/// `send`, `expect` and their hex forms on a kind that writes its own request.
fn refuse_payloads(path: &str, raw: &RawHealthCheck, why: &str, diag: &mut Diagnostics<'_>) {
    let payloads = [
        ("send", raw.send.is_some()),
        ("send_hex", raw.send_hex.is_some()),
        ("expect", raw.expect.is_some()),
        ("expect_hex", raw.expect_hex.is_some()),
    ];
    for (key, given) in payloads {
        if given {
            diag.error(child_key(path, key), why);
        }
    }
}

fn resolve_redis(
    path: &str,
    raw: &RawHealthCheck,
    diag: &mut Diagnostics<'_>,
) -> Checked<RedisCheck> {
    let role = resolve_choice(
        raw.role.as_deref(),
        &child_key(path, "role"),
        "redis role",
        &REDIS_ROLES,
        diag,
    );
    let password = resolve_password(path, raw, diag);
    Ok(RedisCheck {
        role: role?,
        password: password?,
    })
}

fn resolve_password(
    path: &str,
    raw: &RawHealthCheck,
    diag: &mut Diagnostics<'_>,
) -> Checked<Option<Secret>> {
    match raw.password_file.as_deref() {
        None => Ok(None),
        Some(file) => read_password(file, &child_key(path, "password_file"), diag).map(Some),
    }
}

fn resolve_postgres(
    path: &str,
    raw: &RawHealthCheck,
    diag: &mut Diagnostics<'_>,
) -> Checked<PostgresCheck> {
    let role = resolve_choice(
        raw.role.as_deref(),
        &child_key(path, "role"),
        "postgres role",
        &POSTGRES_ROLES,
        diag,
    );
    let user = resolve_user(
        path,
        raw,
        "a postgres check needs `user`: the role it logs in as (HAProxy's `pgsql-check user`)",
        diag,
    );
    let database = match raw.database.as_deref() {
        None => Ok(None),
        Some(name) => {
            login_name(name, &child_key(path, "database"), diag).map(|n| Some(n.to_owned()))
        }
    };
    let password = resolve_password(path, raw, diag);
    Ok(PostgresCheck {
        user: user?,
        password: password?,
        database: database?,
        role: role?,
    })
}

fn resolve_mysql(
    path: &str,
    raw: &RawHealthCheck,
    diag: &mut Diagnostics<'_>,
) -> Checked<MysqlCheck> {
    let role = resolve_choice(
        raw.role.as_deref(),
        &child_key(path, "role"),
        "mysql role",
        &MYSQL_ROLES,
        diag,
    );
    let user = resolve_user(
        path,
        raw,
        "a mysql check needs `user`: the account it logs in as (HAProxy's `mysql-check user`)",
        diag,
    );
    let password = resolve_password(path, raw, diag);
    Ok(MysqlCheck {
        user: user?,
        password: password?,
        role: role?,
    })
}

/// `user`, which the SQL kinds need; `missing` says so when it is left out.
fn resolve_user(
    path: &str,
    raw: &RawHealthCheck,
    missing: &str,
    diag: &mut Diagnostics<'_>,
) -> Checked<String> {
    match raw.user.as_deref() {
        None => {
            diag.error(path, missing);
            Err(Reported)
        }
        Some(user) => login_name(user, &child_key(path, "user"), diag).map(str::to_owned),
    }
}

/// A user or database name for a login: not empty, no NUL (the startup message is made of
/// NUL-terminated strings), and short.
fn login_name<'a>(text: &'a str, at: &str, diag: &mut Diagnostics<'_>) -> Checked<&'a str> {
    if text.is_empty() || text.contains('\0') || text.len() > 256 {
        diag.error(
            at,
            format!("{text:?} is not a name: 1 to 256 bytes, no NUL"),
        );
        return Err(Reported);
    }
    Ok(text)
}

/// The first line of the file at `file`, read now so that a missing or empty file fails the
/// load rather than every probe. The password itself is in no message.
fn read_password(file: &str, at: &str, diag: &mut Diagnostics<'_>) -> Checked<Secret> {
    if file.is_empty() {
        diag.error(at, "must be a path; leave `password_file` out for no AUTH");
        return Err(Reported);
    }
    let text = match std::fs::read_to_string(file) {
        Ok(text) => text,
        Err(error) => {
            diag.error(at, format!("cannot read {file:?}: {error}"));
            return Err(Reported);
        }
    };
    let first = text.lines().next().unwrap_or_default();
    if first.is_empty() {
        diag.error(
            at,
            format!("{file:?} is empty; its first line must be the password"),
        );
        return Err(Reported);
    }
    Ok(Secret::new(first.to_owned()))
}

fn resolve_http(
    path: &str,
    raw: &RawHealthCheck,
    diag: &mut Diagnostics<'_>,
) -> Checked<HttpCheck> {
    let method = resolve_choice(
        raw.method.as_deref(),
        &child_key(path, "method"),
        "http check method",
        &HTTP_METHODS,
        diag,
    );
    let request_path = match raw.path.as_deref() {
        None => Ok("/".to_owned()),
        Some(text) => {
            let at = child_key(path, "path");
            if !text.starts_with('/') {
                diag.error(at, format!("{text:?} must start with `/`"));
                Err(Reported)
            } else {
                request_token(text, &at, diag).map(str::to_owned)
            }
        }
    };
    let host = match raw.host.as_deref() {
        None => Ok(None),
        Some("") => {
            diag.error(
                child_key(path, "host"),
                "empty; leave `host` out to send the probed address",
            );
            Err(Reported)
        }
        Some(text) => {
            request_token(text, &child_key(path, "host"), diag).map(|h| Some(h.to_owned()))
        }
    };
    let expect_status = match &raw.expect_status {
        None => Ok(ExpectStatus(vec![DEFAULT_EXPECT_STATUS])),
        Some(RawExpectStatus::One(status)) => {
            resolve_status(status, &child_key(path, "expect_status"), diag)
                .map(|range| ExpectStatus(vec![range]))
        }
        Some(RawExpectStatus::List(items)) => {
            let at = child_key(path, "expect_status");
            if items.is_empty() {
                diag.error(at, "empty list; leave `expect_status` out for 200-399");
                Err(Reported)
            } else {
                let ranges: Vec<Checked<StatusRange>> = items
                    .iter()
                    .enumerate()
                    .map(|(i, item)| resolve_status(item, &child_index(&at, i), diag))
                    .collect();
                ranges
                    .into_iter()
                    .collect::<Checked<Vec<_>>>()
                    .map(ExpectStatus)
            }
        }
    };
    let expect_body = match raw.expect_body.as_deref() {
        None => Ok(None),
        Some(text) => {
            let at = child_key(path, "expect_body");
            if matches!(method, Ok(HttpMethod::Head)) {
                diag.error(
                    at,
                    "a HEAD response has no body to look in; use `method: GET` or leave \
                     `expect_body` out",
                );
                Err(Reported)
            } else if text.is_empty() {
                diag.error(at, "empty; leave `expect_body` out instead");
                Err(Reported)
            } else if text.len() > MAX_PROBE_BYTES {
                diag.error(
                    at,
                    format!(
                        "{} bytes is too long to look for; at most {MAX_PROBE_BYTES}",
                        text.len()
                    ),
                );
                Err(Reported)
            } else {
                Ok(Some(text.to_owned()))
            }
        }
    };
    let tls = match (raw.tls, raw.sni.as_deref()) {
        (Some(true), None) => Ok(Some(TlsCheck { sni: None })),
        (Some(true), Some(sni)) if crate::health::tls::valid_sni(sni) => Ok(Some(TlsCheck {
            sni: Some(sni.to_ascii_lowercase()),
        })),
        (Some(true), Some(sni)) => {
            diag.error(
                child_key(path, "sni"),
                format!(
                    "{sni:?} is not a server name TLS can send: a DNS name such as api.example.com"
                ),
            );
            Err(Reported)
        }
        (_, Some(_)) => {
            diag.error(child_key(path, "sni"), "applies only with `tls: true`");
            Err(Reported)
        }
        (_, None) => Ok(None),
    };
    Ok(HttpCheck {
        method: method?,
        path: request_path?,
        host: host?,
        expect_status: expect_status?,
        expect_body: expect_body?,
        tls: tls?,
    })
}

/// Text that goes into the request line or a header as is: no whitespace or control
/// characters (they would split the request), and short.
fn request_token<'a>(text: &'a str, at: &str, diag: &mut Diagnostics<'_>) -> Checked<&'a str> {
    if let Some(c) = text.chars().find(|c| c.is_whitespace() || c.is_control()) {
        diag.error(
            at,
            format!(
                "{text:?} contains {c:?}; spaces and control characters would break the request"
            ),
        );
        return Err(Reported);
    }
    if text.len() > MAX_PROBE_BYTES {
        diag.error(
            at,
            format!(
                "{} bytes is too long; at most {MAX_PROBE_BYTES}",
                text.len()
            ),
        );
        return Err(Reported);
    }
    Ok(text)
}

/// One `expect_status` entry: a code, or `low-high`, each code within 100..=599.
fn resolve_status(raw: &RawStatus, at: &str, diag: &mut Diagnostics<'_>) -> Checked<StatusRange> {
    let parsed = match raw {
        RawStatus::Code(n) => status_code(&n.to_string()).map(|code| StatusRange {
            low: code,
            high: code,
        }),
        RawStatus::Text(text) => parse_status_range(text),
    };
    parsed.map_err(|message| {
        diag.error(at, message);
        Reported
    })
}

fn status_code(text: &str) -> Result<u16, String> {
    match text.trim().parse::<u16>() {
        Ok(code) if (100..=599).contains(&code) => Ok(code),
        _ => Err(format!("{text:?} is not an HTTP status code (100-599)")),
    }
}

/// `"200"` or `"200-399"`.
fn parse_status_range(text: &str) -> Result<StatusRange, String> {
    let Some((low, high)) = text.split_once('-') else {
        return status_code(text).map(|code| StatusRange {
            low: code,
            high: code,
        });
    };
    let (low, high) = (status_code(low)?, status_code(high)?);
    if low > high {
        return Err(format!(
            "{text:?}: the range runs backwards; write the lower code first"
        ));
    }
    Ok(StatusRange { low, high })
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

/// A UDP probe sent to a backend that only TCP listeners use asks a port that is not there:
/// every backend would be marked down.
pub(super) fn check_probe_protocols(doc: &Document, diag: &mut Diagnostics<'_>) {
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn status_ranges() {
        assert_eq!(
            parse_status_range("200-399").unwrap(),
            StatusRange {
                low: 200,
                high: 399
            }
        );
        assert_eq!(
            parse_status_range(" 204 ").unwrap(),
            StatusRange {
                low: 204,
                high: 204
            }
        );
        assert!(parse_status_range("399-200")
            .unwrap_err()
            .contains("backwards"));
        assert!(parse_status_range("200-600")
            .unwrap_err()
            .contains("100-599"));
        assert!(parse_status_range("2xx")
            .unwrap_err()
            .contains("not an HTTP status"));
        assert!(parse_status_range("-").is_err());
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
}
