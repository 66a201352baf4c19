use anyhow::{anyhow, Context as _};
use aya_build::{Package, Toolchain};

/// Builds the kernel programs (`tracer-ebpf`) for bpfel with nightly and bpf-linker; the object
/// is embedded in the `tracer` binary. `AYA_BUILD_SKIP=1` skips it (host-only clippy/check).
fn main() -> anyhow::Result<()> {
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR not set")?;
    let root = std::path::Path::new(&manifest_dir)
        .parent()
        .ok_or_else(|| anyhow!("tracer crate has no parent directory"))?;
    let ebpf_dir = root.join("tracer-ebpf");
    let ebpf_dir = ebpf_dir
        .to_str()
        .ok_or_else(|| anyhow!("non-UTF-8 path {}", ebpf_dir.display()))?;
    println!(
        "cargo:rerun-if-changed={}",
        root.join("tracer-common").display()
    );
    // aya-build relays every line of the nested cargo's stderr as a `warning:` of this
    // crate: ~55 "Compiling …" lines that read as a broken build. Quiet keeps the errors (they
    // come as compiler messages) and drops the progress.
    if std::env::var_os("TRACER_EBPF_VERBOSE").is_none() {
        std::env::set_var("CARGO_TERM_QUIET", "true");
    }
    aya_build::build_ebpf(
        [Package {
            name: "tracer-ebpf",
            root_dir: ebpf_dir,
            ..Default::default()
        }],
        Toolchain::default(),
    )
}
