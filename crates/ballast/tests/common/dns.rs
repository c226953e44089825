//! A DNS peer for the tests: dnsmasq answering `example.test` names, and dig.
#![allow(dead_code, clippy::unwrap_used)]

use std::net::{SocketAddr, UdpSocket};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use super::{spawn_peer, Peer};

pub fn dig(server: SocketAddr, name: &str) -> Option<String> {
    let out = Command::new("dig")
        .args([
            &format!("@{}", server.ip()),
            "-p",
            &server.port().to_string(),
            name,
            "A",
            "+short",
            "+time=1",
            "+tries=1",
        ])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// A port free for both UDP and TCP (dnsmasq binds both).
pub fn free_dns_port() -> u16 {
    loop {
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = tcp.local_addr().unwrap().port();
        if UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// A dnsmasq answering example.test names, and its address.
pub fn start_dnsmasq() -> (Peer, SocketAddr) {
    start_dnsmasq_with(
        &[
            "--address=/example.test/10.1.2.3",
            "--address=/game.example.test/10.9.8.7",
        ],
        "example.test",
        "10.1.2.3",
    )
}

/// A dnsmasq with `args` besides the common ones (foreground, no upstream, no /etc/hosts,
/// loopback only), ready once `probe` answers (A, `dig +short`) with `expect`.
pub fn start_dnsmasq_with(args: &[&str], probe: &str, expect: &str) -> (Peer, SocketAddr) {
    // Another process may take the port between our check and dnsmasq's bind: try again on a
    // fresh port a bounded number of times.
    for _ in 0..5 {
        let port = free_dns_port();
        let mut server = spawn_peer(
            Command::new("dnsmasq")
                .args([
                    "--keep-in-foreground",
                    "--conf-file=/dev/null",
                    "--pid-file=",
                    "--no-resolv",
                    "--no-hosts",
                    "--bind-interfaces",
                    "--listen-address=127.0.0.1",
                    &format!("--port={port}"),
                ])
                .args(args),
        );
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if dig(addr, probe).as_deref() == Some(expect) {
                return (server, addr);
            }
            if server.0.try_wait().unwrap().is_some() {
                break;
            }
            thread::sleep(Duration::from_millis(50));
        }
    }
    panic!("dnsmasq did not come up");
}

/// A count from a dnsperf report, e.g. `Queries sent` or `Queries lost`.
pub fn dnsperf_count(report: &str, name: &str) -> u64 {
    let line = report
        .lines()
        .find(|l| l.trim_start().starts_with(name))
        .unwrap_or_else(|| panic!("no {name:?} in:\n{report}"));
    line.split(':')
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap()
}
