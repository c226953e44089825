//! The UDP data plane against real sockets on 127.0.0.1: flows, batching, limits, failover.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use ballast_dataplane::route::{
    BackendState, ListenerRoute, ListenerState, PassivePolicy, Protocol, RouteTable, UdpSettings,
};
use ballast_dataplane::{Command, Dataplane, DataplaneConfig, DataplaneHandle, ListenerSpec};
use common::{listener_route, round_robin_pool};

const IO_TIMEOUT: Duration = Duration::from_secs(5);

struct Balancer {
    handle: DataplaneHandle,
    addr: SocketAddr,
    listener: Arc<ListenerState>,
    backends: Vec<Arc<BackendState>>,
}

impl Drop for Balancer {
    fn drop(&mut self) {
        self.handle.command(Command::Shutdown);
        self.handle.wait(Duration::from_secs(5));
    }
}

fn start(backends: &[SocketAddr], workers: usize, udp: UdpSettings) -> Balancer {
    start_on("127.0.0.1:0", backends, workers, udp)
}

fn start_on(listen: &str, backends: &[SocketAddr], workers: usize, udp: UdpSettings) -> Balancer {
    let pool = round_robin_pool(
        backends,
        2,
        Some(PassivePolicy {
            max_fails: 1,
            fail_timeout: Duration::from_secs(30),
        }),
    );
    let states = pool.backends.iter().map(|b| b.state.clone()).collect();
    let route = ListenerRoute {
        udp,
        ..listener_route("udp", Protocol::Udp, pool)
    };
    let state = route.state.clone();
    let handle = Dataplane::start(
        DataplaneConfig {
            workers,
            listeners: vec![ListenerSpec {
                name: "udp".into(),
                protocol: Protocol::Udp,
                addrs: vec![listen.parse().unwrap()],
                shared_port: false,
            }],
            force_copy: false,
        },
        Arc::new(RouteTable::new([route])),
    )
    .unwrap();
    let addr = handle.bound()[0].1;
    Balancer {
        handle,
        addr,
        listener: state,
        backends: states,
    }
}

/// A UDP echo backend that prefixes each reply with its tag; stops when `stop` is set or
/// the returned flag is dropped... it runs until the socket is closed by `kill`.
struct EchoBackend {
    addr: SocketAddr,
    alive: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl EchoBackend {
    fn kill(&mut self) {
        self.alive.store(false, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }
}

impl Drop for EchoBackend {
    fn drop(&mut self) {
        self.kill();
    }
}

fn echo_backend(tag: u8) -> EchoBackend {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(20)))
        .unwrap();
    let addr = socket.local_addr().unwrap();
    let alive = Arc::new(AtomicBool::new(true));
    let flag = alive.clone();
    let thread = thread::spawn(move || {
        let mut buf = vec![0u8; 70_000];
        let mut out = Vec::with_capacity(70_000);
        while flag.load(Ordering::Relaxed) {
            let Ok((n, peer)) = socket.recv_from(&mut buf) else {
                continue;
            };
            out.clear();
            if n > 0 {
                out.push(tag);
                out.extend_from_slice(&buf[..n.min(65_000)]);
            }
            let _ = socket.send_to(&out, peer);
        }
    });
    EchoBackend {
        addr,
        alive,
        thread: Some(thread),
    }
}

fn client() -> UdpSocket {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s
}

/// Sends `msg` and returns the reply and where it came from.
fn exchange(sock: &UdpSocket, to: SocketAddr, msg: &[u8]) -> (Vec<u8>, SocketAddr) {
    sock.send_to(msg, to).unwrap();
    let mut buf = vec![0u8; 70_000];
    let (n, from) = sock.recv_from(&mut buf).unwrap();
    buf.truncate(n);
    (buf, from)
}

fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn replies_come_from_the_listener_and_a_client_sticks_to_one_backend() {
    let backends = [echo_backend(b'a'), echo_backend(b'b'), echo_backend(b'c')];
    let addrs: Vec<_> = backends.iter().map(|b| b.addr).collect();
    let lb = start(&addrs, 2, UdpSettings::default());
    let mut tags = std::collections::HashMap::new();
    // Every client socket stays open to the end: a dropped one's port could be handed to a
    // later client, which would then arrive as the earlier client, on its flow, with no pick.
    let mut clients = Vec::new();
    for c in 0..30 {
        let sock = client();
        let mut seen = None;
        for i in 0..20u32 {
            let msg = format!("client {c} datagram {i}");
            let (reply, from) = exchange(&sock, lb.addr, msg.as_bytes());
            assert_eq!(from, lb.addr, "reply must come from the listener address");
            assert_eq!(&reply[1..], msg.as_bytes());
            match seen {
                None => seen = Some(reply[0]),
                Some(tag) => assert_eq!(tag, reply[0], "client {c} changed backend"),
            }
        }
        *tags.entry(seen.unwrap()).or_insert(0) += 1;
        clients.push(sock);
    }
    assert_eq!(tags.len(), 3, "{tags:?}");
    assert!(
        tags.values().all(|n| *n == 10),
        "round robin over flows: {tags:?}"
    );
    assert_eq!(lb.listener.udp_flows_total.load(Ordering::Relaxed), 30);
    let to_backends: u64 = lb
        .backends
        .iter()
        .map(|b| b.datagrams_to_backend.load(Ordering::Relaxed))
        .sum();
    assert_eq!(to_backends, 600);
}

#[test]
fn empty_and_largest_datagrams_pass() {
    let backend = echo_backend(b'x');
    let lb = start(&[backend.addr], 1, UdpSettings::default());
    let sock = client();
    // An empty datagram comes back empty (the echo adds no tag to it).
    let (reply, _) = exchange(&sock, lb.addr, b"");
    assert!(reply.is_empty());
    // The largest IPv4 UDP payload; the echo returns the first 65 000 bytes behind its tag.
    let big: Vec<u8> = (0..65_507u32).map(|i| (i % 251) as u8).collect();
    let (reply, _) = exchange(&sock, lb.addr, &big);
    assert_eq!(reply.len(), 65_001);
    assert_eq!(&reply[1..], &big[..65_000]);
}

#[test]
fn flows_expire_after_the_idle_timeout() {
    let backend = echo_backend(b'x');
    let lb = start(
        &[backend.addr],
        2,
        UdpSettings {
            idle_timeout: Duration::from_millis(200),
            max_flows: 1000,
            ..UdpSettings::default()
        },
    );
    // Held open: a dropped socket's port could come back as a later client, on the same flow.
    let clients: Vec<UdpSocket> = (0..10).map(|_| client()).collect();
    for sock in &clients {
        exchange(sock, lb.addr, b"hello");
    }
    assert_eq!(lb.listener.udp_flows_active.load(Ordering::Relaxed), 10);
    let started = Instant::now();
    wait_until("flows to expire", || {
        lb.listener.udp_flows_active.load(Ordering::Relaxed) == 0
    });
    assert!(started.elapsed() >= Duration::from_millis(100));
    assert_eq!(lb.listener.udp_flows_expired.load(Ordering::Relaxed), 10);
}

#[test]
fn max_flows_bounds_the_table_and_serves_the_newest_clients() {
    let backend = echo_backend(b'x');
    let lb = start(
        &[backend.addr],
        1,
        UdpSettings {
            idle_timeout: Duration::from_secs(60),
            max_flows: 100,
            ..UdpSettings::default()
        },
    );
    let clients: Vec<UdpSocket> = (0..500).map(|_| client()).collect();
    for (i, sock) in clients.iter().enumerate() {
        let msg = format!("{i}");
        let (reply, _) = exchange(sock, lb.addr, msg.as_bytes());
        assert_eq!(&reply[1..], msg.as_bytes());
        assert!(lb.listener.udp_flows_active.load(Ordering::Relaxed) <= 100);
    }
    assert_eq!(lb.listener.udp_flows_active.load(Ordering::Relaxed), 100);
    assert_eq!(lb.listener.udp_flows_evicted.load(Ordering::Relaxed), 400);
    assert_eq!(lb.listener.udp_flows_total.load(Ordering::Relaxed), 500);
    // The newest 100 still have their flows: no new flow is created for them.
    for sock in &clients[400..] {
        exchange(sock, lb.addr, b"again");
    }
    assert_eq!(lb.listener.udp_flows_total.load(Ordering::Relaxed), 500);
}

