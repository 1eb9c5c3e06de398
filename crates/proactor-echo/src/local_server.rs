//! The default design: a [`proactor::LocalPort`] per worker thread (thread-per-core), each
//! serving its own connections from start to end. How they receive is [`Receive`]: on Linux
//! pooled receive (the received pool buffer is sent back as it is: no copy, and an idle
//! connection holds no buffer); on Windows, where a pooled receive costs one WinSock call more
//! per message, into a buffer of each connection's own.
//!
//! How connections reach the workers:
//!
//! - Linux: each worker listens on a socket of its own bound to the same address with
//!   `SO_REUSEPORT`; the kernel spreads new connections among them.
//! - elsewhere (Windows: `SO_REUSEPORT` does not spread connections there): worker 0 accepts and
//!   hands the accepted sockets round-robin to the workers (itself included) through their
//!   inboxes, waking the worker whose inbox it filled.
//!
//! A worker's port belongs to its thread: nothing else can post to it. Each worker therefore
//! also waits on a loopback UDP socket of its own (its waker): a datagram wakes it to look at
//! its inbox and at the stop flag. Idle, nothing spins: workers sleep in their port, the main
//! thread checks the stop flag every 100 ms (signal handlers only set it).
//!
//! What the shared-port server guarantees holds here too: the connection limit counts every
//! worker's connections; idle connections are closed by deadlines on their receives and sends;
//! accepting pauses with back-off at descriptor exhaustion ([`crate::accepting`], per listener);
//! shutdown closes every connection and drains every port, then logs the summary.

use std::{
    io,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, UdpSocket},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
        mpsc,
    },
    thread,
    time::Duration,
};

use proactor::Accepted;

use crate::{
    accepting::Throttle,
    server::{self, Config, Summary, lock},
    shutdown::Stop,
    worker::{Counts, Receive, Worker},
};

/// Virtual memory a worker's buffer pool may take at most. Only buffers that have held data
/// become resident; an idle connection holds none.
const POOL_BUDGET: usize = 256 << 20;

/// How accepted connections reach the workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Spread {
    /// A listener per worker, `SO_REUSEPORT` (Linux).
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    ReusePort,
    /// One acceptor (worker 0) hands connections round-robin to the workers.
    #[cfg_attr(target_os = "linux", allow(dead_code))]
    Handoff,
}

impl Spread {
    /// What this platform uses.
    fn native() -> Spread {
        if cfg!(target_os = "linux") {
            Spread::ReusePort
        } else {
            Spread::Handoff
        }
    }
}

/// What the workers share.
pub(crate) struct Shared {
    pub config: Config,
    pub spread: Spread,
    /// Set once the server is stopping: each worker checks it after every batch.
    pub stopping: AtomicBool,
    /// Connections served now, by every worker: the connection limit's count.
    live: AtomicUsize,
    /// Warnings that the connection limit was reached, at most one a minute.
    pub full: Mutex<Throttle>,
    /// Warnings that accepting paused, at most one a minute whichever worker's listener failed.
    pub pauses: Mutex<Throttle>,
    /// Connections handed to each worker and not yet taken (the handoff spread).
    inboxes: Vec<Mutex<Vec<Accepted>>>,
    /// Each worker's waker address, and the socket that sends to them.
    wakers: Vec<SocketAddr>,
    waker: UdpSocket,
}

impl Shared {
    /// Counts a new connection in, unless `max_connections` are being served.
    pub fn admit(&self) -> bool {
        let max = self.config.max_connections;
        self.live
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < max).then_some(n + 1)
            })
            .is_ok()
    }

    /// Counts a connection out (closed, or never registered).
    pub fn release(&self) {
        self.live.fetch_sub(1, Ordering::SeqCst);
    }

    /// Hands an accepted connection to worker `to`, waking it if its inbox was empty (a worker
    /// empties its inbox whenever it wakes).
    pub fn hand_to(&self, to: usize, accepted: Accepted) {
        let was_empty = {
            let mut inbox = lock(&self.inboxes[to]);
            inbox.push(accepted);
            inbox.len() == 1
        };
        if was_empty {
            self.wake(to);
        }
    }

    /// The connections handed to worker `at`.
    pub fn take_inbox(&self, at: usize) -> Vec<Accepted> {
        std::mem::take(&mut *lock(&self.inboxes[at]))
    }

    /// Wakes worker `at` (a datagram to its waker).
    pub fn wake(&self, at: usize) {
        if let Err(e) = self.waker.send_to(&[1], self.wakers[at]) {
            tracing::error!(worker = at, error = %e, "cannot wake a worker");
        }
    }
}

