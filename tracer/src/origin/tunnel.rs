//! Cloudflare Tunnel on this host: the `cloudflared` processes (found by name in /proc), the
//! sockets they hold toward the edge, and what listens where they dial. The edge reaches a
//! tunnel origin through `cloudflared`'s own outgoing connections, so no edge SYN arrives;
//! what fails is visible in the processes' sockets instead.

use std::{
    collections::BTreeSet,
    net::{IpAddr, SocketAddr},
};

use super::{
    listeners::{self, parse_v4, parse_v6, Listener},
    proc_net::read_bounded,
};

/// The process name looked for unless `--tunnel-process` says otherwise.
pub const DEFAULT_NAME: &str = "cloudflared";

/// The port `cloudflared` dials the edge on (QUIC over UDP, or HTTP/2 over TCP).
pub const EDGE_PORT: u16 = 7844;

/// Processes looked at, at most, when searching /proc (a bound read on a busy host).
const MAX_PROCESSES: usize = 100_000;
/// Descriptors of one process looked at, at most.
const MAX_FDS: usize = 65_536;

/// A tunnel process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TunnelProcess {
    pub pid: u32,
    pub name: String,
    /// Its network namespace's inode (`None`: not readable).
    pub netns: Option<u32>,
    /// Its container, from its cgroup.
    pub container: Option<String>,
}

impl TunnelProcess {
    /// "cloudflared (pid 812)" or "cloudflared (pid 812, container 3f2a9c4b1d2e)".
    pub fn describe(&self) -> String {
        match &self.container {
            Some(c) => format!(
                "{} (pid {}, container {})",
                self.name,
                self.pid,
                super::processes::short_id(c)
            ),
            None => format!("{} (pid {})", self.name, self.pid),
        }
    }

    /// The listening sockets of its namespace: read directly when it is the tracer's own.
    pub fn listeners(&self, own_netns: u32) -> Vec<Listener> {
        if self.netns == Some(own_netns) {
            listeners::read()
        } else {
            super::proc_net::listeners_of(self.pid).unwrap_or_default()
        }
    }
}

/// The kernel keeps 15 bytes of a process's name (`comm`): a longer name given on the
/// command line matches its first 15.
fn comm_matches(comm: &str, name: &str) -> bool {
    let name = name.get(..15.min(name.len())).unwrap_or(name);
    comm == name
}

/// The processes named `name`, in any namespace (their own or a container's).
pub fn find(name: &str) -> Vec<TunnelProcess> {
    let mut found = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return found;
    };
    for entry in dir.flatten().take(MAX_PROCESSES) {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(comm) = std::fs::read_to_string(format!("/proc/{pid}/comm")) else {
            continue;
        };
        if !comm_matches(comm.trim_end_matches('\n'), name) {
            continue;
        }
        let netns = std::fs::read_link(format!("/proc/{pid}/ns/net"))
            .ok()
            .and_then(|l| ns_inode(l.to_str()?));
        let container = read_bounded(&format!("/proc/{pid}/cgroup"))
            .ok()
            .and_then(|c| super::processes::container_id(&c));
        found.push(TunnelProcess {
            pid,
            name: comm.trim_end_matches('\n').to_string(),
            netns,
            container,
        });
    }
    found
}

/// `net:[4026531840]` -> 4026531840
fn ns_inode(link: &str) -> Option<u32> {
    link.strip_prefix("net:[")?.strip_suffix(']')?.parse().ok()
}

/// What a tunnel process holds toward the edge, read from its sockets.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EdgeSockets {
    /// TCP connections to port 7844 established (HTTP/2 transport).
    pub tcp_established: u32,
    /// TCP connections to port 7844 still connecting.
    pub tcp_connecting: u32,
    /// UDP sockets (QUIC transport: quic-go's are not connected, so their peer does not show).
    pub udp: u32,
    /// The namespace's `UdpRcvbufErrors` (IPv4 + IPv6): datagrams dropped for a full
    /// receive buffer.
    pub udp_rcvbuf_errors: Option<u64>,
}

