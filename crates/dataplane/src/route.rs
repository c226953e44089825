//! The route snapshot: what a worker reads when a new connection or flow arrives.
//!
//! The control plane builds a [`RouteTable`] from the configuration, wraps it in an `Arc` and
//! publishes it through an `ArcSwap`; workers `load()` it once per new session (wait-free) and
//! never mutate it. Everything that must change while a snapshot is live (health, admin state,
//! active-session counts, byte counters) lives in the atomics of [`BackendState`] and
//! [`ListenerState`], which survive reloads because the control plane carries the same `Arc`
//! into the next snapshot for a backend or listener that stays.
//!
//! This module owns no file descriptor.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::histogram::Histogram;

/// Re-exported where the snapshot types that carry it live; defined beside the clock.
pub use crate::clock::Millis;

/// Transport protocol of a listener or flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
}

/// What a picker may hash on: the client's address and the address it connected to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub protocol: Protocol,
    pub client: SocketAddr,
    pub local: SocketAddr,
}

/// A balancing algorithm. Implementations are pure: they read the pool's atomics and the time
/// they are given, make no syscalls, and take no locks.
pub trait Pick: Send + Sync + fmt::Debug {
    /// Index into `pool.backends` of the backend for this new session, or `None` when no backend
    /// is eligible. `tried` lists backends that already failed to connect for this session: they
    /// are never returned. Backups are returned only when no primary is eligible.
    fn pick(&self, key: &FlowKey, pool: &PoolView, now: Millis, tried: &[usize]) -> Option<usize>;
}

/// Passive health (nginx `max_fails` / `fail_timeout`): `max_fails` connect failures within
/// `fail_timeout` take a backend out for `fail_timeout`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PassivePolicy {
    pub max_fails: u32,
    pub fail_timeout: Duration,
}

/// Most `retries` a pool may have. The config loader refuses more, and a session's record of
/// the backends it tried is sized from it: one definition, so the two cannot drift apart.
pub const MAX_RETRIES: u32 = 16;
/// Most connect attempts per session: the first plus [`MAX_RETRIES`].
pub const MAX_CONNECT_ATTEMPTS: usize = MAX_RETRIES as usize + 1;

/// One pool as the data plane sees it.
#[derive(Debug)]
pub struct PoolView {
    pub name: Arc<str>,
    pub backends: Arc<[BackendView]>,
    pub picker: Arc<dyn Pick>,
    /// Other backends tried after a failed connect; at most [`MAX_RETRIES`].
    pub retries: u32,
    pub passive: Option<PassivePolicy>,
    /// PROXY protocol header sent to each backend connection (v2 also on UDP datagrams).
    pub send_proxy: Option<ProxyVersion>,
    /// `slow_start` in milliseconds, 0 when off: how long a backend that comes back takes to
    /// ramp from a small share of its weight to all of it (see `balance::weight`).
    pub slow_start: Millis,
    /// `queue`: sessions wait for a slot when every usable backend is at `max_connections`
    /// (`None`: they are refused, as `no_backend`).
    pub queue: Option<crate::queue::QueueSettings>,
    /// The pool's waiters, shared by every worker and every snapshot of the pool (kept even
    /// while `queue` is off, so sessions that wait when a reload turns it off are still served).
    pub waiting: Arc<crate::queue::PoolQueue>,
    /// Keepalive and TCP_USER_TIMEOUT of each backend connection.
    pub backend_tcp: TcpOptions,
}

/// TCP keepalive probes (SO_KEEPALIVE with TCP_KEEPIDLE, TCP_KEEPINTVL, TCP_KEEPCNT): after
/// `idle` without traffic a probe is sent every `interval`, and `count` unanswered ones end
/// the connection (the next read fails with ETIMEDOUT).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keepalive {
    pub idle: Duration,
    pub interval: Duration,
    pub count: u32,
}

/// Socket options for one side of a session (the client's, set by the listener; the
/// backend's, set by the pool). The default sets nothing: the kernel's own settings apply.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TcpOptions {
    pub keepalive: Option<Keepalive>,
    /// TCP_USER_TIMEOUT: how long sent data may stay unacknowledged (and, with keepalive,
    /// how long probes may go unanswered) before the connection ends.
    pub user_timeout: Option<Duration>,
}

