//! The Linux suites that try to break proactor rather than use it (issue 13): the loom model of
//! the lock-free handshakes, AddressSanitizer and LeakSanitizer over the native suite, and a
//! short run of the fuzz targets, each with its own target directory (its flags would otherwise
//! rebuild the main one); and, for `cargo xtask failpoints`, the crate's suite with the failpoint
//! tests on every backend (`ci` runs them within its native test steps).

use std::process::Command;

use crate::{Result, Totals, cargo, root, run, run_tests, step};

/// The backends a Linux test runs on: io_uring, the epoll fallback, io_uring with SQPOLL.
pub const BACKENDS: [(&str, &str, &str); 3] = [
    ("io_uring", "PROACTOR_BACKEND", "io_uring"),
    ("epoll", "PROACTOR_BACKEND", "epoll"),
    ("sqpoll", "PROACTOR_SQPOLL", "50"),
];

/// The native target, named so that `RUSTFLAGS` reach only the target's crates, never the
/// build scripts and proc macros.
const HOST: &str = "x86_64-unknown-linux-gnu";

/// How long each fuzz target runs in `ci` on each backend, in seconds: `ops` (the shared
/// `Iocp`) and `local_ops` (`LocalPort`, whose io_uring engine is its own ring).
pub const FUZZ_SECONDS: [(&str, &str, u32); 4] = [
    ("ops", "io_uring", 20),
    ("local_ops", "io_uring", 20),
    ("ops", "epoll", 10),
    ("local_ops", "epoll", 15),
];

/// The fuzz targets, with the libFuzzer options each runs with: `local_ops` decodes a step
/// from one to four bytes, so its inputs start at their full length (libFuzzer would
/// otherwise grow them from a few bytes, a step or two, over the first minutes).
const FUZZ_TARGETS: [(&str, &[&str]); 2] = [
    ("ops", &[]),
    ("local_ops", &["-len_control=0", "-max_len=400"]),
];

/// `cargo test -p proactor --features failpoints` on each backend: every test of the crate,
/// with the tests that hold a thread inside each window where a record changes hands.
pub fn failpoints() -> Result<Totals> {
    let mut all = Totals::default();
    for (label, var, value) in BACKENDS {
        step(&format!("failpoint tests ({label})"));
        let totals = run_tests(
            cargo()
                .args(["test", "-p", "proactor", "--features", "failpoints"])
                .env(var, value),
        )?;
        println!("failpoints, {label}: {} passed", totals.passed);
        all.add(totals);
    }
    Ok(all)
}

/// The loom model check of `crates/proactor/src/handshake.rs` (release: loom explores
/// thousands of interleavings).
pub fn loom() -> Result<Totals> {
    step("loom model check of the handshakes (--cfg loom)");
    let totals = run_tests(
        cargo()
            .args(["test", "-p", "proactor", "--lib", "--release", "handshake"])
            .env("RUSTFLAGS", "--cfg loom")
            .env("CARGO_TARGET_DIR", root().join("target/loom")),
    )?;
    if totals.passed == 0 {
        return Err("the loom step ran no model".into());
    }
    Ok(totals)
}

/// The tests AddressSanitizer runs on epoll: the suites written for it, the conformance
/// suites, and the `LocalPort` suites that run its engine over a shared port (`local/shared.rs`,
/// which io_uring's run never reaches: there a `LocalPort` is a ring). The driver gives the
/// kernel no memory to hold (readiness, then a plain call), so the whole suite, which io_uring's
/// run covers, would mostly repeat that run (CI time). `large_write` for the epoll driver's
/// write loop past 2 GiB.
const ASAN_EPOLL_TESTS: [&str; 9] = [
    "integrity",
    "large_write",
    "local_integrity",
    "local_port",
    "review_local",
    "epoll_integrity",
    "failpoints_epoll",
    "review_epoll",
    "review_epoll_failpoints",
];

