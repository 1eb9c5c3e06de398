//! Random sequences of operations on a [`LocalPort`] (the port owned by one thread), checked
//! against a model of its contract with exact stream oracles.
//!
//! The input is decoded into operations on a few loopback TCP connections (each a
//! `LocalHandle` and a plain peer socket, both with small kernel buffers so that sends complete
//! in parts): receives with a buffer, pooled and multishot receives over a pool of eight odd-sized
//! buffers (which the input may hold on to: the pool runs dry), sends of owned and of pool
//! buffers, several in flight on one connection, some reported only if they fail
//! (`skip_success`), deadlines, readiness waits, posts, cancels of any operation, `cancel_all`,
//! drops of a handle (a new connection takes its slot, likely its descriptor number), dequeues
//! with a zero timeout, and the peer's writes, reads and end of stream. All from the port's
//! thread, as a `LocalPort` is used; on io_uring this drives the ring's own engine (slab,
//! gathered sends, multishot receive over provided buffers, the buffer window), elsewhere (and
//! with `PROACTOR_BACKEND=epoll`) the engine over a shared port.
//!
//! The contract checked:
//! - every operation ends as exactly one completion (a multishot receive: messages with
//!   `more()`, then one without), with its id, kind, context and user value, and its buffer
//!   handed back unchanged (a send's) or grown by what it received; a send reported only if it
//!   fails makes none when it sent everything;
//! - a send that succeeds sent its whole buffer; an error is a cancel only for an operation
//!   cancelled (by `cancel`, `cancel_all` or its handle's drop), a deadline only for one that
//!   had one, and nothing else fails;
//! - the bytes the peer reads are exactly, in order, what each send reports it sent (a send
//!   still in flight: a prefix of its bytes), so no byte is lost, duplicated, reordered or sent
//!   to another connection; once the handle is closed with a FIN the peer has every byte the
//!   sends reported;
//! - the receives of a connection, in the order asked, get the peer's bytes in order, and the
//!   end of the stream is reported only once every byte the peer wrote was received;
//! - cancelling an operation whose last completion was dequeued fails;
//! - at the end every byte written each way arrived, and with every handle dropped and every
//!   completion dequeued the port is empty: nothing in flight, nothing unreported, and
//!   `proactor::live_operations()` 0.
#![no_main]

use std::{
    collections::{HashMap, HashSet, VecDeque},
    io::{self, Read, Write},
    net::{Shutdown, TcpListener, TcpStream},
    time::{Duration, Instant},
};

use libfuzzer_sys::fuzz_target;
use proactor::{LocalCompletion, LocalHandle, LocalPort, OpId, OpKind, PooledBuf};

#[path = "stream.rs"]
mod stream;

use stream::{IN, Input, OUT, small_pair, stream, whose};

/// Connections alive at once.
const SLOTS: usize = 3;
/// The largest send or receive buffer.
const MAX_LEN: usize = 48 * 1024;
/// The pool: few buffers (it runs dry), of a size that cuts messages at odd places.
const POOL: (u16, usize) = (8, 3000);
/// Pool buffers the input may hold at once.
const STASH: usize = 6;
/// How long the end of an input waits for the streams to settle and the last completions.
const DRAIN: Duration = Duration::from_secs(10);
/// Bytes of sends a connection may have that its peer did not read yet: with the small
/// buffers, a loopback stream can crawl (a closed window waits for the persist timer), and the
/// end of an input must not wait minutes for it.
const UNREAD_MAX: usize = 256 * 1024;

/// Whether `LOCAL_OPS_TRACE` is set: each step and completion is printed (to replay a crash).
fn tracing() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("LOCAL_OPS_TRACE").is_some())
}

macro_rules! trace {
    ($($arg:tt)*) => {
        if tracing() {
            eprintln!($($arg)*);
        }
    };
}

thread_local! {
    /// The port and a listener, kept for every input (a port per input would dominate).
    static SHARED: (LocalPort, TcpListener) = (
        LocalPort::with_pool(POOL.0, POOL.1).expect("port"),
        TcpListener::bind("127.0.0.1:0").expect("bind"),
    );
}

/// A send, as the peer's reads check it.
struct SendRec {
    id: OpId,
    data: Vec<u8>,
    /// What its completion said it sent; `None` while unknown (in flight, or reported only if
    /// it fails and not seen to fail).
    sent: Option<usize>,
    /// It may end before its last byte (a cancel, `cancel_all`, its handle's drop, a deadline):
    /// until its completion says where, the peer's bytes past what it sent so far may be the
    /// next send's, and are checked once that is known.
    may_end_short: bool,
}

