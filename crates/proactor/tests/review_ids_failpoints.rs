//! Adversarial review of the shared port's table of ids when it is full (more operations in
//! flight than ids can name, 2^24 - 1): forced by the `table::full` point, as filling it takes
//! gigabytes. The operations that find no room fail, with their own ids and an out-of-memory
//! error; the process does not panic; a stream's order lane is handed on; nothing stays
//! counted in flight.
//!
//! `cargo test -p proactor --features failpoints --test review_ids_failpoints` (every backend,
//! and under Wine).
#![cfg(all(feature = "failpoints", any(windows, target_os = "linux")))]

mod common;

use std::{
    io::{self, Read, Write},
    sync::{Mutex, MutexGuard, PoisonError},
};

use common::{each_ip_v4, next, pair};
use proactor::{Iocp, OpKind};

/// The `fail` registry is global: one test at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(PoisonError::into_inner)
}

fn out_of_memory(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::OutOfMemory && proactor::raw_os_error(e).is_some()
}

#[test]
fn a_full_table_fails_the_operation_not_the_process() {
    let _s = serial();
    let scenario = fail::FailScenario::setup();
    let port = Iocp::new().unwrap();
    let (a, mut a_peer) = pair(&port, each_ip_v4(), 1);
    let (b, mut b_peer) = pair(&port, each_ip_v4(), 2);
    // Holds a's receive lane, in the table before it is full.
    let first = port.recv(&a, Vec::with_capacity(4));
    fail::cfg("table::full", "return").unwrap();
    let behind = port.recv(&a, Vec::with_capacity(4)); // would wait in a's lane
    let alone = port.recv(&b, Vec::with_capacity(4)); // would take b's lane
    let posted = port.post(9, 9);
    fail::remove("table::full");
    let mut refused = vec![behind, alone];
    match &posted {
        Ok(id) => refused.push(*id),
        Err(e) => assert!(out_of_memory(e), "{e}"),
    }
    for _ in 0..refused.len() {
        let c = next(&port);
        let at = refused.iter().position(|&id| id == c.id());
        let at = at.unwrap_or_else(|| panic!("{c:?} is not one refused: {refused:?}"));
        refused.swap_remove(at);
        match c.result() {
            // epoll posts without the table.
            Ok(_) => assert_eq!((port.backend(), c.kind()), ("epoll", OpKind::Post)),
            Err(e) => assert!(out_of_memory(&e), "{c:?}: {e}"),
        }
    }
    // Cancelling a refused operation's id finds nothing.
    assert!(port.cancel(behind).is_err());
    assert!(port.cancel(alone).is_err());
    // b's lane was handed on (or never taken), a's first receive is still there.
    let again = port.recv(&b, Vec::with_capacity(4));
    b_peer.write_all(b"b").unwrap();
    let c = next(&port);
    assert_eq!((c.id(), c.result().unwrap()), (again, 1));
    a_peer.write_all(b"a").unwrap();
    let c = next(&port);
    assert_eq!((c.id(), c.result().unwrap()), (first, 1));
    assert_eq!(port.operations_in_flight(), 0);
    // And sends still go.
    let sent = port.send(&a, b"xy".to_vec());
    assert_eq!(next(&port).id(), sent);
    let mut buf = [0u8; 2];
    a_peer.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"xy");
    scenario.teardown();
}

/// A port dropped with refused operations not dequeued frees their records (on io_uring they
/// are in no table entry: the drop's drain, which waits for the table to empty, must still
/// reap them).
#[test]
fn a_port_dropped_with_refused_operations_frees_them() {
    let _s = serial();
    let scenario = fail::FailScenario::setup();
    let before = proactor::live_operations();
    {
        let port = Iocp::new().unwrap();
        let (a, _a_peer) = pair(&port, each_ip_v4(), 1);
        fail::cfg("table::full", "return").unwrap();
        let refused: Vec<_> = (0..8)
            .map(|_| port.recv(&a, Vec::with_capacity(4)))
            .collect();
        fail::remove("table::full");
        assert_eq!(refused.len(), 8);
        // Give the kernel time to complete them (nothing dequeues).
        std::thread::sleep(std::time::Duration::from_millis(50));
        drop(a);
    }
    assert_eq!(proactor::live_operations(), before, "records leaked");
    scenario.teardown();
}

