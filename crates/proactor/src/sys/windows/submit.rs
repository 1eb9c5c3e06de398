//! Each operation: how it is started on the kernel, and how its completion is finished.

use std::{io, mem, net::SocketAddr, net::TcpStream, ptr, sync::Arc};

use socket2::{SockAddr, SockRef, Socket, Type};
use windows_sys::Win32::{
    Foundation::{
        ERROR_BROKEN_PIPE, ERROR_CONNECTION_ABORTED, ERROR_HANDLE_EOF, ERROR_IO_PENDING,
        ERROR_MORE_DATA, ERROR_NETNAME_DELETED, ERROR_PIPE_CONNECTED, ERROR_UNEXP_NET_ERR,
        GetLastError,
    },
    Networking::WinSock::{
        AcceptEx, GetAcceptExSockaddrs, MSG_PEEK, SIO_GET_EXTENSION_FUNCTION_POINTER, SOCKADDR,
        SOCKET, TransmitFile, WSA_IO_PENDING, WSABUF, WSAECONNRESET, WSAEMSGSIZE, WSAGetLastError,
        WSAIoctl, WSARecv, WSARecvFrom, WSASend, WSASendTo,
    },
    Storage::FileSystem::{ReadFile, WriteFile},
    System::{IO::DeviceIoControl, Pipes::ConnectNamedPipe},
};

use super::{
    Life, RawIo, Route, Target, net,
    overlapped::{ACCEPT_ADDR_LEN, FromAddr, Op, OpBox, OpData, flags_of, overlapped},
    port::{Port, Started},
};
use crate::{
    Accepted, Completion, OpId, OpKind,
    completion::{Output, grow_by, grow_vectored_by},
    error::misuse,
};

/// The largest length one `WSABUF`, `ReadFile` or `WriteFile` takes; longer buffers are
/// transferred in part, as a partial count says.
fn clamp_len(len: usize) -> u32 {
    u32::try_from(len).unwrap_or(u32::MAX)
}

/// How a WinSock call that returns 0 or `SOCKET_ERROR` went.
fn wsa_started(rc: i32) -> Started {
    if rc == 0 {
        return Started::Done;
    }
    // SAFETY: reads the calling thread's last WinSock error, right after the failed call.
    match unsafe { WSAGetLastError() } {
        WSA_IO_PENDING => Started::Pending,
        code => Started::Failed(code as u32),
    }
}

/// How a call that returns a `BOOL` went; `wsa` for the WinSock extension functions.
fn bool_started(ok: i32, wsa: bool) -> Started {
    if ok != 0 {
        return Started::Done;
    }
    // SAFETY: reads the calling thread's last error, right after the failed call.
    let code = unsafe {
        if wsa {
            WSAGetLastError() as u32
        } else {
            GetLastError()
        }
    };
    if code == ERROR_IO_PENDING {
        Started::Pending
    } else {
        Started::Failed(code)
    }
}

fn socket_of(target: &Target) -> SOCKET {
    match target.raw {
        RawIo::Socket(s) => s,
        _ => 0, // `check` refused non-sockets before any caller gets here
    }
}

fn wsabuf_spare(buf: &mut Vec<u8>) -> WSABUF {
    let spare = buf.spare_capacity_mut();
    WSABUF {
        len: clamp_len(spare.len()),
        buf: spare.as_mut_ptr().cast(),
    }
}

fn wsabuf_data(buf: &[u8]) -> WSABUF {
    WSABUF {
        len: clamp_len(buf.len()),
        buf: buf.as_ptr().cast_mut(),
    }
}

/// The most buffers a datagram's vectored send or receive takes: one call of Linux's (its
/// `IOV_MAX`), so that the same call does the same on every backend (Wine, which passes them
/// to the host's call, reported a cut datagram with bytes it never wrote past that).
const DATAGRAM_BUFFERS: usize = 1024;

/// `WSABUF`s over a scatter receive's buffers (address and room of each) holding `u32::MAX`
/// bytes at most, the most one call moves and its `DWORD` count can say: past a buffer cut
/// short, the next ones are left out, so that what is received is always a prefix of the room
/// and the count says where it ends (a short receive). Each buffer alone clamped would skip
/// the rest of a longer one and go on with the next. (Sends of more are refused instead:
/// `send_bufs`.)
fn wsabufs_within_a_dword(bufs: impl Iterator<Item = (*mut u8, usize)>) -> Vec<WSABUF> {
    let mut left = u32::MAX as usize;
    let mut wsabufs = Vec::new();
    for (buf, len) in bufs {
        let take = len.min(left);
        wsabufs.push(WSABUF {
            len: take as u32,
            buf: buf.cast(),
        });
        left -= take;
        if take < len {
            break;
        }
    }
    wsabufs
}

