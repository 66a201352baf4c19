//! The origin's own state, read from its network namespace and the namespaces it forwards
//! edge connections to: what listens, what the kernel counted, what the firewall says.

pub mod backends;
pub mod conntrack;
pub mod counters;
pub mod firewall;
pub mod listeners;
pub mod namespaces;
pub mod proc_net;
pub mod routes;

/// Runs one of the host's tools (`nft`, `ip`, `iptables-save`) and returns its stdout, or why
/// not in one line.
pub fn run_tool(cmd: &str, args: &[&str]) -> Result<String, String> {
    let out = std::process::Command::new(cmd)
        .args(args)
        .output()
        .map_err(|e| format!("{cmd} not available ({e})"))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
