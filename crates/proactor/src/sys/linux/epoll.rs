//! The epoll fallback: completion semantics emulated over readiness.
//!
//! An operation is tried at once without blocking; if the descriptor is not ready it waits in
//! the descriptor's read or write queue, in submission order, and is tried again when
//! edge-triggered epoll reports the descriptor ready. The thread that receives the event (one
//! of those in `get_completion`) performs the operation and queues its completion. Regular
//! files have no readiness: their reads and writes run at submission (`pread`/`pwrite`), as
//! most event loops do. Nothing is ever owned by the kernel here, so cancelling or dropping
//! frees a queued operation at once.
//!
//! # Who may touch a descriptor
//!
//! Every attempt on a queued operation (and the first attempt at submission) runs holding the
//! lock of the descriptor table (`fds`), and only while the descriptor has its entry there.
//! Closing a handle cancels its operations and then removes the entry (`cancel_fd`, then
//! `forget`, under the handle's `Life`), both under that lock, before the owner closes the
//! descriptor: once `forget` returned, no thread is in an attempt on it and none will start, so
//! a descriptor number reused by the next connection never receives an old operation's bytes.
//! A cancel takes the operation off its queue wherever it is and completes it as cancelled; it
//! never performs the I/O (a cancelled second send must not write into the first one's
//! remainder, a cancelled second receive must not take the first one's data). A send cancelled
//! part-way says how many bytes it sent. Regular files are the exception: their reads and writes
//! run at submission outside the lock, by the thread that borrows the handle to submit, so the
//! handle cannot be closed meanwhile.
//!
//! # Blocking mode
//!
//! No attempt may block, whatever the description's flags: it runs holding the port-wide `fds`
//! lock, so one blocked attempt would stop every operation of the port. The flags belong to the
//! open file description, which other descriptors share (a `try_clone`, perhaps associated with
//! another port, a child's inherited pipe) and which the user can change through the handle, so
//! nothing here relies on a flag it does not check at the call. Sockets' sends and receives pass
//! `MSG_DONTWAIT`; pipes and FIFOs are read and written with `preadv2`/`pwritev2` and
//! `RWF_NOWAIT`: neither changes the description. `accept4` and `connect` have no per-call flag,
//! so a listener or a connecting socket gets `O_NONBLOCK` before each accept or connect (one
//! `F_GETFL`, and an `F_SETFL` if someone cleared it) and keeps it for good: it is never cleared,
//! since clearing it under another handle of the description would make that one block. Where
//! `RWF_NOWAIT` is refused (`EOPNOTSUPP`, e.g. a terminal) the same is done before each read or
//! write.
//!
//! # Reads that would fail are not tried
//!
//! A TCP receive that returns fewer bytes than it asked for has drained the socket: the kernel
//! copies until the buffer is full or the receive queue is empty. Edge-triggered epoll reports
//! every later arrival of data, so until it reports `EPOLLIN` again, a read-side operation on
//! that socket waits in its queue without being tried: in a request/response exchange the
//! receive that follows a send would fail with `EAGAIN`, one wasted syscall per message (what
//! io_uring's `IORING_RECVSEND_POLL_FIRST` saves on the other backend). What could make a short
//! read leave something behind ends this for the socket for good: `EPOLLRDHUP`, `EPOLLHUP` or
//! `EPOLLERR` (a FIN or an error after the data) and `EPOLLPRI` (urgent data, which stops a read
//! at its mark). Unix stream sockets (which stop short at credential boundaries), datagram
//! sockets and pipes are always tried.

use std::{
    cell::Cell,
    collections::{HashMap, VecDeque},
    io,
    mem::{self, MaybeUninit},
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
    sync::{Mutex, MutexGuard, PoisonError},
    time::{Duration, Instant},
};

use super::{
    Driver,
    error::{from_errno, last_error},
    op::{
        ACCEPT_RESTARTS, Op, OpData, Reset, aim_at_room, complete, is_client_reset,
        truncation_shows,
    },
};
use crate::{
    Completion, OpId, OpKind,
    error::cancelled,
    handshake::{Ready, Wake},
    table::{self, Table},
};

/// The epoll data of the wake-up eventfd (descriptors are never negative).
const WAKE: u64 = u64::MAX;

/// What a descriptor is, for the epoll backend.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Has readiness: sockets, pipes, FIFOs, terminals.
    Stream,
    /// A regular file (or anything epoll refuses): reads and writes run at submission.
    File,
}

/// The associated descriptors and the allocations of finished records, under one lock: every
/// record that waits is boxed and queued, and taken off its queue and unboxed, holding it.
struct Fds {
    queues: HashMap<RawFd, Queues>,
    records: Records,
}

/// How many record allocations a port keeps for the next operations that wait: more than the
/// receives that one `epoll_wait` (64 events) completes, for their next receives to reuse, and
/// 128 KiB at most (a record is 128 bytes), whatever a burst left behind.
const SPARE_RECORDS: usize = 1024;

