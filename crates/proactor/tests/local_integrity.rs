//! The conformance suite of `tests/integrity.rs`, on [`LocalPort`]: the same oracle
//! (`tests/common/oracle.rs`: each byte names its connection and stream offset; every operation
//! completes exactly once; the bytes a completion reports are the bytes the peer got;
//! `operations_in_flight()` and `live_operations()` back to 0; no descriptor leaked), driven by
//! the port's own thread. Where the `Iocp` suite cancels and drops from other threads, this one
//! cancels and drops at seeded random points of the loop: between submission and completion,
//! with data in flight, with pooled data queued and the pool empty.
//!
//! Replay a failure with `PROACTOR_SEED=<seed> cargo test -p proactor --test local_integrity`.
#![cfg(any(windows, target_os = "linux"))]

mod common;

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    fs::OpenOptions,
    io::{Read, Write},
    net::{Shutdown, SocketAddr, TcpStream, UdpSocket},
    sync::{Mutex, MutexGuard},
    thread,
    time::{Duration, Instant},
};

use common::{
    local::raw_pair,
    oracle::{Fails, Rng, check_stream, fnv, mismatch, open_fds, pattern, seeds},
};
use proactor::{LocalCompletion, LocalHandle, LocalPort, OpId, OpKind, PooledBuf};

/// Seeds per test (each a few hundred milliseconds).
const SEEDS: usize = 3;

/// Stream sizes, 1 B to a few MiB; one connection of a run may get [`HUGE`].
const SIZES: &[usize] = &[1, 7, 4095, 4096, 65_537, 200_000, 1 << 20, (3 << 20) + 5];
/// (8 MiB on Windows: Wine moves loopback bytes several times slower.)
const HUGE: usize = if cfg!(windows) { 8 << 20 } else { 32 << 20 };

fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// The port of a run: two 4 KiB buffers; on io_uring with a minimum wait, half the seeds hold
/// the first wait of each call for a batch for 0.1-2 ms (wait coalescing, fixed so that the
/// light loads here reach it: whatever a wait holds back must still come, once and in order).
fn port(rng: &mut Rng) -> LocalPort {
    let port = LocalPort::with_pool(2, 4096).expect("port");
    if rng.chance(50) {
        let delay = Duration::from_micros(rng.range(100, 2000) as u64);
        match port.fix_coalescing_delay(delay) {
            Ok(()) => assert_eq!(port.coalescing_delay(), delay),
            Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::Unsupported, "{e}"),
        }
    }
    port
}

/// Runs `body` once per seed with the checks of `integrity.rs` around it.
fn each_seed(test: &'static str, body: impl Fn(&Fails, &mut Rng) -> LocalPort) {
    let _serial = serial();
    let runs = seeds(SEEDS);
    let backend = LocalPort::new().map(|p| p.backend()).unwrap_or("?");
    for (i, &seed) in runs.iter().enumerate() {
        let fails = Fails::new(test, seed).in_binary("local_integrity");
        let fds = open_fds();
        let started = Instant::now();
        let port = body(&fails, &mut Rng::new(seed));
        if let Ok(extra) = port.get_completion(Some(Duration::from_millis(20))) {
            fails.fail(format!(
                "a completion after every operation completed: {extra:?}"
            ));
        }
        if port.operations_in_flight() != 0 {
            fails.fail(format!(
                "{} operations still in flight after every completion was dequeued",
                port.operations_in_flight()
            ));
        }
        drop(port);
        if proactor::live_operations() != 0 {
            fails.fail(format!(
                "live_operations() is {} after the port dropped",
                proactor::live_operations()
            ));
        }
        if let (Some(before), Some(after)) = (fds, open_fds()) {
            if after != before {
                fails.fail(format!("{before} descriptors open before, {after} after"));
            }
        }
        eprintln!(
            "{test}: seed {seed} ({}/{}) on LocalPort/{backend}: {:.1} s",
            i + 1,
            runs.len(),
            started.elapsed().as_secs_f64()
        );
        fails.check(&format!("LocalPort/{backend}"));
    }
}

/// Waits for the next completions (up to `max`), recording a failure on a hang.
fn dequeue(port: &LocalPort, batch: &mut Vec<LocalCompletion>, max: usize, fails: &Fails) -> bool {
    match port.get_completions(batch, max, common::WAIT) {
        Ok(_) => true,
        Err(e) => {
            fails.fail(format!(
                "no completion within {:?} with {} operations in flight: {e}",
                common::WAIT,
                port.operations_in_flight()
            ));
            false
        }
    }
}

