//! Misuse gives a clear error, never a panic.
#![cfg(any(windows, target_os = "linux"))]

mod common;

use std::{fs::OpenOptions, io};

use common::{next_of, overlapped_file, pair};
use proactor::{Iocp, OpKind};

/// Windows only: a handle joins one port for life. On Linux a descriptor may serve several.
#[cfg(windows)]
#[test]
fn a_handle_added_twice_is_already_exists() {
    let port = Iocp::new().unwrap();
    let other = Iocp::new().unwrap();
    let (ours, _theirs) = pair(&port, common::each_ip_v4(), 0);
    for p in [&port, &other] {
        let err = p.add_handle(ours.try_clone().unwrap(), 1).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists, "{err}");
        assert!(err.to_string().contains("already associated"), "{err}");
        assert_eq!(proactor::raw_os_error(&err), Some(87));
    }
}

#[cfg(windows)]
#[test]
fn a_handle_not_opened_for_overlapped_io_is_refused() {
    let path = std::env::temp_dir().join(format!("proactor-{}-sync", std::process::id()));
    let file = std::fs::File::create(&path).unwrap();
    let port = Iocp::new().unwrap();
    let err = port.add_handle(file, 0).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    assert!(err.to_string().contains("overlapped"), "{err}");
    std::fs::remove_file(path).unwrap();
}

#[test]
fn an_operation_on_a_handle_of_another_port_completes_with_an_error() {
    let port = Iocp::new().unwrap();
    let other = Iocp::new().unwrap();
    let (ours, _theirs) = pair(&port, common::each_ip_v4(), 0);
    let id = other.recv(&ours, Vec::with_capacity(8));
    let mut c = next_of(&other, OpKind::Recv);
    assert_eq!(c.id(), id);
    let err = c.result().unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    assert!(err.to_string().contains("another completion port"), "{err}");
    assert!(c.take_buffer().is_some(), "the buffer comes back");
}

#[test]
fn socket_operations_on_a_file_complete_with_an_error() {
    let (file, _path) = overlapped_file(
        "notsock",
        OpenOptions::new().write(true).create(true).truncate(true),
    );
    let port = Iocp::new().unwrap();
    let f = port.add_handle(file, 0).unwrap();
    port.recv(&f, Vec::with_capacity(8));
    port.accept(&f);
    for kind in [OpKind::Recv, OpKind::Accept] {
        let err = next_of(&port, kind).result().unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        assert!(err.to_string().contains("needs a socket"), "{err}");
    }
    drop(f);
}

#[test]
fn a_receive_with_no_spare_capacity_is_refused() {
    let port = Iocp::new().unwrap();
    let (ours, _theirs) = pair(&port, common::each_ip_v4(), 0);
    port.recv(&ours, Vec::new());
    let err = next_of(&port, OpKind::Recv).result().unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    assert!(err.to_string().contains("spare capacity"), "{err}");
}

#[test]
fn a_receive_on_a_closed_socket_reports_the_os_error() {
    let port = Iocp::new().unwrap();
    let (ours, _theirs) = pair(&port, common::each_ip_v4(), 0);
    ours.shutdown(std::net::Shutdown::Both).unwrap();
    port.send(&ours, b"x".to_vec());
    let err = next_of(&port, OpKind::Send).result().unwrap_err();
    assert!(proactor::raw_os_error(&err).is_some(), "{err}");
}

#[cfg(windows)]
#[test]
fn an_invalid_or_closed_handle_is_invalid_input() {
    use std::os::windows::io::{FromRawHandle, OwnedHandle};
    let port = Iocp::new().unwrap();
    // SAFETY: the test forges a handle number that names no object (handle values are
    // multiples of 4, and this one was never handed out), to see that the port refuses it;
    // closing it when add_handle drops it fails harmlessly.
    let forged = unsafe { OwnedHandle::from_raw_handle(0x7fff_fff0 as _) };
    let err = port.add_handle(forged, 0).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{err}");
    assert!(
        err.to_string().contains("invalid or closed handle"),
        "{err}"
    );
}

#[test]
fn an_immediate_failure_is_delivered_as_a_completion_with_its_buffer() {
    let (file, _path) = {
        // Create it with content, then reopen it read-only for overlapped I/O.
        let (_, path) = overlapped_file("readonly", OpenOptions::new().write(true).create(true));
        std::fs::write(&path.0, b"content").unwrap();
        let reopened = overlapped_file("readonly", OpenOptions::new().read(true)).0;
        (reopened, path)
    };
    let port = Iocp::new().unwrap();
    let f = port.add_handle(file, 3).unwrap();
    let id = port.write_at(&f, b"nope".to_vec(), 0);
    let mut c = next_of(&port, OpKind::Write);
    assert_eq!((c.id(), c.context()), (id, 3));
    let err = c.result().unwrap_err();
    #[cfg(windows)]
    assert_eq!(err.kind(), io::ErrorKind::PermissionDenied, "{err}");
    // ERROR_ACCESS_DENIED on Windows; EBADF (9) for a descriptor opened read-only on Linux.
    let expected = if cfg!(windows) { 5 } else { 9 };
    assert_eq!(err.raw_os_error(), Some(expected), "OS code kept: {err}");
    assert_eq!(c.take_buffer().unwrap(), b"nope");
    drop(f);
}
