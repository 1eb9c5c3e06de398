//! Wait coalescing on a [`LocalPort`] (`set_wait_coalescing`): a coalescing wait holds a lone
//! completion back for its delay and no longer; a wait with nothing coming keeps waiting past
//! the delay and still ends at its timeout or its data; a timeout shorter than the delay still
//! bounds the call; where the kernel or the engine cannot coalesce, the call says
//! `Unsupported`. The waits are reached with the delay held fixed (the adaptive choice,
//! which these light loads would never make, is `coalesce.rs`'s unit tests'); streams under
//! coalescing are `local_integrity.rs`'s (half its seeds run with a fixed delay).
#![cfg(any(windows, target_os = "linux"))]

use std::{
    io::{ErrorKind, Write},
    net::{TcpListener, TcpStream},
    thread,
    time::{Duration, Instant},
};

use proactor::{LocalPort, OpKind};

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
