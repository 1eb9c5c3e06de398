//! The Linux backends: completion ports over io_uring, or emulated over epoll where io_uring is
//! unavailable.
//!
//! `Port` builds operation records (shared by both backends, see `op.rs`) and hands them to a
//! `Driver`. `PROACTOR_BACKEND=epoll` forces the epoll fallback and `PROACTOR_BACKEND=io_uring`
//! forbids it; by default io_uring is used when the kernel offers it (Linux 5.19 or later, not
//! disabled by `kernel.io_uring_disabled` or a seccomp profile) and epoll otherwise, with one log
//! line saying which runs.

mod epoll;
mod error;
mod files;
mod op;
mod ring;
mod uring;

use std::{
    fs::File,
    io,
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::{
        fd::{AsRawFd, OwnedFd, RawFd},
        unix::net::{UnixListener, UnixStream},
    },
    sync::{Arc, Weak, atomic::AtomicU64, atomic::Ordering},
    time::Duration,
};

use op::{Dir, Op, OpData, Order};

pub(crate) use crate::life::Life;
pub(crate) use ring::Ring;

use crate::{
    Completion, OpId, OpKind,
    handle::{Associate, Sealed},
};

/// An OS object's raw identity: a file descriptor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RawIo(RawFd);

/// What a backend does with operation records.
pub(crate) trait Driver: Send + Sync {
    /// Starts an operation; every outcome ends as one completion. Returns its id: the
    /// record's, or a new one if the driver's table gave it one.
    fn submit(&self, op: Box<Op>) -> OpId;
    /// Queues a posted packet; returns its id (as `submit`).
    fn post(&self, op: Box<Op>) -> io::Result<OpId>;
    /// Starts an operation whose record is not yet on the heap (what `Port` submits): boxed
    /// here, unless the backend boxes only the records that must wait (epoll).
    fn submit_op(&self, op: Op) -> OpId {
        self.submit(Box::new(op))
    }
    /// Queues a posted packet whose record is not yet on the heap (what `Port` posts).
    fn post_op(&self, op: Op) -> io::Result<OpId> {
        self.post(Box::new(op))
    }
    fn get_completion(&self, timeout: Option<Duration>) -> io::Result<Completion>;
    fn get_completions(
        &self,
        out: &mut Vec<Completion>,
        max: usize,
        timeout: Option<Duration>,
    ) -> io::Result<usize>;
    /// Asks to cancel one operation; `false` if it is no longer in flight.
    fn cancel(&self, id: OpId) -> bool;
    /// Cancels every operation on `fd`, just before its owner closes it.
    fn cancel_fd(&self, fd: RawFd);
    /// Cancels every operation on `fd`, which stays open (`Iocp::cancel_all`).
    fn cancel_all(&self, fd: RawFd) {
        self.cancel_fd(fd);
    }
    fn in_flight(&self) -> usize;
    /// Prepares `fd` for operations (the epoll backend registers it).
    fn associate(&self, fd: RawFd, nature: &Nature) -> io::Result<()>;
    /// Forgets `fd` before its owner closes it.
    fn forget(&self, fd: RawFd);
    /// Completes, as cancelled, the operations waiting in the lanes of a handle that is
    /// closing (called holding its open guard, before `cancel_fd`): they never start.
    fn withdraw_waiting(&self, _order: &Order) {}
    /// `result` of an operation of `kind` the caller made itself on `fd` (the pooled receive of
    /// a `LocalPort`'s shared-port engine), through what the handle's operations know of a
    /// reset (`op::Reset`): kept in its lanes' `order` unless the driver keeps it by descriptor.
    fn after_reset(
        &self,
        _fd: RawFd,
        order: &Order,
        kind: OpKind,
        datagram: bool,
        result: io::Result<usize>,
    ) -> io::Result<usize> {
        order.after_reset(kind, datagram, result)
    }
}

/// What operations need to know about an associated handle.
pub(crate) struct Target {
    pub(crate) context: usize,
    raw: RawIo,
    port: u64,
    socket: bool,
    /// A stream (a stream socket, a pipe, a terminal), not a regular file or block device at
    /// offsets nor a datagram socket: its sends and its receives each run one at a time, in
    /// submission order, on io_uring (see `Order`).
    stream: bool,
    /// A socket that keeps message boundaries (datagram, seqpacket, raw, RDM): `MSG_TRUNC`
    /// reports a truncated message, a send is one message, and an empty send is a message.
    pub(crate) datagram: bool,
    driver: Weak<dyn Driver>,
    life: Arc<Life>,
    /// The handle's stream lanes (io_uring).
    order: Arc<Order>,
}

