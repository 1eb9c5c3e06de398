//! Review (helper 50): the hang-up watch of the LocalPort ring (da26072) and the stop
//! submitted at once without DEFER_TASKRUN (8ec9ce5). Streams are checked with an oracle.
//!
//! Found: a `cancel_all` that reached the kernel after the peer's reset ended the watch that
//! had fired (its CQE a cancel, not the poll's mask), and the arming made meanwhile had put
//! none: the next pooled receive read the data and waited forever
//! (`cancel_all_after_the_reset_arrived_then_recv`). A cancelled watch of a handle receiving
//! again is now put again at once (`State::on_watch`).
#![cfg(target_os = "linux")]

mod common;

use std::{
    collections::HashMap,
    io::{ErrorKind, Read, Write},
    net::{Shutdown, TcpStream},
    os::unix::net::UnixStream,
    thread,
    time::{Duration, Instant},
};

use common::{
    local::{LOCAL, label, raw_pair},
    oracle::{Rng, mismatch, pattern, seeds},
};
use proactor::{LocalHandle, LocalPort};

fn reset(s: TcpStream) {
    socket2::SockRef::from(&s)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(s);
}

/// Drains handle `h` (context `conn`) with `recv_pooled` until its end: every byte of
/// `total` in order then EOF, or a prefix then a reset. Err on a receive that never ends.
fn drain<T: proactor::Associate>(
    port: &LocalPort,
    h: &LocalHandle<T>,
    conn: u64,
    total: usize,
    reset_ok: bool,
) -> Result<(), String> {
    drain_from(port, h, conn, 0, total, reset_ok, false)
}

/// [`drain`] from byte `pos`; `asked`: a pooled receive already waits (its completion comes
/// first).
fn drain_from<T: proactor::Associate>(
    port: &LocalPort,
    h: &LocalHandle<T>,
    conn: u64,
    mut pos: u64,
    total: usize,
    reset_ok: bool,
    mut asked: bool,
) -> Result<(), String> {
    loop {
        if !std::mem::take(&mut asked) {
            port.recv_pooled(h);
        }
        let mut d = port
            .get_completion(Some(Duration::from_secs(3)))
            .map_err(|e| {
                format!(
                    "{}: conn {conn}: the receive after {pos} of {total} bytes never ended ({e})",
                    label(port)
                )
            })?;
        assert_eq!(d.context() as u64, conn, "{d:?}");
        match d.take_pooled() {
            Some(b) => {
                if let Some(at) = mismatch(conn, pos, &b) {
                    return Err(format!("conn {conn}: mismatch at {}", pos + at as u64));
                }
                pos += b.len() as u64;
            }
            None => {
                return match d.result() {
                    Ok(0) if pos as usize == total => Ok(()),
                    Ok(0) => Err(format!("conn {conn}: EOF after {pos} of {total}")),
                    Ok(n) => Err(format!("conn {conn}: Ok({n}) without data")),
                    Err(e) if reset_ok && e.kind() == ErrorKind::ConnectionReset => Ok(()),
                    Err(e) => Err(format!("conn {conn}: error {e} after {pos} of {total}")),
                };
            }
        }
    }
}

/// Writes connection 1's pattern, `total` bytes, `chunk` at a time with `pause` between.
fn write_paced(s: &mut TcpStream, total: usize, chunk: usize, pause: Duration) {
    let data = pattern(1, 0, total);
    for piece in data.chunks(chunk) {
        s.write_all(piece).unwrap();
        thread::sleep(pause);
    }
}

/// The peer writes, then resets, while the program is not in the ring (under DEFER_TASKRUN
/// the receive's task work sees both at once).
fn peer_writes_then_resets(mut theirs: TcpStream, conn: u64, total: usize) {
    theirs.write_all(&pattern(conn, 0, total)).unwrap();
    thread::sleep(Duration::from_millis(30));
    reset(theirs);
    thread::sleep(Duration::from_millis(30));
}

