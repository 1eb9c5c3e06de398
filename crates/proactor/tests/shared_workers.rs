//! Several threads dequeuing one shared port (issue 15): on io_uring one of them waits in the
//! kernel and the others park until there is work for them (leader/followers). These tests check
//! that nothing is lost or late that way: four threads under load with an oracle on every byte
//! and every completion, a parked thread's own timeout, a timer while every thread waits, and a
//! parked thread woken for a completion the waiting one leaves behind. Portable API: they run on
//! every backend (`PROACTOR_BACKEND`, `PROACTOR_SQPOLL`).
#![cfg(any(windows, target_os = "linux"))]

mod common;

use std::{
    collections::HashSet,
    io::{ErrorKind, Write},
    net::TcpStream,
    sync::{
        Arc, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicUsize, Ordering},
        mpsc,
    },
    thread,
    time::{Duration, Instant},
};

use common::{
    each_ip_v4,
    oracle::{Fails, Pool, Rng, mismatch, pattern, seeds, wait_until},
    pair,
};
use proactor::{Completion, Handle, Iocp, OpId, OpKind};

/// One test at a time: the timing tests count on being alone on the machine's few cores.
fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(PoisonError::into_inner)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Under Wine everything is slower: a smaller load and a wider margin on times.
const WINE: bool = cfg!(windows);
const CONNS: usize = if WINE { 4 } else { 12 };
const BYTES_PER_CONN: usize = 192 * 1024;
const POSTS: usize = if WINE { 500 } else { 2000 };
/// How late a timeout or timer may fire on a loaded machine.
const SLACK: Duration = Duration::from_millis(if WINE { 2000 } else { 400 });
/// The context of the load's posted packets (connections use their index).
const POSTED: usize = 1 << 20;

/// One connection's receive side: the next stream position expected, and whether EOF came.
struct Conn {
    handle: Option<Handle<TcpStream>>,
    pos: u64,
    eof: bool,
    /// The receive in flight.
    pending: Option<OpId>,
}

struct Load {
    conns: Vec<Conn>,
    /// Every id that completed: a second completion of one is a failure.
    done: HashSet<OpId>,
    posted: HashSet<OpId>,
}

