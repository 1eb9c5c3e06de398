//! `proactor-echo`: an asynchronous TCP echo server on proactor's completion ports.
//!
//! By default, thread-per-core: each worker thread owns a [`proactor::LocalPort`] and serves
//! its own connections; on Linux with pooled receive (a received pool buffer is sent back as it
//! is, no copy; an idle connection holds no buffer), on Windows into a buffer of each
//! connection's own (one WinSock call fewer per message there; `--receive` chooses). On Linux
//! every worker listens on the address with a socket of its own (`SO_REUSEPORT`); elsewhere one
//! worker accepts and hands the connections round-robin to the others (see `local_server.rs`).
//!
//! With `--shared`, the classic IOCP design: one port, a pool of worker threads dequeuing
//! completions, several accepts kept pending (`server.rs`).
//!
//! Both bound what a connection holds, so that a client that does not read is slowed by TCP,
//! never buffered without limit: one receive then one send of a buffer of its own with
//! `--shared` and `--receive owned`; with pooled receive a send and a backlog of two
//! `--buffer-size` buffers' worth, plus what the port may still bring after the receive
//! paused (two more pool buffers a call on Linux 6.17+: see `worker.rs` and the README).

mod accepting;
mod clock;
mod conns;
#[cfg(unix)]
mod limits;
mod local_server;
mod server;
mod shutdown;
mod worker;

use std::{net::IpAddr, process::ExitCode, time::Duration};

use clap::Parser;

/// An asynchronous TCP echo server on I/O completion ports.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// TCP port to listen on (1024 to 65535, or 0 for any free port: the ready line says which).
    // Negative numbers are taken as the value (`--port -1`), so the range check names the range
    // instead of clap reporting an unknown option.
    #[arg(long, default_value_t = 8080, value_parser = parse_port, allow_negative_numbers = true)]
    port: u16,
    /// Address to bind (IPv4 or IPv6).
    #[arg(long, default_value = "127.0.0.1")]
    bind: IpAddr,
    /// Worker threads, each with a port of its own (with --shared: dequeuing the one port)
    /// [default: logical CPUs].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1024), allow_negative_numbers = true)]
    workers: Option<u32>,
    /// Connections served at once; beyond it new clients are accepted and closed. (On Unix the
    /// descriptor limit is raised to the hard limit at start; a warning says if this is still
    /// above it: clients beyond wait in the listen queue until descriptors free up.)
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..), allow_negative_numbers = true)]
    max_connections: u32,
    /// Receive buffer size, in bytes (by default the size of the pool buffers a receive
    /// completes with; with --shared, each connection's own buffer).
    #[arg(long, default_value_t = 65_535, value_parser = clap::value_parser!(u32).range(1..=(64 << 20)), allow_negative_numbers = true)]
    buffer_size: u32,
    /// Close connections idle for this many seconds [default: off].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..), allow_negative_numbers = true)]
    idle_timeout: Option<u64>,
    /// The longest, in microseconds, a worker's port may hold completions back to take more at
    /// once: each port measures its CPU time per byte and its bytes per second, and holds them
    /// back only while that saves work and moves no fewer bytes per second (pipelining
    /// clients; clients that wait for each reply slow down, which a try shows) (0: never;
    /// io_uring on Linux 6.12 or later, per-thread ports only; elsewhere ignored).
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(0..=10_000), allow_negative_numbers = true)]
    coalesce_usec: u32,
    /// Log every operation submitted and completed.
    #[arg(long)]
    trace: bool,
    /// Run the classic design instead: one port shared by every worker thread.
    #[arg(long)]
    shared: bool,
    /// How connections receive: `pooled` (from the worker's buffer pool: an idle connection
    /// holds no buffer; on Windows one WinSock call more per message) or `owned` (into a
    /// buffer of each connection's own) [default: pooled with io_uring on Linux 6.17 or later,
    /// where the kernel bounds what a connection receives ahead; owned elsewhere].
    #[arg(long, value_enum, conflicts_with = "shared")]
    receive: Option<worker::Receive>,
}

