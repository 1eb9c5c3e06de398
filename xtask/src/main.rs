//! Build and test automation: `cargo xtask ci` is the README's test command.
//!
//! On Linux it installs what is missing (as root, through apt), checks formatting, runs clippy
//! with `-D warnings`, the tests and the doc tests natively, then cross-compiles for
//! `x86_64-pc-windows-gnu` with Debian's rustc and `-Zbuild-std`, runs clippy for that target,
//! runs the Windows test suite under Wine, and checks that proactor-echo makes no more
//! Win32/WinSock calls per echoed message than a hand-written windows-sys echo. On Windows it
//! runs the same suite natively.
//!
//! Commands:
//! - `cargo xtask ci`: everything above.
//! - `cargo xtask wine [cargo test args...]`: only the Windows suite under Wine, for iterating.
//! - `cargo xtask calls`: Win32/WinSock calls per echoed message under Wine's relay trace,
//!   proactor-echo against a hand-written windows-sys echo (part of `ci`).
//! - `cargo xtask bench [matrix|memory] [args...]`: the benchmarks (Linux, release build).

mod calls;
mod wine;

use std::{
    env,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Command, ExitCode, Stdio},
};

fn main() -> ExitCode {
    let args: Vec<String> = env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("ci") => ci(),
        Some("wine") => wine::prepare().and_then(|w| w.run_tests(&args[1..]).map(drop)),
        Some("calls") => wine::prepare().and_then(|w| calls::calls(&w)),
        Some("bench") => bench(&args[1..]),
        _ => Err("usage: cargo xtask ci | cargo xtask wine [cargo test args...] | cargo xtask calls | cargo xtask bench [matrix|memory] [args...]".into()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}

type Result<T> = std::result::Result<T, String>;

/// The workspace root.
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .into()
}

/// The cargo that runs this xtask, for the native steps.
fn cargo() -> Command {
    let mut cmd = Command::new(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(root());
    cmd
}

fn step(name: &str) {
    eprintln!("\n==> {name}");
}

/// Runs `cmd`, failing with its description if it fails.
fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd
        .status()
        .map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("failed ({status}): {cmd:?}"))
    }
}

/// Test totals parsed from libtest's `test result:` lines.
#[derive(Default, Clone, Copy)]
struct Totals {
    passed: u64,
    failed: u64,
    ignored: u64,
}

impl Totals {
    fn add(&mut self, other: Totals) {
        self.passed += other.passed;
        self.failed += other.failed;
        self.ignored += other.ignored;
    }
}

/// Runs a `cargo test` command, echoing its output and adding up its results.
fn run_tests(cmd: &mut Command) -> Result<Totals> {
    cmd.stdout(Stdio::piped());
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
    let mut totals = Totals::default();
    let out = child.stdout.take().expect("piped");
    for line in BufReader::new(out).lines() {
        let line = line.map_err(|e| e.to_string())?;
        println!("{line}");
        if let Some(rest) = line.strip_prefix("test result: ") {
            for part in rest.split(';') {
                let mut words = part.split_whitespace().rev();
                let (Some(what), Some(n)) = (words.next(), words.next()) else {
                    continue;
                };
                let n: u64 = n.parse().unwrap_or(0);
                match what {
                    "passed" => totals.passed += n,
                    "failed" => totals.failed += n,
                    "ignored" => totals.ignored += n,
                    _ => {}
                }
            }
        }
    }
    let status = child.wait().map_err(|e| e.to_string())?;
    if !status.success() {
        return Err(format!("tests failed ({status}): {cmd:?}"));
    }
    Ok(totals)
}

/// Builds the servers and the harness in release mode and runs `bench` (default: `matrix`).
fn bench(args: &[String]) -> Result<()> {
    step("build (release)");
    run(cargo().args([
        "build",
        "--release",
        "-p",
        "proactor-echo",
        "-p",
        "proactor-bench",
    ]))?;
    let args: Vec<String> = if args.is_empty() {
        vec!["matrix".into()]
    } else {
        args.to_vec()
    };
    run(Command::new(root().join("target/release/bench")).args(&args))
}

/// Clippy over every crate and target, warnings denied: the same for both targets.
const CLIPPY: [&str; 6] = [
    "clippy",
    "--workspace",
    "--all-targets",
    "--",
    "-D",
    "warnings",
];

fn ci() -> Result<()> {
    if cfg!(target_os = "linux") {
        wine::install_missing()?;
    }
    step("cargo fmt --check");
    run(cargo().args(["fmt", "--all", "--check"]))?;
    step("clippy (native)");
    run(cargo().args(CLIPPY))?;
    step("tests (native)");
    let mut native = run_tests(cargo().args(["test", "--workspace"]))?;
    if cfg!(target_os = "linux") {
        // The same suite again on the epoll fallback, and on io_uring with a submission-polling
        // kernel thread.
        for (label, var, value) in [
            ("epoll", "PROACTOR_BACKEND", "epoll"),
            ("sqpoll", "PROACTOR_SQPOLL", "50"),
        ] {
            step(&format!("tests (native, {var}={value})"));
            let totals = run_tests(cargo().args(["test", "--workspace"]).env(var, value))?;
            println!(
                "{label}: {} passed, {} failed",
                totals.passed, totals.failed
            );
            native.add(totals);
        }
    }
    step("rustdoc -D warnings");
    run(cargo()
        .args(["doc", "--workspace", "--no-deps"])
        .env("RUSTDOCFLAGS", "-D warnings"))?;
    let mut all = native;
    if cfg!(target_os = "linux") {
        let wine = wine::prepare()?;
        step("clippy (x86_64-pc-windows-gnu)");
        run(wine.cargo().args(CLIPPY))?;
        step("Windows test suite under Wine");
        let windows = wine.run_tests(&[])?;
        println!("wine: {} passed, {} failed", windows.passed, windows.failed);
        if windows.passed == 0 {
            return Err("the Windows suite ran no test under Wine".into());
        }
        all.add(windows);
        step("Win32/WinSock calls per echoed message (Wine relay trace)");
        calls::calls(&wine)?;
    }
    println!("native: {} passed, {} failed", native.passed, native.failed);
    println!(
        "{} passed, {} failed, {} skipped",
        all.passed, all.failed, all.ignored
    );
    Ok(())
}
