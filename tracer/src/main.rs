//! `tracer`: explains Cloudflare HTTP 521 from the origin's own kernel.

// The pipeline, in the order data flows (README "Layout" draws it):
// kernel → capture → model → correlate → (origin, journal, tls) → verdict → output;
// commands wire the stages for each subcommand, settings come from cli, sys holds host
// utilities every stage may use.
mod capture;
mod cli;
mod commands;
mod correlate;
mod environment;
mod journal;
mod kernel;
mod model;
mod origin;
mod output;
mod ranges;
mod reasons;
mod sys;
mod tls;
mod verdict;

use std::process::ExitCode;

use clap::Parser as _;

fn main() -> ExitCode {
    // A bug must still end in one line, not a backtrace.
    std::panic::set_hook(Box::new(|info| {
        eprintln!("error: internal error: {info}");
    }));
    let cli = cli::Cli::parse();
    init_logging(cli.verbose);
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(commands::run(cli.command)) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            let prefix = if sys::service::stderr_is_journal() {
                "<3>"
            } else {
                ""
            };
            eprintln!("{prefix}error: {e:#}");
            ExitCode::from(verdict::EXIT_ERROR)
        }
    }
}

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = environment::get()
        .log_filter
        .as_deref()
        .and_then(|f| tracing_subscriber::EnvFilter::try_new(f).ok())
        .unwrap_or_else(|| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(colour_on_stderr())
        .with_target(false);
    let _ = if sys::service::stderr_is_journal() {
        // journald dates each line itself: the priority, not a second timestamp.
        let format = tracing_subscriber::fmt::format()
            .with_target(false)
            .without_time();
        builder
            .event_format(sys::service::Prioritized(format))
            .try_init()
    } else {
        builder.try_init()
    };
}

/// Colour only for a person at a terminal: never into a file, a pipe or journald, and never
/// when NO_COLOR is set (https://no-color.org).
fn colour_on_stderr() -> bool {
    use std::io::IsTerminal as _;
    !environment::get().no_color && std::io::stderr().is_terminal()
}
