//! The error convention: `io::Error` whose kind says what happened and which keeps the OS code.
//!
//! Where the standard library's own mapping of an OS code gives the right
//! [`io::ErrorKind`], the error is `io::Error::from_raw_os_error(code)` and
//! [`io::Error::raw_os_error`] returns the code. Where proactor must correct the kind (a Windows
//! `ERROR_NETNAME_DELETED` is a connection reset, a local cancel is not a timeout), the error wraps
//! an [`OsError`] that carries the code; [`raw_os_error`] finds it in both cases.

use std::{error::Error, fmt, io};

/// An OS error code whose [`io::ErrorKind`] proactor corrected.
#[derive(Debug, Clone)]
pub(crate) struct OsError {
    /// The OS code (a Win32 or WinSock error on Windows, an errno on Linux).
    pub(crate) code: i32,
    /// The NTSTATUS the code was translated from, where there was one.
    pub(crate) ntstatus: Option<i32>,
    /// What proactor knows of the error beyond its code.
    pub(crate) cause: Cause,
    /// What the code means here, when the OS's own message would not say it.
    pub(crate) note: Option<&'static str>,
}

/// What an [`OsError`] means beyond its code: at most one of these holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cause {
    /// Only the code.
    Os,
    /// The operation was cancelled locally ([`is_cancelled`]).
    Cancelled,
    /// A datagram was longer than the buffer and was cut short ([`is_truncated`]).
    Truncated,
    /// The port cancelled the operation because its deadline passed ([`is_deadline`]).
    Deadline,
}

impl fmt::Display for OsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.cause {
            Cause::Cancelled => f.write_str("operation cancelled: ")?,
            Cause::Deadline => f.write_str("operation deadline passed: ")?,
            Cause::Os | Cause::Truncated => {}
        }
        if let Some(note) = self.note {
            write!(f, "{note}: ")?;
        }
        // The standard library's Display for an OS code prints the system's message and the code.
        write!(f, "{}", io::Error::from_raw_os_error(self.code))?;
        if let Some(status) = self.ntstatus {
            write!(f, " (NTSTATUS {status:#010x})")?;
        }
        Ok(())
    }
}

impl Error for OsError {}

/// The one way an [`OsError`] is built.
fn os(
    kind: io::ErrorKind,
    code: i32,
    ntstatus: Option<i32>,
    cause: Cause,
    note: Option<&'static str>,
) -> io::Error {
    io::Error::new(
        kind,
        OsError {
            code,
            ntstatus,
            cause,
            note,
        },
    )
}

/// Builds the error for `code` with a corrected `kind`.
#[cfg_attr(not(windows), allow(dead_code))]
pub(crate) fn corrected(kind: io::ErrorKind, code: i32, ntstatus: Option<i32>) -> io::Error {
    os(kind, code, ntstatus, Cause::Os, None)
}

/// Builds the error for `code` with a corrected `kind` and a note saying what it means here.
#[cfg_attr(not(windows), allow(dead_code))]
pub(crate) fn explained(kind: io::ErrorKind, code: i32, note: &'static str) -> io::Error {
    os(kind, code, None, Cause::Os, Some(note))
}

/// Builds the error for an operation that was cancelled locally, as OS `code` reported it.
///
/// Its kind is [`io::ErrorKind::Other`]: never a remote reset, an EOF or a timeout, and never
/// [`io::ErrorKind::Interrupted`], which `read_exact`, `write_all`, `io::copy` and most retry
/// loops take as "try again" (an adapter would resubmit a cancelled operation forever).
/// [`is_cancelled`] tells it apart.
pub(crate) fn cancelled(code: i32, ntstatus: Option<i32>) -> io::Error {
    os(io::ErrorKind::Other, code, ntstatus, Cause::Cancelled, None)
}

/// The error of an operation the port cancelled because its deadline passed: kind
/// [`io::ErrorKind::TimedOut`], the cancel's OS code (`code`: 995 or `ECANCELED`), and
/// [`is_deadline`] true while [`is_cancelled`] is false.
pub(crate) fn deadline(code: i32, ntstatus: Option<i32>) -> io::Error {
    os(
        io::ErrorKind::TimedOut,
        code,
        ntstatus,
        Cause::Deadline,
        None,
    )
}

