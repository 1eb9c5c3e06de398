//! Operations outlive the threads that start, cancel or close things (issue 13, io_uring).
//!
//! The kernel ties an io_uring request to the thread that submitted it: when that thread exits,
//! a request still waiting for readiness completes cancelled. proactor therefore submits only
//! from the threads that dequeue (`get_completion`); any other thread that needs the queue
//! submitted wakes one of them. These tests start, cancel and close from short-lived threads
//! that exit while other operations wait, and check that nothing is cancelled that nobody
//! cancelled. Portable API: they run on every backend (`PROACTOR_BACKEND`, `PROACTOR_SQPOLL`).
#![cfg(any(windows, target_os = "linux"))]

mod common;

use std::{
    io::Write,
    sync::{
        Arc, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicBool, Ordering},
        mpsc::{self, Receiver, Sender},
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use common::{each_ip_v4, pair};
use proactor::{Completion, Iocp, OpId};

/// Rounds per test: a lost race fails one round in a few, so enough rounds fail reliably.
const ROUNDS: usize = if cfg!(windows) { 10 } else { 50 };

/// One test at a time: they count on the port's worker being the only thread that waits.
fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The context of a posted completion that parks the worker until `Worker::resume`.
const PARK: usize = usize::MAX;

/// One thread dequeuing from the port for its whole life (the worker-pool pattern), forwarding
/// every completion; a posted `PARK` completion holds it outside the port until resumed.
struct Worker {
    port: Arc<Iocp>,
    stop: Arc<AtomicBool>,
    done: Receiver<Completion>,
    resume: Sender<()>,
    thread: Option<JoinHandle<()>>,
}

impl Worker {
    fn start(port: &Arc<Iocp>) -> Worker {
        let (tx, done) = mpsc::channel();
        let (resume, resumed) = mpsc::channel::<()>();
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (port, stop) = (port.clone(), stop.clone());
            thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    let Ok(c) = port.get_completion(Some(Duration::from_millis(50))) else {
                        continue;
                    };
                    let park = c.context() == PARK;
                    let _ = tx.send(c);
                    if park {
                        let _ = resumed.recv_timeout(Duration::from_secs(20));
                    }
                }
            })
        };
        Worker {
            port: port.clone(),
            stop,
            done,
            resume,
            thread: Some(thread),
        }
    }

    /// Holds the worker outside the port (busy with a completion) until `resume`.
    fn park(&self) {
        let id = self.port.post(PARK, 0).unwrap();
        let c = self.completion_of(id);
        assert_eq!(c.context(), PARK);
    }

    fn resume(&self) {
        self.resume.send(()).unwrap();
    }

    /// Gives the worker time to block in the port.
    fn settle(&self) {
        thread::sleep(Duration::from_millis(5));
    }

    /// The completion of `id`, failing the test if none arrives in time.
    fn completion_of(&self, id: OpId) -> Completion {
        let end = Instant::now() + Duration::from_secs(20);
        loop {
            let left = end.saturating_duration_since(Instant::now());
            let c = self
                .done
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("{id:?} did not complete"));
            if c.id() == id {
                return c;
            }
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.resume.send(());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn port() -> Arc<Iocp> {
    Arc::new(Iocp::new().expect("port"))
}

/// Asserts that the receive `c` completed with exactly `want`.
fn assert_received(mut c: Completion, want: &[u8], round: usize) {
    assert!(
        !c.is_cancelled(),
        "round {round}: the receive completed cancelled, but nobody cancelled it: {:?}",
        c.result()
    );
    assert_eq!(c.result().ok(), Some(want.len()), "round {round}: {c:?}");
    assert_eq!(c.take_buffer().unwrap(), want, "round {round}");
}

/// (a) A receive is queued while the worker is busy; a different, short-lived thread cancels
/// an unrelated operation and exits before the worker is back; then data arrives: the receive
/// completes with the data, never cancelled.
#[test]
fn receive_survives_a_thread_that_cancels_something_else_and_exits() {
    let _serial = serial();
    let port = port();
    let worker = Worker::start(&port);
    for round in 0..ROUNDS {
        let (victim, mut victim_peer) = pair(&port, each_ip_v4(), 1);
        let (other, _other_peer) = pair(&port, each_ip_v4(), 2);
        worker.park();
        let recv = port.recv(&victim, Vec::with_capacity(64));
        let unrelated = port.recv(&other, Vec::with_capacity(64));
        {
            let port = port.clone();
            thread::spawn(move || port.cancel(unrelated).unwrap())
                .join()
                .unwrap();
        }
        worker.resume();
        let c = worker.completion_of(unrelated);
        assert!(c.is_cancelled(), "round {round}: {:?}", c.result());
        victim_peer.write_all(b"hello").unwrap();
        assert_received(worker.completion_of(recv), b"hello", round);
    }
    drop(worker);
    assert_eq!(port.operations_in_flight(), 0);
}

/// (b) A thread submits a receive while the worker waits in the port, then exits: the receive
/// completes with the data when it arrives.
#[test]
fn receive_survives_the_thread_that_submitted_it() {
    let _serial = serial();
    let port = port();
    let worker = Worker::start(&port);
    for round in 0..ROUNDS {
        let (ours, mut theirs) = pair(&port, each_ip_v4(), 1);
        let ours = Arc::new(ours);
        worker.settle();
        let recv = {
            let (port, ours) = (port.clone(), ours.clone());
            thread::spawn(move || port.recv(&ours, Vec::with_capacity(64)))
                .join()
                .unwrap()
        };
        thread::sleep(Duration::from_millis(1));
        theirs.write_all(b"world").unwrap();
        assert_received(worker.completion_of(recv), b"world", round);
    }
    drop(worker);
    assert_eq!(port.operations_in_flight(), 0);
}

/// (c) A short-lived thread starts a receive on each of two connections, closes one of them,
/// and exits, while the worker waits in the port. A new connection takes the closed one's
/// descriptor number and gets data: nothing of the closed handle touches it (its receive
/// completes cancelled, the new connection's bytes stay there), and the other connection's
/// receive completes with its data.
#[cfg(target_os = "linux")]
#[test]
fn close_from_a_thread_that_exits_while_the_worker_waits() {
    use std::{
        io::Read,
        net::{SocketAddr, TcpListener, TcpStream},
        os::fd::AsRawFd,
    };

    let _serial = serial();
    let port = port();
    let worker = Worker::start(&port);
    let reuse = TcpListener::bind(SocketAddr::new(each_ip_v4(), 0)).unwrap();
    for round in 0..ROUNDS {
        let (victim, mut victim_peer) = pair(&port, each_ip_v4(), 1);
        let (closed, _closed_peer) = pair(&port, each_ip_v4(), 2);
        let victim = Arc::new(victim);
        let fd = closed.as_raw_fd();
        worker.settle();
        let (recv, gone) = {
            let (port, victim) = (port.clone(), victim.clone());
            thread::spawn(move || {
                let recv = port.recv(&victim, Vec::with_capacity(64));
                let gone = port.recv(&closed, Vec::with_capacity(64));
                drop(closed);
                (recv, gone)
            })
            .join()
            .unwrap()
        };
        // The lowest free number is the closed handle's: a new connection takes it.
        let client = TcpStream::connect(reuse.local_addr().unwrap()).unwrap();
        let (server, _) = reuse.accept().unwrap();
        let (mut reused, mut reused_peer) = if client.as_raw_fd() == fd {
            (client, server)
        } else {
            assert_eq!(
                server.as_raw_fd(),
                fd,
                "round {round}: the number was not reused"
            );
            (server, client)
        };
        reused_peer.write_all(b"not yours").unwrap();
        let c = worker.completion_of(gone);
        assert!(c.is_cancelled(), "round {round}: {:?}", c.result());
        reused
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut got = [0u8; 9];
        reused.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"not yours", "round {round}");
        victim_peer.write_all(b"hello").unwrap();
        assert_received(worker.completion_of(recv), b"hello", round);
    }
    drop(worker);
    assert_eq!(port.operations_in_flight(), 0);
}
