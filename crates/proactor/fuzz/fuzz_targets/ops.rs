//! Random sequences of submissions, cancels, handle drops and dequeues against a real port,
//! checked against a model of the contract.
//!
//! The input is decoded into operations on a few loopback TCP connections (each a proactor
//! `Handle` and a plain peer socket, both with small kernel buffers so that sends complete in
//! parts): receive, send, readable and post submissions, cancels of any operation submitted so
//! far, drops of a handle (a new connection takes its slot, likely its descriptor number),
//! dequeues with a zero timeout, and peer writes and reads. All from one thread: the races are
//! the failpoint tests' and loom's business; this finds the sequences nobody thought of.
//!
//! The contract checked:
//! - every submitted operation ends as exactly one completion, with its id, kind and context,
//!   and its buffer handed back (a send's unchanged, a receive's grown by what it received);
//! - a send that succeeds sent its whole buffer;
//! - cancelling an operation whose completion was dequeued fails;
//! - the bytes a peer receives are an in-order prefix of what was sent on that connection
//!   (each byte is a function of the connection's generation and its offset in the stream, so a
//!   byte of another connection, a duplicate or a gap shows at once), both directions;
//! - at the end, with every handle dropped and every completion dequeued, the port is empty and
//!   `proactor::live_operations()` is 0.
//!
//! One send and one receive at most are in flight per connection: the order of two
//! concurrent sends on one socket is not part of the contract on every backend.
#![no_main]

use std::{
    collections::HashMap,
    io::{self, Read, Write},
    net::{TcpListener, TcpStream},
    sync::OnceLock,
    time::{Duration, Instant},
};

use libfuzzer_sys::fuzz_target;
use proactor::{Completion, Handle, Iocp, OpId, OpKind};

#[path = "stream.rs"]
mod stream;

use stream::{IN, Input, OUT, small_pair, stream, whose};

/// Connections alive at once.
const SLOTS: usize = 3;
/// The largest send or receive buffer.
const MAX_LEN: usize = 96 * 1024;
/// How long the end of an input waits for the last completions.
const DRAIN: Duration = Duration::from_secs(10);

/// The port and a listener, shared by every input (creating a ring per input would dominate).
fn shared() -> &'static (Iocp, TcpListener) {
    static SHARED: OnceLock<(Iocp, TcpListener)> = OnceLock::new();
    SHARED.get_or_init(|| {
        let port = Iocp::new().expect("port");
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        (port, listener)
    })
}

struct Conn {
    generation: u64,
    handle: Handle<TcpStream>,
    peer: TcpStream,
    /// Bytes submitted to sends, in order.
    sent: u64,
    /// Bytes the peer has read.
    peer_read: u64,
    /// Bytes the peer has written.
    peer_written: u64,
    /// Bytes the handle's receives got.
    received: u64,
    send_pending: bool,
    recv_pending: bool,
    /// A send ended short (cancelled, failed): how much of it went out is unknown, so no
    /// further send is checked on this connection.
    sends_done: bool,
}

/// What the model expects of a submitted operation.
enum Expect {
    Recv {
        slot: usize,
        generation: u64,
        len: usize,
        cap: usize,
    },
    Send {
        slot: usize,
        generation: u64,
        data: Vec<u8>,
    },
    Readable,
    Post {
        value: usize,
    },
}

struct Pending {
    kind: OpKind,
    context: usize,
    expect: Expect,
}

struct Model {
    conns: Vec<Option<Conn>>,
    /// Peers of dropped handles (generation, socket, bytes read, bytes sent), still read to
    /// the end of what arrived.
    old_peers: Vec<(u64, TcpStream, u64, u64)>,
    pending: HashMap<OpId, Pending>,
    /// Operations whose completion was dequeued.
    finished: Vec<OpId>,
    /// Every id ever submitted, for cancels.
    ids: Vec<OpId>,
    next_generation: u64,
}

fn connect(listener: &TcpListener, port: &Iocp, generation: u64, slot: usize) -> Conn {
    let (accepted, peer) = small_pair(listener);
    let handle = port.add_handle(accepted, slot).expect("add_handle");
    Conn {
        generation,
        handle,
        peer,
        sent: 0,
        peer_read: 0,
        peer_written: 0,
        received: 0,
        send_pending: false,
        recv_pending: false,
        sends_done: false,
    }
}

/// Reads what the peer has, checking it continues the handle's stream.
fn peer_read(
    generation: u64,
    peer: &mut TcpStream,
    read: &mut u64,
    submitted: u64,
    generations: u64,
) {
    let mut buf = vec![0; 64 * 1024];
    loop {
        match peer.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                let want = stream(generation, OUT, *read, n);
                if let Some(i) = (0..n).find(|&i| buf[i] != want[i]) {
                    panic!(
                        "connection {generation}: byte {} of the stream is {:#04x}, sent {:#04x}: {}",
                        *read + i as u64,
                        buf[i],
                        want[i],
                        whose(&buf[i..n], generations)
                    );
                }
                assert!(
                    *read + n as u64 <= submitted,
                    "connection {generation}: the peer got {} bytes, {submitted} were sent",
                    *read + n as u64
                );
                *read += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            // The handle was dropped with data unread on its side: a reset ends the stream.
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return,
            Err(e) => panic!("connection {generation}: peer read: {e}"),
        }
    }
}

