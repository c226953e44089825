//! Active health checks through the real binary: a killed backend is marked down in time and
//! gets no more connections, comes back after `rise` probes; send/expect against a real
//! redis-server and a garbage-speaking listener; UDP probes against an echo socket, a closed
//! port (ICMP refusal) and a silent socket; HTTP checks against a server written here that
//! answers 200, 503, a wrong body, or hangs, on the data port, on a side `port:` or at
//! another `address:`.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::redis::{redis_ping, Redis};
use common::*;

/// Scheduling slack on top of `interval × fall + timeout`: tokio timers, the status poll and
/// a busy 2-core machine. Generous against flakiness, small against the 700 ms budget.
const SLACK: Duration = Duration::from_millis(1000);

fn state(entry: &serde_json::Value) -> String {
    entry["state"].as_str().unwrap().to_string()
}

fn count(entry: &serde_json::Value, path: &[&str]) -> u64 {
    let mut value = entry;
    for key in path {
        value = &value[*key];
    }
    value.as_u64().unwrap()
}

/// Sessions a client loop made: (backend name or "FAILED: error", when).
type Seen = Arc<Mutex<Vec<(String, Instant)>>>;

/// Asks through `addr` until `stop`, at most 20 000 times or 60 s; never panics, records.
fn client_loop(addr: SocketAddr, stop: Arc<AtomicBool>, seen: Seen) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(60);
        for i in 0..20_000 {
            if stop.load(Ordering::Relaxed) || Instant::now() > deadline {
                return;
            }
            let result = std::panic::catch_unwind(|| ask(addr, &format!("ping {i}")));
            let name = match result {
                Ok(name) => name,
                Err(_) => "FAILED".to_string(),
            };
            seen.lock().unwrap().push((name, Instant::now()));
        }
    })
}

#[test]
fn a_killed_backend_goes_down_in_time_gets_nothing_and_comes_back_after_rise() {
    let (interval, timeout, rise, fall) = (200u64, 100u64, 2u64, 3u64);
    let mut a = KillableBackend::start("a", "127.0.0.1:0".parse().unwrap());
    let b = named_backend("b", Duration::ZERO);
    // Passive checks off, so that only the active probes judge the killed backend; one retry
    // saves the clients whose connect hits it before it is marked down.
    let yaml = format!(
        "workers: 2\nadmin: {{ listen: 127.0.0.1:0 }}\nlisteners:\n  - {{ name: front, listen: 127.0.0.1:0, pool: p }}\npools:\n  - name: p\n    retries: 1\n    passive: {{ max_fails: 0 }}\n    health_check: {{ kind: tcp, interval: {interval}ms, timeout: {timeout}ms, rise: {rise}, fall: {fall} }}\n    backends:\n      - {{ address: \"{}\" }}\n      - {{ address: \"{}\" }}\n",
        a.addr, b.addr
    );
    let lb = Ballast::run(&yaml);
    let front = lb.addr("front");
    assert!(
        lb.wait_backend("p", a.addr, IO_TIMEOUT, |e| count(
            e,
            &["health_checks", "success"]
        ) >= 2)
            .is_some(),
        "probes never succeeded:\n{}",
        lb.log_text()
    );

    let stop = Arc::new(AtomicBool::new(false));
    let seen: Seen = Arc::default();
    let clients = client_loop(front, stop.clone(), seen.clone());
    let progressed = |n: usize| {
        let start = seen.lock().unwrap().len();
        wait_until(IO_TIMEOUT, || seen.lock().unwrap().len() >= start + n)
    };
    assert!(progressed(20));

    a.kill();
    let killed_at = Instant::now();
    let down = lb
        .wait_backend("p", a.addr, Duration::from_secs(10), |e| state(e) == "down")
        .unwrap_or_else(|| panic!("never marked down:\n{}", lb.log_text()));
    let took = killed_at.elapsed();
    let budget = Duration::from_millis(interval * fall + timeout);
    assert!(
        took <= budget + SLACK,
        "marked down after {took:?}; budget {budget:?} + {SLACK:?}"
    );
    assert!(lb.wait_for_log("backend down (health check)", IO_TIMEOUT));

    // From now on no connection is even tried on it: its connect-error count stands still.
    let errors_when_down = count(&down, &["connect_errors", "refused"]);
    let down_seen_at = Instant::now();
    assert!(progressed(50));
    let after = lb.backend("p", a.addr);
    assert_eq!(
        count(&after, &["connect_errors", "refused"]),
        errors_when_down
    );
    assert!(seen
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, at)| *at > down_seen_at)
        .all(|(name, _)| name == "b"));

    // Back on the same port: up after `rise` successful probes, then it gets traffic again.
    let successes_before = count(&after, &["health_checks", "success"]);
    let a = KillableBackend::start("a", a.addr);
    let up = lb
        .wait_backend(
            "p",
            a.addr,
            Duration::from_millis(interval * (rise + 1)) + SLACK + SLACK,
            |e| state(e) == "up",
        )
        .unwrap_or_else(|| panic!("never came back up:\n{}", lb.log_text()));
    assert!(count(&up, &["health_checks", "success"]) >= successes_before + rise);
    let up_at = Instant::now();
    assert!(wait_until(IO_TIMEOUT, || seen
        .lock()
        .unwrap()
        .iter()
        .any(|(name, at)| name == "a" && *at > up_at)));

    stop.store(true, Ordering::Relaxed);
    clients.join().unwrap();
    // A connection the kernel had queued on the killed listener is reset when it closes, as
    // with any backend that dies; a session that started after the kill never fails.
    let seen = seen.lock().unwrap();
    let failures: Vec<_> = seen.iter().filter(|(name, _)| name == "FAILED").collect();
    assert!(
        failures.len() <= 2,
        "{} of {} sessions failed",
        failures.len(),
        seen.len()
    );
    assert!(
        failures
            .iter()
            .all(|(_, at)| *at < killed_at + budget + SLACK),
        "a session failed after the backend was marked down"
    );
}