/// cancel_all when the handle's multishot receive is not armed (paused), only its watch in
/// the kernel; then a pooled receive at once (before the watch's ECANCELED is reaped). The new
/// arming sees `watched` still true and puts no watch; the ECANCELED then clears `watched`:
/// the armed multishot receive runs unwatched, and data + reset hangs it again.
#[test]
fn cancel_all_then_recv_at_once_leaves_the_receive_unwatched() {
    let mut fails = Vec::new();
    for round in 0..5 {
        let port = LocalPort::with_pool(32, 1024).unwrap();
        let (ours, theirs) = raw_pair(LOCAL);
        let h = port.add_handle(ours, 1).unwrap();
        let id = port.recv_pooled(&h);
        assert!(
            port.get_completion(Some(Duration::from_millis(30)))
                .is_err()
        );
        // The waiter leaves: the multishot receive is stopped, its watch stays.
        port.cancel(id).unwrap();
        let d = port.get_completion(Some(Duration::from_secs(1))).unwrap();
        assert!(d.result().is_err());
        assert!(
            port.get_completion(Some(Duration::from_millis(30)))
                .is_err()
        );
        // Cancel everything (the watch), and ask again before its CQE is reaped.
        port.cancel_all(&h).unwrap();
        port.recv_pooled(&h);
        assert!(
            port.get_completion(Some(Duration::from_millis(30)))
                .is_err()
        );
        peer_writes_then_resets(theirs, 1, 1000);
        // The first receive is already in flight: take its completion, then drain.
        if let Err(e) = drain_from(&port, &h, 1, 0, 1000, true, true) {
            fails.push(format!("round {round}: {e}"));
        }
    }
    assert!(fails.is_empty(), "{}", fails.join("\n"));
}

/// Same, cancel_all while the multishot receive is armed, a pooled receive at once: the
/// multishot's last CQE re-arms; whether a watch is put depends on the order of the two
/// ECANCELEDs.
#[test]
fn cancel_all_while_armed_then_recv_at_once() {
    let mut fails = Vec::new();
    for round in 0..10 {
        let port = LocalPort::with_pool(32, 1024).unwrap();
        let (ours, theirs) = raw_pair(LOCAL);
        let h = port.add_handle(ours, 1).unwrap();
        port.recv_pooled(&h);
        assert!(
            port.get_completion(Some(Duration::from_millis(20)))
                .is_err()
        );
        port.cancel_all(&h).unwrap();
        port.recv_pooled(&h);
        let d = port.get_completion(Some(Duration::from_secs(1))).unwrap();
        assert!(d.result().is_err(), "the cancelled one first");
        assert!(
            port.get_completion(Some(Duration::from_millis(30)))
                .is_err()
        );
        peer_writes_then_resets(theirs, 1, 1000);
        if let Err(e) = drain_from(&port, &h, 1, 0, 1000, true, true) {
            fails.push(format!("round {round}: {e}"));
        }
    }
    assert!(
        fails.is_empty(),
        "{} of 10:\n{}",
        fails.len(),
        fails.join("\n")
    );
}

