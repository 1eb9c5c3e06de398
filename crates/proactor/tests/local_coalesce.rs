//! Wait coalescing on a [`LocalPort`] (`set_wait_coalescing`): a coalescing wait holds a lone
//! completion back for its delay and no longer; a wait with nothing coming keeps waiting past
//! the delay and still ends at its timeout or its data; a timeout shorter than the delay still
//! bounds the call; where the kernel or the engine cannot coalesce, the call says
//! `Unsupported`. The waits are reached with the delay held fixed (these light loads would
//! never make the adaptive choice, whose rules are `coalesce.rs`'s unit tests'); one test
//! drives the adaptive path end to end: a paced load makes the port choose a delay, one
//! request at a time takes it away, every byte checked. The tests of this file run one at a
//! time ([`serial`]): the paced client keeps a CPU busy, and the others time their waits. Streams under coalescing are
//! `local_integrity.rs`'s too (half its seeds run with a fixed delay).
#![cfg(any(windows, target_os = "linux"))]

use std::{
    io::{ErrorKind, Write},
    net::{TcpListener, TcpStream},
    thread,
    time::{Duration, Instant},
};

use proactor::{LocalPort, OpKind};

mod common;
use common::oracle::{byte_at, pattern};

/// Held by each test of this file for its whole run: one at a time.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Whether this port's engine must be able to coalesce: an io_uring ring of its own on Linux
/// 6.12 or later (the kernel's minimum wait). Never on the shared-port engine; on an older
/// kernel, only if the feature was backported (either answer is right there).
fn must_coalesce(port: &LocalPort) -> bool {
    port.setup() != "shared port" && kernel_at_least(6, 12)
}

/// Whether this port's engine may coalesce.
fn may_coalesce(port: &LocalPort) -> bool {
    port.setup() != "shared port"
}

fn kernel_at_least(major: u32, minor: u32) -> bool {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut parts = release
        .trim()
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let (a, b) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    (a, b) >= (major, minor)
}

/// A port holding every wait for `delay` (or `None` where it cannot coalesce).
fn coalescing_port(delay: Duration) -> Option<LocalPort> {
    let port = LocalPort::with_pool(4, 4096).expect("port");
    match port.fix_coalescing_delay(delay) {
        Ok(()) => {
            assert!(may_coalesce(&port), "coalescing took on {}", port.setup());
            assert_eq!(port.coalescing_delay(), delay);
            Some(port)
        }
        Err(e) => {
            assert_eq!(e.kind(), ErrorKind::Unsupported, "{e}");
            assert!(!must_coalesce(&port), "refused on {}: {e}", port.setup());
            None
        }
    }
}

#[test]
fn the_setting_is_checked_and_says_where_it_cannot_run() {
    let _serial = serial();
    let port = LocalPort::new().expect("port");
    assert!(port.coalescing_delay().is_zero(), "off on a new port");
    let e = port
        .set_wait_coalescing(Some(Duration::from_millis(11)))
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
    port.set_wait_coalescing(None).expect("off is always taken");
    port.set_wait_coalescing(Some(Duration::ZERO))
        .expect("zero is off");
    match port.set_wait_coalescing(Some(Duration::from_micros(200))) {
        Ok(()) => assert!(may_coalesce(&port), "took it on {}", port.setup()),
        Err(e) => {
            assert_eq!(e.kind(), ErrorKind::Unsupported, "{e}");
            assert!(!must_coalesce(&port), "refused on {}: {e}", port.setup());
        }
    }
    // The port starts from no delay and chooses one only under a load that pays for it.
    assert!(port.coalescing_delay().is_zero());
}

/// A connection on `port` (context 7) with a pooled receive waiting, and its peer.
fn receiving(port: &LocalPort) -> (proactor::LocalHandle<TcpStream>, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let peer = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (conn, _) = listener.accept().unwrap();
    let conn = port.add_handle(conn, 7).expect("add");
    port.recv_pooled(&conn);
    (conn, peer)
}

/// `peer` writes `bytes` after `after`, from another thread; joined for its socket.
fn write_later(
    mut peer: TcpStream,
    after: Duration,
    bytes: &'static [u8],
) -> thread::JoinHandle<TcpStream> {
    thread::spawn(move || {
        thread::sleep(after);
        peer.write_all(bytes).unwrap();
        peer
    })
}

