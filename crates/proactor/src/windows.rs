//! Windows-only extras: the port's raw handle, skip-on-success control, NTSTATUS codes.
//!
//! Nothing here is needed to write a portable program; it serves diagnostics, demos and tests
//! that want to see the Windows mechanism itself.

use std::{
    io,
    os::windows::io::{AsRawHandle, RawHandle},
};

use std::time::Duration;

use windows_sys::Win32::Networking::WinSock::{SIO_ADDRESS_LIST_CHANGE, SIO_KEEPALIVE_VALS};

use crate::{Associate, Completion, Handle, Iocp, OpId};

/// Windows-only methods of [`Iocp`].
pub trait IocpExt {
    /// Whether handles associated from now on are put in skip-on-success mode
    /// (`FILE_SKIP_COMPLETION_PORT_ON_SUCCESS | FILE_SKIP_SET_EVENT_ON_HANDLE`). On by default;
    /// sockets get it only when every TCP and UDP provider is IFS.
    ///
    /// ```no_run
    /// use proactor::windows::IocpExt;
    /// let port = proactor::Iocp::new()?;
    /// port.set_skip_completion_port_on_success(false);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    fn set_skip_completion_port_on_success(&self, on: bool);

    /// How many operations ended at submission (an immediate success on a skip-on-success
    /// handle, or an immediate failure) and were delivered without a kernel packet.
    ///
    /// ```no_run
    /// use proactor::windows::IocpExt;
    /// # fn f(port: &proactor::Iocp) {
    /// println!("{} completions needed no packet", port.immediate_completions());
    /// # }
    /// ```
    fn immediate_completions(&self) -> u64;

    /// The address of the `OVERLAPPED` an operation in flight uses, for logs (as the classic
    /// IOCP tutorials print it); `None` once its completion was dequeued. A number only: it
    /// cannot be turned back into anything.
    ///
    /// ```no_run
    /// use proactor::windows::IocpExt;
    /// # fn f(port: &proactor::Iocp, conn: &proactor::Handle<std::net::TcpStream>) {
    /// let id = port.recv(conn, Vec::with_capacity(512));
    /// if let Some(ov) = port.overlapped_address(id) {
    ///     println!("Read submitted. Overlapped: {ov:#x}");
    /// }
    /// # }
    /// ```
    fn overlapped_address(&self, id: OpId) -> Option<usize>;

    /// Sets TCP keep-alive on a socket (`SIO_KEEPALIVE_VALS`, overlapped): probes start after
    /// `idle` without traffic and repeat every `interval` (both rounded to milliseconds).
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use proactor::windows::IocpExt;
    /// # fn f(port: &proactor::Iocp, conn: &proactor::Handle<std::net::TcpStream>) {
    /// port.keepalive(conn, true, Duration::from_secs(30), Duration::from_secs(5));
    /// # }
    /// ```
    fn keepalive<T: Associate>(
        &self,
        socket: &Handle<T>,
        on: bool,
        idle: Duration,
        interval: Duration,
    ) -> OpId;

    /// Waits for a change in the local address list (`SIO_ADDRESS_LIST_CHANGE`): stays pending
    /// until an address is added or removed, or the operation is cancelled.
    ///
    /// ```no_run
    /// use proactor::windows::IocpExt;
    /// # fn f(port: &proactor::Iocp, conn: &proactor::Handle<std::net::UdpSocket>) {
    /// let id = port.address_list_change(conn);
    /// # }
    /// ```
    fn address_list_change<T: Associate>(&self, socket: &Handle<T>) -> OpId;
}

impl IocpExt for Iocp {
    fn set_skip_completion_port_on_success(&self, on: bool) {
        self.sys().set_skip_on_success(on);
    }

    fn immediate_completions(&self) -> u64 {
        self.sys().immediate_completions()
    }

    fn overlapped_address(&self, id: OpId) -> Option<usize> {
        self.sys().overlapped_address(id)
    }

    fn keepalive<T: Associate>(
        &self,
        socket: &Handle<T>,
        on: bool,
        idle: Duration,
        interval: Duration,
    ) -> OpId {
        let millis = |d: Duration| u32::try_from(d.as_millis()).unwrap_or(u32::MAX);
        let mut input = Vec::with_capacity(12);
        for value in [u32::from(on), millis(idle), millis(interval)] {
            input.extend_from_slice(&value.to_ne_bytes()); // struct tcp_keepalive
        }
        self.ioctl(socket, SIO_KEEPALIVE_VALS, input, Vec::new())
    }

    fn address_list_change<T: Associate>(&self, socket: &Handle<T>) -> OpId {
        self.ioctl(socket, SIO_ADDRESS_LIST_CHANGE, Vec::new(), Vec::new())
    }
}

