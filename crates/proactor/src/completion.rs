//! The end of an operation as the application sees it.

use std::{any::Any, fmt, io, net::SocketAddr, net::TcpStream};

use crate::{OpId, OpKind};

/// What an operation hands back besides its result.
///
/// Every completion carries one and is moved several times between the kernel's answer and
/// the user, then dropped: the common outputs (nothing, a buffer) are inline, and everything
/// else is behind one box, [`Rare`]. So the enum stays three words (`tests` below pins the
/// size), and its drop, inlined wherever a completion ends, is a test or two for the common
/// ones (with the rare outputs inline it was an out-of-line call, about 18 instructions for
/// nothing to drop, twice per echo).
#[derive(Debug)]
pub(crate) enum Output {
    /// Nothing (post, connect, a zero-byte receive).
    None,
    /// The buffer of a receive, send, read or write.
    Buffer(Vec<u8>),
    /// What a rarer operation hands back: a [`Rare`], behind a pointer whose drop is a call
    /// through its vtable, so that the drop of an `Output` holds no code of the rare outputs'
    /// (a `Box<Rare>` brings their drops in, and with them the whole drop is too large to be
    /// inlined). Always a `Rare`: taken back with `downcast`.
    Rare(Box<dyn Any + Send + Sync>),
}

/// The outputs of the rarer operations (see [`Output`]).
#[derive(Debug)]
pub(crate) enum Rare {
    /// The buffers of a vectored receive or send.
    Buffers(Vec<Vec<u8>>),
    /// The connection an accept produced.
    Accepted(Accepted),
    /// The connection an accept on a Unix-domain listener produced, and its client's address.
    #[cfg(target_os = "linux")]
    AcceptedUnix(
        std::os::unix::net::UnixStream,
        std::os::unix::net::SocketAddr,
    ),
    /// The connection an accept on a Unix-domain (`AF_UNIX`) listener produced, and its
    /// client's address.
    #[cfg(windows)]
    AcceptedSocket(socket2::Socket, socket2::SockAddr),
    /// An ioctl's input and output buffers.
    Ioctl(Vec<u8>, Vec<u8>),
}

impl Output {
    /// The buffers of a vectored receive or send.
    pub(crate) fn buffers(bufs: Vec<Vec<u8>>) -> Output {
        Output::Rare(Box::new(Rare::Buffers(bufs)))
    }

    /// The connection an accept produced.
    pub(crate) fn accepted(accepted: Accepted) -> Output {
        Output::Rare(Box::new(Rare::Accepted(accepted)))
    }

    /// The connection an accept on a Unix-domain listener produced, and its client's address.
    #[cfg(target_os = "linux")]
    pub(crate) fn accepted_unix(
        stream: std::os::unix::net::UnixStream,
        peer: std::os::unix::net::SocketAddr,
    ) -> Output {
        Output::Rare(Box::new(Rare::AcceptedUnix(stream, peer)))
    }

    /// The connection an accept on a Unix-domain listener produced, and its client's address.
    #[cfg(windows)]
    pub(crate) fn accepted_socket(socket: socket2::Socket, peer: socket2::SockAddr) -> Output {
        Output::Rare(Box::new(Rare::AcceptedSocket(socket, peer)))
    }

    /// An ioctl's input and output buffers.
    pub(crate) fn ioctl(input: Vec<u8>, output: Vec<u8>) -> Output {
        Output::Rare(Box::new(Rare::Ioctl(input, output)))
    }
}

/// A connection accepted by [`Iocp::accept`](crate::Iocp::accept).
///
/// The stream is not yet associated with any port: pass it to
/// [`Iocp::add_handle`](crate::Iocp::add_handle) to run operations on it.
///
/// ```
/// use std::net::{TcpListener, TcpStream};
/// let port = proactor::Iocp::new()?;
/// let listener = port.add_handle(TcpListener::bind("127.0.0.1:0")?, 0)?;
/// port.accept(&listener);
/// let client = TcpStream::connect(listener.local_addr()?)?;
/// let accepted = port.get_completion(None)?.take_accepted().expect("accepted");
/// assert_eq!(accepted.peer_addr, client.local_addr()?);
/// assert_eq!(accepted.local_addr, listener.local_addr()?);
/// let conn = port.add_handle(accepted.stream, 1)?; // now it takes operations
/// # drop(conn);
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Debug)]
pub struct Accepted {
    /// The accepted connection.
    pub stream: TcpStream,
    /// The local address the connection arrived on.
    pub local_addr: SocketAddr,
    /// The peer's address.
    pub peer_addr: SocketAddr,
}

