//! The io_uring backend's windows where an operation record changes hands (a partial send's rest
//! re-submitted, an accept restarted, a stream lane handed to a waiting operation), each forced
//! open with a failpoint while another thread does the damaging thing: drops the handle and lets
//! a new connection take its descriptor number, cancels the operation by id, cancels everything
//! on the handle, or closes it while queued SQEs wait behind one the kernel refuses.
//!
//! Run with `cargo test -p proactor --features failpoints --test failpoints_uring`. The tests
//! need the io_uring backend: they return early (saying so) under `PROACTOR_BACKEND=epoll`,
//! and fail on any other backend.
#![cfg(all(target_os = "linux", feature = "failpoints"))]

mod common;

use std::{
    io::{ErrorKind, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd,
    sync::{
        Arc, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicBool, AtomicUsize, Ordering},
        mpsc::{self, Receiver},
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use common::{
    each_ip_v4, pattern,
    pause::{Failpoint, Pause},
};
use proactor::{Completion, Iocp, OpId, OpKind};

/// The `fail` registry is global: one test of this file at a time.
fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A port on io_uring, or `None` (with a note) when the environment selects epoll
/// (`PROACTOR_BACKEND=epoll`). Any other backend fails the test: a kernel without io_uring
/// must not turn these tests into silent passes.
fn uring_port() -> Option<Arc<Iocp>> {
    let port = Iocp::new().expect("port");
    if port.backend() != "io_uring" {
        assert_eq!(
            std::env::var("PROACTOR_BACKEND").as_deref(),
            Ok("epoll"),
            "the io_uring failpoint tests got the {} backend without PROACTOR_BACKEND=epoll",
            port.backend()
        );
        eprintln!(
            "skipped: the io_uring backend's failpoints, on {}",
            port.backend()
        );
        return None;
    }
    Some(Arc::new(port))
}

/// A thread dequeuing from `port` and forwarding every completion, until stopped.
struct Driver {
    port: Arc<Iocp>,
    stop: Arc<AtomicBool>,
    done: Receiver<Completion>,
    thread: Option<JoinHandle<()>>,
}

impl Driver {
    fn start(port: &Arc<Iocp>) -> Driver {
        let (tx, done) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (port, stop) = (port.clone(), stop.clone());
            thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    if let Ok(c) = port.get_completion(Some(Duration::from_millis(50))) {
                        let _ = tx.send(c);
                    }
                }
            })
        };
        Driver {
            port: port.clone(),
            stop,
            done,
            thread: Some(thread),
        }
    }

    /// The next completion, within `wait`.
    fn next(&self, wait: Duration) -> Option<Completion> {
        self.done.recv_timeout(wait).ok()
    }

    /// Stops the thread and returns every completion still to come within `quiet`.
    fn finish(mut self, quiet: Duration) -> Vec<Completion> {
        let mut rest: Vec<Completion> = Vec::new();
        let end = Instant::now() + quiet;
        while let Some(c) = self.next(end.saturating_duration_since(Instant::now())) {
            rest.push(c);
        }
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.join().expect("driver thread");
        }
        rest.extend(self.done.try_iter());
        while let Ok(c) = self.port.get_completion(Some(Duration::ZERO)) {
            rest.push(c);
        }
        rest
    }
}

/// Waits for the completion of `id`, failing the test if none arrives in time.
fn completion_of(driver: &Driver, id: OpId) -> Completion {
    let end = Instant::now() + Duration::from_secs(20);
    loop {
        let left = end.saturating_duration_since(Instant::now());
        let c = driver
            .next(left)
            .unwrap_or_else(|| panic!("{id:?} did not complete"));
        if c.id() == id {
            return c;
        }
    }
}

