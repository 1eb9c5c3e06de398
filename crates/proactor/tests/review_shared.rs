//! Adversarial checks of the shared io_uring port's leader/followers (one dequeuing thread in
//! `io_uring_enter`, the others parked on a futex): which thread submits while the leader is
//! busy, and what becomes of a timer's wake packet.
//!
//! Run with `cargo test -p proactor --features failpoints --test review_shared`.
#![cfg(all(target_os = "linux", feature = "failpoints"))]

mod common;

use std::{
    io::Write,
    net::{SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicBool, Ordering},
        mpsc::{self, Receiver},
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use common::{each_ip_v4, pause::Pause};
use proactor::{Completion, Iocp, OpId};

/// The `fail` registry is global: one test of this file at a time.
fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(PoisonError::into_inner)
}

/// `n` threads dequeuing from `port` (the worker pool), forwarding every completion.
struct Pool {
    stop: Arc<AtomicBool>,
    done: Receiver<Completion>,
    threads: Vec<JoinHandle<()>>,
}

impl Pool {
    fn start(port: &Arc<Iocp>, n: usize) -> Pool {
        let (tx, done) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..n)
            .map(|_| {
                let (port, stop, tx) = (port.clone(), stop.clone(), tx.clone());
                thread::spawn(move || {
                    while !stop.load(Ordering::SeqCst) {
                        if let Ok(c) = port.get_completion(Some(Duration::from_millis(50))) {
                            let _ = tx.send(c);
                        }
                    }
                })
            })
            .collect();
        thread::sleep(Duration::from_millis(20)); // one waits in the kernel, the others park
        Pool {
            stop,
            done,
            threads,
        }
    }

    fn completion_of(&self, id: OpId) -> Completion {
        let end = Instant::now() + Duration::from_secs(20);
        loop {
            let left = end.saturating_duration_since(Instant::now());
            let c = self
                .done
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("{id:?} did not complete"));
            if c.id() == id {
                return c;
            }
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// A connected pair whose `ours` end has a 4 KiB send buffer, so a large send completes in
/// many parts.
fn small_buffered_pair() -> (TcpStream, TcpStream) {
    let l = TcpListener::bind(SocketAddr::new(each_ip_v4(), 0)).unwrap();
    let theirs = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (ours, _) = l.accept().unwrap();
    socket2::SockRef::from(&ours)
        .set_send_buffer_size(4096)
        .unwrap();
    socket2::SockRef::from(&theirs)
        .set_recv_buffer_size(4096)
        .unwrap();
    (ours, theirs)
}

/// Two workers. The leader reaps a partial send's CQE and is held before it re-submits the
/// rest (as it is, without a failpoint, when the send's handle is being closed: `resubmit`
/// waits for the handle's open guard, which the close holds); the other worker is idle,
/// parked. A thread that does not dequeue queues a receive on another connection, closes a
/// third handle, and exits. The close must have a worker submit the queued receive: the
/// closing thread exits, and a request it submitted completes cancelled. With every idle
/// thread in the kernel (before leader/followers) the idle worker was rung; parked, nobody is
/// rung, and the close submits the receive itself after `NO_WAITER_GRACE`.
#[test]
fn close_from_an_exiting_thread_while_the_leader_is_busy_and_the_other_worker_parked() {
    let _serial = serial();
    let port = Arc::new(Iocp::new().expect("port"));
    if port.backend() != "io_uring" || std::env::var_os("PROACTOR_SQPOLL").is_some() {
        eprintln!("skipped: the io_uring doorbell (no SQPOLL)");
        return;
    }
    let pool = Pool::start(&port, 2);
    let (sending, _sending_peer) = small_buffered_pair();
    let sending = Arc::new(port.add_handle(sending, 1).unwrap());
    let (victim, mut victim_peer) = small_buffered_pair();
    let victim = Arc::new(port.add_handle(victim, 2).unwrap());
    let (closed, _closed_peer) = small_buffered_pair();
    let closed = port.add_handle(closed, 3).unwrap();

    let mut held = Pause::at("uring::resubmit");
    let send = port.send(&sending, vec![7u8; 1 << 20]);
    held.wait_hit(); // a worker reaped the partial send's CQE: it holds the lead
    thread::sleep(Duration::from_millis(5));
    let recv = {
        let (port, victim) = (port.clone(), victim.clone());
        thread::spawn(move || {
            let recv = port.recv(&victim, Vec::with_capacity(64));
            drop(closed);
            recv
        })
        .join()
        .unwrap()
    };
    held.release();
    victim_peer.write_all(b"hello").unwrap();
    let mut c = pool.completion_of(recv);
    assert!(
        !c.is_cancelled(),
        "the queued receive completed cancelled: the closing thread submitted it and exited"
    );
    assert_eq!(c.result().ok(), Some(5), "{c:?}");
    assert_eq!(c.take_buffer().as_deref(), Some(&b"hello"[..]));
    port.cancel(send).ok();
    let _ = pool.completion_of(send);
    drop(pool);
    drop(sending);
    drop(victim);
    assert_eq!(port.operations_in_flight(), 0);
}

/// One thread waits with no timeout (the leader, in the kernel); another polls with a zero
/// timeout and stops; a third adds a timer. The timer's wake packet, meant for the thread that
/// waits with no deadline, may be taken by the polling thread, which swallows it and returns
/// `TimedOut` to its caller: the timer must still fire at its time (the wake is posted
/// again), not wait for the next completion of the thread in the kernel.
#[test]
fn a_timer_fires_when_its_wake_is_swallowed_by_a_thread_that_leaves() {
    let _serial = serial();
    let port = Arc::new(Iocp::new().expect("port"));
    let after = Duration::from_millis(50);
    let mut late = 0;
    for _round in 0..20 {
        let (tx, rx) = mpsc::channel();
        let sleeper = {
            let port = port.clone();
            thread::spawn(move || {
                if let Ok(c) = port.get_completion(None) {
                    let _ = tx.send(c);
                }
            })
        };
        thread::sleep(Duration::from_millis(5)); // in the kernel
        let stop = Arc::new(AtomicBool::new(false));
        let poller = {
            let (port, stop) = (port.clone(), stop.clone());
            thread::spawn(move || {
                let mut got = Vec::new();
                while !stop.load(Ordering::SeqCst) {
                    if let Ok(c) = port.get_completion(Some(Duration::ZERO)) {
                        got.push(c);
                    }
                }
                got
            })
        };
        thread::sleep(Duration::from_millis(2));
        let id = port.timer(after);
        stop.store(true, Ordering::SeqCst);
        let polled = poller.join().unwrap();
        let fired = polled.iter().any(|c| c.id() == id)
            || rx
                .recv_timeout(after + Duration::from_millis(500))
                .is_ok_and(|c| c.id() == id);
        if !fired {
            late += 1;
            port.post(0, 0).unwrap(); // release the sleeper
            let c = rx.recv_timeout(Duration::from_secs(5)).expect("released");
            assert!(c.id() == id || c.kind() == proactor::OpKind::Post, "{c:?}");
            if c.id() == id {
                continue;
            }
            // The timer fires with the next wait, then.
            let c = port.get_completion(Some(Duration::from_secs(5))).unwrap();
            assert_eq!(c.id(), id);
        }
        sleeper.join().unwrap();
    }
    assert_eq!(late, 0, "timers that did not fire at their time, of 20");
}

/// The leader panics while it finishes a CQE (here: before re-submitting a partial send's
/// rest); the other worker, parked with no timeout, must take the lead: a post then reaches
/// it. A lead left held would keep it parked for ever.
#[test]
fn a_leader_that_panics_hands_the_lead_on() {
    let _serial = serial();
    let port = Arc::new(Iocp::new().expect("port"));
    if port.backend() != "io_uring" {
        eprintln!("skipped: io_uring's leader/followers");
        return;
    }
    let (tx, rx) = mpsc::channel();
    let workers: Vec<_> = (0..2)
        .map(|_| {
            let (port, tx) = (port.clone(), tx.clone());
            thread::spawn(move || {
                while let Ok(c) = port.get_completion(None) {
                    let stop = c.kind() == proactor::OpKind::Post;
                    let _ = tx.send(c);
                    if stop {
                        break;
                    }
                }
            })
        })
        .collect();
    thread::sleep(Duration::from_millis(20)); // one in the kernel, one parked
    let (sending, _peer) = small_buffered_pair();
    let sending = port.add_handle(sending, 1).unwrap();
    fail::cfg("uring::resubmit", "1*panic").unwrap();
    let _send = port.send(&sending, vec![7u8; 1 << 20]);
    let end = Instant::now() + Duration::from_secs(10);
    let mut panicked = None;
    while panicked.is_none() && Instant::now() < end {
        for (i, w) in workers.iter().enumerate() {
            if w.is_finished() {
                panicked = Some(i);
            }
        }
        thread::sleep(Duration::from_millis(1));
    }
    fail::remove("uring::resubmit");
    let panicked = panicked.expect("a worker panicked at the failpoint");
    let id = port.post(9, 0).unwrap();
    let c = rx
        .recv_timeout(Duration::from_secs(5))
        .expect("the other worker took the lead and got the post");
    assert_eq!(c.id(), id);
    for (i, w) in workers.into_iter().enumerate() {
        assert_eq!(w.join().is_err(), i == panicked);
    }
    // The panicking thread left the send's record in the table: keep it with the port, for
    // the process's life, reachable (not freed, and not reported as a leak by LeakSanitizer).
    static KEPT: Mutex<Vec<Box<dyn std::any::Any + Send>>> = Mutex::new(Vec::new());
    let mut kept = KEPT.lock().unwrap_or_else(|e| e.into_inner());
    kept.push(Box::new(sending));
    kept.push(Box::new(port));
}

/// Churn of the lead: four workers dequeue with short, varied timeouts (0 to 3 ms, one or a
/// few at a time, so the lead changes hands constantly and parked threads time out), while two
/// threads that do not dequeue post packets and start timers. Every packet arrives exactly
/// once and every timer fires, none later than `LATE` after its time.
#[test]
fn churning_lead_loses_no_post_and_no_timer() {
    const POSTS: usize = 4000;
    const TIMERS: usize = 200;
    const LATE: Duration = Duration::from_millis(300);
    let _serial = serial();
    let port = Arc::new(Iocp::new().expect("port"));
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = mpsc::channel::<(Completion, Instant)>();
    let workers: Vec<_> = (0..4u64)
        .map(|w| {
            let (port, stop, tx) = (port.clone(), stop.clone(), tx.clone());
            thread::spawn(move || {
                let mut batch = Vec::new();
                let mut i = w;
                while !stop.load(Ordering::SeqCst) {
                    i = i
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    let timeout = Duration::from_micros((i >> 33) % 3000);
                    if i & 1 == 0 {
                        if let Ok(c) = port.get_completion(Some(timeout)) {
                            let _ = tx.send((c, Instant::now()));
                        }
                    } else {
                        let max = 1 + ((i >> 40) % 3) as usize;
                        if port.get_completions(&mut batch, max, Some(timeout)).is_ok() {
                            assert!(batch.len() <= max, "{} > {max}", batch.len());
                            let now = Instant::now();
                            for c in batch.drain(..) {
                                let _ = tx.send((c, now));
                            }
                        }
                    }
                }
            })
        })
        .collect();
    let producers: Vec<_> = (0..2usize)
        .map(|p| {
            let port = port.clone();
            thread::spawn(move || {
                let mut timers = Vec::new();
                for k in 0..POSTS / 2 {
                    port.post(1000 + p, k).unwrap();
                    if k % (POSTS / TIMERS) == 0 {
                        let after = Duration::from_millis((k % 7) as u64 * 3);
                        let due = Instant::now() + after; // no later than the timer's own
                        timers.push((port.timer(after), due));
                    }
                    if k % 16 == 0 {
                        thread::sleep(Duration::from_micros(300));
                    }
                }
                timers
            })
        })
        .collect();
    let timers: Vec<(OpId, Instant)> = producers
        .into_iter()
        .flat_map(|p| p.join().unwrap())
        .collect();
    let mut posts = std::collections::HashSet::new();
    let mut fired = std::collections::HashMap::new();
    let end = Instant::now() + Duration::from_secs(10);
    while (posts.len() < POSTS || fired.len() < timers.len()) && Instant::now() < end {
        let Ok((c, at)) = rx.recv_timeout(Duration::from_millis(100)) else {
            continue;
        };
        match c.kind() {
            proactor::OpKind::Post => {
                assert!(
                    posts.insert((c.context(), c.bytes_transferred())),
                    "twice: {c:?}"
                );
            }
            proactor::OpKind::Timer => {
                assert!(fired.insert(c.id(), at).is_none(), "twice: {c:?}");
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    stop.store(true, Ordering::SeqCst);
    for w in workers {
        w.join().unwrap();
    }
    assert_eq!(posts.len(), POSTS, "posts lost");
    assert_eq!(fired.len(), timers.len(), "timers that never fired");
    for (id, due) in &timers {
        let at = fired[id];
        assert!(at >= *due, "{id:?} early");
        assert!(at < *due + LATE, "{id:?} late by {:?}", at - *due);
    }
}
