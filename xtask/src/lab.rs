//! `cargo xtask lab`: every scenario of the integration tests, as a table, so a user sees the
//! tracer work on their own kernel. `vm-test` runs the same scenarios inside each VM.

use std::path::Path;

use anyhow::{bail, Result};
use integration_tests::scenarios;
use serde_json::{json, Value};

/// One part of the scenario list: the scenarios whose position modulo `of` is `index`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    pub index: usize,
    pub of: usize,
}

impl Shard {
    pub const ALL: Shard = Shard { index: 0, of: 1 };

    fn holds(self, position: usize) -> bool {
        position % self.of == self.index
    }
}

impl std::str::FromStr for Shard {
    type Err = String;

    /// `I/N`: the I-th (from 0) of N parts.
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("--shard {s:?}: expected I/N with 0 <= I < N, e.g. 0/2");
        let (i, n) = s.split_once('/').ok_or_else(bad)?;
        let (index, of) = (
            i.parse::<usize>().map_err(|_| bad())?,
            n.parse::<usize>().map_err(|_| bad())?,
        );
        if of == 0 || index >= of {
            return Err(bad());
        }
        Ok(Shard { index, of })
    }
}

/// Does scenario `name` pass the `--scenario` filters (any of them in its name, in any case;
/// no filter: every scenario)?
fn selected(name: &str, filters: &[String]) -> bool {
    let name = name.to_lowercase();
    filters.is_empty() || filters.iter().any(|f| name.contains(&f.to_lowercase()))
}

/// A filter that selects no scenario is a mistake, never an empty run that passes.
pub fn check_filters(filters: &[String]) -> Result<()> {
    if scenarios::all().iter().any(|s| selected(s.name, filters)) {
        return Ok(());
    }
    let names: Vec<&str> = scenarios::all().iter().map(|s| s.name).collect();
    bail!(
        "no scenario's name contains {}: the scenarios are {}",
        filters.join(" or "),
        names.join("; ")
    )
}

/// Runs the scenarios (those whose name contains one of `filters`, or all; of those, the
/// shard's part): one JSON row each with scenario, its position in the list, expected,
/// verdict, the edge counts and the seconds it took.
pub fn run_scenarios(tracer: &Path, filters: &[String], shard: Shard) -> Result<Vec<Value>> {
    // SAFETY: single-threaded here; the scenarios read it later.
    std::env::set_var("TRACER_BIN", tracer);
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the lab creates network namespaces and loads eBPF: run `sudo cargo xtask lab`");
    }
    check_filters(filters)?;
    let mut rows = Vec::new();
    let kernel = scenarios::kernel_version();
    for (order, s) in scenarios::all()
        .iter()
        .enumerate()
        .filter(|(_, s)| selected(s.name, filters))
        .enumerate()
        .filter(|(position, _)| shard.holds(*position))
        .map(|(_, s)| s)
    {
        if let Some((since, why)) = scenarios::needs_kernel(s.name).filter(|(v, _)| kernel < *v) {
            rows.push(json!({
                "scenario": s.name,
                "order": order,
                "expected": s.expected,
                "verdict": "skipped",
                "skipped": format!("needs {}.{}: {why}", since.0, since.1),
            }));
            continue;
        }
        let outcome = std::panic::catch_unwind(|| scenarios::run(s));
        rows.push(match outcome {
            Ok((report, secs)) => json!({
                "scenario": s.name,
                "order": order,
                "expected": s.expected,
                "verdict": report["verdict"],
                "counts_expected": s.counts,
                "counts_differ": scenarios::counts_differ(s, &report),
                "edge": report["edge"],
                "notes": report["notes"],
                "evidence": report["causes"][0]["evidence"],
                "seconds": (secs * 10.0).round() / 10.0,
            }),
            Err(e) => json!({
                "scenario": s.name,
                "order": order,
                "expected": s.expected,
                "verdict": "error",
                "error": e.downcast_ref::<String>().cloned()
                    .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default(),
            }),
        });
    }
    Ok(rows)
}

pub fn run(tracer: &Path, filters: &[String]) -> Result<()> {
    let rows = run_scenarios(tracer, filters, Shard::ALL)?;
    // The widest name sets the first column.
    let w = rows
        .iter()
        .filter_map(|r| r["scenario"].as_str())
        .map(str::len)
        .max()
        .unwrap_or(0)
        .max(8);
    println!(
        "{:<w$} {:<16} {:<16} {:>7}",
        "scenario", "expected", "verdict", "seconds"
    );
    let mut failed = 0;
    for r in &rows {
        let ok = r["verdict"] == "skipped"
            || r["verdict"] == r["expected"] && r["counts_differ"].is_null();
        if !ok {
            failed += 1;
        }
        println!(
            "{:<w$} {:<16} {:<16} {:>7.1}{}",
            r["scenario"].as_str().unwrap_or(""),
            r["expected"].as_str().unwrap_or(""),
            r["verdict"].as_str().unwrap_or(""),
            r["seconds"].as_f64().unwrap_or(0.0),
            if ok {
                String::new()
            } else {
                format!(
                    "  <-- mismatch {}",
                    r["counts_differ"].as_str().unwrap_or("")
                )
            }
        );
    }
    println!("{} passed, {} failed", rows.len() - failed, failed);
    if failed > 0 {
        bail!("{failed} scenario(s) gave another verdict");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::Shard;

    #[test]
    fn shards_split_the_list_without_overlap() {
        let shards: Vec<Shard> = ["0/3", "1/3", "2/3"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        for position in 0..10 {
            assert_eq!(shards.iter().filter(|s| s.holds(position)).count(), 1);
        }
        assert!(Shard::ALL.holds(7));
        for bad in ["2/2", "1", "a/2", "0/0"] {
            assert!(bad.parse::<Shard>().is_err(), "{bad}");
        }
    }
}
