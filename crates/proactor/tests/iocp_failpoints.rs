//! Failpoints in the Windows backend: each test holds a thread inside a window where a record
//! changes hands and does the damaging thing meanwhile.
//!
//! `cargo xtask wine --features failpoints --test iocp_failpoints`
#![cfg(all(windows, feature = "failpoints"))]

use std::{
    io::{ErrorKind, Read, Write},
    net::{TcpListener, TcpStream},
    os::windows::io::{AsRawSocket, AsSocket},
    sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, mpsc},
    thread,
    time::Duration,
};

use proactor::{Iocp, OpKind, windows::Foreign};

/// The `fail` registry is global: one test at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Holds every thread that reaches the failpoint `name` until opened; says when one arrived.
struct Gate {
    name: &'static str,
    arrived: mpsc::Receiver<()>,
    open: Arc<(Mutex<bool>, Condvar)>,
}

impl Gate {
    fn new(name: &'static str) -> Gate {
        let (tx, arrived) = mpsc::channel();
        let open = Arc::new((Mutex::new(false), Condvar::new()));
        let shared = open.clone();
        fail::cfg_callback(name, move || {
            let _ = tx.send(());
            let (lock, cv) = &*shared;
            let mut open = lock.lock().unwrap_or_else(PoisonError::into_inner);
            while !*open {
                open = cv.wait(open).unwrap_or_else(PoisonError::into_inner);
            }
        })
        .unwrap();
        Gate {
            name,
            arrived,
            open,
        }
    }

    /// Waits until a thread is held at the point.
    fn arrived(&self) {
        self.arrived
            .recv_timeout(Duration::from_secs(20))
            .expect("a thread reached the failpoint");
    }

    fn open(&self) {
        fail::remove(self.name);
        let (lock, cv) = &*self.open;
        *lock.lock().unwrap_or_else(PoisonError::into_inner) = true;
        cv.notify_all();
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        self.open();
    }
}

fn raw_pair() -> (TcpStream, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let peer = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (owned, _) = l.accept().unwrap();
    (owned, peer)
}

/// Issue 13, item 4: the foreign operation's event fires and a worker finishes the record
/// while the submitter is between `RegisterWaitForSingleObject` returning and publishing the
/// wait handle. The completion is delivered (no worker spins waiting for the handle), once.
#[test]
fn a_foreign_completion_finished_before_its_wait_is_published_is_delivered_once() {
    let _serial = serial();
    let (owned, mut peer) = raw_pair();
    let port = Arc::new(Iocp::new().unwrap());
    let borrowed = port
        .add_handle(Foreign::socket(owned.as_socket()), 4)
        .unwrap();
    let gate = Gate::new("iocp::foreign_arm");
    thread::scope(|s| {
        let submitter = s.spawn(|| port.recv(&borrowed, Vec::with_capacity(16)));
        gate.arrived(); // the wait is registered, its handle not yet published
        peer.write_all(b"early").unwrap();
        // A worker of its own (not scoped: before the fix it spun forever).
        let (tx, rx) = mpsc::channel();
        let worker_port = port.clone();
        thread::spawn(move || {
            let _ = tx.send(worker_port.get_completion(Some(Duration::from_secs(20))));
        });
        let got = rx.recv_timeout(Duration::from_secs(10));
        gate.open();
        let id = submitter.join().unwrap();
        let mut c = got
            .expect("the completion is delivered while the submitter is held (no endless spin)")
            .unwrap();
        assert_eq!((c.id(), c.kind(), c.context()), (id, OpKind::Recv, 4));
        assert_eq!(c.take_buffer().unwrap(), b"early");
    });
    assert!(
        port.get_completion(Some(Duration::from_millis(300)))
            .is_err(),
        "delivered once"
    );
    assert_eq!(port.operations_in_flight(), 0);
}

