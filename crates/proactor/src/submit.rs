//! One operation with options of its own: the user value its completion hands back.

use std::{
    fmt,
    net::SocketAddr,
    time::{Duration, Instant},
};

use crate::{Associate, Handle, Iocp, OpId};

/// An operation about to be submitted with its own user value, made by [`Iocp::with_user`].
///
/// Every operation of [`Iocp`] is here too; submitting one consumes the `Submit`. The value is
/// the operation's, set before the kernel can see it: its [`Completion::user`] hands it back
/// beside the handle's [`context`](crate::Completion::context), so a program matches a
/// completion to its request without recording the [`OpId`] first (which, with several threads
/// dequeuing, a completion can beat). It is a `usize`, like the `ULONG_PTR` completion key
/// Windows gives a handle: an index into a table of requests, a slab key, a tag, or a pointer
/// turned into a number (the port never dereferences it). Operations submitted through
/// [`Iocp`]'s own methods carry 0.
///
/// [`Completion::user`]: crate::Completion::user
///
/// ```no_run
/// # fn f(port: &proactor::Iocp, conn: &proactor::Handle<std::net::TcpStream>) -> std::io::Result<()> {
/// // Two requests in flight on one connection, told apart by their user values.
/// port.with_user(1).send(conn, b"header".to_vec());
/// port.with_user(2).send(conn, b"body".to_vec());
/// for _ in 0..2 {
///     let done = port.get_completion(None)?;
///     println!("request {} sent {} bytes", done.user(), done.result()?);
/// }
/// # Ok(()) }
/// ```
#[must_use = "nothing is submitted until one of its operations is called"]
pub struct Submit<'a> {
    port: &'a Iocp,
    user: usize,
    deadline: Option<Instant>,
}

