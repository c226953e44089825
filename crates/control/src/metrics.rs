//! `GET /metrics`: the Prometheus text exposition of a [`Status`] snapshot, rendered at
//! scrape time from the data plane's atomics, so the hot path never looks a metric name up.
//!
//! Counters and gauges go through `metrics` and `metrics-exporter-prometheus`: each scrape
//! fills a fresh, private `PrometheusRecorder` (never the global one) with absolute values and
//! renders it. A fresh recorder per scrape means a backend or listener removed by a reload
//! stops being exported at once instead of lingering until an idle timeout.
//!
//! The histograms (connect time, health probe time) are the exception, written here in the same text format: a
//! `metrics` histogram takes individual samples and computes its buckets itself, while the
//! data plane already keeps bucket counts in atomics (see `ballast_dataplane::histogram`).
//! Replaying counts as fake samples would cost a loop per connection and lose the exact sum.
//! The process metrics are the other: `metrics-process` reads them from /proc, and
//! `process_cpu_seconds_total` is a fractional counter, which a `metrics` counter (u64) is not.
//!
//! This module owns no file descriptor.

use std::fmt::Write as _;

use metrics::{counter, describe_counter, describe_gauge, gauge};
use metrics_exporter_prometheus::PrometheusBuilder;

use ballast_dataplane::histogram::HistogramSnapshot;

use crate::status::{BackendStateName, BackendStatus, Status};

/// Every metric family Ballast exports (docs/metrics.md), the standard `process_*` ones
/// included; the Grafana dashboard and the tests check themselves against this list. The `ballast_dns_*` families of DNS discovery are
/// exported only by a configuration with backend names ([`DNS_METRIC_NAMES`]).
pub const METRIC_NAMES: [&str; 37] = [
    "ballast_build_info",
    "process_cpu_seconds_total",
    "process_open_fds",
    "process_max_fds",
    "process_virtual_memory_bytes",
    "process_virtual_memory_max_bytes",
    "process_resident_memory_bytes",
    "process_start_time_seconds",
    "process_threads",
    "ballast_backend_up",
    "ballast_backend_info",
    "ballast_backend_state",
    "ballast_backend_effective_weight",
    "ballast_backend_connections_active",
    "ballast_backend_connections_total",
    "ballast_backend_connect_errors_total",
    "ballast_backend_connect_duration_seconds",
    "ballast_backend_sent_bytes_total",
    "ballast_backend_received_bytes_total",
    "ballast_backend_datagrams_total",
    "ballast_backend_health_checks_total",
    "ballast_backend_health_check_duration_seconds",
    "ballast_backend_health_last_change_timestamp_seconds",
    "ballast_pool_queue_length",
    "ballast_pool_queued_total",
    "ballast_listener_connections_total",
    "ballast_listener_connections_active",
    "ballast_listener_rejected_total",
    "ballast_listener_udp_flows_active",
    "ballast_listener_udp_flows_total",
    "ballast_listener_udp_flows_ended_total",
    "ballast_listener_udp_replies_dropped_total",
    "ballast_listener_fastpath_connections_total",
    "ballast_listener_udp_flows_offloaded",
    "ballast_fastpath_enabled",
    "ballast_fastpath_udp_datagrams_total",
    "ballast_config_reloads_total",
];

/// The families exported for each backend name (DNS discovery), beside [`METRIC_NAMES`].
pub const DNS_METRIC_NAMES: [&str; 4] = [
    "ballast_dns_lookups_total",
    "ballast_dns_last_success_timestamp_seconds",
    "ballast_dns_addresses",
    "ballast_dns_stale",
];

const CONNECT_DURATION: &str = "ballast_backend_connect_duration_seconds";
const CHECK_DURATION: &str = "ballast_backend_health_check_duration_seconds";

/// The content type Prometheus expects for the text format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

pub fn render(status: &Status) -> String {
    let recorder = PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    metrics::with_local_recorder(&recorder, || {
        describe();
        record(status);
    });
    let mut text = handle.render();
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    // Every backend, health-checked or not, so a family never appears or vanishes with a
    // reload.
    let backends = || {
        status
            .pools
            .iter()
            .flat_map(|p| p.backends.iter().map(move |b| (p.name.as_str(), b)))
    };
    render_histogram(
        &mut text,
        CONNECT_DURATION,
        "Time to establish a connection to the backend",
        backends().map(|(pool, b)| (pool, b, &b.connect_duration)),
    );
    render_histogram(
        &mut text,
        CHECK_DURATION,
        "Time an active health probe took, pass or fail",
        backends().map(|(pool, b)| (pool, b, &b.health_checks.duration)),
    );
    render_process(&mut text, &metrics_process::collector::collect());
    text
}

