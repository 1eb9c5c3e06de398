//! The io_uring backend: one ring, its submission and completion queues each behind a short lock,
//! one dequeuing thread at a time waiting in `io_uring_enter`.
//!
//! # Leader/followers
//!
//! Any number of threads dequeue; a thread that finds CQEs reaps them without a syscall. One
//! that finds the ring empty waits in the kernel if no other thread does (it
//! leads), else parks in user space (`handshake::Lead`, model-checked with loom) until its own
//! timeout or until it is woken: a leader that returns to its caller hands the lead to a parked
//! thread, and a thread that returns while CQEs are left in the ring wakes one to reap them. So
//! each CQE wakes one thread, and more threads run only while the ring fills faster than one
//! keeps up with. A parked thread's timeout is its own (`get_completion(s)`'s, which the port's
//! timers shorten to their earliest instant), and a timer's wake packet reaches the leader.
//!
//! # Ownership
//!
//! Every operation's `user_data` is its `OpId`, a number unique in the process, and the table
//! maps it to the record's address from submission until its last CQE is reaped. The record (a `Box<Op>`)
//! is leaked to the kernel at submission and taken back, once, by the thread that reaps its
//! last CQE and removes it from the table. A cancel names the id, so it can never reach another
//! operation, even one at the same address. CQEs with `user_data` 0 belong to proactor's own
//! cancel requests and are dropped; `DOORBELL` marks the doorbell's (below).
//!
//! An operation re-submitted from the completion path (the rest of a send, vectored send or
//! write; an accept after a client reset) keeps its table entry throughout and queues its next
//! SQE holding the guards its submission held: the table shard's lock, under which `start`
//! queues the first SQE and `cancel` marks the entry and queues its `ASYNC_CANCEL`, and the
//! handle's open guard, under which the handle's close cancels everything on the descriptor
//! before closing it. A cancel or close that came first ends the operation instead (as
//! cancelled, with what it transferred and its buffers); one that comes after finds the new SQE.
//!
//! # Which thread submits
//!
//! The kernel ties each request to the thread that submitted it (`io_uring_enter` with SQEs to
//! submit): when that thread exits, a request still waiting for readiness (a poll-armed receive,
//! send or accept) completes `ECANCELED`. So only the threads that dequeue from the port (have
//! called `get_completion(s)` on it: the worker pool, alive for the port's life) submit. Any
//! other thread that queues an SQE, cancels, or closes never enters the main ring with SQEs: if
//! a thread waits in the kernel, it rings the doorbell (an `IORING_OP_MSG_RING` through a tiny
//! private ring, complete before the call returns, so that thread owns nothing that outlives
//! it), which posts a CQE with `user_data` `DOORBELL` to the main ring and wakes the waiter,
//! whose loop re-enters and submits what is queued as its own; whichever dequeuing thread reaps
//! that CQE submits (the waiter, woken, sleeps on if another thread took the CQE first: a
//! thread that only reaps, and then parks, would otherwise leave the SQEs queued). A cancel or
//! close that finds no thread in the kernel but one parked (the leader busy: a leader that
//! reaped a partial send waits in `resubmit` for the open guard the close holds) rings too, and
//! wakes the parked thread to reap the doorbell's CQE (`ring_a_dequeuer`). If no dequeuer is
//! idle, the next one to enter submits (the handshake of `handshake::Submission`). A
//! close from such a thread waits until the kernel has consumed every SQE queued before it (see
//! `drain_submissions`). With SQPOLL the kernel's polling thread submits everything and owns
//! every request: any thread only wakes it. The remaining case is documented on `Iocp`: a dequeuing thread that exits
//! while requests it submitted wait.
//!
//! # Order on a stream
//!
//! The kernel runs SQEs on one socket concurrently: two sends can interleave (the rest of a
//! partial one queued behind a later one), two receives with `POLL_FIRST` can be filled in
//! reverse order. So the sends (and writes) of one stream handle, and its receives (and reads,
//! readiness waits), each go to the kernel one at a time, in submission order: an operation
//! that finds its direction's lane busy waits in the handle's `Order` (entered in the table, no
//! SQE), and the one holding the lane hands it over when it ends for good, under the handle's
//! open guard, then the table shard's lock, as every re-submission from the completion path.
//! A waiting operation that is cancelled, or whose handle closes or port drops, is withdrawn
//! from its lane and completes as cancelled through a `NOP` carrying its id, its I/O never
//! performed. Whoever takes a record out of a lane owns it until it queues its SQE.

use std::{
    cell::{Cell, RefCell},
    io,
    os::fd::{AsRawFd, RawFd},
    ptr,
    sync::{
        Arc, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use io_uring::{
    IoUring, opcode,
    squeue::{Entry, Flags},
    types::{CancelBuilder, Fd, SubmitArgs, Timespec},
};

use super::{
    Driver, Life,
    error::from_errno,
    files::Files,
    op::{ACCEPT_RESTARTS, Dir, Op, OpData, Order, complete, is_client_reset, truncation_shows},
};
use crate::{
    Completion, OpId, OpKind,
    handshake::{Lead, Ring, Submission, Turn},
    table::{self, Table},
};

/// The lead of `handshake::Lead` while a thread holds it in `Uring::dequeue`: released when
/// the thread returns, or unwinds (the parked threads would otherwise wait for ever).
struct Leading<'a> {
    lead: &'a Lead,
    held: bool,
    /// CQEs are left in the ring: wake one more parked thread.
    more: bool,
}

impl Drop for Leading<'_> {
    fn drop(&mut self) {
        if self.held {
            self.lead.release(self.more);
        }
    }
}

/// The `user_data` of the doorbell's CQE on the main ring (never an `OpId`: their bit 63 is clear).
const DOORBELL: u64 = u64::MAX;
/// The `user_data` bit of an operation the table had no room for (see `Uring::refuse`): the
/// other bits are its record's address. Never an `OpId` (their bit 63 is clear), nor
/// `DOORBELL` (a record's address is aligned).
const UNTABLED: u64 = 1 << 63;

/// Ring size: how many operations can be submitted before the kernel consumes them.
const ENTRIES: u32 = 4096;

