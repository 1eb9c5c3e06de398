//! How fast several threads can post to and dequeue from one port: a table of posted packets
//! per second for 1, 2 and 4 threads, on the backend `Iocp::new()` picks (set
//! `PROACTOR_BACKEND=epoll` on Linux for the fallback).
//!
//! `cargo run --release -p proactor --example dequeue`
//!
//! Never run it under Wine to measure anything: Wine is 100 to 1000 times slower than Windows.

use std::{
    sync::{Arc, Barrier},
    thread,
    time::{Duration, Instant},
};

use proactor::Iocp;

const PACKETS_PER_THREAD: usize = 200_000;

fn run(threads: usize) -> std::io::Result<(f64, Duration)> {
    let port = Arc::new(Iocp::new()?);
    let start = Arc::new(Barrier::new(threads + 1));
    let workers: Vec<_> = (0..threads)
        .map(|t| {
            let (port, start) = (port.clone(), start.clone());
            thread::spawn(move || -> std::io::Result<()> {
                start.wait();
                // Keep 64 packets in flight per thread: post, then take one back each time.
                for i in 0..64 {
                    port.post(t, i)?;
                }
                for i in 64..PACKETS_PER_THREAD + 64 {
                    port.get_completion(Some(Duration::from_secs(10)))?;
                    if i < PACKETS_PER_THREAD {
                        port.post(t, i)?;
                    }
                }
                Ok(())
            })
        })
        .collect();
    start.wait();
    let began = Instant::now();
    for w in workers {
        w.join().expect("worker")?;
    }
    let took = began.elapsed();
    Ok((
        (threads * PACKETS_PER_THREAD) as f64 / took.as_secs_f64(),
        took,
    ))
}

fn main() -> std::io::Result<()> {
    let backend = Iocp::new()?.backend();
    println!("| backend | threads | packets/s | time |");
    println!("|---|---:|---:|---:|");
    for threads in [1, 2, 4] {
        let (rate, took) = run(threads)?;
        println!("| {backend} | {threads} | {:.0} | {:.2?} |", rate, took);
    }
    Ok(())
}