/// A peer that writes connection `conn`'s stream, `total` bytes, in bursts with pauses, then
/// shuts its side down; how many bytes it wrote (fewer if the connection went away).
fn bursty_writer(
    mut s: TcpStream,
    conn: u64,
    total: usize,
    mut rng: Rng,
) -> thread::JoinHandle<usize> {
    thread::spawn(move || {
        let mut at = 0;
        while at < total {
            let n = rng
                .pick(&[1, 13, 1000, 4096, 65_536, 300_000])
                .min(total - at);
            if s.write_all(&pattern(conn, at as u64, n)).is_err() {
                return at;
            }
            at += n;
            if rng.chance(20) {
                thread::sleep(Duration::from_micros(rng.range(0, 3000) as u64));
            }
        }
        let _ = s.shutdown(Shutdown::Write);
        at
    })
}

/// A peer that reads to the end in bursts with pauses; what it got.
fn slow_reader(mut s: TcpStream, mut rng: Rng) -> thread::JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut got = Vec::new();
        let mut buf = vec![0; 1 << 20];
        let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
        loop {
            let n = rng.pick(&[1, 100, 4096, 65_536, 1 << 20]);
            match s.read(&mut buf[..n]) {
                Ok(0) | Err(_) => return got,
                Ok(k) => got.extend_from_slice(&buf[..k]),
            }
            if rng.chance(10) {
                thread::sleep(Duration::from_micros(rng.range(0, 2000) as u64));
            }
        }
    })
}

/// Segments `(start, len)` cut to their first `len` bytes in total.
fn cut(segments: &[(u64, usize)], len: usize) -> Vec<(u64, usize)> {
    let mut left = len;
    segments
        .iter()
        .map(|&(s, n)| {
            let k = n.min(left);
            left -= k;
            (s, k)
        })
        .filter(|s| s.1 > 0)
        .collect()
}

