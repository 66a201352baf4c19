//! Before 5.17 `skb:kfree_skb` has no reason: the `location` it carries (the address that freed
//! the packet) is resolved through /proc/kallsyms to a function, and the function says what
//! kind of drop it was — netfilter's hook, TCP with no socket, a tc or XDP program, a socket
//! filter. The verdicts then stay those of newer kernels; the report notes how they were
//! derived.

/// The names location-derived drops get (as newer kernels call them where they can).
pub const NAMES: [&str; 8] = [
    "NETFILTER_DROP",
    "NO_SOCKET",
    "SOCKET_FILTER",
    "TC_INGRESS",
    "XDP",
    "IP_INPUT_ROUTE",
    "CPU_BACKLOG",
    "SOCKET_BACKLOG",
];

/// What a freeing function means: the name given to the drop, as a newer kernel would call it.
pub fn reason_of_function(function: &str) -> Option<&'static str> {
    // The compiler's clones keep the name before a suffix: ip_rcv_finish_core.isra.0.
    let function = function.split('.').next().unwrap_or(function);
    Some(match function {
        "nft_do_chain"
        | "nf_hook_slow"
        | "ipt_do_table"
        | "ip6t_do_table"
        | "nf_hook_slow_list"
        | "nft_do_chain_ipv4"
        | "nft_do_chain_inet"
        | "nf_reject_ip_tcphdr_get" => "NETFILTER_DROP",
        "tcp_v4_rcv" | "tcp_v6_rcv" => "NO_SOCKET",
        "sk_filter_trim_cap" => "SOCKET_FILTER",
        "tcf_classify" | "cls_bpf_classify" | "sch_handle_ingress" | "tcf_classify_ingress" => {
            "TC_INGRESS"
        }
        "do_xdp_generic" | "netif_receive_generic_xdp" => "XDP",
        "ip_rcv_finish_core"
        | "ip_rcv_finish"
        | "ip_route_input_slow"
        | "ip_list_rcv_finish"
        | "ip_sublist_rcv"
        | "ip_list_rcv" => "IP_INPUT_ROUTE",
        "enqueue_to_backlog" => "CPU_BACKLOG",
        "tcp_add_backlog" => "SOCKET_BACKLOG",
        _ => return None,
    })
}

/// Function symbols of the kernel, sorted by address, for resolving a location.
#[derive(Clone, Debug, Default)]
pub struct Symbols {
    sorted: Vec<(u64, String)>,
}

impl Symbols {
    /// From /proc/kallsyms text (`ffffffff81000000 T _stext`); text symbols only. Addresses
    /// read as zero (an unprivileged reader) give an empty table.
    pub fn parse(text: &str) -> Self {
        let mut sorted: Vec<(u64, String)> = text
            .lines()
            .filter_map(|l| {
                let mut w = l.split_whitespace();
                let addr = u64::from_str_radix(w.next()?, 16).ok()?;
                let kind = w.next()?;
                let name = w.next()?;
                (addr != 0 && matches!(kind, "t" | "T")).then(|| (addr, name.to_string()))
            })
            .collect();
        sorted.sort_unstable();
        Self { sorted }
    }

    /// /proc/kallsyms of this kernel (root reads real addresses).
    pub fn read() -> Self {
        std::fs::read_to_string("/proc/kallsyms")
            .map(|t| Self::parse(&t))
            .unwrap_or_default()
    }

    pub fn is_empty(&self) -> bool {
        self.sorted.is_empty()
    }

    /// The function containing `addr`.
    pub fn function_at(&self, addr: u64) -> Option<&str> {
        let i = self.sorted.partition_point(|(a, _)| *a <= addr);
        i.checked_sub(1).map(|i| self.sorted[i].1.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_resolve_to_functions_and_reasons() {
        let s = Symbols::parse(
            "ffffffff81a00000 T tcp_v4_rcv\nffffffff81a02000 t tcp_v4_fill_cb\nffffffff81b00000 T nft_do_chain\nffffffff81b00800 T nft_do_chain_ipv4\n0000000000000000 D some_data\n",
        );
        assert_eq!(s.function_at(0xffffffff81a00123), Some("tcp_v4_rcv"));
        assert_eq!(s.function_at(0xffffffff81b00010), Some("nft_do_chain"));
        assert_eq!(s.function_at(0xffffffff80000000), None);
        assert_eq!(reason_of_function("tcp_v4_rcv"), Some("NO_SOCKET"));
        assert_eq!(reason_of_function("nft_do_chain"), Some("NETFILTER_DROP"));
        assert_eq!(reason_of_function("kfree_skb_list"), None);
        assert_eq!(
            reason_of_function("ip_rcv_finish_core.isra.0"),
            Some("IP_INPUT_ROUTE")
        );
        for f in [
            "nft_do_chain",
            "tcp_v6_rcv",
            "tcf_classify",
            "do_xdp_generic",
            "ip_rcv_finish",
            "tcp_add_backlog",
            "enqueue_to_backlog",
            "sk_filter_trim_cap",
        ] {
            assert!(NAMES.contains(&reason_of_function(f).unwrap()), "{f}");
        }
        // An unprivileged reader sees zero addresses: nothing to resolve with.
        assert!(Symbols::parse("0000000000000000 T tcp_v4_rcv\n").is_empty());
    }
}
