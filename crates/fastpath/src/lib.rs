//! Ballast's kernel fast path, part 1: the socket-level load balancer.
//!
//! For clients on the same host (a sidecar's neighbours), the balancer can leave the data path
//! entirely: BPF programs on a cgroup v2 directory rewrite a `connect()` (or an unconnected
//! UDP `sendmsg()`) to a listener's address into one to a backend, inside the system call, and
//! make `getpeername()` and UDP replies show the listener's address again. The client then
//! talks to the backend directly, at the speed of a direct connection.
//!
//! Rules of this crate:
//! - The kernel side is C in `bpf/sock_lb.c`, compiled by `bpf/build.sh` with Debian's clang
//!   into `bpf/sock_lb.o`, which is committed: `cargo build` needs no clang, and
//!   `scripts/test.sh` rebuilds it and fails if the bytes differ.
//! - The kernel only picks a slot. What the slots are (available backends only, weights
//!   expanded into the relay's own round-robin cycle, backups when no primary is left) is
//!   decided here, in user space, by the pure [`table`] module, and switched in whole: slots go
//!   into a region the hook is not reading, then one map update points the service at it.
//! - A connect the hook cannot serve (no table, an empty one, another network namespace,
//!   Ballast's own process) is left alone and reaches Ballast's real listener.
//! - No `unsafe` here: map records are byte arrays encoded field by field; the one system call
//!   aya does not make for us (SO_NETNS_COOKIE) is in `ballast_dataplane::sys`.
//!
//! - Steered TCP sessions are followed by a sock_ops program that keeps their live count per
//!   backend and reports each one's end (bytes, connect time, duration, or a failed connect)
//!   through a ring buffer that the control plane drains on its timer ([`SocketLb::take_events`]).
//!
//! File descriptors: the BPF objects (programs, maps, links) belong to the [`SocketLb`] value;
//! the cgroup attachments are bpf_links, so they vanish when it is dropped or when the process
//! dies, even by SIGKILL, and no client is left steered by a balancer that is gone.

pub mod table;

use std::collections::{HashMap as StdHashMap, HashSet};
use std::fs::File;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use aya::maps::{Array, HashMap, MapData, PerCpuArray, RingBuf};
use aya::programs::{CgroupAttachMode, CgroupSockAddr, SockOps};
use aya::{Ebpf, EbpfLoader};

pub use event::{SessionEnd, SessionEvent};
pub use table::{Candidate, Slot};

pub mod event;
pub mod udp;

/// The compiled programs (see `bpf/build.sh`), aligned as the ELF parser wants them.
static OBJECT: &[u8] = aya::include_bytes_aligned!("../bpf/sock_lb.o");

/// Sizes of the kernel maps; they match `bpf/sock_lb.c`.
const MAX_SERVICES: u32 = 1024;
const MAX_SLOTS: u32 = 1 << 18;
/// Backend connect counters the kernel keeps (indexes of `Candidate::counter`).
pub const MAX_COUNTERS: u16 = u16::MAX;

/// Follows steered TCP sockets from the SYN to the close.
const SOCK_OPS: &str = "ballast_sockops";

const PROGRAMS: [&str; 8] = [
    "ballast_connect4",
    "ballast_sendmsg4",
    "ballast_recvmsg4",
    "ballast_getpeername4",
    "ballast_connect6",
    "ballast_sendmsg6",
    "ballast_recvmsg6",
    "ballast_getpeername6",
];

/// Why the socket fast path could not start or change.
#[derive(Debug, thiserror::Error)]
pub enum FastpathError {
    #[error("no cgroup v2 mount in /proc/self/mountinfo")]
    NoCgroup2,
    #[error("cgroup {path}: {source}")]
    Cgroup { path: PathBuf, source: io::Error },
    #[error("cannot load the BPF programs (needs root or CAP_BPF with CAP_NET_ADMIN): {0}")]
    Load(String),
    #[error("cannot attach {program} to cgroup {path}: {reason}")]
    Attach {
        program: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("kernel map {map}: {reason}")]
    Map { map: &'static str, reason: String },
    #[error("no room for another service table ({0} slots asked)")]
    Full(usize),
}

pub(crate) fn map_error(map: &'static str) -> impl Fn(aya::maps::MapError) -> FastpathError {
    move |e| FastpathError::Map {
        map,
        reason: chain(&e),
    }
}

/// An error with its causes, since aya's top-level messages leave out the system call's
/// error ("`bpf_link_create` failed").
pub(crate) fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(e) = cause {
        text.push_str(": ");
        text.push_str(&e.to_string());
        cause = e.source();
    }
    text
}

