//! The completion port owned by one thread: [`LocalPort`], its handles and its submissions.
//!
//! `LocalPort` has the operations, completions and guarantees of [`Iocp`](crate::Iocp), for
//! one thread: it is neither `Send` nor `Sync`, so the thread that builds it is the only one
//! that submits and dequeues (the thread-per-core design). That lets each backend use what a
//! shared port cannot (see `engine`). On top it has pooled receive: a receive that takes no
//! buffer and completes with one of the port's pool.
//!
//! Two engines run it: on Linux with io_uring, a ring of its own (`crate::sys::Ring`); on the
//! epoll fallback and on Windows, a shared port ([`Iocp`](crate::Iocp)) that this thread alone
//! uses, with pooled receive built on readiness (`shared.rs`).

mod completion;
mod shared;
mod submit;

use std::{
    cell::Cell,
    fmt, io,
    mem::ManuallyDrop,
    net::SocketAddr,
    ops::Deref,
    rc::Rc,
    time::{Duration, Instant},
};

pub use completion::LocalCompletion;
pub use submit::LocalSubmit;

use crate::{Associate, OpId, OpKind, PooledBuf, completion::Output, pool::Pool};

/// The pool a [`LocalPort::new`] port gets: 1,024 buffers of 16 KiB (16 MiB, of which only
/// buffers that have held data are resident).
const DEFAULT_POOL: (u16, usize) = (1024, 16 * 1024);
/// The longest delay [`LocalPort::set_wait_coalescing`] takes.
const MAX_COALESCING: Duration = Duration::from_millis(10);

/// The error of wait coalescing on the shared-port engine.
fn cannot_coalesce() -> io::Error {
    io::Error::new(
        io::ErrorKind::Unsupported,
        "wait coalescing needs io_uring's minimum wait: this port runs on a shared port",
    )
}

/// What an operation of a [`LocalPort`] owns, handed to its engine.
#[derive(Debug)]
pub(crate) enum LocalOp {
    Recv(Vec<u8>),
    RecvVectored(Vec<Vec<u8>>),
    Readable,
    RecvPooled,
    RecvMultishot,
    Send(Vec<u8>),
    SendVectored(Vec<Vec<u8>>),
    SendPooled(PooledBuf),
    RecvFrom(Vec<u8>),
    SendTo(Vec<u8>, SocketAddr),
    ReadAt(Vec<u8>, u64),
    WriteAt(Vec<u8>, u64),
    Accept,
    Connect(SocketAddr),
}

impl LocalOp {
    /// The kind its completion says.
    pub(crate) fn kind(&self) -> OpKind {
        match self {
            LocalOp::Recv(_) => OpKind::Recv,
            LocalOp::RecvVectored(_) => OpKind::RecvVectored,
            LocalOp::Readable => OpKind::Readable,
            LocalOp::RecvPooled | LocalOp::RecvMultishot => OpKind::RecvPooled,
            LocalOp::Send(_) => OpKind::Send,
            LocalOp::SendVectored(_) => OpKind::SendVectored,
            LocalOp::SendPooled(_) => OpKind::SendPooled,
            LocalOp::RecvFrom(_) => OpKind::RecvFrom,
            LocalOp::SendTo(..) => OpKind::SendTo,
            LocalOp::ReadAt(..) => OpKind::Read,
            LocalOp::WriteAt(..) => OpKind::Write,
            LocalOp::Accept => OpKind::Accept,
            LocalOp::Connect(_) => OpKind::Connect,
        }
    }

    /// What it owned, as the completion of a refusal hands it back: its buffers, or its pool
    /// buffer.
    pub(crate) fn into_owned(self) -> (Output, Option<PooledBuf>) {
        match self {
            LocalOp::Recv(b)
            | LocalOp::Send(b)
            | LocalOp::RecvFrom(b)
            | LocalOp::SendTo(b, _)
            | LocalOp::ReadAt(b, _)
            | LocalOp::WriteAt(b, _) => (Output::Buffer(b), None),
            LocalOp::RecvVectored(b) | LocalOp::SendVectored(b) => (Output::buffers(b), None),
            LocalOp::SendPooled(b) => (Output::None, Some(b)),
            LocalOp::Readable
            | LocalOp::RecvPooled
            | LocalOp::RecvMultishot
            | LocalOp::Accept
            | LocalOp::Connect(_) => (Output::None, None),
        }
    }
}

/// The engine for a new port: on Linux a ring of its own unless `PROACTOR_BACKEND=epoll` (with
/// `PROACTOR_BACKEND=io_uring` a ring that cannot be built is an error; by default the shared
/// port takes over, with a log line), elsewhere the shared port. The ring of its own has no
/// polling thread: `PROACTOR_SQPOLL` is checked (a value that is not a number is an error, as
/// for the shared ports) but used only by the shared engine; `PROACTOR_RING_SETUP` and
/// `PROACTOR_RING_RECV_LIMIT` are checked before the ring is tried (a typo must not send the
/// port to the shared engine with a log line) and used by the ring.
fn engine(buffers: u16, size: usize) -> io::Result<Engine> {
    #[cfg(target_os = "linux")]
    {
        crate::sys::check_requests()?;
        let ring = || crate::sys::Ring::new(Pool::new(buffers, size, false)?);
        match crate::sys::requested_backend()? {
            Some("epoll") => {}
            Some(_) => return Ok(Engine::Ring(ring()?)),
            None => match ring() {
                Ok(r) => return Ok(Engine::Ring(r)),
                Err(e) => {
                    tracing::info!(reason = %e, "local port: no io_uring ring of its own, running on a shared port")
                }
            },
        }
    }
    Ok(Engine::Shared(shared::Shared::new(Pool::new(
        buffers, size, true,
    )?)?))
}

/// The engine that runs a port.
enum Engine {
    /// A ring of the port's own (Linux io_uring).
    #[cfg(target_os = "linux")]
    Ring(crate::sys::Ring),
    /// A shared port this thread alone uses.
    Shared(shared::Shared),
}

/// What a port's handles share with it: the engine, kept alive by the last of them.
struct Inner {
    engine: Engine,
    /// `get_completion`'s list of one, kept between calls so that a call allocates nothing.
    one: Cell<Vec<LocalCompletion>>,
}