/// Receive buffer sizes for a stream of `total` bytes (tiny buffers only for short streams).
fn caps(total: usize) -> &'static [usize] {
    if total <= 100_000 {
        &[1, 100, 4096, 70_000]
    } else {
        &[4096, 70_000, 1 << 20]
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum RecvMode {
    Plain,
    Vectored,
    Pooled,
    /// One multishot pooled receive at a time, started again after a cancel.
    Multishot,
}

struct RecvConn {
    handle: Option<LocalHandle<TcpStream>>,
    mode: RecvMode,
    total: usize,
    writer: Option<thread::JoinHandle<usize>>,
    depth: usize,
    next_index: usize,
    /// In flight: id to submission index.
    ops: HashMap<OpId, (usize, bool)>,
    /// Data of each completed receive, by submission index.
    data: BTreeMap<usize, Vec<u8>>,
    eof: bool,
    /// At which step the handle is dropped, if it is.
    drop_at: Option<usize>,
}

fn run_receives(fails: &Fails, rng: &mut Rng) -> LocalPort {
    let port = port(rng);
    let count = rng.range(3, 7);
    let huge = rng.range(0, count * 3);
    let mut conns: Vec<RecvConn> = (0..count)
        .map(|c| {
            let (ours, theirs) = raw_pair(common::each_ip_v4());
            let total = if c == huge { HUGE } else { rng.pick(SIZES) };
            let writer = bursty_writer(theirs, c as u64, total, rng.fork());
            RecvConn {
                handle: Some(port.add_handle(ours, c).expect("associate")),
                mode: rng.pick(&[
                    RecvMode::Plain,
                    RecvMode::Vectored,
                    RecvMode::Pooled,
                    RecvMode::Pooled,
                    RecvMode::Multishot,
                    RecvMode::Multishot,
                ]),
                total,
                writer: Some(writer),
                depth: rng.range(1, 4),
                next_index: 0,
                ops: HashMap::new(),
                data: BTreeMap::new(),
                eof: false,
                drop_at: rng.chance(25).then(|| rng.range(0, 400)),
            }
        })
        .collect();
    // Pool buffers the loop keeps for a while: the pool runs empty, receives wait.
    let mut held: VecDeque<PooledBuf> = VecDeque::new();
    let mut batch = Vec::new();
    let started = Instant::now();
    for step in 0.. {
        // Keep each live connection's receives in flight.
        for (c, conn) in conns.iter_mut().enumerate() {
            let Some(h) = &conn.handle else { continue };
            if conn.drop_at == Some(step) {
                conn.handle = None; // dropped with its receives in flight
                continue;
            }
            let depth = match conn.mode {
                RecvMode::Multishot => 1,
                _ => conn.depth,
            };
            while !conn.eof && conn.ops.len() < depth {
                let id = match conn.mode {
                    RecvMode::Plain => port.recv(h, Vec::with_capacity(rng.pick(caps(conn.total)))),
                    RecvMode::Vectored => port.recv_vectored(
                        h,
                        vec![
                            Vec::with_capacity(rng.range(1, 300)),
                            Vec::with_capacity(rng.pick(caps(conn.total))),
                        ],
                    ),
                    RecvMode::Pooled => port.recv_pooled(h),
                    RecvMode::Multishot => port.recv_multishot(h),
                };
                conn.ops.insert(id, (conn.next_index, false));
                conn.next_index += 1;
            }
            // A cancel at a random point, data in flight or not.
            if rng.chance(3) && !conn.ops.is_empty() {
                let ids: Vec<OpId> = conn.ops.keys().copied().collect();
                let id = rng.pick(&ids);
                if port.cancel(id).is_ok() {
                    conn.ops.get_mut(&id).expect("in flight").1 = true;
                }
            }
            let _ = c;
        }
        if conns
            .iter()
            .all(|c| c.ops.is_empty() && (c.eof || c.handle.is_none()))
        {
            break;
        }
        if started.elapsed() > Duration::from_secs(60) {
            fails.fail("the receives did not finish in 60 s".into());
            break;
        }
        batch.clear();
        if !held.is_empty() {
            // Buffers held: give one back when nothing else moves (the pool may be empty).
            match port.get_completions(&mut batch, rng.range(1, 16), Some(Duration::from_millis(1)))
            {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                    held.pop_front();
                    continue;
                }
                Err(e) => {
                    fails.fail(format!("get_completions failed: {e}"));
                    break;
                }
            }
        } else if !dequeue(&port, &mut batch, rng.range(1, 16), fails) {
            break;
        }
        for mut done in batch.drain(..) {
            let c = done.context();
            let Some(conn) = conns.get_mut(c) else {
                fails.fail(format!("a completion with an unknown context: {done:?}"));
                continue;
            };
            let multishot = conn.mode == RecvMode::Multishot;
            if done.more() && !multishot {
                fails.fail(format!("connection {c}: more() on a single-shot: {done:?}"));
            }
            let found = if done.more() {
                conn.ops.get(&done.id()).copied()
            } else {
                conn.ops.remove(&done.id())
            };
            let Some((mut index, cancelled)) = found else {
                fails.fail(format!(
                    "a completion not in flight (unknown or after its last): {done:?}"
                ));
                continue;
            };
            if multishot {
                // Its messages are numbered as they come (one multishot at a time).
                index = conn.next_index;
                conn.next_index += 1;
            }
            let want = match conn.mode {
                RecvMode::Plain => OpKind::Recv,
                RecvMode::Vectored => OpKind::RecvVectored,
                RecvMode::Pooled | RecvMode::Multishot => OpKind::RecvPooled,
            };
            if done.kind() != want {
                fails.fail(format!("a {want} completed as {}: {done:?}", done.kind()));
            }
            let data = match conn.mode {
                RecvMode::Plain => done.take_buffer(),
                RecvMode::Vectored => done.take_buffers().map(|b| b.concat()),
                RecvMode::Pooled | RecvMode::Multishot => done.take_pooled().map(|b| {
                    let v = b.to_vec();
                    if held.len() < 2 && rng.chance(10) {
                        held.push_back(b);
                    }
                    v
                }),
            };
            match done.result() {
                Ok(0) => {
                    conn.eof = true;
                    if data.as_ref().is_some_and(|d| !d.is_empty()) {
                        fails.fail(format!("connection {c}: EOF with data: {done:?}"));
                    }
                }
                Ok(n) if multishot && !done.more() => fails.fail(format!(
                    "connection {c}: a multishot ended with {n} bytes: {done:?}"
                )),
                Ok(n) => match data {
                    Some(d) if d.len() == n => {
                        conn.data.insert(index, d);
                    }
                    d => fails.fail(format!(
                        "connection {c}: {want} reports {n} bytes, hands back {:?}",
                        d.map(|d| d.len())
                    )),
                },
                Err(e) if proactor::is_cancelled(&e) => {
                    if !cancelled && conn.handle.is_some() {
                        fails.fail(format!(
                            "connection {c}: cancelled, but nobody cancelled it: {done:?}"
                        ));
                    }
                    if matches!(conn.mode, RecvMode::Pooled | RecvMode::Multishot) && data.is_some()
                    {
                        fails.fail(format!(
                            "connection {c}: a cancelled pooled receive has a buffer"
                        ));
                    }
                }
                Err(e) => fails.fail(format!("connection {c}: {want} failed: {e} ({done:?})")),
            }
        }
        // Give pool buffers back now and then.
        if !held.is_empty() && rng.chance(30) {
            held.pop_front();
        }
    }
    drop(held);
    for (c, conn) in conns.iter_mut().enumerate() {
        let dropped = conn.handle.is_none();
        conn.handle = None;
        let wrote = conn.writer.take().and_then(|w| w.join().ok()).unwrap_or(0);
        let got: Vec<u8> = std::mem::take(&mut conn.data)
            .into_values()
            .flatten()
            .collect();
        if dropped {
            if let Some(at) = mismatch(c as u64, 0, &got) {
                fails.fail(format!(
                    "connection {c} (dropped): byte {at} of what it received differs: {}",
                    common::oracle::describe(&got, at, at as u64, c as u64)
                ));
            }
            if got.len() > wrote {
                fails.fail(format!(
                    "connection {c}: received {} bytes, {wrote} sent",
                    got.len()
                ));
            }
        } else if let Err(e) = check_stream(c as u64, &[(0, conn.total)], &got) {
            fails.fail(format!("{e} ({:?}, {} bytes sent)", conn.mode, wrote));
        }
    }
    port
}