impl Port {
    fn record(
        &self,
        target: &Target,
        user: usize,
        kind: OpKind,
        offset: u64,
        data: OpData,
    ) -> OpBox {
        let mut op = OpBox::new(
            &self.records,
            OpId::next(),
            kind,
            target.context,
            target.raw,
            offset,
            data,
        );
        op.user = user;
        if super::moves_bytes(kind) {
            op.keeps_open = target.deferred_close.clone();
        }
        op
    }

    /// `WSARecv` into the spare capacity of `buf`.
    pub(crate) fn recv(&self, target: &Target, user: usize, mut buf: Vec<u8>) -> OpId {
        let wsabuf = wsabuf_spare(&mut buf);
        let op = self.record(target, user, OpKind::Recv, 0, OpData::Buffer(buf));
        if let Some(err) = self.check(target, true) {
            return self.fail(op, err);
        }
        if wsabuf.len == 0 {
            return self.fail(op, crate::error::no_spare_capacity());
        }
        self.recv_bufs(target, op, &[wsabuf])
    }

    /// `WSARecv` into the spare capacity of each buffer in turn.
    pub(crate) fn recv_vectored(
        &self,
        target: &Target,
        user: usize,
        mut bufs: Vec<Vec<u8>>,
    ) -> OpId {
        let wsabufs = wsabufs_within_a_dword(bufs.iter_mut().map(|b| {
            let spare = b.spare_capacity_mut();
            (spare.as_mut_ptr().cast::<u8>(), spare.len())
        }));
        let op = self.record(target, user, OpKind::RecvVectored, 0, OpData::Buffers(bufs));
        if let Some(err) = self.check(target, true) {
            return self.fail(op, err);
        }
        if wsabufs.iter().all(|b| b.len == 0) {
            return self.fail(op, crate::error::no_spare_capacity());
        }
        if target.datagram && wsabufs.len() > DATAGRAM_BUFFERS {
            return self.fail(op, super::error::from_code(WSAEMSGSIZE as u32, None));
        }
        self.recv_bufs(target, op, &wsabufs)
    }

    /// A zero-byte `WSARecv`: completes when the socket has data, EOF or an error. On a socket
    /// that keeps message boundaries it peeks (`MSG_PEEK`): a zero-byte receive that took the
    /// datagram would drop it (cut to nothing, `WSAEMSGSIZE`), and the peek's `WSAEMSGSIZE`
    /// means a datagram waits (`complete` makes it `Ok(0)`).
    pub(crate) fn readable(&self, target: &Target, user: usize) -> OpId {
        let mut op = self.record(target, user, OpKind::Readable, 0, OpData::Readable);
        if let Some(err) = self.check(target, true) {
            return self.fail(op, err);
        }
        if target.datagram {
            op.flags = MSG_PEEK as u32;
        }
        self.recv_bufs(
            target,
            op,
            &[WSABUF {
                len: 0,
                buf: ptr::null_mut(),
            }],
        )
    }

    fn recv_bufs(&self, target: &Target, op: OpBox, wsabufs: &[WSABUF]) -> OpId {
        let socket = socket_of(target);
        self.start(&target.route, op, |raw| {
            // SAFETY: the socket is open (the caller borrows its Handle). The WSABUFs point into
            // buffers the record owns, whose heap memory stays put until the record is taken
            // back, which happens only after the kernel is done; WinSock captures the WSABUF
            // array itself during the call. The record's flags and OVERLAPPED live as long.
            let rc = unsafe {
                WSARecv(
                    socket,
                    wsabufs.as_ptr(),
                    wsabufs.len() as u32,
                    ptr::null_mut(),
                    flags_of(raw),
                    overlapped(raw),
                    None,
                )
            };
            wsa_started(rc)
        })
    }

    /// `WSASend` of all of `buf`.
    pub(crate) fn send(&self, target: &Target, user: usize, buf: Vec<u8>) -> OpId {
        let (wsabuf, len) = (wsabuf_data(&buf), buf.len());
        let op = self.record(target, user, OpKind::Send, 0, OpData::Buffer(buf));
        self.send_bufs(target, op, &[wsabuf], len)
    }

