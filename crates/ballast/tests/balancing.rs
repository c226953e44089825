//! Balancing through the real binary: weights, stickiness, backups, least_time.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use common::*;

fn pool_yaml(algorithm: &str, backends: &[(SocketAddr, u32, bool)], extra: &str) -> String {
    let list: String = backends
        .iter()
        .map(|(addr, weight, backup)| {
            format!("      - {{ address: {addr}, weight: {weight}, backup: {backup} }}\n")
        })
        .collect();
    format!(
        "workers: 2\nlisteners:\n  - name: front\n    listen: 127.0.0.1:0\n    pool: p\npools:\n  - name: p\n    algorithm: {algorithm}\n{extra}    backends:\n{list}"
    )
}

/// Opens a session, sends one byte and reads the backend's greeting line; returns the session
/// (still open) and the backend's name.
fn open_session(addr: SocketAddr, source: Option<&str>) -> (TcpStream, String) {
    let stream = match source {
        None => connect(addr),
        Some(ip) => {
            let sock =
                socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
            let local: SocketAddr = format!("{ip}:0").parse().unwrap();
            sock.bind(&local.into()).unwrap();
            sock.connect_timeout(&addr.into(), IO_TIMEOUT).unwrap();
            let s: TcpStream = sock.into();
            s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
            s
        }
    };
    let mut writer = stream.try_clone().unwrap();
    writer.write_all(b"x").unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut name = String::new();
    reader.read_line(&mut name).unwrap();
    (stream, name.trim().to_string())
}

/// 3000 sessions, all held open so that connection-counting algorithms see real load.
fn shares(algorithm: &str) -> HashMap<String, f64> {
    let backends: Vec<_> = ["w3", "w2", "w1"]
        .iter()
        .map(|n| named_backend(n, Duration::ZERO))
        .collect();
    let spec: Vec<_> = backends
        .iter()
        .zip([3, 2, 1])
        .map(|(b, w)| (b.addr, w, false))
        .collect();
    let lb = Ballast::run(&pool_yaml(algorithm, &spec, ""));
    let addr = lb.addr("front");
    let mut counts: HashMap<String, u32> = HashMap::new();
    let mut held = Vec::with_capacity(3000);
    for _ in 0..3000 {
        let (s, name) = open_session(addr, None);
        *counts.entry(name).or_default() += 1;
        held.push(s);
    }
    counts
        .into_iter()
        .map(|(k, v)| (k, f64::from(v) / 3000.0))
        .collect()
}

fn assert_weighted(algorithm: &str) {
    let shares = shares(algorithm);
    for (name, expected) in [("w3", 0.5), ("w2", 1.0 / 3.0), ("w1", 1.0 / 6.0)] {
        let got = shares.get(name).copied().unwrap_or(0.0);
        assert!(
            (got - expected).abs() <= 0.05,
            "{algorithm}: {name} got {:.1} %, want {:.1} % ± 5: {shares:?}",
            got * 100.0,
            expected * 100.0
        );
    }
}

#[test]
fn round_robin_follows_weights() {
    assert_weighted("round_robin");
}

#[test]
fn random_follows_weights() {
    assert_weighted("random");
}

#[test]
fn least_connections_follows_weights() {
    assert_weighted("least_connections");
}

#[test]
fn power_of_two_follows_weights() {
    assert_weighted("power_of_two");
}

/// Weighted round robin interleaves a heavy backend instead of sending it a run of five: a
/// 5:1:1 pool never gives the heavy backend more than 3 in a row, also across cycles (nginx's
/// smooth sequence a,a,b,a,c,a,a gives 4 where cycles join). Fewer than 3 is impossible: 5/7
/// of picks exceed the 2/3 that runs of at most two allow.
#[test]
fn round_robin_interleaves_a_heavy_backend() {
    let backends: Vec<_> = ["a", "b", "c"]
        .iter()
        .map(|n| named_backend(n, Duration::ZERO))
        .collect();
    let spec: Vec<_> = backends
        .iter()
        .zip([5, 1, 1])
        .map(|(b, w)| (b.addr, w, false))
        .collect();
    let lb = Ballast::run(&pool_yaml("round_robin", &spec, ""));
    let addr = lb.addr("front");
    let order: Vec<String> = (0..70).map(|i| ask(addr, &format!("{i}"))).collect();
    let mut run = 0;
    for name in &order {
        run = if name == "a" { run + 1 } else { 0 };
        assert!(
            run <= 3,
            "more than three in a row to the heavy backend: {order:?}"
        );
    }
    for window in order.windows(7) {
        let heavy = window.iter().filter(|n| *n == "a").count();
        assert_eq!(heavy, 5, "a window of 7 picks is not 5:1:1: {window:?}");
    }
}

