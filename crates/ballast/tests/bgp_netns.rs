//! Active-active Ballast behind ECMP, announced over BGP by BIRD (deploy/bgp/): a router
//! namespace running BIRD with `merge paths` and Linux multipath routing hashed on L4, two
//! Ballast nodes each running BIRD, Ballast and deploy/bgp/ballast-announce, a backend
//! namespace and a client namespace, on veth pairs with test addresses that exist only inside
//! the namespaces. Needs root, iproute2, bird2, curl and python3; skips otherwise (fails under
//! CI=true).
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{
    binary, require_root, require_tools, run_ok, spawn_peer, spawn_ready, wait_until, write_config,
    Ballast, Namespaces, Peer, IO_TIMEOUT,
};

const VIP: &str = "10.99.0.10";
const BACKENDS: [&str; 3] = ["10.80.100.1", "10.80.100.2", "10.80.100.3"];

fn prerequisites() -> bool {
    require_root("to create network namespaces")
        && require_tools(&[
            ("ip", "iproute2"),
            ("bird", "bird2"),
            ("birdc", "bird2"),
            ("curl", "curl"),
            ("python3", "python3"),
            ("nft", "nftables"),
        ])
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// deploy/bgp/NAME with its @KEY@ placeholders filled in, written to a temp file.
fn render(name: &str, values: &[(&str, &str)]) -> PathBuf {
    let mut text = std::fs::read_to_string(repo().join("deploy/bgp").join(name)).unwrap();
    for (key, value) in values {
        text = text.replace(&format!("@{key}@"), value);
    }
    assert!(
        !text.contains('@'),
        "{name}: a placeholder is left:\n{text}"
    );
    write_config(&text)
}

/// client c0 10.80.0.2 — r0 10.80.0.1 router r1 10.80.1.1 — u0 10.80.1.2 node n1
///                                         r2 10.80.2.1 — u0 10.80.2.2 node n2
/// n1 d0 10.80.11.1 — e1 10.80.11.2 backend; n2 d0 10.80.12.1 — e2 10.80.12.2 backend.
/// The backends' addresses (10.80.100.x on the backend's loopback) are the same from both
/// nodes, so both build the same Maglev table. The VIP is on each node's loopback.
fn lab() -> Namespaces {
    let mut netns = Namespaces::new("blbgp");
    for role in ["cl", "rt", "n1", "n2", "be"] {
        netns.add(role);
    }
    let ip = |ns: &str, args: &[&str]| {
        let name = netns.name(ns);
        run_ok(Command::new("ip").args(["-n", &name]).args(args));
    };
    let link = |a: &str, dev_a: &str, b: &str, dev_b: &str| {
        let peer_ns = netns.name(b);
        ip(
            a,
            &[
                "link", "add", dev_a, "type", "veth", "peer", "name", dev_b, "netns", &peer_ns,
            ],
        );
    };
    link("cl", "c0", "rt", "r0");
    link("rt", "r1", "n1", "u0");
    link("rt", "r2", "n2", "u0");
    link("n1", "d0", "be", "e1");
    link("n2", "d0", "be", "e2");
    for (ns, dev, addr) in [
        ("cl", "c0", "10.80.0.2/24"),
        ("rt", "r0", "10.80.0.1/24"),
        ("rt", "r1", "10.80.1.1/24"),
        ("rt", "r2", "10.80.2.1/24"),
        ("n1", "u0", "10.80.1.2/24"),
        ("n2", "u0", "10.80.2.2/24"),
        ("n1", "d0", "10.80.11.1/24"),
        ("n2", "d0", "10.80.12.1/24"),
        ("be", "e1", "10.80.11.2/24"),
        ("be", "e2", "10.80.12.2/24"),
    ] {
        ip(ns, &["addr", "add", addr, "dev", dev]);
        ip(ns, &["link", "set", dev, "up"]);
    }
    for backend in BACKENDS {
        ip(
            "be",
            &["addr", "add", &format!("{backend}/32"), "dev", "lo"],
        );
    }
    for (node, uplink, downlink) in [
        ("n1", "10.80.1.1", "10.80.11.2"),
        ("n2", "10.80.2.1", "10.80.12.2"),
    ] {
        ip(node, &["addr", "add", &format!("{VIP}/32"), "dev", "lo"]);
        ip(node, &["route", "add", "default", "via", uplink]);
        ip(node, &["route", "add", "10.80.100.0/24", "via", downlink]);
    }
    ip("cl", &["route", "add", "default", "via", "10.80.0.1"]);
    let sysctl = |ns: &str, setting: &str| {
        run_ok(netns.exec(ns, "sysctl").args(["-qw", setting]));
    };
    sysctl("rt", "net.ipv4.ip_forward=1");
    // ECMP on the 5-tuple: connections of one client spread over the nodes.
    sysctl("rt", "net.ipv4.fib_multipath_hash_policy=1");
    // Established TCP connections stay on their node when it withdraws (deploy/bgp/pin-flows).
    run_ok(netns.exec("rt", repo().join("deploy/bgp/pin-flows")).args([
        VIP,
        "10.80.1.2",
        "10.80.2.2",
    ]));
    netns
}

/// Echo servers on every backend address, TCP and UDP port 7000: each answers with its own
/// name and the address it saw (the node that relayed), then echoes.
const BACKEND: &str = r#"
import socket, sys, threading
def tcp(addr):
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((addr, 7000)); s.listen(512)
    while True:
        c, peer = s.accept()
        threading.Thread(target=serve, args=(c, addr, peer), daemon=True).start()
def serve(c, addr, peer):
    try:
        c.sendall(("%s %s\n" % (addr, peer[0])).encode())
        while True:
            data = c.recv(65536)
            if not data:
                break
            c.sendall(data)
    except OSError:
        pass
    c.close()
def udp(addr):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind((addr, 7000))
    while True:
        data, peer = s.recvfrom(2048)
        s.sendto(("%s %s" % (addr, peer[0])).encode(), peer)
for a in sys.argv[1:]:
    threading.Thread(target=tcp, args=(a,), daemon=True).start()
    threading.Thread(target=udp, args=(a,), daemon=True).start()
print("ready", flush=True)
threading.Event().wait(600)
"#;

/// One Ballast node: BIRD, Ballast and the announcer, each killed on drop.
struct Node {
    name: &'static str,
    /// The node's address toward the backends, as a backend sees it.
    seen_as: &'static str,
    ballast: Option<Ballast>,
    config: PathBuf,
    bird_socket: PathBuf,
    _bird: Peer,
    _announcer: Peer,
}

impl Node {
    fn start(lab: &Namespaces, name: &'static str, uplink: &str, seen_as: &'static str) -> Node {
        let dir = std::env::temp_dir().join(format!("ballast-bgp-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let bird_socket = dir.join("bird.ctl");
        let conf = render(
            "node.conf.in",
            &[
                ("NODE_ID", uplink),
                ("VIP4", VIP),
                ("ROUTER", &router_side(uplink)),
            ],
        );
        let bird = spawn_peer(
            lab.exec(name, "bird")
                .args(["-f", "-c"])
                .arg(&conf)
                .arg("-s")
                .arg(&bird_socket)
                .arg("-P")
                .arg(dir.join("bird.pid")),
        );
        assert!(
            wait_until(IO_TIMEOUT, || bird_socket.exists()),
            "BIRD did not start on {name}"
        );
        let list: Vec<String> = BACKENDS
            .iter()
            .map(|b| format!("{{ address: \"{b}:7000\" }}"))
            .collect();
        let config = write_config(&format!(
            "workers: 1
grace: 1s
drain_timeout: 10s
admin: {{ listen: 127.0.0.1:9190 }}
listeners:
  - {{ name: tcp, listen: \"{VIP}:7000\", pool: p }}
  - {{ name: udp, protocol: udp, listen: \"{VIP}:7000\", pool: p, udp: {{ idle_timeout: 60s }} }}
pools:
  - name: p
    algorithm: maglev
    hash_key: source_ip
    backends: [{}]
",
            list.join(", ")
        ));
        let mut node = Node {
            name,
            seen_as,
            ballast: None,
            config,
            bird_socket: bird_socket.clone(),
            _bird: bird,
            _announcer: spawn_peer(
                lab.exec(name, repo().join("deploy/bgp/ballast-announce"))
                    .arg("http://127.0.0.1:9190/readyz")
                    .arg(&bird_socket),
            ),
        };
        node.start_ballast(lab);
        node
    }

    fn start_ballast(&mut self, lab: &Namespaces) {
        let mut run = lab.exec(self.name, binary());
        run.args(["run", "-c"]).arg(&self.config);
        self.ballast = Some(Ballast::spawn_command(run));
    }

    fn ballast(&mut self) -> &mut Ballast {
        self.ballast.as_mut().unwrap()
    }
}

/// The router's address on a node's link: the node's with .1 last.
fn router_side(node_addr: &str) -> String {
    let (net, _) = node_addr.rsplit_once('.').unwrap();
    format!("{net}.1")
}

/// What BIRD says of its protocols (`ns`'s BIRD on `socket`), for failure messages.
fn bird_state(lab: &Namespaces, ns: &str, socket: &Path) -> String {
    let out = lab
        .exec(ns, "birdc")
        .arg("-s")
        .arg(socket)
        .args(["show", "protocols"])
        .output()
        .unwrap();
    format!(
        "{ns}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// How many next hops the router's route to the VIP has (0: none).
fn paths(lab: &Namespaces) -> usize {
    let out = lab
        .exec("rt", "ip")
        .args(["route", "show", &format!("{VIP}/32")])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    if text.trim().is_empty() {
        return 0;
    }
    text.matches("nexthop").count().max(1)
}

/// `count` new TCP connections from the client, each from a new port; for each, the
/// backend's line: "<backend> <node address>", or "failed".
fn connect_many(lab: &Namespaces, count: usize) -> Vec<String> {
    let script = format!(
        r#"
import socket
for _ in range({count}):
    try:
        s = socket.create_connection(("{VIP}", 7000), timeout=3)
        print(s.makefile().readline().strip(), flush=True)
        s.close()
    except OSError as e:
        print("failed", e, flush=True)
"#
    );
    let out = lab
        .exec("cl", "python3")
        .args(["-c", &script])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

/// A UDP client that keeps one socket: one exchange per line on stdin ("<backend> <node>").
struct UdpClient {
    child: std::process::Child,
    lines: std::io::Lines<std::io::BufReader<std::process::ChildStdout>>,
}

impl UdpClient {
    fn start(lab: &Namespaces) -> UdpClient {
        let script = format!(
            r#"
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(0.5)
for line in sys.stdin:
    answer = "timeout"
    for _ in range(6):
        s.sendto(b"hello", ("{VIP}", 7000))
        try:
            answer = s.recv(2048).decode()
            break
        except socket.timeout:
            pass
    print(answer, flush=True)
"#
        );
        let mut child = lab
            .exec("cl", "python3")
            .args(["-c", &script])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let lines = std::io::BufRead::lines(std::io::BufReader::new(child.stdout.take().unwrap()));
        UdpClient { child, lines }
    }

    fn ask(&mut self) -> String {
        use std::io::Write;
        let stdin = self.child.stdin.as_mut().unwrap();
        writeln!(stdin, "go").unwrap();
        stdin.flush().unwrap();
        self.lines.next().and_then(Result::ok).unwrap_or_default()
    }
}

impl Drop for UdpClient {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn ecmp_spreads_over_the_nodes_and_a_dead_node_is_withdrawn_with_flows_kept_on_their_backend() {
    if !prerequisites() {
        return;
    }
    let lab = lab();
    let _backends = spawn_ready(
        lab.exec("be", "python3")
            .args(["-c", BACKEND])
            .args(BACKENDS),
        "backends",
    );
    let router_conf = render(
        "router.conf.in",
        &[
            ("ROUTER_ID", "10.80.0.1"),
            ("VIP4", VIP),
            ("NODE1", "10.80.1.2"),
            ("NODE2", "10.80.2.2"),
        ],
    );
    let router_dir = std::env::temp_dir().join(format!("ballast-bgp-{}-rt", std::process::id()));
    std::fs::create_dir_all(&router_dir).unwrap();
    let _router = spawn_peer(
        lab.exec("rt", "bird")
            .args(["-f", "-c"])
            .arg(&router_conf)
            .arg("-s")
            .arg(router_dir.join("bird.ctl"))
            .arg("-P")
            .arg(router_dir.join("bird.pid")),
    );
    let mut nodes = [
        Node::start(&lab, "n1", "10.80.1.2", "10.80.11.1"),
        Node::start(&lab, "n2", "10.80.2.2", "10.80.12.1"),
    ];
    // Both nodes announce once Ballast is ready: the router has two paths.
    let router_socket = router_dir.join("bird.ctl");
    assert!(
        wait_until(Duration::from_secs(30), || paths(&lab) == 2),
        "the router never got both paths: {}\n{}\n{}\n{}\n{}",
        paths(&lab),
        bird_state(&lab, "rt", &router_socket),
        bird_state(&lab, "n1", &nodes[0].bird_socket),
        bird_state(&lab, "n2", &nodes[1].bird_socket),
        nodes[0].ballast().log_text()
    );

    // New connections from many source ports spread over both nodes; Maglev on the source
    // sends this client to one backend whichever node relays it.
    let seen = connect_many(&lab, 40);
    assert_eq!(seen.len(), 40, "{seen:?}");
    assert!(seen.iter().all(|l| l != "failed"), "{seen:?}");
    let via = |node: &Node| seen.iter().filter(|l| l.ends_with(node.seen_as)).count();
    assert!(
        via(&nodes[0]) >= 5 && via(&nodes[1]) >= 5,
        "ECMP spread: {} via n1, {} via n2",
        via(&nodes[0]),
        via(&nodes[1])
    );
    let backend = seen[0].split_whitespace().next().unwrap().to_string();
    assert!(
        seen.iter().all(|l| l.starts_with(&format!("{backend} "))),
        "the nodes disagree on the client's backend: {seen:?}"
    );

    // A UDP flow keeps its backend when its node dies: the other node's Maglev agrees.
    let mut udp = UdpClient::start(&lab);
    let first = udp.ask();
    let (flow_backend, flow_node) = first.split_once(' ').unwrap();
    assert_eq!(flow_backend, backend, "{first}");
    let dead = nodes
        .iter()
        .position(|n| n.seen_as == flow_node)
        .unwrap_or_else(|| panic!("{first}"));
    let killed_at = Instant::now();
    nodes[dead].ballast().signal("KILL");
    assert!(
        wait_until(Duration::from_secs(5), || paths(&lab) == 1),
        "the dead node's path was never withdrawn"
    );
    // The announcer checks every 100 ms and withdraws after 2 failed checks; BGP carries it
    // to the router at once: well under a second, 2 s with a loaded machine's slack.
    let withdrawn_after = killed_at.elapsed();
    assert!(
        withdrawn_after < Duration::from_secs(2),
        "withdrawn after {withdrawn_after:?}"
    );
    let again = udp.ask();
    let survivor = &nodes[1 - dead];
    assert_eq!(
        again,
        format!("{backend} {}", survivor.seen_as),
        "the flow moved to the other node and kept its backend"
    );
    // No new connection fails once the path is gone.
    let seen = connect_many(&lab, 20);
    assert!(
        seen.iter().all(|l| l.ends_with(survivor.seen_as)),
        "{seen:?}"
    );

    // The node comes back and takes its share again.
    nodes[dead].start_ballast(&lab);
    assert!(
        wait_until(Duration::from_secs(10), || paths(&lab) == 2),
        "the restarted node never announced again"
    );
    let seen = connect_many(&lab, 40);
    let back = seen
        .iter()
        .filter(|l| l.ends_with(nodes[dead].seen_as))
        .count();
    assert!(back >= 5, "the restarted node took {back} of 40: {seen:?}");

    // SIGTERM with grace: the node withdraws first and keeps serving while the router
    // converges; no connection opened before the signal is lost, and new ones all succeed.
    let script = format!(
        r#"
import socket, sys, time
held = [socket.create_connection(("{VIP}", 7000), timeout=3) for _ in range(20)]
for s in held:
    s.makefile().readline()
print("open", flush=True)
sys.stdin.readline()
ok = 0
for s in held:
    s.sendall(b"still here")
    if s.recv(64) == b"still here":
        ok += 1
    s.close()
print("held", ok, flush=True)
"#
    );
    let mut holder = lab
        .exec("cl", "python3")
        .args(["-c", &script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(holder.stdout.take().unwrap()));
    assert_eq!(lines.next().and_then(Result::ok).as_deref(), Some("open"));
    let stopping = 0;
    nodes[stopping].ballast().signal("TERM");
    assert!(
        wait_until(Duration::from_secs(5), || paths(&lab) == 1),
        "a SIGTERMed node was not withdrawn during its grace"
    );
    let during = connect_many(&lab, 20);
    assert!(
        during
            .iter()
            .all(|l| l != "failed" && !l.starts_with("failed")),
        "{during:?}"
    );
    {
        use std::io::Write;
        let stdin = holder.stdin.as_mut().unwrap();
        writeln!(stdin, "go").unwrap();
    }
    assert_eq!(
        lines.next().and_then(Result::ok).as_deref(),
        Some("held 20"),
        "sessions opened before the SIGTERM were lost"
    );
    let _ = holder.wait();
    let status = nodes[stopping]
        .ballast()
        .wait_exit(IO_TIMEOUT)
        .expect("the stopped node exits once drained");
    assert!(status.success(), "{status:?}");

    // A node that goes silent (power, kernel: nothing closes its BGP session) is withdrawn by
    // the router's BFD: 3 x 100 ms without a packet, then BGP's route removal.
    let silent = &nodes[1 - stopping];
    run_ok(lab.exec(silent.name, "nft").args([
        "add table ip silence; add chain ip silence in { type filter hook input priority 0; policy drop; }; add chain ip silence out { type filter hook output priority 0; policy drop; }",
    ]));
    let silenced_at = Instant::now();
    assert!(
        wait_until(Duration::from_secs(5), || paths(&lab) == 0),
        "a silent node was never withdrawn"
    );
    let bfd_bound = silenced_at.elapsed();
    assert!(
        bfd_bound < Duration::from_millis(1500),
        "BFD withdrew the silent node after {bfd_bound:?}"
    );
    let _ = std::fs::remove_dir_all(&router_dir);
    for node in &nodes {
        let _ = std::fs::remove_dir_all(node.bird_socket.parent().unwrap());
    }
}
