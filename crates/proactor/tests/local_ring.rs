//! The io_uring engine of `LocalPort`: pooled echo with an oracle, multishot accept, close with
//! operations in flight, cancel, deadline races, partial sends, nothing leaked.
//!
//! Runs on the default backend; where the port is a shared port (`PROACTOR_BACKEND=epoll`, no
//! io_uring) each test says so and returns. The tests share one lock: they check the process's
//! `live_operations()`.
#![cfg(target_os = "linux")]

use std::{
    collections::HashMap,
    io::{self, Read, Write},
    net::{Shutdown, TcpListener, TcpStream},
    os::fd::AsRawFd,
    sync::Mutex,
    thread,
    time::{Duration, Instant},
};

use proactor::{LocalCompletion, LocalHandle, LocalPort, OpKind};

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// A port with `buffers` x `size` pool, or `None` (said on stderr) on the shared-port engine.
fn ring_port(buffers: u16, size: usize) -> Option<LocalPort> {
    let port = LocalPort::with_pool(buffers, size).expect("a local port");
    if port.setup() == "shared port" {
        eprintln!("local_ring: the port is a shared port here (no ring of its own): skipped");
        return None;
    }
    assert_eq!(port.backend(), "io_uring");
    eprintln!("local_ring: ring setup {}", port.setup());
    Some(port)
}

