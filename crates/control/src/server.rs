//! A running Ballast: the data plane started from a resolved configuration.
//!
//! `ballast run` and `ballast demo` both start through [`Server::start`]; the binary only
//! wires signals to [`Server::drain`]. The data plane's workers own every socket; this module
//! owns none.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ballast_dataplane::{
    sys, Command, Dataplane, DataplaneConfig, DataplaneError, DataplaneHandle, ListenerSpec,
};

use crate::config::Config;
use crate::routes::{build_routes, StateRegistry};

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Dataplane(#[from] DataplaneError),
}

#[derive(Debug, Clone, Default)]
pub struct StartOptions {
    /// Relay with a user-space copy instead of splice.
    pub force_copy: bool,
}

pub struct Server {
    config: Config,
    registry: StateRegistry,
    dataplane: DataplaneHandle,
}

impl Server {
    pub fn start(config: Config, options: StartOptions) -> Result<Self, ServerError> {
        match sys::raise_nofile_limit() {
            Ok(limit) => {
                tracing::info!(
                    open_files = limit,
                    "file descriptor limit; each TCP session uses 2, plus up to 4 for pipes while data is in flight"
                );
                log_udp_capacity(&config, limit);
            }
            Err(e) => tracing::warn!(error = %e, "cannot raise the open-file limit"),
        }
        let mut registry = StateRegistry::default();
        let routes = build_routes(&config, &mut registry);
        let listeners = config
            .listeners
            .iter()
            .map(|l| ListenerSpec {
                name: l.name.as_str().into(),
                protocol: l.protocol,
                addrs: l.listen.clone(),
            })
            .collect();
        let workers = config.workers.resolve();
        let dataplane = Dataplane::start(
            DataplaneConfig {
                workers,
                listeners,
                force_copy: options.force_copy,
            },
            Arc::new(routes),
        )?;
        tracing::info!(workers, "data plane started");
        Ok(Self {
            config,
            registry,
            dataplane,
        })
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn registry(&self) -> &StateRegistry {
        &self.registry
    }

    /// Every listener's bound address (port 0 resolved).
    pub fn bound(&self) -> Vec<(Arc<str>, SocketAddr)> {
        self.dataplane.bound().to_vec()
    }

    pub fn dataplane(&self) -> &DataplaneHandle {
        &self.dataplane
    }

    /// Stops accepting and starts letting sessions finish.
    pub fn begin_drain(&self) {
        self.dataplane.command(Command::Drain);
    }

    /// Waits up to `timeout` for draining workers to exit; true when they all did.
    pub fn wait(&mut self, timeout: Duration) -> bool {
        self.dataplane.wait(timeout)
    }

    /// Closes every session now and waits briefly for the workers.
    pub fn shutdown(&mut self) -> bool {
        self.dataplane.command(Command::Shutdown);
        self.dataplane.wait(Duration::from_secs(5))
    }

    /// Stop accepting, let sessions finish for up to the configured `drain_timeout`, then close
    /// what is left. Returns true when every session finished on its own.
    pub fn drain(&mut self) -> bool {
        self.begin_drain();
        let deadline = Instant::now() + self.config.drain_timeout;
        let finished = self.wait(deadline.saturating_duration_since(Instant::now()));
        if !finished {
            self.shutdown();
        }
        finished
    }
}

/// Each UDP flow holds one socket: say how many flows the descriptor limit leaves room for,
/// so an operator sees at start-up when `max_flows` cannot be reached.
fn log_udp_capacity(config: &Config, open_files: u64) {
    let udp: Vec<_> = config
        .listeners
        .iter()
        .filter_map(|l| Some((l, l.udp?)))
        .collect();
    if udp.is_empty() {
        return;
    }
    // Listening sockets, epoll, wakers, logs: a generous reserve before flows.
    let reserve = 64 + 4 * config.listeners.len() as u64 * config.workers.resolve() as u64;
    let room = open_files.saturating_sub(reserve);
    let wanted: u64 = udp.iter().map(|(_, u)| u.max_flows).sum();
    for (listener, options) in &udp {
        tracing::info!(
            listener = %listener.name,
            max_flows = options.max_flows,
            idle_timeout = ?options.idle_timeout,
            "UDP flow table"
        );
    }
    if wanted > room {
        tracing::warn!(
            max_flows = wanted,
            fit = room,
            "the UDP listeners' max_flows exceed what the open-file limit leaves room for; flows beyond it are dropped (raise LimitNOFILE)"
        );
    } else {
        tracing::info!(
            max_flows = wanted,
            fit = room,
            "every UDP flow fits in the open-file limit"
        );
    }
}