impl Model {
    fn check(&mut self, mut done: Completion) {
        let id = done.id();
        let Some(p) = self.pending.remove(&id) else {
            panic!(
                "completion for {id:?} ({:?}): not in flight (twice, or never submitted)",
                done.kind()
            );
        };
        self.finished.push(id);
        assert_eq!(done.kind(), p.kind, "{id:?}: kind");
        assert_eq!(done.context(), p.context, "{id:?}: context");
        let result = done.result();
        match p.expect {
            Expect::Recv {
                slot,
                generation,
                len,
                cap,
            } => {
                let buf = done.take_buffer().expect("a receive hands its buffer back");
                assert!(buf.capacity() >= cap, "{id:?}: receive buffer capacity");
                let conn = self.conns[slot]
                    .as_mut()
                    .filter(|c| c.generation == generation);
                let got = buf.len() - len;
                match result {
                    Ok(n) => assert_eq!(n, got, "{id:?}: receive result against buffer growth"),
                    Err(_) => assert_eq!(got, 0, "{id:?}: a failed receive grew its buffer"),
                }
                if got > 0 {
                    // A dropped handle's receive may still have got data before the cancel.
                    let Some(conn) = conn else { return };
                    let want = stream(generation, IN, conn.received, got);
                    assert!(
                        conn.received + got as u64 <= conn.peer_written && buf[len..] == want,
                        "connection {generation}: {id:?} received {got} bytes at offset {} \
                         (the peer wrote {}): {}",
                        conn.received,
                        conn.peer_written,
                        whose(&buf[len..], self.next_generation)
                    );
                    assert_eq!(
                        &buf[len..],
                        &want[..],
                        "connection {generation}: received bytes {}.. out of order",
                        conn.received
                    );
                    conn.received += got as u64;
                }
                if let Some(conn) = self.conns[slot]
                    .as_mut()
                    .filter(|c| c.generation == generation)
                {
                    conn.recv_pending = false;
                }
            }
            Expect::Send {
                slot,
                generation,
                data,
            } => {
                let buf = done.take_buffer().expect("a send hands its buffer back");
                assert_eq!(buf, data, "{id:?}: send buffer changed");
                let whole = matches!(result, Ok(n) if n == data.len());
                assert!(
                    whole || result.is_err(),
                    "{id:?}: a send completed part-way: {result:?} of {}",
                    data.len()
                );
                if let Some(conn) = self.conns[slot]
                    .as_mut()
                    .filter(|c| c.generation == generation)
                {
                    conn.send_pending = false;
                    if !whole {
                        conn.sends_done = true;
                    }
                }
            }
            Expect::Readable => {
                if let Ok(n) = result {
                    assert_eq!(n, 0, "{id:?}: readable transfers nothing");
                }
            }
            Expect::Post { value } => {
                assert_eq!(result.ok(), Some(value), "{id:?}: post's value");
            }
        }
    }

    fn dequeue(&mut self, port: &Iocp, max: usize, timeout: Duration) -> usize {
        let mut out = Vec::new();
        match port.get_completions(&mut out, max, Some(timeout)) {
            Ok(n) => assert_eq!(n, out.len(), "get_completions count"),
            Err(e) if e.kind() == io::ErrorKind::TimedOut => assert!(out.is_empty()),
            Err(e) => panic!("get_completions: {e}"),
        }
        let n = out.len();
        for done in out {
            self.check(done);
        }
        n
    }
}

