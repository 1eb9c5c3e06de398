//! Recycled record memory: a finished operation's allocation is kept for the next operation, so
//! that steady traffic makes no heap call (`HeapAlloc`, `HeapFree`) per operation.
//!
//! Only memory is recycled, never a record: [`OpBox::into_inner`](super::OpBox::into_inner)
//! moves the record out before its allocation comes here, and
//! [`OpBox::new`](super::OpBox::new) writes a whole new record into it.

use std::{
    mem::MaybeUninit,
    sync::{Mutex, PoisonError},
};

use super::overlapped::Op;

/// Allocations kept at most: beyond this, finished records' memory goes back to the heap.
const KEEP: usize = 1024;

/// Spare allocations for operation records.
pub(crate) struct RecordPool {
    free: Mutex<Vec<Spare>>,
}

/// The memory of a record that was moved out: uninitialised, owned here alone.
struct Spare(Box<MaybeUninit<Op>>);

// SAFETY: a Spare holds no record, only memory that no one else points to (its record was moved
// out and the kernel is done with it); memory has no thread affinity.
unsafe impl Send for Spare {}

impl RecordPool {
    pub(crate) fn new() -> RecordPool {
        RecordPool {
            free: Mutex::new(Vec::new()),
        }
    }

    /// Memory for one record: a recycled allocation if there is one.
    pub(crate) fn take(&self) -> Box<MaybeUninit<Op>> {
        let spare = self
            .free
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        spare.map_or_else(Box::new_uninit, |s| s.0)
    }

    /// Keeps the memory of a record that was moved out, for a later operation.
    pub(crate) fn give(&self, memory: Box<MaybeUninit<Op>>) {
        let mut free = self.free.lock().unwrap_or_else(PoisonError::into_inner);
        if free.len() < KEEP {
            if free.capacity() == 0 {
                free.reserve_exact(KEEP); // once: pushing never allocates afterwards
            }
            free.push(Spare(memory));
        }
    }
}
