//! Every operation's own user value (`Iocp::with_user`), handed back by its completion beside
//! the handle's context: on each kind of operation, and from several threads at once with no
//! bookkeeping between submission and completion.
#![cfg(any(windows, target_os = "linux"))]

mod common;

use std::{
    collections::HashMap,
    io::{Read, Write},
    net::{SocketAddr, TcpListener, UdpSocket},
    sync::{Arc, Mutex},
    thread,
};

use common::{next, next_of, pair};
use proactor::{Iocp, OpKind};

#[test]
fn every_operation_kind_hands_back_its_user_value() {
    let port = Iocp::new().unwrap();
    let ip = "127.0.0.1".parse().unwrap();
    let (ours, mut theirs) = pair(&port, ip, 5);

    let id = port.with_user(11).send(&ours, b"abc".to_vec());
    let c = next_of(&port, OpKind::Send);
    assert_eq!((c.id(), c.context(), c.user()), (id, 5, 11));
    let mut got = [0; 3];
    theirs.read_exact(&mut got).unwrap();

    port.with_user(12)
        .send_vectored(&ours, vec![b"d".to_vec(), b"ef".to_vec()]);
    assert_eq!(next_of(&port, OpKind::SendVectored).user(), 12);
    theirs.read_exact(&mut got).unwrap();

    theirs.write_all(b"xyz").unwrap();
    port.with_user(13).readable(&ours);
    assert_eq!(next_of(&port, OpKind::Readable).user(), 13);
    port.with_user(14).recv(&ours, Vec::with_capacity(1));
    let mut c = next_of(&port, OpKind::Recv);
    assert_eq!((c.user(), c.take_buffer().unwrap()), (14, b"x".to_vec()));
    port.with_user(15)
        .recv_vectored(&ours, vec![Vec::with_capacity(1), Vec::with_capacity(1)]);
    assert_eq!(next_of(&port, OpKind::RecvVectored).user(), 15);

    // A cancelled operation keeps its value too.
    let id = port.with_user(16).recv(&ours, Vec::with_capacity(8));
    port.cancel(id).unwrap();
    let c = next_of(&port, OpKind::Recv);
    assert!(c.is_cancelled(), "{c:?}");
    assert_eq!(c.user(), 16);

    // Accept and connect.
    let listener = port
        .add_handle(TcpListener::bind("127.0.0.1:0").unwrap(), 6)
        .unwrap();
    let addr = listener.local_addr().unwrap();
    port.with_user(17).accept(&listener);
    let (conn, _) = port.connect_to(addr, 7).unwrap();
    let mut users = HashMap::new();
    for _ in 0..2 {
        let c = next(&port);
        users.insert(c.kind(), (c.context(), c.user()));
    }
    assert_eq!(users[&OpKind::Accept], (6, 17));
    assert_eq!(
        users[&OpKind::Connect],
        (7, 0),
        "Iocp's own methods carry 0"
    );
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let socket = port.add_handle(socket, 8).unwrap();
    port.with_user(18).connect(&socket, addr);
    port.with_user(19).accept(&listener);
    let mut users = HashMap::new();
    for _ in 0..2 {
        let c = next(&port);
        c.result().unwrap();
        users.insert(c.kind(), c.user());
    }
    assert_eq!((users[&OpKind::Connect], users[&OpKind::Accept]), (18, 19));
    drop(conn);

    // Datagrams.
    let udp = port
        .add_handle(UdpSocket::bind("127.0.0.1:0").unwrap(), 9)
        .unwrap();
    let to: SocketAddr = udp.local_addr().unwrap();
    port.with_user(20).recv_from(&udp, Vec::with_capacity(16));
    port.with_user(21).send_to(&udp, b"dgram".to_vec(), to);
    let mut users = HashMap::new();
    for _ in 0..2 {
        let c = next(&port);
        users.insert(c.kind(), c.user());
    }
    assert_eq!((users[&OpKind::RecvFrom], users[&OpKind::SendTo]), (20, 21));

    // Files.
    let (file, _path) = common::overlapped_file(
        "user",
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true),
    );
    let file = port.add_handle(file, 10).unwrap();
    port.with_user(22).write_at(&file, b"data".to_vec(), 0);
    assert_eq!(next_of(&port, OpKind::Write).user(), 22);
    port.with_user(23).read_at(&file, Vec::with_capacity(4), 0);
    assert_eq!(next_of(&port, OpKind::Read).user(), 23);

    // A posted packet has none.
    port.post(1, 2).unwrap();
    assert_eq!(next_of(&port, OpKind::Post).user(), 0);
    assert_eq!(port.operations_in_flight(), 0);
}

/// Four threads submit and four dequeue, with nothing recorded between submission and
/// completion: each completion's user value names its own request, whichever thread gets it.
#[test]
fn user_values_route_completions_without_bookkeeping() {
    const PER_THREAD: usize = if cfg!(windows) { 1_000 } else { 5_000 };
    let port = Arc::new(Iocp::new().unwrap());
    let (file, _path) = common::overlapped_file(
        "user-threads",
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true),
    );
    let file = Arc::new(port.add_handle(file, 3).unwrap());
    let seen = Arc::new(Mutex::new(vec![false; 4 * PER_THREAD]));
    let dequeuers: Vec<_> = (0..4)
        .map(|_| {
            let (port, seen) = (port.clone(), seen.clone());
            thread::spawn(move || {
                loop {
                    let mut c = common::next(&port);
                    if c.kind() == OpKind::Post {
                        return;
                    }
                    let user = c.user();
                    // The write's one byte, at its own offset, is its request number's low byte.
                    assert_eq!(c.take_buffer().unwrap(), [user as u8], "user {user}");
                    let mut seen = seen.lock().unwrap();
                    assert!(!seen[user], "user {user} completed twice");
                    seen[user] = true;
                }
            })
        })
        .collect();
    let submitters: Vec<_> = (0..4)
        .map(|t| {
            let (port, file) = (port.clone(), file.clone());
            thread::spawn(move || {
                for i in 0..PER_THREAD {
                    let user = t * PER_THREAD + i;
                    port.with_user(user)
                        .write_at(&file, vec![user as u8], user as u64);
                }
            })
        })
        .collect();
    for s in submitters {
        s.join().unwrap();
    }
    while port.operations_in_flight() > 0 {
        thread::yield_now();
    }
    for _ in &dequeuers {
        port.post(0, 0).unwrap();
    }
    for d in dequeuers {
        d.join().unwrap();
    }
    assert!(
        seen.lock().unwrap().iter().all(|s| *s),
        "every request completed"
    );
}
