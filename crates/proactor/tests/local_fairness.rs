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
    if port.backend() == "io_uring" && port.setup() != "shared port" {
        // The engine that receives ahead stopped receiving for the flooder.
        assert!(
            port.receive_pauses() > 0,
            "the flooder's receiving was never paused"
        );
    }
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
