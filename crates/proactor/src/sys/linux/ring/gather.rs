//! Gathered sends: the sends a stream handle's write lane holds when the ring is entered go to
//! the kernel as one `SENDMSG`, an iovec per send, instead of one `SEND` each.
//!
//! A send that finds its lane idle does not queue its SQE at once: it is *deferred* (it holds
//! the lane, its handle is listed in `State::unsent`) until the next enter, which is when its
//! SQE would have been submitted anyway. The sends started meanwhile wait in the lane as
//! usual. At the enter ([`State::flush`]) the deferred send and the sends queued behind it
//! (up to the first one that cannot be gathered: one with a deadline, a record) become one
//! `SENDMSG`, named by the first one's `user_data`; its members are in the kernel with it.
//! One `tcp_sendmsg` then carries what a connection was asked to send in one turn of the
//! user's loop (an echo's receives of one batch), which is where the kernel's per-send work
//! (a segment through the stack) is saved.
//!
//! Each send still completes on its own, in order, with its own bytes. The CQE's count is
//! spread over the members in order ([`State::on_gathered`]): the ones it covers complete;
//! the first it does not cover (a partial transfer, a cancel, an error) and those after it go
//! back to the front of the lane, so the rest of the stream goes out next, in order.
//!
//! Cancels keep the meaning they have for a single send: a cancelled member cancels the whole
//! `SENDMSG` (by its first member's `user_data`), and afterwards only the cancelled members end
//! cancelled, each with the bytes it sent; the others go on. Before a cancel, a `cancel_all` or
//! a close reaches a deferred send, it is submitted alone ([`State::undefer`]), as it would have
//! been had it not waited for the enter.

use super::*;

/// Members at most in one `SENDMSG` (the kernel takes up to `UIO_MAXIOV`, 1024).
const MAX_GATHER: usize = 64;

/// A handle's gathered send in flight: the kernel reads the message header and its iovecs
/// (kept here, boxed, so they stay put while the handle table grows) until the CQE.
pub(super) struct Gather {
    hdr: libc::msghdr,
    iov: Vec<libc::iovec>,
    /// The members, first (the one whose `user_data` the SQE carries) to last.
    ops: Fifo,
}

impl Gather {
    pub(super) fn new() -> Box<Gather> {
        // SAFETY: a `msghdr` of zeros is valid: no name, no iovec, no control data.
        let hdr = unsafe { std::mem::zeroed() };
        Box::new(Gather {
            hdr,
            iov: Vec::new(),
            ops: Fifo::EMPTY,
        })
    }
}

/// The bytes a send owns, and how many of them went out.
fn sent(body: &Body) -> Option<(&[u8], usize)> {
    match body {
        Body::Send { buf, done } => Some((buf, *done)),
        Body::SendPooled { buf, done } => Some((buf.as_deref().unwrap_or(&[]), *done)),
        _ => None,
    }
}

/// Whether waiting operation `idx` may join the gathered send ahead of it.
fn joins(slots: &[Slot], idx: u32) -> bool {
    slots[idx as usize]
        .op
        .as_ref()
        .is_some_and(|op| op.gathers() && !op.cancelled)
}

fn add_sent(body: &mut Body, n: usize) {
    match body {
        Body::Send { done, .. } | Body::SendPooled { done, .. } => *done += n,
        _ => unreachable!("only sends are gathered"),
    }
}

impl Op {
    /// A send that may go out in a gathered `SENDMSG`: a stream's send or pooled send with no
    /// deadline (a deadline is a link timeout of its own SQE) and bytes left to send. An empty
    /// send goes alone, as before: inside a `SENDMSG` the CQE could not say whether it was
    /// reached (behind a member stuck or failed, it would complete at once, out of order).
    #[inline]
    pub(super) fn gathers(&self) -> bool {
        self.lane == Some(Dir::Write)
            && self.deadline.is_none()
            && sent(&self.body).is_some_and(|(buf, done)| done < buf.len())
    }
}

impl State {
    /// Starts operation `idx`, which now holds its lane: a send that gathers waits for the next
    /// enter, anything else is queued at once.
    #[inline]
    pub(super) fn begin(&mut self, idx: u32) {
        let closing = self.closing;
        let h = self.op(idx).handle;
        // A socket that keeps message boundaries (`SOCK_SEQPACKET`) would take a gathered
        // `SENDMSG` as one message: its sends go alone.
        let bytes = h != NO_HANDLE && !self.handles[h as usize].datagram;
        let op = self.op(idx);
        if bytes && op.gathers() && !closing {
            op.deferred = true;
            self.unsent.push(h);
        } else {
            self.issue(idx);
        }
    }

    /// Queues the SQEs of the deferred sends (before every enter).
    pub(super) fn flush(&mut self) {
        let mut unsent = std::mem::take(&mut self.unsent);
        for &h in &unsent {
            let head = self.handles[h as usize].busy[Dir::Write as usize];
            // Not deferred any more: submitted meanwhile (`undefer`), or ended.
            if self.is_deferred(head) {
                self.gather(h, head);
            }
        }
        unsent.clear();
        // Keeps the list's buffer (nothing was listed meanwhile: `gather` lists nothing).
        debug_assert!(self.unsent.is_empty());
        self.unsent = unsent;
    }

    fn is_deferred(&self, idx: u32) -> bool {
        idx != NONE
            && self.slots[idx as usize]
                .op
                .as_ref()
                .is_some_and(|op| op.deferred)
    }

