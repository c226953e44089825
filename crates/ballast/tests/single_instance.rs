//! One listening address, one Ballast (issue 22, issue 13 defect 6), with the real binary and
//! real sockets: a second `ballast run` on an address the first one serves is refused with
//! exit 2 and one line naming the address and the first one's pid, and the first one loses no
//! connection while it happens, under a steady stream of new connections; `shared_port: true`
//! on both shares the address as documented.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream, UdpSocket};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::*;

/// How many times each refused start is tried while the first instance serves.
const SECOND_STARTS: usize = 10;
/// A refused start exits within this; one that does not has started serving.
const START_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause between two new client connections: a few hundred per second.
const CLIENT_PAUSE: Duration = Duration::from_millis(3);

fn tcp_config(
    listener: &str,
    addr: SocketAddr,
    admin: &str,
    backend: SocketAddr,
    extra: &str,
) -> String {
    format!(
        "workers: 2\n{admin}listeners:\n  - name: {listener}\n    listen: \"{addr}\"\n    pool: p\n{extra}pools:\n  - name: p\n    backends:\n      - {{ address: {backend} }}\n"
    )
}

fn fixed_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}

/// Runs `ballast run -c path` to its end, bounded: (exit code, stderr). A process still
/// running after [`START_TIMEOUT`] is killed and reported as `None`.
fn run_to_exit(path: &Path) -> (Option<i32>, String) {
    let mut child = Command::new(binary())
        .args(["run", "-c", path.to_str().unwrap()])
        .env("BALLAST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let reader = thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let deadline = Instant::now() + START_TIMEOUT;
    let code = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status.code();
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        thread::sleep(Duration::from_millis(10));
    };
    (code, reader.join().unwrap())
}

/// The ERROR lines of a log.
fn errors(log: &str) -> Vec<&str> {
    log.lines().filter(|l| l.contains(" ERROR ")).collect()
}

/// A client thread that opens a new connection every few milliseconds, sends a line and reads
/// the whole reply; it counts the replies per backend name and every failure.
struct Stream {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failures: Arc<Mutex<Vec<String>>>,
    by_backend: Arc<Mutex<std::collections::HashMap<String, u64>>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Stream {
    fn start(addr: SocketAddr) -> Stream {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let by_backend = Arc::new(Mutex::new(std::collections::HashMap::new()));
        let (s, o, f, b) = (
            stop.clone(),
            ok.clone(),
            failures.clone(),
            by_backend.clone(),
        );
        let thread = thread::spawn(move || {
            let mut n = 0u64;
            while !s.load(Ordering::Relaxed) {
                n += 1;
                match exchange(addr, n) {
                    Ok(name) => {
                        o.fetch_add(1, Ordering::Relaxed);
                        *b.lock().unwrap().entry(name).or_insert(0) += 1;
                    }
                    Err(e) => f.lock().unwrap().push(format!("connection {n}: {e}")),
                }
                thread::sleep(CLIENT_PAUSE);
            }
        });
        let stream = Stream {
            stop,
            ok,
            failures,
            by_backend,
            thread: Some(thread),
        };
        // Readiness: the stream is flowing before the test acts.
        assert!(
            wait_until(IO_TIMEOUT, || stream.ok.load(Ordering::Relaxed) >= 20),
            "the client stream never got going: {:?}",
            stream.failures.lock().unwrap()
        );
        stream
    }

    fn count(&self, backend: &str) -> u64 {
        self.by_backend
            .lock()
            .unwrap()
            .get(backend)
            .copied()
            .unwrap_or(0)
    }

    /// Stops the thread and asserts that every connection was answered.
    fn finish_losing_nothing(self) {
        let (ok, failures, _) = self.finish();
        assert!(
            failures.is_empty(),
            "{} failures: {failures:?}",
            failures.len()
        );
        assert!(ok > 0);
    }

    /// Stops the thread; (successful connections, failures, replies per backend).
    fn finish(mut self) -> (u64, Vec<String>, std::collections::HashMap<String, u64>) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
        let failures = self.failures.lock().unwrap().clone();
        let by_backend = self.by_backend.lock().unwrap().clone();
        (self.ok.load(Ordering::Relaxed), failures, by_backend)
    }
}

/// One connection: send a line, half-close, read the reply `name\nline`; the backend's name.
fn exchange(addr: SocketAddr, n: u64) -> std::io::Result<String> {
    let mut s = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    let msg = format!("req {n}");
    s.write_all(msg.as_bytes())?;
    s.shutdown(Shutdown::Write)?;
    let mut reply = String::new();
    s.read_to_string(&mut reply)?;
    match reply.split_once('\n') {
        Some((name, echoed)) if echoed == msg => Ok(name.to_string()),
        _ => Err(std::io::Error::other(format!("bad reply {reply:?}"))),
    }
}

