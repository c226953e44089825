//! The TCP data plane against real sockets on 127.0.0.1: real workers, real backends written
//! here, clients asserting what they receive.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use ballast_dataplane::route::{ListenerRoute, ListenerState, PassivePolicy, Protocol, RouteTable};
use ballast_dataplane::{Command, Dataplane, DataplaneConfig, DataplaneHandle, ListenerSpec};
use common::{listener_route, round_robin_pool};

const IO_TIMEOUT: Duration = Duration::from_secs(30);

struct Options {
    workers: usize,
    force_copy: bool,
    retries: u32,
    passive: Option<PassivePolicy>,
    max_connections: Option<u64>,
    idle: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            workers: 2,
            force_copy: false,
            retries: 2,
            passive: None,
            max_connections: None,
            idle: Duration::from_secs(60),
        }
    }
}

struct Balancer {
    handle: DataplaneHandle,
    addr: SocketAddr,
    listener: Arc<ListenerState>,
}

impl Drop for Balancer {
    fn drop(&mut self) {
        self.handle.command(Command::Shutdown);
        self.handle.wait(Duration::from_secs(5));
    }
}

fn start(backends: &[SocketAddr], opts: Options) -> Balancer {
    let pool = round_robin_pool(backends, opts.retries, opts.passive);
    let route = ListenerRoute {
        idle_timeout: opts.idle,
        max_connections: opts.max_connections,
        ..listener_route("test", Protocol::Tcp, pool)
    };
    let state = route.state.clone();
    let config = DataplaneConfig {
        workers: opts.workers,
        listeners: vec![ListenerSpec {
            name: "test".into(),
            protocol: Protocol::Tcp,
            addrs: vec!["127.0.0.1:0".parse().unwrap()],
            shared_port: false,
        }],
        force_copy: opts.force_copy,
    };
    let handle = Dataplane::start(config, Arc::new(RouteTable::new([route]))).unwrap();
    let addr = handle.bound()[0].1;
    Balancer {
        handle,
        addr,
        listener: state,
    }
}

/// An echo backend: every connection gets its bytes back, then a FIN after the client's FIN.
fn echo_backend() -> SocketAddr {
    greeting_echo_backend(b"")
}

/// An echo backend that first sends `greeting` on each connection, before reading anything
/// (as SMTP, MySQL and FTP servers do).
fn greeting_echo_backend(greeting: &'static [u8]) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            thread::spawn(move || {
                if stream.write_all(greeting).is_err() {
                    return;
                }
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    match stream.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if stream.write_all(&buf[..n]).is_err() {
                                return;
                            }
                        }
                    }
                }
                let _ = stream.shutdown(Shutdown::Write);
            });
        }
    });
    addr
}

fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    stream.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    stream
}

