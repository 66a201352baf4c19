//! Listener changes from the kernel (`inet_sock_set_state` to and from LISTEN): the moment and
//! the process of each, merged with the watcher's sampling.
//!
//! In the tracer's own namespace the sampled listener set says *whether* an address and port
//! stopped (or started) being served — several sockets may share one with `SO_REUSEPORT`, and
//! one worker exiting is no outage — and the kernel's event for it says *when* and *who*.
//! Elsewhere (a container with the watched port) nothing is sampled: each burst of the
//! kernel's events for one endpoint becomes one change, a closing one only when nothing listens
//! there any more.

use std::{collections::BTreeMap, net::IpAddr, time::SystemTime};

use super::{Change, What};
use crate::model::event::ListenerEvent;

/// Events kept waiting for the sampler, at most: a port opened and closed in a loop must not
/// grow memory.
const KEEP: usize = 1024;

/// How long an event of the tracer's own namespace waits for the sampler to find its change
/// (the sampler looks every 250 ms for a while after each transition and says what it found
/// one step later).
pub const OWN_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// The kernel's listener events not yet turned into changes.
pub struct KernelListeners {
    own_netns: u32,
    pending: Vec<ListenerEvent>,
}

/// "nginx (pid 812)".
fn process(ev: &ListenerEvent) -> String {
    format!("{} (pid {})", ev.comm(), ev.pid)
}

/// The event happened in namespace `netns`. 0: the kernel could not read the namespace (no
/// BTF); the filter is off then and every event is taken for the tracer's own.
fn in_namespace(netns: u32, ev: &ListenerEvent) -> bool {
    ev.netns == netns || ev.netns == 0
}

fn what(up: bool) -> What {
    if up {
        What::ListenerUp
    } else {
        What::ListenerDown
    }
}

pub fn verb(up: bool) -> &'static str {
    if up {
        "started"
    } else {
        "stopped"
    }
}

impl KernelListeners {
    pub fn new(own_netns: u32) -> Self {
        Self {
            own_netns,
            pending: Vec::new(),
        }
    }

    pub fn push(&mut self, ev: ListenerEvent) {
        if self.pending.len() >= KEEP {
            self.pending.remove(0);
        }
        self.pending.push(ev);
    }

    fn own(&self, ev: &ListenerEvent) -> bool {
        in_namespace(self.own_netns, ev)
    }

    /// The change for a listener the sampler found gone (`up` false) or new, in the tracer's
    /// namespace: dated and named by the kernel's event for it when there is one (the last
    /// closing one, the first opening one), else at `sampled` by `owner`. Its events are used.
    pub fn own_change(
        &mut self,
        up: bool,
        addr: IpAddr,
        port: u16,
        owner: &str,
        sampled: SystemTime,
        endpoint: &str,
    ) -> Change {
        let own_netns = self.own_netns;
        let matching = |e: &ListenerEvent| {
            in_namespace(own_netns, e) && e.up == up && e.addr == addr && e.port == port
        };
        let found = if up {
            self.pending.iter().find(|e| matching(e)).copied()
        } else {
            self.pending.iter().rev().find(|e| matching(e)).copied()
        };
        self.pending.retain(|e| !matching(e));
        let (ts, who) = match found {
            Some(e) => (e.ts, process(&e)),
            None => (sampled, owner.to_string()),
        };
        Change {
            ts,
            what: what(up),
            detail: format!("{who} {} listening on {endpoint}", verb(up)),
        }
    }

    /// The tracer's own events the sampler has not asked for within [`OWN_WAIT`] of `now`:
    /// a socket among several on one endpoint, or a listener closed and opened again between
    /// two samples ([`flaps`] tells which).
    pub fn expired_own(&mut self, now: SystemTime) -> Vec<ListenerEvent> {
        let own_netns = self.own_netns;
        let (expired, kept) = std::mem::take(&mut self.pending)
            .into_iter()
            .partition(|e| {
                in_namespace(own_netns, e)
                    && now.duration_since(e.ts).unwrap_or_default() >= OWN_WAIT
            });
        self.pending = kept;
        expired
    }

