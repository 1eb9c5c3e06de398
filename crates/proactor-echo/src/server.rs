//! The echo server: a port, worker threads, pending accepts, one receive then one send per
//! connection.

use std::{
    io,
    net::{SocketAddr, TcpListener},
    sync::{
        Arc, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use proactor::{Completion, Handle, Iocp, OpId, OpKind};
use proactor_echo::steplog::{
    completed_overlapped, operation_type, raw_socket, submitted_overlapped, timestamp,
};
use socket2::{Domain, Protocol, Socket, Type};

use crate::{
    clock::Clock,
    conns::{Conn, Conns},
    shutdown::Stop,
};

/// Accepts kept pending at all times.
const PENDING_ACCEPTS: usize = 16;
/// The listener's context; connection contexts never reach it (their generation is below 2^31).
const LISTENER: usize = usize::MAX;
/// A posted packet with this context asks the workers to stop.
const STOP: usize = usize::MAX - 1;
/// Completions a worker takes from the port at once, at most.
const BATCH: usize = 64;
/// Connections the kernel queues for accepting. std's `TcpListener::bind` asks for 128, which a
/// burst of a few thousand connects overflows (dropped SYNs retry only after a second or more).
const BACKLOG: i32 = 1024;

/// What the command line decided.
pub struct Config {
    pub addr: SocketAddr,
    pub workers: usize,
    pub max_connections: usize,
    pub buffer_size: usize,
    pub idle_timeout: Option<Duration>,
    /// Log every operation submitted and completed, in the lifecycle demo's format.
    pub trace: bool,
}

struct Server {
    port: Iocp,
    listener: Mutex<Option<Handle<TcpListener>>>,
    conns: Mutex<Conns>,
    /// When each connection was last active, for idle timeouts, without a clock call per message.
    clock: Clock,
    config: Config,
    stopping: AtomicBool,
    served: AtomicU64,
    echoed: AtomicU64,
}

/// What a server did, logged when it stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    pub connections: u64,
    pub bytes_echoed: u64,
}

/// Serves until `stop` is requested, then shuts down gracefully: stops accepting, cancels and
/// closes every connection, drains the port. `ready` is called with the bound address once
/// the server accepts connections.
pub fn run(
    config: Config,
    stop: impl FnOnce() -> io::Result<Arc<Stop>>,
    ready: impl FnOnce(SocketAddr),
) -> io::Result<Summary> {
    let port = Iocp::new().map_err(|e| match e.kind() {
        io::ErrorKind::Unsupported => {
            io::Error::new(e.kind(), "no completion-port backend on this platform")
        }
        _ => e,
    })?;
    let listener = listen(config.addr)
        .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {}: {e}", config.addr)))?;
    let local = listener.local_addr()?;
    let listener = port.add_handle(listener, LISTENER)?;
    let server = Arc::new(Server {
        port,
        listener: Mutex::new(None),
        conns: Mutex::new(Conns::default()),
        clock: Clock::new(),
        config,
        stopping: AtomicBool::new(false),
        served: AtomicU64::new(0),
        echoed: AtomicU64::new(0),
    });
    for _ in 0..PENDING_ACCEPTS {
        server.submitted("Accept", LISTENER, server.port.accept(&listener));
    }
    *lock(&server.listener) = Some(listener);
    let stop = stop()?;
    let workers: Vec<_> = (0..server.config.workers)
        .map(|_| {
            let server = server.clone();
            thread::spawn(move || server.work())
        })
        .collect();
    tracing::info!(
        backend = server.port.backend(),
        workers = server.config.workers,
        "serving"
    );
    ready(local);

    // The main thread waits for the stop signal, closing idle connections meanwhile.
    // Signals only set a flag: check it at least every 100 ms.
    let tick = server
        .config
        .idle_timeout
        .map_or(Duration::from_millis(100), |t| {
            (t / 4).clamp(Duration::from_millis(50), Duration::from_millis(100))
        });
    while !stop.wait(tick) {
        server.clock.tick();
        if let Some(idle) = server.config.idle_timeout {
            server.close_idle(idle);
        }
    }

    tracing::info!("shutting down: no new connections, closing every connection");
    server.stopping.store(true, Ordering::SeqCst);
    drop(lock(&server.listener).take()); // cancels the pending accepts
    let closing = lock(&server.conns).drain();
    drop(closing); // cancels every receive and send, closes every socket
    let deadline = Instant::now() + Duration::from_secs(3);
    while server.port.operations_in_flight() > 0 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(10));
    }
    for _ in 0..server.config.workers {
        server.port.post(STOP, 0)?;
    }
    for w in workers {
        let _ = w.join();
    }
    let summary = Summary {
        connections: server.served.load(Ordering::SeqCst),
        bytes_echoed: server.echoed.load(Ordering::SeqCst),
    };
    tracing::info!(summary.connections, summary.bytes_echoed, "stopped");
    Ok(summary)
}

