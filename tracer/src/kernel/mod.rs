//! Loading, configuring and attaching the kernel programs; reading their maps.

pub mod btf;
mod clsact;
mod features;
pub use features::release;
pub mod privileges;
pub mod synlog;
pub mod tracefs;

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
    counter, Config, Ipv4Key, Ipv6Key, KfreeSkbLayout, SendResetLayout, SockTpLayout,
    CONFIG_F_ALL_PEERS, CONFIG_F_ATTEMPT_DROPS, CONFIG_F_FOLLOW_FORWARDED, CONFIG_F_NETNS_FILTER,
    CONFIG_F_NO_CLOSES, DROP_REASON_WORDS, FIELD_ABSENT, PORT_BITMAP_WORDS,
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

/// How to attach XDP: `Auto` is driver (native) mode, except generic on veth, where native XDP
/// copies every packet the local stack sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XdpAttach {
    Auto,
    Driver,
    Generic,
}

/// Where SYNs are seen arriving.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HookChoice {
    /// Native (driver) XDP where the driver has it and it is free, else TC ingress; never
    /// generic XDP, which copies packets before any program runs.
    Auto,
    /// XDP, in the `XdpAttach` mode.
    Xdp,
    /// TC ingress: a tcx link, or a clsact filter where the kernel has no tcx.
    Tc,
}

/// The arrival hook attached, as the report and the metrics name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArrivalHook {
    XdpDriver,
    XdpGeneric,
    Tcx,
    TcClsact,
}

impl ArrivalHook {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::XdpDriver => "xdp_driver",
            Self::XdpGeneric => "xdp_generic",
            Self::Tcx => "tcx",
            Self::TcClsact => "tc_clsact",
        }
    }

    /// The `xdp_mode` report field: "driver", "generic", or "none" for TC.
    pub fn xdp_mode(self) -> &'static str {
        match self {
            Self::XdpDriver => "driver",
            Self::XdpGeneric => "generic",
            Self::Tcx | Self::TcClsact => "none",
        }
    }
}

/// Where and how the arrival hook is attached.
#[derive(Clone, Debug)]
struct ArrivalTarget {
    iface: String,
    ifindex: u32,
    hook: HookChoice,
    xdp_mode: XdpAttach,
    empty: bool,
    /// The interface has gone (deleted, NIC removed) and not come back yet.
    gone: bool,
}

/// What became of the watched interface since the last look.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InterfaceChange {
    Same,
    /// It disappeared: nothing arrives through the hook.
    Gone,
    /// An interface of that name is there again, and the hook is attached to it.
    Back,
}

