//! Files opened for overlapped I/O: reads and writes at offsets, EOF.
#![cfg(any(windows, target_os = "linux"))]

mod common;

use std::fs::OpenOptions;

use common::{TempPath, next_of, overlapped_file};
use proactor::{Iocp, OpKind};

#[test]
fn write_and_read_at_offsets_then_eof() {
    let (file, _path) = overlapped_file(
        "offsets",
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true),
    );
    let port = Iocp::new().unwrap();
    let f = port.add_handle(file, 11).unwrap();
    port.write_at(&f, b"world".to_vec(), 6);
    assert_eq!(next_of(&port, OpKind::Write).result().unwrap(), 5);
    port.write_at(&f, b"hello ".to_vec(), 0);
    assert_eq!(next_of(&port, OpKind::Write).result().unwrap(), 6);
    port.read_at(&f, Vec::with_capacity(64), 0);
    let mut c = next_of(&port, OpKind::Read);
    assert_eq!(c.context(), 11);
    assert_eq!(c.take_buffer().unwrap(), b"hello world");
    port.read_at(&f, Vec::with_capacity(3), 6);
    assert_eq!(next_of(&port, OpKind::Read).take_buffer().unwrap(), b"wor");
    // At and past the end: EOF, as Ok(0), whether the OS fails at once or through the port.
    for offset in [11, 1 << 20] {
        port.read_at(&f, Vec::with_capacity(8), offset);
        let mut c = next_of(&port, OpKind::Read);
        assert_eq!(c.result().unwrap(), 0, "offset {offset}");
        assert!(c.take_buffer().unwrap().is_empty());
    }
    drop(f);
}

/// `proactor::open_file` opens a file every backend can use (on Windows: overlapped), with the
/// caller's options kept (here: create and truncate).
#[test]
fn open_file_works_on_every_backend() {
    let path = TempPath(std::env::temp_dir().join(format!("proactor-{}-open", std::process::id())));
    std::fs::write(&path.0, b"old contents, longer").unwrap();
    let file = proactor::open_file(
        &path.0,
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true),
    )
    .unwrap();
    let port = Iocp::new().unwrap();
    let f = port
        .add_handle(file, 3)
        .expect("associated: opened for overlapped I/O");
    port.write_at(&f, b"new".to_vec(), 0);
    assert_eq!(next_of(&port, OpKind::Write).result().unwrap(), 3);
    port.read_at(&f, Vec::with_capacity(64), 0);
    assert_eq!(next_of(&port, OpKind::Read).take_buffer().unwrap(), b"new");
    drop(f);
    assert_eq!(
        std::fs::read(&path.0).unwrap(),
        b"new",
        "truncated, then written"
    );
}

/// Found by review (helper 47): offsets above `i64::MAX` meant something different on each
/// backend (io_uring: the file's current position at `u64::MAX`; epoll: `EINVAL`; Windows:
/// the end of the file for a write). They are refused on every backend, the buffer handed
/// back, and the file left as it was; so is a range that ends past it (helper 48: Linux
/// refused a read at `i64::MAX - 1` with `EINVAL` where the docs promised EOF).
#[test]
fn offsets_above_i64_max_are_refused_on_every_backend() {
    let (file, _path) = overlapped_file(
        "huge-offsets",
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true),
    );
    let port = Iocp::new().unwrap();
    let f = port.add_handle(file, 1).unwrap();
    port.write_at(&f, b"0123456789".to_vec(), 0);
    assert_eq!(next_of(&port, OpKind::Write).result().unwrap(), 10);
    for offset in [1 << 63, u64::MAX - 1, u64::MAX, i64::MAX as u64 - 1] {
        port.write_at(&f, b"XY".to_vec(), offset);
        let mut c = next_of(&port, OpKind::Write);
        let e = c.result().expect_err("refused");
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput, "{offset}: {e}");
        assert_eq!(c.take_buffer().unwrap(), b"XY");
        port.read_at(&f, Vec::with_capacity(4), offset);
        let mut c = next_of(&port, OpKind::Read);
        let e = c.result().expect_err("refused");
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput, "{offset}: {e}");
        assert_eq!(c.take_buffer().unwrap().capacity(), 4);
    }
    port.read_at(&f, Vec::with_capacity(64), 0);
    assert_eq!(
        next_of(&port, OpKind::Read).take_buffer().unwrap(),
        b"0123456789"
    );
}
