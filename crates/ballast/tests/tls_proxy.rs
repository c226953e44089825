//! TLS passthrough by SNI, the PROXY protocol both ways, and access control, through the real
//! binary with real peers: `openssl s_server`/`s_client` and HAProxy.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use common::*;

/// How many connections a listener refused for `reason`, from the status API (bounded wait
/// until it reaches `want`, since counters are bumped on the worker thread).
fn wait_rejected(lb: &Ballast, listener: &str, reason: &str, want: u64) -> u64 {
    let mut got = 0;
    wait_until(Duration::from_secs(5), || {
        let status = lb.status();
        got = status["listeners"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["name"] == listener)
            .map(|l| l["rejected"][reason].as_u64().unwrap())
            .unwrap();
        got == want
    });
    got
}

fn wait_listening(addr: SocketAddr, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "{what} never listened on {addr}");
        thread::sleep(Duration::from_millis(20));
    }
}

fn scratch_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ballast-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A self-signed certificate for `cn`; returns (cert, key).
fn certificate(dir: &Path, cn: &str) -> (PathBuf, PathBuf) {
    let file = cn.replace(['*', '.'], "_");
    let cert = dir.join(format!("{file}.crt"));
    let key = dir.join(format!("{file}.key"));
    let status = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
        ])
        .args(["-nodes", "-days", "1", "-subj", &format!("/CN={cn}")])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "openssl req failed for {cn}");
    (cert, key)
}

fn s_server(dir: &Path, cn: &str) -> (Peer, SocketAddr) {
    let (cert, key) = certificate(dir, cn);
    let port = free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let peer = spawn_peer(
        Command::new("openssl")
            .args(["s_server", "-accept", &addr.to_string(), "-www"])
            .arg("-cert")
            .arg(&cert)
            .arg("-key")
            .arg(&key),
    );
    wait_listening(addr, "openssl s_server");
    (peer, addr)
}

