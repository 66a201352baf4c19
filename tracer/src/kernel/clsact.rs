//! clsact filters: on kernels without tcx the TC program is a netlink filter, which a
//! SIGKILLed tracer leaves behind. Each filter gets a random handle, and the tracer that
//! attaches it writes a claim in its state directory — its process id, start time and pid
//! namespace — removed again at a clean exit. A later start removes a filter only when its
//! claim is there and proves the claimant gone: same pid namespace, and no process with that
//! id and start time. A filter without a claim (another tracer's in a container, with a state
//! directory of its own; anyone else's) is never touched.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::sys::netlink::{self, BpfFilter};

/// The tracer's TC programs, as `tc` shows a filter's `bpf_name`.
const NAMES: [&str; 4] = ["tc_syn", "tc_pass", "tc_reply", "tc_reply_pass"];

/// Our filters among an interface's BPF filters.
fn ours(filters: Vec<BpfFilter>) -> Vec<BpfFilter> {
    filters
        .into_iter()
        .filter(|f| NAMES.iter().any(|ours| f.name.starts_with(ours)))
        .collect()
}

/// Who attached a filter: enough to prove later that it is gone.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Claim {
    iface: String,
    handle: u32,
    pid: u32,
    /// Start time in clock ticks since boot (`/proc/PID/stat` field 22): a reused pid differs.
    start: u64,
    /// Inode of the pid namespace the pid is in.
    pid_ns: u64,
}

/// A process's start time, if it runs (a zombie holds nothing any more).
fn started(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) state ...": the name may hold spaces and parentheses.
    let (_, rest) = stat.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    if matches!(fields.first(), Some(&("Z" | "X"))) {
        return None;
    }
    // Field 22 overall is the 20th after the command name.
    fields.get(19)?.parse().ok()
}

fn pid_ns() -> u64 {
    std::fs::read_link("/proc/self/ns/pid")
        .ok()
        .and_then(|l| {
            let l = l.to_string_lossy().into_owned();
            l.strip_prefix("pid:[")?.strip_suffix(']')?.parse().ok()
        })
        .unwrap_or(0)
}

impl Claim {
    fn mine(iface: &str, handle: u32) -> Self {
        let pid = std::process::id();
        Self {
            iface: iface.to_string(),
            handle,
            pid,
            start: started(pid).unwrap_or(0),
            pid_ns: pid_ns(),
        }
    }

    /// The claimant is provably gone: it was in this pid namespace, and no process there has
    /// its id and start time.
    fn claimant_gone(&self, here: u64) -> bool {
        self.pid_ns == here && started(self.pid) != Some(self.start)
    }
}

fn claims_dir() -> PathBuf {
    crate::environment::get().state_dir().join("clsact")
}

/// The claim of a filter: `IF-HANDLE.json` for ingress (as before egress filters), with the
/// direction in the name for egress.
fn claim_path(dir: &Path, iface: &str, direction: &str, handle: u32) -> PathBuf {
    match direction {
        "ingress" => dir.join(format!("{iface}-{handle:08x}.json")),
        _ => dir.join(format!("{iface}-{direction}-{handle:08x}.json")),
    }
}

/// A handle no other tracer's filter has (random; neither half zero).
pub fn new_handle() -> u32 {
    use std::hash::{BuildHasher as _, RandomState};
    loop {
        let h = RandomState::new().hash_one((std::process::id(), std::time::Instant::now())) as u32;
        if h & 0xffff != 0 && h >> 16 != 0 {
            return h;
        }
    }
}

/// This process's claim on its filter; removed when dropped (at a clean exit, when the filter
/// itself is removed).
#[derive(Debug)]
pub struct Claimed(Option<PathBuf>);