impl TcpOptions {
    pub fn is_empty(&self) -> bool {
        self.keepalive.is_none() && self.user_timeout.is_none()
    }

    /// Sets these options on a connected or connecting socket. A failure is logged by the
    /// caller and leaves the session as it is: without the option it still works.
    pub fn apply(&self, socket: socket2::SockRef<'_>) -> std::io::Result<()> {
        if let Some(k) = self.keepalive {
            let params = socket2::TcpKeepalive::new()
                .with_time(k.idle)
                .with_interval(k.interval)
                .with_retries(k.count);
            socket.set_tcp_keepalive(&params)?;
        }
        if let Some(timeout) = self.user_timeout {
            socket.set_tcp_user_timeout(Some(timeout))?;
        }
        Ok(())
    }
}

/// `access_log.at_connect` and `access_log.interval`: the access-log lines of a TCP session
/// besides the one at its close (`session closed`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AccessLogLines {
    /// `session connected` once the backend is connected (HAProxy's `option logasap`).
    pub at_connect: bool,
    /// `session open` every this long while the session lasts (`None`: never).
    pub interval: Option<Duration>,
}

/// `timeouts.max_lifetime` (Envoy's `max_downstream_connection_duration`): a session ends
/// this long after it was accepted, whatever its traffic, so long-lived clients reconnect and
/// spread over backends added since. Each session's lifetime is shortened by its own random
/// share of `jitter`, so sessions opened together (after a restart) do not all end together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MaxLifetime {
    pub lifetime: Duration,
    /// At most `lifetime`.
    pub jitter: Duration,
}

impl MaxLifetime {
    /// When a session accepted at `opened` ends, given `draw`, a random number (uniform in
    /// `0..=jitter` in ms, from the caller): never later than `lifetime`, never earlier than
    /// `lifetime - jitter`. Pure: the randomness is an argument.
    pub fn deadline(&self, opened: Millis, draw: u64) -> Millis {
        let lifetime = u64::try_from(self.lifetime.as_millis()).unwrap_or(u64::MAX / 2);
        let jitter = u64::try_from(self.jitter.as_millis()).unwrap_or(0);
        opened.saturating_add(lifetime.saturating_sub(draw.min(jitter)))
    }

    /// The jitter in ms: draws for [`Self::deadline`] are taken in `0..=jitter_ms()`.
    pub fn jitter_ms(&self) -> u64 {
        u64::try_from(self.jitter.as_millis()).unwrap_or(0)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyVersion {
    V1,
    V2,
}

impl PoolView {
    /// True when backend `index` may take a new session now: healthy, enabled, not passively
    /// down, under its connection limit, and not already tried for this session.
    pub fn eligible(&self, index: usize, now: Millis, tried: &[usize]) -> bool {
        match self.backends.get(index) {
            Some(b) => !tried.contains(&index) && b.accepts_new(now),
            None => false,
        }
    }

    /// True when some backend may take a new session now (a picker would return one).
    pub fn has_room(&self, now: Millis) -> bool {
        self.backends.iter().any(|b| b.accepts_new(now))
    }

    /// True when some backend is usable (up, enabled, not passively down) but none takes a
    /// new session: all the usable ones are at their `max_connections`. Then a session may
    /// wait in the pool's queue; with no usable backend at all, waiting would not help.
    pub fn is_saturated(&self, now: Millis) -> bool {
        self.backends.iter().any(|b| b.state.is_available(now)) && !self.has_room(now)
    }

    /// Indices of the primaries (`backup == false`) followed by the backups.
    pub fn tier(&self, backup: bool) -> impl Iterator<Item = usize> + '_ {
        self.backends
            .iter()
            .enumerate()
            .filter(move |(_, b)| b.backup == backup)
            .map(|(i, _)| i)
    }
}

/// One backend of a pool, as configured, plus its shared live state.
#[derive(Debug, Clone)]
pub struct BackendView {
    pub addr: SocketAddr,
    /// 1..=256; a picker gives this backend a share of new sessions proportional to it. The
    /// control plane may build a snapshot with 0 (an agent asked for `0%`): no new sessions.
    pub weight: u32,
    pub backup: bool,
    /// Most concurrent sessions this backend takes; `None` for no limit.
    pub max_connections: Option<u64>,
    pub state: Arc<BackendState>,
}

impl BackendView {
    pub fn accepts_new(&self, now: Millis) -> bool {
        if self.weight == 0 || !self.state.is_available(now) {
            return false;
        }
        match self.max_connections {
            Some(max) => self.state.active.load(Ordering::Relaxed) < max,
            None => true,
        }
    }

