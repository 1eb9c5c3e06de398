//! Adversarial review of the `LocalPort` engines: pooled receive (buffer window, pause,
//! starvation), handle drop with multishot operations, tiny pools, odd sizes.

use std::{
    io::Write,
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    time::{Duration, Instant},
};

use proactor::{LocalCompletion, LocalHandle, LocalPort, OpKind};

fn raw_pair() -> (TcpStream, TcpStream) {
    let l = TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).unwrap();
    let theirs = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (ours, _) = l.accept().unwrap();
    (ours, theirs)
}

fn pair(port: &LocalPort, context: usize) -> (LocalHandle<TcpStream>, TcpStream) {
    let (ours, theirs) = raw_pair();
    (port.add_handle(ours, context).unwrap(), theirs)
}

fn next(port: &LocalPort) -> LocalCompletion {
    port.get_completion(Some(Duration::from_secs(5)))
        .expect("a completion within 5 s")
}

/// A multishot receive submitted (by another handle's close) before the first top-up of the
/// buffer ring ends on `ENOBUFS`; the top-up that follows lends the whole window, so the
/// handle must still be re-armed once that `ENOBUFS` is reaped.
#[test]
fn enobufs_reaped_after_the_top_up_is_rearmed() {
    let port = LocalPort::with_pool(64, 4096).unwrap();
    let (a, mut a_peer) = pair(&port, 1);
    a_peer.write_all(b"hello").unwrap();
    let first = port.recv_pooled(&a);
    // Another handle with an operation in the kernel: its drop enters the ring, which submits
    // `a`'s multishot receive while no buffer has been lent yet.
    let (b, _b_peer) = pair(&port, 2);
    port.readable(&b);
    drop(b);
    let mut got = Vec::new();
    let until = Instant::now() + Duration::from_secs(3);
    while got.len() < 2 && Instant::now() < until {
        if let Ok(c) = port.get_completion(Some(Duration::from_millis(100))) {
            got.push(c);
        }
    }
    let mut recv = got
        .into_iter()
        .find(|c| c.id() == first)
        .expect("the pooled receive completes although its first multishot found no buffer");
    assert_eq!(recv.kind(), OpKind::RecvPooled);
    assert_eq!(&recv.take_pooled().unwrap()[..], b"hello");
}
