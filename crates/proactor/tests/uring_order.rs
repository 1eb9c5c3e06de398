//! Several operations queued at once on one stream: sends go out whole and in submission order,
//! receives are filled in submission order, a cancelled one never runs, and a closed handle or a
//! dropped port ends the waiting ones exactly once. Overlapped I/O on Windows behaves this way;
//! io_uring would run them concurrently (the rest of a partial send overtaken by a later send, a
//! later receive filled first), so the io_uring backend runs a stream's sends and its receives
//! one at a time each. The tests use the portable API and run on every backend.
//!
//! Run with `cargo test -p proactor --test uring_order` (also with `PROACTOR_BACKEND=epoll` and
//! `PROACTOR_SQPOLL=50`).

mod common;

use std::{
    collections::HashMap,
    io::{ErrorKind, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    sync::{Mutex, MutexGuard, PoisonError},
    thread,
    time::{Duration, Instant},
};

use common::{WAIT, each_ip_v4, next};
use proactor::{Completion, Iocp, OpId};

/// `live_operations()` counts records across the process: one test of this file at a time.
fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The bytes of send number `k` of a test: a pattern that differs per send and per position,
/// so a byte out of place names itself.
fn bytes_of(k: usize, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i.wrapping_mul(7) + i / 251 + k * 61) as u8)
        .collect()
}

/// A connected pair: `ours` with a 4 KiB send buffer (a large send completes in many parts),
/// `theirs` with a read timeout (its receive buffer is left alone: loopback TCP stalls against
/// a window smaller than its 64 KiB segments).
fn small_buffered_pair() -> (TcpStream, TcpStream) {
    let l = TcpListener::bind(SocketAddr::new(each_ip_v4(), 0)).unwrap();
    let theirs = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (ours, _) = l.accept().unwrap();
    socket2::SockRef::from(&ours)
        .set_send_buffer_size(4096)
        .unwrap();
    theirs.set_read_timeout(WAIT).unwrap();
    (ours, theirs)
}

