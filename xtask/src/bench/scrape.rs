//! What one agent costs the fleet's monitoring: its series at default settings (all of
//! Cloudflare's 13 ports, the histograms, the process metrics), counted from a real scrape
//! after traffic of several outcomes; the bytes and time of a scrape and the agent's CPU per
//! scrape; the size of its log records. The README's fleet section multiplies these.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{bail, Result};
use integration_tests::{sockaddr, Lab, Tracer, EDGE_V4, ORIGIN_IF, ORIGIN_V4};
use serde_json::{json, Value};

use super::{median, proc_ticks};

const SCRAPES: usize = 200;
const ADDR: &str = "127.0.0.1:9597";
/// The fleet the README sizes, scraped as the README recommends.
const FLEET: f64 = 10_000.0;
const INTERVAL_SECS: f64 = 15.0;

pub fn scrape_cost() -> Result<Value> {
    let lab = Lab::new();
    let dir = std::env::temp_dir().join(format!("t521-bench-scrape-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let log = dir.join("agent.log");
    let result = measure(&lab, &log);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn measure(lab: &Lab, log: &Path) -> Result<Value> {
    // Default settings but the window, so the verdict records come quickly.
    let tracer = Tracer::start(
        &lab.origin,
        &[
            "agent",
            "--iface",
            ORIGIN_IF,
            "--metrics-addr",
            ADDR,
            "--window",
            "5",
            "--log-file",
            log.to_str().unwrap_or_default(),
        ],
    );
    // Traffic of several outcomes: handshakes on 443, refusals on 8080.
    let _listener = lab.origin.listen("0.0.0.0", 443, 128);
    for port in [443, 8080, 443, 8080] {
        let _ = lab.edge.connect(
            EDGE_V4,
            sockaddr(ORIGIN_V4, port),
            Duration::from_millis(500),
        );
    }
    std::thread::sleep(Duration::from_secs(11));
    let scrape = || -> Result<(String, f64)> {
        let t = Instant::now();
        let (_, body) = lab.origin.http_get(ADDR, "/metrics")?;
        Ok((body, t.elapsed().as_secs_f64() * 1000.0))
    };
    let (text, _) = scrape()?;
    if !text.contains("tracer_windows_total") {
        bail!("the agent's scrape lacks tracer_windows_total:\n{text}");
    }
    let samples: Vec<&str> = text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let family = |prefix: &str| samples.iter().filter(|l| l.starts_with(prefix)).count();
    let histogram_series = samples
        .iter()
        .filter(|l| {
            ["_bucket", "_count", "_sum"]
                .iter()
                .any(|s| l.split(['{', ' ']).next().unwrap_or("").ends_with(s))
        })
        .count();
    let pid = tracer.pid();
    let ticks = proc_ticks(pid)?;
    let mut times = Vec::new();
    let mut bytes = 0usize;
    for _ in 0..SCRAPES {
        let (body, ms) = scrape()?;
        bytes = body.len();
        times.push(ms);
    }
    let cpu_ms = (proc_ticks(pid)? - ticks) as f64 * 10.0 / SCRAPES as f64;
    tracer.stop();
    let lines = std::fs::read_to_string(log).unwrap_or_default();
    let size_of = |kind: &str| {
        lines
            .lines()
            .filter(|l| l.contains(&format!("\"kind\":\"{kind}\"")))
            .map(str::len)
            .max()
            .unwrap_or(0)
    };
    let series = samples.len();
    let verdict_bytes = size_of("verdict");
    let mut sorted = times.clone();
    sorted.sort_by(f64::total_cmp);
    let p99 = sorted[(sorted.len() * 99 / 100).min(sorted.len() - 1)];
    Ok(json!({
        "settings": "default ports (13), --window 5 (60 by default), histograms on the ports with traffic",
        "series": series,
        "series_tracer": family("tracer_"),
        "series_process": family("process_"),
        "series_histograms": histogram_series,
        "scrape_bytes": bytes,
        "scrape_ms_median": (median(times) * 100.0).round() / 100.0,
        "scrape_ms_p99": (p99 * 100.0).round() / 100.0,
        "agent_cpu_ms_per_scrape": (cpu_ms * 100.0).round() / 100.0,
        "verdict_record_bytes": verdict_bytes,
        "attempt_record_bytes": size_of("attempt"),
        "fleet": {
            "origins": FLEET,
            "scrape_interval_s": INTERVAL_SECS,
            "active_series": series as f64 * FLEET,
            "samples_per_s": (series as f64 * FLEET / INTERVAL_SECS).round(),
            "scrape_bytes_per_s": (bytes as f64 * FLEET / INTERVAL_SECS).round(),
            "verdict_log_bytes_per_s_at_60s_windows": (verdict_bytes as f64 * FLEET / 60.0).round(),
        },
    }))
}

pub fn render(v: &Value) -> String {
    let f = &v["fleet"];
    format!(
        "\n8. What an agent costs the monitoring ({}):\n   \
         series per agent {} (tracer_* {}, process_* {}; histogram series {})\n   \
         a scrape: {} bytes, {} ms median, {} ms p99 (loopback, {SCRAPES} scrapes); agent CPU {} ms per scrape\n   \
         log records: verdict {} bytes, attempt {} bytes\n   \
         {} origins every {} s: {} active series, {} samples/s, {} scrape bytes/s, {} bytes/s of verdict records\n",
        v["settings"].as_str().unwrap_or(""),
        v["series"],
        v["series_tracer"],
        v["series_process"],
        v["series_histograms"],
        v["scrape_bytes"],
        v["scrape_ms_median"],
        v["scrape_ms_p99"],
        v["agent_cpu_ms_per_scrape"],
        v["verdict_record_bytes"],
        v["attempt_record_bytes"],
        f["origins"],
        f["scrape_interval_s"],
        f["active_series"],
        f["samples_per_s"],
        f["scrape_bytes_per_s"],
        f["verdict_log_bytes_per_s_at_60s_windows"],
    )
}
