//! The close of a dropped handle's socket, deferred until the port has taken back the
//! operations that move its bytes.
//!
//! A send in flight when its socket closes may lose its count: Wine's overlapped send, resumed
//! after the close (its cancel missed it while it was being resumed), completes with
//! `STATUS_INVALID_HANDLE` and 0 bytes although the peer got part of the data. So every send
//! and receive record on a socket holds its handle's [`DeferredClose`], and a dropped handle's
//! socket is closed when the last one goes (at once if none is in flight).
//!
//! Only sockets the handle owns: a file, pipe or device closes at once after the cancel (a
//! driver that ends its requests only at cleanup must see the close), and a `Foreign` object is
//! its owner's. Accepts, connects and readiness waits do not hold it: they move no bytes, and a
//! listener dropped with its accepts pending stops listening at once.

use std::{
    os::windows::io::OwnedSocket,
    sync::{Arc, Mutex, PoisonError, atomic},
};

use crate::OpKind;

/// Where a dropped handle's socket waits for its last send or receive record.
#[derive(Debug, Default)]
pub(crate) struct DeferredClose {
    /// Closed when this is dropped: when the last reference goes.
    socket: Mutex<Option<OwnedSocket>>,
}

impl DeferredClose {
    /// Closes `socket` once nothing refers to `this` but the caller's reference: at once if
    /// that is already so, or else when the last record holding one is dropped (its completion
    /// taken back from the kernel). Call it after the handle's operations were cancelled and
    /// while no new one can start on it: references then only go.
    pub(crate) fn when_idle(this: &Arc<DeferredClose>, socket: OwnedSocket) {
        if Arc::strong_count(this) == 1 {
            // Pairs with the release of the record's drop of its reference (the count is read
            // relaxed), as `Arc`'s own drop does before freeing.
            atomic::fence(atomic::Ordering::Acquire);
            drop(socket);
            return;
        }
        // The last record may go between the count and this store: the socket then closes
        // when the caller drops its reference, the last.
        *this.socket.lock().unwrap_or_else(PoisonError::into_inner) = Some(socket);
    }
}

/// Whether an operation of `kind` moves a stream's or a datagram's bytes, whose count a close
/// under it could lose: its record holds the socket's [`DeferredClose`].
pub(crate) fn moves_bytes(kind: OpKind) -> bool {
    matches!(
        kind,
        OpKind::Recv
            | OpKind::RecvVectored
            | OpKind::RecvFrom
            | OpKind::Send
            | OpKind::SendVectored
            | OpKind::SendTo
            | OpKind::TransmitFile
    )
}

#[cfg(test)]
mod tests {
    use std::{
        net::{TcpListener, TcpStream},
        time::Duration,
    };

    use super::*;

    /// A connected pair: the socket to close and its peer, which sees the close as the end of
    /// the stream.
    fn pair() -> (OwnedSocket, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let peer = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (ours, _) = listener.accept().unwrap();
        (OwnedSocket::from(ours), peer)
    }

    /// Whether the peer sees the end of the stream within `wait`.
    fn closes_within(peer: &mut TcpStream, wait: std::time::Duration) -> bool {
        use std::io::Read;
        peer.set_read_timeout(Some(wait)).unwrap();
        matches!(peer.read(&mut [0u8; 1]), Ok(0))
    }

    #[test]
    fn with_no_record_the_socket_closes_at_once() {
        let (socket, mut peer) = pair();
        let deferred = Arc::new(DeferredClose::default());
        DeferredClose::when_idle(&deferred, socket);
        assert!(closes_within(&mut peer, Duration::from_secs(5)));
    }

    #[test]
    fn the_socket_closes_with_the_last_record() {
        let (socket, mut peer) = pair();
        let handle = Arc::new(DeferredClose::default());
        let [first, last] = [handle.clone(), handle.clone()];
        DeferredClose::when_idle(&handle, socket);
        drop(handle);
        drop(first);
        assert!(
            !closes_within(&mut peer, Duration::from_millis(200)),
            "closed under a record"
        );
        drop(last);
        assert!(closes_within(&mut peer, Duration::from_secs(5)));
    }
}
