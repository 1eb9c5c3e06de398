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
//! The wait's handle is known only after `RegisterWaitForSingleObject` returns, and by then the
//! callback may have posted the record and another thread finished it. So the handle is
//! published in a [`WaitSlot`] the submitter and the record share (an `Arc`, never the record
//! itself): both sides swap, and whichever comes second unregisters the wait. Nobody spins,
//! and the submitter never writes into a record it no longer owns.
//!
//! Each foreign handle keeps the addresses of our operations in flight on it, so that dropping
//! it (or `Iocp::cancel_all`) cancels ours alone (`CancelIoEx` with each `OVERLAPPED`), never the
//! owner's operations. A port that drops before its foreign handles unregisters every wait
//! (waiting for running callbacks), reclaims or leaks every record, and kills the handles'
//! registries: dropping a handle later cancels nothing.

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
            WT_EXECUTEONLYONCE, WaitForSingleObject,
        },
    },
};

use super::{
    RawIo, error,
    overlapped::{Op, overlapped},
};

/// Locks `m`, whatever a panicking holder left: every lock of the backend's shared state.
pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
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
///
/// An address is added before its record goes to the kernel and removed, under this lock,
/// before the record is freed or reused, so every address listed names a live record. Once the
/// port that made the registry is dropped it is *dead*: the port reclaimed or leaked every
/// record, and a later drop of the `Foreign` handle cancels nothing.
#[derive(Debug, Default)]
pub(crate) struct Registry {
    ops: Mutex<Ops>,
}

#[derive(Debug, Default)]
struct Ops {
    addresses: Vec<usize>,
    dead: bool,
}

impl Registry {
    pub(crate) fn add(&self, op: usize) {
        lock(&self.ops).addresses.push(op);
    }

    pub(crate) fn remove(&self, op: usize) {
        let mut ops = lock(&self.ops);
        if let Some(i) = ops.addresses.iter().position(|&o| o == op) {
            ops.addresses.swap_remove(i);
        }
    }

    /// Cancels each of our operations on `handle`, and only those (the owner's operations on
    /// it are never touched).
    pub(crate) fn cancel_all(&self, handle: RawIo) {
        let ops = lock(&self.ops);
        if ops.dead {
            return;
        }
        for &op in &ops.addresses {
            // SAFETY: an address stays in the registry until its record is finished, which
            // takes this lock first: the record is live. CancelIoEx only matches addresses.
            unsafe { CancelIoEx(handle.handle(), overlapped(op as *mut Op)) };
        }
    }

    /// The port that made this registry is gone: forget every address (each record was
    /// reclaimed, or leaked and never freed) and cancel nothing from now on.
    pub(crate) fn kill(&self) {
        let mut ops = lock(&self.ops);
        ops.dead = true;
        ops.addresses = Vec::new();
    }
}

/// `WaitSlot` value: the thread that finished the record has been (the wait is unregistered by
/// whoever comes second).
const FINISHED: usize = usize::MAX;

/// The registered wait's handle, in memory the submitter and the thread that finishes the
/// record share (the record itself may be freed before the submitter is done with it).
///
/// 0 until the submitter publishes the handle `RegisterWaitForSingleObject` returned, then that
/// handle; [`FINISHED`] once the record is finished. Both sides swap, and whichever comes second
/// unregisters the wait: nobody waits for the other.
#[derive(Debug, Default)]
pub(crate) struct WaitSlot(AtomicUsize);

impl WaitSlot {
    /// The submitter's side: publishes `wait`; if the record was already finished, ends the
    /// wait itself (its callback already posted the packet).
    fn publish(&self, wait: HANDLE) {
        // Only 0 becomes the handle: once FINISHED, the slot stays FINISHED, so a second
        // `finish` could never unregister the wait again.
        if self
            .0
            .compare_exchange(0, wait as usize, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            // SAFETY: a wait registered by `arm`, unregistered once (the finisher saw no
            // handle); a null completion event makes the call non-blocking (the callback has
            // posted its packet and returns).
            unsafe { UnregisterWaitEx(wait, ptr::null_mut()) };
        }
    }

    /// The finishing side: ends the wait if the submitter published it; otherwise the submitter
    /// will. `blocking` waits for a callback still running (needed before the port closes).
    pub(crate) fn finish(&self, blocking: bool) {
        let wait = self.0.swap(FINISHED, Ordering::AcqRel);
        if wait != 0 && wait != FINISHED {
            let event = if blocking {
                INVALID_HANDLE_VALUE
            } else {
                ptr::null_mut()
            };
            // SAFETY: a wait registered by `arm` and published, unregistered once (the swap
            // above took it). INVALID_HANDLE_VALUE blocks until a running callback returns;
            // null does not block.
            unsafe { UnregisterWaitEx(wait as HANDLE, event) };
        }
    }
}

