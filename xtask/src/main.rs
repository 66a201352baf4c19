//! `cargo xtask`: set up a fresh machine, build, test, run the lab and the benchmarks.

mod bench;
mod dist;
mod lab;
mod setup;
mod test;
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
    Lab {
        /// Only scenarios whose name contains this (repeatable).
        #[arg(long = "scenario")]
        scenarios: Vec<String>,
    },
    /// Boot Debian's kernels (5.10, 6.1, 6.12, the newest) in VMs and run the lab in each;
    /// print kernel × scenario; non-zero on any mismatch (root).
    VmTest {
        /// Kernel lines to boot (e.g. 5.10, 6.1, 6.12, 7.3) [default: all four].
        #[arg(long = "kernel")]
        kernels: Vec<String>,
        /// Only scenarios whose name contains this.
        #[arg(long = "scenario")]
        scenarios: Vec<String>,
        /// VMs at once.
        #[arg(long, default_value_t = vm::Plan::ALONE.parallel)]
        parallel: usize,
        /// VMs per kernel, each running its part of the scenarios.
        #[arg(long, default_value_t = vm::Plan::ALONE.shards)]
        shards: usize,
    },
    /// Inside a vm-test guest: run the lab and write the rows as JSON.
    #[command(hide = true)]
    VmGuest {
        #[arg(long)]
        out: PathBuf,
        #[arg(long = "scenario")]
        scenarios: Vec<String>,
        /// This guest's part of the scenarios: I/N.
        #[arg(long, default_value = "0/1")]
        shard: lab::Shard,
    },
    /// Benchmarks (root): XDP cost, connection-rate overhead, exactness under load, agent CPU
    /// and memory, start-up. Prints a table, or one JSON document with --json.
    Bench {
        #[arg(long)]
        json: bool,
        /// Only these parts: xdp, tc, rate, rate-container, exactness, agent, startup,
        /// hooks, bulk, bulk-download (comma-separated).
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
        Task::Test { filter, no_vm } => test::run(filter.as_deref(), !no_vm),
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
        Task::Lab { scenarios } => {
            setup::run()?;
            build(false)?;
            lab::run(&root.join("target/debug/tracer"), &scenarios)
        }
        Task::VmTest {
            kernels,
            scenarios,
            parallel,
            shards,
        } => {
            setup::run()?;
            build(false)?;
            let plan = vm::Plan {
                parallel,
                shards,
                background: false,
            };
            vm::run(&kernels, &scenarios, plan)
        }
        Task::VmGuest {
            out,
            scenarios,
            shard,
        } => vm::guest(&out, &scenarios, shard),
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

/// Says how long a stage took (CI keeps well inside its time limit; this shows where it goes).
fn took(started: std::time::Instant) {
    eprintln!("  (took {:.1} s)", started.elapsed().as_secs_f64());
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
