//! The engine of a [`LocalPort`](crate::LocalPort) over a shared port that its thread alone
//! uses: the epoll fallback, Windows, and io_uring where a ring of the port's own cannot be
//! built.
//!
//! Every operation but the pooled ones goes straight to the shared port. A pooled receive
//! waits for readiness with the port's `readable` (a zero-byte `WSARecv` on Windows, readiness
//! on epoll), then receives what is there, without waiting, into a pool buffer: an idle
//! connection pins no buffer. One readiness wait serves a handle's pooled receives in order; a
//! stale readiness (nothing there after all) waits again. A pooled send copies the buffer into
//! a recycled `Vec` for the shared port and keeps the pool buffer until the send completes.

use std::{
    cell::{Cell, RefCell},
    collections::{BTreeSet, HashMap, VecDeque},
    io,
    rc::Rc,
    time::{Duration, Instant},
};

use super::{LocalCompletion, LocalOp};
use crate::{
    Associate, Completion, Iocp, OpId, OpKind, PooledBuf,
    completion::Output,
    pool::Pool,
    sys::{self, RawIo, Target},
};

/// The shared-port engine.
pub(crate) struct Shared {
    port: Iocp,
    pool: Rc<Pool>,
    slots: RefCell<Vec<Option<Slot>>>,
    free_keys: RefCell<Vec<u32>>,
    /// Operations of this engine inside the shared port, whose completions it turns into
    /// others (a readiness wait of a pooled receive, the copy a pooled send sends).
    internal: RefCell<HashMap<OpId, Internal>>,
    /// Pooled receives not yet completed, to their handle's key.
    pooled: RefCell<HashMap<OpId, u32>>,
    /// Completions made by this engine, delivered before the shared port's.
    ready: RefCell<VecDeque<LocalCompletion>>,
    /// `Vec`s pooled sends copied into, for the next.
    spare: RefCell<Vec<Vec<u8>>>,
    /// Handles whose data is there but whose pooled receive found the pool empty.
    starved: RefCell<VecDeque<u32>>,
    /// The shared port's completions, taken by `get_completions` and turned: kept between
    /// calls, so that a call allocates nothing.
    batch: RefCell<Vec<Completion>>,
    /// Pooled receives in flight (the shared port counts the rest).
    waiting: Cell<usize>,
    /// The deadlines of pooled receives in flight, soonest first: each receive's own, kept
    /// here rather than on its handle's readiness wait (which serves the oldest receive, may
    /// outlive it, and does not run while the handle waits for a buffer).
    deadlines: RefCell<BTreeSet<(Instant, OpId)>>,
    /// Calls in a row that returned what was ready without asking the shared port (see
    /// [`POLL_EVERY`]).
    unpolled: Cell<u32>,
    /// Sends reported only if they fail still in the shared port (`Internal::Skipped`).
    unreported: Cell<usize>,
    /// Completions the shared port gave while a receive looked for a reset (`after_reset`):
    /// taking them recorded what they say of one; they are turned after the batch at hand, in
    /// the port's order, before the call returns.
    reaped: RefCell<VecDeque<Completion>>,
}

/// After this many calls in a row served from the engine's own ready queue, the next one also
/// takes what the shared port has (without waiting): a program whose every completion makes
/// another one ready here (a post to itself) would otherwise never see the port's.
const POLL_EVERY: u32 = 64;

/// A handle of the engine.
struct Slot {
    target: Target,
    raw: RawIo,
    context: usize,
    /// Pooled receives in submission order.
    waiters: VecDeque<Waiter>,
    /// The readiness wait in flight for them.
    armed: Option<OpId>,
    /// A socket another port owns (Windows `Foreign`): pooled receives are refused.
    foreign: bool,
    /// In `Shared::starved`.
    starved: bool,
    /// Its sends reported only if they fail still in the shared port.
    unreported: usize,
}

struct Waiter {
    id: OpId,
    user: usize,
    deadline: Option<Instant>,
    /// A multishot pooled receive: a message leaves it waiting, first in line.
    multishot: bool,
}

