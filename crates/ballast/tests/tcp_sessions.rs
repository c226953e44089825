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

/// An established session through `front`, greeted by the echo backend.
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
