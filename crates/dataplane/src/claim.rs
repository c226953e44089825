//! One listening address, one Ballast: the checks a listener's address passes before its
//! SO_REUSEPORT sockets are bound.
//!
//! SO_REUSEPORT spreads new connections over a Ballast's own workers, but the kernel admits to
//! the group any socket of the same user that sets it: a second Ballast started by mistake on
//! the same address would silently take a share of the first one's clients. So, before binding
//! an address (port other than 0, listener without `shared_port: true`), the data plane:
//!
//! 1. takes the address's **lock**: an abstract Unix socket named
//!    `ballast/listen/<tcp|udp>/<addr>`, bound and listening. Abstract names live in the
//!    network namespace, like the address itself, need no file, and vanish when the process
//!    dies, however it dies. A second Ballast's bind of the same name fails (EADDRINUSE); it
//!    connects to it and reads SO_PEERCRED to name the holder. This closes the race of two
//!    Ballasts starting at the same moment, which a check alone would not;
//! 2. **probes** the address: a bind without SO_REUSEPORT (TCP with SO_REUSEADDR, so
//!    TIME_WAIT does not matter; UDP without, since on UDP it would allow sharing), closed at
//!    once. It fails when anything else holds the address or a conflicting one (the wildcard
//!    of a specific address, or the reverse): nginx, an older Ballast, any reuseport socket.
//!    The holder is then looked up in /proc (best effort).
//!
//! Neither step puts a socket in a reuseport group or a listen queue, so a refused start or
//! reload harms no connection of the process that holds the address.
//!
//! File descriptors: an [`AddressLock`] owns its Unix socket (closed on drop); the probe and
//! look-up sockets are closed before the functions return. A binary upgrade hands a duplicate
//! of the lock's socket to the new process, so both hold the one lock until the old one exits,
//! and a stranger's bind of the name keeps failing throughout.

use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::os::fd::AsFd;

use socket2::{Domain, SockAddr, Socket, Type};

use crate::route::Protocol;
use crate::sys;

/// Held while this process serves an address; dropping it lets another Ballast take it.
#[derive(Debug)]
pub struct AddressLock {
    socket: Socket,
}

impl AddressLock {
    /// The lock socket an old process handed over (binary upgrade): the same socket, so the
    /// same lock, held by both processes until the old one exits.
    pub fn from_handed(socket: std::os::fd::OwnedFd) -> Self {
        let socket = Socket::from(socket);
        // listen() again sets the socket's credentials to this process's, so a second
        // Ballast's look-up names the process that serves, not the one that took the lock
        // and is gone. Best effort: the lock holds either way.
        let _ = socket.listen(128);
        Self { socket }
    }

    /// A duplicate of the lock's socket, to hand over to a new process.
    pub fn try_clone_socket(&self) -> io::Result<std::os::fd::OwnedFd> {
        self.socket.try_clone().map(Into::into)
    }

    /// Accepts and closes the connections of refused starts that asked who holds the lock,
    /// so its backlog never fills and a later look-up never falls back to a /proc scan.
    /// Non-blocking: returns at once when none is queued.
    pub fn answer_lookups(&self) {
        for _ in 0..128 {
            if self.socket.accept().is_err() {
                return;
            }
        }
    }
}

/// Who holds an address this process wanted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Holder {
    Process { pid: u32, name: Option<String> },
    Unknown,
}

impl fmt::Display for Holder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Holder::Process {
                pid,
                name: Some(name),
            } => write!(f, "{name} (pid {pid})"),
            Holder::Process { pid, name: None } => write!(f, "pid {pid}"),
            Holder::Unknown => f.write_str("an unknown process"),
        }
    }
}

/// Why an address cannot be claimed.
#[derive(Debug, thiserror::Error)]
pub enum ClaimError {
    #[error("already in use by {0}")]
    InUse(Holder),
    #[error("{0}")]
    Io(io::Error),
}

/// The abstract socket name of an address's lock (without the leading NUL).
pub fn lock_name(protocol: Protocol, addr: SocketAddr) -> String {
    let protocol = match protocol {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
    };
    format!("ballast/listen/{protocol}/{addr}")
}

fn lock_addr(protocol: Protocol, addr: SocketAddr) -> io::Result<SockAddr> {
    SockAddr::unix(format!("\0{}", lock_name(protocol, addr)))
}

/// Takes the lock of `addr`; `InUse` names the Ballast that holds it.
pub fn lock(protocol: Protocol, addr: SocketAddr) -> Result<AddressLock, ClaimError> {
    let name = lock_addr(protocol, addr).map_err(ClaimError::Io)?;
    let socket = Socket::new(Domain::UNIX, Type::STREAM, None).map_err(ClaimError::Io)?;
    match socket.bind(&name) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
            let holder = lock_holder(protocol, addr).unwrap_or(Holder::Unknown);
            return Err(ClaimError::InUse(holder));
        }
        Err(e) => return Err(ClaimError::Io(e)),
    }
    // Listening lets a second Ballast connect and read who we are (SO_PEERCRED, from the
    // connect alone). The queued connections are accepted and closed now and then
    // ([`AddressLock::answer_lookups`]); should the backlog fill meanwhile, the look-up
    // falls back to /proc.
    socket.listen(128).map_err(ClaimError::Io)?;
    socket.set_nonblocking(true).map_err(ClaimError::Io)?;
    Ok(AddressLock { socket })
}