/// The transport of a listener, as the hook tells them apart by socket type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    Tcp,
    Udp,
}

impl Transport {
    fn ip_protocol(self) -> u8 {
        match self {
            Transport::Tcp => 6,
            Transport::Udp => 17,
        }
    }
}

/// How the hook picks a slot of a service's table. Every algorithm passes over a backend at
/// its limit (see [`Slot::limit`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    /// Each CPU walks the weighted cycle in order.
    RoundRobin,
    /// A uniform slot, so a weighted backend.
    Random,
    /// The lowest sessions per weight over the table's backends (one slot each), the scan
    /// starting one further each connect so that ties rotate.
    LeastConnections,
    /// Two uniform slots of the weighted cycle; the one with fewer sessions per weight.
    PowerOfTwo,
}

impl Algorithm {
    fn code(self) -> u32 {
        match self {
            Algorithm::RoundRobin => 0,
            Algorithm::Random => 1,
            Algorithm::LeastConnections => 2,
            Algorithm::PowerOfTwo => 3,
        }
    }
}

/// Backends least_connections compares in the hook (`MAX_SCAN` in `bpf/sock_lb.c`): a larger
/// tier is served by the relay.
pub const MAX_SCAN: usize = 64;

/// A listener address the hook serves: an IPv4 one is matched by the connect4 and sendmsg4
/// programs, an IPv6 one by connect6 and sendmsg6. Its backends are of its family, since a
/// hook of one family cannot produce a destination of the other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ServiceAddr {
    pub addr: SocketAddr,
    pub transport: Transport,
}

/// A service key of either family: `struct service_key` or `struct service_key6`.
enum ServiceKey {
    V4([u8; 8]),
    V6([u8; 20]),
}

impl ServiceAddr {
    /// `struct service_key` (`service_key6`): address and port in network byte order, the IP
    /// protocol, padding.
    fn key(self) -> ServiceKey {
        let [p, q] = self.addr.port().to_be_bytes();
        let proto = self.transport.ip_protocol();
        match self.addr.ip() {
            IpAddr::V4(ip) => {
                let [a, b, c, d] = ip.octets();
                ServiceKey::V4([a, b, c, d, p, q, proto, 0])
            }
            IpAddr::V6(ip) => {
                let mut key = [0u8; 20];
                key[..16].copy_from_slice(&ip.octets());
                key[16..].copy_from_slice(&[p, q, proto, 0]);
                ServiceKey::V6(key)
            }
        }
    }
}

/// One service's two table regions in `slots` and what the hook reads now.
#[derive(Debug)]
struct Service {
    id: u32,
    regions: [u32; 2],
    capacity: u32,
    /// Region the hook reads, once a table was written.
    active: Option<usize>,
    written: Vec<Slot>,
    algorithm: Algorithm,
}

/// The socket-level load balancer, attached to one cgroup. Dropping it detaches everything.
pub struct SocketLb {
    cgroup: PathBuf,
    services: HashMap<MapData, [u8; 8], [u8; 16]>,
    slots: Array<MapData, [u8; 16]>,
    services6: HashMap<MapData, [u8; 20], [u8; 16]>,
    slots6: Array<MapData, [u8; 28]>,
    service_connects: PerCpuArray<MapData, u64>,
    backend_connects: PerCpuArray<MapData, u64>,
    steered_active: Array<MapData, u64>,
    relay_active: Array<MapData, u64>,
    usable: Array<MapData, u32>,
    events: RingBuf<MapData>,
    events_lost: PerCpuArray<MapData, u64>,
    /// Backend counters marked usable in the kernel: those in some current table.
    usable_counters: HashSet<u16>,
    tables: StdHashMap<ServiceAddr, Service>,
    /// Regions of removed services, reused before `next_slot` grows.
    free_regions: Vec<(u32, u32)>,
    next_slot: u32,
    free_ids: Vec<u32>,
    next_id: u32,
    /// Last: the programs and their links go after the maps they use.
    _ebpf: Ebpf,
}

