//! One connection that sends without end while its owner stops asking for data must not take
//! the port's whole pool: the other connections keep being served.
//!
//! Before the fix, the io_uring engine's multishot receive kept filling pool buffers for a
//! handle nobody received from, until the pool was empty and every other pooled receive waited
//! forever.

use std::{
    io::{ErrorKind, Read, Write},
    net::{TcpListener, TcpStream},
    thread,
    time::{Duration, Instant},
};

use proactor::{LocalPort, OpKind};

#[test]
fn a_flooding_connection_nobody_reads_leaves_the_pool_to_the_others() {
    // 16 buffers of 1 KiB: the flood alone would fill them within milliseconds.
    let port = LocalPort::with_pool(16, 1024).unwrap();
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let listener = port.add_handle(l, 0).unwrap();

    // The flooder: sends 4 MiB as fast as the server's socket takes it, then stops.
    let flood = thread::spawn(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        let chunk = vec![0xAB; 64 * 1024];
        let until = Instant::now() + Duration::from_secs(20);
        let mut sent = 0;
        s.set_write_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        while sent < 4 << 20 && Instant::now() < until {
            match s.write(&chunk) {
                Ok(n) => sent += n,
                // Full socket buffers: the server is not reading (yet).
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    thread::sleep(Duration::from_millis(10))
                }
                // The server closed it (the test's end, on a loaded machine before the flood
                // was all sent): nothing more to send.
                Err(_) => break,
            }
        }
        s
    });
    port.accept(&listener);
    let mut done = port.get_completion(Some(Duration::from_secs(10))).unwrap();
    assert_eq!(done.kind(), OpKind::Accept);
    let flooder = port
        .add_handle(done.take_accepted().unwrap().stream, 1)
        .unwrap();
    // One pooled receive on the flooder, then none: its data is nobody's business for now.
    port.recv_pooled(&flooder);
    let mut done = port.get_completion(Some(Duration::from_secs(10))).unwrap();
    assert_eq!((done.kind(), done.context()), (OpKind::RecvPooled, 1));
    drop(done.take_pooled());
    // Give the flood time to fill whatever the engine would fill (the port runs only while
    // its thread dequeues: on io_uring with deferred task work, receives run then).
    let until = Instant::now() + Duration::from_millis(300);
    while Instant::now() < until {
        if let Ok(done) = port.get_completion(Some(Duration::from_millis(20))) {
            panic!("nothing was asked for: {done:?}");
        }
    }

    // The well-behaved client: 200 echoes of 100 bytes.
    let client = thread::spawn(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        for i in 0..200u32 {
            let msg = vec![(i % 251) as u8; 100];
            s.write_all(&msg).unwrap();
            let mut back = vec![0; 100];
            s.read_exact(&mut back).expect("the echo came back");
            assert_eq!(back, msg);
        }
    });
    port.accept(&listener);
    let mut conn = None;
    let deadline = Instant::now() + Duration::from_secs(15);
    while !client.is_finished() {
        assert!(
            Instant::now() < deadline,
            "the second connection was starved of pool buffers"
        );
        let mut done = match port.get_completion(Some(Duration::from_millis(100))) {
            Ok(done) => done,
            Err(e) if e.kind() == ErrorKind::TimedOut => continue,
            Err(e) => panic!("{e}"),
        };
        match done.kind() {
            OpKind::Accept => {
                let c = port
                    .add_handle(done.take_accepted().unwrap().stream, 2)
                    .unwrap();
                port.recv_pooled(&c);
                conn = Some(c);
            }
            OpKind::RecvPooled if done.context() == 2 => {
                let c = conn.as_ref().unwrap();
                match done.take_pooled() {
                    Some(data) => {
                        port.send_pooled(c, data);
                        port.recv_pooled(c);
                    }
                    None => break,
                }
            }
            _ => {}
        }
    }
    client.join().unwrap();
    // (The ring never receives far ahead: with the kernel's receive limit an arming ends by
    // itself after two buffers, without it each arming is one single-shot receive, and neither
    // is renewed with no receive waiting. Nothing is left to pause.)
    // The flooder's data was never lost: it is still there to receive, in order.
    let mut got = 0usize;
    while got < 64 * 1024 {
        port.recv_pooled(&flooder);
        let mut done = loop {
            let d = port.get_completion(Some(Duration::from_secs(10))).unwrap();
            if d.context() == 1 {
                break d;
            }
        };
        let data = done.take_pooled().expect("flood data");
        assert!(data.iter().all(|&b| b == 0xAB));
        got += data.len();
    }
    drop(flooder);
    drop(flood.join().unwrap());
}

/// Found through proactor-echo: a program that cancels its multishot pooled receive (its
/// sends to a peer that does not read pile up) left the handle's own multishot receive armed,
/// which went on taking buffers for nobody, up to 8 per handle: a few such peers took the
/// whole pool, and every other connection waited for a buffer. The last pooled receive's
/// cancel now stops the handle's receiving; what the peer sends meanwhile waits in the socket
/// (checked: nothing lost, in order).
#[test]
fn a_cancelled_multishot_receive_takes_no_more_pool_buffers() {
    a_stopped_multishot_receive_takes_no_more_pool_buffers(Stop::Cancel);
}

