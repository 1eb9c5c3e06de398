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

use std::{
    cmp::Reverse,
    collections::{BinaryHeap, HashMap, HashSet},
    io,
    sync::{
        Mutex, MutexGuard,
        atomic::{AtomicUsize, Ordering, fence},
    },
    time::Instant,
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

/// The timer structure of one port.
#[derive(Default)]
pub(crate) struct Timers {
    state: Mutex<State>,
    /// Nonzero while the state holds anything: completions skip the lock when it is 0.
    armed: AtomicUsize,
    /// Threads in (or about to enter) the backend's wait.
    blocked: AtomicUsize,
}

impl Timers {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn rearm(&self, state: &State) {
        let n = state.entries.len() + state.expired.len() + state.packets.len();
        // SeqCst, and a fence before `push` reads `blocked`: with `enter`'s fetch_add, fence
        // and load of `armed`, either the pusher sees the blocked thread (and wakes it) or that
        // thread sees the entry (and waits no longer than it). Release/Acquire alone allow
        // both to read the old values (the store-buffering pattern of `handshake.rs`).
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
        state.entries.insert(id, entry);
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
        match post() {
            Ok(id) => {
                state.packets.insert(id, Packet::Wake);
                state.wakes += 1;
                self.rearm(state);
            }
            // The blocked thread wakes at its own time instead; nothing is lost but promptness.
            Err(e) => tracing::warn!(error = %e, "could not wake a thread for a new deadline"),
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
                self.rearm(&state);
                return false;
            }
            None => return false,
        };
        let done = timer_completion(id, user, Some(crate::error::cancelled(CANCEL_CODE, None)));
        match post() {
            Ok(packet) => {
                state.entries.remove(&id);
                state.timers -= 1;
                state
                    .packets
                    .insert(packet, Packet::Deliver(Box::new(done)));
                self.rearm(&state);
                true
            }
            // The timer stays and completes at its time.
            Err(_) => false,
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
        let now = now.now();
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
        self.rearm(&state);
        (expired, next)
    }

    /// The thread came back from the kernel.
    pub(crate) fn leave(&self) {
        self.blocked.fetch_sub(1, Ordering::SeqCst);
    }

    /// A deadline's cancel failed: the operation had already finished.
    pub(crate) fn not_cancelled(&self, id: OpId) {
        let mut state = self.lock();
        state.expired.remove(&id);
        self.rearm(&state);
    }

    /// Applies the structure to a dequeued completion: swallows a wake (false), replaces a
    /// cancelled timer's packet with its completion, forgets a finished operation's deadline,
    /// and rewrites the cancel of an expired deadline into the deadline error.
    pub(crate) fn filter(&self, done: &mut Completion) -> bool {
        if self.armed.load(Ordering::Acquire) == 0 {
            return true;
        }
        let mut state = self.lock();
        if done.kind == OpKind::Post {
            match state.packets.remove(&done.id) {
                Some(Packet::Wake) => {
                    state.wakes -= 1;
                    self.rearm(&state);
                    return false;
                }
                Some(Packet::Deliver(timer)) => {
                    *done = *timer;
                    self.rearm(&state);
                    return true;
                }
                None => {}
            }
        }
        if matches!(state.entries.get(&done.id), Some(Entry::Deadline(_))) {
            state.entries.remove(&done.id);
        }
        if state.expired.remove(&done.id) {
            if let Some(err) = done
                .error
                .as_ref()
                .and_then(crate::error::cancel_to_deadline)
            {
                done.error = Some(err);
            }
        }
        self.rearm(&state);
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
    Completion {
        context: 0,
        user,
        id,
        kind: OpKind::Timer,
        bytes: 0,
        error,
        output: Output::None,
        peer: None,
        address: 0,
    }
}
