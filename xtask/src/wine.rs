//! The Windows target on Linux: Debian's rustc with `-Zbuild-std`, mingw, and Wine.
//!
//! The recipe (see `ARCHITECTURE.md`): Debian's `rustc-web` 1.96 and `rust-web-src` build std for
//! `x86_64-pc-windows-gnu` (the rustup toolchain has no Windows std and cannot download one);
//! mingw links; Wine 8 runs the test binaries through the runner in `.cargo/config.toml`. Wine 8
//! lacks `bcryptprimitives.dll!ProcessPrng`, which Rust's std imports, so a tiny DLL built here
//! from `windows/process_prng.c` is installed into a private Wine prefix under `target/`.

use std::{
    env, fs,
    path::PathBuf,
    process::{Command, Stdio},
};

use crate::{Result, Totals, root, run, run_tests, step};

const TARGET: &str = "x86_64-pc-windows-gnu";
pub const WINE: &str = "/usr/lib/wine/wine64";
const WINESERVER: &str = "/usr/lib/wine/wineserver";

/// Debian packages, each with a file that shows it is installed.
const PACKAGES: &[(&str, &str)] = &[
    ("rustc-web", "/usr/bin/rustc"),
    ("cargo-web", "/usr/bin/cargo"),
    (
        "rust-web-src",
        "/usr/lib/rustlib/src/rust/library/std/Cargo.toml",
    ),
    ("rust-web-clippy", "/usr/bin/cargo-clippy"),
    ("gcc-mingw-w64-x86-64", "/usr/bin/x86_64-w64-mingw32-gcc"),
    ("wine64", WINE),
];

/// Installs the missing packages through apt when running as root on Debian or Ubuntu;
/// otherwise prints the command to run and fails.
pub fn install_missing() -> Result<()> {
    let missing: Vec<&str> = PACKAGES
        .iter()
        .filter(|(_, file)| !PathBuf::from(file).exists())
        .map(|(pkg, _)| *pkg)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let root_user = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.trim_ascii() == b"0");
    let apt = PathBuf::from("/usr/bin/apt-get").exists();
    if !(root_user && apt) {
        return Err(format!(
            "missing packages for the Windows build; run as root:\n  apt-get update && apt-get install -y {}",
            missing.join(" ")
        ));
    }
    step(&format!("apt-get install {}", missing.join(" ")));
    run(Command::new("apt-get").args(["update", "-q"]))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

/// A ready Wine prefix with its persistent wineserver; stops the server when dropped.
pub struct Wine {
    prefix: PathBuf,
    target_dir: PathBuf,
}

/// Installs what the Windows build needs if missing, creates the prefix if needed, installs
/// the `ProcessPrng` shim, starts the wineserver.
pub fn prepare() -> Result<Wine> {
    install_missing()?;
    let root = root();
    let dir = root.join("target/wine");
    fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let prefix = dir.join("prefix");
    let wine = Wine {
        prefix: prefix.clone(),
        target_dir: root.join("target/windows"),
    };

    step("build the ProcessPrng shim (bcryptprimitives.dll)");
    let dll = dir.join("bcryptprimitives.dll");
    run(Command::new("x86_64-w64-mingw32-gcc")
        .args(["-shared", "-O2", "-o"])
        .arg(&dll)
        .arg(root.join("windows/process_prng.c"))
        .arg("-ladvapi32"))?;

    if !prefix.join("system.reg").exists() {
        step("create the Wine prefix");
        run(wine
            .command(WINE)
            .args(["wineboot", "-i"])
            .stdout(Stdio::null())
            .stderr(Stdio::null()))?;
    }
    let system32 = prefix.join("drive_c/windows/system32");
    fs::copy(&dll, system32.join("bcryptprimitives.dll"))
        .map_err(|e| format!("install shim: {e}"))?;

    // One Unix fd per socket lives in the wineserver: start it with the highest fd limit allowed.
    // A server that wineboot left running would refuse `-p`: stop it first.
    step("start the wineserver");
    let _ = wine
        .command(WINESERVER)
        .arg("-k")
        .stderr(Stdio::null())
        .status();
    run(wine.command("sh").args([
        "-c",
        &format!("ulimit -n \"$(ulimit -Hn)\"; exec {WINESERVER} -p"),
    ]))?;
    Ok(wine)
}

impl Wine {
    /// A command with the Wine environment.
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        cmd.current_dir(root())
            .env("WINEPREFIX", &self.prefix)
            .env("WINEDEBUG", "-all");
        cmd
    }

    /// Debian's cargo for the Windows target, with its own target directory (so the two
    /// compilers never share build artifacts).
    pub fn cargo(&self) -> Command {
        let path = env::var("PATH").unwrap_or_default();
        let mut cmd = self.command("/usr/bin/cargo");
        cmd.env_remove("RUSTUP_TOOLCHAIN")
            .env_remove("CARGO")
            .env("PATH", format!("/usr/bin:{path}"))
            .env("RUSTC", "/usr/bin/rustc")
            .env("RUSTDOC", "/usr/bin/rustdoc")
            .env("RUSTC_BOOTSTRAP", "1")
            .env("CARGO_TARGET_DIR", &self.target_dir)
            .env("CARGO_BUILD_TARGET", TARGET)
            .env("CARGO_UNSTABLE_BUILD_STD", "std,panic_abort");
        cmd
    }

    /// Where the Windows build's artifacts go.
    pub fn target_dir(&self) -> &std::path::Path {
        &self.target_dir
    }

    /// Runs the library's and the echo server's tests for Windows under Wine.
    pub fn run_tests(&self, extra: &[String]) -> Result<Totals> {
        run_tests(
            self.cargo()
                .args(["test", "-p", "proactor", "-p", "proactor-echo"])
                .args(extra),
        )
    }
}

impl Drop for Wine {
    fn drop(&mut self) {
        let _ = self.command(WINESERVER).arg("-k").status();
    }
}