/// A completion port owned by one thread: associate handles, submit operations and dequeue
/// their completions, all from the thread that built it.
///
/// It offers what [`Iocp`](crate::Iocp) offers (every operation ends as exactly one completion
/// that hands its buffers back, unless it asked to be reported only if it fails:
/// [`LocalSubmit::skip_success`]; memory the kernel may use is never freed early; dropping a
/// handle cancels what is in flight on it), for a single thread, which is what a
/// thread-per-core server runs: one `LocalPort` per worker thread, each with its own
/// connections. It is neither `Send` nor `Sync`; neither are its handles, completions and pool
/// buffers.
///
/// # What one thread buys
///
/// | backend | what the port is |
/// |---|---|
/// | Linux io_uring | a ring of its own, set up `SINGLE_ISSUER \| DEFER_TASKRUN` (falling back to `COOP_TASKRUN`, then neither: [`setup`](LocalPort::setup) says which), with handles registered as fixed files, operations in a slab (no lock, hash or allocation per receive or send), a multishot accept per listener, and pooled receive as one multishot receive per connection over a provided-buffer ring |
/// | Linux epoll fallback | the epoll backend's port, used by this thread only; pooled receive waits for readiness, then receives into a pool buffer |
/// | Windows | an I/O completion port dequeued by this thread only; pooled receive is a zero-byte `WSARecv`, then a non-blocking receive into a pool buffer, so an idle connection pins no buffer |
///
/// On io_uring, operations reach the kernel in batches: each call to
/// [`get_completion`](LocalPort::get_completion) or
/// [`get_completions`](LocalPort::get_completions) submits what was queued since the last one
/// and waits, in one system call. So an operation starts when its thread next polls the port
/// (a thread that submits a connect, then blocks on something else, waits with it unstarted).
/// Dropping a handle with operations in flight submits at once.
///
/// # Pooled receive
///
/// [`recv_pooled`](LocalPort::recv_pooled) takes no buffer: it completes with one of the
/// port's pool ([`LocalCompletion::take_pooled`]), which goes back to the pool when dropped, or
/// is sent without a copy by [`send_pooled`](LocalPort::send_pooled). Memory is the pool's
/// (fixed at [`with_pool`](LocalPort::with_pool)), not one buffer per connection. While the
/// pool is empty, pooled receives wait for buffers to come back: nothing is lost, nothing
/// fails for that. On one handle use pooled receives or receives with buffers of your own, not
/// both at once: a receive with a buffer on a handle with a pooled receive pending completes
/// with [`io::ErrorKind::InvalidInput`] (the two would take bytes out of order). Pooled receive
/// is for stream sockets: on a datagram socket it completes [`io::ErrorKind::Unsupported`]
/// (a datagram larger than a pool buffer would be cut); use
/// [`recv_from`](LocalPort::recv_from) there.
///
/// [`recv_multishot`](LocalPort::recv_multishot) is a pooled receive that goes on: one call,
/// then a completion for each message (with [`Completion::more`](crate::Completion::more)
/// true), until the end of the stream, an error, a [`cancel`](LocalPort::cancel) or its
/// deadline ends it (`more()` false). It saves the per-message submission; data that comes
/// after a cancel stays for the next pooled receive.
///
/// # Example: an echo server's thread
///
/// ```no_run
/// use std::net::TcpListener;
/// use proactor::{LocalPort, OpKind};
///
/// # fn main() -> std::io::Result<()> {
/// let port = LocalPort::new()?;
/// let listener = port.add_handle(TcpListener::bind("127.0.0.1:0")?, 0)?;
/// port.accept(&listener);
/// let mut conns = std::collections::HashMap::new();
/// let mut next = 1;
/// loop {
///     let mut done = port.get_completion(None)?;
///     match done.kind() {
///         OpKind::Accept => {
///             if let Some(accepted) = done.take_accepted() {
///                 let conn = port.add_handle(accepted.stream, next)?;
///                 port.recv_pooled(&conn);
///                 conns.insert(next, conn);
///                 next += 1;
///             }
///             port.accept(&listener);
///         }
///         OpKind::RecvPooled => match (done.take_pooled(), conns.get(&done.context())) {
///             (Some(data), Some(conn)) => {
///                 port.send_pooled(conn, data);
///                 port.recv_pooled(conn);
///             }
///             // End of stream, a reset: dropping the handle closes the connection.
///             _ => drop(conns.remove(&done.context())),
///         },
///         _ => {} // a send's completion: its buffer went back to the pool
///     }
/// }
/// # }
/// ```
pub struct LocalPort {
    inner: Rc<Inner>,
}

impl LocalPort {
    /// A port with the default pool: 1,024 buffers of 16 KiB.
    ///
    /// # Errors
    ///
    /// What the OS says when no port can be built (io_uring unavailable and epoll failing, a
    /// descriptor limit), or [`io::ErrorKind::Unsupported`] on systems other than Windows and
    /// Linux.
    ///
    /// ```no_run
    /// let port = proactor::LocalPort::new()?;
    /// println!("{} ({})", port.backend(), port.setup());
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn new() -> io::Result<LocalPort> {
        LocalPort::with_pool(DEFAULT_POOL.0, DEFAULT_POOL.1)
    }