/// One finished operation, dequeued from an [`Iocp`](crate::Iocp).
///
/// It says which handle (its [`context`](Completion::context)), which operation
/// ([`id`](Completion::id) and [`kind`](Completion::kind)), how many bytes moved and whether it
/// failed ([`result`](Completion::result)), and hands back what the operation owned
/// ([`take_buffer`](Completion::take_buffer), [`take_buffers`](Completion::take_buffers),
/// [`take_accepted`](Completion::take_accepted),
/// [`take_accepted_socket`](Completion::take_accepted_socket)).
///
/// A receive's buffer comes back with its length grown by the bytes received; a send's buffer
/// comes back unchanged. A receive that completes with `Ok(0)` on a stream socket is the peer's
/// graceful close (EOF); a reset is an error of kind
/// [`ConnectionReset`](std::io::ErrorKind::ConnectionReset); a local cancel is an error for which
/// [`is_cancelled`](crate::is_cancelled) is true.
///
/// ```no_run
/// # fn f(port: &proactor::Iocp) -> std::io::Result<()> {
/// let mut done = port.get_completion(None)?;
/// println!("{} on context {} moved {} bytes", done.kind(), done.context(), done.bytes_transferred());
/// match done.result() {
///     Ok(0) => println!("end of stream"),
///     Ok(n) => println!("{:?}", &done.take_buffer().unwrap()[..n]),
///     Err(e) if proactor::is_cancelled(&e) => println!("cancelled"),
///     Err(e) => println!("failed: {e}"),
/// }
/// # Ok(()) }
/// ```
pub struct Completion {
    pub(crate) context: usize,
    /// The operation's own value ([`Iocp::with_user`](crate::Iocp::with_user)); 0 if none.
    pub(crate) user: usize,
    pub(crate) id: OpId,
    pub(crate) kind: OpKind,
    /// More completions of the same operation follow (a multishot receive going on).
    pub(crate) more: bool,
    pub(crate) bytes: usize,
    pub(crate) error: Option<io::Error>,
    pub(crate) output: Output,
    /// The source address of a datagram receive.
    pub(crate) peer: Option<SocketAddr>,
    /// The address the operation's `OVERLAPPED` had, for logs; 0 for an operation refused
    /// before it started. A number only: the record is freed by now. (Windows only: elsewhere
    /// nothing reads it, and without it a `LocalCompletion` fits the 128 bytes moved inline.)
    #[cfg(windows)]
    pub(crate) address: usize,
}

impl Completion {
    /// The completion of an operation that owned no `OVERLAPPED` (an engine's own, a refusal):
    /// `result`'s bytes or error, with `output` handed back.
    pub(crate) fn of(
        context: usize,
        user: usize,
        id: OpId,
        kind: OpKind,
        result: io::Result<usize>,
        output: Output,
    ) -> Completion {
        let (bytes, error) = match result {
            Ok(n) => (n, None),
            Err(e) => (0, Some(e)),
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
            peer: None,
            #[cfg(windows)]
            address: 0,
        }
    }

    /// The context of the handle the operation ran on (given to
    /// [`Iocp::add_handle`](crate::Iocp::add_handle)), or the context given to
    /// [`Iocp::post`](crate::Iocp::post).
    ///
    /// ```
    /// let port = proactor::Iocp::new()?;
    /// port.post(7, 0)?;
    /// assert_eq!(port.get_completion(None)?.context(), 7);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    #[inline]
    pub fn context(&self) -> usize {
        self.context
    }

    /// The operation's own user value, given at submission through
    /// [`Iocp::with_user`](crate::Iocp::with_user); 0 for an operation submitted without one
    /// and for a posted packet.
    ///
    /// ```
    /// use std::time::Duration;
    /// let port = proactor::Iocp::new()?;
    /// port.with_user(5).timer(Duration::from_millis(1));
    /// assert_eq!(port.get_completion(None)?.user(), 5);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    #[inline]
    pub fn user(&self) -> usize {
        self.user
    }

    /// The id [`Iocp`](crate::Iocp) returned when the operation was submitted.
    ///
    /// ```
    /// let port = proactor::Iocp::new()?;
    /// let id = port.post(0, 0)?;
    /// assert_eq!(port.get_completion(None)?.id(), id);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    #[inline]
    pub fn id(&self) -> OpId {
        self.id
    }

