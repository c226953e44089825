//! The one module with `unsafe`: thin wrappers over the Linux syscalls that std, mio and
//! socket2 do not offer (splice, pipe2, F_SETPIPE_SZ, setrlimit, recvmmsg, sendmmsg,
//! SO_PEERCRED, SCM_RIGHTS).
//!
//! File descriptors: `pipe()` returns both ends as `OwnedFd`s that the caller owns; `splice`
//! and the datagram batch borrow the descriptors they are given and close nothing.
//! `send_with_fds` borrows the descriptors it sends (the receiver gets its own duplicates);
//! `recv_with_fds` returns the ones it received as `OwnedFd`s the caller owns.
#![allow(unsafe_code)]

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// Creates a non-blocking, close-on-exec pipe: (read end, write end).
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: `fds` is a valid, writable array of two c_ints as pipe2(2) requires.
    let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pipe2 succeeded, so both descriptors are open and owned by nobody else.
    let ends = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    Ok(ends)
}

/// Sets a pipe's capacity in bytes; returns the capacity the kernel granted.
pub fn set_pipe_size(fd: BorrowedFd<'_>, bytes: usize) -> io::Result<usize> {
    let want = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    // SAFETY: F_SETPIPE_SZ takes an int argument and touches no memory of ours; `fd` is a
    // live descriptor for the duration of the call.
    let rc = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETPIPE_SZ, want) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(usize::try_from(rc).unwrap_or(0))
}

/// Moves up to `len` bytes from `from` to `to` without copying through user space; one of the
/// two must be a pipe. Non-blocking: returns `WouldBlock` when nothing can move now, `Ok(0)` at
/// end of stream.
pub fn splice(from: BorrowedFd<'_>, to: BorrowedFd<'_>, len: usize) -> io::Result<usize> {
    // SPLICE_F_MORE is deliberately not set: it delays the last segment of a stream.
    let flags = libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK;
    loop {
        // SAFETY: both descriptors are live for the call; null offsets mean "use the file
        // position", which is what sockets and pipes require.
        let rc = unsafe {
            libc::splice(
                from.as_raw_fd(),
                std::ptr::null_mut(),
                to.as_raw_fd(),
                std::ptr::null_mut(),
                len,
                flags,
            )
        };
        if rc >= 0 {
            return Ok(usize::try_from(rc).unwrap_or(0));
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// Raises the soft RLIMIT_NOFILE to the hard limit; returns the new soft limit.
pub fn raise_nofile_limit() -> io::Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid, writable rlimit struct.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: `raised` is a valid rlimit struct that outlives the call.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
            return Err(io::Error::last_os_error());
        }
        limit = raised;
    }
    Ok(limit.rlim_cur)
}

/// Most datagrams one recvmmsg/sendmmsg call moves.
pub const MAX_BATCH: usize = 32;

// Linux UDP socket options (include/uapi/linux/udp.h); the libc crate lists them only for
// some targets.
const SOL_UDP: libc::c_int = 17;
const UDP_SEGMENT: libc::c_int = 103;
const UDP_GRO: libc::c_int = 104;
/// Room for the cmsgs a datagram carries (a UDP_GRO int and an in6_pktinfo), aligned.
const CONTROL_LEN: usize = 128;

/// Asks the kernel to hand this UDP socket coalesced datagrams (UDP_GRO): a burst of
/// same-sized datagrams from one sender arrives as one buffer plus its segment size, and is
/// forwarded with UDP_SEGMENT in one send. Returns false when the kernel refuses (before 5.0).
pub fn enable_udp_gro(fd: BorrowedFd<'_>) -> bool {
    turn_on(fd, SOL_UDP, UDP_GRO)
}

/// Asks the kernel to report each datagram's destination address (IP_PKTINFO or
/// IPV6_RECVPKTINFO) on a socket bound to a wildcard address, so replies can leave from the
/// address the client sent to rather than whichever one the route prefers.
pub fn enable_pktinfo(fd: BorrowedFd<'_>, ipv6: bool) -> bool {
    if ipv6 {
        turn_on(fd, libc::IPPROTO_IPV6, libc::IPV6_RECVPKTINFO)
    } else {
        turn_on(fd, libc::IPPROTO_IP, libc::IP_PKTINFO)
    }
}

