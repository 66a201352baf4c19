//! Loading, configuring and attaching the kernel programs; reading their maps.

mod arrival;
pub mod btf;
mod clsact;
mod configure;
mod features;
pub mod flow_table;
mod hooks;
mod maps;
pub use features::release;
pub mod privileges;
pub mod synlog;
pub mod tracefs;

use arrival::ArrivalTarget;
pub use arrival::{ArrivalHook, HookChoice, InterfaceChange, XdpAttach};
use maps::empty_bitmaps;

use std::{collections::HashMap, os::unix::fs::MetadataExt as _};

use anyhow::{anyhow, Context as _, Result};
use aya::{
    maps::{lpm_trie::Key, Array, LpmTrie, MapData, PerCpuArray, RingBuf},
    programs::{
        tc::{self, NlOptions, TcAttachOptions, TcHandle},
        BtfTracePoint, LinkOrder, Program, ProgramError, SchedClassifier, TcAttachType, TracePoint,
        Xdp, XdpMode,
    },
    Ebpf, EbpfLoader,
};
use tracer_common::{
    counter, Config, Ipv4Key, Ipv6Key, SockTpLayout, CONFIG_F_ALL_PEERS, CONFIG_F_FOLLOW_FORWARDED,
    DROP_REASON_WORDS, FIELD_ABSENT, PORT_BITMAP_WORDS,
};

use crate::{
    model::clock::JiffiesSample,
    ranges::{RangeSet, SparseBits},
    reasons::{DropClass, ReasonTable},
};

/// The eBPF object built by `build.rs`.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tracer"));

/// Default ring buffer size: ~100k events of 80 bytes, enough for bursts of several hundred
/// thousand SYNs per second while userspace drains it.
pub const DEFAULT_RING_BYTES: u32 = 8 << 20;
/// The agent drains continuously and its ring pages stay resident (mapped twice): 4 MiB still
/// holds ~45k events, over a second of a 10k connections/s load.
pub const AGENT_RING_BYTES: u32 = 4 << 20;

/// Watched ranges per family (the range tries hold twice this: old and new during a swap).
const RANGES_PER_FAMILY: u32 = crate::ranges::validate::MAX_PER_FAMILY as u32;

pub struct ProbeOptions<'a> {
    pub iface: &'a str,
    pub hook: HookChoice,
    pub xdp_mode: XdpAttach,
    pub ports: &'a [u16],
    pub all_peers: bool,
    /// Report only the drops that decide a connection attempt (`diagnose`, `agent`): bare
    /// SYNs for any reason, other packets for reasons of these classes; `None`: every drop of
    /// a watched flow (`events`).
    pub attempt_drops: Option<fn(DropClass) -> bool>,
    /// Report connections closing (`agent` settles connections at the handshake and does
    /// without them unless it logs every event).
    pub closes: bool,
    pub ranges: &'a RangeSet,
    pub ring_bytes: u32,
}

/// Reads jiffies and the coarse clock for the SYN log's timestamps (`Probe::jiffies_now`).
const CLOCK_PROGRAM: &str = "xdp_clock";
/// Before 5.11 (no `bpf_ktime_get_coarse_ns`): the precise clock.
const CLOCK_PROGRAM_FINE: &str = "xdp_clock_fine";

