//! UDP: datagram round trips with source addresses, truncation, over IPv4 and IPv6.
#![cfg(any(windows, target_os = "linux"))]

mod common;

use std::{
    io,
    net::{SocketAddr, UdpSocket},
    time::Duration,
};

use common::{each_ip, next_of};
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
