//! The epoll backend's windows, forced with failpoints (issue 13, item 3): a cancel that has
//! taken an operation off its queue, and an attempt about to run on a queued operation, each
//! held while another thread drops the handle and a new connection takes the descriptor number.
//! The oracle: the new connection receives nothing it was not sent, every operation completes
//! exactly once, and `live_operations()` returns to 0.
//!
//! `PROACTOR_BACKEND=epoll cargo test -p proactor --features failpoints --test failpoints_epoll`;
//! on io_uring the points do not exist and the tests say so and stop.
#![cfg(all(feature = "failpoints", target_os = "linux"))]

mod common;

use std::{
    io::Read,
    net::{SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd,
    sync::{
        Arc, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst},
        mpsc,
    },
    thread,
    time::Duration,
};

use common::{WAIT, collect};
use proactor::Iocp;

/// The `fail` registry is global: one test at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A port on the epoll backend, or `None` (said on stderr) when the environment selects another.
fn epoll_port() -> Option<Arc<Iocp>> {
    let port = Iocp::new().unwrap();
    if port.backend() != "epoll" {
        eprintln!(
            "epoll failpoints: nothing to force on {} (run with PROACTOR_BACKEND=epoll)",
            port.backend()
        );
        return None;
    }
    Some(Arc::new(port))
}

/// The byte at `offset` of the stream tagged `tag`: its word is `tag << 48 | word offset`.
fn oracle(tag: u64, offset: u64) -> u8 {
    ((tag << 48) | (offset & !7)).to_le_bytes()[(offset & 7) as usize]
}

fn stream(tag: u64, len: usize) -> Vec<u8> {
    (0..len as u64).map(|o| oracle(tag, o)).collect()
}

/// A connection through `listener`: (server end, client end). The server end has a 4 KiB send
/// buffer and the client a 64 KiB receive buffer, so a large send waits for room.
fn connection(listener: &TcpListener) -> (TcpStream, TcpStream) {
    let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (server, _) = listener.accept().unwrap();
    socket2::SockRef::from(&server)
        .set_send_buffer_size(4096)
        .unwrap();
    socket2::SockRef::from(&client)
        .set_recv_buffer_size(64 * 1024)
        .unwrap();
    client.set_read_timeout(WAIT).unwrap();
    (server, client)
}

/// Reads `peer` to EOF on a thread, checking every byte against the stream tagged `tag`.
fn checking_reader(mut peer: TcpStream, tag: u64) -> thread::JoinHandle<Result<u64, String>> {
    thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        let mut offset = 0u64;
        loop {
            let n = match peer.read(&mut buf) {
                Ok(0) => return Ok(offset),
                Ok(n) => n,
                Err(e) => return Err(format!("read at {offset}: {e}")),
            };
            for (i, &b) in buf[..n].iter().enumerate() {
                let at = offset + i as u64;
                if b != oracle(tag, at) {
                    return Err(format!("byte {at}: {b:#04x} is not stream {tag}'s"));
                }
            }
            offset += n as u64;
        }
    })
}

/// Opens connections through `listener` until one of its ends has descriptor number `fd`;
/// returns both ends, the one with `fd` first.
fn reuse(listener: &TcpListener, fd: i32) -> (TcpStream, TcpStream) {
    let mut spare = Vec::new();
    for _ in 0..16 {
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        if client.as_raw_fd() == fd {
            return (client, server);
        }
        if server.as_raw_fd() == fd {
            return (server, client);
        }
        spare.push((client, server));
    }
    panic!("no new connection took descriptor {fd}");
}

/// Fails if either end of the connection received anything within 200 ms.
fn received_nothing(a: &TcpStream, b: &TcpStream) {
    for s in [a, b] {
        s.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let mut buf = [0u8; 4096];
        match (&*s).read(&mut buf) {
            Ok(n) => panic!(
                "the connection that reused the descriptor received {n} bytes it was never sent \
                 (first word {:x?})",
                buf.get(..8)
                    .map(|w| u64::from_le_bytes(w.try_into().unwrap()))
            ),
            Err(e) => assert!(
                matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ),
                "{e}"
            ),
        }
    }
}

/// A pause at a failpoint: `arrived` fires when a thread reaches it, which then waits for `go`.
struct Pause {
    arrived: mpsc::Receiver<()>,
    go: mpsc::Sender<()>,
}

/// Makes the next thread that reaches `name` (and only the first) pause there.
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

