//! A `write_at` larger than one `pwrite` takes completes whole (review of the Linux backends,
//! item 3): Linux writes at most 2 GiB less a page per call, and the epoll backend, which writes
//! regular files and devices at submission, made one call. `/dev/null` takes every byte without
//! reading the memory, and `vec![0; n]` is lazily zeroed, so 3 GiB costs address space only.
#![cfg(target_os = "linux")]

mod common;

use proactor::{Iocp, OpKind};

#[test]
fn a_write_at_over_2_gib_completes_whole() {
    let port = Iocp::new().unwrap();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/null")
        .unwrap();
    let h = port.add_handle(f, 1).unwrap();
    let len = 3usize << 30;
    let id = port.write_at(&h, vec![0u8; len], 0);
    let mut c = common::next_of(&port, OpKind::Write);
    assert_eq!(c.id(), id);
    assert_eq!(c.result().unwrap(), len, "{}: {c:?}", port.backend());
    assert_eq!(c.take_buffer().unwrap().len(), len);
}
