//! Adversarial review of process-unique operation ids (`OpId`: a sequence number above a slot
//! index; the shared port's sharded table makes them). What must hold on every backend (io_uring,
//! SQPOLL, epoll, Windows):
//! - the id a submission returns is the one its completion carries, whether the operation ends
//!   at submission (epoll: a send with room) or waits (a recv with no data);
//! - ids in flight at once, across threads and ports, are distinct;
//! - a stale id cancelled on one thread while another thread completes and reuses table entries
//!   never cancels a newer operation that took the entry;
//! - a deadline whose operation completed first never cancels the operation that took its
//!   entry afterwards; deadlines on many ids (any slot of the timers' hash) all fire;
//! - `operations_in_flight` returns to 0 after churn.
#![cfg(any(windows, target_os = "linux"))]

mod common;

use std::{
    collections::HashSet,
    io::{self, Write},
    net::TcpStream,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use common::{each_ip_v4, next, pair};
use proactor::{Handle, Iocp, OpId, OpKind};

fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// `n` connected pairs: receives on them wait, each in a table entry of the port (timers, kept
/// by the port's timer list, take none).
fn pairs(port: &Iocp, n: usize) -> Vec<(Handle<TcpStream>, TcpStream)> {
    (0..n).map(|i| pair(port, each_ip_v4(), i)).collect()
}

/// A receive waiting on each of `pairs`.
fn waiting_recvs(port: &Iocp, pairs: &[(Handle<TcpStream>, TcpStream)]) -> Vec<OpId> {
    pairs
        .iter()
        .map(|(ours, _)| port.recv(ours, Vec::with_capacity(4)))
        .collect()
}

/// Cancels `ids` and checks that each ends, cancelled, once.
fn cancel_all_of(port: &Iocp, ids: &[OpId]) {
    for &id in ids {
        port.cancel(id).unwrap();
    }
    let mut ended = HashSet::new();
    for _ in ids {
        let c = next(port);
        assert!(c.is_cancelled(), "{c:?}");
        assert!(ended.insert(c.id()), "{c:?} twice");
    }
    assert_eq!(ended, ids.iter().copied().collect());
}

/// A send that can complete at submission (epoll: written at once, never in the table) and a
/// recv that waits (in the table): each completion carries the id its submission returned, and
/// the waiting one is cancelled by that id.
#[test]
fn the_returned_id_is_the_completions_whether_it_waits_or_not() {
    let _s = serial();
    let port = Iocp::new().unwrap();
    let (ours, mut theirs) = pair(&port, each_ip_v4(), 1);
    for round in 0..50 {
        let sent = port.send(&ours, vec![round as u8; 16]);
        let c = next(&port);
        assert_eq!((c.kind(), c.id()), (OpKind::Send, sent), "round {round}");
        c.result().unwrap();
        let mut buf = [0u8; 16];
        io::Read::read_exact(&mut theirs, &mut buf).unwrap();
        let waiting = port.recv(&ours, Vec::with_capacity(16));
        assert_ne!(waiting, sent);
        if round % 2 == 0 {
            port.cancel(waiting).unwrap();
            let c = next(&port);
            assert_eq!(c.id(), waiting, "round {round}");
            assert!(proactor::is_cancelled(&c.result().unwrap_err()));
        } else {
            theirs.write_all(b"x").unwrap();
            let c = next(&port);
            assert_eq!((c.kind(), c.id()), (OpKind::Recv, waiting), "round {round}");
            assert_eq!(c.result().unwrap(), 1);
        }
        // The ended ids find nothing any more.
        assert!(port.cancel(sent).is_err());
        assert!(port.cancel(waiting).is_err());
    }
    assert_eq!(port.operations_in_flight(), 0);
}

/// Many threads, each with many operations in flight on one port (receives waiting on a
/// stream of its own: table entries) and posts on a port of its own: every id in flight is
/// distinct (within and across ports), and each completion carries its submission's id.
#[test]
fn ids_in_flight_across_threads_and_ports_are_distinct() {
    let _s = serial();
    let shared = Arc::new(Iocp::new().unwrap());
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let shared = shared.clone();
            thread::spawn(move || {
                let own = Iocp::new().unwrap();
                let conn = pair(&shared, each_ip_v4(), t);
                let mut recvs = Vec::new();
                let mut posts = Vec::new();
                for i in 0..2000 {
                    recvs.push(shared.recv(&conn.0, Vec::with_capacity(1)));
                    posts.push(own.post(0, i).unwrap());
                }
                let posted: HashSet<OpId> = posts.iter().copied().collect();
                let mut seen = HashSet::new();
                for _ in 0..posts.len() {
                    let c = next(&own);
                    assert!(posted.contains(&c.id()), "{c:?}");
                    assert!(seen.insert(c.id()), "completed twice: {c:?}");
                }
                assert_eq!(own.operations_in_flight(), 0);
                (recvs, posts, conn)
            })
        })
        .collect();
    let mut all = HashSet::new();
    let mut recvs = Vec::new();
    let mut conns = Vec::new();
    for t in threads {
        let (r, p, conn) = t.join().unwrap();
        for &id in r.iter().chain(&p) {
            assert!(all.insert(id), "id {id:?} given twice");
        }
        recvs.extend(r);
        conns.push(conn);
    }
    assert_eq!(shared.operations_in_flight(), recvs.len());
    cancel_all_of(&shared, &recvs);
    assert_eq!(shared.operations_in_flight(), 0);
}

