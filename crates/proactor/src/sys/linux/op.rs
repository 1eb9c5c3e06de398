//! The operation record both Linux backends use, and how a result becomes a completion.
//!
//! A record owns everything the kernel may read or write while the operation runs: the buffers
//! (whose heap memory never moves while owned), the `iovec`s and `msghdr` of vectored operations
//! and the address of a connect, each boxed so that moving the record moves none of them.

use std::{
    collections::VecDeque,
    io, mem,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6, TcpStream},
    os::{
        fd::{FromRawFd, RawFd},
        unix::net::UnixStream,
    },
    sync::{
        Arc, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicBool, Ordering},
    },
};

use super::Life;
use crate::{
    Accepted, Completion, OpId, OpKind,
    completion::{Output, grow_by, grow_vectored_by},
    op::LiveCount,
};

/// What an operation owns.
pub(crate) enum OpData {
    /// A posted packet and its value.
    Post(usize),
    /// A receive, send, read or write; `done` counts what a send already sent.
    Buffer { buf: Vec<u8>, done: usize },
    /// A vectored receive or send, with the `iovec`s and `msghdr` the kernel reads.
    Buffers {
        bufs: Vec<Vec<u8>>,
        iov: Vec<libc::iovec>,
        msg: Box<libc::msghdr>,
    },
    /// A zero-byte receive: a readiness wait.
    Readable,
    /// An accept; `restarts` counts clients that went away before they were accepted; `peer`
    /// is where the kernel writes the client's address.
    Accept { restarts: u32, peer: Box<PeerAddr> },
    /// A connect and its address.
    Connect { addr: Box<socket2::SockAddr> },
    /// A datagram receive: the buffer, the `msghdr` and `iovec` the kernel reads, and where it
    /// writes the source address.
    RecvFrom {
        buf: Vec<u8>,
        msg: Box<libc::msghdr>,
        /// Read by the kernel through `msg`; boxed so it never moves.
        #[allow(dead_code)]
        iov: Box<libc::iovec>,
        from: Box<PeerAddr>,
    },
    /// A datagram send: the buffer, its `msghdr` and `iovec`, and the destination.
    SendTo {
        buf: Vec<u8>,
        msg: Box<libc::msghdr>,
        /// Read by the kernel through `msg`; boxed so they never move.
        #[allow(dead_code)]
        iov: Box<libc::iovec>,
        #[allow(dead_code)]
        to: Box<socket2::SockAddr>,
    },
    /// An ioctl's buffers (refused on Linux: they come back unused).
    Ioctl { input: Vec<u8>, output: Vec<u8> },
}

/// One operation.
pub(crate) struct Op {
    pub(crate) id: OpId,
    pub(crate) kind: OpKind,
    pub(crate) context: usize,
    /// The operation's own user value ([`crate::Submit::user`]), handed back by its completion.
    pub(crate) user: usize,
    pub(crate) fd: RawFd,
    pub(crate) offset: u64,
    /// Set when the operation was refused before reaching the kernel.
    pub(crate) refused: Option<io::Error>,
    /// Bytes of a vectored send already sent (both backends); for the epoll backend, 1 once a
    /// connect was issued, or the clients an accept saw go away.
    pub(crate) progress: usize,
    /// The descriptor is a socket that keeps message boundaries (datagram, seqpacket): a
    /// datagram receive passes `MSG_TRUNC` (on a stream socket that flag discards the data
    /// without copying it), a send is one call, whatever its length.
    pub(crate) datagram: bool,
    /// Whether the handle is still open, for operations the io_uring backend may re-submit from
    /// the completion path (the rest of a send or write, an accept after a client reset): set
    /// for those kinds only (see `Op::may_continue`).
    pub(crate) life: Option<Arc<Life>>,
    /// The handle's stream lanes, for a stream operation the io_uring backend runs one at a
    /// time per direction (see `Order`); `Some` while the operation holds or waits for its
    /// lane, `None` for every other operation and once a waiting one is withdrawn.
    pub(crate) order: Option<Arc<Order>>,
    pub(crate) data: OpData,
    _live: LiveCount,
}

