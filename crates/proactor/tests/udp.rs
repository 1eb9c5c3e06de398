//! UDP: datagram round trips with source addresses, truncation, over IPv4 and IPv6.
#![cfg(any(windows, target_os = "linux"))]

mod common;

use std::{
    io,
    net::{SocketAddr, UdpSocket},
    time::Duration,
};

use common::{each_ip, next, next_of};
use proactor::{Iocp, OpKind};

#[test]
fn datagrams_round_trip_with_their_source_addresses() {
    each_ip(|ip| {
        let port = Iocp::new().unwrap();
        let ours = port
            .add_handle(UdpSocket::bind(SocketAddr::new(ip, 0)).unwrap(), 4)
            .unwrap();
        let theirs = UdpSocket::bind(SocketAddr::new(ip, 0)).unwrap();
        theirs.set_read_timeout(common::WAIT).unwrap();
        let id = port.recv_from(&ours, Vec::with_capacity(1500));
        theirs
            .send_to(b"datagram one", ours.local_addr().unwrap())
            .unwrap();
        let mut c = next_of(&port, OpKind::RecvFrom);
        assert_eq!((c.id(), c.context(), c.result().unwrap()), (id, 4, 12));
        assert_eq!(c.peer_addr(), Some(theirs.local_addr().unwrap()));
        assert_eq!(c.take_buffer().unwrap(), b"datagram one");

        port.send_to(&ours, b"reply".to_vec(), theirs.local_addr().unwrap());
        let mut c = next_of(&port, OpKind::SendTo);
        assert_eq!(c.result().unwrap(), 5);
        assert_eq!(c.take_buffer().unwrap(), b"reply");
        let mut buf = [0u8; 16];
        let (n, from) = theirs.recv_from(&mut buf).unwrap();
        assert_eq!(
            (&buf[..n], from),
            (&b"reply"[..], ours.local_addr().unwrap())
        );
    });
}

#[test]
fn a_truncated_datagram_is_an_error_that_keeps_its_bytes_and_source() {
    let port = Iocp::new().unwrap();
    let ours = port
        .add_handle(UdpSocket::bind("127.0.0.1:0").unwrap(), 0)
        .unwrap();
    let theirs = UdpSocket::bind("127.0.0.1:0").unwrap();
    port.recv_from(&ours, Vec::with_capacity(4));
    theirs
        .send_to(b"longer than four", ours.local_addr().unwrap())
        .unwrap();
    let mut c = next_of(&port, OpKind::RecvFrom);
    let err = c.result().unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
    assert!(proactor::is_truncated(&err), "{err}");
    let code = proactor::raw_os_error(&err).unwrap();
    assert_eq!(
        code,
        if cfg!(windows) { 10040 } else { 90 },
        "WSAEMSGSIZE / EMSGSIZE"
    );
    assert_eq!(c.bytes_transferred(), 4, "the byte count is kept");
    assert_eq!(c.take_buffer().unwrap(), b"long");
    assert_eq!(c.peer_addr(), Some(theirs.local_addr().unwrap()));
    // The socket still works.
    port.recv_from(&ours, Vec::with_capacity(64));
    theirs.send_to(b"next", ours.local_addr().unwrap()).unwrap();
    assert_eq!(
        next_of(&port, OpKind::RecvFrom).take_buffer().unwrap(),
        b"next"
    );
}

#[test]
fn a_send_to_a_closed_port_does_not_break_the_next_receive() {
    // On Windows an ICMP port-unreachable would fail the next recv_from with WSAECONNRESET
    // unless SIO_UDP_CONNRESET is off (proactor turns it off when the socket is added).
    let port = Iocp::new().unwrap();
    let ours = port
        .add_handle(UdpSocket::bind("127.0.0.1:0").unwrap(), 0)
        .unwrap();
    let closed = UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    port.send_to(&ours, b"nobody".to_vec(), closed);
    next_of(&port, OpKind::SendTo).result().unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let theirs = UdpSocket::bind("127.0.0.1:0").unwrap();
    port.recv_from(&ours, Vec::with_capacity(64));
    theirs
        .send_to(b"still fine", ours.local_addr().unwrap())
        .unwrap();
    let mut c = next_of(&port, OpKind::RecvFrom);
    c.result()
        .expect("no reset from the earlier unreachable port");
    assert_eq!(c.take_buffer().unwrap(), b"still fine");
}

/// Found by review (helper 46): on Windows `readable` was a zero-byte receive, which on a
/// datagram socket takes the datagram (cut to nothing) and drops it. It must only say that
/// one waits, whether it was pending when the datagram came or found it waiting; the next
/// receive gets it whole, with its source (on Linux it is a poll).
#[test]
fn readable_on_a_datagram_socket_leaves_the_datagram() {
    let port = Iocp::new().unwrap();
    let ours = port
        .add_handle(UdpSocket::bind("127.0.0.1:0").unwrap(), 0)
        .unwrap();
    let theirs = UdpSocket::bind("127.0.0.1:0").unwrap();
    let to = ours.local_addr().unwrap();
    for pending_first in [true, false] {
        let datagram: &[u8] = if pending_first { b"first" } else { b"second" };
        if pending_first {
            port.readable(&ours);
            std::thread::sleep(Duration::from_millis(50));
            theirs.send_to(datagram, to).unwrap();
        } else {
            theirs.send_to(datagram, to).unwrap();
            std::thread::sleep(Duration::from_millis(50));
            port.readable(&ours);
        }
        let c = next_of(&port, OpKind::Readable);
        assert_eq!(c.result().unwrap(), 0, "pending first: {pending_first}");
        port.recv_from(&ours, Vec::with_capacity(64));
        let mut c = port
            .get_completion(Some(Duration::from_secs(2)))
            .unwrap_or_else(|_| panic!("the datagram is gone (pending first: {pending_first})"));
        assert_eq!(c.kind(), OpKind::RecvFrom);
        c.result().unwrap();
        assert_eq!(c.take_buffer().unwrap(), datagram);
        assert_eq!(c.peer_addr(), Some(theirs.local_addr().unwrap()));
    }
}