/// What a foreign operation owns besides the usual record.
pub(crate) struct ForeignOp {
    pub(crate) event: OwnedHandle,
    /// The registered wait, shared with the submitter.
    pub(crate) wait: Arc<WaitSlot>,
    /// The port the completion is posted to.
    pub(crate) port: usize,
    pub(crate) registry: Arc<Registry>,
}

/// The `hEvent` that keeps the packet away from the owning port: the event with its low-order
/// bit set.
pub(crate) fn tagged(event: &OwnedHandle) -> HANDLE {
    (event.as_raw_handle() as usize | 1) as HANDLE
}

/// Registers the wait that posts a pending foreign operation into our port when it completes,
/// and publishes its handle in `slot`.
///
/// From the registration on, the callback may post the record and another thread finish and
/// free it: nothing here touches the record after `RegisterWaitForSingleObject`, only `slot`,
/// which the caller keeps alive.
///
/// # Safety
///
/// `op` must be a pending record given to the kernel whose `ForeignOp` holds `event` (the one
/// in its `OVERLAPPED`) and `slot`; the record stays allocated until the posted packet is
/// dequeued.
pub(crate) unsafe fn arm(op: *mut Op, event: HANDLE, slot: &WaitSlot) -> io::Result<()> {
    // A registration the thread pool refuses (out of resources), for the test of that path.
    crate::failpoint::failpoint!("iocp::foreign_register", |_| Err(io::Error::other(
        "failpoint: RegisterWaitForSingleObject refused"
    )));
    let mut wait: HANDLE = ptr::null_mut();
    // SAFETY: the event is open (the record owns it and is not finished before the callback
    // ran); `on_event` is valid for the life of the process; the context is the record, alive
    // until its packet is dequeued (after the callback posted it).
    let ok = unsafe {
        RegisterWaitForSingleObject(
            &mut wait,
            event,
            Some(on_event),
            op.cast_const().cast(),
            INFINITE,
            WT_EXECUTEONLYONCE,
        )
    };
    if ok == FALSE {
        return Err(error::last_error());
    }
    // The window of issue 13, item 4: the record may be finished (even freed) from here on.
    crate::failpoint::failpoint!("iocp::foreign_arm");
    slot.publish(wait);
    Ok(())
}

/// Delivers a pending foreign operation whose wait could not be registered (the thread pool
/// out of resources): nothing else would ever post it. Cancels it, waits on its event until
/// the kernel is done with the record, then posts it to our port as the wait's callback would
/// have; the port finishes it like any other (a cancel, or its outcome if it won the race).
/// Blocks the submitting thread for as long as the cancel takes: a path never expected.
///
/// # Safety
///
/// `op` is a record whose operation on `handle` went pending with `event` (untagged) in its
/// `OVERLAPPED`, and for which [`arm`] failed: nothing else posts or finishes it.
pub(crate) unsafe fn deliver_unarmed(op: *mut Op, handle: HANDLE, event: HANDLE) {
    // SAFETY: the record is live and pending (see above); CancelIoEx only matches its address.
    unsafe { CancelIoEx(handle, overlapped(op)) };
    // SAFETY: the event is open (the record owns it); the kernel sets it when the operation
    // ends, after which it no longer touches the record.
    unsafe { WaitForSingleObject(event, INFINITE) };
    // SAFETY: the operation has ended; `on_event` posts the record exactly as the wait would.
    unsafe { on_event(op.cast(), false) };
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
    // unregisters this wait, waiting for the callback, before closing it). The packet carries
    // the record's OVERLAPPED, which the port takes back when dequeuing. Nothing touches the
    // record after this call: another thread may be finishing it.
    unsafe { PostQueuedCompletionStatus(port as HANDLE, bytes as u32, key, overlapped(op)) };
}

/// Stops a wait whose operation is being leaked at port drop: after this returns the callback
/// never runs (or has finished), so nothing posts to the port once it is closed.
///
/// # Safety
///
/// `op` must be a live record (a leaked one is) that no other thread uses.
pub(crate) unsafe fn abandon(op: *mut Op) {
    // SAFETY: the record is live (caller); the kernel never touches `foreign`.
    let foreign = unsafe { &*ptr::addr_of!((*op).foreign) };
    if let Some(f) = foreign {
        f.wait.finish(true);
    }
}