/// Serves until `stop` is requested, then shuts down gracefully: every worker stops accepting,
/// closes its connections and drains its port. `ready` is called with the bound address once
/// every worker accepts connections.
pub fn run(
    config: Config,
    receive: Option<Receive>,
    stop: impl FnOnce() -> io::Result<Arc<Stop>>,
    ready: impl FnOnce(SocketAddr),
) -> io::Result<Summary> {
    run_with(config, Spread::native(), receive, POOL_BUDGET, stop, ready)
        .map(|(summary, _)| summary)
}

/// [`run`] with the spread and the pools' budget given, returning what each worker did too.
/// `receive` is the one asked for; `None` is the machine's ([`Receive::native`]), which each
/// worker checks against its own port.
pub(crate) fn run_with(
    config: Config,
    spread: Spread,
    receive: Option<Receive>,
    pool_budget: usize,
    stop: impl FnOnce() -> io::Result<Arc<Stop>>,
    ready: impl FnOnce(SocketAddr),
) -> io::Result<(Summary, Vec<Counts>)> {
    let workers = config.workers.max(1);
    let listeners = match spread {
        Spread::ReusePort => listen_all(config.addr, workers),
        Spread::Handoff => server::bind(config.addr, false, true).map(|l| vec![l]),
    }
    .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {}: {e}", config.addr)))?;
    let local = listeners[0].local_addr()?;
    let waker_error = |e: io::Error| {
        io::Error::new(
            e.kind(),
            format!("cannot open a worker's waker socket: {e}"),
        )
    };
    let wakes = (0..workers)
        .map(|_| loopback_udp())
        .collect::<io::Result<Vec<_>>>()
        .map_err(waker_error)?;
    if cfg!(target_os = "linux")
        && std::env::var_os("PROACTOR_SQPOLL").is_some_and(|v| !v.is_empty())
    {
        // INFO, not WARN: the variable is legitimately set for a whole environment (this
        // repository's CI runs every test with it), where `--shared` uses it.
        tracing::info!(
            "PROACTOR_SQPOLL is for shared ports (--shared): a worker's port with an io_uring ring of its own has no polling thread"
        );
    }
    let shared = Arc::new(Shared {
        spread,
        stopping: AtomicBool::new(false),
        live: AtomicUsize::new(0),
        full: Mutex::new(Throttle::default()),
        pauses: Mutex::new(Throttle::default()),
        inboxes: (0..workers).map(|_| Mutex::new(Vec::new())).collect(),
        wakers: wakes
            .iter()
            .map(UdpSocket::local_addr)
            .collect::<io::Result<_>>()?,
        waker: loopback_udp().map_err(waker_error)?,
        config,
    });
    let stop = stop()?;
    let by_default = receive.is_none();
    let receive = receive.unwrap_or_else(Receive::native);
    let pool = match receive {
        Receive::Pooled => pool_for(&shared.config, workers, pool_budget),
        // Receives bring their own buffers: the pool is not used.
        Receive::Owned => (1, 1),
    };
    let (started, starts) = mpsc::channel();
    let mut listeners = listeners.into_iter();
    let threads: Vec<_> = wakes
        .into_iter()
        .enumerate()
        .map(|(at, wake)| {
            let (shared, started, listener) = (shared.clone(), started.clone(), listeners.next());
            thread::Builder::new()
                .name(format!("echo-worker-{at}"))
                .spawn(move || {
                    let receive = (receive, by_default);
                    Worker::run(&shared, at, receive, pool, listener, wake, &started)
                })
        })
        .collect::<io::Result<_>>()?;
    drop(started);
    let mut failed = None;
    let mut engine = ("", "");
    for _ in 0..workers {
        match starts.recv() {
            Ok(Ok(e)) => engine = e,
            Ok(Err(e)) => {
                failed = failed.or(Some(io::Error::new(
                    e.kind(),
                    format!("a worker cannot start its port: {e}"),
                )))
            }
            Err(_) => failed = failed.or(Some(io::Error::other("a worker ended at start"))),
        }
    }
    if let Some(e) = failed {
        stop_workers(&shared);
        join(threads);
        return Err(match e.kind() {
            io::ErrorKind::Unsupported => {
                io::Error::new(e.kind(), "no completion-port backend on this platform")
            }
            _ => e,
        });
    }
    tracing::info!(
        backend = engine.0,
        setup = engine.1,
        workers,
        spread = ?spread,
        receive = ?receive,
        pool_buffers = pool.0,
        "serving: a port per worker"
    );
    ready(local);

    // Signals only set a flag: check it every 100 ms.
    while !stop.wait(Duration::from_millis(100)) {}

    tracing::info!("shutting down: no new connections, closing every connection");
    stop_workers(&shared);
    let counts = join(threads);
    let total = counts.iter().fold(Counts::default(), |a, c| a.plus(c));
    let summary = Summary {
        connections: total.served,
        bytes_echoed: total.echoed,
        resets: total.resets,
        refused: total.refused,
    };
    tracing::info!(
        summary.connections,
        summary.bytes_echoed,
        summary.resets,
        summary.refused,
        "stopped"
    );
    Ok((summary, counts))
}

