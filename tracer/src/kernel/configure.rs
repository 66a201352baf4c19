//! The pure part of loading: what this kernel offers (tracepoint formats, BTF offsets and
//! enums, forwarding) and what the command wants, turned into the programs' `Config`, the
//! reason table and the notes. Read once by [`Facts::read`]; unit-tested from saved formats.

use std::{collections::HashMap, path::Path};

use tracer_common::{
    Config, KernelOffsets, KfreeSkbLayout, SendResetLayout, SockOffsets, SockTpLayout,
    CONFIG_F_ALL_PEERS, CONFIG_F_ATTEMPT_DROPS, CONFIG_F_FOLLOW_FORWARDED, CONFIG_F_NETNS_FILTER,
    CONFIG_F_NO_CLOSES, FIELD_ABSENT,
};

use super::{
    btf, forwarding_enabled, hooks, off, own_netns_inode, reason_bits, sock_layout, tracefs,
};
use crate::reasons::{location::Symbols, DropClass, ReasonTable};

/// What this kernel offers, read before anything is loaded.
pub struct Facts {
    pub netns_inum: u32,
    /// What BTF says, or why there is none.
    pub btf: Result<BtfFacts, String>,
    /// The format of each tracepoint of the hook table this kernel has, by program.
    pub formats: HashMap<&'static str, tracefs::Format>,
    /// One note per tracepoint it lacks.
    pub format_notes: Vec<String>,
    /// This namespace forwards packets (IPv4 or IPv6).
    pub forwarding: bool,
}

/// The kernel's struct offsets and reason enums, from its BTF.
pub struct BtfFacts {
    pub offsets: KernelOffsets,
    /// Offsets BTF did not give, named.
    pub missing: Vec<String>,
    pub sock: SockOffsets,
    /// `sock.sk_err`: why a dialling socket closed.
    pub sk_err: u16,
    pub drop_reasons: HashMap<u32, String>,
    pub reset_reasons: HashMap<u32, String>,
}

/// What the command asks of the programs.
pub struct Wanted {
    pub all_peers: bool,
    pub closes: bool,
    pub attempt_drops: Option<fn(DropClass) -> bool>,
}

/// The configuration to load with, and what is known about this kernel.
pub struct Configured {
    pub config: Config,
    pub reasons: ReasonTable,
    pub notes: Vec<String>,
    /// The formats the programs can use (a tracepoint whose layout is unusable is dropped).
    pub formats: HashMap<&'static str, tracefs::Format>,
    pub follows_forwarded: bool,
}

impl BtfFacts {
    pub fn of(b: &btf::KernelBtf) -> Self {
        let (offsets, missing) = b.kernel_offsets();
        BtfFacts {
            offsets,
            missing,
            sock: b.sock_offsets(),
            sk_err: b.offset_of("sock", "sk_err").unwrap_or(FIELD_ABSENT),
            drop_reasons: b.enum_names("skb_drop_reason", "SKB_DROP_REASON_"),
            reset_reasons: b.enum_names("sk_rst_reason", "SK_RST_REASON_"),
        }
    }
}

impl Facts {
    /// Reads them: this namespace, the tracepoints' format files under `tracefs`, BTF (as
    /// loaded by the caller, who attaches the BTF programs with it), forwarding.
    pub fn read(
        tracefs: &Path,
        kernel_btf: Result<&btf::KernelBtf, &anyhow::Error>,
    ) -> anyhow::Result<Self> {
        let mut formats = HashMap::new();
        let mut format_notes = Vec::new();
        for hook in &hooks::TRACEPOINTS {
            match tracefs::Format::read(tracefs, hook.category, hook.name) {
                Ok(f) => {
                    formats.insert(hook.program, f);
                }
                Err(e) => format_notes.push(format!(
                    "{} is not available ({e:#}): not traced — {}",
                    hook.name, hook.without
                )),
            }
        }
        Ok(Facts {
            netns_inum: own_netns_inode()?,
            btf: kernel_btf.map(BtfFacts::of).map_err(|e| format!("{e:#}")),
            formats,
            format_notes,
            forwarding: forwarding_enabled(),
        })
    }
}

