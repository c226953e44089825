//! Where the access log goes (`access_log.file` and/or `access_log.syslog`): a tracing layer
//! takes the events of target `ballast::access`, formats each as one line and hands it to a
//! writer thread over a bounded channel, so a worker never waits for a disk or a syslog
//! daemon; a line that finds the channel full is dropped and counted (a warning on stderr
//! says how many). Without an output configured the lines stay with the other log lines on
//! stderr, as before.
//!
//! A file is opened for appending and reopened on SIGUSR1, after logrotate moved it. Syslog
//! messages are RFC 5424 (`<PRI>1 TIMESTAMP HOST APP PID access - MSG`), one per datagram, to
//! a Unix datagram socket (reconnected when the daemon restarts) or over UDP (RFC 5426).
//!
//! File descriptors: the writer thread owns the file or socket; it lives as long as the
//! process.

use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::io::{self, Write as _};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::OnceLock;

use ballast_control::config::{AccessLogOutput, Syslog, SyslogAddress};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::layer::{Context, Layer};

/// The access log's tracing target.
pub const TARGET: &str = "ballast::access";
/// Lines waiting for the writer; beyond this they are dropped rather than slow a worker.
const QUEUE: usize = 16_384;
/// RFC 5424 severity of every access line: informational.
const SEVERITY_INFO: u8 = 6;

enum Message {
    /// The line's time (RFC 3339) and text; each output adds its own framing.
    Line {
        timestamp: String,
        text: String,
    },
    Reopen,
}

struct Sink {
    tx: SyncSender<Message>,
    dropped: AtomicU64,
}

struct SyslogHeader {
    pri: u8,
    host: String,
    tag: String,
    pid: u32,
}

impl SyslogHeader {
    fn frame(&self, timestamp: &str, text: &str) -> String {
        syslog_message(self.pri, timestamp, &self.host, &self.tag, self.pid, text)
    }
}

static SINK: OnceLock<Sink> = OnceLock::new();

/// True once an output other than stderr took the access log.
pub fn redirected() -> bool {
    SINK.get().is_some()
}

/// Sends the access log to `output` from now on (stderr: nothing to do). Call it once, at
/// start; the stderr layer stops showing access lines.
pub fn start(output: &AccessLogOutput) -> io::Result<()> {
    let mut targets = Vec::new();
    if let Some(path) = &output.file {
        targets.push(Output::file(path)?);
    }
    if let Some(syslog) = &output.syslog {
        targets.push(Output::syslog(syslog)?);
    }
    if targets.is_empty() {
        return Ok(());
    }
    let (tx, rx) = sync_channel(QUEUE);
    let sink = Sink {
        tx,
        dropped: AtomicU64::new(0),
    };
    if SINK.set(sink).is_err() {
        return Err(io::Error::other("the access log output is already set"));
    }
    std::thread::Builder::new()
        .name("ballast-access-log".into())
        .spawn(move || write_all(rx, targets))?;
    // The stderr layer's filter reads `redirected()` once per call site and caches it.
    tracing::callsite::rebuild_interest_cache();
    Ok(())
}

/// Reopens the access log file (SIGUSR1); nothing for the other outputs.
pub fn reopen() {
    if let Some(sink) = SINK.get() {
        let _ = sink.tx.try_send(Message::Reopen);
    }
}

fn header(syslog: &Syslog) -> SyslogHeader {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty() && h.bytes().all(|b| b.is_ascii_graphic()))
        .unwrap_or_else(|| "-".to_string());
    SyslogHeader {
        pri: syslog.facility * 8 + SEVERITY_INFO,
        host,
        tag: syslog.tag.clone(),
        pid: std::process::id(),
    }
}

/// The layer that takes access events to the sink, when one is set.
pub struct AccessLayer;

impl<S: Subscriber> Layer<S> for AccessLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        if event.metadata().target() != TARGET {
            return;
        }
        let Some(sink) = SINK.get() else {
            return;
        };
        let mut fields = Fields::default();
        event.record(&mut fields);
        let mut timestamp = String::new();
        let _ = SystemTime.format_time(&mut Writer::new(&mut timestamp));
        let line = Message::Line {
            timestamp,
            text: fields.text(),
        };
        match sink.tx.try_send(line) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                sink.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// An RFC 5424 message: `<PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID SD MSG`, with MSGID
/// `access` and no structured data. Pure, for the tests.
pub fn syslog_message(
    pri: u8,
    timestamp: &str,
    host: &str,
    tag: &str,
    pid: u32,
    msg: &str,
) -> String {
    format!("<{pri}>1 {timestamp} {host} {tag} {pid} access - {msg}")
}

/// An event's message and `key=value` fields, in their order.
#[derive(Default)]
struct Fields {
    message: String,
    pairs: String,
}

