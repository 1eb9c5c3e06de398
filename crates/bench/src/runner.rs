//! Servers, the matrix, and the tables.

use std::{
    io::{BufRead, BufReader},
    net::{SocketAddr, TcpStream},
    path::PathBuf,
    process::{Child, Command, ExitCode, Stdio},
    time::Duration,
};

use clap::{Parser, Subcommand};

use crate::{
    loadgen::{self, Load},
    procstat,
};

#[derive(Parser)]
#[command(about = "proactor-echo against tokio, compio, monoio and a raw io_uring echo")]
struct Cli {
    #[command(subcommand)]
    what: What,
}

#[derive(Subcommand)]
enum What {
    /// Throughput, latency and server CPU per round trip over the matrix.
    Matrix {
        /// The whole matrix (connections 1/100/1,000/10,000, sizes 64 B/4 KiB/64 KiB, depth 1
        /// and 8, pinned and not); the default is a quick subset.
        #[arg(long)]
        full: bool,
        /// Repetitions of each cell (servers interleaved A B C A B C ...).
        #[arg(long, default_value_t = 3)]
        reps: usize,
        /// Seconds measured per run (after one second of warm-up).
        #[arg(long, default_value_t = 3)]
        secs: u64,
        /// Only the servers whose name contains one of these (comma-separated).
        #[arg(long, value_delimiter = ',')]
        only: Vec<String>,
        /// Connection counts to run instead of the matrix's (comma-separated).
        #[arg(long, value_delimiter = ',')]
        conns: Vec<usize>,
        /// Message sizes in bytes to run instead of the matrix's (comma-separated).
        #[arg(long, value_delimiter = ',')]
        sizes: Vec<usize>,
        /// Messages in flight per connection to run instead of the matrix's (comma-separated).
        #[arg(long, value_delimiter = ',')]
        depths: Vec<usize>,
        /// Run unpinned only (the quick matrix runs pinned only; `--full` runs both).
        #[arg(long)]
        unpinned: bool,
    },
    /// Resident memory per idle connection.
    Memory {
        #[arg(long, default_value_t = 10_000)]
        conns: usize,
    },
}

/// A server under test.
struct Server {
    name: &'static str,
    program: &'static str,
    args: Vec<String>,
    env: Vec<(&'static str, &'static str)>,
    /// Run only when `--only` names it: the raw echo's kernel-feature variants.
    variant: bool,
}

/// proactor-echo's connection limit (default 10,000, the largest cell): the peers have none.
const MAX_CONNS: &str = "100000";

fn servers() -> Vec<Server> {
    let n = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .to_string();
    let s = |name, program, args: &[&str], env: &[(&'static str, &'static str)]| Server {
        name,
        program,
        args: args.iter().map(|a| a.to_string()).collect(),
        env: env.to_vec(),
        variant: false,
    };
    let variant = |name, args: &[&str]| Server {
        variant: true,
        ..s(name, "echo-raw-uring", args, &[])
    };
    vec![
        s(
            "proactor io_uring 1w",
            "proactor-echo",
            &["--workers", "1", "--max-connections", MAX_CONNS],
            &[("PROACTOR_BACKEND", "io_uring")],
        ),
        s(
            "proactor io_uring Nw",
            "proactor-echo",
            &["--workers", &n, "--max-connections", MAX_CONNS],
            &[("PROACTOR_BACKEND", "io_uring")],
        ),
        s(
            "proactor epoll 1w",
            "proactor-echo",
            &["--workers", "1", "--max-connections", MAX_CONNS],
            &[("PROACTOR_BACKEND", "epoll")],
        ),
        s(
            "proactor epoll Nw",
            "proactor-echo",
            &["--workers", &n, "--max-connections", MAX_CONNS],
            &[("PROACTOR_BACKEND", "epoll")],
        ),
        s(
            "tokio multi-thread",
            "echo-tokio",
            &["--flavor", "multi"],
            &[],
        ),
        s(
            "tokio current-thread",
            "echo-tokio",
            &["--flavor", "current"],
            &[],
        ),
        s("compio", "echo-compio", &[], &[]),
        s("monoio", "echo-monoio", &[], &[]),
        s("raw io_uring", "echo-raw-uring", &[], &[]),
        variant("raw+pf", &["--poll-first"]),
        variant("raw+pf+fixed", &["--poll-first", "--fixed-files"]),
        variant(
            "raw+pf+fixed+defer",
            &["--poll-first", "--fixed-files", "--defer-taskrun"],
        ),
    ]
}

