//! Watches the host for the changes the journal records, on a thread of its own: the kernel's
//! notifications (rtnetlink, the nftables monitor) as they come, the listeners on the watched
//! ports — dated and named by the kernel's LISTEN transitions the capture hands over
//! ([`super::listeners`]) — and the sysctls.
//!
//! The listeners are sampled every 250 ms around the kernel's transitions (and always, on a
//! kernel that does not report them); between them, every 2 s: each sample is two socket
//! dumps, and each wake-up of this thread a preemption of the server on a busy origin.

use std::{
    collections::BTreeMap,
    net::IpAddr,
    os::{fd::AsRawFd, unix::net::UnixDatagram},
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc, Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use super::{
    listeners::{flaps, KernelListeners, SampleHistory, SocketCounts, OWN_WAIT},
    netlink::{self, NftChange, RtChange},
    Change, What,
};
use crate::{
    model::event::ListenerEvent,
    origin::{listeners, namespaces, processes},
    ranges::RangeSet,
    sys::netlink::RouteKind,
};

const LISTENERS_EVERY: Duration = Duration::from_millis(250);
/// Between the kernel's listener transitions, when it reports them: a transition wakes the
/// watcher at once, so this only bounds how long a change it could not see goes unsaid.
const LISTENERS_STEADY: Duration = Duration::from_secs(2);
/// Sampled every [`LISTENERS_EVERY`] this long after the kernel's last transition: the
/// sampler must find the change each own event stands for within [`OWN_WAIT`].
const LISTENERS_ACTIVE: Duration = Duration::from_secs(4);
const SYSCTLS_EVERY: Duration = Duration::from_secs(1);
const _: () = assert!(LISTENERS_ACTIVE.as_millis() >= 2 * OWN_WAIT.as_millis());
/// An nftables batch with no closing generation is said after this.
const BATCH_WAIT: Duration = Duration::from_millis(500);
/// Listener events queued for the journal at most.
const LISTENER_QUEUE: usize = 1024;
/// Lost notifications are warned about at most this often.
const LOSS_WARN_EVERY: Duration = Duration::from_secs(60);

/// The watcher's thread; stopped when dropped.
pub struct Watcher {
    rx: mpsc::Receiver<Change>,
    listeners_tx: mpsc::SyncSender<ListenerEvent>,
    /// Wakes the thread: a listener event queued, or the watcher stopping.
    bell: Option<UnixDatagram>,
    /// Listener events dropped because the journal's queue was full.
    dropped: std::sync::atomic::AtomicU64,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Watcher {
    /// `own_netns`: the tracer's network namespace (its listeners are sampled; the kernel's
    /// events from others are journaled as they are). `kernel_listeners`: the capture hands
    /// over the kernel's listener transitions (else the listeners are sampled every 250 ms).
    pub fn start(
        iface: &str,
        ports: &[u16],
        ranges: &RangeSet,
        own_netns: u32,
        kernel_listeners: bool,
    ) -> Watcher {
        let (tx, rx) = mpsc::channel();
        // Bounded: the kernel limits listener changes per namespace, and this bounds what the
        // capture thread hands the journal whatever arrives.
        let (listeners_tx, listeners_rx) = mpsc::sync_channel(LISTENER_QUEUE);
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let (iface, ports, ranges) = (iface.to_string(), ports.to_vec(), ranges.clone());
        let (bell, bell_rx) = match UnixDatagram::pair().and_then(|(a, b)| {
            a.set_nonblocking(true)?;
            b.set_nonblocking(true)?;
            Ok((a, b))
        }) {
            Ok((a, b)) => (Some(a), Some(b)),
            Err(e) => {
                tracing::debug!("journal: no wake-up socket ({e}): listeners sampled every 250 ms");
                (None, None)
            }
        };
        let steady = kernel_listeners && bell_rx.is_some();
        // The baseline is read on the thread: the tracer's start does not wait for it.
        let thread = std::thread::Builder::new()
            .name("journal".into())
            .spawn(move || {
                let mut state = State::new(&iface, &ports, &ranges, own_netns);
                state.run(&tx, &listeners_rx, bell_rx.as_ref(), steady, &flag)
            })
            .ok();
        Watcher {
            rx,
            listeners_tx,
            bell,
            dropped: std::sync::atomic::AtomicU64::new(0),
            stop,
            thread,
        }
    }

    /// The changes seen since the last call.
    pub fn drain(&self) -> Vec<Change> {
        self.rx.try_iter().collect()
    }

    /// A listener's LISTEN transition from the kernel; dropped (and counted) when the
    /// journal is that far behind.
    pub fn listener(&self, ev: ListenerEvent) {
        if self.listeners_tx.try_send(ev).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        } else {
            self.wake();
        }
    }

    /// Wakes the thread (a full socket means it has a wake-up pending already).
    fn wake(&self) {
        if let Some(bell) = &self.bell {
            let _ = bell.send(&[1]);
        }
    }

    /// Listener events dropped so far because the journal's queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.wake();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// How often the listeners are sampled: every 250 ms without the kernel's transitions (or
/// the bell), while a change the last sample found waits to be said, and for a while after
/// the kernel's last transition (`since_transition`); else every 2 s.
fn listener_every(
    steady: bool,
    found_waiting: bool,
    since_transition: Option<Duration>,
) -> Duration {
    let active = since_transition.is_some_and(|d| d < LISTENERS_ACTIVE);
    if !steady || found_waiting || active {
        LISTENERS_EVERY
    } else {
        LISTENERS_STEADY
    }
}

/// Who holds a listening socket, when found.
type Owner = Option<(u32, String)>;

struct State {
    iface: String,
    ports: Vec<u16>,
    ranges: Vec<ipnet::IpNet>,
    listeners: BTreeMap<(IpAddr, u16), Owner>,
    sysctls: BTreeMap<String, String>,
    nft_batch: Vec<NftChange>,
    nft_since: Option<Instant>,
    kernel_listeners: KernelListeners,
    /// Sockets per listening endpoint at the last samples.
    history: SampleHistory,
    /// Listener changes the last sample found, said at the next one (the kernel's event for
    /// each may still be on its way): (up, address, port, sampled owner, when).
    sampled: Vec<(bool, IpAddr, u16, String, std::time::SystemTime)>,
}

fn sysctl_paths(iface: &str) -> Vec<(String, String)> {
    [
        (
            "net.ipv4.conf.all.rp_filter".to_string(),
            "/proc/sys/net/ipv4/conf/all/rp_filter".to_string(),
        ),
        (
            format!("net.ipv4.conf.{iface}.rp_filter"),
            format!("/proc/sys/net/ipv4/conf/{iface}/rp_filter"),
        ),
        (
            "net.core.somaxconn".into(),
            "/proc/sys/net/core/somaxconn".into(),
        ),
        (
            "net.ipv4.tcp_syncookies".into(),
            "/proc/sys/net/ipv4/tcp_syncookies".into(),
        ),
        (
            "net.ipv4.tcp_max_syn_backlog".into(),
            "/proc/sys/net/ipv4/tcp_max_syn_backlog".into(),
        ),
    ]
    .into()
}

fn ifname(index: u32) -> String {
    crate::sys::netlink::interface_name(index).unwrap_or_else(|| format!("ifindex {index}"))
}

fn ifindex(iface: &str) -> Option<u32> {
    crate::sys::netlink::interface_index(iface).ok()
}

fn endpoint(addr: IpAddr, port: u16) -> String {
    crate::origin::backends::endpoint(addr, port)
}

fn owner_text(owner: &Owner) -> String {
    match owner {
        Some((pid, comm)) => format!("{comm} (pid {pid})"),
        None => "a process".into(),
    }
}

impl State {
    fn new(iface: &str, ports: &[u16], ranges: &RangeSet, own_netns: u32) -> State {
        let mut s = State {
            iface: iface.to_string(),
            ports: ports.to_vec(),
            ranges: ranges
                .v4
                .iter()
                .map(|n| ipnet::IpNet::V4(*n))
                .chain(ranges.v6.iter().map(|n| ipnet::IpNet::V6(*n)))
                .collect(),
            listeners: BTreeMap::new(),
            sysctls: BTreeMap::new(),
            nft_batch: Vec::new(),
            nft_since: None,
            kernel_listeners: KernelListeners::new(own_netns),
            history: SampleHistory::default(),
            sampled: Vec::new(),
        };
        // What is there at start is the baseline, not a change.
        let (listeners, counts) = s.sample_listeners(&BTreeMap::new());
        s.listeners = listeners;
        s.history.record(std::time::SystemTime::now(), counts);
        for (name, path) in sysctl_paths(iface) {
            if let Ok(v) = std::fs::read_to_string(&path) {
                s.sysctls.insert(name, v.trim().to_string());
            }
        }
        s
    }

    /// The listeners on watched ports now, owners kept from `known` or looked up for new ones;
    /// and how many sockets listen on each.
    fn sample_listeners(
        &self,
        known: &BTreeMap<(IpAddr, u16), Owner>,
    ) -> (BTreeMap<(IpAddr, u16), Owner>, SocketCounts) {
        let now: Vec<listeners::Listener> = listeners::read()
            .into_iter()
            .filter(|l| self.ports.contains(&l.port))
            .collect();
        let mut counts = BTreeMap::new();
        for l in &now {
            *counts.entry((l.addr, l.port)).or_default() += 1;
        }
        let new_inodes: Vec<u64> = now
            .iter()
            .filter(|l| !known.contains_key(&(l.addr, l.port)))
            .filter_map(|l| l.inode)
            .collect();
        let owners = if new_inodes.is_empty() {
            Default::default()
        } else {
            processes::socket_owners(&new_inodes)
        };
        let owned = now
            .into_iter()
            .map(|l| {
                let key = (l.addr, l.port);
                let owner = match known.get(&key) {
                    Some(o) => o.clone(),
                    None => l.inode.and_then(|i| owners.get(&i).cloned()),
                };
                (key, owner)
            })
            .collect();
        (owned, counts)
    }

    /// `steady`: the kernel's listener transitions come, and wake the thread through `bell`.
    fn run(
        &mut self,
        tx: &mpsc::Sender<Change>,
        listeners_rx: &mpsc::Receiver<ListenerEvent>,
        bell: Option<&UnixDatagram>,
        steady: bool,
        stop: &AtomicBool,
    ) {
        let route = netlink::Socket::route()
            .map_err(|e| tracing::debug!("journal: no rtnetlink notifications: {e}"))
            .ok();
        let nft = netlink::Socket::nftables()
            .map_err(|e| tracing::debug!("journal: no nftables notifications: {e}"))
            .ok();
        let mut buf = vec![0u8; 64 * 1024];
        let (mut last_listeners, mut last_sysctls) = (Instant::now(), Instant::now());
        // The kernel's last listener transition (any namespace), as the watcher got it.
        let mut last_transition: Option<Instant> = None;
        let cadence = |found_waiting: bool, last_transition: Option<Instant>| {
            listener_every(steady, found_waiting, last_transition.map(|t| t.elapsed()))
        };
        let mut last_loss_warned: Option<Instant> = None;
        let send = |c: Change| {
            let _ = tx.send(c);
        };
        while !stop.load(Ordering::Relaxed) {
            let mut fds: Vec<libc::pollfd> = [&route, &nft]
                .iter()
                .filter_map(|s| s.as_ref().map(|s| s.raw()))
                .chain(bell.map(|b| b.as_raw_fd()))
                .map(|fd| libc::pollfd {
                    fd,
                    events: libc::POLLIN,
                    revents: 0,
                })
                .collect();
            let every = cadence(!self.sampled.is_empty(), last_transition);
            let mut next = (last_listeners + every).min(last_sysctls + SYSCTLS_EVERY.max(every));
            if let Some(since) = self.nft_since {
                next = next.min(since + BATCH_WAIT);
            }
            let timeout = next
                .saturating_duration_since(Instant::now())
                .as_micros()
                .div_ceil(1000)
                .min(i32::MAX as u128) as i32;
            // SAFETY: poll over our own fds until the next step is due.
            unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) };
            if let Some(b) = bell {
                let mut byte = [0u8; 64];
                while b.recv(&mut byte).is_ok() {}
            }
            if let Some(s) = &route {
                let mut changes = Vec::new();
                let lost = s.drain(&mut buf, |kind, p| {
                    if let Some(c) = netlink::decode_route(kind, p) {
                        changes.push(c);
                    }
                });
                for c in changes {
                    if let Some(change) = self.route_change(c) {
                        send(change);
                    }
                }
                if lost {
                    // The kernel dropped notifications (ENOBUFS): what changed in between is
                    // unknown, so say so and state the interface as it is now.
                    if last_loss_warned.is_none_or(|t: Instant| t.elapsed() >= LOSS_WARN_EVERY) {
                        tracing::warn!("the change journal lost route/address/link notifications (changes came faster than it reads); the interface is stated as it is now (said again in a minute at most)");
                        last_loss_warned = Some(Instant::now());
                    }
                    send(Change::new(
                        What::Route,
                        format!(
                            "routes, addresses or links changed faster than the journal could read (notifications lost); as it is now: {}",
                            self.interface_now()
                        ),
                    ));
                }
            }
            if let Some(s) = &nft {
                let mut batch = std::mem::take(&mut self.nft_batch);
                let lost = s.drain(&mut buf, |kind, p| {
                    if let Some(c) = netlink::decode_nft(kind, p) {
                        batch.push(c);
                    }
                });
                self.nft_batch = batch;
                if lost {
                    send(Change::new(What::Firewall, "nftables changed faster than the journal could read (some notifications lost)"));
                }
                if !self.nft_batch.is_empty() && self.nft_since.is_none() {
                    self.nft_since = Some(Instant::now());
                }
                if let Some(c) = self.nft_summary() {
                    send(c);
                }
            }
            for ev in listeners_rx.try_iter() {
                self.kernel_listeners.push(ev);
                last_transition = Some(Instant::now());
            }
            let every = cadence(!self.sampled.is_empty(), last_transition);
            if last_listeners.elapsed() >= every {
                last_listeners = Instant::now();
                for change in self.listener_changes() {
                    send(change);
                }
            }
            if last_sysctls.elapsed() >= SYSCTLS_EVERY.max(every) {
                last_sysctls = Instant::now();
                for (name, path) in sysctl_paths(&self.iface) {
                    let Ok(v) = std::fs::read_to_string(&path) else {
                        continue;
                    };
                    let v = v.trim().to_string();
                    match self.sysctls.insert(name.clone(), v.clone()) {
                        Some(old) if old != v => {
                            send(Change::new(What::Sysctl, format!("{name} {old} → {v}")))
                        }
                        _ => {}
                    }
                }
            }
        }
    }

    /// One listener step: the changes the previous sample found, dated and named by the
    /// kernel's events; those in other namespaces; then a new sample.
    fn listener_changes(&mut self) -> Vec<Change> {
        let mut changes: Vec<Change> = std::mem::take(&mut self.sampled)
            .into_iter()
            .map(|(up, addr, port, owner, at)| {
                self.kernel_listeners
                    .own_change(up, addr, port, &owner, at, &endpoint(addr, port))
            })
            .collect();
        let expired = self
            .kernel_listeners
            .expired_own(std::time::SystemTime::now());
        changes.extend(flaps(expired, &self.history, endpoint));
        changes.extend(self.kernel_listeners.other_changes(
            |netns| match namespaces::Namespace::find(netns) {
                Some(ns) => ns.describe(),
                None => format!("namespace netns:[{netns}] (gone)"),
            },
            |netns, addr, port| {
                namespaces::Namespace::find(netns)
                    .and_then(|ns| ns.listeners().ok())
                    .is_some_and(|all| all.iter().any(|l| l.addr == addr && l.port == port))
            },
            endpoint,
        ));
        let (now, counts) = self.sample_listeners(&self.listeners);
        let at = std::time::SystemTime::now();
        self.history.record(at, counts);
        for ((addr, port), owner) in &self.listeners {
            if !now.contains_key(&(*addr, *port)) {
                self.sampled
                    .push((false, *addr, *port, owner_text(owner), at));
            }
        }
        for ((addr, port), owner) in &now {
            if !self.listeners.contains_key(&(*addr, *port)) {
                self.sampled
                    .push((true, *addr, *port, owner_text(owner), at));
            }
        }
        self.listeners = now;
        changes
    }

    /// A batch of nftables notifications, in one line, once it is closed by its generation
    /// (or has waited long enough).
    fn nft_summary(&mut self) -> Option<Change> {
        let generation = self.nft_batch.iter().rev().find_map(|c| match c {
            NftChange::Generation(g) => Some(*g),
            _ => None,
        });
        let waited = self.nft_since.is_some_and(|t| t.elapsed() >= BATCH_WAIT);
        if generation.is_none() && !waited {
            return None;
        }
        let batch = std::mem::take(&mut self.nft_batch);
        self.nft_since = None;
        let mut counts: BTreeMap<(String, &str, bool), u32> = BTreeMap::new();
        for c in &batch {
            if let NftChange::Object {
                added,
                object,
                place,
            } = c
            {
                *counts.entry((place.clone(), *object, *added)).or_default() += 1;
            }
        }
        if counts.is_empty() {
            return None;
        }
        let parts: Vec<String> = counts
            .iter()
            .map(|((place, object, added), n)| {
                let plural = if *n == 1 { "" } else { "s" };
                let verb = if *added { "added to" } else { "deleted from" };
                format!("{n} {object}{plural} {verb} {place}")
            })
            .collect();
        let generation = generation
            .map(|g| format!(" (generation {g})"))
            .unwrap_or_default();
        Some(Change::new(
            What::Firewall,
            format!("nftables{generation}: {}", parts.join("; ")),
        ))
    }

    /// The watched interface now — its state and addresses — for a resync after lost
    /// notifications.
    fn interface_now(&self) -> String {
        let state = std::fs::read_to_string(format!("/sys/class/net/{}/operstate", self.iface))
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "gone".into());
        let addrs: Vec<String> = crate::sys::netinfo::addresses(&self.iface)
            .iter()
            .map(ToString::to_string)
            .collect();
        format!(
            "{} {state}, addresses {}",
            self.iface,
            if addrs.is_empty() {
                "none".to_string()
            } else {
                addrs.join(", ")
            }
        )
    }

    /// A route, address or link change, when it concerns the watched interface or the edge.
    fn route_change(&self, c: RtChange) -> Option<Change> {
        let watched = ifindex(&self.iface);
        let verb = |removed: bool| if removed { "removed" } else { "added" };
        match c {
            RtChange::Link {
                index,
                name,
                kind,
                up,
                flags_changed,
                removed,
            } => {
                if name != self.iface && Some(index) != watched {
                    // A veth going away is a container (or namespace) stopping: the backend
                    // of a published port may be behind it.
                    return (kind == "veth" && removed).then(|| {
                        Change::new(
                            What::Link,
                            format!("veth {name} was deleted: a container or network namespace on this host went away"),
                        )
                    });
                }
                if removed {
                    return Some(Change::new(
                        What::Link,
                        format!("interface {name} was deleted"),
                    ));
                }
                flags_changed.then(|| {
                    Change::new(
                        What::Link,
                        format!("interface {name} went {}", if up { "up" } else { "down" }),
                    )
                })
            }
            RtChange::Address {
                index,
                addr,
                prefix,
                removed,
            } => {
                // Link-local addresses come and go with the link; Cloudflare never uses them.
                let link_local = match addr {
                    IpAddr::V6(a) => a.is_unicast_link_local(),
                    IpAddr::V4(a) => a.is_link_local(),
                };
                (Some(index) == watched && !link_local).then(|| {
                    Change::new(
                        What::Address,
                        format!(
                            "address {addr}/{prefix} {} {} {}",
                            verb(removed),
                            if removed { "from" } else { "on" },
                            self.iface
                        ),
                    )
                })
            }
            RtChange::Route {
                dst,
                dst_len,
                gateway,
                oif,
                table,
                kind,
                removed,
            } => {
                // The local table lists the host's own addresses; broadcast/multicast/local
                // routes are not how replies leave.
                if table == 255
                    || !matches!(
                        kind,
                        RouteKind::Unicast
                            | RouteKind::Blackhole
                            | RouteKind::Unreachable
                            | RouteKind::Prohibit
                    )
                {
                    return None;
                }
                let net = dst.and_then(|d| ipnet::IpNet::new(d, dst_len).ok());
                let toward_edge = match net {
                    None => true, // a default route
                    Some(n) => {
                        let n = n.trunc();
                        n.prefix_len() == 0
                            || self
                                .ranges
                                .iter()
                                .any(|r| r.contains(&n.network()) || n.contains(&r.network()))
                    }
                };
                if !(toward_edge || (oif.is_some() && oif == watched)) {
                    return None;
                }
                let what = match net {
                    Some(n) if n.prefix_len() > 0 => n.trunc().to_string(),
                    _ => "default".into(),
                };
                let kind = match kind {
                    RouteKind::Blackhole => " blackhole",
                    RouteKind::Unreachable => " unreachable",
                    RouteKind::Prohibit => " prohibit",
                    _ => "",
                };
                let via = gateway.map(|g| format!(" via {g}")).unwrap_or_default();
                let dev = oif
                    .map(|i| format!(" dev {}", ifname(i)))
                    .unwrap_or_default();
                let table = match table {
                    254 => "main".to_string(),
                    t => t.to_string(),
                };
                Some(Change::new(
                    What::Route,
                    format!(
                        "route{kind} {what}{via}{dev} {} (table {table})",
                        verb(removed)
                    ),
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listeners_are_sampled_often_only_around_the_kernels_transitions() {
        let ms = Duration::from_millis;
        // Without the kernel's transitions: always every 250 ms.
        assert_eq!(listener_every(false, false, None), LISTENERS_EVERY);
        assert_eq!(
            listener_every(false, false, Some(ms(60_000))),
            LISTENERS_EVERY
        );
        // With them: 2 s when nothing happened, 250 ms for a while after a transition and
        // while a change found waits to be said.
        assert_eq!(listener_every(true, false, None), LISTENERS_STEADY);
        assert_eq!(listener_every(true, false, Some(ms(100))), LISTENERS_EVERY);
        assert_eq!(
            listener_every(true, false, Some(ms(3_900))),
            LISTENERS_EVERY
        );
        assert_eq!(
            listener_every(true, false, Some(ms(4_000))),
            LISTENERS_STEADY
        );
        assert_eq!(
            listener_every(true, true, Some(ms(60_000))),
            LISTENERS_EVERY
        );
    }
}