// SAFETY: the raw pointers inside (`iovec`s, `msghdr`) point into memory the record owns; they
// have no thread affinity, and the backends hand a record to one thread at a time.
unsafe impl Send for Op {}

impl Op {
    pub(crate) fn new(
        id: OpId,
        kind: OpKind,
        context: usize,
        fd: RawFd,
        offset: u64,
        data: OpData,
    ) -> Box<Op> {
        Box::new(Op::unboxed(id, kind, context, fd, offset, data))
    }

    /// The record itself, not yet on the heap: for the epoll backend, which boxes only the
    /// records that wait, in allocations it recycles.
    pub(crate) fn unboxed(
        id: OpId,
        kind: OpKind,
        context: usize,
        fd: RawFd,
        offset: u64,
        data: OpData,
    ) -> Op {
        Op {
            id,
            kind,
            context,
            user: 0,
            fd,
            offset,
            refused: None,
            progress: 0,
            datagram: false,
            life: None,
            order: None,
            data,
            _live: LiveCount::new(),
        }
    }

    /// The spare capacity of a receive's or read's buffer: where the kernel writes.
    pub(crate) fn spare(&mut self) -> (*mut u8, usize) {
        match &mut self.data {
            OpData::Buffer { buf, .. } | OpData::RecvFrom { buf, .. } => {
                let spare = buf.spare_capacity_mut();
                (spare.as_mut_ptr().cast(), spare.len())
            }
            _ => (std::ptr::null_mut(), 0),
        }
    }

    /// Whether an operation of `kind` may be re-submitted from the completion path, and so
    /// needs its handle's open guard.
    pub(crate) fn may_continue(kind: OpKind) -> bool {
        matches!(
            kind,
            OpKind::Send | OpKind::SendVectored | OpKind::Write | OpKind::Accept
        )
    }

    /// Points a vectored send's `msghdr` at what is left after its first `self.progress` bytes
    /// and returns how many bytes that covers (0 once everything was sent).
    ///
    /// Rebuilt from the buffers each time, never advanced in place, so no position is counted
    /// twice: the buffers sent whole are skipped, the first `iovec` starts past the part of its
    /// buffer already sent, and at most `IOV_MAX` buffers are covered (the kernel refuses more
    /// with `EMSGSIZE`; the rest goes in a later call).
    pub(crate) fn aim_at_unsent(&mut self) -> usize {
        let OpData::Buffers { bufs, iov, msg } = &mut self.data else {
            return 0;
        };
        let mut skip = self.progress;
        let mut first = 0;
        while first < bufs.len() && skip >= bufs[first].len() {
            skip -= bufs[first].len();
            first += 1;
        }
        let end = bufs.len().min(first + IOV_MAX);
        let mut covered = 0;
        for i in first..end {
            let from = if i == first { skip } else { 0 };
            let rest = &bufs[i][from..];
            iov[i] = libc::iovec {
                iov_base: rest.as_ptr().cast_mut().cast(),
                iov_len: rest.len(),
            };
            covered += rest.len();
        }
        // `first` <= iov.len() (the buffers and iovecs are as many): in bounds or one past.
        msg.msg_iov = iov[first..].as_mut_ptr();
        msg.msg_iovlen = (end - first) as _;
        covered
    }

    /// What is left to send of a send's or write's buffer.
    pub(crate) fn unsent(&self) -> (*const u8, usize) {
        match &self.data {
            OpData::Buffer { buf, done } => (buf[*done..].as_ptr(), buf.len() - done),
            _ => (std::ptr::null(), 0),
        }
    }
}

/// The direction of a stream operation: its lane in the handle's `Order`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Dir {
    /// Receives, reads and readiness waits: they take the stream's bytes in turn.
    Read = 0,
    /// Sends and writes: they put their bytes into the stream in turn.
    Write = 1,
}

