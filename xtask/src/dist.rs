//! `cargo xtask dist`: the release artefacts in `target/dist/`.
//!
//! - `tracer`: one static (musl) x86_64 binary; it needs no libc, so it runs on any x86_64
//!   Linux whose kernel the tracer supports (Debian 11, Ubuntu 20.04, RHEL 8 included).
//! - `cf521-tracer_VERSION-1_amd64.deb` and `cf521-tracer-VERSION-1.x86_64.rpm`: that binary
//!   in /usr/bin, the systemd unit, man pages, bash/zsh/fish completions, the README under
//!   /usr/share/doc/cf521-tracer, and the fleet files (alerts, dashboard, log schema) under
//!   /usr/share/cf521-tracer.
//! - `SHA256SUMS` of all three.
//!
//! Both packages are built from one staged tree, so they hold the same files.

use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _, Result};

use crate::{cargo, run_cmd, workspace_root};

const TARGET: &str = "x86_64-unknown-linux-musl";
const PACKAGE: &str = "cf521-tracer";
const SUMMARY: &str = "Explains Cloudflare HTTP 521/522/520 from the origin's own kernel (eBPF)";
const DESCRIPTION: &str = "tracer watches, from the origin's kernel, how Cloudflare's connections arrive and how the TCP stack answers them, and names the cause of a 521: nothing listening, a firewall or fail2ban dropping Cloudflare's ranges, a full accept queue, resets, replies routed the wrong way, or SYNs that never arrive. `tracer diagnose` answers during an incident; `tracer agent` runs on every origin with Prometheus metrics and JSON logs.";
/// Reserved for documentation (RFC 2606): the packages name no real person.
const MAINTAINER: &str = "cf521-tracer maintainers <maintainers@cf521-tracer.invalid>";

fn version() -> &'static str {
    env!("CARGO_PKG_VERSION")
}

/// Builds everything into `target/dist` and returns that directory.
pub fn run() -> Result<PathBuf> {
    let root = workspace_root();
    let out = root.join("target/dist");
    let binary = build_static(&root)?;
    if fs::symlink_metadata(&out).is_ok() {
        fs::remove_dir_all(&out).with_context(|| format!("cannot clear {}", out.display()))?;
    }
    fs::create_dir_all(&out)?;
    let static_bin = out.join("tracer");
    fs::copy(&binary, &static_bin)?;
    // Symbols off (a third of the size): backtraces are not shown to users anyway.
    run_cmd(Command::new("strip").arg("--strip-all").arg(&static_bin))?;

    let stage = out.join("stage");
    stage_tree(&root, &static_bin, &stage)?;
    let deb = deb(&stage, &out)?;
    let rpm = rpm(&stage, &out)?;
    fs::remove_dir_all(&stage)?;

    let mut sums = String::new();
    for f in [&static_bin, &deb, &rpm] {
        let out = Command::new("sha256sum")
            .arg(f)
            .current_dir(&out)
            .output()?;
        let line = String::from_utf8_lossy(&out.stdout);
        let hash = line.split_whitespace().next().unwrap_or_default();
        sums += &format!("{hash}  {}\n", f.file_name().unwrap().to_string_lossy());
    }
    fs::write(out.join("SHA256SUMS"), sums)?;
    for f in [&static_bin, &deb, &rpm] {
        let size = fs::metadata(f)?.len();
        eprintln!("dist: {} ({:.1} MiB)", f.display(), size as f64 / 1048576.0);
    }
    Ok(out)
}

/// `cargo build --release --target x86_64-unknown-linux-musl`, checked to be static.
pub fn build_static(root: &Path) -> Result<PathBuf> {
    let installed = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .context("rustup is needed for the musl target")?;
    if !String::from_utf8_lossy(&installed.stdout)
        .lines()
        .any(|l| l.trim() == TARGET)
    {
        run_cmd(Command::new("rustup").args(["target", "add", TARGET]))?;
    }
    if which("musl-gcc").is_none() {
        bail!("musl-gcc not found: `apt-get install musl-tools` (cargo xtask setup installs it); ring's C code is compiled with it for the static binary");
    }
    run_cmd(
        cargo()
            .args([
                "build",
                "--release",
                "--package",
                "tracer",
                "--target",
                TARGET,
            ])
            .env("CC_x86_64_unknown_linux_musl", "musl-gcc"),
    )?;
    let bin = root.join(format!("target/{TARGET}/release/tracer"));
    let bytes = fs::read(&bin).with_context(|| format!("cannot read {}", bin.display()))?;
    if has_interpreter(&bytes)? {
        bail!(
            "{} asks for a dynamic loader: it is not static",
            bin.display()
        );
    }
    Ok(bin)
}

