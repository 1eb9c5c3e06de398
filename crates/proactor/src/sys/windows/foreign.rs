//! Operations on handles another completion port owns (or none does).
//!
//! A handle joins one port for life. An overlapped operation issued on a handle that another
//! port owns would queue its packet there, with an `OVERLAPPED` that port's owner never made
//! (the Go runtime crashed on exactly this). Windows' documented escape: an `hEvent` whose
//! low-order bit is set keeps the packet off the port, and the event signals completion.
//!
//! Here each such operation takes a manual-reset event from a pool and puts `event | 1` in its
//! `OVERLAPPED`. If the operation goes pending, a registered wait (`RegisterWaitForSingleObject`,
//! run once) posts the record's `OVERLAPPED` into *our* port when the event fires; the port then
//! finishes it like any other, reading status and byte count from the `OVERLAPPED`. An
//! operation that ends at once goes to the ready queue. The event returns to the pool when the
//! completion is dequeued.
//!
//! Each foreign handle keeps the addresses of our operations in flight on it, so that dropping
//! it cancels ours alone (`CancelIoEx` with each `OVERLAPPED`), never the owner's operations.

use std::{
    ffi::c_void,
    io,
    os::windows::io::{AsRawHandle, FromRawHandle, OwnedHandle},
    ptr,
    sync::{
        Arc, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicUsize, Ordering},
    },
};

use windows_sys::Win32::{
    Foundation::{FALSE, HANDLE, INVALID_HANDLE_VALUE, TRUE},
    System::{
        IO::{CancelIoEx, PostQueuedCompletionStatus},
        Threading::{
            CreateEventW, INFINITE, RegisterWaitForSingleObject, ResetEvent, UnregisterWaitEx,
            WT_EXECUTEONLYONCE,
        },
    },
};

use super::{
    RawIo, error,
    overlapped::{Op, overlapped},
};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Manual-reset events, reused across operations.
#[derive(Default)]
pub(crate) struct EventPool {
    events: Mutex<Vec<OwnedHandle>>,
}

impl EventPool {
    pub(crate) fn get(&self) -> io::Result<OwnedHandle> {
        if let Some(event) = lock(&self.events).pop() {
            return Ok(event);
        }
        // SAFETY: creates a new unnamed manual-reset event, initially not signalled.
        let raw = unsafe { CreateEventW(ptr::null(), TRUE, FALSE, ptr::null()) };
        if raw.is_null() {
            return Err(error::last_error());
        }
        // SAFETY: a new handle that nothing else owns.
        Ok(unsafe { OwnedHandle::from_raw_handle(raw) })
    }

    pub(crate) fn put(&self, event: OwnedHandle) {
        // SAFETY: the event is open and ours; no operation uses it any more.
        if unsafe { ResetEvent(event.as_raw_handle()) } != FALSE {
            lock(&self.events).push(event);
        }
    }
}

/// Our operations in flight on one foreign handle: their `OVERLAPPED` addresses.
#[derive(Debug, Default)]
pub(crate) struct Registry {
    ops: Mutex<Vec<usize>>,
}

impl Registry {
    pub(crate) fn add(&self, op: usize) {
        lock(&self.ops).push(op);
    }

    pub(crate) fn remove(&self, op: usize) {
        lock(&self.ops).retain(|&o| o != op);
    }

    /// Cancels each of our operations on `handle`, and only those.
    pub(crate) fn cancel_all(&self, handle: RawIo) {
        let ops = lock(&self.ops);
        for &op in ops.iter() {
            // SAFETY: an address stays in the registry until its record is finished, which
            // takes this lock first: the record is live. CancelIoEx only matches addresses.
            unsafe { CancelIoEx(handle.handle(), overlapped(op as *mut Op)) };
        }
    }
}

/// What a foreign operation owns besides the usual record.
pub(crate) struct ForeignOp {
    pub(crate) event: OwnedHandle,
    /// The registered wait, once armed (0 until then).
    pub(crate) wait: AtomicUsize,
    /// The port the completion is posted to.
    pub(crate) port: usize,
    pub(crate) registry: Arc<Registry>,
}

