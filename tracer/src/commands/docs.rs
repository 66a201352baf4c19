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
        buf.extend_from_slice(extra_sections(&name).as_bytes());
        let path = dir.join(format!("{name}.1"));
        crate::sys::safe_fs::write_atomic(&path, &buf, 0o644)
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

/// A roff section: a heading and paragraphs, each `(tag, text)` an indented item when tagged.
fn section(title: &str, items: &[(&str, &str)]) -> String {
    let mut out = format!(".SH \"{title}\"\n");
    for (tag, text) in items {
        if tag.is_empty() {
            out += &format!(".PP\n{}\n", roff(text));
        } else {
            out += &format!(".TP\n\\fB{}\\fR\n{}\n", roff(tag), roff(text));
        }
    }
    out
}

/// Text safe in roff: backslashes doubled, a leading dot or quote escaped.
fn roff(text: &str) -> String {
    let t = text.replace('\\', "\\\\").replace('-', "\\-");
    match t.chars().next() {
        Some('.' | '\'') => format!("\\&{t}"),
        _ => t,
    }
}

const ENVIRONMENT: &[(&str, &str)] = &[
    ("TRACER_LOG", "Diagnostics on stderr: error, warn (default), info, debug, or a tracing filter."),
    ("TRACER_STATE_DIR", "Where the ranges cache lives (default: /var/lib/cf521-tracer as root, else $XDG_STATE_HOME/cf521-tracer)."),
    ("NO_COLOR", "Set to any value: no colour on stderr (there is none unless stderr is a terminal)."),
];

/// EXIT STATUS, ENVIRONMENT, FILES and EXAMPLES of each page.
fn extra_sections(page: &str) -> String {
    let mut out = String::new();
    match page {
        "tracer-diagnose" => {
            out += &section("EXIT STATUS", &[
                ("0", "The diagnosis was made (without --exit-code, whatever the verdict); with --exit-code: healthy."),
                ("1", "A tracer error: bad input, missing privileges, a kernel it cannot serve (one line on stderr says which)."),
                ("2", "A usage error (unknown option, bad value)."),
                ("3", "With --exit-code: the edge's connections fail (refused, firewall_drop, overloaded, reset_by_origin, return_path, unanswered, other_drop, tls_failure)."),
                ("4", "With --exit-code: no edge SYN arrived in the window (never_arriving)."),
                ("5", "With --exit-code: edge SYNs arrived but the kernel lost the events that would say what became of them (unknown)."),
            ]);
            out += &section("ENVIRONMENT", ENVIRONMENT);
            out += &section("FILES", &[
                ("$TRACER_STATE_DIR/ranges.json", "Cloudflare's ranges from the last `tracer ranges --refresh` (or the agent's refresh), used instead of the embedded list when present."),
            ]);
            out += &section("EXAMPLES", &[
                ("sudo tracer diagnose", "Watch 30 s on the default route's interface and Cloudflare's ports; print the verdict, evidence and fix."),
                ("sudo tracer diagnose --port 443 --duration 60 --format json", "One minute on port 443, as one JSON document."),
                ("sudo tracer diagnose --exit-code --duration 10 || echo failing", "A health check: the exit status says the verdict."),
                ("tracer diagnose --since 10m", "Ask the running agent when the current failure began and what changed (no privileges)."),
            ]);
        }
        "tracer-agent" => {
            out += &section("EXIT STATUS", &[
                ("0", "Stopped by SIGTERM or SIGINT."),
                ("1", "A tracer error at start (one line on stderr says which) or a failure it cannot recover from."),
                ("2", "A usage error."),
            ]);
            out += &section("ENVIRONMENT", ENVIRONMENT);
            out += &section("FILES", &[
                ("/etc/default/cf521-tracer", "The service's options: TRACER_OPTS=\"...\" is appended to the agent's command line (a later option overrides the unit's default)."),
                ("/var/lib/cf521-tracer", "The service's state directory: the ranges cache."),
                ("/var/log/cf521-tracer/events.jsonl", "The service's JSON log (--log-file), rotated at --log-max-mb; SIGHUP reopens it."),
                ("/usr/lib/systemd/system/cf521-tracer.service", "The unit the packages install."),
            ]);
            out += &section("EXAMPLES", &[
                ("systemctl enable --now cf521-tracer", "Run the packaged agent."),
                ("echo 'TRACER_OPTS=\"--port 443,8443 --window 30\"' > /etc/default/cf521-tracer", "Change its options without editing the unit (then systemctl restart cf521-tracer)."),
                ("curl \\-s 127.0.0.1:10521/metrics", "Read its metrics."),
            ]);
        }
        "tracer-events" | "tracer-ranges" | "tracer" => {
            out += &section(
                "EXIT STATUS",
                &[
                    ("0", "Success."),
                    ("1", "A tracer error (one line on stderr says which)."),
                    ("2", "A usage error."),
                ],
            );
            out += &section("ENVIRONMENT", ENVIRONMENT);
            if page == "tracer" {
                out += &section(
                    "EXAMPLES",
                    &[
                        (
                            "sudo tracer diagnose",
                            "Why does Cloudflare show 521 for this origin?",
                        ),
                        (
                            "tracer ranges",
                            "The Cloudflare ranges in use, their source and age.",
                        ),
                        (
                            "sudo tracer events",
                            "Stream the kernel's events for edge connections.",
                        ),
                    ],
                );
            }
        }
        _ => {}
    }
    out
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
        for heading in ["EXIT STATUS", "ENVIRONMENT", "FILES", "EXAMPLES"] {
            assert!(
                diagnose.contains(&format!(".SH \"{heading}\"")),
                "{heading}"
            );
        }
        assert!(diagnose.contains("never_arriving"));
        let agent = std::fs::read_to_string(dir.join("tracer-agent.1")).unwrap();
        assert!(agent.contains("/etc/default/cf521\\-tracer"), "{agent}");
        // Test-only knobs stay out of the user documentation.
        for page in &pages {
            let text = std::fs::read_to_string(dir.join(format!("{page}.1"))).unwrap();
            for knob in [
                "TRACER_NO_TCX",
                "TRACER_EMPTY_PROGRAMS",
                "TRACER_CLASSIC_TRACEPOINTS",
            ] {
                assert!(!text.contains(knob), "{page} documents {knob}");
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
