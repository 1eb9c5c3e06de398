//! The hand-written reference with every io_uring feature that cuts per-message work, written
//! directly on the `io-uring` crate after the design of liburing's `examples/echo-server.c`:
//! one thread, one ring (`SINGLE_ISSUER | DEFER_TASKRUN`, else `COOP_TASKRUN`, else plain: the
//! one used is said on stderr), the ring descriptor registered, one multishot accept that puts
//! each connection straight into the ring's file table (a direct descriptor: no descriptor in
//! the process, no file reference per operation), and per connection one multishot receive
//! selecting its buffers from a provided-buffer ring.
//!
//! Each received buffer is sent back as it is (no copy) and given back to the buffer ring when
//! its send has completed. A connection has at most one send in the kernel: buffers received
//! meanwhile wait in its queue, in order; a partial send is continued from where it stopped.
//! `ENOBUFS` (the buffer ring empty) ends a multishot receive without losing data (it stays in
//! the socket): the connection is re-armed once buffers are back. A receive that ends for any
//! other reason is re-armed; end of stream or an error closes the connection once its queued
//! sends are done (an error cancels the receive first), with `IORING_OP_CLOSE` on its slot.

#[cfg(target_os = "linux")]
#[path = "../peer.rs"]
mod peer;

#[cfg(target_os = "linux")]
fn main() -> std::io::Result<()> {
    use std::{collections::VecDeque, os::fd::AsRawFd};

    use clap::Parser;
    use io_uring::{
        IoUring, Submitter, cqueue, opcode,
        squeue::{Entry, SubmissionQueue},
        types::{BufRingEntry, Fd, Fixed},
    };

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        common: peer::Args,
        /// Buffers in the provided-buffer ring (a power of two, at most 32,768), each
        /// `--buffer-size` bytes (memory is only resident once a buffer has been used). Fewer
        /// buffers, fewer pages and cache lines cycled through; too few, more `ENOBUFS`.
        #[arg(long, default_value_t = 1024)]
        buffers: u16,
    }

    const ACCEPT: u64 = 0;
    const RECV: u64 = 1;
    const SEND: u64 = 2;
    const CLOSE: u64 = 3;
    const CANCEL: u64 = 4;
    /// The buffer group of the one provided-buffer ring.
    const GROUP: u16 = 0;

    /// `op | slot << 8 | generation << 32`: a slot's CQEs from before it was reused are
    /// recognised by their generation.
    fn tag(op: u64, slot: usize, generation: u32) -> u64 {
        op | (slot as u64) << 8 | (generation as u64) << 32
    }

    #[derive(Default)]
    struct Conn {
        generation: u32,
        /// Accepted and not yet closed (its close may be in flight).
        live: bool,
        recv_armed: bool,
        cancel_sent: bool,
        /// No more receives: close once the queue is sent.
        closing: bool,
        close_sent: bool,
        /// Buffers received and not yet all sent, oldest first: (buffer id, length). The front
        /// one is in the kernel when `sending`, `sent` bytes of it already gone.
        queue: VecDeque<(u16, u32)>,
        sending: bool,
        sent: u32,
    }

    /// The provided-buffer ring: `count` entries shared with the kernel, and the buffers.
    struct Buffers {
        ring: *mut BufRingEntry,
        tail: u16,
        mask: u16,
        base: *mut u8,
        size: usize,
        /// From one buffer to the next: `size` rounded up to a cache line, plus one, so that
        /// the buffers' first lines do not all fall into the same cache sets.
        stride: usize,
        /// Buffers given back since the tail was last published.
        returned: usize,
    }

    impl Buffers {
        fn addr(&self, bid: u16) -> *mut u8 {
            // SAFETY: bid < count, and the mapping holds count strides of at least `size` bytes.
            unsafe { self.base.add(bid as usize * self.stride) }
        }

        /// Puts `bid` back at the ring's tail (published by `publish`).
        fn give_back(&mut self, bid: u16) {
            // SAFETY: the entry at tail & mask is inside the ring's mapping; the kernel reads
            // entries only below the published tail, and this one is at or past it.
            let e = unsafe { &mut *self.ring.add((self.tail & self.mask) as usize) };
            e.set_addr(self.addr(bid) as u64);
            e.set_len(self.size as u32);
            e.set_bid(bid);
            self.tail = self.tail.wrapping_add(1);
            self.returned += 1;
        }

        /// Makes the entries given back visible to the kernel; whether there were any.
        fn publish(&mut self) -> bool {
            if self.returned == 0 {
                return false;
            }
            self.returned = 0;
            // SAFETY: the tail field lives in entry 0's reserved field, inside the mapping;
            // the kernel reads it with acquire ordering.
            unsafe {
                let tail = BufRingEntry::tail(self.ring) as *const std::sync::atomic::AtomicU16;
                (*tail).store(self.tail, std::sync::atomic::Ordering::Release);
            }
            true
        }
    }

    fn map(bytes: usize) -> std::io::Result<*mut u8> {
        // SAFETY: an anonymous private mapping, owned by this process until it exits.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(p.cast())
    }

    fn push(sq: &mut SubmissionQueue<'_>, submitter: &Submitter<'_>, e: &Entry) {
        // SAFETY: every buffer an SQE points to is in the buffer mapping, which lives until
        // the process exits.
        while unsafe { sq.push(e) }.is_err() {
            sq.sync();
            submitter.submit().expect("submit");
            sq.sync();
        }
    }

    let cli = Cli::parse();
    let args = cli.common;
    assert!(
        cli.buffers.is_power_of_two() && cli.buffers <= 32_768,
        "--buffers: a power of two up to 32,768"
    );
    // The file table may not be larger than the descriptor limit: raise it to the hard limit.
    // SAFETY: getrlimit/setrlimit read and write a plain struct.
    let files = unsafe {
        let mut l: libc::rlimit = std::mem::zeroed();
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut l);
        l.rlim_cur = l.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &l);
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut l);
        l.rlim_cur.min(65_536) as u32
    };

    let listener = peer::listen(args.port)?;
    println!("listening on {}", listener.local_addr()?);

    const SQ: u32 = 4096;
    const CQ: u32 = 32_768;
    let (mut ring, setup): (IoUring, _) = match IoUring::builder()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .setup_submit_all()
        .setup_cqsize(CQ)
        .build(SQ)
    {
        Ok(r) => (r, "single_issuer+defer_taskrun"),
        Err(_) => match IoUring::builder()
            .setup_coop_taskrun()
            .setup_taskrun_flag()
            .setup_cqsize(CQ)
            .build(SQ)
        {
            Ok(r) => (r, "coop_taskrun"),
            Err(_) => (IoUring::builder().setup_cqsize(CQ).build(SQ)?, "plain"),
        },
    };
    let (mut submitter, mut sq, mut cq) = ring.split();
    let registered = submitter.register_ring_fd().is_ok();
    submitter.register_files_sparse(files)?;

    let count = cli.buffers as usize;
    let size = args.buffer_size;
    let stride = size.div_ceil(64) * 64 + 64;
    let mut bufs = Buffers {
        ring: map(count * std::mem::size_of::<BufRingEntry>())?.cast(),
        tail: 0,
        mask: cli.buffers - 1,
        base: map(count * stride)?,
        size,
        stride,
        returned: 0,
    };
    // SAFETY: the ring mapping is page-aligned, `count` entries long, and outlives the ring.
    unsafe { submitter.register_buf_ring_with_flags(bufs.ring as u64, cli.buffers, GROUP, 0)? };
    for bid in 0..cli.buffers {
        bufs.give_back(bid);
    }
    bufs.publish();
    eprintln!(
        "echo-raw-multishot: {setup}, ring descriptor {}registered, {files} direct descriptors, \
         {count} x {size} B provided buffers",
        if registered { "" } else { "not " }
    );

    let accept = opcode::AcceptMulti::new(Fd(listener.as_raw_fd()))
        .allocate_file_index(true)
        .build()
        .user_data(ACCEPT);
    push(&mut sq, &submitter, &accept);

    let mut conns: Vec<Conn> = Vec::new();
    // Connections whose receive ended with ENOBUFS: (slot, generation), re-armed once buffers
    // are back.
    let mut starved: Vec<(usize, u32)> = Vec::new();
    let mut cqes: Vec<(u64, i32, u32)> = Vec::with_capacity(CQ as usize);

    let recv = |slot: usize, generation: u32| {
        opcode::RecvMulti::new(Fixed(slot as u32), GROUP)
            .build()
            .user_data(tag(RECV, slot, generation))
    };
    // The send of the front of the queue, from where it stopped.
    let send = |bufs: &Buffers, c: &Conn, slot: usize| {
        let (bid, len) = c.queue[0];
        // SAFETY: sent < len <= size: inside buffer bid.
        let at = unsafe { bufs.addr(bid).add(c.sent as usize) };
        opcode::Send::new(Fixed(slot as u32), at, len - c.sent)
            .flags(libc::MSG_NOSIGNAL)
            .build()
            .user_data(tag(SEND, slot, c.generation))
    };

    loop {
        if bufs.publish() {
            for (slot, generation) in starved.drain(..) {
                let c = &mut conns[slot];
                if c.live && c.generation == generation && !c.closing && !c.recv_armed {
                    c.recv_armed = true;
                    push(&mut sq, &submitter, &recv(slot, generation));
                }
            }
        }
        sq.sync();
        match submitter.submit_and_wait(1) {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
            Err(e) => return Err(e),
        }
        cq.sync();
        cqes.clear();
        cqes.extend((&mut cq).map(|c| (c.user_data(), c.result(), c.flags())));
        for &(ud, res, flags) in &cqes {
            let (op, slot, generation) =
                (ud & 0xff, (ud >> 8 & 0xff_ffff) as usize, (ud >> 32) as u32);
            if op == ACCEPT {
                if !cqueue::more(flags) {
                    push(&mut sq, &submitter, &accept);
                }
                if res < 0 {
                    continue;
                }
                let slot = res as usize;
                if conns.len() <= slot {
                    conns.resize_with(slot + 1, Conn::default);
                }
                let c = &mut conns[slot];
                // The slot's previous connection is closed (the kernel gave its index out
                // again): whatever of it still arrives carries the old generation.
                *c = Conn {
                    generation: c.generation.wrapping_add(1),
                    live: true,
                    recv_armed: true,
                    ..Conn::default()
                };
                push(&mut sq, &submitter, &recv(slot, c.generation));
                continue;
            }
            let c = &mut conns[slot];
            let current = c.live && c.generation == generation;
            match op {
                RECV => {
                    if let Some(bid) = cqueue::buffer_select(flags) {
                        if current && !c.closing && res > 0 {
                            c.queue.push_back((bid, res as u32));
                            if !c.sending {
                                c.sending = true;
                                c.sent = 0;
                                push(&mut sq, &submitter, &send(&bufs, c, slot));
                            }
                        } else {
                            bufs.give_back(bid);
                        }
                    }
                    if !current || cqueue::more(flags) {
                        continue;
                    }
                    c.recv_armed = false;
                    if c.closing {
                        // Ended by the cancel (or with the error) that closing asked for.
                    } else if res > 0 {
                        c.recv_armed = true;
                        push(&mut sq, &submitter, &recv(slot, generation));
                    } else if res == -libc::ENOBUFS {
                        starved.push((slot, generation));
                    } else {
                        // End of stream, an error, or cancelled.
                        c.closing = true;
                    }
                }
                SEND => {
                    if !current {
                        continue;
                    }
                    if res <= 0 {
                        // The peer is gone: drop what was queued, stop receiving, close.
                        for (bid, _) in c.queue.drain(..) {
                            bufs.give_back(bid);
                        }
                        c.sending = false;
                        c.closing = true;
                    } else {
                        c.sent += res as u32;
                        let (bid, len) = c.queue[0];
                        if c.sent < len {
                            push(&mut sq, &submitter, &send(&bufs, c, slot));
                            continue;
                        }
                        bufs.give_back(bid);
                        c.queue.pop_front();
                        c.sent = 0;
                        if c.queue.is_empty() {
                            c.sending = false;
                        } else {
                            push(&mut sq, &submitter, &send(&bufs, c, slot));
                            continue;
                        }
                    }
                }
                CLOSE => {
                    if current {
                        c.live = false;
                    }
                    continue;
                }
                _ => continue, // CANCEL
            }
            // Closing: cancel a receive still armed; close once nothing is in flight.
            if c.closing && !c.close_sent {
                if c.recv_armed {
                    if !c.cancel_sent {
                        c.cancel_sent = true;
                        let e = opcode::AsyncCancel::new(tag(RECV, slot, generation))
                            .build()
                            .user_data(tag(CANCEL, slot, generation));
                        push(&mut sq, &submitter, &e);
                    }
                } else if !c.sending {
                    c.close_sent = true;
                    let e = opcode::Close::new(Fixed(slot as u32))
                        .build()
                        .user_data(tag(CLOSE, slot, generation));
                    push(&mut sq, &submitter, &e);
                }
            }
        }
    }
}

#[cfg(not(target_os = "linux"))]
fn main() {
    eprintln!("echo-raw-multishot: benchmarks run on Linux");
    std::process::exit(1);
}
