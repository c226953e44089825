//! The real `ballast run` binary end to end: balancing, draining on SIGTERM, the demo.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::Shutdown;
use std::time::{Duration, Instant};

use common::*;

fn config(backends: &[&NamedBackend], extra_pool: &str) -> String {
    let list: String = backends
        .iter()
        .map(|b| format!("      - {{ address: {} }}\n", b.addr))
        .collect();
    format!(
        "workers: 2\ndrain_timeout: 10s\nlisteners:\n  - name: front\n    listen: 127.0.0.1:0\n    pool: p\npools:\n  - name: p\n{extra_pool}    backends:\n{list}"
    )
}

#[test]
fn round_robin_spreads_connections_evenly() {
    let backends: Vec<_> = (1..=3)
        .map(|i| named_backend(&format!("b{i}"), Duration::ZERO))
        .collect();
    let refs: Vec<&NamedBackend> = backends.iter().collect();
    let lb = Ballast::run(&config(&refs, "    algorithm: round_robin\n"));
    let addr = lb.addr("front");
    let mut counts: HashMap<String, u32> = HashMap::new();
    for i in 0..300 {
        *counts.entry(ask(addr, &format!("req {i}"))).or_default() += 1;
    }
    assert_eq!(counts.len(), 3, "{counts:?}");
    for (name, n) in &counts {
        assert_eq!(*n, 100, "{name} got {n} of 300: {counts:?}");
    }
}

/// A backend given by host name (`localhost` comes from /etc/hosts, no DNS) is resolved when the
/// config is loaded and served like an IP one; its IPv4 address is taken, where the backend
/// listens, whatever order the resolver returns `127.0.0.1` and `::1` in.
#[test]
fn a_backend_host_name_is_resolved_and_served() {
    let b = named_backend("by-name", Duration::ZERO);
    let yaml = format!(
        "admin: {{ listen: 127.0.0.1:0 }}\nlisteners:\n  - name: front\n    listen: 127.0.0.1:0\n    pool: p\npools:\n  - name: p\n    backends:\n      - {{ address: \"localhost:{}\" }}\n",
        b.addr.port()
    );
    let lb = Ballast::run(&yaml);
    for i in 0..3 {
        assert_eq!(ask(lb.addr("front"), &format!("req {i}")), "by-name");
    }
    assert_eq!(lb.backend("p", b.addr)["address"], b.addr.to_string());
}

#[test]
fn access_log_has_one_line_per_session() {
    let b = named_backend("solo", Duration::ZERO);
    let lb = Ballast::run(&config(&[&b], ""));
    let addr = lb.addr("front");
    assert_eq!(ask(addr, "hello"), "solo");
    assert!(
        lb.wait_for_log("session closed", IO_TIMEOUT),
        "{}",
        lb.log_text()
    );
    let log = lb.log_text();
    let line = log.lines().find(|l| l.contains("session closed")).unwrap();
    assert!(line.contains(&format!("backend={}", b.addr)), "{line}");
    assert!(line.contains("sent=5"), "{line}");
    assert!(line.contains("received=10"), "{line}");
    assert!(line.contains("end=closed"), "{line}");
}

