//! The io_uring engine of a [`LocalPort`](crate::LocalPort): a ring of the port's own, used by
//! its thread alone.
//!
//! - The ring is set up `SINGLE_ISSUER | DEFER_TASKRUN` where the kernel takes it (else
//!   `COOP_TASKRUN`, else neither) and entered through its registered descriptor.
//! - Handles are fixed files: `register` puts the descriptor in a slot of a sparse table and
//!   every common operation names the slot. `close` cancels what is in flight on it (one
//!   asynchronous cancel by descriptor, submitted at once; nothing when nothing is in flight),
//!   then clears the slot, so the connection really closes when the owner closes its
//!   descriptor. The slot (and the handle's key, which carries a generation) is reused only
//!   once every operation on it has completed: a later handle never sees an old operation.
//! - Operations live in a slab indexed by `user_data`, which is the operation's id: the entry's
//!   index, and above it a sequence number unique in the process (taken in blocks from the
//!   process-wide counter, see [`OpId`]), which the entry keeps. An id of another port, or of
//!   an operation that ended, names no entry: no hash, no lock, no allocation per receive,
//!   send, pooled receive, pooled send or accept in steady state. Rare operations (vectored,
//!   datagram, file, connect) keep a boxed record of the shared backend (`op.rs`).
//! - Sends of one stream handle run one at a time in the kernel, in order (partial sends are
//!   continued); so do its receives. The sends a handle was asked for between two enters go
//!   out as one `SENDMSG`, each still completing on its own (`gather.rs`).
//! - Pooled receive: one multishot receive per handle over a provided-buffer ring on the
//!   pool's memory. Each data CQE fills the oldest waiting pooled receive or is queued on the
//!   handle; the end of the stream and errors come after the queued data. `ENOBUFS` ends the
//!   multishot with the data left in the socket: it is re-armed once buffers come back.
//! - Accept: one multishot accept per listener; accepted descriptors wait on the listener
//!   until an `accept` takes one.
//! - Deadlines are `LINK_TIMEOUT`s linked to the operation (a standalone `TIMEOUT` for pooled
//!   receives and accepts, which have no SQE of their own); timers are `TIMEOUT`s.

mod bufring;
mod coalesce;
mod enter;
mod fifo;
mod gather;
mod handles;
mod multishot;
mod ops;
mod reap;
mod recv_cap;
mod slab;
mod submit;

use std::{
    cell::RefCell,
    collections::VecDeque,
    io,
    net::{SocketAddr, TcpStream},
    os::{
        fd::{FromRawFd, OwnedFd, RawFd},
        unix::net::UnixStream,
    },
    rc::Rc,
    time::{Duration, Instant},
};

use io_uring::{
    IoUring, cqueue, opcode,
    squeue::{Entry, Flags},
    types::{CancelBuilder, Fd, Fixed, Timespec},
};

use self::{
    bufring::{BGID, BufRing},
    coalesce::Coalesce,
    enter::Enter,
    fifo::Fifo,
};
use super::{
    RawIo,
    error::from_errno,
    files::Files,
    op::{self, Dir, Op as Record, OpData},
    uring::Uring,
};
use crate::{
    Accepted, Completion, OpId, OpKind, PooledBuf,
    completion::{Output, grow_by},
    local::{LocalCompletion, LocalOp},
    op::Sequence,
    pool::Pool,
};

/// The `user_data` bit of a deadline's or timer's own timeout SQE.
const TAG_TIMER: u64 = 1 << 63;
/// No handle (posts, timers).
const NO_HANDLE: u32 = u32::MAX;
/// The most fixed-file slots (handles alive at once), also bounded by `RLIMIT_NOFILE`.
const MAX_SLOTS: u32 = 16_384;
/// `IORING_RECVSEND_POLL_FIRST`: a receive usually finds nothing yet (see `uring.rs`).
const POLL_FIRST: u16 = 1;
/// How long dropping the ring waits for the kernel to finish what it cancelled.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// `get_completions` calls in a row that may hand out completions without entering the ring
/// (some were ready, nothing to submit): then one enters, to run the task work that posts the
/// kernel's completions (with `DEFER_TASKRUN` nothing else does), so that a program whose
/// every completion makes another ready one (a post to itself) does not starve the ring.
const MAX_CALLS_UNENTERED: u32 = 64;

/// The io_uring engine.
pub(crate) struct Ring {
    st: RefCell<State>,
    setup: &'static str,
}

