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
//! - [`Lead`]: io_uring's leader/followers. One dequeuing thread at a time (the leader) waits
//!   in the kernel; the others park in user space ([`Lead::follow`]) until the leader hands
//!   over: [`Lead::release`] when it returns (a parked thread takes the lead) and
//!   [`Lead::hand_on`] when it leaves completions in the ring (a parked thread reaps them).
//!   Property: no thread stays parked while completions wait in the ring and nobody waits in
//!   the kernel or reaps.
//!
//! Under `--cfg loom` the atomics, fences and locks are loom's, and the tests at the bottom run
//! these types (not copies) against loom models of the kernel side:
//! `RUSTFLAGS="--cfg loom" cargo test -p proactor --lib --release handshake` (what
//! `cargo xtask ci` runs, in `target/loom`).

use std::{collections::VecDeque, sync::PoisonError, time::Instant};

#[cfg(loom)]
use loom::sync::{
    Condvar, Mutex, MutexGuard,
    atomic::{AtomicUsize, Ordering::Relaxed, Ordering::SeqCst, fence},
};
#[cfg(not(loom))]
use std::sync::{
    Condvar, Mutex, MutexGuard,
    atomic::{AtomicUsize, Ordering::Relaxed, Ordering::SeqCst, fence},
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

/// io_uring's leader/followers: at most one dequeuing thread waits in the kernel (each CQE
/// then wakes one thread, not every waiter), the others park here until there is work for
/// them.
///
/// The leader is the thread that waits in `io_uring_enter` and reaps what it brought; it keeps
/// the lead until it returns to its caller ([`Lead::release`]), which wakes a parked thread to
/// take the lead (the ring is never left without a waiter while threads are parked), and one
/// more if completions are left in the ring. A thread that returns completions and leaves
/// others in the ring wakes one parked thread to reap them ([`Lead::hand_on`]): one thread's
/// worth of completions keeps one thread busy, a ring that fills faster wakes more.
///
/// Every decision is taken under one lock, on which the parked threads wait: a thread parks
/// only while another leads, and a leader gives the lead up, and grants a wake-up to a parked
/// thread, in one critical section, so a wake-up cannot fall between a thread's check and its
/// sleep. A granted wake-up is counted (`wakes`) and taken by whichever parked thread wakes
/// first, so spurious condition-variable wake-ups neither lose nor duplicate one; a parked
/// thread whose time is up leaves only when no wake-up is pending (else it takes it), so a
/// promotion is never lost with it.
pub(crate) struct Lead {
    state: Mutex<LeadState>,
    parked: Condvar,
    /// `parked - wakes`, readable without the lock: `hand_on`'s fast path (a stale 0 only means
    /// the thread about to park was not woken to help; the leader's release still wakes it).
    idle: AtomicUsize,
}

struct LeadState {
    /// A thread waits in the kernel, or reaps what it woke for, and will release.
    leader: bool,
    /// Threads parked in `follow`.
    parked: usize,
    /// Wake-ups granted to parked threads and not yet taken (never more than `parked`).
    wakes: usize,
}

/// What [`Lead::follow`] made of the calling thread.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Turn {
    /// It leads: it waits in the kernel next (after reaping), and must `release`.
    Lead,
    /// It was woken to reap while another leads.
    Woken,
    /// Its deadline passed while parked.
    TimedOut,
}

impl Lead {
    pub(crate) fn new() -> Lead {
        Lead {
            state: Mutex::new(LeadState {
                leader: false,
                parked: 0,
                wakes: 0,
            }),
            parked: Condvar::new(),
            idle: AtomicUsize::new(0),
        }
    }