#[test]
fn sigterm_lets_open_sessions_finish_then_exits_zero() {
    let b = named_backend("slow", Duration::ZERO);
    let mut lb = Ballast::run(&config(&[&b], ""));
    let addr = lb.addr("front");
    let mut open: Vec<_> = (0..3)
        .map(|i| {
            let mut s = connect(addr);
            s.write_all(format!("first {i}").as_bytes()).unwrap();
            let mut buf = vec![0u8; 5 + 7];
            s.read_exact(&mut buf).unwrap();
            s
        })
        .collect();
    lb.signal("TERM");
    assert!(lb.wait_for_log("draining", IO_TIMEOUT), "{}", lb.log_text());
    // New connections are refused once the listeners closed.
    let deadline = Instant::now() + IO_TIMEOUT;
    while std::net::TcpStream::connect(addr).is_ok() {
        assert!(Instant::now() < deadline, "still accepting after SIGTERM");
        std::thread::sleep(Duration::from_millis(10));
    }
    // The open sessions still carry data both ways, and end cleanly.
    for (i, s) in open.iter_mut().enumerate() {
        let msg = format!("later {i}");
        s.write_all(msg.as_bytes()).unwrap();
        let mut buf = vec![0u8; msg.len()];
        s.read_exact(&mut buf).unwrap();
        assert_eq!(buf, msg.as_bytes());
        assert!(
            lb.wait_exit(Duration::from_millis(50)).is_none(),
            "exited with sessions open"
        );
    }
    for s in &open {
        s.shutdown(Shutdown::Write).unwrap();
    }
    for mut s in open {
        let mut rest = Vec::new();
        s.read_to_end(&mut rest).unwrap();
    }
    let status = lb
        .wait_exit(IO_TIMEOUT)
        .expect("exits after the sessions end");
    assert!(status.success(), "{status:?}\n{}", lb.log_text());
}

#[test]
fn sigterm_with_grace_says_not_ready_and_keeps_serving_until_the_grace_ends() {
    let b = named_backend("b", Duration::ZERO);
    let yaml = config(&[&b], "").replace(
        "drain_timeout: 10s\n",
        "drain_timeout: 10s\ngrace: 2s\nadmin: { listen: 127.0.0.1:0 }\n",
    );
    let mut lb = Ballast::run(&yaml);
    let addr = lb.addr("front");
    assert_eq!(http(lb.admin(), "GET", "/readyz", None).0, 200);
    lb.signal("TERM");
    assert!(
        lb.wait_for_log("not ready, still serving", IO_TIMEOUT),
        "{}",
        lb.log_text()
    );
    // Not ready at once, for whatever sends traffic here to stop...
    assert_eq!(http(lb.admin(), "GET", "/readyz", None).0, 503);
    // ...while new clients are still served, until the grace ends.
    let mut s = connect(addr);
    s.write_all(b"during grace").unwrap();
    let mut buf = [0u8; 2 + 12];
    s.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"b\nduring grace");
    assert!(
        !lb.log_text().contains("draining sessions"),
        "drained before the grace ended"
    );
    assert!(
        lb.wait_for_log("draining sessions", IO_TIMEOUT),
        "{}",
        lb.log_text()
    );
    drop(s);
    let status = lb.wait_exit(IO_TIMEOUT).expect("exits once drained");
    assert!(status.success(), "{status:?}\n{}", lb.log_text());
}

#[test]
fn the_demo_balances_and_stops_on_sigterm() {
    let mut demo = Ballast::spawn(&[
        "demo",
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
    ]);
    let addr = demo.addr("web");
    let mut seen = HashMap::new();
    for _ in 0..6 {
        let mut s = connect(addr);
        s.write_all(b"GET / HTTP/1.1\r\nHost: demo\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut reply = String::new();
        s.read_to_string(&mut reply).unwrap();
        assert!(reply.starts_with("HTTP/1.1 200 OK"), "{reply}");
        let body = reply.split("\r\n\r\n").nth(1).unwrap().trim().to_string();
        *seen.entry(body).or_insert(0) += 1;
    }
    assert_eq!(seen.len(), 3, "{seen:?}");
    assert!(seen.values().all(|n| *n == 2), "{seen:?}");
    // The demo serves its dashboard too.
    let (code, page) = http(demo.admin(), "GET", "/", None);
    assert_eq!(code, 200);
    assert!(page.contains("<title>Ballast</title>"), "{page}");
    demo.signal("TERM");
    let status = demo.wait_exit(IO_TIMEOUT).expect("demo exits on SIGTERM");
    assert!(status.success(), "{status:?}");
}
