//! The kernel hooks, each declared once: its programs (classic, BTF-typed, and the empty
//! ones that measure what the hook itself costs) and where they attach.

use super::*;

/// A tracepoint the tracer watches: its classic program (reads the tracefs record) and, where
/// one exists, the BTF-typed program preferred on kernels where it loads (no record is filled
/// for every hit in every namespace).
pub(super) struct TracepointHook {
    pub program: &'static str,
    pub category: &'static str,
    pub name: &'static str,
    pub btf: Option<BtfVariant>,
    /// The program that does nothing on this hook (`TRACER_EMPTY_PROGRAMS`).
    pub empty: &'static str,
    /// Where its fields go in the programs' `Config`, for a tracepoint read with the split
    /// address layout (the others are configured with more care in `configure`).
    pub layout: Option<fn(&mut Config, &tracefs::Format)>,
    /// What is not known on a kernel without it.
    pub without: &'static str,
}

/// A BTF-typed program and what it needs of this kernel.
pub(super) struct BtfVariant {
    pub program: &'static str,
    pub empty: &'static str,
    /// Can it read what it needs here (struct offsets from BTF, the tracepoint's layout)?
    pub usable: fn(&Config, has_format: bool) -> bool,
}

/// Every tracepoint, once. Adding a hook: its eBPF program, a row here, its decoder.
pub(super) const TRACEPOINTS: [TracepointHook; 5] = [
    TracepointHook {
        program: "tp_kfree_skb",
        category: "skb",
        name: "kfree_skb",
        btf: Some(BtfVariant {
            program: "btf_kfree_skb",
            empty: "btf_empty_kfree_skb",
            usable: |c, has_format| {
                let k = &c.kernel;
                has_format
                    && ![
                        k.skb_protocol,
                        k.skb_head,
                        k.skb_network_header,
                        k.skb_transport_header,
                        c.kfree_skb.reason,
                    ]
                    .contains(&FIELD_ABSENT)
            },
        }),
        empty: "tp_empty",
        layout: None,
        without: "drops are not seen",
    },
    TracepointHook {
        program: "tp_send_reset",
        category: "tcp",
        name: "tcp_send_reset",
        btf: None,
        empty: "tp_empty",
        layout: None,
        without: "resets the stack sends are not seen",
    },
    TracepointHook {
        program: "tp_recv_reset",
        category: "tcp",
        name: "tcp_receive_reset",
        btf: None,
        empty: "tp_empty",
        layout: Some(|c, f| c.receive_reset = sock_layout(f)),
        without: "resets the edge sends are not seen",
    },
    TracepointHook {
        program: "tp_set_state",
        category: "sock",
        name: "inet_sock_set_state",
        btf: Some(BtfVariant {
            program: "btf_set_state",
            empty: "btf_empty_set_state",
            usable: |c, _| c.sock.complete(),
        }),
        empty: "tp_empty",
        layout: Some(|c, f| c.set_state = sock_layout(f)),
        without: "handshakes and closes are not seen",
    },
    TracepointHook {
        program: "tp_synack_rtx",
        category: "tcp",
        name: "tcp_retransmit_synack",
        btf: None,
        empty: "tp_empty",
        layout: Some(|c, f| {
            c.retransmit_synack = sock_layout(f);
            c.synack_req = off(f, "req");
        }),
        without: "retransmitted SYN-ACKs are not seen",
    },
];

/// An arrival program (where SYNs are seen) and its empty counterpart.
pub(super) struct ArrivalProgram {
    pub program: &'static str,
    pub empty: &'static str,
}

pub(super) const XDP_ARRIVAL: ArrivalProgram = ArrivalProgram {
    program: "xdp_syn",
    empty: "xdp_pass",
};
pub(super) const TC_ARRIVAL: ArrivalProgram = ArrivalProgram {
    program: "tc_syn",
    empty: "tc_pass",
};
/// TC egress on the same interface: the origin's answers, for response and idle times.
pub(super) const TC_DEPARTURE: ArrivalProgram = ArrivalProgram {
    program: "tc_reply",
    empty: "tc_reply_pass",
};