/// The largest list of completions a thread keeps between two waits (see [`DONE`]): 28 KiB.
const KEPT_COMPLETIONS: usize = 256;

/// The allocations of finished records, empty, for the next operations that must wait.
///
/// An operation tried at submission that completes at once never leaves the stack; one that
/// waits is boxed (its queue moves pointers, not records) in an allocation taken from here, and
/// when it ends (done, cancelled, its descriptor forgotten) the record is moved out of its box
/// and the allocation comes back here, at most [`SPARE_RECORDS`] of them, the rest freed. A box
/// comes back only once its record is off its queue and the table, which the lock of [`Fds`]
/// guarantees (and nothing but that queue ever points at a record: no kernel, no table entry),
/// so no thread can reach a recycled allocation through the operation it held.
// The boxes are the point: each is an allocation that becomes a queued `Box<Op>` again.
#[allow(clippy::vec_box)]
struct Records(Vec<Box<MaybeUninit<Op>>>);

impl Records {
    fn new() -> Records {
        Records(Vec::with_capacity(SPARE_RECORDS))
    }

    /// `op` on the heap, in a recycled allocation if there is one.
    fn boxed(&mut self, op: Op) -> Box<Op> {
        match self.0.pop() {
            Some(mut empty) => {
                empty.write(op);
                // SAFETY: the record was just written into the allocation.
                unsafe { empty.assume_init() }
            }
            None => Box::new(op),
        }
    }

    /// Moves the record out of `op`'s box and keeps the allocation (if fewer than
    /// [`SPARE_RECORDS`] are kept).
    fn unboxed(&mut self, op: Box<Op>) -> Op {
        let raw = Box::into_raw(op);
        // SAFETY: `raw` comes from `Box::into_raw`: valid, aligned and initialised. The value
        // is read once, here; from now on the allocation is treated as holding no value.
        let op = unsafe { raw.read() };
        // SAFETY: the allocation was made by `Box` for an `Op`, which has the layout of
        // `MaybeUninit<Op>`; nothing else owns it, and as a `MaybeUninit` it is never read nor
        // dropped as the record just moved out of it.
        let empty = unsafe { Box::from_raw(raw.cast::<MaybeUninit<Op>>()) };
        if self.0.len() < SPARE_RECORDS {
            self.0.push(empty);
        }
        op
    }
}

/// The operations waiting on one descriptor.
struct Queues {
    kind: Kind,
    read: VecDeque<Box<Op>>,
    write: VecDeque<Box<Op>>,
    /// Whether a read-side operation may succeed without a new `EPOLLIN` (see the module docs).
    readable: Readable,
    /// Whether an operation reported the peer's reset (see `Reset`).
    reset: Reset,
}

/// What is known about a descriptor's receive queue.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Readable {
    /// Not a TCP socket, or one that reported a hang-up, an error or urgent data: always try.
    Always,
    /// A TCP socket that may have data: try.
    Maybe,
    /// A TCP socket drained by a short receive (or one that would block), with no `EPOLLIN`
    /// since: wait for it.
    Drained,
}

impl Readable {
    /// What an epoll event says: anything reported ends a drain, a hang-up, error or urgent
    /// data ends tracking.
    fn on_event(&mut self, events: u32) {
        let sticky = (libc::EPOLLRDHUP | libc::EPOLLHUP | libc::EPOLLERR | libc::EPOLLPRI) as u32;
        if events & sticky != 0 {
            *self = Readable::Always;
        } else if events & libc::EPOLLIN as u32 != 0 && *self == Readable::Drained {
            *self = Readable::Maybe;
        }
    }

    /// What trying a read-side operation showed: a short receive (`got` of `wanted`, both
    /// non-zero) or one that would block drained the socket. End of file keeps it readable (a
    /// receive after it returns 0 again at once).
    fn after_read(&mut self, kind: OpKind, wanted: usize, attempt: &Attempt) {
        if *self != Readable::Maybe {
            return;
        }
        match attempt {
            Attempt::WouldBlock => *self = Readable::Drained,
            Attempt::Done(Ok(got)) if kind == OpKind::Recv && 0 < *got && *got < wanted => {
                *self = Readable::Drained;
            }
            Attempt::Done(_) => {}
        }
    }
}

/// How trying an operation went.
enum Attempt {
    Done(io::Result<usize>),
    WouldBlock,
}

