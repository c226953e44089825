//! `ballast check` and `ballast run` on good and broken configuration files: exit codes, the
//! specific message for each mistake, and never a panic.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;

use common::{binary, write_config};

const GOOD: &str = "\
listeners:
  - name: web
    listen: 127.0.0.1:0
    pool: app
pools:
  - name: app
    backends:
      - { address: 127.0.0.1:9001 }
";

/// Runs `ballast <cmd> -c FILE` on `yaml`; returns (exit code, stderr).
fn run(cmd: &str, yaml: &str) -> (i32, String) {
    run_bytes(cmd, yaml.as_bytes())
}

/// [`run`] on a file that need not be text.
fn run_bytes(cmd: &str, bytes: &[u8]) -> (i32, String) {
    let path = write_config("");
    std::fs::write(&path, bytes).unwrap();
    let out = Command::new(binary())
        .args([cmd, "-c", path.to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!stderr.contains("panicked"), "{cmd} panicked:\n{stderr}");
    (out.status.code().unwrap_or(-1), stderr)
}

#[test]
fn every_bundled_config_passes_check() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../configs");
    let mut checked = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        let out = Command::new(binary())
            .args(["check", "-c", path.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        checked += 1;
    }
    assert!(checked >= 3, "only {checked} configs found in {dir}");
}

#[test]
fn a_good_config_passes_check() {
    let (code, stderr) = run("check", GOOD);
    assert_eq!(code, 0, "{stderr}");
}

#[test]
fn version_prints_the_crate_version() {
    let out = Command::new(binary()).arg("--version").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(env!("CARGO_PKG_VERSION")), "{text}");
}