    /// `WSASend` of every buffer in turn.
    pub(crate) fn send_vectored(&self, target: &Target, user: usize, bufs: Vec<Vec<u8>>) -> OpId {
        let wsabufs: Vec<WSABUF> = bufs.iter().map(|b| wsabuf_data(b)).collect();
        let len = bufs.iter().fold(0usize, |n, b| n.saturating_add(b.len()));
        let count = bufs.len();
        let op = self.record(target, user, OpKind::SendVectored, 0, OpData::Buffers(bufs));
        if target.datagram && count > DATAGRAM_BUFFERS {
            return self.fail(op, super::error::from_code(WSAEMSGSIZE as u32, None));
        }
        self.send_bufs(target, op, &wsabufs, len)
    }

    /// `WSASend` of `wsabufs`, `len` bytes in all: more than one call moves is refused (its
    /// `WSABUF`s, clamped each, are then never sent).
    fn send_bufs(&self, target: &Target, op: OpBox, wsabufs: &[WSABUF], len: usize) -> OpId {
        if let Some(err) = self.check(target, true) {
            return self.fail(op, err);
        }
        if len > u32::MAX as usize {
            return self.fail(op, crate::error::too_long_for_one_call());
        }
        let socket = socket_of(target);
        self.start(&target.route, op, |raw| {
            // SAFETY: as for WSARecv: an open socket, buffers owned by the record until the
            // kernel is done, the WSABUF array captured during the call.
            let rc = unsafe {
                WSASend(
                    socket,
                    wsabufs.as_ptr(),
                    wsabufs.len() as u32,
                    ptr::null_mut(),
                    0,
                    overlapped(raw),
                    None,
                )
            };
            wsa_started(rc)
        })
    }

    /// `ReadFile` into the spare capacity of `buf`, at `offset`.
    pub(crate) fn read_at(
        &self,
        target: &Target,
        user: usize,
        mut buf: Vec<u8>,
        offset: u64,
    ) -> OpId {
        let spare = wsabuf_spare(&mut buf);
        let op = self.record(target, user, OpKind::Read, offset, OpData::Buffer(buf));
        if let Some(err) = self.check(target, false) {
            return self.fail(op, err);
        }
        if crate::error::refused_range(offset, spare.len as usize) {
            return self.fail(op, crate::error::offset_too_large());
        }
        if spare.len == 0 {
            return self.fail(op, crate::error::no_spare_capacity());
        }
        let handle = target.raw.handle();
        self.start(&target.route, op, |raw| {
            // SAFETY: the handle is open; the destination is the spare capacity of a buffer the
            // record owns until the kernel is done; the OVERLAPPED carries the offset.
            let ok = unsafe {
                ReadFile(
                    handle,
                    spare.buf,
                    spare.len,
                    ptr::null_mut(),
                    overlapped(raw),
                )
            };
            bool_started(ok, false)
        })
    }

    /// `WriteFile` of all of `buf`, at `offset`.
    pub(crate) fn write_at(&self, target: &Target, user: usize, buf: Vec<u8>, offset: u64) -> OpId {
        let (data, len) = (wsabuf_data(&buf), buf.len());
        let op = self.record(target, user, OpKind::Write, offset, OpData::Buffer(buf));
        if let Some(err) = self.check(target, false) {
            return self.fail(op, err);
        }
        if len > u32::MAX as usize {
            return self.fail(op, crate::error::too_long_for_one_call());
        }
        if crate::error::refused_range(offset, len) {
            return self.fail(op, crate::error::offset_too_large());
        }
        let handle = target.raw.handle();
        self.start(&target.route, op, |raw| {
            // SAFETY: as for ReadFile; the source is a buffer the record owns.
            let ok =
                unsafe { WriteFile(handle, data.buf, data.len, ptr::null_mut(), overlapped(raw)) };
            bool_started(ok, false)
        })
    }

    /// `WSARecvFrom` into the spare capacity of `buf`, with the source address.
    pub(crate) fn recv_from(&self, target: &Target, user: usize, mut buf: Vec<u8>) -> OpId {
        let wsabuf = wsabuf_spare(&mut buf);
        let mut from = FromAddr::new();
        let (from_ptr, len_ptr) = (&raw mut from.storage, &raw mut from.len);
        let op = self.record(
            target,
            user,
            OpKind::RecvFrom,
            0,
            OpData::RecvFrom { buf, from },
        );
        if let Some(err) = self.check(target, true) {
            return self.fail(op, err);
        }
        if wsabuf.len == 0 {
            return self.fail(op, crate::error::no_spare_capacity());
        }
        let socket = socket_of(target);
        self.start(&target.route, op, |raw| {
            // SAFETY: the socket is open; the buffer and the boxed address (and its length) are
            // owned by the record until the kernel is done; WinSock captures the WSABUF.
            let rc = unsafe {
                WSARecvFrom(
                    socket,
                    &wsabuf,
                    1,
                    ptr::null_mut(),
                    flags_of(raw),
                    from_ptr.cast(),
                    len_ptr,
                    overlapped(raw),
                    None,
                )
            };
            wsa_started(rc)
        })
    }

