//! Stage one: the YAML text as serde structs, every key of the config file spelled out.
//!
//! Nearly every field is an `Option` so that a missing key is reported by validation with a
//! precise message instead of serde's `missing field`, and so that one absent key does not stop
//! the rest of the item from being checked. Enumerated values (`algorithm`, `protocol`, ...) are
//! plain strings here for the same reason: validation can then suggest the closest valid name.
//! Unknown keys are refused everywhere (`deny_unknown_fields`), and keys whose features are not
//! built yet are accepted here and refused by validation, never dropped.

use std::collections::HashSet;
use std::fmt;

use serde::de::{self, DeserializeOwned, Deserializer, IgnoredAny, Visitor};
use serde::Deserialize;

use super::diagnostic::Diagnostics;
use super::locate::child_index;
use super::yaml::{self, Kind, Node};

/// The whole file. Generic over the item types so stage one can hold items that failed to
/// deserialize (see [`Document`]) while tests and tools can read a file in one go as
/// `RawConfig` (= `RawConfig<RawListener, RawPool>`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping of top-level settings")]
pub struct RawConfig<L = RawListener, P = RawPool> {
    pub admin: Option<RawAdmin>,
    pub workers: Option<RawWorkers>,
    pub drain_timeout: Option<RawDuration>,
    pub grace: Option<RawDuration>,
    pub listeners: Option<Vec<L>>,
    pub pools: Option<Vec<P>>,
    pub fastpath: Option<RawFastpath>,
    pub dns: Option<RawDns>,
    pub state_file: Option<String>,
    pub access_log: Option<RawAccessLog>,
}

/// `access_log:`, the lines of each TCP session and where they go.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a mapping with `at_connect`, `interval`, and `file` or `syslog`"
)]
pub struct RawAccessLog {
    pub at_connect: Option<bool>,
    pub interval: Option<RawDuration>,
    pub file: Option<String>,
    pub syslog: Option<RawSyslog>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a mapping with `address`, `facility` and/or `tag`"
)]
pub struct RawSyslog {
    pub address: Option<String>,
    pub facility: Option<String>,
    pub tag: Option<String>,
}

impl<L, P> RawConfig<L, P> {
    fn empty() -> Self {
        RawConfig {
            admin: None,
            workers: None,
            drain_timeout: None,
            grace: None,
            listeners: None,
            pools: None,
            fastpath: None,
            access_log: None,
            dns: None,
            state_file: None,
        }
    }
}

/// Stage one's output: items keep their position in the file even when they did not
/// deserialize, so paths like `pools[3]` stay true.
pub type Document = RawConfig<Item<RawListener>, Item<RawPool>>;

/// One listener or pool entry.
#[derive(Debug, Clone, PartialEq)]
pub enum Item<T> {
    Parsed(T),
    /// Its errors are already reported. The name, when readable, keeps references to this item
    /// from being reported as unknown as well.
    Broken {
        name: Option<String>,
    },
}

impl<T> Item<T> {
    pub fn parsed(&self) -> Option<&T> {
        match self {
            Item::Parsed(item) => Some(item),
            Item::Broken { .. } => None,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a mapping of admin settings (`listen`, `token_file`, ...)"
)]
pub struct RawAdmin {
    pub listen: Option<String>,
    pub token_file: Option<String>,
    pub allowed_hosts: Option<Vec<String>>,
    pub max_connections: Option<u64>,
    pub header_timeout: Option<RawDuration>,
    pub idle_timeout: Option<RawDuration>,
}

/// `fastpath:`, the kernel fast path.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a mapping of fast path settings (`socket_lb`, `udp_offload`)"
)]
pub struct RawFastpath {
    pub socket_lb: Option<RawSocketLb>,
    pub udp_offload: Option<RawUdpOffload>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a mapping with `interfaces` and/or `mode`"
)]
pub struct RawUdpOffload {
    pub interfaces: Option<Vec<String>>,
    pub mode: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a mapping with `cgroup` and/or `mode`"
)]
pub struct RawSocketLb {
    pub cgroup: Option<String>,
    pub mode: Option<String>,
}

/// `workers: auto` or `workers: 4`.
///
/// Hand-written rather than `#[serde(untagged)]`: untagged enums lose the error's position
/// and path, and replace its message with a vague one.
#[derive(Debug, Clone, PartialEq)]
pub enum RawWorkers {
    Count(i64),
    Name(String),
}