/// Reads `len` bytes from `peer` after `late`, in small reads (a slow reader); stops early at
/// EOF, a reset or a timeout and returns what arrived.
fn slow_read(mut peer: TcpStream, late: Duration, len: usize) -> Vec<u8> {
    thread::sleep(late);
    let mut got = Vec::with_capacity(len);
    let mut chunk = vec![0; 16 << 10];
    while got.len() < len {
        match peer.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    got
}

/// Dequeues until every id in `ids` completed; fails on a second completion of one, or on a
/// completion of another.
fn completions(port: &Iocp, ids: &[OpId]) -> HashMap<OpId, Completion> {
    let mut done = HashMap::new();
    while done.len() < ids.len() {
        let c = next(port);
        assert!(ids.contains(&c.id()), "an unexpected completion: {c:?}");
        let id = c.id();
        assert!(done.insert(id, c).is_none(), "{id:?} completed twice");
    }
    done
}

/// Waits (bounded) until nothing is in flight, and checks no record is left.
fn assert_all_reclaimed(port: &Iocp) {
    let end = Instant::now() + Duration::from_secs(5);
    while port.operations_in_flight() > 0 && Instant::now() < end {
        if let Ok(c) = port.get_completion(Some(Duration::from_millis(50))) {
            panic!("a completion after every operation completed: {c:?}");
        }
    }
    assert_eq!(port.operations_in_flight(), 0);
    assert_eq!(proactor::live_operations(), 0);
}

/// Where the peer's bytes first differ from `want`, if anywhere (and how long each is).
fn first_difference(got: &[u8], want: &[u8]) -> Option<usize> {
    got.iter()
        .zip(want)
        .position(|(a, b)| a != b)
        .or((got.len() != want.len()).then_some(got.len().min(want.len())))
}

/// (a) Four sends queued at once (1 MiB, 10 B, 3 MiB, 7 B) to a slow reader through 4 KiB
/// buffers: each completes whole, and the peer sees them one after the other, in order.
#[test]
fn queued_sends_go_out_whole_and_in_order() {
    let _serial = serial();
    let port = Iocp::new().unwrap();
    let (ours, theirs) = small_buffered_pair();
    let ours = port.add_handle(ours, 1).unwrap();
    let sizes = [1 << 20, 10, 3 << 20, 7];
    let bufs: Vec<Vec<u8>> = sizes
        .iter()
        .enumerate()
        .map(|(k, &n)| bytes_of(k, n))
        .collect();
    let want: Vec<u8> = bufs.concat();
    let total = want.len();
    let reader = thread::spawn(move || slow_read(theirs, Duration::from_millis(200), total));
    let ids: Vec<OpId> = bufs.iter().map(|b| port.send(&ours, b.clone())).collect();

    let mut done = completions(&port, &ids);
    for (k, id) in ids.iter().enumerate() {
        let c = done.get_mut(id).unwrap();
        assert_eq!(c.result().ok(), Some(sizes[k]), "send {k}: {c:?}");
        assert_eq!(
            c.take_buffer().as_deref(),
            Some(&bufs[k][..]),
            "send {k}'s buffer"
        );
    }
    let got = reader.join().unwrap();
    if let Some(i) = first_difference(&got, &want) {
        panic!(
            "the peer's byte {i} (of {}, {} expected) is not the byte sent there",
            got.len(),
            want.len()
        );
    }
    drop(ours);
    assert_all_reclaimed(&port);
}

/// (b) Three receives queued, then the data written in three chunks, one at a time: the first
/// receive gets the first chunk, the second the second, the third the third.
#[test]
fn queued_receives_fill_in_order() {
    let _serial = serial();
    let port = Iocp::new().unwrap();
    let (ours, mut theirs) = common::pair(&port, each_ip_v4(), 1);
    let ids: Vec<OpId> = (0..3)
        .map(|_| port.recv(&ours, Vec::with_capacity(1000)))
        .collect();
    let chunks: Vec<Vec<u8>> = [100, 200, 300]
        .iter()
        .enumerate()
        .map(|(k, &n)| bytes_of(k, n))
        .collect();
    let writer = {
        let chunks = chunks.clone();
        thread::spawn(move || {
            for chunk in &chunks {
                // Apart enough that each chunk is taken by one receive before the next comes.
                thread::sleep(Duration::from_millis(100));
                theirs.write_all(chunk).unwrap();
            }
            theirs
        })
    };
    let mut done = completions(&port, &ids);
    let got: Vec<Vec<u8>> = ids
        .iter()
        .map(|id| {
            let c = done.get_mut(id).unwrap();
            assert!(c.result().is_ok(), "{c:?}");
            c.take_buffer().unwrap()
        })
        .collect();
    let _theirs = writer.join().unwrap();
    let lens: Vec<usize> = got.iter().map(Vec::len).collect();
    assert!(
        got.concat() == chunks.concat(),
        "the receives, in submission order, do not hold the stream (lengths {lens:?})"
    );
    for (k, (g, w)) in got.iter().zip(&chunks).enumerate() {
        assert!(
            g == w,
            "receive {k} does not hold chunk {k} (lengths {lens:?})"
        );
    }
    drop(ours);
    assert_all_reclaimed(&port);
}

/// (c) The middle one of three queued sends is cancelled while the first waits for the slow
/// reader: it completes cancelled, with 0 bytes and its buffer, and the peer sees the first and
/// the third, whole and in order.
#[test]
fn cancelled_middle_send_never_goes_out() {
    let _serial = serial();
    let port = Iocp::new().unwrap();
    let (ours, theirs) = small_buffered_pair();
    let ours = port.add_handle(ours, 1).unwrap();
    let bufs = [
        bytes_of(0, 1 << 20),
        bytes_of(1, 64 << 10),
        bytes_of(2, 100_000),
    ];
    let want = [&bufs[0][..], &bufs[2][..]].concat();
    let total = want.len();
    let reader = thread::spawn(move || slow_read(theirs, Duration::from_millis(300), total));
    let ids: Vec<OpId> = bufs.iter().map(|b| port.send(&ours, b.clone())).collect();
    thread::sleep(Duration::from_millis(50));
    port.cancel(ids[1]).expect("the middle send is in flight");

    let mut done = completions(&port, &ids);
    let c = done.get_mut(&ids[1]).unwrap();
    assert!(c.is_cancelled(), "the middle send: {c:?}");
    assert_eq!(c.bytes_transferred(), 0, "the middle send sent nothing");
    assert_eq!(c.take_buffer().as_deref(), Some(&bufs[1][..]));
    for k in [0, 2] {
        let c = &done[&ids[k]];
        assert_eq!(c.result().ok(), Some(bufs[k].len()), "send {k}: {c:?}");
    }
    let got = reader.join().unwrap();
    if let Some(i) = first_difference(&got, &want) {
        panic!(
            "the peer's byte {i} (of {}, {} expected) is not the byte of the first and third sends",
            got.len(),
            want.len()
        );
    }
    drop(ours);
    assert_all_reclaimed(&port);
}

/// (d) The handle is dropped with three sends and three receives queued, while the peer has
/// read part of the first send: every operation completes exactly once, cancelled, with its
/// buffer; the sends behind the first and every receive move nothing; the peer's bytes are a
/// prefix of the first send; no record is left.
#[test]
fn dropping_the_handle_ends_queued_operations_once() {
    let _serial = serial();
    let port = Iocp::new().unwrap();
    let (ours, mut theirs) = small_buffered_pair();
    let ours = port.add_handle(ours, 1).unwrap();
    let sends: Vec<Vec<u8>> = (0..3).map(|k| bytes_of(k, 8 << 20)).collect();
    let mut ids: Vec<OpId> = sends.iter().map(|b| port.send(&ours, b.clone())).collect();
    ids.extend((0..3).map(|_| port.recv(&ours, Vec::with_capacity(100))));
    // Dequeue briefly so the first operations reach the kernel, then read what arrived of the
    // first send: space frees up while the later sends wait.
    assert!(
        port.get_completion(Some(Duration::from_millis(50)))
            .is_err()
    );
    let mut got = vec![0; 256 << 10];
    let n = theirs.read(&mut got).unwrap();
    got.truncate(n);
    thread::sleep(Duration::from_millis(50));
    drop(ours);

    let mut done = completions(&port, &ids);
    for (k, id) in ids.iter().enumerate() {
        let c = done.get_mut(id).unwrap();
        assert!(c.is_cancelled(), "operation {k}: {c:?}: {:?}", c.result());
        if k > 0 {
            assert_eq!(
                c.bytes_transferred(),
                0,
                "operation {k} moved nothing: {c:?}"
            );
        }
        if k < 3 {
            assert_eq!(c.take_buffer().as_deref(), Some(&sends[k][..]), "send {k}");
        } else {
            assert_eq!(c.take_buffer().map(|b| b.capacity() >= 100), Some(true));
        }
    }
    let sent = done[&ids[0]].bytes_transferred();
    theirs
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let mut rest = Vec::new();
    let _ = theirs.read_to_end(&mut rest); // EOF, or a reset: the unsent rest was discarded
    got.extend_from_slice(&rest);
    assert!(
        got.len() <= sent,
        "the peer got {} bytes, {sent} sent",
        got.len()
    );
    if let Some(i) = first_difference(&got, &sends[0][..got.len()]) {
        panic!("the peer's byte {i} is not the first send's byte {i}");
    }
    assert_all_reclaimed(&port);
}

/// Dropping the port with operations queued behind others on a handle that stays open: every
/// record is reclaimed, and closing the handle afterwards touches none of them.
#[test]
fn dropping_the_port_reclaims_queued_operations() {
    let _serial = serial();
    let port = Iocp::new().unwrap();
    let (ours, _theirs) = small_buffered_pair();
    let ours = port.add_handle(ours, 1).unwrap();
    for k in 0..3 {
        port.send(&ours, bytes_of(k, 8 << 20));
        port.recv(&ours, Vec::with_capacity(100));
    }
    assert!(
        port.get_completion(Some(Duration::from_millis(50)))
            .is_err()
    );
    assert_eq!(port.operations_in_flight(), 6);
    drop(port);
    assert_eq!(proactor::live_operations(), 0);
    drop(ours);
    assert_eq!(proactor::live_operations(), 0);
}
