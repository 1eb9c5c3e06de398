//! Handle and memory leaks under connection churn.
//!
//! Alone in its binary: it counts the process's handles and operation records, which other
//! tests would disturb.
#![cfg(any(windows, target_os = "linux"))]

mod common;

use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
};

use common::next_of;
use proactor::{Iocp, OpKind};
/// The process's open descriptors.
#[cfg(not(windows))]
fn handle_count() -> Option<u32> {
    Some(std::fs::read_dir("/proc/self/fd").ok()?.count() as u32)
}

/// The process's handle count, where the OS implements it (Windows does; Wine 8 does not).
#[cfg(windows)]
fn handle_count() -> Option<u32> {
    use windows_sys::Win32::System::Threading::{GetCurrentProcess, GetProcessHandleCount};
    let mut n = 0;
    // SAFETY: the pseudo-handle of the current process is always valid; `n` is writable.
    let ok = unsafe { GetProcessHandleCount(GetCurrentProcess(), &mut n) };
    (ok != 0).then_some(n)
}

#[test]
fn connection_churn_leaks_no_handles_and_no_operations() {
    let port = Iocp::new().unwrap();
    let l = port
        .add_handle(TcpListener::bind("127.0.0.1:0").unwrap(), 0)
        .unwrap();
    let addr = l.local_addr().unwrap();

    let churn = |rounds: usize| {
        for i in 0..rounds {
            port.accept(&l);
            let mut client = TcpStream::connect(addr).unwrap();
            client.set_read_timeout(common::WAIT).unwrap();
            let mut c = next_of(&port, OpKind::Accept);
            let conn = port
                .add_handle(c.take_accepted().unwrap().stream, i)
                .unwrap();
            port.recv(&conn, Vec::with_capacity(64));
            client.write_all(b"x").unwrap();
            next_of(&port, OpKind::Recv).result().unwrap();
            port.recv(&conn, Vec::with_capacity(64));
            if i % 2 == 0 {
                // Closed with a receive pending: it completes as cancelled, and the socket is
                // really closed: the client sees the end of the stream (or a reset).
                drop(conn);
                assert!(next_of(&port, OpKind::Recv).is_cancelled());
                let mut byte = [0u8; 1];
                match client.read(&mut byte) {
                    Ok(n) => assert_eq!(n, 0, "round {i}: the server's socket was closed"),
                    Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
                }
            } else {
                // The client closes first: EOF, then the server closes.
                drop(client);
                assert_eq!(next_of(&port, OpKind::Recv).result().unwrap(), 0);
                drop(conn);
            }
        }
    };
    churn(50); // warm up: lazily created objects (WinSock, extension functions) settle
    let start = handle_count();
    churn(300);
    let end = handle_count();
    if let (Some(start), Some(end)) = (start, end) {
        assert!(
            end <= start + 8,
            "handles grew from {start} to {end} over 300 connections"
        );
    } else {
        eprintln!("no process handle count on this system (Wine): checked closes from the peer");
    }
    assert_eq!(port.operations_in_flight(), 0);
    drop(l);
    drop(port);
    assert_eq!(proactor::live_operations(), 0);
}
