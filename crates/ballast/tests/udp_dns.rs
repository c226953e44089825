//! UDP for DNS done right (issue 19), through the real binary with real peers: `udp.responses`
//! balances each query on its own even from one client socket (dnsperf against two dnsmasq);
//! `udp.per_datagram` spreads fire-and-forget datagrams (syslog) over receiving sockets.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;
use std::net::{SocketAddr, UdpSocket};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use common::dns::{dig, dnsperf_count, start_dnsmasq};
use common::*;

fn dns_tools() -> bool {
    require_tools(&[
        ("dnsmasq", "dnsmasq-base"),
        ("dig", "bind9-dnsutils"),
        ("dnsperf", "dnsperf"),
    ])
}

/// Runs dnsperf against `server` from ONE socket (`-c 1`) with up to `outstanding` queries in
/// flight; returns (sent, completed, lost) and the report.
fn dnsperf_one_socket(server: SocketAddr, outstanding: u32, seconds: u32) -> (u64, u64, u64) {
    let queries = write_config("example.test A\ngame.example.test A\nwww.example.test A\n");
    let out = Command::new("dnsperf")
        .args([
            "-s",
            &server.ip().to_string(),
            "-p",
            &server.port().to_string(),
            "-d",
            queries.to_str().unwrap(),
            "-c",
            "1",
            "-q",
            &outstanding.to_string(),
            "-l",
            &seconds.to_string(),
            "-Q",
            "1500",
            "-t",
            "2",
        ])
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "dnsperf failed:\n{report}");
    let field = |name: &str| dnsperf_count(&report, name);
    let counts = (
        field("Queries sent"),
        field("Queries completed"),
        field("Queries lost"),
    );
    assert!(counts.0 >= 500, "dnsperf sent only {}:\n{report}", counts.0);
    counts
}

fn datagrams_to(lb: &Ballast, pool: &str, backend: SocketAddr) -> u64 {
    lb.backend(pool, backend)["datagrams_to_backend"]
        .as_u64()
        .unwrap()
}

/// `responses: 1`: dnsperf's queries from one socket, many in flight, are spread over two
/// dnsmasq by weight (3:1), each answered, and each exchange ends with its answer.
#[test]
fn responses_one_spreads_the_queries_of_one_socket_by_weight() {
    if !dns_tools() {
        return;
    }
    let (_a, dns_a) = start_dnsmasq();
    let (_b, dns_b) = start_dnsmasq();
    let yaml = format!(
        "admin: {{ listen: 127.0.0.1:0 }}\nworkers: 2\nlisteners:\n  - name: dns\n    protocol: udp\n    listen: 127.0.0.1:0\n    pool: resolvers\n    udp: {{ responses: 1, reply_timeout: 2s }}\npools:\n  - name: resolvers\n    algorithm: round_robin\n    backends:\n      - {{ address: {dns_a}, weight: 3 }}\n      - {{ address: {dns_b}, weight: 1 }}\n"
    );
    let lb = Ballast::run(&yaml);
    let addr = lb.addr("dns");
    assert_eq!(dig(addr, "example.test").as_deref(), Some("10.1.2.3"));
    let before = (
        datagrams_to(&lb, "resolvers", dns_a),
        datagrams_to(&lb, "resolvers", dns_b),
    );

    let (sent, completed, lost) = dnsperf_one_socket(addr, 20, 2);
    assert_eq!(lost, 0, "sent {sent}, completed {completed}");

    let a = datagrams_to(&lb, "resolvers", dns_a) - before.0;
    let b = datagrams_to(&lb, "resolvers", dns_b) - before.1;
    assert_eq!(a + b, sent, "every query reached one backend: {a} + {b}");
    let share = a as f64 / (a + b) as f64;
    assert!(
        (share - 0.75).abs() <= 0.08,
        "the weight-3 resolver got {:.1} % of {sent} queries from one socket, want 75 %",
        share * 100.0
    );
    // Each exchange ended with its one answer: none is left open, none timed out.
    let ok = wait_until(Duration::from_secs(5), || {
        lb.listener("dns")["udp_flows_active"] == 0
    });
    let status = lb.listener("dns");
    assert!(ok, "exchanges left open: {status}");
    assert!(
        status["udp_flows_answered"].as_u64().unwrap() >= sent,
        "{status}"
    );
    assert_eq!(status["udp_flows_reply_timeout"], 0, "{status}");
}

