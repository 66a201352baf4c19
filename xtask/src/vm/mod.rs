//! `cargo xtask vm-test`: the lab scenarios on Debian's kernels, each in its own VM, as a
//! table kernel × scenario. The guest runs this same xtask binary (`vm-guest`) from the host's
//! root shared read-only, so what runs inside is exactly what was built outside.

mod boot;
pub mod kernels;

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{bail, Context as _, Result};
use serde_json::{json, Value};

/// One kernel's whole run (every shard), at most.
const PER_KERNEL: Duration = Duration::from_secs(40 * 60);

/// How the matrix is cut and run.
#[derive(Clone, Copy, Debug)]
pub struct Plan {
    /// VMs running at once. A guest (two emulated vCPUs) keeps about one host core busy and
    /// waits the rest (the scenarios' windows, retransmission timers), so a 2-core machine
    /// runs four.
    pub parallel: usize,
    /// Each kernel's scenarios are split over this many VMs, so the slowest kernel does not
    /// set the run's length alone. Separate VMs, not threads in one guest: every lab uses
    /// the same addresses, and a VM isolates them completely.
    pub shards: usize,
    /// Run the emulators at a low priority (beside the host's own timing-sensitive tests).
    pub background: bool,
}

impl Plan {
    pub const ALONE: Plan = Plan {
        parallel: 4,
        shards: 2,
        background: false,
    };
}

/// One VM: a kernel and one shard of the scenarios.
struct Job<'a> {
    kernel: &'a kernels::Kernel,
    shard: usize,
}

/// Host side: fetch, boot, collect, print.
pub fn run(lines: &[String], scenarios: &[String], plan: Plan) -> Result<()> {
    crate::lab::check_filters(scenarios)?;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("vm-test boots VMs whose guests create namespaces and load eBPF: run it as root");
    }
    let root = crate::workspace_root();
    // The guests run the binary users download: the static release build. Under TCG every
    // instruction is emulated, and a debug build costs several times the CPU of a release one.
    let tracer = crate::dist::build_static(&root)?;
    let vm_dir = root.join("target/vm");
    let lines: Vec<String> = if lines.is_empty() {
        kernels::DEFAULT.iter().map(|s| s.to_string()).collect()
    } else {
        lines.to_vec()
    };
    let kernels = kernels::fetch(&lines, &vm_dir)?;
    let xtask = std::env::current_exe().context("the xtask binary")?;
    let first = kernels.first().context("no kernel to boot")?;
    let probe_dir = vm_dir.join("run").join(&first.release);
    let accel = boot::choose_accel(first, &boot::initramfs(first, &probe_dir)?, &probe_dir);
    let mut initrds = Vec::new();
    for k in &kernels {
        let dir = vm_dir.join("run").join(&k.release);
        initrds.push(boot::initramfs(k, &dir)?);
    }
    let shards = plan.shards.max(1);
    eprintln!(
        "vm-test: qemu with {}; {} kernels × {shards} shards, {} VMs at once",
        accel.name(),
        kernels.len(),
        plan.parallel
    );
    // The oldest kernels are the slowest: their shards go first.
    let queue: std::sync::Mutex<Vec<(usize, Job)>> = std::sync::Mutex::new(
        (0..shards)
            .rev()
            .flat_map(|shard| {
                kernels
                    .iter()
                    .enumerate()
                    .rev()
                    .map(move |(i, kernel)| (i, Job { kernel, shard }))
            })
            .collect(),
    );
    type Done = (usize, usize, Result<(Value, Duration)>);
    let done: std::sync::Mutex<Vec<Done>> = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..plan.parallel.max(1) {
            s.spawn(|| loop {
                let Some((i, job)) = queue.lock().expect("queue").pop() else {
                    return;
                };
                let k = job.kernel;
                let dir = vm_dir.join("run").join(&k.release);
                let guest = Guest {
                    dir: &dir,
                    initrd: &initrds[i],
                    xtask: &xtask,
                    tracer: &tracer,
                    scenarios,
                };
                let label = format!("{} {} [{}/{shards}]", k.line, k.release, job.shard + 1);
                let mut r = one(&job, shards, &guest, accel, plan.background);
                if r.is_err() && died_of_the_emulator(&dir.join(format!("results-{}", job.shard))) {
                    // The guest's kernel died of TCG's cross-modifying-code race: an int3 oops
                    // while it patched its own code (at 2.4 s while booting once; at 70 s,
                    // inside nf_nat, once when an attach flipped a static key while the
                    // other vCPU ran through it). Real CPUs patch safely: run the shard once more.
                    eprintln!("vm-test: {label}: the guest kernel died of an emulator fault (see its console); running the shard again");
                    r = one(&job, shards, &guest, accel, plan.background);
                }
                match &r {
                    Ok((_, took)) => {
                        eprintln!("vm-test: {label} took {:.0} s", took.as_secs_f64())
                    }
                    Err(e) => eprintln!("vm-test: {label} failed: {e:#}"),
                }
                done.lock().expect("done").push((i, job.shard, r));
            });
        }
    });
    let mut done = done.into_inner().expect("done");
    done.sort_by_key(|(i, shard, _)| (*i, *shard));
    // One entry per kernel: its shards' rows in scenario order, or the first failure.
    let mut results: Vec<(String, Result<(Value, Duration)>)> = Vec::new();
    for (i, k) in kernels.iter().enumerate() {
        let label = format!("{} {}", k.line, k.release);
        let mut rows: Vec<Value> = Vec::new();
        let mut longest = Duration::ZERO;
        let mut failure = None;
        for (_, _, r) in done.iter().filter(|(j, _, _)| *j == i) {
            match r {
                Ok((v, took)) => {
                    rows.extend(v["rows"].as_array().cloned().unwrap_or_default());
                    longest = longest.max(*took);
                }
                Err(e) => failure = failure.or_else(|| Some(format!("{e:#}"))),
            }
        }
        rows.sort_by_key(|r| r["order"].as_u64().unwrap_or(u64::MAX));
        results.push(match failure {
            Some(e) => (label, Err(anyhow::anyhow!(e))),
            None => (label, Ok((json!({ "rows": rows }), longest))),
        });
    }
    print_table(&results)
}

