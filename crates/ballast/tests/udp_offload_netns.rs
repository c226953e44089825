//! UDP segmentation offload refused on the way to a backend. Ballast forwards runs of
//! datagrams as one UDP_SEGMENT buffer, and a burst a client sent with GSO arrives at the
//! listener as one UDP_GRO buffer and leaves the same way. A path whose MTU is smaller than a
//! segment refuses such a buffer (EMSGSIZE; EIO over IPsec or, before Linux 6.11, a device
//! without checksum offload), while the same datagrams sent one by one are simply fragmented.
//! Ballast must then send them one by one instead of dropping them.
//!
//! Two network namespaces joined by a veth pair with a 1000-byte MTU: Ballast and the client
//! in one, an echo backend in the other. Needs root and `ip` (iproute2); skips otherwise, and
//! fails under CI=true.
#![allow(clippy::unwrap_used)]

mod common;

use common::{
    binary, require_root, require_tools, run_ok, spawn_ready, write_config, Ballast, Namespaces,
};
use std::process::Command;

const BACKEND: &str = "10.77.0.2:9000";

/// The load balancer's namespace (Ballast and the client) and the backend's, joined by a
/// veth pair with a 1000-byte MTU; deleted when the returned guard drops.
fn lab() -> Namespaces {
    let mut netns = Namespaces::new("blgso");
    let lb = netns.add("lb");
    let backend = netns.add("be");
    run_ok(Command::new("ip").args([
        "-n", &lb, "link", "add", "v0", "type", "veth", "peer", "name", "v1", "netns", &backend,
    ]));
    run_ok(Command::new("ip").args(["-n", &lb, "addr", "add", "10.77.0.1/24", "dev", "v0"]));
    run_ok(Command::new("ip").args(["-n", &backend, "addr", "add", "10.77.0.2/24", "dev", "v1"]));
    run_ok(Command::new("ip").args(["-n", &lb, "link", "set", "v0", "up", "mtu", "1000"]));
    run_ok(Command::new("ip").args(["-n", &backend, "link", "set", "v1", "up", "mtu", "1000"]));
    netns
}

/// Echoes each datagram with a `b` in front; prints "ready" once bound.
const ECHO: &str = r#"
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
host, port = sys.argv[1].rsplit(":", 1)
s.bind((host, int(port)))
print("ready", flush=True)
s.settimeout(60)
while True:
    data, peer = s.recvfrom(65536)
    s.sendto(b"b" + data, peer)
"#;

/// Sends three 1200-byte datagrams as one GSO burst, then a run of 30 datagrams of 100
/// bytes, and prints the length and first payload byte of every reply (5 s per reply).
const CLIENT: &str = r#"
import socket, sys
host, port = sys.argv[1].rsplit(":", 1)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.connect((host, int(port)))
s.settimeout(5)
UDP_SEGMENT = 103
burst = b"".join(bytes([0x30 + i]) * 1200 for i in range(3))
s.sendmsg([burst], [(socket.SOL_UDP, UDP_SEGMENT, (1200).to_bytes(2, "little"))])
for i in range(30):
    s.send(bytes([0x41 + i % 26]) * 100)
try:
    for _ in range(33):
        reply = s.recv(65536)
        print(len(reply), chr(reply[1]), flush=True)
except socket.timeout:
    print("timeout", flush=True)
"#;

/// Whether this machine can build the lab; skips (fails under CI=true) when it cannot.
fn prerequisites() -> bool {
    require_root("to create network namespaces")
        && require_tools(&[("ip", "iproute2"), ("python3", "python3")])
}

#[test]
fn datagrams_still_reach_a_backend_whose_path_refuses_segmentation_offload() {
    if !prerequisites() {
        return;
    }
    let lab = lab();

    let _backend = spawn_ready(
        lab.exec("be", "python3").args(["-c", ECHO, BACKEND]),
        "echo backend",
    );

    let config = write_config(&format!(
        "workers: 1\nlisteners:\n  - name: quic\n    protocol: udp\n    listen: 127.0.0.1:0\n    pool: servers\npools:\n  - name: servers\n    backends:\n      - address: {BACKEND}\n"
    ));
    let mut run = lab.exec("lb", binary());
    run.args(["run", "-c", config.to_str().unwrap()]);
    let lb = Ballast::spawn_command(run);
    let addr = lb.addr("quic").to_string();

    let out = lab
        .exec("lb", "python3")
        .args(["-c", CLIENT, &addr])
        .output()
        .unwrap();
    let replies = String::from_utf8_lossy(&out.stdout);
    let replies: Vec<&str> = replies.lines().collect();
    let mut want = vec!["1201 0", "1201 1", "1201 2"];
    let letters: Vec<String> = (0..30)
        .map(|i| format!("101 {}", char::from(b'A' + i % 26)))
        .collect();
    want.extend(letters.iter().map(String::as_str));
    assert_eq!(
        replies,
        want,
        "every datagram echoed, in order; client stderr: {}\nballast log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        lb.log_text()
    );
    assert!(
        lb.wait_for_log(
            "refused UDP segmentation offload",
            std::time::Duration::from_secs(5)
        ),
        "the operator is told once; log:\n{}",
        lb.log_text()
    );
}