enum Internal {
    /// The readiness wait of the pooled receives of handle `key`.
    Readable(u32),
    /// A pooled send's buffer, handed back by its completion.
    SendPooled(PooledBuf),
    /// A send of handle `key` ([`ORPHAN`] once the handle closed) reported only if it fails
    /// (`LocalSubmit::skip_success`), with its pool buffer if it is a pooled send.
    Skipped {
        key: u32,
        /// Its bytes: a completion with all of them sent is dropped.
        len: usize,
        pooled: Option<PooledBuf>,
    },
}

/// The key of a skipped send whose handle closed: its key may name another handle already.
const ORPHAN: u32 = u32::MAX;

/// What the shared port is asked for when everything it has is to be taken at once.
#[cfg(target_os = "linux")]
const TURN_ALL: usize = 1 << 20;

/// Calls that take everything the shared port has (`Shared::after_reset`): one that finds
/// timers due returns them alone, the next the port's completions.
#[cfg(target_os = "linux")]
const REAP_ROUNDS: usize = 4;

use crate::error::{foreign_buffer, mixing};

impl Shared {
    pub(crate) fn new(pool: Rc<Pool>) -> io::Result<Shared> {
        Ok(Shared {
            port: Iocp::new()?,
            pool,
            slots: RefCell::new(Vec::new()),
            free_keys: RefCell::new(Vec::new()),
            internal: RefCell::new(HashMap::new()),
            pooled: RefCell::new(HashMap::new()),
            ready: RefCell::new(VecDeque::new()),
            spare: RefCell::new(Vec::new()),
            starved: RefCell::new(VecDeque::new()),
            batch: RefCell::new(Vec::new()),
            waiting: Cell::new(0),
            deadlines: RefCell::new(BTreeSet::new()),
            unpolled: Cell::new(0),
            unreported: Cell::new(0),
            reaped: RefCell::new(VecDeque::new()),
        })
    }

