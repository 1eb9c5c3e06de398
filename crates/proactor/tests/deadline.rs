//! Per-operation deadlines (`Submit::deadline`, `Submit::timeout`) and timer operations
//! (`Iocp::timer`), on every backend: the port's own timer structure, no thread per timer.
#![cfg(any(windows, target_os = "linux"))]

mod common;

use std::{
    collections::HashMap,
    io::{self, Read, Write},
    sync::{Arc, Mutex, MutexGuard},
    thread,
    time::{Duration, Instant},
};

use common::{CANCELLED, WAIT, next, pair, pattern};
use proactor::{Iocp, OpKind};

/// One test at a time: `live_operations()` is process-wide, and timings suffer from company.
fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

fn v4() -> std::net::IpAddr {
    "127.0.0.1".parse().unwrap()
}

/// Nothing more arrives within `quiet`.
fn assert_quiet(port: &Iocp, quiet: Duration) {
    match port.get_completion(Some(quiet)) {
        Err(e) if e.kind() == io::ErrorKind::TimedOut => {}
        other => panic!("expected no completion, got {other:?}"),
    }
}

fn assert_deadline(err: &io::Error) {
    assert!(proactor::is_deadline(err), "{err:?}");
    assert!(!proactor::is_cancelled(err), "{err:?}");
    assert_eq!(err.kind(), io::ErrorKind::TimedOut, "{err:?}");
    assert_eq!(proactor::raw_os_error(err), Some(CANCELLED), "{err:?}");
}

#[test]
fn a_receive_past_its_deadline_completes_as_a_deadline_with_its_buffer() {
    let _serial = serial();
    let port = Iocp::new().unwrap();
    let (ours, _theirs) = pair(&port, v4(), 1);
    let start = Instant::now();
    let id = port
        .with_user(9)
        .timeout(Duration::from_millis(100))
        .recv(&ours, Vec::with_capacity(64));
    let mut c = next(&port);
    let took = start.elapsed();
    assert_eq!((c.id(), c.kind(), c.user()), (id, OpKind::Recv, 9));
    assert!(took >= Duration::from_millis(95), "early: {took:?}");
    assert!(took < Duration::from_secs(5), "late: {took:?}");
    assert_deadline(c.error().expect("an error"));
    assert!(!c.is_cancelled());
    // `result()` clones the error: still a deadline.
    assert_deadline(&c.result().unwrap_err());
    let buf = c.take_buffer().expect("the buffer back");
    assert!(buf.is_empty() && buf.capacity() >= 64);
    assert_quiet(&port, Duration::from_millis(200));
    assert_eq!(port.operations_in_flight(), 0);
}

#[test]
fn a_receive_whose_data_comes_first_completes_once_and_ok() {
    let _serial = serial();
    let port = Iocp::new().unwrap();
    let (ours, mut theirs) = pair(&port, v4(), 1);
    theirs.write_all(b"hi").unwrap();
    let id = port
        .with_timeout(Duration::from_millis(100))
        .recv(&ours, Vec::with_capacity(64));
    let mut c = next(&port);
    assert_eq!(c.id(), id);
    assert_eq!(c.result().unwrap(), 2);
    assert_eq!(c.take_buffer().unwrap(), b"hi");
    // The deadline passes with nothing left to cancel: nothing more arrives.
    assert_quiet(&port, Duration::from_millis(300));
    assert_eq!(port.operations_in_flight(), 0);
}

#[test]
fn a_deadline_wakes_a_thread_already_waiting_longer() {
    let _serial = serial();
    let port = Arc::new(Iocp::new().unwrap());
    let (ours, _theirs) = pair(&port, v4(), 1);
    let waiter = {
        let port = port.clone();
        thread::spawn(move || {
            let c = port.get_completion(WAIT).unwrap();
            (c, Instant::now())
        })
    };
    thread::sleep(Duration::from_millis(100));
    let start = Instant::now();
    port.with_deadline(start + Duration::from_millis(50))
        .recv(&ours, Vec::with_capacity(8));
    let (c, at) = waiter.join().unwrap();
    assert_deadline(c.error().unwrap());
    assert!(
        at - start < Duration::from_secs(5),
        "late: {:?}",
        at - start
    );
}

