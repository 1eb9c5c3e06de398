//! `cargo xtask calls`: the Win32/WinSock calls made per echoed message, counted under Wine's
//! relay trace, for proactor-echo (one worker) and for `echo-raw-iocp`, the minimal IOCP echo
//! written directly on `windows-sys`. Fails if proactor-echo as a user runs it (the default
//! mode: a `LocalPort` per worker, which on Windows receives into each connection's own
//! buffer) or with `--shared` (the classic shared port) makes more calls per message.
//! `--receive pooled` (pooled receive, the Linux default: a zero-byte `WSARecv`, then a `recv`
//! into a pool buffer) is reported beside them, unchecked: it costs one call more per message
//! by design, for an idle connection that holds no buffer.
//!
//! How: each server runs under `WINEDEBUG=+pid,+relay,+loaddll`; a client echoes 64-byte
//! messages one at a time, pausing after each echo so that the server's receive is always
//! pending when the next message arrives (the same path every time). A call counts when the
//! server process made it from its own executable (the `ret=` address lies in the image
//! `+loaddll` reports) on a thread that dequeues completions; calls into the C runtime
//! (`msvcrt`, `ucrtbase`: `memcpy` and the like) are shown apart. Two runs, with
//! [`FEW`] and [`MANY`] messages, and the difference divided by `MANY - FEW`: what happens once
//! (start, accept, close) cancels out. Wine's timings mean nothing; only counts are taken.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs::File,
    io::{BufRead, BufReader, Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpStream},
    path::Path,
    process::{Child, Stdio},
    thread,
    time::{Duration, Instant},
};

use crate::{Result, root, run, step, wine::Wine};

const FEW: u32 = 100;
const MANY: u32 = 300;
const MESSAGE: usize = 64;
/// The client's pause after each echo: long enough for the server to post its next receive.
const PAUSE: Duration = Duration::from_millis(5);
const PORT: u16 = 18_641;
/// C runtime modules: their calls are reported but are not Win32/WinSock calls.
const C_RUNTIME: [&str; 2] = ["msvcrt", "ucrtbase"];

/// A server under count: its executable and arguments.
struct Server {
    name: &'static str,
    exe: &'static str,
    args: &'static [&'static str],
}

/// The reference: the hand-written echo.
const REFERENCE: usize = 0;
/// The servers checked against the reference.
const CHECKED: [usize; 2] = [1, 2];

/// The reference, the servers checked against it, then those reported only.
const SERVERS: [Server; 4] = [
    Server {
        name: "echo-raw-iocp (windows-sys)",
        exe: "echo-raw-iocp.exe",
        args: &[],
    },
    Server {
        name: "proactor-echo --workers 1 (default: LocalPort)",
        exe: "proactor-echo.exe",
        args: &["--workers", "1"],
    },
    Server {
        name: "proactor-echo --workers 1 --shared",
        exe: "proactor-echo.exe",
        args: &["--workers", "1", "--shared"],
    },
    Server {
        name: "proactor-echo --workers 1 --receive pooled (not checked)",
        exe: "proactor-echo.exe",
        args: &["--workers", "1", "--receive", "pooled"],
    },
];

/// Calls per function name (`MODULE.Function`).
type Counts = BTreeMap<String, u64>;

pub fn calls(wine: &Wine) -> Result<()> {
    // The dev profile: the Win32/WinSock calls a message costs are the same as a release
    // build's (checked: identical tables), and the Wine suite built the dev standard library
    // already (a release one took 1-3 minutes of the test command). The C runtime table below
    // is a dev build's (compiler-emitted copies a release build optimises away).
    step("build proactor-echo and echo-raw-iocp (dev profile, x86_64-pc-windows-gnu)");
    run(wine.cargo().args([
        "build",
        "-p",
        "proactor-echo",
        "-p",
        "proactor-bench",
        "--bin",
        "proactor-echo",
        "--bin",
        "echo-raw-iocp",
    ]))?;
    let dir = wine.target_dir().join("x86_64-pc-windows-gnu/debug");
    let traces = root().join("target/wine/relay");
    std::fs::create_dir_all(&traces).map_err(|e| format!("{}: {e}", traces.display()))?;

    let mut per_message = Vec::new();
    for server in &SERVERS {
        step(&format!("relay trace: {}", server.name));
        let mut runs = Vec::new();
        for messages in [FEW, MANY] {
            let trace = traces.join(format!(
                "{}{}-{messages}.txt",
                server.exe,
                server.args.join("")
            ));
            trace_run(wine, &dir.join(server.exe), server.args, messages, &trace)?;
            runs.push(count(&trace, server.exe)?);
        }
        per_message.push(difference(&runs[0], &runs[1]));
    }
    report(&per_message)
}