/// cancel_all many times on one handle with data flowing: the stream exact; then data +
/// reset must still end the receive (a watch must be there), and nothing left in flight.
#[test]
fn repeated_cancel_all_keeps_stream_and_watch() {
    for seed in seeds(3) {
        let mut rng = Rng::new(seed);
        let port = LocalPort::with_pool(64, 1024).unwrap();
        let (ours, mut theirs) = raw_pair(LOCAL);
        let h = port.add_handle(ours, 1).unwrap();
        let total = 200_000usize;
        let w = thread::spawn(move || {
            write_paced(&mut theirs, total, 3000, Duration::from_micros(200));
            theirs
        });
        let mut pos = 0u64;
        let until = Instant::now() + Duration::from_secs(30);
        while (pos as usize) < total {
            assert!(Instant::now() < until, "stuck at {pos}");
            port.recv_pooled(&h);
            if rng.chance(40) {
                port.cancel_all(&h).unwrap();
                if rng.chance(50) {
                    port.recv_pooled(&h);
                }
            }
            // Take whatever comes for a moment.
            while let Ok(mut d) = port.get_completion(Some(Duration::from_millis(5))) {
                if let Some(b) = d.take_pooled() {
                    assert_eq!(mismatch(1, pos, &b), None, "seed {seed}");
                    pos += b.len() as u64;
                } else {
                    let r = d.result();
                    assert!(
                        r.as_ref()
                            .is_err_and(|e| e.kind() != ErrorKind::ConnectionReset),
                        "seed {seed}: {r:?} at {pos}"
                    );
                }
            }
        }
        let theirs = w.join().unwrap();
        // Drain in-flight receives.
        while port.get_completion(Some(Duration::from_millis(50))).is_ok() {}
        // Now the watch must still be there: data + reset while a receive waits.
        port.recv_pooled(&h);
        assert!(
            port.get_completion(Some(Duration::from_millis(30)))
                .is_err()
        );
        let (tx, rx) = std::sync::mpsc::channel();
        let w = thread::spawn(move || {
            let mut t = theirs;
            t.write_all(&pattern(9, 0, 700)).unwrap();
            thread::sleep(Duration::from_millis(30));
            reset(t);
            let _ = tx.send(());
        });
        thread::sleep(Duration::from_millis(100));
        rx.recv().unwrap();
        w.join().unwrap();
        let mut got = 0;
        loop {
            let mut d = port
                .get_completion(Some(Duration::from_secs(3)))
                .unwrap_or_else(|e| {
                    panic!(
                        "{}: seed {seed}: after cancels, data + reset hung at {got} ({e})",
                        label(&port)
                    )
                });
            match d.take_pooled() {
                Some(b) => {
                    assert_eq!(mismatch(9, got, &b), None);
                    got += b.len() as u64;
                    port.recv_pooled(&h);
                }
                None => break,
            }
        }
        drop(h);
        while port.get_completion(Some(Duration::from_millis(20))).is_ok() {}
        assert_eq!(port.operations_in_flight(), 0);
    }
}

