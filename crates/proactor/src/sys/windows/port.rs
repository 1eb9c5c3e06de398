//! The completion port: creation, association, posting, dequeuing, and the drop that drains it.
//!
//! # One flow for every completion
//!
//! Most operations end as a packet the kernel queues to the port. Two kinds end at submission
//! with no packet: those that fail at once, and those that succeed at once on a handle in
//! skip-on-success mode. Those go to the port's *ready queue*, which `get_completion` and
//! `get_completions` drain before (and, for fairness, interleaved with) the kernel's queue, so the
//! application sees one flow. A thread blocked in the kernel does not see the ready queue, so a
//! push wakes one with an empty packet when any is blocked; the `waiters` count and `ready_len`
//! are both sequentially consistent, so either the pusher sees the waiter or the waiter sees the
//! item, never neither.

use std::{
    collections::VecDeque,
    io, mem,
    os::windows::io::{AsRawHandle, FromRawHandle, OwnedHandle},
    ptr,
    sync::{
        Arc, Mutex, PoisonError, Weak,
        atomic::{
            AtomicBool, AtomicU64, AtomicUsize,
            Ordering::{Relaxed, SeqCst},
        },
    },
    time::{Duration, Instant},
};

use windows_sys::{
    Wdk::Storage::FileSystem::{
        FILE_MODE_INFORMATION, FILE_SYNCHRONOUS_IO_ALERT, FILE_SYNCHRONOUS_IO_NONALERT,
        FileModeInformation, NtQueryInformationFile,
    },
    Win32::{
        Foundation::{
            ERROR_INVALID_HANDLE, ERROR_INVALID_PARAMETER, FALSE, HANDLE, INVALID_HANDLE_VALUE,
            NTSTATUS, STATUS_INVALID_HANDLE, STATUS_OBJECT_TYPE_MISMATCH, WAIT_TIMEOUT,
        },
        Storage::FileSystem::SetFileCompletionNotificationModes,
        System::{
            IO::{
                CancelIoEx, CreateIoCompletionPort, GetQueuedCompletionStatusEx, IO_STATUS_BLOCK,
                OVERLAPPED_ENTRY, PostQueuedCompletionStatus,
            },
            WindowsProgramming::{
                FILE_SKIP_COMPLETION_PORT_ON_SUCCESS, FILE_SKIP_SET_EVENT_ON_HANDLE,
            },
        },
    },
};

use super::{
    Life, RawIo, Route, Target,
    close::{DeferredClose, Dropped},
    error,
    foreign::{self, EventPool, ForeignOp, Registry, WaitSlot},
    net,
    overlapped::{Op, OpBox, OpData, op_of, overlapped},
    pool::RecordPool,
};
use crate::{
    Completion, OpId, OpKind,
    error::explained,
    table::{self, Table},
};

/// How long dropping a port waits for cancelled operations to complete before leaking them.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Entries read from the kernel by one `GetQueuedCompletionStatusEx` call.
const BATCH: usize = 128;

/// After this many completions in a row from the ready queue with no look at the kernel's queue,
/// look there first, so that operations ending at submission cannot starve the ones the kernel
/// completed. Every dequeue from the kernel starts a new streak: traffic that alternates between
/// the two (an echo's immediate send, then a pending receive) never pays for the extra look.
const READY_STREAK: usize = 16;

/// What the table knows of an operation in flight: enough to cancel it.
#[derive(Clone, Copy)]
pub(crate) struct Entry {
    op: usize,
    target: RawIo,
    /// An accept, which a client's reset restarts under the same id (see [`Port::cancel`]).
    restartable: bool,
}

/// How the call that started an operation returned.
pub(crate) enum Started {
    /// `ERROR_IO_PENDING`: a packet will be queued.
    Pending,
    /// Success at once: a packet is queued unless the handle skips the port on success.
    Done,
    /// Failure at once, with this Win32 or WinSock code: no packet will be queued.
    Failed(u32),
    /// Success reported as a failure code (`ERROR_PIPE_CONNECTED`): no packet will be queued.
    Connected,
}

/// A Windows I/O completion port and the operations in flight on it.
pub(crate) struct Port {
    handle: OwnedHandle,
    id: u64,
    table: Table<Entry>,
    ready: Mutex<VecDeque<OpBox>>,
    ready_len: AtomicUsize,
    waiters: AtomicUsize,
    /// Completions taken from the ready queue since a thread last looked at the kernel's queue.
    streak: AtomicUsize,
    pub(crate) records: RecordPool,
    skip_on_success: AtomicBool,
    immediate: AtomicU64,
    events: EventPool,
    /// The registries of the `Foreign` handles this port made, killed when it drops (a handle
    /// may outlive its port).
    registries: Mutex<Vec<Weak<Registry>>>,
    /// Dropped sockets waiting for their sends and receives (`close.rs`).
    dropped: Arc<Dropped>,
}