    /// A port whose pool has `buffers` buffers (a power of two, at most 32,768) of `size`
    /// bytes each (at most 1 GiB).
    ///
    /// The pool is allocated once, here; pages of it become resident as buffers first hold
    /// data.
    ///
    /// # Errors
    ///
    /// [`io::ErrorKind::InvalidInput`] for a count that is not a power of two or sizes out of
    /// range, and [`LocalPort::new`]'s errors.
    ///
    /// ```no_run
    /// // 256 buffers of 64 KiB: large messages, few connections.
    /// let port = proactor::LocalPort::with_pool(256, 64 * 1024)?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn with_pool(buffers: u16, size: usize) -> io::Result<LocalPort> {
        let engine = engine(buffers, size)?;
        Ok(LocalPort {
            inner: Rc::new(Inner {
                engine,
                one: Cell::new(Vec::new()),
            }),
        })
    }

    /// Which backend runs the port: `"io_uring"`, `"epoll"` or `"iocp"`, the words of
    /// [`Iocp::backend`](crate::Iocp::backend).
    ///
    /// ```no_run
    /// let port = proactor::LocalPort::new()?;
    /// assert!(["io_uring", "epoll", "iocp"].contains(&port.backend()));
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn backend(&self) -> &'static str {
        match &self.inner.engine {
            Engine::Shared(s) => s.backend(),
            #[cfg(target_os = "linux")]
            Engine::Ring(s) => s.backend(),
        }
    }

    /// How the backend was set up: on io_uring the ring's flags
    /// (`"single_issuer+defer_taskrun"`, `"coop_taskrun"` or `"plain"`, the best the kernel
    /// accepted); `"shared port"` where the port is a shared port this thread alone uses (the
    /// epoll fallback, Windows, or io_uring when a ring of its own could not be built).
    ///
    /// `PROACTOR_RING_SETUP=coop_taskrun` (or `plain`) has the ring start from that setup, as
    /// on a kernel that refuses the better ones: the test suite runs the fallbacks this way.
    /// Another value than these three is an `InvalidInput` error from every port's creation.
    ///
    /// ```no_run
    /// let port = proactor::LocalPort::new()?;
    /// println!("io_uring setup: {}", port.setup());
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn setup(&self) -> &'static str {
        match &self.inner.engine {
            Engine::Shared(_) => "shared port",
            #[cfg(target_os = "linux")]
            Engine::Ring(r) => r.setup(),
        }
    }

    /// The most bytes a handle's pooled receive takes from its socket before the port asks the
    /// kernel again, where the port can bound it: on io_uring with Linux 6.17 or later, two pool
    /// buffers' worth (the kernel's byte limit of one arming of a multishot receive; it is armed
    /// again, if a receive still waits, at the next call of
    /// [`get_completions`](LocalPort::get_completions)). `None` where the kernel has no such
    /// limit: there the ring receives with one single-shot receive per pool buffer (an
    /// unlimited multishot receive would bring a handle what its socket received meanwhile,
    /// several megabytes when a fast peer keeps sending). On the shared-port engine (Windows,
    /// epoll) `None` too: there each readiness brings one pool buffer, but one call may see
    /// several. `PROACTOR_RING_RECV_LIMIT=off` leaves the limit unused on any kernel (`None`),
    /// as the test suite runs the older kernels' path.
    ///
    /// A program that stops receiving from a peer (it cancels its pooled receives: its sends
    /// to the peer back up) gets at most this much more, from the completions already on their
    /// way; the rest waits, queued on the handle (at most this much too) or in the socket. One
    /// call brings a handle at most this much, or twice this when a receive starts again and
    /// takes what was queued as well.
    ///
    /// ```no_run
    /// let port = proactor::LocalPort::with_pool(64, 4096)?;
    /// if let Some(limit) = port.recv_limit() {
    ///     assert_eq!(limit, 2 * 4096);
    /// }
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn recv_limit(&self) -> Option<usize> {
        match &self.inner.engine {
            Engine::Shared(_) => None,
            #[cfg(target_os = "linux")]
            Engine::Ring(r) => r.recv_limit(),
        }
    }

    /// How many times a pooled receive found the pool empty and waited for buffers to come
    /// back (io_uring: a multishot receive ended with `ENOBUFS`); 0 on the shared-port engine.
    /// For tests and diagnostics.
    ///
    /// ```no_run
    /// let port = proactor::LocalPort::new()?;
    /// assert_eq!(port.pool_starvations(), 0);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    #[doc(hidden)]
    pub fn pool_starvations(&self) -> u64 {
        match &self.inner.engine {
            #[cfg(target_os = "linux")]
            Engine::Ring(r) => r.pool_starvations(),
            Engine::Shared(_) => 0,
        }
    }

    /// How many times a handle's receiving was stopped because it held data nobody asked
    /// for, or its last pooled receive was cancelled or timed out (io_uring; 0 elsewhere,
    /// where nothing is received ahead). For tests.
    ///
    /// ```no_run
    /// let port = proactor::LocalPort::new()?;
    /// assert_eq!(port.receive_pauses(), 0);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    #[doc(hidden)]
    pub fn receive_pauses(&self) -> u64 {
        match &self.inner.engine {
            #[cfg(target_os = "linux")]
            Engine::Ring(r) => r.receive_pauses(),
            Engine::Shared(_) => 0,
        }
    }

    /// How many sends went to the kernel gathered with the send before them on their handle,
    /// in one `SENDMSG` (io_uring; 0 elsewhere, where each send is a call of its own). For
    /// tests and diagnostics.
    ///
    /// ```no_run
    /// let port = proactor::LocalPort::new()?;
    /// assert_eq!(port.gathered_sends(), 0);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    #[doc(hidden)]
    pub fn gathered_sends(&self) -> u64 {
        match &self.inner.engine {
            #[cfg(target_os = "linux")]
            Engine::Ring(r) => r.gathered_sends(),
            Engine::Shared(_) => 0,
        }
    }

    /// Lets [`get_completions`](LocalPort::get_completions) hold completions back, up to
    /// `max_delay`, when that makes this thread's work per byte smaller without moving fewer
    /// bytes per second; `None` (or zero) turns it off, as it is on a new port.
    ///
    /// A coalescing wait asks the kernel for 64 completions and returns once they are there
    /// or the delay has passed, with what came (io_uring's minimum wait). Under a load whose peers
    /// keep sending while they wait for replies, each wake-up then finds more completions and
    /// each receive more bytes, with fewer wake-ups, receives and sends per message; under a
    /// load that waits for every reply it only adds the delay. So the port chooses the delay
    /// itself, among zero, half of `max_delay` and `max_delay`, by measuring this thread's CPU
    /// time per byte its completions moved and the bytes moved per second (adaptive
    /// moderation): now and then it tries the next delay up or down; a longer one is kept only
    /// if it costs 10% less per byte without moving 5% fewer bytes per second, a shorter one
    /// unless it costs 3% more per byte without moving 5% more bytes per second; and it goes
    /// back to no delay at once when its waits bring fewer than 4 completions each or the
    /// load is light. Clients that send at a fixed rate whatever the replies' delay keep their
    /// rate: for them a delay that saves CPU is kept, and adds up to the delay to each reply. A
    /// completion is held back at most the delay: the first wait of a call asks for a batch
    /// until the delay has passed, then returns what came; if nothing came, the call waits
    /// for the first completion as without coalescing. `timeout` bounds the call as before
    /// (a call with less time left than the delay does not coalesce).
    /// [`coalescing_delay`](LocalPort::coalescing_delay) says which delay is in use.
    ///
    /// # Errors
    ///
    /// [`io::ErrorKind::Unsupported`] (for a delay other than zero) where the kernel has no
    /// minimum wait (io_uring before Linux 6.12) and on the shared-port engine (Windows,
    /// epoll); [`io::ErrorKind::InvalidInput`] for a delay over 10 ms.
    ///
    /// ```no_run
    /// use std::time::Duration;
    ///
    /// let port = proactor::LocalPort::new()?;
    /// match port.set_wait_coalescing(Some(Duration::from_micros(200))) {
    ///     Ok(()) => println!("coalescing up to 200 µs"),
    ///     Err(e) if e.kind() == std::io::ErrorKind::Unsupported => println!("no coalescing: {e}"),
    ///     Err(e) => return Err(e),
    /// }
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn set_wait_coalescing(&self, max_delay: Option<Duration>) -> io::Result<()> {
        let max_delay = max_delay.filter(|d| !d.is_zero());
        if max_delay.is_some_and(|d| d > MAX_COALESCING) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "wait coalescing's delay is at most 10 ms",
            ));
        }
        match &self.inner.engine {
            #[cfg(target_os = "linux")]
            Engine::Ring(r) => r.set_wait_coalescing(max_delay),
            Engine::Shared(_) if max_delay.is_none() => Ok(()),
            Engine::Shared(_) => Err(cannot_coalesce()),
        }
    }

    /// Test-only: holds the delay at `delay` (zero: off), whatever it costs, so that tests
    /// reach the coalescing waits without a load that makes them pay. `Unsupported` where
    /// [`set_wait_coalescing`](LocalPort::set_wait_coalescing) is.
    ///
    /// ```no_run
    /// let port = proactor::LocalPort::new()?;
    /// let _ = port.fix_coalescing_delay(std::time::Duration::from_micros(200));
    /// # Ok::<(), std::io::Error>(())
    /// ```
    #[doc(hidden)]
    pub fn fix_coalescing_delay(&self, delay: Duration) -> io::Result<()> {
        match &self.inner.engine {
            #[cfg(target_os = "linux")]
            Engine::Ring(r) => r.fix_coalescing_delay(delay),
            Engine::Shared(_) if delay.is_zero() => Ok(()),
            Engine::Shared(_) => Err(cannot_coalesce()),
        }
    }

    /// The delay a wait holds completions back now (see
    /// [`set_wait_coalescing`](LocalPort::set_wait_coalescing)); zero when coalescing is off
    /// or the port measured that no delay costs least.
    ///
    /// ```no_run
    /// let port = proactor::LocalPort::new()?;
    /// assert!(port.coalescing_delay().is_zero());
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn coalescing_delay(&self) -> Duration {
        match &self.inner.engine {
            #[cfg(target_os = "linux")]
            Engine::Ring(r) => r.coalescing_delay(),
            Engine::Shared(_) => Duration::ZERO,
        }
    }

    /// Associates `io` with the port, with `context` carried by the completion of every
    /// operation on it.
    ///
    /// # Errors
    ///
    /// What the OS says when the object cannot be associated (on io_uring: registered as a
    /// fixed file), e.g. a handle already associated with another port on Windows.
    ///
    /// ```no_run
    /// let port = proactor::LocalPort::new()?;
    /// let conn = port.add_handle(std::net::TcpStream::connect("127.0.0.1:7")?, 1)?;
    /// assert_eq!(conn.context(), 1);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn add_handle<T: Associate>(&self, io: T, context: usize) -> io::Result<LocalHandle<T>> {
        let key = match &self.inner.engine {
            Engine::Shared(s) => s.register(io.raw_io(), io.foreign(), context)?,
            #[cfg(target_os = "linux")]
            Engine::Ring(s) => s.register(io.raw_io(), io.foreign(), context)?,
        };
        Ok(LocalHandle {
            port: self.inner.clone(),
            key,
            context,
            io: ManuallyDrop::new(io),
        })
    }

    /// Queues a packet that is dequeued as a completion of kind
    /// [`OpKind::Post`](crate::OpKind::Post), with `context` and, as its bytes transferred,
    /// `value`: how a port's thread schedules work for itself.
    ///
    /// ```no_run
    /// let port = proactor::LocalPort::new()?;
    /// port.post(7, 42);
    /// let done = port.get_completion(None)?;
    /// assert_eq!((done.context(), done.bytes_transferred()), (7, 42));
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn post(&self, context: usize, value: usize) -> OpId {
        match &self.inner.engine {
            Engine::Shared(s) => s.post(context, value),
            #[cfg(target_os = "linux")]
            Engine::Ring(s) => s.post(context, value),
        }
    }

    /// An operation carrying `user`, handed back by its completion's
    /// [`user`](crate::Completion::user) (see [`Submit`](crate::Submit), its `Iocp`
    /// counterpart).
    ///
    /// ```no_run
    /// # fn f(port: &proactor::LocalPort, conn: &proactor::LocalHandle<std::net::TcpStream>) -> std::io::Result<()> {
    /// port.with_user(5).send(conn, b"hello".to_vec());
    /// assert_eq!(port.get_completion(None)?.user(), 5);
    /// # Ok(()) }
    /// ```
    pub fn with_user(&self, user: usize) -> LocalSubmit<'_> {
        LocalSubmit::new(self, user)
    }

    /// An operation that completes with the deadline error ([`crate::is_deadline`], kind
    /// [`io::ErrorKind::TimedOut`]) if it has not completed by `at`; see
    /// [`Submit::deadline`](crate::Submit::deadline).
    ///
    /// ```no_run
    /// # fn f(port: &proactor::LocalPort, conn: &proactor::LocalHandle<std::net::TcpStream>) {
    /// use std::time::{Duration, Instant};
    /// port.with_deadline(Instant::now() + Duration::from_secs(5)).recv_pooled(conn);
    /// # }
    /// ```
    pub fn with_deadline(&self, at: Instant) -> LocalSubmit<'_> {
        LocalSubmit::new(self, 0).deadline(at)
    }

    /// An operation with a deadline `after` from now; see [`with_deadline`](LocalPort::with_deadline).
    ///
    /// ```no_run
    /// # fn f(port: &proactor::LocalPort, conn: &proactor::LocalHandle<std::net::TcpStream>) {
    /// port.with_timeout(std::time::Duration::from_secs(5)).recv_pooled(conn);
    /// # }
    /// ```
    pub fn with_timeout(&self, after: Duration) -> LocalSubmit<'_> {
        LocalSubmit::new(self, 0).timeout(after)
    }

    /// A timer: completes `Ok(0)`, kind [`OpKind::Timer`](crate::OpKind::Timer), once `after`
    /// has passed (or cancelled, if [`cancel`](LocalPort::cancel) comes first).
    ///
    /// ```no_run
    /// let port = proactor::LocalPort::new()?;
    /// port.timer(std::time::Duration::from_millis(10));
    /// assert_eq!(port.get_completion(None)?.kind(), proactor::OpKind::Timer);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn timer(&self, after: Duration) -> OpId {
        self.with_user(0).timer(after)
    }

    /// Receives into `buf`'s spare capacity ([`Iocp::recv`](crate::Iocp::recv)).
    ///
    /// ```no_run
    /// # fn f(port: &proactor::LocalPort, conn: &proactor::LocalHandle<std::net::TcpStream>) {
    /// port.recv(conn, Vec::with_capacity(4096));
    /// # }
    /// ```
    pub fn recv<T: Associate>(&self, handle: &LocalHandle<T>, buf: Vec<u8>) -> OpId {
        self.with_user(0).recv(handle, buf)
    }

    /// Receives into several buffers ([`Iocp::recv_vectored`](crate::Iocp::recv_vectored)).
    ///
    /// ```no_run
    /// # fn f(port: &proactor::LocalPort, conn: &proactor::LocalHandle<std::net::TcpStream>) {
    /// port.recv_vectored(conn, vec![Vec::with_capacity(16), Vec::with_capacity(4096)]);
    /// # }
    /// ```
    pub fn recv_vectored<T: Associate>(&self, handle: &LocalHandle<T>, bufs: Vec<Vec<u8>>) -> OpId {
        self.with_user(0).recv_vectored(handle, bufs)
    }

    /// Waits until the socket has something to receive ([`Iocp::readable`](crate::Iocp::readable)).
    ///
    /// ```no_run
    /// # fn f(port: &proactor::LocalPort, conn: &proactor::LocalHandle<std::net::TcpStream>) {
    /// port.readable(conn);
    /// # }
    /// ```
    pub fn readable<T: Associate>(&self, handle: &LocalHandle<T>) -> OpId {
        self.with_user(0).readable(handle)
    }

    /// Receives into a buffer of the port's pool: see [Pooled receive](LocalPort#pooled-receive).
    /// Completes `Ok(n)` with the `n` bytes in [`LocalCompletion::take_pooled`], `Ok(0)` at the
    /// end of the stream, or the error, kind [`OpKind::RecvPooled`](crate::OpKind::RecvPooled).
    /// For stream sockets only: on a socket that keeps message boundaries (UDP) it completes
    /// [`ErrorKind::Unsupported`](std::io::ErrorKind::Unsupported) at once, on every backend,
    /// since a datagram larger than a pool buffer would be cut without an error; use
    /// [`recv_from`](LocalPort::recv_from) there. On a socket another port owns (Windows,
    /// `proactor::windows::Foreign`) it completes `Unsupported` too: a receive that does not
    /// wait would change the owner's socket mode or race the owner's own reads; use
    /// [`recv`](LocalPort::recv) with a buffer there.
    ///
    /// ```no_run
    /// # fn f(port: &proactor::LocalPort, conn: &proactor::LocalHandle<std::net::TcpStream>) -> std::io::Result<()> {
    /// port.recv_pooled(conn);
    /// let mut done = port.get_completion(None)?;
    /// let n = done.result()?;
    /// if let Some(data) = done.take_pooled() {
    ///     assert_eq!(data.len(), n);
    /// }
    /// # Ok(()) }
    /// ```
    pub fn recv_pooled<T: Associate>(&self, handle: &LocalHandle<T>) -> OpId {
        self.with_user(0).recv_pooled(handle)
    }

    /// A pooled receive that goes on: each message received completes it with
    /// [`Completion::more`](crate::Completion::more) true, the bytes in
    /// [`LocalCompletion::take_pooled`] and the same id, until a last completion (`more()`
    /// false, no buffer) ends it: `Ok(0)` at the end of the stream, the error (a reset is
    /// [`ConnectionReset`](std::io::ErrorKind::ConnectionReset)), a local
    /// [`cancel`](LocalPort::cancel) (or the handle's drop or
    /// [`cancel_all`](LocalPort::cancel_all)), or its deadline, which bounds the whole
    /// operation. The kind is [`OpKind::RecvPooled`](crate::OpKind::RecvPooled), and
    /// everything [Pooled receive](LocalPort#pooled-receive) says holds; other pooled
    /// receives on the handle wait behind it.
    ///
    /// It holds no buffer between messages, but it takes every message the peer sends: a
    /// program that cannot keep up (its sends to a slow reader pile up) cancels it, and starts
    /// another one later. Nothing is lost: what arrives after the cancel waits, in the socket
    /// or queued on the handle, for the next pooled receive. On io_uring it rides on the
    /// handle's multishot receive, as single pooled receives do; elsewhere the port re-arms its
    /// readiness wait after each message, for the same completions.
    ///
    /// ```no_run
    /// # fn f(port: &proactor::LocalPort, conn: &proactor::LocalHandle<std::net::TcpStream>) -> std::io::Result<()> {
    /// let id = port.recv_multishot(conn);
    /// let mut received = Vec::new();
    /// loop {
    ///     let mut done = port.get_completion(None)?;
    ///     if let Some(data) = done.take_pooled() {
    ///         received.extend_from_slice(&data);
    ///     }
    ///     if !done.more() {
    ///         done.result()?; // Ok(0): the end of the stream
    ///         break;
    ///     }
    /// }
    /// # let _ = id;
    /// # Ok(()) }
    /// ```
    pub fn recv_multishot<T: Associate>(&self, handle: &LocalHandle<T>) -> OpId {
        self.with_user(0).recv_multishot(handle)
    }

    /// Sends `buf` ([`Iocp::send`](crate::Iocp::send)).
    ///
    /// ```no_run
    /// # fn f(port: &proactor::LocalPort, conn: &proactor::LocalHandle<std::net::TcpStream>) {
    /// port.send(conn, b"hello".to_vec());
    /// # }
    /// ```
    pub fn send<T: Associate>(&self, handle: &LocalHandle<T>, buf: Vec<u8>) -> OpId {
        self.with_user(0).send(handle, buf)
    }

    /// Sends several buffers in order ([`Iocp::send_vectored`](crate::Iocp::send_vectored)).
    ///
    /// ```no_run
    /// # fn f(port: &proactor::LocalPort, conn: &proactor::LocalHandle<std::net::TcpStream>) {
    /// port.send_vectored(conn, vec![b"head".to_vec(), b"body".to_vec()]);
    /// # }
    /// ```
    pub fn send_vectored<T: Associate>(&self, handle: &LocalHandle<T>, bufs: Vec<Vec<u8>>) -> OpId {
        self.with_user(0).send_vectored(handle, bufs)
    }

    /// Sends a pool buffer's bytes, all of them, without copying them; the completion (kind
    /// [`OpKind::SendPooled`](crate::OpKind::SendPooled)) hands the buffer back through
    /// [`LocalCompletion::take_pooled`]. A buffer of another port's pool completes with
    /// [`io::ErrorKind::InvalidInput`].
    ///
    /// ```no_run
    /// # fn f(port: &proactor::LocalPort, conn: &proactor::LocalHandle<std::net::TcpStream>, data: proactor::PooledBuf) {
    /// port.send_pooled(conn, data);
    /// # }
    /// ```
    pub fn send_pooled<T: Associate>(&self, handle: &LocalHandle<T>, buf: PooledBuf) -> OpId {
        self.with_user(0).send_pooled(handle, buf)
    }

    /// Receives a datagram and its source ([`Iocp::recv_from`](crate::Iocp::recv_from)).
    ///
    /// ```no_run
    /// # fn f(port: &proactor::LocalPort, udp: &proactor::LocalHandle<std::net::UdpSocket>) {
    /// port.recv_from(udp, Vec::with_capacity(1500));
    /// # }
    /// ```
    pub fn recv_from<T: Associate>(&self, handle: &LocalHandle<T>, buf: Vec<u8>) -> OpId {
        self.with_user(0).recv_from(handle, buf)
    }

    /// Sends a datagram to `addr` ([`Iocp::send_to`](crate::Iocp::send_to)).
    ///
    /// ```no_run
    /// # fn f(port: &proactor::LocalPort, udp: &proactor::LocalHandle<std::net::UdpSocket>) {
    /// port.send_to(udp, b"ping".to_vec(), "127.0.0.1:9".parse().unwrap());
    /// # }
    /// ```
    pub fn send_to<T: Associate>(
        &self,
        handle: &LocalHandle<T>,
        buf: Vec<u8>,
        addr: SocketAddr,
    ) -> OpId {
        self.with_user(0).send_to(handle, buf, addr)
    }

    /// Reads at `offset` ([`Iocp::read_at`](crate::Iocp::read_at)).
    ///
    /// ```no_run
    /// # fn f(port: &proactor::LocalPort, file: &proactor::LocalHandle<std::fs::File>) {
    /// port.read_at(file, Vec::with_capacity(4096), 0);
    /// # }
    /// ```
    pub fn read_at<T: Associate>(
        &self,
        handle: &LocalHandle<T>,
        buf: Vec<u8>,
        offset: u64,
    ) -> OpId {
        self.with_user(0).read_at(handle, buf, offset)
    }

    /// Writes at `offset` ([`Iocp::write_at`](crate::Iocp::write_at)).
    ///
    /// ```no_run
    /// # fn f(port: &proactor::LocalPort, file: &proactor::LocalHandle<std::fs::File>) {
    /// port.write_at(file, b"data".to_vec(), 0);
    /// # }
    /// ```
    pub fn write_at<T: Associate>(
        &self,
        handle: &LocalHandle<T>,
        buf: Vec<u8>,
        offset: u64,
    ) -> OpId {
        self.with_user(0).write_at(handle, buf, offset)
    }

    /// Accepts one connection ([`Iocp::accept`](crate::Iocp::accept)); take it with
    /// [`Completion::take_accepted`](crate::Completion::take_accepted).
    ///
    /// ```no_run
    /// # fn f(port: &proactor::LocalPort, listener: &proactor::LocalHandle<std::net::TcpListener>) {
    /// port.accept(listener);
    /// # }
    /// ```
    pub fn accept<T: Associate>(&self, listener: &LocalHandle<T>) -> OpId {
        self.with_user(0).accept(listener)
    }

    /// Connects a socket ([`Iocp::connect`](crate::Iocp::connect)).
    ///
    /// ```no_run
    /// # fn f(port: &proactor::LocalPort) -> std::io::Result<()> {
    /// use proactor::socket2::{Domain, Socket, Type};
    /// let socket = port.add_handle(Socket::new(Domain::IPV4, Type::STREAM, None)?, 1)?;
    /// port.connect(&socket, "127.0.0.1:8080".parse().unwrap());
    /// # Ok(()) }
    /// ```
    pub fn connect<T: Associate>(&self, socket: &LocalHandle<T>, addr: SocketAddr) -> OpId {
        self.with_user(0).connect(socket, addr)
    }

    /// Cancels operation `id`: it completes with an error for which
    /// [`crate::is_cancelled`] is true (unless it completed first), handing its buffers back.
    ///
    /// # Errors
    ///
    /// [`io::ErrorKind::NotFound`] if the operation is no longer in flight.
    ///
    /// ```no_run
    /// # fn f(port: &proactor::LocalPort, conn: &proactor::LocalHandle<std::net::TcpStream>) {
    /// let id = port.recv_pooled(conn);
    /// let _ = port.cancel(id);
    /// # }
    /// ```
    pub fn cancel(&self, id: OpId) -> io::Result<()> {
        match &self.inner.engine {
            Engine::Shared(s) => s.cancel(id),
            #[cfg(target_os = "linux")]
            Engine::Ring(s) => s.cancel(id),
        }
    }

    /// Cancels every operation in flight on `handle`, which stays open.
    ///
    /// # Errors
    ///
    /// What the OS says if the cancel cannot be requested.
    ///
    /// ```no_run
    /// # fn f(port: &proactor::LocalPort, conn: &proactor::LocalHandle<std::net::TcpStream>) -> std::io::Result<()> {
    /// port.cancel_all(conn)?;
    /// # Ok(()) }
    /// ```
    pub fn cancel_all<T: Associate>(&self, handle: &LocalHandle<T>) -> io::Result<()> {
        if !handle.belongs_to(self) {
            return Err(crate::error::other_port());
        }
        match &self.inner.engine {
            Engine::Shared(s) => s.cancel_all(handle.key),
            #[cfg(target_os = "linux")]
            Engine::Ring(s) => s.cancel_all(handle.key),
        }
    }

    /// Waits for the next completion, at most `timeout` (`None`: forever).
    ///
    /// # Errors
    ///
    /// [`io::ErrorKind::TimedOut`] when the timeout passes first.
    ///
    /// ```no_run
    /// # fn f(port: &proactor::LocalPort) {
    /// match port.get_completion(Some(std::time::Duration::from_millis(100))) {
    ///     Ok(done) => println!("{done:?}"),
    ///     Err(e) => println!("{e}"),
    /// }
    /// # }
    /// ```
    pub fn get_completion(&self, timeout: Option<Duration>) -> io::Result<LocalCompletion> {
        // Taken out while in use (a nested call, were there one, would make its own).
        let mut one = self.inner.one.take();
        let got = self.get_completions(&mut one, 1, timeout);
        let popped = one.pop();
        self.inner.one.set(one);
        got?;
        Ok(popped.expect("get_completions returns at least one completion"))
    }

    /// Waits for completions and appends up to `max` of them to `out`, returning how many.
    ///
    /// # Errors
    ///
    /// [`io::ErrorKind::TimedOut`] when the timeout passes before the first completion;
    /// [`io::ErrorKind::InvalidInput`] for a `max` of 0.
    ///
    /// ```no_run
    /// # fn f(port: &proactor::LocalPort) -> std::io::Result<()> {
    /// let mut batch = Vec::with_capacity(64);
    /// port.get_completions(&mut batch, 64, None)?;
    /// for done in batch.drain(..) {
    ///     println!("{done:?}");
    /// }
    /// # Ok(()) }
    /// ```
    pub fn get_completions(
        &self,
        out: &mut Vec<LocalCompletion>,
        max: usize,
        timeout: Option<Duration>,
    ) -> io::Result<usize> {
        if max == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "get_completions needs room for at least one completion",
            ));
        }
        match &self.inner.engine {
            Engine::Shared(s) => s.get_completions(out, max, timeout),
            #[cfg(target_os = "linux")]
            Engine::Ring(s) => s.get_completions(out, max, timeout),
        }
    }

    /// Operations submitted and not yet dequeued, counting each completion waiting to be
    /// dequeued: a multishot receive still going on counts once, and once more for each
    /// message of it not yet dequeued. Zero once every completion was taken.
    ///
    /// ```no_run
    /// let port = proactor::LocalPort::new()?;
    /// assert_eq!(port.operations_in_flight(), 0);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn operations_in_flight(&self) -> usize {
        match &self.inner.engine {
            Engine::Shared(s) => s.in_flight(),
            #[cfg(target_os = "linux")]
            Engine::Ring(s) => s.in_flight(),
        }
    }

    /// Operations submitted with [`skip_success`](LocalSubmit::skip_success) that have not
    /// ended yet (the kernel still has them, or they wait for their turn): zero once each
    /// either succeeded (reporting nothing) or made its completion. Counted in
    /// [`operations_in_flight`](LocalPort::operations_in_flight) too.
    ///
    /// ```no_run
    /// let port = proactor::LocalPort::new()?;
    /// assert_eq!(port.unreported_in_flight(), 0);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn unreported_in_flight(&self) -> usize {
        match &self.inner.engine {
            Engine::Shared(s) => s.unreported(None),
            #[cfg(target_os = "linux")]
            Engine::Ring(s) => s.unreported(None),
        }
    }

    /// [`unreported_in_flight`](LocalPort::unreported_in_flight) on `handle` alone: zero once
    /// every send it was given with [`skip_success`](LocalSubmit::skip_success) ended (its
    /// bytes sent, or its failure in a completion). Zero for another port's handle.
    ///
    /// ```no_run
    /// # fn f(port: &proactor::LocalPort, conn: &proactor::LocalHandle<std::net::TcpStream>) {
    /// port.with_user(1).skip_success().send(conn, b"hello".to_vec());
    /// // ... later: has it ended?
    /// let sent = port.unreported_in_flight_on(conn) == 0;
    /// # }
    /// ```
    pub fn unreported_in_flight_on<T: Associate>(&self, handle: &LocalHandle<T>) -> usize {
        if !handle.belongs_to(self) {
            return 0;
        }
        match &self.inner.engine {
            Engine::Shared(s) => s.unreported(Some(handle.key)),
            #[cfg(target_os = "linux")]
            Engine::Ring(s) => s.unreported(Some(handle.key)),
        }
    }

    /// Starts `op` on `handle`: every engine's one way in.
    fn start<T: Associate>(
        &self,
        handle: &LocalHandle<T>,
        user: usize,
        deadline: Option<Instant>,
        skip: bool,
        op: LocalOp,
    ) -> OpId {
        let key = handle.belongs_to(self).then_some(handle.key);
        match &self.inner.engine {
            Engine::Shared(s) => s.start(key, handle.context, user, deadline, skip, op),
            #[cfg(target_os = "linux")]
            Engine::Ring(s) => s.start(key, handle.context, user, deadline, skip, op),
        }
    }

    fn start_timer(&self, user: usize, after: Duration) -> OpId {
        match &self.inner.engine {
            Engine::Shared(s) => s.timer(user, after),
            #[cfg(target_os = "linux")]
            Engine::Ring(s) => s.timer(user, after),
        }
    }
}