/// Everything the engine owns. Field order is drop order: the ring first (the kernel is done
/// with the pool and the buffer ring after), then the slab, the buffer ring, the pool.
struct State {
    ring: IoUring,
    enter: Enter,
    slots: Vec<Slot>,
    free_slots: Vec<u32>,
    /// The sequence numbers of the slab's ids.
    seq: Sequence,
    handles: Vec<Handle>,
    cold: Vec<Cold>,
    /// The handles' open files: a cancel by descriptor or fixed slot would end the operations
    /// of a clone of the handle too (`push_cancels`).
    files: Files,
    free_handles: Vec<u32>,
    table_size: u32,
    bufs: BufRing,
    pool: Rc<Pool>,
    /// Completions made and not yet dequeued.
    ready: VecDeque<LocalCompletion>,
    /// Handles whose multishot receive ended on `ENOBUFS`.
    starved: Vec<u32>,
    /// Handles whose write lane holds a deferred send, to gather at the next enter.
    unsent: Vec<u32>,
    /// Buffers lent to the kernel: in the buffer ring, not yet picked by a receive.
    lent: u32,
    /// Buffers the kernel picked since the last top-up (see `replenish`).
    picked: u32,
    /// The user's operations not yet completed.
    user_ops: usize,
    /// Of `user_ops`, those reported only if they fail (`Op::skip`).
    unreported: usize,
    /// Of `user_ops`, those whose body is a record of the shared backend: a record counts
    /// itself in `crate::live_operations` (its `LiveCount`), so the ring leaves them out.
    records: usize,
    /// What `user_ops - records` was when last added to the process-wide live count
    /// (`crate::live_operations`): the ring brings that count up to date once per
    /// `get_completions` and when dropped, not with an atomic operation per operation.
    published: usize,
    /// Slots in use (operations whose completion or CQEs are still to come).
    live_slots: usize,
    /// How many times a multishot receive found the pool empty.
    enobufs: u64,
    /// How many times a multishot receive was stopped for data nobody asked for.
    paused: u64,
    /// Sends that joined the send before them in a gathered `SENDMSG`.
    gathered: u64,
    /// Set while dropping: nothing is re-armed or continued, completions are dropped.
    closing: bool,
    /// A multishot receive's `optlen`, 0 for none (a kernel without the limit): see
    /// `recv_cap.rs`.
    recv_limit: u32,
    /// `get_completions` calls since the ring was last entered (see [`MAX_CALLS_UNENTERED`]).
    unentered: u32,
    /// The ring runs completions' task work only when this thread enters it
    /// (`DEFER_TASKRUN`).
    deferred_taskrun: bool,
    /// A multishot receive's stop is queued and must reach the kernel before the engine
    /// returns to the program (see [`State::pause_receiving`]).
    stop_queued: bool,
    /// The kernel takes a minimum wait (`IORING_FEAT_MIN_TIMEOUT`).
    min_timeout: bool,
    /// Wait coalescing, off unless the program sets a maximum delay (`coalesce.rs`).
    coalesce: Coalesce,
}

/// One entry of the slab.
struct Slot {
    /// The sequence number of its operation's id (see [`OpId`]).
    seq: u64,
    /// The next entry in the queue this one waits in ([`Fifo`]), or [`NONE`].
    next: u32,
    op: Option<Op>,
    /// The timeout of the operation's deadline or timer: read by the kernel when the SQE is
    /// submitted; boxed so it stays put while the slab grows, and kept for the slot's next use.
    ts: Option<Box<Timespec>>,
}

/// An operation in the slab.
struct Op {
    kind: OpKind,
    handle: u32,
    context: usize,
    user: usize,
    deadline: Option<Instant>,
    body: Body,
    /// CQEs still to come: the operation's SQE (until its last CQE) and its timeouts'.
    cqes: u16,
    /// Its SQE is queued or in the kernel.
    in_kernel: bool,
    /// A standalone deadline timeout (pooled receive, accept) is in the kernel.
    timer: bool,
    /// `cancel`, `cancel_all` or the handle's close asked for it to end.
    cancelled: bool,
    /// The user's completion was made (or, for the engine's own, it ended).
    finished: bool,
    /// The stream lane it runs in.
    lane: Option<Dir>,
    /// A user's operation, counted in `user_ops` (and so in `crate::live_operations`) until
    /// its completion is made; the engine's own are not.
    counted: bool,
    /// A multishot pooled receive: a message leaves it waiting (`State::deliver_more`).
    multishot: bool,
    /// A send holding its lane whose SQE waits for the next enter (`gather.rs`).
    deferred: bool,
    /// A member of its handle's gathered send in the kernel (`gather.rs`).
    gathered: bool,
    /// Reported only if it fails (`LocalSubmit::skip_success`), counted in `unreported` and
    /// its handle's `Cold::unreported` until it ends.
    skip: bool,
}

