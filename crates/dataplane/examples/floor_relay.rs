//! A floor for the TCP benchmarks, not a part of Ballast: a relay that makes the system calls
//! Ballast makes per connection and per byte, and nothing else. Same mio event loop (epoll,
//! edge-triggered), TCP_NODELAY set once on the listener and inherited, accept4, a non-blocking
//! connect, reads into one shared 16 KiB scratch buffer written out at once, splice through a
//! 1 MiB pipe once a read fills the scratch buffer, no read after a short one, a source out of
//! the read interest while its destination is full, and no shutdown by the direction that ends
//! last (close sends that FIN). There is one backend per listener, and no routing snapshot,
//! balancing, metrics, timers, limits, PROXY header or logging.
//! `scripts/bench-peers.sh --floor` measures it side by side with Ballast and the peers: Ballast ÷
//! floor says what Ballast's features cost, and the floor's own distance from HAProxy says what
//! any relay built on these calls can reach.
//!
//! ```sh
//! # LISTEN=BACKEND, as many pairs as wanted, all served by one thread
//! cargo run --release -p ballast-dataplane --example floor_relay -- \
//!     127.0.0.1:9000=127.0.0.1:80 127.0.0.1:9001=127.0.0.1:5201
//! ```
//!
//! Descriptors: the relay owns its listeners, both sockets of a connection (in its slab entry)
//! and, once a direction moved to splice, that direction's pipe; dropping the entry closes them.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::os::fd::{AsFd, OwnedFd};

use anyhow::{bail, Context};
use ballast_dataplane::sys;
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use slab::Slab;
use socket2::{Domain, Socket, Type};

/// Listener `i` has the token `LISTENERS - i`; connection `c` has `2c` (client) and `2c + 1`.
const LISTENERS: usize = usize::MAX;
const SCRATCH: usize = 16 * 1024;
const PIPE: usize = 1 << 20;

/// One direction of a connection.
#[derive(Default)]
struct Direction {
    /// Bytes a write did not take, copied out of the scratch buffer (rare: a full send buffer).
    held: Vec<u8>,
    held_from: usize,
    /// Once a read filled the scratch buffer: the pipe (read end, write end) and its fill.
    pipe: Option<(OwnedFd, OwnedFd)>,
    in_pipe: usize,
    /// The source reported end of stream (RDHUP): read until 0, not only until a short read.
    hangup: bool,
    eof: bool,
    done: bool,
    /// The source is out of epoll's read interest while bytes wait for a full destination.
    muted: bool,
}

fn would_block(e: &io::Error) -> bool {
    // NotConnected: the connect is still on its way; its writable edge brings us back.
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::NotConnected
    )
}

impl Direction {
    fn holds_bytes(&self) -> bool {
        self.held_from < self.held.len() || self.in_pipe > 0
    }

    /// Writes out what is held; `Ok(false)` when `to` would block first.
    fn flush(&mut self, to: &mut TcpStream) -> io::Result<bool> {
        loop {
            // Held bytes before the pipe's: a direction that just moved to splice may have both.
            let written = if self.held_from < self.held.len() {
                to.write(&self.held[self.held_from..])
                    .map(|n| self.held_from += n)
            } else if let (Some((read_end, _)), true) = (&self.pipe, self.in_pipe > 0) {
                sys::splice(read_end.as_fd(), to.as_fd(), self.in_pipe).map(|n| self.in_pipe -= n)
            } else {
                self.held.clear();
                self.held_from = 0;
                return Ok(true);
            };
            match written {
                Ok(()) => {}
                Err(e) if would_block(&e) => return Ok(false),
                Err(e) => return Err(e),
            }
        }
    }

    /// Moves bytes until one side would block or the stream ends; `Err` ends the connection.
    fn pump(
        &mut self,
        from: &mut TcpStream,
        to: &mut TcpStream,
        scratch: &mut [u8],
        other_done: bool,
    ) -> io::Result<()> {
        while !self.done {
            if !self.flush(to)? {
                return Ok(());
            }
            if self.eof {
                if !other_done {
                    // The peer may have reset already; the relay ends either way.
                    let _ = to.shutdown(Shutdown::Write);
                }
                self.done = true;
                return Ok(());
            }
            let read = match &self.pipe {
                Some((_, write_end)) => sys::splice(from.as_fd(), write_end.as_fd(), PIPE),
                None => from.read(scratch),
            };
            let n = match read {
                Ok(0) => {
                    self.eof = true;
                    continue;
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(e),
            };
            let asked = if self.pipe.is_some() {
                self.in_pipe = n;
                PIPE
            } else {
                let mut written = 0;
                while written < n {
                    match to.write(&scratch[written..n]) {
                        Ok(w) => written += w,
                        Err(e) if would_block(&e) => break,
                        Err(e) => return Err(e),
                    }
                }
                self.held.extend_from_slice(&scratch[written..n]);
                if n == SCRATCH {
                    // A full scratch buffer is a bulk stream: splice from now on.
                    let (read_end, write_end) = sys::pipe()?;
                    sys::set_pipe_size(write_end.as_fd(), PIPE)?;
                    self.pipe = Some((read_end, write_end));
                }
                SCRATCH
            };
            // A short read drained the socket: new bytes raise a new edge, so another read now
            // would return EAGAIN, unless the stream ended and its edge is already spent.
            if n < asked && !self.hangup {
                self.flush(to)?;
                return Ok(());
            }
        }
        Ok(())
    }
}

struct Connection {
    client: TcpStream,
    backend: TcpStream,
    upstream: Direction,
    downstream: Direction,
}

fn listen(address: SocketAddr) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(address), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    // Accepted sockets inherit it: no setsockopt per connection.
    socket.set_nodelay(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&address.into())?;
    socket.listen(1024)?;
    Ok(TcpListener::from_std(socket.into()))
}

