//! The access log (issue 19): a line at connect time and periodic lines for open sessions,
//! connect time and retries in every line, and the lines written to a file (reopened on
//! SIGUSR1 after a rotation) or sent as RFC 5424 syslog messages to a Unix datagram socket or
//! over UDP, received here by test sockets.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;

/// A scratch directory of this test, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("ballast-access-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn lines_of(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Waits (bounded) for a line of `path` that contains every one of `parts`.
fn wait_line(path: &Path, parts: &[&str]) -> String {
    let mut found = None;
    wait_until(IO_TIMEOUT, || {
        found = lines_of(path)
            .into_iter()
            .find(|l| parts.iter().all(|p| l.contains(p)));
        found.is_some()
    });
    found.unwrap_or_else(|| panic!("no line with {parts:?} in {:?}", lines_of(path)))
}

/// A session through `front` to the echo backend, greeted.
fn session(front: SocketAddr) -> TcpStream {
    let mut s = connect(front);
    s.write_all(b"hello").unwrap();
    let mut line = String::new();
    BufReader::new(s.try_clone().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "b");
    s
}

/// Ends a session cleanly: half-close, then read the rest (a close with unread bytes would
/// be a reset, and the session would end as `client_error`).
fn finish(mut s: TcpStream) {
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    std::io::Read::read_to_end(&mut s, &mut rest).unwrap();
}

#[test]
fn a_file_gets_connect_periodic_and_close_lines_and_is_reopened_on_sigusr1() {
    let scratch = Scratch::new("file");
    let path = scratch.0.join("access.log");
    let backend = named_backend("b", Duration::ZERO);
    let dead = dead_addr();
    // Round robin over a dead and a live backend, one retry, no passive marks: of two
    // sessions in a row, one tries the dead backend first and connects on its retry.
    let lb = Ballast::run(&format!(
        "access_log:\n  at_connect: true\n  interval: 200ms\n  file: {}\nlisteners:\n  - {{ name: front, listen: 127.0.0.1:0, pool: p }}\npools:\n  - name: p\n    retries: 1\n    passive: {{ max_fails: 0 }}\n    backends: [{{ address: \"{dead}\" }}, {{ address: \"{}\" }}]\n",
        path.display(),
        backend.addr
    ));
    let front = lb.addr("front");
    let first = session(front);
    let second = session(front);
    let live = format!("backend={}", backend.addr);
    let connected = wait_line(&path, &["session connected", &live, "end=-"]);
    assert!(connected.contains("connect_ms="), "{connected}");
    // A line while the sessions stay open, with the bytes so far.
    let open = wait_line(&path, &["session open", &live, "sent=5"]);
    assert!(open.contains("received="), "{open}");
    finish(first);
    finish(second);
    wait_line(&path, &["session closed", "retries=1", &live, "end=closed"]);
    wait_line(&path, &["session closed", "retries=0", &live, "end=closed"]);
    // Each line starts with its time (RFC 3339).
    let first_line = lines_of(&path).remove(0);
    assert!(
        first_line.len() > 20
            && first_line.as_bytes()[4] == b'-'
            && first_line.as_bytes()[10] == b'T',
        "{first_line}"
    );
    // Not on stderr as well.
    assert!(
        !lb.log_text().contains("session closed"),
        "{}",
        lb.log_text()
    );

    // logrotate: move the file away, then SIGUSR1.
    let rotated = scratch.0.join("access.log.1");
    std::fs::rename(&path, &rotated).unwrap();
    lb.signal("USR1");
    assert!(
        lb.wait_for_log("access log reopened", IO_TIMEOUT),
        "{}",
        lb.log_text()
    );
    let before = lines_of(&rotated).len();
    finish(session(front));
    wait_line(&path, &["session closed", "end=closed"]);
    assert_eq!(
        lines_of(&rotated).len(),
        before,
        "a line went to the moved file"
    );
}

/// The syslog header of `message`, checked: `<PRI>1 TIMESTAMP HOST TAG PID access - `; returns
/// the message text after it.
fn syslog_text(message: &str, pri: u8, tag: &str, pid: u32) -> String {
    let fields: Vec<&str> = message.splitn(8, ' ').collect();
    assert_eq!(fields.len(), 8, "{message}");
    assert_eq!(fields[0], format!("<{pri}>1"), "{message}");
    assert!(
        fields[1].contains('T') && fields[1].ends_with('Z'),
        "{message}"
    );
    assert!(!fields[2].is_empty(), "{message}");
    assert_eq!(fields[3], tag, "{message}");
    assert_eq!(fields[4], pid.to_string(), "{message}");
    assert_eq!((fields[5], fields[6]), ("access", "-"), "{message}");
    fields[7].to_string()
}

fn syslog_config(address: &str, backend: SocketAddr) -> String {
    format!(
        "access_log:\n  syslog: {{ address: \"{address}\", facility: local3, tag: bl-test }}\nlisteners:\n  - {{ name: front, listen: 127.0.0.1:0, pool: p }}\npools:\n  - {{ name: p, backends: [{{ address: \"{backend}\" }}] }}\n"
    )
}

/// One session through `lb`, then the syslog message `recv` receives for it: its header
/// checked, its text returned.
fn one_session_message(lb: &Ballast, recv: impl FnOnce(&mut [u8]) -> usize) -> String {
    finish(session(lb.addr("front")));
    let mut buf = [0u8; 4096];
    let n = recv(&mut buf);
    let message = String::from_utf8_lossy(&buf[..n]).to_string();
    let text = syslog_text(&message, PRI, "bl-test", lb.pid());
    assert!(text.starts_with("session closed listener=front "), "{text}");
    text
}

/// local3 (19) at informational (6).
const PRI: u8 = 19 * 8 + 6;

#[test]
fn syslog_messages_reach_a_unix_datagram_socket() {
    let scratch = Scratch::new("unix");
    let socket_path = scratch.0.join("log.sock");
    let receiver = UnixDatagram::bind(&socket_path).unwrap();
    receiver.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let backend = named_backend("b", Duration::ZERO);
    let lb = Ballast::run(&syslog_config(
        &socket_path.display().to_string(),
        backend.addr,
    ));
    let text = one_session_message(&lb, |buf| receiver.recv(buf).unwrap());
    assert!(
        text.contains(&format!("backend={}", backend.addr)),
        "{text}"
    );
    assert!(text.contains("end=closed"), "{text}");
}

#[test]
fn syslog_messages_reach_a_udp_collector_and_a_file_at_once() {
    let scratch = Scratch::new("udp");
    let path = scratch.0.join("access.log");
    let receiver = UdpSocket::bind("127.0.0.1:0").unwrap();
    receiver.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let backend = named_backend("b", Duration::ZERO);
    let config = syslog_config(&receiver.local_addr().unwrap().to_string(), backend.addr).replacen(
        "access_log:\n",
        &format!("access_log:\n  file: {}\n", path.display()),
        1,
    );
    let lb = Ballast::run(&config);
    let text = one_session_message(&lb, |buf| receiver.recv(buf).unwrap());
    assert!(
        text.contains("retries=0") && text.contains("connect_ms="),
        "{text}"
    );
    let line = wait_line(&path, &["session closed listener=front "]);
    assert!(line.ends_with(&text), "the file has the same line: {line}");
}