/// Four threads dequeue one port while 12 peers write 192 KiB each in random pieces and another
/// thread posts 2,000 packets: every connection's bytes arrive once and in order (the oracle's
/// pattern, one receive in flight per connection), every operation completes exactly once, and
/// nothing stays in flight.
#[test]
fn four_threads_get_every_byte_and_completion_once() {
    let _serial = serial();
    for seed in seeds(if WINE { 1 } else { 2 }) {
        let fails = Fails::new("four_threads_get_every_byte_and_completion_once", seed);
        let mut rng = Rng::new(seed);
        let port = Arc::new(Iocp::new().expect("port"));
        let mut peers = Vec::new();
        let mut conns = Vec::new();
        for c in 0..CONNS {
            let (ours, theirs) = pair(&port, each_ip_v4(), c);
            conns.push(Conn {
                handle: Some(ours),
                pos: 0,
                eof: false,
                pending: None,
            });
            peers.push((theirs, rng.fork()));
        }
        let load = Arc::new(Mutex::new(Load {
            conns,
            done: HashSet::new(),
            posted: HashSet::new(),
        }));
        let posts_seen = Arc::new(AtomicUsize::new(0));
        let handler = {
            let (load, port, fails, posts_seen) = (
                load.clone(),
                port.clone(),
                fails.clone(),
                posts_seen.clone(),
            );
            Arc::new(move |mut done: Completion| {
                let mut load = lock(&load);
                if !load.done.insert(done.id()) {
                    fails.fail(format!("completed twice: {done:?}"));
                    return;
                }
                if done.kind() == OpKind::Post && done.context() == POSTED {
                    posts_seen.fetch_add(1, Ordering::SeqCst);
                    return;
                }
                let c = done.context();
                if done.kind() != OpKind::Recv || c >= CONNS {
                    fails.fail(format!("a completion nobody asked for: {done:?}"));
                    return;
                }
                let conn = &mut load.conns[c];
                if conn.pending != Some(done.id()) {
                    fails.fail(format!("conn {c}: not its receive in flight: {done:?}"));
                    return;
                }
                conn.pending = None;
                let n = match done.result() {
                    Ok(n) => n,
                    Err(e) => {
                        fails.fail(format!("conn {c}: receive failed: {e}"));
                        return;
                    }
                };
                let buf = done.take_buffer().expect("a receive's buffer");
                if buf.len() != n {
                    fails.fail(format!("conn {c}: {n} bytes, buffer of {}", buf.len()));
                }
                if n == 0 {
                    conn.eof = true;
                    conn.handle = None;
                    return;
                }
                if let Some(at) = mismatch(c as u64, conn.pos, &buf) {
                    fails.fail(format!(
                        "conn {c}: byte {} (stream offset {}) wrong",
                        at,
                        conn.pos + at as u64
                    ));
                }
                conn.pos += n as u64;
                let handle = conn.handle.as_ref().expect("open until EOF");
                conn.pending = Some(port.recv(handle, Vec::with_capacity(4096)));
            })
        };
        {
            let mut load = lock(&load);
            for conn in &mut load.conns {
                let handle = conn.handle.as_ref().unwrap();
                conn.pending = Some(port.recv(handle, Vec::with_capacity(4096)));
            }
        }
        let pool = Pool::start(&port, 4, &fails, handler);
        let writers: Vec<_> = peers
            .into_iter()
            .enumerate()
            .map(|(c, (mut theirs, mut rng))| {
                thread::spawn(move || {
                    let mut pos = 0;
                    while pos < BYTES_PER_CONN {
                        let n = rng.range(1, 9000).min(BYTES_PER_CONN - pos);
                        theirs
                            .write_all(&pattern(c as u64, pos as u64, n))
                            .expect("peer write");
                        pos += n;
                        if rng.chance(10) {
                            thread::sleep(Duration::from_micros(rng.range(0, 500) as u64));
                        }
                    }
                    // Dropping `theirs` ends the stream: the last receive sees EOF.
                })
            })
            .collect();
        let poster = {
            let (port, load) = (port.clone(), load.clone());
            thread::spawn(move || {
                for _ in 0..POSTS {
                    let id = port.post(POSTED, 0).expect("post");
                    lock(&load).posted.insert(id);
                }
            })
        };
        for w in writers {
            w.join().expect("writer");
        }
        poster.join().expect("poster");
        let finished = wait_until(Instant::now() + Duration::from_secs(30), || {
            fails.any()
                || (posts_seen.load(Ordering::SeqCst) == POSTS
                    && lock(&load).conns.iter().all(|c| c.eof))
        });
        pool.stop(&port, &fails);
        let load = lock(&load);
        if !finished {
            let left: Vec<_> = (0..CONNS)
                .filter(|&c| !load.conns[c].eof)
                .map(|c| (c, load.conns[c].pos))
                .collect();
            fails.fail(format!(
                "stuck: {} of {POSTS} posts, connections not at EOF (conn, bytes): {left:?}",
                posts_seen.load(Ordering::SeqCst)
            ));
        }
        for (c, conn) in load.conns.iter().enumerate() {
            if conn.eof && conn.pos != BYTES_PER_CONN as u64 {
                fails.fail(format!("conn {c}: EOF after {} bytes", conn.pos));
            }
        }
        if let Some(id) = load.posted.iter().find(|id| !load.done.contains(id)) {
            fails.fail(format!("post {id:?} never completed"));
        }
        if port.operations_in_flight() != 0 {
            fails.fail(format!(
                "{} operations still in flight",
                port.operations_in_flight()
            ));
        }
        fails.check(&backend());
    }
}

fn backend() -> String {
    std::env::var("PROACTOR_BACKEND").unwrap_or_else(|_| "default".into())
}

/// Starts a thread that dequeues one completion with no timeout (on io_uring: the thread that
/// waits in the kernel) and sends it back; gives it time to get there.
fn sleeper(port: &Arc<Iocp>) -> mpsc::Receiver<Completion> {
    let (tx, rx) = mpsc::channel();
    let port = port.clone();
    thread::spawn(move || {
        if let Ok(c) = port.get_completion(None) {
            let _ = tx.send(c);
        }
    });
    thread::sleep(Duration::from_millis(50));
    rx
}