/// The pid of the process at the other end of a connected Unix socket (SO_PEERCRED): for a
/// connection to a listening socket, the process that called listen() on it.
pub fn peer_pid(fd: BorrowedFd<'_>) -> io::Result<u32> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = socklen_of::<libc::ucred>();
    // SAFETY: `cred` and `len` are live, writable and sized for SO_PEERCRED's ucred for the
    // call; `fd` is a live descriptor.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            std::ptr::addr_of_mut!(cred).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    u32::try_from(cred.pid)
        .ok()
        .filter(|&pid| pid != 0)
        .ok_or_else(|| io::Error::other("SO_PEERCRED named no process"))
}

/// Sets the int socket option `level`/`name` to 1; false when the kernel refuses.
fn turn_on(fd: BorrowedFd<'_>, level: libc::c_int, name: libc::c_int) -> bool {
    let on: libc::c_int = 1;
    // SAFETY: `on` is a live c_int for the call and its size is passed with it.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            std::ptr::addr_of!(on).cast(),
            socklen_of::<libc::c_int>(),
        )
    };
    rc == 0
}

/// Sends `buf` as datagrams of `segment` bytes each (the last may be shorter) in one call,
/// with UDP_SEGMENT (generic segmentation offload), on a connected socket or to `dest`.
pub fn send_segmented(
    fd: BorrowedFd<'_>,
    buf: &[u8],
    segment: u16,
    dest: Option<&socket2::SockAddr>,
) -> io::Result<usize> {
    let mut control = [0u64; CONTROL_LEN / 8];
    // SAFETY: iovec and msghdr are plain C structs for which all-zero is valid.
    let mut iov: libc::iovec = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    iov.iov_base = buf.as_ptr().cast_mut().cast();
    iov.iov_len = buf.len();
    address_message(
        &mut msg,
        std::slice::from_mut(&mut iov),
        dest,
        &mut control,
        Some(segment),
        None,
    );
    loop {
        // SAFETY: msg points at `buf`, `iov`, `control` and `dest`, all live for the call.
        let rc = unsafe { libc::sendmsg(fd.as_raw_fd(), &msg, libc::MSG_DONTWAIT) };
        if rc >= 0 {
            return Ok(usize::try_from(rc).unwrap_or(0));
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// Points `msg` at its bytes (`iov`), its destination (none on a connected socket) and its
/// cmsgs, written into `control`: what every outgoing message here needs.
fn address_message(
    msg: &mut libc::msghdr,
    iov: &mut [libc::iovec],
    dest: Option<&socket2::SockAddr>,
    control: &mut [u64; CONTROL_LEN / 8],
    segment: Option<u16>,
    source: Option<IpAddr>,
) {
    msg.msg_iov = iov.as_mut_ptr();
    msg.msg_iovlen = iov.len() as _;
    if let Some(dest) = dest {
        // The kernel only reads the address for a send; the cast to *mut is what the C
        // struct requires.
        msg.msg_name = dest.as_ptr().cast_mut().cast();
        msg.msg_namelen = dest.len();
    }
    fill_cmsgs(msg, control, segment, source);
}

/// Writes the cmsgs of an outgoing datagram into `control` and points `msg` at them: a
/// UDP_SEGMENT size, and the source address to send from (IP_PKTINFO / IPV6_PKTINFO).
fn fill_cmsgs(
    msg: &mut libc::msghdr,
    control: &mut [u64; CONTROL_LEN / 8],
    segment: Option<u16>,
    source: Option<IpAddr>,
) {
    // SAFETY: CMSG_SPACE only computes lengths.
    let space = |len: usize| unsafe { libc::CMSG_SPACE(len as libc::c_uint) as usize };
    let pktinfo_len = match source {
        Some(IpAddr::V4(_)) => std::mem::size_of::<libc::in_pktinfo>(),
        Some(IpAddr::V6(_)) => std::mem::size_of::<libc::in6_pktinfo>(),
        None => 0,
    };
    let total = segment.map_or(0, |_| space(std::mem::size_of::<u16>()))
        + if source.is_some() {
            space(pktinfo_len)
        } else {
            0
        };
    if total == 0 || total > CONTROL_LEN {
        return;
    }
    *control = [0u64; CONTROL_LEN / 8];
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = total as _;
    // SAFETY: msg_control points at `control` (CONTROL_LEN bytes, 8-aligned) and
    // msg_controllen is the summed CMSG_SPACE of the cmsgs written below, so CMSG_FIRSTHDR and
    // CMSG_NXTHDR return headers inside it; the data is written unaligned.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(msg);
        if let Some(segment) = segment {
            if cmsg.is_null() {
                return;
            }
            (*cmsg).cmsg_level = SOL_UDP;
            (*cmsg).cmsg_type = UDP_SEGMENT;
            (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<u16>() as libc::c_uint) as _;
            std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<u16>(), segment);
            cmsg = libc::CMSG_NXTHDR(msg, cmsg);
        }
        if let Some(source) = source {
            if cmsg.is_null() {
                return;
            }
            (*cmsg).cmsg_len = libc::CMSG_LEN(pktinfo_len as libc::c_uint) as _;
            match source {
                IpAddr::V4(ip) => {
                    (*cmsg).cmsg_level = libc::IPPROTO_IP;
                    (*cmsg).cmsg_type = libc::IP_PKTINFO;
                    let mut info: libc::in_pktinfo = std::mem::zeroed();
                    info.ipi_spec_dst.s_addr = u32::from(ip).to_be();
                    std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast(), info);
                }
                IpAddr::V6(ip) => {
                    (*cmsg).cmsg_level = libc::IPPROTO_IPV6;
                    (*cmsg).cmsg_type = libc::IPV6_PKTINFO;
                    let mut info: libc::in6_pktinfo = std::mem::zeroed();
                    info.ipi6_addr.s6_addr = ip.octets();
                    std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast(), info);
                }
            }
        }
    }
}

