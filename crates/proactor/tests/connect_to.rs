//! `Iocp::connect_to`: a connection from a std address, with no socket2 in the caller's code.
#![cfg(any(windows, target_os = "linux"))]

mod common;

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener},
};

use common::{each_ip, next_of};
use proactor::{Iocp, OpKind};

#[test]
fn connect_to_an_address_then_echo() {
    each_ip(|ip| {
        let port = Iocp::new().unwrap();
        let listener = TcpListener::bind(SocketAddr::new(ip, 0)).unwrap();
        let (conn, id) = port.connect_to(listener.local_addr().unwrap(), 9).unwrap();
        // The connect completes from the listen backlog; accept after (io_uring batches the
        // submission until this thread enters the port).
        let c = next_of(&port, OpKind::Connect);
        assert_eq!((c.id(), c.context()), (id, 9));
        c.result().unwrap();
        let (mut theirs, peer) = listener.accept().unwrap();
        assert_eq!(
            conn.local_addr().unwrap(),
            peer,
            "the stream is the connected socket"
        );
        port.send(&conn, b"ping".to_vec());
        assert_eq!(next_of(&port, OpKind::Send).result().unwrap(), 4);
        let mut got = [0; 4];
        theirs.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"ping");
        theirs.write_all(b"pong").unwrap();
        port.recv(&conn, Vec::with_capacity(8));
        assert_eq!(next_of(&port, OpKind::Recv).take_buffer().unwrap(), b"pong");
    });
}

#[test]
fn connect_to_a_closed_port_is_refused() {
    let port = Iocp::new().unwrap();
    let addr = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let (_conn, _) = port.connect_to(addr, 1).unwrap();
    let err = next_of(&port, OpKind::Connect).result().unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");
}
