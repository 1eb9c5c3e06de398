//! The lifecycle demo logs every step of IOCP use.
#![cfg(any(windows, target_os = "linux"))]

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpStream},
    process::{Child, Command, Stdio},
    sync::mpsc,
    thread,
    time::Duration,
};

/// Kills the demo if the test fails first (it holds inherited pipes open).
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn the_demo_logs_every_step_and_field() {
    let mut child = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_lifecycle"))
            .args(["--port", "0", "--exit-after", "2"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let (tx, rx) = mpsc::channel();
    let stdout = child.0.stdout.take().unwrap();
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let wait = Duration::from_secs(20);
    let mut log = Vec::new();
    let addr: SocketAddr = loop {
        let line = rx.recv_timeout(wait).expect("the demo starts listening");
        log.push(line.clone());
        if let Some(rest) = line.split("Listening for connections on ").nth(1) {
            break rest.trim_end_matches("...").parse().unwrap();
        }
    };

    // A client that reads the greeting, sends, reads its echo and closes gracefully.
    let mut polite = TcpStream::connect(addr).unwrap();
    polite.set_read_timeout(Some(wait)).unwrap();
    let mut greeting = [0u8; 37];
    polite.read_exact(&mut greeting).unwrap();
    assert!(greeting.starts_with(b"Hello from the IOCP lifecycle demo!"));
    polite.write_all(b"ping").unwrap();
    let mut echo = [0u8; 4];
    polite.read_exact(&mut echo).unwrap();
    assert_eq!(&echo, b"ping");
    drop(polite);

    // A client that resets while the demo's read is pending.
    let rude = TcpStream::connect(addr).unwrap();
    rude.set_read_timeout(Some(wait)).unwrap();
    (&rude).read_exact(&mut greeting).unwrap();
    thread::sleep(Duration::from_millis(100));
    socket2::SockRef::from(&rude)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(rude);

    while let Ok(line) = rx.recv_timeout(wait) {
        log.push(line);
    }
    let status = child.0.wait().unwrap();
    assert!(status.success(), "{status}");
    let log = log.join("\n");
    for line in log.lines() {
        assert!(
            line.starts_with("[20") && line.contains("Z] "),
            "timestamped: {line}"
        );
    }
    for expected in [
        "Creating IOCP...",
        "IOCP created. Handle: 0x",
        "Listening socket created. Handle: 0x",
        "with IOCP...",
        "Associating listening socket 0x",
        "Starting IOCP worker thread...",
        "Listening for connections on 127.0.0.1:",
        "Client connected. Handle: 0x",
        "Read submitted (read). Overlapped: 0x",
        "Write submitted (greeting). Overlapped: 0x",
        "Write submitted (echo). Overlapped: 0x",
        "Completion received. BytesTransferred: 37, Key: 1, Overlapped: 0x",
        "Completion received. BytesTransferred: 4, Key: 1, Overlapped: 0x",
        "Operation type: Read, for: read",
        "Operation type: Write, for: greeting",
        "Operation type: Accept, for: accept",
        // The per-operation user value tells the greeting's write from the echo's.
        "Write completed: greeting (37 bytes)",
        "Write completed: echo (4 bytes)",
        "Client disconnected gracefully. Handle: 0x",
        "operation failed for client socket 0x",
        if cfg!(windows) {
            "Error: 64 (ERROR_NETNAME_DELETED)"
        } else {
            "Error: 104 (ECONNRESET)"
        },
        "Closing client socket 0x",
    ] {
        assert!(log.contains(expected), "missing {expected:?} in:\n{log}");
    }
}