/// A batch of datagram buffers for recvmmsg(2)/sendmmsg(2), allocated once per worker so the
/// per-datagram path allocates nothing. The kernel's iovec and mmsghdr arrays are built on the
/// stack for each call (they hold raw pointers into this batch, which must not outlive a call).
pub struct DatagramBatch {
    slot: usize,
    capacity: usize,
    bufs: Box<[u8]>,
    lens: [usize; MAX_BATCH],
    truncated: [bool; MAX_BATCH],
    /// UDP_GRO segment size of each received buffer; 0 for a single datagram.
    segments: [u16; MAX_BATCH],
    /// The address each datagram was sent to, when the socket reports it (IP_PKTINFO).
    destinations: [Option<IpAddr>; MAX_BATCH],
    addrs: Box<[libc::sockaddr_storage]>,
    control: Box<[[u64; CONTROL_LEN / 8]]>,
    count: usize,
    /// Whether the path takes UDP segmentation offload (runs of one size leave coalesced,
    /// UDP_GRO buffers leave whole); turned off for good when the kernel refuses it (see
    /// [`DatagramBatch::send`]).
    offload: std::cell::Cell<bool>,
}

impl std::fmt::Debug for DatagramBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DatagramBatch")
            .field("slot", &self.slot)
            .field("capacity", &self.capacity)
            .field("count", &self.count)
            .finish()
    }
}

impl DatagramBatch {
    /// `capacity` datagrams (at most MAX_BATCH) of up to `slot` bytes each.
    pub fn new(capacity: usize, slot: usize) -> Self {
        let capacity = capacity.clamp(1, MAX_BATCH);
        // SAFETY: sockaddr_storage is plain old data; all-zero is a valid (AF_UNSPEC) value.
        let empty: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        Self {
            slot,
            capacity,
            bufs: vec![0u8; capacity * slot].into_boxed_slice(),
            lens: [0; MAX_BATCH],
            truncated: [false; MAX_BATCH],
            segments: [0; MAX_BATCH],
            destinations: [None; MAX_BATCH],
            addrs: vec![empty; capacity].into_boxed_slice(),
            control: vec![[0u64; CONTROL_LEN / 8]; capacity].into_boxed_slice(),
            count: 0,
            offload: std::cell::Cell::new(true),
        }
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// False once a path refused segmentation offload and this batch sends one datagram per
    /// message (see [`DatagramBatch::send`]).
    pub fn offload(&self) -> bool {
        self.offload.get()
    }

    /// Receives up to `capacity` datagrams without blocking; `WouldBlock` when none is queued.
    pub fn recv(&mut self, fd: BorrowedFd<'_>) -> io::Result<usize> {
        self.count = 0;
        // SAFETY: iovec and mmsghdr are plain C structs for which all-zero is valid.
        let mut iov: [libc::iovec; MAX_BATCH] = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        let mut hdrs: [libc::mmsghdr; MAX_BATCH] = unsafe { std::mem::zeroed() };
        let base = self.bufs.as_mut_ptr();
        for i in 0..self.capacity {
            // SAFETY: i * slot + slot <= bufs.len(), so the pointer stays inside `bufs`.
            iov[i].iov_base = unsafe { base.add(i * self.slot) }.cast();
            iov[i].iov_len = self.slot;
            hdrs[i].msg_hdr.msg_name = std::ptr::addr_of_mut!(self.addrs[i]).cast();
            hdrs[i].msg_hdr.msg_namelen = socklen_of::<libc::sockaddr_storage>();
            hdrs[i].msg_hdr.msg_iov = std::ptr::addr_of_mut!(iov[i]);
            hdrs[i].msg_hdr.msg_iovlen = 1;
            hdrs[i].msg_hdr.msg_control = self.control[i].as_mut_ptr().cast();
            hdrs[i].msg_hdr.msg_controllen = CONTROL_LEN as _;
        }
        let vlen = libc::c_uint::try_from(self.capacity).unwrap_or(1);
        let rc = loop {
            // SAFETY: every header points at a live buffer of `slot` bytes and a live
            // sockaddr_storage, all owned by `self` or this stack frame for the whole call.
            let rc = unsafe {
                libc::recvmmsg(
                    fd.as_raw_fd(),
                    hdrs.as_mut_ptr(),
                    vlen,
                    libc::MSG_DONTWAIT,
                    std::ptr::null_mut(),
                )
            };
            if rc >= 0 {
                break rc;
            }
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(err);
            }
        };
        let n = usize::try_from(rc).unwrap_or(0).min(self.capacity);
        for (i, hdr) in hdrs.iter().enumerate().take(n) {
            self.lens[i] = usize::try_from(hdr.msg_len).unwrap_or(0).min(self.slot);
            self.truncated[i] = hdr.msg_hdr.msg_flags & libc::MSG_TRUNC != 0;
            let (segment, destination) = parse_cmsgs(&hdr.msg_hdr);
            self.segments[i] = segment;
            self.destinations[i] = destination;
        }
        self.count = n;
        Ok(n)
    }