/// 1,000 connections, each armed (a pooled receive waiting), each peer writing a random
/// amount then resetting (or shutting down), all while the program is away. Every
/// connection must see every byte (EOF case) or a prefix then the reset.
fn many(resets: bool) {
    const CONNS: usize = 1000;
    let port = LocalPort::with_pool(1024, 1024).unwrap();
    let mut rng = Rng::new(0x5eed + resets as u64);
    let mut handles = Vec::new();
    let mut peers = Vec::new();
    let mut sizes = Vec::new();
    for c in 0..CONNS {
        let (ours, theirs) = raw_pair(LOCAL);
        handles.push(port.add_handle(ours, c + 1).unwrap());
        peers.push(theirs);
        sizes.push(rng.range(1, 6000));
    }
    for h in &handles {
        port.recv_pooled(h);
    }
    assert!(
        port.get_completion(Some(Duration::from_millis(50)))
            .is_err()
    );
    let sz = sizes.clone();
    let w = thread::spawn(move || {
        for (c, mut p) in peers.into_iter().enumerate() {
            p.write_all(&pattern(c as u64 + 1, 0, sz[c])).unwrap();
            if resets {
                thread::sleep(Duration::from_micros(100));
                reset(p);
            } else {
                p.shutdown(Shutdown::Write).unwrap();
                drop(p);
            }
        }
    });
    w.join().unwrap();
    thread::sleep(Duration::from_millis(100));
    let mut pos = vec![0u64; CONNS];
    let mut ended = vec![false; CONNS];
    let mut left = CONNS;
    let mut errs: HashMap<String, usize> = HashMap::new();
    let until = Instant::now() + Duration::from_secs(60);
    while left > 0 {
        let mut d = match port.get_completion(Some(Duration::from_secs(5))) {
            Ok(d) => d,
            Err(e) => {
                let stuck: Vec<_> = (0..CONNS)
                    .filter(|&c| !ended[c])
                    .map(|c| (c + 1, pos[c], sizes[c]))
                    .take(10)
                    .collect();
                panic!(
                    "{}: resets {resets}: {left} connections never ended ({e}); e.g. (conn, got, sent) {stuck:?}",
                    label(&port)
                );
            }
        };
        assert!(Instant::now() < until);
        let c = d.context() - 1;
        assert!(!ended[c], "conn {c} completed after its end: {d:?}");
        match d.take_pooled() {
            Some(b) => {
                assert_eq!(mismatch(c as u64 + 1, pos[c], &b), None, "conn {c}");
                pos[c] += b.len() as u64;
                assert!(pos[c] as usize <= sizes[c]);
                port.recv_pooled(&handles[c]);
            }
            None => {
                ended[c] = true;
                left -= 1;
                match d.result() {
                    Ok(0) => assert_eq!(pos[c] as usize, sizes[c], "conn {c}: EOF early"),
                    Ok(n) => panic!("{n}"),
                    Err(e) => {
                        assert!(resets, "conn {c}: {e}");
                        *errs.entry(format!("{:?}", e.kind())).or_default() += 1;
                    }
                }
            }
        }
    }
    eprintln!(
        "{}: resets {resets}: errors {errs:?}, complete {} of {CONNS}",
        label(&port),
        (0..CONNS).filter(|&c| pos[c] as usize == sizes[c]).count()
    );
    for k in errs.keys() {
        assert_eq!(k, "ConnectionReset");
    }
    let t = Instant::now();
    drop(handles);
    while port.get_completion(Some(Duration::from_millis(20))).is_ok() {}
    assert_eq!(port.operations_in_flight(), 0);
    drop(port);
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "drop took {:?}",
        t.elapsed()
    );
}

#[test]
fn thousand_connections_reset_with_unread_data() {
    many(true);
}

#[test]
fn thousand_connections_end_with_unread_data() {
    many(false);
}

/// The peer ends (FIN) with data still queued, later data of ours keeps flowing to it
/// (half-close): we receive every byte then EOF exactly once, and our sends still arrive.
#[test]
fn half_close_with_queued_data_then_our_sends() {
    for total in [10usize, 1024, 5000, 64 << 10, 1 << 20] {
        for multi in [false, true] {
            let port = LocalPort::with_pool(32, 1024).unwrap();
            let (ours, mut theirs) = raw_pair(LOCAL);
            let h = port.add_handle(ours, 1).unwrap();
            // Armed first (watch in), the peer writes and ends.
            port.recv_pooled(&h);
            let mut pos = 0u64;
            let w = thread::spawn(move || {
                theirs.write_all(&pattern(1, 0, total)).unwrap();
                theirs.shutdown(Shutdown::Write).unwrap();
                let mut got = Vec::new();
                theirs.read_to_end(&mut got).unwrap();
                got
            });
            let mut d = port.get_completion(Some(Duration::from_secs(5))).unwrap();
            if let Some(b) = d.take_pooled() {
                assert_eq!(mismatch(1, 0, &b), None);
                pos += b.len() as u64;
            }
            drop(d);
            thread::sleep(Duration::from_millis(50));
            if multi {
                port.recv_multishot(&h);
                loop {
                    let mut d = port
                        .get_completion(Some(Duration::from_secs(5)))
                        .unwrap_or_else(|e| panic!("{}: stuck at {pos}: {e}", label(&port)));
                    if let Some(b) = d.take_pooled() {
                        assert_eq!(mismatch(1, pos, &b), None);
                        pos += b.len() as u64;
                    }
                    if !d.more() {
                        assert_eq!(d.result().unwrap(), 0);
                        break;
                    }
                }
                assert_eq!(pos as usize, total, "multi EOF early");
            } else {
                drain_from(&port, &h, 1, pos, total, false, false).unwrap();
            }
            // Our sends after the peer's end.
            port.send(&h, pattern(2, 0, 3000));
            let d = port.get_completion(Some(Duration::from_secs(5))).unwrap();
            let _ = d.result();
            // End again, never data.
            port.recv_pooled(&h);
            loop {
                let mut d = port.get_completion(Some(Duration::from_secs(5))).unwrap();
                if d.kind() == proactor::OpKind::RecvPooled {
                    assert!(d.take_pooled().is_none(), "data after the end");
                    assert_eq!(d.result().unwrap(), 0);
                    break;
                }
            }
            drop(h);
            let got = w.join().unwrap();
            assert_eq!(got.len(), 3000);
            assert_eq!(mismatch(2, 0, &got), None);
        }
    }
}