/// Runs `openssl s_client` against `addr`; returns what it printed.
fn s_client(addr: SocketAddr, servername: Option<&str>) -> String {
    let mut cmd = Command::new("timeout");
    cmd.args(["10", "openssl", "s_client", "-connect", &addr.to_string()]);
    match servername {
        Some(name) => cmd.args(["-servername", name]),
        None => cmd.arg("-noservername"),
    };
    let out = cmd.stdin(Stdio::null()).output().unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn subject(output: &str) -> Option<String> {
    output
        .lines()
        .find_map(|l| {
            l.strip_prefix("subject=CN = ")
                .or_else(|| l.strip_prefix("subject=CN="))
        })
        .map(|s| s.trim().to_string())
}

#[test]
fn sni_routes_each_name_to_its_backend_and_the_handshake_completes() {
    if !require_tool("openssl", "openssl") {
        return;
    }
    let dir = scratch_dir("sni");
    let (_a, a) = s_server(&dir, "a.example.test");
    let (_b, b) = s_server(&dir, "x.b.example.test");
    let (_d, d) = s_server(&dir, "default.example.test");
    let yaml = format!(
        "listeners:
  - name: tls
    listen: 127.0.0.1:0
    tls_passthrough:
      routes:
        - {{ sni: a.example.test, pool: a }}
        - {{ sni: \"*.b.example.test\", pool: b }}
      default_pool: fallback
      peek_timeout: 2s
  - name: strict
    listen: 127.0.0.1:0
    tls_passthrough:
      routes:
        - {{ sni: a.example.test, pool: a }}
pools:
  - {{ name: a, backends: [{{ address: {a} }}] }}
  - {{ name: b, backends: [{{ address: {b} }}] }}
  - {{ name: fallback, backends: [{{ address: {d} }}] }}
"
    );
    let lb = Ballast::run(&yaml);
    let tls = lb.addr("tls");
    for (name, want) in [
        (Some("a.example.test"), "a.example.test"),
        (Some("A.Example.Test"), "a.example.test"),
        (Some("x.b.example.test"), "x.b.example.test"),
        (Some("deep.x.b.example.test"), "x.b.example.test"),
        (Some("other.test"), "default.example.test"),
        (None, "default.example.test"),
    ] {
        let out = s_client(tls, name);
        assert_eq!(subject(&out).as_deref(), Some(want), "SNI {name:?}:\n{out}");
        assert!(
            out.contains("New, TLS"),
            "handshake did not complete for {name:?}:\n{out}"
        );
    }
    // No match and no default: the connection is closed without reaching any backend.
    let out = s_client(lb.addr("strict"), Some("other.test"));
    assert_eq!(subject(&out), None, "{out}");
    let out = s_client(lb.addr("strict"), Some("a.example.test"));
    assert_eq!(subject(&out).as_deref(), Some("a.example.test"), "{out}");
}

#[test]
fn garbage_instead_of_a_client_hello_is_closed_and_others_are_unharmed() {
    let backend = named_backend("never", Duration::ZERO);
    let yaml = format!(
        "admin: {{ listen: 127.0.0.1:0 }}
listeners:
  - name: tls
    listen: 127.0.0.1:0
    tls_passthrough: {{ default_pool: p, peek_timeout: 500ms }}
pools:
  - {{ name: p, backends: [{{ address: {} }}] }}
",
        backend.addr
    );
    let lb = Ballast::run(&yaml);
    let addr = lb.addr("tls");
    // HTTP, an SSLv2-style hello, and a record that claims to be far too long.
    for garbage in [
        &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..],
        &[0x80, 0x2e, 0x01, 0x00, 0x02][..],
        &[0x16, 0x03, 0x01, 0xff, 0xff, 0x01][..],
    ] {
        let mut s = connect(addr);
        s.write_all(garbage).unwrap();
        let mut buf = [0u8; 16];
        let n = s.read(&mut buf).unwrap_or(0);
        assert_eq!(n, 0, "garbage {garbage:?} got an answer");
    }
    // A client that sends nothing is closed after peek_timeout.
    let mut silent = connect(addr);
    let started = Instant::now();
    let n = silent.read(&mut [0u8; 8]).unwrap_or(0);
    assert_eq!(n, 0);
    assert!(started.elapsed() >= Duration::from_millis(400));
    assert_eq!(
        backend
            .connections
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    assert_eq!(wait_rejected(&lb, "tls", "tls_malformed", 3), 3);
    assert_eq!(wait_rejected(&lb, "tls", "preface_timeout", 1), 1);
}

fn haproxy(dir: &Path, config: &str, port: u16) -> Peer {
    let path = dir.join(format!("haproxy-{port}.cfg"));
    std::fs::write(&path, config).unwrap();
    let peer = spawn_peer(Command::new("haproxy").arg("-db").arg("-f").arg(&path));
    wait_listening(format!("127.0.0.1:{port}").parse().unwrap(), "haproxy");
    peer
}

const HAPROXY_DEFAULTS: &str = "global\n  maxconn 1000\ndefaults\n  timeout connect 2s\n  timeout client 10s\n  timeout server 10s\n";

#[test]
fn haproxy_behind_ballast_sees_the_real_client_with_proxy_v1_and_v2() {
    if !require_tool("haproxy", "haproxy") {
        return;
    }
    let dir = scratch_dir("proxy-out");
    let port = free_port();
    // HAProxy answers every request with the client and destination its PROXY header named.
    let _hap = haproxy(
        &dir,
        &format!(
            "{HAPROXY_DEFAULTS}frontend fe\n  mode http\n  bind 127.0.0.1:{port} accept-proxy\n  http-request return status 200 content-type text/plain lf-string \"%[src]:%[src_port] %[dst]:%[dst_port]\"\n"
        ),
        port,
    );
    let yaml = format!(
        "listeners:
  - {{ name: v1, listen: 127.0.0.1:0, pool: v1 }}
  - {{ name: v2, listen: 127.0.0.1:0, pool: v2 }}
pools:
  - {{ name: v1, send_proxy_protocol: v1, backends: [{{ address: 127.0.0.1:{port} }}] }}
  - {{ name: v2, send_proxy_protocol: v2, backends: [{{ address: 127.0.0.1:{port} }}] }}
"
    );
    let lb = Ballast::run(&yaml);
    for listener in ["v1", "v2"] {
        let addr = lb.addr(listener);
        let mut s = connect(addr);
        let client = s.local_addr().unwrap();
        s.write_all(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
        let mut reply = String::new();
        s.read_to_string(&mut reply).unwrap();
        let body = reply
            .split("\r\n\r\n")
            .nth(1)
            .unwrap_or("")
            .trim()
            .to_string();
        assert_eq!(body, format!("{client} {addr}"), "{listener}: {reply}");
    }
}

/// A backend that answers with the first line it receives (the PROXY v1 header Ballast sends).
fn first_line_backend() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut line = String::new();
                if reader.read_line(&mut line).is_ok() {
                    let mut w = stream;
                    let _ = w.write_all(line.as_bytes());
                }
            });
        }
    });
    addr
}