/// A receive, in the order asked.
struct RecvRec {
    id: OpId,
    /// A pooled or multishot receive (not mixed with receives with a buffer of their own).
    pooled: bool,
    /// Bytes got and not yet checked (checked once every receive before it ended).
    got: Vec<u8>,
    /// Its last completion came.
    ended: bool,
    /// It ended with the end of the stream.
    eof: bool,
}

impl RecvRec {
    fn new(id: OpId, pooled: bool) -> RecvRec {
        RecvRec {
            id,
            pooled,
            got: Vec::new(),
            ended: false,
            eof: false,
        }
    }
}

/// Both directions of one connection (a generation), kept after its handle is dropped.
struct Stream {
    /// The peer's socket; `None` once it reset the connection.
    peer: Option<TcpStream>,
    /// The sends not yet read to their end by the peer, in the order asked; the bytes checked
    /// are `at` bytes into the first.
    sends: VecDeque<SendRec>,
    at: usize,
    /// Bytes the peer read that are not checked yet: they wait for the end of a send that may
    /// end short (see [`SendRec::may_end_short`]).
    unchecked: VecDeque<u8>,
    /// Sends the peer read whole before their completion came: it must say whole.
    read_whole: HashSet<OpId>,
    /// Offset of the next send's bytes in the handle's stream (a send cut short leaves a gap).
    next_out: u64,
    peer_written: u64,
    peer_eof: bool,
    /// The peer reset the connection (closed with `SO_LINGER` 0): what was in flight either way
    /// may be lost, operations may fail with the reset, and the end of the stream must not be
    /// reported in its place.
    reset: bool,
    recvs: VecDeque<RecvRec>,
    /// Bytes of the peer's stream the receives got, checked in order.
    received: u64,
    /// A pooled receive was asked for: bytes it took may wait on the handle for the next one,
    /// and a receive with a buffer is then refused (`InvalidInput`) rather than take the
    /// bytes after them.
    pooled_used: bool,
}

/// How the peer's side of a connection ended.
#[derive(PartialEq)]
enum End {
    /// Not yet: nothing more to read for now.
    Open,
    /// The handle's FIN: every byte its sends reported sent came before it.
    Fin,
    /// A reset (the handle closed with bytes unread on its side): what was in flight may be
    /// lost.
    Reset,
}

/// What the model expects of an operation in flight.
#[derive(Clone, Copy, PartialEq)]
enum What {
    Recv { keep: usize, cap: usize },
    RecvPooled { multishot: bool },
    Send,
    SendPooled,
    Readable,
    Post { value: usize },
}

struct Pending {
    kind: OpKind,
    what: What,
    context: usize,
    user: usize,
    generation: Option<u64>,
    deadline: bool,
    cancelled: bool,
    /// Reported only if it fails.
    skip: bool,
    /// May be refused with `InvalidInput` (a receive with a buffer after pooled ones).
    refusable: bool,
}

struct Model {
    /// The connections alive: (generation, handle) per slot.
    conns: Vec<Option<(u64, LocalHandle<TcpStream>)>>,
    streams: Vec<Stream>,
    pending: HashMap<OpId, Pending>,
    /// Operations whose last completion was dequeued.
    finished: HashSet<OpId>,
    /// Every id submitted, for cancels.
    ids: Vec<OpId>,
    stash: Vec<PooledBuf>,
    next_user: usize,
}

fn connect(
    listener: &TcpListener,
    port: &LocalPort,
    slot: usize,
) -> (LocalHandle<TcpStream>, TcpStream) {
    let (accepted, peer) = small_pair(listener);
    (port.add_handle(accepted, slot).expect("add_handle"), peer)
}

impl Stream {
    fn new(peer: TcpStream) -> Stream {
        Stream {
            peer: Some(peer),
            sends: VecDeque::new(),
            at: 0,
            unchecked: VecDeque::new(),
            read_whole: HashSet::new(),
            next_out: 0,
            peer_written: 0,
            peer_eof: false,
            reset: false,
            recvs: VecDeque::new(),
            received: 0,
            pooled_used: false,
        }
    }

