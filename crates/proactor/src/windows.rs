//! Windows-only extras: the port's raw handle, skip-on-success control, NTSTATUS codes.
//!
//! Nothing here is needed to write a portable program; it serves diagnostics, demos and tests
//! that want to see the Windows mechanism itself.

use std::{
    io,
    os::windows::io::{AsRawHandle, RawHandle},
};

use std::time::Duration;

use windows_sys::Win32::Networking::WinSock::{
    SIO_ADDRESS_LIST_CHANGE, SIO_GET_EXTENSION_FUNCTION_POINTER, SIO_KEEPALIVE_VALS,
};

use crate::{Associate, Completion, Handle, Iocp, OpId};

/// Windows-only methods of [`Iocp`].
///
/// ```no_run
/// use proactor::windows::IocpExt;
/// let port = proactor::Iocp::new()?;
/// port.set_skip_completion_port_on_success(true);
/// println!("{} operations needed no packet", port.immediate_completions());
/// # Ok::<(), std::io::Error>(())
/// ```
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

    /// Waits for a client to connect to a named pipe's server end (`ConnectNamedPipe`). A
    /// client that connected before the call counts as connected.
    ///
    /// ```no_run
    /// use proactor::windows::{IocpExt, named_pipe};
    /// # fn main() -> std::io::Result<()> {
    /// let port = proactor::Iocp::new()?;
    /// let server = port.add_handle(named_pipe::create(r"\\.\pipe\demo", false)?, 1)?;
    /// port.connect_named_pipe(&server);
    /// # Ok(()) }
    /// ```
    fn connect_named_pipe<T: Associate>(&self, pipe: &Handle<T>) -> OpId;

    /// Asks a socket's provider for an extension function (`SIO_GET_EXTENSION_FUNCTION_POINTER`,
    /// overlapped) by its GUID, given as the 128-bit number `GUID::from_u128` takes. The
    /// completion's ioctl output ([`Completion::take_ioctl`]) holds the function's address, in
    /// native byte order ([`function_address`] reads it).
    ///
    /// ```no_run
    /// use proactor::windows::{IocpExt, function_address};
    /// # fn f(port: &proactor::Iocp, socket: &proactor::Handle<std::net::TcpStream>) -> std::io::Result<()> {
    /// const WSAID_TRANSMITFILE: u128 = 0xb5367df0_cbac_11cf_95ca_00805f48a192;
    /// port.extension_function(socket, WSAID_TRANSMITFILE);
    /// let mut done = port.get_completion(None)?;
    /// let (_, output) = done.take_ioctl().unwrap();
    /// println!("TransmitFile is at {:#x}", function_address(&output).unwrap());
    /// # Ok(()) }
    /// ```
    fn extension_function<T: Associate>(&self, socket: &Handle<T>, guid: u128) -> OpId;
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

    fn connect_named_pipe<T: Associate>(&self, pipe: &Handle<T>) -> OpId {
        self.sys().connect_pipe(&pipe.target, 0)
    }

    fn extension_function<T: Associate>(&self, socket: &Handle<T>, guid: u128) -> OpId {
        let guid = windows_sys::core::GUID::from_u128(guid);
        let mut input = Vec::with_capacity(16);
        input.extend_from_slice(&guid.data1.to_ne_bytes());
        input.extend_from_slice(&guid.data2.to_ne_bytes());
        input.extend_from_slice(&guid.data3.to_ne_bytes());
        input.extend_from_slice(&guid.data4);
        let output = Vec::with_capacity(std::mem::size_of::<usize>());
        self.ioctl(socket, SIO_GET_EXTENSION_FUNCTION_POINTER, input, output)
    }
}

/// The function address in an [`IocpExt::extension_function`] output, if it holds one.
///
/// ```
/// let output = 0x1234_usize.to_ne_bytes().to_vec();
/// assert_eq!(proactor::windows::function_address(&output), Some(0x1234));
/// assert_eq!(proactor::windows::function_address(&[]), None);
/// ```
pub fn function_address(output: &[u8]) -> Option<usize> {
    let bytes: [u8; std::mem::size_of::<usize>()] = output
        .get(..std::mem::size_of::<usize>())?
        .try_into()
        .ok()?;
    Some(usize::from_ne_bytes(bytes)).filter(|&a| a != 0)
}