/// The byte at `pos` of connection `conn`'s stream: no period short enough to hide a
/// misplaced chunk.
fn byte_at(conn: u64, pos: u64) -> u8 {
    let x = (pos ^ (conn << 40)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    (x >> 56) as u8 ^ (pos >> 16) as u8
}

fn pattern(conn: u64, start: u64, len: usize) -> Vec<u8> {
    (0..len as u64).map(|i| byte_at(conn, start + i)).collect()
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// A connected pair: the server side on `port`, the client side plain.
fn pair(port: &LocalPort, context: usize) -> (LocalHandle<TcpStream>, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let client = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (server, _) = l.accept().unwrap();
    (port.add_handle(server, context).unwrap(), client)
}

fn next(port: &LocalPort) -> LocalCompletion {
    port.get_completion(Some(Duration::from_secs(20)))
        .expect("a completion within 20 s")
}

/// Nothing more comes out of the port for a while.
fn assert_quiet(port: &LocalPort) {
    match port.get_completion(Some(Duration::from_millis(50))) {
        Err(e) if e.kind() == io::ErrorKind::TimedOut => {}
        other => panic!("expected no completion, got {other:?}"),
    }
}

#[test]
fn pooled_echo_of_random_sizes_keeps_every_byte_in_order_through_an_empty_pool() {
    let _g = serial();
    let before = proactor::live_operations();
    // 2 buffers of 4 KiB against 4 connections whose reader starts late: the pool runs dry
    // (stalled sends hold buffers, and each connection's receive takes up to two a turn).
    let Some(port) = ring_port(2, 4096) else {
        return;
    };
    const CONNS: usize = 4;
    let listener = port
        .add_handle(TcpListener::bind("127.0.0.1:0").unwrap(), usize::MAX)
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let clients: Vec<_> = (0..CONNS as u64)
        .map(|conn| {
            thread::spawn(move || {
                let mut s = TcpStream::connect(addr).unwrap();
                let mut r = s.try_clone().unwrap();
                let reader = thread::spawn(move || {
                    // Slow at first: the server's sends stall and hold their buffers.
                    thread::sleep(Duration::from_millis(300));
                    let mut pos = 0u64;
                    let mut buf = vec![0u8; 64 * 1024];
                    loop {
                        let n = r.read(&mut buf).unwrap();
                        if n == 0 {
                            return pos;
                        }
                        let want = pattern(conn, pos, n);
                        if buf[..n] != want[..] {
                            let at = (0..n).find(|&i| buf[i] != want[i]).unwrap();
                            panic!("connection {conn}: wrong byte at {}", pos + at as u64);
                        }
                        pos += n as u64;
                    }
                });
                let mut rng = Rng(0x1234_5678 + conn);
                let mut pos = 0u64;
                for _ in 0..10 {
                    // 1 B .. 1 MiB, skewed towards small sizes.
                    let bits = rng.next() % 21;
                    let len = 1 + (rng.next() % (1u64 << bits)) as usize;
                    s.write_all(&pattern(conn, pos, len)).unwrap();
                    pos += len as u64;
                }
                s.shutdown(Shutdown::Write).unwrap();
                let echoed = reader.join().unwrap();
                assert_eq!(echoed, pos, "connection {conn}: echoed length");
                pos
            })
        })
        .collect();
    for _ in 0..CONNS {
        port.accept(&listener);
    }
    let mut conns: HashMap<usize, (LocalHandle<TcpStream>, usize, bool)> = HashMap::new();
    let mut finished = 0;
    let mut next_ctx = 0;
    while finished < CONNS {
        let mut done = next(&port);
        match done.kind() {
            OpKind::Accept => {
                let a = done.take_accepted().expect("an accepted connection");
                let h = port.add_handle(a.stream, next_ctx).unwrap();
                port.recv_pooled(&h);
                conns.insert(next_ctx, (h, 0, false));
                next_ctx += 1;
            }
            OpKind::RecvPooled => {
                let ctx = done.context();
                let n = done.result().expect("a pooled receive");
                let entry = conns.get_mut(&ctx).unwrap();
                match done.take_pooled() {
                    Some(buf) => {
                        assert_eq!(buf.len(), n);
                        assert!(n > 0);
                        port.send_pooled(&entry.0, buf);
                        entry.1 += 1;
                        port.recv_pooled(&entry.0);
                    }
                    None => {
                        assert_eq!(n, 0, "end of stream");
                        entry.2 = true;
                        if entry.1 == 0 {
                            conns.remove(&ctx);
                            finished += 1;
                        }
                    }
                }
            }
            OpKind::SendPooled => {
                let ctx = done.context();
                let buf = done.take_pooled().expect("the sent buffer back");
                assert_eq!(done.result().unwrap(), buf.len(), "a whole pooled send");
                let entry = conns.get_mut(&ctx).unwrap();
                entry.1 -= 1;
                if entry.2 && entry.1 == 0 {
                    conns.remove(&ctx); // closes: the client reads the end of the stream
                    finished += 1;
                }
            }
            other => panic!("unexpected {other:?}: {done:?}"),
        }
    }
    let total: u64 = clients.into_iter().map(|c| c.join().unwrap()).sum();
    assert!(total > 0);
    assert!(
        port.pool_starvations() > 0,
        "the pool never ran dry: the test did not test ENOBUFS"
    );
    eprintln!(
        "echoed {total} bytes; the pool ran dry {} times",
        port.pool_starvations()
    );
    drop(listener);
    drop(port);
    assert_eq!(proactor::live_operations(), before, "records leaked");
}

#[test]
fn multishot_accept_serves_200_clients_and_queues_the_ones_nobody_asked_for() {
    let _g = serial();
    let Some(port) = ring_port(16, 4096) else {
        return;
    };
    let listener = port
        .add_handle(TcpListener::bind("127.0.0.1:0").unwrap(), 7)
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let ids: Vec<_> = (0..200).map(|_| port.accept(&listener)).collect();
    let clients = thread::spawn(move || {
        (0..205)
            .map(|_| TcpStream::connect(addr).unwrap())
            .collect::<Vec<_>>()
    });
    let mut seen = Vec::new();
    let mut locals = Vec::new();
    while seen.len() < 200 {
        let mut done = next(&port);
        assert_eq!(done.kind(), OpKind::Accept);
        assert_eq!(done.context(), 7);
        done.result().expect("an accept");
        let a = done.take_accepted().expect("one connection per accept");
        assert_eq!(a.local_addr, addr);
        seen.push(done.id());
        locals.push(a.stream);
    }
    let mut sorted = seen.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), 200, "each accept completed once");
    assert!(seen.iter().all(|id| ids.contains(id)));
    let clients = clients.join().unwrap();
    // Five more came with no accept asked for: queued on the listener, taken one per accept.
    thread::sleep(Duration::from_millis(100));
    assert_quiet(&port);
    for _ in 0..5 {
        port.accept(&listener);
        let mut done = next(&port);
        assert!(done.take_accepted().is_some());
    }
    assert_eq!(port.operations_in_flight(), 0);
    drop(clients);
}

