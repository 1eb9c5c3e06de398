//! Overlapped controls as operations: keep-alive values, address-list change, cancel.
#![cfg(any(windows, target_os = "linux"))]

mod common;

use common::{next_of, pair};
use proactor::{Iocp, OpKind};

#[cfg(windows)]
#[test]
fn keepalive_completes_once_with_its_buffers() {
    use proactor::windows::{HandleExt, IocpExt};
    use std::time::Duration;
    for skip in [true, false] {
        let port = Iocp::new().unwrap();
        port.set_skip_completion_port_on_success(skip);
        let (ours, _theirs) = pair(&port, common::each_ip_v4(), 6);
        assert_eq!(ours.skips_completion_port_on_success(), skip);
        let id = port.keepalive(&ours, true, Duration::from_secs(30), Duration::from_secs(5));
        let mut c = next_of(&port, OpKind::Ioctl);
        assert_eq!((c.id(), c.context()), (id, 6));
        c.result().unwrap();
        let (input, output) = c.take_ioctl().unwrap();
        assert_eq!(input.len(), 12, "struct tcp_keepalive comes back");
        assert!(output.is_empty());
        // Exactly one completion: no stray packet for an operation already delivered.
        assert!(
            port.get_completion(Some(Duration::from_millis(200)))
                .is_err(),
            "skip={skip}"
        );
        assert_eq!(port.operations_in_flight(), 0);
    }
}

#[cfg(windows)]
#[test]
fn address_list_change_stays_pending_until_cancelled() {
    use proactor::windows::IocpExt;
    use std::time::Duration;
    let port = Iocp::new().unwrap();
    let udp = port
        .add_handle(std::net::UdpSocket::bind("127.0.0.1:0").unwrap(), 2)
        .unwrap();
    let id = port.address_list_change(&udp);
    assert!(
        port.get_completion(Some(Duration::from_millis(200)))
            .is_err(),
        "pending"
    );
    assert_eq!(port.operations_in_flight(), 1);
    port.cancel(id).unwrap();
    let mut c = next_of(&port, OpKind::Ioctl);
    assert_eq!(c.id(), id);
    assert!(c.is_cancelled(), "{c:?}");
    assert!(c.take_ioctl().is_some(), "buffers come back");
}

#[cfg(windows)]
#[test]
fn a_control_with_bad_input_fails_with_the_os_error() {
    let port = Iocp::new().unwrap();
    let (ours, _theirs) = pair(&port, common::each_ip_v4(), 0);
    // SIO_KEEPALIVE_VALS wants a 12-byte struct tcp_keepalive; 3 bytes is refused at once.
    port.ioctl(&ours, 0x9800_0004, vec![1, 2, 3], Vec::with_capacity(8));
    let mut c = next_of(&port, OpKind::Ioctl);
    let err = c.result().unwrap_err();
    assert!(proactor::raw_os_error(&err).is_some(), "{err}");
    assert_eq!(c.take_ioctl().unwrap().0, vec![1, 2, 3]);
}

#[cfg(target_os = "linux")]
#[test]
fn ioctl_is_unsupported_on_linux_and_hands_buffers_back() {
    let port = Iocp::new().unwrap();
    let (ours, _theirs) = pair(&port, common::each_ip_v4(), 0);
    port.ioctl(&ours, 0x9800_0004, vec![1; 12], Vec::new());
    let mut c = next_of(&port, OpKind::Ioctl);
    assert_eq!(
        c.result().unwrap_err().kind(),
        std::io::ErrorKind::Unsupported
    );
    assert_eq!(c.take_ioctl().unwrap().0, vec![1; 12]);
}

#[cfg(windows)]
#[test]
fn extension_function_pointers_come_back_as_addresses() {
    use proactor::windows::{IocpExt, function_address};
    const WSAID_CONNECTEX: u128 = 0x25a207b9_ddf3_4660_8ee9_76e58c74063e;
    let port = Iocp::new().unwrap();
    let (ours, _theirs) = pair(&port, common::each_ip_v4(), 0);
    port.extension_function(&ours, WSAID_CONNECTEX);
    let mut c = next_of(&port, OpKind::Ioctl);
    c.result().unwrap();
    let (input, output) = c.take_ioctl().unwrap();
    assert_eq!(input.len(), 16, "the GUID comes back");
    assert!(
        function_address(&output).is_some(),
        "an address: {output:?}"
    );
}

/// DeviceIoControl on a non-socket handle: FSCTL_PIPE_PEEK on a named pipe.
#[cfg(windows)]
#[test]
fn device_io_control_on_a_pipe_peeks_without_consuming() {
    use proactor::windows::{IocpExt, named_pipe};
    const FSCTL_PIPE_PEEK: u32 = 0x0011_400C;
    let name = format!(r"\\.\pipe\proactor-{}-peek", std::process::id());
    let port = Iocp::new().unwrap();
    let server = port
        .add_handle(named_pipe::create(&name, false).unwrap(), 1)
        .unwrap();
    port.connect_named_pipe(&server);
    let client = port
        .add_handle(named_pipe::open(&name, false).unwrap(), 2)
        .unwrap();
    next_of(&port, OpKind::ConnectPipe).result().unwrap();
    port.write_at(&server, b"hello".to_vec(), 0);
    next_of(&port, OpKind::Write).result().unwrap();
    port.ioctl(&client, FSCTL_PIPE_PEEK, Vec::new(), Vec::with_capacity(64));
    let mut c = next_of(&port, OpKind::Ioctl);
    c.result().unwrap();
    let (_, output) = c.take_ioctl().unwrap();
    // FILE_PIPE_PEEK_BUFFER: state, bytes available, messages, message length, then the data.
    assert!(output.len() >= 21, "{output:?}");
    assert_eq!(
        u32::from_ne_bytes(output[4..8].try_into().unwrap()),
        5,
        "5 bytes available"
    );
    assert_eq!(&output[16..21], b"hello");
    port.read_at(&client, Vec::with_capacity(16), 0);
    assert_eq!(
        next_of(&port, OpKind::Read).take_buffer().unwrap(),
        b"hello",
        "not consumed"
    );
}
