//! Unix-domain (`AF_UNIX`) listeners and streams on every backend: an accept on a listener of
//! `Iocp::bind_unix` (a `socket2::Socket` of `Domain::UNIX`) yields the connection and its
//! client's address through `Completion::take_accepted_socket`, and the connection then runs
//! receives and sends through the port.
//!
//! Windows has `AF_UNIX` from 10 1803; Wine 8 has none (`socket()` fails with
//! `WSAEAFNOSUPPORT`, 10047). Under Wine each test checks the documented error instead
//! (`Unsupported`, code 10047) and ends there: every other system must run the whole path.
#![cfg(any(windows, target_os = "linux"))]

mod common;

use std::{
    io::{self, Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    sync::atomic::{AtomicUsize, Ordering},
};

use common::{WAIT, next, next_of};
use proactor::{
    Handle, Iocp, OpKind,
    socket2::{Domain, SockAddr, Socket, Type},
};

/// A fresh socket path in the temporary directory, removed when dropped.
struct SocketPath(PathBuf);

impl SocketPath {
    fn new(name: &str) -> SocketPath {
        static N: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "proactor-{}-{}-{name}.sock",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_file(&path);
        SocketPath(path)
    }
}

impl Drop for SocketPath {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A listener of `Iocp::bind_unix` at `path`, or `None` under Wine 8, after checking the
/// documented error of a system without `AF_UNIX` from `bind_unix` and `connect_unix` both.
fn unix_listener(port: &Iocp, path: &Path, context: usize) -> Option<Handle<Socket>> {
    let err = match port.bind_unix(path, context) {
        Ok(listener) => return Some(listener),
        Err(e) => e,
    };
    assert!(
        cfg!(windows) && common::under_wine(),
        "only Wine 8 lacks AF_UNIX among the tested systems: {err}"
    );
    for e in [err, port.connect_unix(path, context).unwrap_err()] {
        assert_eq!(e.kind(), io::ErrorKind::Unsupported, "{e}");
        assert_eq!(
            proactor::raw_os_error(&e),
            Some(10047),
            "WSAEAFNOSUPPORT: {e}"
        );
    }
    None
}

/// The path of a Unix-domain address, without its terminating NUL; empty for an unnamed one.
fn path_of(addr: &SockAddr) -> Vec<u8> {
    assert!(addr.is_unix(), "an AF_UNIX address: {addr:?}");
    let len = addr.len() as usize;
    // SAFETY: a SockAddr holds `len` initialised bytes at `as_ptr`.
    let bytes = unsafe { std::slice::from_raw_parts(addr.as_ptr().cast::<u8>(), len) };
    let path = &bytes[2.min(len)..];
    path[..path.iter().position(|&b| b == 0).unwrap_or(path.len())].to_vec()
}

/// A client connected to the listener at `path`, bound first to `bind` if given.
fn client(path: &Path, bind: Option<&Path>) -> Socket {
    let client = Socket::new(Domain::UNIX, Type::STREAM, None).unwrap();
    if let Some(own) = bind {
        client
            .bind(&SockAddr::unix(own).unwrap())
            .expect("bind the client");
    }
    client
        .connect(&SockAddr::unix(path).unwrap())
        .expect("connect");
    client.set_read_timeout(WAIT).unwrap();
    client
}

/// The whole path: an accept on a Unix-domain listener yields the connection and the address
/// the client bound; a receive and a send through the port carry data both ways; the accept
/// is not mistaken for a TCP one.
#[test]
fn accept_receive_send_on_a_unix_domain_socket() {
    let port = Iocp::new().unwrap();
    let (path, client_path) = (SocketPath::new("server"), SocketPath::new("client"));
    let Some(listener) = unix_listener(&port, &path.0, 1) else {
        return;
    };
    let id = port.with_user(7).accept(&listener);
    let mut theirs = client(&path.0, Some(&client_path.0));
    let mut c = next_of(&port, OpKind::Accept);
    assert_eq!((c.id(), c.user(), c.context()), (id, 7, 1));
    c.result().expect("the accept succeeds");
    assert!(c.take_accepted().is_none(), "not a TCP connection");
    let (stream, peer) = c
        .take_accepted_socket()
        .expect("the Unix-domain connection");
    assert!(c.take_accepted_socket().is_none(), "taken once");
    assert_eq!(
        path_of(&peer),
        client_path.0.to_str().unwrap().as_bytes(),
        "the client's bound path"
    );
    let ours = port.add_handle(stream, 2).unwrap();

    theirs.write_all(b"over AF_UNIX").unwrap();
    port.recv(&ours, Vec::with_capacity(64));
    let mut r = next_of(&port, OpKind::Recv);
    assert_eq!(r.context(), 2);
    assert_eq!(r.take_buffer().unwrap(), b"over AF_UNIX");

    port.send(&ours, b"and back".to_vec());
    assert_eq!(next_of(&port, OpKind::Send).result().unwrap(), 8);
    let mut got = [0; 8];
    theirs.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"and back");

    // The client's close is a graceful end of stream.
    drop(theirs);
    port.recv(&ours, Vec::with_capacity(64));
    assert_eq!(next_of(&port, OpKind::Recv).result().unwrap(), 0);
    drop((ours, listener));
    assert_eq!(port.operations_in_flight(), 0);
}

/// A client that did not bind is accepted with an unnamed address (the family alone).
#[test]
fn an_unbound_client_has_an_unnamed_address() {
    let port = Iocp::new().unwrap();
    let path = SocketPath::new("unnamed");
    let Some(listener) = unix_listener(&port, &path.0, 1) else {
        return;
    };
    port.accept(&listener);
    let _theirs = client(&path.0, None);
    let mut c = next_of(&port, OpKind::Accept);
    c.result().expect("the accept succeeds");
    let (_stream, peer) = c
        .take_accepted_socket()
        .expect("the Unix-domain connection");
    assert_eq!(path_of(&peer), b"", "unnamed: {peer:?}");
}

/// A client of `Iocp::connect_unix` is associated and ready: its send reaches the accepted
/// stream, and the accepted stream's send reaches its receive.
#[test]
fn connect_unix_then_echo_through_the_port() {
    let port = Iocp::new().unwrap();
    let path = SocketPath::new("connect");
    let Some(listener) = unix_listener(&port, &path.0, 1) else {
        return;
    };
    port.accept(&listener);
    let client = port.connect_unix(&path.0, 5).expect("connect_unix");
    let mut c = next_of(&port, OpKind::Accept);
    let (stream, _) = c.take_accepted_socket().expect("the connection");
    let server = port.add_handle(stream, 6).unwrap();
    port.with_user(1).send(&client, b"ping".to_vec());
    port.with_user(2).recv(&server, Vec::with_capacity(8));
    let (mut sent, mut received) = (None, None);
    for _ in 0..2 {
        let mut c = next(&port);
        match (c.kind(), c.context(), c.user()) {
            (OpKind::Send, 5, 1) => sent = Some(c.result().unwrap()),
            (OpKind::Recv, 6, 2) => received = c.take_buffer(),
            _ => panic!("unexpected {c:?}"),
        }
    }
    assert_eq!(sent, Some(4));
    assert_eq!(received.as_deref(), Some(&b"ping"[..]));
    // A listener's path with nothing listening: an OS error, not a hang.
    drop((server, listener));
    let err = port.connect_unix(&path.0, 7).unwrap_err();
    assert!(
        matches!(
            err.kind(),
            io::ErrorKind::ConnectionRefused | io::ErrorKind::NotFound
        ),
        "{err:?}"
    );
}

/// Several accepts pending on one listener each get their own client.
#[test]
fn several_pending_accepts_each_take_one_client() {
    let port = Iocp::new().unwrap();
    let path = SocketPath::new("many");
    let Some(listener) = unix_listener(&port, &path.0, 1) else {
        return;
    };
    for user in 1..=3 {
        port.with_user(user).accept(&listener);
    }
    let clients: Vec<Socket> = (0..3).map(|_| client(&path.0, None)).collect();
    let mut users = Vec::new();
    let mut streams = Vec::new();
    for _ in 0..3 {
        let mut c = next_of(&port, OpKind::Accept);
        users.push(c.user());
        let (stream, _) = c.take_accepted_socket().expect("a connection");
        streams.push(port.add_handle(stream, 10 + streams.len()).unwrap());
    }
    users.sort();
    assert_eq!(users, [1, 2, 3]);
    // Each accepted stream is connected to one distinct client: what each client writes
    // arrives on exactly one of them.
    for (i, mut theirs) in clients.iter().enumerate() {
        theirs.write_all(&[i as u8]).unwrap();
    }
    let mut got = Vec::new();
    for ours in &streams {
        port.recv(ours, Vec::with_capacity(4));
        got.extend(next_of(&port, OpKind::Recv).take_buffer().unwrap());
    }
    got.sort();
    assert_eq!(got, [0, 1, 2]);
}

/// `take_accepted_socket` is the portable accessor for a TCP accept too: the stream as a
/// `socket2::Socket` and the client's IP address.
#[test]
fn take_accepted_socket_also_takes_a_tcp_connection() {
    let port = Iocp::new().unwrap();
    let listener = port
        .add_handle(
            TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).unwrap(),
            1,
        )
        .unwrap();
    port.accept(&listener);
    let mut theirs = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let mut c = next_of(&port, OpKind::Accept);
    let (stream, peer) = c.take_accepted_socket().expect("the TCP connection");
    assert!(c.take_accepted().is_none(), "taken once, whichever way");
    assert_eq!(peer.as_socket(), Some(theirs.local_addr().unwrap()));
    let ours = port.add_handle(stream, 2).unwrap();
    theirs.write_all(b"tcp").unwrap();
    port.recv(&ours, Vec::with_capacity(8));
    assert_eq!(next_of(&port, OpKind::Recv).take_buffer().unwrap(), b"tcp");
}

