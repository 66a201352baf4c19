//! Command-line interface.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Cloudflare's origin ports: HTTP 80, 8080, 8880, 2052, 2082, 2086, 2095; HTTPS 443, 2053,
/// 2083, 2087, 2096, 8443.
pub const CLOUDFLARE_PORTS: [u16; 13] = [
    80, 443, 2052, 2053, 2082, 2083, 2086, 2087, 2095, 2096, 8080, 8443, 8880,
];

#[derive(Parser, Debug)]
#[command(
    name = "tracer",
    version,
    about = "Explains Cloudflare HTTP 521 from the origin's own kernel",
    long_about = "Watches, from the origin's kernel, how edge connections arrive and how the TCP \
                  stack answers them: refused, dropped by the firewall, dropped by overload, reset \
                  after accept, or never arriving.",
    // A later option overrides an earlier one: the unit's defaults, then TRACER_OPTS.
    args_override_self = true
)]
pub struct Cli {
    /// More diagnostics on stderr (-v, -vv).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Stream kernel events (SYNs at the NIC, drops, resets, handshakes) until Ctrl-C.
    Events(EventsArgs),
    /// Watch a window and give the 521 verdict: cause, evidence, next steps.
    Diagnose(DiagnoseArgs),
    /// Show the watched ranges in use, their source and age; --refresh fetches Cloudflare's.
    Ranges(RangesArgs),
    /// Run continuously: JSON logs, a verdict per window, Prometheus metrics.
    Agent(AgentArgs),
    /// Print the fleet's alert rules (with its runbook base and job), as a rule file or a
    /// PrometheusRule, or the Grafana dashboard as a ConfigMap.
    Monitoring(MonitoringArgs),
    /// Print shell completions to stdout (bash, zsh, fish, elvish, powershell).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Run crafted frames through the XDP program with BPF_PROG_TEST_RUN (self-test, bench).
    #[command(hide = true)]
    XdpTestRun(XdpTestRunArgs),
    /// Write the man pages (tracer.1, tracer-diagnose.1, ...) into DIR (for packaging).
    #[command(hide = true)]
    Man {
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
    },
}