#[test]
fn receives_get_every_byte_once_and_in_order() {
    each_seed("receives_get_every_byte_once_and_in_order", run_receives);
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum SendMode {
    Plain,
    Vectored,
    /// Echo of the peer's bytes: pooled receives, each buffer sent back with `send_pooled`.
    Echo,
}

struct SendConn {
    handle: Option<LocalHandle<TcpStream>>,
    mode: SendMode,
    total: usize,
    reader: Option<thread::JoinHandle<Vec<u8>>>,
    writer: Option<thread::JoinHandle<usize>>,
    depth: usize,
    /// Next stream offset to send (plain, vectored) or echo (echo).
    offset: usize,
    /// Sends in submission order: stream start, length, bytes reported once complete.
    sends: Vec<(u64, usize, Option<usize>)>,
    /// In flight: id to (send index, cancel requested); receives of an echo have index MAX.
    ops: HashMap<OpId, (usize, bool)>,
    /// Echo: pooled receives in submission order, and their data once complete.
    recvs: VecDeque<(OpId, Option<Option<PooledBuf>>)>,
    stopped: bool,
    eof: bool,
    drop_at: Option<usize>,
    dropped_early: bool,
}

impl SendConn {
    fn done(&self) -> bool {
        self.ops.is_empty()
            && (self.handle.is_none()
                || (self.stopped && (self.mode != SendMode::Echo || self.eof)))
    }
}

fn run_sends(fails: &Fails, rng: &mut Rng) -> LocalPort {
    let port = port(rng);
    let count = rng.range(3, 7);
    let huge = rng.range(0, count * 3);
    let mut conns: Vec<SendConn> = (0..count)
        .map(|c| {
            let (ours, theirs) = raw_pair(common::each_ip_v4());
            let mode = rng.pick(&[SendMode::Plain, SendMode::Vectored, SendMode::Echo]);
            let total = if c == huge && mode != SendMode::Echo {
                HUGE
            } else {
                rng.pick(SIZES)
            };
            let writer = (mode == SendMode::Echo).then(|| {
                bursty_writer(
                    theirs.try_clone().expect("clone"),
                    c as u64,
                    total,
                    rng.fork(),
                )
            });
            SendConn {
                handle: Some(port.add_handle(ours, c).expect("associate")),
                mode,
                total,
                reader: Some(slow_reader(theirs, rng.fork())),
                writer,
                depth: rng.range(1, 4),
                offset: 0,
                sends: Vec::new(),
                ops: HashMap::new(),
                recvs: VecDeque::new(),
                stopped: false,
                eof: false,
                drop_at: rng.chance(20).then(|| rng.range(0, 300)),
                dropped_early: false,
            }
        })
        .collect();
    let mut batch = Vec::new();
    let started = Instant::now();
    for step in 0.. {
        for conn in conns.iter_mut() {
            let Some(h) = &conn.handle else {
                // Dropped: the pool buffers its completed receives hold go back (kept, they would
                // starve every other connection of a small pool).
                conn.recvs.retain(|(_, data)| data.is_none());
                continue;
            };
            if conn.drop_at == Some(step) {
                conn.handle = None;
                conn.dropped_early = true;
                conn.recvs.retain(|(_, data)| data.is_none());
                continue;
            }
            match conn.mode {
                SendMode::Plain | SendMode::Vectored => {
                    while !conn.stopped && conn.ops.len() < conn.depth && conn.offset < conn.total {
                        let n = rng
                            .pick(&[1, 100, 4096, 65_536, 1 << 20, 4 << 20])
                            .min(conn.total - conn.offset);
                        let c = h.context() as u64;
                        let id = if conn.mode == SendMode::Plain {
                            port.send(h, pattern(c, conn.offset as u64, n))
                        } else {
                            let k = rng.range(1, n + 1).min(n);
                            port.send_vectored(
                                h,
                                vec![
                                    pattern(c, conn.offset as u64, k),
                                    pattern(c, (conn.offset + k) as u64, n - k),
                                ],
                            )
                        };
                        conn.ops.insert(id, (conn.sends.len(), false));
                        conn.sends.push((conn.offset as u64, n, None));
                        conn.offset += n;
                    }
                    if conn.offset >= conn.total {
                        conn.stopped = true;
                    }
                }
                SendMode::Echo => {
                    // Echo the received buffers in the order they were received.
                    while let Some((_, Some(_))) = conn.recvs.front() {
                        let (_, data) = conn.recvs.pop_front().expect("front");
                        let Some(buf) = data.expect("complete") else {
                            continue;
                        };
                        let n = buf.len();
                        if conn.stopped {
                            continue; // a send was cancelled: the echo stops
                        }
                        let id = port.send_pooled(h, buf);
                        conn.ops.insert(id, (conn.sends.len(), false));
                        conn.sends.push((conn.offset as u64, n, None));
                        conn.offset += n;
                    }
                    while !conn.eof && conn.recvs.len() < conn.depth {
                        let id = port.recv_pooled(h);
                        conn.ops.insert(id, (usize::MAX, false));
                        conn.recvs.push_back((id, None));
                    }
                    if conn.eof && conn.recvs.is_empty() {
                        conn.stopped = true;
                    }
                }
            }
            if rng.chance(2) && !conn.ops.is_empty() {
                let ids: Vec<OpId> = conn.ops.keys().copied().collect();
                let id = rng.pick(&ids);
                if port.cancel(id).is_ok() {
                    conn.ops.get_mut(&id).expect("in flight").1 = true;
                }
            }
        }
        // A connection whose sends are all done: close it so its peer sees the end.
        for conn in conns.iter_mut() {
            if conn.handle.is_some() && conn.done() {
                conn.handle = None;
            }
        }
        if conns.iter().all(SendConn::done) {
            break;
        }
        if started.elapsed() > Duration::from_secs(60) {
            fails.fail("the sends did not finish in 60 s".into());
            break;
        }
        batch.clear();
        if !dequeue(&port, &mut batch, rng.range(1, 16), fails) {
            for (c, conn) in conns.iter().enumerate() {
                fails.fail(format!(
                    "connection {c}: {:?}, {} of {} bytes sent, {} operations in flight ({:?}), \
                     {} receives queued, stopped {}, eof {}, open {}",
                    conn.mode,
                    conn.offset,
                    conn.total,
                    conn.ops.len(),
                    conn.ops.values().collect::<Vec<_>>(),
                    conn.recvs.len(),
                    conn.stopped,
                    conn.eof,
                    conn.handle.is_some()
                ));
            }
            break;
        }
        for mut done in batch.drain(..) {
            let c = done.context();
            let Some(conn) = conns.get_mut(c) else {
                fails.fail(format!("a completion with an unknown context: {done:?}"));
                continue;
            };
            let dropped = conn.handle.is_none();
            let Some((index, cancel_requested)) = conn.ops.remove(&done.id()) else {
                fails.fail(format!(
                    "a completion not in flight (unknown or twice): {done:?}"
                ));
                continue;
            };
            if index == usize::MAX {
                // An echo's pooled receive.
                let slot = conn
                    .recvs
                    .iter_mut()
                    .find(|r| r.0 == done.id())
                    .expect("queued");
                match done.result() {
                    Ok(0) => {
                        conn.eof = true;
                        slot.1 = Some(None);
                    }
                    Ok(n) => {
                        let buf = done.take_pooled();
                        if buf.as_ref().map(|b| b.len()) != Some(n) {
                            fails.fail(format!(
                                "connection {c}: pooled receive of {n} bytes without them"
                            ));
                        }
                        slot.1 = Some(buf);
                    }
                    Err(e) => {
                        if !proactor::is_cancelled(&e) || (!cancel_requested && !dropped) {
                            fails.fail(format!("connection {c}: pooled receive failed: {e}"));
                            conn.eof = true;
                        }
                        // A cancelled receive got no bytes: the echo goes on with the next.
                        slot.1 = Some(None);
                    }
                }
                continue;
            }
            let (start, len, _) = conn.sends[index];
            let kind = match conn.mode {
                SendMode::Plain => OpKind::Send,
                SendMode::Vectored => OpKind::SendVectored,
                SendMode::Echo => OpKind::SendPooled,
            };
            if done.kind() != kind {
                fails.fail(format!("a {kind} completed as {}: {done:?}", done.kind()));
            }
            let back: Option<Vec<u8>> = match conn.mode {
                SendMode::Plain => done.take_buffer(),
                SendMode::Vectored => done.take_buffers().map(|b| b.concat()),
                SendMode::Echo => done.take_pooled().map(|b| b.to_vec()),
            };
            match back {
                Some(b) if b.len() == len && mismatch(c as u64, start, &b).is_none() => {}
                b => fails.fail(format!(
                    "connection {c}: the {kind} of {len} bytes at {start} handed back {:?} bytes, or changed",
                    b.map(|b| b.len())
                )),
            }
            let reported = match done.result() {
                Ok(n) => {
                    if n != len {
                        fails.fail(format!(
                            "connection {c}: {kind} of {len} bytes completed Ok({n})"
                        ));
                    }
                    n
                }
                Err(e) => {
                    if !proactor::is_cancelled(&e) || (!cancel_requested && !dropped) {
                        fails.fail(format!("connection {c}: {kind} failed: {e} ({done:?})"));
                    }
                    conn.stopped = true;
                    done.bytes_transferred()
                }
            };
            if reported > len {
                fails.fail(format!(
                    "connection {c}: {kind} of {len} bytes reports {reported}"
                ));
            }
            conn.sends[index].2 = Some(reported.min(len));
        }
    }
    for (c, conn) in conns.iter_mut().enumerate() {
        let dropped_early = conn.dropped_early;
        conn.handle = None;
        conn.recvs.clear();
        if let Some(w) = conn.writer.take() {
            let _ = w.join();
        }
        let got = conn
            .reader
            .take()
            .and_then(|r| r.join().ok())
            .unwrap_or_default();
        let segments: Vec<(u64, usize)> =
            conn.sends.iter().map(|s| (s.0, s.2.unwrap_or(0))).collect();
        let reported: usize = segments.iter().map(|s| s.1).sum();
        // An echo connection closed early (unread bytes of the peer) may be reset: what the peer
        // got is then a prefix of what was reported sent.
        let result = if dropped_early && conn.mode == SendMode::Echo && got.len() < reported {
            check_stream(c as u64, &cut(&segments, got.len()), &got)
        } else {
            check_stream(c as u64, &segments, &got)
        };
        if let Err(e) = result {
            fails.fail(format!("{e} ({:?}, dropped {dropped_early})", conn.mode));
        }
    }
    port
}

#[test]
fn sends_and_pooled_echoes_arrive_whole_once_and_in_order() {
    each_seed(
        "sends_and_pooled_echoes_arrive_whole_once_and_in_order",
        run_sends,
    );
}

/// A datagram: flow, sequence, length, checksum, then bytes of the flow's pattern.
fn datagram(flow: u32, seq: u32, len: usize) -> Vec<u8> {
    let body = pattern(flow as u64, seq as u64 * 1000, len);
    let mut d = Vec::with_capacity(16 + len);
    d.extend_from_slice(&flow.to_le_bytes());
    d.extend_from_slice(&seq.to_le_bytes());
    d.extend_from_slice(&(len as u32).to_le_bytes());
    d.extend_from_slice(&fnv(&body).to_le_bytes());
    d.extend_from_slice(&body);
    d
}

fn parse(d: &[u8]) -> Result<(u32, u32), String> {
    if d.len() < 16 {
        return Err(format!("a datagram of {} bytes", d.len()));
    }
    let word = |i: usize| u32::from_le_bytes(d[i..i + 4].try_into().unwrap());
    let (flow, seq, len, sum) = (word(0), word(4), word(8), word(12));
    if d.len() != 16 + len as usize
        || fnv(&d[16..]) != sum
        || d[16..] != datagram(flow, seq, len as usize)[16..]
    {
        return Err(format!(
            "datagram of flow {flow} seq {seq} damaged ({} bytes)",
            d.len()
        ));
    }
    Ok((flow, seq))
}

fn run_datagrams(fails: &Fails, rng: &mut Rng) -> LocalPort {
    let port = port(rng);
    let ip = common::each_ip_v4();
    let rx = port
        .add_handle(UdpSocket::bind((ip, 0)).expect("bind"), 1)
        .expect("associate");
    let tx = port
        .add_handle(UdpSocket::bind((ip, 0)).expect("bind"), 2)
        .expect("associate");
    let to: SocketAddr = rx.local_addr().unwrap();
    let from = tx.local_addr().unwrap();
    let total = rng.range(100, 400);
    let mut sent = 0u32;
    let mut seen = vec![false; total];
    let mut sends = HashMap::new();
    let mut recvs = HashMap::new();
    let mut batch = Vec::new();
    let started = Instant::now();
    while (sent as usize) < total || !sends.is_empty() {
        while sends.len() < 4 && (sent as usize) < total {
            let d = datagram(7, sent, rng.pick(&[0, 1, 100, 1400, 9000]));
            sends.insert(port.send_to(&tx, d, to), false);
            sent += 1;
        }
        while recvs.len() < 3 {
            recvs.insert(port.recv_from(&rx, Vec::with_capacity(10_000)), false);
        }
        if rng.chance(5) {
            let ids: Vec<OpId> = recvs.keys().chain(sends.keys()).copied().collect();
            let id = rng.pick(&ids);
            if port.cancel(id).is_ok() {
                *recvs
                    .get_mut(&id)
                    .or_else(|| sends.get_mut(&id))
                    .expect("in flight") = true;
            }
        }
        if started.elapsed() > Duration::from_secs(30) {
            fails.fail("the datagrams did not finish in 30 s".into());
            break;
        }
        batch.clear();
        if !dequeue(&port, &mut batch, 8, fails) {
            break;
        }
        for done in batch.drain(..) {
            on_datagram(done, &mut sends, &mut recvs, &mut seen, from, fails);
        }
    }
    // The receives left: what is still on its way, then cancelled.
    let until = Instant::now() + Duration::from_millis(200);
    let mut cancelled_all = false;
    while !recvs.is_empty() {
        if !cancelled_all && Instant::now() >= until {
            for (&id, cancelled) in recvs.iter_mut() {
                let _ = port.cancel(id);
                *cancelled = true;
            }
            cancelled_all = true;
        }
        if until.elapsed() > Duration::from_secs(20) {
            fails.fail(format!(
                "{} cancelled receives never completed",
                recvs.len()
            ));
            break;
        }
        batch.clear();
        match port.get_completions(&mut batch, 8, Some(Duration::from_millis(50))) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => continue,
            Err(e) => {
                fails.fail(format!("get_completions failed: {e}"));
                break;
            }
        }
        for done in batch.drain(..) {
            on_datagram(done, &mut sends, &mut recvs, &mut seen, from, fails);
        }
    }
    drop((rx, tx));
    port
}