/// Exact version of the half-close drain: the receive started before the data, the rest
/// drained, every byte then EOF.
#[test]
fn fin_with_queued_data_exact() {
    for total in [10usize, 1024, 1025, 5000, 64 << 10, 1 << 20] {
        let port = LocalPort::with_pool(32, 1024).unwrap();
        let (ours, mut theirs) = raw_pair(LOCAL);
        let h = port.add_handle(ours, 1).unwrap();
        port.recv_pooled(&h);
        assert!(
            port.get_completion(Some(Duration::from_millis(20)))
                .is_err()
        );
        let w = thread::spawn(move || {
            theirs.write_all(&pattern(1, 0, total)).unwrap();
            theirs.shutdown(Shutdown::Write).unwrap();
            thread::sleep(Duration::from_millis(300));
        });
        drain_from(&port, &h, 1, 0, total, false, true).unwrap_or_else(|e| panic!("{e}"));
        w.join().unwrap();
    }
}

/// Our shutdown(Write): the peer keeps sending a lot; we get it all, in order, then EOF
/// when it ends; and the fairness bound (a handle whose owner stops reading holds at most
/// MAX_AHEAD + limit) still holds afterwards. Reports the pauses.
#[test]
fn our_shutdown_write_then_peer_streams() {
    let port = LocalPort::with_pool(64, 1024).unwrap();
    let (ours, mut theirs) = raw_pair(LOCAL);
    ours.shutdown(Shutdown::Write).unwrap();
    let h = port.add_handle(ours, 1).unwrap();
    let total = 4 << 20;
    let w = thread::spawn(move || {
        let mut b = [0u8; 1];
        assert_eq!(theirs.read(&mut b).unwrap(), 0, "our FIN");
        theirs.write_all(&pattern(1, 0, total)).unwrap();
        drop(theirs);
    });
    let t = Instant::now();
    drain(&port, &h, 1, total, false).unwrap();
    eprintln!(
        "{}: our shutdown(Write): {} MiB in {:?}, starvations {} pauses {}",
        label(&port),
        total >> 20,
        t.elapsed(),
        port.pool_starvations(),
        port.receive_pauses()
    );
    w.join().unwrap();
}

