//! Has the application read an edge request still waiting for its answer, and which process
//! holds its socket? Asked of the kernel's socket tables when a request has waited a while
//! (`capture::looks`): bytes left in the socket's receive queue are a request nobody has read.
//! A tracepoint on every read of every TCP socket would know sooner, and cost every
//! connection of the host; a look costs only while requests are slow.
//!
//! The tracer's own namespace answers over sock_diag; a socket the host handed to another
//! namespace (DNAT to a container) is found in that namespace's tables as a task there sees
//! them (`/proc/PID/task/TID/net/tcp`: a namespace may hold only a thread that joined it),
//! which needs no CAP_SYS_ADMIN (the packaged service and the DaemonSet have none).

use std::{
    collections::{HashMap, HashSet},
    io,
    net::IpAddr,
};

use netlink_packet_sock_diag::inet::{InetResponse, StateFlags};

use super::{listeners, proc_net, processes};
use crate::sys::netlink;

/// A waiting request's connection, by the edge's address and port (which DNAT leaves alone).
pub type Peer = (IpAddr, u16);

/// What the socket table says of one connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SocketSeen {
    /// Bytes the application has not read.
    pub unread: u32,
    /// The socket's inode (0 while it waits in the accept queue: no process holds it).
    pub inode: u64,
}

/// What a look found for one waiting request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Found {
    pub read: bool,
    /// (pid, comm) of the process holding the socket.
    pub holder: Option<(u32, String)>,
}

/// Looks up the connections of `peers`: this namespace first, then the others' tables for
/// those not found here. Connections found nowhere (closed meanwhile) are left out.
pub fn look(peers: &HashSet<Peer>) -> HashMap<Peer, Found> {
    let mut seen = match own_namespace(peers) {
        Ok(seen) => seen,
        Err(e) => {
            tracing::debug!("sock_diag failed ({e}); reading /proc/net/tcp");
            from_proc(peers, "/proc/net")
        }
    };
    if seen.len() < peers.len() {
        let missing: HashSet<Peer> = peers
            .difference(&seen.keys().copied().collect())
            .copied()
            .collect();
        for task in processes::other_namespace_tasks() {
            seen.extend(from_proc(&missing, &format!("{}/net", task.display())));
            if seen.len() == peers.len() {
                break;
            }
        }
    }
    let inodes: Vec<u64> = seen.values().map(|s| s.inode).filter(|i| *i != 0).collect();
    let owners = processes::socket_owners(&inodes);
    seen.into_iter()
        .map(|(peer, s)| {
            let found = Found {
                read: s.unread == 0,
                holder: owners.get(&s.inode).cloned(),
            };
            (peer, found)
        })
        .collect()
}

/// An IPv4 peer of a dual-stack socket shows as `::ffff:a.b.c.d`; the kernel's table keys it
/// as IPv4.
fn plain(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(a) => a.to_ipv4_mapped().map_or(addr, IpAddr::V4),
        a => a,
    }
}

/// The connections of `peers` in this namespace, over sock_diag: established (or closed by
/// the edge since) sockets of both families.
fn own_namespace(peers: &HashSet<Peer>) -> io::Result<HashMap<Peer, SocketSeen>> {
    let all = netlink::tcp_sockets(StateFlags::ESTABLISHED | StateFlags::CLOSE_WAIT)?;
    Ok(all
        .iter()
        .filter_map(socket_of)
        .filter(|(p, _)| peers.contains(p))
        .collect())
}

fn socket_of(r: &InetResponse) -> Option<(Peer, SocketSeen)> {
    let id = &r.header.socket_id;
    Some((
        (plain(id.destination_address), id.destination_port),
        SocketSeen {
            unread: r.header.recv_queue,
            inode: u64::from(r.header.inode),
        },
    ))
}

/// The connections of `peers` in the tables under `dir` (`/proc/net`, `/proc/PID/task/TID/net`).
fn from_proc(peers: &HashSet<Peer>, dir: &str) -> HashMap<Peer, SocketSeen> {
    let mut out = HashMap::new();
    if peers.is_empty() {
        return out;
    }
    for file in ["tcp", "tcp6"] {
        if let Ok(text) = proc_net::read_bounded(&format!("{dir}/{file}")) {
            out.extend(parse(&text).into_iter().filter(|(p, _)| peers.contains(p)));
        }
    }
    out
}

/// Established and close-wait connections in one `/proc/net/tcp` or `tcp6` text, by peer.
pub fn parse(text: &str) -> Vec<(Peer, SocketSeen)> {
    let mut out = Vec::new();
    for line in text.lines().skip(1) {
        let cols: Vec<&str> = line.split_whitespace().collect();
        // 01 ESTABLISHED, 08 CLOSE_WAIT
        if cols.len() < 10 || !matches!(cols[3], "01" | "08") {
            continue;
        }
        let Some((addr, port)) = cols[2].split_once(':') else {
            continue;
        };
        let addr = if addr.len() == 8 {
            listeners::parse_v4(addr)
        } else {
            listeners::parse_v6(addr)
        };
        let (Some(addr), Ok(port)) = (addr, u16::from_str_radix(port, 16)) else {
            continue;
        };
        let Some((_, rx)) = cols[4].split_once(':') else {
            continue;
        };
        out.push((
            (plain(addr), port),
            SocketSeen {
                unread: u32::from_str_radix(rx, 16).unwrap_or(0),
                inode: cols[9].parse().unwrap_or(0),
            },
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Recorded from a lab origin: nginx's listener, an edge connection with 78 bytes unread
    /// (a worker busy), one read, one the edge closed (close-wait), and a dual-stack socket's
    /// IPv4 peer.
    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:0050 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 31337 1 0000000000000000 100 0 0 10 0
   1: 010200C0:0050 0A30F5AD:9C40 01 00000000:0000004E 00:00000000 00000000    33        0 40001 1 0000000000000000 20 4 30 10 -1
   2: 010200C0:0050 0A30F5AD:9C41 01 00000000:00000000 00:00000000 00000000    33        0 40002 1 0000000000000000 20 4 30 10 -1
   3: 010200C0:0050 0A30F5AD:9C42 08 00000000:00000010 00:00000000 00000000    33        0 0 1 0000000000000000 20 4 30 10 -1
";
    const TCP6: &str = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0000000000000000FFFF0000010200C0:0050 0000000000000000FFFF00000A30F5AD:9C43 01 00000000:00000005 00:00000000 00000000    33        0 40004 1 0000000000000000 20 4 30 10 -1
";

    #[test]
    fn connections_are_read_by_peer_with_their_unread_bytes() {
        let edge: IpAddr = "173.245.48.10".parse().unwrap();
        let all = parse(TCP);
        assert_eq!(all.len(), 3, "{all:?}");
        assert_eq!(
            all[0],
            (
                (edge, 40000),
                SocketSeen {
                    unread: 78,
                    inode: 40001
                }
            )
        );
        assert_eq!(all[1].1.unread, 0);
        // Closed by the edge, not accepted yet: no inode.
        assert_eq!(
            all[2].1,
            SocketSeen {
                unread: 16,
                inode: 0
            }
        );
        assert_eq!(
            parse(TCP6),
            vec![(
                (edge, 40003),
                SocketSeen {
                    unread: 5,
                    inode: 40004
                }
            )]
        );
    }

    #[test]
    fn a_table_that_is_not_one_gives_nothing() {
        assert!(parse("").is_empty());
        assert!(parse("header\ngarbage line\n 0: zz:zz yy:yy 01 q").is_empty());
    }
}
