//! Per-source limits of UDP listeners (issue 19), through the real binary: new flows per
//! second per source, and datagrams per second per flow, against echo backends on 127.0.0.1.
//! Rates are checked as counts against the bound the elapsed time allows (a token bucket of
//! `burst` plus `rate` per second), never as speeds.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::UdpSocket;
use std::time::{Duration, Instant};

use common::*;

const RATE: u64 = 5;

fn listener_yaml(udp: &str, backend: std::net::SocketAddr) -> String {
    format!(
        "admin: {{ listen: 127.0.0.1:0 }}\nworkers: 2\nlisteners:\n  - name: game\n    protocol: udp\n    listen: 127.0.0.1:0\n    pool: servers\n    udp: {udp}\npools:\n  - name: servers\n    backends:\n      - {{ address: {backend} }}\n"
    )
}

fn count(lb: &Ballast, key: &str) -> u64 {
    lb.listener("game")[key].as_u64().unwrap()
}

fn rejected(lb: &Ballast) -> u64 {
    lb.listener("game")["rejected"]["rate_limit"]
        .as_u64()
        .unwrap()
}

/// Most a bucket of `burst` refilled at `rate` per second may let through in `elapsed`.
fn allowance(burst: u64, rate: u64, elapsed: Duration) -> u64 {
    burst + (rate as f64 * elapsed.as_secs_f64()).ceil() as u64
}

/// Waits (bounded) until each of `sent` datagrams sent since `started` either opened a flow
/// or was refused, and checks that the flows admitted fit a bucket of `RATE` per second;
/// returns how many.
fn admitted_flows(lb: &Ballast, sent: u64, started: Instant) -> u64 {
    let settled = wait_until(IO_TIMEOUT, || {
        count(lb, "udp_flows_total") + rejected(lb) == sent
    });
    let elapsed = started.elapsed();
    let admitted = count(lb, "udp_flows_total");
    assert!(settled, "{}", lb.listener("game"));
    assert!(
        (RATE..=allowance(RATE, RATE, elapsed)).contains(&admitted),
        "{admitted} of {sent} flows admitted in {elapsed:?}"
    );
    admitted
}

/// 20 clients of one source IP open flows at once: a burst of `RATE` is admitted (plus what
/// the bucket refilled meanwhile), each of them served, the rest refused and counted; an
/// admitted flow's later datagrams are not limited by the new-flow rate.
#[test]
fn new_flows_per_second_per_source_admits_a_burst_and_refuses_the_rest() {
    let backend = udp_echo(b'a');
    let lb = Ballast::run(&listener_yaml(
        &format!("{{ new_flows_per_second_per_source: {RATE} }}"),
        backend.addr,
    ));
    let front = lb.addr("game");
    let clients: Vec<UdpSocket> = (0..20)
        .map(|_| {
            let s = UdpSocket::bind("127.0.0.1:0").unwrap();
            s.connect(front).unwrap();
            s.set_nonblocking(true).unwrap();
            s
        })
        .collect();
    let started = Instant::now();
    for c in &clients {
        c.send(b"hello").unwrap();
    }
    let admitted = admitted_flows(&lb, 20, started);
    // Each admitted flow got its reply; a refused client got none.
    let mut buf = [0u8; 64];
    let mut answered = vec![false; clients.len()];
    let all = wait_until(IO_TIMEOUT, || {
        for (c, done) in clients.iter().zip(answered.iter_mut()) {
            if c.recv(&mut buf).is_ok() {
                *done = true;
            }
        }
        answered.iter().filter(|&&a| a).count() as u64 == admitted
    });
    assert!(all, "replies: {answered:?}");
    // An admitted flow sends on, unlimited by the new-flow rate.
    let (i, _) = answered.iter().enumerate().find(|(_, &a)| a).unwrap();
    let served = &clients[i];
    served.set_nonblocking(false).unwrap();
    served.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    for n in 0..20 {
        let msg = format!("again {n}");
        served.send(msg.as_bytes()).unwrap();
        let got = served.recv(&mut buf).unwrap();
        assert_eq!(&buf[1..got], msg.as_bytes());
    }
    assert_eq!(count(&lb, "udp_flows_total"), admitted);
}

/// With `responses`, every datagram is a flow of its own: one client socket's queries are
/// admitted at the source's rate, each exchange answered, the rest refused and counted.
#[test]
fn with_responses_the_new_flow_rate_counts_every_datagram() {
    let backend = udp_echo(b'a');
    let lb = Ballast::run(&listener_yaml(
        &format!("{{ responses: 1, new_flows_per_second_per_source: {RATE} }}"),
        backend.addr,
    ));
    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    client.connect(lb.addr("game")).unwrap();
    let started = Instant::now();
    for n in 0..20 {
        client.send(format!("q{n}").as_bytes()).unwrap();
    }
    let admitted = admitted_flows(&lb, 20, started);
    let answered = wait_until(IO_TIMEOUT, || count(&lb, "udp_flows_answered") == admitted);
    assert!(answered, "{}", lb.listener("game"));
}

/// `datagrams_per_second_per_flow`: a flood from one client is cut to the flow's bucket;
/// what passed reached the backend, the rest is refused and counted.
#[test]
fn datagrams_per_second_per_flow_cuts_a_flood_to_the_flow_rate() {
    const PER_FLOW: u64 = 10;
    let backend = udp_echo(b'a');
    let lb = Ballast::run(&listener_yaml(
        &format!("{{ datagrams_per_second_per_flow: {PER_FLOW} }}"),
        backend.addr,
    ));
    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    client.connect(lb.addr("game")).unwrap();
    let started = Instant::now();
    for n in 0..60 {
        // One size: the kernel may coalesce them (UDP_GRO), and a buffer is cut to the bucket.
        client.send(format!("shot {n:02}").as_bytes()).unwrap();
    }
    let to_backend = || {
        lb.backend("servers", backend.addr)["datagrams_to_backend"]
            .as_u64()
            .unwrap()
    };
    let settled = wait_until(IO_TIMEOUT, || to_backend() + rejected(&lb) == 60);
    let elapsed = started.elapsed();
    let forwarded = to_backend();
    assert!(settled, "{} forwarded; {}", forwarded, lb.listener("game"));
    assert!(
        (PER_FLOW..=allowance(PER_FLOW, PER_FLOW, elapsed)).contains(&forwarded),
        "{forwarded} of 60 datagrams forwarded in {elapsed:?}"
    );
    assert_eq!(count(&lb, "udp_flows_total"), 1);
}
