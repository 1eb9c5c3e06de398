//! Which of a port's descriptors share an open file.
//!
//! io_uring matches a cancel by descriptor (`IORING_ASYNC_CANCEL_FD`) against the descriptor's
//! open file, not its number, so it would also end the operations of another handle of the
//! same file: a clone (`try_clone`, `dup`) added beside the original, as a reader and a writer
//! often are. A port counts its handles per file (device and inode from the `fstat` of
//! `add_handle`, which a socket has too) and cancels by descriptor only a file that one
//! handle names.

use std::{collections::BTreeMap, os::fd::RawFd, sync::Mutex};

/// A file's identity: its device and inode.
pub(crate) type FileId = (u64, u64);

/// The files of the descriptors associated with a port.
#[derive(Default)]
pub(super) struct Files(Mutex<Inner>);

/// B-trees, not hash maps: their memory follows the handles open, where a hash map churned by
/// connections coming and going keeps its largest size and may grow again to clear the
/// tombstones of removed entries.
#[derive(Default)]
struct Inner {
    /// Each associated descriptor's file.
    of: BTreeMap<RawFd, FileId>,
    /// How many associated descriptors each file has.
    handles: BTreeMap<FileId, u32>,
}

impl Files {
    /// Counts `fd`, just associated, and its file.
    pub(super) fn associate(&self, fd: RawFd, file: FileId) {
        let mut inner = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(old) = inner.of.insert(fd, file) {
            inner.drop_one(old); // not forgotten before (cannot happen: closes forget)
        }
        *inner.handles.entry(file).or_default() += 1;
    }

    /// Forgets `fd`, which its owner closes next.
    pub(super) fn forget(&self, fd: RawFd) {
        let mut inner = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(file) = inner.of.remove(&fd) {
            inner.drop_one(file);
        }
    }

    /// Whether another associated descriptor shares `fd`'s file.
    pub(super) fn shared(&self, fd: RawFd) -> bool {
        let inner = self.0.lock().unwrap_or_else(|e| e.into_inner());
        inner
            .of
            .get(&fd)
            .is_some_and(|file| inner.handles.get(file).is_some_and(|&n| n > 1))
    }
}

impl Inner {
    fn drop_one(&mut self, file: FileId) {
        if let Some(n) = self.handles.get_mut(&file) {
            *n -= 1;
            if *n == 0 {
                self.handles.remove(&file);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{net::UdpSocket, os::fd::AsRawFd};

    use super::*;

    fn id(s: &UdpSocket) -> FileId {
        crate::sys::linux::nature(s.as_raw_fd()).unwrap().file
    }

    #[test]
    fn clones_share_their_file_until_one_is_forgotten() {
        let files = Files::default();
        let a = UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = a.try_clone().unwrap();
        let other = UdpSocket::bind("127.0.0.1:0").unwrap();
        files.associate(a.as_raw_fd(), id(&a));
        files.associate(other.as_raw_fd(), id(&other));
        assert!(!files.shared(a.as_raw_fd()), "alone");
        files.associate(b.as_raw_fd(), id(&b));
        assert!(files.shared(a.as_raw_fd()) && files.shared(b.as_raw_fd()));
        assert!(!files.shared(other.as_raw_fd()));
        files.forget(b.as_raw_fd());
        assert!(!files.shared(a.as_raw_fd()), "alone again");
        files.forget(a.as_raw_fd());
        files.forget(other.as_raw_fd());
        assert!(files.0.lock().unwrap().handles.is_empty());
    }
}
