//! `tracer ranges`: the ranges in use, their source and age.

use anyhow::Result;

use crate::{
    cli::{Format, RangesArgs},
    ranges::fetch,
    report::RangesInfo,
};

pub async fn run(args: RangesArgs) -> Result<()> {
    let (set, note) = fetch::resolve(args.ranges.as_deref(), args.refresh).await?;
    if let Some(n) = note {
        eprintln!("note: {n}");
    }
    let info = RangesInfo::of(&set);
    match args.format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&info)?),
        Format::Text => {
            let age = info
                .age_secs
                .map(|s| humantime::format_duration(std::time::Duration::from_secs(s)).to_string())
                .unwrap_or_else(|| "unknown".into());
            println!(
                "source: {}{}",
                info.source,
                info.path
                    .as_deref()
                    .map(|p| format!(" ({p})"))
                    .unwrap_or_default()
            );
            println!(
                "fetched: {} (age {age})",
                info.fetched_at.as_deref().unwrap_or("unknown")
            );
            println!("etag: {}", info.etag.as_deref().unwrap_or("-"));
            println!("IPv4 ({}):", info.ipv4.len());
            for r in &info.ipv4 {
                println!("  {r}");
            }
            println!("IPv6 ({}):", info.ipv6.len());
            for r in &info.ipv6 {
                println!("  {r}");
            }
        }
    }
    Ok(())
}
