//! `cargo xtask test`: every check CI runs, as timed stages. The kernel matrix (VMs, CPU-bound
//! under TCG) runs beside the host's integration tests (which mostly wait on windows and
//! timers), at a lower priority, so the whole run takes about the longer of the two.

use std::{
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

use crate::{build, cargo, dist, run_cmd, show, took, vm, workspace_root};

/// Each stage's name and how long it took, printed at the end (also when one fails).
#[derive(Default)]
struct Stages(Vec<(&'static str, Duration, bool)>);

impl Stages {
    fn time<T>(&mut self, name: &'static str, f: impl FnOnce() -> Result<T>) -> Result<T> {
        let started = Instant::now();
        let r = f();
        self.0.push((name, started.elapsed(), r.is_ok()));
        r
    }

    fn print(&self, total: Duration) {
        eprintln!("stages:");
        for (name, took, ok) in &self.0 {
            eprintln!(
                "  {name:<44} {:>7.1} s{}",
                took.as_secs_f64(),
                if *ok { "" } else { "  FAILED" }
            );
        }
        eprintln!("  {:<44} {:>7.1} s", "whole run", total.as_secs_f64());
    }
}

/// The VMs beside the host tests: three at once (a guest alone keeps 0.85 of a core busy,
/// the host tests far less), each kernel in two shards.
///
/// CI's matrix is the oldest kernel, the one before tcx and RST reasons, and the newest:
/// 6.12 behaves as 7.3 and as the host's own kernel (tcx, both reason enums), and a fourth
/// emulated kernel would not fit CI's time on two cores. `cargo xtask vm-test` runs all four.
const CI_KERNELS: [&str; 3] = ["5.10", "6.1", "7.3"];

const BESIDE_HOST_TESTS: vm::Plan = vm::Plan {
    parallel: 3,
    shards: 2,
    background: true,
};

pub fn run(filter: Option<&str>, with_vms: bool) -> Result<()> {
    let started = Instant::now();
    let mut stages = Stages::default();
    let r = stages_in_order(filter, with_vms, &mut stages);
    stages.print(started.elapsed());
    r
}

fn stages_in_order(filter: Option<&str>, with_vms: bool, stages: &mut Stages) -> Result<()> {
    stages.time("setup (Debian packages, toolchain)", crate::setup::run)?;
    stages.time("fmt", || {
        run_cmd(cargo().args(["fmt", "--all", "--", "--check"]))
    })?;
    // Host crates (the eBPF object is still built by tracer/build.rs and embedded).
    stages.time("clippy (host crates)", || {
        run_cmd(cargo().args([
            "clippy",
            "--workspace",
            "--exclude",
            "tracer-ebpf",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]))
    })?;
    // The eBPF crate, for its real target. panic=abort avoids a second panic handler.
    stages.time("clippy (eBPF crate)", || {
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
        )
    })?;
    // Unit tests: pure logic, no root needed.
    let mut totals = (0, 0);
    stages.time("unit tests", || {
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
        )
    })?;
    stages.time("build (debug)", || build(false))?;
    // The packages, for the tests that install them; the static binary, for the VMs.
    let dist = stages.time("dist (static binary, .deb, .rpm)", dist::run)?;
    let vms = filter.is_none() && with_vms;
    let outcome = std::thread::scope(|s| {
        let matrix = vms.then(|| {
            eprintln!(
                "+ vm-test in the background (the lab on Debian's kernels; --no-vm skips it)"
            );
            s.spawn(|| {
                let started = Instant::now();
                (
                    vm::run(&CI_KERNELS.map(String::from), &[], BESIDE_HOST_TESTS),
                    started.elapsed(),
                )
            })
        });
        let host = host_tests(filter, &dist, stages, &mut totals);
        let matrix = matrix.map(|m| m.join().expect("the VM thread"));
        (host, matrix)
    });
    let (host, matrix) = outcome;
    if let Some((r, took)) = matrix {
        stages.0.push((
            "kernel matrix (VMs, beside the host tests)",
            took,
            r.is_ok(),
        ));
        host?;
        r?;
    } else {
        host?;
    }
    println!("tests: {} passed, {} failed", totals.0, totals.1);
    Ok(())
}

/// The root integration tests on this kernel, then the suites run again as shipped.
fn host_tests(
    filter: Option<&str>,
    dist: &std::path::Path,
    stages: &mut Stages,
    totals: &mut (u64, u64),
) -> Result<()> {
    let tracer = workspace_root().join("target/debug/tracer");
    stages.time("integration tests (root, this kernel)", || {
        let mut cmd = cargo();
        cmd.args(["test", "--package", "integration-tests", "--"])
            .arg("--test-threads=1")
            .env("TRACER_BIN", &tracer)
            .env("TRACER_DIST", dist);
        if let Some(f) = filter {
            cmd.arg(f);
        }
        run_tests(&mut cmd, totals)
    })?;
    if filter.is_some() {
        return Ok(());
    }
    // As shipped: the tracer confined as the unit and the DaemonSet confine it (their
    // capabilities read from deploy/ by the tests), on what confinement can hide —
    // containers and their processes, other namespaces' listeners, the TLS check.
    stages.time("integration tests, confined as shipped", || {
        for (form, modules) in CONFINED_SUITES {
            let mut cmd = cargo();
            cmd.args([
                "test",
                "--package",
                "integration-tests",
                "--test",
                "root",
                "--",
            ]);
            // A module's tests are those whose path starts with its name.
            for module in *modules {
                cmd.arg(module);
            }
            cmd.arg("--test-threads=1")
                .env("TRACER_BIN", &tracer)
                .env("TRACER_CONFINE", form);
            run_tests(&mut cmd, totals)?;
        }
        Ok(())
    })
}

/// The shipped forms' confinement (`TRACER_CONFINE`) and the test modules run under each.
/// Whole modules, or single tests where one shows what the confinement changes (reading other
/// processes' /proc — the slow request's reader, the tunnel's sockets — the agent's endpoint):
/// the rest of those modules runs unconfined, and the run stays under 30 minutes.
const CONFINED_SUITES: &[(&str, &[&str])] = &[
    (
        "unit",
        &[
            "containers::",
            "docker::",
            "journal::",
            "tls::",
            "lost_replies::",
            "timing::a_slow_application_is_a_slow_response",
            "timing::an_unread_request_in_a_container_is_found_there",
            // The exchange sample is a map the running tracer writes: the confined one too.
            "timing::a_busy_host_times_a_sample_of_the_edges_connections",
            "tunnel::localhost_dialled_as_ipv6",
            "tunnel::the_agent_counts_the_tunnels_dials",
            "web::",
        ],
    ),
    (
        "daemonset",
        &[
            "containers::",
            "docker::",
            "timing::a_slow_application_is_a_slow_response",
            "timing::an_unread_request_in_a_container_is_found_there",
            // The exchange sample is a map the running tracer writes: the confined one too.
            "timing::a_busy_host_times_a_sample_of_the_edges_connections",
            "tunnel::localhost_dialled_as_ipv6",
            "tunnel::the_agent_counts_the_tunnels_dials",
            "web::",
        ],
    ),
];

/// A test suite silent this long is hung: it is killed, so CI fails with the test's name
/// instead of running out of time.
const SILENT_LIMIT: std::time::Duration = std::time::Duration::from_secs(600);

/// Runs a test command, echoing its output, and adds its `test result:` lines to `totals`.
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
    // One test at a time: a test's time is from the previous result line to its own.
    let mut previous = std::time::Instant::now();
    let mut slowest: Vec<(std::time::Duration, String)> = Vec::new();
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        last_line.store(started.elapsed().as_secs(), Ordering::Relaxed);
        println!("{line}");
        // libtest's "running N tests" starts a test binary: what came before (building it,
        // the previous binary's summary) is no test's time.
        if line.starts_with("running ") {
            previous = std::time::Instant::now();
        }
        if let Some(name) = line
            .strip_prefix("test ")
            .and_then(|l| l.split_once(" ... "))
            .map(|(name, _)| name.to_string())
        {
            slowest.push((previous.elapsed(), name));
            previous = std::time::Instant::now();
        }
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
    // Where a long suite's time goes, for whoever has to shorten it.
    if started.elapsed() > std::time::Duration::from_secs(120) {
        slowest.sort_by_key(|s| std::cmp::Reverse(s.0));
        let list: Vec<String> = slowest
            .iter()
            .take(12)
            .map(|(d, name)| format!("{name} {:.0} s", d.as_secs_f64()))
            .collect();
        println!("slowest: {}", list.join(", "));
    }
    took(started);
    if !status.success() {
        println!("tests: {} passed, {} failed", totals.0, totals.1.max(1));
        bail!("`{}` failed ({status})", show(cmd));
    }
    Ok(())
}