    /// Changes in other namespaces, one per endpoint and direction since the last call.
    /// `place` names a namespace ("container 3f2a9c4b1d2e"); `still_listening` says whether
    /// anything listens on the endpoint in it now; `endpoint` formats one.
    pub fn other_changes(
        &mut self,
        place: impl Fn(u32) -> String,
        still_listening: impl Fn(u32, IpAddr, u16) -> bool,
        endpoint: impl Fn(IpAddr, u16) -> String,
    ) -> Vec<Change> {
        let mut first: BTreeMap<(u32, IpAddr, u16, bool), ListenerEvent> = BTreeMap::new();
        let mut kept = Vec::new();
        for e in std::mem::take(&mut self.pending) {
            if self.own(&e) {
                kept.push(e);
                continue;
            }
            first.entry((e.netns, e.addr, e.port, e.up)).or_insert(e);
        }
        self.pending = kept;
        let mut changes: Vec<Change> = first
            .into_values()
            .filter(|e| e.up || !still_listening(e.netns, e.addr, e.port))
            .map(|e| Change {
                ts: e.ts,
                what: what(e.up),
                detail: format!(
                    "{} in {} {} listening on {}",
                    process(&e),
                    place(e.netns),
                    verb(e.up),
                    endpoint(e.addr, e.port)
                ),
            })
            .collect();
        changes.sort_by_key(|c| c.ts);
        changes
    }

    /// Whether the kernel reported anything for the tracer's own namespace still waiting.
    #[cfg(test)]
    fn has_own(&self) -> bool {
        self.pending.iter().any(|e| self.own(e))
    }
}

/// Sockets listening per endpoint, as one sample found them.
pub type SocketCounts = BTreeMap<(IpAddr, u16), usize>;

/// The listening sockets per endpoint at the last samples, to replay the kernel's events on.
#[derive(Default)]
pub struct SampleHistory {
    samples: std::collections::VecDeque<(SystemTime, SocketCounts)>,
}

/// Samples kept: twice [`OWN_WAIT`] at one every 250 ms.
const SAMPLES_KEPT: usize = 16;

impl SampleHistory {
    pub fn record(&mut self, at: SystemTime, counts: SocketCounts) {
        if self.samples.len() >= SAMPLES_KEPT {
            self.samples.pop_front();
        }
        self.samples.push_back((at, counts));
    }

    /// (when, sockets listening on the endpoint) at the last sample no later than `t`.
    fn before(&self, addr: IpAddr, port: u16, t: SystemTime) -> Option<(SystemTime, usize)> {
        self.samples
            .iter()
            .rev()
            .find(|(at, _)| *at <= t)
            .map(|(at, c)| (*at, c.get(&(addr, port)).copied().unwrap_or(0)))
    }
}