/// The epoll completion port.
pub(crate) struct Epoll {
    epfd: OwnedFd,
    wake: OwnedFd,
    fds: Mutex<Fds>,
    /// Completions to dequeue, and the threads in `epoll_wait` (model-checked).
    ready: Ready<Completion>,
    /// Queued operations: id to descriptor, for cancel.
    table: Table<RawFd>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A syscall's return value as a result, retrying on EINTR.
fn retry(mut f: impl FnMut() -> isize) -> io::Result<usize> {
    loop {
        let r = f();
        if r >= 0 {
            return Ok(r as usize);
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINTR) {
            return Err(from_errno(e.raw_os_error().unwrap_or(libc::EIO)));
        }
    }
}

fn would_block(e: &io::Error) -> bool {
    matches!(
        crate::raw_os_error(e),
        Some(libc::EAGAIN | libc::EINPROGRESS)
    )
}

impl Epoll {
    pub(crate) fn new() -> io::Result<Epoll> {
        // SAFETY: plain syscalls creating new descriptors, each owned at once below.
        let epfd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if epfd < 0 {
            return Err(last_error());
        }
        // SAFETY: `epfd` is a new descriptor nothing else owns.
        let epfd = unsafe { OwnedFd::from_raw_fd(epfd) };
        // SAFETY: as above.
        let wake = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if wake < 0 {
            return Err(last_error());
        }
        // SAFETY: `wake` is a new descriptor nothing else owns.
        let wake = unsafe { OwnedFd::from_raw_fd(wake) };
        let port = Epoll {
            epfd,
            wake,
            fds: Mutex::new(Fds {
                queues: HashMap::new(),
                records: Records::new(),
            }),
            ready: Ready::new(),
            table: Table::new(),
        };
        port.register(port.wake.as_raw_fd(), WAKE, libc::EPOLLIN as u32)?;
        Ok(port)
    }

    fn register(&self, fd: RawFd, data: u64, events: u32) -> io::Result<()> {
        let mut ev = libc::epoll_event {
            events: events | libc::EPOLLET as u32,
            u64: data,
        };
        // SAFETY: both descriptors are open; `ev` is a valid event for the call's duration.
        if unsafe { libc::epoll_ctl(self.epfd.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut ev) } < 0 {
            return Err(last_error());
        }
        Ok(())
    }

    /// Removes `fd` from the epoll set (it is still open: its owner closes it after this).
    fn deregister(&self, fd: RawFd) {
        // SAFETY: both descriptors are open; EPOLL_CTL_DEL takes no event.
        unsafe {
            libc::epoll_ctl(
                self.epfd.as_raw_fd(),
                libc::EPOLL_CTL_DEL,
                fd,
                std::ptr::null_mut(),
            )
        };
    }

    /// Queues completions and wakes one thread blocked in `epoll_wait`, if any. Each wake-up
    /// reaches one thread; a thread that leaves work in the ready queue wakes the next (see
    /// `handshake::Ready`).
    fn push_ready(&self, done: impl IntoIterator<Item = Completion>) {
        self.ready.push(done, self);
    }

    fn pop_ready(&self, out: &mut Vec<Completion>, max: usize) -> usize {
        self.ready.pop(out, max, self)
    }