/// The same when it stops at its deadline, or by `cancel_all`.
#[test]
fn a_timed_out_or_all_cancelled_multishot_receive_takes_no_more_pool_buffers() {
    a_stopped_multishot_receive_takes_no_more_pool_buffers(Stop::Deadline);
    a_stopped_multishot_receive_takes_no_more_pool_buffers(Stop::CancelAll);
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Stop {
    Cancel,
    Deadline,
    CancelAll,
}

fn a_stopped_multishot_receive_takes_no_more_pool_buffers(stop: Stop) {
    // 8 buffers: what one handle could queue ahead before the fix.
    let port = LocalPort::with_pool(8, 1024).unwrap();
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let listener = port.add_handle(l, 0).unwrap();
    let accept = |context| {
        port.accept(&listener);
        let mut done = port.get_completion(Some(Duration::from_secs(10))).unwrap();
        assert_eq!(done.kind(), OpKind::Accept);
        let stream = done.take_accepted().unwrap().stream;
        port.add_handle(stream, context).unwrap()
    };
    let mut paused_client = TcpStream::connect(addr).unwrap();
    let paused = accept(1);
    let mut other_client = TcpStream::connect(addr).unwrap();
    other_client
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let other = accept(2);

    let id = match stop {
        Stop::Deadline => port
            .with_timeout(Duration::from_millis(300))
            .recv_multishot(&paused),
        _ => port.recv_multishot(&paused),
    };
    paused_client.write_all(b"first").unwrap();
    let mut done = port.get_completion(Some(Duration::from_secs(10))).unwrap();
    assert_eq!(
        (done.id(), done.take_pooled().as_deref()),
        (id, Some(&b"first"[..]))
    );
    match stop {
        Stop::Cancel => port.cancel(id).unwrap(),
        Stop::CancelAll => port.cancel_all(&paused).unwrap(),
        Stop::Deadline => {}
    }
    loop {
        let done = port.get_completion(Some(Duration::from_secs(10))).unwrap();
        assert_eq!(done.id(), id, "{done:?}");
        if !done.more() {
            let e = done.result().unwrap_err();
            match stop {
                Stop::Deadline => assert!(proactor::is_deadline(&e), "{e}"),
                _ => assert!(proactor::is_cancelled(&e), "{e}"),
            }
            break;
        }
    }
    // 16 KiB to nobody: before the fix the paused handle took all 8 buffers for them.
    let flood: Vec<u8> = (0..16 << 10).map(|i| (i % 251) as u8).collect();
    paused_client.write_all(&flood).unwrap();
    let until = Instant::now() + Duration::from_millis(300);
    while Instant::now() < until {
        if let Ok(done) = port.get_completion(Some(Duration::from_millis(20))) {
            panic!("nothing was asked for: {done:?}");
        }
    }

    // The other connection still gets a buffer.
    port.recv_pooled(&other);
    other_client.write_all(b"ping").unwrap();
    let mut done = port
        .get_completion(Some(Duration::from_secs(5)))
        .unwrap_or_else(|e| panic!("{stop:?}: the other connection waited for a buffer: {e}"));
    assert_eq!(done.context(), 2);
    assert_eq!(done.take_pooled().as_deref(), Some(&b"ping"[..]));
    drop(done);

    // Nothing of what came meanwhile was lost.
    let id = port.recv_multishot(&paused);
    let mut got = Vec::new();
    while got.len() < flood.len() {
        let mut done = port.get_completion(Some(Duration::from_secs(10))).unwrap();
        assert_eq!(done.id(), id, "{done:?}");
        got.extend_from_slice(&done.take_pooled().expect("data"));
    }
    assert_eq!(got, flood);
}

/// Found by review (proactor-echo's memory with clients that never read): one call of
/// `get_completions` could bring a handle whatever its socket received meanwhile, since the
/// kernel runs a multishot receive again and again while a fast peer keeps the socket full:
/// megabytes in one batch, which a program that had stopped receiving (its backlog full) then
/// had to keep. Where the port bounds it ([`LocalPort::recv_limit`]), no call brings one handle
/// more than that, and the stream still arrives whole and in order.
#[test]
fn one_call_brings_a_handle_no_more_than_the_receive_limit() {
    const TOTAL: usize = 2 << 20;
    let port = LocalPort::with_pool(256, 4096).unwrap();
    let Some(limit) = port.recv_limit() else {
        eprintln!(
            "{} ({}): no receive limit, skipped",
            port.backend(),
            port.setup()
        );
        return;
    };
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let byte = |i: usize| (i % 251) as u8;
    let writer = thread::spawn(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        let data: Vec<u8> = (0..TOTAL).map(byte).collect();
        s.write_all(&data).unwrap();
    });
    let (server, _) = l.accept().unwrap();
    let h = port.add_handle(server, 7).unwrap();
    let id = port.recv_multishot(&h);
    let (mut got, mut batch, mut most) = (Vec::with_capacity(TOTAL), Vec::new(), 0);
    let until = Instant::now() + Duration::from_secs(60);
    'stream: while Instant::now() < until {
        // The peer refills the socket meanwhile: unbounded, the next call would take it all.
        thread::sleep(Duration::from_millis(2));
        batch.clear();
        port.get_completions(&mut batch, 1024, Some(Duration::from_secs(10)))
            .unwrap();
        let mut this_call = 0;
        for c in &mut batch {
            assert_eq!(c.id(), id, "{c:?}");
            let n = c.result().unwrap();
            if n == 0 {
                assert!(!c.more(), "EOF ends the receive");
                break 'stream;
            }
            got.extend_from_slice(&c.take_pooled().expect("data"));
            this_call += n;
        }
        most = most.max(this_call);
        assert!(
            this_call <= limit,
            "one call brought the handle {this_call} bytes, over the limit of {limit}"
        );
    }
    writer.join().unwrap();
    assert_eq!(
        got.len(),
        TOTAL,
        "the whole stream, then EOF (most in one call: {most})"
    );
    assert!(
        got.iter().enumerate().all(|(i, &b)| b == byte(i)),
        "in order, intact"
    );
}