    /// Which operation this was.
    ///
    /// ```
    /// use proactor::OpKind;
    /// let port = proactor::Iocp::new()?;
    /// port.post(0, 0)?;
    /// let done = port.get_completion(None)?;
    /// assert_eq!(done.kind(), OpKind::Post);
    /// assert_eq!(done.kind().name(), "post");
    /// # Ok::<(), std::io::Error>(())
    /// ```
    #[inline]
    pub fn kind(&self) -> OpKind {
        self.kind
    }

    /// Whether the same operation completes again: true for each message a multishot
    /// receive ([`LocalPort::recv_multishot`](crate::LocalPort::recv_multishot)) brings while
    /// it goes on; false for every other completion, including the one that ends a multishot
    /// receive (the end of the stream, an error, a cancel or its deadline).
    ///
    /// ```no_run
    /// # fn f(port: &proactor::LocalPort, conn: &proactor::LocalHandle<std::net::TcpStream>) -> std::io::Result<()> {
    /// let id = port.recv_multishot(conn);
    /// loop {
    ///     let mut done = port.get_completion(None)?;
    ///     if done.id() != id {
    ///         continue; // a send's: its buffer goes back to the pool
    ///     }
    ///     if let Some(data) = done.take_pooled() {
    ///         port.send_pooled(conn, data); // echo it back
    ///     }
    ///     if !done.more() {
    ///         break; // ended: `done.result()` says how
    ///     }
    /// }
    /// # Ok(()) }
    /// ```
    #[inline]
    pub fn more(&self) -> bool {
        self.more
    }

    /// Bytes transferred, as the kernel reported them, even when the operation failed (a
    /// truncated datagram or a cancelled send can report a partial count). For a posted packet,
    /// the value given to [`Iocp::post`](crate::Iocp::post).
    ///
    /// ```
    /// let port = proactor::Iocp::new()?;
    /// port.post(0, 1234)?;
    /// assert_eq!(port.get_completion(None)?.bytes_transferred(), 1234);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    #[inline]
    pub fn bytes_transferred(&self) -> usize {
        self.bytes
    }

    /// The outcome: the bytes transferred, or the error.
    ///
    /// The error is built afresh on each call from the one the operation ended with, so it can be
    /// inspected any number of times; its kind, message and OS code are the same each time.
    ///
    /// ```
    /// use std::{net::UdpSocket, time::Duration};
    /// let port = proactor::Iocp::new()?;
    /// let socket = port.add_handle(UdpSocket::bind("127.0.0.1:0")?, 0)?;
    /// port.with_timeout(Duration::from_millis(10)).recv_from(&socket, Vec::with_capacity(64));
    /// let done = port.get_completion(None)?;
    /// let e = done.result().unwrap_err(); // nothing arrived before the deadline
    /// assert!(proactor::is_deadline(&e));
    /// assert_eq!(done.result().unwrap_err().kind(), e.kind()); // the same error each time
    /// # Ok::<(), std::io::Error>(())
    /// ```
    #[inline]
    pub fn result(&self) -> io::Result<usize> {
        match &self.error {
            None => Ok(self.bytes),
            Some(e) => Err(clone_error(e)),
        }
    }

    /// The error the operation ended with, if it failed.
    ///
    /// ```
    /// use std::{net::UdpSocket, time::Duration};
    /// let port = proactor::Iocp::new()?;
    /// let socket = port.add_handle(UdpSocket::bind("127.0.0.1:0")?, 0)?;
    /// port.with_timeout(Duration::from_millis(10)).recv_from(&socket, Vec::with_capacity(64));
    /// let done = port.get_completion(None)?;
    /// assert!(done.error().is_some_and(proactor::is_deadline));
    /// # Ok::<(), std::io::Error>(())
    /// ```
    #[inline]
    pub fn error(&self) -> Option<&io::Error> {
        self.error.as_ref()
    }

