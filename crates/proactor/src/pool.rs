//! The buffer pool of a [`LocalPort`](crate::LocalPort): pooled receives complete with one of
//! its buffers instead of taking one.
//!
//! A pool is one allocation of `count` buffers of `size` bytes, made when the port is built and
//! freed when the last [`PooledBuf`] and the port are gone: it never moves, so the kernel can be
//! told where each buffer is once (io_uring's provided-buffer ring). At any moment each buffer
//! is in exactly one place: lent to the kernel (io_uring: in the provided-buffer ring), held by
//! one [`PooledBuf`], or on the pool's free list, which the port's engine takes from (the
//! fallback engine) or hands back to the kernel in batches (io_uring).

use std::{
    alloc::{Layout, alloc, dealloc},
    cell::RefCell,
    fmt, io,
    ops::{Deref, DerefMut},
    ptr::NonNull,
    rc::Rc,
};

/// The pool's memory and its free list.
pub(crate) struct Pool {
    mem: NonNull<u8>,
    layout: Layout,
    size: usize,
    /// Bytes from one buffer's start to the next: `size` rounded up to a cache line, plus one
    /// line when that is a multiple of a page, so that buffers' first lines do not all fall
    /// in the same cache sets (a 64 KiB stride maps every buffer's start to one L1/L2 set).
    stride: usize,
    count: u16,
    /// Buffers held by no [`PooledBuf`] and not lent to the kernel.
    free: RefCell<Vec<u16>>,
}

impl Pool {
    /// A pool of `count` buffers of `size` bytes. `count` must be a power of two from 1 to
    /// 32,768 (io_uring's provided-buffer ring requires one) and `size` from 1 byte to 1 GiB.
    /// With `all_free`, every buffer starts on the free list; otherwise none does (the engine
    /// lends them all to the kernel first).
    pub(crate) fn new(count: u16, size: usize, all_free: bool) -> io::Result<Rc<Pool>> {
        if count == 0 || !count.is_power_of_two() || count > 1 << 15 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the pool's buffer count must be a power of two from 1 to 32,768",
            ));
        }
        if size == 0 || size > 1 << 30 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the pool's buffer size must be from 1 byte to 1 GiB",
            ));
        }
        let mut stride = size.next_multiple_of(64);
        if stride % 4096 == 0 {
            stride += 64;
        }
        let bytes = stride
            .checked_mul(count as usize)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "pool too large"))?;
        let layout = Layout::from_size_align(bytes, 4096)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "pool too large"))?;
        // SAFETY: `layout` has a non-zero size (count and size are both at least 1).
        let mem = NonNull::new(unsafe { alloc(layout) }).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::OutOfMemory,
                "cannot allocate the buffer pool",
            )
        })?;
        let free = if all_free {
            (0..count).rev().collect()
        } else {
            Vec::with_capacity(count as usize)
        };
        Ok(Rc::new(Pool {
            mem,
            layout,
            size,
            stride,
            count,
            free: RefCell::new(free),
        }))
    }

    /// Bytes per buffer.
    pub(crate) fn size(&self) -> usize {
        self.size
    }

    /// Buffers in the pool.
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    pub(crate) fn count(&self) -> u16 {
        self.count
    }

    /// Where buffer `index` starts: for the kernel, which writes there while it holds it.
    #[inline]
    pub(crate) fn addr(&self, index: u16) -> *mut u8 {
        assert!(index < self.count, "buffer {index} out of the pool");
        // SAFETY: `index < count`, so the offset stays inside the allocation.
        unsafe { self.mem.as_ptr().add(index as usize * self.stride) }
    }

    /// Where buffer `index` starts, unchecked: for a [`PooledBuf`], whose index was checked
    /// when it was made (`hold`).
    ///
    /// # Safety
    ///
    /// `index` must be below the pool's count.
    #[inline]
    unsafe fn addr_unchecked(&self, index: u16) -> *mut u8 {
        debug_assert!(index < self.count);
        // SAFETY: `index < count` (the caller's promise): the offset stays inside the
        // allocation.
        unsafe { self.mem.as_ptr().add(index as usize * self.stride) }
    }

    /// Takes one buffer off the free list, if any.
    pub(crate) fn pop_free(&self) -> Option<u16> {
        self.free.borrow_mut().pop()
    }

    /// Whether any buffer is on the free list.
    pub(crate) fn has_free(&self) -> bool {
        !self.free.borrow().is_empty()
    }

    /// Puts buffer `index` back on the free list (a buffer the kernel gave back unused).
    #[inline]
    pub(crate) fn put_free(&self, index: u16) {
        debug_assert!(index < self.count);
        self.free.borrow_mut().push(index);
    }

    /// The buffer `index`, holding its first `len` bytes, now owned by the returned
    /// [`PooledBuf`] until it is dropped.
    ///
    /// # Safety
    ///
    /// Buffer `index` must be owned by the caller: neither lent to the kernel any more (its
    /// completion has been reaped), nor on the free list, nor held by another `PooledBuf`. Its
    /// first `len` bytes must have been written (`len <= size`).
    pub(crate) unsafe fn hold(self: &Rc<Pool>, index: u16, len: usize) -> PooledBuf {
        assert!(index < self.count && len <= self.size);
        PooledBuf {
            pool: self.clone(),
            index,
            len: len as u32,
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout; the last reference is gone, and the
        // engines keep one while the kernel may still write into any buffer.
        unsafe { dealloc(self.mem.as_ptr(), self.layout) };
    }
}

