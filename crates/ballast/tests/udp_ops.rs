//! UDP under operations: flows of an unchanged listener keep their backend across reloads, and
//! a backend that falls silent (no ICMP, so only the health probe can tell) loses its flows
//! to live backends while the others' flows stay put.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::*;

fn client() -> UdpSocket {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    s
}

/// One datagram and its reply's tag; `None` when no reply came within the read timeout.
fn tag_of(sock: &UdpSocket, to: SocketAddr, msg: &[u8]) -> Option<u8> {
    sock.send_to(msg, to).unwrap();
    let mut buf = [0u8; 2048];
    let (n, _) = sock.recv_from(&mut buf).ok()?;
    assert_eq!(&buf[1..n], msg);
    Some(buf[0])
}

fn rewrite(path: &Path, yaml: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, yaml).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[test]
fn udp_flows_keep_their_backend_across_reloads() {
    let echoes = [udp_echo(b'a'), udp_echo(b'b'), udp_echo(b'c')];
    let admin = free_port();
    let config = |step: usize| {
        let extra = if step % 2 == 1 {
            "  - { name: extra, listen: 127.0.0.1:0, pool: tcp }\n"
        } else {
            ""
        };
        format!(
            "admin: {{ listen: 127.0.0.1:{admin} }}
listeners:
  - name: game
    protocol: udp
    listen: 127.0.0.1:0
    pool: game
    udp: {{ idle_timeout: 1m, max_flows: 1000 }}
{extra}pools:
  - name: game
    backends:
      - {{ address: {}, weight: {} }}
      - {{ address: {}, weight: 1 }}
      - {{ address: {} }}
  - name: tcp
    backends: [{{ address: 127.0.0.1:9 }}]
",
            echoes[0].addr,
            1 + step % 3,
            echoes[1].addr,
            echoes[2].addr
        )
    };
    let path = write_config(&config(0));
    let lb = Ballast::spawn(&["run", "-c", path.to_str().unwrap()]);
    let game = lb.addr("game");
    let clients: Vec<UdpSocket> = (0..30).map(|_| client()).collect();
    let first: Vec<u8> = clients
        .iter()
        .map(|c| tag_of(c, game, b"hello").expect("initial reply"))
        .collect();
    assert!(first.iter().collect::<std::collections::HashSet<_>>().len() >= 2);
    for step in 1..=10 {
        rewrite(&path, &config(step));
        let (code, body) = http(lb.admin(), "POST", "/api/v1/reload", None);
        assert_eq!(code, 200, "reload {step}: {body}");
        for (i, c) in clients.iter().enumerate() {
            let msg = format!("step {step} client {i}");
            assert_eq!(
                tag_of(c, game, msg.as_bytes()),
                Some(first[i]),
                "client {i} changed backend after reload {step}"
            );
        }
    }
}

#[test]
fn a_silent_udp_backend_is_caught_by_its_probe_and_only_its_flows_move() {
    let echoes = [udp_echo(b'a'), udp_echo(b'b'), udp_echo(b'c')];
    let yaml = format!(
        "admin: {{ listen: 127.0.0.1:0 }}
listeners:
  - name: game
    protocol: udp
    listen: 127.0.0.1:0
    pool: game
pools:
  - name: game
    health_check: {{ kind: udp, send: ping, interval: 200ms, timeout: 100ms, rise: 1, fall: 2 }}
    backends:
      - {{ address: {} }}
      - {{ address: {} }}
      - {{ address: {} }}
",
        echoes[0].addr, echoes[1].addr, echoes[2].addr
    );
    let lb = Ballast::run(&yaml);
    let game = lb.addr("game");
    for e in &echoes {
        assert!(
            lb.wait_backend("game", e.addr, Duration::from_secs(10), |b| b["state"]
                == "up")
                .is_some(),
            "backend {} never up",
            e.addr
        );
    }
    let clients: Vec<UdpSocket> = (0..30).map(|_| client()).collect();
    let before: Vec<u8> = clients
        .iter()
        .map(|c| tag_of(c, game, b"hello").expect("initial reply"))
        .collect();
    let per_backend = |tags: &[u8]| {
        let mut m: HashMap<u8, usize> = HashMap::new();
        for t in tags {
            *m.entry(*t).or_default() += 1;
        }
        m
    };
    assert_eq!(per_backend(&before).len(), 3, "{before:?}");

    echoes[1].mute.store(true, Ordering::Relaxed);
    let muted_at = Instant::now();
    // interval × fall + timeout, plus scheduling slack.
    let down = lb.wait_backend("game", echoes[1].addr, Duration::from_secs(5), |b| {
        b["state"] == "down"
    });
    assert!(down.is_some(), "the probe never caught the silent backend");
    let caught_in = muted_at.elapsed();
    assert!(
        caught_in < Duration::from_millis(2000),
        "took {caught_in:?}"
    );

    for (i, c) in clients.iter().enumerate() {
        let tag = tag_of(c, game, b"after").expect("a reply after the move");
        if before[i] == b'b' {
            assert_ne!(tag, b'b', "client {i} still on the silent backend");
        } else {
            assert_eq!(
                tag, before[i],
                "client {i} moved though its backend is fine"
            );
        }
    }
}

#[test]
fn flows_of_a_backend_removed_by_a_reload_end_and_their_clients_move() {
    let echoes = [udp_echo(b'a'), udp_echo(b'b')];
    let admin = free_port();
    let config = |backends: &[&UdpEcho]| {
        let list: Vec<String> = backends
            .iter()
            .map(|e| format!("{{ address: {} }}", e.addr))
            .collect();
        format!(
            "admin: {{ listen: 127.0.0.1:{admin} }}
listeners:
  - {{ name: game, protocol: udp, listen: 127.0.0.1:0, pool: game, udp: {{ idle_timeout: 1m }} }}
pools:
  - {{ name: game, backends: [{}] }}
",
            list.join(", ")
        )
    };
    let path = write_config(&config(&[&echoes[0], &echoes[1]]));
    let lb = Ballast::spawn(&["run", "-c", path.to_str().unwrap()]);
    let game = lb.addr("game");
    let clients: Vec<UdpSocket> = (0..20).map(|_| client()).collect();
    let first: Vec<u8> = clients
        .iter()
        .map(|c| tag_of(c, game, b"hello").expect("initial reply"))
        .collect();
    let on_a = first.iter().filter(|t| **t == b'a').count() as u64;
    assert!(on_a > 0 && on_a < 20, "both backends serve: {first:?}");

    // b stays, a leaves the file.
    rewrite(&path, &config(&[&echoes[1]]));
    let (code, body) = http(lb.admin(), "POST", "/api/v1/reload", None);
    assert_eq!(code, 200, "{body}");
    for (i, c) in clients.iter().enumerate() {
        assert_eq!(
            tag_of(c, game, b"after"),
            Some(b'b'),
            "client {i} (first on {}) still reaches a removed backend",
            first[i] as char
        );
    }
    // Every datagram is visible: b's counters have all of them from its own clients and
    // the moved ones; a is gone from the status.
    let status = lb.status();
    let backends = status["pools"][0]["backends"].as_array().unwrap();
    assert_eq!(backends.len(), 1);
    assert_eq!(backends[0]["datagrams_to_backend"], 40 - on_a);
    let game_status = &status["listeners"][0];
    assert_eq!(game_status["udp_flows_active"], 20);
    assert_eq!(
        game_status["udp_flows_total"],
        20 + on_a,
        "each moved client got a new flow"
    );
}
