//! The lock-free handshakes between threads that publish work and threads that go to sleep in
//! the kernel, shared by the Linux backends and model-checked with loom.
//!
//! Both are the same store-buffer pattern: one side publishes (an SQE, a completion), then
//! reads the number of sleepers; the other counts itself a sleeper, then reads what is
//! published (the kernel reads the SQ, the waiter reads the ready queue's length). With a
//! sequentially consistent fence between the write and the read on each side, at least one
//! side sees the other: either the publisher sees a sleeper and wakes it (enters the kernel,
//! writes the eventfd), or the sleeper sees the work and does not sleep on it.
//!
//! - [`Submission`]: io_uring's batched submission. [`Submission::push`] publishes an SQE
//!   through [`Ring::publish`] and enters the kernel only when told to or when a thread is
//!   blocked in `io_uring_enter` (which would not see the SQE): otherwise the next thread to
//!   enter submits it with the rest of the batch. [`Submission::wait`] counts the caller as a
//!   waiter around its blocking enter, which submits what is queued before it sleeps.
//!   Property: no SQE is left unsubmitted while every thread sleeps.
//! - [`Ready`]: the epoll backend's ready queue and its waiter count. [`Ready::push`] queues
//!   completions and wakes one sleeper through [`Wake`] (the eventfd); [`Ready::wait`] sleeps
//!   only while the queue is empty; [`Ready::pop`] wakes the next sleeper when it leaves work
//!   behind, so one eventfd wake-up (several writes can merge into one edge-triggered event)
//!   reaches as many threads as there are completions. Property: no completion waits in the
//!   queue while a thread sleeps in `epoll_wait`.
//!
//! Under `--cfg loom` the atomics, fences and locks are loom's, and the tests at the bottom run
//! these types (not copies) against loom models of the kernel side:
//! `RUSTFLAGS="--cfg loom" cargo test -p proactor --lib --release handshake` (what
//! `cargo xtask ci` runs, in `target/loom`).

use std::{collections::VecDeque, sync::PoisonError};

#[cfg(loom)]
use loom::sync::{
    Mutex, MutexGuard,
    atomic::{AtomicUsize, Ordering::SeqCst, fence},
};
#[cfg(not(loom))]
use std::sync::{
    Mutex, MutexGuard,
    atomic::{AtomicUsize, Ordering::SeqCst, fence},
};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The kernel side of batched submission: io_uring's submission queue.
pub(crate) trait Ring {
    /// What is queued: an SQE.
    type Entry: ?Sized;
    /// Queues `entry` where the next `io_uring_enter` sees it (the SQ tail, stored with
    /// release ordering).
    fn publish(&self, entry: &Self::Entry);
    /// Has what is queued submitted, without waiting: enters the kernel, or (io_uring, from a
    /// thread that does not dequeue) wakes a thread blocked in it, whose loop submits it.
    fn enter(&self);
}

/// io_uring's batched submission against the threads blocked in `io_uring_enter`.
pub(crate) struct Submission {
    /// Threads blocked in `io_uring_enter` right now.
    waiters: AtomicUsize,
}

impl Submission {
    pub(crate) fn new() -> Submission {
        Submission {
            waiters: AtomicUsize::new(0),
        }
    }

    /// Queues `entry`. With `now`, or when a thread is blocked in the kernel (which would not
    /// see it), enters the kernel at once; otherwise the next thread to enter submits it
    /// together with the others: one syscall for a batch.
    pub(crate) fn push<R: Ring + ?Sized>(&self, ring: &R, entry: &R::Entry, now: bool) {
        ring.publish(entry);
        self.kick(ring, now);
    }

    /// After SQEs were published (by `push`, or by the caller through [`Ring::publish`] under
    /// a lock of its own): enters the kernel with `now`, or when a thread is blocked in it.
    pub(crate) fn kick<R: Ring + ?Sized>(&self, ring: &R, now: bool) {
        // Pairs with the fence in `wait`: either this thread sees the waiter, or the waiter's
        // enter sees the SQE.
        fence(SeqCst);
        if !now && self.waiters.load(SeqCst) == 0 {
            return; // the next enter submits it
        }
        ring.enter();
    }

