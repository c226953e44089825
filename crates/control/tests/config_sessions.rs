//! The loader's keys for long TCP sessions (issue 19): `pools[].queue`, keepalive, session
//! lifetime and the access log. Each resolves to its model with its defaults, and each bad
//! value is reported at its place.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use ballast_control::config::{
    load_str, AccessLog, AccessLogOutput, Keepalive, MaxLifetime, QueueSettings, Syslog,
    SyslogAddress, TcpOptions, DEFAULT_KEEPALIVE,
};

mod common;

use common::*;

/// A pool `p` whose one backend takes 2 sessions, with `queue: <queue>` on line 4.
fn with_queue(queue: &str) -> String {
    format!(
        "listeners: [{{ name: l, listen: \"127.0.0.1:1001\", pool: p }}]\npools:\n  - name: p\n    queue: {queue}\n    retries: 0\n    backends: [{{ address: \"10.0.0.1:6379\", max_connections: 2 }}]\n"
    )
}

#[test]
fn a_queue_resolves_with_its_defaults_and_its_keys() {
    let queue = |text: &str| load_str(text, FILE).unwrap().config.pools[0].queue;
    assert_eq!(
        queue(&with_queue("{}")),
        Some(QueueSettings {
            max: 1000,
            timeout: Duration::from_secs(5)
        })
    );
    assert_eq!(
        queue(&with_queue("{ max: 20, timeout: 250ms }")),
        Some(QueueSettings {
            max: 20,
            timeout: Duration::from_millis(250)
        })
    );
    let none = with_queue("{}").replace("    queue: {}\n", "");
    assert_eq!(queue(&none), None);
}

#[test]
fn bad_queue_values_are_reported_at_their_place() {
    assert_errors(
        &with_queue("{ max: 0, timeout: 0s }"),
        &[
            ("4:14: pools[0].queue.max", "at least 1"),
            ("4:22: pools[0].queue.timeout", "greater than zero"),
        ],
    );
    assert_errors(
        &with_queue("{ max: 2000000 }"),
        &[("4:14: pools[0].queue.max", "at most 1000000")],
    );
    assert_errors(
        &with_queue("{ length: 3 }"),
        &[("4:14: pools[0].queue.length", "unknown field `length`")],
    );
}

#[test]
fn a_queue_without_any_max_connections_warns() {
    let text = with_queue("{ max: 10 }").replace(", max_connections: 2", "");
    let warnings = warnings_of(&text);
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("pools[0].queue") && w.contains("has no effect")),
        "{warnings:#?}"
    );
    assert_eq!(
        warnings_of(&with_queue("{ max: 10 }")),
        Vec::<String>::new()
    );
}

/// A listener `l` (TCP unless `protocol` says otherwise) with `extra` keys on line 3, to pool
/// `p` with `pool_extra` keys on line 6.
fn keepalive_config(protocol: &str, extra: &str, pool_extra: &str) -> String {
    format!(
        "listeners:\n  - name: l\n    {extra}\n    protocol: {protocol}\n    listen: \"127.0.0.1:1001\"\n    pool: p\npools:\n  - name: p\n    {pool_extra}\n    retries: 0\n    backends: [{{ address: \"10.0.0.1:6379\" }}]\n"
    )
}

#[test]
fn keepalive_and_user_timeout_resolve_on_both_sides() {
    let text = keepalive_config(
        "tcp",
        "keepalive: { idle: 30s, interval: 5s, count: 3 }\n    user_timeout: 20s",
        "keepalive: {}\n    user_timeout: 1500ms",
    );
    let config = load_str(&text, FILE).unwrap().config;
    assert_eq!(
        config.listeners[0].client_tcp,
        TcpOptions {
            keepalive: Some(Keepalive {
                idle: Duration::from_secs(30),
                interval: Duration::from_secs(5),
                count: 3
            }),
            user_timeout: Some(Duration::from_secs(20)),
        }
    );
    assert_eq!(
        config.pools[0].backend_tcp,
        TcpOptions {
            keepalive: Some(DEFAULT_KEEPALIVE),
            user_timeout: Some(Duration::from_millis(1500)),
        }
    );
    let plain = keepalive_config("tcp", "shared_port: false", "slow_start: 0s");
    let config = load_str(&plain, FILE).unwrap().config;
    assert_eq!(config.listeners[0].client_tcp, TcpOptions::default());
    assert_eq!(config.pools[0].backend_tcp, TcpOptions::default());
}

#[test]
fn bad_keepalive_values_are_reported_at_their_place() {
    let text = keepalive_config(
        "tcp",
        "keepalive: { idle: 1500ms, interval: 0s, count: 200 }",
        "user_timeout: 60d",
    );
    let shown = error_lines(&text);
    let has = |place: &str, part: &str| {
        shown
            .iter()
            .any(|l| l.contains(&format!(": {place}: ")) && l.contains(part))
    };
    assert!(
        has("listeners[0].keepalive.idle", "whole seconds"),
        "{shown:#?}"
    );
    assert!(
        has("listeners[0].keepalive.interval", "greater than zero"),
        "{shown:#?}"
    );
    assert!(
        has("listeners[0].keepalive.count", "between 1 and 127"),
        "{shown:#?}"
    );
    assert!(
        has("pools[0].user_timeout", "at most 49 days"),
        "{shown:#?}"
    );
    assert_eq!(shown.len(), 4, "{shown:#?}");
}

