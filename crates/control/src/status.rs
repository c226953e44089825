//! A point-in-time picture of a running Ballast: listeners, pools, backends, their states and
//! counters. `GET /api/v1/status` serialises it as JSON and `GET /metrics` renders it as
//! Prometheus text (see [`crate::metrics`]), so both always agree.
//!
//! Everything is read from the atomics in `BackendState`/`ListenerState` at the moment the
//! snapshot is taken; the data plane never waits for it. This module owns no file descriptor.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use ballast_dataplane::balance::weight;
use ballast_dataplane::histogram::HistogramSnapshot;
use ballast_dataplane::route::{AdminState, BackendState, Millis};
use serde::Serialize;

use crate::config::{Algorithm, Backend, Config, OnBackendDown, Protocol};
use crate::routes::StateRegistry;

#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub version: &'static str,
    /// This process: after a binary upgrade, the new one's (see `POST /api/v1/upgrade`).
    pub pid: u32,
    /// Configuration loaded, listeners bound, not draining.
    pub ready: bool,
    pub uptime_seconds: f64,
    pub reloads: Reloads,
    pub listeners: Vec<ListenerStatus>,
    pub pools: Vec<PoolStatus>,
    pub fastpath: FastpathStatus,
    /// Older processes still draining after binary upgrades (newest first); their sessions
    /// are in `connections_active` and `previous_process_connections_active`.
    pub previous_processes: Vec<u32>,
}

impl Status {
    /// Counts the sessions older processes still drain (their last report) as active here:
    /// the admin address is this process's now, so this is where they can be seen.
    pub fn count_predecessors(&mut self, previous: &crate::upgrade::wire::Draining) {
        self.previous_processes.clone_from(&previous.pids);
        for (name, active) in &previous.listeners {
            if let Some(l) = self.listeners.iter_mut().find(|l| &l.name == name) {
                l.connections_active += active;
                l.previous_process_connections_active += active;
            }
        }
        for (pool, address, active) in &previous.backends {
            let backend = self
                .pools
                .iter_mut()
                .filter(|p| &p.name == pool)
                .flat_map(|p| p.backends.iter_mut())
                .find(|b| b.address == *address);
            if let Some(b) = backend {
                b.connections_active += active;
                b.previous_process_connections_active += active;
            }
        }
    }
}

/// The kernel fast paths: on or off, and why.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct FastpathStatus {
    pub socket_lb: crate::fastpath::SocketLbStatus,
    pub udp_offload: crate::udp_offload::UdpOffloadStatus,
}

#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Reloads {
    pub success: u64,
    pub failure: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ListenerStatus {
    pub name: String,
    pub protocol: &'static str,
    pub pool: String,
    /// Where it actually listens (port 0 resolved).
    pub addresses: Vec<SocketAddr>,
    pub connections_active: u64,
    /// Of `connections_active`, the sessions older processes still drain after an upgrade.
    pub previous_process_connections_active: u64,
    pub connections_total: u64,
    /// Connects the socket fast path sent straight to a backend (not in `connections_total`:
    /// the listener never saw them).
    pub fastpath_connections_total: u64,
    pub rejected: Rejected,
    pub udp_flows_active: u64,
    /// Of those, the ones whose datagrams the kernel forwards (`fastpath: udp_offload`).
    pub udp_flows_offloaded: u64,
    pub udp_flows_total: u64,
    pub udp_flows_expired: u64,
    pub udp_flows_evicted: u64,
    /// UDP flows ended because a reload removed their backend.
    pub udp_flows_backend_removed: u64,
    /// `udp.responses` exchanges that got all their replies, and those that did not within
    /// `udp.reply_timeout`.
    pub udp_flows_answered: u64,
    pub udp_flows_reply_timeout: u64,
    /// Of the exchanges that got no reply, those sent again to another backend.
    pub udp_flows_retried: u64,
    /// Backend replies the listener socket could not send to the client (dropped).
    pub udp_replies_dropped: u64,
    /// accept(2) failures for lack of descriptors or memory (the listener then rests 100 ms).
    pub accept_errors: u64,
    /// Sessions ended by `timeouts.max_lifetime`.
    pub closed_max_lifetime: u64,
}

