//! The port's own timer structure: operation deadlines and timer operations, on every backend.
//!
//! One min-heap of `(instant, OpId)` behind a mutex, shared by the threads in
//! [`Iocp::get_completion`](crate::Iocp::get_completion): each waits in the kernel at most
//! until the earliest instant, and on waking expires what is due. A deadline cancels its
//! operation through the backend's ordinary cancel, after recording the id as expired, so that
//! the cancelled completion, when it is dequeued, is rewritten into the deadline error
//! ([`crate::is_deadline`]) with its buffers and bytes untouched. A due timer is returned by the
//! thread that expired it. No thread per timer, on any backend (see `ARCHITECTURE.md`,
//! "Deadlines and timers").
//!
//! A thread blocked in the kernel is woken, when a new instant is earlier than every other,
//! by an internal posted packet (the backend's own post path) that the dequeuing layer
//! swallows; a cancelled timer's completion travels the same way.
//!
//! Entries are invalidated lazily: an operation that completes first is removed from the map,
//! and its heap entry is dropped when it reaches the top.
//!
//! The lock is for the operations that have a deadline, not for every completion: while
//! anything is pending, a dequeued completion takes it only if its id's slot in a small table
//! of counts (ids with a deadline pending or expired, by a hash of the id, see [`slot_of`]) is nonzero, or if
//! it is a posted packet while internal packets are on their way; and a thread entering the
//! wait reads the earliest instant from an atomic copy, taking the lock only when something is
//! due.

use std::{
    cmp::Reverse,
    collections::{BinaryHeap, HashMap, HashSet},
    io,
    sync::{
        Mutex, MutexGuard,
        atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering, fence},
    },
    time::{Duration, Instant},
};

use crate::{Completion, OpId, OpKind, completion::Output, op::LiveCount};

/// The OS code of a cancel: `ERROR_OPERATION_ABORTED` on Windows, `ECANCELED` elsewhere.
#[cfg(windows)]
const CANCEL_CODE: i32 = 995;
#[cfg(not(windows))]
const CANCEL_CODE: i32 = 125;

/// What an id in the map stands for.
enum Entry {
    /// An operation of the backend with a deadline.
    Deadline(Instant),
    /// A timer operation, which lives only here until it completes.
    Timer {
        at: Instant,
        user: usize,
        _live: LiveCount,
    },
}

impl Entry {
    fn at(&self) -> Instant {
        match self {
            Entry::Deadline(at) | Entry::Timer { at, .. } => *at,
        }
    }
}

/// An internal packet posted through the backend, swallowed or replaced when dequeued.
enum Packet {
    /// Wakes a blocked thread so that it recomputes its wait.
    Wake,
    /// Delivers this completion in the packet's place (a cancelled timer).
    Deliver(Box<Completion>),
}

#[derive(Default)]
struct State {
    heap: BinaryHeap<Reverse<(Instant, OpId)>>,
    entries: HashMap<OpId, Entry>,
    /// Operations whose deadline passed and which were cancelled for it.
    expired: HashSet<OpId>,
    packets: HashMap<OpId, Packet>,
    /// How many `Packet::Wake` are posted and not yet dequeued.
    wakes: usize,
    /// How many timers are in `entries`.
    timers: usize,
}

impl State {
    /// Drops stale entries off the top of the heap; the earliest live instant.
    fn next(&mut self) -> Option<Instant> {
        while let Some(&Reverse((at, id))) = self.heap.peek() {
            if self.entries.get(&id).is_some_and(|e| e.at() == at) {
                return Some(at);
            }
            self.heap.pop();
        }
        None
    }
}

/// The time of one pass of a dequeue, read from the clock at most once and only if needed.
#[derive(Default)]
pub(crate) struct Clock(Option<Instant>);

impl Clock {
    pub(crate) fn now(&mut self) -> Instant {
        *self.0.get_or_insert_with(Instant::now)
    }
}

/// What a thread must do after expiring the due entries.
pub(crate) struct Expired {
    /// Operations to cancel (outside the lock), already recorded as expired.
    pub(crate) cancel: Vec<OpId>,
    /// Timers that completed, for this thread to return.
    pub(crate) timers: Vec<Completion>,
}