/// Tells every worker to stop, and wakes them.
fn stop_workers(shared: &Shared) {
    shared.stopping.store(true, Ordering::SeqCst);
    for at in 0..shared.wakers.len() {
        shared.wake(at);
    }
}

/// Waits for the workers; what each did (nothing for one that panicked).
fn join(threads: Vec<thread::JoinHandle<Counts>>) -> Vec<Counts> {
    threads
        .into_iter()
        .map(|t| {
            t.join().unwrap_or_else(|_| {
                tracing::error!("a worker panicked");
                Counts::default()
            })
        })
        .collect()
}

/// `n` sockets listening on `addr` with `SO_REUSEPORT`.
///
/// First a socket without it binds the address: an address in use fails there as it does
/// for the shared port (even when the one using it set `SO_REUSEPORT` too: another server of
/// the same user would otherwise silently share its connections with this one), and port 0
/// gets its port, which every listener then binds.
fn listen_all(addr: SocketAddr, n: usize) -> io::Result<Vec<TcpListener>> {
    let addr = server::bind(addr, false, false)?.local_addr()?; // the probe closes here
    (0..n).map(|_| server::bind(addr, true, true)).collect()
}

/// A UDP socket on a loopback address, any port.
fn loopback_udp() -> io::Result<UdpSocket> {
    UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).or_else(|_| UdpSocket::bind((Ipv6Addr::LOCALHOST, 0)))
}

/// A worker's pool: buffers of `--buffer-size` bytes, as many as its share of
/// `--max-connections` (a connection echoing holds one buffer, in its send; an idle one holds
/// none), a power of two, within `budget` bytes ([`POOL_BUDGET`]). At most half of it is in
/// sends (past that, messages are copied, see [`crate::worker`]), so the other half always comes
/// back to the receives, however many clients do not read.
fn pool_for(config: &Config, workers: usize, budget: usize) -> (u16, usize) {
    let size = config.buffer_size.max(1);
    let share = config.max_connections.div_ceil(workers).max(1);
    let wanted = share.checked_next_power_of_two().unwrap_or(usize::MAX);
    let affordable = (budget / size).max(1);
    let affordable = 1 << (usize::BITS - 1 - affordable.leading_zeros()); // a power of two
    (wanted.min(affordable).min(1 << 15) as u16, size)
}

#[cfg(test)]
mod tests {
    use std::{
        io::{Read, Write},
        net::TcpStream,
        time::Instant,
    };

    use super::*;

    fn config(workers: usize) -> Config {
        Config {
            addr: "127.0.0.1:0".parse().unwrap(),
            workers,
            max_connections: 100,
            buffer_size: 1024,
            idle_timeout: None,
            coalesce: Some(Duration::from_micros(200)),
            trace: false,
        }
    }

    type Running = (
        Arc<Stop>,
        SocketAddr,
        thread::JoinHandle<io::Result<(Summary, Vec<Counts>)>>,
    );

    fn start(config: Config, spread: Spread) -> Running {
        start_with(config, spread, None, POOL_BUDGET)
    }

