//! High availability of the balancer itself: the keepalived pair of `deploy/keepalived/`, built
//! for real in network namespaces that the test creates.
//!
//! ```text
//!   client (192.0.2.50-57) ──┐
//!   node a (192.0.2.11)  ────┤   a bridge in its own namespace;
//!   node b (192.0.2.12)  ────┼── VIP 192.0.2.100 on whichever node keepalived makes master
//!   k1 (192.0.2.21)      ────┤
//!   k2 (192.0.2.22)      ────┘
//! ```
//!
//! Both nodes run the real `ballast` with the shipped `ballast.yaml` and the real `keepalived`
//! with the shipped `keepalived-a.conf` / `keepalived-b.conf`, unchanged: the namespaces give
//! each node its own `eth0` and its own 127.0.0.1:9190. Backends and the client are this test
//! binary started again inside their namespaces (see [`helper_process`]).
//!
//! Needs root, `ip`, `keepalived`, `curl` and `sysctl`; skips with a message otherwise, and fails
//! under CI=true.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use common::{require_root, require_tools, run_ok, wait_until, Ballast, Namespaces};

/// The addresses the shipped files use (checked against them below).
const NODE_A: &str = "192.0.2.11";
const NODE_B: &str = "192.0.2.12";
const VIP: &str = "192.0.2.100";
const PREFIX_LEN: u8 = 24;
const BACKENDS: [(&str, &str); 2] = [("k1", "192.0.2.21"), ("k2", "192.0.2.22")];
const CLIENT_SOURCES: [&str; 8] = [
    "192.0.2.50",
    "192.0.2.51",
    "192.0.2.52",
    "192.0.2.53",
    "192.0.2.54",
    "192.0.2.55",
    "192.0.2.56",
    "192.0.2.57",
];
const TCP_PORT: u16 = 7000;
const UDP_PORT: u16 = 27015;

/// Every wait below is bounded by one of these.
const SETUP_TIMEOUT: Duration = Duration::from_secs(20);
/// "Within a few seconds": from the kill to every client served again.
const FAILOVER_BOUND: Duration = Duration::from_secs(10);

/// Environment of a helper process: its role, and what it binds or talks to.
const HELPER: &str = "BALLAST_HA_HELPER";
const HELPER_NAME: &str = "BALLAST_HA_NAME";
const HELPER_TCP: &str = "BALLAST_HA_TCP";
const HELPER_UDP: &str = "BALLAST_HA_UDP";
const HELPER_SOURCES: &str = "BALLAST_HA_SOURCES";
/// Helper answers on stdout follow this; the test harness prints its own lines around them.
const MARK: &str = "@@ ";

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/keepalived")
}

/// Whether this machine can build the lab; skips (fails under CI=true) when it cannot.
fn prerequisites() -> bool {
    require_root("to create network namespaces and run keepalived")
        && require_tools(&[
            ("ip", "iproute2"),
            ("keepalived", "keepalived"),
            ("curl", "curl"),
            ("sysctl", "procps"),
        ])
}

/// The namespaces, processes and files of one run. Dropping it (also on a failed assertion)
/// kills the processes, deletes the namespaces (their veths and bridge go with them) and the
/// files.
struct Lab {
    /// Named `blha<pid>x<n>-<role>`.
    netns: Namespaces,
    children: Vec<Child>,
    dir: PathBuf,
}

impl Lab {
    fn new() -> Lab {
        let netns = Namespaces::new("blha");
        let dir = std::env::temp_dir().join(&netns.prefix);
        fs::create_dir_all(&dir).unwrap();
        let mut lab = Lab {
            netns,
            children: Vec::new(),
            dir,
        };
        let sw = lab.netns.add("sw");
        run_ok(Command::new("ip").args(["-n", &sw, "link", "add", "br0", "type", "bridge"]));
        run_ok(Command::new("ip").args(["-n", &sw, "link", "set", "br0", "up"]));
        lab
    }

    fn ns(&self, role: &str) -> String {
        self.netns.name(role)
    }

