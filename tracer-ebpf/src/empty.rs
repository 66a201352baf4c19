//! Programs that do nothing, attached to the tracer's hooks in place of the real ones when
//! `TRACER_EMPTY_PROGRAMS` is set: `cargo xtask bench` measures what the hooks themselves cost
//! (the tracepoints' dispatch, generic XDP's packet copy on a veth) apart from the tracer's
//! own work. `xdp_pass` stands in for `xdp_syn`.

use aya_ebpf::{
    macros::{btf_tracepoint, tracepoint},
    programs::{BtfTracePointContext, TracePointContext},
};

#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn btf_empty_set_state(_ctx: BtfTracePointContext) -> u32 {
    0
}

#[btf_tracepoint(function = "kfree_skb")]
pub fn btf_empty_kfree_skb(_ctx: BtfTracePointContext) -> u32 {
    0
}

/// Attached to every classic tracepoint the tracer uses.
#[tracepoint]
pub fn tp_empty(_ctx: TracePointContext) -> u32 {
    0
}