    /// For a thread that found the ring empty: takes the lead if nobody has it, else parks
    /// until a wake-up is granted (then takes the lead if it is free) or `deadline` passes.
    pub(crate) fn follow(&self, deadline: Option<Instant>) -> Turn {
        let mut state = lock(&self.state);
        if !state.leader {
            state.leader = true;
            return Turn::Lead;
        }
        state.parked += 1;
        self.idle.store(state.parked - state.wakes, Relaxed);
        loop {
            let timed_out = match deadline {
                None => {
                    state = self
                        .parked
                        .wait(state)
                        .unwrap_or_else(PoisonError::into_inner);
                    false
                }
                Some(at) => {
                    let left = at.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        true
                    } else {
                        state = self
                            .parked
                            .wait_timeout(state, left)
                            .map(|(state, _)| state)
                            .unwrap_or_else(|e| e.into_inner().0);
                        false
                    }
                }
            };
            if state.wakes > 0 {
                state.wakes -= 1;
                state.parked -= 1;
                self.idle.store(state.parked - state.wakes, Relaxed);
                if !state.leader {
                    state.leader = true;
                    return Turn::Lead;
                }
                return Turn::Woken;
            }
            if timed_out {
                state.parked -= 1;
                self.idle.store(state.parked - state.wakes, Relaxed);
                return Turn::TimedOut;
            }
        }
    }

    /// The leader gives up the lead (it returns to its caller): a parked thread is woken to
    /// take it, and with `more` (completions left in the ring) another to reap them.
    pub(crate) fn release(&self, more: bool) {
        let mut state = lock(&self.state);
        state.leader = false;
        self.grant(&mut state, if more { 2 } else { 1 });
    }

    /// Whether a thread is parked, or woken and about to run (a snapshot).
    pub(crate) fn parked(&self) -> bool {
        lock(&self.state).parked > 0
    }

    /// A thread returns completions and leaves others in the ring: wakes a parked thread to
    /// reap them.
    pub(crate) fn hand_on(&self) {
        if self.idle.load(Relaxed) == 0 {
            return;
        }
        let mut state = lock(&self.state);
        self.grant(&mut state, 1);
    }

    /// Grants up to `n` wake-ups to parked threads that have none pending.
    fn grant(&self, state: &mut LeadState, n: usize) {
        let n = n.min(state.parked - state.wakes);
        state.wakes += n;
        self.idle.store(state.parked - state.wakes, Relaxed);
        for _ in 0..n {
            self.parked.notify_one();
        }
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

    use super::{Lead, Ready, Ring, Submission, Turn, Wake, lock};

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
        /// Doorbell CQEs (`MSG_RING` from a thread that does not dequeue), among `cqes`.
        doorbells: usize,
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
            self.reap_left().is_some()
        }

        /// Takes CQEs until one is a completion; whether CQEs are left after it (`None`: the
        /// CQ is empty). A doorbell CQE is no completion: its reaper submits what is queued
        /// (`Uring::finish`), as the thread it woke may sleep on once its CQE is gone.
        fn reap_left(&self) -> Option<bool> {
            let mut state = lock(&self.state);
            loop {
                if state.cqes == 0 {
                    return None;
                }
                state.cqes -= 1;
                if state.doorbells > 0 {
                    state.doorbells -= 1;
                    self.consume(&mut state);
                    continue;
                }
                return Some(state.cqes > 0);
            }
        }

        /// `IORING_OP_MSG_RING` from the doorbell: a CQE that wakes the waiter.
        fn ring_doorbell(&self) {
            let mut state = lock(&self.state);
            state.cqes += 1;
            state.doorbells += 1;
            self.cqe_posted.notify_all();
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

    /// The main ring as a thread that does not dequeue sees it (`Uring`'s `Ring::enter`): it
    /// never submits; it rings the doorbell if a thread waits in the kernel.
    struct Outsider<'a> {
        kernel: &'a Kernel,
        sub: &'a Submission,
    }

    impl Ring for Outsider<'_> {
        type Entry = ();

        fn publish(&self, entry: &()) {
            self.kernel.publish(entry);
        }

        fn enter(&self) {
            if self.sub.waiting() {
                self.kernel.ring_doorbell();
            }
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

    /// `Uring::get_completion(None)` with leader/followers, called `calls` times: reap one
    /// (handing on or releasing as `Uring` does), else wait in the kernel if leading, else
    /// follow (take the lead or park).
    fn dequeue_led(sub: &Submission, lead: &Lead, kernel: &Kernel, calls: usize) {
        for _ in 0..calls {
            let mut leading = false;
            loop {
                if let Some(more) = kernel.reap_left() {
                    if leading {
                        lead.release(more);
                    } else if more {
                        lead.hand_on();
                    }
                    break;
                }
                if leading {
                    sub.wait(|| kernel.enter_and_wait());
                    continue;
                }
                match lead.follow(None) {
                    Turn::Lead => leading = true,
                    Turn::Woken => {}
                    Turn::TimedOut => unreachable!("no deadline"),
                }
            }
        }
    }

    /// Two dequeuers, one SQE each from two submitters: one leads, the other parks; the
    /// leader's return must promote the parked one (or its hand-on wake it) for the second CQE.
    #[test]
    fn handshake_lead_two_followers_two_submitters() {
        model(|| {
            let sub = Arc::new(Submission::new());
            let lead = Arc::new(Lead::new());
            let kernel = Arc::new(Kernel::default());
            let dequeuers: Vec<_> = (0..2)
                .map(|_| {
                    let (sub, lead, kernel) = (sub.clone(), lead.clone(), kernel.clone());
                    thread::spawn(move || dequeue_led(&sub, &lead, &kernel, 1))
                })
                .collect();
            let submitter = {
                let (sub, kernel) = (sub.clone(), kernel.clone());
                thread::spawn(move || sub.push(&*kernel, &(), false))
            };
            sub.push(&*kernel, &(), false);
            submitter.join().unwrap();
            for d in dequeuers {
                d.join().unwrap();
            }
        });
    }

    /// Three dequeuers and a batch of three SQEs published together (one kick): the leader
    /// wakes with three CQEs and returns one; the other two must be reaped by parked threads
    /// woken through `release(more)` and `hand_on`.
    #[test]
    fn handshake_lead_one_batch_three_threads() {
        model(|| {
            let sub = Arc::new(Submission::new());
            let lead = Arc::new(Lead::new());
            let kernel = Arc::new(Kernel::default());
            let dequeuers: Vec<_> = (0..2)
                .map(|_| {
                    let (sub, lead, kernel) = (sub.clone(), lead.clone(), kernel.clone());
                    thread::spawn(move || dequeue_led(&sub, &lead, &kernel, 1))
                })
                .collect();
            for _ in 0..3 {
                kernel.publish(&());
            }
            sub.kick(&*kernel, false);
            dequeue_led(&sub, &lead, &kernel, 1);
            for d in dequeuers {
                d.join().unwrap();
            }
        });
    }

    /// Two dequeuers and a thread that does not dequeue pushing two SQEs (the doorbell when a
    /// thread waits in the kernel): the leader's doorbell CQE may be reaped by the other
    /// thread, which then parks; it must submit, or the leader sleeps on with the SQE queued.
    #[test]
    fn handshake_lead_doorbell_reaped_by_a_follower() {
        model(|| {
            let sub = Arc::new(Submission::new());
            let lead = Arc::new(Lead::new());
            let kernel = Arc::new(Kernel::default());
            let dequeuers: Vec<_> = (0..2)
                .map(|_| {
                    let (sub, lead, kernel) = (sub.clone(), lead.clone(), kernel.clone());
                    thread::spawn(move || dequeue_led(&sub, &lead, &kernel, 1))
                })
                .collect();
            let outsider = Outsider {
                kernel: &kernel,
                sub: &sub,
            };
            sub.push(&outsider, &(), false);
            sub.push(&outsider, &(), false);
            for d in dequeuers {
                d.join().unwrap();
            }
        });
    }

    /// One thread dequeues twice (leads, returns, comes back) while another parks: the lead
    /// passes back and forth without a wake-up lost on either side.
    #[test]
    fn handshake_lead_returning_leader() {
        model(|| {
            let sub = Arc::new(Submission::new());
            let lead = Arc::new(Lead::new());
            let kernel = Arc::new(Kernel::default());
            let other = {
                let (sub, lead, kernel) = (sub.clone(), lead.clone(), kernel.clone());
                thread::spawn(move || dequeue_led(&sub, &lead, &kernel, 1))
            };
            let submitter = {
                let (sub, kernel) = (sub.clone(), kernel.clone());
                thread::spawn(move || {
                    sub.push(&*kernel, &(), false);
                    sub.push(&*kernel, &(), false);
                })
            };
            sub.push(&*kernel, &(), false);
            dequeue_led(&sub, &lead, &kernel, 2);
            submitter.join().unwrap();
            other.join().unwrap();
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