    /// `WSASendTo` of all of `buf` to `addr`.
    pub(crate) fn send_to(
        &self,
        target: &Target,
        user: usize,
        buf: Vec<u8>,
        addr: SocketAddr,
    ) -> OpId {
        let wsabuf = wsabuf_data(&buf);
        let to = Box::new(SockAddr::from(addr));
        let (to_ptr, to_len) = (to.as_ptr().cast::<SOCKADDR>(), to.len());
        let op = self.record(target, user, OpKind::SendTo, 0, OpData::SendTo { buf, to });
        if let Some(err) = self.check(target, true) {
            return self.fail(op, err);
        }
        let socket = socket_of(target);
        self.start(&target.route, op, |raw| {
            // SAFETY: the socket is open; the buffer and the boxed destination are owned by
            // the record until the kernel is done; WinSock captures the WSABUF.
            let rc = unsafe {
                WSASendTo(
                    socket,
                    &wsabuf,
                    1,
                    ptr::null_mut(),
                    0,
                    to_ptr,
                    to_len,
                    overlapped(raw),
                    None,
                )
            };
            wsa_started(rc)
        })
    }

    /// `TransmitFile` of `len` bytes (0: to the end) of `file` from `offset`.
    pub(crate) fn transmit_file(
        &self,
        target: &Target,
        user: usize,
        file: &std::fs::File,
        offset: u64,
        len: u32,
    ) -> OpId {
        let record = |data| self.record(target, user, OpKind::TransmitFile, offset, data);
        if let Some(err) = self.check(target, true) {
            return self.fail(record(OpData::None), err);
        }
        let file = match file.try_clone() {
            Ok(f) => f,
            Err(e) => return self.fail(record(OpData::None), e),
        };
        let file_handle = std::os::windows::io::AsRawHandle::as_raw_handle(&file);
        let socket = socket_of(target);
        self.start(&target.route, record(OpData::Transmit { file }), |raw| {
            // SAFETY: the socket is open; the file handle is the record's own duplicate, open
            // until the record is taken back; the OVERLAPPED carries the file offset.
            let ok = unsafe {
                TransmitFile(socket, file_handle, len, 0, overlapped(raw), ptr::null(), 0)
            };
            bool_started(ok, true)
        })
    }

    /// `DisconnectEx`: a graceful disconnect.
    pub(crate) fn disconnect(&self, target: &Target, user: usize) -> OpId {
        let op = self.record(target, user, OpKind::Disconnect, 0, OpData::None);
        if let Some(err) = self.check(target, true) {
            return self.fail(op, err);
        }
        let socket = socket_of(target);
        let disconnect_ex = match net::disconnect_ex(socket) {
            Ok(f) => f,
            Err(e) => return self.fail(op, e),
        };
        self.start(&target.route, op, |raw| {
            // SAFETY: the socket is open and connected; DisconnectEx came from its provider.
            let ok = unsafe { (disconnect_ex.0)(socket, overlapped(raw), 0, 0) };
            bool_started(ok, true)
        })
    }

    /// `ConnectNamedPipe`: waits for a client on a named pipe's server end.
    pub(crate) fn connect_pipe(&self, target: &Target, user: usize) -> OpId {
        let op = self.record(target, user, OpKind::ConnectPipe, 0, OpData::None);
        if let Some(err) = self.check(target, false) {
            return self.fail(op, err);
        }
        let handle = target.raw.handle();
        self.start(&target.route, op, |raw| {
            // SAFETY: the pipe handle is open (the caller borrows its Handle).
            let ok = unsafe { ConnectNamedPipe(handle, overlapped(raw)) };
            match bool_started(ok, false) {
                // A client connected between CreateNamedPipe and this call: connected already.
                Started::Failed(ERROR_PIPE_CONNECTED) => Started::Connected,
                other => other,
            }
        })
    }

