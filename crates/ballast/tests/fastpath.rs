//! The socket fast path through the real binary: clients started in a cgroup of the test's
//! own reach backends directly, picked by Ballast's tables, while Ballast's relay accepts
//! nothing; health and admin state change what the hook sees; `mode` decides what happens
//! when the programs cannot load; a killed Ballast leaves nothing attached. Needs root and
//! cgroup v2 (skips with a message otherwise; fails under CI=true).
#![allow(clippy::unwrap_used)]

mod common;

use std::process::{Command, Stdio};
use std::thread;
use std::time::Duration;

use common::cgroup::TestCgroup;
use common::*;

fn privileged() -> bool {
    if common::cgroup::cgroup2_mount().is_none() {
        skip("no cgroup v2 mount");
        return false;
    }
    require_root("load BPF programs and make a cgroup")
        && require_tool("python3", "python3")
        && require_tool("bpftool", "bpftool")
}

/// Runs a Python client inside `cgroup`: `count` connects to 127.0.0.1:`port`, each sends a
/// byte and prints the backend's greeting and what getpeername() says; a connect the relay
/// closes prints "closed".
fn clients(cgroup: &TestCgroup, port: u16, count: usize) -> Vec<(String, String)> {
    clients_to(cgroup, "127.0.0.1", port, count)
}

/// The same to `host` (an IPv4 or IPv6 address); an IPv6 peer is printed as `[ip]:port`.
fn clients_to(cgroup: &TestCgroup, host: &str, port: u16, count: usize) -> Vec<(String, String)> {
    let shape = if host.contains(':') {
        "[%s]:%d"
    } else {
        "%s:%d"
    };
    let script = format!(
        r#"
import socket
for _ in range({count}):
    s = socket.create_connection(('{host}', {port}), timeout=5)
    peer = '{shape}' % s.getpeername()[:2]
    try:
        s.sendall(b'x')
        line = s.makefile().readline().strip()
    except ConnectionResetError:
        # The relay closes a connect it has no backend for, unread byte and all: a reset.
        line = ''
    print(line or 'closed', peer)
    s.close()
"#
    );
    cgroup
        .run_python(&script)
        .lines()
        .map(|l| {
            let (name, peer) = l.split_once(' ').unwrap();
            (name.to_string(), peer.to_string())
        })
        .collect()
}

fn listener_entry(lb: &Ballast, name: &str) -> serde_json::Value {
    lb.status()["listeners"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["name"] == name)
        .unwrap()
        .clone()
}

/// 20 connects of `seen` went to backends "a" and "b" round robin, each showing `front` as
/// its peer, and listener "front"'s relay accepted none; returns how many went to a name.
fn assert_steered_round_robin<'a>(
    lb: &Ballast,
    seen: &'a [(String, String)],
    front: &str,
) -> impl Fn(&str) -> usize + 'a {
    let on = move |name: &str| seen.iter().filter(|(n, _)| n == name).count();
    assert_eq!(on("a") + on("b"), 20, "{seen:?}");
    assert!(on("a") >= 5 && on("b") >= 5, "round robin: {seen:?}");
    assert!(seen.iter().all(|(_, peer)| peer == front), "{seen:?}");
    let listener = listener_entry(lb, "front");
    assert_eq!(
        listener["connections_total"], 0,
        "the relay accepted: {listener}"
    );
    assert_eq!(listener["fastpath_connections_total"], 20);
    on
}

fn config(
    cgroup: &TestCgroup,
    port: u16,
    mode: &str,
    a: &NamedBackend,
    b: &KillableBackend,
) -> String {
    format!(
        "admin: {{ listen: 127.0.0.1:0 }}
fastpath:
  socket_lb: {{ cgroup: {}, mode: {mode} }}
listeners:
  - {{ name: front, listen: 127.0.0.1:{port}, pool: p, fastpath: socket }}
pools:
  - name: p
    retries: 0
    health_check: {{ kind: tcp, interval: 100ms, timeout: 100ms, rise: 1, fall: 1 }}
    backends: [{{ address: {} }}, {{ address: {} }}]
",
        cgroup.0.display(),
        a.addr,
        b.addr
    )
}

#[test]
fn steered_clients_reach_backends_directly_and_follow_health_and_admin_state() {
    if !privileged() {
        return;
    }
    let cgroup = TestCgroup::new("e2e-steer");
    let a = named_backend("a", Duration::ZERO);
    let mut b = KillableBackend::start("b", "127.0.0.1:0".parse().unwrap());
    let port = free_port();
    let mut lb = Ballast::run(&config(&cgroup, port, "required", &a, &b));
    let front = format!("127.0.0.1:{port}");
    let status = lb.status();
    assert_eq!(status["fastpath"]["socket_lb"]["enabled"], true, "{status}");

    let seen = clients(&cgroup, port, 20);
    let on = assert_steered_round_robin(&lb, &seen, &front);
    let backend = lb.backend("p", a.addr);
    assert_eq!(backend["connections_total"], on("a") as u64);
    assert_eq!(backend["fastpath_connections_total"], on("a") as u64);

    // b dies: its probe takes it out of the hook's table.
    b.kill();
    assert!(lb
        .wait_backend("p", b.addr, IO_TIMEOUT, |e| e["state"] == "down")
        .is_some());
    // The table follows within the sync interval (100 ms); give it a bounded moment.
    let mut all_a = false;
    for _ in 0..20 {
        let seen = clients(&cgroup, port, 5);
        if seen.iter().all(|(n, _)| n == "a") {
            all_a = true;
            break;
        }
        thread::sleep(Duration::from_millis(50));
    }
    assert!(all_a, "connects still reach the dead backend");

    // a disabled too: no backend left, the hook lets the connect reach the listener, which
    // answers as the relay does (closed, counted as no_backend).
    let path = format!("/api/v1/pools/p/backends/{}/disable", a.addr);
    let (code, body) = http(lb.admin(), "POST", &path, None);
    assert_eq!(code, 200, "{body}");
    let mut reached_listener = false;
    for _ in 0..20 {
        let seen = clients(&cgroup, port, 1);
        if seen[0].0 == "closed" {
            reached_listener = true;
            break;
        }
        thread::sleep(Duration::from_millis(50));
    }
    assert!(reached_listener, "a disabled backend still took connects");
    assert!(
        listener_entry(&lb, "front")["rejected"]["no_backend"]
            .as_u64()
            .unwrap()
            >= 1
    );

    // Killed: the links die with the process; nothing is left on the cgroup.
    lb.signal("KILL");
    lb.wait_exit(IO_TIMEOUT).unwrap();
    let shown = Command::new("bpftool")
        .args(["cgroup", "show"])
        .arg(&cgroup.0)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&shown.stdout);
    assert!(
        !text.contains("ballast_"),
        "still attached after kill -9:\n{text}"
    );
}