/// Reads from `peer` until EOF or `quiet` passes with nothing; returns what arrived.
fn read_all(peer: &mut TcpStream, quiet: Duration) -> Vec<u8> {
    peer.set_read_timeout(Some(quiet)).unwrap();
    let mut got = Vec::new();
    let mut chunk = vec![0; 1 << 16];
    loop {
        match peer.read(&mut chunk) {
            Ok(0) => return got,
            Ok(n) => got.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return got;
            }
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return got,
            Err(e) => panic!("reading the peer: {e}"),
        }
    }
}

/// A connected pair whose `ours` end has a 4 KiB send buffer, so a large send completes in
/// many parts.
fn small_buffered_pair() -> (TcpStream, TcpStream) {
    let l = TcpListener::bind(SocketAddr::new(each_ip_v4(), 0)).unwrap();
    let theirs = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (ours, _) = l.accept().unwrap();
    socket2::SockRef::from(&ours)
        .set_send_buffer_size(4096)
        .unwrap();
    socket2::SockRef::from(&theirs)
        .set_recv_buffer_size(4096)
        .unwrap();
    (ours, theirs)
}

/// A new connection, one end of which takes descriptor number `fd` (the lowest free one):
/// returns (the end with `fd`, its peer).
fn connection_at(fd: i32, listener: &TcpListener) -> (TcpStream, TcpStream) {
    let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (server, _) = listener.accept().unwrap();
    if client.as_raw_fd() == fd {
        (client, server)
    } else if server.as_raw_fd() == fd {
        (server, client)
    } else {
        panic!(
            "the new connection did not reuse descriptor {fd} ({} and {})",
            client.as_raw_fd(),
            server.as_raw_fd()
        );
    }
}

fn assert_no_live_operations(port: &Iocp) {
    assert_eq!(port.operations_in_flight(), 0);
    assert_eq!(proactor::live_operations(), 0);
}

/// (a) The handle is dropped between reaping a partial send's CQE and re-submitting the rest,
/// and a new connection takes its descriptor number: the rest must not go to the new
/// connection, and the send completes once, cancelled, with what it sent and its buffer.
#[test]
fn handle_dropped_before_the_rest_of_a_send_is_resubmitted() {
    let _serial = serial();
    let Some(port) = uring_port() else { return };
    let (ours, mut theirs) = small_buffered_pair();
    let ours = port.add_handle(ours, 1).unwrap();
    let fd = ours.as_raw_fd();
    let reuse = TcpListener::bind(SocketAddr::new(each_ip_v4(), 0)).unwrap();
    let mut pause = Pause::at("uring::resubmit");
    let driver = Driver::start(&port);
    let data = pattern(8 << 20);
    let id = port.send(&ours, data.clone());
    pause.wait_hit();

    drop(ours);
    let (_reused, mut new_peer) = connection_at(fd, &reuse);
    pause.release();

    let mut c = completion_of(&driver, id);
    assert!(c.is_cancelled(), "{c:?}: {:?}", c.result());
    let sent = c.bytes_transferred();
    assert!(sent > 0 && sent < data.len(), "sent {sent}");
    assert_eq!(c.take_buffer().as_deref(), Some(&data[..]));
    let got = read_all(&mut theirs, Duration::from_secs(2));
    assert_eq!(got.len(), sent, "the old peer got what the send reports");
    assert!(
        got == data[..sent],
        "the old peer got a prefix of its stream"
    );
    let stolen = read_all(&mut new_peer, Duration::from_millis(300));
    assert!(
        stolen.is_empty(),
        "the new connection received {} bytes of the old one's stream",
        stolen.len()
    );
    let rest = driver.finish(Duration::from_millis(200));
    assert!(rest.iter().all(|c| c.id() != id), "one completion only");
    assert_no_live_operations(&port);
}

