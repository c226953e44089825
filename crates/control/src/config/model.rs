//! The resolved configuration: stage three of the loader. Every value here has been validated
//! and defaulted; nothing downstream re-checks it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

pub use ballast_dataplane::balance::{Algorithm, HashKey, TimeMetric};
pub use ballast_dataplane::queue::QueueSettings;
pub use ballast_dataplane::route::{
    AccessLogLines, Keepalive, MaxLifetime, PassivePolicy, Protocol, ProxyVersion, TcpOptions,
};
pub use ipnet::IpNet;

/// Default `timeouts.connect` (HAProxy users set ~5s; nginx's 60s is too patient for L4).
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Default `timeouts.idle` (nginx's `proxy_timeout` default).
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(600);
/// Default `udp.idle_timeout` (DNS answers come within seconds; game sessions send often).
pub const DEFAULT_UDP_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Default `udp.max_flows`: each flow holds one socket.
pub const DEFAULT_UDP_MAX_FLOWS: u64 = 65_536;
/// Largest `udp.max_flows`.
pub const MAX_UDP_FLOWS: u64 = 10_000_000;
/// Largest `udp.responses`.
pub const MAX_UDP_RESPONSES: u32 = 10_000;
/// Most `udp.retries`: the data plane's limit.
pub use ballast_dataplane::udp::exchange::MAX_UDP_RETRIES;
/// Default `udp.reply_timeout`: below the 5 s a stub resolver waits before it asks again.
pub const DEFAULT_UDP_REPLY_TIMEOUT: Duration = Duration::from_secs(2);
/// Default `accept_proxy_protocol.timeout` and `tls_passthrough.peek_timeout` (HAProxy's
/// `timeout client`-style bound on a silent client before routing).
pub const DEFAULT_PREFACE_TIMEOUT: Duration = Duration::from_secs(5);
/// Default `queue.max`: sessions waiting for a slot, all workers together (HAProxy has no
/// bound by default; one keeps a flood from holding every descriptor).
pub const DEFAULT_QUEUE_MAX: usize = 1000;
/// Largest `queue.max`.
pub const MAX_QUEUE_MAX: u64 = 1_000_000;
/// Default `queue.timeout` (HAProxy's `timeout queue` defaults to `timeout connect`, which
/// Ballast's default is as well).
pub const DEFAULT_QUEUE_TIMEOUT: Duration = Duration::from_secs(5);
/// Defaults of a `keepalive` block's keys: a dead peer is found within 1m + 6 × 10s = 2 min,
/// where the kernel's own defaults (2 h + 9 × 75 s) take over two hours.
pub const DEFAULT_KEEPALIVE: Keepalive = Keepalive {
    idle: Duration::from_secs(60),
    interval: Duration::from_secs(10),
    count: 6,
};
/// Linux's bounds: TCP_KEEPIDLE and TCP_KEEPINTVL in whole seconds up to 32767, TCP_KEEPCNT
/// up to 127.
pub const MAX_KEEPALIVE_SECONDS: u64 = 32_767;
pub const MAX_KEEPALIVE_COUNT: u64 = 127;
/// Default `drain_timeout` on SIGTERM.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// Default `retries`: other backends tried after a failed connect.
pub const DEFAULT_RETRIES: u32 = 2;
/// Most `retries` a pool may ask for: the data plane's limit.
pub use ballast_dataplane::route::MAX_RETRIES;
/// Default passive health (nginx's `max_fails=1 fail_timeout=10s`).
pub const DEFAULT_PASSIVE: PassivePolicy = PassivePolicy {
    max_fails: 1,
    fail_timeout: Duration::from_secs(10),
};
/// Default Maglev table size (prime): the one the data plane's Maglev uses.
pub use ballast_dataplane::balance::DEFAULT_MAGLEV_TABLE_SIZE;
/// Largest backend weight (HAProxy's range).
pub const MAX_WEIGHT: u32 = 256;
/// Default `admin.listen`: loopback, so the API is not exposed unless asked for.
pub const DEFAULT_ADMIN_LISTEN: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 9190);
/// Default health check timing (HAProxy's `rise 2 fall 3`; a slower interval suits L4 pools).
pub const DEFAULT_HEALTH_INTERVAL: Duration = Duration::from_secs(5);
pub const DEFAULT_HEALTH_TIMEOUT: Duration = Duration::from_secs(2);
pub const DEFAULT_RISE: u32 = 2;
pub const DEFAULT_FALL: u32 = 3;
/// Most `rise`/`fall`: beyond this a backend's state would lag reality by minutes.
pub const MAX_RISE_FALL: u32 = 100;
/// Longest probe payload or expected reply; a health check is a ping, not a transfer.
pub const MAX_PROBE_BYTES: usize = 4096;
/// Default `expect_status` of an http check: any success or redirect, as HAProxy's
/// `option httpchk` without `http-check expect`.
pub const DEFAULT_EXPECT_STATUS: StatusRange = StatusRange {
    low: 200,
    high: 399,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workers {
    /// One per available core.
    Auto,
    Count(usize),
}

impl Workers {
    pub fn resolve(self) -> usize {
        match self {
            Workers::Count(n) => n,
            Workers::Auto => std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// `None` when the file has no `admin:` block: no admin HTTP server runs.
    pub admin: Option<Admin>,
    pub workers: Workers,
    pub drain_timeout: Duration,
    /// On SIGTERM, how long Ballast says it is not ready (`/readyz` 503, so a BGP announcer,
    /// a load balancer in front or Kubernetes stops sending) while it still accepts, before
    /// the drain (HAProxy's `grace`). Zero: drain at once.
    pub grace: Duration,
    pub listeners: Vec<Listener>,
    pub pools: Vec<Pool>,
    /// The kernel fast path (issue 14).
    pub fastpath: Fastpath,
    /// How backend names with `resolve:` (and SRV names) are looked up again.
    pub dns: Dns,
    /// Where admin states (drain, disable) and runtime changes (weights, backends added or
    /// removed through the API) are saved, and read back at start (HAProxy's
    /// `server-state-file`).
    pub state_file: Option<PathBuf>,
    /// Which access-log lines sessions write, and where to.
    pub access_log: AccessLog,
}

/// `access_log:`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AccessLog {
    /// The lines besides the one at each close; a reload changes them.
    pub lines: AccessLogLines,
    /// Where the lines go; taken at start (a reload that changes it warns).
    pub output: AccessLogOutput,
}

/// Where access lines go: a file, syslog, or both; neither: with the other log lines, on
/// stderr.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AccessLogOutput {
    /// Appended to this file, reopened on SIGUSR1 (logrotate).
    pub file: Option<PathBuf>,
    pub syslog: Option<Syslog>,
}

impl AccessLogOutput {
    pub fn is_stderr(&self) -> bool {
        self.file.is_none() && self.syslog.is_none()
    }
}

/// RFC 5424 messages to a syslog daemon or collector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Syslog {
    pub address: SyslogAddress,
    /// 0–23 (`kern` to `local7`).
    pub facility: u8,
    /// APP-NAME: 1–48 printable ASCII characters, no spaces.
    pub tag: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyslogAddress {
    /// A Unix datagram socket, such as `/dev/log`.
    Unix(PathBuf),
    /// UDP to a collector (RFC 5426): one message per datagram.
    Udp(SocketAddr),
}

impl Config {
    pub fn pool(&self, name: &str) -> Option<&Pool> {
        self.pools.iter().find(|p| p.name == name)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Listener {
    pub name: String,
    pub protocol: Protocol,
    /// One or more addresses; port 0 asks the kernel for a free port (tests use it).
    pub listen: Vec<SocketAddr>,
    /// Name of a pool that exists in `Config::pools`.
    pub pool: String,
    /// TCP only (validation refuses it on UDP listeners).
    pub max_connections: Option<u64>,
    /// TCP only.
    pub connect_timeout: Duration,
    /// TCP only.
    pub idle_timeout: Duration,
    /// `Some` exactly for UDP listeners.
    pub udp: Option<UdpOptions>,
    /// Who may connect, PROXY headers from upstream, SNI routing, per-source limits.
    pub access: ListenerAccess,
    /// Let another process share the address through SO_REUSEPORT (no lock, no probe).
    pub shared_port: bool,
    /// `fastpath: socket`: clients in the steered cgroup that connect to one of `listen` are
    /// sent to a backend by the kernel, inside their `connect()`/`sendmsg()`.
    pub fastpath: ListenerFastpath,
    /// TCP only: `keepalive` and `user_timeout` of each client connection.
    pub client_tcp: TcpOptions,
    /// TCP only: `timeouts.max_lifetime` and its jitter; `None`: sessions live on.
    pub max_lifetime: Option<MaxLifetime>,
}

/// `fastpath:` (top level). Default: nothing configured.
///
/// After validation, `socket_lb` is `Some` when the file has a `fastpath.socket_lb` block or
/// when any listener has `fastpath: socket` (then with the defaults: `mode: auto`, the
/// cgroup2 root); it is `None` only when nothing asks for the socket fast path.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Fastpath {
    pub socket_lb: Option<SocketLb>,
    /// `Some` when the file has a `fastpath.udp_offload` block or any listener has
    /// `fastpath: udp_offload` (then with the defaults).
    pub udp_offload: Option<UdpOffload>,
}

/// `fastpath.udp_offload`: established UDP flows forwarded in the kernel (tc, TCX).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct UdpOffload {
    /// Interfaces the program is attached to; `None`: every interface but loopback, as the
    /// namespace has them when Ballast starts.
    pub interfaces: Option<Vec<String>>,
    pub mode: FastpathMode,
}

/// `fastpath.socket_lb`: socket-level load balancing with eBPF cgroup hooks.
#[derive(Debug, Clone, PartialEq)]
pub struct SocketLb {
    /// cgroup v2 directory whose processes are steered; None = the cgroup2 mount's root
    /// (found at run time from /proc/self/mountinfo, not at validation). Always absolute;
    /// whether it exists is checked at run time.
    pub cgroup: Option<std::path::PathBuf>,
    pub mode: FastpathMode,
}

/// `fastpath.socket_lb.mode`: what happens when the hooks cannot be loaded or attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FastpathMode {
    /// Warn and serve every listener through the relay.
    #[default]
    Auto,
    /// Refuse to start.
    Required,
}

