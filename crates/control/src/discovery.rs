//! DNS discovery: looks backend names up (A/AAAA, or SRV and then each target's addresses)
//! through hickory-resolver, and looks each one up again on its TTL in the background, on the
//! control runtime. What an answer does to a pool is decided in [`crate::membership`] (pure);
//! [`crate::server`] applies it to the running configuration and the data plane.
//!
//! Name servers: those of /etc/resolv.conf (with its search list, `ndots` and /etc/hosts, as
//! the system resolver would), or the `dns.resolvers` list. Every lookup goes to the servers:
//! the resolver's own cache is cleared for the name first, since Ballast schedules by TTL
//! itself and a cached answer would hide a change until it expired a second time.
//!
//! File descriptors: the resolver's UDP and TCP sockets to the name servers, opened per
//! query by hickory on the control runtime and closed with it; the engine holds none.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hickory_resolver::config::{NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::NetError;
use hickory_resolver::proto::rr::{RData, RecordType};
use hickory_resolver::TokioResolver;
use tokio::runtime::Handle;
use tokio::task::JoinHandle;

use crate::config::{Discover, Dns};
use crate::membership::{Outcome, Record};

#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    #[error("dns: cannot read the system's resolver configuration (/etc/resolv.conf): {0}; list `dns.resolvers`")]
    SystemConfig(NetError),
    #[error("dns: cannot start the resolver: {0}")]
    Build(NetError),
}

/// The resolver every name of the configuration is looked up through.
pub struct Resolver {
    inner: TokioResolver,
    timeout: Duration,
}

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resolver")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl Resolver {
    /// A resolver for `dns`. Call inside the control runtime's context (hickory spawns its
    /// connections on it).
    pub fn new(dns: &Dns) -> Result<Self, DiscoveryError> {
        let provider = TokioRuntimeProvider::default();
        let mut builder = if dns.resolvers.is_empty() {
            TokioResolver::builder(provider).map_err(DiscoveryError::SystemConfig)?
        } else {
            let servers = dns.resolvers.iter().map(|addr| {
                let mut server = NameServerConfig::udp_and_tcp(addr.ip());
                for connection in &mut server.connections {
                    connection.port = addr.port();
                }
                server
            });
            TokioResolver::builder_with_config(
                ResolverConfig::from_name_servers(servers.collect()),
                provider,
            )
        };
        let options = builder.options_mut();
        options.timeout = dns.timeout;
        options.attempts = 1;
        options.ip_strategy = hickory_resolver::config::LookupIpStrategy::Ipv4AndIpv6;
        let inner = builder.build().map_err(DiscoveryError::Build)?;
        Ok(Self {
            inner,
            timeout: dns.timeout,
        })
    }

    /// Looks `entry` up once, within the configured timeout (SRV targets included).
    pub async fn lookup(&self, entry: &Discover) -> Outcome {
        let lookup = async {
            match entry.port {
                Some(port) => self.addresses(&entry.name, port).await,
                None => self.srv(&entry.name).await,
            }
        };
        match tokio::time::timeout(self.timeout, lookup).await {
            Ok(Ok((records, ttl))) => Outcome::Found { records, ttl },
            Ok(Err(error)) if error.is_nx_domain() || error.is_no_records_found() => Outcome::Gone,
            Ok(Err(error)) => Outcome::Failed(error.to_string()),
            Err(_) => Outcome::Failed(format!("no answer within {:?}", self.timeout)),
        }
    }

    async fn addresses(&self, name: &str, port: u16) -> Result<(Vec<Record>, Duration), NetError> {
        self.inner.clear_lookup_cache(name, RecordType::A);
        self.inner.clear_lookup_cache(name, RecordType::AAAA);
        let found = self.inner.lookup_ip(name).await?;
        let ttl = found
            .valid_until()
            .saturating_duration_since(Instant::now());
        let records = found
            .iter()
            .map(|ip: IpAddr| Record {
                addr: SocketAddr::new(ip, port),
                priority: 0,
                weight: 1,
            })
            .collect();
        Ok((records, ttl))
    }

    async fn srv(&self, name: &str) -> Result<(Vec<Record>, Duration), NetError> {
        self.inner.clear_lookup_cache(name, RecordType::SRV);
        let found = self.inner.srv_lookup(name).await?;
        let mut ttl = found
            .valid_until()
            .saturating_duration_since(Instant::now());
        let mut records = Vec::new();
        let mut last_error = None;
        for answer in found.answers() {
            let RData::SRV(srv) = &answer.data else {
                continue;
            };
            // "." says the service is not offered at this name (RFC 2782).
            if srv.target.is_root() {
                continue;
            }
            match self.addresses(&srv.target.to_ascii(), srv.port).await {
                Ok((addresses, target_ttl)) => {
                    ttl = ttl.min(target_ttl);
                    records.extend(
                        addresses
                            .into_iter()
                            .map(|a| Record::srv(a.addr, srv.priority, srv.weight)),
                    );
                }
                Err(error) => last_error = Some(error),
            }
        }
        // Targets that all failed to resolve are a failed lookup, not a name that is gone.
        match last_error {
            Some(error) if records.is_empty() && !error.is_no_records_found() => Err(error),
            _ => Ok((records, ttl)),
        }
    }
}

