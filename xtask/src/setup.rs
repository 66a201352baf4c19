//! `cargo xtask setup`: everything a fresh Debian machine needs to build and test, installed
//! only when missing.

use std::process::{Command, Stdio};

use anyhow::{bail, Context as _, Result};

use crate::run_cmd;

/// What building the tracer needs, and nothing else: LLVM 22 for bpf-linker. `build` and
/// `run` install only these — the README's main job runs on a production origin, where a test
/// package (nginx, Docker, fail2ban) would start a service and change what it diagnoses.
const BUILD_PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libpolly-22-dev",
    "zlib1g-dev",
    "libzstd-dev",
];

/// What testing, the lab, the benchmarks and the release artefacts need besides: iproute2,
/// nftables and iptables for the lab; prometheus for promtool; nginx and wrk for the
/// benchmarks; docker.io and busybox-static for the test that publishes containers with Docker
/// itself (its image is imported from busybox, offline); iperf3 and tcpdump for the
/// bulk-throughput benchmark; fail2ban and ufw for the field-verdict tests (run confined to lab
/// namespaces, never enabled on the host); qemu, kmod (depmod, and modprobe inside the guests),
/// cpio, xz and zstd for `vm-test`.
const TEST_PACKAGES: &[&str] = &[
    "iproute2",
    "nftables",
    "iptables",
    "prometheus",
    "nginx-light",
    "wrk",
    "procps",
    "docker.io",
    "busybox-static",
    "iperf3",
    "tcpdump",
    "fail2ban",
    "ufw",
    "qemu-system-x86",
    "kmod",
    "cpio",
    "xz-utils",
    "zstd",
    // cargo xtask dist: the static binary (ring's C code) and the .rpm.
    "musl-tools",
    "rpm",
    // The TLS tests make certificates and serve them (openssl s_server); the package tests
    // verify the installed unit (systemd-analyze).
    "openssl",
    "systemd",
    // The endpoint tests scrape over TLS with a password (curl); the range-refresh test serves
    // the API over HTTPS from a private CA (python3's http.server).
    "curl",
    "python3",
    // The Kubernetes manifests are checked against the API's own object models (the official
    // client, generated from the Kubernetes OpenAPI specification).
    "python3-kubernetes",
    // The unit's system call filter is checked against the calls the agent makes (strace).
    "strace",
];

const BPF_LINKER_VERSION: &str = "0.13.0";

/// Everything: building, testing, the lab, the benchmarks, the VMs and the release artefacts.
pub fn run() -> Result<()> {
    if std::env::var_os("XTASK_SKIP_SETUP").is_some() {
        eprintln!("setup: skipped (XTASK_SKIP_SETUP)");
        return Ok(());
    }
    debian_packages(&[BUILD_PACKAGES, TEST_PACKAGES].concat())?;
    rust_src()?;
    bpf_linker()?;
    musl_target()?;
    Ok(())
}

/// Only what building needs (`build`, `run`): no service is installed, enabled or started.
pub fn build_only() -> Result<()> {
    if std::env::var_os("XTASK_SKIP_SETUP").is_some() {
        eprintln!("setup: skipped (XTASK_SKIP_SETUP)");
        return Ok(());
    }
    debian_packages(BUILD_PACKAGES)?;
    rust_src()?;
    bpf_linker()
}

/// The static release binary's target (`cargo xtask dist`).
fn musl_target() -> Result<()> {
    let out = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .context("rustup is needed: install Rust with rustup")?;
    if String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| l.trim() == "x86_64-unknown-linux-musl")
    {
        eprintln!("setup: x86_64-unknown-linux-musl target present");
        return Ok(());
    }
    eprintln!("setup: adding the x86_64-unknown-linux-musl target (static release binary)");
    run_cmd(Command::new("rustup").args(["target", "add", "x86_64-unknown-linux-musl"]))
}

fn installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        .unwrap_or(false)
}

fn debian_packages(wanted: &[&str]) -> Result<()> {
    let missing: Vec<&str> = wanted.iter().copied().filter(|p| !installed(p)).collect();
    if missing.is_empty() {
        eprintln!("setup: Debian packages present");
        return Ok(());
    }
    if which("apt-get").is_none() {
        bail!(
            "missing packages {} and no apt-get: install them by hand",
            missing.join(" ")
        );
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "missing packages {}: run `sudo cargo xtask setup` (or install them)",
            missing.join(" ")
        );
    }
    eprintln!("setup: installing {}", missing.join(" "));
    // Installed packages never start their services here (dpkg asks policy-rc.d): a test
    // machine's lab starts what it needs itself, in its own namespaces.
    let _deny_services = DenyServiceStarts::new();
    run_cmd(Command::new("apt-get").args(["update", "-qq"]))?;
    run_cmd(
        Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

/// `/usr/sbin/policy-rc.d` answering 101 ("action not allowed") while it lives, so that
/// `apt-get install` starts no daemon (Debian's invoke-rc.d and deb-systemd-invoke honour it);
/// an existing policy is left alone.
struct DenyServiceStarts(Option<&'static str>);

impl DenyServiceStarts {
    const PATH: &'static str = "/usr/sbin/policy-rc.d";

    fn new() -> Self {
        use std::{io::Write as _, os::unix::fs::OpenOptionsExt as _};
        // create_new: an existing policy (or anything planted at the path) is left alone.
        let written = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o755)
            .open(Self::PATH)
            .and_then(|mut f| {
                f.write_all(b"#!/bin/sh\n# cargo xtask setup: no service starts during its install\nexit 101\n")
            });
        Self(written.is_ok().then_some(Self::PATH))
    }
}

impl Drop for DenyServiceStarts {
    fn drop(&mut self) {
        if let Some(path) = self.0 {
            let _ = std::fs::remove_file(path);
        }
    }
}

fn rust_src() -> Result<()> {
    let out = Command::new("rustup")
        .args(["component", "list", "--installed", "--toolchain", "nightly"])
        .output()
        .context("rustup is needed: install Rust with rustup")?;
    if !out.status.success() {
        bail!("the nightly toolchain is missing: `rustup toolchain install nightly`");
    }
    if String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| l.starts_with("rust-src"))
    {
        eprintln!("setup: rust-src (nightly) present");
        return Ok(());
    }
    eprintln!("setup: adding rust-src to nightly");
    run_cmd(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))
}

fn bpf_linker() -> Result<()> {
    if let Some(path) = which("bpf-linker") {
        let version = Command::new(&path)
            .arg("--version")
            .stderr(Stdio::null())
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        if version.contains(BPF_LINKER_VERSION) {
            eprintln!("setup: bpf-linker {BPF_LINKER_VERSION} present");
            return Ok(());
        }
        eprintln!(
            "setup: bpf-linker is `{}`, want {BPF_LINKER_VERSION}",
            version.trim()
        );
    }
    eprintln!("setup: building bpf-linker {BPF_LINKER_VERSION} against LLVM 22 (about a minute)");
    run_cmd(
        Command::new("cargo")
            .args([
                "install",
                "bpf-linker",
                "--version",
                BPF_LINKER_VERSION,
                "--no-default-features",
                "--features",
                "llvm-22",
                "--force",
            ])
            .env("LLVM_PREFIX", "/usr/lib/llvm-22"),
    )
}

fn which(program: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}
