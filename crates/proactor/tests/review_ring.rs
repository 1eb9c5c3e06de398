//! Adversarial review of the io_uring engine of `LocalPort` (`sys/linux/ring`): the FIFOs
//! linked through the slab (pooled receives, accepts, lane waiters) under deadlines, cancels
//! and closes in the middle, handle slots and descriptor numbers reused, starved handles
//! re-armed, and `get_completion` / `get_completions` mixed. Every byte is checked: each
//! connection's stream is tagged with its id and offset.
#![cfg(target_os = "linux")]

use std::{
    collections::{HashMap, VecDeque},
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd,
    time::{Duration, Instant},
};

use proactor::{
    LocalCompletion, LocalHandle, LocalPort, OpId, OpKind, PooledBuf, is_cancelled, is_deadline,
};

/// The port, or `None` (with a message) when it does not run on a ring of its own.
fn ring_port(buffers: u16, size: usize) -> Option<LocalPort> {
    let port = LocalPort::with_pool(buffers, size).unwrap();
    if port.setup() == "shared port" {
        eprintln!("skipped: the local port runs on a shared port, not a ring of its own");
        return None;
    }
    Some(port)
}

fn raw_pair() -> (TcpStream, TcpStream) {
    let (l, theirs) = connecting();
    (l.accept().unwrap().0, theirs)
}

/// A listener and a client connected to it, not accepted yet: the accept takes the lowest
/// free descriptor number (one closed just before).
fn connecting() -> (TcpListener, TcpStream) {
    let l = TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).unwrap();
    let theirs = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    (l, theirs)
}

/// Byte `at` of connection `conn`'s stream.
fn tag(conn: usize, at: usize) -> u8 {
    ((at * 31 + conn * 17 + at / 251) % 253) as u8
}

/// A small deterministic generator (xorshift).
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// One connection of the model.
struct Conn {
    handle: Option<LocalHandle<TcpStream>>,
    peer: TcpStream,
    /// Bytes the peer wrote, received so far.
    sent: usize,
    got: usize,
    /// The peer shut its side down (after `sent` bytes); the EOF arrived.
    shut: bool,
    eof: bool,
    /// Pooled receives submitted whose completion was not dequeued yet, oldest first, with
    /// whether a deadline was given and whether `cancel` said Ok.
    waiting: VecDeque<(OpId, bool, bool)>,
}

/// Dequeues completions in one of several ways: `get_completion`, or `get_completions` with a
/// small `max` into a batch that may already hold some.
fn dequeue(port: &LocalPort, rng: &mut Rng, wait: Duration) -> Vec<LocalCompletion> {
    match rng.below(3) {
        0 => port.get_completion(Some(wait)).into_iter().collect(),
        1 => {
            let mut out = Vec::new();
            let _ = port.get_completions(&mut out, 1 + rng.below(4) as usize, Some(wait));
            out
        }
        _ => {
            // A batch holding one already: what comes next must be appended after it.
            let mut out = Vec::with_capacity(2);
            if port.get_completion(Some(wait)).map(|c| out.push(c)).is_ok() {
                let _ = port.get_completions(&mut out, 1 + rng.below(3) as usize, Some(wait));
            }
            out
        }
    }
}

/// Data received and held: (connection, offset, buffer).
type Held = (usize, usize, PooledBuf);

/// Checks a held buffer again as it is given back (a buffer lent to the kernel while held
/// would show here).
fn release((ctx, from, buf): Held) {
    for (i, b) in buf.iter().enumerate() {
        assert_eq!(
            *b,
            tag(ctx, from + i),
            "conn {ctx} byte {} while held",
            from + i
        );
    }
}

