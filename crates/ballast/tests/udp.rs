//! UDP through the real binary: game-like flows to echo backends, and DNS with real peers
//! (dnsmasq behind Ballast, dig and dnsperf in front).
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::net::UdpSocket;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use common::dns::{dig, dnsperf_count, free_dns_port, start_dnsmasq};
use common::*;

#[test]
fn game_clients_get_every_reply_from_one_backend_spread_by_weight() {
    let backends = [udp_echo(b'a'), udp_echo(b'b'), udp_echo(b'c')];
    let yaml = format!(
        "workers: 2\nlisteners:\n  - name: game\n    protocol: udp\n    listen: 127.0.0.1:0\n    pool: servers\n    udp: {{ idle_timeout: 30s, max_flows: 10000 }}\npools:\n  - name: servers\n    algorithm: round_robin\n    backends:\n      - {{ address: {}, weight: 3 }}\n      - {{ address: {}, weight: 2 }}\n      - {{ address: {}, weight: 1 }}\n",
        backends[0].addr, backends[1].addr, backends[2].addr
    );
    let lb = Ballast::run(&yaml);
    let addr = lb.addr("game");
    const CLIENTS: usize = 200;
    const DATAGRAMS: u32 = 200;
    const THREADS: usize = 8;
    let results: Vec<_> = (0..THREADS)
        .map(|t| {
            thread::spawn(move || {
                let clients: Vec<UdpSocket> = (0..CLIENTS / THREADS)
                    .map(|_| {
                        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
                        s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
                        // Connected, as a game client is: the kernel then drops datagrams
                        // from anyone but the listener. Tests run side by side, and a stray
                        // datagram (another test's health probe to a port since reused by
                        // this socket) would otherwise be taken for a reply. A reply from the
                        // wrong address never arrives and the read times out.
                        s.connect(addr).unwrap();
                        s
                    })
                    .collect();
                let mut tags = vec![None; clients.len()];
                let mut buf = [0u8; 64];
                // Clients take turns, one datagram in flight each: a game's steady tick.
                for seq in 0..DATAGRAMS {
                    for (c, sock) in clients.iter().enumerate() {
                        let msg = format!("t{t} c{c} #{seq}");
                        sock.send(msg.as_bytes()).unwrap();
                        let n = sock.recv(&mut buf).unwrap();
                        assert_eq!(&buf[1..n], msg.as_bytes(), "reply to {msg}");
                        match tags[c] {
                            None => tags[c] = Some(buf[0]),
                            Some(tag) => assert_eq!(tag, buf[0], "{msg} changed backend"),
                        }
                    }
                }
                tags.into_iter().map(Option::unwrap).collect::<Vec<u8>>()
            })
        })
        .collect();
    let mut per_backend: HashMap<u8, usize> = HashMap::new();
    for r in results {
        for tag in r.join().unwrap() {
            *per_backend.entry(tag).or_default() += 1;
        }
    }
    for (tag, weight) in [(b'a', 3.0), (b'b', 2.0), (b'c', 1.0)] {
        let share = per_backend.get(&tag).copied().unwrap_or(0) as f64 / CLIENTS as f64;
        let want = weight / 6.0;
        assert!(
            (share - want).abs() <= 0.10,
            "backend {} got {:.1} % of clients, want {:.1} %: {per_backend:?}",
            tag as char,
            share * 100.0,
            want * 100.0
        );
    }
}

#[test]
fn dns_through_ballast_with_dnsmasq_dig_and_dnsperf() {
    if !require_tools(&[
        ("dnsmasq", "dnsmasq-base"),
        ("dig", "bind9-dnsutils"),
        ("dnsperf", "dnsperf"),
    ]) {
        return;
    }
    let (_dnsmasq, dns) = start_dnsmasq();
    let yaml = format!(
        "listeners:\n  - name: dns\n    protocol: udp\n    listen: 127.0.0.1:0\n    pool: resolvers\n    udp: {{ idle_timeout: 5s, max_flows: 1000 }}\npools:\n  - name: resolvers\n    backends:\n      - {{ address: {} }}\n",
        dns
    );
    let lb = Ballast::run(&yaml);
    let addr = lb.addr("dns");
    assert_eq!(dig(addr, "example.test").as_deref(), Some("10.1.2.3"));
    assert_eq!(dig(addr, "game.example.test").as_deref(), Some("10.9.8.7"));

    let queries = write_config("example.test A\ngame.example.test A\nwww.example.test A\n");
    let out = Command::new("dnsperf")
        .args([
            "-s",
            "127.0.0.1",
            "-p",
            &addr.port().to_string(),
            "-d",
            queries.to_str().unwrap(),
            "-l",
            "3",
            "-Q",
            "2000",
            "-c",
            "4",
            "-t",
            "2",
        ])
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "dnsperf failed:\n{report}");
    let field = |name: &str| dnsperf_count(&report, name);
    let sent = field("Queries sent");
    let lost = field("Queries lost");
    assert!(sent >= 3000, "dnsperf sent only {sent}:\n{report}");
    assert_eq!(lost, 0, "lost queries at a moderate rate:\n{report}");
}

/// unbound with `proxy-protocol-port` reads a PROXY v2 header in front of each datagram, as
/// Ballast sends with `send_proxy_protocol: v2`: it answers, and logs the real client.
#[test]
fn unbound_behind_ballast_sees_the_real_client_through_proxy_v2_over_udp() {
    if !require_tools(&[("unbound", "unbound"), ("dig", "bind9-dnsutils")]) {
        return;
    }
    let dir = std::env::temp_dir().join(format!("ballast-unbound-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let port = free_dns_port();
    let log = dir.join("unbound.log");
    let conf = dir.join("unbound.conf");
    std::fs::write(
        &conf,
        format!(
            "server:
  interface: 127.0.0.1@{port}
  proxy-protocol-port: {port}
  access-control: 0.0.0.0/0 allow
  do-daemonize: no
  username: \"\"
  chroot: \"\"
  directory: \"{dir}\"
  pidfile: \"\"
  use-syslog: no
  logfile: \"{log}\"
  log-queries: yes
  do-ip6: no
  do-tcp: no
  module-config: \"iterator\"
  local-zone: \"example.test.\" static
  local-data: \"a.example.test. A 10.7.7.7\"
",
            dir = dir.display(),
            log = log.display()
        ),
    )
    .unwrap();
    let _unbound = spawn_peer(Command::new("unbound").arg("-d").arg("-c").arg(&conf));
    let yaml = format!(
        "workers: 1\nlisteners:\n  - name: dns\n    protocol: udp\n    listen: 127.0.0.1:0\n    pool: ub\npools:\n  - name: ub\n    send_proxy_protocol: v2\n    backends: [{{ address: 127.0.0.1:{port} }}]\n"
    );
    let lb = Ballast::run(&yaml);
    let addr = lb.addr("dns");
    // unbound needs a moment to start; dig from a source address of its own.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let out = Command::new("dig")
            .args(["-b", "127.0.0.9", &format!("@{}", addr.ip()), "-p"])
            .arg(addr.port().to_string())
            .args(["a.example.test", "A", "+short", "+time=1", "+tries=1"])
            .output()
            .unwrap();
        if String::from_utf8_lossy(&out.stdout).trim() == "10.7.7.7" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no answer through Ballast from unbound"
        );
        thread::sleep(Duration::from_millis(100));
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("127.0.0.9 a.example.test. A IN") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "unbound did not log the real client 127.0.0.9:\n{text}"
        );
        thread::sleep(Duration::from_millis(50));
    }
}
