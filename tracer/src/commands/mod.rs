//! One module per subcommand.

mod agent;
mod diagnose;
mod events;
mod ranges;
mod xdp_test_run;

use anyhow::Result;

use crate::{cli::Command, kernel::Probe};

pub async fn run(command: Command) -> Result<()> {
    match command {
        Command::Events(args) => events::run(args).await,
        Command::Diagnose(args) => diagnose::run(args).await,
        Command::Ranges(args) => ranges::run(args).await,
        Command::Agent(args) => agent::run(args).await,
        Command::XdpTestRun(args) => xdp_test_run::run(args),
    }
}

/// Prints the probe's start-up notes (missing hooks, generic XDP) as one line each on stderr.
pub fn print_notes(probe: &Probe) {
    for note in &probe.notes {
        eprintln!("note: {note}");
    }
}

/// Checks a `--duration` value.
pub fn check_duration(secs: f64) -> anyhow::Result<()> {
    if !(secs > 0.0 && secs.is_finite() && secs < 1e9) {
        anyhow::bail!("--duration must be a positive number of seconds, got {secs}");
    }
    Ok(())
}
