//! The table of operations in flight, by id: what cancellation and drop need to find them.
//!
//! An operation is inserted before the kernel can see it and removed when its completion is
//! dequeued, before its memory is freed. Whoever holds a shard's lock therefore knows that every
//! entry in it still names a live operation: [`Table::with`] runs its closure under that lock,
//! which is what makes cancelling by id race-free against completion.
//!
//! The table is a sharded slab, and it makes the ids of what it holds ([`Table::vacant`]): an
//! id's index bits name its entry (the shard is the index modulo the shard count, the entry
//! within the shard the quotient), and its sequence number, unique in the process (see
//! [`OpId`]), is kept by the entry. A lookup finds an entry only if both match: an id of another
//! port, of an operation that ended (its entry free or reused), or made for no entry at all
//! (index 0, [`OpId::next`]) names nothing here, and touches nothing. Each thread takes its new
//! entries from the shards in turn, from a starting shard of its own, so worker threads rarely
//! meet on one lock.

use std::{
    cell::Cell,
    io,
    sync::{
        Mutex, MutexGuard, PoisonError,
        atomic::{AtomicUsize, Ordering},
    },
};

use crate::{
    OpId,
    op::{INDEX_BITS, Sequence},
};

const SHARDS: usize = 64;
/// The most entries of one shard: an id's index (entry x shards + shard) has `INDEX_BITS`.
const PER_SHARD: usize = (1 << INDEX_BITS) / SHARDS;

/// One entry of a shard.
struct Entry<V> {
    /// The sequence number of the id of what it holds, or held last.
    seq: u64,
    value: Option<V>,
    /// Empty, kept for its id (see [`Table::remove_keeping_id`]), not on the free list.
    reserved: bool,
    /// A cancel was asked for the id it holds ([`Table::ask_cancel`]); cleared when the entry
    /// takes a new id, kept while the id is kept (an operation restarted under its id sees it).
    cancel_asked: bool,
}

struct Shard<V> {
    entries: Vec<Entry<V>>,
    /// Entries with no value and not reserved.
    free: Vec<u32>,
    /// Entries with a value.
    len: usize,
    /// The sequence numbers of this shard's new ids.
    seq: Sequence,
}

impl<V> Shard<V> {
    /// The position of the entry `id` names, if it is this shard's and holds `id`'s sequence
    /// number (not whether it holds a value).
    fn position(&self, id: OpId) -> Option<usize> {
        let pos = id.index() as usize / SHARDS;
        self.entries
            .get(pos)
            .is_some_and(|e| e.seq == id.seq())
            .then_some(pos)
    }

    fn get_mut(&mut self, id: OpId) -> Option<&mut V> {
        let pos = self.position(id)?;
        self.entries[pos].value.as_mut()
    }

    fn remove(&mut self, id: OpId, keep_id: bool) -> Option<V> {
        let pos = self.position(id)?;
        let entry = &mut self.entries[pos];
        let value = entry.value.take()?;
        self.len -= 1;
        if keep_id {
            entry.reserved = true;
        } else {
            self.free.push(pos as u32);
        }
        Some(value)
    }
}

/// Operations in flight, in a slab sharded by the index bits of their ids.
pub(crate) struct Table<V> {
    shards: Box<[Mutex<Shard<V>>]>,
    /// The most entries of a shard: [`PER_SHARD`] (fewer in tests).
    per_shard: usize,
}

/// The error of an operation refused because the table is full ([`Table::vacant`]): more
/// operations in flight than ids can name. Out of memory, as the OS would say it.
pub(crate) fn full() -> io::Error {
    #[cfg(windows)]
    let code = windows_sys::Win32::Foundation::ERROR_NOT_ENOUGH_MEMORY as i32;
    #[cfg(not(windows))]
    let code = libc::ENOMEM;
    crate::error::explained(
        io::ErrorKind::OutOfMemory,
        code,
        "more operations in flight on this port than ids can name (16,777,215)",
    )
}

/// An entry taken for a new operation and its id, with its shard locked: the operation can be
/// given its id before it is inserted ([`Vacant::insert`]). Dropped without an insert, the
/// entry is free again.
pub(crate) struct Vacant<'a, V> {
    /// Taken by an insert.
    shard: Option<MutexGuard<'a, Shard<V>>>,
    pos: usize,
    id: OpId,
}

