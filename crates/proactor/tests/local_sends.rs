//! Sends a [`LocalPort`] is asked for together: several on one connection between two
//! dequeues. On io_uring they go to the kernel gathered (one `SENDMSG` for what a connection's
//! send lane holds at an enter, `src/sys/linux/ring/gather.rs`); elsewhere one by one. Either
//! way each send completes once, with its own bytes and buffer, and the peer gets exactly the
//! bytes the completions report, in the order asked, through partial transfers (a reader that
//! pauses), cancels of the first, a middle and the last send while the first is stuck in the
//! kernel, a reset peer, and (with the `failpoints` feature, on the ring) a `SENDMSG` cut short
//! inside a send or at a boundary between two; and (Linux) a handle dropped with a gathered send
//! in the kernel while the next connection takes its descriptor number; and the enter that
//! gathers them meeting a full submission queue.
#![cfg(any(windows, target_os = "linux"))]

mod common;

use std::{
    collections::HashMap,
    io,
    sync::{Mutex, MutexGuard},
    thread,
    time::Duration,
};

use common::{
    each_ip_v4,
    local::{pair, within},
    oracle::{Rng, check_stream, mismatch, paced_reader, pattern, seeds},
    reset_on_drop,
};
use proactor::{LocalCompletion, LocalPort, OpId, OpKind};

/// One test at a time: `live_operations()`, descriptor numbers and failpoints are process-wide.
fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

const WAIT: Duration = Duration::from_secs(30);

/// One send asked for: where its bytes start in the stream, how many, and what its completion
/// reported.
struct Asked {
    id: OpId,
    start: u64,
    len: usize,
    reported: Option<usize>,
}

impl Asked {
    fn new(id: OpId, start: usize, len: usize) -> Asked {
        Asked {
            id,
            start: start as u64,
            len,
            reported: None,
        }
    }
}

/// What the peer must have got: each send's reported bytes, in the order asked.
fn segments(asked: &[Asked]) -> Vec<(u64, usize)> {
    asked
        .iter()
        .map(|a| (a.start, a.reported.unwrap_or(0)))
        .collect()
}

/// The completion of `id` among the next ones, keeping the others in `early`.
fn take(port: &LocalPort, id: OpId, early: &mut Vec<LocalCompletion>) -> LocalCompletion {
    take_within(port, id, early, WAIT)
}

/// [`take`], each completion awaited at most `wait`.
fn take_within(
    port: &LocalPort,
    id: OpId,
    early: &mut Vec<LocalCompletion>,
    wait: Duration,
) -> LocalCompletion {
    if let Some(at) = early.iter().position(|c| c.id() == id) {
        return early.remove(at);
    }
    loop {
        let c = port
            .get_completion(Some(wait))
            .unwrap_or_else(|e| panic!("no completion of {id:?} in {wait:?}: {e}"));
        if c.id() == id {
            return c;
        }
        early.push(c);
    }
}

/// The bytes a send's completion hands back, whatever kind of send it was.
fn handed_back(c: &mut LocalCompletion) -> Option<Vec<u8>> {
    match c.kind() {
        OpKind::SendVectored => c.take_buffers().map(|b| b.concat()),
        _ => c.take_buffer(),
    }
}