/// (b) `cancel(id)` lands between reaping a partial send's CQE and re-submitting the rest: the
/// operation is still in flight, so the cancel succeeds, and the send completes once, cancelled.
#[test]
fn cancel_between_a_partial_send_and_its_rest() {
    let _serial = serial();
    let Some(port) = uring_port() else { return };
    let (ours, mut theirs) = small_buffered_pair();
    let ours = port.add_handle(ours, 1).unwrap();
    let mut pause = Pause::at("uring::resubmit");
    let driver = Driver::start(&port);
    let data = pattern(8 << 20);
    let id = port.send(&ours, data.clone());
    pause.wait_hit();

    port.cancel(id).expect("the send is still in flight");
    pause.release();

    let mut c = completion_of(&driver, id);
    assert!(c.is_cancelled(), "{c:?}: {:?}", c.result());
    let sent = c.bytes_transferred();
    assert_eq!(c.take_buffer().as_deref(), Some(&data[..]));
    drop(ours);
    let got = read_all(&mut theirs, Duration::from_secs(2));
    assert_eq!(got.len(), sent);
    assert!(got == data[..sent]);
    let rest = driver.finish(Duration::from_millis(200));
    assert!(rest.iter().all(|c| c.id() != id), "one completion only");
    assert_no_live_operations(&port);
}

/// Configures the next accept's result to be a client that went away (`ECONNABORTED`).
fn next_accept_resets() {
    fail::cfg("uring::accept_reset", "1*return").unwrap();
}

/// (c) The listener is dropped while an accept restarts after a client reset, and a new
/// listener takes its descriptor number: the accept completes once, cancelled, and the new
/// listener's client is left for it.
#[test]
fn listener_dropped_while_an_accept_restarts() {
    let _serial = serial();
    let Some(port) = uring_port() else { return };
    let listener = TcpListener::bind(SocketAddr::new(each_ip_v4(), 0)).unwrap();
    let addr = listener.local_addr().unwrap();
    let listener = port.add_handle(listener, 1).unwrap();
    let fd = listener.as_raw_fd();
    next_accept_resets();
    let mut pause = Pause::at("uring::accept_restart");
    let driver = Driver::start(&port);
    let id = port.accept(&listener);
    let _gone = TcpStream::connect(addr).unwrap();
    pause.wait_hit();

    drop(listener);
    let reused = TcpListener::bind(SocketAddr::new(each_ip_v4(), 0)).unwrap();
    assert_eq!(reused.as_raw_fd(), fd, "the new listener reuses the number");
    let _client = TcpStream::connect(reused.local_addr().unwrap()).unwrap();
    pause.release();

    let c = completion_of(&driver, id);
    assert_eq!(c.kind(), OpKind::Accept);
    assert!(c.is_cancelled(), "{c:?}: {:?}", c.result());
    reused.set_nonblocking(true).unwrap();
    thread::sleep(Duration::from_millis(100));
    reused
        .accept()
        .expect("the new listener's client is still queued for it");
    fail::remove("uring::accept_reset");
    let rest = driver.finish(Duration::from_millis(200));
    assert!(rest.iter().all(|c| c.id() != id), "one completion only");
    assert_no_live_operations(&port);
}

/// (d) `cancel(id)` lands while an accept restarts after a client reset: it succeeds and the
/// accept completes once, cancelled (it used to be lost, leaving the accept pending for good).
#[test]
fn cancel_while_an_accept_restarts() {
    let _serial = serial();
    let Some(port) = uring_port() else { return };
    let listener = TcpListener::bind(SocketAddr::new(each_ip_v4(), 0)).unwrap();
    let addr = listener.local_addr().unwrap();
    let listener = port.add_handle(listener, 1).unwrap();
    next_accept_resets();
    let mut pause = Pause::at("uring::accept_restart");
    let driver = Driver::start(&port);
    let id = port.accept(&listener);
    let _gone = TcpStream::connect(addr).unwrap();
    pause.wait_hit();

    port.cancel(id).expect("the accept is still in flight");
    pause.release();

    let c = completion_of(&driver, id);
    assert!(c.is_cancelled(), "{c:?}: {:?}", c.result());
    fail::remove("uring::accept_reset");
    let rest = driver.finish(Duration::from_millis(200));
    assert!(rest.iter().all(|c| c.id() != id), "one completion only");
    drop(listener);
    assert_no_live_operations(&port);
}