    /// Whether the operation was cancelled locally (see [`is_cancelled`](crate::is_cancelled)).
    ///
    /// ```
    /// use std::net::UdpSocket;
    /// let port = proactor::Iocp::new()?;
    /// let socket = port.add_handle(UdpSocket::bind("127.0.0.1:0")?, 0)?;
    /// let id = port.recv_from(&socket, Vec::with_capacity(64));
    /// port.cancel(id)?;
    /// let mut done = port.get_completion(None)?;
    /// assert!(done.is_cancelled());
    /// assert!(done.take_buffer().is_some()); // a cancelled operation hands its buffer back too
    /// # Ok::<(), std::io::Error>(())
    /// ```
    #[inline]
    pub fn is_cancelled(&self) -> bool {
        self.error.as_ref().is_some_and(crate::is_cancelled)
    }

    /// Takes back the buffer of a receive, send, read or write; `None` for other operations
    /// or when already taken.
    ///
    /// ```
    /// use std::net::UdpSocket;
    /// use proactor::OpKind;
    /// let port = proactor::Iocp::new()?;
    /// let socket = port.add_handle(UdpSocket::bind("127.0.0.1:0")?, 0)?;
    /// let me = socket.local_addr()?;
    /// port.recv_from(&socket, Vec::with_capacity(64));
    /// port.send_to(&socket, b"hello".to_vec(), me);
    /// for _ in 0..2 {
    ///     let mut done = port.get_completion(None)?;
    ///     let buf = done.take_buffer().expect("a receive and a send hand their buffers back");
    ///     assert_eq!(buf, b"hello"); // what was received, or what was sent
    ///     assert!(done.take_buffer().is_none()); // taken once
    ///     if done.kind() == OpKind::RecvFrom {
    ///         assert_eq!(done.peer_addr(), Some(me));
    ///     }
    /// }
    /// # Ok::<(), std::io::Error>(())
    /// ```
    #[inline]
    pub fn take_buffer(&mut self) -> Option<Vec<u8>> {
        // Looked at in place: a completion without a buffer (a pooled receive's, every
        // accept's) is left as it is rather than moved out and back.
        let Output::Buffer(buf) = &mut self.output else {
            return None;
        };
        let buf = std::mem::take(buf);
        self.output = Output::None;
        Some(buf)
    }

    /// Takes back the buffers of a vectored receive or send.
    ///
    /// ```no_run
    /// # fn f(port: &proactor::Iocp, conn: &proactor::Handle<std::net::TcpStream>) -> std::io::Result<()> {
    /// port.recv_vectored(conn, vec![Vec::with_capacity(16), Vec::with_capacity(4096)]);
    /// let mut done = port.get_completion(None)?;
    /// let n = done.result()?;
    /// let bufs = done.take_buffers().expect("a vectored receive's buffers");
    /// assert_eq!(bufs.iter().map(Vec::len).sum::<usize>(), n); // filled in order
    /// # Ok(()) }
    /// ```
    pub fn take_buffers(&mut self) -> Option<Vec<Vec<u8>>> {
        match self.take_rare(|r| matches!(r, Rare::Buffers(_)))? {
            Rare::Buffers(bufs) => Some(bufs),
            _ => None,
        }
    }

    /// The source address of a datagram a [`recv_from`](crate::Iocp::recv_from) received
    /// (also when it was truncated).
    ///
    /// ```
    /// use std::net::UdpSocket;
    /// let port = proactor::Iocp::new()?;
    /// let socket = port.add_handle(UdpSocket::bind("127.0.0.1:0")?, 0)?;
    /// let sender = UdpSocket::bind("127.0.0.1:0")?;
    /// port.recv_from(&socket, Vec::with_capacity(64));
    /// sender.send_to(b"ping", socket.local_addr()?)?;
    /// let done = port.get_completion(None)?;
    /// assert_eq!(done.peer_addr(), Some(sender.local_addr()?));
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn peer_addr(&self) -> Option<SocketAddr> {
        self.peer
    }

    /// Takes back an ioctl's buffers as `(input, output)`; the output's length grew by the
    /// bytes the control returned.
    ///
    /// ```no_run
    /// # fn f(port: &proactor::Iocp, device: &proactor::Handle<std::fs::File>, code: u32) -> std::io::Result<()> {
    /// port.ioctl(device, code, Vec::new(), Vec::with_capacity(256));
    /// let mut done = port.get_completion(None)?;
    /// let n = done.result()?;
    /// let (_input, output) = done.take_ioctl().expect("an ioctl's buffers");
    /// assert_eq!(output.len(), n); // what the control returned
    /// # Ok(()) }
    /// ```
    pub fn take_ioctl(&mut self) -> Option<(Vec<u8>, Vec<u8>)> {
        match self.take_rare(|r| matches!(r, Rare::Ioctl(..)))? {
            Rare::Ioctl(input, output) => Some((input, output)),
            _ => None,
        }
    }

