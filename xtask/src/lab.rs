//! `cargo xtask lab`: every scenario of the integration tests, as a table, so a user sees the
//! tracer work on their own kernel.

use std::path::Path;

use anyhow::{bail, Result};
use integration_tests::scenarios;

pub fn run(tracer: &Path) -> Result<()> {
    // SAFETY: single-threaded here; the scenarios read it later.
    std::env::set_var("TRACER_BIN", tracer);
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the lab creates network namespaces and loads eBPF: run `sudo cargo xtask lab`");
    }
    let all = scenarios::all();
    // The widest name sets the first column.
    let w = all.iter().map(|s| s.name.len()).max().unwrap_or(0).max(8);
    println!(
        "{:<w$} {:<16} {:<16} {:>7}",
        "scenario", "expected", "verdict", "seconds"
    );
    let mut failed = 0;
    for s in &all {
        let outcome = std::panic::catch_unwind(|| scenarios::run(s));
        let (verdict, secs) = match outcome {
            Ok((report, secs)) => (report["verdict"].as_str().unwrap_or("?").to_string(), secs),
            Err(_) => ("error".to_string(), 0.0),
        };
        let mark = if verdict == s.expected {
            ""
        } else {
            "  <-- mismatch"
        };
        if !mark.is_empty() {
            failed += 1;
        }
        println!(
            "{:<w$} {:<16} {:<16} {:>7.1}{mark}",
            s.name, s.expected, verdict, secs
        );
    }
    println!("{} passed, {} failed", all.len() - failed, failed);
    if failed > 0 {
        bail!("{failed} scenario(s) gave another verdict");
    }
    Ok(())
}
