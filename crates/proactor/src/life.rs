//! Whether a handle is still open, shared with the operations that must act on their handle
//! after they complete (an accept that restarts after a client reset, a connect that updates
//! its socket's context): after a handle is closed its number may name another object.

use std::sync::{Mutex, PoisonError};

#[derive(Debug)]
pub(crate) struct Life {
    open: Mutex<bool>,
}

impl Life {
    pub(crate) fn new() -> Life {
        Life {
            open: Mutex::new(true),
        }
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