    /// Takes the accepted connection of a successful accept on a TCP listener; `None` for one
    /// on a Unix-domain listener (see [`take_accepted_socket`](Completion::take_accepted_socket),
    /// on every system, and `take_accepted_unix`, on Linux).
    ///
    /// ```
    /// use std::net::{TcpListener, TcpStream};
    /// let port = proactor::Iocp::new()?;
    /// let listener = port.add_handle(TcpListener::bind("127.0.0.1:0")?, 0)?;
    /// port.accept(&listener);
    /// let _client = TcpStream::connect(listener.local_addr()?)?;
    /// let mut done = port.get_completion(None)?;
    /// let accepted = done.take_accepted().expect("a successful accept");
    /// assert!(done.take_accepted().is_none()); // taken once
    /// let conn = port.add_handle(accepted.stream, 1)?;
    /// # drop(conn);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn take_accepted(&mut self) -> Option<Accepted> {
        match self.take_rare(|r| matches!(r, Rare::Accepted(_)))? {
            Rare::Accepted(a) => Some(a),
            _ => None,
        }
    }

    /// Takes the connection of any successful accept, TCP or Unix-domain, as a
    /// [`socket2::Socket`] with its client's address; `None` for other operations or when
    /// already taken. The portable way to accept on a Unix-domain listener: on Windows, which
    /// has no `std` Unix socket types, the listener is a `socket2::Socket` of
    /// [`Domain::UNIX`](socket2::Domain::UNIX) (Windows 10 1803 and later; Wine 8 also has
    /// `AF_UNIX`); on Linux it may also be a `std::os::unix::net::UnixListener`.
    ///
    /// The address is the client's as the kernel reports it: an IP address and port for TCP;
    /// for a Unix-domain socket its path, or an unnamed address (only the family, as
    /// `SockAddr::is_unnamed` says on Unix) when the client did not bind one. Like an
    /// [`Accepted`] stream, the connection is not yet associated with any port.
    ///
    /// ```no_run
    /// # fn main() -> std::io::Result<()> {
    /// let port = proactor::Iocp::new()?;
    /// // A socket2::Socket of Domain::UNIX, bound, listening and associated.
    /// let listener = port.bind_unix(std::env::temp_dir().join("proactor-echo.sock"), 0)?;
    /// port.accept(&listener);
    /// let mut done = port.get_completion(None)?;
    /// done.result()?;
    /// let (stream, peer) = done.take_accepted_socket().expect("a connection");
    /// println!("client of family {}", peer.family());
    /// let conn = port.add_handle(stream, 1)?;
    /// port.recv(&conn, Vec::with_capacity(4096));
    /// # Ok(()) }
    /// ```
    pub fn take_accepted_socket(&mut self) -> Option<(socket2::Socket, socket2::SockAddr)> {
        let accept = |r: &Rare| match r {
            Rare::Accepted(_) => true,
            #[cfg(target_os = "linux")]
            Rare::AcceptedUnix(..) => true,
            #[cfg(windows)]
            Rare::AcceptedSocket(..) => true,
            _ => false,
        };
        match self.take_rare(accept)? {
            Rare::Accepted(a) => Some((
                socket2::Socket::from(a.stream),
                socket2::SockAddr::from(a.peer_addr),
            )),
            #[cfg(target_os = "linux")]
            Rare::AcceptedUnix(stream, peer) => Some((
                socket2::Socket::from(std::os::fd::OwnedFd::from(stream)),
                unix_sockaddr(&peer),
            )),
            #[cfg(windows)]
            Rare::AcceptedSocket(socket, peer) => Some((socket, peer)),
            _ => None,
        }
    }

    /// Takes the rare output `is` picks, if the completion holds one; leaves any other.
    fn take_rare(&mut self, is: impl FnOnce(&Rare) -> bool) -> Option<Rare> {
        if !matches!(&self.output, Output::Rare(r) if r.downcast_ref::<Rare>().is_some_and(is)) {
            return None;
        }
        match std::mem::replace(&mut self.output, Output::None) {
            Output::Rare(r) => r.downcast::<Rare>().ok().map(|r| *r),
            _ => None,
        }
    }
}

