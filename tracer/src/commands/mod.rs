//! One module per subcommand.

mod agent;
mod diagnose;
mod docs;
mod events;
mod history;
mod monitoring;
mod ranges;
mod xdp_test_run;

use anyhow::Result;

pub use monitoring::{JOB, NAMESPACE, RUNBOOK_BASE};

use crate::{
    cli::{CaptureArgs, Command},
    kernel::{Probe, ProbeOptions},
    ranges::RangeSet,
    sys::netinfo,
};

/// What every capturing command starts with: the interface, the ports and the attached probe.
pub struct Started {
    pub probe: Probe,
    pub iface: String,
    pub ports: Vec<u16>,
}

/// Which events a command wants from the kernel beyond the defaults.
pub struct Wanted {
    /// Peers outside the watched ranges too.
    pub all_peers: bool,
    /// Only drops that can decide a connection attempt.
    pub attempt_drops_only: bool,
    /// Connections closing.
    pub closes: bool,
}

/// Resolves the interface and ports and attaches the programs.
pub fn start_probe(
    capture: &CaptureArgs,
    ranges: &RangeSet,
    wanted: Wanted,
    default_ring_bytes: u32,
) -> Result<Started> {
    let iface = match &capture.iface {
        Some(i) => i.clone(),
        None => netinfo::default_interface()?,
    };
    let ports = capture.ports();
    let probe = Probe::start(&ProbeOptions {
        iface: &iface,
        hook: capture.hook.into(),
        xdp_mode: capture.xdp_mode.into(),
        ports: &ports,
        all_peers: wanted.all_peers,
        attempt_drops: wanted
            .attempt_drops_only
            .then_some(crate::reasons::DropClass::decides_attempts as fn(_) -> bool),
        closes: wanted.closes,
        ranges,
        ring_bytes: capture.ring_bytes.unwrap_or(default_ring_bytes),
    })?;
    Ok(Started {
        probe,
        iface,
        ports,
    })
}

/// Runs a command: its exit status (0 unless `diagnose --exit-code` says otherwise).
pub async fn run(command: Command) -> Result<u8> {
    match command {
        Command::Diagnose(args) => return diagnose::run(args).await,
        Command::Events(args) => events::run(args).await,
        Command::Ranges(args) => ranges::run(args).await,
        Command::Agent(args) => agent::run(args).await,
        Command::XdpTestRun(args) => xdp_test_run::run(args),
        Command::Monitoring(args) => monitoring::run(args),
        Command::Completions { shell } => docs::completions(shell),
        Command::Man { dir } => docs::man_pages(&dir).map(|pages| {
            for page in pages {
                println!("{}", dir.join(format!("{page}.1")).display());
            }
        }),
    }
    .map(|()| 0)
}

/// Prints the probe's start-up notes (missing hooks, generic XDP) as one line each on stderr.
pub fn print_notes(probe: &Probe) {
    for note in &probe.notes {
        eprintln!("note: {note}");
    }
}

/// The longest window or run accepted: a year.
const MAX_SECONDS: f64 = 366.0 * 24.0 * 3600.0;

/// Checks a number of seconds given to `flag` (`--duration`, `--window`).
pub fn check_seconds(flag: &str, secs: f64) -> anyhow::Result<()> {
    if !(secs > 0.0 && secs.is_finite()) {
        anyhow::bail!("{flag} must be a positive number of seconds, got {secs}");
    }
    if secs > MAX_SECONDS {
        anyhow::bail!("{flag} {secs} is longer than a year ({MAX_SECONDS} s)");
    }
    Ok(())
}