    fn start_with(
        config: Config,
        spread: Spread,
        receive: Option<Receive>,
        pool_budget: usize,
    ) -> Running {
        let stop = Arc::new(Stop::default());
        let (tx, rx) = mpsc::channel();
        let server = {
            let stop = stop.clone();
            thread::spawn(move || {
                run_with(
                    config,
                    spread,
                    receive,
                    pool_budget,
                    || Ok(stop),
                    |addr| tx.send(addr).unwrap(),
                )
            })
        };
        let addr = rx.recv_timeout(Duration::from_secs(20)).unwrap();
        (stop, addr, server)
    }

    fn round_trip(s: &mut TcpStream, msg: &[u8]) {
        s.write_all(msg).unwrap();
        let mut got = vec![0u8; msg.len()];
        s.read_exact(&mut got).unwrap();
        assert_eq!(got, msg);
    }

    /// A client with small socket buffers, so that few bytes stall the server's sends (and the
    /// tests hold little of the machine's TCP memory).
    fn connect_small(addr: SocketAddr, buffers: usize) -> TcpStream {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        s.set_recv_buffer_size(buffers).unwrap();
        s.set_send_buffer_size(buffers).unwrap();
        s.connect(&addr.into()).unwrap();
        let s = TcpStream::from(s);
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        s
    }

    /// A client that writes until TCP stops it (a write blocked for a second) and reads
    /// nothing: in steps, each echoed before the next comes, so that its last send, the one
    /// that never completes, is of a pool buffer. It stays connected until `end`.
    fn never_reads(addr: SocketAddr) -> (TcpStream, thread::JoinHandle<()>) {
        writes_without_reading(
            connect_small(addr, 4 << 10),
            16 << 10,
            Some(Duration::from_millis(2)),
        )
    }

    /// `hog` writes `chunk` bytes at a time (pausing `pause` after each, if given) until TCP
    /// stops it (a write blocked for a second), and reads nothing.
    fn writes_without_reading(
        hog: TcpStream,
        chunk: usize,
        pause: Option<Duration>,
    ) -> (TcpStream, thread::JoinHandle<()>) {
        let mut writer = hog.try_clone().unwrap();
        // Not a shutdown from another thread, which does not wake a blocked write under Wine.
        writer
            .set_write_timeout(Some(Duration::from_secs(1)))
            .unwrap();
        let writing = thread::spawn(move || {
            let chunk = vec![b'h'; chunk];
            while writer.write_all(&chunk).is_ok() {
                if let Some(pause) = pause {
                    thread::sleep(pause);
                }
            }
        });
        (hog, writing)
    }

    fn end(hogs: Vec<(TcpStream, thread::JoinHandle<()>)>) {
        for (hog, writing) in hogs {
            writing.join().unwrap();
            drop(hog);
        }
    }

    /// Found by review: clients that send and never read used to hold pool buffers in sends
    /// that never complete (every message received before their receives paused was sent
    /// back in its pool buffer), and 20 of them froze a worker of 64 buffers (12 one of 32):
    /// the other connections, old and new, waited for a buffer as long as those clients
    /// stayed. Now a connection has two pool buffers at most in sends (what comes meanwhile is
    /// copied), pool buffers in sends are at most half the pool, and a cancelled pooled
    /// receive stops the handle's multishot receive (which went on queueing buffers for
    /// nobody). The pool here (16 buffers) is smaller than the clients that do not read (32):
    /// as with the defaults, whose pool is bounded by its memory budget.
    #[test]
    fn clients_that_never_read_cannot_freeze_the_others() {
        clients_that_never_read(None);
    }

    /// The same with `--idle-timeout`, where each message is a pooled receive of its own.
    /// Found by review of the fix: the worker stopped issuing receives once a connection's
    /// backlog was full, and the port went on receiving ahead for it, 8 pool buffers queued
    /// for nobody until the idle timeout; 2 such clients froze a pool of 16. It now issues a
    /// receive and cancels it, which stops the port's receiving for that connection.
    #[test]
    fn with_an_idle_timeout_clients_that_never_read_cannot_freeze_the_others() {
        clients_that_never_read(Some(Duration::from_secs(60)));
    }

    fn clients_that_never_read(idle_timeout: Option<Duration>) {
        let config = Config {
            max_connections: 40,
            buffer_size: 65_535,
            idle_timeout,
            ..config(1)
        };
        let budget = 16 * 65_535;
        let (stop, addr, server) =
            start_with(config, Spread::native(), Some(Receive::Pooled), budget);
        let mut victim = connect_small(addr, 64 << 10);
        round_trip(&mut victim, b"before");
        let hogs: Vec<_> = (0..32).map(|_| never_reads(addr)).collect();
        thread::sleep(Duration::from_secs(2)); // the hogs fill their sockets both ways
        round_trip(&mut victim, b"during");
        round_trip(&mut connect_small(addr, 64 << 10), b"a new connection");
        end(hogs);
        stop.request();
        server.join().unwrap().unwrap();
    }

