//! A per-worker pool of pipes for the splice relay.
//!
//! A session direction takes a pipe only while bytes sit in it (the destination socket is
//! full) and hands it back as soon as it is empty, so idle sessions hold no pipe. The pool owns
//! the idle pipes' descriptors; a taken `Pipe` owns its two descriptors until it is returned or
//! dropped (closed).

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use crate::sys;

/// Capacity asked of each pipe: the most bytes one splice round moves. A profile of iperf3
/// through Ballast showed 97% of its time inside splice(2), moving ~261 KB per splice pair
/// with 256 KiB pipes; 1 MiB pipes (the default pipe-max-size) took bulk throughput from
/// 1.0x to 1.13-1.25x HAProxy's and CPU per GB from 0.30 to ~0.20 s. Bigger is worse: 2 MiB
/// and 4 MiB pipes (root may pass pipe-max-size) fell to 0.73-0.80x HAProxy at about twice the
/// CPU per GB, perhaps as more than a core's 1 MiB L2 of pages is in flight (a guess). Pages
/// are taken only while bytes sit in the pipe, and a direction holds a pipe only then.
pub const PIPE_CAPACITY: usize = 1024 * 1024;
/// Idle pipes a worker keeps; beyond this they are closed.
const MAX_IDLE: usize = 32;

#[derive(Debug)]
pub struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    pub capacity: usize,
}

impl Pipe {
    fn new() -> io::Result<Self> {
        let (read, write) = sys::pipe()?;
        // A kernel that refuses a bigger pipe (pipe-max-size, per-user pipe quota) still gives a
        // working 64 KiB one.
        let capacity = sys::set_pipe_size(write.as_fd(), PIPE_CAPACITY).unwrap_or(64 * 1024);
        Ok(Self {
            read,
            write,
            capacity,
        })
    }

    pub fn read_end(&self) -> BorrowedFd<'_> {
        self.read.as_fd()
    }

    pub fn write_end(&self) -> BorrowedFd<'_> {
        self.write.as_fd()
    }
}

#[derive(Debug, Default)]
pub struct PipePool {
    idle: Vec<Pipe>,
}

impl PipePool {
    pub fn take(&mut self) -> io::Result<Pipe> {
        match self.idle.pop() {
            Some(pipe) => Ok(pipe),
            None => Pipe::new(),
        }
    }

    /// Returns an empty pipe to the pool. A pipe that may still hold bytes must be dropped
    /// instead, or another session would read them.
    pub fn give_back(&mut self, pipe: Pipe) {
        if self.idle.len() < MAX_IDLE {
            self.idle.push(pipe);
        }
    }
}