impl fmt::Debug for LocalPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalPort")
            .field("backend", &self.backend())
            .field("setup", &self.setup())
            .field("in_flight", &self.operations_in_flight())
            .finish()
    }
}

/// An OS object associated with a [`LocalPort`], with the application's context value.
///
/// Made by [`LocalPort::add_handle`]. It owns the object: dropping it cancels every operation
/// still in flight on it (each still completes, cancelled, handing its buffers back, at a later
/// [`LocalPort::get_completion`]; a send reported only if it fails too, unless it had sent every
/// byte), gives pooled data not yet received back to the pool, then
/// closes the object (on Windows a socket once the port has taken back its cancelled sends and
/// receives, so that a cancelled send reports what went; see [`Handle`](crate::Handle)). It
/// dereferences to the object. It belongs to the port's thread.
///
/// On the port's own io_uring ring the kernel's hold on the object may outlive the drop until
/// the port's next call into the kernel (a [`LocalPort::get_completions`] that finds nothing
/// ready, whatever its timeout, is one): when a kernel worker ran one of its operations (for
/// example a send that blocked), the kernel lets go of the file in work it defers to that
/// call. Until then a connection stays open: a program that waits for its peer to see the
/// close must keep calling the port meanwhile, as its loop does anyway.
///
/// ```no_run
/// let port = proactor::LocalPort::new()?;
/// let conn = port.add_handle(std::net::TcpStream::connect("127.0.0.1:7")?, 42)?;
/// println!("{} talks to {}", conn.context(), conn.peer_addr()?);
/// # Ok::<(), std::io::Error>(())
/// ```
pub struct LocalHandle<T: Associate> {
    port: Rc<Inner>,
    /// The engine's key for the handle.
    key: u32,
    context: usize,
    /// Taken by `Drop::drop`, which closes it after cancelling what was in flight on it.
    io: ManuallyDrop<T>,
}

