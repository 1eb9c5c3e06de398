//! Unix-domain (`AF_UNIX`) stream sockets on every system that has them: a listener and a
//! client, as `socket2::Socket`s associated with a port.

use std::{io, path::Path};

use socket2::{Domain, SockAddr, Socket, Type};

use crate::{Handle, Iocp};

/// The code of a socket family the system lacks: `WSAEAFNOSUPPORT` (10047) on Windows before
/// 10 1803 and under Wine 8, `EAFNOSUPPORT` on Linux.
#[cfg(windows)]
const AF_NOT_SUPPORTED: i32 = 10047;
#[cfg(target_os = "linux")]
const AF_NOT_SUPPORTED: i32 = libc::EAFNOSUPPORT;
#[cfg(not(any(windows, target_os = "linux")))]
const AF_NOT_SUPPORTED: i32 = -1;

/// A new Unix-domain stream socket; a system without `AF_UNIX` is an error of kind
/// [`Unsupported`](io::ErrorKind::Unsupported) that keeps the OS code.
fn unix_stream_socket() -> io::Result<Socket> {
    Socket::new(Domain::UNIX, Type::STREAM, None).map_err(|e| match e.raw_os_error() {
        Some(code) if code == AF_NOT_SUPPORTED => crate::error::explained(
            io::ErrorKind::Unsupported,
            code,
            "no Unix-domain sockets here (Windows before 10 1803, Wine 8)",
        ),
        _ => e,
    })
}

impl Iocp {
    /// Creates a Unix-domain stream listener bound to `path`, listening, and associated with
    /// this port under `context`: the `UnixListener::bind` of proactor, on Linux and on
    /// Windows (10 1803 and later, whose `AF_UNIX` has no `std` type: the listener is a
    /// [`socket2::Socket`]). [`accept`](Iocp::accept) on it completes with the connection and
    /// its client's address, taken by
    /// [`Completion::take_accepted_socket`](crate::Completion::take_accepted_socket).
    ///
    /// The path must not exist (remove a stale socket file first); it is not removed when the
    /// listener is dropped.
    ///
    /// # Errors
    ///
    /// Where the system has no `AF_UNIX` (Windows before 10 1803, and Wine 8, whose `socket()`
    /// fails with `WSAEAFNOSUPPORT`), an error of kind
    /// [`Unsupported`](io::ErrorKind::Unsupported) whose [`raw_os_error`](crate::raw_os_error)
    /// is the OS code (10047 on Windows). Otherwise the OS error of `bind` (a path in use,
    /// too long for `sun_path`) or `listen`, or of the association.
    ///
    /// ```no_run
    /// # fn main() -> std::io::Result<()> {
    /// let port = proactor::Iocp::new()?;
    /// let path = std::env::temp_dir().join("proactor-demo.sock");
    /// let listener = port.bind_unix(&path, 0)?;
    /// port.with_user(1).accept(&listener);
    /// let mut done = port.get_completion(None)?;
    /// done.result()?;
    /// let (stream, peer) = done.take_accepted_socket().expect("a connection");
    /// println!("client at {peer:?}");
    /// let conn = port.add_handle(stream, 1)?;
    /// port.recv(&conn, Vec::with_capacity(4096));
    /// # Ok(()) }
    /// ```
    pub fn bind_unix(&self, path: impl AsRef<Path>, context: usize) -> io::Result<Handle<Socket>> {
        let socket = unix_stream_socket()?;
        socket.bind(&SockAddr::unix(path)?)?;
        socket.listen(128)?;
        self.add_handle(socket, context)
    }

    /// Connects a new Unix-domain stream socket to the listener at `path` and associates it
    /// with this port under `context`: the `UnixStream::connect` of proactor, on Linux and on
    /// Windows (10 1803 and later). The connect itself is the system's ordinary one, which
    /// for a local socket completes at once (it waits only while the listener's backlog is
    /// full); the stream is ready for [`recv`](Iocp::recv) and [`send`](Iocp::send) on return.
    ///
    /// # Errors
    ///
    /// As [`bind_unix`](Iocp::bind_unix) for a system without `AF_UNIX`; otherwise the OS
    /// error of `connect` (no listener at `path`: `NotFound` or `ConnectionRefused`).
    ///
    /// ```no_run
    /// # fn main() -> std::io::Result<()> {
    /// let port = proactor::Iocp::new()?;
    /// let conn = port.connect_unix(std::env::temp_dir().join("proactor-demo.sock"), 7)?;
    /// port.send(&conn, b"hello".to_vec());
    /// # Ok(()) }
    /// ```
    pub fn connect_unix(
        &self,
        path: impl AsRef<Path>,
        context: usize,
    ) -> io::Result<Handle<Socket>> {
        let socket = unix_stream_socket()?;
        socket.connect(&SockAddr::unix(path)?)?;
        self.add_handle(socket, context)
    }
}