/// A foreign operation goes pending but its wait cannot be registered (the thread pool out of
/// resources): nothing would ever deliver it. It is cancelled and delivered as a cancel, once,
/// and nothing leaks.
#[test]
fn a_foreign_operation_whose_wait_cannot_be_registered_completes_cancelled() {
    let _serial = serial();
    let (owned, _peer) = raw_pair();
    let port = Iocp::new().unwrap();
    let borrowed = port
        .add_handle(Foreign::socket(owned.as_socket()), 6)
        .unwrap();
    fail::cfg("iocp::foreign_register", "return").unwrap();
    let id = port.recv(&borrowed, Vec::with_capacity(16));
    fail::remove("iocp::foreign_register");
    let mut c = port
        .get_completion(Some(Duration::from_secs(20)))
        .expect("delivered although no wait was registered");
    assert_eq!((c.id(), c.kind(), c.context()), (id, OpKind::Recv, 6));
    assert!(c.is_cancelled(), "{c:?}");
    assert!(c.take_buffer().unwrap().is_empty());
    assert!(
        port.get_completion(Some(Duration::from_millis(300)))
            .is_err(),
        "delivered once"
    );
    assert_eq!(port.operations_in_flight(), 0);
    // The socket still works for the next operation.
    drop(borrowed);
}

/// Issue 13, item 8: an accept completes; before `SO_UPDATE_ACCEPT_CONTEXT` is applied with the
/// listener's number, the listener is dropped and another socket may take the number. The
/// accept completes with an error, and nothing is applied through the old number.
#[test]
fn an_accept_whose_listener_closed_before_its_update_completes_with_an_error() {
    let _serial = serial();
    let port = Arc::new(Iocp::new().unwrap());
    let listener = port
        .add_handle(TcpListener::bind("127.0.0.1:0").unwrap(), 8)
        .unwrap();
    let number = listener.as_raw_socket();
    let addr = listener.local_addr().unwrap();
    let gate = Gate::new("iocp::accept_update");
    let id = port.accept(&listener);
    let mut client = TcpStream::connect(addr).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let worker = {
        let port = port.clone();
        thread::spawn(move || port.get_completion(Some(Duration::from_secs(20))))
    };
    gate.arrived(); // the accept completed; its update not yet applied
    drop(listener);
    // Another listening socket, likely to take the freed number.
    let other = TcpListener::bind("127.0.0.1:0").unwrap();
    eprintln!(
        "listener {number:#x}; the new socket is {:#x}",
        other.as_raw_socket()
    );
    gate.open();
    let mut c = worker.join().unwrap().unwrap();
    assert_eq!((c.id(), c.kind()), (id, OpKind::Accept));
    assert!(c.is_cancelled(), "{c:?}");
    assert!(c.take_accepted().is_none());
    // The accepted socket was closed: the client sees the connection end.
    match client.read(&mut [0u8; 1]) {
        Ok(0) => {}
        Err(e)
            if matches!(
                e.kind(),
                ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted
            ) => {}
        other => panic!("the accepted socket is closed: {other:?}"),
    }
    // The other socket is untouched and still works.
    let _b = TcpStream::connect(other.local_addr().unwrap()).unwrap();
    other.accept().unwrap();
    assert_eq!(port.operations_in_flight(), 0);
}

/// A listener with one client in its backlog that reset before it was accepted: the next
/// accept fails with the reset (Wine: at once, `ERROR_NETNAME_DELETED`; Windows: its packet),
/// and the port restarts it under the same id.
fn listener_with_a_reset_client(port: &Iocp) -> proactor::Handle<TcpListener> {
    let listener = port
        .add_handle(TcpListener::bind("127.0.0.1:0").unwrap(), 9)
        .unwrap();
    reset_client(listener.local_addr().unwrap());
    listener
}

/// Connects to `addr` and resets the connection before it is accepted.
fn reset_client(addr: std::net::SocketAddr) {
    let client = TcpStream::connect(addr).unwrap();
    socket2::SockRef::from(&client)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(client);
    thread::sleep(Duration::from_millis(100)); // the reset reaches the listener's backlog
}

