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
//! - Operations live in a slab indexed by `user_data` (index, and a generation above it, so an
//!   id is never reused while the ring lives): no hash, no lock, no allocation per receive,
//!   send, pooled receive, pooled send or accept in steady state. Rare operations (vectored,
//!   datagram, file, connect) keep a boxed record of the shared backend (`op.rs`).
//! - Sends of one stream handle run one at a time in the kernel, in order (partial sends are
//!   continued); so do its receives.
//! - Pooled receive: one multishot receive per handle over a provided-buffer ring on the
//!   pool's memory. Each data CQE fills the oldest waiting pooled receive or is queued on the
//!   handle; the end of the stream and errors come after the queued data. `ENOBUFS` ends the
//!   multishot with the data left in the socket: it is re-armed once buffers come back.
//! - Accept: one multishot accept per listener; accepted descriptors wait on the listener
//!   until an `accept` takes one.
//! - Deadlines are `LINK_TIMEOUT`s linked to the operation (a standalone `TIMEOUT` for pooled
//!   receives and accepts, which have no SQE of their own); timers are `TIMEOUT`s.

mod bufring;
mod enter;

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
    enter::Enter,
};
use super::{
    RawIo,
    error::from_errno,
    op::{self, Dir, Op as Record, OpData},
    uring::Uring,
};
use crate::{
    Accepted, Completion, OpId, OpKind, PooledBuf,
    completion::{Output, grow_by},
    local::{LocalCompletion, LocalOp},
    op::LiveCount,
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
    handles: Vec<Handle>,
    free_handles: Vec<u32>,
    table_size: u32,
    bufs: BufRing,
    pool: Rc<Pool>,
    /// Completions made and not yet dequeued.
    ready: VecDeque<LocalCompletion>,
    /// Handles whose multishot receive ended on `ENOBUFS`.
    starved: Vec<u32>,
    /// Buffers given back, on their way to the buffer ring (kept to reuse its capacity).
    returned: Vec<u16>,
    /// The user's operations not yet completed.
    user_ops: usize,
    /// Slots in use (operations whose completion or CQEs are still to come).
    live_slots: usize,
    /// How many times a multishot receive found the pool empty.
    enobufs: u64,
    /// Set while dropping: nothing is re-armed or continued, completions are dropped.
    closing: bool,
}

/// One entry of the slab.
struct Slot {
    generation: u32,
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
    /// The user's operations count as live (`crate::live_operations`); the engine's own do not.
    live: Option<LiveCount>,
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
}

/// A handle of the engine: a fixed-file slot and what runs on it.
struct Handle {
    generation: u16,
    open: bool,
    raw: RawFd,
    context: usize,
    socket: bool,
    stream: bool,
    datagram: bool,
    /// Slab entries naming this handle (its slot is reused only once they are gone).
    ops: u32,
    /// Of those, the ones whose SQE is queued or in the kernel.
    kernel: u32,
    /// Of those, records that name the raw descriptor.
    raw_ops: u32,
    lanes: [Lane; 2],
    /// Pooled receives or accepts waiting, oldest first.
    waiters: VecDeque<u32>,
    /// What the multishot receive brought that no pooled receive asked for yet.
    data: VecDeque<Got>,
    /// Connections the multishot accept brought that no accept asked for yet.
    accepted: VecDeque<OwnedFd>,
    /// The multishot receive or accept in flight.
    armed: Option<u32>,
    starved: bool,
    /// The end of the stream arrived.
    eof: bool,
}

#[derive(Default)]
struct Lane {
    busy: Option<u32>,
    waiting: VecDeque<u32>,
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

fn timed_out() -> io::Error {
    io::Error::from_raw_os_error(libc::ETIMEDOUT)
}

fn clamp(len: usize) -> u32 {
    u32::try_from(len).unwrap_or(u32::MAX)
}

fn mixing() -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        "a receive with a buffer on a handle with a pooled receive pending (the two would take bytes out of order)",
    )
}

fn foreign_buffer() -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        "send_pooled with a buffer of another port's pool",
    )
}

fn closed_handle() -> io::Error {
    crate::error::explained(
        io::ErrorKind::InvalidInput,
        libc::EBADF,
        "the handle is closed",
    )
}

