//! Active health checks: a pure rise/fall state machine per backend ([`HealthMachine`], the
//! time passed in) and the probe engine ([`HealthEngine`]) that drives one machine per backend
//! on the control plane's tokio runtime, never on a data-plane worker.
//!
//! A probe's verdict lands in the backend's shared [`BackendState`]: `set_healthy` flips the
//! flag every picker reads, so a backend marked down gets no new session from that moment,
//! and the `health_checks_{success,failure}` counters feed
//! `ballast_backend_health_checks_total`. With `on_backend_down: close`, going down also asks
//! the data plane to close the backend's established sessions.
//!
//! File descriptors: each probe opens one socket (a TCP stream, or a UDP socket bound to an
//! ephemeral port and connected to the backend) and closes it when the probe ends or its task
//! is aborted. Where a client crate speaks the protocol (redis, postgres, mysql), the probe's
//! stream is the crate's connection's (moved into it, or opened by it) and closes with it,
//! inside the probe's timeout. The engine owns nothing else.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use ballast_dataplane::clock;
use ballast_dataplane::proto::proxy_protocol;
use ballast_dataplane::route::{AdminState, BackendState, CheckOutcome, Millis, ProxyVersion};
use rand::Rng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::runtime::Handle;
use tokio::task::JoinHandle;

use crate::config::{AgentCheck, HealthCheck, HttpCheck, ProbeKind};

pub mod agent;
pub mod http;
pub mod mysql;
pub mod postgres;
pub mod redis;
pub mod tls;

/// A change of a backend's active health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    WentUp,
    WentDown,
}

/// Rise/fall counting and probe scheduling for one backend. Pure: every method takes the
/// time, nothing here reads a clock or touches a socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthMachine {
    rise: u32,
    fall: u32,
    interval: Millis,
    up: bool,
    /// Consecutive results that disagree with `up`; reaching `rise` or `fall` flips it.
    streak: u32,
    due: Millis,
}

impl HealthMachine {
    /// A machine that starts `up` (a backend keeps the state it had before a reload) and
    /// probes first at `now + jitter`; callers pick the jitter below the interval so that
    /// many backends do not probe in lockstep.
    pub fn new(check: &HealthCheck, up: bool, now: Millis, jitter: Millis) -> Self {
        let interval = millis(check.interval).max(1);
        Self {
            rise: check.rise.max(1),
            fall: check.fall.max(1),
            interval,
            up,
            streak: 0,
            due: now.saturating_add(jitter.min(interval - 1)),
        }
    }

    pub fn is_up(&self) -> bool {
        self.up
    }

    /// Takes the machine down on outside evidence (passive health saw failed connects):
    /// from here `rise` passing probes in a row bring it back, as after `fall` failures.
    /// Returns false when it was down already.
    pub fn mark_down(&mut self) -> bool {
        if !self.up {
            return false;
        }
        self.up = false;
        self.streak = 0;
        true
    }

    /// When the next probe should start.
    pub fn due(&self) -> Millis {
        self.due
    }

    /// Records the result of the probe that started at [`Self::due`] and finished at `now`,
    /// and schedules the next one an interval after the last (never in the past, so a probe
    /// that overran does not trigger a burst).
    pub fn record(&mut self, ok: bool, now: Millis) -> Option<Transition> {
        self.due = self.due.saturating_add(self.interval).max(now);
        if ok == self.up {
            self.streak = 0;
            return None;
        }
        self.streak += 1;
        let needed = if self.up { self.fall } else { self.rise };
        if self.streak < needed {
            return None;
        }
        self.streak = 0;
        self.up = ok;
        Some(if ok {
            Transition::WentUp
        } else {
            Transition::WentDown
        })
    }
}

fn millis(d: Duration) -> Millis {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX / 2)
}