#[test]
fn a_handle_dropped_with_operations_in_flight_closes_and_its_fd_number_reuse_sees_nothing_old() {
    let _g = serial();
    let Some(port) = ring_port(16, 4096) else {
        return;
    };
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut old_client = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (old_server, _) = l.accept().unwrap();
    let old_fd = old_server.as_raw_fd();
    let old = port.add_handle(old_server, 1).unwrap();
    let pooled = port.recv_pooled(&old);
    // A send that cannot finish: the client does not read.
    let big = port.send(&old, vec![0x55; 32 << 20]);
    thread::sleep(Duration::from_millis(50));
    // The next client's own socket exists before the close (it would take the number).
    let mut new_client = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    drop(old);
    // The connection really closed: the client sees the end of its stream (after the bytes
    // already sent), not a socket kept open by the ring.
    old_client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut sink = vec![0u8; 1 << 20];
    loop {
        match old_client.read(&mut sink) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("the old connection did not close: {e}"),
        }
    }
    // A new connection takes the same descriptor number at once.
    let (new_server, _) = l.accept().unwrap();
    assert_eq!(new_server.as_raw_fd(), old_fd, "the fd number is reused");
    let new = port.add_handle(new_server, 2).unwrap();
    let _ = old_client.write_all(b"OLD OLD OLD");
    new_client.write_all(b"new").unwrap();
    port.recv_pooled(&new);
    let mut got = Vec::new();
    let mut cancelled = 0;
    while got.len() < 3 || cancelled < 2 {
        let mut done = next(&port);
        match done.context() {
            1 => {
                assert!(done.is_cancelled(), "{done:?}");
                assert!(done.id() == pooled || done.id() == big);
                cancelled += 1;
            }
            2 => {
                assert_eq!(done.kind(), OpKind::RecvPooled);
                got.extend_from_slice(&done.take_pooled().expect("data"));
                if got.len() < 3 {
                    port.recv_pooled(&new);
                }
            }
            c => panic!("context {c}"),
        }
    }
    assert_eq!(got, b"new", "no byte of the old connection");
    assert_quiet(&port);
}

#[test]
fn a_cancelled_pooled_receive_has_no_buffer_and_the_data_waits_for_the_next() {
    let _g = serial();
    let Some(port) = ring_port(16, 4096) else {
        return;
    };
    let (conn, mut client) = pair(&port, 3);
    let id = port.recv_pooled(&conn);
    port.cancel(id).unwrap();
    let mut done = next(&port);
    assert_eq!(done.id(), id);
    assert!(done.is_cancelled());
    assert!(done.take_pooled().is_none());
    assert_eq!(port.cancel(id).unwrap_err().kind(), io::ErrorKind::NotFound);
    // The last pooled receive's cancel stopped the handle's multishot receive: nothing was
    // received ahead, so a plain receive takes the next bytes.
    port.recv(&conn, Vec::with_capacity(16));
    client.write_all(b"plain").unwrap();
    let mut done = next(&port);
    assert_eq!(done.take_buffer().as_deref(), Some(&b"plain"[..]));
    // A plain receive beside a waiting pooled one would take bytes out of order: refused.
    let id = port.recv_pooled(&conn);
    port.recv(&conn, Vec::with_capacity(16));
    let done = next(&port);
    assert_eq!(
        done.result().unwrap_err().kind(),
        io::ErrorKind::InvalidInput
    );
    client.write_all(b"hello").unwrap();
    let mut done = next(&port);
    assert_eq!(done.id(), id);
    assert_eq!(&done.take_pooled().unwrap()[..], b"hello");
    // cancel_all ends a waiting pooled receive too.
    let id = port.recv_pooled(&conn);
    port.cancel_all(&conn).unwrap();
    let done = next(&port);
    assert_eq!(done.id(), id);
    assert!(done.is_cancelled());
    client.write_all(b"again").unwrap();
    port.recv_pooled(&conn);
    let mut done = next(&port);
    assert_eq!(&done.take_pooled().unwrap()[..], b"again");
    assert_eq!(port.operations_in_flight(), 0);
}

