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
pub fn explain_load_error(e: &aya::EbpfError) -> Option<String> {
    // Matched on aya's typed error, not its text: creating the ring buffer map fails with
    // EINVAL where the kernel has no such map type.
    let no_ringbuf = matches!(
        e,
        aya::EbpfError::MapError(aya::maps::MapError::CreateError { name, io_error })
            if name == "EVENTS" && io_error.raw_os_error() == Some(libc::EINVAL)
    );
    no_ringbuf.then(|| {
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
        let create = |name: &str, errno: i32| {
            aya::EbpfError::MapError(aya::maps::MapError::CreateError {
                name: name.into(),
                io_error: std::io::Error::from_raw_os_error(errno),
            })
        };
        assert!(explain_load_error(&create("EVENTS", libc::EINVAL))
            .unwrap()
            .contains("5.8"));
        assert!(explain_load_error(&create("EVENTS", libc::EPERM)).is_none());
        assert!(explain_load_error(&create("SYN_LOG", libc::EINVAL)).is_none());
    }
}