/// Deterministic pseudo-random bytes (xorshift), so each client's payload differs.
fn payload(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Sends `data` on one thread while reading on this one; returns everything read until EOF.
fn round_trip(addr: SocketAddr, data: Vec<u8>) -> Vec<u8> {
    let mut stream = connect(addr);
    let mut writer = stream.try_clone().unwrap();
    let sender = thread::spawn(move || {
        writer.write_all(&data).unwrap();
        writer.shutdown(Shutdown::Write).unwrap();
    });
    let mut received = Vec::new();
    stream.read_to_end(&mut received).unwrap();
    sender.join().unwrap();
    received
}

fn bytes_intact(force_copy: bool) {
    let backend = echo_backend();
    let lb = start(
        &[backend],
        Options {
            force_copy,
            ..Options::default()
        },
    );
    let clients: Vec<_> = (0..64u64)
        .map(|i| {
            let addr = lb.addr;
            thread::spawn(move || {
                let data = payload(i + 1, 1 << 20);
                let got = round_trip(addr, data.clone());
                assert_eq!(got.len(), data.len(), "client {i} length");
                assert!(got == data, "client {i} got different bytes");
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
}

#[test]
fn sixty_four_clients_get_their_bytes_back_with_splice() {
    bytes_intact(false);
}

#[test]
fn sixty_four_clients_get_their_bytes_back_with_copy() {
    bytes_intact(true);
}

#[test]
fn a_100_mib_stream_arrives_intact() {
    let backend = echo_backend();
    let lb = start(&[backend], Options::default());
    const CHUNK: usize = 1 << 20;
    const CHUNKS: usize = 100;
    let mut stream = connect(lb.addr);
    let mut writer = stream.try_clone().unwrap();
    let sender = thread::spawn(move || {
        for i in 0..CHUNKS {
            writer.write_all(&payload(i as u64 + 7, CHUNK)).unwrap();
        }
        writer.shutdown(Shutdown::Write).unwrap();
    });
    let mut buf = vec![0u8; CHUNK];
    for i in 0..CHUNKS {
        stream.read_exact(&mut buf).unwrap();
        assert!(buf == payload(i as u64 + 7, CHUNK), "chunk {i} differs");
    }
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty(), "{} bytes after the stream", rest.len());
    sender.join().unwrap();
}

#[test]
fn a_client_that_half_closes_still_reads_the_whole_reply() {
    // The backend answers only after the client's FIN, with a reply larger than any buffer.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let backend = listener.local_addr().unwrap();
    thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let mut request = Vec::new();
        stream.read_to_end(&mut request).unwrap();
        let mut reply = format!("got {} bytes\n", request.len()).into_bytes();
        reply.extend(payload(3, 4 << 20));
        stream.write_all(&reply).unwrap();
    });
    let lb = start(&[backend], Options::default());
    let mut stream = connect(lb.addr);
    stream.write_all(&payload(9, 100_000)).unwrap();
    stream.shutdown(Shutdown::Write).unwrap();
    let mut reply = Vec::new();
    stream.read_to_end(&mut reply).unwrap();
    let header = b"got 100000 bytes\n";
    assert!(reply.starts_with(header));
    assert!(reply[header.len()..] == payload(3, 4 << 20)[..]);
}

#[test]
fn a_client_paused_by_a_slow_backend_is_heard_again_once_the_backend_caught_up() {
    // The backend reads slowly, so the relay stops listening to the client while the bytes it
    // holds wait for the backend. Once the backend has read the first burst the relay must
    // listen again: the second burst and the FIN come only after that, when nothing else
    // would wake it.
    const FIRST: usize = 8 << 20;
    const SECOND: usize = 100_000;
    let data = payload(5, FIRST + SECOND);
    let expected = data.clone();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let backend = listener.local_addr().unwrap();
    let (first_read, first_burst_read) = std::sync::mpsc::channel();
    thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        let mut got = Vec::with_capacity(FIRST + SECOND);
        let mut buf = vec![0u8; 64 * 1024];
        // Bounded: each read returns at least a byte or ends the loop, within IO_TIMEOUT.
        while let Ok(n @ 1..) = stream.read(&mut buf) {
            got.extend_from_slice(&buf[..n]);
            if got.len() == FIRST {
                let _ = first_read.send(());
            }
            if got.len() <= FIRST {
                thread::sleep(Duration::from_millis(1));
            }
        }
        let intact = got == expected;
        let _ = stream.write_all(format!("{} {intact}\n", got.len()).as_bytes());
    });
    let lb = start(&[backend], Options::default());
    let mut stream = connect(lb.addr);
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream.write_all(&data[..FIRST]).unwrap();
    first_burst_read
        .recv_timeout(IO_TIMEOUT)
        .expect("the backend never read the first burst");
    stream.write_all(&data[FIRST..]).unwrap();
    stream.shutdown(Shutdown::Write).unwrap();
    let mut reply = String::new();
    stream.read_to_string(&mut reply).unwrap();
    assert_eq!(reply, format!("{} true\n", FIRST + SECOND));
}