impl ArrivalProgram {
    pub fn name(&self, empty: bool) -> &'static str {
        if empty {
            self.empty
        } else {
            self.program
        }
    }
}

impl Probe {
    /// Attaches every tracepoint of the table whose layout this kernel gave: the BTF-typed
    /// program where it is usable and loads, else the classic one; a failure is a note.
    /// Returns the tracepoints attached.
    pub(super) fn attach_tracepoints(
        &mut self,
        config: &Config,
        kernel_btf: Option<&btf::KernelBtf>,
        formats: &HashMap<&'static str, tracefs::Format>,
        force_classic: bool,
        empty: bool,
    ) -> Vec<&'static str> {
        let btf_wanted: Vec<(&str, &'static str)> = TRACEPOINTS
            .iter()
            .filter(|_| !force_classic)
            .filter_map(|h| {
                let v = h.btf.as_ref()?;
                (v.usable)(config, formats.contains_key(h.program))
                    .then_some((if empty { v.empty } else { v.program }, h.name))
            })
            .collect();
        let mut attached = self.attach_btf(kernel_btf, &btf_wanted);
        let classic: Vec<&TracepointHook> = TRACEPOINTS
            .iter()
            .filter(|h| formats.contains_key(h.program) && !attached.contains(&h.name))
            .collect();
        for hook in classic {
            let (category, name) = (hook.category, hook.name);
            let prog = if empty { hook.empty } else { hook.program };
            let result = (|| -> Result<()> {
                let tp: &mut TracePoint = program(&mut self.ebpf, prog)?;
                // The empty program serves several tracepoints: loaded once.
                if tp.fd().is_err() {
                    tp.load()?;
                }
                tp.attach(category, name)?;
                Ok(())
            })();
            match result {
                Ok(()) => attached.push(name),
                Err(e) => self.notes.push(format!(
                    "{category}:{name} could not be attached ({}): not traced",
                    one_line(&e)
                )),
            }
        }
        attached
    }

    /// Attaches each `(program, tracepoint)` as a BTF tracepoint: no trace record is filled
    /// for every hit in every namespace, and kernel structs are read with plain loads. Returns
    /// the tracepoints attached; the classic programs do the others.
    pub(super) fn attach_btf(
        &mut self,
        kernel_btf: Option<&btf::KernelBtf>,
        wanted: &[(&str, &'static str)],
    ) -> Vec<&'static str> {
        let Some(kernel_btf) = kernel_btf.filter(|_| !wanted.is_empty()) else {
            return Vec::new();
        };
        let tracepoints: Vec<&str> = wanted.iter().map(|(_, tp)| *tp).collect();
        let btf = match kernel_btf.tracepoint_btf(&tracepoints) {
            Ok(btf) => btf,
            Err(e) => {
                self.notes.push(format!(
                    "kernel BTF unreadable for BTF tracepoints ({e}): using the classic ones"
                ));
                return Vec::new();
            }
        };
        let mut attached = Vec::new();
        for &(prog, tracepoint) in wanted {
            let result = (|| -> Result<()> {
                let tp: &mut BtfTracePoint = program(&mut self.ebpf, prog)?;
                tp.load(tracepoint, &btf)?;
                tp.attach()?;
                Ok(())
            })();
            match result {
                Ok(()) => attached.push(tracepoint),
                Err(e) => {
                    // The whole verifier log, for whoever changes the program (-vv).
                    tracing::debug!("BTF tracepoint {tracepoint}: {e:#}");
                    self.notes.push(format!(
                        "BTF tracepoint {tracepoint} unavailable ({}): using the classic one",
                        one_line(&e)
                    ))
                }
            }
        }
        attached
    }
}