impl std::fmt::Debug for SocketLb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SocketLb")
            .field("cgroup", &self.cgroup)
            .field("services", &self.tables.len())
            .finish()
    }
}

/// The cgroup2 mount point, from /proc/self/mountinfo.
pub fn cgroup2_root() -> Result<PathBuf, FastpathError> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").map_err(|source| {
        FastpathError::Cgroup {
            path: "/proc/self/mountinfo".into(),
            source,
        }
    })?;
    info.lines()
        .find_map(|line| {
            // Fields: id parent major:minor root mount-point options ... - fstype source ...
            let (left, right) = line.split_once(" - ")?;
            let fstype = right.split_whitespace().next()?;
            (fstype == "cgroup2").then(|| left.split_whitespace().nth(4).map(PathBuf::from))?
        })
        .ok_or(FastpathError::NoCgroup2)
}

impl SocketLb {
    /// Loads the programs and attaches them to `cgroup` (the cgroup2 root when `None`). Only
    /// sockets of this process's network namespace are steered, never this process's own.
    pub fn attach(cgroup: Option<&Path>) -> Result<Self, FastpathError> {
        let cgroup = match cgroup {
            Some(path) => path.to_path_buf(),
            None => cgroup2_root()?,
        };
        let cgroup_dir = File::open(&cgroup).map_err(|source| FastpathError::Cgroup {
            path: cgroup.clone(),
            source,
        })?;
        // Socket storage maps (the per-socket records of steered sockets) have no aya type;
        // only the kernel reads them, so aya need only create them.
        let mut ebpf = EbpfLoader::new()
            .allow_unsupported_maps()
            .load(OBJECT)
            .map_err(|e| FastpathError::Load(chain(&e)))?;
        write_settings(&mut ebpf)?;
        for name in PROGRAMS {
            let program: &mut CgroupSockAddr = ebpf
                .program_mut(name)
                .ok_or_else(|| FastpathError::Load(format!("{name} missing from the object")))?
                .try_into()
                .map_err(|e: aya::programs::ProgramError| FastpathError::Load(e.to_string()))?;
            program
                .load()
                .map_err(|e| FastpathError::Load(format!("{name}: {}", chain(&e))))?;
            // A bpf_link (aya makes one on kernels from 5.7): the kernel takes no flags for
            // those (`Single` is 0), and links of other tools on the same cgroup (Cilium,
            // systemd's socket-bind) coexist with ours anyway.
            program
                .attach(cgroup_dir.as_fd(), CgroupAttachMode::Single)
                .map_err(|e| FastpathError::Attach {
                    program: name,
                    path: cgroup.clone(),
                    reason: chain(&e),
                })?;
        }
        let sock_ops: &mut SockOps = ebpf
            .program_mut(SOCK_OPS)
            .ok_or_else(|| FastpathError::Load(format!("{SOCK_OPS} missing from the object")))?
            .try_into()
            .map_err(|e: aya::programs::ProgramError| FastpathError::Load(e.to_string()))?;
        sock_ops
            .load()
            .map_err(|e| FastpathError::Load(format!("{SOCK_OPS}: {}", chain(&e))))?;
        sock_ops
            .attach(cgroup_dir.as_fd(), CgroupAttachMode::Single)
            .map_err(|e| FastpathError::Attach {
                program: SOCK_OPS,
                path: cgroup.clone(),
                reason: chain(&e),
            })?;
        let take = |ebpf: &mut Ebpf, name: &'static str| {
            ebpf.take_map(name).ok_or(FastpathError::Map {
                map: name,
                reason: "missing from the object".into(),
            })
        };
        let services =
            HashMap::try_from(take(&mut ebpf, "services")?).map_err(map_error("services"))?;
        let slots = Array::try_from(take(&mut ebpf, "slots")?).map_err(map_error("slots"))?;
        let services6 =
            HashMap::try_from(take(&mut ebpf, "services6")?).map_err(map_error("services6"))?;
        let slots6 = Array::try_from(take(&mut ebpf, "slots6")?).map_err(map_error("slots6"))?;
        let service_connects = PerCpuArray::try_from(take(&mut ebpf, "service_connects")?)
            .map_err(map_error("service_connects"))?;
        let backend_connects = PerCpuArray::try_from(take(&mut ebpf, "backend_connects")?)
            .map_err(map_error("backend_connects"))?;
        let steered_active = Array::try_from(take(&mut ebpf, "steered_active")?)
            .map_err(map_error("steered_active"))?;
        let relay_active =
            Array::try_from(take(&mut ebpf, "relay_active")?).map_err(map_error("relay_active"))?;
        let usable = Array::try_from(take(&mut ebpf, "usable")?).map_err(map_error("usable"))?;
        let events = RingBuf::try_from(take(&mut ebpf, "events")?).map_err(map_error("events"))?;
        let events_lost = PerCpuArray::try_from(take(&mut ebpf, "events_lost")?)
            .map_err(map_error("events_lost"))?;
        Ok(Self {
            cgroup,
            services,
            slots,
            services6,
            slots6,
            service_connects,
            backend_connects,
            steered_active,
            relay_active,
            usable,
            events,
            events_lost,
            usable_counters: HashSet::new(),
            tables: StdHashMap::new(),
            free_regions: Vec::new(),
            next_slot: 0,
            free_ids: Vec::new(),
            next_id: 0,
            _ebpf: ebpf,
        })
    }

    /// The cgroup the programs are attached to.
    pub fn cgroup(&self) -> &Path {
        &self.cgroup
    }

    /// Makes `service` steer to `slots` (at most `capacity` of them, fixed for the service's
    /// life). An empty table removes the service from the hook's view, so its connects reach
    /// the real listener. Unchanged tables are not rewritten. Slots of the other address
    /// family than the service's are left out: the hook cannot steer across families.
    pub fn set_service(
        &mut self,
        service: ServiceAddr,
        algorithm: Algorithm,
        capacity: usize,
        slots: &[Slot],
    ) -> Result<(), FastpathError> {
        let capacity = u32::try_from(capacity.max(1)).map_err(|_| FastpathError::Full(capacity))?;
        if !self.tables.contains_key(&service) {
            let entry = self.allocate(capacity)?;
            self.tables.insert(service, entry);
        }
        let Some(entry) = self.tables.get_mut(&service) else {
            return Ok(());
        };
        let slots: Vec<Slot> = slots
            .iter()
            .filter(|slot| slot.addr.is_ipv4() == service.addr.is_ipv4())
            .take(entry.capacity as usize)
            .copied()
            .collect();
        if entry.active.is_some() && entry.written == slots && entry.algorithm == algorithm {
            return Ok(());
        }
        if slots.is_empty() {
            remove_key(&mut self.services, &mut self.services6, service)?;
            entry.active = None;
            entry.written.clear();
            return self.refresh_usable();
        }
        // Write the region the hook is not reading, then switch the service to it.
        let region = entry.active.map_or(0, |r| 1 - r);
        let offset = entry.regions[region];
        for (i, slot) in slots.iter().enumerate() {
            let index = offset + i as u32;
            match slot_record(slot) {
                SlotRecord::V4(record) => self.slots.set(index, record, 0),
                SlotRecord::V6(record) => self.slots6.set(index, record, 0),
            }
            .map_err(map_error("slots"))?;
        }
        let count = slots.len() as u32;
        let mut value = [0u8; 16];
        for (chunk, field) in
            value
                .chunks_exact_mut(4)
                .zip([offset, count, entry.id, algorithm.code()])
        {
            chunk.copy_from_slice(&field.to_ne_bytes());
        }
        match service.key() {
            ServiceKey::V4(key) => self.services.insert(key, value, 0),
            ServiceKey::V6(key) => self.services6.insert(key, value, 0),
        }
        .map_err(map_error("services"))?;
        entry.active = Some(region);
        entry.written = slots;
        entry.algorithm = algorithm;
        self.refresh_usable()
    }

    /// Stops steering `service` and frees its table.
    pub fn remove_service(&mut self, service: ServiceAddr) -> Result<(), FastpathError> {
        let Some(entry) = self.tables.remove(&service) else {
            return Ok(());
        };
        remove_key(&mut self.services, &mut self.services6, service)?;
        self.free_ids.push(entry.id);
        self.free_regions
            .push((entry.regions[0], entry.capacity * 2));
        self.refresh_usable()
    }

    /// The services the hook has a table for (written or not).
    pub fn services(&self) -> impl Iterator<Item = ServiceAddr> + '_ {
        self.tables.keys().copied()
    }

    /// Connects the hook steered for `service` since it was first set.
    pub fn service_connects(&self, service: ServiceAddr) -> u64 {
        self.tables
            .get(&service)
            .map_or(0, |entry| per_cpu_sum(&self.service_connects, entry.id))
    }

    /// Connects the hook steered to the backend with counter `counter`.
    pub fn backend_connects(&self, counter: u16) -> u64 {
        per_cpu_sum(&self.backend_connects, u32::from(counter))
    }

    /// Steered TCP sessions the backend with counter `counter` has now, from the SYN to the
    /// close.
    pub fn steered_active(&self, counter: u16) -> u64 {
        self.steered_active.get(&u32::from(counter), 0).unwrap_or(0)
    }

    /// Tells the hook how many sessions the relay has on the backend with counter `counter`,
    /// so that its load and limits count both paths.
    pub fn set_relay_active(&mut self, counter: u16, sessions: u64) -> Result<(), FastpathError> {
        self.relay_active
            .set(u32::from(counter), sessions, 0)
            .map_err(map_error("relay_active"))
    }

    /// Marks in the kernel which backends are in a current table: a UDP socket keeps its
    /// earlier pick only while its backend is.
    fn refresh_usable(&mut self) -> Result<(), FastpathError> {
        let now: HashSet<u16> = self
            .tables
            .values()
            .filter(|entry| entry.active.is_some())
            .flat_map(|entry| entry.written.iter().map(|slot| slot.counter))
            .collect();
        let changed: Vec<(u16, bool)> = now
            .difference(&self.usable_counters)
            .map(|&c| (c, true))
            .chain(self.usable_counters.difference(&now).map(|&c| (c, false)))
            .collect();
        for (counter, usable) in changed {
            self.usable
                .set(u32::from(counter), u32::from(usable), 0)
                .map_err(map_error("usable"))?;
        }
        self.usable_counters = now;
        Ok(())
    }

    /// The sessions that ended since the last call, oldest first, at most `max` of them (the
    /// rest stay for the next call).
    pub fn take_events(&mut self, max: usize) -> Vec<SessionEvent> {
        let mut taken = Vec::new();
        while taken.len() < max {
            let Some(item) = self.events.next() else {
                break;
            };
            if let Some(event) = SessionEvent::parse(&item) {
                taken.push(event);
            }
        }
        taken
    }

    /// Session records the kernel dropped because the ring buffer was full.
    pub fn events_lost(&self) -> u64 {
        per_cpu_sum(&self.events_lost, 0)
    }

    /// The service a kernel service id stands for.
    pub fn service_of(&self, id: u32) -> Option<ServiceAddr> {
        self.tables
            .iter()
            .find(|(_, entry)| entry.id == id)
            .map(|(service, _)| *service)
    }

    fn allocate(&mut self, capacity: u32) -> Result<Service, FastpathError> {
        let id = match self.free_ids.pop() {
            Some(id) => id,
            None if self.next_id < MAX_SERVICES => {
                self.next_id += 1;
                self.next_id - 1
            }
            None => return Err(FastpathError::Full(capacity as usize)),
        };
        let wanted = capacity * 2;
        let offset = match self.free_regions.iter().position(|(_, len)| *len >= wanted) {
            Some(i) => self.free_regions.swap_remove(i).0,
            None if self.next_slot + wanted <= MAX_SLOTS => {
                self.next_slot += wanted;
                self.next_slot - wanted
            }
            None => {
                self.free_ids.push(id);
                return Err(FastpathError::Full(capacity as usize));
            }
        };
        // A reused id starts its counters from where the last service left them; readers take
        // differences, so only the cursor needs no reset (any start position is fair).
        Ok(Service {
            id,
            regions: [offset, offset + capacity],
            capacity,
            active: None,
            written: Vec::new(),
            algorithm: Algorithm::RoundRobin,
        })
    }
}