/// Why a probe failed, for the log line of a state change.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("connect: {0}")]
    Connect(std::io::Error),
    #[error("send: {0}")]
    Send(std::io::Error),
    #[error("receive: {0}")]
    Receive(std::io::Error),
    #[error("no complete reply within {0:?}")]
    Timeout(Duration),
    #[error("connection closed after {0} byte(s), before the expected reply")]
    Closed(usize),
    #[error("reply {0:?} does not start with the expected bytes")]
    Mismatch(String),
    #[error("no complete response within {0:?}")]
    NoResponse(Duration),
    #[error("{0}")]
    Http(http::HttpFailure),
    #[error("{0}")]
    Redis(redis::RedisFailure),
    #[error("no ROLE reply within {0:?}")]
    NoRoleReply(Duration),
    #[error("{0}")]
    Postgres(postgres::PostgresFailure),
    #[error("{0}")]
    Mysql(mysql::MysqlFailure),
    #[error("{0}")]
    Agent(agent::AgentFailure),
    #[error("TLS handshake: {0}")]
    Tls(String),
}

/// Where the probes of the backend at `backend` go: its own address, with the check's
/// `address` for the IP and its `port` for the port where they are given.
pub fn probe_addr(backend: SocketAddr, check: &HealthCheck) -> SocketAddr {
    SocketAddr::new(
        check.address.unwrap_or(backend.ip()),
        check.port.unwrap_or(backend.port()),
    )
}

/// One probe of the backend at `backend` (at [`probe_addr`]), bounded by the check's timeout.
pub async fn probe(backend: SocketAddr, check: &HealthCheck) -> Result<(), ProbeError> {
    let addr = probe_addr(backend, check);
    let attempt = async {
        match (check.kind, &check.http) {
            (ProbeKind::Http, Some(http)) => probe_http(addr, check.proxy, http).await,
            (ProbeKind::Redis, _) => match &check.redis {
                Some(redis) => {
                    let stream = connect(addr, check.proxy).await?;
                    redis::probe(stream, redis).await.map_err(ProbeError::Redis)
                }
                None => probe_tcp(addr, check).await,
            },
            (ProbeKind::Postgres, _) => match &check.postgres {
                Some(pg) => {
                    let stream = connect(addr, check.proxy).await?;
                    postgres::probe(stream, pg)
                        .await
                        .map_err(ProbeError::Postgres)
                }
                None => probe_tcp(addr, check).await,
            },
            (ProbeKind::Mysql, _) => match &check.mysql {
                Some(my) => mysql::probe(addr, my).await.map_err(ProbeError::Mysql),
                None => probe_tcp(addr, check).await,
            },
            (ProbeKind::Tcp | ProbeKind::Http, _) => probe_tcp(addr, check).await,
            (ProbeKind::Udp, _) => probe_udp(addr, check).await,
        }
    };
    match tokio::time::timeout(check.timeout, attempt).await {
        Ok(result) => result,
        Err(_) if check.kind == ProbeKind::Http => Err(ProbeError::NoResponse(check.timeout)),
        Err(_) if check.kind == ProbeKind::Redis => Err(ProbeError::NoRoleReply(check.timeout)),
        Err(_) => Err(ProbeError::Timeout(check.timeout)),
    }
}

/// The probe's TCP stream to `addr`, past the PROXY header `proxy` asks for (a backend
/// behind `send_proxy_protocol` reads one before anything else, HAProxy's
/// `check-send-proxy`). A probe speaks for no client: v2 LOCAL, v1 `PROXY UNKNOWN`.
async fn connect(addr: SocketAddr, proxy: Option<ProxyVersion>) -> Result<TcpStream, ProbeError> {
    let mut stream = TcpStream::connect(addr)
        .await
        .map_err(ProbeError::Connect)?;
    if let Some(version) = proxy {
        let mut header = Vec::with_capacity(proxy_protocol::V2_HEADER_LEN);
        match version {
            ProxyVersion::V1 => proxy_protocol::encode_v1_unknown(&mut header),
            ProxyVersion::V2 => proxy_protocol::encode_v2_local(&mut header),
        };
        stream.write_all(&header).await.map_err(ProbeError::Send)?;
    }
    Ok(stream)
}

