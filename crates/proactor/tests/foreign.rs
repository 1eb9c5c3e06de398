//! Operations on handles that another completion port owns: the low-order-bit event path.
#![cfg(windows)]

mod common;
mod win_owner;

use std::{
    io::{Read, Write},
    os::windows::io::AsSocket,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    thread,
    time::Duration,
};

use common::{next_of, pair};
use proactor::{
    Iocp, OpKind,
    windows::{Foreign, IocpExt},
};
use win_owner::OwnerRecv;

/// A port standing for the runtime that owns a socket, with a thread dequeuing it and
/// counting every packet it receives.
struct Runtime {
    port: Arc<Iocp>,
    packets: Arc<AtomicUsize>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Runtime {
    fn new() -> Runtime {
        let port = Arc::new(Iocp::new().unwrap());
        let packets = Arc::new(AtomicUsize::new(0));
        let thread = {
            let (port, packets) = (port.clone(), packets.clone());
            thread::spawn(move || {
                while let Ok(c) = port.get_completion(Some(Duration::from_secs(30))) {
                    if c.context() == usize::MAX {
                        return;
                    }
                    packets.fetch_add(1, Ordering::SeqCst);
                }
            })
        };
        Runtime {
            port,
            packets,
            thread: Some(thread),
        }
    }

    fn packets(&self) -> usize {
        self.packets.load(Ordering::SeqCst)
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        let _ = self.port.post(usize::MAX, 0);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[test]
fn ioctl_and_receive_on_a_socket_another_port_owns_complete_here_only() {
    let runtime = Runtime::new();
    let (owned, mut peer) = pair(&runtime.port, common::each_ip_v4(), 1);
    let port = Iocp::new().unwrap();
    let borrowed = port
        .add_handle(Foreign::socket(owned.as_socket()), 7)
        .unwrap();

    let ioctl = port.keepalive(
        &borrowed,
        true,
        Duration::from_secs(60),
        Duration::from_secs(1),
    );
    let mut c = next_of(&port, OpKind::Ioctl);
    assert_eq!((c.id(), c.context()), (ioctl, 7));
    c.result().unwrap();
    assert_eq!(c.take_ioctl().unwrap().0.len(), 12);

    let recv = port.recv(&borrowed, Vec::with_capacity(64));
    thread::sleep(Duration::from_millis(100)); // pending: nothing has been sent yet
    peer.write_all(b"through the event").unwrap();
    let mut c = next_of(&port, OpKind::Recv);
    assert_eq!((c.id(), c.context()), (recv, 7));
    assert_eq!(c.result().unwrap(), 17);
    assert_eq!(c.take_buffer().unwrap(), b"through the event");

    port.send(&borrowed, b"reply".to_vec());
    assert_eq!(next_of(&port, OpKind::Send).result().unwrap(), 5);
    let mut got = [0u8; 5];
    peer.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"reply");

    thread::sleep(Duration::from_millis(300));
    assert_eq!(runtime.packets(), 0, "the owning port received no packet");
    assert_eq!(port.operations_in_flight(), 0);
}

#[test]
fn a_pending_address_list_change_on_a_foreign_socket_can_be_cancelled() {
    let runtime = Runtime::new();
    let (owned, _peer) = pair(&runtime.port, common::each_ip_v4(), 1);
    let port = Iocp::new().unwrap();
    let borrowed = port
        .add_handle(Foreign::socket(owned.as_socket()), 3)
        .unwrap();
    let id = port.address_list_change(&borrowed);
    assert!(
        port.get_completion(Some(Duration::from_millis(200)))
            .is_err(),
        "pending"
    );
    port.cancel(id).unwrap();
    let c = next_of(&port, OpKind::Ioctl);
    assert_eq!(c.id(), id);
    assert!(c.is_cancelled(), "{c:?}");
    thread::sleep(Duration::from_millis(200));
    assert_eq!(runtime.packets(), 0);
}

#[test]
fn dropping_the_foreign_handle_cancels_ours_and_not_the_owners() {
    let runtime = Runtime::new();
    let (owned, mut peer) = pair(&runtime.port, common::each_ip_v4(), 1);
    let port = Iocp::new().unwrap();
    let borrowed = port
        .add_handle(Foreign::socket(owned.as_socket()), 3)
        .unwrap();
    // The owner's own receive, pending on its port.
    runtime.port.recv(&owned, Vec::with_capacity(16));
    port.readable(&borrowed);
    thread::sleep(Duration::from_millis(100));
    drop(borrowed);
    let c = next_of(&port, OpKind::Readable);
    assert!(c.is_cancelled(), "ours is cancelled: {c:?}");
    assert_eq!(runtime.packets(), 0, "the owner's receive is still pending");
    peer.write_all(b"x").unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while runtime.packets() == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the owner's receive completes normally"
        );
        thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn an_immediate_completion_on_a_foreign_socket_is_delivered() {
    let runtime = Runtime::new();
    let (owned, mut peer) = pair(&runtime.port, common::each_ip_v4(), 1);
    peer.write_all(b"already here").unwrap();
    thread::sleep(Duration::from_millis(100));
    let port = Iocp::new().unwrap();
    let borrowed = port
        .add_handle(Foreign::socket(owned.as_socket()), 4)
        .unwrap();
    port.recv(&borrowed, Vec::with_capacity(64));
    let mut c = next_of(&port, OpKind::Recv);
    assert_eq!(c.take_buffer().unwrap(), b"already here");
    thread::sleep(Duration::from_millis(200));
    assert_eq!(runtime.packets(), 0);
}

#[test]
fn dropping_the_port_with_a_foreign_operation_pending_is_safe() {
    let runtime = Runtime::new();
    let (owned, mut peer) = pair(&runtime.port, common::each_ip_v4(), 1);
    {
        let port = Iocp::new().unwrap();
        let borrowed = port
            .add_handle(Foreign::socket(owned.as_socket()), 5)
            .unwrap();
        port.recv(&borrowed, Vec::with_capacity(64));
        port.address_list_change(&borrowed);
        assert_eq!(port.operations_in_flight(), 2);
        drop(port); // cancels and reclaims both, the handle still borrowed
        drop(borrowed);
    }
    // Data sent afterwards reaches nobody's stale OVERLAPPED: the owner can still read it.
    peer.write_all(b"later").unwrap();
    let mut buf = [0u8; 5];
    owned.set_nonblocking(false).unwrap();
    (&*owned).read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"later");
    thread::sleep(Duration::from_millis(200));
    assert_eq!(runtime.packets(), 0);
}

/// A connected pair of plain std streams, neither associated with any port: `owned` stands for
/// a runtime's socket, `peer` for the remote end.
fn raw_pair() -> (std::net::TcpStream, std::net::TcpStream) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let peer = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (owned, _) = l.accept().unwrap();
    (owned, peer)
}