/// A shard still locked after an insert ([`Vacant::insert`]): unlocked when dropped.
pub(crate) struct Held<'a, V> {
    _shard: MutexGuard<'a, Shard<V>>,
}

impl<'a, V> Vacant<'a, V> {
    pub(crate) fn id(&self) -> OpId {
        self.id
    }

    /// Puts `value` in the entry. The shard stays locked until the returned guard drops:
    /// whoever finds the entry (a cancel) acts after what the caller does meanwhile (queued the
    /// operation's SQE).
    pub(crate) fn insert(mut self, value: V) -> Held<'a, V> {
        let mut shard = self.shard.take().expect("not inserted yet");
        let entry = &mut shard.entries[self.pos];
        entry.value = Some(value);
        entry.reserved = false;
        shard.len += 1;
        Held { _shard: shard }
    }
}

impl<V> Drop for Vacant<'_, V> {
    fn drop(&mut self) {
        if let Some(shard) = &mut self.shard {
            shard.entries[self.pos].reserved = false;
            shard.free.push(self.pos as u32);
        }
    }
}

/// The shard a thread takes its next new entry from: each thread goes round the shards from a
/// starting shard of its own.
fn next_shard() -> usize {
    static THREADS: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        // The initializer is `const`: the lint misfires on the Windows target's std.
        #[allow(clippy::missing_const_for_thread_local)]
        static NEXT: Cell<usize> = const { Cell::new(usize::MAX) };
    }
    NEXT.with(|next| {
        let mut n = next.get();
        if n == usize::MAX {
            // Threads started one after another begin far apart (13 is prime to 64).
            n = THREADS.fetch_add(1, Ordering::Relaxed).wrapping_mul(13) % SHARDS;
        }
        next.set((n + 1) % SHARDS);
        n
    })
}

impl<V> Table<V> {
    pub(crate) fn new() -> Table<V> {
        Table::with_per_shard(PER_SHARD)
    }

    /// A table of at most `per_shard` entries per shard.
    fn with_per_shard(per_shard: usize) -> Table<V> {
        Table {
            per_shard,
            shards: (0..SHARDS)
                .map(|n| {
                    // Index 0 is never an entry's: the ids made for no entry have it, and
                    // `vacant` need not look it up.
                    let placeholder = (n == 0).then_some(Entry {
                        seq: 0,
                        value: None,
                        reserved: false,
                        cancel_asked: false,
                    });
                    Mutex::new(Shard {
                        entries: placeholder.into_iter().collect(),
                        free: Vec::new(),
                        len: 0,
                        seq: Sequence::new(),
                    })
                })
                .collect(),
        }
    }

