//! Kernel TCP counters (/proc/net/netstat TcpExt, /proc/net/snmp Tcp) and their change over
//! the window.

use std::collections::BTreeMap;

/// The counters that corroborate a 521 cause.
pub const WATCHED: [&str; 13] = [
    "ListenOverflows",
    "ListenDrops",
    "TCPReqQFullDrop",
    "TCPReqQFullDoCookies",
    "TCPBacklogDrop",
    "SyncookiesSent",
    "TCPAbortOnData",
    "TCPAbortOnClose",
    "TCPAbortOnLinger",
    "TCPAbortOnMemory",
    "TCPAbortOnTimeout",
    "IPReversePathFilter",
    "OutRsts",
];

/// `Prefix: names...` / `Prefix: values...` line pairs, as in /proc/net/netstat and snmp.
pub fn parse(text: &str) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    let lines: Vec<&str> = text.lines().collect();
    for pair in lines.chunks(2) {
        let [names, values] = pair else { continue };
        let (Some((p1, names)), Some((p2, values))) =
            (names.split_once(':'), values.split_once(':'))
        else {
            continue;
        };
        if p1 != p2 || !matches!(p1, "TcpExt" | "Tcp") {
            continue;
        }
        for (n, v) in names.split_whitespace().zip(values.split_whitespace()) {
            if let Ok(v) = v.parse::<u64>() {
                out.insert(n.to_string(), v);
            }
        }
    }
    out
}

/// This namespace's TCP counters, restricted to [`WATCHED`].
pub fn read() -> BTreeMap<String, u64> {
    let mut all = BTreeMap::new();
    for path in ["/proc/net/netstat", "/proc/net/snmp"] {
        if let Ok(text) = std::fs::read_to_string(path) {
            all.extend(parse(&text));
        }
    }
    all.retain(|k, _| WATCHED.contains(&k.as_str()));
    all
}

/// End minus start for every counter present at both ends.
pub fn delta(start: &BTreeMap<String, u64>, end: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    end.iter()
        .filter_map(|(k, v)| start.get(k).map(|s| (k.clone(), v.saturating_sub(*s))))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_netstat_pairs_and_deltas() {
        let a = parse("TcpExt: SyncookiesSent ListenOverflows ListenDrops\nTcpExt: 0 5 7\nIpExt: InNoRoutes\nIpExt: 3\n");
        assert_eq!(a["ListenOverflows"], 5);
        assert!(!a.contains_key("InNoRoutes"));
        let b = parse("TcpExt: SyncookiesSent ListenOverflows ListenDrops\nTcpExt: 0 8 10\n");
        let d = delta(&a, &b);
        assert_eq!(d["ListenOverflows"], 3);
        assert_eq!(d["ListenDrops"], 3);
        assert_eq!(d["SyncookiesSent"], 0);
    }

    #[test]
    fn parses_snmp_tcp() {
        let s = parse("Tcp: RtoAlgorithm OutRsts\nTcp: 1 42\n");
        assert_eq!(s["OutRsts"], 42);
    }
}