impl Port {
    /// Creates a port letting `concurrency` threads run at once (0: one per processor).
    pub(crate) fn new(concurrency: u32) -> io::Result<Port> {
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        // SAFETY: creating a new port: no file handle, no existing port; plain values.
        let raw = unsafe {
            CreateIoCompletionPort(INVALID_HANDLE_VALUE, ptr::null_mut(), 0, concurrency)
        };
        if raw.is_null() {
            return Err(error::last_error());
        }
        // SAFETY: `raw` is a new handle that nothing else owns.
        let handle = unsafe { OwnedHandle::from_raw_handle(raw) };
        let port = Port {
            handle,
            id: NEXT_ID.fetch_add(1, SeqCst),
            table: Table::new(),
            ready: Mutex::new(VecDeque::new()),
            ready_len: AtomicUsize::new(0),
            waiters: AtomicUsize::new(0),
            streak: AtomicUsize::new(0),
            records: RecordPool::new(),
            skip_on_success: AtomicBool::new(true),
            immediate: AtomicU64::new(0),
            events: EventPool::default(),
            registries: Mutex::new(Vec::new()),
            dropped: Dropped::new(raw),
        };
        tracing::debug!(port = ?port.raw_handle(), concurrency, "created I/O completion port");
        Ok(port)
    }