#[test]
fn deadline_and_completion_race_gives_exactly_one_completion_and_loses_no_byte() {
    let _g = serial();
    let Some(port) = ring_port(64, 4096) else {
        return;
    };
    let (pooled_conn, mut pooled_client) = pair(&port, 1);
    let (plain_conn, mut plain_client) = pair(&port, 2);
    let mut rng = Rng(99);
    let (mut got_pooled, mut got_plain) = (0usize, 0usize);
    let (mut deadlines, mut data) = (0, 0);
    const ROUNDS: usize = 150;
    for _ in 0..ROUNDS {
        let after = Duration::from_micros(rng.next() % 300);
        let a = port.with_timeout(after).recv_pooled(&pooled_conn);
        let b = port
            .with_timeout(after)
            .recv(&plain_conn, Vec::with_capacity(64));
        thread::sleep(Duration::from_micros(rng.next() % 300));
        pooled_client.write_all(b"x").unwrap();
        plain_client.write_all(b"y").unwrap();
        let mut ends = HashMap::new();
        while ends.len() < 2 {
            let mut done = next(&port);
            assert!(
                done.id() == a || done.id() == b,
                "a stray completion {done:?}"
            );
            assert!(
                ends.insert(done.id(), ()).is_none(),
                "two completions for one op"
            );
            match done.result() {
                Ok(n) => {
                    data += 1;
                    if done.id() == a {
                        got_pooled += done.take_pooled().map_or(0, |b| b.len());
                        assert!(n > 0);
                    } else {
                        got_plain += done.take_buffer().unwrap().len();
                    }
                }
                Err(e) => {
                    assert!(proactor::is_deadline(&e), "{e:?}");
                    assert_eq!(e.kind(), io::ErrorKind::TimedOut);
                    deadlines += 1;
                }
            }
        }
    }
    assert_quiet(&port);
    // What the deadlines left in the sockets (or, pooled, queued) is still there, in order.
    while got_pooled < ROUNDS {
        port.recv_pooled(&pooled_conn);
        let mut done = next(&port);
        let buf = done.take_pooled().expect("queued data");
        assert!(buf.iter().all(|&c| c == b'x'));
        got_pooled += buf.len();
    }
    while got_plain < ROUNDS {
        port.recv(&plain_conn, Vec::with_capacity(ROUNDS));
        let mut done = next(&port);
        got_plain += done.take_buffer().unwrap().len();
    }
    assert_eq!((got_pooled, got_plain), (ROUNDS, ROUNDS));
    eprintln!("{deadlines} deadlines, {data} data completions");
    assert_eq!(port.operations_in_flight(), 0);
}

#[test]
fn large_sends_to_a_slow_reader_go_out_whole_and_in_order() {
    let _g = serial();
    let Some(port) = ring_port(16, 4096) else {
        return;
    };
    let (conn, client) = pair(&port, 1);
    const LEN: usize = 6 << 20;
    let a = port.send(&conn, pattern(1, 0, LEN));
    let b = port.send(&conn, pattern(1, LEN as u64, LEN));
    let reader = thread::spawn(move || {
        let mut client = client;
        thread::sleep(Duration::from_millis(200));
        let mut got = vec![0u8; 2 * LEN];
        let mut at = 0;
        while at < got.len() {
            let end = (at + 3000).min(got.len());
            let n = client.read(&mut got[at..end]).unwrap();
            assert!(n > 0);
            at += n;
        }
        got
    });
    let first = next(&port);
    assert_eq!(first.id(), a, "sends complete in order");
    assert_eq!(first.result().unwrap(), LEN);
    let second = next(&port);
    assert_eq!(second.id(), b);
    assert_eq!(second.result().unwrap(), LEN);
    let got = reader.join().unwrap();
    assert!(
        got == pattern(1, 0, 2 * LEN),
        "the bytes arrived whole, in order"
    );
}

#[test]
fn dropping_the_port_with_operations_in_flight_frees_every_record() {
    let _g = serial();
    let before = proactor::live_operations();
    let Some(port) = ring_port(16, 4096) else {
        return;
    };
    let (conn, _client) = pair(&port, 1);
    let (other, _other_client) = pair(&port, 2);
    port.recv_pooled(&conn);
    port.recv(&other, Vec::with_capacity(100));
    port.timer(Duration::from_secs(60));
    port.with_timeout(Duration::from_secs(60))
        .send(&other, vec![1; 64 << 20]);
    // The ring counts its operations in at each dequeue (none completes yet).
    assert_quiet(&port);
    assert!(proactor::live_operations() > before);
    thread::sleep(Duration::from_millis(20));
    drop(port);
    drop(conn);
    drop(other);
    assert_eq!(proactor::live_operations(), before);
}

#[test]
fn timers_fire_and_cancelled_timers_say_so() {
    let _g = serial();
    let Some(port) = ring_port(16, 4096) else {
        return;
    };
    let start = Instant::now();
    let t = port.timer(Duration::from_millis(30));
    let long = port.timer(Duration::from_secs(60));
    let done = next(&port);
    assert_eq!((done.id(), done.kind()), (t, OpKind::Timer));
    assert_eq!(done.result().unwrap(), 0);
    assert!(start.elapsed() >= Duration::from_millis(30));
    port.cancel(long).unwrap();
    let done = next(&port);
    assert_eq!(done.id(), long);
    assert!(done.is_cancelled());
    port.post(5, 6);
    let done = next(&port);
    assert_eq!((done.context(), done.bytes_transferred()), (5, 6));
}

