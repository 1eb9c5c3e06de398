//! Build and test automation: `cargo xtask ci` is the README's test command.
//!
//! On Linux it installs what is missing (as root, through apt), checks formatting, runs clippy
//! with `-D warnings`, the tests (with the failpoint tests, on io_uring, epoll and SQPOLL, the
//! last without the files that run only a `LocalPort`), the `LocalPort` suites as on older
//! kernels, and the doc tests natively, then the suites that try to break the library
//! (`adversarial.rs`: the loom model of the handshakes, AddressSanitizer and LeakSanitizer over
//! the native suite, a short fuzz run), then cross-compiles for `x86_64-pc-windows-gnu` with
//! Debian's rustc and `-Zbuild-std`, runs clippy for that target, runs the Windows test suite
//! under Wine, and checks that proactor-echo makes no more Win32/WinSock calls per echoed
//! message than a hand-written windows-sys echo. On Windows it runs the same suite natively.
//!
//! Commands:
//! - `cargo xtask ci`: everything above, with the time each step took.
//! - `cargo xtask wine [cargo test args...]`: only the Windows suite under Wine, for iterating
//!   (`cargo xtask wine --features proactor/failpoints` adds the failpoint tests).
//! - `cargo xtask loom`, `cargo xtask asan`, `cargo xtask failpoints`: one of the Linux suites
//!   of `ci`.
//! - `cargo xtask fuzz [seconds] [io_uring|epoll|sqpoll] [ops|local_ops]`: a fuzz target
//!   (default 600 s of `ops` on io_uring), installing cargo-fuzz if missing.
//! - `cargo xtask calls`: Win32/WinSock calls per echoed message under Wine's relay trace,
//!   proactor-echo against a hand-written windows-sys echo (part of `ci`).
//! - `cargo xtask bench [matrix|memory|targets] [args...]`: the benchmarks (Linux, release build).

mod adversarial;
mod calls;
mod wine;

use std::{
    env, fs,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Command, ExitCode, Stdio},
    sync::Mutex,
    time::{Duration, Instant},
};

fn main() -> ExitCode {
    let args: Vec<String> = env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("ci") => ci(),
        Some("wine") => wine::prepare().and_then(|w| w.run_tests(&args[1..]).map(drop)),
        Some("calls") => wine::prepare().and_then(|w| calls::calls(&w)),
        Some("loom") => adversarial::loom().map(drop),
        Some("asan") => adversarial::asan().map(drop),
        Some("failpoints") => adversarial::failpoints().map(drop),
        Some("fuzz") => adversarial::fuzz_command_line(&args[1..]),
        Some("bench") => bench(&args[1..]),
        _ => Err("usage: cargo xtask ci | cargo xtask wine [cargo test args...] | cargo xtask calls | cargo xtask loom | cargo xtask asan | cargo xtask failpoints | cargo xtask fuzz [seconds] [backend] [target] | cargo xtask bench [matrix|memory|targets] [args...]".into()),
    };
    print_timings();
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

/// The steps run so far, each with the time it started.
static STEPS: Mutex<Vec<(String, Instant)>> = Mutex::new(Vec::new());

fn step(name: &str) {
    eprintln!("\n==> {name}");
    STEPS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push((name.to_owned(), Instant::now()));
}

/// How long each step took (until the next one started), and the total.
fn print_timings() {
    let steps = STEPS.lock().unwrap_or_else(|e| e.into_inner());
    if steps.len() < 2 {
        return;
    }
    let end = Instant::now();
    eprintln!("\n==> time per step");
    for (i, (name, start)) in steps.iter().enumerate() {
        let until = steps.get(i + 1).map_or(end, |(_, next)| *next);
        eprintln!("{:>8}  {name}", minutes(until - *start));
    }
    eprintln!("{:>8}  total", minutes(end - steps[0].1));
}

