//! Defects found by real clients (issue 13), each pinned by the test that first showed it:
//! through the real binary, with real backends on 127.0.0.1.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

/// A backend that reads its connection to the end, then sends back everything it read and
/// closes: what a client gets is exactly what reached the backend before the client's FIN.
fn read_to_end_backend() -> (SocketAddr, Arc<AtomicU64>) {
    let connections = Arc::new(AtomicU64::new(0));
    let counter = connections.clone();
    let addr = serve_each(move |mut stream| {
        counter.fetch_add(1, Ordering::Relaxed);
        stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        let mut got = Vec::new();
        if stream.read_to_end(&mut got).is_ok() {
            let _ = stream.write_all(&got);
        }
        let _ = stream.shutdown(Shutdown::Write);
    });
    (addr, connections)
}

fn hex(text: &str) -> Vec<u8> {
    let digits: Vec<u8> = text.bytes().filter(u8::is_ascii_hexdigit).collect();
    digits
        .chunks(2)
        .map(|pair| u8::from_str_radix(std::str::from_utf8(pair).unwrap(), 16).unwrap())
        .collect()
}

/// A ClientHello that `openssl s_client -servername a.example.test` sent.
fn client_hello_for_a() -> Vec<u8> {
    hex(include_str!(
        "../../dataplane/src/proto/testdata/tls13_sni_alpn.hex"
    ))
}

/// A ClientHello without SNI.
fn client_hello_without_sni() -> Vec<u8> {
    hex(include_str!(
        "../../dataplane/src/proto/testdata/tls13_no_sni.hex"
    ))
}

/// Writes `bytes`, half-closes, and reads the reply to its end.
fn send_then_fin(addr: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut s = connect(addr);
    s.write_all(bytes).unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let mut reply = Vec::new();
    s.read_to_end(&mut reply).unwrap();
    reply
}

