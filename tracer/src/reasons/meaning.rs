//! What each kernel drop or reset reason means for an edge connection, in plain words, and what
//! an admin does about it. Keyed by the kernel's own name (numbers move between kernels; names
//! are resolved at start), so one table serves every kernel. The kernel's name always stays in
//! the evidence beside the meaning.

/// The plain meaning of a kernel reason and the next step it calls for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Meaning {
    pub what: &'static str,
    pub next: &'static str,
    /// False for a reason this table does not describe (it is then named and said unknown).
    pub known: bool,
}

const fn m(what: &'static str, next: &'static str) -> Meaning {
    Meaning {
        what,
        next,
        known: true,
    }
}

const UNKNOWN_DROP: Meaning = Meaning {
    what: "a drop reason this tracer does not know",
    next: "Look the name up in the kernel's include/net/dropreason-core.h for this kernel, and check the matching /proc/net/netstat counters.",
    known: false,
};

const UNKNOWN_RESET: Meaning = Meaning {
    what: "a reset reason this tracer does not know",
    next: "Look the name up in the kernel's include/net/rstreason.h for this kernel.",
    known: false,
};

const MD5_AO: Meaning = m(
    "TCP-MD5 or TCP-AO signature mismatch: a key is configured for this address (as BGP daemons do), and the edge signs nothing",
    "Remove the TCP_MD5SIG / TCP-AO key that covers the web server's address and port (check routing daemons and setsockopt users).",
);

const NEIGH: Meaning = m(
    "the reply could not be sent: the next hop's link-layer address was not resolved (ARP/neighbour discovery failed or its queue was full)",
    "Check the gateway the reply route uses (`ip neigh show`, `ip route get <edge address>`): is it reachable on that link?",
);