#[test]
fn a_lone_completion_is_held_back_for_the_delay_and_no_longer() {
    let _serial = serial();
    let delay = Duration::from_millis(100);
    let Some(port) = coalescing_port(delay) else {
        return;
    };
    let (conn, peer) = receiving(&port);
    let mut peer = Some(peer);
    let mut held = 0;
    for round in 0..3 {
        let started = Instant::now();
        let writer = write_later(peer.take().unwrap(), Duration::from_millis(20), b"ping");
        let mut done = port
            .get_completion(Some(Duration::from_secs(10)))
            .expect("the data");
        let took = started.elapsed();
        peer = Some(writer.join().unwrap());
        assert_eq!(done.kind(), OpKind::RecvPooled);
        assert_eq!(&done.take_pooled().expect("data")[..], b"ping");
        // One completion where the wait asks for a batch: held until the delay has passed
        // (a kernel timer, never early), then handed out. A round may find the data already
        // there (this thread was held up 20 ms before it waited, the machine loaded): it does
        // not wait at all.
        held += usize::from(took >= delay);
        assert!(
            took < Duration::from_secs(2),
            "round {round}: held {took:?}"
        );
        if !done.more() {
            port.recv_pooled(&conn);
        }
    }
    assert!(
        held >= 2,
        "the data was held back for the delay in {held} of 3 rounds"
    );
}

#[test]
fn a_wait_with_nothing_coming_waits_past_the_delay_for_its_timeout_or_data() {
    let _serial = serial();
    let delay = Duration::from_millis(5);
    let Some(port) = coalescing_port(delay) else {
        return;
    };
    // Nothing in flight: the call ends at its timeout, not at the delay.
    let started = Instant::now();
    let e = port
        .get_completion(Some(Duration::from_millis(200)))
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::TimedOut, "{e}");
    assert!(started.elapsed() >= Duration::from_millis(200));

    // Data long after the delay: the call is still waiting to take it, and takes it when it
    // comes, not at its timeout.
    let (_conn, peer) = receiving(&port);
    let started = Instant::now();
    let writer = write_later(peer, Duration::from_millis(300), b"late");
    let mut done = port
        .get_completion(Some(Duration::from_secs(20)))
        .expect("the late data");
    let took = started.elapsed();
    assert_eq!(done.kind(), OpKind::RecvPooled);
    assert_eq!(done.context(), 7);
    assert_eq!(&done.take_pooled().expect("data")[..], b"late");
    assert!(
        took < Duration::from_secs(10),
        "data written at 300 ms taken after {took:?}"
    );
    drop(writer.join().unwrap());
}

#[test]
fn a_timeout_shorter_than_the_delay_still_bounds_the_call() {
    let _serial = serial();
    // A coalescing wait lasts its delay: a call with less time left than that must not
    // coalesce (a 1 s delay would hold a 10 ms call for a second).
    let Some(port) = coalescing_port(Duration::from_secs(1)) else {
        return;
    };
    let started = Instant::now();
    let e = port
        .get_completion(Some(Duration::from_millis(10)))
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::TimedOut, "{e}");
    let took = started.elapsed();
    assert!(
        took < Duration::from_millis(500),
        "a 10 ms call took {took:?}"
    );
}

#[test]
fn pipelined_messages_held_back_all_come_once_and_in_order() {
    let _serial = serial();
    let Some(port) = coalescing_port(Duration::from_micros(500)) else {
        return;
    };
    // Four peers each write 2,000 numbered 8-byte messages as fast as they can: most waits
    // find a batch, some only the delay's end.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    const PEERS: u64 = 4;
    const MESSAGES: u64 = 2000;
    let writers: Vec<_> = (0..PEERS)
        .map(|p| {
            thread::spawn(move || {
                let mut s = TcpStream::connect(addr).unwrap();
                for i in 0..MESSAGES {
                    s.write_all(&(p << 32 | i).to_le_bytes()).unwrap();
                }
                s
            })
        })
        .collect();
    let mut conns = Vec::new();
    for _ in 0..PEERS {
        let (c, _) = listener.accept().unwrap();
        let h = port.add_handle(c, conns.len()).expect("add");
        port.recv_pooled(&h);
        conns.push(h);
    }
    let mut got: Vec<Vec<u8>> = vec![Vec::new(); PEERS as usize];
    let want = (MESSAGES * 8) as usize;
    let mut batch = Vec::new();
    while got.iter().any(|g| g.len() < want) {
        batch.clear();
        port.get_completions(&mut batch, 64, Some(Duration::from_secs(10)))
            .expect("completions while data is owed");
        for mut done in batch.drain(..) {
            assert_eq!(done.kind(), OpKind::RecvPooled);
            let at = done.context();
            let data = done
                .take_pooled()
                .expect("data before the end of any stream");
            got[at].extend_from_slice(&data);
            if !done.more() {
                port.recv_pooled(&conns[at]);
            }
        }
    }
    // Each connection's peer is the one whose numbers it carries, every number once, in order.
    let first = |g: &Vec<u8>| u64::from_le_bytes(g[..8].try_into().unwrap()) >> 32;
    for g in &got {
        assert_eq!(g.len(), want);
        let p = first(g);
        for (i, m) in g.chunks(8).enumerate() {
            let m = u64::from_le_bytes(m.try_into().unwrap());
            assert_eq!(m, p << 32 | i as u64, "message {i} of peer {p}");
        }
    }
    for w in writers {
        drop(w.join().unwrap());
    }
}