/// (e) `cancel_all` runs while another thread is inside `recv`, its record already in the
/// table (counted in flight) but its SQE not yet handed to the kernel: the cancel reaches it.
#[test]
fn cancel_all_while_an_operation_is_being_submitted() {
    let _serial = serial();
    let Some(port) = uring_port() else { return };
    let (ours, _theirs) = small_buffered_pair();
    let ours = port.add_handle(ours, 1).unwrap();
    let driver = Driver::start(&port);
    let mut pause = Pause::at("uring::start");
    let id = thread::scope(|s| {
        let submit = s.spawn(|| port.recv(&ours, Vec::with_capacity(64)));
        pause.wait_hit();
        assert_eq!(port.operations_in_flight(), 1);
        port.cancel_all(&ours).unwrap();
        pause.release();
        submit.join().unwrap()
    });
    let c = completion_of(&driver, id);
    assert!(c.is_cancelled(), "{c:?}: {:?}", c.result());
    let rest = driver.finish(Duration::from_millis(200));
    assert!(rest.iter().all(|c| c.id() != id), "one completion only");
    drop(ours);
    assert_no_live_operations(&port);
}

/// (f) A handle is closed while its receive's SQE waits in the submission queue behind an SQE
/// the kernel refuses: the receive must be consumed and cancelled before the descriptor is
/// closed, never consumed afterwards on a new connection that took the number.
#[test]
fn close_with_a_queued_sqe_behind_a_refused_one() {
    let _serial = serial();
    let Some(port) = uring_port() else { return };
    let (ours, _theirs) = small_buffered_pair();
    let ours = port.add_handle(ours, 1).unwrap();
    let fd = ours.as_raw_fd();
    let reuse = TcpListener::bind(SocketAddr::new(each_ip_v4(), 0)).unwrap();
    // No thread waits in the port, so both SQEs stay queued until the close submits them.
    fail::cfg("uring::bad_sqe", "1*return").unwrap();
    let refused = port.post(1, 7).unwrap();
    fail::remove("uring::bad_sqe");
    let recv = port.recv(&ours, Vec::with_capacity(64));
    drop(ours);
    let (_reused, mut new_peer) = connection_at(fd, &reuse);
    new_peer.write_all(b"for the new connection").unwrap();

    let driver = Driver::start(&port);
    let c = completion_of(&driver, recv);
    assert!(c.is_cancelled(), "{c:?}: {:?}", c.result());
    let rest = driver.finish(Duration::from_millis(200));
    assert!(rest.iter().all(|c| c.id() != recv), "one completion only");
    let _ = refused; // completes with the kernel's refusal, before or after the receive
    assert_no_live_operations(&port);
}

/// (g) `cancel_all` lands between reaping a partial send's CQE and re-submitting the rest: the
/// send completes once, cancelled, instead of going on.
#[test]
fn cancel_all_between_a_partial_send_and_its_rest() {
    let _serial = serial();
    let Some(port) = uring_port() else { return };
    let (ours, mut theirs) = small_buffered_pair();
    let ours = port.add_handle(ours, 1).unwrap();
    let mut pause = Pause::at("uring::resubmit");
    let driver = Driver::start(&port);
    let data = pattern(8 << 20);
    let id = port.send(&ours, data.clone());
    pause.wait_hit();

    port.cancel_all(&ours).unwrap();
    pause.release();

    let c = completion_of(&driver, id);
    assert!(c.is_cancelled(), "{c:?}: {:?}", c.result());
    let sent = c.bytes_transferred();
    drop(ours);
    let got = read_all(&mut theirs, Duration::from_secs(2));
    assert_eq!(got.len(), sent);
    assert!(got == data[..sent]);
    let rest = driver.finish(Duration::from_millis(200));
    assert!(rest.iter().all(|c| c.id() != id), "one completion only");
    assert_no_live_operations(&port);
}