#[test]
fn a_send_cancelled_too_late_reports_every_byte_it_sent() {
    let _g = serial();
    let Some(port) = ring_port(16, 4096) else {
        return;
    };
    let (conn, mut client) = pair(&port, 1);
    // The cancel is queued behind the send: the kernel sends first, then finds nothing to
    // cancel. The completion must say what went out, not 0.
    let id = port.send(&conn, vec![7; 100]);
    port.cancel(id).unwrap();
    let done = next(&port);
    assert_eq!(done.id(), id);
    let mut got = vec![0u8; 100];
    client.read_exact(&mut got).unwrap();
    assert_eq!(got, vec![7; 100]);
    match done.result() {
        Ok(n) => assert_eq!(n, 100),
        Err(e) => {
            assert!(proactor::is_cancelled(&e));
            assert_eq!(done.bytes_transferred(), 100, "a cancelled send's bytes");
        }
    }
}

#[test]
fn a_deadline_passes_while_the_operation_waits_for_its_lane() {
    let _g = serial();
    let Some(port) = ring_port(16, 4096) else {
        return;
    };
    let (conn, _client) = pair(&port, 1);
    // The client never reads: this send holds the send lane for good.
    let stuck = port.send(&conn, vec![1; 64 << 20]);
    let start = Instant::now();
    let late = port
        .with_timeout(Duration::from_millis(50))
        .send(&conn, b"after".to_vec());
    let mut done = next(&port);
    assert_eq!(done.id(), late);
    let e = done.result().unwrap_err();
    assert!(proactor::is_deadline(&e), "{e:?}");
    assert_eq!(done.take_buffer().as_deref(), Some(&b"after"[..]));
    assert!(start.elapsed() < Duration::from_secs(5));
    port.cancel(stuck).unwrap();
    let done = next(&port);
    assert_eq!(done.id(), stuck);
    assert!(done.is_cancelled());
    assert_quiet(&port);
}

