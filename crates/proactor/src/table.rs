//! The table of operations in flight, by id: what cancellation and drop need to find them.
//!
//! An operation is inserted before the kernel can see it and removed when its completion is
//! dequeued, before its memory is freed. Whoever holds a shard's lock therefore knows that every
//! entry in it still names a live operation: [`Table::with`] runs its closure under that lock,
//! which is what makes cancelling by id race-free against completion.
//!
//! A thread's ids have consecutive sequence numbers (see [`OpId`]), and the shard is the
//! sequence number modulo the shard count, so consecutive operations land in different shards
//! and worker threads rarely meet on one lock.

use std::{
    collections::HashMap,
    hash::{BuildHasherDefault, Hasher},
    sync::{Mutex, MutexGuard, PoisonError},
};

use crate::OpId;

const SHARDS: usize = 64;

/// Hashes an id for its shard's map by its sequence number: unique, nothing to defend
/// against, but the map (hashbrown) takes the slot from the hash's low bits and a tag from its
/// top 7. The identity would give every id of a shard the same low 6 bits (the shard index) and
/// a zero tag: with 10,000 operations in flight the entries piled onto a few slots and every
/// probe compared every key, 91 ns per insert and remove against 11 ns for this hash. Dividing
/// by the shard count leaves consecutive numbers within a shard; multiplying by an odd constant
/// (2^64 / the golden ratio) maps any 2^k consecutive numbers to distinct low k bits and spreads
/// the top bits.
#[derive(Default)]
struct IdHasher(u64);

/// 2^64 divided by the golden ratio, rounded to odd (Fibonacci hashing).
const FIBONACCI: u64 = 0x9E37_79B9_7F4A_7C15;

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8) | u64::from(b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (OpId::from_u64(n).seq() / SHARDS as u64).wrapping_mul(FIBONACCI);
    }
}

type Shard<V> = HashMap<OpId, V, BuildHasherDefault<IdHasher>>;

/// Operations in flight, sharded by id.
pub(crate) struct Table<V> {
    shards: Box<[Mutex<Shard<V>>]>,
}

impl<V> Table<V> {
    pub(crate) fn new() -> Table<V> {
        Table {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
        }
    }

    fn shard(&self, id: OpId) -> MutexGuard<'_, Shard<V>> {
        // A panic while a shard is locked cannot leave it half-updated (every critical section
        // is one map call), so a poisoned lock is still consistent.
        self.shards[(id.seq() % SHARDS as u64) as usize]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn insert(&self, id: OpId, value: V) {
        self.shard(id).insert(id, value);
    }

    /// Inserts `value` for `id` and runs `f` before the shard's lock is released: whoever finds
    /// the entry (a cancel) acts after `f` did (queued the operation's SQE).
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    pub(crate) fn insert_then<R>(&self, id: OpId, value: V, f: impl FnOnce() -> R) -> R {
        let mut shard = self.shard(id);
        shard.insert(id, value);
        f()
    }

    pub(crate) fn remove(&self, id: OpId) -> Option<V> {
        self.shard(id).remove(&id)
    }

    /// Runs `f` on the entry for `id`, if there is one, with its shard locked: the operation
    /// cannot be completed and freed while `f` runs.
    pub(crate) fn with<R>(&self, id: OpId, f: impl FnOnce(&V) -> R) -> Option<R> {
        self.shard(id).get(&id).map(f)
    }

    /// Runs `f` on the entry for `id`, if there is one, with its shard locked; `f` may change it.
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    pub(crate) fn with_mut<R>(&self, id: OpId, f: impl FnOnce(&mut V) -> R) -> Option<R> {
        self.shard(id).get_mut(&id).map(f)
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
        let kept = keep(shard.get_mut(&id)?);
        if !kept {
            shard.remove(&id);
        }
        Some(kept)
    }

    /// Runs `f` on every entry, one shard locked at a time; `f` may change it.
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    pub(crate) fn for_each_mut(&self, mut f: impl FnMut(&mut V)) {
        for shard in self.shards.iter() {
            let mut shard = shard.lock().unwrap_or_else(PoisonError::into_inner);
            shard.values_mut().for_each(&mut f);
        }
    }

    /// Runs `f` on every entry, one shard locked at a time.
    #[cfg_attr(not(windows), allow(dead_code))]
    pub(crate) fn for_each(&self, mut f: impl FnMut(OpId, &V)) {
        for shard in self.shards.iter() {
            let shard = shard.lock().unwrap_or_else(PoisonError::into_inner);
            for (id, v) in shard.iter() {
                f(*id, v);
            }
        }
    }

    /// How many entries there are (a snapshot).
    pub(crate) fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(PoisonError::into_inner).len())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_find_remove() {
        let t = Table::new();
        let ids: Vec<OpId> = (0..200).map(|_| OpId::next()).collect();
        for (i, id) in ids.iter().enumerate() {
            t.insert(*id, i);
        }
        assert_eq!(t.len(), 200);
        assert_eq!(t.with(ids[7], |v| *v), Some(7));
        assert_eq!(t.remove(ids[7]), Some(7));
        assert_eq!(t.remove(ids[7]), None);
        assert_eq!(t.with(ids[7], |v| *v), None);
        assert_eq!(t.with_mut(ids[8], |v| std::mem::replace(v, 80)), Some(8));
        assert_eq!(t.keep_or_remove(ids[8], |v| *v == 80), Some(true));
        assert_eq!(t.keep_or_remove(ids[8], |v| *v != 80), Some(false));
        assert_eq!(t.keep_or_remove(ids[8], |_| true), None);
        assert_eq!(t.insert_then(ids[8], 8, || 1), 1);
        t.for_each_mut(|v| *v += 1000);
        assert_eq!(t.with(ids[8], |v| *v), Some(1008));
        let mut seen = 0;
        t.for_each(|_, _| seen += 1);
        assert_eq!(seen, 199);
        assert_eq!(t.remove(ids[8]), Some(1008));
    }

    /// The ids one shard holds hash to distinct slots and varied tags (see [`IdHasher`]).
    #[test]
    fn ids_of_one_shard_spread_over_slots_and_tags() {
        let hash = |id: u64| {
            let mut h = IdHasher::default();
            h.write_u64(id);
            h.finish()
        };
        let ids: Vec<u64> = (0..1024)
            .map(|m| OpId::new(m * SHARDS as u64 + 5, 0).as_u64())
            .collect();
        let slots: std::collections::HashSet<u64> = ids.iter().map(|&id| hash(id) & 1023).collect();
        assert_eq!(
            slots.len(),
            1024,
            "1,024 consecutive ids of a shard, 1,024 slots"
        );
        let tags: std::collections::HashSet<u64> = ids.iter().map(|&id| hash(id) >> 57).collect();
        assert!(tags.len() > 100, "top-7-bit tags: {}", tags.len());
    }
}