/// What an operation owns.
enum Body {
    /// A readiness wait, a timer.
    Nothing,
    Recv(Vec<u8>),
    Send {
        buf: Vec<u8>,
        done: usize,
    },
    SendPooled {
        buf: Option<PooledBuf>,
        done: usize,
    },
    /// A rare operation: the shared backend's record.
    Record(Box<Record>),
    /// A pooled receive or an accept, waiting on its handle for what the multishot brings.
    Waiter,
    /// The handle's multishot receive (the engine's own).
    MultiRecv,
    /// The listener's multishot accept (the engine's own).
    MultiAccept,
    /// A stream handle's hang-up watch (the engine's own): a poll for the peer's end or an
    /// error, see [`State::on_watch`].
    Watch,
}

/// No slab entry (an unarmed handle, an idle lane).
const NONE: u32 = u32::MAX;

/// A handle of the engine: a fixed-file slot and what runs on it. This is the part touched
/// per message, one cache line; the rest is its [`Cold`] entry (same index).
#[repr(C, align(64))]
struct Handle {
    context: usize,
    /// Slab entries naming this handle (its slot is reused only once they are gone).
    ops: u32,
    /// Of those, the ones whose SQE is queued or in the kernel.
    kernel: u32,
    /// The multishot receive or accept in flight, or [`NONE`].
    armed: u32,
    /// The operation running in each lane (by [`Dir`]), or [`NONE`].
    busy: [u32; 2],
    /// Pooled receives or accepts waiting, oldest first.
    waiters: Fifo,
    /// Operations waiting for each lane, oldest first.
    lanes: [Fifo; 2],
    generation: u16,
    /// How many entries `Cold::data` holds (pool buffers, at most 32,768, and an end).
    queued: u16,
    open: bool,
    socket: bool,
    stream: bool,
    datagram: bool,
    starved: bool,
    /// The end of the stream arrived.
    eof: bool,
    /// Its hang-up watch is in the kernel (or has fired).
    watched: bool,
    /// The watch fired (the peer ended the stream or reset it): it receives with single-shot
    /// receives from now on.
    hup: bool,
}

/// The part of a handle seldom touched.
struct Cold {
    raw: RawFd,
    /// Records in the kernel on this handle (they name the raw descriptor).
    raw_ops: u32,
    /// What the multishot receive brought that no pooled receive asked for yet.
    data: VecDeque<Got>,
    /// Connections the multishot accept brought that no accept asked for yet.
    accepted: VecDeque<OwnedFd>,
    /// The gathered send of its write lane (kept for the next one once it completed).
    gather: Option<Box<gather::Gather>>,
    /// Its operations reported only if they fail that have not ended (`Op::skip`).
    unreported: u32,
    /// Whether one of its operations reported the peer's reset: the end of the stream a
    /// receive finds after it is the reset (`op::Reset`).
    reset: op::Reset,
}

/// What a multishot receive brought.
enum Got {
    Data(PooledBuf),
    Eof,
    Error(io::Error),
}

fn cancelled() -> io::Error {
    crate::error::cancelled(libc::ECANCELED, None)
}

fn deadline_passed() -> io::Error {
    crate::error::deadline(libc::ECANCELED, None)
}

fn clamp(len: usize) -> u32 {
    u32::try_from(len).unwrap_or(u32::MAX)
}

use crate::error::{foreign_buffer, mixing};

fn closed_handle() -> io::Error {
    crate::error::explained(
        io::ErrorKind::InvalidInput,
        libc::EBADF,
        "the handle is closed",
    )
}

/// `Unsupported` if `on` and the kernel has no minimum wait (`st.min_timeout`).
fn min_wait_for(st: &State, on: bool) -> io::Result<()> {
    match on && !st.min_timeout {
        true => Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "wait coalescing needs the kernel's minimum wait (IORING_FEAT_MIN_TIMEOUT, Linux 6.12)",
        )),
        false => Ok(()),
    }
}