/// Whether an ELF64 executable has a PT_INTERP program header (needs a dynamic loader).
fn has_interpreter(elf: &[u8]) -> Result<bool> {
    if elf.len() < 64 || &elf[..4] != b"\x7fELF" || elf[4] != 2 {
        bail!("not an ELF64 file");
    }
    let u16_at = |o: usize| u16::from_le_bytes([elf[o], elf[o + 1]]) as usize;
    let phoff = u64::from_le_bytes(elf[0x20..0x28].try_into()?) as usize;
    let (size, count) = (u16_at(0x36), u16_at(0x38));
    for i in 0..count {
        let at = phoff + i * size;
        let Some(kind) = elf.get(at..at + 4) else {
            bail!("truncated program headers");
        };
        if u32::from_le_bytes(kind.try_into()?) == 3 {
            return Ok(true);
        }
    }
    Ok(false)
}

fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

fn put(stage: &Path, rel: &str, contents: &[u8], mode: u32) -> Result<()> {
    let path = stage.join(rel);
    fs::create_dir_all(path.parent().unwrap())?;
    fs::write(&path, contents).with_context(|| format!("cannot write {}", path.display()))?;
    fs::set_permissions(&path, fs::Permissions::from_mode(mode))?;
    Ok(())
}

fn tracer_output(bin: &Path, args: &[&str]) -> Result<Vec<u8>> {
    let out = Command::new(bin).args(args).output()?;
    if !out.status.success() {
        bail!(
            "tracer {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out.stdout)
}

/// The installed tree, shared by both packages (zsh's completion directory differs: Debian
/// reads vendor-completions, Fedora/RHEL site-functions; both are written).
fn stage_tree(root: &Path, bin: &Path, stage: &Path) -> Result<()> {
    put(stage, "usr/bin/tracer", &fs::read(bin)?, 0o755)?;
    let unit = fs::read_to_string(root.join("deploy/tracer.service"))?;
    if !unit.contains("ExecStart=/usr/bin/tracer ") {
        bail!("deploy/tracer.service must run /usr/bin/tracer, where the packages put it");
    }
    put(
        stage,
        "usr/lib/systemd/system/cf521-tracer.service",
        unit.as_bytes(),
        0o644,
    )?;
    let man_dir = stage.join("usr/share/man/man1");
    let bin_s = bin.to_str().context("path")?;
    tracer_output(
        Path::new(bin_s),
        &["man", "--dir", man_dir.to_str().context("path")?],
    )?;
    for page in fs::read_dir(&man_dir)? {
        let page = page?.path();
        let gz = Command::new("gzip")
            .args(["-9", "-n", "-f"])
            .arg(&page)
            .status()?;
        if !gz.success() {
            bail!("gzip {} failed", page.display());
        }
        fs::set_permissions(
            page.with_extension("1.gz"),
            fs::Permissions::from_mode(0o644),
        )?;
    }
    for (shell, rels) in [
        (
            "bash",
            &["usr/share/bash-completion/completions/tracer"][..],
        ),
        (
            "zsh",
            &[
                "usr/share/zsh/vendor-completions/_tracer",
                "usr/share/zsh/site-functions/_tracer",
            ][..],
        ),
        (
            "fish",
            &["usr/share/fish/vendor_completions.d/tracer.fish"][..],
        ),
    ] {
        let text = tracer_output(bin, &["completions", shell])?;
        for rel in rels {
            put(stage, rel, &text, 0o644)?;
        }
    }
    let doc = format!("usr/share/doc/{PACKAGE}");
    put(
        stage,
        &format!("{doc}/README.md"),
        &fs::read(root.join("README.md"))?,
        0o644,
    )?;
    put(
        stage,
        &format!("{doc}/copyright"),
        copyright(root)?.as_bytes(),
        0o644,
    )?;
    for file in ["CHANGELOG.md", "LICENSE-MIT", "LICENSE-APACHE"] {
        put(
            stage,
            &format!("{doc}/{file}"),
            &fs::read(root.join(file))?,
            0o644,
        )?;
    }
    put(stage, DEFAULTS_PATH, DEFAULTS.as_bytes(), 0o644)?;
    // Debian's place for a native package's changelog (the .rpm carries it too, and in %changelog).
    let changelog = stage.join(format!("{doc}/changelog"));
    fs::write(&changelog, debian_changelog())?;
    run_cmd(
        Command::new("gzip")
            .args(["-9", "-n", "-f"])
            .arg(&changelog),
    )?;
    fs::set_permissions(
        changelog.with_extension("gz"),
        fs::Permissions::from_mode(0o644),
    )?;
    let data = format!("usr/share/{PACKAGE}");
    for (from, to) in [
        ("deploy/alerts.yml", "alerts.yml"),
        ("deploy/alerts.test.yml", "alerts.test.yml"),
        (
            "deploy/grafana/cf521-tracer.json",
            "grafana/cf521-tracer.json",
        ),
        (
            "deploy/schema/log-record.schema.json",
            "schema/log-record.schema.json",
        ),
        (
            "deploy/schema/report.schema.json",
            "schema/report.schema.json",
        ),
        (
            "deploy/kubernetes/cf521-tracer.yaml",
            "kubernetes/cf521-tracer.yaml",
        ),
        (
            "deploy/kubernetes/pod-monitor.yaml",
            "kubernetes/pod-monitor.yaml",
        ),
        (
            "deploy/kubernetes/prometheus-rule.yaml",
            "kubernetes/prometheus-rule.yaml",
        ),
        (
            "deploy/kubernetes/grafana-dashboard.yaml",
            "kubernetes/grafana-dashboard.yaml",
        ),
    ] {
        put(
            stage,
            &format!("{data}/{to}"),
            &fs::read(root.join(from))?,
            0o644,
        )?;
    }
    Ok(())
}

/// The agent's options file: a conffile (the admin's edits survive upgrades).
const DEFAULTS_PATH: &str = "etc/default/cf521-tracer";
const DEFAULTS: &str = "# Options for the cf521-tracer agent: the packaged systemd unit reads this file.\n# TRACER_OPTS is appended to the agent's command line; an option given here overrides the\n# unit's default (--metrics-addr, --log-file, --window, --refresh-ranges-every).\n# See `man tracer-agent`. Then: systemctl restart cf521-tracer\n# Example: TRACER_OPTS=\"--port 443,8443 --hostname example.com\"\nTRACER_OPTS=\"\"\n";

/// Debian's machine-readable copyright file, with both licence texts in full.
fn copyright(root: &Path) -> Result<String> {
    let indent = |text: &str| -> String {
        text.lines()
            .map(|l| {
                if l.trim().is_empty() {
                    " .\n".to_string()
                } else {
                    format!(" {l}\n")
                }
            })
            .collect()
    };
    Ok(format!(
        "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\nUpstream-Name: {PACKAGE}\n\nFiles: *\nCopyright: 2026 The cf521-tracer authors\nLicense: MIT or Apache-2.0\n\nLicense: MIT\n{}\nLicense: Apache-2.0\n{}",
        indent(&fs::read_to_string(root.join("LICENSE-MIT"))?),
        indent(&fs::read_to_string(root.join("LICENSE-APACHE"))?),
    ))
}

/// Every regular file under `dir`, relative, sorted.
fn files_under(dir: &Path) -> Result<Vec<String>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d)? {
            let p = e?.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p.strip_prefix(dir)?.to_string_lossy().into_owned());
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Not enabled or started on install: the admin chooses its options first (`systemctl enable
/// --now cf521-tracer`). On upgrade (`configure` with the old version) a running agent is
/// restarted on the new binary, a stopped one stays stopped (try-restart), through
/// deb-systemd-invoke where it exists (it honours policy-rc.d).
const POSTINST: &str = r#"#!/bin/sh
set -e
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || true
    if [ "$1" = configure ] && [ -n "$2" ]; then
        if command -v deb-systemd-invoke >/dev/null 2>&1; then
            deb-systemd-invoke try-restart cf521-tracer.service >/dev/null 2>&1 || true
        else
            systemctl try-restart cf521-tracer.service >/dev/null 2>&1 || true
        fi
    fi
fi
"#;
/// Removal stops the agent (an upgrade does not: postinst restarts it).
const PRERM: &str = r#"#!/bin/sh
set -e
if [ -d /run/systemd/system ] && [ "$1" = remove ]; then
    systemctl stop cf521-tracer.service >/dev/null 2>&1 || true
fi
"#;
/// Purge also removes the state (the ranges cache) and the logs.
const POSTRM: &str = r#"#!/bin/sh
set -e
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || true
fi
if [ "$1" = purge ]; then
    rm -rf /var/lib/cf521-tracer /var/log/cf521-tracer
fi
"#;

/// The Debian changelog of this version (a native package's `changelog.gz`), pointing at
/// CHANGELOG.md for the details.
fn debian_changelog() -> String {
    format!(
        "{PACKAGE} ({v}-1) unstable; urgency=medium\n\n  * Release {v}: see /usr/share/doc/{PACKAGE}/CHANGELOG.md.\n\n -- {MAINTAINER}  Fri, 04 Dec 2026 00:00:00 +0000\n",
        v = version()
    )
}

fn deb(stage: &Path, out: &Path) -> Result<PathBuf> {
    let work = out.join("deb-root");
    run_cmd(Command::new("cp").args(["-a"]).arg(stage).arg(&work))?;
    let files: Vec<String> = files_under(&work)?
        .into_iter()
        .filter(|f| !f.starts_with("etc/"))
        .collect();
    let mut sums = String::new();
    let mut size = 0u64;
    for f in &files {
        let o = Command::new("md5sum").arg(f).current_dir(&work).output()?;
        sums += &String::from_utf8_lossy(&o.stdout);
        size += fs::metadata(work.join(f))?.len();
    }
    let control = format!(
        "Package: {PACKAGE}\nVersion: {v}-1\nArchitecture: amd64\nMaintainer: {MAINTAINER}\nInstalled-Size: {kib}\nSection: net\nPriority: optional\nRecommends: nftables | iptables, iproute2\nDescription: {SUMMARY}\n {desc}\n",
        v = version(),
        kib = size.div_ceil(1024),
        desc = DESCRIPTION,
    );
    put(&work, "DEBIAN/control", control.as_bytes(), 0o644)?;
    put(
        &work,
        "DEBIAN/conffiles",
        format!("/{DEFAULTS_PATH}\n").as_bytes(),
        0o644,
    )?;

    put(&work, "DEBIAN/md5sums", sums.as_bytes(), 0o644)?;
    put(&work, "DEBIAN/postinst", POSTINST.as_bytes(), 0o755)?;
    put(&work, "DEBIAN/prerm", PRERM.as_bytes(), 0o755)?;
    put(&work, "DEBIAN/postrm", POSTRM.as_bytes(), 0o755)?;
    let deb = out.join(format!("{PACKAGE}_{}-1_amd64.deb", version()));
    run_cmd(
        Command::new("dpkg-deb")
            .args(["--root-owner-group", "-Zxz", "--build"])
            .arg(&work)
            .arg(&deb),
    )?;
    fs::remove_dir_all(&work)?;
    Ok(deb)
}

fn rpm(stage: &Path, out: &Path) -> Result<PathBuf> {
    if which("rpmbuild").is_none() {
        bail!("rpmbuild not found: `apt-get install rpm` (cargo xtask setup installs it)");
    }
    let top = out.join("rpmbuild");
    for d in ["BUILD", "RPMS", "SOURCES", "SPECS", "SRPMS", "BUILDROOT"] {
        fs::create_dir_all(top.join(d))?;
    }
    let files = files_under(stage)?;
    let mut list = String::new();
    for f in &files {
        if f.starts_with("usr/share/doc/") || f.starts_with("usr/share/man/") {
            list += &format!("%doc /{f}\n");
        } else if f == DEFAULTS_PATH {
            list += &format!("%config(noreplace) /{f}\n");
        } else {
            list += &format!("/{f}\n");
        }
    }
    let spec = format!(
        r#"Name: {PACKAGE}
Version: {v}
Release: 1
Summary: {SUMMARY}
License: MIT OR Apache-2.0
BuildArch: x86_64
AutoReqProv: no
Recommends: nftables
Recommends: iproute

# The binary is built and staged by `cargo xtask dist`: nothing to compile or strip here.
%global __os_install_post %{{nil}}
%global _build_id_links none
%global debug_package %{{nil}}

%description
{DESCRIPTION}

%install
mkdir -p %{{buildroot}}
cp -a {stage}/. %{{buildroot}}/

%post
if [ -d /run/systemd/system ]; then systemctl daemon-reload >/dev/null 2>&1 || true; fi

%preun
# Removal (not an upgrade) stops the agent.
if [ -d /run/systemd/system ] && [ "$1" = 0 ]; then systemctl stop cf521-tracer.service >/dev/null 2>&1 || true; fi

%postun
# %systemd_postun_with_restart: on upgrade a running agent restarts on the new binary.
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || true
    if [ "$1" -ge 1 ]; then systemctl try-restart cf521-tracer.service >/dev/null 2>&1 || true; fi
fi

%files
{list}
%changelog
* Fri Dec 04 2026 {MAINTAINER} - {v}-1
- Release {v}: see /usr/share/doc/{PACKAGE}/CHANGELOG.md.
"#,
        v = version(),
        stage = stage.display(),
    );
    let spec_path = top.join("SPECS/cf521-tracer.spec");
    fs::write(&spec_path, spec)?;
    run_cmd(
        Command::new("rpmbuild")
            .arg("--define")
            .arg(format!("_topdir {}", top.display()))
            .args(["--quiet", "-bb"])
            .arg(&spec_path),
    )?;
    let built = top.join(format!("RPMS/x86_64/{PACKAGE}-{}-1.x86_64.rpm", version()));
    let rpm = out.join(built.file_name().unwrap());
    fs::rename(&built, &rpm).with_context(|| format!("rpmbuild made no {}", built.display()))?;
    fs::remove_dir_all(&top)?;
    Ok(rpm)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dynamic_executable_has_an_interpreter() {
        // This test's own executable is dynamically linked on glibc.
        let me = fs::read(std::env::current_exe().unwrap()).unwrap();
        assert!(has_interpreter(&me).unwrap());
        assert!(has_interpreter(b"not an elf").is_err());
    }
}
