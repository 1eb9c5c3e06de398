//! The close of a dropped handle's socket, deferred until the port has taken back the
//! operations that move its bytes.
//!
//! A send in flight when its socket closes may lose its count: Wine's overlapped send, resumed
//! after the close (its cancel missed it while it was being resumed), completes with
//! `STATUS_INVALID_HANDLE` and 0 bytes although the peer got part of the data. So every send
//! and receive record on a socket holds its handle's [`DeferredClose`], and a dropped handle's
//! socket is closed when the last one goes (at once if none is in flight).
//!
//! The wait is bounded: a cancel can miss an operation (that same resumption under Wine; a
//! layered provider that does not pass it on), which would then keep its socket open as long as
//! its peer neither reads nor writes. The port's list of dropped sockets ([`Dropped`]) has the
//! threads that dequeue cancel their operations again every [`RECANCEL`], and close the socket
//! under them after [`WAIT_AT_MOST`] (their counts may then be lost, as a close at once could
//! lose them).
//!
//! Only sockets the handle owns: a file, pipe or device closes at once after the cancel (a
//! driver that ends its requests only at cleanup must see the close), and a `Foreign` object is
//! its owner's. Accepts, connects and readiness waits do not hold it: they move no bytes, and a
//! listener dropped with its accepts pending stops listening at once.

use std::{
    os::windows::io::{AsRawSocket, OwnedSocket},
    ptr,
    sync::{
        Arc, Mutex, Weak,
        atomic::{self, AtomicBool, AtomicU64, Ordering::Relaxed},
    },
    time::{Duration, Instant},
};

use windows_sys::Win32::{
    Foundation::HANDLE,
    System::IO::{CancelIoEx, PostQueuedCompletionStatus},
};

use super::foreign::lock;
use crate::OpKind;

/// How often a dropped socket's operations are cancelled again while it waits for them.
pub(crate) const RECANCEL: Duration = Duration::from_millis(100);

/// How long a dropped socket waits for its operations at most before it is closed under them.
pub(crate) const WAIT_AT_MOST: Duration = Duration::from_secs(2);

/// Where a dropped handle's socket waits for its last send or receive record.
#[derive(Debug)]
pub(crate) struct DeferredClose {
    /// Closed when this is dropped (when the last reference goes), or by [`Dropped::sweep`].
    socket: Mutex<Option<OwnedSocket>>,
    /// The port's list of dropped sockets.
    port: Weak<Dropped>,
}

impl DeferredClose {
    /// One for a socket associated with the port whose list is `port`.
    pub(crate) fn new(port: &Arc<Dropped>) -> Arc<DeferredClose> {
        Arc::new(DeferredClose {
            socket: Mutex::new(None),
            port: Arc::downgrade(port),
        })
    }

    /// Closes `socket` once nothing refers to `this` but the caller's reference: at once if
    /// that is already so, or else when the last record holding one is dropped (its completion
    /// taken back from the kernel), [`WAIT_AT_MOST`] at the latest. Call it after the handle's
    /// operations were cancelled and while no new one can start on it: references then only
    /// go.
    pub(crate) fn when_idle(this: &Arc<DeferredClose>, socket: OwnedSocket) {
        if Arc::strong_count(this) == 1 {
            // Pairs with the release of the record's drop of its reference (the count is read
            // relaxed), as `Arc`'s own drop does before freeing.
            atomic::fence(atomic::Ordering::Acquire);
            drop(socket);
            return;
        }
        // The last record may go between the count and this store: the socket then closes
        // when the caller drops its reference, the last.
        *lock(&this.socket) = Some(socket);
        if let Some(port) = this.port.upgrade() {
            port.add(this);
        }
    }
}

/// A port's dropped sockets that still wait for their sends and receives.
#[derive(Debug)]
pub(crate) struct Dropped {
    /// Whether the list holds any: read twice by every dequeue, the whole cost of an empty
    /// list.
    any: AtomicBool,
    /// When the next sweep is due, in milliseconds since `epoch`: read before the lock.
    next_sweep: AtomicU64,
    epoch: Instant,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    /// When each socket's handle was dropped.
    list: Vec<(Instant, Weak<DeferredClose>)>,
    /// The port, woken when the list stops being empty (its threads may wait with no time
    /// limit); `None` once the port is closing.
    port: Option<usize>,
}

impl Dropped {
    /// The list of the port `port`.
    pub(crate) fn new(port: HANDLE) -> Arc<Dropped> {
        Arc::new(Dropped {
            any: AtomicBool::new(false),
            next_sweep: AtomicU64::new(0),
            epoch: Instant::now(),
            state: Mutex::new(State {
                list: Vec::new(),
                port: Some(port as usize),
            }),
        })
    }

    fn millis(&self, at: Instant) -> u64 {
        at.duration_since(self.epoch).as_millis() as u64
    }

