//! Queues of slab entries linked through the slab (each entry holds the next one's index): a
//! handle's waiting pooled receives or accepts and the operations waiting for its lanes. A
//! queue is two indexes in the handle's line, with no buffer of its own; an entry is in at most
//! one queue at a time.

use super::{NONE, Slot};

/// A first-in, first-out queue of slab entries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Fifo {
    head: u32,
    tail: u32,
}

impl Fifo {
    pub(super) const EMPTY: Fifo = Fifo {
        head: NONE,
        tail: NONE,
    };

    pub(super) fn is_empty(&self) -> bool {
        self.head == NONE
    }

    /// The oldest entry.
    pub(super) fn front(&self) -> Option<u32> {
        (self.head != NONE).then_some(self.head)
    }

    pub(super) fn push_back(&mut self, slots: &mut [Slot], idx: u32) {
        slots[idx as usize].next = NONE;
        if self.tail == NONE {
            self.head = idx;
        } else {
            slots[self.tail as usize].next = idx;
        }
        self.tail = idx;
    }

    pub(super) fn push_front(&mut self, slots: &mut [Slot], idx: u32) {
        slots[idx as usize].next = self.head;
        if self.tail == NONE {
            self.tail = idx;
        }
        self.head = idx;
    }

    pub(super) fn pop_front(&mut self, slots: &[Slot]) -> Option<u32> {
        let idx = self.front()?;
        self.head = slots[idx as usize].next;
        if self.head == NONE {
            self.tail = NONE;
        }
        Some(idx)
    }

    /// Puts every entry of `other` after this queue's, in their order (`other`, a copy of
    /// its two indexes, is left to the caller to drop or reset).
    pub(super) fn append(&mut self, slots: &mut [Slot], other: Fifo) {
        if other.head == NONE {
            return;
        }
        if self.tail == NONE {
            self.head = other.head;
        } else {
            slots[self.tail as usize].next = other.head;
        }
        self.tail = other.tail;
    }

    /// Takes `idx` out of the queue (a walk from the oldest); false if it is not in it.
    pub(super) fn remove(&mut self, slots: &mut [Slot], idx: u32) -> bool {
        let mut prev = NONE;
        let mut at = self.head;
        while at != NONE && at != idx {
            prev = at;
            at = slots[at as usize].next;
        }
        if at == NONE {
            return false;
        }
        let next = slots[idx as usize].next;
        if prev == NONE {
            self.head = next;
        } else {
            slots[prev as usize].next = next;
        }
        if self.tail == idx {
            self.tail = prev;
        }
        true
    }

    /// The entries, oldest first.
    pub(super) fn iter<'a>(&self, slots: &'a [Slot]) -> impl Iterator<Item = u32> + 'a {
        let mut at = self.head;
        std::iter::from_fn(move || {
            let idx = (at != NONE).then_some(at)?;
            at = slots[idx as usize].next;
            Some(idx)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slots(n: usize) -> Vec<Slot> {
        (0..n)
            .map(|_| Slot {
                seq: 1,
                next: NONE,
                op: None,
                ts: None,
            })
            .collect()
    }

    fn drain(q: &mut Fifo, slots: &[Slot]) -> Vec<u32> {
        std::iter::from_fn(|| q.pop_front(slots)).collect()
    }

    #[test]
    fn keeps_order() {
        let mut s = slots(8);
        let mut q = Fifo::EMPTY;
        assert!(q.is_empty());
        for i in [3, 1, 7, 0] {
            q.push_back(&mut s, i);
        }
        assert_eq!(q.front(), Some(3));
        assert_eq!(q.iter(&s).collect::<Vec<_>>(), [3, 1, 7, 0]);
        assert_eq!(q.pop_front(&s), Some(3));
        q.push_front(&mut s, 5);
        q.push_back(&mut s, 2);
        assert_eq!(drain(&mut q, &s), [5, 1, 7, 0, 2]);
        assert!(q.is_empty());
        assert_eq!(q, Fifo::EMPTY);
        // Emptied, it takes entries again from scratch.
        q.push_front(&mut s, 4);
        q.push_back(&mut s, 6);
        assert_eq!(drain(&mut q, &s), [4, 6]);
    }

    #[test]
    fn appends_a_queue_in_order() {
        let mut s = slots(8);
        let (mut a, mut b) = (Fifo::EMPTY, Fifo::EMPTY);
        a.append(&mut s, b); // empty to empty
        assert_eq!(a, Fifo::EMPTY);
        for i in [4, 2] {
            b.push_back(&mut s, i);
        }
        a.append(&mut s, b); // into an empty one
        assert_eq!(a.iter(&s).collect::<Vec<_>>(), [4, 2]);
        let mut c = Fifo::EMPTY;
        for i in [7, 0, 5] {
            c.push_back(&mut s, i);
        }
        a.append(&mut s, c);
        a.append(&mut s, Fifo::EMPTY); // nothing
        a.push_back(&mut s, 1);
        assert_eq!(drain(&mut a, &s), [4, 2, 7, 0, 5, 1]);
    }

    #[test]
    fn removes_anywhere() {
        let mut s = slots(8);
        let mut q = Fifo::EMPTY;
        for i in 0..5 {
            q.push_back(&mut s, i);
        }
        assert!(q.remove(&mut s, 2)); // middle
        assert!(!q.remove(&mut s, 2)); // no longer in it
        assert!(!q.remove(&mut s, 7)); // never in it
        assert!(q.remove(&mut s, 0)); // head
        assert!(q.remove(&mut s, 4)); // tail
        q.push_back(&mut s, 6); // after the new tail
        assert_eq!(q.iter(&s).collect::<Vec<_>>(), [1, 3, 6]);
        assert!(q.remove(&mut s, 1));
        assert!(q.remove(&mut s, 3));
        assert!(q.remove(&mut s, 6));
        assert_eq!(q, Fifo::EMPTY);
        q.push_back(&mut s, 7);
        assert_eq!(drain(&mut q, &s), [7]);
    }
}
