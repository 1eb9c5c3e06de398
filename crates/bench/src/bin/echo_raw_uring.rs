//! The zero-overhead reference: an echo server written directly on the `io-uring` crate, one
//! thread, one ring, no abstraction. A connection is a slot with one buffer; `user_data` is
//! `slot << 8 | operation`. One receive, then one send of what arrived (resent from where a
//! partial send stopped), then the next receive: the same design as proactor-echo.
//!
//! Three kernel features can be switched on, to measure what each is worth to a server that
//! could use them (BENCHMARKS.md): `--poll-first` (`IORING_RECVSEND_POLL_FIRST` on receives, as
//! proactor does), `--fixed-files` (every connection in the ring's registered file table, no
//! file reference taken per operation) and `--defer-taskrun` (`SINGLE_ISSUER | DEFER_TASKRUN`:
//! completion work runs only when the one thread waits, which a ring shared by several threads,
//! like an `Iocp`, cannot use).

#[cfg(target_os = "linux")]
#[path = "../peer.rs"]
mod peer;

#[cfg(target_os = "linux")]
fn main() -> std::io::Result<()> {
    use std::{os::fd::AsRawFd, os::fd::FromRawFd, os::fd::OwnedFd};

    use clap::Parser;
    use io_uring::{
        IoUring, opcode, squeue,
        types::{Fd, Fixed},
    };

    const ACCEPT: u64 = 0;
    const RECV: u64 = 1;
    const SEND: u64 = 2;

    struct Conn {
        fd: OwnedFd,
        buf: Vec<u8>,
        len: usize,
        sent: usize,
    }

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        common: peer::Args,
        /// Receives wait for readiness before their first attempt.
        #[arg(long)]
        poll_first: bool,
        /// Connections are used through the registered file table.
        #[arg(long)]
        fixed_files: bool,
        /// `IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN`.
        #[arg(long)]
        defer_taskrun: bool,
    }

    /// Slots in the registered file table (the most connections a run opens, and some).
    const FIXED: u32 = 16_384;

    let cli = Cli::parse();
    let args = cli.common;
    let listener = peer::listen(args.port)?;
    println!("listening on {}", listener.local_addr()?);
    let mut builder = IoUring::builder();
    if cli.defer_taskrun {
        builder.setup_single_issuer().setup_defer_taskrun();
    }
    let mut ring = builder.build(4096)?;
    if cli.fixed_files {
        ring.submitter().register_files_sparse(FIXED)?;
    }
    let recv_flags: u16 = if cli.poll_first { 1 } else { 0 }; // IORING_RECVSEND_POLL_FIRST
    // Builds an SQE on a connection's registered slot or on its descriptor.
    macro_rules! on {
        ($slot:expr, $c:expr, |$t:ident| $build:expr) => {
            if cli.fixed_files {
                let $t = Fixed($slot as u32);
                $build
            } else {
                let $t = Fd($c.fd.as_raw_fd());
                $build
            }
        };
    }
    let mut conns: Vec<Option<Conn>> = Vec::new();
    let mut free: Vec<usize> = Vec::new();
    let lfd = Fd(listener.as_raw_fd());

    let push = |ring: &mut IoUring, e: squeue::Entry| {
        // SAFETY: every pointer an SQE carries points into a connection's buffer, which lives
        // in `conns` until that connection's last CQE is reaped (one operation at a time).
        while unsafe { ring.submission().push(&e) }.is_err() {
            ring.submit().expect("submit");
        }
    };
    push(
        &mut ring,
        opcode::Accept::new(lfd, std::ptr::null_mut(), std::ptr::null_mut())
            .build()
            .user_data(ACCEPT),
    );
    loop {
        ring.submit_and_wait(1)?;
        let cqes: Vec<(u64, i32)> = ring
            .completion()
            .map(|c| (c.user_data(), c.result()))
            .collect();
        for (ud, res) in cqes {
            let (slot, op) = ((ud >> 8) as usize, ud & 0xff);
            match op {
                ACCEPT => {
                    push(
                        &mut ring,
                        opcode::Accept::new(lfd, std::ptr::null_mut(), std::ptr::null_mut())
                            .build()
                            .user_data(ACCEPT),
                    );
                    if res < 0 {
                        continue;
                    }
                    // SAFETY: a new descriptor from accept, owned here.
                    let fd = unsafe { OwnedFd::from_raw_fd(res) };
                    let conn = Conn {
                        fd,
                        buf: vec![0; args.buffer_size],
                        len: 0,
                        sent: 0,
                    };
                    let slot = match free.pop() {
                        Some(s) => {
                            conns[s] = Some(conn);
                            s
                        }
                        None => {
                            conns.push(Some(conn));
                            conns.len() - 1
                        }
                    };
                    let c = conns[slot].as_mut().expect("just set");
                    if cli.fixed_files {
                        assert!(slot < FIXED as usize, "more connections than fixed slots");
                        ring.submitter()
                            .register_files_update(slot as u32, &[c.fd.as_raw_fd()])?;
                    }
                    let e = on!(slot, c, |t| opcode::Recv::new(
                        t,
                        c.buf.as_mut_ptr(),
                        c.buf.len() as u32
                    )
                    .ioprio(recv_flags)
                    .build());
                    push(&mut ring, e.user_data((slot as u64) << 8 | RECV));
                }
                RECV | SEND => {
                    let Some(c) = conns[slot].as_mut() else {
                        continue;
                    };
                    if res <= 0 {
                        if cli.fixed_files {
                            // The table holds a reference: without this the socket stays open.
                            ring.submitter().register_files_update(slot as u32, &[-1])?;
                        }
                        conns[slot] = None; // EOF or error: close
                        free.push(slot);
                        continue;
                    }
                    if op == RECV {
                        c.len = res as usize;
                        c.sent = 0;
                    } else {
                        c.sent += res as usize;
                    }
                    let e = if c.sent < c.len {
                        let rest = &c.buf[c.sent..c.len];
                        on!(slot, c, |t| opcode::Send::new(
                            t,
                            rest.as_ptr(),
                            rest.len() as u32
                        )
                        .flags(libc::MSG_NOSIGNAL)
                        .build())
                        .user_data((slot as u64) << 8 | SEND)
                    } else {
                        on!(slot, c, |t| opcode::Recv::new(
                            t,
                            c.buf.as_mut_ptr(),
                            c.buf.len() as u32
                        )
                        .ioprio(recv_flags)
                        .build())
                        .user_data((slot as u64) << 8 | RECV)
                    };
                    push(&mut ring, e);
                }
                _ => {}
            }
        }
    }
}

#[cfg(not(target_os = "linux"))]
fn main() {
    eprintln!("echo-raw-uring: benchmarks run on Linux");
    std::process::exit(1);
}