/// A second thread's `get_completion` timeout fires on time while the first sleeps with none
/// (on io_uring it is parked, not in the kernel, and must wake by itself), and so does a
/// `get_completions` timeout; the sleeper still gets the next completion.
#[test]
fn a_parked_threads_timeout_fires_on_time_while_another_waits() {
    let _serial = serial();
    let port = Arc::new(Iocp::new().expect("port"));
    let slept = sleeper(&port);
    for round in 0..3 {
        let timeout = Duration::from_millis(100);
        // In a thread of its own, so that a timeout that never fires fails the test.
        let (tx, rx) = mpsc::channel();
        let waiter = port.clone();
        thread::spawn(move || {
            let start = Instant::now();
            let err = if round % 2 == 0 {
                waiter.get_completion(Some(timeout)).err()
            } else {
                let mut out = Vec::new();
                waiter.get_completions(&mut out, 8, Some(timeout)).err()
            };
            let _ = tx.send((err, start.elapsed()));
        });
        let (err, took) = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("the timeout fired");
        let err = err.expect("nothing to dequeue");
        assert_eq!(err.kind(), ErrorKind::TimedOut, "{err}");
        assert!(took >= timeout, "timed out early: {took:?}");
        assert!(took < timeout + SLACK, "timed out late: {took:?}");
    }
    let id = port.post(7, 0).unwrap();
    let c = slept
        .recv_timeout(Duration::from_secs(10))
        .expect("the sleeping thread got the post");
    assert_eq!(c.id(), id);
}

/// While every dequeuing thread waits with no timeout (one in the kernel, the others parked),
/// a timer added from another thread completes at its time.
#[test]
fn a_timer_fires_while_every_thread_waits() {
    let _serial = serial();
    let port = Arc::new(Iocp::new().expect("port"));
    let (tx, rx) = mpsc::channel();
    for _ in 0..4 {
        let (port, tx) = (port.clone(), tx.clone());
        thread::spawn(move || {
            while let Ok(c) = port.get_completion(None) {
                let stop = c.kind() == OpKind::Post;
                let _ = tx.send((c, Instant::now()));
                if stop {
                    break;
                }
            }
        });
    }
    thread::sleep(Duration::from_millis(50));
    let after = Duration::from_millis(100);
    let start = Instant::now();
    let id = port.timer(after);
    let (c, at) = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the timer completed");
    assert_eq!(c.id(), id);
    assert_eq!(c.kind(), OpKind::Timer);
    let took = at - start;
    assert!(took >= after, "fired early: {took:?}");
    assert!(took < after + SLACK, "late: {took:?}");
    for _ in 0..4 {
        port.post(0, 0).unwrap();
    }
    for _ in 0..4 {
        rx.recv_timeout(Duration::from_secs(10))
            .expect("every thread stops");
    }
}

/// Two completions arrive at once while one thread waits with no timeout and another with a
/// long one: the second completion reaches the other thread promptly (the waiting thread, which
/// returns one, wakes it), not at its timeout.
#[test]
fn a_completion_left_behind_wakes_a_parked_thread() {
    let _serial = serial();
    let port = Arc::new(Iocp::new().expect("port"));
    for _ in 0..5 {
        let slept = sleeper(&port);
        let (tx, rx) = mpsc::channel();
        {
            let port = port.clone();
            thread::spawn(move || {
                let got = port.get_completion(Some(Duration::from_secs(20)));
                let _ = tx.send((got, Instant::now()));
            });
        }
        thread::sleep(Duration::from_millis(50));
        // Two CQEs in one submission, from a thread that does not dequeue.
        let start = Instant::now();
        let ids = {
            let port = port.clone();
            thread::spawn(move || [port.post(1, 0).unwrap(), port.post(2, 0).unwrap()])
                .join()
                .unwrap()
        };
        let first = slept
            .recv_timeout(Duration::from_secs(10))
            .expect("the sleeper got one");
        let (second, at) = rx.recv_timeout(Duration::from_secs(10)).expect("woken");
        let second = second.expect("the other completion, not a timeout");
        let mut got = [first.id(), second.id()];
        got.sort();
        let mut want = ids;
        want.sort();
        assert_eq!(got, want);
        assert!(
            at - start < Duration::from_secs(2) + SLACK,
            "woken late: {:?}",
            at - start
        );
    }
}

