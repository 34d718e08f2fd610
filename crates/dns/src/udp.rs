//! Batched UDP datagram I/O for the serving loop (Linux `recvmmsg` / `sendmmsg`).
//!
//! One `recvmmsg` takes every datagram already queued on the socket (up to [`BATCH`]) and one `sendmmsg`
//! sends all their replies, so under load the per-query cost is no longer two syscalls and two trips through
//! the reactor. `recvmmsg` waits only for the first datagram (`MSG_WAITFORONE`) and then takes just what is
//! already queued, so at low load a lone query is received and answered as soon as it arrives (a batch of
//! one), never held back to fill a batch. Sends never block (`MSG_DONTWAIT`).
//!
//! The raw `msghdr` arrays (pointers into this struct) are built on the stack inside each call and never
//! outlive it, so [`Batch`] itself holds no raw pointers and can live across `.await` in a `Send` future.

// Kernel access that std does not wrap (setns/fork hooks, raw sockets): each unsafe block says why it holds.
#![allow(unsafe_code)]

use std::io;
use std::mem::size_of;
use std::os::fd::RawFd;

/// Datagrams taken per `recvmmsg` (dnsperf-like clients keep a few hundred queries outstanding).
pub(crate) const BATCH: usize = 64;

/// Bytes per receive slot: the largest UDP payload, so every datagram is received whole, exactly as the
/// one-datagram-at-a-time loop received it. The slots are allocated zeroed (`calloc` → fresh `mmap` pages),
/// so only the pages datagrams actually touch become resident.
const SLOT: usize = 65_535;

pub(crate) struct Batch {
    /// `BATCH` slots of `SLOT` bytes.
    bufs: Vec<u8>,
    addrs: Vec<libc::sockaddr_storage>,
    addr_lens: Vec<libc::socklen_t>,
    lens: Vec<usize>,
    /// The reply to datagram `i` (reused across batches: a cached reply is copied in without allocating).
    replies: Vec<Vec<u8>>,
}

impl Batch {
    pub(crate) fn new() -> Batch {
        Batch {
            bufs: vec![0u8; BATCH * SLOT],
            // SAFETY: sockaddr_storage is plain old data; all-zero is a valid (AF_UNSPEC) value.
            addrs: vec![unsafe { std::mem::zeroed() }; BATCH],
            addr_lens: vec![0; BATCH],
            lens: vec![0; BATCH],
            replies: (0..BATCH).map(|_| Vec::with_capacity(512)).collect(),
        }
    }

    /// Datagram `i` of the last [`Batch::recv`] and the buffer for its reply.
    pub(crate) fn slot(&mut self, i: usize) -> (&[u8], &mut Vec<u8>) {
        let start = i * SLOT;
        (
            &self.bufs[start..start + self.lens[i]],
            &mut self.replies[i],
        )
    }

    /// The sender of datagram `i`, to answer it later.
    pub(crate) fn peer(&self, i: usize) -> Peer {
        Peer {
            addr: self.addrs[i],
            len: self.addr_lens[i],
        }
    }

    /// Receive up to [`BATCH`] datagrams: on a blocking socket, wait for the first (up to the socket's
    /// receive timeout: `WouldBlock`), then take what else is queued without waiting (`MSG_WAITFORONE`).
    /// Returns 0 once the socket's receive side is shut.
    pub(crate) fn recv(&mut self, fd: RawFd) -> io::Result<usize> {
        // SAFETY: iovec and mmsghdr are plain old data; zeroed is valid and every used field is set below.
        let mut iovs: [libc::iovec; BATCH] = unsafe { std::mem::zeroed() };
        // SAFETY: as for the iovecs.
        let mut hdrs: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
        let base = self.bufs.as_mut_ptr();
        for i in 0..BATCH {
            // SAFETY: i * SLOT + SLOT <= bufs.len(), so the slot lies inside the allocation.
            iovs[i].iov_base = unsafe { base.add(i * SLOT) }.cast();
            iovs[i].iov_len = SLOT;
            let h = &mut hdrs[i].msg_hdr;
            h.msg_name = std::ptr::from_mut(&mut self.addrs[i]).cast();
            h.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            h.msg_iov = std::ptr::from_mut(&mut iovs[i]);
            h.msg_iovlen = 1;
        }
        // SAFETY: every header points at live buffers of the sizes given, all owned by this frame or self.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                hdrs.as_mut_ptr(),
                BATCH as libc::c_uint,
                libc::MSG_WAITFORONE,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = n as usize;
        for (i, h) in hdrs.iter().enumerate().take(n) {
            self.lens[i] = h.msg_len as usize;
            self.addr_lens[i] = h.msg_hdr.msg_namelen;
        }
        Ok(n)
    }

    /// Send the replies of the datagrams `which` (indices of the last batch) to their senders without
    /// blocking; returns how many of them (a prefix) were sent.
    pub(crate) fn send(&self, fd: RawFd, which: &[usize]) -> io::Result<usize> {
        let which = &which[..which.len().min(BATCH)];
        // SAFETY: as in `recv`.
        let mut iovs: [libc::iovec; BATCH] = unsafe { std::mem::zeroed() };
        // SAFETY: as in `recv`.
        let mut hdrs: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
        for (k, &i) in which.iter().enumerate() {
            // sendmsg only reads through these pointers; the *mut is what the C struct declares.
            iovs[k].iov_base = self.replies[i].as_ptr().cast_mut().cast();
            iovs[k].iov_len = self.replies[i].len();
            let h = &mut hdrs[k].msg_hdr;
            h.msg_name = std::ptr::from_ref(&self.addrs[i]).cast_mut().cast();
            h.msg_namelen = self.addr_lens[i];
            h.msg_iov = std::ptr::from_mut(&mut iovs[k]);
            h.msg_iovlen = 1;
        }
        // SAFETY: every header points at live buffers of the lengths given.
        let n = unsafe {
            libc::sendmmsg(
                fd,
                hdrs.as_mut_ptr(),
                which.len() as libc::c_uint,
                libc::MSG_DONTWAIT,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }
}

/// Ask for a receive buffer of `bytes` on `fd`: beyond `net.core.rmem_max` when privileged
/// (`SO_RCVBUFFORCE`), else up to it (`SO_RCVBUF`). Best effort: the socket works either way.
pub(crate) fn grow_receive_buffer(fd: RawFd, bytes: usize) {
    let value = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    for option in [libc::SO_RCVBUFFORCE, libc::SO_RCVBUF] {
        // SAFETY: a c_int option value of the size given.
        let r = unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                option,
                std::ptr::from_ref(&value).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if r == 0 {
            return;
        }
    }
    tracing::debug!(error = %io::Error::last_os_error(), "could not grow the UDP receive buffer");
}

/// A datagram's sender as the kernel gave it (answered as is, whatever the address family).
pub(crate) struct Peer {
    addr: libc::sockaddr_storage,
    len: libc::socklen_t,
}

impl Peer {
    /// Send `bytes` to this peer on `fd` without blocking.
    pub(crate) fn send(&self, fd: RawFd, bytes: &[u8]) -> io::Result<()> {
        // SAFETY: the buffer and the address are live for the call, with the lengths given.
        let r = unsafe {
            libc::sendto(
                fd,
                bytes.as_ptr().cast(),
                bytes.len(),
                libc::MSG_DONTWAIT,
                std::ptr::from_ref(&self.addr).cast(),
                self.len,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}