/// Checks one pooled receive's completion against the model: data goes to the oldest
/// waiting receive of its connection, and is the next bytes of its stream. Returns the data.
fn check(conns: &mut HashMap<usize, Conn>, mut c: LocalCompletion) -> Option<Held> {
    assert_eq!(c.kind(), OpKind::RecvPooled, "{c:?}");
    let ctx = c.context();
    let conn = conns
        .get_mut(&ctx)
        .expect("a completion of a known connection");
    let at = conn
        .waiting
        .iter()
        .position(|w| w.0 == c.id())
        .unwrap_or_else(|| panic!("conn {ctx}: completion of no waiting receive: {c:?}"));
    let (_, deadline, cancel_ok) = conn.waiting[at];
    match c.result() {
        Ok(0) => {
            assert!(conn.shut, "conn {ctx}: EOF though the peer never closed");
            assert_eq!(conn.got, conn.sent, "conn {ctx}: EOF before all bytes");
            assert!(
                !cancel_ok,
                "conn {ctx}: EOF for a receive cancelled at once"
            );
            conn.eof = true;
        }
        Ok(n) => {
            assert!(!conn.eof, "conn {ctx}: data after EOF");
            assert_eq!(
                at,
                0,
                "conn {ctx}: data went to the receive {at} of {} waiting, not the oldest",
                conn.waiting.len()
            );
            assert!(
                !cancel_ok,
                "conn {ctx}: data for a receive cancelled at once"
            );
            let buf = c.take_pooled().expect("pooled data");
            assert_eq!(buf.len(), n);
            for (i, b) in buf.iter().enumerate() {
                assert_eq!(
                    *b,
                    tag(ctx, conn.got + i),
                    "conn {ctx} byte {}",
                    conn.got + i
                );
            }
            let from = conn.got;
            conn.got += n;
            assert!(conn.got <= conn.sent, "conn {ctx}: more bytes than sent");
            conn.waiting.remove(at);
            return Some((ctx, from, buf));
        }
        Err(e) if is_deadline(&e) => {
            assert!(deadline, "conn {ctx}: deadline error with no deadline: {e}");
            assert!(!cancel_ok, "conn {ctx}: deadline after an accepted cancel");
        }
        Err(e) if is_cancelled(&e) => {
            assert!(
                cancel_ok || conn.handle.is_none(),
                "conn {ctx}: cancelled though neither cancelled nor closed"
            );
        }
        Err(e) => panic!("conn {ctx}: {e}"),
    }
    conn.waiting.remove(at);
    None
}

