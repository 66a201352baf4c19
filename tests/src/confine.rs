//! The tracer as the shipped forms confine it: the capability set and securebits of the
//! systemd unit (`deploy/tracer.service`) or the capabilities the DaemonSet adds
//! (`deploy/kubernetes/cf521-tracer.yaml`), read from those files so the tests follow them,
//! applied with `setpriv` — root's uid, only those capabilities, no way back to full root.
//! `TRACER_CONFINE=unit|daemonset` runs every tracer a test starts so.

use std::path::PathBuf;

/// A shipped form's confinement.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Confinement {
    /// Lower-case capability names without `cap_` (`bpf`, `perfmon`, …).
    pub caps: Vec<String>,
    /// `noroot` and `noroot_locked`: uid 0 gets no capabilities back on exec.
    pub noroot: bool,
    /// `ProtectProc=invisible`: /proc shows only the processes the tracer may ptrace-read
    /// (emulated with a private /proc mounted `hidepid=invisible`).
    pub protect_proc: bool,
    pub from: &'static str,
}

fn repo(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(path)
}

/// Mounts tracefs on the host where the machine has not (systemd's sys-kernel-tracing.mount
/// does at boot on every host the unit runs on; the DaemonSet mounts the node's). A confined
/// tracer has no CAP_SYS_ADMIN to mount it, and a fresh CI machine boots without it.
pub fn ensure_host_tracefs() {
    if std::path::Path::new("/sys/kernel/tracing/events").exists() {
        return;
    }
    let status = std::process::Command::new("mount")
        .args(["-t", "tracefs", "nodev", "/sys/kernel/tracing"])
        .status()
        .expect("running mount");
    assert!(status.success(), "mounting tracefs on the host failed");
}

impl Confinement {
    /// The unit's `CapabilityBoundingSet=` (which must equal its `AmbientCapabilities=`) and
    /// `SecureBits=`.
    pub fn unit() -> Confinement {
        let text = std::fs::read_to_string(repo("deploy/tracer.service")).expect("the unit");
        Confinement::parse_unit(&text)
    }

    pub fn parse_unit(text: &str) -> Confinement {
        let value = |key: &str| -> Vec<String> {
            text.lines()
                .filter_map(|l| l.trim().strip_prefix(&format!("{key}=")))
                .flat_map(|v| v.split_whitespace())
                .map(|c| c.trim_start_matches("CAP_").to_ascii_lowercase())
                .collect()
        };
        let caps = value("CapabilityBoundingSet");
        assert_eq!(
            caps,
            value("AmbientCapabilities"),
            "the unit's bounding and ambient sets differ"
        );
        let securebits = value("SecureBits");
        Confinement {
            caps,
            noroot: securebits.iter().any(|b| b.starts_with("noroot")),
            protect_proc: value("ProtectProc") == ["invisible"],
            from: "deploy/tracer.service",
        }
    }

    /// The tracer container's `capabilities.add` (everything else dropped) in the DaemonSet.
    pub fn daemonset() -> Confinement {
        let text = std::fs::read_to_string(repo("deploy/kubernetes/cf521-tracer.yaml"))
            .expect("the DaemonSet");
        Confinement::parse_daemonset(&text)
    }

    pub fn parse_daemonset(text: &str) -> Confinement {
        // `add: [BPF, PERFMON, NET_ADMIN]` under `capabilities:` with `drop: [ALL]`.
        let add = text
            .lines()
            .map(str::trim)
            .find_map(|l| l.strip_prefix("add:"))
            .expect("capabilities.add in the DaemonSet");
        assert!(
            text.lines().any(|l| l.trim() == "drop: [ALL]"),
            "the DaemonSet must drop every other capability"
        );
        let caps = add
            .trim()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .split(',')
            .map(|c| c.trim().trim_start_matches("CAP_").to_ascii_lowercase())
            .filter(|c| !c.is_empty())
            .collect();
        // A container's uid 0 keeps only its capability set across exec, as noroot does.
        Confinement {
            caps,
            noroot: true,
            protect_proc: false,
            from: "deploy/kubernetes/cf521-tracer.yaml",
        }
    }

    /// From `TRACER_CONFINE`: `unit`, `daemonset`, or none.
    pub fn from_env() -> Option<Confinement> {
        match std::env::var("TRACER_CONFINE").ok()?.as_str() {
            "unit" => Some(Confinement::unit()),
            "daemonset" => Some(Confinement::daemonset()),
            "" => None,
            other => panic!("TRACER_CONFINE={other}: want unit or daemonset"),
        }
    }

    /// `setpriv` arguments that run a command so confined (before `--`).
    pub fn setpriv_args(&self) -> Vec<String> {
        let set: Vec<String> = self.caps.iter().map(|c| format!("+{c}")).collect();
        let mut args = vec![
            "--bounding-set".to_string(),
            format!("-all,{}", set.join(",")),
            "--inh-caps".to_string(),
            format!("-all,{}", set.join(",")),
            "--ambient-caps".to_string(),
            set.join(","),
        ];
        if self.noroot {
            args.push("--securebits".into());
            args.push("+noroot,+noroot_locked".into());
        }
        args
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_files_parse() {
        let u = Confinement::unit();
        assert!(u.caps.contains(&"bpf".to_string()) && u.noroot, "{u:?}");
        assert!(u.protect_proc, "{u:?}");
        let d = Confinement::daemonset();
        assert!(d.caps.contains(&"perfmon".to_string()), "{d:?}");
        let a = u.setpriv_args();
        assert_eq!(a[0], "--bounding-set");
        assert!(a[1].starts_with("-all,+"), "{a:?}");
    }
}