impl Ring {
    /// A ring of its own over `pool` (made with no buffer free: all are lent to the kernel).
    pub(crate) fn new(pool: Rc<Pool>) -> io::Result<Ring> {
        let (ring, setup) = enter::build()?;
        let mut probe = io_uring::Probe::new();
        ring.submitter().register_probe(&mut probe)?;
        // SendZc (6.0) implies multishot receive (6.0), multishot accept and provided-buffer
        // rings (5.19), cancel by fixed descriptor (5.19).
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
            opcode::Timeout::CODE,
            opcode::LinkTimeout::CODE,
            opcode::SendZc::CODE,
        ];
        if let Some(op) = needed.iter().find(|op| !probe.is_supported(**op)) {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!("io_uring lacks opcode {op}: Linux 6.0 or later is needed"),
            ));
        }
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
        let mut bufs = BufRing::new(&ring, &pool)?;
        for bid in 0..pool.count() {
            bufs.add(bid, pool.addr(bid), pool.size());
        }
        bufs.commit();
        let enter = Enter::new(&ring);
        tracing::debug!(
            setup,
            registered_ring = enter.registered(),
            table_size,
            "local io_uring port"
        );
        Ok(Ring {
            st: RefCell::new(State {
                ring,
                enter,
                slots: Vec::new(),
                free_slots: Vec::new(),
                handles: Vec::new(),
                free_handles: Vec::new(),
                table_size,
                bufs,
                pool,
                ready: VecDeque::new(),
                starved: Vec::new(),
                returned: Vec::new(),
                user_ops: 0,
                live_slots: 0,
                enobufs: 0,
                closing: false,
            }),
            setup,
        })
    }

    pub(crate) fn setup(&self) -> &'static str {
        self.setup
    }

    pub(crate) fn backend(&self) -> &'static str {
        "io_uring"
    }

    /// How many times a multishot receive found the pool empty (`ENOBUFS`).
    pub(crate) fn pool_starvations(&self) -> u64 {
        self.st.borrow().enobufs
    }

    pub(crate) fn register(&self, raw: RawIo, _foreign: bool, context: usize) -> io::Result<u32> {
        self.st.borrow_mut().register(raw.0, context)
    }

    pub(crate) fn close(&self, key: u32) {
        self.st.borrow_mut().close(key);
    }

    pub(crate) fn start(
        &self,
        key: Option<u32>,
        context: usize,
        user: usize,
        deadline: Option<Instant>,
        op: LocalOp,
    ) -> OpId {
        self.st.borrow_mut().start(key, context, user, deadline, op)
    }

    pub(crate) fn timer(&self, user: usize, after: Duration) -> OpId {
        self.st.borrow_mut().timer(user, after)
    }

    pub(crate) fn post(&self, context: usize, value: usize) -> OpId {
        let id = OpId::next();
        let c = completion(context, 0, id, OpKind::Post, Ok(value), Output::None);
        self.st
            .borrow_mut()
            .ready
            .push_back(LocalCompletion::new(c, None));
        id
    }

    /// Cancels operation `id`: `NotFound` if it is not in flight. Ids are `user_data`s whose
    /// generation changes at each use of a slab entry, so an old id never names a newer
    /// operation.
    pub(crate) fn cancel(&self, id: OpId) -> io::Result<()> {
        self.st.borrow_mut().cancel(id)
    }

    pub(crate) fn cancel_all(&self, key: u32) -> io::Result<()> {
        self.st.borrow_mut().cancel_all(key);
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
        let until = timeout.and_then(|t| Instant::now().checked_add(t));
        loop {
            st.replenish();
            if st.ready.is_empty() && st.cq_len() == 0 {
                let left = until.map(|u| u.saturating_duration_since(Instant::now()));
                let wait = left.is_none_or(|l| !l.is_zero());
                st.enter(wait, left)?;
            } else if st.sq_len() > 0 {
                st.enter(false, None)?;
            }
            st.reap();
            if !st.ready.is_empty() {
                let n = max.min(st.ready.len());
                out.extend(st.ready.drain(..n));
                return Ok(n);
            }
            if until.is_some_and(|u| Instant::now() >= u) {
                return Err(timed_out());
            }
        }
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
    }
}

fn completion(
    context: usize,
    user: usize,
    id: OpId,
    kind: OpKind,
    result: io::Result<usize>,
    output: Output,
) -> Completion {
    let (bytes, error) = match result {
        Ok(n) => (n, None),
        Err(e) => (0, Some(e)),
    };
    Completion {
        context,
        user,
        id,
        kind,
        bytes,
        error,
        output,
        peer: None,
        address: 0,
    }
}

/// The kind of a `LocalOp`.
fn kind_of(op: &LocalOp) -> OpKind {
    match op {
        LocalOp::Recv(_) => OpKind::Recv,
        LocalOp::RecvVectored(_) => OpKind::RecvVectored,
        LocalOp::Readable => OpKind::Readable,
        LocalOp::RecvPooled => OpKind::RecvPooled,
        LocalOp::Send(_) => OpKind::Send,
        LocalOp::SendVectored(_) => OpKind::SendVectored,
        LocalOp::SendPooled(_) => OpKind::SendPooled,
        LocalOp::RecvFrom(_) => OpKind::RecvFrom,
        LocalOp::SendTo(..) => OpKind::SendTo,
        LocalOp::ReadAt(..) => OpKind::Read,
        LocalOp::WriteAt(..) => OpKind::Write,
        LocalOp::Accept => OpKind::Accept,
        LocalOp::Connect(_) => OpKind::Connect,
    }
}

/// A connection the multishot accept brought, as an accept's output; `None` if its client is
/// already gone.
fn accepted(fd: OwnedFd) -> Option<Output> {
    let sock = socket2::SockRef::from(&fd);
    let local = sock.local_addr().ok()?;
    if local.family() == libc::AF_UNIX as libc::sa_family_t {
        let stream = UnixStream::from(fd);
        let peer = stream.peer_addr().ok()?;
        return Some(Output::AcceptedUnix(stream, peer));
    }
    let local_addr: SocketAddr = local.as_socket()?;
    let peer_addr = sock.peer_addr().ok()?.as_socket()?;
    Some(Output::Accepted(Accepted {
        stream: TcpStream::from(fd),
        local_addr,
        peer_addr,
    }))
}

impl State {
    // ---- the slab ----

    fn ud(&self, idx: u32) -> u64 {
        (u64::from(self.slots[idx as usize].generation) << 32) | u64::from(idx)
    }

    fn op(&mut self, idx: u32) -> &mut Op {
        self.slots[idx as usize]
            .op
            .as_mut()
            .expect("a live slab entry")
    }

    /// Puts `op` in a free entry; returns its index.
    fn alloc(&mut self, op: Op) -> u32 {
        if op.handle != NO_HANDLE {
            self.handles[op.handle as usize].ops += 1;
        }
        if op.live.is_some() {
            self.user_ops += 1;
        }
        self.live_slots += 1;
        match self.free_slots.pop() {
            Some(idx) => {
                self.slots[idx as usize].op = Some(op);
                idx
            }
            None => {
                self.slots.push(Slot {
                    generation: 1,
                    op: Some(op),
                    ts: None,
                });
                self.slots.len() as u32 - 1
            }
        }
    }

    /// Frees entry `idx` if its operation finished and no CQE of it is to come.
    fn maybe_release(&mut self, idx: u32) {
        let slot = &mut self.slots[idx as usize];
        let Some(op) = slot.op.as_ref() else { return };
        if !op.finished || op.cqes > 0 {
            return;
        }
        let op = slot.op.take().expect("checked");
        slot.generation = if slot.generation >= 0x7fff_ffff {
            1
        } else {
            slot.generation + 1
        };
        self.free_slots.push(idx);
        self.live_slots -= 1;
        if op.handle != NO_HANDLE {
            let h = &mut self.handles[op.handle as usize];
            h.ops -= 1;
            self.maybe_free_handle(op.handle);
        }
    }