/// Runs one server under the relay trace while a client echoes `messages` messages.
fn trace_run(wine: &Wine, exe: &Path, args: &[&str], messages: u32, trace: &Path) -> Result<()> {
    let log = File::create(trace).map_err(|e| format!("{}: {e}", trace.display()))?;
    let mut child = wine
        .command(crate::wine::WINE)
        .arg(exe)
        .args(["--port", &PORT.to_string()])
        .args(args)
        .env("WINEDEBUG", "+pid,+relay,+loaddll")
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", exe.display()))?;
    let result = wait_listening(&mut child).and_then(|()| echo(messages));
    // Let the server see the close, then stop it: the counts only need what came before.
    thread::sleep(Duration::from_millis(500));
    let _ = child.kill();
    let _ = child.wait();
    result
}

/// Waits for the server's `listening on` line.
fn wait_listening(child: &mut Child) -> Result<()> {
    let out = child.stdout.take().expect("piped");
    let mut lines = BufReader::new(out).lines();
    match lines.next() {
        Some(Ok(line)) if line.contains("listening on") => {
            // Keep draining stdout so the server never blocks on a full pipe.
            thread::spawn(move || lines.for_each(drop));
            Ok(())
        }
        other => Err(format!("the server did not start: {other:?}")),
    }
}

/// Echoes `messages` messages of [`MESSAGE`] bytes, one at a time, checking every byte.
fn echo(messages: u32) -> Result<()> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, PORT));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(10))
        .map_err(|e| format!("connect {addr}: {e}"))?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .map_err(|e| e.to_string())?;
    let deadline = Instant::now() + Duration::from_secs(300);
    for i in 0..messages {
        let message = [b'a' + (i % 26) as u8; MESSAGE];
        stream.write_all(&message).map_err(|e| e.to_string())?;
        let mut back = [0u8; MESSAGE];
        stream
            .read_exact(&mut back)
            .map_err(|e| format!("echo {i}: {e}"))?;
        if back != message {
            return Err(format!("echo {i} came back different"));
        }
        if Instant::now() > deadline {
            return Err("the echo took more than 5 minutes".into());
        }
        thread::sleep(PAUSE);
    }
    Ok(())
}