/// Slots of the table of deadline counts: 1 KiB per port. Operations with deadlines spread
/// evenly over them ([`slot_of`]); a completion whose slot another operation's deadline occupies
/// only takes the lock for nothing.
const SLOTS: usize = 256;

/// The slot of `id` among [`SLOTS`]: the top bits of its Fibonacci hash (the id times 2^64
/// over the golden ratio), which spread ids whatever their structure (a table gives ids of
/// consecutive entries equal sequence numbers modulo a power of two).
fn slot_of(id: OpId) -> usize {
    const { assert!(SLOTS.is_power_of_two()) };
    (id.as_u64().wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - SLOTS.trailing_zeros())) as usize
}

/// `next_at` when no entry is pending.
const NONE_PENDING: u64 = u64::MAX;

/// The timer structure of one port.
pub(crate) struct Timers {
    state: Mutex<State>,
    /// Nonzero while the state holds anything: completions skip the lock when it is 0.
    armed: AtomicUsize,
    /// Threads in (or about to enter) the backend's wait.
    blocked: AtomicUsize,
    /// Per slot ([`slot_of`] the id), how many operations with that slot have a deadline pending
    /// (in `entries`) or expired (in `expired`). Changed under the lock only; a completion whose
    /// slot reads 0 has no deadline to forget or rewrite, and skips the lock.
    timed: Box<[AtomicU32]>,
    /// Internal packets being posted or posted and not yet dequeued (`packets`, counted from
    /// before the post, so that a dequeuer that gets one at once still takes the lock).
    posting: AtomicUsize,
    /// The earliest pending instant, as nanoseconds after `base`, or [`NONE_PENDING`]: a
    /// thread entering the wait takes the lock only once it has passed.
    next_at: AtomicU64,
    base: Instant,
}

impl Default for Timers {
    fn default() -> Timers {
        Timers {
            state: Mutex::default(),
            armed: AtomicUsize::new(0),
            blocked: AtomicUsize::new(0),
            timed: (0..SLOTS).map(|_| AtomicU32::new(0)).collect(),
            posting: AtomicUsize::new(0),
            next_at: AtomicU64::new(NONE_PENDING),
            base: Instant::now(),
        }
    }
}

impl Timers {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn slot(&self, id: OpId) -> &AtomicU32 {
        &self.timed[slot_of(id)]
    }

    /// `id` gained a deadline (pending or expired). Under the lock.
    fn timed(&self, id: OpId) {
        self.slot(id).fetch_add(1, Ordering::SeqCst);
    }

    /// `id` left `entries` as a deadline, or `expired`. Under the lock.
    fn untimed(&self, id: OpId) {
        self.slot(id).fetch_sub(1, Ordering::SeqCst);
    }

