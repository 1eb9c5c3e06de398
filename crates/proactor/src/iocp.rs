//! The completion port as the application sees it.

use std::{
    fmt, io,
    net::SocketAddr,
    time::{Duration, Instant},
};

use crate::{
    Associate, Completion, Handle, OpId, Submit, sys,
    timers::{Clock, Timers},
};

/// An I/O completion port: associate handles with it, submit operations through it, and
/// dequeue their completions from any number of threads.
///
/// `Iocp` is `Send + Sync`: share it with `Arc` and run several threads in
/// [`get_completion`](Iocp::get_completion) at once, the classic IOCP worker pool. Each
/// completion goes to exactly one of them.
///
/// # Operations
///
/// Every submission ([`recv`](Iocp::recv), [`send`](Iocp::send), [`read_at`](Iocp::read_at),
/// [`accept`](Iocp::accept), [`connect`](Iocp::connect), ...) takes ownership of what the
/// kernel will use, returns the operation's [`OpId`], and never fails by itself: whatever
/// happens, including an error at submission or a misuse the port detects, ends as exactly one
/// [`Completion`] that hands everything back. Operations that finish at once (see
/// `ARCHITECTURE.md` on skip-on-success) come through `get_completion` like the others.
///
/// # What each operation is on each backend
///
/// The names in this documentation are Win32's; the same operation on Linux is:
///
/// | operation | Windows | Linux io_uring | Linux epoll fallback |
/// |---|---|---|---|
/// | [`accept`](Iocp::accept) | `AcceptEx` | `IORING_OP_ACCEPT` | `accept4` when readable |
/// | [`connect`](Iocp::connect) | `ConnectEx` | `IORING_OP_CONNECT` | `connect`, then writable |
/// | [`recv`](Iocp::recv) | `WSARecv` | `IORING_OP_RECV` | `recv` when readable |
/// | [`recv_vectored`](Iocp::recv_vectored) | `WSARecv`, several `WSABUF`s | `IORING_OP_RECVMSG` | `recvmsg` when readable |
/// | [`readable`](Iocp::readable) | zero-byte `WSARecv` | `IORING_OP_POLL_ADD` | readiness |
/// | [`send`](Iocp::send), [`send_vectored`](Iocp::send_vectored) | `WSASend` | `IORING_OP_SEND` / `SENDMSG`, continued until all is sent | `send` / `sendmsg` when writable, until all is sent |
/// | [`recv_from`](Iocp::recv_from), [`send_to`](Iocp::send_to) | `WSARecvFrom` / `WSASendTo` | `IORING_OP_RECVMSG` / `SENDMSG` | `recvmsg` / `sendmsg` |
/// | [`read_at`](Iocp::read_at), [`write_at`](Iocp::write_at) | `ReadFile` / `WriteFile` | `IORING_OP_READ` / `WRITE` | regular files: `pread` / `pwrite` at submission, on the submitting thread; pipes: `read` / `write` when ready |
/// | [`cancel`](Iocp::cancel) | `CancelIoEx` | `IORING_OP_ASYNC_CANCEL` | removed from its queue |
/// | [`post`](Iocp::post) | `PostQueuedCompletionStatus` | `IORING_OP_NOP` | the port's ready queue |
/// | [`get_completions`](Iocp::get_completions) | `GetQueuedCompletionStatusEx` | reaping the completion queue | `epoll_wait` |
/// | [`ioctl`](Iocp::ioctl), [`transmit_file`](Iocp::transmit_file), [`disconnect`](Iocp::disconnect) | `WSAIoctl` / `DeviceIoControl`, `TransmitFile`, `DisconnectEx` | [`io::ErrorKind::Unsupported`] | [`io::ErrorKind::Unsupported`] |
///
/// Open files with [`crate::open_file`] so that the same code opens them for overlapped I/O on
/// Windows.
///
/// On Linux's io_uring backend submissions are batched and made by the threads that dequeue
/// (call [`get_completion`](Iocp::get_completion) or [`get_completions`](Iocp::get_completions)
/// on this port): an operation reaches the kernel at once if a thread is waiting in this port
/// (a thread that does not dequeue wakes it to submit), and otherwise with the next dequeue, so
/// keep dequeuing after submitting, as every completion-port program does. The kernel ties each
/// operation to the thread that submitted it: threads that only start, cancel or close things
/// may exit freely, but a dequeuing thread that exits while operations it submitted still wait
/// (a receive for data, an accept for a client) makes them complete with a cancelled error.
/// Keep the dequeuing threads for the port's life (the worker-pool pattern), or set
/// `PROACTOR_SQPOLL=<idle ms>`, whose kernel thread submits everything.
///
/// # Drop
///
/// Dropping the port cancels every operation still in flight, waits up to five seconds for the
/// kernel to finish them, and frees their memory. An operation the kernel has still not
/// finished by then is leaked, never freed, and a warning is logged: memory the kernel may
/// write is never returned to the allocator.
///
/// ```no_run
/// use std::{sync::Arc, thread};
///
/// # fn main() -> std::io::Result<()> {
/// let port = Arc::new(proactor::Iocp::new()?);
/// let workers: Vec<_> = (0..4)
///     .map(|_| {
///         let port = port.clone();
///         thread::spawn(move || {
///             while let Ok(done) = port.get_completion(None) {
///                 if done.context() == usize::MAX {
///                     break; // our stop packet
///                 }
///                 // ... handle `done` ...
///             }
///         })
///     })
///     .collect();
/// for _ in &workers {
///     port.post(usize::MAX, 0)?;
/// }
/// for w in workers {
///     w.join().unwrap();
/// }
/// # Ok(()) }
/// ```
pub struct Iocp {
    port: sys::Port,
    /// Deadlines and timers: see `src/timers.rs`.
    timers: Timers,
}