/// Takes `service` out of the hook's view; a key that is not there is no error.
fn remove_key(
    services: &mut HashMap<MapData, [u8; 8], [u8; 16]>,
    services6: &mut HashMap<MapData, [u8; 20], [u8; 16]>,
    service: ServiceAddr,
) -> Result<(), FastpathError> {
    let removed = match service.key() {
        ServiceKey::V4(key) => services.remove(&key),
        ServiceKey::V6(key) => services6.remove(&key),
    };
    match removed {
        Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
        Err(e) => Err(map_error("services")(e)),
    }
}

/// A slot of either family: `struct backend` or `struct backend6`.
enum SlotRecord {
    V4([u8; 16]),
    V6([u8; 28]),
}

/// `struct backend` (`backend6`): address and port in network byte order, then counter index,
/// weight and limit in host order.
fn slot_record(slot: &Slot) -> SlotRecord {
    let mut tail = [0u8; 12];
    tail[..2].copy_from_slice(&slot.addr.port().to_be_bytes());
    tail[2..4].copy_from_slice(&slot.counter.to_ne_bytes());
    tail[4..8].copy_from_slice(&slot.weight.to_ne_bytes());
    tail[8..].copy_from_slice(&slot.limit.to_ne_bytes());
    match slot.addr.ip() {
        IpAddr::V4(ip) => {
            let mut record = [0u8; 16];
            record[..4].copy_from_slice(&ip.octets());
            record[4..].copy_from_slice(&tail);
            SlotRecord::V4(record)
        }
        IpAddr::V6(ip) => {
            let mut record = [0u8; 28];
            record[..16].copy_from_slice(&ip.octets());
            record[16..].copy_from_slice(&tail);
            SlotRecord::V6(record)
        }
    }
}

