//! Binary upgrade through the real binary (issue 16): under a steady stream of new TCP
//! connections, UDP clients and one long TCP stream, several upgrades in a row lose nothing;
//! an upgrade that cannot happen (broken config, a binary that exits at once) leaves the
//! running process serving, with the reason; SIGUSR2 does the same as the API, and the new
//! process holds the address locks, so a stranger still cannot join.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream, UdpSocket};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::*;

const TOKEN: &str = "upgrade-test-token";
/// Upgrades in a row in the load test (the five).
const UPGRADES: usize = 5;
/// New TCP connections per second, over all load threads (bounded: paced, and stopped by
/// count as well as by flag).
const RATE: u64 = 600;
const LOAD_THREADS: u64 = 3;
const MAX_CONNECTIONS: u64 = 60_000;
const UDP_CLIENTS: usize = 60;

/// Processes an upgrade started (grandchildren of the test, out of reach of `Child`),
/// terminated when the test ends, however it ends.
#[derive(Default)]
struct Strays(Mutex<Vec<u32>>);

impl Strays {
    fn add(&self, pid: u32) {
        self.0.lock().unwrap().push(pid);
    }
}

impl Drop for Strays {
    fn drop(&mut self) {
        for pid in self.0.lock().unwrap().iter() {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .stderr(std::process::Stdio::null())
                .status();
        }
    }
}

fn token_file() -> String {
    write_config(&format!("{TOKEN}\n")).display().to_string()
}

/// The pid in `GET /api/v1/status`, and whether it says ready.
fn serving(admin: SocketAddr) -> (u32, bool) {
    let (code, body) = http(admin, "GET", "/api/v1/status", None);
    assert_eq!(code, 200, "{body}");
    let status: serde_json::Value = serde_json::from_str(&body).unwrap();
    (
        u32::try_from(status["pid"].as_u64().unwrap()).unwrap(),
        status["ready"] == true,
    )
}

/// Whether process `pid` is gone (or a zombie: it exited, its parent has not reaped it).
fn exited(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |stat| {
        stat.rsplit(") ").next().is_some_and(|s| s.starts_with('Z'))
    })
}

fn upgrade_api(admin: SocketAddr) -> (u16, serde_json::Value) {
    let (code, body) = http(admin, "POST", "/api/v1/upgrade", Some(TOKEN));
    (
        code,
        serde_json::from_str(&body).unwrap_or(serde_json::Value::Null),
    )
}

#[derive(Default)]
struct TcpTally {
    ok: AtomicU64,
    refused: AtomicU64,
    reset: AtomicU64,
    other: AtomicU64,
    errors: Mutex<Vec<String>>,
}

impl TcpTally {
    fn fail(&self, counter: &AtomicU64, what: String) {
        counter.fetch_add(1, Ordering::Relaxed);
        let mut errors = self.errors.lock().unwrap();
        if errors.len() < 20 {
            errors.push(what);
        }
    }
}

/// One short connection: a message, its echo behind the backend's name, the close.
fn exchange(addr: SocketAddr, n: u64, tally: &TcpTally) {
    let msg = format!("m{n}");
    let mut s = match TcpStream::connect_timeout(&addr, Duration::from_secs(5)) {
        Ok(s) => s,
        Err(e) if e.kind() == ErrorKind::ConnectionRefused => {
            return tally.fail(&tally.refused, format!("connect: {e}"))
        }
        Err(e) => return tally.fail(&tally.other, format!("connect: {e}")),
    };
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let mut reply = String::new();
    let result = s
        .write_all(msg.as_bytes())
        .and_then(|()| s.shutdown(Shutdown::Write))
        .and_then(|()| s.read_to_string(&mut reply));
    match result {
        Err(e) if e.kind() == ErrorKind::ConnectionReset => {
            tally.fail(&tally.reset, format!("{msg}: {e}"))
        }
        Err(e) => tally.fail(&tally.other, format!("{msg}: {e}")),
        Ok(_) if reply.split_once('\n').map(|(_, echo)| echo) == Some(msg.as_str()) => {
            tally.ok.fetch_add(1, Ordering::Relaxed);
        }
        Ok(_) => tally.fail(&tally.reset, format!("{msg}: reply {reply:?}")),
    }
}