    fn add(&self, socket: &Arc<DeferredClose>) {
        let mut st = lock(&self.state);
        let now = Instant::now();
        if st.list.is_empty() {
            let due = self.millis(now + RECANCEL);
            self.next_sweep.store(due, Relaxed);
        }
        st.list.push((now, Arc::downgrade(socket)));
        if self.any.swap(true, Relaxed) {
            return; // every wait that starts from now is bounded, and one already was
        }
        if let Some(port) = st.port {
            // A wake-up (no OVERLAPPED: the dequeuing threads skip it), so that one thread
            // waiting with no time limit comes back to wait at most `RECANCEL`, and sweep.
            // SAFETY: the port is open: it is marked closing (under this lock) before its
            // handle closes. A failed post only leaves the sweep to the next dequeue.
            unsafe { PostQueuedCompletionStatus(port as HANDLE, 0, 0, ptr::null()) };
        }
    }

    /// The port is closing: no more wake-ups through its handle.
    pub(crate) fn port_closing(&self) {
        lock(&self.state).port = None;
    }

    /// How long a dequeue may wait in the kernel, at most `millis`: no longer than
    /// [`RECANCEL`] while a dropped socket waits.
    pub(crate) fn wait_millis(&self, millis: u32) -> u32 {
        if self.any.load(Relaxed) {
            millis.min(RECANCEL.as_millis() as u32)
        } else {
            millis
        }
    }

    /// Called after every dequeue: when a sweep is due, cancels again what each dropped
    /// socket still has in flight, and cancels and closes those that waited [`WAIT_AT_MOST`].
    pub(crate) fn sweep(&self) {
        if !self.any.load(Relaxed) {
            return;
        }
        let now = Instant::now();
        if self.millis(now) < self.next_sweep.load(Relaxed) {
            return;
        }
        // Another thread sweeping is enough.
        let Ok(mut st) = self.state.try_lock() else {
            return;
        };
        if self.millis(now) < self.next_sweep.load(Relaxed) {
            return; // swept meanwhile
        }
        self.next_sweep.store(self.millis(now + RECANCEL), Relaxed);
        let mut closing = Vec::new();
        st.list.retain(|(since, weak)| {
            let Some(deferred) = weak.upgrade() else {
                return false; // closed with its last record
            };
            let mut socket = lock(&deferred.socket);
            let Some(open) = socket.as_ref() else {
                return false;
            };
            let cancel = || {
                // SAFETY: the socket is open (it is in `socket`, locked); a null OVERLAPPED
                // cancels every operation on it. ERROR_NOT_FOUND (nothing pending) needs nothing.
                unsafe { CancelIoEx(open.as_raw_socket() as HANDLE, ptr::null()) };
            };
            if now.duration_since(*since) >= WAIT_AT_MOST {
                tracing::warn!(
                    socket = open.as_raw_socket(),
                    "a dropped socket's operations were not done {WAIT_AT_MOST:?} after their cancel: closed under them"
                );
                // Cancelled once more first: under Wine a send pending as its socket closes
                // may never complete.
                cancel();
                closing.extend(socket.take());
                return false;
            }
            // Test-only: this cancel misses too.
            crate::failpoint::failpoint!("iocp::recancel", |_| true);
            cancel();
            true
        });
        self.any.store(!st.list.is_empty(), Relaxed);
        drop(st);
        // Closed out of the lock: a close may block (a linger time on a blocking socket).
        drop(closing);
    }
}

/// Whether an operation of `kind` moves a stream's or a datagram's bytes, whose count a close
/// under it could lose: its record holds the socket's [`DeferredClose`] (`read_at` and
/// `write_at` included: on a socket they are a receive and a send).
pub(crate) fn moves_bytes(kind: OpKind) -> bool {
    matches!(
        kind,
        OpKind::Recv
            | OpKind::Read
            | OpKind::Write
            | OpKind::RecvVectored
            | OpKind::RecvFrom
            | OpKind::Send
            | OpKind::SendVectored
            | OpKind::SendTo
            | OpKind::TransmitFile
    )
}

#[cfg(test)]
mod tests {
    use std::{
        net::{TcpListener, TcpStream},
        time::Duration,
    };

    use super::*;

    /// A connected pair: the socket to close and its peer, which sees the close as the end of
    /// the stream.
    fn pair() -> (OwnedSocket, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let peer = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (ours, _) = listener.accept().unwrap();
        (OwnedSocket::from(ours), peer)
    }

    /// Whether the peer sees the end of the stream within `wait`.
    fn closes_within(peer: &mut TcpStream, wait: std::time::Duration) -> bool {
        use std::io::Read;
        peer.set_read_timeout(Some(wait)).unwrap();
        matches!(peer.read(&mut [0u8; 1]), Ok(0))
    }

    #[test]
    fn with_no_record_the_socket_closes_at_once() {
        let (socket, mut peer) = pair();
        let deferred = DeferredClose::new(&Dropped::new(ptr::null_mut()));
        DeferredClose::when_idle(&deferred, socket);
        assert!(closes_within(&mut peer, Duration::from_secs(5)));
    }

    #[test]
    fn the_socket_closes_with_the_last_record() {
        let (socket, mut peer) = pair();
        let port = Dropped::new(ptr::null_mut());
        port.port_closing(); // no port to wake
        let handle = DeferredClose::new(&port);
        let [first, last] = [handle.clone(), handle.clone()];
        DeferredClose::when_idle(&handle, socket);
        drop(handle);
        drop(first);
        assert!(
            !closes_within(&mut peer, Duration::from_millis(200)),
            "closed under a record"
        );
        drop(last);
        assert!(closes_within(&mut peer, Duration::from_secs(5)));
    }
}