    fn new_op(
        &self,
        kind: OpKind,
        handle: u32,
        user: usize,
        deadline: Option<Instant>,
        body: Body,
    ) -> Op {
        let context = if handle == NO_HANDLE {
            0
        } else {
            self.handles[handle as usize].context
        };
        Op {
            kind,
            handle,
            context,
            user,
            deadline,
            body,
            cqes: 0,
            in_kernel: false,
            timer: false,
            cancelled: false,
            finished: false,
            lane: None,
            live: Some(LiveCount::new()),
        }
    }

    /// Makes the completion of user operation `idx` (which owns nothing more).
    fn deliver(
        &mut self,
        idx: u32,
        result: io::Result<usize>,
        output: Output,
        pooled: Option<PooledBuf>,
    ) {
        let id = OpId::from_u64(self.ud(idx));
        let op = self.op(idx);
        op.finished = true;
        op.live = None;
        let (context, user, kind) = (op.context, op.user, op.kind);
        let timer = std::mem::take(&mut op.timer);
        self.user_ops -= 1;
        if timer {
            // The deadline's timeout is still in the kernel: remove it (its CQE frees the entry).
            let remove = opcode::TimeoutRemove::new(self.ud(idx) | TAG_TIMER)
                .build()
                .user_data(0);
            self.push(&remove);
        }
        if !self.closing {
            let c = completion(context, user, id, kind, result, output);
            self.ready.push_back(LocalCompletion::new(c, pooled));
        }
        self.maybe_release(idx);
    }

    /// Completes user operation `idx`, which never reached the kernel, with `error`, handing
    /// back what it owned.
    fn deliver_unstarted(&mut self, idx: u32, error: io::Error) {
        let body = std::mem::replace(&mut self.op(idx).body, Body::Nothing);
        match body {
            Body::Recv(buf) | Body::Send { buf, .. } => {
                self.deliver(idx, Err(error), Output::Buffer(buf), None)
            }
            Body::SendPooled { buf, .. } => self.deliver(idx, Err(error), Output::None, buf),
            Body::Record(mut r) => {
                r.refused = Some(error);
                let c = op::complete(*r, Ok(0), 0);
                self.deliver_completion(idx, c);
            }
            _ => self.deliver(idx, Err(error), Output::None, None),
        }
    }

    /// Delivers a completion built from a record (with the operation's id and user value).
    fn deliver_completion(&mut self, idx: u32, c: Completion) {
        let Completion {
            bytes,
            error,
            output,
            peer,
            ..
        } = c;
        let result = match error {
            Some(e) => Err(e),
            None => Ok(bytes),
        };
        let closing = self.closing;
        self.deliver(idx, result, output, None);
        if !closing && let Some(last) = self.ready.back_mut() {
            last.peer = peer;
            last.bytes = bytes;
        }
    }

    // ---- the submission queue ----

    fn sq_len(&mut self) -> usize {
        self.ring.submission().len()
    }

    fn cq_len(&mut self) -> usize {
        self.ring.completion().len()
    }

    fn enter(&mut self, wait: bool, timeout: Option<Duration>) -> io::Result<()> {
        let n = self.sq_len() as u32;
        self.enter.enter(n, wait, timeout)
    }

    /// Queues `sqe` (submitting what is queued first if the queue is full).
    fn push(&mut self, sqe: &Entry) {
        self.room(1);
        // SAFETY: every pointer in the SQEs this engine builds names memory it keeps until
        // the operation's CQE (buffers, records, boxed timespecs) or nothing.
        let pushed = unsafe { self.ring.submission().push(sqe) };
        debug_assert!(pushed.is_ok());
    }

    /// Queues `a` linked to `b`, in the same submission.
    fn push_linked(&mut self, a: &Entry, b: &Entry) {
        self.room(2);
        // SAFETY: as in `push`; there is room for both.
        unsafe {
            let mut sq = self.ring.submission();
            let _ = sq.push(a);
            let _ = sq.push(b);
        }
    }

    /// Makes room for `n` SQEs.
    fn room(&mut self, n: usize) {
        loop {
            let (len, cap) = {
                let sq = self.ring.submission();
                (sq.len(), sq.capacity())
            };
            if cap - len >= n {
                return;
            }
            if let Err(e) = self.enter(false, None) {
                tracing::warn!(error = %e, "io_uring_enter failed while the submission queue is full");
                std::thread::yield_now();
            }
        }
    }

    /// Queues the SQE of operation `idx` (and its deadline's link timeout).
    fn issue(&mut self, idx: u32) {
        let ud = self.ud(idx);
        let slot = &mut self.slots[idx as usize];
        let op = slot.op.as_mut().expect("a live slab entry");
        let fixed = Fixed(op.handle);
        let sqe = match &mut op.body {
            Body::Recv(buf) => {
                let spare = buf.spare_capacity_mut();
                opcode::Recv::new(fixed, spare.as_mut_ptr().cast(), clamp(spare.len()))
                    .ioprio(POLL_FIRST)
                    .build()
            }
            Body::Send { buf, done } => {
                let rest = &buf[*done..];
                opcode::Send::new(fixed, rest.as_ptr(), clamp(rest.len()))
                    .flags(libc::MSG_NOSIGNAL)
                    .build()
            }
            Body::SendPooled { buf, done } => {
                let rest = &buf.as_ref().expect("a pooled send's buffer")[*done..];
                opcode::Send::new(fixed, rest.as_ptr(), clamp(rest.len()))
                    .flags(libc::MSG_NOSIGNAL)
                    .build()
            }
            Body::Nothing if op.kind == OpKind::Timer => {
                let ts = slot.ts.as_deref().expect("a timer's timespec");
                opcode::Timeout::new(ts).build()
            }
            Body::Nothing => opcode::PollAdd::new(fixed, libc::POLLIN as u32).build(),
            Body::Record(r) => Uring::prepare(r),
            Body::MultiRecv => opcode::RecvMulti::new(fixed, BGID).build(),
            Body::MultiAccept => opcode::AcceptMulti::new(fixed)
                .flags(libc::SOCK_CLOEXEC)
                .build(),
            Body::Waiter => unreachable!("a waiter has no SQE"),
        }
        .user_data(ud);
        let is_record = matches!(op.body, Body::Record(_));
        op.in_kernel = true;
        op.cqes += 1;
        let deadline = op.deadline.filter(|_| op.kind != OpKind::Timer);
        let handle = op.handle;
        if handle != NO_HANDLE {
            let h = &mut self.handles[handle as usize];
            h.kernel += 1;
            if is_record {
                h.raw_ops += 1;
            }
        }
        match deadline {
            None => self.push(&sqe),
            Some(at) => {
                let left = at.saturating_duration_since(Instant::now());
                let slot = &mut self.slots[idx as usize];
                let ts = slot.ts.get_or_insert_with(|| Box::new(Timespec::new()));
                **ts = Timespec::new()
                    .sec(left.as_secs())
                    .nsec(left.subsec_nanos());
                let link = opcode::LinkTimeout::new(&**ts)
                    .build()
                    .user_data(ud | TAG_TIMER);
                slot.op.as_mut().expect("live").cqes += 1;
                self.push_linked(&sqe.flags(Flags::IO_LINK), &link);
            }
        }
    }

