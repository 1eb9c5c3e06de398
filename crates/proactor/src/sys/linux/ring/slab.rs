//! The slab of operations: entries indexed by `user_data` (the operation's id: a sequence
//! number unique in the process above the entry's index), and the completions made from them.

use super::*;

impl State {
    /// The `user_data` of entry `idx`: its operation's id.
    #[inline]
    pub(super) fn ud(&self, idx: u32) -> u64 {
        OpId::new(self.slots[idx as usize].seq, idx).as_u64()
    }

    /// The entry `user_data` (or an id) names, if its operation is still there: the index in
    /// range and the entry's sequence number the one `ud` carries. Another port's id, or one
    /// whose operation is gone (the entry free or reused), names none.
    #[inline]
    pub(super) fn entry_of(&self, ud: u64) -> Option<u32> {
        let id = OpId::from_u64(ud & !TAG_TIMER);
        let slot = self.slots.get(id.index() as usize)?;
        (slot.op.is_some() && slot.seq == id.seq()).then_some(id.index())
    }

    #[inline]
    pub(super) fn op(&mut self, idx: u32) -> &mut Op {
        self.slots[idx as usize]
            .op
            .as_mut()
            .expect("a live slab entry")
    }

    /// Puts `op` in a free entry; returns its index, or gives `op` back when the slab is full:
    /// 2^24 operations in flight, as many as an id can name (see [`State::refuse_full`]).
    pub(super) fn alloc(&mut self, op: Op) -> Result<u32, Op> {
        match self.take_slot(op.handle, op.counted) {
            Some(idx) => {
                self.slots[idx as usize].op = Some(op);
                Ok(idx)
            }
            None => Err(op),
        }
    }

    /// A free entry for an operation on `handle` (counted as the user's if `counted`), with
    /// its new sequence number and no operation yet (the caller puts one in, which it builds
    /// in place); `None` when the slab is full.
    #[inline(always)]
    pub(super) fn take_slot(&mut self, handle: u32, counted: bool) -> Option<u32> {
        let full = self.free_slots.is_empty() && self.slots.len() >= 1 << crate::op::INDEX_BITS;
        // Test-only: the slab is full.
        #[cfg(feature = "failpoints")]
        let full = full
            || (|| {
                fail::fail_point!("ring::slab_full", |_| true);
                false
            })();
        if full {
            return None;
        }
        if handle != NO_HANDLE {
            self.handles[handle as usize].ops += 1;
        }
        if counted {
            self.user_ops += 1;
        }
        self.live_slots += 1;
        let seq = self.seq.take();
        match self.free_slots.pop() {
            Some(idx) => {
                self.slots[idx as usize].seq = seq;
                Some(idx)
            }
            None => {
                self.slots.push(Slot {
                    seq,
                    next: NONE,
                    op: None,
                    ts: None,
                });
                Some(self.slots.len() as u32 - 1)
            }
        }
    }

    /// Completes user operation `op`, which found the slab full, with an out-of-memory error
    /// at once, handing back what it owned; returns its id (one that names no entry).
    pub(super) fn refuse_full(&mut self, op: Op) -> OpId {
        let error = from_errno(libc::ENOMEM);
        let Op {
            kind,
            context,
            user,
            body,
            ..
        } = op;
        match hand_back(body) {
            Ok((output, pooled)) => {
                let id = OpId::next();
                let c = Completion::of(context, user, id, kind, Err(error), output);
                self.ready.push_back(LocalCompletion::new(c, pooled));
                id
            }
            Err(mut r) => {
                r.refused = Some(error);
                let c = op::complete(*r, Ok(0));
                let id = c.id;
                self.ready.push_back(LocalCompletion::new(c, None));
                id
            }
        }
    }

    /// Fails every pooled receive or accept waiting on handle `h` with an out-of-memory error:
    /// its multishot operation could not be started, the slab being full.
    pub(super) fn fail_waiters(&mut self, h: u32) {
        while let Some(w) = self.handles[h as usize].waiters.pop_front(&self.slots) {
            self.deliver(w, Err(from_errno(libc::ENOMEM)), Output::None, None);
        }
    }

