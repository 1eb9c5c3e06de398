//! The load generator: `conns` connections, each keeping `depth` messages of `size` bytes in
//! flight; every echoed byte is checked; latencies go to one histogram.
//!
//! A message carries its sequence number in its first 8 bytes (when it has room) and a fill
//! byte derived from the connection and the sequence number everywhere else, so a lost,
//! reordered, duplicated or corrupted byte is an error.

use std::{
    collections::VecDeque,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use hdrhistogram::Histogram;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    sync::Semaphore,
};

/// One run's load.
#[derive(Clone, Debug)]
pub struct Load {
    pub addr: SocketAddr,
    pub conns: usize,
    pub size: usize,
    pub depth: usize,
    pub warmup: Duration,
    pub duration: Duration,
}

/// Connects in flight at once: a burst of thousands overflows any listen backlog, and a dropped
/// SYN is retried only after a second or more.
const CONNECTS_IN_FLIGHT: usize = 256;

/// How long all connections may take to be established before the warm-up starts anyway.
const CONNECT_DEADLINE: Duration = Duration::from_secs(60);

/// What the generator measured in the measuring window.
#[derive(Debug, Default, Clone)]
pub struct Measured {
    /// Connections established before the warm-up (all of them unless some failed).
    pub connected: usize,
    pub round_trips: u64,
    pub errors: u64,
    pub elapsed: Duration,
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
}

struct Shared {
    connects: Semaphore,
    /// Connections that tried to connect (whether or not they succeeded), and those that did.
    settled: AtomicUsize,
    connected: AtomicUsize,
    measuring: AtomicBool,
    stop: AtomicBool,
    round_trips: AtomicU64,
    errors: AtomicU64,
    latency: Mutex<Histogram<u64>>,
}

fn fill(conn: usize, seq: u64) -> u8 {
    (conn as u64)
        .wrapping_mul(31)
        .wrapping_add(seq.wrapping_mul(7)) as u8
}

fn message(conn: usize, seq: u64, size: usize, buf: &mut Vec<u8>) {
    buf.clear();
    buf.resize(size, fill(conn, seq));
    if size >= 8 {
        buf[..8].copy_from_slice(&seq.to_le_bytes());
    }
}

fn check(conn: usize, seq: u64, got: &[u8]) -> bool {
    let b = fill(conn, seq);
    let body = if got.len() >= 8 {
        if got[..8] != seq.to_le_bytes() {
            return false;
        }
        &got[8..]
    } else {
        got
    };
    body.iter().all(|&x| x == b)
}