    /// Tries `op` once, without blocking.
    fn attempt(op: &mut Op) -> Attempt {
        let fd = op.fd;
        let result = match op.kind {
            OpKind::Recv | OpKind::Read => {
                let (ptr, len) = op.spare();
                // A `read_at` on a datagram socket shares this branch: MSG_TRUNC is for `recv`,
                // whose completion cuts the real length it gives to the room (`op.rs`).
                let truncation = truncation_shows(op.datagram && op.kind == OpKind::Recv);
                let flags = libc::MSG_DONTWAIT | truncation;
                // SAFETY: `ptr` is the spare capacity of a buffer the record owns, `len` long
                // (with MSG_TRUNC the result may be larger, but no more than `len` is written).
                let received = retry(|| unsafe { libc::recv(fd, ptr.cast(), len, flags) });
                match received {
                    // Not a socket (a pipe): a read that cannot block.
                    Err(e) if crate::raw_os_error(&e) == Some(libc::ENOTSOCK) => {
                        nowait_io(fd, ptr, len, false)
                    }
                    other => other,
                }
            }
            OpKind::RecvVectored => {
                let OpData::Buffers { msg, iov, .. } = &mut op.data else {
                    return Attempt::Done(Ok(0));
                };
                aim_at_room(iov, msg);
                let msg: *mut libc::msghdr = &mut **msg;
                let flags = libc::MSG_DONTWAIT | truncation_shows(op.datagram);
                // SAFETY: the msghdr and its iovecs point into buffers the record owns.
                retry(|| unsafe { libc::recvmsg(fd, msg, flags) })
            }
            OpKind::RecvFrom | OpKind::SendTo => {
                let msg = match &mut op.data {
                    OpData::RecvFrom { msg, .. } | OpData::SendTo { msg, .. } => {
                        &mut **msg as *mut libc::msghdr
                    }
                    _ => return Attempt::Done(Ok(0)),
                };
                let flags = if op.kind == OpKind::RecvFrom {
                    libc::MSG_DONTWAIT | truncation_shows(op.datagram)
                } else {
                    libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL
                };
                if op.kind == OpKind::RecvFrom {
                    // SAFETY: the msghdr, its iovec and address point into memory the record owns.
                    retry(|| unsafe { libc::recvmsg(fd, msg, flags) })
                } else {
                    // SAFETY: as above.
                    retry(|| unsafe { libc::sendmsg(fd, msg, flags) })
                }
            }
            OpKind::Readable => {
                let mut byte = 0u8;
                let peek = libc::MSG_PEEK | libc::MSG_DONTWAIT;
                // SAFETY: peeks at most one byte into a local.
                retry(|| unsafe { libc::recv(fd, (&raw mut byte).cast(), 1, peek) }).map(|_| 0)
            }
            // On a message socket one call sends one datagram, whatever its length (also 0).
            OpKind::Send | OpKind::Write => loop {
                let (ptr, len) = op.unsent();
                if len == 0 && !op.datagram {
                    break Ok(op_done(op));
                }
                let flags = libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT;
                // SAFETY: `ptr` points at the unsent part of a buffer the record owns.
                let sent = retry(|| unsafe { libc::send(fd, ptr.cast(), len, flags) });
                let sent = match sent {
                    // Not a socket (a pipe): a write that cannot block.
                    Err(e) if crate::raw_os_error(&e) == Some(libc::ENOTSOCK) => {
                        nowait_io(fd, ptr.cast_mut(), len, true)
                    }
                    other => other,
                };
                match sent {
                    Ok(n) => {
                        if let OpData::Buffer { done, .. } = &mut op.data {
                            *done += n;
                        }
                        if op.datagram {
                            break Ok(op_done(op));
                        }
                    }
                    Err(e) if would_block(&e) => return Attempt::WouldBlock,
                    Err(e) => break Err(e),
                }
            },
            OpKind::SendVectored => loop {
                // Rebuilt from the buffers and `progress` before each call, at most `IOV_MAX`
                // iovecs at a time (the kernel refuses more with `EMSGSIZE`). On a message
                // socket, one call: one datagram, also an empty one.
                if op.aim_at_unsent() == 0 && !op.datagram {
                    break Ok(op.progress);
                }
                let OpData::Buffers { msg, .. } = &op.data else {
                    return Attempt::Done(Ok(0));
                };
                let hdr: *const libc::msghdr = &**msg;
                let flags = libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT;
                // SAFETY: the msghdr and its iovecs point into buffers the record owns.
                match retry(|| unsafe { libc::sendmsg(fd, hdr, flags) }) {
                    // A stream socket with room takes at least a byte: 0 would repeat for ever.
                    Ok(0) => break Ok(op.progress),
                    Ok(n) if op.datagram => break Ok(op.progress + n),
                    Ok(n) => op.progress += n,
                    Err(e) if would_block(&e) => return Attempt::WouldBlock,
                    Err(e) => break Err(e),
                }
            },
            OpKind::Accept => loop {
                let (addr, len) = match &mut op.data {
                    OpData::Accept { peer, .. } => (&raw mut peer.storage, &raw mut peer.len),
                    _ => return Attempt::Done(Ok(0)),
                };
                // No per-call flag: the description must be non-blocking now, whoever may have
                // cleared the flag since the last accept (see the module docs).
                if let Err(e) = ensure_nonblocking(fd) {
                    break Err(e);
                }
                let flags = libc::SOCK_CLOEXEC;
                // SAFETY: the address buffer is owned by the record and sized by `len`.
                match retry(|| unsafe { libc::accept4(fd, addr.cast(), len, flags) } as isize) {
                    Err(e)
                        if is_client_reset(crate::raw_os_error(&e).unwrap_or(0))
                            && op.progress < ACCEPT_RESTARTS as usize =>
                    {
                        op.progress += 1; // the client went away: accept the next one
                    }
                    other => break other,
                }
            },
            OpKind::Connect => {
                if op.progress == 0 {
                    op.progress = 1;
                    let (addr, len) = match &op.data {
                        OpData::Connect { addr } => {
                            (addr.as_ptr().cast::<libc::sockaddr>(), addr.len())
                        }
                        _ => return Attempt::Done(Ok(0)),
                    };
                    // As for accept: no per-call flag.
                    if let Err(e) = ensure_nonblocking(fd) {
                        return Attempt::Done(Err(e));
                    }
                    // SAFETY: the address is owned by the record, `len` bytes long.
                    retry(|| unsafe { libc::connect(fd, addr, len) } as isize)
                } else {
                    connect_result(fd)
                }
            }
            // Never queued: posts and refused operations complete at submission.
            OpKind::Post
            | OpKind::Ioctl
            | OpKind::TransmitFile
            | OpKind::Disconnect
            | OpKind::ConnectPipe
            | OpKind::Timer
            | OpKind::RecvPooled
            | OpKind::SendPooled => Ok(0),
        };
        match result {
            Err(e) if would_block(&e) => Attempt::WouldBlock,
            other => Attempt::Done(other),
        }
    }