    /// Checks the bytes the peer read against the sends, in order, as far as it can: through
    /// each send whose end is known (its completion came) or that cannot end short (it sends
    /// every byte, or fails, which the model does not allow it), up to a send that may end short
    /// whose completion has not come.
    fn check_peer(&mut self, generation: u64, generations: u64) {
        loop {
            let Some(s) = self.sends.front() else {
                if !self.unchecked.is_empty() {
                    let bytes: Vec<u8> = self.unchecked.iter().copied().collect();
                    panic!(
                        "connection {generation}: the peer got {} bytes no send sent: {}",
                        bytes.len(),
                        whose(&bytes, generations)
                    );
                }
                return;
            };
            let end = match s.sent {
                Some(n) => n,
                None if !s.may_end_short && !self.reset => s.data.len(),
                None => return, // its end decides whose the next bytes are
            };
            while self.at < end {
                let Some(b) = self.unchecked.pop_front() else {
                    return;
                };
                if s.data[self.at] != b {
                    let mut bytes = vec![b];
                    bytes.extend(self.unchecked.iter().take(15));
                    let unread: Vec<_> = self
                        .sends
                        .iter()
                        .map(|r| (r.id, r.data.len(), r.sent, r.may_end_short))
                        .collect();
                    panic!(
                        "connection {generation}: {:?} byte {} is {b:#04x}, sent {:#04x}: {} \
                         (sends unread: {unread:?})",
                        s.id,
                        self.at,
                        s.data[self.at],
                        whose(&bytes, generations),
                    );
                }
                self.at += 1;
            }
            if s.sent.is_none() {
                self.read_whole.insert(s.id);
            }
            trace!(
                "  peer done with {:?} ({:?} of {})",
                s.id,
                s.sent,
                s.data.len()
            );
            self.sends.pop_front();
            self.at = 0;
        }
    }

    /// Marks the sends in flight as able to end short (a `cancel_all`, a drop, a reset).
    fn sends_may_end_short(&mut self) {
        for r in &mut self.sends {
            r.may_end_short = true;
        }
    }

    /// Reads what the peer has, up to the end of the stream if it came.
    fn peer_read(&mut self, generation: u64, generations: u64) -> End {
        let mut buf = vec![0; 64 * 1024];
        loop {
            let Some(peer) = &mut self.peer else {
                return End::Reset;
            };
            match peer.read(&mut buf) {
                Ok(0) => return End::Fin,
                Ok(n) => {
                    trace!("  peer of {generation} read {n}");
                    self.unchecked.extend(&buf[..n]);
                    self.check_peer(generation, generations);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return End::Open,
                // The handle was dropped with data unread on its side: a reset ends the stream.
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return End::Reset,
                Err(e) => panic!("connection {generation}: peer read: {e}"),
            }
        }
    }

    /// A send's completion said it sent `n` bytes.
    fn send_ended(&mut self, generation: u64, generations: u64, id: OpId, n: usize, len: usize) {
        if self.read_whole.remove(&id) {
            assert_eq!(
                n, len,
                "connection {generation}: the peer got all of {id:?}, which reports {n}"
            );
            return;
        }
        let first = self.sends.front().map(|s| s.id);
        let s = self
            .sends
            .iter_mut()
            .find(|s| s.id == id)
            .unwrap_or_else(|| panic!("connection {generation}: {id:?} is not a send of it"));
        assert!(s.sent.is_none(), "{id:?}: two completions");
        if first == Some(id) {
            assert!(
                self.at <= n,
                "connection {generation}: the peer got {} bytes of {id:?}, which reports {n}",
                self.at
            );
        }
        s.sent = Some(n);
        self.check_peer(generation, generations);
    }

    /// Checks what the receives got, in the order asked, as far as every earlier one ended.
    fn check_receives(&mut self, generation: u64, generations: u64) {
        while let Some(r) = self.recvs.front_mut() {
            if !r.got.is_empty() {
                let got = std::mem::take(&mut r.got);
                let n = got.len() as u64;
                assert!(
                    self.received + n <= self.peer_written,
                    "connection {generation}: {:?} got {n} bytes at offset {}, the peer wrote {}: {}",
                    r.id,
                    self.received,
                    self.peer_written,
                    whose(&got, generations)
                );
                let want = stream(generation, IN, self.received, got.len());
                if let Some(i) = (0..got.len()).find(|&i| got[i] != want[i]) {
                    panic!(
                        "connection {generation}: {:?}: byte {} of the stream is {:#04x}, written {:#04x}: {}",
                        r.id,
                        self.received + i as u64,
                        got[i],
                        want[i],
                        whose(&got[i..], generations)
                    );
                }
                self.received += n;
            }
            if !r.ended {
                return;
            }
            if r.eof {
                // After the peer's FIN and every byte only: after a reset (whichever operation
                // took it) a receive ends with the reset, never the end of the stream.
                assert!(
                    self.peer_eof && self.received == self.peer_written,
                    "connection {generation}: {:?} reported the end of the stream at offset {} \
                     (the peer wrote {}, and {} its end; reset {})",
                    r.id,
                    self.received,
                    self.peer_written,
                    if self.peer_eof {
                        "wrote"
                    } else {
                        "did not write"
                    },
                    self.reset
                );
            }
            self.recvs.pop_front();
        }
    }

    /// Receive `id` of this connection.
    fn recv(&mut self, id: OpId) -> &mut RecvRec {
        let r = self.recvs.iter_mut().find(|r| r.id == id);
        r.unwrap_or_else(|| panic!("{id:?}: not a receive of its connection"))
    }

    fn receiving(&self, pooled: bool) -> bool {
        self.recvs.iter().any(|r| !r.ended && r.pooled == pooled)
    }
}

impl Model {
    fn generations(&self) -> u64 {
        self.streams.len() as u64
    }