    /// Starts a standalone timeout for the deadline of waiter `idx`.
    fn arm_waiter_deadline(&mut self, idx: u32, at: Instant) {
        let ud = self.ud(idx) | TAG_TIMER;
        let left = at.saturating_duration_since(Instant::now());
        let slot = &mut self.slots[idx as usize];
        let ts = slot.ts.get_or_insert_with(|| Box::new(Timespec::new()));
        **ts = Timespec::new()
            .sec(left.as_secs())
            .nsec(left.subsec_nanos());
        let sqe = opcode::Timeout::new(&**ts).build().user_data(ud);
        let op = slot.op.as_mut().expect("live");
        op.timer = true;
        op.cqes += 1;
        self.push(&sqe);
    }

    // ---- handles ----

    fn handle_of(&self, key: u32) -> Option<u32> {
        let idx = key & 0xffff;
        let h = self.handles.get(idx as usize)?;
        (h.open && u32::from(h.generation) == key >> 16).then_some(idx)
    }

    fn register(&mut self, raw: RawFd, context: usize) -> io::Result<u32> {
        // SAFETY: fstat on a descriptor number only reads its status into `st`.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: as above; `st` is writable.
        if unsafe { libc::fstat(raw, &mut st) } != 0 {
            return Err(crate::error::explained(
                io::ErrorKind::InvalidInput,
                io::Error::last_os_error()
                    .raw_os_error()
                    .unwrap_or(libc::EBADF),
                "invalid or closed handle",
            ));
        }
        let socket = st.st_mode & libc::S_IFMT == libc::S_IFSOCK;
        let ty = if socket {
            super::socket_type(raw)
        } else {
            None
        };
        let stream = match st.st_mode & libc::S_IFMT {
            libc::S_IFREG | libc::S_IFBLK => false,
            libc::S_IFSOCK => ty != Some(libc::SOCK_DGRAM),
            _ => true,
        };
        let datagram = socket && ty.is_some_and(|t| t != libc::SOCK_STREAM);
        let idx = match self.free_handles.pop() {
            Some(idx) => idx,
            None if (self.handles.len() as u32) < self.table_size => {
                self.handles.push(Handle {
                    generation: 0,
                    open: false,
                    raw: -1,
                    context: 0,
                    socket: false,
                    stream: false,
                    datagram: false,
                    ops: 0,
                    kernel: 0,
                    raw_ops: 0,
                    lanes: Default::default(),
                    waiters: VecDeque::new(),
                    data: VecDeque::new(),
                    accepted: VecDeque::new(),
                    armed: None,
                    starved: false,
                    eof: false,
                });
                self.handles.len() as u32 - 1
            }
            None => {
                return Err(io::Error::new(
                    io::ErrorKind::OutOfMemory,
                    format!(
                        "the local port's fixed-file table is full ({} handles)",
                        self.table_size
                    ),
                ));
            }
        };
        if let Err(e) = self.ring.submitter().register_files_update(idx, &[raw]) {
            self.free_handles.push(idx);
            return Err(e);
        }
        let h = &mut self.handles[idx as usize];
        h.generation = if h.generation == u16::MAX {
            1
        } else {
            h.generation + 1
        };
        h.open = true;
        h.raw = raw;
        h.context = context;
        h.socket = socket;
        h.stream = stream;
        h.datagram = datagram;
        h.starved = false;
        h.eof = false;
        h.armed = None;
        Ok((u32::from(h.generation) << 16) | idx)
    }

    /// Frees handle `idx`'s slot once it is closed and no operation names it.
    fn maybe_free_handle(&mut self, idx: u32) {
        let h = &self.handles[idx as usize];
        if !h.open && h.ops == 0 && h.raw >= 0 {
            self.handles[idx as usize].raw = -1;
            self.free_handles.push(idx);
        }
    }

    fn close(&mut self, key: u32) {
        let Some(idx) = self.handle_of(key) else {
            return;
        };
        let h = &mut self.handles[idx as usize];
        h.open = false;
        let waiters = std::mem::take(&mut h.waiters);
        let lanes: Vec<u32> = h
            .lanes
            .iter_mut()
            .flat_map(|l| std::mem::take(&mut l.waiting))
            .collect();
        h.data.clear();
        h.accepted.clear();
        h.starved = false;
        let (kernel, raw_ops, raw) = (h.kernel, h.raw_ops, h.raw);
        for w in waiters {
            self.deliver(w, Err(cancelled()), Output::None, None);
        }
        for w in lanes {
            self.deliver_unstarted(w, cancelled());
        }
        if kernel > 0 {
            // Cancel what is in flight on the slot (and, for records, the descriptor), and
            // have the kernel take it now: the owner closes the descriptor next.
            let fixed = opcode::AsyncCancel2::new(CancelBuilder::fd(Fixed(idx)).all())
                .build()
                .user_data(0);
            self.push(&fixed);
            if raw_ops > 0 {
                let by_fd = opcode::AsyncCancel2::new(CancelBuilder::fd(Fd(raw)).all())
                    .build()
                    .user_data(0);
                self.push(&by_fd);
            }
            if let Err(e) = self.enter(false, None) {
                tracing::warn!(error = %e, "submitting the cancels of a closing handle");
            }
        }
        // Clear the slot: the connection closes with the owner's descriptor.
        if let Err(e) = self.ring.submitter().register_files_update(idx, &[-1]) {
            tracing::warn!(error = %e, "clearing a fixed-file slot");
        }
        self.maybe_free_handle(idx);
    }

