//! The admin port as an attacker reaches it, through the real binary: a slowloris client (in
//! Python, as the issue's was) that must neither starve the data plane nor hold admin slots
//! past the header timeout, and the browser-style cross-site and DNS-rebinding requests,
//! sent with curl exactly as a browser would send them.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use common::*;

const TOKEN: &str = "hardening-admin-token";

/// One backend `b1` in pool `p` behind listener `front`, with the given `admin:` block.
fn balancer(admin: &str) -> (NamedBackend, Ballast) {
    let b1 = named_backend("b1", Duration::ZERO);
    let lb = Ballast::run(&format!(
        "admin: {admin}\nlisteners:\n  - {{ name: front, listen: 127.0.0.1:0, pool: p }}\npools:\n  - name: p\n    backends:\n      - {{ address: \"{}\" }}\n",
        b1.addr
    ));
    (b1, lb)
}

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

// ---------------------------------------------------------------------------------------------
// Slowloris

/// Opens `count` connections to host:port, sends each a partial request head, then dribbles
/// one more header byte to every open one each `dribble` seconds, until the server closed them
/// all or `deadline` seconds passed. Prints `opened` once every connection is open (or was
/// refused), then one JSON line: for each connection, the seconds from its connect to the
/// server's close (`null`: still open at the deadline).
const SLOWLORIS: &str = r#"
import json, selectors, socket, sys, time
host, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
dribble, deadline = float(sys.argv[4]), time.monotonic() + float(sys.argv[5])
sel = selectors.DefaultSelector()
opened_at, closed_after = {}, {}
for i in range(count):
    try:
        s = socket.create_connection((host, port), timeout=2)
        opened_at[i] = time.monotonic()
        s.sendall(b"GET /api/v1/status HTTP/1.1\r\nHost: " + host.encode() + b"\r\nX-Slow: ")
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ, i)
    except OSError:
        closed_after[i] = 0.0
print("opened", flush=True)
next_dribble = time.monotonic() + dribble
while sel.get_map() and time.monotonic() < deadline:
    for key, _ in sel.select(timeout=max(0.0, min(next_dribble, deadline) - time.monotonic())):
        try:
            data = key.fileobj.recv(4096)
        except BlockingIOError:
            continue
        except OSError:
            data = b""
        if not data:
            i = key.data
            closed_after[i] = time.monotonic() - opened_at[i]
            sel.unregister(key.fileobj)
            key.fileobj.close()
    if time.monotonic() >= next_dribble:
        next_dribble += dribble
        for key in list(sel.get_map().values()):
            try:
                key.fileobj.send(b"x")
            except OSError:
                pass
print(json.dumps([closed_after.get(i) for i in range(count)]), flush=True)
"#;