/// Many turns of up to 24 sends each (plain, vectored, some with a deadline, which the ring
/// does not gather), 1 B to 1 MiB, to a reader that pauses: every send completes once, whole,
/// handing its bytes back unchanged; the peer gets the stream in order. On the ring the
/// completions come in the order asked, and sends were gathered.
#[test]
fn sends_asked_for_together_arrive_whole_once_and_in_order() {
    let _s = serial();
    for seed in seeds(3) {
        let mut rng = Rng::new(seed);
        let port = LocalPort::new().unwrap();
        let ring = port.backend() == "io_uring";
        let total = if cfg!(windows) { 3 << 20 } else { 16 << 20 };
        let (h, peer) = pair(&port, each_ip_v4(), 1);
        let read = paced_reader(peer, rng.fork());
        let mut asked: Vec<Asked> = Vec::new();
        let mut pending: HashMap<OpId, usize> = HashMap::new();
        let mut order = Vec::new();
        let mut offset = 0;
        let mut batch = Vec::new();
        while offset < total || !pending.is_empty() {
            if offset < total && pending.len() < 64 {
                for _ in 0..rng.range(1, 25) {
                    let sizes = [1, 7, 100, 1500, 4095, 65_537, 300_000, 1 << 20];
                    let n = rng.pick(&sizes).min(total - offset);
                    if n == 0 {
                        break;
                    }
                    let data = pattern(1, offset as u64, n);
                    let id = match rng.range(0, 10) {
                        0 => port.with_timeout(Duration::from_secs(60)).send(&h, data),
                        1 => {
                            let k = rng.range(0, n + 1);
                            port.send_vectored(&h, vec![data[..k].to_vec(), data[k..].to_vec()])
                        }
                        _ => port.send(&h, data),
                    };
                    pending.insert(id, asked.len());
                    asked.push(Asked::new(id, offset, n));
                    offset += n;
                }
            }
            batch.clear();
            port.get_completions(&mut batch, rng.range(1, 16), Some(WAIT))
                .unwrap_or_else(|e| panic!("seed {seed}: no completion in {WAIT:?}: {e}"));
            for c in &mut batch {
                let at = pending
                    .remove(&c.id())
                    .unwrap_or_else(|| panic!("seed {seed}: unknown or twice: {c:?}"));
                order.push(at);
                let a = &mut asked[at];
                let n = c
                    .result()
                    .unwrap_or_else(|e| panic!("seed {seed}: a send failed: {e} ({c:?})"));
                assert_eq!(n, a.len, "seed {seed}: {c:?}");
                let back = handed_back(c).expect("the send's bytes back");
                assert_eq!(back.len(), a.len, "seed {seed}");
                assert_eq!(mismatch(1, a.start, &back), None, "seed {seed}: changed");
                a.reported = Some(n);
            }
        }
        drop(h);
        let got = read.join().unwrap();
        check_stream(1, &segments(&asked), &got).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        if ring {
            let asked_order: Vec<usize> = (0..asked.len()).collect();
            assert_eq!(order, asked_order, "seed {seed}: completions out of order");
            assert!(port.gathered_sends() > 0, "seed {seed}: nothing gathered");
        }
        assert_eq!(port.operations_in_flight(), 0);
    }
}

/// A big send the peer does not read yet, three small ones behind it, asked for together; then
/// one of the four is cancelled (the first, partway through; a middle one; the last) and the
/// peer reads. The cancelled one ends alone, reporting what it sent; the others complete
/// whole; the peer gets exactly the bytes reported, in order. On the ring the first is stuck in
/// a gathered `SENDMSG` with the others, so the cancel lands inside it: the cancelled send must
/// end cancelled (the first with part of its bytes, the others with none).
#[test]
fn a_cancel_among_sends_asked_for_together_ends_that_send_alone() {
    let _s = serial();
    let big = if cfg!(windows) { 4 << 20 } else { 16 << 20 };
    for victim in [1, 0, 3] {
        let port = LocalPort::new().unwrap();
        let ring = port.backend() == "io_uring";
        let (h, peer) = pair(&port, each_ip_v4(), 1);
        let mut asked = Vec::new();
        let mut offset = 0;
        for n in [big, 100, 5000, 1] {
            let id = port.send(&h, pattern(1, offset as u64, n));
            asked.push(Asked::new(id, offset, n));
            offset += n;
        }
        // The port submits them: the big one fills the socket's buffers and sticks.
        let mut early: Vec<LocalCompletion> = within(&port, 200).into_iter().collect();
        let cancelled = port.cancel(asked[victim].id).is_ok();
        if ring {
            assert!(cancelled, "victim {victim}: in flight, so cancellable");
            assert!(
                port.gathered_sends() > 0,
                "victim {victim}: nothing gathered"
            );
        }
        if cancelled && cfg!(target_os = "linux") {
            // A cancel takes effect at once, not when the peer reads.
            let id = asked[victim].id;
            let c = take_within(&port, id, &mut early, Duration::from_secs(5));
            early.push(c);
        }
        let read = paced_reader(peer, Rng::new(victim as u64));
        for (i, a) in asked.iter_mut().enumerate() {
            let mut c = take(&port, a.id, &mut early);
            let back = c.take_buffer().expect("the send's buffer back");
            assert_eq!(
                mismatch(1, a.start, &back),
                None,
                "victim {victim}: changed"
            );
            match c.result() {
                Ok(n) => {
                    assert_eq!(n, a.len, "{c:?}");
                    assert!(
                        !(ring && i == victim),
                        "victim {victim}: not cancelled: {c:?}"
                    );
                    a.reported = Some(n);
                }
                Err(e) => {
                    assert!(proactor::is_cancelled(&e), "victim {victim}: {e} ({c:?})");
                    assert_eq!(i, victim, "only the cancelled send ends cancelled: {c:?}");
                    let n = c.bytes_transferred();
                    assert!(n < a.len, "{c:?}");
                    if ring {
                        // The first sent part of its bytes before it stuck; the others none.
                        assert_eq!(n > 0, i == 0, "victim {victim}: {n} bytes sent ({c:?})");
                    }
                    a.reported = Some(n);
                }
            }
        }
        assert!(early.is_empty(), "completions of nothing asked: {early:?}");
        drop(h);
        let got = read.join().unwrap();
        check_stream(1, &segments(&asked), &got).unwrap_or_else(|e| panic!("victim {victim}: {e}"));
        assert_eq!(port.operations_in_flight(), 0);
    }
}