/// On Linux a `std` `UnixListener` works the same way, and `take_accepted_unix` still hands
/// over `std` types.
#[cfg(target_os = "linux")]
#[test]
fn a_std_unix_listener_through_take_accepted_socket() {
    use std::os::unix::net::{UnixListener, UnixStream};
    let port = Iocp::new().unwrap();
    let (path, client_path) = (SocketPath::new("std"), SocketPath::new("stdclient"));
    let listener = port
        .add_handle(UnixListener::bind(&path.0).unwrap(), 1)
        .unwrap();
    port.accept(&listener);
    let _named = client(&path.0, Some(&client_path.0));
    let mut c = next_of(&port, OpKind::Accept);
    let (_stream, peer) = c.take_accepted_socket().expect("the connection");
    assert_eq!(peer.as_pathname(), Some(client_path.0.as_path()));
    assert!(c.take_accepted_unix().is_none(), "taken once");

    port.accept(&listener);
    let _unnamed = UnixStream::connect(&path.0).unwrap();
    let mut c = next_of(&port, OpKind::Accept);
    let (stream, peer) = c.take_accepted_unix().expect("the connection");
    assert!(peer.is_unnamed());
    port.add_handle(stream, 2).unwrap();
}

/// On Linux a client bound to an abstract name (no file) is accepted with that name.
#[cfg(target_os = "linux")]
#[test]
fn a_client_with_an_abstract_name() {
    use std::{ffi::OsStr, os::unix::ffi::OsStrExt};
    let port = Iocp::new().unwrap();
    let path = SocketPath::new("abstract");
    let listener = port.bind_unix(&path.0, 1).unwrap();
    port.accept(&listener);
    let name = format!("proactor-abstract-{}", std::process::id());
    let abstract_name: Vec<u8> = std::iter::once(0).chain(name.bytes()).collect();
    let _theirs = client(&path.0, Some(Path::new(OsStr::from_bytes(&abstract_name))));
    let mut c = next_of(&port, OpKind::Accept);
    let (_stream, peer) = c.take_accepted_socket().expect("the connection");
    assert_eq!(peer.as_abstract_namespace(), Some(name.as_bytes()));
    assert!(peer.as_pathname().is_none());
}

/// Found by review (helper 47): a `SOCK_SEQPACKET` message longer than a `recv` buffer lost
/// its rest silently (`Ok(4)`, and the next receive got the next message). It is truncated as
/// a datagram is: an error for which `is_truncated` holds, with the bytes that fit, and the
/// next receive gets the next message whole.
#[cfg(target_os = "linux")]
#[test]
fn a_seqpacket_message_cut_short_by_recv_is_truncated() {
    let port = Iocp::new().unwrap();
    let (a, b) = Socket::pair(Domain::UNIX, Type::SEQPACKET, None).unwrap();
    let ours = port.add_handle(a, 1).unwrap();
    port.recv(&ours, Vec::with_capacity(4));
    b.send(b"longer than four").unwrap();
    b.send(b"next").unwrap();
    let mut c = next_of(&port, OpKind::Recv);
    let err = c.result().expect_err("a message cut short");
    assert!(proactor::is_truncated(&err), "{err}");
    assert_eq!(c.take_buffer().unwrap(), b"long");
    port.recv(&ours, Vec::with_capacity(64));
    let mut c = next_of(&port, OpKind::Recv);
    assert_eq!(c.result().unwrap(), 4);
    assert_eq!(c.take_buffer().unwrap(), b"next");
}
