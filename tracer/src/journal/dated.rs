//! What the host can date after the fact, for a failure that was already going on when the
//! tracer started: the listening processes' start times, when the firewall and network files
//! were last written, when the host booted. The journal cannot say what changed before it
//! started; these can bound it.

use std::{
    path::Path,
    time::{Duration, SystemTime},
};

use crate::origin::listeners::Listener;

/// Files whose last write dates a firewall or routing change made the persistent way.
const CONFIG_FILES: [&str; 9] = [
    "/etc/nftables.conf",
    "/etc/iptables/rules.v4",
    "/etc/iptables/rules.v6",
    "/etc/sysconfig/iptables",
    "/etc/ufw/user.rules",
    "/etc/ufw/user6.rules",
    "/etc/fail2ban/jail.local",
    "/etc/firewalld/zones",
    "/etc/network/interfaces",
];

/// Facts listed at most.
const MAX_FACTS: usize = 6;

/// A dated fact about the host.
#[derive(Clone, Debug, PartialEq)]
pub struct Dated {
    pub ts: String,
    /// "nginx (pid 812) started", "/etc/nftables.conf last written", "the host booted".
    pub what: String,
    pub at: SystemTime,
}

impl Dated {
    pub fn new(at: SystemTime, what: String) -> Self {
        Self {
            ts: humantime::format_rfc3339_seconds(at).to_string(),
            what,
            at,
        }
    }
}

/// The facts this host can date, newest first: the start of each process listening on a
/// watched port, the last write of the firewall and network files present, the boot.
pub fn gather(listeners: &[Listener]) -> Vec<Dated> {
    let boot = boot_time();
    let mut facts = Vec::new();
    let mut seen_pids = Vec::new();
    for l in listeners {
        let (Some(pid), Some(comm)) = (l.pid, &l.comm) else {
            continue;
        };
        if seen_pids.contains(&pid) {
            continue;
        }
        seen_pids.push(pid);
        if let Some(at) = boot.and_then(|b| process_start(pid, b)) {
            facts.push(Dated::new(
                at,
                format!(
                    "{} (pid {pid}, listening on {}) started",
                    // Any user can name a process with escape sequences.
                    comm.replace(char::is_control, "?"),
                    l.endpoint()
                ),
            ));
        }
    }
    for file in CONFIG_FILES {
        if let Ok(at) = std::fs::symlink_metadata(Path::new(file)).and_then(|m| m.modified()) {
            facts.push(Dated::new(at, format!("{file} last written")));
        }
    }
    facts.sort_by_key(|d| std::cmp::Reverse(d.at));
    facts.truncate(MAX_FACTS - 1);
    if let Some(b) = boot {
        facts.push(Dated::new(b, "the host booted".into()));
    }
    facts
}

/// `btime` of /proc/stat: the boot, in seconds since the epoch.
fn boot_time() -> Option<SystemTime> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    parse_btime(&stat)
}

fn parse_btime(stat: &str) -> Option<SystemTime> {
    let secs: u64 = stat
        .lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()?;
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
}

/// A process's start: field 22 of /proc/PID/stat, clock ticks after the boot.
fn process_start(pid: u32, boot: SystemTime) -> Option<SystemTime> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).ok()?;
    start_from_stat(&stat, boot, hz)
}

fn start_from_stat(stat: &str, boot: SystemTime, hz: u64) -> Option<SystemTime> {
    // The command name (field 2) may hold spaces and parentheses: fields count from the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let ticks: u64 = rest.split_whitespace().nth(19)?.parse().ok()?;
    if hz == 0 {
        return None;
    }
    Some(boot + Duration::from_millis(ticks * 1000 / hz))
}

/// "nginx (pid 812, …) started 2026-12-04T14:01:02Z; … ; the host booted …"
pub fn text(facts: &[Dated]) -> String {
    facts
        .iter()
        .map(|d| format!("{} {}", d.what, d.ts))
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_start_is_read_past_a_name_with_spaces_and_parentheses() {
        let boot = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let stat =
            "812 (ng (x) inx) S 1 812 812 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 12345 100 1";
        assert_eq!(
            start_from_stat(stat, boot, 100),
            Some(boot + Duration::from_millis(123_450))
        );
        assert_eq!(start_from_stat("garbage", boot, 100), None);
        assert_eq!(
            parse_btime("cpu 1 2 3\nbtime 1800000000\nprocesses 5\n"),
            Some(boot)
        );
    }

    #[test]
    fn facts_read_as_one_line() {
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let t = text(&[
            Dated::new(
                at,
                "nginx (pid 812, listening on 0.0.0.0:443) started".into(),
            ),
            Dated::new(at, "the host booted".into()),
        ]);
        assert_eq!(
            t,
            "nginx (pid 812, listening on 0.0.0.0:443) started 2027-01-15T08:00:00Z; the host booted 2027-01-15T08:00:00Z"
        );
    }
}