    /// A namespace whose `eth0` is plugged into the bridge, with `addresses`.
    fn add_host(&mut self, role: &str, addresses: &[&str]) {
        let ns = self.netns.add(role);
        let sw = self.ns("sw");
        let port = format!("p-{role}");
        run_ok(Command::new("ip").args([
            "-n", &ns, "link", "add", "eth0", "type", "veth", "peer", "name", &port, "netns", &sw,
        ]));
        run_ok(Command::new("ip").args(["-n", &sw, "link", "set", &port, "master", "br0", "up"]));
        for address in addresses {
            let cidr = format!("{address}/{PREFIX_LEN}");
            run_ok(Command::new("ip").args(["-n", &ns, "addr", "add", &cidr, "dev", "eth0"]));
        }
        run_ok(Command::new("ip").args(["-n", &ns, "link", "set", "eth0", "up"]));
    }

    /// `program` run inside the namespace of `role`.
    fn exec(&self, role: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
        self.netns.exec(role, program)
    }

    /// Starts keepalived on a node with the shipped config, its logs in the lab's folder.
    fn keepalived(&mut self, role: &str, config: &Path) -> PathBuf {
        let file = |what: &str| self.dir.join(format!("{role}-{what}"));
        let log = file("keepalived.log");
        let out = fs::File::create(&log).unwrap();
        let child = self
            .exec(role, "keepalived")
            // -n: stay in the foreground (a child of this test); -l -D: detailed log on
            // stderr; -P: VRRP only; own pid files, so pairs from parallel runs never meet.
            .args(["-n", "-l", "-D", "-P", "-f"])
            .arg(config)
            .arg("-p")
            .arg(file("keepalived.pid"))
            .arg("-r")
            .arg(file("vrrp.pid"))
            .arg("-c")
            .arg(file("checkers.pid"))
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap();
        self.children.push(child);
        log
    }

    fn has_vip(&self, role: &str) -> bool {
        let output = Command::new("ip")
            .args([
                "-n",
                &self.ns(role),
                "-4",
                "-o",
                "addr",
                "show",
                "dev",
                "eth0",
            ])
            .output()
            .unwrap();
        String::from_utf8_lossy(&output.stdout).contains(&format!(" {VIP}/"))
    }

    /// `GET /api/v1/status` of the Ballast on a node, asked from inside its namespace.
    fn status(&self, role: &str) -> Option<serde_json::Value> {
        let output = self
            .exec(role, "curl")
            .args(["-fsS", "-m", "2", "http://127.0.0.1:9190/api/v1/status"])
            .output()
            .ok()?;
        serde_json::from_slice(&output.stdout).ok()
    }

    /// This test binary, started again in a namespace as a backend or the client.
    fn helper(&self, role: &str, env: &[(&str, String)]) -> Helper {
        let mut cmd = self.exec(role, std::env::current_exe().unwrap());
        cmd.args([
            "helper_process",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ]);
        for (key, value) in env {
            cmd.env(key, value);
        }
        Helper::spawn(cmd)
    }