/// What ends an accept while it restarts.
enum Interrupt {
    /// `cancel` of its id.
    Cancel,
    /// `cancel_all` on its listener.
    CancelAll,
    /// Dropping its listener.
    Drop,
}

/// Interrupts an accept while a thread is held at failpoint `point` of its restart after a
/// client reset: a cancel is accepted, and the accept ends cancelled, under its id, with
/// nothing left in flight. Returns the port and the listener (unless dropped).
fn interrupt_a_restart(
    point: &'static str,
    how: Interrupt,
) -> (Arc<Iocp>, Option<proactor::Handle<TcpListener>>) {
    let port = Arc::new(Iocp::new().unwrap());
    let listener = listener_with_a_reset_client(&port);
    let gate = Gate::new(point);
    let id = port.accept(&listener);
    let worker = {
        let port = port.clone();
        thread::spawn(move || port.get_completion(Some(Duration::from_secs(20))))
    };
    gate.arrived();
    let listener = match how {
        Interrupt::Cancel => {
            port.cancel(id)
                .expect("the accept is still in flight: the cancel is kept for its restart");
            Some(listener)
        }
        Interrupt::CancelAll => {
            port.cancel_all(&listener).unwrap();
            Some(listener)
        }
        Interrupt::Drop => {
            drop(listener);
            None
        }
    };
    gate.open();
    let c = worker.join().unwrap().expect("the accept completes");
    assert_eq!((c.id(), c.kind()), (id, OpKind::Accept));
    assert!(c.is_cancelled(), "{c:?}");
    assert_eq!(port.operations_in_flight(), 0);
    (port, listener)
}

/// Found by review: a cancel asked while an accept's client-reset failure waited to restart it
/// found nothing pending (`NotFound`), and the accept then restarted and stayed in flight with
/// no completion. The cancel is kept for the restart, which ends the accept cancelled.
#[test]
fn a_cancel_while_an_accept_restarts_after_a_client_reset_ends_it_cancelled() {
    let _serial = serial();
    // Held where the reset failure was dequeued and the restart is about to be decided.
    let (port, listener) = interrupt_a_restart("iocp::accept_restart", Interrupt::Cancel);
    let listener = listener.unwrap();
    // The listener still works.
    port.accept(&listener);
    let _client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let mut c = port.get_completion(Some(Duration::from_secs(20))).unwrap();
    assert!(c.take_accepted().is_some(), "{c:?}");
}

/// The same cancel landing after the restart was decided, before its `AcceptEx` is issued:
/// the new `AcceptEx` is cancelled as soon as it is.
#[test]
fn a_cancel_before_a_restarted_accept_is_issued_cancels_it() {
    let _serial = serial();
    interrupt_a_restart("iocp::accept_reissue", Interrupt::Cancel);
}

/// Found by review: `cancel_all` on the listener in the same windows found nothing in the
/// kernel either, and the restarted accept stayed in flight with no completion.
#[test]
fn cancel_all_while_an_accept_restarts_ends_it_cancelled() {
    let _serial = serial();
    for point in ["iocp::accept_restart", "iocp::accept_reissue"] {
        interrupt_a_restart(point, Interrupt::CancelAll);
    }
}

/// Found by review: a listener dropped while its accept restarts ended the accept with the
/// client's reset error; every operation on a dropped handle ends cancelled.
#[test]
fn a_listener_dropped_while_its_accept_restarts_ends_it_cancelled() {
    let _serial = serial();
    interrupt_a_restart("iocp::accept_restart", Interrupt::Drop);
}