/// `GET /healthz` on a fresh connection, every failure (refused, closed, timed out) as `None`.
fn try_healthz(admin: SocketAddr) -> Option<u16> {
    let mut s = TcpStream::connect_timeout(&admin, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
    s.write_all(
        format!("GET /healthz HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .ok()?;
    let mut reply = String::new();
    s.read_to_string(&mut reply).ok()?;
    reply.split_whitespace().nth(1)?.parse().ok()
}

/// True when the server closes a fresh admin connection at once, before any request is sent.
fn closed_at_once(admin: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&admin, Duration::from_secs(1)) else {
        return false;
    };
    s.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut buf = [0u8; 64];
    // EOF (0) or a reset: closed. A timeout: the server holds it.
    match s.read(&mut buf) {
        Ok(0) => true,
        Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
        Ok(_) => false,
    }
}

#[test]
fn slowloris_is_cut_off_by_the_cap_and_the_header_timeout_while_clients_are_served() {
    const CAP: usize = 32;
    const SLOW: usize = 300;
    const HEADER_TIMEOUT: f64 = 2.0;
    let (_b1, lb) = balancer(&format!(
        "{{ listen: 127.0.0.1:0, max_connections: {CAP}, header_timeout: 2s, idle_timeout: 30s }}"
    ));
    let admin = lb.admin();
    let front = lb.addr("front");
    assert_eq!(try_healthz(admin), Some(200));

    // The attacker: 300 connections, each dribbling a header byte every 250 ms, for at most
    // 12 s (the Python process is killed when the test ends, whatever happens).
    let mut child = Command::new("python3")
        .args(["-c", SLOWLORIS, "127.0.0.1", &admin.port().to_string()])
        .args([&SLOW.to_string(), "0.25", "12"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("python3 runs the slowloris client");
    let stdout = child.stdout.take().unwrap();
    let _attacker = Peer(child);
    let (tx, lines) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            let _ = tx.send(line);
        }
    });
    let attack_started = Instant::now();
    assert_eq!(
        lines.recv_timeout(Duration::from_secs(10)).unwrap(),
        "opened"
    );

    // While the slots are held: clients of the data plane are served, and one more admin
    // connection is closed at once instead of waiting for a slot.
    for i in 0..20 {
        assert_eq!(ask(front, &format!("during the slowloris {i}")), "b1");
    }
    if attack_started.elapsed().as_secs_f64() < HEADER_TIMEOUT - 0.5 {
        assert!(
            closed_at_once(admin),
            "an admin connection beyond the cap was not closed at once"
        );
    }

    // The held connections are closed by the header timeout, though each keeps sending, so
    // /healthz answers again without the attacker letting go.
    assert!(
        wait_until(Duration::from_secs(6), || try_healthz(admin) == Some(200)),
        "/healthz did not answer again; log:\n{}",
        lb.log_text()
    );
    let recovered = attack_started.elapsed().as_secs_f64();
    assert!(
        recovered < HEADER_TIMEOUT + 3.0,
        "/healthz answered only after {recovered:.1}s"
    );
    for i in 0..5 {
        assert_eq!(ask(front, &format!("after the slowloris {i}")), "b1");
    }

    let report = lines.recv_timeout(Duration::from_secs(15)).unwrap();
    let closed: Vec<Option<f64>> = serde_json::from_str(&report).unwrap();
    assert_eq!(closed.len(), SLOW);
    let still_open = closed.iter().filter(|c| c.is_none()).count();
    assert_eq!(still_open, 0, "slow connections never closed: {closed:?}");
    let times: Vec<f64> = closed.iter().flatten().copied().collect();
    // Beyond the cap: closed at once (well before the header timeout could have fired).
    let at_once = times.iter().filter(|t| **t < HEADER_TIMEOUT / 2.0).count();
    assert!(
        at_once >= SLOW - CAP,
        "{at_once} of {SLOW} closed at once; expected all but {CAP}: {times:?}"
    );
    // Within the cap: held until the header timeout, not longer.
    let held: Vec<f64> = times
        .iter()
        .copied()
        .filter(|t| *t >= HEADER_TIMEOUT / 2.0)
        .collect();
    assert!(
        (1..=CAP).contains(&held.len()),
        "{} connections were held: {held:?}",
        held.len()
    );
    assert!(
        held.iter()
            .all(|t| (HEADER_TIMEOUT - 0.2..HEADER_TIMEOUT + 1.5).contains(t)),
        "held connections not closed by the {HEADER_TIMEOUT}s header timeout: {held:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Cross-site requests and DNS rebinding, sent with curl as a browser sends them

/// Runs curl: `method` on `url` with each of `headers`, and `data` as the body; returns
/// (status code, body).
fn curl(method: &str, url: &str, headers: &[&str], data: Option<&str>) -> (u16, String) {
    let mut cmd = Command::new("curl");
    cmd.args([
        "-sS",
        "--max-time",
        "10",
        "-w",
        "\n%{http_code}",
        "-X",
        method,
    ]);
    for header in headers {
        cmd.args(["-H", header]);
    }
    if let Some(data) = data {
        cmd.args(["--data", data]);
    }
    let output = cmd.arg(url).output().expect("curl runs");
    assert!(
        output.status.success(),
        "curl failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8(output.stdout).unwrap();
    let (body, code) = text.rsplit_once('\n').unwrap();
    (code.parse().unwrap(), body.to_string())
}

fn get(url: &str, headers: &[&str]) -> (u16, String) {
    curl("GET", url, headers, None)
}

fn post(url: &str, headers: &[&str]) -> (u16, String) {
    curl("POST", url, headers, None)
}

fn state(lb: &Ballast, backend: SocketAddr) -> String {
    lb.backend("p", backend)["state"]
        .as_str()
        .unwrap()
        .to_string()
}

/// The `error` of a JSON error body.
fn error(body: &str) -> String {
    json(body)["error"].as_str().unwrap_or_default().to_string()
}

const EVIL_ORIGIN: &str = "Origin: http://evil.example";
const JSON: &str = "Content-Type: application/json";
const CUSTOM: &str = "X-Ballast-Request: 1";

#[test]
fn a_cross_site_form_post_is_refused_and_the_backend_stays_enabled() {
    let (b1, lb) = balancer("{ listen: 127.0.0.1:0 }");
    let admin = lb.admin();
    let disable = format!("http://{admin}/api/v1/pools/p/backends/{}/disable", b1.addr);

    // What an <form method=post> on evil.example sends: a simple request, no preflight.
    let form = "Content-Type: application/x-www-form-urlencoded";
    let (code, body) = curl("POST", &disable, &[EVIL_ORIGIN, form], Some("x=1"));
    assert_eq!(code, 403, "{body}");
    assert!(error(&body).contains("Origin"), "{body}");
    assert_eq!(state(&lb, b1.addr), "up");

    // A foreign Origin is refused even with a JSON content type (a page could not send that
    // without a preflight, but a proxy or a browser bug might), and on a read too.
    let (code, body) = post(&disable, &[EVIL_ORIGIN, JSON]);
    assert_eq!(code, 403, "{body}");
    assert_eq!(state(&lb, b1.addr), "up");
    let (code, _) = get(&format!("http://{admin}/api/v1/status"), &[EVIL_ORIGIN]);
    assert_eq!(code, 403);

    // The dashboard's own fetch: same origin, the custom header.
    let own = format!("Origin: http://{admin}");
    let (code, body) = post(&disable, &[&own, CUSTOM]);
    assert_eq!(code, 200, "{body}");
    assert_eq!(json(&body)["state"], "disabled");
    assert_eq!(state(&lb, b1.addr), "disabled");
}

#[test]
fn a_post_needs_a_json_content_type_or_the_custom_header() {
    let token_file = write_config(TOKEN);
    let (b1, lb) = balancer(&format!(
        "{{ listen: 127.0.0.1:0, token_file: {} }}",
        token_file.display()
    ));
    let admin = lb.admin();
    let url = |action: &str| {
        format!(
            "http://{admin}/api/v1/pools/p/backends/{}/{action}",
            b1.addr
        )
    };
    let bearer = format!("Authorization: Bearer {TOKEN}");

    // No Origin (browsers do not always send one with a form) and a content type a form can
    // send: refused, even with the right token.
    for content_type in [
        "Content-Type: text/plain",
        "Content-Type: application/x-www-form-urlencoded",
        "Content-Type: multipart/form-data; boundary=x",
    ] {
        let (code, body) = curl("POST", &url("disable"), &[content_type, &bearer], Some("x"));
        assert_eq!(code, 403, "{content_type}: {body}");
        assert!(error(&body).contains("X-Ballast-Request"), "{body}");
    }
    let (code, body) = post(&url("disable"), &[&bearer]);
    assert_eq!(code, 403, "no content type at all: {body}");
    assert_eq!(state(&lb, b1.addr), "up");

    // The legitimate calls: JSON with the token; the custom header with the token.
    let (code, body) = post(&url("drain"), &[JSON, &bearer]);
    assert_eq!(
        (code, json(&body)["state"].as_str()),
        (200, Some("draining")),
        "{body}"
    );
    let (code, body) = post(&url("enable"), &[CUSTOM, &bearer]);
    assert_eq!(
        (code, json(&body)["state"].as_str()),
        (200, Some("up")),
        "{body}"
    );
    // The token is still needed on top.
    let (code, _) = post(
        &url("disable"),
        &["Content-Type: application/json; charset=utf-8"],
    );
    assert_eq!(code, 401);
    assert_eq!(state(&lb, b1.addr), "up");
}

#[test]
fn a_rebound_host_name_is_refused_unless_allowed() {
    let (b1, lb) = balancer("{ listen: 127.0.0.1:0 }");
    let admin = lb.admin();
    let port = admin.port();
    let evil = format!("Host: evil.example:{port}");

    // What a page on evil.example, rebound to 127.0.0.1, sends.
    for path in ["/api/v1/status", "/", "/metrics"] {
        let (code, body) = get(&format!("http://{admin}{path}"), &[&evil]);
        assert_eq!(code, 403, "{path}: {body}");
        assert!(error(&body).contains("allowed_hosts"), "{body}");
    }
    let disable = format!("http://{admin}/api/v1/pools/p/backends/{}/disable", b1.addr);
    assert_eq!(post(&disable, &[&evil, JSON]).0, 403);
    assert_eq!(state(&lb, b1.addr), "up");
    // Liveness probes send whatever Host they like and learn nothing from the answer.
    assert_eq!(get(&format!("http://{admin}/healthz"), &[&evil]).0, 200);

    // The names the admin address itself goes by are accepted.
    let status = format!("http://{admin}/api/v1/status");
    for host in [
        format!("127.0.0.1:{port}"),
        format!("localhost:{port}"),
        "LOCALHOST".into(),
    ] {
        let (code, body) = get(&status, &[&format!("Host: {host}")]);
        assert_eq!(code, 200, "{host}: {body}");
    }
    drop(lb);

    // Listed in `allowed_hosts`, the name is accepted, in Host and as the Origin of a POST.
    let (b1, lb) = balancer("{ listen: 127.0.0.1:0, allowed_hosts: [evil.example] }");
    let admin = lb.admin();
    let port = admin.port();
    let evil = format!("Host: evil.example:{port}");
    let status = format!("http://{admin}/api/v1/status");
    let (code, body) = get(&status, &[&evil]);
    assert_eq!(code, 200, "{body}");
    assert_eq!(json(&body)["pools"][0]["name"], "p");
    let origin = format!("Origin: http://evil.example:{port}");
    let drain = format!("http://{admin}/api/v1/pools/p/backends/{}/drain", b1.addr);
    let (code, body) = post(&drain, &[&evil, &origin, JSON]);
    assert_eq!(
        (code, json(&body)["state"].as_str()),
        (200, Some("draining")),
        "{body}"
    );
    // Another name still is not.
    assert_eq!(
        get(&status, &[&format!("Host: other.example:{port}")]).0,
        403
    );
}