    /// The name of this backend.
    pub(crate) fn backend(&self) -> &'static str {
        "iocp"
    }

    pub(crate) fn raw_handle(&self) -> HANDLE {
        self.handle.as_raw_handle()
    }

    /// Associates `raw` with the port, with `context` as its completion key.
    pub(crate) fn associate(
        &self,
        raw: RawIo,
        foreign: bool,
        context: usize,
    ) -> io::Result<Target> {
        if foreign {
            // Another port owns it: no association, completions come through events.
            tracing::debug!(handle = raw.value(), context, "adopted foreign handle");
            let registry = Arc::<Registry>::default();
            {
                let mut registries = self
                    .registries
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                if registries.len() == registries.capacity() {
                    // Forget the handles already dropped before growing: amortised O(1).
                    registries.retain(|r| r.strong_count() > 0);
                }
                registries.push(Arc::downgrade(&registry));
            }
            return Ok(Target {
                context,
                raw,
                port: self.id,
                route: Route {
                    skip_on_success: false,
                    foreign: Some(registry),
                },
                life: Arc::new(Life::new()),
                deferred_close: None, // its owner closes it
                datagram: super::keeps_boundaries(raw),
            });
        }
        if let RawIo::Handle(_) = raw {
            check_overlapped(raw)?;
        }
        // SAFETY: `raw` is open (the caller owns the object); the port is ours and open.
        let port = unsafe { CreateIoCompletionPort(raw.handle(), self.raw_handle(), context, 0) };
        if port.is_null() {
            let code = io::Error::last_os_error().raw_os_error().unwrap_or(0) as u32;
            return Err(match code {
                ERROR_INVALID_PARAMETER => explained(
                    io::ErrorKind::AlreadyExists,
                    code as i32,
                    "the handle is already associated with a completion port",
                ),
                ERROR_INVALID_HANDLE => explained(
                    io::ErrorKind::InvalidInput,
                    code as i32,
                    "invalid or closed handle",
                ),
                _ => error::from_code(code, None),
            });
        }
        if let RawIo::Socket(s) = raw {
            net::udp_connreset_off(s);
        }
        let skip_on_success = self.skip_on_success.load(SeqCst)
            && match raw {
                RawIo::Handle(_) => true,
                // The TCP and UDP providers, and a Unix-domain socket's own.
                RawIo::Socket(s) => net::providers_are_ifs() && net::socket_is_ifs(s),
                RawIo::None => net::providers_are_ifs(),
            }
            // SAFETY: `raw` is open; the flags are the documented mode bits.
            && unsafe {
                SetFileCompletionNotificationModes(
                    raw.handle(),
                    (FILE_SKIP_COMPLETION_PORT_ON_SUCCESS | FILE_SKIP_SET_EVENT_ON_HANDLE) as u8,
                )
            } != 0;
        tracing::debug!(
            handle = raw.value(),
            context,
            skip_on_success,
            "associated handle"
        );
        Ok(Target {
            context,
            raw,
            port: self.id,
            route: Route {
                skip_on_success,
                foreign: None,
            },
            life: Arc::new(Life::new()),
            deferred_close: matches!(raw, RawIo::Socket(_))
                .then(|| DeferredClose::new(&self.dropped)),
            datagram: super::keeps_boundaries(raw),
        })
    }

    /// Whether handles associated from now on are put in skip-on-success mode (where safe).
    pub(crate) fn set_skip_on_success(&self, on: bool) {
        self.skip_on_success.store(on, SeqCst);
    }

    /// How many operations ended at submission and were delivered without a packet.
    pub(crate) fn immediate_completions(&self) -> u64 {
        self.immediate.load(SeqCst)
    }

    /// How many operations are in flight (submitted, completion not yet dequeued).
    pub(crate) fn in_flight(&self) -> usize {
        self.table.len()
    }

    /// Posts a packet carrying `context` and `value`.
    pub(crate) fn post(&self, context: usize, value: usize) -> io::Result<OpId> {
        let mut op = OpBox::new(
            &self.records,
            OpId::next(),
            OpKind::Post,
            context,
            RawIo::None,
            0,
            OpData::Post(value),
        );
        let Some(vacant) = self.table.vacant(op.id) else {
            return Err(table::full());
        };
        let id = vacant.id();
        op.id = id;
        let raw = op.into_raw();
        drop(vacant.insert(Entry {
            op: raw as usize,
            target: RawIo::None,
            restartable: false,
        }));
        // SAFETY: the port is open; `raw` is a record given to the kernel, which hands it back
        // through the port untouched.
        let ok =
            unsafe { PostQueuedCompletionStatus(self.raw_handle(), 0, context, overlapped(raw)) };
        if ok == FALSE {
            let err = error::last_error();
            self.table.remove(id);
            // SAFETY: the post failed, so no packet refers to the record.
            drop(unsafe { OpBox::from_raw(raw) });
            return Err(err);
        }
        Ok(id)
    }

    /// Submits an operation: records it, runs `call` (the overlapped call) on the record given
    /// to the kernel, and routes the outcome.
    ///
    /// `call` receives the record's pointer; it must start at most one overlapped operation
    /// with it and report how that call returned.
    pub(crate) fn start(
        &self,
        route: &Route,
        mut op: OpBox,
        call: impl FnOnce(*mut Op) -> Started,
    ) -> OpId {
        // A foreign operation's event and wait slot, kept here too: once the wait is
        // registered the record may be finished and freed by another thread before `arm`
        // returns, so the submitter never reads them from the record afterwards.
        let mut armed: Option<(HANDLE, Arc<WaitSlot>)> = None;
        if let Some(registry) = &route.foreign {
            let event = match self.events.get() {
                Ok(event) => event,
                Err(e) => return self.fail(op, e),
            };
            op.set_event(foreign::tagged(&event));
            let port = self.raw_handle() as usize;
            let wait = Arc::new(WaitSlot::default());
            armed = Some((event.as_raw_handle(), wait.clone()));
            op.foreign = Some(ForeignOp {
                event,
                wait,
                port,
                registry: registry.clone(),
            });
        }
        // The table gives the operation its id (an accept restarted after a client reset gets
        // back the one it had). A full table fails the operation.
        let Some(vacant) = self.table.vacant(op.id) else {
            return self.fail(op, table::full());
        };
        op.id = vacant.id();
        let (id, kind, target) = (op.id, op.kind, op.target);
        let raw = op.into_raw();
        drop(vacant.insert(Entry {
            op: raw as usize,
            target,
            restartable: kind == OpKind::Accept,
        }));
        if let Some(registry) = &route.foreign {
            registry.add(raw as usize);
        }
        // A foreign operation never queues a packet (its event has the low-order bit set):
        // one that ends at once is final, as on a skip-on-success handle.
        let skip_on_success = route.skip_on_success || route.foreign.is_some();
        match call(raw) {
            Started::Pending if route.foreign.is_some() => {
                if let Some((event, slot)) = &armed {
                    // SAFETY: a pending record whose ForeignOp holds `event` (the one in its
                    // OVERLAPPED) and `slot` (set above for every foreign route).
                    if let Err(e) = unsafe { foreign::arm(raw, *event, slot) } {
                        // Nothing would deliver it: cancel it and deliver it from here.
                        tracing::error!(op = kind.name(), %id, error = %e, "cannot wait for a foreign operation: cancelling it");
                        // SAFETY: `raw` went pending with `event` in its OVERLAPPED and its
                        // wait was not registered: nothing else posts or finishes it.
                        unsafe { foreign::deliver_unarmed(raw, target.handle(), *event) };
                    }
                }
                tracing::trace!(op = kind.name(), %id, handle = target.value(), "submitted (foreign), pending");
            }
            Started::Pending => {
                tracing::trace!(op = kind.name(), %id, handle = target.value(), "submitted, pending");
            }
            Started::Done if !skip_on_success => {
                tracing::trace!(op = kind.name(), %id, handle = target.value(), "submitted, done");
            }
            Started::Done => {
                // SAFETY: the call succeeded at once on a handle that skips the port on
                // success: the kernel is done with the record and queues no packet.
                let mut op = unsafe { OpBox::from_raw(raw) };
                let (_, bytes) = op.status();
                op.immediate = Some((bytes, None));
                tracing::trace!(op = kind.name(), %id, bytes, "submitted, done at once");
                self.push_ready(op);
            }
            Started::Connected => {
                // SAFETY: the call returned a failure code: no operation started, no packet.
                let mut op = unsafe { OpBox::from_raw(raw) };
                op.immediate = Some((0, None));
                self.push_ready(op);
            }
            Started::Failed(_)
                if route.foreign.is_none()
                    && !route.skip_on_success
                    && warning_queues_packet(raw) =>
            {
                // A synchronous "failure" that is an NT warning (ERROR_MORE_DATA from a message
                // pipe, a truncated datagram): the operation completed, and Windows' I/O
                // manager queues a packet for it as for a success (only errors are not
                // queued), unless the handle skips the packets of what completes at once
                // (then it is finished below, as libuv and .NET finish theirs). The packet
                // finishes it.
                tracing::trace!(op = kind.name(), %id, "submitted, completed with a warning; packet follows");
            }
            Started::Failed(code) => {
                // SAFETY: the call failed at once: no operation started, no packet is queued.
                let mut op = unsafe { OpBox::from_raw(raw) };
                // A warning completion (Wine: no packet follows) still moved bytes.
                let (status, bytes) = op.status();
                let bytes = if is_warning(status) { bytes } else { 0 };
                op.immediate = Some((bytes, Some(error::from_code(code, None))));
                tracing::trace!(op = kind.name(), %id, code, "submitted, failed at once");
                self.push_ready(op);
            }
        }
        id
    }

    /// Ends an operation that could not be started: its completion carries `err`.
    pub(crate) fn fail(&self, mut op: OpBox, err: io::Error) -> OpId {
        op.immediate = Some((0, Some(err)));
        // With a full table the failure is delivered all the same, under the id it was made
        // with (no entry: there is nothing to cancel).
        if let Some(vacant) = self.table.vacant(op.id) {
            op.id = vacant.id();
            drop(vacant.insert(Entry {
                op: 0,
                target: RawIo::None,
                restartable: false,
            }));
        }
        let id = op.id;
        self.push_ready(op);
        id
    }

    /// The error for an operation on `target` that the port must refuse, if any.
    pub(crate) fn check(&self, target: &Target, needs_socket: bool) -> Option<io::Error> {
        if target.port != self.id {
            return Some(crate::error::other_port());
        }
        if needs_socket && !matches!(target.raw, RawIo::Socket(_)) {
            return Some(crate::error::needs_socket());
        }
        None
    }

    fn push_ready(&self, op: OpBox) {
        self.immediate.fetch_add(1, SeqCst);
        {
            let mut ready = self.ready.lock().unwrap_or_else(PoisonError::into_inner);
            ready.push_back(op);
            self.ready_len.fetch_add(1, SeqCst);
        }
        if self.waiters.load(SeqCst) > 0 {
            // Wake a blocked thread with an empty packet; it then drains the ready queue. If
            // the post fails the item stays queued for the next caller, which is all we can do.
            // SAFETY: the port is open; a null OVERLAPPED marks the packet as a wake-up.
            unsafe { PostQueuedCompletionStatus(self.raw_handle(), 0, 0, ptr::null()) };
        }
    }

    fn pop_ready(&self) -> Option<OpBox> {
        if self.ready_len.load(SeqCst) == 0 {
            return None;
        }
        let mut ready = self.ready.lock().unwrap_or_else(PoisonError::into_inner);
        let op = ready.pop_front()?;
        self.ready_len.fetch_sub(1, SeqCst);
        Some(op)
    }

    /// Cancels the operation `id`, if it is still in flight.
    ///
    /// An accept is in flight until its completion is made, also while a client's reset
    /// restarts it (its failure waiting in the ready queue or the port's, then its new
    /// `AcceptEx`). `CancelIoEx` finds nothing pending then, so the table records the request:
    /// the restart sees it and ends the accept cancelled instead (see
    /// [`Port::end_restart_if_cancelled`] and [`Port::cancel_missed`]).
    pub(crate) fn cancel(&self, id: OpId) -> io::Result<()> {
        let cancelled = self.table.ask_cancel(id, |e| match e {
            // The id is kept for an accept being restarted: it sees the request.
            None => true,
            Some(e) if e.op == 0 || e.target == RawIo::None => false,
            Some(e) => {
                // SAFETY: the entry is present, so the record is live and cannot be freed while
                // the shard is locked; CancelIoEx only matches the OVERLAPPED's address against
                // the operations pending on the handle.
                let pending =
                    unsafe { CancelIoEx(e.target.handle(), overlapped(e.op as *mut Op)) != FALSE };
                // An accept with nothing pending is ending or about to restart: a restart
                // sees the request, an ending keeps its own outcome (as after any cancel).
                pending || e.restartable
            }
        });
        match cancelled {
            Some(true) => Ok(()),
            _ => Err(crate::error::not_cancellable()),
        }
    }

    /// Whether a cancel was asked for accept `id`, whose failure (a client's reset) would
    /// restart it: it ends cancelled instead.
    pub(crate) fn end_restart_if_cancelled(&self, id: OpId) -> bool {
        crate::failpoint::failpoint!("iocp::accept_restart");
        self.table.cancel_asked(id)
    }

    /// Cancels accept `id`, just issued, if a cancel came that its `AcceptEx` was too late for:
    /// one of `id` while it restarted, or (`all`) one of everything on its listener since it
    /// was asked for.
    pub(crate) fn cancel_missed(&self, id: OpId, all: bool) {
        self.table.with_cancel_asked(id, |e, asked| {
            if (asked || all) && e.op != 0 {
                // SAFETY: as in `cancel`: the entry is present, its record live.
                unsafe { CancelIoEx(e.target.handle(), overlapped(e.op as *mut Op)) };
            }
        });
    }

    /// Cancels every operation in flight on `target`.
    pub(crate) fn cancel_all(&self, target: &Target) -> io::Result<()> {
        if let Some(err) = self.check(target, false) {
            return Err(err);
        }
        // Counted first: an accept between two lives (a client's reset waiting to restart it)
        // is not in the kernel for the cancel below to find; its restart sees the count.
        target.life.cancel_all();
        if let Some(registry) = &target.route.foreign {
            // Another port's handle: CancelIoEx(handle, NULL) would cancel the owner's I/O
            // too. Cancel ours one by one, by address, under the registry's lock.
            registry.cancel_all(target.raw);
            return Ok(());
        }
        // SAFETY: the handle is open (the caller holds its owner); a null OVERLAPPED cancels all.
        if unsafe { CancelIoEx(target.raw.handle(), ptr::null()) } == FALSE {
            let err = error::last_error();
            // ERROR_NOT_FOUND: nothing was pending, which is success for "cancel all". (Wine
            // returns success here in the first place.)
            if err.kind() != io::ErrorKind::NotFound {
                return Err(err);
            }
        }
        Ok(())
    }

    /// Dequeues one completion, waiting at most `timeout` (`None`: forever).
    pub(crate) fn get_completion(&self, timeout: Option<Duration>) -> io::Result<Completion> {
        let deadline = Deadline::new(timeout);
        loop {
            if self.ready_len.load(SeqCst) > 0 {
                let fair = self.streak.fetch_add(1, Relaxed) + 1 >= READY_STREAK;
                if fair {
                    let mut entry = [empty_entry()];
                    if self.dequeue(&mut entry, 0)? == 1 {
                        if let Some(c) = self.finish_packet(&entry[0]) {
                            return Ok(c);
                        }
                        continue;
                    }
                }
                if let Some(op) = self.pop_ready() {
                    if let Some(c) = self.finish(op, None) {
                        return Ok(c);
                    }
                    continue;
                }
            }
            let mut entry = [empty_entry()];
            match self.wait(&mut entry, &deadline)? {
                Wait::Packets(_) => {
                    if let Some(c) = self.finish_packet(&entry[0]) {
                        return Ok(c);
                    }
                }
                Wait::Ready => {}
                Wait::TimedOut => return Err(crate::error::timed_out()),
            }
        }
    }

    /// Dequeues up to `max` completions into `out`, waiting at most `timeout` for the first.
    pub(crate) fn get_completions(
        &self,
        out: &mut Vec<Completion>,
        max: usize,
        timeout: Option<Duration>,
    ) -> io::Result<usize> {
        let deadline = Deadline::new(timeout);
        let start = out.len();
        let max = max.max(1);
        let mut entries = [empty_entry(); BATCH];
        let room = max.min(BATCH);
        loop {
            // Fairness first, as in `get_completion`: after a long streak of ready completions,
            // look at the kernel's queue (without waiting).
            if self.ready_len.load(SeqCst) > 0 && self.streak.load(Relaxed) >= READY_STREAK {
                let got = self.dequeue(&mut entries[..room], 0)?;
                for entry in &entries[..got] {
                    out.extend(self.finish_packet(entry));
                }
            }
            while out.len() - start < max {
                let Some(op) = self.pop_ready() else { break };
                self.streak.fetch_add(1, Relaxed);
                out.extend(self.finish(op, None));
            }
            // Whatever is ready is returned at once: packets the kernel holds are taken by the
            // next call, in one `GetQueuedCompletionStatusEx`, rather than by an extra call
            // (and its `GetLastError`) that usually finds none.
            if out.len() > start {
                return Ok(out.len() - start);
            }
            let got = match self.wait(&mut entries[..room], &deadline)? {
                Wait::Packets(n) => n,
                Wait::Ready => continue,
                Wait::TimedOut => return Err(crate::error::timed_out()),
            };
            for entry in &entries[..got] {
                out.extend(self.finish_packet(entry));
            }
            if out.len() > start {
                return Ok(out.len() - start);
            }
        }
    }

    /// Blocks in the kernel's queue, announcing itself to pushers of the ready queue.
    fn wait(&self, entries: &mut [OVERLAPPED_ENTRY], deadline: &Deadline) -> io::Result<Wait> {
        self.waiters.fetch_add(1, SeqCst);
        if self.ready_len.load(SeqCst) > 0 {
            self.waiters.fetch_sub(1, SeqCst);
            return Ok(Wait::Ready);
        }
        let got = self.dequeue(entries, deadline.millis());
        self.waiters.fetch_sub(1, SeqCst);
        match got? {
            0 if deadline.passed() => Ok(Wait::TimedOut),
            0 => Ok(Wait::Ready),
            n => Ok(Wait::Packets(n)),
        }
    }

    /// Dequeues what the kernel has, waiting at most `millis` (less while a dropped socket
    /// waits for its operations, which each dequeue then sweeps: `close.rs`); the number of
    /// entries filled, 0 on timeout.
    fn dequeue(&self, entries: &mut [OVERLAPPED_ENTRY], millis: u32) -> io::Result<usize> {
        self.streak.store(0, Relaxed);
        let got = self.dequeue_now(entries, self.dropped.wait_millis(millis));
        self.dropped.sweep();
        got
    }

    /// One `GetQueuedCompletionStatusEx`: the number of entries filled, 0 on timeout.
    fn dequeue_now(&self, entries: &mut [OVERLAPPED_ENTRY], millis: u32) -> io::Result<usize> {
        let mut n = 0u32;
        // SAFETY: `entries` is writable for its length; the port is open.
        let ok = unsafe {
            GetQueuedCompletionStatusEx(
                self.raw_handle(),
                entries.as_mut_ptr(),
                entries.len() as u32,
                &mut n,
                millis,
                FALSE,
            )
        };
        if ok == FALSE {
            let err = io::Error::last_os_error();
            // On a timeout Wine leaves `n` at 1: only a TRUE return says entries were filled.
            return match err.raw_os_error() {
                Some(code) if code as u32 == WAIT_TIMEOUT => Ok(0),
                _ => Err(error::from_code(
                    err.raw_os_error().unwrap_or(0) as u32,
                    None,
                )),
            };
        }
        Ok(n as usize)
    }

    /// The completion for one dequeued packet; `None` for a wake-up or an operation restarted.
    fn finish_packet(&self, entry: &OVERLAPPED_ENTRY) -> Option<Completion> {
        if entry.lpOverlapped.is_null() {
            return None; // a wake-up: the ready queue has work
        }
        // SAFETY: every non-null OVERLAPPED queued to this port is a record given to the kernel
        // by `start` or `post`; its packet is dequeued once, so this takes it back once.
        let op = unsafe { OpBox::from_raw(op_of(entry.lpOverlapped)) };
        self.finish(op, Some(entry.dwNumberOfBytesTransferred as usize))
    }

    /// Ends an operation whose record the kernel no longer uses.
    fn finish(&self, mut op: OpBox, packet_bytes: Option<usize>) -> Option<Completion> {
        // An accept may be restarted under its id (a client reset before it was accepted): its
        // entry keeps the id until the completion is made.
        let (id, restartable) = (op.id, op.kind == OpKind::Accept);
        let entry = if restartable {
            self.table.remove_keeping_id(id)
        } else {
            self.table.remove(id)
        };
        let address = entry.map_or(0, |e| e.op);
        self.reclaim_foreign(&mut op, packet_bytes.is_some(), false);
        let (bytes, error) = match (op.immediate.take(), packet_bytes) {
            (Some(outcome), _) => outcome,
            (None, bytes) => {
                let (status, internal_bytes) = op.status();
                let bytes = bytes.unwrap_or(internal_bytes);
                match status {
                    0 => (bytes, None),
                    // The handle was open when the operation started (a `Handle` or `Foreign`
                    // borrows it), so the kernel found it closed under the operation: the drop
                    // that closed it cancelled it. Wine reports this now and then for an
                    // operation in flight as its handle closes: `STATUS_INVALID_HANDLE`, or
                    // `STATUS_OBJECT_TYPE_MISMATCH` when the number already names the next
                    // object (an event, a file) as Wine looks the handle up again. (A socket we
                    // own closes after its sends and receives, `close.rs`: this is left to
                    // `Foreign` objects, operations that move no bytes, files and pipes, and a
                    // socket the bound closed under its operations.)
                    STATUS_INVALID_HANDLE | STATUS_OBJECT_TYPE_MISMATCH => (
                        bytes,
                        Some(crate::error::cancelled(
                            ERROR_INVALID_HANDLE as i32,
                            Some(status),
                        )),
                    ),
                    _ => (bytes, Some(error::from_ntstatus(status))),
                }
            }
        };
        tracing::trace!(op = op.kind.name(), id = %op.id, bytes, error = ?error, "completed");
        let done = self.complete(op, bytes, error, address);
        if restartable && done.is_some() {
            // Not restarted: the id is free for the table to give again.
            self.table.release(id);
        }
        done
    }

    /// Ends what a foreign record owns besides its memory: its registered wait (if it came
    /// through one, `waited`), its registry entry (before the record can be freed or reused),
    /// its event. `blocking`: wait for a wait callback still returning (the port is closing).
    fn reclaim_foreign(&self, op: &mut OpBox, waited: bool, blocking: bool) {
        let record = ptr::from_ref::<Op>(op) as usize;
        if let Some(f) = op.foreign.take() {
            if waited {
                f.wait.finish(blocking);
            }
            f.registry.remove(record);
            self.events.put(f.event);
        }
    }

    /// The address of an operation's record (its `OVERLAPPED`) while it is in flight.
    pub(crate) fn overlapped_address(&self, id: OpId) -> Option<usize> {
        self.table.with(id, |e| e.op).filter(|&a| a != 0)
    }
}