/// A port from 1024 to 65535, or 0 (any free port); the error names the range whatever was
/// wrong. `-0` is not 0: it is refused.
fn parse_port(s: &str) -> Result<u16, String> {
    s.parse::<u16>()
        .ok()
        .filter(|p| *p == 0 && s == "0" || *p >= 1024)
        .ok_or_else(|| {
            "expected a port number from 1024 to 65535 (or 0: any free port)".to_string()
        })
}

fn main() -> ExitCode {
    let args = match Args::try_parse() {
        Ok(args) => args,
        Err(e) if !e.use_stderr() => {
            // --help and --version
            print!("{e}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            // One line that says what is wrong (clap's first line names the valid range).
            let text = e.to_string();
            eprintln!("{}", text.lines().next().unwrap_or("invalid arguments"));
            return ExitCode::from(2);
        }
    };
    // Test-only: failpoints as the `FAILPOINTS` variable sets them.
    #[cfg(feature = "failpoints")]
    let _failpoints = fail::FailScenario::setup();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    #[cfg(unix)]
    check_descriptor_limit(args.max_connections);
    let config = server::Config {
        addr: (args.bind, args.port).into(),
        workers: args.workers.map_or_else(
            || std::thread::available_parallelism().map_or(2, |n| n.get()),
            |n| n as usize,
        ),
        max_connections: args.max_connections as usize,
        buffer_size: args.buffer_size as usize,
        idle_timeout: args.idle_timeout.map(Duration::from_secs),
        coalesce: Some(Duration::from_micros(args.coalesce_usec.into())).filter(|d| !d.is_zero()),
        trace: args.trace,
    };
    let ready = |addr| println!("listening on {addr}");
    let run = if args.shared {
        server::run(config, shutdown::on_signal, ready)
    } else {
        local_server::run(config, args.receive, shutdown::on_signal, ready)
    };
    match run {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("proactor-echo: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Raises the soft descriptor limit to the hard one, and says once if `--max-connections` still
/// does not fit. The maximum is kept, not capped: clients beyond what fits wait in the listen
/// queue while accepting pauses, and are served as descriptors free up, rather than being
/// accepted and closed (and once the limit is raised outside, the maximum asked for holds).
#[cfg(unix)]
fn check_descriptor_limit(max_connections: u32) {
    match limits::raise_nofile() {
        Ok((before, nofile)) => {
            if nofile > before {
                tracing::debug!(before, nofile, "descriptor limit raised to the hard limit");
            }
            let fits = limits::connections_fitting(nofile);
            if u64::from(max_connections) > fits {
                tracing::warn!(
                    max_connections,
                    nofile,
                    fits,
                    "--max-connections is above what the descriptor limit allows (raise the hard limit: ulimit -Hn, LimitNOFILE=); beyond it, new clients wait in the listen queue until descriptors free up"
                );
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot read the descriptor limit"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_serve_127_0_0_1_8080() {
        let args = Args::try_parse_from(["proactor-echo"]).unwrap();
        assert_eq!((args.bind, args.port), ("127.0.0.1".parse().unwrap(), 8080));
        assert_eq!((args.max_connections, args.buffer_size), (10_000, 65_535));
        assert_eq!(args.coalesce_usec, 200);
        assert_eq!(
            (args.workers, args.idle_timeout, args.trace, args.shared),
            (None, None, false, false)
        );
        assert_eq!(args.receive, None);
    }

    #[test]
    fn ports_are_checked_at_both_ends() {
        assert_eq!(parse_port("1024"), Ok(1024));
        assert_eq!(parse_port("65535"), Ok(65535));
        assert_eq!(parse_port("0"), Ok(0));
        for bad in ["1023", "65536", "x", "-1", "", "8080 ", "-0", "00", "1"] {
            assert!(
                parse_port(bad).unwrap_err().contains("1024 to 65535"),
                "{bad}"
            );
        }
        // The negative value reaches the range check, not clap's unknown-option error.
        let err = Args::try_parse_from(["proactor-echo", "--port", "-1"]).unwrap_err();
        assert!(err.to_string().contains("1024 to 65535"), "{err}");
    }
}
