//! The `ballast` binary: command line, logging and signals. It only wires things up; loading,
//! routing and the data plane live in `ballast-control` and `ballast-dataplane`.

mod access_log;
mod demo;
mod supervise;
mod upgrade_cli;

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use ballast_control::config::{self, LoadError};
use ballast_control::server::{Server, StartOptions};
use ballast_control::upgrade::{Link, Takeover};
use clap::{Parser, Subcommand, ValueEnum};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR1, SIGUSR2};
use tracing_subscriber::prelude::*;

/// Exit status of `ballast check` (and `run`) when the configuration is invalid, and of `run`
/// when it cannot be served here as written (an address in use or not local, an unreadable
/// token file). The table of every exit status is in docs/runbooks.md.
const EXIT_INVALID: u8 = 2;
/// Exit status of `run` when a second SIGTERM/SIGINT cut the drain short, or when the process
/// itself failed (threads, signal handlers).
const EXIT_FAILURE: u8 = 1;

#[derive(Parser)]
#[command(name = "ballast", version, about = "An L4 (TCP and UDP) load balancer")]
struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Log filter (tracing's EnvFilter syntax), e.g. `info`, `debug`, `ballast::access=off`.
    #[arg(long, global = true, env = "BALLAST_LOG", default_value = "info")]
    log: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the balancer with a configuration file.
    Run {
        #[arg(short, long, env = "BALLAST_CONFIG")]
        config: PathBuf,
        /// Relay with a user-space copy instead of splice(2).
        #[arg(long, hide = true)]
        force_copy: bool,
        /// Stay as a supervisor that starts the server as its child, so that binary upgrades
        /// keep this PID (the default when this is PID 1; the systemd unit passes it).
        #[arg(long, conflicts_with = "no_supervise")]
        supervise: bool,
        /// Serve in this process even as PID 1 (upgrades then change the PID).
        #[arg(long)]
        no_supervise: bool,
    },
    /// Ask a running instance to upgrade to a new binary without dropping a session: it
    /// starts the binary, hands it every socket and UDP flow, and drains once it serves.
    /// Exit 0 when the new process serves, 1 with the reasons when the old one serves on.
    Upgrade(upgrade_cli::Args),
    /// Validate a configuration file: exit 0 when valid, 2 with every error when not.
    Check {
        #[arg(short, long, env = "BALLAST_CONFIG")]
        config: PathBuf,
    },
    /// Start built-in demo backends and a balancer in front of them.
    Demo {
        /// Address of the demo listener.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: std::net::SocketAddr,
        /// Address of the admin API and dashboard.
        #[arg(long, default_value = "127.0.0.1:9190")]
        admin_listen: std::net::SocketAddr,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format, &cli.log);
    let result = match cli.command {
        Command::Check { config } => return check(&config),
        Command::Run {
            config,
            force_copy,
            supervise: on,
            no_supervise: off,
        } => {
            let flag = if on { Some(true) } else { off.then_some(false) };
            if supervise::wanted(flag) {
                return supervise::run(std::env::args_os().skip(1).collect());
            }
            return run(config, force_copy);
        }
        Command::Upgrade(args) => return upgrade_cli::run(&args),
        Command::Demo {
            listen,
            admin_listen,
        } => demo::run(listen, admin_listen),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

fn init_logging(format: LogFormat, filter: &str) {
    let mut parsed = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // aya warns at every load about the socket-storage maps it has no type for, which the
    // fast path loads on purpose; its errors still show. An operator's own `aya` directive wins.
    if !filter.contains("aya") {
        if let Ok(quiet) = "aya::bpf=error".parse() {
            parsed = parsed.add_directive(quiet);
        }
    }
    let filter = parsed;
    // Access lines leave stderr once `access_log` sends them to a file or syslog.
    let not_redirected = tracing_subscriber::filter::filter_fn(|meta| {
        meta.target() != access_log::TARGET || !access_log::redirected()
    });
    let stderr = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let stderr = match format {
        LogFormat::Text => stderr.with_filter(not_redirected).boxed(),
        LogFormat::Json => stderr.json().with_filter(not_redirected).boxed(),
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(stderr)
        .with(access_log::AccessLayer)
        .init();
}

/// Prints every problem of an invalid file on stderr; the same loader as `run`.
fn report(err: &LoadError) {
    eprintln!("{err}");
}

fn load(path: &Path) -> Result<config::Config, LoadError> {
    let loaded = config::load_file(path)?;
    for warning in &loaded.warnings {
        tracing::warn!("{warning}");
    }
    Ok(loaded.config)
}

/// `ballast run`: started by hand, or by a running instance as its upgrade (then a
/// [`Takeover`] comes with the process, and every failure is reported to the old one too).
fn run(config: PathBuf, force_copy: bool) -> ExitCode {
    let (link, takeover) = match Takeover::from_env() {
        Ok(Some((link, takeover))) => {
            tracing::info!(
                from = takeover.parent_pid,
                "upgrade: taking over the sockets of the running process"
            );
            (Some(link), Some(takeover))
        }
        Ok(None) => (None, None),
        Err(e) => {
            tracing::error!("upgrade: cannot take over: {e}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    let fail = |lines: Vec<String>| {
        if let Some(link) = &link {
            link.fail(lines);
        }
    };
    let loaded = match load(&config) {
        Ok(loaded) => loaded,
        Err(e) => {
            report(&e);
            fail(e.to_string().lines().map(str::to_string).collect());
            return ExitCode::from(EXIT_INVALID);
        }
    };
    if let Err(e) = access_log::start(&loaded.access_log.output) {
        tracing::error!("cannot open the access log: {e}");
        fail(vec![format!("cannot open the access log: {e}")]);
        return ExitCode::from(EXIT_INVALID);
    }
    let options = StartOptions {
        force_copy,
        config_path: Some(config),
        takeover,
    };
    let mut server = match Server::start(loaded, options) {
        Ok(server) => server,
        Err(e) => {
            // One line: the error's text already carries its cause.
            tracing::error!("cannot start: {e}");
            fail(vec![format!("cannot start: {e}")]);
            let code = if e.is_configuration() {
                EXIT_INVALID
            } else {
                EXIT_FAILURE
            };
            return ExitCode::from(code);
        }
    };
    match serve(&mut server, link) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

fn check(path: &Path) -> ExitCode {
    match config::load_file(path) {
        Ok(loaded) => {
            for warning in &loaded.warnings {
                eprintln!("warning: {warning}");
            }
            println!("{}: ok", path.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            report(&e);
            ExitCode::from(EXIT_INVALID)
        }
    }
}

/// How often the signal loop looks whether an upgrade asked through the admin API handed
/// this process's sockets over.
const HANDOVER_POLL: Duration = Duration::from_millis(50);

/// Serves until SIGTERM or SIGINT, or until an upgrade (SIGUSR2 or the admin API) hands
/// everything to a new process, then drains; SIGHUP reloads the configuration file, SIGUSR1
/// reopens the access log file (after logrotate moved it). A second
/// SIGTERM or SIGINT closes every session and exits 1 at once. With `link` (this process is
/// an upgrade's new one), tells the old process it is ready and takes its UDP flows first.
pub(crate) fn serve(server: &mut Server, link: Option<Link>) -> anyhow::Result<()> {
    let mut signals =
        signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP, SIGUSR1, SIGUSR2])
            .context("cannot install signal handlers")?;
    for (listener, addr) in server.bound() {
        tracing::info!(listener = %listener, addr = %addr, "listening");
    }
    // Held for the process's life: the servers an upgrade starts inherit it. Told before the
    // old process is, so the supervisor knows this one before the old one can exit.
    let mut supervisor = None;
    supervise::announce_ready(&mut supervisor);
    if let Some(link) = link {
        let flows = link.ready(server.predecessors());
        let count: usize = flows.iter().map(Vec::len).sum();
        server.adopt_flows(flows);
        tracing::info!(udp_flows = count, "upgrade: took over from the old process");
    }
    tracing::info!("ready");
    'wait: loop {
        for signal in signals.pending() {
            match signal {
                SIGHUP => {
                    tracing::info!("SIGHUP: reloading the configuration");
                    // The outcome is logged and counted by the control plane.
                    let _ = server.reload();
                }
                SIGUSR1 => access_log::reopen(),
                SIGUSR2 => {
                    tracing::info!("SIGUSR2: upgrading to a new process");
                    // Logged by the control plane; on success handed_over() is now true.
                    let _ = server.upgrade(None);
                }
                _ => break 'wait,
            }
        }
        if server.handed_over() {
            break 'wait;
        }
        std::thread::sleep(HANDOVER_POLL);
    }
    let grace = server.grace();
    // After a handover the new process serves already: nothing to withdraw from.
    if !grace.is_zero() && !server.handed_over() {
        tracing::info!(
            ?grace,
            "stopping: not ready, still serving for the grace period"
        );
        server.withdraw();
        let until = Instant::now() + grace;
        while Instant::now() < until {
            if stop_asked(&mut signals) {
                tracing::warn!("second signal: grace cut short");
                break;
            }
            std::thread::sleep(
                Duration::from_millis(20).min(until.saturating_duration_since(Instant::now())),
            );
        }
    }
    let drain_timeout = server.drain_timeout();
    tracing::info!(
        ?drain_timeout,
        "stopping: no new connections; draining sessions"
    );
    server.begin_drain();
    let deadline = Instant::now() + drain_timeout;
    loop {
        server.report_draining();
        if server.wait(Duration::from_millis(50)) {
            tracing::info!("all sessions finished; exiting");
            return Ok(());
        }
        if stop_asked(&mut signals) {
            tracing::warn!("second signal: closing every session now");
            server.shutdown();
            std::process::exit(i32::from(EXIT_FAILURE));
        }
        if Instant::now() >= deadline {
            tracing::warn!("drain timeout: closing the sessions left");
            server.shutdown();
            return Ok(());
        }
    }
}

/// While stopping: true when SIGTERM or SIGINT came again; a SIGUSR1 still reopens the access
/// log (logrotate does not wait for a drain), the others are ignored.
fn stop_asked(signals: &mut signal_hook::iterator::Signals) -> bool {
    let mut stop = false;
    for signal in signals.pending() {
        match signal {
            SIGUSR1 => access_log::reopen(),
            SIGTERM | SIGINT => stop = true,
            _ => {}
        }
    }
    stop
}