impl<'de> Deserialize<'de> for RawWorkers {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct WorkersVisitor;

        impl Visitor<'_> for WorkersVisitor {
            type Value = RawWorkers;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("`auto` or a number of threads")
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<RawWorkers, E> {
                Ok(RawWorkers::Count(v))
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<RawWorkers, E> {
                i64::try_from(v)
                    .map(RawWorkers::Count)
                    .map_err(|_| E::invalid_value(de::Unexpected::Unsigned(v), &self))
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawWorkers, E> {
                Ok(RawWorkers::Name(v.to_owned()))
            }
        }

        deserializer.deserialize_any(WorkersVisitor)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a listener: a mapping with name, listen and pool"
)]
pub struct RawListener {
    pub name: Option<String>,
    pub protocol: Option<String>,
    pub listen: Option<OneOrMany>,
    pub pool: Option<String>,
    pub max_connections: Option<u64>,
    pub timeouts: Option<RawTimeouts>,
    pub allow: Option<Vec<String>>,
    pub deny: Option<Vec<String>>,
    pub accept_proxy_protocol: Option<RawAcceptProxyProtocol>,
    pub tls_passthrough: Option<RawTlsPassthrough>,
    pub udp: Option<RawUdp>,
    pub max_connections_per_source: Option<u64>,
    pub new_connections_per_second_per_source: Option<u64>,
    pub shared_port: Option<bool>,
    pub fastpath: Option<String>,
    pub keepalive: Option<RawKeepalive>,
    pub user_timeout: Option<RawDuration>,
}

/// `listeners[].keepalive` and `pools[].keepalive`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a mapping with `idle`, `interval` and/or `count`"
)]
pub struct RawKeepalive {
    pub idle: Option<RawDuration>,
    pub interval: Option<RawDuration>,
    pub count: Option<u64>,
}

/// A value that may be written alone or as a list (`listen`, `alpn`).
///
/// Hand-written for the same reason as [`RawWorkers`]; a bad list item is reported at its
/// own index this way.
#[derive(Debug, Clone, PartialEq)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl<'de> Deserialize<'de> for OneOrMany {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct OneOrManyVisitor;

        impl<'de> Visitor<'de> for OneOrManyVisitor {
            type Value = OneOrMany;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string or a list of strings")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<OneOrMany, E> {
                Ok(OneOrMany::One(v.to_owned()))
            }

            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<OneOrMany, A::Error> {
                let mut values = Vec::new();
                while let Some(value) = seq.next_element::<String>()? {
                    values.push(value);
                }
                Ok(OneOrMany::Many(values))
            }
        }

        deserializer.deserialize_any(OneOrManyVisitor)
    }
}

impl OneOrMany {
    /// The values with the path suffix each one is reported under: none for a lone value,
    /// `[i]` for list items.
    pub fn entries(&self) -> Vec<(Option<usize>, &str)> {
        match self {
            OneOrMany::One(value) => vec![(None, value.as_str())],
            OneOrMany::Many(values) => values
                .iter()
                .enumerate()
                .map(|(i, value)| (Some(i), value.as_str()))
                .collect(),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a mapping with `connect`, `idle`, `max_lifetime` and/or `max_lifetime_jitter`"
)]
pub struct RawTimeouts {
    pub connect: Option<RawDuration>,
    pub idle: Option<RawDuration>,
    pub max_lifetime: Option<RawDuration>,
    pub max_lifetime_jitter: Option<RawDuration>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a mapping with `trusted` and `timeout`"
)]
pub struct RawAcceptProxyProtocol {
    pub trusted: Option<Vec<String>>,
    pub timeout: Option<RawDuration>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a mapping with `routes`, `default_pool` and `peek_timeout`"
)]
pub struct RawTlsPassthrough {
    pub routes: Option<Vec<RawSniRoute>>,
    pub default_pool: Option<String>,
    pub peek_timeout: Option<RawDuration>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a route: a mapping with `sni`, `pool` and `alpn`"
)]
pub struct RawSniRoute {
    pub sni: Option<String>,
    pub pool: Option<String>,
    pub alpn: Option<OneOrMany>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a mapping with `idle_timeout`, `max_flows`, `responses`, `reply_timeout`, `retries`, `per_datagram`, `new_flows_per_second_per_source` and `datagrams_per_second_per_flow`"
)]
pub struct RawUdp {
    pub idle_timeout: Option<RawDuration>,
    pub max_flows: Option<u64>,
    pub responses: Option<u64>,
    pub reply_timeout: Option<RawDuration>,
    pub retries: Option<u32>,
    pub per_datagram: Option<bool>,
    pub new_flows_per_second_per_source: Option<u64>,
    pub datagrams_per_second_per_flow: Option<u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a pool: a mapping with name and backends"
)]
pub struct RawPool {
    pub name: Option<String>,
    pub algorithm: Option<String>,
    pub hash_key: Option<String>,
    pub table_size: Option<u64>,
    pub time_metric: Option<String>,
    pub send_proxy_protocol: Option<String>,
    pub retries: Option<u32>,
    pub health_check: Option<RawHealthCheck>,
    pub passive: Option<RawPassive>,
    pub on_backend_down: Option<String>,
    pub slow_start: Option<RawDuration>,
    pub backends: Option<Vec<RawBackend>>,
    pub queue: Option<RawQueue>,
    pub keepalive: Option<RawKeepalive>,
    pub user_timeout: Option<RawDuration>,
}