/// A deadline expiring while the accept restarts is kept too, and the accept ends with the
/// deadline's error, not a plain cancel (found by review: the deadline was dropped).
#[test]
fn a_deadline_expiring_while_an_accept_restarts_ends_it_with_the_deadline() {
    let _serial = serial();
    let port = Arc::new(Iocp::new().unwrap());
    let listener = listener_with_a_reset_client(&port);
    let gate = Gate::new("iocp::accept_restart");
    let id = port
        .with_timeout(Duration::from_millis(50))
        .accept(&listener);
    let restarting = {
        let port = port.clone();
        thread::spawn(move || port.get_completion(Some(Duration::from_secs(20))))
    };
    gate.arrived();
    // Another thread in the port serves the deadline meanwhile (its cancel finds the accept
    // between two lives), then waits on.
    let timers = {
        let port = port.clone();
        thread::spawn(move || port.get_completion(Some(Duration::from_millis(600))))
    };
    thread::sleep(Duration::from_millis(300));
    gate.open();
    // One of the two threads gets the accept's completion, the other nothing.
    let (a, b) = (restarting.join().unwrap(), timers.join().unwrap());
    let (c, other) = match (a, b) {
        (Ok(c), other) | (other, Ok(c)) => (c, other),
        (a, b) => panic!("the accept never completed: {a:?}, {b:?}"),
    };
    assert_eq!((c.id(), c.kind()), (id, OpKind::Accept));
    let e = c.result().unwrap_err();
    assert!(proactor::is_deadline(&e), "{e:?}");
    assert!(!proactor::is_cancelled(&e));
    assert!(
        matches!(&other, Err(e) if e.kind() == ErrorKind::TimedOut),
        "nothing else completes: {other:?}"
    );
    assert_eq!(port.operations_in_flight(), 0);
}

/// The same without a failpoint: under Wine `AcceptEx` fails at once on the reset client and
/// its failure waits in the ready queue, where `cancel_all` cannot find it (on Windows the
/// packet waits in the port). `Iocp` and `LocalPort` alike.
#[test]
fn cancel_all_right_after_an_accept_on_a_reset_backlog_ends_it_cancelled() {
    let _serial = serial();
    let port = Iocp::new().unwrap();
    let listener = listener_with_a_reset_client(&port);
    let id = port.accept(&listener);
    port.cancel_all(&listener).unwrap();
    let c = port
        .get_completion(Some(Duration::from_secs(10)))
        .expect("the accept completes");
    assert_eq!(c.id(), id);
    assert!(c.is_cancelled(), "{c:?}");

    let local = proactor::LocalPort::with_pool(4, 4096).unwrap();
    let listener = local
        .add_handle(TcpListener::bind("127.0.0.1:0").unwrap(), 9)
        .unwrap();
    reset_client(listener.local_addr().unwrap());
    let id = local.accept(&listener);
    local.cancel_all(&listener).unwrap();
    let c = local
        .get_completion(Some(Duration::from_secs(10)))
        .expect("the accept completes");
    assert_eq!(c.id(), id);
    let e = c.result().unwrap_err();
    assert!(proactor::is_cancelled(&e), "{e:?}");
}

/// Found by review: a `cancel_all` from another thread between an accept's request and its
/// `AcceptEx` found nothing to cancel, and the accept, counted as cancelled, ended cancelled
/// only at its next client reset, any time later. It is cancelled as soon as it is issued.
#[test]
fn cancel_all_before_an_accept_is_issued_cancels_it_at_once() {
    let _serial = serial();
    let port = Arc::new(Iocp::new().unwrap());
    let listener = Arc::new(
        port.add_handle(TcpListener::bind("127.0.0.1:0").unwrap(), 9)
            .unwrap(),
    );
    let gate = Gate::new("iocp::accept_issue");
    let asking = {
        let (port, listener) = (port.clone(), listener.clone());
        thread::spawn(move || port.accept(&listener))
    };
    gate.arrived();
    port.cancel_all(&listener).unwrap();
    gate.open();
    let id = asking.join().unwrap();
    let c = port
        .get_completion(Some(Duration::from_secs(10)))
        .expect("the accept completes now, not at a later reset");
    assert_eq!((c.id(), c.kind()), (id, OpKind::Accept));
    assert!(c.is_cancelled(), "{c:?}");
}