#[test]
fn a_refusing_backend_moves_its_flows_to_a_live_one() {
    let mut dying = echo_backend(b'd');
    let live = echo_backend(b'l');
    let lb = start(&[dying.addr, live.addr], 1, UdpSettings::default());
    // Open flows until one lands on each backend (the tag in the reply says which).
    let mut doomed = None;
    let mut bystander = None;
    for _ in 0..10 {
        let sock = client();
        let (reply, _) = exchange(&sock, lb.addr, b"one");
        match reply[0] {
            b'd' if doomed.is_none() => doomed = Some(sock),
            b'l' if bystander.is_none() => bystander = Some(sock),
            _ => {}
        }
    }
    let (doomed, bystander) = (doomed.unwrap(), bystander.unwrap());
    dying.kill();
    // The next datagram reaches a closed port; the kernel's ICMP refusal ends the flow and a
    // later datagram is served by the live backend. UDP may lose the datagram that hit the
    // closed port, so the client retries a bounded number of times.
    doomed
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut moved = false;
    for _ in 0..25 {
        doomed.send_to(b"two", lb.addr).unwrap();
        let mut buf = [0u8; 64];
        if let Ok((n, _)) = doomed.recv_from(&mut buf) {
            assert_eq!(&buf[..n], b"ltwo");
            moved = true;
            break;
        }
    }
    assert!(moved, "the flow never moved to the live backend");
    assert!(
        lb.backends[0]
            .connect_errors_refused
            .load(Ordering::Relaxed)
            >= 1
    );
    // The bystander's flow was untouched.
    let (reply, _) = exchange(&bystander, lb.addr, b"three");
    assert_eq!(reply, b"lthree");
}

#[test]
fn datagrams_to_an_all_down_pool_are_dropped_and_counted() {
    let backend = echo_backend(b'x');
    let lb = start(&[backend.addr], 1, UdpSettings::default());
    lb.backends[0].set_healthy(false);
    let sock = client();
    sock.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    for _ in 0..5 {
        sock.send_to(b"anyone?", lb.addr).unwrap();
    }
    let mut buf = [0u8; 64];
    assert!(
        sock.recv_from(&mut buf).is_err(),
        "no reply from a dead pool"
    );
    wait_until("drops to be counted", || {
        lb.listener.udp_dropped_no_backend.load(Ordering::Relaxed) == 5
    });
    assert_eq!(lb.listener.udp_flows_active.load(Ordering::Relaxed), 0);
}

#[test]
fn a_burst_from_one_client_arrives_whole_and_in_order() {
    let backend = echo_backend(b'x');
    let lb = start(&[backend.addr], 1, UdpSettings::default());
    let sock = client();
    // Bursts larger than one receive batch, so runs split across batches too.
    for burst in 0..3u32 {
        for seq in 0..50u32 {
            sock.send_to(format!("{burst}:{seq}").as_bytes(), lb.addr)
                .unwrap();
        }
        for seq in 0..50u32 {
            let mut buf = [0u8; 64];
            let (n, _) = sock.recv_from(&mut buf).unwrap();
            assert_eq!(&buf[..n], format!("x{burst}:{seq}").as_bytes());
        }
    }
    assert_eq!(
        lb.backends[0].datagrams_to_backend.load(Ordering::Relaxed),
        150
    );
    assert_eq!(lb.listener.udp_flows_total.load(Ordering::Relaxed), 1);
}