impl<T: Associate> LocalHandle<T> {
    /// The context given to [`LocalPort::add_handle`], carried by every completion of an
    /// operation on this handle.
    ///
    /// ```no_run
    /// # fn f(conn: &proactor::LocalHandle<std::net::TcpStream>) {
    /// println!("connection {}", conn.context());
    /// # }
    /// ```
    pub fn context(&self) -> usize {
        self.context
    }

    /// The associated object.
    ///
    /// ```no_run
    /// # fn f(conn: &proactor::LocalHandle<std::net::TcpStream>) -> std::io::Result<()> {
    /// conn.get_ref().set_nodelay(true)?;
    /// # Ok(()) }
    /// ```
    pub fn get_ref(&self) -> &T {
        &self.io
    }

    /// Whether the handle was associated with `port` (an operation on another port's handle
    /// completes with an error instead of reaching the wrong engine).
    fn belongs_to(&self, port: &LocalPort) -> bool {
        Rc::ptr_eq(&self.port, &port.inner)
    }
}

impl<T: Associate> Deref for LocalHandle<T> {
    type Target = T;

    fn deref(&self) -> &T {
        self.get_ref()
    }
}

impl<T: Associate> Drop for LocalHandle<T> {
    fn drop(&mut self) {
        // SAFETY: `io` is taken here, once, and never used again.
        let io = unsafe { ManuallyDrop::take(&mut self.io) };
        match &self.port.engine {
            Engine::Shared(s) => s.close(self.key, io),
            #[cfg(target_os = "linux")]
            Engine::Ring(s) => s.close(self.key, io),
        }
    }
}

