//! Errno translation: std's mapping, except that a cancel is proactor's distinguishable error.
//!
//! An operation's `EINTR` is a cancel too, with a cancel's code (`ECANCELED`, as documented):
//! io_uring stops an operation its worker threads run (a blocking send, say) when it is
//! cancelled or its linked deadline passes by interrupting the worker, and the operation then
//! ends `EINTR` rather than `ECANCELED` (found by the `local_ops` fuzz target: a send with a
//! deadline ended `Interrupted`, a kind std's `write_all` retries). No operation of the port is
//! interrupted by a signal of the program's: the kernel runs io_uring's, and the epoll
//! backend's calls retry `EINTR` themselves (`retry`) before an error is made of it.

use std::io;

use crate::error::cancelled;

/// The error for `errno`.
pub(crate) fn from_errno(errno: i32) -> io::Error {
    match errno {
        libc::ECANCELED | libc::EINTR => cancelled(libc::ECANCELED, None),
        _ => io::Error::from_raw_os_error(errno),
    }
}

/// The error for the calling thread's last errno.
pub(crate) fn last_error() -> io::Error {
    from_errno(
        io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cancel_is_distinguishable_and_reset_is_connection_reset() {
        let e = from_errno(libc::ECANCELED);
        assert!(crate::is_cancelled(&e));
        assert_eq!(crate::raw_os_error(&e), Some(libc::ECANCELED));
        let e = from_errno(libc::EINTR);
        assert!(crate::is_cancelled(&e));
        assert_ne!(e.kind(), io::ErrorKind::Interrupted, "std would retry it");
        assert_eq!(crate::raw_os_error(&e), Some(libc::ECANCELED));
        let e = from_errno(libc::ECONNRESET);
        assert_eq!(e.kind(), io::ErrorKind::ConnectionReset);
        assert_eq!(e.raw_os_error(), Some(libc::ECONNRESET));
    }
}