/// The `hEvent` that keeps the packet away from the owning port: the event with its low-order
/// bit set.
pub(crate) fn tagged(event: &OwnedHandle) -> HANDLE {
    (event.as_raw_handle() as usize | 1) as HANDLE
}

/// Registers the wait that posts a pending foreign operation into our port when it completes.
///
/// # Safety
///
/// `op` must be a record given to the kernel with a `ForeignOp` whose event is the one in its
/// `OVERLAPPED`, and the operation must be pending: the record stays allocated until the
/// posted packet is dequeued.
pub(crate) unsafe fn arm(op: *mut Op) -> io::Result<()> {
    // SAFETY: the record is live (caller); the kernel never touches `foreign`, and nothing else
    // does until the posted packet is dequeued; addr_of creates no reference to the whole record.
    let foreign = unsafe { &*ptr::addr_of!((*op).foreign) };
    let Some(foreign) = foreign else {
        return Ok(());
    };
    let mut wait: HANDLE = ptr::null_mut();
    // SAFETY: the event is open; `on_event` is valid for the life of the process; the context
    // is the record, alive until its packet is dequeued (after the callback posted it).
    let ok = unsafe {
        RegisterWaitForSingleObject(
            &mut wait,
            foreign.event.as_raw_handle(),
            Some(on_event),
            op.cast_const().cast(),
            INFINITE,
            WT_EXECUTEONLYONCE,
        )
    };
    if ok == FALSE {
        return Err(error::last_error());
    }
    foreign.wait.store(wait as usize, Ordering::Release);
    Ok(())
}

/// The registered wait's callback: the foreign operation completed; post it to our port.
unsafe extern "system" fn on_event(context: *mut c_void, _timed_out: bool) {
    let op = context.cast::<Op>();
    // SAFETY: the context is a live record (see `arm`); its `foreign` and `context` fields are
    // not written by anyone while it waits; its OVERLAPPED was completed by the kernel before
    // the event was set.
    let (port, key, bytes) = unsafe {
        let foreign = &*ptr::addr_of!((*op).foreign);
        let port = foreign.as_ref().map_or(0, |f| f.port);
        let ov = &*overlapped(op);
        (port, (*op).context, ov.InternalHigh)
    };
    // SAFETY: the port handle stays open while operations are in flight (the port's drop
    // unregisters this wait before closing it). The packet carries the record's OVERLAPPED,
    // which the port takes back when dequeuing.
    unsafe { PostQueuedCompletionStatus(port as HANDLE, bytes as u32, key, overlapped(op)) };
}

/// Ends the registered wait of a dequeued foreign operation (its callback already ran: it
/// posted the packet). Waits briefly for the submitter to have stored the wait handle.
pub(crate) fn disarm(foreign: &ForeignOp) {
    let mut wait = foreign.wait.load(Ordering::Acquire);
    while wait == 0 {
        std::thread::yield_now();
        wait = foreign.wait.load(Ordering::Acquire);
    }
    // SAFETY: a wait registered by `arm`, unregistered once; a null completion event makes the
    // call non-blocking (the callback has finished or is returning).
    unsafe { UnregisterWaitEx(wait as HANDLE, ptr::null_mut()) };
}

/// Stops a wait whose operation is being leaked at port drop: after this returns the callback
/// never runs (or has finished), so nothing posts to the port once it is closed.
///
/// # Safety
///
/// `op` must be a live record (a leaked one is).
pub(crate) unsafe fn abandon(op: *mut Op) {
    // SAFETY: the record is live (caller).
    let foreign = unsafe { &*ptr::addr_of!((*op).foreign) };
    if let Some(f) = foreign {
        let wait = f.wait.load(Ordering::Acquire);
        if wait != 0 {
            // SAFETY: a registered wait; INVALID_HANDLE_VALUE blocks until any running callback
            // has returned.
            unsafe { UnregisterWaitEx(wait as HANDLE, INVALID_HANDLE_VALUE) };
        }
    }
}
