//! One kernel in one VM: a small initramfs (busybox-static and the kernel's own virtio, 9p and
//! overlay modules) mounts this machine's root read-only over 9p under a tmpfs overlay, binds
//! the kernel's modules into it, and runs a script from a read-write results share; qemu
//! uses KVM when it answers within seconds and TCG otherwise. qemu exits 0 whatever the guest
//! did: the results come back as files.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

use super::kernels::Kernel;

/// Modules the initramfs loads, with what modules.dep says they need.
const BOOT_MODULES: [&str; 4] = ["virtio_pci", "9pnet_virtio", "9p", "overlay"];

/// The init of the initramfs: modules, the host root under an overlay, the results share,
/// then the script the results share holds, as the new root's process 1.
const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
for m in $(cat /modules.order); do insmod /modules/$m 2>/dev/null; done
mkdir -p /host /ovl /newroot
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=512000,cache=loose hostroot /host || { echo "vm: no 9p root"; poweroff -f; }
mount -t tmpfs -o size=1g tmpfs /ovl
mkdir -p /ovl/upper /ovl/work
mount -t overlay overlay -o lowerdir=/host,upperdir=/ovl/upper,workdir=/ovl/work /newroot
mkdir -p /newroot/results /newroot/lib/modules/$(uname -r)
mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 results /newroot/results
mount --bind /host$(cat /modules.path) /newroot/lib/modules/$(uname -r)
mount --move /proc /newroot/proc; mount --move /sys /newroot/sys; mount --move /dev /newroot/dev
exec switch_root /newroot /bin/sh /results/run.sh
"#;

/// How qemu runs the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    pub fn name(self) -> &'static str {
        match self {
            Accel::Kvm => "KVM",
            Accel::Tcg => "TCG",
        }
    }
}

/// KVM if a guest boots with it and powers off within seconds; TCG otherwise (on some
/// machines KVM aborts or hangs, and TCG reaches a shell in about 3 s).
pub fn choose_accel(k: &Kernel, initrd: &Path, dir: &Path) -> Accel {
    if !Path::new("/dev/kvm").exists() {
        return Accel::Tcg;
    }
    let probe = dir.join("kvm-probe");
    let _ = std::fs::remove_dir_all(&probe);
    if std::fs::create_dir_all(&probe).is_err()
        || std::fs::write(
            probe.join("run.sh"),
            "#!/bin/sh
echo ok > /results/ok
echo 1 > /proc/sys/kernel/sysrq
sync; echo o > /proc/sysrq-trigger
",
        )
        .is_err()
    {
        return Accel::Tcg;
    }
    let ran = boot(
        k,
        initrd,
        &probe,
        Accel::Kvm,
        Duration::from_secs(20),
        false,
    );
    if ran.is_ok() && probe.join("ok").exists() {
        Accel::Kvm
    } else {
        Accel::Tcg
    }
}

/// Builds the initramfs for `k` under `dir`.
pub fn initramfs(k: &Kernel, dir: &Path) -> Result<PathBuf> {
    let tree = dir.join("initramfs");
    let _ = std::fs::remove_dir_all(&tree);
    for sub in ["bin", "modules", "proc", "sys", "dev"] {
        std::fs::create_dir_all(tree.join(sub))?;
    }
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .context("busybox-static is needed (cargo xtask setup installs it)")?;
    std::fs::copy(busybox, tree.join("bin/busybox"))?;
    std::fs::write(tree.join("init"), INIT)?;
    crate::run_cmd(Command::new("chmod").arg("755").arg(tree.join("init")))?;
    let order = module_order(&k.modules())?;
    let mut names = Vec::new();
    for rel in &order {
        let src = k.modules().join(rel);
        let name = Path::new(rel)
            .file_name()
            .and_then(|n| n.to_str())
            .context("module name")?;
        let plain = name
            .trim_end_matches(".xz")
            .trim_end_matches(".zst")
            .to_string();
        let out = tree.join("modules").join(&plain);
        // busybox insmod wants the plain object: decompress here.
        if name.ends_with(".xz") {
            let data = Command::new("xz").arg("-dc").arg(&src).output()?;
            std::fs::write(&out, data.stdout)?;
        } else if name.ends_with(".zst") {
            let data = Command::new("zstd").arg("-dc").arg(&src).output()?;
            std::fs::write(&out, data.stdout)?;
        } else {
            std::fs::copy(&src, &out)?;
        }
        names.push(plain);
    }
    std::fs::write(tree.join("modules.order"), names.join("\n"))?;
    std::fs::write(
        tree.join("modules.path"),
        k.modules().canonicalize()?.display().to_string(),
    )?;
    let image = dir.join("initramfs.cpio.gz");
    crate::run_cmd(Command::new("sh").arg("-c").arg(format!(
        "cd {} && find . | cpio -o -H newc --quiet | gzip -1 > {}",
        tree.display(),
        image.display()
    )))?;
    Ok(image)
}

