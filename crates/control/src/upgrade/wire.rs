//! The hand-over's messages and how they travel: JSON over a `SOCK_SEQPACKET` Unix socket
//! pair, descriptors attached with SCM_RIGHTS.
//!
//! A message is a run of packets, each starting with a kind byte: `F` carries up to
//! [`sys::MAX_FDS_PER_MESSAGE`] descriptors and no data, `D` a chunk of the JSON text, `E` its
//! last chunk. The JSON names descriptors by their index in the order they arrived. Packets
//! keep their boundaries (SEQPACKET), so a descriptor can never be attached to the wrong byte
//! of a stream. Everything received is checked: a malformed, oversized or truncated message,
//! or an index that names no descriptor (or one already used), is a [`HandoverError`], and
//! whatever descriptors came with it are closed.
//!
//! File descriptors: [`send`] borrows what it sends (the receiver gets duplicates);
//! [`recv`] returns what it received in a [`Descriptors`], which closes those never taken.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use ballast_dataplane::route::{AdminState, Protocol};
use ballast_dataplane::sys;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use socket2::Socket;

/// The version of these messages; a new process refuses one it does not know.
pub const VERSION: u32 = 1;
/// JSON bytes per packet: well below a Unix socket's default send buffer.
const CHUNK: usize = 32 * 1024;
/// Bounds on what a message may hold, so a broken peer cannot make us allocate without end.
const MAX_JSON: usize = 256 << 20;
const MAX_FDS: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum HandoverError {
    #[error("hand-over socket: {0}")]
    Io(#[from] io::Error),
    #[error("the other process closed the hand-over socket")]
    Closed,
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("malformed hand-over message: {0}")]
    Malformed(String),
}

/// Old process → new process, first: everything it needs to start serving the same sockets.
#[derive(Debug, Serialize, Deserialize)]
pub struct State {
    pub version: u32,
    pub parent_pid: u32,
    pub listeners: Vec<ListenerEntry>,
    pub locks: Vec<LockEntry>,
    pub admin: Option<AdminEntry>,
    pub backends: Vec<BackendEntry>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Tcp,
    Udp,
}

impl From<Protocol> for Proto {
    fn from(p: Protocol) -> Self {
        match p {
            Protocol::Tcp => Proto::Tcp,
            Protocol::Udp => Proto::Udp,
        }
    }
}

