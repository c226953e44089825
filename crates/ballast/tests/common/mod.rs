//! Helpers for tests that run the real `ballast` binary against real sockets on 127.0.0.1.
#![allow(dead_code, clippy::unwrap_used)]

pub mod cgroup;
pub mod dns;
pub mod redis;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

mod require;
#[allow(unused_imports, reason = "each test file uses some of them")]
pub use require::{is_root, on_path, require_root, require_tool, require_tools, skip, strict};

pub const IO_TIMEOUT: Duration = Duration::from_secs(20);
const READY_TIMEOUT: Duration = Duration::from_secs(30);

pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_ballast")
}

/// A unique scratch file for a config.
pub fn write_config(yaml: &str) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let path = std::env::temp_dir().join(format!("ballast-test-{}-{n}.yaml", std::process::id()));
    std::fs::write(&path, yaml).unwrap();
    path
}

/// A running `ballast` process whose stderr is captured line by line.
pub struct Ballast {
    child: Child,
    lines: mpsc::Receiver<String>,
    pub log: Arc<Mutex<Vec<String>>>,
    /// (listener, address) from the "listening" lines, in order.
    pub listening: Vec<(String, SocketAddr)>,
    /// From the "admin listening" line, when the config has an `admin:` block.
    pub admin: Option<SocketAddr>,
}

impl Ballast {
    pub fn run(yaml: &str) -> Self {
        let path = write_config(yaml);
        Self::spawn(&["run", "-c", path.to_str().unwrap()])
    }

    /// Starts the binary with `args` and waits (bounded) for its "ready" line.
    pub fn spawn(args: &[&str]) -> Self {
        let mut cmd = Command::new(binary());
        cmd.args(args);
        Self::spawn_command(cmd)
    }