/// One thread churns posts through the table (entries freed and taken again at once) and sends
/// the ids it dequeued to another thread, which cancels them right away, racing the entries'
/// reuse: no stale cancel may hit a newer operation. The receives waiting meanwhile (on the
/// same shards) must all be there at the end, uncancelled.
#[test]
fn stale_cancels_racing_reuse_on_another_thread_touch_nothing() {
    let _s = serial();
    let port = Arc::new(Iocp::new().unwrap());
    let conns = pairs(&port, 64);
    let long = waiting_recvs(&port, &conns);
    let (tx, rx) = std::sync::mpsc::channel::<OpId>();
    let stop = Arc::new(AtomicBool::new(false));
    let canceller = {
        let port = port.clone();
        thread::spawn(move || {
            let mut hits = 0usize;
            while let Ok(id) = rx.recv() {
                if port.cancel(id).is_ok() {
                    hits += 1;
                }
            }
            hits
        })
    };
    let churner = {
        let port = port.clone();
        let stop = stop.clone();
        thread::spawn(move || {
            let mut n = 0;
            let until = Instant::now() + Duration::from_millis(1500);
            while Instant::now() < until && n < 200_000 {
                // A few in flight at once, so that entries of several shards are reused.
                let ids: Vec<OpId> = (0..8).map(|v| port.post(7, v).unwrap()).collect();
                for _ in 0..ids.len() {
                    let c = next(&*port);
                    assert_eq!(c.kind(), OpKind::Post, "a receive ended: {c:?}");
                    assert!(ids.contains(&c.id()), "{c:?} not among {ids:?}");
                    tx.send(c.id()).unwrap();
                }
                n += ids.len();
            }
            stop.store(true, Ordering::Relaxed);
            n
        })
    };
    let n = churner.join().unwrap();
    let hits = canceller.join().unwrap();
    assert!(n > 1000, "only {n} posts");
    assert_eq!(hits, 0, "a stale id cancelled something");
    assert!(stop.load(Ordering::Relaxed));
    assert_eq!(port.operations_in_flight(), long.len());
    cancel_all_of(&port, &long);
}

/// An operation with a deadline that completes before it: its entry is freed and taken by the
/// next operations, which have no deadline. When the old deadline passes, none of them may end
/// (the deadline is forgotten, or names an id that finds nothing).
#[test]
fn a_passed_deadline_of_a_completed_operation_spares_its_entrys_next_owner() {
    let _s = serial();
    let port = Iocp::new().unwrap();
    let (ours, mut theirs) = pair(&port, each_ip_v4(), 1);
    let mut old = Vec::new();
    for _ in 0..64 {
        let id = port
            .with_timeout(Duration::from_millis(200))
            .recv(&ours, Vec::with_capacity(8));
        theirs.write_all(b"y").unwrap();
        let c = next(&port);
        assert_eq!(c.id(), id);
        assert_eq!(c.result().unwrap(), 1);
        old.push(id);
    }
    // The entries just freed, taken again (every shard, more than once).
    let conns = pairs(&port, 128);
    let fresh = waiting_recvs(&port, &conns);
    for id in &fresh {
        assert!(!old.contains(id));
    }
    let recv = port.recv(&ours, Vec::with_capacity(8));
    thread::sleep(Duration::from_millis(400));
    // Whatever the old deadlines did, nothing of ours may have ended.
    match port.get_completion(Some(Duration::from_millis(100))) {
        Err(e) if e.kind() == io::ErrorKind::TimedOut => {}
        other => panic!("nothing should end: {other:?}"),
    }
    assert_eq!(port.operations_in_flight(), fresh.len() + 1);
    theirs.write_all(b"z").unwrap();
    let c = next(&port);
    assert_eq!((c.id(), c.result().unwrap()), (recv, 1));
    cancel_all_of(&port, &fresh);
    assert_eq!(port.operations_in_flight(), 0);
}

/// Deadlines on many operations in flight at once (every slot of the timers' hash used
/// several times, ids from every table shard, some receives waiting behind others on their
/// stream): each fires, on its own operation, as a deadline.
#[test]
fn deadlines_on_many_ids_all_fire() {
    let _s = serial();
    let port = Iocp::new().unwrap();
    let conns = pairs(&port, 40);
    let at = Instant::now() + Duration::from_millis(300);
    let mut ids = HashSet::new();
    for round in 0..15 {
        for (ours, _) in &conns {
            let id = port.with_deadline(at).recv(ours, Vec::with_capacity(4));
            assert!(ids.insert(id), "round {round}: {id:?} twice");
        }
    }
    let total = ids.len();
    for k in 0..total {
        let c = port
            .get_completion(Some(Duration::from_secs(5)))
            .unwrap_or_else(|e| panic!("{k} of {total} ended: {e}"));
        assert!(ids.remove(&c.id()), "{c:?}");
        let e = c.result().unwrap_err();
        assert!(proactor::is_deadline(&e), "{c:?}: {e}");
    }
    assert_eq!(port.operations_in_flight(), 0);
}