/// `IORING_RECVSEND_POLL_FIRST` for stream receives: wait for readiness before the first
/// attempt instead of after it failing. A receive usually follows a send (a response, an echo)
/// and finds nothing yet; trying first costs a socket lock and an `EAGAIN` in the kernel. The
/// flag changes no outcome: the poll is armed by checking readiness, so a receive whose data is
/// already queued still completes, through a task-work hop instead of inline. Measured in
/// BENCHMARKS.md: 3-4% less server CPU per round trip at depth 1, no change at depth 8, and a
/// dearer receive when data is waiting (the micro-benchmark).
/// (`include/uapi/linux/io_uring.h`, Linux 5.19; the `io-uring` crate sets it through `ioprio`
/// but does not export the name.)
const POLL_FIRST: u16 = 1 << 0;

/// How long dropping the port waits for cancelled operations before leaking their records.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// How long closing a handle waits for queued SQEs to be consumed before it warns (once; with
/// SQPOLL it goes on waiting for the polling thread), or, from a thread that does not dequeue,
/// submits them itself.
const SQ_DRAIN_TIMEOUT: Duration = Duration::from_secs(1);

/// How long a close from a thread that does not dequeue waits, while no thread waits in the
/// kernel, for a dequeuer to come back and submit, before it submits itself.
const NO_WAITER_GRACE: Duration = Duration::from_millis(2);

/// How often that close rings the doorbell again while the queue is not consumed.
const DOORBELL_AGAIN: Duration = Duration::from_millis(1);

/// Port numbers, never reused: which ports the current thread dequeues from.
static NEXT_PORT: AtomicU64 = AtomicU64::new(1);

thread_local! {
    /// The port this thread last dequeued from (the fast path of `submits_here`).
    static LAST_DEQUEUED: Cell<u64> = const { Cell::new(0) };
    /// Every port this thread has dequeued from.
    static DEQUEUED: RefCell<Vec<u64>> = const { RefCell::new(Vec::new()) };
}

/// How long closing a handle waits for its operations to be cancelled.
const SYNC_CANCEL_TIMEOUT: Duration = Duration::from_secs(5);

/// The io_uring completion port.
pub(crate) struct Uring {
    ring: IoUring,
    /// The submission queue's lock, and how many SQEs were ever queued: less the queue's
    /// length, how many the kernel has consumed.
    sq: Mutex<u64>,
    cq: Mutex<()>,
    table: Table<Slot>,
    /// Set while dropping: finished operations end instead of continuing.
    closing: AtomicBool,
    /// Batched submission against the threads blocked in `io_uring_enter` (model-checked).
    submission: Submission,
    /// Leader/followers: one dequeuing thread waits in `io_uring_enter`, the others park
    /// (model-checked).
    lead: Lead,
    /// This port's number (see `dequeues`).
    id: u64,
    /// A kernel thread polls the submission queue (`PROACTOR_SQPOLL`): it submits everything.
    sqpoll: bool,
    /// The doorbell: a private two-entry ring through which a thread that does not dequeue
    /// sends an `IORING_OP_MSG_RING` to the main ring (`None` with SQPOLL).
    doorbell: Option<Mutex<IoUring>>,
    /// The handles' open files, for `cancel_fd`.
    files: Files,
}

/// An operation in flight, as the table knows it.
#[derive(Clone)]
struct Slot {
    /// The record, from `Box::into_raw`.
    address: usize,
    /// Its descriptor, for `cancel_all`.
    fd: RawFd,
    /// A cancel asked for the operation to end: it is not re-submitted from the completion
    /// path (set and read under the table shard's lock).
    cancel: bool,
    /// Set while the operation waits for its stream lane (has no SQE); cleared, under the
    /// shard's lock, by whoever takes it out of the lane.
    waiting: Option<Waiting>,
}

/// Where a waiting operation waits: its handle's lanes, the direction, its id.
#[derive(Clone)]
struct Waiting {
    order: Arc<Order>,
    dir: Dir,
    id: OpId,
}

/// What a reaped CQE leads to.
enum Next {
    /// The operation ends with this result.
    Complete(io::Result<usize>),
    /// The operation goes on with this SQE (the rest of a send, an accept after a client reset).
    Continue(Entry),
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Fails with `Unsupported` unless `ring`'s kernel has every opcode either backend's operations
/// use, and the `extra` ones the caller needs too.
pub(crate) fn require_opcodes(ring: &IoUring, extra: &[u8]) -> io::Result<()> {
    let mut probe = io_uring::Probe::new();
    ring.submitter().register_probe(&mut probe)?;
    let common = [
        opcode::Recv::CODE,
        opcode::Send::CODE,
        opcode::RecvMsg::CODE,
        opcode::SendMsg::CODE,
        opcode::Accept::CODE,
        opcode::Connect::CODE,
        opcode::PollAdd::CODE,
        opcode::Read::CODE,
        opcode::Write::CODE,
        opcode::AsyncCancel::CODE,
    ];
    match common
        .iter()
        .chain(extra)
        .find(|op| !probe.is_supported(**op))
    {
        Some(op) => Err(io::Error::new(
            io::ErrorKind::Unsupported,
            format!("io_uring lacks opcode {op}: Linux 6.0 or later is needed"),
        )),
        None => Ok(()),
    }
}

impl Uring {
    /// A new ring, if the kernel offers io_uring with cancel-by-descriptor (Linux 5.19).
    pub(crate) fn new() -> io::Result<Uring> {
        let idle = super::requested_sqpoll()?;
        let build = |submit_all: bool| {
            let mut builder = IoUring::builder();
            builder.setup_clamp();
            if submit_all {
                // A refused SQE does not end the batch: every queued SQE is consumed by one
                // enter, so none can wait past its descriptor's close (Linux 5.18).
                builder.setup_submit_all();
            }
            if let Some(idle_ms) = idle {
                // A kernel thread consumes the submission queue: submitting then needs no
                // syscall while that thread is awake (the crate's `submit` enters only to wake it).
                builder.setup_sqpoll(idle_ms);
            }
            builder.build(ENTRIES)
        };
        let ring = match build(true) {
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => build(false)?,
            other => other?,
        };
        require_opcodes(
            &ring,
            &[
                opcode::MsgRingData::CODE, // 5.18
                opcode::SendZc::CODE,      // 6.0: implies cancel-by-descriptor (5.19) is there
            ],
        )?;
        let doorbell = match idle {
            Some(_) => None,
            None => Some(Mutex::new(IoUring::new(2)?)),
        };
        Ok(Uring {
            ring,
            sq: Mutex::new(0),
            cq: Mutex::new(()),
            table: Table::new(),
            files: Files::default(),
            closing: AtomicBool::new(false),
            submission: Submission::new(),
            lead: Lead::new(),
            id: NEXT_PORT.fetch_add(1, Ordering::Relaxed),
            sqpoll: idle.is_some(),
            doorbell,
        })
    }