/// `pools[].queue`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a mapping with `max` and/or `timeout`"
)]
pub struct RawQueue {
    pub max: Option<u64>,
    pub timeout: Option<RawDuration>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a health check mapping")]
pub struct RawHealthCheck {
    pub kind: Option<String>,
    pub interval: Option<RawDuration>,
    pub timeout: Option<RawDuration>,
    pub rise: Option<u32>,
    pub fall: Option<u32>,
    pub send: Option<String>,
    pub send_hex: Option<String>,
    pub expect: Option<String>,
    pub expect_hex: Option<String>,
    pub port: Option<i64>,
    pub address: Option<String>,
    pub method: Option<String>,
    pub path: Option<String>,
    pub host: Option<String>,
    pub expect_status: Option<RawExpectStatus>,
    pub expect_body: Option<String>,
    pub role: Option<String>,
    pub password_file: Option<String>,
    pub user: Option<String>,
    pub database: Option<String>,
    pub agent: Option<RawAgentCheck>,
    pub send_proxy: Option<bool>,
    pub tls: Option<bool>,
    pub sni: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "an agent check: a mapping with `port` and optionally `address`, `interval`, `timeout`, `send`"
)]
pub struct RawAgentCheck {
    pub port: Option<i64>,
    pub address: Option<String>,
    pub interval: Option<RawDuration>,
    pub timeout: Option<RawDuration>,
    pub send: Option<String>,
}

/// `expect_status`: one code (`200`), a range (`"200-399"`), or a list of either.
#[derive(Debug, Clone, PartialEq)]
pub enum RawExpectStatus {
    One(RawStatus),
    List(Vec<RawStatus>),
}

/// One entry of `expect_status`: a number, or text (a code or a `low-high` range).
#[derive(Debug, Clone, PartialEq)]
pub enum RawStatus {
    Code(i64),
    Text(String),
}

/// Hand-written, as [`RawWorkers`]: untagged enums lose the error's position.
impl<'de> Deserialize<'de> for RawStatus {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct StatusVisitor;

        impl Visitor<'_> for StatusVisitor {
            type Value = RawStatus;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a status code (`200`) or a range (`\"200-399\"`)")
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<RawStatus, E> {
                Ok(RawStatus::Code(v))
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<RawStatus, E> {
                Ok(RawStatus::Code(i64::try_from(v).unwrap_or(i64::MAX)))
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawStatus, E> {
                Ok(RawStatus::Text(v.to_owned()))
            }
        }

        deserializer.deserialize_any(StatusVisitor)
    }
}

impl<'de> Deserialize<'de> for RawExpectStatus {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ExpectVisitor;

        impl<'de> Visitor<'de> for ExpectVisitor {
            type Value = RawExpectStatus;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a status code (`200`), a range (`\"200-399\"`) or a list of them")
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<RawExpectStatus, E> {
                Ok(RawExpectStatus::One(RawStatus::Code(v)))
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<RawExpectStatus, E> {
                Ok(RawExpectStatus::One(RawStatus::Code(
                    i64::try_from(v).unwrap_or(i64::MAX),
                )))
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawExpectStatus, E> {
                Ok(RawExpectStatus::One(RawStatus::Text(v.to_owned())))
            }

            fn visit_seq<A: de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<RawExpectStatus, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element::<RawStatus>()? {
                    items.push(item);
                }
                Ok(RawExpectStatus::List(items))
            }
        }