/// Sends asked for together to a peer that reset the connection each fail (reset, or broken
/// pipe after it) and hand their buffers back; none hangs and none reports success (on the
/// ring, an empty one among them neither: it goes to the kernel alone, after the others).
#[test]
fn sends_asked_for_together_to_a_reset_peer_each_fail() {
    let _s = serial();
    let port = LocalPort::new().unwrap();
    let (h, peer) = pair(&port, each_ip_v4(), 1);
    reset_on_drop(&peer).unwrap();
    drop(peer);
    thread::sleep(Duration::from_millis(50));
    let ring = port.backend() == "io_uring";
    // An empty one among them.
    let lens = [10, 10, 0, 10, 10];
    let ids: Vec<OpId> = lens
        .iter()
        .enumerate()
        .map(|(i, &n)| port.send(&h, pattern(1, i as u64 * 10, n)))
        .collect();
    let mut early = Vec::new();
    for (&id, &n) in ids.iter().zip(&lens) {
        let mut c = take(&port, id, &mut early);
        assert_eq!(c.take_buffer().map(|b| b.len()), Some(n), "{c:?}");
        if n == 0 && !ring {
            continue; // the shared port completes an empty send without a call
        }
        let e = c.result().expect_err("a send to a reset peer");
        assert!(
            matches!(
                e.kind(),
                io::ErrorKind::ConnectionReset
                    | io::ErrorKind::BrokenPipe
                    | io::ErrorKind::ConnectionAborted
            ),
            "{e:?} ({c:?})"
        );
    }
    assert!(early.is_empty(), "{early:?}");
    assert_eq!(port.operations_in_flight(), 0);
}