#[derive(Args, Debug)]
pub struct MonitoringArgs {
    /// Which file: the Prometheus rule file, the same rules as a Prometheus Operator
    /// PrometheusRule, or the dashboard as a ConfigMap for Grafana's sidecar.
    #[arg(long, value_enum, default_value_t = MonitoringOutput::Rules)]
    pub output: MonitoringOutput,
    /// Where on-call people read the runbook: each alert's runbook_url is this plus the
    /// alert's #anchor.
    #[arg(long, value_name = "URL", default_value = crate::commands::RUNBOOK_BASE)]
    pub runbook_base: String,
    /// The scrape job of the agents (the rules' `up{job=...}`).
    #[arg(long, default_value = crate::commands::JOB)]
    pub job: String,
    /// The namespace of the Kubernetes objects.
    #[arg(long, default_value = crate::commands::NAMESPACE)]
    pub namespace: String,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum MonitoringOutput {
    Rules,
    PrometheusRule,
    GrafanaConfigmap,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum XdpModeArg {
    Auto,
    Driver,
    Generic,
}

impl From<XdpModeArg> for crate::kernel::XdpAttach {
    fn from(arg: XdpModeArg) -> Self {
        match arg {
            XdpModeArg::Auto => Self::Auto,
            XdpModeArg::Driver => Self::Driver,
            XdpModeArg::Generic => Self::Generic,
        }
    }
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum HookArg {
    Auto,
    Xdp,
    Tc,
}

impl From<HookArg> for crate::kernel::HookChoice {
    fn from(arg: HookArg) -> Self {
        match arg {
            HookArg::Auto => Self::Auto,
            HookArg::Xdp => Self::Xdp,
            HookArg::Tc => Self::Tc,
        }
    }
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Text,
    Json,
}

/// Options shared by every command that attaches the kernel programs.
#[derive(Args, Debug, Clone)]
pub struct CaptureArgs {
    /// Interface to watch [default: the one holding the default route].
    #[arg(long, value_name = "IF")]
    pub iface: Option<String>,
    /// Local port to watch; repeat or comma-separate [default: Cloudflare's origin ports].
    #[arg(long = "port", value_name = "P", value_delimiter = ',', value_parser = clap::value_parser!(u16).range(1..))]
    pub ports: Vec<u16>,
    /// Create this file once every program is attached (for scripts and tests).
    #[arg(long, value_name = "PATH")]
    pub ready_file: Option<PathBuf>,
    /// Where arriving SYNs are seen: auto = native (driver) XDP where the driver has it and
    /// the slot is free, else TC ingress (tcx, or a clsact filter before 6.6), which composes
    /// with other programs; never generic XDP. On veth auto takes TC.
    #[arg(long, value_enum, default_value_t = HookArg::Auto)]
    pub hook: HookArg,
    /// XDP attach mode with --hook xdp: auto = driver (native) mode, except generic on veth,
    /// where native XDP copies every packet the local stack sends.
    #[arg(long, value_enum, default_value_t = XdpModeArg::Auto)]
    pub xdp_mode: XdpModeArg,
    /// Ring buffer size in bytes (a power of two, at least one page) [default: 8 MiB; agent 4 MiB].
    #[arg(long, value_name = "BYTES", hide = true)]
    pub ring_bytes: Option<u32>,
}

/// The exchange timing's settings: Cloudflare's timeouts on the origin's side (for plans that
/// differ and for tests), and how much of the edge's traffic it follows.
#[derive(Args, Debug, Clone, Copy)]
pub struct TimingArgs {
    /// Cloudflare's proxy read timeout: a response whose first byte comes later is a 524
    /// (slow_response). 100 s on most plans; Enterprise can raise it to 6,000 s.
    #[arg(long, value_name = "DURATION", default_value = "100s", value_parser = parse_edge_timeout)]
    pub edge_read_timeout: std::time::Duration,
    /// How long Cloudflare keeps an idle connection to the origin for reuse: the origin
    /// closing idle connections sooner risks a 520 (keepalive_race).
    #[arg(long, value_name = "DURATION", default_value = "900s", value_parser = parse_edge_timeout)]
    pub edge_idle_timeout: std::time::Duration,
    /// Above this many edge requests a second the exchange timing (response and idle-close
    /// times, slow_response, keepalive_race) follows a sample of the edge's connections,
    /// 1 in 2, 4 ... 1,024 chosen by a hash of each, so its cost stays bounded; reports say
    /// the sample. 0: follow every connection at any rate. Handshakes are always all timed.
    #[arg(long, value_name = "REQUESTS", default_value_t = crate::capture::sampling::DEFAULT_LIMIT)]
    pub timing_sample_above: u32,
}

/// `--edge-read-timeout`, `--edge-idle-timeout`: 100 ms to 2 h.
fn parse_edge_timeout(text: &str) -> Result<std::time::Duration, String> {
    let d = parse_duration(text)?;
    if d < std::time::Duration::from_millis(100) || d > std::time::Duration::from_secs(7200) {
        return Err("must be between 100ms and 2h (e.g. 100s, 15m)".into());
    }
    Ok(d)
}

/// The TLS check, shared by diagnose and agent.
#[derive(Args, Debug, Default)]
pub struct TlsArgs {
    /// Check TLS as Cloudflare does under Full / Full (Strict): a handshake with this SNI to
    /// each watched TLS port with a listener (443, 2053, 2083, 2087, 2096, 8443); repeatable.
    #[arg(long = "hostname", value_name = "NAME")]
    pub hostnames: Vec<String>,
    /// Also trust this CA (PEM) for Full (Strict), as Cloudflare's custom origin trust store.
    #[arg(long, value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,
}

impl CaptureArgs {
    pub fn ports(&self) -> Vec<u16> {
        let mut ports = if self.ports.is_empty() {
            CLOUDFLARE_PORTS.to_vec()
        } else {
            self.ports.clone()
        };
        ports.sort_unstable();
        ports.dedup();
        ports
    }
}

/// The Cloudflare Tunnel on this host, shared by diagnose and agent.
#[derive(Args, Debug, Clone)]
pub struct TunnelArgs {
    /// The name of the Cloudflare Tunnel process to watch (a renamed cloudflared binary): its
    /// connections to the services it forwards to and to the edge are followed, in any
    /// namespace. Names longer than 15 bytes match on their first 15, as the kernel keeps them.
    #[arg(long = "tunnel-process", value_name = "NAME", default_value = crate::origin::tunnel::DEFAULT_NAME, value_parser = parse_process_name)]
    pub tunnel_process: String,
}

/// `--tunnel-process`: a process name as /proc/PID/comm shows it.
fn parse_process_name(text: &str) -> Result<String, String> {
    if text.is_empty() || text.contains('/') || text.chars().any(char::is_control) {
        return Err(
            "must be a process name as `ps -o comm` shows it (no '/', not empty), e.g. cloudflared"
                .into(),
        );
    }
    if text.len() > 255 {
        return Err("must be at most 255 bytes (the kernel keeps 15)".into());
    }
    Ok(text.to_string())
}

/// Where the watched ranges come from — the same for every command, so a peer is an edge
/// peer for `events` exactly when it is for `diagnose` and `agent`.
#[derive(Args, Debug, Clone, Default)]
pub struct RangesSource {
    /// Watched ranges: the Cloudflare API's JSON or one CIDR per line [default: the cache of
    /// the last `tracer ranges --refresh`, else the embedded Cloudflare list].
    #[arg(id = "ranges", long = "ranges", value_name = "FILE")]
    pub file: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct EventsArgs {
    #[command(flatten)]
    pub capture: CaptureArgs,
    /// Also report peers outside the watched ranges.
    #[arg(long)]
    pub all_peers: bool,
    #[command(flatten)]
    pub ranges: RangesSource,
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    /// Stop after this many seconds [default: until Ctrl-C or SIGTERM].
    #[arg(long, value_name = "SECS")]
    pub duration: Option<f64>,
}

#[derive(Args, Debug)]
pub struct DiagnoseArgs {
    #[command(flatten)]
    pub capture: CaptureArgs,
    /// Length of the observation window in seconds.
    #[arg(long, value_name = "SECS", default_value_t = 30.0)]
    pub duration: f64,
    #[command(flatten)]
    pub ranges: RangesSource,
    /// Fetch Cloudflare's current ranges first (falls back to the cache, then the embedded list).
    #[arg(long, conflicts_with = "ranges")]
    pub refresh_ranges: bool,
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    /// Exit with the verdict: 0 healthy, 3 the edge's connections fail (any failing verdict),
    /// 4 no edge SYN arrived (never_arriving), 5 inconclusive (the kernel lost the events);
    /// 1 is a tracer error, 2 a usage error. Without it, 0 whatever the verdict.
    #[arg(long)]
    pub exit_code: bool,
    #[command(flatten)]
    pub tls: TlsArgs,
    #[command(flatten)]
    pub timeouts: TimingArgs,
    #[command(flatten)]
    pub tunnel: TunnelArgs,
    /// Answer from the running agent's recent history instead of watching a new window: when
    /// the current failure began and what changed on the host in the last DURATION (e.g.
    /// 10m). Needs no privileges; the agent must run on this host.
    #[arg(long, value_name = "DURATION", value_parser = parse_history_span)]
    pub since: Option<std::time::Duration>,
    /// The agent's metrics address, for --since.
    #[arg(
        long,
        value_name = "ADDR",
        default_value = "127.0.0.1:10521",
        requires = "since"
    )]
    pub agent: std::net::SocketAddr,
}

#[derive(Args, Debug)]
pub struct RangesArgs {
    /// Fetch Cloudflare's current list and cache it.
    #[arg(long, conflicts_with = "ranges")]
    pub refresh: bool,
    // With a file: show and validate that file's ranges.
    #[command(flatten)]
    pub ranges: RangesSource,
    /// Audit this host's firewall: every allowlist (set, or chain of source accepts) that
    /// admits some of the ranges, and exactly which ranges it lacks. Exits 0 either way.
    #[arg(long)]
    pub audit: bool,
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogEvents {
    /// Every event.
    All,
    /// One `attempt` line per attempt that did not end in a handshake (with its SYN count),
    /// and losses: nothing for healthy connections.
    Failures,
    /// Only the per-window verdict records.
    None,
}

#[derive(Args, Debug)]
pub struct AgentArgs {
    #[command(flatten)]
    pub capture: CaptureArgs,
    /// Where to serve GET /metrics, /healthz and /history. Port 10521 is outside the
    /// 9100-9999 range Prometheus' default port allocations give exporters (all taken).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:10521")]
    pub metrics_addr: std::net::SocketAddr,
    /// TLS and basic authentication for the endpoint, in the Prometheus exporter-toolkit
    /// format node_exporter reads (tls_server_config: cert_file, key_file, client_ca_file,
    /// client_auth_type, min_version; basic_auth_users: bcrypt hashes). /healthz stays open.
    #[arg(long = "web.config.file", value_name = "FILE")]
    pub web_config_file: Option<PathBuf>,
    /// Serve /history (processes, containers, firewall chains, routes of recent changes) to
    /// clients beyond this host too; without it, it answers loopback only.
    #[arg(long = "web.enable-history")]
    pub web_enable_history: bool,
    /// JSON-lines log file (reopened on SIGHUP) [default: stdout].
    #[arg(long, value_name = "PATH")]
    pub log_file: Option<PathBuf>,
    /// Seconds per verdict window.
    #[arg(long, value_name = "SECS", default_value_t = 60.0)]
    pub window: f64,
    // The agent re-reads the file on every --refresh-ranges-every.
    #[command(flatten)]
    pub ranges: RangesSource,
    /// Refresh the ranges on this schedule (e.g. 6h, 30m, 90s): from Cloudflare's API, or by
    /// re-reading --ranges FILE. Updates the kernel's map in place.
    #[arg(long, value_name = "DURATION", value_parser = parse_refresh_interval)]
    pub refresh_ranges_every: Option<std::time::Duration>,
    /// Which events go to the log besides the verdict records.
    #[arg(long, value_enum, default_value_t = LogEvents::Failures)]
    pub log_events: LogEvents,
    /// Rotate the --log-file at this size in MiB (the full file becomes <path>.1, replacing
    /// an older one), so the log never holds more than twice this on disk.
    #[arg(long, value_name = "MIB", default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub log_max_mb: u64,
    /// With --hostname: the TLS check runs once per window (metrics
    /// tracer_tls_check_ok, tracer_tls_certificate_not_after_timestamp_seconds; the verdict record's tls).
    #[command(flatten)]
    pub tls: TlsArgs,
    #[command(flatten)]
    pub timeouts: TimingArgs,
    #[command(flatten)]
    pub tunnel: TunnelArgs,
    /// Scheduling niceness (-20..19). The agent needs about 1% of a core at 40k new
    /// connections/s and the kernel buffers seconds of events, so by default it yields to the
    /// server it watches; any shortfall shows as `loss` events and tracer_events_lost_total.
    #[arg(long, value_name = "N", default_value_t = 10, allow_negative_numbers = true,
          value_parser = clap::value_parser!(i32).range(-20..=19))]
    pub nice: i32,
}

/// "90s", "30m", "6h", or plain seconds.
fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let d = match text.parse::<f64>() {
        Ok(secs) if secs.is_finite() && secs > 0.0 => std::time::Duration::from_secs_f64(secs),
        Ok(_) => return Err("must be positive".into()),
        Err(_) => {
            humantime::parse_duration(text).map_err(|e| format!("{e} (e.g. 90s, 30m, 6h)"))?
        }
    };
    if d.is_zero() {
        return Err("must be positive".into());
    }
    Ok(d)
}

