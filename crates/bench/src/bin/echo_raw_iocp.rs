//! The Windows reference: a minimal IOCP echo server written directly on `windows-sys`, the way
//! one is written by hand. An accept thread takes connections with a blocking `accept`, joins
//! each socket to the port (skipping the port when an operation succeeds at once) and posts it
//! to the worker; the worker, one thread, runs one `WSARecv` then one `WSASend` of what arrived
//! per connection, reusing one `OVERLAPPED` and one buffer each.
//!
//! `cargo xtask calls` counts the Win32/WinSock calls it makes per echoed message under Wine's
//! relay trace, against proactor-echo's; it is never timed (Wine is not Windows).

#[cfg(windows)]
#[path = "../peer.rs"]
mod peer;

#[cfg(windows)]
fn main() -> std::io::Result<()> {
    use clap::Parser;

    let args = peer::Args::parse();
    iocp::serve(args.port, args.buffer_size)
}

#[cfg(not(windows))]
fn main() {
    eprintln!(
        "echo-raw-iocp is the Windows reference (run it under Wine with `cargo xtask calls`)"
    );
    std::process::exit(2);
}

#[cfg(windows)]
mod iocp {
    use std::{
        io,
        net::TcpListener,
        os::windows::io::{AsRawSocket, IntoRawSocket},
        ptr, thread,
    };

    use windows_sys::Win32::{
        Foundation::{HANDLE, INVALID_HANDLE_VALUE},
        Networking::WinSock::{
            SOCKET, WSA_IO_PENDING, WSABUF, WSAGetLastError, WSARecv, WSASend, closesocket,
        },
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

    /// One connection. `#[repr(C)]` with the `OVERLAPPED` first: the pointer the port hands
    /// back is the connection. It is leaked while operations run and freed on close.
    #[repr(C)]
    struct Conn {
        overlapped: OVERLAPPED,
        socket: SOCKET,
        /// Whether a success at submission skips the port.
        skips: bool,
        sending: bool,
        buf: Vec<u8>,
        len: usize,
        sent: usize,
        flags: u32,
    }

    /// A port handle shared by both threads (the port outlives them: it is never closed).
    #[derive(Clone, Copy)]
    struct Port(HANDLE);
    // SAFETY: a completion port handle may be used from any thread.
    unsafe impl Send for Port {}

    pub fn serve(port_number: u16, buffer_size: usize) -> io::Result<()> {
        let listener = super::peer::listen(port_number)?;
        println!("listening on {}", listener.local_addr()?);
        // SAFETY: creating a port passes no pointers.
        let port = unsafe { CreateIoCompletionPort(INVALID_HANDLE_VALUE, ptr::null_mut(), 0, 1) };
        if port.is_null() {
            return Err(io::Error::last_os_error());
        }
        let port = Port(port);
        thread::spawn(move || accept_loop(listener, port, buffer_size));
        work(port)
    }

    /// Accepts connections, joins each to the port and posts it to the worker.
    fn accept_loop(listener: TcpListener, port: Port, buffer_size: usize) {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let _ = stream.set_nodelay(true);
            let socket = stream.as_raw_socket() as SOCKET;
            // SAFETY: joins a live socket to a live port.
            if unsafe { CreateIoCompletionPort(socket as HANDLE, port.0, 0, 0) }.is_null() {
                continue; // dropping the stream closes it
            }
            // SAFETY: sets a flag on a live socket.
            let skips = unsafe {
                SetFileCompletionNotificationModes(
                    socket as HANDLE,
                    FILE_SKIP_COMPLETION_PORT_ON_SUCCESS as u8,
                )
            } != 0;
            let conn = Box::new(Conn {
                // SAFETY: OVERLAPPED is plain data; all zeroes is its initial state.
                overlapped: unsafe { std::mem::zeroed() },
                socket: stream.into_raw_socket() as SOCKET,
                skips,
                sending: false,
                buf: vec![0; buffer_size],
                len: 0,
                sent: 0,
                flags: 0,
            });
            let conn = Box::into_raw(conn);
            // SAFETY: a packet whose completion key is the new connection and no OVERLAPPED.
            unsafe { PostQueuedCompletionStatus(port.0, 0, conn as usize, ptr::null()) };
        }
    }