/// UNIX stream pairs: the peer writes then closes with data of ours unread (the kernel
/// reports ECONNRESET), or closes plainly (EOF): data first, then the end.
#[test]
fn unix_stream_close_with_unread_data() {
    for unread in [false, true] {
        for total in [100usize, 1024, 5000, 100_000] {
            let port = LocalPort::with_pool(32, 1024).unwrap();
            let (ours, mut theirs) = UnixStream::pair().unwrap();
            let h = port.add_handle(ours, 1).unwrap();
            port.recv_pooled(&h);
            assert!(
                port.get_completion(Some(Duration::from_millis(20)))
                    .is_err()
            );
            if unread {
                port.send(&h, vec![7u8; 100]);
                let d = port.get_completion(Some(Duration::from_secs(2))).unwrap();
                assert_eq!(d.result().unwrap(), 100);
            }
            let w = thread::spawn(move || {
                theirs.write_all(&pattern(1, 0, total)).unwrap();
                drop(theirs);
            });
            if total < 100_000 {
                w.join().unwrap();
                thread::sleep(Duration::from_millis(30));
            }
            let mut pos = 0u64;
            let mut first = true;
            loop {
                if !first {
                    port.recv_pooled(&h);
                }
                first = false;
                let mut d = port
                    .get_completion(Some(Duration::from_secs(3)))
                    .unwrap_or_else(|e| {
                        panic!(
                            "{}: unix unread {unread} {total}: stuck at {pos}: {e}",
                            label(&port)
                        )
                    });
                match d.take_pooled() {
                    Some(b) => {
                        assert_eq!(mismatch(1, pos, &b), None);
                        pos += b.len() as u64;
                    }
                    None => {
                        match d.result() {
                            Ok(0) => assert_eq!(pos as usize, total, "unread {unread}: EOF early"),
                            Err(e) => {
                                assert!(unread, "{e}");
                                assert_eq!(e.kind(), ErrorKind::ConnectionReset);
                                // UNIX: the data stays readable before the error.
                                assert_eq!(pos as usize, total, "unix reset lost data");
                            }
                            Ok(n) => panic!("{n}"),
                        }
                        break;
                    }
                }
            }
        }
    }
}

/// Two handles of one socket (try_clone): A armed (watched) and closed while armed; B then
/// receives: every byte then the reset; and a watch on each when both take turns.
#[test]
fn clones_each_watch_and_close() {
    for round in 0..5 {
        let port = LocalPort::with_pool(32, 1024).unwrap();
        let (ours, theirs) = raw_pair(LOCAL);
        let clone = ours.try_clone().unwrap();
        let a = port.add_handle(ours, 1).unwrap();
        let b = port.add_handle(clone, 1).unwrap();
        port.recv_pooled(&a);
        assert!(
            port.get_completion(Some(Duration::from_millis(20)))
                .is_err()
        );
        drop(a);
        let d = port.get_completion(Some(Duration::from_secs(1))).unwrap();
        assert!(d.result().is_err());
        port.recv_pooled(&b);
        assert!(
            port.get_completion(Some(Duration::from_millis(20)))
                .is_err()
        );
        peer_writes_then_resets(theirs, 1, 1500);
        drain_from(&port, &b, 1, 0, 1500, true, true)
            .unwrap_or_else(|e| panic!("round {round}: clone: {e}"));
        drop(b);
        while port.get_completion(Some(Duration::from_millis(20))).is_ok() {}
        assert_eq!(port.operations_in_flight(), 0);
    }
}