    /// Takes one of this backend's slots (its `active` count), unless it is at its
    /// `max_connections`: the check and the count in one step, so workers racing for the
    /// last slot cannot both take it. Give the slot back with `active.fetch_sub(1)`.
    pub fn try_acquire(&self) -> bool {
        match self.max_connections {
            Some(max) => self
                .state
                .active
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                    (n < max).then_some(n + 1)
                })
                .is_ok(),
            None => {
                self.state.active.fetch_add(1, Ordering::Relaxed);
                true
            }
        }
    }
}

/// Administrative state set by an operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum AdminState {
    Enabled = 0,
    /// No new sessions; established ones finish.
    Draining = 1,
    Disabled = 2,
}

impl AdminState {
    pub fn as_str(self) -> &'static str {
        match self {
            AdminState::Enabled => "enabled",
            AdminState::Draining => "draining",
            AdminState::Disabled => "disabled",
        }
    }
}

/// Reason a connect to a backend failed, as counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectError {
    Refused,
    Timeout,
    Other,
    /// A `udp.responses` exchange got no reply within `udp.reply_timeout`.
    NoReply,
}

/// Live state of one backend, shared by every worker and the control plane. All fields are
/// atomics so the hot path never locks; counters are monotonic and read at scrape time.
#[derive(Debug)]
pub struct BackendState {
    admin: AtomicU8,
    /// 1 = up, 0 = down, as judged by active health checks (up when there are none).
    healthy: AtomicU8,
    /// Passive health: the backend is out until this time (0 = not out). Once past, it is
    /// also when the backend came back from that mark, which is when its slow start begins.
    passive_down_until: AtomicU64,
    /// When the backend last came back to health or to `Enabled` (0 = it has not been away
    /// since this state was made, at start or by the reload that added the backend, which is
    /// when slow start does not apply, as in HAProxy).
    returned_at: AtomicU64,
    passive_window_start: AtomicU64,
    passive_fails: AtomicU32,
    /// Sessions currently established or connecting to this backend.
    pub active: AtomicU64,
    pub connections_total: AtomicU64,
    pub connect_errors_refused: AtomicU64,
    pub connect_errors_timeout: AtomicU64,
    pub connect_errors_other: AtomicU64,
    pub connect_errors_no_reply: AtomicU64,
    /// Bytes relayed from clients to this backend.
    pub bytes_sent: AtomicU64,
    /// Bytes relayed from this backend to clients.
    pub bytes_received: AtomicU64,
    /// UDP datagrams relayed to and from this backend.
    pub datagrams_to_backend: AtomicU64,
    pub datagrams_from_backend: AtomicU64,
    /// Exponentially weighted moving averages in microseconds (0 = no sample yet), for
    /// `least_time`: time to connect, and time from the first client byte forwarded to the
    /// first backend byte back.
    pub connect_time_ewma_us: AtomicU64,
    pub first_byte_time_ewma_us: AtomicU64,
    /// Every successful connect's duration, for the Prometheus histogram.
    pub connect_duration: Histogram,
    /// Results of active health probes (the control plane's prober bumps these).
    pub health_checks_success: AtomicU64,
    pub health_checks_failure: AtomicU64,
    /// Percent of the configured weight an agent check asked for (100: as configured). The
    /// pickers never read it: the control plane builds the next snapshot's weights from it.
    pub agent_weight_percent: AtomicU32,
    /// How long each active probe took, pass or fail (the prober records, `/metrics` reads).
    pub probe_duration: Histogram,
    /// The last active probe's outcome. Only the prober (once per interval) and the status
    /// API take the lock; no worker reads it.
    pub last_check: Mutex<Option<CheckOutcome>>,
    /// When active health last changed (up or down), in ms since the Unix epoch; 0: not
    /// since this process started.
    pub health_changed_unix_ms: AtomicU64,
}

