//! Stop requests: Ctrl+C and Ctrl+Break on Windows.

use std::{
    io,
    sync::{Arc, Condvar, Mutex, OnceLock, PoisonError},
    time::Duration,
};

/// Set once a stop was requested.
#[derive(Default)]
pub struct Stop {
    requested: Mutex<bool>,
    changed: Condvar,
}

impl Stop {
    /// Asks the server to stop.
    #[cfg_attr(not(windows), allow(dead_code))]
    pub fn request(&self) {
        *self
            .requested
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = true;
        self.changed.notify_all();
    }

    /// Waits up to `timeout`; true once a stop was requested.
    pub fn wait(&self, timeout: Duration) -> bool {
        let requested = self
            .requested
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let (requested, _) = self
            .changed
            .wait_timeout_while(requested, timeout, |r| !*r)
            .unwrap_or_else(PoisonError::into_inner);
        *requested
    }
}

static STOP: OnceLock<Arc<Stop>> = OnceLock::new();

/// Installs the handler; the returned value reports stop requests.
pub fn on_signal() -> io::Result<Arc<Stop>> {
    let stop = STOP.get_or_init(Arc::default).clone();
    install()?;
    Ok(stop)
}

#[cfg(windows)]
fn install() -> io::Result<()> {
    use windows_sys::{Win32::System::Console::SetConsoleCtrlHandler, core::BOOL};

    extern "system" fn handler(_ctrl: u32) -> BOOL {
        // Ctrl+C, Ctrl+Break, close, logoff, shutdown: all ask for a graceful stop.
        if let Some(stop) = STOP.get() {
            stop.request();
        }
        1 // handled: the process stops by itself, gracefully
    }

    // SAFETY: `handler` is a valid handler routine for the life of the process.
    if unsafe { SetConsoleCtrlHandler(Some(handler), 1) } == 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(not(windows))]
fn install() -> io::Result<()> {
    // No backend runs here yet (Iocp::new fails first); signals come with the Linux backend.
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "no signal handling on this platform yet",
    ))
}
