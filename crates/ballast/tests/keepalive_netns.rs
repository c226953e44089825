//! A peer that vanishes (issue 19): with `keepalive`, Ballast finds it out within idle +
//! interval × count and closes the session, logged; with `user_timeout`, data it cannot
//! deliver ends the session after that time. Three network namespaces: the client, Ballast
//! (with a backend of its own on 127.0.0.1), and a far backend, joined by veth pairs; a peer
//! "vanishes" when nftables drops every packet in its namespace, as a host that died behind
//! a NAT does. Needs root, `ip`, `nft` and `python3`; skips otherwise, and fails under CI=true.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{
    binary, require_root, require_tools, run_ok, spawn_ready, write_config, Ballast, Namespaces,
    Peer,
};

/// Echoes every connection on the address it is given; prints "ready" once listening.
const ECHO: &str = r#"
import socket, sys, threading
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen(16)
print("ready", flush=True)
def serve(c):
    while True:
        data = c.recv(4096)
        if not data:
            return
        c.sendall(data)
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"#;

/// Opens one session per port given, checks each echoes, prints "ready"; then for each line
/// `send N` on stdin writes to session N (without reading: its peer may be gone).
const CLIENT: &str = r#"
import socket, sys
conns = []
for port in sys.argv[1:]:
    c = socket.create_connection(("10.79.0.1", int(port)), timeout=10)
    c.sendall(b"hello")
    assert c.recv(16) == b"hello"
    conns.append(c)
print("ready", flush=True)
for line in sys.stdin:
    word, n = line.split()
    conns[int(n)].sendall(b"x" * 1000)
    print("sent", flush=True)
"#;

/// Keepalive: first probe after 1 s idle, then every 1 s, 2 unanswered end the connection:
/// a vanished peer is found about 3 s after its last packet.
const IDLE: u64 = 1;
const INTERVAL: u64 = 1;
const COUNT: u64 = 2;
/// Scheduling, the timer wheel's granularity and the log's way to the test: far below the
/// two hours the kernel's default keepalive would take.
const SLACK: Duration = Duration::from_secs(15);

fn lab() -> Namespaces {
    let mut netns = Namespaces::new("blka");
    let lb = netns.add("lb");
    let client = netns.add("cl");
    let far = netns.add("be");
    let ip = |args: &[&str]| run_ok(Command::new("ip").args(args));
    ip(&[
        "-n", &lb, "link", "add", "v0", "type", "veth", "peer", "name", "v1", "netns", &client,
    ]);
    ip(&[
        "-n", &lb, "link", "add", "w0", "type", "veth", "peer", "name", "w1", "netns", &far,
    ]);
    ip(&["-n", &lb, "addr", "add", "10.79.0.1/24", "dev", "v0"]);
    ip(&["-n", &client, "addr", "add", "10.79.0.2/24", "dev", "v1"]);
    ip(&["-n", &lb, "addr", "add", "10.79.1.1/24", "dev", "w0"]);
    ip(&["-n", &far, "addr", "add", "10.79.1.2/24", "dev", "w1"]);
    for (ns, dev) in [(&lb, "v0"), (&lb, "w0"), (&client, "v1"), (&far, "w1")] {
        ip(&["-n", ns, "link", "set", dev, "up"]);
    }
    netns
}

/// Every packet in and out of the namespace of `role` is dropped from now on.
fn vanish(netns: &Namespaces, role: &str) {
    for rule in [
        "add table inet vanish",
        "add chain inet vanish in { type filter hook input priority 0 ; policy drop ; }",
        "add chain inet vanish out { type filter hook output priority 0 ; policy drop ; }",
    ] {
        run_ok(netns.exec(role, "nft").arg(rule));
    }
}

