//! What the tracer cannot run without, checked before anything is loaded, so a kernel it
//! cannot serve stops with one line naming the missing feature and the oldest kernel that has
//! it — not an errno from deep inside the loader. Everything else is probed as it loads (the
//! coarse clock, tcx, BTF tracepoints, drop reasons) and degrades with a note.

use std::path::Path;

use anyhow::{bail, Result};

use super::btf::VMLINUX_BTF;

/// BTF of the running kernel: tracepoint arguments, `sk_buff` and `sock` layouts.
pub fn check() -> Result<()> {
    check_btf(Path::new(VMLINUX_BTF))
}

fn check_btf(path: &Path) -> Result<()> {
    if !path.exists() {
        bail!(
            "this kernel has no BTF ({}): the tracer needs a kernel built with CONFIG_DEBUG_INFO_BTF=y (Debian's from 5.10, Ubuntu's from 20.10, RHEL's from 8.2)",
            path.display()
        );
    }
    Ok(())
}

/// The running kernel's release (`uname -r`), e.g. `6.18.0-1-amd64`; `unknown` if uname fails.
pub fn release() -> String {
    // SAFETY: uname fills the zeroed struct it is given; the release is NUL-terminated.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    if unsafe { libc::uname(&mut u) } != 0 {
        return "unknown".into();
    }
    let bytes: Vec<u8> = u
        .release
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// The loader's failure in the words of the missing feature, when it is one: the event ring
/// buffer is a `BPF_MAP_TYPE_RINGBUF`, which arrived in 5.8.
pub fn explain_load_error(e: &anyhow::Error) -> Option<String> {
    let chain = format!("{e:#}");
    (chain.contains("EVENTS") && (chain.contains("Invalid argument") || chain.contains("os error 22")))
        .then(|| {
            "this kernel has no BPF ring buffer (BPF_MAP_TYPE_RINGBUF, Linux 5.8 and later): upgrade the kernel".to_string()
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_features_are_named_with_the_kernel_that_has_them() {
        let e = check_btf(Path::new("/nonexistent/btf/vmlinux"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("no BTF") && e.contains("CONFIG_DEBUG_INFO_BTF"),
            "{e}"
        );
        assert!(check_btf(Path::new("/")).is_ok());
        let load = anyhow::anyhow!("map create failed for EVENTS: Invalid argument (os error 22)")
            .context("loading the eBPF programs");
        assert!(explain_load_error(&load).unwrap().contains("5.8"));
        assert!(explain_load_error(&anyhow::anyhow!("verifier said no")).is_none());
    }
}
