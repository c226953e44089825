//! The admin HTTP API through the real binary: every endpoint with and without the token,
//! drain/disable/enable as clients see them, `/metrics` checked by promtool and against the
//! exact traffic sent, the dashboard in headless Chromium, and the Grafana dashboard's names.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use ballast_control::metrics::METRIC_NAMES;
use common::*;

const TOKEN: &str = "s3cret-admin-token";

/// Two named backends in pool `p` behind listener `front`, with the given `admin:` block.
fn two_backends(names: [&str; 2], admin: &str) -> (NamedBackend, NamedBackend, Ballast) {
    let a = named_backend(names[0], Duration::ZERO);
    let b = named_backend(names[1], Duration::ZERO);
    let lb = Ballast::run(&format!(
        "workers: 2\nadmin: {admin}\nlisteners:\n  - {{ name: front, listen: 127.0.0.1:0, pool: p }}\npools:\n  - name: p\n    backends:\n      - {{ address: \"{}\" }}\n      - {{ address: \"{}\" }}\n",
        a.addr, b.addr
    ));
    (a, b, lb)
}

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

#[test]
fn every_endpoint_with_and_without_the_token() {
    let token_file = write_config(&format!("{TOKEN}\n"));
    let admin_block = format!(
        "{{ listen: 127.0.0.1:0, token_file: \"{}\" }}",
        token_file.display()
    );
    let (b1, _b2, lb) = two_backends(["b1", "b2"], &admin_block);
    let admin = lb.admin();
    let front = lb.addr("front");

    // Reads are open.
    let (code, body) = http(admin, "GET", "/healthz", None);
    assert_eq!((code, json(&body)["status"].as_str()), (200, Some("ok")));
    let (code, body) = http(admin, "GET", "/readyz", None);
    assert_eq!((code, json(&body)["ready"].as_bool()), (200, Some(true)));
    let (code, body) = http(admin, "GET", "/metrics", None);
    assert_eq!(code, 200);
    assert!(body.contains("# TYPE ballast_backend_up gauge"), "{body}");
    let (code, body) = http(admin, "GET", "/", None);
    assert_eq!(code, 200);
    assert!(body.contains("/api/v1/status"));
    let status = lb.status();
    assert_eq!(status["listeners"][0]["name"], "front");
    assert_eq!(status["listeners"][0]["addresses"][0], front.to_string());
    let backends = status["pools"][0]["backends"].as_array().unwrap();
    assert_eq!(backends.len(), 2);
    assert!(backends
        .iter()
        .all(|b| b["state"] == "up" && b["weight"] == 1));

    // Mutations need the token: 401 without it, 403 with a wrong one.
    let drain_b1 = format!("/api/v1/pools/p/backends/{}/drain", b1.addr);
    for path in [drain_b1.as_str(), "/api/v1/reload"] {
        let (code, body) = http(admin, "POST", path, None);
        assert_eq!(code, 401, "{path}: {body}");
        assert!(json(&body)["error"].as_str().unwrap().contains("Bearer"));
        let (code, body) = http(admin, "POST", path, Some("wrong"));
        assert_eq!(code, 403, "{path}: {body}");
        assert_eq!(json(&body)["error"], "wrong token");
    }
    assert_eq!(lb.backend("p", b1.addr)["state"], "up");

    // Clear JSON errors.
    let errors = [
        (
            "POST",
            "/api/v1/pools/nope/backends/127.0.0.1:1/drain".to_string(),
            404,
            "no pool named \"nope\"",
        ),
        (
            "POST",
            "/api/v1/pools/p/backends/127.0.0.1:1/drain".to_string(),
            404,
            "has no backend 127.0.0.1:1",
        ),
        (
            "POST",
            "/api/v1/pools/p/backends/not-an-address/drain".to_string(),
            400,
            "is not a backend address",
        ),
        (
            "POST",
            format!("/api/v1/pools/p/backends/{}/explode", b1.addr),
            404,
            "unknown action \"explode\"",
        ),
        ("GET", drain_b1.clone(), 405, "method not allowed"),
        (
            "DELETE",
            "/api/v1/status".to_string(),
            405,
            "method not allowed",
        ),
        (
            "GET",
            "/api/v2/nothing".to_string(),
            404,
            "no such endpoint",
        ),
    ];
    for (method, path, want, message) in errors {
        let (code, body) = http(admin, method, &path, Some(TOKEN));
        assert_eq!(code, want, "{method} {path}: {body}");
        let error = json(&body)["error"].as_str().unwrap().to_string();
        assert!(error.contains(message), "{method} {path}: {error}");
    }

    // Drain: no new session goes to b1, the one it has runs on and finishes.
    let mut held = session_on(front, "b1");
    let (code, body) = http(admin, "POST", &drain_b1, Some(TOKEN));
    assert_eq!(code, 200, "{body}");
    assert_eq!(json(&body)["state"], "draining");
    for i in 0..20 {
        assert_eq!(ask(front, &format!("while draining {i}")), "b2");
    }
    let entry = lb.backend("p", b1.addr);
    assert_eq!(
        (
            entry["state"].as_str(),
            entry["connections_active"].as_u64()
        ),
        (Some("draining"), Some(1))
    );
    held.write_all(b"still here").unwrap();
    let mut echo = [0u8; 10];
    held.read_exact(&mut echo).unwrap();
    assert_eq!(&echo, b"still here");
    held.shutdown(Shutdown::Write).unwrap();
    held.read_to_end(&mut Vec::new()).unwrap();
    assert!(lb
        .wait_backend("p", b1.addr, IO_TIMEOUT, |e| e["connections_active"] == 0)
        .is_some());

    // Disable, then enable: b1 takes sessions again.
    let action = |what: &str| {
        let path = format!("/api/v1/pools/p/backends/{}/{what}", b1.addr);
        let (code, body) = http(admin, "POST", &path, Some(TOKEN));
        assert_eq!(code, 200, "{what}: {body}");
        json(&body)["state"].as_str().unwrap().to_string()
    };
    assert_eq!(action("disable"), "disabled");
    assert_eq!(lb.backend("p", b1.addr)["state"], "disabled");
    assert!((0..6).all(|i| ask(front, &format!("disabled {i}")) == "b2"));
    assert_eq!(action("enable"), "up");
    assert!((0..6).any(|i| ask(front, &format!("enabled {i}")) == "b1"));

    // Reload with the token: the same file, applied.
    let (code, body) = http(admin, "POST", "/api/v1/reload", Some(TOKEN));
    assert_eq!(code, 200, "{body}");
    assert_eq!(json(&body)["listeners_kept"][0], "front");
    assert_eq!(lb.status()["reloads"]["success"], 1);
}