    // ---- operations ----

    fn refuse(&mut self, context: usize, user: usize, op: LocalOp, error: io::Error) -> OpId {
        let id = OpId::next();
        let kind = kind_of(&op);
        let (output, pooled) = match op {
            LocalOp::Recv(b)
            | LocalOp::Send(b)
            | LocalOp::RecvFrom(b)
            | LocalOp::SendTo(b, _)
            | LocalOp::ReadAt(b, _)
            | LocalOp::WriteAt(b, _) => (Output::Buffer(b), None),
            LocalOp::RecvVectored(b) | LocalOp::SendVectored(b) => (Output::Buffers(b), None),
            LocalOp::SendPooled(b) => (Output::None, Some(b)),
            LocalOp::Readable | LocalOp::RecvPooled | LocalOp::Accept | LocalOp::Connect(_) => {
                (Output::None, None)
            }
        };
        let c = completion(context, user, id, kind, Err(error), output);
        self.ready.push_back(LocalCompletion::new(c, pooled));
        id
    }

    fn start(
        &mut self,
        key: Option<u32>,
        context: usize,
        user: usize,
        deadline: Option<Instant>,
        op: LocalOp,
    ) -> OpId {
        let Some(key) = key else {
            return self.refuse(context, user, op, crate::error::other_port());
        };
        let Some(h) = self.handle_of(key) else {
            return self.refuse(context, user, op, closed_handle());
        };
        let handle = &self.handles[h as usize];
        let (socket, stream, datagram, raw) =
            (handle.socket, handle.stream, handle.datagram, handle.raw);
        let needs_socket = !matches!(op, LocalOp::ReadAt(..) | LocalOp::WriteAt(..));
        if needs_socket && !socket {
            return self.refuse(context, user, op, crate::error::needs_socket());
        }
        let pooled_pending =
            !handle.waiters.is_empty() || !handle.data.is_empty() || handle.armed.is_some();
        if matches!(
            op,
            LocalOp::Recv(_) | LocalOp::RecvVectored(_) | LocalOp::RecvFrom(_)
        ) && pooled_pending
        {
            return self.refuse(context, user, op, mixing());
        }
        let read_lane = &handle.lanes[Dir::Read as usize];
        if matches!(op, LocalOp::RecvPooled)
            && (read_lane.busy.is_some() || !read_lane.waiting.is_empty())
        {
            return self.refuse(context, user, op, mixing());
        }
        let kind = kind_of(&op);
        let body = match op {
            LocalOp::RecvPooled => return self.recv_pooled(h, user, deadline),
            LocalOp::Accept => return self.accept(h, user, deadline),
            LocalOp::Recv(buf) => {
                if buf.capacity() == buf.len() {
                    return self.refuse(
                        context,
                        user,
                        LocalOp::Recv(buf),
                        crate::error::no_spare_capacity(),
                    );
                }
                Body::Recv(buf)
            }
            LocalOp::Send(buf) => Body::Send { buf, done: 0 },
            LocalOp::SendPooled(buf) => {
                if !buf.is_from(&self.pool) {
                    return self.refuse(context, user, LocalOp::SendPooled(buf), foreign_buffer());
                }
                Body::SendPooled {
                    buf: Some(buf),
                    done: 0,
                }
            }
            LocalOp::Readable => Body::Nothing,
            rare => {
                let (offset, data) = match rare {
                    LocalOp::RecvVectored(bufs) => (0, op::vectored(bufs, true)),
                    LocalOp::SendVectored(bufs) => (0, op::vectored(bufs, false)),
                    LocalOp::RecvFrom(buf) => (0, op::datagram_recv(buf)),
                    LocalOp::SendTo(buf, to) => (0, op::datagram_send(buf, to)),
                    LocalOp::ReadAt(buf, offset) => (offset, OpData::Buffer { buf, done: 0 }),
                    LocalOp::WriteAt(buf, offset) => (offset, OpData::Buffer { buf, done: 0 }),
                    LocalOp::Connect(addr) => (
                        0,
                        OpData::Connect {
                            addr: Box::new(addr.into()),
                        },
                    ),
                    _ => unreachable!("handled above"),
                };
                let mut r = Record::new(OpId::next(), kind, context, raw, offset, data);
                r.user = user;
                r.datagram = datagram;
                if super::nothing_to_receive(&mut r) {
                    r.refused = Some(crate::error::no_spare_capacity());
                } else if r.datagram && super::too_many_buffers(&r) {
                    r.refused = Some(from_errno(libc::EMSGSIZE));
                }
                if r.refused.is_some() {
                    let c = op::complete(*r, Ok(0), 0);
                    let id = c.id;
                    self.ready.push_back(LocalCompletion::new(c, None));
                    return id;
                }
                Body::Record(r)
            }
        };
        let dir = if stream {
            match kind {
                OpKind::SendPooled => Some(Dir::Write),
                k => Dir::of(k),
            }
        } else {
            None
        };
        let mut op = self.new_op(kind, h, user, deadline, body);
        op.lane = dir;
        let idx = self.alloc(op);
        let ud = self.ud(idx);
        if let Body::Record(r) = &mut self.op(idx).body {
            r.id = OpId::from_u64(ud);
        }
        match dir {
            Some(d) => {
                let lane = &mut self.handles[h as usize].lanes[d as usize];
                if lane.busy.is_some() {
                    lane.waiting.push_back(idx);
                } else {
                    lane.busy = Some(idx);
                    self.issue(idx);
                }
            }
            None => self.issue(idx),
        }
        OpId::from_u64(ud)
    }