/// What an active health probe found, for the status API and the dashboard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckOutcome {
    pub ok: bool,
    /// Why it failed (the probe's error), empty when it passed.
    pub reason: String,
    /// When it ended, in ms since the Unix epoch.
    pub at_unix_ms: u64,
    pub duration: Duration,
}

impl Default for BackendState {
    fn default() -> Self {
        Self {
            admin: AtomicU8::new(AdminState::Enabled as u8),
            healthy: AtomicU8::new(1),
            passive_down_until: AtomicU64::new(0),
            returned_at: AtomicU64::new(0),
            passive_window_start: AtomicU64::new(0),
            passive_fails: AtomicU32::new(0),
            active: AtomicU64::new(0),
            connections_total: AtomicU64::new(0),
            connect_errors_refused: AtomicU64::new(0),
            connect_errors_timeout: AtomicU64::new(0),
            connect_errors_other: AtomicU64::new(0),
            connect_errors_no_reply: AtomicU64::new(0),
            bytes_sent: AtomicU64::new(0),
            bytes_received: AtomicU64::new(0),
            datagrams_to_backend: AtomicU64::new(0),
            datagrams_from_backend: AtomicU64::new(0),
            connect_time_ewma_us: AtomicU64::new(0),
            first_byte_time_ewma_us: AtomicU64::new(0),
            connect_duration: Histogram::default(),
            health_checks_success: AtomicU64::new(0),
            health_checks_failure: AtomicU64::new(0),
            agent_weight_percent: AtomicU32::new(100),
            probe_duration: Histogram::default(),
            last_check: Mutex::new(None),
            health_changed_unix_ms: AtomicU64::new(0),
        }
    }
}

impl BackendState {
    pub fn new() -> Self {
        Self::default()
    }

    /// True when the backend may take new sessions: enabled, healthy and not passively down.
    pub fn is_available(&self, now: Millis) -> bool {
        self.admin() == AdminState::Enabled
            && self.healthy.load(Ordering::Relaxed) == 1
            && !self.is_passively_down(now)
    }

    pub fn admin(&self) -> AdminState {
        match self.admin.load(Ordering::Relaxed) {
            0 => AdminState::Enabled,
            1 => AdminState::Draining,
            _ => AdminState::Disabled,
        }
    }

    /// Sets the admin state now; see [`Self::set_admin_at`].
    pub fn set_admin(&self, state: AdminState) {
        self.set_admin_at(state, crate::clock::now_ms());
    }

