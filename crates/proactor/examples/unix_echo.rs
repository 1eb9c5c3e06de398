//! A Unix-domain echo through one port, on Linux and on Windows 10 1803 and later (Wine 8 has
//! no `AF_UNIX`: there it stops at the first step with an `Unsupported` error).
//!
//! The server side accepts one client, receives and echoes; the client side sends three
//! requests at once. Each operation carries its own user value (`with_user`): the request
//! number on the client's sends, a tag on the server's operations, so every completion says
//! what it ends without a table of operation ids.
//!
//! `cargo run -p proactor --example unix_echo`

use std::time::Duration;

use proactor::{Iocp, OpKind};

/// User values of the server's operations (the client's sends carry their request number).
const ACCEPT: usize = 100;
const SERVER_RECV: usize = 101;
const ECHO: usize = 102;
const CLIENT_RECV: usize = 103;

fn main() -> std::io::Result<()> {
    let port = Iocp::new()?;
    let path = std::env::temp_dir().join(format!("proactor-unix-echo-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let listener = port.bind_unix(&path, 0)?;
    port.with_user(ACCEPT).accept(&listener);
    let client = port.connect_unix(&path, 1)?;
    let requests = ["first", "second", "third"];
    for (n, request) in requests.iter().enumerate() {
        port.with_user(n).send(&client, request.as_bytes().to_vec());
    }
    let expected: usize = requests.iter().map(|r| r.len()).sum();
    let (mut server, mut echoed) = (None, Vec::new());
    port.with_user(CLIENT_RECV)
        .recv(&client, Vec::with_capacity(expected));
    while echoed.len() < expected {
        let mut done = port.get_completion(Some(Duration::from_secs(10)))?;
        let n = done.result()?;
        match (done.kind(), done.user()) {
            (OpKind::Accept, ACCEPT) => {
                let (stream, peer) = done.take_accepted_socket().expect("a connection");
                println!("accepted a client (address family {})", peer.family());
                let conn = port.add_handle(stream, 2)?;
                port.with_user(SERVER_RECV)
                    .recv(&conn, Vec::with_capacity(4096));
                server = Some(conn);
            }
            (OpKind::Send, request) if request < requests.len() => {
                println!(
                    "request {request} ({:?}) sent: {n} bytes",
                    requests[request]
                );
            }
            (OpKind::Recv, SERVER_RECV) => {
                let conn = server.as_ref().expect("accepted before it receives");
                port.with_user(ECHO).send(conn, done.take_buffer().unwrap());
                port.with_user(SERVER_RECV)
                    .recv(conn, Vec::with_capacity(4096));
            }
            (OpKind::Send, ECHO) => println!("server echoed {n} bytes"),
            (OpKind::Recv, CLIENT_RECV) => {
                echoed.extend(done.take_buffer().unwrap());
                if echoed.len() < expected {
                    let left = expected - echoed.len();
                    port.with_user(CLIENT_RECV)
                        .recv(&client, Vec::with_capacity(left));
                }
            }
            (kind, user) => println!("unexpected {kind} with user value {user}"),
        }
    }
    println!("client got back {:?}", String::from_utf8_lossy(&echoed));
    let _ = std::fs::remove_file(&path);
    Ok(())
}