/// Writes the request and reads until [`http::judge`] decides, at most the bounded head and
/// body; the socket closes when this returns (the request asked for `Connection: close`).
async fn probe_http(
    addr: SocketAddr,
    proxy: Option<ProxyVersion>,
    check: &HttpCheck,
) -> Result<(), ProbeError> {
    let stream = connect(addr, proxy).await?;
    match &check.tls {
        None => exchange_http(stream, addr, check).await,
        Some(tls) => {
            let stream = tls::handshake(stream, tls, addr.ip())
                .await
                .map_err(ProbeError::Tls)?;
            exchange_http(stream, addr, check).await
        }
    }
}

/// The request and its response over `stream`, plain or TLS.
async fn exchange_http<S>(
    mut stream: S,
    addr: SocketAddr,
    check: &HttpCheck,
) -> Result<(), ProbeError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    stream
        .write_all(&http::request(check, &addr.to_string()))
        .await
        .map_err(ProbeError::Send)?;
    let limit = http::MAX_HEAD_BYTES + http::MAX_BODY_BYTES;
    let mut response = Vec::with_capacity(4096);
    let mut buf = [0u8; 4096];
    loop {
        let n = stream.read(&mut buf).await.map_err(ProbeError::Receive)?;
        let room = limit.saturating_sub(response.len());
        response.extend_from_slice(buf.get(..n.min(room)).unwrap_or_default());
        let closed = n == 0 || response.len() >= limit;
        match http::judge(&response, check, closed) {
            http::Verdict::Pass => return Ok(()),
            http::Verdict::Fail(failure) => return Err(ProbeError::Http(failure)),
            // `judge` decides whenever `closed`; this guards the loop all the same.
            http::Verdict::NeedMore if closed => {
                return Err(ProbeError::Http(http::HttpFailure::ClosedInHead))
            }
            http::Verdict::NeedMore => {}
        }
    }
}

async fn probe_tcp(addr: SocketAddr, check: &HealthCheck) -> Result<(), ProbeError> {
    let mut stream = connect(addr, check.proxy).await?;
    if let Some(send) = &check.send {
        stream.write_all(send).await.map_err(ProbeError::Send)?;
    }
    let Some(expect) = &check.expect else {
        return Ok(());
    };
    let mut reply = Vec::with_capacity(expect.len());
    let mut buf = [0u8; 512];
    while reply.len() < expect.len() {
        let n = stream.read(&mut buf).await.map_err(ProbeError::Receive)?;
        if n == 0 {
            return Err(ProbeError::Closed(reply.len()));
        }
        reply.extend_from_slice(&buf[..n]);
        // A wrong first byte is already a failure; do not wait out the timeout for more.
        let seen = reply.len().min(expect.len());
        if reply[..seen] != expect[..seen] {
            break;
        }
    }
    prefix_matches(&reply, expect)
}

async fn probe_udp(addr: SocketAddr, check: &HealthCheck) -> Result<(), ProbeError> {
    let local: SocketAddr = if addr.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        ([0u16; 8], 0).into()
    };
    let socket = UdpSocket::bind(local).await.map_err(ProbeError::Connect)?;
    // Connected, so that an ICMP port-unreachable comes back as ECONNREFUSED on receive and
    // only the backend's own datagrams are read.
    socket.connect(addr).await.map_err(ProbeError::Connect)?;
    // The pool's v2 datagram header, as LOCAL: the backend strips it as from any datagram.
    let mut payload = Vec::new();
    if check.proxy == Some(ProxyVersion::V2) {
        proxy_protocol::encode_v2_local(&mut payload);
    }
    payload.extend_from_slice(check.send.as_deref().unwrap_or_default());
    socket.send(&payload).await.map_err(ProbeError::Send)?;
    let mut buf = vec![0u8; 64 * 1024];
    let n = socket.recv(&mut buf).await.map_err(ProbeError::Receive)?;
    match &check.expect {
        Some(expect) => prefix_matches(&buf[..n], expect),
        None => Ok(()),
    }
}