    /// Sets the admin state; a return to `Enabled` from a drain or disable at `now` starts the
    /// backend's slow start.
    pub fn set_admin_at(&self, state: AdminState, now: Millis) {
        let was = self.admin.swap(state as u8, Ordering::Relaxed);
        if state == AdminState::Enabled && was != AdminState::Enabled as u8 {
            self.record_return(now);
        }
    }

    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed) == 1
    }

    /// Sets active health now; see [`Self::set_healthy_at`].
    pub fn set_healthy(&self, up: bool) {
        self.set_healthy_at(up, crate::clock::now_ms());
    }

    /// Sets active health; going from down to up at `now` starts the backend's slow start.
    pub fn set_healthy_at(&self, up: bool, now: Millis) {
        let was = self.healthy.swap(u8::from(up), Ordering::Relaxed);
        if up && was == 0 {
            self.record_return(now);
        }
    }

    /// A backend added to a running pool (DNS discovery, the admin API) at `now`: it ramps
    /// up under the pool's slow start as one that came back does.
    pub fn record_join(&self, now: Millis) {
        self.record_return(now);
    }

    /// 0 means "never away", so a return in the clock's first millisecond counts as 1.
    fn record_return(&self, now: Millis) {
        self.returned_at.store(now.max(1), Ordering::Relaxed);
    }

    /// When the backend last came back (from down, passively down, drained or disabled), or
    /// 0 when it has not been away since it was made. While it is out this may lie in the
    /// future (the end of a passive mark); it only matters once it is eligible again.
    pub fn returned_at(&self) -> Millis {
        self.returned_at
            .load(Ordering::Relaxed)
            .max(self.passive_down_until.load(Ordering::Relaxed))
    }

    pub fn is_passively_down(&self, now: Millis) -> bool {
        now < self.passive_down_until.load(Ordering::Relaxed)
    }

    /// Lifts a passive mark and forgets the failures counted toward one: an active health
    /// check has seen the backend serve again, which outweighs failures seen before.
    pub fn clear_passive(&self) {
        self.passive_down_until.store(0, Ordering::Relaxed);
        self.passive_fails.store(0, Ordering::Relaxed);
    }

    /// Records a failed connect: counts it and, under a passive policy, takes the backend out
    /// for `fail_timeout` once `max_fails` failures fall within one `fail_timeout` window.
    /// Returns true when this failure took the backend out.
    pub fn record_connect_failure(
        &self,
        reason: ConnectError,
        now: Millis,
        policy: Option<PassivePolicy>,
    ) -> bool {
        let counter = match reason {
            ConnectError::Refused => &self.connect_errors_refused,
            ConnectError::Timeout => &self.connect_errors_timeout,
            ConnectError::Other => &self.connect_errors_other,
            ConnectError::NoReply => &self.connect_errors_no_reply,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        let Some(policy) = policy else {
            return false;
        };
        if policy.max_fails == 0 {
            return false;
        }
        let window = u64::try_from(policy.fail_timeout.as_millis()).unwrap_or(u64::MAX);
        let start = self.passive_window_start.load(Ordering::Relaxed);
        // Races between workers may lose a count at a window edge; passive health is a
        // heuristic and an exact count would need a lock on the hot path.
        let fails = if now.saturating_sub(start) >= window {
            self.passive_window_start.store(now, Ordering::Relaxed);
            self.passive_fails.store(1, Ordering::Relaxed);
            1
        } else {
            self.passive_fails.fetch_add(1, Ordering::Relaxed) + 1
        };
        if fails >= policy.max_fails {
            self.passive_fails.store(0, Ordering::Relaxed);
            self.passive_window_start.store(now, Ordering::Relaxed);
            self.passive_down_until
                .store(now.saturating_add(window), Ordering::Relaxed);
            return true;
        }
        false
    }

    /// Records a successful connect, which clears the passive failure count.
    pub fn record_connect_success(&self) {
        self.connections_total.fetch_add(1, Ordering::Relaxed);
        self.passive_fails.store(0, Ordering::Relaxed);
    }

    /// Records a reply to a UDP exchange (`udp.responses`), which clears the passive failure
    /// count as a successful connect does.
    pub fn record_reply(&self) {
        self.passive_fails.store(0, Ordering::Relaxed);
    }

    pub fn record_connect_time(&self, sample: Duration) {
        fold_ewma(&self.connect_time_ewma_us, sample);
        self.connect_duration.record(sample);
    }

    pub fn record_first_byte_time(&self, sample: Duration) {
        fold_ewma(&self.first_byte_time_ewma_us, sample);
    }
}

/// Folds one sample into an EWMA with weight 1/8 for the new sample, as TCP's SRTT does.
fn fold_ewma(cell: &AtomicU64, sample: Duration) {
    let sample_us = u64::try_from(sample.as_micros()).unwrap_or(u64::MAX).max(1);
    let old = cell.load(Ordering::Relaxed);
    let new = if old == 0 {
        sample_us
    } else {
        old - old / 8 + sample_us / 8
    };
    cell.store(new.max(1), Ordering::Relaxed);
}