fn main() -> anyhow::Result<()> {
    let mut poll = Poll::new()?;
    let mut listeners = Vec::new();
    for pair in std::env::args().skip(1) {
        let (listen_addr, backend) = pair
            .split_once('=')
            .with_context(|| format!("{pair}: expected LISTEN_ADDR=BACKEND_ADDR"))?;
        let listen_addr: SocketAddr = listen_addr
            .parse()
            .with_context(|| format!("{pair}: listen address"))?;
        let backend: SocketAddr = backend
            .parse()
            .with_context(|| format!("{pair}: backend address"))?;
        let mut listener = listen(listen_addr).with_context(|| format!("bind {listen_addr}"))?;
        let token = Token(LISTENERS - listeners.len());
        poll.registry()
            .register(&mut listener, token, Interest::READABLE)?;
        listeners.push((listener, backend));
    }
    if listeners.is_empty() {
        bail!("usage: floor_relay LISTEN_ADDR=BACKEND_ADDR...");
    }
    let mut connections: Slab<Connection> = Slab::new();
    let mut events = Events::with_capacity(1024);
    let mut scratch = vec![0u8; SCRATCH];
    loop {
        if let Err(e) = poll.poll(&mut events, None) {
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e.into());
        }
        for event in &events {
            if let Some((listener, backend)) = listeners.get(LISTENERS - event.token().0) {
                accept_all(listener, &mut poll, &mut connections, *backend);
                continue;
            }
            let (id, on_backend) = (event.token().0 / 2, event.token().0 % 2 == 1);
            let Some(connection) = connections.get_mut(id) else {
                continue;
            };
            let Connection {
                client,
                backend,
                upstream,
                downstream,
            } = connection;
            if event.is_read_closed() {
                let source = if on_backend {
                    &mut *downstream
                } else {
                    &mut *upstream
                };
                source.hangup = true;
            }
            // Pump only the directions the event concerns: a readable source or a writable
            // destination (an error: both, to find out).
            let error = event.is_error();
            let (up, down) = if on_backend {
                (event.is_writable() || error, event.is_readable() || error)
            } else {
                (event.is_readable() || error, event.is_writable() || error)
            };
            let mut result = Ok(());
            if up {
                result = upstream.pump(client, backend, &mut scratch, downstream.done);
            }
            if result.is_ok() && down {
                result = downstream.pump(backend, client, &mut scratch, upstream.done);
            }
            if result.is_err() || (upstream.done && downstream.done) {
                connections.remove(id);
                continue;
            }
            // As Ballast does: a source waiting on a full destination leaves the read
            // interest, so its new bytes do not wake the loop for nothing.
            let registry = poll.registry();
            for (direction, source, token) in [
                (&mut *upstream, &mut *client, Token(id * 2)),
                (&mut *downstream, &mut *backend, Token(id * 2 + 1)),
            ] {
                let mute = direction.holds_bytes();
                if mute != direction.muted {
                    let interest = if mute {
                        Interest::WRITABLE
                    } else {
                        Interest::READABLE | Interest::WRITABLE
                    };
                    if registry.reregister(source, token, interest).is_ok() {
                        direction.muted = mute;
                    }
                }
            }
        }
    }
}

fn accept_all(
    listener: &TcpListener,
    poll: &mut Poll,
    connections: &mut Slab<Connection>,
    backend_addr: SocketAddr,
) {
    loop {
        let client = match listener.accept() {
            Ok((client, _)) => client,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e) => {
                eprintln!("accept: {e}");
                return;
            }
        };
        let Ok(backend) = TcpStream::connect(backend_addr) else {
            continue;
        };
        if backend.set_nodelay(true).is_err() {
            continue;
        }
        let entry = connections.vacant_entry();
        let id = entry.key();
        let connection = entry.insert(Connection {
            client,
            backend,
            upstream: Direction::default(),
            downstream: Direction::default(),
        });
        let both = Interest::READABLE | Interest::WRITABLE;
        let registered = poll
            .registry()
            .register(&mut connection.client, Token(id * 2), both)
            .and_then(|()| {
                poll.registry()
                    .register(&mut connection.backend, Token(id * 2 + 1), both)
            });
        if registered.is_err() {
            connections.remove(id);
        }
    }
}
