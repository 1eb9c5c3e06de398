//! Sends reported only if they fail (`LocalSubmit::skip_success`): one that sent every byte
//! makes no completion, yet the port keeps it in flight until the kernel is done with it
//! (`unreported_in_flight`, `unreported_in_flight_on`), the stream keeps its order around it,
//! and one that fails (a reset peer, a cancel, a deadline, its handle dropped) is reported
//! with what it sent and its buffer. Checked with the stream oracle through a relay of pool
//! buffers to a slow reader (partial transfers, a pool that runs dry) and, on the ring, a
//! descriptor number reused right after a handle dropped with one in the kernel.
#![cfg(any(windows, target_os = "linux"))]

mod common;

use std::{
    collections::HashMap,
    io::{self, Write},
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
use proactor::{LocalPort, OpId, OpKind};

/// One test at a time: `live_operations()` and descriptor numbers are process-wide.
fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

const WAIT: Duration = Duration::from_secs(30);

/// A writer sends a stream into the port, which relays each pool buffer it receives to a slow
/// reader with `send_pooled`, at random reported or not (a small pool, so receives wait for
/// the sends to give buffers back). Only the reported sends complete, each once and whole;
/// the unreported ones are counted until they end; the reader gets the whole stream in order.
#[test]
fn relayed_pool_buffers_arrive_in_order_whether_or_not_their_sends_are_reported() {
    let _s = serial();
    for seed in seeds(3) {
        let mut rng = Rng::new(seed);
        let total: usize = if cfg!(windows) { 2 << 20 } else { 8 << 20 };
        let port = LocalPort::with_pool(16, 4096).unwrap();
        let (src, mut writer) = pair(&port, each_ip_v4(), 1);
        let (dst, reader) = pair(&port, each_ip_v4(), 2);
        let read = paced_reader(reader, rng.fork());
        let write = thread::spawn(move || {
            let mut at = 0;
            while at < total {
                let n = (64 << 10).min(total - at);
                writer.write_all(&pattern(1, at as u64, n)).unwrap();
                at += n;
            }
            writer // closed by the test once everything is relayed
        });
        port.recv_multishot(&src);
        let (mut relayed, mut skipped, mut reported) = (0, 0usize, HashMap::<OpId, usize>::new());
        let mut batch = Vec::new();
        let mut ended = false;
        while relayed < total || !reported.is_empty() {
            batch.clear();
            port.get_completions(&mut batch, rng.range(1, 8), Some(WAIT))
                .unwrap_or_else(|e| {
                    panic!(
                        "seed {seed}: nothing in {WAIT:?}: {e}; relayed {relayed} of {total}, {} reported and {} unreported sends in flight, pool starved {} times",
                        reported.len(),
                        port.unreported_in_flight(),
                        port.pool_starvations()
                    )
                });
            for c in &mut batch {
                match (c.context(), c.kind()) {
                    (1, OpKind::RecvPooled) => {
                        let n = c.result().unwrap();
                        let data = c.take_pooled().expect("a message");
                        assert_eq!(data.len(), n);
                        assert_eq!(mismatch(1, relayed as u64, &data), None, "seed {seed}");
                        relayed += n;
                        if rng.chance(50) {
                            port.with_user(7).skip_success().send_pooled(&dst, data);
                            skipped += 1;
                        } else {
                            let id = port.send_pooled(&dst, data);
                            reported.insert(id, n);
                        }
                        assert_eq!(
                            port.unreported_in_flight(),
                            port.unreported_in_flight_on(&dst),
                            "seed {seed}"
                        );
                        assert_eq!(port.unreported_in_flight_on(&src), 0, "seed {seed}");
                        if !c.more() {
                            ended = true;
                        }
                    }
                    (2, OpKind::SendPooled) => {
                        assert_ne!(c.user(), 7, "seed {seed}: a skipped send reported: {c:?}");
                        let n = reported
                            .remove(&c.id())
                            .unwrap_or_else(|| panic!("seed {seed}: unknown or twice: {c:?}"));
                        assert_eq!(c.result().unwrap(), n, "seed {seed}");
                    }
                    _ => panic!("seed {seed}: unexpected {c:?}"),
                }
            }
            assert!(
                !ended || relayed == total,
                "seed {seed}: the relay ended early"
            );
        }
        assert!(skipped > 0, "seed {seed}: nothing skipped");
        // The last unreported sends end without a completion (the reader goes on reading).
        while port.unreported_in_flight() > 0 {
            let c = within(&port, 50);
            assert!(c.is_none(), "seed {seed}: {c:?}");
        }
        drop(write.join().unwrap());
        drop(dst);
        let got = read.join().unwrap();
        check_stream(1, &[(0, total)], &got).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        drop(src);
        while port.operations_in_flight() > 0 {
            let c = port.get_completion(Some(WAIT)).unwrap();
            assert_eq!(c.kind(), OpKind::RecvPooled, "seed {seed}: {c:?}");
        }
    }
}

/// A stream of sends, every other one reported only if it fails, 1 B to 1 MiB, to a slow
/// reader: each reported one completes after every send asked before it ended (the stream's
/// order), and then the handle has no unreported send older than it in flight.
#[test]
fn a_reported_send_completes_after_the_unreported_ones_before_it() {
    let _s = serial();
    for seed in seeds(2) {
        let mut rng = Rng::new(seed);
        let port = LocalPort::new().unwrap();
        let (h, peer) = pair(&port, each_ip_v4(), 1);
        let read = paced_reader(peer, rng.fork());
        let mut offset = 0;
        let mut left = 0;
        for round in 0..40 {
            let sizes = [0, 1, 100, 4095, 65_537, 1 << 20];
            let n = rng.pick(&sizes);
            port.with_user(9)
                .skip_success()
                .send(&h, pattern(1, offset, n));
            offset += n as u64;
            let m = rng.pick(&sizes);
            let id = port.send(&h, pattern(1, offset, m));
            offset += m as u64;
            left += 1;
            if round % 4 == 3 || round == 39 {
                while left > 0 {
                    let mut c = port.get_completion(Some(WAIT)).unwrap();
                    assert_ne!(c.user(), 9, "seed {seed}: {c:?}");
                    assert_eq!(c.result().unwrap(), c.take_buffer().unwrap().len());
                    left -= 1;
                    if c.id() == id {
                        assert_eq!(port.unreported_in_flight_on(&h), 0, "seed {seed}");
                    }
                }
            }
        }
        assert!(within(&port, 50).is_none());
        assert_eq!(port.unreported_in_flight(), 0);
        assert_eq!(port.operations_in_flight(), 0);
        drop(h);
        let got = read.join().unwrap();
        check_stream(1, &[(0, offset as usize)], &got).unwrap_or_else(|e| panic!("{e}"));
    }
}

/// Unreported sends that fail are reported, with their buffer and the bytes they sent: to a
/// reset peer; cancelled while stuck; past their deadline; their handle dropped. The peer gets
/// exactly the bytes reported.
#[test]
fn an_unreported_send_that_fails_is_reported_with_what_it_sent() {
    let _s = serial();
    let big = if cfg!(windows) { 4 << 20 } else { 16 << 20 };

    // A reset peer.
    let port = LocalPort::new().unwrap();
    let (h, peer) = pair(&port, each_ip_v4(), 1);
    reset_on_drop(&peer).unwrap();
    drop(peer);
    thread::sleep(Duration::from_millis(50));
    let id = port.with_user(3).skip_success().send(&h, pattern(1, 0, 10));
    let mut c = port.get_completion(Some(WAIT)).unwrap();
    assert_eq!((c.id(), c.user()), (id, 3));
    let e = c.result().expect_err("a send to a reset peer");
    assert!(
        matches!(
            e.kind(),
            io::ErrorKind::ConnectionReset
                | io::ErrorKind::BrokenPipe
                | io::ErrorKind::ConnectionAborted
        ),
        "{e:?}"
    );
    assert_eq!(c.take_buffer().map(|b| b.len()), Some(10));
    assert_eq!(port.unreported_in_flight(), 0);
    drop(h);

    // Stuck, then cancelled; stuck, then past its deadline; stuck, then its handle dropped.
    for how in ["cancel", "deadline", "drop"] {
        let port = LocalPort::new().unwrap();
        let (h, peer) = pair(&port, each_ip_v4(), 1);
        let mut h = Some(h);
        let data = pattern(1, 0, big);
        let submit = match how {
            "deadline" => port.with_timeout(Duration::from_millis(600)),
            _ => port.with_user(0),
        };
        let id = submit.skip_success().send(h.as_ref().unwrap(), data);
        if let Some(c) = within(&port, 200) {
            panic!("{how}: a completion while stuck: {c:?}");
        }
        assert_eq!(
            port.unreported_in_flight_on(h.as_ref().unwrap()),
            1,
            "{how}"
        );
        assert_eq!(port.unreported_in_flight(), 1, "{how}");
        match how {
            "cancel" => port.cancel(id).unwrap(),
            "drop" => drop(h.take()),
            _ => {}
        }
        let mut c = port.get_completion(Some(WAIT)).unwrap();
        assert_eq!(c.id(), id, "{how}");
        let e = c.result().expect_err("it failed");
        match how {
            "deadline" => assert!(proactor::is_deadline(&e), "{how}: {e:?}"),
            _ => assert!(proactor::is_cancelled(&e), "{how}: {e:?}"),
        }
        let sent = c.bytes_transferred();
        assert!(sent < big, "{how}: {c:?}");
        let back = c.take_buffer().expect("its buffer back");
        assert_eq!(mismatch(1, 0, &back), None);
        assert_eq!(port.unreported_in_flight(), 0, "{how}");
        assert_eq!(port.operations_in_flight(), 0, "{how}");
        let read = paced_reader(peer, Rng::new(1));
        drop(h);
        let got = read.join().unwrap();
        check_stream(1, &[(0, sent)], &got).unwrap_or_else(|e| panic!("{how}: {e}"));
    }
}

/// `skip_success` on anything but `send` and `send_pooled` is refused with `InvalidInput`,
/// handing the buffers back; an empty unreported send reports nothing.
#[test]
fn skip_success_applies_to_sends_of_one_buffer_only() {
    let _s = serial();
    let port = LocalPort::new().unwrap();
    let (h, _peer) = pair(&port, each_ip_v4(), 1);
    port.with_user(1)
        .skip_success()
        .recv(&h, Vec::with_capacity(10));
    port.with_user(2)
        .skip_success()
        .send_vectored(&h, vec![b"ab".to_vec(), b"c".to_vec()]);
    port.with_user(3).skip_success().readable(&h);
    port.with_user(4).skip_success().recv_pooled(&h);
    for user in 1..=4 {
        let mut c = port.get_completion(Some(WAIT)).unwrap();
        assert_eq!(c.user(), user);
        let e = c.result().expect_err("refused");
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{c:?}");
        match user {
            1 => assert_eq!(c.take_buffer().map(|b| b.capacity()), Some(10)),
            2 => assert_eq!(c.take_buffers().map(|b| b.concat()), Some(b"abc".to_vec())),
            _ => {}
        }
    }
    port.with_user(5).skip_success().send(&h, Vec::new());
    assert!(
        within(&port, 100).is_none(),
        "an empty send sent everything"
    );
    assert_eq!(port.unreported_in_flight(), 0);
    assert_eq!(port.operations_in_flight(), 0);
}

/// Linux: a handle dropped with an unreported send stuck in the kernel; the next connection
/// takes its descriptor number at once and is sent to, also unreported. The dropped one's send
/// ends reported (cancelled) and counts on no handle; the new connection's peer gets exactly
/// its own bytes, and the old peer's stream ends.
#[cfg(target_os = "linux")]
#[test]
fn a_dropped_handles_unreported_send_leaves_nothing_to_its_descriptor_numbers_next_owner() {
    use std::{
        io::Read,
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
    let id = port
        .with_user(0)
        .skip_success()
        .send(&old, pattern(1, 0, 32 << 20));
    assert!(within(&port, 200).is_none(), "stuck, so in flight");
    assert_eq!(port.unreported_in_flight_on(&old), 1);
    // The next client's socket exists before the close, so the accept below takes the number.
    let new_client = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    drop(old);
    let (new_server, _) = l.accept().unwrap();
    assert_eq!(new_server.as_raw_fd(), old_fd, "the number is reused");
    let new = port.add_handle(new_server, 2).unwrap();
    assert_eq!(
        port.unreported_in_flight_on(&new),
        0,
        "nothing of the old one's"
    );
    port.with_user(8)
        .skip_success()
        .send(&new, pattern(2, 0, 1000));
    let new_read = paced_reader(new_client, Rng::new(2));
    let mut c = port.get_completion(Some(WAIT)).unwrap();
    assert_eq!((c.id(), c.context()), (id, 1), "{c:?}");
    assert!(
        c.result().is_err_and(|e| proactor::is_cancelled(&e)),
        "{c:?}"
    );
    let sent = c.bytes_transferred();
    assert_eq!(mismatch(1, 0, &c.take_buffer().unwrap()), None);
    while port.unreported_in_flight() > 0 {
        let c = within(&port, 50);
        assert!(c.is_none(), "the new send reports nothing: {c:?}");
    }
    drop(new);
    check_stream(2, &[(0, 1000)], &new_read.join().unwrap()).unwrap();
    old_client.set_read_timeout(Some(WAIT)).unwrap();
    let mut old_got = Vec::new();
    old_client
        .read_to_end(&mut old_got)
        .expect("the old stream ends");
    check_stream(1, &[(0, sent)], &old_got).unwrap();
}