/// Starts the second instance `SECOND_STARTS` times while `stream` runs; each must exit 2
/// with exactly one error line containing every one of `wanted`.
fn refused_every_time(path: &Path, wanted: &[String]) {
    for attempt in 0..SECOND_STARTS {
        let (code, stderr) = run_to_exit(path);
        assert_eq!(code, Some(2), "attempt {attempt}: exit {code:?}\n{stderr}");
        let lines = errors(&stderr);
        assert_eq!(
            lines.len(),
            1,
            "attempt {attempt}: one error line:\n{stderr}"
        );
        for needle in wanted {
            assert!(
                lines[0].contains(needle.as_str()),
                "attempt {attempt}: {needle:?} missing from {:?}",
                lines[0]
            );
        }
    }
}

/// (a) Another config on the same address: refused, named, and the first loses nothing.
#[test]
fn a_second_instance_with_another_config_is_refused_and_harms_no_connection() {
    let first_backend = named_backend("first", Duration::ZERO);
    let second_backend = named_backend("second", Duration::ZERO);
    let addr = fixed_addr();
    let first = Ballast::run(&tcp_config(
        "front",
        addr,
        "admin: { listen: 127.0.0.1:0 }\n",
        first_backend.addr,
        "",
    ));
    let stream = Stream::start(addr);
    let other = write_config(&tcp_config(
        "other",
        addr,
        "admin: { listen: 127.0.0.1:0 }\n",
        second_backend.addr,
        "",
    ));
    refused_every_time(
        &other,
        &[
            format!("listener other: {addr} is already in use by"),
            format!("(pid {})", first.pid()),
            "shared_port: true".to_string(),
        ],
    );
    let (ok, failures, by_backend) = stream.finish();
    assert!(
        failures.is_empty(),
        "{} failures: {failures:?}",
        failures.len()
    );
    assert_eq!(by_backend.get("second"), None, "{by_backend:?}");
    assert_eq!(by_backend.get("first"), Some(&ok), "{by_backend:?}");
    assert_eq!(second_backend.connections.load(Ordering::Relaxed), 0);
}

/// (b) The same config again (issue 13, defect 6): the admin address is the one found taken,
/// before any listener socket joins a group, so no queued connection is reset.
#[test]
fn the_same_config_started_twice_is_refused_and_harms_no_connection() {
    let backend = named_backend("first", Duration::ZERO);
    let addr = fixed_addr();
    let admin = fixed_addr();
    let yaml = tcp_config(
        "front",
        addr,
        &format!("admin: {{ listen: \"{admin}\" }}\n"),
        backend.addr,
        "",
    );
    let first = Ballast::run(&yaml);
    let stream = Stream::start(addr);
    let same = write_config(&yaml);
    refused_every_time(
        &same,
        &[
            format!("admin.listen {admin} is already in use by"),
            format!("(pid {})", first.pid()),
        ],
    );
    stream.finish_losing_nothing();
    // The first instance still serves its admin API.
    let (code, _) = http(first.admin(), "GET", "/api/v1/status", None);
    assert_eq!(code, 200);
}

/// (c) `shared_port: true` on both: the second starts, and takes a share of new connections
/// (as docs/configuration.md says it will).
#[test]
fn shared_port_on_both_lets_a_second_instance_take_a_share() {
    let first_backend = named_backend("first", Duration::ZERO);
    let second_backend = named_backend("second", Duration::ZERO);
    let addr = fixed_addr();
    let shared = "    shared_port: true\n";
    let _first = Ballast::run(&tcp_config("front", addr, "", first_backend.addr, shared));
    let stream = Stream::start(addr);
    let second = Ballast::run(&tcp_config("other", addr, "", second_backend.addr, shared));
    assert_eq!(second.addr("other"), addr);
    let shared_out = wait_until(IO_TIMEOUT, || {
        stream.count("second") >= 20 && stream.count("first") >= 20
    });
    let (_, failures, by_backend) = stream.finish();
    assert!(
        shared_out,
        "both should serve new connections: {by_backend:?}"
    );
    assert!(
        failures.is_empty(),
        "{} failures: {failures:?}",
        failures.len()
    );
}