    /// Submits handle `h`'s deferred send, if it has one, alone: what a cancel, `cancel_all`
    /// or close of it finds is then what it would have found without the deferral.
    pub(super) fn undefer(&mut self, h: u32) {
        let head = self.handles[h as usize].busy[Dir::Write as usize];
        if self.is_deferred(head) {
            self.op(head).deferred = false;
            self.issue(head);
        }
    }

    /// Queues deferred send `head` of handle `h` with the sends that wait behind it: one `SEND`
    /// if none can join it, else one `SENDMSG`.
    fn gather(&mut self, h: u32, head: u32) {
        self.op(head).deferred = false;
        let ud = self.ud(head);
        let lane = &mut self.handles[h as usize].lanes[Dir::Write as usize];
        if !lane.front().is_some_and(|i| joins(&self.slots, i)) {
            self.issue_send(head);
            return;
        }
        let g = self.cold[h as usize].gather.get_or_insert_with(Gather::new);
        debug_assert!(g.ops.is_empty(), "one gathered send per lane at a time");
        g.ops.push_back(&mut self.slots, head);
        let mut count = 1;
        while count < MAX_GATHER
            && let Some(next) = lane.front().filter(|&i| joins(&self.slots, i))
        {
            lane.pop_front(&self.slots);
            g.ops.push_back(&mut self.slots, next);
            count += 1;
        }
        self.gathered += count as u64 - 1;
        g.iov.clear();
        let mut at = g.ops.front();
        while let Some(idx) = at {
            let slot = &mut self.slots[idx as usize];
            at = (slot.next != NONE).then_some(slot.next);
            let op = slot.op.as_mut().expect("a member");
            op.in_kernel = true;
            op.gathered = true;
            let (buf, done) = sent(&op.body).expect("a send");
            let rest = &buf[done..];
            g.iov.push(libc::iovec {
                iov_base: rest.as_ptr().cast_mut().cast(),
                iov_len: rest.len(),
            });
        }
        #[cfg(feature = "failpoints")]
        (|| {
            // Test-only: the kernel is given fewer bytes than the members hold (the argument,
            // cut from the end, leaving at least one byte), so the CQE reports a partial
            // transfer ending where the test chose.
            fail::fail_point!("ring::gather_short", |cut: Option<String>| {
                let mut cut: usize = cut.and_then(|c| c.parse().ok()).unwrap_or(1);
                while cut > 0 {
                    let keep = usize::from(g.iov.len() == 1);
                    let last = g.iov.last_mut().expect("members");
                    let take = cut.min(last.iov_len.saturating_sub(keep));
                    if take == 0 && keep == 1 {
                        break;
                    }
                    last.iov_len -= take;
                    cut -= take;
                    if last.iov_len == 0 {
                        g.iov.pop();
                    }
                }
            });
        })();
        g.hdr.msg_iov = g.iov.as_mut_ptr();
        g.hdr.msg_iovlen = g.iov.len();
        // The header and its iovecs are boxed in the handle's `Cold` entry, and the bytes they
        // name are the members' buffers: all are kept until this CQE (`push`'s requirement).
        let sqe = opcode::SendMsg::new(Fixed(h), &g.hdr)
            .flags(libc::MSG_NOSIGNAL as u32)
            .build()
            .user_data(ud);
        self.op(head).cqes += 1;
        self.handles[h as usize].kernel += 1;
        self.push(&sqe);
    }

    /// The CQE of the gathered send that `head` leads: the members it covers complete, the
    /// rest go on (or end, if cancelled or failed) in order.
    pub(super) fn on_gathered(&mut self, head: u32, res: i32) {
        self.ended(head);
        let h = self.slots[head as usize].op.as_ref().expect("live").handle;
        let mut members = {
            let g = self.cold[h as usize]
                .gather
                .as_mut()
                .expect("a gathered send");
            std::mem::replace(&mut g.ops, Fifo::EMPTY)
        };
        let stopped_all = self.closing || !self.handles[h as usize].open;
        let mut left = res.max(0) as usize;
        // `EINTR`: a cancel too (`error::from_errno`).
        let stopped = res == -libc::ECANCELED || res == -libc::EINTR;
        let mut error = (res < 0 && !stopped).then_some(-res);
        let mut back = Fifo::EMPTY;
        // Each member's link is read before it completes (which may free its entry).
        while let Some(idx) = members.pop_front(&self.slots) {
            let op = self.op(idx);
            op.in_kernel = false;
            op.gathered = false;
            let (len, done) = sent(&op.body).map(|(b, d)| (b.len(), d)).expect("a send");
            let took = left.min(len - done);
            add_sent(&mut op.body, took);
            left -= took;
            if done + took == len {
                self.complete_op(idx, Ok(len));
            } else if op.cancelled || stopped_all {
                self.complete_op(idx, Err(cancelled()));
            } else if let Some(errno) = error.take() {
                // The member the kernel was sending when it failed.
                let e = self.error(idx, errno);
                self.complete_op(idx, Err(e));
            } else {
                back.push_back(&mut self.slots, idx);
            }
        }
        debug_assert_eq!(left, 0, "a SENDMSG moved more than its members held");
        // What goes on runs before what waited behind the gathered send.
        let lane = &mut self.handles[h as usize].lanes[Dir::Write as usize];
        back.append(&mut self.slots, *lane);
        *lane = back;
        self.hand_over(h, Dir::Write, head);
    }
}