    fn log_tail(&self, path: &Path) -> String {
        let text = fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.netns.delete_all();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// A helper process: commands on its stdin, answers (after [`MARK`]) on its stdout.
struct Helper {
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::Receiver<String>,
}

impl Helper {
    fn spawn(mut cmd: Command) -> Helper {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                // The harness's "test helper_process ... " may stand before the first one.
                if let Some((_, answer)) = line.split_once(MARK) {
                    if tx.send(answer.to_owned()).is_err() {
                        return;
                    }
                }
            }
        });
        let mut helper = Helper {
            child,
            stdin,
            lines,
        };
        let first = helper.next_line(SETUP_TIMEOUT);
        assert_eq!(first.as_deref(), Some("ready"), "helper did not start");
        helper
    }

    fn next_line(&mut self, timeout: Duration) -> Option<String> {
        self.lines.recv_timeout(timeout).ok()
    }

    /// One command, one answer: `ok <backend>` or `err <why>`.
    fn ask(&mut self, command: &str) -> String {
        writeln!(self.stdin, "{command}").unwrap();
        self.next_line(Duration::from_secs(10))
            .unwrap_or_else(|| panic!("no answer to {command:?}"))
    }

    /// The backend that served `command`, or `None` when it failed.
    fn served_by(&mut self, command: &str) -> Option<String> {
        self.ask(command).strip_prefix("ok ").map(str::to_owned)
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Not a test: the body of the backend and client processes that the HA test starts inside
/// its namespaces (`<this binary> helper_process --exact --ignored` with [`HELPER`] set).
/// Run without [`HELPER`], it returns at once.
#[test]
#[ignore = "helper process of failover_moves_the_vip_and_keeps_udp_flows_on_their_backend"]
fn helper_process() {
    let Ok(role) = std::env::var(HELPER) else {
        return;
    };
    let var = |key: &str| std::env::var(key).unwrap();
    match role.as_str() {
        "backend" => run_backend(&var(HELPER_NAME), &var(HELPER_TCP), &var(HELPER_UDP)),
        "client" => run_client(&var(HELPER_SOURCES), &var(HELPER_TCP), &var(HELPER_UDP)),
        other => panic!("unknown helper role {other:?}"),
    }
}

/// A game server: TCP connections get the server's name and a newline; each UDP datagram is
/// answered with the name, a space and the datagram (so a client can match replies).
fn run_backend(name: &str, tcp: &str, udp: &str) {
    let listener = TcpListener::bind(tcp).unwrap();
    let socket = UdpSocket::bind(udp).unwrap();
    let tag = name.to_owned();
    thread::spawn(move || {
        let mut buf = [0u8; 2048];
        loop {
            let Ok((n, from)) = socket.recv_from(&mut buf) else {
                continue;
            };
            let mut reply = format!("{tag} ").into_bytes();
            reply.extend_from_slice(&buf[..n]);
            let _ = socket.send_to(&reply, from);
        }
    });
    println!("{MARK}ready");
    for stream in listener.incoming() {
        let Ok(mut stream) = stream else { continue };
        // Health checks connect and close at once; their write may fail.
        let _ = stream.write_all(format!("{name}\n").as_bytes());
    }
}

/// The client: one UDP socket per source address, each bound once (so each is one flow, the
/// same 4-tuple for the whole run) and connected to the VIP. Commands: `tcp <i>` opens a new
/// connection from source i; `udp <i>` sends one datagram on flow i.
fn run_client(sources: &str, tcp: &str, udp: &str) {
    let sources: Vec<IpAddr> = sources.split(',').map(|s| s.parse().unwrap()).collect();
    let tcp: SocketAddr = tcp.parse().unwrap();
    let udp: SocketAddr = udp.parse().unwrap();
    let flows: Vec<UdpSocket> = sources
        .iter()
        .map(|source| {
            let socket = UdpSocket::bind(SocketAddr::new(*source, 0)).unwrap();
            socket.connect(udp).unwrap();
            socket
                .set_read_timeout(Some(Duration::from_millis(100)))
                .unwrap();
            socket
        })
        .collect();
    println!("{MARK}ready");
    let mut sequence = 0u64;
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { return };
        let mut words = line.split_whitespace();
        let kind = words.next();
        let index = words.next().and_then(|i| i.parse::<usize>().ok());
        let answer = match (kind, index) {
            (Some("tcp"), Some(i)) if i < sources.len() => tcp_once(sources[i], tcp),
            (Some("udp"), Some(i)) if i < flows.len() => {
                sequence += 1;
                udp_once(&flows[i], sequence)
            }
            _ => Err(format!("unknown command {line:?}")),
        };
        match answer {
            Ok(backend) => println!("{MARK}ok {backend}"),
            Err(why) => println!("{MARK}err {why}"),
        }
    }
}

fn tcp_once(source: IpAddr, target: SocketAddr) -> Result<String, String> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).map_err(|e| e.to_string())?;
    socket
        .bind(&SocketAddr::new(source, 0).into())
        .map_err(|e| format!("bind: {e}"))?;
    socket
        .connect_timeout(&target.into(), Duration::from_millis(500))
        .map_err(|e| format!("connect: {e}"))?;
    let stream: TcpStream = socket.into();
    stream
        .set_read_timeout(Some(Duration::from_secs(1)))
        .map_err(|e| e.to_string())?;
    let mut reply = String::new();
    BufReader::new(stream)
        .read_line(&mut reply)
        .map_err(|e| format!("read: {e}"))?;
    match reply.trim() {
        "" => Err("closed without a reply".into()),
        name => Ok(name.to_owned()),
    }
}

