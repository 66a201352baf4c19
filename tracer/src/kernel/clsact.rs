//! Stale clsact filters: on kernels without tcx the TC program is a netlink filter, which a
//! SIGKILLed tracer leaves behind. Its handle is the tracer's process id, so a later start
//! removes the filters that carry the tracer's program names and whose process is gone —
//! never another running tracer's, never anyone else's.

use std::process::Command;

/// The tracer's TC programs, as `tc` shows a filter's `bpf_name`.
const NAMES: [&str; 2] = ["tc_syn", "tc_pass"];

/// One ingress filter of ours: (preference, handle).
#[derive(Debug, PartialEq, Eq)]
struct Filter {
    pref: u64,
    handle: u32,
}

/// Our filters in `tc -json filter show dev IF ingress` output.
fn ours(json: &str) -> Vec<Filter> {
    let Ok(serde_json::Value::Array(filters)) = serde_json::from_str(json) else {
        return Vec::new();
    };
    filters
        .iter()
        .filter(|f| f["kind"] == "bpf")
        .filter(|f| {
            f["options"]["bpf_name"]
                .as_str()
                .is_some_and(|n| NAMES.iter().any(|ours| n.starts_with(ours)))
        })
        .filter_map(|f| {
            let handle = f["options"]["handle"].as_str()?;
            Some(Filter {
                pref: f["pref"].as_u64()?,
                handle: u32::from_str_radix(handle.trim_start_matches("0x"), 16).ok()?,
            })
        })
        .collect()
}

/// Is the process that attached this filter (its handle) still a running tracer? A zombie
/// (killed, not yet reaped) holds nothing any more.
fn owner_alive(handle: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{handle}/stat")) else {
        return false;
    };
    // "pid (comm) state ...": the name may hold spaces and parentheses.
    let Some((head, rest)) = stat.rsplit_once(')') else {
        return false;
    };
    let running = !matches!(rest.split_whitespace().next(), Some("Z" | "X"));
    running && head.ends_with("(tracer")
}

/// Removes our filters on `iface` whose tracer is gone. Best effort: `tc` may be missing.
pub fn remove_stale(iface: &str) {
    let Ok(out) = Command::new("tc")
        .args(["-json", "filter", "show", "dev", iface, "ingress"])
        .output()
    else {
        return;
    };
    for f in ours(&String::from_utf8_lossy(&out.stdout)) {
        if owner_alive(f.handle) {
            continue;
        }
        let removed = Command::new("tc")
            .args(["filter", "del", "dev", iface, "ingress", "pref"])
            .arg(f.pref.to_string())
            .args(["handle", &format!("{:#x}", f.handle), "bpf"])
            .status()
            .is_ok_and(|s| s.success());
        if removed {
            tracing::info!(
                "removed a stale tracer filter from {iface} (pref {}, handle {:#x})",
                f.pref,
                f.handle
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_only_our_bpf_filters() {
        let json = r#"[{"protocol":"all","pref":49152,"kind":"bpf","chain":0},
            {"protocol":"all","pref":49152,"kind":"bpf","chain":0,"options":{"handle":"0x3e8","bpf_name":"tc_syn","direct-action":true,"not_in_hw":true,"prog":{"id":12}}},
            {"protocol":"all","pref":49153,"kind":"bpf","chain":0,"options":{"handle":"0x1","bpf_name":"cilium_ingress","direct-action":true}},
            {"protocol":"all","pref":1,"kind":"u32","chain":0,"options":{"handle":"0x1"}}]"#;
        assert_eq!(
            ours(json),
            [Filter {
                pref: 49152,
                handle: 1000
            }]
        );
        assert!(ours("").is_empty());
        assert!(ours("{}").is_empty());
    }

    #[test]
    fn only_a_running_tracer_owns_a_filter() {
        assert!(!owner_alive(u32::MAX));
        // This test process is running, but it is not the tracer.
        assert!(!owner_alive(std::process::id()));
    }
}