    fn submitted(&mut self, id: OpId, p: Pending) {
        assert!(!self.finished.contains(&id), "{id:?}: an id used twice");
        self.ids.push(id);
        assert!(
            self.pending.insert(id, p).is_none(),
            "{id:?}: an id used twice"
        );
    }

    fn check(&mut self, mut done: LocalCompletion) {
        let id = done.id();
        let more = done.more();
        let generations = self.generations();
        trace!(
            "  done {id:?} {:?} {:?} bytes {} more {more} pooled {:?}",
            done.kind(),
            done.result(),
            done.bytes_transferred(),
            done.pooled().map(|b| b.len())
        );
        let Some(p) = self.pending.get(&id) else {
            panic!(
                "completion of {id:?} ({:?}, more {more}): not in flight (twice, or never submitted)",
                done.kind()
            );
        };
        assert_eq!(done.kind(), p.kind, "{id:?}: kind");
        assert_eq!(done.context(), p.context, "{id:?}: context");
        assert_eq!(done.user(), p.user, "{id:?}: user value");
        let result = done.result();
        if let Err(e) = &result {
            let reset = p.generation.is_some_and(|g| self.streams[g as usize].reset);
            let reset_kind = matches!(
                e.kind(),
                io::ErrorKind::ConnectionReset
                    | io::ErrorKind::BrokenPipe
                    | io::ErrorKind::ConnectionAborted
            );
            let fine = (proactor::is_cancelled(e) && p.cancelled)
                || (reset_kind && reset)
                || (proactor::is_deadline(e) && p.deadline)
                || (e.kind() == io::ErrorKind::InvalidInput && p.refusable);
            assert!(fine, "{id:?} ({:?}) failed: {e} ({:?})", p.kind, e.kind());
            assert!(!more, "{id:?}: a failure that goes on");
        }
        if more {
            assert!(
                matches!(p.what, What::RecvPooled { multishot: true }),
                "{id:?}: more completions of a single-shot operation"
            );
        } else {
            let p = self.pending.remove(&id).expect("looked up");
            self.finished.insert(id);
            return self.ended(done, p, result);
        }
        // A multishot receive's message.
        let p = &self.pending[&id];
        let g = p.generation.expect("a receive's connection");
        let buf = done.take_pooled().expect("a message holds a pool buffer");
        assert_eq!(
            result.ok(),
            Some(buf.len()),
            "{id:?}: result against its buffer"
        );
        assert!(!buf.is_empty(), "{id:?}: an empty message that goes on");
        let s = &mut self.streams[g as usize];
        let r = s.recv(id);
        assert!(!r.ended, "{id:?}: a message after its end");
        r.got.extend_from_slice(&buf);
        s.check_receives(g, generations);
        self.keep(buf);
    }