/// The process listening on the lock of `addr`, if a Ballast holds it.
fn lock_holder(protocol: Protocol, addr: SocketAddr) -> Option<Holder> {
    let name = lock_addr(protocol, addr).ok()?;
    let socket = Socket::new(Domain::UNIX, Type::STREAM, None).ok()?;
    socket.set_nonblocking(true).ok()?;
    match socket.connect(&name) {
        Ok(()) => sys::peer_pid(socket.as_fd()).ok().map(process),
        // A full backlog: find the socket's owner the slow way.
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => unix_inode(&lock_name(protocol, addr))
            .and_then(owner_of_inode)
            .map(process),
        Err(_) => None,
    }
}

/// Binds `addr` once without SO_REUSEPORT and closes the socket: `InUse` when any other socket
/// holds the address or one that conflicts with it.
pub fn probe(protocol: Protocol, addr: SocketAddr) -> Result<(), ClaimError> {
    let attempt = || -> io::Result<()> {
        let kind = match protocol {
            Protocol::Tcp => Type::STREAM,
            Protocol::Udp => Type::DGRAM,
        };
        let socket = Socket::new(Domain::for_address(addr), kind, None)?;
        if addr.is_ipv6() {
            socket.set_only_v6(true)?;
        }
        if protocol == Protocol::Tcp {
            socket.set_reuse_address(true)?;
        }
        socket.bind(&addr.into())
    };
    match attempt() {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
            Err(ClaimError::InUse(holder(protocol, addr)))
        }
        Err(e) => Err(ClaimError::Io(e)),
    }
}

/// Best effort: who holds `addr` (or a conflicting address). A Ballast is asked through its
/// lock (which works across users); otherwise the socket is looked up in /proc/net and its
/// owner in /proc/*/fd (which needs the same user, or root).
pub fn holder(protocol: Protocol, addr: SocketAddr) -> Holder {
    let wildcard = SocketAddr::new(unspecified(addr.ip()), addr.port());
    for candidate in [addr, wildcard] {
        match lock_holder(protocol, candidate) {
            // This process's own lock (of a conflicting address) names nobody else.
            Some(Holder::Process { pid, .. }) if pid == std::process::id() => {}
            Some(holder) => return holder,
            None => {}
        }
    }
    socket_inodes(protocol, addr)
        .into_iter()
        .find_map(owner_of_inode)
        .map_or(Holder::Unknown, process)
}

fn unspecified(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    }
}

fn process(pid: u32) -> Holder {
    let name = std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|s| s.trim_end().to_string())
        .filter(|s| !s.is_empty());
    Holder::Process { pid, name }
}

/// Inodes of the sockets in /proc/net/{tcp,tcp6,udp,udp6} that hold `addr` or conflict with it
/// (same port; same address, or either one a wildcard). TCP counts listening sockets only.
fn socket_inodes(protocol: Protocol, addr: SocketAddr) -> Vec<u64> {
    let base = match protocol {
        Protocol::Tcp => "/proc/net/tcp",
        Protocol::Udp => "/proc/net/udp",
    };
    let mut inodes = Vec::new();
    for file in [base.to_string(), format!("{base}6")] {
        let Ok(text) = std::fs::read_to_string(&file) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let Some(entry) = parse_proc_net_line(line) else {
                continue;
            };
            let listening = protocol == Protocol::Udp || entry.state == 0x0A;
            if listening && entry.inode != 0 && conflicts(entry.local, addr) {
                inodes.push(entry.inode);
            }
        }
    }
    inodes
}

/// Whether a socket bound to `held` keeps `wanted` from being bound (without SO_REUSEPORT).
fn conflicts(held: SocketAddr, wanted: SocketAddr) -> bool {
    if held.port() != wanted.port() {
        return false;
    }
    let held_ip = match held.ip() {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    };
    // A dual-stack `[::]` socket holds the IPv4 wildcard too.
    let dual_wildcard = held.ip() == IpAddr::V6(Ipv6Addr::UNSPECIFIED) && wanted.is_ipv4();
    held_ip == wanted.ip()
        || dual_wildcard
        || (held_ip.is_unspecified() && held_ip.is_ipv4() == wanted.is_ipv4())
        || (wanted.ip().is_unspecified() && held_ip.is_ipv4() == wanted.is_ipv4())
}

