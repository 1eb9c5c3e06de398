//! A send on a datagram socket is one datagram, on both Linux backends (review of the Linux
//! backends, items 4 and 5): an empty send or gather send sends an empty datagram (the epoll
//! backend sent nothing), and a gather send of more buffers than one `sendmsg` takes
//! (`IOV_MAX`, 1,024) is refused with `EMSGSIZE` (it was split into several datagrams while
//! reporting success).
#![cfg(target_os = "linux")]

mod common;

use std::{net::UdpSocket, time::Duration};

use common::next;
use proactor::Iocp;

/// A connected pair: `a` (to be associated) sends to `b`, which reads with a short timeout.
fn connected() -> (UdpSocket, UdpSocket) {
    let a = UdpSocket::bind("127.0.0.1:0").unwrap();
    let b = UdpSocket::bind("127.0.0.1:0").unwrap();
    a.connect(b.local_addr().unwrap()).unwrap();
    b.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    (a, b)
}

#[test]
fn an_empty_send_sends_an_empty_datagram() {
    let port = Iocp::new().unwrap();
    let (a, b) = connected();
    let h = port.add_handle(a, 1).unwrap();
    let id = port.send(&h, Vec::new());
    let c = next(&port);
    assert_eq!((c.id(), c.result().unwrap()), (id, 0), "{c:?}");
    let mut buf = [0u8; 16];
    let r = b.recv(&mut buf);
    assert!(matches!(r, Ok(0)), "{}: peer got {r:?}", port.backend());
    let id = port.send_vectored(&h, vec![Vec::new(), Vec::new()]);
    let c = next(&port);
    assert_eq!((c.id(), c.result().unwrap()), (id, 0), "{c:?}");
    let r = b.recv(&mut buf);
    assert!(
        matches!(r, Ok(0)),
        "{}: peer got {r:?} (vectored)",
        port.backend()
    );
}

#[test]
fn a_gather_send_of_more_than_iov_max_buffers_is_refused_on_a_datagram_socket() {
    let port = Iocp::new().unwrap();
    let (a, b) = connected();
    let h = port.add_handle(a, 1).unwrap();
    let bufs: Vec<Vec<u8>> = (0..1500).map(|i| vec![i as u8; 4]).collect();
    let id = port.send_vectored(&h, bufs);
    let mut c = next(&port);
    assert_eq!(c.id(), id);
    let e = c
        .result()
        .expect_err("a message split in two was reported sent");
    assert_eq!(e.raw_os_error(), Some(libc::EMSGSIZE), "{e:?}");
    assert_eq!(
        c.take_buffers().unwrap().len(),
        1500,
        "the buffers come back"
    );
    let mut buf = [0u8; 65536];
    let r = b.recv(&mut buf);
    assert!(r.is_err(), "{}: the peer got {r:?}", port.backend());
    // IOV_MAX buffers are one datagram.
    let bufs: Vec<Vec<u8>> = (0..1024).map(|i| vec![i as u8; 4]).collect();
    let id = port.send_vectored(&h, bufs);
    let c = next(&port);
    assert_eq!((c.id(), c.result().unwrap()), (id, 4096));
    assert_eq!(b.recv(&mut buf).unwrap(), 4096);
}