        deserializer.deserialize_any(ExpectVisitor)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a mapping with `max_fails` and/or `fail_timeout`"
)]
pub struct RawPassive {
    pub max_fails: Option<u32>,
    pub fail_timeout: Option<RawDuration>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a backend: a mapping with at least `address`"
)]
pub struct RawBackend {
    pub address: Option<String>,
    pub weight: Option<u32>,
    pub backup: Option<bool>,
    pub max_connections: Option<u64>,
    /// `first` or `every_record`: a name re-resolved in the background (issue 18).
    pub resolve: Option<String>,
    /// Most backends one name gives with `resolve: every_record` or SRV.
    pub max: Option<u64>,
}

/// `dns:`, how backend names are re-resolved in the background.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a mapping of `resolvers`, `timeout`, `resolve_interval` and `hold`"
)]
pub struct RawDns {
    pub resolvers: Option<Vec<String>>,
    pub timeout: Option<RawDuration>,
    pub resolve_interval: Option<RawInterval>,
    pub hold: Option<RawDuration>,
}

/// `dns.resolve_interval`: the bounds a record's TTL is clamped to.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping of `min` and `max`")]
pub struct RawInterval {
    pub min: Option<RawDuration>,
    pub max: Option<RawDuration>,
}

/// A duration exactly as written; validation parses it so the error carries the path.
///
/// Numbers are kept too (YAML reads `idle: 30` as an integer) so that the user hears "missing
/// unit" rather than "expected a string".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawDuration(pub String);

impl<'de> Deserialize<'de> for RawDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct DurationText;

        impl Visitor<'_> for DurationText {
            type Value = RawDuration;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration such as 5s, 250ms or 1m30s")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawDuration, E> {
                Ok(RawDuration(v.to_owned()))
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<RawDuration, E> {
                Ok(RawDuration(v.to_string()))
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<RawDuration, E> {
                Ok(RawDuration(v.to_string()))
            }

            fn visit_f64<E: de::Error>(self, v: f64) -> Result<RawDuration, E> {
                Ok(RawDuration(v.to_string()))
            }
        }

        deserializer.deserialize_any(DurationText)
    }
}

/// Stage one. Reads `text` into a [`Document`], reporting syntax errors, unknown keys and type
/// errors to `diag`. Returns `None` only when nothing past the YAML syntax could be read.
///
/// Each top-level key and each listener and pool is deserialized on its own, so one bad entry
/// does not hide the errors of the others.
pub fn parse(text: &str, diag: &mut Diagnostics<'_>) -> Option<Document> {
    let root = match yaml::parse(text) {
        Ok(root) => root,
        Err(errors) => {
            for error in errors {
                diag.error_at(
                    error.path,
                    Some(error.at.line),
                    Some(error.at.column),
                    error.message,
                );
            }
            return None;
        }
    };
    // `---` alone is a document holding an empty scalar: empty too.
    let root = root.filter(|root| root.scalar() != Some(""));
    let Some(root) = root else {
        // One line rather than validation's list of everything that is missing.
        diag.error_at(
            "",
            None,
            None,
            "the file is empty; expected a mapping of top-level settings (listeners, pools, ...)",
        );
        return None;
    };
    let Kind::Mapping(entries) = &root.kind else {
        diag.error(
            "",
            "expected a mapping of top-level settings (workers, listeners, pools, ...)",
        );
        return None;
    };

    // One top-level key at a time (the others skipped): a type error in `workers` must not
    // stop `listeners` from being read, and `deny_unknown_fields` still applies to each key.
    let keys: Vec<String> = entries
        .iter()
        .map(|(key, _)| key.scalar().unwrap_or("?").to_owned())
        .collect();
    let mut shell: RawConfig<IgnoredAny, IgnoredAny> = RawConfig::empty();
    for key in &keys {
        let others: HashSet<String> = keys.iter().filter(|k| *k != key).cloned().collect();
        if let Some(part) =
            deserialize_at::<RawConfig<IgnoredAny, IgnoredAny>>(&root, "", &others, diag)
        {
            shell.admin = shell.admin.or(part.admin);
            shell.workers = shell.workers.or(part.workers);
            shell.drain_timeout = shell.drain_timeout.or(part.drain_timeout);
            shell.grace = shell.grace.or(part.grace);
            shell.listeners = shell.listeners.or(part.listeners);
            shell.pools = shell.pools.or(part.pools);
            shell.fastpath = shell.fastpath.or(part.fastpath);
            shell.access_log = shell.access_log.or(part.access_log);
            shell.dns = shell.dns.or(part.dns);
            shell.state_file = shell.state_file.or(part.state_file);
        }
    }

    Some(RawConfig {
        admin: shell.admin,
        workers: shell.workers,
        drain_timeout: shell.drain_timeout,
        grace: shell.grace,
        listeners: shell
            .listeners
            .map(|_| parse_items(root.get("listeners"), "listeners", diag)),
        pools: shell
            .pools
            .map(|_| parse_items(root.get("pools"), "pools", diag)),
        fastpath: shell.fastpath,
        access_log: shell.access_log,
        dns: shell.dns,
        state_file: shell.state_file,
    })
}

