//! The loader's side of DNS discovery (issue 18): backend entries with `resolve:` and SRV
//! names, the `dns:` block and `state_file:`, and their errors.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::Duration;

use ballast_control::config::{load_str, Discover, Dns, Resolve, DEFAULT_DISCOVER_MAX};

mod common;

use common::*;

fn with_backends(backends: &str, rest: &str) -> String {
    format!(
        "listeners:\n  - {{ name: a, listen: \"127.0.0.1:1001\", pool: p }}\npools:\n  - name: p\n    backends:\n{backends}{rest}"
    )
}

#[test]
fn names_with_resolve_and_srv_names_are_left_for_discovery() {
    let text = with_backends(
        "      - { address: \"10.0.0.1:80\" }\n\
         \x20     - { address: \"App.Internal:8080\", resolve: every_record, max: 5, weight: 7 }\n\
         \x20     - { address: \"one.internal:81\", resolve: first, backup: true }\n\
         \x20     - { address: _redis._tcp.example.test }\n",
        "dns:\n  resolvers: [\"127.0.0.1:5353\", 10.0.0.2]\n  timeout: 500ms\n  resolve_interval: { min: 2s, max: 1m }\n  hold: 10s\nstate_file: /var/lib/ballast/state.json\n",
    );
    let config = load_str(&text, FILE).unwrap().config;
    let pool = &config.pools[0];
    let fixed: Vec<SocketAddr> = pool.backends.iter().map(|b| b.address).collect();
    assert_eq!(fixed, ["10.0.0.1:80".parse::<SocketAddr>().unwrap()]);
    let base = Discover {
        name: "app.internal".into(),
        port: Some(8080),
        resolve: Resolve::EveryRecord,
        max: 5,
        weight: 7,
        backup: false,
        max_connections: None,
    };
    assert_eq!(
        pool.discover,
        [
            base.clone(),
            Discover {
                name: "one.internal".into(),
                port: Some(81),
                resolve: Resolve::First,
                max: 1,
                weight: 1,
                backup: true,
                ..base.clone()
            },
            Discover {
                name: "_redis._tcp.example.test".into(),
                port: None,
                resolve: Resolve::EveryRecord,
                max: DEFAULT_DISCOVER_MAX,
                weight: 1,
                ..base
            },
        ]
    );
    assert_eq!(pool.discover[2].label(), "_redis._tcp.example.test");
    assert_eq!(pool.discover[0].label(), "app.internal:8080");
    assert_eq!(
        config.dns,
        Dns {
            resolvers: vec![
                "127.0.0.1:5353".parse().unwrap(),
                "10.0.0.2:53".parse().unwrap()
            ],
            timeout: Duration::from_millis(500),
            interval_min: Duration::from_secs(2),
            interval_max: Duration::from_secs(60),
            hold: Duration::from_secs(10),
        }
    );
    assert_eq!(
        config.state_file.as_deref(),
        Some(std::path::Path::new("/var/lib/ballast/state.json"))
    );
}

#[test]
fn a_pool_of_names_only_loads_with_no_fixed_backend_and_defaults() {
    let text = with_backends(
        "      - { address: \"app.internal:80\", resolve: every_record }\n",
        "",
    );
    let config = load_str(&text, FILE).unwrap().config;
    assert!(config.pools[0].backends.is_empty());
    assert_eq!(config.pools[0].discover.len(), 1);
    assert_eq!(config.dns, Dns::default());
    assert_eq!(config.state_file, None);
}

#[test]
fn discovery_mistakes_are_reported_with_their_place() {
    let cases = [
        (
            "      - { address: \"app.internal:80\", resolve: all }\n",
            "pools[0].backends[0].resolve",
        ),
        (
            "      - { address: \"10.0.0.1:80\", resolve: every_record }\n",
            "is not a name to resolve",
        ),
        (
            "      - { address: \"app.internal:80\", resolve: first, max: 3 }\n",
            "`resolve: first` gives one backend",
        ),
        (
            "      - { address: \"app.internal:80\", resolve: every_record, max: 0 }\n",
            "must be between 1 and 1024",
        ),
        (
            "      - { address: \"app.internal:80\", max: 3 }\n",
            "only applies to a name with `resolve: every_record`",
        ),
        (
            "      - { address: _x._tcp.test, weight: 3 }\n",
            "an SRV name's weights come from its records",
        ),
        (
            "      - { address: \"app.internal:80\", resolve: first }\n      - { address: \"App.internal:80\", resolve: every_record }\n",
            "app.internal:80 is already listed in this pool at backends[0]",
        ),
    ];
    for (backends, expected) in cases {
        let found = error_lines(&with_backends(backends, ""));
        assert!(
            found.iter().any(|e| e.contains(expected)),
            "{backends}: {found:?}"
        );
    }
    let dns_cases = [
        ("dns: { resolvers: [] }\n", "dns.resolvers"),
        (
            "dns: { resolvers: [\"nameserver\"] }\n",
            "expected a name server's IP",
        ),
        (
            "dns: { resolve_interval: { min: 10s, max: 1s } }\n",
            "is above `max`",
        ),
        ("dns: { timeout: 0s }\n", "dns.timeout"),
        ("dns: { retries: 3 }\n", "retries"),
        ("state_file: \"\"\n", "state_file"),
    ];
    for (rest, expected) in dns_cases {
        let found = error_lines(&with_backends(
            "      - { address: \"10.0.0.1:80\" }\n",
            rest,
        ));
        assert!(
            found.iter().any(|e| e.contains(expected)),
            "{rest}: {found:?}"
        );
    }
}