    /// Found by review (session 27): clients that send as fast as loopback goes and never read
    /// made the server's memory grow by megabytes each (100 of them: 1.2 GB, most of it
    /// backlogs), since one call of `get_completions` could bring a connection whatever its
    /// socket received meanwhile, all of it after its receive paused, and a send in flight did
    /// not count against the bound. Now the port bounds what one call brings a connection
    /// ([`proactor::LocalPort::recv_limit`], Linux 6.17+) and the bound counts the send in
    /// flight: no connection holds more than its bound plus twice that limit (what was queued
    /// when its receive paused, then one more call's worth).
    #[test]
    fn clients_that_never_read_hold_a_bounded_amount_each() {
        let config = Config {
            max_connections: 16,
            buffer_size: 65_535,
            ..config(1)
        };
        let limit = proactor::LocalPort::with_pool(1, config.buffer_size)
            .unwrap()
            .recv_limit();
        let bound = crate::worker::BACKLOG_BUFFERS * config.buffer_size;
        let (stop, addr, server) =
            start_with(config, Spread::native(), Some(Receive::Pooled), POOL_BUDGET);
        // As fast as loopback goes: no pause, default socket buffers.
        let hogs: Vec<_> = (0..8)
            .map(|_| writes_without_reading(TcpStream::connect(addr).unwrap(), 256 << 10, None))
            .collect();
        end(hogs);
        stop.request();
        let (_, counts) = server.join().unwrap().unwrap();
        let held = counts.iter().map(|c| c.held_most).max().unwrap();
        eprintln!("the most a connection held: {held} bytes (receive limit {limit:?})");
        // No receive limit (older kernels, epoll): nothing bounds one call's data.
        if let Some(limit) = limit {
            assert!(
                held < bound + 2 * limit,
                "a connection held {held} bytes: over its bound {bound} plus twice the receive limit {limit}"
            );
        }
    }

    /// Found by review of the fix: a worker whose pool is one buffer (`--max-connections` no
    /// more than `--workers`) allowed one pooled send, the whole pool: a client that never
    /// reads kept it, and the worker's next connection never received. Such a pool now spares
    /// none for sends (every message is copied).
    #[test]
    fn a_pool_of_one_buffer_is_never_held_by_a_client_that_never_reads() {
        let config = Config {
            max_connections: 2,
            buffer_size: 65_535,
            ..config(2)
        };
        let (stop, addr, server) =
            start_with(config, Spread::Handoff, Some(Receive::Pooled), POOL_BUDGET);
        let hog = never_reads(addr); // worker 0's
        // To worker 1, then gone, so that the next goes to worker 0 within the limit.
        round_trip(&mut connect_small(addr, 64 << 10), b"to worker 1");
        thread::sleep(Duration::from_secs(2));
        round_trip(
            &mut connect_small(addr, 64 << 10),
            b"on the worker of the hog",
        );
        end(vec![hog]);
        stop.request();
        server.join().unwrap().unwrap();
    }