/// Close a watched handle and reuse its slot at once for a new connection whose peer
/// writes and resets: the old watch's CQE must not touch the new one; each new connection
/// gets exactly its bytes then its end.
#[test]
fn close_then_slot_reuse_with_resets() {
    let port = LocalPort::with_pool(64, 1024).unwrap();
    let mut rng = Rng::new(77);
    let mut prev: Option<(LocalHandle<TcpStream>, TcpStream)> = None;
    for round in 0..300u64 {
        let (ours, theirs) = raw_pair(LOCAL);
        let h = port.add_handle(ours, round as usize + 1).unwrap();
        if let Some((old, old_peer)) = prev.take() {
            // The old peer resets after the close, its watch possibly firing.
            drop(old);
            if rng.chance(50) {
                reset(old_peer);
            }
        }
        port.recv_pooled(&h);
        let total = rng.range(1, 4000);
        let mut p = theirs.try_clone().unwrap();
        p.write_all(&pattern(round + 1, 0, total)).unwrap();
        let mut pos = 0u64;
        // Take until `total`.
        while (pos as usize) < total {
            let mut d = port
                .get_completion(Some(Duration::from_secs(3)))
                .unwrap_or_else(|e| {
                    panic!(
                        "{}: round {round}: stuck at {pos} of {total}: {e}",
                        label(&port)
                    )
                });
            if d.context() as u64 != round + 1 {
                // A cancelled completion of the old handle.
                assert!(d.take_pooled().is_none(), "old handle data: {d:?}");
                continue;
            }
            let b = d
                .take_pooled()
                .unwrap_or_else(|| panic!("round {round}: {d:?}"));
            assert_eq!(mismatch(round + 1, pos, &b), None, "round {round}");
            pos += b.len() as u64;
            if (pos as usize) < total {
                port.recv_pooled(&h);
            }
        }
        drop(p);
        prev = Some((h, theirs));
        if rng.chance(30) {
            // Final: reset with unread data on this one too.
            let (h, t) = prev.take().unwrap();
            port.recv_pooled(&h);
            peer_writes_then_resets(t, 1000 + round, 700);
            let mut got = 0u64;
            loop {
                let mut d = port
                    .get_completion(Some(Duration::from_secs(3)))
                    .unwrap_or_else(|e| {
                        panic!(
                            "{}: round {round}: final reset hung at {got}: {e}",
                            label(&port)
                        )
                    });
                match d.take_pooled() {
                    Some(b) => {
                        assert_eq!(mismatch(1000 + round, got, &b), None);
                        got += b.len() as u64;
                        port.recv_pooled(&h);
                    }
                    None => break,
                }
            }
            drop(h);
        }
    }
    drop(prev);
    while port.get_completion(Some(Duration::from_millis(30))).is_ok() {}
    assert_eq!(port.operations_in_flight(), 0);
}

/// A pooled receive's deadline passes (the receive stops: a stop under !DEFER_TASKRUN goes
/// out at once), then data + reset: a new receive ends with all of it.
#[test]
fn deadline_stop_then_reset_with_data() {
    for round in 0..5 {
        let port = LocalPort::with_pool(32, 1024).unwrap();
        let (ours, theirs) = raw_pair(LOCAL);
        let h = port.add_handle(ours, 1).unwrap();
        port.with_timeout(Duration::from_millis(10)).recv_pooled(&h);
        let d = port.get_completion(Some(Duration::from_secs(1))).unwrap();
        assert!(d.result().is_err());
        port.recv_pooled(&h);
        assert!(
            port.get_completion(Some(Duration::from_millis(20)))
                .is_err()
        );
        peer_writes_then_resets(theirs, 1, 3000);
        drain_from(&port, &h, 1, 0, 3000, true, true)
            .unwrap_or_else(|e| panic!("round {round}: {e}"));
    }
}

/// A multishot pooled receive cancelled and restarted many times while data flows, then the
/// peer resets with data: every byte, then the end.
#[test]
fn recv_multishot_restarts_then_reset() {
    for seed in seeds(3) {
        let mut rng = Rng::new(seed);
        let port = LocalPort::with_pool(32, 1024).unwrap();
        let (ours, mut theirs) = raw_pair(LOCAL);
        let h = port.add_handle(ours, 1).unwrap();
        let total = 300_000usize;
        let w = thread::spawn(move || {
            write_paced(&mut theirs, total, 5000, Duration::from_micros(300));
            thread::sleep(Duration::from_millis(20));
            reset(theirs);
        });
        let mut pos = 0u64;
        let mut id = port.recv_multishot(&h);
        let mut live = true;
        loop {
            if !live {
                id = if rng.chance(50) {
                    port.recv_multishot(&h)
                } else {
                    port.recv_pooled(&h)
                };
                live = true;
            }
            let mut d = port
                .get_completion(Some(Duration::from_secs(3)))
                .unwrap_or_else(|e| {
                    panic!(
                        "{}: seed {seed}: stuck at {pos} of {total}: {e}",
                        label(&port)
                    )
                });
            if let Some(b) = d.take_pooled() {
                assert_eq!(mismatch(1, pos, &b), None, "seed {seed}");
                pos += b.len() as u64;
            }
            if d.id() == id && !d.more() {
                live = false;
                match d.result() {
                    Ok(n) if n > 0 => {}
                    Ok(_) => break,
                    Err(e) if e.kind() == ErrorKind::ConnectionReset => break,
                    Err(e) => assert!(e.kind() != ErrorKind::UnexpectedEof, "{e}"),
                }
            }
            if live && rng.chance(3) {
                let _ = port.cancel(id);
            }
        }
        w.join().unwrap();
        assert!(pos as usize <= total);
        eprintln!(
            "{}: seed {seed}: {pos} of {total} before the reset",
            label(&port)
        );
    }
}

