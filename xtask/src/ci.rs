//! `cargo xtask ci`: every check the project gates on, in order, stopping at the first
//! failure.
//!
//! | step      | what it runs                                                          |
//! |-----------|-----------------------------------------------------------------------|
//! | `install` | rustfmt + clippy (stable), the nightly toolchain, cargo-fuzz, nm/cc/c++ |
//! | `fmt`     | `cargo fmt --all -- --check` (also nostd-proof, guest-kernel and fuzz targets) |
//! | `clippy`  | `-D warnings` over the feature sets in [`CLIPPY`], plus nostd-proof and guest-kernel |
//! | `doc`     | `RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --all-features` |
//! | `test`    | `cargo test --workspace --all-features`, then the heavy tiers of `virtio-core`, `virtio-net` and `virtio-sdk-tests` in release with `--include-ignored` |
//! | `nostd`   | builds and runs `nostd-proof/`, checks PASS, `nm -u` empty, static ELF; builds `examples/guest-kernel` (all four driver crates without std), same checks |
//! | `package` | `cargo package --no-verify --allow-dirty` of the crates in [`PUBLISHABLE`] |
//! | `fuzz`    | every `cargo +nightly fuzz list` target for `$FUZZ_SECONDS` s (default 20) |
//! | `e2e`     | the end-to-end suites in [`E2E_SUITES`] (`cargo xtask e2e SUITE`): QEMU guests, real peers; then the vmm-glue bzImage test (needs their Debian kernel) |
//!
//! A tool that is missing and cannot be installed fails the `install` step; nothing is
//! skipped silently. The last line is `ci steps: N passed, M failed`.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::cmd::{self, cargo};

/// Shared inputs of the steps.
struct Ctx {
    root: PathBuf,
}

type StepFn = fn(&Ctx) -> Result<(), String>;

/// The steps, in the order they run: name, one-line description, body.
const STEPS: &[(&str, &str, StepFn)] = &[
    ("install", "toolchains and tools", install),
    ("fmt", "rustfmt --check", fmt),
    ("clippy", "clippy -D warnings over feature sets", clippy),
    ("doc", "rustdoc -D warnings", doc),
    ("test", "unit, integration and heavy test tiers", test),
    (
        "nostd",
        "freestanding no_std binary: build, run, inspect",
        nostd,
    ),
    (
        "package",
        "cargo package of the publishable crates",
        package,
    ),
    ("fuzz", "fuzz smoke run of every target", fuzz),
    (
        "e2e",
        "end-to-end suites against real peers (QEMU's devices in TCG guests)",
        e2e,
    ),
];

/// The end-to-end suites the full test command runs (each prints one PASS/FAIL line per cell).
///
/// `vmm` (nested Linux under mini-vmm, about 17–30 minutes) retries a cell (up to 5 times) when the nested environment (QEMU
/// TCG's emulation of SVM) fails under it, as `xtask/src/vmm_e2e.rs` explains; failed checks are never retried.
const E2E_SUITES: &[&str] = &["vfio-smoke", "vfio", "guest", "vmm"];

fn e2e(ctx: &Ctx) -> Result<(), String> {
    // Every suite runs even when an earlier one fails, so one run shows every failing cell.
    let failed: Vec<String> = E2E_SUITES
        .iter()
        .filter_map(|suite| {
            crate::e2e::run(&ctx.root, &[(*suite).to_string()])
                .err()
                .map(|e| format!("{suite}: {e}"))
        })
        .collect();
    // The suites built the Debian guest kernel under target/guest/; the bzImage loader test needs it.
    let bzimage = cmd::run(&mut cargo(&[
        "test",
        "-p",
        "vmm-glue",
        "--test",
        "boot_acpi",
        "--",
        "--ignored",
    ]));
    let failed: Vec<String> = failed
        .into_iter()
        .chain(bzimage.err().map(|e| format!("vmm-glue bzImage test: {e}")))
        .collect();
    if failed.is_empty() {
        Ok(())
    } else {
        Err(format!("e2e suites failed: {}", failed.join("; ")))
    }
}