    /// Records that the current thread dequeues from this port: from now on it submits.
    fn dequeues(&self) {
        if LAST_DEQUEUED.get() == self.id {
            return;
        }
        LAST_DEQUEUED.set(self.id);
        DEQUEUED.with_borrow_mut(|ports| {
            if !ports.contains(&self.id) {
                ports.push(self.id);
            }
        });
    }

    /// Whether the current thread may submit: it dequeues from this port (it is expected to
    /// live as long as the port serves), or the polling thread submits for everyone.
    fn submits_here(&self) -> bool {
        self.sqpoll
            || LAST_DEQUEUED.get() == self.id
            || DEQUEUED.with_borrow(|ports| ports.contains(&self.id))
    }

    /// Wakes the thread blocked in the main ring with a CQE of `user_data` `DOORBELL`, so that
    /// it (or whichever thread reaps the CQE: see `finish`) submits what is queued. The
    /// `MSG_RING` completes before this returns: the calling thread owns nothing in either ring
    /// afterwards. If the doorbell fails, submits from this thread instead (the SQEs then belong
    /// to it).
    fn ring_doorbell(&self) {
        let rung = self.doorbell.as_ref().map(|bell| {
            let mut bell = lock(bell);
            let msg = opcode::MsgRingData::new(Fd(self.ring.as_raw_fd()), 0, DOORBELL, None)
                .build()
                .user_data(0)
                .flags(Flags::SKIP_SUCCESS);
            // SAFETY: the SQE points at no memory; the lock makes this the ring's only user.
            let pushed = unsafe { bell.submission().push(&msg) }.is_ok();
            let result = if pushed {
                bell.submit_and_wait(0).map(|_| ())
            } else {
                Err(io::Error::from_raw_os_error(libc::EBUSY))
            };
            // Only a failed MSG_RING posts a CQE here (SKIP_SUCCESS).
            let failed = bell.completion().map(|cqe| cqe.result()).find(|&r| r < 0);
            match (result, failed) {
                (Ok(()), None) => Ok(()),
                (Err(e), _) => Err(e),
                (_, Some(res)) => Err(io::Error::from_raw_os_error(-res)),
            }
        });
        match rung {
            Some(Ok(())) => {}
            other => {
                if let Some(Err(e)) = other {
                    tracing::warn!(error = %e, "io_uring doorbell failed: submitting from this thread");
                }
                if let Err(e) = self.ring.submit() {
                    tracing::trace!(error = %e, "io_uring_enter: submission deferred");
                }
            }
        }
    }

    /// For a thread that does not dequeue: has a dequeuing thread submit what is queued. Rings
    /// the doorbell if a thread waits in the kernel, or if one is parked: a parked one is then
    /// woken (unless a wake-up is already on its way to it) to reap the doorbell's CQE, whose
    /// reaper submits, as the leader may be busy for long (blocked in `resubmit` on the open
    /// guard of the handle this thread closes). False if no dequeuing thread is idle.
    fn ring_a_dequeuer(&self) -> bool {
        if self.submission.waiting() {
            self.ring_doorbell();
            return true;
        }
        if self.lead.parked() {
            self.ring_doorbell();
            self.lead.hand_on();
            return true;
        }
        false
    }

    /// Queues one SQE without telling the kernel (see `kick`).
    fn enqueue(&self, sqe: &Entry) {
        let mut queued = lock(&self.sq);
        // SAFETY: holding the sq lock makes this the only SubmissionQueue in existence.
        let mut sq = unsafe { self.ring.submission_shared() };
        loop {
            // SAFETY: every pointer in an SQE points into a record that stays allocated
            // until its CQE is reaped (or into nothing, for NOPs and cancels).
            if unsafe { sq.push(sqe) }.is_ok() {
                break;
            }
            // Full: let the kernel consume what is queued, then retry. A thread that does not
            // dequeue has a waiter submit it; with none, it submits itself (nothing serves the
            // port: the SQEs then belong to this thread).
            sq.sync();
            if self.submits_here() || !self.ring_a_dequeuer() {
                let _ = self.ring.submit();
            } else {
                std::thread::yield_now();
            }
            sq.sync();
        }
        *queued += 1;
        // `sq` drops first, publishing the new tail while the lock is held.
    }

    /// Hands queued SQEs to the kernel: with `now`, or when a thread is blocked in
    /// `io_uring_enter` (which would not see them); otherwise the next thread to dequeue,
    /// cancel or close submits them together with the others: one syscall for a batch.
    ///
    /// Either this thread sees a waiter, or the waiter's enter sees the SQE (published in
    /// `enqueue`): the handshake is `handshake::Submission`'s, model-checked with loom.
    fn kick(&self, now: bool) {
        self.submission.kick(self, now);
    }

    /// Queues one SQE and, if needed, submits it (`enqueue`, then `kick`).
    fn push(&self, sqe: &Entry, now: bool) {
        self.submission.push(self, sqe, now);
    }

    /// How many SQEs were ever queued, and how many of them the kernel has consumed.
    fn sq_progress(&self) -> (u64, u64) {
        let queued = lock(&self.sq);
        // SAFETY: holding the sq lock makes this the only SubmissionQueue in existence.
        let mut sq = unsafe { self.ring.submission_shared() };
        sq.sync();
        (*queued, *queued - sq.len() as u64)
    }