impl Target {
    /// Cancels everything in flight on the handle, then closes `io`, its object (io_uring
    /// keeps a closed descriptor's file alive while operations use it, so without the cancel a
    /// pending receive would outlive the close).
    pub(crate) fn close<T>(&self, io: T) {
        self.life.close(|| {
            if let Some(driver) = self.driver.upgrade() {
                driver.withdraw_waiting(&self.order);
                driver.cancel_fd(self.raw.0);
                driver.forget(self.raw.0);
            }
        });
        drop(io);
    }

    /// `result` of a receive the caller made itself on the handle, as its operations' would be:
    /// the end of the stream after one of them reported the peer's reset is the reset (see
    /// `op::Reset`).
    pub(crate) fn after_reset(&self, kind: OpKind, result: io::Result<usize>) -> io::Result<usize> {
        match self.driver.upgrade() {
            Some(driver) => {
                driver.after_reset(self.raw.0, &self.order, kind, self.datagram, result)
            }
            None => result,
        }
    }
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("context", &self.context)
            .field("fd", &self.raw.0)
            .finish()
    }
}

/// The completion port: a backend and the port's identity.
pub(crate) struct Port {
    driver: Arc<dyn Driver>,
    id: u64,
    backend: &'static str,
    /// The driver runs stream operations one at a time per direction (io_uring: the kernel
    /// would run them concurrently; epoll keeps its own per-descriptor queues).
    ordered: bool,
}

/// Which backend `PROACTOR_BACKEND` asks for.
pub(crate) fn requested_backend() -> io::Result<Option<&'static str>> {
    match std::env::var("PROACTOR_BACKEND").as_deref() {
        Err(_) | Ok("") => Ok(None),
        Ok("io_uring") => Ok(Some("io_uring")),
        Ok("epoll") => Ok(Some("epoll")),
        Ok(other) => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("PROACTOR_BACKEND={other}: expected io_uring or epoll"),
        )),
    }
}

/// `PROACTOR_SQPOLL=<idle milliseconds>`: the shared ports submit through a kernel polling
/// thread. A value that is not a number is an error whichever backend runs (it once sent the
/// port to the epoll fallback with an INFO line, so a typo went unnoticed).
pub(crate) fn requested_sqpoll() -> io::Result<Option<u32>> {
    match std::env::var("PROACTOR_SQPOLL") {
        Err(_) => Ok(None),
        Ok(v) if v.is_empty() => Ok(None),
        Ok(v) => v.parse::<u32>().map(Some).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "PROACTOR_SQPOLL={v}: expected the polling thread's idle time in milliseconds"
                ),
            )
        }),
    }
}

/// The setups a ring of a [`LocalPort`](crate::LocalPort)'s own may have, best first (what
/// `LocalPort::setup` says).
pub(crate) const RING_SETUPS: [&str; 3] = ["single_issuer+defer_taskrun", "coop_taskrun", "plain"];

/// `PROACTOR_RING_SETUP=<setup>`: a `LocalPort`'s ring takes the best setup the kernel accepts
/// from that one down ([`RING_SETUPS`]), as on a kernel that refuses the better ones (tests
/// run the fallbacks this way). Unset or empty: from the best. Another value is an error
/// whichever backend or port runs, as for `PROACTOR_SQPOLL`.
pub(crate) fn requested_ring_setup() -> io::Result<usize> {
    match std::env::var("PROACTOR_RING_SETUP") {
        Err(_) => Ok(0),
        Ok(v) if v.is_empty() => Ok(0),
        Ok(v) => RING_SETUPS.iter().position(|&s| s == v).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "PROACTOR_RING_SETUP={v}: expected one of {}",
                    RING_SETUPS.join(", ")
                ),
            )
        }),
    }
}

/// `PROACTOR_RING_RECV_LIMIT=off`: a `LocalPort`'s ring leaves the multishot receive's byte
/// limit unused and receives as on a kernel without it (before 6.17: one single-shot receive
/// per pool buffer; tests run that path this way). Unset or empty: the limit where the kernel
/// has it. Another value is an error whichever backend or port runs.
pub(crate) fn requested_recv_limit() -> io::Result<bool> {
    match std::env::var("PROACTOR_RING_RECV_LIMIT") {
        Err(_) => Ok(true),
        Ok(v) if v.is_empty() => Ok(true),
        Ok(v) if v == "off" => Ok(false),
        Ok(v) => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("PROACTOR_RING_RECV_LIMIT={v}: expected off (or nothing)"),
        )),
    }
}