/// Three connections, sends of 0 B to 300 KB asked for a few at a time (plain, vectored, with a
/// deadline), readers that pause, and at random: a cancel (sometimes twice), a `cancel_all`, a
/// dequeue that does not wait; with the `failpoints` feature, on half the seeds, one gathered
/// `SENDMSG` in five cut short. Every send completes once with its bytes back unchanged, whole
/// or cancelled (never a deadline) with what it sent; each peer gets exactly the reported bytes
/// of its own sends, in order.
#[cfg(target_os = "linux")]
#[test]
fn cancels_and_short_transfers_among_sends_asked_for_together_lose_nothing() {
    const STEPS: usize = 250;
    let _s = serial();
    for (i, seed) in seeds(3).into_iter().enumerate() {
        let mut rng = Rng::new(seed);
        let port = LocalPort::new().unwrap();
        let mut conns = Vec::new();
        for c in 0..3 {
            let (h, peer) = pair(&port, each_ip_v4(), c);
            conns.push((h, paced_reader(peer, rng.fork()), Vec::<Asked>::new(), 0));
        }
        #[cfg(feature = "failpoints")]
        if i % 2 == 1 {
            fail::cfg("ring::gather_short", "20%return(37)").unwrap();
        }
        let _ = i;
        let mut pending: HashMap<OpId, (usize, usize)> = HashMap::new();
        let mut batch = Vec::new();
        let mut step = 0;
        while step < STEPS || !pending.is_empty() {
            for _ in 0..rng.range(0, 8).min(if step < STEPS { 8 } else { 0 }) {
                let c = rng.range(0, conns.len());
                let (h, _, asked, offset) = &mut conns[c];
                let n = rng.pick(&[0, 1, 3, 64, 1500, 9000, 70_000, 200_000]);
                let data = pattern(c as u64, *offset as u64, n);
                let id = match rng.range(0, 10) {
                    0 => port.with_timeout(Duration::from_secs(60)).send(h, data),
                    1 => {
                        let k = rng.range(0, n + 1);
                        port.send_vectored(h, vec![data[..k].to_vec(), data[k..].to_vec()])
                    }
                    _ => port.send(h, data),
                };
                pending.insert(id, (c, asked.len()));
                asked.push(Asked::new(id, *offset, n));
                *offset += n;
            }
            if !pending.is_empty() && rng.chance(15) {
                let ids: Vec<OpId> = pending.keys().copied().collect();
                let id = rng.pick(&ids);
                let _ = port.cancel(id);
                if rng.chance(30) {
                    let _ = port.cancel(id);
                }
            }
            if rng.chance(2) {
                port.cancel_all(&conns[rng.range(0, conns.len())].0)
                    .unwrap();
            }
            let wait = match (step < STEPS, rng.chance(50)) {
                (false, _) => WAIT,
                (true, true) => Duration::ZERO,
                (true, false) => Duration::from_millis(1),
            };
            step += 1;
            batch.clear();
            if let Err(e) = port.get_completions(&mut batch, rng.range(1, 16), Some(wait)) {
                assert!(
                    wait < WAIT,
                    "seed {seed}: {} sends never completed: {e}",
                    pending.len()
                );
            }
            for c in &mut batch {
                let (conn, at) = pending
                    .remove(&c.id())
                    .unwrap_or_else(|| panic!("seed {seed}: unknown or twice: {c:?}"));
                let a = &mut conns[conn].2[at];
                let back = handed_back(c).expect("the send's bytes back");
                assert_eq!(back.len(), a.len, "seed {seed}: {c:?}");
                assert_eq!(mismatch(conn as u64, a.start, &back), None, "seed {seed}");
                a.reported = Some(match c.result() {
                    Ok(n) => {
                        assert_eq!(n, a.len, "seed {seed}: {c:?}");
                        n
                    }
                    Err(e) => {
                        assert!(proactor::is_cancelled(&e), "seed {seed}: {e} ({c:?})");
                        assert!(c.bytes_transferred() <= a.len, "seed {seed}: {c:?}");
                        c.bytes_transferred()
                    }
                });
            }
        }
        #[cfg(feature = "failpoints")]
        fail::remove("ring::gather_short");
        for (c, (h, read, asked, _)) in conns.into_iter().enumerate() {
            drop(h);
            let got = read.join().unwrap();
            check_stream(c as u64, &segments(&asked), &got)
                .unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        }
        assert_eq!(port.operations_in_flight(), 0);
    }
}

/// An empty send between a send stuck in the kernel (the peer not reading) and a small one:
/// nothing completes while the first is stuck, then all three in the order asked, and the peer
/// gets the stream whole.
#[test]
fn an_empty_send_behind_a_stuck_one_waits_its_turn() {
    let _s = serial();
    let port = LocalPort::new().unwrap();
    let (h, peer) = pair(&port, each_ip_v4(), 1);
    let big = if cfg!(windows) { 4 << 20 } else { 32 << 20 };
    let ids = [
        port.send(&h, pattern(1, 0, big)),
        port.send(&h, Vec::new()),
        port.send(&h, pattern(1, big as u64, 10)),
    ];
    if cfg!(target_os = "linux") {
        if let Some(c) = within(&port, 300) {
            panic!("a completion while the first send is stuck: {c:?}");
        }
    }
    let read = paced_reader(peer, Rng::new(7));
    let mut order = Vec::new();
    while order.len() < ids.len() {
        let c = port.get_completion(Some(WAIT)).expect("a completion");
        assert!(c.result().is_ok(), "{c:?}");
        order.push(c.id());
    }
    if cfg!(target_os = "linux") {
        assert_eq!(order, ids, "completions out of the order asked");
    }
    drop(h);
    let got = read.join().unwrap();
    check_stream(1, &[(0, big + 10)], &got).unwrap();
    assert_eq!(port.operations_in_flight(), 0);
}

