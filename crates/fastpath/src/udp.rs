//! The kernel fast path, part 2: established UDP flows forwarded in the kernel.
//!
//! User space decides once per flow, as the relay always has (admission, the pick, a connected
//! flow socket); then [`UdpOffload::install`] writes the flow's two translations into the
//! `udp_flows` map of `bpf/udp_offload.c`, a tc program attached (TCX) to the interfaces the
//! flows cross, and later datagrams are rewritten and redirected in the kernel. Everything the
//! program leaves alone reaches the relay, which still holds the flow: nothing is lost when an
//! entry is missing, evicted or not yet complete.
//!
//! Rules: IPv4 only (an IPv6 flow stays on the relay); the flow's life stays user space's:
//! the worker that owns the flow removes its entries when the flow ends and asks
//! [`UdpOffload::idle_for`] before expiring it. Records are byte arrays encoded field by field
//! (no `unsafe`).
//!
//! File descriptors: the program, its TCX links and the maps belong to the [`UdpOffload`]
//! value; TCX links vanish when it is dropped or the process dies, even by SIGKILL, and the
//! flows' datagrams then reach the flow sockets again, which nobody reads once the process is
//! gone, exactly as without the offload.

use std::net::{SocketAddr, SocketAddrV4};
use std::path::Path;
use std::time::Duration;

use aya::maps::{HashMap, MapData, PerCpuArray};
use aya::programs::tc::{SchedClassifier, TcAttachOptions, TcAttachType};
use aya::programs::LinkOrder;
use aya::Ebpf;

use crate::{chain, map_error, FastpathError};

/// The compiled program (see `bpf/build.sh`).
static OBJECT: &[u8] = aya::include_bytes_aligned!("../bpf/udp_offload.o");

const PROGRAM: &str = "ballast_udp_offload";

/// `struct flow_key`: source, destination, source port, destination port.
type FlowKey = [u8; 12];
/// `struct flow_value`.
type FlowValue = [u8; 48];

/// Which way a datagram goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    ToBackend = 0,
    ToClient = 1,
}

/// One flow's addresses: what the client sends to, what the relay's flow socket uses, and
/// the backend's counter in the kernel's traffic table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FlowRoute {
    pub client: SocketAddrV4,
    /// The listener address the client sent to.
    pub listener: SocketAddrV4,
    /// The flow socket's own address (its source toward the backend).
    pub flow_local: SocketAddrV4,
    pub backend: SocketAddrV4,
    pub counter: u16,
}

impl FlowRoute {
    /// The route of a flow whose four addresses are all IPv4; `None` otherwise.
    pub fn of(
        client: SocketAddr,
        listener: SocketAddr,
        flow_local: SocketAddr,
        backend: SocketAddr,
        counter: u16,
    ) -> Option<Self> {
        let v4 = |a: SocketAddr| match a {
            SocketAddr::V4(a) => Some(a),
            SocketAddr::V6(a) => {
                let ip = a.ip().to_ipv4_mapped()?;
                Some(SocketAddrV4::new(ip, a.port()))
            }
        };
        Some(Self {
            client: v4(client)?,
            listener: v4(listener)?,
            flow_local: v4(flow_local)?,
            backend: v4(backend)?,
            counter,
        })
    }

    /// The two map entries: (key, value) client → backend, then backend → client.
    fn entries(&self) -> [(FlowKey, FlowValue); 2] {
        [
            (
                key(self.client, self.listener),
                value(
                    self.flow_local,
                    self.backend,
                    self.counter,
                    Direction::ToBackend,
                ),
            ),
            (
                key(self.backend, self.flow_local),
                value(
                    self.listener,
                    self.client,
                    self.counter,
                    Direction::ToClient,
                ),
            ),
        ]
    }
}