    /// Returns once the kernel has consumed every SQE queued before the call (the queue is
    /// consumed in order). Only a consumed SQE can be cancelled; one consumed after its
    /// descriptor's close would name a closed or reused number, so there is no deadline: after
    /// `SQ_DRAIN_TIMEOUT` it warns once and goes on. With `IORING_SETUP_SUBMIT_ALL` one enter
    /// consumes them all; without it a refused SQE ends the batch and the next enter goes on;
    /// with SQPOLL the kernel thread does.
    ///
    /// A dequeuing thread (and any thread with SQPOLL) submits. Another thread has a dequeuer
    /// submit, so that the SQEs, other handles' operations among them, do not end with it (see
    /// "Which thread submits"): it rings the doorbell while a thread waits in the kernel or is
    /// parked (`ring_a_dequeuer`). When none has for `NO_WAITER_GRACE`, or after
    /// `SQ_DRAIN_TIMEOUT`, it submits itself:
    /// the queued SQEs then belong to this thread and complete cancelled if it exits while they
    /// wait. That happens when no thread serves the port (at shutdown, or before the first
    /// dequeue) or every worker stays busy.
    /// Cancels what `cancel` matches and waits until it is done (operations on `fd`, for the
    /// log).
    fn sync_cancel(&self, fd: RawFd, cancel: CancelBuilder) {
        let wait = Timespec::new().sec(SYNC_CANCEL_TIMEOUT.as_secs());
        match self
            .ring
            .submitter()
            .register_sync_cancel(Some(wait), cancel)
        {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {} // nothing was in flight
            Err(e) => tracing::warn!(fd, error = %e, "cancelling operations before close"),
        }
    }

    fn drain_submissions(&self) {
        let (target, consumed) = self.sq_progress();
        if consumed >= target {
            return;
        }
        let start = Instant::now();
        let mut own = self.submits_here();
        let mut no_waiter_since: Option<Instant> = None;
        let mut rung: Option<Instant> = None;
        let mut last_error = None;
        let mut warned = false;
        loop {
            if own {
                // With SQPOLL this only wakes the polling thread if it sleeps.
                if let Err(e) = self.ring.submit() {
                    last_error = Some(e);
                }
            } else if self.submission.waiting() || self.lead.parked() {
                no_waiter_since = None;
                if rung.is_none_or(|at| at.elapsed() >= DOORBELL_AGAIN) {
                    self.ring_a_dequeuer();
                    rung = Some(Instant::now());
                }
            } else if no_waiter_since.get_or_insert_with(Instant::now).elapsed() >= NO_WAITER_GRACE
            {
                own = true;
                continue;
            }
            let (_, consumed) = self.sq_progress();
            if consumed >= target {
                return;
            }
            if start.elapsed() >= SQ_DRAIN_TIMEOUT {
                if !own {
                    own = true; // no dequeuer submitted in time
                    continue;
                }
                if !warned {
                    warned = true;
                    tracing::warn!(
                        left = target - consumed,
                        error = ?last_error,
                        "io_uring: queued SQEs not consumed yet; a handle's close waits for them"
                    );
                }
            }
            std::thread::yield_now();
        }
    }

    /// The SQE that starts `op`.
    pub(crate) fn prepare(op: &mut Op) -> Entry {
        // Test-only: an SQE the kernel refuses at submission (`IOSQE_BUFFER_SELECT` on a NOP),
        // which ends a submission batch unless the ring has `IORING_SETUP_SUBMIT_ALL`.
        #[cfg(feature = "failpoints")]
        fail::fail_point!("uring::bad_sqe", |_| {
            opcode::Nop::new()
                .build()
                .flags(io_uring::squeue::Flags::BUFFER_SELECT)
                .user_data(op.id.as_u64())
        });
        let fd = Fd(op.fd);
        let entry = if op.refused.is_some() {
            opcode::Nop::new().build()
        } else {
            match op.kind {
                OpKind::Post
                | OpKind::Ioctl
                | OpKind::TransmitFile
                | OpKind::Disconnect
                | OpKind::ConnectPipe
                | OpKind::Timer
                | OpKind::RecvPooled
                | OpKind::SendPooled => opcode::Nop::new().build(),
                OpKind::Recv => {
                    let (ptr, len) = op.spare();
                    opcode::Recv::new(fd, ptr, clamp(len))
                        .flags(truncation_shows(op.datagram))
                        .ioprio(POLL_FIRST)
                        .build()
                }
                OpKind::Read => {
                    let (ptr, len) = op.spare();
                    opcode::Read::new(fd, ptr, clamp(len))
                        .offset(op.offset)
                        .build()
                }
                OpKind::Send => {
                    let (ptr, len) = op.unsent();
                    opcode::Send::new(fd, ptr, clamp(len))
                        .flags(libc::MSG_NOSIGNAL)
                        .build()
                }
                OpKind::Write => {
                    let (ptr, len) = op.unsent();
                    opcode::Write::new(fd, ptr, clamp(len))
                        .offset(op.offset)
                        .build()
                }
                OpKind::RecvVectored | OpKind::SendVectored => {
                    if op.kind == OpKind::SendVectored {
                        op.aim_at_unsent();
                    }
                    let msg = match &mut op.data {
                        OpData::Buffers { msg, .. } => &mut **msg as *mut libc::msghdr,
                        _ => ptr::null_mut(),
                    };
                    if op.kind == OpKind::RecvVectored {
                        opcode::RecvMsg::new(fd, msg)
                            .flags(truncation_shows(op.datagram) as u32)
                            .ioprio(POLL_FIRST)
                            .build()
                    } else {
                        opcode::SendMsg::new(fd, msg)
                            .flags(libc::MSG_NOSIGNAL as u32)
                            .build()
                    }
                }
                OpKind::RecvFrom | OpKind::SendTo => {
                    let msg = match &mut op.data {
                        OpData::RecvFrom { msg, .. } | OpData::SendTo { msg, .. } => {
                            &mut **msg as *mut libc::msghdr
                        }
                        _ => ptr::null_mut(),
                    };
                    if op.kind == OpKind::RecvFrom {
                        opcode::RecvMsg::new(fd, msg)
                            .flags(truncation_shows(op.datagram) as u32)
                            .build()
                    } else {
                        opcode::SendMsg::new(fd, msg)
                            .flags(libc::MSG_NOSIGNAL as u32)
                            .build()
                    }
                }
                OpKind::Readable => opcode::PollAdd::new(fd, libc::POLLIN as u32).build(),
                OpKind::Accept => {
                    let (addr, len) = match &mut op.data {
                        OpData::Accept { peer, .. } => (&raw mut peer.storage, &raw mut peer.len),
                        _ => (ptr::null_mut(), ptr::null_mut()),
                    };
                    opcode::Accept::new(fd, addr.cast(), len)
                        .flags(libc::SOCK_CLOEXEC)
                        .build()
                }
                OpKind::Connect => {
                    let (addr, len) = match &op.data {
                        OpData::Connect { addr } => {
                            (addr.as_ptr().cast::<libc::sockaddr>(), addr.len())
                        }
                        _ => (ptr::null(), 0),
                    };
                    opcode::Connect::new(fd, addr, len).build()
                }
            }
        };
        entry.user_data(op.id.as_u64())
    }

