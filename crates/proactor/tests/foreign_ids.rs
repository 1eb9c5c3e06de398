//! Operation ids across ports: an id is unique within the process ([`proactor::OpId`]), so a
//! port never mistakes another port's id, or a stale one of its own, for an operation in
//! flight. Cancelling such an id is `NotFound` and touches nothing; the operations in flight
//! complete as they would have. Written against the public API: every engine (the io_uring
//! ring of a `LocalPort`, its shared-port engine, the shared `Iocp` on every backend) passes.
#![cfg(any(windows, target_os = "linux"))]

mod common;

use std::{
    collections::HashSet,
    io::{self, Write},
    net::TcpStream,
    sync::{Mutex, MutexGuard},
    thread,
    time::Duration,
};

use common::{each_ip_v4, local, next};
use proactor::{Iocp, LocalPort, OpId, OpKind};

/// One test at a time: the machine has few cores and the rings are not small.
fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

const HOUR: Duration = Duration::from_secs(3600);

fn not_found(r: io::Result<()>, what: &str) {
    match r {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        other => panic!("{what}: NotFound expected, got {other:?}"),
    }
}

/// A port under test: its in-flight operations, by id, and what cancelling an id does.
trait Cancel {
    fn cancel_id(&self, id: OpId) -> io::Result<()>;
    fn in_flight(&self) -> usize;
    fn name(&self) -> String;
}

impl Cancel for LocalPort {
    fn cancel_id(&self, id: OpId) -> io::Result<()> {
        self.cancel(id)
    }
    fn in_flight(&self) -> usize {
        self.operations_in_flight()
    }
    fn name(&self) -> String {
        format!("LocalPort ({}, {})", self.backend(), self.setup())
    }
}

impl Cancel for Iocp {
    fn cancel_id(&self, id: OpId) -> io::Result<()> {
        self.cancel(id)
    }
    fn in_flight(&self) -> usize {
        self.operations_in_flight()
    }
    fn name(&self) -> String {
        format!("Iocp ({})", self.backend())
    }
}

/// Two `LocalPort`s and an `Iocp`, each with a receive, a pooled receive (the local ports) and
/// a timer pending: every port's ids cancelled on every other port are `NotFound`, nothing
/// completes for it, and afterwards each receive completes with its own data and each timer
/// is still cancellable by its own port. The two local ports are alike, so their operations sit
/// in the same slots of their slabs: an id made of the slot alone would cancel the other's.
#[test]
fn another_ports_ids_are_not_found_and_touch_nothing() {
    let _s = serial();
    let ip = each_ip_v4();
    let a = LocalPort::with_pool(8, 4096).unwrap();
    let b = LocalPort::with_pool(8, 4096).unwrap();
    let c = Iocp::new().unwrap();

    let (a_conn, mut a_peer) = local::pair(&a, ip, 1);
    let (a_conn2, mut a_peer2) = local::pair(&a, ip, 2);
    let a_ids = [
        a.recv(&a_conn, Vec::with_capacity(64)),
        a.recv_pooled(&a_conn2),
        a.timer(HOUR),
    ];
    let (b_conn, mut b_peer) = local::pair(&b, ip, 1);
    let (b_conn2, mut b_peer2) = local::pair(&b, ip, 2);
    let b_ids = [
        b.recv(&b_conn, Vec::with_capacity(64)),
        b.recv_pooled(&b_conn2),
        b.timer(HOUR),
    ];
    let (c_conn, mut c_peer) = common::pair(&c, ip, 3);
    let c_ids = [c.recv(&c_conn, Vec::with_capacity(64)), c.timer(HOUR)];

    let all: Vec<OpId> = a_ids.iter().chain(&b_ids).chain(&c_ids).copied().collect();
    let distinct: HashSet<OpId> = all.iter().copied().collect();
    assert_eq!(distinct.len(), all.len(), "ids of three ports: {all:?}");

    let ports: [(&dyn Cancel, &[OpId]); 3] = [(&a, &a_ids), (&b, &b_ids), (&c, &c_ids)];
    for (port, own) in ports {
        let before = port.in_flight();
        for (_, theirs) in ports.iter().filter(|(_, ids)| ids != &own) {
            for &id in *theirs {
                not_found(
                    port.cancel_id(id),
                    &format!("{} cancelling {id:?} of another port", port.name()),
                );
            }
        }
        assert_eq!(port.in_flight(), before, "{}", port.name());
    }
    assert!(local::within(&a, 50).is_none(), "port a: nothing ended");
    assert!(local::within(&b, 50).is_none(), "port b: nothing ended");
    assert!(
        c.get_completion(Some(Duration::from_millis(50))).is_err(),
        "port c: nothing ended"
    );

    // Every operation goes on as if nothing happened.
    a_peer.write_all(b"a one").unwrap();
    a_peer2.write_all(b"a two").unwrap();
    b_peer.write_all(b"b one").unwrap();
    b_peer2.write_all(b"b two").unwrap();
    c_peer.write_all(b"c one").unwrap();
    for (port, ids, tag) in [(&a, &a_ids, "a"), (&b, &b_ids, "b")] {
        port.cancel(ids[2]).expect("its own timer is found");
        let mut done = local::collect(port, ids);
        let mut recv = done.remove(0);
        assert_eq!(recv.kind(), OpKind::Recv);
        assert_eq!(recv.result().unwrap(), 5, "{recv:?}");
        assert_eq!(recv.take_buffer().unwrap(), format!("{tag} one").as_bytes());
        let mut pooled = done.remove(0);
        assert_eq!(pooled.kind(), OpKind::RecvPooled);
        assert_eq!(pooled.result().unwrap(), 5, "{pooled:?}");
        assert_eq!(
            &*pooled.take_pooled().unwrap(),
            format!("{tag} two").as_bytes()
        );
        let timer = done.remove(0);
        assert_eq!(timer.kind(), OpKind::Timer);
        assert!(proactor::is_cancelled(&timer.result().unwrap_err()));
        assert_eq!(port.operations_in_flight(), 0);
    }
    c.cancel(c_ids[1]).expect("its own timer is found");
    let mut done = common::collect(&c, &c_ids);
    let mut recv = done.remove(0);
    assert_eq!(recv.result().unwrap(), 5, "{recv:?}");
    assert_eq!(recv.take_buffer().unwrap(), b"c one");
    assert!(proactor::is_cancelled(&done[0].result().unwrap_err()));
    assert_eq!(c.operations_in_flight(), 0);
    drop((a_conn, a_conn2, b_conn, b_conn2, c_conn));
}

