//! The backend for systems with none yet: [`Port::new`] reports `Unsupported`.
//!
//! The types exist so that portable code compiles everywhere, but none can be made: `Port` and
//! `Target` are uninhabited, so every method is statically unreachable.

use std::{
    io,
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    time::Duration,
};

use crate::{
    Completion, OpId,
    handle::{Associate, Sealed},
};

/// No value of this type exists.
#[derive(Debug)]
pub(crate) enum Never {}

/// An OS object's raw identity (a file descriptor).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RawIo(i32);

/// Cannot be made: see the module docs.
#[derive(Debug)]
pub(crate) struct Target {
    pub(crate) context: usize,
    never: Never,
}

impl Target {
    pub(crate) fn close<T>(&self, _io: T) {
        match self.never {}
    }
}

/// Cannot be made: see the module docs.
pub(crate) enum Port {}

impl Port {
    pub(crate) fn new(_concurrency: u32) -> io::Result<Port> {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "proactor has no completion-port backend for this operating system",
        ))
    }

    pub(crate) fn backend(&self) -> &'static str {
        match *self {}
    }
    pub(crate) fn associate(
        &self,
        _raw: RawIo,
        _foreign: bool,
        _context: usize,
    ) -> io::Result<Target> {
        match *self {}
    }
    pub(crate) fn post(&self, _context: usize, _value: usize) -> io::Result<OpId> {
        match *self {}
    }
    pub(crate) fn get_completion(&self, _timeout: Option<Duration>) -> io::Result<Completion> {
        match *self {}
    }
    pub(crate) fn get_completions(
        &self,
        _out: &mut Vec<Completion>,
        _max: usize,
        _timeout: Option<Duration>,
    ) -> io::Result<usize> {
        match *self {}
    }
    pub(crate) fn recv(&self, _target: &Target, _user: usize, _buf: Vec<u8>) -> OpId {
        match *self {}
    }
    pub(crate) fn recv_vectored(
        &self,
        _target: &Target,
        _user: usize,
        _bufs: Vec<Vec<u8>>,
    ) -> OpId {
        match *self {}
    }
    pub(crate) fn readable(&self, _target: &Target, _user: usize) -> OpId {
        match *self {}
    }
    pub(crate) fn send(&self, _target: &Target, _user: usize, _buf: Vec<u8>) -> OpId {
        match *self {}
    }
    pub(crate) fn send_vectored(
        &self,
        _target: &Target,
        _user: usize,
        _bufs: Vec<Vec<u8>>,
    ) -> OpId {
        match *self {}
    }
    pub(crate) fn read_at(
        &self,
        _target: &Target,
        _user: usize,
        _buf: Vec<u8>,
        _offset: u64,
    ) -> OpId {
        match *self {}
    }
    pub(crate) fn write_at(
        &self,
        _target: &Target,
        _user: usize,
        _buf: Vec<u8>,
        _offset: u64,
    ) -> OpId {
        match *self {}
    }
    pub(crate) fn accept(&self, _target: &Target, _user: usize) -> OpId {
        match *self {}
    }
    pub(crate) fn connect(&self, _target: &Target, _user: usize, _addr: SocketAddr) -> OpId {
        match *self {}
    }
    pub(crate) fn ioctl(
        &self,
        _t: &Target,
        _user: usize,
        _code: u32,
        _input: Vec<u8>,
        _output: Vec<u8>,
    ) -> OpId {
        match *self {}
    }
    pub(crate) fn recv_from(&self, _target: &Target, _user: usize, _buf: Vec<u8>) -> OpId {
        match *self {}
    }
    pub(crate) fn send_to(
        &self,
        _target: &Target,
        _user: usize,
        _buf: Vec<u8>,
        _addr: SocketAddr,
    ) -> OpId {
        match *self {}
    }
    pub(crate) fn transmit_file(
        &self,
        _t: &Target,
        _user: usize,
        _f: &std::fs::File,
        _o: u64,
        _l: u32,
    ) -> OpId {
        match *self {}
    }
    pub(crate) fn disconnect(&self, _target: &Target, _user: usize) -> OpId {
        match *self {}
    }
    pub(crate) fn cancel(&self, _id: OpId) -> io::Result<()> {
        match *self {}
    }
    pub(crate) fn cancel_all(&self, _target: &Target) -> io::Result<()> {
        match *self {}
    }
    pub(crate) fn in_flight(&self) -> usize {
        match *self {}
    }
}

macro_rules! fd_objects {
    ($($t:ty),*) => {$(
        impl Sealed for $t {
            fn raw_io(&self) -> RawIo {
                RawIo(std::os::fd::AsRawFd::as_raw_fd(self))
            }
        }
        impl Associate for $t {}
    )*};
}

fd_objects!(
    TcpStream,
    TcpListener,
    UdpSocket,
    std::fs::File,
    std::os::fd::OwnedFd,
    socket2::Socket
);

#[cfg(test)]
mod tests {
    #[test]
    fn new_reports_unsupported() {
        let err = crate::Iocp::new().unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::Unsupported);
    }
}

/// Cannot be called: no port exists on this system.
///
/// # Safety
///
/// None needed: it touches nothing.
pub(crate) unsafe fn recv_now(_raw: RawIo, _dst: *mut u8, _len: usize) -> std::io::Result<usize> {
    Err(std::io::Error::from(std::io::ErrorKind::Unsupported))
}