impl Ring {
    /// A ring of its own over `pool` (made with no buffer free: all are lent to the kernel).
    pub(crate) fn new(pool: Rc<Pool>) -> io::Result<Ring> {
        // Test-only: the ring cannot be built (as where io_uring is disabled or out of locked
        // memory for this thread), so the port runs on a shared one.
        #[cfg(feature = "failpoints")]
        fail::fail_point!("ring::new", |_| Err(io::Error::other(
            "failpoint ring::new: no ring"
        )));
        let (mut ring, setup) = enter::build(crate::sys::requested_ring_setup()?)?;
        // SendZc (6.0) implies multishot receive (6.0), multishot accept and provided-buffer
        // rings (5.19), cancel by fixed descriptor (5.19).
        super::uring::require_opcodes(
            &ring,
            &[
                opcode::Timeout::CODE,
                opcode::LinkTimeout::CODE,
                opcode::SendZc::CODE,
            ],
        )?;
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes one `rlimit`.
        let table_size = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 {
            (limit.rlim_cur.min(u64::from(MAX_SLOTS)) as u32).max(64)
        } else {
            1024
        };
        ring.submitter().register_files_sparse(table_size)?;
        let bufs = BufRing::new(&ring, &pool)?;
        let recv_limit = match crate::sys::requested_recv_limit()? && recv_cap::probe(&mut ring) {
            true => recv_cap::optlen(pool.size()),
            false => 0,
        };
        // Every buffer starts on the pool's free list, lowest ids on top; `replenish` lends
        // the kernel a window of them (see there).
        for bid in (0..pool.count()).rev() {
            pool.put_free(bid);
        }
        let enter = Enter::new(&ring);
        let min_timeout = ring.params().is_feature_min_timeout();
        tracing::debug!(
            setup,
            registered_ring = enter.registered(),
            table_size,
            recv_limit,
            min_timeout,
            "local io_uring port"
        );
        Ok(Ring {
            st: RefCell::new(State {
                ring,
                enter,
                slots: Vec::new(),
                free_slots: Vec::new(),
                seq: Sequence::new(),
                handles: Vec::new(),
                cold: Vec::new(),
                files: Files::default(),
                free_handles: Vec::new(),
                table_size,
                bufs,
                pool,
                ready: VecDeque::new(),
                starved: Vec::new(),
                unsent: Vec::new(),
                lent: 0,
                picked: 0,
                user_ops: 0,
                unreported: 0,
                records: 0,
                published: 0,
                live_slots: 0,
                enobufs: 0,
                paused: 0,
                gathered: 0,
                closing: false,
                unentered: 0,
                recv_limit,
                deferred_taskrun: setup == crate::sys::RING_SETUPS[0],
                stop_queued: false,
                min_timeout,
                coalesce: Coalesce::new(Instant::now(), Duration::ZERO),
            }),
            setup,
        })
    }

    /// Whether the ring is entered by its registered index (`IORING_REGISTER_RING_FDS`).
    #[cfg(test)]
    pub(crate) fn ring_fd_registered(&self) -> bool {
        self.st.borrow().enter.registered()
    }

