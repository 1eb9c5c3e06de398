//! Helpers for the tests of [`LocalPort`]: the port owned by one thread.

use std::{
    net::{IpAddr, SocketAddr, TcpListener, TcpStream},
    time::Duration,
};

use proactor::{LocalCompletion, LocalHandle, LocalPort, OpId};

use super::WAIT;

/// The next completion, failing the test if none arrives in time.
pub fn next(port: &LocalPort) -> LocalCompletion {
    port.get_completion(WAIT)
        .expect("a completion within the time limit")
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

/// Dequeues until every id in `ids` completed once, in `ids`' order; fails on a duplicate, an
/// unknown id, or a completion nobody asked for (50 ms later).
pub fn collect(port: &LocalPort, ids: &[OpId]) -> Vec<LocalCompletion> {
    let mut done: Vec<Option<LocalCompletion>> = ids.iter().map(|_| None).collect();
    while done.iter().any(Option::is_none) {
        let c = next(port);
        let i = ids
            .iter()
            .position(|&id| id == c.id())
            .unwrap_or_else(|| panic!("unexpected completion {c:?}"));
        assert!(done[i].is_none(), "completed twice: {c:?}");
        done[i] = Some(c);
    }
    if let Some(extra) = within(port, 50) {
        panic!("a completion nobody asked for: {extra:?}");
    }
    done.into_iter().map(Option::unwrap).collect()
}