/// The standard process metrics (Prometheus client libraries' names and meanings); a value
/// /proc did not give is left out.
fn render_process(out: &mut String, m: &metrics_process::collector::Metrics) {
    let families: [(&str, &str, &str, Option<f64>); 8] = [
        (
            "process_cpu_seconds_total",
            "counter",
            "Total user and system CPU time spent in seconds",
            m.cpu_seconds_total,
        ),
        (
            "process_open_fds",
            "gauge",
            "Number of open file descriptors",
            m.open_fds.map(|v| v as f64),
        ),
        (
            "process_max_fds",
            "gauge",
            "Maximum number of open file descriptors (the soft limit; 0: unlimited)",
            m.max_fds.map(|v| v as f64),
        ),
        (
            "process_virtual_memory_bytes",
            "gauge",
            "Virtual memory size in bytes",
            m.virtual_memory_bytes.map(|v| v as f64),
        ),
        (
            "process_virtual_memory_max_bytes",
            "gauge",
            "Maximum amount of virtual memory available in bytes",
            m.virtual_memory_max_bytes.map(|v| v as f64),
        ),
        (
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory size in bytes",
            m.resident_memory_bytes.map(|v| v as f64),
        ),
        (
            "process_start_time_seconds",
            "gauge",
            "Start time of the process since unix epoch in seconds",
            m.start_time_seconds.map(|v| v as f64),
        ),
        (
            "process_threads",
            "gauge",
            "Number of OS threads in the process",
            m.threads.map(|v| v as f64),
        ),
    ];
    for (name, kind, help, value) in families {
        let Some(value) = value else { continue };
        // Writing to a String cannot fail.
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        let _ = writeln!(out, "{name} {value}");
    }
}

fn describe() {
    describe_gauge!(
        "ballast_build_info",
        "Always 1; the labels say which Ballast this is (version)"
    );
    describe_gauge!(
        "ballast_backend_info",
        "1 for each backend, with the name it came from (DNS discovery; empty for a fixed address) and its source: config, dns or runtime"
    );
    describe_counter!(
        "ballast_dns_lookups_total",
        "Lookups of a backend name, by result: found, gone (NXDOMAIN or no record) or failed"
    );
    describe_gauge!(
        "ballast_dns_last_success_timestamp_seconds",
        "Unix time of the last lookup of the name that found records"
    );
    describe_gauge!("ballast_dns_addresses", "Backends the name gives now");
    describe_gauge!(
        "ballast_dns_stale",
        "1 while the name's backends are its last good answer, not its last lookup's (a failure, or a name gone and held)"
    );
    describe_gauge!(
        "ballast_backend_up",
        "1 when the backend is healthy (active and passive checks), whatever its admin state"
    );
    describe_gauge!(
        "ballast_backend_state",
        "1 for the state the backend is in: up, down, draining or disabled"
    );
    describe_gauge!(
        "ballast_backend_effective_weight",
        "The weight the pickers give the backend now: its configured weight, or less while it ramps up under slow_start"
    );
    describe_gauge!(
        "ballast_backend_connections_active",
        "Sessions connecting or established to the backend"
    );
    describe_counter!(
        "ballast_backend_connections_total",
        "Connections established to the backend"
    );
    describe_counter!(
        "ballast_backend_connect_errors_total",
        "Failed connects to the backend, by reason"
    );
    describe_counter!(
        "ballast_backend_sent_bytes_total",
        "Bytes relayed from clients to the backend"
    );
    describe_counter!(
        "ballast_backend_received_bytes_total",
        "Bytes relayed from the backend to clients"
    );
    describe_counter!(
        "ballast_backend_datagrams_total",
        "UDP datagrams relayed, by direction"
    );
    describe_counter!(
        "ballast_backend_health_checks_total",
        "Active health probes, by result"
    );
    describe_gauge!(
        "ballast_backend_health_last_change_timestamp_seconds",
        "When active health last changed (up or down), as a Unix time; the process start until it does"
    );
    describe_gauge!(
        "ballast_pool_queue_length",
        "Sessions waiting in the pool's queue for a backend slot"
    );
    describe_counter!(
        "ballast_pool_queued_total",
        "Sessions that waited in the pool's queue (served, timed out or gone)"
    );
    describe_counter!(
        "ballast_listener_connections_total",
        "Connections accepted and admitted by the listener"
    );
    describe_gauge!(
        "ballast_listener_connections_active",
        "Sessions open on the listener"
    );
    describe_counter!(
        "ballast_listener_rejected_total",
        "Connections or datagrams turned away, by reason"
    );
    describe_gauge!(
        "ballast_listener_udp_flows_active",
        "UDP flows open on the listener"
    );
    describe_counter!(
        "ballast_listener_udp_flows_total",
        "UDP flows created on the listener"
    );
    describe_counter!(
        "ballast_listener_udp_flows_ended_total",
        "UDP flows ended, by reason (expired: idle timeout; evicted: max_flows reached; backend_removed: a reload removed their backend; answered, reply_timeout and retried: udp.responses exchanges)"
    );
    describe_counter!(
        "ballast_listener_udp_replies_dropped_total",
        "Backend replies the listener socket could not send on to the client"
    );
    describe_counter!(
        "ballast_listener_fastpath_connections_total",
        "Connects the socket fast path sent straight to a backend, in the client's connect()"
    );
    describe_gauge!(
        "ballast_listener_udp_flows_offloaded",
        "UDP flows whose datagrams the kernel forwards (fastpath: udp_offload)"
    );
    describe_counter!(
        "ballast_fastpath_udp_datagrams_total",
        "Datagrams the UDP offload forwarded in the kernel, by direction"
    );
    describe_gauge!(
        "ballast_fastpath_enabled",
        "1 when the kernel fast path of this kind is attached, 0 when not (the reason is in /api/v1/status)"
    );
    describe_counter!(
        "ballast_config_reloads_total",
        "Configuration reloads, by result"
    );
}

