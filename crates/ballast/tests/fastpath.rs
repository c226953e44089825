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
    let listener = lb.listener("front");
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
        lb.listener("front")["rejected"]["no_backend"]
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
    assert_eq!(lb.listener("front")["connections_total"], 1);
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
    let relay_count = || lb.listener("front")["connections_total"].as_u64().unwrap();
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
        lb.listener("front")["fastpath_connections_total"]
            .as_u64()
            .unwrap()
            >= 4
    );
    assert_eq!(lb.status()["fastpath"]["socket_lb"]["enabled"], true);
}

/// A config with an admin block, the socket fast path required on `cgroup`, listener "front"
/// on 127.0.0.1:`port` with `fastpath: socket`, then `more_listeners`, and pool "p" made of
/// `pool_body` (its keys, indented four spaces).
fn steering(cgroup: &TestCgroup, port: u16, more_listeners: &str, pool_body: &str) -> String {
    format!(
        "admin: {{ listen: 127.0.0.1:0 }}
fastpath:
  socket_lb: {{ cgroup: {}, mode: required }}
listeners:
  - {{ name: front, listen: 127.0.0.1:{port}, pool: p, fastpath: socket }}
{more_listeners}pools:
  - name: p
{pool_body}",
        cgroup.0.display()
    )
}