    /// `at` as nanoseconds after `base` (0 for an instant before it).
    fn offset(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.base).as_nanos())
            .unwrap_or(NONE_PENDING - 1)
    }

    fn rearm(&self, state: &mut State) {
        let n = state.entries.len() + state.expired.len() + state.packets.len();
        let next = state.next().map_or(NONE_PENDING, |at| self.offset(at));
        // SeqCst, and a fence before `push` reads `blocked`: with `enter`'s fetch_add, fence
        // and loads of `armed` and `next_at`, either the pusher sees the blocked thread (and
        // wakes it) or that thread sees the entry (and waits no longer than it). Release/Acquire
        // alone allow both to read the old values (the store-buffering pattern of
        // `handshake.rs`).
        self.next_at.store(next, Ordering::SeqCst);
        self.armed.store(n, Ordering::SeqCst);
    }

    /// Pushes an entry; returns whether a blocked thread must be woken (the entry is the new
    /// earliest, threads wait in the kernel and no wake is on its way).
    fn push(&self, state: &mut State, id: OpId, entry: Entry) -> bool {
        let at = entry.at();
        let earliest = state.next().is_none_or(|next| at < next);
        // Operations that finish first leave their heap entries behind until they reach the
        // top: rebuild once they outnumber the live ones, so steady per-request deadlines keep
        // the heap bounded by what is pending.
        if state.heap.len() > 2 * state.entries.len() + 64 {
            let live: Vec<_> = state
                .entries
                .iter()
                .map(|(id, e)| Reverse((e.at(), *id)))
                .collect();
            state.heap = live.into();
        }
        state.heap.push(Reverse((at, id)));
        let deadline = matches!(entry, Entry::Deadline(_));
        let replaced = state.entries.insert(id, entry);
        match (deadline, matches!(replaced, Some(Entry::Deadline(_)))) {
            (true, false) => self.timed(id),
            (false, true) => self.untimed(id),
            _ => {}
        }
        self.rearm(state);
        fence(Ordering::SeqCst);
        earliest && state.wakes == 0 && self.blocked.load(Ordering::SeqCst) > 0
    }

    /// A wake packet was taken by a thread that returns to its caller with other completions:
    /// the thread it was meant for may still wait with a stale time. Posts another if threads
    /// wait and something is pending.
    pub(crate) fn rewake(&self, post: impl FnOnce() -> io::Result<OpId>) {
        if self.armed.load(Ordering::SeqCst) == 0 {
            return;
        }
        let mut state = self.lock();
        if state.wakes == 0 && self.blocked.load(Ordering::SeqCst) > 0 && state.next().is_some() {
            self.wake(&mut state, post);
        }
    }

    /// Records that `id` is to be cancelled as a deadline at `at`. `post` posts a wake packet.
    pub(crate) fn add_deadline(
        &self,
        id: OpId,
        at: Instant,
        post: impl FnOnce() -> io::Result<OpId>,
    ) {
        let mut state = self.lock();
        if self.push(&mut state, id, Entry::Deadline(at)) {
            self.wake(&mut state, post);
        }
    }

    /// Adds a timer `id` due at `at`.
    pub(crate) fn add_timer(
        &self,
        id: OpId,
        at: Instant,
        user: usize,
        post: impl FnOnce() -> io::Result<OpId>,
    ) {
        let mut state = self.lock();
        state.timers += 1;
        let entry = Entry::Timer {
            at,
            user,
            _live: LiveCount::new(),
        };
        if self.push(&mut state, id, entry) {
            self.wake(&mut state, post);
        }
    }

    /// Posts a wake packet, while holding the lock so that its dequeuer finds it recorded.
    fn wake(&self, state: &mut State, post: impl FnOnce() -> io::Result<OpId>) {
        self.posting.fetch_add(1, Ordering::SeqCst);
        match post() {
            Ok(id) => {
                state.packets.insert(id, Packet::Wake);
                state.wakes += 1;
                self.rearm(state);
            }
            // The blocked thread wakes at its own time instead; nothing is lost but promptness.
            Err(e) => {
                self.posting.fetch_sub(1, Ordering::SeqCst);
                tracing::warn!(error = %e, "could not wake a thread for a new deadline")
            }
        }
    }

    /// Cancels timer `id`: true if it was a pending timer, whose cancelled completion is then
    /// posted (through `post`) for a dequeuing thread.
    pub(crate) fn cancel_timer(&self, id: OpId, post: impl FnOnce() -> io::Result<OpId>) -> bool {
        let mut state = self.lock();
        let user = match state.entries.get(&id) {
            Some(Entry::Timer { user, .. }) => *user,
            Some(Entry::Deadline(_)) => {
                // The user's cancel comes before the deadline: the operation ends as a plain
                // cancel (the caller cancels it through the backend), never as a deadline.
                state.entries.remove(&id);
                self.untimed(id);
                self.rearm(&mut state);
                return false;
            }
            None => return false,
        };
        let done = timer_completion(id, user, Some(crate::error::cancelled(CANCEL_CODE, None)));
        self.posting.fetch_add(1, Ordering::SeqCst);
        match post() {
            Ok(packet) => {
                state.entries.remove(&id);
                state.timers -= 1;
                state
                    .packets
                    .insert(packet, Packet::Deliver(Box::new(done)));
                self.rearm(&mut state);
                true
            }
            // The timer stays and completes at its time.
            Err(_) => {
                self.posting.fetch_sub(1, Ordering::SeqCst);
                false
            }
        }
    }

    /// Marks the calling thread as about to wait in the kernel, expires what is due at `now`
    /// (at most `max` timers), and returns the earliest instant still pending. Reads the clock
    /// (`now`) only when something is pending: a port without deadlines or timers makes no
    /// clock call per dequeue.
    pub(crate) fn enter(&self, now: &mut Clock, max: usize) -> (Expired, Option<Instant>) {
        self.blocked.fetch_add(1, Ordering::SeqCst);
        // Pairs with the fence in `push` (see `rearm`).
        fence(Ordering::SeqCst);
        let mut expired = Expired {
            cancel: Vec::new(),
            timers: Vec::new(),
        };
        if self.armed.load(Ordering::SeqCst) == 0 {
            return (expired, None);
        }
        // Nothing due: no lock (the copy is exact to the nanosecond, and never later than the
        // instant it stands for).
        let next_at = self.next_at.load(Ordering::SeqCst);
        if next_at == NONE_PENDING {
            return (expired, None);
        }
        let now = now.now();
        if self.offset(now) < next_at {
            return (expired, Some(self.base + Duration::from_nanos(next_at)));
        }
        let mut state = self.lock();
        while let Some(at) = state.next() {
            if at > now || expired.timers.len() >= max {
                break;
            }
            let Some(Reverse((_, id))) = state.heap.pop() else {
                break;
            };
            match state.entries.remove(&id) {
                Some(Entry::Deadline(_)) => {
                    state.expired.insert(id);
                    expired.cancel.push(id);
                }
                Some(Entry::Timer { user, .. }) => {
                    state.timers -= 1;
                    expired.timers.push(timer_completion(id, user, None));
                }
                None => {}
            }
        }
        let next = state.next();
        self.rearm(&mut state);
        (expired, next)
    }

    /// The thread came back from the kernel.
    pub(crate) fn leave(&self) {
        self.blocked.fetch_sub(1, Ordering::SeqCst);
    }

    /// A deadline's cancel failed: the operation had already finished.
    pub(crate) fn not_cancelled(&self, id: OpId) {
        let mut state = self.lock();
        if state.expired.remove(&id) {
            self.untimed(id);
        }
        self.rearm(&mut state);
    }

    /// Applies the structure to a dequeued completion: swallows a wake (false), replaces a
    /// cancelled timer's packet with its completion, forgets a finished operation's deadline,
    /// and rewrites the cancel of an expired deadline into the deadline error.
    pub(crate) fn filter(&self, done: &mut Completion) -> bool {
        if self.armed.load(Ordering::Acquire) == 0 {
            return true;
        }
        let packet = done.kind == OpKind::Post && self.posting.load(Ordering::SeqCst) > 0;
        if !packet && self.slot(done.id).load(Ordering::SeqCst) == 0 {
            return true; // no deadline: nothing to forget or rewrite
        }
        let mut state = self.lock();
        if done.kind == OpKind::Post {
            let taken = state.packets.remove(&done.id);
            if taken.is_some() {
                self.posting.fetch_sub(1, Ordering::SeqCst);
            }
            match taken {
                Some(Packet::Wake) => {
                    state.wakes -= 1;
                    self.rearm(&mut state);
                    return false;
                }
                Some(Packet::Deliver(timer)) => {
                    *done = *timer;
                    self.rearm(&mut state);
                    return true;
                }
                None => {}
            }
        }
        if matches!(state.entries.get(&done.id), Some(Entry::Deadline(_))) {
            state.entries.remove(&done.id);
            self.untimed(done.id);
        }
        if state.expired.remove(&done.id) {
            self.untimed(done.id);
            if let Some(err) = done
                .error
                .as_ref()
                .and_then(crate::error::cancel_to_deadline)
            {
                done.error = Some(err);
            }
        }
        self.rearm(&mut state);
        true
    }

    /// Pending timers and cancelled timers not yet dequeued, minus the wake packets the
    /// backend counts as in flight.
    pub(crate) fn adjust_in_flight(&self, backend: usize) -> usize {
        if self.armed.load(Ordering::Acquire) == 0 {
            return backend;
        }
        let state = self.lock();
        (backend + state.timers).saturating_sub(state.wakes)
    }
}

