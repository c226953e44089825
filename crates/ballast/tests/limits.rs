//! A full file-descriptor table must not spin the accept loop or hurt established sessions.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{Read, Write};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

/// CPU seconds (user + system) the process has used, from /proc/PID/stat.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after_comm = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    let hz = 100.0; // USER_HZ is 100 on every Linux this runs on.
    ticks / hz
}

/// Ballast with one worker and one listener to a named backend, under an open-file limit of
/// `limit` (soft and hard) set by prlimit; the backend lives as long as the pair.
fn under_fd_limit(limit: u32) -> (Ballast, NamedBackend) {
    let backend = named_backend("b", Duration::ZERO);
    let yaml = format!(
        "workers: 1\nlisteners:\n  - name: front\n    listen: 127.0.0.1:0\n    pool: p\npools:\n  - name: p\n    backends:\n      - {{ address: {} }}\n",
        backend.addr
    );
    let path = write_config(&yaml);
    let mut cmd = Command::new("prlimit");
    cmd.args([format!("--nofile={limit}:{limit}").as_str(), "--", binary()])
        .args(["--log", "info", "run", "-c"])
        .arg(&path);
    (Ballast::spawn_command(cmd), backend)
}

#[test]
fn a_full_fd_table_backs_off_and_keeps_serving() {
    if !require_tool("prlimit", "util-linux") {
        return;
    }
    // 32 descriptors: a dozen for the process itself, then two per session.
    let (lb, _backend) = under_fd_limit(32);
    let addr = lb.addr("front");

    // Far more clients than descriptors: the first ones are served, the rest wait in the
    // kernel's accept queue while the balancer backs off.
    let mut served = Vec::new();
    let mut waiting = Vec::new();
    for _ in 0..30 {
        let mut s = connect(addr);
        s.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        s.write_all(b"xx").unwrap();
        // The backend greets with its name ("b\n"), then echoes.
        let mut buf = [0u8; 4];
        match s.read_exact(&mut buf) {
            Ok(()) => served.push(s),
            Err(_) => waiting.push(s),
        }
    }
    assert!(!served.is_empty(), "nothing served");
    assert!(!waiting.is_empty(), "the fd limit was never reached");
    assert!(
        lb.wait_for_log("out of resources; pausing accepts", IO_TIMEOUT),
        "{}",
        lb.log_text()
    );

    // While the table is full the process must idle, not spin: a busy loop burns a whole
    // CPU second per second.
    let pid = lb.pid();
    let before = cpu_seconds(pid);
    let wall = Instant::now();
    std::thread::sleep(Duration::from_secs(1));
    let used = cpu_seconds(pid) - before;
    let elapsed = wall.elapsed().as_secs_f64();
    assert!(
        used < 0.5 * elapsed,
        "{used:.2} CPU s in {elapsed:.2} s: accept loop spins"
    );

    // Established sessions keep working.
    for s in served.iter_mut() {
        s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        s.write_all(b"again").unwrap();
        let mut buf = [0u8; 5];
        s.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"again");
    }
    // Freeing descriptors lets clients in again. Each waiting client has, by now, either been
    // closed for want of a backend descriptor (whether the last free one went to an accept
    // that then found none depends on how many the process holds at start) or is served once
    // the table has room: none may hang.
    let served_count = served.len();
    drop(served);
    for mut s in waiting.drain(..) {
        s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        let mut buf = [0u8; 3];
        match s.read(&mut buf) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            Err(e) => panic!(
                "a queued client neither served nor closed: {e}\n{}",
                lb.log_text()
            ),
        }
    }
    // The closes above reach the balancer asynchronously: only once it has closed every
    // served session (and so freed their descriptors) is there room for a new one. Without
    // this wait a fresh client can be accepted before those closes are read, and finds the
    // table still full.
    assert!(
        wait_until(IO_TIMEOUT, || lb.log_text().matches("end=closed").count()
            >= served_count),
        "the balancer never closed the {served_count} sessions whose clients left:\n{}",
        lb.log_text()
    );
    // A new client is served once the table has room.
    let mut fresh = connect(addr);
    fresh.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    fresh.write_all(b"xx").unwrap();
    let mut greeting = [0u8; 4];
    fresh.read_exact(&mut greeting).unwrap_or_else(|e| {
        panic!(
            "no client served after descriptors were freed: {e}\n{}",
            lb.log_text()
        )
    });
    assert_eq!(&greeting, b"b\nxx");
    // A client the balancer could not give a backend socket was closed at once and counted
    // as such, never held for its connect timeout and blamed on an internal error.
    let log = lb.log_text();
    assert!(!log.contains("end=internal_error"), "{log}");
}

#[test]
fn a_client_left_without_a_backend_descriptor_is_closed_at_once_and_counted() {
    if !require_tool("prlimit", "util-linux") {
        return;
    }
    // Each session takes two descriptors, so whether the last free one goes to an accept
    // that then finds none for its backend socket depends on the parity of what the
    // process holds: one of two neighbouring limits lands there.
    let mut closed_at_once = false;
    for limit in [32, 33] {
        let (lb, _backend) = under_fd_limit(limit);
        let addr = lb.addr("front");
        let mut clients = Vec::new();
        for _ in 0..20 {
            let mut s = connect(addr);
            s.set_read_timeout(Some(Duration::from_millis(300)))
                .unwrap();
            s.write_all(b"xx").unwrap();
            let mut buf = [0u8; 4];
            // Served (greeting and echo), closed at once, or waiting in the queue. Closed
            // with the request unread, the socket ends with a reset rather than a FIN.
            match s.read(&mut buf) {
                Ok(0) => closed_at_once = true,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => closed_at_once = true,
                _ => {}
            }
            clients.push(s);
        }
        let log = lb.log_text();
        assert!(!log.contains("end=internal_error"), "limit {limit}:\n{log}");
        if closed_at_once {
            assert!(
                lb.wait_for_log("end=no_descriptors", IO_TIMEOUT),
                "limit {limit}: a client was closed, but not counted as no_descriptors:\n{}",
                lb.log_text()
            );
            break;
        }
    }
    assert!(
        closed_at_once,
        "no client was closed for want of a backend descriptor at either limit"
    );
}