/// A Unix-domain address as socket2's: a path, an abstract name (a leading NUL, as socket2
/// spells it) or unnamed (the family alone).
#[cfg(target_os = "linux")]
fn unix_sockaddr(addr: &std::os::unix::net::SocketAddr) -> socket2::SockAddr {
    use std::os::{linux::net::SocketAddrExt, unix::ffi::OsStrExt};
    let (bytes, pathname): (Vec<u8>, bool) = match (addr.as_pathname(), addr.as_abstract_name()) {
        (Some(path), _) => (path.as_os_str().as_bytes().to_vec(), true),
        (None, Some(name)) => (
            std::iter::once(0).chain(name.iter().copied()).collect(),
            false,
        ),
        (None, None) => (Vec::new(), false),
    };
    let mut storage = socket2::SockAddrStorage::zeroed();
    // SAFETY: sockaddr_un is one of this platform's socket address types (view_as checks that
    // it fits in the storage).
    let un = unsafe { storage.view_as::<libc::sockaddr_un>() };
    un.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let n = bytes.len().min(un.sun_path.len());
    for (to, from) in un.sun_path.iter_mut().zip(&bytes) {
        *to = *from as libc::c_char;
    }
    // A path keeps its terminating NUL when it has room (a 108-byte path has none, as the
    // kernel allows).
    let nul = usize::from(pathname && n < un.sun_path.len());
    let len = std::mem::offset_of!(libc::sockaddr_un, sun_path) + n + nul;
    // SAFETY: the storage is zeroed and the first `len` bytes hold the address just written.
    unsafe { socket2::SockAddr::new(storage, len as libc::socklen_t) }
}

#[cfg(target_os = "linux")]
impl Completion {
    /// Takes the connection of a successful accept on a Unix-domain listener (a
    /// `std::os::unix::net::UnixListener`, or its descriptor as an `OwnedFd`), with the client's
    /// address (unnamed unless the client bound one); `None` for other operations, for an accept
    /// on a TCP listener (see [`take_accepted`](Completion::take_accepted)), or when already
    /// taken. Linux only: [`take_accepted_socket`](Completion::take_accepted_socket) is the
    /// portable form.
    ///
    /// Like an [`Accepted`] stream, the connection is not yet associated with any port.
    ///
    /// ```no_run
    /// # fn main() -> std::io::Result<()> {
    /// use std::os::unix::net::UnixListener;
    ///
    /// let port = proactor::Iocp::new()?;
    /// let listener = port.add_handle(UnixListener::bind("/tmp/echo.sock")?, 0)?;
    /// port.accept(&listener);
    /// let mut done = port.get_completion(None)?;
    /// done.result()?;
    /// let (stream, peer) = done.take_accepted_unix().expect("a Unix-domain connection");
    /// println!("client {peer:?}");
    /// let conn = port.add_handle(stream, 1)?;
    /// port.recv(&conn, Vec::with_capacity(4096));
    /// # Ok(()) }
    /// ```
    pub fn take_accepted_unix(
        &mut self,
    ) -> Option<(
        std::os::unix::net::UnixStream,
        std::os::unix::net::SocketAddr,
    )> {
        match self.take_rare(|r| matches!(r, Rare::AcceptedUnix(..)))? {
            Rare::AcceptedUnix(stream, peer) => Some((stream, peer)),
            _ => None,
        }
    }
}

impl fmt::Debug for Completion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Completion")
            .field("context", &self.context)
            .field("user", &self.user)
            .field("id", &self.id)
            .field("kind", &self.kind)
            .field("more", &self.more)
            .field("bytes", &self.bytes)
            .field("error", &self.error)
            .finish_non_exhaustive()
    }
}

/// Grows a receive's buffer by the `n` bytes the kernel wrote into its spare capacity (clamped
/// to that capacity, in case of a bogus count).
///
/// # Safety
///
/// The first `n` bytes of `buf`'s spare capacity (or all of it, if shorter) must have been
/// written.
#[cfg_attr(not(any(windows, target_os = "linux")), allow(dead_code))]
pub(crate) unsafe fn grow_by(buf: &mut Vec<u8>, n: usize) {
    let n = n.min(buf.capacity() - buf.len());
    // SAFETY: the caller guarantees these `n` bytes past the length were written.
    unsafe { buf.set_len(buf.len() + n) };
}