fn key(src: SocketAddrV4, dst: SocketAddrV4) -> FlowKey {
    let mut k = [0u8; 12];
    k[..4].copy_from_slice(&src.ip().octets());
    k[4..8].copy_from_slice(&dst.ip().octets());
    k[8..10].copy_from_slice(&src.port().to_be_bytes());
    k[10..].copy_from_slice(&dst.port().to_be_bytes());
    k
}

fn value(src: SocketAddrV4, dst: SocketAddrV4, counter: u16, direction: Direction) -> FlowValue {
    let mut v = [0u8; 48];
    v[..12].copy_from_slice(&key(src, dst));
    v[12..16].copy_from_slice(&u32::from(counter).to_ne_bytes());
    v[16..20].copy_from_slice(&(direction as u32).to_ne_bytes());
    // out_ifindex, last_seen, datagrams and bytes start at zero.
    v
}

fn u64_at(v: &FlowValue, at: usize) -> u64 {
    let mut b = [0u8; 8];
    if let Some(bytes) = v.get(at..at + 8) {
        b.copy_from_slice(bytes);
    }
    u64::from_ne_bytes(b)
}

/// Datagrams and payload bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Traffic {
    pub datagrams: u64,
    pub bytes: u64,
}

/// The UDP offload program, attached to some interfaces. Dropping it detaches everything.
pub struct UdpOffload {
    flows: HashMap<MapData, FlowKey, FlowValue>,
    backend_traffic: PerCpuArray<MapData, [u8; 16]>,
    interfaces: Vec<String>,
    /// Last: the program and its links go after the maps it uses.
    _ebpf: Ebpf,
}

impl std::fmt::Debug for UdpOffload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UdpOffload")
            .field("interfaces", &self.interfaces)
            .finish()
    }
}