#[test]
fn a_send_blocked_on_a_full_socket_reports_the_bytes_sent_at_its_deadline() {
    let _serial = serial();
    let port = Iocp::new().unwrap();
    let (ours, mut theirs) = pair(&port, v4(), 1);
    socket2::SockRef::from(&*ours)
        .set_send_buffer_size(4096)
        .unwrap();
    socket2::SockRef::from(&theirs)
        .set_recv_buffer_size(4096)
        .unwrap();
    let data = pattern(8 << 20);
    let id = port
        .with_timeout(Duration::from_millis(300))
        .send(&ours, data.clone());
    let mut c = next(&port);
    assert_eq!(c.id(), id);
    assert_deadline(c.error().expect("the peer does not read: a deadline"));
    let sent = c.bytes_transferred();
    assert!(sent < data.len(), "{sent}");
    assert_eq!(c.take_buffer().expect("the buffer back"), data);
    // Oracle: the peer receives exactly the bytes reported, in order, then the end. It reads
    // them before the close: a closed socket still holding unsent bytes is an orphan, which
    // Linux resets under TCP memory pressure (`TCPAbortOnMemory`), when other programs on the
    // machine hold megabytes in socket buffers; that reset is not the port's doing.
    let mut got = vec![0; sent];
    theirs.read_exact(&mut got).unwrap();
    assert!(
        got == data[..sent],
        "the received bytes differ from what was sent"
    );
    drop(ours);
    let mut more = Vec::new();
    theirs.read_to_end(&mut more).unwrap();
    assert!(
        more.is_empty(),
        "reported {sent}, the peer received {} more",
        more.len()
    );
}

#[test]
fn a_deadline_racing_the_completion_gives_exactly_one_completion() {
    let _serial = serial();
    let port = Iocp::new().unwrap();
    let (ours, theirs) = pair(&port, v4(), 1);
    let theirs = Arc::new(Mutex::new(theirs));
    let rounds = 200;
    let (mut ok, mut late, mut received) = (0, 0, 0usize);
    for round in 0..rounds {
        let d = Duration::from_micros(2000);
        let at = Instant::now() + d;
        // The byte is written at about the deadline: a little before or after.
        let skew = (round % 13) as i64 * 250 - 1500;
        let write_at = if skew < 0 {
            at - Duration::from_micros((-skew) as u64)
        } else {
            at + Duration::from_micros(skew as u64)
        };
        let writer = {
            let theirs = theirs.clone();
            thread::spawn(move || {
                thread::sleep(write_at.saturating_duration_since(Instant::now()));
                theirs.lock().unwrap().write_all(&[round as u8]).unwrap();
            })
        };
        let id = port
            .with_user(round)
            .deadline(at)
            .recv(&ours, Vec::with_capacity(1024));
        let mut c = next(&port);
        assert_eq!((c.id(), c.user()), (id, round), "{c:?}");
        let buf = c.take_buffer().expect("the buffer back each time");
        match c.result() {
            Ok(n) => {
                ok += 1;
                received += n;
                assert_eq!(buf.len(), n);
            }
            Err(e) => {
                assert_deadline(&e);
                assert!(buf.is_empty());
                late += 1;
            }
        }
        writer.join().unwrap();
        if buf.is_empty() {
            // The byte came after the deadline: take it, so the next round starts empty.
            port.recv(&ours, Vec::with_capacity(1024));
            let mut c = next(&port);
            let got = c.take_buffer().unwrap();
            assert_eq!(got, [round as u8], "{c:?}");
            received += got.len();
        }
    }
    // Exactly one completion per operation: nothing more is queued.
    assert_quiet(&port, Duration::from_millis(200));
    // Every byte was received once: none by an operation that completed as a deadline.
    assert_eq!(received, rounds, "ok {ok}, deadline {late}");
    eprintln!(
        "{rounds} rounds on {}: ok {ok}, deadline {late}",
        port.backend()
    );
    assert_eq!(port.operations_in_flight(), 0);
}