fn timer_completion(id: OpId, user: usize, error: Option<io::Error>) -> Completion {
    Completion::of(
        0,
        user,
        id,
        OpKind::Timer,
        error.map_or(Ok(0), Err),
        Output::None,
    )
}

#[cfg(test)]
mod tests {
    use std::{sync::mpsc, thread, time::Duration};

    use super::*;

    fn completion(id: OpId, kind: OpKind, error: Option<io::Error>) -> Completion {
        Completion {
            context: 0,
            user: 0,
            id,
            kind,
            more: false,
            bytes: 0,
            error,
            output: Output::None,
            peer: None,
            #[cfg(windows)]
            address: 0,
        }
    }

    /// Whether `f` finishes on another thread while this one holds the timers' lock.
    fn runs_without_the_lock(timers: &Timers, f: impl FnOnce(&Timers) + Send) -> bool {
        thread::scope(|s| {
            let guard = timers.lock();
            let (tx, rx) = mpsc::channel();
            s.spawn(move || {
                f(timers);
                let _ = tx.send(());
            });
            let finished = rx.recv_timeout(Duration::from_millis(500)).is_ok();
            drop(guard);
            finished
        })
    }

    fn no_post() -> io::Result<OpId> {
        Err(io::Error::other("no wake is expected"))
    }