    /// Whether a thread is counted as blocked in the kernel now (after this thread's own
    /// publish and a full fence, as in `kick`: if it reads false, a waiter that comes later
    /// sees what was published).
    pub(crate) fn waiting(&self) -> bool {
        fence(SeqCst);
        self.waiters.load(SeqCst) > 0
    }

    /// Runs `enter`, a blocking `io_uring_enter` that submits what is queued and then sleeps,
    /// counted as a waiter.
    pub(crate) fn wait<T>(&self, enter: impl FnOnce() -> T) -> T {
        self.waiters.fetch_add(1, SeqCst);
        // Pairs with the fence in `push`; the kernel reads the SQ tail after this.
        fence(SeqCst);
        let result = enter();
        self.waiters.fetch_sub(1, SeqCst);
        result
    }
}

/// Wakes one thread sleeping in the kernel: the epoll backend's eventfd write.
pub(crate) trait Wake {
    /// Wakes one sleeper, or makes the next sleep return at once.
    fn wake(&self);
}

/// The epoll backend's ready queue, with the count of threads sleeping in `epoll_wait`.
pub(crate) struct Ready<T> {
    queue: Mutex<VecDeque<T>>,
    /// `queue.len()`, readable without the lock.
    len: AtomicUsize,
    /// Threads in (or about to enter) `epoll_wait`.
    waiters: AtomicUsize,
}

impl<T> Ready<T> {
    pub(crate) fn new() -> Ready<T> {
        Ready {
            queue: Mutex::new(VecDeque::new()),
            len: AtomicUsize::new(0),
            waiters: AtomicUsize::new(0),
        }
    }

    /// How many completions are queued.
    pub(crate) fn len(&self) -> usize {
        self.len.load(SeqCst)
    }

    /// Queues `items`; wakes one sleeper if any was queued.
    pub(crate) fn push(&self, items: impl IntoIterator<Item = T>, waker: &(impl Wake + ?Sized)) {
        let mut pushed = false;
        {
            let mut queue = lock(&self.queue);
            for item in items {
                queue.push_back(item);
                self.len.fetch_add(1, SeqCst);
                pushed = true;
            }
        }
        if pushed {
            self.wake_one(waker);
        }
    }

    /// Wakes one sleeper, if any. Each wake-up reaches one thread; a thread that leaves work in
    /// the queue wakes the next (see `pop`).
    fn wake_one(&self, waker: &(impl Wake + ?Sized)) {
        // Pairs with the fence in `wait`: either this thread sees the sleeper, or the sleeper
        // sees the queue's new length.
        fence(SeqCst);
        if self.waiters.load(SeqCst) > 0 {
            waker.wake();
        }
    }

    /// Moves up to `max` completions into `out`; returns how many.
    pub(crate) fn pop(&self, out: &mut Vec<T>, max: usize, waker: &(impl Wake + ?Sized)) -> usize {
        if self.len.load(SeqCst) == 0 {
            return 0;
        }
        let (n, left) = {
            let mut queue = lock(&self.queue);
            let n = max.min(queue.len());
            out.extend(queue.drain(..n));
            self.len.fetch_sub(n, SeqCst);
            (n, queue.len())
        };
        if left > 0 {
            self.wake_one(waker);
        }
        n
    }

    /// Runs `sleep` (`epoll_wait`) counted as a sleeper, unless completions are queued: then
    /// returns `None` at once.
    pub(crate) fn wait<R>(&self, sleep: impl FnOnce() -> R) -> Option<R> {
        self.waiters.fetch_add(1, SeqCst);
        // Pairs with the fence in `wake_one`.
        fence(SeqCst);
        if self.len.load(SeqCst) > 0 {
            self.waiters.fetch_sub(1, SeqCst);
            return None;
        }
        let result = sleep();
        self.waiters.fetch_sub(1, SeqCst);
        Some(result)
    }
}