#[test]
fn timers_complete_in_deadline_order_and_cancel() {
    let _serial = serial();
    let port = Iocp::new().unwrap();
    let start = Instant::now();
    let t50 = port.with_user(50).timer(Duration::from_millis(50));
    let t10 = port.with_user(10).timer(Duration::from_millis(10));
    let t30 = port.timer(Duration::from_millis(30));
    let gone = port.with_user(7).timer(Duration::from_secs(3600));
    assert_eq!(port.operations_in_flight(), 4);
    let mut order = Vec::new();
    for _ in 0..3 {
        let c = next(&port);
        assert_eq!(c.kind(), OpKind::Timer);
        assert_eq!(c.kind().name(), "timer");
        assert_eq!(c.result().unwrap(), 0);
        order.push((c.id(), c.user(), start.elapsed()));
    }
    let ids: Vec<_> = order.iter().map(|o| (o.0, o.1)).collect();
    assert_eq!(ids, vec![(t10, 10), (t30, 0), (t50, 50)], "{order:?}");
    for ((_, _, at), want) in order.iter().zip([10, 30, 50]) {
        assert!(*at >= Duration::from_millis(want), "{order:?}");
    }
    port.cancel(gone).unwrap();
    let c = next(&port);
    assert_eq!((c.id(), c.kind(), c.user()), (gone, OpKind::Timer, 7));
    assert!(c.is_cancelled(), "{c:?}");
    assert_eq!(proactor::raw_os_error(c.error().unwrap()), Some(CANCELLED));
    // Cancelled once: a second cancel finds nothing.
    assert!(port.cancel(gone).is_err());
    assert_quiet(&port, Duration::from_millis(100));
    assert_eq!(port.operations_in_flight(), 0);
    drop(c);
    assert_eq!(proactor::live_operations(), 0);
}

#[test]
fn a_timer_wakes_a_thread_already_waiting_and_batches_deliver_timers() {
    let _serial = serial();
    let port = Arc::new(Iocp::new().unwrap());
    let waiter = {
        let port = port.clone();
        thread::spawn(move || {
            let mut batch = Vec::new();
            port.get_completions(&mut batch, 8, WAIT).unwrap();
            (batch, Instant::now())
        })
    };
    thread::sleep(Duration::from_millis(100));
    let start = Instant::now();
    let id = port.timer(Duration::from_millis(20));
    let (batch, at) = waiter.join().unwrap();
    assert_eq!(batch.len(), 1, "{batch:?}");
    assert_eq!((batch[0].id(), batch[0].kind()), (id, OpKind::Timer));
    assert!(
        at - start < Duration::from_secs(5),
        "late: {:?}",
        at - start
    );
    // Timers due together come out in one batch, in order.
    let ids: Vec<_> = (0..3)
        .map(|i| port.timer(Duration::from_millis(10 + i)))
        .collect();
    thread::sleep(Duration::from_millis(50));
    let mut batch = Vec::new();
    let n = port.get_completions(&mut batch, 8, WAIT).unwrap();
    assert_eq!(n, 3);
    assert_eq!(batch.iter().map(|c| c.id()).collect::<Vec<_>>(), ids);
}

#[test]
fn the_callers_own_timeout_still_times_out_with_a_far_deadline_pending() {
    let _serial = serial();
    let port = Iocp::new().unwrap();
    let (ours, _theirs) = pair(&port, v4(), 1);
    let id = port
        .with_timeout(Duration::from_secs(60))
        .recv(&ours, Vec::with_capacity(8));
    let timer = port.timer(Duration::from_secs(60));
    let start = Instant::now();
    let err = port
        .get_completion(Some(Duration::from_millis(50)))
        .unwrap_err();
    let took = start.elapsed();
    assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    assert!(!proactor::is_deadline(&err));
    assert!(
        took >= Duration::from_millis(45) && took < Duration::from_secs(5),
        "{took:?}"
    );
    // A near deadline under a longer caller timeout is not the caller's timeout: the
    // deadline's completion comes instead.
    let near = port
        .with_timeout(Duration::from_millis(30))
        .recv(&ours, Vec::with_capacity(8));
    let c = port.get_completion(Some(Duration::from_secs(10))).unwrap();
    assert_eq!(c.id(), near);
    assert_deadline(c.error().unwrap());
    port.cancel(id).unwrap();
    port.cancel(timer).unwrap();
    let mut seen = HashMap::new();
    for _ in 0..2 {
        let c = next(&port);
        assert!(c.is_cancelled(), "a user cancel is not a deadline: {c:?}");
        seen.insert(c.id(), c.kind());
    }
    assert_eq!(seen[&id], OpKind::Recv);
    assert_eq!(seen[&timer], OpKind::Timer);
    assert_eq!(port.operations_in_flight(), 0);
}

