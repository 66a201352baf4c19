//! What a watcher spends, counted rather than inferred from a throughput ratio: the kernel's
//! own run time and call count per eBPF program (`kernel.bpf_stats_enabled`) and a process's
//! run time and time slices from its threads' schedstat. A ratio of two iperf3 runs on a VM
//! scatters by several per cent; these counts resolve a tenth of one.

use std::{
    collections::BTreeMap,
    process::Child,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use integration_tests::Tracer;
use serde_json::{json, Value};

/// The tracer's attached programs, as the kernel names them (15 characters at most).
pub const PROGRAMS: [&str; 8] = [
    "xdp_syn",
    "tc_syn",
    "tc_reply",
    "btf_set_state",
    "btf_kfree_skb",
    "tp_send_reset",
    "tp_recv_reset",
    "tp_synack_rtx",
];

/// (run time ns, run count) per program of ours loaded now.
pub fn program_stats() -> Result<BTreeMap<String, (u64, u64)>> {
    let mut out = BTreeMap::new();
    for info in aya::programs::loaded_programs() {
        let info = info.context("listing loaded BPF programs")?;
        let Some(name) = info.name_as_str().filter(|n| PROGRAMS.contains(n)) else {
            continue;
        };
        let e = out.entry(name.to_string()).or_insert((0, 0));
        e.0 += info.run_time().as_nanos() as u64;
        e.1 += info.run_count();
    }
    Ok(out)
}

/// Turns the kernel's per-program statistics on for as long as it lives.
pub struct BpfStats(String);

const BPF_STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";

impl BpfStats {
    pub fn enable() -> Result<BpfStats> {
        let before = std::fs::read_to_string(BPF_STATS).context("reading bpf_stats_enabled")?;
        std::fs::write(BPF_STATS, "1").context("enabling bpf_stats")?;
        Ok(BpfStats(before.trim().to_string()))
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        let _ = std::fs::write(BPF_STATS, &self.0);
    }
}

/// (run ns, time slices) of every thread of `pid`: `/proc/PID/task/*/schedstat`.
pub fn process_stats(pid: u32) -> (u64, u64) {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return (0, 0);
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .map(|s| parse_schedstat(&s))
        .fold((0, 0), |(r, n), (r1, n1)| (r + r1, n + n1))
}

/// `run_ns wait_ns slices` → (run ns, slices).
fn parse_schedstat(s: &str) -> (u64, u64) {
    let f: Vec<u64> = s
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    match f.as_slice() {
        [run, _, slices, ..] => (*run, *slices),
        _ => (0, 0),
    }
}

/// What was spent between two samples, per second of the interval.
pub struct Spent {
    at: Instant,
    programs: BTreeMap<String, (u64, u64)>,
    pid: u32,
    process: (u64, u64),
}

impl Spent {
    /// Starts counting the programs' statistics (enabled by the caller) and process `pid`'s.
    pub fn start(pid: u32) -> Result<Spent> {
        Ok(Spent {
            at: Instant::now(),
            programs: program_stats()?,
            pid,
            process: process_stats(pid),
        })
    }

    /// `{seconds, programs: [{program, calls_per_s, ns_per_call, us_per_s}], userspace:
    /// {us_per_s, slices_per_s}, total_us_per_s, cpu_percent}` since `start`.
    pub fn finish(self) -> Result<Value> {
        let secs = self.at.elapsed().as_secs_f64();
        let after = program_stats()?;
        let mut total_ns = 0.0;
        let programs: Vec<Value> = after
            .iter()
            .filter_map(|(name, (time, count))| {
                let (t0, c0) = self.programs.get(name).copied().unwrap_or_default();
                let calls = count.saturating_sub(c0);
                let ns = time.saturating_sub(t0) as f64;
                if calls == 0 {
                    return None;
                }
                total_ns += ns;
                Some(json!({
                    "program": name,
                    "calls_per_s": (calls as f64 / secs).round() as u64,
                    "ns_per_call": (ns / calls as f64 * 10.0).round() / 10.0,
                    "us_per_s": (ns / secs / 100.0).round() / 10.0,
                }))
            })
            .collect();
        let ((r0, s0), (r, s)) = (self.process, process_stats(self.pid));
        let ns = r.saturating_sub(r0) as f64;
        total_ns += ns;
        let userspace = json!({
            "us_per_s": (ns / secs / 100.0).round() / 10.0,
            "slices_per_s": (s.saturating_sub(s0) as f64 / secs * 10.0).round() / 10.0,
        });
        Ok(json!({
            "seconds": (secs * 100.0).round() / 100.0,
            "programs": programs,
            "userspace": userspace,
            "total_us_per_s": (total_ns / secs / 100.0).round() / 10.0,
            // Of one CPU: the share of a core's second the watcher took.
            "cpu_percent": (total_ns / secs / 1e7 * 1000.0).round() / 1000.0,
        }))
    }
}

/// What the agent and tcpdump spend during one more run of `load` each, counted: the agent's
/// programs (the kernel's statistics, on only for this run: they add two clock reads a call)
/// and each process's threads. tcpdump's filter runs in the kernel's packet tap and is not
/// counted. `{agent, tcpdump}`, each as [`Spent::finish`] gives it.
pub fn watchers<T>(
    agent: impl FnOnce() -> Tracer,
    tcpdump: impl FnOnce() -> Result<Child>,
    load: impl Fn() -> Result<T>,
) -> Result<Value> {
    const SETTLE: Duration = Duration::from_secs(1);
    let agent = {
        let _stats = BpfStats::enable()?;
        let running = agent();
        let spent = Spent::start(running.pid())?;
        load()?;
        spent.finish()?
    };
    std::thread::sleep(SETTLE);
    let mut dump = tcpdump()?;
    let spent = Spent::start(dump.id())?;
    let run = load();
    let tcpdump = spent.finish();
    let _ = dump.kill();
    let _ = dump.wait();
    run?;
    std::thread::sleep(SETTLE);
    Ok(json!({"agent": agent, "tcpdump": tcpdump?}))
}

/// A line for each watcher of [`watchers`]' figures.
pub fn render_watchers(spent: &Value) -> String {
    ["agent", "tcpdump"]
        .iter()
        .filter(|who| spent[**who].is_object())
        .map(|who| {
            format!(
                "   spent by {who:<8} (one more run, counted): {}\n",
                render(&spent[*who])
            )
        })
        .collect()
}

/// One line: `total X µs/s (Y % of a CPU): tc_reply N/s × M ns; …; userspace U µs/s in S
/// slices/s`.
fn render(v: &Value) -> String {
    let mut parts: Vec<String> = v["programs"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            format!(
                "{} {}/s x {} ns",
                p["program"].as_str().unwrap_or(""),
                p["calls_per_s"],
                p["ns_per_call"]
            )
        })
        .collect();
    if v["userspace"].is_object() {
        parts.push(format!(
            "userspace {} us/s in {} slices/s",
            v["userspace"]["us_per_s"], v["userspace"]["slices_per_s"]
        ));
    }
    format!(
        "{} us/s ({} % of a CPU): {}",
        v["total_us_per_s"],
        v["cpu_percent"],
        parts.join("; ")
    )
}

#[cfg(test)]
mod tests {
    use super::{parse_schedstat, render};

    #[test]
    fn schedstat_gives_run_time_and_slices() {
        assert_eq!(parse_schedstat("123456 789 42\n"), (123456, 42));
        assert_eq!(parse_schedstat(""), (0, 0));
    }

    #[test]
    fn the_line_names_each_program_and_the_userspace() {
        let v = serde_json::json!({
            "total_us_per_s": 812.5, "cpu_percent": 0.081,
            "programs": [{"program": "tc_reply", "calls_per_s": 41000, "ns_per_call": 19.2}],
            "userspace": {"us_per_s": 25.0, "slices_per_s": 4.2},
        });
        assert_eq!(
            render(&v),
            "812.5 us/s (0.081 % of a CPU): tc_reply 41000/s x 19.2 ns; userspace 25.0 us/s in 4.2 slices/s"
        );
    }
}