#[test]
fn a_udp_listener_refuses_keepalive() {
    let text = keepalive_config(
        "udp",
        "keepalive: {}\n    user_timeout: 5s",
        "slow_start: 0s",
    );
    let shown = error_lines(&text);
    assert_eq!(shown.len(), 2, "{shown:#?}");
    assert!(
        shown[0].contains("listeners[0].keepalive: applies only to TCP listeners"),
        "{shown:#?}"
    );
    assert!(shown[1].contains("listeners[0].user_timeout"), "{shown:#?}");
}

#[test]
fn max_lifetime_resolves_with_a_tenth_as_its_default_jitter() {
    let lifetime = |timeouts: &str| {
        let text = keepalive_config("tcp", &format!("timeouts: {timeouts}"), "slow_start: 0s");
        load_str(&text, FILE).unwrap().config.listeners[0].max_lifetime
    };
    assert_eq!(
        lifetime("{ max_lifetime: 1h }"),
        Some(MaxLifetime {
            lifetime: Duration::from_secs(3600),
            jitter: Duration::from_secs(360)
        })
    );
    assert_eq!(
        lifetime("{ max_lifetime: 10m, max_lifetime_jitter: 0s }"),
        Some(MaxLifetime {
            lifetime: Duration::from_secs(600),
            jitter: Duration::ZERO
        })
    );
    assert_eq!(lifetime("{ idle: 1h }"), None);
}

#[test]
fn bad_max_lifetimes_are_reported() {
    let shown = |timeouts: &str| {
        error_lines(&keepalive_config(
            "tcp",
            &format!("timeouts: {timeouts}"),
            "slow_start: 0s",
        ))
    };
    let jitter = shown("{ max_lifetime: 1m, max_lifetime_jitter: 2m }");
    assert_eq!(jitter.len(), 1, "{jitter:#?}");
    assert!(
        jitter[0].contains("listeners[0].timeouts.max_lifetime_jitter: must not be longer"),
        "{jitter:#?}"
    );
    let alone = shown("{ max_lifetime_jitter: 2m }");
    assert!(alone[0].contains("without `max_lifetime`"), "{alone:#?}");
    let zero = shown("{ max_lifetime: 0s }");
    assert!(zero[0].contains("greater than zero"), "{zero:#?}");
    let udp = error_lines(&keepalive_config(
        "udp",
        "timeouts: { max_lifetime: 1h }",
        "slow_start: 0s",
    ));
    assert!(
        udp.iter()
            .any(|l| l.contains("listeners[0].timeouts.max_lifetime: applies only to TCP")),
        "{udp:#?}"
    );
}

/// A valid file with `access_log: <block>` on line 1.
fn with_access_log(block: &str) -> String {
    format!(
        "access_log: {block}\nlisteners: [{{ name: l, listen: \"127.0.0.1:1001\", pool: p }}]\npools:\n  - {{ name: p, retries: 0, backends: [{{ address: \"10.0.0.1:80\" }}] }}\n"
    )
}

#[test]
fn the_access_log_resolves_its_lines_and_its_output() {
    let log = |block: &str| {
        load_str(&with_access_log(block), FILE)
            .unwrap()
            .config
            .access_log
    };
    assert_eq!(log("{}"), AccessLog::default());
    let file = log("{ at_connect: true, interval: 5m, file: /var/log/ballast/access.log }");
    assert!(file.lines.at_connect);
    assert_eq!(file.lines.interval, Some(Duration::from_secs(300)));
    assert_eq!(
        file.output,
        AccessLogOutput {
            file: Some("/var/log/ballast/access.log".into()),
            syslog: None
        }
    );
    assert_eq!(
        log("{ syslog: {} }").output.syslog,
        Some(Syslog {
            address: SyslogAddress::Unix("/dev/log".into()),
            facility: 16,
            tag: "ballast".into()
        })
    );
    // Both at once: each line goes to each.
    let both =
        log("{ file: /a.log, syslog: { address: \"10.0.0.5:514\", facility: daemon, tag: lb1 } }");
    assert_eq!(both.output.file, Some("/a.log".into()));
    assert_eq!(
        both.output.syslog,
        Some(Syslog {
            address: SyslogAddress::Udp("10.0.0.5:514".parse().unwrap()),
            facility: 3,
            tag: "lb1".into()
        })
    );
    assert!(log("{}").output.is_stderr());
}

#[test]
fn bad_access_log_values_are_reported() {
    let shown = error_lines(&with_access_log("{ interval: 0s, file: relative.log }"));
    assert_eq!(shown.len(), 2, "{shown:#?}");
    assert!(shown[0].contains("access_log.interval"), "{shown:#?}");
    assert!(shown[1].contains("must be an absolute path"), "{shown:#?}");
    let shown = error_lines(&with_access_log(
        "{ syslog: { address: \"logs.example:514\", facility: local9, tag: \"a b\" } }",
    ));
    assert_eq!(shown.len(), 3, "{shown:#?}");
    assert!(shown[0].contains("access_log.syslog.address"), "{shown:#?}");
    assert!(
        shown[1].contains("unknown facility \"local9\""),
        "{shown:#?}"
    );
    assert!(shown[2].contains("access_log.syslog.tag"), "{shown:#?}");
}
