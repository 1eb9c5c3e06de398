//! Operations the kernel completes in part finish whole: a vectored send of 32 MiB to a slow
//! reader, a 1 MiB write into a pipe; and an accept on a Unix-domain listener hands the
//! connection over. One body per case, run on whichever backend the environment selects
//! (io_uring, `PROACTOR_BACKEND=epoll`, `PROACTOR_SQPOLL=50`).
#![cfg(target_os = "linux")]

mod common;

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    os::{fd::OwnedFd, unix::net::UnixStream},
    sync::{Mutex, MutexGuard, PoisonError},
    thread,
    time::Duration,
};

use common::{each_ip_v4, next_of};
use proactor::{Iocp, OpKind};

/// `live_operations()` counts the whole process: one test of this file at a time.
fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The stream oracle: the byte at offset `o` is byte `o % 8` of the little-endian word `o - o % 8`.
fn oracle_byte(o: u64) -> u8 {
    (o - o % 8).to_le_bytes()[(o % 8) as usize]
}

/// `total` bytes of the oracle's stream, cut into buffers of the sizes `sizes` yields in turn.
fn oracle_buffers(total: usize, mut sizes: impl FnMut() -> usize) -> Vec<Vec<u8>> {
    let mut bufs = Vec::new();
    let mut at = 0;
    while at < total {
        let n = sizes().clamp(1, total - at);
        bufs.push((at..at + n).map(|o| oracle_byte(o as u64)).collect());
        at += n;
    }
    bufs
}

/// Reads `peer` to EOF, slowly and in bursts, checking every byte against the oracle; returns
/// how many arrived.
fn check_stream(mut peer: impl Read) -> u64 {
    let mut at = 0u64;
    let mut chunk = vec![0; 48 * 1024];
    let mut bursts = 0u32;
    loop {
        let n = peer.read(&mut chunk).expect("read the stream");
        if n == 0 {
            return at;
        }
        for &b in &chunk[..n] {
            assert_eq!(b, oracle_byte(at), "byte at offset {at}");
            at += 1;
        }
        bursts += 1;
        if bursts % 64 == 0 {
            thread::sleep(Duration::from_millis(2)); // a slow reader: the sender fills up
        }
    }
}

/// A small linear congruential generator: the same "random" sizes on every run.
fn lcg(seed: u64) -> impl FnMut() -> u64 {
    let mut x = seed;
    move || {
        x = x
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        x >> 33
    }
}

/// The sender's `SO_SNDBUF`: small, so the send takes hundreds of kernel calls. (4 KiB makes
/// every call wait for a delayed ACK on loopback: 40 ms per 64 KiB, 20 s for the stream.)
const SEND_BUFFER: usize = 64 * 1024;

/// A 32 MiB vectored send of 1,000 buffers (mostly small, a few of several MiB) to a reader
/// that starts late and reads in bursts, through a 64 KiB send buffer: it completes whole, and
/// the peer receives every byte, in order, exactly once.
#[test]
fn vectored_send_of_32_mib_to_a_slow_reader_arrives_whole() {
    let _serial = serial();
    let port = Iocp::new().unwrap();
    let total = 32 << 20;
    let mut rand = lcg(13);
    let mut count = 0u32;
    let bufs = oracle_buffers(total, || {
        count += 1;
        let r = rand();
        if count % 200 == 0 {
            (4 << 20) + (r % (3 << 20)) as usize // a huge one
        } else if count >= 999 {
            usize::MAX // the rest in one
        } else {
            1 + (r % 300) as usize
        }
    });
    assert!(bufs.len() <= 1000, "{} buffers", bufs.len());
    let lens: Vec<usize> = bufs.iter().map(Vec::len).collect();

    let l = TcpListener::bind(SocketAddr::new(each_ip_v4(), 0)).unwrap();
    let theirs = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (ours, _) = l.accept().unwrap();
    socket2::SockRef::from(&ours)
        .set_send_buffer_size(SEND_BUFFER)
        .unwrap();
    let ours = port.add_handle(ours, 1).unwrap();
    let id = port.send_vectored(&ours, bufs);
    let reader = thread::spawn(move || {
        thread::sleep(Duration::from_millis(300)); // starts late
        check_stream(theirs)
    });
    let mut c = next_of(&port, OpKind::SendVectored);
    assert_eq!(c.id(), id);
    assert_eq!(c.result().unwrap(), total, "the send completes whole");
    let back = c.take_buffers().expect("the buffers come back");
    assert_eq!(back.iter().map(Vec::len).collect::<Vec<_>>(), lens);
    drop(ours);
    assert_eq!(reader.join().unwrap(), total as u64, "every byte, once");
    assert_eq!(port.operations_in_flight(), 0);
    drop(c);
    assert_eq!(proactor::live_operations(), 0);
}