/// A cancel takes the second of two queued sends off its queue and is held there (no lock held)
/// while another thread drops the handle and a new connection takes the descriptor number. The
/// cancel must not send the operation's bytes: the new connection receives nothing, the peer
/// of the old one only the first send's bytes.
#[test]
fn a_cancel_held_while_the_descriptor_is_reused_sends_nothing() {
    let _serial = serial();
    let Some(port) = epoll_port() else { return };
    let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
    let (server, client) = connection(&listener);
    let fd = server.as_raw_fd();
    let ours = port.add_handle(server, 1).unwrap();
    let id1 = port.send(&ours, stream(1, 4 * 1024 * 1024));
    let second = stream(2, 64 * 1024);
    let id2 = port.send(&ours, second.clone());
    let reader = checking_reader(client, 1);
    thread::sleep(Duration::from_millis(300)); // the peer drains the socket: room to send

    let pause = pause_at("epoll::cancel");
    let canceller = {
        let port = port.clone();
        thread::spawn(move || port.cancel(id2))
    };
    pause
        .arrived
        .recv_timeout(WAIT.unwrap())
        .expect("the cancel reached epoll::cancel");
    drop(ours);
    let (reused, other) = reuse(&listener, fd);
    pause.go.send(()).unwrap();
    let cancelled = canceller.join().unwrap();
    fail::remove("epoll::cancel");

    received_nothing(&reused, &other);
    cancelled.expect("the second send was queued");
    let mut done = collect(&port, &[id1, id2]);
    assert!(done[0].is_cancelled(), "{:?}", done[0]);
    assert!(done[1].is_cancelled(), "{:?}", done[1]);
    assert_eq!(done[1].bytes_transferred(), 0);
    assert_eq!(done[1].take_buffer().unwrap(), second);
    let received = reader.join().unwrap().expect("only the first send's bytes");
    assert_eq!(received, done[0].bytes_transferred() as u64);
    drop(done);
    assert_eq!(port.operations_in_flight(), 0);
    drop(port);
    assert_eq!(proactor::live_operations(), 0);
}

/// A cancel never performs the operation: cancelling the second of two queued receives after
/// data arrived (no thread driving the port) makes no attempt, and the first receives the data.
#[test]
fn a_cancel_makes_no_attempt() {
    let _serial = serial();
    let Some(port) = epoll_port() else { return };
    let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
    let (server, mut client) = connection(&listener);
    let ours = port.add_handle(server, 1).unwrap();
    let id1 = port.recv(&ours, Vec::with_capacity(64));
    let id2 = port.recv(&ours, Vec::with_capacity(64));
    std::io::Write::write_all(&mut client, b"for the first").unwrap();
    thread::sleep(Duration::from_millis(100));

    let attempts = Arc::new(AtomicUsize::new(0));
    {
        let attempts = attempts.clone();
        fail::cfg_callback("epoll::attempt", move || {
            if thread::current().name() == Some("canceller") {
                attempts.fetch_add(1, SeqCst);
            }
        })
        .unwrap();
    }
    let cancelled = {
        let port = port.clone();
        thread::Builder::new()
            .name("canceller".into())
            .spawn(move || port.cancel(id2))
            .unwrap()
            .join()
            .unwrap()
    };
    fail::remove("epoll::attempt");
    assert_eq!(attempts.load(SeqCst), 0, "the cancel tried the operation");
    cancelled.expect("the second receive was queued");

    let mut done = collect(&port, &[id1, id2]);
    assert_eq!(done[0].take_buffer().unwrap(), b"for the first");
    assert!(done[1].is_cancelled(), "{:?}", done[1]);
    assert_eq!(done[1].take_buffer().unwrap(), b"");
    drop((done, ours, port));
    assert_eq!(proactor::live_operations(), 0);
}

/// A thread driving the port is held just before it continues a queued send; another thread
/// drops the handle meanwhile. The drop must wait for the attempt (the descriptor is closed only
/// when no attempt can use it), and once it returned, a new connection that takes the number
/// receives nothing.
#[test]
fn a_drop_waits_for_an_attempt_in_progress() {
    let _serial = serial();
    let Some(port) = epoll_port() else { return };
    let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
    let (server, client) = connection(&listener);
    let fd = server.as_raw_fd();
    let ours = port.add_handle(server, 1).unwrap();
    let id = port.send(&ours, stream(1, 4 * 1024 * 1024));
    let reader = checking_reader(client, 1);
    thread::sleep(Duration::from_millis(300)); // room to send: the next event continues it

    let pause = pause_at("epoll::attempt");
    let driver = {
        let port = port.clone();
        thread::spawn(move || port.get_completion(WAIT))
    };
    pause
        .arrived
        .recv_timeout(WAIT.unwrap())
        .expect("the driving thread reached epoll::attempt");
    let dropped = Arc::new(AtomicBool::new(false));
    let dropper = {
        let dropped = dropped.clone();
        thread::spawn(move || {
            drop(ours);
            dropped.store(true, SeqCst);
        })
    };
    thread::sleep(Duration::from_millis(200));
    assert!(
        !dropped.load(SeqCst),
        "the handle was closed while an attempt on it was about to run"
    );
    pause.go.send(()).unwrap();
    dropper.join().unwrap();
    fail::remove("epoll::attempt");
    let (reused, other) = reuse(&listener, fd);

    let c = driver.join().unwrap().expect("the send's completion");
    assert_eq!(c.id(), id);
    assert!(c.is_cancelled(), "{c:?}");
    received_nothing(&reused, &other);
    let received = reader.join().unwrap().expect("only the send's bytes");
    assert_eq!(received, c.bytes_transferred() as u64);
    assert!(
        port.get_completion(Some(Duration::from_millis(50)))
            .is_err(),
        "a second completion"
    );
    drop((c, port));
    assert_eq!(proactor::live_operations(), 0);
}