#[test]
fn a_preface_and_request_followed_by_fin_are_routed_and_delivered() {
    let (backend, connections) = read_to_end_backend();
    let yaml = format!(
        "admin: {{ listen: 127.0.0.1:0 }}
listeners:
  - name: proxied
    listen: 127.0.0.1:0
    pool: p
    accept_proxy_protocol: {{ trusted: [\"127.0.0.0/8\"], timeout: 2s }}
  - name: tls
    listen: 127.0.0.1:0
    tls_passthrough:
      routes: [{{ sni: a.example.test, pool: p }}]
      peek_timeout: 2s
  - name: proxied_tls
    listen: 127.0.0.1:0
    accept_proxy_protocol: {{ trusted: [\"127.0.0.0/8\"], timeout: 2s }}
    tls_passthrough: {{ default_pool: p, peek_timeout: 2s }}
pools:
  - {{ name: p, backends: [{{ address: {backend} }}] }}
"
    );
    let lb = Ballast::run(&yaml);
    let header = b"PROXY TCP4 10.1.2.3 10.9.9.9 4000 5432\r\n";

    // What an upstream HAProxy sends for a one-shot client: header, request, FIN.
    let mut bytes = header.to_vec();
    bytes.extend_from_slice(b"GET / HTTP/1.0\r\n\r\n");
    let reply = send_then_fin(lb.addr("proxied"), &bytes);
    assert_eq!(reply, b"GET / HTTP/1.0\r\n\r\n", "PROXY + request + FIN");

    // A ClientHello and a FIN at once.
    let hello = client_hello_for_a();
    assert_eq!(
        send_then_fin(lb.addr("tls"), &hello),
        hello,
        "ClientHello + FIN"
    );

    // Both prefaces, then the FIN.
    let mut bytes = header.to_vec();
    bytes.extend_from_slice(&hello);
    assert_eq!(
        send_then_fin(lb.addr("proxied_tls"), &bytes),
        hello,
        "PROXY + ClientHello + FIN"
    );
    assert_eq!(connections.load(Ordering::Relaxed), 3);

    // A FIN before the preface is complete is still a client error: nothing is routed.
    assert_eq!(send_then_fin(lb.addr("proxied"), b"PROXY TCP4 10.1"), b"");
    assert_eq!(send_then_fin(lb.addr("tls"), &hello[..20]), b"");
    assert_eq!(connections.load(Ordering::Relaxed), 3);
}

#[test]
fn an_active_check_that_sees_a_backend_back_puts_it_back_in_rotation() {
    let a = KillableBackend::start("a", "127.0.0.1:0".parse().unwrap());
    let mut b = KillableBackend::start("b", "127.0.0.1:0".parse().unwrap());
    let b_addr = b.addr;
    // A passive mark far longer than the test: only the active check can lift it in time.
    let yaml = format!(
        "admin: {{ listen: 127.0.0.1:0 }}
listeners:
  - {{ name: front, listen: 127.0.0.1:0, pool: p }}
pools:
  - name: p
    passive: {{ max_fails: 1, fail_timeout: 60s }}
    health_check: {{ kind: tcp, interval: 100ms, timeout: 100ms, rise: 2, fall: 2 }}
    backends: [{{ address: {} }}, {{ address: {b_addr} }}]
",
        a.addr
    );
    let lb = Ballast::run(&yaml);
    let front = lb.addr("front");
    b.kill();
    // Traffic finds b dead before its checks do: the refused connect marks it passively.
    let mut marked = false;
    for _ in 0..50 {
        assert_eq!(ask(front, "x"), "a", "a retry must land on a");
        let entry = lb.backend("p", b_addr);
        if entry["state"] == "down" {
            marked = true;
            break;
        }
    }
    assert!(marked, "b never marked down: {}", lb.backend("p", b_addr));
    let _b = KillableBackend::start("b", b_addr);
    // Active checks pass `rise` times (about 200 ms); give them ample time, then b serves.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut reached_b = false;
    while Instant::now() < deadline && !reached_b {
        reached_b = ask(front, "x") == "b";
    }
    assert!(
        reached_b,
        "no connection reached b in 5 s after it came back; b: {}; log:\n{}",
        lb.backend("p", b_addr),
        lb.log_text()
    );
    assert!(lb.wait_for_log("backend up (health check)", Duration::from_secs(1)));
}

/// Opens a TLS-routed session and reads the backend's greeting line.
fn tls_session(front: SocketAddr, hello: &[u8]) -> (String, BufReader<TcpStream>) {
    let mut s = connect(front);
    s.write_all(hello).unwrap();
    let mut reader = BufReader::new(s);
    let mut name = String::new();
    reader.read_line(&mut name).unwrap();
    (name.trim().to_string(), reader)
}

#[test]
fn on_backend_down_close_ends_the_sessions_of_the_right_sni_pool() {
    // Each pool has one backend, so both backends have index 0 in their own pool.
    let mut a = KillableBackend::start("a", "127.0.0.1:0".parse().unwrap());
    let b = KillableBackend::start("b", "127.0.0.1:0".parse().unwrap());
    let yaml = format!(
        "admin: {{ listen: 127.0.0.1:0 }}
listeners:
  - name: tls
    listen: 127.0.0.1:0
    tls_passthrough:
      routes: [{{ sni: a.example.test, pool: pa }}]
      default_pool: pb
pools:
  - name: pa
    on_backend_down: close
    health_check: {{ kind: tcp, interval: 100ms, timeout: 100ms, rise: 1, fall: 1 }}
    backends: [{{ address: {} }}]
  - name: pb
    on_backend_down: close
    health_check: {{ kind: tcp, interval: 100ms, timeout: 100ms, rise: 1, fall: 1 }}
    backends: [{{ address: {} }}]
",
        a.addr, b.addr
    );
    let lb = Ballast::run(&yaml);
    let front = lb.addr("tls");
    let (name, mut to_a) = tls_session(front, &client_hello_for_a());
    assert_eq!(name, "a");
    let (name, mut to_b) = tls_session(front, &client_hello_without_sni());
    assert_eq!(name, "b");
    // a stops listening; its open session lives on until the health check closes it.
    a.kill();
    assert!(
        lb.wait_for_log("on_backend_down: close", Duration::from_secs(5)),
        "a never went down; log:\n{}",
        lb.log_text()
    );
    to_a.get_mut()
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    // What remains of the echoed ClientHello, then the end of stream from Ballast's close;
    // a read that times out means the session stayed open.
    let mut rest = Vec::new();
    match to_a.read_to_end(&mut rest) {
        Ok(_) => {}
        Err(e) => assert!(
            !matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
            "the session to a stayed open"
        ),
    }
    // The session to b, index 0 of the other pool, is untouched.
    to_b.get_mut().write_all(b"ping\n").unwrap();
    let mut echoed = Vec::new();
    to_b.get_mut()
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let hello_len = client_hello_without_sni().len();
    let mut buf = vec![0u8; hello_len + 5];
    while echoed.len() < hello_len + 5 {
        let n = to_b.read(&mut buf).unwrap();
        assert!(n > 0, "the session to b was closed");
        echoed.extend_from_slice(&buf[..n]);
    }
    assert!(echoed.ends_with(b"ping\n"));
}