/// Checks every `PROACTOR_*` tuning variable (`PROACTOR_SQPOLL`, `PROACTOR_RING_SETUP`,
/// `PROACTOR_RING_RECV_LIMIT`): a value none of them takes is an error from every port's
/// creation, whichever engine would have used it.
pub(crate) fn check_requests() -> io::Result<()> {
    requested_sqpoll()?;
    requested_ring_setup()?;
    requested_recv_limit()?;
    Ok(())
}

impl Port {
    pub(crate) fn new(_concurrency: u32) -> io::Result<Port> {
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        check_requests()?;
        let (driver, backend): (Arc<dyn Driver>, _) = match requested_backend()? {
            Some("epoll") => (Arc::new(epoll::Epoll::new()?), "epoll"),
            Some(_) => (Arc::new(uring::Uring::new()?), "io_uring"),
            None => match uring::Uring::new() {
                Ok(u) => (Arc::new(u), "io_uring"),
                Err(e) => {
                    log_backend("epoll", Some(&e));
                    (Arc::new(epoll::Epoll::new()?), "epoll")
                }
            },
        };
        log_backend(backend, None);
        tracing::debug!(backend, port = id, "created completion port");
        Ok(Port {
            driver,
            id,
            backend,
            ordered: backend == "io_uring",
        })
    }