    /// `WSAIoctl` (sockets) or `DeviceIoControl` (other handles) with owned buffers.
    pub(crate) fn ioctl(
        &self,
        target: &Target,
        user: usize,
        code: u32,
        input: Vec<u8>,
        mut output: Vec<u8>,
    ) -> OpId {
        let (in_ptr, in_len) = (input.as_ptr(), clamp_len(input.len()));
        let out = wsabuf_spare(&mut output);
        let op = self.record(
            target,
            user,
            OpKind::Ioctl,
            0,
            OpData::Ioctl {
                code,
                input,
                output,
            },
        );
        if let Some(err) = self.check(target, false) {
            return self.fail(op, err);
        }
        let raw_io = target.raw;
        self.start(&target.route, op, |raw| match raw_io {
            RawIo::Socket(s) => {
                let mut bytes = 0u32;
                // SAFETY: the socket is open; both buffers are owned by the record until the
                // kernel is done; the output pointer and length describe its spare capacity.
                let rc = unsafe {
                    WSAIoctl(
                        s,
                        code,
                        in_ptr.cast(),
                        in_len,
                        out.buf.cast(),
                        out.len,
                        &mut bytes,
                        overlapped(raw),
                        None,
                    )
                };
                wsa_started(rc)
            }
            other => {
                // SAFETY: as above, for any handle opened for overlapped I/O.
                let ok = unsafe {
                    DeviceIoControl(
                        other.handle(),
                        code,
                        in_ptr.cast(),
                        in_len,
                        out.buf.cast(),
                        out.len,
                        ptr::null_mut(),
                        overlapped(raw),
                    )
                };
                bool_started(ok, false)
            }
        })
    }

    /// `AcceptEx` on the listening socket `target`.
    pub(crate) fn accept(&self, target: &Target, user: usize) -> OpId {
        if let Some(err) = self.check(target, true) {
            return self.fail(
                self.record(target, user, OpKind::Accept, 0, OpData::None),
                err,
            );
        }
        self.accept_on(
            OpId::next(),
            target.context,
            user,
            socket_of(target),
            &target.route,
            &target.life,
            0,
            target.life.cancels(),
        )
    }

    #[allow(clippy::too_many_arguments)] // an accept's record, rebuilt on a restart
    fn accept_on(
        &self,
        id: OpId,
        context: usize,
        user: usize,
        listener: SOCKET,
        route: &Route,
        life: &Arc<Life>,
        restarts: u32,
        cancels: u64,
    ) -> OpId {
        if restarts > 0 {
            // Test-only: a cancel lands after the restart was decided, before its `AcceptEx`.
            crate::failpoint::failpoint!("iocp::accept_reissue");
        } else {
            // Test-only: a `cancel_all` lands after the accept was asked for, before its
            // `AcceptEx`.
            crate::failpoint::failpoint!("iocp::accept_issue");
        }
        let raw_io = RawIo::Socket(listener);
        let record = |data| {
            let mut op = OpBox::new(&self.records, id, OpKind::Accept, context, raw_io, 0, data);
            op.user = user;
            op
        };
        // SAFETY: the listener is open: the caller borrows its Handle or holds its Life open.
        let borrowed = unsafe { net::borrow(listener) };
        let domain = net::domain_of(&SockRef::from(&borrowed));
        let socket = domain.and_then(|d| Socket::new(d, Type::STREAM, None));
        let socket = match socket {
            Ok(s) => s,
            Err(e) => return self.fail(record(OpData::None), e),
        };
        let accepted = socket_of_socket(&socket);
        let mut addrs = Box::new([0u8; 2 * ACCEPT_ADDR_LEN]);
        let addrs_ptr = addrs.as_mut_ptr();
        let data = OpData::Accept {
            listener,
            route: route.clone(),
            life: life.clone(),
            socket,
            addrs,
            restarts,
            cancels,
        };
        let started = self.start(route, record(data), |raw| {
            let mut received = 0u32;
            // SAFETY: both sockets are open (the record owns the accepted one); the address
            // buffer is heap memory the record owns, sized for two addresses of
            // ACCEPT_ADDR_LEN; no data is received into it (length 0).
            let ok = unsafe {
                AcceptEx(
                    listener,
                    accepted,
                    addrs_ptr.cast(),
                    0,
                    ACCEPT_ADDR_LEN as u32,
                    ACCEPT_ADDR_LEN as u32,
                    &mut received,
                    overlapped(raw),
                )
            };
            bool_started(ok, true)
        });
        // A cancel (of this accept once restarted under an id the application holds, or of
        // everything on the listener since the accept was asked for) that came before the
        // `AcceptEx` above found nothing to cancel: cancelled now, never at a later restart.
        // (A fresh id cannot have been cancelled yet: only a restart or a `cancel_all` needs
        // the look, which locks the table's shard.)
        let all = life.cancels() != cancels;
        if restarts > 0 || all {
            self.cancel_missed(started, all);
        }
        started
    }