/// Every server reads and writes up to this many bytes at a time. proactor-echo's default is
/// 65,535 (its specification's maximum read), which would split each 64 KiB message in two.
const BUFFER_SIZE: &str = "65536";

fn is_proactor(name: &str) -> bool {
    name.starts_with("proactor")
}

/// The zero-overhead reference, compared against separately from the peers.
const RAW: &str = "raw io_uring";

/// A peer: a runtime's echo server, neither proactor nor the raw reference (or its variants).
fn is_peer(name: &str) -> bool {
    !is_proactor(name) && !name.starts_with("raw")
}

/// A started server: killed when dropped.
struct Running {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn bin_dir() -> PathBuf {
    std::env::current_exe()
        .expect("exe")
        .parent()
        .expect("dir")
        .to_path_buf()
}

fn start(server: &Server, port: u16, cpu: Option<usize>) -> std::io::Result<Running> {
    let program = bin_dir().join(server.program);
    let mut cmd = match cpu {
        Some(c) => {
            let mut t = Command::new("taskset");
            t.args(["-c", &c.to_string()]).arg(&program);
            t
        }
        None => Command::new(&program),
    };
    cmd.args(["--port", &port.to_string()])
        .args(["--buffer-size", BUFFER_SIZE])
        .args(&server.args)
        .envs(server.env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut child = cmd.spawn()?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("piped")).read_line(&mut line)?;
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .and_then(|a| a.parse().ok())
        .ok_or_else(|| {
            std::io::Error::other(format!("{}: no ready line: {line:?}", server.name))
        })?;
    Ok(Running { child, addr })
}

/// Pins this process (the load generator) to `cpu`, or lets it run anywhere.
fn pin_self(cpu: Option<usize>) {
    // SAFETY: cpu_set_t is plain data; CPU_SET writes within it; sched_setaffinity reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        for c in 0..cpus {
            if cpu.is_none_or(|want| want == c) {
                libc::CPU_SET(c, &mut set);
            }
        }
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// One run's figures.
#[derive(Clone, Copy, Default)]
struct Figures {
    /// Connections established before the warm-up.
    connected: f64,
    rts: f64,
    mbs: f64,
    p50: f64,
    p99: f64,
    p999: f64,
    cpu_us_per_rt: f64,
    gen_cpu_pct: f64,
    errors: u64,
    load1: f64,
    /// CPU the rest of the machine used during the run (running tasks other than the server
    /// and the generator, plus hypervisor steal), in % of one core.
    other_pct: f64,
}

/// A run whose other CPU use exceeds this (% of one core) was disturbed: it is run again.
const DISTURBED_PCT: f64 = 20.0;
/// Attempts per run before a disturbed run is kept anyway (and counted in the table).
const ATTEMPTS: usize = 3;

fn run_once(server: &Server, load: &Load, port: u16, pinned: bool) -> std::io::Result<Figures> {
    let running = start(server, port, pinned.then_some(0))?;
    pin_self(if pinned { Some(1) } else { None });
    let load = Load {
        addr: running.addr,
        ..load.clone()
    };
    let pid = running.child.id();
    let me = std::process::id();
    let load1 = procstat::load1();
    let (mut s0, mut g0, mut s1, mut g1) = (None, None, None, None);
    let (mut m0, mut m1) = (None, None);
    let m = loadgen::run(&load, 1, |starting| {
        let (s, g) = (procstat::cpu_time(pid), procstat::cpu_time(me));
        if starting {
            (s0, g0, m0) = (s, g, procstat::machine_busy());
        } else {
            (s1, g1, m1) = (s, g, procstat::machine_busy());
        }
    });
    pin_self(None);
    drop(running);
    let secs = m.elapsed.as_secs_f64();
    let rts = m.round_trips as f64 / secs;
    let server_cpu = s1.zip(s0).map_or(0.0, |(b, a)| (b - a).as_secs_f64());
    let gen_cpu = g1.zip(g0).map_or(0.0, |(b, a)| (b - a).as_secs_f64());
    let other = m1.zip(m0).map_or(0.0, |((run1, steal1), (run0, steal0))| {
        let running = (run1 - run0).as_secs_f64() - server_cpu - gen_cpu;
        running.max(0.0) + (steal1 - steal0).as_secs_f64()
    });
    Ok(Figures {
        connected: m.connected as f64,
        rts,
        mbs: rts * load.size as f64 / 1e6,
        p50: m.p50_us,
        p99: m.p99_us,
        p999: m.p999_us,
        cpu_us_per_rt: if m.round_trips > 0 {
            server_cpu * 1e6 / m.round_trips as f64
        } else {
            f64::NAN
        },
        gen_cpu_pct: gen_cpu / secs * 100.0,
        errors: m.errors,
        load1,
        other_pct: other / secs * 100.0,
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.retain(|x| x.is_finite());
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Which cells a matrix run covers.
struct Cells {
    conns: Vec<usize>,
    sizes: Vec<usize>,
    depths: Vec<usize>,
    pins: Vec<bool>,
}

impl Cells {
    /// The quick or full matrix, with any dimension the command line names replaced.
    fn new(
        full: bool,
        conns: Vec<usize>,
        sizes: Vec<usize>,
        depths: Vec<usize>,
        unpinned: bool,
    ) -> Cells {
        let or = |given: Vec<usize>, full_set: &[usize], quick: &[usize]| {
            if !given.is_empty() {
                given
            } else if full {
                full_set.to_vec()
            } else {
                quick.to_vec()
            }
        };
        Cells {
            conns: or(conns, &[1, 100, 1000, 10_000], &[1, 100, 1000]),
            sizes: or(sizes, &[64, 4096, 65_536], &[64, 4096]),
            depths: or(depths, &[1, 8], &[1]),
            pins: match (unpinned, full) {
                (true, _) => vec![false],
                (false, true) => vec![true, false],
                (false, false) => vec![true],
            },
        }
    }
}

fn matrix(cells: Cells, reps: usize, secs: u64, only: Vec<String>) -> ExitCode {
    let Cells {
        conns,
        sizes,
        depths,
        pins,
    } = &cells;
    let servers: Vec<Server> = servers()
        .into_iter()
        .filter(|s| {
            if s.variant {
                only.iter().any(|o| s.name == o.as_str())
            } else {
                only.is_empty() || only.iter().any(|o| s.name.contains(o.as_str()))
            }
        })
        .collect();
    println!("# proactor-echo benchmark\n");
    println!(
        "{} CPUs; {reps} interleaved repetitions per cell, medians; 1 s warm-up + {secs} s measured; \
         pinned = server on CPU 0, generator on CPU 1 (taskset); load average before each run recorded.\n",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let mut port = 19_000u16;
    let mut failed = false;
    let mut checks = Vec::new();
    // The first run of a process measures about 10x slower whatever the server (seen with
    // every server first): run one and throw it away.
    if let Some(first) = servers.first() {
        let warm = Load {
            addr: "127.0.0.1:0".parse().expect("addr"),
            conns: 1,
            size: 64,
            depth: 1,
            warmup: Duration::from_millis(500),
            duration: Duration::from_secs(1),
        };
        let _ = run_once(first, &warm, port, pins[0]);
    }
    for &pinned in pins {
        for &depth in depths {
            for &size in sizes {
                for &c in conns {
                    let cell = Cell {
                        conns: c,
                        size,
                        depth,
                        pinned,
                    };
                    let in_flight = (c * size * depth) as u64;
                    if let Some(threshold) =
                        procstat::tcp_mem_pressure_bytes().filter(|&t| in_flight > t / 2)
                    {
                        print_not_run(&cell, in_flight, threshold);
                        continue;
                    }
                    let load = Load {
                        addr: "127.0.0.1:0".parse().expect("addr"),
                        conns: c,
                        size,
                        depth,
                        warmup: Duration::from_secs(1),
                        duration: Duration::from_secs(secs),
                    };
                    let pressures_before = procstat::tcp_memory_pressures();
                    let mut runs: Vec<Vec<Figures>> = vec![Vec::new(); servers.len()];
                    let mut dropped = 0;
                    for _ in 0..reps {
                        for (i, s) in servers.iter().enumerate() {
                            for attempt in 1..=ATTEMPTS {
                                port = if port >= 19_900 { 19_000 } else { port + 1 };
                                match run_once(s, &load, port, pinned) {
                                    Ok(f) if f.other_pct > DISTURBED_PCT && attempt < ATTEMPTS => {
                                        dropped += 1;
                                    }
                                    Ok(f) => {
                                        runs[i].push(f);
                                        break;
                                    }
                                    Err(e) => {
                                        eprintln!("{}: {e}", s.name);
                                        failed = true;
                                        break;
                                    }
                                }
                            }
                        }
                    }
                    let pressures = procstat::tcp_memory_pressures()
                        .zip(pressures_before)
                        .map_or(0, |(after, before)| after - before);
                    print_cell(&servers, &runs, &cell, dropped, pressures);
                    checks.extend(Check::of(&servers, &runs, cell));
                }
            }
        }
    }
    print_checks(&checks);
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// One cell of the matrix.
#[derive(Clone, Copy)]
struct Cell {
    conns: usize,
    size: usize,
    depth: usize,
    pinned: bool,
}

/// A cell's figures against the targets: the proactor row with the lowest server CPU per round
/// trip, against the best peer (tokio, compio, monoio: lowest CPU, highest throughput, lowest
/// p99, each taken separately) and against the raw io_uring echo.
struct Check {
    cell: Cell,
    proactor: &'static str,
    cpu_vs_peer: f64,
    rts_vs_peer: f64,
    p99_vs_peer: f64,
    rts_vs_raw: f64,
    cpu_vs_raw: f64,
}

impl Check {
    fn of(servers: &[Server], runs: &[Vec<Figures>], cell: Cell) -> Option<Check> {
        let med = |i: usize, f: fn(&Figures) -> f64| median(runs[i].iter().map(f).collect());
        let best_of = |keep: fn(&str) -> bool, f: fn(&Figures) -> f64, lowest: bool| {
            (0..servers.len())
                .filter(|&i| keep(servers[i].name))
                .map(|i| (i, med(i, f)))
                .filter(|(_, x)| x.is_finite())
                .min_by(|a, b| {
                    let order = a.1.total_cmp(&b.1);
                    if lowest { order } else { order.reverse() }
                })
        };
        let cpu = |f: &Figures| f.cpu_us_per_rt;
        let rts = |f: &Figures| f.rts;
        let p99 = |f: &Figures| f.p99;
        let (ours, our_cpu) = best_of(is_proactor, cpu, true)?;
        let raw = servers.iter().position(|s| s.name == RAW);
        let vs_raw = |f: fn(&Figures) -> f64| raw.map_or(f64::NAN, |r| med(ours, f) / med(r, f));
        Some(Check {
            cell,
            proactor: servers[ours].name,
            cpu_vs_peer: our_cpu / best_of(is_peer, cpu, true).map_or(f64::NAN, |b| b.1),
            rts_vs_peer: med(ours, rts) / best_of(is_peer, rts, false).map_or(f64::NAN, |b| b.1),
            p99_vs_peer: med(ours, p99) / best_of(is_peer, p99, true).map_or(f64::NAN, |b| b.1),
            rts_vs_raw: vs_raw(rts),
            cpu_vs_raw: vs_raw(cpu),
        })
    }
}

/// `ratio` with a mark saying whether it meets its target, where the target applies; a dash
/// where there was nothing to compare with (no peer, or no raw echo, among `--only`'s servers).
fn verdict(ratio: f64, meets: bool, applies: bool) -> String {
    let shown = times(ratio);
    match (applies && ratio.is_finite(), meets) {
        (false, _) => shown,
        (true, true) => format!("{shown} met"),
        (true, false) => format!("**{shown} missed**"),
    }
}

/// The targets table: one row per cell (the peer CPU and throughput targets apply from 100
/// connections, the p99 target at 100 and 1,000, the raw echo's in every cell).
fn print_checks(checks: &[Check]) {
    if checks.is_empty() {
        return;
    }
    println!(
        "## Targets per cell
"
    );
    println!(
        "The proactor row with the lowest server CPU per round trip against the best peer (tokio, compio, monoio; \
         each figure's best taken separately) and the raw io_uring echo. Targets: CPU ≤ 0.90x and throughput ≥ 1.00x \
         the best peer from 100 connections, p99 ≤ 1.00x at 100 and 1,000 connections, throughput ≥ 0.95x \
         and CPU ≤ 1.05x (1/0.95) raw in every cell.\n"
    );
    println!(
        "| connections | size | depth | pinned | proactor row | CPU vs peer | throughput vs peer | p99 vs peer | throughput vs raw | CPU vs raw |"
    );
    println!("|---:|---:|---:|---|---|---:|---:|---:|---:|---:|");
    for c in checks {
        let from_100 = c.cell.conns >= 100;
        let p99_cell = matches!(c.cell.conns, 100 | 1000);
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            c.cell.conns,
            c.cell.size,
            c.cell.depth,
            if c.cell.pinned { "yes" } else { "no" },
            c.proactor,
            verdict(c.cpu_vs_peer, c.cpu_vs_peer <= 0.90, from_100),
            verdict(c.rts_vs_peer, c.rts_vs_peer >= 1.0, from_100),
            verdict(c.p99_vs_peer, c.p99_vs_peer <= 1.0, p99_cell),
            verdict(c.rts_vs_raw, c.rts_vs_raw >= 0.95, true),
            verdict(c.cpu_vs_raw, c.cpu_vs_raw <= 1.0 / 0.95, true),
        );
    }
    println!();
}

/// The lowest of `values` that is a number, or NaN when there is none (so that a ratio against
/// it prints as a dash).
fn lowest(values: impl Iterator<Item = f64>) -> f64 {
    values.filter(|x| x.is_finite()).fold(f64::NAN, f64::min)
}

/// A ratio as `1.23x`, or a dash where there was nothing to divide by.
fn times(ratio: f64) -> String {
    if ratio.is_finite() {
        format!("{ratio:.2}x")
    } else {
        "–".to_string()
    }
}

fn heading(cell: &Cell) -> String {
    let Cell {
        conns,
        size,
        depth,
        pinned,
    } = *cell;
    format!(
        "## {conns} connections, {size} B, depth {depth}, {}\n",
        if pinned { "pinned" } else { "unpinned" }
    )
}

/// A cell whose data in flight the kernel cannot hold without memory pressure: run, it would
/// measure the kernel pruning receive queues, dropping segments and aborting connections, not
/// the servers (at 10,000 x 64 KiB x 8, 5.2 GB, every server was left with 260-2,200 connects
/// unanswered, and both tokio servers counted stalled or aborted connections as errors).
/// Half the threshold, because the kernel charges each buffer's true size, up to about twice
/// its payload.
fn print_not_run(cell: &Cell, in_flight: u64, threshold: u64) {
    println!("{}", heading(cell));
    println!(
        "Not run: {:.1} GB in flight (connections x size x depth) is over half the kernel's TCP \
         memory-pressure threshold (`net.ipv4.tcp_mem`, {:.1} GB here); the cell would measure the \
         kernel dropping segments and aborting connections, not the servers.\n",
        in_flight as f64 / 1e9,
        threshold as f64 / 1e9
    );
}

fn print_cell(
    servers: &[Server],
    runs: &[Vec<Figures>],
    cell: &Cell,
    dropped: usize,
    pressures: u64,
) {
    let med = |i: usize, f: fn(&Figures) -> f64| median(runs[i].iter().map(f).collect());
    // The best peer: lowest server CPU per round trip among tokio, compio and monoio.
    let best = lowest(
        (0..servers.len())
            .filter(|&i| is_peer(servers[i].name))
            .map(|i| med(i, |f| f.cpu_us_per_rt)),
    );
    let raw = (0..servers.len())
        .find(|&i| servers[i].name == RAW)
        .map_or(f64::NAN, |i| med(i, |f| f.cpu_us_per_rt));
    println!("{}", heading(cell));
    if pressures > 0 {
        println!(
            "TCP entered memory pressure {pressures} time(s) during this cell's runs \
             (`TCPMemoryPressures`): its figures include the kernel shrinking buffers and dropping segments.\n"
        );
    }
    if dropped > 0 {
        println!(
            "{dropped} disturbed run(s) (other CPU use > {DISTURBED_PCT}% of a core) dropped and run again.\n"
        );
    }
    println!(
        "| server | connected | round trips/s | MB/s | p50 µs | p99 µs | p999 µs | server CPU µs/rt | vs best peer | vs raw | generator CPU % | other CPU % | errors | load |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (i, s) in servers.iter().enumerate() {
        let cpu = med(i, |f| f.cpu_us_per_rt);
        let errors: u64 = runs[i].iter().map(|f| f.errors).sum();
        println!(
            "| {} | {:.0} | {:.0} | {:.1} | {:.0} | {:.0} | {:.0} | {:.2} | {} | {} | {:.0} | {:.0} | {} | {:.2} |",
            s.name,
            med(i, |f| f.connected),
            med(i, |f| f.rts),
            med(i, |f| f.mbs),
            med(i, |f| f.p50),
            med(i, |f| f.p99),
            med(i, |f| f.p999),
            cpu,
            times(cpu / best),
            times(cpu / raw),
            med(i, |f| f.gen_cpu_pct),
            med(i, |f| f.other_pct),
            errors,
            med(i, |f| f.load1),
        );
    }
    println!();
}

fn memory(conns: usize) -> ExitCode {
    println!("## Resident memory per idle connection ({conns} connections)\n");
    println!("| server | RSS before KiB | RSS with connections KiB | bytes per connection |");
    println!("|---|---:|---:|---:|");
    let mut port = 19_950u16;
    for s in servers().into_iter().filter(|s| !s.variant) {
        port += 1;
        let Ok(running) = start(&s, port, None) else {
            println!("| {} | failed to start | | |", s.name);
            continue;
        };
        let pid = running.child.id();
        std::thread::sleep(Duration::from_millis(300));
        let before = procstat::rss_kib(pid).unwrap_or(0);
        let held: Vec<TcpStream> = (0..conns)
            .filter_map(|_| TcpStream::connect(running.addr).ok())
            .collect();
        std::thread::sleep(Duration::from_secs(2));
        let after = procstat::rss_kib(pid).unwrap_or(0);
        let per = (after.saturating_sub(before) * 1024) as f64 / held.len().max(1) as f64;
        println!("| {} | {before} | {after} | {per:.0} |", s.name);
        drop(held);
    }
    ExitCode::SUCCESS
}

pub fn main() -> ExitCode {
    match Cli::parse().what {
        What::Matrix {
            full,
            reps,
            secs,
            only,
            conns,
            sizes,
            depths,
            unpinned,
        } => matrix(
            Cells::new(full, conns, sizes, depths, unpinned),
            reps,
            secs,
            only,
        ),
        What::Memory { conns } => memory(conns),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratios_without_a_denominator_print_a_dash() {
        // `--only "io_uring 1w,raw io_uring"` has no peer: no best peer to divide by.
        let no_peer = lowest([f64::NAN, 5.0].into_iter());
        assert_eq!(no_peer, 5.0);
        let none = lowest(std::iter::empty());
        assert_eq!(times(10.0 / none), "–");
        assert_eq!(verdict(10.0 / none, false, true), "–");
        assert_eq!(times(10.93 / 10.0), "1.09x");
        assert_eq!(verdict(0.5, true, true), "0.50x met");
        assert_eq!(verdict(1.2, false, true), "**1.20x missed**");
        assert_eq!(verdict(1.2, false, false), "1.20x");
    }
}