#[test]
fn a_paced_load_makes_the_port_choose_a_delay_and_a_lone_client_takes_it_away() {
    let _serial = serial();
    // The whole path the controller's unit tests leave out: the engine counting the waits,
    // completions and bytes, the clocks, the chosen delay reaching the kernel's wait.
    // Phase 1: 16 connections, one 64-byte message every 20 µs in turn (a client at a fixed
    // rate: its rate does not depend on the replies' delay, and without a delay the port wakes
    // up for nearly every message): a delay saves CPU per byte at the same rate, and the port
    // must choose one and keep it. Phase 2: one connection, one message at a time: a delay
    // would hold every reply, and the port must leave it. Every byte is checked both ways.
    // The port must keep a delay on `DEFER_TASKRUN` and plain rings: in this load a delay cut
    // the CPU per byte by a third or more there (47-110 -> 20-32 ns, 170-240 -> about 100;
    // chosen after about 20 ms). On `coop_taskrun` each completion's task work still wakes
    // the waiting thread, and a delay saved the 10% a step up needs in some runs, not in
    // others (83-88 -> 75-92 ns): there phase 1 lasts 3 s whatever the port chose, and
    // phase 2 still holds. (A client that sends as fast as the replies let it is no test of the choice
    // either: the port can be fast enough without a delay that one would cut the rate, and
    // the rate rule rightly refuses it.)
    const MAX: Duration = Duration::from_millis(4);
    const CONNS: usize = 16;
    const PACE: Duration = Duration::from_micros(20);
    const MESSAGE: usize = 64;
    const LONE: u64 = 2000;
    // Kept, not only tried: a try is three epochs (12 ms, and up to about 150 ms when its
    // epochs run long: beyond that it ends unjudged), a delay kept goes on.
    const KEPT: Duration = Duration::from_millis(250);
    let server = LocalPort::with_pool(512, 4096).expect("port");
    if let Err(e) = server.set_wait_coalescing(Some(MAX)) {
        assert_eq!(e.kind(), ErrorKind::Unsupported, "{e}");
        assert!(
            !must_coalesce(&server),
            "refused on {}: {e}",
            server.setup()
        );
        return;
    }
    let must_keep = server.setup() != "coop_taskrun";
    let phase_1 = if must_keep {
        Duration::from_secs(30)
    } else {
        Duration::from_secs(3)
    };
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let kept = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = kept.clone();
    let started = Instant::now();
    let client = thread::spawn(move || {
        use std::sync::atomic::Ordering::Relaxed;
        let port = LocalPort::new().expect("client port");
        let conns: Vec<_> = (0..CONNS)
            .map(|c| {
                let s = TcpStream::connect(addr).unwrap();
                s.set_nodelay(true).unwrap();
                let h = port.add_handle(s, c).expect("add");
                port.recv_multishot(&h);
                h
            })
            .collect();
        let (mut sent, mut got) = (vec![0u64; CONNS], vec![0u64; CONNS]);
        let send = |c: usize, sent: &mut [u64]| {
            let at = sent[c];
            port.send(&conns[c], pattern(c as u64, at, MESSAGE));
            sent[c] += MESSAGE as u64;
        };
        let mut batch = Vec::new();
        let mut reap = |sent: &[u64], got: &mut [u64], timeout| {
            batch.clear();
            match port.get_completions(&mut batch, 64, Some(timeout)) {
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::TimedOut && timeout.is_zero() => {}
                Err(e) => panic!("client completions: {e}"),
            }
            for mut done in batch.drain(..) {
                let c = done.context();
                match done.kind() {
                    OpKind::Send => assert_eq!(done.result().expect("send"), MESSAGE),
                    OpKind::RecvPooled => {
                        let Some(data) = done.take_pooled() else {
                            panic!("connection {c}: {:?}", done.result());
                        };
                        for (i, &b) in data.iter().enumerate() {
                            let at = got[c] + i as u64;
                            assert_eq!(b, byte_at(c as u64, at), "connection {c} byte {at}");
                        }
                        got[c] += data.len() as u64;
                        assert!(got[c] <= sent[c], "connection {c}: more back than sent");
                        assert!(done.more(), "connection {c}'s receive ended");
                    }
                    kind => panic!("client: {kind}"),
                }
            }
        };
        // Phase 1, paced, until the server's port keeps a delay (or `phase_1` has passed).
        let mut next = Instant::now();
        let mut turn = 0;
        while !flag.load(Relaxed) && started.elapsed() < phase_1 {
            let now = Instant::now();
            if now >= next {
                send(turn % CONNS, &mut sent);
                turn += 1;
                // Behind (this thread was held up): start the pace again rather than burst.
                next = if now - next > Duration::from_millis(1) {
                    now
                } else {
                    next
                } + PACE;
            }
            reap(&sent, &mut got, Duration::ZERO);
        }
        while sent != got {
            reap(&sent, &mut got, Duration::from_secs(20));
        }
        // Phase 2: one request at a time.
        let mut lone = Vec::new();
        for _ in 0..LONE {
            let at = Instant::now();
            send(0, &mut sent);
            while got[0] < sent[0] {
                reap(&sent, &mut got, Duration::from_secs(20));
            }
            lone.push(at.elapsed());
        }
        drop(conns);
        lone
    });
    // A failure on this side reports the client's first, if it failed: a client that died
    // leaves its connections reset, and that is not the cause.
    let mut client = Some(client);
    fn blame(client: &mut Option<thread::JoinHandle<Vec<Duration>>>, what: String) -> ! {
        if let Err(e) = client.take().expect("client").join() {
            std::panic::resume_unwind(e);
        }
        panic!("{what}");
    }
    listener.set_nonblocking(true).unwrap();
    let mut conns = Vec::new();
    while conns.len() < CONNS {
        match listener.accept() {
            Ok((s, _)) => {
                let h = server.add_handle(s, conns.len()).expect("add");
                server.recv_multishot(&h);
                conns.push(Some(h));
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                if client.as_ref().unwrap().is_finished() || started.elapsed().as_secs() > 20 {
                    blame(&mut client, format!("{} of {CONNS} connected", conns.len()));
                }
                thread::sleep(Duration::from_millis(1));
            }
            Err(e) => panic!("accept: {e}"),
        }
    }
    let mut kept_at = None;
    let mut delayed_since = None;
    let mut batch = Vec::new();
    let mut open = CONNS;
    let mut echoed = [0u64; CONNS];
    while open > 0 {
        batch.clear();
        if let Err(e) = server.get_completions(&mut batch, 64, Some(Duration::from_secs(40))) {
            blame(&mut client, format!("server completions: {e}"));
        }
        match server.coalescing_delay().is_zero() {
            true => delayed_since = None,
            false => {
                let since = *delayed_since.get_or_insert_with(Instant::now);
                if kept_at.is_none() && since.elapsed() >= KEPT {
                    kept_at = Some(started.elapsed());
                    kept.store(true, std::sync::atomic::Ordering::Relaxed);
                }
            }
        }
        for mut done in batch.drain(..) {
            let c = done.context();
            match done.kind() {
                OpKind::SendPooled => {
                    if let Err(e) = done.result() {
                        blame(&mut client, format!("connection {c}'s echo: {e}"));
                    }
                }
                OpKind::RecvPooled => match done.take_pooled() {
                    Some(data) => {
                        for (i, &b) in data.iter().enumerate() {
                            let at = echoed[c] + i as u64;
                            assert_eq!(
                                b,
                                byte_at(c as u64, at),
                                "server: connection {c} byte {at}"
                            );
                        }
                        echoed[c] += data.len() as u64;
                        server.send_pooled(conns[c].as_ref().unwrap(), data);
                    }
                    None => {
                        if !matches!(done.result(), Ok(0)) || done.more() {
                            let what = format!("connection {c}: {:?}", done.result());
                            blame(&mut client, what);
                        }
                        conns[c] = None;
                        open -= 1;
                    }
                },
                kind => panic!("server: {kind}"),
            }
        }
    }
    let lone = client.take().unwrap().join().expect("client");
    assert!(
        kept_at.is_some() || !must_keep,
        "{}: {phase_1:?} of a paced load and no delay kept for {KEPT:?}",
        server.setup()
    );
    // One request at a time: the replies are not held back (the guard, or a light epoch,
    // leaves a delay within a few waits; a try up costs a few waits: about 1% of the round
    // trips here, a few % with two busy threads beside the test, which hold some round trips
    // as long). A delay kept would hold most of them for 1 ms or more (half the delay at the
    // lower level: a wait that began before the request came ends that much earlier).
    let held = lone.iter().filter(|t| **t >= MAX / 4).count();
    assert!(
        held * 4 < lone.len(),
        "{held} of {} lone round trips held for the delay (kept after {kept_at:?})",
        lone.len()
    );
    eprintln!(
        "{}: a delay kept after {kept_at:?}, {held} of {LONE} lone round trips held",
        server.setup()
    );
}
