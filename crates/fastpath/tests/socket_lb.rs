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

fn tcp_service(addr: SocketAddr) -> ServiceAddr {
    ServiceAddr {
        addr,
        transport: Transport::Tcp,
    }
}

fn slot(addr: SocketAddr, counter: u16) -> Slot {
    Slot {
        addr,
        counter,
        weight: 1,
        limit: 0,
    }
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
    let service = tcp_service(listener);
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
    let service = tcp_service(listener);
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

/// A TCP backend that greets each connection with "<name>\n", reads until the client's EOF,
/// answers how many bytes it read, and closes: sessions stay open as long as the client wants.
fn holding_backend(name: &'static str) -> SocketAddr {
    use std::io::Read;
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    thread::spawn(move || {
        for stream in listener.incoming().take(1000) {
            let Ok(mut stream) = stream else { return };
            thread::spawn(move || {
                let _ = writeln!(stream, "{name}");
                let mut sink = Vec::new();
                let _ = stream.read_to_end(&mut sink);
                let _ = write!(stream, "{}", sink.len());
            });
        }
    });
    addr
}

/// Waits (bounded) until the kernel has reported `count` session ends.
fn wait_for_events(lb: &mut SocketLb, count: usize) -> Vec<ballast_fastpath::SessionEvent> {
    let mut events = Vec::new();
    for _ in 0..250 {
        events.extend(lb.take_events(1024));
        if events.len() >= count {
            break;
        }
        thread::sleep(std::time::Duration::from_millis(20));
    }
    events
}

#[test]
fn session_ends_are_reported_with_their_bytes_and_failed_connects_as_such() {
    if !privileged() {
        return;
    }
    let cgroup = TestCgroup::new("events");
    let backend = holding_backend("a");
    // An address where nothing listens: the connect is refused.
    let closed = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let (listener, _) = counting_listener("127.0.0.1:0");
    let (refusing, _) = counting_listener("127.0.0.1:0");
    let mut lb = SocketLb::attach(Some(&cgroup.0)).unwrap();
    let service = tcp_service(listener);
    let dead = tcp_service(refusing);
    lb.set_service(service, Algorithm::RoundRobin, 1, &[slot(backend, 4)])
        .unwrap();
    lb.set_service(dead, Algorithm::RoundRobin, 1, &[slot(closed, 5)])
        .unwrap();

    let script = format!(
        r#"
import socket
s = socket.create_connection(('127.0.0.1', {port}), timeout=5)
f = s.makefile('rb')
f.readline()
s.sendall(b'x' * 100000)
s.shutdown(socket.SHUT_WR)
print(f.read().decode(), '%s:%d' % s.getsockname())
s.close()
try:
    socket.create_connection(('127.0.0.1', {dead}), timeout=5)
    print('connected')
except ConnectionRefusedError:
    print('refused')
"#,
        port = listener.port(),
        dead = refusing.port()
    );
    let out = cgroup.run_python(&script);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    let (echoed, client) = lines[0].split_once(' ').unwrap();
    assert_eq!(echoed, "100000", "the backend read everything");
    assert_eq!(
        lines[1], "refused",
        "the steered connect reached the closed port"
    );

    let events = wait_for_events(&mut lb, 2);
    assert_eq!(events.len(), 2, "{events:?}");
    let closed_session = events
        .iter()
        .find(|e| e.end == ballast_fastpath::SessionEnd::Closed)
        .unwrap();
    assert_eq!(closed_session.counter, 4);
    assert_eq!(lb.service_of(closed_session.service_id), Some(service));
    assert_eq!(closed_session.backend, backend);
    assert_eq!(closed_session.client.to_string(), client);
    // What was sent, within the one sequence number each side's FIN takes.
    assert!(
        (100_000..=100_001).contains(&closed_session.bytes_to_backend),
        "{closed_session:?}"
    );
    // The greeting "a\n" and the count "100000".
    assert!(
        (8..=9).contains(&closed_session.bytes_from_backend),
        "{closed_session:?}"
    );
    assert!(closed_session.connect_time.is_some());
    assert!(closed_session.duration >= closed_session.connect_time.unwrap());

    let failed = events
        .iter()
        .find(|e| e.end == ballast_fastpath::SessionEnd::ConnectFailed)
        .unwrap();
    assert_eq!((failed.counter, failed.backend), (5, closed));
    assert_eq!(failed.connect_time, None);
    // Every steered session has ended: none is counted as live.
    assert_eq!(lb.steered_active(4) + lb.steered_active(5), 0);
    assert_eq!(lb.events_lost(), 0);
}

#[test]
fn least_connections_and_limits_count_live_sessions_of_both_paths() {
    if !privileged() {
        return;
    }
    let cgroup = TestCgroup::new("lc");
    let a = holding_backend("a");
    let b = holding_backend("b");
    let (listener, accepted) = counting_listener("127.0.0.1:0");
    let mut lb = SocketLb::attach(Some(&cgroup.0)).unwrap();
    let service = tcp_service(listener);
    lb.set_service(
        service,
        Algorithm::LeastConnections,
        2,
        &[slot(a, 10), slot(b, 11)],
    )
    .unwrap();

    // Four held sessions spread two and two; once both of a's end, the next two go to a,
    // where round robin would have alternated. A session has ended for the kernel once the
    // client has read the backend's EOF (the FIN that moved it to TIME_WAIT came first).
    let script = format!(
        r#"
import socket
addr = ('127.0.0.1', {port})
def open_one():
    s = socket.create_connection(addr, timeout=5)
    f = s.makefile('rb')
    return s, f, f.readline().decode().strip()
def finish(held):
    s, f, name = held
    s.shutdown(socket.SHUT_WR)
    f.read()
    s.close()
held = [open_one() for _ in range(4)]
print(' '.join(h[2] for h in held))
for h in [h for h in held if h[2] == 'a']:
    finish(h)
more = [open_one() for _ in range(2)]
print(' '.join(h[2] for h in more))
"#,
        port = listener.port()
    );
    let out = cgroup.run_python(&script);
    let lines: Vec<&str> = out.lines().collect();
    let mut first: Vec<&str> = lines[0].split(' ').collect();
    first.sort_unstable();
    assert_eq!(first, ["a", "a", "b", "b"], "{out}");
    assert_eq!(lines[1], "a a", "{out}");
    // The script has exited: every session ended.
    let _ = wait_for_events(&mut lb, 6);
    assert_eq!(lb.steered_active(10) + lb.steered_active(11), 0);

    // Sessions the relay holds count too: with a busy on the relay, new ones go to b.
    lb.set_relay_active(10, 5).unwrap();
    let script = format!(
        r#"
import socket
held = []
for _ in range(3):
    s = socket.create_connection(('127.0.0.1', {port}), timeout=5)
    f = s.makefile('rb')
    held.append((s, f))
    print(f.readline().decode().strip())
"#,
        port = listener.port()
    );
    assert_eq!(cgroup.run_python(&script), "b\nb\nb\n");
    lb.set_relay_active(10, 0).unwrap();

    // A limit: b may have one session. The second connect finds it full and, with a alone
    // left, neither is open once a's limit is reached too: that connect reaches the listener.
    let mut limited_a = slot(a, 10);
    limited_a.limit = 1;
    let mut limited_b = slot(b, 11);
    limited_b.limit = 1;
    lb.set_service(service, Algorithm::RoundRobin, 2, &[limited_a, limited_b])
        .unwrap();
    let _ = wait_for_events(&mut lb, 3);
    let script = format!(
        r#"
import socket
held = []
for _ in range(3):
    s = socket.create_connection(('127.0.0.1', {port}), timeout=5)
    f = s.makefile('rb')
    held.append((s, f))
    print(f.readline().decode().split()[0])
"#,
        port = listener.port()
    );
    let out = cgroup.run_python(&script);
    let mut names: Vec<&str> = out.lines().collect();
    names.sort_unstable();
    assert_eq!(names, ["a", "b", "listener"], "{out}");
    assert_eq!(accepted.load(Ordering::Relaxed), 1);
}

#[test]
fn an_unconnected_udp_socket_keeps_its_backend_while_the_backend_is_in_the_table() {
    if !privileged() {
        return;
    }
    let cgroup = TestCgroup::new("udpsticky");
    let named_udp = |name: &'static str| {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = socket.local_addr().unwrap();
        thread::spawn(move || {
            let mut buf = [0u8; 64];
            for _ in 0..200 {
                let Ok((_, peer)) = socket.recv_from(&mut buf) else {
                    return;
                };
                let _ = socket.send_to(name.as_bytes(), peer);
            }
        });
        addr
    };
    let a = named_udp("a");
    let b = named_udp("b");
    let service_addr = UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut lb = SocketLb::attach(Some(&cgroup.0)).unwrap();
    let service = ServiceAddr {
        addr: service_addr,
        transport: Transport::Udp,
    };
    lb.set_service(
        service,
        Algorithm::RoundRobin,
        2,
        &[slot(a, 20), slot(b, 21)],
    )
    .unwrap();
    // One socket, many datagrams: one flow, one backend, as the relay keeps a flow. Between
    // the rounds the script hands over through two files: its first answers, then the test's
    // word that the table changed.
    let dir = std::env::temp_dir().join(format!("ballast-udpsticky-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let first = dir.join("first");
    let switched = dir.join("switched");
    let script = format!(
        r#"
import os, socket, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(5)
def round():
    names = []
    for _ in range(10):
        s.sendto(b'x', ('127.0.0.1', {port}))
        names.append(s.recvfrom(64)[0].decode())
    return ' '.join(names)
with open('{first}.tmp', 'w') as f:
    f.write(round())
os.rename('{first}.tmp', '{first}')
for _ in range(500):
    if os.path.exists('{switched}'):
        break
    time.sleep(0.01)
print(round())
"#,
        port = service_addr.port(),
        first = first.display(),
        switched = switched.display(),
    );
    // A scoped thread runs the client while this one watches its first round.
    let out = thread::scope(|scope| {
        let client = scope.spawn(|| cgroup.run_python(&script));
        let mut names = String::new();
        for _ in 0..500 {
            if let Ok(text) = std::fs::read_to_string(&first) {
                names = text;
                break;
            }
            thread::sleep(std::time::Duration::from_millis(10));
        }
        let round_one: Vec<&str> = names.split_whitespace().collect();
        assert_eq!(round_one.len(), 10, "{names}");
        assert!(
            round_one.iter().all(|n| *n == round_one[0]),
            "one flow spread: {names}"
        );
        // Its backend leaves the table: the same socket's next datagrams go to the one left.
        let (left, remaining) = if round_one[0] == "a" {
            ("b", slot(b, 21))
        } else {
            ("a", slot(a, 20))
        };
        lb.set_service(service, Algorithm::RoundRobin, 2, &[remaining])
            .unwrap();
        std::fs::write(&switched, "").unwrap();
        (left, client.join().unwrap())
    });
    let (left, out) = out;
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        out.split_whitespace().count() == 10 && out.split_whitespace().all(|n| n == left),
        "expected every reply from {left}: {out}"
    );
}
