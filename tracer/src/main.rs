//! `tracer`: explains Cloudflare HTTP 521 from the origin's own kernel.

mod attempt_record;
mod capture;
mod classes;
mod cli;
mod clock;
mod commands;
mod correlate;
mod event;
mod event_log;
mod events;
mod export;
mod journal;
mod kernel;
mod netinfo;
mod origin;
mod ranges;
mod reasons;
mod report;
mod safe_fs;
mod service;
mod session;
mod text_wrap;
mod tls;
mod verdict;
mod verdict_record;
mod window;

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
            let prefix = if service::stderr_is_journal() {
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
    let filter = tracing_subscriber::EnvFilter::try_from_env("TRACER_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(colour_on_stderr())
        .with_target(false);
    let _ = if service::stderr_is_journal() {
        // journald dates each line itself: the priority, not a second timestamp.
        let format = tracing_subscriber::fmt::format()
            .with_target(false)
            .without_time();
        builder
            .event_format(service::Prioritized(format))
            .try_init()
    } else {
        builder.try_init()
    };
}

/// Colour only for a person at a terminal: never into a file, a pipe or journald, and never
/// when NO_COLOR is set (https://no-color.org).
fn colour_on_stderr() -> bool {
    use std::io::IsTerminal as _;
    std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()) && std::io::stderr().is_terminal()
}