fn per_cpu_sum(map: &PerCpuArray<MapData, u64>, index: u32) -> u64 {
    map.get(&index, 0)
        .map(|values| values.iter().sum())
        .unwrap_or(0)
}

/// `struct settings`: this network namespace's cookie and this process's id.
fn write_settings(ebpf: &mut Ebpf) -> Result<(), FastpathError> {
    let probe = std::net::UdpSocket::bind("127.0.0.1:0").map_err(|e| FastpathError::Map {
        map: "config",
        reason: format!("cannot open a socket to learn the network namespace: {e}"),
    })?;
    let cookie =
        ballast_dataplane::sys::netns_cookie(probe.as_fd()).map_err(|e| FastpathError::Map {
            map: "config",
            reason: format!("SO_NETNS_COOKIE: {e}"),
        })?;
    let mut record = [0u8; 16];
    record[..8].copy_from_slice(&cookie.to_ne_bytes());
    record[8..12].copy_from_slice(&std::process::id().to_ne_bytes());
    let map = ebpf.map_mut("config").ok_or(FastpathError::Map {
        map: "config",
        reason: "missing from the object".into(),
    })?;
    let mut config: Array<&mut MapData, [u8; 16]> =
        Array::try_from(map).map_err(map_error("config"))?;
    config.set(0, record, 0).map_err(map_error("config"))
}
