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

/// VMs at once: two fit this machine's kind (2 cores, 24 GB).
const PARALLEL: usize = 2;
/// One kernel's whole run, at most.
const PER_KERNEL: Duration = Duration::from_secs(40 * 60);

/// Host side: fetch, boot, collect, print.
pub fn run(lines: &[String], scenarios: &[String]) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("vm-test boots VMs whose guests create namespaces and load eBPF: run it as root");
    }
    let root = crate::workspace_root();
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
    eprintln!("vm-test: qemu with {}", accel.name());
    let mut results: Vec<(String, Result<(Value, Duration)>)> = Vec::new();
    for chunk in kernels.chunks(PARALLEL) {
        let done: Vec<(String, Result<(Value, Duration)>)> = std::thread::scope(|s| {
            let handles: Vec<_> = chunk
                .iter()
                .map(|k| {
                    let dir = vm_dir.join("run").join(&k.release);
                    let xtask = xtask.clone();
                    s.spawn(move || {
                        (
                            format!("{} {}", k.line, k.release),
                            one(k, &dir, &xtask, scenarios, accel),
                        )
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("VM thread"))
                .collect()
        });
        for (release, r) in done {
            match &r {
                Ok((_, took)) => eprintln!("vm-test: {release} took {:.0} s", took.as_secs_f64()),
                Err(e) => eprintln!("vm-test: {release} failed: {e:#}"),
            }
            results.push((release, r));
        }
    }
    print_table(&results)
}

/// One kernel: its initramfs, its run script, the VM, the results file.
fn one(
    k: &kernels::Kernel,
    dir: &Path,
    xtask: &Path,
    scenarios: &[String],
    accel: boot::Accel,
) -> Result<(Value, Duration)> {
    let results = dir.join("results");
    let _ = std::fs::remove_dir_all(&results);
    std::fs::create_dir_all(&results)?;
    let initrd = boot::initramfs(k, dir)?;
    // The guest runs copies: a rebuild on the host while the VM runs must not change the
    // binaries under it (9p would show the new file to a running process).
    let bin = results.join("bin");
    std::fs::create_dir_all(&bin)?;
    std::fs::copy(xtask, bin.join("xtask"))?;
    std::fs::copy(
        crate::workspace_root().join("target/debug/tracer"),
        bin.join("tracer"),
    )?;
    // Without their debug info (most of a debug build's 150 MB): the guest reads them over
    // 9p once, into its memory (see run.sh), and every scenario starts the tracer afresh.
    for b in ["tracer", "xtask"] {
        let _ = std::process::Command::new("strip")
            .arg("--strip-debug")
            .arg(bin.join(b))
            .status();
    }
    let filters: String = scenarios
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
             TRACER_READY_SECS=120 TRACER_BIN=/run/bin/tracer /run/bin/xtask vm-guest --out /results/lab.json{filters} > /results/guest.log 2>&1\n\
             echo $? > /results/exit\n\
             sync; echo o > /proc/sysrq-trigger\n",
            root = crate::workspace_root().display(),
        ),
    )?;
    let took = boot::boot(k, &initrd, &results, accel, PER_KERNEL)?;
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
pub fn guest(out: &Path, scenarios: &[String]) -> Result<()> {
    let tracer: PathBuf = std::env::var_os("TRACER_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::workspace_root().join("target/debug/tracer"));
    let rows = crate::lab::run_scenarios(&tracer, scenarios)?;
    let doc = json!({
        "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
        "rows": rows,
    });
    std::fs::write(out, serde_json::to_vec_pretty(&doc)?)?;
    Ok(())
}