fn run(data: &[u8]) {
    let (port, listener) = shared();
    let mut input = Input(data);
    let mut model = Model {
        conns: Vec::new(),
        old_peers: Vec::new(),
        pending: HashMap::new(),
        finished: Vec::new(),
        ids: Vec::new(),
        next_generation: 0,
    };
    for slot in 0..SLOTS {
        let c = connect(listener, port, model.next_generation, slot);
        model.next_generation += 1;
        model.conns.push(Some(c));
    }
    let mut steps = 0;
    while !input.0.is_empty() && steps < 256 {
        steps += 1;
        let op = input.byte();
        let slot = (op >> 4) as usize % SLOTS;
        match op % 10 {
            0 => {
                let cap = input.len(MAX_LEN);
                let keep = input.byte() as usize % 3;
                let Some(conn) = model.conns[slot].as_mut() else {
                    continue;
                };
                if conn.recv_pending {
                    continue;
                }
                // A receive appends after what the buffer holds.
                let mut buf = Vec::with_capacity(cap + keep);
                buf.resize(keep, 0xEE);
                let cap = buf.capacity();
                let id = port.recv(&conn.handle, buf);
                conn.recv_pending = true;
                model.ids.push(id);
                model.pending.insert(
                    id,
                    Pending {
                        kind: OpKind::Recv,
                        context: slot,
                        expect: Expect::Recv {
                            slot,
                            generation: conn.generation,
                            len: keep,
                            cap,
                        },
                    },
                );
            }
            1 => {
                let len = input.len(MAX_LEN);
                let Some(conn) = model.conns[slot].as_mut() else {
                    continue;
                };
                if conn.send_pending || conn.sends_done {
                    continue;
                }
                let data = stream(conn.generation, OUT, conn.sent, len);
                conn.sent += len as u64;
                conn.send_pending = true;
                let id = port.send(&conn.handle, data.clone());
                model.ids.push(id);
                model.pending.insert(
                    id,
                    Pending {
                        kind: OpKind::Send,
                        context: slot,
                        expect: Expect::Send {
                            slot,
                            generation: conn.generation,
                            data,
                        },
                    },
                );
            }
            2 => {
                let Some(conn) = model.conns[slot].as_ref() else {
                    continue;
                };
                let id = port.readable(&conn.handle);
                model.ids.push(id);
                model.pending.insert(
                    id,
                    Pending {
                        kind: OpKind::Readable,
                        context: slot,
                        expect: Expect::Readable,
                    },
                );
            }
            3 => {
                let value = input.byte() as usize;
                let id = port.post(1000 + slot, value).expect("post");
                model.ids.push(id);
                model.pending.insert(
                    id,
                    Pending {
                        kind: OpKind::Post,
                        context: 1000 + slot,
                        expect: Expect::Post { value },
                    },
                );
            }
            4 => {
                if model.ids.is_empty() {
                    continue;
                }
                let k = input.byte() as usize % model.ids.len();
                let id = model.ids[model.ids.len() - 1 - k];
                let result = port.cancel(id);
                if model.finished.contains(&id) {
                    assert!(
                        result.is_err(),
                        "cancel of {id:?}, whose completion was dequeued, succeeded"
                    );
                }
            }
            5 => {
                // Drop the handle: its operations complete (cancelled unless done first);
                // a new connection takes the slot, and likely the descriptor number.
                let Some(conn) = model.conns[slot].take() else {
                    continue;
                };
                let Conn {
                    generation,
                    handle,
                    peer,
                    sent,
                    peer_read,
                    ..
                } = conn;
                drop(handle);
                model.old_peers.push((generation, peer, peer_read, sent));
                let c = connect(listener, port, model.next_generation, slot);
                model.next_generation += 1;
                model.conns[slot] = Some(c);
            }
            6 | 7 => {
                let max = 1 + input.byte() as usize % 8;
                model.dequeue(port, max, Duration::ZERO);
            }
            8 => {
                let len = input.len(MAX_LEN);
                let Some(conn) = model.conns[slot].as_mut() else {
                    continue;
                };
                let data = stream(conn.generation, IN, conn.peer_written, len);
                match conn.peer.write(&data) {
                    Ok(n) => conn.peer_written += n as u64,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => panic!("peer write: {e}"),
                }
            }
            _ => {
                let Some(conn) = model.conns[slot].as_mut() else {
                    continue;
                };
                peer_read(
                    conn.generation,
                    &mut conn.peer,
                    &mut conn.peer_read,
                    conn.sent,
                    model.next_generation,
                );
            }
        }
    }

    // The end: read what arrived, drop every handle, and dequeue until every operation has
    // completed exactly once.
    let live: Vec<Conn> = model.conns.iter_mut().filter_map(Option::take).collect();
    for mut conn in live {
        peer_read(
            conn.generation,
            &mut conn.peer,
            &mut conn.peer_read,
            conn.sent,
            model.next_generation,
        );
        drop(conn.handle);
        model
            .old_peers
            .push((conn.generation, conn.peer, conn.peer_read, conn.sent));
    }
    let deadline = Instant::now() + DRAIN;
    while !model.pending.is_empty() {
        assert!(
            Instant::now() < deadline,
            "operations never completed: {:?}",
            model.pending.keys().collect::<Vec<_>>()
        );
        model.dequeue(port, 64, Duration::from_millis(50));
    }
    // Old peers: what arrived after their handle was dropped is still a prefix of the stream
    // (a resubmitted send must not reach a new connection, and must not repeat bytes).
    for (generation, mut peer, mut read, sent) in model.old_peers.drain(..) {
        peer_read(
            generation,
            &mut peer,
            &mut read,
            sent,
            model.next_generation,
        );
    }
    assert_eq!(
        port.operations_in_flight(),
        0,
        "operations in flight at the end"
    );
    assert_eq!(proactor::live_operations(), 0, "operation records leaked");
}

fuzz_target!(|data: &[u8]| run(data));
