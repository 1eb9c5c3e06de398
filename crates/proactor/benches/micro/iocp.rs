//! The same calls made directly on `windows-sys`: one completion port, no abstraction. Under
//! Wine these only run once each, as a check: Wine's timings say nothing about Windows.

use std::{hint::black_box, io, mem, os::windows::io::AsRawSocket, ptr};

use windows_sys::Win32::{
    Foundation::{CloseHandle, HANDLE, INVALID_HANDLE_VALUE},
    Networking::WinSock::{SOCKET, WSA_IO_PENDING, WSABUF, WSAGetLastError, WSARecv},
    Storage::FileSystem::SetFileCompletionNotificationModes,
    System::{
        IO::{
            CreateIoCompletionPort, GetQueuedCompletionStatus, OVERLAPPED,
            PostQueuedCompletionStatus,
        },
        Threading::INFINITE,
        WindowsProgramming::FILE_SKIP_COMPLETION_PORT_ON_SUCCESS,
    },
};

use super::{Group, MESSAGE, tcp_pair, time_receives, wait_readable};

/// A completion port, closed on drop.
struct Port(HANDLE);

impl Port {
    fn new() -> Port {
        // SAFETY: creating a port passes no pointers.
        let port = unsafe { CreateIoCompletionPort(INVALID_HANDLE_VALUE, ptr::null_mut(), 0, 1) };
        assert!(
            !port.is_null(),
            "CreateIoCompletionPort: {}",
            io::Error::last_os_error()
        );
        Port(port)
    }

    /// Waits for one packet: its byte count.
    fn dequeue(&self) -> u32 {
        let (mut bytes, mut key, mut overlapped) = (0u32, 0usize, ptr::null_mut());
        // SAFETY: the three out-pointers are valid locals for the duration of the call.
        let ok = unsafe {
            GetQueuedCompletionStatus(self.0, &mut bytes, &mut key, &mut overlapped, INFINITE)
        };
        assert!(
            ok != 0,
            "GetQueuedCompletionStatus: {}",
            io::Error::last_os_error()
        );
        black_box((key, overlapped));
        bytes
    }
}

impl Drop for Port {
    fn drop(&mut self) {
        // SAFETY: the port handle is owned here and closed once.
        unsafe { CloseHandle(self.0) };
    }
}

/// `PostQueuedCompletionStatus` then `GetQueuedCompletionStatus`.
pub fn post_dequeue(group: &mut Group<'_>) {
    let port = Port::new();
    group.bench_function("direct windows-sys", |b| {
        b.iter(|| {
            // SAFETY: a packet without an OVERLAPPED references no memory.
            let ok = unsafe { PostQueuedCompletionStatus(port.0, 0, 7, ptr::null()) };
            assert!(
                ok != 0,
                "PostQueuedCompletionStatus: {}",
                io::Error::last_os_error()
            );
            black_box(port.dequeue());
        })
    });
}

/// An overlapped `WSARecv` of 64 bytes on a socket that holds them, skipping the port when it
/// succeeds at once (as proactor does on IFS providers), else dequeuing its packet.
pub fn recv_ready(group: &mut Group<'_>) {
    let port = Port::new();
    let (server, mut client) = tcp_pair();
    let socket = server.as_raw_socket() as SOCKET;
    // SAFETY: associates a live socket, owned by `server` for the whole benchmark, with a live port.
    let associated = unsafe { CreateIoCompletionPort(socket as HANDLE, port.0, 1, 0) };
    assert!(
        !associated.is_null(),
        "associate: {}",
        io::Error::last_os_error()
    );
    // SAFETY: sets a flag on a live socket.
    let skip = unsafe {
        SetFileCompletionNotificationModes(
            socket as HANDLE,
            FILE_SKIP_COMPLETION_PORT_ON_SUCCESS as u8,
        )
    } != 0;
    let mut buf = vec![0u8; MESSAGE];
    // SAFETY: OVERLAPPED is plain data; all zeroes is its documented initial state.
    let mut overlapped: Box<OVERLAPPED> = Box::new(unsafe { mem::zeroed() });
    group.bench_function("direct windows-sys", |b| {
        b.iter_custom(|iters| {
            time_receives(
                iters,
                &mut client,
                |bytes| wait_readable(&server, bytes),
                || {
                    let wsabuf = WSABUF {
                        len: buf.len() as u32,
                        buf: buf.as_mut_ptr(),
                    };
                    let (mut received, mut flags) = (0u32, 0u32);
                    // SAFETY: as above.
                    *overlapped = unsafe { mem::zeroed() };
                    // SAFETY: the buffer, the flags and the OVERLAPPED stay alive and untouched
                    // until the receive completes, which this closure waits for before returning.
                    let rc = unsafe {
                        WSARecv(
                            socket,
                            &wsabuf,
                            1,
                            &mut received,
                            &mut flags,
                            &mut *overlapped,
                            None,
                        )
                    };
                    if rc == 0 && skip {
                        return received as usize;
                    }
                    // SAFETY: reads the calling thread's last WinSock error.
                    let pending = rc == 0 || unsafe { WSAGetLastError() } == WSA_IO_PENDING;
                    assert!(pending, "WSARecv: {}", io::Error::last_os_error());
                    port.dequeue() as usize
                },
            )
        })
    });
}
