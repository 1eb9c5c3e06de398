//! Reaping the completion queue: single-shot operations end (or go on with the rest of a
//! send), deadlines and timers fire, returned pool buffers go back to the kernel.

use super::*;

/// Buffers lent to the kernel at least, after each top-up (see `State::replenish`).
const MIN_WINDOW: u32 = 64;

/// Handles from which `reap` prefetches what each CQE leads to ([`State::warm`]). Below, the
/// handles and their slab entries (about 64 + 3 x 96 bytes a connection) stay in the first
/// cache levels, and the prefetching only adds work: about 100 instructions per echo at 100
/// connections, where it saves no miss (callgrind). From 1,000 connections up it saves about
/// 1.6 L1 misses per echo, which come in series otherwise.
const WARM_FROM: usize = 256;

impl State {
    /// Gives the buffers that came back to the kernel, and re-arms the handles that waited
    /// for them.
    pub(super) fn replenish(&mut self) {
        // The kernel takes buffers from the ring's head in order, so every buffer it holds
        // is cycled through: lending it the whole pool would touch every buffer in turn (a
        // cache and TLB miss per receive once the pool outgrows the cache). It is lent a
        // window instead, sized by what it picked since the last top-up (twice that, at least
        // `MIN_WINDOW`), and topped up from the free list's top: the buffers given back last,
        // still warm. A burst larger than the window ends a multishot receive with `ENOBUFS`,
        // which is re-armed below once buffers are back: nothing is lost.
        let target = (self.picked.saturating_mul(2).saturating_add(MIN_WINDOW))
            .min(u32::from(self.pool.count()));
        self.picked = 0;
        let (size, pool) = (self.pool.size(), self.pool.clone());
        let mut added = 0;
        while self.lent < target {
            let Some(bid) = pool.pop_free() else {
                break;
            };
            self.bufs.add(bid, pool.addr(bid), size);
            self.lent += 1;
            added += 1;
        }
        if added > 0 {
            self.bufs.commit();
        }
        // An `ENOBUFS` reaped after the top-up that refilled the ring (its receive was
        // submitted by another enter, before the top-up) finds the window already full: the
        // handle is re-armed whenever buffers are lent, not only when this top-up added some.
        if self.lent == 0 || self.starved.is_empty() {
            return;
        }
        let starved = std::mem::take(&mut self.starved);
        for h in starved {
            let handle = &mut self.handles[h as usize];
            if !handle.open || !handle.starved {
                continue;
            }
            handle.starved = false;
            if handle.armed == NONE && !handle.waiters.is_empty() {
                self.arm(h, Body::MultiRecv, OpKind::RecvPooled);
            }
        }
    }

