//! `ballast demo`: three tiny HTTP backends that each say who they are, and a balancer in front
//! of them, configured by the bundled `configs/demo.yaml` through the same loader as `run`.
//!
//! Each backend thread owns its listening socket and the connections it accepts; a connection
//! is closed after one answer.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use anyhow::Context;
use ballast_control::config::{self, Admin};
use ballast_control::server::{Server, StartOptions};

const DEMO_CONFIG: &str = include_str!("../../../configs/demo.yaml");

pub fn run(listen: SocketAddr, admin_listen: SocketAddr) -> anyhow::Result<()> {
    let loaded = config::load_str(DEMO_CONFIG, "configs/demo.yaml")
        .map_err(|e| anyhow::anyhow!("bundled demo config: {e}"))?;
    let mut cfg = loaded.config;
    let pool = cfg.pools.first_mut().context("demo config has no pool")?;
    // The bundled file names fixed backend ports for reading; the demo binds free ones so it
    // runs beside anything already listening.
    for (i, backend) in pool.backends.iter_mut().enumerate() {
        let name = format!("backend-{}", i + 1);
        backend.address = spawn_backend(name)?;
    }
    let listener = cfg
        .listeners
        .first_mut()
        .context("demo config has no listener")?;
    listener.listen = vec![listen];
    cfg.admin = Some(Admin::new(admin_listen));
    let backends: Vec<String> = pool_addrs(&cfg);
    let mut server = Server::start(cfg, StartOptions::default())
        .map_err(|e| anyhow::anyhow!("cannot start the demo: {e}"))?;
    let front = server
        .bound()
        .first()
        .map(|(_, a)| *a)
        .context("demo listener not bound")?;
    let admin = server
        .admin_addr()
        .context("demo admin server not started")?;
    eprintln!(
        "\nBallast demo: backends on {}; balancer on {front}.\nTry:\n  for i in 1 2 3 4 5 6; do curl -s http://{front}/; done\nDashboard: http://{admin}/  (metrics: http://{admin}/metrics)\nStop with Ctrl-C.\n",
        backends.join(", ")
    );
    crate::serve(&mut server, None)
}

fn pool_addrs(cfg: &config::Config) -> Vec<String> {
    cfg.pools
        .iter()
        .flat_map(|p| p.backends.iter().map(|b| b.address.to_string()))
        .collect()
}

fn spawn_backend(name: String) -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").context("demo backend bind")?;
    let addr = listener.local_addr()?;
    std::thread::Builder::new()
        .name(name.clone())
        .spawn(move || {
            for stream in listener.incoming().flatten() {
                let name = name.clone();
                std::thread::spawn(move || answer(stream, &name));
            }
        })?;
    Ok(addr)
}

/// Reads one request head (bounded in size and time) and answers with the backend's name.
fn answer(mut stream: TcpStream, name: &str) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    while head.len() < 8192 && !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let body = format!("hello from {name}\n");
    let reply = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(reply.as_bytes());
}
