//! `cargo xtask`: set up a fresh machine, build, test, run the lab and the benchmarks.

mod bench;
mod dist;
mod lab;
mod setup;
mod vm;

use std::{
    path::{Path, PathBuf},
    process::{Command, ExitCode},
};

use anyhow::{bail, Context as _, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    about = "Build, test and set-up tasks for the 521 tracer"
)]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what building and testing need (Debian packages, rust-src, bpf-linker). Idempotent.
    Setup,
    /// Set up if needed, then build the tracer (kernel programs included).
    Build {
        #[arg(long)]
        release: bool,
    },
    /// Set up if needed; fmt check; clippy (host crates and eBPF crate); unit tests; root
    /// integration tests; then the lab on Debian's kernels in VMs (`vm-test`).
    Test {
        /// Only run integration tests whose name contains this (and skip the VMs).
        filter: Option<String>,
        /// Skip the kernel matrix in VMs (quick local runs).
        #[arg(long)]
        no_vm: bool,
    },
    /// Run every 521 scenario in namespaces and print scenario, expected, verdict, seconds (root).
    Lab,
    /// Boot Debian's kernels (5.10, 6.1, 6.12, the newest) in VMs and run the lab in each;
    /// print kernel × scenario; non-zero on any mismatch (root).
    VmTest {
        /// Kernel lines to boot (e.g. 5.10, 6.1, 6.12, 7.3) [default: all four].
        #[arg(long = "kernel")]
        kernels: Vec<String>,
        /// Only scenarios whose name contains this.
        #[arg(long = "scenario")]
        scenarios: Vec<String>,
    },
    /// Inside a vm-test guest: run the lab and write the rows as JSON.
    #[command(hide = true)]
    VmGuest {
        #[arg(long)]
        out: PathBuf,
        #[arg(long = "scenario")]
        scenarios: Vec<String>,
    },
    /// Benchmarks (root): XDP cost, connection-rate overhead, exactness under load, agent CPU
    /// and memory, start-up. Prints a table, or one JSON document with --json.
    Bench {
        #[arg(long)]
        json: bool,
        /// Only these parts: xdp, rate, exactness, agent, startup (comma-separated).
        #[arg(long, value_delimiter = ',')]
        only: Vec<String>,
    },
    /// Set up if needed; build the static (musl) binary, the .deb and the .rpm into
    /// target/dist (with SHA256SUMS).
    Dist,
    /// Set up if needed, build in release mode, and run the tracer with these arguments.
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    let root = workspace_root();
    std::env::set_current_dir(&root)?;
    match cli.command {
        Task::Setup => setup::run(),
        Task::Build { release } => {
            setup::build_only()?;
            build(release)
        }
        Task::Test { filter, no_vm } => {
            setup::run()?;
            test(filter.as_deref())?;
            if filter.is_none() && !no_vm {
                let started = std::time::Instant::now();
                eprintln!("+ vm-test (the lab on Debian's kernels; --no-vm skips it)");
                vm::run(&[], &[])?;
                took(started);
            }
            Ok(())
        }
        Task::Run { args } => {
            setup::build_only()?;
            build(true)?;
            let status = Command::new(root.join("target/release/tracer"))
                .args(&args)
                .status()
                .context("cannot start target/release/tracer")?;
            std::process::exit(status.code().unwrap_or(1));
        }
        Task::Bench { json, only } => {
            setup::run()?;
            build(true)?;
            bench::run(&root.join("target/release/tracer"), json, &only)
        }
        Task::Lab => {
            setup::run()?;
            build(false)?;
            lab::run(&root.join("target/debug/tracer"))
        }
        Task::VmTest { kernels, scenarios } => {
            setup::run()?;
            build(false)?;
            vm::run(&kernels, &scenarios)
        }
        Task::VmGuest { out, scenarios } => vm::guest(&out, &scenarios),
        Task::Dist => {
            setup::run()?;
            dist::run().map(|_| ())
        }
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

/// Runs a test command, echoing its output, and adds its `test result:` lines to `totals`.
/// Says how long a stage took (CI keeps well inside its time limit; this shows where it goes).
fn took(started: std::time::Instant) {
    eprintln!("  (took {:.1} s)", started.elapsed().as_secs_f64());
}

/// A test suite silent this long is hung: it is killed, so CI fails with the test's name
/// instead of running out of time.
const SILENT_LIMIT: std::time::Duration = std::time::Duration::from_secs(600);

fn run_tests(cmd: &mut Command, totals: &mut (u64, u64)) -> Result<()> {
    use std::io::{BufRead as _, BufReader};
    use std::os::unix::process::CommandExt as _;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;
    eprintln!("+ {}", show(cmd));
    let started = std::time::Instant::now();
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .process_group(0)
        .spawn()
        .with_context(|| format!("cannot run {}", cmd.get_program().to_string_lossy()))?;
    let stdout = child.stdout.take().expect("piped");
    // Seconds since `started` at the last line; a watchdog kills the whole process group
    // (cargo, the test binary, the tracers it started) after SILENT_LIMIT without one. It
    // starts with the first line: compiling (on stderr) before it may take long.
    let last_line = Arc::new(AtomicU64::new(u64::MAX));
    let done = Arc::new(AtomicBool::new(false));
    let group = child.id() as i32;
    let watchdog = {
        let (last_line, done) = (last_line.clone(), done.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                std::thread::sleep(std::time::Duration::from_secs(1));
                let last = last_line.load(Ordering::Relaxed);
                if last == u64::MAX {
                    continue;
                }
                let silent = started.elapsed().as_secs().saturating_sub(last);
                if silent >= SILENT_LIMIT.as_secs() {
                    eprintln!(
                        "xtask: no test output for {silent} s: the test after the last one \
                         listed hangs; killing it"
                    );
                    // SAFETY: kill(2) of the process group this function started.
                    unsafe { libc::kill(-group, libc::SIGKILL) };
                    return;
                }
            }
        })
    };
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        last_line.store(started.elapsed().as_secs(), Ordering::Relaxed);
        println!("{line}");
        if let Some(rest) = line.strip_prefix("test result: ") {
            let num = |word: &str| {
                rest.split(';')
                    .find_map(|p| {
                        p.trim().strip_suffix(word).map(|n| {
                            n.trim()
                                .trim_start_matches("ok. ")
                                .trim_start_matches("FAILED. ")
                                .to_string()
                        })
                    })
                    .and_then(|n| n.parse::<u64>().ok())
                    .unwrap_or(0)
            };
            totals.0 += num(" passed");
            totals.1 += num(" failed");
        }
    }
    let status = child.wait()?;
    done.store(true, Ordering::Relaxed);
    let _ = watchdog.join();
    took(started);
    if !status.success() {
        println!("tests: {} passed, {} failed", totals.0, totals.1.max(1));
        bail!("`{}` failed ({status})", show(cmd));
    }
    Ok(())
}