/// (d) A UDP listener on an address in use is refused too, and the first one's flows carry on.
#[test]
fn a_second_instance_on_a_udp_address_in_use_is_refused() {
    let echo = udp_echo(b'1');
    let port = UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let config = |name: &str| {
        format!(
            "workers: 2\nlisteners:\n  - name: {name}\n    protocol: udp\n    listen: \"{addr}\"\n    pool: p\npools:\n  - name: p\n    backends:\n      - {{ address: {} }}\n",
            echo.addr
        )
    };
    let first = Ballast::run(&config("dns"));
    // A steady stream of new flows (a new client socket each), each answered by the first.
    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicU64::new(0));
    let lost = Arc::new(Mutex::new(Vec::new()));
    let (s, a, l) = (stop.clone(), answered.clone(), lost.clone());
    let client = thread::spawn(move || {
        let mut n = 0u64;
        while !s.load(Ordering::Relaxed) {
            n += 1;
            let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
            socket
                .set_read_timeout(Some(Duration::from_secs(2)))
                .unwrap();
            let msg = format!("q{n}");
            socket.send_to(msg.as_bytes(), addr).unwrap();
            let mut buf = [0u8; 64];
            match socket.recv(&mut buf) {
                Ok(len) if buf[..len] == [b"1", msg.as_bytes()].concat()[..] => {
                    a.fetch_add(1, Ordering::Relaxed);
                }
                other => l.lock().unwrap().push(format!("flow {n}: {other:?}")),
            }
            thread::sleep(CLIENT_PAUSE);
        }
    });
    assert!(wait_until(IO_TIMEOUT, || answered.load(Ordering::Relaxed) >= 20));
    let other = write_config(&config("other"));
    refused_every_time(
        &other,
        &[
            format!("listener other: udp {addr} is already in use by"),
            format!("(pid {})", first.pid()),
        ],
    );
    stop.store(true, Ordering::Relaxed);
    client.join().unwrap();
    let lost = lost.lock().unwrap();
    assert!(lost.is_empty(), "{} lost: {lost:?}", lost.len());
}

/// The hint names the holder also when it is not a Ballast (here: this test process), and
/// a specific address is refused when the wildcard of its port is taken.
#[test]
fn an_address_held_by_another_program_is_refused_with_its_pid() {
    let backend = named_backend("b", Duration::ZERO);
    let wildcard = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let addr = SocketAddr::from(([127, 0, 0, 1], wildcard.local_addr().unwrap().port()));
    let path = write_config(&tcp_config("front", addr, "", backend.addr, ""));
    let (code, stderr) = run_to_exit(&path);
    assert_eq!(code, Some(2), "{stderr}");
    let lines = errors(&stderr);
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(
        lines[0].contains(&format!("listener front: {addr} is already in use by")),
        "{stderr}"
    );
    assert!(
        lines[0].contains(&format!("(pid {})", std::process::id())),
        "{stderr}"
    );
}

/// A reload that moves an address to a listener of another name keeps serving it (the lock
/// stays with the process), and a reload that adds an address another process holds is
/// refused whole, the running listeners untouched and losing no connection. (The rename
/// itself closes the old listener's sockets, which resets what was queued on them: that is
/// how any reopened listener behaves, so the client stream starts after it.)
#[test]
fn reloads_keep_their_own_addresses_and_refuse_taken_ones() {
    let backend = named_backend("first", Duration::ZERO);
    let addr = fixed_addr();
    let admin = "admin: { listen: 127.0.0.1:0 }\n";
    let path = write_config(&tcp_config("a", addr, admin, backend.addr, ""));
    let first = Ballast::spawn(&["run", "-c", path.to_str().unwrap()]);
    // Under a steady stream of new connections: a rename keeps the listener's sockets, so
    // nothing queued on them is reset.
    let stream = Stream::start(addr);

    for (from, to) in [("a", "b"), ("b", "a")].repeat(5) {
        std::fs::write(&path, tcp_config(to, addr, admin, backend.addr, "")).unwrap();
        let (code, body) = http(first.admin(), "POST", "/api/v1/reload", None);
        assert_eq!(code, 200, "{body}");
        assert!(
            body.contains(&format!("\"listeners_renamed\":[[\"{from}\",\"{to}\"]]")),
            "{body}"
        );
        assert!(body.contains("\"listeners_opened\":[]"), "{body}");
    }
    std::fs::write(&path, tcp_config("b", addr, admin, backend.addr, "")).unwrap();
    let (code, body) = http(first.admin(), "POST", "/api/v1/reload", None);
    assert_eq!(code, 200, "{body}");
    // Still this process's address: another instance is refused, naming it.
    let other = write_config(&tcp_config("c", addr, "", backend.addr, ""));
    refused_every_time(
        &other,
        &[
            format!("listener c: {addr} is already in use by"),
            format!("(pid {})", first.pid()),
        ],
    );

    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_addr = taken.local_addr().unwrap();
    let two = format!(
        "{}  - name: extra\n    listen: \"{taken_addr}\"\n    pool: p\n",
        tcp_config("b", addr, admin, backend.addr, "")
            .split("pools:")
            .next()
            .unwrap()
    ) + &format!(
        "pools:\n  - name: p\n    backends:\n      - {{ address: {} }}\n",
        backend.addr
    );
    std::fs::write(&path, two).unwrap();
    let (code, body) = http(first.admin(), "POST", "/api/v1/reload", None);
    assert_eq!(code, 422, "{body}");
    assert!(
        body.contains(&format!(
            "listener extra: {taken_addr} is already in use by"
        )),
        "{body}"
    );
    assert!(first.wait_for_log(
        "reload refused; the running configuration is unchanged",
        IO_TIMEOUT
    ));
    let listeners = first.status()["listeners"].clone();
    assert_eq!(listeners.as_array().unwrap().len(), 1, "{listeners}");

    stream.finish_losing_nothing();
}