fn on_datagram(
    mut done: LocalCompletion,
    sends: &mut HashMap<OpId, bool>,
    recvs: &mut HashMap<OpId, bool>,
    seen: &mut [bool],
    from: SocketAddr,
    fails: &Fails,
) {
    if let Some(cancelled) = sends.remove(&done.id()) {
        match done.result() {
            Ok(_) => {}
            Err(e) if proactor::is_cancelled(&e) && cancelled => {}
            Err(e) => fails.fail(format!("send_to failed: {e}")),
        }
    } else if let Some(cancelled) = recvs.remove(&done.id()) {
        match done.result() {
            Ok(n) => {
                let d = done.take_buffer().unwrap_or_default();
                if d.len() != n {
                    fails.fail(format!(
                        "recv_from reports {n} bytes, hands back {}",
                        d.len()
                    ));
                }
                if done.peer_addr() != Some(from) {
                    fails.fail(format!(
                        "recv_from from {:?}, sent from {from}",
                        done.peer_addr()
                    ));
                }
                match parse(&d) {
                    Ok((_, seq)) if (seq as usize) < seen.len() => {
                        if std::mem::replace(&mut seen[seq as usize], true) {
                            fails.fail(format!("datagram {seq} received twice"));
                        }
                    }
                    Ok(x) => fails.fail(format!("a datagram never sent: {x:?}")),
                    Err(e) => fails.fail(e),
                }
            }
            Err(e) if proactor::is_cancelled(&e) && cancelled => {}
            Err(e) => fails.fail(format!("recv_from failed: {e}")),
        }
    } else {
        fails.fail(format!(
            "a completion not in flight (unknown or twice): {done:?}"
        ));
    }
}

