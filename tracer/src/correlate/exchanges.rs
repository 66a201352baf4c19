//! Edge exchanges over a window, from the kernel's steps (`model::exchange`): how long the
//! origin took to begin each response and whether the application had read the request by
//! then, how long connections sat idle before the origin closed them, and the requests that
//! met a connection the origin had already closed. Pure: unit tests drive it with recorded
//! steps.

use std::{
    collections::HashMap,
    net::IpAddr,
    time::{Duration, SystemTime},
};

use crate::model::exchange::{comm_text, ExchangeEvent, Step};

use super::timing::Durations;

/// Cloudflare's proxy read timeout (first response byte): 524 past it (the CLI's default).
#[cfg(test)]
pub const EDGE_READ_TIMEOUT: Duration = Duration::from_secs(100);
/// How long Cloudflare keeps an idle connection to the origin for reuse (the CLI's default).
#[cfg(test)]
pub const EDGE_IDLE_TIMEOUT: Duration = Duration::from_secs(900);

/// A close this soon after the last payload ends the response itself (`Connection: close`,
/// `keepalive_timeout 0`): the edge does not reuse such a connection, so it is no idle close.
const CLOSE_WITH_RESPONSE: Duration = Duration::from_millis(50);

/// Requests and closed connections followed at once: the kernel follows 65,536 connections.
const FOLLOWED: usize = 65_536;

/// Slow exchanges named in a report, the slowest first.
const SLOWEST_SHOWN: usize = 5;

/// The task that read a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reader {
    pub pid: u32,
    pub comm: String,
    /// Its container, named when the window's report is assembled (`/proc/PID/cgroup`).
    pub container: Option<String>,
}

/// A request past the read timeout: answered late, or still waiting when the window closed.
#[derive(Clone, Debug, PartialEq)]
pub struct Slow {
    pub peer: IpAddr,
    pub local_port: u16,
    pub time: Duration,
    pub answered: bool,
    /// The application had read the request (by the response, or by the window's end).
    pub read: bool,
    pub reader: Option<Reader>,
}

/// A window's exchanges.
#[derive(Clone, Debug, Default)]
pub struct ExchangeWindow {
    pub read_timeout: Duration,
    pub idle_timeout: Duration,
    /// Edge requests seen, those that met a closed connection included.
    pub requests: u64,
    /// Request to first response byte.
    pub responses: Durations,
    /// Idle time before the origin closed a connection (closes with the response excluded).
    pub idle_closes: Durations,
    /// Requests past the read timeout, and how many of them the application had not read.
    pub slow: u64,
    pub slow_unread: u64,
    pub slowest: Vec<Slow>,
    /// Requests that arrived on a connection the origin had already closed.
    pub after_close: u64,
    /// How long after the close they came, the longest.
    pub after_close_gap_max: Duration,
    /// Connections the origin closed, or reset, while a request was waiting for its answer.
    pub closed_pending: u64,
    pub reset_pending: u64,
}

/// What one step changed, for the agent's histograms.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Observed {
    Response { port: u16, time: Duration },
    IdleClose { port: u16, idle: Duration },
    AfterClose { port: u16 },
}

#[derive(Clone, Debug)]
struct Pending {
    at: SystemTime,
    reader: Option<Reader>,
    read: bool,
    /// Counted slow at an earlier window's end: not again when it is answered.
    counted: bool,
}

/// Follows the exchanges as the steps come, and sums them up by window.
#[derive(Debug)]
pub struct Exchanges {
    pending: HashMap<(IpAddr, u16), Pending>,
    /// Connections the origin closed idle: when.
    closed: HashMap<(IpAddr, u16), SystemTime>,
    window: ExchangeWindow,
}

impl Exchanges {
    pub fn new(read_timeout: Duration, idle_timeout: Duration) -> Self {
        Self {
            pending: HashMap::new(),
            closed: HashMap::new(),
            window: ExchangeWindow {
                read_timeout,
                idle_timeout,
                ..ExchangeWindow::default()
            },
        }
    }

