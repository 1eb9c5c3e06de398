//! One operation of a [`LocalPort`] with options of its own: a user value, a deadline.

use std::{
    fmt,
    net::SocketAddr,
    time::{Duration, Instant},
};

use super::{LocalHandle, LocalOp, LocalPort};
use crate::{Associate, OpId, PooledBuf};

/// An operation about to be submitted to a [`LocalPort`] with its own user value and
/// deadline, made by [`LocalPort::with_user`], [`LocalPort::with_deadline`] or
/// [`LocalPort::with_timeout`]: the [`Submit`](crate::Submit) of a port owned by one thread.
///
/// ```no_run
/// # fn f(port: &proactor::LocalPort, conn: &proactor::LocalHandle<std::net::TcpStream>) -> std::io::Result<()> {
/// use std::time::Duration;
/// port.with_user(9).timeout(Duration::from_secs(1)).recv_pooled(conn);
/// let done = port.get_completion(None)?;
/// assert_eq!(done.user(), 9);
/// if let Err(e) = done.result() {
///     assert!(proactor::is_deadline(&e) || !proactor::is_cancelled(&e));
/// }
/// # Ok(()) }
/// ```
#[must_use = "nothing is submitted until one of its operations is called"]
pub struct LocalSubmit<'a> {
    port: &'a LocalPort,
    user: usize,
    deadline: Option<Instant>,
    skip: bool,
}