/// Model checks: `RUSTFLAGS="--cfg loom" cargo test -p proactor --lib --release handshake`.
///
/// Each model runs the types above against a loom model of the kernel side and ends only if
/// every thread gets its completions: a lost wake-up leaves a thread blocked forever, which
/// loom reports as a deadlock with the interleaving that led to it.
#[cfg(all(test, loom))]
mod loom_tests {
    use loom::{
        sync::{
            Arc, Condvar, Mutex,
            atomic::{AtomicUsize, Ordering},
        },
        thread,
    };

    use super::{Ready, Ring, Submission, Wake, lock};

    /// Bounded preemptions keep each model within seconds; 3 covers every interleaving of
    /// these handshakes' few shared accesses per thread.
    fn model(f: impl Fn() + Sync + Send + 'static) {
        let mut builder = loom::model::Builder::new();
        if builder.preemption_bound.is_none() {
            builder.preemption_bound = Some(3);
        }
        builder.check(f);
    }

    /// io_uring as the handshake sees it: the SQ tail the application stores, the head the
    /// kernel consumes up to, and a CQE for each consumed SQE (NOPs). `io_uring_enter` takes
    /// the kernel's lock (`uring_lock`), reads the tail with acquire ordering, and posts a CQE
    /// per new SQE; with a wait it then sleeps until a CQE is there.
    #[derive(Default)]
    struct Kernel {
        /// The SQ lock of `Uring::push` (serialises the submitters, not the kernel).
        sq: Mutex<()>,
        tail: AtomicUsize,
        state: Mutex<KernelState>,
        cqe_posted: Condvar,
    }

    #[derive(Default)]
    struct KernelState {
        head: usize,
        cqes: usize,
    }

    impl Kernel {
        fn consume(&self, state: &mut KernelState) {
            let tail = self.tail.load(Ordering::Acquire);
            if tail > state.head {
                state.cqes += tail - state.head;
                state.head = tail;
                self.cqe_posted.notify_all();
            }
        }

        /// `io_uring_enter(to_submit, min_complete = 1, GETEVENTS)`.
        fn enter_and_wait(&self) {
            let mut state = lock(&self.state);
            self.consume(&mut state);
            while state.cqes == 0 {
                state = self.cqe_posted.wait(state).unwrap();
            }
        }

        /// Takes one CQE, as `reap_one` does.
        fn reap(&self) -> bool {
            let mut state = lock(&self.state);
            if state.cqes == 0 {
                return false;
            }
            state.cqes -= 1;
            true
        }
    }

    impl Ring for Kernel {
        type Entry = ();

        fn publish(&self, _: &()) {
            let _sq = lock(&self.sq);
            let tail = self.tail.load(Ordering::Relaxed);
            self.tail.store(tail + 1, Ordering::Release);
        }

        fn enter(&self) {
            let mut state = lock(&self.state);
            self.consume(&mut state);
        }
    }

    /// `Uring::get_completion(None)`: reap, else wait in the kernel, until `want` are reaped.
    fn dequeue(sub: &Submission, kernel: &Kernel, want: usize) {
        let mut got = 0;
        while got < want {
            if kernel.reap() {
                got += 1;
                continue;
            }
            sub.wait(|| kernel.enter_and_wait());
        }
    }

    #[test]
    fn handshake_submission_one_submitter_one_waiter() {
        model(|| {
            let sub = Arc::new(Submission::new());
            let kernel = Arc::new(Kernel::default());
            let waiter = {
                let (sub, kernel) = (sub.clone(), kernel.clone());
                thread::spawn(move || dequeue(&sub, &kernel, 1))
            };
            sub.push(&*kernel, &(), false);
            waiter.join().unwrap();
        });
    }

