//! Where forwarded edge connections went: each backend (the address and port after DNAT, in
//! its namespace) with the process and container there, its listeners, and the rule that
//! rewrote the destination.

use std::{collections::BTreeMap, net::IpAddr};

use super::{firewall::Ruleset, listeners::Listener, namespaces::Namespace};
use crate::model::outcome::{Backend, Outcome};

/// One backend as the report shows it.
#[derive(Clone, Debug, PartialEq)]
pub struct BackendReport {
    /// After DNAT.
    pub addr: IpAddr,
    pub port: u16,
    /// Inode of the namespace that answered.
    pub netns: u32,
    pub pid: Option<u32>,
    pub comm: Option<String>,
    pub container: Option<String>,
    /// The rule that rewrote the destination, when the ruleset shows it.
    pub dnat_rule: Option<String>,
    /// The port the edge connected to.
    pub edge_port: u16,
    /// The namespace no longer exists (the container stopped during the window).
    pub gone: bool,
    /// Edge attempts forwarded here, by outcome.
    pub outcomes: BTreeMap<Outcome, u64>,
    /// Its namespace's listeners; `Err` when they could not be read.
    pub listeners: Result<Vec<Listener>, String>,
    /// "container 3f2a9c4b1d2e", "namespace netns:[...] (pid 812 nginx)", or "this host".
    pub place: String,
    /// In another namespace than the tracer's.
    pub elsewhere: bool,
}

impl BackendReport {
    pub fn endpoint(&self) -> String {
        endpoint(self.addr, self.port)
    }

    /// "table ip nat chain DOCKER": the DNAT rule's chain, for sentences.
    pub fn dnat_chain(&self) -> Option<&str> {
        let rule = self.dnat_rule.as_deref()?;
        let end = rule.find(" handle ").unwrap_or(rule.len());
        Some(&rule[..end])
    }

    pub fn count(&self, outcome: Outcome) -> u64 {
        self.outcomes.get(&outcome).copied().unwrap_or(0)
    }
}

pub fn endpoint(addr: IpAddr, port: u16) -> String {
    match addr {
        IpAddr::V6(a) => format!("[{a}]:{port}"),
        a => format!("{a}:{port}"),
    }
}

/// Resolves each backend seen (with the edge port and outcomes of its attempts) against the
/// live system: its namespace, listeners and DNAT rule. `own_netns`: the tracer's, whose
/// listeners are read directly.
pub fn resolve(
    seen: &BTreeMap<(Backend, u16), BTreeMap<Outcome, u64>>,
    own_netns: u32,
    ruleset: Option<&Ruleset>,
) -> Vec<BackendReport> {
    seen.iter()
        .map(|((b, edge_port), outcomes)| {
            let own = b.netns == own_netns;
            // 0: conntrack named the address, but no namespace holds it now.
            let unknown = b.netns == 0;
            let looked = (!own && !unknown).then(|| Namespace::lookup(b.netns));
            let missing = looked.as_ref().and_then(|l| l.as_ref().err().copied());
            // Gone only when nothing refers to it — not when the tracer may not look.
            let gone = matches!(missing, Some(super::namespaces::Unseen::Gone { .. }));
            let ns = looked.and_then(Result::ok);
            let listeners = if own {
                Ok(super::listeners::read())
            } else if unknown {
                Err(format!(
                    "no namespace holds {} now (container stopped?)",
                    b.addr
                ))
            } else {
                match &ns {
                    Some(ns) => ns.listeners().map(|mut all| {
                        for l in &mut all {
                            l.container = ns.container.clone();
                            l.pid = ns.pid;
                            l.comm = ns.comm.clone();
                        }
                        all
                    }),
                    None => Err(missing.map(|m| m.to_string()).unwrap_or_default()),
                }
            };
            let place = match &ns {
                Some(ns) => ns.describe(),
                None if own => "this host".to_string(),
                None if unknown => "an unknown namespace".to_string(),
                None => format!("namespace netns:[{}]", b.netns),
            };
            BackendReport {
                addr: b.addr,
                port: b.port,
                netns: b.netns,
                pid: ns.as_ref().and_then(|n| n.pid),
                comm: ns.as_ref().and_then(|n| n.comm.clone()),
                container: ns.as_ref().and_then(|n| n.container.clone()),
                dnat_rule: ruleset.and_then(|rs| rs.dnat_rule(b.addr, b.port)),
                edge_port: *edge_port,
                gone,
                outcomes: outcomes.clone(),
                listeners,
                place,
                elsewhere: !own,
            }
        })
        .collect()
}

/// Names the process that holds each listener (not just one in its namespace), and each
/// backend's process by the listener on its port when there is one. Reads /proc's
/// descriptors: done only when edge attempts were forwarded.
pub fn name_owners(listeners: &mut [Listener], backends: &mut [BackendReport]) {
    let inodes: Vec<u64> = listeners.iter().filter_map(|l| l.inode).collect();
    let owners = super::processes::socket_owners(&inodes);
    for l in listeners.iter_mut() {
        if let Some((pid, comm)) = l.inode.and_then(|i| owners.get(&i)) {
            l.pid = Some(*pid);
            l.comm = Some(comm.clone());
        }
    }
    for b in backends.iter_mut() {
        let on_port = listeners
            .iter()
            .find(|l| l.port == b.port && l.netns == Some(b.netns) && l.accepts(b.addr));
        if let Some(l) = on_port.filter(|l| l.pid.is_some()) {
            b.pid = l.pid;
            b.comm = l.comm.clone();
        }
    }
}

/// The tracer's own listeners, with a host socket on a port whose edge connections all went
/// to backends marked as a reservation (docker-proxy holds published ports), then every
/// backend namespace's listeners.
pub fn all_listeners(mut own: Vec<Listener>, backends: &[BackendReport]) -> Vec<Listener> {
    for l in &mut own {
        if backends
            .iter()
            .any(|b| b.edge_port == l.port && b.elsewhere)
        {
            l.role = Some("port_reservation");
        }
    }
    let mut seen_ns = Vec::new();
    for b in backends {
        if seen_ns.contains(&b.netns) {
            continue;
        }
        seen_ns.push(b.netns);
        if let Ok(ls) = &b.listeners {
            own.extend(ls.iter().filter(|l| l.netns.is_some()).cloned());
        }
    }
    own
}