    /// `ConnectEx` of the socket `target` to `addr`, binding it first if needed.
    pub(crate) fn connect(&self, target: &Target, user: usize, addr: SocketAddr) -> OpId {
        let addr = Box::new(SockAddr::from(addr));
        let addr_ptr: *const SockAddr = &*addr;
        let data = OpData::Connect {
            life: target.life.clone(),
            addr,
        };
        let op = self.record(target, user, OpKind::Connect, 0, data);
        if let Some(err) = self.check(target, true) {
            return self.fail(op, err);
        }
        let socket = socket_of(target);
        // SAFETY: the socket is open: the caller borrows its Handle.
        let borrowed = unsafe { net::borrow(socket) };
        let sock = SockRef::from(&borrowed);
        // SAFETY: the address is boxed in the record, which is alive here.
        let std_addr = unsafe { &*addr_ptr }.as_socket();
        let prepared = std_addr
            .ok_or_else(|| misuse(io::ErrorKind::InvalidInput, "not an IP address"))
            .and_then(|a| net::bind_for_connect(&sock, &a))
            .and_then(|()| net::connect_ex(socket));
        let connect_ex = match prepared {
            Ok(f) => f,
            Err(e) => return self.fail(op, e),
        };
        self.start(&target.route, op, |raw| {
            // SAFETY: reading the boxed address's pointer and length; the box lives in the
            // record, which the kernel gives back only after it is done with it.
            let (name, len) =
                unsafe { ((*addr_ptr).as_ptr().cast::<SOCKADDR>(), (*addr_ptr).len()) };
            // SAFETY: the socket is open and bound; ConnectEx came from this provider; no data
            // is sent; the address and OVERLAPPED live in the record.
            let ok = unsafe {
                (connect_ex.0)(
                    socket,
                    name,
                    len,
                    ptr::null(),
                    0,
                    ptr::null_mut(),
                    overlapped(raw),
                )
            };
            bool_started(ok, true)
        })
    }