fn prefix_matches(reply: &[u8], expect: &[u8]) -> Result<(), ProbeError> {
    if reply.starts_with(expect) {
        Ok(())
    } else {
        let shown = &reply[..reply.len().min(64)];
        Err(ProbeError::Mismatch(
            String::from_utf8_lossy(shown).into_owned(),
        ))
    }
}

/// Connects to the agent at `addr`, writes `send` (if any), and reads its reply: up to a
/// newline, the agent's close, or [`agent::MAX_REPLY_BYTES`]. The caller bounds it by the
/// agent's timeout; the socket closes when this returns.
async fn ask_agent(addr: SocketAddr, check: &AgentCheck) -> Result<Vec<u8>, ProbeError> {
    // The agent is a service of its own beside the backend, not behind the PROXY reader.
    let mut stream = connect(addr, None).await?;
    if let Some(send) = &check.send {
        stream.write_all(send).await.map_err(ProbeError::Send)?;
    }
    let mut reply = Vec::with_capacity(64);
    let mut buf = [0u8; 256];
    while !reply.contains(&b'\n') && reply.len() < agent::MAX_REPLY_BYTES {
        let n = stream.read(&mut buf).await.map_err(ProbeError::Receive)?;
        if n == 0 {
            break;
        }
        reply.extend_from_slice(buf.get(..n).unwrap_or_default());
    }
    Ok(reply)
}

/// A backend's health as its two voices see it: the regular check and the agent. It is
/// healthy when the check says up and the agent does not say down (HAProxy: an agent's
/// `up` cannot overrule a failing check). One lock, so that the two tasks never store a
/// combination one of them has already changed.
#[derive(Debug)]
struct Votes(Mutex<(bool, bool)>);

impl Votes {
    fn new(check_up: bool) -> Self {
        Votes(Mutex::new((check_up, false)))
    }

    /// Records the check's verdict and stores the combined one.
    fn check(&self, up: bool, state: &BackendState) {
        let mut votes = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        votes.0 = up;
        state.set_healthy(votes.0 && !votes.1);
    }

    /// Records the agent's verdict and stores the combined one; true when it changed.
    fn agent(&self, down: bool, state: &BackendState) -> bool {
        let mut votes = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let changed = votes.1 != down;
        votes.1 = down;
        state.set_healthy(votes.0 && !votes.1);
        changed
    }

    fn agent_down(&self) -> bool {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).1
    }
}

/// What the engine calls when a backend of an `on_backend_down: close` pool goes down.
pub type CloseSessions = Arc<dyn Fn(&Arc<BackendState>) + Send + Sync>;

/// One backend to probe.
#[derive(Clone)]
pub struct Target {
    pub pool: Arc<str>,
    pub addr: SocketAddr,
    pub check: Arc<HealthCheck>,
    pub state: Arc<BackendState>,
    pub close_on_down: bool,
}

/// The probe tasks of one configuration. Dropping the engine (or [`HealthEngine::stop`])
/// aborts every task, which closes any socket a probe had open.
#[derive(Default)]
pub struct HealthEngine {
    tasks: Vec<JoinHandle<()>>,
}

impl HealthEngine {
    /// Spawns one probe task per target on `runtime`, and one agent task beside it where
    /// the check has an `agent`; an agent that changes a weight sets `weights_changed`.
    pub fn start(
        runtime: &Handle,
        targets: Vec<Target>,
        close: CloseSessions,
        weights_changed: Arc<AtomicBool>,
    ) -> Self {
        let mut tasks = Vec::with_capacity(targets.len());
        for target in targets {
            let votes = Arc::new(Votes::new(target.state.is_healthy()));
            if let Some(agent) = target.check.agent.clone() {
                let weights_changed = weights_changed.clone();
                let (target, votes) = (target.clone(), votes.clone());
                tasks.push(runtime.spawn(run_agent(target, agent, votes, weights_changed)));
            }
            tasks.push(runtime.spawn(run_probes(target, votes, close.clone())));
        }
        Self { tasks }
    }

    pub fn len(&self) -> usize {
        self.tasks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }

    pub fn stop(&mut self) {
        for task in self.tasks.drain(..) {
            task.abort();
        }
    }
}