#[test]
fn datagrams_arrive_whole_and_at_most_once() {
    each_seed("datagrams_arrive_whole_and_at_most_once", run_datagrams);
}

fn run_files(fails: &Fails, rng: &mut Rng) -> LocalPort {
    let port = port(rng);
    let (file, _path) = common::overlapped_file(
        &format!("local-integrity-{}", rng.next_u64()),
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true),
    );
    let file = port.add_handle(file, 3).expect("associate");
    // Chunks at random offsets, written in random order, some cancelled.
    let chunks = rng.range(4, 40);
    let mut spans = Vec::new();
    let mut at = 0u64;
    for _ in 0..chunks {
        let n = rng.pick(&[1, 512, 4096, 70_000, 1 << 20]);
        spans.push((at, n));
        at += n as u64 + rng.range(0, 3) as u64 * 4096;
    }
    let mut order: Vec<usize> = (0..chunks).collect();
    for i in (1..order.len()).rev() {
        order.swap(i, rng.range(0, i + 1));
    }
    let mut ops = HashMap::new();
    let mut written = vec![0usize; chunks];
    let mut batch = Vec::new();
    let mut queue: VecDeque<usize> = order.into();
    while !queue.is_empty() || !ops.is_empty() {
        while ops.len() < 4 {
            let Some(i) = queue.pop_front() else { break };
            let (off, n) = spans[i];
            ops.insert(port.write_at(&file, pattern(9, off, n), off), (i, false));
        }
        if rng.chance(10) && !ops.is_empty() {
            let ids: Vec<OpId> = ops.keys().copied().collect();
            let id = rng.pick(&ids);
            if port.cancel(id).is_ok() {
                ops.get_mut(&id).expect("in flight").1 = true;
            }
        }
        batch.clear();
        if !dequeue(&port, &mut batch, 8, fails) {
            break;
        }
        for mut done in batch.drain(..) {
            let Some((i, cancelled)) = ops.remove(&done.id()) else {
                fails.fail(format!("a completion not in flight: {done:?}"));
                continue;
            };
            let n = spans[i].1;
            if done.take_buffer().map(|b| b.len()) != Some(n) {
                fails.fail(format!(
                    "write_at of {n} bytes: its buffer not handed back whole"
                ));
            }
            match done.result() {
                Ok(k) if k == n => written[i] = k,
                Ok(k) => fails.fail(format!("write_at of {n} bytes wrote {k}")),
                Err(e) if proactor::is_cancelled(&e) && cancelled => {
                    written[i] = done.bytes_transferred();
                }
                Err(e) => fails.fail(format!("write_at failed: {e}")),
            }
        }
    }
    // Read back every written span, in random-size reads, and check each byte's offset.
    let mut reads = HashMap::new();
    for (i, &(off, _)) in spans.iter().enumerate() {
        let n = written[i];
        if n == 0 {
            continue;
        }
        let mut pos = 0;
        while pos < n {
            let k = rng.pick(&[1, 4096, 100_000, 1 << 20]).min(n - pos);
            reads.insert(
                port.read_at(&file, Vec::with_capacity(k), off + pos as u64),
                (off + pos as u64, k),
            );
            pos += k;
        }
    }
    while !reads.is_empty() {
        batch.clear();
        if !dequeue(&port, &mut batch, 16, fails) {
            break;
        }
        for mut done in batch.drain(..) {
            let Some((off, k)) = reads.remove(&done.id()) else {
                fails.fail(format!("a completion not in flight: {done:?}"));
                continue;
            };
            let data = done.take_buffer().unwrap_or_default();
            match done.result() {
                Ok(n) if n == k && data.len() == k => {
                    if let Some(at) = mismatch(9, off, &data) {
                        fails.fail(format!(
                            "the file's byte {} is not what was written there",
                            off + at as u64
                        ));
                    }
                }
                r => fails.fail(format!(
                    "read_at of {k} bytes at {off}: {r:?}, {} bytes back",
                    data.len()
                )),
            }
        }
    }
    drop(file);
    port
}