/// Sends `ping <sequence>` and waits (500 ms at most) for the reply to that very datagram;
/// replies to earlier, timed-out ones are skipped.
fn udp_once(socket: &UdpSocket, sequence: u64) -> Result<String, String> {
    let message = format!("ping {sequence}");
    socket
        .send(message.as_bytes())
        .map_err(|e| format!("send: {e}"))?;
    let deadline = Instant::now() + Duration::from_millis(500);
    let mut buf = [0u8; 2048];
    while Instant::now() < deadline {
        match socket.recv(&mut buf) {
            Ok(n) => {
                let reply = String::from_utf8_lossy(&buf[..n]);
                if let Some(backend) = reply.strip_suffix(&format!(" {message}")) {
                    return Ok(backend.to_owned());
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
            // ECONNREFUSED: an ICMP port unreachable from a node whose Ballast is gone.
            Err(e) => return Err(format!("recv: {e}")),
        }
    }
    Err("timeout".into())
}

/// The value after `keyword` in a keepalived config (first occurrence).
fn keepalived_value<'a>(config: &'a str, keyword: &str) -> Option<&'a str> {
    let mut words = config
        .lines()
        .map(|l| l.split('#').next().unwrap_or(""))
        .flat_map(str::split_whitespace);
    words.find(|w| *w == keyword)?;
    words.next()
}

/// The shipped files say what the lab builds: the same addresses, interface and ports.
#[test]
fn shipped_pair_is_consistent() {
    let dir = deploy_dir();
    let a = fs::read_to_string(dir.join("keepalived-a.conf")).unwrap();
    let b = fs::read_to_string(dir.join("keepalived-b.conf")).unwrap();
    for (config, own, peer) in [(&a, NODE_A, NODE_B), (&b, NODE_B, NODE_A)] {
        assert_eq!(keepalived_value(config, "unicast_src_ip"), Some(own));
        assert_eq!(keepalived_value(config, "unicast_peer"), Some("{"));
        assert!(config.contains(&format!("unicast_peer {{\n        {peer}\n")));
        assert_eq!(keepalived_value(config, "interface"), Some("eth0"));
        assert_eq!(
            keepalived_value(config, "virtual_ipaddress"),
            Some("{"),
            "{config}"
        );
        assert!(config.contains(&format!("{VIP}/{PREFIX_LEN} dev eth0")));
        assert!(config.contains("track_script"));
        assert!(config.contains("http://127.0.0.1:9190/readyz"));
        assert_eq!(keepalived_value(config, "state"), Some("BACKUP"));
    }
    for key in [
        "virtual_router_id",
        "advert_int",
        "interval",
        "fall",
        "rise",
    ] {
        assert_eq!(
            keepalived_value(&a, key),
            keepalived_value(&b, key),
            "{key} differs"
        );
    }
    let priority = |c: &str| {
        keepalived_value(c, "priority")
            .unwrap()
            .parse::<u32>()
            .unwrap()
    };
    assert!(priority(&a) > priority(&b), "node a is the preferred one");

    // Ballast binds the VIP on both nodes, with the admin port the check script asks.
    let yaml = fs::read_to_string(dir.join("ballast.yaml")).unwrap();
    assert!(yaml.contains(&format!("listen: {VIP}:{TCP_PORT}")));
    assert!(yaml.contains(&format!("listen: {VIP}:{UDP_PORT}")));
    assert!(yaml.contains("listen: 127.0.0.1:9190"));
    for (_, address) in BACKENDS {
        assert!(yaml.contains(&format!("{address}:{TCP_PORT}")));
        assert!(yaml.contains(&format!("{address}:{UDP_PORT}")));
    }
    assert_eq!(yaml.matches("hash_key: source_ip").count(), 2);
    let sysctl = fs::read_to_string(dir.join("sysctl.conf")).unwrap();
    assert!(sysctl.contains("net.ipv4.ip_nonlocal_bind = 1"));
    let check = Command::new(common::binary())
        .arg("check")
        .arg("-c")
        .arg(dir.join("ballast.yaml"))
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
}