    fn timer(&mut self, user: usize, after: Duration) -> OpId {
        let op = self.new_op(OpKind::Timer, NO_HANDLE, user, None, Body::Nothing);
        let idx = self.alloc(op);
        let slot = &mut self.slots[idx as usize];
        let ts = slot.ts.get_or_insert_with(|| Box::new(Timespec::new()));
        **ts = Timespec::new()
            .sec(after.as_secs())
            .nsec(after.subsec_nanos());
        self.issue(idx);
        OpId::from_u64(self.ud(idx))
    }

    fn recv_pooled(&mut self, h: u32, user: usize, deadline: Option<Instant>) -> OpId {
        let handle = &mut self.handles[h as usize];
        let context = handle.context;
        if let Some(got) = handle.data.pop_front() {
            return self.ready_now(context, user, OpKind::RecvPooled, got);
        }
        if handle.eof {
            return self.ready_now(context, user, OpKind::RecvPooled, Got::Eof);
        }
        let op = self.new_op(OpKind::RecvPooled, h, user, deadline, Body::Waiter);
        let idx = self.alloc(op);
        self.handles[h as usize].waiters.push_back(idx);
        if let Some(at) = deadline {
            self.arm_waiter_deadline(idx, at);
        }
        let handle = &self.handles[h as usize];
        if handle.armed.is_none() && !handle.starved {
            self.arm(h, Body::MultiRecv, OpKind::RecvPooled);
        }
        OpId::from_u64(self.ud(idx))
    }

    fn accept(&mut self, h: u32, user: usize, deadline: Option<Instant>) -> OpId {
        let context = self.handles[h as usize].context;
        while let Some(fd) = self.handles[h as usize].accepted.pop_front() {
            if let Some(output) = accepted(fd) {
                let id = OpId::next();
                let c = completion(context, user, id, OpKind::Accept, Ok(0), output);
                self.ready.push_back(LocalCompletion::new(c, None));
                return id;
            }
        }
        let op = self.new_op(OpKind::Accept, h, user, deadline, Body::Waiter);
        let idx = self.alloc(op);
        self.handles[h as usize].waiters.push_back(idx);
        if let Some(at) = deadline {
            self.arm_waiter_deadline(idx, at);
        }
        if self.handles[h as usize].armed.is_none() {
            self.arm(h, Body::MultiAccept, OpKind::Accept);
        }
        OpId::from_u64(self.ud(idx))
    }

    /// Starts handle `h`'s multishot receive or accept.
    fn arm(&mut self, h: u32, body: Body, kind: OpKind) {
        if self.closing {
            return;
        }
        let mut op = self.new_op(kind, h, 0, None, body);
        op.live = None;
        let idx = self.alloc(op);
        self.handles[h as usize].armed = Some(idx);
        self.issue(idx);
    }

    /// A completion made at once from what a handle had queued.
    fn ready_now(&mut self, context: usize, user: usize, kind: OpKind, got: Got) -> OpId {
        let id = OpId::next();
        let (result, pooled) = match got {
            Got::Data(buf) => (Ok(buf.len()), Some(buf)),
            Got::Eof => (Ok(0), None),
            Got::Error(e) => (Err(e), None),
        };
        let c = completion(context, user, id, kind, result, Output::None);
        self.ready.push_back(LocalCompletion::new(c, pooled));
        id
    }

    fn cancel(&mut self, id: OpId) -> io::Result<()> {
        let ud = id.as_u64();
        let not_found = || io::Error::new(io::ErrorKind::NotFound, "operation not in flight");
        if ud & TAG_TIMER != 0 {
            return Err(not_found());
        }
        let idx = ud as u32;
        let generation = (ud >> 32) as u32;
        let Some(slot) = self.slots.get_mut(idx as usize) else {
            return Err(not_found());
        };
        let Some(op) = slot.op.as_mut().filter(|_| slot.generation == generation) else {
            return Err(not_found());
        };
        if op.finished || op.live.is_none() {
            return Err(not_found());
        }
        if op.in_kernel {
            if !op.cancelled {
                op.cancelled = true;
                let sqe = opcode::AsyncCancel::new(ud).build().user_data(0);
                self.push(&sqe);
            }
            return Ok(());
        }
        let (h, lane, waiter) = (op.handle, op.lane, matches!(op.body, Body::Waiter));
        let handle = &mut self.handles[h as usize];
        if waiter {
            handle.waiters.retain(|&w| w != idx);
            self.deliver(idx, Err(cancelled()), Output::None, None);
        } else if let Some(d) = lane {
            handle.lanes[d as usize].waiting.retain(|&w| w != idx);
            self.deliver_unstarted(idx, cancelled());
        }
        Ok(())
    }

    fn cancel_all(&mut self, key: u32) {
        let Some(h) = self.handle_of(key) else { return };
        let handle = &mut self.handles[h as usize];
        let waiters = std::mem::take(&mut handle.waiters);
        let lanes: Vec<u32> = handle
            .lanes
            .iter_mut()
            .flat_map(|l| std::mem::take(&mut l.waiting))
            .collect();
        let (kernel, raw_ops, raw) = (handle.kernel, handle.raw_ops, handle.raw);
        for w in waiters {
            self.deliver(w, Err(cancelled()), Output::None, None);
        }
        for w in lanes {
            self.deliver_unstarted(w, cancelled());
        }
        if kernel == 0 {
            return;
        }
        for slot in &mut self.slots {
            if let Some(op) = slot.op.as_mut()
                && op.handle == h
                && op.in_kernel
            {
                op.cancelled = true;
            }
        }
        let fixed = opcode::AsyncCancel2::new(CancelBuilder::fd(Fixed(h)).all())
            .build()
            .user_data(0);
        self.push(&fixed);
        if raw_ops > 0 {
            let by_fd = opcode::AsyncCancel2::new(CancelBuilder::fd(Fd(raw)).all())
                .build()
                .user_data(0);
            self.push(&by_fd);
        }
    }

    // ---- completions ----

