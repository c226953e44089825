//! Moving bytes one way between two connected TCP sockets: splice(2) through a pooled pipe,
//! or a buffer copy when no pipe can be had (fd table full) or copy is forced.
//!
//! A [`Direction`] borrows the two sockets of its session for each pump; it owns at most one
//! pipe (while bytes sit in it) or one copy buffer. Sockets are edge-triggered in mio, so a pump
//! runs until the source has nothing more (`WouldBlock`), the destination is full
//! (`WouldBlock`), or the stream ended.

use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::fd::AsFd;

use mio::net::TcpStream;

use crate::pipes::{Pipe, PipePool};
use crate::sys;

/// Bytes of the copy buffer used when splice is not possible.
const COPY_BUFFER: usize = 64 * 1024;

enum SmallStep {
    Again,
    Stop,
}

/// When a pump may stop reading its source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadStop {
    /// Read until the socket says `WouldBlock`: nothing is known of what is queued.
    WouldBlock,
    /// The pump runs because the source's readable edge fired (without end of stream or error):
    /// a small read that returns less than asked drained the socket, and any later data raises
    /// a new edge, so the read that would only return `WouldBlock` is skipped. One syscall
    /// less per message each way; splice reads never use this, as a short splice can mean a
    /// full pipe rather than an empty socket.
    ShortRead,
}

/// Bytes of each worker's scratch buffer for small reads; a read that fills it moves the
/// direction to splice.
pub const SCRATCH: usize = 16 * 1024;

/// Which side of a session an I/O error came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Client,
    Backend,
}

#[derive(Debug)]
pub struct PumpError {
    pub side: Side,
    pub error: io::Error,
    /// Bytes this call moved before the error: they reached the destination and count.
    pub moved: u64,
}

#[derive(Debug)]
enum Mode {
    /// Every direction starts here: reads go through the worker's scratch buffer and are
    /// written at once, so small exchanges (a Redis GET, an HTTP request) cost one read and
    /// one write and hold no pipe. A read that fills the scratch buffer marks a bulk stream,
    /// and the direction moves to splice for good. What a full destination does not take
    /// waits in `prefix`, the same backlog that carries PROXY headers.
    Small,
    Splice {
        pipe: Option<Pipe>,
    },
    Copy {
        buf: Box<[u8]>,
        start: usize,
        end: usize,
    },
}

/// One direction of a relay (client→backend or backend→client).
#[derive(Debug)]
pub struct Direction {
    mode: Mode,
    /// Bytes read from the source and not yet written to the destination.
    pending: usize,
    /// The source reached end of stream.
    pub eof: bool,
    /// The destination's write side was shut down after `eof` and an empty buffer.
    pub shut: bool,
    /// Bytes written to the destination so far.
    pub bytes: u64,
    /// Bytes to write before anything read from the source: a PROXY header for the backend,
    /// and client bytes already read while routing (a ClientHello). Empty on most sessions.
    prefix: Vec<u8>,
    prefix_sent: usize,
    src_side: Side,
    dst_side: Side,
}

impl Direction {
    pub fn new(src_side: Side, dst_side: Side, force_copy: bool) -> Self {
        let mode = if force_copy {
            Mode::Copy {
                buf: vec![0u8; COPY_BUFFER].into_boxed_slice(),
                start: 0,
                end: 0,
            }
        } else {
            Mode::Small
        };
        Self {
            mode,
            pending: 0,
            eof: false,
            shut: false,
            bytes: 0,
            prefix: Vec::new(),
            prefix_sent: 0,
            src_side,
            dst_side,
        }
    }

    /// True when this direction has nothing left to do.
    pub fn done(&self) -> bool {
        self.eof && self.pending == 0 && self.shut
    }

    /// True when bytes read from the source wait for the destination to take them.
    pub fn wants_writable(&self) -> bool {
        self.pending > 0 || self.prefix_sent < self.prefix.len()
    }

    /// Queues bytes to write to the destination before relaying from the source.
    pub fn set_prefix(&mut self, prefix: Vec<u8>) {
        self.prefix = prefix;
        self.prefix_sent = 0;
    }

    /// Writes what is left of the prefix; `Ok(true)` once it is all out.
    fn flush_prefix(&mut self, dst: &mut TcpStream, moved: &mut u64) -> Result<bool, PumpError> {
        while self.prefix_sent < self.prefix.len() {
            match dst.write(&self.prefix[self.prefix_sent..]) {
                Ok(0) => {
                    return Err(self.err(self.dst_side, io::ErrorKind::WriteZero.into()));
                }
                Ok(n) => {
                    self.prefix_sent += n;
                    *moved += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.err(self.dst_side, e)),
            }
        }
        if !self.prefix.is_empty() {
            // Free the memory: the prefix is written once per session.
            self.prefix = Vec::new();
            self.prefix_sent = 0;
        }
        Ok(true)
    }

    /// Moves what can move now; returns the bytes written to the destination. `other_done`
    /// says the opposite direction has finished, so this one's end of stream ends the session.
    pub fn pump(
        &mut self,
        src: &mut TcpStream,
        dst: &mut TcpStream,
        pipes: &mut PipePool,
        scratch: &mut [u8],
        stop: ReadStop,
        other_done: bool,
    ) -> Result<u64, PumpError> {
        let mut moved = 0u64;
        let result = self.pump_into(src, dst, pipes, scratch, stop, other_done, &mut moved);
        self.bytes += moved;
        match result {
            Ok(()) => Ok(moved),
            Err(mut e) => {
                e.moved = moved;
                Err(e)
            }
        }
    }

