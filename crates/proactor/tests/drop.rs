//! Dropping the port with operations in flight: nothing crashes, everything is reclaimed.
//!
//! One test in this binary: it checks the process-wide count of live operation records, which
//! other tests running at the same time would disturb.
#![cfg(any(windows, target_os = "linux"))]

mod common;

use std::net::{TcpListener, TcpStream};

use proactor::Iocp;

#[test]
fn port_dropped_with_1000_operations_in_flight_reclaims_them_all() {
    assert_eq!(proactor::live_operations(), 0);
    let port = Iocp::new().unwrap();
    let server = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut peers = Vec::new();
    let mut handles = Vec::new();
    for i in 0..250 {
        let client = TcpStream::connect(server.local_addr().unwrap()).unwrap();
        let (accepted, _) = server.accept().unwrap();
        let h = port.add_handle(accepted, i).unwrap();
        // Three receives and a zero-byte receive pending on each connection.
        for _ in 0..3 {
            port.recv(&h, Vec::with_capacity(4096));
        }
        port.readable(&h);
        handles.push(h);
        peers.push(client);
    }
    assert_eq!(port.operations_in_flight(), 1000);
    assert_eq!(proactor::live_operations(), 1000);
    // The port goes first, with everything pending and every socket still open.
    drop(port);
    assert_eq!(
        proactor::live_operations(),
        0,
        "every operation record was reclaimed"
    );
    drop(handles);
    drop(peers);
}