/// (h) A partial send's CQE is reaped while its handle is closing (held between draining the
/// submission queue and the synchronous cancel): the rest is not queued behind the close's
/// back; the send completes once, cancelled, and the peer gets exactly what it reports.
#[test]
fn partial_send_reaped_while_its_handle_closes() {
    let _serial = serial();
    let Some(port) = uring_port() else { return };
    let (ours, mut theirs) = small_buffered_pair();
    let ours = port.add_handle(ours, 1).unwrap();
    let driver = Driver::start(&port);
    let data = pattern(8 << 20);
    let id = port.send(&ours, data.clone());
    thread::sleep(Duration::from_millis(100)); // the send waits for room in the socket

    let reaped = Arc::new(AtomicUsize::new(0));
    let counter = reaped.clone();
    fail::cfg_callback("uring::resubmit", move || {
        counter.fetch_add(1, Ordering::SeqCst);
    })
    .unwrap();
    let mut pause = Pause::at("uring::cancel_fd");
    let closing = thread::spawn(move || drop(ours));
    pause.wait_hit();
    // Room in the socket: the kernel sends more and posts the CQE of a partial send, whose
    // rest must wait for the close (the peer then reads nothing more until it is released).
    let first = read_all(&mut theirs, Duration::from_millis(300));
    assert!(!first.is_empty());
    assert!(
        reaped.load(Ordering::SeqCst) > 0,
        "a partial send was reaped during the close"
    );
    pause.release();
    fail::remove("uring::resubmit");
    closing.join().unwrap();

    let c = completion_of(&driver, id);
    assert!(c.is_cancelled(), "{c:?}: {:?}", c.result());
    let sent = c.bytes_transferred();
    let mut got = first;
    got.extend(read_all(&mut theirs, Duration::from_secs(2)));
    assert_eq!(got.len(), sent, "the peer got what the send reports");
    assert!(got == data[..sent]);
    let rest = driver.finish(Duration::from_millis(200));
    assert!(rest.iter().all(|c| c.id() != id), "one completion only");
    assert_no_live_operations(&port);
}

/// Three sends queued on one stream before any thread dequeues (the first holds the stream's
/// send lane, the others wait in it): their ids, the bytes of each, and the driver, started
/// afterwards, which submits the first and, reaping its CQE, hands the lane to the second.
fn three_queued_sends(
    port: &Arc<Iocp>,
    ours: &proactor::Handle<TcpStream>,
    sizes: [usize; 3],
) -> (Vec<OpId>, Vec<Vec<u8>>) {
    let bufs: Vec<Vec<u8>> = sizes
        .iter()
        .enumerate()
        .map(|(k, &n)| pattern(n + k).split_off(k))
        .collect();
    let ids = bufs.iter().map(|b| port.send(ours, b.clone())).collect();
    (ids, bufs)
}

/// Waits for the completions of `ids`, in that order, failing the test if one does not arrive
/// in time, arrives twice, or another arrives meanwhile.
fn completions_of(driver: &Driver, ids: &[OpId]) -> Vec<Completion> {
    let end = Instant::now() + Duration::from_secs(20);
    let mut got: Vec<Option<Completion>> = ids.iter().map(|_| None).collect();
    while got.iter().any(Option::is_none) {
        let left = end.saturating_duration_since(Instant::now());
        let c = driver
            .next(left)
            .unwrap_or_else(|| panic!("not all of {ids:?} completed: {got:?}"));
        let at = ids.iter().position(|&id| id == c.id());
        let at = at.unwrap_or_else(|| panic!("an unexpected completion: {c:?}"));
        assert!(got[at].is_none(), "{:?} completed twice", c.id());
        got[at] = Some(c);
    }
    got.into_iter().flatten().collect()
}