/// A vectored send of more buffers than one `sendmsg` takes (`IOV_MAX`, 1,024): 3,000
/// buffers, 6 MiB, arrive whole and in order (Windows takes any number of `WSABUF`s).
#[test]
fn vectored_send_of_more_buffers_than_iov_max_arrives_whole() {
    let _serial = serial();
    let port = Iocp::new().unwrap();
    let total = 6 << 20;
    let mut rand = lcg(3000);
    let mut count = 0;
    let bufs = oracle_buffers(total, || {
        count += 1;
        if count == 3000 {
            usize::MAX
        } else if count % 1000 == 0 {
            1 << 20
        } else {
            1 + (rand() % 2000) as usize
        }
    });
    assert_eq!(bufs.len(), 3000);
    let l = TcpListener::bind(SocketAddr::new(each_ip_v4(), 0)).unwrap();
    let theirs = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (ours, _) = l.accept().unwrap();
    let ours = port.add_handle(ours, 1).unwrap();
    let id = port.send_vectored(&ours, bufs);
    let reader = thread::spawn(move || check_stream(theirs));
    let mut c = next_of(&port, OpKind::SendVectored);
    assert_eq!(c.id(), id);
    assert_eq!(c.result().unwrap(), total, "the send completes whole");
    assert_eq!(c.take_buffers().map(|b| b.len()), Some(3000));
    drop(ours);
    assert_eq!(reader.join().unwrap(), total as u64, "every byte, once");
    assert_eq!(port.operations_in_flight(), 0);
    drop(c);
    assert_eq!(proactor::live_operations(), 0);
}

/// A 1 MiB write into a pipe (64 KiB of capacity) whose reader reads slowly completes whole,
/// `Ok(1 MiB)`, with the bytes intact and in order.
#[test]
fn write_of_1_mib_into_a_pipe_completes_whole() {
    let _serial = serial();
    let port = Iocp::new().unwrap();
    let (reader, writer) = std::io::pipe().unwrap();
    let writer = port.add_handle(OwnedFd::from(writer), 1).unwrap();
    let total = 1 << 20;
    let data: Vec<u8> = (0..total as u64).map(oracle_byte).collect();
    let id = port.write_at(&writer, data.clone(), 0);
    let reader = thread::spawn(move || {
        thread::sleep(Duration::from_millis(200));
        check_stream(reader)
    });
    let mut c = next_of(&port, OpKind::Write);
    assert_eq!(c.id(), id);
    assert_eq!(c.result().unwrap(), total, "the write completes whole");
    assert_eq!(c.take_buffer().as_deref(), Some(&data[..]));
    drop(writer);
    assert_eq!(reader.join().unwrap(), total as u64);
    assert_eq!(port.operations_in_flight(), 0);
    drop(c);
    assert_eq!(proactor::live_operations(), 0);
}

/// A path for a Unix-domain socket, removed first.
fn socket_path(tag: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("proactor-{}-{tag}.sock", std::process::id()));
    let _ = std::fs::remove_file(&path);
    path
}

/// An accept on a Unix-domain listener (passed as `OwnedFd`) hands over the connection and the
/// client's address; a round trip goes through it.
#[test]
fn accept_on_a_unix_listener_passed_as_owned_fd() {
    let _serial = serial();
    let port = Iocp::new().unwrap();
    let path = socket_path("owned");
    let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let listener = port.add_handle(OwnedFd::from(listener), 1).unwrap();
    let id = port.accept(&listener);
    let mut client = UnixStream::connect(&path).unwrap();
    let mut c = next_of(&port, OpKind::Accept);
    assert_eq!(c.id(), id);
    c.result().expect("the accept succeeds");
    assert!(c.take_accepted().is_none(), "not a TCP connection");
    let (mut server, peer) = c.take_accepted_unix().expect("the Unix connection");
    assert!(peer.is_unnamed(), "the client did not bind: {peer:?}");
    client.write_all(b"ping").unwrap();
    let mut got = [0; 4];
    server.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"ping");
    server.write_all(b"pong").unwrap();
    client.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"pong");
    drop(listener);
    let _ = std::fs::remove_file(&path);
    assert_eq!(port.operations_in_flight(), 0);
    drop(c);
    assert_eq!(proactor::live_operations(), 0);
}

/// A `UnixListener` is associated as itself, and so is the `UnixStream` an accept hands over:
/// a receive on it gets what the client sent.
#[test]
fn accept_on_a_unix_listener_then_receive() {
    let _serial = serial();
    let port = Iocp::new().unwrap();
    let path = socket_path("listener");
    let listener = port
        .add_handle(std::os::unix::net::UnixListener::bind(&path).unwrap(), 1)
        .unwrap();
    port.accept(&listener);
    let mut client = UnixStream::connect(&path).unwrap();
    let mut c = next_of(&port, OpKind::Accept);
    let (server, _) = c.take_accepted_unix().expect("the Unix connection");
    let server = port.add_handle(server, 2).unwrap();
    client.write_all(b"over the unix socket").unwrap();
    port.recv(&server, Vec::with_capacity(64));
    let mut r = next_of(&port, OpKind::Recv);
    assert_eq!(r.take_buffer().unwrap(), b"over the unix socket");
    drop((server, listener));
    let _ = std::fs::remove_file(&path);
    assert_eq!(port.operations_in_flight(), 0);
    drop((c, r));
    assert_eq!(proactor::live_operations(), 0);
}