    /// Frees entry `idx` if its operation finished and no CQE of it is to come.
    #[inline]
    pub(super) fn maybe_release(&mut self, idx: u32) {
        let slot = &mut self.slots[idx as usize];
        let Some(op) = slot.op.as_ref() else { return };
        if !op.finished || op.cqes > 0 {
            return;
        }
        let handle = op.handle;
        // Dropped where it is (no move out of the slab).
        slot.op = None;
        self.free_slots.push(idx);
        self.live_slots -= 1;
        if handle != NO_HANDLE {
            self.handles[handle as usize].ops -= 1;
            self.maybe_free_handle(handle);
        }
    }

    #[inline]
    pub(super) fn new_op(
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
        Op::new(kind, handle, context, user, deadline, body)
    }

    /// Makes the completion of user operation `idx` (which owns nothing more).
    pub(super) fn deliver(
        &mut self,
        idx: u32,
        result: io::Result<usize>,
        output: Output,
        pooled: Option<PooledBuf>,
    ) {
        let id = OpId::from_u64(self.ud(idx));
        let op = self.op(idx);
        op.finished = true;
        op.counted = false;
        let (context, user, kind, h) = (op.context, op.user, op.kind, op.handle);
        let timer = std::mem::take(&mut op.timer);
        // A send reported only if it fails that sent every byte (its buffer's length; an
        // empty one: nothing).
        let quiet = std::mem::take(&mut op.skip) && {
            let len = match (&output, &pooled) {
                (Output::Buffer(b), _) => b.len(),
                (_, Some(p)) => p.len(),
                _ => 0,
            };
            self.skipped_ended(h);
            matches!(result, Ok(n) if n == len)
        };
        self.user_ops -= 1;
        if timer {
            // The deadline's timeout is still in the kernel: remove it (its CQE frees the entry).
            let remove = opcode::TimeoutRemove::new(self.ud(idx) | TAG_TIMER)
                .build()
                .user_data(0);
            self.push(&remove);
        }
        if !self.closing && !quiet {
            let c = Completion::of(context, user, id, kind, result, output);
            self.ready.push_back(LocalCompletion::new(c, pooled));
        }
        self.maybe_release(idx);
    }

    /// Hands multishot pooled receive `idx` a message: a completion saying more follow; the
    /// operation goes on waiting (same entry, same id, same deadline).
    pub(super) fn deliver_more(&mut self, idx: u32, buf: PooledBuf) {
        let id = OpId::from_u64(self.ud(idx));
        let op = self.op(idx);
        debug_assert!(op.multishot && !op.finished);
        let c = LocalCompletion::message(op.context, op.user, id, buf);
        self.ready.push_back(c);
    }

    /// Completes user operation `idx`, which never reached the kernel, with `error`, handing
    /// back what it owned.
    pub(super) fn deliver_unstarted(&mut self, idx: u32, error: io::Error) {
        let body = std::mem::replace(&mut self.op(idx).body, Body::Nothing);
        match hand_back(body) {
            Ok((output, pooled)) => self.deliver(idx, Err(error), output, pooled),
            Err(mut r) => {
                self.records -= 1;
                r.refused = Some(error);
                let c = op::complete(*r, Ok(0));
                self.deliver_completion(idx, c);
            }
        }
    }

    /// Delivers a completion built from a record (with the operation's id and user value).
    pub(super) fn deliver_completion(&mut self, idx: u32, c: Completion) {
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
}

impl Op {
    /// A user's operation not started yet, in no lane.
    #[inline(always)]
    pub(super) fn new(
        kind: OpKind,
        handle: u32,
        context: usize,
        user: usize,
        deadline: Option<Instant>,
        body: Body,
    ) -> Op {
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
            counted: true,
            multishot: false,
            deferred: false,
            gathered: false,
            skip: false,
        }
    }
}

/// What an operation that never started hands back: its buffer (or pool buffer), or its
/// record, which makes its own completion.
fn hand_back(body: Body) -> Result<(Output, Option<PooledBuf>), Box<Record>> {
    match body {
        Body::Recv(buf) | Body::Send { buf, .. } => Ok((Output::Buffer(buf), None)),
        Body::SendPooled { buf, .. } => Ok((Output::None, buf)),
        Body::Record(r) => Err(r),
        _ => Ok((Output::None, None)),
    }
}
