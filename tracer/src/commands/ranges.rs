//! `tracer ranges`: the ranges in use, their source and age; `--audit` checks the host's
//! allowlists against them.

use anyhow::{anyhow, Result};

use crate::{
    cli::{Format, RangesArgs},
    origin::firewall::Ruleset,
    output::{audit_json::AuditJson, report::RangesInfo},
    ranges::{fetch, RangeSet},
};

/// A line of output, control characters escaped (an etag, a path or a set's name is anyone's
/// text).
macro_rules! say {
    ($($t:tt)*) => {
        println!("{}", crate::output::text_wrap::printable(&format!($($t)*)))
    };
}

pub async fn run(args: RangesArgs) -> Result<()> {
    let (set, note) = fetch::resolve(args.ranges.file.as_deref(), args.refresh).await?;
    if let Some(n) = note {
        eprintln!("note: {}", crate::output::text_wrap::printable(&n));
    }
    if args.audit {
        return audit(&set, args.format);
    }
    let info = RangesInfo::of(&set);
    match args.format {
        Format::Json => say!("{}", serde_json::to_string_pretty(&info)?),
        Format::Text => {
            let age = info
                .age_secs
                .map(|s| humantime::format_duration(std::time::Duration::from_secs(s)).to_string())
                .unwrap_or_else(|| "unknown".into());
            say!(
                "source: {}{}",
                info.source,
                info.path
                    .as_deref()
                    .map(|p| format!(" ({p})"))
                    .unwrap_or_default()
            );
            say!(
                "fetched: {} (age {age})",
                info.fetched_at.as_deref().unwrap_or("unknown")
            );
            say!("etag: {}", info.etag.as_deref().unwrap_or("-"));
            say!("IPv4 ({}):", info.ipv4.len());
            for r in &info.ipv4 {
                say!("  {r}");
            }
            say!("IPv6 ({}):", info.ipv6.len());
            for r in &info.ipv6 {
                say!("  {r}");
            }
        }
    }
    Ok(())
}

fn audit(set: &RangeSet, format: Format) -> Result<()> {
    let ruleset = Ruleset::read().map_err(|e| {
        anyhow!("cannot read the firewall ruleset: {e} (run as root, with nft installed)")
    })?;
    let lists = ruleset.allowlists(set);
    let v4: Vec<ipnet::IpNet> = set.v4.iter().map(|n| (*n).into()).collect();
    let v6: Vec<ipnet::IpNet> = set.v6.iter().map(|n| (*n).into()).collect();
    let routes = crate::origin::range_routes::audit(&v4, &v6);
    match format {
        Format::Json => {
            let doc = AuditJson::of(RangesInfo::of(set), &lists, &routes);
            say!("{}", serde_json::to_string_pretty(&doc)?);
        }
        Format::Text => {
            if lists.is_empty() {
                say!(
                    "No allowlist in this host's nftables/iptables-nft ruleset admits any of the {} ranges ({} source).",
                    set.v4.len() + set.v6.len(),
                    set.source
                );
            }
            for a in &lists {
                say!("{}", crate::verdict::allowlist_text(a));
                if a.complete() {
                    say!("  complete");
                }
                for r in &a.missing {
                    say!("  missing: {r}");
                }
                for r in &a.partly {
                    say!("  partly covered: {r}");
                }
            }
            if routes.is_empty() {
                say!("Every watched range is routed the way this host's default route goes.");
            }
            for m in &routes {
                say!("Replies to {} go by {}", m.range, m.route_text());
                say!("  fix: {}", m.fix());
            }
        }
    }
    Ok(())
}
