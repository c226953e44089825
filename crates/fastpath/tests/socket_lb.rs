//! The socket-level load balancer on the real kernel: a cgroup of its own, clients started
//! inside it, real backends on 127.0.0.1 (and on [::1] for IPv6). Needs root (CAP_BPF, cgroup v2); skips with a
//! message on a laptop without it, and fails instead under CI=true.
#![allow(clippy::unwrap_used)]

#[path = "../../ballast/tests/common/cgroup.rs"]
mod cgroup;
#[path = "../../ballast/tests/common/require.rs"]
mod require;

use cgroup::TestCgroup;

use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, UdpSocket};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;

use ballast_fastpath::{cgroup2_root, Algorithm, ServiceAddr, Slot, SocketLb, Transport};

fn privileged() -> bool {
    if !require::require_root("load BPF programs and make a cgroup") {
        return false;
    }
    if cgroup2_root().is_err() {
        require::skip("no cgroup v2 mount");
        return false;
    }
    require::require_tool("python3", "python3")
}

/// A TCP backend that answers each connection with "<name> <peer>\n" and closes.
fn tcp_backend(name: &'static str) -> SocketAddr {
    tcp_backend_on("127.0.0.1:0", name)
}

/// The same, on `bind` (an address with port 0).
fn tcp_backend_on(bind: &str, name: &'static str) -> SocketAddr {
    let listener = TcpListener::bind(bind).unwrap();
    let addr = listener.local_addr().unwrap();
    thread::spawn(move || {
        for stream in listener.incoming().take(1000) {
            let Ok(mut stream) = stream else { return };
            let peer = stream.peer_addr().unwrap();
            let _ = writeln!(stream, "{name} {peer}");
            let _ = stream.shutdown(Shutdown::Write);
        }
    });
    addr
}

/// The "listener": a real socket on the service address that counts what reaches it.
fn counting_listener(bind: &str) -> (SocketAddr, Arc<AtomicU64>) {
    let listener = TcpListener::bind(bind).unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicU64::new(0));
    let count = accepted.clone();
    thread::spawn(move || {
        for stream in listener.incoming().take(1000) {
            let Ok(mut stream) = stream else { return };
            count.fetch_add(1, Ordering::Relaxed);
            let _ = writeln!(stream, "listener -");
        }
    });
    (addr, accepted)
}

const TCP_CLIENT: &str = r#"
import socket, sys
addr = ('127.0.0.1', int(sys.argv[1]))
for _ in range(int(sys.argv[2])):
    s = socket.create_connection(addr, timeout=5)
    line = s.makefile().readline().split()
    print(line[0], line[1], '%s:%d' % s.getpeername(), '%s:%d' % s.getsockname())
    s.close()
"#;

fn tcp_client(cgroup: &TestCgroup, port: u16, count: usize) -> Vec<Vec<String>> {
    let script = TCP_CLIENT.replace("int(sys.argv[1])", &port.to_string());
    let script = script.replace("int(sys.argv[2])", &count.to_string());
    cgroup
        .run_python(&script)
        .lines()
        .map(|l| l.split_whitespace().map(str::to_string).collect())
        .collect()
}

fn slot(addr: SocketAddr, counter: u16) -> Slot {
    Slot { addr, counter }
}

#[test]
fn connects_are_steered_to_the_table_and_the_client_sees_the_listener() {
    if !privileged() {
        return;
    }
    let cgroup = TestCgroup::new("tcp");
    let a = tcp_backend("a");
    let b = tcp_backend("b");
    let (listener, accepted) = counting_listener("127.0.0.1:0");
    let mut lb = SocketLb::attach(Some(&cgroup.0)).unwrap();
    let service = ServiceAddr {
        addr: listener,
        transport: Transport::Tcp,
    };
    // Weights 3:1, as the table builder expands them.
    let table = [slot(a, 0), slot(b, 1), slot(a, 0), slot(a, 0)];
    lb.set_service(service, Algorithm::RoundRobin, 8, &table)
        .unwrap();

    let lines = tcp_client(&cgroup, listener.port(), 40);
    assert_eq!(lines.len(), 40);
    let on = |name: &str| lines.iter().filter(|l| l[0] == name).count();
    // Per-CPU cursors: each CPU walks the cycle, so a short run is close to, not exactly, 3:1.
    assert!(on("a") >= 24 && on("b") >= 6, "a {} b {}", on("a"), on("b"));
    assert_eq!(on("listener"), 0);
    for line in &lines {
        // The client's getpeername() shows the address it dialled; the backend saw the
        // client's own address (no balancer in between).
        assert_eq!(line[2], listener.to_string(), "{line:?}");
        assert_eq!(line[1], line[3], "the backend saw another peer: {line:?}");
    }
    assert_eq!(accepted.load(Ordering::Relaxed), 0);
    assert_eq!(lb.service_connects(service), 40);
    assert_eq!(
        lb.backend_connects(0) + lb.backend_connects(1),
        40,
        "per-backend counters"
    );

    // An empty table (no backend available) leaves connects to the real listener.
    lb.set_service(service, Algorithm::RoundRobin, 8, &[])
        .unwrap();
    let lines = tcp_client(&cgroup, listener.port(), 3);
    assert!(lines.iter().all(|l| l[0] == "listener"), "{lines:?}");
    assert_eq!(accepted.load(Ordering::Relaxed), 3);

    // A switched table takes effect for the next connect.
    lb.set_service(service, Algorithm::Random, 8, &[slot(b, 1)])
        .unwrap();
    let lines = tcp_client(&cgroup, listener.port(), 5);
    assert!(lines.iter().all(|l| l[0] == "b"), "{lines:?}");

    // This process's own connects are never steered.
    let mut own = std::net::TcpStream::connect(listener).unwrap();
    let mut reply = String::new();
    BufReader::new(&mut own).read_line(&mut reply).unwrap();
    assert!(reply.starts_with("listener"), "{reply}");

    // Dropping the balancer detaches every program.
    drop(lb);
    let lines = tcp_client(&cgroup, listener.port(), 2);
    assert!(lines.iter().all(|l| l[0] == "listener"), "{lines:?}");
}

