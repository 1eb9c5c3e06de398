//! Receives after a short receive: whatever arrived with or after the data that came back short
//! (more data, the end of the stream, urgent data) is received, and nothing waits forever.
//!
//! The epoll backend does not try a receive on a TCP socket that a short receive drained until
//! epoll reports it readable again; each test queues its receive first and lets everything the
//! peer sends arrive before the port is driven, so the one merged epoll event is consumed by
//! the drive that makes the short receive. A backend that waited for another event would stall
//! here.
#![cfg(any(windows, target_os = "linux"))]

mod common;

use std::{io::Write, net::Shutdown, thread, time::Duration};

use common::{each_ip, next_of, pair};
use proactor::{Iocp, OpKind};

/// Long enough for everything sent to reach the receiving socket before the port is driven.
const SETTLE: Duration = Duration::from_millis(100);

/// Receives into a fresh 64 KiB buffer and returns what arrived.
fn receive(port: &Iocp, conn: &proactor::Handle<std::net::TcpStream>) -> Vec<u8> {
    port.recv(conn, Vec::with_capacity(65_536));
    let mut done = next_of(port, OpKind::Recv);
    let n = done.result().expect("receive");
    let buf = done.take_buffer().expect("buffer back");
    assert_eq!(buf.len(), n);
    buf
}

#[test]
fn data_after_a_short_receive_is_received() {
    each_ip(|ip| {
        let port = Iocp::new().unwrap();
        let (ours, mut theirs) = pair(&port, ip, 1);
        theirs.write_all(b"abc").unwrap();
        assert_eq!(receive(&port, &ours), b"abc"); // 3 of 65,536: short
        let later = thread::spawn(move || {
            thread::sleep(SETTLE);
            theirs.write_all(b"def").unwrap();
            theirs
        });
        assert_eq!(receive(&port, &ours), b"def");
        drop(later.join().unwrap());
    });
}

#[test]
fn data_and_the_end_of_the_stream_together_give_the_data_then_eof_every_time() {
    each_ip(|ip| {
        let port = Iocp::new().unwrap();
        let (ours, mut theirs) = pair(&port, ip, 1);
        port.recv(&ours, Vec::with_capacity(65_536)); // queued before anything arrives
        theirs.write_all(b"last words").unwrap();
        theirs.shutdown(Shutdown::Write).unwrap();
        thread::sleep(SETTLE);
        let mut done = next_of(&port, OpKind::Recv);
        assert_eq!(done.result().unwrap(), 10);
        assert_eq!(done.take_buffer().unwrap(), b"last words");
        // The FIN arrived with the data: no further event will come for it.
        assert_eq!(receive(&port, &ours), b"");
        assert_eq!(receive(&port, &ours), b"", "EOF again, at once");
    });
}

/// The reset arrives while the next receive is pending (the case every backend can test).
#[test]
fn a_reset_after_a_short_receive_fails_the_pending_receive_with_connection_reset() {
    each_ip(|ip| {
        let port = Iocp::new().unwrap();
        let (ours, mut theirs) = pair(&port, ip, 1);
        port.recv(&ours, Vec::with_capacity(65_536));
        theirs.write_all(b"abc").unwrap();
        thread::sleep(SETTLE);
        let mut done = next_of(&port, OpKind::Recv);
        assert_eq!(done.take_buffer().unwrap(), b"abc");
        port.recv(&ours, Vec::with_capacity(65_536)); // pending when the reset comes
        common::reset_on_drop(&theirs).unwrap();
        drop(theirs);
        thread::sleep(SETTLE);
        let err = next_of(&port, OpKind::Recv).result().unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset, "{err}");
    });
}

/// The reset arrives before the next receive is queued. Linux only: under Wine a reset with no
/// receive pending reads as a clean end of stream (Windows reports 10054), so the Windows backend
/// cannot be tested here (ARCHITECTURE.md, "Testing under Wine", item 3).
#[cfg(target_os = "linux")]
#[test]
fn a_reset_after_a_short_receive_is_connection_reset() {
    each_ip(|ip| {
        let port = Iocp::new().unwrap();
        let (ours, mut theirs) = pair(&port, ip, 1);
        port.recv(&ours, Vec::with_capacity(65_536));
        theirs.write_all(b"abc").unwrap();
        thread::sleep(SETTLE);
        let mut done = next_of(&port, OpKind::Recv);
        assert_eq!(done.take_buffer().unwrap(), b"abc");
        common::reset_on_drop(&theirs).unwrap();
        drop(theirs);
        thread::sleep(SETTLE);
        port.recv(&ours, Vec::with_capacity(65_536));
        let err = next_of(&port, OpKind::Recv).result().unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset, "{err}");
    });
}

/// Urgent data stops a receive at its mark with the bytes after it still queued.
#[cfg(target_os = "linux")]
#[test]
fn bytes_after_urgent_data_are_received() {
    each_ip(|ip| {
        let port = Iocp::new().unwrap();
        let (ours, mut theirs) = pair(&port, ip, 1);
        theirs.set_nodelay(true).unwrap();
        port.recv(&ours, Vec::with_capacity(65_536));
        theirs.write_all(b"ab").unwrap();
        socket2::SockRef::from(&theirs)
            .send_out_of_band(b"!")
            .unwrap();
        theirs.write_all(b"cd").unwrap();
        thread::sleep(SETTLE);
        let mut got = next_of(&port, OpKind::Recv).take_buffer().unwrap();
        while got.len() < 4 {
            got.extend(receive(&port, &ours));
        }
        // The urgent byte is out of band (SO_OOBINLINE is off): the stream is the rest.
        assert_eq!(got, b"abcd");
    });
}