/// `--refresh-ranges-every`: at least a second, at most 30 days (the agent asks for a minute
/// or more when the refresh goes to the API).
fn parse_refresh_interval(text: &str) -> Result<std::time::Duration, String> {
    let d = parse_duration(text)?;
    if d < std::time::Duration::from_secs(1) {
        return Err("must be at least 1s".into());
    }
    if d > std::time::Duration::from_secs(30 * 24 * 3600) {
        return Err("must be at most 30 days".into());
    }
    Ok(d)
}

/// `diagnose --since`: up to the hour the agent keeps.
fn parse_history_span(text: &str) -> Result<std::time::Duration, String> {
    let d = parse_duration(text)?;
    if d > std::time::Duration::from_secs(3600) {
        return Err("must be at most 1h (the agent keeps an hour of changes)".into());
    }
    Ok(d)
}

#[derive(Args, Debug)]
pub struct XdpTestRunArgs {
    #[arg(long = "port", value_delimiter = ',', default_values_t = CLOUDFLARE_PORTS)]
    pub ports: Vec<u16>,
    #[command(flatten)]
    pub ranges: RangesSource,
    #[arg(long)]
    pub all_peers: bool,
    /// Runs per frame (the kernel reports the mean time per run).
    #[arg(long, default_value_t = 1)]
    pub repeat: u32,
    #[arg(long, default_value_t = crate::kernel::DEFAULT_RING_BYTES)]
    pub ring_bytes: u32,
    /// Do not drain the SYN log while the programs run (to see a full log count its losses).
    #[arg(long)]
    pub no_reader: bool,
    /// Run the TC ingress programs (`tc_syn`, `tc_pass`) instead of the XDP ones.
    #[arg(long)]
    pub tc: bool,
    /// Frames as hex, Ethernet header first.
    #[arg(long = "frame", required = true)]
    pub frames: Vec<String>,
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;

