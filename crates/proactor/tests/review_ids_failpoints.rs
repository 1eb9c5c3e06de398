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