impl EdgeSockets {
    /// Is any way to the edge open? A QUIC socket counts: whether the edge answers on it is
    /// not visible in the socket tables.
    pub fn any(&self) -> bool {
        self.tcp_established > 0 || self.udp > 0
    }
}

/// One row of /proc/net/{tcp,udp}[6]: (remote address, state, inode).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SocketRow {
    pub remote: SocketAddr,
    pub state: u8,
    pub inode: u64,
}

/// The rows of a /proc/net/{tcp,udp}[6] text.
pub fn parse_sockets(text: &str) -> Vec<SocketRow> {
    let mut out = Vec::new();
    for line in text.lines().skip(1) {
        let cols: Vec<&str> = line.split_whitespace().collect();
        if cols.len() < 10 {
            continue;
        }
        let Some((addr, port)) = cols[2].split_once(':') else {
            continue;
        };
        let ip: Option<IpAddr> = if addr.len() == 8 {
            parse_v4(addr)
        } else {
            parse_v6(addr).map(|a| a.to_canonical())
        };
        let (Some(ip), Ok(port), Ok(state), Ok(inode)) = (
            ip,
            u16::from_str_radix(port, 16),
            u8::from_str_radix(cols[3], 16),
            cols[9].parse::<u64>(),
        ) else {
            continue;
        };
        out.push(SocketRow {
            remote: SocketAddr::new(ip, port),
            state,
            inode,
        });
    }
    out
}

/// The inodes of the sockets process `pid` holds.
fn socket_inodes(pid: u32) -> BTreeSet<u64> {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return BTreeSet::new();
    };
    fds.flatten()
        .take(MAX_FDS)
        .filter_map(|fd| {
            let target = std::fs::read_link(fd.path()).ok()?;
            target
                .to_str()?
                .strip_prefix("socket:[")?
                .strip_suffix(']')?
                .parse()
                .ok()
        })
        .collect()
}

const TCP_ESTABLISHED: u8 = 1;
const TCP_SYN_SENT: u8 = 2;

/// Counts a process's sockets toward the edge, from its namespace's tables.
pub fn edge_sockets(pid: u32) -> EdgeSockets {
    let read = |files: [&str; 2]| -> Vec<SocketRow> {
        files
            .iter()
            .filter_map(|f| read_bounded(&format!("/proc/{pid}/net/{f}")).ok())
            .flat_map(|text| parse_sockets(&text))
            .collect()
    };
    let mut s = count_edge_sockets(
        &socket_inodes(pid),
        &read(["tcp", "tcp6"]),
        &read(["udp", "udp6"]),
    );
    s.udp_rcvbuf_errors = udp_rcvbuf_errors(pid);
    s
}

/// Counts the rows of `mine` (a process's socket inodes) in its namespace's TCP and UDP
/// tables, each socket once: /proc/net/tcp is read a page at a time and resumed by position,
/// so a socket opening or closing between two reads (a busy tunnel dials its service many
/// times a second) can show a row twice.
fn count_edge_sockets(mine: &BTreeSet<u64>, tcp: &[SocketRow], udp: &[SocketRow]) -> EdgeSockets {
    let mut s = EdgeSockets::default();
    let mut counted = BTreeSet::new();
    for row in tcp {
        if !mine.contains(&row.inode)
            || row.remote.port() != EDGE_PORT
            || !counted.insert(row.inode)
        {
            continue;
        }
        match row.state {
            TCP_ESTABLISHED => s.tcp_established += 1,
            TCP_SYN_SENT => s.tcp_connecting += 1,
            _ => {}
        }
    }
    s.udp = udp
        .iter()
        .filter(|r| mine.contains(&r.inode))
        .map(|r| r.inode)
        .collect::<BTreeSet<_>>()
        .len() as u32;
    s
}

/// `UdpRcvbufErrors` of /proc/PID/net/snmp plus `Udp6RcvbufErrors` of snmp6.
pub fn udp_rcvbuf_errors(pid: u32) -> Option<u64> {
    let v4 = read_bounded(&format!("/proc/{pid}/net/snmp"))
        .ok()
        .and_then(|t| snmp_value(&t, "Udp", "RcvbufErrors"));
    let v6 = read_bounded(&format!("/proc/{pid}/net/snmp6"))
        .ok()
        .and_then(|t| {
            t.lines().find_map(|l| {
                let mut f = l.split_whitespace();
                (f.next()? == "Udp6RcvbufErrors").then(|| f.next()?.parse().ok())?
            })
        });
    match (v4, v6) {
        (None, None) => None,
        (a, b) => Some(a.unwrap_or(0) + b.unwrap_or(0)),
    }
}