impl Dir {
    /// The lane an operation of `kind` on a stream (a connected stream socket, a pipe, a
    /// terminal; not a regular file, not a datagram socket) waits in; `None` for operations
    /// that run concurrently (accepts, connects, datagrams, posts, refused kinds).
    pub(crate) fn of(kind: OpKind) -> Option<Dir> {
        match kind {
            // `recv_from`/`send_to` on a stream socket are a receive and a send like the others
            // (on a datagram socket nothing is ordered: its handle is not a stream).
            OpKind::Recv
            | OpKind::RecvVectored
            | OpKind::Read
            | OpKind::Readable
            | OpKind::RecvFrom => Some(Dir::Read),
            OpKind::Send | OpKind::SendVectored | OpKind::Write | OpKind::SendTo => {
                Some(Dir::Write)
            }
            _ => None,
        }
    }
}

/// A handle's stream lanes (io_uring backend): per direction, whether an operation is in the
/// kernel and the operations waiting their turn, oldest first. An operation takes its lane at
/// submission if the lane is free, or waits; the one holding it hands it, when it ends for good
/// (not between the parts of a send), to the oldest waiting one, under the handle's open guard.
/// So on one stream, sends go out whole and in submission order and receives are filled in
/// submission order, as with overlapped I/O on Windows. Lock order: the handle's open guard,
/// then a lane, then a table shard, then the submission queue.
#[derive(Debug, Default)]
pub(crate) struct Order {
    lanes: [Mutex<Lane>; 2],
    /// An operation of the handle reported the peer's reset (see [`Reset`]): io_uring's
    /// operations, which carry the lanes, and the shared-port engine of a `LocalPort`, which
    /// holds its handles' `Target`s, remember it here.
    pub(crate) reset: AtomicBool,
}

/// One direction of a handle's stream.
#[derive(Debug, Default)]
pub(crate) struct Lane {
    /// An operation of this direction holds the lane (is in the kernel, or between two parts).
    pub(crate) busy: bool,
    /// Operations waiting for the lane, oldest first: their ids and record addresses. A waiting
    /// record is in the port's table but has no SQE; whoever takes it out of this queue (the
    /// hand-over, a cancel, the handle's close, the port's drop) owns it.
    pub(crate) waiting: VecDeque<(OpId, usize)>,
}

impl Order {
    /// `result` of an operation of `kind` on this handle, through the handle's [`Reset`].
    pub(crate) fn after_reset(
        &self,
        kind: OpKind,
        datagram: bool,
        result: io::Result<usize>,
    ) -> io::Result<usize> {
        let mut reset = Reset(self.reset.load(Ordering::Relaxed));
        let result = reset.after(kind, datagram, result);
        if reset.0 {
            self.reset.store(true, Ordering::Relaxed);
        }
        result
    }

    /// The lane of direction `dir`, locked.
    pub(crate) fn lane(&self, dir: Dir) -> MutexGuard<'_, Lane> {
        self.lanes[dir as usize]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// Whether an operation of a stream handle reported the peer's reset.
///
/// Linux reports a connection's reset to one call: the socket's pending error (`ECONNRESET`)
/// goes to whichever operation asks first (a send, say), and a receive after it finds the
/// stream's end, as after an orderly close. Passed on, that would tell a program that its peer
/// closed cleanly when it reset the connection (a reset is `ConnectionReset`, never the end of
/// the stream). So each engine keeps one of these per handle, and a receive that finds the end
/// of the stream after one of the handle's operations reported the reset reports the reset.
/// A reset no operation of this handle saw (the program's own call on the socket took it, or
/// another handle's of the same socket) is not known. Byte streams only: on a socket that keeps
/// message boundaries an empty message is one (a Unix datagram socket may be told
/// `ECONNRESET` when its peer goes, and goes on).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Reset(pub(crate) bool);

impl Reset {
    /// One of the handle's operations reported the peer's reset: remembered on a byte stream
    /// (`datagram` false).
    #[inline]
    pub(crate) fn seen(&mut self, datagram: bool) {
        if !datagram {
            self.0 = true;
        }
    }

