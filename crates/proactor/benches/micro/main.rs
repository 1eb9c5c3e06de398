//! Micro-benchmarks: one port round trip (post, then dequeue) and one receive submitted and
//! completed on a socket that already holds the data, each through proactor and through the same
//! OS calls made directly: the `io-uring` crate on Linux, `windows-sys` on Windows.
//!
//! ```sh
//! cargo bench -p proactor --bench micro                          # io_uring (or the fallback)
//! PROACTOR_BACKEND=epoll cargo bench -p proactor --bench micro   # the epoll fallback
//! ```
//!
//! `cargo test` runs each benchmark once as a check (criterion's test mode): that is how the
//! Windows versions run under Wine, where timing means nothing.

use std::{
    hint::black_box,
    io::Write,
    net::{Ipv4Addr, TcpListener, TcpStream},
    time::{Duration, Instant},
};

use criterion::{
    BenchmarkGroup, Criterion, criterion_group, criterion_main, measurement::WallTime,
};
use proactor::{Handle, Iocp};

#[cfg(target_os = "linux")]
#[path = "uring.rs"]
mod direct;
#[cfg(windows)]
#[path = "iocp.rs"]
mod direct;

/// The size of each received message.
const MESSAGE: usize = 64;
/// Messages written to the socket before each timed batch of receives: 8 KiB, well inside the
/// socket buffers, so every receive finds its data there.
const BATCH: u64 = 128;

/// A connected loopback pair: the accepted side and the client.
fn tcp_pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
    let client = TcpStream::connect(listener.local_addr().expect("address")).expect("connect");
    let (server, _) = listener.accept().expect("accept");
    server.set_nodelay(true).expect("nodelay");
    client.set_nodelay(true).expect("nodelay");
    (server, client)
}

/// Times `iters` receives of [`MESSAGE`] bytes: before each batch (untimed), the client writes the
/// batch's messages and `settle` waits until they are readable; then `recv_one` runs once per
/// message and must return the bytes it received.
fn time_receives(
    iters: u64,
    client: &mut TcpStream,
    mut settle: impl FnMut(usize),
    mut recv_one: impl FnMut() -> usize,
) -> Duration {
    let batch = vec![0x5a_u8; BATCH as usize * MESSAGE];
    let mut timed = Duration::ZERO;
    let mut left = iters;
    while left > 0 {
        let n = left.min(BATCH);
        client
            .write_all(&batch[..n as usize * MESSAGE])
            .expect("client write");
        settle(n as usize * MESSAGE);
        let start = Instant::now();
        let mut got = 0;
        for _ in 0..n {
            got += recv_one();
        }
        timed += start.elapsed();
        assert_eq!(got, n as usize * MESSAGE, "every byte written was received");
        left -= n;
    }
    timed
}

/// Waits until `socket` holds at least `bytes` unread bytes (loopback delivery is immediate on
/// Linux; under Wine it may lag behind the write).
fn wait_readable(socket: &TcpStream, bytes: usize) {
    let mut peek = vec![0u8; bytes];
    let deadline = Instant::now() + Duration::from_secs(10);
    while socket.peek(&mut peek).expect("peek") < bytes {
        assert!(
            Instant::now() < deadline,
            "the client's bytes never arrived"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn post_dequeue(c: &mut Criterion) {
    let mut group = c.benchmark_group("post+dequeue");
    let port = Iocp::new().expect("port");
    group.bench_function(format!("proactor {}", port.backend()), |b| {
        b.iter(|| {
            port.post(1, 2).expect("post");
            let done = port.get_completion(None).expect("dequeue");
            black_box(done.context());
        })
    });
    // The same with a timer pending for the whole run: the port's timer structure is armed,
    // and each dequeue must still stay off its lock (only operations with a deadline take it).
    let timed = Iocp::new().expect("port");
    timed.timer(Duration::from_secs(3600));
    group.bench_function(
        format!("proactor {}, a timer pending", timed.backend()),
        |b| {
            b.iter(|| {
                timed.post(1, 2).expect("post");
                let done = timed.get_completion(None).expect("dequeue");
                black_box(done.context());
            })
        },
    );
    direct::post_dequeue(&mut group);
    group.finish();
}

fn recv_ready(c: &mut Criterion) {
    let mut group = c.benchmark_group("recv on a ready socket (64 B)");
    let port = Iocp::new().expect("port");
    let (server, mut client) = tcp_pair();
    let peek = server.try_clone().expect("clone");
    let server: Handle<TcpStream> = port.add_handle(server, 0).expect("associate");
    let mut buf = Vec::with_capacity(MESSAGE);
    group.bench_function(format!("proactor {}", port.backend()), |b| {
        b.iter_custom(|iters| {
            time_receives(
                iters,
                &mut client,
                |bytes| wait_readable(&peek, bytes),
                || {
                    port.recv(&server, std::mem::take(&mut buf));
                    let mut done = port.get_completion(None).expect("dequeue");
                    let n = done.result().expect("receive");
                    buf = done.take_buffer().expect("the buffer comes back");
                    buf.clear();
                    n
                },
            )
        })
    });
    direct::recv_ready(&mut group);
    group.finish();
}

/// The direct versions add themselves to the same groups.
type Group<'a> = BenchmarkGroup<'a, WallTime>;

criterion_group!(benches, post_dequeue, recv_ready);
criterion_main!(benches);