fn record(status: &Status) {
    gauge!("ballast_build_info", "version" => status.version).set(1.0);
    counter!("ballast_config_reloads_total", "result" => "success")
        .absolute(status.reloads.success);
    counter!("ballast_config_reloads_total", "result" => "failure")
        .absolute(status.reloads.failure);
    gauge!("ballast_fastpath_enabled", "kind" => "socket_lb").set(
        if status.fastpath.socket_lb.enabled {
            1.0
        } else {
            0.0
        },
    );
    gauge!("ballast_fastpath_enabled", "kind" => "udp_offload").set(
        if status.fastpath.udp_offload.enabled {
            1.0
        } else {
            0.0
        },
    );
    {
        let backends = status.pools.iter().flat_map(|p| &p.backends);
        let (to, from) = backends.fold((0, 0), |(to, from), b| {
            (
                to + b.offloaded_datagrams_to_backend,
                from + b.offloaded_datagrams_from_backend,
            )
        });
        counter!("ballast_fastpath_udp_datagrams_total", "direction" => "to_backend").absolute(to);
        counter!("ballast_fastpath_udp_datagrams_total", "direction" => "from_backend")
            .absolute(from);
    }
    for l in &status.listeners {
        let name = l.name.clone();
        counter!("ballast_listener_connections_total", "listener" => name.clone())
            .absolute(l.connections_total);
        counter!("ballast_listener_fastpath_connections_total", "listener" => name.clone())
            .absolute(l.fastpath_connections_total);
        gauge!("ballast_listener_connections_active", "listener" => name.clone())
            .set(l.connections_active as f64);
        let r = &l.rejected;
        let rejected = [
            ("acl", r.acl),
            ("max_connections", r.max_connections),
            ("no_backend", r.no_backend),
            ("rate_limit", r.rate_limit),
            ("max_connections_per_source", r.max_connections_per_source),
            ("proxy_untrusted", r.proxy_untrusted),
            ("proxy_malformed", r.proxy_malformed),
            ("tls_malformed", r.tls_malformed),
            ("tls_no_route", r.tls_no_route),
            ("preface_timeout", r.preface_timeout),
            ("no_descriptors", r.no_descriptors),
            ("queue_timeout", r.queue_timeout),
            ("queue_full", r.queue_full),
        ];
        for (reason, value) in rejected {
            counter!("ballast_listener_rejected_total", "listener" => name.clone(), "reason" => reason)
                .absolute(value);
        }
        // Flows and replies exist on UDP listeners only; a TCP listener showing zeros for
        // them would look like a UDP listener that sees no traffic.
        if l.protocol != "udp" {
            continue;
        }
        gauge!("ballast_listener_udp_flows_active", "listener" => name.clone())
            .set(l.udp_flows_active as f64);
        gauge!("ballast_listener_udp_flows_offloaded", "listener" => name.clone())
            .set(l.udp_flows_offloaded as f64);
        counter!("ballast_listener_udp_replies_dropped_total", "listener" => name.clone())
            .absolute(l.udp_replies_dropped);
        counter!("ballast_listener_udp_flows_total", "listener" => name.clone())
            .absolute(l.udp_flows_total);
        for (reason, value) in [
            ("expired", l.udp_flows_expired),
            ("evicted", l.udp_flows_evicted),
            ("backend_removed", l.udp_flows_backend_removed),
            ("answered", l.udp_flows_answered),
            ("reply_timeout", l.udp_flows_reply_timeout),
            ("retried", l.udp_flows_retried),
        ] {
            counter!("ballast_listener_udp_flows_ended_total", "listener" => name.clone(), "reason" => reason)
                .absolute(value);
        }
    }
    // Health that has not changed since start has been what it is since then.
    let started = ballast_dataplane::clock::unix_ms() as f64 / 1e3 - status.uptime_seconds;
    for pool in &status.pools {
        gauge!("ballast_pool_queue_length", "pool" => pool.name.clone())
            .set(pool.queue_length as f64);
        counter!("ballast_pool_queued_total", "pool" => pool.name.clone())
            .absolute(pool.queued_total);
        for b in &pool.backends {
            let labels = [
                ("pool", pool.name.clone()),
                ("backend", b.address.to_string()),
            ];
            let with = |key: &'static str, value: &'static str| {
                let mut all: Vec<(&'static str, String)> = labels.to_vec();
                all.push((key, value.to_string()));
                all
            };
            gauge!("ballast_backend_up", &labels).set(if b.up { 1.0 } else { 0.0 });
            for state in BackendStateName::ALL {
                let value = if b.state == state { 1.0 } else { 0.0 };
                gauge!("ballast_backend_state", &with("state", state.as_str())).set(value);
            }
            gauge!("ballast_backend_effective_weight", &labels).set(b.effective_weight);
            gauge!("ballast_backend_connections_active", &labels).set(b.connections_active as f64);
            counter!("ballast_backend_connections_total", &labels).absolute(b.connections_total);
            let errors = [
                ("refused", b.connect_errors.refused),
                ("timeout", b.connect_errors.timeout),
                ("other", b.connect_errors.other),
                ("no_reply", b.connect_errors.no_reply),
            ];
            for (reason, value) in errors {
                counter!(
                    "ballast_backend_connect_errors_total",
                    &with("reason", reason)
                )
                .absolute(value);
            }
            counter!("ballast_backend_sent_bytes_total", &labels).absolute(b.sent_bytes);
            counter!("ballast_backend_received_bytes_total", &labels).absolute(b.received_bytes);
            counter!(
                "ballast_backend_datagrams_total",
                &with("direction", "to_backend")
            )
            .absolute(b.datagrams_to_backend);
            counter!(
                "ballast_backend_datagrams_total",
                &with("direction", "from_backend")
            )
            .absolute(b.datagrams_from_backend);
            counter!(
                "ballast_backend_health_checks_total",
                &with("result", "success")
            )
            .absolute(b.health_checks.success);
            counter!(
                "ballast_backend_health_checks_total",
                &with("result", "failure")
            )
            .absolute(b.health_checks.failure);
            let since = b
                .health_checks
                .last_change_unix_ms
                .map_or(started, |ms| ms as f64 / 1e3);
            gauge!(
                "ballast_backend_health_last_change_timestamp_seconds",
                &labels
            )
            .set(since);
            let mut info = labels.to_vec();
            info.push(("name", b.name.clone().unwrap_or_default()));
            info.push(("source", b.source.to_string()));
            gauge!("ballast_backend_info", &info).set(1.0);
        }
        record_names(pool);
    }
}

/// DNS discovery: each name's lookups, last success, addresses and staleness.
fn record_names(pool: &crate::status::PoolStatus) {
    for n in &pool.names {
        let labels = [("pool", pool.name.clone()), ("name", n.name.clone())];
        for (result, value) in [
            ("found", n.lookups.found),
            ("gone", n.lookups.gone),
            ("failed", n.lookups.failed),
        ] {
            let mut with = labels.to_vec();
            with.push(("result", result.to_string()));
            counter!("ballast_dns_lookups_total", &with).absolute(value);
        }
        if let Some(at) = n.last_success_unix_seconds {
            gauge!("ballast_dns_last_success_timestamp_seconds", &labels).set(at);
        }
        gauge!("ballast_dns_addresses", &labels).set(n.addresses.len() as f64);
        gauge!("ballast_dns_stale", &labels).set(if n.stale { 1.0 } else { 0.0 });
    }
}

/// One histogram family, one series per backend, from bucket counts the data plane keeps.
fn render_histogram<'a>(
    out: &mut String,
    name: &str,
    help: &str,
    series: impl Iterator<Item = (&'a str, &'a BackendStatus, &'a HistogramSnapshot)>,
) {
    let mut series = series.peekable();
    if series.peek().is_none() {
        return;
    }
    // Writing to a String cannot fail.
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} histogram");
    for (pool, b, h) in series {
        let labels = format!(
            "pool=\"{}\",backend=\"{}\"",
            escape(pool),
            escape(&b.address.to_string())
        );
        for (bound, count) in &h.buckets {
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{bound}\"}} {count}");
        }
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {}", h.count);
        let _ = writeln!(out, "{name}_sum{{{labels}}} {}", h.sum_seconds);
        let _ = writeln!(out, "{name}_count{{{labels}}} {}", h.count);
    }
}