/// The boot modules and their dependencies, dependencies first (from modules.dep; built-in
/// ones are absent from it and need nothing).
fn module_order(modules: &Path) -> Result<Vec<String>> {
    let dep = std::fs::read_to_string(modules.join("modules.dep"))
        .context("modules.dep (depmod has not run)")?;
    let deps_of = |m: &str| -> Option<(String, Vec<String>)> {
        dep.lines().find_map(|l| {
            let (path, deps) = l.split_once(':')?;
            let base = Path::new(path).file_name()?.to_str()?;
            let stem = base.split(".ko").next()?;
            (stem == m || stem.replace('-', "_") == m).then(|| {
                (
                    path.to_string(),
                    deps.split_whitespace().map(String::from).collect(),
                )
            })
        })
    };
    let mut out: Vec<String> = Vec::new();
    let mut seen = BTreeSet::new();
    fn visit(path: &str, dep: &str, out: &mut Vec<String>, seen: &mut BTreeSet<String>) {
        if !seen.insert(path.to_string()) {
            return;
        }
        let deps: Vec<String> = dep
            .lines()
            .find_map(|l| {
                let (p, d) = l.split_once(':')?;
                (p == path).then(|| d.split_whitespace().map(String::from).collect())
            })
            .unwrap_or_default();
        for d in deps {
            visit(&d, dep, out, seen);
        }
        out.push(path.to_string());
    }
    for m in BOOT_MODULES {
        if let Some((path, _)) = deps_of(m) {
            visit(&path, &dep, &mut out, &mut seen);
        }
    }
    Ok(out)
}

/// Boots `k` with `initrd`, the results share at `results` (which holds run.sh), and waits
/// for it to power off, at most `limit`. Returns how long it ran.
pub fn boot(
    k: &Kernel,
    initrd: &Path,
    results: &Path,
    accel: Accel,
    limit: Duration,
    background: bool,
) -> Result<Duration> {
    let started = Instant::now();
    // In the background the emulator runs only on CPU time the host's own tests leave idle
    // (SCHED_IDLE): their timing matters; a guest that waits only takes longer.
    let mut qemu = if background {
        let mut idle = Command::new("chrt");
        idle.args(["--idle", "0", "qemu-system-x86_64"]);
        idle
    } else {
        Command::new("qemu-system-x86_64")
    };
    match accel {
        Accel::Kvm => qemu.args(["-accel", "kvm", "-cpu", "host"]),
        Accel::Tcg => qemu.args(["-accel", "tcg", "-cpu", "max"]),
    };
    qemu.args(["-m", "2048", "-smp", "2"])
        .args(["-nographic", "-no-reboot", "-nodefaults", "-serial"])
        .arg(format!("file:{}", results.join("console.log").display()))
        .arg("-kernel")
        .arg(&k.vmlinuz)
        .arg("-initrd")
        .arg(initrd)
        .args(["-append", "console=ttyS0 panic=-1 quiet"])
        .args([
            "-virtfs",
            "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap",
        ])
        .arg("-virtfs")
        .arg(format!(
            "local,path={},mount_tag=results,security_model=none",
            results.display()
        ))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = qemu.spawn().context("starting qemu-system-x86_64")?;
    loop {
        if let Some(status) = child.try_wait()? {
            if !status.success() {
                let mut err = String::new();
                if let Some(mut e) = child.stderr.take() {
                    use std::io::Read as _;
                    let _ = e.read_to_string(&mut err);
                }
                bail!("qemu failed ({status}): {}", err.trim());
            }
            return Ok(started.elapsed());
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{} did not finish within {:?}", k.release, limit);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
