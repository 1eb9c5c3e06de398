//! Stop requests: Ctrl+C, Ctrl+Break and console close on Windows; SIGINT and SIGTERM on Unix.

use std::{
    io,
    sync::{
        Arc, Condvar, Mutex, OnceLock, PoisonError,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

/// Set once a stop was requested.
///
/// A signal handler may only set the flag (it must not lock); `wait` therefore also rechecks
/// the flag at each timeout, and in-process requests wake it at once through the condvar.
#[derive(Default)]
pub struct Stop {
    requested: Arc<AtomicBool>,
    lock: Mutex<()>,
    changed: Condvar,
}

impl Stop {
    /// Asks the server to stop (the Windows console handler; tests everywhere).
    #[cfg_attr(not(any(windows, test)), allow(dead_code))]
    pub fn request(&self) {
        self.requested.store(true, Ordering::SeqCst);
        let _guard = self.lock.lock().unwrap_or_else(PoisonError::into_inner);
        self.changed.notify_all();
    }

    /// Waits up to `timeout`; true once a stop was requested.
    pub fn wait(&self, timeout: Duration) -> bool {
        let guard = self.lock.lock().unwrap_or_else(PoisonError::into_inner);
        if self.requested.load(Ordering::SeqCst) {
            return true;
        }
        let _ = self
            .changed
            .wait_timeout(guard, timeout)
            .unwrap_or_else(PoisonError::into_inner);
        self.requested.load(Ordering::SeqCst)
    }
}

static STOP: OnceLock<Arc<Stop>> = OnceLock::new();

/// Installs the handlers; the returned value reports stop requests.
pub fn on_signal() -> io::Result<Arc<Stop>> {
    let stop = STOP.get_or_init(Arc::default).clone();
    install(&stop)?;
    Ok(stop)
}

#[cfg(windows)]
fn install(_stop: &Stop) -> io::Result<()> {
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

#[cfg(unix)]
fn install(stop: &Stop) -> io::Result<()> {
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, stop.requested.clone())?;
    }
    Ok(())
}