/// What was attached, and what could not be.
pub struct Probe {
    ebpf: Ebpf,
    pub reasons: ReasonTable,
    /// Inode of the tracer's network namespace: the watched interface's.
    pub netns: u32,
    /// Events of connections the host forwards to other namespaces are followed.
    pub follows_forwarded: bool,
    /// One line each: hooks this kernel lacks and what that degrades.
    pub notes: Vec<String>,
    /// The arrival hook attached (the report's `xdp_mode` is derived from it, never kept
    /// beside it: a re-attach changes both at once).
    pub arrival_hook: ArrivalHook,
    /// The kernel reports sockets starting and stopping to listen (`inet_sock_set_state`
    /// attached with its real program): the journal samples listeners only around them.
    pub sees_listeners: bool,
    /// What the arrival hook was attached with, to attach it again when its interface comes
    /// back: (interface, its index then, hook, XDP mode, empty programs).
    arrival: Option<ArrivalTarget>,
    /// The edge bitmaps last written: ((IPv4 full /24s, IPv4 partial /24s), IPv6 pre-filter).
    bitmaps: ((SparseBits, SparseBits), Vec<u64>),
    /// (possible CPUs, records per CPU) of the SYN log.
    syn_log: (u32, u32),
    /// The program that reads jiffies and the clock together.
    clock_program: &'static str,
    /// The claim on the clsact filter this process attached (kernels without tcx): removed
    /// at a clean exit, so only a SIGKILLed tracer's filter is ever stale.
    clsact_claim: Option<clsact::Claimed>,
    clsact_egress_claim: Option<clsact::Claimed>,
}