/// Answers every connection with a line that is not what a health check expects.
fn garbage_server() -> SocketAddr {
    serve_each(|mut stream| {
        // Read the probe first and close gently, so the reply is not lost to a reset.
        let mut buf = [0u8; 64];
        let _ = stream.set_read_timeout(Some(IO_TIMEOUT));
        let _ = stream.read(&mut buf);
        let _ = stream.write_all(b"HELLO I AM NOT REDIS\r\n");
        let _ = stream.shutdown(std::net::Shutdown::Write);
        let _ = stream.read_to_end(&mut Vec::new());
    })
}

#[test]
fn send_expect_against_a_real_redis_and_a_garbage_listener() {
    if !require_tool("redis-server", "redis-server") {
        return;
    }
    let redis = Redis::start().expect("redis-server did not start");
    let garbage = garbage_server();
    // The same check twice: as text, and as hex bytes.
    let yaml = format!(
        "admin: {{ listen: 127.0.0.1:0 }}\nlisteners:\n  - {{ name: redis, listen: 127.0.0.1:0, pool: text }}\npools:\n  - name: text\n    health_check: {{ send: \"PING\\r\\n\", expect: \"+PONG\", interval: 200ms, timeout: 150ms, rise: 1, fall: 2 }}\n    backends: [{{ address: \"{r}\" }}, {{ address: \"{g}\" }}]\n  - name: hex\n    health_check: {{ send_hex: \"50 49 4e 47 0d 0a\", expect_hex: \"2b504f4e47\", interval: 200ms, timeout: 150ms, rise: 1, fall: 2 }}\n    backends: [{{ address: \"{r}\" }}, {{ address: \"{g}\" }}]\n",
        r = redis.addr,
        g = garbage
    );
    let lb = Ballast::run(&yaml);
    for pool in ["text", "hex"] {
        let down = lb.wait_backend(pool, garbage, IO_TIMEOUT, |e| state(e) == "down");
        assert!(
            down.is_some(),
            "{pool}: garbage never down:\n{}",
            lb.log_text()
        );
        let up = lb
            .wait_backend(pool, redis.addr, IO_TIMEOUT, |e| {
                count(e, &["health_checks", "success"]) >= 3
            })
            .unwrap();
        assert_eq!(state(&up), "up", "{pool}: {up}");
        assert_eq!(count(&up, &["health_checks", "failure"]), 0, "{pool}: {up}");
    }
    assert!(lb.wait_for_log("does not start with the expected bytes", IO_TIMEOUT));
    // Traffic follows: every client reaches the redis, none the garbage listener.
    for _ in 0..5 {
        assert_eq!(redis_ping(lb.addr("redis")).as_deref(), Some("+PONG"));
    }
}

