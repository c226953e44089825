//! `ballast upgrade`: asks a running instance, through its admin API, to upgrade itself
//! (`POST /api/v1/upgrade` with the token), and prints its answer.
//!
//! The admin API rather than a signal: SIGUSR2 does the same upgrade but cannot say whether
//! it worked (only the log says), where the API answers once the new process serves, or with
//! the reasons it was refused. The instance is found from its configuration file (the admin
//! address and token file there), as `ballast check` reads it, or from `--admin`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use ballast_control::config;
use ballast_control::upgrade::READY_TIMEOUT;

#[derive(clap::Args)]
pub struct Args {
    /// The running instance's configuration file: its `admin.listen` and `admin.token_file`
    /// say where to ask and with which token.
    #[arg(short, long, env = "BALLAST_CONFIG")]
    config: Option<PathBuf>,
    /// The admin address to ask, instead of the one in the configuration.
    #[arg(long)]
    admin: Option<SocketAddr>,
    /// The token file, instead of the one in the configuration.
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// The binary to start (default: the path the running instance was started from).
    /// Needs a token on the instance.
    #[arg(long)]
    binary: Option<PathBuf>,
}

pub fn run(args: &Args) -> ExitCode {
    match ask(args) {
        Ok((200, body)) => {
            println!("{body}");
            ExitCode::SUCCESS
        }
        Ok((status, body)) => {
            eprintln!("upgrade refused (HTTP {status}): {body}");
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("upgrade: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn ask(args: &Args) -> anyhow::Result<(u16, String)> {
    let admin = match &args.config {
        Some(path) => {
            config::load_file(path)
                .with_context(|| format!("{}", path.display()))?
                .config
                .admin
        }
        None => None,
    };
    let addr = args
        .admin
        .or(admin.as_ref().map(|a| a.listen))
        .context("no admin address: give --admin, or --config with an `admin:` block")?;
    let token_file = args
        .token_file
        .clone()
        .or_else(|| admin.as_ref().and_then(|a| a.token_file.clone()));
    let token = token_file.as_deref().map(read_token).transpose()?;
    let body = match &args.binary {
        Some(binary) => {
            let binary = std::path::absolute(binary)
                .with_context(|| format!("--binary {}", binary.display()))?;
            serde_json::json!({ "binary": binary }).to_string()
        }
        None => String::new(),
    };
    post(addr, "/api/v1/upgrade", token.as_deref(), &body)
}

fn read_token(path: &Path) -> anyhow::Result<String> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("token file {}", path.display()))?;
    Ok(text.trim().to_string())
}

/// One `POST` with `Connection: close`; (status, body).
fn post(
    addr: SocketAddr,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> anyhow::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .with_context(|| format!("cannot reach the admin API at {addr}"))?;
    // The answer comes once the new process is ready, or refused after READY_TIMEOUT.
    let wait = READY_TIMEOUT + Duration::from_secs(30);
    stream.set_read_timeout(Some(wait))?;
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes())?;
    let mut response = Vec::new();
    // Bounded: the admin server's answers are small.
    stream.take(1 << 20).read_to_end(&mut response)?;
    let text = String::from_utf8_lossy(&response);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        bail!("no HTTP answer from {addr}");
    };
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .context("malformed HTTP answer")?;
    Ok((status, body.trim().to_string()))
}