impl Drop for Port {
    fn drop(&mut self) {
        // No wake-ups through the port's handle from here on (its sweeps go on below).
        self.dropped.port_closing();
        // Cancel everything still in flight. The records stay allocated until their aborted
        // packets are dequeued below.
        self.table.for_each(|_, e| {
            if e.op != 0 && e.target != RawIo::None {
                // SAFETY: the entry is present, so its record is live; CancelIoEx only matches
                // addresses. A handle closed meanwhile makes this fail harmlessly.
                unsafe { CancelIoEx(e.target.handle(), overlapped(e.op as *mut Op)) };
            }
        });
        let ready = mem::take(&mut *self.ready.lock().unwrap_or_else(PoisonError::into_inner));
        for mut op in ready {
            self.table.remove(op.id);
            self.reclaim_foreign(&mut op, false, true);
        }
        let deadline = Deadline::new(Some(DRAIN_TIMEOUT));
        let mut entries = [empty_entry(); BATCH];
        while self.table.len() > 0 && !deadline.passed() {
            let Ok(n) = self.dequeue(&mut entries, deadline.millis().min(100)) else {
                break;
            };
            for entry in &entries[..n] {
                if entry.lpOverlapped.is_null() {
                    continue;
                }
                // SAFETY: as in `finish_packet`: a dequeued record, taken back once.
                let mut op = unsafe { OpBox::from_raw(op_of(entry.lpOverlapped)) };
                self.table.remove(op.id);
                // A foreign record came through its registered wait: end it (waiting for the
                // callback to return, before the port handle closes) and drop its address from
                // the registry before the memory is freed.
                self.reclaim_foreign(&mut op, true, true);
            }
        }
        let left = self.table.len();
        // Records being leaked: make sure no registered wait posts them after the port closes.
        self.table.for_each(|_, e| {
            if e.op != 0 {
                // SAFETY: a record still in the table is live (it is leaked, never freed), and
                // no other thread uses the port.
                unsafe { foreign::abandon(e.op as *mut Op) };
            }
        });
        // The `Foreign` handles may outlive the port: their registries forget every address
        // (reclaimed above, or leaked), so that dropping them later cancels nothing.
        let registries = mem::take(
            &mut *self
                .registries
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        for registry in registries.iter().filter_map(Weak::upgrade) {
            registry.kill();
        }
        if left > 0 {
            // The kernel may still write these records: leaking them is the only safe choice.
            tracing::warn!(
                left,
                "completion port dropped: leaking operations the kernel never completed"
            );
        }
    }
}

/// Whether an operation whose call failed at once will still get a packet: its status is an
/// NT warning (`0x8000_0000..0xC000_0000`, such as `STATUS_BUFFER_OVERFLOW`), and this is
/// Windows. Wine queues none for these (ARCHITECTURE.md), so there the failure is final.
fn warning_queues_packet(op: *mut Op) -> bool {
    // SAFETY: the call has returned and completed synchronously: the kernel wrote the status
    // and touches the OVERLAPPED no more; a packet, if any, only carries its address.
    let status = unsafe { (*overlapped(op)).Internal } as NTSTATUS;
    is_warning(status) && !net::running_on_wine()
}

/// Whether an NTSTATUS is a warning (severity 2: `0x8000_0000..0xC000_0000`).
fn is_warning(status: NTSTATUS) -> bool {
    (status as u32) >> 30 == 2
}

/// What a blocking wait produced.
enum Wait {
    Packets(usize),
    /// Nothing from the kernel, but the ready queue may have work.
    Ready,
    TimedOut,
}

/// A point in time to wait until, or forever.
struct Deadline(Option<Instant>);

impl Deadline {
    fn new(timeout: Option<Duration>) -> Deadline {
        Deadline(timeout.map(|t| Instant::now().checked_add(t).unwrap_or_else(far_future)))
    }