#[test]
fn udp_probes_see_an_echo_a_closed_port_and_a_silent_socket() {
    let echo = UdpSocket::bind("127.0.0.1:0").unwrap();
    let echo_addr = echo.local_addr().unwrap();
    let echoed = Arc::new(AtomicU64::new(0));
    let counter = echoed.clone();
    thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while let Ok((n, peer)) = echo.recv_from(&mut buf) {
            counter.fetch_add(1, Ordering::Relaxed);
            let _ = echo.send_to(&buf[..n], peer);
        }
    });
    let closed = UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
    let silent_addr = silent.local_addr().unwrap();
    // UDP listeners are not in the data plane yet, so the probed pool serves no listener (a
    // warning, not an error); the probes run all the same.
    let yaml = format!(
        "admin: {{ listen: 127.0.0.1:0 }}\nlisteners:\n  - {{ name: front, listen: 127.0.0.1:0, pool: tcp }}\npools:\n  - name: tcp\n    backends: [{{ address: 127.0.0.1:9 }}]\n  - name: dns\n    health_check: {{ kind: udp, send: ping, expect: ping, interval: 200ms, timeout: 150ms, rise: 1, fall: 2 }}\n    backends: [{{ address: \"{echo_addr}\" }}, {{ address: \"{closed}\" }}, {{ address: \"{silent_addr}\" }}]\n"
    );
    let lb = Ballast::run(&yaml);
    for dead in [closed, silent_addr] {
        let down = lb.wait_backend("dns", dead, IO_TIMEOUT, |e| state(e) == "down");
        assert!(down.is_some(), "{dead} never down:\n{}", lb.log_text());
    }
    let up = lb
        .wait_backend("dns", echo_addr, IO_TIMEOUT, |e| {
            count(e, &["health_checks", "success"]) >= 3
        })
        .unwrap();
    assert_eq!(state(&up), "up");
    assert_eq!(count(&up, &["health_checks", "failure"]), 0);
    assert!(echoed.load(Ordering::Relaxed) >= 3);
    // The state can reach the status API before its log line reaches the reader thread.
    for reason in ["Connection refused", "no complete reply within"] {
        assert!(lb.wait_for_log(reason, IO_TIMEOUT), "{}", lb.log_text());
    }
    drop(silent);
}

#[test]
fn on_backend_down_close_ends_the_dead_backends_sessions_and_keep_lets_them_run() {
    let mut dead_close = KillableBackend::start("a1", "127.0.0.1:0".parse().unwrap());
    let mut dead_keep = KillableBackend::start("a2", "127.0.0.1:0".parse().unwrap());
    let live = named_backend("b", Duration::ZERO);
    let pool = |name: &str, policy: &str, dead: SocketAddr| {
        format!(
            "  - name: {name}\n    on_backend_down: {policy}\n    passive: {{ max_fails: 0 }}\n    health_check: {{ interval: 150ms, timeout: 100ms, rise: 1, fall: 1 }}\n    backends: [{{ address: \"{dead}\" }}, {{ address: \"{}\" }}]\n",
            live.addr
        )
    };
    let yaml = format!(
        "admin: {{ listen: 127.0.0.1:0 }}\nlisteners:\n  - {{ name: close, listen: 127.0.0.1:0, pool: close }}\n  - {{ name: keep, listen: 127.0.0.1:0, pool: keep }}\npools:\n{}{}",
        pool("close", "close", dead_close.addr),
        pool("keep", "keep", dead_keep.addr)
    );
    let lb = Ballast::run(&yaml);
    let mut closed = session_on(lb.addr("close"), "a1");
    let mut kept = session_on(lb.addr("keep"), "a2");

    // The listeners close; the sessions' own connections live on in the backends.
    dead_close.kill();
    dead_keep.kill();
    for (pool, addr) in [("close", dead_close.addr), ("keep", dead_keep.addr)] {
        let down = lb.wait_backend(pool, addr, IO_TIMEOUT, |e| state(e) == "down");
        assert!(down.is_some(), "{pool}: never down:\n{}", lb.log_text());
    }
    let mut rest = Vec::new();
    assert_eq!(closed.read_to_end(&mut rest).unwrap(), 0, "{rest:?}");
    assert!(
        lb.wait_for_log("end=backend_down", IO_TIMEOUT),
        "{}",
        lb.log_text()
    );
    kept.write_all(b"still").unwrap();
    let mut echo = [0u8; 5];
    kept.read_exact(&mut echo).unwrap();
    assert_eq!(&echo, b"still");
}