#[test]
fn ipv6_connects_are_steered_to_ipv6_backends_and_the_client_sees_the_listener() {
    if !privileged() {
        return;
    }
    let cgroup = TestCgroup::new("tcp6");
    let a = tcp_backend_on("[::1]:0", "a");
    let b = tcp_backend_on("[::1]:0", "b");
    let (listener, accepted) = counting_listener("[::1]:0");
    // An IPv4 backend, which the IPv6 service's table leaves out.
    let v4 = tcp_backend("v4");
    let mut lb = SocketLb::attach(Some(&cgroup.0)).unwrap();
    let service = ServiceAddr {
        addr: listener,
        transport: Transport::Tcp,
    };
    // A slot of the other family is left out: connect6 cannot steer to an IPv4 address.
    let table = [slot(a, 3), slot(b, 4), slot(v4, 5)];
    lb.set_service(service, Algorithm::RoundRobin, 4, &table)
        .unwrap();

    let script = format!(
        r#"
import socket
for _ in range(20):
    s = socket.create_connection(('::1', {port}), timeout=5)
    line = s.makefile().readline().split()
    print(line[0], line[1], '[%s]:%d' % s.getpeername()[:2], '[%s]:%d' % s.getsockname()[:2])
    s.close()
"#,
        port = listener.port()
    );
    let out = cgroup.run_python(&script);
    let lines: Vec<Vec<&str>> = out
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(lines.len(), 20, "{out}");
    let on = |name: &str| lines.iter().filter(|l| l[0] == name).count();
    assert!(on("a") >= 5 && on("b") >= 5, "{out}");
    assert_eq!(on("a") + on("b"), 20, "{out}");
    for line in &lines {
        assert_eq!(line[2], listener.to_string(), "{line:?}");
        assert_eq!(line[1], line[3], "the backend saw another peer: {line:?}");
    }
    assert_eq!(accepted.load(Ordering::Relaxed), 0);
    assert_eq!(lb.service_connects(service), 20);
    assert_eq!(lb.backend_connects(3) + lb.backend_connects(4), 20);
    assert_eq!(lb.backend_connects(5), 0);

    // Removed, the service's connects reach the real listener again.
    lb.remove_service(service).unwrap();
    let out = cgroup.run_python(
        &format!(
            "import socket\ns = socket.create_connection(('::1', {}), timeout=5)\nprint(s.makefile().readline().strip())",
            listener.port()
        ),
    );
    assert_eq!(out.trim(), "listener -");
}

#[test]
fn unconnected_udp_is_steered_and_replies_come_from_the_listener_address() {
    if !privileged() {
        return;
    }
    udp_is_steered("udp", "127.0.0.1");
}

#[test]
fn ipv6_udp_is_steered_and_replies_come_from_the_listener_address() {
    if !privileged() {
        return;
    }
    udp_is_steered("udp6", "::1");
}

/// Unconnected sends and a connected UDP socket to a service on `host` (sendmsg and connect
/// hooks of its family) reach a backend on `host`, and replies show the service's address.
fn udp_is_steered(name: &str, host: &str) {
    let cgroup = TestCgroup::new(name);
    let bind = SocketAddr::new(host.parse().unwrap(), 0);
    let backend = UdpSocket::bind(bind).unwrap();
    let backend_addr = backend.local_addr().unwrap();
    thread::spawn(move || {
        let mut buf = [0u8; 1500];
        for _ in 0..100 {
            let Ok((n, peer)) = backend.recv_from(&mut buf) else {
                return;
            };
            let mut reply = b"echo ".to_vec();
            reply.extend_from_slice(&buf[..n]);
            let _ = backend.send_to(&reply, peer);
        }
    });
    // Nothing listens on the service address: a datagram that is not steered is lost.
    let service_addr = {
        let s = UdpSocket::bind(bind).unwrap();
        s.local_addr().unwrap()
    };
    let mut lb = SocketLb::attach(Some(&cgroup.0)).unwrap();
    let service = ServiceAddr {
        addr: service_addr,
        transport: Transport::Udp,
    };
    lb.set_service(service, Algorithm::RoundRobin, 4, &[slot(backend_addr, 2)])
        .unwrap();
    let script = format!(
        r#"
import socket
family = socket.AF_INET6 if ':' in '{host}' else socket.AF_INET
shape = '[%s]:%d' if ':' in '{host}' else '%s:%d'
s = socket.socket(family, socket.SOCK_DGRAM)
s.settimeout(5)
for i in range(3):
    s.sendto(b'ping %d' % i, ('{host}', {port}))
    data, peer = s.recvfrom(1500)
    print(data.decode(), shape % peer[:2])
c = socket.socket(family, socket.SOCK_DGRAM)
c.settimeout(5)
c.connect(('{host}', {port}))
c.send(b'connected')
print(c.recv(1500).decode(), shape % c.getpeername()[:2])
"#,
        port = service_addr.port()
    );
    let out = cgroup.run_python(&script);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 4, "{out}");
    for (i, line) in lines.iter().take(3).enumerate() {
        assert_eq!(*line, format!("echo ping {i} {service_addr}"));
    }
    assert_eq!(lines[3], format!("echo connected {service_addr}"));
    // Three sends and one connect were steered.
    assert_eq!(lb.backend_connects(2), 4);
}