/// The cancelled error made into a deadline error, keeping its code; `None` if `err` is not a
/// cancel.
pub(crate) fn cancel_to_deadline(err: &io::Error) -> Option<io::Error> {
    let e = os_error(err).filter(|e| e.cause == Cause::Cancelled)?;
    Some(deadline(e.code, e.ntstatus))
}

/// Builds the error of a datagram receive whose datagram did not fit: kind
/// [`io::ErrorKind::InvalidData`], OS `code` kept (`EMSGSIZE` on Linux, `WSAEMSGSIZE` on
/// Windows), recognised by [`is_truncated`].
#[cfg_attr(not(any(windows, target_os = "linux")), allow(dead_code))]
pub(crate) fn truncated(code: i32, ntstatus: Option<i32>) -> io::Error {
    os(
        io::ErrorKind::InvalidData,
        code,
        ntstatus,
        Cause::Truncated,
        Some("datagram truncated"),
    )
}

/// Builds a misuse error that no OS call produced.
#[cfg_attr(not(windows), allow(dead_code))]
pub(crate) fn misuse(kind: io::ErrorKind, message: &'static str) -> io::Error {
    io::Error::new(kind, message)
}

/// An operation on a handle associated with another port.
#[cfg_attr(not(any(windows, target_os = "linux")), allow(dead_code))]
pub(crate) fn other_port() -> io::Error {
    misuse(
        io::ErrorKind::InvalidInput,
        "the handle is associated with another completion port",
    )
}

/// A receive with a buffer of its own on a handle whose pooled receives are pending
/// ([`LocalPort`](crate::LocalPort), both engines).
pub(crate) fn mixing() -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        "a receive with a buffer on a handle with a pooled receive pending (the two would take bytes out of order)",
    )
}

/// A read or write whose range (offset plus length) passes `i64::MAX`: refused on every
/// backend, since the systems give some such offsets meanings of their own (io_uring: the
/// file's current position; Windows: the end of the file) and refuse the others (Linux:
/// `EINVAL` once the range's end passes it, even for a read past the end of the file).
pub(crate) fn offset_too_large() -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        "an offset whose range passes i64::MAX (the systems give such offsets meanings of their own)",
    )
}

/// Whether the range of `len` bytes at `offset` is one [`offset_too_large`] refuses.
pub(crate) fn refused_range(offset: u64, len: usize) -> bool {
    offset
        .checked_add(len as u64)
        .is_none_or(|end| end > i64::MAX as u64)
}

/// A send or write of more than one Windows call moves (`u32::MAX` bytes): refused, since a
/// partial one would let the next operation's bytes follow it on the stream.
#[cfg(windows)]
pub(crate) fn too_long_for_one_call() -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        "more than 4 GiB - 1 bytes in one send or write (one Windows call moves at most that)",
    )
}

/// A pooled receive on a socket that keeps message boundaries (both engines): a datagram
/// larger than the pool's buffers would be cut with no error.
pub(crate) fn pooled_needs_stream() -> io::Error {
    io::Error::new(
        io::ErrorKind::Unsupported,
        "pooled receive needs a stream socket (a datagram larger than a pool buffer would be cut): use recv_from",
    )
}

/// A wait for completions that ran out of time, with the code the port's own wait gives
/// (`WAIT_TIMEOUT` on Windows, `ETIMEDOUT` on Linux).
pub(crate) fn timed_out() -> io::Error {
    #[cfg(windows)]
    return io::Error::from_raw_os_error(windows_sys::Win32::Foundation::WAIT_TIMEOUT as i32);
    #[cfg(target_os = "linux")]
    return io::Error::from_raw_os_error(libc::ETIMEDOUT);
    #[cfg(not(any(windows, target_os = "linux")))]
    io::Error::from(io::ErrorKind::TimedOut)
}

/// A pooled receive on a socket another port owns (`proactor::windows::Foreign`): its owner
/// may read it too, and a receive that does not wait cannot be made on it without changing
/// the owner's socket mode or racing the owner's reads (a stale readiness would block the
/// port's thread).
#[cfg_attr(not(windows), allow(dead_code))]
pub(crate) fn pooled_on_foreign() -> io::Error {
    io::Error::new(
        io::ErrorKind::Unsupported,
        "pooled receive on a socket another port owns: use recv with a buffer",
    )
}