    pub fn spawn_command(mut cmd: Command) -> Self {
        let (child, stderr) = spawn_with_stderr(cmd.env("BALLAST_LOG", "info"));
        let (tx, rx) = mpsc::channel();
        let log = Arc::new(Mutex::new(Vec::new()));
        let log2 = log.clone();
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { return };
                log2.lock().unwrap().push(line.clone());
                let _ = tx.send(line);
            }
        });
        let mut b = Ballast {
            child,
            lines: rx,
            log,
            listening: Vec::new(),
            admin: None,
        };
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = match b.lines.recv_timeout(left) {
                Ok(line) => line,
                Err(_) => panic!("ballast never got ready; log:\n{}", b.log_text()),
            };
            if line.contains(" admin listening ") {
                b.admin = Some(field(&line, "addr").parse().unwrap());
            } else if line.contains(" listening ") {
                b.listening.push((
                    field(&line, "listener"),
                    field(&line, "addr").parse().unwrap(),
                ));
            }
            if line.ends_with(" ready") {
                return b;
            }
        }
    }

    pub fn addr(&self, listener: &str) -> SocketAddr {
        self.listening
            .iter()
            .find(|(name, _)| name == listener)
            .map(|(_, a)| *a)
            .unwrap_or_else(|| panic!("no listener {listener}: {:?}", self.listening))
    }

    pub fn admin(&self) -> SocketAddr {
        self.admin
            .unwrap_or_else(|| panic!("no admin server; log:\n{}", self.log_text()))
    }

    /// The parsed `GET /api/v1/status`.
    pub fn status(&self) -> serde_json::Value {
        let (code, body) = http(self.admin(), "GET", "/api/v1/status", None);
        assert_eq!(code, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    }

    /// The status entry of one listener.
    pub fn listener(&self, name: &str) -> serde_json::Value {
        self.status()["listeners"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["name"] == name)
            .unwrap_or_else(|| panic!("no listener {name} in the status"))
            .clone()
    }

    /// The status entry of one backend (`pool`, `host:port`).
    pub fn backend(&self, pool: &str, backend: SocketAddr) -> serde_json::Value {
        let status = self.status();
        let pools = status["pools"].as_array().unwrap();
        let pool = pools.iter().find(|p| p["name"] == pool).unwrap();
        let backends = pool["backends"].as_array().unwrap();
        backends
            .iter()
            .find(|b| b["address"] == backend.to_string())
            .unwrap_or_else(|| panic!("no backend {backend} in {pool}"))
            .clone()
    }

    /// Polls the status API (bounded) until `check` accepts the backend's entry; returns it.
    pub fn wait_backend(
        &self,
        pool: &str,
        backend: SocketAddr,
        timeout: Duration,
        check: impl Fn(&serde_json::Value) -> bool,
    ) -> Option<serde_json::Value> {
        let mut entry = serde_json::Value::Null;
        let found = wait_until(timeout, || {
            entry = self.backend(pool, backend);
            check(&entry)
        });
        found.then_some(entry)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// Waits (bounded) for a log line containing `needle`.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> bool {
        wait_until(timeout, || {
            self.log.lock().unwrap().iter().any(|l| l.contains(needle))
        })
    }

    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([format!("-{signal}"), self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Whether the process has not exited yet.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits (bounded) for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let mut status = None;
        wait_until(timeout, || {
            status = self.child.try_wait().unwrap();
            status.is_some()
        });
        status
    }
}

impl Drop for Ballast {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `cmd` with no stdin or stdout and a pipe from its stderr.
pub fn spawn_with_stderr(cmd: &mut Command) -> (Child, std::process::ChildStderr) {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    (child, stderr)
}

/// The value of `key=value` (or `key="value"`) in a tracing text line.
fn field(line: &str, key: &str) -> String {
    let pat = format!("{key}=");
    let start = line.find(&pat).map(|i| i + pat.len()).unwrap();
    let rest = &line[start..];
    let value = rest.split_whitespace().next().unwrap_or("");
    value.trim_matches('"').to_string()
}

/// A backend that answers each connection with its `name` and a newline, then echoes
/// everything it reads; counts connections.
pub struct NamedBackend {
    pub addr: SocketAddr,
    pub name: String,
    pub connections: Arc<AtomicU64>,
}

/// `delay` is waited before each reply (for least_time tests).
pub fn named_backend(name: &str, delay: Duration) -> NamedBackend {
    let connections = Arc::new(AtomicU64::new(0));
    let counter = connections.clone();
    let tag = name.to_string();
    let addr = serve_each(move |stream| {
        counter.fetch_add(1, Ordering::Relaxed);
        serve_named(stream, &tag, delay);
    });
    NamedBackend {
        addr,
        name: name.to_string(),
        connections,
    }
}

/// A TCP server on 127.0.0.1 that runs `handler` on its own thread for each connection.
pub fn serve_each(handler: impl Fn(TcpStream) + Send + Sync + 'static) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let handler = Arc::new(handler);
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            let handler = handler.clone();
            thread::spawn(move || handler(stream));
        }
    });
    addr
}

/// One connection of a named backend: greets with `tag` and a newline on the first bytes
/// read, echoes everything, half-closes on EOF.
pub fn serve_named(mut stream: TcpStream, tag: &str, delay: Duration) {
    let mut buf = [0u8; 16 * 1024];
    let mut greeted = false;
    loop {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if !delay.is_zero() {
                    thread::sleep(delay);
                }
                if !greeted {
                    greeted = true;
                    if stream.write_all(format!("{tag}\n").as_bytes()).is_err() {
                        return;
                    }
                }
                if stream.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
        }
    }
    let _ = stream.shutdown(Shutdown::Write);
}

/// A named backend (see [`serve_named`]) that can be stopped, closing its listening socket
/// so that connects are refused, and started again on the same address.
pub struct KillableBackend {
    pub addr: SocketAddr,
    pub name: String,
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl KillableBackend {
    pub fn start(name: &str, addr: SocketAddr) -> Self {
        // std sets SO_REUSEADDR, so a restart binds even with connections in TIME_WAIT.
        let listener = TcpListener::bind(addr).unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped = stop.clone();
        let tag = name.to_string();
        let thread = thread::spawn(move || {
            for stream in listener.incoming() {
                // `kill` sets the flag, then connects once to wake this blocking accept.
                if stopped.load(Ordering::Relaxed) {
                    return;
                }
                let Ok(stream) = stream else { continue };
                let tag = tag.clone();
                thread::spawn(move || serve_named(stream, &tag, Duration::ZERO));
            }
        });
        Self {
            addr,
            name: name.to_string(),
            stop,
            thread: Some(thread),
        }
    }

    /// Closes the listening socket; returns once it is closed.
    pub fn kill(&mut self) {
        if let Some(thread) = self.thread.take() {
            self.stop.store(true, Ordering::Relaxed);
            let _ = TcpStream::connect_timeout(&self.addr, IO_TIMEOUT);
            thread.join().unwrap();
        }
    }
}

impl Drop for KillableBackend {
    fn drop(&mut self) {
        self.kill();
    }
}

pub fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT).unwrap();
    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    stream.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    stream
}

