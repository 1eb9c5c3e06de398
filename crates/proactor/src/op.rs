//! What identifies an operation: its id, given at submission, and its kind.

use std::{
    fmt,
    sync::atomic::{AtomicU64, AtomicUsize, Ordering},
};

/// Identifies one submitted operation, from submission until its [`Completion`] is dequeued.
///
/// Ids are unique within a process and never reused. Use one to match a completion to the
/// submission ([`Completion::id`]) or to cancel the operation ([`Iocp::cancel`]).
///
/// [`Completion`]: crate::Completion
/// [`Completion::id`]: crate::Completion::id
/// [`Iocp::cancel`]: crate::Iocp::cancel
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OpId(u64);

impl OpId {
    /// A fresh id, never given before in this process.
    pub(crate) fn next() -> OpId {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        OpId(NEXT.fetch_add(1, Ordering::Relaxed))
    }

    /// The id with number `n` (a backend's `user_data`).
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    pub(crate) fn from_u64(n: u64) -> OpId {
        OpId(n)
    }

    /// The id as a number, for logs.
    ///
    /// ```no_run
    /// # fn f(port: &proactor::Iocp) {
    /// let id = port.post(7, 0).unwrap();
    /// println!("posted operation #{}", id.as_u64());
    /// # }
    /// ```
    pub fn as_u64(self) -> u64 {
        self.0
    }
}

impl fmt::Debug for OpId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "OpId({})", self.0)
    }
}

impl fmt::Display for OpId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// Which operation a [`Completion`](crate::Completion) ends.
///
/// ```
/// assert_eq!(proactor::OpKind::Recv.name(), "recv");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum OpKind {
    /// A packet posted by [`Iocp::post`](crate::Iocp::post).
    Post,
    /// A socket receive into one buffer (`WSARecv`).
    Recv,
    /// A socket receive into several buffers (`WSARecv` with several `WSABUF`s).
    RecvVectored,
    /// A zero-byte socket receive: completes when data (or EOF, or an error) is there to read,
    /// without pinning a buffer.
    Readable,
    /// A socket send of one buffer (`WSASend`).
    Send,
    /// A socket send of several buffers (`WSASend` with several `WSABUF`s).
    SendVectored,
    /// A read at an offset on any overlapped handle (`ReadFile`).
    Read,
    /// A write at an offset on any overlapped handle (`WriteFile`).
    Write,
    /// Accepting a connection on a listening socket (`AcceptEx`).
    Accept,
    /// Connecting a socket (`ConnectEx`).
    Connect,
    /// A device or socket control (`DeviceIoControl`, `WSAIoctl`).
    Ioctl,
    /// A datagram receive with its source address (`WSARecvFrom`).
    RecvFrom,
    /// A datagram send to an address (`WSASendTo`).
    SendTo,
    /// Sending a file's contents on a socket (`TransmitFile`).
    TransmitFile,
    /// A graceful disconnect of a socket (`DisconnectEx`).
    Disconnect,
    /// Waiting for a client on a named pipe (`ConnectNamedPipe`).
    ConnectPipe,
    /// A timer ([`Iocp::timer`](crate::Iocp::timer)): completes `Ok(0)` once its duration has
    /// passed, or cancelled if [`Iocp::cancel`](crate::Iocp::cancel) came first.
    ///
    /// ```no_run
    /// # fn f(port: &proactor::Iocp) -> std::io::Result<()> {
    /// port.timer(std::time::Duration::from_millis(10));
    /// assert_eq!(port.get_completion(None)?.kind(), proactor::OpKind::Timer);
    /// # Ok(()) }
    /// ```
    Timer,
    /// A receive into a buffer of a [`LocalPort`](crate::LocalPort)'s pool
    /// ([`LocalPort::recv_pooled`](crate::LocalPort::recv_pooled)).
    RecvPooled,
    /// A send of a pool buffer ([`LocalPort::send_pooled`](crate::LocalPort::send_pooled)).
    SendPooled,
}

impl OpKind {
    /// A short lowercase name, for logs.
    pub fn name(self) -> &'static str {
        match self {
            OpKind::Post => "post",
            OpKind::Recv => "recv",
            OpKind::RecvVectored => "recv_vectored",
            OpKind::Readable => "readable",
            OpKind::Send => "send",
            OpKind::SendVectored => "send_vectored",
            OpKind::Read => "read",
            OpKind::Write => "write",
            OpKind::Accept => "accept",
            OpKind::Connect => "connect",
            OpKind::Ioctl => "ioctl",
            OpKind::RecvFrom => "recv_from",
            OpKind::SendTo => "send_to",
            OpKind::TransmitFile => "transmit_file",
            OpKind::Disconnect => "disconnect",
            OpKind::ConnectPipe => "connect_pipe",
            OpKind::Timer => "timer",
            OpKind::RecvPooled => "recv_pooled",
            OpKind::SendPooled => "send_pooled",
        }
    }
}

impl fmt::Display for OpKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

static LIVE: AtomicUsize = AtomicUsize::new(0);

/// Counts one live operation record for as long as it exists: a field of every backend's record.
#[derive(Debug)]
pub(crate) struct LiveCount(());

impl LiveCount {
    pub(crate) fn new() -> LiveCount {
        LIVE.fetch_add(1, Ordering::Relaxed);
        LiveCount(())
    }
}

impl Drop for LiveCount {
    fn drop(&mut self) {
        LIVE.fetch_sub(1, Ordering::Relaxed);
    }
}

pub(crate) fn live_operations() -> usize {
    LIVE.load(Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_and_increasing() {
        let a = OpId::next();
        let b = OpId::next();
        assert!(b > a);
        assert_ne!(a, b);
        assert_eq!(format!("{a}"), format!("#{}", a.as_u64()));
    }
}
