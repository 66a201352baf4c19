//! `tracer xdp-test-run` (hidden): crafted frames through `xdp_syn` and the empty `xdp_pass`
//! (or, `--tc`, `tc_syn` and `tc_pass`) with BPF_PROG_TEST_RUN. One JSON line per frame: the
//! action, whether it let the frame pass, the SYN records it produced, the wake-ups it rang on
//! the ring for them (`doorbells`), the kernel-measured time per run of both programs.

use std::{
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{anyhow, Result};
use serde_json::json;
use tracer_common::counter;

use crate::{
    cli::XdpTestRunArgs,
    kernel::Probe,
    model::clock::{Clock, JiffiesClock},
    model::decode::decode_syn,
    output::events::EventRecord,
    reasons::ReasonTable,
};

const ETH_HLEN: usize = 14;
/// `XDP_PASS`
const XDP_PASS: u32 = 2;
/// `TC_ACT_UNSPEC` (-1): the next program or filter decides; the frame is not touched.
const TC_ACT_UNSPEC: u32 = u32::MAX;

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
    let (ranges, _) = crate::ranges::fetch::resolve_offline(args.ranges.file.as_deref())?;
    let repeat = args.repeat.max(1);
    let mut probe = Probe::for_test_run(&args.ports, &ranges, args.all_peers, args.ring_bytes)?;
    let mut syn_log = probe.take_syn_log()?;
    let mut ring = probe.take_ring()?;
    let clock = Clock::now();
    let jiffies = JiffiesClock::new(probe.jiffies_now()?);
    let (program, empty) = if args.tc {
        ("tc_syn", "tc_pass")
    } else {
        ("xdp_syn", "xdp_pass")
    };
    for (i, hex) in args.frames.iter().enumerate() {
        let frame = unhex(hex)?;
        // The kernel's test run builds a socket buffer from the frame and refuses one shorter
        // than its Ethernet type's network header (EINVAL): such a frame cannot be fed to TC
        // here, only said to be skipped.
        if args.tc && (frame.len() < ETH_HLEN || probe.test_run(empty, &frame, 1).is_err()) {
            println!(
                "{}",
                json!({"frame": i, "bytes": frame.len(), "pass": true, "events": 0, "lost": 0,
                       "skipped": "the kernel's test run takes no frame this short"})
            );
            continue;
        }
        let before = probe.counters()?;
        // A reader drains the SYN log while the program runs, as the tracer does, so records
        // are written into a log with room (steady state), not counted lost into a full one.
        let stop = AtomicBool::new(false);
        let (timing, (emitted, first)) = std::thread::scope(|s| {
            let reader = s.spawn(|| {
                let mut emitted = 0u64;
                let mut first = None;
                loop {
                    let done = stop.load(Ordering::Acquire);
                    if args.no_reader && !done {
                        std::thread::sleep(Duration::from_millis(1));
                        continue;
                    }
                    syn_log.drain(|r| {
                        emitted += 1;
                        first.get_or_insert(*r);
                    });
                    if done {
                        return (emitted, first);
                    }
                    std::thread::sleep(Duration::from_micros(100));
                }
            });
            let timing = (|| -> Result<_> {
                // The kernel reports whole nanoseconds per run; the syscall's own wall time
                // over many repeats gives the fraction too.
                let t = Instant::now();
                let (action, per_run) = probe.test_run(program, &frame, repeat)?;
                let wall_ns = t.elapsed().as_nanos() as f64 / f64::from(repeat);
                let t = Instant::now();
                let (_, empty_per_run) = probe.test_run(empty, &frame, repeat)?;
                let empty_wall_ns = t.elapsed().as_nanos() as f64 / f64::from(repeat);
                Ok((action, per_run, wall_ns, empty_per_run, empty_wall_ns))
            })();
            stop.store(true, Ordering::Release);
            let drained = reader.join().unwrap_or((0, None));
            (timing, drained)
        });
        let (action, per_run, wall_ns, empty_per_run, empty_wall_ns) = timing?;
        let after = probe.counters()?;
        // Records shorter than an event: the wake-ups rung for SYNs logged where the log was
        // read empty (with `--no-reader`, one for a frame's repeats).
        let mut doorbells = 0u64;
        while let Some(item) = ring.next() {
            doorbells += u64::from(item.len() < size_of::<tracer_common::Event>());
        }
        let delta = |c: u32| after[c as usize] - before[c as usize];
        let line = json!({
            "frame": i,
            "bytes": frame.len(),
            "action": action,
            "pass": if args.tc { action == TC_ACT_UNSPEC } else { action == XDP_PASS },
            "events": emitted,
            "doorbells": doorbells,
            "event": first
                .and_then(|r| decode_syn(&r, &clock, &jiffies, 0))
                .map(|ev| EventRecord::of_event(&ev, &ReasonTable::default())),
            "lost": delta(counter::LOST),
            "repeat": repeat,
            "ns_per_packet": per_run.as_nanos() as f64,
            "empty_ns_per_packet": empty_per_run.as_nanos() as f64,
            "wall_ns_per_packet": wall_ns,
            "empty_wall_ns_per_packet": empty_wall_ns,
        });
        println!("{line}");
    }
    Ok(())
}