/// What a test HTTP server answers on its health path.
const HEALTHY: u8 = 0;
const SICK: u8 = 1;
const WRONG_BODY: u8 = 2;
const HANG: u8 = 3;

/// An HTTP/1.1 server: `health_path` answers as `mode` says (200 "ok", 503, 200 "starting",
/// or nothing at all); every other path answers 200 with the server's name.
struct HttpServer {
    addr: SocketAddr,
    mode: Arc<AtomicU8>,
    health_requests: Arc<AtomicU64>,
}

impl HttpServer {
    fn start(name: &str, bind: SocketAddr, health_path: &'static str) -> std::io::Result<Self> {
        let listener = std::net::TcpListener::bind(bind)?;
        let addr = listener.local_addr()?;
        let mode = Arc::new(AtomicU8::new(HEALTHY));
        let health_requests = Arc::new(AtomicU64::new(0));
        let (m, h, tag) = (mode.clone(), health_requests.clone(), name.to_string());
        thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                let (m, h, tag) = (m.clone(), h.clone(), tag.clone());
                thread::spawn(move || serve_http(stream, &tag, health_path, &m, &h));
            }
        });
        Ok(Self {
            addr,
            mode,
            health_requests,
        })
    }

    fn set(&self, mode: u8) {
        self.mode.store(mode, Ordering::Relaxed);
    }
}

fn serve_http(
    mut stream: std::net::TcpStream,
    name: &str,
    health_path: &str,
    mode: &AtomicU8,
    health_requests: &AtomicU64,
) {
    let _ = stream.set_read_timeout(Some(IO_TIMEOUT));
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
        if head.len() > 16 * 1024 {
            return;
        }
    }
    let head = String::from_utf8_lossy(&head).to_string();
    let path = head.split_whitespace().nth(1).unwrap_or_default();
    let (status, body) = if path == health_path {
        health_requests.fetch_add(1, Ordering::Relaxed);
        assert!(head.contains("\r\nConnection: close\r\n"), "{head}");
        match mode.load(Ordering::Relaxed) {
            HEALTHY => ("200 OK", "ok".to_string()),
            SICK => ("503 Service Unavailable", "sick".to_string()),
            WRONG_BODY => ("200 OK", "starting".to_string()),
            _ => {
                // Hang: say nothing until the prober gives up and closes (bounded by the
                // read timeout all the same).
                let _ = stream.read_to_end(&mut Vec::new());
                return;
            }
        }
    } else {
        ("200 OK", name.to_string())
    };
    let reply = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(reply.as_bytes());
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let _ = stream.read_to_end(&mut Vec::new());
}

/// The name of the backend that answered a `GET /` through the balancer.
fn who(front: SocketAddr) -> String {
    let (code, body) = http(front, "GET", "/", None);
    assert_eq!(code, 200, "{body}");
    body
}