/// What a guest runs: its kernel's initramfs, the binaries, the scenario filters.
struct Guest<'a> {
    dir: &'a Path,
    initrd: &'a Path,
    xtask: &'a Path,
    tracer: &'a Path,
    scenarios: &'a [String],
}

/// One VM: its run script, the VM, the results file.
fn one(
    job: &Job,
    shards: usize,
    guest: &Guest,
    accel: boot::Accel,
    background: bool,
) -> Result<(Value, Duration)> {
    let results = guest.dir.join(format!("results-{}", job.shard));
    let _ = std::fs::remove_dir_all(&results);
    std::fs::create_dir_all(&results)?;
    // The guest runs copies: a rebuild on the host while the VM runs must not change the
    // binaries under it (9p would show the new file to a running process).
    let bin = results.join("bin");
    std::fs::create_dir_all(&bin)?;
    std::fs::copy(guest.xtask, bin.join("xtask"))?;
    std::fs::copy(guest.tracer, bin.join("tracer"))?;
    // Without their debug info (most of a debug build's 150 MB): the guest reads them over
    // 9p once, into its memory (see run.sh), and every scenario starts the tracer afresh.
    for b in ["tracer", "xtask"] {
        let _ = std::process::Command::new("strip")
            .arg("--strip-debug")
            .arg(bin.join(b))
            .status();
    }
    let filters: String = guest
        .scenarios
        .iter()
        .map(|s| format!(" --scenario '{}'", s.replace('\'', "")))
        .collect();
    std::fs::write(
        results.join("run.sh"),
        format!(
            "#!/bin/sh\n\
             export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root\n\
             mount -t tmpfs tmpfs /run; mkdir -p /run/netns\n\
             echo 1 > /proc/sys/kernel/sysrq\n\
             ip link set lo up\n\
             uname -r > /results/uname\n\
             cd {root}\n\
             mkdir -p /run/bin && cp /results/bin/tracer /results/bin/xtask /run/bin/\n\
             LAB_PHASES=1 TRACER_READY_SECS=120 TRACER_BIN=/run/bin/tracer /run/bin/xtask vm-guest --out /results/lab.json --shard {shard}/{shards}{filters} > /results/guest.log 2>&1\n\
             echo $? > /results/exit\n\
             sync; echo o > /proc/sysrq-trigger\n",
            root = crate::workspace_root().display(),
            shard = job.shard,
        ),
    )?;
    let took = boot::boot(
        job.kernel,
        guest.initrd,
        &results,
        accel,
        PER_KERNEL,
        background,
    )?;
    let text = std::fs::read_to_string(results.join("lab.json")).with_context(|| {
        let log = std::fs::read_to_string(results.join("guest.log"))
            .or_else(|_| std::fs::read_to_string(results.join("console.log")))
            .unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(8).collect();
        format!(
            "no results from the guest; last lines: {}",
            tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
        )
    })?;
    let v: Value = serde_json::from_str(&text).context("the guest's lab.json")?;
    Ok((v, took))
}

