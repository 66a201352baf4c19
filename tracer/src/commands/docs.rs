//! Documentation generated from the command line's own definition, so it never drifts from
//! it: shell completions (`tracer completions SHELL`) and man pages (`tracer man --dir DIR`,
//! hidden: the packages run it at build time).

use std::{io::Write as _, path::Path};

use anyhow::{Context as _, Result};
use clap::CommandFactory as _;

use crate::cli::Cli;

pub fn completions(shell: clap_complete::Shell) -> Result<()> {
    let mut cmd = Cli::command();
    let mut out = std::io::stdout().lock();
    clap_complete::generate(shell, &mut cmd, "tracer", &mut out);
    out.flush()?;
    Ok(())
}

/// `tracer.1` and one page per visible subcommand (`tracer-diagnose.1`, ...), into `dir`
/// (created if missing; existing pages are replaced, never followed through a symlink).
pub fn man_pages(dir: &Path) -> Result<Vec<String>> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let cmd = Cli::command();
    let mut written = Vec::new();
    let mut write = |name: String, page: clap::Command| -> Result<()> {
        let mut buf = Vec::new();
        clap_mangen::Man::new(page).render(&mut buf)?;
        let path = dir.join(format!("{name}.1"));
        crate::safe_fs::write_atomic(&path, &buf, 0o644)
            .with_context(|| format!("cannot write {}", path.display()))?;
        written.push(name);
        Ok(())
    };
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let name = format!("tracer-{}", sub.get_name());
        // clap names are &'static str (without its `string` feature): a few bytes, once.
        let page = sub.clone().name(&*name.clone().leak());
        write(name, page)?;
    }
    write("tracer".into(), cmd)?;
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_man_page_per_visible_command() {
        let dir = std::env::temp_dir().join(format!("tracer-man-{}", std::process::id()));
        let pages = man_pages(&dir).unwrap();
        for name in [
            "tracer",
            "tracer-diagnose",
            "tracer-agent",
            "tracer-events",
            "tracer-ranges",
        ] {
            assert!(pages.contains(&name.to_string()), "{pages:?}");
            let text = std::fs::read_to_string(dir.join(format!("{name}.1"))).unwrap();
            assert!(
                text.starts_with(".ie") || text.contains(".TH"),
                "{name}: {text}"
            );
        }
        assert!(!pages.iter().any(|p| p.contains("xdp-test-run")));
        let diagnose = std::fs::read_to_string(dir.join("tracer-diagnose.1")).unwrap();
        assert!(diagnose.contains("duration"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
