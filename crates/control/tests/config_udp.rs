//! The `udp` keys of issue 19 (DNS and syslog): what loads, what is refused and where, and
//! what the kernel fast paths cannot be combined with.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use ballast_control::config::{load_str, LoadError, UdpOptions, DEFAULT_UDP_REPLY_TIMEOUT};

mod common;

use common::*;

/// A UDP listener `dns` (its `udp` block on line 6) and a pool, with `extra` listener keys.
fn dns(udp: &str, extra: &str) -> String {
    format!(
        "listeners:\n  - name: dns\n    protocol: udp\n    listen: \"10.0.0.1:53\"\n    pool: resolvers\n    udp: {udp}\n{extra}pools:\n  - name: resolvers\n    backends: [{{ address: \"10.0.1.1:53\" }}, {{ address: \"10.0.1.2:53\" }}]\n"
    )
}

fn udp_of(text: &str) -> UdpOptions {
    let loaded = load_str(text, FILE).unwrap_or_else(|e| panic!("{e}"));
    loaded.config.listeners[0].udp.unwrap()
}

#[test]
fn responses_and_reply_timeout_load() {
    let udp = udp_of(&dns("{ responses: 1, reply_timeout: 300ms }", ""));
    assert_eq!(udp.responses, Some(1));
    assert_eq!(udp.reply_timeout, Duration::from_millis(300));
    let plain = udp_of(&dns("{ idle_timeout: 10s }", ""));
    assert_eq!(plain.responses, None);
    assert_eq!(plain.reply_timeout, DEFAULT_UDP_REPLY_TIMEOUT);
}

#[test]
fn responses_is_refused_out_of_range_and_reply_timeout_alone() {
    assert_errors(
        &dns("{ responses: 0 }", ""),
        &[("6:12", "must be at least 1")],
    );
    assert_errors(
        &dns("{ responses: 20000 }", ""),
        &[("6:12", "must be between 1 and 10000, got 20000")],
    );
    assert_errors(
        &dns("{ reply_timeout: 1s }", ""),
        &[("6:12", "applies only with `responses`")],
    );
}

#[test]
fn the_fast_paths_refuse_keys_that_need_every_datagram() {
    assert_errors(
        &dns("{ responses: 1 }", "    fastpath: udp_offload\n"),
        &[(
            "6:12",
            "the UDP offload cannot honour `udp.responses`: the kernel forwards a flow's later \
             datagrams itself",
        )],
    );
    let errors = match load_str(&dns("{ responses: 1 }", "    fastpath: socket\n"), FILE) {
        Err(LoadError::Invalid(errors)) => errors,
        other => panic!("should be invalid: {other:?}"),
    };
    assert!(
        errors.iter().any(|e| e.to_string().contains(
            "listeners[0].udp.responses: the socket fast path cannot honour `udp.responses`"
        )),
        "{errors:?}"
    );
}

#[test]
fn per_datagram_loads_and_is_refused_with_responses_and_the_offload() {
    assert!(udp_of(&dns("{ per_datagram: true }", "")).per_datagram);
    assert!(!udp_of(&dns("{ per_datagram: false }", "")).per_datagram);
    assert_errors(
        &dns("{ responses: 1, per_datagram: true }", ""),
        &[("6:26", "a `per_datagram` listener relays no reply")],
    );
    assert_errors(
        &dns("{ per_datagram: true }", "    fastpath: udp_offload\n"),
        &[("6:12", "the UDP offload cannot honour `udp.per_datagram`")],
    );
}

#[test]
fn retries_need_responses_and_stay_within_the_limit() {
    assert_eq!(udp_of(&dns("{ responses: 1, retries: 1 }", "")).retries, 1);
    assert_eq!(udp_of(&dns("{ responses: 1 }", "")).retries, 0);
    assert_errors(
        &dns("{ retries: 1 }", ""),
        &[("6:12", "applies only with `responses`")],
    );
    assert_errors(
        &dns("{ responses: 1, retries: 4 }", ""),
        &[("6:26", "must be between 0 and 3, got 4")],
    );
}

#[test]
fn udp_per_source_limits_load_and_are_refused_where_they_cannot_hold() {
    let udp = udp_of(&dns(
        "{ new_flows_per_second_per_source: 50, datagrams_per_second_per_flow: 200 }",
        "",
    ));
    assert_eq!(udp.new_flows_per_second_per_source, Some(50));
    assert_eq!(udp.datagrams_per_second_per_flow, Some(200));
    assert_errors(
        &dns("{ new_flows_per_second_per_source: 0 }", ""),
        &[("6:12", "must be at least 1")],
    );
    assert_errors(
        &dns(
            "{ per_datagram: true, datagrams_per_second_per_flow: 5 }",
            "",
        ),
        &[("6:32", "no flow carries more than one")],
    );
    // The offload forwards a flow's later datagrams: it cannot count them; the flows it
    // opens still go through the relay, so the new-flow rate holds.
    assert_errors(
        &dns(
            "{ datagrams_per_second_per_flow: 5 }",
            "    fastpath: udp_offload\n",
        ),
        &[(
            "6:12",
            "the UDP offload cannot honour `udp.datagrams_per_second_per_flow`",
        )],
    );
    assert!(
        udp_of(&dns(
            "{ new_flows_per_second_per_source: 5 }",
            "    fastpath: udp_offload\n"
        ))
        .new_flows_per_second_per_source
            == Some(5)
    );
}