    pub fn observe(&mut self, ev: &ExchangeEvent) -> Option<Observed> {
        let key = (ev.peer, ev.peer_port);
        let w = &mut self.window;
        match ev.step {
            Step::RequestBegan => {
                w.requests += 1;
                self.closed.remove(&key);
                if self.pending.len() < FOLLOWED || self.pending.contains_key(&key) {
                    let p = Pending {
                        at: ev.ts,
                        reader: None,
                        read: false,
                        counted: false,
                    };
                    self.pending.insert(key, p);
                }
                None
            }
            Step::RequestRead { pid, comm } => {
                let p = self.pending.get_mut(&key)?;
                p.read = true;
                p.reader = Some(Reader {
                    pid,
                    comm: comm_text(&comm),
                    container: None,
                });
                None
            }
            Step::ResponseBegan { read } => {
                let p = self.pending.remove(&key)?;
                let time = ev.ts.duration_since(p.at).unwrap_or_default();
                w.responses.add(time);
                if time > w.read_timeout && !p.counted {
                    let read = read || p.read;
                    w.add_slow(Slow {
                        peer: ev.peer,
                        local_port: ev.local_port,
                        time,
                        answered: true,
                        read,
                        reader: p.reader,
                    });
                }
                Some(Observed::Response {
                    port: ev.local_port,
                    time,
                })
            }
            Step::OriginClosed { idle, pending } => {
                if pending {
                    self.pending.remove(&key);
                    w.closed_pending += 1;
                    return None;
                }
                let idle = idle?;
                if idle < CLOSE_WITH_RESPONSE {
                    return None;
                }
                w.idle_closes.add(idle);
                if self.closed.len() < FOLLOWED {
                    self.closed.insert(key, ev.ts);
                }
                Some(Observed::IdleClose {
                    port: ev.local_port,
                    idle,
                })
            }
            Step::Reset { by_origin } => {
                if self.pending.remove(&key).is_some() && by_origin {
                    w.reset_pending += 1;
                }
                None
            }
            Step::RequestAfterClose => {
                // A request all the same: the edge did arrive.
                w.requests += 1;
                w.after_close += 1;
                if let Some(at) = self.closed.remove(&key) {
                    let gap = ev.ts.duration_since(at).unwrap_or_default();
                    w.after_close_gap_max = w.after_close_gap_max.max(gap);
                }
                Some(Observed::AfterClose {
                    port: ev.local_port,
                })
            }
        }
    }

    /// Requests waiting for their first response byte.
    pub fn waiting(&self) -> usize {
        self.pending.len()
    }

    /// The window ending at `now`: requests still waiting past the read timeout count as
    /// slow (once); the sums start again.
    pub fn take_window(&mut self, now: SystemTime) -> ExchangeWindow {
        let w = &mut self.window;
        for ((peer, _), p) in self.pending.iter_mut().filter(|(_, p)| !p.counted) {
            let waited = now.duration_since(p.at).unwrap_or_default();
            if waited > w.read_timeout {
                p.counted = true;
                w.add_slow(Slow {
                    peer: *peer,
                    local_port: 0,
                    time: waited,
                    answered: false,
                    read: p.read,
                    reader: p.reader.clone(),
                });
            }
        }
        // A request the kernel stopped following (its connection evicted from the kernel's
        // table, or gone without a reset seen) is forgotten once it has been counted slow and
        // waited as long again as the edge keeps a connection.
        let stale = w.read_timeout + w.idle_timeout;
        self.pending
            .retain(|_, p| !p.counted || now.duration_since(p.at).unwrap_or_default() <= stale);
        // A close older than the edge keeps an idle connection can no longer be raced.
        let horizon = w.idle_timeout + Duration::from_secs(60);
        self.closed
            .retain(|_, at| now.duration_since(*at).unwrap_or_default() <= horizon);
        let fresh = ExchangeWindow {
            read_timeout: w.read_timeout,
            idle_timeout: w.idle_timeout,
            ..ExchangeWindow::default()
        };
        std::mem::replace(w, fresh)
    }
}

impl ExchangeWindow {
    /// Names the containers of the tasks that read the slow requests.
    pub fn name_containers(&mut self) {
        for r in self.slowest.iter_mut().filter_map(|s| s.reader.as_mut()) {
            use std::io::Read;
            let mut text = String::new();
            let read = std::fs::File::open(format!("/proc/{}/cgroup", r.pid))
                .and_then(|f| f.take(64 * 1024).read_to_string(&mut text));
            r.container = read
                .ok()
                .and_then(|_| crate::origin::namespaces::container_id(&text));
        }
    }