/// A value of /proc/net/snmp's `Prefix: names` / `Prefix: values` line pairs.
pub fn snmp_value(text: &str, prefix: &str, name: &str) -> Option<u64> {
    let lines: Vec<&str> = text.lines().collect();
    lines.windows(2).find_map(|pair| {
        let (p1, names) = pair[0].split_once(':')?;
        let (p2, values) = pair[1].split_once(':')?;
        if p1 != prefix || p2 != prefix || values.trim_start().starts_with(char::is_alphabetic) {
            return None;
        }
        names
            .split_whitespace()
            .zip(values.split_whitespace())
            .find(|(n, _)| *n == name)
            .and_then(|(_, v)| v.parse().ok())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_match_as_the_kernel_keeps_them() {
        assert!(comm_matches("cloudflared", "cloudflared"));
        assert!(!comm_matches("cloudflared2", "cloudflared"));
        assert!(comm_matches("cloudflared-tun", "cloudflared-tunnel-prod"));
        assert_eq!(ns_inode("net:[4026531840]"), Some(4026531840));
        assert_eq!(ns_inode("mnt:[1]"), None);
    }

    #[test]
    fn socket_rows_give_peer_state_and_inode() {
        let tcp = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1001 1 0 100 0 0 10 0
   1: 0A00000A:C350 0A0130AC:1EA4 01 00000000:00000000 00:00000000 00000000     0        0 2002 1 0 20 4 30 10 -1
";
        let rows = parse_sockets(tcp);
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[1].remote, "172.48.1.10:7844".parse().unwrap());
        assert_eq!(rows[1].state, 1);
        assert_eq!(rows[1].inode, 2002);
        let tcp6 = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000001000000:C350 00000000000000000000000001000000:1F90 02 00000000:00000000 01:00000000 00000000     0        0 3003 1 0 100 0 0 10 0
";
        let rows = parse_sockets(tcp6);
        assert_eq!(rows[0].remote, "[::1]:8080".parse().unwrap());
        assert_eq!(rows[0].state, 2);
    }

    #[test]
    fn a_socket_shown_twice_by_a_resumed_read_is_counted_once() {
        let row = |remote: &str, state, inode| SocketRow {
            remote: remote.parse().unwrap(),
            state,
            inode,
        };
        let edge = row("172.48.1.10:7844", TCP_ESTABLISHED, 2002);
        let tcp = [
            edge,
            row("172.48.1.11:7844", TCP_SYN_SENT, 2003),
            // Another process's connection, and the same socket again (a resumed read).
            row("172.48.1.12:7844", TCP_ESTABLISHED, 9999),
            edge,
            row("127.0.0.1:8080", TCP_ESTABLISHED, 2004),
        ];
        let quic = row("0.0.0.0:0", 7, 2005);
        let mine = BTreeSet::from([2002, 2003, 2004, 2005]);
        let s = count_edge_sockets(&mine, &tcp, &[quic, quic]);
        assert_eq!(
            (s.tcp_established, s.tcp_connecting, s.udp),
            (1, 1, 1),
            "{s:?}"
        );
    }

    #[test]
    fn udp_receive_buffer_errors_are_read_from_snmp() {
        let snmp = "Ip: Forwarding DefaultTTL
Ip: 1 64
Udp: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors
Udp: 10 0 3 12 3 0
UdpLite: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors
UdpLite: 0 0 0 0 0 0
";
        assert_eq!(snmp_value(snmp, "Udp", "RcvbufErrors"), Some(3));
        assert_eq!(snmp_value(snmp, "UdpLite", "RcvbufErrors"), Some(0));
        assert_eq!(snmp_value(snmp, "Tcp", "RcvbufErrors"), None);
    }
}
