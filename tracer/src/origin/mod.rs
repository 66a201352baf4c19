//! The origin's own state, read from its network namespace and the namespaces it forwards
//! edge connections to: what listens, what the kernel counted, what the firewall says.

pub mod backends;
pub mod conntrack;
pub mod counters;
pub mod firewall;
pub mod listeners;
pub mod namespaces;
pub mod proc_net;
pub mod processes;
pub mod range_routes;
pub mod request_sockets;
pub mod routes;
pub mod tunnel;

use std::{
    io::Read as _,
    process::{Command, Stdio},
    time::Duration,
};

/// How long a tool may take, and how much it may print, unless a caller says otherwise: a
/// ruleset with a million set elements takes seconds to list and tens of MiB to hold.
pub const TOOL_TIME: Duration = Duration::from_secs(5);
pub const TOOL_BYTES: usize = 8 * 1024 * 1024;

/// Why a tool gave no usable output.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ToolError {
    /// Not installed, or could not be started.
    Unavailable(String),
    /// It ran and failed (its stderr's first lines).
    Failed(String),
    /// Killed after the time allowed.
    TimedOut(Duration),
    /// Killed when its output passed the bytes allowed.
    TooLarge(usize),
}

impl std::fmt::Display for ToolError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unavailable(e) | Self::Failed(e) => f.write_str(e),
            Self::TimedOut(t) => write!(f, "took longer than {} s", t.as_secs_f64()),
            Self::TooLarge(n) => write!(f, "printed more than {} MiB", n / (1024 * 1024)),
        }
    }
}

impl From<ToolError> for String {
    fn from(e: ToolError) -> String {
        e.to_string()
    }
}

/// Runs one of the host's tools (`nft`, `ip`, `iptables-save`) with [`TOOL_TIME`] and
/// [`TOOL_BYTES`], returning its stdout, or why not in one line.
pub fn run_tool(cmd: &str, args: &[&str]) -> Result<String, String> {
    run_bounded(cmd, args, TOOL_TIME, TOOL_BYTES).map_err(|e| format!("{cmd}: {e}"))
}

/// Runs a tool, killing it when it takes longer than `time` or prints more than `bytes`: a
/// caller never waits or holds more than that, whatever the host's ruleset or routing table.
pub fn run_bounded(
    cmd: &str,
    args: &[&str],
    time: Duration,
    bytes: usize,
) -> Result<String, ToolError> {
    let mut child = Command::new(cmd)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| ToolError::Unavailable(format!("{cmd} not available ({e})")))?;
    let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut out = Vec::new();
        if let Some(s) = stdout {
            let _ = s.take(bytes as u64 + 1).read_to_end(&mut out);
        }
        let _ = tx.send(out);
    });
    let err_reader = std::thread::spawn(move || {
        let mut err = Vec::new();
        if let Some(s) = stderr {
            let _ = s.take(4096).read_to_end(&mut err);
        }
        err
    });
    let out = match rx.recv_timeout(time) {
        Ok(out) if out.len() > bytes => Err(ToolError::TooLarge(bytes)),
        Ok(out) => Ok(out),
        Err(_) => Err(ToolError::TimedOut(time)),
    };
    if out.is_err() {
        let _ = child.kill();
    }
    let status = child.wait();
    let err = err_reader.join().unwrap_or_default();
    let out = out?;
    match status {
        Ok(s) if s.success() => Ok(String::from_utf8_lossy(&out).into_owned()),
        _ => Err(ToolError::Failed(format!(
            "{cmd} failed: {}",
            String::from_utf8_lossy(&err).trim()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tool_is_bounded_in_time_and_output() {
        assert_eq!(run_bounded("echo", &["hi"], TOOL_TIME, 64).unwrap(), "hi\n");
        let slow = run_bounded("sleep", &["5"], Duration::from_millis(200), 64);
        assert_eq!(slow, Err(ToolError::TimedOut(Duration::from_millis(200))));
        let big = run_bounded("head", &["-c", "100000", "/dev/zero"], TOOL_TIME, 1000);
        assert_eq!(big, Err(ToolError::TooLarge(1000)));
        // An endless writer is stopped too.
        let endless = run_bounded("cat", &["/dev/zero"], TOOL_TIME, 1000);
        assert_eq!(endless, Err(ToolError::TooLarge(1000)));
        assert!(matches!(
            run_bounded("false", &[], TOOL_TIME, 64),
            Err(ToolError::Failed(_))
        ));
        assert!(matches!(
            run_bounded("no-such-tool-521", &[], TOOL_TIME, 64),
            Err(ToolError::Unavailable(_))
        ));
    }
}