/// Every network interface of this namespace but loopback (loopback clients are the socket
/// fast path's), from /sys/class/net.
pub fn default_interfaces() -> Result<Vec<String>, FastpathError> {
    let dir = Path::new("/sys/class/net");
    let entries = std::fs::read_dir(dir).map_err(|source| FastpathError::Cgroup {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|name| name != "lo")
        .collect();
    names.sort();
    Ok(names)
}

impl UdpOffload {
    /// Loads the program and attaches it (TCX, ingress) to `interfaces`, or to every
    /// interface but loopback when `None`. Needs Linux 6.6 for TCX: the links then belong to
    /// this process and vanish with it.
    pub fn attach(interfaces: Option<&[String]>) -> Result<Self, FastpathError> {
        let interfaces = match interfaces {
            Some(list) => list.to_vec(),
            None => default_interfaces()?,
        };
        let mut ebpf = Ebpf::load(OBJECT).map_err(|e| FastpathError::Load(chain(&e)))?;
        let program: &mut SchedClassifier = ebpf
            .program_mut(PROGRAM)
            .ok_or_else(|| FastpathError::Load(format!("{PROGRAM} missing from the object")))?
            .try_into()
            .map_err(|e: aya::programs::ProgramError| FastpathError::Load(e.to_string()))?;
        program
            .load()
            .map_err(|e| FastpathError::Load(format!("{PROGRAM}: {}", chain(&e))))?;
        for interface in &interfaces {
            // TCX only: a netlink (clsact) filter would outlive a killed Ballast and go on
            // rewriting datagrams toward flow sockets nobody reads.
            program
                .attach_with_options(
                    interface,
                    TcAttachType::Ingress,
                    TcAttachOptions::TcxOrder(LinkOrder::default()),
                )
                .map_err(|e| FastpathError::Attach {
                    program: PROGRAM,
                    path: interface.into(),
                    reason: chain(&e),
                })?;
        }
        let flows = ebpf.take_map("udp_flows").ok_or(FastpathError::Map {
            map: "udp_flows",
            reason: "missing from the object".into(),
        })?;
        let flows = HashMap::try_from(flows).map_err(map_error("udp_flows"))?;
        let traffic = ebpf.take_map("backend_traffic").ok_or(FastpathError::Map {
            map: "backend_traffic",
            reason: "missing from the object".into(),
        })?;
        let backend_traffic =
            PerCpuArray::try_from(traffic).map_err(map_error("backend_traffic"))?;
        Ok(Self {
            flows,
            backend_traffic,
            interfaces,
            _ebpf: ebpf,
        })
    }

    /// The interfaces the program is attached to.
    pub fn interfaces(&self) -> &[String] {
        &self.interfaces
    }

    /// Hands the flow's later datagrams, both ways, to the kernel.
    pub fn install(&mut self, flow: &FlowRoute) -> Result<(), FastpathError> {
        for (k, v) in flow.entries() {
            self.flows.insert(k, v, 0).map_err(map_error("udp_flows"))?;
        }
        Ok(())
    }

    /// Takes the flow back; an entry the kernel already evicted is no error.
    pub fn remove(&mut self, flow: &FlowRoute) {
        for (k, _) in flow.entries() {
            let _ = self.flows.remove(&k);
        }
    }

    /// How long ago the kernel forwarded a datagram of the flow either way, or `None` when
    /// it has forwarded none (or no longer has the flow).
    pub fn idle_for(&self, flow: &FlowRoute) -> Option<Duration> {
        let now = ballast_dataplane::sys::monotonic_ns();
        flow.entries()
            .iter()
            .filter_map(|(k, _)| self.flows.get(k, 0).ok())
            .map(|v| u64_at(&v, 24))
            .filter(|&stamp| stamp != 0)
            .max()
            .map(|last| Duration::from_nanos(now.saturating_sub(last)))
    }

    /// What the kernel forwarded for the backend with counter `counter`, one way.
    pub fn backend_traffic(&self, counter: u16, direction: Direction) -> Traffic {
        let index = u32::from(counter) * 2 + direction as u32;
        self.backend_traffic
            .get(&index, 0)
            .map(|values| {
                values
                    .iter()
                    .fold(Traffic::default(), |sum, record| Traffic {
                        datagrams: sum.datagrams + u64::from_ne_bytes(first8(record)),
                        bytes: sum.bytes + u64::from_ne_bytes(last8(record)),
                    })
            })
            .unwrap_or_default()
    }
}

fn first8(record: &[u8; 16]) -> [u8; 8] {
    let mut b = [0u8; 8];
    b.copy_from_slice(&record[..8]);
    b
}

fn last8(record: &[u8; 16]) -> [u8; 8] {
    let mut b = [0u8; 8];
    b.copy_from_slice(&record[8..]);
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flow_is_two_mirrored_translations() {
        let flow = FlowRoute::of(
            "10.0.1.2:5000".parse().unwrap(),
            "10.0.1.1:53".parse().unwrap(),
            "10.0.2.1:40000".parse().unwrap(),
            "10.0.2.2:5353".parse().unwrap(),
            7,
        )
        .unwrap();
        let [(k_in, v_in), (k_out, v_out)] = flow.entries();
        assert_eq!(k_in, [10, 0, 1, 2, 10, 0, 1, 1, 0x13, 0x88, 0, 53]);
        assert_eq!(v_in[..12], key(flow.flow_local, flow.backend));
        assert_eq!(k_out, key(flow.backend, flow.flow_local));
        assert_eq!(v_out[..12], key(flow.listener, flow.client));
        assert_eq!(v_in[12..16], 7u32.to_ne_bytes());
        assert_eq!(v_out[16..20], 1u32.to_ne_bytes());
    }

    #[test]
    fn ipv6_flows_are_not_offloaded_but_mapped_ipv4_ones_are() {
        let v4: SocketAddr = "10.0.0.1:1".parse().unwrap();
        let v6: SocketAddr = "[2001:db8::1]:1".parse().unwrap();
        let mapped: SocketAddr = "[::ffff:10.0.0.9]:1".parse().unwrap();
        assert!(FlowRoute::of(v6, v4, v4, v4, 0).is_none());
        assert!(FlowRoute::of(mapped, v4, v4, v4, 0).is_some());
    }
}