    fn ranges_file(args: &[&str]) -> Option<PathBuf> {
        let cli = Cli::try_parse_from(args).expect("parses");
        match cli.command {
            Command::Events(a) => a.ranges.file,
            Command::Diagnose(a) => a.ranges.file,
            Command::Agent(a) => a.ranges.file,
            Command::Ranges(a) => a.ranges.file,
            _ => unreachable!(),
        }
    }

    /// `--ranges` is one option with one meaning in every command that watches peers.
    #[test]
    fn tunnel_process_names_are_checked() {
        let name = |args: &[&str]| {
            let mut all = vec!["tracer", "diagnose"];
            all.extend_from_slice(args);
            Cli::try_parse_from(all).map(|c| match c.command {
                Command::Diagnose(d) => d.tunnel.tunnel_process,
                _ => unreachable!(),
            })
        };
        assert_eq!(name(&[]).unwrap(), "cloudflared");
        assert_eq!(
            name(&["--tunnel-process", "edge-tunnel"]).unwrap(),
            "edge-tunnel"
        );
        for bad in ["", "/usr/bin/cloudflared", "a\nb"] {
            let e = name(&["--tunnel-process", bad]).unwrap_err().to_string();
            assert!(e.contains("must be a process name"), "{bad:?}: {e}");
        }
    }

    #[test]
    fn every_command_takes_the_same_ranges_option() {
        for cmd in ["events", "diagnose", "agent", "ranges"] {
            assert_eq!(
                ranges_file(&["tracer", cmd, "--ranges", "/tmp/r.txt"]),
                Some(PathBuf::from("/tmp/r.txt")),
                "{cmd}"
            );
            assert_eq!(ranges_file(&["tracer", cmd]), None, "{cmd}");
        }
        for conflict in [
            &["tracer", "diagnose", "--ranges", "f", "--refresh-ranges"][..],
            &["tracer", "ranges", "--ranges", "f", "--refresh"][..],
        ] {
            let e = Cli::try_parse_from(conflict).unwrap_err();
            assert_eq!(e.kind(), clap::error::ErrorKind::ArgumentConflict, "{e}");
        }
    }
}