/// Counters and gauges of one listener, shared by every worker and surviving reloads.
#[derive(Debug, Default)]
pub struct ListenerState {
    pub active: AtomicU64,
    pub connections_total: AtomicU64,
    pub rejected_max_connections: AtomicU64,
    pub rejected_no_backend: AtomicU64,
    /// accept(2) failed for lack of file descriptors (EMFILE/ENFILE) or memory.
    pub accept_errors: AtomicU64,
    /// Closed at once: accepted, but no descriptor was left for the backend socket.
    pub rejected_no_descriptors: AtomicU64,
    /// UDP flows: live now, created, ended by idle timeout, evicted by `max_flows`.
    pub udp_flows_active: AtomicU64,
    pub udp_flows_total: AtomicU64,
    pub udp_flows_expired: AtomicU64,
    pub udp_flows_evicted: AtomicU64,
    /// UDP flows ended by a reload that removed their backend.
    pub udp_flows_backend_removed: AtomicU64,
    /// `udp.responses` exchanges that got all their replies, and those that did not within
    /// `udp.reply_timeout` (they are also in `udp_flows_total`, and active while they wait).
    pub udp_flows_answered: AtomicU64,
    pub udp_flows_reply_timeout: AtomicU64,
    /// Exchanges that got no reply and whose datagram went to another backend (`udp.retries`);
    /// not in `udp_flows_reply_timeout`.
    pub udp_flows_retried: AtomicU64,
    /// Flows whose datagrams the kernel forwards now (`fastpath: udp_offload`).
    pub udp_flows_offloaded: AtomicU64,
    /// UDP datagrams dropped: no eligible backend, or no upstream socket could be opened.
    pub udp_dropped_no_backend: AtomicU64,
    /// UDP replies from backends that the listener socket could not send to the client.
    pub udp_replies_dropped: AtomicU64,
    /// Closed at once: source refused by `allow`/`deny`.
    pub rejected_acl: AtomicU64,
    /// Closed at once: the source already has `max_connections_per_source` sessions.
    pub rejected_per_source: AtomicU64,
    /// Closed at once: the source exceeded `new_connections_per_second_per_source`.
    pub rejected_rate_limit: AtomicU64,
    /// Closed: a PROXY header was expected from a source outside `trusted`.
    pub rejected_proxy_untrusted: AtomicU64,
    /// Closed: malformed PROXY header (by reason, in `proto::proxy_protocol::Reason::ALL` order).
    pub rejected_proxy_malformed: [AtomicU64; crate::proto::proxy_protocol::Reason::COUNT],
    /// Closed: malformed ClientHello (by reason, in `proto::client_hello::Reason::ALL` order).
    pub rejected_tls_malformed: [AtomicU64; crate::proto::client_hello::Reason::COUNT],
    /// Closed: no SNI route matched and there is no default pool.
    pub rejected_tls_no_route: AtomicU64,
    /// Closed: the PROXY header or ClientHello did not arrive within its timeout.
    pub rejected_preface_timeout: AtomicU64,
    /// Closed: waited in the pool's queue for `queue.timeout` without getting a slot.
    pub rejected_queue_timeout: AtomicU64,
    /// Closed at once: every backend was full and `queue.max` sessions already waited.
    pub rejected_queue_full: AtomicU64,
    /// Established sessions ended by `timeouts.max_lifetime` (not a refusal: they were served).
    pub closed_max_lifetime: AtomicU64,
    /// TCP listeners with per-source limits: the one limiter every worker admits through,
    /// made on the first connection it applies to; it survives reloads with this state, so
    /// sessions admitted before a reload are given back to the table that counted them.
    pub source_limiter: std::sync::OnceLock<crate::proto::rate_limit::SharedSourceLimiter>,
}

/// Per-listener settings.
#[derive(Debug)]
pub struct ListenerRoute {
    pub name: Arc<str>,
    pub protocol: Protocol,
    pub pool: Arc<PoolView>,
    /// TCP: connect timeout to a backend.
    pub connect_timeout: Duration,
    /// TCP: a session silent both ways this long is closed.
    pub idle_timeout: Duration,
    /// TCP: most concurrent sessions.
    pub max_connections: Option<u64>,
    /// TCP: keepalive and TCP_USER_TIMEOUT of each client connection.
    pub client_tcp: TcpOptions,
    /// TCP: sessions end this long after they were accepted (`None`: never).
    pub max_lifetime: Option<MaxLifetime>,
    /// TCP: which access-log lines a session writes besides the one at its close.
    pub access_log: AccessLogLines,
    /// UDP: flow idle timeout and table bound.
    pub udp: UdpSettings,
    /// TCP: route by the ClientHello's SNI instead of to `pool`.
    pub tls: Option<Arc<crate::sni::SniTable>>,
    /// TCP: read a PROXY v1/v2 header from trusted upstream balancers.
    pub accept_proxy: Option<AcceptProxy>,
    /// Source allow/deny lists (`None`: everyone).
    pub acl: Option<Arc<crate::proto::acl::Acl>>,
    /// TCP: per-source concurrent-session cap and new-session rate; UDP: new flows per second
    /// per source (`udp.new_flows_per_second_per_source`).
    pub per_source: Option<crate::proto::rate_limit::SourceLimits>,
    /// UDP: the kernel that forwards this listener's established flows (`fastpath:
    /// udp_offload`, when it is on).
    pub udp_offload: Option<Arc<dyn crate::udp::offload::FlowOffload>>,
    pub state: Arc<ListenerState>,
}