fn minutes(d: Duration) -> String {
    let s = d.as_secs();
    format!("{}:{:02}", s / 60, s % 60)
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

/// Builds the servers and the harness in release mode and runs `bench` (default: `matrix`) from
/// the workspace root.
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
    // From the workspace root: `bench targets` writes its tables under `bench-results/`.
    run(Command::new(root().join("target/release/bench"))
        .args(&args)
        .current_dir(root()))
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

/// `cargo test` arguments that compile in the failpoints, so the failpoint tests run.
const FAILPOINTS: [&str; 2] = ["--features", "proactor/failpoints,proactor-echo/failpoints"];

/// The test files that run a `LocalPort` (proactor's, then proactor-echo's), run again as on
/// older kernels (without the receive limit, with each fallback setup of the ring).
const LOCAL_PORT_SUITES: [&str; 21] = [
    "foreign_ids",
    "iocp_failpoints",
    "local_alloc",
    "local_coalesce",
    "local_fairness",
    "local_integrity",
    "local_port",
    "local_ring",
    "local_sends",
    "local_skip",
    "local_smoke",
    "review_fast_paths",
    "review_ids_failpoints",
    "review_local",
    "review_ring",
    "review_ring_live_failpoints",
    "review_old_kernels",
    "review_watch",
    "cli",
    "echo",
    "exhaustion",
];

/// The test files of [`LOCAL_PORT_SUITES`] that use no shared port (`Iocp`): a `LocalPort`'s
/// ring has no submission-polling thread, so under `PROACTOR_SQPOLL` they would only repeat the
/// default pass, and that pass leaves them out.
const LOCAL_PORT_ONLY: [&str; 13] = [
    "local_coalesce",
    "local_fairness",
    "local_port",
    "local_ring",
    "local_sends",
    "local_skip",
    "local_smoke",
    "review_fast_paths",
    "review_local",
    "review_ring",
    "review_ring_live_failpoints",
    "review_old_kernels",
    "review_watch",
];

/// `--test NAME` for every integration test file of the workspace's crates
/// (`crates/*/tests/*.rs`) but those in `skip`, each of which must exist.
fn tests_except(skip: &[&str]) -> Result<Vec<String>> {
    let mut names = Vec::new();
    let crates = fs::read_dir(root().join("crates")).map_err(|e| e.to_string())?;
    for krate in crates {
        let dir = krate.map_err(|e| e.to_string())?.path().join("tests");
        let Ok(files) = fs::read_dir(&dir) else {
            continue; // a crate without integration tests
        };
        for file in files {
            let path = file.map_err(|e| e.to_string())?.path();
            if path.extension().is_some_and(|e| e == "rs")
                && let Some(name) = path.file_stem().and_then(|n| n.to_str())
            {
                names.push(name.to_owned());
            }
        }
    }
    if let Some(missing) = skip.iter().find(|s| !names.iter().any(|n| n == *s)) {
        return Err(format!("no test file {missing}.rs to leave out"));
    }
    names.retain(|n| !skip.contains(&n.as_str()));
    names.sort();
    Ok(names
        .into_iter()
        .flat_map(|n| ["--test".into(), n])
        .collect())
}

/// `cargo test` over the whole workspace with the failpoint tests.
fn workspace_tests() -> Command {
    let mut cmd = cargo();
    cmd.args(["test", "--workspace"]).args(FAILPOINTS);
    cmd
}

/// Prints one pass's totals under `label` and returns them.
fn counted(label: &str, totals: Totals) -> Totals {
    println!(
        "{label}: {} passed, {} failed",
        totals.passed, totals.failed
    );
    totals
}

fn ci() -> Result<()> {
    if cfg!(target_os = "linux") {
        wine::install_missing()?;
    }
    step("cargo fmt --check");
    run(cargo().args(["fmt", "--all", "--check"]))?;
    step("clippy (native)");
    run(cargo().args(CLIPPY))?;
    // The failpoint tests (`tests/failpoints_*.rs`) are part of the suite: the feature only
    // compiles the points in, which do nothing unless a test configures them.
    step("tests (native, with failpoints)");
    let mut native = run_tests(&mut workspace_tests())?;
    if cfg!(target_os = "linux") {
        // The same suite again on the epoll fallback, and on io_uring with a submission-polling
        // kernel thread (without the files that run only a `LocalPort`, which it does not
        // change: every other target and the doc tests). These repeats, and the `LocalPort`
        // ones below, run two seeds per seeded test (`PROACTOR_SEEDS`), the first pass all.
        step("tests (native, with failpoints, PROACTOR_BACKEND=epoll)");
        let epoll = run_tests(
            workspace_tests()
                .env("PROACTOR_BACKEND", "epoll")
                .env("PROACTOR_SEEDS", "2"),
        )?;
        native.add(counted("epoll", epoll));
        step("tests (native, with failpoints, PROACTOR_SQPOLL=50, the shared port's files)");
        let mut sqpoll = run_tests(
            workspace_tests()
                .args(["--lib", "--bins", "--benches"])
                .args(tests_except(&LOCAL_PORT_ONLY)?)
                .env("PROACTOR_SQPOLL", "50")
                .env("PROACTOR_SEEDS", "2"),
        )?;
        sqpoll.add(run_tests(
            workspace_tests().arg("--doc").env("PROACTOR_SQPOLL", "50"),
        )?);
        native.add(counted("sqpoll", sqpoll));
    }
    if cfg!(target_os = "linux") {
        // A `LocalPort`'s ring takes the best setup the kernel accepts, and the multishot
        // receive's byte limit where it has it (6.17+): the port's suites again as on older
        // kernels, without the limit (6.1-6.16), and from `coop_taskrun` (6.0; the ring needs
        // 6.0, which takes it, so `plain` is left to `PROACTOR_RING_SETUP=plain` by hand).
        for (label, setup) in [("6.1-6.16", ""), ("6.0", "coop_taskrun")] {
            step(&format!(
                "LocalPort suites as on Linux {label} (with failpoints, PROACTOR_RING_RECV_LIMIT=off PROACTOR_RING_SETUP={setup})"
            ));
            let mut cmd = cargo();
            cmd.args(["test", "-p", "proactor", "-p", "proactor-echo"])
                .args(FAILPOINTS)
                .args(["--lib", "--bins"]);
            for suite in LOCAL_PORT_SUITES {
                cmd.args(["--test", suite]);
            }
            cmd.env("PROACTOR_RING_RECV_LIMIT", "off")
                .env("PROACTOR_RING_SETUP", setup)
                .env("PROACTOR_SEEDS", "2");
            native.add(counted(label, run_tests(&mut cmd)?));
        }
    }
    step("rustdoc -D warnings");
    run(cargo()
        .args(["doc", "--workspace", "--no-deps"])
        .env("RUSTDOCFLAGS", "-D warnings"))?;
    if cfg!(target_os = "linux") {
        native.add(adversarial::loom()?);
        native.add(adversarial::asan()?);
        adversarial::fuzz(&adversarial::FUZZ_SECONDS)?;
    }
    let mut all = native;
    if cfg!(target_os = "linux") {
        let wine = wine::prepare()?;
        step("clippy (x86_64-pc-windows-gnu)");
        run(wine.cargo().args(CLIPPY))?;
        step("Windows test suite under Wine (with the failpoint tests)");
        let windows = counted("wine", wine.run_tests(&FAILPOINTS.map(String::from))?);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sqpoll_pass_leaves_out_only_the_local_port_files() {
        let args = tests_except(&LOCAL_PORT_ONLY).expect("test files");
        assert!(args.iter().step_by(2).all(|a| a == "--test"));
        let names: Vec<&str> = args.iter().skip(1).step_by(2).map(String::as_str).collect();
        for name in LOCAL_PORT_ONLY {
            assert!(!names.contains(&name), "{name} left in");
            assert!(
                LOCAL_PORT_SUITES.contains(&name),
                "{name} not a LocalPort suite"
            );
        }
        // A shared-port file of each crate stays.
        assert!(names.contains(&"integrity") && names.contains(&"echo"));
        assert!(tests_except(&["no_such_file"]).is_err());
    }

    #[test]
    fn the_files_left_out_use_no_shared_port() {
        for name in LOCAL_PORT_ONLY {
            let path = root()
                .join("crates/proactor/tests")
                .join(format!("{name}.rs"));
            let source = fs::read_to_string(&path).expect("test file");
            assert!(!source.contains("Iocp"), "{name}.rs uses the shared port");
        }
    }
}