/// Connections (or, on UDP listeners, datagrams) turned away, by reason.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Rejected {
    pub max_connections: u64,
    pub no_backend: u64,
    pub acl: u64,
    pub rate_limit: u64,
    pub max_connections_per_source: u64,
    pub proxy_untrusted: u64,
    /// Malformed PROXY headers, every reason summed (the log says which).
    pub proxy_malformed: u64,
    /// Malformed ClientHellos, every reason summed (the log says which).
    pub tls_malformed: u64,
    pub tls_no_route: u64,
    pub preface_timeout: u64,
    /// Accepted, but no descriptor was left for the backend socket: closed at once.
    pub no_descriptors: u64,
    /// Waited in the pool's queue for `queue.timeout` without getting a backend slot.
    pub queue_timeout: u64,
    /// Every backend was full and so was the pool's queue: closed at once.
    pub queue_full: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct PoolStatus {
    pub name: String,
    pub algorithm: &'static str,
    pub health_check: Option<HealthCheckStatus>,
    pub on_backend_down: &'static str,
    /// `slow_start` in ms; `null` when off.
    pub slow_start_ms: Option<u64>,
    /// `queue` as configured; `null` when sessions are refused rather than queued.
    pub queue: Option<QueueStatus>,
    /// Sessions waiting for a backend slot now, and ever.
    pub queue_length: u64,
    pub queued_total: u64,
    pub backends: Vec<BackendStatus>,
    /// The pool's backend names (DNS discovery) and what they resolve to.
    pub names: Vec<NameStatus>,
    /// Backends out of the pool (their name stopped giving them, or the API removed them)
    /// whose sessions still run.
    pub departing: Vec<DepartingStatus>,
}

/// One backend name of a pool, as last looked up.
#[derive(Debug, Clone, Serialize)]
pub struct NameStatus {
    /// `host:port`, or the SRV name.
    pub name: String,
    pub resolve: &'static str,
    pub srv: bool,
    pub max: usize,
    /// The backends it gives now.
    pub addresses: Vec<SocketAddr>,
    /// No lookup has answered yet.
    pub pending: bool,
    /// The addresses are the last good answer, not the last lookup's (it failed, or the name
    /// is gone and held): `last_error` says why.
    pub stale: bool,
    pub last_error: Option<String>,
    /// Unix time of the last lookup that found records.
    pub last_success_unix_seconds: Option<f64>,
    pub lookups: crate::membership::Results,
}

#[derive(Debug, Clone, Serialize)]
pub struct DepartingStatus {
    pub address: SocketAddr,
    /// The name it came from, or "".
    pub name: String,
    pub connections_active: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct QueueStatus {
    pub max: usize,
    pub timeout_ms: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct HealthCheckStatus {
    pub kind: &'static str,
    pub interval_ms: u64,
    pub timeout_ms: u64,
    pub rise: u32,
    pub fall: u32,
    /// The check's own port at each backend's IP; `null`: the backend's port.
    pub port: Option<u16>,
    /// The check's own IP, probed for every backend; `null`: each backend's IP.
    pub address: Option<std::net::IpAddr>,
}

/// The one state a backend is shown in: an operator's choice wins over health.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendStateName {
    Up,
    Down,
    Draining,
    Disabled,
}

impl BackendStateName {
    pub const ALL: [BackendStateName; 4] = [
        BackendStateName::Up,
        BackendStateName::Down,
        BackendStateName::Draining,
        BackendStateName::Disabled,
    ];

