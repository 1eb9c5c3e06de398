//! `bench`: runs the echo servers against the verifying load generator, interleaved, and
//! prints the tables BENCHMARKS.md holds. `cargo xtask bench` builds everything in release
//! mode and runs it. Linux only: never benchmark under Wine.
//!
//! - `bench matrix [--full] [--reps N] [--secs S]`: the throughput/latency/CPU matrix;
//! - `bench memory [--conns N]`: resident memory per idle connection.
//! - `bench targets [--reps N] [--secs S] [--cells 1,2] [--only NAME,...]`: the cells of the
//!   performance targets, one headline table on stdout, the per-cell tables into
//!   `bench-results/<UTC time>/`.

#[cfg(target_os = "linux")]
mod loadgen;
#[cfg(target_os = "linux")]
mod procstat;
#[cfg(target_os = "linux")]
mod runner;

#[cfg(target_os = "linux")]
fn main() -> std::process::ExitCode {
    runner::main()
}

#[cfg(not(target_os = "linux"))]
fn main() {
    eprintln!("bench: benchmarks run on Linux (never under Wine)");
    std::process::exit(1);
}
