//! The slab of operations: entries indexed by `user_data` (index and generation), and the
//! completions made from them.

use super::*;

impl State {
    pub(super) fn ud(&self, idx: u32) -> u64 {
        (u64::from(self.slots[idx as usize].generation) << 32) | u64::from(idx)
    }

    pub(super) fn op(&mut self, idx: u32) -> &mut Op {
        self.slots[idx as usize]
            .op
            .as_mut()
            .expect("a live slab entry")
    }

    /// Puts `op` in a free entry; returns its index.
    pub(super) fn alloc(&mut self, op: Op) -> u32 {
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
                    next: NONE,
                    op: Some(op),
                    ts: None,
                });
                self.slots.len() as u32 - 1
            }
        }
    }

    /// Frees entry `idx` if its operation finished and no CQE of it is to come.
    pub(super) fn maybe_release(&mut self, idx: u32) {
        let slot = &mut self.slots[idx as usize];
        let Some(op) = slot.op.as_ref() else { return };
        if !op.finished || op.cqes > 0 {
            return;
        }
        let handle = op.handle;
        // Dropped where it is (no move out of the slab).
        slot.op = None;
        slot.generation = if slot.generation >= 0x7fff_ffff {
            1
        } else {
            slot.generation + 1
        };
        self.free_slots.push(idx);
        self.live_slots -= 1;
        if handle != NO_HANDLE {
            self.handles[handle as usize].ops -= 1;
            self.maybe_free_handle(handle);
        }
    }

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
            let c = Completion::of(context, user, id, kind, result, output);
            self.ready.push_back(LocalCompletion::new(c, pooled));
        }
        self.maybe_release(idx);
    }

    /// Completes user operation `idx`, which never reached the kernel, with `error`, handing
    /// back what it owned.
    pub(super) fn deliver_unstarted(&mut self, idx: u32, error: io::Error) {
        let body = std::mem::replace(&mut self.op(idx).body, Body::Nothing);
        match body {
            Body::Recv(buf) | Body::Send { buf, .. } => {
                self.deliver(idx, Err(error), Output::Buffer(buf), None)
            }
            Body::SendPooled { buf, .. } => self.deliver(idx, Err(error), Output::None, buf),
            Body::Record(mut r) => {
                r.refused = Some(error);
                let c = op::complete(*r, Ok(0));
                self.deliver_completion(idx, c);
            }
            _ => self.deliver(idx, Err(error), Output::None, None),
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