    pub fn of(state: &BackendState, now: Millis) -> Self {
        match state.admin() {
            AdminState::Disabled => BackendStateName::Disabled,
            AdminState::Draining => BackendStateName::Draining,
            AdminState::Enabled if is_up(state, now) => BackendStateName::Up,
            AdminState::Enabled => BackendStateName::Down,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            BackendStateName::Up => "up",
            BackendStateName::Down => "down",
            BackendStateName::Draining => "draining",
            BackendStateName::Disabled => "disabled",
        }
    }
}

/// Health alone, active and passive, whatever an operator set.
fn is_up(state: &BackendState, now: Millis) -> bool {
    state.is_healthy() && !state.is_passively_down(now)
}

#[derive(Debug, Clone, Serialize)]
pub struct BackendStatus {
    pub address: SocketAddr,
    pub state: BackendStateName,
    /// Health alone (active probes and passive failures), whatever the admin state.
    pub up: bool,
    pub weight: u32,
    /// The weight pickers give it now: `weight`, scaled by an agent's percentage (0: no new
    /// sessions) and ramping up under `slow_start`.
    pub effective_weight: f64,
    /// How long its slow-start ramp still runs (0: at full weight).
    pub slow_start_remaining_ms: u64,
    pub backup: bool,
    pub max_connections: Option<u64>,
    pub connections_active: u64,
    /// Of `connections_active`, the sessions older processes still drain after an upgrade.
    pub previous_process_connections_active: u64,
    /// Sessions to this backend, through the relay and through the socket fast path.
    pub connections_total: u64,
    /// Of those, the ones the socket fast path sent here directly.
    pub fastpath_connections_total: u64,
    pub connect_errors: ConnectErrors,
    /// Bytes relayed from clients to this backend, and back.
    pub sent_bytes: u64,
    pub received_bytes: u64,
    /// Datagrams to and from this backend, relayed and forwarded by the kernel (UDP
    /// offload); bytes of the kernel's are in `sent_bytes` and `received_bytes` too.
    pub datagrams_to_backend: u64,
    pub datagrams_from_backend: u64,
    /// Of those, the ones the kernel forwarded.
    pub offloaded_datagrams_to_backend: u64,
    pub offloaded_datagrams_from_backend: u64,
    pub health_checks: HealthChecks,
    pub response_time: ResponseTime,
    /// Where it comes from: `config` (a fixed address), `dns` (a name) or `runtime` (added
    /// through the admin API).
    pub source: &'static str,
    /// The name it came from (`source: dns`).
    pub name: Option<String>,
    /// True when its weight was set through the admin API (not the file's).
    pub runtime_weight: bool,
    #[serde(skip)]
    pub connect_duration: HistogramSnapshot,
}

#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct ConnectErrors {
    pub refused: u64,
    pub timeout: u64,
    pub other: u64,
    /// `udp.responses` exchanges that got no reply within `udp.reply_timeout`.
    pub no_reply: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct HealthChecks {
    pub success: u64,
    pub failure: u64,
    /// The last probe's outcome; `None` before the first (or without active checks).
    pub last: Option<LastCheck>,
    /// When active health last changed, in ms since the Unix epoch; `None`: not since start.
    pub last_change_unix_ms: Option<u64>,
    #[serde(skip)]
    pub duration: HistogramSnapshot,
}

#[derive(Debug, Clone, Serialize)]
pub struct LastCheck {
    pub ok: bool,
    /// Why it failed; empty when it passed.
    pub reason: String,
    pub at_unix_ms: u64,
    pub duration_ms: f64,
}

/// How fast the backend answers: connect time percentiles (from the histogram `/metrics`
/// exports, interpolated inside buckets) and the moving averages `least_time` picks by.
/// `None` until there is a sample.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct ResponseTime {
    pub connect_p50_ms: Option<f64>,
    pub connect_p90_ms: Option<f64>,
    pub connect_p99_ms: Option<f64>,
    pub connect_ewma_ms: Option<f64>,
    pub first_byte_ewma_ms: Option<f64>,
}

impl ResponseTime {
    fn of(state: &BackendState, connect: &HistogramSnapshot) -> Self {
        let ms = |q: f64| connect.quantile(q).map(|s| s * 1e3);
        let ewma = |cell: &std::sync::atomic::AtomicU64| match cell.load(Ordering::Relaxed) {
            0 => None,
            us => Some(us as f64 / 1e3),
        };
        Self {
            connect_p50_ms: ms(0.5),
            connect_p90_ms: ms(0.9),
            connect_p99_ms: ms(0.99),
            connect_ewma_ms: ewma(&state.connect_time_ewma_us),
            first_byte_ewma_ms: ewma(&state.first_byte_time_ewma_us),
        }
    }
}