/// Many connections of a tiny pool (starved, paused and re-armed multishot receives), each
/// with several pooled receives waiting: deadlines of 1 to 5 ms and cancels take receives out
/// of the middle, head and tail of the FIFOs; handles close with receives waiting and new
/// connections take their descriptor numbers and slots; completions are dequeued by
/// `get_completion` and by small `get_completions` batches. Data must go to the oldest
/// waiting receive of its connection, every byte in order.
fn pooled_fifo_chaos(seed: u64, steps: usize) {
    let Some(port) = ring_port(8, 256) else {
        return;
    };
    let mut rng = Rng(seed);
    let mut conns: HashMap<usize, Conn> = HashMap::new();
    let mut open: Vec<usize> = Vec::new();
    let mut next_ctx = 1;
    let mut fds_reused = 0;
    let mut held = VecDeque::new();
    let mut new_conn = |conns: &mut HashMap<usize, Conn>,
                        open: &mut Vec<usize>,
                        (l, peer): (TcpListener, TcpStream)| {
        let ours = l.accept().unwrap().0;
        let ctx = next_ctx;
        next_ctx += 1;
        let h = port.add_handle(ours, ctx).unwrap();
        conns.insert(
            ctx,
            Conn {
                handle: Some(h),
                peer,
                sent: 0,
                got: 0,
                shut: false,
                eof: false,
                waiting: VecDeque::new(),
            },
        );
        open.push(ctx);
    };
    for _ in 0..6 {
        new_conn(&mut conns, &mut open, connecting());
    }
    for _ in 0..steps {
        let ctx = open[rng.below(open.len() as u64) as usize];
        match rng.below(10) {
            0..=3 => {
                let conn = conns.get_mut(&ctx).unwrap();
                let h = conn.handle.as_ref().unwrap();
                let deadline = rng.below(3) == 0;
                let id = if deadline {
                    let ms = 1 + rng.below(5);
                    port.with_timeout(Duration::from_millis(ms)).recv_pooled(h)
                } else {
                    port.recv_pooled(h)
                };
                conn.waiting.push_back((id, deadline, false));
            }
            4..=5 => {
                let conn = conns.get_mut(&ctx).unwrap();
                // Little outstanding per connection: the writes never block.
                if !conn.shut && rng.below(40) == 0 {
                    conn.peer.shutdown(std::net::Shutdown::Write).unwrap();
                    conn.shut = true;
                } else if !conn.shut && conn.sent - conn.got < 8192 {
                    let n = 1 + rng.below(700) as usize;
                    let data: Vec<u8> = (conn.sent..conn.sent + n).map(|i| tag(ctx, i)).collect();
                    conn.peer.write_all(&data).unwrap();
                    conn.sent += n;
                }
            }
            6 => {
                let conn = conns.get_mut(&ctx).unwrap();
                let live: Vec<usize> = (0..conn.waiting.len())
                    .filter(|&i| !conn.waiting[i].2)
                    .collect();
                if !live.is_empty() {
                    let i = live[rng.below(live.len() as u64) as usize];
                    if port.cancel(conn.waiting[i].0).is_ok() {
                        conn.waiting[i].2 = true;
                    }
                }
            }
            7 if rng.below(4) == 0 => {
                // Close with receives waiting; the next connection likely takes the number.
                let next = connecting();
                let conn = conns.get_mut(&ctx).unwrap();
                let fd = conn.handle.as_ref().unwrap().as_raw_fd();
                conn.handle = None;
                open.retain(|&c| c != ctx);
                new_conn(&mut conns, &mut open, next);
                let newest = &conns[open.last().unwrap()];
                if newest.handle.as_ref().unwrap().as_raw_fd() == fd {
                    fds_reused += 1;
                }
            }
            _ => {
                let wait = Duration::from_millis(rng.below(3));
                for c in dequeue(&port, &mut rng, wait) {
                    held.extend(check(&mut conns, c));
                }
                // Up to 6 of the pool's 8 buffers held a while (the rest starve).
                let keep = rng.below(7) as usize;
                while held.len() > keep {
                    release(held.pop_front().unwrap());
                }
            }
        }
    }
    // Every open connection receives all it was sent; closed ones end their receives.
    let until = Instant::now() + Duration::from_secs(5);
    loop {
        let mut busy = false;
        for &ctx in &open {
            let conn = conns.get_mut(&ctx).unwrap();
            let more = conn.got < conn.sent || (conn.shut && !conn.eof);
            if more && conn.waiting.iter().all(|w| w.1 || w.2) {
                let id = port.recv_pooled(conn.handle.as_ref().unwrap());
                conn.waiting.push_back((id, false, false));
            }
            busy |= more;
        }
        busy |= conns
            .values()
            .any(|c| c.handle.is_none() && !c.waiting.is_empty());
        if !busy {
            break;
        }
        assert!(
            Instant::now() < until,
            "stalled: {:?}",
            conns
                .iter()
                .map(|(k, c)| (*k, c.sent, c.got, c.waiting.len(), c.handle.is_some()))
                .collect::<Vec<_>>()
        );
        for c in dequeue(&port, &mut rng, Duration::from_millis(50)) {
            held.extend(check(&mut conns, c));
            held.drain(..).for_each(release);
        }
    }
    // Then the rest ends cancelled at close, and nothing is left in flight.
    for &ctx in &open {
        conns.get_mut(&ctx).unwrap().handle = None;
    }
    while conns.values().any(|c| !c.waiting.is_empty()) {
        let c = port
            .get_completion(Some(Duration::from_secs(5)))
            .expect("the receives of closed handles complete");
        if let Some(h) = check(&mut conns, c) {
            release(h);
        }
    }
    assert_eq!(port.operations_in_flight(), 0);
    let ends = conns.values().filter(|c| c.eof).count();
    eprintln!(
        "seed {seed}: {ends} EOFs, {} connections, {fds_reused} descriptor numbers reused, {} starvations, {} pauses",
        conns.len(),
        port.pool_starvations(),
        port.receive_pauses()
    );
}

#[test]
fn pooled_waiters_fifo_under_deadlines_cancels_and_closes() {
    for seed in [0x9e37_79b9_7f4a_7c15, 0x1234_5678_9abc_def1, 42] {
        pooled_fifo_chaos(seed, 3000);
    }
}

