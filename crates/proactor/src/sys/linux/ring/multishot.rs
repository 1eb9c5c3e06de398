//! What the multishot receives and accepts bring: handed to the oldest waiting pooled receive
//! or accept, or queued on the handle.

use super::*;

/// Buffers of data a handle may hold that no pooled receive asked for, before its multishot
/// receive is stopped (see `State::pause_receiving`).
const MAX_AHEAD: usize = 8;

impl State {
    /// A CQE of handle `h`'s multishot `idx`: its handle, and whether more CQEs follow (if not,
    /// the multishot ended and the handle is no longer armed).
    #[inline]
    fn multishot_cqe(&mut self, idx: u32, flags: u32) -> (u32, bool) {
        let more = cqueue::more(flags);
        let h = self.op(idx).handle;
        if !more {
            self.ended(idx);
            self.op(idx).finished = true;
            let handle = &mut self.handles[h as usize];
            if handle.armed == idx {
                handle.armed = NONE;
            }
        }
        (h, more)
    }

    pub(super) fn on_multi_recv(&mut self, idx: u32, res: i32, flags: u32) {
        let (h, more) = self.multishot_cqe(idx, flags);
        let open = self.handles[h as usize].open && !self.closing;
        let picked = cqueue::buffer_select(flags);
        if picked.is_some() {
            self.lent -= 1;
            self.picked += 1;
        }
        if res <= 0
            && let Some(bid) = picked
        {
            // A buffer picked for nothing (the kernel reports it consumed): back to the pool.
            self.pool.put_free(bid);
        }
        if res > 0 {
            let bid = picked.expect("a buffer-select receive's buffer");
            // SAFETY: the kernel gave buffer `bid` back with `res` bytes written: it is the
            // engine's, and goes to exactly one `PooledBuf`.
            let buf = unsafe { self.pool.hold(bid, res as usize) };
            if open {
                self.push_bytes(h, buf);
            }
        } else if res == 0 {
            if open {
                // The end of the stream after another operation took the peer's reset is the
                // reset (`op::Reset`), which ends this receive as a reported one would (the
                // next receive asks the kernel again).
                match self.after_reset(h, OpKind::RecvPooled, Ok(0)) {
                    Ok(_) => {
                        self.handles[h as usize].eof = true;
                        self.push_data(h, Got::Eof);
                    }
                    Err(e) => self.push_data(h, Got::Error(e)),
                }
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
                // `EINTR`: a cancel too (`error::from_errno`).
                libc::ECANCELED | libc::EINTR => {}
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
                && handle.armed == NONE
                && !handle.starved
                && !handle.eof
                && !handle.waiters.is_empty()
            {
                self.arm(h, Body::MultiRecv, OpKind::RecvPooled);
            }
            self.maybe_release(idx);
        }
    }

    /// Hands bytes the multishot receive brought to the oldest pooled receive, or queues them:
    /// [`State::push_data`], with the common case first (a multishot pooled receive waits:
    /// it takes them and goes on waiting).
    #[inline]
    fn push_bytes(&mut self, h: u32, buf: PooledBuf) {
        if let Some(w) = self.handles[h as usize].waiters.front() {
            let slot = &self.slots[w as usize];
            if let Some(op) = slot.op.as_ref()
                && op.multishot
            {
                debug_assert!(!op.finished);
                let id = OpId::new(slot.seq, w);
                let c = LocalCompletion::message(op.context, op.user, id, buf);
                self.ready.push_back(c);
                return;
            }
        }
        self.push_data(h, Got::Data(buf));
    }

    /// Hands what the multishot receive brought to the oldest pooled receive, or queues it.
    pub(super) fn push_data(&mut self, h: u32, got: Got) {
        let handle = &mut self.handles[h as usize];
        if matches!(got, Got::Eof) && !handle.waiters.is_empty() {
            // The end of the stream stays the end: every waiting pooled receive gets it.
            let mut waiters = std::mem::replace(&mut handle.waiters, Fifo::EMPTY);
            while let Some(w) = waiters.pop_front(&self.slots) {
                self.deliver(w, Ok(0), Output::None, None);
            }
            return;
        }
        if let Some(w) = handle.waiters.front()
            && self.slots[w as usize]
                .op
                .as_ref()
                .is_some_and(|op| op.multishot)
            && let Got::Data(buf) = got
        {
            // A multishot pooled receive takes it and goes on waiting, first in line.
            self.deliver_more(w, buf);
            return;
        }
        let handle = &mut self.handles[h as usize];
        match handle.waiters.pop_front(&self.slots) {
            Some(w) => match got {
                Got::Data(buf) => self.deliver(w, Ok(buf.len()), Output::None, Some(buf)),
                Got::Eof => self.deliver(w, Ok(0), Output::None, None),
                Got::Error(e) => self.deliver(w, Err(e), Output::None, None),
            },
            None => {
                self.cold[h as usize].data.push_back(got);
                let handle = &mut self.handles[h as usize];
                handle.queued += 1;
                if handle.queued as usize >= MAX_AHEAD {
                    self.pause_receiving(h);
                }
            }
        }
    }

    /// Stops the multishot receive of handle `h`, which has [`MAX_AHEAD`] buffers of data
    /// nobody asked for, or whose last pooled receive stopped waiting: the rest stays in the
    /// socket (TCP slows the peer) until a pooled receive takes what is queued and finds the
    /// queue empty, or a multishot pooled receive starts (it takes the whole queue), which arms
    /// it again. Without this one connection whose owner stops receiving would take the whole
    /// pool, and every other pooled receive of the port would wait for buffers that never come
    /// back.
    pub(super) fn pause_receiving(&mut self, h: u32) {
        if self.stop_armed(h) {
            self.paused += 1;
        }
    }

    /// Queues the cancel of handle `h`'s multishot receive or accept in the kernel, if any
    /// and not cancelled already; whether it did. Its last CQE re-arms the handle if a pooled
    /// receive waits. Without deferred task work the cancel goes to the kernel before the
    /// engine returns to the program (`Ring::submit_stops`).
    fn stop_armed(&mut self, h: u32) -> bool {
        let idx = self.handles[h as usize].armed;
        if idx == NONE {
            return false;
        }
        let ud = self.ud(idx);
        let op = self.op(idx);
        if !op.in_kernel || op.cancelled {
            return false;
        }
        op.cancelled = true;
        let sqe = opcode::AsyncCancel::new(ud).build().user_data(0);
        self.push(&sqe);
        self.stop_queued |= !self.deferred_taskrun;
        true
    }

    /// The hang-up watch of stream handle `h` ended: it fired (`res`, the poll mask, > 0),
    /// or it was cancelled with the handle's other operations.
    ///
    /// Why it exists: a multishot receive that drains the socket goes back to waiting for the
    /// socket's next wake-up, and a reset that came together with the data it just read (one
    /// wake-up for both, the peer's data then its RST before the kernel ran the receive) never
    /// wakes it again: the receive waits forever, the reset never reported (Linux 6.18; an
    /// orderly end is seen, the kernel retrying at once after a read that leaves the end of
    /// the stream). The watch, a poll for `POLLRDHUP` (errors and hang-ups come with it),
    /// fires on either; the handle then receives with single-shot receives, each of which
    /// looks at the socket afresh, so the data still queued and then the reset or the end
    /// come through. Without the kernel's receive limit every receive is single-shot already
    /// and no watch is put.
    pub(super) fn on_watch(&mut self, idx: u32, res: i32) {
        self.ended(idx);
        self.op(idx).finished = true;
        let h = self.op(idx).handle;
        let open = self.handles[h as usize].open && !self.closing;
        let handle = &mut self.handles[h as usize];
        if res > 0 && open {
            // The multishot receive in the kernel is stopped; its last CQE arms the handle
            // again, single-shot, if a pooled receive waits.
            handle.hup = true;
            self.stop_armed(h);
        } else {
            // Cancelled (`cancel_all`) while the handle lives on: watched again at its next
            // arming, or now if it was armed again while this cancel was on its way (that
            // arming saw `watched` and put none; and the cancel may have ended a watch that
            // had fired, the reset already there: a new watch fires at once).
            handle.watched = false;
            let armed = handle.armed;
            if open && !handle.hup && armed != NONE && self.receiving(armed) {
                self.watch(h);
            }
        }
        self.maybe_release(idx);
    }

    /// Whether slab entry `idx` is a multishot receive in the kernel, not being stopped.
    fn receiving(&self, idx: u32) -> bool {
        self.slots[idx as usize]
            .op
            .as_ref()
            .is_some_and(|op| matches!(op.body, Body::MultiRecv) && op.in_kernel && !op.cancelled)
    }

    pub(super) fn on_multi_accept(&mut self, idx: u32, res: i32, flags: u32) {
        let (h, more) = self.multishot_cqe(idx, flags);
        let open = self.handles[h as usize].open && !self.closing;
        if res >= 0 {
            // SAFETY: a successful accept's result is a new descriptor nothing else owns.
            let fd = unsafe { OwnedFd::from_raw_fd(res) };
            if open {
                match self.handles[h as usize].waiters.pop_front(&self.slots) {
                    Some(w) => match accepted(fd) {
                        Some(output) => self.deliver(w, Ok(0), output, None),
                        // The client went away: the waiter waits for the next one.
                        None => self.handles[h as usize]
                            .waiters
                            .push_front(&mut self.slots, w),
                    },
                    None => self.cold[h as usize].accepted.push_back(fd),
                }
            }
        } else {
            let errno = -res;
            let stopped = errno == libc::ECANCELED || errno == libc::EINTR;
            if open && !stopped && !op::is_client_reset(errno) {
                if let Some(w) = self.handles[h as usize].waiters.pop_front(&self.slots) {
                    self.deliver(w, Err(from_errno(errno)), Output::None, None);
                }
            }
        }
        if !more {
            if open
                && self.handles[h as usize].armed == NONE
                && !self.handles[h as usize].waiters.is_empty()
            {
                self.arm(h, Body::MultiAccept, OpKind::Accept);
            }
            self.maybe_release(idx);
        }
    }
}

/// A connection the multishot accept brought, as an accept's output; `None` if its client is
/// already gone.
pub(super) fn accepted(fd: OwnedFd) -> Option<Output> {
    let sock = socket2::SockRef::from(&fd);
    let local = sock.local_addr().ok()?;
    if local.family() == libc::AF_UNIX as libc::sa_family_t {
        let stream = UnixStream::from(fd);
        let peer = stream.peer_addr().ok()?;
        return Some(Output::accepted_unix(stream, peer));
    }
    let local_addr: SocketAddr = local.as_socket()?;
    let peer_addr = sock.peer_addr().ok()?.as_socket()?;
    Some(Output::accepted(Accepted {
        stream: TcpStream::from(fd),
        local_addr,
        peer_addr,
    }))
}
