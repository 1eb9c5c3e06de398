//! What identifies an operation: its id, given at submission, and its kind.

use std::{
    cell::Cell,
    fmt,
    sync::atomic::{AtomicU64, AtomicUsize, Ordering},
};

/// Identifies one submitted operation, from submission until its [`Completion`] is dequeued.
///
/// Use one to match a completion to the submission ([`Completion::id`]) or to cancel the
/// operation ([`Iocp::cancel`], [`LocalPort::cancel`]).
///
/// # Uniqueness
///
/// An id is unique within the process, across every port ([`Iocp`]s and [`LocalPort`]s alike):
/// it holds a sequence number of 39 bits, handed out by one counter for the whole process, and
/// the number is given to one operation only. The same id can be given again only once that
/// counter wraps, after 2^39 (about 5.5 x 10^11) numbers: an operation of a shared [`Iocp`]
/// uses one or two, a [`LocalPort`]'s one, and every port and thread reserves them in blocks
/// of 4,096 (a shared port up to one per shard it uses), so a process that makes many ports
/// wraps it sooner. Until then a port never mistakes another port's id, or the id of one of
/// its own operations that has completed, for an operation in flight: cancelling such an id is
/// `NotFound` and touches nothing.
///
/// Ids are opaque: they are not ordered by submission (each thread or port takes sequence
/// numbers in blocks), and the low bits name where the port keeps the operation.
///
/// ```no_run
/// # fn f() -> std::io::Result<()> {
/// let (a, b) = (proactor::Iocp::new()?, proactor::Iocp::new()?);
/// let id = a.timer(std::time::Duration::from_secs(60));
/// // Another port never finds it.
/// assert_eq!(b.cancel(id).unwrap_err().kind(), std::io::ErrorKind::NotFound);
/// a.cancel(id)?;
/// # Ok(()) }
/// ```
///
/// [`Completion`]: crate::Completion
/// [`Completion::id`]: crate::Completion::id
/// [`Iocp`]: crate::Iocp
/// [`Iocp::cancel`]: crate::Iocp::cancel
/// [`LocalPort`]: crate::LocalPort
/// [`LocalPort::cancel`]: crate::LocalPort::cancel
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OpId(u64);

/// The bits of an id that name its slot in the port (its slab index): the low ones.
pub(crate) const INDEX_BITS: u32 = 24;
/// The bits of an id that hold its sequence number, above the index. Bit 63 stays clear: the
/// io_uring engines tag their own `user_data` with it.
pub(crate) const SEQ_BITS: u32 = 39;
const INDEX_MASK: u64 = (1 << INDEX_BITS) - 1;
const SEQ_MASK: u64 = (1 << SEQ_BITS) - 1;
/// How many sequence numbers a thread or a port takes from the process-wide counter at once:
/// one atomic read-modify-write per block, not per operation.
const BLOCK: u64 = 4096;

/// The process-wide counter of sequence numbers (not masked: it wraps through `SEQ_MASK`).
static SEQUENCE: AtomicU64 = AtomicU64::new(0);

/// A block of sequence numbers taken from the process-wide counter, handed out one by one.
/// Each number is handed out once in the process (until the counter wraps after 2^39), and
/// never 0 (so that no id is 0, the `user_data` of the io_uring engines' own requests).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Sequence {
    next: u64,
    end: u64,
}

impl Sequence {
    pub(crate) const fn new() -> Sequence {
        Sequence { next: 0, end: 0 }
    }

    /// The next sequence number (nonzero, below 2^39).
    pub(crate) fn take(&mut self) -> u64 {
        loop {
            if self.next == self.end {
                self.next = SEQUENCE.fetch_add(BLOCK, Ordering::Relaxed);
                self.end = self.next + BLOCK;
            }
            let seq = self.next & SEQ_MASK;
            self.next += 1;
            if seq != 0 {
                return seq;
            }
        }
    }
}