/// `listeners[].fastpath`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ListenerFastpath {
    /// Every connection goes through Ballast's relay.
    #[default]
    None,
    /// Connects to the listener's addresses are steered to a backend by the socket fast path
    /// (`fastpath.socket_lb`), TCP and UDP (connected and unconnected).
    Socket,
    /// UDP only: a flow's later datagrams are forwarded in the kernel (`fastpath.udp_offload`).
    UdpOffload,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct ListenerAccess {
    /// Empty: everyone (unless denied).
    pub allow: Vec<IpNet>,
    /// Wins over `allow`.
    pub deny: Vec<IpNet>,
    pub accept_proxy: Option<AcceptProxyConfig>,
    pub tls: Option<TlsPassthrough>,
    /// TCP only.
    pub max_connections_per_source: Option<u32>,
    /// TCP only.
    pub new_connections_per_second_per_source: Option<u32>,
}

impl ListenerAccess {
    /// The pool a TLS listener names as its own: the default pool, else its first route's.
    pub fn tls_fallback_pool(&self) -> Option<String> {
        let tls = self.tls.as_ref()?;
        tls.default_pool
            .clone()
            .or_else(|| tls.routes.first().map(|r| r.pool.clone()))
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct AcceptProxyConfig {
    /// Sources allowed to send a PROXY header; every other source is closed.
    pub trusted: Vec<IpNet>,
    /// How long the header may take to arrive.
    pub timeout: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TlsPassthrough {
    pub routes: Vec<SniRouteConfig>,
    /// No SNI or no match; `None` closes such connections.
    pub default_pool: Option<String>,
    /// How long a client may take to send its ClientHello.
    pub peek_timeout: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SniRouteConfig {
    /// `api.example.com` or `*.example.com`, lower-case.
    pub sni: String,
    pub pool: String,
    /// Route only when the client offers one of these ALPN protocols (empty: always).
    pub alpn: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UdpOptions {
    /// A flow with no datagram either way for this long ends.
    pub idle_timeout: Duration,
    /// Most flows the listener keeps; the least recently used is evicted beyond it.
    pub max_flows: u64,
    /// `udp.responses` (nginx `proxy_responses` with `proxy_requests 1`): each client
    /// datagram is an exchange of its own, balanced on its own, that ends after this many
    /// replies. `None`: a flow per client address, ended by `idle_timeout`.
    pub responses: Option<u32>,
    /// With `responses`: how long an exchange waits for its first (or next) reply.
    pub reply_timeout: Duration,
    /// With `responses`: how many times a datagram that got no reply at all is sent again,
    /// each time to a backend it has not been sent to.
    pub retries: u32,
    /// `udp.per_datagram` (Envoy `use_per_packet_load_balancing`), for senders that expect
    /// no reply: each datagram balanced on its own, sent from a socket the worker shares.
    pub per_datagram: bool,
    /// New flows per second per client IP (with `responses` or `per_datagram`, where each
    /// datagram is balanced on its own: datagrams per second per client IP).
    pub new_flows_per_second_per_source: Option<u32>,
    /// Datagrams per second from the client of one flow (flows per client address only).
    pub datagrams_per_second_per_flow: Option<u32>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Pool {
    pub name: String,
    /// Includes the algorithm's options (`hash_key`, `table_size`, `time_metric`).
    pub algorithm: Algorithm,
    pub retries: u32,
    /// `None` when `passive: { max_fails: 0 }` turns passive health off.
    pub passive: Option<PassivePolicy>,
    /// Active probes; `None` leaves the backends to passive health alone.
    pub health_check: Option<HealthCheck>,
    pub on_backend_down: OnBackendDown,
    /// How long a backend that comes back ramps up to its full weight; `None`: at once.
    pub slow_start: Option<Duration>,
    /// The backends with a fixed address (an IP, or a name without `resolve:`, looked up
    /// once at load). In the configuration the control plane runs, these are followed by
    /// what [`Pool::discover`] names resolve to now; a pool whose backends are all names may
    /// have none for a while.
    pub backends: Vec<Backend>,
    /// Backend entries that are names, re-resolved in the background (DNS discovery).
    pub discover: Vec<Discover>,
    /// PROXY protocol header to each backend connection (v2 also per UDP datagram).
    pub send_proxy: Option<ProxyVersion>,
    /// TCP sessions wait for a slot when every usable backend is at `max_connections`;
    /// `None`: they are refused.
    pub queue: Option<QueueSettings>,
    /// `keepalive` and `user_timeout` of each backend connection (TCP).
    pub backend_tcp: TcpOptions,
}

impl Pool {
    /// `slow_start` in ms, 0 when off, as the data plane's `PoolView` carries it.
    pub fn slow_start_ms(&self) -> u64 {
        self.slow_start
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Backend {
    pub address: SocketAddr,
    /// 1..=MAX_WEIGHT.
    pub weight: u32,
    pub backup: bool,
    pub max_connections: Option<u64>,
}

/// How many backends one name gives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolve {
    /// One: the first address (IPv4 first), or the SRV record of lowest priority and
    /// highest weight.
    First,
    /// One per A/AAAA record (or per SRV target address), up to [`Discover::max`].
    EveryRecord,
}

impl Resolve {
    pub fn as_str(self) -> &'static str {
        match self {
            Resolve::First => "first",
            Resolve::EveryRecord => "every_record",
        }
    }
}

/// A backend entry that is a name to look up again on its TTL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Discover {
    /// The name as written, without a port: `app.internal`, or `_redis._tcp.example` (SRV).
    pub name: String,
    /// The port of an A/AAAA name; `None` for an SRV name, whose records carry the ports.
    pub port: Option<u16>,
    pub resolve: Resolve,
    /// Most backends this name gives (1 for `resolve: first`).
    pub max: usize,
    /// The weight of each backend (an SRV name's come from its records).
    pub weight: u32,
    pub backup: bool,
    pub max_connections: Option<u64>,
}

impl Discover {
    /// True for an SRV name (`_service._proto.domain`, no port).
    pub fn is_srv(&self) -> bool {
        self.port.is_none()
    }

    /// `name:port`, or the SRV name: how the status API and metrics call it.
    pub fn label(&self) -> String {
        match self.port {
            Some(port) => format!("{}:{port}", self.name),
            None => self.name.clone(),
        }
    }
}

/// Default `max` of a `resolve: every_record` or SRV name.
pub const DEFAULT_DISCOVER_MAX: usize = 32;
/// Largest `max`.
pub const MAX_DISCOVER_MAX: u64 = 1024;

/// `dns:`: where and how often backend names are looked up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dns {
    /// Name servers asked, in order; empty: those of /etc/resolv.conf.
    pub resolvers: Vec<SocketAddr>,
    /// How long one lookup (with its SRV targets) may take before it counts as failed.
    pub timeout: Duration,
    /// A name is looked up again after its TTL, but never sooner than this...
    pub interval_min: Duration,
    /// ...nor later than this.
    pub interval_max: Duration,
    /// How long a name that stopped existing (NXDOMAIN, or no record) keeps its last
    /// addresses before its backends are removed.
    pub hold: Duration,
}

pub const DEFAULT_DNS_TIMEOUT: Duration = Duration::from_secs(2);
pub const DEFAULT_RESOLVE_INTERVAL_MIN: Duration = Duration::from_secs(1);
pub const DEFAULT_RESOLVE_INTERVAL_MAX: Duration = Duration::from_secs(300);
pub const DEFAULT_DNS_HOLD: Duration = Duration::from_secs(30);

impl Default for Dns {
    fn default() -> Self {
        Self {
            resolvers: Vec::new(),
            timeout: DEFAULT_DNS_TIMEOUT,
            interval_min: DEFAULT_RESOLVE_INTERVAL_MIN,
            interval_max: DEFAULT_RESOLVE_INTERVAL_MAX,
            hold: DEFAULT_DNS_HOLD,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admin {
    pub listen: SocketAddr,
    /// File holding the bearer token that mutating API calls must present; read at start and
    /// on every reload, so the token can be rotated without a restart.
    pub token_file: Option<PathBuf>,
    /// Host names (lower case, no port) accepted in `Host` and `Origin` besides IP addresses
    /// and `localhost`: a name not listed is what a DNS-rebinding page sends.
    pub allowed_hosts: Vec<String>,
    /// Admin connections served at once; more are closed on accept, so the admin side never
    /// holds more than this many descriptors.
    pub max_connections: usize,
    /// How long a client has to send a whole request head, counted from when the server
    /// starts waiting for one (on accept, and after each response on a kept-alive connection).
    pub header_timeout: Duration,
    /// A connection on which no byte is read or written for this long is closed.
    pub idle_timeout: Duration,
}

/// Default `admin.max_connections`: a dashboard, a scraper and a few operators' scripts fit
/// many times over, and it stays far below any open-file limit the data plane lives with.
pub const DEFAULT_ADMIN_MAX_CONNECTIONS: usize = 64;
/// Default `admin.header_timeout`.
pub const DEFAULT_ADMIN_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Default `admin.idle_timeout`.
pub const DEFAULT_ADMIN_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

impl Admin {
    /// An admin server on `listen` with every other setting at its default.
    pub fn new(listen: SocketAddr) -> Self {
        Self {
            listen,
            token_file: None,
            allowed_hosts: Vec::new(),
            max_connections: DEFAULT_ADMIN_MAX_CONNECTIONS,
            header_timeout: DEFAULT_ADMIN_HEADER_TIMEOUT,
            idle_timeout: DEFAULT_ADMIN_IDLE_TIMEOUT,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeKind {
    Tcp,
    Udp,
    /// An HTTP/1.1 request; its details are in [`HealthCheck::http`].
    Http,
    /// Redis `ROLE` (after an optional `AUTH`); its details are in [`HealthCheck::redis`].
    Redis,
    /// PostgreSQL login, then `pg_is_in_recovery()`; its details are in
    /// [`HealthCheck::postgres`].
    Postgres,
    /// MySQL or MariaDB login, then `@@global.read_only`; its details are in
    /// [`HealthCheck::mysql`].
    Mysql,
}

impl ProbeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ProbeKind::Tcp => "tcp",
            ProbeKind::Udp => "udp",
            ProbeKind::Http => "http",
            ProbeKind::Redis => "redis",
            ProbeKind::Postgres => "postgres",
            ProbeKind::Mysql => "mysql",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpMethod {
    Get,
    /// No body is read, so `expect_body` does not apply.
    Head,
}

impl HttpMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            HttpMethod::Get => "GET",
            HttpMethod::Head => "HEAD",
        }
    }
}

/// Status codes `low..=high`, each within 100..=599; one code is a range of one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatusRange {
    pub low: u16,
    pub high: u16,
}

impl StatusRange {
    pub fn contains(self, code: u16) -> bool {
        (self.low..=self.high).contains(&code)
    }
}

impl std::fmt::Display for StatusRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.low == self.high {
            write!(f, "{}", self.low)
        } else {
            write!(f, "{}-{}", self.low, self.high)
        }
    }
}

/// The status codes an http check accepts: any of these ranges (never empty).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpectStatus(pub Vec<StatusRange>);

impl ExpectStatus {
    pub fn matches(&self, code: u16) -> bool {
        self.0.iter().any(|range| range.contains(code))
    }
}

impl std::fmt::Display for ExpectStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, range) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{range}")?;
        }
        Ok(())
    }
}

