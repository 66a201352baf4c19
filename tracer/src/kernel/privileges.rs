//! Is this process allowed to load and attach the programs? Checked up front so the user gets
//! one line naming what is missing instead of an EPERM from deep inside the loader.

use anyhow::{bail, Result};

const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_PTRACE: u32 = 19;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// Effective capability bits of this process.
fn effective_caps() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("CapEff:"))?;
    u64::from_str_radix(line.trim_start_matches("CapEff:").trim(), 16).ok()
}

/// Can this process see other processes' /proc entries whatever capabilities they hold
/// (CAP_SYS_PTRACE)? Without it, containers' processes are hidden from it.
pub fn sees_all_processes() -> bool {
    effective_caps().is_some_and(|c| c & (1 << CAP_SYS_PTRACE) != 0)
}

/// Capabilities missing for: loading BPF (CAP_BPF), tracepoints (CAP_PERFMON), XDP
/// (CAP_NET_ADMIN). CAP_SYS_ADMIN stands in for the first two on any kernel.
pub fn missing(caps: u64) -> Vec<&'static str> {
    let has = |c: u32| caps & (1u64 << c) != 0;
    let admin = has(CAP_SYS_ADMIN);
    let mut out = Vec::new();
    if !has(CAP_BPF) && !admin {
        out.push("CAP_BPF");
    }
    if !has(CAP_PERFMON) && !admin {
        out.push("CAP_PERFMON");
    }
    if !has(CAP_NET_ADMIN) {
        out.push("CAP_NET_ADMIN");
    }
    out
}

pub fn check() -> Result<()> {
    let Some(caps) = effective_caps() else {
        return Ok(()); // Unknown: let the kernel decide.
    };
    let missing = missing(caps);
    if !missing.is_empty() {
        bail!(
            "tracer needs root or the capabilities CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN (missing: {}): run it with sudo",
            missing.join(", ")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_what_is_missing() {
        assert_eq!(missing(0), vec!["CAP_BPF", "CAP_PERFMON", "CAP_NET_ADMIN"]);
        assert!(missing(u64::MAX).is_empty());
        let sys_admin_only = 1u64 << CAP_SYS_ADMIN;
        assert_eq!(missing(sys_admin_only), vec!["CAP_NET_ADMIN"]);
        let minimal = (1u64 << CAP_BPF) | (1 << CAP_PERFMON) | (1 << CAP_NET_ADMIN);
        assert!(missing(minimal).is_empty());
    }
}