/// The meaning of an `skb_drop_reason` by its kernel name.
pub fn drop_meaning(name: &str) -> Meaning {
    match name {
        "NO_SOCKET" => m(
            "nothing listens on that address and port: the kernel answered the SYN with RST",
            "Start the web server or bind it to the address and port the edge connects to.",
        ),
        "NETFILTER_DROP" => m(
            "an nftables/iptables rule dropped or rejected it",
            "Find the rule (`nft -a list ruleset`, `iptables-save`) and allow Cloudflare's ranges before it.",
        ),
        "IP_RPFILTER" => m(
            "reverse-path filtering: the route back to the sender leaves by another interface, so strict rp_filter drops the packet",
            "Route replies back out the interface the edge's packets arrive on, or set rp_filter=2 (loose) on that interface.",
        ),
        "IP_INADDRERRORS" => m(
            "the destination address is not valid on this host (not local, broadcast or martian)",
            "Check that the public address Cloudflare connects to is configured on this host (a floating or elastic IP, provider DNAT).",
        ),
        "IP_INNOROUTES" => m(
            "no route for the destination: the host would forward it but has no route",
            "Check the routing table and net.ipv4.ip_forward for the address the edge connects to (`ip route get <address>`).",
        ),
        "IP_INPUT_ROUTE" => m(
            "the input route lookup refused it (before 5.17 the kernel does not say why: strict reverse-path filtering, no route, or a martian source)",
            "Check `ip route get <edge address> from <origin address> iif <iface>` and net.ipv4.conf.<iface>.rp_filter (2, loose, if replies leave by another interface).",
        ),
        "IP_OUTNOROUTES" => m(
            "no route to send the reply",
            "Add a route back to Cloudflare's ranges (usually the default route): `ip route get <edge address>` must succeed.",
        ),
        "OTHERHOST" => m(
            "the frame was addressed to another host's link-layer address and reached this one only in promiscuous mode",
            "Check for a duplicate IP address or a stale ARP entry upstream: the edge's packets are sent to another machine.",
        ),
        "XDP" => m(
            "another XDP program on the interface dropped it (XDP_DROP, or an XDP_ABORTED error)",
            "List the XDP programs on the interface (`ip -details link show dev <iface>`) and allow Cloudflare's ranges in that program (DDoS filter, load balancer).",
        ),
        "SOCKET_FILTER" => m(
            "a socket filter (BPF attached to the listening socket) dropped it",
            "Check the server's socket filters (SO_ATTACH_FILTER, SO_ATTACH_REUSEPORT_EBPF) and what they admit.",
        ),
        "SECURITY_HOOK" => m(
            "a security module (SELinux, AppArmor, Smack, BPF LSM) denied it",
            "Check the audit log (`ausearch -m avc`, journalctl) for denials of the web server's port.",
        ),
        "TCP_CSUM" | "IP_CSUM" => m(
            "the checksum was wrong: the packet was corrupted on the way or by a NIC offload",
            "Test with checksum offload off (`ethtool -K <iface> rx off`) and check middleboxes and the NIC driver.",
        ),
        "PKT_TOO_SMALL" | "IP_INHDR" | "TCP_INVALID_SEQUENCE" => m(
            "a malformed or truncated packet",
            "Capture the arriving packets (`tcpdump -ni <iface> -s0`) and check tunnels, MTU and middleboxes on the path.",
        ),
        "IP_NOPROTO" | "UNHANDLED_PROTO" => m(
            "no handler for the packet's protocol on this host",
            "Check that the host is not stripping or rewriting the TCP header (tunnels, encapsulation offload).",
        ),
        "TCP_LISTEN_OVERFLOW" | "TCP_REQQFULLDROP" | "SOCKET_BACKLOG" => m(
            "the listening socket's queue was full: the server does not accept connections fast enough",
            "Raise the listen backlog and net.core.somaxconn, add workers, and keep net.ipv4.tcp_syncookies=1.",
        ),
        "CPU_BACKLOG" => m(
            "the per-CPU input queue was full (net.core.netdev_max_backlog)",
            "Raise net.core.netdev_max_backlog and spread receive load across CPUs (RPS/RSS).",
        ),
        "PROTO_MEM" | "TCP_OFOMERGE" | "SOCKET_RCVBUFF" => m(
            "TCP memory or a socket's receive buffer was exhausted",
            "Check net.ipv4.tcp_mem and memory pressure (`cat /proc/net/sockstat`).",
        ),
        "IPV6DISABLED" => m(
            "IPv6 is disabled on the interface the packet arrived on",
            "Enable IPv6 on the interface, or remove the AAAA record Cloudflare uses for this origin.",
        ),
        "XFRM_POLICY" => m(
            "an IPsec (xfrm) policy rejected it",
            "Check `ip xfrm policy` for a policy that covers Cloudflare's ranges.",
        ),
        "IP_LOCAL_SOURCE" | "IP_INVALID_SOURCE" => m(
            "the source address is invalid here (local, multicast or zero)",
            "Check upstream NAT: Cloudflare's packets should arrive with the edge's own address.",
        ),
        "NOT_SPECIFIED" => m(
            "the kernel gave no reason",
            "Check the /proc/net/netstat counters that rose during the window.",
        ),
        r if r.starts_with("TC_") => m(
            "a tc filter or BPF program on the interface dropped it",
            "List the filters (`tc filter show dev <iface> ingress`, `tc filter show dev <iface> egress`) and allow Cloudflare's ranges in them.",
        ),
        r if r.starts_with("BPF_CGROUP") => m(
            "a cgroup BPF program dropped it (systemd IPAddressDeny=, a container runtime's network policy)",
            "Check the web server's unit (`systemctl show -p IPAddressAllow -p IPAddressDeny <unit>`) and container network policies.",
        ),
        r if r.starts_with("NEIGH_") => NEIGH,
        r if r.starts_with("TCP_MD5") || r.starts_with("TCP_AO") => MD5_AO,
        _ => UNKNOWN_DROP,
    }
}

const SERVER_CLOSED_FIRST: Meaning = m(
    "the server had already closed the connection when the edge sent on it: its idle or keep-alive timeout is shorter than the edge's",
    "Make the server's keep-alive / idle timeout longer than the proxy's in front of it (nginx keepalive_timeout, Apache KeepAliveTimeout, the application's idle timeout), and check for workers that close connections early.",
);

const OUT_OF_STEP: Meaning = m(
    "a segment out of step with the connection (invalid ACK, PAWS, old ACK): a middlebox rewrote it, or the connection is stale",
    "Check load balancers and NAT devices between the edge and the origin for sequence rewriting and short state timeouts.",
);

