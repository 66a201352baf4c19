//! One module per subcommand.

mod events;

use anyhow::Result;

use crate::{cli::Command, kernel::Probe};

pub async fn run(command: Command) -> Result<()> {
    match command {
        Command::Events(args) => events::run(args).await,
    }
}

/// Prints the probe's start-up notes (missing hooks, generic XDP) as one line each on stderr.
pub fn print_notes(probe: &Probe) {
    for note in &probe.notes {
        eprintln!("note: {note}");
    }
}