#[test]
fn an_http_check_follows_503_a_wrong_body_and_a_hang_and_traffic_follows_it() {
    let a = HttpServer::start("a", "127.0.0.1:0".parse().unwrap(), "/health").unwrap();
    let b = HttpServer::start("b", "127.0.0.1:0".parse().unwrap(), "/health").unwrap();
    let yaml = format!(
        "admin: {{ listen: 127.0.0.1:0 }}\nlisteners:\n  - {{ name: front, listen: 127.0.0.1:0, pool: p }}\npools:\n  - name: p\n    passive: {{ max_fails: 0 }}\n    health_check: {{ kind: http, path: /health, expect_body: ok, interval: 200ms, timeout: 150ms, rise: 2, fall: 2 }}\n    backends: [{{ address: \"{}\" }}, {{ address: \"{}\" }}]\n",
        a.addr, b.addr
    );
    let lb = Ballast::run(&yaml);
    let front = lb.addr("front");
    let is = |want: &'static str| move |e: &serde_json::Value| state(e) == want;
    let wait = Duration::from_secs(10);
    for backend in [a.addr, b.addr] {
        let up = lb.wait_backend("p", backend, wait, |e| {
            count(e, &["health_checks", "success"]) >= 2
        });
        assert!(up.is_some(), "probes never passed:\n{}", lb.log_text());
    }
    assert!(wait_until(IO_TIMEOUT, || who(front) == "a"));
    assert!(wait_until(IO_TIMEOUT, || who(front) == "b"));

    // Each way of failing takes `a` down with its own reason, moves the traffic to `b`, and
    // `a` comes back when it answers 200 "ok" again.
    for (mode, reason) in [
        (SICK, "status 503, expected 200-399"),
        (WRONG_BODY, "body does not contain"),
        (HANG, "no complete response within 150ms"),
    ] {
        a.set(mode);
        assert!(
            lb.wait_backend("p", a.addr, wait, is("down")).is_some(),
            "{reason}: never down:\n{}",
            lb.log_text()
        );
        assert!(
            lb.wait_for_log(reason, IO_TIMEOUT),
            "{reason}: not in the log:\n{}",
            lb.log_text()
        );
        for _ in 0..20 {
            assert_eq!(who(front), "b", "{reason}: a down backend got a session");
        }
        a.set(HEALTHY);
        assert!(
            lb.wait_backend("p", a.addr, wait, is("up")).is_some(),
            "{reason}: never back up:\n{}",
            lb.log_text()
        );
        assert!(wait_until(IO_TIMEOUT, || who(front) == "a"));
    }
    let b_entry = lb.backend("p", b.addr);
    assert_eq!(
        count(&b_entry, &["health_checks", "failure"]),
        0,
        "{b_entry}"
    );
    assert_eq!(state(&b_entry), "up");
}

/// Two side servers on the same port at two loopback IPs (127.0.0.1 and 127.0.0.2), as
/// Patroni's REST API on 8008 beside each PostgreSQL on 5432. Bounded retries when the port
/// chosen on the first IP is taken on the second.
fn side_servers() -> (HttpServer, HttpServer) {
    for _ in 0..20 {
        let one = HttpServer::start("side1", "127.0.0.1:0".parse().unwrap(), "/primary").unwrap();
        let port = one.addr.port();
        if let Ok(two) = HttpServer::start(
            "side2",
            SocketAddr::from(([127, 0, 0, 2], port)),
            "/primary",
        ) {
            return (one, two);
        }
    }
    panic!("no port free on both 127.0.0.1 and 127.0.0.2");
}