/// (i) `cancel(id)` of a waiting send lands while the send ahead of it, just ended, is handing
/// the lane to it (taken out of the lane, not yet started): the cancel succeeds, the send never
/// runs and completes once, cancelled, with 0 bytes and its buffer; the third send goes next.
#[test]
fn cancel_while_a_waiting_send_is_handed_the_lane() {
    let _serial = serial();
    let Some(port) = uring_port() else { return };
    let l = TcpListener::bind(SocketAddr::new(each_ip_v4(), 0)).unwrap();
    let mut theirs = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let ours = port.add_handle(l.accept().unwrap().0, 1).unwrap();
    let (ids, bufs) = three_queued_sends(&port, &ours, [10, 64 << 10, 100]);
    let mut pause = Pause::at("uring::hand_over");
    let driver = Driver::start(&port);
    pause.wait_hit();

    port.cancel(ids[1]).expect("the waiting send is in flight");
    pause.release();

    let mut done = completions_of(&driver, &ids);
    let c = &mut done[1];
    assert!(c.is_cancelled(), "{c:?}: {:?}", c.result());
    assert_eq!(c.bytes_transferred(), 0);
    assert_eq!(c.take_buffer().as_deref(), Some(&bufs[1][..]));
    for k in [0, 2] {
        let c = &done[k];
        assert_eq!(c.result().ok(), Some(bufs[k].len()), "send {k}: {c:?}");
    }
    let rest = driver.finish(Duration::from_millis(200));
    assert!(rest.is_empty(), "one completion each: {rest:?}");
    drop(ours);
    let got = read_all(&mut theirs, Duration::from_secs(2));
    assert!(
        got == [&bufs[0][..], &bufs[2][..]].concat(),
        "the peer gets the first and third sends only ({} bytes)",
        got.len()
    );
    assert_no_live_operations(&port);
}

/// (j) The handle is dropped while a waiting send is being handed the lane, and a new
/// connection takes its descriptor number: the close waits for the hand-over (which holds the
/// open guard), then cancels the send it started and withdraws the one still waiting. Every
/// send completes once; the waiting one cancelled with 0 bytes; nothing reaches the new
/// connection; the old peer gets exactly what the sends report, in order.
#[test]
fn handle_dropped_while_a_waiting_send_is_handed_the_lane() {
    let _serial = serial();
    let Some(port) = uring_port() else { return };
    let (ours, mut theirs) = small_buffered_pair();
    let ours = port.add_handle(ours, 1).unwrap();
    let fd = ours.as_raw_fd();
    let reuse = TcpListener::bind(SocketAddr::new(each_ip_v4(), 0)).unwrap();
    let (ids, bufs) = three_queued_sends(&port, &ours, [10, 8 << 20, 100]);
    let mut pause = Pause::at("uring::hand_over");
    let driver = Driver::start(&port);
    pause.wait_hit();

    let closing = thread::spawn(move || drop(ours));
    thread::sleep(Duration::from_millis(100));
    assert!(
        !closing.is_finished(),
        "the close waits for the hand-over's open guard"
    );
    pause.release();
    closing.join().unwrap();
    let (_reused, mut new_peer) = connection_at(fd, &reuse);

    let mut done = completions_of(&driver, &ids);
    assert_eq!(done[0].result().ok(), Some(bufs[0].len()), "{:?}", done[0]);
    assert!(done[1].is_cancelled(), "{:?}", done[1]);
    assert!(done[2].is_cancelled(), "{:?}", done[2]);
    assert_eq!(done[2].bytes_transferred(), 0, "the waiting send never ran");
    for (k, c) in done.iter_mut().enumerate() {
        assert_eq!(c.take_buffer().as_deref(), Some(&bufs[k][..]), "send {k}");
    }
    let sent = done[1].bytes_transferred();
    let got = read_all(&mut theirs, Duration::from_secs(2));
    let want = [&bufs[0][..], &bufs[1][..sent]].concat();
    assert!(
        got == want,
        "the old peer gets the first send and what the second reports ({} bytes, {} expected)",
        got.len(),
        want.len()
    );
    let stolen = read_all(&mut new_peer, Duration::from_millis(300));
    assert!(
        stolen.is_empty(),
        "the new connection received {} bytes",
        stolen.len()
    );
    let rest = driver.finish(Duration::from_millis(200));
    assert!(rest.is_empty(), "one completion each: {rest:?}");
    assert_no_live_operations(&port);
}