    pub(crate) fn setup(&self) -> &'static str {
        self.setup
    }

    /// The bytes one arming of a multishot receive takes at most, if the kernel limits it.
    pub(crate) fn recv_limit(&self) -> Option<usize> {
        let st = self.st.borrow();
        (st.recv_limit > 0).then(|| recv_cap::most(st.pool.size()))
    }

    pub(crate) fn backend(&self) -> &'static str {
        "io_uring"
    }

    /// How many times a multishot receive found the pool empty (`ENOBUFS`).
    pub(crate) fn pool_starvations(&self) -> u64 {
        self.st.borrow().enobufs
    }

    pub(crate) fn receive_pauses(&self) -> u64 {
        self.st.borrow().paused
    }

    pub(crate) fn gathered_sends(&self) -> u64 {
        self.st.borrow().gathered
    }

    /// Sets wait coalescing's longest delay (`None` or zero: off); `Unsupported` on a kernel
    /// without a minimum wait (Linux before 6.12).
    pub(crate) fn set_wait_coalescing(&self, max: Option<Duration>) -> io::Result<()> {
        let mut st = self.st.borrow_mut();
        let on = max.is_some_and(|d| !d.is_zero());
        min_wait_for(&st, on)?;
        let cpu = if on {
            coalesce::thread_cpu()
        } else {
            Duration::ZERO
        };
        st.coalesce.set_max(max, Instant::now(), cpu);
        Ok(())
    }

    /// Holds the minimum wait at `delay` (tests of the waits).
    pub(crate) fn fix_coalescing_delay(&self, delay: Duration) -> io::Result<()> {
        let mut st = self.st.borrow_mut();
        min_wait_for(&st, !delay.is_zero())?;
        st.coalesce.fix(delay, Instant::now());
        Ok(())
    }

    /// The minimum wait the next wait takes (zero: none).
    pub(crate) fn coalescing_delay(&self) -> Duration {
        Duration::from_micros(u64::from(self.st.borrow().coalesce.delay_us()))
    }

    pub(crate) fn register(&self, raw: RawIo, _foreign: bool, context: usize) -> io::Result<u32> {
        self.st.borrow_mut().register(raw.0, context)
    }

    /// Cancels what is in flight on handle `key`, forgets it, then closes `io`, its object.
    pub(crate) fn close<T>(&self, key: u32, io: T) {
        self.st.borrow_mut().close(key);
        drop(io);
    }

    pub(crate) fn start(
        &self,
        key: Option<u32>,
        context: usize,
        user: usize,
        deadline: Option<Instant>,
        skip: bool,
        op: LocalOp,
    ) -> OpId {
        let mut st = self.st.borrow_mut();
        match op {
            LocalOp::Send(_) | LocalOp::SendPooled(_) => {
                st.start_send(key, context, user, deadline, skip, op)
            }
            op => st.start(key, context, user, deadline, skip, op),
        }
    }

    /// Operations reported only if they fail still in flight: on handle `key`, or all.
    #[inline]
    pub(crate) fn unreported(&self, key: Option<u32>) -> usize {
        let st = self.st.borrow();
        match key {
            None => st.unreported,
            Some(key) => st
                .handle_of(key)
                .map_or(0, |h| st.cold[h as usize].unreported as usize),
        }
    }

    pub(crate) fn timer(&self, user: usize, after: Duration) -> OpId {
        self.st.borrow_mut().timer(user, after)
    }

    pub(crate) fn post(&self, context: usize, value: usize) -> OpId {
        let id = OpId::next();
        let c = Completion::of(context, 0, id, OpKind::Post, Ok(value), Output::None);
        self.st
            .borrow_mut()
            .ready
            .push_back(LocalCompletion::new(c, None));
        id
    }

    /// Cancels operation `id`: `NotFound` if it is not in flight. Ids are `user_data`s whose
    /// sequence number, unique in the process, the slab entry keeps: an old id never names a
    /// newer operation, nor another port's id one of this port.
    pub(crate) fn cancel(&self, id: OpId) -> io::Result<()> {
        let mut st = self.st.borrow_mut();
        let done = st.cancel(id);
        st.submit_stops();
        done
    }

    pub(crate) fn cancel_all(&self, key: u32) -> io::Result<()> {
        let mut st = self.st.borrow_mut();
        st.cancel_all(key);
        st.submit_stops();
        Ok(())
    }

    pub(crate) fn in_flight(&self) -> usize {
        let st = self.st.borrow();
        st.user_ops + st.ready.len()
    }

    /// Submits what is queued and waits (one enter) for completions, then reaps the CQ.
    pub(crate) fn get_completions(
        &self,
        out: &mut Vec<LocalCompletion>,
        max: usize,
        timeout: Option<Duration>,
    ) -> io::Result<usize> {
        let mut st = self.st.borrow_mut();
        let got = st.get_completions(out, max, timeout);
        st.submit_stops();
        st.publish_live();
        got
    }
}