    /// How many datagrams buffer `i` of the last receive holds (more than 1 when the kernel
    /// coalesced a burst with UDP_GRO), and their size (the last may be shorter).
    pub fn segments(&self, i: usize) -> (usize, usize) {
        let len = self.lens.get(i).copied().unwrap_or(0);
        match self.segments.get(i).copied().unwrap_or(0) {
            0 => (1, len),
            seg => (len.div_ceil(usize::from(seg)).max(1), usize::from(seg)),
        }
    }

    /// Cuts buffer `i` of the last receive to its first `keep` datagrams (at least one): for
    /// a UDP_GRO buffer of which only some datagrams may go on.
    pub fn keep_segments(&mut self, i: usize, keep: usize) {
        let segment = usize::from(self.segments.get(i).copied().unwrap_or(0));
        if segment == 0 || i >= self.count {
            return;
        }
        self.lens[i] = self.lens[i].min(segment.saturating_mul(keep.max(1)));
    }

    /// The address datagram `i` was sent to, on a socket with [`enable_pktinfo`].
    pub fn destination(&self, i: usize) -> Option<IpAddr> {
        self.destinations.get(i).copied().flatten()
    }

    /// Datagram `i` of the last receive: its bytes, its sender, and whether it was cut short
    /// (larger than a slot).
    pub fn get(&self, i: usize) -> Option<(&[u8], Option<SocketAddr>, bool)> {
        if i >= self.count {
            return None;
        }
        let start = i * self.slot;
        let data = &self.bufs[start..start + self.lens[i]];
        Some((data, storage_to_addr(&self.addrs[i]), self.truncated[i]))
    }

    /// Sends datagrams `indices` of the last receive, in that order, to `dest` (or to the
    /// connected peer when `None`) without blocking; returns how many of them the kernel took
    /// (a prefix of `indices`).
    ///
    /// Consecutive datagrams of one size (the last of a run may be shorter) leave as one
    /// message with UDP_SEGMENT: the kernel builds and routes one buffer for the whole run and
    /// cuts it into the same datagrams at the device, or at the receiving socket on loopback,
    /// instead of running its send path once per datagram. The receiver sees the datagrams it
    /// would have seen. A UDP_GRO buffer leaves whole the same way. When a path refuses
    /// segmentation offload (see `is_offload_refusal`) and the same datagrams then go out
    /// one by one, offload is turned off for this batch for good: every datagram, including
    /// each one of a UDP_GRO buffer, leaves in its own message from then on.
    pub fn send(
        &self,
        fd: BorrowedFd<'_>,
        indices: impl IntoIterator<Item = usize>,
        dest: Option<&socket2::SockAddr>,
        source: Option<IpAddr>,
    ) -> io::Result<usize> {
        let mut order = [0usize; MAX_BATCH];
        let mut n = 0;
        for i in indices {
            if i >= self.count || n == MAX_BATCH {
                break;
            }
            order[n] = i;
            n += 1;
        }
        let order = &order[..n];
        if order.is_empty() {
            return Ok(0);
        }
        if !self.offload.get() {
            return self.send_split(fd, order, dest, source);
        }
        match self.send_messages(fd, order, dest, source) {
            Err(e) if is_offload_refusal(&e) => {
                // Offload is to blame only if the same datagrams go out one by one.
                let retry = self.send_split(fd, order, dest, source);
                if retry.is_ok() {
                    self.offload.set(false);
                }
                retry
            }
            other => other,
        }
    }