impl Drop for Claimed {
    fn drop(&mut self) {
        if let Some(p) = &self.0 {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Writes this process's claim on the filter `handle` on `iface`. Without a state directory
/// it cannot: a SIGKILL would then leave the filter for removal by hand (said once).
pub fn claim(iface: &str, direction: &str, handle: u32) -> Claimed {
    let dir = claims_dir();
    let path = claim_path(&dir, iface, direction, handle);
    let written = crate::sys::safe_fs::private_dir(&dir, 0o755).and_then(|()| {
        let text = serde_json::to_vec(&Claim::mine(iface, handle))?;
        Ok(crate::sys::safe_fs::write_atomic(&path, &text, 0o644)?)
    });
    match written {
        Ok(()) => Claimed(Some(path)),
        Err(e) => {
            tracing::warn!("cannot record this tracer's clsact filter on {iface} in {} ({e:#}): if the tracer is killed, remove it with `tc filter del dev {iface} {direction} handle {handle:#x} bpf`", dir.display());
            Claimed(None)
        }
    }
}

/// Removes the tracer's filters on `iface` (ingress and egress) whose claim proves the
/// claimant gone. Best effort: asked and removed over netlink, as `tc` would.
pub fn remove_stale(iface: &str) {
    for egress in [false, true] {
        remove_stale_at(iface, egress);
    }
}

fn remove_stale_at(iface: &str, egress: bool) {
    let direction = if egress { "egress" } else { "ingress" };
    let filters = match netlink::clsact_bpf_filters(iface, egress) {
        Ok(f) => f,
        Err(e) => {
            // No clsact qdisc (EINVAL), no interface: nothing of ours can be there.
            tracing::debug!("{iface} {direction}: filters not listed ({e})");
            return;
        }
    };
    let dir = claims_dir();
    let here = pid_ns();
    for f in ours(filters) {
        let path = claim_path(&dir, iface, direction, f.handle);
        let claim = crate::sys::safe_fs::read_own(&path, 4096)
            .ok()
            .and_then(|b| serde_json::from_slice::<Claim>(&b).ok());
        let Some(claim) = claim else {
            tracing::debug!(
                "a tracer filter on {iface} (handle {:#x}) has no claim here: another tracer's (a container's?), left alone",
                f.handle
            );
            continue;
        };
        if claim.iface != iface || claim.handle != f.handle || !claim.claimant_gone(here) {
            continue;
        }
        match netlink::delete_clsact_filter(iface, egress, &f) {
            Ok(()) => {
                let _ = std::fs::remove_file(&path);
                tracing::info!(
                    "removed a stale tracer filter from {iface} (pref {}, handle {:#x}): its tracer (pid {}) is gone",
                    f.pref,
                    f.handle,
                    claim.pid
                );
            }
            Err(e) => tracing::warn!(
                "cannot remove a stale tracer filter from {iface} {direction} (pref {}, handle {:#x}): {e}",
                f.pref,
                f.handle
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_only_our_bpf_filters() {
        let filter = |pref, handle, name: &str| BpfFilter {
            pref,
            handle,
            name: name.into(),
        };
        let listed = vec![
            filter(49152, 1000, "tc_syn"),
            filter(49153, 1, "cilium_ingress"),
            filter(49154, 7, "tc_reply_pass"),
        ];
        assert_eq!(
            ours(listed),
            [
                filter(49152, 1000, "tc_syn"),
                filter(49154, 7, "tc_reply_pass")
            ]
        );
        assert!(ours(Vec::new()).is_empty());
    }

    #[test]
    fn a_claim_is_stale_only_when_its_claimant_is_provably_gone() {
        let me = Claim::mine("o521", 0x1234_5678);
        let here = pid_ns();
        assert!(!me.claimant_gone(here), "this process runs");
        let reused = Claim {
            start: me.start + 1,
            ..me.clone()
        };
        assert!(reused.claimant_gone(here), "same pid, another process");
        let gone = Claim {
            pid: u32::MAX,
            ..me.clone()
        };
        assert!(gone.claimant_gone(here));
        // Another pid namespace (a container's agent, pid 1 there): never provable.
        let elsewhere = Claim {
            pid_ns: here + 1,
            ..gone
        };
        assert!(!elsewhere.claimant_gone(here));
        let h = new_handle();
        assert!(h & 0xffff != 0 && h >> 16 != 0);
    }
}