    pub(crate) fn backend(&self) -> &'static str {
        self.port.backend()
    }

    pub(crate) fn register(&self, raw: RawIo, foreign: bool, context: usize) -> io::Result<u32> {
        let target = self.port.sys().associate(raw, foreign, context)?;
        let slot = Slot {
            target,
            raw,
            context,
            waiters: VecDeque::new(),
            armed: None,
            foreign,
            starved: false,
            unreported: 0,
        };
        let mut slots = self.slots.borrow_mut();
        match self.free_keys.borrow_mut().pop() {
            Some(key) => {
                slots[key as usize] = Some(slot);
                Ok(key)
            }
            None => {
                slots.push(Some(slot));
                Ok(slots.len() as u32 - 1)
            }
        }
    }

    /// Cancels everything in flight on handle `key`, forgets it, and closes `io`, its object
    /// (on Windows once the port took back the cancelled operations: `Target::close`).
    pub(crate) fn close<T: Associate>(&self, key: u32, io: T) {
        let Some(slot) = self.slots.borrow_mut()[key as usize].take() else {
            return;
        };
        self.free_keys.borrow_mut().push(key);
        if slot.unreported > 0 {
            // Their completions still come (cancelled below): they count on no handle now.
            for entry in self.internal.borrow_mut().values_mut() {
                if let Internal::Skipped { key: k, .. } = entry
                    && *k == key
                {
                    *k = ORPHAN;
                }
            }
        }
        for w in &slot.waiters {
            self.pooled.borrow_mut().remove(&w.id);
            self.complete_waiter(&slot, w, Err(cancelled()), None);
        }
        // The readiness wait ends cancelled by the close below; its completion finds no slot
        // (or a new handle's, told apart by the `internal` entry's id) and is dropped.
        slot.target.close(io);
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
        let Some(key) = key else {
            return self.refuse(context, user, op, crate::error::other_port());
        };
        if skip {
            return self.start_skipped(key, context, user, deadline, op);
        }
        if matches!(op, LocalOp::RecvPooled | LocalOp::RecvMultishot) {
            let multishot = matches!(op, LocalOp::RecvMultishot);
            return self.recv_pooled(key, user, deadline, multishot);
        }
        let mixes = matches!(
            op,
            LocalOp::Recv(_) | LocalOp::RecvVectored(_) | LocalOp::RecvFrom(_)
        ) && self.with_slot(key, |s| !s.waiters.is_empty());
        if mixes {
            return self.refuse(context, user, op, mixing());
        }
        if let LocalOp::SendPooled(buf) = op {
            if !buf.is_from(&self.pool) {
                return self.refuse(context, user, LocalOp::SendPooled(buf), foreign_buffer());
            }
            let id = self.send_copy(key, user, &buf);
            self.internal
                .borrow_mut()
                .insert(id, Internal::SendPooled(buf));
            return self.arm_deadline(id, deadline);
        }
        let id = self.with_target(key, |port, t| match op {
            LocalOp::Recv(buf) => port.recv(t, user, buf),
            LocalOp::RecvVectored(bufs) => port.recv_vectored(t, user, bufs),
            LocalOp::Readable => port.readable(t, user),
            LocalOp::Send(buf) => port.send(t, user, buf),
            LocalOp::SendVectored(bufs) => port.send_vectored(t, user, bufs),
            LocalOp::RecvFrom(buf) => port.recv_from(t, user, buf),
            LocalOp::SendTo(buf, addr) => port.send_to(t, user, buf, addr),
            LocalOp::ReadAt(buf, offset) => port.read_at(t, user, buf, offset),
            LocalOp::WriteAt(buf, offset) => port.write_at(t, user, buf, offset),
            LocalOp::Accept => port.accept(t, user),
            LocalOp::Connect(addr) => port.connect(t, user, addr),
            LocalOp::RecvPooled | LocalOp::RecvMultishot | LocalOp::SendPooled(_) => {
                unreachable!("handled above")
            }
        });
        self.arm_deadline(id, deadline)
    }

    /// A send reported only if it fails: counted until the shared port gives its
    /// completion back, which `turn` drops if it sent every byte.
    fn start_skipped(
        &self,
        key: u32,
        context: usize,
        user: usize,
        deadline: Option<Instant>,
        op: LocalOp,
    ) -> OpId {
        let (id, len, pooled) = match op {
            LocalOp::SendPooled(buf) if buf.is_from(&self.pool) => {
                (self.send_copy(key, user, &buf), buf.len(), Some(buf))
            }
            LocalOp::SendPooled(buf) => {
                return self.refuse(context, user, LocalOp::SendPooled(buf), foreign_buffer());
            }
            LocalOp::Send(buf) => {
                let len = buf.len();
                (
                    self.with_target(key, |port, t| port.send(t, user, buf)),
                    len,
                    None,
                )
            }
            op => return self.refuse(context, user, op, crate::error::skip_needs_send()),
        };
        self.internal
            .borrow_mut()
            .insert(id, Internal::Skipped { key, len, pooled });
        self.unreported.set(self.unreported.get() + 1);
        self.with_slot(key, |s| s.unreported += 1);
        self.arm_deadline(id, deadline)
    }

    /// Sends a copy of pool buffer `buf` (in a recycled `Vec`) on handle `key`: the shared
    /// port's send of a pooled send.
    fn send_copy(&self, key: u32, user: usize, buf: &PooledBuf) -> OpId {
        let mut copy = self.spare.borrow_mut().pop().unwrap_or_default();
        copy.clear();
        copy.extend_from_slice(buf);
        self.with_target(key, |port, t| port.send(t, user, copy))
    }

    /// Sends reported only if they fail still in flight: on handle `key`, or all.
    pub(crate) fn unreported(&self, key: Option<u32>) -> usize {
        match key {
            None => self.unreported.get(),
            Some(key) => self.with_slot(key, |s| s.unreported),
        }
    }

    pub(crate) fn timer(&self, user: usize, after: Duration) -> OpId {
        self.port.start_timer(user, after)
    }

    pub(crate) fn post(&self, context: usize, value: usize) -> OpId {
        let id = OpId::next();
        self.ready.borrow_mut().push_back(LocalCompletion::new(
            Completion::of(context, 0, id, OpKind::Post, Ok(value), Output::None),
            None,
        ));
        id
    }

    pub(crate) fn cancel(&self, id: OpId) -> io::Result<()> {
        let key = self.pooled.borrow_mut().remove(&id);
        match key {
            Some(key) => {
                self.end_waiter(key, id, Err(cancelled()));
                Ok(())
            }
            None => self.port.cancel(id),
        }
    }

    pub(crate) fn cancel_all(&self, key: u32) -> io::Result<()> {
        let ids: Vec<OpId> = self.with_slot(key, |s| s.waiters.iter().map(|w| w.id).collect());
        for id in ids {
            let _ = self.cancel(id);
        }
        let slots = self.slots.borrow();
        match slots.get(key as usize).and_then(Option::as_ref) {
            Some(slot) => self.port.sys().cancel_all(&slot.target),
            None => Ok(()),
        }
    }

    pub(crate) fn in_flight(&self) -> usize {
        self.port.operations_in_flight() - self.readiness_waits()
            + self.waiting.get()
            + self.ready.borrow().len()
    }

    /// Readiness waits of this engine's own in the shared port (not the user's operations).
    fn readiness_waits(&self) -> usize {
        self.internal
            .borrow()
            .values()
            .filter(|i| matches!(i, Internal::Readable(_)))
            .count()
    }

    pub(crate) fn get_completions(
        &self,
        out: &mut Vec<LocalCompletion>,
        max: usize,
        timeout: Option<Duration>,
    ) -> io::Result<usize> {
        let until = timeout.and_then(|t| Instant::now().checked_add(t));
        // Out of its cell while in use: nothing below takes it again.
        let mut batch = self.batch.take();
        let got = self.complete_into(out, max, until, &mut batch);
        batch.clear();
        *self.batch.borrow_mut() = batch;
        got
    }

    /// `get_completions` with the batch to reuse, waiting until `until` (`None`: forever).
    fn complete_into(
        &self,
        out: &mut Vec<LocalCompletion>,
        max: usize,
        until: Option<Instant>,
        batch: &mut Vec<Completion>,
    ) -> io::Result<usize> {
        let mut asked = false;
        loop {
            self.feed_starved();
            self.turn_reaped();
            let soonest = self.expire();
            let mut n = 0;
            while n < max {
                let Some(c) = self.ready.borrow_mut().pop_front() else {
                    break;
                };
                out.push(c);
                n += 1;
            }
            if n > 0 {
                let unpolled = if asked { 0 } else { self.unpolled.get() + 1 };
                self.unpolled.set(unpolled);
                if unpolled >= POLL_EVERY {
                    self.unpolled.set(0);
                    // A look only: the `n` completions already in `out` are returned whatever
                    // it finds (an error here, returned, would drop them with the caller's
                    // batch; a port that fails says so again at the next wait).
                    let _ = self.look_at_port(batch, max);
                }
                return Ok(n);
            }
            // Nothing of ours is ready: wait in the shared port. A starved handle needs no
            // poll: a pool buffer comes back only on this thread (a `PooledBuf` is not `Send`),
            // when the user drops one (before the next call, whose first step feeds it) or when
            // a pooled send's completion is turned below (and the loop feeds it next).
            let wait = match (until, soonest) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let wait = wait.map(|at| at.saturating_duration_since(Instant::now()));
            asked = true;
            match self.take_from_port(batch, max, wait) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                    if until.is_some_and(|at| Instant::now() >= at) {
                        return Err(e);
                    }
                }
                Err(e) => return Err(e),
            }
            // What the port gave may all have been the engine's own (a readiness that found
            // nothing, again and again: Wine completes a zero-byte receive for urgent data
            // that a receive never takes): the caller's time still ends the wait.
            if self.ready.borrow().is_empty() && until.is_some_and(|at| Instant::now() >= at) {
                return Err(crate::error::timed_out());
            }
        }
    }

    /// Takes what the shared port has without waiting (the fairness look of `complete_into`).
    fn look_at_port(&self, batch: &mut Vec<Completion>, max: usize) -> io::Result<()> {
        // Test-only: the port's dequeue fails.
        crate::failpoint::failpoint!("local::look_at_port", |_| Err(io::Error::other(
            "failpoint local::look_at_port"
        )));
        self.take_from_port(batch, max, Some(Duration::ZERO))
    }

    /// Takes up to `max` completions from the shared port, waiting at most `wait`, and turns
    /// them into the engine's (the ready queue). A timed-out wait is the port's `TimedOut`.
    fn take_from_port(
        &self,
        batch: &mut Vec<Completion>,
        max: usize,
        wait: Option<Duration>,
    ) -> io::Result<()> {
        batch.clear();
        self.port.get_completions(batch, max, wait)?;
        for c in batch.drain(..) {
            self.turn(c);
        }
        self.turn_reaped();
        Ok(())
    }

    /// Turns what `after_reset` took from the shared port (and what turning it takes).
    fn turn_reaped(&self) {
        // Not `while let`: its borrow of `reaped` would last through `turn`, which may take
        // more into it (`turn` -> `readiness` -> `receive` -> `after_reset`).
        loop {
            let Some(c) = self.reaped.borrow_mut().pop_front() else {
                return;
            };
            self.turn(c);
        }
    }

    /// Ends the pooled receives whose deadline passed; when the next one is due.
    fn expire(&self) -> Option<Instant> {
        // No clock read without a deadline: this runs on every wait (on Windows each read
        // is a QueryPerformanceCounter call, counted by `cargo xtask calls`).
        if self.deadlines.borrow().is_empty() {
            return None;
        }
        let now = Instant::now();
        loop {
            let first = self.deadlines.borrow().first().copied();
            match first {
                Some((at, id)) if at <= now => {
                    self.deadlines.borrow_mut().remove(&(at, id));
                    let key = self.pooled.borrow_mut().remove(&id);
                    if let Some(key) = key {
                        self.end_waiter(key, id, Err(deadline()));
                    }
                }
                other => return other.map(|(at, _)| at),
            }
        }
    }

    /// Turns a completion of the shared port into the port's: user operations go through,
    /// the engine's own are finished here.
    fn turn(&self, mut c: Completion) {
        let internal = self.internal.borrow_mut().remove(&c.id);
        match internal {
            None => self
                .ready
                .borrow_mut()
                .push_back(LocalCompletion::new(c, None)),
            Some(Internal::SendPooled(buf)) => self.send_pooled_done(c, buf),
            Some(Internal::Readable(key)) => self.readiness(key, c),
            Some(Internal::Skipped { key, len, pooled }) => {
                self.unreported.set(self.unreported.get() - 1);
                if key != ORPHAN {
                    self.with_slot(key, |s| s.unreported -= 1);
                }
                if c.error.is_none() && c.bytes == len {
                    // Every byte sent: nothing to report (a pooled send's copy is kept).
                    if pooled.is_some()
                        && let Some(copy) = c.take_buffer()
                    {
                        self.spare.borrow_mut().push(copy);
                    }
                    return;
                }
                match pooled {
                    Some(buf) => self.send_pooled_done(c, buf),
                    None => self
                        .ready
                        .borrow_mut()
                        .push_back(LocalCompletion::new(c, None)),
                }
            }
        }
    }

    /// The completion `c` of the copy a pooled send sent: the pool buffer `buf` goes back to
    /// the user with it, the copy to the spares.
    fn send_pooled_done(&self, mut c: Completion, buf: PooledBuf) {
        if let Some(copy) = c.take_buffer() {
            self.spare.borrow_mut().push(copy);
        }
        c.kind = OpKind::SendPooled;
        self.ready
            .borrow_mut()
            .push_back(LocalCompletion::new(c, Some(buf)));
    }

    /// The readiness wait of handle `key` ended with `c`.
    fn readiness(&self, key: u32, c: Completion) {
        let current = self.with_slot_opt(key, |s| {
            if s.armed == Some(c.id) {
                s.armed = None;
                true
            } else {
                false
            }
        });
        if current != Some(true) {
            return; // the handle closed (or its key was reused) meanwhile
        }
        match c.result() {
            Ok(_) => self.receive(key),
            // Cancelled because its last receive was: nothing to do (re-armed if needed).
            Err(e) if crate::is_cancelled(&e) => self.rearm(key),
            Err(e) => {
                if let Some(id) = self.with_slot(key, |s| s.waiters.front().map(|w| w.id)) {
                    self.pooled.borrow_mut().remove(&id);
                    self.end_waiter(key, id, Err(e));
                }
                self.rearm(key);
            }
        }
    }

    /// Receives, without waiting, what handle `key` has, for its oldest pooled receive.
    fn receive(&self, key: u32) {
        let Some(raw) = self
            .with_slot_opt(key, |s| (!s.waiters.is_empty()).then_some(s.raw))
            .flatten()
        else {
            return;
        };
        let Some(index) = self.pool.pop_free() else {
            self.starve(key);
            return;
        };
        // SAFETY: buffer `index` came off the free list: this engine owns it, and the pool
        // holds `size` bytes there.
        let got = unsafe { sys::recv_now(raw, self.pool.addr(index), self.pool.size()) };
        #[cfg(target_os = "linux")]
        let got = self.after_reset(key, got);
        let id = self.with_slot(key, |s| s.waiters.front().map(|w| w.id));
        let Some(id) = id else {
            self.pool.put_free(index);
            return;
        };
        match got {
            Ok(0) => {
                self.pool.put_free(index);
                self.pooled.borrow_mut().remove(&id);
                self.end_waiter(key, id, Ok(0));
            }
            Ok(n) => {
                // SAFETY: `recv_now` wrote `n` bytes into buffer `index`, which this engine
                // owns and now hands to the `PooledBuf`.
                let buf = unsafe { self.pool.hold(index, n) };
                let multishot = self.with_slot(key, |s| {
                    let w = s.waiters.front().filter(|w| w.multishot)?;
                    Some((s.context, w.user))
                });
                match multishot {
                    // It goes on waiting, first in line.
                    Some((context, user)) => self.deliver_more(context, user, id, buf),
                    None => {
                        self.pooled.borrow_mut().remove(&id);
                        self.end_waiter_with(key, id, Ok(n), Some(buf));
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                // Test-only: counts the stale readinesses (a spin shows as thousands).
                crate::failpoint::failpoint!("local::stale_readiness");
                self.pool.put_free(index);
            }
            Err(e) => {
                self.pool.put_free(index);
                self.pooled.borrow_mut().remove(&id);
                self.end_waiter(key, id, Err(e));
            }
        }
        self.rearm(key);
    }

    /// Linux: `got`, what a receive of handle `key` got, through what the handle's operations
    /// know of the peer's reset (`Target::after_reset`): the end of the stream after another
    /// operation took the reset is the reset. The completion of the operation that took it may
    /// still wait in the shared port (io_uring reaps what a call asks for, and the readiness that
    /// led here came first; taking a completion from the port records its reset), so before an
    /// end of the stream is believed, everything the port has is taken, into `reaped`, turned
    /// after the batch at hand (`turn_reaped`): not here, inside a turn, which would put it
    /// before the rest of that batch.
    #[cfg(target_os = "linux")]
    fn after_reset(&self, key: u32, got: io::Result<usize>) -> io::Result<usize> {
        let reset = matches!(&got, Err(e) if e.kind() == io::ErrorKind::ConnectionReset);
        if !reset && !matches!(got, Ok(0)) {
            return got;
        }
        if !reset {
            // A call that finds timers due returns them alone: asked again, the port answers.
            for _ in 0..REAP_ROUNDS {
                let mut rest = Vec::new();
                let took = self
                    .port
                    .get_completions(&mut rest, TURN_ALL, Some(Duration::ZERO));
                let n = rest.len();
                self.reaped.borrow_mut().extend(rest);
                if took.is_err() || n == 0 {
                    break;
                }
            }
        }
        let mut got = Some(got);
        let seen = self.with_slot_opt(key, |s| {
            let got = got.take().expect("taken once");
            s.target.after_reset(OpKind::RecvPooled, got)
        });
        seen.unwrap_or_else(|| got.take().expect("not taken"))
    }

    /// Handle `key` has data but the pool is empty: it waits for a buffer.
    fn starve(&self, key: u32) {
        let newly = self
            .with_slot_opt(key, |s| !std::mem::replace(&mut s.starved, true))
            .unwrap_or(false);
        if newly {
            self.starved.borrow_mut().push_back(key);
        }
    }

    /// Gives buffers that came back to the handles waiting for one, oldest first.
    fn feed_starved(&self) {
        while self.pool.has_free() {
            let Some(key) = self.starved.borrow_mut().pop_front() else {
                return;
            };
            if self
                .with_slot_opt(key, |s| std::mem::replace(&mut s.starved, false))
                .unwrap_or(false)
            {
                self.receive(key);
            }
        }
    }

    fn recv_pooled(
        &self,
        key: u32,
        user: usize,
        deadline: Option<Instant>,
        multishot: bool,
    ) -> OpId {
        let id = OpId::next();
        let accepted = self.with_slot_opt(key, |s| {
            // A socket that keeps message boundaries: a datagram longer than a pool buffer
            // would be cut.
            if s.target.datagram {
                return Err((s.context, crate::error::pooled_needs_stream()));
            }
            if s.foreign {
                return Err((s.context, crate::error::pooled_on_foreign()));
            }
            s.waiters.push_back(Waiter {
                id,
                user,
                deadline,
                multishot,
            });
            Ok(())
        });
        let refusal = match accepted {
            Some(Ok(())) => None,
            Some(Err(refusal)) => Some(refusal),
            None => Some((0, cancelled())),
        };
        if let Some((context, error)) = refusal {
            self.ready.borrow_mut().push_back(refused(
                context,
                user,
                id,
                OpKind::RecvPooled,
                error,
                None,
            ));
            return id;
        }
        self.pooled.borrow_mut().insert(id, key);
        if let Some(at) = deadline {
            self.deadlines.borrow_mut().insert((at, id));
        }
        self.waiting.set(self.waiting.get() + 1);
        self.rearm(key);
        id
    }

    /// Starts a readiness wait for handle `key` if it has pooled receives and none runs.
    fn rearm(&self, key: u32) {
        let mut slots = self.slots.borrow_mut();
        let Some(slot) = slots.get_mut(key as usize).and_then(Option::as_mut) else {
            return;
        };
        if slot.armed.is_some() || slot.starved {
            return;
        }
        if slot.waiters.is_empty() {
            return;
        }
        let id = self.port.sys().readable(&slot.target, 0);
        slot.armed = Some(id);
        drop(slots);
        self.internal
            .borrow_mut()
            .insert(id, Internal::Readable(key));
    }

    /// Ends pooled receive `id` of handle `key` (already out of `pooled`) with `result`.
    fn end_waiter(&self, key: u32, id: OpId, result: io::Result<usize>) {
        self.end_waiter_with(key, id, result, None);
    }

    fn end_waiter_with(
        &self,
        key: u32,
        id: OpId,
        result: io::Result<usize>,
        buf: Option<PooledBuf>,
    ) {
        let (waiter, context, idle, armed) = {
            let mut slots = self.slots.borrow_mut();
            let Some(slot) = slots.get_mut(key as usize).and_then(Option::as_mut) else {
                return;
            };
            let Some(at) = slot.waiters.iter().position(|w| w.id == id) else {
                return;
            };
            let w = slot.waiters.remove(at).expect("present");
            (w, slot.context, slot.waiters.is_empty(), slot.armed)
        };
        self.deliver(context, &waiter, result, buf);
        // A wait for nobody: cancel it (its completion is dropped in `readiness`).
        if idle && let Some(armed) = armed {
            let _ = self.port.cancel(armed);
        }
    }

    /// Completes a waiter of a slot being closed (already out of the slab).
    fn complete_waiter(
        &self,
        slot: &Slot,
        w: &Waiter,
        result: io::Result<usize>,
        buf: Option<PooledBuf>,
    ) {
        self.deliver(slot.context, w, result, buf);
    }

    fn deliver(
        &self,
        context: usize,
        w: &Waiter,
        result: io::Result<usize>,
        buf: Option<PooledBuf>,
    ) {
        self.waiting.set(self.waiting.get() - 1);
        if let Some(at) = w.deadline {
            self.deadlines.borrow_mut().remove(&(at, w.id));
        }
        self.ready.borrow_mut().push_back(LocalCompletion::new(
            Completion::of(
                context,
                w.user,
                w.id,
                OpKind::RecvPooled,
                result,
                Output::None,
            ),
            buf,
        ));
    }

    /// A message for multishot pooled receive `id`, which goes on.
    fn deliver_more(&self, context: usize, user: usize, id: OpId, buf: PooledBuf) {
        let c = LocalCompletion::message(context, user, id, buf);
        self.ready.borrow_mut().push_back(c);
    }

    /// Completes, refused with `error`, an operation that never starts, handing back what it
    /// owned.
    fn refuse(&self, context: usize, user: usize, op: LocalOp, error: io::Error) -> OpId {
        let id = OpId::next();
        let kind = op.kind();
        let (output, pooled) = op.into_owned();
        let mut c = refused(context, user, id, kind, error, pooled);
        c.output = output;
        self.ready.borrow_mut().push_back(c);
        id
    }

    fn arm_deadline(&self, id: OpId, deadline: Option<Instant>) -> OpId {
        if let Some(at) = deadline {
            self.port.set_deadline(id, at);
        }
        id
    }

    fn with_target<R>(&self, key: u32, f: impl FnOnce(&sys::Port, &Target) -> R) -> R {
        let slots = self.slots.borrow();
        let slot = slots[key as usize].as_ref().expect("a live handle's key");
        f(self.port.sys(), &slot.target)
    }

    fn with_slot<R: Default>(&self, key: u32, f: impl FnOnce(&mut Slot) -> R) -> R {
        self.with_slot_opt(key, f).unwrap_or_default()
    }

    fn with_slot_opt<R>(&self, key: u32, f: impl FnOnce(&mut Slot) -> R) -> Option<R> {
        let mut slots = self.slots.borrow_mut();
        slots.get_mut(key as usize).and_then(Option::as_mut).map(f)
    }
}

/// The error of a pooled receive cancelled by `cancel`, `cancel_all` or its handle's drop.
fn cancelled() -> io::Error {
    #[cfg(windows)]
    let code = 995; // ERROR_OPERATION_ABORTED
    #[cfg(not(windows))]
    let code = 125; // ECANCELED
    crate::error::cancelled(code, None)
}

/// The error of a pooled receive whose deadline passed.
fn deadline() -> io::Error {
    #[cfg(windows)]
    let code = 995; // ERROR_OPERATION_ABORTED
    #[cfg(not(windows))]
    let code = 125; // ECANCELED
    crate::error::deadline(code, None)
}

fn refused(
    context: usize,
    user: usize,
    id: OpId,
    kind: OpKind,
    error: io::Error,
    pooled: Option<PooledBuf>,
) -> LocalCompletion {
    LocalCompletion::new(
        Completion::of(context, user, id, kind, Err(error), Output::None),
        pooled,
    )
}