#[test]
fn a_check_port_asks_a_side_port_while_the_data_port_serves() {
    let (side1, side2) = side_servers();
    let port = side1.addr.port();
    // The data ports speak the named-backend protocol, not HTTP: a probe that went there
    // would fail, so "up" shows it asked the side port.
    let one = KillableBackend::start("one", "127.0.0.1:0".parse().unwrap());
    let two = KillableBackend::start("two", "127.0.0.2:0".parse().unwrap());
    side2.set(SICK);
    let yaml = format!(
        "admin: {{ listen: 127.0.0.1:0 }}\nlisteners:\n  - {{ name: front, listen: 127.0.0.1:0, pool: pg }}\npools:\n  - name: pg\n    passive: {{ max_fails: 0 }}\n    health_check: {{ kind: http, port: {port}, method: GET, path: /primary, expect_status: 200, interval: 200ms, timeout: 150ms, rise: 2, fall: 2 }}\n    backends: [{{ address: \"{}\" }}, {{ address: \"{}\" }}]\n",
        one.addr, two.addr
    );
    let lb = Ballast::run(&yaml);
    let front = lb.addr("front");
    let wait = Duration::from_secs(10);
    let up = lb.wait_backend("pg", one.addr, wait, |e| {
        count(e, &["health_checks", "success"]) >= 2 && state(e) == "up"
    });
    assert!(up.is_some(), "the primary never passed:\n{}", lb.log_text());
    assert!(
        lb.wait_backend("pg", two.addr, wait, |e| state(e) == "down")
            .is_some(),
        "the replica never went down:\n{}",
        lb.log_text()
    );
    assert!(lb.wait_for_log("status 503, expected 200", IO_TIMEOUT));
    assert!(side1.health_requests.load(Ordering::Relaxed) >= 2);
    for i in 0..20 {
        assert_eq!(ask(front, &format!("q {i}")), "one");
    }

    // Failover: the other one is primary now; traffic follows the side port's answer.
    side1.set(SICK);
    side2.set(HEALTHY);
    assert!(
        lb.wait_backend("pg", one.addr, wait, |e| state(e) == "down")
            .is_some(),
        "{}",
        lb.log_text()
    );
    assert!(
        lb.wait_backend("pg", two.addr, wait, |e| state(e) == "up")
            .is_some(),
        "{}",
        lb.log_text()
    );
    for i in 0..20 {
        assert_eq!(ask(front, &format!("q {i}")), "two");
    }
}

#[test]
fn a_check_address_sends_the_probes_to_another_ip() {
    // The backend serves on 127.0.0.1; its health is answered by a monitor on 127.0.0.2,
    // sick for one pool's view and healthy for the other's (two monitors, two ports).
    let data = KillableBackend::start("data", "127.0.0.1:0".parse().unwrap());
    let well = HttpServer::start("well", "127.0.0.2:0".parse().unwrap(), "/").unwrap();
    let sick = HttpServer::start("sick", "127.0.0.2:0".parse().unwrap(), "/").unwrap();
    sick.set(SICK);
    let pool = |name: &str, monitor: SocketAddr| {
        format!(
            "  - name: {name}\n    passive: {{ max_fails: 0 }}\n    health_check: {{ kind: http, address: {}, port: {}, interval: 200ms, timeout: 150ms, rise: 1, fall: 1 }}\n    backends: [{{ address: \"{}\" }}]\n",
            monitor.ip(),
            monitor.port(),
            data.addr
        )
    };
    let yaml = format!(
        "admin: {{ listen: 127.0.0.1:0 }}\nlisteners:\n  - {{ name: front, listen: 127.0.0.1:0, pool: well }}\npools:\n{}{}",
        pool("well", well.addr),
        pool("sick", sick.addr)
    );
    let lb = Ballast::run(&yaml);
    let wait = Duration::from_secs(10);
    assert!(
        lb.wait_backend("well", data.addr, wait, |e| {
            count(e, &["health_checks", "success"]) >= 2 && state(e) == "up"
        })
        .is_some(),
        "{}",
        lb.log_text()
    );
    assert!(
        lb.wait_backend("sick", data.addr, wait, |e| state(e) == "down")
            .is_some(),
        "{}",
        lb.log_text()
    );
    assert!(well.health_requests.load(Ordering::Relaxed) >= 2);
    assert!(lb.wait_for_log(&format!("probed={}", sick.addr), IO_TIMEOUT));
    assert_eq!(ask(lb.addr("front"), "q"), "data");
}

