//! The control plane's side of the UDP offload (`fastpath: udp_offload`): whether it is on,
//! and the [`FlowOffload`] the workers of offloading listeners install their flows with.
//!
//! The program is loaded at start when the configuration asks for it (a listener with
//! `fastpath: udp_offload`, or a `fastpath.udp_offload` block). `mode: auto` serves through
//! the relay when it cannot load (the reason is logged, in `/api/v1/status` and in
//! `ballast_fastpath_enabled{kind="udp_offload"}`); `mode: required` refuses to start. Once
//! loaded, a reload turns it on or off per listener; a reload that asks for it for the first
//! time gets the relay until the next start (said in the status reason).
//!
//! File descriptors: the program, its TCX links and its maps belong to the [`UdpOffload`]
//! held here (shared with every route that offloads, so it lives while any worker can still
//! remove a flow from it); the links vanish with the process.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use ballast_dataplane::udp::offload::{FlowOffload, OffloadFlow};
use ballast_fastpath::udp::{Direction, FlowRoute, Traffic, UdpOffload};
use ballast_fastpath::FastpathError;
use serde::Serialize;

use crate::config::{Config, FastpathMode};

/// What `/api/v1/status` says of the UDP offload.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct UdpOffloadStatus {
    pub enabled: bool,
    /// Why it is off; `None` when it is on.
    pub reason: Option<String>,
    /// The interfaces the program is attached to, when on.
    pub interfaces: Vec<String>,
}

/// The kernel's flow table, as the workers see it.
#[derive(Debug)]
pub struct KernelFlows {
    offload: Mutex<UdpOffload>,
    /// Kernel counter index of each (pool, backend), stable for the process's life.
    counters: Mutex<HashMap<(Arc<str>, SocketAddr), u16>>,
}

impl KernelFlows {
    fn counter(&self, pool: &Arc<str>, backend: SocketAddr) -> u16 {
        let mut counters = self.counters.lock().unwrap_or_else(PoisonError::into_inner);
        let next = u16::try_from(counters.len()).unwrap_or(u16::MAX);
        *counters.entry((pool.clone(), backend)).or_insert(next)
    }

    fn route(&self, flow: &OffloadFlow) -> Option<FlowRoute> {
        let counter = self.counter(&flow.pool, flow.backend);
        FlowRoute::of(
            flow.client,
            flow.listener,
            flow.flow_local,
            flow.backend,
            counter,
        )
    }

    fn offload(&self) -> std::sync::MutexGuard<'_, UdpOffload> {
        self.offload.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// What the kernel forwarded for one backend, each way.
    fn traffic(&self, pool: &str, backend: SocketAddr) -> (Traffic, Traffic) {
        let counter = {
            let counters = self.counters.lock().unwrap_or_else(PoisonError::into_inner);
            counters
                .iter()
                .find(|((p, b), _)| &**p == pool && *b == backend)
                .map(|(_, c)| *c)
        };
        let Some(counter) = counter else {
            return (Traffic::default(), Traffic::default());
        };
        let offload = self.offload();
        (
            offload.backend_traffic(counter, Direction::ToBackend),
            offload.backend_traffic(counter, Direction::ToClient),
        )
    }
}

impl FlowOffload for KernelFlows {
    fn install(&self, flow: &OffloadFlow) -> bool {
        let Some(route) = self.route(flow) else {
            return false;
        };
        match self.offload().install(&route) {
            Ok(()) => true,
            Err(e) => {
                tracing::debug!(client = %flow.client, error = %e, "UDP flow stays on the relay");
                false
            }
        }
    }

    fn remove(&self, flow: &OffloadFlow) {
        if let Some(route) = self.route(flow) {
            self.offload().remove(&route);
        }
    }

    fn idle_for(&self, flow: &OffloadFlow) -> Option<Duration> {
        let route = self.route(flow)?;
        self.offload().idle_for(&route)
    }
}

#[derive(Debug)]
pub struct UdpFastpath {
    flows: Option<Arc<KernelFlows>>,
    off_reason: Option<String>,
}

impl UdpFastpath {
    /// Loads and attaches the program when the configuration asks for it. `Err` only under
    /// `mode: required`.
    pub fn start(config: &Config) -> Result<Self, FastpathError> {
        let Some(settings) = config.fastpath.udp_offload.as_ref() else {
            return Ok(Self {
                flows: None,
                off_reason: Some("not configured at start".into()),
            });
        };
        match UdpOffload::attach(settings.interfaces.as_deref()) {
            Ok(offload) => {
                tracing::info!(interfaces = ?offload.interfaces(), "UDP offload on");
                Ok(Self {
                    flows: Some(Arc::new(KernelFlows {
                        offload: Mutex::new(offload),
                        counters: Mutex::new(HashMap::new()),
                    })),
                    off_reason: None,
                })
            }
            Err(e) if settings.mode == FastpathMode::Required => Err(e),
            Err(e) => {
                tracing::warn!(error = %e, "UDP offload off (mode: auto): listeners with `fastpath: udp_offload` are served by the relay");
                Ok(Self {
                    flows: None,
                    off_reason: Some(e.to_string()),
                })
            }
        }
    }

    /// What the routes of offloading listeners hand their flows to, when on.
    pub fn handle(&self) -> Option<Arc<dyn FlowOffload>> {
        self.flows
            .clone()
            .map(|flows| flows as Arc<dyn FlowOffload>)
    }

    pub fn status(&self) -> UdpOffloadStatus {
        UdpOffloadStatus {
            enabled: self.flows.is_some(),
            reason: self.off_reason.clone(),
            interfaces: self
                .flows
                .as_ref()
                .map(|f| f.offload().interfaces().to_vec())
                .unwrap_or_default(),
        }
    }

    /// What the kernel forwarded for one backend: to it, and back from it.
    pub fn backend_traffic(&self, pool: &str, backend: SocketAddr) -> (Traffic, Traffic) {
        self.flows
            .as_ref()
            .map(|f| f.traffic(pool, backend))
            .unwrap_or_default()
    }
}