    /// Buffer `i` holds several datagrams the kernel coalesced (UDP_GRO).
    fn is_gro_buffer(&self, i: usize) -> bool {
        let segment = usize::from(self.segments[i]);
        segment > 0 && self.lens[i] > segment
    }

    /// One sendmmsg for `order` with segmentation offload: runs of one size coalesced, UDP_GRO
    /// buffers as they came; returns the datagrams taken.
    fn send_messages(
        &self,
        fd: BorrowedFd<'_>,
        order: &[usize],
        dest: Option<&socket2::SockAddr>,
        source: Option<IpAddr>,
    ) -> io::Result<usize> {
        // SAFETY: iovec and mmsghdr are plain C structs for which all-zero is valid.
        let mut iov: [libc::iovec; MAX_BATCH] = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        let mut hdrs: [libc::mmsghdr; MAX_BATCH] = unsafe { std::mem::zeroed() };
        let mut control = [[0u64; CONTROL_LEN / 8]; MAX_BATCH];
        // Datagrams in each message, to turn the count of messages sent into datagrams.
        let mut members = [0usize; MAX_BATCH];
        for (k, &i) in order.iter().enumerate() {
            // The kernel only reads through iov_base for a send; the cast to *mut is what the
            // C struct requires.
            iov[k].iov_base = self.bufs[i * self.slot..].as_ptr().cast_mut().cast();
            iov[k].iov_len = self.lens[i];
        }
        let mut messages = 0;
        let mut k = 0;
        while k < order.len() {
            let first = order[k];
            let (count, segment) = if self.is_gro_buffer(first) {
                // A coalesced buffer (UDP_GRO) leaves as the same datagrams it came in as.
                (1, self.segments[first])
            } else {
                let count = crate::udp::batch::run_of_one_size(
                    order[k..]
                        .iter()
                        .map(|&i| (self.lens[i], self.is_gro_buffer(i))),
                );
                let segment = if count > 1 {
                    u16::try_from(self.lens[first]).unwrap_or(0)
                } else {
                    0
                };
                (count.max(1), segment)
            };
            address_message(
                &mut hdrs[messages].msg_hdr,
                &mut iov[k..k + count],
                dest,
                &mut control[messages],
                (segment > 0).then_some(segment),
                source,
            );
            members[messages] = count;
            messages += 1;
            k += count;
        }
        let sent = sendmmsg(fd, &mut hdrs[..messages])?;
        Ok(members[..sent].iter().sum())
    }

    /// Sends `order` without segmentation offload, for a path that refuses it: one message
    /// per datagram, and the datagrams of a UDP_GRO buffer cut apart here. Returns the
    /// datagrams (buffers) taken; a buffer counts once all its pieces left.
    fn send_split(
        &self,
        fd: BorrowedFd<'_>,
        order: &[usize],
        dest: Option<&socket2::SockAddr>,
        source: Option<IpAddr>,
    ) -> io::Result<usize> {
        let mut taken = 0;
        // The next piece: datagram `order[k]`, from byte `offset`.
        let mut k = 0;
        let mut offset = 0;
        while k < order.len() {
            // SAFETY: iovec and mmsghdr are plain C structs for which all-zero is valid.
            let mut iov: [libc::iovec; MAX_BATCH] = unsafe { std::mem::zeroed() };
            // SAFETY: as above.
            let mut hdrs: [libc::mmsghdr; MAX_BATCH] = unsafe { std::mem::zeroed() };
            let mut control = [[0u64; CONTROL_LEN / 8]; MAX_BATCH];
            // Whether each message is the last piece of its datagram.
            let mut completes = [false; MAX_BATCH];
            let mut messages = 0;
            while messages < MAX_BATCH && k < order.len() {
                let i = order[k];
                let len = self.lens[i];
                let piece = if self.is_gro_buffer(i) {
                    usize::from(self.segments[i]).min(len - offset)
                } else {
                    len
                };
                iov[messages].iov_base = self.bufs[i * self.slot + offset..]
                    .as_ptr()
                    .cast_mut()
                    .cast();
                iov[messages].iov_len = piece;
                address_message(
                    &mut hdrs[messages].msg_hdr,
                    &mut iov[messages..=messages],
                    dest,
                    &mut control[messages],
                    None,
                    source,
                );
                offset += piece;
                if offset >= len {
                    completes[messages] = true;
                    k += 1;
                    offset = 0;
                }
                messages += 1;
            }
            let sent = match sendmmsg(fd, &mut hdrs[..messages]) {
                Ok(sent) => sent,
                Err(e) if taken == 0 => return Err(e),
                Err(_) => return Ok(taken),
            };
            taken += completes[..sent].iter().filter(|&&c| c).count();
            if sent < messages {
                return Ok(taken);
            }
        }
        Ok(taken)
    }
}

