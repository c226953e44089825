//! The exit status table of docs/runbooks.md ("Exit codes"), row by row: each case is run
//! with the real binary and its status compared with the table's.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::Write;
use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use common::*;

const RUNBOOKS: &str = include_str!("../../../docs/runbooks.md");

/// The (command, exit status) pairs of the table's rows, in order.
fn table() -> Vec<(String, i32)> {
    let section = RUNBOOKS
        .split("\n## Exit codes\n")
        .nth(1)
        .expect("docs/runbooks.md has an `## Exit codes` section");
    section
        .lines()
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .filter_map(|line| {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            let code = cells.get(2)?.parse().ok()?;
            Some((cells.get(1)?.trim_matches('`').to_string(), code))
        })
        .collect()
}

fn config(listen: SocketAddr, backend: SocketAddr, extra: &str) -> String {
    format!(
        "{extra}listeners:\n  - name: front\n    listen: \"{listen}\"\n    pool: p\npools:\n  - name: p\n    backends:\n      - {{ address: {backend} }}\n"
    )
}

fn status_of(args: &[&str]) -> i32 {
    let out = Command::new(binary()).args(args).output().unwrap();
    out.status.code().unwrap_or(-1)
}

fn check(yaml: &str) -> i32 {
    let path = write_config(yaml);
    status_of(&["check", "-c", path.to_str().unwrap()])
}

fn run_refused(yaml: &str) -> i32 {
    let path = write_config(yaml);
    status_of(&["run", "-c", path.to_str().unwrap()])
}

/// `ballast run` with one session open, stopped by SIGTERM (and a second one when `twice`).
fn run_and_stop(drain_timeout: &str, twice: bool, end_session: bool) -> i32 {
    let backend = named_backend("b", Duration::ZERO);
    let extra = format!("drain_timeout: {drain_timeout}\n");
    let mut lb = Ballast::run(&config(
        "127.0.0.1:0".parse().unwrap(),
        backend.addr,
        &extra,
    ));
    let mut session = session_on(lb.addr("front"), "b");
    lb.signal("TERM");
    assert!(lb.wait_for_log("stopping", IO_TIMEOUT), "{}", lb.log_text());
    if twice {
        lb.signal("TERM");
    }
    if end_session {
        session.write_all(b"bye").unwrap();
        session.shutdown(std::net::Shutdown::Write).unwrap();
    }
    let status = lb.wait_exit(IO_TIMEOUT).expect("exits");
    status.code().unwrap_or(-1)
}

#[test]
fn every_exit_status_in_the_runbook_table_is_what_the_binary_does() {
    let backend = named_backend("b", Duration::ZERO);
    let good = config("127.0.0.1:0".parse().unwrap(), backend.addr, "");
    let invalid = "listeners: [ { name: x } ]\n";
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_addr = taken.local_addr().unwrap();

    // One entry per row of the table, in its order: (command, status, what the case does).
    let cases: Vec<(&str, i32, i32)> = vec![
        ("ballast check", 0, check(&good)),
        ("ballast check", 2, check(invalid)),
        ("ballast run", 0, run_and_stop("10s", false, true)),
        ("ballast run", 0, run_and_stop("200ms", false, false)),
        ("ballast run", 1, run_and_stop("10s", true, false)),
        ("ballast run", 2, run_refused(invalid)),
        (
            "ballast run",
            2,
            run_refused(&config(taken_addr, backend.addr, "")),
        ),
        (
            "ballast run",
            2,
            run_refused(&config(
                "127.0.0.1:0".parse().unwrap(),
                backend.addr,
                &format!("admin: {{ listen: \"{taken_addr}\" }}\n"),
            )),
        ),
        ("ballast", 2, status_of(&["run", "--no-such-flag"])),
    ];
    let documented = table();
    let expected: Vec<(String, i32)> = cases
        .iter()
        .map(|(cmd, code, _)| (cmd.to_string(), *code))
        .collect();
    assert_eq!(documented, expected, "the table in docs/runbooks.md");
    for (i, (cmd, want, got)) in cases.iter().enumerate() {
        assert_eq!(
            got, want,
            "row {i} ({cmd}): exit {got}, the table says {want}"
        );
    }
    // A missing file is an invalid one.
    assert_eq!(status_of(&["check", "-c", "/nonexistent/ballast.yaml"]), 2);
}