/// A listening socket on `addr` with [`BACKLOG`]. On Unix it reuses the address as std does
/// (a restarted server binds at once); on Windows that option would let another socket take the
/// port, so it is left off.
fn listen(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    #[cfg(unix)]
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    Ok(socket.into())
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Server {
    fn work(&self) {
        // Completions are taken in batches: one wait in the kernel (and one look at the
        // completion queue) serves every connection that became ready meanwhile.
        let mut batch = Vec::with_capacity(BATCH);
        loop {
            if let Err(e) = self.port.get_completions(&mut batch, BATCH, None) {
                tracing::error!(error = %e, "dequeue failed");
                return;
            }
            let mut stops = 0;
            for done in batch.drain(..) {
                stops += usize::from(self.handle(done));
            }
            if stops > 0 {
                // One stop packet is posted per worker: pass on the ones this batch took from
                // the others.
                for _ in 1..stops {
                    if let Err(e) = self.port.post(STOP, 0) {
                        tracing::error!(error = %e, "cannot pass a stop request on");
                    }
                }
                return;
            }
        }
    }

    /// Acts on one completion; true when it asks this worker to stop.
    fn handle(&self, done: Completion) -> bool {
        if self.config.trace {
            eprintln!(
                "[{}] Completion received. BytesTransferred: {}, Key: {}, Overlapped: {:#x}",
                timestamp(),
                done.bytes_transferred(),
                done.context(),
                completed_overlapped(&done)
            );
            eprintln!(
                "[{}] Operation type: {}",
                timestamp(),
                operation_type(done.kind())
            );
        }
        match (done.kind(), done.context()) {
            (OpKind::Post, STOP) => return true,
            // Draining: nothing new starts, but bytes already echoed still count.
            (OpKind::Send, _) if self.stopping.load(Ordering::SeqCst) => {
                self.echoed
                    .fetch_add(done.result().unwrap_or(0) as u64, Ordering::SeqCst);
            }
            _ if self.stopping.load(Ordering::SeqCst) => {}
            (OpKind::Accept, _) => self.accepted(done),
            (OpKind::Recv, ctx) => self.received(ctx, done),
            (OpKind::Send, ctx) => self.sent(ctx, done),
            (kind, ctx) => tracing::warn!(%kind, ctx, "unexpected completion"),
        }
        false
    }

    /// Logs a submission when tracing.
    fn submitted(&self, what: &str, key: usize, id: OpId) -> OpId {
        if self.config.trace {
            let overlapped = submitted_overlapped(&self.port, id);
            eprintln!(
                "[{}] {what} submitted. Key: {key}, Overlapped: {overlapped:#x}",
                timestamp()
            );
        }
        id
    }

    fn recv(&self, conn: &Conn, ctx: usize, buf: Vec<u8>) {
        self.submitted("Read", ctx, self.port.recv(&conn.handle, buf));
    }

    fn send(&self, conn: &Conn, ctx: usize, buf: Vec<u8>) {
        self.submitted("Write", ctx, self.port.send(&conn.handle, buf));
    }

    fn accepted(&self, mut done: Completion) {
        // Keep the number of pending accepts constant.
        if let Some(listener) = lock(&self.listener).as_ref() {
            self.submitted("Accept", LISTENER, self.port.accept(listener));
        }
        let accepted = match done.result() {
            Ok(_) => done.take_accepted(),
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                None
            }
        };
        let Some(accepted) = accepted else { return };
        let mut conns = lock(&self.conns);
        if conns.len() >= self.config.max_connections {
            tracing::warn!(
                peer = %accepted.peer_addr,
                max = self.config.max_connections,
                "connection limit reached: closing the new connection"
            );
            return; // dropping the stream closes it
        }
        let ctx = conns.reserve();
        let handle = match self.port.add_handle(accepted.stream, ctx) {
            Ok(h) => h,
            Err(e) => {
                conns.release(ctx);
                tracing::warn!(peer = %accepted.peer_addr, error = %e, "cannot associate");
                return;
            }
        };
        self.served.fetch_add(1, Ordering::SeqCst);
        let socket = format!("{:#x}", raw_socket(handle.get_ref()));
        tracing::debug!(peer = %accepted.peer_addr, %socket, "connected");
        let conn = Conn {
            handle,
            peer: accepted.peer_addr,
            last_active: self.clock.now(),
        };
        self.recv(&conn, ctx, Vec::with_capacity(self.config.buffer_size));
        conns.insert(ctx, conn);
    }

    fn received(&self, ctx: usize, mut done: Completion) {
        let mut conns = lock(&self.conns);
        let Some(conn) = conns.get_mut(ctx) else {
            return;
        }; // closed meanwhile
        match done.result() {
            Ok(0) => {
                tracing::debug!(peer = %conn.peer, socket = %conn.socket(), "client closed; everything echoed");
                conns.remove(ctx);
            }
            Ok(_) => {
                conn.last_active = self.clock.now();
                let buf = done.take_buffer().unwrap_or_default();
                self.send(conn, ctx, buf);
            }
            Err(e) => self.disconnect(&mut conns, ctx, &e),
        }
    }

    fn sent(&self, ctx: usize, mut done: Completion) {
        let mut conns = lock(&self.conns);
        let Some(conn) = conns.get_mut(ctx) else {
            return;
        };
        let mut buf = done.take_buffer().unwrap_or_default();
        match done.result() {
            Ok(n) => {
                self.echoed.fetch_add(n as u64, Ordering::SeqCst);
                conn.last_active = self.clock.now();
                if n < buf.len() {
                    buf.drain(..n); // a partial send: send the rest before receiving more
                    self.send(conn, ctx, buf);
                } else {
                    buf.clear();
                    self.recv(conn, ctx, buf);
                }
            }
            Err(e) => self.disconnect(&mut conns, ctx, &e),
        }
    }

    fn disconnect(&self, conns: &mut Conns, ctx: usize, e: &io::Error) {
        if let Some(conn) = conns.remove(ctx) {
            if !proactor::is_cancelled(e) {
                tracing::warn!(
                    peer = %conn.peer,
                    socket = %conn.socket(),
                    code = proactor::raw_os_error(e),
                    "disconnection error: {e}"
                );
            }
        }
    }

    fn close_idle(&self, idle: Duration) {
        let Some(cutoff) = self.clock.now().checked_sub(idle) else {
            return;
        };
        let mut conns = lock(&self.conns);
        for ctx in conns.idle_since(cutoff) {
            if let Some(conn) = conns.remove(ctx) {
                tracing::info!(peer = %conn.peer, socket = %conn.socket(), "idle timeout: closing");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{
        io::{Read, Write},
        net::TcpStream,
        sync::{Arc, mpsc},
    };

    use super::*;

    /// A burst of connects beyond std's backlog of 128 is queued, not dropped: with 128, the
    /// 130th connect's SYN is dropped and retried only after a second, past the timeout here.
    #[test]
    fn the_listener_queues_a_burst_of_connects_before_any_accept() {
        let listener = listen("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let burst = 600; // well above 128, below the 1024 asked for and any default fd limit
        let clients: Vec<TcpStream> = (0..burst)
            .map(|i| {
                TcpStream::connect_timeout(&addr, Duration::from_millis(500))
                    .unwrap_or_else(|e| panic!("connect {i} of {burst} not queued: {e}"))
            })
            .collect();
        assert_eq!(clients.len(), burst);
    }

    /// Graceful shutdown: what a Ctrl+C or Ctrl+Break triggers (the console event itself cannot
    /// be generated under Wine, see ARCHITECTURE.md).
    #[test]
    fn stop_closes_everything_reports_a_summary_and_returns_within_5_seconds() {
        let stop = Arc::new(Stop::default());
        let (tx, rx) = mpsc::channel();
        let config = Config {
            addr: "127.0.0.1:0".parse().unwrap(),
            workers: 2,
            max_connections: 100,
            buffer_size: 1024,
            idle_timeout: None,
            trace: false,
        };
        let server = {
            let stop = stop.clone();
            thread::spawn(move || run(config, || Ok(stop), |addr| tx.send(addr).unwrap()))
        };
        let addr = rx.recv_timeout(Duration::from_secs(20)).unwrap();
        let mut clients: Vec<TcpStream> =
            (0..3).map(|_| TcpStream::connect(addr).unwrap()).collect();
        for c in &mut clients {
            c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            c.write_all(b"12345").unwrap();
            let mut got = [0u8; 5];
            c.read_exact(&mut got).unwrap();
        }
        let idle = TcpStream::connect(addr).unwrap(); // connected, never sends
        idle.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        thread::sleep(Duration::from_millis(100));

        let start = Instant::now();
        stop.request();
        let summary = server.join().unwrap().unwrap();
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "stopped in {:?}",
            start.elapsed()
        );
        assert_eq!(
            summary,
            Summary {
                connections: 4,
                bytes_echoed: 15
            }
        );
        for mut c in clients.into_iter().chain([idle]) {
            let mut buf = [0u8; 1];
            assert_eq!(
                c.read(&mut buf).unwrap_or(0),
                0,
                "every connection was closed"
            );
        }
        assert!(TcpStream::connect(addr).is_err(), "no longer accepting");
    }
}
