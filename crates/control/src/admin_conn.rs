//! The admin server's accept loop: a bounded number of connections, each with a header-read
//! timeout and an idle timeout, so that slow or idle clients cannot hold descriptors the data
//! plane needs.
//!
//! Our own loop on hyper's HTTP/1 connection rather than `axum::serve`: `axum::serve` accepts
//! without limit and sets no timer, so hyper's `header_read_timeout` never applies there, and
//! it has no hook to refuse a connection. Here a semaphore caps the connections served at once
//! (one beyond the cap is closed on accept, never queued: a queue is where a slowloris waits),
//! hyper closes a connection whose request head does not arrive within `header_timeout`
//! (counted from accept, and again from each response on a kept-alive connection), and a
//! watchdog closes one on which no byte moved for `idle_timeout` (a stalled response write or
//! a dribbled body). The admin side thus holds at most `max_connections` + 1 descriptors.
//!
//! File descriptors: the listening socket belongs to the accept task; each accepted socket
//! to its connection task, which closes it when it ends or a timeout fires.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

/// The connection limits of `admin:` (see [`crate::config::Admin`]).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_connections: usize,
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
}

/// After an accept error (most often EMFILE: the data plane holds every descriptor) wait this
/// long before the next accept, so the loop does not spin while the condition lasts.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);
/// At most one log line per this period about connections refused at the cap.
const REFUSED_LOG_PERIOD: Duration = Duration::from_secs(10);

/// Serves `app` on `listener` until the runtime stops.
pub async fn serve(listener: TcpListener, app: Router, limits: Limits) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(true);
    let mut refused: u64 = 0;
    let mut last_report: Option<Instant> = None;
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _peer)) => stream,
            Err(error) => {
                tracing::warn!(%error, "admin: accept failed");
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            // Dropping the socket closes it at once.
            drop(stream);
            refused += 1;
            if last_report.is_none_or(|at| at.elapsed() >= REFUSED_LOG_PERIOD) {
                tracing::warn!(
                    max_connections = limits.max_connections,
                    refused,
                    "admin: connection limit reached; new connections are closed at once"
                );
                last_report = Some(Instant::now());
                refused = 0;
            }
            continue;
        };
        let service = TowerToHyperService::new(app.clone());
        let http = http.clone();
        tokio::spawn(async move {
            let activity = Activity::new();
            let io = TokioIo::new(Watched {
                inner: stream,
                activity: activity.clone(),
            });
            let connection = http.serve_connection(io, service);
            tokio::select! {
                result = connection => {
                    if let Err(error) = result {
                        // Header timeouts, resets, malformed requests: the client's doing.
                        tracing::debug!(%error, "admin connection closed");
                    }
                }
                () = activity.idle_for(limits.idle_timeout) => {
                    tracing::debug!("admin connection idle; closed");
                }
            }
            drop(permit);
        });
    }
}

/// When a connection last moved a byte, in milliseconds since it was accepted.
#[derive(Clone)]
struct Activity {
    start: Instant,
    last_ms: Arc<AtomicU64>,
}

impl Activity {
    fn new() -> Self {
        Self {
            start: Instant::now(),
            last_ms: Arc::new(AtomicU64::new(0)),
        }
    }

    fn touch(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// Resolves once no byte has moved for `timeout`.
    async fn idle_for(&self, timeout: Duration) {
        loop {
            let last = self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
            let deadline = last + timeout;
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline.into()).await;
        }
    }
}

/// A socket that records each read or write that moved bytes.
struct Watched {
    inner: TcpStream,
    activity: Activity,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.touch();
        }
        result
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        result
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
