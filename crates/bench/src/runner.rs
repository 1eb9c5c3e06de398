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
        /// Repetitions of each cell (servers interleaved A B C, B C A, C A B, ...).
        #[arg(long, default_value_t = 5)]
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
    /// The cells of issue 15's targets: one headline table (median of the per-repetition
    /// ratios, the spread, met or missed) on stdout, the per-cell tables into files.
    Targets(TargetsArgs),
}

#[derive(clap::Args)]
struct TargetsArgs {
    /// Repetitions of each cell (servers interleaved A B C, B C A, C A B, ...).
    #[arg(long, default_value_t = 5)]
    reps: usize,
    /// Seconds measured per run (after the warm-up).
    #[arg(long, default_value_t = 2)]
    secs: u64,
    /// Warm-up per run, in milliseconds (once every connection is up).
    #[arg(long, default_value_t = 500)]
    warmup_ms: u64,
    /// Only the servers whose name contains one of these (comma-separated).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Only these cells, numbered as the list printed at start (comma-separated, from 1).
    #[arg(long, value_delimiter = ',')]
    cells: Vec<usize>,
    /// Skip the memory measurement.
    #[arg(long)]
    no_memory: bool,
    /// Idle connections of the memory measurement.
    #[arg(long, default_value_t = 10_000)]
    memory_conns: usize,
    /// Where the tables go [default: bench-results/ and the UTC time].
    #[arg(long)]
    out: Option<PathBuf>,
    /// Print the cells and the estimated runtime, and run nothing.
    #[arg(long)]
    estimate: bool,
}

/// What a server is compared as.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Group {
    Proactor,
    /// A runtime's echo server: tokio multi-thread and current-thread, monoio, compio.
    Peer,
    /// A hand-written echo on the `io-uring` crate (every raw variant).
    Reference,
}

/// A server under test.
struct Server {
    name: &'static str,
    program: &'static str,
    args: Vec<String>,
    env: Vec<(&'static str, &'static str)>,
    group: Group,
    /// Run only when `--only` names it exactly (or a command lists it): the raw echo's
    /// kernel-feature variants, and proactor-echo with two workers.
    variant: bool,
    /// Run exactly as a user runs it: only `--port`, none of the harness's `--buffer-size` and
    /// `--max-connections`, no `PROACTOR_*` variable, and never pinned (even in a pinned cell).
    bare: bool,
}

/// proactor-echo's connection limit (default 10,000, the largest cell): the peers have none.
const MAX_CONNS: &str = "100000";

/// Every variable proactor reads, removed from every server's environment (a server that wants
/// one sets it): the harness's own environment must not change what a row measures.
const PROACTOR_VARS: [&str; 4] = [
    "PROACTOR_BACKEND",
    "PROACTOR_SQPOLL",
    "PROACTOR_RING_SETUP",
    "PROACTOR_RING_RECV_LIMIT",
];

fn servers() -> Vec<Server> {
    let n = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .to_string();
    let s = |name, program, args: &[&str], group| Server {
        name,
        program,
        args: args.iter().map(|a| a.to_string()).collect(),
        env: Vec::new(),
        group,
        variant: false,
        bare: false,
    };
    let proactor = |name, args: &[&str]| {
        let mut args = args.to_vec();
        args.extend(["--max-connections", MAX_CONNS]);
        s(name, "proactor-echo", &args, Group::Proactor)
    };
    let variant = |name, args: &[&str]| Server {
        variant: true,
        ..s(name, "echo-raw-uring", args, Group::Reference)
    };
    vec![
        proactor("proactor 1w", &["--workers", "1"]),
        Server {
            bare: true,
            ..s("proactor (no flags)", "proactor-echo", &[], Group::Proactor)
        },
        proactor("proactor shared Nw", &["--shared", "--workers", &n]),
        Server {
            env: vec![("PROACTOR_BACKEND", "epoll")],
            ..proactor("proactor epoll 1w", &["--workers", "1"])
        },
        Server {
            variant: true,
            ..proactor("proactor 2w", &["--workers", "2"])
        },
        // Wait coalescing off (`--coalesce-usec 0`): what the adaptive coalescing is worth.
        Server {
            variant: true,
            ..proactor(
                "proactor 1w uncoalesced",
                &["--workers", "1", "--coalesce-usec", "0"],
            )
        },
        s(
            "tokio multi-thread",
            "echo-tokio",
            &["--flavor", "multi"],
            Group::Peer,
        ),
        s(
            "tokio current-thread",
            "echo-tokio",
            &["--flavor", "current"],
            Group::Peer,
        ),
        s("compio", "echo-compio", &[], Group::Peer),
        s("monoio", "echo-monoio", &[], Group::Peer),
        s("raw io_uring", "echo-raw-uring", &[], Group::Reference),
        s("raw multishot", "echo-raw-multishot", &[], Group::Reference),
        variant("raw+pf", &["--poll-first"]),
        variant("raw+pf+fixed", &["--poll-first", "--fixed-files"]),
        variant(
            "raw+pf+fixed+defer",
            &["--poll-first", "--fixed-files", "--defer-taskrun"],
        ),
    ]
}

/// The servers named, in the order of [`servers`]; a name that is not a server is an error.
fn named(names: &[&str]) -> Vec<Server> {
    for n in names {
        assert!(
            servers().iter().any(|s| s.name == *n),
            "no server named {n:?}"
        );
    }
    servers()
        .into_iter()
        .filter(|s| names.contains(&s.name))
        .collect()
}

/// Every server reads and writes up to this many bytes at a time. proactor-echo's default is
/// 65,535 (its specification's maximum read), which would split each 64 KiB message in two.
const BUFFER_SIZE: &str = "65536";

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