    /// The name of the backend this port runs on.
    pub(crate) fn backend(&self) -> &'static str {
        self.backend
    }

    pub(crate) fn associate(
        &self,
        raw: RawIo,
        _foreign: bool,
        context: usize,
    ) -> io::Result<Target> {
        let nature = nature(raw.0)?;
        self.driver.associate(raw.0, &nature)?;
        let Nature {
            socket,
            stream,
            datagram,
            ..
        } = nature;
        Ok(Target {
            context,
            raw,
            port: self.id,
            socket,
            stream,
            datagram,
            driver: Arc::downgrade(&self.driver),
            life: Arc::new(Life::new()),
            order: Arc::new(Order::default()),
        })
    }

    pub(crate) fn post(&self, context: usize, value: usize) -> io::Result<OpId> {
        self.driver.post_op(Op::unboxed(
            OpId::next(),
            OpKind::Post,
            context,
            -1,
            0,
            OpData::Post(value),
        ))
    }

    pub(crate) fn get_completion(&self, timeout: Option<Duration>) -> io::Result<Completion> {
        self.driver.get_completion(timeout)
    }

    pub(crate) fn get_completions(
        &self,
        out: &mut Vec<Completion>,
        max: usize,
        timeout: Option<Duration>,
    ) -> io::Result<usize> {
        self.driver.get_completions(out, max, timeout)
    }

    /// Builds the record for an operation on `target` and submits it, or refuses it.
    fn start(
        &self,
        target: &Target,
        user: usize,
        kind: OpKind,
        offset: u64,
        data: OpData,
        needs_socket: bool,
    ) -> OpId {
        let mut op = Op::unboxed(
            OpId::next(),
            kind,
            target.context,
            target.raw.0,
            offset,
            data,
        );
        op.user = user;
        op.datagram = target.datagram;
        if target.port != self.id {
            op.refused = Some(crate::error::other_port());
        } else if needs_socket && !target.socket {
            op.refused = Some(crate::error::needs_socket());
        } else if nothing_to_receive(&mut op) {
            op.refused = Some(crate::error::no_spare_capacity());
        } else if matches!(kind, OpKind::Read | OpKind::Write)
            && crate::error::refused_range(offset, range_len(&mut op))
        {
            op.refused = Some(crate::error::offset_too_large());
        } else if op.datagram && too_many_buffers(&op) {
            // One datagram per call, and a call takes at most IOV_MAX buffers: sending the
            // rest in a second call would split the message (as the kernel would refuse it),
            // and a receive past them would cut it though the buffers have room.
            op.refused = Some(error::from_errno(libc::EMSGSIZE));
        }
        let ordered =
            self.ordered && target.stream && op.refused.is_none() && Dir::of(kind).is_some();
        if ordered {
            op.order = Some(target.order.clone());
        }
        if ordered || Op::may_continue(kind) {
            // A stream operation hands its lane on under the handle's open guard.
            op.life = Some(target.life.clone());
        }
        self.driver.submit_op(op)
    }

    pub(crate) fn recv(&self, target: &Target, user: usize, buf: Vec<u8>) -> OpId {
        self.start(
            target,
            user,
            OpKind::Recv,
            0,
            OpData::Buffer { buf, done: 0 },
            true,
        )
    }
    pub(crate) fn recv_vectored(&self, target: &Target, user: usize, bufs: Vec<Vec<u8>>) -> OpId {
        self.start(
            target,
            user,
            OpKind::RecvVectored,
            0,
            op::vectored(bufs, true),
            true,
        )
    }
    pub(crate) fn readable(&self, target: &Target, user: usize) -> OpId {
        self.start(target, user, OpKind::Readable, 0, OpData::Readable, true)
    }
    pub(crate) fn send(&self, target: &Target, user: usize, buf: Vec<u8>) -> OpId {
        self.start(
            target,
            user,
            OpKind::Send,
            0,
            OpData::Buffer { buf, done: 0 },
            true,
        )
    }
    pub(crate) fn send_vectored(&self, target: &Target, user: usize, bufs: Vec<Vec<u8>>) -> OpId {
        self.start(
            target,
            user,
            OpKind::SendVectored,
            0,
            op::vectored(bufs, false),
            true,
        )
    }
    pub(crate) fn recv_from(&self, target: &Target, user: usize, buf: Vec<u8>) -> OpId {
        self.start(
            target,
            user,
            OpKind::RecvFrom,
            0,
            op::datagram_recv(buf),
            true,
        )
    }
    pub(crate) fn send_to(
        &self,
        target: &Target,
        user: usize,
        buf: Vec<u8>,
        addr: SocketAddr,
    ) -> OpId {
        self.start(
            target,
            user,
            OpKind::SendTo,
            0,
            op::datagram_send(buf, addr),
            true,
        )
    }
    pub(crate) fn read_at(&self, target: &Target, user: usize, buf: Vec<u8>, offset: u64) -> OpId {
        self.start(
            target,
            user,
            OpKind::Read,
            offset,
            OpData::Buffer { buf, done: 0 },
            false,
        )
    }
    pub(crate) fn write_at(&self, target: &Target, user: usize, buf: Vec<u8>, offset: u64) -> OpId {
        self.start(
            target,
            user,
            OpKind::Write,
            offset,
            OpData::Buffer { buf, done: 0 },
            false,
        )
    }
    pub(crate) fn accept(&self, target: &Target, user: usize) -> OpId {
        let data = OpData::Accept {
            restarts: 0,
            peer: op::PeerAddr::new(),
        };
        self.start(target, user, OpKind::Accept, 0, data, true)
    }
    pub(crate) fn connect(&self, target: &Target, user: usize, addr: SocketAddr) -> OpId {
        let data = OpData::Connect {
            addr: Box::new(addr.into()),
        };
        self.start(target, user, OpKind::Connect, 0, data, true)
    }

    pub(crate) fn ioctl(
        &self,
        target: &Target,
        user: usize,
        _code: u32,
        input: Vec<u8>,
        output: Vec<u8>,
    ) -> OpId {
        let data = OpData::Ioctl { input, output };
        self.unsupported(
            target,
            user,
            OpKind::Ioctl,
            data,
            "ioctl control codes are Windows' (WSAIoctl, DeviceIoControl)",
        )
    }

    pub(crate) fn transmit_file(
        &self,
        target: &Target,
        user: usize,
        _file: &File,
        _offset: u64,
        _len: u32,
    ) -> OpId {
        self.unsupported(
            target,
            user,
            OpKind::TransmitFile,
            OpData::Readable,
            "TransmitFile is Windows'",
        )
    }

    pub(crate) fn disconnect(&self, target: &Target, user: usize) -> OpId {
        self.unsupported(
            target,
            user,
            OpKind::Disconnect,
            OpData::Readable,
            "DisconnectEx is Windows' (use shutdown)",
        )
    }

    /// An operation Linux has no equivalent for: it completes with `Unsupported`.
    fn unsupported(
        &self,
        target: &Target,
        user: usize,
        kind: OpKind,
        data: OpData,
        what: &str,
    ) -> OpId {
        let mut op = Op::unboxed(OpId::next(), kind, target.context, target.raw.0, 0, data);
        op.user = user;
        op.refused = Some(io::Error::new(
            io::ErrorKind::Unsupported,
            format!("{what}: not available on Linux"),
        ));
        self.driver.submit_op(op)
    }

    pub(crate) fn cancel(&self, id: OpId) -> io::Result<()> {
        if self.driver.cancel(id) {
            Ok(())
        } else {
            Err(crate::error::not_cancellable())
        }
    }

    pub(crate) fn cancel_all(&self, target: &Target) -> io::Result<()> {
        if target.port != self.id {
            return Err(crate::error::other_port());
        }
        self.driver.cancel_all(target.raw.0);
        Ok(())
    }

    pub(crate) fn in_flight(&self) -> usize {
        self.driver.in_flight()
    }
}

