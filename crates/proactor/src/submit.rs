//! One operation with options of its own: the user value its completion hands back.

use std::{fmt, net::SocketAddr};

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
}

impl<'a> Submit<'a> {
    pub(crate) fn new(port: &'a Iocp, user: usize) -> Submit<'a> {
        Submit { port, user }
    }

    /// The user value the operation will carry.
    pub fn user(&self) -> usize {
        self.user
    }

    /// [`Iocp::recv`], carrying this user value.
    pub fn recv<T: Associate>(self, handle: &Handle<T>, buf: Vec<u8>) -> OpId {
        self.port.sys().recv(&handle.target, self.user, buf)
    }

    /// [`Iocp::recv_vectored`], carrying this user value.
    pub fn recv_vectored<T: Associate>(self, handle: &Handle<T>, bufs: Vec<Vec<u8>>) -> OpId {
        self.port
            .sys()
            .recv_vectored(&handle.target, self.user, bufs)
    }

    /// [`Iocp::readable`], carrying this user value.
    pub fn readable<T: Associate>(self, handle: &Handle<T>) -> OpId {
        self.port.sys().readable(&handle.target, self.user)
    }

    /// [`Iocp::send`], carrying this user value.
    pub fn send<T: Associate>(self, handle: &Handle<T>, buf: Vec<u8>) -> OpId {
        self.port.sys().send(&handle.target, self.user, buf)
    }

    /// [`Iocp::send_vectored`], carrying this user value.
    pub fn send_vectored<T: Associate>(self, handle: &Handle<T>, bufs: Vec<Vec<u8>>) -> OpId {
        self.port
            .sys()
            .send_vectored(&handle.target, self.user, bufs)
    }

    /// [`Iocp::recv_from`], carrying this user value.
    pub fn recv_from<T: Associate>(self, handle: &Handle<T>, buf: Vec<u8>) -> OpId {
        self.port.sys().recv_from(&handle.target, self.user, buf)
    }

    /// [`Iocp::send_to`], carrying this user value.
    pub fn send_to<T: Associate>(self, handle: &Handle<T>, buf: Vec<u8>, addr: SocketAddr) -> OpId {
        self.port
            .sys()
            .send_to(&handle.target, self.user, buf, addr)
    }

    /// [`Iocp::read_at`], carrying this user value.
    pub fn read_at<T: Associate>(self, handle: &Handle<T>, buf: Vec<u8>, offset: u64) -> OpId {
        self.port
            .sys()
            .read_at(&handle.target, self.user, buf, offset)
    }

    /// [`Iocp::write_at`], carrying this user value.
    pub fn write_at<T: Associate>(self, handle: &Handle<T>, buf: Vec<u8>, offset: u64) -> OpId {
        self.port
            .sys()
            .write_at(&handle.target, self.user, buf, offset)
    }

    /// [`Iocp::accept`], carrying this user value.
    pub fn accept<T: Associate>(self, listener: &Handle<T>) -> OpId {
        self.port.sys().accept(&listener.target, self.user)
    }

    /// [`Iocp::connect`], carrying this user value.
    pub fn connect<T: Associate>(self, socket: &Handle<T>, addr: SocketAddr) -> OpId {
        self.port.sys().connect(&socket.target, self.user, addr)
    }

    /// [`Iocp::transmit_file`], carrying this user value.
    pub fn transmit_file<T: Associate>(
        self,
        socket: &Handle<T>,
        file: &std::fs::File,
        offset: u64,
        len: u32,
    ) -> OpId {
        self.port
            .sys()
            .transmit_file(&socket.target, self.user, file, offset, len)
    }

    /// [`Iocp::disconnect`], carrying this user value.
    pub fn disconnect<T: Associate>(self, socket: &Handle<T>) -> OpId {
        self.port.sys().disconnect(&socket.target, self.user)
    }

    /// [`Iocp::ioctl`], carrying this user value.
    pub fn ioctl<T: Associate>(
        self,
        handle: &Handle<T>,
        code: u32,
        input: Vec<u8>,
        output: Vec<u8>,
    ) -> OpId {
        self.port
            .sys()
            .ioctl(&handle.target, self.user, code, input, output)
    }
}

impl fmt::Debug for Submit<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Submit").field("user", &self.user).finish()
    }
}
