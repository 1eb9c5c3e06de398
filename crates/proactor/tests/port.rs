//! The port itself: post and dequeue, batches, timeouts, several threads dequeuing one port.
#![cfg(any(windows, target_os = "linux"))]

mod common;

use std::{
    collections::HashSet,
    io,
    sync::{Arc, Barrier},
    thread,
    time::{Duration, Instant},
};

use common::next;
use proactor::{Iocp, OpKind};

#[test]
fn post_then_get_round_trip() {
    let port = Iocp::new().unwrap();
    let id = port.post(7, 42).unwrap();
    assert_eq!(port.operations_in_flight(), 1);
    let c = next(&port);
    assert_eq!(
        (c.context(), c.bytes_transferred(), c.id(), c.kind()),
        (7, 42, id, OpKind::Post)
    );
    assert_eq!(c.result().unwrap(), 42);
    assert_eq!(port.operations_in_flight(), 0);
}

#[test]
fn posted_values_keep_full_width() {
    let port = Iocp::new().unwrap();
    port.post(usize::MAX, usize::MAX).unwrap();
    let c = next(&port);
    assert_eq!(
        (c.context(), c.bytes_transferred()),
        (usize::MAX, usize::MAX)
    );
}

#[test]
fn get_completion_times_out_with_timed_out() {
    let port = Iocp::with_concurrency(1).unwrap();
    let start = Instant::now();
    let err = port
        .get_completion(Some(Duration::from_millis(50)))
        .unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    #[cfg(windows)]
    assert_eq!(err.raw_os_error(), Some(258), "WAIT_TIMEOUT is kept");
    assert!(
        start.elapsed() >= Duration::from_millis(45),
        "{:?}",
        start.elapsed()
    );
    let err = port.get_completion(Some(Duration::ZERO)).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    let mut out = Vec::new();
    let err = port
        .get_completions(&mut out, 8, Some(Duration::from_millis(10)))
        .unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    assert!(out.is_empty());
}

#[test]
fn batch_dequeue_returns_at_most_max_in_order() {
    let port = Iocp::new().unwrap();
    for i in 0..300 {
        port.post(i, i * 2).unwrap();
    }
    let mut out = Vec::new();
    // At most `max` per call. (Usually exactly 100 here; with io_uring's SQPOLL a post becomes
    // visible when the kernel's polling thread consumes it, so the first batch may be shorter.)
    let first = port.get_completions(&mut out, 100, common::WAIT).unwrap();
    assert!((1..=100).contains(&first), "{first}");
    assert_eq!(out.len(), first);
    while out.len() < 300 {
        port.get_completions(&mut out, 1000, common::WAIT).unwrap();
    }
    assert_eq!(out.len(), 300);
    for (i, c) in out.iter().enumerate() {
        assert_eq!((c.context(), c.bytes_transferred()), (i, i * 2));
    }
    assert_eq!(port.operations_in_flight(), 0);
}

#[test]
fn a_blocked_thread_is_woken_by_a_post() {
    let port = Arc::new(Iocp::new().unwrap());
    let waiter = {
        let port = port.clone();
        thread::spawn(move || port.get_completion(common::WAIT).map(|c| c.context()))
    };
    thread::sleep(Duration::from_millis(100));
    port.post(99, 0).unwrap();
    assert_eq!(waiter.join().unwrap().unwrap(), 99);
}

/// Four threads dequeue 100,000 posted packets: each is seen exactly once.
#[test]
fn four_threads_dequeue_100_000_packets_exactly_once() {
    const PACKETS: usize = 100_000;
    const THREADS: usize = 4;
    let port = Arc::new(Iocp::new().unwrap());
    let start = Arc::new(Barrier::new(THREADS + 1));
    let workers: Vec<_> = (0..THREADS)
        .map(|w| {
            let (port, start) = (port.clone(), start.clone());
            thread::spawn(move || {
                start.wait();
                let mut seen = Vec::new();
                let mut batch = Vec::new();
                loop {
                    // Half the threads dequeue one at a time, half in batches.
                    if w % 2 == 0 {
                        let c = port.get_completion(common::WAIT).expect("packet");
                        if c.context() == usize::MAX {
                            return seen;
                        }
                        seen.push(c.context());
                    } else {
                        port.get_completions(&mut batch, 64, common::WAIT)
                            .expect("packets");
                        let mut stops = 0;
                        for c in batch.drain(..) {
                            if c.context() == usize::MAX {
                                stops += 1;
                            } else {
                                seen.push(c.context());
                            }
                        }
                        if stops > 0 {
                            // Hand back the stop packets meant for other threads.
                            for _ in 1..stops {
                                port.post(usize::MAX, 0).unwrap();
                            }
                            return seen;
                        }
                    }
                }
            })
        })
        .collect();
    start.wait();
    for i in 0..PACKETS {
        port.post(i, 0).unwrap();
    }
    // Stop packets come after every data packet: the queue is FIFO.
    for _ in 0..THREADS {
        port.post(usize::MAX, 0).unwrap();
    }
    let mut all = Vec::with_capacity(PACKETS);
    let mut per_thread = Vec::new();
    for w in workers {
        let seen = w.join().unwrap();
        per_thread.push(seen.len());
        all.extend(seen);
    }
    assert_eq!(all.len(), PACKETS, "per thread: {per_thread:?}");
    let unique: HashSet<usize> = all.into_iter().collect();
    assert_eq!(unique.len(), PACKETS);
    assert!(
        per_thread.iter().filter(|&&n| n > 0).count() >= 2,
        "work spread: {per_thread:?}"
    );
    assert_eq!(port.operations_in_flight(), 0);
}

#[test]
fn the_backend_is_the_one_requested() {
    let port = Iocp::new().unwrap();
    match std::env::var("PROACTOR_BACKEND") {
        Ok(wanted) if !wanted.is_empty() => assert_eq!(port.backend(), wanted),
        _ if cfg!(windows) => assert_eq!(port.backend(), "iocp"),
        _ => assert!(
            ["io_uring", "epoll"].contains(&port.backend()),
            "{}",
            port.backend()
        ),
    }
}