/// Runs a command, echoing it; fails with its exit status.
pub fn run_cmd(cmd: &mut Command) -> Result<()> {
    eprintln!("+ {}", show(cmd));
    let started = std::time::Instant::now();
    let status = cmd
        .status()
        .with_context(|| format!("cannot run {}", cmd.get_program().to_string_lossy()))?;
    took(started);
    if !status.success() {
        bail!("`{}` failed ({status})", show(cmd));
    }
    Ok(())
}

fn show(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

fn build(release: bool) -> Result<()> {
    let mut cmd = cargo();
    cmd.args(["build", "--package", "tracer"]);
    if release {
        cmd.arg("--release");
    }
    run_cmd(&mut cmd)
}

fn test(filter: Option<&str>) -> Result<()> {
    run_cmd(cargo().args(["fmt", "--all", "--", "--check"]))?;
    // Host crates (the eBPF object is still built by tracer/build.rs and embedded).
    run_cmd(cargo().args([
        "clippy",
        "--workspace",
        "--exclude",
        "tracer-ebpf",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    // The eBPF crate, for its real target. panic=abort avoids a second panic handler.
    run_cmd(
        Command::new("rustup")
            .args([
                "run",
                "nightly",
                "cargo",
                "clippy",
                "--package",
                "tracer-ebpf",
                "--target",
                "bpfel-unknown-none",
                "-Z",
                "build-std=core",
                "--release",
                "--",
                "-D",
                "warnings",
            ])
            .env("CARGO_TARGET_DIR", "target/ebpf-clippy")
            .env_remove("RUSTUP_TOOLCHAIN")
            .env_remove("CARGO"),
    )?;
    // Unit tests: pure logic, no root needed.
    let mut totals = (0, 0);
    run_tests(
        cargo().args([
            "test",
            "--workspace",
            "--exclude",
            "tracer-ebpf",
            "--exclude",
            "integration-tests",
        ]),
        &mut totals,
    )?;
    build(false)?;
    // The packages, for the tests that install them.
    let started = std::time::Instant::now();
    eprintln!("+ dist (static binary, .deb, .rpm)");
    let dist = dist::run()?;
    took(started);
    let tracer = workspace_root().join("target/debug/tracer");
    let mut cmd = cargo();
    cmd.args(["test", "--package", "integration-tests", "--"])
        .arg("--test-threads=1")
        .env("TRACER_BIN", &tracer)
        .env("TRACER_DIST", &dist);
    if let Some(f) = filter {
        cmd.arg(f);
    }
    run_tests(&mut cmd, &mut totals)?;
    if filter.is_none() {
        // As shipped: the tracer confined as the unit and the DaemonSet confine it (their
        // capabilities read from deploy/ by the tests), on what confinement can hide —
        // containers and their processes, other namespaces' listeners, the TLS check.
        for (form, suites) in CONFINED_SUITES {
            let mut cmd = cargo();
            cmd.args(["test", "--package", "integration-tests"]);
            for suite in *suites {
                cmd.args(["--test", suite]);
            }
            cmd.args(["--", "--test-threads=1"])
                .env("TRACER_BIN", &tracer)
                .env("TRACER_CONFINE", form);
            run_tests(&mut cmd, &mut totals)?;
        }
    }
    println!("tests: {} passed, {} failed", totals.0, totals.1);
    Ok(())
}

/// The shipped forms' confinement (`TRACER_CONFINE`) and the suites run under each.
const CONFINED_SUITES: &[(&str, &[&str])] = &[
    (
        "unit",
        &["containers", "docker", "journal", "tls", "lost_replies"],
    ),
    ("daemonset", &["containers", "docker"]),
];
