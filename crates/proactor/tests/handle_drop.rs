//! Dropping a handle with operations in flight: a send cut short by the drop reports exactly
//! what its peer got, and on Windows the object closes only once the port took back the
//! cancelled operations (so that none finds its handle closed under it: Wine's send then lost
//! its count, a CI failure of 2026-12-05).
#![cfg(any(windows, target_os = "linux"))]

mod common;

use std::{net::IpAddr, thread, time::Duration};

use common::{
    oracle::{Rng, check_stream, paced_reader, pattern, seeds},
    pair,
};
use proactor::{Iocp, OpKind};

/// A vectored send of three buffers, well over what the socket buffers hold, dropped while a
/// slow peer reads it: the completion's count (whole or cancelled) is exactly the peer's
/// stream, on every try. Under Wine the drop lands while Wine's send is resuming after the peer
/// made room, the race that lost the count.
#[test]
fn a_send_cut_short_by_a_drop_reports_what_the_peer_got() {
    // Natively a few: each try waits about 0.8 s for the orphaned socket's last bytes to get
    // through the peer's 4 KiB window (TCP's persist timer).
    let tries = if cfg!(windows) { 8 } else { 4 };
    let seed = seeds(1)[0];
    let mut rng = Rng::new(seed);
    let port = Iocp::new().unwrap();
    for attempt in 0..tries {
        let conn = attempt as u64;
        let ip = if attempt % 2 == 0 {
            IpAddr::from([127, 0, 0, 1])
        } else {
            IpAddr::from(std::net::Ipv6Addr::LOCALHOST)
        };
        let (ours, theirs) = pair(&port, ip, attempt);
        socket2::SockRef::from(&*ours)
            .set_send_buffer_size(4096)
            .unwrap();
        socket2::SockRef::from(&theirs)
            .set_recv_buffer_size(4096)
            .unwrap();
        let reader = paced_reader(theirs, rng.fork());
        // Far more than the 4 KiB buffers hold; smaller under Wine, where each of the
        // peer's reads costs a round trip to the wineserver.
        let most = if cfg!(windows) { 150_000 } else { 400_000 };
        let sizes = [rng.range(1, most), rng.range(1, most), most];
        let mut bufs = Vec::new();
        let mut at = 0u64;
        for len in sizes {
            bufs.push(pattern(conn, at, len));
            at += len as u64;
        }
        let total = at as usize;
        let id = port.send_vectored(&ours, bufs);
        let pause = Duration::from_micros(rng.range(0, 20_000) as u64);
        // Another thread waits in the port meanwhile, as a server's workers do: under Wine the
        // send's resumption runs in a waiting thread, concurrently with the drop.
        let done = thread::scope(|s| {
            let waiter = s.spawn(|| port.get_completion(Some(Duration::from_secs(30))));
            thread::sleep(pause);
            drop(ours);
            waiter.join().expect("the waiting thread")
        });
        let done = done.unwrap();
        assert_eq!(
            (done.id(), done.kind()),
            (id, OpKind::SendVectored),
            "{done:?}"
        );
        let sent = done.bytes_transferred();
        match done.result() {
            Ok(n) => assert_eq!(n, total, "seed {seed}, try {attempt}: a whole send, cut"),
            Err(e) => assert!(
                proactor::is_cancelled(&e),
                "seed {seed}, try {attempt}: {e:?}"
            ),
        }
        let got = reader.join().expect("the peer's reader");
        if let Err(why) = check_stream(conn, &[(0, sent)], &got) {
            panic!(
                "seed {seed}, try {attempt}: the completion says {sent} of {total} bytes went, \
                 the peer got {}: {why}",
                got.len()
            );
        }
    }
    assert_eq!(port.operations_in_flight(), 0);
}

/// On Windows a dropped handle's socket stays open while its cancelled receive waits in the
/// port, and closes once it is dequeued: the peer sees the end of the stream only then. A
/// handle with nothing in flight closes at once.
#[cfg(windows)]
#[test]
fn a_dropped_socket_closes_once_the_port_took_back_its_operations() {
    use std::io::{ErrorKind, Read};

    let port = Iocp::new().unwrap();
    let ip = IpAddr::from([127, 0, 0, 1]);

    // Nothing in flight: closed by the drop itself.
    let (idle, mut theirs) = pair(&port, ip, 1);
    drop(idle);
    assert_end_of_stream(&mut theirs, "end of stream at once");

    // A receive in flight: open until its cancelled completion is dequeued.
    let (busy, mut theirs) = pair(&port, ip, 2);
    let id = port.recv(&busy, Vec::with_capacity(4096));
    drop(busy);
    theirs
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let early = theirs.read(&mut [0u8; 16]);
    assert!(
        matches!(&early, Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)),
        "the socket closed under its cancelled receive: {early:?}"
    );
    let done = port.get_completion(Some(Duration::from_secs(5))).unwrap();
    assert_eq!(done.id(), id);
    assert!(done.is_cancelled(), "{done:?}");
    assert_end_of_stream(&mut theirs, "closed once the port took the receive back");
    assert_eq!(port.operations_in_flight(), 0);
}

/// On Windows a dropped listener stops listening at once, though its accept is still in the
/// port: an accept moves no bytes, so its record keeps nothing open.
#[cfg(windows)]
#[test]
fn a_dropped_listener_stops_listening_at_once() {
    let port = Iocp::new().unwrap();
    let listener = port
        .add_handle(std::net::TcpListener::bind("127.0.0.1:0").unwrap(), 1)
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let id = port.accept(&listener);
    drop(listener);
    let refused = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5));
    assert!(refused.is_err(), "connected to a dropped listener");
    let done = port.get_completion(Some(Duration::from_secs(5))).unwrap();
    assert_eq!(done.id(), id);
    assert!(done.is_cancelled(), "{done:?}");
}

/// A `LocalPort`'s pooled receive waits through a readiness wait inside the port, which holds
/// nothing: once the cancelled receive is taken back the socket is closed, with no other call
/// into the port.
#[cfg(windows)]
#[test]
fn a_dropped_local_handle_closes_once_its_pooled_receive_is_taken_back() {
    let port = proactor::LocalPort::new().unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut theirs = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (ours, _) = listener.accept().unwrap();
    let ours = port.add_handle(ours, 1).unwrap();
    let id = port.recv_pooled(&ours);
    drop(ours);
    let done = port.get_completion(Some(Duration::from_secs(5))).unwrap();
    assert_eq!(done.id(), id);
    assert!(done.is_cancelled(), "{done:?}");
    assert_end_of_stream(&mut theirs, "the end of the stream");
}

/// The peer reads the end of the stream within 5 s (`why` says what closed it).
#[cfg(windows)]
fn assert_end_of_stream(theirs: &mut std::net::TcpStream, why: &str) {
    use std::io::Read;
    theirs
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    assert_eq!(theirs.read(&mut [0u8; 16]).unwrap(), 0, "{why}");
}