/// sendmmsg(2) without blocking, retried on EINTR; returns how many messages were sent.
fn sendmmsg(fd: BorrowedFd<'_>, hdrs: &mut [libc::mmsghdr]) -> io::Result<usize> {
    let vlen = libc::c_uint::try_from(hdrs.len()).unwrap_or(0);
    loop {
        // SAFETY: every header points at iovecs, bytes, control buffers and destination
        // addresses that the caller keeps alive for this call; sendmmsg only reads them.
        let rc =
            unsafe { libc::sendmmsg(fd.as_raw_fd(), hdrs.as_mut_ptr(), vlen, libc::MSG_DONTWAIT) };
        if rc >= 0 {
            return Ok(usize::try_from(rc).unwrap_or(0).min(hdrs.len()));
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// A send error that can mean the kernel or device will not do UDP segmentation offload:
/// EMSGSIZE (a segment larger than the path MTU: Linux 6.x), EINVAL (the same on older
/// kernels), EIO (IPsec on the route, or before 6.11 a device without checksum offload).
/// The caller tells it from other causes by sending the same datagrams one by one.
fn is_offload_refusal(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EIO) | Some(libc::EINVAL) | Some(libc::EMSGSIZE)
    )
}

/// The UDP_GRO segment size (0 when there is none) and the destination address (IP_PKTINFO)
/// in a received message's control data.
fn parse_cmsgs(msg: &libc::msghdr) -> (u16, Option<IpAddr>) {
    let mut segment = 0;
    let mut destination = None;
    if msg.msg_control.is_null() || msg.msg_controllen < std::mem::size_of::<libc::cmsghdr>() as _ {
        return (segment, destination);
    }
    // SAFETY: the kernel filled msg_control (our CONTROL_LEN buffer) and set msg_controllen to
    // what it wrote; CMSG_FIRSTHDR/CMSG_NXTHDR stay within that length, and each cmsg's data
    // is read unaligned as the type its level and type name.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(msg);
        while !cmsg.is_null() {
            let data = libc::CMSG_DATA(cmsg);
            match ((*cmsg).cmsg_level, (*cmsg).cmsg_type) {
                (SOL_UDP, UDP_GRO) => {
                    let size = std::ptr::read_unaligned(data.cast::<libc::c_int>());
                    segment = u16::try_from(size).unwrap_or(0);
                }
                (libc::IPPROTO_IP, libc::IP_PKTINFO) => {
                    let info = std::ptr::read_unaligned(data.cast::<libc::in_pktinfo>());
                    let ip = Ipv4Addr::from(u32::from_be(info.ipi_addr.s_addr));
                    destination = Some(IpAddr::V4(ip));
                }
                (libc::IPPROTO_IPV6, libc::IPV6_PKTINFO) => {
                    let info = std::ptr::read_unaligned(data.cast::<libc::in6_pktinfo>());
                    destination = Some(IpAddr::V6(Ipv6Addr::from(info.ipi6_addr.s6_addr)));
                }
                _ => {}
            }
            cmsg = libc::CMSG_NXTHDR(msg, cmsg);
        }
    }
    (segment, destination)
}

fn socklen_of<T>() -> libc::socklen_t {
    libc::socklen_t::try_from(std::mem::size_of::<T>()).unwrap_or(libc::socklen_t::MAX)
}