/// What a descriptor is, as the backends treat it.
pub(crate) struct Nature {
    /// A socket.
    pub(crate) socket: bool,
    /// Bytes in order with no offsets (not a file or block device, not a datagram socket): its
    /// sends and its receives each run one at a time, in submission order.
    pub(crate) stream: bool,
    /// A socket that keeps message boundaries (datagram, seqpacket, raw).
    pub(crate) datagram: bool,
    /// Its open file's identity (device, inode), which its clones share (`files.rs`).
    pub(crate) file: files::FileId,
}

/// What descriptor `fd` is (`fstat`, then `SO_TYPE` for a socket); `InvalidInput` with the OS
/// code for a number that names no open descriptor.
pub(crate) fn nature(fd: RawFd) -> io::Result<Nature> {
    // SAFETY: fstat on a descriptor number only reads its status into `st`.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: as above; `st` is writable.
    if unsafe { libc::fstat(fd, &mut st) } != 0 {
        return Err(crate::error::explained(
            io::ErrorKind::InvalidInput,
            io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EBADF),
            "invalid or closed handle",
        ));
    }
    let socket = st.st_mode & libc::S_IFMT == libc::S_IFSOCK;
    let ty = if socket { socket_type(fd) } else { None };
    let stream = match st.st_mode & libc::S_IFMT {
        libc::S_IFREG | libc::S_IFBLK => false,
        libc::S_IFSOCK => ty != Some(libc::SOCK_DGRAM),
        _ => true,
    };
    let datagram = socket && ty.is_some_and(|t| t != libc::SOCK_STREAM);
    Ok(Nature {
        socket,
        stream,
        datagram,
        file: (st.st_dev, st.st_ino),
    })
}

/// The type of socket `fd` (`SOCK_STREAM`, `SOCK_DGRAM`, ...), if the kernel says.
pub(crate) fn socket_type(fd: RawFd) -> Option<i32> {
    let mut ty: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `ty`, an int, and its length into `len`.
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_TYPE,
            (&raw mut ty).cast(),
            &mut len,
        )
    };
    (r == 0).then_some(ty)
}

/// Whether a gather send or scatter receive has more buffers than one call takes
/// (`IOV_MAX`): refused for a datagram, which one call sends or receives whole.
pub(crate) fn too_many_buffers(op: &Op) -> bool {
    matches!(op.kind, OpKind::SendVectored | OpKind::RecvVectored)
        && matches!(&op.data, OpData::Buffers { bufs, .. } if bufs.len() > libc::UIO_MAXIOV as usize)
}

/// The bytes a read (its spare capacity) or a write (its buffer) covers from its offset.
pub(crate) fn range_len(op: &mut Op) -> usize {
    match (op.kind, &op.data) {
        (OpKind::Write, OpData::Buffer { buf, .. }) => buf.len(),
        _ => op.spare().1,
    }
}

/// Whether a receive or read has no spare capacity to receive into.
pub(crate) fn nothing_to_receive(op: &mut Op) -> bool {
    match op.kind {
        OpKind::Recv | OpKind::Read | OpKind::RecvFrom => op.spare().1 == 0,
        OpKind::RecvVectored => {
            matches!(&op.data, OpData::Buffers { bufs, .. } if bufs.iter().all(|b| b.capacity() == b.len()))
        }
        _ => false,
    }
}

/// Says once per process which backend runs, and why when it is the fallback.
pub(crate) fn log_backend(backend: &str, why: Option<&io::Error>) {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| match why {
        Some(e) => tracing::info!(backend, reason = %e, "io_uring unavailable: completion ports run on epoll"),
        None => tracing::info!(backend, "completion ports run on {backend}"),
    });
}

macro_rules! fd_objects {
    ($($t:ty),*) => {$(
        impl Sealed for $t {
            fn raw_io(&self) -> RawIo {
                RawIo(self.as_raw_fd())
            }
        }
        impl Associate for $t {}
    )*};
}

fd_objects!(
    TcpStream,
    TcpListener,
    UdpSocket,
    File,
    OwnedFd,
    socket2::Socket,
    UnixListener,
    UnixStream
);

/// Receives what is already there, without waiting: the second half of a pooled receive on
/// the epoll engine (readiness first). `MSG_DONTWAIT` leaves the descriptor's mode alone.
///
/// # Safety
///
/// `dst` must be valid for writes of `len` bytes.
pub(crate) unsafe fn recv_now(raw: RawIo, dst: *mut u8, len: usize) -> io::Result<usize> {
    // SAFETY: the caller guarantees `dst` is writable for `len` bytes.
    let n = unsafe { libc::recv(raw.0, dst.cast(), len, libc::MSG_DONTWAIT) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}
