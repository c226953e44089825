//! A Redis peer for the tests: a redis-server of its own, and a one-line PING.
#![allow(dead_code, clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{free_port, wait_until, IO_TIMEOUT};

/// A redis-server on a free port, killed on drop, working in its own directory (a replica's
/// sync writes an RDB file there, not into the source tree), removed on drop.
pub struct Redis {
    child: Child,
    pub addr: SocketAddr,
    pub dir: std::path::PathBuf,
}

impl Redis {
    pub fn start() -> Option<Redis> {
        Redis::start_with(&[])
    }

    /// With more `redis-server` arguments, such as `--requirepass`; ready when PING gets its
    /// PONG or, with a password required, NOAUTH.
    pub fn start_with(extra: &[&str]) -> Option<Redis> {
        let port = free_port();
        let dir =
            std::env::temp_dir().join(format!("ballast-test-redis-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).ok()?;
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(&dir)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let redis = Redis {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            dir,
        };
        let ready = wait_until(IO_TIMEOUT, || {
            redis_ping(redis.addr)
                .is_some_and(|reply| reply == "+PONG" || reply.starts_with("-NOAUTH"))
        });
        assert!(ready, "redis-server on {} never answered PING", redis.addr);
        Some(redis)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub fn redis_ping(addr: SocketAddr) -> Option<String> {
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
    s.write_all(b"PING\r\n").ok()?;
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).ok()?;
    Some(String::from_utf8_lossy(&buf[..n]).trim().to_string())
}
