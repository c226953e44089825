//! A cgroup v2 directory of a test's own, for the socket fast path's tests: clients are
//! started inside it, and it is removed when dropped (once its processes have exited). The
//! fast path crate's tests include this file too (`#[path]`).
#![allow(dead_code, clippy::unwrap_used)]

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

/// The cgroup2 mount, as the fast path itself finds it (`None` on a machine without one).
pub fn cgroup2_mount() -> Option<PathBuf> {
    ballast_fastpath::cgroup2_root().ok()
}

pub struct TestCgroup(pub PathBuf);

impl TestCgroup {
    pub fn new(tag: &str) -> Self {
        let root = cgroup2_mount().expect("no cgroup2 mount");
        let dir = root.join(format!("ballast-test-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl TestCgroup {
    /// Runs a Python `script` as a process inside this cgroup (bounded: 20 s); returns what
    /// it printed, failing the test when it fails.
    pub fn run_python(&self, script: &str) -> String {
        let out = Command::new("timeout")
            .args(["20", "sh", "-c"])
            .arg(format!(
                "echo $$ > {} && exec python3 -c \"$0\"",
                self.0.join("cgroup.procs").display()
            ))
            .arg(script)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "client in {} failed: {}{}",
            self.0.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        for _ in 0..100 {
            if std::fs::remove_dir(&self.0).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
