//! `tracer xdp-test-run` (hidden): crafted frames through `xdp_syn` and the empty `xdp_pass`
//! with BPF_PROG_TEST_RUN. One JSON line per frame: the action, the events it produced, the
//! kernel-measured time per run of both programs.

use anyhow::{anyhow, Result};
use serde_json::json;
use tracer_common::{counter, Event};

use crate::{
    cli::XdpTestRunArgs,
    events::{decode, Clock},
    kernel::Probe,
    ranges::RangeSet,
};

fn unhex(text: &str) -> Result<Vec<u8>> {
    let text: String = text.chars().filter(|c| !c.is_whitespace()).collect();
    if !text.len().is_multiple_of(2) {
        return Err(anyhow!("--frame: odd number of hex digits"));
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).map_err(|_| anyhow!("--frame: not hex")))
        .collect()
}

pub fn run(args: XdpTestRunArgs) -> Result<()> {
    let ranges = match &args.ranges {
        Some(p) => RangeSet::from_file(p)?,
        None => RangeSet::embedded(),
    };
    let repeat = args.repeat.max(1);
    let mut probe = Probe::for_test_run(&args.ports, &ranges, args.all_peers, args.ring_bytes)?;
    let mut ring = probe.take_ring()?;
    let clock = Clock::now();
    for (i, hex) in args.frames.iter().enumerate() {
        let frame = unhex(hex)?;
        let before = probe.counters()?;
        // The kernel reports whole nanoseconds per run; the syscall's own wall time over many
        // repeats gives the fraction too (its fixed overhead is microseconds in milliseconds).
        let t = std::time::Instant::now();
        let (action, per_run) = probe.test_run("xdp_syn", &frame, repeat)?;
        let wall_ns = t.elapsed().as_nanos() as f64 / f64::from(repeat);
        let t = std::time::Instant::now();
        let (_, empty_per_run) = probe.test_run("xdp_pass", &frame, repeat)?;
        let empty_wall_ns = t.elapsed().as_nanos() as f64 / f64::from(repeat);
        let after = probe.counters()?;
        let mut emitted = 0u64;
        let mut first = None;
        while let Some(item) = ring.next() {
            if item.len() >= size_of::<Event>() {
                emitted += 1;
                if first.is_none() {
                    // SAFETY: a whole Event, read unaligned.
                    let raw: Event = unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) };
                    first = decode(&raw, &clock, &probe.names);
                }
            }
        }
        let delta = |c: u32| after[c as usize] - before[c as usize];
        let ns = per_run.as_nanos() as f64;
        let empty_ns = empty_per_run.as_nanos() as f64;
        let line = json!({
            "frame": i,
            "bytes": frame.len(),
            "action": action,
            "pass": action == 2,
            "events": emitted,
            "event": first,
            "lost": delta(counter::LOST),
            "repeat": repeat,
            "ns_per_packet": ns,
            "empty_ns_per_packet": empty_ns,
            "wall_ns_per_packet": wall_ns,
            "empty_wall_ns_per_packet": empty_wall_ns,
        });
        println!("{line}");
    }
    Ok(())
}
