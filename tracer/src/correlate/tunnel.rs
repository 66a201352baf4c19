//! Watching a Cloudflare Tunnel on this host: its processes found by name (again every few
//! seconds: `cloudflared` restarts), handed to the kernel to follow their connections; their
//! dials counted; at a window's end, what they hold toward the edge and what listens where
//! they dialled.

use std::{collections::BTreeMap, net::SocketAddr};

use crate::{
    correlate::dials::{DialCounts, Dials},
    model::dial::DialEvent,
    origin::{
        listeners::Listener,
        tunnel::{self, EdgeSockets, TunnelProcess},
    },
    ranges::RangeSet,
    reasons::Reason,
};

/// A window's view of the tunnel: what the verdict decides from and the report shows.
#[derive(Clone, Debug, PartialEq)]
pub struct TunnelSeen {
    /// The process name looked for.
    pub name: String,
    /// The tunnel processes found during the window.
    pub processes: Vec<TunnelProcess>,
    /// Those still running at its end.
    pub running: Vec<u32>,
    /// Dials to anything but the edge: the services behind the tunnel, each with what
    /// listens on its port where it was dialled.
    pub services: Vec<ServiceDials>,
    /// Dials to the edge (port 7844, or any address in the watched ranges).
    pub edge: DialCounts,
    /// What the processes hold toward the edge at the window's end.
    pub edge_sockets: EdgeSockets,
    /// `UdpRcvbufErrors` over the window, in the processes' namespaces.
    pub udp_rcvbuf_errors: Option<u64>,
    /// The kernel's names of the drop reasons its dropped SYNs carry (given by the window's
    /// report, which knows this kernel's names).
    pub drop_names: BTreeMap<Reason, String>,
}

impl TunnelSeen {
    /// Names every drop reason the dials' dropped SYNs carry.
    pub fn name_drops(&mut self, name: impl Fn(Reason) -> String) {
        let reasons: Vec<Reason> = self
            .services
            .iter()
            .map(|s| &s.counts)
            .chain([&self.edge])
            .flat_map(|c| c.syn_drops.keys().flatten().copied())
            .collect();
        for r in reasons {
            self.drop_names.entry(r).or_insert_with(|| name(r));
        }
    }

    /// A dropped SYN's reason as the kernel names it ("unknown" on a kernel without reasons).
    pub fn drop_name(&self, r: Option<Reason>) -> &str {
        r.and_then(|r| self.drop_names.get(&r))
            .map_or("unknown", String::as_str)
    }
}

/// Dials to one service address.
#[derive(Clone, Debug, PartialEq)]
pub struct ServiceDials {
    pub target: SocketAddr,
    pub counts: DialCounts,
    /// The listeners on the target's port in the dialling process's namespace.
    pub listeners: Vec<Listener>,
    /// Is the target an address of that namespace (`None`: not readable)?
    pub on_this_host: Option<bool>,
}

/// Is a dial's target the edge? `cloudflared` reaches the edge on 7844 and its API in
/// Cloudflare's ranges; anything else is a service it forwards to.
pub fn is_edge(target: &SocketAddr, ranges: &RangeSet) -> bool {
    target.port() == tunnel::EDGE_PORT || ranges.range_of(target.ip()).is_some()
}

/// The tunnel watched across windows.
pub struct TunnelWatch {
    name: String,
    /// Running now.
    processes: Vec<TunnelProcess>,
    /// Found at some point of the window: each stays in its report.
    seen: Vec<TunnelProcess>,
    dials: Dials,
    /// `UdpRcvbufErrors` at the window's start, by process.
    rcvbuf_start: Option<u64>,
}

impl TunnelWatch {
    pub fn new(name: &str) -> Self {
        let mut w = Self {
            name: name.to_string(),
            processes: Vec::new(),
            seen: Vec::new(),
            dials: Dials::default(),
            rcvbuf_start: None,
        };
        w.processes = tunnel::find(name);
        w.seen = w.processes.clone();
        w.rcvbuf_start = w.rcvbuf_errors();
        w
    }

    /// The process ids the kernel follows now.
    pub fn pids(&self) -> Vec<u32> {
        self.processes.iter().map(|p| p.pid).collect()
    }

    /// Looks for the processes again; `Some(pids)` when the set changed (the kernel's list
    /// must follow).
    pub fn refresh(&mut self) -> Option<Vec<u32>> {
        let found = tunnel::find(&self.name);
        let same = found.len() == self.processes.len()
            && found
                .iter()
                .all(|f| self.processes.iter().any(|p| p.pid == f.pid));
        for f in &found {
            if !self.seen.iter().any(|p| p.pid == f.pid) {
                self.seen.push(f.clone());
            }
        }
        self.processes = found;
        (!same).then(|| self.pids())
    }

