//! Listening TCP sockets from /proc/net/tcp{,6}: address, port and accept-queue fill.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::Serialize;

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Listener {
    pub addr: IpAddr,
    pub port: u16,
    /// Connections waiting in the accept queue (`sk_ack_backlog`).
    pub accept_queue: u32,
    /// The backlog the application asked for (`sk_max_ack_backlog`).
    pub backlog: u32,
}

impl Listener {
    /// The kernel drops new SYNs when the queue holds more than the backlog.
    pub fn queue_full(&self) -> bool {
        self.accept_queue > self.backlog
    }

    pub fn is_wildcard(&self) -> bool {
        self.addr.is_unspecified()
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

    pub fn endpoint(&self) -> String {
        match self.addr {
            IpAddr::V6(a) => format!("[{a}]:{}", self.port),
            a => format!("{a}:{}", self.port),
        }
    }
}

fn parse_v4(hex: &str) -> Option<IpAddr> {
    // Stored as a host-order u32 of the network-order bytes.
    let raw = u32::from_str_radix(hex, 16).ok()?;
    Some(IpAddr::V4(Ipv4Addr::from(raw.to_ne_bytes())))
}

fn parse_v6(hex: &str) -> Option<IpAddr> {
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
        let addr = if addr.len() == 8 { parse_v4(addr) } else { parse_v6(addr) };
        let (Some(addr), Ok(port)) = (addr, u16::from_str_radix(port, 16)) else {
            continue;
        };
        let Some((tx, rx)) = cols[4].split_once(':') else {
            continue;
        };
        out.push(Listener {
            addr,
            port,
            accept_queue: u32::from_str_radix(rx, 16).unwrap_or(0),
            backlog: u32::from_str_radix(tx, 16).unwrap_or(0),
        });
    }
    out
}

/// This namespace's listeners.
pub fn read() -> Vec<Listener> {
    let mut all = Vec::new();
    for path in ["/proc/net/tcp", "/proc/net/tcp6"] {
        if let Ok(text) = std::fs::read_to_string(path) {
            all.extend(parse(&text));
        }
    }
    all.sort_by(|a, b| (a.port, a.addr).cmp(&(b.port, b.addr)));
    all.dedup_by(|a, b| a.addr == b.addr && a.port == b.port);
    all
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
        assert_eq!((l[0].accept_queue, l[0].backlog), (0, 16));
        assert!(l[0].is_loopback());
        assert_eq!(l[1].port, 443);
        assert!(l[1].is_wildcard());
        assert_eq!((l[1].accept_queue, l[1].backlog), (1, 0));
        assert!(l[1].queue_full());
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