    /// The body of [`Self::pump`]; `moved` grows with every byte written, so an error late in
    /// the call loses none of the earlier ones from the counters.
    #[allow(clippy::too_many_arguments)]
    fn pump_into(
        &mut self,
        src: &mut TcpStream,
        dst: &mut TcpStream,
        pipes: &mut PipePool,
        scratch: &mut [u8],
        stop: ReadStop,
        other_done: bool,
        moved: &mut u64,
    ) -> Result<(), PumpError> {
        if !self.flush_prefix(dst, moved)? {
            return Ok(());
        }
        loop {
            if self.pending > 0 {
                match self.write(dst) {
                    Ok(n) => {
                        self.pending -= n;
                        *moved += n as u64;
                        if self.pending == 0 {
                            self.release_pipe(pipes);
                        }
                        continue;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => return Err(self.err(self.dst_side, e)),
                }
            }
            if self.eof {
                if !self.shut {
                    // When the other direction is already done the session closes right after
                    // this, and close sends the FIN: a shutdown first would be one more
                    // syscall per connection for nothing (dst's receive side reached end of
                    // stream, so close cannot turn into a reset over unread bytes).
                    // Otherwise the peer may already be gone; the session ends through its own
                    // read or write error then, so a failed shutdown needs no handling here.
                    if !other_done {
                        let _ = dst.shutdown(Shutdown::Write);
                    }
                    self.shut = true;
                }
                break;
            }
            if matches!(self.mode, Mode::Small) {
                match self.relay_small(src, dst, scratch, stop, moved)? {
                    SmallStep::Again => continue,
                    SmallStep::Stop => break,
                }
            }
            match self.read(src, pipes) {
                Ok(0) => self.eof = true,
                Ok(n) => self.pending = n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.release_pipe(pipes);
                    break;
                }
                Err(e) => return Err(self.err(self.src_side, e)),
            }
        }
        Ok(())
    }

    /// One read into the scratch buffer and its write; see [`Mode::Small`].
    fn relay_small(
        &mut self,
        src: &mut TcpStream,
        dst: &mut TcpStream,
        scratch: &mut [u8],
        stop: ReadStop,
        moved: &mut u64,
    ) -> Result<SmallStep, PumpError> {
        let n = match src.read(scratch) {
            Ok(0) => {
                self.eof = true;
                return Ok(SmallStep::Again);
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(SmallStep::Stop),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(SmallStep::Again),
            Err(e) => return Err(self.err(self.src_side, e)),
        };
        let mut written = 0;
        while written < n {
            match dst.write(&scratch[written..n]) {
                Ok(0) => return Err(self.err(self.dst_side, io::ErrorKind::WriteZero.into())),
                Ok(k) => written += k,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.err(self.dst_side, e)),
            }
        }
        *moved += written as u64;
        if n == scratch.len() {
            self.mode = Mode::Splice { pipe: None };
        }
        if written < n {
            // The destination is full: keep the rest until it is writable again.
            self.prefix = scratch[written..n].to_vec();
            self.prefix_sent = 0;
            return Ok(SmallStep::Stop);
        }
        if stop == ReadStop::ShortRead && n < scratch.len() {
            return Ok(SmallStep::Stop);
        }
        Ok(SmallStep::Again)
    }

    fn err(&self, side: Side, error: io::Error) -> PumpError {
        PumpError {
            side,
            error,
            moved: 0,
        }
    }

    /// Reads into an empty pipe or buffer.
    fn read(&mut self, src: &mut TcpStream, pipes: &mut PipePool) -> io::Result<usize> {
        if let Mode::Splice { pipe } = &mut self.mode {
            if pipe.is_none() {
                match pipes.take() {
                    Ok(p) => *pipe = Some(p),
                    Err(_) => {
                        // No descriptors for a pipe: this direction copies from now on.
                        self.mode = Mode::Copy {
                            buf: vec![0u8; COPY_BUFFER].into_boxed_slice(),
                            start: 0,
                            end: 0,
                        };
                    }
                }
            }
        }
        match &mut self.mode {
            Mode::Splice { pipe: Some(pipe) } => {
                sys::splice(src.as_fd(), pipe.write_end(), pipe.capacity)
            }
            Mode::Splice { pipe: None } | Mode::Small => Err(io::Error::other("no pipe")),
            Mode::Copy { buf, start, end } => loop {
                match src.read(buf) {
                    Ok(n) => {
                        *start = 0;
                        *end = n;
                        return Ok(n);
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                }
            },
        }
    }

    fn write(&mut self, dst: &mut TcpStream) -> io::Result<usize> {
        match &mut self.mode {
            Mode::Splice { pipe: Some(pipe) } => {
                sys::splice(pipe.read_end(), dst.as_fd(), self.pending)
            }
            Mode::Splice { pipe: None } | Mode::Small => {
                Err(io::Error::other("bytes pending without a pipe"))
            }
            Mode::Copy { buf, start, end } => loop {
                match dst.write(&buf[*start..*end]) {
                    Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                    Ok(n) => {
                        *start += n;
                        return Ok(n);
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                }
            },
        }
    }

    fn release_pipe(&mut self, pipes: &mut PipePool) {
        if self.pending != 0 {
            return;
        }
        if let Mode::Splice { pipe } = &mut self.mode {
            if let Some(p) = pipe.take() {
                pipes.give_back(p);
            }
        }
    }

    /// Gives the pipe back on session close; a pipe with bytes left in it is closed instead.
    pub fn release(&mut self, pipes: &mut PipePool) {
        if let Mode::Splice { pipe } = &mut self.mode {
            if let Some(p) = pipe.take() {
                if self.pending == 0 {
                    pipes.give_back(p);
                }
            }
        }
    }
}