/// Three pooled receives waiting on one connection, the middle one (then the last one) with a
/// deadline of 2 ms: once it fired, data goes to the first, then to the third (or a fourth
/// queued after the removed tail), never to the one that timed out.
#[test]
fn deadline_of_the_middle_and_the_tail_waiter() {
    let Some(port) = ring_port(16, 4096) else {
        return;
    };
    let (ours, mut peer) = raw_pair();
    let h = port.add_handle(ours, 7).unwrap();
    let first = port.recv_pooled(&h);
    let middle = port.with_timeout(Duration::from_millis(2)).recv_pooled(&h);
    let third = port.recv_pooled(&h);
    let c = port.get_completion(Some(Duration::from_secs(5))).unwrap();
    assert_eq!(c.id(), middle);
    assert!(is_deadline(&c.result().unwrap_err()));
    // Now the tail: a fourth with a deadline, after it a fifth.
    let tail = port.with_timeout(Duration::from_millis(2)).recv_pooled(&h);
    let c = port.get_completion(Some(Duration::from_secs(5))).unwrap();
    assert_eq!(c.id(), tail);
    assert!(is_deadline(&c.result().unwrap_err()));
    let fifth = port.recv_pooled(&h);
    for (want, msg) in [(first, b"one"), (third, b"two"), (fifth, b"thr")] {
        peer.write_all(msg).unwrap();
        let mut c = port.get_completion(Some(Duration::from_secs(5))).unwrap();
        assert_eq!(c.id(), want, "data to the oldest waiting receive");
        assert_eq!(&c.take_pooled().unwrap()[..], msg);
    }
    assert_eq!(port.operations_in_flight(), 0);
}

/// A connection closed with pooled receives waiting (one with a deadline whose timeout is
/// still in the kernel) and a new one that takes its descriptor number at once: the new
/// connection's receives get its own bytes, in order, and the old ones end cancelled with the
/// old context.
#[test]
fn closed_waiters_do_not_leak_into_the_next_connection() {
    let Some(port) = ring_port(16, 4096) else {
        return;
    };
    let mut reused = 0;
    for round in 0..50 {
        let (ours, _peer) = raw_pair();
        let fd = ours.as_raw_fd();
        let a = port.add_handle(ours, 2 * round).unwrap();
        let old = [
            port.recv_pooled(&a),
            port.with_timeout(Duration::from_millis(1 + round as u64 % 5))
                .recv_pooled(&a),
            port.recv_pooled(&a),
        ];
        let (l, mut peer) = connecting();
        drop(a);
        let ours = l.accept().unwrap().0;
        // Usually (other tests of the binary open descriptors too).
        reused += usize::from(ours.as_raw_fd() == fd);
        let b = port.add_handle(ours, 2 * round + 1).unwrap();
        let new = [port.recv_pooled(&b), port.recv_pooled(&b)];
        peer.write_all(b"first").unwrap();
        let mut seen_old = 0;
        let mut got_new = Vec::new();
        while seen_old < 3 || got_new.len() < 2 {
            let mut c = port
                .get_completion(Some(Duration::from_secs(5)))
                .unwrap_or_else(|e| panic!("round {round}: {e}"));
            if c.context() == 2 * round {
                assert!(old.contains(&c.id()));
                assert!(c.is_cancelled(), "{c:?}");
                seen_old += 1;
            } else {
                assert_eq!(c.context(), 2 * round + 1);
                assert_eq!(c.id(), new[got_new.len()]);
                got_new.push(c.take_pooled().unwrap().to_vec());
                if got_new.len() == 1 {
                    peer.write_all(b"second").unwrap();
                }
            }
        }
        assert_eq!(got_new, [b"first".to_vec(), b"second".to_vec()]);
    }
    eprintln!("{reused} of 50 descriptor numbers reused");
}

/// Sends queued behind a send that cannot finish (the peer does not read), some in the
/// middle with deadlines of 1 to 5 ms that fire while they wait for the lane: once the peer
/// reads, the stream is exactly the bytes each send reports, in submission order.
#[test]
fn lane_waiters_timing_out_in_the_middle_keep_the_stream_exact() {
    lane_waiters_timing_out(None);
    // The send in the kernel times out too, part sent (its bytes say how much).
    lane_waiters_timing_out(Some(Duration::from_millis(15)));
}