/// Packets posted one at a time from a thread that does not dequeue, each waited for before the
/// next, reach a pool of four threads that wait with no timeout: each exactly once, none lost
/// (each post wakes the pool from idle: on io_uring through the doorbell, to the one thread in
/// the kernel). `strace -f -c` on this test counts the wake-ups per completion.
#[test]
fn posts_one_at_a_time_reach_a_pool_of_four() {
    let _serial = serial();
    const ROUNDS: usize = if WINE { 100 } else { 500 };
    let port = Arc::new(Iocp::new().expect("port"));
    let (tx, rx) = mpsc::channel();
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let (port, tx) = (port.clone(), tx.clone());
            thread::spawn(move || {
                while let Ok(c) = port.get_completion(None) {
                    let stop = c.context() == usize::MAX;
                    let _ = tx.send(c.id());
                    if stop {
                        break;
                    }
                }
            })
        })
        .collect();
    let poster = {
        let port = port.clone();
        thread::spawn(move || {
            let mut seen = HashSet::new();
            for round in 0..ROUNDS {
                let id = port.post(round, 0).expect("post");
                let got = rx
                    .recv_timeout(Duration::from_secs(10))
                    .unwrap_or_else(|_| panic!("post {round} never dequeued"));
                assert_eq!(got, id, "round {round}");
                assert!(seen.insert(got), "dequeued twice: {got:?}");
            }
            for _ in 0..4 {
                port.post(usize::MAX, 0).expect("post a stop");
            }
            for _ in 0..4 {
                rx.recv_timeout(Duration::from_secs(10))
                    .expect("every worker stops");
            }
        })
    };
    poster.join().expect("poster");
    for w in workers {
        w.join().expect("worker");
    }
    assert_eq!(port.operations_in_flight(), 0);
}

/// io_uring: of four idle threads dequeuing one port, exactly one sleeps in `io_uring_enter`;
/// the other three are parked on a futex (read from `/proc/self/task/*/syscall`), so a CQE wakes
/// one thread, not four.
#[cfg(target_os = "linux")]
#[test]
fn one_idle_thread_waits_in_the_kernel_the_others_park() {
    let _serial = serial();
    let port = Arc::new(Iocp::new().expect("port"));
    if port.backend() != "io_uring" {
        return; // epoll: every thread waits in epoll_wait by design
    }
    let tids = Arc::new(Mutex::new(Vec::new()));
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let (port, tids) = (port.clone(), tids.clone());
            thread::spawn(move || {
                // SAFETY: gettid has no preconditions.
                lock(&tids).push(unsafe { libc::gettid() });
                while let Ok(c) = port.get_completion(None) {
                    if c.context() == usize::MAX {
                        break;
                    }
                }
            })
        })
        .collect();
    // Where each thread is blocked: (in io_uring_enter, in futex), sampled until settled.
    let sample = || {
        let (mut entering, mut parked) = (0, 0);
        for tid in lock(&tids).iter() {
            let path = format!("/proc/self/task/{tid}/syscall");
            let text = std::fs::read_to_string(path).unwrap_or_default();
            match text
                .split_whitespace()
                .next()
                .and_then(|n| n.parse::<i64>().ok())
            {
                Some(n) if n == libc::SYS_io_uring_enter => entering += 1,
                Some(n) if n == libc::SYS_futex => parked += 1,
                _ => {}
            }
        }
        (entering, parked)
    };
    let mut last = (0, 0);
    let settled = wait_until(Instant::now() + Duration::from_secs(5), || {
        last = sample();
        last == (1, 3)
    });
    for _ in 0..4 {
        port.post(usize::MAX, 0).unwrap();
    }
    for w in workers {
        w.join().unwrap();
    }
    assert!(
        settled,
        "(threads in io_uring_enter, threads on a futex): {last:?}, want (1, 3)"
    );
}