/// A sender using generic segmentation offload (UDP_SEGMENT) hands the kernel one buffer for
/// many datagrams; Ballast's listener takes it coalesced (UDP_GRO) and forwards it with
/// UDP_SEGMENT: the backend still sees each datagram on its own, and counters count datagrams.
#[test]
fn gso_bursts_arrive_as_separate_datagrams() {
    use std::os::fd::AsFd;
    let backend = echo_backend(b'g');
    let lb = start(&[backend.addr], 1, UdpSettings::default());
    let sock = client();
    let mut burst = Vec::new();
    for seq in 0..11u8 {
        let len = if seq == 10 { 500 } else { 1000 };
        burst.extend(std::iter::repeat_n(seq, len));
    }
    let dest = socket2::SockAddr::from(lb.addr);
    let sent =
        ballast_dataplane::sys::send_segmented(sock.as_fd(), &burst, 1000, Some(&dest)).unwrap();
    assert_eq!(sent, burst.len());
    for seq in 0..11u8 {
        let mut buf = [0u8; 2048];
        let (n, from) = sock.recv_from(&mut buf).unwrap();
        assert_eq!(from, lb.addr);
        let len = if seq == 10 { 500 } else { 1000 };
        assert_eq!(n, len + 1, "datagram {seq}");
        assert_eq!(buf[0], b'g');
        assert!(
            buf[1..n].iter().all(|b| *b == seq),
            "datagram {seq} mixed up"
        );
    }
    assert_eq!(
        lb.backends[0].datagrams_to_backend.load(Ordering::Relaxed),
        11
    );
}

/// The syscall layer itself: with UDP_GRO on, a GSO burst arrives as one buffer that knows
/// its segment size, and sendmmsg re-segments it.
#[test]
fn the_datagram_batch_keeps_gro_segments() {
    use ballast_dataplane::sys::{enable_udp_gro, send_segmented, DatagramBatch};
    use std::os::fd::AsFd;
    let receiver = UdpSocket::bind("127.0.0.1:0").unwrap();
    receiver.set_nonblocking(true).unwrap();
    if !enable_udp_gro(receiver.as_fd()) {
        return common::require::skip("this kernel has no UDP_GRO");
    }
    let sender = client();
    let burst = vec![7u8; 4 * 1200 + 100];
    let dest = socket2::SockAddr::from(receiver.local_addr().unwrap());
    send_segmented(sender.as_fd(), &burst, 1200, Some(&dest)).unwrap();
    let mut batch = DatagramBatch::new(8, 65_536);
    let deadline = Instant::now() + IO_TIMEOUT;
    let n = loop {
        match batch.recv(receiver.as_fd()) {
            Ok(n) => break n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                assert!(Instant::now() < deadline, "nothing received");
                thread::sleep(Duration::from_millis(1));
            }
            Err(e) => panic!("{e}"),
        }
    };
    assert_eq!(n, 1, "the burst arrives as one coalesced buffer");
    assert_eq!(batch.segments(0), (5, 1200));
    // Forwarded with UDP_SEGMENT, a plain receiver gets the five datagrams back.
    let plain = client();
    let to = socket2::SockAddr::from(plain.local_addr().unwrap());
    assert_eq!(
        batch.send(receiver.as_fd(), 0..1, Some(&to), None).unwrap(),
        1
    );
    let mut sizes = Vec::new();
    for _ in 0..5 {
        let mut buf = [0u8; 2048];
        let (len, _) = plain.recv_from(&mut buf).unwrap();
        sizes.push(len);
    }
    assert_eq!(sizes, [1200, 1200, 1200, 1200, 100]);
}

/// On a wildcard listener the reply must come from the address the client sent to: a client
/// that talks to 127.0.0.2 (a VIP, a second address) and gets an answer from 127.0.0.1 drops
/// it (dig: "reply from unexpected source").
#[test]
fn a_wildcard_listener_replies_from_the_address_the_client_used() {
    let backend = echo_backend(b'w');
    let lb = start_on("0.0.0.0:0", &[backend.addr], 2, UdpSettings::default());
    let port = lb.addr.port();
    for last in [1u8, 2, 3] {
        let target: SocketAddr = format!("127.0.0.{last}:{port}").parse().unwrap();
        let sock = client();
        let (reply, from) = exchange(&sock, target, b"where from?");
        assert_eq!(reply, b"wwhere from?");
        assert_eq!(from, target, "reply to a datagram sent to {target}");
    }
}

