//! Adversarial review of the `LocalPort` ring's live count (`proactor::live_operations()`,
//! published once per dequeue): operations refused because the slab is full (forced by
//! `ring::slab_full`), and pooled receives failed because their multishot receive found no
//! entry, are never counted, before or after their completions are dequeued. And an operation
//! the kernel ends `EINTR` when it is cancelled or its deadline passes (forced by
//! `ring::cancel_as_eintr`) is that cancel or that deadline, never `Interrupted`.
//!
//! `cargo test -p proactor --features failpoints --test review_ring_live_failpoints` (on
//! `PROACTOR_BACKEND=epoll` the port is a shared port: each test says so and returns).
#![cfg(all(feature = "failpoints", target_os = "linux"))]

use std::{
    io::{self, Write},
    net::{TcpListener, TcpStream},
    sync::{Mutex, MutexGuard, PoisonError},
    time::Duration,
};

use proactor::{LocalHandle, LocalPort, OpId};

/// The `fail` registry and `live_operations()` are process-wide: one test at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(PoisonError::into_inner)
}

fn ring_port() -> Option<LocalPort> {
    let port = LocalPort::with_pool(16, 4096).expect("a local port");
    if port.setup() == "shared port" {
        eprintln!("review_ring_live_failpoints: a shared port here (no ring): skipped");
        return None;
    }
    Some(port)
}

fn pair(port: &LocalPort) -> (LocalHandle<TcpStream>, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let client = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (server, _) = l.accept().unwrap();
    (port.add_handle(server, 1).unwrap(), client)
}

/// Dequeues exactly the completions of `ids` (each an out-of-memory error), then finds none.
fn refused(port: &LocalPort, ids: &[OpId]) {
    let mut left = ids.to_vec();
    while !left.is_empty() {
        let c = port
            .get_completion(Some(Duration::from_secs(5)))
            .expect("a completion");
        let at = left.iter().position(|&id| id == c.id());
        left.swap_remove(at.unwrap_or_else(|| panic!("{c:?} not among {ids:?}")));
        let e = c.result().expect_err("refused");
        assert_eq!(e.kind(), io::ErrorKind::OutOfMemory, "{c:?}");
    }
    match port.get_completion(Some(Duration::from_millis(20))) {
        Err(e) if e.kind() == io::ErrorKind::TimedOut => {}
        other => panic!("expected nothing more, got {other:?}"),
    }
}

#[test]
fn operations_refused_for_a_full_slab_are_never_counted() {
    let _s = serial();
    let scenario = fail::FailScenario::setup();
    let Some(port) = ring_port() else {
        return;
    };
    let base = proactor::live_operations();
    let (conn, _peer) = pair(&port);
    fail::cfg("ring::slab_full", "return").unwrap();
    let ids = [
        port.recv(&conn, Vec::with_capacity(8)),
        port.send(&conn, b"abc".to_vec()),
        port.timer(Duration::from_secs(60)),
        port.recv_pooled(&conn),
        // A record: its own count goes with it.
        port.send_vectored(&conn, vec![b"x".to_vec()]),
    ];
    fail::remove("ring::slab_full");
    assert_eq!(proactor::live_operations(), base, "refused at once");
    refused(&port, &ids);
    assert_eq!(proactor::live_operations(), base);
    assert_eq!(port.operations_in_flight(), 0);
    drop(conn);
    drop(port);
    assert_eq!(proactor::live_operations(), base);
    scenario.teardown();
}

#[test]
fn a_pooled_receive_whose_multishot_finds_no_entry_is_counted_out_again() {
    let _s = serial();
    let scenario = fail::FailScenario::setup();
    let Some(port) = ring_port() else {
        return;
    };
    let base = proactor::live_operations();
    let (conn, mut peer) = pair(&port);
    // The pooled receive takes an entry (counted); its multishot receive finds none: it fails.
    fail::cfg("ring::slab_full", "1*off->return").unwrap();
    let pooled = port.recv_pooled(&conn);
    fail::remove("ring::slab_full");
    refused(&port, &[pooled]);
    assert_eq!(proactor::live_operations(), base);
    assert_eq!(port.operations_in_flight(), 0);
    // The port goes on, counting right.
    let pooled = port.recv_pooled(&conn);
    match port.get_completion(Some(Duration::from_millis(20))) {
        Err(e) if e.kind() == io::ErrorKind::TimedOut => {}
        other => panic!("expected nothing yet, got {other:?}"),
    }
    assert_eq!(proactor::live_operations(), base + 1);
    peer.write_all(b"hi").unwrap();
    let c = port.get_completion(Some(Duration::from_secs(5))).unwrap();
    assert_eq!((c.id(), c.result().unwrap()), (pooled, 2));
    assert_eq!(proactor::live_operations(), base);
    drop(c);
    drop(conn);
    drop(port);
    assert_eq!(proactor::live_operations(), base);
    scenario.teardown();
}

/// io_uring stops an operation its worker threads run (a blocking send) by interrupting the
/// worker: the operation then ends `EINTR`, not `ECANCELED` (the `local_ops` fuzz target found
/// a send with a deadline ending `Interrupted`, a kind std's `write_all` retries). Forced here
/// with `ring::cancel_as_eintr` (each `ECANCELED` CQE made `EINTR`): a receive whose deadline
/// passes ends with its deadline, a cancelled one with its cancel, each with a cancel's code
/// (`ECANCELED`), as documented, never `EINTR` (rebuilt with `from_raw_os_error`, that would be
/// `Interrupted` again).
#[test]
fn an_interrupted_operation_is_its_cancel_or_its_deadline() {
    let _s = serial();
    let scenario = fail::FailScenario::setup();
    let Some(port) = ring_port() else {
        return;
    };
    let (conn, _peer) = pair(&port);
    fail::cfg("ring::cancel_as_eintr", "return").unwrap();
    let timed = port
        .with_timeout(Duration::from_millis(30))
        .recv(&conn, Vec::with_capacity(8));
    let c = port.get_completion(Some(Duration::from_secs(5))).unwrap();
    assert_eq!(c.id(), timed);
    let e = c.result().expect_err("its deadline passed");
    assert!(proactor::is_deadline(&e), "{e:?}");
    assert_eq!(e.kind(), io::ErrorKind::TimedOut, "{e:?}");
    assert_eq!(proactor::raw_os_error(&e), Some(libc::ECANCELED));
    let cancelled = port.recv(&conn, Vec::with_capacity(8));
    assert!(
        port.get_completion(Some(Duration::from_millis(20)))
            .is_err()
    );
    port.cancel(cancelled).unwrap();
    let c = port.get_completion(Some(Duration::from_secs(5))).unwrap();
    assert_eq!(c.id(), cancelled);
    let e = c.result().expect_err("cancelled");
    assert!(proactor::is_cancelled(&e), "{e:?}");
    assert_ne!(
        e.kind(),
        io::ErrorKind::Interrupted,
        "std would retry it: {e:?}"
    );
    assert_eq!(proactor::raw_os_error(&e), Some(libc::ECANCELED));
    fail::remove("ring::cancel_as_eintr");
    drop(conn);
    scenario.teardown();
}