const _: fn() = || {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<Iocp>();
};

impl Iocp {
    /// Creates a completion port that lets as many threads run at once as there are
    /// processors.
    ///
    /// # Errors
    ///
    /// The OS error if the port cannot be created; [`io::ErrorKind::Unsupported`] on a system
    /// with no backend.
    ///
    /// ```no_run
    /// let port = proactor::Iocp::new()?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn new() -> io::Result<Iocp> {
        Iocp::with_concurrency(0)
    }

    /// Creates a completion port that lets at most `threads` threads run completions at once
    /// (the port's concurrency value; 0 means one per processor).
    ///
    /// Only Windows enforces the limit: the kernel releases a thread from
    /// `GetQueuedCompletionStatus` only while fewer than `threads` threads of the port run. The
    /// Linux backends (io_uring, epoll) have no such accounting and ignore `threads`: every
    /// thread waiting in [`Iocp::get_completion`] may be given a completion. Bound the number of
    /// threads you start instead.
    ///
    /// ```no_run
    /// let port = proactor::Iocp::with_concurrency(2)?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn with_concurrency(threads: u32) -> io::Result<Iocp> {
        Ok(Iocp {
            port: sys::Port::new(threads)?,
            timers: Timers::default(),
        })
    }

    /// Associates `io` with the port. Every completion of an operation on it carries
    /// `context`.
    ///
    /// On Linux's epoll fallback a listener or a connecting socket is made non-blocking
    /// (`O_NONBLOCK`) before each accept or connect, and stays non-blocking after the handle is
    /// dropped (`accept4` and `connect` have no per-call flag, and clearing it could make another
    /// descriptor of the same open file block). The flag is shared by every descriptor
    /// duplicated from the same open file (`try_clone`, a child's inherited socket). Pipes and
    /// FIFOs, and sockets' sends and receives, keep their mode (a terminal, which refuses
    /// `RWF_NOWAIT`, is made non-blocking at its first read or write).
    ///
    /// # Errors
    ///
    /// - [`io::ErrorKind::AlreadyExists`] if the OS object is already associated with a port
    ///   (this one or another: an object joins one port, for life);
    /// - [`io::ErrorKind::InvalidInput`] if it was not opened for overlapped I/O, or is not a
    ///   valid handle.
    ///
    /// ```no_run
    /// # fn main() -> std::io::Result<()> {
    /// let port = proactor::Iocp::new()?;
    /// let listener = port.add_handle(std::net::TcpListener::bind("127.0.0.1:0")?, 1)?;
    /// # Ok(()) }
    /// ```
    pub fn add_handle<T: Associate>(&self, io: T, context: usize) -> io::Result<Handle<T>> {
        let target = self.port.associate(io.raw_io(), io.foreign(), context)?;
        Ok(Handle::new(io, target))
    }

    /// Posts a packet to the port. It is dequeued as a completion of kind
    /// [`OpKind::Post`](crate::OpKind::Post) carrying `context` and, as its
    /// [`bytes_transferred`](Completion::bytes_transferred), `value`.
    ///
    /// ```no_run
    /// # fn main() -> std::io::Result<()> {
    /// let port = proactor::Iocp::new()?;
    /// port.post(7, 42)?;
    /// let done = port.get_completion(None)?;
    /// assert_eq!((done.context(), done.bytes_transferred()), (7, 42));
    /// # Ok(()) }
    /// ```
    pub fn post(&self, context: usize, value: usize) -> io::Result<OpId> {
        self.port.post(context, value)
    }

    /// Waits for the next completion, at most `timeout` (`None`: forever).
    ///
    /// # Errors
    ///
    /// [`io::ErrorKind::TimedOut`] when the timeout passes first. Errors of the operations
    /// themselves are in the [`Completion`], not here: an operation's deadline
    /// ([`Submit::deadline`]) is its completion's error ([`crate::is_deadline`]), never this
    /// timeout.
    ///
    /// The threads in `get_completion` and [`get_completions`](Iocp::get_completions) also serve
    /// the port's deadlines and timers: each waits no longer than the earliest of them, then
    /// cancels the operations whose deadline passed and returns the timers that are due. They
    /// fire only while some thread dequeues.
    ///
    /// ```no_run
    /// # fn f(port: &proactor::Iocp) {
    /// use std::time::Duration;
    /// match port.get_completion(Some(Duration::from_millis(100))) {
    ///     Ok(done) => println!("{done:?}"),
    ///     Err(e) if e.kind() == std::io::ErrorKind::TimedOut => println!("idle"),
    ///     Err(e) => eprintln!("port failed: {e}"),
    /// }
    /// # }
    /// ```
    pub fn get_completion(&self, timeout: Option<Duration>) -> io::Result<Completion> {
        let mut one = None;
        self.dequeue(&mut Out::One(&mut one), timeout)?;
        Ok(one.expect("dequeue returns at least one completion"))
    }

    /// Waits for completions and appends up to `max` of them to `out` in one batch
    /// (`GetQueuedCompletionStatusEx`), returning how many were added.
    ///
    /// # Errors
    ///
    /// [`io::ErrorKind::TimedOut`] when the timeout passes before the first completion.
    ///
    /// ```no_run
    /// # fn f(port: &proactor::Iocp) -> std::io::Result<()> {
    /// let mut batch = Vec::with_capacity(64);
    /// let n = port.get_completions(&mut batch, 64, None)?;
    /// for done in batch.drain(..) {
    ///     println!("{done:?}");
    /// }
    /// # let _ = n; Ok(()) }
    /// ```
    pub fn get_completions(
        &self,
        out: &mut Vec<Completion>,
        max: usize,
        timeout: Option<Duration>,
    ) -> io::Result<usize> {
        self.dequeue(&mut Out::Many(out, max.max(1)), timeout)
    }

    /// The dequeue of [`get_completion`](Iocp::get_completion) and
    /// [`get_completions`](Iocp::get_completions) with the port's timers: waits in the backend
    /// at most until the earliest deadline or timer (and the caller's timeout), expires what is
    /// due, and returns the caller's `TimedOut` only at the caller's own timeout.
    fn dequeue(&self, out: &mut Out<'_>, timeout: Option<Duration>) -> io::Result<usize> {
        let max = match out {
            Out::One(_) => 1,
            Out::Many(_, max) => *max,
        };
        let end = timeout.map(|t| Instant::now().checked_add(t));
        // Wake packets this call swallowed: each was meant for a thread that may still wait
        // with a stale time, and this one returns to its caller without serving the timers.
        let mut swallowed_any = false;
        let rewake = |swallowed_any: bool| {
            if swallowed_any {
                self.timers.rewake(|| self.port.post(0, 0));
            }
        };
        loop {
            let mut clock = Clock::default();
            let (expired, next) = self.timers.enter(&mut clock, max);
            for id in expired.cancel {
                if self.port.cancel(id).is_err() {
                    self.timers.not_cancelled(id);
                }
            }
            if !expired.timers.is_empty() {
                self.timers.leave();
                rewake(swallowed_any);
                let n = expired.timers.len();
                match out {
                    Out::One(one) => **one = expired.timers.into_iter().next(),
                    Out::Many(out, _) => out.extend(expired.timers),
                }
                return Ok(n);
            }
            // The caller's end (`None` inside: too far to represent, so forever).
            let caller = end
                .flatten()
                .map(|e| e.saturating_duration_since(clock.now()));
            let ours = next.map(|n| n.saturating_duration_since(clock.now()));
            let (wait, for_caller) = match (caller, ours) {
                (Some(c), Some(o)) if o < c => (Some(o), false),
                (None, Some(o)) => (Some(o), false),
                (c, _) => (c, true),
            };
            let result = match out {
                Out::One(one) => self.port.get_completion(wait).map(|mut done| {
                    if self.timers.filter(&mut done) {
                        **one = Some(done);
                        (1, 0)
                    } else {
                        (0, 1)
                    }
                }),
                Out::Many(out, max) => {
                    let start = out.len();
                    self.port.get_completions(out, *max, wait).map(|_| {
                        let mut kept = start;
                        for i in start..out.len() {
                            if self.timers.filter(&mut out[i]) {
                                out.swap(kept, i);
                                kept += 1;
                            }
                        }
                        let swallowed = out.len() - kept;
                        out.truncate(kept);
                        (kept - start, swallowed)
                    })
                }
            };
            self.timers.leave();
            let result = result.map(|(n, swallowed)| {
                swallowed_any |= swallowed > 0;
                n
            });
            match result {
                Ok(n) => {
                    if n > 0 {
                        rewake(swallowed_any);
                        return Ok(n);
                    }
                    // Only wake packets: wait again, unless the caller's time is up.
                    if end.flatten().is_some_and(|e| Instant::now() >= e) {
                        rewake(swallowed_any);
                        return Err(io::ErrorKind::TimedOut.into());
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::TimedOut && !for_caller => {}
                Err(e) => {
                    rewake(swallowed_any);
                    return Err(e);
                }
            }
        }
    }

    /// The next operation, with a user value of its own: `port.with_user(7).recv(&conn, buf)`
    /// submits a receive whose [`Completion::user`] is 7. See [`Submit`].
    ///
    /// ```no_run
    /// # fn f(port: &proactor::Iocp, file: &proactor::Handle<std::fs::File>) -> std::io::Result<()> {
    /// // Read four blocks at once; each completion says which block it was.
    /// for block in 0..4u64 {
    ///     port.with_user(block as usize)
    ///         .read_at(file, Vec::with_capacity(4096), block * 4096);
    /// }
    /// for _ in 0..4 {
    ///     let mut done = port.get_completion(None)?;
    ///     let data = done.take_buffer().unwrap();
    ///     println!("block {}: {} bytes", done.user(), data.len());
    /// }
    /// # Ok(()) }
    /// ```
    pub fn with_user(&self, user: usize) -> Submit<'_> {
        Submit::new(self, user)
    }

    /// A [`Submit`] with user value 0 whose operation must complete by `at`:
    /// `port.with_deadline(at)` is `port.with_user(0).deadline(at)`. See [`Submit::deadline`].
    ///
    /// ```no_run
    /// # fn f(port: &proactor::Iocp, conn: &proactor::Handle<std::net::TcpStream>) {
    /// use std::time::{Duration, Instant};
    /// let at = Instant::now() + Duration::from_secs(30);
    /// port.with_deadline(at).send(conn, b"response".to_vec());
    /// # }
    /// ```
    pub fn with_deadline(&self, at: Instant) -> Submit<'_> {
        Submit::new(self, 0).deadline(at)
    }

    /// A [`Submit`] with user value 0 whose operation must complete within `after`:
    /// `port.with_timeout(d)` is `port.with_user(0).timeout(d)`. See [`Submit::timeout`].
    ///
    /// ```no_run
    /// # fn f(port: &proactor::Iocp, conn: &proactor::Handle<std::net::TcpStream>) {
    /// use std::time::Duration;
    /// port.with_timeout(Duration::from_secs(5)).recv(conn, Vec::with_capacity(4096));
    /// # }
    /// ```
    pub fn with_timeout(&self, after: Duration) -> Submit<'_> {
        Submit::new(self, 0).timeout(after)
    }

    /// Starts a timer: an operation of kind [`OpKind::Timer`](crate::OpKind::Timer) that
    /// completes `Ok(0)` once `after` has passed (the completion-port way to schedule work: it
    /// comes to a thread in [`get_completion`](Iocp::get_completion) like any completion). It
    /// carries user value 0 and context 0; [`Submit::timer`] gives it a user value.
    /// [`cancel`](Iocp::cancel) ends it early, as a cancelled completion.
    ///
    /// The port keeps its timers itself (a min-heap; no thread and no OS timer object per
    /// timer): the threads in `get_completion` wait no longer than the earliest one, so a timer
    /// fires only while a thread is dequeuing, like every completion of the port. Timers fire
    /// in the order of their instants; a timer is not early, and late by the time a thread
    /// needs to come back from the kernel.
    ///
    /// ```no_run
    /// # fn main() -> std::io::Result<()> {
    /// use std::time::Duration;
    /// let port = proactor::Iocp::new()?;
    /// let slow = port.timer(Duration::from_millis(50));
    /// let fast = port.timer(Duration::from_millis(10));
    /// assert_eq!(port.get_completion(None)?.id(), fast);
    /// port.cancel(slow)?;
    /// assert!(port.get_completion(None)?.is_cancelled());
    /// # Ok(()) }
    /// ```
    pub fn timer(&self, after: Duration) -> OpId {
        self.start_timer(0, after)
    }

    pub(crate) fn start_timer(&self, user: usize, after: Duration) -> OpId {
        let id = OpId::next();
        let now = Instant::now();
        let at = now
            .checked_add(after)
            .unwrap_or(now + Duration::from_secs(86_400 * 365 * 30));
        self.timers.add_timer(id, at, user, || self.port.post(0, 0));
        id
    }

    /// Gives operation `id`, just submitted, the deadline `at`.
    pub(crate) fn set_deadline(&self, id: OpId, at: Instant) {
        self.timers.add_deadline(id, at, || self.port.post(0, 0));
    }

    /// Receives into the spare capacity of `buf` (from its length to its capacity). The
    /// completion hands `buf` back with its length grown by the bytes received; `Ok(0)` is the
    /// peer's graceful close.
    ///
    /// A buffer with no spare capacity completes with [`io::ErrorKind::InvalidInput`]: a
    /// zero-byte receive is [`readable`](Iocp::readable).
    ///
    /// Several receives may be pending on one stream (a stream socket, a pipe): they are filled
    /// in submission order, on every backend, as overlapped receives are on Windows. The same
    /// holds for [`recv_vectored`](Iocp::recv_vectored), [`readable`](Iocp::readable) and
    /// [`read_at`](Iocp::read_at) on a pipe, which share that order. Datagram receives
    /// ([`recv_from`](Iocp::recv_from)) and reads of a regular file are independent.
    ///
    /// On a socket that keeps message boundaries (a connected UDP socket), one receive takes one
    /// datagram; a datagram longer than the spare capacity is cut to it, and the completion is
    /// then an error for which [`is_truncated`](crate::is_truncated) holds, with the bytes that
    /// fit (as for [`recv_from`](Iocp::recv_from)), on every backend.
    ///
    /// ```no_run
    /// # fn f(port: &proactor::Iocp, conn: &proactor::Handle<std::net::TcpStream>) {
    /// let id = port.recv(conn, Vec::with_capacity(64 * 1024));
    /// # }
    /// ```
    pub fn recv<T: Associate>(&self, handle: &Handle<T>, buf: Vec<u8>) -> OpId {
        self.with_user(0).recv(handle, buf)
    }

    /// Receives into the spare capacity of each buffer in turn (a scatter receive). A datagram
    /// longer than the buffers' room together is cut to it, as by [`recv`](Iocp::recv).
    ///
    /// ```no_run
    /// # fn f(port: &proactor::Iocp, conn: &proactor::Handle<std::net::TcpStream>) {
    /// port.recv_vectored(conn, vec![Vec::with_capacity(16), Vec::with_capacity(4096)]);
    /// # }
    /// ```
    pub fn recv_vectored<T: Associate>(&self, handle: &Handle<T>, bufs: Vec<Vec<u8>>) -> OpId {
        self.with_user(0).recv_vectored(handle, bufs)
    }

    /// Waits until the socket has something to read (data, EOF or an error) without holding a
    /// buffer: a zero-byte receive. Idle connections then pin no memory; receive once it
    /// completes. On a datagram socket it leaves the datagram queued for the receive that
    /// follows (on Windows a zero-byte receive that took it would drop it: it peeks).
    ///
    /// On Windows urgent data that is not inline (`MSG_OOB` without `SO_OOBINLINE`) may
    /// complete it too (it does under Wine), though a plain receive finds nothing: read it with
    /// `MSG_OOB` (socket2's `recv_out_of_band`) or set `SO_OOBINLINE`, or a loop of `readable`
    /// then a receive that would block spins. Pooled receive does this itself.
    ///
    /// ```no_run
    /// # fn f(port: &proactor::Iocp, conn: &proactor::Handle<std::net::TcpStream>) {
    /// port.readable(conn);
    /// # }
    /// ```
    pub fn readable<T: Associate>(&self, handle: &Handle<T>) -> OpId {
        self.with_user(0).readable(handle)
    }

    /// Sends all of `buf`. The completion's byte count says how much was sent, and hands `buf`
    /// back unchanged.
    ///
    /// Several sends may be pending on one stream (a stream socket, a pipe): they go out whole
    /// and in submission order, on every backend, as overlapped sends do on Windows; the same
    /// holds for [`send_vectored`](Iocp::send_vectored) and for [`write_at`](Iocp::write_at) on
    /// a pipe, which share that order. A cancelled send that had not started sends nothing
    /// (one that had reports what it sent); the next one goes on. Datagram sends
    /// ([`send_to`](Iocp::send_to)) and writes to a regular file are independent.
    ///
    /// On Windows one call moves at most 4 GiB - 1 bytes: a send (or vectored send) of more in
    /// all completes with [`io::ErrorKind::InvalidInput`], so that it never goes out in part
    /// with the next one behind it. Linux sends it whole.
    ///
    /// ```no_run
    /// # fn f(port: &proactor::Iocp, conn: &proactor::Handle<std::net::TcpStream>) {
    /// port.send(conn, b"hello".to_vec());
    /// # }
    /// ```
    pub fn send<T: Associate>(&self, handle: &Handle<T>, buf: Vec<u8>) -> OpId {
        self.with_user(0).send(handle, buf)
    }

    /// Sends each buffer in turn (a gather send).
    ///
    /// ```no_run
    /// # fn f(port: &proactor::Iocp, conn: &proactor::Handle<std::net::TcpStream>) {
    /// port.send_vectored(conn, vec![b"head".to_vec(), b"body".to_vec()]);
    /// # }
    /// ```
    pub fn send_vectored<T: Associate>(&self, handle: &Handle<T>, bufs: Vec<Vec<u8>>) -> OpId {
        self.with_user(0).send_vectored(handle, bufs)
    }

    /// Receives one datagram into the spare capacity of `buf`, and its source address
    /// ([`Completion::peer_addr`]). A datagram larger than the spare capacity is truncated: the
    /// completion is then an error (`WSAEMSGSIZE` on Windows, `EMSGSIZE` on Linux) that still
    /// carries the bytes received and the address.
    ///
    /// ```no_run
    /// # fn f(port: &proactor::Iocp, udp: &proactor::Handle<std::net::UdpSocket>) {
    /// port.recv_from(udp, Vec::with_capacity(1500));
    /// # }
    /// ```
    pub fn recv_from<T: Associate>(&self, handle: &Handle<T>, buf: Vec<u8>) -> OpId {
        self.with_user(0).recv_from(handle, buf)
    }

    /// Sends `buf` as one datagram to `addr`.
    ///
    /// ```no_run
    /// # fn f(port: &proactor::Iocp, udp: &proactor::Handle<std::net::UdpSocket>) {
    /// port.send_to(udp, b"ping".to_vec(), "127.0.0.1:9000".parse().unwrap());
    /// # }
    /// ```
    pub fn send_to<T: Associate>(
        &self,
        handle: &Handle<T>,
        buf: Vec<u8>,
        addr: SocketAddr,
    ) -> OpId {
        self.with_user(0).send_to(handle, buf, addr)
    }

    /// Sends `len` bytes of `file`, from `offset`, on a connected socket (`TransmitFile`; 0
    /// sends to the end of the file). The operation keeps its own duplicate of the file handle,
    /// so `file` may be closed at once.
    ///
    /// On Linux it completes with [`io::ErrorKind::Unsupported`].
    ///
    /// ```no_run
    /// # fn f(port: &proactor::Iocp, conn: &proactor::Handle<std::net::TcpStream>) -> std::io::Result<()> {
    /// let file = std::fs::File::open("index.html")?;
    /// port.transmit_file(conn, &file, 0, 0);
    /// # Ok(()) }
    /// ```
    pub fn transmit_file<T: Associate>(
        &self,
        socket: &Handle<T>,
        file: &std::fs::File,
        offset: u64,
        len: u32,
    ) -> OpId {
        self.port
            .transmit_file(&socket.target, 0, file, offset, len)
    }

    /// Disconnects a connected socket gracefully (`DisconnectEx`): the peer sees the end of the
    /// stream; the socket stays open until its handle is dropped.
    ///
    /// On Linux it completes with [`io::ErrorKind::Unsupported`] (use `shutdown`).
    ///
    /// ```no_run
    /// # fn f(port: &proactor::Iocp, conn: &proactor::Handle<std::net::TcpStream>) {
    /// port.disconnect(conn);
    /// # }
    /// ```
    pub fn disconnect<T: Associate>(&self, socket: &Handle<T>) -> OpId {
        self.with_user(0).disconnect(socket)
    }

    /// Reads into the spare capacity of `buf` at `offset` (`ReadFile`); any handle opened for
    /// overlapped I/O (streams ignore the offset). A read at or past the end of a file
    /// completes with `Ok(0)`. A range that passes `i64::MAX` (the offset plus the spare
    /// capacity) completes with [`io::ErrorKind::InvalidInput`] on every backend and handle
    /// (the systems give some such offsets meanings of their own: the current position, the
    /// end of the file; Linux refuses a range past it, even for a read past the end).
    ///
    /// ```no_run
    /// # fn f(port: &proactor::Iocp, file: &proactor::Handle<std::fs::File>) {
    /// port.read_at(file, Vec::with_capacity(4096), 8192);
    /// # }
    /// ```
    pub fn read_at<T: Associate>(&self, handle: &Handle<T>, buf: Vec<u8>, offset: u64) -> OpId {
        self.with_user(0).read_at(handle, buf, offset)
    }

    /// Writes all of `buf` at `offset` (`WriteFile`). A range that passes `i64::MAX` is refused
    /// as by [`read_at`](Iocp::read_at); on Windows, so is a write of more than 4 GiB - 1
    /// bytes (one call moves at most that).
    ///
    /// ```no_run
    /// # fn f(port: &proactor::Iocp, file: &proactor::Handle<std::fs::File>) {
    /// port.write_at(file, b"data".to_vec(), 0);
    /// # }
    /// ```
    pub fn write_at<T: Associate>(&self, handle: &Handle<T>, buf: Vec<u8>, offset: u64) -> OpId {
        self.with_user(0).write_at(handle, buf, offset)
    }

    /// Accepts one connection on a listening socket (`AcceptEx`). The completion carries the
    /// new connection with its local and peer addresses
    /// ([`Completion::take_accepted`]), ready for [`add_handle`](Iocp::add_handle). On a
    /// Unix-domain listener ([`bind_unix`](Iocp::bind_unix)) it carries the connection as a
    /// `socket2::Socket` with its client's address
    /// ([`Completion::take_accepted_socket`], which takes a TCP connection too).
    ///
    /// A client that resets before it is accepted does not end the operation: it goes on
    /// accepting the next client, and the listener is never closed.
    ///
    /// ```no_run
    /// # fn f(port: &proactor::Iocp, listener: &proactor::Handle<std::net::TcpListener>) {
    /// for _ in 0..8 {
    ///     port.accept(listener); // keep several accepts pending
    /// }
    /// # }
    /// ```
    pub fn accept<T: Associate>(&self, listener: &Handle<T>) -> OpId {
        self.with_user(0).accept(listener)
    }

    /// Connects a socket to `addr` (`ConnectEx`), binding it to an ephemeral port first if it is
    /// not bound. The socket must be a stream socket associated with this port.
    ///
    /// ```no_run
    /// # fn main() -> std::io::Result<()> {
    /// use socket2::{Domain, Socket, Type};
    /// let port = proactor::Iocp::new()?;
    /// let addr = "127.0.0.1:8080".parse().unwrap();
    /// let socket = port.add_handle(Socket::new(Domain::IPV4, Type::STREAM, None)?, 5)?;
    /// port.connect(&socket, addr);
    /// let done = port.get_completion(None)?;
    /// done.result()?;
    /// # Ok(()) }
    /// ```
    pub fn connect<T: Associate>(&self, socket: &Handle<T>, addr: SocketAddr) -> OpId {
        self.with_user(0).connect(socket, addr)
    }

    /// Connects to `addr` from a new TCP socket: creates the socket for `addr`'s family,
    /// associates it with this port under `context` and submits the connect. Returns the socket
    /// as a `Handle<TcpStream>` and the connect's [`OpId`]; its completion
    /// ([`OpKind::Connect`](crate::OpKind::Connect)) says whether it connected, and the stream
    /// is usable once it has. This needs no `socket2` (the general [`connect`](Iocp::connect)
    /// takes a socket you made, for options to set before connecting; [`crate::socket2`] is the
    /// version proactor uses).
    ///
    /// # Errors
    ///
    /// The OS error if the socket cannot be created or associated. The connect's own outcome
    /// is in its completion.
    ///
    /// ```no_run
    /// # fn main() -> std::io::Result<()> {
    /// let port = proactor::Iocp::new()?;
    /// let (conn, _id) = port.connect_to("127.0.0.1:8080".parse().unwrap(), 1)?;
    /// port.get_completion(None)?.result()?; // connected
    /// port.send(&conn, b"hello".to_vec());
    /// # Ok(()) }
    /// ```
    pub fn connect_to(
        &self,
        addr: SocketAddr,
        context: usize,
    ) -> io::Result<(Handle<std::net::TcpStream>, OpId)> {
        use socket2::{Domain, Protocol, Socket, Type};
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        let stream = self.add_handle(std::net::TcpStream::from(socket), context)?;
        let id = self.connect(&stream, addr);
        Ok((stream, id))
    }

    /// Issues a control code (`WSAIoctl` on a socket, `DeviceIoControl` on any other handle)
    /// as an overlapped operation. `input` is passed as is; the output is written into the
    /// spare capacity of `output`. The completion hands both back
    /// ([`Completion::take_ioctl`]), the output grown by the bytes returned. Controls that stay
    /// pending (such as `SIO_ADDRESS_LIST_CHANGE`) can be cancelled like any operation.
    ///
    /// On Linux it completes with [`io::ErrorKind::Unsupported`]: control codes are Windows'.
    /// `proactor::windows::IocpExt` has typed helpers for the common socket controls.
    ///
    /// ```no_run
    /// # fn f(port: &proactor::Iocp, conn: &proactor::Handle<std::net::TcpStream>) {
    /// const SIO_ADDRESS_LIST_CHANGE: u32 = 0x2800_0017;
    /// port.ioctl(conn, SIO_ADDRESS_LIST_CHANGE, Vec::new(), Vec::new());
    /// # }
    /// ```
    pub fn ioctl<T: Associate>(
        &self,
        handle: &Handle<T>,
        code: u32,
        input: Vec<u8>,
        output: Vec<u8>,
    ) -> OpId {
        self.with_user(0).ioctl(handle, code, input, output)
    }

    /// Cancels one operation (`CancelIoEx` with its `OVERLAPPED`). Its completion still
    /// arrives, with its buffer: as a cancelled error ([`crate::is_cancelled`]) if the cancel
    /// won, or with its ordinary outcome if the operation finished first.
    ///
    /// # Errors
    ///
    /// [`io::ErrorKind::NotFound`] if the operation has already finished (its completion is
    /// queued or was dequeued) or cannot be cancelled (a posted packet). One exception, on
    /// Windows: an accept is `Ok` until its completion is dequeued, since a client's reset may
    /// still restart it under its id (the cancel then ends it); an accept that succeeded
    /// meanwhile still completes with its connection, as any operation a cancel comes too
    /// late for.
    ///
    /// ```no_run
    /// # fn f(port: &proactor::Iocp, conn: &proactor::Handle<std::net::TcpStream>) {
    /// let id = port.recv(conn, Vec::with_capacity(1024));
    /// let _ = port.cancel(id);
    /// let done = port.get_completion(None).unwrap();
    /// assert_eq!(done.id(), id);
    /// # }
    /// ```
    pub fn cancel(&self, id: OpId) -> io::Result<()> {
        if self.timers.cancel_timer(id, || self.port.post(0, 0)) {
            return Ok(());
        }
        self.port.cancel(id)
    }

    /// Cancels every operation in flight on `handle`. Each still completes, as a cancelled
    /// error unless it finished first. Nothing in flight is not an error.
    ///
    /// Only this port's operations are cancelled: on a `proactor::windows::Foreign` handle, the
    /// owner's own I/O on the same handle (a runtime's) is left alone.
    ///
    /// # Errors
    ///
    /// The OS error if the request itself fails (the handle is not associated with this port:
    /// [`io::ErrorKind::InvalidInput`]).
    ///
    /// ```no_run
    /// # fn f(port: &proactor::Iocp, conn: &proactor::Handle<std::net::TcpStream>) {
    /// let _ = port.cancel_all(conn);
    /// # }
    /// ```
    pub fn cancel_all<T: Associate>(&self, handle: &Handle<T>) -> io::Result<()> {
        self.port.cancel_all(&handle.target)
    }

    /// How many operations are in flight: submitted, completion not yet dequeued. Pending
    /// [`timer`](Iocp::timer)s count; the port's internal wake packets do not.
    ///
    /// ```no_run
    /// # fn f(port: &proactor::Iocp) {
    /// println!("{} operations in flight", port.operations_in_flight());
    /// # }
    /// ```
    pub fn operations_in_flight(&self) -> usize {
        self.timers.adjust_in_flight(self.port.in_flight())
    }

    /// Which backend runs this port: `"iocp"` on Windows; `"io_uring"`, or `"epoll"` where
    /// io_uring is unavailable or `PROACTOR_BACKEND=epoll` asks for it, on Linux.
    ///
    /// ```no_run
    /// let port = proactor::Iocp::new()?;
    /// println!("backend: {}", port.backend());
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn backend(&self) -> &'static str {
        self.port.backend()
    }

    #[cfg_attr(not(windows), allow(dead_code))]
    pub(crate) fn sys(&self) -> &sys::Port {
        &self.port
    }
}

/// Where [`Iocp::dequeue`] puts what it dequeues: one completion (no allocation), or a batch of
/// at most `.1`.
enum Out<'a> {
    One(&'a mut Option<Completion>),
    Many(&'a mut Vec<Completion>, usize),
}

impl fmt::Debug for Iocp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Iocp")
            .field("in_flight", &self.operations_in_flight())
            .finish()
    }
}