/// Reads every counter of `config`'s listeners. `bound` gives each listener's real addresses.
/// The registry is the one the routes were built with, so it already holds every state.
pub fn listeners(
    config: &Config,
    registry: &mut StateRegistry,
    bound: &[(Arc<str>, SocketAddr)],
) -> Vec<ListenerStatus> {
    config
        .listeners
        .iter()
        .map(|l| {
            let state = registry.listener(&l.name);
            let load = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
            ListenerStatus {
                name: l.name.clone(),
                protocol: match l.protocol {
                    Protocol::Tcp => "tcp",
                    Protocol::Udp => "udp",
                },
                pool: l.pool.clone(),
                addresses: bound
                    .iter()
                    .filter(|(name, _)| **name == *l.name)
                    .map(|(_, addr)| *addr)
                    .collect(),
                connections_active: load(&state.active),
                previous_process_connections_active: 0,
                connections_total: load(&state.connections_total),
                fastpath_connections_total: 0,
                rejected: Rejected {
                    max_connections: load(&state.rejected_max_connections),
                    no_backend: load(&state.rejected_no_backend)
                        + load(&state.udp_dropped_no_backend),
                    acl: load(&state.rejected_acl),
                    rate_limit: load(&state.rejected_rate_limit),
                    max_connections_per_source: load(&state.rejected_per_source),
                    proxy_untrusted: load(&state.rejected_proxy_untrusted),
                    proxy_malformed: state.rejected_proxy_malformed.iter().map(load).sum(),
                    tls_malformed: state.rejected_tls_malformed.iter().map(load).sum(),
                    tls_no_route: load(&state.rejected_tls_no_route),
                    preface_timeout: load(&state.rejected_preface_timeout),
                    no_descriptors: load(&state.rejected_no_descriptors),
                    queue_timeout: load(&state.rejected_queue_timeout),
                    queue_full: load(&state.rejected_queue_full),
                },
                udp_flows_active: load(&state.udp_flows_active),
                udp_flows_offloaded: load(&state.udp_flows_offloaded),
                udp_flows_total: load(&state.udp_flows_total),
                udp_flows_expired: load(&state.udp_flows_expired),
                udp_flows_evicted: load(&state.udp_flows_evicted),
                udp_flows_backend_removed: load(&state.udp_flows_backend_removed),
                udp_flows_answered: load(&state.udp_flows_answered),
                udp_flows_reply_timeout: load(&state.udp_flows_reply_timeout),
                udp_flows_retried: load(&state.udp_flows_retried),
                udp_replies_dropped: load(&state.udp_replies_dropped),
                accept_errors: load(&state.accept_errors),
                closed_max_lifetime: load(&state.closed_max_lifetime),
            }
        })
        .collect()
}

pub fn pools(config: &Config, registry: &mut StateRegistry, now: Millis) -> Vec<PoolStatus> {
    config
        .pools
        .iter()
        .map(|pool| (pool, registry.queue(&pool.name)))
        .collect::<Vec<_>>()
        .into_iter()
        .map(|(pool, waiting)| PoolStatus {
            name: pool.name.clone(),
            algorithm: algorithm_name(pool.algorithm),
            health_check: pool.health_check.as_ref().map(|c| HealthCheckStatus {
                kind: c.kind.as_str(),
                interval_ms: u64::try_from(c.interval.as_millis()).unwrap_or(u64::MAX),
                timeout_ms: u64::try_from(c.timeout.as_millis()).unwrap_or(u64::MAX),
                rise: c.rise,
                fall: c.fall,
                port: c.port,
                address: c.address,
            }),
            on_backend_down: match pool.on_backend_down {
                OnBackendDown::Keep => "keep",
                OnBackendDown::Close => "close",
            },
            slow_start_ms: pool.slow_start.map(|_| pool.slow_start_ms()),
            queue: pool.queue.map(|q| QueueStatus {
                max: q.max,
                timeout_ms: u64::try_from(q.timeout.as_millis()).unwrap_or(u64::MAX),
            }),
            queue_length: waiting.len(),
            queued_total: waiting.queued_total.load(Ordering::Relaxed),
            backends: pool
                .backends
                .iter()
                .map(|b| {
                    let state = registry.backend(&pool.name, b.address);
                    backend(b, pool.slow_start_ms(), &state, now)
                })
                .collect(),
            names: Vec::new(),
            departing: Vec::new(),
        })
        .collect()
}