#[test]
fn file_writes_and_reads_at_offsets() {
    each_seed("file_writes_and_reads_at_offsets", run_files);
}

/// Pooled data queued while the pool is empty and the handle dropped then: the data goes back
/// to the pool (the next connections still receive), nothing of it reaches them.
fn run_drops_with_pooled_data_queued(fails: &Fails, rng: &mut Rng) -> LocalPort {
    let port = port(rng);
    for round in 0..rng.range(5, 15) as u64 {
        let (ours, mut theirs) = raw_pair(common::each_ip_v4());
        let h = port.add_handle(ours, round as usize).expect("associate");
        let n = rng.pick(&[1, 5000, 100_000]);
        let _ = theirs.write_all(&pattern(round, 0, n));
        let mut ids: Vec<OpId> = (0..rng.range(0, 4)).map(|_| port.recv_pooled(&h)).collect();
        let mut got = Vec::new();
        let mut held = Vec::new();
        let mut batch = Vec::new();
        for _ in 0..rng.range(0, 6) {
            batch.clear();
            let _ = port.get_completions(
                &mut batch,
                4,
                Some(Duration::from_millis(rng.range(0, 5) as u64)),
            );
            for mut done in batch.drain(..) {
                ids.retain(|&id| id != done.id());
                if let Some(b) = done.take_pooled() {
                    got.extend_from_slice(&b);
                    if rng.chance(50) {
                        held.push(b);
                    }
                }
            }
            if rng.chance(50) {
                ids.push(port.recv_pooled(&h));
            }
        }
        drop(h);
        while !ids.is_empty() {
            batch.clear();
            if !dequeue(&port, &mut batch, 4, fails) {
                break;
            }
            for mut done in batch.drain(..) {
                if !ids.contains(&done.id()) {
                    fails.fail(format!(
                        "round {round}: a completion not in flight: {done:?}"
                    ));
                }
                ids.retain(|&id| id != done.id());
                if let Some(b) = done.take_pooled() {
                    got.extend_from_slice(&b);
                }
            }
        }
        if let Some(at) = mismatch(round, 0, &got) {
            fails.fail(format!(
                "round {round}: byte {at} of the pooled data is not the connection's"
            ));
        }
        drop(held);
    }
    // Every buffer came back: a stream several times the pool's size still goes through.
    let (ours, mut theirs) = raw_pair(common::each_ip_v4());
    let h = port.add_handle(ours, 99).expect("associate");
    let _ = theirs.write_all(&pattern(99, 0, 20_000));
    let mut got = Vec::new();
    let mut batch = Vec::new();
    while got.len() < 20_000 {
        port.recv_pooled(&h);
        batch.clear();
        if !dequeue(&port, &mut batch, 1, fails) {
            break;
        }
        match batch.pop().map(|mut d| (d.result(), d.take_pooled())) {
            Some((Ok(_), Some(b))) => got.extend_from_slice(&b),
            other => {
                fails.fail(format!("after the drops, a pooled receive got {other:?}"));
                break;
            }
        }
    }
    if let Err(e) = check_stream(99, &[(0, 20_000)], &got) {
        fails.fail(format!("after the drops: {e}"));
    }
    drop(h);
    port
}

#[test]
fn handles_dropped_with_pooled_data_queued_give_it_back() {
    each_seed(
        "handles_dropped_with_pooled_data_queued_give_it_back",
        run_drops_with_pooled_data_queued,
    );
}
