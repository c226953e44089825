//! The UDP offload (`fastpath: udp_offload`) on a real kernel: a client namespace, Ballast's
//! namespace in the middle, and a backend namespace, joined by veth pairs with private test
//! addresses that exist only inside the namespaces. Ballast relays each flow's first exchange
//! and the kernel forwards the rest: the replies are byte-exact, the relay's own counters stay
//! at the first datagram each way while the kernel's grow, the flow lives while the kernel
//! forwards it and expires when it stops, a disabled backend's flow moves, and a killed
//! Ballast leaves nothing attached. Needs root, `ip` and `bpftool`; skips otherwise (fails
//! under CI=true).
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use common::{
    binary, require_root, require_tools, run_ok, spawn_ready, wait_until, write_config, Ballast,
    Namespaces, Peer, IO_TIMEOUT,
};

const LISTEN: &str = "10.78.1.1:5300";
const BACKEND_A: &str = "10.78.2.2:9000";
const BACKEND_B: &str = "10.78.2.2:9001";

fn prerequisites() -> bool {
    require_root("to create network namespaces and load BPF programs")
        && require_tools(&[
            ("ip", "iproute2"),
            ("python3", "python3"),
            ("bpftool", "bpftool"),
        ])
}

/// client (c0 10.78.1.2) — (c1 10.78.1.1) lb (b0 10.78.2.1) — (b1 10.78.2.2) backend.
fn lab() -> Namespaces {
    let mut netns = Namespaces::new("blofl");
    let client = netns.add("cl");
    let lb = netns.add("lb");
    let backend = netns.add("be");
    let ip = |args: &[&str]| run_ok(Command::new("ip").args(args));
    ip(&[
        "-n", &client, "link", "add", "c0", "type", "veth", "peer", "name", "c1", "netns", &lb,
    ]);
    ip(&[
        "-n", &lb, "link", "add", "b0", "type", "veth", "peer", "name", "b1", "netns", &backend,
    ]);
    for (ns, dev, addr) in [
        (&client, "c0", "10.78.1.2/24"),
        (&lb, "c1", "10.78.1.1/24"),
        (&lb, "b0", "10.78.2.1/24"),
        (&backend, "b1", "10.78.2.2/24"),
    ] {
        ip(&["-n", ns, "addr", "add", addr, "dev", dev]);
        ip(&["-n", ns, "link", "set", dev, "up"]);
    }
    ip(&["-n", &client, "route", "add", "default", "via", "10.78.1.1"]);
    ip(&[
        "-n",
        &backend,
        "route",
        "add",
        "default",
        "via",
        "10.78.2.1",
    ]);
    netns
}

/// Echoes each datagram with its tag in front; prints "ready" once bound.
const ECHO: &str = r#"
import socket, sys
host, port = sys.argv[1].rsplit(":", 1)
tag = sys.argv[2].encode()
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((host, int(port)))
print("ready", flush=True)
s.settimeout(120)
while True:
    data, peer = s.recvfrom(65536)
    s.sendto(tag + data, peer)
"#;

fn echo(lab: &Namespaces, addr: &str, tag: &str) -> Peer {
    spawn_ready(
        lab.exec("be", "python3").args(["-c", ECHO, addr, tag]),
        "echo backend",
    )
}

/// One client socket through three phases, each answered on stdout with the tags of the
/// replies: 50 ping-pongs checked byte for byte; one datagram every 200 ms for 3 s (longer
/// than the flow's idle timeout); then, once the file named by argv[2] exists, 10 more.
const CLIENT: &str = r#"
import os, socket, sys, time
host, port = sys.argv[1].rsplit(":", 1)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(3)
def ask(i):
    payload = b"%05d-" % i + os.urandom(64).hex().encode()
    s.sendto(payload, (host, int(port)))
    reply, _ = s.recvfrom(65536)
    if reply[1:] != payload:
        print("mismatch", i, flush=True)
        sys.exit(1)
    return chr(reply[0])
print("A", "".join(sorted(set(ask(i) for i in range(50)))), flush=True)
tags = set()
for i in range(15):
    tags.add(ask(100 + i))
    time.sleep(0.2)
print("B", "".join(sorted(tags)), flush=True)
for _ in range(1000):
    if os.path.exists(sys.argv[2]):
        break
    time.sleep(0.01)
