//! The agent's per-window `verdict` log line: every `diagnose` JSON field, made compact for a
//! log that gets one every window. The watched ranges are referred to by source, etag and
//! count (`ranges.ipv4_count`, `ranges.ipv6_count`) instead of listed, and a fix that names all
//! of them says so instead of repeating 22 CIDRs: `tracer ranges` and `tracer diagnose` on the
//! origin give them in full.

use std::time::SystemTime;

use serde_json::Value;

use crate::{output::report::Report, ranges::RangeSet};

/// `{"ts":..,"kind":"verdict", <the diagnose JSON fields, compacted>}`
pub fn verdict_record(report: &Report, ranges: &RangeSet) -> String {
    let mut v = serde_json::to_value(crate::output::report_json::ReportJson::of(report))
        .unwrap_or_default();
    compact(&mut v, ranges);
    if let Some(obj) = v.as_object_mut() {
        obj.insert(
            "ts".into(),
            humantime::format_rfc3339_micros(SystemTime::now())
                .to_string()
                .into(),
        );
        obj.insert("kind".into(), "verdict".into());
        obj.insert("schema".into(), crate::output::LOG_SCHEMA.into());
    }
    v.to_string()
}

/// The placeholder for the whole list of watched ranges in a command.
fn all_ranges_placeholder(ranges: &RangeSet) -> String {
    format!(
        "<the {} watched ranges: `tracer ranges`>",
        ranges.v4.len() + ranges.v6.len()
    )
}

fn compact(v: &mut Value, ranges: &RangeSet) {
    if let Some(r) = v.get_mut("ranges").and_then(Value::as_object_mut) {
        for family in ["ipv4", "ipv6"] {
            let n = r
                .remove(family)
                .and_then(|l| l.as_array().map(Vec::len))
                .unwrap_or(0);
            r.insert(format!("{family}_count"), n.into());
        }
    }
    // The lists a fix may spell out: all ranges, or each family, joined by spaces or commas.
    let all: Vec<String> = ranges
        .v4
        .iter()
        .map(ToString::to_string)
        .chain(ranges.v6.iter().map(ToString::to_string))
        .collect();
    let v4: Vec<String> = ranges.v4.iter().map(ToString::to_string).collect();
    let v6: Vec<String> = ranges.v6.iter().map(ToString::to_string).collect();
    let placeholder = all_ranges_placeholder(ranges);
    let mut lists: Vec<(String, String)> = Vec::new();
    for sep in [" ", ", "] {
        lists.push((all.join(sep), placeholder.clone()));
        lists.push((
            v4.join(sep),
            format!("<the {} watched IPv4 ranges: `tracer ranges`>", v4.len()),
        ));
        lists.push((
            v6.join(sep),
            format!("<the {} watched IPv6 ranges: `tracer ranges`>", v6.len()),
        ));
    }
    // Longest first, and only lists long enough to be worth it.
    lists.retain(|(l, _)| l.len() > 64);
    lists.sort_by_key(|(l, _)| std::cmp::Reverse(l.len()));
    let Some(causes) = v.get_mut("causes").and_then(Value::as_array_mut) else {
        return;
    };
    for cause in causes {
        for field in ["next_steps", "evidence"] {
            let Some(items) = cause.get_mut(field).and_then(Value::as_array_mut) else {
                continue;
            };
            for item in items {
                if let Some(text) = item.as_str() {
                    let mut t = text.to_string();
                    for (list, short) in &lists {
                        t = t.replace(list.as_str(), short);
                    }
                    *item = Value::String(t);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_counted_and_long_lists_referred_to() {
        let set = RangeSet::embedded();
        let all: Vec<String> = set
            .v4
            .iter()
            .map(ToString::to_string)
            .chain(set.v6.iter().map(ToString::to_string))
            .collect();
        let fix = format!(
            "for r in {}; do ufw allow from $r to any port 443 proto tcp; done",
            all.join(" ")
        );
        let mut v = serde_json::json!({
            "ranges": {"source": "embedded", "etag": "x", "ipv4": set.v4.iter().map(ToString::to_string).collect::<Vec<_>>(), "ipv6": ["2400:cb00::/32"]},
            "causes": [{"next_steps": [fix, "Unban 173.245.48.10: fail2ban-client set sshd unbanip 173.245.48.10"], "evidence": ["lacks 104.16.0.0/13"]}]
        });
        compact(&mut v, &set);
        assert_eq!(v["ranges"]["ipv4_count"], set.v4.len());
        assert_eq!(v["ranges"]["ipv6_count"], 1);
        assert!(v["ranges"].get("ipv4").is_none());
        let step = v["causes"][0]["next_steps"][0].as_str().unwrap();
        assert_eq!(
            step,
            format!(
                "for r in <the {} watched ranges: `tracer ranges`>; do ufw allow from $r to any port 443 proto tcp; done",
                all.len()
            )
        );
        // Short lists (a missing range, an address) stay as they are.
        assert_eq!(v["causes"][0]["evidence"][0], "lacks 104.16.0.0/13");
        assert!(v["causes"][0]["next_steps"][1]
            .as_str()
            .unwrap()
            .contains("unbanip 173.245.48.10"));
    }
}
