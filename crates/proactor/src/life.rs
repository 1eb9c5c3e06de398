//! Whether a handle is still open, shared with the operations that must act on their handle
//! after they complete (an accept that restarts after a client reset, a connect that updates
//! its socket's context): after a handle is closed its number may name another object.

use std::sync::{
    Mutex, PoisonError,
    atomic::{AtomicU64, Ordering},
};

#[derive(Debug)]
pub(crate) struct Life {
    open: Mutex<bool>,
    /// How many times every operation on the handle was cancelled (`cancel_all`): an operation
    /// restarted under its id (an accept after a client reset) that started before the latest
    /// one was cancelled too, whether or not the cancel found it in the kernel.
    #[cfg_attr(not(windows), allow(dead_code))]
    cancels: AtomicU64,
}

impl Life {
    pub(crate) fn new() -> Life {
        Life {
            open: Mutex::new(true),
            cancels: AtomicU64::new(0),
        }
    }

    /// Counts a cancel of every operation on the handle; call it before cancelling them.
    #[cfg_attr(not(windows), allow(dead_code))]
    pub(crate) fn cancel_all(&self) {
        self.cancels.fetch_add(1, Ordering::SeqCst);
    }

    /// How many cancels of every operation there were (see [`Life::cancel_all`]).
    #[cfg_attr(not(windows), allow(dead_code))]
    pub(crate) fn cancels(&self) -> u64 {
        self.cancels.load(Ordering::SeqCst)
    }

    /// Runs `f` if the handle is still open, holding it open while `f` runs.
    pub(crate) fn while_open<R>(&self, f: impl FnOnce() -> R) -> Option<R> {
        let open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        if *open { Some(f()) } else { None }
    }

    /// Marks the handle closed, once `before` (which cancels its operations) has run: no
    /// `while_open` runs after this starts.
    pub(crate) fn close(&self, before: impl FnOnce()) {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        *open = false;
        before();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_runs_after_close() {
        let life = Life::new();
        assert_eq!(life.while_open(|| 1), Some(1));
        let mut ran = false;
        life.close(|| ran = true);
        assert!(ran);
        assert_eq!(life.while_open(|| 2), None);
    }
}