/// The command that starts `server` on `port`, pinned to `cpu` (unless it is run bare).
fn command(server: &Server, port: u16, cpu: Option<usize>) -> Command {
    let program = bin_dir().join(server.program);
    let cpu = if server.bare { None } else { cpu };
    let mut cmd = match cpu {
        Some(c) => {
            let mut t = Command::new("taskset");
            t.args(["-c", &c.to_string()]).arg(&program);
            t
        }
        None => Command::new(&program),
    };
    cmd.args(["--port", &port.to_string()]);
    if !server.bare {
        cmd.args(["--buffer-size", BUFFER_SIZE]);
    }
    for var in PROACTOR_VARS {
        cmd.env_remove(var);
    }
    cmd.args(&server.args)
        .envs(server.env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    cmd
}

fn start(server: &Server, port: u16, cpu: Option<usize>) -> std::io::Result<Running> {
    let mut cmd = command(server, port, cpu);
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

/// A figure's median and range over repetitions (numbers only; NaN and infinities left out).
#[derive(Clone, Copy, Debug, PartialEq)]
struct Spread {
    median: f64,
    min: f64,
    max: f64,
    n: usize,
}

/// The median (the mean of the two middle values when their count is even), minimum and
/// maximum of `v`'s numbers, or `None` when it has none.
fn spread(mut v: Vec<f64>) -> Option<Spread> {
    v.retain(|x| x.is_finite());
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let median = if !n.is_multiple_of(2) {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    Some(Spread {
        median,
        min: v[0],
        max: v[n - 1],
        n,
    })
}

fn median(v: Vec<f64>) -> f64 {
    spread(v).map_or(f64::NAN, |s| s.median)
}

/// A ratio's median with its range: `1.02x [0.95–1.10]`; a dash when there is none.
fn show(s: Option<Spread>) -> String {
    match s {
        Some(s) if s.n > 1 => format!("{} [{:.2}–{:.2}]", times(s.median), s.min, s.max),
        Some(s) => times(s.median),
        None => "–".to_string(),
    }
}

/// The figures compared across servers.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Figure {
    /// Server CPU µs per round trip: lower is better.
    Cpu,
    /// Round trips per second: higher is better.
    Throughput,
}

impl Figure {
    fn of(self, f: &Figures) -> f64 {
        match self {
            Figure::Cpu => f.cpu_us_per_rt,
            Figure::Throughput => f.rts,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Figure::Cpu => "CPU/rt",
            Figure::Throughput => "throughput",
        }
    }
}

/// What a ratio divides by, within one repetition.
#[derive(Clone, Copy, Debug)]
enum Base {
    /// The best peer of the repetition for that figure (lowest CPU, highest throughput).
    BestPeer,
    /// The best hand-written reference of the repetition for that figure.
    BestReference,
    /// One named server's run of the repetition.
    Server(&'static str),
}

impl Base {
    fn name(self) -> String {
        match self {
            Base::BestPeer => "best peer".into(),
            Base::BestReference => "best reference".into(),
            Base::Server(name) => name.into(),
        }
    }
}

/// Every server's runs of one cell, one slot per repetition (`None`: it failed to start).
type Runs = Vec<Vec<Option<Figures>>>;

/// `servers[i]`'s figure over its base, repetition by repetition: each repetition runs every
/// server back to back, so the machine's drift between repetitions cancels out. A repetition
/// without the figure or without its base is left out. A server of the base's own group is
/// compared with the best of the *others* (a peer against the best other peer): against a best
/// that included itself it could never score below 1.00x.
fn ratios(servers: &[Server], runs: &Runs, i: usize, figure: Figure, base: Base) -> Vec<f64> {
    let reps = runs.iter().map(Vec::len).max().unwrap_or(0);
    let value = |j: usize, r: usize| {
        runs[j]
            .get(r)
            .copied()
            .flatten()
            .map(|f| figure.of(&f))
            .filter(|x| x.is_finite() && *x > 0.0)
    };
    (0..reps)
        .filter_map(|r| {
            let x = value(i, r)?;
            let b = match base {
                Base::Server(name) => value(servers.iter().position(|s| s.name == name)?, r)?,
                Base::BestPeer | Base::BestReference => {
                    let group = match base {
                        Base::BestPeer => Group::Peer,
                        _ => Group::Reference,
                    };
                    let values = (0..servers.len())
                        .filter(|&j| j != i && servers[j].group == group)
                        .filter_map(|j| value(j, r));
                    match figure {
                        Figure::Cpu => values.reduce(f64::min)?,
                        Figure::Throughput => values.reduce(f64::max)?,
                    }
                }
            };
            Some(x / b)
        })
        .collect()
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

    fn list(&self) -> Vec<Cell> {
        let mut cells = Vec::new();
        for &pinned in &self.pins {
            for &depth in &self.depths {
                for &size in &self.sizes {
                    for &conns in &self.conns {
                        cells.push(Cell {
                            conns,
                            size,
                            depth,
                            pinned,
                        });
                    }
                }
            }
        }
        cells
    }
}

/// The servers `--only` keeps: a variant when named exactly, any other when a name contains
/// one of the words (all of them when there is none).
fn keep(s: &Server, only: &[String]) -> bool {
    if s.variant {
        only.iter().any(|o| s.name == o.as_str())
    } else {
        only.is_empty() || only.iter().any(|o| s.name.contains(o.as_str()))
    }
}

/// What a run of the harness shares: ports, warm-up, and whether anything failed.
struct Session {
    port: u16,
    reps: usize,
    secs: u64,
    warmup: Duration,
    /// Whether a run was thrown away yet ([`Session::throw_first_away`]).
    warmed: bool,
    failed: bool,
}

impl Session {
    fn next_port(&mut self) -> u16 {
        self.port = if self.port >= 19_900 {
            19_000
        } else {
            self.port + 1
        };
        self.port
    }

    /// The first run of a process measures slow whatever the server (about 10x after a
    /// start; and after one short run of one connection, the first run of the first cell
    /// still 1.4-2x, seen with every server that ran first): one run of the first cell's load
    /// is made and thrown away, before its repetitions.
    fn throw_first_away(&mut self, server: &Server, load: &Load, pinned: bool) {
        if std::mem::replace(&mut self.warmed, true) {
            return;
        }
        let warm = Load {
            warmup: Duration::from_millis(300),
            duration: Duration::from_millis(1500),
            ..load.clone()
        };
        let port = self.next_port();
        let _ = run_once(server, &warm, port, pinned);
    }

    /// Runs one cell: `reps` repetitions, each running every server back to back.
    fn measure(&mut self, servers: &[Server], cell: &Cell) -> Measured {
        let load = Load {
            addr: "127.0.0.1:0".parse().expect("addr"),
            conns: cell.conns,
            size: cell.size,
            depth: cell.depth,
            warmup: self.warmup,
            duration: Duration::from_secs(self.secs),
        };
        if let Some(first) = rotated(servers.len(), 0).next() {
            self.throw_first_away(&servers[first], &load, cell.pinned);
        }
        let pressures_before = procstat::tcp_memory_pressures();
        let mut runs: Runs = vec![Vec::new(); servers.len()];
        let mut dropped = 0;
        for rep in 0..self.reps {
            for i in rotated(servers.len(), rep) {
                let s = &servers[i];
                let mut kept = None;
                for attempt in 1..=ATTEMPTS {
                    let port = self.next_port();
                    match run_once(s, &load, port, cell.pinned) {
                        Ok(f) if f.other_pct > DISTURBED_PCT && attempt < ATTEMPTS => {
                            dropped += 1;
                        }
                        Ok(f) => {
                            kept = Some(f);
                            break;
                        }
                        Err(e) => {
                            eprintln!("{}: {e}", s.name);
                            self.failed = true;
                            break;
                        }
                    }
                }
                runs[i].push(kept);
            }
        }
        let pressures = procstat::tcp_memory_pressures()
            .zip(pressures_before)
            .map_or(0, |(after, before)| after - before);
        Measured {
            runs,
            dropped,
            pressures,
        }
    }
}

/// The order in which repetition `rep` runs `n` servers: each repetition starts one server
/// later, so that no server always runs first (right after another cell). The cyclic order is
/// kept: a server that is not first still runs right after the same neighbour.
fn rotated(n: usize, rep: usize) -> impl Iterator<Item = usize> {
    (0..n).map(move |k| (k + rep) % n.max(1))
}

/// One cell's runs.
struct Measured {
    runs: Runs,
    dropped: usize,
    pressures: u64,
}

/// The data in flight of a cell, when it is over half the kernel's TCP memory-pressure
/// threshold: `(in flight, threshold)`.
fn too_large(cell: &Cell) -> Option<(u64, u64)> {
    let in_flight = (cell.conns * cell.size * cell.depth) as u64;
    procstat::tcp_mem_pressure_bytes()
        .filter(|&t| in_flight > t / 2)
        .map(|t| (in_flight, t))
}

fn preamble(reps: usize, secs: u64, warmup: Duration) -> String {
    format!(
        "{} CPUs; {reps} interleaved repetitions per cell (each repetition runs every server back to back, starting one server later than the one before); \
         {:.1} s warm-up + {secs} s measured; pinned = server on CPU 0, generator on CPU 1 (taskset), \
         except `proactor (no flags)`, never pinned; load average before each run recorded. \
         Ratios: per repetition, each server's figure over the best peer's / best reference's of that \
         repetition (lowest CPU, highest throughput, each taken separately); the median of those ratios \
         with their range [min–max].\n",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        warmup.as_secs_f64()
    )
}

fn matrix(cells: Cells, reps: usize, secs: u64, only: Vec<String>) -> ExitCode {
    let servers: Vec<Server> = servers().into_iter().filter(|s| keep(s, &only)).collect();
    println!("# proactor-echo benchmark\n");
    let mut session = Session {
        port: 19_000,
        reps,
        secs,
        warmup: Duration::from_secs(1),
        warmed: false,
        failed: false,
    };
    println!("{}", preamble(reps, secs, session.warmup));
    for cell in cells.list() {
        if let Some((in_flight, threshold)) = too_large(&cell) {
            print!("{}", not_run(&cell, in_flight, threshold));
            continue;
        }
        let m = session.measure(&servers, &cell);
        print!("{}", cell_report(&servers, &m, &cell));
    }
    if session.failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// One cell of the matrix.
#[derive(Clone, Copy, Debug)]
struct Cell {
    conns: usize,
    size: usize,
    depth: usize,
    pinned: bool,
}

impl Cell {
    fn short(&self) -> String {
        format!(
            "{} x {} B, depth {}, {}",
            thousands(self.conns),
            self.size,
            self.depth,
            if self.pinned { "pinned" } else { "unpinned" }
        )
    }
}

/// `10000` as `10,000`.
fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
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
fn not_run(cell: &Cell, in_flight: u64, threshold: u64) -> String {
    format!(
        "{}\nNot run: {:.1} GB in flight (connections x size x depth) is over half the kernel's TCP \
         memory-pressure threshold (`net.ipv4.tcp_mem`, {:.1} GB here); the cell would measure the \
         kernel dropping segments and aborting connections, not the servers.\n\n",
        heading(cell),
        in_flight as f64 / 1e9,
        threshold as f64 / 1e9
    )
}

/// A cell's tables: each server's medians, then each server's per-repetition ratios.
fn cell_report(servers: &[Server], m: &Measured, cell: &Cell) -> String {
    use std::fmt::Write;
    let runs = &m.runs;
    let med = |i: usize, f: fn(&Figures) -> f64| median(runs[i].iter().flatten().map(f).collect());
    let mut out = String::new();
    let _ = writeln!(out, "{}", heading(cell));
    if m.pressures > 0 {
        let _ = writeln!(
            out,
            "TCP entered memory pressure {} time(s) during this cell's runs \
             (`TCPMemoryPressures`): its figures include the kernel shrinking buffers and dropping segments.\n",
            m.pressures
        );
    }
    if m.dropped > 0 {
        let _ = writeln!(
            out,
            "{} disturbed run(s) (other CPU use > {DISTURBED_PCT}% of a core) dropped and run again.\n",
            m.dropped
        );
    }
    let _ = writeln!(
        out,
        "| server | runs | connected | round trips/s | MB/s | p50 µs | p99 µs | p999 µs | server CPU µs/rt | generator CPU % | other CPU % | errors | load |"
    );
    let _ = writeln!(
        out,
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for (i, s) in servers.iter().enumerate() {
        let errors: u64 = runs[i].iter().flatten().map(|f| f.errors).sum();
        let _ = writeln!(
            out,
            "| {} | {} | {:.0} | {:.0} | {:.1} | {:.0} | {:.0} | {:.0} | {:.2} | {:.0} | {:.0} | {} | {:.2} |",
            s.name,
            runs[i].iter().flatten().count(),
            med(i, |f| f.connected),
            med(i, |f| f.rts),
            med(i, |f| f.mbs),
            med(i, |f| f.p50),
            med(i, |f| f.p99),
            med(i, |f| f.p999),
            med(i, |f| f.cpu_us_per_rt),
            med(i, |f| f.gen_cpu_pct),
            med(i, |f| f.other_pct),
            errors,
            med(i, |f| f.load1),
        );
    }
    let _ = writeln!(
        out,
        "\nPer-repetition ratios (median [min–max] over the repetitions; a peer is compared with \
         the best other peer, a reference with the best other reference):\n"
    );
    let _ = writeln!(
        out,
        "| server | CPU/rt vs best peer | CPU/rt vs best reference | throughput vs best peer | throughput vs best reference |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|");
    for (i, s) in servers.iter().enumerate() {
        let r = |figure, base| show(spread(ratios(servers, runs, i, figure, base)));
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} |",
            s.name,
            r(Figure::Cpu, Base::BestPeer),
            r(Figure::Cpu, Base::BestReference),
            r(Figure::Throughput, Base::BestPeer),
            r(Figure::Throughput, Base::BestReference),
        );
    }
    out.push('\n');
    out
}

/// One server's resident memory before and with `held` idle connections.
struct MemoryRow {
    name: &'static str,
    before_kib: u64,
    after_kib: u64,
    held: usize,
}

impl MemoryRow {
    fn per_connection(&self) -> f64 {
        (self.after_kib.saturating_sub(self.before_kib) * 1024) as f64 / self.held.max(1) as f64
    }
}

/// Waits until `pid`'s resident memory has stopped moving (unchanged within 16 KiB for half a
/// second, at most `limit`), and returns it.
fn settled_rss(pid: u32, limit: Duration) -> u64 {
    let start = std::time::Instant::now();
    let mut last = procstat::rss_kib(pid).unwrap_or(0);
    let mut still = 0;
    while still < 5 && start.elapsed() < limit {
        std::thread::sleep(Duration::from_millis(100));
        let now = procstat::rss_kib(pid).unwrap_or(0);
        if now.abs_diff(last) <= 16 {
            still += 1;
        } else {
            still = 0;
        }
        last = now;
    }
    last
}

/// Each server's resident memory per idle connection: its RSS once started and settled (what
/// it allocated and touched at start, a pool it never touched included: untouched pages are not
/// resident), then with `conns` connections that send nothing, settled: the growth over the
/// connections. A buffer touched per connection counts; one allocated and never touched does
/// not.
fn memory_rows(servers: &[Server], conns: usize) -> Vec<Option<MemoryRow>> {
    let mut port = 19_950u16;
    servers
        .iter()
        .map(|s| {
            port += 1;
            let running = start(s, port, None).ok()?;
            let pid = running.child.id();
            let before_kib = settled_rss(pid, Duration::from_secs(3));
            let held: Vec<TcpStream> = (0..conns)
                .filter_map(|_| TcpStream::connect(running.addr).ok())
                .collect();
            std::thread::sleep(Duration::from_millis(500));
            let after_kib = settled_rss(pid, Duration::from_secs(10));
            Some(MemoryRow {
                name: s.name,
                before_kib,
                after_kib,
                held: held.len(),
            })
        })
        .collect()
}

fn memory_table(servers: &[Server], rows: &[Option<MemoryRow>], conns: usize) -> String {
    use std::fmt::Write;
    let mut out = format!(
        "## Resident memory per idle connection ({} connections)\n\n\
         | server | connections held | RSS before KiB | RSS with connections KiB | bytes per connection |\n\
         |---|---:|---:|---:|---:|\n",
        thousands(conns)
    );
    for (s, row) in servers.iter().zip(rows) {
        let _ = match row {
            Some(r) => writeln!(
                out,
                "| {} | {} | {} | {} | {:.0} |",
                r.name,
                r.held,
                r.before_kib,
                r.after_kib,
                r.per_connection()
            ),
            None => writeln!(out, "| {} | failed to start | | | |", s.name),
        };
    }
    out.push('\n');
    out
}

fn memory(conns: usize) -> ExitCode {
    let servers: Vec<Server> = servers().into_iter().filter(|s| !s.variant).collect();
    let rows = memory_rows(&servers, conns);
    print!("{}", memory_table(&servers, &rows, conns));
    ExitCode::SUCCESS
}

/// A cell of `bench targets` and the servers it runs.
struct TargetCell {
    cell: Cell,
    servers: &'static [&'static str],
}

/// A target: `subject`'s per-repetition `figure` ratio over `base`, whose median must be at
/// most (CPU) or at least (throughput) `bound`.
struct Target {
    cell: usize,
    subject: &'static str,
    figure: Figure,
    base: Base,
    bound: f64,
}

impl Target {
    fn met(&self, ratio: f64) -> bool {
        match self.figure {
            Figure::Cpu => ratio <= self.bound,
            Figure::Throughput => ratio >= self.bound,
        }
    }

    fn bound(&self) -> String {
        let sign = match self.figure {
            Figure::Cpu => "≤",
            Figure::Throughput => "≥",
        };
        format!("{sign} {:.2}x", self.bound)
    }
}

/// The one worker, pinned, against every peer and every hand-written reference.
const PINNED_SERVERS: &[&str] = &[
    "proactor 1w",
    "tokio multi-thread",
    "tokio current-thread",
    "compio",
    "monoio",
    "raw io_uring",
    "raw+pf",
    "raw+pf+fixed",
    "raw+pf+fixed+defer",
    "raw multishot",
];

/// proactor-echo as a user runs it against tokio multi-thread, and two workers against one.
const NO_FLAGS_SERVERS: &[&str] = &[
    "proactor (no flags)",
    "proactor 1w",
    "proactor 2w",
    "tokio multi-thread",
];

/// The servers whose memory per idle connection `bench targets` measures.
const MEMORY_SERVERS: &[&str] = &[
    "proactor (no flags)",
    "proactor 1w",
    "tokio multi-thread",
    "monoio",
];

/// Memory per idle connection, at most (bytes), for the proactor rows.
const MEMORY_BOUND: f64 = 2_000.0;

/// The cells and targets of issue 15.
fn target_cells() -> (Vec<TargetCell>, Vec<Target>) {
    let mut cells = Vec::new();
    let mut targets = Vec::new();
    let pinned = |conns, size, depth| Cell {
        conns,
        size,
        depth,
        pinned: true,
    };
    let mut list = Vec::new();
    for conns in [100, 1000] {
        for size in [64, 4096] {
            for depth in [1, 8] {
                list.push(pinned(conns, size, depth));
            }
        }
    }
    list.push(pinned(10_000, 64, 1));
    for cell in list {
        let at = cells.len();
        cells.push(TargetCell {
            cell,
            servers: PINNED_SERVERS,
        });
        targets.push(Target {
            cell: at,
            subject: "proactor 1w",
            figure: Figure::Cpu,
            base: Base::BestPeer,
            bound: 1.00,
        });
        targets.push(Target {
            cell: at,
            subject: "proactor 1w",
            figure: Figure::Cpu,
            base: Base::BestReference,
            bound: 1.05,
        });
    }
    let at = cells.len();
    cells.push(TargetCell {
        cell: Cell {
            conns: 1000,
            size: 64,
            depth: 1,
            pinned: false,
        },
        servers: NO_FLAGS_SERVERS,
    });
    let tokio = Base::Server("tokio multi-thread");
    targets.extend([
        Target {
            cell: at,
            subject: "proactor (no flags)",
            figure: Figure::Throughput,
            base: tokio,
            bound: 1.00,
        },
        Target {
            cell: at,
            subject: "proactor (no flags)",
            figure: Figure::Cpu,
            base: tokio,
            bound: 1.00,
        },
        Target {
            cell: at,
            subject: "proactor 2w",
            figure: Figure::Cpu,
            base: Base::Server("proactor 1w"),
            bound: 1.10,
        },
    ]);
    (cells, targets)
}

/// Seconds a run takes besides its measured window: start, connects, warm-up, stop. Measured on
/// this VM (2026-12-03): about 0.15 s at 100 and 1,000 connections, 3.3 s at 10,000 (connecting
/// and closing them), plus the warm-up; rounded up.
fn run_overhead(conns: usize, warmup: Duration) -> f64 {
    0.1 + conns as f64 * 0.000_32 + warmup.as_secs_f64()
}

/// Seconds the memory measurement takes per server (start, settle, 10,000 connects, settle).
fn memory_secs(conns: usize) -> f64 {
    2.0 + conns as f64 * 0.000_3
}

/// `bench targets`: the cells of the issue's targets, each server run `reps` times interleaved;
/// one headline table first on stdout, the per-cell tables into files under `out`.
fn targets(t: TargetsArgs) -> ExitCode {
    let (all_cells, targets) = target_cells();
    let chosen: Vec<usize> = if t.cells.is_empty() {
        (0..all_cells.len()).collect()
    } else {
        t.cells.iter().map(|c| c.wrapping_sub(1)).collect()
    };
    if let Some(bad) = chosen.iter().find(|&&c| c >= all_cells.len()) {
        eprintln!(
            "--cells: from 1 to {}, not {}",
            all_cells.len(),
            bad.wrapping_add(1)
        );
        return ExitCode::FAILURE;
    }
    let warmup = Duration::from_millis(t.warmup_ms);
    let only = |names: &[&'static str]| -> Vec<&'static str> {
        names
            .iter()
            .copied()
            .filter(|n| t.only.is_empty() || t.only.iter().any(|o| n.contains(o.as_str())))
            .collect()
    };
    // The estimate, printed before anything runs.
    let mut estimate = 0.0;
    eprintln!("bench targets: the cells");
    for (k, tc) in all_cells.iter().enumerate() {
        let names = only(tc.servers);
        let secs =
            (t.reps * names.len()) as f64 * (t.secs as f64 + run_overhead(tc.cell.conns, warmup));
        let run = chosen.contains(&k);
        if run {
            estimate += secs;
        }
        eprintln!(
            "  {:>2}. {}: {} servers{}",
            k + 1,
            tc.cell.short(),
            names.len(),
            if run { "" } else { " (skipped)" }
        );
    }
    let memory_servers = only(MEMORY_SERVERS);
    if !t.no_memory {
        estimate += memory_servers.len() as f64 * memory_secs(t.memory_conns);
    }
    eprintln!(
        "bench targets: {} repetitions, {} s measured + {:.1} s warm-up per run; estimated runtime \
         {:.0} min {:02.0} s (more if disturbed runs are run again)",
        t.reps,
        t.secs,
        warmup.as_secs_f64(),
        (estimate / 60.0).floor(),
        estimate % 60.0
    );
    if t.estimate {
        return ExitCode::SUCCESS;
    }
    let began = std::time::Instant::now();
    let mut session = Session {
        port: 19_000,
        reps: t.reps,
        secs: t.secs,
        warmup,
        warmed: false,
        failed: false,
    };
    let mut reports = format!(
        "# bench targets: every cell\n\n{}\n",
        preamble(t.reps, t.secs, warmup)
    );
    // (target, its ratios' spread)
    let mut results: Vec<(&Target, Option<Spread>)> = Vec::new();
    let mut spreads: Vec<Apart> = Vec::new();
    for &k in &chosen {
        let tc = &all_cells[k];
        let servers = named(&only(tc.servers));
        eprintln!(
            "[{:>4.0} s] cell {}: {}",
            began.elapsed().as_secs_f64(),
            k + 1,
            tc.cell.short()
        );
        if let Some((in_flight, threshold)) = too_large(&tc.cell) {
            reports.push_str(&not_run(&tc.cell, in_flight, threshold));
            continue;
        }
        let m = session.measure(&servers, &tc.cell);
        reports.push_str(&cell_report(&servers, &m, &tc.cell));
        if tc.cell.pinned {
            spreads.push((
                k,
                fastest(&servers, &m.runs, Group::Peer),
                fastest(&servers, &m.runs, Group::Reference),
            ));
        }
        for target in targets.iter().filter(|g| g.cell == k) {
            let ratio = servers
                .iter()
                .position(|s| s.name == target.subject)
                .and_then(|i| spread(ratios(&servers, &m.runs, i, target.figure, target.base)));
            results.push((target, ratio));
        }
    }
    let mut memory_report = String::new();
    let mut memory_rows_kept = Vec::new();
    if !t.no_memory {
        eprintln!(
            "[{:>4.0} s] memory per idle connection",
            began.elapsed().as_secs_f64()
        );
        let servers = named(&memory_servers);
        let rows = memory_rows(&servers, t.memory_conns);
        memory_report = memory_table(&servers, &rows, t.memory_conns);
        memory_rows_kept = servers.iter().map(|s| s.name).zip(rows).collect();
    }
    eprintln!(
        "[{:>4.0} s] done (estimated {:.0} s)",
        began.elapsed().as_secs_f64(),
        estimate
    );

    let mut headline = headline(&all_cells, &results, &memory_rows_kept, t.memory_conns, &t);
    headline.push_str(&apart_table(&all_cells, &spreads));
    print!("{headline}");
    let out = t
        .out
        .unwrap_or_else(|| PathBuf::from("bench-results").join(stamp()));
    let written = std::fs::create_dir_all(&out).and_then(|()| {
        std::fs::write(out.join("headline.md"), &headline)?;
        std::fs::write(out.join("cells.md"), &reports)?;
        if !memory_report.is_empty() {
            std::fs::write(out.join("memory.md"), &memory_report)?;
        }
        Ok(())
    });
    match written {
        Ok(()) => println!(
            "Per-cell tables: `{0}/cells.md`;{1} this table: `{0}/headline.md`.",
            out.display(),
            if t.no_memory {
                String::new()
            } else {
                format!(" memory: `{}/memory.md`;", out.display())
            }
        ),
        Err(e) => {
            eprintln!("{}: {e}", out.display());
            session.failed = true;
        }
    }
    if session.failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// A pinned cell's fastest peer and fastest reference, each with its CPU per round trip over
/// the best of the others of its group (see [`ratios`]): how far apart the fastest runtimes
/// are, which is the margin the targets' "best of the repetition" bases ask for.
type Apart = (
    usize,
    Option<(&'static str, Spread)>,
    Option<(&'static str, Spread)>,
);

/// The server of `group` whose median CPU per round trip over the best of the rest of its group
/// is lowest, with that ratio's spread.
fn fastest(servers: &[Server], runs: &Runs, group: Group) -> Option<(&'static str, Spread)> {
    let base = match group {
        Group::Reference => Base::BestReference,
        _ => Base::BestPeer,
    };
    (0..servers.len())
        .filter(|&i| servers[i].group == group)
        .filter_map(|i| {
            let s = spread(ratios(servers, runs, i, Figure::Cpu, base))?;
            Some((servers[i].name, s))
        })
        .min_by(|a, b| a.1.median.total_cmp(&b.1.median))
}

/// The table of [`Apart`] rows, after the headline.
fn apart_table(cells: &[TargetCell], rows: &[Apart]) -> String {
    use std::fmt::Write;
    if rows.is_empty() {
        return String::new();
    }
    let mut out = String::from(
        "How far apart the fastest runtimes are (CPU/rt of the fastest peer over the best other \
         peer of each repetition, and the same for the hand-written references; median [spread]):\n\n\
         | cell | fastest peer | vs the other peers | fastest reference | vs the other references |\n\
         |---|---|---:|---|---:|\n",
    );
    let cell = |x: &Option<(&'static str, Spread)>| match x {
        Some((name, s)) => (name.to_string(), show(Some(*s))),
        None => ("–".to_string(), "–".to_string()),
    };
    for (k, peer, reference) in rows {
        let (pn, ps) = cell(peer);
        let (rn, rs) = cell(reference);
        let _ = writeln!(
            out,
            "| {} | {pn} | {ps} | {rn} | {rs} |",
            cells[*k].cell.short()
        );
    }
    out.push('\n');
    out
}

/// The headline table: one row per target, its median ratio with the spread, met or missed.
fn headline(
    cells: &[TargetCell],
    results: &[(&Target, Option<Spread>)],
    memory: &[(&'static str, Option<MemoryRow>)],
    memory_conns: usize,
    t: &TargetsArgs,
) -> String {
    use std::fmt::Write;
    let mut out = format!(
        "## Targets\n\n`cargo xtask bench {}` ({} repetitions of {} s; per cell the median of \
         the per-repetition ratios, [min–max] beside it).\n\n\
         | cell | ratio | median [spread] | target | met? |\n|---|---|---:|---:|---|\n",
        std::env::args().skip(1).collect::<Vec<_>>().join(" "),
        t.reps,
        t.secs
    );
    for (target, ratio) in results {
        let verdict = match ratio {
            Some(r) if target.met(r.median) => "met",
            Some(_) => "**missed**",
            None => "not measured",
        };
        let _ = writeln!(
            out,
            "| {} | {} {} vs {} | {} | {} | {} |",
            cells[target.cell].cell.short(),
            target.subject,
            target.figure.name(),
            target.base.name(),
            show(*ratio),
            target.bound(),
            verdict
        );
    }
    for (name, row) in memory {
        let (shown, verdict) = match row {
            Some(r) => {
                let per = r.per_connection();
                let verdict = if !name.starts_with("proactor") {
                    ""
                } else if per <= MEMORY_BOUND {
                    "met"
                } else {
                    "**missed**"
                };
                (format!("{per:.0} B"), verdict)
            }
            None => ("failed to start".to_string(), "not measured"),
        };
        let bound = if name.starts_with("proactor") {
            format!("≤ {MEMORY_BOUND:.0} B")
        } else {
            String::new()
        };
        let _ = writeln!(
            out,
            "| {} idle connections | {name} memory per connection | {shown} | {bound} | {verdict} |",
            thousands(memory_conns)
        );
    }
    out.push('\n');
    out
}

/// The time now in UTC as `2026-12-03T104000Z`.
fn stamp() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs()) as libc::time_t;
    // SAFETY: gmtime_r writes the broken-down time into `tm`, a plain struct owned here.
    let tm = unsafe {
        let mut tm: libc::tm = std::mem::zeroed();
        libc::gmtime_r(&now, &mut tm);
        tm
    };
    format!(
        "{:04}-{:02}-{:02}T{:02}{:02}{:02}Z",
        tm.tm_year + 1900,
        tm.tm_mon + 1,
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec
    )
}

/// Raises this process's descriptor limit to its hard limit (the servers it starts inherit
/// it): 10,000 connections need more than the usual 1,024.
fn raise_descriptor_limit() {
    // SAFETY: getrlimit/setrlimit read and write a plain struct owned here.
    unsafe {
        let mut l: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) == 0 && l.rlim_cur < l.rlim_max {
            l.rlim_cur = l.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &l);
        }
    }
}

pub fn main() -> ExitCode {
    raise_descriptor_limit();
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
        What::Targets(t) => targets(t),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(cpu: f64, rts: f64) -> Option<Figures> {
        Some(Figures {
            cpu_us_per_rt: cpu,
            rts,
            ..Figures::default()
        })
    }

    #[test]
    fn each_repetition_runs_every_server_once_and_starts_one_later() {
        let orders: Vec<Vec<usize>> = (0..4).map(|r| rotated(3, r).collect()).collect();
        assert_eq!(
            orders,
            [vec![0, 1, 2], vec![1, 2, 0], vec![2, 0, 1], vec![0, 1, 2]]
        );
        assert_eq!(rotated(1, 5).collect::<Vec<_>>(), [0]);
        assert_eq!(rotated(0, 2).count(), 0);
    }

    /// Every repetition runs each server exactly once, so that `runs[i][r]` is server `i`'s run
    /// of repetition `r` whatever the order; over `n` repetitions each server is first once.
    #[test]
    fn every_rotation_is_a_permutation_and_each_server_leads_in_turn() {
        for n in 0..9 {
            let mut led = vec![0; n];
            for rep in 0..3 * n {
                let mut order: Vec<usize> = rotated(n, rep).collect();
                if let Some(&first) = order.first() {
                    led[first] += 1;
                }
                order.sort_unstable();
                assert_eq!(order, (0..n).collect::<Vec<_>>(), "n {n}, rep {rep}");
            }
            assert!(led.iter().all(|&l| l == 3), "n {n}: {led:?}");
        }
    }

    #[test]
    fn spread_is_the_median_and_range_of_the_numbers() {
        let s = spread(vec![3.0, 1.0, f64::NAN, 2.0]).unwrap();
        assert_eq!((s.median, s.min, s.max, s.n), (2.0, 1.0, 3.0, 3));
        // An even count: the mean of the two middle values.
        let s = spread(vec![4.0, 1.0, 3.0, 2.0]).unwrap();
        assert_eq!((s.median, s.min, s.max, s.n), (2.5, 1.0, 4.0, 4));
        assert_eq!(spread(vec![f64::INFINITY]), None);
        assert_eq!(show(spread(vec![1.0, 1.1, 0.9])), "1.00x [0.90–1.10]");
        assert_eq!(show(spread(vec![1.234])), "1.23x");
        assert_eq!(show(None), "–");
    }

    #[test]
    fn ratios_compare_within_each_repetition() {
        let servers = named(&[
            "proactor 1w",
            "tokio multi-thread",
            "monoio",
            "raw io_uring",
        ]);
        // Repetition 0: the machine is fast; repetition 1: twice as slow for everyone;
        // repetition 2: proactor failed to start.
        let runs: Runs = vec![
            vec![run(10.0, 100.0), run(20.0, 50.0), None],
            vec![run(12.0, 90.0), run(24.0, 45.0), run(12.0, 90.0)],
            vec![run(11.0, 80.0), run(22.0, 40.0), run(11.0, 80.0)],
            vec![run(8.0, 120.0), run(16.0, 60.0), run(8.0, 120.0)],
        ];
        // The best peer of each repetition: monoio's 11 then 22 (CPU), tokio's 90 then 45.
        let cpu = ratios(&servers, &runs, 0, Figure::Cpu, Base::BestPeer);
        assert_eq!(cpu, vec![10.0 / 11.0, 20.0 / 22.0]);
        let rts = ratios(&servers, &runs, 0, Figure::Throughput, Base::BestPeer);
        assert_eq!(rts, vec![100.0 / 90.0, 50.0 / 45.0]);
        let vs_raw = ratios(&servers, &runs, 0, Figure::Cpu, Base::BestReference);
        assert_eq!(vs_raw, vec![1.25, 1.25]);
        // Against a named server; a repetition without the subject is left out.
        let vs_tokio = ratios(
            &servers,
            &runs,
            2,
            Figure::Cpu,
            Base::Server("tokio multi-thread"),
        );
        assert_eq!(vs_tokio, vec![11.0 / 12.0, 22.0 / 24.0, 11.0 / 12.0]);
        let none = ratios(&servers, &runs, 0, Figure::Cpu, Base::Server("compio"));
        assert!(none.is_empty());
        // A peer is compared with the best *other* peer: monoio (11, 22, 11) over tokio (12,
        // 24, 12), tokio over monoio; the lone reference has no other reference.
        let monoio = ratios(&servers, &runs, 2, Figure::Cpu, Base::BestPeer);
        assert_eq!(monoio, vec![11.0 / 12.0, 22.0 / 24.0, 11.0 / 12.0]);
        let tokio = ratios(&servers, &runs, 1, Figure::Cpu, Base::BestPeer);
        assert_eq!(tokio, vec![12.0 / 11.0, 24.0 / 22.0, 12.0 / 11.0]);
        assert!(ratios(&servers, &runs, 3, Figure::Cpu, Base::BestReference).is_empty());
        let (name, s) = fastest(&servers, &runs, Group::Peer).unwrap();
        assert_eq!((name, s.n), ("monoio", 3));
        assert!(fastest(&servers, &runs, Group::Reference).is_none());
        // The median of the per-repetition ratios, not the ratio of the medians.
        assert_eq!(
            spread(cpu).unwrap().median,
            (10.0 / 11.0 + 20.0 / 22.0) / 2.0
        );
    }

    #[test]
    fn the_target_cells_are_the_issues() {
        let (cells, targets) = target_cells();
        assert_eq!(cells.len(), 10);
        assert_eq!(targets.len(), 9 * 2 + 3);
        for tc in &cells {
            // Every server of a cell exists.
            assert_eq!(named(tc.servers).len(), tc.servers.len());
        }
        for g in &targets {
            assert!(cells[g.cell].servers.contains(&g.subject));
            if let Base::Server(b) = g.base {
                assert!(cells[g.cell].servers.contains(&b));
            }
        }
        assert_eq!(named(MEMORY_SERVERS).len(), MEMORY_SERVERS.len());
        let no_flags = &cells[9];
        assert!(!no_flags.cell.pinned && no_flags.cell.conns == 1000);
        let t = &targets[0];
        assert!(t.met(1.0) && !t.met(1.01));
        assert!(targets[18].met(1.0) && !targets[18].met(0.99));
    }

    fn args(cmd: &Command) -> Vec<String> {
        cmd.get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn the_no_flags_row_gets_only_the_port_and_is_never_pinned() {
        let s = named(&["proactor (no flags)", "proactor 1w", "proactor epoll 1w"]);
        let bare = command(&s[1], 19_001, Some(0));
        assert!(
            bare.get_program()
                .to_string_lossy()
                .ends_with("proactor-echo")
        );
        assert_eq!(args(&bare), ["--port", "19001"]);
        // No PROACTOR_* variable from the harness's environment.
        let removed: Vec<_> = bare.get_envs().filter(|(_, v)| v.is_none()).collect();
        assert_eq!(removed.len(), PROACTOR_VARS.len());
        // The others: pinned, the harness's buffer and connection limit.
        let one = command(&s[0], 19_002, Some(0));
        assert_eq!(one.get_program(), "taskset");
        assert_eq!(
            args(&one)[3..],
            [
                "--port",
                "19002",
                "--buffer-size",
                "65536",
                "--workers",
                "1",
                "--max-connections",
                MAX_CONNS
            ]
        );
        let epoll = command(&s[2], 19_003, None);
        assert!(
            epoll
                .get_envs()
                .any(|(k, v)| k == "PROACTOR_BACKEND" && v == Some("epoll".as_ref()))
        );
    }

    #[test]
    fn numbers_print_as_the_tables_want() {
        assert_eq!(thousands(10_000), "10,000");
        assert_eq!(thousands(100), "100");
        assert_eq!(thousands(1_000_000), "1,000,000");
        assert_eq!(times(10.93 / 10.0), "1.09x");
        assert_eq!(times(f64::NAN), "–");
        assert_eq!(stamp().len(), "2026-12-03T104000Z".len());
    }
}
