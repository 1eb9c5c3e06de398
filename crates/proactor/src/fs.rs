//! Opening files for completion-port I/O, the same way on every backend.

use std::{
    fs::{File, OpenOptions},
    io,
    path::Path,
};

/// Opens the file at `path` with `options`, ready for [`Iocp::add_handle`] and overlapped
/// [`read_at`]/[`write_at`].
///
/// On Windows a file takes part in a completion port only if it was opened with
/// `FILE_FLAG_OVERLAPPED` (otherwise [`Iocp::add_handle`] refuses it with
/// [`io::ErrorKind::InvalidInput`]); this sets that flag as the options' custom flags (it
/// replaces custom flags set through `OpenOptionsExt::custom_flags`: to combine others with
/// it, set `FILE_FLAG_OVERLAPPED | others` yourself and open with [`OpenOptions::open`]). On
/// Linux every file descriptor works and the options are used as they are. Use it instead of
/// [`OpenOptions::open`] and the same code runs on every backend.
///
/// On the epoll fallback a regular file has no readiness: its reads and writes run at
/// submission, on the submitting thread, and their completions are queued at once.
///
/// [`Iocp::add_handle`]: crate::Iocp::add_handle
/// [`read_at`]: crate::Iocp::read_at
/// [`write_at`]: crate::Iocp::write_at
///
/// # Errors
///
/// Whatever [`OpenOptions::open`] returns.
///
/// ```no_run
/// use std::fs::OpenOptions;
///
/// # fn main() -> std::io::Result<()> {
/// let port = proactor::Iocp::new()?;
/// let file = proactor::open_file("data.bin", OpenOptions::new().read(true))?;
/// let file = port.add_handle(file, 1)?;
/// port.read_at(&file, Vec::with_capacity(64 * 1024), 0);
/// let mut done = port.get_completion(None)?;
/// let bytes = done.take_buffer().unwrap();
/// # let _ = bytes; Ok(()) }
/// ```
pub fn open_file(path: impl AsRef<Path>, options: &OpenOptions) -> io::Result<File> {
    #[allow(unused_mut)] // changed on Windows only
    let mut options = options.clone();
    #[cfg(windows)]
    {
        use std::os::windows::fs::OpenOptionsExt;
        // FILE_FLAG_OVERLAPPED (std combines custom flags with the attributes and the other
        // options at open).
        options.custom_flags(0x4000_0000);
    }
    options.open(path)
}
