//! UDP replies that Ballast cannot send on are counted as dropped, not as relayed (issue 13,
//! defect 5). Two network namespaces joined by a veth pair: Ballast and an echo backend in
//! one, the client in the other. Once the client has its replies, a `prohibit` route toward
//! it makes every later reply fail in sendmmsg (EACCES) while its datagrams still arrive.
//! Needs root, `ip` and `curl`; skips otherwise, and fails under CI=true.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::{Command, Stdio};

use common::{
    binary, require_root, require_tools, run_ok, spawn_ready, wait_until, write_config, Ballast,
    Namespaces, IO_TIMEOUT,
};

const LISTEN: &str = "10.78.0.1:5300";

const ECHO: &str = r#"
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("127.0.0.1", 5301))
print("ready", flush=True)
s.settimeout(60)
while True:
    data, peer = s.recvfrom(65536)
    s.sendto(data, peer)
"#;

/// Sends `count` datagrams; prints how many replies came back (0.3 s each).
const CLIENT: &str = r#"
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(0.3)
got = 0
for i in range(int(sys.argv[1])):
    s.sendto(b"q%d" % i, ("10.78.0.1", 5300))
    try:
        s.recvfrom(2048)
        got += 1
    except socket.timeout:
        pass
print(got)
"#;

fn lab() -> Namespaces {
    let mut netns = Namespaces::new("blrep");
    let lb = netns.add("lb");
    let client = netns.add("cl");
    run_ok(Command::new("ip").args([
        "-n", &lb, "link", "add", "v0", "type", "veth", "peer", "name", "v1", "netns", &client,
    ]));
    run_ok(Command::new("ip").args(["-n", &lb, "addr", "add", "10.78.0.1/24", "dev", "v0"]));
    run_ok(Command::new("ip").args(["-n", &client, "addr", "add", "10.78.0.2/24", "dev", "v1"]));
    run_ok(Command::new("ip").args(["-n", &lb, "link", "set", "v0", "up"]));
    run_ok(Command::new("ip").args(["-n", &client, "link", "set", "v1", "up"]));
    netns
}

fn client(netns: &Namespaces, count: usize) -> usize {
    let out = netns
        .exec("cl", "python3")
        .args(["-c", CLIENT, &count.to_string()])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

/// `GET /api/v1/status` from inside the balancer's namespace.
fn status(netns: &Namespaces, admin: std::net::SocketAddr) -> serde_json::Value {
    let out = netns
        .exec("lb", "curl")
        .args(["-sf", &format!("http://{admin}/api/v1/status")])
        .output()
        .unwrap();
    assert!(out.status.success(), "curl failed");
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn replies_the_listener_cannot_send_are_counted_as_dropped() {
    if !require_root("create network namespaces")
        || !require_tools(&[("ip", "iproute2"), ("python3", "python3"), ("curl", "curl")])
    {
        return;
    }
    let netns = lab();
    let _echo = spawn_ready(
        netns.exec("lb", "python3").args(["-c", ECHO]),
        "echo backend",
    );

    let config = write_config(&format!(
        "admin: {{ listen: 127.0.0.1:0 }}
listeners:
  - {{ name: dns, protocol: udp, listen: \"{LISTEN}\", pool: p }}
pools:
  - {{ name: p, backends: [{{ address: 127.0.0.1:5301 }}] }}
"
    ));
    let mut cmd = netns.exec("lb", binary());
    cmd.args(["run", "-c"]).arg(&config);
    let lb = Ballast::spawn_command(cmd);
    let admin = lb.admin();

    assert_eq!(
        client(&netns, 3),
        3,
        "replies before the route is prohibited"
    );
    run_ok(Command::new("ip").args([
        "-n",
        &netns.name("lb"),
        "route",
        "add",
        "prohibit",
        "10.78.0.2/32",
    ]));
    assert_eq!(client(&netns, 4), 0, "no reply can leave now");

    let backend = |s: &serde_json::Value, key: &str| s["pools"][0]["backends"][0][key].as_u64();
    let mut last = serde_json::Value::Null;
    let settled = wait_until(IO_TIMEOUT, || {
        last = status(&netns, admin);
        backend(&last, "datagrams_to_backend") == Some(7)
            && last["listeners"][0]["udp_replies_dropped"].as_u64() == Some(4)
    });
    assert!(settled, "{last}");
    assert_eq!(
        backend(&last, "datagrams_from_backend"),
        Some(3),
        "only the replies that left count as relayed: {last}"
    );
}
