//! The operation record: its `OVERLAPPED`, its owned buffers, and the one typed hand-off of its
//! ownership to the kernel and back.
//!
//! # Ownership
//!
//! An [`OpBox`] owns a record. [`OpBox::into_raw`] gives that ownership to the kernel as the
//! `*mut OVERLAPPED` an overlapped call takes; [`OpBox::from_raw`] takes it back, and is called in
//! exactly two places: when the port dequeues the record's completion packet, and when the call
//! that started the operation returned without queueing a packet (it failed at once, or it
//! succeeded at once on a handle that skips the port on success). Between the two the record is
//! never touched through a reference, because the kernel may be writing its buffers and another
//! thread may already be dequeuing it.

use std::{
    cell::UnsafeCell,
    io,
    mem::{self, MaybeUninit, offset_of},
    ptr,
    sync::Arc,
};

use windows_sys::Win32::{
    Foundation::NTSTATUS,
    Networking::WinSock::{SOCKADDR_STORAGE, SOCKET},
    System::IO::OVERLAPPED,
};

use super::{DeferredClose, Life, RawIo, Route, foreign::ForeignOp, pool::RecordPool};
use crate::{OpId, OpKind, op::LiveCount};

/// Room for one address in an `AcceptEx` buffer: the largest sockaddr plus the 16 bytes
/// `AcceptEx` requires.
pub(crate) const ACCEPT_ADDR_LEN: usize = mem::size_of::<SOCKADDR_STORAGE>() + 16;

/// What an operation owns besides its `OVERLAPPED`.
pub(crate) enum OpData {
    /// Nothing: an operation refused before it started.
    None,
    /// A posted packet and the value it carries.
    Post(usize),
    /// A receive, send, read or write; a receive writes into the spare capacity.
    Buffer(Vec<u8>),
    /// A vectored receive or send.
    Buffers(Vec<Vec<u8>>),
    /// A zero-byte receive.
    Readable,
    /// An `AcceptEx`: the socket that becomes the connection and the address buffer.
    Accept {
        listener: SOCKET,
        route: Route,
        life: Arc<Life>,
        socket: socket2::Socket,
        addrs: Box<[u8; 2 * ACCEPT_ADDR_LEN]>,
        /// How many times in a row this accept was restarted after a client reset.
        restarts: u32,
        /// The listener's `Life::cancels` when the accept was asked for: a `cancel_all` since
        /// ends it instead of a restart.
        cancels: u64,
    },
    /// A `WSARecvFrom`: the buffer and where the kernel writes the source address.
    RecvFrom { buf: Vec<u8>, from: Box<FromAddr> },
    /// A `WSASendTo`: the buffer and the destination.
    SendTo {
        buf: Vec<u8>,
        /// Read by the kernel through a pointer taken at submission; boxed so it never moves.
        #[allow(dead_code)]
        to: Box<socket2::SockAddr>,
    },
    /// A `TransmitFile`: its own duplicate of the file handle, open until the kernel is done.
    Transmit {
        #[allow(dead_code)]
        file: std::fs::File,
    },
    /// A `WSAIoctl` or `DeviceIoControl`: input, and output written into its spare capacity.
    Ioctl {
        code: u32,
        input: Vec<u8>,
        output: Vec<u8>,
    },
    /// A `ConnectEx`: the address it connects to.
    Connect {
        life: Arc<Life>,
        /// Read by the kernel through a pointer taken at submission; boxed so it never moves.
        #[allow(dead_code)]
        addr: Box<socket2::SockAddr>,
    },
}

/// The source address a `WSARecvFrom` writes, with its length.
pub(crate) struct FromAddr {
    pub(crate) storage: SOCKADDR_STORAGE,
    pub(crate) len: i32,
}

impl FromAddr {
    pub(crate) fn new() -> Box<FromAddr> {
        // SAFETY: SOCKADDR_STORAGE is plain data for which zeroes are valid.
        let storage = unsafe { mem::zeroed() };
        Box::new(FromAddr {
            storage,
            len: mem::size_of::<SOCKADDR_STORAGE>() as i32,
        })
    }
}

/// One operation. `#[repr(C)]` with the `OVERLAPPED` first, so that the `*mut OVERLAPPED` the
/// kernel hands back is a pointer to the whole record.
#[repr(C)]
pub(crate) struct Op {
    overlapped: UnsafeCell<OVERLAPPED>,
    pub(crate) id: OpId,
    pub(crate) kind: OpKind,
    pub(crate) context: usize,
    /// The operation's own user value ([`crate::Submit`]), handed back by its completion.
    pub(crate) user: usize,
    pub(crate) target: RawIo,
    /// `WSARecv` flags, in and out; kept here because the provider may write them at completion.
    pub(crate) flags: u32,
    /// The outcome when the operation ended at submission and no packet will be queued: the
    /// bytes transferred (a warning completion such as a partial message carries some even
    /// though it failed) and the error, if it failed.
    pub(crate) immediate: Option<(usize, Option<io::Error>)>,
    /// The event and wait of an operation on a foreign handle.
    pub(crate) foreign: Option<ForeignOp>,
    pub(crate) data: OpData,
    /// For a send or receive on a socket the handle owns: a dropped handle's socket stays open
    /// until the last record holding this is dropped, so that none finds it closed under it.
    pub(crate) keeps_open: Option<Arc<DeferredClose>>,
    _live: LiveCount,
}