    /// Enters `op` in the table (which gives it its id, returned) and queues its SQE under the
    /// table shard's lock, so that a cancel that finds the entry queues its `ASYNC_CANCEL`
    /// behind the SQE it targets; then submits if a thread waits.
    ///
    /// A stream operation whose lane is busy waits in it instead (see "Order on a stream"):
    /// entered in the table first, so that whoever takes it out of the lane finds its slot.
    fn start(&self, mut op: Box<Op>) -> OpId {
        if let (Some(order), Some(dir)) = (op.order.clone(), Dir::of(op.kind)) {
            let mut lane = order.lane(dir);
            if lane.busy {
                let Some(vacant) = self.table.vacant(op.id) else {
                    drop(lane);
                    op.order = None; // it never held the lane
                    return self.refuse(op);
                };
                op.id = vacant.id();
                let (id, fd) = (op.id, op.fd);
                let address = Box::into_raw(op) as usize;
                let waiting = Waiting {
                    order: order.clone(),
                    dir,
                    id,
                };
                let slot = Slot {
                    address,
                    fd,
                    cancel: false,
                    waiting: Some(waiting),
                };
                drop(vacant.insert(slot));
                lane.waiting.push_back((id, address));
                return id;
            }
            lane.busy = true; // this operation holds the lane until it ends
        }
        let Some(vacant) = self.table.vacant(op.id) else {
            return self.refuse(op); // it holds its lane (if any): its completion hands it on
        };
        op.id = vacant.id();
        let sqe = Self::prepare(&mut op);
        let (id, fd) = (op.id, op.fd);
        let slot = Slot {
            address: Box::into_raw(op) as usize,
            fd,
            cancel: false,
            waiting: None,
        };
        let held = vacant.insert(slot);
        self.enqueue(&sqe);
        drop(held);
        crate::failpoint::failpoint!("uring::start");
        self.kick(false);
        id
    }

    /// Fails `op`, which the table has no room for (more operations in flight than ids can
    /// name): a `NOP` ends it through the CQ like any other, with the table's error. Its
    /// `user_data` is the record's address tagged `UNTABLED`, as no entry holds it; it keeps the
    /// id it was made with, which names no entry (a cancel finds nothing).
    fn refuse(&self, mut op: Box<Op>) -> OpId {
        let id = op.id;
        op.refused = Some(table::full());
        let sqe = Self::prepare(&mut op);
        let sqe = sqe.user_data(Box::into_raw(op) as u64 | UNTABLED);
        self.enqueue(&sqe);
        self.kick(false);
        id
    }

    /// Finishes the operation of a reaped CQE: ends it (removed from the table, its record
    /// taken back) or re-submits it (the rest of a send, an accept after a client reset);
    /// `None` for proactor's own CQEs and for operations that continue.
    fn finish(&self, user_data: u64, res: i32) -> Option<Completion> {
        if user_data == 0 {
            return None;
        }
        if user_data == DOORBELL {
            // A thread that does not dequeue rang for its SQEs to be submitted. The thread in
            // the kernel sleeps on if this one took the CQE before it looked: submit them here
            // (this thread dequeues, or the port is dropping).
            if let Err(e) = self.ring.submit() {
                tracing::trace!(error = %e, "io_uring_enter: submission deferred");
            }
            return None;
        }
        if user_data & UNTABLED != 0 {
            // SAFETY: `refuse` gave this record to the kernel, in no table entry, under this
            // `user_data`; its NOP has one CQE, this one: the record is ours again.
            let op = unsafe { Box::from_raw((user_data & !UNTABLED) as *mut Op) };
            return Some(self.end(*op, Ok(0)));
        }
        let id = OpId::from_u64(user_data);
        // One lookup for both: the outcome is decided under the shard's lock, and an operation
        // that ends leaves the table in the same critical section (one that goes on keeps its
        // entry, as `resubmit` needs).
        let mut address = 0;
        let mut next = None;
        self.table.keep_or_remove(id, |slot| {
            address = slot.address;
            // SAFETY: the record stays allocated while it is in the table (from `start` until
            // its removal here or in `resubmit`), and this thread is the only one using it: an
            // operation has one SQE in the kernel at a time, whose CQE this thread reaped, and
            // a cancel touches the table's slot, never the record. The reference ends before
            // any new SQE names the record (after which another thread may reap and free it).
            let op = unsafe { &mut *(address as *mut Op) };
            #[cfg(feature = "failpoints")]
            let res = inject_eintr(inject_client_reset(op, res));
            let (keep, outcome) = match self.next(op, res) {
                Next::Complete(result) => (false, Ok(result)),
                Next::Continue(sqe) => (true, Err((sqe, op.kind, op.life.clone()))),
            };
            next = Some(outcome);
            keep
        })?;
        let next = next?;
        let result = match next {
            Ok(result) => result, // removed above
            Err((sqe, kind, life)) => {
                if self.resubmit(id, kind, life, &sqe) {
                    return None;
                }
                // The handle closed or a cancel came: the operation ends here, with what it
                // transferred so far (`resubmit` removed it from the table).
                Err(from_errno(libc::ECANCELED))
            }
        };
        // SAFETY: this thread removed the record's address from the table (once per record),
        // and no SQE names it: it is ours again, from `Box::into_raw` in `start`.
        let op = unsafe { Box::from_raw(address as *mut Op) };
        Some(self.end(*op, result))
    }

    /// The completion of `op`, ended with `result`; a stream operation that held its lane
    /// hands it on.
    fn end(&self, mut op: Op, result: io::Result<usize>) -> Completion {
        // A stream's operations carry its lanes, and with them what it knows of a reset.
        let result = match &op.order {
            Some(order) => order.after_reset(op.kind, op.datagram, result),
            None => result,
        };
        let turn = op.order.take().zip(op.life.take()).zip(Dir::of(op.kind));
        let done = complete(op, result);
        if let Some(((order, life), dir)) = turn {
            self.hand_over(&order, dir, &life);
        }
        done
    }