#[test]
fn ballast_behind_haproxy_keeps_the_real_client_and_refuses_forgeries() {
    if !require_tool("haproxy", "haproxy") {
        return;
    }
    let backend = first_line_backend();
    let yaml = format!(
        "workers: 1
admin: {{ listen: 127.0.0.1:0 }}
listeners:
  - name: trusted
    listen: 127.0.0.1:0
    pool: p
    accept_proxy_protocol: {{ trusted: [\"127.0.0.0/8\"], timeout: 1s }}
  - name: untrusted
    listen: 127.0.0.1:0
    pool: p
    accept_proxy_protocol: {{ trusted: [\"10.9.0.0/16\"] }}
pools:
  - {{ name: p, send_proxy_protocol: v1, backends: [{{ address: {backend} }}] }}
"
    );
    let lb = Ballast::run(&yaml);
    let trusted = lb.addr("trusted");
    let dir = scratch_dir("proxy-in");
    let port = free_port();
    let _hap = haproxy(
        &dir,
        &format!(
            "{HAPROXY_DEFAULTS}frontend fe\n  mode tcp\n  bind 127.0.0.1:{port}\n  default_backend ballast\nbackend ballast\n  mode tcp\n  server b {trusted} send-proxy-v2\n"
        ),
        port,
    );
    let mut s = connect(format!("127.0.0.1:{port}").parse().unwrap());
    let client = s.local_addr().unwrap();
    s.write_all(b"hello\n").unwrap();
    let mut line = String::new();
    BufReader::new(&mut s).read_line(&mut line).unwrap();
    assert_eq!(
        line.trim_end(),
        format!("PROXY TCP4 127.0.0.1 127.0.0.1 {} {port}", client.port()),
        "the backend must see the client HAProxy saw"
    );

    // A valid header from a source outside `trusted` is refused.
    let mut forged = connect(lb.addr("untrusted"));
    let _ = forged.write_all(b"PROXY TCP4 1.2.3.4 5.6.7.8 1111 2222\r\nhello\n");
    let mut buf = [0u8; 64];
    assert_eq!(
        forged.read(&mut buf).unwrap_or(0),
        0,
        "untrusted header was served"
    );

    // Malformed headers from a trusted source are closed without reaching the backend.
    let mut v2_unknown_family = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    v2_unknown_family.extend([0x21, 0x71, 0x00, 0x00]);
    for bad in [
        &b"PROXY TCP4 1.2.3.4\r\n"[..],
        &b"PROXY TCP9 1.2.3.4 5.6.7.8 1 2\r\n"[..],
        &b"PROXZ TCP4 1.2.3.4 5.6.7.8 1 2\r\n"[..],
        &v2_unknown_family[..],
    ] {
        let mut s = connect(trusted);
        let _ = s.write_all(bad);
        let mut buf = [0u8; 64];
        assert_eq!(
            s.read(&mut buf).unwrap_or(0),
            0,
            "malformed {bad:?} was served"
        );
    }
    assert_eq!(wait_rejected(&lb, "untrusted", "proxy_untrusted", 1), 1);
    assert_eq!(wait_rejected(&lb, "trusted", "proxy_malformed", 4), 4);
}

fn connect_from(source: &str, to: SocketAddr) -> std::io::Result<TcpStream> {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    let local: SocketAddr = format!("{source}:0").parse().unwrap();
    sock.bind(&local.into())?;
    sock.connect_timeout(&to.into(), IO_TIMEOUT)?;
    let s: TcpStream = sock.into();
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    Ok(s)
}

/// True when the balancer relays for this connection: the backend greets with its name.
fn served(mut s: TcpStream) -> (bool, TcpStream) {
    let _ = s.write_all(b"x");
    let mut line = String::new();
    let ok = BufReader::new(s.try_clone().unwrap())
        .read_line(&mut line)
        .map(|n| n > 0)
        .unwrap_or(false);
    (ok, s)
}

#[test]
fn allow_deny_and_per_source_limits() {
    let backend = named_backend("b", Duration::ZERO);
    let yaml = format!(
        "workers: 1
admin: {{ listen: 127.0.0.1:0 }}
listeners:
  - name: guarded
    listen: 127.0.0.1:0
    pool: p
    allow: [\"127.0.0.0/8\"]
    deny: [\"127.0.0.3\"]
    max_connections_per_source: 2
  - name: rated
    listen: 127.0.0.1:0
    pool: p
    new_connections_per_second_per_source: 3
pools:
  - {{ name: p, backends: [{{ address: {} }}] }}
",
        backend.addr
    );
    let lb = Ballast::run(&yaml);
    let guarded = lb.addr("guarded");
    assert!(served(connect_from("127.0.0.2", guarded).unwrap()).0);
    assert!(
        !served(connect_from("127.0.0.3", guarded).unwrap()).0,
        "denied source served"
    );

    let (ok1, held1) = served(connect_from("127.0.0.4", guarded).unwrap());
    let (ok2, held2) = served(connect_from("127.0.0.4", guarded).unwrap());
    assert!(ok1 && ok2);
    assert!(
        !served(connect_from("127.0.0.4", guarded).unwrap()).0,
        "third session of one source"
    );
    assert!(
        served(connect_from("127.0.0.5", guarded).unwrap()).0,
        "another source is unaffected"
    );
    drop((held1, held2));

    // 10 connections at once from one source against 3/s: the burst passes, the rest are
    // refused; another source still gets in.
    let rated = lb.addr("rated");
    let started = Instant::now();
    let results: Vec<bool> = (0..10)
        .map(|_| served(connect_from("127.0.0.6", rated).unwrap()).0)
        .collect();
    // A burst of 3, plus what the bucket refilled while the loop ran (slow machines).
    let refilled = (started.elapsed().as_secs_f64() * 3.0).ceil() as usize;
    let ok = results.iter().filter(|r| **r).count();
    assert!(
        (1..=3 + refilled).contains(&ok) && ok < 10,
        "{ok} of 10 passed a 3/s limit: {results:?}"
    );
    assert!(served(connect_from("127.0.0.7", rated).unwrap()).0);
    assert_eq!(wait_rejected(&lb, "guarded", "acl", 1), 1);
    assert_eq!(
        wait_rejected(&lb, "guarded", "max_connections_per_source", 1),
        1
    );
    let refused = (10 - ok) as u64;
    assert_eq!(wait_rejected(&lb, "rated", "rate_limit", refused), refused);
}

/// With several workers a source's connections land on whichever worker the kernel's
/// SO_REUSEPORT hash picks; its cap still counts all of them, as HAProxy's `src_conn_cur` and
/// nginx's `limit_conn` do: exactly the cap is served, never fewer and never more.
#[test]
fn the_per_source_cap_is_exact_across_workers() {
    let backend = named_backend("b", Duration::ZERO);
    let yaml = format!(
        "workers: 4
admin: {{ listen: 127.0.0.1:0 }}
listeners:
  - name: capped
    listen: 127.0.0.1:0
    pool: p
    max_connections_per_source: 8
  - name: rated
    listen: 127.0.0.1:0
    pool: p
    new_connections_per_second_per_source: 5
pools:
  - {{ name: p, backends: [{{ address: {} }}] }}
",
        backend.addr
    );
    let lb = Ballast::run(&yaml);
    let capped = lb.addr("capped");
    let mut held = Vec::new();
    for i in 0..8 {
        let (ok, s) = served(connect_from("127.0.0.8", capped).unwrap());
        assert!(ok, "session {} of 8 from one source refused", i + 1);
        held.push(s);
    }
    for _ in 0..3 {
        assert!(
            !served(connect_from("127.0.0.8", capped).unwrap()).0,
            "a ninth session of one source served"
        );
    }
    assert!(
        served(connect_from("127.0.0.9", capped).unwrap()).0,
        "another source is unaffected"
    );
    // A session that ends gives its place back, whichever worker held it.
    held.pop();
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut refused = 3;
    let back = loop {
        let (ok, s) = served(connect_from("127.0.0.8", capped).unwrap());
        if ok || Instant::now() > deadline {
            break ok.then_some(s);
        }
        // The balancer had not yet seen the close: this attempt was refused and counted.
        refused += 1;
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(back.is_some(), "the freed place was not given back");
    assert_eq!(
        wait_rejected(&lb, "capped", "max_connections_per_source", refused),
        refused
    );

    // The rate too: a burst of 5 from one source, whatever workers its connections reach.
    let rated = lb.addr("rated");
    let started = Instant::now();
    let ok = (0..12)
        .filter(|_| served(connect_from("127.0.0.10", rated).unwrap()).0)
        .count();
    let refilled = (started.elapsed().as_secs_f64() * 5.0).ceil() as usize;
    assert!(
        (5..=5 + refilled).contains(&ok),
        "{ok} of 12 passed a burst of 5 (+{refilled} refilled)"
    );
}
