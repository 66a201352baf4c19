//! TC ingress: the same arrival logic as XDP (`arrival.rs`), for interfaces where native XDP
//! is not to be had or its slot is taken. Attached as a tcx link (6.6+) or a clsact filter,
//! both of which compose with other programs: it always returns `TC_ACT_UNSPEC` (tcx: next),
//! so whatever comes after it decides.

use aya_ebpf::{bindings::TC_ACT_UNSPEC, macros::classifier, programs::TcContext};

use crate::arrival::try_arrival;

#[classifier]
pub fn tc_syn(ctx: TcContext) -> i32 {
    let _ = try_arrival(&ctx);
    TC_ACT_UNSPEC
}

/// An empty program on the same hook, for `cargo xtask bench` and `TRACER_EMPTY_PROGRAMS`.
#[classifier]
pub fn tc_pass(_ctx: TcContext) -> i32 {
    TC_ACT_UNSPEC
}