print("C", "".join(ask(200 + i) for i in range(10)), flush=True)
"#;

/// A call to Ballast's admin API from inside its namespace.
fn api(lab: &Namespaces, lb: &Ballast, method: &str, path: &str) -> serde_json::Value {
    let script = r#"
import json, sys, urllib.request
req = urllib.request.Request(sys.argv[1], method=sys.argv[2], headers={"X-Ballast-Request": "1"})
print(urllib.request.urlopen(req, timeout=5).read().decode())
"#;
    let url = format!("http://{}{path}", lb.admin());
    let out = lab
        .exec("lb", "python3")
        .args(["-c", script, &url, method])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null)
}

fn backend_of<'a>(status: &'a serde_json::Value, addr: &str) -> &'a serde_json::Value {
    status["pools"][0]["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["address"] == addr)
        .unwrap()
}

#[test]
fn established_flows_are_forwarded_in_the_kernel_and_stay_ballasts() {
    if !prerequisites() {
        return;
    }
    let lab = lab();
    let _a = echo(&lab, BACKEND_A, "a");
    let _b = echo(&lab, BACKEND_B, "b");
    let config = write_config(&format!(
        "workers: 1
admin: {{ listen: 127.0.0.1:0 }}
fastpath:
  udp_offload: {{ interfaces: [c1, b0], mode: required }}
listeners:
  - name: game
    protocol: udp
    listen: {LISTEN}
    pool: servers
    fastpath: udp_offload
    udp: {{ idle_timeout: 1s }}
pools:
  - name: servers
    backends: [{{ address: {BACKEND_A} }}, {{ address: {BACKEND_B} }}]
"
    ));
    let mut run = lab.exec("lb", binary());
    run.args(["run", "-c", config.to_str().unwrap()]);
    let mut lb = Ballast::spawn_command(run);
    let status = api(&lab, &lb, "GET", "/api/v1/status");
    assert_eq!(
        status["fastpath"]["udp_offload"]["enabled"], true,
        "{status}"
    );

    let dir = std::env::temp_dir().join(format!("ballast-offload-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let moved = dir.join("moved");
    let mut client = lab
        .exec("cl", "python3")
        .args(["-c", CLIENT, LISTEN, moved.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(client.stdout.take().unwrap()).lines();
    let mut next_line = || lines.next().and_then(Result::ok).unwrap_or_default();

    // A: one flow, one backend, every reply byte-exact.
    let a = next_line();
    let tag = a
        .strip_prefix("A ")
        .unwrap_or_else(|| panic!("{a:?}\n{}", lb.log_text()));
    assert_eq!(tag.len(), 1, "one flow went to one backend: {a}");
    let (ours, other) = if tag == "a" {
        (BACKEND_A, BACKEND_B)
    } else {
        (BACKEND_B, BACKEND_A)
    };
    let status = api(&lab, &lb, "GET", "/api/v1/status");
    let listener = &status["listeners"][0];
    assert_eq!(listener["udp_flows_offloaded"], 1, "{listener}");
    let backend = backend_of(&status, ours);
    // The relay saw the first datagram each way; the kernel forwarded the other 49 (and
    // whatever of phase B the client has sent by now).
    let count = |key: &str| backend[key].as_u64().unwrap();
    let (kernel_to, kernel_from) = (
        count("offloaded_datagrams_to_backend"),
        count("offloaded_datagrams_from_backend"),
    );
    assert!(kernel_to >= 49 && kernel_from >= 49, "{backend}");
    assert_eq!(count("datagrams_to_backend") - kernel_to, 1, "{backend}");
    assert_eq!(
        count("datagrams_from_backend") - kernel_from,
        1,
        "{backend}"
    );

    // B: a flow the kernel keeps busy outlives the idle timeout; the same backend answers.
    let b = next_line();
    assert_eq!(b, format!("B {tag}"), "{}", lb.log_text());
    let status = api(&lab, &lb, "GET", "/api/v1/status");
    assert_eq!(status["listeners"][0]["udp_flows_total"], 1, "{status}");

    // C: its backend disabled, the worker's sweep (every 100 ms) ends the flow, and the
    // client's next datagram opens one to the other backend.
    api(
        &lab,
        &lb,
        "POST",
        &format!("/api/v1/pools/servers/backends/{ours}/disable"),
    );
    assert!(wait_until(IO_TIMEOUT, || {
        let status = api(&lab, &lb, "GET", "/api/v1/status");
        status["listeners"][0]["udp_flows_offloaded"] == 0
    }));
    std::fs::write(&moved, "").unwrap();
    let c = next_line();
    let other_tag = if tag == "a" { "b" } else { "a" };
    assert_eq!(
        c,
        format!("C {}", other_tag.repeat(10)),
        "{}",
        lb.log_text()
    );
    assert!(client.wait().unwrap().success());
    let _ = std::fs::remove_dir_all(&dir);
    let status = api(&lab, &lb, "GET", "/api/v1/status");
    assert!(
        backend_of(&status, other)["offloaded_datagrams_to_backend"]
            .as_u64()
            .unwrap()
            >= 8,
        "{status}"
    );

    // The client is gone: its flow expires an idle timeout after the kernel's last datagram.
    assert!(wait_until(IO_TIMEOUT, || {
        let status = api(&lab, &lb, "GET", "/api/v1/status");
        status["listeners"][0]["udp_flows_active"] == 0
            && status["listeners"][0]["udp_flows_offloaded"] == 0
    }));

    // Attached while it runs (TCX links hold the program; this bpftool predates listing
    // TCX per device, so look for the program itself); killed, nothing holds it any more.
    let loaded = || {
        let shown = Command::new("bpftool")
            .args(["prog", "show"])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&shown.stdout).to_string();
        // Kernel program names stop at 15 characters.
        (text.contains("ballast_udp_off"), text)
    };
    let (on, text) = loaded();
    assert!(on, "not loaded while running:\n{text}");
    lb.signal("KILL");
    lb.wait_exit(IO_TIMEOUT).unwrap();
    // The kernel frees the program once its last link is gone, soon after the exit.
    assert!(
        wait_until(IO_TIMEOUT, || !loaded().0),
        "still loaded after kill -9:\n{}",
        loaded().1
    );
}

#[test]
fn without_privileges_auto_serves_through_the_relay_and_required_refuses() {
    if !prerequisites() || !require_tools(&[("setpriv", "util-linux")]) {
        return;
    }
    let backend = common::udp_echo(b'e');
    let yaml = |mode: &str| {
        format!(
            "admin: {{ listen: 127.0.0.1:0 }}
fastpath:
  udp_offload: {{ mode: {mode} }}
listeners:
  - {{ name: game, protocol: udp, listen: 127.0.0.1:0, pool: p, fastpath: udp_offload }}
pools:
  - {{ name: p, backends: [{{ address: {} }}] }}
",
            backend.addr
        )
    };
    let unprivileged = |yaml: &str| {
        let path = write_config(yaml);
        let mut cmd = Command::new("setpriv");
        cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .arg(binary())
            .args(["run", "-c"])
            .arg(&path);
        cmd
    };
    let out = unprivileged(&yaml("required"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("fastpath.udp_offload"), "{stderr}");

    let lb = Ballast::spawn_command(unprivileged(&yaml("auto")));
    let status = lb.status();
    assert_eq!(status["fastpath"]["udp_offload"]["enabled"], false);
    assert!(
        status["fastpath"]["udp_offload"]["reason"].is_string(),
        "{status}"
    );
    let client = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    client.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    client.send_to(b"ping", lb.addr("game")).unwrap();
    let mut buf = [0u8; 16];
    let n = client.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"eping", "served through the relay");
}

/// dnsmasq in the backend namespace on `addr`, answering example.test.
fn dnsmasq(lab: &Namespaces, addr: &str) -> Peer {
    let (ip, port) = addr.rsplit_once(':').unwrap();
    common::spawn_peer(lab.exec("be", "dnsmasq").args([
        "--keep-in-foreground",
        "--conf-file=/dev/null",
        "--pid-file=",
        "--no-resolv",
        "--no-hosts",
        "--bind-interfaces",
        &format!("--listen-address={ip}"),
        &format!("--port={port}"),
        "--address=/example.test/10.1.2.3",
    ]))
}

/// `dig` from the client namespace: `count` queries, each from a new source port (as stub
/// resolvers do, RFC 5452), so each is a flow of its own; the answers, one per line.
fn dig(lab: &Namespaces, server: &str, count: usize) -> Vec<String> {
    let (ip, port) = server.rsplit_once(':').unwrap();
    let mut cmd = lab.exec("cl", "dig");
    cmd.args([
        &format!("@{ip}"),
        "-p",
        port,
        "+short",
        "+time=2",
        "+tries=1",
    ]);
    for _ in 0..count {
        cmd.args(["example.test", "A"]);
    }
    let out = cmd.output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

/// `dnsperf` from the client namespace with one client socket, `runs` passes over two
/// queries one at a time: one flow. The queries it saw answered.
fn dnsperf(lab: &Namespaces, server: &str, runs: u32) -> u64 {
    let (ip, port) = server.rsplit_once(':').unwrap();
    let queries = write_config("example.test A\nwww.example.test A\n");
    let out = lab
        .exec("cl", "dnsperf")
        .args(["-s", ip, "-p", port, "-c", "1", "-q", "1", "-t", "2"])
        .args(["-n", &runs.to_string(), "-d"])
        .arg(&queries)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.trim().strip_prefix("Queries completed:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("dnsperf said:\n{text}"))
}

#[test]
fn dns_through_the_offload_survives_a_reload_and_evicted_flows_return_to_the_relay() {
    if !prerequisites()
        || !require_tools(&[
            ("dnsmasq", "dnsmasq-base"),
            ("dig", "bind9-dnsutils"),
            ("dnsperf", "dnsperf"),
        ])
    {
        return;
    }
    let lab = lab();
    let _dns = dnsmasq(&lab, "10.78.2.2:5353");
    let yaml = |max_flows: u32| {
        format!(
            "workers: 1
admin: {{ listen: 127.0.0.1:0 }}
fastpath:
  udp_offload: {{ interfaces: [c1, b0], mode: required }}
listeners:
  - name: dns
    protocol: udp
    listen: {LISTEN}
    pool: resolvers
    fastpath: udp_offload
    udp: {{ idle_timeout: 30s, max_flows: {max_flows} }}
pools:
  - name: resolvers
    backends: [{{ address: 10.78.2.2:5353 }}]
"
        )
    };
    let config = write_config(&yaml(100));
    let mut run = lab.exec("lb", binary());
    run.args(["run", "-c", config.to_str().unwrap()]);
    let lb = Ballast::spawn_command(run);

    // dig: each query from a new port, each a flow of its own, each answered.
    assert_eq!(dig(&lab, LISTEN, 3), ["10.1.2.3"; 3], "{}", lb.log_text());
    let status = api(&lab, &lb, "GET", "/api/v1/status");
    assert_eq!(status["listeners"][0]["udp_flows_total"], 3, "{status}");
    // dnsperf from one socket: one flow, after its first exchange answered by the kernel.
    assert_eq!(dnsperf(&lab, LISTEN, 10), 20);
    let status = api(&lab, &lb, "GET", "/api/v1/status");
    let backend = &status["pools"][0]["backends"][0];
    assert!(
        backend["offloaded_datagrams_to_backend"].as_u64().unwrap() >= 18,
        "{backend}"
    );
    assert_eq!(status["listeners"][0]["udp_flows_total"], 4, "{status}");

    // A reload that keeps the listener keeps its offloaded flows (idle 30 s: still there).
    let flows_before = status["listeners"][0]["udp_flows_active"].clone();
    api(&lab, &lb, "POST", "/api/v1/reload");
    let status = api(&lab, &lb, "GET", "/api/v1/status");
    assert_eq!(status["listeners"][0]["udp_flows_active"], flows_before);
    assert_eq!(status["listeners"][0]["udp_flows_offloaded"], flows_before);

    // max_flows 1: each new client evicts the flow before it, whose kernel entries go with
    // it (the gauge counts installed flows).
    std::fs::write(&config, yaml(1)).unwrap();
    api(&lab, &lb, "POST", "/api/v1/reload");
    assert_eq!(dig(&lab, LISTEN, 3), ["10.1.2.3"; 3]);
    let status = api(&lab, &lb, "GET", "/api/v1/status");
    let listener = &status["listeners"][0];
    assert_eq!(listener["udp_flows_active"], 1, "{listener}");
    assert_eq!(listener["udp_flows_offloaded"], 1, "{listener}");
    assert!(
        listener["udp_flows_evicted"].as_u64().unwrap() >= 1,
        "{listener}"
    );
}
