//! An overlapped receive that a socket's owner (a runtime such as tokio or Go) issues itself,
//! with windows-sys and an event, never through proactor: what a `Foreign` handle must leave
//! alone.
#![cfg(windows)]
#![allow(dead_code)]

use std::{
    alloc::{Layout, alloc, dealloc},
    mem,
    net::TcpStream,
    os::windows::io::{AsRawHandle, AsRawSocket, FromRawHandle, OwnedHandle},
    ptr,
};

use windows_sys::Win32::{
    Foundation::{FALSE, HANDLE, TRUE, WAIT_OBJECT_0},
    Networking::WinSock::{SOCKET, WSA_IO_PENDING, WSABUF, WSAGetLastError, WSARecv},
    System::{
        IO::{CancelIoEx, GetOverlappedResult, OVERLAPPED},
        Threading::{CreateEventW, WaitForSingleObject},
    },
};

/// `STATUS_PENDING`: what `OVERLAPPED.Internal` holds while the operation is in flight.
const STATUS_PENDING: usize = 0x103;

/// The owner's pending `WSARecv`: its `OVERLAPPED`, buffer and event, alive until it completed.
pub struct OwnerRecv {
    socket: SOCKET,
    ov: *mut OVERLAPPED,
    layout: Layout,
    buf: Box<[u8; 64]>,
    event: OwnedHandle,
    /// Memory held so that the allocator gave `ov` the address looked for; freed on drop.
    held: Vec<(*mut u8, Layout)>,
}

impl OwnerRecv {
    /// Starts a receive on `socket`, its `OVERLAPPED` anywhere.
    pub fn start(socket: &TcpStream) -> OwnerRecv {
        let layout = Layout::new::<OVERLAPPED>();
        // SAFETY: a non-zero size.
        let ov = unsafe { alloc(layout) }.cast::<OVERLAPPED>();
        assert!(!ov.is_null());
        Self::start_in(socket, ov, layout, Vec::new())
    }

    /// Starts a receive whose `OVERLAPPED` sits at one of `addresses` (memory proactor freed) if
    /// the allocator hands one back for some size; `None` if it never does.
    pub fn start_at(socket: &TcpStream, addresses: &[usize]) -> Option<OwnerRecv> {
        let mut held = Vec::new();
        let mut found = None;
        'sizes: for _round in 0..4 {
            for size in (mem::size_of::<OVERLAPPED>()..=4096).step_by(8) {
                let layout = Layout::from_size_align(size, 16).unwrap();
                // SAFETY: a non-zero size.
                let p = unsafe { alloc(layout) };
                assert!(!p.is_null());
                if addresses.contains(&(p as usize)) {
                    found = Some((p, layout));
                    break 'sizes;
                }
                held.push((p, layout));
            }
        }
        let Some((p, layout)) = found else {
            for (p, layout) in held {
                // SAFETY: allocated above with this layout, never used.
                unsafe { dealloc(p, layout) };
            }
            return None;
        };
        Some(Self::start_in(socket, p.cast(), layout, held))
    }

    fn start_in(
        socket: &TcpStream,
        ov: *mut OVERLAPPED,
        layout: Layout,
        held: Vec<(*mut u8, Layout)>,
    ) -> OwnerRecv {
        // SAFETY: a new unnamed manual-reset event.
        let raw = unsafe { CreateEventW(ptr::null(), TRUE, FALSE, ptr::null()) };
        assert!(!raw.is_null());
        // SAFETY: a new handle nothing else owns.
        let event = unsafe { OwnedHandle::from_raw_handle(raw) };
        // SAFETY: `ov` is writable memory for an OVERLAPPED; zeroes are its initial state.
        unsafe {
            ptr::write_bytes(ov, 0, 1);
            (*ov).hEvent = event.as_raw_handle();
        }
        let mut recv = OwnerRecv {
            socket: socket.as_raw_socket() as SOCKET,
            ov,
            layout,
            buf: Box::new([0; 64]),
            event,
            held,
        };
        let wsabuf = WSABUF {
            len: recv.buf.len() as u32,
            buf: recv.buf.as_mut_ptr(),
        };
        let mut flags = 0u32;
        // SAFETY: the socket is open; the buffer and OVERLAPPED live until the operation ended
        // (drop cancels and waits); WinSock captures the WSABUF during the call.
        let rc = unsafe {
            WSARecv(
                recv.socket,
                &wsabuf,
                1,
                ptr::null_mut(),
                &mut flags,
                recv.ov,
                None,
            )
        };
        // SAFETY: right after the failed call.
        assert!(
            rc != 0 && unsafe { WSAGetLastError() } == WSA_IO_PENDING,
            "pending"
        );
        recv
    }

    /// The address of the `OVERLAPPED`.
    pub fn address(&self) -> usize {
        self.ov as usize
    }

    /// Whether the receive is still pending (`HasOverlappedIoCompleted` is false).
    pub fn pending(&self) -> bool {
        // SAFETY: the OVERLAPPED is live; a volatile read of the word the kernel updates.
        unsafe { ptr::read_volatile(ptr::addr_of!((*self.ov).Internal)) == STATUS_PENDING }
    }

    /// Waits up to `millis` for the receive to end: its bytes, or its Win32 error code.
    pub fn wait(&self, millis: u32) -> Result<Vec<u8>, u32> {
        // SAFETY: the event is open.
        let w = unsafe { WaitForSingleObject(self.event.as_raw_handle(), millis) };
        assert_eq!(
            w, WAIT_OBJECT_0,
            "the owner's receive did not complete in time"
        );
        let mut bytes = 0u32;
        // SAFETY: the operation ended (its event is set); the handle and OVERLAPPED are the
        // ones it was issued with.
        let ok = unsafe { GetOverlappedResult(self.socket as HANDLE, self.ov, &mut bytes, FALSE) };
        if ok == FALSE {
            return Err(std::io::Error::last_os_error().raw_os_error().unwrap() as u32);
        }
        Ok(self.buf[..bytes as usize].to_vec())
    }
}

impl Drop for OwnerRecv {
    fn drop(&mut self) {
        if self.pending() {
            // SAFETY: the socket is open (the caller keeps it so); cancels this operation only.
            unsafe { CancelIoEx(self.socket as HANDLE, self.ov) };
            // SAFETY: the event is open.
            if unsafe { WaitForSingleObject(self.event.as_raw_handle(), 10_000) } != 0 {
                // Still not done (a test already failing): the kernel may yet write into the
                // OVERLAPPED and the buffer, so leak them rather than free them.
                return;
            }
        }
        // SAFETY: the operation ended: the kernel no longer uses the OVERLAPPED.
        unsafe { dealloc(self.ov.cast(), self.layout) };
        for &(p, layout) in &self.held {
            // SAFETY: allocated with this layout, never used.
            unsafe { dealloc(p, layout) };
        }
    }
}