    /// Runs the queued operations of `fd` that can run now, after an event saying `events`;
    /// returns their completions.
    fn drive(&self, fd: RawFd, events: u32, out: &mut Vec<Completion>) {
        let mut fds = lock(&self.fds);
        let Fds { queues, records } = &mut *fds;
        let Some(q) = queues.get_mut(&fd) else { return };
        q.readable.on_event(events);
        while q.readable != Readable::Drained {
            let Some(op) = q.read.front_mut() else { break };
            let wanted = op.spare().1;
            crate::failpoint::failpoint!("epoll::attempt");
            let attempt = Self::attempt(op);
            q.readable.after_read(op.kind, wanted, &attempt);
            let Attempt::Done(result) = attempt else {
                break;
            };
            let op = q.read.pop_front().expect("front exists");
            self.table.remove(op.id);
            let result = q.reset.after(op.kind, op.datagram, result);
            out.push(finish(records.unboxed(op), result));
        }
        while let Some(op) = q.write.front_mut() {
            crate::failpoint::failpoint!("epoll::attempt");
            let Attempt::Done(result) = Self::attempt(op) else {
                break;
            };
            let op = q.write.pop_front().expect("front exists");
            self.table.remove(op.id);
            let result = q.reset.after(op.kind, op.datagram, result);
            out.push(finish(records.unboxed(op), result));
        }
    }

    /// Waits for events, at most until `deadline`; runs what became ready. False on timeout.
    fn wait(&self, deadline: Option<Instant>) -> io::Result<bool> {
        let millis = match deadline {
            None => -1,
            Some(at) => {
                let left = at.saturating_duration_since(Instant::now());
                left.as_nanos().div_ceil(1_000_000).min(i32::MAX as u128) as i32
            }
        };
        // SAFETY: epoll_event is plain data; zeroes are valid.
        let mut events: [libc::epoll_event; 64] = unsafe { mem::zeroed() };
        let epfd = self.epfd.as_raw_fd();
        // Sleeps only while no completion is queued (else returns to dequeue it).
        let Some(n) = self.ready.wait(|| {
            // SAFETY: `events` is writable for 64 entries; the epoll descriptor is open.
            unsafe { libc::epoll_wait(epfd, events.as_mut_ptr(), 64, millis) }
        }) else {
            return Ok(true);
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            return if e.raw_os_error() == Some(libc::EINTR) {
                Ok(true)
            } else {
                Err(e)
            };
        }
        // The thread's own list, kept between calls (taken out: a nested call, were there one,
        // would start a new one).
        let mut done = DONE.try_with(Cell::take).unwrap_or_default();
        for ev in &events[..n as usize] {
            let data = ev.u64;
            if data == WAKE {
                let mut count = 0u64;
                // SAFETY: reads 8 bytes into a local, resetting the eventfd.
                unsafe { libc::read(self.wake.as_raw_fd(), (&raw mut count).cast(), 8) };
            } else {
                self.drive(data as RawFd, ev.events, &mut done);
            }
        }
        self.push_ready(done.drain(..));
        keep(&DONE, done);
        Ok(n > 0 || deadline.is_none_or(|at| Instant::now() < at))
    }
}

thread_local! {
    /// The completions one `epoll_wait` of this thread produced, before they are queued: the
    /// list is kept, so that a wait allocates nothing.
    static DONE: Cell<Vec<Completion>> = const { Cell::new(Vec::new()) };
    /// `get_completion`'s list of one, kept likewise.
    static ONE: Cell<Vec<Completion>> = const { Cell::new(Vec::new()) };
}

/// Puts an emptied list back into its thread's `cell` for the next call, unless a burst made it
/// large (a list of more than [`KEPT_COMPLETIONS`] is freed).
fn keep(cell: &'static std::thread::LocalKey<Cell<Vec<Completion>>>, list: Vec<Completion>) {
    debug_assert!(list.is_empty());
    if list.capacity() <= KEPT_COMPLETIONS {
        // At thread exit the list is simply freed.
        let _ = cell.try_with(|c| c.set(list));
    }
}

/// The completion of a finished record. A gather send that fails or is cancelled part-way
/// says how much it sent, as a send does.
fn finish(op: Op, result: io::Result<usize>) -> Completion {
    let (kind, sent) = (op.kind, op.progress);
    let mut c = complete(op, result);
    if kind == OpKind::SendVectored && c.error.is_some() {
        c.bytes = sent;
    }
    c
}

/// A queued operation's completion as cancelled.
fn cancelled_now(op: Op) -> Completion {
    finish(op, Err(cancelled(libc::ECANCELED, None)))
}

/// The eventfd write that wakes one thread in `epoll_wait`.
impl Wake for Epoll {
    fn wake(&self) {
        let one = 1u64;
        // SAFETY: writes 8 bytes from `one` to our eventfd; a full counter (EAGAIN) already
        // means a pending wake-up.
        unsafe { libc::write(self.wake.as_raw_fd(), (&raw const one).cast(), 8) };
    }
}

/// The bytes a send or write has sent so far.
fn op_done(op: &Op) -> usize {
    match &op.data {
        OpData::Buffer { done, .. } => *done,
        _ => 0,
    }
}

/// Makes `fd`'s file description non-blocking if it is not (someone may have cleared the flag
/// since we last set it: the caller checks right before a call that has no per-call flag). The
/// flag is never cleared again (see the module docs).
fn ensure_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: F_GETFL on an open descriptor (attempts run while it has its table entry).
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(last_error());
    }
    if flags & libc::O_NONBLOCK != 0 {
        return Ok(());
    }
    // SAFETY: F_SETFL on an open descriptor: non-blocking, other flags kept.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(last_error());
    }
    Ok(())
}