/// Clients sharing a listener interleave in a receive batch; each client's datagrams must
/// still reach the backend, and the replies the client, complete and in order. Every
/// client's datagrams have one size (the last of each burst shorter), so runs are grouped
/// per client and leave coalesced with UDP_SEGMENT both ways.
#[test]
fn interleaved_clients_each_get_their_datagrams_in_order() {
    let backend = echo_backend(b'i');
    let lb = start(&[backend.addr], 1, UdpSettings::default());
    const CLIENTS: usize = 4;
    const PER_BURST: usize = 30;
    let clients: Vec<UdpSocket> = (0..CLIENTS).map(|_| client()).collect();
    let message = |c: usize, burst: usize, seq: usize| {
        let size = if seq == PER_BURST - 1 {
            12
        } else {
            20 + 10 * c
        };
        let mut m = format!("{c}/{burst}/{seq}/").into_bytes();
        m.resize(size, b'.');
        m
    };
    for burst in 0..2 {
        for seq in 0..PER_BURST {
            for (c, sock) in clients.iter().enumerate() {
                sock.send_to(&message(c, burst, seq), lb.addr).unwrap();
            }
        }
        for (c, sock) in clients.iter().enumerate() {
            for seq in 0..PER_BURST {
                let mut buf = [0u8; 128];
                let (n, from) = sock.recv_from(&mut buf).unwrap();
                assert_eq!(from, lb.addr);
                let want = message(c, burst, seq);
                assert_eq!(buf[0], b'i');
                assert_eq!(
                    &buf[1..n],
                    &want[..],
                    "client {c}, burst {burst}, datagram {seq}"
                );
            }
        }
    }
    assert_eq!(
        lb.backends[0].datagrams_to_backend.load(Ordering::Relaxed),
        (2 * CLIENTS * PER_BURST) as u64
    );
}

/// The syscall layer: datagrams received one by one leave coalesced, one UDP_SEGMENT message
/// per run of one size, and a plain receiver gets exactly the datagrams that were sent.
#[test]
fn the_datagram_batch_coalesces_runs_of_one_size() {
    use ballast_dataplane::sys::{enable_udp_gro, DatagramBatch};
    use std::os::fd::AsFd;
    let relay = client();
    relay.set_nonblocking(true).unwrap();
    let gro = client();
    if !enable_udp_gro(gro.as_fd()) {
        return common::require::skip("this kernel has no UDP_GRO");
    }
    let sender = client();
    // Two runs of one size, a datagram too large to coalesce, an empty one, a last run.
    let sizes: Vec<usize> = [100; 10]
        .into_iter()
        .chain([40, 2000, 0])
        .chain([7; 3])
        .collect();
    let datagrams: Vec<Vec<u8>> = sizes
        .iter()
        .enumerate()
        .map(|(i, &len)| vec![i as u8; len])
        .collect();
    for d in &datagrams {
        sender.send_to(d, relay.local_addr().unwrap()).unwrap();
    }
    let mut batch = DatagramBatch::new(32, 65_536);
    let n = batch.recv(relay.as_fd()).unwrap();
    assert_eq!(n, datagrams.len(), "all queued datagrams in one receive");

    // To a receiver with UDP_GRO the runs arrive as the buffers they left as.
    let to = socket2::SockAddr::from(gro.local_addr().unwrap());
    assert_eq!(batch.send(relay.as_fd(), 0..n, Some(&to), None).unwrap(), n);
    let mut got = DatagramBatch::new(32, 65_536);
    let mut buffers = Vec::new();
    let deadline = Instant::now() + IO_TIMEOUT;
    gro.set_nonblocking(true).unwrap();
    while buffers.len() < 4 {
        match got.recv(gro.as_fd()) {
            Ok(k) => buffers.extend((0..k).map(|i| got.segments(i))),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                assert!(Instant::now() < deadline, "got only {buffers:?}");
                thread::sleep(Duration::from_millis(1));
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(buffers, [(11, 100), (1, 2000), (1, 0), (3, 7)]);

    // A plain receiver sees every datagram, in order, byte for byte.
    let plain = client();
    let to = socket2::SockAddr::from(plain.local_addr().unwrap());
    assert_eq!(batch.send(relay.as_fd(), 0..n, Some(&to), None).unwrap(), n);
    for (i, want) in datagrams.iter().enumerate() {
        let mut buf = [0u8; 4096];
        let (len, _) = plain.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..len], &want[..], "datagram {i}");
    }
}
