//! Adversarial review of the epoll backend's recycled records, with forced interleavings: a
//! thread held in a window where a record has left its queue (its allocation already back in
//! the port's spare list) or is being run, while other threads reuse allocations, cancel and
//! drop; and a panic in the middle of a wait of `LocalPort::get_completion`.
//!
//! `PROACTOR_BACKEND=epoll cargo test -p proactor --features failpoints --test
//! review_epoll_failpoints`; elsewhere the points do not exist and the tests say so and stop.
#![cfg(all(feature = "failpoints", target_os = "linux"))]

use std::{
    collections::HashMap,
    io::Write,
    net::{SocketAddr, TcpListener, TcpStream},
    panic::{AssertUnwindSafe, catch_unwind},
    sync::{
        Arc, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicBool, Ordering::SeqCst},
        mpsc,
    },
    thread,
    time::Duration,
};

use proactor::{Completion, Iocp, LocalPort, OpId};

const WAIT: Option<Duration> = Some(Duration::from_secs(20));

/// The `fail` registry is global: one test at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(PoisonError::into_inner)
}

fn epoll_port() -> Option<Arc<Iocp>> {
    let port = Iocp::new().unwrap();
    if port.backend() != "epoll" {
        eprintln!("nothing to force on {}", port.backend());
        return None;
    }
    Some(Arc::new(port))
}

fn tcp_pair() -> (TcpStream, TcpStream) {
    let l = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
    let theirs = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (ours, _) = l.accept().unwrap();
    (ours, theirs)
}

/// A buffer whose first 8 bytes are `tag`, with room for `room` more.
fn tagged(tag: u64, room: usize) -> Vec<u8> {
    let mut buf = Vec::with_capacity(8 + room);
    buf.extend_from_slice(&tag.to_le_bytes());
    buf
}

/// The buffer `c` hands back must be the one its operation (its user value) was given.
fn check_own_buffer(c: &mut Completion) -> Vec<u8> {
    let buf = c.take_buffer().expect("a buffer back");
    let tag = u64::from_le_bytes(buf[..8].try_into().unwrap());
    assert_eq!(tag, c.user() as u64, "a buffer of another operation: {c:?}");
    buf
}

/// The first thread that reaches `name` pauses there until `go` is sent.
struct Pause {
    arrived: mpsc::Receiver<()>,
    go: mpsc::Sender<()>,
}

fn pause_at(name: &str) -> Pause {
    let (arrived_tx, arrived) = mpsc::channel();
    let (go, go_rx) = mpsc::channel::<()>();
    let (arrived_tx, go_rx) = (Mutex::new(arrived_tx), Mutex::new(go_rx));
    let first = AtomicBool::new(true);
    fail::cfg_callback(name, move || {
        if first.swap(false, SeqCst) {
            let _ = arrived_tx.lock().unwrap().send(());
            let _ = go_rx.lock().unwrap().recv_timeout(WAIT.unwrap());
        }
    })
    .unwrap();
    Pause { arrived, go }
}

/// Dequeues until every id in `ids` completed once; fails on a duplicate or a stranger.
fn collect(port: &Iocp, ids: &[OpId]) -> HashMap<OpId, Completion> {
    let mut done = HashMap::new();
    while done.len() < ids.len() {
        let c = port.get_completion(WAIT).expect("a completion in time");
        assert!(
            ids.contains(&c.id()),
            "a completion nobody asked for: {c:?}"
        );
        assert!(done.insert(c.id(), c).is_none(), "completed twice");
    }
    if let Ok(extra) = port.get_completion(Some(Duration::from_millis(50))) {
        panic!("a completion nobody asked for: {extra:?}");
    }
    done
}

/// A cancel is held after it took its receive off the queue, when that record's allocation is
/// already back in the spare list; meanwhile another thread submits receives that wait (taking
/// that allocation, and more), cancels half and completes the rest with data. Each completes
/// once with its own buffer and user value; the held cancel's receive too, with nothing in it.
#[test]
fn a_cancel_held_after_its_allocation_went_back_is_not_disturbed_by_its_reuse() {
    let _serial = serial();
    let Some(port) = epoll_port() else { return };
    let (ours, _theirs) = tcp_pair();
    let conn = port.add_handle(ours, 1).unwrap();
    let victim = port.with_user(1).recv(&conn, tagged(1, 32));
    let pause = pause_at("epoll::cancel");
    let canceller = {
        let port = port.clone();
        thread::spawn(move || port.cancel(victim))
    };
    pause.arrived.recv_timeout(WAIT.unwrap()).unwrap();

    let (ours2, mut theirs2) = tcp_pair();
    let conn2 = port.add_handle(ours2, 2).unwrap();
    let ids: Vec<OpId> = (0..64u64)
        .map(|i| {
            port.with_user(100 + i as usize)
                .recv(&conn2, tagged(100 + i, 1))
        })
        .collect();
    for id in ids.iter().skip(1).step_by(2) {
        port.cancel(*id).unwrap();
    }
    theirs2.write_all(&[5; 32]).unwrap();
    pause.go.send(()).unwrap();
    canceller.join().unwrap().expect("the receive was queued");
    fail::remove("epoll::cancel");

    let mut all = ids.clone();
    all.push(victim);
    let mut done = collect(&port, &all);
    let mut held = done.remove(&victim).unwrap();
    assert!(held.is_cancelled(), "{held:?}");
    assert_eq!(
        check_own_buffer(&mut held).len(),
        8,
        "bytes in a cancelled receive"
    );
    for (i, id) in ids.iter().enumerate() {
        let c = done.get_mut(id).unwrap();
        let buf = check_own_buffer(c);
        if i % 2 == 1 {
            assert!(c.is_cancelled(), "{c:?}");
        } else {
            assert_eq!((c.result().unwrap(), &buf[8..]), (1, &[5][..]), "{c:?}");
        }
    }
    drop((done, held, conn, conn2, port));
    assert_eq!(proactor::live_operations(), 0);
}

