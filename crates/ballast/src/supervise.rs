//! The process that stays: when `ballast run` is PID 1 (a container) or is asked to
//! (`--supervise`, as the systemd unit does), it becomes a supervisor that holds no socket and starts the
//! server as its child. A binary upgrade then replaces the server (the new one is the old
//! one's child; the old one exits once drained) while the PID that Docker, Kubernetes or
//! systemd watch never changes.
//!
//! The supervisor is a subreaper (each old server's child, the new server, is re-parented to
//! it when the old one exits). Each server, once ready, announces its pid on a datagram
//! socket it inherited ([`SOCKET_ENV`]); the supervisor forwards SIGTERM, SIGINT, SIGHUP and
//! SIGUSR2 to the server that announced last, reaps every process that exits, and exits with
//! the status of the current server when that one exits.
//!
//! File descriptors: the supervisor owns its end of the announcement socket pair; the other
//! end is inherited, without close-on-exec, by the first server and from it by every server
//! an upgrade starts (so they all announce on the same socket). Nothing else.

use std::ffi::OsString;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixDatagram;
use std::process::{Command, ExitCode};
use std::time::Duration;

use ballast_dataplane::sys;
use signal_hook::consts::{SIGCHLD, SIGHUP, SIGINT, SIGTERM, SIGUSR2};
use socket2::SockRef;

/// Set in every server a supervisor starts: the descriptor to announce the pid on.
pub const SOCKET_ENV: &str = "BALLAST_SUPERVISOR_FD";

/// Whether `ballast run` should supervise: asked for, or PID 1, and not itself a
/// supervisor's server. systemd is not guessed from its environment (a CI job or a shell in a
/// unit would inherit it): the shipped unit passes `--supervise`.
pub fn wanted(flag: Option<bool>) -> bool {
    if std::env::var_os(SOCKET_ENV).is_some() {
        return false;
    }
    flag.unwrap_or_else(|| std::process::id() == 1)
}

/// Starts `ballast` with `args` (this process's own) as the first server and supervises it
/// and its successors until the current one exits; returns its exit status.
pub fn run(args: Vec<OsString>) -> ExitCode {
    match supervise(args) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            tracing::error!("supervisor: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn supervise(args: Vec<OsString>) -> anyhow::Result<u8> {
    use anyhow::Context;
    sys::set_child_subreaper().context("cannot become a subreaper")?;
    let mut signals =
        signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP, SIGUSR2, SIGCHLD])
            .context("cannot install signal handlers")?;
    let (ours, theirs) = UnixDatagram::pair().context("cannot make the announcement socket")?;
    SockRef::from(&theirs)
        .set_cloexec(false)
        .context("cannot pass the announcement socket on")?;
    ours.set_read_timeout(Some(Duration::from_millis(100)))
        .context("announcement socket")?;
    let binary = std::env::current_exe().context("cannot find this binary")?;
    let first = Command::new(&binary)
        .args(args)
        .env(SOCKET_ENV, theirs.as_raw_fd().to_string())
        .spawn()
        .with_context(|| format!("cannot start {}", binary.display()))?;
    drop(theirs);
    let mut servers = Servers::started(first.id());
    tracing::info!(
        pid = std::process::id(),
        server = first.id(),
        "supervisor: server started"
    );
    // The first server is reaped below by pid, with every other child.
    drop(first);
    loop {
        read_announcements(&ours, &mut servers, true);
        for signal in signals.pending() {
            if signal == SIGCHLD {
                continue;
            }
            let Some(current) = servers.current() else {
                continue;
            };
            if let Err(e) = sys::send_signal(current, signal) {
                tracing::warn!(server = current, signal, error = %e, "supervisor: cannot forward a signal");
            }
        }
        while let Some((pid, code)) = sys::reap_any_child() {
            // A server announces before it tells the old one it is ready, so whatever the
            // old one's exit can race with is already queued: read it first.
            read_announcements(&ours, &mut servers, false);
            if servers.exited(pid) {
                tracing::info!(
                    server = pid,
                    code,
                    "supervisor: the last server exited; exiting with its status"
                );
                return Ok(code);
            }
        }
    }
}

