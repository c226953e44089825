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
            Ok(limit) => tracing::info!(
                open_files = limit,
                "file descriptor limit; each TCP session uses 2, plus up to 4 for pipes while data is in flight"
            ),
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