/// The thread that took a readiness event is held inside the attempt of a queued receive
/// (holding the descriptor table), while one thread cancels that very receive and another
/// drops its handle: the receive completes once (with the data, the cancel finding nothing,
/// or cancelled), with its own buffer, and the operation after it once as well.
#[test]
fn a_cancel_and_a_drop_racing_the_attempt_of_the_same_record_complete_it_once() {
    let _serial = serial();
    let Some(port) = epoll_port() else { return };
    let (ours, mut theirs) = tcp_pair();
    let conn = port.add_handle(ours, 1).unwrap();
    let first = port.with_user(1).recv(&conn, tagged(1, 4));
    let second = port.with_user(2).recv(&conn, tagged(2, 4));
    let pause = pause_at("epoll::attempt");
    let driver = {
        let port = port.clone();
        thread::spawn(move || port.get_completion(WAIT))
    };
    theirs.write_all(b"abcd").unwrap();
    pause.arrived.recv_timeout(WAIT.unwrap()).unwrap();
    let canceller = {
        let port = port.clone();
        thread::spawn(move || port.cancel(first).is_ok())
    };
    let dropper = thread::spawn(move || drop(conn));
    thread::sleep(Duration::from_millis(50));
    pause.go.send(()).unwrap();
    let got = driver.join().unwrap().unwrap();
    let cancelled = canceller.join().unwrap();
    dropper.join().unwrap();
    fail::remove("epoll::attempt");

    let mut done: HashMap<OpId, Completion> = HashMap::new();
    done.insert(got.id(), got);
    let rest: Vec<OpId> = [first, second]
        .into_iter()
        .filter(|id| !done.contains_key(id))
        .collect();
    done.extend(collect(&port, &rest));
    let c = done.get_mut(&first).unwrap();
    let buf = check_own_buffer(c);
    if c.is_cancelled() {
        assert_eq!(buf.len(), 8);
    } else {
        assert_eq!(&buf[8..], b"abcd");
        assert!(!cancelled, "cancelled and completed: {c:?}");
    }
    let c = done.get_mut(&second).unwrap();
    check_own_buffer(c);
    assert!(c.is_cancelled(), "{c:?}");
    drop(done);
    assert_eq!(port.operations_in_flight(), 0);
    drop(port);
    assert_eq!(proactor::live_operations(), 0);
}

/// A panic in the middle of a wait (here, in the attempt of a queued receive) unwinds through
/// `LocalPort::get_completion` while it has its kept list out: afterwards the port still hands
/// out every completion once, the receive completing at the next readiness.
#[test]
fn local_get_completion_recovers_after_a_panic_mid_wait() {
    let _serial = serial();
    let port = LocalPort::new().unwrap();
    if port.backend() != "epoll" {
        eprintln!("nothing to force on {}", port.backend());
        return;
    }
    let (ours, mut theirs) = tcp_pair();
    let conn = port.add_handle(ours, 1).unwrap();
    let id = port.with_user(1).recv(&conn, tagged(1, 4));
    let once = AtomicBool::new(true);
    fail::cfg_callback("epoll::attempt", move || {
        if once.swap(false, SeqCst) {
            panic!("forced panic at epoll::attempt");
        }
    })
    .unwrap();
    theirs.write_all(b"ab").unwrap();
    let unwound = catch_unwind(AssertUnwindSafe(|| port.get_completion(WAIT)));
    fail::remove("epoll::attempt");
    assert!(unwound.is_err(), "the failpoint did not fire");

    let posted = port.with_user(2).recv(&conn, tagged(2, 4));
    theirs.write_all(b"cd").unwrap();
    let mut c = port.get_completion(WAIT).unwrap();
    assert_eq!(c.id(), id);
    let buf = c.take_buffer().unwrap();
    assert_eq!(&buf[8..], b"abcd");
    let err = port
        .get_completion(Some(Duration::from_millis(50)))
        .unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
    theirs.write_all(b"e").unwrap();
    let c = port.get_completion(WAIT).unwrap();
    assert_eq!((c.id(), c.result().unwrap()), (posted, 1));
    drop((c, conn, port));
    assert_eq!(proactor::live_operations(), 0);
}