impl fmt::Debug for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pool")
            .field("count", &self.count)
            .field("size", &self.size)
            .field("free", &self.free.borrow().len())
            .finish()
    }
}

/// A buffer of a [`LocalPort`](crate::LocalPort)'s pool, holding the bytes a pooled receive
/// ([`LocalPort::recv_pooled`](crate::LocalPort::recv_pooled)) received.
///
/// It dereferences to those bytes (`&[u8]`, and `&mut [u8]` to change them in place). Dropping
/// it gives the buffer back to the pool, for the next pooled receive; sending it with
/// [`LocalPort::send_pooled`](crate::LocalPort::send_pooled) echoes it without a copy, and the
/// send's completion hands it back. It belongs to the port's thread: it is neither `Send` nor
/// `Sync`.
///
/// ```no_run
/// # fn f(port: &proactor::LocalPort, conn: &proactor::LocalHandle<std::net::TcpStream>) -> std::io::Result<()> {
/// port.recv_pooled(conn);
/// let mut done = port.get_completion(None)?;
/// if let Some(data) = done.take_pooled() {
///     println!("{} bytes: {:?}", data.len(), &data[..]);
///     // Dropping `data` returns the buffer to the pool.
/// }
/// # Ok(()) }
/// ```
pub struct PooledBuf {
    pool: Rc<Pool>,
    index: u16,
    len: u32,
}

impl PooledBuf {
    /// The buffer's index in its pool (io_uring's buffer id), for the engines.
    #[allow(dead_code)] // for the io_uring engine
    pub(crate) fn index(&self) -> u16 {
        self.index
    }

    /// Whether this buffer belongs to `pool`.
    pub(crate) fn is_from(&self, pool: &Rc<Pool>) -> bool {
        Rc::ptr_eq(&self.pool, pool)
    }

    /// How many bytes the buffer can hold (the pool's buffer size).
    ///
    /// ```no_run
    /// # fn f(buf: proactor::PooledBuf) {
    /// assert!(buf.len() <= buf.capacity());
    /// # }
    /// ```
    pub fn capacity(&self) -> usize {
        self.pool.size
    }

    /// How many bytes the buffer holds (what `&buf[..]` spans, without forming the slice).
    ///
    /// ```no_run
    /// # fn f(buf: proactor::PooledBuf) {
    /// assert_eq!(buf.len(), buf[..].len());
    /// # }
    /// ```
    #[inline]
    pub fn len(&self) -> usize {
        self.len as usize
    }

    /// Whether the buffer holds no bytes.
    ///
    /// ```no_run
    /// # fn f(buf: proactor::PooledBuf) {
    /// assert_eq!(buf.is_empty(), buf.len() == 0);
    /// # }
    /// ```
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Shortens the buffer to its first `len` bytes (no effect if it is not longer).
    ///
    /// ```no_run
    /// # fn f(mut buf: proactor::PooledBuf) {
    /// buf.truncate(1);
    /// assert!(buf.len() <= 1);
    /// # }
    /// ```
    pub fn truncate(&mut self, len: usize) {
        if len < self.len as usize {
            self.len = len as u32;
        }
    }
}

impl Deref for PooledBuf {
    type Target = [u8];

    #[inline]
    fn deref(&self) -> &[u8] {
        // SAFETY: this `PooledBuf` owns buffer `index` (see `Pool::hold`, which checked it
        // is in the pool): nothing else reads or writes it, and its first `len` bytes were
        // written.
        unsafe {
            std::slice::from_raw_parts(self.pool.addr_unchecked(self.index), self.len as usize)
        }
    }
}

impl DerefMut for PooledBuf {
    #[inline]
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as for `deref`; `&mut self` makes this the only reference.
        unsafe {
            std::slice::from_raw_parts_mut(self.pool.addr_unchecked(self.index), self.len as usize)
        }
    }
}

impl Drop for PooledBuf {
    #[inline]
    fn drop(&mut self) {
        self.pool.put_free(self.index);
    }
}

impl fmt::Debug for PooledBuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PooledBuf")
            .field("index", &self.index)
            .field("len", &self.len)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_buffer_returns_to_the_free_list_when_dropped() {
        let pool = Pool::new(4, 16, true).unwrap();
        let i = pool.pop_free().unwrap();
        // SAFETY: `i` came off the free list: nothing else owns it; 3 bytes are written first.
        let mut buf = unsafe {
            pool.addr(i).copy_from_nonoverlapping(b"abc".as_ptr(), 3);
            pool.hold(i, 3)
        };
        assert_eq!(&buf[..], b"abc");
        buf[0] = b'x';
        buf.truncate(2);
        assert_eq!(&buf[..], b"xb");
        assert_eq!(buf.capacity(), 16);
        assert!(buf.is_from(&pool));
        let mut held = Vec::new();
        while let Some(j) = pool.pop_free() {
            held.push(j);
        }
        assert_eq!(held.len(), 3);
        assert!(!pool.has_free());
        drop(buf);
        assert_eq!(pool.pop_free(), Some(i));
    }

    #[test]
    fn sizes_are_checked() {
        assert!(Pool::new(3, 16, true).is_err());
        assert!(Pool::new(0, 16, true).is_err());
        assert!(Pool::new(4, 0, true).is_err());
        let pool = Pool::new(2, 8, false).unwrap();
        assert!(!pool.has_free());
        assert_eq!((pool.count(), pool.size()), (2, 8));
    }
}