    /// Turns a finished record into the application's completion; `None` when the operation
    /// was restarted instead (an accept whose client reset before it was accepted).
    pub(crate) fn complete(
        &self,
        op: OpBox,
        bytes: usize,
        error: Option<io::Error>,
        address: usize,
    ) -> Option<Completion> {
        let Op {
            id,
            kind,
            context,
            user,
            target,
            data,
            ..
        } = op.into_inner(&self.records);
        let mut error = error;
        let mut bytes = bytes;
        let mut peer = None;
        // A datagram longer than the buffer (a socket's only warning; a pending receive gets it
        // as ERROR_MORE_DATA from the port, one that found it waiting as WSAEMSGSIZE): for a
        // readiness peek, a datagram waits; for a receive, the bytes that fit, reported as
        // WinSock does, WSAEMSGSIZE, whichever way it came.
        let too_long = error
            .as_ref()
            .and_then(crate::raw_os_error)
            .is_some_and(|c| c == ERROR_MORE_DATA as i32 || c == WSAEMSGSIZE);
        match kind {
            OpKind::Readable if too_long => error = None,
            // With the bytes that fit, at least one (a receive with no room is refused, and so
            // is one of a datagram over too many buffers, with WSAEMSGSIZE and no bytes).
            OpKind::Recv | OpKind::RecvVectored | OpKind::RecvFrom if too_long && bytes > 0 => {
                error = Some(crate::error::truncated(WSAEMSGSIZE, None));
            }
            _ => {}
        }
        let output = match data {
            OpData::None | OpData::Readable | OpData::Transmit { .. } => Output::None,
            OpData::Post(value) => {
                bytes = value;
                Output::None
            }
            OpData::Buffer(mut buf) => {
                if kind == OpKind::Read && error.as_ref().is_some_and(is_eof_or_broken) {
                    error = None; // a read at or past the end of a file: EOF, as Ok(0)
                    bytes = 0;
                }
                if matches!(kind, OpKind::Recv | OpKind::Read) {
                    // SAFETY: the kernel wrote `bytes` bytes at the start of the spare capacity.
                    unsafe { grow_by(&mut buf, bytes) };
                }
                Output::Buffer(buf)
            }
            OpData::Buffers(mut bufs) => {
                if kind == OpKind::RecvVectored {
                    // SAFETY: WSARecv scatters `bytes` bytes over the spare capacities in order.
                    unsafe { grow_vectored_by(&mut bufs, bytes) };
                }
                Output::buffers(bufs)
            }
            OpData::RecvFrom { mut buf, from } => {
                // A truncated datagram (above) still carries its bytes and its source.
                // SAFETY: the kernel wrote `bytes` bytes (the datagram, or as much as fitted) at
                // the start of the spare capacity.
                unsafe { grow_by(&mut buf, bytes) };
                if from.len > 0 {
                    // SAFETY: WSARecvFrom wrote `len` bytes of address into the storage.
                    peer = unsafe { net::socket_addr((&raw const from.storage).cast(), from.len) }
                        .ok();
                }
                Output::Buffer(buf)
            }
            OpData::SendTo { buf, .. } => Output::Buffer(buf),
            OpData::Ioctl {
                code,
                input,
                mut output,
            } => {
                if error.is_none() && code == SIO_GET_EXTENSION_FUNCTION_POINTER && bytes == 0 {
                    // The provider wrote the function's address, but Wine's packet says 0 bytes.
                    bytes = mem::size_of::<usize>().min(output.capacity() - output.len());
                }
                if error.is_none() {
                    // SAFETY: the control wrote `bytes` bytes at the start of the spare capacity.
                    unsafe { grow_by(&mut output, bytes) };
                }
                Output::ioctl(input, output)
            }
            OpData::Accept {
                listener,
                route,
                life,
                socket,
                addrs,
                restarts,
                cancels,
            } => match error {
                Some(ref e)
                    if is_client_reset(e)
                        && (self.end_restart_if_cancelled(id) || life.cancels() != cancels) =>
                {
                    // A cancel (or the deadline's) was asked while the reset waited to be
                    // dequeued: the accept ends as cancelled, not restarted.
                    tracing::debug!(%id, error = %e, "accept: client reset after a cancel; ending it");
                    drop(socket);
                    error = Some(super::error::aborted());
                    Output::None
                }
                Some(ref e) if is_client_reset(e) && restarts < ACCEPT_RESTARTS => {
                    // The client reset before its connection was accepted: the listener is
                    // fine. Accept the next one instead; the application never sees this.
                    tracing::debug!(%id, error = %e, "accept: client reset; accepting again");
                    drop(socket);
                    let restarted = life.while_open(|| {
                        self.accept_on(
                            id,
                            context,
                            user,
                            listener,
                            &route,
                            &life,
                            restarts + 1,
                            cancels,
                        )
                    });
                    if restarted.is_some() {
                        return None;
                    }
                    // The listener's handle was dropped meanwhile: cancelled, as every
                    // operation in flight on a dropped handle (not the client's reset).
                    error = Some(super::error::aborted());
                    Output::None
                }
                Some(_) => Output::None,
                None => {
                    crate::failpoint::failpoint!("iocp::accept_update");
                    // SO_UPDATE_ACCEPT_CONTEXT names the listener by its number: only while it
                    // is open (after its Handle is dropped the number may name another
                    // socket). A closed listener ends the accept as aborted, and the accepted
                    // socket (moved into the closure) is closed.
                    match life.while_open(|| finish_accept(listener, socket, &addrs)) {
                        Some(Ok(output)) => output,
                        Some(Err(e)) => {
                            error = Some(e);
                            Output::None
                        }
                        None => {
                            error = Some(super::error::aborted());
                            Output::None
                        }
                    }
                }
            },
            OpData::Connect { life, .. } => {
                if let (None, RawIo::Socket(socket)) = (&error, target) {
                    // Only while the socket is open: after its Handle is dropped its number may
                    // name another socket.
                    error = match life.while_open(|| net::update_connect_context(socket)) {
                        Some(Ok(())) => None,
                        Some(Err(e)) => Some(e),
                        None => Some(super::error::aborted()),
                    };
                }
                Output::None
            }
        };
        Some(Completion {
            context,
            user,
            id,
            kind,
            more: false,
            bytes,
            error,
            output,
            peer,
            address,
        })
    }
}

fn socket_of_socket(socket: &Socket) -> SOCKET {
    use std::os::windows::io::AsRawSocket;
    socket.as_raw_socket() as SOCKET
}