#[test]
fn a_backend_that_speaks_first_reaches_a_silent_client() {
    // SMTP, MySQL, FTP: the server greets before the client sends anything. The greeting can
    // come with the connect's own event or after it; both must reach the client, which sends
    // nothing until it has read the greeting.
    let backend = greeting_echo_backend(b"220 ready\n");
    let lb = start(
        &[backend],
        Options {
            workers: 1,
            ..Options::default()
        },
    );
    // All connected at once, so the worker is still busy with the batch when the greetings
    // arrive, and many reach it merged into the connect's own event.
    let streams: Vec<TcpStream> = (0..100).map(|_| connect(lb.addr)).collect();
    for (i, mut stream) in streams.into_iter().enumerate() {
        let mut greeting = [0u8; 10];
        stream.read_exact(&mut greeting).unwrap();
        assert_eq!(&greeting, b"220 ready\n", "connection {i}");
        let ping = format!("ping {i}");
        stream.write_all(ping.as_bytes()).unwrap();
        let mut echo = vec![0u8; ping.len()];
        stream.read_exact(&mut echo).unwrap();
        assert_eq!(echo, ping.as_bytes(), "connection {i}");
    }
}

#[test]
fn connections_succeed_when_one_backend_refuses() {
    let dead = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let backends = [echo_backend(), dead, echo_backend()];
    let lb = start(&backends, Options::default());
    for i in 0..300u64 {
        let mut stream = connect(lb.addr);
        let msg = format!("hello {i}\n");
        stream.write_all(msg.as_bytes()).unwrap();
        let mut reply = vec![0u8; msg.len()];
        stream.read_exact(&mut reply).unwrap();
        assert_eq!(reply, msg.as_bytes(), "connection {i}");
    }
    let routes = lb.handle.routes();
    let pool = &routes.listener("test").unwrap().pool;
    let refused = pool.backends[1]
        .state
        .connect_errors_refused
        .load(Ordering::Relaxed);
    assert!(
        refused >= 50,
        "the dead backend was tried ({refused} times)"
    );
}

#[test]
fn passive_health_takes_a_refusing_backend_out() {
    let dead = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let backends = [echo_backend(), dead];
    let lb = start(
        &backends,
        Options {
            passive: Some(PassivePolicy {
                max_fails: 2,
                fail_timeout: Duration::from_secs(60),
            }),
            ..Options::default()
        },
    );
    for _ in 0..100 {
        let mut stream = connect(lb.addr);
        stream.write_all(b"x").unwrap();
        let mut one = [0u8; 1];
        stream.read_exact(&mut one).unwrap();
    }
    let routes = lb.handle.routes();
    let pool = &routes.listener("test").unwrap().pool;
    let refused = pool.backends[1]
        .state
        .connect_errors_refused
        .load(Ordering::Relaxed);
    assert_eq!(refused, 2, "tried only until passive health took it out");
}

#[test]
fn max_connections_closes_the_next_connection_at_once() {
    let backend = echo_backend();
    let lb = start(
        &[backend],
        Options {
            max_connections: Some(2),
            ..Options::default()
        },
    );
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut s = connect(lb.addr);
        s.write_all(b"ping").unwrap();
        let mut buf = [0u8; 4];
        s.read_exact(&mut buf).unwrap();
        held.push(s);
    }
    let mut third = connect(lb.addr);
    let mut buf = [0u8; 16];
    let n = third.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "the third connection is closed without data");
    assert_eq!(
        lb.listener.rejected_max_connections.load(Ordering::Relaxed),
        1
    );
    drop(held);
    // Once the held sessions end, a new connection is served again.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut s = connect(lb.addr);
        let _ = s.write_all(b"back");
        let mut buf = [0u8; 4];
        if s.read_exact(&mut buf).is_ok() {
            assert_eq!(&buf, b"back");
            break;
        }
        assert!(Instant::now() < deadline, "never admitted again");
        thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn the_idle_timeout_closes_a_silent_session() {
    let backend = echo_backend();
    let lb = start(
        &[backend],
        Options {
            idle: Duration::from_millis(300),
            ..Options::default()
        },
    );
    let mut s = connect(lb.addr);
    s.write_all(b"hi").unwrap();
    let mut buf = [0u8; 2];
    s.read_exact(&mut buf).unwrap();
    let started = Instant::now();
    let n = s.read(&mut [0u8; 8]).unwrap();
    assert_eq!(n, 0, "closed by the balancer");
    assert!(started.elapsed() >= Duration::from_millis(250));
    assert_eq!(lb.listener.active.load(Ordering::Relaxed), 0);
}