/// Windows-only methods of [`Completion`].
pub trait CompletionExt {
    /// The address the operation's `OVERLAPPED` had, for logs (0 for an operation refused
    /// before it reached the kernel). A number only: the memory is already reclaimed.
    ///
    /// ```no_run
    /// use proactor::windows::CompletionExt;
    /// # fn f(done: &proactor::Completion) {
    /// println!("Completion received. Overlapped: {:#x}", done.overlapped_address());
    /// # }
    /// ```
    fn overlapped_address(&self) -> usize;
}

impl CompletionExt for Completion {
    fn overlapped_address(&self) -> usize {
        self.address
    }
}

/// The completion port's handle, for logs and diagnostics.
///
/// ```no_run
/// use std::os::windows::io::AsRawHandle;
/// let port = proactor::Iocp::new()?;
/// println!("IOCP created. Handle: {:?}", port.as_raw_handle());
/// # Ok::<(), std::io::Error>(())
/// ```
impl AsRawHandle for Iocp {
    fn as_raw_handle(&self) -> RawHandle {
        self.sys().raw_handle()
    }
}

/// Windows-only methods of [`Handle`].
pub trait HandleExt {
    /// Whether the handle skips the completion port when an operation succeeds at once.
    ///
    /// ```no_run
    /// use proactor::windows::HandleExt;
    /// # fn f(conn: &proactor::Handle<std::net::TcpStream>) {
    /// println!("skip-on-success: {}", conn.skips_completion_port_on_success());
    /// # }
    /// ```
    fn skips_completion_port_on_success(&self) -> bool;
}

impl<T: Associate> HandleExt for Handle<T> {
    fn skips_completion_port_on_success(&self) -> bool {
        self.target.route.skip_on_success
    }
}

/// The NTSTATUS an operation's error was translated from, when the kernel reported one (for
/// example `0xC000020D` `STATUS_CONNECTION_RESET` behind a `ConnectionReset`).
///
/// ```
/// assert_eq!(proactor::windows::ntstatus(&std::io::Error::other("x")), None);
/// ```
pub fn ntstatus(err: &io::Error) -> Option<i32> {
    crate::error::ntstatus(err)
}

/// A socket or handle that another completion port owns (a Go runtime's, tokio's, .NET's), or
/// that no port owns, borrowed for proactor's operations.
///
/// A handle joins one completion port for life, so proactor cannot associate it. Pass a
/// `Foreign` to [`Iocp::add_handle`] instead: it is not associated, and every operation on the
/// returned handle puts an event whose low-order bit is set in its `OVERLAPPED`. No packet then
/// reaches the owning port (whose owner would not recognise the `OVERLAPPED`), and the
/// completion is delivered to this port like any other, with its buffers. Dropping the handle
/// cancels proactor's operations on it, and only those; the owner's are untouched, and the
/// owner keeps the object open and closes it.
///
/// ```no_run
/// use proactor::{windows::Foreign, Iocp, OpKind};
/// use std::os::windows::io::AsSocket;
///
/// # fn main() -> std::io::Result<()> {
/// let runtime_port = Iocp::new()?; // stands for the runtime that owns the socket
/// let owned = runtime_port.add_handle(std::net::TcpStream::connect("127.0.0.1:8080")?, 0)?;
///
/// let port = Iocp::new()?;
/// let borrowed = port.add_handle(Foreign::socket(owned.as_socket()), 7)?;
/// port.recv(&borrowed, Vec::with_capacity(4096));
/// let done = port.get_completion(None)?; // arrives here, never on runtime_port
/// assert_eq!((done.kind(), done.context()), (OpKind::Recv, 7));
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Foreign<'a> {
    raw: crate::sys::RawIo,
    _borrow: std::marker::PhantomData<&'a ()>,
}

impl<'a> Foreign<'a> {
    /// A socket another port owns.
    pub fn socket(socket: std::os::windows::io::BorrowedSocket<'a>) -> Foreign<'a> {
        use std::os::windows::io::AsRawSocket;
        Foreign {
            raw: crate::sys::RawIo::Socket(socket.as_raw_socket() as usize),
            _borrow: std::marker::PhantomData,
        }
    }

    /// A file, pipe or device handle another port owns.
    pub fn handle(handle: std::os::windows::io::BorrowedHandle<'a>) -> Foreign<'a> {
        Foreign {
            raw: crate::sys::RawIo::Handle(handle.as_raw_handle() as usize),
            _borrow: std::marker::PhantomData,
        }
    }
}

impl crate::handle::Sealed for Foreign<'_> {
    fn raw_io(&self) -> crate::sys::RawIo {
        self.raw
    }

    fn foreign(&self) -> bool {
        true
    }
}

impl Associate for Foreign<'_> {}
