//! Listening TCP sockets of this namespace: address, port and accept-queue fill against the
//! backlog. From NETLINK_SOCK_DIAG (which reports the backlog); /proc/net/tcp{,6} as a fallback
//! (which does not).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listener {
    pub addr: IpAddr,
    pub port: u16,
    /// Connections waiting in the accept queue (`sk_ack_backlog`).
    pub accept_queue: u32,
    /// The backlog in force (`sk_max_ack_backlog`); unknown from /proc.
    pub backlog: Option<u32>,
    /// The network namespace it listens in, when not the tracer's (a container's).
    pub netns: Option<u32>,
    /// The container that namespace belongs to.
    pub container: Option<String>,
    /// A process in that namespace.
    pub pid: Option<u32>,
    pub comm: Option<String>,
    /// `port_reservation`: a host socket on a published port whose edge connections are
    /// DNATed elsewhere (docker-proxy): not the server.
    pub role: Option<&'static str>,
    /// The socket's inode (sock_diag), to find the process that holds it.
    pub inode: Option<u64>,
    /// Read through /proc in another namespace (no backlog there): that namespace's
    /// `ListenOverflows` counter since it was made.
    pub overflows: Option<u64>,
}

impl Default for Listener {
    fn default() -> Self {
        Self {
            addr: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            port: 0,
            accept_queue: 0,
            backlog: None,
            netns: None,
            container: None,
            pid: None,
            comm: None,
            role: None,
            inode: None,
            overflows: None,
        }
    }
}

impl Listener {
    /// The kernel drops new SYNs when the queue holds more than the backlog. Read through
    /// /proc the backlog is unknown: connections waiting while its namespace counted listen
    /// overflows is the sign then.
    pub fn queue_full(&self) -> bool {
        match self.backlog {
            Some(b) => self.accept_queue > b,
            None => self.accept_queue > 0 && self.overflows.is_some_and(|o| o > 0),
        }
    }

    /// "3 waiting, backlog 2", or without the backlog what stood for it.
    pub fn queue_text(&self) -> String {
        match (self.backlog, self.overflows) {
            (Some(b), _) => format!("{} waiting, backlog {b}", self.accept_queue),
            (None, Some(o)) => format!(
                "{} waiting; its namespace counted {o} listen overflows (the backlog is not readable without entering it, which needs CAP_SYS_ADMIN)",
                self.accept_queue
            ),
            (None, None) => format!("{} waiting", self.accept_queue),
        }
    }

    pub fn is_loopback(&self) -> bool {
        self.addr.is_loopback()
    }

    /// Would a SYN to `local` reach this listener? (v4-mapped: a `::` listener takes IPv4 too
    /// unless IPV6_V6ONLY, which /proc does not show; assume it does.)
    pub fn accepts(&self, local: IpAddr) -> bool {
        if self.addr == local {
            return true;
        }
        match (self.addr, local) {
            (IpAddr::V4(a), IpAddr::V4(_)) => a.is_unspecified(),
            (IpAddr::V6(a), _) => a.is_unspecified(),
            _ => false,
        }
    }

    /// Where it listens, for sentences: "" in the tracer's namespace, " in container
    /// 3f2a9c4b1d2e" or " in netns:[4026532999]" in a backend's.
    pub fn place(&self) -> String {
        match (&self.container, self.netns) {
            (Some(c), _) => format!(" in container {}", super::processes::short_id(c)),
            (None, Some(ns)) => format!(" in netns:[{ns}]"),
            (None, None) => String::new(),
        }
    }

    pub fn endpoint(&self) -> String {
        match self.addr {
            IpAddr::V6(a) => format!("[{a}]:{}", self.port),
            a => format!("{a}:{}", self.port),
        }
    }
}

pub(crate) fn parse_v4(hex: &str) -> Option<IpAddr> {
    // Stored as a host-order u32 of the network-order bytes.
    let raw = u32::from_str_radix(hex, 16).ok()?;
    Some(IpAddr::V4(Ipv4Addr::from(raw.to_ne_bytes())))
}

pub(crate) fn parse_v6(hex: &str) -> Option<IpAddr> {
    if hex.len() != 32 {
        return None;
    }
    let mut bytes = [0u8; 16];
    for word in 0..4 {
        let w = u32::from_str_radix(&hex[word * 8..word * 8 + 8], 16).ok()?;
        bytes[word * 4..word * 4 + 4].copy_from_slice(&w.to_ne_bytes());
    }
    Some(IpAddr::V6(Ipv6Addr::from(bytes)))
}

/// Listening sockets in one /proc/net/tcp or tcp6 text.
pub fn parse(text: &str) -> Vec<Listener> {
    let mut out = Vec::new();
    for line in text.lines().skip(1) {
        let cols: Vec<&str> = line.split_whitespace().collect();
        if cols.len() < 5 || cols[3] != "0A" {
            continue;
        }
        let Some((addr, port)) = cols[1].split_once(':') else {
            continue;
        };
        let addr = if addr.len() == 8 {
            parse_v4(addr)
        } else {
            parse_v6(addr)
        };
        let (Some(addr), Ok(port)) = (addr, u16::from_str_radix(port, 16)) else {
            continue;
        };
        // For listeners rx_queue is the accept queue; tx_queue is not the backlog.
        let Some((_, rx)) = cols[4].split_once(':') else {
            continue;
        };
        out.push(Listener {
            addr,
            port,
            accept_queue: u32::from_str_radix(rx, 16).unwrap_or(0),
            backlog: None,
            // The socket's inode (column 10): its owner is found by it.
            inode: cols
                .get(9)
                .and_then(|i| i.parse().ok())
                .filter(|i: &u64| *i != 0),
            ..Listener::default()
        });
    }
    out
}