/// Opens sessions until one lands on `backend`; returns it open (greeting read) and closes
/// the others.
pub fn session_on(front: SocketAddr, backend: &str) -> std::net::TcpStream {
    for _ in 0..10 {
        let mut s = connect(front);
        s.write_all(b"x").unwrap();
        let mut reader = BufReader::new(s.try_clone().unwrap());
        let mut name = String::new();
        reader.read_line(&mut name).unwrap();
        let mut echo = [0u8; 1];
        reader.read_exact(&mut echo).unwrap();
        if name.trim() == backend {
            return s;
        }
    }
    panic!("no session reached {backend}");
}

/// One request/response through the balancer: returns the name of the backend that answered.
pub fn ask(addr: SocketAddr, msg: &str) -> String {
    let mut s = connect(addr);
    s.write_all(msg.as_bytes()).unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let mut reply = String::new();
    s.read_to_string(&mut reply).unwrap();
    let (name, echoed) = reply
        .split_once('\n')
        .unwrap_or_else(|| panic!("reply {reply:?}"));
    assert_eq!(echoed, msg);
    name.to_string()
}

/// A port on 127.0.0.1 that nothing listens on (bound, then closed).
pub fn dead_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// One HTTP/1.1 request; returns (status code, body). The body is read by its
/// Content-Length, or to the end (`Connection: close`), or by chunks. Sends the
/// `X-Ballast-Request` header the admin server wants on every POST, as scripts do.
pub fn http(addr: SocketAddr, method: &str, path: &str, token: Option<&str>) -> (u16, String) {
    http_body(addr, method, path, token, "")
}

/// [`http`] with a JSON body.
pub fn http_body(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> (u16, String) {
    let mut s = connect(addr);
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let length = body.len();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}X-Ballast-Request: 1\r\nContent-Length: {length}\r\nConnection: close\r\n\r\n{body}"
    );
    s.write_all(request.as_bytes()).unwrap();
    let mut reader = BufReader::new(s);
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap() == 0 || line == "\r\n" {
            break;
        }
        head.push_str(&line);
    }
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("bad response: {head}"));
    let header = |name: &str| {
        head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    };
    let mut body = Vec::new();
    if let Some(length) = header("content-length") {
        body.resize(length.parse().unwrap(), 0);
        reader.read_exact(&mut body).unwrap();
    } else {
        reader.read_to_end(&mut body).unwrap();
    }
    let body = String::from_utf8_lossy(&body).to_string();
    if header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        (code, dechunk(&body))
    } else {
        (code, body)
    }
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).unwrap();
        if size == 0 {
            break;
        }
        out.push_str(&rest[..size]);
        body = &rest[size + 2..];
    }
    out
}

/// Polls `check` every 10 ms until it holds or `timeout` passes; its last answer.
pub fn wait_until(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if check() {
            return true;
        }
        thread::sleep(Duration::from_millis(10));
    }
    check()
}

/// A free TCP port on 127.0.0.1 (bound, then closed), for servers the tests start.
pub fn free_port() -> u16 {
    dead_addr().port()
}

/// A UDP echo that tags replies; `mute` makes it swallow datagrams with its socket still
/// bound, so the kernel sends no ICMP refusal.
pub struct UdpEcho {
    pub addr: SocketAddr,
    pub mute: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
}