/// A failpoint set to `return` while this lives.
struct Failpoint(&'static str);

impl Failpoint {
    fn on(name: &'static str) -> Failpoint {
        fail::cfg(name, "return").unwrap();
        Failpoint(name)
    }
}

impl Drop for Failpoint {
    fn drop(&mut self) {
        fail::remove(self.0);
    }
}

/// A socket of `port` with an 8 MiB send blocked on its peer, which does not read (4 KiB
/// buffers on both sides), and the send's id.
fn blocked_send(
    port: &Iocp,
    context: usize,
) -> (proactor::Handle<TcpStream>, TcpStream, proactor::OpId) {
    let (ours, peer) = raw_pair();
    socket2::SockRef::from(&ours)
        .set_send_buffer_size(4096)
        .unwrap();
    socket2::SockRef::from(&peer)
        .set_recv_buffer_size(4096)
        .unwrap();
    let ours = port.add_handle(ours, context).unwrap();
    let id = port.send(&ours, vec![7u8; 8 << 20]);
    thread::sleep(Duration::from_millis(100)); // the send fills the buffers and waits
    (ours, peer, id)
}

/// A socket dropped with a send blocked on a peer that does not read, its cancel missed (as
/// one can miss an operation Wine is resuming): the port's sweep cancels the send again, so it
/// completes cancelled, reporting what went, and the socket closes, without the peer reading.
#[test]
fn a_send_whose_cancel_at_drop_missed_is_cancelled_again_by_the_port() {
    let _serial = serial();
    let port = Iocp::new().unwrap();
    let (ours, mut peer, id) = blocked_send(&port, 8);
    let (c, waited) = thread::scope(|s| {
        // A thread already waits in the port with no time limit: the drop's wake-up must
        // bring it back to sweep.
        let waiter = s.spawn(|| {
            let c = port.get_completion(None);
            (c, std::time::Instant::now())
        });
        thread::sleep(Duration::from_millis(100));
        let _missed = Failpoint::on("iocp::drop_cancel");
        let dropped = std::time::Instant::now();
        drop(ours);
        let (c, at) = waiter.join().expect("the waiting thread");
        (c, at - dropped)
    });
    let c = c.expect("the send ends although its first cancel missed");
    assert_eq!(c.id(), id);
    assert!(c.is_cancelled(), "{c:?}");
    assert!(
        waited >= Duration::from_millis(90) && waited < Duration::from_secs(2),
        "ended by the sweep's cancel, neither by the drop's nor by the bound: {waited:?}"
    );
    // Closed with its last send: the peer reads what went, then the end of the stream.
    peer.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut got = 0;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        match peer.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) => panic!("the peer's read after {got} bytes: {e}"),
        }
    }
    assert_eq!(
        got,
        c.bytes_transferred(),
        "the peer got what the send reports"
    );
    assert_eq!(port.operations_in_flight(), 0);
}

/// The same, with the drop's cancel and the sweeps' missing: once the socket waited the bound
/// (2 s) the port cancels and closes it, so a peer that never reads cannot keep it open for
/// ever.
#[test]
fn a_dropped_socket_whose_send_never_ends_is_closed_after_the_bound() {
    let _serial = serial();
    let port = Iocp::new().unwrap();
    let (ours, mut peer, id) = blocked_send(&port, 9);
    let missed = Failpoint::on("iocp::drop_cancel");
    let missed_again = Failpoint::on("iocp::recancel");
    drop(ours);
    drop(missed);
    let started = std::time::Instant::now();
    let c = port
        .get_completion(Some(Duration::from_secs(20)))
        .expect("the send ends once its socket is closed");
    drop(missed_again);
    assert_eq!(c.id(), id);
    assert!(c.result().is_err(), "{c:?}");
    assert!(
        started.elapsed() >= Duration::from_millis(1900),
        "closed before the bound: {:?}",
        started.elapsed()
    );
    // The peer sees the socket closed (the end of the stream or a reset), after what went.
    peer.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        match peer.read(&mut buf) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::ConnectionReset => break,
            Err(e) => panic!("the peer's read: {e}"),
        }
    }
    assert_eq!(port.operations_in_flight(), 0);
}
