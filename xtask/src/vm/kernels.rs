//! Debian's kernel packages, fetched with a private apt configuration (its own sources list,
//! state and cache under `target/vm/apt`, the system keyring) that leaves the machine's apt
//! setup untouched, extracted under `target/vm/kernels/<release>/`, with `depmod` run so the
//! guest's modprobe finds netfilter, veth and the rest on demand.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _, Result};

/// Where each kernel line comes from (Debian's archive; not bullseye-backports).
const SOURCES: &str = "\
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian-security bullseye-security main
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm main
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm-backports main
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian trixie-backports main
";

/// The kernels of the matrix: 5.10 (bullseye-security), 6.1 (bookworm), 6.12
/// (bookworm-backports), the newest from trixie-backports.
pub const DEFAULT: [&str; 4] = ["5.10", "6.1", "6.12", "7.3"];

/// An extracted kernel.
pub struct Kernel {
    /// As asked for: "6.1".
    pub line: String,
    /// The full release: "6.1.0-50-amd64".
    pub release: String,
    pub vmlinuz: PathBuf,
    /// The root the package was extracted to (`lib/modules/<release>` under it).
    pub root: PathBuf,
}

impl Kernel {
    pub fn modules(&self) -> PathBuf {
        self.root.join("lib/modules").join(&self.release)
    }
}

struct Apt {
    dir: PathBuf,
}

impl Apt {
    fn new(dir: &Path) -> Result<Self> {
        for sub in [
            "state/lists/partial",
            "cache/archives/partial",
            "etc",
            "debs",
        ] {
            std::fs::create_dir_all(dir.join(sub))?;
        }
        std::fs::write(dir.join("etc/sources.list"), SOURCES)?;
        let d = dir.display();
        std::fs::write(
            dir.join("etc/apt.conf"),
            format!(
                "Dir::State \"{d}/state\";\nDir::State::status \"{d}/state/status\";\nDir::Cache \"{d}/cache\";\nDir::Etc::SourceList \"{d}/etc/sources.list\";\nDir::Etc::SourceParts \"/nonexistent\";\nAPT::Sandbox::User \"root\";\n"
            ),
        )?;
        if !dir.join("state/status").exists() {
            std::fs::write(dir.join("state/status"), "")?;
        }
        Ok(Self {
            dir: dir.to_path_buf(),
        })
    }

    fn cmd(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        c.env("APT_CONFIG", self.dir.join("etc/apt.conf"));
        c
    }

    fn output(&self, program: &str, args: &[&str]) -> Result<String> {
        let out = self
            .cmd(program)
            .args(args)
            .output()
            .with_context(|| format!("cannot run {program}"))?;
        if !out.status.success() {
            bail!(
                "{program} {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn update(&self) -> Result<()> {
        self.output("apt-get", &["update", "-qq"]).map(|_| ())
    }

    /// The newest generic amd64 image package of a kernel line (not rt, cloud or a meta).
    fn newest_image(&self, line: &str) -> Result<String> {
        let pattern = format!(
            "^linux-image-{}[.-][0-9].*-amd64$",
            line.replace('.', "\\.")
        );
        let found = self.output("apt-cache", &["search", "--names-only", &pattern])?;
        let mut names: Vec<String> = found
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .filter(|n| !n.contains("-rt-") && !n.contains("-cloud-") && !n.contains("unsigned"))
            .map(String::from)
            .collect();
        names.sort_by_key(|n| version_key(n));
        names
            .pop()
            .with_context(|| format!("no Debian kernel package for {line} in the archive"))
    }

    /// The image package and, from 7.x, the binary/modules/base packages it depends on.
    fn packages(&self, image: &str) -> Result<Vec<String>> {
        let suffix = image.trim_start_matches("linux-image-");
        let deps = self.output("apt-cache", &["depends", image])?;
        let mut out = vec![image.to_string()];
        for kind in ["linux-binary-", "linux-modules-", "linux-base-"] {
            let name = format!("{kind}{suffix}");
            if deps.contains(&name) {
                out.push(name);
            }
        }
        Ok(out)
    }
}

/// Numeric parts of a package name, to pick the newest: 6.1.0-50 > 6.1.0-0.deb11.52.
fn version_key(name: &str) -> Vec<u64> {
    name.split(|c: char| !c.is_ascii_digit())
        .filter(|p| !p.is_empty())
        .map(|p| p.parse().unwrap_or(0))
        .collect()
}

/// Fetches (or finds in the cache) and extracts each kernel line.
pub fn fetch(lines: &[String], vm_dir: &Path) -> Result<Vec<Kernel>> {
    let apt = Apt::new(&vm_dir.join("apt"))?;
    apt.update()
        .context("apt-get update (private configuration)")?;
    let mut kernels = Vec::new();
    for line in lines {
        let image = apt.newest_image(line)?;
        let root = vm_dir.join("kernels").join(&image);
        let done = root.join(".extracted");
        if !done.exists() {
            let debs = apt.dir.join("debs");
            let pkgs = apt.packages(&image)?;
            let mut get = apt.cmd("apt-get");
            get.current_dir(&debs)
                .arg("download")
                .arg("-qq")
                .args(&pkgs);
            crate::run_cmd(&mut get)?;
            let _ = std::fs::remove_dir_all(&root);
            std::fs::create_dir_all(&root)?;
            for p in &pkgs {
                let deb = std::fs::read_dir(&debs)?
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .find(|f| {
                        f.file_name()
                            .and_then(|n| n.to_str())
                            .is_some_and(|n| n.starts_with(&format!("{p}_")))
                    })
                    .with_context(|| format!("{p} was not downloaded"))?;
                crate::run_cmd(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root))?;
            }
        }
        let release = std::fs::read_dir(root.join("lib/modules"))
            .or_else(|_| std::fs::read_dir(root.join("usr/lib/modules")))
            .context("no modules directory in the package")?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .next()
            .context("no kernel release in the package")?;
        // 7.x installs under usr/lib/modules: give it the usual path too.
        if !root.join("lib/modules").exists() {
            std::fs::create_dir_all(root.join("lib"))?;
            std::os::unix::fs::symlink("../usr/lib/modules", root.join("lib/modules"))?;
        }
        if !done.exists() {
            crate::run_cmd(Command::new("depmod").arg("-b").arg(&root).arg(&release))?;
            std::fs::write(&done, &release)?;
        }
        let vmlinuz = [
            root.join(format!("boot/vmlinuz-{release}")),
            root.join(format!("lib/modules/{release}/vmlinuz")),
        ]
        .into_iter()
        .find(|p| p.exists())
        .with_context(|| format!("no vmlinuz in {}", root.display()))?;
        kernels.push(Kernel {
            line: line.clone(),
            release,
            vmlinuz,
            root,
        });
    }
    Ok(kernels)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newest_by_numbers() {
        let mut v = [
            "linux-image-6.1.0-0.deb11.52-amd64",
            "linux-image-6.1.0-50-amd64",
            "linux-image-6.1.0-9-amd64",
        ];
        v.sort_by_key(|n| version_key(n));
        assert_eq!(v.last(), Some(&"linux-image-6.1.0-50-amd64"));
    }
}
