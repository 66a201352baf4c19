//! Every environment variable the tracer reads, read once at start: the command line is
//! `cli.rs`, this is the rest of the settings. No other module consults `std::env`, so what a
//! variable means is written once (and `NO_COLOR` means the same everywhere).

use std::{ffi::OsString, path::PathBuf, sync::OnceLock};

/// The environment as the tracer understands it.
#[derive(Debug, Default, Clone)]
pub struct Environment {
    /// `TRACER_LOG`: the diagnostics filter (error, warn, info, debug, or a tracing filter).
    pub log_filter: Option<String>,
    /// `NO_COLOR` present and not empty (https://no-color.org): no colour, no redrawn lines.
    pub no_color: bool,
    /// `TRACER_RANGES_URL`: a mirror of Cloudflare's API (and the tests' server).
    pub ranges_url: Option<String>,
    /// `TRACER_RANGES_TIMEOUT_SECS`, as given (checked before any fetch).
    pub ranges_timeout_secs: Option<String>,
    /// `TRACER_RANGES_ALLOW_HTTP=1`: a plain-http mirror elsewhere than this host is meant.
    pub ranges_allow_http: bool,
    /// `TRACER_STATE_DIR`, else `XDG_STATE_HOME`, else `HOME`: where the ranges cache lives.
    pub state_dir: Option<PathBuf>,
    pub xdg_state_home: Option<PathBuf>,
    pub home: Option<PathBuf>,
    /// systemd's `NOTIFY_SOCKET` (Type=notify) and `JOURNAL_STREAM` (stderr is the journal).
    pub notify_socket: Option<OsString>,
    pub journal_stream: Option<String>,
    /// Switches for tests and benchmarks only, each said in the report's notes when set:
    /// `TRACER_CLASSIC_TRACEPOINTS`, `TRACER_EMPTY_PROGRAMS`, `TRACER_NO_TCX`.
    pub classic_tracepoints: bool,
    pub empty_programs: EmptyPrograms,
    pub no_tcx: bool,
    /// `TRACER_TEST_FAIL_IPV6_UPDATE` (tests only): a ranges update fails halfway through the
    /// IPv6 table, as a full table or the kernel's memory would make it — what the all-or-
    /// nothing swap across families is tested with.
    pub fail_ipv6_update: bool,
}

impl Environment {
    /// Where the tracer keeps its state (the ranges cache, its clsact filters' claims):
    /// TRACER_STATE_DIR, else /var/lib/cf521-tracer as root, else the XDG state directory.
    pub fn state_dir(&self) -> PathBuf {
        if let Some(dir) = &self.state_dir {
            return dir.clone();
        }
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            return PathBuf::from("/var/lib/cf521-tracer");
        }
        self.xdg_state_home
            .clone()
            .or_else(|| self.home.as_ref().map(|h| h.join(".local/state")))
            .unwrap_or_else(|| PathBuf::from("/tmp"))
            .join("cf521-tracer")
    }

    /// Reads it from `vars` (the process's, or a test's).
    pub fn from_vars(vars: impl IntoIterator<Item = (OsString, OsString)>) -> Self {
        let mut e = Environment::default();
        for (key, value) in vars {
            let text = || value.to_str().map(str::to_string);
            match key.to_str().unwrap_or_default() {
                "TRACER_LOG" => e.log_filter = text(),
                "NO_COLOR" => e.no_color = !value.is_empty(),
                "TRACER_RANGES_URL" => e.ranges_url = text(),
                "TRACER_RANGES_TIMEOUT_SECS" => e.ranges_timeout_secs = text(),
                "TRACER_RANGES_ALLOW_HTTP" => e.ranges_allow_http = value == "1",
                "TRACER_STATE_DIR" => e.state_dir = Some(PathBuf::from(&value)),
                "XDG_STATE_HOME" => e.xdg_state_home = Some(PathBuf::from(&value)),
                "HOME" => e.home = Some(PathBuf::from(&value)),
                "NOTIFY_SOCKET" => e.notify_socket = Some(value.clone()),
                "JOURNAL_STREAM" => e.journal_stream = text(),
                "TRACER_CLASSIC_TRACEPOINTS" => e.classic_tracepoints = true,
                "TRACER_EMPTY_PROGRAMS" => e.empty_programs = EmptyPrograms::from_value(&value),
                "TRACER_NO_TCX" => e.no_tcx = true,
                "TRACER_TEST_FAIL_IPV6_UPDATE" => e.fail_ipv6_update = true,
                _ => {}
            }
        }
        e
    }
}

