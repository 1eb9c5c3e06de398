//! Handles associated with a port: the OS object, its context, and what the port needs to know.

use std::{fmt, mem::ManuallyDrop, ops::Deref};

use crate::sys;

mod sealed {
    /// Implemented by the OS object types this crate knows how to associate.
    pub trait Sealed {
        /// The object's raw OS identity.
        fn raw_io(&self) -> crate::sys::RawIo;

        /// Whether another port owns the object (`proactor::windows::Foreign`): operations on
        /// it complete through an event, never through an association.
        fn foreign(&self) -> bool {
            false
        }

        /// The object's socket, for a close the port may defer until its sends and receives
        /// are taken back; `None` for any other object, dropped here: a file, pipe or device
        /// closes at once, and a `Foreign` object is its owner's to close.
        #[cfg(windows)]
        fn into_owned_socket(self) -> Option<std::os::windows::io::OwnedSocket>
        where
            Self: Sized;
    }
}

/// An OS object that can be associated with an [`Iocp`](crate::Iocp): a socket, a file or a
/// pipe, as an owned standard-library type.
///
/// On Windows it is implemented for [`std::net::TcpStream`], [`std::net::TcpListener`],
/// [`std::net::UdpSocket`], [`std::fs::File`] (files and pipes opened with
/// `FILE_FLAG_OVERLAPPED`), `std::os::windows::io::OwnedSocket`,
/// `std::os::windows::io::OwnedHandle` and `socket2::Socket`; on other systems for the
/// same socket and file types and `OwnedFd`, and on Linux for
/// `std::os::unix::net::UnixListener` and `UnixStream`. A Unix-domain socket on any system
/// (Windows 10 1803 and later included) is a `socket2::Socket`: see
/// [`Iocp::bind_unix`](crate::Iocp::bind_unix).
///
/// The trait is sealed: the port must know whether an object is a socket or another kind of
/// handle, which only these types say.
///
/// ```
/// use std::net::UdpSocket;
/// // Any of these types can be associated; a generic helper takes them all.
/// fn join<T: proactor::Associate>(port: &proactor::Iocp, io: T, context: usize) -> std::io::Result<proactor::Handle<T>> {
///     port.add_handle(io, context)
/// }
/// let port = proactor::Iocp::new()?;
/// let socket = join(&port, UdpSocket::bind("127.0.0.1:0")?, 3)?;
/// assert_eq!(socket.context(), 3);
/// # Ok::<(), std::io::Error>(())
/// ```
pub trait Associate: sealed::Sealed + Send {}

pub(crate) use sealed::Sealed;

/// An OS object associated with an [`Iocp`](crate::Iocp), with the application's context value.
///
/// Made by [`Iocp::add_handle`](crate::Iocp::add_handle). It owns the object: dropping it first
/// cancels every operation still in flight on it, then closes it. The cancelled operations still
/// complete, with an error for which [`is_cancelled`](crate::is_cancelled) is true, and hand back
/// their buffers; a cancelled send reports the bytes it moved before the cancel. On Windows a
/// socket is closed once the port has taken back the last of its cancelled sends and receives
/// (at once when none is in flight), so that none finds its socket closed under it: until a
/// thread dequeues them the socket stays open (its peer sees no end of stream yet), and a
/// dequeuing thread closes it. Should a cancel miss an operation, a thread dequeuing the port
/// cancels and closes the socket under it about 2 seconds after the drop (its count may then
/// be lost). Any other object, and a listener, closes at once. The association itself lasts as
/// long as the OS object: a handle can be associated with one port only.
///
/// It dereferences to the object, so its ordinary methods (`peer_addr`, `set_nodelay`, ...)
/// stay available.
///
/// ```no_run
/// # fn main() -> std::io::Result<()> {
/// let port = proactor::Iocp::new()?;
/// let stream = std::net::TcpStream::connect("127.0.0.1:8080")?;
/// let conn = port.add_handle(stream, 42)?;
/// assert_eq!(conn.context(), 42);
/// println!("connected to {}", conn.peer_addr()?);
/// # Ok(()) }
/// ```
pub struct Handle<T: Associate> {
    pub(crate) target: sys::Target,
    /// Taken by `Drop::drop`, after it cancelled what was in flight on it.
    io: ManuallyDrop<T>,
}

impl<T: Associate> Handle<T> {
    pub(crate) fn new(io: T, target: sys::Target) -> Handle<T> {
        Handle {
            target,
            io: ManuallyDrop::new(io),
        }
    }

    /// The context value given to [`Iocp::add_handle`](crate::Iocp::add_handle), carried by
    /// every completion of an operation on this handle.
    ///
    /// ```
    /// let port = proactor::Iocp::new()?;
    /// let socket = port.add_handle(std::net::UdpSocket::bind("127.0.0.1:0")?, 42)?;
    /// assert_eq!(socket.context(), 42);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn context(&self) -> usize {
        self.target.context
    }

    /// The associated object.
    ///
    /// ```
    /// let port = proactor::Iocp::new()?;
    /// let socket = port.add_handle(std::net::UdpSocket::bind("127.0.0.1:0")?, 0)?;
    /// let std_socket: &std::net::UdpSocket = socket.get_ref();
    /// assert!(std_socket.local_addr()?.ip().is_loopback());
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn get_ref(&self) -> &T {
        &self.io
    }
}

impl<T: Associate> Deref for Handle<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.io
    }
}

impl<T: Associate> Drop for Handle<T> {
    fn drop(&mut self) {
        // SAFETY: `io` is taken here, once, and never used again.
        let io = unsafe { ManuallyDrop::take(&mut self.io) };
        self.target.close(io);
    }
}

impl<T: Associate + fmt::Debug> fmt::Debug for Handle<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Handle")
            .field("context", &self.context())
            .field("io", &*self.io)
            .finish()
    }
}