/// A read's end of data: `ERROR_HANDLE_EOF` at or past the end of a file, `ERROR_BROKEN_PIPE`
/// once a pipe's writer has gone.
fn is_eof_or_broken(err: &io::Error) -> bool {
    matches!(crate::raw_os_error(err), Some(c) if c == ERROR_HANDLE_EOF as i32 || c == ERROR_BROKEN_PIPE as i32)
}

/// An `AcceptEx` failure that means the client went away, not that the listener is broken:
/// `ERROR_NETNAME_DELETED` and `WSAECONNRESET` on Windows, `ERROR_CONNECTION_ABORTED`, and
/// `STATUS_INVALID_CONNECTION` (Win32 59), which Wine reports for a client that reset in the
/// backlog.
fn is_client_reset(err: &io::Error) -> bool {
    matches!(
        crate::raw_os_error(err).map(|c| c as u32),
        Some(ERROR_NETNAME_DELETED | ERROR_CONNECTION_ABORTED | ERROR_UNEXP_NET_ERR)
    ) || crate::raw_os_error(err) == Some(WSAECONNRESET)
}

/// How many clients in a row may reset before one accept reports the error after all: a bound,
/// so that a listener that fails this way for good cannot keep a worker busy forever.
const ACCEPT_RESTARTS: u32 = 64;

/// Makes the accepted socket usable and decodes its addresses: a TCP connection becomes an
/// [`Accepted`], a Unix-domain (`AF_UNIX`) one a `socket2::Socket` with its client's address.
fn finish_accept(
    listener: SOCKET,
    socket: Socket,
    addrs: &[u8; 2 * ACCEPT_ADDR_LEN],
) -> io::Result<Output> {
    net::update_accept_context(socket_of_socket(&socket), listener)?;
    let (mut local, mut peer): (*mut SOCKADDR, *mut SOCKADDR) = (ptr::null_mut(), ptr::null_mut());
    let (mut local_len, mut peer_len) = (0i32, 0i32);
    // SAFETY: `addrs` is the buffer AcceptEx filled, with the same lengths; the out-pointers
    // are set to places inside it.
    unsafe {
        GetAcceptExSockaddrs(
            addrs.as_ptr().cast(),
            0,
            ACCEPT_ADDR_LEN as u32,
            ACCEPT_ADDR_LEN as u32,
            &mut local,
            &mut local_len,
            &mut peer,
            &mut peer_len,
        )
    };
    // SAFETY: GetAcceptExSockaddrs pointed both inside `addrs`, with their lengths.
    if let Some(peer_addr) = unsafe { net::unix_addr(peer, peer_len) } {
        return Ok(Output::accepted_socket(socket, peer_addr));
    }
    // SAFETY: as above.
    let local_addr = unsafe { net::socket_addr(local, local_len) }?;
    // SAFETY: as above.
    let peer_addr = unsafe { net::socket_addr(peer, peer_len) }?;
    Ok(Output::accepted(Accepted {
        stream: TcpStream::from(socket),
        local_addr,
        peer_addr,
    }))
}

const _: () = assert!(mem::size_of::<SOCKET>() == mem::size_of::<usize>());

#[cfg(test)]
mod tests {
    use super::*;

    fn lens(bufs: &[usize]) -> Vec<u32> {
        // Lengths only: the addresses are never dereferenced.
        let at = ptr::dangling_mut::<u8>();
        wsabufs_within_a_dword(bufs.iter().map(|&len| (at, len)))
            .iter()
            .map(|b| b.len)
            .collect()
    }

    /// Found by review (helper 46): each buffer clamped alone made a vectored send of a 5 GiB
    /// buffer then 4 bytes send 4 GiB - 1 of the first, then the 4, skipping the rest.
    #[test]
    fn vectored_buffers_past_a_dword_are_cut_to_a_prefix() {
        const MAX: usize = u32::MAX as usize;
        assert_eq!(lens(&[5, 0, 7]), [5, 0, 7]);
        assert_eq!(lens(&[5 << 30, 4]), [u32::MAX]);
        assert_eq!(lens(&[5, MAX, 3]), [5, u32::MAX - 5]);
        assert_eq!(lens(&[MAX - 2, 2, 1]), [u32::MAX - 2, 2, 0]);
        assert_eq!(lens(&[MAX, 0, 0]), [u32::MAX, 0, 0]);
        assert_eq!(lens(&[]), [0u32; 0]);
    }
}
