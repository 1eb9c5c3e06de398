//! Files opened for overlapped I/O: reads and writes at offsets, EOF.
#![cfg(windows)]

mod common;

use std::{fs::OpenOptions, os::windows::fs::OpenOptionsExt, path::PathBuf};

use common::next_of;
use proactor::{Iocp, OpKind};
use windows_sys::Win32::Storage::FileSystem::FILE_FLAG_OVERLAPPED;

fn temp_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("proactor-{}-{name}", std::process::id()))
}

#[test]
fn write_and_read_at_offsets_then_eof() {
    let path = temp_path("offsets");
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(FILE_FLAG_OVERLAPPED)
        .open(&path)
        .unwrap();
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
    std::fs::remove_file(path).unwrap();
}