/// The native suite (with the failpoint tests) under AddressSanitizer, whose LeakSanitizer
/// fails a test binary that leaks: all of it on io_uring, the epoll suites on epoll
/// ([`ASAN_EPOLL_TESTS`]), two seeds per seeded test (`PROACTOR_SEEDS`). Library and
/// integration tests; doc tests are not built with the sanitizer.
pub fn asan() -> Result<Totals> {
    let mut all = Totals::default();
    for (label, var, value) in &BACKENDS[..2] {
        step(&format!("AddressSanitizer + LeakSanitizer ({label})"));
        let mut cmd = cargo();
        cmd.args(["test", "-p", "proactor", "--features", "failpoints"])
            .args(["--target", HOST, "--lib"]);
        if *label == "epoll" {
            for test in ASAN_EPOLL_TESTS {
                cmd.args(["--test", test]);
            }
        } else {
            cmd.arg("--tests");
        }
        let totals = run_tests(
            cmd.env("PROACTOR_SEEDS", "2")
                .env("RUSTC_BOOTSTRAP", "1")
                .env("RUSTFLAGS", "-Zsanitizer=address")
                .env("ASAN_OPTIONS", "detect_leaks=1")
                .env("CARGO_TARGET_DIR", root().join("target/asan"))
                .env(var, value),
        )?;
        println!("asan, {label}: {} passed", totals.passed);
        all.add(totals);
    }
    Ok(all)
}

/// Installs cargo-fuzz from crates.io if `cargo fuzz` is missing.
fn install_cargo_fuzz() -> Result<()> {
    let present = cargo()
        .args(["fuzz", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if present {
        return Ok(());
    }
    step("cargo install cargo-fuzz");
    run(cargo().args(["install", "cargo-fuzz", "--locked"]))
}

/// `cargo fuzz run TARGET` from `crates/proactor`: each fuzz target given, under
/// AddressSanitizer, for `seconds` on its backend, starting from the kept corpus and the
/// seeds.
pub fn fuzz(runs: &[(&str, &str, u32)]) -> Result<()> {
    install_cargo_fuzz()?;
    for (target, label, seconds) in runs {
        let (_, var, value) = BACKENDS
            .iter()
            .find(|(name, ..)| name == label)
            .ok_or_else(|| format!("no backend {label}: io_uring, epoll or sqpoll"))?;
        let (_, options) = FUZZ_TARGETS
            .iter()
            .find(|(name, _)| name == target)
            .ok_or_else(|| format!("no fuzz target {target}: ops or local_ops"))?;
        let corpus = format!("fuzz/corpus/{target}");
        let _ = std::fs::create_dir_all(root().join("crates/proactor").join(&corpus));
        step(&format!("fuzz target {target} ({label}, {seconds} s)"));
        run(fuzz_command()
            .arg("run")
            .arg("--target-dir")
            .arg(root().join("target/fuzz"))
            .args([target, corpus.as_str(), "fuzz/seeds", "--", "-timeout=60"])
            .args(options.iter())
            .arg(format!("-max_total_time={seconds}"))
            .env(var, value))?;
    }
    Ok(())
}

/// `cargo fuzz` in `crates/proactor` (its sanitizer flags need `RUSTC_BOOTSTRAP` on stable).
fn fuzz_command() -> Command {
    let crate_dir = root().join("crates/proactor");
    let mut cmd = cargo();
    cmd.current_dir(crate_dir)
        .arg("fuzz")
        .env("RUSTC_BOOTSTRAP", "1");
    cmd
}

/// `cargo xtask fuzz [seconds] [backend] [target]`: a longer run (default 600 s of `ops` on
/// io_uring).
pub fn fuzz_command_line(args: &[String]) -> Result<()> {
    let seconds = match args.first() {
        None => 600,
        Some(s) => s
            .parse()
            .map_err(|_| format!("fuzz: {s}: expected seconds"))?,
    };
    let backend = args.get(1).map_or("io_uring", String::as_str);
    let target = args.get(2).map_or("ops", String::as_str);
    fuzz(&[(target, backend, seconds)])
}