/// A `LocalPort` whose slab (io_uring engine: `ring::slab_full`) or table (the shared engine:
/// `table::full`) is full fails the operation with an out-of-memory error and hands back its
/// buffer; on the ring, a pooled receive whose multishot receive cannot be started fails too
/// (it would wait forever otherwise). The port goes on once there is room.
#[test]
fn a_full_local_port_fails_the_operation_not_the_process() {
    let _s = serial();
    let scenario = fail::FailScenario::setup();
    let port = proactor::LocalPort::new().unwrap();
    let ring = port.setup() != "shared port";
    let (conn, mut peer) = common::local::pair(&port, each_ip_v4(), 1);
    fail::cfg("ring::slab_full", "return").unwrap();
    fail::cfg("table::full", "return").unwrap();
    let recv = port.recv(&conn, Vec::with_capacity(8)); // no data: it would wait
    let send = port.send(&conn, b"abc".to_vec());
    let timer = port.timer(std::time::Duration::from_secs(60));
    fail::remove("ring::slab_full");
    fail::remove("table::full");
    if !ring {
        // The shared engine's timers take no table entry: this one runs, and is cancelled.
        let _ = port.cancel(timer);
    }
    let mut left = vec![recv, send, timer];
    while !left.is_empty() {
        let mut c = next(&port);
        let at = left.iter().position(|&id| id == c.id());
        let at = at.unwrap_or_else(|| panic!("{c:?} is not one submitted: {left:?}"));
        left.swap_remove(at);
        let id = c.id();
        if id == recv || ring {
            let e = c.result().expect_err("refused");
            assert!(out_of_memory(&e), "{c:?}: {e}");
            assert!(port.cancel(id).is_err(), "a refused id names nothing");
        }
        if id == recv {
            assert_eq!(c.take_buffer().map(|b| b.capacity()), Some(8));
        } else if id == send && ring {
            assert_eq!(c.take_buffer().as_deref(), Some(&b"abc"[..]));
        }
    }
    if ring {
        // The pooled receive takes its entry; its multishot receive finds none.
        fail::cfg("ring::slab_full", "1*off->return").unwrap();
        let pooled = port.recv_pooled(&conn);
        fail::remove("ring::slab_full");
        let c = next(&port);
        assert_eq!(c.id(), pooled);
        let e = c.result().expect_err("refused");
        assert!(out_of_memory(&e), "{c:?}: {e}");
    }
    // Room again: a pooled receive gets the data.
    let pooled = port.recv_pooled(&conn);
    peer.write_all(b"hi").unwrap();
    let mut c = next(&port);
    assert_eq!((c.id(), c.result().unwrap()), (pooled, 2));
    assert_eq!(&c.take_pooled().unwrap()[..], b"hi");
    scenario.teardown();
}

/// Found by review: the shared-port engine of a `LocalPort` (epoll, Windows) looks at the
/// shared port every 64 completions it returns from its own queue; an error of that look was
/// returned after the completions were taken, and `get_completion` dropped the one it held (a
/// caller's batch, all of them). The look is a look: what was taken is returned.
#[test]
fn a_failed_look_at_the_shared_port_loses_no_completion() {
    let _s = serial();
    let scenario = fail::FailScenario::setup();
    let port = proactor::LocalPort::new().unwrap();
    fail::cfg("local::look_at_port", "return").unwrap();
    for value in 0..300 {
        port.post(1, value);
    }
    // One at a time, then in batches: every post comes back once, in order, with no error.
    let mut got = Vec::new();
    for _ in 0..150 {
        let c = port
            .get_completion(Some(std::time::Duration::ZERO))
            .unwrap();
        got.push(c.bytes_transferred());
    }
    let mut batch = Vec::new();
    while got.len() < 300 {
        batch.clear();
        port.get_completions(&mut batch, 7, Some(std::time::Duration::ZERO))
            .unwrap();
        got.extend(batch.iter().map(|c| c.bytes_transferred()));
    }
    assert_eq!(got, (0..300).collect::<Vec<_>>());
    scenario.teardown();
}