impl<'a> Submit<'a> {
    pub(crate) fn new(port: &'a Iocp, user: usize) -> Submit<'a> {
        Submit {
            port,
            user,
            deadline: None,
        }
    }

    /// The user value the operation will carry.
    ///
    /// ```no_run
    /// # fn f(port: &proactor::Iocp) {
    /// assert_eq!(port.with_user(3).user(), 3);
    /// # }
    /// ```
    pub fn user(&self) -> usize {
        self.user
    }

    /// Gives the operation a deadline: if it has not completed by `at`, the port cancels it and
    /// it completes with the deadline error, [`crate::is_deadline`] true, kind
    /// [`std::io::ErrorKind::TimedOut`], the cancel's OS code kept (995 on Windows, 125
    /// `ECANCELED` on Linux); [`crate::is_cancelled`] is false for it, so a program tells it
    /// from its own cancels, and from a timeout the OS reports. Like any cancelled operation it
    /// hands its buffers back, with what was already transferred (a send cancelled part-way
    /// reports the bytes sent). When the operation completes at about its deadline there is
    /// still exactly one completion: its own outcome or the deadline, whichever won.
    ///
    /// The port keeps deadlines itself (see [`Iocp::timer`]): they expire while a thread is in
    /// [`Iocp::get_completion`] or [`Iocp::get_completions`], as every completion needs one.
    /// A later call replaces an earlier one.
    ///
    /// ```no_run
    /// # fn f(port: &proactor::Iocp, conn: &proactor::Handle<std::net::TcpStream>) -> std::io::Result<()> {
    /// use std::time::{Duration, Instant};
    /// let at = Instant::now() + Duration::from_millis(100);
    /// port.with_user(7).deadline(at).recv(conn, Vec::with_capacity(1024));
    /// let mut done = port.get_completion(None)?;
    /// if done.error().is_some_and(proactor::is_deadline) {
    ///     let buf = done.take_buffer(); // the buffer is back
    /// #   drop(buf);
    /// }
    /// # Ok(()) }
    /// ```
    pub fn deadline(mut self, at: Instant) -> Self {
        self.deadline = Some(at);
        self
    }

    /// [`deadline`](Submit::deadline) at `after` from now.
    ///
    /// ```no_run
    /// # fn f(port: &proactor::Iocp, conn: &proactor::Handle<std::net::TcpStream>) {
    /// use std::time::Duration;
    /// port.with_user(3).timeout(Duration::from_secs(1)).send(conn, b"ping".to_vec());
    /// # }
    /// ```
    pub fn timeout(self, after: Duration) -> Self {
        match Instant::now().checked_add(after) {
            Some(at) => self.deadline(at),
            // Too far to represent: no deadline.
            None => self,
        }
    }

    /// [`Iocp::timer`], carrying this user value. A deadline set on this `Submit` is ignored
    /// (the timer's duration is its deadline).
    ///
    /// ```no_run
    /// # fn f(port: &proactor::Iocp) -> std::io::Result<()> {
    /// use std::time::Duration;
    /// port.with_user(42).timer(Duration::from_millis(20));
    /// let done = port.get_completion(None)?;
    /// assert_eq!((done.kind(), done.user()), (proactor::OpKind::Timer, 42));
    /// # Ok(()) }
    /// ```
    pub fn timer(self, after: Duration) -> OpId {
        self.port.start_timer(self.user, after)
    }

    /// Registers the deadline of operation `id`, just submitted.
    fn arm(&self, id: OpId) -> OpId {
        if let Some(at) = self.deadline {
            self.port.set_deadline(id, at);
        }
        id
    }

    /// [`Iocp::recv`], carrying this user value.
    ///
    /// ```no_run
    /// # fn f(port: &proactor::Iocp, conn: &proactor::Handle<std::net::TcpStream>) {
    /// port.with_user(1).recv(conn, Vec::with_capacity(512));
    /// # }
    /// ```
    pub fn recv<T: Associate>(self, handle: &Handle<T>, buf: Vec<u8>) -> OpId {
        let id = self.port.sys().recv(&handle.target, self.user, buf);
        self.arm(id)
    }

    /// [`Iocp::recv_vectored`], carrying this user value.
    ///
    /// ```no_run
    /// # fn f(port: &proactor::Iocp, conn: &proactor::Handle<std::net::TcpStream>) {
    /// port.with_user(1).recv_vectored(conn, vec![Vec::with_capacity(64), Vec::with_capacity(4096)]);
    /// # }
    /// ```
    pub fn recv_vectored<T: Associate>(self, handle: &Handle<T>, bufs: Vec<Vec<u8>>) -> OpId {
        let id = self
            .port
            .sys()
            .recv_vectored(&handle.target, self.user, bufs);
        self.arm(id)
    }

    /// [`Iocp::readable`], carrying this user value.
    ///
    /// ```no_run
    /// # fn f(port: &proactor::Iocp, conn: &proactor::Handle<std::net::TcpStream>) {
    /// port.with_user(1).readable(conn);
    /// # }
    /// ```
    pub fn readable<T: Associate>(self, handle: &Handle<T>) -> OpId {
        let id = self.port.sys().readable(&handle.target, self.user);
        self.arm(id)
    }

    /// [`Iocp::send`], carrying this user value.
    ///
    /// ```no_run
    /// # fn f(port: &proactor::Iocp, conn: &proactor::Handle<std::net::TcpStream>) {
    /// port.with_user(2).send(conn, b"hi".to_vec());
    /// # }
    /// ```
    pub fn send<T: Associate>(self, handle: &Handle<T>, buf: Vec<u8>) -> OpId {
        let id = self.port.sys().send(&handle.target, self.user, buf);
        self.arm(id)
    }

    /// [`Iocp::send_vectored`], carrying this user value.
    ///
    /// ```no_run
    /// # fn f(port: &proactor::Iocp, conn: &proactor::Handle<std::net::TcpStream>) {
    /// port.with_user(2).send_vectored(conn, vec![b"head".to_vec(), b"body".to_vec()]);
    /// # }
    /// ```
    pub fn send_vectored<T: Associate>(self, handle: &Handle<T>, bufs: Vec<Vec<u8>>) -> OpId {
        let id = self
            .port
            .sys()
            .send_vectored(&handle.target, self.user, bufs);
        self.arm(id)
    }

    /// [`Iocp::recv_from`], carrying this user value.
    ///
    /// ```no_run
    /// # fn f(port: &proactor::Iocp, socket: &proactor::Handle<std::net::UdpSocket>) {
    /// port.with_user(1).recv_from(socket, Vec::with_capacity(1500));
    /// # }
    /// ```
    pub fn recv_from<T: Associate>(self, handle: &Handle<T>, buf: Vec<u8>) -> OpId {
        let id = self.port.sys().recv_from(&handle.target, self.user, buf);
        self.arm(id)
    }

    /// [`Iocp::send_to`], carrying this user value.
    ///
    /// ```no_run
    /// # fn f(port: &proactor::Iocp, socket: &proactor::Handle<std::net::UdpSocket>) -> std::io::Result<()> {
    /// let to: std::net::SocketAddr = "127.0.0.1:9000".parse().unwrap();
    /// port.with_user(2).send_to(socket, b"ping".to_vec(), to);
    /// # Ok(()) }
    /// ```
    pub fn send_to<T: Associate>(self, handle: &Handle<T>, buf: Vec<u8>, addr: SocketAddr) -> OpId {
        let id = self
            .port
            .sys()
            .send_to(&handle.target, self.user, buf, addr);
        self.arm(id)
    }

    /// [`Iocp::read_at`], carrying this user value.
    ///
    /// ```no_run
    /// # fn f(port: &proactor::Iocp, file: &proactor::Handle<std::fs::File>) {
    /// port.with_user(1).read_at(file, Vec::with_capacity(4096), 8192);
    /// # }
    /// ```
    pub fn read_at<T: Associate>(self, handle: &Handle<T>, buf: Vec<u8>, offset: u64) -> OpId {
        let id = self
            .port
            .sys()
            .read_at(&handle.target, self.user, buf, offset);
        self.arm(id)
    }

    /// [`Iocp::write_at`], carrying this user value.
    ///
    /// ```no_run
    /// # fn f(port: &proactor::Iocp, file: &proactor::Handle<std::fs::File>) {
    /// port.with_user(2).write_at(file, b"record".to_vec(), 8192);
    /// # }
    /// ```
    pub fn write_at<T: Associate>(self, handle: &Handle<T>, buf: Vec<u8>, offset: u64) -> OpId {
        let id = self
            .port
            .sys()
            .write_at(&handle.target, self.user, buf, offset);
        self.arm(id)
    }

    /// [`Iocp::accept`], carrying this user value.
    ///
    /// ```no_run
    /// # fn f(port: &proactor::Iocp, listener: &proactor::Handle<std::net::TcpListener>) {
    /// port.with_user(9).accept(listener);
    /// # }
    /// ```
    pub fn accept<T: Associate>(self, listener: &Handle<T>) -> OpId {
        let id = self.port.sys().accept(&listener.target, self.user);
        self.arm(id)
    }

    /// [`Iocp::connect`], carrying this user value.
    ///
    /// ```no_run
    /// # fn f(port: &proactor::Iocp, socket: &proactor::Handle<socket2::Socket>) {
    /// port.with_user(4).connect(socket, "127.0.0.1:8080".parse().unwrap());
    /// # }
    /// ```
    pub fn connect<T: Associate>(self, socket: &Handle<T>, addr: SocketAddr) -> OpId {
        let id = self.port.sys().connect(&socket.target, self.user, addr);
        self.arm(id)
    }

    /// [`Iocp::transmit_file`], carrying this user value.
    ///
    /// ```no_run
    /// # fn f(port: &proactor::Iocp, conn: &proactor::Handle<std::net::TcpStream>, file: &std::fs::File) {
    /// port.with_user(5).transmit_file(conn, file, 0, 65_536); // the file's first 64 KiB
    /// # }
    /// ```
    pub fn transmit_file<T: Associate>(
        self,
        socket: &Handle<T>,
        file: &std::fs::File,
        offset: u64,
        len: u32,
    ) -> OpId {
        let id = self
            .port
            .sys()
            .transmit_file(&socket.target, self.user, file, offset, len);
        self.arm(id)
    }

    /// [`Iocp::disconnect`], carrying this user value.
    ///
    /// ```no_run
    /// # fn f(port: &proactor::Iocp, conn: &proactor::Handle<std::net::TcpStream>) {
    /// port.with_user(6).disconnect(conn);
    /// # }
    /// ```
    pub fn disconnect<T: Associate>(self, socket: &Handle<T>) -> OpId {
        let id = self.port.sys().disconnect(&socket.target, self.user);
        self.arm(id)
    }

    /// [`Iocp::ioctl`], carrying this user value.
    ///
    /// ```no_run
    /// # fn f(port: &proactor::Iocp, device: &proactor::Handle<std::fs::File>, code: u32) {
    /// port.with_user(7).ioctl(device, code, Vec::new(), Vec::with_capacity(256));
    /// # }
    /// ```
    pub fn ioctl<T: Associate>(
        self,
        handle: &Handle<T>,
        code: u32,
        input: Vec<u8>,
        output: Vec<u8>,
    ) -> OpId {
        let id = self
            .port
            .sys()
            .ioctl(&handle.target, self.user, code, input, output);
        self.arm(id)
    }
}

impl fmt::Debug for Submit<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Submit")
            .field("user", &self.user)
            .field("deadline", &self.deadline)
            .finish()
    }
}