    /// Hands a stream lane whose operation ended to the oldest operation waiting in it, or
    /// frees it. Under the handle's open guard (a close either came first and withdrew every
    /// waiting operation, or waits until the next one's SQE is queued, then cancels it); a
    /// waiting operation cancelled meanwhile is ended as cancelled and the next one tried.
    fn hand_over(&self, order: &Order, dir: Dir, life: &Life) {
        life.while_open(|| {
            loop {
                let (id, address) = {
                    let mut lane = order.lane(dir);
                    match lane.waiting.pop_front() {
                        Some(next) => next,
                        None => {
                            lane.busy = false;
                            return;
                        }
                    }
                };
                // Out of the lane, not yet started: a cancel now marks the slot (found below).
                crate::failpoint::failpoint!("uring::hand_over");
                if self.begin(id, address) {
                    return;
                }
            }
        });
    }

    /// Queues the SQE of operation `id`, just taken out of its lane by this thread, unless a
    /// cancel marked it (or the port is dropping): it then completes as cancelled. True if
    /// it started (it holds the lane now).
    fn begin(&self, id: OpId, address: usize) -> bool {
        let sqe = {
            // SAFETY: a waiting record stays allocated while in the table (it has no SQE, so no
            // CQE can end it) and whoever takes it out of its lane, this thread, is the only
            // one using it; the reference ends before its SQE is queued.
            let op = unsafe { &mut *(address as *mut Op) };
            Self::prepare(op)
        };
        let started = self.table.with_mut(id, |slot| {
            slot.waiting = None;
            if slot.cancel || self.closing.load(Ordering::Relaxed) {
                return false;
            }
            self.enqueue(&sqe);
            true
        });
        match started {
            Some(true) => {
                // Submitted by this thread, which dequeues, at once: an SQE consumed by a
                // thread that then exits (one that only cancelled, say) completes `ECANCELED`
                // when its poll fires (the kernel runs the poll's task work on the submitter).
                self.kick(true);
                true
            }
            Some(false) => {
                self.end_waiting(id, address);
                false
            }
            None => false, // not reachable: only this thread may end a record out of its lane
        }
    }

    /// Ends operation `id`, taken out of its lane by this thread before it ever started, as
    /// cancelled: a `NOP` carrying its id completes it through the CQ like any other, with its
    /// buffers and 0 bytes. It no longer holds or waits for a lane.
    fn end_waiting(&self, id: OpId, address: usize) {
        let sqe = {
            // SAFETY: as in `begin`: out of its lane, in the table, no SQE; the reference ends
            // before the NOP is queued.
            let op = unsafe { &mut *(address as *mut Op) };
            op.refused = Some(from_errno(libc::ECANCELED));
            op.order = None;
            Self::prepare(op)
        };
        self.table.with_mut(id, |slot| {
            slot.waiting = None;
            self.enqueue(&sqe);
        });
        self.kick(false);
    }

    /// Takes operation `id` out of its lane, if it still waits there, and ends it as cancelled.
    /// If it is no longer there, whoever took it out acts on its slot's cancel mark.
    fn withdraw(&self, waiting: &Waiting) {
        let taken = {
            let mut lane = waiting.order.lane(waiting.dir);
            let at = lane.waiting.iter().position(|&(id, _)| id == waiting.id);
            at.and_then(|i| lane.waiting.remove(i))
        };
        if let Some((id, address)) = taken {
            self.end_waiting(id, address);
        }
    }

    /// What the CQE result `res` of `op` leads to; advances a partial send or write past what
    /// the kernel transferred and prepares the SQE for the rest.
    fn next(&self, op: &mut Op, res: i32) -> Next {
        if op.refused.is_some() || self.closing.load(Ordering::Relaxed) {
            return Next::Complete(if res >= 0 {
                Ok(res as usize)
            } else {
                Err(from_errno(-res))
            });
        }
        if res < 0 {
            let errno = -res;
            if op.kind == OpKind::Accept && is_client_reset(errno) {
                if let OpData::Accept { restarts, peer } = &mut op.data {
                    if *restarts < ACCEPT_RESTARTS {
                        *restarts += 1; // the client went away: accept the next one
                        peer.len = std::mem::size_of::<libc::sockaddr_storage>() as _;
                        return Next::Continue(Self::prepare(op));
                    }
                }
            }
            return Next::Complete(Err(from_errno(errno)));
        }
        // A send, vectored send or write the kernel did in part goes on with the rest: it
        // completes whole, as on Windows. One that moved nothing ends (a write of 0 bytes
        // would otherwise repeat for ever).
        let n = res as usize;
        let more = match (op.kind, &mut op.data) {
            (OpKind::Send | OpKind::Write, OpData::Buffer { buf, done }) => {
                *done += n;
                n > 0 && *done < buf.len()
            }
            (OpKind::SendVectored, OpData::Buffers { bufs, .. }) => {
                op.progress += n;
                n > 0 && op.progress < bufs.iter().map(Vec::len).sum::<usize>()
            }
            _ => false,
        };
        if !more {
            return Next::Complete(Ok(n));
        }
        if op.kind == OpKind::Write && op.offset != u64::MAX {
            op.offset += n as u64; // u64::MAX (-1) is the file's own position: it moved itself
        }
        Next::Continue(Self::prepare(op))
    }

    /// Re-submits operation `id` with `sqe` from the completion path, holding the guards its
    /// submission held: the handle's open guard (a close either came before, or waits until
    /// the SQE is queued and then cancels it) and the table shard's lock (a cancel either came
    /// before, and marked the slot, or finds the entry after the SQE is queued). True if it
    /// went on; false if it must end (the entry is then removed).
    ///
    /// Takes no reference into the record: once the SQE is queued another thread may reap its
    /// CQE and free the record. `life` is the record's own, cloned. The open guard is taken
    /// before the shard's lock, so a close that holds it (while it cancels and waits) blocks
    /// this thread only, not every operation of the shard.
    fn resubmit(&self, id: OpId, kind: OpKind, life: Option<Arc<Life>>, sqe: &Entry) -> bool {
        if kind == OpKind::Accept {
            crate::failpoint::failpoint!("uring::accept_restart");
        } else {
            crate::failpoint::failpoint!("uring::resubmit");
        }
        let queued = life.as_deref().and_then(|life| {
            life.while_open(|| {
                self.table.keep_or_remove(id, |slot| {
                    if slot.cancel {
                        return false;
                    }
                    self.enqueue(sqe);
                    true
                })
            })
        });
        match queued {
            Some(Some(true)) => {
                self.kick(false);
                true
            }
            Some(_) => false, // cancelled: removed from the table
            None => {
                self.table.remove(id); // the handle closed
                false
            }
        }
    }