    /// `result` of an operation of `kind` on a byte stream (`datagram` false: else `result` as
    /// it is): a reset is remembered; the end of the stream after one is the reset.
    pub(crate) fn after(
        &mut self,
        kind: OpKind,
        datagram: bool,
        result: io::Result<usize>,
    ) -> io::Result<usize> {
        if datagram {
            return result;
        }
        match result {
            Err(e) if e.raw_os_error() == Some(libc::ECONNRESET) => {
                self.seen(datagram);
                Err(e)
            }
            Ok(0) if self.0 && receives_bytes(kind) => {
                Err(super::error::from_errno(libc::ECONNRESET))
            }
            result => result,
        }
    }
}

/// Whether `kind` receives bytes, so that its `Ok(0)` is the end of a stream (a receive with no
/// room is refused before it starts).
pub(crate) fn receives_bytes(kind: OpKind) -> bool {
    matches!(
        kind,
        OpKind::Recv | OpKind::RecvVectored | OpKind::RecvFrom | OpKind::RecvPooled | OpKind::Read
    )
}

/// The most `iovec`s one `sendmsg` takes (`UIO_MAXIOV`).
const IOV_MAX: usize = libc::UIO_MAXIOV as usize;

/// Builds a datagram receive into the spare capacity of `buf`.
pub(crate) fn datagram_recv(mut buf: Vec<u8>) -> OpData {
    let spare = buf.spare_capacity_mut();
    let mut iov = Box::new(libc::iovec {
        iov_base: spare.as_mut_ptr().cast(),
        iov_len: spare.len(),
    });
    let mut from = PeerAddr::new();
    // SAFETY: msghdr is plain data for which zeroes mean "no address, no control data".
    let mut msg: Box<libc::msghdr> = Box::new(unsafe { mem::zeroed() });
    msg.msg_name = (&raw mut from.storage).cast();
    msg.msg_namelen = from.len;
    msg.msg_iov = &mut *iov;
    msg.msg_iovlen = 1;
    OpData::RecvFrom {
        buf,
        msg,
        iov,
        from,
    }
}

/// Builds a datagram send of `buf` to `to`.
pub(crate) fn datagram_send(mut buf: Vec<u8>, to: SocketAddr) -> OpData {
    let mut iov = Box::new(libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    });
    let to = Box::new(socket2::SockAddr::from(to));
    // SAFETY: msghdr is plain data for which zeroes mean "no address, no control data".
    let mut msg: Box<libc::msghdr> = Box::new(unsafe { mem::zeroed() });
    msg.msg_name = to.as_ptr().cast_mut().cast();
    msg.msg_namelen = to.len();
    msg.msg_iov = &mut *iov;
    msg.msg_iovlen = 1;
    OpData::SendTo { buf, msg, iov, to }
}

/// Builds the `iovec`s and `msghdr` of a vectored operation: over each buffer's spare capacity
/// for a receive, over its contents for a send.
pub(crate) fn vectored(mut bufs: Vec<Vec<u8>>, receive: bool) -> OpData {
    let mut iov: Vec<libc::iovec> = bufs
        .iter_mut()
        .map(|b| {
            if receive {
                let spare = b.spare_capacity_mut();
                libc::iovec {
                    iov_base: spare.as_mut_ptr().cast(),
                    iov_len: spare.len(),
                }
            } else {
                libc::iovec {
                    iov_base: b.as_mut_ptr().cast(),
                    iov_len: b.len(),
                }
            }
        })
        .collect();
    // SAFETY: msghdr is plain data for which zeroes mean "no address, no control data".
    let mut msg: Box<libc::msghdr> = Box::new(unsafe { mem::zeroed() });
    msg.msg_iov = iov.as_mut_ptr();
    msg.msg_iovlen = iov.len().min(IOV_MAX) as _;
    if receive {
        aim_at_room(&mut iov, &mut msg);
    }
    OpData::Buffers { bufs, iov, msg }
}

/// Points a gather receive's `msghdr` at no more than `IOV_MAX` of its iovecs, from the first
/// with room: the buffers before it take nothing, so one call fills the buffers in order, and
/// one that fills `IOV_MAX` of them is a short receive. The iovecs themselves (each buffer's
/// spare capacity) never change. A send is aimed by [`Op::aim_at_unsent`] instead.
pub(crate) fn aim_at_room(iov: &mut [libc::iovec], msg: &mut libc::msghdr) {
    let aimed = aimed(iov);
    msg.msg_iov = iov[aimed.start..].as_mut_ptr();
    msg.msg_iovlen = aimed.len() as _;
}