/// A read into (or a write from) `len` bytes at `ptr` on a pipe, FIFO or terminal that cannot
/// block whatever the description's flags: `preadv2`/`pwritev2` at the current position with
/// `RWF_NOWAIT`; where that is refused (`EOPNOTSUPP`: terminals, some character devices), a
/// plain read or write after making the description non-blocking.
fn nowait_io(fd: RawFd, ptr: *mut u8, len: usize, write: bool) -> io::Result<usize> {
    let iov = libc::iovec {
        iov_base: ptr.cast(),
        iov_len: len,
    };
    let nowait = retry(|| {
        // SAFETY: `iov` describes `len` bytes of a buffer the caller's record owns (written by a
        // read, read by a write); offset -1 is the current position.
        unsafe {
            if write {
                libc::pwritev2(fd, &iov, 1, -1, libc::RWF_NOWAIT)
            } else {
                libc::preadv2(fd, &iov, 1, -1, libc::RWF_NOWAIT)
            }
        }
    });
    match nowait {
        Err(e) if crate::raw_os_error(&e) == Some(libc::EOPNOTSUPP) => {
            ensure_nonblocking(fd)?;
            retry(|| {
                // SAFETY: as above.
                unsafe {
                    if write {
                        libc::write(fd, ptr.cast(), len)
                    } else {
                        libc::read(fd, ptr.cast(), len)
                    }
                }
            })
        }
        other => other,
    }
}

/// Whether a connect issued earlier has finished: `SO_ERROR`, then whether there is a peer.
fn connect_result(fd: RawFd) -> io::Result<usize> {
    let err = socket_option(fd, libc::SO_ERROR)?;
    if err != 0 {
        return Err(from_errno(err));
    }
    // SAFETY: sockaddr_storage is plain data; getpeername writes at most `len` bytes into it.
    let mut addr: libc::sockaddr_storage = unsafe { mem::zeroed() };
    let mut len = mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: as above.
    if unsafe { libc::getpeername(fd, (&raw mut addr).cast(), &mut len) } < 0 {
        let e = last_error();
        return if e.raw_os_error() == Some(libc::ENOTCONN) {
            Err(from_errno(libc::EINPROGRESS))
        } else {
            Err(e)
        };
    }
    Ok(0)
}

impl Driver for Epoll {
    fn submit(&self, op: Box<Op>) -> OpId {
        self.submit_op(*op)
    }

    /// Tries the operation at once, on the stack; only one that must wait is boxed (in a
    /// recycled allocation, see [`Records`]) and queued.
    fn submit_op(&self, mut op: Op) -> OpId {
        let id = op.id; // an operation that ends here keeps the id it was made with
        if op.refused.is_some() {
            self.push_ready([complete(op, Ok(0))]);
            return id;
        }
        let mut fds = lock(&self.fds);
        let Fds { queues, records } = &mut *fds;
        let Some(q) = queues.get_mut(&op.fd) else {
            drop(fds);
            self.push_ready([complete(op, Err(from_errno(libc::EBADF)))]);
            return id;
        };
        if q.kind == Kind::File {
            drop(fds);
            let result = file_io(&mut op);
            self.push_ready([complete(op, result)]);
            return id;
        }
        let reads = matches!(
            op.kind,
            OpKind::Recv
                | OpKind::RecvVectored
                | OpKind::RecvFrom
                | OpKind::Readable
                | OpKind::Accept
                | OpKind::Read
        );
        let queue = if reads { &mut q.read } else { &mut q.write };
        if queue.is_empty() && !(reads && q.readable == Readable::Drained) {
            let wanted = op.spare().1;
            let attempt = Self::attempt(&mut op);
            if reads {
                q.readable.after_read(op.kind, wanted, &attempt);
            }
            if let Attempt::Done(result) = attempt {
                let result = q.reset.after(op.kind, op.datagram, result);
                drop(fds);
                self.push_ready([finish(op, result)]);
                return id;
            }
        }
        // It waits: the table gives it the id a cancel finds it by.
        let Some(id) = self.table.insert(id, |_| op.fd) else {
            drop(fds);
            self.push_ready([complete(op, Err(table::full()))]);
            return id;
        };
        op.id = id;
        queue.push_back(records.boxed(op));
        id
    }

    fn post(&self, op: Box<Op>) -> io::Result<OpId> {
        self.post_op(*op)
    }

    fn post_op(&self, op: Op) -> io::Result<OpId> {
        let id = op.id;
        self.push_ready([complete(op, Ok(0))]);
        Ok(id)
    }

    fn get_completion(&self, timeout: Option<Duration>) -> io::Result<Completion> {
        let mut one = ONE.try_with(Cell::take).unwrap_or_default();
        let got = self.get_completions(&mut one, 1, timeout);
        let popped = one.pop();
        keep(&ONE, one);
        got?;
        Ok(popped.expect("one completion"))
    }