    /// With a deadline pending, the completion of an operation without one, and a thread
    /// entering the wait before the deadline, leave the lock alone; the deadline's own
    /// operation takes it and is forgotten.
    #[test]
    fn only_operations_with_a_deadline_take_the_lock() {
        let timers = Timers::default();
        let (timed, other) = (OpId::new(1000, 0), OpId::new(1001, 0));
        let at = Instant::now() + Duration::from_secs(3600);
        timers.add_deadline(timed, at, no_post);
        assert!(runs_without_the_lock(&timers, |t| {
            assert!(t.filter(&mut completion(other, OpKind::Recv, None)));
        }));
        assert!(runs_without_the_lock(&timers, |t| {
            let (expired, next) = t.enter(&mut Clock::default(), 8);
            t.leave();
            assert!(expired.cancel.is_empty() && expired.timers.is_empty());
            let next = next.expect("the deadline is pending");
            assert!(
                next <= at && at - next < Duration::from_micros(1),
                "{next:?} {at:?}"
            );
        }));
        // The operation with the deadline completes first: its entry goes, and with it
        // everything the structure held.
        assert!(timers.filter(&mut completion(timed, OpKind::Recv, None)));
        assert_eq!(timers.armed.load(Ordering::SeqCst), 0);
        assert!(timers.timed.iter().all(|n| n.load(Ordering::SeqCst) == 0));
    }

    /// A deadline that passed is expired under the lock, and the cancelled completion of its
    /// operation is rewritten into the deadline error; a user's post meanwhile is untouched.
    #[test]
    fn an_expired_deadline_still_rewrites_its_cancel() {
        let timers = Timers::default();
        let timed = OpId::new(2000, 0);
        timers.add_deadline(timed, Instant::now(), no_post);
        let (expired, _) = timers.enter(&mut Clock::default(), 8);
        timers.leave();
        assert_eq!(expired.cancel, [timed]);
        let mut post = completion(OpId::new(2001, 0), OpKind::Post, None);
        assert!(timers.filter(&mut post));
        assert!(post.error.is_none());
        let cancel = crate::error::cancelled(CANCEL_CODE, None);
        let mut done = completion(timed, OpKind::Recv, Some(cancel));
        assert!(timers.filter(&mut done));
        let err = done.error.expect("the deadline error");
        assert!(crate::is_deadline(&err), "{err}");
        assert_eq!(timers.armed.load(Ordering::SeqCst), 0);
        assert!(timers.timed.iter().all(|n| n.load(Ordering::SeqCst) == 0));
    }

    /// A wake packet dequeued at once, before its poster recorded it, is still swallowed: the
    /// count of internal packets is raised before the post.
    #[test]
    fn a_wake_dequeued_before_it_is_recorded_is_swallowed() {
        let timers = Timers::default();
        timers.blocked.fetch_add(1, Ordering::SeqCst); // a thread waits in the kernel
        let wake = OpId::new(3000, 0);
        let swallowed = thread::scope(|s| {
            let (tx, rx) = mpsc::channel();
            let timers = &timers;
            let poster = s.spawn(move || {
                timers.add_deadline(OpId::new(3001, 0), Instant::now(), || {
                    // The dequeuer gets the packet while the poster still holds the lock.
                    tx.send(()).unwrap();
                    thread::sleep(Duration::from_millis(50));
                    Ok(wake)
                })
            });
            rx.recv().unwrap();
            let kept = timers.filter(&mut completion(wake, OpKind::Post, None));
            poster.join().unwrap();
            !kept
        });
        assert!(swallowed, "an internal wake reached the application");
    }
}
