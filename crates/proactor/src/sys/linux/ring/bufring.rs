//! The provided-buffer ring (`IORING_REGISTER_PBUF_RING`) over a [`Pool`]'s memory: the
//! buffers a multishot receive picks from.
//!
//! The ring is an array of `io_uring_buf` entries (address, length, buffer id) in memory of its
//! own, shared with the kernel; the tail, which only this thread moves, sits in the first
//! entry's last two bytes. The kernel takes entries from the head as receives need them.

use std::{
    io, ptr,
    sync::atomic::{AtomicU16, Ordering},
};

use io_uring::IoUring;

use crate::pool::Pool;

/// The buffer group id of the port's pool.
pub(super) const BGID: u16 = 0;

/// One entry of the ring, as the kernel reads it (`struct io_uring_buf`).
#[repr(C)]
struct BufEntry {
    addr: u64,
    len: u32,
    bid: u16,
    /// In entry 0: the ring's tail.
    resv: u16,
}

/// The ring's memory and the tail this thread publishes.
pub(super) struct BufRing {
    base: *mut BufEntry,
    bytes: usize,
    mask: u16,
    tail: u16,
}

impl BufRing {
    /// Maps a ring of `pool.count()` entries and registers it with `ring` as group [`BGID`].
    pub(super) fn new(ring: &IoUring, pool: &Pool) -> io::Result<BufRing> {
        let count = pool.count();
        let bytes = (count as usize * std::mem::size_of::<BufEntry>()).next_multiple_of(4096);
        // SAFETY: an anonymous private mapping of `bytes` bytes: no file, no fixed address.
        let base = unsafe {
            libc::mmap(
                ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let bufs = BufRing {
            base: base.cast(),
            bytes,
            mask: count - 1,
            tail: 0,
        };
        // SAFETY: the mapping holds `count` entries and lives until `BufRing` drops, which the
        // engine orders after the ring's (or leaks it when the kernel may still use it).
        unsafe {
            ring.submitter()
                .register_buf_ring_with_flags(base as u64, count, BGID, 0)?
        };
        Ok(bufs)
    }

    /// Queues buffer `bid` (at `addr`, `len` bytes) at the tail; [`commit`](Self::commit)
    /// publishes it.
    pub(super) fn add(&mut self, bid: u16, addr: *mut u8, len: usize) {
        let at = (self.tail & self.mask) as usize;
        // SAFETY: `at` <= mask < the ring's entry count: inside the mapping. The kernel reads
        // entries only between its head and the published tail, which this one is past.
        unsafe {
            let e = self.base.add(at);
            (&raw mut (*e).addr).write(addr as u64);
            (&raw mut (*e).len).write(len as u32);
            (&raw mut (*e).bid).write(bid);
        }
        self.tail = self.tail.wrapping_add(1);
    }

    /// Publishes the entries added since the last commit.
    pub(super) fn commit(&mut self) {
        // SAFETY: the tail is the u16 at byte 14 of the mapping (entry 0's `resv`), aligned;
        // the kernel reads it with an acquire load.
        let tail = unsafe { &*self.base.cast::<u8>().add(14).cast::<AtomicU16>() };
        tail.store(self.tail, Ordering::Release);
    }

    /// Leaves the mapping in place for good: the kernel may still read it.
    pub(super) fn leak(&mut self) {
        self.bytes = 0;
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        if self.bytes > 0 {
            // SAFETY: mapped in `new` with this length; the ring that used it is gone.
            unsafe { libc::munmap(self.base.cast(), self.bytes) };
        }
    }
}