    /// The worker: dequeues one packet at a time and moves its connection on.
    fn work(port: Port) -> io::Result<()> {
        loop {
            let (mut bytes, mut key, mut overlapped) = (0u32, 0usize, ptr::null_mut());
            // SAFETY: the out-pointers are valid locals.
            let ok = unsafe {
                GetQueuedCompletionStatus(port.0, &mut bytes, &mut key, &mut overlapped, INFINITE)
            };
            if overlapped.is_null() {
                if ok == 0 {
                    return Err(io::Error::last_os_error());
                }
                // A new connection, leaked by the accept thread: start its first receive.
                let conn = key as *mut Conn;
                // SAFETY: a live leaked Conn with no operation running.
                let first = receive(unsafe { &mut *conn });
                advance(conn, first);
                continue;
            }
            // The OVERLAPPED is the first field of a leaked Conn whose only operation just
            // completed.
            let conn = overlapped.cast::<Conn>();
            advance(
                conn,
                if ok == 0 {
                    Submit::Failed
                } else {
                    Submit::Done(bytes as usize)
                },
            );
        }
    }

    /// What a submission did.
    enum Submit {
        /// The operation runs; its packet will come through the port.
        Pending,
        /// It transferred this many bytes at once, and no packet will come.
        Done(usize),
        /// It failed.
        Failed,
    }

    /// Moves a connection on from the outcome of its last operation, submitting until one
    /// operation is pending or the connection is closed (a loop, not recursion: a client that
    /// keeps the socket readable would otherwise grow the stack without bound).
    fn advance(conn: *mut Conn, mut outcome: Submit) {
        loop {
            // SAFETY: `conn` is a live leaked Conn whose last operation is over.
            let c = unsafe { &mut *conn };
            let bytes = match outcome {
                Submit::Pending => return,
                Submit::Failed => return close(conn),
                Submit::Done(bytes) => bytes,
            };
            outcome = if c.sending {
                c.sent += bytes;
                if c.sent < c.len { send(c) } else { receive(c) }
            } else if bytes == 0 {
                return close(conn); // the client closed
            } else {
                c.len = bytes;
                c.sent = 0;
                send(c)
            };
        }
    }

    /// Starts a receive into the connection's buffer.
    fn receive(c: &mut Conn) -> Submit {
        c.sending = false;
        c.flags = 0;
        // SAFETY: all zeroes is the OVERLAPPED's initial state.
        c.overlapped = unsafe { std::mem::zeroed() };
        let wsabuf = WSABUF {
            len: c.buf.len() as u32,
            buf: c.buf.as_mut_ptr(),
        };
        let mut got = 0u32;
        // SAFETY: the buffer, flags and OVERLAPPED live in the leaked Conn until the receive
        // completes; the WSABUF array is copied by the call.
        let rc = unsafe {
            WSARecv(
                c.socket,
                &wsabuf,
                1,
                &mut got,
                &mut c.flags,
                &mut c.overlapped,
                None,
            )
        };
        submitted(c, rc, got as usize)
    }

    /// Starts sending what is left of the message.
    fn send(c: &mut Conn) -> Submit {
        c.sending = true;
        // SAFETY: all zeroes is the OVERLAPPED's initial state.
        c.overlapped = unsafe { std::mem::zeroed() };
        let wsabuf = WSABUF {
            len: (c.len - c.sent) as u32,
            buf: c.buf[c.sent..].as_mut_ptr(),
        };
        let mut put = 0u32;
        // SAFETY: as in `receive`.
        let rc = unsafe { WSASend(c.socket, &wsabuf, 1, &mut put, 0, &mut c.overlapped, None) };
        submitted(c, rc, put as usize)
    }

    /// Reads a submission's return code: a success at once skips the port only if the
    /// connection is in that mode.
    fn submitted(c: &Conn, rc: i32, bytes: usize) -> Submit {
        if rc == 0 {
            return if c.skips {
                Submit::Done(bytes)
            } else {
                Submit::Pending
            };
        }
        // SAFETY: reads this thread's last WinSock error.
        if unsafe { WSAGetLastError() } == WSA_IO_PENDING {
            Submit::Pending
        } else {
            Submit::Failed
        }
    }

    /// Closes the socket and frees the connection (no operation is running on it).
    fn close(conn: *mut Conn) {
        // SAFETY: `conn` came from Box::into_raw and its last operation is over.
        let c = unsafe { Box::from_raw(conn) };
        // SAFETY: the socket is owned by the connection and closed once.
        unsafe { closesocket(c.socket) };
    }
}