    /// Gives the buffers that came back to the kernel, and re-arms the handles that waited
    /// for them.
    fn replenish(&mut self) {
        self.pool.drain_free(&mut self.returned);
        if self.returned.is_empty() {
            return;
        }
        let (size, pool) = (self.pool.size(), self.pool.clone());
        for bid in self.returned.drain(..) {
            self.bufs.add(bid, pool.addr(bid), size);
        }
        self.bufs.commit();
        let starved = std::mem::take(&mut self.starved);
        for h in starved {
            let handle = &mut self.handles[h as usize];
            if !handle.open || !handle.starved {
                continue;
            }
            handle.starved = false;
            if handle.armed.is_none() && !handle.waiters.is_empty() {
                self.arm(h, Body::MultiRecv, OpKind::RecvPooled);
            }
        }
    }

    /// Reaps every CQE there is.
    fn reap(&mut self) {
        let mut batch = [(0u64, 0i32, 0u32); 32];
        loop {
            let n = {
                let mut cq = self.ring.completion();
                let mut n = 0;
                while n < batch.len() {
                    let Some(cqe) = cq.next() else { break };
                    batch[n] = (cqe.user_data(), cqe.result(), cqe.flags());
                    n += 1;
                }
                n
            };
            for &(ud, res, flags) in &batch[..n] {
                self.on_cqe(ud, res, flags);
            }
            if n < batch.len() {
                return;
            }
        }
    }

    fn on_cqe(&mut self, ud: u64, res: i32, flags: u32) {
        if ud == 0 {
            return; // the engine's own cancels
        }
        let idx = ud as u32;
        let generation = ((ud & !TAG_TIMER) >> 32) as u32;
        let live = self
            .slots
            .get(idx as usize)
            .is_some_and(|s| s.generation == generation && s.op.is_some());
        if !live {
            debug_assert!(false, "a CQE for no operation: {ud:#x}");
            return;
        }
        if ud & TAG_TIMER != 0 {
            self.on_timeout(idx, res);
            return;
        }
        let kind = self.op(idx).kind;
        match self.op(idx).body {
            Body::MultiRecv => self.on_multi_recv(idx, res, flags),
            Body::MultiAccept => self.on_multi_accept(idx, res, flags),
            _ if kind == OpKind::Timer => {
                self.ended(idx);
                let result = match -res {
                    libc::ECANCELED => Err(cancelled()),
                    _ => Ok(0), // ETIME: the time passed
                };
                self.deliver(idx, result, Output::None, None);
            }
            _ => self.on_op(idx, res),
        }
    }

    /// The operation's SQE gave its last CQE.
    fn ended(&mut self, idx: u32) {
        let op = self.op(idx);
        op.in_kernel = false;
        op.cqes -= 1;
        let (h, record) = (op.handle, matches!(op.body, Body::Record(_)));
        if h != NO_HANDLE {
            let handle = &mut self.handles[h as usize];
            handle.kernel -= 1;
            if record {
                handle.raw_ops -= 1;
            }
        }
    }

    /// A deadline's or a waiter's timeout ended.
    fn on_timeout(&mut self, idx: u32, res: i32) {
        let op = self.op(idx);
        op.cqes -= 1;
        if matches!(op.body, Body::Waiter) && op.timer {
            op.timer = false;
            if res == -libc::ETIME && !op.finished {
                let h = op.handle;
                self.handles[h as usize].waiters.retain(|&w| w != idx);
                self.deliver(idx, Err(deadline_passed()), Output::None, None);
                return;
            }
        }
        // A link timeout: the operation's own CQE says what happened.
        self.maybe_release(idx);
    }

    /// The error of operation `idx` for `errno`.
    fn error(&self, idx: u32, errno: i32) -> io::Error {
        let op = self.slots[idx as usize].op.as_ref().expect("live");
        let open = op.handle == NO_HANDLE || self.handles[op.handle as usize].open;
        if errno == libc::ECANCELED && !op.cancelled && open && op.deadline.is_some() {
            deadline_passed()
        } else {
            from_errno(errno)
        }
    }

    /// A CQE of a single-shot operation (receive, send, readiness, record).
    fn on_op(&mut self, idx: u32, res: i32) {
        self.ended(idx);
        let closing = self.closing;
        let op = self.op(idx);
        // What the kernel moved always counts, even for an operation cancelled meanwhile.
        let n = res.max(0) as usize;
        let more = n > 0
            && match &mut op.body {
                Body::Send { buf, done } => {
                    *done += n;
                    *done < buf.len()
                }
                Body::SendPooled { buf, done } => {
                    *done += n;
                    *done < buf.as_ref().map_or(0, |b| b.len())
                }
                Body::Record(r) => record_goes_on(r, n),
                _ => false,
            };
        let (h, cancelled_op, deadline) = (op.handle, op.cancelled, op.deadline);
        let handle_open = h == NO_HANDLE || self.handles[h as usize].open;
        if more {
            let result = if cancelled_op || closing || !handle_open {
                Err(cancelled())
            } else if deadline.is_some_and(|at| Instant::now() >= at) {
                Err(deadline_passed())
            } else {
                self.issue(idx);
                return;
            };
            self.finish_op(idx, result);
            return;
        }
        let result = if res >= 0 {
            Ok(res as usize)
        } else {
            Err(self.error(idx, -res))
        };
        self.finish_op(idx, result);
    }

    /// Completes single-shot operation `idx` with `result` and hands its lane on.
    fn finish_op(&mut self, idx: u32, result: io::Result<usize>) {
        let op = self.op(idx);
        let (h, lane) = (op.handle, op.lane);
        let body = std::mem::replace(&mut op.body, Body::Nothing);
        match body {
            Body::Recv(mut buf) => {
                if let Ok(n) = result {
                    // SAFETY: the kernel wrote `n` bytes at the start of the spare capacity.
                    unsafe { grow_by(&mut buf, n) };
                }
                self.deliver(idx, result, Output::Buffer(buf), None);
            }
            Body::Send { buf, done } => {
                let result = result.map(|_| done);
                self.deliver_sent(idx, result, done, Output::Buffer(buf), None);
            }
            Body::SendPooled { buf, done } => {
                let result = result.map(|_| done);
                self.deliver_sent(idx, result, done, Output::None, buf);
            }
            Body::Record(r) => {
                let c = op::complete(*r, result, 0);
                self.deliver_completion(idx, c);
            }
            _ => {
                let result = result.map(|_| 0);
                self.deliver(idx, result, Output::None, None);
            }
        }
        if let Some(d) = lane {
            self.hand_over(h, d, idx);
        }
    }