#[test]
fn readiness_connect_vectored_operations_and_unix_accept_run_on_the_ring() {
    let _g = serial();
    let Some(port) = ring_port(16, 4096) else {
        return;
    };
    // connect (a record on the raw descriptor), then vectored send and receive.
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let sock = port.add_handle(sock, 1).unwrap();
    let id = port.connect(&sock, l.local_addr().unwrap());
    // SQEs go to the kernel when the port is next polled: accept on another thread.
    let acceptor = thread::spawn(move || l.accept().unwrap().0);
    let done = next(&port);
    let mut peer = acceptor.join().unwrap();
    assert_eq!((done.id(), done.kind()), (id, OpKind::Connect));
    done.result().unwrap();
    port.send_vectored(&sock, vec![b"ab".to_vec(), b"cde".to_vec()]);
    assert_eq!(next(&port).result().unwrap(), 5);
    let mut got = [0u8; 5];
    peer.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"abcde");
    // readiness: nothing there yet, then data.
    let r = port.readable(&sock);
    assert_quiet(&port);
    peer.write_all(b"xyz").unwrap();
    let done = next(&port);
    assert_eq!(
        (done.id(), done.kind(), done.result().unwrap()),
        (r, OpKind::Readable, 0)
    );
    port.recv_vectored(&sock, vec![Vec::with_capacity(1), Vec::with_capacity(8)]);
    let mut done = next(&port);
    assert_eq!(done.result().unwrap(), 3);
    assert_eq!(
        done.take_buffers().unwrap(),
        vec![b"x".to_vec(), b"yz".to_vec()]
    );
    // A Unix-domain listener's multishot accept.
    let dir = std::env::temp_dir().join(format!("proactor-ring-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&dir);
    let ul = port
        .add_handle(std::os::unix::net::UnixListener::bind(&dir).unwrap(), 9)
        .unwrap();
    port.accept(&ul);
    let _client = std::os::unix::net::UnixStream::connect(&dir).unwrap();
    let done = next(&port);
    assert_eq!((done.kind(), done.context()), (OpKind::Accept, 9));
    done.result().unwrap();
    let _ = std::fs::remove_file(&dir);
    assert_eq!(port.operations_in_flight(), 0);
}

#[test]
fn a_pooled_receive_beside_a_receive_with_a_buffer_is_refused_but_not_beside_readiness() {
    let _g = serial();
    let Some(port) = ring_port(16, 4096) else {
        return;
    };
    let (conn, mut client) = pair(&port, 1);
    let plain = port.recv(&conn, Vec::with_capacity(8));
    let pooled = port.recv_pooled(&conn);
    let done = next(&port);
    assert_eq!(done.id(), pooled);
    assert_eq!(
        done.result().unwrap_err().kind(),
        io::ErrorKind::InvalidInput
    );
    client.write_all(b"one").unwrap();
    let mut done = next(&port);
    assert_eq!(done.id(), plain);
    assert_eq!(done.take_buffer().unwrap(), b"one");
    // A readiness wait takes no bytes: a pooled receive beside it runs.
    let ready = port.readable(&conn);
    let pooled = port.recv_pooled(&conn);
    client.write_all(b"two").unwrap();
    let mut got = Vec::new();
    for _ in 0..2 {
        let mut done = next(&port);
        done.result().unwrap();
        if done.id() == pooled {
            got.extend_from_slice(&done.take_pooled().unwrap());
        } else {
            assert_eq!(done.id(), ready);
        }
    }
    assert_eq!(got, b"two");
}

/// The ring adds its operations to `live_operations()` once per `get_completions` call (and
/// when dropped) rather than per operation: the count is right at each of those points, and
/// operations the user never dequeued still come back to 0 when the port drops.
#[test]
fn live_operations_are_counted_at_each_dequeue_and_at_drop() {
    let _g = serial();
    let Some(port) = ring_port(16, 256) else {
        return;
    };
    let base = proactor::live_operations();
    let (a, mut peer) = pair(&port, 1);
    let (b, _peer_b) = pair(&port, 2);
    port.recv_pooled(&a);
    port.recv(&b, Vec::with_capacity(64));
    port.timer(Duration::from_secs(60));
    let mut batch = Vec::new();
    let err = port
        .get_completions(&mut batch, 8, Some(Duration::from_millis(20)))
        .unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    assert_eq!(proactor::live_operations(), base + 3, "three in flight");

    peer.write_all(b"x").unwrap();
    let done = port.get_completion(Some(Duration::from_secs(5))).unwrap();
    assert_eq!(done.kind(), OpKind::RecvPooled);
    assert_eq!(
        proactor::live_operations(),
        base + 2,
        "the receive completed"
    );
    drop(done);

    // Started and never dequeued: the drop cancels them and the count comes back down.
    port.send(&a, b"y".to_vec());
    drop((a, b));
    drop(port);
    assert_eq!(
        proactor::live_operations(),
        base,
        "nothing left once the port dropped"
    );
}

/// Waits a little for a completion that must not come: the ring brings `live_operations()` up
/// to date at the end of the call.
fn publish(port: &LocalPort) {
    let mut batch = Vec::new();
    match port.get_completions(&mut batch, 8, Some(Duration::from_millis(20))) {
        Err(e) if e.kind() == io::ErrorKind::TimedOut => {}
        other => panic!("expected no completion, got {other:?} {batch:?}"),
    }
}

/// A rare operation (on the ring, a record of the shared backend inside a slab entry) is one
/// operation: counted once in `live_operations()` on every engine, not once for its record and
/// once more for its entry.
#[test]
fn a_record_operation_counts_once() {
    let _g = serial();
    let port = LocalPort::with_pool(16, 256).unwrap();
    let base = proactor::live_operations();
    let (a, mut peer) = pair(&port, 1);
    // Nothing to receive yet: it stays in the kernel.
    let id = port.recv_vectored(&a, vec![Vec::with_capacity(4), Vec::with_capacity(4)]);
    publish(&port);
    assert_eq!(port.operations_in_flight(), 1);
    assert_eq!(
        proactor::live_operations(),
        base + 1,
        "one vectored receive"
    );
    port.readable(&a);
    publish(&port);
    assert_eq!(
        proactor::live_operations(),
        base + 2,
        "and one readiness wait"
    );
    peer.write_all(b"abcdef").unwrap();
    let first = next(&port);
    assert_eq!((first.id(), first.result().unwrap()), (id, 6));
    assert_eq!(
        proactor::live_operations(),
        base + 1,
        "the readiness wait (behind it)"
    );
    drop(first);
    peer.write_all(b"g").unwrap();
    assert_eq!(next(&port).kind(), OpKind::Readable);
    assert_eq!(proactor::live_operations(), base, "both done");
    drop(a);
    drop(port);
    assert_eq!(proactor::live_operations(), base);
}

/// A pooled receive with a deadline, completed by data, keeps its entry until its deadline's
/// timeout is removed: meanwhile its id is no longer cancellable (`NotFound`), and nothing of it
/// stays counted.
#[test]
fn cancel_of_a_completed_operation_whose_entry_waits_for_its_timer_is_not_found() {
    let _g = serial();
    let Some(port) = ring_port(16, 256) else {
        return;
    };
    let base = proactor::live_operations();
    let (a, mut peer) = pair(&port, 1);
    let id = port.with_timeout(Duration::from_secs(60)).recv_pooled(&a);
    let timer = port.timer(Duration::from_secs(60));
    publish(&port);
    assert_eq!(proactor::live_operations(), base + 2);
    peer.write_all(b"x").unwrap();
    let done = next(&port);
    assert_eq!((done.id(), done.result().unwrap()), (id, 1));
    // Its timeout's removal is queued, not yet submitted: the entry is still there.
    let e = port.cancel(id).expect_err("a completed operation");
    assert_eq!(e.kind(), io::ErrorKind::NotFound);
    assert_eq!(proactor::live_operations(), base + 1, "the timer only");
    // The timer, still in flight, is cancellable; the receive still is not.
    port.cancel(timer).unwrap();
    let t = next(&port);
    assert_eq!(t.id(), timer);
    assert!(t.result().is_err());
    assert_eq!(port.cancel(id).unwrap_err().kind(), io::ErrorKind::NotFound);
    assert_eq!(
        port.cancel(timer).unwrap_err().kind(),
        io::ErrorKind::NotFound
    );
    publish(&port);
    assert_eq!(proactor::live_operations(), base);
    assert_eq!(port.operations_in_flight(), 0);
    drop((done, a));
    drop(port);
    assert_eq!(proactor::live_operations(), base);
}

/// Operations refused at once (another port's handle, a receive with no room, a vectored
/// receive with no room) never count, before or after their completions are dequeued.
#[test]
fn refused_operations_never_count() {
    let _g = serial();
    let Some(port) = ring_port(16, 256) else {
        return;
    };
    let Some(other) = ring_port(16, 256) else {
        return;
    };
    let base = proactor::live_operations();
    let (a, _peer) = pair(&port, 1);
    let (foreign, _fpeer) = pair(&other, 2);
    let ids = [
        port.recv(&foreign, Vec::with_capacity(8)),
        port.recv_pooled(&foreign),
        port.recv(&a, Vec::new()),
        port.recv_vectored(&a, vec![Vec::new()]),
    ];
    assert_eq!(proactor::live_operations(), base);
    let mut batch = Vec::new();
    port.get_completions(&mut batch, 16, Some(Duration::from_secs(5)))
        .unwrap();
    assert_eq!(batch.len(), ids.len(), "{batch:?}");
    for c in &batch {
        assert!(ids.contains(&c.id()));
        assert!(c.result().is_err(), "{c:?}");
        assert_eq!(
            port.cancel(c.id()).unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
    }
    assert_eq!(proactor::live_operations(), base);
    publish(&port);
    assert_eq!(proactor::live_operations(), base);
    drop(batch);
    drop((a, foreign));
    drop((port, other));
    assert_eq!(proactor::live_operations(), base);
}

/// A port that is never asked for a completion: its operations are never counted, and its
/// drop (which cancels and reaps them) leaves the count where it was.
#[test]
fn a_port_never_dequeued_leaves_the_count_where_it_was() {
    let _g = serial();
    let Some(port) = ring_port(16, 256) else {
        return;
    };
    let base = proactor::live_operations();
    let (a, _peer) = pair(&port, 1);
    port.recv_pooled(&a);
    port.recv_pooled(&a);
    port.timer(Duration::from_secs(60));
    port.with_timeout(Duration::from_secs(60)).readable(&a);
    port.recv_vectored(&a, vec![Vec::with_capacity(4)]);
    assert_eq!(port.operations_in_flight(), 5);
    // The record of the vectored receive is counted by itself.
    assert!(proactor::live_operations() <= base + 1);
    drop(a);
    drop(port);
    assert_eq!(proactor::live_operations(), base);
}

/// Ports on several threads at once, each starting, completing, cancelling and dropping
/// operations: the process-wide count never wraps below 0 and returns to where it was.
#[test]
fn ports_on_several_threads_bring_the_count_back() {
    let _g = serial();
    let base = proactor::live_operations();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let stop = stop.clone();
        thread::spawn(move || {
            let mut most = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                most = most.max(proactor::live_operations());
                thread::yield_now();
            }
            most
        })
    };
    let workers: Vec<_> = (0..4)
        .map(|t| {
            thread::spawn(move || {
                let port = LocalPort::with_pool(16, 256).unwrap();
                let (a, mut peer) = pair(&port, t);
                for round in 0..50 {
                    let timer = port.timer(Duration::from_secs(60));
                    let pooled = port.recv_pooled(&a);
                    let vectored = port.send_vectored(&a, vec![vec![round as u8; 3]]);
                    let mut left = vec![timer, pooled, vectored];
                    if round % 2 == 0 {
                        take(&port, &mut left, Duration::from_millis(1));
                    }
                    port.cancel(timer).unwrap();
                    peer.write_all(b"y").unwrap();
                    while !left.is_empty() {
                        take(&port, &mut left, Duration::from_secs(20));
                    }
                    let mut echoed = [0u8; 3];
                    peer.read_exact(&mut echoed).unwrap();
                    assert_eq!(echoed, [round as u8; 3]);
                }
                // Left in flight for the drop.
                port.recv_pooled(&a);
                port.timer(Duration::from_secs(60));
                if t % 2 == 0 {
                    let mut none = vec![];
                    take(&port, &mut none, Duration::from_millis(1));
                }
                drop(a);
                drop(port);
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let most = watcher.join().unwrap();
    // Each thread has at most 3 operations in flight.
    assert!(
        most <= base + 4 * 3,
        "the count went to {most} (base {base})"
    );
    assert_eq!(proactor::live_operations(), base);
}

/// Waits at most `wait` for completions, each of which must be one of `left` (taken off it).
fn take(port: &LocalPort, left: &mut Vec<proactor::OpId>, wait: Duration) {
    let mut batch = Vec::new();
    match port.get_completions(&mut batch, 8, Some(wait)) {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::TimedOut => {}
        Err(e) => panic!("{e}"),
    }
    for c in batch {
        let at = left.iter().position(|&id| id == c.id());
        assert!(at.is_some(), "{c:?} not among {left:?}");
        left.swap_remove(at.unwrap());
    }
}

/// Records that wait for their lane and end there (cancelled, or their deadline passing) or
/// run after it: each counts once while it waits and nothing once it completed.
#[test]
fn records_waiting_for_their_lane_count_once_and_not_after() {
    let _g = serial();
    let Some(port) = ring_port(16, 4096) else {
        return;
    };
    let base = proactor::live_operations();
    let (conn, client) = pair(&port, 1);
    // The client does not read yet: this send holds the send lane.
    let stuck = port.send(&conn, vec![1; 64 << 20]);
    let cancelled = port.send_vectored(&conn, vec![b"ab".to_vec()]);
    let late = port
        .with_timeout(Duration::from_millis(30))
        .send_vectored(&conn, vec![b"cd".to_vec()]);
    let runs = port.send_vectored(&conn, vec![b"ef".to_vec()]);
    publish(&port);
    assert_eq!(proactor::live_operations(), base + 4);
    port.cancel(cancelled).unwrap();
    let c = next(&port);
    assert_eq!(c.id(), cancelled);
    assert!(c.is_cancelled());
    assert_eq!(proactor::live_operations(), base + 3);
    let c = next(&port);
    assert_eq!(c.id(), late);
    assert!(proactor::is_deadline(&c.result().unwrap_err()));
    assert_eq!(proactor::live_operations(), base + 2);
    port.cancel(stuck).unwrap();
    let reader = thread::spawn(move || {
        let mut client = client;
        let mut got = Vec::new();
        client.read_to_end(&mut got).unwrap();
        got
    });
    let mut ids = vec![next(&port).id(), next(&port).id()];
    ids.sort();
    let mut want = vec![stuck, runs];
    want.sort();
    assert_eq!(ids, want);
    assert_eq!(proactor::live_operations(), base);
    // What the stuck send sent, then "ef".
    drop(conn);
    let got = reader.join().unwrap();
    assert!(got.ends_with(b"ef"));
    assert!(got[..got.len() - 2].iter().all(|&b| b == 1));
    publish(&port);
    assert_eq!(proactor::live_operations(), base);
    drop(port);
    assert_eq!(proactor::live_operations(), base);
}

/// `PROACTOR_RING_SETUP` and `PROACTOR_RING_RECV_LIMIT` (the test command runs the port's
/// suites again as on older kernels: without the receive limit, from `coop_taskrun`, from
/// `plain`): the ring takes the setup asked for, and no limit when asked for none. Every
/// kernel that builds a ring at all (6.0+) takes `coop_taskrun` (5.19) and `plain`, so a setup
/// other than the one asked for means the variable was ignored.
#[test]
fn the_ring_takes_the_setup_and_limit_asked_for() {
    let _serial = serial();
    let Some(port) = ring_port(64, 4096) else {
        return;
    };
    let setups = ["single_issuer+defer_taskrun", "coop_taskrun", "plain"];
    assert!(setups.contains(&port.setup()), "{}", port.setup());
    match std::env::var("PROACTOR_RING_SETUP") {
        Ok(asked) if !asked.is_empty() => assert_eq!(port.setup(), asked),
        _ => eprintln!("local_ring: best setup the kernel takes: {}", port.setup()),
    }
    if std::env::var("PROACTOR_RING_RECV_LIMIT").as_deref() == Ok("off") {
        assert_eq!(port.recv_limit(), None);
    }
}
