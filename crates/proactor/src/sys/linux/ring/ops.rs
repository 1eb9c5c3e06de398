//! Starting operations (or refusing them at once) and cancelling them.

use super::*;

impl State {
    pub(super) fn refuse(
        &mut self,
        context: usize,
        user: usize,
        op: LocalOp,
        error: io::Error,
    ) -> OpId {
        let id = OpId::next();
        let kind = op.kind();
        let (output, pooled) = op.into_owned();
        let c = Completion::of(context, user, id, kind, Err(error), output);
        self.ready.push_back(LocalCompletion::new(c, pooled));
        id
    }

    /// Starts `op`; `skip`: reported only if it fails (a send of one buffer: see
    /// `Ring::start`).
    pub(super) fn start(
        &mut self,
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
        let Some(h) = self.handle_of(key) else {
            return self.refuse(context, user, op, closed_handle());
        };
        let handle = &self.handles[h as usize];
        let (socket, stream, datagram) = (handle.socket, handle.stream, handle.datagram);
        let needs_socket = !matches!(op, LocalOp::ReadAt(..) | LocalOp::WriteAt(..));
        if needs_socket && !socket {
            return self.refuse(context, user, op, crate::error::needs_socket());
        }
        if skip && !matches!(op, LocalOp::Send(_) | LocalOp::SendPooled(_)) {
            return self.refuse(context, user, op, crate::error::skip_needs_send());
        }
        let pooled_pending =
            handle.armed != NONE || handle.queued > 0 || !handle.waiters.is_empty();
        if matches!(
            op,
            LocalOp::Recv(_) | LocalOp::RecvVectored(_) | LocalOp::RecvFrom(_)
        ) && pooled_pending
        {
            return self.refuse(context, user, op, mixing());
        }
        let pooled = matches!(op, LocalOp::RecvPooled | LocalOp::RecvMultishot);
        if pooled && datagram {
            return self.refuse(context, user, op, crate::error::pooled_needs_stream());
        }
        if pooled && self.takes_bytes(h) {
            return self.refuse(context, user, op, mixing());
        }
        let kind = op.kind();
        let body = match op {
            LocalOp::RecvPooled => return self.recv_pooled(h, user, deadline),
            LocalOp::RecvMultishot => return self.recv_multishot(h, user, deadline),
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
                let raw = self.cold[h as usize].raw;
                let mut r = Record::new(OpId::next(), kind, context, raw, offset, data);
                r.user = user;
                r.datagram = datagram;
                if super::super::nothing_to_receive(&mut r) {
                    r.refused = Some(crate::error::no_spare_capacity());
                } else if matches!(kind, OpKind::Read | OpKind::Write)
                    && crate::error::refused_range(offset, super::super::range_len(&mut r))
                {
                    r.refused = Some(crate::error::offset_too_large());
                } else if r.datagram && super::super::too_many_buffers(&r) {
                    r.refused = Some(from_errno(libc::EMSGSIZE));
                }
                if r.refused.is_some() {
                    let c = op::complete(*r, Ok(0));
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
        let idx = match self.alloc(op) {
            Ok(idx) => idx,
            Err(op) => return self.refuse_full(op),
        };
        if skip {
            self.skipping(idx, h);
        }
        let ud = self.ud(idx);
        if let Body::Record(r) = &mut self.op(idx).body {
            r.id = OpId::from_u64(ud);
            // It counts itself in `live_operations()`: not published again (`publish_live`).
            self.records += 1;
        }
        match dir {
            Some(d) => {
                let handle = &mut self.handles[h as usize];
                let busy = &mut handle.busy[d as usize];
                if *busy != NONE {
                    handle.lanes[d as usize].push_back(&mut self.slots, idx);
                    // Its deadline runs while it waits for its turn too.
                    if let Some(at) = deadline {
                        self.arm_waiter_deadline(idx, at);
                    }
                } else {
                    *busy = idx;
                    self.begin(idx);
                }
            }
            None => self.issue(idx),
        }
        OpId::from_u64(ud)
    }

    /// A send or pooled send: the common one (bytes to send on an open stream handle whose
    /// write lane is idle, no deadline) takes the lane and waits for the next enter
    /// (`gather.rs`) without the general checks of [`State::start`], which takes the rest. What
    /// it does is what `start` does for it.
    pub(super) fn start_send(
        &mut self,
        key: Option<u32>,
        context: usize,
        user: usize,
        deadline: Option<Instant>,
        skip: bool,
        op: LocalOp,
    ) -> OpId {
        let lane_idle = |st: &State, h: u32| {
            let handle = &st.handles[h as usize];
            // A byte stream: not a socket that keeps message boundaries (see `begin`).
            handle.socket
                && handle.stream
                && !handle.datagram
                && handle.busy[Dir::Write as usize] == NONE
        };
        let h = match key.and_then(|k| self.handle_of(k)) {
            Some(h) if deadline.is_none() && !self.closing && lane_idle(self, h) => h,
            _ => return self.start(key, context, user, deadline, skip, op),
        };
        let (kind, body) = match op {
            LocalOp::SendPooled(buf) if !buf.is_empty() && buf.is_from(&self.pool) => (
                OpKind::SendPooled,
                Body::SendPooled {
                    buf: Some(buf),
                    done: 0,
                },
            ),
            LocalOp::Send(buf) if !buf.is_empty() => (OpKind::Send, Body::Send { buf, done: 0 }),
            op => return self.start(key, context, user, deadline, skip, op),
        };
        let Some(idx) = self.take_slot(h, true) else {
            let op = self.new_op(kind, h, user, None, body);
            return self.refuse_full(op);
        };
        let handle = &mut self.handles[h as usize];
        handle.busy[Dir::Write as usize] = idx;
        let context = handle.context;
        let slot = &mut self.slots[idx as usize];
        // Built in place, in its lane, deferred.
        let op = slot.op.insert(Op::new(kind, h, context, user, None, body));
        op.lane = Some(Dir::Write);
        op.deferred = true;
        let id = OpId::new(slot.seq, idx);
        if skip {
            self.skipping(idx, h);
        }
        self.unsent.push(h);
        id
    }

    /// Marks operation `idx` on handle `h` as reported only if it fails, counting it until
    /// it ends (`State::deliver`, `send_done`).
    #[inline]
    fn skipping(&mut self, idx: u32, h: u32) {
        self.op(idx).skip = true;
        self.unreported += 1;
        self.cold[h as usize].unreported += 1;
    }

    /// An operation of handle `h` reported only if it fails ended (`skipping`'s count out).
    #[inline]
    pub(super) fn skipped_ended(&mut self, h: u32) {
        self.unreported -= 1;
        self.cold[h as usize].unreported -= 1;
    }

    /// Whether a receive with a buffer of its own runs or waits on handle `h` (a pooled
    /// receive beside it would take bytes out of order; a readiness wait takes none).
    fn takes_bytes(&self, h: u32) -> bool {
        let handle = &self.handles[h as usize];
        let busy = handle.busy[Dir::Read as usize];
        if busy == NONE {
            // The common case (a pooled receive after a pooled receive): the lane is idle,
            // so nothing waits for it either.
            debug_assert!(handle.lanes[Dir::Read as usize].is_empty());
            return false;
        }
        let busy = Some(busy);
        let waiting = handle.lanes[Dir::Read as usize].iter(&self.slots);
        busy.into_iter().chain(waiting).any(|i| {
            self.slots[i as usize]
                .op
                .as_ref()
                .is_some_and(|op| op.kind != OpKind::Readable)
        })
    }

    pub(super) fn timer(&mut self, user: usize, after: Duration) -> OpId {
        let op = self.new_op(OpKind::Timer, NO_HANDLE, user, None, Body::Nothing);
        let idx = match self.alloc(op) {
            Ok(idx) => idx,
            Err(op) => return self.refuse_full(op),
        };
        let slot = &mut self.slots[idx as usize];
        let ts = slot.ts.get_or_insert_with(|| Box::new(Timespec::new()));
        **ts = Timespec::new()
            .sec(after.as_secs())
            .nsec(after.subsec_nanos());
        self.issue(idx);
        OpId::from_u64(self.ud(idx))
    }

    pub(super) fn recv_pooled(&mut self, h: u32, user: usize, deadline: Option<Instant>) -> OpId {
        let handle = &mut self.handles[h as usize];
        let context = handle.context;
        if handle.queued > 0 {
            handle.queued -= 1;
            let got = self.cold[h as usize].data.pop_front().expect("queued data");
            return self.ready_now(context, user, OpKind::RecvPooled, got);
        }
        if handle.eof {
            return self.ready_now(context, user, OpKind::RecvPooled, Got::Eof);
        }
        let idx = match self.wait_on(h, OpKind::RecvPooled, user, deadline) {
            Ok(idx) => idx,
            Err(refused) => return refused,
        };
        let handle = &self.handles[h as usize];
        if handle.armed == NONE && !handle.starved {
            self.arm(h, Body::MultiRecv, OpKind::RecvPooled);
        }
        OpId::from_u64(self.ud(idx))
    }

    /// A pooled receive that goes on: what the handle queued first (no receive waited for it,
    /// so this one is first in line), then each message the multishot receive brings.
    pub(super) fn recv_multishot(
        &mut self,
        h: u32,
        user: usize,
        deadline: Option<Instant>,
    ) -> OpId {
        let idx = match self.wait_on(h, OpKind::RecvPooled, user, deadline) {
            Ok(idx) => idx,
            Err(refused) => return refused,
        };
        self.op(idx).multishot = true;
        let id = OpId::from_u64(self.ud(idx));
        // How it ends at once, if what the handle queued (or the end of its stream) says so.
        let end = loop {
            let handle = &mut self.handles[h as usize];
            if handle.queued == 0 {
                break handle.eof.then_some(Ok(0));
            }
            handle.queued -= 1;
            match self.cold[h as usize].data.pop_front().expect("queued data") {
                Got::Data(buf) => self.deliver_more(idx, buf),
                Got::Eof => break Some(Ok(0)),
                Got::Error(e) => break Some(Err(e)),
            }
        };
        let handle = &mut self.handles[h as usize];
        match end {
            Some(end) => {
                handle.waiters.remove(&mut self.slots, idx);
                self.deliver(idx, end, Output::None, None);
            }
            None if handle.armed == NONE && !handle.starved => {
                self.arm(h, Body::MultiRecv, OpKind::RecvPooled);
            }
            None => {}
        }
        id
    }

    pub(super) fn accept(&mut self, h: u32, user: usize, deadline: Option<Instant>) -> OpId {
        let context = self.handles[h as usize].context;
        while let Some(fd) = self.cold[h as usize].accepted.pop_front() {
            if let Some(output) = super::multishot::accepted(fd) {
                let id = OpId::next();
                let c = Completion::of(context, user, id, OpKind::Accept, Ok(0), output);
                self.ready.push_back(LocalCompletion::new(c, None));
                return id;
            }
        }
        let idx = match self.wait_on(h, OpKind::Accept, user, deadline) {
            Ok(idx) => idx,
            Err(refused) => return refused,
        };
        if self.handles[h as usize].armed == NONE {
            self.arm(h, Body::MultiAccept, OpKind::Accept);
        }
        OpId::from_u64(self.ud(idx))
    }

    /// Queues a pooled receive or accept among handle `h`'s waiters, with its deadline; its
    /// entry, or the id of its refusal when the slab is full.
    fn wait_on(
        &mut self,
        h: u32,
        kind: OpKind,
        user: usize,
        deadline: Option<Instant>,
    ) -> Result<u32, OpId> {
        let op = self.new_op(kind, h, user, deadline, Body::Waiter);
        let idx = self.alloc(op).map_err(|op| self.refuse_full(op))?;
        self.handles[h as usize]
            .waiters
            .push_back(&mut self.slots, idx);
        if let Some(at) = deadline {
            self.arm_waiter_deadline(idx, at);
        }
        Ok(idx)
    }

    /// Starts handle `h`'s multishot receive or accept.
    pub(super) fn arm(&mut self, h: u32, body: Body, kind: OpKind) {
        if self.closing {
            return;
        }
        let receive = matches!(body, Body::MultiRecv);
        let mut op = self.new_op(kind, h, 0, None, body);
        op.counted = false;
        let Ok(idx) = self.alloc(op) else {
            self.fail_waiters(h);
            return;
        };
        self.handles[h as usize].armed = idx;
        self.issue(idx);
        let handle = &self.handles[h as usize];
        if receive && self.recv_limit > 0 && handle.stream && !handle.watched && !handle.hup {
            self.watch(h);
        }
    }

    /// Puts a hang-up watch on stream handle `h` (see [`State::on_watch`]). Without a slab
    /// entry to spare it goes without, and is tried again at the next arming.
    pub(super) fn watch(&mut self, h: u32) {
        let mut op = self.new_op(OpKind::Readable, h, 0, None, Body::Watch);
        op.counted = false;
        let Ok(idx) = self.alloc(op) else {
            return;
        };
        self.handles[h as usize].watched = true;
        self.issue(idx);
    }

    /// A completion made at once from what a handle had queued.
    pub(super) fn ready_now(
        &mut self,
        context: usize,
        user: usize,
        kind: OpKind,
        got: Got,
    ) -> OpId {
        let id = OpId::next();
        let (result, pooled) = match got {
            Got::Data(buf) => (Ok(buf.len()), Some(buf)),
            Got::Eof => (Ok(0), None),
            Got::Error(e) => (Err(e), None),
        };
        let c = Completion::of(context, user, id, kind, result, Output::None);
        self.ready.push_back(LocalCompletion::new(c, pooled));
        id
    }

    pub(super) fn cancel(&mut self, id: OpId) -> io::Result<()> {
        let ud = id.as_u64();
        let not_found = || io::Error::new(io::ErrorKind::NotFound, "operation not in flight");
        if ud & TAG_TIMER != 0 {
            return Err(not_found());
        }
        let Some(idx) = self.entry_of(ud) else {
            return Err(not_found());
        };
        let op = self.op(idx);
        if op.finished || !op.counted {
            return Err(not_found());
        }
        if op.deferred {
            let h = op.handle;
            self.undefer(h);
        }
        let op = self.op(idx);
        if op.in_kernel {
            if !op.cancelled {
                op.cancelled = true;
                // A gathered send's SQE carries its first member's `user_data`: the one
                // holding the lane.
                let (gathered, h) = (op.gathered, op.handle);
                let target = match gathered {
                    true => self.ud(self.handles[h as usize].busy[Dir::Write as usize]),
                    false => ud,
                };
                let sqe = opcode::AsyncCancel::new(target).build().user_data(0);
                self.push(&sqe);
            }
            return Ok(());
        }
        let (h, lane, waiter, kind) =
            (op.handle, op.lane, matches!(op.body, Body::Waiter), op.kind);
        let handle = &mut self.handles[h as usize];
        if waiter {
            handle.waiters.remove(&mut self.slots, idx);
            self.deliver(idx, Err(cancelled()), Output::None, None);
            self.waiter_left(h, kind);
        } else if let Some(d) = lane {
            handle.lanes[d as usize].remove(&mut self.slots, idx);
            self.deliver_unstarted(idx, cancelled());
        }
        Ok(())
    }

    pub(super) fn cancel_all(&mut self, key: u32) {
        let Some(h) = self.handle_of(key) else { return };
        self.undefer(h);
        self.cancel_waiting(h);
        if self.handles[h as usize].kernel == 0 {
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
        self.push_cancels(h);
        // Its multishot receive among them: stopped at once (`Ring::submit_stops`).
        self.stop_queued |= !self.deferred_taskrun;
    }

    /// Ends as cancelled every operation of handle `h` that waits in the engine, not in the
    /// kernel: its pooled receives and accepts, and the operations waiting for a lane.
    pub(super) fn cancel_waiting(&mut self, h: u32) {
        let handle = &mut self.handles[h as usize];
        let mut waiters = std::mem::replace(&mut handle.waiters, Fifo::EMPTY);
        let mut lanes = std::mem::replace(&mut handle.lanes, [Fifo::EMPTY; 2]);
        // Each entry's link is read before it is delivered (which may free it).
        while let Some(w) = waiters.pop_front(&self.slots) {
            self.deliver(w, Err(cancelled()), Output::None, None);
        }
        for lane in &mut lanes {
            while let Some(w) = lane.pop_front(&self.slots) {
                self.deliver_unstarted(w, cancelled());
            }
        }
    }

    /// A pooled receive of handle `h` stopped waiting (cancelled, or its deadline passed):
    /// if none is left, the handle's multishot receive stops too (`cancel_all` and a close
    /// cancel it with the rest). Left armed, it would go on taking pool buffers for nobody, up
    /// to `MAX_AHEAD` queued on the handle, and a program that stops receiving from peers that
    /// do not read (its sends to them pile up) would see its pool taken by what they sent,
    /// every other connection waiting for a buffer.
    pub(super) fn waiter_left(&mut self, h: u32, kind: OpKind) {
        if kind == OpKind::RecvPooled && self.handles[h as usize].waiters.is_empty() {
            self.pause_receiving(h);
        }
    }

    /// Queues the cancels of everything in the kernel on handle `h`: by its fixed slot, and by
    /// descriptor too when records (which name the raw descriptor) are among them; or, when a
    /// clone of the handle shares its file (either cancel matches the file, and would end the
    /// clone's operations too: `files.rs`), each of its operations by `user_data`.
    pub(super) fn push_cancels(&mut self, h: u32) {
        let (raw_ops, raw) = {
            let cold = &self.cold[h as usize];
            (cold.raw_ops, cold.raw)
        };
        if self.files.shared(raw) {
            let mine: Vec<u64> = (0..self.slots.len() as u32)
                .filter(|&i| {
                    self.slots[i as usize]
                        .op
                        .as_ref()
                        .is_some_and(|op| op.handle == h && op.in_kernel)
                })
                .map(|i| self.ud(i))
                .collect();
            for ud in mine {
                let one = opcode::AsyncCancel2::new(CancelBuilder::user_data(ud).all())
                    .build()
                    .user_data(0);
                self.push(&one);
            }
            return;
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
}
