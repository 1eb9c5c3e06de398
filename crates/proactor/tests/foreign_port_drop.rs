//! A port dropped before the `Foreign` handles it made: nothing of it outlives it.
//!
//! Alone in its binary: it checks `proactor::live_operations()`, which counts every port's
//! records in the process.
#![cfg(windows)]

mod common;
mod win_owner;

use std::{io::Write, net::TcpStream, os::windows::io::AsSocket, thread, time::Duration};

use proactor::{
    Iocp,
    windows::{Foreign, IocpExt},
};
use win_owner::OwnerRecv;

fn raw_pair() -> (TcpStream, TcpStream) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let peer = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (owned, _) = l.accept().unwrap();
    (owned, peer)
}

#[test]
fn a_port_dropped_before_its_foreign_handles_leaves_nothing_behind() {
    let (owned, mut peer) = raw_pair();
    let (other, _other_peer) = raw_pair();
    let port = Iocp::new().unwrap();
    let borrowed = port
        .add_handle(Foreign::socket(owned.as_socket()), 1)
        .unwrap();
    let second = port
        .add_handle(Foreign::socket(other.as_socket()), 2)
        .unwrap();
    // Pending operations (a wait registered for each) on both handles, and ones that end at
    // once and sit in the ready queue.
    let ours = [
        port.recv(&borrowed, Vec::with_capacity(16)),
        port.address_list_change(&borrowed),
        port.send(&borrowed, b"now".to_vec()),
    ];
    port.recv(&second, Vec::with_capacity(16));
    port.send(&second, b"now".to_vec());
    thread::sleep(Duration::from_millis(100));
    // Where our records on `owned` are: the addresses its registry holds.
    let addresses: Vec<usize> = ours
        .iter()
        .filter_map(|&id| port.overlapped_address(id))
        .collect();
    assert_eq!(addresses.len(), 3, "{addresses:x?}");
    assert!(proactor::live_operations() >= 4);

    drop(port);
    assert_eq!(proactor::live_operations(), 0, "every record reclaimed");

    // The owner's next receive, its OVERLAPPED where one of ours was (if the allocator reuses
    // that memory, as it usually does): dropping our handle now must not cancel it.
    let owner = OwnerRecv::start_at(&owned, &addresses);
    match &owner {
        Some(o) => eprintln!("owner's OVERLAPPED reuses {:#x}", o.address()),
        None => eprintln!("the allocator did not reuse a freed record's address"),
    }
    // Wine's heap hands a freed record's address back every time: there the test must test
    // something (a change of the record's size would otherwise disarm it unnoticed). Windows'
    // heap may not, and then this is a check for no crash and no leak.
    assert!(
        owner.is_some() || !common::under_wine(),
        "under Wine the owner's OVERLAPPED should reuse a freed record's address"
    );
    drop(borrowed);
    drop(second);
    thread::sleep(Duration::from_millis(200));
    if let Some(owner) = owner {
        assert!(owner.pending(), "the owner's receive is untouched");
        peer.write_all(b"owner").unwrap();
        assert_eq!(owner.wait(20_000).unwrap(), b"owner");
    }
    assert_eq!(proactor::live_operations(), 0);
}