/// The access log line of the session of `listener` that ended with `end`, waited for.
fn closed(lb: &Ballast, listener: &str, end: &str, within: Duration) -> Option<String> {
    let deadline = Instant::now() + within;
    loop {
        let found = lb.log.lock().unwrap().iter().find_map(|l| {
            (l.contains("session closed")
                && l.contains(&format!("listener={listener} "))
                && l.contains(&format!("end={end}")))
            .then(|| l.clone())
        });
        if found.is_some() || Instant::now() >= deadline {
            return found;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_vanished_peer_is_found_by_keepalive_and_by_user_timeout() {
    if !require_root("create network namespaces")
        || !require_tools(&[
            ("ip", "iproute2"),
            ("nft", "nftables"),
            ("python3", "python3"),
        ])
    {
        return;
    }
    let netns = lab();
    let _far = spawn_ready(
        netns
            .exec("be", "python3")
            .args(["-c", ECHO, "10.79.1.2", "5401"]),
        "far backend",
    );
    let _near = spawn_ready(
        netns
            .exec("lb", "python3")
            .args(["-c", ECHO, "127.0.0.1", "5402"]),
        "near backend",
    );
    let keepalive = format!("{{ idle: {IDLE}s, interval: {INTERVAL}s, count: {COUNT} }}");
    // `timeouts.idle` is an hour: only keepalive or the user timeout can end these sessions.
    let config = write_config(&format!(
        "listeners:
  - {{ name: far, listen: \"10.79.0.1:5411\", pool: far, timeouts: {{ idle: 1h }} }}
  - {{ name: near, listen: \"10.79.0.1:5412\", pool: near, timeouts: {{ idle: 1h }}, keepalive: {keepalive} }}
  - {{ name: unacked, listen: \"10.79.0.1:5413\", pool: unacked, timeouts: {{ idle: 1h }} }}
pools:
  - {{ name: far, keepalive: {keepalive}, retries: 0, backends: [{{ address: \"10.79.1.2:5401\" }}] }}
  - {{ name: near, retries: 0, backends: [{{ address: \"127.0.0.1:5402\" }}] }}
  - {{ name: unacked, user_timeout: 2s, retries: 0, backends: [{{ address: \"10.79.1.2:5401\" }}] }}
"
    ));
    let mut cmd = netns.exec("lb", binary());
    cmd.args(["run", "-c"]).arg(&config);
    let lb = Ballast::spawn_command(cmd);

    let mut client = Peer(
        netns
            .exec("cl", "python3")
            .args(["-c", CLIENT, "5411", "5412", "5413"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut to_client = client.0.stdin.take().unwrap();
    let mut from_client = BufReader::new(client.0.stdout.take().unwrap());
    let mut line = String::new();
    from_client.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "ready", "the client's sessions did not start");

    let budget = Duration::from_secs(IDLE + INTERVAL * COUNT) + SLACK;

    // The far backend vanishes: the backend side's keepalive finds it.
    vanish(&netns, "be");
    let gone = Instant::now();
    let far = closed(&lb, "far", "backend_error", budget);
    assert!(
        far.is_some(),
        "the far session was not closed within {budget:?}:\n{}",
        lb.log_text()
    );
    // Idle, with no keepalive on the unacked pool: that session is still open.
    assert!(
        closed(&lb, "unacked", "", Duration::ZERO).is_none(),
        "{}",
        lb.log_text()
    );
    assert!(gone.elapsed() < budget);

    // Data toward the vanished backend stays unacknowledged: `user_timeout` ends it.
    to_client.write_all(b"send 2\n").unwrap();
    line.clear();
    from_client.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "sent");
    let unacked = closed(
        &lb,
        "unacked",
        "backend_error",
        Duration::from_secs(2) + SLACK,
    );
    assert!(
        unacked.is_some(),
        "the unacked session was not closed by its user timeout:\n{}",
        lb.log_text()
    );

    // The client vanishes: the client side's keepalive finds it.
    vanish(&netns, "cl");
    let near = closed(&lb, "near", "client_error", budget);
    assert!(
        near.is_some(),
        "the near session was not closed within {budget:?}:\n{}",
        lb.log_text()
    );
}