async fn connection(id: usize, load: Load, shared: Arc<Shared>) {
    let stream = {
        let _permit = shared.connects.acquire().await.expect("never closed");
        let stream = TcpStream::connect(load.addr).await;
        shared.settled.fetch_add(1, Ordering::SeqCst);
        match stream {
            Ok(s) => s,
            Err(_) => {
                shared.errors.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
    };
    shared.connected.fetch_add(1, Ordering::SeqCst);
    let _ = stream.set_nodelay(true);
    let (mut rd, mut wr) = stream.into_split();
    let credit = Arc::new(Semaphore::new(load.depth));
    let sent_at: Arc<Mutex<VecDeque<Instant>>> = Arc::default();
    let writer = {
        let (credit, sent_at, shared) = (credit.clone(), sent_at.clone(), shared.clone());
        let size = load.size;
        tokio::spawn(async move {
            let mut buf = Vec::with_capacity(size);
            let mut seq = 0u64;
            while !shared.stop.load(Ordering::Relaxed) {
                let Ok(permit) = credit.acquire().await else {
                    return;
                };
                permit.forget();
                message(id, seq, size, &mut buf);
                sent_at.lock().unwrap().push_back(Instant::now());
                if wr.write_all(&buf).await.is_err() {
                    return;
                }
                seq += 1;
            }
            let _ = wr.shutdown().await;
        })
    };
    let mut buf = vec![0u8; load.size];
    let mut seq = 0u64;
    loop {
        if shared.stop.load(Ordering::Relaxed) {
            break;
        }
        match tokio::time::timeout(Duration::from_secs(10), rd.read_exact(&mut buf)).await {
            Ok(Ok(_)) => {}
            _ => {
                if !shared.stop.load(Ordering::Relaxed) {
                    shared.errors.fetch_add(1, Ordering::Relaxed);
                }
                break;
            }
        }
        let started = sent_at.lock().unwrap().pop_front();
        if !check(id, seq, &buf) {
            shared.errors.fetch_add(1, Ordering::Relaxed);
            break;
        }
        if shared.measuring.load(Ordering::Relaxed) {
            shared.round_trips.fetch_add(1, Ordering::Relaxed);
            if let Some(t) = started {
                let us = t.elapsed().as_micros() as u64;
                let _ = shared.latency.lock().unwrap().record(us.max(1));
            }
        }
        seq += 1;
        credit.add_permits(1);
    }
    credit.close();
    writer.abort();
}

/// Runs the load; `window` is called when measuring starts and when it ends (to sample the
/// server's CPU time).
pub fn run(load: &Load, threads: usize, mut window: impl FnMut(bool)) -> Measured {
    let shared = Arc::new(Shared {
        connects: Semaphore::new(CONNECTS_IN_FLIGHT),
        settled: AtomicUsize::new(0),
        connected: AtomicUsize::new(0),
        measuring: AtomicBool::new(false),
        stop: AtomicBool::new(false),
        round_trips: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        latency: Mutex::new(Histogram::new_with_bounds(1, 60_000_000, 3).expect("histogram")),
    });
    let runtime = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
    }
    .expect("runtime");
    let tasks: Vec<_> = (0..load.conns)
        .map(|id| runtime.spawn(connection(id, load.clone(), shared.clone())))
        .collect();
    // Every connection established (or failed) first, then the warm-up: otherwise a cell with
    // thousands of connections measures the ramp, not that many connections being served. Each
    // connection starts sending as soon as it is connected, which spreads the start over the
    // connect phase: a gate that let all of them start at once was tried, and at 10,000 x 64
    // KiB the synchronized 655 MB burst made the kernel drop and retransmit segments
    // (`TCPRcvQDrop`, `TcpRetransSegs`), and a pinned run served no round trip in 3 s where the
    // spread start serves 12,000 a second.
    runtime.block_on(async {
        let deadline = tokio::time::Instant::now() + CONNECT_DEADLINE;
        while shared.settled.load(Ordering::SeqCst) < load.conns
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(load.warmup).await
    });
    window(true);
    shared.measuring.store(true, Ordering::SeqCst);
    let start = Instant::now();
    runtime.block_on(async { tokio::time::sleep(load.duration).await });
    shared.measuring.store(false, Ordering::SeqCst);
    let elapsed = start.elapsed();
    window(false);
    shared.stop.store(true, Ordering::SeqCst);
    for t in tasks {
        t.abort();
    }
    runtime.shutdown_timeout(Duration::from_secs(2));
    let h = shared.latency.lock().unwrap();
    Measured {
        connected: shared.connected.load(Ordering::SeqCst),
        round_trips: shared.round_trips.load(Ordering::SeqCst),
        errors: shared.errors.load(Ordering::SeqCst),
        elapsed,
        p50_us: h.value_at_quantile(0.5) as f64,
        p99_us: h.value_at_quantile(0.99) as f64,
        p999_us: h.value_at_quantile(0.999) as f64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_verify_and_corruption_is_caught() {
        let mut buf = Vec::new();
        for size in [1, 7, 8, 64, 4096] {
            message(3, 42, size, &mut buf);
            assert!(check(3, 42, &buf));
            assert!(!check(3, 43, &buf) || size < 8 && fill(3, 42) == fill(3, 43));
            let mut bad = buf.clone();
            bad[size - 1] ^= 1;
            assert!(!check(3, 42, &bad));
        }
    }

    /// A blocking echo server on a loopback port, one thread per connection; `corrupt` flips
    /// the last byte of every read.
    fn echo_server(corrupt: bool) -> SocketAddr {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut s) = stream else { return };
                std::thread::spawn(move || {
                    use std::io::{Read, Write};
                    let mut buf = [0u8; 4096];
                    while let Ok(n @ 1..) = s.read(&mut buf) {
                        if corrupt {
                            buf[n - 1] ^= 0x55;
                        }
                        if s.write_all(&buf[..n]).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        addr
    }

    fn load(addr: SocketAddr) -> Load {
        Load {
            addr,
            conns: 40,
            size: 100,
            depth: 4,
            warmup: Duration::from_millis(100),
            duration: Duration::from_millis(300),
        }
    }

    #[test]
    fn every_connection_is_established_and_served() {
        let m = run(&load(echo_server(false)), 1, |_| {});
        assert_eq!(m.connected, 40);
        assert_eq!(m.errors, 0);
        assert!(m.round_trips > 40, "{m:?}");
        assert!(m.p50_us > 0.0 && m.p50_us <= m.p99_us && m.p99_us <= m.p999_us);
    }

    #[test]
    fn a_corrupted_echo_is_counted_as_an_error() {
        let m = run(&load(echo_server(true)), 1, |_| {});
        assert_eq!(m.connected, 40);
        assert_eq!(
            m.errors, 40,
            "each connection stops at its first bad message: {m:?}"
        );
        assert_eq!(m.round_trips, 0);
    }
}