    /// Reaps up to `max` CQEs (at most 16) into `out`; returns how many completions were
    /// added and whether CQEs are left in the ring.
    fn reap(&self, out: &mut Vec<Completion>, max: usize) -> (usize, bool) {
        // Small chunks: the array is initialised on every call, and most calls find few CQEs.
        let mut cqes = [(0u64, 0i32); 16];
        let (n, more) = {
            let _cq = lock(&self.cq);
            // SAFETY: holding the cq lock makes this the only CompletionQueue in existence.
            let mut cq = unsafe { self.ring.completion_shared() };
            let mut n = 0;
            while n < max.min(cqes.len()) {
                let Some(cqe) = cq.next() else { break };
                cqes[n] = (cqe.user_data(), cqe.result());
                n += 1;
            }
            (n, !cq.is_empty())
        };
        let before = out.len();
        for &(user_data, res) in &cqes[..n] {
            out.extend(self.finish(user_data, res));
        }
        (out.len() - before, more)
    }

    /// Reaps up to `max` completions into `out` (chunks of `reap` while the ring has CQEs);
    /// returns how many and whether CQEs are left in the ring.
    fn reap_many(&self, out: &mut Vec<Completion>, max: usize) -> (usize, bool) {
        let mut got = 0;
        loop {
            let (n, more) = self.reap(out, max - got);
            got += n;
            if !more || got >= max {
                return (got, more);
            }
        }
    }

    /// Reaps CQEs one at a time until one ends an operation; `None` once the CQ is empty. With
    /// the completion, whether CQEs are left in the ring.
    fn reap_one(&self) -> Option<(Completion, bool)> {
        loop {
            let (user_data, res, more) = {
                let _cq = lock(&self.cq);
                // SAFETY: holding the cq lock makes this the only CompletionQueue in existence.
                let mut cq = unsafe { self.ring.completion_shared() };
                let cqe = cq.next()?;
                (cqe.user_data(), cqe.result(), !cq.is_empty())
            };
            if let Some(done) = self.finish(user_data, res) {
                return Some((done, more));
            }
        }
    }

    /// The dequeue loop of `get_completion(s)` with leader/followers (`handshake::Lead`):
    /// `reap` takes what the ring holds (completions and whether CQEs are left); when it finds
    /// nothing, the thread waits in the kernel if it leads, else takes the lead or parks until
    /// a leader hands over or `deadline` passes. A thread that returns while CQEs are left
    /// wakes a parked one to reap them; a leader that returns releases the lead, waking a
    /// parked thread to take it. `None` on timeout (after a last reap found nothing).
    fn dequeue<T>(
        &self,
        deadline: Option<Instant>,
        mut reap: impl FnMut() -> Option<(T, bool)>,
    ) -> io::Result<Option<T>> {
        self.dequeues();
        let mut leading = Leading {
            lead: &self.lead,
            held: false,
            more: false,
        };
        let result = loop {
            if let Some(done) = reap() {
                break Ok(Some(done));
            }
            if !leading.held {
                match self.lead.follow(deadline) {
                    Turn::Lead => leading.held = true,
                    Turn::Woken => {}
                    Turn::TimedOut => break Ok(reap()),
                }
                continue; // reap again first: a CQE may have come since
            }
            match self.wait(deadline) {
                Ok(true) => {}
                Ok(false) => break Ok(reap()),
                Err(e) => break Err(e),
            }
        };
        leading.more = matches!(result, Ok(Some((_, true))));
        if leading.more && !leading.held {
            self.lead.hand_on();
        }
        drop(leading);
        result.map(|done| done.map(|(done, _)| done))
    }

    /// Submits what is queued and waits in the kernel for at least one CQE, at most until
    /// `deadline`. False on timeout. A doorbell wakes it with a CQE of `user_data` `DOORBELL`:
    /// the caller's loop reaps it (submitting what was queued) and comes back here.
    fn wait(&self, deadline: Option<Instant>) -> io::Result<bool> {
        let result = match deadline {
            None => self.submission.wait(|| self.ring.submit_and_wait(1)),
            Some(at) => {
                let left = at.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    let _ = self.ring.submit(); // a poll still starts what was queued
                    return Ok(false);
                }
                let ts = Timespec::new()
                    .sec(left.as_secs())
                    .nsec(left.subsec_nanos());
                let args = SubmitArgs::new().timespec(&ts);
                self.submission
                    .wait(|| self.ring.submitter().submit_with_args(1, &args))
            }
        };
        match result {
            Ok(_) => Ok(true),
            Err(e) if e.raw_os_error() == Some(libc::ETIME) => Ok(false),
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EINTR | libc::EBUSY | libc::EAGAIN)
                ) =>
            {
                Ok(true)
            }
            Err(e) => Err(e),
        }
    }
}

/// Test-only: turns an accept's result into `ECONNABORTED` (a client that went away), closing
/// the descriptor it accepted, when `uring::accept_reset` is configured to `return`.
#[cfg(feature = "failpoints")]
fn inject_client_reset(op: &Op, res: i32) -> i32 {
    fail::fail_point!("uring::accept_reset", op.kind == OpKind::Accept, |_| {
        if res >= 0 {
            // SAFETY: a successful accept's result is a new descriptor nothing else owns.
            unsafe { libc::close(res) };
        }
        -libc::ECONNABORTED
    });
    res
}

/// Test-only: the kernel ends a cancelled operation `EINTR` (an operation its worker threads
/// ran is stopped by interrupting the worker; see `error::from_errno`), when
/// `uring::cancel_as_eintr` is configured to `return`.
#[cfg(feature = "failpoints")]
fn inject_eintr(res: i32) -> i32 {
    fail::fail_point!("uring::cancel_as_eintr", res == -libc::ECANCELED, |_| {
        -libc::EINTR
    });
    res
}

/// The kernel side of `Uring::push`.
impl Ring for Uring {
    type Entry = Entry;

    fn publish(&self, sqe: &Entry) {
        self.enqueue(sqe);
    }