/// Opens two sessions and returns them as (the one on backends[0], the one on backends[1]),
/// telling them apart by the backends' connection counters rather than by picker order.
fn two_sessions_by_backend(lb: &Balancer) -> (TcpStream, TcpStream) {
    let routes = lb.handle.routes();
    let pool = routes.listener("test").unwrap().pool.clone();
    let total = |i: usize| {
        pool.backends[i]
            .state
            .connections_total
            .load(Ordering::Relaxed)
    };
    let connected = |before: u64, i: usize| {
        let deadline = Instant::now() + IO_TIMEOUT;
        while total(i) == before && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(1));
        }
        total(i) > before
    };
    let before0 = total(0);
    let before1 = total(1);
    let first = connect(lb.addr);
    let deadline = Instant::now() + IO_TIMEOUT;
    while total(0) == before0 && total(1) == before1 {
        assert!(Instant::now() < deadline, "first session never connected");
        thread::sleep(Duration::from_millis(1));
    }
    let first_on_0 = total(0) > before0;
    let second = connect(lb.addr);
    assert!(connected(
        if first_on_0 { before1 } else { before0 },
        usize::from(first_on_0)
    ));
    if first_on_0 {
        (first, second)
    } else {
        (second, first)
    }
}

#[test]
fn a_backend_dying_mid_stream_closes_only_its_session() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let dying = listener.local_addr().unwrap();
    thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let mut buf = [0u8; 4];
        let _ = stream.read_exact(&mut buf);
        // Reset instead of a FIN: linger 0 then close.
        let sock = socket2::Socket::from(stream);
        sock.set_linger(Some(Duration::ZERO)).unwrap();
    });
    let healthy = echo_backend();
    let lb = start(&[dying, healthy], Options::default());
    let (mut doomed, mut survivor) = two_sessions_by_backend(&lb);
    doomed.write_all(b"boom").unwrap();
    let mut rest = Vec::new();
    let _ = doomed.read_to_end(&mut rest);
    assert!(rest.is_empty());
    survivor.write_all(b"still here").unwrap();
    let mut buf = [0u8; 10];
    survivor.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"still here");
}

fn echo_once(addr: SocketAddr, msg: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.write_all(msg)?;
    let mut buf = vec![0u8; msg.len()];
    s.read_exact(&mut buf)?;
    Ok(buf)
}

#[test]
fn listeners_come_and_go_while_sessions_continue() {
    let backend = echo_backend();
    let mut lb = start(&[backend], Options::default());
    let pool = lb.handle.routes().listener("test").unwrap().pool.clone();
    lb.handle.publish(Arc::new(RouteTable::new([
        listener_route("test", Protocol::Tcp, pool.clone()),
        listener_route("second", Protocol::Tcp, pool),
    ])));
    let added = lb
        .handle
        .add_listener(&ListenerSpec {
            name: "second".into(),
            protocol: Protocol::Tcp,
            addrs: vec!["127.0.0.1:0".parse().unwrap()],
            shared_port: false,
        })
        .unwrap()[0];
    assert_eq!(echo_once(added, b"new").unwrap(), b"new");
    let mut established = connect(added);
    established.write_all(b"one").unwrap();
    let mut buf = [0u8; 3];
    established.read_exact(&mut buf).unwrap();

    lb.handle.remove_listener("second");
    let deadline = Instant::now() + IO_TIMEOUT;
    while TcpStream::connect(added).is_ok() {
        assert!(Instant::now() < deadline, "removed listener still accepts");
        thread::sleep(Duration::from_millis(10));
    }
    // The session accepted before the removal carries on.
    established.write_all(b"two").unwrap();
    established.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"two");
    // The other listener is untouched.
    assert_eq!(echo_once(lb.addr, b"old").unwrap(), b"old");
}

#[test]
fn close_backend_sessions_ends_only_that_backends_sessions() {
    let a = echo_backend();
    let b = echo_backend();
    let lb = start(&[a, b], Options::default());
    let (mut to_a, mut to_b) = two_sessions_by_backend(&lb);
    for s in [&mut to_a, &mut to_b] {
        s.write_all(b"hi").unwrap();
        let mut buf = [0u8; 2];
        s.read_exact(&mut buf).unwrap();
    }
    let routes = lb.handle.routes();
    let state_a = routes.listener("test").unwrap().pool.backends[0]
        .state
        .clone();
    lb.handle.close_backend_sessions(&state_a);
    let mut rest = Vec::new();
    to_a.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
    to_b.write_all(b"ok").unwrap();
    let mut buf = [0u8; 2];
    to_b.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"ok");
}