/// Label values escaped as the text format wants (backslash, quote, newline).
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::config::load_str;
    use crate::routes::{build_routes, StateRegistry};
    use crate::status;
    use std::time::Duration;

    #[test]
    fn process_metrics_are_this_process_and_cpu_seconds_keep_their_fraction() {
        let m = metrics_process::collector::collect();
        assert!(m.open_fds.is_some_and(|n| n >= 3), "{m:?}");
        assert!(m.resident_memory_bytes.is_some_and(|n| n > 0), "{m:?}");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let started = m.start_time_seconds.unwrap();
        assert!(started <= now && started + 24 * 3600 > now, "{m:?}");
        let mut text = String::new();
        render_process(
            &mut text,
            &metrics_process::collector::Metrics {
                cpu_seconds_total: Some(1.25),
                max_fds: Some(1024),
                ..Default::default()
            },
        );
        assert!(
            text.contains(
                "# TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total 1.25\n"
            ),
            "{text}"
        );
        assert!(text.contains("process_max_fds 1024\n"), "{text}");
        assert!(
            !text.contains("process_open_fds"),
            "a value not read is left out: {text}"
        );
    }

    #[test]
    fn renders_every_family_with_its_values() {
        let yaml = "listeners:\n  - { name: web, listen: 127.0.0.1:0, pool: p }\n  - { name: dns, protocol: udp, listen: 127.0.0.1:0, pool: p }\npools:\n  - name: p\n    backends: [{ address: 127.0.0.1:9 }]\n";
        let config = load_str(yaml, "t.yaml").unwrap().config;
        let mut registry = StateRegistry::default();
        build_routes(&config, &mut registry);
        let addr = config.pools[0].backends[0].address;
        let state = registry.backend("p", addr);
        state.record_connect_success();
        state.record_connect_time(Duration::from_micros(300));
        state
            .bytes_sent
            .fetch_add(42, std::sync::atomic::Ordering::Relaxed);
        let snapshot = Status {
            version: "test",
            pid: 1,
            ready: true,
            uptime_seconds: 1.0,
            reloads: status::Reloads {
                success: 2,
                failure: 1,
            },
            listeners: status::listeners(&config, &mut registry, &[]),
            pools: status::pools(&config, &mut registry, 0),
            fastpath: status::FastpathStatus::default(),
            previous_processes: Vec::new(),
        };
        let text = render(&snapshot);
        for name in METRIC_NAMES {
            assert!(
                text.contains(&format!("# TYPE {name} ")),
                "{name} missing:\n{text}"
            );
        }
        let has = |needle: &str| text.lines().any(|l| l.contains(needle));
        assert!(has("ballast_listener_udp_flows_active{listener=\"dns\"}"));
        assert!(
            !has("ballast_listener_udp_flows_total{listener=\"web\"}"),
            "a TCP listener has no UDP series"
        );
        assert!(has(
            "ballast_backend_sent_bytes_total{pool=\"p\",backend=\"127.0.0.1:9\"} 42"
        ));
        assert!(has("ballast_config_reloads_total{result=\"failure\"} 1"));
        assert!(has("ballast_build_info{version=\"test\"} 1"), "{text}");
        assert!(has(
            "ballast_backend_effective_weight{pool=\"p\",backend=\"127.0.0.1:9\"} 1"
        ));
        assert!(
            has("le=\"0.00025\"} 0") && has("le=\"0.0005\"} 1"),
            "{text}"
        );
        assert!(has(
            "ballast_backend_connect_duration_seconds_count{pool=\"p\",backend=\"127.0.0.1:9\"} 1"
        ));
    }
}