/// `accept_proxy_protocol`: who may send a PROXY header, and how long it may take.
#[derive(Debug, Clone)]
pub struct AcceptProxy {
    pub trusted: Arc<crate::proto::acl::CidrSet>,
    pub timeout: Duration,
}

/// Settings of a UDP listener's flow table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UdpSettings {
    pub idle_timeout: Duration,
    /// Most flows across all workers; each worker keeps at most its share (rounded up).
    pub max_flows: u64,
    /// `udp.responses`: each client datagram is an exchange of its own (see
    /// `udp::exchange`), balanced on its own and ended after this many replies.
    pub responses: Option<u32>,
    /// With `responses`: how long an exchange waits for its first (or next) reply.
    pub reply_timeout: Duration,
    /// With `responses`: how many times a datagram that got no reply is sent again, each
    /// time to another backend (at most `udp::exchange::MAX_UDP_RETRIES`).
    pub retries: u32,
    /// `udp.per_datagram`: no flows; each datagram is balanced on its own and sent from a
    /// socket the worker shares (see `worker::udp_spray`); replies are not relayed.
    pub per_datagram: bool,
    /// `udp.datagrams_per_second_per_flow`: each flow's own token bucket.
    pub datagram_rate: Option<crate::proto::rate_limit::Rate>,
}

impl Default for UdpSettings {
    fn default() -> Self {
        Self {
            idle_timeout: Duration::from_secs(30),
            max_flows: 65_536,
            responses: None,
            reply_timeout: Duration::from_secs(2),
            retries: 0,
            per_datagram: false,
            datagram_rate: None,
        }
    }
}

/// The immutable snapshot of every listener's route. Cloning copies two maps of `Arc`s.
#[derive(Debug, Default, Clone)]
pub struct RouteTable {
    listeners: HashMap<Arc<str>, Arc<ListenerRoute>>,
    /// Old names of listeners a reload renamed: a worker that has not yet renamed its slot
    /// still finds the route under the name it knows.
    aliases: HashMap<Arc<str>, Arc<str>>,
}

impl RouteTable {
    pub fn new(listeners: impl IntoIterator<Item = ListenerRoute>) -> Self {
        Self {
            listeners: listeners
                .into_iter()
                .map(|l| (l.name.clone(), Arc::new(l)))
                .collect(),
            aliases: HashMap::new(),
        }
    }

    /// This table, where `old` also names the listener now called `new`.
    pub fn with_alias(mut self, old: &str, new: &str) -> Self {
        self.aliases.insert(old.into(), new.into());
        self
    }

    pub fn listener(&self, name: &str) -> Option<&Arc<ListenerRoute>> {
        self.listeners.get(name).or_else(|| {
            let new = self.aliases.get(name)?;
            self.listeners.get(new)
        })
    }

    pub fn listeners(&self) -> impl Iterator<Item = &Arc<ListenerRoute>> {
        self.listeners.values()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lifetime_ends_within_its_jitter_and_never_after_it() {
        let m = MaxLifetime {
            lifetime: Duration::from_secs(60),
            jitter: Duration::from_secs(6),
        };
        assert_eq!(m.deadline(1_000, 0), 61_000);
        assert_eq!(m.deadline(1_000, 6_000), 55_000);
        // A draw beyond the jitter is clamped: never earlier than lifetime - jitter.
        assert_eq!(m.deadline(1_000, u64::MAX), 55_000);
        for draw in (0..=m.jitter_ms()).step_by(500) {
            let at = m.deadline(0, draw);
            assert!((54_000..=60_000).contains(&at), "{draw}: {at}");
        }
        let exact = MaxLifetime {
            lifetime: Duration::from_millis(1500),
            jitter: Duration::ZERO,
        };
        assert_eq!(exact.deadline(10, 999), 1510);
    }
}