impl<'a> LocalSubmit<'a> {
    pub(crate) fn new(port: &'a LocalPort, user: usize) -> LocalSubmit<'a> {
        LocalSubmit {
            port,
            user,
            deadline: None,
            skip: false,
        }
    }

    /// The user value the operation will carry.
    ///
    /// ```no_run
    /// # fn f(port: &proactor::LocalPort) {
    /// assert_eq!(port.with_user(3).user(), 3);
    /// # }
    /// ```
    pub fn user(&self) -> usize {
        self.user
    }

    /// Sets the user value the operation will carry.
    ///
    /// ```no_run
    /// # fn f(port: &proactor::LocalPort) {
    /// use std::time::Duration;
    /// assert_eq!(port.with_timeout(Duration::from_secs(1)).with_user(3).user(), 3);
    /// # }
    /// ```
    pub fn with_user(mut self, user: usize) -> Self {
        self.user = user;
        self
    }

    /// Gives the operation a deadline (see [`Submit::deadline`](crate::Submit::deadline)).
    ///
    /// ```no_run
    /// # fn f(port: &proactor::LocalPort, conn: &proactor::LocalHandle<std::net::TcpStream>) {
    /// use std::time::{Duration, Instant};
    /// port.with_user(1).deadline(Instant::now() + Duration::from_secs(2)).recv_pooled(conn);
    /// # }
    /// ```
    pub fn deadline(mut self, at: Instant) -> Self {
        self.deadline = Some(at);
        self
    }

    /// Gives the operation a deadline `after` from now.
    ///
    /// ```no_run
    /// # fn f(port: &proactor::LocalPort, conn: &proactor::LocalHandle<std::net::TcpStream>) {
    /// port.with_user(1).timeout(std::time::Duration::from_secs(2)).recv_pooled(conn);
    /// # }
    /// ```
    pub fn timeout(self, after: Duration) -> Self {
        let at = Instant::now().checked_add(after);
        match at {
            Some(at) => self.deadline(at),
            None => self,
        }
    }

    /// Reports the operation only if it does not succeed whole: what io_uring's
    /// `IOSQE_CQE_SKIP_SUCCESS` and Windows' `FILE_SKIP_COMPLETION_PORT_ON_SUCCESS` skip, for
    /// one operation (the port does it itself: a short send counts as a success for the
    /// kernel's flag, and the port needs each send's end to send the rest and to take its
    /// buffer back). It applies to [`send`](LocalSubmit::send) and
    /// [`send_pooled`](LocalSubmit::send_pooled); any other operation is refused (its
    /// completion says [`io::ErrorKind::InvalidInput`](std::io::ErrorKind::InvalidInput)), but
    /// a [`timer`](LocalSubmit::timer), which has nothing to skip, ignores it.
    ///
    /// A send that sent every byte then makes no completion: the port drops its buffer (a
    /// pool buffer goes back to the pool) once the kernel is done with it, which saves a
    /// completion per message where only failures matter (an echo, a proxy). A send that
    /// fails, is cancelled, passes its deadline or whose handle is dropped is reported as any
    /// other, with the bytes it sent
    /// ([`bytes_transferred`](crate::Completion::bytes_transferred)) and its buffer. The port
    /// counts the operation in flight until it ended (its bytes sent, or its failure's
    /// completion made): [`LocalPort::unreported_in_flight_on`] says whether a handle's have.
    /// On a stream the bytes of its sends go in the order asked, as always.
    ///
    /// ```no_run
    /// # fn f(port: &proactor::LocalPort, conn: &proactor::LocalHandle<std::net::TcpStream>) -> std::io::Result<()> {
    /// let mut done = port.get_completion(None)?;
    /// if let Some(data) = done.take_pooled() {
    ///     // Echo it back; only a failure comes back as a completion.
    ///     port.with_user(7).skip_success().send_pooled(conn, data);
    /// }
    /// let echoing = port.unreported_in_flight_on(conn) > 0;
    /// # Ok(()) }
    /// ```
    pub fn skip_success(mut self) -> Self {
        self.skip = true;
        self
    }

    fn start<T: Associate>(self, handle: &LocalHandle<T>, op: LocalOp) -> OpId {
        self.port
            .start(handle, self.user, self.deadline, self.skip, op)
    }

    /// [`LocalPort::timer`], carrying this user value (a deadline set here is ignored).
    ///
    /// ```no_run
    /// # fn f(port: &proactor::LocalPort) {
    /// port.with_user(4).timer(std::time::Duration::from_millis(5));
    /// # }
    /// ```
    pub fn timer(self, after: Duration) -> OpId {
        self.port.start_timer(self.user, after)
    }

    /// [`LocalPort::recv`], carrying this user value and deadline.
    ///
    /// ```no_run
    /// # fn f(port: &proactor::LocalPort, conn: &proactor::LocalHandle<std::net::TcpStream>) {
    /// port.with_user(1).recv(conn, Vec::with_capacity(512));
    /// # }
    /// ```
    pub fn recv<T: Associate>(self, handle: &LocalHandle<T>, buf: Vec<u8>) -> OpId {
        self.start(handle, LocalOp::Recv(buf))
    }

    /// [`LocalPort::recv_vectored`], carrying this user value and deadline.
    ///
    /// ```no_run
    /// # fn f(port: &proactor::LocalPort, conn: &proactor::LocalHandle<std::net::TcpStream>) {
    /// port.with_user(1).recv_vectored(conn, vec![Vec::with_capacity(512)]);
    /// # }
    /// ```
    pub fn recv_vectored<T: Associate>(self, handle: &LocalHandle<T>, bufs: Vec<Vec<u8>>) -> OpId {
        self.start(handle, LocalOp::RecvVectored(bufs))
    }

    /// [`LocalPort::readable`], carrying this user value and deadline.
    ///
    /// ```no_run
    /// # fn f(port: &proactor::LocalPort, conn: &proactor::LocalHandle<std::net::TcpStream>) {
    /// port.with_user(1).readable(conn);
    /// # }
    /// ```
    pub fn readable<T: Associate>(self, handle: &LocalHandle<T>) -> OpId {
        self.start(handle, LocalOp::Readable)
    }

    /// [`LocalPort::recv_pooled`], carrying this user value and deadline.
    ///
    /// ```no_run
    /// # fn f(port: &proactor::LocalPort, conn: &proactor::LocalHandle<std::net::TcpStream>) {
    /// port.with_user(1).recv_pooled(conn);
    /// # }
    /// ```
    pub fn recv_pooled<T: Associate>(self, handle: &LocalHandle<T>) -> OpId {
        self.start(handle, LocalOp::RecvPooled)
    }

    /// [`LocalPort::recv_multishot`], carrying this user value (on every completion it makes)
    /// and deadline (which ends it).
    ///
    /// ```no_run
    /// # fn f(port: &proactor::LocalPort, conn: &proactor::LocalHandle<std::net::TcpStream>) {
    /// port.with_user(1).recv_multishot(conn);
    /// # }
    /// ```
    pub fn recv_multishot<T: Associate>(self, handle: &LocalHandle<T>) -> OpId {
        self.start(handle, LocalOp::RecvMultishot)
    }

    /// [`LocalPort::send`], carrying this user value and deadline.
    ///
    /// ```no_run
    /// # fn f(port: &proactor::LocalPort, conn: &proactor::LocalHandle<std::net::TcpStream>) {
    /// port.with_user(1).send(conn, b"hi".to_vec());
    /// # }
    /// ```
    pub fn send<T: Associate>(self, handle: &LocalHandle<T>, buf: Vec<u8>) -> OpId {
        self.start(handle, LocalOp::Send(buf))
    }

    /// [`LocalPort::send_vectored`], carrying this user value and deadline.
    ///
    /// ```no_run
    /// # fn f(port: &proactor::LocalPort, conn: &proactor::LocalHandle<std::net::TcpStream>) {
    /// port.with_user(1).send_vectored(conn, vec![b"hi".to_vec()]);
    /// # }
    /// ```
    pub fn send_vectored<T: Associate>(self, handle: &LocalHandle<T>, bufs: Vec<Vec<u8>>) -> OpId {
        self.start(handle, LocalOp::SendVectored(bufs))
    }

    /// [`LocalPort::send_pooled`], carrying this user value and deadline.
    ///
    /// ```no_run
    /// # fn f(port: &proactor::LocalPort, conn: &proactor::LocalHandle<std::net::TcpStream>, data: proactor::PooledBuf) {
    /// port.with_user(1).send_pooled(conn, data);
    /// # }
    /// ```
    pub fn send_pooled<T: Associate>(self, handle: &LocalHandle<T>, buf: PooledBuf) -> OpId {
        self.start(handle, LocalOp::SendPooled(buf))
    }

    /// [`LocalPort::recv_from`], carrying this user value and deadline.
    ///
    /// ```no_run
    /// # fn f(port: &proactor::LocalPort, udp: &proactor::LocalHandle<std::net::UdpSocket>) {
    /// port.with_user(1).recv_from(udp, Vec::with_capacity(1500));
    /// # }
    /// ```
    pub fn recv_from<T: Associate>(self, handle: &LocalHandle<T>, buf: Vec<u8>) -> OpId {
        self.start(handle, LocalOp::RecvFrom(buf))
    }

    /// [`LocalPort::send_to`], carrying this user value and deadline.
    ///
    /// ```no_run
    /// # fn f(port: &proactor::LocalPort, udp: &proactor::LocalHandle<std::net::UdpSocket>) {
    /// port.with_user(1).send_to(udp, b"ping".to_vec(), "127.0.0.1:9".parse().unwrap());
    /// # }
    /// ```
    pub fn send_to<T: Associate>(
        self,
        handle: &LocalHandle<T>,
        buf: Vec<u8>,
        addr: SocketAddr,
    ) -> OpId {
        self.start(handle, LocalOp::SendTo(buf, addr))
    }

    /// [`LocalPort::read_at`], carrying this user value and deadline.
    ///
    /// ```no_run
    /// # fn f(port: &proactor::LocalPort, file: &proactor::LocalHandle<std::fs::File>) {
    /// port.with_user(1).read_at(file, Vec::with_capacity(4096), 0);
    /// # }
    /// ```
    pub fn read_at<T: Associate>(self, handle: &LocalHandle<T>, buf: Vec<u8>, offset: u64) -> OpId {
        self.start(handle, LocalOp::ReadAt(buf, offset))
    }

    /// [`LocalPort::write_at`], carrying this user value and deadline.
    ///
    /// ```no_run
    /// # fn f(port: &proactor::LocalPort, file: &proactor::LocalHandle<std::fs::File>) {
    /// port.with_user(1).write_at(file, b"data".to_vec(), 0);
    /// # }
    /// ```
    pub fn write_at<T: Associate>(
        self,
        handle: &LocalHandle<T>,
        buf: Vec<u8>,
        offset: u64,
    ) -> OpId {
        self.start(handle, LocalOp::WriteAt(buf, offset))
    }

    /// [`LocalPort::accept`], carrying this user value and deadline.
    ///
    /// ```no_run
    /// # fn f(port: &proactor::LocalPort, listener: &proactor::LocalHandle<std::net::TcpListener>) {
    /// port.with_user(1).accept(listener);
    /// # }
    /// ```
    pub fn accept<T: Associate>(self, listener: &LocalHandle<T>) -> OpId {
        self.start(listener, LocalOp::Accept)
    }

    /// [`LocalPort::connect`], carrying this user value and deadline.
    ///
    /// ```no_run
    /// # fn f(port: &proactor::LocalPort, socket: &proactor::LocalHandle<proactor::socket2::Socket>) {
    /// port.with_user(1).connect(socket, "127.0.0.1:8080".parse().unwrap());
    /// # }
    /// ```
    pub fn connect<T: Associate>(self, socket: &LocalHandle<T>, addr: SocketAddr) -> OpId {
        self.start(socket, LocalOp::Connect(addr))
    }
}

impl fmt::Debug for LocalSubmit<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalSubmit")
            .field("user", &self.user)
            .field("deadline", &self.deadline)
            .finish()
    }
}
