//! Helpers shared by the integration tests.
#![allow(dead_code)]

pub mod local;
pub mod oracle;
#[cfg(feature = "failpoints")]
pub mod pause;

use std::{
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream},
    time::Duration,
};

use proactor::{Completion, Handle, Iocp, LocalCompletion, LocalPort, OpId, OpKind};

/// The OS code of a local cancel: `ERROR_OPERATION_ABORTED` on Windows, `ECANCELED` on Linux.
pub const CANCELLED: i32 = if cfg!(windows) { 995 } else { 125 };

/// The OS codes of a connection reset: `ERROR_NETNAME_DELETED` or `WSAECONNRESET` on Windows,
/// `ECONNRESET` on Linux.
pub const RESET: &[i32] = if cfg!(windows) { &[64, 10054] } else { &[104] };

/// Long enough for Wine on a loaded 2-core machine; short enough that a hang fails the test.
pub const WAIT: Option<Duration> = Some(Duration::from_secs(20));

/// Loopback on IPv4 and IPv6: every socket test runs on both.
pub fn each_ip(mut f: impl FnMut(IpAddr)) {
    f(IpAddr::V4(Ipv4Addr::LOCALHOST));
    f(IpAddr::V6(Ipv6Addr::LOCALHOST));
}

/// What the helpers need of a port: the shared [`Iocp`] or the [`LocalPort`] of one thread,
/// so that one body serves the suites of both.
pub trait Port {
    /// What it dequeues.
    type Done: std::fmt::Debug;
    fn dequeue(&self, timeout: Option<Duration>) -> io::Result<Self::Done>;
    fn id_of(done: &Self::Done) -> OpId;
}

impl Port for Iocp {
    type Done = Completion;
    fn dequeue(&self, timeout: Option<Duration>) -> io::Result<Completion> {
        self.get_completion(timeout)
    }
    fn id_of(done: &Completion) -> OpId {
        done.id()
    }
}

impl Port for LocalPort {
    type Done = LocalCompletion;
    fn dequeue(&self, timeout: Option<Duration>) -> io::Result<LocalCompletion> {
        self.get_completion(timeout)
    }
    fn id_of(done: &LocalCompletion) -> OpId {
        done.id()
    }
}

impl<P: Port> Port for std::sync::Arc<P> {
    type Done = P::Done;
    fn dequeue(&self, timeout: Option<Duration>) -> io::Result<P::Done> {
        (**self).dequeue(timeout)
    }
    fn id_of(done: &P::Done) -> OpId {
        P::id_of(done)
    }
}

/// The next completion, failing the test if none arrives in time.
pub fn next<P: Port>(port: &P) -> P::Done {
    port.dequeue(WAIT)
        .expect("a completion within the time limit")
}

/// The next completion, which must be of `kind`.
pub fn next_of(port: &Iocp, kind: OpKind) -> Completion {
    let c = next(port);
    assert_eq!(c.kind(), kind, "{c:?}");
    c
}

/// A listener associated with `port` under `context`.
pub fn listener(port: &Iocp, ip: IpAddr, context: usize) -> Handle<TcpListener> {
    let l = TcpListener::bind(SocketAddr::new(ip, 0)).expect("bind");
    port.add_handle(l, context).expect("associate listener")
}

/// A connected pair: `ours` associated with `port`, `theirs` a plain blocking std stream.
pub fn pair(port: &Iocp, ip: IpAddr, context: usize) -> (Handle<TcpStream>, TcpStream) {
    let l = TcpListener::bind(SocketAddr::new(ip, 0)).expect("bind");
    let theirs = TcpStream::connect(l.local_addr().unwrap()).expect("connect");
    let (ours, _) = l.accept().expect("accept");
    theirs.set_read_timeout(WAIT).unwrap();
    (port.add_handle(ours, context).expect("associate"), theirs)
}

/// Sets SO_LINGER to zero, so that dropping the stream resets the connection.
pub fn reset_on_drop(s: &TcpStream) -> io::Result<()> {
    socket2::SockRef::from(s).set_linger(Some(Duration::ZERO))
}

/// Bytes with a pattern that shows misordering: byte i is (i * 7 + i / 251) mod 256.
pub fn pattern(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i.wrapping_mul(7) + i / 251) as u8)
        .collect()
}

/// IPv4 loopback, for tests where one family is enough.
pub fn each_ip_v4() -> IpAddr {
    IpAddr::V4(Ipv4Addr::LOCALHOST)
}

/// A temporary file opened for overlapped I/O with `options` (read/write/create flags), removed
/// when the returned guard drops.
pub fn overlapped_file(
    name: &str,
    options: &mut std::fs::OpenOptions,
) -> (std::fs::File, TempPath) {
    #[cfg(windows)]
    {
        use std::os::windows::fs::OpenOptionsExt;
        options.custom_flags(windows_sys::Win32::Storage::FileSystem::FILE_FLAG_OVERLAPPED);
    }
    let path = std::env::temp_dir().join(format!("proactor-{}-{name}", std::process::id()));
    let file = options.open(&path).expect("open the overlapped temp file");
    (file, TempPath(path))
}

/// Removes its file when dropped.
pub struct TempPath(pub std::path::PathBuf);

impl Drop for TempPath {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Dequeues until every id in `ids` completed once, in `ids`' order; fails on a duplicate, an
/// unknown id, or a completion nobody asked for (50 ms later).
pub fn collect<P: Port>(port: &P, ids: &[OpId]) -> Vec<P::Done> {
    let mut done: Vec<Option<P::Done>> = ids.iter().map(|_| None).collect();
    while done.iter().any(Option::is_none) {
        let c = next(port);
        let i = ids
            .iter()
            .position(|&id| id == P::id_of(&c))
            .unwrap_or_else(|| panic!("unexpected completion {c:?}"));
        assert!(done[i].is_none(), "completed twice: {c:?}");
        done[i] = Some(c);
    }
    if let Ok(extra) = port.dequeue(Some(Duration::from_millis(50))) {
        panic!("a completion nobody asked for: {extra:?}");
    }
    done.into_iter().map(Option::unwrap).collect()
}

/// Whether this process runs under Wine (its ntdll exports `wine_get_version`): where Wine
/// differs from Windows, a test checks what Wine does and says so.
#[cfg(windows)]
pub fn under_wine() -> bool {
    use windows_sys::Win32::System::LibraryLoader::{GetModuleHandleA, GetProcAddress};
    // SAFETY: both take NUL-terminated names; ntdll is loaded in every process.
    unsafe {
        let ntdll = GetModuleHandleA(c"ntdll.dll".as_ptr().cast());
        !ntdll.is_null() && GetProcAddress(ntdll, c"wine_get_version".as_ptr().cast()).is_some()
    }
}

/// Whether this process runs under Wine: never, off Windows.
#[cfg(not(windows))]
pub fn under_wine() -> bool {
    false
}