/// Clippy invocations (each followed by `-- -D warnings`). The per-crate lines check
/// the `no_std` builds and each `virtio-core` feature on its own (library target only:
/// tests may need `test-utils`).
const CLIPPY: &[&[&str]] = &[
    &["--workspace", "--all-targets"],
    &["--workspace", "--all-targets", "--all-features"],
    &["-p", "virtio-core", "--no-default-features"],
    &[
        "-p",
        "virtio-core",
        "--no-default-features",
        "--features",
        "alloc",
    ],
    &[
        "-p",
        "virtio-core",
        "--no-default-features",
        "--features",
        "std",
    ],
    &[
        "-p",
        "virtio-core",
        "--no-default-features",
        "--features",
        "vm-memory",
    ],
    &[
        "-p",
        "virtio-core",
        "--no-default-features",
        "--features",
        "test-utils",
    ],
    &["-p", "virtio-mmio", "--no-default-features"],
    &["-p", "virtio-pci", "--no-default-features"],
    &["-p", "virtio-net", "--no-default-features"],
];

/// Crates meant for crates.io (every other member has `publish = false`).
const PUBLISHABLE: &[&str] = &[
    "virtio-core",
    "virtio-mmio",
    "virtio-pci",
    "virtio-net",
    "vmm-glue",
];

/// Crates whose `#[ignore]`d tests are the heavy tiers, run in release mode.
const HEAVY_TEST_CRATES: &[&str] = &["virtio-core", "virtio-net", "virtio-sdk-tests"];

/// Default seconds per fuzz target; override with `FUZZ_SECONDS`.
const DEFAULT_FUZZ_SECONDS: u64 = 20;

/// Runs all steps, or the ones named in `args`.
pub(crate) fn run(root: &Path, args: &[String]) -> Result<(), String> {
    if args.iter().any(|a| a == "--list") {
        for (name, what, _) in STEPS {
            println!("{name:<8} {what}");
        }
        return Ok(());
    }
    for a in args {
        if !STEPS.iter().any(|(name, _, _)| name == a) {
            return Err(format!(
                "unknown step `{a}` (steps: {})",
                STEPS.iter().map(|s| s.0).collect::<Vec<_>>().join(", ")
            ));
        }
    }
    let selected: Vec<&(&str, &str, StepFn)> = STEPS
        .iter()
        .filter(|(name, _, _)| args.is_empty() || args.iter().any(|a| a == name))
        .collect();
    if !args.is_empty() {
        println!(
            "xtask ci: running only the selected steps: {}",
            selected.iter().map(|s| s.0).collect::<Vec<_>>().join(", ")
        );
    }

    let ctx = Ctx {
        root: root.to_path_buf(),
    };
    let start = Instant::now();
    let total = selected.len();
    let mut results: Vec<(&str, Outcome, Duration)> = Vec::new();
    let mut failed = false;
    for (i, (name, what, body)) in selected.iter().enumerate() {
        if failed {
            results.push((name, Outcome::NotRun, Duration::ZERO));
            continue;
        }
        println!();
        println!("==> [{}/{total}] {name}: {what}", i + 1);
        let t = Instant::now();
        let outcome = body(&ctx);
        let elapsed = t.elapsed();
        match outcome {
            Ok(()) => {
                println!("<== {name}: ok ({})", secs(elapsed));
                results.push((name, Outcome::Passed, elapsed));
            }
            Err(e) => {
                println!("<== {name}: FAILED ({}): {e}", secs(elapsed));
                results.push((name, Outcome::Failed, elapsed));
                failed = true;
            }
        }
    }

    let passed = results.iter().filter(|r| r.1 == Outcome::Passed).count();
    let failures: Vec<&str> = results
        .iter()
        .filter(|r| r.1 == Outcome::Failed)
        .map(|r| r.0)
        .collect();
    println!();
    println!("step      result   time");
    for (name, outcome, elapsed) in &results {
        let (verdict, time) = match outcome {
            Outcome::Passed => ("ok", secs(*elapsed)),
            Outcome::Failed => ("FAILED", secs(*elapsed)),
            Outcome::NotRun => ("not run", "-".into()),
        };
        println!("{name:<9} {verdict:<8} {time}");
    }
    println!("total     {:<8} {}", "", secs(start.elapsed()));
    println!("ci steps: {passed} passed, {} failed", failures.len());
    if failures.is_empty() {
        Ok(())
    } else {
        Err(format!("failed step: {}", failures.join(", ")))
    }
}

/// How a step ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Passed,
    Failed,
    /// An earlier step failed.
    NotRun,
}