/// Active-session counts feed least_connections, power_of_two and least_time: they must come
/// back to exactly zero however sessions end.
#[test]
fn active_counts_return_to_zero_however_sessions_end() {
    let dead = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let lb = start(
        &[echo_backend(), dead, echo_backend()],
        Options {
            idle: Duration::from_millis(300),
            max_connections: Some(20),
            ..Options::default()
        },
    );
    let routes = lb.handle.routes();
    let pool = routes.listener("test").unwrap().pool.clone();
    // Normal close, half-close, client reset, idle timeout, refused backends retried.
    for i in 0..30 {
        let mut s = connect(lb.addr);
        s.write_all(b"ping").unwrap();
        let mut buf = [0u8; 4];
        s.read_exact(&mut buf).unwrap();
        match i % 3 {
            0 => drop(s),
            1 => {
                s.shutdown(Shutdown::Write).unwrap();
                let _ = s.read_to_end(&mut Vec::new());
            }
            _ => {
                let sock = socket2::Socket::from(s);
                sock.set_linger(Some(Duration::ZERO)).unwrap();
            }
        }
    }
    // Silent sessions that the idle timeout closes.
    for _ in 0..5 {
        let mut s = connect(lb.addr);
        s.write_all(b"x").unwrap();
        let mut b = [0u8; 1];
        s.read_exact(&mut b).unwrap();
        assert_eq!(s.read(&mut b).unwrap(), 0, "closed by the idle timeout");
    }
    // Closed by the backend side on command.
    let doomed = connect(lb.addr);
    let mut b = [0u8; 1];
    (&doomed).write_all(b"y").unwrap();
    (&doomed).read_exact(&mut b).unwrap();
    for backend in pool.backends.iter() {
        lb.handle.close_backend_sessions(&backend.state);
    }
    let deadline = Instant::now() + IO_TIMEOUT;
    loop {
        let backends: Vec<u64> = pool
            .backends
            .iter()
            .map(|b| b.state.active.load(Ordering::Relaxed))
            .collect();
        let listener = lb.listener.active.load(Ordering::Relaxed);
        if backends.iter().all(|n| *n == 0) && listener == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "active counts stuck: backends {backends:?}, listener {listener}"
        );
        thread::sleep(Duration::from_millis(10));
    }
    drop(doomed);
}

#[test]
fn bytes_moved_before_a_backend_reset_are_counted() {
    // Each connection: wait for the client's request, answer 1000 bytes, then reset, so the
    // worker reads the answer and the reset in one relay call.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let backend = listener.local_addr().unwrap();
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut request = [0u8; 2];
            if stream.read_exact(&mut request).is_err() {
                continue;
            }
            let _ = stream.write_all(&[7u8; 1000]);
            let socket = socket2::Socket::from(stream);
            let _ = socket.set_linger(Some(Duration::ZERO));
        }
    });
    let lb = start(&[backend], Options::default());
    let routes = lb.handle.routes();
    let state = routes.listener("test").unwrap().pool.backends[0]
        .state
        .clone();
    let rounds = 20u64;
    let mut delivered = 0u64;
    for _ in 0..rounds {
        let mut s = connect(lb.addr);
        s.write_all(b"go").unwrap();
        let mut reply = Vec::new();
        // The reset reaches the client as a close, or as a reset of its own.
        let _ = s.read_to_end(&mut reply);
        delivered += reply.len() as u64;
    }
    assert!(delivered > 0, "no byte of any answer reached a client");
    let deadline = Instant::now() + IO_TIMEOUT;
    while state.bytes_received.load(Ordering::Relaxed) < delivered {
        assert!(
            Instant::now() < deadline,
            "clients got {delivered} bytes, the counter says {}",
            state.bytes_received.load(Ordering::Relaxed)
        );
        thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(state.bytes_sent.load(Ordering::Relaxed), 2 * rounds);
}