/// One step of the run, with the time since `started` (shown with --nocapture).
fn note(started: Instant, what: String) {
    eprintln!("{:>6.2}s {what}", started.elapsed().as_secs_f64());
}

#[test]
fn failover_moves_the_vip_and_keeps_udp_flows_on_their_backend() {
    if !prerequisites() {
        return;
    }
    let t0 = Instant::now();
    let dir = deploy_dir();

    // The topology: one bridge, five hosts.
    let mut lab = Lab::new();
    lab.add_host("a", &[NODE_A]);
    lab.add_host("b", &[NODE_B]);
    for (name, address) in BACKENDS {
        lab.add_host(name, &[address]);
    }
    lab.add_host("c", &CLIENT_SOURCES);
    note(t0, format!("namespaces {}*", lab.netns.prefix));

    let _backends: Vec<Helper> = BACKENDS
        .iter()
        .map(|(name, address)| {
            lab.helper(
                name,
                &[
                    (HELPER, "backend".into()),
                    (HELPER_NAME, (*name).into()),
                    (HELPER_TCP, format!("{address}:{TCP_PORT}")),
                    (HELPER_UDP, format!("{address}:{UDP_PORT}")),
                ],
            )
        })
        .collect();

    // Ballast on both nodes, the same file, bound to the VIP whoever holds it.
    let mut nodes: BTreeMap<&str, Ballast> = BTreeMap::new();
    for node in ["a", "b"] {
        run_ok(
            lab.exec(node, "sysctl")
                .args(["-q", "-p"])
                .arg(dir.join("sysctl.conf")),
        );
        let mut cmd = lab.exec(node, common::binary());
        cmd.arg("run").arg("-c").arg(dir.join("ballast.yaml"));
        nodes.insert(node, Ballast::spawn_command(cmd));
    }
    // Ready, and every backend healthy in both (health checks have run).
    for node in ["a", "b"] {
        let healthy = wait_until(SETUP_TIMEOUT, || {
            lab.status(node).is_some_and(|status| {
                status["ready"] == true
                    && status["pools"].as_array().is_some_and(|pools| {
                        pools.iter().all(|p| {
                            p["backends"]
                                .as_array()
                                .is_some_and(|bs| bs.iter().all(|b| b["up"] == true))
                        })
                    })
            })
        });
        assert!(healthy, "node {node}: {:?}", lab.status(node));
    }
    note(t0, "ballast ready on a and b".into());

    // keepalived: a first, so it wins the first election; then b, which stays backup.
    let log_a = lab.keepalived("a", &dir.join("keepalived-a.conf"));
    assert!(
        wait_until(SETUP_TIMEOUT, || lab.has_vip("a")),
        "node a never took the VIP:\n{}",
        lab.log_tail(&log_a)
    );
    let log_b = lab.keepalived("b", &dir.join("keepalived-b.conf"));
    assert!(
        wait_until(SETUP_TIMEOUT, || fs::read_to_string(&log_b)
            .unwrap_or_default()
            .contains("Entering BACKUP STATE")),
        "node b never became backup:\n{}",
        lab.log_tail(&log_b)
    );
    assert!(lab.has_vip("a") && !lab.has_vip("b"));
    note(t0, "VIP on a; b is backup".into());

    let mut client = lab.helper(
        "c",
        &[
            (HELPER, "client".into()),
            (HELPER_SOURCES, CLIENT_SOURCES.join(",")),
            (HELPER_TCP, format!("{VIP}:{TCP_PORT}")),
            (HELPER_UDP, format!("{VIP}:{UDP_PORT}")),
        ],
    );

    // Traffic to the VIP flows, through a: a new TCP connection and a UDP flow per source.
    let mut tcp_before = Vec::new();
    let mut udp_before = Vec::new();
    for (i, source) in CLIENT_SOURCES.iter().enumerate() {
        let tcp = client.ask(&format!("tcp {i}"));
        let tcp = tcp
            .strip_prefix("ok ")
            .unwrap_or_else(|| panic!("tcp from {source}: {tcp}"));
        tcp_before.push(tcp.to_owned());
        let udp = client.ask(&format!("udp {i}"));
        let udp = udp
            .strip_prefix("ok ")
            .unwrap_or_else(|| panic!("udp from {source}: {udp}"));
        udp_before.push(udp.to_owned());
    }
    note(
        t0,
        format!("through a: tcp {tcp_before:?}, udp {udp_before:?}"),
    );
    // Maglev on the source address spreads the sources over both backends, in each pool (so
    // keeping a backend across the failover below means something). The two pools' tables
    // differ: their backends have other ports.
    for (name, _) in BACKENDS {
        assert!(tcp_before.iter().any(|b| b == name), "{tcp_before:?}");
        assert!(udp_before.iter().any(|b| b == name), "{udp_before:?}");
    }
    let counters = |node: &str| {
        let status = lab.status(node).unwrap();
        let listeners = status["listeners"].as_array().unwrap().clone();
        let get = |name: &str, key: &str| {
            listeners
                .iter()
                .find(|l| l["name"] == name)
                .and_then(|l| l[key].as_u64())
                .unwrap()
        };
        (
            get("lobby", "connections_total"),
            get("game", "udp_flows_total"),
        )
    };
    let sources = CLIENT_SOURCES.len() as u64;
    assert_eq!(counters("a"), (sources, sources), "a served everything");
    assert_eq!(counters("b"), (0, 0), "b, bound to the VIP, saw nothing");

    // Kill the active Ballast outright.
    let killed = Instant::now();
    nodes.get("a").unwrap().signal("KILL");
    note(t0, "killed ballast on a (SIGKILL)".into());

    assert!(
        wait_until(FAILOVER_BOUND, || lab.has_vip("b") && !lab.has_vip("a")),
        "the VIP did not move:\n--- a\n{}\n--- b\n{}",
        lab.log_tail(&log_a),
        lab.log_tail(&log_b)
    );
    let moved = killed.elapsed();
    note(t0, format!("VIP on b after {moved:.2?}"));

    // New TCP connections and the same UDP flows succeed through b, each on its backend.
    let mut tcp_after = vec![None; CLIENT_SOURCES.len()];
    let mut udp_after = vec![None; CLIENT_SOURCES.len()];
    let mut attempts = 0;
    let recovered = wait_until(FAILOVER_BOUND.saturating_sub(killed.elapsed()), || {
        for i in 0..CLIENT_SOURCES.len() {
            if tcp_after[i].is_none() {
                attempts += 1;
                tcp_after[i] = client.served_by(&format!("tcp {i}"));
            }
            if udp_after[i].is_none() {
                attempts += 1;
                udp_after[i] = client.served_by(&format!("udp {i}"));
            }
        }
        tcp_after.iter().chain(&udp_after).all(Option::is_some)
    });
    let served = killed.elapsed();
    assert!(
        recovered,
        "not every client served within {FAILOVER_BOUND:?} of the kill: tcp {tcp_after:?}, udp \
         {udp_after:?}\n--- b\n{}\n{}",
        lab.log_tail(&log_b),
        nodes.get("b").unwrap().log_text()
    );
    note(
        t0,
        format!("every client served through b {served:.2?} after the kill ({attempts} tries)"),
    );
    let tcp_after: Vec<String> = tcp_after.into_iter().flatten().collect();
    let udp_after: Vec<String> = udp_after.into_iter().flatten().collect();
    assert_eq!(
        udp_after, udp_before,
        "a UDP flow changed backend across the failover"
    );
    assert_eq!(
        tcp_after, tcp_before,
        "a source's new TCP connection changed backend"
    );
    // b served them: every flow was new to it, and the sessions went through it.
    let (tcp_b, udp_b) = counters("b");
    assert!(tcp_b >= sources && udp_b == sources, "b: {tcp_b} {udp_b}");
    assert!(served < FAILOVER_BOUND);
    note(t0, format!("done; whole test {:.1?}", t0.elapsed()));

    // Dropped in reverse order: client, nodes, backends, then the lab (processes,
    // namespaces, files).
}