/// The ring's gathered `SENDMSG` cut short (`ring::gather_short`, once): its CQE reports a
/// partial transfer ending where the test chose: inside the last send, at each boundary, inside
/// a middle one, inside the first. Every send still completes once and whole, in order, and the
/// peer gets each byte once.
#[cfg(all(feature = "failpoints", target_os = "linux"))]
#[test]
fn a_gathered_send_cut_short_anywhere_goes_on_in_order() {
    let _s = serial();
    let sizes = [100, 5000, 1, 200];
    let total: usize = sizes.iter().sum();
    // Bytes cut from the end of the gathered send.
    for cut in [1, 199, 200, 201, 202, 2000, 5201, total - 100, total - 1] {
        let port = LocalPort::new().unwrap();
        if port.backend() != "io_uring" {
            eprintln!("a_gathered_send_cut_short_anywhere_goes_on_in_order: no ring here: skipped");
            return;
        }
        let (h, peer) = pair(&port, each_ip_v4(), 1);
        let read = paced_reader(peer, Rng::new(cut as u64));
        fail::cfg("ring::gather_short", &format!("1*return({cut})")).unwrap();
        let mut asked = Vec::new();
        let mut offset = 0;
        for n in sizes {
            let id = port.send(&h, pattern(1, offset as u64, n));
            asked.push((id, offset as u64, n));
            offset += n;
        }
        for &(id, start, n) in &asked {
            let mut c = port.get_completion(Some(WAIT)).expect("a completion");
            assert_eq!(c.id(), id, "cut {cut}: out of order");
            assert_eq!(c.result().unwrap(), n, "cut {cut}: {c:?}");
            let back = c.take_buffer().expect("the buffer back");
            assert_eq!(mismatch(1, start, &back), None, "cut {cut}");
        }
        fail::remove("ring::gather_short");
        // Three joined the first; the rest of a cut, if two or more sends, gathered again.
        assert!(
            port.gathered_sends() >= 3,
            "cut {cut}: {}",
            port.gathered_sends()
        );
        drop(h);
        let got = read.join().unwrap();
        check_stream(1, &[(0, total)], &got).unwrap_or_else(|e| panic!("cut {cut}: {e}"));
        assert_eq!(port.operations_in_flight(), 0);
    }
}

/// A connection's handle dropped while its sends are in the kernel (a 32 MiB send stuck behind
/// a peer that does not read and three small ones asked for with it: on the ring one gathered
/// `SENDMSG`, plus one more queued behind it), and its descriptor number taken at once by the
/// next connection. The old connection really closes; its peer gets exactly the bytes the old
/// sends' completions report, in order; each old send completes once (done or cancelled); the
/// new connection gets only its own bytes, and its sends and receives see nothing of the old.
/// Linux only: Windows does not hand a socket's value to the next one deterministically.
#[cfg(target_os = "linux")]
#[test]
fn a_handle_dropped_with_a_gathered_send_in_flight_leaves_nothing_to_its_fd_number_reuse() {
    use std::{
        io::{Read, Write},
        net::{TcpListener, TcpStream},
        os::fd::AsRawFd,
    };

    let _s = serial();
    let port = LocalPort::new().unwrap();
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut old_client = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (old_server, _) = l.accept().unwrap();
    let old_fd = old_server.as_raw_fd();
    let old = port.add_handle(old_server, 1).unwrap();
    let before = port.gathered_sends();
    let mut asked = Vec::new();
    let mut offset = 0;
    for n in [32 << 20, 100, 5000, 1] {
        asked.push(Asked::new(
            port.send(&old, pattern(1, offset as u64, n)),
            offset,
            n,
        ));
        offset += n;
    }
    // The enter that submits them: nothing completes, the first send being stuck.
    if let Some(c) = within(&port, 100) {
        panic!("a completion while the first send is stuck: {c:?}");
    }
    if port.backend() == "io_uring" {
        // Three joined the first (again after each partial transfer of the stuck one).
        assert!(
            port.gathered_sends() >= before + 3,
            "the four went out as one"
        );
    }
    // One more, queued behind the sends in the kernel.
    asked.push(Asked::new(
        port.send(&old, pattern(1, offset as u64, 700)),
        offset,
        700,
    ));
    let pooled = port.recv_pooled(&old);
    // The next client's socket exists before the close, so the accept below takes the number.
    let mut new_client = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    drop(old);
    // The connection really closed: the peer reads to the end of its stream.
    old_client.set_read_timeout(Some(WAIT)).unwrap();
    let mut old_got = Vec::new();
    if let Err(e) = old_client.read_to_end(&mut old_got) {
        panic!("the old connection did not end: {e}");
    }
    let (new_server, _) = l.accept().unwrap();
    assert_eq!(new_server.as_raw_fd(), old_fd, "the fd number is reused");
    let new = port.add_handle(new_server, 2).unwrap();
    let _ = old_client.write_all(b"OLD OLD OLD");
    new_client.write_all(b"new").unwrap();
    let new_read = paced_reader(new_client.try_clone().unwrap(), Rng::new(5));
    let mut new_sends: Vec<Asked> = (0..3)
        .map(|k| Asked::new(port.send(&new, pattern(2, k * 40, 40)), k as usize * 40, 40))
        .collect();
    port.recv_pooled(&new);
    let mut received = Vec::new();
    let mut pooled_ended = false;
    let mut left = asked.len() + new_sends.len();
    while left > 0 || received.len() < 3 {
        let mut c = port.get_completion(Some(WAIT)).expect("a completion");
        match (c.context(), c.kind()) {
            (1, OpKind::RecvPooled) => {
                assert_eq!(c.id(), pooled);
                assert!(c.is_cancelled(), "{c:?}");
                assert!(c.take_pooled().is_none());
                assert!(!pooled_ended, "the old receive completed twice");
                pooled_ended = true;
            }
            (2, OpKind::RecvPooled) => {
                received.extend_from_slice(&c.take_pooled().expect("data"));
                if received.len() < 3 {
                    port.recv_pooled(&new);
                }
            }
            (context, _) => {
                let list = if context == 1 {
                    &mut asked
                } else {
                    &mut new_sends
                };
                let a = list
                    .iter_mut()
                    .find(|a| a.id == c.id())
                    .unwrap_or_else(|| panic!("an unknown completion: {c:?}"));
                assert!(a.reported.is_none(), "completed twice: {c:?}");
                let n = match c.result() {
                    Ok(n) => n,
                    Err(e) if context == 1 && proactor::is_cancelled(&e) => c.bytes_transferred(),
                    Err(e) => panic!("{c:?}: {e}"),
                };
                assert!(n <= a.len);
                let back = handed_back(&mut c).expect("the buffer back");
                assert_eq!(mismatch(context as u64, a.start, &back), None);
                a.reported = Some(n);
                left -= 1;
            }
        }
    }
    assert!(pooled_ended);
    assert_eq!(received, b"new", "no byte of the old connection");
    for a in &new_sends {
        assert_eq!(a.reported, Some(40));
    }
    check_stream(1, &segments(&asked), &old_got).unwrap();
    assert!(
        old_got.len() < 32 << 20,
        "the stuck send cannot have finished: the peer was not reading"
    );
    drop(new);
    drop(new_client);
    check_stream(2, &segments(&new_sends), &new_read.join().unwrap()).unwrap();
    assert_eq!(port.operations_in_flight(), 0);
}