/// (k) A thread that does not dequeue closes a handle while another handle's receive waits in
/// the submission queue (its submitter held between queuing and submitting) and a worker waits
/// in the port. The close must have the worker submit the queue (the doorbell) and wait until
/// the kernel consumed it, not submit it itself: the closing thread then exits, and a request
/// it submitted would complete cancelled. So the other receive completes with its data, the
/// closed handle's receive completes cancelled, and nothing reaches the connection that takes
/// the closed descriptor's number.
#[test]
fn close_from_a_thread_that_exits_while_another_receive_is_queued() {
    let _serial = serial();
    let Some(port) = uring_port() else { return };
    let driver = Driver::start(&port);
    let (victim, mut victim_peer) = small_buffered_pair();
    let victim = Arc::new(port.add_handle(victim, 1).unwrap());
    let (closed, _closed_peer) = small_buffered_pair();
    let closed = port.add_handle(closed, 2).unwrap();
    let fd = closed.as_raw_fd();
    let reuse = TcpListener::bind(SocketAddr::new(each_ip_v4(), 0)).unwrap();
    let pending = port.recv(&closed, Vec::with_capacity(64));
    thread::sleep(Duration::from_millis(20)); // submitted; the worker waits again

    let mut held = Pause::at("uring::start");
    let submitter = {
        let (port, victim) = (port.clone(), victim.clone());
        thread::spawn(move || port.recv(&victim, Vec::with_capacity(64)))
    };
    held.wait_hit(); // the victim's receive is queued, not submitted
    thread::spawn(move || drop(closed)).join().unwrap();
    held.release();
    let recv = submitter.join().unwrap();
    let (mut reused, mut new_peer) = connection_at(fd, &reuse);
    new_peer.write_all(b"not yours").unwrap();

    let c = completion_of(&driver, pending);
    assert!(c.is_cancelled(), "{c:?}: {:?}", c.result());
    victim_peer.write_all(b"hello").unwrap();
    let mut c = completion_of(&driver, recv);
    assert!(
        !c.is_cancelled(),
        "the queued receive completed cancelled: the closing thread submitted it and exited"
    );
    assert_eq!(c.result().ok(), Some(5), "{c:?}");
    assert_eq!(c.take_buffer().as_deref(), Some(&b"hello"[..]));
    reused
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut got = [0u8; 9];
    reused.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"not yours", "the new connection keeps its bytes");
    let rest = driver.finish(Duration::from_millis(200));
    assert!(rest.is_empty(), "one completion each: {rest:?}");
    drop(victim);
    assert_no_live_operations(&port);
}