/// Listeners closed and opened again between two samples, found by replaying the kernel's
/// unclaimed events on the socket count of the sample before them: the endpoint had no
/// listener from the close of its last socket to the next opening (a restart). A worker among
/// several closing and coming back is no change.
pub fn flaps(
    mut expired: Vec<ListenerEvent>,
    history: &SampleHistory,
    endpoint: impl Fn(IpAddr, u16) -> String,
) -> Vec<Change> {
    expired.sort_by_key(|e| e.ts);
    let mut keys: Vec<(IpAddr, u16)> = expired.iter().map(|e| (e.addr, e.port)).collect();
    keys.sort();
    keys.dedup();
    let mut changes = Vec::new();
    for (addr, port) in keys {
        let events: Vec<&ListenerEvent> = expired
            .iter()
            .filter(|e| e.addr == addr && e.port == port)
            .collect();
        let Some((sampled_at, mut count)) = history.before(addr, port, events[0].ts) else {
            continue;
        };
        let mut closed: Option<&ListenerEvent> = None;
        for e in events.iter().filter(|e| e.ts >= sampled_at) {
            if e.up {
                count += 1;
                if let Some(down) = closed.take() {
                    let gap = e.ts.duration_since(down.ts).unwrap_or_default();
                    changes.push(Change {
                        ts: down.ts,
                        what: What::ListenerDown,
                        detail: format!(
                            "{} stopped listening on {}; {} listened again {:.1} ms later",
                            process(down),
                            endpoint(addr, port),
                            process(e),
                            gap.as_secs_f64() * 1000.0
                        ),
                    });
                }
            } else {
                count = count.saturating_sub(1);
                if count == 0 {
                    closed = Some(e);
                }
            }
        }
    }
    changes.sort_by_key(|c| c.ts);
    changes
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const OWN: u32 = 4026531840;
    const CONTAINER: u32 = 4026532999;

    fn at(mut e: ListenerEvent, ms: u64) -> ListenerEvent {
        e.ts = SystemTime::UNIX_EPOCH + Duration::from_millis(ms);
        e
    }

    fn any() -> IpAddr {
        "0.0.0.0".parse().unwrap()
    }

    #[test]
    fn a_sampled_change_takes_the_kernels_time_and_process() {
        let mut k = KernelListeners::new(OWN);
        // Two reuseport workers close; the last one is when the port stopped being served.
        k.push(at(
            ListenerEvent::sample(false, any(), 443, OWN, 812, "nginx"),
            1000,
        ));
        k.push(at(
            ListenerEvent::sample(false, any(), 443, OWN, 813, "nginx"),
            1200,
        ));
        let sampled = SystemTime::UNIX_EPOCH + Duration::from_millis(1400);
        let c = k.own_change(false, any(), 443, "a process", sampled, "0.0.0.0:443");
        assert_eq!(c.what, What::ListenerDown);
        assert_eq!(c.ts, SystemTime::UNIX_EPOCH + Duration::from_millis(1200));
        assert_eq!(c.detail, "nginx (pid 813) stopped listening on 0.0.0.0:443");
        assert!(!k.has_own(), "its events are used");
    }

    #[test]
    fn an_opening_is_dated_by_the_first_socket() {
        let mut k = KernelListeners::new(OWN);
        k.push(at(
            ListenerEvent::sample(true, any(), 443, OWN, 900, "caddy"),
            500,
        ));
        k.push(at(
            ListenerEvent::sample(true, any(), 443, OWN, 901, "caddy"),
            600,
        ));
        let c = k.own_change(true, any(), 443, "x", SystemTime::now(), "0.0.0.0:443");
        assert_eq!(c.ts, SystemTime::UNIX_EPOCH + Duration::from_millis(500));
        assert_eq!(c.detail, "caddy (pid 900) started listening on 0.0.0.0:443");
    }

    #[test]
    fn without_a_kernel_event_the_sample_stands() {
        let mut k = KernelListeners::new(OWN);
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(7);
        let c = k.own_change(false, any(), 80, "nginx (pid 1)", t, "0.0.0.0:80");
        assert_eq!(
            (c.ts, c.detail.as_str()),
            (t, "nginx (pid 1) stopped listening on 0.0.0.0:80")
        );
    }

    #[test]
    fn other_namespaces_give_one_change_per_burst_and_only_real_closes() {
        let mut k = KernelListeners::new(OWN);
        let c_addr: IpAddr = "172.17.0.2".parse().unwrap();
        k.push(at(
            ListenerEvent::sample(true, c_addr, 443, CONTAINER, 55, "nginx"),
            10,
        ));
        k.push(at(
            ListenerEvent::sample(true, c_addr, 443, CONTAINER, 56, "nginx"),
            20,
        ));
        // One worker of several closing is no change; the port still answers.
        k.push(at(
            ListenerEvent::sample(false, any(), 8443, CONTAINER, 57, "app"),
            30,
        ));
        // The tracer's own, not asked for by the sampler: dropped.
        k.push(at(
            ListenerEvent::sample(false, any(), 443, OWN, 58, "nginx"),
            40,
        ));
        let changes = k.other_changes(
            |_| "container 3f2a9c4b1d2e".into(),
            |_, _, port| port == 8443,
            |a, p| format!("{a}:{p}"),
        );
        assert_eq!(changes.len(), 1, "{changes:?}");
        assert_eq!(
            changes[0].detail,
            "nginx (pid 55) in container 3f2a9c4b1d2e started listening on 172.17.0.2:443"
        );
        assert_eq!(
            changes[0].ts,
            SystemTime::UNIX_EPOCH + Duration::from_millis(10)
        );
        assert!(k.has_own(), "the sampler may still ask for it");
        let early = SystemTime::UNIX_EPOCH + Duration::from_millis(1000);
        assert!(k.expired_own(early).is_empty());
        let later = SystemTime::UNIX_EPOCH + Duration::from_millis(40) + OWN_WAIT;
        assert_eq!(k.expired_own(later).len(), 1);
        assert!(!k.has_own(), "handed over once the sampler had its time");
        let gone = {
            k.push(at(
                ListenerEvent::sample(false, c_addr, 443, CONTAINER, 55, "nginx"),
                90,
            ));
            k.other_changes(
                |_| "container x".into(),
                |_, _, _| false,
                |a, p| format!("{a}:{p}"),
            )
        };
        assert_eq!(gone.len(), 1);
        assert_eq!(gone[0].what, What::ListenerDown);
    }

    fn history(at_ms: u64, sockets: usize) -> SampleHistory {
        let mut h = SampleHistory::default();
        let mut counts = BTreeMap::new();
        counts.insert((any(), 443), sockets);
        h.record(
            SystemTime::UNIX_EPOCH + Duration::from_millis(at_ms),
            counts,
        );
        h
    }

    #[test]
    fn a_restart_between_two_samples_is_a_change() {
        let events = vec![
            at(
                ListenerEvent::sample(true, any(), 443, OWN, 901, "nginx"),
                1180,
            ),
            at(
                ListenerEvent::sample(false, any(), 443, OWN, 812, "nginx"),
                1050,
            ),
        ];
        let c = flaps(events, &history(1000, 1), |a, p| format!("{a}:{p}"));
        assert_eq!(c.len(), 1, "{c:?}");
        assert_eq!(c[0].what, What::ListenerDown);
        assert_eq!(
            c[0].ts,
            SystemTime::UNIX_EPOCH + Duration::from_millis(1050)
        );
        assert_eq!(
            c[0].detail,
            "nginx (pid 812) stopped listening on 0.0.0.0:443; nginx (pid 901) listened again 130.0 ms later"
        );
    }

    #[test]
    fn a_worker_among_several_coming_back_is_no_change() {
        let events = vec![
            at(
                ListenerEvent::sample(false, any(), 443, OWN, 812, "nginx"),
                1050,
            ),
            at(
                ListenerEvent::sample(true, any(), 443, OWN, 901, "nginx"),
                1180,
            ),
        ];
        assert!(flaps(events.clone(), &history(1000, 4), |a, p| format!("{a}:{p}")).is_empty());
        // Nothing sampled before them: nothing to replay on, nothing said.
        assert!(flaps(events, &history(2000, 1), |a, p| format!("{a}:{p}")).is_empty());
    }

    #[test]
    fn waiting_events_are_bounded() {
        let mut k = KernelListeners::new(OWN);
        for i in 0..KEEP as u32 + 5 {
            k.push(ListenerEvent::sample(true, any(), 443, CONTAINER, i, "x"));
        }
        assert_eq!(k.pending.len(), KEEP);
        assert_eq!(k.pending[0].pid, 5);
    }
}