fn tcp_load(
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    tally: Arc<TcpTally>,
) -> Vec<thread::JoinHandle<()>> {
    let interval = Duration::from_micros(1_000_000 * LOAD_THREADS / RATE);
    (0..LOAD_THREADS)
        .map(|t| {
            let (stop, tally) = (stop.clone(), tally.clone());
            thread::spawn(move || {
                let mut next = Instant::now();
                for i in 0..MAX_CONNECTIONS / LOAD_THREADS {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    exchange(addr, i * LOAD_THREADS + t, &tally);
                    next += interval;
                    if let Some(wait) = next.checked_duration_since(Instant::now()) {
                        thread::sleep(wait);
                    }
                }
            })
        })
        .collect()
}

#[derive(Default)]
struct UdpTally {
    rounds: AtomicU64,
    changed: AtomicU64,
    /// Datagrams that got no reply in time and were sent again.
    resent: AtomicU64,
    unanswered: AtomicU64,
}

/// UDP clients taking turns, one datagram in flight each, each remembering the backend of its
/// first reply; a client whose reply comes from another backend counts as changed.
fn udp_load(
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    tally: Arc<UdpTally>,
) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        let clients: Vec<UdpSocket> = (0..UDP_CLIENTS)
            .map(|_| {
                let s = UdpSocket::bind("127.0.0.1:0").unwrap();
                s.set_read_timeout(Some(Duration::from_millis(500)))
                    .unwrap();
                s.connect(addr).unwrap();
                s
            })
            .collect();
        let mut tags = [None; UDP_CLIENTS];
        let mut buf = [0u8; 256];
        for seq in 0..100_000u64 {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            for (c, sock) in clients.iter().enumerate() {
                let msg = format!("c{c} #{seq}");
                let mut answered = false;
                for attempt in 0..4 {
                    if attempt > 0 {
                        tally.resent.fetch_add(1, Ordering::Relaxed);
                    }
                    sock.send(msg.as_bytes()).unwrap();
                    // Replies to an earlier, resent datagram are skipped.
                    while let Ok(n) = sock.recv(&mut buf) {
                        if &buf[1..n] != msg.as_bytes() {
                            continue;
                        }
                        match tags[c] {
                            None => tags[c] = Some(buf[0]),
                            Some(tag) if tag != buf[0] => {
                                tally.changed.fetch_add(1, Ordering::Relaxed);
                                tags[c] = Some(buf[0]);
                            }
                            Some(_) => {}
                        }
                        answered = true;
                        break;
                    }
                    if answered {
                        break;
                    }
                }
                if !answered {
                    tally.unanswered.fetch_add(1, Ordering::Relaxed);
                }
            }
            tally.rounds.fetch_add(1, Ordering::Relaxed);
            thread::sleep(Duration::from_millis(20));
        }
    })
}

/// The byte at `i` of the long stream: not periodic in any chunk size.
fn pattern(i: u64) -> u8 {
    (i.wrapping_mul(2_654_435_761) >> 13) as u8
}

/// One TCP session that streams a pattern through the upgrades and reads its echo back;
/// returns (bytes sent, bytes echoed byte-exact) when `stop` is set and the echo ends.
fn long_stream(addr: SocketAddr, stop: Arc<AtomicBool>) -> thread::JoinHandle<(u64, u64)> {
    let s = connect(addr);
    let mut writer = s.try_clone().unwrap();
    let reader = thread::spawn(move || {
        let mut s = s;
        let mut buf = vec![0u8; 64 * 1024];
        let mut greeting = Vec::new();
        let mut got = 0u64;
        loop {
            let n = match s.read(&mut buf) {
                Ok(0) => return got,
                Ok(n) => n,
                Err(e) => panic!("long stream broke after {got} bytes: {e}"),
            };
            let mut data = &buf[..n];
            if !greeting.ends_with(b"\n") {
                let end = data
                    .iter()
                    .position(|&b| b == b'\n')
                    .map_or(data.len(), |p| p + 1);
                greeting.extend_from_slice(&data[..end]);
                data = &data[end..];
            }
            for &b in data {
                assert_eq!(b, pattern(got), "long stream: byte {got} differs");
                got += 1;
            }
        }
    });
    thread::spawn(move || {
        let mut sent = 0u64;
        let chunk = 32 * 1024;
        // Bounded: at most 10 000 chunks (320 MiB), whatever the flag does.
        for _ in 0..10_000 {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            let data: Vec<u8> = (sent..sent + chunk).map(pattern).collect();
            writer.write_all(&data).unwrap();
            sent += chunk;
            thread::sleep(Duration::from_millis(5));
        }
        writer.shutdown(Shutdown::Write).unwrap();
        (sent, reader.join().unwrap())
    })
}