fn lane_waiters_timing_out(first_deadline: Option<Duration>) {
    let Some(port) = ring_port(16, 4096) else {
        return;
    };
    let (ours, mut peer) = raw_pair();
    ours.set_nonblocking(true).unwrap();
    let h = port.add_handle(ours, 1).unwrap();
    let mut offset = 0;
    let mut sends = Vec::new();
    let mut rng = Rng(7);
    // The first fills the socket buffers: the ones behind it wait for the lane.
    for i in 0..24 {
        let len = if i == 0 { 8 << 20 } else { 1000 + i * 37 };
        let data: Vec<u8> = (offset..offset + len).map(|j| tag(1, j)).collect();
        let id = if let Some(after) = first_deadline.filter(|_| i == 0) {
            port.with_timeout(after).send(&h, data)
        } else if i > 0 && rng.below(3) == 0 {
            let ms = 1 + rng.below(5);
            port.with_timeout(Duration::from_millis(ms)).send(&h, data)
        } else {
            port.send(&h, data)
        };
        sends.push((id, offset, len));
        offset += len;
    }
    // Let the deadlines fire while the lane is busy.
    let mut done = HashMap::new();
    let until = Instant::now() + Duration::from_millis(40);
    while Instant::now() < until {
        if let Ok(c) = port.get_completion(Some(Duration::from_millis(5))) {
            done.insert(c.id(), c);
        }
    }
    let timed_out = done.len();
    let reader = std::thread::spawn(move || {
        let mut all = Vec::new();
        peer.read_to_end(&mut all).unwrap();
        all
    });
    while done.len() < sends.len() {
        let c = port.get_completion(Some(Duration::from_secs(10))).unwrap();
        done.insert(c.id(), c);
    }
    drop(h);
    let all = reader.join().unwrap();
    let mut want = Vec::new();
    for (id, from, len) in &sends {
        let c = &done[id];
        let n = c.bytes_transferred();
        match c.result() {
            Ok(m) => assert_eq!((m, n), (*len, *len)),
            Err(e) => assert!(is_deadline(&e), "{e}"),
        }
        if *from == 0 && first_deadline.is_some() {
            assert!(
                0 < n && n < *len,
                "the first send partly sent: {n} of {len}"
            );
        }
        want.extend((*from..from + n).map(|j| tag(1, j)));
    }
    assert!(
        timed_out > 0,
        "no deadline fired while waiting for the lane"
    );
    assert_eq!(all.len(), want.len());
    assert!(
        all == want,
        "the stream differs from the sends' bytes in order"
    );
}

/// Accepts waiting on a listener, the middle one with a deadline that fires first: the
/// connections go to the others in order, then to accepts queued behind; the connections the
/// multishot accept brings with nobody waiting are queued, and taken in order.
#[test]
fn accept_waiters_with_a_deadline_in_the_middle() {
    let Some(port) = ring_port(16, 4096) else {
        return;
    };
    let l = TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).unwrap();
    let addr = l.local_addr().unwrap();
    let l = port.add_handle(l, 9).unwrap();
    let a = port.accept(&l);
    let b = port.with_timeout(Duration::from_millis(3)).accept(&l);
    let c = port.accept(&l);
    let timed = port.get_completion(Some(Duration::from_secs(5))).unwrap();
    assert_eq!(timed.id(), b);
    assert!(is_deadline(&timed.result().unwrap_err()));
    let mut clients = Vec::new();
    for want in [a, c] {
        let client = TcpStream::connect(addr).unwrap();
        let mut done = port.get_completion(Some(Duration::from_secs(5))).unwrap();
        assert_eq!(done.id(), want);
        let acc = done.take_accepted().unwrap();
        assert_eq!(acc.peer_addr, client.local_addr().unwrap());
        clients.push(client);
    }
    // Three more with nobody waiting: queued, then taken in order.
    let more: Vec<TcpStream> = (0..3).map(|_| TcpStream::connect(addr).unwrap()).collect();
    let d = port.with_timeout(Duration::from_millis(200)).accept(&l);
    let mut first = port.get_completion(Some(Duration::from_secs(5))).unwrap();
    assert_eq!(first.id(), d);
    assert_eq!(
        first.take_accepted().unwrap().peer_addr,
        more[0].local_addr().unwrap()
    );
    std::thread::sleep(Duration::from_millis(20));
    for client in &more[1..] {
        port.accept(&l);
        let mut done = port.get_completion(Some(Duration::from_secs(5))).unwrap();
        assert_eq!(
            done.take_accepted().unwrap().peer_addr,
            client.local_addr().unwrap()
        );
    }
    // Waiting accepts end cancelled when the listener closes.
    let w = [
        port.accept(&l),
        port.with_timeout(Duration::from_millis(1)).accept(&l),
    ];
    drop(l);
    let mut ends = Vec::new();
    while ends.len() < 2 {
        let c = port.get_completion(Some(Duration::from_secs(5))).unwrap();
        assert!(w.contains(&c.id()));
        let e = c.result().unwrap_err();
        assert!(is_cancelled(&e) || is_deadline(&e), "{e}");
        ends.push(c.id());
    }
    assert_eq!(port.operations_in_flight(), 0);
}