impl<T: Associate + fmt::Debug> fmt::Debug for LocalHandle<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalHandle")
            .field("context", &self.context)
            .field("io", self.get_ref())
            .finish()
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use std::{
        net::{TcpListener, TcpStream},
        time::Duration,
    };

    use super::*;

    /// A port on the shared-port engine whatever the kernel offers: what a `LocalPort` runs on
    /// where its own ring cannot be built, over io_uring unless `PROACTOR_BACKEND=epoll`.
    fn on_shared_port() -> LocalPort {
        let pool = Pool::new(2, 4096, true).unwrap();
        LocalPort {
            inner: Rc::new(Inner {
                engine: Engine::Shared(shared::Shared::new(pool).unwrap()),
                one: Cell::new(Vec::new()),
            }),
        }
    }

    /// A dropped port gives back its thread's registration of its ring's descriptor (else the
    /// registration keeps the ring, and what its operations held, until the thread exits; a
    /// thread has 16 such slots): the 22nd port of a thread that made and dropped 21 is still
    /// entered by its registered index.
    #[test]
    fn a_dropped_port_unregisters_its_ring() {
        std::thread::spawn(|| {
            let registered = |port: &LocalPort| match &port.inner.engine {
                Engine::Ring(r) => Some(r.ring_fd_registered()),
                Engine::Shared(_) => None,
            };
            let first = LocalPort::new().unwrap();
            if registered(&first) != Some(true) {
                eprintln!("skipped: no ring of its own with a registered descriptor here");
                return;
            }
            drop(first);
            for _ in 0..20 {
                let port = LocalPort::new().unwrap();
                drop(port);
            }
            assert_eq!(registered(&LocalPort::new().unwrap()), Some(true));
        })
        .join()
        .unwrap();
    }

    /// The shared-port engine's pooled receive, armed before the peer's reset, whose readiness
    /// comes before the completion of the send that took the reset: the end of the stream its
    /// receive then finds is the reset (`Shared::after_reset` takes what the port has first).
    /// The order is the one `PROACTOR_SQPOLL=50` gives (CI's SQPOLL step runs this): the
    /// kernel's polling thread submits the send at once, after the readiness's CQE, and the
    /// engine asks the shared port for one completion at a time here (without taking what the
    /// port has first, this fails there every time; elsewhere the receive takes the reset
    /// itself).
    #[test]
    fn the_shared_engine_keeps_a_reset_a_send_took() {
        let port = on_shared_port();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let peer = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (accepted, _) = listener.accept().unwrap();
        let h = port.add_handle(accepted, 1).unwrap();
        let recv = port.recv_pooled(&h);
        assert!(
            port.get_completion(Some(Duration::from_millis(20)))
                .is_err()
        );
        socket2::SockRef::from(&peer)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        drop(peer);
        std::thread::sleep(Duration::from_millis(20));
        let send = port.send(&h, b"after the reset".to_vec());
        // Under SQPOLL the kernel's thread sends now: its CQE is there before the next call.
        std::thread::sleep(Duration::from_millis(20));
        for _ in 0..2 {
            let c = port.get_completion(Some(Duration::from_secs(5))).unwrap();
            let e = c
                .result()
                .expect_err("after a reset, an error, never Ok(0)");
            assert!(c.id() == recv || c.id() == send, "{c:?}");
            if c.id() == recv {
                assert_eq!(e.kind(), io::ErrorKind::ConnectionReset, "{e:?}");
            }
        }
        assert_eq!(port.operations_in_flight(), 0);
    }
}