/// The iovecs [`aim_at_room`] aims a gather receive at: from the first with room, `IOV_MAX`
/// at most (`first` <= `iov.len()`: in bounds, or one past when there are no iovecs).
fn aimed(iov: &[libc::iovec]) -> std::ops::Range<usize> {
    let first = iov.iter().position(|v| v.iov_len > 0).unwrap_or(0);
    first..iov.len().min(first + IOV_MAX)
}

/// The receive flags that make a datagram's truncation show: `MSG_TRUNC` on a socket that
/// keeps message boundaries (the result is then the datagram's real length, which [`complete`]
/// compares with the room); none on a stream socket, where it would discard the bytes without
/// copying them.
pub(crate) fn truncation_shows(datagram: bool) -> i32 {
    if datagram { libc::MSG_TRUNC } else { 0 }
}

/// The error of a datagram cut to the receive's room: `EMSGSIZE`, with
/// [`is_truncated`](crate::is_truncated) true.
pub(crate) fn datagram_truncated() -> io::Error {
    crate::error::truncated(libc::EMSGSIZE, None)
}

/// What a datagram receive took: it passed `MSG_TRUNC`, so `real` is the datagram's real
/// length, and past `room` (what the receive had room for) the datagram was cut to `room`:
/// an error, as on Windows, that keeps what arrived.
fn datagram_cut(real: usize, room: usize, error: &mut Option<io::Error>) -> usize {
    if real > room {
        *error = Some(datagram_truncated());
        room
    } else {
        real
    }
}

/// Turns a finished record and its result (bytes, or an accepted fd) into the completion.
pub(crate) fn complete(op: Op, result: io::Result<usize>) -> Completion {
    let Op {
        id,
        kind,
        context,
        user,
        data,
        refused,
        progress,
        datagram,
        ..
    } = op;
    let result = match refused {
        Some(e) => Err(e),
        None => result,
    };
    let mut peer = None;
    let (mut bytes, mut error) = match result {
        Ok(n) => (n, None),
        Err(e) => (0, Some(e)),
    };
    let output = match data {
        OpData::Readable => {
            bytes = 0;
            Output::None
        }
        OpData::Post(value) => {
            bytes = value;
            Output::None
        }
        OpData::Buffer { mut buf, done } => {
            let received = error.is_none();
            if kind == OpKind::Recv && datagram && received {
                bytes = datagram_cut(bytes, buf.capacity() - buf.len(), &mut error);
            }
            if matches!(kind, OpKind::Recv | OpKind::Read) && received {
                // SAFETY: the kernel wrote `bytes` bytes at the start of the spare capacity
                // (a datagram's real length was cut to that above).
                unsafe { grow_by(&mut buf, bytes) };
            } else if matches!(kind, OpKind::Send | OpKind::Write) {
                bytes = done.max(bytes);
            }
            Output::Buffer(buf)
        }
        OpData::Buffers { mut bufs, iov, .. } => {
            let received = error.is_none();
            if kind == OpKind::RecvVectored && datagram && received {
                // What the receive was aimed at (`aim_at_room`), not every buffer's room.
                let room = iov[aimed(&iov)].iter().map(|v| v.iov_len).sum();
                bytes = datagram_cut(bytes, room, &mut error);
            }
            if kind == OpKind::RecvVectored && received {
                // SAFETY: recvmsg scatters `bytes` bytes over the spare capacities in order (a
                // datagram's real length was cut to what it was aimed at above).
                unsafe { grow_vectored_by(&mut bufs, bytes) };
            } else if kind == OpKind::SendVectored {
                bytes = progress.max(bytes); // also what a failed or cancelled send had sent
            }
            Output::buffers(bufs)
        }
        OpData::Accept { peer, .. } if error.is_none() => {
            let fd = bytes as RawFd;
            bytes = 0;
            let result = if i32::from(peer.storage.ss_family) == libc::AF_UNIX {
                // SAFETY: a successful accept returns a new descriptor that nothing else owns,
                // and the address family says it is a Unix-domain socket.
                accepted_unix(unsafe { UnixStream::from_raw_fd(fd) })
            } else {
                // SAFETY: a successful accept returns a new descriptor that nothing else owns.
                accepted(unsafe { TcpStream::from_raw_fd(fd) }, &peer)
            };
            match result {
                Ok(a) => a,
                Err(e) => {
                    error = Some(e);
                    Output::None
                }
            }
        }
        OpData::RecvFrom {
            mut buf,
            msg,
            mut from,
            ..
        } => {
            if error.is_none() {
                // MSG_TRUNC is passed on message sockets only; on a stream socket `bytes` is
                // at most the room anyway.
                bytes = datagram_cut(bytes, buf.capacity() - buf.len(), &mut error);
                // SAFETY: the receive succeeded, and the kernel copied min(real length, spare)
                // bytes at the start of the spare capacity: `bytes` is that, never more.
                unsafe { grow_by(&mut buf, bytes) };
                from.len = msg.msg_namelen;
                peer = from.decode().ok();
            }
            Output::Buffer(buf)
        }
        OpData::SendTo { buf, .. } => Output::Buffer(buf),
        OpData::Ioctl { input, output } => Output::ioctl(input, output),
        OpData::Accept { .. } | OpData::Connect { .. } => {
            bytes = 0;
            Output::None
        }
    };
    Completion {
        context,
        user,
        id,
        kind,
        more: false,
        bytes,
        error,
        output,
        peer,
    }
}