fn parse_items<T: DeserializeOwned>(
    items: Option<&Node>,
    path: &str,
    diag: &mut Diagnostics<'_>,
) -> Vec<Item<T>> {
    let Some(Kind::Sequence(items)) = items.map(|node| &node.kind) else {
        return Vec::new();
    };
    items
        .iter()
        .enumerate()
        .map(|(index, node)| {
            let name = node.get("name").and_then(Node::scalar).map(str::to_owned);
            match deserialize_at(node, &child_index(path, index), &HashSet::new(), diag) {
                Some(item) => Item::Parsed(item),
                None => Item::Broken { name },
            }
        })
        .collect()
}

/// Deserializes `node`, found at `path` (nodes at the paths in `skip` read as absent),
/// reporting a failure at the innermost offending key.
fn deserialize_at<T: DeserializeOwned>(
    node: &Node,
    path: &str,
    skip: &HashSet<String>,
    diag: &mut Diagnostics<'_>,
) -> Option<T> {
    // serde stops at the first error of a value. To report every one, the offending node is
    // skipped and the value read again, until it reads; the value is then only kept when
    // nothing was skipped, so a half-read item never reaches validation.
    let mut skip = skip.clone();
    let mut failed = false;
    for _ in 0..MAX_ERRORS_PER_VALUE {
        let error = match yaml::from_node(node, path, &skip) {
            Ok(item) => return (!failed).then_some(item),
            Err(error) => error,
        };
        failed = true;
        let (error_path, at) = error.place.unwrap_or_else(|| (path.to_owned(), node.at));
        // A key's own position when it is written there; a value that came from a merge or
        // an alias is placed where that value is written.
        let at = diag.locator().exact(&error_path).unwrap_or(at);
        diag.error_at(&error_path, Some(at.line), Some(at.column), error.message);
        // The value as a whole is wrong (or the same error again): nothing more to learn.
        if error_path == path || !skip.insert(error_path) {
            break;
        }
    }
    None
}