/// The end of the stream reaches every pooled receive waiting (three, the middle one's
/// deadline fired first), and every later one; a reset reaches the oldest waiting receive and
/// ends the others too (no receive is left waiting on a dead connection).
#[test]
fn end_and_reset_reach_every_waiter() {
    let Some(port) = ring_port(16, 4096) else {
        return;
    };
    let (ours, mut peer) = raw_pair();
    let h = port.add_handle(ours, 1).unwrap();
    let first = port.recv_pooled(&h);
    let middle = port.with_timeout(Duration::from_millis(2)).recv_pooled(&h);
    let rest = [port.recv_pooled(&h), port.recv_pooled(&h)];
    let c = port.get_completion(Some(Duration::from_secs(5))).unwrap();
    assert_eq!(c.id(), middle);
    assert!(is_deadline(&c.result().unwrap_err()));
    peer.write_all(b"last words").unwrap();
    let mut c = port.get_completion(Some(Duration::from_secs(5))).unwrap();
    assert_eq!(c.id(), first);
    assert_eq!(&c.take_pooled().unwrap()[..], b"last words");
    drop(peer);
    for want in rest {
        let c = port.get_completion(Some(Duration::from_secs(5))).unwrap();
        assert_eq!((c.id(), c.result().unwrap()), (want, 0));
    }
    let again = port.recv_pooled(&h);
    let c = port.get_completion(Some(Duration::from_secs(5))).unwrap();
    assert_eq!((c.id(), c.result().unwrap()), (again, 0));

    let (ours, peer) = raw_pair();
    let h = port.add_handle(ours, 2).unwrap();
    let waiting = [
        port.recv_pooled(&h),
        port.with_timeout(Duration::from_millis(200))
            .recv_pooled(&h),
        port.recv_pooled(&h),
    ];
    std::thread::sleep(Duration::from_millis(5));
    proactor::socket2::SockRef::from(&peer)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(peer);
    let c = port.get_completion(Some(Duration::from_secs(5))).unwrap();
    assert_eq!(c.id(), waiting[0]);
    assert_eq!(
        c.result().unwrap_err().kind(),
        std::io::ErrorKind::ConnectionReset
    );
    for want in &waiting[1..] {
        let c = port.get_completion(Some(Duration::from_secs(5))).unwrap();
        assert_eq!(c.id(), *want);
        match c.result() {
            Ok(0) => {}
            Err(e) => assert!(
                !is_deadline(&e),
                "a deadline instead of the reset's end: {e}"
            ),
            other => panic!("{other:?}"),
        }
    }
    drop(h);
    assert_eq!(port.operations_in_flight(), 0);
}