impl Drop for HealthEngine {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Counts a probe's result, times it, and keeps it as the backend's last check.
fn record_outcome(state: &BackendState, result: &Result<(), ProbeError>, took: Duration) {
    let counter = match result {
        Ok(()) => &state.health_checks_success,
        Err(_) => &state.health_checks_failure,
    };
    counter.fetch_add(1, Ordering::Relaxed);
    state.probe_duration.record(took);
    let outcome = CheckOutcome {
        ok: result.is_ok(),
        reason: result
            .as_ref()
            .err()
            .map(ToString::to_string)
            .unwrap_or_default(),
        at_unix_ms: clock::unix_ms(),
        duration: took,
    };
    // A poisoned lock only means a panic elsewhere mid-write of a plain value: overwrite it.
    let mut last = state.last_check.lock().unwrap_or_else(|p| p.into_inner());
    *last = Some(outcome);
}

fn health_changed(state: &BackendState) {
    state
        .health_changed_unix_ms
        .store(clock::unix_ms(), Ordering::Relaxed);
}

async fn run_probes(target: Target, votes: Arc<Votes>, close: CloseSessions) {
    let interval = millis(target.check.interval).max(1);
    let jitter = rand::thread_rng().gen_range(0..interval);
    let mut machine = HealthMachine::new(
        &target.check,
        target.state.is_healthy(),
        clock::now_ms(),
        jitter,
    );
    loop {
        let wait = machine.due().saturating_sub(clock::now_ms());
        tokio::time::sleep(Duration::from_millis(wait)).await;
        let started = std::time::Instant::now();
        let result = probe(target.addr, &target.check).await;
        record_outcome(&target.state, &result, started.elapsed());
        if let Err(error) = &result {
            tracing::debug!(pool = %target.pool, backend = %target.addr, %error, "health probe failed");
        }
        let now = clock::now_ms();
        // With active checks, a passive mark only speeds up the down side: the backend stays
        // out until the probes see it `rise` times in a row, not for a fixed fail_timeout
        // (HAProxy's `observe layer4` with `on-error mark-down` behaves the same way).
        if target.state.is_passively_down(now) && machine.mark_down() {
            votes.check(false, &target.state);
            health_changed(&target.state);
            tracing::warn!(
                pool = %target.pool,
                backend = %target.addr,
                rise = target.check.rise,
                "backend down (passive health); back after `rise` passing health checks"
            );
        }
        match machine.record(result.is_ok(), now) {
            Some(Transition::WentDown) => {
                votes.check(false, &target.state);
                health_changed(&target.state);
                let reason = result.err().map(|e| e.to_string()).unwrap_or_default();
                tracing::warn!(
                    pool = %target.pool,
                    backend = %target.addr,
                    probed = %probe_addr(target.addr, &target.check),
                    kind = target.check.kind.as_str(),
                    fall = target.check.fall,
                    %reason,
                    "backend down (health check)"
                );
                if target.close_on_down {
                    tracing::warn!(pool = %target.pool, backend = %target.addr, "on_backend_down: close: closing its sessions");
                    close(&target.state);
                }
            }
            Some(Transition::WentUp) => {
                votes.check(true, &target.state);
                health_changed(&target.state);
                target.state.clear_passive();
                if votes.agent_down() {
                    tracing::info!(
                        pool = %target.pool,
                        backend = %target.addr,
                        rise = target.check.rise,
                        "backend up (health check), still down by its agent"
                    );
                    continue;
                }
                // The line says what traffic sees: an operator's drain or disable still
                // keeps new sessions away.
                match target.state.admin() {
                    AdminState::Enabled => tracing::info!(
                        pool = %target.pool,
                        backend = %target.addr,
                        rise = target.check.rise,
                        "backend up (health check), back in rotation"
                    ),
                    admin => tracing::info!(
                        pool = %target.pool,
                        backend = %target.addr,
                        rise = target.check.rise,
                        admin = admin.as_str(),
                        "backend up (health check), still out of rotation by its admin state"
                    ),
                }
            }
            None => {}
        }
    }
}

/// Asks the agent every `interval` (from a random point of the first) and applies what it
/// says. An agent that cannot be reached or says nothing known changes nothing: the
/// regular check judges whether the backend is reachable (HAProxy's rule as well).
async fn run_agent(
    target: Target,
    check: AgentCheck,
    votes: Arc<Votes>,
    weights_changed: Arc<AtomicBool>,
) {
    let addr = SocketAddr::new(check.address.unwrap_or(target.addr.ip()), check.port);
    let interval = millis(check.interval).max(1);
    let jitter = rand::thread_rng().gen_range(0..interval);
    let mut next = clock::now_ms().saturating_add(jitter);
    let mut applied = None;
    loop {
        let wait = next.saturating_sub(clock::now_ms());
        tokio::time::sleep(Duration::from_millis(wait)).await;
        next = next.saturating_add(interval).max(clock::now_ms());
        let reply = match tokio::time::timeout(check.timeout, ask_agent(addr, &check)).await {
            Ok(Ok(bytes)) => agent::parse_reply(&bytes).map_err(ProbeError::Agent),
            Ok(Err(error)) => Err(error),
            Err(_) => Err(ProbeError::Timeout(check.timeout)),
        };
        match reply {
            Ok(reply) => {
                applied = apply_agent(&target, &reply, &votes, applied, &weights_changed);
            }
            Err(error) => {
                tracing::debug!(pool = %target.pool, backend = %target.addr, agent = %addr, %error, "agent check failed; nothing changed");
            }
        }
    }
}

/// Applies one agent reply to the backend; returns the admin state the agent has set, for
/// the next reply's [`agent::next_admin`].
fn apply_agent(
    target: &Target,
    reply: &agent::AgentReply,
    votes: &Votes,
    applied: Option<AdminState>,
    weights_changed: &AtomicBool,
) -> Option<AdminState> {
    let (pool, backend) = (&target.pool, target.addr);
    let why = reply.description.as_deref().unwrap_or_default();
    if let Some(health) = reply.health {
        let down = health == agent::AgentHealth::Down;
        if votes.agent(down, &target.state) {
            if down {
                tracing::warn!(%pool, %backend, reason = why, "backend down (agent)");
            } else {
                tracing::info!(%pool, %backend, "backend up again by its agent");
            }
        }
    }
    let mut applied = applied;
    let wanted = agent::wanted_admin(reply);
    if let Some(next) = wanted.and_then(|w| agent::next_admin(w, target.state.admin(), applied)) {
        target.state.set_admin(next);
        applied = Some(next);
        tracing::info!(%pool, %backend, admin = next.as_str(), reason = why, "backend admin state set by its agent");
    }
    if let Some(percent) = reply.weight_percent {
        let old = target
            .state
            .agent_weight_percent
            .swap(percent, Ordering::Relaxed);
        if old != percent {
            weights_changed.store(true, Ordering::Relaxed);
            tracing::info!(%pool, %backend, percent, "backend weight set by its agent");
        }
    }
    applied
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn check(rise: u32, fall: u32, interval_ms: u64) -> HealthCheck {
        HealthCheck {
            kind: ProbeKind::Tcp,
            interval: Duration::from_millis(interval_ms),
            timeout: Duration::from_millis(interval_ms / 2),
            rise,
            fall,
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
        }
    }

    #[test]
    fn falls_after_fall_failures_and_rises_after_rise_successes() {
        let mut m = HealthMachine::new(&check(2, 3, 1000), true, 0, 0);
        assert_eq!(m.record(false, 10), None);
        assert_eq!(m.record(false, 1010), None);
        assert_eq!(m.record(false, 2010), Some(Transition::WentDown));
        assert!(!m.is_up());
        assert_eq!(m.record(true, 3010), None);
        assert_eq!(m.record(true, 4010), Some(Transition::WentUp));
        assert!(m.is_up());
    }

    #[test]
    fn a_mark_down_needs_rise_successes_to_come_back() {
        let mut m = HealthMachine::new(&check(2, 3, 100), true, 0, 0);
        assert!(m.mark_down());
        assert_eq!(m.record(true, 100), None);
        assert!(!m.mark_down(), "already down: the rise streak goes on");
        assert_eq!(m.record(true, 200), Some(Transition::WentUp));
        assert!(m.mark_down());
        assert_eq!(m.record(true, 300), None);
        assert_eq!(
            m.record(false, 400),
            None,
            "a failure resets the rise streak"
        );
        assert_eq!(m.record(true, 500), None);
        assert_eq!(m.record(true, 600), Some(Transition::WentUp));
    }

    #[test]
    fn one_success_resets_the_failure_streak() {
        let mut m = HealthMachine::new(&check(1, 2, 100), true, 0, 0);
        assert_eq!(m.record(false, 1), None);
        assert_eq!(m.record(true, 101), None);
        assert_eq!(m.record(false, 201), None);
        assert_eq!(m.record(false, 301), Some(Transition::WentDown));
    }

    #[test]
    fn probes_keep_their_rhythm_and_never_burst() {
        let mut m = HealthMachine::new(&check(1, 1, 100), true, 1000, 30);
        assert_eq!(m.due(), 1030);
        m.record(true, 1045);
        assert_eq!(m.due(), 1130);
        // A stall (the runtime was busy): the next probe is now, not a backlog of them.
        m.record(true, 1900);
        assert_eq!(m.due(), 1900);
    }

    #[test]
    fn jitter_stays_below_the_interval() {
        let m = HealthMachine::new(&check(1, 1, 100), true, 0, 5000);
        assert_eq!(m.due(), 99);
    }

    /// The obvious model: the state flips after `fall` failures in a row (when up) or `rise`
    /// successes in a row (when down).
    fn model(rise: u32, fall: u32, results: &[bool]) -> Vec<bool> {
        let mut up = true;
        let mut run = 0;
        results
            .iter()
            .map(|&ok| {
                if ok == up {
                    run = 0;
                } else {
                    run += 1;
                    if run == if up { fall } else { rise } {
                        up = ok;
                        run = 0;
                    }
                }
                up
            })
            .collect()
    }

    proptest! {
        #[test]
        fn matches_the_model_and_reports_every_flip(
            rise in 1u32..6,
            fall in 1u32..6,
            interval in 1u64..10_000,
            jitter in 0u64..20_000,
            results in proptest::collection::vec(any::<bool>(), 0..200),
            delays in proptest::collection::vec(0u64..20_000, 200),
        ) {
            let mut m = HealthMachine::new(&check(rise, fall, interval), true, 0, jitter);
            prop_assert!(m.due() < interval);
            let expected = model(rise, fall, &results);
            let mut now = 0;
            let mut was_up = true;
            for ((ok, want_up), delay) in results.iter().zip(expected).zip(&delays) {
                let due = m.due();
                now = now.max(due) + delay;
                let change = m.record(*ok, now);
                prop_assert_eq!(m.is_up(), want_up);
                let flipped = match change {
                    Some(Transition::WentUp) => !was_up && want_up,
                    Some(Transition::WentDown) => was_up && !want_up,
                    None => was_up == want_up,
                };
                prop_assert!(flipped);
                prop_assert!(m.due() >= now && m.due() >= due + interval);
                was_up = want_up;
            }
        }
    }

    fn payload_check(kind: ProbeKind, send: &[u8], expect: Option<&[u8]>) -> HealthCheck {
        HealthCheck {
            kind,
            send: Some(send.to_vec()),
            expect: expect.map(<[u8]>::to_vec),
            ..check(1, 1, 400)
        }
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    /// A TCP server on loopback that answers every connection with `reply` after reading
    /// whatever came first.
    fn tcp_server(reply: &'static [u8]) -> SocketAddr {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for stream in listener.incoming().take(4) {
                let Ok(mut stream) = stream else { return };
                let mut buf = [0u8; 64];
                let _ = stream.read(&mut buf);
                let _ = stream.write_all(reply);
            }
        });
        addr
    }

    #[test]
    fn tcp_send_expect_is_a_prefix_match() {
        let rt = runtime();
        let good = tcp_server(b"+PONG\r\n");
        let bad = tcp_server(b"-ERR unknown\r\n");
        let ping = payload_check(ProbeKind::Tcp, b"PING\r\n", Some(b"+PONG"));
        rt.block_on(async {
            assert!(probe(good, &ping).await.is_ok());
            let error = probe(bad, &ping).await.unwrap_err();
            assert!(matches!(error, ProbeError::Mismatch(_)), "{error}");
        });
    }

    fn http_check(timeout_ms: u64) -> HealthCheck {
        HealthCheck {
            kind: ProbeKind::Http,
            timeout: Duration::from_millis(timeout_ms),
            http: Some(HttpCheck {
                method: crate::config::HttpMethod::Get,
                path: "/health".into(),
                host: None,
                expect_status: crate::config::ExpectStatus(vec![
                    crate::config::DEFAULT_EXPECT_STATUS,
                ]),
                expect_body: Some("ok".into()),
                tls: None,
            }),
            ..check(1, 1, 400)
        }
    }

    /// Answers each connection with `reply` once the whole request head is in, then closes
    /// gently (a close with unread bytes would reset the connection and could lose the reply).
    fn http_server(reply: &'static [u8]) -> SocketAddr {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for stream in listener.incoming().take(4) {
                let Ok(mut stream) = stream else { return };
                let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
                let mut head = Vec::new();
                let mut buf = [0u8; 512];
                while !head.ends_with(b"\r\n\r\n") && head.len() < 4096 {
                    match stream.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = stream.write_all(reply);
            }
        });
        addr
    }

    #[test]
    fn http_probe_reads_the_answer_and_names_a_silent_server() {
        let rt = runtime();
        let good = http_server(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
        let sick = http_server(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n");
        let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let silent_addr = silent.local_addr().unwrap();
        rt.block_on(async {
            probe(good, &http_check(200)).await.unwrap();
            let error = probe(sick, &http_check(200)).await.unwrap_err();
            assert_eq!(error.to_string(), "status 503, expected 200-399");
            // The kernel accepts the connection; nobody ever answers.
            let error = probe(silent_addr, &http_check(100)).await.unwrap_err();
            assert_eq!(error.to_string(), "no complete response within 100ms");
        });
        drop(silent);
    }

    #[test]
    fn a_check_port_keeps_the_backend_ip() {
        let backend: SocketAddr = "10.0.0.7:5432".parse().unwrap();
        let mut c = check(1, 1, 100);
        assert_eq!(probe_addr(backend, &c), backend);
        c.port = Some(8008);
        assert_eq!(probe_addr(backend, &c), "10.0.0.7:8008".parse().unwrap());
        let v6: SocketAddr = "[fd00::3]:5432".parse().unwrap();
        assert_eq!(probe_addr(v6, &c), "[fd00::3]:8008".parse().unwrap());
    }

    #[test]
    fn a_check_address_keeps_the_backend_port_unless_a_port_is_given() {
        let backend: SocketAddr = "10.0.0.7:5432".parse().unwrap();
        let mut c = check(1, 1, 100);
        c.address = Some("10.9.9.9".parse().unwrap());
        assert_eq!(probe_addr(backend, &c), "10.9.9.9:5432".parse().unwrap());
        c.port = Some(9200);
        assert_eq!(probe_addr(backend, &c), "10.9.9.9:9200".parse().unwrap());
        c.address = Some("fd00::9".parse().unwrap());
        assert_eq!(probe_addr(backend, &c), "[fd00::9]:9200".parse().unwrap());
    }

    #[test]
    fn udp_probe_fails_on_port_unreachable() {
        let rt = runtime();
        let closed = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = closed.local_addr().unwrap();
        drop(closed);
        let ping = payload_check(ProbeKind::Udp, b"ping", None);
        let error = rt.block_on(probe(addr, &ping)).unwrap_err();
        assert!(matches!(error, ProbeError::Receive(_)), "{error}");
    }
}
