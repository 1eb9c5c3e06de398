//! The submission queue: queuing SQEs (linked deadlines among them) and entering the ring.

use super::*;

impl State {
    #[inline]
    pub(super) fn sq_len(&mut self) -> usize {
        self.ring.submission().len()
    }

    #[inline]
    pub(super) fn cq_len(&mut self) -> usize {
        self.ring.completion().len()
    }

    pub(super) fn enter(&mut self, wait: bool, timeout: Option<Duration>) -> io::Result<()> {
        self.enter_coalesced(wait, timeout, 0)
    }

    /// [`State::enter`], and if `wait` and `min_wait_us` > 0, waiting for up to
    /// [`coalesce::BATCH`] completions until `min_wait_us` has passed, then returning what
    /// came, if anything (see `Enter::enter`).
    pub(super) fn enter_coalesced(
        &mut self,
        wait: bool,
        timeout: Option<Duration>,
        min_wait_us: u32,
    ) -> io::Result<()> {
        if !self.unsent.is_empty() {
            self.flush();
        }
        self.unentered = 0;
        let n = self.sq_len() as u32;
        self.enter.enter(n, wait, timeout, min_wait_us)
    }

    /// Queues `sqe` (submitting what is queued first if the queue is full).
    #[inline]
    pub(super) fn push(&mut self, sqe: &Entry) {
        // One look at the queue (its head, shared with the kernel) when there is room, which
        // is nearly always.
        // SAFETY: every pointer in the SQEs this engine builds names memory it keeps until
        // the operation's CQE (buffers, records, boxed timespecs, a gathered send's boxed
        // header and iovecs) or nothing.
        if unsafe { self.ring.submission().push(sqe) }.is_ok() {
            return;
        }
        self.room(1);
        // SAFETY: as above; there is room now.
        let pushed = unsafe { self.ring.submission().push(sqe) };
        debug_assert!(pushed.is_ok());
    }

    /// Queues `a` linked to `b`, in the same submission.
    pub(super) fn push_linked(&mut self, a: &Entry, b: &Entry) {
        self.room(2);
        // SAFETY: as in `push`; there is room for both.
        unsafe {
            let mut sq = self.ring.submission();
            let _ = sq.push(a);
            let _ = sq.push(b);
        }
    }

    /// Makes room for `n` SQEs.
    pub(super) fn room(&mut self, n: usize) {
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
    pub(super) fn issue(&mut self, idx: u32) {
        let ud = self.ud(idx);
        if std::mem::take(&mut self.op(idx).timer) {
            // It waited for its lane with a standalone deadline: a link timeout takes over.
            let remove = opcode::TimeoutRemove::new(ud | TAG_TIMER)
                .build()
                .user_data(0);
            self.push(&remove);
        }
        let recv_limit = self.recv_limit;
        let slot = &mut self.slots[idx as usize];
        let op = slot.op.as_mut().expect("a live slab entry");
        let fixed = Fixed(op.handle);
        let sqe = match &mut op.body {
            Body::Recv(buf) => {
                let spare = buf.spare_capacity_mut();
                let datagram = self.handles[op.handle as usize].datagram;
                opcode::Recv::new(fixed, spare.as_mut_ptr().cast(), clamp(spare.len()))
                    .flags(op::truncation_shows(datagram))
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
            // Without the kernel's byte limit, or once the peer hung up (`State::on_watch`):
            // one single-shot receive of one pool buffer per arming, armed again by
            // `on_multi_recv` while a pooled receive waits.
            Body::MultiRecv if recv_limit == 0 || self.handles[op.handle as usize].hup => {
                opcode::Recv::new(fixed, std::ptr::null_mut(), 0)
                    .buf_group(BGID)
                    .build()
                    .flags(Flags::BUFFER_SELECT)
            }
            Body::MultiRecv => recv_cap::limited(
                recv_cap::poll_first(opcode::RecvMulti::new(fixed, BGID).build()),
                recv_limit,
            ),
            Body::Watch => opcode::PollAdd::new(fixed, libc::POLLRDHUP as u32).build(),
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
            self.handles[handle as usize].kernel += 1;
            if is_record {
                self.cold[handle as usize].raw_ops += 1;
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

    /// Queues the `SEND` of deferred send `idx` (`gather.rs`): what [`State::issue`] does for
    /// a send with no deadline, without the general cases. A deferred send has none (see
    /// `Op::gathers`); one that had would take `issue`, which removes its waiting timer and
    /// links its timeout.
    pub(super) fn issue_send(&mut self, idx: u32) {
        let slot = &mut self.slots[idx as usize];
        let ud = OpId::new(slot.seq, idx).as_u64();
        let op = slot.op.as_mut().expect("a live slab entry");
        debug_assert!(
            op.deadline.is_none() && !op.timer,
            "a deferred send with a deadline"
        );
        if op.deadline.is_some() || op.timer {
            return self.issue(idx);
        }
        let rest: &[u8] = match &op.body {
            Body::Send { buf, done } => &buf[*done..],
            Body::SendPooled {
                buf: Some(buf),
                done,
            } => &buf[*done..],
            _ => unreachable!("a send"),
        };
        let sqe = opcode::Send::new(Fixed(op.handle), rest.as_ptr(), clamp(rest.len()))
            .flags(libc::MSG_NOSIGNAL)
            .build()
            .user_data(ud);
        op.in_kernel = true;
        op.cqes += 1;
        let h = op.handle;
        self.handles[h as usize].kernel += 1;
        self.push(&sqe);
    }

    /// Starts a standalone timeout for the deadline of waiter `idx`.
    pub(super) fn arm_waiter_deadline(&mut self, idx: u32, at: Instant) {
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
}