/// `send_pooled` with a buffer of another port's pool (both engines).
pub(crate) fn foreign_buffer() -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        "send_pooled with a buffer of another port's pool",
    )
}

/// [`LocalSubmit::skip_success`](crate::LocalSubmit::skip_success) on an operation other than a
/// send of one buffer (both engines).
pub(crate) fn skip_needs_send() -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        "skip_success applies to send and send_pooled only",
    )
}

/// A socket operation on something else.
#[cfg_attr(not(any(windows, target_os = "linux")), allow(dead_code))]
pub(crate) fn needs_socket() -> io::Error {
    misuse(io::ErrorKind::InvalidInput, "this operation needs a socket")
}

/// A receive or read with nowhere to put the bytes.
#[cfg_attr(not(any(windows, target_os = "linux")), allow(dead_code))]
pub(crate) fn no_spare_capacity() -> io::Error {
    misuse(
        io::ErrorKind::InvalidInput,
        "the buffer has no spare capacity to receive into (reserve some: Vec::with_capacity)",
    )
}

/// A cancel of an operation that has finished.
#[cfg_attr(not(any(windows, target_os = "linux")), allow(dead_code))]
pub(crate) fn not_cancellable() -> io::Error {
    misuse(
        io::ErrorKind::NotFound,
        "the operation is no longer cancellable",
    )
}

fn os_error(err: &io::Error) -> Option<&OsError> {
    err.get_ref()?.downcast_ref::<OsError>()
}

/// The OS error code behind `err`, whether or not proactor corrected its kind.
///
/// On Windows this is the Win32 or WinSock code (`64` for `ERROR_NETNAME_DELETED`, `10054` for
/// `WSAECONNRESET`, `995` for `ERROR_OPERATION_ABORTED`); on Linux the errno.
///
/// ```
/// use std::io;
/// let err = io::Error::from_raw_os_error(5);
/// assert_eq!(proactor::raw_os_error(&err), Some(5));
/// assert_eq!(proactor::raw_os_error(&io::Error::other("no code")), None);
/// ```
pub fn raw_os_error(err: &io::Error) -> Option<i32> {
    err.raw_os_error().or_else(|| os_error(err).map(|e| e.code))
}

/// The NTSTATUS an error was translated from, when the kernel reported one.
#[cfg_attr(not(windows), allow(dead_code))]
pub(crate) fn ntstatus(err: &io::Error) -> Option<i32> {
    os_error(err).and_then(|e| e.ntstatus)
}

/// Whether `err` reports an operation that was cancelled locally: by [`Iocp::cancel`],
/// [`Iocp::cancel_all`], dropping its [`Handle`] or dropping the port.
///
/// A cancelled operation's error has kind [`io::ErrorKind::Other`] and keeps the OS code
/// (`995` `ERROR_OPERATION_ABORTED` on Windows, `125` `ECANCELED` on Linux). It is never
/// [`io::ErrorKind::Interrupted`], which std's `read_exact`, `write_all` and `io::copy` retry:
/// a cancelled operation is over, and an adapter that resubmitted it would loop forever.
///
/// [`Iocp::cancel`]: crate::Iocp::cancel
/// [`Iocp::cancel_all`]: crate::Iocp::cancel_all
/// [`Handle`]: crate::Handle
///
/// ```
/// use std::io;
/// assert!(!proactor::is_cancelled(&io::Error::from(io::ErrorKind::ConnectionReset)));
/// ```
pub fn is_cancelled(err: &io::Error) -> bool {
    os_error(err).is_some_and(|e| e.cause == Cause::Cancelled)
}

/// Whether `err` reports a datagram that was longer than the receive buffer
/// ([`Iocp::recv_from`]): the completion still carries the bytes that fit and the source
/// address. Its OS code is `EMSGSIZE` (90) on Linux and `WSAEMSGSIZE` (10040) on Windows; this
/// predicate saves hard-coding either, and is false for the same code from a send of a datagram
/// too large to send.
///
/// [`Iocp::recv_from`]: crate::Iocp::recv_from
///
/// ```
/// use std::io;
/// assert!(!proactor::is_truncated(&io::Error::from(io::ErrorKind::InvalidData)));
/// ```
pub fn is_truncated(err: &io::Error) -> bool {
    os_error(err).is_some_and(|e| e.cause == Cause::Truncated)
}