    /// An operation's last completion.
    fn ended(&mut self, mut done: LocalCompletion, p: Pending, result: io::Result<usize>) {
        let id = done.id();
        let generations = self.generations();
        match p.what {
            What::Recv { keep, cap } => {
                let buf = done.take_buffer().expect("a receive hands its buffer back");
                assert!(buf.capacity() >= cap, "{id:?}: receive buffer capacity");
                assert!(
                    buf.len() >= keep && buf[..keep].iter().all(|&b| b == 0xEE),
                    "{id:?}: bytes before the receive's changed"
                );
                let got = buf.len() - keep;
                match result {
                    Ok(n) => assert_eq!(n, got, "{id:?}: result against buffer growth"),
                    Err(_) => assert_eq!(got, 0, "{id:?}: a failed receive grew its buffer"),
                }
                let g = p.generation.expect("a receive's connection");
                let s = &mut self.streams[g as usize];
                let r = s.recv(id);
                r.got.extend_from_slice(&buf[keep..]);
                r.ended = true;
                r.eof = matches!(result, Ok(0)) && cap > keep;
                s.check_receives(g, generations);
            }
            What::RecvPooled { .. } => {
                let buf = done.take_pooled();
                let g = p.generation.expect("a receive's connection");
                let s = &mut self.streams[g as usize];
                let r = s.recv(id);
                match (&result, &buf) {
                    (Ok(n), Some(b)) => {
                        assert!(
                            *n > 0 && *n == b.len(),
                            "{id:?}: result {n} against its buffer of {}",
                            b.len()
                        );
                        r.got.extend_from_slice(b);
                    }
                    (Ok(0), None) => r.eof = true,
                    (Ok(n), None) => panic!("{id:?}: {n} bytes and no buffer"),
                    (Err(_), Some(_)) => panic!("{id:?}: a failure with a buffer"),
                    (Err(_), None) => {}
                }
                r.ended = true;
                s.check_receives(g, generations);
                if let Some(b) = buf {
                    self.keep(b);
                }
            }
            What::Send | What::SendPooled => {
                let g = p.generation.expect("a send's connection");
                let s = &mut self.streams[g as usize];
                let data = &s
                    .sends
                    .iter()
                    .find(|r| r.id == id)
                    .map(|r| r.data.clone())
                    .unwrap_or_else(|| {
                        // Read whole by the peer already: its bytes are checked; its buffer
                        // is compared by length only.
                        Vec::new()
                    });
                let (back, len): (Vec<u8>, usize) = if p.what == What::Send {
                    let b = done.take_buffer().expect("a send hands its buffer back");
                    let len = b.len();
                    (b, len)
                } else {
                    let b = done
                        .take_pooled()
                        .expect("a pooled send hands its buffer back");
                    let len = b.len();
                    let v = b.to_vec();
                    self.keep(b);
                    (v, len)
                };
                if !data.is_empty() {
                    assert_eq!(&back, data, "{id:?}: the send's buffer changed");
                }
                let n = match &result {
                    Ok(n) => {
                        assert_eq!(*n, len, "{id:?}: a send succeeded with {n} of {len} bytes");
                        assert!(
                            !p.skip,
                            "{id:?}: a send reported only if it fails succeeded, reported"
                        );
                        *n
                    }
                    Err(_) => done.bytes_transferred(),
                };
                assert!(n <= len, "{id:?}: {n} bytes sent of {len}");
                self.streams[g as usize].send_ended(g, generations, id, n, len);
            }
            What::Readable => {
                if let Ok(n) = result {
                    assert_eq!(n, 0, "{id:?}: readable transfers nothing");
                }
            }
            What::Post { value } => {
                assert_eq!(result.ok(), Some(value), "{id:?}: post's value");
            }
        }
    }

    /// Keeps a pool buffer for a later pooled send while there is room.
    fn keep(&mut self, buf: PooledBuf) {
        if self.stash.len() < STASH {
            self.stash.push(buf);
        }
    }

    fn dequeue(&mut self, port: &LocalPort, max: usize, timeout: Duration) -> usize {
        let mut out = Vec::new();
        match port.get_completions(&mut out, max, Some(timeout)) {
            Ok(n) => assert_eq!(n, out.len(), "get_completions count"),
            Err(e) if e.kind() == io::ErrorKind::TimedOut => assert!(out.is_empty()),
            Err(e) => panic!("get_completions: {e}"),
        }
        assert!(
            out.len() <= max,
            "get_completions gave {} of at most {max}",
            out.len()
        );
        let n = out.len();
        for done in out {
            self.check(done);
        }
        n
    }

    /// Marks what is in flight on connection `g` as cancelled.
    fn cancel_generation(&mut self, g: u64) {
        for p in self.pending.values_mut() {
            if p.generation == Some(g) {
                p.cancelled = true;
            }
        }
        self.streams[g as usize].sends_may_end_short();
    }