/// Counts the calls `exe` made from its own image on the threads that dequeue completions.
fn count(trace: &Path, exe: &str) -> Result<Counts> {
    let file = File::open(trace).map_err(|e| format!("{}: {e}", trace.display()))?;
    let mut process = None;
    let mut per_thread: BTreeMap<String, Counts> = BTreeMap::new();
    for line in BufReader::new(file).lines() {
        let line = line.map_err(|e| e.to_string())?;
        let mut fields = line.splitn(3, ':');
        let (Some(pid), Some(tid), Some(rest)) = (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        if process.is_none() {
            if rest.starts_with("trace:loaddll:") && rest.contains(exe) {
                let base = rest
                    .rsplit(" at ")
                    .next()
                    .and_then(|a| a.split(':').next())
                    .and_then(|a| u64::from_str_radix(a.trim(), 16).ok())
                    .ok_or_else(|| format!("no load address in {line:?}"))?;
                process = Some((pid.to_owned(), base));
            }
            continue;
        }
        let Some((our_pid, base)) = &process else {
            continue;
        };
        let Some(call) = rest.strip_prefix("Call ") else {
            continue;
        };
        if pid != our_pid {
            continue;
        }
        let (Some(name), Some(ret)) = (call.split('(').next(), call.rsplit("ret=").next()) else {
            continue;
        };
        let Ok(ret) = u64::from_str_radix(ret.trim(), 16) else {
            continue; // "Call PE DLL (...)" and other non-call lines
        };
        // The image is far smaller than 256 MiB; Wine's own DLLs load elsewhere.
        if ret < *base || ret >= base + (256 << 20) {
            continue;
        }
        *per_thread
            .entry(tid.to_owned())
            .or_default()
            .entry(name.to_owned())
            .or_default() += 1;
    }
    if process.is_none() {
        return Err(format!("{exe} never loaded in {}", trace.display()));
    }
    let dequeues = |c: &Counts| c.keys().any(|k| k.contains("GetQueuedCompletionStatus"));
    let mut total = Counts::new();
    for counts in per_thread.values().filter(|c| dequeues(c)) {
        for (name, n) in counts {
            *total.entry(name.clone()).or_default() += n;
        }
    }
    if total.is_empty() {
        return Err(format!("no thread of {exe} dequeued a completion"));
    }
    Ok(total)
}

/// Calls per message: the difference between the two runs over the difference in messages.
fn difference(few: &Counts, many: &Counts) -> BTreeMap<String, f64> {
    let names: BTreeSet<&String> = few.keys().chain(many.keys()).collect();
    names
        .into_iter()
        .map(|name| {
            let a = few.get(name).copied().unwrap_or(0) as f64;
            let b = many.get(name).copied().unwrap_or(0) as f64;
            (name.clone(), (b - a) / f64::from(MANY - FEW))
        })
        .filter(|(_, n)| n.abs() >= 0.005)
        .collect()
}

fn is_c_runtime(name: &str) -> bool {
    C_RUNTIME
        .iter()
        .any(|m| name.to_ascii_lowercase().starts_with(&format!("{m}.")))
}

/// Prints the table and checks that proactor-echo makes no more calls than the reference.
fn report(per_message: &[BTreeMap<String, f64>]) -> Result<()> {
    let names: BTreeSet<&String> = per_message.iter().flat_map(|m| m.keys()).collect();
    let (runtime, api): (Vec<&String>, Vec<&String>) =
        names.into_iter().partition(|n| is_c_runtime(n));
    println!(
        "\nWin32/WinSock calls per echoed 64-byte message (Wine relay trace, {FEW} vs {MANY} messages):\n"
    );
    let header: Vec<&str> = SERVERS.iter().map(|s| s.name).collect();
    println!("| call | {} |", header.join(" | "));
    println!("|---|{}", "---:|".repeat(SERVERS.len()));
    let row = |name: &str| {
        let cells: Vec<String> = per_message
            .iter()
            .map(|m| format!("{:.2}", m.get(name).copied().unwrap_or(0.0)))
            .collect();
        println!("| {name} | {} |", cells.join(" | "));
    };
    for name in &api {
        row(name);
    }
    let totals: Vec<f64> = per_message
        .iter()
        .map(|m| api.iter().filter_map(|n| m.get(*n)).sum())
        .collect();
    let cells: Vec<String> = totals.iter().map(|t| format!("**{t:.2}**")).collect();
    println!("| **Win32/WinSock total** | {} |", cells.join(" | "));
    if !runtime.is_empty() {
        println!(
            "\nC runtime calls per message (not Win32/WinSock; compiler-emitted `memcpy` and the like, of a dev-profile build: a release build makes far fewer):\n"
        );
        println!("| call | {} |", header.join(" | "));
        println!("|---|{}", "---:|".repeat(SERVERS.len()));
        for name in &runtime {
            row(name);
        }
    }
    println!();
    for (server, total) in SERVERS.iter().zip(&totals) {
        println!(
            "{}: {total:.2} Win32/WinSock calls per message",
            server.name
        );
    }
    let reference = totals[REFERENCE];
    // Counts are whole per message; allow for rounding of a rare extra wake-up.
    let over: Vec<String> = CHECKED
        .iter()
        .filter(|&&at| totals[at] > reference + 0.05)
        .map(|&at| format!("{} ({:.2})", SERVERS[at].name, totals[at]))
        .collect();
    if !over.is_empty() {
        return Err(format!(
            "more Win32/WinSock calls per message than the hand-written echo ({reference:.2}): {}",
            over.join(", ")
        ));
    }
    Ok(())
}
