//! XDP: which SYNs reach the NIC (the logic is `arrival.rs`'s, shared with TC). Always
//! `XDP_PASS`: the tracer never changes traffic.

use aya_ebpf::{
    bindings::xdp_action::XDP_PASS,
    helpers::{bpf_jiffies64, bpf_ktime_get_coarse_ns, bpf_ktime_get_ns},
    macros::xdp,
    programs::XdpContext,
};

use crate::arrival::{bytes_at, try_arrival};

#[xdp]
pub fn xdp_syn(ctx: XdpContext) -> u32 {
    let _ = try_arrival(&ctx);
    XDP_PASS
}

/// An empty program, measured beside `xdp_syn` by `cargo xtask bench`.
#[xdp]
pub fn xdp_pass(_ctx: XdpContext) -> u32 {
    XDP_PASS
}

/// Writes clock, jiffies, clock into the first 24 bytes of a test frame: userspace runs it
/// through `BPF_PROG_TEST_RUN` to convert the SYN log's jiffies to CLOCK_MONOTONIC (equal
/// clock reads: no tick in between).
#[inline(always)]
fn clock_sample(ctx: &XdpContext, now: impl Fn() -> u64) {
    if let Some(p) = bytes_at(ctx, 0, 24) {
        let p = p as *mut u64;
        unsafe {
            *p = now();
            *p.add(1) = bpf_jiffies64();
            *p.add(2) = now();
        }
    }
}

/// With the coarse clock (5.11+).
#[xdp]
pub fn xdp_clock(ctx: XdpContext) -> u32 {
    clock_sample(&ctx, || unsafe { bpf_ktime_get_coarse_ns() });
    XDP_PASS
}

/// With the precise clock, for kernels before 5.11 (no coarse-clock helper): the two reads
/// always differ, so the jiffies' start is known only to within a tick.
#[xdp]
pub fn xdp_clock_fine(ctx: XdpContext) -> u32 {
    clock_sample(&ctx, || unsafe { bpf_ktime_get_ns() });
    XDP_PASS
}