/// A completed operation's id, once a new operation took its place, is `NotFound` and leaves
/// the new one alone: it completes with its own data.
fn stale_ids_on<P: Cancel + common::Port>(
    port: &P,
    recv: impl Fn() -> OpId,
    peer: &mut TcpStream,
    data: impl Fn(P::Done) -> Vec<u8>,
) {
    for round in 0..50u32 {
        let old = recv();
        peer.write_all(&round.to_le_bytes()).unwrap();
        let c = next(port);
        assert_eq!(P::id_of(&c), old);
        assert_eq!(data(c), round.to_le_bytes());
        let new = recv();
        assert_ne!(old, new, "round {round}");
        not_found(port.cancel_id(old), &format!("{}: stale id", port.name()));
        assert!(
            port.dequeue(Some(Duration::from_millis(if round == 0 { 50 } else { 1 })))
                .is_err(),
            "{}: the new operation is left alone",
            port.name()
        );
        peer.write_all(b"next").unwrap();
        let c = next(port);
        assert_eq!(P::id_of(&c), new, "round {round}");
        assert_eq!(data(c), b"next");
        not_found(port.cancel_id(new), &format!("{}: completed", port.name()));
        assert_eq!(port.in_flight(), 0);
    }
}

#[test]
fn stale_ids_are_not_found_and_touch_nothing() {
    let _s = serial();
    let ip = each_ip_v4();
    let port = LocalPort::with_pool(8, 4096).unwrap();
    let (conn, mut peer) = local::pair(&port, ip, 1);
    stale_ids_on(
        &port,
        || port.recv(&conn, Vec::with_capacity(16)),
        &mut peer,
        |mut c| {
            assert_eq!(c.kind(), OpKind::Recv, "{c:?}");
            c.result().unwrap();
            c.take_buffer().unwrap()
        },
    );
    let (conn2, mut peer2) = local::pair(&port, ip, 2);
    stale_ids_on(
        &port,
        || port.recv_pooled(&conn2),
        &mut peer2,
        |mut c| {
            assert_eq!(c.kind(), OpKind::RecvPooled, "{c:?}");
            c.result().unwrap();
            c.take_pooled().unwrap().to_vec()
        },
    );
    let shared = Iocp::new().unwrap();
    let (conn3, mut peer3) = common::pair(&shared, ip, 3);
    stale_ids_on(
        &shared,
        || shared.recv(&conn3, Vec::with_capacity(16)),
        &mut peer3,
        |mut c| {
            assert_eq!(c.kind(), OpKind::Recv, "{c:?}");
            c.result().unwrap();
            c.take_buffer().unwrap()
        },
    );
    // A stale timer's id, its slot taken by a new timer.
    let old = port.timer(Duration::ZERO);
    assert_eq!(next(&port).id(), old);
    let new = port.timer(HOUR);
    not_found(port.cancel(old), "stale timer");
    assert!(local::within(&port, 20).is_none(), "the new timer runs on");
    port.cancel(new).unwrap();
    assert_eq!(next(&port).id(), new);
}