/// Without `responses`, the same one socket is one flow: every query goes to one resolver.
/// (The contrast shows what `responses` changes.)
#[test]
fn without_responses_one_socket_is_one_flow_to_one_resolver() {
    if !dns_tools() {
        return;
    }
    let (_a, dns_a) = start_dnsmasq();
    let (_b, dns_b) = start_dnsmasq();
    let yaml = format!(
        "admin: {{ listen: 127.0.0.1:0 }}\nlisteners:\n  - name: dns\n    protocol: udp\n    listen: 127.0.0.1:0\n    pool: resolvers\npools:\n  - name: resolvers\n    algorithm: round_robin\n    backends:\n      - {{ address: {dns_a} }}\n      - {{ address: {dns_b} }}\n"
    );
    let lb = Ballast::run(&yaml);
    let (sent, _, lost) = dnsperf_one_socket(lb.addr("dns"), 20, 1);
    assert_eq!(lost, 0);
    let a = datagrams_to(&lb, "resolvers", dns_a);
    let b = datagrams_to(&lb, "resolvers", dns_b);
    assert_eq!(a + b, sent);
    assert!(a == 0 || b == 0, "one flow, one backend: {a} and {b}");
}

/// A receiving socket that counts the datagrams it gets and the addresses they come from.
struct Counter {
    addr: SocketAddr,
    seen: Arc<Mutex<(u64, BTreeSet<SocketAddr>)>>,
    stop: Arc<AtomicBool>,
}

impl Drop for Counter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl Counter {
    fn start() -> Counter {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let addr = socket.local_addr().unwrap();
        let seen = Arc::new(Mutex::new((0, BTreeSet::new())));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st) = (seen.clone(), stop.clone());
        thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while !st.load(Ordering::Relaxed) {
                if let Ok((_, from)) = socket.recv_from(&mut buf) {
                    let mut seen = s.lock().unwrap();
                    seen.0 += 1;
                    seen.1.insert(from);
                }
            }
        });
        Counter { addr, seen, stop }
    }

    fn count(&self) -> u64 {
        self.seen.lock().unwrap().0
    }

    fn senders(&self) -> BTreeSet<SocketAddr> {
        self.seen.lock().unwrap().1.clone()
    }
}

/// `per_datagram: true`: syslog-like lines from one client socket are spread over two
/// receivers by weight (2:1), each line on its own, no flow kept, and all of them leave from
/// the few sockets the workers share (one per worker), not one per datagram.
#[test]
fn per_datagram_spreads_every_line_by_weight_from_shared_sockets() {
    let heavy = Counter::start();
    let light = Counter::start();
    let yaml = format!(
        "admin: {{ listen: 127.0.0.1:0 }}\nworkers: 2\nlisteners:\n  - name: syslog\n    protocol: udp\n    listen: 127.0.0.1:0\n    pool: collectors\n    udp: {{ per_datagram: true }}\npools:\n  - name: collectors\n    algorithm: round_robin\n    backends:\n      - {{ address: {}, weight: 2 }}\n      - {{ address: {}, weight: 1 }}\n",
        heavy.addr, light.addr
    );
    let lb = Ballast::run(&yaml);
    let front = lb.addr("syslog");
    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    const LINES: u64 = 900;
    let mut sent = 0;
    // Bursts of 30, each waited for, so no receive buffer overflows on the way.
    while sent < LINES {
        for _ in 0..30 {
            let line = format!("<14>1 - host app - - - line {sent}");
            client.send_to(line.as_bytes(), front).unwrap();
            sent += 1;
        }
        let arrived = wait_until(IO_TIMEOUT, || heavy.count() + light.count() == sent);
        assert!(
            arrived,
            "{} of {sent} lines arrived",
            heavy.count() + light.count()
        );
    }
    let share = heavy.count() as f64 / LINES as f64;
    assert!(
        (share - 2.0 / 3.0).abs() <= 0.05,
        "the weight-2 receiver got {} of {LINES} lines from one client socket",
        heavy.count()
    );
    // One shared socket per worker at most, whatever the number of datagrams.
    let senders: BTreeSet<SocketAddr> = heavy.senders().union(&light.senders()).copied().collect();
    assert!(senders.len() <= 2, "lines came from {senders:?}");
    let listener = lb.listener("syslog");
    assert_eq!(listener["udp_flows_total"], 0, "{listener}");
    let counted =
        datagrams_to(&lb, "collectors", heavy.addr) + datagrams_to(&lb, "collectors", light.addr);
    assert_eq!(counted, LINES);
}