    fn sends_in_flight(&self, g: u64) -> bool {
        self.pending.values().any(|p| {
            p.generation == Some(g) && matches!(p.what, What::Send | What::SendPooled) && !p.skip
        })
    }
}

/// A deadline for the next operation, if the input asks for one.
fn deadline(input: &mut Input) -> Option<Duration> {
    let b = input.byte();
    (b & 3 == 0).then(|| Duration::from_millis(1 + u64::from(b >> 2) % 20))
}

fn run(port: &LocalPort, listener: &TcpListener, data: &[u8]) {
    let mut input = Input(data);
    let mut m = Model {
        conns: Vec::new(),
        streams: Vec::new(),
        pending: HashMap::new(),
        finished: HashSet::new(),
        ids: Vec::new(),
        stash: Vec::new(),
        next_user: 1,
    };
    for slot in 0..SLOTS {
        let (handle, peer) = connect(listener, port, slot);
        m.conns.push(Some((m.streams.len() as u64, handle)));
        m.streams.push(Stream::new(peer));
    }
    let mut steps = 0;
    while !input.0.is_empty() && steps < 256 {
        steps += 1;
        let op = input.byte();
        let slot = (op >> 4) as usize % SLOTS;
        let user = m.next_user;
        m.next_user += 1;
        let Some((g, handle)) = m.conns[slot].as_ref() else {
            continue;
        };
        let g = *g;
        let gens = m.generations();
        let s = &mut m.streams[g as usize];
        trace!("step {steps}: op {} slot {slot} connection {g}", op % 16);
        let pending = |kind, what, deadline: bool, skip| Pending {
            kind,
            what,
            context: slot,
            user,
            generation: Some(g),
            deadline,
            cancelled: false,
            skip,
            refusable: false,
        };
        match op % 16 {
            0 => {
                let cap = input.len(MAX_LEN);
                let keep = input.byte() as usize % 3;
                let after = deadline(&mut input);
                if s.receiving(true) {
                    continue;
                }
                let mut buf = Vec::with_capacity(cap + keep);
                buf.resize(keep, 0xEE);
                let cap = buf.capacity();
                let mut sub = port.with_user(user);
                if let Some(after) = after {
                    sub = sub.timeout(after);
                }
                let id = sub.recv(handle, buf);
                s.recvs.push_back(RecvRec::new(id, false));
                let mut p = pending(
                    OpKind::Recv,
                    What::Recv { keep, cap },
                    after.is_some(),
                    false,
                );
                p.refusable = s.pooled_used;
                m.submitted(id, p);
            }
            1 | 2 => {
                let multishot = op % 16 == 2;
                let after = deadline(&mut input);
                if s.receiving(false) {
                    continue;
                }
                let mut sub = port.with_user(user);
                if let Some(after) = after {
                    sub = sub.timeout(after);
                }
                let id = if multishot {
                    sub.recv_multishot(handle)
                } else {
                    sub.recv_pooled(handle)
                };
                s.pooled_used = true;
                s.recvs.push_back(RecvRec::new(id, true));
                m.submitted(
                    id,
                    pending(
                        OpKind::RecvPooled,
                        What::RecvPooled { multishot },
                        after.is_some(),
                        false,
                    ),
                );
            }
            3 | 4 => {
                let pooled = op % 16 == 4;
                let len = input.len(MAX_LEN);
                let how = input.byte();
                if s.sends.iter().map(|r| r.data.len()).sum::<usize>() > UNREAD_MAX {
                    continue;
                }
                let skip = how & 1 == 1;
                let after =
                    (how & 6 == 0).then(|| Duration::from_millis(1 + u64::from(how >> 3) % 20));
                let mut sub = port.with_user(user);
                if skip {
                    sub = sub.skip_success();
                }
                if let Some(after) = after {
                    sub = sub.timeout(after);
                }
                let (id, data, kind, what) = if pooled {
                    let Some(mut buf) = m.stash.pop() else {
                        continue;
                    };
                    buf.truncate(len.min(buf.len()));
                    let data = stream(g, OUT, s.next_out, buf.len());
                    buf.copy_from_slice(&data);
                    (
                        sub.send_pooled(handle, buf),
                        data,
                        OpKind::SendPooled,
                        What::SendPooled,
                    )
                } else {
                    let data = stream(g, OUT, s.next_out, len);
                    (
                        sub.send(handle, data.clone()),
                        data,
                        OpKind::Send,
                        What::Send,
                    )
                };
                trace!(
                    "  {id:?}: send of {} (pooled {pooled}, skip {skip}, deadline {after:?})",
                    data.len()
                );
                s.next_out += data.len() as u64;
                s.sends.push_back(SendRec {
                    id,
                    data,
                    sent: None,
                    may_end_short: after.is_some(),
                });
                m.submitted(id, pending(kind, what, after.is_some(), skip));
            }
            5 => {
                if m.ids.is_empty() {
                    continue;
                }
                let k = input.byte() as usize % m.ids.len();
                let id = m.ids[m.ids.len() - 1 - k];
                let result = port.cancel(id);
                trace!("  cancel {id:?}: {result:?}");
                if m.finished.contains(&id) {
                    assert!(
                        result.is_err(),
                        "cancel of {id:?}, whose last completion was dequeued, succeeded"
                    );
                }
                if let Some(p) = m.pending.get_mut(&id) {
                    p.cancelled = true;
                    if let Some(g) = p.generation {
                        let s = &mut m.streams[g as usize];
                        for r in s.sends.iter_mut().filter(|r| r.id == id) {
                            r.may_end_short = true;
                        }
                    }
                }
            }
            6 => {
                port.cancel_all(handle).expect("cancel_all");
                m.cancel_generation(g);
            }
            7 => {
                // Drop the handle: what is in flight on it completes (cancelled unless done
                // first); a new connection takes the slot, and likely the descriptor number.
                m.cancel_generation(g);
                drop(m.conns[slot].take());
                let (handle, peer) = connect(listener, port, slot);
                m.conns[slot] = Some((m.streams.len() as u64, handle));
                m.streams.push(Stream::new(peer));
            }
            8 | 9 => {
                let max = 1 + input.byte() as usize % 8;
                m.dequeue(port, max, Duration::ZERO);
            }
            10 => {
                let len = input.len(MAX_LEN);
                let Some(peer) = s.peer.as_mut().filter(|_| !s.peer_eof) else {
                    continue;
                };
                let data = stream(g, IN, s.peer_written, len);
                match peer.write(&data) {
                    Ok(n) => s.peer_written += n as u64,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => panic!("peer write: {e}"),
                }
            }
            11 => {
                s.peer_read(g, gens);
            }
            12 => {
                let n = input.byte() as usize % (m.stash.len() + 1);
                m.stash.truncate(m.stash.len() - n);
            }
            13 => {
                let after = deadline(&mut input);
                let mut sub = port.with_user(user);
                if let Some(after) = after {
                    sub = sub.timeout(after);
                }
                let id = sub.readable(handle);
                m.submitted(
                    id,
                    pending(OpKind::Readable, What::Readable, after.is_some(), false),
                );
            }
            14 => {
                let value = input.byte() as usize;
                let id = port.post(100 + slot, value);
                let mut p = pending(OpKind::Post, What::Post { value }, false, false);
                p.context = 100 + slot;
                p.user = 0;
                p.generation = None;
                m.submitted(id, p);
            }
            _ => {
                let reset = input.byte() & 1 == 1;
                let Some(peer) = s.peer.take() else { continue };
                if reset {
                    // Closed with a reset: what either side had in flight may be lost.
                    trace!("  peer reset");
                    socket2::SockRef::from(&peer)
                        .set_linger(Some(Duration::ZERO))
                        .expect("SO_LINGER");
                    drop(peer);
                    s.reset = true;
                } else {
                    if !s.peer_eof {
                        peer.shutdown(Shutdown::Write).expect("peer shutdown");
                        s.peer_eof = true;
                    }
                    s.peer = Some(peer);
                }
            }
        }
    }

    // The end, first with every live connection open: the sends end (the peer reads) and the
    // receives take every byte the peer wrote.
    m.stash.clear();
    for peer in m.streams.iter().filter_map(|s| s.peer.as_ref()) {
        // Larger buffers from now on (the window stays within what the handshake set).
        let _ = socket2::SockRef::from(peer).set_recv_buffer_size(1 << 20);
    }
    let deadline = Instant::now() + DRAIN;
    for slot in 0..SLOTS {
        let (g, handle) = m.conns[slot].take().expect("a live connection");
        loop {
            // A dequeue that leaves the port's queue empty (fewer than it could take) makes
            // every failure of an unreported send already reported: the port counts one in
            // flight until its completion is queued.
            let drained = m.dequeue(port, 64, Duration::from_millis(5)) < 64;
            let gens = m.generations();
            m.streams[g as usize].peer_read(g, gens);
            let sending =
                !drained || m.sends_in_flight(g) || port.unreported_in_flight_on(&handle) > 0;
            let s = &mut m.streams[g as usize];
            if !sending {
                // Every send ended: those with no completion sent everything.
                for r in s.sends.iter_mut().filter(|r| r.sent.is_none()) {
                    assert!(
                        m.pending.get(&r.id).is_some_and(|p| p.skip),
                        "{:?}: a send with no end",
                        r.id
                    );
                    r.sent = Some(r.data.len());
                    m.pending.remove(&r.id);
                    m.finished.insert(r.id);
                }
                s.check_peer(g, gens);
            }
            // A receive still waiting (nothing more comes) ends with the handle's drop. After a
            // reset, nothing more comes either way.
            let received = s.received == s.peer_written || s.reset;
            if !sending && (s.sends.is_empty() || s.reset) && received {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "connection {g} never settled: sends in flight {sending} (unreported {}, port {}), \
                 {} sends unread: {:?}, received {} of {}, receives {:?}",
                port.unreported_in_flight_on(&handle),
                port.operations_in_flight(),
                s.sends.len(),
                s.sends
                    .iter()
                    .map(|r| (
                        r.id,
                        r.data.len(),
                        r.sent,
                        m.pending
                            .get(&r.id)
                            .map(|p| (p.skip, p.cancelled, p.deadline))
                    ))
                    .collect::<Vec<_>>(),
                s.received,
                s.peer_written,
                s.recvs.iter().map(|r| (r.id, r.ended)).collect::<Vec<_>>()
            );
            if s.received < s.peer_written && !s.reset && s.recvs.iter().all(|r| r.ended) {
                let s = &mut m.streams[g as usize];
                let id = port.recv_pooled(&handle);
                s.recvs.push_back(RecvRec::new(id, true));
                let p = Pending {
                    kind: OpKind::RecvPooled,
                    what: What::RecvPooled { multishot: false },
                    context: slot,
                    user: 0,
                    generation: Some(g),
                    deadline: false,
                    cancelled: false,
                    skip: false,
                    refusable: false,
                };
                m.submitted(id, p);
            }
        }
        // Multishot receives still going end with the handle's drop.
        m.cancel_generation(g);
        drop(handle);
    }
    // Every handle dropped: every operation ends.
    while !m.pending.values().all(|p| p.skip) || port.operations_in_flight() > 0 {
        assert!(
            Instant::now() < deadline,
            "operations never completed: {:?}, {} in flight",
            m.pending.keys().collect::<Vec<_>>(),
            port.operations_in_flight()
        );
        m.dequeue(port, 64, Duration::from_millis(20));
    }
    // Sends reported only if they fail that made no completion sent everything.
    let gens = m.generations();
    let silent: Vec<OpId> = m.pending.keys().copied().collect();
    for id in silent {
        let p = m.pending.remove(&id).expect("listed");
        let g = p.generation.expect("a send's connection");
        let s = &mut m.streams[g as usize];
        if let Some(r) = s.sends.iter_mut().find(|r| r.id == id) {
            r.sent = Some(r.data.len());
        } else {
            assert!(
                s.read_whole.remove(&id),
                "{id:?}: no send of its connection"
            );
        }
        s.check_peer(g, gens);
    }
    // The peers: what arrived after their handle's drop continues the stream; one closed with
    // a FIN (nothing unread on the handle's side) got every byte its sends reported. The port
    // waits between their reads, as a program's loop would: on io_uring the kernel may let go
    // of a dropped handle's socket only in the port's next wait (see ARCHITECTURE.md).
    for (g, s) in m.streams.iter_mut().enumerate() {
        let g = g as u64;
        let until = Instant::now() + Duration::from_secs(5);
        let end = loop {
            match s.peer_read(g, gens) {
                End::Open if Instant::now() < until => idle_wait(port),
                end => break end,
            }
        };
        assert!(
            end != End::Open,
            "connection {g}: the peer never saw the end of the stream; its connection: {}",
            s.peer
                .as_ref()
                .map_or_else(String::new, |p| connection_state(p))
        );
        assert!(
            s.read_whole.is_empty(),
            "connection {g}: sends read whole with no completion"
        );
        if end == End::Fin {
            let left: usize = s.sends.iter().map(|r| r.sent.unwrap_or(0)).sum::<usize>() - s.at;
            assert!(
                s.sends.is_empty() && s.unchecked.is_empty(),
                "connection {g}: closed with a FIN, {left} bytes its sends reported sent never came \
                 ({} sends from {:?})",
                s.sends.len(),
                s.sends.front().map(|r| r.id)
            );
        }
    }
    assert_eq!(
        port.operations_in_flight(),
        0,
        "operations in flight at the end"
    );
    assert_eq!(
        port.unreported_in_flight(),
        0,
        "unreported operations at the end"
    );
    assert_eq!(proactor::live_operations(), 0, "operation records leaked");
}

/// One wait of the port, for a millisecond, once nothing is in flight: nothing completes.
fn idle_wait(port: &LocalPort) {
    let mut out = Vec::new();
    match port.get_completions(&mut out, 1, Some(Duration::from_millis(1))) {
        Err(e) if e.kind() == io::ErrorKind::TimedOut => {}
        got => panic!("a completion with nothing in flight: {got:?} {out:?}"),
    }
}

/// What `ss` says of the connection `peer` is one end of (both ends), for a failure message.
fn connection_state(peer: &TcpStream) -> String {
    let port = peer.local_addr().map(|a| a.port()).unwrap_or(0);
    let filter = format!("( sport = :{port} or dport = :{port} )");
    match std::process::Command::new("ss")
        .args(["-tnoiem", &filter])
        .output()
    {
        Ok(out) => String::from_utf8_lossy(&out.stdout).into_owned(),
        Err(e) => format!("(ss: {e})"),
    }
}

fuzz_target!(|data: &[u8]| SHARED.with(|(port, listener)| run(port, listener, data)));