impl State {
    fn get_completions(
        &mut self,
        out: &mut Vec<LocalCompletion>,
        max: usize,
        timeout: Option<Duration>,
    ) -> io::Result<usize> {
        let until = timeout.and_then(|t| Instant::now().checked_add(t));
        // Only the call's first wait may coalesce: one that brought nothing in its delay is
        // followed by a plain wait (see `Enter::enter`).
        let mut may_coalesce = true;
        loop {
            self.replenish();
            let mut waited = false;
            if self.ready.is_empty() && self.cq_len() == 0 {
                let left = until.map(|u| u.saturating_duration_since(Instant::now()));
                let wait = left.is_none_or(|l| !l.is_zero());
                // Nor one with less time left than the delay: a coalescing wait lasts it.
                let delay = match self.coalesce.delay_us() {
                    _ if !may_coalesce => 0,
                    d if left.is_some_and(|l| l < Duration::from_micros(u64::from(d))) => 0,
                    d => d,
                };
                may_coalesce = false;
                self.enter_coalesced(wait, left, delay)?;
                waited = wait;
            } else if self.sq_len() > 0
                || !self.unsent.is_empty()
                || self.unentered >= MAX_CALLS_UNENTERED
            {
                self.enter(false, None)?;
            } else {
                self.unentered += 1;
            }
            let reaped = self.reap();
            self.coalesce.reaped(reaped);
            if waited {
                self.coalesce.waited(Instant::now, coalesce::thread_cpu);
            }
            if !self.ready.is_empty() {
                let n = max.min(self.ready.len());
                if n > 1 && out.is_empty() && n == self.ready.len() {
                    // The common case, all of them into an empty batch: the two swap buffers
                    // instead of moving each completion (`VecDeque::from(Vec)` takes the
                    // buffer as it is; `Vec::from(VecDeque)` too while the queue starts at
                    // its buffer's start, as one refilled from empty by `push_back` does).
                    // Not for one: a move costs no more, and `get_completion`'s `Vec` of one,
                    // dropped right after, would take the queue's buffer with it.
                    let spare = VecDeque::from(std::mem::take(out));
                    *out = Vec::from(std::mem::replace(&mut self.ready, spare));
                } else if n == 1 {
                    // One: a plain move (`extend` over a drain goes element by element).
                    out.extend(self.ready.pop_front());
                    if self.ready.is_empty() {
                        // Back to its buffer's start (`pop_front` leaves it one further on,
                        // which `drain` did not): the swap above relies on it.
                        self.ready.clear();
                    }
                } else {
                    out.extend(self.ready.drain(..n));
                }
                return Ok(n);
            }
            if until.is_some_and(|u| Instant::now() >= u) {
                return Err(crate::error::timed_out());
            }
        }
    }

    /// Submits a queued stop of a multishot receive now (one enter, no wait). With deferred
    /// task work the kernel receives only inside this thread's enters, which submit first, so
    /// a stop can wait for the next one; without, it receives whenever data comes (at this
    /// thread's next system call under `COOP_TASKRUN`, at once otherwise) and would take pool
    /// buffers for nobody until the program's next `get_completions`.
    fn submit_stops(&mut self) {
        if std::mem::take(&mut self.stop_queued)
            && let Err(e) = self.enter(false, None)
        {
            // The stop stays queued: the next enter submits it.
            tracing::debug!(error = %e, "io_uring_enter failed submitting a receive's stop");
        }
    }

    /// Brings the process-wide live count up to date with `user_ops` (less the records,
    /// which count themselves).
    fn publish_live(&mut self) {
        let live = self.user_ops - self.records;
        crate::op::live_adjust(live, self.published);
        self.published = live;
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        let st = self.st.get_mut();
        st.closing = true;
        let all = opcode::AsyncCancel2::new(CancelBuilder::any().all())
            .build()
            .user_data(0);
        st.push(&all);
        let deadline = Instant::now() + DRAIN_TIMEOUT;
        while st.live_slots > 0 && Instant::now() < deadline {
            if st.enter(true, Some(Duration::from_millis(100))).is_err() {
                break;
            }
            st.reap();
        }
        st.ready.clear();
        // Operations the kernel never completed stay counted: they are leaked below.
        st.publish_live();
        if st.live_slots > 0 {
            // The kernel may still write these operations' buffers and the pool: leak them.
            tracing::warn!(
                left = st.live_slots,
                "local port dropped: leaking operations the kernel never completed"
            );
            std::mem::forget(std::mem::take(&mut st.slots));
            std::mem::forget(st.pool.clone());
            st.bufs.leak();
        }
        // Else the thread's registration keeps the ring (and what it holds) until it exits.
        st.enter.unregister(&st.ring);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a message touches of its handle is one cache line.
    #[test]
    fn hot_handle_is_one_cache_line() {
        assert_eq!(std::mem::size_of::<Handle>(), 64);
        assert_eq!(std::mem::align_of::<Handle>(), 64);
    }
}