/// A missing reply is a failure: a blackholed resolver (a socket that never answers) is taken
/// out by passive health after `max_fails` unanswered queries, and with `udp.retries: 1`
/// each of those queries is sent again to the real dnsmasq, so dig gets every answer.
#[test]
fn a_blackholed_resolver_is_taken_out_and_its_queries_are_retried() {
    if !dns_tools() {
        return;
    }
    let (_dnsmasq, dns) = start_dnsmasq();
    // Bound, so the kernel sends no ICMP refusal; never read, so nothing answers.
    let blackhole = UdpSocket::bind("127.0.0.1:0").unwrap();
    let hole = blackhole.local_addr().unwrap();
    let yaml = format!(
        "admin: {{ listen: 127.0.0.1:0 }}\nworkers: 1\nlisteners:\n  - name: dns\n    protocol: udp\n    listen: 127.0.0.1:0\n    pool: resolvers\n    udp: {{ responses: 1, reply_timeout: 300ms, retries: 1 }}\npools:\n  - name: resolvers\n    algorithm: round_robin\n    passive: {{ max_fails: 2, fail_timeout: 60s }}\n    backends:\n      - {{ address: {hole} }}\n      - {{ address: {dns} }}\n"
    );
    let lb = Ballast::run(&yaml);
    let addr = lb.addr("dns");
    for i in 0..12 {
        // dig waits 1 s: the retry after 300 ms answers in time.
        assert_eq!(
            dig(addr, "example.test").as_deref(),
            Some("10.1.2.3"),
            "query {i}; log:\n{}",
            lb.log_text()
        );
    }
    let status = lb.backend("resolvers", hole);
    assert_eq!(status["up"], false, "{status}");
    assert_eq!(status["connect_errors"]["no_reply"], 2, "{status}");
    // Only the two queries that took it out ever reached it.
    assert_eq!(status["datagrams_to_backend"], 2, "{status}");
    blackhole.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 512];
    let queued = std::iter::from_fn(|| blackhole.recv(&mut buf).ok()).count();
    assert_eq!(queued, 2, "datagrams the blackhole got");
    let listener = lb.listener("dns");
    assert_eq!(listener["udp_flows_retried"], 2, "{listener}");
    assert_eq!(listener["udp_flows_reply_timeout"], 0, "{listener}");
    assert!(lb.wait_for_log("backend marked down by passive health", IO_TIMEOUT));
}

/// Without `retries`, the query that hits the blackhole goes unanswered, and its exchange
/// ends at `reply_timeout`, counted.
#[test]
fn without_retries_an_unanswered_query_ends_at_the_reply_timeout() {
    if !dns_tools() {
        return;
    }
    let blackhole = UdpSocket::bind("127.0.0.1:0").unwrap();
    let hole = blackhole.local_addr().unwrap();
    let yaml = format!(
        "admin: {{ listen: 127.0.0.1:0 }}\nlisteners:\n  - name: dns\n    protocol: udp\n    listen: 127.0.0.1:0\n    pool: resolvers\n    udp: {{ responses: 1, reply_timeout: 200ms }}\npools:\n  - name: resolvers\n    passive: {{ max_fails: 5, fail_timeout: 60s }}\n    backends:\n      - {{ address: {hole} }}\n"
    );
    let lb = Ballast::run(&yaml);
    assert_eq!(dig(lb.addr("dns"), "example.test"), None);
    let ended = wait_until(IO_TIMEOUT, || {
        lb.listener("dns")["udp_flows_reply_timeout"] == 1
    });
    let listener = lb.listener("dns");
    assert!(ended, "{listener}");
    assert_eq!(listener["udp_flows_active"], 0, "{listener}");
    let status = lb.backend("resolvers", hole);
    assert_eq!(status["connect_errors"]["no_reply"], 1, "{status}");
    assert_eq!(status["up"], true, "one failure of five: {status}");
}