impl Fields {
    fn text(&self) -> String {
        if self.pairs.is_empty() {
            self.message.clone()
        } else {
            format!("{}{}", self.message, self.pairs)
        }
    }
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message = value.to_string();
        } else if value.is_empty() || value.contains(|c: char| c.is_whitespace() || c == '"') {
            let _ = write!(self.pairs, " {}={value:?}", field.name());
        } else {
            let _ = write!(self.pairs, " {}={value}", field.name());
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        // `%` fields (Display) arrive here too, already formatted by their Display.
        let text = format!("{value:?}");
        self.record_str(field, &text);
    }
}

/// A file or socket the writer thread owns.
enum Output {
    File {
        path: PathBuf,
        file: File,
    },
    Unix {
        header: SyslogHeader,
        path: PathBuf,
        socket: Option<UnixDatagram>,
    },
    Udp {
        header: SyslogHeader,
        socket: std::net::UdpSocket,
    },
}

impl Output {
    fn file(path: &Path) -> io::Result<Output> {
        Ok(Output::File {
            path: path.to_path_buf(),
            file: open_append(path)?,
        })
    }

    fn syslog(syslog: &Syslog) -> io::Result<Output> {
        let header = header(syslog);
        match &syslog.address {
            SyslogAddress::Unix(path) => Ok(Output::Unix {
                header,
                path: path.clone(),
                // A daemon that is not there yet is connected to at the first line.
                socket: connect_unix(path).ok(),
            }),
            SyslogAddress::Udp(addr) => {
                let local: std::net::SocketAddr = if addr.is_ipv4() {
                    ([0, 0, 0, 0], 0).into()
                } else {
                    ([0u16; 8], 0).into()
                };
                let socket = std::net::UdpSocket::bind(local)?;
                socket.connect(addr)?;
                Ok(Output::Udp { header, socket })
            }
        }
    }

    fn write(&mut self, timestamp: &str, text: &str) -> io::Result<()> {
        match self {
            Output::File { file, .. } => file.write_all(format!("{timestamp} {text}\n").as_bytes()),
            Output::Unix {
                header,
                path,
                socket,
            } => {
                if socket.is_none() {
                    *socket = Some(connect_unix(path)?);
                }
                let message = header.frame(timestamp, text);
                let sent = socket.as_ref().map(|s| s.send(message.as_bytes()));
                match sent {
                    Some(Ok(_)) | None => Ok(()),
                    Some(Err(e)) => {
                        // The daemon restarted (a new socket at the same path): reconnect
                        // for the next line.
                        *socket = None;
                        Err(e)
                    }
                }
            }
            Output::Udp { header, socket } => socket
                .send(header.frame(timestamp, text).as_bytes())
                .map(|_| ()),
        }
    }

    fn reopen(&mut self) -> io::Result<()> {
        if let Output::File { path, file } = self {
            *file = open_append(path)?;
        }
        Ok(())
    }
}

fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

fn connect_unix(path: &Path) -> io::Result<UnixDatagram> {
    let socket = UnixDatagram::unbound()?;
    socket.connect(path)?;
    Ok(socket)
}

/// The writer thread: lines in order, a reopen when asked; failures are reported on stderr,
/// once until the output works again.
fn write_all(rx: Receiver<Message>, mut outputs: Vec<Output>) {
    let mut failing = vec![false; outputs.len()];
    while let Ok(message) = rx.recv() {
        for (output, failing) in outputs.iter_mut().zip(failing.iter_mut()) {
            let result = match &message {
                Message::Line { timestamp, text } => output.write(timestamp, text),
                Message::Reopen => output.reopen(),
            };
            match result {
                Ok(()) => *failing = false,
                Err(e) if !*failing => {
                    *failing = true;
                    tracing::warn!(error = %e, "cannot write the access log");
                }
                Err(_) => {}
            }
        }
        if matches!(message, Message::Reopen) {
            tracing::info!("SIGUSR1: access log reopened");
        }
        if let Some(sink) = SINK.get() {
            let dropped = sink.dropped.swap(0, Ordering::Relaxed);
            if dropped > 0 {
                tracing::warn!(dropped, "access log lines dropped: the output is too slow");
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_syslog_message_is_rfc_5424() {
        // local0 (16) at informational (6): 134.
        let m = syslog_message(
            134,
            "2026-01-02T03:04:05.678901Z",
            "lb1",
            "ballast",
            42,
            "session closed listener=db end=closed",
        );
        assert_eq!(
            m,
            "<134>1 2026-01-02T03:04:05.678901Z lb1 ballast 42 access - session closed listener=db end=closed"
        );
    }

    #[test]
    fn a_file_output_appends_and_reopens_after_a_rotation() {
        let dir = std::env::temp_dir().join(format!("ballast-access-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("access.log");
        let mut output = Output::file(&path).unwrap();
        output.write("t1", "one").unwrap();
        std::fs::rename(&path, dir.join("access.log.1")).unwrap();
        output.write("t2", "two").unwrap();
        output.reopen().unwrap();
        output.write("t3", "three").unwrap();
        let rotated = std::fs::read_to_string(dir.join("access.log.1")).unwrap();
        let fresh = std::fs::read_to_string(&path).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(rotated, "t1 one\nt2 two\n");
        assert_eq!(fresh, "t3 three\n");
    }
}