/// Reads the pids announced on `socket`: every one queued, after waiting up to the socket's
/// read timeout for the first when `wait`.
fn read_announcements(socket: &UnixDatagram, servers: &mut Servers, wait: bool) {
    let mut buf = [0u8; 16];
    let mut blocking = wait;
    loop {
        if socket.set_nonblocking(!blocking).is_err() {
            return;
        }
        blocking = false;
        let Ok(n) = socket.recv(&mut buf) else {
            return;
        };
        if let Some(pid) = announced_pid(buf.get(..n).unwrap_or_default()) {
            let previous = servers.current();
            servers.announced(pid);
            if previous != Some(pid) {
                tracing::info!(server = pid, ?previous, "supervisor: a new server is ready");
            }
        }
    }
}

/// The servers alive that this supervisor knows of, oldest announcement first: the last one
/// is current (it gets the signals). A server that dies after announcing but before the old
/// one handed over (the old one then keeps serving) leaves the old one current again.
#[derive(Debug)]
struct Servers(Vec<u32>);

impl Servers {
    fn started(pid: u32) -> Self {
        Self(vec![pid])
    }

    fn current(&self) -> Option<u32> {
        self.0.last().copied()
    }

    fn announced(&mut self, pid: u32) {
        self.0.retain(|&p| p != pid);
        self.0.push(pid);
    }

    /// Forgets `pid` (any child may exit: an upgrade's process that never got ready too);
    /// true when no known server is left.
    fn exited(&mut self, pid: u32) -> bool {
        self.0.retain(|&p| p != pid);
        self.0.is_empty()
    }
}

/// The pid in an announcement: its decimal digits.
fn announced_pid(message: &[u8]) -> Option<u32> {
    std::str::from_utf8(message).ok()?.trim().parse().ok()
}

/// Tells this process's supervisor, if it has one, that this server is ready and serves.
/// Keeps the socket open (and inheritable) for the servers an upgrade starts.
pub fn announce_ready(socket: &mut Option<OwnedFd>) {
    if socket.is_none() {
        let Some(raw) = std::env::var(SOCKET_ENV)
            .ok()
            .and_then(|v| v.parse::<i32>().ok())
        else {
            return;
        };
        match sys::adopt_inherited_socket(raw) {
            Ok(fd) => *socket = Some(fd),
            Err(e) => {
                tracing::warn!(error = %e, "cannot reach the supervisor");
                return;
            }
        }
    }
    let Some(fd) = socket.as_ref() else {
        return;
    };
    let Ok(clone) = fd.try_clone() else {
        return;
    };
    let datagram = UnixDatagram::from(clone);
    if let Err(e) = datagram.send(std::process::id().to_string().as_bytes()) {
        tracing::warn!(error = %e, "cannot tell the supervisor this server is ready");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_announced_live_server_is_current() {
        let mut servers = Servers::started(10);
        assert_eq!(servers.current(), Some(10));
        servers.announced(10);
        servers.announced(20);
        assert_eq!(servers.current(), Some(20));
        // The old one drains and exits: the new one stays current.
        assert!(!servers.exited(10));
        assert_eq!(servers.current(), Some(20));
        // An upgrade's process that never announced exits: nothing changes.
        assert!(!servers.exited(25));
        servers.announced(30);
        // The newest dies before the handover completes: the one before is current again.
        assert!(!servers.exited(30));
        assert_eq!(servers.current(), Some(20));
        assert!(servers.exited(20));
        assert_eq!(servers.current(), None);
    }

    #[test]
    fn announcements_are_decimal_pids() {
        assert_eq!(announced_pid(b"4242"), Some(4242));
        assert_eq!(announced_pid(b" 7\n"), Some(7));
        assert_eq!(announced_pid(b"x"), None);
        assert_eq!(announced_pid(&[0xff, 0xfe]), None);
    }
}