/// (what is broken, the YAML, a line of the expected error as `line: path: message part`).
const BROKEN: &[(&str, &str, &str)] = &[
    ("yaml syntax", "listeners: [\n", ":2:1: while parsing a node, did not find expected node content"),
    (
        "unknown top-level key",
        "listenres: []\n",
        ":1:1: listenres: unknown field `listenres`",
    ),
    (
        "unknown pool, did you mean",
        "listeners:\n  - name: a\n    listen: 127.0.0.1:0\n    pool: pgg\npools:\n  - name: pg\n    backends: [{ address: 127.0.0.1:1 }]\n",
        ":4:5: listeners[0].pool: no pool named \"pgg\"; did you mean \"pg\"?",
    ),
    (
        "duplicate listener names",
        "listeners:\n  - { name: a, listen: 127.0.0.1:0, pool: p }\n  - { name: a, listen: 127.0.0.1:0, pool: p }\npools:\n  - { name: p, backends: [{ address: 127.0.0.1:1 }] }\n",
        ":3:7: listeners[1].name: duplicate listener name \"a\"",
    ),
    (
        "duplicate pool names",
        "listeners:\n  - { name: a, listen: 127.0.0.1:0, pool: p }\npools:\n  - { name: p, backends: [{ address: 127.0.0.1:1 }] }\n  - { name: p, backends: [{ address: 127.0.0.1:2 }] }\n",
        ":5:7: pools[1].name: duplicate pool name \"p\"",
    ),
    (
        "empty pool",
        "listeners:\n  - { name: a, listen: 127.0.0.1:0, pool: p }\npools:\n  - { name: p, backends: [] }\n",
        "pools[0].backends: ",
    ),
    (
        "weight 0",
        "listeners:\n  - { name: a, listen: 127.0.0.1:0, pool: p }\npools:\n  - name: p\n    backends:\n      - { address: 127.0.0.1:1, weight: 0 }\n",
        ":6:33: pools[0].backends[0].weight: weight must be between 1 and 256, got 0",
    ),
    (
        "duplicate backend address",
        "listeners:\n  - { name: a, listen: 127.0.0.1:0, pool: p }\npools:\n  - name: p\n    backends:\n      - { address: 127.0.0.1:1 }\n      - { address: 127.0.0.1:1 }\n",
        ":7:11: pools[0].backends[1].address: 127.0.0.1:1 is already listed in this pool",
    ),
    (
        "unparsable backend address",
        "listeners:\n  - { name: a, listen: 127.0.0.1:0, pool: p }\npools:\n  - name: p\n    backends:\n      - { address: 10.0.0.300:80 }\n",
        ":6:11: pools[0].backends[0].address: ",
    ),
    (
        "missing port",
        "listeners:\n  - { name: a, listen: 10.0.0.1, pool: p }\npools:\n  - { name: p, backends: [{ address: 127.0.0.1:1 }] }\n",
        "listeners[0].listen: \"10.0.0.1\": missing port",
    ),
    (
        "two listeners on one address",
        "listeners:\n  - { name: a, listen: 127.0.0.1:7000, pool: p }\n  - { name: b, listen: 127.0.0.1:7000, pool: p }\npools:\n  - { name: p, backends: [{ address: 127.0.0.1:1 }] }\n",
        ":3:16: listeners[1].listen",
    ),
    (
        "hash_key without maglev",
        "listeners:\n  - { name: a, listen: 127.0.0.1:0, pool: p }\npools:\n  - name: p\n    algorithm: round_robin\n    hash_key: source_ip\n    backends: [{ address: 127.0.0.1:1 }]\n",
        ":6:5: pools[0].hash_key: ",
    ),
    (
        "time_metric without least_time",
        "listeners:\n  - { name: a, listen: 127.0.0.1:0, pool: p }\npools:\n  - name: p\n    time_metric: first_byte\n    backends: [{ address: 127.0.0.1:1 }]\n",
        ":5:5: pools[0].time_metric: ",
    ),
    (
        "unknown algorithm",
        "listeners:\n  - { name: a, listen: 127.0.0.1:0, pool: p }\npools:\n  - name: p\n    algorithm: fastest\n    backends: [{ address: 127.0.0.1:1 }]\n",
        ":5:5: pools[0].algorithm: unknown algorithm \"fastest\"",
    ),
    (
        "maglev table not prime",
        "listeners:\n  - { name: a, listen: 127.0.0.1:0, pool: p }\npools:\n  - name: p\n    algorithm: maglev\n    table_size: 65536\n    backends: [{ address: 127.0.0.1:1 }]\n",
        ":6:5: pools[0].table_size: ",
    ),
    (
        "bad duration",
        "listeners:\n  - name: a\n    listen: 127.0.0.1:0\n    pool: p\n    timeouts: { idle: 30 }\npools:\n  - { name: p, backends: [{ address: 127.0.0.1:1 }] }\n",
        ":5:17: listeners[0].timeouts.idle: ",
    ),
    (
        "zero connect timeout",
        "listeners:\n  - name: a\n    listen: 127.0.0.1:0\n    pool: p\n    timeouts: { connect: 0s }\npools:\n  - { name: p, backends: [{ address: 127.0.0.1:1 }] }\n",
        ":5:17: listeners[0].timeouts.connect: ",
    ),
    (
        "workers 0",
        "workers: 0\nlisteners:\n  - { name: a, listen: 127.0.0.1:0, pool: p }\npools:\n  - { name: p, backends: [{ address: 127.0.0.1:1 }] }\n",
        ":1:1: workers: must be `auto` or a number from 1 to 1024, got 0",
    ),
    (
        "retries too many",
        "listeners:\n  - { name: a, listen: 127.0.0.1:0, pool: p }\npools:\n  - name: p\n    retries: 99\n    backends: [{ address: 127.0.0.1:1 }]\n",
        ":5:5: pools[0].retries: ",
    ),
    (
        "pool and tls_passthrough together",
        "listeners:\n  - name: a\n    listen: 127.0.0.1:0\n    pool: p\n    tls_passthrough: { default_pool: p }\npools:\n  - { name: p, backends: [{ address: 127.0.0.1:1 }] }\n",
        ":4:5: listeners[0].pool: a TLS passthrough listener routes by SNI",
    ),
    (
        "health check timeout longer than its interval",
        "listeners:\n  - { name: a, listen: 127.0.0.1:0, pool: p }\npools:\n  - name: p\n    health_check: { interval: 1s, timeout: 3s }\n    backends: [{ address: 127.0.0.1:1 }]\n",
        ":5:35: pools[0].health_check.timeout: \"3s\" is longer than the interval",
    ),
    (
        "no listeners",
        "pools:\n  - { name: p, backends: [{ address: 127.0.0.1:1 }] }\n",
        "listeners",
    ),
    (
        "not a mapping",
        "- just\n- a list\n",
        "expected a mapping of top-level settings",
    ),
];

