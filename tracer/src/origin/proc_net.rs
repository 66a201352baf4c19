//! Another namespace's sockets and addresses read through a process in it
//! (`/proc/PID/net/…`), without entering it: what a tracer without CAP_SYS_ADMIN — the
//! packaged service, the DaemonSet — can read, given CAP_SYS_PTRACE to see that process.
//! Entering (setns, then sock_diag) gives more (listen backlogs), and is tried first.

use std::{
    io::Read as _,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use super::listeners::{self, Listener};

/// Read at most from one /proc file: a namespace with a full routing table or a hundred
/// thousand sockets must not make a window close slow or large. Listening sockets come first
/// in `tcp`, local addresses early in `fib_trie`.
const MAX_PROC_BYTES: u64 = 16 << 20;

pub(crate) fn read_bounded(path: &str) -> std::io::Result<String> {
    let mut text = String::new();
    std::fs::File::open(path)?
        .take(MAX_PROC_BYTES)
        .read_to_string(&mut text)?;
    Ok(text)
}

/// The listening sockets of the namespace `pid` is in (`/proc/PID/net/tcp` and `tcp6`), each
/// with that namespace's `ListenOverflows` (the backlog is not there).
pub fn listeners_of(pid: u32) -> Result<Vec<Listener>, String> {
    let overflows = read_bounded(&format!("/proc/{pid}/net/netstat"))
        .ok()
        .and_then(|t| super::counters::parse(&t).get("ListenOverflows").copied());
    let mut all = Vec::new();
    for file in ["tcp", "tcp6"] {
        let path = format!("/proc/{pid}/net/{file}");
        match read_bounded(&path) {
            Ok(text) => all.extend(listeners::parse(&text)),
            // No IPv6 in that namespace's kernel: nothing to add.
            Err(e) if file == "tcp6" && e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("cannot read {path}: {e}")),
        }
    }
    for l in &mut all {
        l.overflows = overflows;
    }
    Ok(all)
}

/// Is `addr` one of the local addresses of the namespace `pid` is in? `None` when its
/// tables cannot be read.
pub fn is_local(pid: u32, addr: IpAddr) -> Option<bool> {
    match addr {
        IpAddr::V4(a) => {
            let text = read_bounded(&format!("/proc/{pid}/net/fib_trie")).ok()?;
            Some(local_v4(&text).contains(&a))
        }
        IpAddr::V6(a) => {
            let text = read_bounded(&format!("/proc/{pid}/net/if_inet6")).ok()?;
            Some(local_v6(&text).contains(&a))
        }
    }
}

/// The addresses `fib_trie` marks `/32 host LOCAL`: each leaf (`|-- ADDR`) is followed by
/// its routes, one of which is LOCAL for an address of this namespace.
fn local_v4(fib_trie: &str) -> Vec<Ipv4Addr> {
    let mut out = Vec::new();
    let mut leaf: Option<Ipv4Addr> = None;
    for line in fib_trie.lines() {
        let t = line.trim();
        if let Some(rest) = t.strip_prefix("|-- ") {
            leaf = rest.trim().parse().ok();
        } else if t.starts_with("/32 host LOCAL") {
            if let Some(a) = leaf.filter(|a| !out.contains(a)) {
                out.push(a);
            }
        } else if t.starts_with("+--") || t.ends_with(':') {
            leaf = None;
        }
    }
    out
}

/// The addresses of `if_inet6`: 32 hex digits, then index, prefix length, scope, flags, name.
fn local_v6(if_inet6: &str) -> Vec<Ipv6Addr> {
    if_inet6
        .lines()
        .filter_map(|l| {
            let hex = l.split_whitespace().next()?;
            (hex.len() == 32).then_some(())?;
            u128::from_str_radix(hex, 16).ok().map(Ipv6Addr::from)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_addresses_from_the_fib_trie_and_if_inet6() {
        let trie = "Main:\n  +-- 0.0.0.0/0 3 0 5\n     |-- 0.0.0.0\n        /0 universe UNICAST\n     +-- 172.17.0.0/16 2 0 2\n        |-- 172.17.0.0\n           /16 link UNICAST\n        |-- 172.17.0.2\n           /32 host LOCAL\nLocal:\n  +-- 127.0.0.0/8 2 0 2\n     |-- 127.0.0.1\n        /32 host LOCAL\n     |-- 127.255.255.255\n        /32 link BROADCAST\n";
        let v4 = local_v4(trie);
        assert_eq!(
            v4,
            [
                "172.17.0.2".parse::<Ipv4Addr>().unwrap(),
                "127.0.0.1".parse().unwrap()
            ]
        );
        let inet6 = "fd000017000000000000000000000002 02 40 00 80   c521\n00000000000000000000000000000001 01 80 10 80       lo\n";
        assert_eq!(
            local_v6(inet6),
            [
                "fd00:17::2".parse::<Ipv6Addr>().unwrap(),
                "::1".parse().unwrap()
            ]
        );
    }

    #[test]
    fn this_processs_own_namespace_reads() {
        let me = std::process::id();
        assert_eq!(is_local(me, "127.0.0.1".parse().unwrap()), Some(true));
        assert_eq!(is_local(me, "198.19.255.254".parse().unwrap()), Some(false));
        assert!(listeners_of(me).is_ok());
    }
}