#[test]
fn deadlines_and_timers_from_a_pool_of_threads_complete_once_and_not_early() {
    let _serial = serial();
    let port = Arc::new(Iocp::new().unwrap());
    let pairs: Vec<_> = (0..10).map(|i| pair(&port, v4(), i)).collect();
    let total = 120;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let workers: Vec<_> = (0..3)
        .map(|_| {
            let (port, seen) = (port.clone(), seen.clone());
            thread::spawn(move || {
                let mut batch = Vec::new();
                while seen.lock().unwrap().len() < total {
                    match port.get_completions(&mut batch, 4, Some(Duration::from_millis(50))) {
                        Ok(_) => {}
                        Err(e) if e.kind() == io::ErrorKind::TimedOut => continue,
                        Err(e) => panic!("{e}"),
                    }
                    let now = Instant::now();
                    let mut seen = seen.lock().unwrap();
                    for c in batch.drain(..) {
                        seen.push((c.user(), c.kind(), c.result().map_err(|e| e.kind()), now));
                    }
                }
            })
        })
        .collect();
    // Deadlines in shuffled order, each later or earlier than the one before.
    let start = Instant::now();
    let mut due = HashMap::new();
    for i in 0..total {
        let after = Duration::from_millis(((i * 37) % 60 + 5) as u64);
        due.insert(i, start + after);
        if i % 3 == 0 {
            port.with_user(i).timer(after);
        } else {
            let (ours, _) = &pairs[i % pairs.len()];
            port.with_user(i)
                .deadline(start + after)
                .recv(ours, Vec::with_capacity(8));
        }
        thread::sleep(Duration::from_micros(200));
    }
    for w in workers {
        w.join().unwrap();
    }
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), total);
    let mut users: Vec<_> = seen.iter().map(|s| s.0).collect();
    users.sort();
    assert_eq!(
        users,
        (0..total).collect::<Vec<_>>(),
        "exactly one completion each"
    );
    for (user, kind, result, at) in seen.iter() {
        assert!(*at >= due[user], "#{user} completed before its deadline");
        if user % 3 == 0 {
            assert_eq!((*kind, *result), (OpKind::Timer, Ok(0)));
        } else {
            assert_eq!(
                (*kind, *result),
                (OpKind::Recv, Err(io::ErrorKind::TimedOut))
            );
        }
    }
    assert_quiet(&port, Duration::from_millis(100));
    assert_eq!(port.operations_in_flight(), 0);
}

/// A user's cancel before the deadline is a plain cancel, even when the deadline passes before
/// the cancelled completion is dequeued.
#[test]
fn a_cancel_before_the_deadline_stays_a_cancel() {
    let port = Iocp::new().unwrap();
    let (ours, _theirs) = common::pair(&port, common::each_ip_v4(), 1);
    let id = port
        .with_timeout(Duration::from_millis(50))
        .recv(&ours, Vec::with_capacity(8));
    port.cancel(id).unwrap();
    std::thread::sleep(Duration::from_millis(150)); // the deadline passes, nothing dequeued
    let c = common::next(&port);
    assert_eq!(c.id(), id);
    let err = c.result().unwrap_err();
    assert!(proactor::is_cancelled(&err), "{err}");
    assert!(!proactor::is_deadline(&err), "{err}");
}
