//! Long TCP sessions on 127.0.0.1 (issue 19): keepalive seen on the wire by `ss`, on the
//! client's side (`listeners[].keepalive`) and the backend's (`pools[].keepalive`), and only
//! where configured. A peer that vanishes is in tests/keepalive_netns.rs.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::Duration;

use common::*;

/// An established session through `front`, greeted by the echo backend (the echo of its
/// first byte may still follow).
fn session(front: SocketAddr) -> TcpStream {
    let mut s = connect(front);
    s.write_all(b"x").unwrap();
    let mut line = String::new();
    BufReader::new(s.try_clone().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "b");
    s
}

/// `ss -tnoH state established`: one line per socket, `local peer [timer:(...)]` after the
/// queues.
fn sockets() -> Vec<String> {
    let out = run_ok(Command::new("ss").args(["-tnoH", "state", "established"]));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

/// The `ss` line of the socket from `local` to `peer`.
fn socket(lines: &[String], local: SocketAddr, peer: SocketAddr) -> String {
    lines
        .iter()
        .find(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            cols.get(2) == Some(&local.to_string().as_str())
                && cols.get(3) == Some(&peer.to_string().as_str())
        })
        .unwrap_or_else(|| panic!("no socket {local} -> {peer} in {lines:#?}"))
        .clone()
}

/// The socket Ballast opened to `backend` for the session whose backend side the backend
/// accepted (its peer is Ballast's local address).
fn backend_side(lines: &[String], backend: SocketAddr, ballast_local: SocketAddr) -> String {
    socket(lines, ballast_local, backend)
}

#[test]
fn keepalive_is_set_on_both_sockets_and_only_where_configured() {
    if !require_tool("ss", "iproute2") {
        return;
    }
    // The backend records each connection's peer: Ballast's end of the backend socket.
    let peers = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = peers.clone();
    let backend = serve_each(move |stream| {
        seen.lock().unwrap().push(stream.peer_addr().unwrap());
        serve_named(stream, "b", Duration::ZERO);
    });
    let lb = Ballast::run(&format!(
        "listeners:\n  - name: kept\n    listen: 127.0.0.1:0\n    pool: kept\n    keepalive: {{ idle: 41s, interval: 5s, count: 3 }}\n    user_timeout: 30s\n  - {{ name: plain, listen: 127.0.0.1:0, pool: plain }}\npools:\n  - name: kept\n    keepalive: {{ idle: 53s }}\n    user_timeout: 20s\n    backends: [{{ address: \"{backend}\" }}]\n  - name: plain\n    backends: [{{ address: \"{backend}\" }}]\n"
    ));
    let kept = session(lb.addr("kept"));
    let plain = session(lb.addr("plain"));
    let lines = sockets();
    let recorded = peers.lock().unwrap().clone();
    assert_eq!(recorded.len(), 2, "{recorded:?}");

    let client_side = socket(&lines, lb.addr("kept"), kept.local_addr().unwrap());
    assert!(
        client_side.contains("timer:(keepalive,"),
        "client side: {client_side}"
    );
    let backend_sockets: Vec<String> = recorded
        .iter()
        .map(|local| backend_side(&lines, backend, *local))
        .collect();
    assert!(
        backend_sockets
            .iter()
            .any(|l| l.contains("timer:(keepalive,")),
        "backend side: {backend_sockets:#?}"
    );
    // Without the keys, neither socket of the plain session has a keepalive timer.
    let plain_client = socket(&lines, lb.addr("plain"), plain.local_addr().unwrap());
    assert!(!plain_client.contains("keepalive"), "{plain_client}");
    assert_eq!(
        backend_sockets
            .iter()
            .filter(|l| l.contains("keepalive"))
            .count(),
        1,
        "only the kept pool's backend socket: {backend_sockets:#?}"
    );
}

#[test]
fn a_busy_session_ends_at_its_max_lifetime_not_before() {
    let backend = named_backend("b", Duration::ZERO);
    let lb = Ballast::run(&format!(
        "admin: {{ listen: 127.0.0.1:0 }}\nlisteners:\n  - name: front\n    listen: 127.0.0.1:0\n    pool: p\n    timeouts: {{ idle: 1h, max_lifetime: 1500ms, max_lifetime_jitter: 500ms }}\npools:\n  - {{ name: p, backends: [{{ address: \"{}\" }}] }}\n",
        backend.addr
    ));
    let mut s = session(lb.addr("front"));
    let mut echo = [0u8; 1];
    // Traffic all along: activity does not extend a lifetime. Bounded by the IO timeout.
    let started = std::time::Instant::now();
    let ended = loop {
        assert!(
            started.elapsed() < IO_TIMEOUT,
            "the session outlived its max_lifetime"
        );
        if s.write_all(b"p").is_err() {
            break true;
        }
        match std::io::Read::read(&mut s, &mut echo) {
            Ok(1) => std::thread::sleep(Duration::from_millis(20)),
            _ => break true,
        }
    };
    assert!(ended);
    assert!(
        lb.wait_for_log("end=max_lifetime", IO_TIMEOUT),
        "{}",
        lb.log_text()
    );
    let line = lb
        .log_text()
        .lines()
        .find(|l| l.contains("end=max_lifetime"))
        .unwrap()
        .to_string();
    // The lifetime less its jitter at the most: never closed before 1 s.
    let duration: u64 = line
        .split("duration_ms=")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(duration >= 1000, "closed after {duration} ms: {line}");
    let status = lb.status();
    assert_eq!(status["listeners"][0]["closed_max_lifetime"], 1, "{status}");
}