/// Whether `err` is the error of an operation whose deadline passed
/// ([`Submit::deadline`](crate::Submit::deadline), [`Submit::timeout`](crate::Submit::timeout)):
/// the port cancelled it. Its kind is [`io::ErrorKind::TimedOut`] and it keeps the cancel's OS
/// code (995 `ERROR_OPERATION_ABORTED` on Windows, 125 `ECANCELED` on Linux), so it is told apart
/// from a cancel ([`is_cancelled`] is false for it) and from a timeout the OS itself reports
/// (`WSAETIMEDOUT`, `ETIMEDOUT`: a connect that got no answer, for which this is false).
///
/// ```no_run
/// # fn f(port: &proactor::Iocp, conn: &proactor::Handle<std::net::TcpStream>) -> std::io::Result<()> {
/// use std::time::Duration;
/// port.with_timeout(Duration::from_secs(5)).recv(conn, Vec::with_capacity(4096));
/// let done = port.get_completion(None)?;
/// match done.result() {
///     Err(e) if proactor::is_deadline(&e) => println!("no request within 5 s"),
///     Err(e) => println!("failed: {e}"),
///     Ok(n) => println!("{n} bytes"),
/// }
/// # Ok(()) }
/// ```
pub fn is_deadline(err: &io::Error) -> bool {
    os_error(err).is_some_and(|e| e.cause == Cause::Deadline)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn corrected_errors_keep_their_code() {
        let err = corrected(
            io::ErrorKind::ConnectionReset,
            64,
            Some(0xC000_020D_u32 as i32),
        );
        assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);
        assert_eq!(raw_os_error(&err), Some(64));
        assert_eq!(ntstatus(&err), Some(0xC000_020D_u32 as i32));
        assert!(!is_cancelled(&err));
        assert!(err.to_string().contains("0xc000020d"), "{err}");
    }

    #[test]
    fn cancelled_errors_are_distinguishable() {
        let err = cancelled(995, None);
        assert!(is_cancelled(&err));
        assert_eq!(err.kind(), io::ErrorKind::Other);
        assert_ne!(err.kind(), io::ErrorKind::Interrupted, "std would retry it");
        assert_eq!(raw_os_error(&err), Some(995));
        assert!(!is_truncated(&err));
        assert!(err.to_string().starts_with("operation cancelled"), "{err}");
    }

    #[test]
    fn truncated_datagrams_are_recognised() {
        let err = truncated(90, None);
        assert!(is_truncated(&err));
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert_eq!(raw_os_error(&err), Some(90));
        assert!(!is_cancelled(&err));
        assert!(!is_truncated(&corrected(
            io::ErrorKind::InvalidData,
            90,
            None
        )));
    }

    #[test]
    fn deadline_errors_are_neither_cancels_nor_os_timeouts() {
        let err = cancel_to_deadline(&cancelled(125, None)).expect("a cancel");
        assert!(is_deadline(&err));
        assert!(!is_cancelled(&err));
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(raw_os_error(&err), Some(125));
        assert!(!is_deadline(&io::Error::from(io::ErrorKind::TimedOut)));
        assert!(!is_deadline(&cancelled(995, None)));
        assert!(cancel_to_deadline(&corrected(io::ErrorKind::Other, 5, None)).is_none());
    }

    #[test]
    fn explained_errors_say_what_the_code_means() {
        let err = explained(io::ErrorKind::AlreadyExists, 87, "already associated");
        assert_eq!(raw_os_error(&err), Some(87));
        assert!(err.to_string().starts_with("already associated: "), "{err}");
    }

    #[test]
    fn misuse_errors_have_no_code() {
        let err = misuse(io::ErrorKind::InvalidInput, "bad");
        assert_eq!(raw_os_error(&err), None);
        assert!(!is_cancelled(&err));
    }
}
