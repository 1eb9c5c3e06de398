//! A first end-to-end check of LocalPort: accept, pooled echo, EOF.
use proactor::{LocalPort, OpKind};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};

#[test]
fn pooled_echo_round_trips() {
    let port = LocalPort::with_pool(4, 64).unwrap();
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let listener = port.add_handle(l, 0).unwrap();
    port.accept(&listener);
    let client = std::thread::spawn(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        let data: Vec<u8> = (0..10_000u32).map(|i| (i * 7 % 251) as u8).collect();
        s.write_all(&data).unwrap();
        s.shutdown(std::net::Shutdown::Write).unwrap();
        let mut back = Vec::new();
        s.read_to_end(&mut back).unwrap();
        assert_eq!(back, data);
    });
    let mut conn = None;
    loop {
        let mut done = port
            .get_completion(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        match done.kind() {
            OpKind::Accept => {
                let a = done.take_accepted().unwrap();
                let c = port.add_handle(a.stream, 1).unwrap();
                port.recv_pooled(&c);
                conn = Some(c);
            }
            OpKind::RecvPooled => {
                let n = done.result().unwrap();
                let c = conn.as_ref().unwrap();
                if n == 0 {
                    break;
                }
                let buf = done.take_pooled().unwrap();
                assert_eq!(buf.len(), n);
                port.send_pooled(c, buf);
                port.recv_pooled(c);
            }
            OpKind::SendPooled => {
                done.result().unwrap();
                assert!(done.take_pooled().is_some());
            }
            k => panic!("{k}"),
        }
    }
    // Drain the sends.
    while port.operations_in_flight() > 0 {
        let done = port
            .get_completion(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        done.result().unwrap();
    }
    drop(conn);
    client.join().unwrap();
}
