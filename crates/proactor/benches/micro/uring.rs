//! The same calls made directly on the `io-uring` crate: one ring, no abstraction.

use std::{hint::black_box, net::TcpStream, os::fd::AsRawFd};

use io_uring::{IoUring, opcode, types::Fd};

use super::{Group, MESSAGE, tcp_pair, time_receives, wait_readable};

/// A `NOP` submitted and its completion reaped: io_uring's post and dequeue.
pub fn post_dequeue(group: &mut Group<'_>) {
    let mut ring = IoUring::new(64).expect("io_uring");
    group.bench_function("direct io-uring", |b| {
        b.iter(|| {
            let nop = opcode::Nop::new().build().user_data(7);
            // SAFETY: a NOP references no memory.
            unsafe { ring.submission().push(&nop) }.expect("submission queue full");
            ring.submit_and_wait(1).expect("io_uring_enter");
            let cqe = ring.completion().next().expect("a completion");
            black_box(cqe.user_data());
        })
    });
}

/// A `RECV` of 64 bytes submitted and reaped on a socket that holds them.
pub fn recv_ready(group: &mut Group<'_>) {
    let mut ring = IoUring::new(64).expect("io_uring");
    let (server, mut client): (TcpStream, TcpStream) = tcp_pair();
    let mut buf = vec![0u8; MESSAGE];
    group.bench_function("direct io-uring", |b| {
        b.iter_custom(|iters| {
            time_receives(
                iters,
                &mut client,
                |bytes| wait_readable(&server, bytes),
                || {
                    let recv = opcode::Recv::new(
                        Fd(server.as_raw_fd()),
                        buf.as_mut_ptr(),
                        buf.len() as u32,
                    )
                    .build()
                    .user_data(1);
                    // SAFETY: `buf` outlives the operation: it completes before this closure
                    // returns (submit_and_wait reaps it) and the buffer is not touched meanwhile.
                    unsafe { ring.submission().push(&recv) }.expect("submission queue full");
                    ring.submit_and_wait(1).expect("io_uring_enter");
                    let cqe = ring.completion().next().expect("a completion");
                    usize::try_from(cqe.result()).expect("receive failed")
                },
            )
        })
    });
}