/// Past this many errors in one listener or pool, the rest of it is not read for more.
const MAX_ERRORS_PER_VALUE: usize = 50;

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::config::locate::Locator;

    /// Path, line and message of one error.
    type Found = (String, Option<usize>, String);

    fn run(text: &str) -> (Option<Document>, Vec<Found>) {
        let locator = Locator::new(text);
        let mut diag = Diagnostics::new("t.yaml", &locator);
        let doc = parse(text, &mut diag);
        let errors = diag
            .errors
            .iter()
            .map(|e| (e.path.clone(), e.line, e.message.clone()))
            .collect();
        (doc, errors)
    }

    #[test]
    fn reads_every_key() {
        let text = r#"
admin: { listen: "127.0.0.1:9190", token_file: /etc/ballast/token }
workers: auto
drain_timeout: 30s
listeners:
  - name: postgres
    protocol: tcp
    listen: ["0.0.0.0:5432", "[::]:5432"]
    pool: pg
    max_connections: 20000
    timeouts: { connect: 2s, idle: 1h }
    allow: ["10.0.0.0/8"]
    deny: ["10.9.0.0/16"]
    accept_proxy_protocol: { trusted: ["10.1.0.0/16"] }
    tls_passthrough:
      routes:
        - { sni: api.example.com, pool: api, alpn: [h2] }
      default_pool: web
      peek_timeout: 5s
    udp: { idle_timeout: 30s, max_flows: 200000 }
    max_connections_per_source: 100
    new_connections_per_second_per_source: 10
    fastpath: socket
fastpath:
  socket_lb: { cgroup: /sys/fs/cgroup/app, mode: required }
pools:
  - name: pg
    algorithm: maglev
    hash_key: source_ip
    table_size: 65537
    time_metric: connect
    send_proxy_protocol: v2
    retries: 2
    health_check: { kind: tcp, interval: 5s, timeout: 2s, rise: 2, fall: 3, send: "PING", expect_hex: "2b504f4e47" }
    passive: { max_fails: 3, fail_timeout: 30s }
    on_backend_down: close
    backends:
      - { address: "10.0.0.1:5432", weight: 3, backup: false, max_connections: 500 }
"#;
        let (doc, errors) = run(text);
        assert_eq!(errors, vec![]);
        let doc = doc.unwrap();
        assert_eq!(doc.workers, Some(RawWorkers::Name("auto".into())));
        let listeners = doc.listeners.unwrap();
        let listener = listeners[0].parsed().unwrap();
        assert_eq!(listener.new_connections_per_second_per_source, Some(10));
        assert_eq!(listener.fastpath.as_deref(), Some("socket"));
        let socket_lb = doc.fastpath.unwrap().socket_lb.unwrap();
        assert_eq!(socket_lb.cgroup.as_deref(), Some("/sys/fs/cgroup/app"));
        assert_eq!(socket_lb.mode.as_deref(), Some("required"));
        let pools = doc.pools.unwrap();
        let pool = pools[0].parsed().unwrap();
        assert_eq!(pool.on_backend_down.as_deref(), Some("close"));

        // The same text also reads in one go.
        let whole: RawConfig = yaml::from_str(text).unwrap();
        assert_eq!(whole.pools.unwrap()[0].table_size, Some(65537));
    }

    #[test]
    fn unknown_keys_point_at_the_key() {
        let text = "\
listeners:
  - name: a
    timeouts:
      conect: 2s
";
        let (_, errors) = run(text);
        assert_eq!(errors.len(), 1);
        let (path, line, message) = &errors[0];
        assert_eq!(path, "listeners[0].timeouts.conect");
        assert_eq!(*line, Some(4));
        assert!(message.starts_with("unknown field `conect`"), "{message}");
    }

    #[test]
    fn one_bad_item_does_not_hide_others() {
        let text = "\
workers: [1]
listeners:
  - name: a
    max_connections: lots
  - name: b
    bogus: 1
pools:
  - name: p
    backends:
      - address: 10.0.0.1:1
        weight: heavy
";
        let (doc, errors) = run(text);
        let paths: Vec<&str> = errors.iter().map(|e| e.0.as_str()).collect();
        assert_eq!(
            paths,
            [
                "workers",
                "listeners[0].max_connections",
                "listeners[1].bogus",
                "pools[0].backends[0].weight"
            ]
        );
        let lines: Vec<Option<usize>> = errors.iter().map(|e| e.1).collect();
        assert_eq!(lines, [Some(1), Some(4), Some(6), Some(11)]);
        let doc = doc.unwrap();
        assert_eq!(
            doc.listeners.unwrap()[1],
            Item::Broken {
                name: Some("b".into())
            }
        );
    }

    #[test]
    fn syntax_error_has_a_line() {
        let (doc, errors) = run("listeners:\n  - name: a\n   pool: [\n");
        assert!(doc.is_none());
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].1, Some(3));
    }

    #[test]
    fn durations_accept_numbers_for_a_better_message_later() {
        let raw: RawTimeouts = yaml::from_str("{ connect: 30, idle: 1.5 }").unwrap();
        assert_eq!(raw.connect, Some(RawDuration("30".into())));
        assert_eq!(raw.idle, Some(RawDuration("1.5".into())));
    }

    #[test]
    fn merge_keys_apply() {
        let text = "\
pools:
  - &base { name: a, retries: 3, backends: [{ address: \"10.0.0.1:1\" }] }
  - <<: *base
    name: b
";
        let (doc, errors) = run(text);
        assert_eq!(errors, vec![]);
        let pools = doc.unwrap().pools.unwrap();
        let b = pools[1].parsed().unwrap();
        assert_eq!(b.name.as_deref(), Some("b"));
        assert_eq!(b.retries, Some(3));
    }
}