/// A client that connects and resets before the multishot accept's connection is handed out
/// is dropped: the oldest waiting accept keeps its place and takes the next connection.
#[test]
fn an_accept_whose_client_is_gone_keeps_its_place() {
    let Some(port) = ring_port(16, 4096) else {
        return;
    };
    let l = TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).unwrap();
    let addr = l.local_addr().unwrap();
    let l = port.add_handle(l, 5).unwrap();
    let first = port.accept(&l);
    let second = port.accept(&l);
    // No enter until both clients are there: the gone one comes first in the CQ.
    let gone = TcpStream::connect(addr).unwrap();
    proactor::socket2::SockRef::from(&gone)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(gone);
    std::thread::sleep(Duration::from_millis(20));
    let client = TcpStream::connect(addr).unwrap();
    std::thread::sleep(Duration::from_millis(20));
    let mut c = port.get_completion(Some(Duration::from_secs(5))).unwrap();
    assert_eq!(c.id(), first, "the oldest accept takes the live client");
    assert_eq!(
        c.take_accepted().unwrap().peer_addr,
        client.local_addr().unwrap()
    );
    let late = TcpStream::connect(addr).unwrap();
    let mut c = port.get_completion(Some(Duration::from_secs(5))).unwrap();
    assert_eq!(c.id(), second);
    assert_eq!(
        c.take_accepted().unwrap().peer_addr,
        late.local_addr().unwrap()
    );
}

/// A stream closed with a send stuck in the kernel and sends waiting for the lane (some with
/// deadlines): each ends (cancelled or timed out, the waiting ones having sent nothing), and
/// the next connection, on the same descriptor number, sends its own stream exactly.
#[test]
fn closed_with_sends_waiting_for_the_lane() {
    let Some(port) = ring_port(16, 4096) else {
        return;
    };
    for round in 0..3 {
        let (l, _peer) = connecting();
        let ours = l.accept().unwrap().0;
        let a = port.add_handle(ours, 100 + round).unwrap();
        let big = port.send(&a, vec![1; 8 << 20]);
        let mut waiting = Vec::new();
        for i in 0..6u64 {
            let id = if i % 2 == 1 {
                port.with_timeout(Duration::from_millis(i))
                    .send(&a, vec![2; 100])
            } else {
                port.send(&a, vec![3; 100])
            };
            waiting.push(id);
        }
        std::thread::sleep(Duration::from_millis(3));
        let (l, mut peer) = connecting();
        drop(a);
        let ours = l.accept().unwrap().0;
        let b = port.add_handle(ours, 200 + round).unwrap();
        let mut offset = 0;
        let mut sends = 0;
        for part in 0..5 {
            let len = 500 + part * 111;
            port.send(&b, (offset..offset + len).map(|j| tag(7, j)).collect());
            offset += len;
            sends += 1;
        }
        let mut ended = 0;
        while ended < 7 || sends > 0 {
            let c = port.get_completion(Some(Duration::from_secs(5))).unwrap();
            if c.context() == 200 + round {
                assert_eq!(c.result().unwrap(), c.bytes_transferred());
                sends -= 1;
                continue;
            }
            assert_eq!(c.context(), 100 + round);
            let e = c.result().unwrap_err();
            assert!(is_cancelled(&e) || is_deadline(&e), "{e}");
            if c.id() != big {
                assert!(waiting.contains(&c.id()));
                assert_eq!(c.bytes_transferred(), 0, "a send that waited sent nothing");
            }
            ended += 1;
        }
        drop(b);
        let mut all = Vec::new();
        peer.read_to_end(&mut all).unwrap();
        assert!(all.iter().copied().eq((0..offset).map(|j| tag(7, j))));
        assert_eq!(port.operations_in_flight(), 0);
    }
}