/// SYNs remembered for following forwarded connections (`ARRIVALS`, LRU): well over the SYNs
/// of the 25 s an attempt may stay open at thousands of connections per second.
const ARRIVAL_ENTRIES: u32 = 1 << 16;
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
    /// What the arrival hook was attached with, to attach it again when its interface comes
    /// back: (interface, its index then, hook, XDP mode, empty programs).
    arrival: Option<ArrivalTarget>,
    /// The edge bitmaps last written: ((IPv4 full /24s, IPv4 partial /24s), IPv6 pre-filter).
    bitmaps: ((SparseBits, SparseBits), Vec<u64>),
    /// (possible CPUs, records per CPU) of the SYN log.
    syn_log: (u32, u32),
    /// The program that reads jiffies and the clock together.
    clock_program: &'static str,
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
        // Split between the CPUs' own LRU lists: each keeps a share worth seconds of SYNs.
        ARRIVAL_ENTRIES.max(cpus * 2048)
    } else {
        // Unused: small, and a whole number per CPU as a per-CPU LRU wants.
        cpus * 4
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
        .context("loading the eBPF programs")
        .map_err(|e| match features::explain_load_error(&e) {
            Some(line) => anyhow!(line),
            None => e,
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

/// (program, tracepoint category, tracepoint name)
const TRACEPOINTS: [(&str, &str, &str); 5] = [
    ("tp_kfree_skb", "skb", "kfree_skb"),
    ("tp_send_reset", "tcp", "tcp_send_reset"),
    ("tp_recv_reset", "tcp", "tcp_receive_reset"),
    ("tp_set_state", "sock", "inet_sock_set_state"),
    ("tp_synack_rtx", "tcp", "tcp_retransmit_synack"),
];

/// The program that does nothing on the same hook as `program` (see `TRACER_EMPTY_PROGRAMS`):
/// what the hook costs before the tracer does any work.
fn empty_counterpart(program: &str) -> &'static str {
    match program {
        "xdp_syn" => "xdp_pass",
        "tc_syn" => "tc_pass",
        "btf_set_state" => "btf_empty_set_state",
        "btf_kfree_skb" => "btf_empty_kfree_skb",
        _ => "tp_empty",
    }
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
    let name = std::ffi::CString::new(iface).map_err(|_| anyhow!("bad interface name"))?;
    // SAFETY: NUL-terminated name.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if index == 0 {
        let known = crate::sys::netinfo::interface_names().join(", ");
        return Err(anyhow!(
            "unknown interface {iface}: pass --iface with one of: {known}"
        ));
    }
    Ok(index)
}

/// Makes an LPM trie hold exactly `wanted`: new entries first, then stale ones removed, so a
/// peer inside both the old and the new list never stops matching.
fn sync_trie<K: aya::Pod + PartialEq>(
    ebpf: &mut Ebpf,
    name: &str,
    wanted: Vec<Key<K>>,
) -> Result<()> {
    let mut trie: LpmTrie<&mut MapData, K, u8> = LpmTrie::try_from(
        ebpf.map_mut(name)
            .ok_or_else(|| anyhow!("{name} map missing"))?,
    )?;
    let same = |a: &Key<K>, b: &Key<K>| a.prefix_len() == b.prefix_len() && a.data() == b.data();
    let before: Vec<Key<K>> = trie.keys().filter_map(Result::ok).collect();
    // New entries first; if one cannot be added, the ones added are taken out again, so the
    // table holds exactly the old list: all or nothing.
    let mut added: Vec<&Key<K>> = Vec::new();
    for k in &wanted {
        if before.iter().any(|b| same(b, k)) {
            continue;
        }
        if let Err(e) = trie.insert(k, 1, 0) {
            for a in added {
                let _ = trie.remove(a);
            }
            return Err(e).with_context(|| format!("updating {name}"));
        }
        added.push(k);
    }
    for k in before.iter().filter(|k| !wanted.iter().any(|w| same(w, k))) {
        trie.remove(k).with_context(|| format!("updating {name}"))?;
    }
    Ok(())
}

/// Why XDP could not attach, on one line: the errno, the program holding the slot when the
/// kernel names one, and what works beside it.
fn xdp_attach_error(iface: &str, mode: &str, e: ProgramError) -> anyhow::Error {
    let cause = one_line(&anyhow::Error::from(e));
    match crate::sys::netinfo::xdp_holder(iface) {
        Some(holder) => anyhow!(
            "cannot attach XDP to {iface} in {mode} mode: XDP program {holder} holds it ({cause}); --hook tc (or auto) attaches beside it, or detach that program"
        ),
        None => anyhow!(
            "cannot attach XDP to {iface} in {mode} mode: {cause}; --hook tc (or auto) uses TC ingress instead"
        ),
    }
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

fn empty_bitmaps() -> ((SparseBits, SparseBits), Vec<u64>) {
    (
        (SparseBits::new(), SparseBits::new()),
        vec![0; tracer_common::PREFILTER_WORDS as usize],
    )
}

impl Probe {
    pub fn start(opts: &ProbeOptions<'_>) -> Result<Self> {
        privileges::check()?;
        features::check()?;
        ifindex(opts.iface)?;
        let tracefs = tracefs::ensure_mounted()?;
        let mut notes = Vec::new();
        let mut config = Config::DEFAULT;
        config.netns_inum = own_netns_inode()?;
        if opts.all_peers {
            config.flags |= CONFIG_F_ALL_PEERS;
        }

        let mut drop_names = HashMap::new();
        let mut reset_names = HashMap::new();
        let kernel_btf = match btf::KernelBtf::load() {
            Ok(b) => Some(b),
            Err(e) => {
                notes.push(format!(
                    "no BTF ({e:#}): drops cannot be traced and events from other network namespaces are not filtered"
                ));
                None
            }
        };
        if let Some(b) = &kernel_btf {
            let (offsets, missing) = b.kernel_offsets();
            config.kernel = offsets;
            config.sock = b.sock_offsets();
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
        let mut formats = HashMap::new();
        for (prog, category, name) in TRACEPOINTS {
            match tracefs::Format::read(&tracefs, category, name) {
                Ok(f) => {
                    formats.insert(prog, f);
                }
                Err(e) => notes.push(format!("{name} is not available ({e:#}): not traced")),
            }
        }
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
                notes.push(
                    "kfree_skb: sk_buff layout unknown (no BTF): drops are not traced".into(),
                );
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
        if let Some(b) = &kernel_btf {
            reasons.fill_from(ReasonTable::new(
                b.enum_names("skb_drop_reason", "SKB_DROP_REASON_"),
                b.enum_names("sk_rst_reason", "SK_RST_REASON_"),
            ));
        }
        if !opts.closes {
            config.flags |= CONFIG_F_NO_CLOSES;
        }
        if config.kfree_skb.reason == FIELD_ABSENT {
            let symbols = crate::reasons::location::Symbols::read();
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
        if let Some(decides) = opts.attempt_drops {
            if config.kfree_skb.reason != FIELD_ABSENT {
                config.flags |= CONFIG_F_ATTEMPT_DROPS;
                config.drop_reasons = reason_bits(&reasons.drop_codes(decides));
                config.teardown_reasons =
                    reason_bits(&reasons.drop_codes(|c| c == DropClass::Teardown));
            }
        }
        let follows_forwarded = forwarding_enabled();
        if follows_forwarded {
            config.flags |= CONFIG_F_FOLLOW_FORWARDED;
            notes.push(
                "this namespace forwards packets: edge connections handed to other namespaces (DNAT to containers) are followed there"
                    .into(),
            );
        }
        if let Some(f) = formats.get("tp_recv_reset") {
            config.receive_reset = sock_layout(f);
        }
        if let Some(f) = formats.get("tp_set_state") {
            config.set_state = sock_layout(f);
        }
        if let Some(f) = formats.get("tp_synack_rtx") {
            config.retransmit_synack = sock_layout(f);
            config.synack_req = off(f, "req");
        }

        let (ebpf, syn_log) = load(&mut config, opts.ring_bytes)?;
        let mut probe = Probe {
            ebpf,
            reasons,
            netns: config.netns_inum,
            follows_forwarded,
            notes,
            arrival_hook: ArrivalHook::XdpDriver,
            arrival: None,
            bitmaps: empty_bitmaps(),
            syn_log,
            clock_program: CLOCK_PROGRAM,
        };
        probe.set_ports(opts.ports)?;
        probe.set_ranges(opts.ranges)?;

        // For tests of the fallback on a kernel that has everything.
        let force_classic = std::env::var_os("TRACER_CLASSIC_TRACEPOINTS").is_some();
        if force_classic {
            probe.notes.push(
                "classic tracepoints forced (TRACER_CLASSIC_TRACEPOINTS): costlier under load"
                    .into(),
            );
        }
        let empty = std::env::var_os("TRACER_EMPTY_PROGRAMS").is_some();
        if empty {
            probe.notes.push(
                "empty programs on every hook (TRACER_EMPTY_PROGRAMS): nothing is traced".into(),
            );
        }
        let k = &config.kernel;
        let mut btf_wanted = Vec::new();
        if !force_classic && config.sock.complete() {
            btf_wanted.push(("btf_set_state", "inet_sock_set_state"));
        }
        if !force_classic
            && formats.contains_key("tp_kfree_skb")
            && ![
                k.skb_protocol,
                k.skb_head,
                k.skb_network_header,
                k.skb_transport_header,
                config.kfree_skb.reason,
            ]
            .contains(&FIELD_ABSENT)
        {
            btf_wanted.push(("btf_kfree_skb", "kfree_skb"));
        }
        if empty {
            for (prog, _) in &mut btf_wanted {
                *prog = empty_counterpart(prog);
            }
        }
        let attached = probe.attach_btf(kernel_btf.as_ref(), &btf_wanted);
        let classic_set_state = !attached.contains(&"inet_sock_set_state");
        let classic_kfree_skb = !attached.contains(&"kfree_skb");
        for (prog, category, name) in TRACEPOINTS {
            if !formats.contains_key(prog)
                || (prog == "tp_set_state" && !classic_set_state)
                || (prog == "tp_kfree_skb" && !classic_kfree_skb)
            {
                continue;
            }
            let prog = if empty { empty_counterpart(prog) } else { prog };
            let result = (|| -> Result<()> {
                let tp: &mut TracePoint = program(&mut probe.ebpf, prog)?;
                // The empty program serves several tracepoints: loaded once.
                if tp.fd().is_err() {
                    tp.load()?;
                }
                tp.attach(category, name)?;
                Ok(())
            })();
            if let Err(e) = result {
                probe.notes.push(format!(
                    "{category}:{name} could not be attached ({}): not traced",
                    one_line(&e)
                ));
            }
        }
        probe.load_clock_program()?;
        let target = ArrivalTarget {
            iface: opts.iface.to_string(),
            ifindex: ifindex(opts.iface)?,
            hook: opts.hook,
            xdp_mode: opts.xdp_mode,
            empty,
            gone: false,
        };
        probe.attach_arrival(&target)?;
        probe.arrival = Some(target);
        Ok(probe)
    }

    /// Attaches each `(program, tracepoint)` as a BTF tracepoint: no trace record is filled
    /// for every hit in every namespace, and kernel structs are read with plain loads. Returns
    /// the tracepoints attached; the classic programs do the others.
    fn attach_btf(
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
                Err(e) => self.notes.push(format!(
                    "BTF tracepoint {tracepoint} unavailable ({}): using the classic one",
                    one_line(&e)
                )),
            }
        }
        attached
    }

    /// Has the watched interface gone, or come back (by name, perhaps with a new index)? On
    /// its return the arrival hook is attached to it again. Cheap: one ioctl.
    pub fn check_interface(&mut self) -> Result<InterfaceChange> {
        let Some(target) = &mut self.arrival else {
            return Ok(InterfaceChange::Same);
        };
        let name = std::ffi::CString::new(target.iface.as_str())?;
        // SAFETY: NUL-terminated name.
        let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
        if index == 0 {
            if target.gone {
                return Ok(InterfaceChange::Same);
            }
            target.gone = true;
            return Ok(InterfaceChange::Gone);
        }
        if !target.gone && index == target.ifindex {
            return Ok(InterfaceChange::Same);
        }
        target.gone = false;
        target.ifindex = index;
        let target = target.clone();
        self.attach_arrival(&target)?;
        Ok(InterfaceChange::Back)
    }

    /// A re-attach failed: look again next time as if the interface were still gone.
    pub fn mark_interface_gone(&mut self) {
        if let Some(t) = &mut self.arrival {
            t.gone = true;
        }
    }

    /// Attaches the arrival hook `target` asks for and says which and why in the notes.
    fn attach_arrival(&mut self, target: &ArrivalTarget) -> Result<()> {
        let empty = target.empty;
        let name = |p: &'static str| if empty { empty_counterpart(p) } else { p };
        let iface = target.iface.as_str();
        match target.hook {
            HookChoice::Xdp => {
                self.attach_xdp(name("xdp_syn"), iface, target.xdp_mode)?;
                if self.arrival_hook == ArrivalHook::XdpGeneric {
                    self.notes.push(format!(
                        "{iface}: generic XDP forced (--hook xdp): it copies every packet the local stack still holds before any program runs; --hook tc costs less"
                    ));
                }
                Ok(())
            }
            HookChoice::Tc => self.attach_tc(name("tc_syn"), iface),
            HookChoice::Auto => {
                if crate::sys::netinfo::driver_name(iface).as_deref() == Some("veth") {
                    self.attach_tc(name("tc_syn"), iface)?;
                    self.notes.push(format!(
                        "{iface} is a veth: TC ingress ({}); native XDP on veth copies every packet the local stack sends (--hook xdp forces XDP)",
                        self.arrival_hook.as_str()
                    ));
                    return Ok(());
                }
                match self.attach_xdp(name("xdp_syn"), iface, XdpAttach::Driver) {
                    Ok(()) => Ok(()),
                    Err(native) => {
                        self.attach_tc(name("tc_syn"), iface)?;
                        self.notes.push(format!(
                            "{iface}: no native XDP here ({}): TC ingress ({}), which composes with other programs",
                            one_line(&native),
                            self.arrival_hook.as_str()
                        ));
                        Ok(())
                    }
                }
            }
        }
    }

    /// TC ingress: a tcx link where the kernel has tcx (it is a link: detached with the
    /// process, even on SIGKILL), else a clsact filter (`TRACER_NO_TCX=1` forces it, to test
    /// the older kernels' path here).
    fn attach_tc(&mut self, name: &str, iface: &str) -> Result<()> {
        let tc: &mut SchedClassifier = program(&mut self.ebpf, name)?;
        if tc.fd().is_err() {
            tc.load().context("loading the TC program")?;
        }
        let tcx_error = if std::env::var_os("TRACER_NO_TCX").is_some() {
            "not tried (TRACER_NO_TCX)".to_string()
        } else {
            match tc.attach_with_options(
                iface,
                TcAttachType::Ingress,
                TcAttachOptions::TcxOrder(LinkOrder::default()),
            ) {
                Ok(_) => {
                    self.arrival_hook = ArrivalHook::Tcx;
                    return Ok(());
                }
                Err(e) => e.to_string(),
            }
        };
        // Before tcx (6.6): a clsact qdisc (shared; EEXIST when present) and a filter. A
        // filter outlives a SIGKILLed tracer: its handle is the process id, so a later start
        // removes the tracer's own filters whose process is gone, and no one else's.
        clsact::remove_stale(iface);
        let _ = tc::qdisc_add_clsact(iface);
        let pid = std::process::id();
        tc.attach_with_options(
            iface,
            TcAttachType::Ingress,
            TcAttachOptions::Netlink(NlOptions {
                handle: TcHandle::new((pid >> 16) as u16, pid as u16),
                ..NlOptions::default()
            }),
        )
        .map_err(|e| {
            anyhow!("cannot attach TC ingress to {iface}: tcx: {tcx_error}; clsact: {e}")
        })?;
        self.arrival_hook = ArrivalHook::TcClsact;
        Ok(())
    }

    fn attach_xdp(&mut self, xdp_program: &str, iface: &str, mode: XdpAttach) -> Result<()> {
        let xdp: &mut Xdp = program(&mut self.ebpf, xdp_program)?;
        if xdp.fd().is_err() {
            xdp.load().context("loading the XDP program")?;
        }
        let veth = crate::sys::netinfo::driver_name(iface).as_deref() == Some("veth");
        let generic_first = match mode {
            XdpAttach::Generic => true,
            XdpAttach::Driver => false,
            XdpAttach::Auto => veth,
        };
        if generic_first {
            xdp.attach(iface, XdpMode::Skb)
                .map_err(|e| xdp_attach_error(iface, "generic", e))?;
            self.arrival_hook = ArrivalHook::XdpGeneric;
            if mode == XdpAttach::Auto {
                self.notes.push(format!(
                    "{iface} is a veth: generic XDP (native XDP on veth copies every packet the local stack sends; --xdp-mode driver forces it)"
                ));
            }
            return Ok(());
        }
        match xdp.attach(iface, XdpMode::Driver) {
            Ok(_) => {
                self.arrival_hook = ArrivalHook::XdpDriver;
            }
            Err(native) if mode == XdpAttach::Auto => {
                xdp.attach(iface, XdpMode::Skb).map_err(|generic| {
                    anyhow!(
                        "cannot attach XDP to {iface}: driver mode: {native}; generic mode: {generic} (is another XDP program attached?)"
                    )
                })?;
                self.arrival_hook = ArrivalHook::XdpGeneric;
                self.notes.push(format!(
                    "{iface}: driver doesn't support native XDP ({native}); using generic (skb) mode"
                ));
            }
            Err(native) => return Err(xdp_attach_error(iface, "driver", native)),
        }
        Ok(())
    }

    fn set_ports(&mut self, ports: &[u16]) -> Result<()> {
        let mut words = vec![0u64; PORT_BITMAP_WORDS as usize];
        for &p in ports {
            words[usize::from(p >> 6)] |= 1u64 << (p & 63);
        }
        let mut map: Array<&mut MapData, u64> = Array::try_from(
            self.ebpf
                .map_mut("PORTS")
                .ok_or_else(|| anyhow!("PORTS map missing"))?,
        )?;
        for (i, w) in words.iter().enumerate() {
            if *w != 0 {
                map.set(i as u32, w, 0)?;
            }
        }
        Ok(())
    }

    /// Replaces the watched ranges in place: new entries first, then stale ones removed, so a
    /// peer inside both lists never stops matching and nothing is detached.
    pub fn set_ranges(&mut self, ranges: &RangeSet) -> Result<()> {
        // Sizes first: nothing reaches the kernel that it cannot hold.
        crate::ranges::validate::check_counts(ranges.v4.len(), ranges.v6.len())?;
        // While the trie changes, the bitmaps admit old and new ranges; then exactly the new.
        let (full, part) = ranges.slash24_v4();
        let v6 = ranges.prefilter_v6();
        let union = |a: &SparseBits, b: &SparseBits| {
            let mut u = a.clone();
            for (k, w) in b {
                *u.entry(*k).or_default() |= w;
            }
            u
        };
        let (old_full, old_part) = self.bitmaps.0.clone();
        let union6: Vec<u64> = v6.iter().zip(&self.bitmaps.1).map(|(a, b)| a | b).collect();
        self.write_sparse(
            "EDGE_V4_FULL24",
            &union(&full, &old_full),
            &SparseBits::new(),
        )?;
        self.write_sparse(
            "EDGE_V4_PART24",
            &union(&part, &old_part),
            &SparseBits::new(),
        )?;
        self.write_words("EDGE_V6_PREFILTER", &union6)?;
        if let Err(e) = self.update_tries(ranges) {
            // The tries kept the old list: so do the bitmaps.
            let old6 = self.bitmaps.1.clone();
            let _ = self.write_sparse("EDGE_V4_FULL24", &old_full, &union(&full, &old_full));
            let _ = self.write_sparse("EDGE_V4_PART24", &old_part, &union(&part, &old_part));
            let _ = self.write_words("EDGE_V6_PREFILTER", &old6);
            return Err(e);
        }
        self.write_sparse("EDGE_V4_FULL24", &full, &old_full)?;
        self.write_sparse("EDGE_V4_PART24", &part, &old_part)?;
        self.write_words("EDGE_V6_PREFILTER", &v6)?;
        self.bitmaps = ((full, part), v6);
        Ok(())
    }

    /// Writes the words of `bits`, and zeroes the words of `previous` that `bits` lacks.
    fn write_sparse(&mut self, name: &str, bits: &SparseBits, previous: &SparseBits) -> Result<()> {
        let mut map: Array<&mut MapData, u64> = Array::try_from(
            self.ebpf
                .map_mut(name)
                .ok_or_else(|| anyhow!("{name} map missing"))?,
        )?;
        for (i, w) in bits {
            map.set(*i, w, 0)
                .with_context(|| format!("updating {name}"))?;
        }
        for i in previous.keys().filter(|i| !bits.contains_key(i)) {
            map.set(*i, 0, 0)
                .with_context(|| format!("updating {name}"))?;
        }
        Ok(())
    }

    fn write_words(&mut self, name: &str, words: &[u64]) -> Result<()> {
        let mut map: Array<&mut MapData, u64> = Array::try_from(
            self.ebpf
                .map_mut(name)
                .ok_or_else(|| anyhow!("{name} map missing"))?,
        )?;
        for (i, w) in words.iter().enumerate() {
            map.set(i as u32, w, 0)
                .with_context(|| format!("updating {name}"))?;
        }
        Ok(())
    }

    fn update_tries(&mut self, ranges: &RangeSet) -> Result<()> {
        let v4 = ranges
            .v4
            .iter()
            .map(|n| Key::new(u32::from(n.prefix_len()), n.network().octets()));
        sync_trie::<Ipv4Key>(&mut self.ebpf, "EDGE_V4", v4.collect())?;
        let v6 = ranges
            .v6
            .iter()
            .map(|n| Key::new(u32::from(n.prefix_len()), n.network().octets()));
        sync_trie::<Ipv6Key>(&mut self.ebpf, "EDGE_V6", v6.collect())
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
            arrival: None,
            bitmaps: empty_bitmaps(),
            syn_log,
            clock_program: CLOCK_PROGRAM,
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

    /// The event ring buffer; call once.
    pub fn take_ring(&mut self) -> Result<RingBuf<MapData>> {
        let map = self
            .ebpf
            .take_map("EVENTS")
            .ok_or_else(|| anyhow!("EVENTS ring buffer already taken"))?;
        Ok(RingBuf::try_from(map)?)
    }

    /// The SYN log, mapped; call once.
    pub fn take_syn_log(&mut self) -> Result<synlog::SynLog> {
        let mut take = |name: &str| {
            self.ebpf
                .take_map(name)
                .ok_or_else(|| anyhow!("{name} map already taken"))
        };
        let (records, cursors) = (take("SYN_LOG")?, take("SYN_CURSORS")?);
        synlog::SynLog::new(records, cursors, self.syn_log.0, self.syn_log.1)
    }

    /// Sums of the per-CPU counters, indexed by `tracer_common::counter`.
    pub fn counters(&self) -> Result<[u64; counter::COUNT as usize]> {
        let map: PerCpuArray<&MapData, u64> = PerCpuArray::try_from(
            self.ebpf
                .map("COUNTERS")
                .ok_or_else(|| anyhow!("COUNTERS map missing"))?,
        )?;
        let mut out = [0u64; counter::COUNT as usize];
        for (i, slot) in out.iter_mut().enumerate() {
            *slot = map.get(&(i as u32), 0)?.iter().sum();
        }
        Ok(out)
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
}