/// Grows a vectored receive's buffers by the `n` bytes the kernel wrote, filling each buffer's
/// spare capacity in turn.
///
/// # Safety
///
/// The kernel must have written `n` bytes into the buffers' spare capacities in order, each up
/// to its capacity (scatter order).
#[cfg_attr(not(any(windows, target_os = "linux")), allow(dead_code))]
pub(crate) unsafe fn grow_vectored_by(bufs: &mut [Vec<u8>], n: usize) {
    let mut left = n;
    for buf in bufs {
        let take = left.min(buf.capacity() - buf.len());
        // SAFETY: scatter order: this buffer's first `take` spare bytes were written.
        unsafe { grow_by(buf, take) };
        left -= take;
    }
}

/// A copy of an error produced by this crate: same kind, same OS code, same message.
fn clone_error(err: &io::Error) -> io::Error {
    if let Some(code) = err.raw_os_error() {
        return io::Error::from_raw_os_error(code);
    }
    match err
        .get_ref()
        .and_then(|e| e.downcast_ref::<crate::error::OsError>())
    {
        Some(os) => io::Error::new(err.kind(), os.clone()),
        None => io::Error::new(err.kind(), err.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn completion(error: Option<io::Error>, output: Output) -> Completion {
        Completion {
            context: 3,
            user: 0,
            id: OpId::next(),
            kind: OpKind::Recv,
            more: false,
            bytes: 5,
            error,
            output,
            peer: None,
            #[cfg(windows)]
            address: 0,
        }
    }

    #[test]
    fn result_can_be_read_repeatedly_and_keeps_the_code() {
        let c = completion(
            Some(crate::error::corrected(
                io::ErrorKind::ConnectionReset,
                64,
                None,
            )),
            Output::None,
        );
        for _ in 0..2 {
            let e = c.result().unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::ConnectionReset);
            assert_eq!(crate::raw_os_error(&e), Some(64));
        }
        let c = completion(Some(crate::error::cancelled(995, None)), Output::None);
        assert!(c.is_cancelled());
        assert!(crate::is_cancelled(&c.result().unwrap_err()));
        let c = completion(Some(crate::error::truncated(90, None)), Output::None);
        let e = c.result().unwrap_err();
        assert!(crate::is_truncated(&e), "{e}");
        assert_eq!(e.to_string(), c.error().unwrap().to_string());
    }

    #[test]
    fn buffers_are_handed_back_once() {
        let mut c = completion(None, Output::Buffer(vec![1, 2, 3]));
        assert_eq!(c.result().unwrap(), 5);
        assert!(c.take_accepted().is_none());
        assert!(c.take_buffers().is_none());
        assert_eq!(c.take_buffer(), Some(vec![1, 2, 3]));
        assert_eq!(c.take_buffer(), None);
    }

    #[test]
    fn take_buffer_leaves_other_outputs() {
        let mut c = completion(None, Output::ioctl(vec![1], vec![2, 3]));
        assert_eq!(c.take_buffer(), None);
        assert!(c.take_buffers().is_none() && c.take_accepted().is_none());
        assert!(c.take_accepted_socket().is_none());
        assert_eq!(c.take_ioctl(), Some((vec![1], vec![2, 3])));
        let mut c = completion(None, Output::buffers(vec![vec![4]]));
        assert_eq!(c.take_buffer(), None);
        assert_eq!(c.take_buffers(), Some(vec![vec![4]]));
    }

    /// A completion may be sent to, and shared with, other threads, whatever it holds (found
    /// by review: the rare outputs' box was `Send` only, which made `Completion` `!Sync`).
    #[test]
    fn a_completion_is_send_and_sync() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<Completion>();
        send_sync::<Output>();
    }

    /// A completion is moved from the kernel's answer to the ready queue to the caller's
    /// batch: the rare, large outputs stay boxed (unboxed it was 216 bytes).
    #[cfg(target_pointer_width = "64")]
    #[test]
    fn a_completion_stays_small() {
        assert_eq!(std::mem::size_of::<Output>(), 24);
        assert!(std::mem::size_of::<Completion>() <= 120);
        // Moves of up to 128 bytes are inlined; larger ones call `memcpy` (a percent of the
        // CPU of a 1,000-connection echo when `LocalCompletion` was 232 bytes).
        #[cfg(not(windows))]
        assert!(std::mem::size_of::<crate::LocalCompletion>() <= 128);
    }
}