/// The meaning of an `sk_rst_reason` (6.10+) by its kernel name.
pub fn reset_meaning(name: &str) -> Meaning {
    match name {
        "TCP_TIMEWAIT_SOCKET" | "TCP_ABORT_ON_DATA" => SERVER_CLOSED_FIRST,
        "TCP_ABORT_ON_CLOSE" => m(
            "the application closed the connection with data unread (it did not read the whole request)",
            "Check the application's logs for errors and request size limits at the times of the resets.",
        ),
        "TCP_ABORT_ON_LINGER" => m(
            "the application aborted the connection on purpose (close with SO_LINGER 0)",
            "Check the server or proxy settings that abort connections (lingering close off, connection limits).",
        ),
        "TCP_ABORT_ON_MEMORY" => m(
            "the kernel ran out of memory for TCP sockets or orphans and reset the connection",
            "Raise net.ipv4.tcp_mem / net.ipv4.tcp_max_orphans, or find what holds so many sockets (`ss -s`).",
        ),
        "TCP_KEEPALIVE_TIMEOUT" => m(
            "TCP keep-alive probes went unanswered: the edge was unreachable from here",
            "Check the return path to Cloudflare (routes, outbound filters) — replies may be lost.",
        ),
        "TCP_STATE" | "TCP_DISCONNECT_WITH_DATA" => m(
            "the application shut the connection down while data was in flight",
            "Check the application's logs at the times of the resets.",
        ),
        "NO_SOCKET" => m(
            "the connection's socket no longer existed (the server restarted or closed it)",
            "Check for server restarts and crashes at the times of the resets.",
        ),
        "INVALID_SYN" | "TCP_FLAGS" => m(
            "an unexpected SYN or flag combination on an existing connection",
            "Check middleboxes between the edge and the origin.",
        ),
        "TCP_INVALID_ACK_SEQUENCE" | "TCP_RFC7323_PAWS" | "TCP_TOO_OLD_ACK"
        | "TCP_ACK_UNSENT_DATA" | "TCP_OLD_ACK" => OUT_OF_STEP,
        "NOT_SPECIFIED" => m(
            "the kernel gave no reason",
            "Check the web server and application logs at the times of the resets.",
        ),
        _ => UNKNOWN_RESET,
    }
}

/// Before 6.10 the kernel gives no reset reason; the TcpExt counter that rose says which abort
/// it was. (counter, the reset reason it stands for)
pub const RESET_COUNTERS: [(&str, &str); 5] = [
    ("TCPAbortOnData", "TCP_ABORT_ON_DATA"),
    ("TCPAbortOnClose", "TCP_ABORT_ON_CLOSE"),
    ("TCPAbortOnLinger", "TCP_ABORT_ON_LINGER"),
    ("TCPAbortOnMemory", "TCP_ABORT_ON_MEMORY"),
    ("TCPAbortOnTimeout", "TCP_KEEPALIVE_TIMEOUT"),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_the_issue_names_has_a_meaning() {
        for name in [
            "NETFILTER_DROP",
            "NO_SOCKET",
            "IP_RPFILTER",
            "IP_INADDRERRORS",
            "IP_INNOROUTES",
            "OTHERHOST",
            "XDP",
            "TC_INGRESS",
            "TC_DROP",
            "SOCKET_FILTER",
            "TCP_CSUM",
            "PKT_TOO_SMALL",
            "IP_NOPROTO",
            "TCP_LISTEN_OVERFLOW",
            "TCP_REQQFULLDROP",
            "NEIGH_FAILED",
            "NEIGH_QUEUEFULL",
            "TCP_MD5NOTFOUND",
            "TCP_AOFAILURE",
        ] {
            let m = drop_meaning(name);
            assert!(
                m.known && !m.what.is_empty() && !m.next.is_empty(),
                "{name}"
            );
        }
        for name in [
            "TCP_TIMEWAIT_SOCKET",
            "TCP_ABORT_ON_DATA",
            "TCP_ABORT_ON_CLOSE",
            "TCP_ABORT_ON_LINGER",
            "TCP_ABORT_ON_MEMORY",
        ] {
            assert!(reset_meaning(name).known, "{name}");
        }
        for (counter, reason) in RESET_COUNTERS {
            assert!(reset_meaning(reason).known, "{counter}");
        }
    }

    #[test]
    fn unknown_reasons_say_so() {
        assert!(!drop_meaning("SOMETHING_NEW").known);
        assert!(drop_meaning("SUBSYS_2_5").what.contains("does not know"));
        assert!(!reset_meaning("RST_REASON_77").known);
        assert_eq!(
            reset_meaning("TCP_TIMEWAIT_SOCKET"),
            reset_meaning("TCP_ABORT_ON_DATA")
        );
    }
}