/// Parses the text exposition into (name, labels) → value, checking each line's shape.
fn samples(text: &str) -> HashMap<(String, Vec<(String, String)>), f64> {
    let mut out = HashMap::new();
    for line in text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let (series, value) = line.rsplit_once(' ').unwrap();
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => (name, rest.strip_suffix('}').unwrap()),
            None => (series, ""),
        };
        let mut labels: Vec<(String, String)> = labels
            .split(',')
            .filter(|l| !l.is_empty())
            .map(|l| {
                let (k, v) = l.split_once('=').unwrap();
                (k.to_string(), v.trim_matches('"').to_string())
            })
            .collect();
        labels.sort();
        out.insert((name.to_string(), labels), value.parse().unwrap());
    }
    out
}

fn labels(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut v: Vec<_> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    v.sort();
    v
}

#[test]
fn metrics_pass_promtool_and_count_exactly_what_was_sent() {
    let (b1, b2, lb) = two_backends(["b1", "b22"], "{ listen: 127.0.0.1:0 }");
    let front = lb.addr("front");
    let mut expected: HashMap<String, (u64, u64, u64)> = HashMap::new();
    for i in 0..10usize {
        let message = "m".repeat(100 + 37 * i);
        let name = ask(front, &message);
        let e = expected.entry(name.clone()).or_default();
        e.0 += 1;
        e.1 += message.len() as u64;
        e.2 += (name.len() + 1 + message.len()) as u64;
    }
    assert_eq!(expected.len(), 2, "{expected:?}");
    for b in [&b1, &b2] {
        assert!(lb
            .wait_backend("p", b.addr, IO_TIMEOUT, |e| e["connections_active"] == 0)
            .is_some());
    }
    let (code, text) = http(lb.admin(), "GET", "/metrics", None);
    assert_eq!(code, 200);

    // The exposition format, as Prometheus itself reads it.
    if require_tool("promtool", "prometheus") {
        let mut child = Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "promtool check metrics failed:\n{}{}\n{text}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    let udp_only = |name: &str| name.starts_with("ballast_listener_udp_");
    for name in METRIC_NAMES.iter().filter(|n| !udp_only(n)) {
        assert!(text.contains(&format!("# TYPE {name} ")), "{name} missing");
    }
    // A TCP listener has no UDP flows: no UDP series names it.
    let udp_lines: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("ballast_listener_udp_"))
        .collect();
    assert!(
        udp_lines.is_empty(),
        "UDP series of a TCP listener: {udp_lines:?}"
    );
    // A UDP listener has every one of them.
    let udp_echo = udp_echo(1);
    let udp_lb = Ballast::run(&format!(
        "admin: {{ listen: 127.0.0.1:0 }}
listeners:
  - {{ name: dns, protocol: udp, listen: 127.0.0.1:0, pool: u }}
pools:
  - {{ name: u, backends: [{{ address: \"{}\" }}] }}
",
        udp_echo.addr
    ));
    let (code, udp_text) = http(udp_lb.admin(), "GET", "/metrics", None);
    assert_eq!(code, 200);
    for name in METRIC_NAMES.iter().filter(|n| udp_only(n)) {
        assert!(
            udp_text.contains(&format!("# TYPE {name} ")),
            "{name} missing for a UDP listener"
        );
    }
    let s = samples(&text);
    let value = |name: &str, pairs: &[(&str, &str)]| -> u64 {
        *s.get(&(name.to_string(), labels(pairs)))
            .unwrap_or_else(|| panic!("no sample {name} {pairs:?}")) as u64
    };
    for (backend, name) in [(&b1, "b1"), (&b2, "b22")] {
        let addr = backend.addr.to_string();
        let l = [("pool", "p"), ("backend", addr.as_str())];
        let (connections, sent, received) = expected[name];
        let want = [
            ("ballast_backend_connections_total", connections),
            ("ballast_backend_sent_bytes_total", sent),
            ("ballast_backend_received_bytes_total", received),
            (
                "ballast_backend_connect_duration_seconds_count",
                connections,
            ),
            ("ballast_backend_connections_active", 0),
            ("ballast_backend_up", 1),
        ];
        for (metric, expected) in want {
            assert_eq!(value(metric, &l), expected, "{name}: {metric}");
        }
        let state = |st| value("ballast_backend_state", &[l[0], l[1], ("state", st)]);
        assert_eq!((state("up"), state("down"), state("draining")), (1, 0, 0));
        assert_eq!(
            value(
                "ballast_backend_connect_errors_total",
                &[l[0], l[1], ("reason", "refused")]
            ),
            0
        );
    }
    assert_eq!(
        value(
            "ballast_listener_connections_total",
            &[("listener", "front")]
        ),
        10
    );
    assert_eq!(
        value(
            "ballast_listener_connections_active",
            &[("listener", "front")]
        ),
        0
    );
    assert_eq!(
        value("ballast_config_reloads_total", &[("result", "success")]),
        0
    );
}

/// Headless Chromium with the DevTools protocol on a free port, killed on drop.
struct Chromium {
    child: Child,
    _profile: tempdir::Dir,
}

impl Drop for Chromium {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A fresh directory under the system temp dir, removed on drop.
mod tempdir {
    pub struct Dir(pub std::path::PathBuf);

    impl Dir {
        pub fn new(tag: &str) -> Self {
            let path = std::env::temp_dir().join(format!("ballast-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&path);
            std::fs::create_dir_all(&path).unwrap();
            Dir(path)
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// Starts Chromium on `url`; returns it and the DevTools WebSocket of that page.
fn chromium(url: &str) -> (Chromium, String) {
    let profile = tempdir::Dir::new("chromium");
    let mut command = Command::new("chromium");
    command
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--remote-debugging-port=0",
        ])
        .arg(format!("--user-data-dir={}", profile.0.display()))
        .arg(url);
    let (child, stderr) = spawn_with_stderr(&mut command);
    let browser = Chromium {
        child,
        _profile: profile,
    };
    // "DevTools listening on ws://127.0.0.1:PORT/devtools/browser/ID"; the reader thread
    // keeps draining stderr so Chromium never blocks on it.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(rest) = line.split("ws://").nth(1) {
                let _ = tx.send(rest.split('/').next().unwrap_or("").to_string());
            }
        }
    });
    let host = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("chromium printed no DevTools address");
    let devtools: SocketAddr = host.parse().unwrap();
    let mut ws = None;
    assert!(wait_until(Duration::from_secs(30), || {
        let (code, body) = http(devtools, "GET", "/json/list", None);
        if code != 200 {
            return false;
        }
        let targets = json(&body);
        ws = targets.as_array().unwrap().iter().find_map(|t| {
            (t["type"] == "page" && t["url"].as_str().is_some_and(|u| u.starts_with(url)))
                .then(|| t["webSocketDebuggerUrl"].as_str().unwrap().to_string())
        });
        ws.is_some()
    }));
    (browser, ws.unwrap())
}

/// A DevTools connection to one page.
struct Page {
    socket: tungstenite::WebSocket<tungstenite::stream::MaybeTlsStream<std::net::TcpStream>>,
    next_id: u64,
}

impl Page {
    fn open(ws_url: &str) -> Page {
        let (socket, _) = tungstenite::connect(ws_url).unwrap();
        if let tungstenite::stream::MaybeTlsStream::Plain(s) = socket.get_ref() {
            s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        }
        Page { socket, next_id: 1 }
    }

    /// Evaluates `expression` in the page and returns its value.
    fn eval(&mut self, expression: &str) -> serde_json::Value {
        let id = self.next_id;
        self.next_id += 1;
        let request = serde_json::json!({
            "id": id,
            "method": "Runtime.evaluate",
            "params": { "expression": expression, "returnByValue": true, "awaitPromise": true },
        });
        self.socket
            .send(tungstenite::Message::Text(request.to_string().into()))
            .unwrap();
        for _ in 0..1000 {
            let message = self.socket.read().unwrap();
            let Ok(text) = message.to_text() else {
                continue;
            };
            let reply = json(text);
            if reply["id"] == id {
                assert!(reply["result"]["exceptionDetails"].is_null(), "{reply}");
                return reply["result"]["result"]["value"].clone();
            }
        }
        panic!("no reply to DevTools call {id}");
    }
}

#[test]
fn the_dashboard_shows_the_backends_and_its_drain_button_drains() {
    if !require_tool("chromium", "chromium") {
        return;
    }
    let (b1, b2, lb) = two_backends(["b1", "b2"], "{ listen: 127.0.0.1:0 }");
    let url = format!("http://{}/", lb.admin());
    let (page_html_code, page_html) = http(lb.admin(), "GET", "/", None);
    assert_eq!(page_html_code, 200);
    assert!(
        !page_html.contains("src=\"http") && !page_html.contains("href=\"http"),
        "the page loads something from elsewhere"
    );

    let (_browser, ws) = chromium(&url);
    let mut page = Page::open(&ws);
    let rows = "Array.from(document.querySelectorAll('tr[data-backend]')).map(r => \
                r.dataset.pool + ' ' + r.dataset.backend + ' ' + r.querySelector('.state').textContent).sort().join(',')";
    let want = {
        let mut rows = [format!("p {} up", b1.addr), format!("p {} up", b2.addr)];
        rows.sort();
        rows.join(",")
    };
    let mut shown = serde_json::Value::Null;
    assert!(
        wait_until(Duration::from_secs(20), || {
            shown = page.eval(rows);
            shown == want.as_str()
        }),
        "the page shows {shown}, not {want}"
    );

    let click = format!(
        "document.querySelector('tr[data-backend=\"{}\"] button[data-action=\"drain\"]').click(); true",
        b1.addr
    );
    assert_eq!(page.eval(&click), true);
    let state = format!(
        "document.querySelector('tr[data-backend=\"{}\"] .state').textContent",
        b1.addr
    );
    assert!(
        wait_until(Duration::from_secs(20), || page.eval(&state) == "draining"),
        "the row never showed draining: {}",
        page.eval(&state)
    );
    assert_eq!(lb.backend("p", b1.addr)["state"], "draining");
    assert_eq!(lb.backend("p", b2.addr)["state"], "up");
    assert!((0..6).all(|i| ask(lb.addr("front"), &format!("after click {i}")) == "b2"));
}

#[test]
fn the_grafana_dashboard_uses_only_exported_names_and_covers_the_essentials() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../deploy/grafana/ballast.json"
    );
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    assert_eq!(dashboard["__inputs"][0]["pluginId"], "prometheus");
    let mut exprs = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        assert!(panel["gridPos"]["w"].as_u64().unwrap() > 0);
        for target in panel["targets"].as_array().unwrap() {
            exprs.push(target["expr"].as_str().unwrap().to_string());
        }
    }
    let all = exprs.join("\n");
    let mut used = Vec::new();
    let starts = all
        .match_indices("ballast_")
        .chain(all.match_indices("process_"))
        .filter(|(i, _)| !all[..*i].ends_with(|c: char| c.is_ascii_alphanumeric() || c == '_'));
    for (i, _) in starts {
        let name: String = all[i..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|f| METRIC_NAMES.contains(f)))
            .unwrap_or(&name)
            .to_string();
        assert!(
            METRIC_NAMES.contains(&family.as_str()),
            "{name} is not exported"
        );
        used.push(family);
    }
    for essential in [
        "rate(ballast_backend_connections_total",
        "ballast_backend_connections_active",
        "rate(ballast_backend_sent_bytes_total",
        "rate(ballast_backend_received_bytes_total",
        "ballast_backend_up",
        "histogram_quantile(0.99, sum by (pool, backend, le) (rate(ballast_backend_connect_duration_seconds_bucket",
        "ballast_listener_udp_flows_active",
    ] {
        assert!(all.contains(essential), "no panel shows {essential}");
    }
    for name in METRIC_NAMES {
        assert!(used.iter().any(|u| u == name), "{name} is on no panel");
    }
}