/// Before 5.11 maps and programs are charged to RLIMIT_MEMLOCK (64 KiB by default on Debian
/// 11), far below what the ring buffer and SYN log need: lift it. Later kernels charge the
/// memory cgroup and ignore it.
fn raise_memlock() {
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit with a valid struct.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) } != 0 {
        tracing::debug!(
            "cannot raise RLIMIT_MEMLOCK: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// Loads the object: `config` into its read-only data, the ring buffer and the SYN log sized
/// from `ring_bytes` (the SYN log gets as much again, split over the CPUs).
fn load(config: &mut Config, ring_bytes: u32) -> Result<(Ebpf, (u32, u32))> {
    raise_memlock();
    let cpus = synlog::possible_cpus()?;
    let arrivals = if config.flags & CONFIG_F_FOLLOW_FORWARDED != 0 {
        tracer_common::ARRIVAL_SLOTS
    } else {
        // Unused: one bucket (lookups past it find nothing).
        2
    };
    let slots = synlog::slots_per_cpu(ring_bytes, cpus);
    config.syn_slots_per_cpu = slots;
    let ebpf = EbpfLoader::new()
        // No CO-RE relocations to do: skip parsing the kernel's BTF a second time.
        .btf(None)
        .override_global("CONFIG", &*config, true)
        .map_max_entries("EVENTS", ring_bytes)
        .map_max_entries("SYN_LOG", cpus * slots)
        .map_max_entries("SYN_CURSORS", cpus)
        .map_max_entries("ARRIVALS", arrivals)
        // Room for the old and the new list at once while a refresh swaps them.
        .map_max_entries("EDGE_V4", 2 * RANGES_PER_FAMILY)
        .map_max_entries("EDGE_V6", 2 * RANGES_PER_FAMILY)
        .load(EBPF_OBJECT)
        .map_err(|e| match features::explain_load_error(&e) {
            Some(line) => anyhow!(line),
            None => anyhow::Error::from(e).context("loading the eBPF programs"),
        })?;
    Ok((ebpf, (cpus, slots)))
}

/// The object's program `name` as the type it is (`Xdp`, `TracePoint`, ...).
fn program<'a, T>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut T>
where
    &'a mut T: TryFrom<&'a mut Program, Error = ProgramError>,
{
    let program = ebpf
        .program_mut(name)
        .ok_or_else(|| anyhow!("program {name} missing from the object"))?;
    Ok(program.try_into()?)
}

fn off(format: &tracefs::Format, name: &str) -> u16 {
    format.offset(name).unwrap_or(FIELD_ABSENT)
}

fn sock_layout(f: &tracefs::Format) -> SockTpLayout {
    SockTpLayout {
        skaddr: off(f, "skaddr"),
        sport: off(f, "sport"),
        dport: off(f, "dport"),
        family: off(f, "family"),
        saddr: off(f, "saddr"),
        daddr: off(f, "daddr"),
        saddr_v6: off(f, "saddr_v6"),
        daddr_v6: off(f, "daddr_v6"),
        oldstate: off(f, "oldstate"),
        newstate: off(f, "newstate"),
        protocol: off(f, "protocol"),
        sock_cookie: off(f, "sock_cookie"),
    }
}

/// Network namespace inode of this process: the namespace whose traffic counts.
pub fn own_netns_inode() -> Result<u32> {
    let meta = std::fs::metadata("/proc/self/ns/net").context("reading /proc/self/ns/net")?;
    u32::try_from(meta.ino()).map_err(|_| anyhow!("netns inode {} too large", meta.ino()))
}

pub fn ifindex(iface: &str) -> Result<u32> {
    crate::sys::netlink::interface_index(iface).map_err(|_| {
        let known = crate::sys::netinfo::interface_names().join(", ");
        anyhow!("unknown interface {iface}: pass --iface with one of: {known}")
    })
}

/// An error on one line: a verifier log is cut to the verdict it ends with.
fn one_line(e: &anyhow::Error) -> String {
    let text = format!("{e:#}");
    let Some((head, log)) = text.split_once("Verifier output:") else {
        return text.lines().next().unwrap_or_default().to_string();
    };
    let verdict = log
        .lines()
        .map(str::trim)
        .rfind(|l| {
            !l.is_empty()
                && !l.starts_with(':')
                && !l.starts_with("verification time")
                && !l.starts_with("stack depth")
                && !l.starts_with("processed ")
        })
        .unwrap_or("");
    format!("{} verifier: {verdict}", head.trim())
}

/// A bitmap of reason numbers, as the kernel reads `Config::drop_reasons`; numbers past it
/// (subsystem reasons) are left out, not wrapped around.
fn reason_bits(codes: &[u32]) -> [u64; DROP_REASON_WORDS] {
    let mut bits = [0u64; DROP_REASON_WORDS];
    for &code in codes {
        let word = (code >> 6) as usize;
        if word < DROP_REASON_WORDS {
            bits[word] |= 1 << (code & 63);
        }
    }
    bits
}

/// Does this namespace forward packets (IPv4 `ip_forward` or IPv6 `forwarding`)? Only then can
/// the host hand an edge connection to another namespace (DNAT to a container).
pub fn forwarding_enabled() -> bool {
    [
        "/proc/sys/net/ipv4/ip_forward",
        "/proc/sys/net/ipv6/conf/all/forwarding",
    ]
    .iter()
    .any(|path| std::fs::read_to_string(path).is_ok_and(|v| v.trim() == "1"))
}

impl Probe {
    pub fn start(opts: &ProbeOptions<'_>) -> Result<Self> {
        privileges::check()?;
        features::check()?;
        ifindex(opts.iface)?;
        let tracefs = tracefs::ensure_mounted()?;
        let kernel_btf = btf::KernelBtf::load();
        let facts = configure::Facts::read(&tracefs, kernel_btf.as_ref())?;
        let configure::Configured {
            mut config,
            reasons,
            notes,
            formats,
            follows_forwarded,
        } = configure::configure(
            facts,
            &configure::Wanted {
                all_peers: opts.all_peers,
                closes: opts.closes,
                attempt_drops: opts.attempt_drops,
            },
            crate::reasons::location::Symbols::read,
        );
        let (ebpf, syn_log) = load(&mut config, opts.ring_bytes)?;
        let mut probe = Probe {
            ebpf,
            reasons,
            netns: config.netns_inum,
            follows_forwarded,
            notes,
            arrival_hook: ArrivalHook::XdpDriver,
            sees_listeners: false,
            arrival: None,
            bitmaps: empty_bitmaps(),
            syn_log,
            clock_program: CLOCK_PROGRAM,
            clsact_claim: None,
            clsact_egress_claim: None,
        };
        probe.set_ports(opts.ports)?;
        probe.set_ranges(opts.ranges)?;

        // For tests of the fallback on a kernel that has everything.
        let force_classic = crate::environment::get().classic_tracepoints;
        if force_classic {
            probe.notes.push(
                "classic tracepoints forced (TRACER_CLASSIC_TRACEPOINTS): costlier under load"
                    .into(),
            );
        }
        let empty = crate::environment::get().empty_programs;
        if let Some(which) = empty.hooks() {
            probe.notes.push(format!(
                "empty programs on {which} (TRACER_EMPTY_PROGRAMS): not traced there"
            ));
        }
        let attached = probe.attach_tracepoints(
            &config,
            kernel_btf.as_ref().ok(),
            &formats,
            force_classic,
            empty.tracepoints(),
        );
        probe.sees_listeners = !empty.tracepoints() && attached.contains(&"inet_sock_set_state");
        probe.load_clock_program()?;
        let target = ArrivalTarget::new(opts.iface, opts.hook, opts.xdp_mode, empty.packets())?;
        probe.attach_arrival(&target)?;
        probe.arrival = Some(target);
        Ok(probe)
    }

    /// Loads the programs without attaching anything, for `BPF_PROG_TEST_RUN` (self-tests,
    /// benchmarks): the XDP programs see crafted frames, the maps are real.
    pub fn for_test_run(
        ports: &[u16],
        ranges: &RangeSet,
        all_peers: bool,
        ring_bytes: u32,
    ) -> Result<Self> {
        privileges::check()?;
        features::check()?;
        let mut config = Config::DEFAULT;
        if all_peers {
            config.flags |= CONFIG_F_ALL_PEERS;
        }
        let (ebpf, syn_log) = load(&mut config, ring_bytes)?;
        let mut probe = Probe {
            ebpf,
            reasons: ReasonTable::default(),
            netns: 0,
            follows_forwarded: false,
            notes: Vec::new(),
            arrival_hook: ArrivalHook::XdpDriver,
            sees_listeners: false,
            arrival: None,
            bitmaps: empty_bitmaps(),
            syn_log,
            clock_program: CLOCK_PROGRAM,
            clsact_claim: None,
            clsact_egress_claim: None,
        };
        probe.set_ports(ports)?;
        probe.set_ranges(ranges)?;
        for name in ["xdp_syn", "xdp_pass"] {
            let xdp: &mut Xdp = program(&mut probe.ebpf, name)?;
            xdp.load().with_context(|| format!("loading {name}"))?;
        }
        probe.load_clock_program()?;
        for name in ["tc_syn", "tc_pass"] {
            let tc: &mut SchedClassifier = program(&mut probe.ebpf, name)?;
            tc.load().with_context(|| format!("loading {name}"))?;
        }
        Ok(probe)
    }

    /// The coarse-clock program where the kernel has the helper (5.11+), else the precise one.
    fn load_clock_program(&mut self) -> Result<()> {
        let xdp: &mut Xdp = program(&mut self.ebpf, CLOCK_PROGRAM)?;
        match xdp.load() {
            Ok(()) => Ok(()),
            Err(coarse) => {
                let fine: &mut Xdp = program(&mut self.ebpf, CLOCK_PROGRAM_FINE)?;
                fine.load().map_err(|e| {
                    anyhow!("loading the clock program: {coarse}; without the coarse clock: {e}")
                })?;
                self.clock_program = CLOCK_PROGRAM_FINE;
                Ok(())
            }
        }
    }

    /// The kernel's jiffies counter and CLOCK_MONOTONIC_COARSE read together (through
    /// `BPF_PROG_TEST_RUN` of `xdp_clock`): what the SYN log's jiffies are converted with.
    pub fn jiffies_now(&self) -> Result<JiffiesSample> {
        use aya::programs::{TestRun as _, TestRunOptions};
        let xdp: &Xdp = self
            .ebpf
            .program(self.clock_program)
            .ok_or_else(|| anyhow!("program {} missing", self.clock_program))?
            .try_into()?;
        let frame = [0u8; 64];
        let mut out = [0u8; 64];
        let mut sample = None;
        // A tick between the reads shows as two different clock values: read again.
        for _ in 0..3 {
            xdp.test_run(TestRunOptions {
                data_in: Some(&frame),
                data_out: Some(&mut out),
                ..TestRunOptions::new()
            })
            .context("BPF_PROG_TEST_RUN of the clock program")?;
            let word =
                |i: usize| u64::from_ne_bytes(out[i * 8..i * 8 + 8].try_into().unwrap_or_default());
            sample = Some(JiffiesSample {
                jiffies: word(1),
                mono_ns: word(2),
            });
            if word(0) == word(2) {
                break;
            }
        }
        sample.ok_or_else(|| anyhow!("clock program returned nothing"))
    }

    /// Runs `frame` through an XDP or TC program `repeat` times: (action, kernel-measured time
    /// per run).
    pub fn test_run(
        &self,
        program: &str,
        frame: &[u8],
        repeat: u32,
    ) -> Result<(u32, std::time::Duration)> {
        use aya::programs::{TestRun as _, TestRunOptions};
        let options = TestRunOptions {
            data_in: Some(frame),
            repeat,
            ..TestRunOptions::new()
        };
        let loaded = self
            .ebpf
            .program(program)
            .ok_or_else(|| anyhow!("program {program} missing"))?;
        let r = match loaded {
            Program::SchedClassifier(tc) => tc.test_run(options),
            other => <&Xdp>::try_from(other)?.test_run(options),
        }
        .with_context(|| format!("BPF_PROG_TEST_RUN of {program}"))?;
        Ok((r.return_value, r.duration))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attempt_drops_keep_refusals_filters_and_full_queues_only() {
        let reasons = ReasonTable::for_tests(
            &[
                (2, "NO_SOCKET"),
                (5, "NETFILTER_DROP"),
                (70, "TCP_LISTEN_OVERFLOW"),
                (71, "QUEUE_PURGE"),
                (72, "TCP_OLD_ACK"),
                (600, "NETFILTER_DROP"),
            ],
            &[],
        );
        let bits = reason_bits(&reasons.drop_codes(DropClass::decides_attempts));
        let set = |code: u32| bits[(code >> 6) as usize] & (1 << (code & 63)) != 0;
        assert!(set(2) && set(5) && set(70));
        assert!(!set(71) && !set(72) && !set(0));
        // Codes past the bitmap (subsystem reasons) are left out, not wrapped around.
        assert_eq!(bits.iter().map(|w| w.count_ones()).sum::<u32>(), 3);
        let teardown = reason_bits(&reasons.drop_codes(|c| c == DropClass::Teardown));
        assert_eq!(teardown[1], 1 << (71 - 64), "QUEUE_PURGE only");
        assert_eq!(teardown.iter().map(|w| w.count_ones()).sum::<u32>(), 1);
    }

    /// The note carries the verifier's own verdict, not the error aya appends after the log.
    #[test]
    fn a_verifier_log_is_cut_to_its_verdict() {
        let e = anyhow::anyhow!(
            "the BPF_PROG_LOAD syscall returned Permission denied (os error 13). Verifier output: 0: (bf) r6 = r1\ncombined stack size of 2 calls is 528. Too large\nverification time 156199 usec\nstack depth 504+8\nprocessed 10496 insns (limit 1000000) max_states_per_insn 13\n: Permission denied (os error 13)"
        );
        assert_eq!(
            one_line(&e),
            "the BPF_PROG_LOAD syscall returned Permission denied (os error 13). verifier: combined stack size of 2 calls is 528. Too large"
        );
        assert_eq!(one_line(&anyhow::anyhow!("plain\nsecond")), "plain");
    }
}
