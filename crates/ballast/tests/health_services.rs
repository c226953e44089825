//! Service-aware health checks through the real binary, against real servers that each test
//! starts in its own temporary directory: a PostgreSQL primary and its streaming replica
//! (Debian's postgresql, run as the `postgres` user since the tests run as root), failing
//! over when the replica is promoted; a MariaDB server whose `read_only` is flipped, whose
//! `Aborted_connects` the probes leave alone; an agent (HAProxy's agent-check protocol)
//! written here that says `drain`, `up`, then `50%`; a backend that requires a PROXY
//! header, which the checks of a `send_proxy_protocol` pool send (HAProxy's
//! `check-send-proxy`); `openssl s_server -www` behind an http check with `tls: true`,
//! which sends the SNI the server insists on.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use common::*;

/// Where Debian's postgresql puts its programs (they are not on PATH).
const PG_BIN: &str = "/usr/lib/postgresql/15/bin";
const PG_PASSWORD: &str = "probe-secret-4711";

fn is(want: &'static str) -> impl Fn(&serde_json::Value) -> bool {
    move |entry| entry["state"] == want
}

/// A scratch directory owned by `owner` (so that a server run as that user may write in
/// it), removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str, owner: Option<&str>) -> Scratch {
        let dir = std::env::temp_dir().join(format!("ballast-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        if let Some(owner) = owner {
            run_ok(Command::new("chown").arg(owner).arg(&dir));
        }
        Scratch(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A program of Debian's postgresql, run as the `postgres` user: initdb and the server
/// refuse to run as root.
fn pg(program: &str) -> Command {
    let mut cmd = Command::new("runuser");
    cmd.args(["-u", "postgres", "--"])
        .arg(Path::new(PG_BIN).join(program));
    cmd
}

/// One PostgreSQL server on 127.0.0.1 at a free port, its unix socket in the scratch
/// directory; stopped (immediately: the test is done with it) on drop.
struct Postgres {
    data: PathBuf,
    port: u16,
}

impl Postgres {
    /// `pg_ctl start -w` returns once the server accepts connections (a standby: once it
    /// accepts read-only ones), so no polling is needed after it.
    fn start(scratch: &Scratch, name: &str, data: PathBuf) -> Postgres {
        let port = free_port();
        let options = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1",
            scratch.0.display()
        );
        run_ok(
            pg("pg_ctl")
                .arg("-D")
                .arg(&data)
                .args(["-o", &options, "-l"])
                .arg(scratch.path(&format!("{name}.log")))
                .args(["-w", "-t", "60", "start"]),
        );
        Postgres { data, port }
    }

    fn addr(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    fn stop(&self) {
        run_ok(
            pg("pg_ctl")
                .arg("-D")
                .arg(&self.data)
                .args(["-m", "immediate", "-w", "stop"]),
        );
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = pg("pg_ctl")
            .arg("-D")
            .arg(&self.data)
            .args(["-m", "immediate", "-w", "stop"])
            .output();
    }
}

/// The port of the server that answered a login through `front`, asked with psql.
fn pg_port_behind(front: std::net::SocketAddr) -> Option<u16> {
    let out = Command::new(Path::new(PG_BIN).join("psql"))
        .args(["-h", "127.0.0.1", "-p", &front.port().to_string()])
        .args(["-U", "postgres", "-d", "postgres", "-tAc", "SHOW port"])
        .env("PGPASSWORD", PG_PASSWORD)
        .env("PGCONNECT_TIMEOUT", "5")
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

#[test]
fn a_postgres_role_check_follows_a_promotion() {
    if !require_tools(&[("runuser", "util-linux"), ("chown", "coreutils")]) {
        return;
    }
    if !Path::new(PG_BIN).join("initdb").is_file() {
        skip("PostgreSQL 15 is not installed (apt-get install postgresql)");
        return;
    }
    let scratch = Scratch::new("pg", Some("postgres"));
    let password_file = scratch.path("password");
    std::fs::write(&password_file, format!("{PG_PASSWORD}\n")).unwrap();
    run_ok(Command::new("chown").arg("postgres").arg(&password_file));
    // Password logins over TCP (what the probe and psql do), trust on the unix socket for
    // pg_basebackup and pg_ctl.
    run_ok(
        pg("initdb")
            .arg("-D")
            .arg(scratch.path("primary"))
            .args([
                "-U",
                "postgres",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
            ])
            .arg(format!("--pwfile={}", password_file.display())),
    );
    let primary = Postgres::start(&scratch, "primary", scratch.path("primary"));
    run_ok(
        pg("pg_basebackup")
            .arg("-D")
            .arg(scratch.path("replica"))
            .args(["-R", "-h"])
            .arg(&scratch.0)
            .args(["-p", &primary.port.to_string(), "-U", "postgres"]),
    );
    let replica = Postgres::start(&scratch, "replica", scratch.path("replica"));

    let pool = |name: &str, role: &str| {
        format!(
            "  - name: {name}\n    passive: {{ max_fails: 0 }}\n    health_check: {{ kind: postgres, user: postgres, password_file: {password_file:?}, database: postgres, role: {role}, interval: 1s, timeout: 900ms, rise: 1, fall: 1 }}\n    backends: [{{ address: \"{}\" }}, {{ address: \"{}\" }}]\n",
            primary.addr(),
            replica.addr()
        )
    };
    let yaml = format!(
        "admin: {{ listen: 127.0.0.1:0 }}\nlisteners:\n  - {{ name: rw, listen: 127.0.0.1:0, pool: rw }}\n  - {{ name: ro, listen: 127.0.0.1:0, pool: ro }}\npools:\n{}{}",
        pool("rw", "primary"),
        pool("ro", "replica")
    );
    let lb = Ballast::run(&yaml);
    let wait = Duration::from_secs(15);
    for (pool, up, down) in [("rw", &primary, &replica), ("ro", &replica, &primary)] {
        assert!(
            lb.wait_backend(pool, up.addr(), wait, |e| e["state"] == "up"
                && e["health_checks"]["success"].as_u64() >= Some(2))
                .is_some(),
            "{pool}: {} never up:\n{}",
            up.addr(),
            lb.log_text()
        );
        assert!(
            lb.wait_backend(pool, down.addr(), wait, is("down"))
                .is_some(),
            "{pool}: {} never down:\n{}",
            down.addr(),
            lb.log_text()
        );
    }
    for reason in [
        "role replica, expected primary",
        "role primary, expected replica",
    ] {
        assert!(lb.wait_for_log(reason, IO_TIMEOUT), "{}", lb.log_text());
    }
    for _ in 0..5 {
        assert_eq!(pg_port_behind(lb.addr("rw")), Some(primary.port));
        assert_eq!(pg_port_behind(lb.addr("ro")), Some(replica.port));
    }

    // Failover: the replica is promoted and the old primary stopped. The read-write pool
    // follows the new primary; the read-only pool has no replica left.
    run_ok(
        pg("pg_ctl")
            .arg("-D")
            .arg(&replica.data)
            .args(["-w", "-t", "60", "promote"]),
    );
    primary.stop();
    assert!(
        lb.wait_backend("rw", replica.addr(), wait, is("up"))
            .is_some(),
        "the promoted replica never up for rw:\n{}",
        lb.log_text()
    );
    assert!(lb
        .wait_backend("rw", primary.addr(), wait, is("down"))
        .is_some());
    assert!(
        lb.wait_backend("ro", replica.addr(), wait, is("down"))
            .is_some(),
        "the promoted replica still up for ro:\n{}",
        lb.log_text()
    );
    for _ in 0..5 {
        assert_eq!(pg_port_behind(lb.addr("rw")), Some(replica.port));
    }
    assert!(
        !lb.log_text().contains(PG_PASSWORD),
        "the password is in the log"
    );
}

/// A MariaDB server on 127.0.0.1 at a free port, its datadir and socket in the scratch
/// directory (owned by `mysql`, the user mariadbd switches to); killed on drop.
struct Mariadb {
    child: std::process::Child,
    socket: PathBuf,
    port: u16,
}

impl Mariadb {
    fn start(scratch: &Scratch) -> Mariadb {
        let data = scratch.path("data");
        run_ok(
            Command::new("mariadb-install-db")
                .args(["--user=mysql", "--skip-test-db"])
                .arg(format!("--datadir={}", data.display())),
        );
        let port = free_port();
        let socket = scratch.path("mysql.sock");
        let child = Command::new("mariadbd")
            .args(["--no-defaults", "--user=mysql", "--bind-address=127.0.0.1"])
            .arg(format!("--datadir={}", data.display()))
            .arg(format!("--port={port}"))
            .arg(format!("--socket={}", socket.display()))
            .arg(format!(
                "--pid-file={}",
                scratch.path("mysql.pid").display()
            ))
            .args(["--skip-log-bin", "--innodb-buffer-pool-size=16M"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let server = Mariadb {
            child,
            socket,
            port,
        };
        assert!(
            wait_until(Duration::from_secs(60), || server.sql("SELECT 1").is_some()),
            "mariadbd on port {port} never answered"
        );
        server
    }

    /// Runs `sql` as root over the unix socket; the output (tab-separated, no headers).
    fn sql(&self, sql: &str) -> Option<String> {
        let out = Command::new("mariadb")
            .args(["--no-defaults", "-u", "root", "-N", "-B"])
            .arg(format!("--socket={}", self.socket.display()))
            .args(["-e", sql])
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    /// A global status counter, such as `Aborted_connects`.
    fn status(&self, name: &str) -> u64 {
        let row = self
            .sql(&format!("SHOW GLOBAL STATUS LIKE '{name}'"))
            .unwrap();
        row.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    fn addr(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::from(([127, 0, 0, 1], self.port))
    }
}

impl Drop for Mariadb {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_mysql_role_check_follows_read_only_and_leaves_no_aborted_connects() {
    if !require_tools(&[
        ("mariadbd", "mariadb-server"),
        ("mariadb-install-db", "mariadb-server"),
        ("mariadb", "mariadb-client"),
    ]) {
        return;
    }
    const PASSWORD: &str = "mysql-probe-secret-93";
    let scratch = Scratch::new("mariadb", Some("mysql"));
    let server = Mariadb::start(&scratch);
    server
        .sql(&format!(
            "CREATE USER probe@'127.0.0.1' IDENTIFIED BY '{PASSWORD}'"
        ))
        .unwrap();
    let password_file = scratch.path("password");
    std::fs::write(&password_file, format!("{PASSWORD}\n")).unwrap();
    let aborted_before = (
        server.status("Aborted_connects"),
        server.status("Aborted_clients"),
    );

    let pool = |name: &str, role: &str| {
        format!(
            "  - name: {name}\n    passive: {{ max_fails: 0 }}\n    health_check: {{ kind: mysql, user: probe, password_file: {password_file:?}, role: {role}, interval: 300ms, timeout: 250ms, rise: 1, fall: 1 }}\n    backends: [{{ address: \"{}\" }}]\n",
            server.addr()
        )
    };
    let yaml = format!(
        "admin: {{ listen: 127.0.0.1:0 }}\nlisteners:\n  - {{ name: rw, listen: 127.0.0.1:0, pool: rw }}\npools:\n{}{}",
        pool("rw", "writable"),
        pool("ro", "read_only")
    );
    let lb = Ballast::run(&yaml);
    let wait = Duration::from_secs(15);
    let addr = server.addr();
    assert!(
        lb.wait_backend("rw", addr, wait, is("up")).is_some(),
        "{}",
        lb.log_text()
    );
    assert!(
        lb.wait_backend("ro", addr, wait, is("down")).is_some(),
        "{}",
        lb.log_text()
    );
    assert!(lb.wait_for_log("role writable, expected read_only", IO_TIMEOUT));

    server.sql("SET GLOBAL read_only = 1").unwrap();
    assert!(
        lb.wait_backend("rw", addr, wait, is("down")).is_some(),
        "{}",
        lb.log_text()
    );
    assert!(lb.wait_backend("ro", addr, wait, is("up")).is_some());
    assert!(lb.wait_for_log("role read_only, expected writable", IO_TIMEOUT));
    server.sql("SET GLOBAL read_only = 0").unwrap();
    assert!(lb.wait_backend("rw", addr, wait, is("up")).is_some());

    // Many logins later, none of them counted as aborted, on connect or on close.
    let probes = |e: &serde_json::Value| {
        e["health_checks"]["success"].as_u64().unwrap_or(0)
            + e["health_checks"]["failure"].as_u64().unwrap_or(0)
    };
    assert!(lb
        .wait_backend("rw", addr, Duration::from_secs(30), |e| probes(e) >= 25)
        .is_some());
    let aborted_after = (
        server.status("Aborted_connects"),
        server.status("Aborted_clients"),
    );
    assert_eq!(
        aborted_after, aborted_before,
        "(Aborted_connects, Aborted_clients) changed"
    );
    assert!(
        !lb.log_text().contains(PASSWORD),
        "the password is in the log"
    );
}

/// An agent on 127.0.0.1: every connection gets the current reply line, then a close.
struct Agent {
    port: u16,
    reply: Arc<Mutex<&'static str>>,
    asked: Arc<Mutex<Vec<u8>>>,
}

impl Agent {
    fn start(first: &'static str) -> Agent {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let reply = Arc::new(Mutex::new(first));
        let asked = Arc::new(Mutex::new(Vec::new()));
        let (r, a) = (reply.clone(), asked.clone());
        thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                // What `send` wrote comes first; the agent answers without waiting for it,
                // as HAProxy's agents do.
                let line = *r.lock().unwrap();
                let _ = stream.write_all(line.as_bytes());
                let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
                let mut buf = [0u8; 64];
                if let Ok(n) = stream.read(&mut buf) {
                    a.lock().unwrap().extend_from_slice(&buf[..n]);
                }
            }
        });
        Agent { port, reply, asked }
    }

    fn say(&self, line: &'static str) {
        *self.reply.lock().unwrap() = line;
    }
}

/// How many of `n` sessions through `front` land on each of "a" and "b".
fn shares(front: SocketAddr, n: usize) -> (usize, usize) {
    let names: Vec<String> = (0..n).map(|i| ask(front, &format!("s{i}"))).collect();
    let a = names.iter().filter(|name| *name == "a").count();
    (a, names.len() - a)
}

#[test]
fn an_agent_drains_brings_back_and_halves_its_backends_weight() {
    let agent = Agent::start("up\n");
    // `a` has the agent (on 127.0.0.1); `b` on 127.0.0.2 has none at that port, so its
    // agent checks fail, which changes nothing for it.
    let a = KillableBackend::start("a", "127.0.0.1:0".parse().unwrap());
    let b = KillableBackend::start("b", "127.0.0.2:0".parse().unwrap());
    let yaml = format!(
        "admin: {{ listen: 127.0.0.1:0 }}\nlisteners:\n  - {{ name: front, listen: 127.0.0.1:0, pool: p }}\npools:\n  - name: p\n    passive: {{ max_fails: 0 }}\n    health_check:\n      interval: 300ms\n      timeout: 200ms\n      rise: 1\n      fall: 1\n      agent: {{ port: {}, interval: 100ms, timeout: 80ms, send: \"p/a\\n\" }}\n    backends: [{{ address: \"{}\", weight: 4 }}, {{ address: \"{}\", weight: 4 }}]\n",
        agent.port, a.addr, b.addr
    );
    let lb = Ballast::run(&yaml);
    let front = lb.addr("front");
    let wait = Duration::from_secs(10);
    assert!(lb.wait_backend("p", a.addr, wait, is("up")).is_some());
    assert!(wait_until(wait, || agent
        .asked
        .lock()
        .unwrap()
        .starts_with(b"p/a\n")));
    let (to_a, to_b) = shares(front, 40);
    assert!(
        (14..=26).contains(&to_a),
        "equal weights: {to_a} to a, {to_b} to b"
    );

    // Drain: established sessions go on, no new one reaches `a`.
    let mut kept = session_on(front, "a");
    agent.say("drain\n");
    assert!(
        lb.wait_backend("p", a.addr, wait, is("draining")).is_some(),
        "{}",
        lb.log_text()
    );
    assert!(lb.wait_for_log("backend admin state set by its agent", IO_TIMEOUT));
    assert_eq!(
        shares(front, 20),
        (0, 20),
        "a new session reached a draining backend"
    );
    kept.write_all(b"still").unwrap();
    let mut echo = [0u8; 5];
    kept.read_exact(&mut echo).unwrap();
    assert_eq!(&echo, b"still");

    // Up: back in rotation.
    agent.say("up\n");
    assert!(lb.wait_backend("p", a.addr, wait, is("up")).is_some());
    assert!(wait_until(wait, || shares(front, 10).0 > 0));

    // 50%: weight 4 becomes 2, so `a` gets a third of the sessions instead of a half.
    agent.say("50%\n");
    assert!(lb
        .wait_backend("p", a.addr, wait, |e| e["effective_weight"].as_f64()
            == Some(2.0))
        .is_some());
    assert!(
        wait_until(wait, || {
            let (to_a, to_b) = shares(front, 60);
            (14..=26).contains(&to_a) && to_a + to_b == 60
        }),
        "a's share never fell to about a third"
    );
    assert_eq!(lb.backend("p", a.addr)["weight"], 4);
    assert_eq!(
        lb.backend("p", b.addr)["effective_weight"].as_f64(),
        Some(4.0)
    );
    assert_eq!(lb.backend("p", b.addr)["state"], "up");

    // `down` takes it out whatever its check says; `up` brings it back.
    agent.say("down#maintenance window\n");
    assert!(lb.wait_backend("p", a.addr, wait, is("down")).is_some());
    assert!(lb.wait_for_log("maintenance window", IO_TIMEOUT));
    agent.say("up 100%\n");
    assert!(lb
        .wait_backend("p", a.addr, wait, |e| e["state"] == "up"
            && e["effective_weight"].as_f64() == Some(4.0))
        .is_some());
}

/// The PROXY header a probe sends: v2 LOCAL, no addresses (16 bytes).
const V2_LOCAL: [u8; 16] = [
    0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a, 0x20, 0x00, 0x00, 0x00,
];
const V1_UNKNOWN: &[u8] = b"PROXY UNKNOWN\r\n";

/// An HTTP server that requires a PROXY header first, as a backend behind
/// `send_proxy_protocol` does: without one it closes at once, without a word. Counts the
/// headers it saw, v1 and v2.
fn proxy_requiring_server() -> (SocketAddr, Arc<Mutex<(u32, u32)>>) {
    let seen = Arc::new(Mutex::new((0, 0)));
    let counts = seen.clone();
    let addr = serve_each(move |mut stream| {
        let _ = stream.set_read_timeout(Some(IO_TIMEOUT));
        let mut head = Vec::new();
        let mut buf = [0u8; 512];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 8192 {
            match stream.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
        if head.starts_with(&V2_LOCAL) {
            counts.lock().unwrap().1 += 1;
        } else if head.starts_with(V1_UNKNOWN) {
            counts.lock().unwrap().0 += 1;
        } else {
            return;
        }
        let _ = stream
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok");
        let _ = stream.shutdown(std::net::Shutdown::Write);
        let _ = stream.read_to_end(&mut Vec::new());
    });
    (addr, seen)
}

#[test]
fn checks_of_a_proxy_pool_send_the_header_unless_told_not_to() {
    let (backend, seen) = proxy_requiring_server();
    let pool = |name: &str, version: &str, extra: &str| {
        format!(
            "  - name: {name}\n    send_proxy_protocol: {version}\n    passive: {{ max_fails: 0 }}\n    health_check: {{ kind: http, {extra}interval: 200ms, timeout: 150ms, rise: 1, fall: 1 }}\n    backends: [{{ address: \"{backend}\" }}]\n"
        )
    };
    let yaml = format!(
        "admin: {{ listen: 127.0.0.1:0 }}\nlisteners:\n  - {{ name: front, listen: 127.0.0.1:0, pool: v2 }}\npools:\n{}{}{}",
        pool("v2", "v2", ""),
        pool("v1", "v1", "send_proxy: true, "),
        pool("bare", "v2", "send_proxy: false, "),
    );
    let lb = Ballast::run(&yaml);
    let wait = Duration::from_secs(10);
    let passing = |e: &serde_json::Value| {
        e["state"] == "up" && e["health_checks"]["success"].as_u64() >= Some(3)
    };
    for pool in ["v2", "v1"] {
        assert!(
            lb.wait_backend(pool, backend, wait, passing).is_some(),
            "{pool}: {}",
            lb.log_text()
        );
        assert_eq!(lb.backend(pool, backend)["health_checks"]["failure"], 0);
    }
    assert!(
        lb.wait_backend("bare", backend, wait, is("down")).is_some(),
        "{}",
        lb.log_text()
    );
    let (v1, v2) = *seen.lock().unwrap();
    assert!(v1 >= 3 && v2 >= 3, "headers seen: v1 {v1}, v2 {v2}");
}

#[test]
fn a_tls_http_check_completes_the_handshake_with_its_sni() {
    if !require_tool("openssl", "openssl") {
        return;
    }
    let scratch = Scratch::new("tls-check", None);
    let (key, cert) = (scratch.path("key.pem"), scratch.path("cert.pem"));
    run_ok(
        Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            ])
            .args(["-subj", "/CN=tls.test", "-keyout"])
            .arg(&key)
            .arg("-out")
            .arg(&cert),
    );
    // A self-signed certificate (the check does not verify it); a ClientHello with another
    // name, or none, gets a fatal alert.
    let port = free_port();
    let _server = spawn_peer(
        Command::new("openssl")
            .args(["s_server", "-www", "-accept", &port.to_string()])
            .arg("-cert")
            .arg(&cert)
            .arg("-key")
            .arg(&key)
            .args(["-servername", "tls.test", "-servername_fatal", "-cert2"])
            .arg(&cert)
            .arg("-key2")
            .arg(&key),
    );
    let server = SocketAddr::from(([127, 0, 0, 1], port));
    assert!(
        wait_until(IO_TIMEOUT, || std::net::TcpStream::connect(server).is_ok()),
        "openssl s_server never listened on {server}"
    );
    let pool = |name: &str, tls: &str| {
        format!(
            "  - name: {name}\n    passive: {{ max_fails: 0 }}\n    health_check: {{ kind: http, {tls}expect_status: 200, interval: 300ms, timeout: 250ms, rise: 1, fall: 1 }}\n    backends: [{{ address: \"{server}\" }}]\n"
        )
    };
    let yaml = format!(
        "admin: {{ listen: 127.0.0.1:0 }}\nlisteners:\n  - {{ name: front, listen: 127.0.0.1:0, pool: tls }}\npools:\n{}{}{}",
        pool("tls", "tls: true, sni: tls.test, expect_body: s_server, "),
        pool("wrong_sni", "tls: true, sni: other.test, "),
        pool("plain", ""),
    );
    let lb = Ballast::run(&yaml);
    let wait = Duration::from_secs(10);
    assert!(
        lb.wait_backend("tls", server, wait, |e| e["state"] == "up"
            && e["health_checks"]["success"].as_u64() >= Some(2))
            .is_some(),
        "{}",
        lb.log_text()
    );
    for pool in ["wrong_sni", "plain"] {
        assert!(
            lb.wait_backend(pool, server, wait, is("down")).is_some(),
            "{pool}: {}",
            lb.log_text()
        );
    }
    assert!(
        lb.wait_for_log("TLS handshake:", IO_TIMEOUT),
        "{}",
        lb.log_text()
    );
    assert_eq!(lb.backend("tls", server)["health_checks"]["failure"], 0);
}
