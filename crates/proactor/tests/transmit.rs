//! TransmitFile and DisconnectEx (Windows); Unsupported on Linux.
#![cfg(any(windows, target_os = "linux"))]

mod common;

use common::{next_of, pair};
use proactor::{Iocp, OpKind};

#[cfg(windows)]
#[test]
fn transmit_file_sends_1_mib_and_disconnect_ends_the_stream() {
    use common::pattern;
    use std::io::Read;
    let path = std::env::temp_dir().join(format!("proactor-{}-transmit", std::process::id()));
    let data = pattern(1 << 20);
    std::fs::write(&path, &data).unwrap();
    let port = Iocp::new().unwrap();
    wine_disconnect_workaround(&port);
    let (ours, mut theirs) = pair(&port, common::each_ip_v4(), 3);
    let reader = std::thread::spawn(move || {
        let mut got = Vec::new();
        theirs.read_to_end(&mut got).unwrap(); // until DisconnectEx
        got
    });
    let file = std::fs::File::open(&path).unwrap();
    let id = port.transmit_file(&ours, &file, 0, 0);
    drop(file); // the operation keeps its own handle
    let c = next_of(&port, OpKind::TransmitFile);
    assert_eq!((c.id(), c.context()), (id, 3));
    assert_eq!(c.result().unwrap(), 1 << 20);
    port.disconnect(&ours);
    next_of(&port, OpKind::Disconnect).result().unwrap();
    assert!(
        reader.join().unwrap() == data,
        "1 MiB arrived intact, then EOF"
    );
    std::fs::remove_file(path).unwrap();
}

#[cfg(windows)]
#[test]
fn transmit_file_from_an_offset_sends_the_rest() {
    use std::io::Read;
    let path =
        std::env::temp_dir().join(format!("proactor-{}-transmit-offset", std::process::id()));
    std::fs::write(&path, b"skip this|send this").unwrap();
    let port = Iocp::new().unwrap();
    let (ours, mut theirs) = pair(&port, common::each_ip_v4(), 0);
    let file = std::fs::File::open(&path).unwrap();
    port.transmit_file(&ours, &file, 10, 0);
    assert_eq!(next_of(&port, OpKind::TransmitFile).result().unwrap(), 9);
    let mut got = [0u8; 9];
    theirs.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"send this");
    std::fs::remove_file(path).unwrap();
}

/// Under Wine, `DisconnectEx` on a socket in skip-on-success mode reports `ERROR_IO_PENDING`
/// but queues no packet (ARCHITECTURE.md); Windows queues one. The disconnect tests therefore
/// run with the mode off.
#[cfg(windows)]
fn wine_disconnect_workaround(port: &Iocp) {
    use proactor::windows::IocpExt;
    port.set_skip_completion_port_on_success(false);
}

#[cfg(target_os = "linux")]
#[test]
fn transmit_file_and_disconnect_are_unsupported_on_linux() {
    let port = Iocp::new().unwrap();
    let (ours, _theirs) = pair(&port, common::each_ip_v4(), 0);
    let file = std::fs::File::open("/proc/self/status").unwrap();
    port.transmit_file(&ours, &file, 0, 0);
    port.disconnect(&ours);
    for kind in [OpKind::TransmitFile, OpKind::Disconnect] {
        let err = next_of(&port, kind).result().unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::Unsupported, "{err}");
    }
}

#[cfg(windows)]
#[test]
fn disconnect_alone_ends_the_stream() {
    use std::io::Read;
    let port = Iocp::new().unwrap();
    wine_disconnect_workaround(&port);
    let (ours, mut theirs) = pair(&port, common::each_ip_v4(), 0);
    port.disconnect(&ours);
    next_of(&port, OpKind::Disconnect).result().unwrap();
    let mut buf = [0u8; 1];
    assert_eq!(theirs.read(&mut buf).unwrap(), 0, "EOF");
}