/// Did the guest's kernel die of the emulator rather than of anything the run did? A panic
/// or oops before the run script started (no guest log yet), or at any time an int3 oops: the
/// trap the kernel plants while patching its own text, hit after the patch — TCG's race.
fn died_of_the_emulator(results: &Path) -> bool {
    let console = std::fs::read_to_string(results.join("console.log")).unwrap_or_default();
    emulator_fault(results.join("guest.log").exists(), &console)
}

fn emulator_fault(guest_started: bool, console: &str) -> bool {
    let died = console.contains("Kernel panic") || console.contains("Oops:");
    died && (!guest_started || console.contains("Oops: int3:"))
}

fn print_table(results: &[(String, Result<(Value, Duration)>)]) -> Result<()> {
    let mut mismatches = 0;
    println!(
        "{:<28} {:<52} {:<16} {:<16} counts (syn/handshakes/refused/firewall/overload/reset/unanswered/other)",
        "kernel", "scenario", "expected", "verdict"
    );
    for (release, r) in results {
        let rows = match r {
            Ok((v, _)) => v["rows"].as_array().cloned().unwrap_or_default(),
            Err(e) => {
                mismatches += 1;
                println!(
                    "{release:<28} {:<52} {:<16} {:<16}",
                    "(no run)",
                    "-",
                    format!("{e:#}")
                );
                continue;
            }
        };
        for row in rows {
            let e = &row["edge"];
            let n = |f: &str| e[f].as_u64().unwrap_or(0);
            let skipped = row["verdict"] == "skipped";
            let ok = skipped || row["verdict"] == row["expected"] && row["counts_differ"].is_null();
            if !ok {
                mismatches += 1;
            }
            println!(
                "{release:<28} {:<52} {:<16} {:<16} {}/{}/{}/{}/{}/{}/{}/{}{}",
                row["scenario"].as_str().unwrap_or(""),
                row["expected"].as_str().unwrap_or(""),
                row["verdict"].as_str().unwrap_or(""),
                n("syn"),
                n("handshakes"),
                n("refused"),
                n("firewall_drops"),
                n("overload_drops"),
                n("origin_resets"),
                n("unanswered"),
                n("other_drops"),
                if skipped {
                    format!("  ({})", row["skipped"].as_str().unwrap_or(""))
                } else if ok {
                    String::new()
                } else {
                    format!(
                        "  <-- mismatch {}{}",
                        row["counts_differ"].as_str().unwrap_or(""),
                        row["error"].as_str().unwrap_or("")
                    )
                }
            );
        }
    }
    if mismatches > 0 {
        bail!("{mismatches} mismatch(es) across the kernel matrix");
    }
    Ok(())
}

/// Guest side: the lab scenarios on the running kernel, written as JSON to `out`.
pub fn guest(out: &Path, scenarios: &[String], shard: crate::lab::Shard) -> Result<()> {
    let tracer: PathBuf = std::env::var_os("TRACER_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::workspace_root().join("target/debug/tracer"));
    let rows = crate::lab::run_scenarios(&tracer, scenarios, shard)?;
    let doc = json!({
        "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
        "rows": rows,
    });
    std::fs::write(out, serde_json::to_vec_pretty(&doc)?)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::emulator_fault;

    #[test]
    fn only_the_emulators_faults_run_a_shard_again() {
        let int3 = "[    2.380820] Oops: int3: 0000 [#1] SMP NOPTI\n[    2.404280] Kernel panic - not syncing: Fatal exception in interrupt";
        assert!(emulator_fault(false, int3));
        // During the run too: the trap the kernel planted while patching its own code.
        assert!(emulator_fault(true, int3));
        // Any other death after the script started is the run's result, never retried.
        let null = "[   70.7] BUG: kernel NULL pointer dereference, address: 0000000000000008\n[   70.7] Oops: Oops: 0000 [#1] SMP NOPTI\n[   70.8] Kernel panic - not syncing: Fatal exception";
        assert!(!emulator_fault(true, null));
        assert!(emulator_fault(false, null));
        // No panic: a guest that gave no results for another reason is not retried.
        assert!(!emulator_fault(
            false,
            "[    1.0] Run /init as init process"
        ));
    }
}