    /// Milliseconds left, rounded up, saturating below `INFINITE`.
    fn millis(&self) -> u32 {
        let Some(at) = self.0 else { return u32::MAX }; // INFINITE
        let left = at.saturating_duration_since(Instant::now());
        let ms = left.as_nanos().div_ceil(1_000_000);
        ms.min(u128::from(u32::MAX - 1)) as u32
    }

    fn passed(&self) -> bool {
        self.0.is_some_and(|at| Instant::now() >= at)
    }
}

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(60 * 60 * 24 * 365)
}

fn empty_entry() -> OVERLAPPED_ENTRY {
    OVERLAPPED_ENTRY {
        lpCompletionKey: 0,
        lpOverlapped: ptr::null_mut(),
        Internal: 0,
        dwNumberOfBytesTransferred: 0,
    }
}

/// Refuses a handle that was not opened for overlapped I/O: every operation on it would block
/// the submitting thread.
fn check_overlapped(raw: RawIo) -> io::Result<()> {
    // SAFETY: both are plain data for which zeroes are valid.
    let mut iosb: IO_STATUS_BLOCK = unsafe { mem::zeroed() };
    let mut info = FILE_MODE_INFORMATION { Mode: 0 };
    // SAFETY: the handle is open; the buffers are ours and sized as passed.
    let status = unsafe {
        NtQueryInformationFile(
            raw.handle(),
            &mut iosb,
            (&raw mut info).cast(),
            mem::size_of::<FILE_MODE_INFORMATION>() as u32,
            FileModeInformation,
        )
    };
    if status != 0 {
        // Some handle kinds cannot say; association will tell whether they work.
        return Ok(());
    }
    if info.Mode & (FILE_SYNCHRONOUS_IO_ALERT | FILE_SYNCHRONOUS_IO_NONALERT) != 0 {
        return Err(crate::error::misuse(
            io::ErrorKind::InvalidInput,
            "the handle was not opened for overlapped I/O (open it with FILE_FLAG_OVERLAPPED)",
        ));
    }
    Ok(())
}