/// Windows-only methods of [`Completion`].
///
/// ```no_run
/// use proactor::windows::CompletionExt;
/// # fn f(port: &proactor::Iocp) -> std::io::Result<()> {
/// let done = port.get_completion(None)?;
/// println!("{:?} completed, OVERLAPPED {:#x}", done.kind(), done.overlapped_address());
/// # Ok(()) }
/// ```
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
///
/// ```no_run
/// use proactor::windows::HandleExt;
/// # fn f(port: &proactor::Iocp) -> std::io::Result<()> {
/// let conn = port.add_handle(std::net::TcpStream::connect("127.0.0.1:8080")?, 1)?;
/// println!("skip-on-success: {}", conn.skips_completion_port_on_success());
/// # Ok(()) }
/// ```
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
/// completion is delivered to this port like any other, with its buffers. Dropping the handle,
/// or [`Iocp::cancel_all`] on it, cancels proactor's operations on it, and only those; the
/// owner's are untouched, and the owner keeps the object open and closes it. The port may be
/// dropped first: it cancels and reclaims its operations, and the handle's drop then does
/// nothing.
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
    ///
    /// ```no_run
    /// use std::os::windows::io::AsSocket;
    /// use proactor::windows::Foreign;
    /// # fn f(port: &proactor::Iocp, owned_elsewhere: &std::net::TcpStream) -> std::io::Result<()> {
    /// let borrowed = port.add_handle(Foreign::socket(owned_elsewhere.as_socket()), 7)?;
    /// port.recv(&borrowed, Vec::with_capacity(4096));
    /// # Ok(()) }
    /// ```
    pub fn socket(socket: std::os::windows::io::BorrowedSocket<'a>) -> Foreign<'a> {
        use std::os::windows::io::AsRawSocket;
        Foreign {
            raw: crate::sys::RawIo::Socket(socket.as_raw_socket() as usize),
            _borrow: std::marker::PhantomData,
        }
    }

    /// A file, pipe or device handle another port owns.
    ///
    /// ```no_run
    /// use std::os::windows::io::AsHandle;
    /// use proactor::windows::Foreign;
    /// # fn f(port: &proactor::Iocp, owned_elsewhere: &std::fs::File) -> std::io::Result<()> {
    /// let borrowed = port.add_handle(Foreign::handle(owned_elsewhere.as_handle()), 8)?;
    /// port.read_at(&borrowed, Vec::with_capacity(4096), 0);
    /// # Ok(()) }
    /// ```
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

    fn into_owned_socket(self) -> Option<std::os::windows::io::OwnedSocket> {
        None // its owner's to close
    }
}

impl Associate for Foreign<'_> {}

/// Named pipes: create a server end, open a client end, both for overlapped I/O.
///
/// Read and write them with [`Iocp::read_at`] and [`Iocp::write_at`] (the offset is ignored);
/// wait for a client with [`connect_named_pipe`](IocpExt::connect_named_pipe). A read whose
/// writer has gone ends as `Ok(0)`, EOF; a write to a pipe whose reader has gone fails with
/// [`std::io::ErrorKind::BrokenPipe`]; a message-mode read into a buffer smaller than the
/// message fails with `ERROR_MORE_DATA` (234) and keeps the bytes it read, the rest is read
/// next.
pub mod named_pipe {
    use std::{
        fs::{File, OpenOptions},
        io,
        os::windows::{
            fs::OpenOptionsExt,
            io::{FromRawHandle, OwnedHandle},
        },
        ptr,
    };

    use windows_sys::Win32::{
        Foundation::INVALID_HANDLE_VALUE,
        Storage::FileSystem::{
            FILE_FLAG_FIRST_PIPE_INSTANCE, FILE_FLAG_OVERLAPPED, PIPE_ACCESS_DUPLEX,
        },
        System::Pipes::{
            CreateNamedPipeW, PIPE_READMODE_BYTE, PIPE_READMODE_MESSAGE,
            PIPE_REJECT_REMOTE_CLIENTS, PIPE_TYPE_BYTE, PIPE_TYPE_MESSAGE,
            PIPE_UNLIMITED_INSTANCES, SetNamedPipeHandleState,
        },
    };

    /// Creates the first server end of the pipe `name` (`\\.\pipe\...`), duplex, for
    /// overlapped I/O, local clients only; `message` selects message mode.
    ///
    /// ```no_run
    /// let server = proactor::windows::named_pipe::create(r"\\.\pipe\proactor-demo", false)?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn create(name: &str, message: bool) -> io::Result<OwnedHandle> {
        let wide: Vec<u16> = name.encode_utf16().chain(Some(0)).collect();
        let mode = if message {
            PIPE_TYPE_MESSAGE | PIPE_READMODE_MESSAGE
        } else {
            PIPE_TYPE_BYTE | PIPE_READMODE_BYTE
        };
        // SAFETY: `wide` is a NUL-terminated UTF-16 name that lives across the call; the other
        // arguments are plain values.
        let raw = unsafe {
            CreateNamedPipeW(
                wide.as_ptr(),
                PIPE_ACCESS_DUPLEX | FILE_FLAG_OVERLAPPED | FILE_FLAG_FIRST_PIPE_INSTANCE,
                mode | PIPE_REJECT_REMOTE_CLIENTS,
                PIPE_UNLIMITED_INSTANCES,
                64 * 1024,
                64 * 1024,
                0,
                ptr::null(),
            )
        };
        if raw == INVALID_HANDLE_VALUE {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a new handle that nothing else owns.
        Ok(unsafe { OwnedHandle::from_raw_handle(raw) })
    }

    /// Opens a client end of the pipe `name`, for overlapped I/O; `message` switches it to
    /// message read mode.
    ///
    /// ```no_run
    /// let client = proactor::windows::named_pipe::open(r"\\.\pipe\proactor-demo", false)?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn open(name: &str, message: bool) -> io::Result<File> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(FILE_FLAG_OVERLAPPED)
            .open(name)?;
        if message {
            let mode = PIPE_READMODE_MESSAGE;
            // SAFETY: the handle is open; `mode` lives across the call; null leaves the rest.
            let ok = unsafe {
                SetNamedPipeHandleState(
                    std::os::windows::io::AsRawHandle::as_raw_handle(&file),
                    &mode,
                    ptr::null(),
                    ptr::null(),
                )
            };
            if ok == 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(file)
    }
}
