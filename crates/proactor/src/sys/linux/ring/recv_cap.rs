//! The byte limit of a multishot receive (Linux 6.17: the SQE's `optlen` as the total one
//! arming may receive, after which it ends without `IORING_CQE_F_MORE`).
//!
//! Without it, one enter can bring a handle as much as its socket receives meanwhile: the
//! kernel runs a multishot receive again and again while data keeps coming (on loopback the
//! sender refills the socket as fast as it is read), several megabytes for one connection in
//! a single batch of completions, which a program that stopped receiving from a peer that does
//! not read (its backlog full) must then keep. With it, an arming takes at most
//! [`ARM_BUFFERS`] pool buffers' worth and ends; the engine arms it again if a pooled receive
//! still waits, and the new arming is submitted at the next enter, after anything the program
//! asked meanwhile (a cancel that stops it). So the data that reaches a program after it
//! stopped receiving from a handle is bounded by a few buffers, whatever the kernel version
//! offers otherwise; kernels without the limit refuse it (`EINVAL` from the receive's prep,
//! where the field was `file_index`), which [`probe`] finds once per port: there each arming
//! is one single-shot receive of one buffer instead (`submit.rs`), since an unlimited one
//! takes the whole lent window for a handle nobody reads before its pause can stop it.

use std::os::fd::AsRawFd;

use io_uring::{
    IoUring, opcode,
    squeue::Entry,
    types::{self, SubmitArgs, Timespec},
};

use super::BGID;

/// The pool buffers' worth of data one arming of a multishot receive takes at most.
pub(super) const ARM_BUFFERS: usize = 2;

/// The `optlen` that keeps an arming within [`ARM_BUFFERS`] buffers of `size` bytes: the
/// kernel ends it once it has received `optlen` bytes or more, and the receive that crosses
/// that fills a whole buffer (it is not cut to what is left), so an arming takes at most
/// `optlen - 1 + size` bytes.
pub(super) fn optlen(size: usize) -> u32 {
    u32::try_from((ARM_BUFFERS - 1) * size + 1).unwrap_or(u32::MAX)
}

/// The most one arming takes with [`optlen`]`(size)`.
pub(super) fn most(size: usize) -> usize {
    optlen(size) as usize - 1 + size
}

/// The byte offset of `optlen` (a union with `file_index`) in a 64-byte SQE.
const OPTLEN_AT: usize = 44;

/// `entry` (a multishot receive) with its total limited to `limit` bytes.
pub(super) fn limited(entry: Entry, limit: u32) -> Entry {
    edited(entry, |sqe| {
        sqe[OPTLEN_AT..OPTLEN_AT + 4].copy_from_slice(&limit.to_ne_bytes());
    })
}

/// The byte offset of `ioprio` (a receive's `IORING_RECVSEND_*` flags) in a 64-byte SQE.
const IOPRIO_AT: usize = 2;

/// `entry` (a multishot receive) with `IORING_RECVSEND_POLL_FIRST` among its receive flags:
/// an arming waits for readiness before its first attempt. An arming after the limit ended
/// the last one usually finds nothing yet (a request's reply was received, the peer waits
/// for the answer), and trying first costs a socket lock and an `EAGAIN`; the kernel takes
/// the flag with `IORING_RECV_MULTISHOT` (`io_recvmsg_prep`, Linux 5.19+). No outcome changes:
/// a poll is armed by checking readiness, so data already queued is still received.
pub(super) fn poll_first(entry: Entry) -> Entry {
    edited(entry, |sqe| {
        let prio = u16::from_ne_bytes([sqe[IOPRIO_AT], sqe[IOPRIO_AT + 1]]) | super::POLL_FIRST;
        sqe[IOPRIO_AT..IOPRIO_AT + 2].copy_from_slice(&prio.to_ne_bytes());
    })
}

/// `entry` with its 64 bytes edited by `edit`: for the fields the `io-uring` crate's builder
/// does not set.
fn edited(entry: Entry, edit: impl FnOnce(&mut [u8; 64])) -> Entry {
    // SAFETY: `Entry` is `#[repr(C)]` around the kernel's 64-byte `io_uring_sqe`, which is
    // integers and unions of integers only: every byte pattern is a valid value, so it may be
    // read as bytes and the bytes read back as an entry.
    let mut sqe: [u8; 64] = unsafe { std::mem::transmute(entry) };
    edit(&mut sqe);
    // SAFETY: as above.
    unsafe { std::mem::transmute::<[u8; 64], Entry>(sqe) }
}