#[test]
fn cancel_all_on_a_foreign_socket_cancels_ours_and_not_the_owners() {
    let (owned, mut peer) = raw_pair();
    // The owner's receive, issued directly with its own OVERLAPPED and event.
    let owner = OwnerRecv::start(&owned);
    let port = Iocp::new().unwrap();
    let borrowed = port
        .add_handle(Foreign::socket(owned.as_socket()), 9)
        .unwrap();
    let ours = port.recv(&borrowed, Vec::with_capacity(16));
    thread::sleep(Duration::from_millis(100));
    assert!(owner.pending());

    port.cancel_all(&borrowed).unwrap();
    let c = next_of(&port, OpKind::Recv);
    assert_eq!(c.id(), ours);
    assert!(c.is_cancelled(), "ours is cancelled: {c:?}");
    thread::sleep(Duration::from_millis(200));
    assert!(
        owner.pending(),
        "the owner's receive is untouched by cancel_all"
    );

    peer.write_all(b"owner").unwrap();
    assert_eq!(owner.wait(20_000).unwrap(), b"owner");
    assert_eq!(port.operations_in_flight(), 0);
}

/// One pooled receive on `conn` of `msg`, which `peer` sends.
fn pooled_receive<T: proactor::Associate>(
    port: &proactor::LocalPort,
    conn: &proactor::LocalHandle<T>,
    peer: &mut std::net::TcpStream,
    msg: &[u8],
) {
    port.recv_pooled(conn);
    peer.write_all(msg).unwrap();
    let mut c = common::next(port);
    assert_eq!(c.result().unwrap(), msg.len());
    assert_eq!(&c.take_pooled().unwrap()[..], msg);
}

/// Found by review: a pooled receive on a borrowed socket set it non-blocking (`FIONBIO`) and
/// left it so (the owner's blocking reads failed with `WSAEWOULDBLOCK`), and a receive that
/// does not wait, made without changing the mode, races the owner's own reads (a readiness
/// the owner's read made stale blocked the port's thread in `recv`). Pooled receive on a
/// socket another port owns is refused, `Unsupported`, both kinds; a receive with a buffer
/// works, and the owner's socket is untouched.
#[test]
fn a_pooled_receive_on_a_foreign_socket_is_refused_and_leaves_it_alone() {
    let (owned, mut peer) = raw_pair();
    let port = proactor::LocalPort::with_pool(4, 4096).unwrap();
    let borrowed = port
        .add_handle(Foreign::socket(owned.as_socket()), 1)
        .unwrap();
    for multishot in [false, true] {
        let id = if multishot {
            port.recv_multishot(&borrowed)
        } else {
            port.recv_pooled(&borrowed)
        };
        let c = common::next(&port);
        assert_eq!((c.id(), c.context()), (id, 1));
        let e = c.result().unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::Unsupported, "{e}");
    }
    port.recv(&borrowed, Vec::with_capacity(16));
    peer.write_all(b"with a buffer").unwrap();
    let mut c = common::next(&port);
    assert_eq!(c.take_buffer().unwrap(), b"with a buffer");
    drop(borrowed);
    let writer = thread::spawn(move || {
        thread::sleep(Duration::from_millis(300));
        peer.write_all(b"later").unwrap();
        peer
    });
    let mut buf = [0u8; 16];
    let got = (&owned).read(&mut buf); // the owner's blocking read waits for the data
    let _peer = writer.join().unwrap();
    assert_eq!(&buf[..got.expect("a blocking read waits")], b"later");
}

/// A pooled receive leaves the program's own socket as it was too: a blocking write and read
/// through the handle still wait instead of failing with `WSAEWOULDBLOCK`.
#[test]
fn a_pooled_receive_leaves_an_owned_socket_blocking() {
    let (owned, mut peer) = raw_pair();
    let port = proactor::LocalPort::with_pool(4, 4096).unwrap();
    let conn = port.add_handle(owned, 1).unwrap();
    pooled_receive(&port, &conn, &mut peer, b"x");
    let writer = thread::spawn(move || {
        thread::sleep(Duration::from_millis(300));
        peer.write_all(b"late").unwrap();
        peer
    });
    let mut buf = [0u8; 8];
    let got = conn.get_ref().read(&mut buf);
    let _peer = writer.join().unwrap();
    assert_eq!(&buf[..got.expect("a blocking read waits")], b"late");
}