/// The enter that gathers the deferred sends meets a full submission queue (4,090 timers
/// queued before it, in a queue of 4,096): the gathered `SENDMSG`s of 300 connections, three
/// sends each, make room by entering from inside the flush. Every send completes once and
/// whole, and every peer gets its stream in order.
#[test]
fn sends_gathered_into_a_full_submission_queue_all_arrive() {
    let _s = serial();
    let port = LocalPort::new().unwrap();
    let conns = 300;
    let mut handles = Vec::new();
    let mut reads = Vec::new();
    for i in 0..conns {
        let (h, peer) = pair(&port, each_ip_v4(), i);
        handles.push(h);
        reads.push(paced_reader(peer, Rng::new(i as u64)));
    }
    let timers: Vec<OpId> = (0..4090)
        .map(|_| port.timer(Duration::from_secs(100)))
        .collect();
    let before = port.gathered_sends();
    let mut ids = Vec::new();
    for (i, h) in handles.iter().enumerate() {
        for k in 0..3u64 {
            ids.push(port.send(h, pattern(i as u64 + 1, k * 100, 100)));
        }
    }
    let mut early = Vec::new();
    for &id in &ids {
        let mut c = take(&port, id, &mut early);
        assert_eq!(c.result().unwrap(), 100, "{c:?}");
        assert!(c.take_buffer().is_some());
    }
    if port.backend() == "io_uring" {
        assert!(port.gathered_sends() > before, "nothing was gathered");
    }
    for &t in &timers {
        port.cancel(t).unwrap();
    }
    let mut ended = early.len();
    for c in &early {
        assert!(timers.contains(&c.id()), "{c:?}");
    }
    while ended < timers.len() {
        let c = port
            .get_completion(Some(WAIT))
            .expect("a timer's completion");
        assert!(timers.contains(&c.id()), "{c:?}");
        assert!(proactor::is_cancelled(&c.result().unwrap_err()), "{c:?}");
        ended += 1;
    }
    drop(handles);
    for (i, r) in reads.into_iter().enumerate() {
        check_stream(i as u64 + 1, &[(0, 300)], &r.join().unwrap()).unwrap();
    }
    assert_eq!(port.operations_in_flight(), 0);
}