/// Whether `ring`'s kernel takes a multishot receive's byte limit: one limited receive on a
/// socket pair with nothing to read, then a cancel of it. A kernel without the limit fails
/// the receive at once with `EINVAL`; one with it takes it (which then ends another way).
/// Both carry `user_data` 0, which the engine's reaping ignores (its own
/// cancels): a CQE left behind, were the wait to end early, could not be taken for an
/// operation's.
pub(super) fn probe(ring: &mut IoUring) -> bool {
    let Ok((a, _b)) = std::os::unix::net::UnixStream::pair() else {
        return false;
    };
    let recv = limited(
        opcode::RecvMulti::new(types::Fd(a.as_raw_fd()), BGID).build(),
        1,
    )
    .user_data(0);
    let cancel = opcode::AsyncCancel::new(0).build().user_data(0);
    // SAFETY: neither SQE names memory: the receive picks from the registered buffer group
    // (none is lent yet, and nothing is there to receive), the cancel names a `user_data`.
    // Both end before `a` closes: two CQEs are waited for, and should the wait end early, the
    // ring (dropped before the pool and buffer ring, see `State`) cancels what is left.
    let pushed = unsafe {
        let mut sq = ring.submission();
        sq.push(&recv).is_ok() && sq.push(&cancel).is_ok()
    };
    // Bounded, though both CQEs come at once: a kernel that held them would not hold the port.
    let ts = Timespec::new().sec(1);
    let args = SubmitArgs::new().timespec(&ts);
    if !pushed || ring.submitter().submit_with_args(2, &args).is_err() {
        return false; // not expected on a new ring; left unlimited
    }
    // A kernel without the limit refuses the receive at prep (`EINVAL`); one with it takes it
    // and ends it otherwise: `ENOBUFS` (no buffer is lent yet, and buffer selection comes
    // first), or `ECANCELED`. The cancel's CQE is 0 or `ENOENT`, never `EINVAL`.
    let (mut cqes, mut refused) = (0, false);
    for cqe in ring.completion() {
        cqes += 1;
        refused |= cqe.result() == -libc::EINVAL;
    }
    cqes == 2 && !refused
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An entry's 64 bytes.
    fn bytes(entry: Entry) -> [u8; 64] {
        let mut out = [0; 64];
        let _ = edited(entry, |sqe| out = *sqe);
        out
    }

    /// A multishot receive's bytes before and after `edit`, checked to differ only in
    /// `changed`.
    fn edited_only(
        edit: fn(Entry) -> Entry,
        changed: std::ops::Range<usize>,
    ) -> ([u8; 64], [u8; 64]) {
        let plain = opcode::RecvMulti::new(types::Fixed(7), BGID)
            .build()
            .user_data(9);
        let (before, after) = (bytes(plain.clone()), bytes(edit(plain)));
        for i in (0..64).filter(|i| !changed.contains(i)) {
            assert_eq!(before[i], after[i], "byte {i} changed");
        }
        (before, after)
    }

    /// `limited` writes `optlen` where the kernel reads it and changes nothing else.
    #[test]
    fn the_limit_lands_in_optlen_alone() {
        let (_, sqe) = edited_only(|e| limited(e, 0x0102_0304), OPTLEN_AT..OPTLEN_AT + 4);
        assert_eq!(sqe[OPTLEN_AT..OPTLEN_AT + 4], 0x0102_0304u32.to_ne_bytes());
        // `Entry` is the kernel's 64-byte SQE, nothing more.
        assert_eq!(std::mem::size_of::<Entry>(), 64);
    }

    /// `IORING_RECV_MULTISHOT` (`include/uapi/linux/io_uring.h`).
    const MULTISHOT: u16 = 1 << 1;

    /// `poll_first` adds the flag to the multishot one in `ioprio` and changes nothing else.
    #[test]
    fn poll_first_joins_the_multishot_flag() {
        let (a, b) = edited_only(poll_first, IOPRIO_AT..IOPRIO_AT + 2);
        let prio = |s: &[u8; 64]| u16::from_ne_bytes([s[IOPRIO_AT], s[IOPRIO_AT + 1]]);
        assert_eq!(prio(&a), MULTISHOT);
        assert_eq!(prio(&b), MULTISHOT | super::super::POLL_FIRST);
    }

    /// Two buffers' worth at most, whatever the size: the crossing receive fills a buffer.
    #[test]
    fn an_arming_takes_two_buffers_at_most() {
        for size in [1, 16, 4096, 65_535, 64 << 20] {
            assert_eq!(optlen(size) as usize, size + 1);
            assert_eq!(most(size), 2 * size);
        }
    }
}