    pub fn observe(&mut self, e: &DialEvent) {
        self.dials.observe(e);
    }

    fn rcvbuf_errors(&self) -> Option<u64> {
        let mut seen = std::collections::BTreeSet::new();
        let mut total = None;
        for p in &self.processes {
            // One reading per namespace: the counter is the namespace's.
            if !seen.insert(p.netns) {
                continue;
            }
            if let Some(n) = tunnel::udp_rcvbuf_errors(p.pid) {
                *total.get_or_insert(0) += n;
            }
        }
        total
    }

    /// The window's view (`None` when no tunnel process ran and none dialled), and a fresh
    /// count for the next window.
    pub fn close_window(&mut self, ranges: &RangeSet, own_netns: u32) -> Option<TunnelSeen> {
        let dials = std::mem::take(&mut self.dials);
        let seen = std::mem::replace(&mut self.seen, self.processes.clone());
        if seen.is_empty() && dials.by_target.is_empty() {
            self.rcvbuf_start = None;
            return None;
        }
        let mut edge_sockets = EdgeSockets::default();
        for p in &self.processes {
            let s = tunnel::edge_sockets(p.pid);
            edge_sockets.tcp_established += s.tcp_established;
            edge_sockets.tcp_connecting += s.tcp_connecting;
            edge_sockets.udp += s.udp;
        }
        let rcvbuf_now = self.rcvbuf_errors();
        let udp_rcvbuf_errors = match (self.rcvbuf_start, rcvbuf_now) {
            (Some(a), Some(b)) => Some(b.saturating_sub(a)),
            _ => None,
        };
        self.rcvbuf_start = rcvbuf_now;
        edge_sockets.udp_rcvbuf_errors = rcvbuf_now;
        let mut listeners_by_ns: Vec<(Option<u32>, Vec<Listener>)> = Vec::new();
        let mut services = Vec::new();
        for (target, counts) in dials.by_target.iter().filter(|(t, _)| !is_edge(t, ranges)) {
            // The namespace of a process that dialled it (the same for every process of one
            // tunnel, in practice).
            let process = seen
                .iter()
                .find(|p| counts.pids.contains(&p.pid))
                .or(seen.first());
            let ns = process.and_then(|p| p.netns);
            if !listeners_by_ns.iter().any(|(n, _)| *n == ns) {
                let l = process.map(|p| p.listeners(own_netns)).unwrap_or_default();
                listeners_by_ns.push((ns, l));
            }
            let all = &listeners_by_ns
                .iter()
                .find(|(n, _)| *n == ns)
                .expect("read")
                .1;
            let on_this_host = if target.ip().is_loopback() {
                Some(true)
            } else {
                process.and_then(|p| crate::origin::proc_net::is_local(p.pid, target.ip()))
            };
            services.push(ServiceDials {
                target: *target,
                on_this_host,
                counts: counts.clone(),
                listeners: all
                    .iter()
                    .filter(|l| l.port == target.port())
                    .cloned()
                    .collect(),
            });
        }
        Some(TunnelSeen {
            name: self.name.clone(),
            processes: seen,
            running: self.pids(),
            services,
            edge: dials.total(|t| is_edge(t, ranges)),
            edge_sockets,
            udp_rcvbuf_errors,
            drop_names: BTreeMap::new(),
        })
    }
}

#[cfg(test)]
impl TunnelSeen {
    /// cloudflared (pid 812) dialling [::1]:8080 (refused 12 times) while the service listens
    /// on 127.0.0.1:8080, with one TCP connection to the edge: what tests start from.
    pub fn sample() -> Self {
        use crate::model::dial::SocketError;
        let refused = DialCounts {
            dials: 12,
            failed: [(Some(SocketError(SocketError::ECONNREFUSED)), 12)].into(),
            pids: [812].into(),
            ..DialCounts::default()
        };
        TunnelSeen {
            name: tunnel::DEFAULT_NAME.into(),
            processes: vec![TunnelProcess {
                pid: 812,
                name: "cloudflared".into(),
                netns: Some(4026531840),
                container: None,
            }],
            running: vec![812],
            services: vec![ServiceDials {
                target: "[::1]:8080".parse().unwrap(),
                counts: refused,
                listeners: vec![Listener {
                    addr: "127.0.0.1".parse().unwrap(),
                    port: 8080,
                    ..Listener::default()
                }],
                on_this_host: Some(true),
            }],
            edge: DialCounts {
                dials: 1,
                connected: 1,
                pids: [812].into(),
                ..DialCounts::default()
            },
            edge_sockets: EdgeSockets {
                tcp_established: 1,
                tcp_connecting: 0,
                udp: 0,
                udp_rcvbuf_errors: Some(0),
            },
            udp_rcvbuf_errors: Some(0),
            drop_names: BTreeMap::new(),
        }
    }
}