#[test]
fn an_ipv6_listener_steers_to_ipv6_backends() {
    if !privileged() {
        return;
    }
    let cgroup = TestCgroup::new("e2e-ipv6");
    let a = KillableBackend::start("a", "[::1]:0".parse().unwrap());
    let b = KillableBackend::start("b", "[::1]:0".parse().unwrap());
    let port = free_port();
    let lb = Ballast::run(&format!(
        "admin: {{ listen: 127.0.0.1:0 }}
fastpath:
  socket_lb: {{ cgroup: {}, mode: required }}
listeners:
  - {{ name: front, listen: \"[::1]:{port}\", pool: p, fastpath: socket }}
pools:
  - name: p
    health_check: {{ kind: tcp, interval: 100ms, timeout: 100ms, rise: 1, fall: 1 }}
    backends: [{{ address: \"{}\" }}, {{ address: \"{}\" }}]
",
        cgroup.0.display(),
        a.addr,
        b.addr
    ));
    let status = lb.status();
    assert_eq!(status["fastpath"]["socket_lb"]["enabled"], true, "{status}");

    let seen = clients_to(&cgroup, "::1", port, 20);
    let on = assert_steered_round_robin(&lb, &seen, &format!("[::1]:{port}"));
    assert_eq!(
        lb.backend("p", b.addr)["fastpath_connections_total"],
        on("b") as u64
    );
}

#[test]
fn required_refuses_to_start_without_privileges_and_auto_serves_through_the_relay() {
    if !privileged() || !require_tool("setpriv", "util-linux") {
        return;
    }
    let cgroup = TestCgroup::new("e2e-modes");
    let a = named_backend("a", Duration::ZERO);
    let b = KillableBackend::start("b", "127.0.0.1:0".parse().unwrap());
    let port = free_port();
    let unprivileged = |yaml: &str| {
        let path = write_config(yaml);
        let mut cmd = Command::new("setpriv");
        cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .arg(binary())
            .args(["run", "-c"])
            .arg(&path);
        cmd
    };
    let out = unprivileged(&config(&cgroup, port, "required", &a, &b))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("fastpath.socket_lb"), "{stderr}");

    let lb = Ballast::spawn_command(unprivileged(&config(&cgroup, port, "auto", &a, &b)));
    let status = lb.status();
    assert_eq!(status["fastpath"]["socket_lb"]["enabled"], false);
    assert!(
        status["fastpath"]["socket_lb"]["reason"].is_string(),
        "{status}"
    );
    // Served through the relay.
    let name = ask(format!("127.0.0.1:{port}").parse().unwrap(), "hello");
    assert!(name == "a" || name == "b");
    assert_eq!(listener_entry(&lb, "front")["connections_total"], 1);
}

#[test]
fn a_reload_turns_the_fast_path_off_and_on_per_listener() {
    if !privileged() {
        return;
    }
    let cgroup = TestCgroup::new("e2e-reload");
    let a = named_backend("a", Duration::ZERO);
    let b = KillableBackend::start("b", "127.0.0.1:0".parse().unwrap());
    let port = free_port();
    let steered = config(&cgroup, port, "required", &a, &b);
    let relayed = steered.replace(", fastpath: socket }", " }");
    assert_ne!(steered, relayed);
    let path = write_config(&steered);
    let lb = Ballast::spawn(&["run", "-c", path.to_str().unwrap()]);
    let reload = |yaml: &str| {
        std::fs::write(&path, yaml).unwrap();
        let (code, body) = http(lb.admin(), "POST", "/api/v1/reload", None);
        assert_eq!(code, 200, "{body}");
    };
    let relay_count = || {
        listener_entry(&lb, "front")["connections_total"]
            .as_u64()
            .unwrap()
    };
    clients(&cgroup, port, 4);
    assert_eq!(relay_count(), 0);

    reload(&relayed);
    let seen = clients(&cgroup, port, 4);
    assert!(seen.iter().all(|(n, _)| n == "a" || n == "b"), "{seen:?}");
    assert!(
        wait_until(IO_TIMEOUT, || relay_count() == 4),
        "the relay served {} of 4 after the fast path was turned off",
        relay_count()
    );

    reload(&steered);
    clients(&cgroup, port, 4);
    assert_eq!(relay_count(), 4, "steered again: the relay sees no more");
    assert!(
        listener_entry(&lb, "front")["fastpath_connections_total"]
            .as_u64()
            .unwrap()
            >= 4
    );
    assert_eq!(lb.status()["fastpath"]["socket_lb"]["enabled"], true);
}
