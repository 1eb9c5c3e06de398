//! `recv_from` on a stream socket is a plain receive (review of the Linux backends, item 1).
//!
//! `MSG_TRUNC` means "report the datagram's real length" on a datagram socket but "discard the
//! bytes without copying them" on a TCP socket: passed there, the receive lost the stream's
//! bytes and the completion grew the buffer over memory nobody wrote. Each body runs on the
//! backend the environment selects (`PROACTOR_BACKEND=epoll` for the fallback).
#![cfg(target_os = "linux")]

mod common;

use std::{io::Write, thread, time::Duration};

use common::{each_ip, next, pair};
use proactor::Iocp;

/// Byte `i` of the stream the peer sends: never 0xAA at every position, so a buffer grown
/// over the 0xAA filler shows.
fn oracle(i: usize) -> u8 {
    (i % 251) as u8 ^ (i / 251) as u8
}

#[test]
fn recv_from_on_a_tcp_stream_receives_the_bytes_intact() {
    each_ip(|ip| {
        let port = Iocp::new().unwrap();
        let (ours, mut peer) = pair(&port, ip, 1);
        peer.write_all(b"hello, stream").unwrap();
        thread::sleep(Duration::from_millis(50));
        let mut buf = vec![0xAAu8; 64];
        buf.clear(); // spare capacity holds 0xAA, standing in for uninitialised memory
        let id = port.recv_from(&ours, buf);
        let mut c = next(&port);
        assert_eq!(c.id(), id);
        let got = c.take_buffer().unwrap();
        assert_eq!(c.result().unwrap(), 13, "{} {c:?}", port.backend());
        assert_eq!(got, b"hello, stream", "{}", port.backend());
        assert_eq!(
            c.peer_addr(),
            None,
            "a stream receive has no source address"
        );
    });
}

#[test]
fn recv_from_on_a_tcp_stream_loses_nothing() {
    const LEN: usize = 4 << 20;
    let port = Iocp::new().unwrap();
    let (ours, mut peer) = pair(&port, common::each_ip_v4(), 1);
    let writer = thread::spawn(move || {
        let data: Vec<u8> = (0..LEN).map(oracle).collect();
        for chunk in data.chunks(100_003) {
            peer.write_all(chunk).unwrap();
        }
        peer
    });
    let mut got = Vec::with_capacity(LEN);
    while got.len() < LEN {
        let mut buf = vec![0xAAu8; 65_536];
        buf.clear();
        let id = port.recv_from(&ours, buf);
        let mut c = next(&port);
        assert_eq!(c.id(), id);
        let n = c.result().unwrap();
        let buf = c.take_buffer().unwrap();
        assert_eq!(
            buf.len(),
            n,
            "{}: the buffer grew by what arrived",
            port.backend()
        );
        assert!(
            n > 0,
            "{}: end of stream after {} bytes",
            port.backend(),
            got.len()
        );
        got.extend_from_slice(&buf);
    }
    let _peer = writer.join().unwrap();
    assert_eq!(got.len(), LEN);
    if let Some(at) = (0..LEN).find(|&i| got[i] != oracle(i)) {
        panic!(
            "{}: byte {at} is {:#x}, sent {:#x}",
            port.backend(),
            got[at],
            oracle(at)
        );
    }
}

/// On a stream, `recv_from` takes its turn with the other receives: queued together, they are
/// filled in submission order on every backend.
#[test]
fn recv_from_on_a_stream_is_filled_in_order_with_other_receives() {
    let port = Iocp::new().unwrap();
    let (ours, mut theirs) = common::pair(&port, common::each_ip_v4(), 3);
    let first = port.recv_from(&ours, Vec::with_capacity(4));
    let second = port.recv(&ours, Vec::with_capacity(4));
    let third = port.recv_from(&ours, Vec::with_capacity(4));
    // Let every receive reach the kernel before any data does.
    let _ = port.get_completion(Some(std::time::Duration::from_millis(100)));
    std::io::Write::write_all(&mut theirs, b"aaaabbbbcccc").unwrap();
    let mut got = std::collections::HashMap::new();
    for _ in 0..3 {
        let mut c = common::next(&port);
        got.insert(c.id(), c.take_buffer().unwrap());
    }
    assert_eq!(got[&first], b"aaaa");
    assert_eq!(got[&second], b"bbbb");
    assert_eq!(got[&third], b"cccc");
}