/// What a `kind: http` check asks and what answer passes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpCheck {
    pub method: HttpMethod,
    /// Starts with `/`; no whitespace or control characters.
    pub path: String,
    /// The `Host` header; `None`: the probed address (`ip:port`).
    pub host: Option<String>,
    pub expect_status: ExpectStatus,
    /// The body (GET only) must contain these bytes within the first bytes the probe reads.
    pub expect_body: Option<String>,
    /// `tls: true`: the request goes inside a TLS session (the certificate is not verified).
    pub tls: Option<TlsCheck>,
}

/// The TLS of an http check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsCheck {
    /// The server name sent in the ClientHello; `None`: no SNI.
    pub sni: Option<String>,
}

/// The role a `kind: redis` check wants, compared with the first element of `ROLE`'s reply.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum RedisRole {
    /// `master`.
    Master,
    /// `slave` (what `ROLE` calls a replica).
    Replica,
    /// Either; the check passes on any `ROLE` reply.
    #[default]
    Any,
}

impl RedisRole {
    pub fn as_str(self) -> &'static str {
        match self {
            RedisRole::Master => "master",
            RedisRole::Replica => "replica",
            RedisRole::Any => "any",
        }
    }
}

/// A password read from a `password_file`: its `Debug` never shows it, so neither a log line
/// nor a panic message can.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(text: String) -> Self {
        Secret(text)
    }

    /// The password itself, for the wire only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// What a `kind: redis` check asks and what answer passes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisCheck {
    pub role: RedisRole,
    /// `AUTH` with this before `ROLE`; the first line of `password_file`, read at load time.
    pub password: Option<Secret>,
}

