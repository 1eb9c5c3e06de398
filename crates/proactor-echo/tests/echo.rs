//! The real server binary over loopback (under Wine on Linux).
#![cfg(any(windows, target_os = "linux"))]

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    thread,
    time::Duration,
};

const WAIT: Option<Duration> = Some(Duration::from_secs(20));

/// Whether the server receives from its pool by default here, as it decides: where the port
/// bounds what one call brings a connection (`LocalPort::recv_limit`: io_uring on Linux 6.17
/// or later); owned receive elsewhere (Windows, older kernels, epoll).
fn pooled_by_default() -> bool {
    proactor::LocalPort::with_pool(1, 1).is_ok_and(|p| p.recv_limit().is_some())
}

/// The receive that is not the default here in the default mode.
fn other_receive() -> [&'static str; 2] {
    match pooled_by_default() {
        true => ["--receive", "owned"],
        false => ["--receive", "pooled"],
    }
}

/// Runs each test function named in both modes of the server: `port_per_worker::NAME` in the
/// default one (a port per worker thread), `port_per_worker_other_receive::NAME` there with
/// the receive that is not the default here ([`other_receive`]), `shared_port::NAME`
/// with `--shared`.
macro_rules! in_both_modes {
    ($($(#[$attr:meta])* $name:ident),* $(,)?) => {
        mod port_per_worker {
            $($(#[$attr])* #[test] fn $name() { super::$name(&[]) })*
        }
        mod port_per_worker_other_receive {
            $($(#[$attr])* #[test] fn $name() { super::$name(&super::other_receive()) })*
        }
        mod shared_port {
            $($(#[$attr])* #[test] fn $name() { super::$name(&["--shared"]) })*
        }
    };
}

/// A running server, killed when dropped; its stderr is collected.
struct Server {
    child: Child,
    addr: SocketAddr,
    log: Arc<Mutex<String>>,
}

impl Server {
    /// Starts the server in `mode` (see [`in_both_modes`]) with `args`.
    fn start(mode: &[&str], args: &[&str]) -> Server {
        Server::start_with(mode, args, &[])
    }

    /// Starts the server with extra environment variables (`RUST_LOG`).
    fn start_with(mode: &[&str], args: &[&str], env: &[(&str, &str)]) -> Server {
        // Port 0: the server takes a free port itself and says which (a port found free here
        // and passed on could be taken by another test's connection in between).
        let mut child = Command::new(env!("CARGO_BIN_EXE_proactor-echo"))
            .args(["--port", "0"])
            .args(mode)
            .args(args)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = log.clone();
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let mut log = sink.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let Some(addr) = line.trim().strip_prefix("listening on ") else {
            let status = child.wait();
            thread::sleep(Duration::from_millis(100)); // the rest of its stderr
            panic!(
                "no ready line ({line:?}); the server ended with {status:?}, its log:\n{}",
                log.lock().unwrap()
            );
        };
        let addr = addr.parse().unwrap();
        Server { child, addr, log }
    }

    /// Waits until the server's log contains `text`, returning the log.
    fn wait_log(&self, text: &str) -> String {
        for _ in 0..200 {
            let log = self.log.lock().unwrap().clone();
            if log.contains(text) {
                return log;
            }
            thread::sleep(Duration::from_millis(50));
        }
        panic!("{text:?} never logged:\n{}", self.log.lock().unwrap());
    }

    fn connect(&self) -> TcpStream {
        let s = TcpStream::connect(self.addr).unwrap();
        s.set_read_timeout(WAIT).unwrap();
        s
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn round_trip(s: &mut TcpStream, msg: &[u8]) {
    s.write_all(msg).unwrap();
    let mut got = vec![0u8; msg.len()];
    s.read_exact(&mut got).unwrap();
    assert!(got == msg, "echoed intact ({} bytes)", msg.len());
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
}

fn hello_iocp_is_echoed(mode: &[&str]) {
    let server = Server::start(mode, &[]);
    round_trip(&mut server.connect(), b"Hello, IOCP!");
}

/// A client reset is the client's doing: logged at DEBUG (never one WARN line per client), counted
/// in the summary, and the server goes on serving.
fn an_empty_client_and_a_reset_do_not_disturb_others(mode: &[&str]) {
    // A --max-connections that fits any descriptor limit: the default (10,000) is warned about
    // where the hard limit is lower, and this test checks that nothing else warns.
    let server = Server::start_with(
        mode,
        &["--workers", "2", "--max-connections", "100"],
        &[("RUST_LOG", "info,proactor_echo=debug")],
    );
    let mut steady = server.connect();
    round_trip(&mut steady, b"before");
    drop(server.connect()); // connects, sends nothing, closes
    let mut rude = server.connect();
    // Reset while the server's receive is pending (after the echo came back): Wine, unlike
    // Windows, reports a reset that arrives with no receive pending as EOF.
    round_trip(&mut rude, b"data then reset");
    thread::sleep(Duration::from_millis(100));
    socket2::SockRef::from(&rude)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(rude);
    let log = server.wait_log("client reset");
    let line = log.lines().find(|l| l.contains("client reset")).unwrap();
    assert!(line.contains(" DEBUG "), "below WARN: {line}");
    assert!(
        line.contains("socket=0x") && line.contains("peer="),
        "socket identified: {line}"
    );
    assert!(
        line.contains("code=64") || line.contains("code=10054") || line.contains("code=104"),
        "{line}"
    );
    assert!(
        !log.contains(" WARN "),
        "no warning for a client's reset:\n{log}"
    );
    round_trip(&mut steady, b"after");
    round_trip(&mut server.connect(), b"and new clients");
    #[cfg(unix)]
    {
        let mut server = server;
        // SAFETY: sends a signal to our own child process.
        assert_eq!(
            unsafe { libc::kill(server.child.id() as i32, libc::SIGTERM) },
            0
        );
        assert!(server.child.wait().unwrap().success());
        let log = server.wait_log("stopped");
        assert!(log.contains("resets=1"), "the reset is counted:\n{log}");
        assert!(!log.contains(" WARN "), "{log}");
    }
}

fn trace_logs_every_operation_in_the_lifecycle_format(mode: &[&str]) {
    let server = Server::start(mode, &["--trace"]);
    round_trip(&mut server.connect(), b"hello");
    let mut log = String::new();
    for expected in [
        "Accept submitted. Key: ",
        "Read submitted. Key: ",
        "Write submitted. Key: ",
        "Completion received. BytesTransferred: 5, Key: ",
        "Operation type: Accept",
        "Operation type: Read",
        "Overlapped: 0x",
    ] {
        log = server.wait_log(expected);
    }
    let traced = log
        .lines()
        .filter(|l| l.contains("submitted.") || l.contains("Completion"));
    for line in traced {
        assert!(
            line.starts_with("[20") && line.contains("Z] "),
            "timestamped: {line}"
        );
    }
}

fn a_65535_byte_message_and_a_4_mib_stream_come_back_intact(mode: &[&str]) {
    let server = Server::start(mode, &[]);
    round_trip(&mut server.connect(), &pattern(65_535));
    let data = pattern(4 << 20);
    let mut s = server.connect();
    let mut reader = s.try_clone().unwrap();
    let expected = data.clone();
    let check = thread::spawn(move || {
        let mut got = vec![0u8; expected.len()];
        reader.read_exact(&mut got).unwrap();
        got == expected
    });
    s.write_all(&data).unwrap();
    assert!(check.join().unwrap(), "4 MiB echoed in order");
}

/// How the clients of [`streams_come_back_whole`] write and read.
struct Streams {
    clients: u8,
    len: usize,
    /// The sizes each client writes, in turn.
    writes: &'static [usize],
    /// The sizes each client asks to read, in turn.
    reads: &'static [usize],
    /// A pause of 3 ms after this many reads, if any.
    pause_every: Option<usize>,
    /// Makes each client's bytes differ from the others'.
    salt: u8,
}

/// Every client streams `len` bytes of its own while reading them back, as `how` says, and
/// each stream must come back whole, in order, to its own client.
fn streams_come_back_whole(server: &Server, how: Streams) {
    let Streams {
        clients,
        len,
        writes,
        reads,
        pause_every,
        salt,
    } = how;
    let clients: Vec<_> = (0..clients)
        .map(|c| {
            let s = server.connect();
            let key = c.wrapping_mul(salt).wrapping_add(1);
            let data: Vec<u8> = pattern(len).iter().map(|b| b ^ key).collect();
            let mut reader = s.try_clone().unwrap();
            let expected = data.clone();
            let check = thread::spawn(move || {
                let mut got = Vec::with_capacity(len);
                let mut buf = vec![0u8; *reads.iter().max().unwrap()];
                let mut turn = c as usize;
                while got.len() < len {
                    turn += 1;
                    let want = reads[turn % reads.len()].min(len - got.len());
                    let n = reader.read(&mut buf[..want]).unwrap();
                    assert!(n > 0, "client {c}: EOF after {} bytes", got.len());
                    got.extend_from_slice(&buf[..n]);
                    if pause_every.is_some_and(|every| turn % every == 0) {
                        thread::sleep(Duration::from_millis(3));
                    }
                }
                match got.iter().zip(&expected).position(|(a, b)| a != b) {
                    None => Ok(()),
                    Some(at) => Err(format!("client {c}: byte {at} differs")),
                }
            });
            let write = thread::spawn(move || {
                let mut s = s;
                let mut at = 0;
                for size in writes.iter().cycle() {
                    if at == len {
                        break;
                    }
                    let end = (at + size).min(len);
                    s.write_all(&data[at..end]).unwrap();
                    at = end;
                }
                s
            });
            (check, write)
        })
        .collect();
    for (check, write) in clients {
        let _s = write.join().unwrap();
        check.join().unwrap().unwrap();
    }
}

/// Clients that write in bursts of odd sizes while reading slowly, with pauses: the server's
/// sends pile up, so it stops receiving and starts again many times (the pooled receive's
/// pause), and every stream must come back whole, in order, to its own client (each
/// client's bytes differ from the others').
fn slow_readers_get_their_own_streams_back_whole(mode: &[&str]) {
    let server = Server::start(mode, &["--buffer-size", "1500"]);
    let how = Streams {
        clients: 4,
        len: 3 << 20,
        writes: &[1, 13, 1000, 65_536, 300_000],
        reads: &[1, 100, 4096, 70_000],
        pause_every: Some(16),
        salt: 61,
    };
    streams_come_back_whole(&server, how);
}

/// Eight clients streaming at once through a worker whose pool is eight buffers, of which
/// four may be in sends: a connection's messages go back in their pool buffers only while the
/// worker can spare one, else through its backlog, and once it has a backlog, through it until
/// it is sent, whatever buffers other connections give back meanwhile (that case forced:
/// `worker.rs` `what_comes_behind_a_backlog_joins_it`). Every stream must come back whole, in
/// order, to its own client.
fn connections_sharing_a_small_pool_get_their_streams_back_whole(mode: &[&str]) {
    let args = [
        "--workers",
        "1",
        "--max-connections",
        "8",
        "--buffer-size",
        "1500",
    ];
    let server = Server::start(mode, &args);
    let how = Streams {
        clients: 8,
        len: 4 << 20,
        writes: &[100, 1, 1499, 1500, 1501, 6000],
        reads: &[7, 1500, 20_000],
        pause_every: None,
        salt: 29,
    };
    streams_come_back_whole(&server, how);
}

/// A worker whose own io_uring ring cannot be built (failpoint `ring::new` on the third port
/// the server makes: the default receive's probe, then the two workers' in either order) runs
/// on a shared port, which has no receive limit: by default its connections then receive into
/// buffers of their own, with one warning, so that their memory stays bounded too; the other
/// worker keeps pooled receive. Every connection, on either worker, gets its stream back.
#[cfg(all(target_os = "linux", feature = "failpoints"))]
#[test]
fn a_worker_without_a_ring_of_its_own_receives_into_buffers_of_its_own() {
    let env = [
        ("PROACTOR_BACKEND", ""), // the default: io_uring rings, whatever this run forces
        ("FAILPOINTS", "ring::new=2*off->1*return->off"),
        ("RUST_LOG", "info,proactor_echo=debug"),
    ];
    let args = ["--workers", "2", "--max-connections", "100"];
    let server = Server::start_with(&[], &args, &env);
    let log = server.wait_log("serving");
    if log.contains("receive=Owned") {
        // A kernel without the receive limit: owned receive everywhere, nothing to fall back
        // from (the failed ring still runs on a shared port).
        assert!(!log.contains("no receive limit"), "{log}");
        return;
    }
    assert!(log.contains("receive=Pooled"), "{log}");
    let how = Streams {
        clients: 16,
        len: 256 << 10,
        writes: &[1, 700, 9000],
        reads: &[100, 65_536],
        pause_every: None,
        salt: 37,
    };
    streams_come_back_whole(&server, how);
    let log = server.wait_log("connected");
    let warned = log
        .matches("its connections receive into buffers of their own")
        .count();
    assert_eq!(warned, 1, "one worker fell back:\n{log}");
    for worker in ["worker=0", "worker=1"] {
        assert!(
            log.lines()
                .any(|l| l.contains(" connected") && l.contains(worker)),
            "{worker} served:\n{log}"
        );
    }
}

fn half_close_gets_everything_echoed_then_eof(mode: &[&str]) {
    let server = Server::start(mode, &[]);
    let mut s = server.connect();
    let data = pattern(200_000);
    s.write_all(&data).unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let mut got = Vec::new();
    s.read_to_end(&mut got).unwrap();
    assert!(got == data, "all {} bytes, then EOF", data.len());
}

fn one_thousand_simultaneous_clients_each_echo(mode: &[&str]) {
    let server = Server::start(mode, &["--workers", "2"]);
    let mut clients: Vec<TcpStream> = (0..1000).map(|_| server.connect()).collect();
    for (i, c) in clients.iter_mut().enumerate() {
        c.write_all(format!("client {i:04}").as_bytes()).unwrap();
    }
    for (i, c) in clients.iter_mut().enumerate() {
        let mut got = [0u8; 11];
        c.read_exact(&mut got).unwrap();
        assert_eq!(&got[..], format!("client {i:04}").as_bytes());
    }
}

fn beyond_max_connections_new_clients_are_closed_and_others_served(mode: &[&str]) {
    let server = Server::start(mode, &["--max-connections", "2"]);
    let mut a = server.connect();
    let mut b = server.connect();
    round_trip(&mut a, b"a");
    round_trip(&mut b, b"b");
    let mut c = server.connect();
    let mut buf = [0u8; 1];
    let n = c.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "the third client is closed");
    round_trip(&mut a, b"still served");
}

fn a_port_in_use_exits_non_zero_naming_the_address(mode: &[&str]) {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let out = Command::new(env!("CARGO_BIN_EXE_proactor-echo"))
        .args(mode)
        .args(["--port", &port.to_string()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    let last = err.trim_end().lines().last().unwrap_or_default();
    assert!(
        last.contains(&format!("127.0.0.1:{port}")),
        "names the address: {err}"
    );
    assert!(out.stdout.is_empty(), "never claims to listen");
}

fn idle_connections_are_closed_after_the_timeout(mode: &[&str]) {
    let server = Server::start(mode, &["--idle-timeout", "1"]);
    let mut idle = server.connect();
    round_trip(&mut idle, b"hi");
    let mut buf = [0u8; 1];
    assert_eq!(
        idle.read(&mut buf).unwrap_or(0),
        0,
        "closed after a second of silence"
    );
}

/// A client that sends without reading is slowed by TCP: the server holds at most one buffer
/// for it, so the client's writes stall long before it has sent everything.
fn a_client_that_never_reads_is_held_back_by_tcp_not_buffered(mode: &[&str]) {
    let server = Server::start(mode, &["--buffer-size", "65535"]);
    let s = server.connect();
    s.set_write_timeout(Some(Duration::from_secs(2))).unwrap();
    let chunk = vec![7u8; 64 * 1024];
    let mut sent = 0usize;
    const LIMIT: usize = 256 << 20;
    while sent < LIMIT {
        match (&s).write(&chunk) {
            Ok(n) => sent += n,
            Err(e) => {
                assert!(
                    matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ),
                    "{e}"
                );
                break;
            }
        }
    }
    assert!(
        sent < 64 << 20,
        "stalled after {sent} bytes: only socket buffers hold data"
    );
    // The connection still works once the client reads.
    let mut other = server.connect();
    round_trip(&mut other, b"others are served meanwhile");
}

fn ipv6_bind_serves(mode: &[&str]) {
    let server = Server::start(mode, &["--bind", "::1"]);
    assert!(server.addr.is_ipv6(), "{}", server.addr);
    round_trip(&mut server.connect(), b"over IPv6");
}

fn an_address_that_cannot_be_bound_exits_non_zero_naming_it(mode: &[&str]) {
    // 192.0.2.1 (TEST-NET-1) is never a local address: binding fails, nothing is sent.
    let out = Command::new(env!("CARGO_BIN_EXE_proactor-echo"))
        .args(mode)
        .args(["--bind", "192.0.2.1", "--port", "18081"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    let last = err.trim_end().lines().last().unwrap_or_default();
    assert!(last.contains("cannot listen on 192.0.2.1:18081"), "{err}");
    assert!(out.stdout.is_empty());
}

/// SIGTERM and SIGINT stop the real server gracefully: connections closed, summary logged,
/// exit 0 within 5 seconds.
#[cfg(unix)]
fn sigterm_and_sigint_shut_down_gracefully(mode: &[&str]) {
    for signal in [libc::SIGTERM, libc::SIGINT] {
        let mut server = Server::start(mode, &[]);
        let mut client = server.connect();
        round_trip(&mut client, b"12345");
        let start = std::time::Instant::now();
        // SAFETY: sends a signal to our own child process.
        assert_eq!(unsafe { libc::kill(server.child.id() as i32, signal) }, 0);
        let status = loop {
            if let Some(status) = server.child.try_wait().unwrap() {
                break status;
            }
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "exits within 5 seconds"
            );
            thread::sleep(Duration::from_millis(20));
        };
        assert!(status.success(), "signal {signal}: {status}");
        let log = server.wait_log("stopped");
        assert!(
            log.contains("connections=1") && log.contains("bytes_echoed=5"),
            "{log}"
        );
        let mut buf = [0u8; 1];
        assert_eq!(
            client.read(&mut buf).unwrap_or(0),
            0,
            "the connection was closed"
        );
        assert!(
            TcpStream::connect(server.addr).is_err(),
            "no longer accepting"
        );
    }
}

/// Many connections at once on two workers, each streaming bytes of its own in uneven writes
/// while another thread reads: every byte comes back, in order, on its own connection. With a
/// port per worker, both workers served some.
fn many_connections_on_two_workers_echo_every_byte(mode: &[&str]) {
    const CONNS: usize = 64;
    const BYTES: usize = 256 << 10;
    let server = Server::start_with(
        mode,
        &["--workers", "2", "--max-connections", "1000"],
        &[("RUST_LOG", "info,proactor_echo=debug")],
    );
    let clients: Vec<_> = (0..CONNS)
        .map(|i| {
            let s = server.connect();
            let data: Vec<u8> = (0..BYTES)
                .map(|j| ((j as u64 * 2_654_435_761 + i as u64 * 97) >> 11) as u8)
                .collect();
            let mut reader = s.try_clone().unwrap();
            let expected = data.clone();
            let read = thread::spawn(move || {
                let mut got = vec![0u8; expected.len()];
                reader.read_exact(&mut got).unwrap();
                got.iter().zip(&expected).position(|(a, b)| a != b)
            });
            let write = thread::spawn(move || {
                let mut s = s;
                let mut at = 0;
                for step in 0.. {
                    if at == data.len() {
                        break;
                    }
                    let n = (1 + step * 997 % 9000).min(data.len() - at);
                    s.write_all(&data[at..at + n]).unwrap();
                    at += n;
                }
                s
            });
            (read, write)
        })
        .collect();
    for (i, (read, write)) in clients.into_iter().enumerate() {
        let _open = write.join().unwrap();
        assert_eq!(
            read.join().unwrap(),
            None,
            "connection {i}: first wrong byte"
        );
    }
    if mode.is_empty() {
        let log = server.wait_log("connected");
        let connected = |w: &str| {
            log.lines()
                .any(|l| l.contains(" connected") && l.contains(&format!("worker={w}")))
        };
        assert!(
            connected("0") && connected("1"),
            "both workers served:\n{log}"
        );
    }
}

in_both_modes!(
    hello_iocp_is_echoed,
    an_empty_client_and_a_reset_do_not_disturb_others,
    trace_logs_every_operation_in_the_lifecycle_format,
    a_65535_byte_message_and_a_4_mib_stream_come_back_intact,
    slow_readers_get_their_own_streams_back_whole,
    connections_sharing_a_small_pool_get_their_streams_back_whole,
    half_close_gets_everything_echoed_then_eof,
    one_thousand_simultaneous_clients_each_echo,
    many_connections_on_two_workers_echo_every_byte,
    beyond_max_connections_new_clients_are_closed_and_others_served,
    a_port_in_use_exits_non_zero_naming_the_address,
    idle_connections_are_closed_after_the_timeout,
    a_client_that_never_reads_is_held_back_by_tcp_not_buffered,
    ipv6_bind_serves,
    an_address_that_cannot_be_bound_exits_non_zero_naming_it,
    #[cfg(unix)]
    sigterm_and_sigint_shut_down_gracefully,
);

/// With `--idle-timeout`, pooled receive is one receive per message, and a connection whose
/// backlog is full stops receiving by issuing one and cancelling it (many times here, with
/// 1,500-byte buffers): every stream still comes back whole, in order, to its own client.
#[test]
fn with_an_idle_timeout_slow_readers_get_their_own_streams_back_whole() {
    slow_readers_get_their_own_streams_back_whole(&["--receive", "pooled", "--idle-timeout", "60"]);
}

/// With no flags the server receives from its pool where the port bounds what that can bring
/// a connection (io_uring on Linux 6.17+), into each connection's own buffer elsewhere (on
/// Windows pooled receive costs a WinSock call more per message, too); `--receive` chooses
/// the other, and both echo.
#[test]
fn the_default_receive_is_the_platforms_and_receive_chooses_the_other() {
    let (native, other) = match pooled_by_default() {
        true => ("receive=Pooled", "receive=Owned"),
        false => ("receive=Owned", "receive=Pooled"),
    };
    if cfg!(windows) {
        assert_eq!(native, "receive=Owned");
    }
    for (args, expected) in [(&[][..], native), (&other_receive()[..], other)] {
        let server = Server::start(args, &[]);
        let log = server.wait_log("serving: a port per worker");
        let serving = log
            .lines()
            .find(|l| l.contains("serving: a port per worker"))
            .unwrap();
        assert!(serving.contains(expected), "{args:?}: {serving}");
        round_trip(&mut server.connect(), b"either way");
    }
}
