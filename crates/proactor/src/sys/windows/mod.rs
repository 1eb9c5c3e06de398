//! The Windows backend: the I/O completion port itself.

mod close;
mod error;
mod foreign;
mod net;
mod overlapped;
mod pool;
mod port;
mod submit;

use std::{
    fs::File,
    net::{TcpListener, TcpStream, UdpSocket},
    os::windows::io::{AsRawHandle, AsRawSocket, OwnedHandle, OwnedSocket},
    sync::Arc,
};

use windows_sys::Win32::{Foundation::HANDLE, Networking::WinSock::SOCKET, System::IO::CancelIoEx};

use close::DeferredClose;
pub(crate) use close::moves_bytes;
pub(crate) use port::Port;

use crate::handle::{Associate, Sealed};
pub(crate) use crate::life::Life;

/// An OS object's raw identity: a socket (which is also a handle) or another kind of handle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RawIo {
    /// A WinSock socket.
    Socket(SOCKET),
    /// A file, pipe or device handle.
    Handle(usize),
    /// No object (posted packets).
    None,
}

impl RawIo {
    /// The object as a `HANDLE`, for the calls that take any handle.
    pub(crate) fn handle(self) -> HANDLE {
        match self {
            RawIo::Socket(s) => s as HANDLE,
            RawIo::Handle(h) => h as HANDLE,
            RawIo::None => std::ptr::null_mut(),
        }
    }

    /// The number to show in logs.
    pub(crate) fn value(self) -> usize {
        self.handle() as usize
    }
}

/// How operations on a handle complete.
#[derive(Clone, Debug)]
pub(crate) struct Route {
    /// Whether `FILE_SKIP_COMPLETION_PORT_ON_SUCCESS` is set on the handle.
    pub(crate) skip_on_success: bool,
    /// Set for a foreign handle: completions come through a low-bit event, and this registry
    /// lists our operations in flight on it.
    pub(crate) foreign: Option<Arc<foreign::Registry>>,
}

/// What operations need to know about an associated handle.
#[derive(Debug)]
pub(crate) struct Target {
    pub(crate) context: usize,
    pub(crate) raw: RawIo,
    /// The port the handle is associated with.
    pub(crate) port: u64,
    /// How operations on the handle complete.
    pub(crate) route: Route,
    pub(crate) life: Arc<Life>,
    /// Set for a socket the handle owns: its sends and receives hold it, and the socket closes
    /// after the last of them ([`close`]).
    pub(crate) deferred_close: Option<Arc<DeferredClose>>,
    /// A socket that keeps message boundaries ([`keeps_boundaries`]): a zero-byte receive
    /// peeks, since one that took its datagram would drop it.
    pub(crate) datagram: bool,
}

impl Target {
    /// Marks the handle closed, cancels all I/O on it, and closes `io`, its object: a socket
    /// once the port has taken back the last of its cancelled sends and receives (at once when
    /// none is in flight; see [`close`]), any other object at once.
    ///
    /// Cancelling first matters: on Wine a send pending when its socket closes may never
    /// complete, and on every system a cancelled operation completes promptly, so the port can
    /// reclaim it.
    pub(crate) fn close<T: Associate>(&self, io: T) {
        self.cancel_all();
        // Anything but a socket was dropped by `into_owned_socket`.
        if let Some(socket) = io.into_owned_socket() {
            match &self.deferred_close {
                Some(deferred) => DeferredClose::when_idle(deferred, socket),
                None => drop(socket),
            }
        }
    }

    /// Marks the handle closed and cancels all I/O on it.
    fn cancel_all(&self) {
        self.life.close(|| match &self.route.foreign {
            // Another port's handle: cancel ours, never the owner's operations.
            Some(registry) => registry.cancel_all(self.raw),
            // SAFETY: the handle is still open (its owner closes it after this returns); a null
            // OVERLAPPED asks to cancel every operation issued on it. Failure (ERROR_NOT_FOUND,
            // nothing pending) needs no action.
            None => {
                // Test-only: the cancel misses every operation (as one can miss an operation
                // Wine is resuming): the port's sweep must cancel them again (`close.rs`).
                crate::failpoint::failpoint!("iocp::drop_cancel", |_| ());
                // SAFETY: the handle is still open (its owner closes it after this returns);
                // a null OVERLAPPED asks to cancel every operation issued on it. Failure
                // (ERROR_NOT_FOUND, nothing pending) needs no action.
                unsafe { CancelIoEx(self.raw.handle(), std::ptr::null()) };
            }
        });
    }
}