/// The role a `kind: postgres` check wants, from `pg_is_in_recovery()`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum PostgresRole {
    /// Not in recovery: accepts writes.
    Primary,
    /// In recovery: a standby (streaming or from an archive).
    Replica,
    /// Either; the check passes on any answer once logged in.
    #[default]
    Any,
}

impl PostgresRole {
    pub fn as_str(self) -> &'static str {
        match self {
            PostgresRole::Primary => "primary",
            PostgresRole::Replica => "replica",
            PostgresRole::Any => "any",
        }
    }
}

/// What a `kind: postgres` check logs in as and what answer passes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostgresCheck {
    pub user: String,
    /// From `password_file`; `None` for a server that trusts the probe's address.
    pub password: Option<Secret>,
    /// `None`: the server's default, a database named as the user.
    pub database: Option<String>,
    pub role: PostgresRole,
}

/// The role a `kind: mysql` check wants, from `@@global.read_only`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum MysqlRole {
    /// `read_only = 0`: accepts writes (a primary, or a Galera node that is synced).
    Writable,
    /// `read_only = 1`: a replica, or a primary fenced off during a switchover.
    ReadOnly,
    /// Either; the check passes on any answer once logged in.
    #[default]
    Any,
}

impl MysqlRole {
    pub fn as_str(self) -> &'static str {
        match self {
            MysqlRole::Writable => "writable",
            MysqlRole::ReadOnly => "read_only",
            MysqlRole::Any => "any",
        }
    }
}

