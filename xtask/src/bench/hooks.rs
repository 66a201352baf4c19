//! What each kernel program costs per call under load (`kernel.bpf_stats_enabled`: the
//! kernel's own run time and count per program), with the server in the origin's namespace
//! and in a container behind DNAT, where the tracer follows every connection into another
//! namespace: what following adds, hook by hook.

use std::collections::BTreeMap;

use anyhow::{Context as _, Result};
use serde_json::{json, Value};

use super::{
    agent_on_port_80, median,
    web::{wrk, Topology, WebLab},
};

/// The tracer's attached programs, as the kernel names them (15 characters at most).
const PROGRAMS: [&str; 8] = [
    "xdp_syn",
    "tc_syn",
    "tc_reply",
    "btf_set_state",
    "btf_kfree_skb",
    "tp_send_reset",
    "tp_recv_reset",
    "tp_synack_rtx",
];
const ROUNDS: usize = 3;
const SECS: u32 = 4;

/// (run time ns, run count) per program of ours loaded now.
fn program_stats() -> Result<BTreeMap<String, (u64, u64)>> {
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
struct BpfStats(String);

impl BpfStats {
    fn enable() -> Result<BpfStats> {
        let path = "/proc/sys/kernel/bpf_stats_enabled";
        let before = std::fs::read_to_string(path).context("reading bpf_stats_enabled")?;
        std::fs::write(path, "1").context("enabling bpf_stats")?;
        Ok(BpfStats(before.trim().to_string()))
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        let _ = std::fs::write("/proc/sys/kernel/bpf_stats_enabled", &self.0);
    }
}

fn measure(topology: Topology) -> Result<Value> {
    let web = WebLab::new(topology)?;
    let _stats = BpfStats::enable()?;
    let _agent = agent_on_port_80(&web.lab, "127.0.0.1:9597", &[]);
    wrk(&web.lab, 1)?; // warm-up
    let mut per_call: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    let mut per_conn: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for _ in 0..ROUNDS {
        let before = program_stats()?;
        let rate = wrk(&web.lab, SECS)?;
        let after = program_stats()?;
        let connections = rate * f64::from(SECS);
        for (name, (time, count)) in &after {
            let (t0, c0) = before.get(name).copied().unwrap_or_default();
            let calls = count.saturating_sub(c0);
            if calls == 0 {
                continue;
            }
            let ns = time.saturating_sub(t0) as f64 / calls as f64;
            per_call.entry(name.clone()).or_default().push(ns);
            per_conn
                .entry(name.clone())
                .or_default()
                .push(ns * calls as f64 / connections);
        }
    }
    let programs: Vec<Value> = per_call
        .into_iter()
        .map(|(name, ns)| {
            let conn = per_conn.remove(&name).unwrap_or_default();
            json!({
                "program": name,
                "ns_per_call": (median(ns) * 10.0).round() / 10.0,
                "ns_per_connection": median(conn).round(),
            })
        })
        .collect();
    Ok(json!(programs))
}

pub fn hook_cost() -> Result<Value> {
    Ok(json!({
        "tool": format!("wrk -t2 -c32 -d{SECS}s -H 'Connection: close' (nginx, 1 worker), agent attached, kernel.bpf_stats_enabled=1, median of {ROUNDS}"),
        "direct": measure(Topology::Direct)?,
        "container": measure(Topology::Container)?,
    }))
}

pub fn render(v: &Value) -> String {
    let mut s = format!(
        "\n6. Kernel programs under load, per call and per connection: {}\n   {:<16} {:>12} {:>12} {:>14} {:>14}\n",
        v["tool"].as_str().unwrap_or(""),
        "program",
        "direct ns",
        "per conn",
        "container ns",
        "per conn"
    );
    let find = |side: &str, name: &str| {
        v[side]
            .as_array()
            .and_then(|a| a.iter().find(|p| p["program"] == name))
            .map(|p| {
                (
                    p["ns_per_call"].to_string(),
                    p["ns_per_connection"].to_string(),
                )
            })
            .unwrap_or(("-".into(), "-".into()))
    };
    for name in PROGRAMS {
        let (d, dc) = find("direct", name);
        let (c, cc) = find("container", name);
        if d == "-" && c == "-" {
            continue;
        }
        s += &format!("   {name:<16} {d:>12} {dc:>12} {c:>14} {cc:>14}\n");
    }
    s
}