/// One inline command to the redis at `addr`; its reply as text (at most one read), or `None`.
fn redis_command(addr: SocketAddr, command: &str) -> Option<String> {
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
    s.write_all(format!("{command}\r\n").as_bytes()).ok()?;
    let mut buf = [0u8; 512];
    let n = s.read(&mut buf).ok()?;
    Some(String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// The port of the redis-server that answered through `front` (`CONFIG GET port`).
fn redis_behind(front: SocketAddr) -> Option<u16> {
    let reply = redis_command(front, "CONFIG GET port")?;
    reply.lines().last()?.trim().parse().ok()
}

/// True once the redis at `addr` reports `role` (`master` or `slave`) and, for a replica, a
/// finished sync with its master.
fn redis_is(addr: SocketAddr, role: &str) -> bool {
    redis_command(addr, "ROLE").is_some_and(|reply| {
        let mut lines = reply.lines().skip(2);
        lines.next() == Some(role) && (role == "master" || reply.contains("connected"))
    })
}

#[test]
fn a_redis_role_check_follows_a_replicaof_swap() {
    if !require_tool("redis-server", "redis-server") {
        return;
    }
    let a = Redis::start().expect("redis-server did not start");
    let b = Redis::start().expect("redis-server did not start");
    let replicaof = |server: &Redis, of: &Redis| {
        let reply = redis_command(
            server.addr,
            &format!("REPLICAOF {} {}", of.addr.ip(), of.addr.port()),
        );
        assert_eq!(
            reply.as_deref(),
            Some("+OK\r\n"),
            "REPLICAOF on {}",
            server.addr
        );
    };
    replicaof(&b, &a);
    assert!(
        wait_until(Duration::from_secs(10), || redis_is(b.addr, "slave")),
        "{} never became a connected replica of {}",
        b.addr,
        a.addr
    );
    let yaml = format!(
        "admin: {{ listen: 127.0.0.1:0 }}\nlisteners:\n  - {{ name: front, listen: 127.0.0.1:0, pool: p }}\npools:\n  - name: p\n    passive: {{ max_fails: 0 }}\n    health_check: {{ kind: redis, role: master, interval: 200ms, timeout: 150ms, rise: 1, fall: 1 }}\n    backends: [{{ address: \"{}\" }}, {{ address: \"{}\" }}]\n",
        a.addr, b.addr
    );
    let lb = Ballast::run(&yaml);
    let front = lb.addr("front");
    let wait = Duration::from_secs(10);
    let is = |want: &'static str| move |e: &serde_json::Value| state(e) == want;
    assert!(
        lb.wait_backend("p", b.addr, wait, is("down")).is_some(),
        "the replica never went down:\n{}",
        lb.log_text()
    );
    assert!(lb.wait_backend("p", a.addr, wait, is("up")).is_some());
    assert!(
        lb.wait_for_log("role replica, expected master", IO_TIMEOUT),
        "no reason in the log:\n{}",
        lb.log_text()
    );
    for _ in 0..20 {
        assert_eq!(
            redis_behind(front),
            Some(a.addr.port()),
            "a session to the replica"
        );
    }

    // The swap: b is promoted, a follows it; the traffic follows the master.
    assert_eq!(
        redis_command(b.addr, "REPLICAOF NO ONE").as_deref(),
        Some("+OK\r\n")
    );
    replicaof(&a, &b);
    assert!(
        lb.wait_backend("p", a.addr, wait, is("down")).is_some(),
        "the old master never went down:\n{}",
        lb.log_text()
    );
    assert!(
        lb.wait_backend("p", b.addr, wait, is("up")).is_some(),
        "the new master never came up:\n{}",
        lb.log_text()
    );
    assert!(wait_until(wait, || redis_behind(front) == Some(b.addr.port())));
    for _ in 0..20 {
        assert_eq!(
            redis_behind(front),
            Some(b.addr.port()),
            "a session to the replica"
        );
    }
}

#[test]
fn a_redis_check_authenticates_with_its_password_file_and_names_a_wrong_one() {
    if !require_tool("redis-server", "redis-server") {
        return;
    }
    const PASSWORD: &str = "hunter2-probe-secret";
    let redis =
        Redis::start_with(&["--requirepass", PASSWORD]).expect("redis-server did not start");
    let right = redis.dir.join("right");
    let wrong = redis.dir.join("wrong");
    std::fs::write(&right, format!("{PASSWORD}\n")).unwrap();
    std::fs::write(&wrong, "not-the-password\n").unwrap();
    let pool = |name: &str, check: &str| {
        format!(
            "  - name: {name}\n    health_check: {{ kind: redis, {check}interval: 200ms, timeout: 150ms, rise: 1, fall: 1 }}\n    backends: [{{ address: \"{}\" }}]\n",
            redis.addr
        )
    };
    let yaml = format!(
        "admin: {{ listen: 127.0.0.1:0 }}\nlisteners:\n  - {{ name: front, listen: 127.0.0.1:0, pool: right }}\npools:\n{}{}{}",
        pool("right", &format!("role: master, password_file: {right:?}, ")),
        pool("wrong", &format!("password_file: {wrong:?}, ")),
        pool("none", ""),
    );
    let lb = Ballast::run(&yaml);
    let wait = Duration::from_secs(10);
    let up = lb.wait_backend("right", redis.addr, wait, |e| {
        count(e, &["health_checks", "success"]) >= 2
    });
    assert!(
        up.is_some(),
        "never up with the right password:\n{}",
        lb.log_text()
    );
    for name in ["wrong", "none"] {
        assert!(
            lb.wait_backend(name, redis.addr, wait, |e| state(e) == "down")
                .is_some(),
            "{name}: never down:\n{}",
            lb.log_text()
        );
    }
    assert!(
        lb.wait_for_log("AUTH failed: WRONGPASS", IO_TIMEOUT),
        "{}",
        lb.log_text()
    );
    assert!(
        lb.wait_for_log("ROLE failed: NOAUTH", IO_TIMEOUT),
        "{}",
        lb.log_text()
    );
    assert!(
        !lb.log_text().contains(PASSWORD),
        "the password is in the log"
    );
}

#[test]
fn the_last_check_its_reason_and_response_times_are_reported() {
    let live = named_backend("a", Duration::ZERO);
    let dead = dead_addr();
    let lb = Ballast::run(&format!(
        "admin: {{ listen: 127.0.0.1:0 }}
listeners:
  - {{ name: front, listen: 127.0.0.1:0, pool: p }}
pools:
  - name: p
    health_check: {{ kind: tcp, interval: 200ms, timeout: 200ms, rise: 1, fall: 1 }}
    backends: [{{ address: \"{live}\" }}, {{ address: \"{dead}\" }}]
",
        live = live.addr
    ));
    let wait = Duration::from_secs(10);
    let down = lb
        .wait_backend("p", dead, wait, |b| {
            b["state"] == "down" && !b["health_checks"]["last"].is_null()
        })
        .unwrap_or_else(|| panic!("{}", lb.log_text()));
    let last = &down["health_checks"]["last"];
    assert_eq!(last["ok"], false, "{down}");
    assert!(
        last["reason"].as_str().unwrap().contains("refused"),
        "{down}"
    );
    assert!(last["at_unix_ms"].as_u64().unwrap() > 1_600_000_000_000);
    assert!(down["health_checks"]["last_change_unix_ms"]
        .as_u64()
        .is_some());
    // Before any session, no response time: nothing is made up.
    assert!(down["response_time"]["connect_p50_ms"].is_null(), "{down}");

    let up = lb
        .wait_backend("p", live.addr, wait, |b| {
            b["health_checks"]["last"]["ok"] == true
        })
        .unwrap();
    assert_eq!(up["health_checks"]["last"]["reason"], "");
    assert!(up["health_checks"]["last_change_unix_ms"].is_null(), "{up}");
    for _ in 0..5 {
        assert_eq!(ask(lb.addr("front"), "x"), "a");
    }
    let served = lb.backend("p", live.addr);
    let times = &served["response_time"];
    for key in ["connect_p50_ms", "connect_p99_ms", "connect_ewma_ms"] {
        assert!(times[key].as_f64().is_some_and(|v| v > 0.0), "{served}");
    }

    // /metrics: probe durations per backend, and when health last changed.
    let (code, text) = http(lb.admin(), "GET", "/metrics", None);
    assert_eq!(code, 200);
    let sample = |prefix: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {prefix}:\n{text}"))
    };
    for addr in [live.addr, dead] {
        let labels = format!("{{pool=\"p\",backend=\"{addr}\"}}");
        assert!(
            sample(&format!(
                "ballast_backend_health_check_duration_seconds_count{labels}"
            )) >= 1.0
        );
    }
    let changed = sample(&format!(
        "ballast_backend_health_last_change_timestamp_seconds{{pool=\"p\",backend=\"{dead}\"}}"
    ));
    let reported = down["health_checks"]["last_change_unix_ms"]
        .as_u64()
        .unwrap();
    assert!(
        (changed - reported as f64 / 1e3).abs() < 0.01,
        "{changed} {reported}"
    );
}