    fn get_completions(
        &self,
        out: &mut Vec<Completion>,
        max: usize,
        timeout: Option<Duration>,
    ) -> io::Result<usize> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let max = max.max(1);
        loop {
            let n = self.pop_ready(out, max);
            if n > 0 {
                return Ok(n);
            }
            if !self.wait(deadline)? {
                let n = self.pop_ready(out, max);
                return if n > 0 {
                    Ok(n)
                } else {
                    Err(crate::error::timed_out())
                };
            }
        }
    }

    /// Takes the operation off its queue, wherever it is in it, and completes it as cancelled
    /// without trying it (see the module docs): the I/O it did before, if any, is all it does.
    fn cancel(&self, id: OpId) -> bool {
        let Some(fd) = self.table.with(id, |fd| *fd) else {
            return false;
        };
        let op = {
            let mut fds = lock(&self.fds);
            let Fds { queues, records } = &mut *fds;
            let Some(q) = queues.get_mut(&fd) else {
                return false;
            };
            let found = [&mut q.read, &mut q.write].into_iter().find_map(|queue| {
                let i = queue.iter().position(|op| op.id == id)?;
                queue.remove(i)
            });
            if found.is_some() {
                self.table.remove(id);
            }
            found.map(|op| records.unboxed(op))
        };
        let Some(op) = op else { return false };
        // Off its queue, no lock held: nothing may use the descriptor from here on.
        crate::failpoint::failpoint!("epoll::cancel");
        self.push_ready([cancelled_now(op)]);
        true
    }

    fn cancel_fd(&self, fd: RawFd) {
        let ops: Vec<Op> = {
            let mut fds = lock(&self.fds);
            let Fds { queues, records } = &mut *fds;
            let Some(q) = queues.get_mut(&fd) else { return };
            let ops: Vec<Box<Op>> = q.read.drain(..).chain(q.write.drain(..)).collect();
            for op in &ops {
                self.table.remove(op.id);
            }
            ops.into_iter().map(|op| records.unboxed(op)).collect()
        };
        self.push_ready(ops.into_iter().map(cancelled_now).collect::<Vec<_>>());
    }

    fn in_flight(&self) -> usize {
        self.table.len() + self.ready.len()
    }

    fn after_reset(
        &self,
        fd: RawFd,
        _order: &super::Order,
        kind: OpKind,
        datagram: bool,
        result: io::Result<usize>,
    ) -> io::Result<usize> {
        match lock(&self.fds).queues.get_mut(&fd) {
            Some(q) => q.reset.after(kind, datagram, result),
            None => result,
        }
    }

    fn associate(&self, fd: RawFd, nature: &super::Nature) -> io::Result<()> {
        let socket = nature.socket;
        // EPOLLPRI: urgent data ends read tracking (see the module docs).
        let events = (libc::EPOLLIN | libc::EPOLLOUT | libc::EPOLLRDHUP | libc::EPOLLPRI) as u32;
        let kind = match self.register(fd, fd as u64, events) {
            // Its flags are left as they are (see the module docs).
            Ok(()) => Kind::Stream,
            // Regular files: epoll refuses them; they are read and written at submission.
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => Kind::File,
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                return Err(crate::error::explained(
                    io::ErrorKind::AlreadyExists,
                    libc::EEXIST,
                    "the descriptor is already associated with this completion port",
                ));
            }
            Err(e) => return Err(e),
        };
        let readable = if kind == Kind::Stream && socket && is_tcp(fd) {
            Readable::Maybe
        } else {
            Readable::Always
        };
        lock(&self.fds).queues.insert(
            fd,
            Queues {
                kind,
                read: VecDeque::new(),
                write: VecDeque::new(),
                readable,
                reset: Reset::default(),
            },
        );
        Ok(())
    }

    /// Removes the descriptor's entry (under the lock every attempt holds, so none is running
    /// or will start), then deregisters it. Its flags are not touched: another descriptor of the
    /// same description may be in use (see the module docs).
    fn forget(&self, fd: RawFd) {
        let mut fds = lock(&self.fds);
        let Some(mut q) = fds.queues.remove(&fd) else {
            return;
        };
        // `Target::close` cancels first, so this is empty; were it not, each still completes.
        let left: Vec<Completion> = (q.read.drain(..).chain(q.write.drain(..)))
            .map(|op| {
                self.table.remove(op.id);
                cancelled_now(fds.records.unboxed(op))
            })
            .collect();
        drop(fds);
        self.push_ready(left);
        if q.kind == Kind::Stream {
            self.deregister(fd);
        }
    }
}

/// An int-valued `SOL_SOCKET` option of `fd`.
fn socket_option(fd: RawFd, name: libc::c_int) -> io::Result<libc::c_int> {
    let mut value: libc::c_int = 0;
    let mut len = mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: reads an int-sized option of a descriptor into a local of that size.
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            name,
            (&raw mut value).cast(),
            &mut len,
        )
    };
    if r < 0 {
        return Err(last_error());
    }
    Ok(value)
}

