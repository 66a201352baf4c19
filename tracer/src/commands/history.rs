//! `tracer diagnose --since DURATION`: the running agent's recent history (`GET /history`) —
//! when the current failure began and after what, and the changes in the last DURATION — for an
//! admin who arrives after the failure began. No capture, no privileges.

use std::time::{Duration, SystemTime};

use anyhow::{anyhow, bail, Context as _, Result};
use serde_json::Value;

use crate::{
    cli::{DiagnoseArgs, Format},
    output::text_wrap::{printable, wrap, WIDTH},
};

/// The agent's answer is a journal of at most 4096 changes: far below this.
const MAX_BODY: usize = 8 * 1024 * 1024;

async fn fetch(addr: std::net::SocketAddr) -> Result<Value> {
    let url = format!("http://{addr}/history");
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .no_proxy()
        .build()?;
    let mut resp = client.get(&url).send().await.map_err(|e| {
        if e.is_connect() || e.is_timeout() {
            anyhow!("no agent answers at {addr}: start `tracer agent` (or give its address with --agent), or run diagnose without --since to watch a new window")
        } else {
            anyhow!("the agent at {addr} does not answer plain HTTP: if it serves TLS (--web.config.file), read its history with `curl --cacert CERT -u USER https://{addr}/history`, or run diagnose without --since")
        }
    })?;
    if resp.status() == reqwest::StatusCode::UNAUTHORIZED {
        bail!("the agent at {addr} asks for a password (basic_auth_users in its --web.config.file): read its history with `curl -u USER http://{addr}/history`, or run diagnose without --since");
    }
    if !resp.status().is_success() {
        bail!(
            "the agent at {addr} answered {} for /history: it is older than this tracer, update it",
            resp.status()
        );
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await? {
        body.extend_from_slice(&chunk);
        if body.len() > MAX_BODY {
            bail!("the agent's history is larger than {MAX_BODY} bytes");
        }
    }
    serde_json::from_slice(&body).context("the agent's /history is not JSON")
}

/// The changes of the last `span`, oldest first.
fn recent(doc: &Value, span: Duration) -> Vec<Value> {
    let from = SystemTime::now() - span;
    doc["changes"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|c| {
                    c["ts"]
                        .as_str()
                        .and_then(|t| humantime::parse_rfc3339_weak(t).ok())
                        .is_some_and(|t| t >= from)
                })
                .cloned()
                .collect()
        })
        .unwrap_or_default()
}

pub async fn run(args: &DiagnoseArgs, span: Duration) -> Result<()> {
    let doc = fetch(args.agent).await?;
    let changes = recent(&doc, span);
    let span_text = humantime::format_duration(span).to_string();
    match args.format {
        Format::Json => {
            let out = serde_json::json!({
                "agent": args.agent.to_string(),
                "span_secs": span.as_secs_f64(),
                "interface": doc["interface"],
                "last_verdict": doc["last_verdict"],
                "since": doc["since"],
                "changes": changes,
            });
            println!("{}", serde_json::to_string_pretty(&out)?);
        }
        Format::Text => {
            let mut s = String::new();
            let verdict = &doc["last_verdict"];
            let last = match verdict["verdict"].as_str() {
                Some(v) => format!(
                    "last window {v} (started {})",
                    verdict["window_started_at"].as_str().unwrap_or("?")
                ),
                None => "no window completed yet".into(),
            };
            s += &wrap(
                &format!(
                    "From the agent at {} on {}: {last}.",
                    args.agent,
                    doc["interface"].as_str().unwrap_or("?")
                ),
                "",
                "  ",
                WIDTH,
            );
            match doc["since"]["text"].as_str() {
                Some(t) => s += &wrap(t, "Since: ", "       ", WIDTH),
                None => s += "No failure of Cloudflare's connections is going on.\n",
            }
            if changes.is_empty() {
                s += &format!("No change on this host in the last {span_text}.\n");
            } else {
                s += &format!("Changes in the last {span_text}, oldest first:\n");
                for c in &changes {
                    s += &wrap(
                        &format!(
                            "{} {} {}",
                            c["ts"].as_str().unwrap_or(""),
                            c["what"].as_str().unwrap_or(""),
                            c["detail"].as_str().unwrap_or("")
                        ),
                        "  ",
                        "      ",
                        WIDTH,
                    );
                }
            }
            // The agent's answer is anyone's text: escaped for the terminal.
            print!("{}", printable(&s));
        }
    }
    Ok(())
}