impl Drop for UdpEcho {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

pub fn udp_echo(tag: u8) -> UdpEcho {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let addr = socket.local_addr().unwrap();
    let mute = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let (m, s) = (mute.clone(), stop.clone());
    thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while !s.load(Ordering::Relaxed) {
            let Ok((n, peer)) = socket.recv_from(&mut buf) else {
                continue;
            };
            if m.load(Ordering::Relaxed) {
                continue;
            }
            let mut out = vec![tag];
            out.extend_from_slice(&buf[..n]);
            let _ = socket.send_to(&out, peer);
        }
    });
    UdpEcho { addr, mute, stop }
}

/// A peer process (openssl, haproxy, dnsmasq, unbound) killed when dropped.
pub struct Peer(pub Child);

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `cmd` with its standard streams closed, as a peer killed on drop.
pub fn spawn_peer(cmd: &mut Command) -> Peer {
    Peer(
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

/// Starts `cmd`, a helper that prints "ready" on its first line once it serves, and waits
/// for that line (bounded by the helper's own exit: a helper that dies ends the read).
pub fn spawn_ready(cmd: &mut Command, what: &str) -> Peer {
    let mut peer = Peer(
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut ready = String::new();
    BufReader::new(peer.0.stdout.take().unwrap())
        .read_line(&mut ready)
        .unwrap();
    assert_eq!(ready.trim(), "ready", "{what} did not start");
    peer
}

/// Runs `cmd` and fails the test with its stderr when it does not succeed.
pub fn run_ok(cmd: &mut Command) -> std::process::Output {
    let output = cmd.output().unwrap();
    assert!(
        output.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// The network namespaces of one test run (root only), named `<tag><pid>x<n>-<role>`. Each
/// gets its loopback up. Dropping the guard (also on a failed assertion) kills whatever still
/// runs in them and deletes them, with their veths; creating one first removes namespaces of
/// the same tag left by a run whose process no longer exists (killed before its drops ran).
pub struct Namespaces {
    /// Unique per run: `<tag><pid>x<n>-`.
    pub prefix: String,
    names: Vec<String>,
}

impl Namespaces {
    pub fn new(tag: &str) -> Namespaces {
        static RUNS: AtomicU64 = AtomicU64::new(0);
        remove_stale_namespaces(tag);
        let run = RUNS.fetch_add(1, Ordering::Relaxed);
        Namespaces {
            prefix: format!("{tag}{}x{run}-", std::process::id()),
            names: Vec::new(),
        }
    }

    /// The namespace of `role` (created or not).
    pub fn name(&self, role: &str) -> String {
        format!("{}{role}", self.prefix)
    }

    /// Creates the namespace of `role`, loopback up; returns its name.
    pub fn add(&mut self, role: &str) -> String {
        let ns = self.name(role);
        run_ok(Command::new("ip").args(["netns", "add", &ns]));
        self.names.push(ns.clone());
        run_ok(Command::new("ip").args(["-n", &ns, "link", "set", "lo", "up"]));
        ns
    }

    /// `program` run inside the namespace of `role`.
    pub fn exec(&self, role: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name(role)]).arg(program);
        cmd
    }

    /// Kills what runs in the namespaces and deletes them, newest first.
    pub fn delete_all(&mut self) {
        while let Some(ns) = self.names.pop() {
            kill_namespace_processes(&ns);
            let _ = Command::new("ip").args(["netns", "del", &ns]).status();
        }
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        self.delete_all();
    }
}

/// Kills what is still running in a namespace (processes the test did not start directly,
/// such as keepalived's VRRP child or a check script).
fn kill_namespace_processes(ns: &str) {
    let Ok(output) = Command::new("ip").args(["netns", "pids", ns]).output() else {
        return;
    };
    for pid in String::from_utf8_lossy(&output.stdout).split_whitespace() {
        let _ = Command::new("kill").args(["-KILL", pid]).status();
    }
}

/// Namespaces of `tag` left by a run whose process no longer exists.
fn remove_stale_namespaces(tag: &str) {
    let Ok(output) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        let Some(pid) = name
            .strip_prefix(tag)
            .and_then(|rest| rest.split_once('x'))
            .map(|(pid, _)| pid)
        else {
            continue;
        };
        if !pid.is_empty() && !std::path::Path::new("/proc").join(pid).exists() {
            kill_namespace_processes(name);
            let _ = Command::new("ip").args(["netns", "del", name]).status();
        }
    }
}
