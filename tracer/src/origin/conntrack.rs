//! Where conntrack says the host sent a connection: for attempts no event came back from (a
//! backend that drops SYNs silently, a full accept queue in a container), the DNAT mapping in
//! `/proc/net/nf_conntrack` names the backend.

use std::{
    collections::HashMap,
    io::{BufRead as _, BufReader, Read as _},
    net::IpAddr,
};

use crate::model::event::Flow;

/// Lines of the conntrack table read at most (a busy host keeps hundreds of thousands).
const MAX_LINES: usize = 1_000_000;
/// Bytes read at most.
const MAX_BYTES: u64 = 256 << 20;

/// The destination each of `flows` was rewritten to: flow -> (address, port). Flows without a
/// DNAT entry (or on a kernel without conntrack's proc file) are left out.
pub fn dnat_targets(flows: &[Flow]) -> HashMap<Flow, (IpAddr, u16)> {
    let mut found = HashMap::new();
    if flows.is_empty() {
        return found;
    }
    let Ok(file) = std::fs::File::open("/proc/net/nf_conntrack") else {
        return found;
    };
    let reader = BufReader::new(file.take(MAX_BYTES));
    for line in reader.lines().take(MAX_LINES) {
        let Ok(line) = line else { break };
        if let Some((flow, target)) = parse_dnat(&line) {
            if flows.contains(&flow) {
                found.insert(flow, target);
                if found.len() == flows.len() {
                    break;
                }
            }
        }
    }
    found
}

/// One conntrack line: the original tuple as the origin saw it arrive (peer -> local) and
/// the reply tuple's source when it differs from the original destination (DNAT).
pub fn parse_dnat(line: &str) -> Option<(Flow, (IpAddr, u16))> {
    let mut fields = line.split_whitespace();
    if fields.nth(2)? != "tcp" {
        return None;
    }
    let mut tuples: Vec<[Option<&str>; 4]> = Vec::new();
    for word in fields {
        let Some((key, value)) = word.split_once('=') else {
            continue;
        };
        let slot = match key {
            "src" => 0,
            "dst" => 1,
            "sport" => 2,
            "dport" => 3,
            _ => continue,
        };
        if slot == 0 {
            tuples.push([None; 4]);
        }
        if let Some(t) = tuples.last_mut() {
            t[slot] = Some(value);
        }
    }
    let [original, reply] = tuples.get(..2)? else {
        return None;
    };
    let parse = |t: &[Option<&str>; 4]| -> Option<(IpAddr, IpAddr, u16, u16)> {
        Some((
            t[0]?.parse().ok()?,
            t[1]?.parse().ok()?,
            t[2]?.parse().ok()?,
            t[3]?.parse().ok()?,
        ))
    };
    let (peer, local, peer_port, local_port) = parse(original)?;
    let (to, _, to_port, _) = parse(reply)?;
    if (to, to_port) == (local, local_port) {
        return None;
    }
    Some((
        Flow {
            peer,
            peer_port,
            local,
            local_port,
        },
        (to, to_port),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dnat_entry_names_the_backend() {
        let line = "ipv4     2 tcp      6 118 SYN_SENT src=173.245.48.10 dst=192.0.2.1 sport=40000 dport=443 [UNREPLIED] src=172.17.0.2 dst=173.245.48.10 sport=80 dport=40000 mark=0 zone=0 use=2";
        let (flow, to) = parse_dnat(line).unwrap();
        assert_eq!(flow.peer, "173.245.48.10".parse::<IpAddr>().unwrap());
        assert_eq!((flow.peer_port, flow.local_port), (40000, 443));
        assert_eq!(to, ("172.17.0.2".parse().unwrap(), 80));
    }

    #[test]
    fn ipv6_and_entries_without_dnat() {
        let v6 = "ipv6     10 tcp      6 118 SYN_SENT src=2606:4700::10 dst=2001:db8::1 sport=40000 dport=443 [UNREPLIED] src=fd00:17::2 dst=2606:4700::10 sport=80 dport=40000 mark=0 use=1";
        let (flow, to) = parse_dnat(v6).unwrap();
        assert_eq!(flow.local, "2001:db8::1".parse::<IpAddr>().unwrap());
        assert_eq!(to, ("fd00:17::2".parse().unwrap(), 80));
        let plain = "ipv4     2 tcp      6 431999 ESTABLISHED src=173.245.48.10 dst=192.0.2.1 sport=40000 dport=443 src=192.0.2.1 dst=173.245.48.10 sport=443 dport=40000 [ASSURED] mark=0 use=1";
        assert_eq!(parse_dnat(plain), None);
        let udp = "ipv4     2 udp      17 29 src=10.0.0.1 dst=10.0.0.2 sport=53 dport=53 src=10.0.0.3 dst=10.0.0.1 sport=53 dport=53 mark=0 use=1";
        assert_eq!(parse_dnat(udp), None);
        assert_eq!(parse_dnat("garbage"), None);
        assert_eq!(parse_dnat(""), None);
    }
}