/// Found by review (helper 46): a datagram longer than a `recv` or `recv_vectored` buffer (a
/// connected datagram socket) is truncated as for `recv_from`, whether the receive was pending
/// when it came or found it waiting: an error for which `is_truncated` holds, with the bytes
/// that fit (Windows reported ERROR_MORE_DATA or WSAEMSGSIZE by timing; Linux cut it silently).
#[test]
fn a_datagram_cut_short_by_recv_is_truncated_whatever_the_timing() {
    let port = Iocp::new().unwrap();
    let (a, b) = connected_pair();
    let ours = port.add_handle(a, 0).unwrap();
    for vectored in [false, true] {
        for pending_first in [true, false] {
            let start = |port: &Iocp| match vectored {
                false => port.recv(&ours, Vec::with_capacity(4)),
                true => {
                    port.recv_vectored(&ours, vec![Vec::with_capacity(3), Vec::with_capacity(2)])
                }
            };
            if pending_first {
                start(&port);
                std::thread::sleep(Duration::from_millis(50));
                b.send(b"longer than five").unwrap();
            } else {
                b.send(b"longer than five").unwrap();
                std::thread::sleep(Duration::from_millis(50));
                start(&port);
            }
            let case = format!("vectored: {vectored}, pending first: {pending_first}");
            let mut c = next(&port);
            let err = c.result().expect_err(&case);
            assert!(proactor::is_truncated(&err), "{case}: {err:?}");
            assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{case}: {err}");
            let got = match vectored {
                false => c.take_buffer().unwrap(),
                true => c.take_buffers().unwrap().concat(),
            };
            let fit = if vectored { 5 } else { 4 };
            assert_eq!(got, &b"longer than five"[..fit], "{case}");
            assert_eq!(c.bytes_transferred(), fit, "{case}");
        }
    }
    // The socket still works.
    port.recv(&ours, Vec::with_capacity(64));
    b.send(b"next").unwrap();
    assert_eq!(next_of(&port, OpKind::Recv).take_buffer().unwrap(), b"next");
}

/// Found by review (helper 48): `read_at` on a connected datagram socket shares epoll's
/// receive path, which then passed `MSG_TRUNC` (for `recv`) and reported the datagram's real
/// length while the buffer held what fitted. Whatever each backend reports for a cut datagram
/// read this way, the count is what the buffer holds.
#[test]
fn read_at_on_a_datagram_socket_counts_what_the_buffer_holds() {
    let port = Iocp::new().unwrap();
    let (a, b) = connected_pair();
    let ours = port.add_handle(a, 0).unwrap();
    for waiting_first in [true, false] {
        if waiting_first {
            port.read_at(&ours, Vec::with_capacity(4), 0);
            std::thread::sleep(Duration::from_millis(50));
            b.send(b"longer than five").unwrap();
        } else {
            b.send(b"longer than five").unwrap();
            std::thread::sleep(Duration::from_millis(50));
            port.read_at(&ours, Vec::with_capacity(4), 0);
        }
        let mut c = next_of(&port, OpKind::Read);
        let (bytes, result) = (c.bytes_transferred(), format!("{:?}", c.result()));
        assert_eq!(c.take_buffer().unwrap(), b"long", "{result}");
        assert_eq!(bytes, 4, "waiting first: {waiting_first}: {result}");
    }
}

/// Found by review (helper 48): a scatter receive of a datagram over more than `IOV_MAX`
/// buffers (1,024 on Linux) cut the datagram at the first 1,024 though the buffers had room:
/// one call takes at most that many, and a datagram is one call. It is refused there, as such
/// a gather send of a datagram is, and on Windows too (which would take more, but Wine, which
/// passes them to the host's call, reported a cut datagram with bytes it never wrote). The
/// datagram stays for the next receive.
#[test]
fn a_datagram_scatter_receive_over_more_buffers_than_one_call_takes_is_refused() {
    let port = Iocp::new().unwrap();
    let (a, b) = connected_pair();
    let ours = port.add_handle(a, 0).unwrap();
    let datagram: Vec<u8> = (0..1100u32).map(|i| i as u8).collect();
    b.send(&datagram).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    for (count, refused) in [(1025, true), (1024, false)] {
        port.recv_vectored(&ours, (0..count).map(|_| Vec::with_capacity(2)).collect());
        let mut c = next_of(&port, OpKind::RecvVectored);
        if refused {
            let e = c.result().expect_err("refused");
            let code = if cfg!(windows) { 10040 } else { 90 }; // WSAEMSGSIZE / EMSGSIZE
            assert_eq!(proactor::raw_os_error(&e), Some(code), "{e}");
            assert!(!proactor::is_truncated(&e), "{e}");
            assert!(c.take_buffers().unwrap().iter().all(Vec::is_empty));
        } else {
            // The datagram stayed for this one, whole in its 2,048 bytes of room.
            assert_eq!(c.result().unwrap(), 1100);
            assert_eq!(c.take_buffers().unwrap().concat(), datagram);
        }
    }
}

/// Two UDP sockets on loopback, each connected to the other.
fn connected_pair() -> (UdpSocket, UdpSocket) {
    let a = UdpSocket::bind("127.0.0.1:0").unwrap();
    let b = UdpSocket::bind("127.0.0.1:0").unwrap();
    a.connect(b.local_addr().unwrap()).unwrap();
    b.connect(a.local_addr().unwrap()).unwrap();
    (a, b)
}