    fn add_slow(&mut self, s: Slow) {
        self.slow += 1;
        self.slow_unread += u64::from(!s.read);
        self.slowest.push(s);
        self.slowest.sort_by_key(|s| std::cmp::Reverse(s.time));
        self.slowest.truncate(SLOWEST_SHOWN);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EDGE: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(173, 245, 48, 10));

    fn at(t0: SystemTime, ms: u64, port: u16, step: Step) -> ExchangeEvent {
        ExchangeEvent {
            ts: t0 + Duration::from_millis(ms),
            peer: EDGE,
            peer_port: port,
            local_port: 8080,
            step,
        }
    }

    fn comm(s: &str) -> [u8; 16] {
        let mut c = [0u8; 16];
        c[..s.len()].copy_from_slice(s.as_bytes());
        c
    }

    /// A recorded slow application (answers after 4 s, read at once), a fast request, and a
    /// request nothing read, still waiting when the window closes.
    #[test]
    fn slow_responses_are_timed_and_named() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let mut x = Exchanges::new(Duration::from_secs(3), EDGE_IDLE_TIMEOUT);
        for ev in [
            at(t0, 0, 1, Step::RequestBegan),
            at(
                t0,
                1,
                1,
                Step::RequestRead {
                    pid: 77,
                    comm: comm("python3"),
                },
            ),
            at(t0, 10, 2, Step::RequestBegan),
            at(t0, 12, 2, Step::ResponseBegan { read: false }),
            at(t0, 4003, 1, Step::ResponseBegan { read: true }),
            at(t0, 5000, 3, Step::RequestBegan),
        ] {
            x.observe(&ev);
        }
        let w = x.take_window(t0 + Duration::from_millis(9000));
        assert_eq!(w.requests, 3);
        assert_eq!(w.responses.summary().count, 2);
        assert_eq!(w.responses.summary().max_ms, 4003.0);
        assert_eq!((w.slow, w.slow_unread), (2, 1));
        // The slowest first: answered after 4.003 s, then the one still waiting after 4 s.
        assert_eq!(w.slowest[1].time, Duration::from_millis(4000));
        assert!(!w.slowest[1].answered && !w.slowest[1].read);
        assert_eq!(
            w.slowest[0].reader,
            Some(Reader {
                pid: 77,
                comm: "python3".into(),
                container: None,
            })
        );
        // The waiting request is not counted again, nor when it is answered at last.
        let w = x.take_window(t0 + Duration::from_millis(12_000));
        assert_eq!(w.slow, 0);
        x.observe(&at(t0, 13_000, 3, Step::ResponseBegan { read: true }));
        let w = x.take_window(t0 + Duration::from_millis(14_000));
        assert_eq!((w.slow, w.responses.summary().count), (0, 1));
    }

    /// A recorded keep-alive race: the origin closes after 1 s idle, the edge sends its next
    /// request at 1.4 s. A close right after a response (Connection: close) is no idle close.
    #[test]
    fn a_request_after_an_idle_close_is_a_race() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let mut x = Exchanges::new(EDGE_READ_TIMEOUT, EDGE_IDLE_TIMEOUT);
        let closed = Step::OriginClosed {
            idle: Some(Duration::from_millis(1000)),
            pending: false,
        };
        let observed: Vec<_> = [
            at(t0, 0, 1, Step::RequestBegan),
            at(t0, 2, 1, Step::ResponseBegan { read: true }),
            at(t0, 1002, 1, closed),
            at(t0, 1402, 1, Step::RequestAfterClose),
            at(t0, 2000, 2, Step::RequestBegan),
            at(t0, 2001, 2, Step::ResponseBegan { read: true }),
            at(
                t0,
                2002,
                2,
                Step::OriginClosed {
                    idle: Some(Duration::from_millis(1)),
                    pending: false,
                },
            ),
        ]
        .iter()
        .filter_map(|e| x.observe(e))
        .collect();
        assert_eq!(
            observed[1],
            Observed::IdleClose {
                port: 8080,
                idle: Duration::from_secs(1)
            }
        );
        assert_eq!(observed[2], Observed::AfterClose { port: 8080 });
        let w = x.take_window(t0 + Duration::from_secs(3));
        assert_eq!(w.after_close, 1);
        assert_eq!(w.after_close_gap_max, Duration::from_millis(400));
        assert_eq!(w.idle_closes.summary().count, 1);
        assert_eq!(w.slow, 0);
    }
}