    /// The acceptor hands connections round-robin: with 3 workers and 30 clients, each serves
    /// 10, every one echoed; the summary adds the workers up; stop drains every worker.
    #[test]
    fn handoff_spreads_connections_round_robin_and_stops_every_worker() {
        let (stop, addr, server) = start(config(3), Spread::Handoff);
        let mut clients: Vec<TcpStream> = (0..30)
            .map(|_| {
                let s = TcpStream::connect(addr).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                s
            })
            .collect();
        for (i, c) in clients.iter_mut().enumerate() {
            round_trip(c, format!("client {i:02}").as_bytes());
        }
        let start = Instant::now();
        stop.request();
        let (summary, counts) = server.join().unwrap().unwrap();
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "{:?}",
            start.elapsed()
        );
        let served: Vec<u64> = counts.iter().map(|c| c.served).collect();
        assert_eq!(served, [10, 10, 10]);
        assert_eq!((summary.connections, summary.bytes_echoed), (30, 30 * 9));
        for mut c in clients {
            assert_eq!(c.read(&mut [0u8; 1]).unwrap_or(0), 0, "closed at shutdown");
        }
    }

    /// With SO_REUSEPORT every worker has its listener on the one address (port 0 resolved
    /// once), and the kernel spreads 64 connections over both workers.
    #[cfg(target_os = "linux")]
    #[test]
    fn every_worker_listens_on_the_one_port_and_gets_connections() {
        let (stop, addr, server) = start(config(2), Spread::ReusePort);
        assert_ne!(addr.port(), 0);
        let mut clients: Vec<TcpStream> = (0..64)
            .map(|_| {
                let s = TcpStream::connect(addr).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                s
            })
            .collect();
        for c in &mut clients {
            round_trip(c, b"x");
        }
        stop.request();
        let (summary, counts) = server.join().unwrap().unwrap();
        assert_eq!(summary.connections, 64);
        assert!(counts.iter().all(|c| c.served > 0), "{counts:?}");
    }

    /// The connection limit counts every worker's connections: beyond it, whichever worker
    /// accepts closes the client; a closed connection makes room again.
    #[test]
    fn the_limit_is_across_workers() {
        for spread in [Spread::ReusePort, Spread::Handoff] {
            if spread == Spread::ReusePort && !cfg!(target_os = "linux") {
                continue;
            }
            let (stop, addr, server) = start(
                Config {
                    max_connections: 3,
                    ..config(2)
                },
                spread,
            );
            let mut kept: Vec<TcpStream> = (0..3)
                .map(|_| {
                    let mut s = TcpStream::connect(addr).unwrap();
                    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                    round_trip(&mut s, b"in");
                    s
                })
                .collect();
            for _ in 0..4 {
                let mut extra = TcpStream::connect(addr).unwrap();
                extra
                    .set_read_timeout(Some(Duration::from_secs(10)))
                    .unwrap();
                assert_eq!(extra.read(&mut [0u8; 1]).unwrap_or(0), 0, "{spread:?}");
            }
            drop(kept.pop());
            let room = Instant::now() + Duration::from_secs(5);
            loop {
                let mut s = TcpStream::connect(addr).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                s.write_all(b"again").unwrap();
                let mut got = [0u8; 5];
                if s.read_exact(&mut got).is_ok() {
                    break;
                }
                assert!(Instant::now() < room, "room again once one closed");
                thread::sleep(Duration::from_millis(20));
            }
            stop.request();
            let (summary, _) = server.join().unwrap().unwrap();
            assert!(summary.refused >= 4, "{spread:?} {summary:?}");
        }
    }

    /// The idle timeout is per receive and send, renewed by each: a client active every
    /// 300 ms outlives a 1 s timeout for 2 s; once silent, it is closed after about a second.
    #[test]
    fn an_active_connection_outlives_the_idle_timeout_and_a_silent_one_does_not() {
        let (stop, addr, server) = start(
            Config {
                idle_timeout: Some(Duration::from_secs(1)),
                ..config(2)
            },
            Spread::native(),
        );
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let start = Instant::now();
        let mut silent = start;
        while start.elapsed() < Duration::from_secs(2) {
            thread::sleep(Duration::from_millis(300));
            round_trip(&mut s, b"still here");
            silent = Instant::now();
        }
        assert_eq!(s.read(&mut [0u8; 1]).unwrap_or(0), 0, "closed once silent");
        let after = silent.elapsed();
        assert!(
            after >= Duration::from_millis(900) && after < Duration::from_secs(3),
            "closed {after:?} after the last message"
        );
        stop.request();
        server.join().unwrap().unwrap();
    }

    #[test]
    fn pools_fit_the_share_of_connections_within_the_budget() {
        let c = |max_connections, buffer_size| Config {
            max_connections,
            buffer_size,
            ..config(2)
        };
        assert_eq!(pool_for(&c(100, 1024), 2, POOL_BUDGET), (64, 1024));
        assert_eq!(pool_for(&c(10_000, 65_535), 2, POOL_BUDGET), (4096, 65_535));
        assert_eq!(
            pool_for(&c(10_000, 64 << 20), 2, POOL_BUDGET),
            (4, 64 << 20)
        );
        assert_eq!(pool_for(&c(1_000_000, 1), 2, POOL_BUDGET), (1 << 15, 1));
        assert_eq!(pool_for(&c(1, 1), 8, POOL_BUDGET), (1, 1));
    }
}