    #[test]
    fn handshake_submission_two_submitters_two_waiters() {
        model(|| {
            let sub = Arc::new(Submission::new());
            let kernel = Arc::new(Kernel::default());
            let waiters: Vec<_> = (0..2)
                .map(|_| {
                    let (sub, kernel) = (sub.clone(), kernel.clone());
                    thread::spawn(move || dequeue(&sub, &kernel, 1))
                })
                .collect();
            let submitter = {
                let (sub, kernel) = (sub.clone(), kernel.clone());
                thread::spawn(move || sub.push(&*kernel, &(), false))
            };
            sub.push(&*kernel, &(), false);
            submitter.join().unwrap();
            for waiter in waiters {
                waiter.join().unwrap();
            }
        });
    }

    /// epoll with the eventfd registered edge-triggered: a write bumps the counter and puts the
    /// eventfd's item on the ready list (once: it is there until reported) and wakes one
    /// sleeper (epoll's waits are exclusive); `epoll_wait` takes the item off the list and
    /// reports it only if the counter is still non-zero (an item whose events went away is
    /// dropped), else sleeps on.
    #[derive(Default)]
    struct Epoll {
        state: Mutex<EpollState>,
        listed: Condvar,
    }

    #[derive(Default)]
    struct EpollState {
        counter: u64,
        on_ready_list: bool,
    }

    impl Epoll {
        /// `epoll_wait(-1)` with only the eventfd: true when it reports the eventfd.
        fn epoll_wait(&self) -> bool {
            let mut state = lock(&self.state);
            loop {
                if state.on_ready_list {
                    state.on_ready_list = false;
                    if state.counter > 0 {
                        return true;
                    }
                }
                state = self.listed.wait(state).unwrap();
            }
        }

        /// Reading the eventfd resets its counter.
        fn read(&self) {
            lock(&self.state).counter = 0;
        }
    }

    impl Wake for Epoll {
        fn wake(&self) {
            let mut state = lock(&self.state);
            state.counter += 1;
            state.on_ready_list = true;
            self.listed.notify_one();
        }
    }

    /// `Epoll::get_completions(max = 1, None)`: pop, else wait (reading the eventfd when it
    /// was reported), until `want` are popped.
    fn dequeue_ready(ready: &Ready<u32>, epoll: &Epoll, want: usize) {
        let mut out = Vec::new();
        while out.len() < want {
            if ready.pop(&mut out, 1, epoll) > 0 {
                continue;
            }
            if ready.wait(|| epoll.epoll_wait()) == Some(true) {
                epoll.read();
            }
        }
    }

    #[test]
    fn handshake_ready_one_push_of_two_wakes_two_sleepers() {
        model(|| {
            let ready = Arc::new(Ready::new());
            let epoll = Arc::new(Epoll::default());
            let sleepers: Vec<_> = (0..2)
                .map(|_| {
                    let (ready, epoll) = (ready.clone(), epoll.clone());
                    thread::spawn(move || dequeue_ready(&ready, &epoll, 1))
                })
                .collect();
            ready.push([1, 2], &*epoll);
            for sleeper in sleepers {
                sleeper.join().unwrap();
            }
        });
    }

    #[test]
    fn handshake_ready_two_pushers_two_sleepers() {
        model(|| {
            let ready = Arc::new(Ready::new());
            let epoll = Arc::new(Epoll::default());
            let sleepers: Vec<_> = (0..2)
                .map(|_| {
                    let (ready, epoll) = (ready.clone(), epoll.clone());
                    thread::spawn(move || dequeue_ready(&ready, &epoll, 1))
                })
                .collect();
            let pusher = {
                let (ready, epoll) = (ready.clone(), epoll.clone());
                thread::spawn(move || ready.push([1], &*epoll))
            };
            ready.push([2], &*epoll);
            pusher.join().unwrap();
            for sleeper in sleepers {
                sleeper.join().unwrap();
            }
        });
    }
}