#[test]
fn maglev_source_ip_keeps_each_client_address_on_one_backend() {
    let backends: Vec<_> = ["m1", "m2", "m3", "m4"]
        .iter()
        .map(|n| named_backend(n, Duration::ZERO))
        .collect();
    let spec: Vec<_> = backends.iter().map(|b| (b.addr, 1, false)).collect();
    let lb = Ballast::run(&pool_yaml("maglev", &spec, "    hash_key: source_ip\n"));
    let addr = lb.addr("front");
    let mut per_source: HashMap<String, HashMap<String, u32>> = HashMap::new();
    for round in 0..20 {
        for x in 1..=12 {
            let ip = format!("127.0.0.{}", x + 1);
            let (s, name) = open_session(addr, Some(&ip));
            drop(s);
            *per_source.entry(ip).or_default().entry(name).or_default() += 1;
            let _ = round;
        }
    }
    let mut used = std::collections::HashSet::new();
    for (ip, names) in &per_source {
        assert_eq!(names.len(), 1, "{ip} went to several backends: {names:?}");
        used.extend(names.keys().cloned());
    }
    assert!(
        used.len() >= 2,
        "12 sources all hashed to one backend: {per_source:?}"
    );
}

#[test]
fn backups_serve_only_while_every_primary_is_down() {
    // Both ports are held while the second is chosen, so the two cannot be the same port
    // (which would make the config invalid: a duplicate backend).
    let (dead1, dead2) = {
        let a = TcpListener::bind("127.0.0.1:0").unwrap();
        let b = TcpListener::bind("127.0.0.1:0").unwrap();
        (a.local_addr().unwrap(), b.local_addr().unwrap())
    };
    let backup = named_backend("backup", Duration::ZERO);
    let spec = [(dead1, 1, false), (dead2, 1, false), (backup.addr, 1, true)];
    let lb = Ballast::run(&pool_yaml(
        "round_robin",
        &spec,
        "    passive: { max_fails: 1, fail_timeout: 1s }\n",
    ));
    let addr = lb.addr("front");
    for i in 0..20 {
        assert_eq!(ask(addr, &format!("{i}")), "backup");
    }
    // A primary comes back on its old address: once its passive timeout ends, new
    // connections go to it and not to the backup.
    let listener = TcpListener::bind(dead1).unwrap();
    let primary = serve_named(listener, "primary");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if ask(addr, "probe") == "primary" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the primary never got traffic back"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    for i in 0..20 {
        assert_eq!(ask(addr, &format!("after {i}")), "primary");
    }
    drop(primary);
}

fn serve_named(listener: TcpListener, name: &str) -> std::thread::JoinHandle<()> {
    let name = name.to_string();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let name = name.clone();
            std::thread::spawn(move || {
                use std::io::Read;
                let mut buf = [0u8; 4096];
                let mut greeted = false;
                while let Ok(n) = stream.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    if !greeted {
                        greeted = true;
                        let _ = stream.write_all(format!("{name}\n").as_bytes());
                    }
                    let _ = stream.write_all(&buf[..n]);
                }
                let _ = stream.shutdown(std::net::Shutdown::Write);
            });
        }
    })
}

#[test]
fn least_time_first_byte_avoids_a_slow_backend() {
    let fast1 = named_backend("fast1", Duration::ZERO);
    let fast2 = named_backend("fast2", Duration::ZERO);
    let slow = named_backend("slow", Duration::from_millis(50));
    let spec = [
        (fast1.addr, 1, false),
        (fast2.addr, 1, false),
        (slow.addr, 1, false),
    ];
    let lb = Ballast::run(&pool_yaml(
        "least_time",
        &spec,
        "    time_metric: first_byte\n",
    ));
    let addr = lb.addr("front");
    let mut counts: HashMap<String, u32> = HashMap::new();
    for i in 0..600 {
        *counts.entry(ask(addr, &format!("q{i}"))).or_default() += 1;
    }
    // Against the faster of the two fast backends, and below an even share: a latency sample
    // is refreshed only when its backend is picked, so on a loaded machine one fast backend
    // hit by a scheduling stall can stay penalized for the rest of this short run (seen once:
    // 35 / 382 / 183). Picks blind to latency give about 200 each and fail both checks.
    let slow_n = counts.get("slow").copied().unwrap_or(0);
    let fast_max = counts["fast1"].max(counts["fast2"]);
    assert!(
        slow_n * 2 < fast_max && slow_n * 3 < 600,
        "slow got {slow_n}, fast ones {counts:?}"
    );
}