impl Sealed for TcpStream {
    fn raw_io(&self) -> RawIo {
        RawIo::Socket(self.as_raw_socket() as SOCKET)
    }
    fn into_owned_socket(self) -> Option<OwnedSocket> {
        Some(OwnedSocket::from(self))
    }
}
impl Sealed for TcpListener {
    fn raw_io(&self) -> RawIo {
        RawIo::Socket(self.as_raw_socket() as SOCKET)
    }
    fn into_owned_socket(self) -> Option<OwnedSocket> {
        Some(OwnedSocket::from(self))
    }
}
impl Sealed for UdpSocket {
    fn raw_io(&self) -> RawIo {
        RawIo::Socket(self.as_raw_socket() as SOCKET)
    }
    fn into_owned_socket(self) -> Option<OwnedSocket> {
        Some(OwnedSocket::from(self))
    }
}
impl Sealed for OwnedSocket {
    fn raw_io(&self) -> RawIo {
        RawIo::Socket(self.as_raw_socket() as SOCKET)
    }
    fn into_owned_socket(self) -> Option<OwnedSocket> {
        Some(self)
    }
}
impl Sealed for socket2::Socket {
    fn raw_io(&self) -> RawIo {
        RawIo::Socket(self.as_raw_socket() as SOCKET)
    }
    fn into_owned_socket(self) -> Option<OwnedSocket> {
        Some(OwnedSocket::from(self))
    }
}
impl Sealed for File {
    fn raw_io(&self) -> RawIo {
        RawIo::Handle(self.as_raw_handle() as usize)
    }
    fn into_owned_socket(self) -> Option<OwnedSocket> {
        None // closed here, at once
    }
}
impl Sealed for OwnedHandle {
    fn raw_io(&self) -> RawIo {
        RawIo::Handle(self.as_raw_handle() as usize)
    }
    fn into_owned_socket(self) -> Option<OwnedSocket> {
        None // closed here, at once
    }
}
impl Associate for TcpStream {}
impl Associate for TcpListener {}
impl Associate for UdpSocket {}
impl Associate for OwnedSocket {}
impl Associate for socket2::Socket {}
impl Associate for File {}
impl Associate for OwnedHandle {}
/// Whether `raw` is a socket that keeps message boundaries (datagram, raw, RDM, seqpacket):
/// its `SO_TYPE` is not `SOCK_STREAM`.
pub(crate) fn keeps_boundaries(raw: RawIo) -> bool {
    use windows_sys::Win32::Networking::WinSock::{SO_TYPE, SOCK_STREAM, SOL_SOCKET, getsockopt};
    let RawIo::Socket(s) = raw else { return false };
    let mut ty: i32 = 0;
    let mut len = std::mem::size_of::<i32>() as i32;
    // SAFETY: getsockopt writes at most `len` bytes into `ty`, an int, and its length into `len`.
    let r = unsafe { getsockopt(s, SOL_SOCKET, SO_TYPE, (&raw mut ty).cast(), &mut len) };
    r == 0 && ty != SOCK_STREAM
}

/// Receives what is already there, without waiting: the second half of a pooled receive (a
/// zero-byte `WSARecv` first). The socket's mode is left alone (the program may use it
/// blocking; a `Foreign` socket, another port's, never gets here: pooled receive refuses it
/// with `Unsupported`, since its owner could read between the look and the `recv`):
/// `FIONREAD` says how many bytes are buffered and `recv` takes at most that many, which a
/// blocking socket returns at once. With none buffered, `WSAPoll` without a timeout tells the
/// end of the stream or a reset (readable: `recv` returns 0 or the error at once) from a stale
/// readiness (another reader took the data: `WSAEWOULDBLOCK`, and the receive waits again).
///
/// Urgent (out-of-band) data is not part of the stream (unless the program set
/// `SO_OOBINLINE`, when `FIONREAD` counts it and `recv` takes it in line): a zero-byte
/// receive that it completed would complete again at once, for ever, since no plain `recv`
/// takes it. It is read with `MSG_OOB` and dropped, as Linux's `recv` skips it, and the
/// receive waits again (`WSAEWOULDBLOCK`).
///
/// # Safety
///
/// `dst` must be valid for writes of `len` bytes.
pub(crate) unsafe fn recv_now(raw: RawIo, dst: *mut u8, len: usize) -> std::io::Result<usize> {
    use windows_sys::Win32::Networking::WinSock::{
        FIONREAD, MSG_OOB, POLLERR, POLLHUP, POLLRDBAND, POLLRDNORM, SOCKET_ERROR, WSAEWOULDBLOCK,
        WSAGetLastError, WSAPOLLFD, WSAPoll, ioctlsocket, recv,
    };
    let RawIo::Socket(s) = raw else {
        return Err(crate::error::needs_socket());
    };
    let last = || {
        // SAFETY: reads the calling thread's last WinSock error.
        Err(std::io::Error::from_raw_os_error(unsafe {
            WSAGetLastError()
        }))
    };
    let mut buffered = 0u32;
    // SAFETY: `s` is a live socket (its handle is borrowed or owned by the slot); FIONREAD
    // writes one u32.
    if unsafe { ioctlsocket(s, FIONREAD, &mut buffered) } == SOCKET_ERROR {
        return last();
    }
    if buffered == 0 {
        let mut fd = WSAPOLLFD {
            fd: s,
            events: POLLRDNORM | POLLRDBAND,
            revents: 0,
        };
        // SAFETY: one valid WSAPOLLFD; a zero timeout returns at once.
        match unsafe { WSAPoll(&mut fd, 1, 0) } {
            SOCKET_ERROR => return last(),
            0 => return Err(std::io::Error::from_raw_os_error(WSAEWOULDBLOCK)),
            _ if fd.revents & (POLLRDNORM | POLLHUP | POLLERR) == 0 => {
                // Only urgent data: dropped (see above), and the receive waits again.
                let mut urgent = [0u8; 64];
                // SAFETY: `urgent` is writable for its length.
                let n = unsafe { recv(s, urgent.as_mut_ptr(), urgent.len() as i32, MSG_OOB) };
                if n == SOCKET_ERROR {
                    return last();
                }
                return Err(std::io::Error::from_raw_os_error(WSAEWOULDBLOCK));
            }
            _ => {} // the end of the stream, a reset, or data just arrived
        }
    }
    let len = if buffered == 0 {
        len
    } else {
        len.min(buffered as usize)
    };
    let len = len.min(i32::MAX as usize) as i32;
    // SAFETY: the caller guarantees `dst` is writable for `len` bytes.
    let n = unsafe { recv(s, dst, len, 0) };
    if n == SOCKET_ERROR {
        last()
    } else {
        Ok(n as usize)
    }
}