/// Says what a lookup found and returns how long to wait before the next one.
pub type OnAnswer = Arc<dyn Fn(usize, Outcome) -> Duration + Send + Sync>;

/// One background task per name, each looking its name up again when the previous answer
/// says to. Dropping the engine, or [`DiscoveryEngine::stop`], ends them.
#[derive(Debug, Default)]
pub struct DiscoveryEngine {
    tasks: Vec<JoinHandle<()>>,
}

impl DiscoveryEngine {
    /// Starts a task for each of `names` (identified to `on_answer` by its index), whose first
    /// lookup comes after `first[i]`.
    pub fn start(
        runtime: &Handle,
        resolver: Arc<Resolver>,
        names: Vec<(Discover, Duration)>,
        on_answer: OnAnswer,
    ) -> Self {
        let tasks = names
            .into_iter()
            .enumerate()
            .map(|(index, (entry, first))| {
                let resolver = resolver.clone();
                let on_answer = on_answer.clone();
                runtime.spawn(async move {
                    let mut wait = first;
                    loop {
                        tokio::time::sleep(wait).await;
                        let outcome = resolver.lookup(&entry).await;
                        let on_answer = on_answer.clone();
                        // Applying an answer rebuilds routes (a Maglev table fill): off the
                        // runtime's one thread.
                        match tokio::task::spawn_blocking(move || on_answer(index, outcome)).await {
                            Ok(next) => wait = next,
                            Err(_) => return,
                        }
                    }
                })
            })
            .collect();
        Self { tasks }
    }

    pub fn stop(&mut self) {
        for task in self.tasks.drain(..) {
            task.abort();
        }
    }

    pub fn len(&self) -> usize {
        self.tasks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }
}

impl Drop for DiscoveryEngine {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Looks every one of `names` up at once on `runtime` and waits for the answers, from a
/// thread that is not one of the runtime's (start, reload). Each lookup is bounded by the
/// resolver's timeout; a lookup whose task was lost counts as failed.
pub fn lookup_all(runtime: &Handle, resolver: &Arc<Resolver>, names: &[Discover]) -> Vec<Outcome> {
    let (tx, rx) = std::sync::mpsc::channel();
    for (index, entry) in names.iter().enumerate() {
        let (tx, resolver, entry) = (tx.clone(), resolver.clone(), entry.clone());
        runtime.spawn(async move {
            let outcome = resolver.lookup(&entry).await;
            let _ = tx.send((index, outcome));
        });
    }
    drop(tx);
    let mut outcomes: Vec<Outcome> = names
        .iter()
        .map(|_| Outcome::Failed("the lookup did not finish".into()))
        .collect();
    // The resolver's timeout bounds every lookup; the margin covers scheduling.
    let deadline = Instant::now() + resolver.timeout + Duration::from_secs(1);
    while let Ok((index, outcome)) =
        rx.recv_timeout(deadline.saturating_duration_since(Instant::now()))
    {
        if let Some(slot) = outcomes.get_mut(index) {
            *slot = outcome;
        }
    }
    outcomes
}