// The kernel's `OVERLAPPED*` and the record's address must be the same pointer.
const _: () = assert!(offset_of!(Op, overlapped) == 0);

/// Sole owner of an [`Op`] that the kernel is not using.
pub(crate) struct OpBox(Box<Op>);

// SAFETY: an OpBox is the only owner of its record and the kernel is not using it (that is the
// type's invariant); its raw-pointer fields (the OVERLAPPED's hEvent, WSABUF pointers made from
// the buffers) are plain data with no thread affinity.
unsafe impl Send for OpBox {}

impl OpBox {
    /// A new record, in memory from `pool`; `offset` is where a read or write starts (ignored
    /// by sockets).
    pub(crate) fn new(
        pool: &RecordPool,
        id: OpId,
        kind: OpKind,
        context: usize,
        target: RawIo,
        offset: u64,
        data: OpData,
    ) -> OpBox {
        // SAFETY: OVERLAPPED is plain data for which all zeroes is the documented initial state.
        let mut overlapped: OVERLAPPED = unsafe { mem::zeroed() };
        overlapped.Anonymous.Anonymous.Offset = offset as u32;
        overlapped.Anonymous.Anonymous.OffsetHigh = (offset >> 32) as u32;
        let mut memory = pool.take();
        memory.write(Op {
            overlapped: UnsafeCell::new(overlapped),
            id,
            kind,
            context,
            user: 0,
            target,
            flags: 0,
            immediate: None,
            foreign: None,
            data,
            keeps_open: None,
            _live: LiveCount::new(),
        });
        // SAFETY: the whole record was just written.
        OpBox(unsafe { memory.assume_init() })
    }

    /// Puts `event` in the `OVERLAPPED`'s `hEvent` (before the record goes to the kernel).
    pub(crate) fn set_event(&mut self, event: windows_sys::Win32::Foundation::HANDLE) {
        // SAFETY: the box is the record's only owner and the kernel does not have it yet.
        unsafe { (*self.0.overlapped.get()).hEvent = event };
    }

    /// Gives the record to the kernel: the pointer to pass as an overlapped call's
    /// `lpOverlapped`. The record stays allocated until [`OpBox::from_raw`] takes it back.
    pub(crate) fn into_raw(self) -> *mut Op {
        Box::into_raw(self.0)
    }

    /// Takes a record back from the kernel.
    ///
    /// # Safety
    ///
    /// `op` must come from [`OpBox::into_raw`], must not have been taken back already, and the
    /// kernel must be done with it: its completion packet was dequeued, or the call that started
    /// it returned without queueing one.
    pub(crate) unsafe fn from_raw(op: *mut Op) -> OpBox {
        // SAFETY: the caller guarantees `op` is an unreclaimed pointer from Box::into_raw that
        // nothing else uses any more.
        OpBox(unsafe { Box::from_raw(op) })
    }

    /// The NTSTATUS and byte count the kernel left in the `OVERLAPPED` when it finished.
    pub(crate) fn status(&self) -> (NTSTATUS, usize) {
        // SAFETY: the kernel is done with the record (type invariant), so reading it races with
        // nothing.
        let ov = unsafe { &*self.0.overlapped.get() };
        (ov.Internal as NTSTATUS, ov.InternalHigh)
    }

    /// Consumes the box, returning the record and keeping its memory in `pool`.
    pub(crate) fn into_inner(self, pool: &RecordPool) -> Op {
        let raw = Box::into_raw(self.0);
        // SAFETY: `raw` is the initialised record this box owned; reading moves it out, and the
        // memory is treated as uninitialised from here on.
        let op = unsafe { ptr::read(raw) };
        // SAFETY: the same allocation, retyped to MaybeUninit<Op> (same layout), so that
        // dropping or reusing it never drops the record a second time.
        pool.give(unsafe { Box::from_raw(raw.cast::<MaybeUninit<Op>>()) });
        op
    }
}

impl std::ops::Deref for OpBox {
    type Target = Op;

    fn deref(&self) -> &Op {
        &self.0
    }
}

impl std::ops::DerefMut for OpBox {
    fn deref_mut(&mut self) -> &mut Op {
        &mut self.0
    }
}

/// The `OVERLAPPED` of a record given to the kernel.
pub(crate) fn overlapped(op: *mut Op) -> *mut OVERLAPPED {
    // The OVERLAPPED is the first field (asserted above): the same address, typed.
    op.cast()
}

/// The record a dequeued `OVERLAPPED` belongs to.
pub(crate) fn op_of(overlapped: *mut OVERLAPPED) -> *mut Op {
    overlapped.cast()
}

/// A raw pointer to the `WSARecv` flags of a record given to the kernel.
///
/// # Safety
///
/// `op` must point to a live record. The returned pointer may be given to the kernel with the
/// record's `OVERLAPPED`; it must not be used by Rust code until the record is taken back.
pub(crate) unsafe fn flags_of(op: *mut Op) -> *mut u32 {
    // SAFETY: the caller guarantees `op` is live; addr_of_mut creates no intermediate reference.
    unsafe { ptr::addr_of_mut!((*op).flags) }
}