#[test]
fn each_broken_config_gets_its_message_and_exit_2() {
    assert!(BROKEN.len() >= 15);
    let mut failures = Vec::new();
    for (what, yaml, expected) in BROKEN {
        for cmd in ["check", "run"] {
            let (code, stderr) = run(cmd, yaml);
            if code != 2 || !stderr.contains(expected) {
                failures.push(format!(
                    "{what} ({cmd}): exit {code}, want 2 and {expected:?} in:\n{stderr}"
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn a_missing_file_is_reported_with_exit_2() {
    let out = Command::new(binary())
        .args(["check", "-c", "/nonexistent/ballast.yaml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("/nonexistent/ballast.yaml"), "{stderr}");
}

#[test]
fn several_errors_are_all_reported_at_once() {
    let yaml = "workers: 0\nlisteners:\n  - { name: a, listen: 127.0.0.1:0, pool: nope }\npools:\n  - name: p\n    backends:\n      - { address: 127.0.0.1:1, weight: 0 }\n";
    let (code, stderr) = run("check", yaml);
    assert_eq!(code, 2);
    for needle in [
        ":1:1: workers",
        ":3:37: listeners[0].pool",
        ":7:33: pools[0].backends[0].weight",
    ] {
        assert!(stderr.contains(needle), "missing {needle:?} in:\n{stderr}");
    }
}

#[test]
fn several_wrong_types_are_all_reported_with_their_columns() {
    let yaml = "\
listeners:
  - name: a
    listen: 127.0.0.1:0
    pool: p
    max_connections: lots
    timeouts: { idle: [1] }
pools:
  - { name: p, retries: many, backends: [{ address: 127.0.0.1:1 }] }
";
    for cmd in ["check", "run"] {
        let (code, stderr) = run(cmd, yaml);
        assert_eq!(code, 2, "{cmd}: {stderr}");
        for needle in [
            ":5:5: listeners[0].max_connections: invalid type: string \"lots\"",
            ":6:17: listeners[0].timeouts.idle: invalid type: sequence",
            ":8:16: pools[0].retries: invalid type: string \"many\"",
        ] {
            assert!(
                stderr.contains(needle),
                "{cmd}: missing {needle:?} in:\n{stderr}"
            );
        }
    }
}

/// Files that are not a YAML mapping at all: (what, bytes, the one line expected on stderr).
const NOT_A_CONFIG: &[(&str, &[u8], &str)] = &[
    (
        "tab indentation",
        b"listeners:\n  - name: a\n\tpool: p\n",
        ":3:1: tab character used for indentation; YAML indents with spaces",
    ),
    ("empty file", b"", ": the file is empty"),
    ("only comments", b"# todo\n", ": the file is empty"),
    (
        "not UTF-8",
        b"workers: 1\nlisteners: caf\xe9\n",
        ":2:15: not YAML text: byte 0xe9 is not UTF-8",
    ),
    (
        "binary",
        b"\x7fELF\x02\x01\x01\x00\x00",
        ":1:1: not YAML text: control character 0x7f",
    ),
];

#[test]
fn a_file_that_is_not_a_config_gets_one_clear_line_and_exit_2() {
    let mut failures = Vec::new();
    for (what, bytes, expected) in NOT_A_CONFIG {
        for cmd in ["check", "run"] {
            let (code, stderr) = run_bytes(cmd, bytes);
            let lines = stderr.lines().count();
            if code != 2 || !stderr.contains(expected) || lines != 1 {
                failures.push(format!(
                    "{what} ({cmd}): exit {code}, {lines} line(s); want 2 and one line with \
                     {expected:?}:\n{stderr}"
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn run_refuses_an_address_in_use_with_a_clear_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    // Without SO_REUSEPORT on the holder the bind fails.
    let yaml = format!(
        "listeners:\n  - {{ name: a, listen: \"{addr}\", pool: p }}\npools:\n  - {{ name: p, backends: [{{ address: 127.0.0.1:1 }}] }}\n"
    );
    let (code, stderr) = run("run", &yaml);
    assert_eq!(code, 2, "{stderr}");
    let errors: Vec<&str> = stderr.lines().filter(|l| l.contains("ERROR")).collect();
    assert_eq!(errors.len(), 1, "one error line:\n{stderr}");
    let pid = std::process::id();
    assert!(
        errors[0].contains(&format!("listener a: {addr} is already in use by")),
        "{stderr}"
    );
    assert!(errors[0].contains(&format!("(pid {pid})")), "{stderr}");
    assert_eq!(errors[0].matches("in use").count(), 1, "{stderr}");
}
