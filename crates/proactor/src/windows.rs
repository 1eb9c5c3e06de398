//! Windows-only extras: the port's raw handle, skip-on-success control, NTSTATUS codes.
//!
//! Nothing here is needed to write a portable program; it serves diagnostics, demos and tests
//! that want to see the Windows mechanism itself.

use std::{
    io,
    os::windows::io::{AsRawHandle, RawHandle},
};

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
        self.target.skip_on_success
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