    /// Delivers a send's completion, with what it sent even if it failed.
    fn deliver_sent(
        &mut self,
        idx: u32,
        result: io::Result<usize>,
        done: usize,
        output: Output,
        pooled: Option<PooledBuf>,
    ) {
        let closing = self.closing;
        let failed = result.is_err();
        self.deliver(idx, result, output, pooled);
        if failed
            && !closing
            && let Some(last) = self.ready.back_mut()
        {
            last.bytes = done;
        }
    }

    /// Operation `idx`, which held lane `d` of handle `h`, ended: the next one starts.
    fn hand_over(&mut self, h: u32, d: Dir, idx: u32) {
        let lane = &mut self.handles[h as usize].lanes[d as usize];
        if lane.busy != Some(idx) {
            return;
        }
        lane.busy = lane.waiting.pop_front();
        if let Some(next) = lane.busy {
            self.issue(next);
        }
    }

    fn on_multi_recv(&mut self, idx: u32, res: i32, flags: u32) {
        let more = cqueue::more(flags);
        let h = self.op(idx).handle;
        if !more {
            self.ended(idx);
            self.op(idx).finished = true;
            let handle = &mut self.handles[h as usize];
            if handle.armed == Some(idx) {
                handle.armed = None;
            }
        }
        let open = self.handles[h as usize].open && !self.closing;
        if res > 0 {
            let bid = cqueue::buffer_select(flags).expect("a buffer-select receive's buffer");
            // SAFETY: the kernel gave buffer `bid` back with `res` bytes written: it is the
            // engine's, and goes to exactly one `PooledBuf`.
            let buf = unsafe { self.pool.hold(bid, res as usize) };
            if open {
                self.push_data(h, Got::Data(buf));
            }
        } else if res == 0 {
            if open {
                self.handles[h as usize].eof = true;
                self.push_data(h, Got::Eof);
            }
        } else {
            match -res {
                libc::ENOBUFS => {
                    self.enobufs += 1;
                    let handle = &mut self.handles[h as usize];
                    if open && !handle.starved {
                        handle.starved = true;
                        self.starved.push(h);
                    }
                }
                libc::ECANCELED => {}
                errno => {
                    if open {
                        self.push_data(h, Got::Error(from_errno(errno)));
                    }
                }
            }
        }
        if !more {
            let handle = &self.handles[h as usize];
            if open
                && handle.armed.is_none()
                && !handle.starved
                && !handle.eof
                && !handle.waiters.is_empty()
            {
                self.arm(h, Body::MultiRecv, OpKind::RecvPooled);
            }
            self.maybe_release(idx);
        }
    }

    /// Hands what the multishot receive brought to the oldest pooled receive, or queues it.
    fn push_data(&mut self, h: u32, got: Got) {
        let handle = &mut self.handles[h as usize];
        if matches!(got, Got::Eof) && !handle.waiters.is_empty() {
            // The end of the stream stays the end: every waiting pooled receive gets it.
            let waiters = std::mem::take(&mut handle.waiters);
            for w in waiters {
                self.deliver(w, Ok(0), Output::None, None);
            }
            return;
        }
        match handle.waiters.pop_front() {
            Some(w) => match got {
                Got::Data(buf) => self.deliver(w, Ok(buf.len()), Output::None, Some(buf)),
                Got::Eof => self.deliver(w, Ok(0), Output::None, None),
                Got::Error(e) => self.deliver(w, Err(e), Output::None, None),
            },
            None => handle.data.push_back(got),
        }
    }

    fn on_multi_accept(&mut self, idx: u32, res: i32, flags: u32) {
        let more = cqueue::more(flags);
        let h = self.op(idx).handle;
        if !more {
            self.ended(idx);
            self.op(idx).finished = true;
            let handle = &mut self.handles[h as usize];
            if handle.armed == Some(idx) {
                handle.armed = None;
            }
        }
        let open = self.handles[h as usize].open && !self.closing;
        if res >= 0 {
            // SAFETY: a successful accept's result is a new descriptor nothing else owns.
            let fd = unsafe { OwnedFd::from_raw_fd(res) };
            if open {
                match self.handles[h as usize].waiters.pop_front() {
                    Some(w) => match accepted(fd) {
                        Some(output) => self.deliver(w, Ok(0), output, None),
                        // The client went away: the waiter waits for the next one.
                        None => self.handles[h as usize].waiters.push_front(w),
                    },
                    None => self.handles[h as usize].accepted.push_back(fd),
                }
            }
        } else {
            let errno = -res;
            if open && errno != libc::ECANCELED && !op::is_client_reset(errno) {
                if let Some(w) = self.handles[h as usize].waiters.pop_front() {
                    self.deliver(w, Err(from_errno(errno)), Output::None, None);
                }
            }
        }
        if !more {
            if open
                && self.handles[h as usize].armed.is_none()
                && !self.handles[h as usize].waiters.is_empty()
            {
                self.arm(h, Body::MultiAccept, OpKind::Accept);
            }
            self.maybe_release(idx);
        }
    }
}

/// Advances a record by the `n` bytes its SQE moved; true if it goes on with the rest (a
/// vectored send, a write).
fn record_goes_on(r: &mut Record, n: usize) -> bool {
    match (r.kind, &mut r.data) {
        (OpKind::SendVectored, OpData::Buffers { bufs, .. }) => {
            r.progress += n;
            r.progress < bufs.iter().map(Vec::len).sum::<usize>()
        }
        (OpKind::Write, OpData::Buffer { buf, done }) => {
            *done += n;
            let more = *done < buf.len();
            if more && r.offset != u64::MAX {
                r.offset += n as u64;
            }
            more
        }
        _ => false,
    }
}