    fn lock(&self, shard: usize) -> MutexGuard<'_, Shard<V>> {
        // A panic while a shard is locked cannot leave it half-updated (every critical section
        // changes an entry and its counts together, with no call that can panic between), so a
        // poisoned lock is still consistent.
        self.shards[shard]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn shard(&self, id: OpId) -> MutexGuard<'_, Shard<V>> {
        self.lock(id.index() as usize % SHARDS)
    }

    /// An entry for a new operation, and its id. If `id` names an entry kept for it
    /// ([`Table::remove_keeping_id`]: an operation restarted under the same id), that entry and
    /// `id`; else a new entry with a new id (`id` is then one of [`OpId::next`], which names no
    /// entry). `None` if every shard is full (2^24 - 1 operations in flight): the caller fails
    /// the operation with [`full`].
    pub(crate) fn vacant(&self, id: OpId) -> Option<Vacant<'_, V>> {
        if id.index() != 0 {
            let shard = self.shard(id);
            if let Some(pos) = shard.position(id)
                && shard.entries[pos].reserved
            {
                return Some(Vacant {
                    shard: Some(shard),
                    pos,
                    id,
                });
            }
        }
        // Test-only: the table is full.
        #[cfg(feature = "failpoints")]
        fail::fail_point!("table::full", |_| None);
        let first = next_shard();
        for k in first..first + SHARDS {
            let n = k % SHARDS;
            let mut shard = self.lock(n);
            let pos = match shard.free.pop() {
                Some(pos) => pos as usize,
                None if shard.entries.len() < self.per_shard => {
                    shard.entries.push(Entry {
                        seq: 0,
                        value: None,
                        reserved: false,
                        cancel_asked: false,
                    });
                    shard.entries.len() - 1
                }
                None => continue, // full: the next shard
            };
            let seq = shard.seq.take();
            shard.entries[pos].seq = seq;
            shard.entries[pos].cancel_asked = false;
            let id = OpId::new(seq, (pos * SHARDS + n) as u32);
            return Some(Vacant {
                shard: Some(shard),
                pos,
                id,
            });
        }
        None
    }

    /// Inserts `value` under a new id (see [`Table::vacant`] for `id`), which it returns;
    /// `None` if the table is full.
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    pub(crate) fn insert(&self, id: OpId, value: impl FnOnce(OpId) -> V) -> Option<OpId> {
        let vacant = self.vacant(id)?;
        let id = vacant.id();
        drop(vacant.insert(value(id)));
        Some(id)
    }

    pub(crate) fn remove(&self, id: OpId) -> Option<V> {
        self.shard(id).remove(id, false)
    }

    /// Removes the entry for `id` but keeps `id` for it: until [`Table::release`], no new
    /// operation takes the entry, and [`Table::vacant`] with `id` gives it back (an operation
    /// restarted under the same id). Lookups find nothing meanwhile.
    #[cfg_attr(not(windows), allow(dead_code))]
    pub(crate) fn remove_keeping_id(&self, id: OpId) -> Option<V> {
        self.shard(id).remove(id, true)
    }

    /// Frees the entry kept for `id`, if it is still kept and empty.
    #[cfg_attr(not(windows), allow(dead_code))]
    pub(crate) fn release(&self, id: OpId) {
        let mut shard = self.shard(id);
        if let Some(pos) = shard.position(id)
            && shard.entries[pos].reserved
        {
            shard.entries[pos].reserved = false;
            shard.free.push(pos as u32);
        }
    }

    /// Records that a cancel was asked for `id` and runs `f` on its entry's value (`None` while
    /// the id is kept with no value: an operation between two lives, see
    /// [`Table::remove_keeping_id`]), with the shard locked; `None` if `id` names nothing. An
    /// operation restarted under its id checks [`Table::cancel_asked`] before and after it
    /// starts again, so a cancel asked at any moment of the restart is never lost.
    #[cfg_attr(not(windows), allow(dead_code))]
    pub(crate) fn ask_cancel<R>(&self, id: OpId, f: impl FnOnce(Option<&V>) -> R) -> Option<R> {
        let mut shard = self.shard(id);
        let pos = shard.position(id)?;
        let entry = &mut shard.entries[pos];
        if entry.value.is_none() && !entry.reserved {
            return None;
        }
        entry.cancel_asked = true;
        Some(f(entry.value.as_ref()))
    }

    /// Whether a cancel was asked for `id` ([`Table::ask_cancel`]) while it named an entry.
    #[cfg_attr(not(windows), allow(dead_code))]
    pub(crate) fn cancel_asked(&self, id: OpId) -> bool {
        let shard = self.shard(id);
        shard
            .position(id)
            .is_some_and(|pos| shard.entries[pos].cancel_asked)
    }

    /// [`Table::with`], also telling `f` whether a cancel was asked for `id`.
    #[cfg_attr(not(windows), allow(dead_code))]
    pub(crate) fn with_cancel_asked<R>(
        &self,
        id: OpId,
        f: impl FnOnce(&V, bool) -> R,
    ) -> Option<R> {
        let shard = self.shard(id);
        let pos = shard.position(id)?;
        let entry = &shard.entries[pos];
        entry.value.as_ref().map(|v| f(v, entry.cancel_asked))
    }

    /// Runs `f` on the entry for `id`, if there is one, with its shard locked: the operation
    /// cannot be completed and freed while `f` runs.
    pub(crate) fn with<R>(&self, id: OpId, f: impl FnOnce(&V) -> R) -> Option<R> {
        self.shard(id).get_mut(id).map(|v| f(v))
    }

    /// Runs `f` on the entry for `id`, if there is one, with its shard locked; `f` may change it.
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    pub(crate) fn with_mut<R>(&self, id: OpId, f: impl FnOnce(&mut V) -> R) -> Option<R> {
        self.shard(id).get_mut(id).map(f)
    }

    /// Runs `keep` on the entry for `id` with its shard locked and removes the entry unless it
    /// returns true: `Some(true)` if kept, `Some(false)` if removed, `None` if there was none.
    /// What `keep` decides and does cannot interleave with another lookup of the entry.
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    pub(crate) fn keep_or_remove(
        &self,
        id: OpId,
        keep: impl FnOnce(&mut V) -> bool,
    ) -> Option<bool> {
        let mut shard = self.shard(id);
        let kept = keep(shard.get_mut(id)?);
        if !kept {
            shard.remove(id, false);
        }
        Some(kept)
    }

    /// Runs `f` on every entry, one shard locked at a time; `f` may change it.
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    pub(crate) fn for_each_mut(&self, mut f: impl FnMut(&mut V)) {
        for n in 0..SHARDS {
            let mut shard = self.lock(n);
            shard
                .entries
                .iter_mut()
                .filter_map(|e| e.value.as_mut())
                .for_each(&mut f);
        }
    }

    /// Runs `f` on every entry, one shard locked at a time.
    pub(crate) fn for_each(&self, mut f: impl FnMut(OpId, &V)) {
        for n in 0..SHARDS {
            let shard = self.lock(n);
            for (pos, e) in shard.entries.iter().enumerate() {
                if let Some(v) = &e.value {
                    f(OpId::new(e.seq, (pos * SHARDS + n) as u32), v);
                }
            }
        }
    }

    /// How many entries there are (a snapshot).
    pub(crate) fn len(&self) -> usize {
        (0..SHARDS).map(|n| self.lock(n).len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_find_remove() {
        let t = Table::new();
        let ids: Vec<OpId> = (0..200)
            .map(|i| t.insert(OpId::next(), |_| i).unwrap())
            .collect();
        assert_eq!(t.len(), 200);
        assert_eq!(t.with(ids[7], |v| *v), Some(7));
        assert_eq!(t.remove(ids[7]), Some(7));
        assert_eq!(t.remove(ids[7]), None);
        assert_eq!(t.with(ids[7], |v| *v), None);
        assert_eq!(t.with_mut(ids[8], |v| std::mem::replace(v, 80)), Some(8));
        assert_eq!(t.keep_or_remove(ids[8], |v| *v == 80), Some(true));
        assert_eq!(t.keep_or_remove(ids[8], |v| *v != 80), Some(false));
        assert_eq!(t.keep_or_remove(ids[8], |_| true), None);
        let vacant = t.vacant(OpId::next()).unwrap();
        let id8 = vacant.id();
        assert!(!ids.contains(&id8), "a new id");
        drop(vacant.insert(8));
        t.for_each_mut(|v| *v += 1000);
        assert_eq!(t.with(id8, |v| *v), Some(1008));
        let mut seen = Vec::new();
        t.for_each(|id, _| seen.push(id));
        assert_eq!(seen.len(), 199);
        assert!(seen.contains(&id8) && !seen.contains(&ids[7]) && !seen.contains(&ids[8]));
        assert_eq!(t.remove(id8), Some(1008));
        assert_eq!(t.len(), 198);
    }

    /// An entry's id, once its value is removed and a new value took the entry, finds nothing;
    /// the new value is untouched by every call with the old id.
    #[test]
    fn stale_ids_find_nothing() {
        let t = Table::new();
        let old = t.insert(OpId::next(), |_| 1).unwrap();
        assert_eq!(t.remove(old), Some(1));
        // Every shard's free entry taken again: one of them is the old entry.
        let new: Vec<OpId> = (0..SHARDS)
            .map(|_| t.insert(OpId::next(), |_| 2).unwrap())
            .collect();
        assert!(
            new.iter().any(|id| id.index() == old.index()),
            "the entry is reused"
        );
        assert!(!new.contains(&old));
        assert_eq!(t.with(old, |v| *v), None);
        assert_eq!(t.with_mut(old, |v| *v = 3), None);
        assert_eq!(t.keep_or_remove(old, |_| false), None);
        assert_eq!(t.remove(old), None);
        t.release(old);
        assert_eq!(t.len(), SHARDS);
        for id in new {
            assert_eq!(t.remove(id), Some(2));
        }
    }

    /// Ids of another table (with the same indexes), and ids made for no entry, find nothing.
    #[test]
    fn foreign_ids_find_nothing() {
        let (a, b) = (Table::new(), Table::new());
        let ids_a: Vec<OpId> = (0..300)
            .map(|i| a.insert(OpId::next(), |_| i).unwrap())
            .collect();
        let ids_b: Vec<OpId> = (0..300)
            .map(|i| b.insert(OpId::next(), |_| i).unwrap())
            .collect();
        let indexes = |ids: &[OpId]| {
            let mut v: Vec<u32> = ids.iter().map(|id| id.index()).collect();
            v.sort_unstable();
            v
        };
        let (ia, ib) = (indexes(&ids_a), indexes(&ids_b));
        assert!(
            ia.iter().any(|i| ib.contains(i)),
            "the tables share indexes"
        );
        for &id in ids_a.iter().chain([OpId::next()].iter()) {
            assert_eq!(b.with(id, |v| *v), None);
            assert_eq!(b.remove(id), None);
            assert_eq!(b.keep_or_remove(id, |_| false), None);
        }
        assert_eq!((a.len(), b.len()), (300, 300));
        for (n, id) in ids_b.iter().enumerate() {
            assert_eq!(b.remove(*id), Some(n));
        }
    }

    /// An id kept for a restart: lookups find nothing, no new entry takes it, `vacant` with it
    /// gives it back; `release` frees it (and only an empty kept entry).
    #[test]
    fn an_id_kept_for_a_restart_comes_back() {
        let t = Table::new();
        let id = t.insert(OpId::next(), |given| given).unwrap();
        assert_eq!(t.remove_keeping_id(id), Some(id));
        assert_eq!(t.with(id, |v| *v), None);
        assert_eq!(t.len(), 0);
        let others: Vec<OpId> = (0..3 * SHARDS)
            .map(|_| t.insert(OpId::next(), |g| g).unwrap())
            .collect();
        assert!(
            others.iter().all(|o| o.index() != id.index()),
            "kept from new entries"
        );
        assert_eq!(
            t.insert(id, |given| given).unwrap(),
            id,
            "restarted under its id"
        );
        assert_eq!(t.with(id, |v| *v), Some(id));
        t.release(id); // refilled: not freed
        assert_eq!(t.remove(id), Some(id));
        let id = t.insert(OpId::next(), |given| given).unwrap();
        t.remove_keeping_id(id);
        t.release(id);
        assert_ne!(
            t.insert(id, |given| given).unwrap(),
            id,
            "released: a new id"
        );
    }

    /// A full table refuses a new entry (no panic: the caller fails that operation); an entry
    /// freed is taken again, and an id kept for a restart still comes back while it is full.
    #[test]
    fn a_full_table_refuses_new_entries() {
        let t = Table::with_per_shard(2);
        // Every shard holds 2 entries but shard 0, whose first is index 0's placeholder.
        let ids: Vec<OpId> = (0..2 * SHARDS - 1)
            .map(|i| t.insert(OpId::next(), |_| i).unwrap())
            .collect();
        assert!(t.vacant(OpId::next()).is_none());
        assert_eq!(t.insert(OpId::next(), |_| 0), None);
        assert_eq!(t.len(), ids.len());
        assert_eq!(t.remove_keeping_id(ids[5]), Some(5));
        assert!(t.vacant(OpId::next()).is_none(), "a kept entry is not free");
        assert_eq!(
            t.insert(ids[5], |_| 50),
            Some(ids[5]),
            "restarted while full"
        );
        assert_eq!(t.remove(ids[9]), Some(9));
        let again = t.insert(OpId::next(), |_| 90).unwrap();
        assert_eq!(again.index(), ids[9].index());
        assert_ne!(again, ids[9]);
        assert_eq!(full().kind(), io::ErrorKind::OutOfMemory);
        assert!(crate::raw_os_error(&full()).is_some());
    }

    /// Threads take their entries from different shards in turn.
    #[test]
    fn a_thread_goes_round_the_shards() {
        let t = Table::new();
        let ids: Vec<OpId> = (0..SHARDS)
            .map(|_| t.insert(OpId::next(), |_| ()).unwrap())
            .collect();
        let shards: std::collections::HashSet<u32> =
            ids.iter().map(|id| id.index() % SHARDS as u32).collect();
        assert_eq!(shards.len(), SHARDS);
    }
}