fn backend(b: &Backend, slow_start: Millis, state: &BackendState, now: Millis) -> BackendStatus {
    let load = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    let effective = crate::routes::live_weight(b, state, slow_start, now);
    let connect_duration = state.connect_duration.snapshot();
    BackendStatus {
        address: b.address,
        state: BackendStateName::of(state, now),
        up: is_up(state, now),
        weight: b.weight,
        effective_weight: f64::from(effective) / f64::from(weight::WEIGHT_SCALE),
        slow_start_remaining_ms: weight::slow_start_remaining(now, state.returned_at(), slow_start),
        backup: b.backup,
        max_connections: b.max_connections,
        connections_active: load(&state.active),
        previous_process_connections_active: 0,
        connections_total: load(&state.connections_total),
        fastpath_connections_total: 0,
        connect_errors: ConnectErrors {
            refused: load(&state.connect_errors_refused),
            timeout: load(&state.connect_errors_timeout),
            other: load(&state.connect_errors_other),
            no_reply: load(&state.connect_errors_no_reply),
        },
        sent_bytes: load(&state.bytes_sent),
        received_bytes: load(&state.bytes_received),
        datagrams_to_backend: load(&state.datagrams_to_backend),
        datagrams_from_backend: load(&state.datagrams_from_backend),
        offloaded_datagrams_to_backend: 0,
        offloaded_datagrams_from_backend: 0,
        health_checks: HealthChecks {
            success: load(&state.health_checks_success),
            failure: load(&state.health_checks_failure),
            last: last_check(state),
            last_change_unix_ms: match load(&state.health_changed_unix_ms) {
                0 => None,
                at => Some(at),
            },
            duration: state.probe_duration.snapshot(),
        },
        source: "config",
        name: None,
        runtime_weight: false,
        response_time: ResponseTime::of(state, &connect_duration),
        connect_duration,
    }
}

fn last_check(state: &BackendState) -> Option<LastCheck> {
    let last = state.last_check.lock().unwrap_or_else(|p| p.into_inner());
    last.as_ref().map(|c| LastCheck {
        ok: c.ok,
        reason: c.reason.clone(),
        at_unix_ms: c.at_unix_ms,
        duration_ms: c.duration.as_secs_f64() * 1e3,
    })
}

pub fn algorithm_name(algorithm: Algorithm) -> &'static str {
    match algorithm {
        Algorithm::RoundRobin => "round_robin",
        Algorithm::LeastConnections => "least_connections",
        Algorithm::Random => "random",
        Algorithm::PowerOfTwo => "power_of_two",
        Algorithm::LeastTime { .. } => "least_time",
        Algorithm::Maglev { .. } => "maglev",
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_ramping_backend_shows_its_effective_weight_and_what_is_left_of_the_ramp() {
        let yaml = "listeners: [{ name: l, listen: 127.0.0.1:0, pool: p }]\npools:\n  - name: p\n    slow_start: 10s\n    backends: [{ address: 127.0.0.1:9, weight: 4 }, { address: 127.0.0.1:10 }]\n";
        let config = crate::config::load_str(yaml, "t.yaml").unwrap().config;
        let mut registry = StateRegistry::default();
        let state = registry.backend("p", config.pools[0].backends[0].address);
        state.set_healthy_at(false, 1_000);
        state.set_healthy_at(true, 2_000);
        let pools = pools(&config, &mut registry, 4_500);
        assert_eq!(pools[0].slow_start_ms, Some(10_000));
        let (ramping, steady) = (&pools[0].backends[0], &pools[0].backends[1]);
        assert_eq!((ramping.weight, ramping.effective_weight), (4, 1.0));
        assert_eq!(ramping.slow_start_remaining_ms, 7_500);
        assert_eq!(
            (steady.effective_weight, steady.slow_start_remaining_ms),
            (1.0, 0)
        );
    }

    #[test]
    fn an_operators_choice_wins_over_health() {
        let state = BackendState::default();
        assert_eq!(BackendStateName::of(&state, 0), BackendStateName::Up);
        state.set_healthy(false);
        assert_eq!(BackendStateName::of(&state, 0), BackendStateName::Down);
        state.set_admin(AdminState::Draining);
        assert_eq!(BackendStateName::of(&state, 0), BackendStateName::Draining);
        state.set_admin(AdminState::Disabled);
        assert_eq!(BackendStateName::of(&state, 0), BackendStateName::Disabled);
        state.set_admin(AdminState::Enabled);
        state.set_healthy(true);
        assert_eq!(BackendStateName::of(&state, 0), BackendStateName::Up);
    }
}