/// What a `kind: mysql` check logs in as and what answer passes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MysqlCheck {
    pub user: String,
    /// From `password_file`; `None` for an account without a password.
    pub password: Option<Secret>,
    pub role: MysqlRole,
}

/// HAProxy's agent check beside a pool's regular check: a line from an agent on a side port
/// (`up`, `down`, `drain`, `maint`, `ready`, `75%`) that drains, disables or reweighs the
/// backend it runs beside.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentCheck {
    /// The agent's port, at the backend's IP (or `address`).
    pub port: u16,
    pub address: Option<std::net::IpAddr>,
    /// Defaults to the regular check's interval (HAProxy's `agent-inter`).
    pub interval: Duration,
    /// At most `interval`.
    pub timeout: Duration,
    /// Written after connecting (HAProxy's `agent-send`), e.g. the backend's name.
    pub send: Option<Vec<u8>>,
}

/// An active health check, probing every backend of a pool at its own address (or at the
/// check's `address` and `port`, where given).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    pub kind: ProbeKind,
    pub interval: Duration,
    /// At most `interval`.
    pub timeout: Duration,
    /// Consecutive successes that bring a down backend up; at least 1.
    pub rise: u32,
    /// Consecutive failures that take an up backend down; at least 1.
    pub fall: u32,
    /// Bytes written after connecting (TCP) or sent as the datagram (UDP; always set there).
    pub send: Option<Vec<u8>>,
    /// The reply must start with these bytes. `None`: for TCP, connecting (and sending) is
    /// enough; for UDP, any reply is.
    pub expect: Option<Vec<u8>>,
    /// Probe this port at the backend's IP instead of the backend's own port (a side port,
    /// such as Patroni's 8008 beside PostgreSQL's 5432).
    pub port: Option<u16>,
    /// Probe this IP instead of each backend's own (a management address, or a health
    /// sidecar that answers for the backend), at `port` or the backend's port.
    pub address: Option<std::net::IpAddr>,
    /// Set exactly when `kind` is [`ProbeKind::Http`].
    pub http: Option<HttpCheck>,
    /// Set exactly when `kind` is [`ProbeKind::Redis`].
    pub redis: Option<RedisCheck>,
    /// Set exactly when `kind` is [`ProbeKind::Postgres`].
    pub postgres: Option<PostgresCheck>,
    /// Set exactly when `kind` is [`ProbeKind::Mysql`].
    pub mysql: Option<MysqlCheck>,
    /// An agent asked beside this check, on its own schedule.
    pub agent: Option<AgentCheck>,
    /// The PROXY header each probe starts with (HAProxy's `check-send-proxy`): the pool's
    /// `send_proxy_protocol` version unless `send_proxy: false`. v2 is a LOCAL header, v1
    /// `PROXY UNKNOWN`: a probe speaks for no client. UDP probes carry v2 only.
    pub proxy: Option<ProxyVersion>,
}

/// What happens to established sessions when active health checks take a backend down.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum OnBackendDown {
    /// They run on until they end (nginx's and HAProxy's default).
    #[default]
    Keep,
    /// They are closed at once, so clients reconnect to a live backend.
    Close,
}