/// (l) Two handles of one socket (`try_clone`: two descriptors, one open file). One closes
/// while its send is stuck behind a peer that does not read; held inside the close's cancel
/// (the submission queue drained), another thread starts a receive on the other handle and the
/// kernel takes it. A cancel by descriptor matches the open file and would end that receive
/// too: the close cancels its own send only, whose bytes the peer gets exactly, and the
/// receive started during the close gets the peer's data.
#[test]
fn receive_on_a_clone_started_during_a_close_is_not_cancelled() {
    let _serial = serial();
    let Some(port) = uring_port() else { return };
    let (ours, mut theirs) = small_buffered_pair();
    let clone = ours.try_clone().unwrap();
    let ours = port.add_handle(ours, 1).unwrap();
    let other = Arc::new(port.add_handle(clone, 2).unwrap());
    let driver = Driver::start(&port);
    let data = pattern(8 << 20);
    let stuck = port.send(&ours, data.clone());
    thread::sleep(Duration::from_millis(100)); // the send waits for room in the socket

    let mut pause = Pause::at("uring::cancel_fd");
    let closing = thread::spawn(move || drop(ours));
    pause.wait_hit();
    let read = {
        let (port, other) = (port.clone(), other.clone());
        thread::spawn(move || port.recv(&other, Vec::with_capacity(64)))
            .join()
            .unwrap()
    };
    thread::sleep(Duration::from_millis(50)); // the kernel consumed the receive's SQE
    pause.release();
    closing.join().unwrap();

    let c = driver
        .next(Duration::from_secs(20))
        .expect("the closed handle's send completes");
    assert_eq!(
        c.id(),
        stuck,
        "the close ended the other handle's receive: {c:?}: {:?}",
        c.result()
    );
    assert!(c.is_cancelled(), "{c:?}: {:?}", c.result());
    let sent = c.bytes_transferred();
    let got = read_all(&mut theirs, Duration::from_millis(500));
    assert_eq!(got.len(), sent, "the peer got what the send reports");
    assert!(got == data[..sent]);
    theirs.write_all(b"still open").unwrap();
    let mut c = completion_of(&driver, read);
    assert!(
        !c.is_cancelled(),
        "the close cancelled the other handle's receive"
    );
    assert_eq!(c.result().ok(), Some(10), "{c:?}");
    assert_eq!(c.take_buffer().as_deref(), Some(&b"still open"[..]));
    let rest = driver.finish(Duration::from_millis(200));
    assert!(rest.is_empty(), "one completion each: {rest:?}");
    drop(other);
    assert_no_live_operations(&port);
}

/// io_uring stops an operation its worker threads run by interrupting the worker, and that
/// operation ends `EINTR` (`uring::cancel_as_eintr` makes every cancelled CQE one): it is its
/// deadline or its cancel all the same, with a cancel's code, never `Interrupted` (a kind
/// std's `read_exact` and `write_all` retry).
#[test]
fn an_interrupted_operation_is_its_cancel_or_its_deadline() {
    let _serial = serial();
    let Some(port) = uring_port() else { return };
    let (ours, _theirs) = small_buffered_pair();
    let ours = port.add_handle(ours, 1).unwrap();
    let eintr = Failpoint::set("uring::cancel_as_eintr", "return");
    let driver = Driver::start(&port);

    let timed = port
        .with_timeout(Duration::from_millis(30))
        .recv(&ours, Vec::with_capacity(8));
    let c = completion_of(&driver, timed);
    let e = c.result().expect_err("its deadline passed");
    assert!(proactor::is_deadline(&e), "{e:?}");
    assert!(!proactor::is_cancelled(&e), "{e:?}");
    assert_eq!(e.kind(), ErrorKind::TimedOut, "{e:?}");
    assert_eq!(proactor::raw_os_error(&e), Some(libc::ECANCELED), "{e:?}");

    let cancelled = port.recv(&ours, Vec::with_capacity(8));
    assert!(driver.next(Duration::from_millis(20)).is_none());
    port.cancel(cancelled).expect("the receive is in flight");
    let c = completion_of(&driver, cancelled);
    let e = c.result().expect_err("cancelled");
    assert!(proactor::is_cancelled(&e), "{e:?}");
    assert_ne!(
        e.kind(),
        ErrorKind::Interrupted,
        "std would retry it: {e:?}"
    );
    assert_eq!(proactor::raw_os_error(&e), Some(libc::ECANCELED), "{e:?}");

    drop(eintr);
    drop(ours);
    assert!(driver.finish(Duration::from_millis(100)).is_empty());
    assert_no_live_operations(&port);
}