fn secs(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

// ---------------------------------------------------------------------------------------
// install

fn install(_: &Ctx) -> Result<(), String> {
    if !cmd::succeeds(Command::new("rustup").arg("--version")) {
        return Err("rustup is not available; it is needed to install toolchain components".into());
    }

    // rustfmt and clippy on the stable toolchain.
    let have_components = || {
        cmd::succeeds(&mut cargo(&["fmt", "--version"]))
            && cmd::succeeds(&mut cargo(&["clippy", "--version"]))
    };
    if have_components() {
        println!("rustfmt and clippy: present");
    } else {
        cmd::run(Command::new("rustup").args([
            "component",
            "add",
            "rustfmt",
            "clippy",
            "--toolchain",
            "stable",
        ]))?;
        if !have_components() {
            return Err("rustfmt/clippy still unavailable after `rustup component add`".into());
        }
    }

    // The nightly toolchain (cargo-fuzz and sanitizers need it).
    let have_nightly = || cmd::succeeds(&mut cargo(&["+nightly", "--version"]));
    if have_nightly() {
        println!("nightly toolchain: present");
    } else {
        cmd::run(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
        ]))?;
        if !have_nightly() {
            return Err("nightly toolchain still unavailable after installing it".into());
        }
    }

    // cargo-fuzz.
    let have_fuzz = || cmd::succeeds(&mut cargo(&["fuzz", "--version"]));
    if have_fuzz() {
        println!("cargo-fuzz: present");
    } else {
        cmd::run(&mut cargo(&["install", "cargo-fuzz", "--locked"]))?;
        if !have_fuzz() {
            return Err("`cargo fuzz` still unavailable after `cargo install cargo-fuzz`".into());
        }
    }

    // System tools and libraries, each with the check that proves it is there and the Debian package that
    // provides it: nm (nostd step), the C and C++ compilers (libFuzzer is built from source), pkg-config with
    // libslirp and glib (virtio-net's `slirp` feature, built by `--all-features`), and ip/ping (the real Linux
    // peer test through a network namespace).
    let checks: &[(&str, &[&str], &str)] = &[
        ("nm", &["nm", "--version"], "binutils"),
        ("cc", &["cc", "--version"], "gcc"),
        ("c++", &["c++", "--version"], "g++"),
        ("pkg-config", &["pkg-config", "--version"], "pkg-config"),
        (
            "libslirp",
            &["pkg-config", "--exists", "slirp"],
            "libslirp-dev",
        ),
        (
            "glib",
            &["pkg-config", "--exists", "glib-2.0"],
            "libglib2.0-dev",
        ),
        ("ip", &["ip", "-V"], "iproute2"),
        ("ping", &["ping", "-V"], "iputils-ping"),
    ];
    let present = |argv: &[&str]| {
        argv.split_first()
            .is_some_and(|(program, args)| cmd::succeeds(Command::new(program).args(args)))
    };
    let missing: Vec<(&str, &[&str], &str)> = checks
        .iter()
        .copied()
        .filter(|(_, argv, _)| !present(argv))
        .collect();
    if missing.is_empty() {
        println!("system tools and libraries: present");
        return Ok(());
    }
    let packages: Vec<&str> = missing.iter().map(|m| m.2).collect();
    println!(
        "missing: {:?}; installing {packages:?} with apt-get",
        missing.iter().map(|m| m.0).collect::<Vec<_>>()
    );
    apt_get(&["update"])?;
    let mut install = vec!["install", "-y", "--no-install-recommends"];
    install.extend(&packages);
    apt_get(&install)?;
    for (what, argv, package) in missing {
        if !present(argv) {
            return Err(format!("`{what}` still missing after installing {package}"));
        }
    }
    Ok(())
}

/// `apt-get ARGS`, through `sudo -n` unless already root.
fn apt_get(args: &[&str]) -> Result<(), String> {
    let root = cmd::output(Command::new("id").arg("-u")).is_ok_and(|uid| uid.trim() == "0");
    let mut c = if root {
        Command::new("apt-get")
    } else {
        let mut c = Command::new("sudo");
        c.args(["-n", "apt-get"]);
        c
    };
    c.args(args).env("DEBIAN_FRONTEND", "noninteractive");
    cmd::run(&mut c)
}

// ---------------------------------------------------------------------------------------
// fmt

