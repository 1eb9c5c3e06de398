//! Review (helper 49): the LocalPort ring on the paths of older kernels, which the test
//! command runs with `PROACTOR_RING_RECV_LIMIT=off` (Linux 6.1-6.16: no byte limit on a
//! multishot receive) and `PROACTOR_RING_SETUP=coop_taskrun` (6.0), as well as the default
//! path. Streams are checked with an oracle (every byte, in order, exactly once, on the right
//! connection), and the pool's fairness bound.
//!
//! Found: without the limit one arming of a multishot receive took the whole lent window for a
//! handle nobody read (63 of 256 buffers, the pool's others starving): the ring now receives
//! with one single-shot receive per arming there. And on every path, the default one included,
//! a reset that came with the data the receive read left the pooled receive waiting forever:
//! each stream handle now has a hang-up watch (`multishot.rs`, `State::on_watch`).
#![cfg(target_os = "linux")]

mod common;

use std::{
    collections::{HashMap, VecDeque},
    io::{ErrorKind, Read, Write},
    net::{Shutdown, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use common::{
    local::{LOCAL, label, raw_pair},
    oracle::{Rng, mismatch, pattern, seeds},
};
use proactor::{LocalCompletion, LocalHandle, LocalPort, OpId, OpKind, PooledBuf};

/// A thread writing connection `conn`'s pattern, `total` bytes, in chunks, until `stop`.
fn flooder(
    mut s: TcpStream,
    conn: u64,
    total: usize,
    stop: Arc<AtomicBool>,
) -> thread::JoinHandle<(TcpStream, usize)> {
    thread::spawn(move || {
        s.set_write_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let mut sent = 0usize;
        let until = Instant::now() + Duration::from_secs(60);
        while sent < total && !stop.load(Ordering::Relaxed) && Instant::now() < until {
            let n = (total - sent).min(64 << 10);
            let chunk = pattern(conn, sent as u64, n);
            match s.write(&chunk) {
                Ok(k) => sent += k,
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(_) => break,
            }
        }
        (s, sent)
    })
}

/// The MAX_AHEAD pause is the only fairness bound without the receive limit: a handle whose
/// owner stops reading after one receive (and keeps that buffer, as a server processing a
/// request does) must not take the rest of the pool. 64 buffers: the whole pool is the
/// minimum window (`MIN_WINDOW`).
#[test]
fn a_flooder_whose_owner_keeps_its_one_buffer_leaves_buffers_to_others() {
    let port = LocalPort::with_pool(64, 1024).unwrap();
    let (ours, theirs) = raw_pair(LOCAL);
    let stop = Arc::new(AtomicBool::new(false));
    let flood = flooder(theirs, 1, 8 << 20, stop.clone());
    // Let the flood fill the socket before the one receive is armed.
    thread::sleep(Duration::from_millis(200));
    let a = port.add_handle(ours, 1).unwrap();
    port.recv_pooled(&a);
    let mut done = port.get_completion(Some(Duration::from_secs(10))).unwrap();
    assert_eq!(done.context(), 1);
    let kept = done.take_pooled().expect("data");
    assert_eq!(mismatch(1, 0, &kept), None);
    drop(done);
    // Nothing asked for: the port runs for 300 ms.
    let until = Instant::now() + Duration::from_millis(300);
    while Instant::now() < until {
        if let Ok(d) = port.get_completion(Some(Duration::from_millis(20))) {
            panic!("nothing was asked for: {d:?}");
        }
    }
    // Another connection asks for data: it must get a buffer.
    let (b_ours, mut b_theirs) = raw_pair(LOCAL);
    let b = port.add_handle(b_ours, 2).unwrap();
    port.recv_pooled(&b);
    b_theirs.write_all(b"ping").unwrap();
    let got = port.get_completion(Some(Duration::from_secs(5)));
    let starv = port.pool_starvations();
    let pauses = port.receive_pauses();
    stop.store(true, Ordering::Relaxed);
    let mut got = got.unwrap_or_else(|e| {
        panic!(
            "{}: the other connection got no pool buffer ({e}): the flooder nobody reads holds \
             the pool (starvations {starv}, pauses {pauses})",
            label(&port)
        )
    });
    assert_eq!(got.context(), 2);
    assert_eq!(got.take_pooled().as_deref(), Some(&b"ping"[..]));
    drop(got);
    drop(kept);
    drop(a);
    let _ = flood.join();
}

/// How many pool buffers a handle nobody reads holds (measured through the pool: another
/// handle keeps every buffer it gets until none comes). Reported, asserted against
/// MAX_AHEAD + 2 (the limit's 2 buffers) + the one kept.
#[test]
fn how_many_buffers_a_handle_nobody_reads_holds() {
    const POOL: usize = 256;
    let port = LocalPort::with_pool(POOL as u16, 1024).unwrap();
    let (ours, theirs) = raw_pair(LOCAL);
    let stop = Arc::new(AtomicBool::new(false));
    let flood = flooder(theirs, 1, 16 << 20, stop.clone());
    thread::sleep(Duration::from_millis(200));
    let a = port.add_handle(ours, 1).unwrap();
    // One receive, its buffer kept (as a server busy with a request), then nothing asked.
    let mut pos = 0u64;
    port.recv_pooled(&a);
    let mut d = port.get_completion(Some(Duration::from_secs(10))).unwrap();
    let first = d.take_pooled().expect("data");
    assert_eq!(mismatch(1, 0, &first), None, "flooder stream");
    pos += first.len() as u64;
    drop(d);
    let until = Instant::now() + Duration::from_millis(300);
    while Instant::now() < until {
        if let Ok(d) = port.get_completion(Some(Duration::from_millis(20))) {
            panic!("nothing was asked for: {d:?}");
        }
    }
    // The other connection: takes and keeps buffers until none comes within 300 ms.
    let (b_ours, b_theirs) = raw_pair(LOCAL);
    let b = port.add_handle(b_ours, 2).unwrap();
    let bstop = Arc::new(AtomicBool::new(false));
    let bflood = flooder(b_theirs, 2, 64 << 20, bstop.clone());
    let mut kept: Vec<PooledBuf> = Vec::new();
    let mut bpos = 0u64;
    loop {
        port.recv_pooled(&b);
        match port.get_completion(Some(Duration::from_millis(500))) {
            Ok(mut d) => {
                assert_eq!(d.context(), 2, "{d:?}");
                let data = d.take_pooled().expect("data");
                assert_eq!(mismatch(2, bpos, &data), None, "other stream");
                bpos += data.len() as u64;
                kept.push(data);
            }
            Err(_) => break,
        }
        if kept.len() > POOL {
            panic!("more buffers than the pool");
        }
    }
    let held_by_a = POOL - 1 - kept.len();
    drop(first);
    eprintln!(
        "{}: the handle nobody reads holds {held_by_a} of {POOL} buffers (starvations {}, pauses {})",
        label(&port),
        port.pool_starvations(),
        port.receive_pauses()
    );
    stop.store(true, Ordering::Relaxed);
    bstop.store(true, Ordering::Relaxed);
    // The pending recv_pooled of b is still waiting: drop b cancels it.
    drop(kept);
    drop(b);
    // A's queued data is still A's stream, in order.
    let mut drained = 0;
    while drained < 32 {
        port.recv_pooled(&a);
        let mut d = loop {
            let d = port.get_completion(Some(Duration::from_secs(10))).unwrap();
            if d.context() == 1 {
                break d;
            }
        };
        let data = d.take_pooled().expect("data");
        assert_eq!(
            mismatch(1, pos, &data),
            None,
            "flooder stream after the pause"
        );
        pos += data.len() as u64;
        drained += 1;
    }
    drop(a);
    let _ = flood.join();
    let _ = bflood.join();
    assert!(
        held_by_a <= 8 + 2 + 1,
        "{}: a handle nobody reads holds {held_by_a} of {POOL} pool buffers (MAX_AHEAD is 8)",
        label(&port)
    );
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Mode {
    /// A single recv_pooled waits (or none, `Idle`).
    Single(OpId),
    Multi(OpId),
    Idle,
}

struct Conn {
    h: LocalHandle<TcpStream>,
    pos: u64,
    total: u64,
    echo: bool,
    mode: Mode,
    resume_at: Option<Instant>,
    eof: bool,
    held: VecDeque<(Instant, PooledBuf)>,
}

/// Many connections, each a pattern stream; the program switches between single and
/// multishot pooled receives, cancels them, gives them short deadlines, stops reading for a
/// while, keeps buffers for a while, echoes half the connections back with pooled sends
/// (checked by the peers). Every byte must arrive once, in order, on its connection.
fn streams_oracle(seed: u64, conns: usize, total: usize, pool: u16, size: usize) {
    eprintln!("streams_oracle: seed {seed} (PROACTOR_SEED={seed} replays it)");
    let mut rng = Rng::new(seed);
    let port = LocalPort::with_pool(pool, size).unwrap();
    let mut writers = Vec::new();
    let mut readers = Vec::new();
    let mut cs: HashMap<usize, Conn> = HashMap::new();
    for i in 0..conns {
        let conn = (i + 1) as u64;
        let (ours, theirs) = raw_pair(LOCAL);
        let echo = i % 2 == 0;
        let reader = theirs.try_clone().unwrap();
        let mut wrng = rng.fork();
        writers.push(thread::spawn(move || {
            let mut s = theirs;
            let mut sent = 0usize;
            while sent < total {
                let n = wrng.range(1, 70_000).min(total - sent);
                s.write_all(&pattern(conn, sent as u64, n)).unwrap();
                sent += n;
                if wrng.chance(10) {
                    thread::sleep(Duration::from_millis(wrng.range(0, 5) as u64));
                }
            }
            s.shutdown(Shutdown::Write).unwrap();
            s
        }));
        if echo {
            let mut rrng = rng.fork();
            readers.push(thread::spawn(move || {
                let mut r = reader;
                r.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
                let mut pos = 0usize;
                let mut buf = vec![0; 65536];
                while pos < total {
                    let n = r.read(&mut buf).expect("echo read");
                    assert!(n > 0, "conn {conn}: echo ended at {pos} of {total}");
                    if let Some(at) = mismatch(conn, pos as u64, &buf[..n]) {
                        panic!("conn {conn}: echo differs at stream offset {}", pos + at);
                    }
                    pos += n;
                    if rrng.chance(5) {
                        thread::sleep(Duration::from_millis(rrng.range(0, 10) as u64));
                    }
                }
                pos
            }));
        } else {
            drop(reader);
        }
        let h = port.add_handle(ours, i + 1).unwrap();
        cs.insert(
            i + 1,
            Conn {
                h,
                pos: 0,
                total: total as u64,
                echo,
                mode: Mode::Idle,
                resume_at: None,
                eof: false,
                held: VecDeque::new(),
            },
        );
    }
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut batch = Vec::new();
    let mut sends_in_flight = 0usize;
    loop {
        let now = Instant::now();
        assert!(
            now < deadline,
            "seed {seed} {}: stuck: {:?}",
            label(&port),
            cs.iter()
                .map(|(k, c)| (*k, c.pos, c.mode, c.eof, c.held.len()))
                .collect::<Vec<_>>()
        );
        if cs.values().all(|c| c.eof && c.held.is_empty()) && sends_in_flight == 0 {
            break;
        }
        // Decide, for each connection.
        for c in cs.values_mut() {
            while c.held.front().is_some_and(|(t, _)| *t <= now) {
                let (_, buf) = c.held.pop_front().unwrap();
                if c.echo {
                    port.send_pooled(&c.h, buf);
                    sends_in_flight += 1;
                }
            }
            if c.eof {
                continue;
            }
            if c.resume_at.is_some_and(|t| t > now) {
                continue;
            }
            c.resume_at = None;
            match c.mode {
                Mode::Idle => {
                    let r = rng.range(0, 100);
                    c.mode = if r < 40 {
                        Mode::Single(port.recv_pooled(&c.h))
                    } else if r < 60 {
                        Mode::Single(
                            port.with_timeout(Duration::from_micros(rng.range(50, 3000) as u64))
                                .recv_pooled(&c.h),
                        )
                    } else if r < 85 {
                        Mode::Multi(port.recv_multishot(&c.h))
                    } else {
                        Mode::Multi(
                            port.with_timeout(Duration::from_micros(rng.range(100, 5000) as u64))
                                .recv_multishot(&c.h),
                        )
                    };
                }
                Mode::Single(id) | Mode::Multi(id) => {
                    if rng.chance(3) {
                        let _ = port.cancel(id);
                    } else if !c.echo && rng.chance(1) {
                        // (Not on echo connections: it would cancel their sends too.)
                        let _ = port.cancel_all(&c.h);
                    }
                }
            }
        }
        batch.clear();
        match port.get_completions(&mut batch, 64, Some(Duration::from_millis(5))) {
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::TimedOut => continue,
            Err(e) => panic!("{e}"),
        }
        for d in batch.drain(..) {
            let mut d: LocalCompletion = d;
            let ctx = d.context();
            let c = cs
                .get_mut(&ctx)
                .expect("a completion of a known connection");
            match d.kind() {
                OpKind::SendPooled => {
                    sends_in_flight -= 1;
                    assert!(d.result().is_ok(), "conn {ctx}: echo send {:?}", d.result());
                    continue;
                }
                OpKind::RecvPooled => {}
                k => panic!("unexpected {k:?}"),
            }
            let id = d.id();
            let ended = !d.more();
            match c.mode {
                Mode::Single(w) | Mode::Multi(w) if w == id => {
                    if ended {
                        c.mode = Mode::Idle;
                    }
                }
                _ => panic!(
                    "seed {seed}: conn {ctx}: completion of {id:?} not the waiting {:?}: {d:?}",
                    c.mode
                ),
            }
            let res = d.result();
            if let Some(data) = d.take_pooled() {
                assert!(!c.eof, "seed {seed}: conn {ctx}: data after EOF");
                if let Some(at) = mismatch(ctx as u64, c.pos, &data) {
                    panic!(
                        "seed {seed} {}: conn {ctx}: byte differs at stream offset {}: {}",
                        label(&port),
                        c.pos + at as u64,
                        common::oracle::describe(&data, at, c.pos + at as u64, ctx as u64)
                    );
                }
                c.pos += data.len() as u64;
                if rng.chance(20) || !c.held.is_empty() {
                    // Kept a while; an echo keeps its order behind what is kept.
                    let t = Instant::now() + Duration::from_millis(rng.range(0, 20) as u64);
                    let t = c.held.back().map_or(t, |(b, _)| (*b).max(t));
                    c.held.push_back((t, data));
                } else if c.echo {
                    port.send_pooled(&c.h, data);
                    sends_in_flight += 1;
                }
            } else {
                match res {
                    Ok(0) => {
                        assert_eq!(
                            c.pos,
                            c.total,
                            "seed {seed} {}: conn {ctx}: EOF early",
                            label(&port)
                        );
                        c.eof = true;
                    }
                    Ok(n) => panic!("conn {ctx}: {n} bytes without a buffer"),
                    Err(e) => {
                        assert!(
                            proactor::is_cancelled(&e) || proactor::is_deadline(&e),
                            "seed {seed}: conn {ctx}: {e}"
                        );
                    }
                }
            }
            if ended && !c.eof && rng.chance(15) {
                c.resume_at = Some(Instant::now() + Duration::from_millis(rng.range(1, 40) as u64));
            }
        }
    }
    for w in writers {
        w.join().unwrap();
    }
    for r in readers {
        assert_eq!(r.join().unwrap(), total);
    }
    for c in cs.values() {
        assert_eq!(c.pos, c.total);
    }
    drop(cs);
    assert_eq!(port.operations_in_flight(), 0);
    eprintln!(
        "seed {seed} {}: ok (starvations {}, pauses {}, gathered {})",
        label(&port),
        port.pool_starvations(),
        port.receive_pauses(),
        port.gathered_sends()
    );
}

#[test]
fn streams_with_cancels_deadlines_pauses_small_pool() {
    for seed in seeds(1) {
        streams_oracle(seed, 6, 1 << 20, 32, 1024);
    }
}

#[test]
fn streams_with_cancels_deadlines_pauses_bigger_buffers() {
    for seed in seeds(1) {
        streams_oracle(seed, 4, 4 << 20, 64, 16 * 1024);
    }
}

/// Closing a handle while its multishot receive brings data, then registering new handles
/// (the slot and fixed-file index reused): each new connection gets its own bytes only.
#[test]
fn close_racing_data_then_slot_reuse() {
    let port = LocalPort::with_pool(64, 2048).unwrap();
    let mut rng = Rng::new(7);
    for round in 0..60u64 {
        let conn = round + 1;
        let (ours, theirs) = raw_pair(LOCAL);
        let stop = Arc::new(AtomicBool::new(false));
        let fl = flooder(theirs, conn, 4 << 20, stop.clone());
        let h = port.add_handle(ours, conn as usize).unwrap();
        let id = match rng.range(0, 3) {
            0 => port.recv_multishot(&h),
            1 => port.recv_pooled(&h),
            _ => port
                .with_timeout(Duration::from_millis(2))
                .recv_multishot(&h),
        };
        let mut pos = 0u64;
        let n = rng.range(0, 20);
        let mut alive = true;
        for _ in 0..n {
            let Ok(mut d) = port.get_completion(Some(Duration::from_secs(5))) else {
                break;
            };
            assert_eq!(d.context(), conn as usize, "round {round}: {d:?}");
            if let Some(data) = d.take_pooled() {
                assert_eq!(mismatch(conn, pos, &data), None, "round {round}");
                pos += data.len() as u64;
            }
            if !d.more() {
                alive = false;
                break;
            }
        }
        let _ = id;
        let _ = alive;
        if rng.chance(50) {
            thread::sleep(Duration::from_millis(rng.range(0, 5) as u64));
        }
        drop(h); // close with data in flight
        // Whatever comes for the closed handle: its own context, no data after close that
        // breaks its stream.
        let until = Instant::now() + Duration::from_millis(20);
        while Instant::now() < until {
            if let Ok(mut d) = port.get_completion(Some(Duration::from_millis(5))) {
                assert_eq!(d.context(), conn as usize, "round {round}: {d:?}");
                if let Some(data) = d.take_pooled() {
                    assert_eq!(
                        mismatch(conn, pos, &data),
                        None,
                        "round {round} after close"
                    );
                    pos += data.len() as u64;
                }
            }
        }
        stop.store(true, Ordering::Relaxed);
        let _ = fl.join();
        assert_eq!(port.operations_in_flight(), 0, "round {round}");
    }
    // A last connection: exact stream.
    let (ours, mut theirs) = raw_pair(LOCAL);
    let h = port.add_handle(ours, 999).unwrap();
    let data = pattern(999, 0, 300_000);
    let w = thread::spawn(move || {
        theirs.write_all(&data).unwrap();
        theirs.shutdown(Shutdown::Write).unwrap();
        theirs
    });
    let id = port.recv_multishot(&h);
    let mut pos = 0u64;
    loop {
        let mut d = port.get_completion(Some(Duration::from_secs(10))).unwrap();
        assert_eq!((d.context(), d.id()), (999, id), "{d:?}");
        if let Some(b) = d.take_pooled() {
            assert_eq!(mismatch(999, pos, &b), None);
            pos += b.len() as u64;
        }
        if !d.more() {
            assert_eq!(d.result().unwrap(), 0);
            break;
        }
    }
    assert_eq!(pos, 300_000);
    let _ = w.join();
}

/// The peer sends more than MAX_AHEAD buffers and closes (or resets) while the handle's
/// receiving is paused; the program drains: exact stream, then EOF (or an error) once.
#[test]
fn eof_or_reset_after_a_pause() {
    for reset in [false, true] {
        for total in [5_000usize, 9 * 1024, 100_000, 1 << 20] {
            let port = LocalPort::with_pool(32, 1024).unwrap();
            let (ours, theirs) = raw_pair(LOCAL);
            let h = port.add_handle(ours, 1).unwrap();
            port.recv_pooled(&h);
            let w = thread::spawn(move || {
                let mut s = theirs;
                let _ = s.write_all(&pattern(1, 0, total));
                thread::sleep(Duration::from_millis(100));
                if reset {
                    socket2::SockRef::from(&s)
                        .set_linger(Some(Duration::ZERO))
                        .unwrap();
                    drop(s);
                } else {
                    s.shutdown(Shutdown::Write).unwrap();
                    thread::sleep(Duration::from_millis(500));
                }
            });
            let mut pos = 0u64;
            let mut d = port.get_completion(Some(Duration::from_secs(10))).unwrap();
            if let Some(b) = d.take_pooled() {
                assert_eq!(mismatch(1, 0, &b), None);
                pos += b.len() as u64;
            }
            drop(d);
            // Nobody reads for a while: the queue fills, the receiving pauses, the peer ends.
            thread::sleep(Duration::from_millis(300));
            let until = Instant::now() + Duration::from_millis(100);
            while Instant::now() < until {
                if let Ok(d) = port.get_completion(Some(Duration::from_millis(10))) {
                    panic!("nothing asked for: {d:?}");
                }
            }
            let mut end = None;
            let deadline = Instant::now() + Duration::from_secs(30);
            while end.is_none() {
                assert!(Instant::now() < deadline, "stuck at {pos}");
                port.recv_pooled(&h);
                let mut d = port
                    .get_completion(Some(Duration::from_secs(10)))
                    .unwrap_or_else(|e| {
                        panic!(
                            "{}: reset {reset} total {total}: stuck at {pos}: {e} (starvations {}, pauses {})",
                            label(&port),
                            port.pool_starvations(),
                            port.receive_pauses()
                        )
                    });
                match d.take_pooled() {
                    Some(b) => {
                        assert_eq!(mismatch(1, pos, &b), None, "reset {reset} total {total}");
                        pos += b.len() as u64;
                    }
                    None => end = Some(d.result()),
                }
            }
            match end.unwrap() {
                Ok(0) => assert_eq!(pos as usize, total, "reset {reset}: EOF early"),
                Ok(n) => panic!("{n}"),
                Err(e) => {
                    assert!(reset, "error without reset: {e}");
                    assert!(pos as usize <= total);
                }
            }
            // After the end, the end again (or the error's aftermath), never data.
            port.recv_pooled(&h);
            let mut d = port.get_completion(Some(Duration::from_secs(10))).unwrap();
            assert!(d.take_pooled().is_none(), "data after the end");
            drop(h);
            let _ = w.join();
            assert_eq!(port.operations_in_flight(), 0);
        }
    }
}

/// Focused: the peer sends some data and resets the connection (RST, `SO_LINGER` 0) before
/// the program receives. Every pooled receive must end: the data in order, then the reset
/// (or EOF), never a receive that waits forever. `multi`: one `recv_multishot`, else
/// `recv_pooled` again and again.
fn reset_with_unread_data(total: usize, multi: bool) -> Result<(), String> {
    let port = LocalPort::with_pool(32, 1024).unwrap();
    let (ours, mut theirs) = raw_pair(LOCAL);
    let h = port.add_handle(ours, 1).unwrap();
    theirs.write_all(&pattern(1, 0, total)).unwrap();
    thread::sleep(Duration::from_millis(50));
    socket2::SockRef::from(&theirs)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(theirs);
    thread::sleep(Duration::from_millis(50));
    let mut pos = 0u64;
    if multi {
        port.recv_multishot(&h);
    }
    loop {
        if !multi {
            port.recv_pooled(&h);
        }
        let mut d = match port.get_completion(Some(Duration::from_secs(3))) {
            Ok(d) => d,
            Err(e) => {
                return Err(format!(
                    "{}: total {total} multi {multi}: the receive after {pos} bytes never ended ({e})",
                    label(&port)
                ));
            }
        };
        match d.take_pooled() {
            Some(b) => {
                assert_eq!(mismatch(1, pos, &b), None);
                pos += b.len() as u64;
            }
            None => {
                match d.result() {
                    Ok(0) => assert_eq!(pos as usize, total),
                    Ok(n) => panic!("{n}"),
                    Err(e) => assert_eq!(e.kind(), ErrorKind::ConnectionReset, "{e}"),
                }
                return Ok(());
            }
        }
    }
}

/// The peer writes and resets before the program asks: the program gets every byte, then
/// the reset (or the end), never a receive that waits forever. The multishot receive read the
/// data and went back to waiting for a wake-up that the reset had already given (one for
/// both); it hung on every kernel path until the hang-up watch.
#[test]
fn a_reset_with_unread_data_ends_the_pooled_receive() {
    let mut fails = Vec::new();
    for total in [100usize, 1000, 1024, 2048, 3000, 5000, 20_000] {
        for multi in [false, true] {
            if let Err(e) = reset_with_unread_data(total, multi) {
                fails.push(e);
            }
        }
    }
    assert!(fails.is_empty(), "{}", fails.join("\n"));
}