#[derive(Debug, PartialEq, Eq)]
struct ProcNetEntry {
    local: SocketAddr,
    state: u8,
    inode: u64,
}

/// One line of /proc/net/{tcp,udp}[6]: `sl local rem st tx:rx tr:when retrnsmt uid timeout
/// inode ...`. Addresses are the kernel's 32-bit words in host order, in hex.
fn parse_proc_net_line(line: &str) -> Option<ProcNetEntry> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    let (ip, port) = fields.get(1)?.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let state = u8::from_str_radix(fields.get(3)?, 16).ok()?;
    let inode = fields.get(9)?.parse().ok()?;
    let mut bytes = Vec::with_capacity(16);
    for start in (0..ip.len()).step_by(8) {
        let word = u32::from_str_radix(ip.get(start..start + 8)?, 16).ok()?;
        bytes.extend_from_slice(&word.to_ne_bytes());
    }
    let ip = match bytes.len() {
        4 => IpAddr::from(<[u8; 4]>::try_from(bytes.as_slice()).ok()?),
        16 => IpAddr::from(<[u8; 16]>::try_from(bytes.as_slice()).ok()?),
        _ => return None,
    };
    Some(ProcNetEntry {
        local: SocketAddr::new(ip, port),
        state,
        inode,
    })
}

/// The inode of the abstract Unix socket `name` in /proc/net/unix.
fn unix_inode(name: &str) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/net/unix").ok()?;
    let wanted = format!("@{name}");
    text.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        (fields.get(7) == Some(&wanted.as_str()))
            .then(|| fields.get(6)?.parse().ok())
            .flatten()
    })
}

/// The first process with an open descriptor on socket `inode` (scans /proc/*/fd).
fn owner_of_inode(inode: u64) -> Option<u32> {
    let wanted = format!("socket:[{inode}]");
    let procs = std::fs::read_dir("/proc").ok()?;
    for entry in procs.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if std::fs::read_link(fd.path()).is_ok_and(|l| l.as_os_str() == wanted.as_str()) {
                return Some(pid);
            }
        }
    }
    None
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn proc_net_lines_parse_on_this_host() {
        // 127.0.0.1:8080 listening, as Linux prints it on a little-endian host.
        let v4 = "   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 12345 1 0000000000000000 100 0 0 10 0";
        let entry = parse_proc_net_line(v4).unwrap();
        if cfg!(target_endian = "little") {
            assert_eq!(entry.local, "127.0.0.1:8080".parse().unwrap());
        }
        assert_eq!((entry.state, entry.inode), (0x0A, 12345));
        let v6 = "   0: 00000000000000000000000001000000:0050 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 777 1 0000000000000000 100 0 0 10 0";
        let entry = parse_proc_net_line(v6).unwrap();
        if cfg!(target_endian = "little") {
            assert_eq!(entry.local, "[::1]:80".parse().unwrap());
        }
        assert_eq!(parse_proc_net_line("garbage"), None);
    }

    #[test]
    fn wildcards_conflict_with_specific_addresses_of_their_family() {
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert!(conflicts(a("127.0.0.1:80"), a("127.0.0.1:80")));
        assert!(conflicts(a("0.0.0.0:80"), a("127.0.0.1:80")));
        assert!(conflicts(a("127.0.0.1:80"), a("0.0.0.0:80")));
        assert!(conflicts(a("[::]:80"), a("10.0.0.1:80")));
        assert!(!conflicts(a("127.0.0.1:80"), a("127.0.0.2:80")));
        assert!(!conflicts(a("127.0.0.1:80"), a("127.0.0.1:81")));
        assert!(!conflicts(a("0.0.0.0:80"), a("[::1]:80")));
    }

    #[test]
    fn a_lock_is_held_once_and_names_its_holder() {
        // Only the lock's name is used: no socket binds this address.
        let port = u16::try_from(std::process::id() % 60_000 + 1).unwrap();
        let addr = SocketAddr::from(([127, 0, 0, 9], port));
        let held = lock(Protocol::Udp, addr).unwrap();
        match lock(Protocol::Udp, addr) {
            Err(ClaimError::InUse(Holder::Process { pid, .. })) => {
                assert_eq!(pid, std::process::id());
            }
            other => panic!("{other:?}"),
        }
        drop(held);
        lock(Protocol::Udp, addr).unwrap();
    }

    #[test]
    fn a_probe_finds_a_listening_socket_and_its_process() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap();
        match probe(Protocol::Tcp, addr) {
            Err(ClaimError::InUse(Holder::Process { pid, .. })) => {
                assert_eq!(pid, std::process::id());
            }
            other => panic!("{other:?}"),
        }
        let wildcard = SocketAddr::new(unspecified(addr.ip()), addr.port());
        assert!(matches!(
            probe(Protocol::Tcp, wildcard),
            Err(ClaimError::InUse(_))
        ));
        drop(taken);
        probe(Protocol::Tcp, addr).unwrap();
    }
}
