//! What each kernel program costs per call under load (`kernel.bpf_stats_enabled`: the
//! kernel's own run time and count per program), with the server in the origin's namespace
//! and in a container behind DNAT, where the tracer follows every connection into another
//! namespace: what following adds, hook by hook.

use std::collections::BTreeMap;

use anyhow::Result;
use serde_json::{json, Value};

use super::{
    account::{program_stats, BpfStats, PROGRAMS},
    agent_on_port_80, median,
    web::{wrk, Topology, WebLab},
};

const ROUNDS: usize = 3;
const SECS: u32 = 4;

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