impl From<Proto> for Protocol {
    fn from(p: Proto) -> Self {
        match p {
            Proto::Tcp => Protocol::Tcp,
            Proto::Udp => Protocol::Udp,
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ListenerEntry {
    pub name: String,
    pub protocol: Proto,
    pub requested: SocketAddr,
    pub bound: SocketAddr,
    /// One per worker, in worker order.
    pub fds: Vec<usize>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct LockEntry {
    pub protocol: Proto,
    pub addr: SocketAddr,
    pub fd: usize,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct AdminEntry {
    pub requested: SocketAddr,
    pub bound: SocketAddr,
    pub fd: usize,
    pub lock_fd: Option<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AdminName {
    Enabled,
    Draining,
    Disabled,
}

impl From<AdminState> for AdminName {
    fn from(a: AdminState) -> Self {
        match a {
            AdminState::Enabled => AdminName::Enabled,
            AdminState::Draining => AdminName::Draining,
            AdminState::Disabled => AdminName::Disabled,
        }
    }
}

impl From<AdminName> for AdminState {
    fn from(a: AdminName) -> Self {
        match a {
            AdminName::Enabled => AdminState::Enabled,
            AdminName::Draining => AdminState::Draining,
            AdminName::Disabled => AdminState::Disabled,
        }
    }
}

/// A backend's health verdict and operator state.
#[derive(Debug, Serialize, Deserialize)]
pub struct BackendEntry {
    pub pool: String,
    pub address: SocketAddr,
    pub healthy: bool,
    pub admin: AdminName,
}

/// New process → old process: whether it serves.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "lowercase")]
pub enum Report {
    Ready { pid: u32 },
    Failed { pid: u32, errors: Vec<String> },
}

/// Old process → new process, once it is ready: the UDP flows.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Flows {
    pub flows: Vec<FlowEntry>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct FlowEntry {
    pub worker: usize,
    pub listener: String,
    pub listener_addr: SocketAddr,
    pub client: SocketAddr,
    pub backend: SocketAddr,
    pub local: SocketAddr,
    pub reply_from: Option<IpAddr>,
    pub fd: usize,
}

/// Old process → new process, over and over while the old one drains: the sessions it
/// still holds, its own and those of the processes before it (upgrades in a row), so the new
/// process's status and `/metrics` count them. The socket closing means they are all gone.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Draining {
    /// The processes that hold them, oldest last.
    pub pids: Vec<u32>,
    /// Active sessions by listener name.
    pub listeners: Vec<(String, u64)>,
    /// Active sessions by pool and backend.
    pub backends: Vec<(String, SocketAddr, u64)>,
}

/// The descriptors that came with a message; each index may be taken once.
#[derive(Debug)]
pub struct Descriptors(Vec<Option<OwnedFd>>);

impl Descriptors {
    pub fn take(&mut self, index: usize) -> Result<OwnedFd, HandoverError> {
        self.0.get_mut(index).and_then(Option::take).ok_or_else(|| {
            HandoverError::Malformed(format!("descriptor {index} missing or used twice"))
        })
    }
}

/// Sends `message` with `fds` attached, blocking for at most `timeout` per packet.
pub fn send(
    socket: &Socket,
    message: &impl Serialize,
    fds: &[BorrowedFd<'_>],
    timeout: Duration,
) -> Result<(), HandoverError> {
    let json = serde_json::to_vec(message).map_err(|e| HandoverError::Malformed(e.to_string()))?;
    socket.set_write_timeout(Some(timeout))?;
    let fd = socket.as_fd();
    for batch in fds.chunks(sys::MAX_FDS_PER_MESSAGE) {
        sys::send_with_fds(fd, b"F", batch).map_err(timed_out(timeout))?;
    }
    let mut packet = Vec::with_capacity(CHUNK + 1);
    let mut chunks = json.chunks(CHUNK).peekable();
    loop {
        let chunk = chunks.next().unwrap_or_default();
        let last = chunks.peek().is_none();
        packet.clear();
        packet.push(if last { b'E' } else { b'D' });
        packet.extend_from_slice(chunk);
        sys::send_with_fds(fd, &packet, &[]).map_err(timed_out(timeout))?;
        if last {
            return Ok(());
        }
    }
}

/// Receives one message, waiting until `deadline` at most.
pub fn recv<T: DeserializeOwned>(
    socket: &Socket,
    deadline: Instant,
) -> Result<(T, Descriptors), HandoverError> {
    let mut fds = Vec::new();
    let mut json = Vec::new();
    let mut buf = vec![0u8; CHUNK + 1];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(HandoverError::Timeout(Duration::ZERO));
        }
        socket.set_read_timeout(Some(left))?;
        let (n, received) =
            sys::recv_with_fds(socket.as_fd(), &mut buf).map_err(timed_out(left))?;
        fds.extend(received.into_iter().map(Some));
        let Some((&kind, data)) = buf.get(..n).and_then(<[u8]>::split_first) else {
            return Err(HandoverError::Closed);
        };
        if fds.len() > MAX_FDS || json.len() + data.len() > MAX_JSON {
            return Err(HandoverError::Malformed("message too large".into()));
        }
        match kind {
            b'F' => {}
            b'D' => json.extend_from_slice(data),
            b'E' => {
                json.extend_from_slice(data);
                break;
            }
            other => {
                return Err(HandoverError::Malformed(format!(
                    "unknown packet kind {other:#04x}"
                )))
            }
        }
    }
    let message =
        serde_json::from_slice(&json).map_err(|e| HandoverError::Malformed(e.to_string()))?;
    Ok((message, Descriptors(fds)))
}

fn timed_out(timeout: Duration) -> impl Fn(io::Error) -> HandoverError {
    move |e| match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => HandoverError::Timeout(timeout),
        // The other end exited while we sent, or with data it never read.
        io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe => HandoverError::Closed,
        _ => HandoverError::Io(e),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use socket2::{Domain, Type};

    fn pair() -> (Socket, Socket) {
        Socket::pair(Domain::UNIX, Type::SEQPACKET, None).unwrap()
    }

    fn soon() -> Instant {
        Instant::now() + Duration::from_secs(5)
    }

    #[test]
    fn a_large_message_with_many_descriptors_arrives_whole() {
        let (a, b) = pair();
        let files: Vec<std::fs::File> = (0..600)
            .map(|_| std::fs::File::open("/dev/null").unwrap())
            .collect();
        let flows = Flows {
            flows: (0..600)
                .map(|i| FlowEntry {
                    worker: i % 3,
                    listener: "dns".into(),
                    listener_addr: "127.0.0.1:53".parse().unwrap(),
                    client: SocketAddr::from(([10, 0, (i / 256) as u8, (i % 256) as u8], 4000)),
                    backend: "127.0.0.1:5353".parse().unwrap(),
                    local: "127.0.0.1:53".parse().unwrap(),
                    reply_from: None,
                    fd: i,
                })
                .collect(),
        };
        let sender = std::thread::spawn(move || {
            let fds: Vec<BorrowedFd<'_>> = files.iter().map(AsFd::as_fd).collect();
            send(&a, &flows, &fds, Duration::from_secs(5)).unwrap();
        });
        let (got, mut descriptors): (Flows, _) = recv(&b, soon()).unwrap();
        sender.join().unwrap();
        assert_eq!(got.flows.len(), 600);
        for entry in &got.flows {
            descriptors.take(entry.fd).unwrap();
        }
        assert!(matches!(
            descriptors.take(0),
            Err(HandoverError::Malformed(_))
        ));
    }

    #[test]
    fn malformed_input_is_an_error_not_a_panic() {
        let (a, b) = pair();
        for garbage in [&b"Xjunk"[..], b"E{not json", b"E{\"flows\": 3}"] {
            sys::send_with_fds(a.as_fd(), garbage, &[]).unwrap();
            assert!(matches!(
                recv::<Flows>(&b, soon()),
                Err(HandoverError::Malformed(_))
            ));
        }
        drop(a);
        assert!(matches!(
            recv::<Flows>(&b, soon()),
            Err(HandoverError::Closed)
        ));
    }

    #[test]
    fn silence_times_out() {
        let (_a, b) = pair();
        let deadline = Instant::now() + Duration::from_millis(50);
        assert!(matches!(
            recv::<Flows>(&b, deadline),
            Err(HandoverError::Timeout(_))
        ));
    }
}