/// The peer writes and resets while the program is away; the handle's watch is in the kernel
/// (it fired, its task work not run yet under DEFER_TASKRUN), its multishot receive paused.
/// Then cancel_all and a pooled receive at once: the cancel ends the fired watch with
/// ECANCELED (`watched` = false, `hup` never set) and the new arming, made while `watched`
/// was still true, has no watch: it finds the data and the reset already there and hangs.
fn cancel_all_after_the_reset_arrived(paused: bool, total: usize) -> Result<(), String> {
    let port = LocalPort::with_pool(32, 1024).unwrap();
    let (ours, theirs) = raw_pair(LOCAL);
    let h = port.add_handle(ours, 1).unwrap();
    let id = port.recv_pooled(&h);
    assert!(
        port.get_completion(Some(Duration::from_millis(30)))
            .is_err()
    );
    if paused {
        port.cancel(id).unwrap();
        let d = port.get_completion(Some(Duration::from_secs(1))).unwrap();
        assert!(d.result().is_err());
        assert!(
            port.get_completion(Some(Duration::from_millis(30)))
                .is_err()
        );
    }
    peer_writes_then_resets(theirs, 1, total);
    port.cancel_all(&h).unwrap();
    port.recv_pooled(&h);
    let mut pos = 0u64;
    let mut asked = true;
    loop {
        if !asked {
            port.recv_pooled(&h);
        }
        asked = false;
        let mut d = port.get_completion(Some(Duration::from_secs(3))).map_err(|e| {
            format!(
                "{}: paused {paused} total {total}: the receive after {pos} bytes never ended ({e})",
                label(&port)
            )
        })?;
        if !paused
            && d.result()
                .as_ref()
                .is_err_and(|e| e.kind() != ErrorKind::ConnectionReset)
            && pos == 0
        {
            // The first receive, cancelled by cancel_all: the second one is still asked.
            asked = true;
            continue;
        }
        match d.take_pooled() {
            Some(b) => {
                assert_eq!(mismatch(1, pos, &b), None);
                pos += b.len() as u64;
            }
            None => {
                match d.result() {
                    Ok(0) => assert_eq!(pos as usize, total),
                    Err(e) => assert_eq!(e.kind(), ErrorKind::ConnectionReset, "{e}"),
                    Ok(n) => panic!("{n}"),
                }
                return Ok(());
            }
        }
    }
}

#[test]
fn cancel_all_after_the_reset_arrived_then_recv() {
    let mut fails = Vec::new();
    let mut runs = 0;
    for paused in [true, false] {
        for total in [100usize, 1000, 3000] {
            for _ in 0..3 {
                runs += 1;
                if let Err(e) = cancel_all_after_the_reset_arrived(paused, total) {
                    fails.push(e);
                }
            }
        }
    }
    assert!(
        fails.is_empty(),
        "{} of {runs}:\n{}",
        fails.len(),
        fails.join("\n")
    );
}
