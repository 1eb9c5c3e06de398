//! The io_uring backend: one ring, its submission and completion queues each behind a short lock,
//! any number of threads waiting in `io_uring_enter` at once.
//!
//! # Ownership
//!
//! Every operation's `user_data` is its `OpId`, a number never reused, and the table maps it to
//! the record's address from submission until its CQE is reaped. The record (a `Box<Op>`) is
//! leaked to the kernel at submission and taken back, once, by whoever removes it from the
//! table. A cancel names the id, so it can never reach another operation, even one at the same
//! address. CQEs with `user_data` 0 belong to proactor's own cancel requests and are dropped.

use std::{
    io,
    os::fd::RawFd,
    ptr,
    sync::{
        Mutex, MutexGuard, PoisonError,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use io_uring::{
    IoUring, opcode,
    squeue::Entry,
    types::{CancelBuilder, Fd, SubmitArgs, Timespec},
};

use super::{
    Driver,
    error::from_errno,
    op::{ACCEPT_RESTARTS, Op, OpData, complete, is_client_reset},
};
use crate::{
    Completion, OpId, OpKind,
    handshake::{Ring, Submission},
    table::Table,
};

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

/// How long closing a handle waits for the polling thread to consume queued SQEs.
const SQ_DRAIN_TIMEOUT: Duration = Duration::from_secs(1);

/// How long closing a handle waits for its operations to be cancelled.
const SYNC_CANCEL_TIMEOUT: Duration = Duration::from_secs(5);

/// The io_uring completion port.
pub(crate) struct Uring {
    ring: IoUring,
    sq: Mutex<()>,
    cq: Mutex<()>,
    table: Table<usize>,
    /// Set while dropping: finished operations end instead of continuing.
    closing: AtomicBool,
    /// Batched submission against the threads blocked in `io_uring_enter` (model-checked).
    submission: Submission,
}

fn lock(m: &Mutex<()>) -> MutexGuard<'_, ()> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Uring {
    /// A new ring, if the kernel offers io_uring with cancel-by-descriptor (Linux 5.19).
    pub(crate) fn new() -> io::Result<Uring> {
        let mut builder = IoUring::builder();
        builder.setup_clamp();
        if let Some(idle_ms) = sqpoll_idle()? {
            // A kernel thread consumes the submission queue: submitting then needs no syscall
            // while that thread is awake (the crate's `submit` enters only to wake it).
            builder.setup_sqpoll(idle_ms);
        }
        let ring = builder.build(ENTRIES)?;
        let mut probe = io_uring::Probe::new();
        ring.submitter().register_probe(&mut probe)?;
        let needed = [
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
            opcode::SendZc::CODE, // 6.0: implies cancel-by-descriptor (5.19) is there
        ];
        if let Some(op) = needed.iter().find(|op| !probe.is_supported(**op)) {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!("io_uring lacks opcode {op}: Linux 6.0 or later is needed"),
            ));
        }
        Ok(Uring {
            ring,
            sq: Mutex::new(()),
            cq: Mutex::new(()),
            table: Table::new(),
            closing: AtomicBool::new(false),
            submission: Submission::new(),
        })
    }

    /// Queues one SQE. With `now`, or when a thread is blocked in `io_uring_enter` (which would
    /// not see it), the kernel is told at once; otherwise the next thread to dequeue, cancel or
    /// close submits it together with the others: one syscall for a batch.
    ///
    /// Either this thread sees a waiter, or the waiter's enter sees this SQE: the handshake is
    /// `handshake::Submission`'s, model-checked with loom.
    fn push(&self, sqe: &Entry, now: bool) {
        self.submission.push(self, sqe, now);
    }

    /// Whether the kernel has consumed every queued SQE.
    fn sq_empty(&self) -> bool {
        let _sq = lock(&self.sq);
        // SAFETY: holding the sq lock makes this the only SubmissionQueue in existence.
        let mut sq = unsafe { self.ring.submission_shared() };
        sq.sync();
        sq.is_empty()
    }

    /// The SQE that starts `op`.
    fn prepare(op: &mut Op) -> Entry {
        let fd = Fd(op.fd);
        let entry = if op.refused.is_some() {
            opcode::Nop::new().build()
        } else {
            match op.kind {
                OpKind::Post
                | OpKind::Ioctl
                | OpKind::TransmitFile
                | OpKind::Disconnect
                | OpKind::ConnectPipe => opcode::Nop::new().build(),
                OpKind::Recv => {
                    let (ptr, len) = op.spare();
                    opcode::Recv::new(fd, ptr, clamp(len))
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
                    let msg = match &mut op.data {
                        OpData::Buffers { msg, .. } => &mut **msg as *mut libc::msghdr,
                        _ => ptr::null_mut(),
                    };
                    if op.kind == OpKind::RecvVectored {
                        opcode::RecvMsg::new(fd, msg).ioprio(POLL_FIRST).build()
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
                        // MSG_TRUNC: the result is the datagram's real length, so truncation shows.
                        opcode::RecvMsg::new(fd, msg)
                            .flags(libc::MSG_TRUNC as u32)
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

    fn start(&self, mut op: Box<Op>) {
        let sqe = Self::prepare(&mut op);
        let id = op.id;
        self.table.insert(id, Box::into_raw(op) as usize);
        self.push(&sqe, false);
    }

    /// Takes back the record of a reaped CQE and finishes it; `None` for proactor's own CQEs
    /// and for operations that continue (the rest of a send, an accept after a client reset).
    fn finish(&self, user_data: u64, res: i32) -> Option<Completion> {
        if user_data == 0 {
            return None;
        }
        let address = self.table.remove(OpId::from_u64(user_data))?;
        // SAFETY: the table held this address from `Box::into_raw` in `start` until the removal
        // above, which happens once per record; its CQE is reaped, so the kernel is done with it.
        let mut op = unsafe { Box::from_raw(address as *mut Op) };
        if op.refused.is_some() || self.closing.load(Ordering::Relaxed) {
            let result = if res >= 0 {
                Ok(res as usize)
            } else {
                Err(from_errno(-res))
            };
            return Some(complete(*op, result, address));
        }
        if res >= 0 {
            if op.kind == OpKind::Send {
                if let OpData::Buffer { buf, done } = &mut op.data {
                    *done += res as usize;
                    if res > 0 && *done < buf.len() {
                        self.start(op); // send the rest: a send completes whole, as on Windows
                        return None;
                    }
                }
            }
            return Some(complete(*op, Ok(res as usize), address));
        }
        let errno = -res;
        if op.kind == OpKind::Accept && is_client_reset(errno) {
            if let OpData::Accept { life, restarts, .. } = &mut op.data {
                if *restarts < ACCEPT_RESTARTS {
                    *restarts += 1;
                    let life = life.clone();
                    let mut op = Some(op);
                    life.while_open(|| self.start(op.take().expect("once")));
                    match op {
                        None => return None,
                        Some(back) => {
                            return Some(complete(*back, Err(from_errno(errno)), address));
                        }
                    }
                }
            }
        }
        Some(complete(*op, Err(from_errno(errno)), address))
    }

    /// Reaps up to `max` CQEs into `out`; returns how many completions were added.
    fn reap(&self, out: &mut Vec<Completion>, max: usize) -> usize {
        // Small chunks: the array is initialised on every call, and most calls find few CQEs.
        let mut cqes = [(0u64, 0i32); 16];
        let n = {
            let _cq = lock(&self.cq);
            // SAFETY: holding the cq lock makes this the only CompletionQueue in existence.
            let mut cq = unsafe { self.ring.completion_shared() };
            let mut n = 0;
            while n < max.min(cqes.len()) {
                let Some(cqe) = cq.next() else { break };
                cqes[n] = (cqe.user_data(), cqe.result());
                n += 1;
            }
            n
        };
        let before = out.len();
        for &(user_data, res) in &cqes[..n] {
            out.extend(self.finish(user_data, res));
        }
        out.len() - before
    }

    /// Reaps CQEs one at a time until one ends an operation; `None` once the CQ is empty.
    fn reap_one(&self) -> Option<Completion> {
        loop {
            let (user_data, res) = {
                let _cq = lock(&self.cq);
                // SAFETY: holding the cq lock makes this the only CompletionQueue in existence.
                let mut cq = unsafe { self.ring.completion_shared() };
                let cqe = cq.next()?;
                (cqe.user_data(), cqe.result())
            };
            if let Some(done) = self.finish(user_data, res) {
                return Some(done);
            }
        }
    }

    /// Submits what is queued and waits in the kernel for at least one CQE, at most until
    /// `deadline`. False on timeout.
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

/// The kernel side of `Uring::push`.
impl Ring for Uring {
    type Entry = Entry;

    fn publish(&self, sqe: &Entry) {
        let _sq = lock(&self.sq);
        // SAFETY: holding the sq lock makes this the only SubmissionQueue in existence.
        let mut sq = unsafe { self.ring.submission_shared() };
        loop {
            // SAFETY: every pointer in an SQE points into a record that stays allocated
            // until its CQE is reaped (or into nothing, for NOPs and cancels).
            if unsafe { sq.push(sqe) }.is_ok() {
                break;
            }
            // Full: let the kernel consume what is queued, then retry.
            sq.sync();
            let _ = self.ring.submit();
            sq.sync();
        }
        // Dropping `sq` stores the tail with release ordering.
    }

    fn enter(&self) {
        // Errors here (EINTR, EBUSY while the CQ overflows) leave the SQE queued; the next
        // enter, from any thread, submits it.
        if let Err(e) = self.ring.submit() {
            tracing::trace!(error = %e, "io_uring_enter: submission deferred");
        }
    }
}

/// `PROACTOR_SQPOLL=<idle milliseconds>`: submit through a kernel polling thread.
fn sqpoll_idle() -> io::Result<Option<u32>> {
    match std::env::var("PROACTOR_SQPOLL") {
        Err(_) => Ok(None),
        Ok(v) if v.is_empty() => Ok(None),
        Ok(v) => v.parse::<u32>().map(Some).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "PROACTOR_SQPOLL={v}: expected the polling thread's idle time in milliseconds"
                ),
            )
        }),
    }
}

fn clamp(len: usize) -> u32 {
    u32::try_from(len).unwrap_or(u32::MAX)
}

fn timed_out() -> io::Error {
    io::Error::from_raw_os_error(libc::ETIMEDOUT)
}

impl Driver for Uring {
    fn submit(&self, op: Box<Op>) {
        self.start(op);
    }

    fn post(&self, op: Box<Op>) -> io::Result<()> {
        self.start(op);
        Ok(())
    }

    fn get_completion(&self, timeout: Option<Duration>) -> io::Result<Completion> {
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            if let Some(done) = self.reap_one() {
                return Ok(done);
            }
            if !self.wait(deadline)? {
                return self.reap_one().ok_or_else(timed_out);
            }
        }
    }

    fn get_completions(
        &self,
        out: &mut Vec<Completion>,
        max: usize,
        timeout: Option<Duration>,
    ) -> io::Result<usize> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let max = max.max(1);
        let mut got = 0;
        loop {
            while got < max {
                let n = self.reap(out, max - got);
                if n == 0 {
                    break;
                }
                got += n;
            }
            if got > 0 {
                return Ok(got);
            }
            if !self.wait(deadline)? {
                got += self.reap(out, max);
                return if got > 0 { Ok(got) } else { Err(timed_out()) };
            }
        }
    }

    fn cancel(&self, id: OpId) -> bool {
        let cancel = opcode::AsyncCancel::new(id.as_u64()).build().user_data(0);
        self.table.with(id, |_| self.push(&cancel, true)).is_some()
    }

    /// Cancels every operation on `fd` and returns once they are done with it: the caller
    /// closes the descriptor next, and an SQE consumed after that would name a closed (or
    /// reused) descriptor number.
    fn cancel_fd(&self, fd: RawFd) {
        // Only consumed SQEs can be cancelled: hand the kernel everything queued first.
        let _ = self.ring.submit();
        if self.ring.params().is_setup_sqpoll() {
            let deadline = Instant::now() + SQ_DRAIN_TIMEOUT;
            while !self.sq_empty() && Instant::now() < deadline {
                let _ = self.ring.submit(); // wakes the polling thread if it sleeps
                std::thread::yield_now();
            }
        }
        let wait = Timespec::new().sec(SYNC_CANCEL_TIMEOUT.as_secs());
        match self
            .ring
            .submitter()
            .register_sync_cancel(Some(wait), CancelBuilder::fd(Fd(fd)).all())
        {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {} // nothing was in flight
            Err(e) => tracing::warn!(fd, error = %e, "cancelling operations before close"),
        }
    }

    fn in_flight(&self) -> usize {
        self.table.len()
    }

    fn associate(&self, _fd: RawFd, _socket: bool) -> io::Result<()> {
        Ok(())
    }

    fn forget(&self, _fd: RawFd) {}
}

impl Drop for Uring {
    fn drop(&mut self) {
        // Cancel everything, then reap until every record is back or the time is up.
        self.closing.store(true, Ordering::Relaxed);
        let cancel_all = opcode::AsyncCancel2::new(CancelBuilder::any().all())
            .build()
            .user_data(0);
        self.push(&cancel_all, true);
        let deadline = Instant::now() + DRAIN_TIMEOUT;
        let mut sink = Vec::new();
        while self.table.len() > 0 && Instant::now() < deadline {
            let soon = Some(Instant::now() + Duration::from_millis(100));
            if self.reap(&mut sink, 64) == 0 && self.wait(soon).is_err() {
                break;
            }
            sink.clear();
        }
        let left = self.table.len();
        if left > 0 {
            // The kernel may still write these records: leaking them is the only safe choice.
            tracing::warn!(
                left,
                "completion port dropped: leaking operations the kernel never completed"
            );
        }
    }
}