/// The configuration for `facts` and `wanted`; `kallsyms` is read only on kernels whose
/// `kfree_skb` has no reason (before 5.17), to tell drops apart by the freeing function.
pub fn configure(facts: Facts, wanted: &Wanted, kallsyms: impl FnOnce() -> Symbols) -> Configured {
    let Facts {
        netns_inum,
        btf,
        mut formats,
        format_notes,
        forwarding,
    } = facts;
    let mut notes = Vec::new();
    let mut config = Config::DEFAULT;
    config.netns_inum = netns_inum;
    if wanted.all_peers {
        config.flags |= CONFIG_F_ALL_PEERS;
    }

    let mut drop_names = HashMap::new();
    let mut reset_names = HashMap::new();
    let kernel_btf = match btf {
        Ok(b) => Some(b),
        Err(e) => {
            notes.push(format!(
                "no BTF ({e}): drops cannot be traced and events from other network namespaces are not filtered"
            ));
            None
        }
    };
    if let Some(b) = &kernel_btf {
        let (offsets, missing) = (b.offsets, &b.missing);
        config.kernel = offsets;
        config.sock = b.sock;
        config.sk_err = b.sk_err;
        if offsets.sk_net != FIELD_ABSENT
            && offsets.net_inum != FIELD_ABSENT
            && offsets.skb_sk != FIELD_ABSENT
        {
            config.flags |= CONFIG_F_NETNS_FILTER;
        } else {
            notes.push(format!(
                "network namespace filter off ({}): events from other namespaces may be counted",
                missing.join("; ")
            ));
        }
    }

    // Tracepoint layouts from this kernel's format files.
    notes.extend(format_notes);
    if let Some(f) = formats.get("tp_kfree_skb") {
        config.kfree_skb = KfreeSkbLayout {
            skbaddr: off(f, "skbaddr"),
            location: off(f, "location"),
            protocol: off(f, "protocol"),
            reason: off(f, "reason"),
        };
        drop_names = f.symbols("reason");
        let k = &config.kernel;
        if k.skb_head == FIELD_ABSENT || k.skb_network_header == FIELD_ABSENT {
            notes.push("kfree_skb: sk_buff layout unknown (no BTF): drops are not traced".into());
            formats.remove("tp_kfree_skb");
        }
    }
    if let Some(f) = formats.get("tp_send_reset") {
        let sockaddr = f.fields.get("saddr").is_some_and(|s| s.size == 28);
        config.send_reset = SendResetLayout {
            skbaddr: off(f, "skbaddr"),
            state: off(f, "state"),
            reason: off(f, "reason"),
            sockaddr_saddr: if sockaddr {
                off(f, "saddr")
            } else {
                FIELD_ABSENT
            },
            sockaddr_daddr: if sockaddr {
                off(f, "daddr")
            } else {
                FIELD_ABSENT
            },
            _pad: 0,
            split: if sockaddr {
                SockTpLayout {
                    skaddr: off(f, "skaddr"),
                    ..SockTpLayout::ABSENT
                }
            } else {
                sock_layout(f)
            },
        };
        reset_names = f.symbols("reason");
        if config.send_reset.reason == FIELD_ABSENT {
            notes.push("tcp_send_reset has no reason field: resets are reported without the kernel's reason, refusals come from kfree_skb NO_SOCKET".into());
        }
    }
    let mut reasons = ReasonTable::new(drop_names, reset_names);
    if let Some(b) = kernel_btf {
        reasons.fill_from(ReasonTable::new(b.drop_reasons, b.reset_reasons));
    }
    if !wanted.closes {
        config.flags |= CONFIG_F_NO_CLOSES;
    }
    if config.kfree_skb.reason == FIELD_ABSENT {
        let symbols = kallsyms();
        if symbols.is_empty() {
            notes.push("skb:kfree_skb has no drop reason on this kernel (before 5.17) and /proc/kallsyms gives no addresses: drops are not told apart".into());
        } else {
            reasons.by_location(symbols);
            notes.push("skb:kfree_skb has no drop reason on this kernel (before 5.17): drops are told apart by the kernel function that freed the packet (/proc/kallsyms)".into());
        }
    }
    config.no_socket_reason = reasons
        .drop_codes(|c| c == DropClass::NoSocket)
        .first()
        .copied()
        .unwrap_or(0);
    if let Some(decides) = wanted.attempt_drops {
        if config.kfree_skb.reason != FIELD_ABSENT {
            config.flags |= CONFIG_F_ATTEMPT_DROPS;
            config.drop_reasons = reason_bits(&reasons.drop_codes(decides));
            config.teardown_reasons =
                reason_bits(&reasons.drop_codes(|c| c == DropClass::Teardown));
        }
    }
    let follows_forwarded = forwarding;
    if follows_forwarded {
        config.flags |= CONFIG_F_FOLLOW_FORWARDED;
        notes.push(
            "this namespace forwards packets: edge connections handed to other namespaces (DNAT to containers) are followed there"
                .into(),
        );
    }
    for hook in &hooks::TRACEPOINTS {
        if let (Some(set), Some(f)) = (hook.layout, formats.get(hook.program)) {
            set(&mut config, f);
        }
    }
    Configured {
        config,
        reasons,
        notes,
        formats,
        follows_forwarded,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `skb:kfree_skb` as 6.18 has it (with a reason) and as 5.10 has it (without).
    const KFREE_SKB_REASON: &str = "format:
\tfield:void * skbaddr;\toffset:8;\tsize:8;\tsigned:0;
\tfield:void * location;\toffset:16;\tsize:8;\tsigned:0;
\tfield:unsigned short protocol;\toffset:32;\tsize:2;\tsigned:0;
\tfield:enum skb_drop_reason reason;\toffset:36;\tsize:4;\tsigned:0;
print fmt: \"x\", __print_symbolic(REC->reason, { 3, \"NO_SOCKET\" }, { 12, \"NETFILTER_DROP\" })
";
    const KFREE_SKB_5_10: &str = "format:
\tfield:void * skbaddr;\toffset:8;\tsize:8;\tsigned:0;
\tfield:void * location;\toffset:16;\tsize:8;\tsigned:0;
\tfield:unsigned short protocol;\toffset:24;\tsize:2;\tsigned:0;
print fmt: \"x\"
";

    fn btf() -> BtfFacts {
        BtfFacts {
            offsets: KernelOffsets {
                skb_sk: 24,
                skb_dev: 16,
                skb_head: 200,
                skb_network_header: 190,
                skb_transport_header: 188,
                dev_nd_net: 280,
                sk_net: 48,
                net_inum: 184,
                skb_protocol: 180,
                net_user_ns: 120,
                userns_level: 144,
                _pad: [0; 1],
            },
            missing: Vec::new(),
            sock: SockOffsets {
                family: 16,
                protocol: 513,
                sport: 782,
                dport: 12,
                rcv_saddr: 4,
                daddr: 0,
                v6_rcv_saddr: 72,
                v6_daddr: 56,
            },
            sk_err: 372,
            drop_reasons: HashMap::new(),
            reset_reasons: HashMap::new(),
        }
    }

    fn facts(kfree_skb: &str, btf: Result<BtfFacts, String>, forwarding: bool) -> Facts {
        let mut formats = HashMap::new();
        formats.insert("tp_kfree_skb", tracefs::Format::parse(kfree_skb).unwrap());
        Facts {
            netns_inum: 4026531840,
            btf,
            formats,
            format_notes: vec!["tcp_retransmit_synack is not available (x): not traced".into()],
            forwarding,
        }
    }

    const DIAGNOSE: Wanted = Wanted {
        all_peers: false,
        closes: true,
        attempt_drops: Some(DropClass::decides_attempts),
    };

    fn no_kallsyms() -> Symbols {
        panic!("kallsyms read on a kernel whose kfree_skb has a reason")
    }

    #[test]
    fn a_kernel_with_reasons_and_btf_filters_in_the_kernel() {
        let c = configure(
            facts(KFREE_SKB_REASON, Ok(btf()), false),
            &DIAGNOSE,
            no_kallsyms,
        );
        let flags = c.config.flags;
        assert_ne!(flags & CONFIG_F_NETNS_FILTER, 0);
        assert_ne!(
            flags & CONFIG_F_ATTEMPT_DROPS,
            0,
            "drops filtered by reason"
        );
        assert_eq!(flags & CONFIG_F_FOLLOW_FORWARDED, 0);
        assert_eq!(flags & CONFIG_F_NO_CLOSES, 0);
        assert_eq!(c.config.kfree_skb.reason, 36);
        assert_eq!(c.config.no_socket_reason, 3, "from the format's symbols");
        assert!(c.formats.contains_key("tp_kfree_skb"));
        // The missing tracepoint is said, and nothing else is.
        assert_eq!(c.notes.len(), 1, "{:?}", c.notes);
        assert!(c.notes[0].contains("tcp_retransmit_synack"));
        assert!(!c.follows_forwarded);
    }

    #[test]
    fn before_5_17_drops_are_told_apart_by_the_freeing_function() {
        let mut read = false;
        let c = configure(facts(KFREE_SKB_5_10, Ok(btf()), false), &DIAGNOSE, || {
            read = true;
            Symbols::default()
        });
        assert!(read, "kallsyms consulted");
        assert_eq!(c.config.kfree_skb.reason, FIELD_ABSENT);
        // No reasons to filter on in the kernel: every drop of a watched flow comes up.
        assert_eq!(c.config.flags & CONFIG_F_ATTEMPT_DROPS, 0);
        assert!(
            c.notes.iter().any(|n| n.contains("before 5.17")),
            "{:?}",
            c.notes
        );
    }

    #[test]
    fn without_btf_drops_are_not_traced_and_namespaces_not_filtered() {
        let c = configure(
            facts(
                KFREE_SKB_REASON,
                Err("no /sys/kernel/btf/vmlinux".into()),
                true,
            ),
            &DIAGNOSE,
            no_kallsyms,
        );
        assert_eq!(c.config.flags & CONFIG_F_NETNS_FILTER, 0);
        assert!(
            !c.formats.contains_key("tp_kfree_skb"),
            "sk_buff layout unknown"
        );
        assert!(c.notes.iter().any(|n| n.starts_with("no BTF")));
        assert!(c.follows_forwarded);
        assert_ne!(c.config.flags & CONFIG_F_FOLLOW_FORWARDED, 0);
        assert!(c.notes.iter().any(|n| n.contains("forwards packets")));
    }

    #[test]
    fn events_wants_every_drop_and_the_agent_no_closes() {
        let events = Wanted {
            all_peers: true,
            closes: false,
            attempt_drops: None,
        };
        let c = configure(
            facts(KFREE_SKB_REASON, Ok(btf()), false),
            &events,
            no_kallsyms,
        );
        assert_eq!(c.config.flags & CONFIG_F_ATTEMPT_DROPS, 0);
        assert_ne!(c.config.flags & CONFIG_F_ALL_PEERS, 0);
        assert_ne!(c.config.flags & CONFIG_F_NO_CLOSES, 0);
    }
}
