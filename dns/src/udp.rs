//! Batched UDP I/O: many datagrams per system call with `recvmmsg(2)` and `sendmmsg(2)`.
//!
//! Under load the system calls, not the answers, are what a DNS server spends its time on; a
//! batch of up to [`BATCH`] queries costs one call to receive and one to send.

use std::io;
use std::mem::{self, MaybeUninit};
use std::os::fd::{AsRawFd, RawFd};

/// Datagrams per system call.
pub(crate) const BATCH: usize = 32;

/// Bytes kept of a query: a larger datagram is cut short (and then gets FORMERR).
pub(crate) const QUERY_SIZE: usize = 4096;

/// Buffers for one batch: the queries received and their sources, then the answers.
pub(crate) struct Batch {
    queries: Vec<[u8; QUERY_SIZE]>,
    lengths: [usize; BATCH],
    sources: [libc::sockaddr_storage; BATCH],
    source_lengths: [libc::socklen_t; BATCH],
    received: usize,
    /// (index of the query, answer bytes), in the order they are to be sent.
    answers: Vec<(usize, Vec<u8>)>,
    sent: usize,
}

impl Batch {
    pub(crate) fn new() -> Batch {
        Batch {
            queries: vec![[0; QUERY_SIZE]; BATCH],
            lengths: [0; BATCH],
            // SAFETY: sockaddr_storage is plain data; all zeroes is a valid (unspecified) value.
            sources: unsafe { MaybeUninit::zeroed().assume_init() },
            source_lengths: [0; BATCH],
            received: 0,
            answers: Vec::with_capacity(BATCH),
            sent: 0,
        }
    }

    /// The queries of the last [`Batch::receive`].
    pub(crate) fn queries(&self) -> impl Iterator<Item = (usize, &[u8])> {
        (0..self.received).map(|i| (i, &self.queries[i][..self.lengths[i]]))
    }

    /// The source address of query `index`.
    pub(crate) fn source(&self, index: usize) -> Option<std::net::SocketAddr> {
        use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6};
        let storage = &self.sources[index];
        match libc::c_int::from(storage.ss_family) {
            libc::AF_INET => {
                // SAFETY: the kernel wrote a sockaddr_in where the family says AF_INET, and
                // sockaddr_storage is large and aligned enough for it.
                let addr = unsafe { &*(&raw const *storage).cast::<libc::sockaddr_in>() };
                let ip = Ipv4Addr::from(u32::from_be(addr.sin_addr.s_addr));
                Some(SocketAddr::from((ip, u16::from_be(addr.sin_port))))
            }
            libc::AF_INET6 => {
                // SAFETY: as above, a sockaddr_in6 for AF_INET6.
                let addr = unsafe { &*(&raw const *storage).cast::<libc::sockaddr_in6>() };
                Some(SocketAddr::V6(SocketAddrV6::new(
                    Ipv6Addr::from(addr.sin6_addr.s6_addr),
                    u16::from_be(addr.sin6_port),
                    addr.sin6_flowinfo,
                    addr.sin6_scope_id,
                )))
            }
            _ => None,
        }
    }

    /// Queues `answer` to the source of query `index`.
    pub(crate) fn answer(&mut self, index: usize, answer: Vec<u8>) {
        self.answers.push((index, answer));
    }

    /// Whether answers are queued and not sent yet.
    pub(crate) fn has_unsent(&self) -> bool {
        self.sent < self.answers.len()
    }

    /// Receives up to [`BATCH`] datagrams without blocking; `WouldBlock` when there is none.
    /// Clears the answers of the previous batch.
    pub(crate) fn receive(&mut self, socket: &impl AsRawFd) -> io::Result<usize> {
        self.answers.clear();
        self.sent = 0;
        self.received = 0;
        let fd: RawFd = socket.as_raw_fd();
        // SAFETY: iovec and mmsghdr are plain data; zeroed is valid, and every pointer in them
        // is set below to a buffer of `self` that outlives the call.
        let mut iovecs: [libc::iovec; BATCH] = unsafe { mem::zeroed() };
        let mut headers: [libc::mmsghdr; BATCH] = unsafe { mem::zeroed() };
        for i in 0..BATCH {
            iovecs[i].iov_base = self.queries[i].as_mut_ptr().cast();
            iovecs[i].iov_len = QUERY_SIZE;
            let header = &mut headers[i].msg_hdr;
            header.msg_name = (&raw mut self.sources[i]).cast();
            header.msg_namelen = mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            header.msg_iov = &raw mut iovecs[i];
            header.msg_iovlen = 1;
        }
        // SAFETY: `headers` holds BATCH valid message headers whose buffers are writable for
        // the lengths given; the kernel writes at most that much.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                headers.as_mut_ptr(),
                BATCH as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = n as usize;
        for (i, header) in headers.iter().enumerate().take(n) {
            self.lengths[i] = (header.msg_len as usize).min(QUERY_SIZE);
            self.source_lengths[i] = header.msg_hdr.msg_namelen;
        }
        self.received = n;
        Ok(n)
    }

    /// Sends the queued answers without blocking, as many as the socket takes; `WouldBlock`
    /// when it takes none. Call again while [`Batch::has_unsent`].
    pub(crate) fn send(&mut self, socket: &impl AsRawFd) -> io::Result<usize> {
        let fd: RawFd = socket.as_raw_fd();
        let pending = &self.answers[self.sent..];
        // SAFETY: as in `receive`; the kernel only reads through these pointers.
        let mut iovecs: [libc::iovec; BATCH] = unsafe { mem::zeroed() };
        let mut headers: [libc::mmsghdr; BATCH] = unsafe { mem::zeroed() };
        for (i, (query, answer)) in pending.iter().enumerate() {
            iovecs[i].iov_base = answer.as_ptr() as *mut libc::c_void;
            iovecs[i].iov_len = answer.len();
            let header = &mut headers[i].msg_hdr;
            header.msg_name = (&raw mut self.sources[*query]).cast();
            header.msg_namelen = self.source_lengths[*query];
            header.msg_iov = &raw mut iovecs[i];
            header.msg_iovlen = 1;
        }
        // SAFETY: the first `pending.len()` headers are valid and point at live buffers.
        let n = unsafe {
            libc::sendmmsg(
                fd,
                headers.as_mut_ptr(),
                pending.len() as libc::c_uint,
                libc::MSG_DONTWAIT,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        self.sent += n as usize;
        Ok(n as usize)
    }

    /// Skips the next unsent answer (its destination failed).
    pub(crate) fn skip(&mut self) {
        self.sent = (self.sent + 1).min(self.answers.len());
    }
}