#[test]
fn five_upgrades_under_load_refuse_reset_and_move_nothing() {
    let web = [
        named_backend("a", Duration::ZERO),
        named_backend("b", Duration::ZERO),
        named_backend("c", Duration::ZERO),
    ];
    let game = [udp_echo(b'x'), udp_echo(b'y'), udp_echo(b'z')];
    let dead = dead_addr();
    let yaml = format!(
        "workers: 2
drain_timeout: 60s
admin: {{ listen: 127.0.0.1:0, token_file: \"{token}\" }}
listeners:
  - {{ name: web, listen: 127.0.0.1:0, pool: web }}
  - {{ name: game, protocol: udp, listen: 127.0.0.1:0, pool: game, udp: {{ idle_timeout: 60s, max_flows: 1000 }} }}
  - {{ name: spare, listen: 127.0.0.1:0, pool: spare }}
pools:
  - name: web
    algorithm: round_robin
    backends: [{{ address: {a} }}, {{ address: {b} }}, {{ address: {c} }}]
  - name: game
    algorithm: round_robin
    backends: [{{ address: {x} }}, {{ address: {y} }}, {{ address: {z} }}]
  - name: spare
    health_check: {{ kind: tcp, interval: 1s, timeout: 200ms, rise: 1, fall: 1 }}
    backends: [{{ address: {dead} }}]
",
        token = token_file(),
        a = web[0].addr,
        b = web[1].addr,
        c = web[2].addr,
        x = game[0].addr,
        y = game[1].addr,
        z = game[2].addr,
    );
    let mut lb = Ballast::run(&yaml);
    let strays = Strays::default();
    let admin = lb.admin();
    // States the new processes must carry: an operator's drain, a health check's verdict.
    let (code, body) = http(
        admin,
        "POST",
        &format!("/api/v1/pools/web/backends/{}/drain", web[2].addr),
        Some(TOKEN),
    );
    assert_eq!(code, 200, "{body}");
    assert!(
        lb.wait_backend("spare", dead, Duration::from_secs(10), |b| b["state"]
            == "down")
            .is_some(),
        "the health check never marked the dead backend down"
    );

    let stop = Arc::new(AtomicBool::new(false));
    let tcp = Arc::new(TcpTally::default());
    let udp = Arc::new(UdpTally::default());
    let load = tcp_load(lb.addr("web"), stop.clone(), tcp.clone());
    let players = udp_load(lb.addr("game"), stop.clone(), udp.clone());
    let stream = long_stream(lb.addr("web"), stop.clone());
    // Load is flowing before the first upgrade.
    assert!(wait_until(Duration::from_secs(20), || {
        tcp.ok.load(Ordering::Relaxed) >= 200 && udp.rounds.load(Ordering::Relaxed) >= 3
    }));

    let first = lb.pid();
    let mut pids = vec![first];
    let mut timings = Vec::new();
    for round in 0..UPGRADES {
        let started = Instant::now();
        let (code, answer) = upgrade_api(admin);
        assert_eq!(code, 200, "upgrade {round}: {answer}\n{}", lb.log_text());
        timings.push(started.elapsed());
        let pid = u32::try_from(answer["pid"].as_u64().unwrap()).unwrap();
        strays.add(pid);
        assert_eq!(serving(admin), (pid, true), "upgrade {round}");
        // Carried over, not found again: the drain, and the health verdict well before the
        // new process's first probe could have made it.
        assert_eq!(lb.backend("web", web[2].addr)["state"], "draining");
        assert_eq!(lb.backend("spare", dead)["state"], "down");
        pids.push(pid);
        // Some load on the new process before the next upgrade.
        let (ok, rounds) = (
            tcp.ok.load(Ordering::Relaxed),
            udp.rounds.load(Ordering::Relaxed),
        );
        assert!(wait_until(Duration::from_secs(20), || {
            tcp.ok.load(Ordering::Relaxed) >= ok + 300
                && udp.rounds.load(Ordering::Relaxed) >= rounds + 3
        }));
    }
    stop.store(true, Ordering::Relaxed);
    for t in load {
        t.join().unwrap();
    }
    players.join().unwrap();
    let (sent, echoed) = stream.join().unwrap();

    // Every old process drains (the long stream was its last session) and exits; the first
    // one, our own child, with status 0.
    assert_eq!(
        lb.wait_exit(Duration::from_secs(30)).map(|s| s.code()),
        Some(Some(0))
    );
    for &pid in &pids[1..UPGRADES] {
        assert!(
            wait_until(Duration::from_secs(30), || exited(pid)),
            "pid {pid} never exited"
        );
    }
    let (ok, refused, reset, other) = (
        tcp.ok.load(Ordering::Relaxed),
        tcp.refused.load(Ordering::Relaxed),
        tcp.reset.load(Ordering::Relaxed),
        tcp.other.load(Ordering::Relaxed),
    );
    let (changed, resent, unanswered) = (
        udp.changed.load(Ordering::Relaxed),
        udp.resent.load(Ordering::Relaxed),
        udp.unanswered.load(Ordering::Relaxed),
    );
    eprintln!(
        "{UPGRADES} upgrades (API answered in {timings:?}): TCP {ok} ok, {refused} refused, {reset} reset, {other} other; UDP {} rounds of {UDP_CLIENTS} clients, {changed} changed backend, {resent} resent, {unanswered} unanswered; long stream {sent} bytes sent, {echoed} echoed",
        udp.rounds.load(Ordering::Relaxed)
    );
    let errors = tcp.errors.lock().unwrap().clone();
    assert_eq!((refused, reset, other), (0, 0, 0), "{errors:?}");
    assert_eq!((changed, unanswered), (0, 0));
    assert_eq!(echoed, sent, "the long stream was cut short");
    // Nothing went to the drained backend, in any process.
    assert_eq!(web[2].connections.load(Ordering::Relaxed), 0);
    let last = *pids.last().unwrap();
    let _ = Command::new("kill")
        .args(["-TERM", &last.to_string()])
        .status();
    assert!(wait_until(Duration::from_secs(30), || exited(last)));
}

fn write_script(body: &str) -> String {
    let path = write_config(body);
    let script = path.with_extension("sh");
    std::fs::rename(&path, &script).unwrap();
    let _ = Command::new("chmod").arg("+x").arg(&script).status();
    script.display().to_string()
}

fn upgrade_cli(args: &[&str]) -> std::process::Output {
    Command::new(binary())
        .arg("upgrade")
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn a_refused_upgrade_leaves_the_process_serving_and_sigusr2_upgrades() {
    let backend = named_backend("a", Duration::ZERO);
    let (port, admin_port) = (free_port(), free_port());
    let yaml = format!(
        "admin: {{ listen: 127.0.0.1:{admin_port}, token_file: \"{}\" }}
listeners:
  - {{ name: web, listen: 127.0.0.1:{port}, pool: web }}
pools:
  - name: web
    backends: [{{ address: {} }}]
",
        token_file(),
        backend.addr
    );
    let path = write_config(&yaml);
    let mut lb = Ballast::spawn(&["run", "-c", path.to_str().unwrap()]);
    let strays = Strays::default();
    let admin = lb.admin();
    let front = lb.addr("web");
    let admin_arg = admin.to_string();
    let token = write_config(&format!("{TOKEN}\n"));
    let by_admin = [
        "--admin",
        &admin_arg,
        "--token-file",
        token.to_str().unwrap(),
    ];
    let still_serving = |lb: &Ballast| {
        assert_eq!(ask(front, "still there"), "a");
        assert_eq!(serving(admin), (lb.pid(), true));
    };

    // A configuration the new process refuses: the reasons come back, nothing changes.
    std::fs::write(&path, yaml.replace("pool: web }", "pool: nowhere }")).unwrap();
    let out = upgrade_cli(&by_admin);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("nowhere"), "{stderr}");
    still_serving(&lb);
    assert!(lb.wait_for_log("upgrade refused; this process serves on", IO_TIMEOUT));

    // A binary that exits at once.
    std::fs::write(&path, &yaml).unwrap();
    let script = write_script("#!/bin/sh\nexit 3\n");
    let mut args = by_admin.to_vec();
    args.extend(["--binary", script.as_str()]);
    let out = upgrade_cli(&args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("exited before it was ready"), "{stderr}");
    assert!(stderr.contains("exit status: 3"), "{stderr}");
    still_serving(&lb);

    // SIGUSR2: the same upgrade, told only in the log; the old process drains and exits 0.
    lb.signal("USR2");
    assert!(
        lb.wait_for_log("upgrade: the new process serves", IO_TIMEOUT),
        "{}",
        lb.log_text()
    );
    assert_eq!(lb.wait_exit(IO_TIMEOUT).map(|s| s.code()), Some(Some(0)));
    let (pid, ready) = serving(admin);
    strays.add(pid);
    assert!(ready && pid != lb.pid());
    assert_eq!(ask(front, "after the upgrade"), "a");

    // The new process holds the address's lock: a stranger is still refused, and named.
    let other = write_config(&format!(
        "listeners:\n  - {{ name: intruder, listen: 127.0.0.1:{port}, pool: p }}\npools:\n  - name: p\n    backends: [{{ address: {} }}]\n",
        backend.addr
    ));
    let out = Command::new(binary())
        .args(["run", "-c", other.to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains(&format!("pid {pid}")), "{stderr}");
    assert_eq!(ask(front, "not shared"), "a");

    // `ballast upgrade` found from the config file alone.
    let out = upgrade_cli(&["-c", path.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let answer: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let newest = u32::try_from(answer["pid"].as_u64().unwrap()).unwrap();
    strays.add(newest);
    assert_eq!(serving(admin), (newest, true));
    assert!(wait_until(IO_TIMEOUT, || exited(pid)));
    assert!(Path::new(&format!("/proc/{newest}")).exists());
}

/// A config with the admin API and one listener toward `backend`.
fn admin_and_web(backend: SocketAddr) -> String {
    format!(
        "admin: {{ listen: 127.0.0.1:0, token_file: \"{}\" }}
listeners:
  - {{ name: web, listen: 127.0.0.1:0, pool: web }}
pools:
  - name: web
    backends: [{{ address: {backend} }}]
",
        token_file()
    )
}

#[test]
fn a_supervisor_keeps_its_pid_across_upgrades_and_exits_with_the_server() {
    let backend = named_backend("a", Duration::ZERO);
    let path = write_config(&admin_and_web(backend.addr));
    let mut lb = Ballast::spawn(&["run", "--supervise", "-c", path.to_str().unwrap()]);
    let strays = Strays::default();
    let (admin, front) = (lb.admin(), lb.addr("web"));
    assert!(lb.wait_for_log("supervisor: server started", IO_TIMEOUT));
    let (mut server, ready) = serving(admin);
    strays.add(server);
    assert!(ready);
    assert_ne!(server, lb.pid(), "the supervisor does not serve itself");

    for round in 0..2 {
        let (code, answer) = upgrade_api(admin);
        assert_eq!(code, 200, "{answer}");
        let newest = u32::try_from(answer["pid"].as_u64().unwrap()).unwrap();
        strays.add(newest);
        assert_ne!(newest, server);
        assert!(wait_until(IO_TIMEOUT, || exited(server)), "round {round}");
        assert_eq!(serving(admin), (newest, true));
        assert_eq!(ask(front, "after an upgrade"), "a");
        // The supervisor, the PID a container runtime or systemd watches, is still there.
        assert!(lb.is_running(), "round {round}: {}", lb.log_text());
        server = newest;
    }
    assert!(
        lb.wait_for_log(&format!("server={server}"), IO_TIMEOUT),
        "{}",
        lb.log_text()
    );

    // SIGTERM to the supervisor reaches the server that serves now: it drains and exits 0,
    // and so does the supervisor.
    lb.signal("TERM");
    assert_eq!(lb.wait_exit(IO_TIMEOUT).map(|s| s.code()), Some(Some(0)));
    assert!(exited(server), "{}", lb.log_text());
    assert!(lb.log_text().contains("supervisor: the last server exited"));
}

#[test]
fn as_pid_1_ballast_supervises_by_itself() {
    if !require_root("a PID namespace, where Ballast runs as PID 1")
        || !require_tool("unshare", "util-linux")
    {
        return;
    }
    let backend = named_backend("a", Duration::ZERO);
    let path = write_config(&admin_and_web(backend.addr));
    let mut cmd = Command::new("unshare");
    cmd.args(["--pid", "--fork", "--mount-proc", "--", binary()])
        .args(["run", "-c"])
        .arg(&path);
    let mut lb = Ballast::spawn_command(cmd);
    let (admin, front) = (lb.admin(), lb.addr("web"));
    assert!(
        lb.wait_for_log("supervisor: server started", IO_TIMEOUT),
        "{}",
        lb.log_text()
    );
    // Pids in the status API are the namespace's: the supervisor is 1, the server another.
    let (server, _) = serving(admin);
    assert_ne!(server, 1);
    let (code, answer) = upgrade_api(admin);
    assert_eq!(code, 200, "{answer}");
    let newest = u32::try_from(answer["pid"].as_u64().unwrap()).unwrap();
    assert!(
        wait_until(IO_TIMEOUT, || serving(admin) == (newest, true)),
        "{}",
        lb.log_text()
    );
    assert_eq!(ask(front, "after the upgrade"), "a");

    // `unshare` exits with its child's status: the supervisor's, which is the server's.
    let supervisor = children_of(lb.pid());
    assert_eq!(supervisor.len(), 1, "{supervisor:?}");
    let status = Command::new("kill")
        .args(["-TERM", &supervisor[0].to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(lb.wait_exit(IO_TIMEOUT).map(|s| s.code()), Some(Some(0)));
}

/// The pids of `pid`'s children, from /proc.
fn children_of(pid: u32) -> Vec<u32> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).unwrap();
    tasks
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("children")).ok())
        .flat_map(|list| {
            list.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect()
}

#[test]
fn the_new_process_shows_the_sessions_the_old_one_drains() {
    let backend = named_backend("a", Duration::ZERO);
    let path = write_config(&admin_and_web(backend.addr));
    let mut lb = Ballast::spawn(&["run", "-c", path.to_str().unwrap()]);
    let strays = Strays::default();
    let (admin, front) = (lb.admin(), lb.addr("web"));
    let old = lb.pid();
    let mut held = session_on(front, "a");

    let (code, answer) = upgrade_api(admin);
    assert_eq!(code, 200, "{answer}");
    let newest = u32::try_from(answer["pid"].as_u64().unwrap()).unwrap();
    strays.add(newest);
    // The admin address is the new process's: it counts the old one's session, and says whose.
    let status = || {
        let (code, body) = http(admin, "GET", "/api/v1/status", None);
        assert_eq!(code, 200, "{body}");
        serde_json::from_str::<serde_json::Value>(&body).unwrap()
    };
    let mut seen = serde_json::Value::Null;
    let counted = wait_until(IO_TIMEOUT, || {
        seen = status();
        let b = &seen["pools"][0]["backends"][0];
        seen["pid"] == newest
            && seen["previous_processes"] == serde_json::json!([old])
            && b["previous_process_connections_active"] == 1
            && b["connections_active"] == 1
            && seen["listeners"][0]["previous_process_connections_active"] == 1
    });
    assert!(counted, "{seen}\n{}", lb.log_text());
    let (_, metrics) = http(admin, "GET", "/metrics", None);
    let gauge = format!(
        "ballast_backend_connections_active{{pool=\"web\",backend=\"{}\"}} 1",
        backend.addr
    );
    assert!(metrics.lines().any(|l| l == gauge), "{metrics}");

    // The session still works in the old process; once it ends, the old process exits and
    // nothing is left counted.
    held.write_all(b"ping").unwrap();
    let mut echo = [0u8; 4];
    held.read_exact(&mut echo).unwrap();
    assert_eq!(&echo, b"ping");
    drop(held);
    assert_eq!(lb.wait_exit(IO_TIMEOUT).map(|s| s.code()), Some(Some(0)));
    let cleared = wait_until(IO_TIMEOUT, || {
        seen = status();
        seen["previous_processes"] == serde_json::json!([])
            && seen["pools"][0]["backends"][0]["connections_active"] == 0
    });
    assert!(cleared, "{seen}");
}