/// This namespace's listeners.
pub fn read() -> Vec<Listener> {
    let mut all = match sock_diag::listeners() {
        Ok(l) => l,
        Err(e) => {
            tracing::debug!("sock_diag failed ({e}); reading /proc/net/tcp");
            let mut all = Vec::new();
            for path in ["/proc/net/tcp", "/proc/net/tcp6"] {
                if let Ok(text) = crate::origin::proc_net::read_bounded(path) {
                    all.extend(parse(&text));
                }
            }
            all
        }
    };
    all.sort_by_key(|l| (l.port, l.addr));
    all.dedup_by(|a, b| a.addr == b.addr && a.port == b.port);
    all
}

mod sock_diag {
    //! The listeners of a TCP LISTEN dump over NETLINK_SOCK_DIAG.

    use std::io;

    use netlink_packet_sock_diag::inet::{InetResponse, StateFlags};

    use super::Listener;
    use crate::sys::netlink;

    /// A listening socket's answer: for listeners the kernel reports the accept queue in
    /// `recv_queue` and the backlog in force in `send_queue`.
    fn listener_of(r: &InetResponse) -> Listener {
        Listener {
            addr: r.header.socket_id.source_address,
            port: r.header.socket_id.source_port,
            accept_queue: r.header.recv_queue,
            backlog: Some(r.header.send_queue),
            inode: Some(u64::from(r.header.inode)).filter(|i| *i != 0),
            ..Listener::default()
        }
    }

    pub fn listeners() -> io::Result<Vec<Listener>> {
        let all = netlink::tcp_sockets(StateFlags::LISTEN)?;
        Ok(all.iter().map(listener_of).collect())
    }

    #[cfg(test)]
    mod tests {
        use std::net::IpAddr;

        use netlink_packet_sock_diag::inet::SocketId;

        use super::*;

        #[test]
        fn a_listeners_queue_and_backlog_are_read() {
            let mut id = SocketId::new_v4();
            id.source_port = 443;
            id.source_address = "127.0.0.1".parse().unwrap();
            let r = InetResponse {
                header: netlink_packet_sock_diag::inet::InetResponseHeader {
                    family: libc::AF_INET as u8,
                    state: 10,
                    timer: None,
                    socket_id: id,
                    recv_queue: 3,
                    send_queue: 2,
                    uid: 0,
                    inode: 4242,
                },
                nlas: Default::default(),
            };
            let l = listener_of(&r);
            assert_eq!(l.inode, Some(4242));
            assert_eq!(l.endpoint(), "127.0.0.1:443");
            assert_eq!((l.accept_queue, l.backlog), (3, Some(2)));
            assert!(l.queue_full());
        }

        #[test]
        fn dumps_this_namespaces_listeners() {
            // Works unprivileged: a listener of our own must show up with its backlog.
            let sock = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let port = sock.local_addr().unwrap().port();
            let all = listeners().unwrap();
            let me = all
                .iter()
                .find(|l| l.port == port)
                .expect("own listener listed");
            assert_eq!(me.addr, "127.0.0.1".parse::<IpAddr>().unwrap());
            assert!(me.backlog.unwrap() > 0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000010:00000000 00:00000000 00000000     0        0 1 1 0000000000000000 100 0 0 10 0
   1: 00000000:01BB 00000000:0000 0A 00000000:00000001 00:00000000 00000000     0        0 2 1 0000000000000000 100 0 0 10 0
   2: 0100020C:1F90 0A0002C0:9C40 01 00000000:00000000 00:00000000 00000000     0        0 3 1 0000000000000000 20 4 30 10 -1
";
    const TCP6: &str = "  sl  local_address                         remote_address                        st tx_queue rx_queue
   0: 00000000000000000000000000000000:01BB 00000000000000000000000000000000:0000 0A 00000080:00000000 00:00000000 00000000     0        0 4 1
   1: 00000000000000000000000001000000:0050 00000000000000000000000000000000:0000 0A 00000080:00000000 00:00000000 00000000     0        0 5 1
";

    #[test]
    fn parses_listeners_and_queues() {
        let l = parse(TCP);
        assert_eq!(l.len(), 2, "only LISTEN rows");
        assert_eq!(l[0].addr, "127.0.0.1".parse::<IpAddr>().unwrap());
        assert_eq!(l[0].port, 8080);
        assert_eq!((l[0].accept_queue, l[0].backlog), (0, None));
        assert!(l[0].is_loopback());
        assert_eq!(l[1].port, 443);
        assert!(l[1].addr.is_unspecified());
        assert_eq!(l[1].accept_queue, 1);
        assert!(!l[1].queue_full(), "backlog unknown from /proc");
        assert!(l[1].accepts("192.0.2.1".parse().unwrap()));
        assert!(!l[0].accepts("192.0.2.1".parse().unwrap()));
    }

    #[test]
    fn parses_ipv6_listeners() {
        let l = parse(TCP6);
        assert_eq!(l[0].addr, "::".parse::<IpAddr>().unwrap());
        assert_eq!(l[1].addr, "::1".parse::<IpAddr>().unwrap());
        assert_eq!(l[1].port, 80);
        assert_eq!(l[1].endpoint(), "[::1]:80");
        assert!(l[0].accepts("192.0.2.1".parse().unwrap()));
    }
}
