//! Helpers for the tests of [`LocalPort`]: the port owned by one thread.

use std::{
    net::{IpAddr, SocketAddr, TcpListener, TcpStream},
    time::Duration,
};

use proactor::{LocalCompletion, LocalHandle, LocalPort};

use super::WAIT;
#[allow(unused_imports)] // used by some of the test binaries that include this module
pub use super::{collect, next};

/// Loopback IPv4, where the `LocalPort` review tests run their connections.
pub const LOCAL: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

/// Which engine and setup a port runs, for failure messages: backend / setup / receive limit.
pub fn label(port: &LocalPort) -> String {
    format!(
        "{} / {} / limit {:?}",
        port.backend(),
        port.setup(),
        port.recv_limit()
    )
}

/// Whether a completion arrives within `ms` milliseconds (it is returned).
pub fn within(port: &LocalPort, ms: u64) -> Option<LocalCompletion> {
    port.get_completion(Some(Duration::from_millis(ms))).ok()
}

/// A connected pair: `ours` associated with `port`, `theirs` a plain blocking std stream.
pub fn pair(port: &LocalPort, ip: IpAddr, context: usize) -> (LocalHandle<TcpStream>, TcpStream) {
    let (ours, theirs) = raw_pair(ip);
    (port.add_handle(ours, context).expect("associate"), theirs)
}

/// A connected pair of plain std streams: (ours, theirs).
pub fn raw_pair(ip: IpAddr) -> (TcpStream, TcpStream) {
    let l = TcpListener::bind(SocketAddr::new(ip, 0)).expect("bind");
    let theirs = TcpStream::connect(l.local_addr().unwrap()).expect("connect");
    let (ours, _) = l.accept().expect("accept");
    theirs.set_read_timeout(WAIT).unwrap();
    (ours, theirs)
}
