//! `pools[].queue`: sessions wait for a backend slot instead of being refused when every
//! backend is at its `max_connections`, are served in arrival order across workers as slots
//! free up, and are closed and counted when their time runs out or the queue is full. Against
//! a real redis-server and the plain echo backend of the other tests.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::redis::Redis;
use common::*;

/// The pool's entry in the status API.
fn pool(lb: &Ballast, name: &str) -> serde_json::Value {
    let status = lb.status();
    status["pools"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .unwrap()
        .clone()
}

fn wait_queue_length(lb: &Ballast, name: &str, want: u64) {
    let reached = wait_until(IO_TIMEOUT, || pool(lb, name)["queue_length"] == want);
    assert!(
        reached,
        "queue of {name} never reached {want}: {}",
        pool(lb, name)
    );
}

fn listener_rejected(lb: &Ballast, listener: &str) -> serde_json::Value {
    let status = lb.status();
    status["listeners"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["name"] == listener)
        .unwrap()["rejected"]
        .clone()
}

/// One RESP reply line (`:7`), read within the IO timeout.
fn reply(reader: &mut BufReader<TcpStream>) -> String {
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    line.trim_end().to_string()
}

#[test]
fn twenty_redis_clients_through_two_slots_are_all_served_in_order() {
    if !require_tool("redis-server", "redis-server") {
        return;
    }
    let redis = Redis::start().expect("redis-server did not start");
    // Two workers, so that a slot given back on one worker is taken by a session waiting on
    // the other (the kernel spreads the clients over both).
    let lb = Ballast::run(&format!(
        "workers: 2\nadmin: {{ listen: 127.0.0.1:0 }}\nlisteners:\n  - {{ name: redis, listen: 127.0.0.1:0, pool: db }}\npools:\n  - name: db\n    queue: {{ max: 100, timeout: 60s }}\n    backends: [{{ address: \"{}\", max_connections: 2 }}]\n",
        redis.addr
    ));
    let front = lb.addr("redis");
    const CLIENTS: usize = 20;
    let mut clients = Vec::with_capacity(CLIENTS);
    for i in 0..CLIENTS {
        let s = connect(front);
        let mut writer = s.try_clone().unwrap();
        // Sent at once: a waiting client's request sits in the kernel until it is served.
        writer.write_all(b"INCR order\r\n").unwrap();
        let mut reader = BufReader::new(s);
        if i < 2 {
            // The two slots: served now, and Redis counts them 1 and 2.
            assert_eq!(reply(&mut reader), format!(":{}", i + 1));
        } else {
            // Each client joins the line behind the ones before it.
            wait_queue_length(&lb, "db", (i - 1) as u64);
        }
        clients.push(Some(reader));
    }
    // Each session that ends frees its slot for the first in line and no one else: closing
    // client k serves client k + 2, whose INCR is therefore the (k + 3)th Redis sees.
    for k in 0..CLIENTS - 2 {
        drop(clients[k].take());
        let next = clients[k + 2].as_mut().unwrap();
        assert_eq!(
            reply(next),
            format!(":{}", k + 3),
            "client {} was not served in its turn",
            k + 2
        );
    }
    wait_queue_length(&lb, "db", 0);
    let db = pool(&lb, "db");
    assert_eq!(db["queued_total"], (CLIENTS - 2) as u64, "{db}");
    let rejected = listener_rejected(&lb, "redis");
    for reason in [
        "queue_timeout",
        "queue_full",
        "no_backend",
        "max_connections",
    ] {
        assert_eq!(rejected[reason], 0, "{reason}: {rejected}");
    }
    let (code, metrics) = http(lb.admin(), "GET", "/metrics", None);
    assert_eq!(code, 200);
    assert!(
        metrics
            .lines()
            .any(|l| l == "ballast_pool_queued_total{pool=\"db\"} 18"),
        "{metrics}"
    );
}

/// A session of the echo backend: greeted with the backend's name once it is connected.
fn greeted(s: &mut TcpStream) -> String {
    let mut reader = BufReader::new(s.try_clone().unwrap());
    let mut name = String::new();
    reader.read_line(&mut name).unwrap();
    name.trim().to_string()
}

/// Reads until the balancer closes the connection; true when it did without sending a byte.
fn closed_without_a_byte(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 16];
    matches!(s.read(&mut buf), Ok(0))
}

#[test]
fn a_waiting_echo_client_is_served_when_the_slot_frees_and_timeouts_and_a_full_queue_are_counted() {
    let backend = named_backend("echo", Duration::ZERO);
    let lb = Ballast::run(&format!(
        "workers: 2\nadmin: {{ listen: 127.0.0.1:0 }}\nlisteners:\n  - {{ name: long, listen: 127.0.0.1:0, pool: patient }}\n  - {{ name: short, listen: 127.0.0.1:0, pool: hasty }}\npools:\n  - name: patient\n    queue: {{ max: 1, timeout: 60s }}\n    backends: [{{ address: \"{a}\", max_connections: 1 }}]\n  - name: hasty\n    queue: {{ max: 5, timeout: 300ms }}\n    backends: [{{ address: \"{a}\", max_connections: 1 }}]\n",
        a = backend.addr
    ));

    // Served when the slot frees.
    let mut first = connect(lb.addr("long"));
    first.write_all(b"1").unwrap();
    assert_eq!(greeted(&mut first), "echo");
    let mut second = connect(lb.addr("long"));
    second.write_all(b"2").unwrap();
    wait_queue_length(&lb, "patient", 1);
    // The queue holds one: a third client is refused at once.
    let mut third = connect(lb.addr("long"));
    assert!(closed_without_a_byte(&mut third));
    drop(first);
    assert_eq!(greeted(&mut second), "echo");
    let rejected = listener_rejected(&lb, "long");
    assert_eq!(rejected["queue_full"], 1, "{rejected}");
    assert_eq!(rejected["queue_timeout"], 0, "{rejected}");

    // Closed at the timeout while the slot stays taken.
    let mut holder = connect(lb.addr("short"));
    holder.write_all(b"h").unwrap();
    assert_eq!(greeted(&mut holder), "echo");
    // Silent: bytes it sent and the balancer never read would turn the close into a reset.
    let mut waiter = connect(lb.addr("short"));
    assert!(closed_without_a_byte(&mut waiter));
    let rejected = listener_rejected(&lb, "short");
    assert_eq!(rejected["queue_timeout"], 1, "{rejected}");
    assert!(
        lb.wait_for_log("end=queue_timeout", IO_TIMEOUT),
        "{}",
        lb.log_text()
    );
    assert_eq!(pool(&lb, "hasty")["queue_length"], 0);
    let (_, metrics) = http(lb.admin(), "GET", "/metrics", None);
    let has = |line: &str| metrics.lines().any(|l| l == line);
    assert!(
        has("ballast_listener_rejected_total{listener=\"short\",reason=\"queue_timeout\"} 1"),
        "{metrics}"
    );
    assert!(
        has("ballast_pool_queue_length{pool=\"hasty\"} 0"),
        "{metrics}"
    );
    drop(holder);
}