#[test]
fn steered_sessions_count_in_status_logs_and_passive_health() {
    if !privileged() {
        return;
    }
    let cgroup = TestCgroup::new("e2e-account");
    let a = named_backend("a", Duration::ZERO);
    // Nothing listens there: a steered connect to it is refused.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let port = free_port();
    let lb = Ballast::run(&steering(
        &cgroup,
        port,
        "",
        &format!(
            "    retries: 0
    passive: {{ max_fails: 1, fail_timeout: 60s }}
    backends: [{{ address: {} }}, {{ address: {dead} }}]
",
            a.addr
        ),
    ));

    // Connects round robin over a and the dead one until the dead one is out of the table;
    // then one session to a is held open until the test has seen it live.
    let dir = std::env::temp_dir().join(format!("ballast-account-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let release = dir.join("release");
    let script = format!(
        r#"
import os, socket, time
addr = ('127.0.0.1', {port})
for _ in range(6):
    try:
        s = socket.create_connection(addr, timeout=5)
        s.sendall(b'x')
        print(s.makefile().readline().strip())
        s.close()
    except ConnectionRefusedError:
        print('refused')
    time.sleep(0.15)
s = socket.create_connection(addr, timeout=5)
s.sendall(b'y' * 1000)
got = b''
while len(got) < 2 + 1000:
    got += s.recv(4096)
print('held', got[:2].decode().strip())
for _ in range(1000):
    if os.path.exists('{release}'):
        break
    time.sleep(0.01)
s.close()
"#,
        release = release.display()
    );
    let out = thread::scope(|scope| {
        let client = scope.spawn(|| cgroup.run_python(&script));
        let live = wait_until(IO_TIMEOUT, || {
            lb.backend("p", a.addr)["connections_active"] == 1
        });
        std::fs::write(&release, "").unwrap();
        let out = client.join().unwrap();
        assert!(live, "the held steered session never showed as active");
        out
    });
    let _ = std::fs::remove_dir_all(&dir);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 7, "{out}");
    // The first refusal takes the dead backend out (max_fails: 1); from the next sync on,
    // every connect reaches a.
    let refused = lines.iter().filter(|l| **l == "refused").count();
    assert!(refused >= 1, "{out}");
    assert!(lines[4..6].iter().all(|l| *l == "a"), "{out}");
    assert_eq!(lines[6], "held a");

    let dead_status = lb.backend("p", dead);
    assert_eq!(dead_status["state"], "down", "{dead_status}");
    assert_eq!(dead_status["connect_errors"]["refused"], refused as u64);
    assert!(wait_until(IO_TIMEOUT, || {
        let a_status = lb.backend("p", a.addr);
        a_status["connections_active"] == 0 && a_status["sent_bytes"].as_u64() >= Some(1000)
    }));
    let a_status = lb.backend("p", a.addr);
    // Every session's bytes: a byte each for the first ones, 1000 for the held one, within
    // a FIN's sequence number each.
    let sessions = 6 - refused as u64 + 1;
    let sent = a_status["sent_bytes"].as_u64().unwrap();
    assert!(
        (1000 + sessions - 1..=1000 + 2 * sessions).contains(&sent),
        "{a_status}"
    );
    assert!(
        a_status["received_bytes"].as_u64().unwrap() >= 1002,
        "{a_status}"
    );
    assert!(
        lb.wait_for_log("path=socket", IO_TIMEOUT),
        "{}",
        lb.log_text()
    );
    let log = lb.log_text();
    assert!(log.contains("end=connect_refused"), "{log}");
    assert!(
        log.contains("backend marked down by passive health"),
        "{log}"
    );
    // Connect times of steered sessions feed the backend's histogram.
    let (_, metrics) = http(lb.admin(), "GET", "/metrics", None);
    let count = metrics
        .lines()
        .find(|l| {
            l.starts_with("ballast_backend_connect_duration_seconds_count")
                && l.contains(&a.addr.to_string())
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok());
    assert_eq!(count, Some(sessions as f64), "{metrics}");
}

#[test]
fn maglev_on_the_source_sends_steered_clients_where_the_relay_sends_them() {
    if !privileged() {
        return;
    }
    let cgroup = TestCgroup::new("e2e-maglev");
    let backends: Vec<NamedBackend> = ["a", "b", "c", "d"]
        .iter()
        .map(|n| named_backend(n, Duration::ZERO))
        .collect();
    let port = free_port();
    let list: Vec<String> = backends
        .iter()
        .map(|b| format!("{{ address: {} }}", b.addr))
        .collect();
    // Two listeners on one pool: the steered one, and one the test's own (unsteered) process
    // asks through the relay, from the same source address.
    let relay_port = free_port();
    let lb = Ballast::run(&steering(
        &cgroup,
        port,
        &format!("  - {{ name: relayed, listen: 127.0.0.1:{relay_port}, pool: p }}\n"),
        &format!(
            "    algorithm: maglev\n    hash_key: source_ip\n    backends: [{}]\n",
            list.join(", ")
        ),
    ));
    let relay_addr: std::net::SocketAddr = format!("127.0.0.1:{relay_port}").parse().unwrap();
    let relay_pick = ask(relay_addr, "hello");
    let seen = clients(&cgroup, port, 6);
    assert!(
        seen.iter().all(|(name, _)| *name == relay_pick),
        "relay sends 127.0.0.1 to {relay_pick}; steered: {seen:?}"
    );
    assert_eq!(lb.listener("front")["connections_total"], 0);

    // Its backend disabled, both move to the same substitute.
    let chosen = backends.iter().find(|b| b.name == relay_pick).unwrap();
    let path = format!("/api/v1/pools/p/backends/{}/disable", chosen.addr);
    let (code, body) = http(lb.admin(), "POST", &path, None);
    assert_eq!(code, 200, "{body}");
    let substitute = ask(relay_addr, "hello");
    assert_ne!(substitute, relay_pick);
    let moved = wait_until(IO_TIMEOUT, || clients(&cgroup, port, 1)[0].0 == substitute);
    assert!(
        moved,
        "steered clients did not follow the relay to {substitute}"
    );
    let seen = clients(&cgroup, port, 4);
    assert!(seen.iter().all(|(name, _)| *name == substitute), "{seen:?}");
}

/// Runs `command` (program and arguments) inside `cgroup`, bounded by `timeout`; its exit
/// code and output.
fn run_in(cgroup: &TestCgroup, command: &[&str], timeout: u32) -> (i32, String) {
    let argv = serde_json::to_string(command).unwrap();
    let script = format!(
        "import subprocess\nr = subprocess.run({argv}, capture_output=True, text=True, timeout={timeout})\nprint(r.returncode)\nprint(r.stdout + r.stderr)"
    );
    let out = cgroup.run_python(&script);
    let (code, output) = out.split_once('\n').unwrap_or((out.as_str(), ""));
    (code.trim().parse().unwrap(), output.to_string())
}

#[test]
fn real_peers_through_the_fast_path_redis_benchmark_iperf3_and_dig() {
    if !privileged()
        || !require_tools(&[
            ("redis-server", "redis-server"),
            ("redis-benchmark", "redis-tools"),
            ("iperf3", "iperf3"),
            ("dnsmasq", "dnsmasq-base"),
            ("dig", "bind9-dnsutils"),
        ])
    {
        return;
    }
    let cgroup = TestCgroup::new("e2e-peers");
    let redis_port = free_port();
    let dir = std::env::temp_dir().join(format!("ballast-peers-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let _redis = spawn_peer(
        Command::new("redis-server")
            .args(["--port", &redis_port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--dir"])
            .arg(&dir),
    );
    let iperf_port = free_port();
    let _iperf = spawn_peer(Command::new("iperf3").args([
        "-s",
        "-B",
        "127.0.0.1",
        "-p",
        &iperf_port.to_string(),
    ]));
    let (_dnsmasq, dns) = common::dns::start_dnsmasq();
    let redis_addr: std::net::SocketAddr = format!("127.0.0.1:{redis_port}").parse().unwrap();
    let iperf_addr: std::net::SocketAddr = format!("127.0.0.1:{iperf_port}").parse().unwrap();
    assert!(wait_until(IO_TIMEOUT, || std::net::TcpStream::connect(
        redis_addr
    )
    .is_ok()));
    assert!(wait_until(IO_TIMEOUT, || std::net::TcpStream::connect(
        iperf_addr
    )
    .is_ok()));

    let (front_redis, front_iperf, front_dns) = (free_port(), free_port(), free_port());
    let lb = Ballast::run(&format!(
        "admin: {{ listen: 127.0.0.1:0 }}
fastpath:
  socket_lb: {{ cgroup: {}, mode: required }}
listeners:
  - {{ name: redis, listen: 127.0.0.1:{front_redis}, pool: redis, fastpath: socket }}
  - {{ name: iperf, listen: 127.0.0.1:{front_iperf}, pool: iperf, fastpath: socket }}
  - {{ name: dns, protocol: udp, listen: 127.0.0.1:{front_dns}, pool: dns, fastpath: socket }}
pools:
  - {{ name: redis, backends: [{{ address: {redis_addr} }}] }}
  - {{ name: iperf, backends: [{{ address: {iperf_addr} }}] }}
  - {{ name: dns, backends: [{{ address: {dns} }}] }}
",
        cgroup.0.display()
    ));

    let (code, out) = run_in(
        &cgroup,
        &[
            "redis-benchmark",
            "-h",
            "127.0.0.1",
            "-p",
            &front_redis.to_string(),
            "-t",
            "set,get",
            "-n",
            "2000",
            "-c",
            "10",
            "-q",
        ],
        30,
    );
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("GET:"), "{out}");
    let (code, out) = run_in(
        &cgroup,
        &[
            "iperf3",
            "-c",
            "127.0.0.1",
            "-p",
            &front_iperf.to_string(),
            "-t",
            "1",
        ],
        30,
    );
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("receiver"), "{out}");
    let (code, out) = run_in(
        &cgroup,
        &[
            "dig",
            "@127.0.0.1",
            "-p",
            &front_dns.to_string(),
            "example.test",
            "A",
            "+short",
            "+time=2",
            "+tries=2",
        ],
        15,
    );
    assert_eq!((code, out.trim()), (0, "10.1.2.3"));

    // None of it went through the relay; all of it was steered.
    for name in ["redis", "iperf", "dns"] {
        let listener = lb.listener(name);
        assert_eq!(listener["connections_total"], 0, "{listener}");
        assert!(
            listener["fastpath_connections_total"].as_u64().unwrap() >= 1,
            "{listener}"
        );
    }
    // redis-benchmark's ten clients, steered and accounted at their close.
    assert!(wait_until(IO_TIMEOUT, || {
        lb.backend("redis", redis_addr)["sent_bytes"].as_u64() > Some(2000 * 20)
    }));
    let _ = std::fs::remove_dir_all(&dir);
}
