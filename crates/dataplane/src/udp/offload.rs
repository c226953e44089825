//! Handing established UDP flows to the kernel (`fastpath: udp_offload`). The data plane only
//! knows the [`FlowOffload`] trait: the control plane implements it over the BPF maps of
//! `ballast-fastpath` and hands it to the listeners that ask for it in their route.
//!
//! A flow is offloaded by the worker that owns it, once its flow socket exists: the worker
//! installs the flow's translations, and the [`Offloaded`] guard stored in the flow removes
//! them when the flow ends, whichever way it ends (expiry, eviction, a backend leaving, the
//! listener going), just as dropping the flow closes its socket. The kernel's datagrams are
//! counted by the kernel per backend; the worker asks it only how long a flow has been idle
//! before expiring it.

use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use crate::route::ListenerState;

/// One flow's addresses, as the kernel translates them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OffloadFlow {
    pub client: SocketAddr,
    /// The listener address the client sent to.
    pub listener: SocketAddr,
    /// The flow socket's own address.
    pub flow_local: SocketAddr,
    pub backend: SocketAddr,
    /// The backend's pool, which with `backend` names its counters.
    pub pool: Arc<str>,
}

/// The kernel side of flow offload.
pub trait FlowOffload: Send + Sync + fmt::Debug {
    /// Hands the flow's later datagrams to the kernel; false when it stays on the relay
    /// (an IPv6 flow, a map that refuses).
    fn install(&self, flow: &OffloadFlow) -> bool;
    /// Takes the flow back.
    fn remove(&self, flow: &OffloadFlow);
    /// How long ago the kernel forwarded a datagram of the flow, if it forwarded any.
    fn idle_for(&self, flow: &OffloadFlow) -> Option<Duration>;
}

/// An installed flow; removes its kernel entries when dropped.
pub struct Offloaded {
    engine: Arc<dyn FlowOffload>,
    flow: OffloadFlow,
    state: Arc<ListenerState>,
}

impl Offloaded {
    /// Installs `flow` with `engine`; `None` when it stays on the relay.
    pub fn install(
        engine: &Arc<dyn FlowOffload>,
        flow: OffloadFlow,
        state: &Arc<ListenerState>,
    ) -> Option<Self> {
        if !engine.install(&flow) {
            return None;
        }
        state.udp_flows_offloaded.fetch_add(1, Ordering::Relaxed);
        Some(Self {
            engine: engine.clone(),
            flow,
            state: state.clone(),
        })
    }

    pub fn idle_for(&self) -> Option<Duration> {
        self.engine.idle_for(&self.flow)
    }
}

impl Drop for Offloaded {
    fn drop(&mut self) {
        self.engine.remove(&self.flow);
        self.state
            .udp_flows_offloaded
            .fetch_sub(1, Ordering::Relaxed);
    }
}
