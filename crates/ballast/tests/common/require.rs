//! What a test needs from the machine (a program, root, a kernel feature), and what happens
//! when the machine lacks it: on a developer's machine the test (or the part of it) is
//! skipped with a "skipped: ..." line saying what is missing; under `CI=true` it fails
//! instead, so that a green CI means every test ran. `.ci/run` installs every program named
//! here and runs as root.
//!
//! Every skip in the integration tests goes through [`skip`]. The data plane's tests include
//! this file too (`#[path]` in crates/dataplane/tests/common/mod.rs).
#![allow(dead_code)]

use std::io::Write as _;

/// True when the environment says this is CI (`CI` set to anything but empty, `0` or
/// `false`): then nothing may be skipped.
pub fn strict() -> bool {
    std::env::var("CI").is_ok_and(|v| !matches!(v.trim(), "" | "0" | "false"))
}

/// Records that the running test cannot do something on this machine. Returns (so that the
/// caller returns, or leaves that part out) after printing "skipped: <test>: <why>", or,
/// under `CI=true`, fails the test with that message.
#[track_caller]
pub fn skip(why: &str) {
    let current = std::thread::current();
    let test = current.name().unwrap_or("a test");
    if strict() {
        panic!(
            "{test} would skip under CI=true: {why}. CI must run every test: install what is \
             missing in .ci/run"
        );
    }
    // Straight to the process's stderr: the test harness captures `eprintln!` of a test that
    // passes, and a skip should be seen.
    let _ = writeln!(std::io::stderr(), "skipped: {test}: {why}");
}

/// True when `program` is installed: on PATH or in the sbin directories non-root PATHs miss.
/// Just the fact; use [`require_tools`] where a missing program means a skip.
pub fn on_path(program: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .any(|dir| dir.join(program).is_file())
}

/// True when every one of `programs` is installed, given as (program, Debian package).
/// Otherwise [`skip`]s, naming the first one missing, and returns false.
#[track_caller]
pub fn require_tools(programs: &[(&str, &str)]) -> bool {
    match programs.iter().find(|(program, _)| !on_path(program)) {
        None => true,
        Some((program, package)) => {
            skip(&format!(
                "`{program}` is not installed (apt-get install {package})"
            ));
            false
        }
    }
}

/// [`require_tools`] for one program.
#[track_caller]
pub fn require_tool(program: &str, package: &str) -> bool {
    require_tools(&[(program, package)])
}

pub fn is_root() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        == Some("0")
}

/// True when running as root; otherwise [`skip`]s, saying what root is needed `for`.
#[track_caller]
pub fn require_root(purpose: &str) -> bool {
    if is_root() {
        return true;
    }
    skip(&format!("needs root {purpose}"));
    false
}