    /// A dequeuing thread (or any, with SQPOLL) submits; another rings the doorbell if a
    /// thread waits in the kernel (`kick` calls this with `now` even when none does: then the
    /// next dequeuer to enter submits, as the handshake guarantees).
    fn enter(&self) {
        if !self.submits_here() {
            self.ring_a_dequeuer();
            return;
        }
        // Errors here (EINTR, EBUSY while the CQ overflows) leave the SQE queued; the next
        // enter, from any thread, submits it.
        if let Err(e) = self.ring.submit() {
            tracing::trace!(error = %e, "io_uring_enter: submission deferred");
        }
    }
}

fn clamp(len: usize) -> u32 {
    u32::try_from(len).unwrap_or(u32::MAX)
}

impl Driver for Uring {
    fn submit(&self, op: Box<Op>) -> OpId {
        self.start(op)
    }

    fn post(&self, op: Box<Op>) -> io::Result<OpId> {
        Ok(self.start(op))
    }

    fn get_completion(&self, timeout: Option<Duration>) -> io::Result<Completion> {
        let deadline = timeout.map(|t| Instant::now() + t);
        self.dequeue(deadline, || self.reap_one())?
            .ok_or_else(crate::error::timed_out)
    }

    fn get_completions(
        &self,
        out: &mut Vec<Completion>,
        max: usize,
        timeout: Option<Duration>,
    ) -> io::Result<usize> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let max = max.max(1);
        self.dequeue(deadline, || match self.reap_many(out, max) {
            (0, _) => None,
            (n, more) => Some((n, more)),
        })?
        .ok_or_else(crate::error::timed_out)
    }

    /// Marks the operation cancelled and queues an `ASYNC_CANCEL` for it, under the table
    /// shard's lock: the cancel is queued behind the operation's SQE (see `start`), and if the
    /// operation is between two SQEs (its CQE reaped, the next not yet queued) the mark ends
    /// it instead of the re-submission (see `resubmit`).
    ///
    /// An operation waiting for its stream lane has no SQE to cancel: it is taken out of the
    /// lane and completes as cancelled at once (or, if a hand-over took it out first, the
    /// mark makes the hand-over end it instead of starting it).
    fn cancel(&self, id: OpId) -> bool {
        let cancel = opcode::AsyncCancel::new(id.as_u64()).build().user_data(0);
        let found = self.table.with_mut(id, |slot| {
            slot.cancel = true;
            if slot.waiting.is_none() {
                self.enqueue(&cancel);
            }
            slot.waiting.clone()
        });
        let Some(waiting) = found else {
            return false;
        };
        if let Some(waiting) = waiting {
            self.withdraw(&waiting);
        }
        self.kick(true);
        true
    }

    /// Marks every operation on `fd` cancelled (one between two SQEs then ends instead of
    /// going on), then cancels them in the kernel.
    fn cancel_all(&self, fd: RawFd) {
        let mut waiting = Vec::new();
        self.table.for_each_mut(|slot| {
            if slot.fd == fd {
                slot.cancel = true;
                waiting.extend(slot.waiting.clone());
            }
        });
        for w in &waiting {
            self.withdraw(w);
        }
        self.cancel_fd(fd);
    }

    /// Cancels every operation on `fd` and returns once they are done with it: the caller
    /// closes the descriptor next, and an SQE consumed after that would name a closed (or
    /// reused) descriptor number. No SQE for `fd` can be queued meanwhile: the handle's owner
    /// is closing it, and re-submissions and stream-lane hand-overs wait for its open guard,
    /// which the close holds (the close withdrew the waiting operations just before).
    fn cancel_fd(&self, fd: RawFd) {
        // Only consumed SQEs can be cancelled: have the kernel consume everything queued first.
        self.drain_submissions();
        crate::failpoint::failpoint!("uring::cancel_fd");
        if !self.files.shared(fd) {
            return self.sync_cancel(fd, CancelBuilder::fd(Fd(fd)).all());
        }
        // Another handle shares the file, and a cancel by descriptor would end its operations
        // too (`files.rs`): this descriptor's are cancelled one by one instead. One that ends
        // meanwhile is not found (its slot's next operation has another sequence number).
        let mut ids = Vec::new();
        self.table.for_each(|id, slot| {
            if slot.fd == fd && slot.waiting.is_none() {
                ids.push(id);
            }
        });
        for id in ids {
            self.sync_cancel(fd, CancelBuilder::user_data(id.as_u64()).all());
        }
    }

    fn in_flight(&self) -> usize {
        self.table.len()
    }

    fn associate(&self, fd: RawFd, nature: &super::Nature) -> io::Result<()> {
        self.files.associate(fd, nature.file);
        Ok(())
    }

    fn forget(&self, fd: RawFd) {
        self.files.forget(fd);
    }

    fn withdraw_waiting(&self, order: &Order) {
        for dir in [Dir::Read, Dir::Write] {
            let taken = std::mem::take(&mut order.lane(dir).waiting);
            for (id, address) in taken {
                self.end_waiting(id, address);
            }
        }
    }
}

impl Drop for Uring {
    fn drop(&mut self) {
        // Cancel everything, then reap until every record is back or the time is up.
        self.closing.store(true, Ordering::Relaxed);
        // Operations waiting for a stream lane have no SQE: end them (their handles may live
        // on, so they leave their lanes too); a lane handed over from now on ends its waiters.
        let mut waiting = Vec::new();
        self.table
            .for_each_mut(|slot| waiting.extend(slot.waiting.clone()));
        for w in &waiting {
            self.withdraw(w);
        }
        let cancel_all = opcode::AsyncCancel2::new(CancelBuilder::any().all())
            .build()
            .user_data(0);
        self.push(&cancel_all, true);
        let deadline = Instant::now() + DRAIN_TIMEOUT;
        let mut sink = Vec::new();
        while self.table.len() > 0 && Instant::now() < deadline {
            let soon = Some(Instant::now() + Duration::from_millis(100));
            if self.reap_many(&mut sink, 64).0 == 0 && self.wait(soon).is_err() {
                break;
            }
            sink.clear();
        }
        let left = self.table.len();
        if left == 0 {
            // Refused operations (`refuse`) are in no entry: reap the CQEs left of them.
            while self.reap_many(&mut sink, 64).0 > 0 {
                sink.clear();
            }
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