thread_local! {
    /// The block of the ids made without a slot of their own ([`OpId::next`]).
    // The initializer is `const`: the lint misfires on the Windows target's std.
    #[allow(clippy::missing_const_for_thread_local)]
    static THREAD_SEQUENCE: Cell<Sequence> = const { Cell::new(Sequence::new()) };
}

impl OpId {
    /// A fresh id with index 0, never given before in this process (see [`OpId`]'s
    /// uniqueness): for the operations a port keeps in no slot of its own.
    pub(crate) fn next() -> OpId {
        let seq = THREAD_SEQUENCE.with(|s| {
            let mut block = s.get();
            let seq = block.take();
            s.set(block);
            seq
        });
        OpId::new(seq, 0)
    }

    /// The id of sequence number `seq` (from [`Sequence::take`]) in slot `index`.
    pub(crate) fn new(seq: u64, index: u32) -> OpId {
        debug_assert!(seq != 0 && seq <= SEQ_MASK, "sequence {seq:#x}");
        debug_assert!(u64::from(index) <= INDEX_MASK, "index {index:#x}");
        OpId((seq << INDEX_BITS) | u64::from(index))
    }

    /// Its sequence number.
    pub(crate) fn seq(self) -> u64 {
        (self.0 >> INDEX_BITS) & SEQ_MASK
    }

    /// Its slot in the port that made it.
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    pub(crate) fn index(self) -> u32 {
        (self.0 & INDEX_MASK) as u32
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
    ///
    /// ```
    /// assert_eq!(proactor::OpKind::Recv.name(), "recv");
    /// assert_eq!(proactor::OpKind::SendPooled.name(), "send_pooled");
    /// ```
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

/// Adds `added` live operations and removes `removed` at once: an engine that counts its own
/// (the `LocalPort` ring) brings the process-wide count up to date in one step.
#[cfg(target_os = "linux")]
pub(crate) fn live_adjust(added: usize, removed: usize) {
    if added > removed {
        LIVE.fetch_add(added - removed, Ordering::Relaxed);
    } else if removed > added {
        LIVE.fetch_sub(removed - added, Ordering::Relaxed);
    }
}

pub(crate) fn live_operations() -> usize {
    LIVE.load(Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_and_increasing_within_a_thread() {
        let a = OpId::next();
        let b = OpId::next();
        assert!(b > a);
        assert_ne!(a, b);
        assert_eq!((a.index(), b.index()), (0, 0));
        assert_eq!(format!("{a}"), format!("#{}", a.as_u64()));
    }

    #[test]
    fn an_id_is_its_sequence_and_its_index() {
        let id = OpId::new(SEQ_MASK, INDEX_MASK as u32);
        assert_eq!((id.seq(), id.index()), (SEQ_MASK, INDEX_MASK as u32));
        assert_eq!(id.as_u64() >> 63, 0, "bit 63 stays clear");
        let id = OpId::new(5, 7);
        assert_eq!((id.seq(), id.index()), (5, 7));
        assert_eq!(OpId::from_u64(id.as_u64()), id);
    }

    /// Blocks taken by several threads (and ports) never overlap, and none holds 0.
    #[test]
    fn sequence_numbers_are_unique_across_threads() {
        let all: Vec<u64> = std::thread::scope(|s| {
            let threads: Vec<_> = (0..4)
                .map(|_| {
                    s.spawn(|| {
                        let mut own = Sequence::new();
                        (0..3 * BLOCK)
                            .flat_map(|_| [own.take(), OpId::next().seq()])
                            .collect::<Vec<u64>>()
                    })
                })
                .collect();
            threads
                .into_iter()
                .flat_map(|t| t.join().unwrap())
                .collect()
        });
        let distinct: std::collections::HashSet<u64> = all.iter().copied().collect();
        assert_eq!(distinct.len(), all.len());
        assert!(!distinct.contains(&0));
    }
}