/// `cancel_all` with pooled receives waiting (its multishot receive cancelled with them) and
/// data arriving around it: the receives after it get every byte, in order.
#[test]
fn cancel_all_then_pooled_receives_lose_nothing() {
    let Some(port) = ring_port(16, 4096) else {
        return;
    };
    let (ours, mut peer) = raw_pair();
    let h = port.add_handle(ours, 4).unwrap();
    let mut sent = 0;
    let mut got = 0;
    let mut rng = Rng(99);
    for _ in 0..40 {
        let cancelled: Vec<OpId> = (0..1 + rng.below(3))
            .map(|i| {
                if i == 1 {
                    port.with_timeout(Duration::from_millis(2)).recv_pooled(&h)
                } else {
                    port.recv_pooled(&h)
                }
            })
            .collect();
        // Give the multishot time to be in the kernel, sometimes with data on the way.
        let _ = port.get_completions(&mut Vec::new(), 1, Some(Duration::ZERO));
        let mut early = Vec::new();
        if rng.below(2) == 0 {
            let n = 1 + rng.below(3000) as usize;
            peer.write_all(&(sent..sent + n).map(|j| tag(4, j)).collect::<Vec<_>>())
                .unwrap();
            sent += n;
        }
        port.cancel_all(&h).unwrap();
        let n = 1 + rng.below(3000) as usize;
        peer.write_all(&(sent..sent + n).map(|j| tag(4, j)).collect::<Vec<_>>())
            .unwrap();
        sent += n;
        let mut pending = cancelled.clone();
        while got < sent || !pending.is_empty() {
            if pending.iter().all(|id| cancelled.contains(id)) && got < sent {
                pending.push(port.recv_pooled(&h));
            }
            let mut c = port.get_completion(Some(Duration::from_secs(5))).unwrap();
            let at = pending.iter().position(|&id| id == c.id()).unwrap();
            pending.remove(at);
            match c.result() {
                Ok(n) if n > 0 => {
                    let buf = c.take_pooled().unwrap();
                    assert!(
                        buf.iter().copied().eq((got..got + n).map(|j| tag(4, j))),
                        "bytes {got}..{} out of order",
                        got + n
                    );
                    got += n;
                    early.push(c.id());
                }
                Ok(_) => panic!("EOF"),
                Err(e) => {
                    assert!(cancelled.contains(&c.id()), "{e}");
                    assert!(is_cancelled(&e) || is_deadline(&e), "{e}");
                }
            }
        }
        // Data only for receives made after the cancel_all.
        assert!(early.iter().all(|id| !cancelled.contains(id)));
    }
    assert_eq!(port.operations_in_flight(), 0);
}

/// A handle starved (the user holds the whole pool) whose waiting receive times out, closed
/// while still listed as starved; the next connection takes its slot and starves too: once
/// the buffers come back it is re-armed once and gets its bytes in order.
#[test]
fn starved_handle_closed_and_its_slot_reused() {
    let Some(port) = ring_port(2, 64) else {
        return;
    };
    for round in 0..5 {
        let (ours, mut peer) = raw_pair();
        let a = port.add_handle(ours, 10 + round).unwrap();
        let mut held = Vec::new();
        let mut got = 0;
        peer.write_all(&[9; 1000]).unwrap();
        while held.len() < 2 {
            port.recv_pooled(&a);
            let mut c = port.get_completion(Some(Duration::from_secs(5))).unwrap();
            got += c.result().unwrap();
            held.push(c.take_pooled().unwrap());
        }
        // No buffer left: the multishot receive ends on ENOBUFS, the receive times out.
        let w = port.with_timeout(Duration::from_millis(3)).recv_pooled(&a);
        let c = port.get_completion(Some(Duration::from_secs(5))).unwrap();
        assert_eq!(c.id(), w);
        assert!(is_deadline(&c.result().unwrap_err()), "got {got}");
        let (l, mut peer) = connecting();
        drop(a);
        let ours = l.accept().unwrap().0;
        let b = port.add_handle(ours, 20 + round).unwrap();
        let data: Vec<u8> = (0..3000).map(|j| tag(20 + round, j)).collect();
        peer.write_all(&data).unwrap();
        let first = port.recv_pooled(&b);
        assert!(
            port.get_completion(Some(Duration::from_millis(20)))
                .is_err()
        );
        held.clear();
        let mut at = 0;
        let mut want = first;
        while at < data.len() {
            let mut c = port.get_completion(Some(Duration::from_secs(5))).unwrap();
            assert_eq!((c.context(), c.id()), (20 + round, want));
            let buf = c.take_pooled().unwrap();
            assert_eq!(&buf[..], &data[at..at + buf.len()]);
            at += buf.len();
            if at < data.len() {
                want = port.recv_pooled(&b);
            }
        }
    }
    assert!(port.pool_starvations() >= 5);
}
