//! Pipes: Windows named pipes (connect, read, write, broken pipe, partial messages); Linux
//! FIFOs through the same read and write operations.
#![cfg(any(windows, target_os = "linux"))]

mod common;

use proactor::{Iocp, OpKind};

#[cfg(windows)]
mod named {
    use super::*;
    use common::next_of;
    use proactor::windows::{IocpExt, named_pipe};
    use std::{io, time::Duration};

    fn name(tag: &str) -> String {
        format!(r"\\.\pipe\proactor-{}-{tag}", std::process::id())
    }

    #[test]
    fn connect_then_read_and_write_both_ways() {
        let name = name("rw");
        let port = Iocp::new().unwrap();
        let server = port
            .add_handle(named_pipe::create(&name, false).unwrap(), 1)
            .unwrap();
        let id = port.connect_named_pipe(&server);
        assert!(
            port.get_completion(Some(Duration::from_millis(100)))
                .is_err(),
            "waits for a client"
        );
        let client = port
            .add_handle(named_pipe::open(&name, false).unwrap(), 2)
            .unwrap();
        let c = next_of(&port, OpKind::ConnectPipe);
        assert_eq!((c.id(), c.context()), (id, 1));
        c.result().unwrap();

        port.write_at(&client, b"from the client".to_vec(), 0);
        assert_eq!(next_of(&port, OpKind::Write).result().unwrap(), 15);
        port.read_at(&server, Vec::with_capacity(64), 0);
        assert_eq!(
            next_of(&port, OpKind::Read).take_buffer().unwrap(),
            b"from the client"
        );
        port.write_at(&server, b"and back".to_vec(), 0);
        next_of(&port, OpKind::Write).result().unwrap();
        port.read_at(&client, Vec::with_capacity(64), 0);
        assert_eq!(
            next_of(&port, OpKind::Read).take_buffer().unwrap(),
            b"and back"
        );
    }

    #[test]
    fn a_client_that_connected_first_counts_as_connected() {
        let name = name("early");
        let port = Iocp::new().unwrap();
        let server = port
            .add_handle(named_pipe::create(&name, false).unwrap(), 1)
            .unwrap();
        let _client = named_pipe::open(&name, false).unwrap(); // before ConnectNamedPipe: 535
        port.connect_named_pipe(&server);
        next_of(&port, OpKind::ConnectPipe)
            .result()
            .expect("ERROR_PIPE_CONNECTED is success");
    }

    #[test]
    fn broken_pipe_is_eof_for_reads_and_broken_pipe_for_writes() {
        let name = name("broken");
        let port = Iocp::new().unwrap();
        let server = port
            .add_handle(named_pipe::create(&name, false).unwrap(), 1)
            .unwrap();
        port.connect_named_pipe(&server);
        let client = named_pipe::open(&name, false).unwrap();
        next_of(&port, OpKind::ConnectPipe).result().unwrap();
        port.read_at(&server, Vec::with_capacity(16), 0);
        drop(client);
        assert_eq!(
            next_of(&port, OpKind::Read).result().unwrap(),
            0,
            "EOF once the writer is gone"
        );
        port.write_at(&server, b"x".to_vec(), 0);
        let err = next_of(&port, OpKind::Write).result().unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::BrokenPipe, "{err}");
    }

    #[test]
    fn a_message_larger_than_the_buffer_is_read_in_parts() {
        let name = name("message");
        let port = Iocp::new().unwrap();
        let server = port
            .add_handle(named_pipe::create(&name, true).unwrap(), 1)
            .unwrap();
        port.connect_named_pipe(&server);
        let client = port
            .add_handle(named_pipe::open(&name, true).unwrap(), 2)
            .unwrap();
        next_of(&port, OpKind::ConnectPipe).result().unwrap();
        port.write_at(&server, b"0123456789".to_vec(), 0);
        next_of(&port, OpKind::Write).result().unwrap();
        port.read_at(&client, Vec::with_capacity(4), 0);
        let mut c = next_of(&port, OpKind::Read);
        let err = c.result().unwrap_err();
        assert_eq!(
            proactor::raw_os_error(&err),
            Some(234),
            "ERROR_MORE_DATA: {err}"
        );
        assert_eq!(c.bytes_transferred(), 4);
        assert_eq!(c.take_buffer().unwrap(), b"0123");
        port.read_at(&client, Vec::with_capacity(64), 0);
        assert_eq!(
            next_of(&port, OpKind::Read).take_buffer().unwrap(),
            b"456789"
        );
    }
}

#[cfg(target_os = "linux")]
#[test]
fn a_fifo_is_read_and_written_like_a_pipe() {
    let dir = std::env::temp_dir().join(format!("proactor-fifo-{}", std::process::id()));
    let _ = std::fs::remove_file(&dir);
    let status = std::process::Command::new("mkfifo")
        .arg(&dir)
        .status()
        .unwrap();
    assert!(status.success(), "mkfifo");
    // Read-write opens never block on a FIFO (Linux).
    let open = || {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&dir)
            .unwrap()
    };
    let port = Iocp::new().unwrap();
    let reader = port.add_handle(open(), 1).unwrap();
    let writer = port.add_handle(open(), 2).unwrap();
    port.read_at(&reader, Vec::with_capacity(64), 0);
    port.write_at(&writer, b"through the fifo".to_vec(), 0);
    let (mut read, mut wrote) = (None, false);
    while read.is_none() || !wrote {
        let mut c = common::next(&port);
        match c.kind() {
            OpKind::Write => wrote = c.result().unwrap() == 16,
            OpKind::Read => read = c.take_buffer(),
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(read.unwrap(), b"through the fifo");
    std::fs::remove_file(dir).unwrap();
}