/// Whether `fd` is a TCP socket: an IPv4 or IPv6 stream socket whose protocol is TCP (not
/// SCTP's one-to-one style nor MPTCP, whose receives may stop short with data left).
fn is_tcp(fd: RawFd) -> bool {
    socket_option(fd, libc::SO_TYPE).ok() == Some(libc::SOCK_STREAM)
        && matches!(
            socket_option(fd, libc::SO_DOMAIN),
            Ok(libc::AF_INET | libc::AF_INET6)
        )
        && socket_option(fd, libc::SO_PROTOCOL).ok() == Some(libc::IPPROTO_TCP)
}

/// A read or write on a regular file, at submission.
fn file_io(op: &mut Op) -> io::Result<usize> {
    let (fd, offset) = (op.fd, op.offset as libc::off_t);
    match op.kind {
        OpKind::Read => {
            let (ptr, len) = op.spare();
            // SAFETY: `ptr` is the spare capacity of a buffer the record owns, `len` long.
            retry(|| unsafe { libc::pread(fd, ptr.cast(), len, offset) })
        }
        // Writes all of the buffer: one `pwrite` takes at most 2 GiB less a page, and may take
        // less (a full disk, a signal): continue until done, an error or a write of 0 bytes.
        OpKind::Write => loop {
            let (ptr, len) = op.unsent();
            let done = op_done(op);
            if len == 0 {
                break Ok(done);
            }
            let at = offset + done as libc::off_t;
            // SAFETY: `ptr` points at the unsent part of a buffer the record owns, `len` long.
            match retry(|| unsafe { libc::pwrite(fd, ptr.cast(), len, at) }) {
                Ok(0) => break Ok(done),
                Ok(n) => {
                    if let OpData::Buffer { done, .. } = &mut op.data {
                        *done += n;
                    }
                }
                // What was written is kept: `complete` reports the larger of the two.
                Err(e) => break Err(e),
            }
        },
        _ => Err(crate::error::misuse(
            io::ErrorKind::InvalidInput,
            "this operation needs a socket",
        )),
    }
}

#[cfg(test)]
mod tests {
    use std::{os::fd::AsRawFd, time::Duration};

    use super::{Driver, Epoll, Op, OpData, SPARE_RECORDS, is_tcp, lock};
    use crate::{OpId, OpKind};

    /// The records of operations that waited come back for the next ones, at most
    /// `SPARE_RECORDS` of them: a burst of receives that all wait, cancelled, leaves that many
    /// allocations, and the next receives that wait take them.
    #[test]
    fn records_of_waiting_operations_are_recycled_and_bounded() {
        let port = Epoll::new().unwrap();
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let fd = a.as_raw_fd();
        port.associate(fd, &super::super::nature(fd).unwrap())
            .unwrap();
        let recv = || {
            let buf = OpData::Buffer {
                buf: Vec::with_capacity(8),
                done: 0,
            };
            port.submit_op(Op::unboxed(OpId::next(), OpKind::Recv, 0, fd, 0, buf));
        };
        let spare = || lock(&port.fds).records.0.len();
        let burst = SPARE_RECORDS + 100;
        for _ in 0..burst {
            recv(); // nothing to receive: each waits
        }
        assert_eq!(port.in_flight(), burst);
        assert_eq!(spare(), 0);
        port.cancel_fd(fd);
        assert_eq!(spare(), SPARE_RECORDS, "the rest freed");
        let mut out = Vec::new();
        while out.len() < burst {
            port.get_completions(&mut out, burst, Some(Duration::from_secs(5)))
                .unwrap();
        }
        assert!(out.iter().all(|c| c.error.is_some()), "all cancelled");
        for _ in 0..10 {
            recv();
        }
        assert_eq!(spare(), SPARE_RECORDS - 10);
        port.cancel_fd(fd);
        port.forget(fd);
        assert_eq!(spare(), SPARE_RECORDS);
    }

    /// Only TCP gets the short-read tracking: another protocol's stream socket on IPv4 (MPTCP
    /// here, where the kernel has it; SCTP where loaded) is always tried.
    #[test]
    fn is_tcp_requires_the_tcp_protocol() {
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        assert!(is_tcp(tcp.as_raw_fd()));
        let (unix, _) = std::os::unix::net::UnixStream::pair().unwrap();
        assert!(!is_tcp(unix.as_raw_fd()));
        let mut tried = 0;
        for protocol in [libc::IPPROTO_MPTCP, libc::IPPROTO_SCTP] {
            let ty = socket2::Type::STREAM;
            let protocol = Some(socket2::Protocol::from(protocol));
            let Ok(other) = socket2::Socket::new(socket2::Domain::IPV4, ty, protocol) else {
                continue;
            };
            tried += 1;
            assert!(!is_tcp(other.as_raw_fd()), "{protocol:?} counted as TCP");
        }
        eprintln!("non-TCP stream protocols available: {tried}");
    }
}