/// The client's address as `accept` wrote it: still known when the client has already reset.
pub(crate) struct PeerAddr {
    pub(crate) storage: libc::sockaddr_storage,
    pub(crate) len: libc::socklen_t,
}

impl PeerAddr {
    pub(crate) fn new() -> Box<PeerAddr> {
        // SAFETY: sockaddr_storage is plain data for which zeroes are valid.
        let storage = unsafe { mem::zeroed() };
        Box::new(PeerAddr {
            storage,
            len: mem::size_of::<libc::sockaddr_storage>() as _,
        })
    }

    fn decode(&self) -> io::Result<SocketAddr> {
        let s = &self.storage;
        match s.ss_family as i32 {
            libc::AF_INET if self.len as usize >= mem::size_of::<libc::sockaddr_in>() => {
                // SAFETY: the family says the storage holds a sockaddr_in, and it is large
                // and aligned enough for one.
                let a =
                    unsafe { &*(s as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
                let ip = Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr));
                Ok(SocketAddr::new(ip.into(), u16::from_be(a.sin_port)))
            }
            libc::AF_INET6 if self.len as usize >= mem::size_of::<libc::sockaddr_in6>() => {
                // SAFETY: as above, for sockaddr_in6.
                let a =
                    unsafe { &*(s as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
                let ip = Ipv6Addr::from(a.sin6_addr.s6_addr);
                let port = u16::from_be(a.sin6_port);
                Ok(SocketAddrV6::new(ip, port, a.sin6_flowinfo, a.sin6_scope_id).into())
            }
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "unsupported socket address",
            )),
        }
    }
}

fn accepted(stream: TcpStream, peer: &PeerAddr) -> io::Result<Output> {
    Ok(Output::accepted(Accepted {
        local_addr: stream.local_addr()?,
        peer_addr: peer.decode()?,
        stream,
    }))
}

/// A connection accepted on a Unix-domain listener, with its client's address (the kernel's
/// `getpeername`, which still answers after the client closed).
fn accepted_unix(stream: UnixStream) -> io::Result<Output> {
    let peer = stream.peer_addr()?;
    Ok(Output::accepted_unix(stream, peer))
}

/// An accept failure that means the client went away, not that the listener is broken.
pub(crate) fn is_client_reset(errno: i32) -> bool {
    matches!(errno, libc::ECONNABORTED | libc::ECONNRESET | libc::EPROTO)
}

/// How many clients in a row may go away before one accept reports it.
pub(crate) const ACCEPT_RESTARTS: u32 = 64;