/// The ids a port gives: a timer's, a post's, a receive's (cancelled), a pooled receive's
/// (cancelled), all completed and dequeued.
fn ids_of_a_local_port() -> Vec<OpId> {
    let port = LocalPort::with_pool(2, 64).unwrap();
    let (conn, _peer) = local::pair(&port, each_ip_v4(), 1);
    let ids = vec![
        port.timer(Duration::ZERO),
        port.post(0, 0),
        port.recv(&conn, Vec::with_capacity(8)),
        port.recv_pooled(&conn),
    ];
    // A pooled receive beside a plain one is refused at once: both still have their id.
    port.cancel_all(&conn).unwrap();
    local::collect(&port, &ids);
    ids
}

fn ids_of_an_iocp() -> Vec<OpId> {
    let port = Iocp::new().unwrap();
    let (conn, _peer) = common::pair(&port, each_ip_v4(), 1);
    let ids = vec![
        port.timer(Duration::ZERO),
        port.post(0, 0).unwrap(),
        port.recv(&conn, Vec::with_capacity(8)),
    ];
    port.cancel(ids[2]).unwrap();
    common::collect(&port, &ids);
    ids
}

/// Ports made and dropped one after another, and on several threads at once, never give the
/// same id twice: a port made after another's drop starts with fresh ids, not the same slots.
#[test]
fn ids_are_distinct_across_ports_made_and_dropped() {
    let _s = serial();
    let mut seen: HashSet<OpId> = HashSet::new();
    let mut add = |ids: Vec<OpId>| {
        for id in ids {
            assert!(seen.insert(id), "{id:?} given twice");
        }
    };
    for _ in 0..12 {
        add(ids_of_a_local_port());
        add(ids_of_an_iocp());
    }
    let threads: Vec<_> = (0..3)
        .map(|_| {
            thread::spawn(|| {
                let mut ids = Vec::new();
                for _ in 0..6 {
                    ids.extend(ids_of_a_local_port());
                    ids.extend(ids_of_an_iocp());
                }
                ids
            })
        })
        .collect();
    for t in threads {
        add(t.join().unwrap());
    }
}

/// Two ports of each kind with 100 receives pending on one connection each: their tables or
/// slabs fill the same slots (every shard of a shared port's table, the first 100 entries of a
/// ring's slab), and still no id of one is found by the other. Each port's own receives then
/// end as they should: the first with the data, the rest cancelled, each exactly once.
#[test]
fn ports_with_many_operations_in_the_same_slots_share_no_id() {
    const N: usize = 100;
    let _s = serial();
    let ip = each_ip_v4();
    let shared = [Iocp::new().unwrap(), Iocp::new().unwrap()];
    let conns: Vec<_> = shared.iter().map(|p| common::pair(p, ip, 1)).collect();
    let shared_ids: Vec<Vec<OpId>> = shared
        .iter()
        .zip(&conns)
        .map(|(p, (h, _))| (0..N).map(|_| p.recv(h, Vec::with_capacity(8))).collect())
        .collect();
    let local = [
        LocalPort::with_pool(4, 64).unwrap(),
        LocalPort::with_pool(4, 64).unwrap(),
    ];
    let local_conns: Vec<_> = local.iter().map(|p| local::pair(p, ip, 1)).collect();
    let local_ids: Vec<Vec<OpId>> = local
        .iter()
        .zip(&local_conns)
        .map(|(p, (h, _))| (0..N).map(|_| p.recv(h, Vec::with_capacity(8))).collect())
        .collect();
    let ports: [(&dyn Cancel, &[OpId]); 4] = [
        (&shared[0], &shared_ids[0]),
        (&shared[1], &shared_ids[1]),
        (&local[0], &local_ids[0]),
        (&local[1], &local_ids[1]),
    ];
    for (i, (port, _)) in ports.iter().enumerate() {
        assert_eq!(port.in_flight(), N, "{}", port.name());
        for (j, (_, theirs)) in ports.iter().enumerate() {
            if i != j {
                for &id in *theirs {
                    not_found(port.cancel_id(id), &format!("{} given {id:?}", port.name()));
                }
            }
        }
        assert_eq!(port.in_flight(), N, "{}", port.name());
    }
    for (n, (p, (_, peer))) in shared.iter().zip(&conns).enumerate() {
        let mut peer = peer;
        peer.write_all(b"first").unwrap();
        let ids = &shared_ids[n];
        for &id in &ids[1..] {
            p.cancel(id).expect("its own receive is found");
        }
        let mut done = common::collect(p, ids);
        assert_eq!(done[0].take_buffer().unwrap(), b"first");
        for c in &done[1..] {
            assert!(proactor::is_cancelled(&c.result().unwrap_err()), "{c:?}");
        }
    }
    for (n, (p, (_, peer))) in local.iter().zip(&local_conns).enumerate() {
        let mut peer = peer;
        peer.write_all(b"first").unwrap();
        let ids = &local_ids[n];
        for &id in &ids[1..] {
            p.cancel(id).expect("its own receive is found");
        }
        let mut done = local::collect(p, ids);
        assert_eq!(done[0].take_buffer().unwrap(), b"first");
        for c in &done[1..] {
            assert!(proactor::is_cancelled(&c.result().unwrap_err()), "{c:?}");
        }
    }
}