    /// Reaps every CQE there is; returns how many.
    pub(super) fn reap(&mut self) -> u32 {
        let mut batch = [(0u64, 0i32, 0u32); 32];
        let mut reaped = 0;
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
            if self.handles.len() >= WARM_FROM {
                self.warm(&batch[..n]);
            }
            for &(ud, res, flags) in &batch[..n] {
                self.on_cqe(ud, res, flags);
            }
            reaped += n as u32;
            if n < batch.len() {
                return reaped;
            }
        }
    }

    /// With many connections, what a CQE leads to is cold in the cache: its slab entry, then
    /// for a multishot receive its handle, then the pooled receive waiting there. Each is found
    /// through the one before, so taken one CQE after the other the misses come in series. Asked
    /// for stage by stage over the whole batch, each stage's misses overlap (a hint only:
    /// entries are checked again when the CQEs are handled).
    fn warm(&self, batch: &[(u64, i32, u32)]) {
        // The entry's index is the id's low bits, below its sequence number.
        let index = |ud: u64| OpId::from_u64(ud & !TAG_TIMER).index() as usize;
        for &(ud, _, _) in batch {
            if let Some(slot) = self.slots.get(index(ud)) {
                prefetch(slot);
            }
        }
        let handle_of = |ud: u64| {
            let slot = self.slots.get(index(ud))?;
            let op = slot.op.as_ref()?;
            let multi = matches!(op.body, Body::MultiRecv);
            multi.then_some(op.handle as usize)
        };
        for &(ud, _, _) in batch {
            if let Some(handle) = handle_of(ud).and_then(|h| self.handles.get(h)) {
                prefetch(handle);
            }
        }
        for &(ud, _, _) in batch {
            let waiter = handle_of(ud)
                .and_then(|h| self.handles.get(h))
                .and_then(|h| h.waiters.front());
            if let Some(slot) = waiter.and_then(|w| self.slots.get(w as usize)) {
                prefetch(slot);
            }
        }
    }

    pub(super) fn on_cqe(&mut self, ud: u64, res: i32, flags: u32) {
        if ud == 0 {
            return; // the engine's own cancels
        }
        let Some(idx) = self.entry_of(ud) else {
            debug_assert!(false, "a CQE for no operation: {ud:#x}");
            return;
        };
        if ud & TAG_TIMER != 0 {
            self.on_timeout(idx, res);
            return;
        }
        // Test-only: the kernel ends a cancelled operation `EINTR` (see `error::from_errno`).
        #[cfg(feature = "failpoints")]
        let res = {
            fail::fail_point!("ring::cancel_as_eintr", res == -libc::ECANCELED, |_| {
                self.on_cqe(ud, -libc::EINTR, flags)
            });
            res
        };
        if res == -libc::ECONNRESET {
            // Linux says it once: the handle remembers it (`op::Reset`).
            let h = self.op(idx).handle;
            if h != NO_HANDLE {
                let datagram = self.handles[h as usize].datagram;
                self.cold[h as usize].reset.seen(datagram);
            }
        }
        let kind = self.op(idx).kind;
        if res > 0 && self.coalesce.on() {
            // What wait coalescing weighs its cost against: the bytes moved.
            let op = self.op(idx);
            if matches!(
                op.body,
                Body::MultiRecv
                    | Body::Recv(_)
                    | Body::Send { .. }
                    | Body::SendPooled { .. }
                    | Body::Record(_)
            ) {
                self.coalesce.moved(res as u32);
            }
        }
        match self.op(idx).body {
            Body::MultiRecv => self.on_multi_recv(idx, res, flags),
            Body::MultiAccept => self.on_multi_accept(idx, res, flags),
            Body::Watch => self.on_watch(idx, res),
            _ if kind == OpKind::Timer => {
                self.ended(idx);
                let result = match -res {
                    libc::ECANCELED | libc::EINTR => Err(cancelled()),
                    _ => Ok(0), // ETIME: the time passed
                };
                self.deliver(idx, result, Output::None, None);
            }
            _ => self.on_op(idx, res),
        }
    }

    /// The operation's SQE gave its last CQE.
    #[inline]
    pub(super) fn ended(&mut self, idx: u32) {
        let op = self.op(idx);
        op.in_kernel = false;
        op.cqes -= 1;
        let (h, record) = (op.handle, matches!(op.body, Body::Record(_)));
        if h != NO_HANDLE {
            self.handles[h as usize].kernel -= 1;
            if record {
                self.cold[h as usize].raw_ops -= 1;
            }
        }
    }

    /// A deadline's or a waiter's timeout ended.
    pub(super) fn on_timeout(&mut self, idx: u32, res: i32) {
        let op = self.op(idx);
        op.cqes -= 1;
        if op.timer {
            // The standalone deadline of a waiter, or of an operation waiting for its lane.
            op.timer = false;
            if res == -libc::ETIME && !op.finished {
                let (h, lane, kind) = (op.handle, op.lane, op.kind);
                if matches!(op.body, Body::Waiter) {
                    self.handles[h as usize]
                        .waiters
                        .remove(&mut self.slots, idx);
                    self.deliver(idx, Err(deadline_passed()), Output::None, None);
                    self.waiter_left(h, kind);
                } else if let Some(d) = lane {
                    self.handles[h as usize].lanes[d as usize].remove(&mut self.slots, idx);
                    self.deliver_unstarted(idx, deadline_passed());
                }
                return;
            }
        }
        // A link timeout: the operation's own CQE says what happened.
        self.maybe_release(idx);
    }

    /// `result` of an operation of `kind` on handle `h`, through what the handle knows of a
    /// reset: the end of the stream after one of its operations reported the peer's reset is
    /// the reset (`op::Reset`).
    pub(super) fn after_reset(
        &mut self,
        h: u32,
        kind: OpKind,
        result: io::Result<usize>,
    ) -> io::Result<usize> {
        match (self.handles.get(h as usize), self.cold.get_mut(h as usize)) {
            (Some(handle), Some(cold)) => cold.reset.after(kind, handle.datagram, result),
            _ => result,
        }
    }

    /// The error of operation `idx` for `errno`.
    pub(super) fn error(&self, idx: u32, errno: i32) -> io::Error {
        let op = self.slots[idx as usize].op.as_ref().expect("live");
        let open = op.handle == NO_HANDLE || self.handles[op.handle as usize].open;
        // `EINTR`: a cancel of an operation the kernel's workers ran (`error::from_errno`).
        let stopped = matches!(errno, libc::ECANCELED | libc::EINTR);
        if stopped && !op.cancelled && open && op.deadline.is_some() {
            deadline_passed()
        } else {
            from_errno(errno)
        }
    }

    /// A CQE of a single-shot operation (receive, send, readiness, record).
    pub(super) fn on_op(&mut self, idx: u32, res: i32) {
        if self.op(idx).gathered {
            return self.on_gathered(idx, res);
        }
        if self.send_done(idx, res) {
            return;
        }
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

    /// The common end of a send: its CQE sent the rest of its bytes, and no other CQE of it is
    /// to come (no waiting timer, no link timeout still in the kernel: `cqes` is this one). It
    /// completes, frees its entry and hands its lane on (if it has one: a connected datagram
    /// socket's sends have none), as the general path does, in one pass; false (nothing done)
    /// for any other CQE.
    #[inline]
    fn send_done(&mut self, idx: u32, res: i32) -> bool {
        let closing = self.closing;
        let slot = &mut self.slots[idx as usize];
        let Some(op) = slot.op.as_mut() else {
            return false;
        };
        if res <= 0 || closing || op.cqes != 1 || op.timer {
            return false;
        }
        let (len, done) = match &op.body {
            Body::Send { buf, done } => (buf.len(), *done),
            Body::SendPooled {
                buf: Some(buf),
                done,
            } => (buf.len(), *done),
            _ => return false,
        };
        let total = done + res as usize;
        if total < len {
            return false;
        }
        let id = OpId::new(slot.seq, idx);
        let op = slot.op.take().expect("checked above");
        let Op {
            kind,
            handle: h,
            context,
            user,
            body,
            lane,
            skip,
            ..
        } = op;
        let (output, pooled) = match body {
            Body::Send { buf, .. } => (Output::Buffer(buf), None),
            Body::SendPooled { buf, .. } => (Output::None, buf),
            _ => unreachable!("checked above"),
        };
        self.free_slots.push(idx);
        self.live_slots -= 1;
        self.user_ops -= 1;
        let handle = &mut self.handles[h as usize];
        handle.kernel -= 1;
        handle.ops -= 1;
        if skip {
            // Every byte sent: nothing to report. Its buffer is dropped here (a pool buffer
            // goes back to the pool).
            self.skipped_ended(h);
            drop((output, pooled));
        } else {
            let c = Completion::of(context, user, id, kind, Ok(total), output);
            self.ready.push_back(LocalCompletion::new(c, pooled));
        }
        if let Some(d) = lane {
            self.hand_over(h, d, idx);
        }
        self.maybe_free_handle(h);
        true
    }

    /// Completes single-shot operation `idx` with `result` and hands its lane on.
    pub(super) fn finish_op(&mut self, idx: u32, result: io::Result<usize>) {
        let op = self.op(idx);
        let (h, lane) = (op.handle, op.lane);
        self.complete_op(idx, result);
        if let Some(d) = lane {
            self.hand_over(h, d, idx);
        }
    }

    /// Completes single-shot operation `idx` with `result` (its lane is the caller's).
    #[inline]
    pub(super) fn complete_op(&mut self, idx: u32, result: io::Result<usize>) {
        let op = self.op(idx);
        let h = op.handle;
        let body = std::mem::replace(&mut op.body, Body::Nothing);
        match body {
            Body::Recv(mut buf) => {
                let result = self.after_reset(h, OpKind::Recv, result);
                let room = buf.capacity() - buf.len();
                let (result, got) = match result {
                    // A datagram's real length (the receive passes `MSG_TRUNC` on a socket that
                    // keeps message boundaries) past the room: cut to it, an error, as on the
                    // shared port, that keeps what arrived.
                    Ok(n) if n > room => (Err(op::datagram_truncated()), room),
                    Ok(n) => (Ok(n), n),
                    Err(e) => (Err(e), 0),
                };
                // SAFETY: the kernel wrote `got` bytes at the start of the spare capacity (the
                // datagram's real length cut to the room).
                unsafe { grow_by(&mut buf, got) };
                self.deliver_moved(idx, result, got, Output::Buffer(buf), None);
            }
            Body::Send { buf, done } => {
                let result = result.map(|_| done);
                self.deliver_moved(idx, result, done, Output::Buffer(buf), None);
            }
            Body::SendPooled { buf, done } => {
                let result = result.map(|_| done);
                self.deliver_moved(idx, result, done, Output::None, buf);
            }
            Body::Record(r) => {
                self.records -= 1;
                let result = self.after_reset(h, r.kind, result);
                let c = op::complete(*r, result);
                self.deliver_completion(idx, c);
            }
            _ => {
                let result = result.map(|_| 0);
                self.deliver(idx, result, Output::None, None);
            }
        }
    }

    /// Delivers a completion with the bytes it moved, `done`, even if it failed: what a send
    /// sent, what fitted of a datagram cut short.
    pub(super) fn deliver_moved(
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
    #[inline]
    pub(super) fn hand_over(&mut self, h: u32, d: Dir, idx: u32) {
        let handle = &mut self.handles[h as usize];
        if handle.busy[d as usize] != idx {
            return;
        }
        let next = handle.lanes[d as usize].pop_front(&self.slots);
        handle.busy[d as usize] = next.unwrap_or(NONE);
        if let Some(next) = next {
            self.begin(next);
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

/// Asks the CPU to bring the cache lines of `value` in (a hint: no effect on the program).
#[inline(always)]
fn prefetch<T>(value: &T) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        let start = (value as *const T).cast::<i8>();
        for offset in (0..std::mem::size_of::<T>()).step_by(64) {
            // SAFETY: a prefetch only hints the cache: it reads nothing and cannot fault. The
            // address is inside `value` (`wrapping_add` keeps it a plain computation anyway).
            unsafe { _mm_prefetch::<_MM_HINT_T0>(start.wrapping_add(offset)) };
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = value;
}