/// Which hooks get programs that do nothing (`TRACER_EMPTY_PROGRAMS`): `packets` the arrival
/// and departure hooks only, `tracepoints` the tracepoints only, any other value all of them.
/// The bench splits what the hooks cost with the partial forms.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub enum EmptyPrograms {
    #[default]
    None,
    All,
    Packets,
    Tracepoints,
}

impl EmptyPrograms {
    fn from_value(value: &std::ffi::OsStr) -> Self {
        match value.to_str() {
            Some("packets") => EmptyPrograms::Packets,
            Some("tracepoints") => EmptyPrograms::Tracepoints,
            _ => EmptyPrograms::All,
        }
    }

    /// Are the packet hooks' programs empty?
    pub fn packets(self) -> bool {
        matches!(self, EmptyPrograms::All | EmptyPrograms::Packets)
    }

    /// Are the tracepoints' programs empty?
    pub fn tracepoints(self) -> bool {
        matches!(self, EmptyPrograms::All | EmptyPrograms::Tracepoints)
    }

    /// The hooks emptied, as the report's note says them (`None`: the real programs).
    pub fn hooks(self) -> Option<&'static str> {
        match self {
            EmptyPrograms::None => None,
            EmptyPrograms::All => Some("every hook"),
            EmptyPrograms::Packets => Some("the packet hooks"),
            EmptyPrograms::Tracepoints => Some("the tracepoints"),
        }
    }
}

static ENVIRONMENT: OnceLock<Environment> = OnceLock::new();

/// The process's environment, read the first time it is asked for.
pub fn get() -> &'static Environment {
    ENVIRONMENT.get_or_init(|| Environment::from_vars(std::env::vars_os()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn of(pairs: &[(&str, &str)]) -> Environment {
        Environment::from_vars(pairs.iter().map(|(k, v)| (k.into(), v.into())))
    }

    #[test]
    fn each_variable_means_one_thing() {
        assert!(!of(&[]).no_color);
        assert!(of(&[("NO_COLOR", "1")]).no_color);
        // no-color.org: present *and not empty*.
        assert!(!of(&[("NO_COLOR", "")]).no_color);
        assert!(of(&[("TRACER_RANGES_ALLOW_HTTP", "1")]).ranges_allow_http);
        assert!(!of(&[("TRACER_RANGES_ALLOW_HTTP", "yes")]).ranges_allow_http);
        let e = of(&[
            ("TRACER_STATE_DIR", "/s"),
            ("TRACER_RANGES_TIMEOUT_SECS", "2.5"),
            ("TRACER_NO_TCX", ""),
            ("UNRELATED", "x"),
        ]);
        assert_eq!(e.state_dir, Some(PathBuf::from("/s")));
        assert_eq!(e.ranges_timeout_secs.as_deref(), Some("2.5"));
        assert!(e.no_tcx && e.empty_programs == EmptyPrograms::None && !e.classic_tracepoints);
        let empty = |v: &str| of(&[("TRACER_EMPTY_PROGRAMS", v)]).empty_programs;
        assert_eq!(empty("1"), EmptyPrograms::All);
        assert_eq!(empty(""), EmptyPrograms::All);
        assert!(empty("packets").packets() && !empty("packets").tracepoints());
        assert!(empty("tracepoints").tracepoints() && !empty("tracepoints").packets());
    }
}