fn storage_to_addr(storage: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match libc::c_int::from(storage.ss_family) {
        libc::AF_INET => {
            // SAFETY: ss_family says the storage holds a sockaddr_in, which it is large and
            // aligned enough to contain.
            let a =
                unsafe { &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            let ip = Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr));
            Some(SocketAddr::V4(SocketAddrV4::new(
                ip,
                u16::from_be(a.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: ss_family says the storage holds a sockaddr_in6, as above.
            let a = unsafe {
                &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>()
            };
            let ip = Ipv6Addr::from(a.sin6_addr.s6_addr);
            Some(SocketAddr::V6(SocketAddrV6::new(
                ip,
                u16::from_be(a.sin6_port),
                a.sin6_flowinfo,
                a.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// The cookie of the network namespace `fd` belongs to (SO_NETNS_COOKIE, Linux 5.14): the value
/// `bpf_get_netns_cookie` returns inside BPF programs for sockets of that namespace.
pub fn netns_cookie(fd: BorrowedFd<'_>) -> io::Result<u64> {
    let mut cookie: u64 = 0;
    let mut len = libc::socklen_t::try_from(std::mem::size_of::<u64>()).unwrap_or(8);
    // SAFETY: `cookie` and `len` are live locals; the kernel writes at most `len` bytes into
    // `cookie` and the actual length into `len`.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_NETNS_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cookie)
}

/// CLOCK_MONOTONIC in nanoseconds: the clock `bpf_ktime_get_ns` reads inside BPF programs, so
/// user space can tell how long ago a program stamped a map entry.
pub fn monotonic_ns() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a live, writable timespec; CLOCK_MONOTONIC always exists on Linux.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    if rc != 0 {
        return 0;
    }
    let secs = u64::try_from(now.tv_sec).unwrap_or(0);
    let nanos = u64::try_from(now.tv_nsec).unwrap_or(0);
    secs.saturating_mul(1_000_000_000).saturating_add(nanos)
}

/// Most descriptors one message carries (the kernel's SCM_MAX_FD is 253).
pub const MAX_FDS_PER_MESSAGE: usize = 250;

/// Sends `data` with `fds` attached (SCM_RIGHTS) on a connected Unix socket, in one
/// sendmsg(2); the kernel duplicates each descriptor into the receiver when it receives the
/// message, so the caller keeps (and still owns) its own. At most [`MAX_FDS_PER_MESSAGE`].
pub fn send_with_fds(
    socket: BorrowedFd<'_>,
    data: &[u8],
    fds: &[BorrowedFd<'_>],
) -> io::Result<()> {
    if fds.len() > MAX_FDS_PER_MESSAGE {
        return Err(io::Error::other("too many descriptors for one message"));
    }
    let raw: Vec<libc::c_int> = fds.iter().map(|fd| fd.as_raw_fd()).collect();
    let bytes = std::mem::size_of_val(raw.as_slice());
    // SAFETY: CMSG_SPACE only computes a length.
    let space = unsafe { libc::CMSG_SPACE(bytes as libc::c_uint) } as usize;
    // u64 words: cmsghdr's alignment.
    let mut control = vec![0u64; space.div_ceil(8)];
    let mut iov = libc::iovec {
        iov_base: data.as_ptr().cast_mut().cast(),
        iov_len: data.len(),
    };
    // SAFETY: an all-zero msghdr is a valid empty one.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if !raw.is_empty() {
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = space as _;
        // SAFETY: msg_control points at `control`, at least CMSG_SPACE(bytes) long and
        // 8-aligned, so CMSG_FIRSTHDR returns a header inside it with room for `bytes` of data,
        // which is written unaligned from `raw`, a live array of exactly `bytes` bytes.
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            if cmsg.is_null() {
                return Err(io::Error::other("no room for the descriptors"));
            }
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(bytes as libc::c_uint) as _;
            std::ptr::copy_nonoverlapping(raw.as_ptr().cast::<u8>(), libc::CMSG_DATA(cmsg), bytes);
        }
    }
    loop {
        // SAFETY: `msg` points at `iov` (over `data`) and `control`, all live for the call;
        // the descriptors named in it are borrowed, so open, for the call too.
        let rc = unsafe { libc::sendmsg(socket.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
        if rc >= 0 {
            return if rc as usize == data.len() {
                Ok(())
            } else {
                Err(io::Error::other("message sent in part"))
            };
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Receives one message into `buf` and the descriptors attached to it (close-on-exec), which
/// the caller then owns. A message or control data cut short (MSG_TRUNC, MSG_CTRUNC) is an
/// error: its descriptors, if any arrived, are closed here. Ok((0, [])) is the end of stream.
pub fn recv_with_fds(socket: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<(usize, Vec<OwnedFd>)> {
    let bytes = MAX_FDS_PER_MESSAGE * std::mem::size_of::<libc::c_int>();
    // SAFETY: CMSG_SPACE only computes a length.
    let space = unsafe { libc::CMSG_SPACE(bytes as libc::c_uint) } as usize;
    let mut control = vec![0u64; space.div_ceil(8)];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: an all-zero msghdr is a valid empty one.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = space as _;
    let received = loop {
        // SAFETY: `msg` points at `iov` (over `buf`, writable) and `control` (writable,
        // msg_controllen bytes), both live for the call.
        let rc = unsafe { libc::recvmsg(socket.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
        if rc >= 0 {
            break rc as usize;
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    };
    let mut fds = Vec::new();
    if !msg.msg_control.is_null() && msg.msg_controllen >= std::mem::size_of::<libc::cmsghdr>() as _
    {
        // SAFETY: the kernel filled `control` and set msg_controllen to what it wrote;
        // CMSG_FIRSTHDR/CMSG_NXTHDR stay within it. An SCM_RIGHTS cmsg's data is an array of
        // descriptors the kernel just installed in this process, owned by nobody else, read
        // unaligned; its length comes from cmsg_len, less the header.
        unsafe {
            let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
            while !cmsg.is_null() {
                if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                    let header = libc::CMSG_LEN(0) as usize;
                    let len = ((*cmsg).cmsg_len as usize).saturating_sub(header);
                    let data = libc::CMSG_DATA(cmsg).cast::<libc::c_int>();
                    for i in 0..len / std::mem::size_of::<libc::c_int>() {
                        let fd = std::ptr::read_unaligned(data.add(i));
                        fds.push(OwnedFd::from_raw_fd(fd));
                    }
                }
                cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
            }
        }
    }
    if msg.msg_flags & (libc::MSG_TRUNC | libc::MSG_CTRUNC) != 0 {
        // Dropping `fds` closes whatever arrived.
        return Err(io::Error::other("message or descriptors cut short"));
    }
    Ok((received, fds))
}

/// Takes ownership of descriptor `raw`, inherited from the parent process under the number
/// it named (the upgrade's hand-over socket): only after checking that it is open and a
/// socket. The caller marks it close-on-exec, so that it goes no further.
pub fn adopt_inherited_socket(raw: i32) -> io::Result<OwnedFd> {
    if raw < 3 {
        return Err(io::Error::other("not an inherited descriptor"));
    }
    // SAFETY: fstat writes into a live, zeroed stat; a closed `raw` only makes it fail.
    let mut stat: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: as above; `stat` is writable for the call.
    if unsafe { libc::fstat(raw, &mut stat) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if stat.st_mode & libc::S_IFMT != libc::S_IFSOCK {
        return Err(io::Error::other("the inherited descriptor is not a socket"));
    }
    // SAFETY: `raw` is open (fstat succeeded); the parent passed it to this process for it
    // alone, and nothing else in this process took it: the caller adopts it once, at start.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    Ok(fd)
}

/// Makes this process the reaper of its descendants (PR_SET_CHILD_SUBREAPER): a grandchild
/// whose parent exits is re-parented here rather than to init, so a supervisor can wait for
/// the servers that upgrades start.
pub fn set_child_subreaper() -> io::Result<()> {
    // SAFETY: prctl with PR_SET_CHILD_SUBREAPER takes an integer flag and no pointers.
    let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// How a reaped child ended: its exit code, or 128 + the signal that killed it (the shell's
/// convention, which container runtimes and systemd report alike).
fn exit_code_of(status: libc::c_int) -> u8 {
    if libc::WIFEXITED(status) {
        u8::try_from(libc::WEXITSTATUS(status)).unwrap_or(1)
    } else if libc::WIFSIGNALED(status) {
        u8::try_from(128 + libc::WTERMSIG(status)).unwrap_or(1)
    } else {
        1
    }
}

/// Reaps one exited child, any of them, without blocking: its pid and exit code, or `None`
/// when none has exited (or there are no children).
pub fn reap_any_child() -> Option<(u32, u8)> {
    let mut status: libc::c_int = 0;
    // SAFETY: `status` is a live local the kernel writes the child's status into; WNOHANG
    // makes the call return at once.
    let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
    if pid <= 0 {
        return None;
    }
    Some((u32::try_from(pid).ok()?, exit_code_of(status)))
}

/// Sends `signal` to process `pid`.
pub fn send_signal(pid: u32, signal: i32) -> io::Result<()> {
    let pid = libc::pid_t::try_from(pid).map_err(|_| io::Error::other("pid out of range"))?;
    // SAFETY: kill takes two integers; a pid that does not exist is an ESRCH error.
    let rc = unsafe { libc::kill(pid, signal) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
