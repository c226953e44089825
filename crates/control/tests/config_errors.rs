//! The config loader end to end: broken configs must each produce a precise error (message,
//! path and line), valid ones must resolve to the expected model, and no input may panic.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::Duration;

use ballast_control::config::{
    load_file, load_str, Admin, Algorithm, Backend, Config, ConfigError, ExpectStatus, Fastpath,
    FastpathMode, HashKey, HealthCheck, HttpCheck, HttpMethod, Listener, ListenerFastpath,
    LoadError, MysqlCheck, MysqlRole, OnBackendDown, PassivePolicy, Pool, PostgresCheck,
    PostgresRole, ProbeKind, Protocol, ProxyVersion, RedisRole, SocketLb, TimeMetric, UdpOffload,
    Workers, DEFAULT_CONNECT_TIMEOUT, DEFAULT_DRAIN_TIMEOUT, DEFAULT_EXPECT_STATUS, DEFAULT_FALL,
    DEFAULT_IDLE_TIMEOUT, DEFAULT_PASSIVE, DEFAULT_RETRIES, DEFAULT_RISE,
};
use proptest::prelude::*;

mod common;

use common::*;

fn addr(text: &str) -> SocketAddr {
    text.parse().unwrap()
}

/// Three lines: a valid pool named `pg`.
const POOL: &str = "\
pools:
  - name: pg
    backends: [{ address: \"10.0.0.1:5432\" }]
";

/// Two lines (4 and 5 after `POOL`): a valid listener using `pg`.
const LISTENER: &str = "\
listeners:
  - { name: a, listen: \"127.0.0.1:1001\", pool: pg }
";

fn pool_then(rest: &str) -> String {
    format!("{POOL}{rest}")
}

fn listener_then(rest: &str) -> String {
    format!("{LISTENER}{rest}")
}

/// `LISTENER`, then pool `pg` with `health_check: <check>` on line 5.
fn health_check_then(check: &str) -> String {
    listener_then(&format!(
        "pools:\n  - name: pg\n    health_check: {check}\n    backends: [{{ address: \"10.0.0.1:5432\" }}]\n"
    ))
}

struct Case {
    name: &'static str,
    text: String,
    path: &'static str,
    line: Option<usize>,
    message: &'static str,
}

fn case(
    name: &'static str,
    text: impl Into<String>,
    path: &'static str,
    line: Option<usize>,
    message: &'static str,
) -> Case {
    Case {
        name,
        text: text.into(),
        path,
        line,
        message,
    }
}

fn cases() -> Vec<Case> {
    vec![
        case(
            "duplicate listener names",
            pool_then(
                "\
listeners:
  - { name: a, listen: \"127.0.0.1:1001\", pool: pg }
  - { name: a, listen: \"127.0.0.1:1002\", pool: pg }
",
            ),
            "listeners[1].name",
            Some(6),
            "duplicate listener name \"a\" (first defined at listeners[0], line 5)",
        ),
        case(
            "duplicate pool names",
            listener_then(
                "\
pools:
  - name: pg
    backends: [{ address: \"10.0.0.1:5432\" }]
  - name: pg
    backends: [{ address: \"10.0.0.2:5432\" }]
",
            ),
            "pools[1].name",
            Some(6),
            "duplicate pool name \"pg\"",
        ),
        case(
            "unknown pool with a suggestion",
            pool_then(
                "\
listeners:
  - { name: a, listen: \"127.0.0.1:1001\", pool: pg }
  - name: b
    listen: 127.0.0.1:1002
    pool: pgg
",
            ),
            "listeners[1].pool",
            Some(8),
            "no pool named \"pgg\"; did you mean \"pg\"?",
        ),
        case(
            "unknown pool without a close name",
            pool_then(
                "\
listeners:
  - { name: a, listen: \"127.0.0.1:1001\", pool: postgres_primary }
",
            ),
            "listeners[0].pool",
            Some(5),
            "no pool named \"postgres_primary\"",
        ),
        case(
            "empty backend list",
            listener_then(
                "\
pools:
  - name: pg
    backends: []
",
            ),
            "pools[0].backends",
            Some(5),
            "pool \"pg\" has no backends",
        ),
        case(
            "pool without backends falls back to the pool's line",
            listener_then(
                "\
pools:
  - name: pg
    retries: 1
",
            ),
            "pools[0].backends",
            Some(4),
            "has no backends",
        ),
        case(
            "weight 0",
            listener_then(
                "\
pools:
  - name: pg
    backends:
      - address: 10.0.0.1:5432
        weight: 0
",
            ),
            "pools[0].backends[0].weight",
            Some(7),
            "weight must be between 1 and 256, got 0",
        ),
        case(
            "weight above MAX_WEIGHT",
            listener_then(
                "\
pools:
  - name: pg
    backends:
      - { address: 10.0.0.1:5432 }
      - { address: 10.0.0.2:5432, weight: 257 }
",
            ),
            "pools[0].backends[1].weight",
            Some(7),
            "got 257",
        ),
        case(
            "duplicate backend address",
            listener_then(
                "\
pools:
  - name: pg
    backends:
      - address: 10.0.0.1:5432
      - address: 10.0.0.1:5432
",
            ),
            "pools[0].backends[1].address",
            Some(7),
            "10.0.0.1:5432 is already listed in this pool at backends[0]",
        ),
        case(
            "backend address without port",
            listener_then(
                "\
pools:
  - name: pg
    backends:
      - address: 10.0.0.1
",
            ),
            "pools[0].backends[0].address",
            Some(6),
            "expected IP:port, e.g. 10.0.0.1:5432 or [::1]:5432",
        ),
        case(
            "backend host name without a port",
            listener_then(
                "\
pools:
  - name: pg
    backends:
      - address: db.internal
",
            ),
            "pools[0].backends[0].address",
            Some(6),
            "a host name needs a port",
        ),
        case(
            "listen address garbage",
            pool_then(
                "\
listeners:
  - name: a
    listen: \"port 80\"
    pool: pg
",
            ),
            "listeners[0].listen",
            Some(6),
            "\"port 80\": expected IP:port",
        ),
        case(
            "two listeners on one address",
            pool_then(
                "\
listeners:
  - { name: a, listen: \"127.0.0.1:1001\", pool: pg }
  - name: b
    listen: 127.0.0.1:1001
    pool: pg
",
            ),
            "listeners[1].listen",
            Some(7),
            "127.0.0.1:1001 is already used by listener \"a\" (listeners[0].listen)",
        ),
        case(
            "wildcard overlapping a specific address",
            pool_then(
                "\
listeners:
  - { name: a, listen: \"0.0.0.0:1001\", pool: pg }
  - name: b
    listen: [\"[::1]:1001\", \"127.0.0.1:1001\"]
    pool: pg
",
            ),
            "listeners[1].listen[1]",
            Some(7),
            "127.0.0.1:1001 overlaps 0.0.0.0:1001 of listener \"a\"",
        ),
        case(
            "same address twice in one listener",
            pool_then(
                "\
listeners:
  - name: a
    listen:
      - 127.0.0.1:1001
      - 127.0.0.1:1001
    pool: pg
",
            ),
            "listeners[0].listen[1]",
            Some(8),
            "127.0.0.1:1001 is listed twice (also at listeners[0].listen[0])",
        ),
        case(
            "hash_key without maglev",
            listener_then(
                "\
pools:
  - name: pg
    algorithm: least_connections
    hash_key: source_ip
    backends: [{ address: \"10.0.0.1:5432\" }]
",
            ),
            "pools[0].hash_key",
            Some(6),
            "`hash_key` only applies to `algorithm: maglev` (this pool uses least_connections)",
        ),
        case(
            "table_size without maglev",
            listener_then(
                "\
pools:
  - name: pg
    table_size: 65537
    backends: [{ address: \"10.0.0.1:5432\" }]
",
            ),
            "pools[0].table_size",
            Some(5),
            "`table_size` only applies to `algorithm: maglev` (this pool uses round_robin)",
        ),
        case(
            "time_metric without least_time",
            listener_then(
                "\
pools:
  - name: pg
    algorithm: maglev
    time_metric: connect
    backends: [{ address: \"10.0.0.1:5432\" }]
",
            ),
            "pools[0].time_metric",
            Some(6),
            "`time_metric` only applies to `algorithm: least_time`",
        ),
        case(
            "unknown algorithm",
            listener_then(
                "\
pools:
  - name: pg
    algorithm: maglv
    backends: [{ address: \"10.0.0.1:5432\" }]
",
            ),
            "pools[0].algorithm",
            Some(5),
            "unknown algorithm \"maglv\" (did you mean \"maglev\"?); expected one of: \
             round_robin, least_connections, random, power_of_two, least_time, maglev",
        ),
        case(
            "unknown hash_key",
            listener_then(
                "\
pools:
  - name: pg
    algorithm: maglev
    hash_key: destination
    backends: [{ address: \"10.0.0.1:5432\" }]
",
            ),
            "pools[0].hash_key",
            Some(6),
            "unknown hash_key \"destination\"; expected one of: source_ip, five_tuple",
        ),
        case(
            "unknown time_metric",
            listener_then(
                "\
pools:
  - name: pg
    algorithm: least_time
    time_metric: first-byte
    backends: [{ address: \"10.0.0.1:5432\" }]
",
            ),
            "pools[0].time_metric",
            Some(6),
            "(did you mean \"first_byte\"?)",
        ),
        case(
            "maglev table size not prime",
            listener_then(
                "\
pools:
  - name: pg
    algorithm: maglev
    table_size: 65536
    backends: [{ address: \"10.0.0.1:5432\" }]
",
            ),
            "pools[0].table_size",
            Some(6),
            "65536 is not prime",
        ),
        case(
            "workers 0",
            format!("workers: 0\n{POOL}{}", LISTENER),
            "workers",
            Some(1),
            "must be `auto` or a number from 1 to 1024, got 0",
        ),
        case(
            "workers not a number",
            format!("{POOL}{LISTENER}workers: lots\n"),
            "workers",
            Some(6),
            "got \"lots\"",
        ),
        case(
            "zero connect timeout",
            pool_then(
                "\
listeners:
  - name: a
    listen: 127.0.0.1:1001
    pool: pg
    timeouts: { connect: 0s, idle: 1h }
",
            ),
            "listeners[0].timeouts.connect",
            Some(8),
            "\"0s\": must be greater than zero",
        ),
        case(
            "duration without unit",
            pool_then(
                "\
listeners:
  - name: a
    listen: 127.0.0.1:1001
    pool: pg
    timeouts:
      idle: 30
",
            ),
            "listeners[0].timeouts.idle",
            Some(9),
            "missing unit; write e.g. 30s",
        ),
        case(
            "negative drain timeout",
            format!("{POOL}{LISTENER}drain_timeout: -5s\n"),
            "drain_timeout",
            Some(6),
            "cannot be negative",
        ),
        case(
            "max_connections 0",
            pool_then(
                "\
listeners:
  - name: a
    listen: 127.0.0.1:1001
    pool: pg
    max_connections: 0
",
            ),
            "listeners[0].max_connections",
            Some(8),
            "must be at least 1",
        ),
        case(
            "backend max_connections 0",
            listener_then(
                "\
pools:
  - name: pg
    backends: [{ address: \"10.0.0.1:5432\", max_connections: 0 }]
",
            ),
            "pools[0].backends[0].max_connections",
            Some(5),
            "must be at least 1",
        ),
        case(
            "too many retries",
            listener_then(
                "\
pools:
  - name: pg
    retries: 17
    backends: [{ address: \"10.0.0.1:5432\" }]
",
            ),
            "pools[0].retries",
            Some(5),
            "17 is too many; at most 16",
        ),
        case(
            "zero passive fail_timeout",
            listener_then(
                "\
pools:
  - name: pg
    passive: { max_fails: 2, fail_timeout: 0ms }
    backends: [{ address: \"10.0.0.1:5432\" }]
",
            ),
            "pools[0].passive.fail_timeout",
            Some(5),
            "must be greater than zero",
        ),
        case(
            "no listeners at all",
            POOL,
            "listeners",
            None,
            "no listeners defined",
        ),
        case(
            "empty listener list",
            format!("{POOL}listeners: []\n"),
            "listeners",
            Some(4),
            "no listeners defined",
        ),
        case(
            "listener without pool",
            pool_then(
                "\
listeners:
  - name: a
    listen: 127.0.0.1:1001
",
            ),
            "listeners[0].pool",
            Some(5),
            "missing `pool`",
        ),
        case(
            "listener without listen",
            pool_then(
                "\
listeners:
  - name: a
    pool: pg
",
            ),
            "listeners[0].listen",
            Some(5),
            "missing `listen`",
        ),
        case(
            "listener without name",
            pool_then(
                "\
listeners:
  - listen: 127.0.0.1:1001
    pool: pg
",
            ),
            "listeners[0].name",
            Some(5),
            "missing `name`",
        ),
        case(
            "bad characters in a name",
            pool_then(
                "\
listeners:
  - name: my listener
    listen: 127.0.0.1:1001
    pool: pg
",
            ),
            "listeners[0].name",
            Some(5),
            "names may contain only letters",
        ),
        case(
            "unknown listener key",
            pool_then(
                "\
listeners:
  - name: a
    listen: 127.0.0.1:1001
    pool: pg
    maxconn: 10
",
            ),
            "listeners[0].maxconn",
            Some(8),
            "unknown field `maxconn`, expected one of",
        ),
        case(
            "unknown nested key",
            listener_then(
                "\
pools:
  - name: pg
    passive:
      max_fail: 3
    backends: [{ address: \"10.0.0.1:5432\" }]
",
            ),
            "pools[0].passive.max_fail",
            Some(6),
            "unknown field `max_fail`, expected `max_fails` or `fail_timeout`",
        ),
        case(
            "unknown top-level key",
            format!("{POOL}{LISTENER}listener: {{}}\n"),
            "listener",
            Some(6),
            "unknown field `listener`",
        ),
        case(
            "type error",
            pool_then(
                "\
listeners:
  - name: a
    listen: 127.0.0.1:1001
    pool: pg
    max_connections: lots
",
            ),
            "listeners[0].max_connections",
            Some(8),
            "invalid type: string \"lots\", expected u64",
        ),
        case(
            "type error in a list item",
            listener_then(
                "\
pools:
  - name: pg
    backends:
      - address: 10.0.0.1:5432
      - address: 10.0.0.2:5432
        backup: yes
",
            ),
            "pools[0].backends[1].backup",
            Some(8),
            "expected a boolean",
        ),
        case(
            "listen is not a string",
            pool_then(
                "\
listeners:
  - name: a
    listen: [[\"127.0.0.1:80\"]]
    pool: pg
",
            ),
            "listeners[0].listen[0]",
            Some(6),
            "invalid type: sequence, expected a string",
        ),
        case(
            "a number where an address goes",
            pool_then(
                "\
listeners:
  - name: a
    listen: 80
    pool: pg
",
            ),
            "listeners[0].listen",
            Some(6),
            "invalid type: integer `80`, expected a string or a list of strings",
        ),
        case(
            "YAML syntax error",
            "listeners:\n  - name: a\n   pool: [\n",
            "",
            Some(3),
            "did not find expected '-' indicator",
        ),
        case(
            "duplicate YAML key",
            "workers: 1\nworkers: 2\n",
            "workers",
            Some(2),
            "duplicate key \"workers\" (first written at line 1)",
        ),
        case(
            "duplicate nested YAML key",
            pool_then(
                "\
listeners:
  - name: a
    listen: 127.0.0.1:1001
    pool: pg
    pool: other
",
            ),
            "listeners[0].pool",
            Some(8),
            "duplicate key \"pool\"",
        ),
        case(
            "top level is not a mapping",
            "- a\n- b\n",
            "",
            None,
            "expected a mapping of top-level settings",
        ),
        case(
            "admin listen is a hostname",
            format!("admin:\n  listen: localhost:9190\n{POOL}{LISTENER}"),
            "admin.listen",
            Some(2),
            "only backend addresses may be names",
        ),
        case(
            "admin token_file empty",
            format!("admin: {{ token_file: \"\" }}\n{POOL}{LISTENER}"),
            "admin.token_file",
            Some(1),
            "must not be empty",
        ),
        case(
            "admin listen on a listener's address",
            format!("admin:\n  listen: 127.0.0.1:1001\n{POOL}{LISTENER}"),
            "admin.listen",
            Some(2),
            "127.0.0.1:1001 is also the address of listeners[0].listen",
        ),
        case(
            "unknown admin key",
            format!("admin:\n  port: 9190\n{POOL}{LISTENER}"),
            "admin.port",
            Some(2),
            "unknown field `port`",
        ),
        case(
            "udp block on a tcp listener",
            pool_then(
                "\
listeners:
  - name: dns
    listen: 127.0.0.1:53
    pool: pg
    udp: { max_flows: 10 }
",
            ),
            "listeners[0].udp",
            Some(8),
            "applies only to `protocol: udp` listeners",
        ),
        case(
            "connect timeout on a udp listener",
            pool_then(
                "\
listeners:
  - name: dns
    protocol: udp
    listen: 127.0.0.1:53
    pool: pg
    timeouts: { connect: 1s }
",
            ),
            "listeners[0].timeouts.connect",
            Some(9),
            "does not apply to UDP listeners",
        ),
        case(
            "max_flows zero",
            pool_then(
                "\
listeners:
  - name: dns
    protocol: udp
    listen: 127.0.0.1:53
    pool: pg
    udp: { idle_timeout: 10s, max_flows: 0 }
",
            ),
            "listeners[0].udp.max_flows",
            Some(9),
            "must be between 1 and",
        ),
        case(
            "unknown protocol",
            pool_then(
                "\
listeners:
  - name: dns
    protocol: tpc
    listen: 127.0.0.1:53
    pool: pg
",
            ),
            "listeners[0].protocol",
            Some(6),
            "unknown protocol \"tpc\" (did you mean \"tcp\"?)",
        ),
        case(
            "a bad network in an allow list",
            pool_then(
                "\
listeners:
  - name: a
    listen: 127.0.0.1:1001
    pool: pg
    allow: [\"10.0.0.0/8\", \"10.0.0.0/33\"]
",
            ),
            "listeners[0].allow[1]",
            Some(8),
            "is not a network",
        ),
        case(
            "accept_proxy_protocol without trusted",
            pool_then(
                "\
listeners:
  - name: a
    listen: 127.0.0.1:1001
    pool: pg
    accept_proxy_protocol: { timeout: 3s }
",
            ),
            "listeners[0].accept_proxy_protocol.trusted",
            Some(8),
            "list the networks of the balancers allowed to send PROXY headers",
        ),
        case(
            "an SNI route to an unknown pool",
            pool_then(
                "\
listeners:
  - name: a
    listen: 127.0.0.1:1001
    tls_passthrough:
      routes:
        - { sni: api.example.com, pool: pgg }
",
            ),
            "listeners[0].tls_passthrough.routes[0].pool",
            Some(9),
            "no pool named \"pgg\"; did you mean \"pg\"?",
        ),
        case(
            "a bad SNI pattern",
            pool_then(
                "\
listeners:
  - name: a
    listen: 127.0.0.1:1001
    tls_passthrough:
      routes:
        - { sni: \"a.*.com\", pool: pg }
",
            ),
            "listeners[0].tls_passthrough.routes[0].sni",
            Some(9),
            "is not a host name or a `*.domain` wildcard",
        ),
        case(
            "tls_passthrough on a udp listener",
            pool_then(
                "\
listeners:
  - name: a
    protocol: udp
    listen: 127.0.0.1:1001
    tls_passthrough: { default_pool: pg }
",
            ),
            "listeners[0].tls_passthrough",
            Some(8),
            "applies only to TCP listeners",
        ),
        case(
            "an unknown PROXY protocol version",
            listener_then(
                "\
pools:
  - name: pg
    send_proxy_protocol: v3
    backends: [{ address: \"10.0.0.1:5432\" }]
",
            ),
            "pools[0].send_proxy_protocol",
            Some(5),
            "unknown PROXY protocol version \"v3\"; expected v1 or v2",
        ),
        case(
            "health check rise 0",
            health_check_then("{ rise: 0 }"),
            "pools[0].health_check.rise",
            Some(5),
            "must be between 1 and 100 consecutive probes, got 0",
        ),
        case(
            "health check fall too large",
            health_check_then("{ fall: 1000 }"),
            "pools[0].health_check.fall",
            Some(5),
            "must be between 1 and 100",
        ),
        case(
            "health check timeout longer than interval",
            health_check_then("{ interval: 1s, timeout: 2s }"),
            "pools[0].health_check.timeout",
            Some(5),
            "\"2s\" is longer than the interval (1s)",
        ),
        case(
            "health check zero interval",
            health_check_then("{ interval: 0s }"),
            "pools[0].health_check.interval",
            Some(5),
            "must be greater than zero",
        ),
        case(
            "health check bad hex",
            health_check_then("{ send_hex: \"50 4g\" }"),
            "pools[0].health_check.send_hex",
            Some(5),
            "'g' at character 5 is not a hex digit",
        ),
        case(
            "health check odd hex",
            health_check_then("{ expect_hex: \"2b5\" }"),
            "pools[0].health_check.expect_hex",
            Some(5),
            "odd number of hex digits",
        ),
        case(
            "health check send and send_hex",
            health_check_then("{ send: PING, send_hex: \"50\" }"),
            "pools[0].health_check.send_hex",
            Some(5),
            "give `send` (text) or `send_hex` (bytes), not both",
        ),
        case(
            "health check empty expect",
            health_check_then("{ expect: \"\" }"),
            "pools[0].health_check.expect",
            Some(5),
            "empty",
        ),
        case(
            "health check unknown kind",
            health_check_then("{ kind: htp }"),
            "pools[0].health_check.kind",
            Some(5),
            "unknown health check kind \"htp\" (did you mean \"http\"?)",
        ),
        case(
            "udp probe on a pool of TCP listeners",
            health_check_then("{ kind: udp, send: ping }"),
            "pools[0].health_check.kind",
            Some(5),
            "serves only TCP listeners",
        ),
        case(
            "udp probe without a payload",
            health_check_then("{ kind: udp }"),
            "pools[0].health_check",
            Some(5),
            "needs `send` or `send_hex`",
        ),
        case(
            "unknown health check key",
            health_check_then("{ kind: tcp, intervall: 5s }"),
            "pools[0].health_check.intervall",
            Some(5),
            "unknown field `intervall`",
        ),
        case(
            "http check status out of range",
            health_check_then("{ kind: http, expect_status: 600 }"),
            "pools[0].health_check.expect_status",
            Some(5),
            "\"600\" is not an HTTP status code (100-599)",
        ),
        case(
            "http check status range backwards",
            health_check_then("{ kind: http, expect_status: \"399-200\" }"),
            "pools[0].health_check.expect_status",
            Some(5),
            "the range runs backwards",
        ),
        case(
            "http check bad entry in a status list",
            health_check_then("{ kind: http, expect_status: [200, 2xx] }"),
            "pools[0].health_check.expect_status[1]",
            Some(5),
            "\"2xx\" is not an HTTP status code",
        ),
        case(
            "http check empty status list",
            health_check_then("{ kind: http, expect_status: [] }"),
            "pools[0].health_check.expect_status",
            Some(5),
            "empty list",
        ),
        case(
            "http check path without a slash",
            health_check_then("{ kind: http, path: health }"),
            "pools[0].health_check.path",
            Some(5),
            "\"health\" must start with `/`",
        ),
        case(
            "http check path with a space",
            health_check_then("{ kind: http, path: \"/a b\" }"),
            "pools[0].health_check.path",
            Some(5),
            "contains ' '",
        ),
        case(
            "http check unknown method",
            health_check_then("{ kind: http, method: POST }"),
            "pools[0].health_check.method",
            Some(5),
            "expected one of: GET, HEAD",
        ),
        case(
            "http check expect_body with HEAD",
            health_check_then("{ kind: http, method: HEAD, expect_body: ok }"),
            "pools[0].health_check.expect_body",
            Some(5),
            "a HEAD response has no body",
        ),
        case(
            "http check with send",
            health_check_then("{ kind: http, send: PING }"),
            "pools[0].health_check.send",
            Some(5),
            "applies only to `kind: tcp` and `kind: udp`",
        ),
        case(
            "http key on a tcp check",
            health_check_then("{ kind: tcp, path: /health }"),
            "pools[0].health_check.path",
            Some(5),
            "applies only to `kind: http`; this check is `kind: tcp`",
        ),
        case(
            "http key on a check of the default kind",
            health_check_then("{ expect_status: 200 }"),
            "pools[0].health_check.expect_status",
            Some(5),
            "applies only to `kind: http`",
        ),
        case(
            "health check port 0",
            health_check_then("{ port: 0 }"),
            "pools[0].health_check.port",
            Some(5),
            "must be a port between 1 and 65535, got 0",
        ),
        case(
            "health check port too large",
            health_check_then("{ kind: http, port: 65536 }"),
            "pools[0].health_check.port",
            Some(5),
            "got 65536",
        ),
        case(
            "health check address with a port",
            health_check_then("{ address: \"10.0.0.9:8008\" }"),
            "pools[0].health_check.address",
            Some(5),
            "without a port; put the port in `port`",
        ),
        case(
            "health check address that is a name",
            health_check_then("{ kind: http, address: monitor.local }"),
            "pools[0].health_check.address",
            Some(5),
            "is not an IP address",
        ),
        case(
            "unknown on_backend_down",
            listener_then(
                "\
pools:
  - name: pg
    on_backend_down: kill
    backends: [{ address: \"10.0.0.1:5432\" }]
",
            ),
            "pools[0].on_backend_down",
            Some(5),
            "unknown on_backend_down \"kill\"; expected one of: keep, close",
        ),
    ]
}

#[test]
fn each_broken_config_reports_its_error() {
    let cases = cases();
    assert!(cases.len() >= 20);
    let mut failures = Vec::new();
    for case in &cases {
        let errors = errors(&case.text);
        let found = errors.iter().find(|e| e.path == case.path);
        match found {
            Some(error) if error.line == case.line && error.message.contains(case.message) => {
                assert_eq!(error.file, FILE);
            }
            _ => failures.push(format!(
                "{}: wanted {}@{:?} containing {:?}; got:\n    {}",
                case.name,
                case.path,
                case.line,
                case.message,
                errors
                    .iter()
                    .map(|e| format!("{:?}@{:?}: {}", e.path, e.line, e.message))
                    .collect::<Vec<_>>()
                    .join("\n    ")
            )),
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

/// Every mistake in one http check is reported in one pass, each at its own key and line.
#[test]
fn http_check_errors_come_all_at_once() {
    let text = listener_then(
        "\
pools:
  - name: pg
    health_check:
      kind: http
      method: HEAD
      path: health
      expect_status: \"500-200\"
      expect_body: ok
      send: PING
      port: 70000
    backends: [{ address: \"10.0.0.1:5432\" }]
",
    );
    let errors = errors(&text);
    let found: Vec<(&str, Option<usize>)> =
        errors.iter().map(|e| (e.path.as_str(), e.line)).collect();
    for (path, line) in [
        ("pools[0].health_check.path", 8),
        ("pools[0].health_check.expect_status", 9),
        ("pools[0].health_check.expect_body", 10),
        ("pools[0].health_check.send", 11),
        ("pools[0].health_check.port", 12),
    ] {
        assert!(
            found.contains(&(path, Some(line))),
            "{path}@{line} missing from {found:?}"
        );
    }
    assert!(errors.iter().all(|e| e.column.is_some()), "{errors:?}");
}

#[test]
fn an_http_check_resolves_with_its_defaults_and_its_keys() {
    let pool = resolved_check;
    let defaults = pool("{ kind: http }");
    assert_eq!(defaults.kind, ProbeKind::Http);
    assert_eq!(defaults.port, None);
    assert_eq!(
        defaults.http,
        Some(HttpCheck {
            method: HttpMethod::Get,
            path: "/".into(),
            host: None,
            expect_status: ExpectStatus(vec![DEFAULT_EXPECT_STATUS]),
            expect_body: None,
            tls: None,
        })
    );
    let full = pool(
        "{ kind: http, port: 8008, method: GET, path: /primary, host: db.example, expect_status: [200, \"204-206\"], expect_body: ok }",
    );
    assert_eq!(full.port, Some(8008));
    let http = full.http.unwrap();
    assert_eq!(http.path, "/primary");
    assert_eq!(http.host.as_deref(), Some("db.example"));
    assert_eq!(http.expect_status.to_string(), "200, 204-206");
    assert_eq!(http.expect_body.as_deref(), Some("ok"));
    let one = pool("{ kind: http, method: HEAD, expect_status: \"204\" }");
    assert_eq!(one.http.unwrap().expect_status.to_string(), "204");
    // `port` applies to every kind.
    assert_eq!(pool("{ kind: tcp, port: 9000 }").port, Some(9000));
    // So does `address`, bare or bracketed for IPv6.
    let v4 = pool("{ kind: redis, address: 10.0.0.9 }");
    assert_eq!(v4.address, Some("10.0.0.9".parse().unwrap()));
    assert_eq!(v4.port, None);
    let v6 = pool("{ kind: http, address: \"[fd00::9]\", port: 8008 }");
    assert_eq!(v6.address, Some("fd00::9".parse().unwrap()));
}

#[test]
fn display_matches_the_documented_format() {
    let text = pool_then(
        "\
listeners:
  - { name: a, listen: \"127.0.0.1:1001\", pool: pg }
  - name: b
    listen: 127.0.0.1:1002
    pool: pgg
",
    );
    let errors = errors(&text);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(
        errors[0].to_string(),
        "test.yaml:8:5: listeners[1].pool: no pool named \"pgg\"; did you mean \"pg\"?"
    );
    assert_eq!(errors[0].column, Some(5));
}

#[test]
fn reports_all_errors_not_just_the_first() {
    let text = "\
listeners:
  - name: a
    listen: 127.0.0.1:1001
    pool: pgg
  - name: b
    listen: 127.0.0.1:1002
    pool: pg
    bogus: true
pools:
  - name: pg
    backends:
      - { address: \"10.0.0.1:5432\", weight: 0 }
";
    let errors = errors(text);
    let found: Vec<(&str, Option<usize>)> =
        errors.iter().map(|e| (e.path.as_str(), e.line)).collect();
    assert_eq!(
        found,
        [
            ("listeners[0].pool", Some(4)),
            ("listeners[1].bogus", Some(8)),
            ("pools[0].backends[0].weight", Some(12)),
        ]
    );

    let display = LoadError::Invalid(errors).to_string();
    let lines: Vec<&str> = display.lines().collect();
    assert_eq!(lines.len(), 3);
    assert!(lines[0].starts_with("test.yaml:4:5: listeners[0].pool: no pool named \"pgg\""));
    assert!(lines[1].starts_with("test.yaml:8:5: listeners[1].bogus: unknown field `bogus`"));
    assert!(lines[2].starts_with("test.yaml:12:37: pools[0].backends[0].weight: weight must be"));
}

/// (path, line, column) of each error.
fn places(errors: &[ConfigError]) -> Vec<(&str, Option<usize>, Option<usize>)> {
    errors
        .iter()
        .map(|e| (e.path.as_str(), e.line, e.column))
        .collect()
}

#[test]
fn several_wrong_types_in_one_item_are_all_reported() {
    let text = "\
workers: many
listeners:
  - name: a
    listen: 127.0.0.1:1001
    pool: pg
    max_connections: lots
    timeouts: 5
    allow: [[10.0.0.0/8]]
pools:
  - name: pg
    retries: many
    backends:
      - { address: \"10.0.0.1:5432\", weight: heavy, backup: maybe }
";
    let errors = errors(text);
    assert_eq!(
        places(&errors),
        [
            ("workers", Some(1), Some(1)),
            ("listeners[0].max_connections", Some(6), Some(5)),
            ("listeners[0].timeouts", Some(7), Some(5)),
            ("listeners[0].allow[0]", Some(8), Some(13)),
            ("pools[0].retries", Some(11), Some(5)),
            ("pools[0].backends[0].weight", Some(13), Some(37)),
            ("pools[0].backends[0].backup", Some(13), Some(52)),
        ],
        "{errors:#?}"
    );
    assert!(errors[1].message.contains("invalid type: string \"lots\""));
}

#[test]
fn every_error_with_a_place_has_a_line_and_a_column() {
    let texts = [
        // YAML syntax, at the bad token.
        "listeners:\n  - name: a\n   pool: [\n",
        // Type errors, unknown keys, duplicate keys, values checked by validation.
        "workers: [1]\nlistenres: []\n",
        "workers: 1\nworkers: 2\n",
        "listeners:\n  - { name: a, listen: \"127.0.0.1:1\", pool: nope }\n",
        "listeners:\n  - name: a\n    listen: 127.0.0.1:1\n    pool: p\n    timeouts: { idle: 30 }\n",
    ];
    for text in texts {
        for error in errors(text) {
            if let Some(line) = error.line {
                let column = error
                    .column
                    .unwrap_or_else(|| panic!("{text:?}: {error:?}"));
                let place = format!("test.yaml:{line}:{column}: ");
                assert!(error.to_string().starts_with(&place), "{error}");
            }
        }
    }
    let syntax = errors("listeners:\n  - name: a\n   pool: [\n");
    assert_eq!(syntax.len(), 1, "{syntax:?}");
    assert_eq!((syntax[0].line, syntax[0].column), (Some(3), Some(8)));
}

#[test]
fn a_tab_in_the_indentation_is_named_in_plain_words() {
    let text = "listeners:\n  - name: a\n\tlisten: 127.0.0.1:1\n";
    let errors = errors(text);
    assert_eq!(errors.len(), 1, "{errors:?}");
    let error = &errors[0];
    assert_eq!((error.line, error.column), (Some(3), Some(1)), "{error}");
    assert!(
        error
            .message
            .contains("tab character used for indentation; YAML indents with spaces"),
        "{error}"
    );
}

#[test]
fn an_empty_file_gets_one_clear_line() {
    for text in ["", "\n\n", "# nothing but a comment\n", "---\n"] {
        let errors = errors(text);
        assert_eq!(errors.len(), 1, "{text:?}: {errors:?}");
        assert!(
            errors[0].message.contains("empty"),
            "{text:?}: {}",
            errors[0]
        );
        assert_eq!(errors[0].path, "", "{text:?}");
    }
}

/// Writes `bytes` to a scratch file and loads it.
fn load_bytes(bytes: &[u8]) -> Vec<ConfigError> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let path = std::env::temp_dir().join(format!(
        "ballast-config-errors-{}-{n}.yaml",
        std::process::id()
    ));
    std::fs::write(&path, bytes).unwrap();
    let result = load_file(&path);
    let _ = std::fs::remove_file(&path);
    match result {
        Err(LoadError::Invalid(errors)) => errors,
        Err(other) => panic!("{bytes:?}: wanted LoadError::Invalid, got {other}"),
        Ok(_) => panic!("{bytes:?} loaded"),
    }
}

/// Line and column.
type Place = Option<(usize, usize)>;

#[test]
fn a_file_that_is_not_yaml_text_gets_one_clear_line() {
    // Not UTF-8: a Latin-1 byte on line 2, a gzip header, a UTF-16 file.
    let cases: [(&[u8], Place); 4] = [
        (b"workers: 1\nlisteners: caf\xe9\n", Some((2, 15))),
        (b"\x1f\x8b\x08\x00\x00\x00\x00\x00", Some((1, 2))),
        (b"\xff\xfew\x00o\x00", Some((1, 1))),
        // UTF-8, but binary: a NUL byte.
        (b"workers: 1\nlisteners:\x00\x01\x02\n", Some((2, 11))),
    ];
    for (bytes, place) in cases {
        let errors = load_bytes(bytes);
        assert_eq!(errors.len(), 1, "{bytes:?}: {errors:?}");
        let error = &errors[0];
        assert_eq!(error.line.zip(error.column), place, "{bytes:?}: {error}");
        assert!(
            error.message.contains("not YAML text"),
            "{bytes:?}: {error}"
        );
        assert!(!error.to_string().contains('\n'), "{error}");
    }
}

#[test]
fn a_broken_pool_does_not_make_its_references_unknown() {
    let text = "\
listeners:
  - { name: a, listen: \"127.0.0.1:1001\", pool: pg }
pools:
  - name: pg
    retries: many
    backends: [{ address: \"10.0.0.1:5432\" }]
";
    let errors = errors(text);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].path, "pools[0].retries");
}

const FULL: &str = "\
admin: { listen: \"127.0.0.1:9190\", token_file: /etc/ballast/token }
workers: 4
drain_timeout: 1m30s
listeners:
  - name: postgres
    protocol: tcp
    listen: [\"0.0.0.0:5432\", \"[::]:5432\"]
    pool: pg
    max_connections: 20000
    timeouts: { connect: 2s, idle: 1h }
  - name: web
    listen: 127.0.0.1:8080
    pool: web
  - name: tests
    listen: [\"127.0.0.1:0\", \"127.0.0.1:0\"]
    pool: fast
pools:
  - name: pg
    algorithm: maglev
    hash_key: five_tuple
    table_size: 1009
    retries: 2
    passive: { max_fails: 3, fail_timeout: 30s }
    health_check: { kind: tcp, interval: 2s, timeout: 500ms, rise: 3, fall: 2, send: \"PING\\r\\n\", expect_hex: \"2b 50 4f 4e 47\" }
    on_backend_down: close
    backends:
      - { address: 10.0.0.1:5432, weight: 3 }
      - { address: 10.0.0.2:5432, weight: 1, max_connections: 500 }
      - { address: \"[fd00::3]:5432\", backup: true }
  - name: web
    algorithm: least_time
    time_metric: first_byte
    retries: 0
    passive: { max_fails: 0 }
    health_check: { interval: 1s }
    slow_start: 30s
    backends:
      - address: 10.0.1.1:80
      - address: 10.0.1.2:80
  - name: fast
    algorithm: power_of_two
    backends: [{ address: \"127.0.0.1:9000\" }]
";

#[test]
fn full_valid_config_resolves() {
    let loaded = load_str(FULL, FILE).unwrap();
    // Its one-backend pool keeps the default `retries`, which can never happen.
    let warnings: Vec<&str> = loaded.warnings.iter().map(|w| w.path.as_str()).collect();
    assert_eq!(warnings, ["pools[2].retries"], "{:?}", loaded.warnings);
    let expected = Config {
        admin: Some(Admin {
            token_file: Some("/etc/ballast/token".into()),
            ..Admin::new(addr("127.0.0.1:9190"))
        }),
        workers: Workers::Count(4),
        drain_timeout: Duration::from_secs(90),
        grace: Duration::ZERO,
        listeners: vec![
            Listener {
                name: "postgres".into(),
                protocol: Protocol::Tcp,
                listen: vec![addr("0.0.0.0:5432"), addr("[::]:5432")],
                pool: "pg".into(),
                max_connections: Some(20000),
                connect_timeout: Duration::from_secs(2),
                idle_timeout: Duration::from_secs(3600),
                udp: None,
                access: ballast_control::config::ListenerAccess::default(),
                shared_port: false,
                fastpath: ListenerFastpath::None,
                client_tcp: Default::default(),
                max_lifetime: None,
            },
            Listener {
                name: "web".into(),
                protocol: Protocol::Tcp,
                listen: vec![addr("127.0.0.1:8080")],
                pool: "web".into(),
                max_connections: None,
                connect_timeout: DEFAULT_CONNECT_TIMEOUT,
                idle_timeout: DEFAULT_IDLE_TIMEOUT,
                udp: None,
                access: ballast_control::config::ListenerAccess::default(),
                shared_port: false,
                fastpath: ListenerFastpath::None,
                client_tcp: Default::default(),
                max_lifetime: None,
            },
            Listener {
                name: "tests".into(),
                protocol: Protocol::Tcp,
                listen: vec![addr("127.0.0.1:0"), addr("127.0.0.1:0")],
                pool: "fast".into(),
                max_connections: None,
                connect_timeout: DEFAULT_CONNECT_TIMEOUT,
                idle_timeout: DEFAULT_IDLE_TIMEOUT,
                udp: None,
                access: ballast_control::config::ListenerAccess::default(),
                shared_port: false,
                fastpath: ListenerFastpath::None,
                client_tcp: Default::default(),
                max_lifetime: None,
            },
        ],
        pools: vec![
            Pool {
                name: "pg".into(),
                algorithm: Algorithm::Maglev {
                    hash_key: HashKey::FiveTuple,
                    table_size: 1009,
                },
                retries: 2,
                passive: Some(PassivePolicy {
                    max_fails: 3,
                    fail_timeout: Duration::from_secs(30),
                }),
                health_check: Some(HealthCheck {
                    kind: ProbeKind::Tcp,
                    interval: Duration::from_secs(2),
                    timeout: Duration::from_millis(500),
                    rise: 3,
                    fall: 2,
                    send: Some(b"PING\r\n".to_vec()),
                    expect: Some(b"+PONG".to_vec()),
                    port: None,
                    address: None,
                    http: None,
                    redis: None,
                    postgres: None,
                    mysql: None,
                    agent: None,
                    proxy: None,
                }),
                on_backend_down: OnBackendDown::Close,
                slow_start: None,
                backends: vec![
                    Backend {
                        address: addr("10.0.0.1:5432"),
                        weight: 3,
                        backup: false,
                        max_connections: None,
                    },
                    Backend {
                        address: addr("10.0.0.2:5432"),
                        weight: 1,
                        backup: false,
                        max_connections: Some(500),
                    },
                    Backend {
                        address: addr("[fd00::3]:5432"),
                        weight: 1,
                        backup: true,
                        max_connections: None,
                    },
                ],
                discover: Vec::new(),
                send_proxy: None,
                queue: None,
                backend_tcp: Default::default(),
            },
            Pool {
                name: "web".into(),
                algorithm: Algorithm::LeastTime {
                    metric: TimeMetric::FirstByte,
                },
                retries: 0,
                passive: None,
                // A short interval brings the default timeout (2s) down to it.
                health_check: Some(HealthCheck {
                    kind: ProbeKind::Tcp,
                    interval: Duration::from_secs(1),
                    timeout: Duration::from_secs(1),
                    rise: DEFAULT_RISE,
                    fall: DEFAULT_FALL,
                    send: None,
                    expect: None,
                    port: None,
                    address: None,
                    http: None,
                    redis: None,
                    postgres: None,
                    mysql: None,
                    agent: None,
                    proxy: None,
                }),
                on_backend_down: OnBackendDown::Keep,
                slow_start: Some(Duration::from_secs(30)),
                backends: vec![
                    Backend {
                        address: addr("10.0.1.1:80"),
                        weight: 1,
                        backup: false,
                        max_connections: None,
                    },
                    Backend {
                        address: addr("10.0.1.2:80"),
                        weight: 1,
                        backup: false,
                        max_connections: None,
                    },
                ],
                discover: Vec::new(),
                send_proxy: None,
                queue: None,
                backend_tcp: Default::default(),
            },
            Pool {
                name: "fast".into(),
                algorithm: Algorithm::PowerOfTwo,
                retries: DEFAULT_RETRIES,
                passive: Some(DEFAULT_PASSIVE),
                health_check: None,
                on_backend_down: OnBackendDown::Keep,
                slow_start: None,
                backends: vec![Backend {
                    address: addr("127.0.0.1:9000"),
                    weight: 1,
                    backup: false,
                    max_connections: None,
                }],
                discover: Vec::new(),
                send_proxy: None,
                queue: None,
                backend_tcp: Default::default(),
            },
        ],
        fastpath: Fastpath::default(),
        access_log: Default::default(),
        dns: Default::default(),
        state_file: None,
    };
    assert_eq!(loaded.config, expected);
}

#[test]
fn minimal_config_gets_defaults() {
    let loaded = load_str(&format!("{POOL}{LISTENER}"), FILE).unwrap();
    let config = loaded.config;
    assert_eq!(config.workers, Workers::Auto);
    assert_eq!(config.drain_timeout, DEFAULT_DRAIN_TIMEOUT);
    let listener = &config.listeners[0];
    assert_eq!(listener.protocol, Protocol::Tcp);
    assert_eq!(listener.connect_timeout, DEFAULT_CONNECT_TIMEOUT);
    assert_eq!(listener.idle_timeout, DEFAULT_IDLE_TIMEOUT);
    let pool = config.pool("pg").unwrap();
    assert_eq!(pool.algorithm, Algorithm::RoundRobin);
    assert_eq!(pool.retries, DEFAULT_RETRIES);
    assert_eq!(pool.passive, Some(DEFAULT_PASSIVE));
    assert_eq!(pool.backends[0].weight, 1);

    let maglev = "\
pools:
  - name: pg
    algorithm: maglev
    backends: [{ address: \"10.0.0.1:5432\" }]
  - name: lt
    algorithm: least_time
    backends: [{ address: \"10.0.0.1:5432\" }]
listeners:
  - { name: a, listen: \"127.0.0.1:1001\", pool: pg }
  - { name: b, listen: \"127.0.0.1:1002\", pool: lt }
";
    let config = load_str(maglev, FILE).unwrap().config;
    assert_eq!(
        config.pools[0].algorithm,
        Algorithm::Maglev {
            hash_key: HashKey::SourceIp,
            table_size: 65537
        }
    );
    assert_eq!(
        config.pools[1].algorithm,
        Algorithm::LeastTime {
            metric: TimeMetric::Connect
        }
    );
}

#[test]
fn the_default_retries_on_one_backend_warns_like_an_explicit_one() {
    let warning = |retries: &str| {
        let text = format!(
            "{LISTENER}pools:\n  - name: pg\n{retries}    backends: [{{ address: \"10.0.0.1:5432\" }}]\n"
        );
        let loaded = load_str(&text, FILE).unwrap();
        let found: Vec<String> = loaded
            .warnings
            .iter()
            .filter(|w| w.path == "pools[0].retries")
            .map(|w| w.message.clone())
            .collect();
        assert_eq!(found.len(), 1, "{retries:?}: {:?}", loaded.warnings);
        found[0].clone()
    };
    let explicit = warning("    retries: 2\n");
    let default = warning("");
    assert!(
        explicit.contains("the pool has 1 backend(s), so at most 0 retry(ies) can happen"),
        "{explicit}"
    );
    assert!(
        default.contains("the pool has 1 backend(s), so at most 0 retry(ies) can happen"),
        "{default}"
    );
    assert!(default.contains("default"), "{default}");
    // `retries: 0` says the user knows.
    let text = format!(
        "{LISTENER}pools:\n  - name: pg\n    retries: 0\n    backends: [{{ address: \"10.0.0.1:5432\" }}]\n"
    );
    assert_eq!(load_str(&text, FILE).unwrap().warnings, vec![]);
}

#[test]
fn warnings_do_not_stop_loading() {
    let text = "\
listeners:
  - { name: a, listen: \"127.0.0.1:1001\", pool: pg }
pools:
  - name: pg
    algorithm: maglev
    table_size: 101
    retries: 5
    backends:
      - { address: 10.0.0.1:5432, backup: true }
      - { address: 10.0.0.2:5432, backup: true }
  - name: unused
    passive: { max_fails: 0, fail_timeout: 5s }
    backends: [{ address: \"10.0.0.9:1\" }]
";
    let loaded = load_str(text, FILE).unwrap();
    let warnings: Vec<(&str, Option<usize>)> = loaded
        .warnings
        .iter()
        .map(|w| (w.path.as_str(), w.line))
        .collect();
    assert_eq!(
        warnings,
        [
            ("pools[0].table_size", Some(6)),
            ("pools[0].retries", Some(7)),
            ("pools[0].backends", Some(8)),
            ("pools[1].name", Some(11)),
            // The default `retries: 2` with one backend: placed at the pool.
            ("pools[1].retries", Some(11)),
            ("pools[1].passive.fail_timeout", Some(12)),
        ],
        "{:#?}",
        loaded.warnings
    );
    assert!(loaded.warnings[0]
        .message
        .contains("below 100 × 2 backends"));
    assert!(loaded.warnings[3]
        .message
        .contains("not used by any listener"));
    assert_eq!(loaded.config.pools[1].passive, None);
}

#[test]
fn load_file_reads_and_names_the_file() {
    let dir = std::env::temp_dir().join(format!("ballast-config-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let good = dir.join("good.yaml");
    std::fs::write(&good, FULL).unwrap();
    assert_eq!(load_file(&good).unwrap().config.listeners.len(), 3);

    let bad = dir.join("bad.yaml");
    std::fs::write(&bad, "workers: 0\n").unwrap();
    let message = load_file(&bad).unwrap_err().to_string();
    assert!(
        message.starts_with(&format!("{}:1:1: workers: ", bad.display())),
        "{message}"
    );

    let missing = dir.join("missing.yaml");
    match load_file(&missing) {
        Err(LoadError::Io { path, .. }) => assert_eq!(path, missing.display().to_string()),
        other => panic!("expected an I/O error, got {other:?}"),
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Characters that change YAML structure the most.
const MUTATION_CHARS: &[u8] = b":-[]{},#&*!|>'\"\n \t0a?%@`";

fn mutate(text: &str, edits: &[(usize, u8, u8)]) -> String {
    let mut bytes = text.as_bytes().to_vec();
    for &(position, kind, value) in edits {
        let at = position % (bytes.len() + 1);
        let c = MUTATION_CHARS[usize::from(value) % MUTATION_CHARS.len()];
        match kind % 4 {
            0 => bytes.insert(at, c),
            1 if at < bytes.len() => {
                bytes.remove(at);
            }
            2 if at < bytes.len() => bytes[at] = c,
            _ => {
                // Duplicate the line containing `at`, a common copy-paste slip.
                let start = bytes[..at]
                    .iter()
                    .rposition(|&b| b == b'\n')
                    .map_or(0, |i| i + 1);
                let end = bytes[at..]
                    .iter()
                    .position(|&b| b == b'\n')
                    .map_or(bytes.len(), |i| at + i + 1);
                let line = bytes[start..end].to_vec();
                bytes.splice(start..start, line);
            }
        }
    }
    // Every mutation character is ASCII, so the result stays UTF-8.
    String::from_utf8(bytes).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_text_never_panics(text in "\\PC{0,200}") {
        let _ = load_str(&text, FILE);
    }

    #[test]
    fn yaml_like_text_never_panics(text in "[a-z_:\\-\\[\\]{}, \n\"'0-9.&*<]{0,200}") {
        let _ = load_str(&text, FILE);
    }

    #[test]
    fn mutated_valid_config_never_panics(
        edits in proptest::collection::vec((any::<usize>(), any::<u8>(), any::<u8>()), 1..8)
    ) {
        let text = mutate(FULL, &edits);
        match load_str(&text, FILE) {
            Ok(_) => {}
            Err(LoadError::Invalid(errors)) => prop_assert!(!errors.is_empty()),
            Err(other) => prop_assert!(false, "unexpected error {other}"),
        }
    }
}

// ---------------------------------------------------------------------------------------
// The kernel fast path (issue 14): `fastpath` and `listeners[].fastpath`.
// ---------------------------------------------------------------------------------------

#[test]
fn fastpath_socket_refuses_listener_features_that_need_ballast_in_the_byte_path() {
    let text = "\
listeners:
  - name: web
    listen: 127.0.0.1:8443
    fastpath: socket
    tls_passthrough: { default_pool: pg }
    accept_proxy_protocol: { trusted: [\"10.1.0.0/16\"] }
    max_connections_per_source: 10
    new_connections_per_second_per_source: 5
    allow: [\"10.0.0.0/8\"]
    deny: [\"10.9.0.0/16\"]
    max_connections: 100
pools:
  - name: pg
    backends: [{ address: \"10.0.0.1:5432\" }]
";
    assert_errors(
        text,
        &[
            (
                "5:5: listeners[0].tls_passthrough",
                "the socket fast path cannot honour `tls_passthrough`: the client connects to \
                 the backend directly, so Ballast never reads the ClientHello to route by SNI \
                 (this listener has `fastpath: socket`); remove `tls_passthrough` or set \
                 `fastpath: none`",
            ),
            (
                "6:5: listeners[0].accept_proxy_protocol",
                "the socket fast path cannot honour `accept_proxy_protocol`",
            ),
            (
                "7:5: listeners[0].max_connections_per_source",
                "the socket fast path cannot honour `max_connections_per_source`",
            ),
            (
                "8:5: listeners[0].new_connections_per_second_per_source",
                "the socket fast path cannot honour `new_connections_per_second_per_source`",
            ),
            (
                "9:5: listeners[0].allow",
                "the hook does not check `allow` and `deny` in this version",
            ),
            (
                "10:5: listeners[0].deny",
                "the hook does not check `allow` and `deny` in this version",
            ),
            (
                "11:5: listeners[0].max_connections",
                "the socket fast path cannot honour `max_connections`",
            ),
        ],
    );
}

#[test]
fn fastpath_socket_refuses_a_pool_that_sends_proxy_protocol() {
    // Two steering listeners share the pool: one error, naming both; a relay-only listener
    // on another pool with a PROXY header is fine.
    let text = "\
listeners:
  - { name: a, listen: \"127.0.0.1:1001\", pool: pg, fastpath: socket }
  - { name: b, listen: \"127.0.0.1:1002\", pool: pg, fastpath: socket }
  - { name: c, listen: \"127.0.0.1:1003\", pool: relayed }
pools:
  - name: pg
    send_proxy_protocol: v2
    backends: [{ address: \"10.0.0.1:5432\" }]
  - name: relayed
    send_proxy_protocol: v1
    backends: [{ address: \"10.0.0.1:5432\" }]
";
    assert_errors(
        text,
        &[(
            "7:5: pools[0].send_proxy_protocol",
            "the socket fast path cannot honour `send_proxy_protocol`: the client connects to \
             the backend directly, so no PROXY header is written (the pool of listeners \"a\", \
             \"b\", which have `fastpath: socket`)",
        )],
    );
}

#[test]
fn fastpath_socket_balances_every_algorithm_but_least_time() {
    let pool = |name: &str, algorithm: &str| {
        format!(
            "  - name: {name}\n    algorithm: {algorithm}\n    backends: [{{ address: \"10.0.0.1:1\" }}]\n"
        )
    };
    let mut text = String::from("listeners:\n");
    let algorithms = [
        "round_robin",
        "random",
        "least_connections",
        "power_of_two",
        "least_time",
        "maglev",
    ];
    for (i, algorithm) in algorithms.iter().enumerate() {
        text.push_str(&format!(
            "  - {{ name: l{i}, listen: \"127.0.0.1:{}\", pool: {algorithm}, fastpath: socket }}\n",
            1001 + i
        ));
    }
    text.push_str("pools:\n");
    for algorithm in algorithms {
        text.push_str(&pool(algorithm, algorithm));
    }
    // `pools:` is line 8, then three lines a pool; `algorithm` is each pool's second line.
    assert_errors(
        &text,
        &[(
            "22:5: pools[4].algorithm",
            "the socket fast path balances round_robin, random, least_connections, \
             power_of_two, maglev, not least_time (the pool of listener \"l4\"",
        )],
    );
}

#[test]
fn fastpath_socket_least_connections_compares_at_most_64_backends() {
    let mut text = String::from(
        "listeners:\n  - { name: a, listen: \"127.0.0.1:1001\", pool: p, fastpath: socket }\npools:\n  - name: p\n    algorithm: least_connections\n    backends:\n",
    );
    for i in 0..65 {
        text.push_str(&format!(
            "      - {{ address: \"10.0.{}.{}:1\" }}\n",
            i / 200,
            i % 200 + 1
        ));
    }
    assert_errors(
        &text,
        &[(
            "6:5: pools[0].backends",
            "65 backends in one tier: the hook compares at most 64 for least_connections",
        )],
    );
}

#[test]
fn fastpath_socket_holds_backend_max_connections_but_not_slow_start() {
    let text = "\
listeners:
  - { name: a, listen: \"127.0.0.1:1001\", pool: pg, fastpath: socket }
pools:
  - name: pg
    slow_start: 10s
    backends:
      - { address: \"10.0.0.1:5432\" }
      - { address: \"10.0.0.2:5432\", max_connections: 50 }
";
    // The hook holds the limit against the sessions of both paths; it cannot ramp weights.
    assert_errors(
        text,
        &[(
            "5:5: pools[0].slow_start",
            "the socket fast path cannot honour `slow_start`: the hook steers by the \
             configured weights",
        )],
    );
}

#[test]
fn fastpath_socket_wants_one_address_family() {
    let text = "\
listeners:
  - name: a
    listen: [\"127.0.0.1:6379\", \"[::1]:6379\"]
    pool: pg
    fastpath: socket
pools:
  - name: pg
    backends:
      - { address: \"10.0.0.1:6379\" }
      - { address: \"[fd00::2]:6379\" }
";
    assert_errors(
        text,
        &[
            (
                "3:32: listeners[0].listen[1]",
                "[::1]:6379 is an IPv6 address and 127.0.0.1:6379 an IPv4 one: the socket fast \
                 path wants all listen addresses of a `fastpath: socket` listener, and every \
                 backend of its pool, of one family",
            ),
            (
                "10:11: pools[0].backends[1].address",
                "[fd00::2]:6379 is an IPv6 address, and every backend of a pool behind \
                 `fastpath: socket` must have the family of the listener's addresses, IPv4 \
                 here (the pool of listener \"a\"",
            ),
        ],
    );
    // The same addresses serve through the relay.
    let relayed = text.replace("    fastpath: socket\n", "");
    assert!(load_str(&relayed, FILE).is_ok());
    // An IPv6 listener steers to IPv6 backends, and refuses an IPv4 one.
    let ipv6 = text
        .replace("\"127.0.0.1:6379\", ", "")
        .replace("10.0.0.1:6379", "[fd00::1]:6379");
    assert!(load_str(&ipv6, FILE).is_ok());
    assert_errors(
        &ipv6.replace("[fd00::2]:6379", "10.0.0.2:6379"),
        &[(
            "10:11: pools[0].backends[1].address",
            "10.0.0.2:6379 is an IPv4 address, and every backend of a pool behind `fastpath: \
             socket` must have the family of the listener's addresses, IPv6 here",
        )],
    );
}

#[test]
fn fastpath_socket_needs_a_fixed_port() {
    let text = pool_then(
        "\
listeners:
  - { name: a, listen: \"127.0.0.1:0\", pool: pg, fastpath: socket }
",
    );
    assert_errors(
        &text,
        &[(
            "5:16: listeners[0].listen",
            "127.0.0.1:0: port 0 picks a new port on every start, and the socket fast path \
             needs a fixed address",
        )],
    );
}

#[test]
fn fastpath_socket_warns_that_retries_and_timeouts_do_not_apply() {
    let text = "\
listeners:
  - { name: a, listen: \"127.0.0.1:1001\", pool: pg, fastpath: socket }
  - { name: b, listen: \"127.0.0.1:1002\", pool: pg, timeouts: { connect: 1s } }
  - name: c
    listen: 127.0.0.1:1003
    pool: pg
    timeouts: { connect: 1s, idle: 1m }
    fastpath: socket
pools:
  - name: pg
    retries: 1
    backends: [{ address: \"10.0.0.1:5432\" }, { address: \"10.0.0.2:5432\" }]
";
    let warnings = warnings_of(text);
    assert_eq!(warnings.len(), 2, "{warnings:#?}");
    let expected = ["2:52: listeners[0].fastpath", "8:5: listeners[2].fastpath"];
    for (warning, place) in warnings.iter().zip(expected) {
        assert!(
            warning.starts_with(&format!("{FILE}:{place}: "))
                && warning.contains(
                    "`retries` and `timeouts` (`connect`, `idle`) do not apply to connections \
                     the socket fast path steers: the client connects to the backend directly"
                ),
            "{warning}"
        );
    }
}

#[test]
fn fastpath_socket_is_allowed_on_udp_listeners() {
    let text = "\
listeners:
  - name: dns
    protocol: udp
    listen: 127.0.0.1:5353
    pool: resolvers
    udp: { idle_timeout: 10s }
    fastpath: socket
pools:
  - name: resolvers
    algorithm: random
    retries: 0
    backends: [{ address: \"10.0.0.53:53\" }]
";
    let loaded = load_str(text, FILE).unwrap();
    assert_eq!(
        loaded.config.listeners[0].fastpath,
        ListenerFastpath::Socket
    );
    let warnings: Vec<String> = loaded.warnings.iter().map(ToString::to_string).collect();
    assert_eq!(warnings.len(), 1, "{warnings:#?}");
    assert!(
        warnings[0].starts_with(
            "test.yaml:7:5: listeners[0].fastpath: `retries` and the flow timeout and limit \
             (`udp.idle_timeout`, `udp.max_flows`) do not apply to datagrams the socket fast \
             path steers"
        ),
        "{}",
        warnings[0]
    );
}

#[test]
fn fastpath_socket_without_a_socket_lb_block_gets_the_defaults() {
    let text = pool_then(
        "\
listeners:
  - { name: a, listen: \"127.0.0.1:1001\", pool: pg, fastpath: socket }
",
    );
    let config = load_str(&text, FILE).unwrap().config;
    assert_eq!(
        config.fastpath,
        Fastpath {
            socket_lb: Some(SocketLb {
                cgroup: None,
                mode: FastpathMode::Auto,
            }),
            udp_offload: None,
        }
    );
    // Nothing asks for it: nothing configured.
    let config = load_str(&format!("{POOL}{LISTENER}"), FILE).unwrap().config;
    assert_eq!(config.fastpath, Fastpath::default());
    assert_eq!(config.fastpath.socket_lb, None);
    assert_eq!(config.listeners[0].fastpath, ListenerFastpath::None);
}

#[test]
fn fastpath_cgroup_must_be_an_absolute_path() {
    let block =
        |cgroup: &str| format!("{POOL}{LISTENER}fastpath:\n  socket_lb:\n    cgroup: {cgroup}\n");
    assert_errors(
        &block("sys/fs/cgroup/app"),
        &[(
            "8:5: fastpath.socket_lb.cgroup",
            "\"sys/fs/cgroup/app\" is not an absolute path",
        )],
    );
    assert_errors(
        &block("\"\""),
        &[("8:5: fastpath.socket_lb.cgroup", "must not be empty")],
    );
    // Existence is checked at run time, not by `check`.
    let config = load_str(&block("/no/such/cgroup"), FILE).unwrap().config;
    assert_eq!(
        config.fastpath.socket_lb.unwrap().cgroup,
        Some("/no/such/cgroup".into())
    );
}

#[test]
fn fastpath_keys_and_values_are_checked() {
    let text = "\
listeners:
  - { name: a, listen: \"127.0.0.1:1001\", pool: pg, fastpath: sockets }
pools:
  - name: pg
    backends: [{ address: \"10.0.0.1:5432\" }]
fastpath:
  socket_lb:
    mode: require
";
    assert_errors(
        text,
        &[
            (
                "2:52: listeners[0].fastpath",
                "unknown fastpath \"sockets\" (did you mean \"socket\"?); expected one of: \
                 none, socket",
            ),
            (
                "8:5: fastpath.socket_lb.mode",
                "unknown mode \"require\" (did you mean \"required\"?); expected one of: auto, \
                 required",
            ),
        ],
    );
    assert_errors(
        &format!("{POOL}{LISTENER}fastpath:\n  socket_lb: {{ cgrup: /sys/fs/cgroup }}\n"),
        &[("7:16: fastpath.socket_lb.cgrup", "unknown field `cgrup`")],
    );
    assert_errors(
        &format!("{POOL}{LISTENER}fastpath:\n  xdp: {{}}\n"),
        &[("7:3: fastpath.xdp", "unknown field `xdp`")],
    );
}

#[test]
fn a_fastpath_config_resolves() {
    let text = "\
fastpath:
  socket_lb:
    cgroup: /sys/fs/cgroup/unified/myapp
    mode: required
listeners:
  - name: redis
    listen: 127.0.0.1:6379
    pool: redis
    fastpath: socket
  - name: relayed
    listen: 127.0.0.1:6380
    pool: redis
    fastpath: none
pools:
  - name: redis
    algorithm: random
    health_check: { kind: tcp, send: \"PING\\r\\n\", expect: \"+PONG\" }
    backends:
      - { address: \"10.0.0.1:6379\", weight: 2 }
      - { address: \"10.0.0.2:6379\", backup: true }
";
    let loaded = load_str(text, FILE).unwrap();
    let warnings: Vec<&str> = loaded.warnings.iter().map(|w| w.path.as_str()).collect();
    assert_eq!(warnings, ["listeners[0].fastpath"], "{:?}", loaded.warnings);
    let config = loaded.config;
    assert_eq!(
        config.fastpath,
        Fastpath {
            socket_lb: Some(SocketLb {
                cgroup: Some("/sys/fs/cgroup/unified/myapp".into()),
                mode: FastpathMode::Required,
            }),
            udp_offload: None,
        }
    );
    let fastpaths: Vec<ListenerFastpath> = config.listeners.iter().map(|l| l.fastpath).collect();
    assert_eq!(
        fastpaths,
        [ListenerFastpath::Socket, ListenerFastpath::None]
    );
    let redis = &config.listeners[0];
    assert_eq!(redis.listen, [addr("127.0.0.1:6379")]);
    assert_eq!(config.pools[0].algorithm, Algorithm::Random);
    assert_eq!(
        config.pools[0].backends[1],
        Backend {
            address: addr("10.0.0.2:6379"),
            weight: 1,
            backup: true,
            max_connections: None,
        }
    );
}

#[test]
fn fastpath_socket_warns_that_on_backend_down_close_reaches_only_relayed_sessions() {
    let text = "\
listeners:
  - { name: front, listen: 127.0.0.1:6379, pool: p, fastpath: socket }
pools:
  - name: p
    retries: 0
    on_backend_down: close
    health_check: { kind: tcp }
    backends: [{ address: \"10.0.0.1:6379\" }]
";
    let warnings = warnings_of(text);
    let close: Vec<&String> = warnings
        .iter()
        .filter(|w| w.contains("pools[0].on_backend_down"))
        .collect();
    assert_eq!(close.len(), 1, "{warnings:#?}");
    assert!(
        close[0].contains("ends only the sessions that go through the relay"),
        "{}",
        close[0]
    );
}

/// The health check of a pool with `check`, as the loader resolves it.
fn resolved_check(check: &str) -> HealthCheck {
    let loaded = load_str(&health_check_then(check), FILE).unwrap();
    loaded.config.pools[0].health_check.clone().unwrap()
}

/// Each (path, line, part of the message) is among `errors`.
fn assert_reported(errors: &[ConfigError], expected: &[(&str, usize, &str)]) {
    for (path, line, message) in expected {
        assert!(
            errors
                .iter()
                .any(|e| e.path == *path && e.line == Some(*line) && e.message.contains(message)),
            "{path}@{line} {message:?} missing from {errors:?}"
        );
    }
}

/// `kind: postgres`: a user is needed, its roles are its own, `database` is its alone.
#[test]
fn postgres_check_errors_come_all_at_once() {
    let text = listener_then(
        "\
pools:
  - name: pg
    health_check:
      kind: postgres
      role: master
      send: PING
      database: \"\"
    backends: [{ address: \"10.0.0.1:5432\" }]
  - name: redis
    health_check: { kind: redis, user: ballast, database: app }
    backends: [{ address: \"10.0.0.2:6379\" }]
",
    );
    let errors = errors(&text);
    assert_reported(
        &errors,
        &[
            ("pools[0].health_check", 5, "a postgres check needs `user`"),
            (
                "pools[0].health_check.role",
                7,
                "expected one of: any, primary, replica",
            ),
            (
                "pools[0].health_check.send",
                8,
                "a postgres check logs in and asks `pg_is_in_recovery()`",
            ),
            ("pools[0].health_check.database", 9, "is not a name"),
            (
                "pools[1].health_check.user",
                12,
                "applies only to `kind: postgres` or `kind: mysql`; this check is `kind: redis`",
            ),
            (
                "pools[1].health_check.database",
                12,
                "applies only to `kind: postgres`",
            ),
        ],
    );
}

#[test]
fn a_postgres_check_resolves_with_its_user_database_and_role() {
    let pool = resolved_check;
    let minimal = pool("{ kind: postgres, user: ballast }").postgres.unwrap();
    assert_eq!(
        minimal,
        PostgresCheck {
            user: "ballast".into(),
            password: None,
            database: None,
            role: PostgresRole::Any,
        }
    );
    let full = pool("{ kind: postgres, user: probe, database: app, role: primary, port: 6432 }");
    assert_eq!(full.port, Some(6432));
    let pg = full.postgres.unwrap();
    assert_eq!(pg.database.as_deref(), Some("app"));
    assert_eq!(pg.role, PostgresRole::Primary);
    let replica = pool("{ kind: postgres, user: probe, role: replica }");
    assert_eq!(replica.postgres.unwrap().role, PostgresRole::Replica);
    assert!(replica.redis.is_none() && replica.http.is_none());
}

#[test]
fn a_mysql_check_resolves_and_refuses_what_is_not_its_own() {
    let pool = resolved_check;
    let check = pool("{ kind: mysql, user: haproxy_check }");
    assert_eq!(
        check.mysql,
        Some(MysqlCheck {
            user: "haproxy_check".into(),
            password: None,
            role: MysqlRole::Any,
        })
    );
    let writable = pool("{ kind: mysql, user: probe, role: writable, port: 3307 }");
    assert_eq!(writable.mysql.unwrap().role, MysqlRole::Writable);
    let read_only = pool("{ kind: mysql, user: probe, role: read_only }");
    assert_eq!(read_only.mysql.unwrap().role, MysqlRole::ReadOnly);
    let errors = errors(&health_check_then(
        "{ kind: mysql, role: primary, database: app, expect: x }",
    ));
    assert_reported(
        &errors,
        &[
            ("pools[0].health_check", 5, "a mysql check needs `user`"),
            ("pools[0].health_check.role", 5, "any, writable, read_only"),
            (
                "pools[0].health_check.database",
                5,
                "applies only to `kind: postgres`; this check is `kind: mysql`",
            ),
            ("pools[0].health_check.expect", 5, "a mysql check logs in"),
        ],
    );
}

#[test]
fn an_agent_takes_the_checks_timing_unless_it_has_its_own() {
    let check = resolved_check("{ kind: http, interval: 3s, timeout: 1s, agent: { port: 5555 } }");
    assert_eq!(check.kind, ProbeKind::Http);
    let agent = check.agent.unwrap();
    assert_eq!((agent.port, agent.address, agent.send), (5555, None, None));
    assert_eq!(agent.interval, Duration::from_secs(3));
    assert_eq!(agent.timeout, Duration::from_secs(1));
    let own = resolved_check(
        "{ agent: { port: 5555, address: 10.0.0.9, interval: 500ms, send: \"web1\\n\" } }",
    )
    .agent
    .unwrap();
    assert_eq!(own.address, Some("10.0.0.9".parse().unwrap()));
    assert_eq!(own.interval, Duration::from_millis(500));
    assert_eq!(
        own.timeout,
        Duration::from_millis(500),
        "the default timeout fits the interval"
    );
    assert_eq!(own.send.as_deref(), Some(&b"web1\n"[..]));
    let errors = errors(&health_check_then(
        "{ agent: { address: \"10.0.0.9:5555\", interval: 1s, timeout: 2s } }",
    ));
    assert_reported(
        &errors,
        &[
            (
                "pools[0].health_check.agent",
                5,
                "an agent check needs `port`",
            ),
            (
                "pools[0].health_check.agent.address",
                5,
                "put the port in `port`",
            ),
            (
                "pools[0].health_check.agent.timeout",
                5,
                "\"2s\" is longer than the interval (1s)",
            ),
        ],
    );
}

#[test]
fn checks_of_a_proxy_pool_carry_its_version_unless_told_not_to() {
    let check = |version: &str, check: &str| {
        let text = listener_then(&format!(
            "pools:\n  - name: pg\n    send_proxy_protocol: {version}\n    health_check: {check}\n    backends: [{{ address: \"10.0.0.1:5432\" }}]\n"
        ));
        match load_str(&text, FILE) {
            Ok(loaded) => Ok(loaded.config.pools[0].health_check.clone().unwrap().proxy),
            Err(LoadError::Invalid(errors)) => Err(errors),
            Err(other) => panic!("{other}"),
        }
    };
    assert_eq!(
        check("v2", "{ kind: tcp }").unwrap(),
        Some(ProxyVersion::V2)
    );
    assert_eq!(
        check("v1", "{ kind: http }").unwrap(),
        Some(ProxyVersion::V1)
    );
    assert_eq!(
        check("v2", "{ kind: redis, send_proxy: false }").unwrap(),
        None
    );
    assert_eq!(resolved_check("{ kind: tcp }").proxy, None);
    assert_eq!(
        check("v2", "{ kind: mysql, user: probe, send_proxy: false }").unwrap(),
        None
    );
    let errors = check("v2", "{ kind: mysql, user: probe }").unwrap_err();
    assert_reported(
        &errors,
        &[(
            "pools[0].health_check.send_proxy",
            6,
            "Set `send_proxy: false`",
        )],
    );
}

/// `kind: redis`: its keys only with it, the payloads never with it, and a password file read
/// at load time; every mistake reported in one pass, each at its own key and line.
#[test]
fn redis_check_errors_come_all_at_once() {
    let missing = std::env::temp_dir().join("ballast-no-such-redis-password");
    let text = listener_then(&format!(
        "\
pools:
  - name: pg
    health_check:
      kind: redis
      role: primary
      send: PING
      expect: +PONG
      password_file: {missing:?}
    backends: [{{ address: \"10.0.0.1:6379\" }}]
  - name: tcp
    health_check: {{ kind: tcp, role: master, password_file: /etc/ballast/redis }}
    backends: [{{ address: \"10.0.0.2:6379\" }}]
"
    ));
    let errors = errors(&text);
    assert_reported(
        &errors,
        &[
            (
                "pools[0].health_check.role",
                7,
                "expected one of: any, master, replica",
            ),
            (
                "pools[0].health_check.send",
                8,
                "a redis check sends its own commands",
            ),
            (
                "pools[0].health_check.expect",
                9,
                "a redis check sends its own commands",
            ),
            ("pools[0].health_check.password_file", 10, "cannot read"),
            (
                "pools[1].health_check.role",
                13,
                "applies only to `kind: redis`, `kind: postgres` or `kind: mysql`; this check is `kind: tcp`",
            ),
            (
                "pools[1].health_check.password_file",
                13,
                "applies only to `kind: redis`",
            ),
        ],
    );
    let unreadable = errors
        .iter()
        .find(|e| e.path == "pools[0].health_check.password_file")
        .unwrap();
    assert!(
        unreadable.message.contains(&missing.display().to_string()),
        "{unreadable:?}"
    );
    assert!(errors.iter().all(|e| e.column.is_some()), "{errors:?}");
}

#[test]
fn a_redis_check_resolves_and_reads_its_password_file() {
    let pool = resolved_check;
    let defaults = pool("{ kind: redis }");
    assert_eq!(defaults.kind, ProbeKind::Redis);
    let redis = defaults.redis.unwrap();
    assert_eq!(redis.role, RedisRole::Any);
    assert!(redis.password.is_none());

    let dir = std::env::temp_dir().join(format!("ballast-redis-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("password");
    std::fs::write(&file, "s3cret\nignored second line\n").unwrap();
    let full = pool(&format!(
        "{{ kind: redis, role: master, port: 6380, password_file: {file:?} }}"
    ));
    assert_eq!(full.port, Some(6380));
    let redis = full.redis.unwrap();
    assert_eq!(redis.role, RedisRole::Master);
    let password = redis.password.unwrap();
    assert_eq!(password.expose(), "s3cret");
    assert!(!format!("{password:?}").contains("s3cret"));
    assert_eq!(
        pool("{ kind: redis, role: replica }").redis.unwrap().role,
        RedisRole::Replica
    );

    let empty = dir.join("empty");
    std::fs::write(&empty, "").unwrap();
    let errors = errors(&health_check_then(&format!(
        "{{ kind: redis, password_file: {empty:?} }}"
    )));
    assert!(
        errors
            .iter()
            .any(|e| e.path == "pools[0].health_check.password_file"
                && e.message.contains("is empty")
                && e.message.contains(&empty.display().to_string())),
        "{errors:?}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn fastpath_udp_offload_wants_udp_listeners_without_proxy_headers() {
    let text = "\
fastpath:
  udp_offload: { interfaces: [eth0, lo, \"a/b\"] }
listeners:
  - { name: db, listen: \"10.0.0.1:5432\", pool: pg, fastpath: udp_offload }
  - { name: dns, protocol: udp, listen: \"10.0.0.1:53\", pool: resolvers, fastpath: udp_offload }
pools:
  - { name: pg, backends: [{ address: \"10.0.1.1:5432\" }] }
  - name: resolvers
    send_proxy_protocol: v2
    backends: [{ address: \"10.0.1.1:53\" }]
";
    assert_errors(
        text,
        &[
            (
                "2:37: fastpath.udp_offload.interfaces[1]",
                "the UDP offload does not serve loopback",
            ),
            (
                "2:41: fastpath.udp_offload.interfaces[2]",
                "\"a/b\" is not a network interface name",
            ),
            (
                "4:52: listeners[0].fastpath",
                "`udp_offload` forwards UDP datagrams in the kernel and this is a TCP listener",
            ),
            (
                "9:5: pools[1].send_proxy_protocol",
                "the UDP offload cannot honour `send_proxy_protocol`",
            ),
        ],
    );
}

#[test]
fn fastpath_udp_offload_is_implied_by_a_listener_that_asks() {
    let text = "\
listeners:
  - { name: dns, protocol: udp, listen: \"10.0.0.1:53\", pool: resolvers, fastpath: udp_offload }
pools:
  - { name: resolvers, backends: [{ address: \"10.0.1.1:53\" }] }
";
    let config = load_str(text, FILE).unwrap().config;
    assert_eq!(
        config.fastpath,
        Fastpath {
            socket_lb: None,
            udp_offload: Some(UdpOffload {
                interfaces: None,
                mode: FastpathMode::Auto,
            }),
        }
    );
}

#[test]
fn slow_start_is_a_duration_and_zero_turns_it_off() {
    let pool = |slow_start: &str| {
        format!(
            "listeners: [{{ name: l, listen: \"127.0.0.1:1001\", pool: p }}]\npools:\n  - name: p\n    slow_start: {slow_start}\n    backends: [{{ address: \"10.0.0.1:80\" }}, {{ address: \"10.0.0.2:80\" }}]\n"
        )
    };
    let window = |text: &str| load_str(text, FILE).unwrap().config.pools[0].slow_start;
    assert_eq!(window(&pool("4s")), Some(Duration::from_secs(4)));
    assert_eq!(window(&pool("0s")), None);
    assert_errors(&pool("soon"), &[("4:5: pools[0].slow_start", "soon")]);
}

#[test]
fn slow_start_warns_where_no_tier_has_two_backends() {
    let text = "\
listeners: [{ name: l, listen: \"127.0.0.1:1001\", pool: p }]
pools:
  - name: p
    slow_start: 30s
    backends: [{ address: \"10.0.0.1:80\" }, { address: \"10.0.0.2:80\", backup: true }]
";
    let warnings = warnings_of(text);
    assert!(
        warnings.iter().any(|w| w.contains("pools[0].slow_start")
            && w.contains("has no effect here")
            && w.contains("no tier of this pool has two")),
        "{warnings:#?}"
    );
    // Two primaries: a recovering one has someone to share with.
    let two = text.replace(", backup: true", "");
    assert!(
        warnings_of(&two).iter().all(|w| !w.contains("slow_start")),
        "{:#?}",
        warnings_of(&two)
    );
}
