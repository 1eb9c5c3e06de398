//! The one translation table from Win32, WinSock and NTSTATUS codes to `io::Error`.
//!
//! The standard library already maps most codes well; this table corrects the ones an
//! asynchronous socket program must tell apart and that std maps wrongly or not at all:
//!
//! | code | std says | proactor says |
//! |---|---|---|
//! | 64 `ERROR_NETNAME_DELETED` (from `STATUS_CONNECTION_RESET`) | uncategorized | `ConnectionReset` |
//! | 995 `ERROR_OPERATION_ABORTED`, 676 `ERROR_HANDLES_CLOSED`, 1223 `ERROR_CANCELLED` | `TimedOut` / uncategorized | cancelled (`Other`, never `Interrupted`; [`is_cancelled`](crate::is_cancelled)) |
//! | 1225 `ERROR_CONNECTION_REFUSED` | uncategorized | `ConnectionRefused` |
//! | 1236 `ERROR_CONNECTION_ABORTED` | uncategorized | `ConnectionAborted` |
//! | 6 `ERROR_INVALID_HANDLE`, 10038 `WSAENOTSOCK` | uncategorized | `InvalidInput` |
//! | 1168 `ERROR_NOT_FOUND` | uncategorized | `NotFound` |
//! | 38 `ERROR_HANDLE_EOF` | uncategorized | `UnexpectedEof` |
//! | 10040 `WSAEMSGSIZE` (a truncated datagram) | uncategorized | `InvalidData` |
//!
//! Every other code is `io::Error::from_raw_os_error(code)`. The code is kept either way
//! ([`raw_os_error`](crate::raw_os_error)), and so is the NTSTATUS it came from, if any.

use std::io::{self, ErrorKind};

use windows_sys::Win32::{
    Foundation::{
        ERROR_CANCELLED, ERROR_CONNECTION_ABORTED, ERROR_CONNECTION_REFUSED, ERROR_HANDLE_EOF,
        ERROR_HANDLES_CLOSED, ERROR_INVALID_HANDLE, ERROR_NETNAME_DELETED, ERROR_NOT_FOUND,
        ERROR_OPERATION_ABORTED, NTSTATUS, RtlNtStatusToDosError,
    },
    Networking::WinSock::{WSAEMSGSIZE, WSAENOTSOCK},
};

use crate::error::{cancelled, corrected};

/// An operation ended by the port for its handle (dropped meanwhile) or for a cancel it kept:
/// 995 `ERROR_OPERATION_ABORTED`, as the kernel reports a cancel.
pub(crate) fn aborted() -> io::Error {
    from_code(ERROR_OPERATION_ABORTED, None)
}

/// The error for a Win32 or WinSock `code`, translated from `ntstatus` if the kernel gave one.
pub(crate) fn from_code(code: u32, ntstatus: Option<NTSTATUS>) -> io::Error {
    let corrected_kind = match code {
        ERROR_OPERATION_ABORTED | ERROR_HANDLES_CLOSED | ERROR_CANCELLED => {
            return cancelled(code as i32, ntstatus);
        }
        ERROR_NETNAME_DELETED => Some(ErrorKind::ConnectionReset),
        ERROR_CONNECTION_REFUSED => Some(ErrorKind::ConnectionRefused),
        ERROR_CONNECTION_ABORTED => Some(ErrorKind::ConnectionAborted),
        ERROR_INVALID_HANDLE => Some(ErrorKind::InvalidInput),
        c if c == WSAENOTSOCK as u32 => Some(ErrorKind::InvalidInput),
        ERROR_NOT_FOUND => Some(ErrorKind::NotFound),
        ERROR_HANDLE_EOF => Some(ErrorKind::UnexpectedEof),
        c if c == WSAEMSGSIZE as u32 => Some(ErrorKind::InvalidData),
        _ => None,
    };
    match (corrected_kind, ntstatus) {
        (Some(kind), _) => corrected(kind, code as i32, ntstatus),
        // std's kind is right; keep the NTSTATUS when there is one.
        (None, Some(_)) => {
            let kind = io::Error::from_raw_os_error(code as i32).kind();
            corrected(kind, code as i32, ntstatus)
        }
        (None, None) => io::Error::from_raw_os_error(code as i32),
    }
}

/// The error for the NTSTATUS the kernel left in a completed `OVERLAPPED`.
///
/// Only `STATUS_SUCCESS` (0) is success: warnings such as `STATUS_HANDLES_CLOSED` (0x8000000A,
/// which Wine reports for a receive pending when its socket closes) and `STATUS_BUFFER_OVERFLOW`
/// pass `NT_SUCCESS` but are errors for the operation.
pub(crate) fn from_ntstatus(status: NTSTATUS) -> io::Error {
    // SAFETY: RtlNtStatusToDosError is a pure table lookup on its argument.
    let code = unsafe { RtlNtStatusToDosError(status) };
    from_code(code, Some(status))
}

/// The error for the calling thread's last Win32 error.
pub(crate) fn last_error() -> io::Error {
    from_code(
        io::Error::last_os_error().raw_os_error().unwrap_or(0) as u32,
        None,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use windows_sys::Win32::{
        Foundation::{STATUS_CANCELLED, STATUS_CONNECTION_RESET},
        Networking::WinSock::WSAECONNRESET,
    };

    #[test]
    fn resets_are_connection_reset_with_their_codes() {
        let e = from_code(ERROR_NETNAME_DELETED, None);
        assert_eq!(e.kind(), ErrorKind::ConnectionReset);
        assert_eq!(crate::raw_os_error(&e), Some(64));
        let e = from_code(WSAECONNRESET as u32, None);
        assert_eq!(e.kind(), ErrorKind::ConnectionReset);
        assert_eq!(e.raw_os_error(), Some(10054));
        let e = from_ntstatus(STATUS_CONNECTION_RESET);
        assert_eq!(e.kind(), ErrorKind::ConnectionReset);
        assert_eq!(crate::raw_os_error(&e), Some(64));
        assert_eq!(crate::error::ntstatus(&e), Some(STATUS_CONNECTION_RESET));
    }

    #[test]
    fn cancels_are_distinguishable_and_never_timeouts() {
        for e in [
            from_code(ERROR_OPERATION_ABORTED, None),
            from_ntstatus(STATUS_CANCELLED),
        ] {
            assert!(crate::is_cancelled(&e), "{e}");
            assert_ne!(e.kind(), ErrorKind::TimedOut);
            assert_eq!(crate::raw_os_error(&e), Some(995));
        }
        assert!(crate::is_cancelled(&from_ntstatus(0x8000_000A_u32 as i32)));
    }

    #[test]
    fn std_mapping_is_kept_where_right() {
        let e = from_code(258, None); // WAIT_TIMEOUT
        assert_eq!(e.kind(), ErrorKind::TimedOut);
        assert_eq!(e.raw_os_error(), Some(258));
        assert_eq!(from_code(1225, None).kind(), ErrorKind::ConnectionRefused);
        assert_eq!(from_code(10061, None).kind(), ErrorKind::ConnectionRefused);
    }
}