fn fmt(ctx: &Ctx) -> Result<(), String> {
    cmd::run(&mut cargo(&["fmt", "--all", "--", "--check"]))?;
    cmd::run(&mut cargo(&[
        "fmt",
        "--manifest-path",
        "nostd-proof/Cargo.toml",
        "--",
        "--check",
    ]))?;
    cmd::run(&mut cargo(&[
        "fmt",
        "--manifest-path",
        "examples/guest-kernel/Cargo.toml",
        "--",
        "--check",
    ]))?;
    // The fuzz crate has no library target, so `cargo fmt` cannot load it while it has no
    // fuzz targets; check the target files directly.
    let targets = fuzz_target_files(&ctx.root)?;
    if targets.is_empty() {
        println!("fuzz/fuzz_targets: no files to check");
        return Ok(());
    }
    let mut c = Command::new("rustfmt");
    c.args(["--check", "--edition", "2021"]).args(&targets);
    cmd::run(&mut c)
}

fn fuzz_target_files(root: &Path) -> Result<Vec<PathBuf>, String> {
    let dir = root.join("fuzz").join("fuzz_targets");
    if !dir.exists() {
        return Ok(Vec::new());
    }
    let entries = fs::read_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut files = Vec::new();
    for entry in entries {
        let path = entry.map_err(|e| format!("{}: {e}", dir.display()))?.path();
        if path.extension().is_some_and(|x| x == "rs") {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

// ---------------------------------------------------------------------------------------
// clippy, doc, test

fn clippy(ctx: &Ctx) -> Result<(), String> {
    for args in CLIPPY {
        let mut c = cargo(&["clippy"]);
        c.args(*args).args(["--", "-D", "warnings"]);
        cmd::run(&mut c)?;
    }
    let target_dir = nostd_target_dir(ctx)?;
    let mut c = cargo(&[
        "clippy",
        "--release",
        "--manifest-path",
        "nostd-proof/Cargo.toml",
        "--target-dir",
    ]);
    c.arg(&target_dir).args(["--", "-D", "warnings"]);
    cmd::run(&mut c)?;
    let mut c = cargo(&[
        "clippy",
        "--release",
        "--manifest-path",
        "examples/guest-kernel/Cargo.toml",
        "--target-dir",
    ]);
    c.arg(crate::guest_e2e::kernel_target_dir()?)
        .args(["--", "-D", "warnings"]);
    cmd::run(&mut c)
}

fn doc(_: &Ctx) -> Result<(), String> {
    let mut c = cargo(&["doc", "--workspace", "--no-deps", "--all-features"]);
    c.env("RUSTDOCFLAGS", "-D warnings");
    cmd::run(&mut c)
}

fn test(_: &Ctx) -> Result<(), String> {
    cmd::run(&mut cargo(&["test", "--workspace", "--all-features"]))?;
    // Heavy tiers are `#[ignore]`d so the debug run above stays fast; run everything
    // of that crate again, optimised, including them.
    let mut args = vec!["test", "--release", "--all-features"];
    for krate in HEAVY_TEST_CRATES {
        args.extend(["-p", krate]);
    }
    args.extend(["--", "--include-ignored"]);
    cmd::run(&mut cargo(&args))
}

// ---------------------------------------------------------------------------------------
// nostd

/// `nostd-proof` is outside the workspace; keep its artifacts under our target dir.
fn nostd_target_dir(_: &Ctx) -> Result<PathBuf, String> {
    let target = bench_report::target_dir().map_err(|e| e.to_string())?;
    Ok(target.join("nostd-proof"))
}

fn nostd(ctx: &Ctx) -> Result<(), String> {
    let target_dir = nostd_target_dir(ctx)?;
    let mut build = cargo(&[
        "build",
        "--release",
        "--manifest-path",
        "nostd-proof/Cargo.toml",
        "--target-dir",
    ]);
    build.arg(&target_dir);
    cmd::run(&mut build)?;
    let bin = target_dir.join("release").join("nostd-proof");

    // 1. It runs and says PASS.
    let line = cmd::show(&Command::new(&bin));
    println!("$ {line}");
    let out = Command::new(&bin)
        .output()
        .map_err(|e| format!("cannot run {}: {e}", bin.display()))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    print!("{stdout}");
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    if out.status.code() != Some(0) {
        return Err(format!("nostd-proof exited with {}", out.status));
    }
    if !stdout.lines().any(|l| l == "nostd-proof: PASS") {
        return Err("nostd-proof exited 0 but did not print `nostd-proof: PASS`".into());
    }

    // 2. Nothing is left for a dynamic linker or libc to provide.
    let mut nm = Command::new("nm");
    nm.arg("-u").arg(&bin);
    let undefined = cmd::output(&mut nm)?;
    if !undefined.trim().is_empty() {
        return Err(format!("nostd-proof has undefined symbols:\n{undefined}"));
    }
    println!("nm -u: no undefined symbols");

    // 3. A static executable: no interpreter, no dynamic section.
    let image = fs::read(&bin).map_err(|e| format!("{}: {e}", bin.display()))?;
    crate::elf::check_static_executable(&image).map_err(|e| format!("{}: {e}", bin.display()))?;
    println!(
        "{}: static ELF executable, {} bytes",
        bin.display(),
        image.len()
    );
    nostd_guest_kernel()
}

/// Builds the bare-metal guest kernel, which links virtio-core, virtio-mmio, virtio-pci and virtio-net without
/// `std` (a `no_std` break in any of them fails here), and checks it is a self-contained static image. It runs in
/// `cargo xtask e2e guest`.
fn nostd_guest_kernel() -> Result<(), String> {
    let target_dir = crate::guest_e2e::kernel_target_dir()?;
    let mut build = cargo(&[
        "build",
        "--release",
        "--manifest-path",
        "examples/guest-kernel/Cargo.toml",
        "--target-dir",
    ]);
    build.arg(&target_dir);
    cmd::run(&mut build)?;
    let bin = target_dir.join("release").join("guest-kernel");
    let mut nm = Command::new("nm");
    nm.arg("-u").arg(&bin);
    let undefined = cmd::output(&mut nm)?;
    if !undefined.trim().is_empty() {
        return Err(format!("guest-kernel has undefined symbols:\n{undefined}"));
    }
    let image = fs::read(&bin).map_err(|e| format!("{}: {e}", bin.display()))?;
    crate::elf::check_static_executable(&image).map_err(|e| format!("{}: {e}", bin.display()))?;
    println!(
        "{}: static ELF executable, {} bytes, no undefined symbols (virtio-core, virtio-mmio, virtio-pci, \
         virtio-net linked without std)",
        bin.display(),
        image.len()
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------
// package

fn package(_: &Ctx) -> Result<(), String> {
    // Listing the crates with `-p` packages them together, so intra-workspace
    // dependencies (virtio-mmio -> virtio-core, ...) resolve against each other's
    // freshly packaged versions instead of crates.io.
    let mut c = cargo(&["package", "--no-verify", "--allow-dirty"]);
    for krate in PUBLISHABLE {
        c.args(["-p", krate]);
    }
    cmd::run(&mut c)
}

// ---------------------------------------------------------------------------------------
// fuzz

fn fuzz(ctx: &Ctx) -> Result<(), String> {
    let seconds = match std::env::var("FUZZ_SECONDS") {
        Ok(s) => s
            .trim()
            .parse::<u64>()
            .ok()
            .filter(|&n| n > 0)
            .ok_or_else(|| format!("FUZZ_SECONDS={s:?} is not a positive integer"))?,
        Err(_) => DEFAULT_FUZZ_SECONDS,
    };
    let dir = ctx.root.join("fuzz");
    let mut list = cargo(&["+nightly", "fuzz", "list"]);
    list.current_dir(&dir);
    let listing = cmd::output(&mut list)?;
    let targets: Vec<&str> = listing
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    if targets.is_empty() {
        return Err(
            "NO FUZZ TARGETS: `cargo +nightly fuzz list` in fuzz/ printed nothing; add \
             fuzz/fuzz_targets/<name>.rs and a [[bin]] entry in fuzz/Cargo.toml"
                .into(),
        );
    }
    println!(
        "fuzz targets ({}), {seconds}s each: {}",
        targets.len(),
        targets.join(", ")
    );
    let mut summary = String::new();
    for target in &targets {
        let t = Instant::now();
        let mut run = cargo(&["+nightly", "fuzz", "run", target, "--"]);
        run.arg(format!("-max_total_time={seconds}"))
            .current_dir(&dir);
        cmd::run(&mut run)?;
        let _ = writeln!(summary, "  {target}: ok ({})", secs(t.elapsed()));
    }
    print!("{summary}");
    Ok(())
}
