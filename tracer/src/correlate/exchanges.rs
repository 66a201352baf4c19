//! Edge exchanges over a window, from the kernel's steps (`model::exchange`): how long the
//! origin took to begin each response and whether the application had read a slow request
//! (the looks at its socket while it waited), how long connections sat idle before the origin closed them, and the requests that
//! met a connection the origin had already closed. Pure: unit tests drive it with recorded
//! steps.

use std::{
    collections::HashMap,
    net::IpAddr,
    time::{Duration, SystemTime},
};

use crate::model::exchange::{comm_text, ExchangeEvent, Step, Task, WaitingRequest};

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

/// Requests and closed connections remembered at once: the kernel follows 65,536 connections.
const FOLLOWED: usize = 65_536;

/// Slow exchanges named in a report, the slowest first.
const SLOWEST_SHOWN: usize = 5;

/// A process holding a socket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Holder {
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
    /// What the last look at its socket found: read (`Some(true)`: nothing left in its
    /// receive queue), still unread, or no look (`None`).
    pub read: Option<bool>,
    /// The process holding the request's socket when it was looked at.
    pub holder: Option<Holder>,
    /// For an unread request no process holds yet (still waiting to be accepted): the
    /// process holding the listening socket it came through.
    pub listener_holder: Option<Holder>,
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
    /// 1 in how many edge connections the kernel followed at the sparsest during the window
    /// (`--timing-sample-above`; 0 or 1: every one). The counts above are theirs.
    pub followed_one_in: u32,
}

/// What one step changed, for the agent's histograms.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Observed {
    Response { port: u16, time: Duration },
    IdleClose { port: u16, idle: Duration },
    AfterClose { port: u16 },
}

/// A request found waiting at an earlier window's end: when it began, and whether it was
/// counted slow then (a request is counted once, slow once).
#[derive(Clone, Copy, Debug)]
struct Carried {
    since: SystemTime,
    slow: bool,
}

/// The last look at a waiting request's socket.
#[derive(Clone, Copy, Debug)]
struct Look {
    since: SystemTime,
    read: bool,
    holder: Option<Task>,
}

/// Follows the exchanges as the steps come, and sums them up by window.
#[derive(Debug)]
pub struct Exchanges {
    carried: HashMap<(IpAddr, u16), Carried>,
    /// Waiting requests' sockets, as last looked at.
    looks: HashMap<(IpAddr, u16), Look>,
    /// Connections the origin closed idle: when.
    closed: HashMap<(IpAddr, u16), SystemTime>,
    window: ExchangeWindow,
}

fn holder(task: Option<Task>) -> Option<Holder> {
    task.map(|(pid, comm)| Holder {
        pid,
        comm: comm_text(&comm),
        container: None,
    })
}

impl Exchanges {
    pub fn new(read_timeout: Duration, idle_timeout: Duration) -> Self {
        Self {
            carried: HashMap::new(),
            looks: HashMap::new(),
            closed: HashMap::new(),
            window: ExchangeWindow {
                read_timeout,
                idle_timeout,
                ..ExchangeWindow::default()
            },
        }
    }

    /// A request that ended (answered, closed, reset) counts in this window unless an earlier
    /// window's end already found it waiting; returns that earlier finding.
    fn ended(&mut self, key: (IpAddr, u16), since: Option<SystemTime>) -> Option<Carried> {
        let carried = self
            .carried
            .remove(&key)
            .filter(|c| since.is_none_or(|s| s == c.since));
        if carried.is_none() {
            self.window.requests += 1;
        }
        carried
    }

    /// The last look at the socket of the request `key` waiting since `since`, if any.
    fn look(&self, key: (IpAddr, u16), since: SystemTime) -> Option<Look> {
        self.looks.get(&key).filter(|l| l.since == since).copied()
    }

    pub fn observe(&mut self, ev: &ExchangeEvent) -> Option<Observed> {
        let key = (ev.peer, ev.peer_port);
        match ev.step {
            Step::Looked {
                request_at,
                read,
                holder,
            } => {
                // Read stays read: a later look may find the next bytes of the same request.
                let before = self.look(key, request_at);
                if before.is_some() || self.looks.len() < FOLLOWED {
                    self.looks.insert(
                        key,
                        Look {
                            since: request_at,
                            read: read || before.is_some_and(|l| l.read),
                            holder: holder.or(before.and_then(|l| l.holder)),
                        },
                    );
                }
                None
            }
            Step::ResponseBegan { request_at } => {
                let look = self.look(key, request_at);
                self.looks.remove(&key);
                let carried = self.ended(key, Some(request_at));
                let w = &mut self.window;
                let time = ev.ts.duration_since(request_at).unwrap_or_default();
                w.responses.add(time);
                if time > w.read_timeout && !carried.is_some_and(|c| c.slow) {
                    w.add_slow(Slow {
                        peer: ev.peer,
                        local_port: ev.local_port,
                        time,
                        answered: true,
                        read: look.map(|l| l.read),
                        holder: holder(look.and_then(|l| l.holder)),
                        listener_holder: None,
                    });
                }
                Some(Observed::Response {
                    port: ev.local_port,
                    time,
                })
            }
            Step::OriginClosed { idle, pending } => {
                if pending {
                    self.looks.remove(&key);
                    self.ended(key, None);
                    self.window.closed_pending += 1;
                    return None;
                }
                let idle = idle?;
                if idle < CLOSE_WITH_RESPONSE {
                    return None;
                }
                self.window.idle_closes.add(idle);
                if self.closed.len() < FOLLOWED {
                    self.closed.insert(key, ev.ts);
                }
                Some(Observed::IdleClose {
                    port: ev.local_port,
                    idle,
                })
            }
            Step::Reset { by_origin } => {
                self.looks.remove(&key);
                self.ended(key, None);
                if by_origin {
                    self.window.reset_pending += 1;
                }
                None
            }
            Step::RequestAfterClose => {
                // A request all the same: the edge did arrive.
                let w = &mut self.window;
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

    /// The window ending at `now`, with the requests still `waiting` then (read from the
    /// kernel's table): each counts as a request once, and as slow once it has waited past
    /// the read timeout; the sums start again.
    pub fn take_window(&mut self, now: SystemTime, waiting: &[WaitingRequest]) -> ExchangeWindow {
        let w = &mut self.window;
        let mut carried = HashMap::new();
        for r in waiting.iter().take(FOLLOWED) {
            let key = (r.peer, r.peer_port);
            let before = self.carried.get(&key).filter(|c| c.since == r.since);
            if before.is_none() {
                w.requests += 1;
            }
            let mut slow = before.is_some_and(|c| c.slow);
            let waited = now.duration_since(r.since).unwrap_or_default();
            if !slow && waited > w.read_timeout {
                slow = true;
                let look = self.looks.get(&key).filter(|l| l.since == r.since).copied();
                w.add_slow(Slow {
                    peer: r.peer,
                    local_port: r.local_port,
                    time: waited,
                    answered: false,
                    read: look.map(|l| l.read),
                    holder: holder(look.and_then(|l| l.holder)),
                    listener_holder: None,
                });
            }
            carried.insert(
                key,
                Carried {
                    since: r.since,
                    slow,
                },
            );
        }
        // Requests no longer waiting and not seen ending (their connection left the kernel's
        // table) are forgotten with the rest.
        self.looks
            .retain(|k, l| carried.get(k).is_some_and(|c| c.since == l.since));
        self.carried = carried;
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
    /// Names who holds the slow requests: the processes holding their sockets, and for an
    /// unread one no process holds yet the process whose listener (`owner_of(port)`) it
    /// came through; their containers.
    pub fn name_holders(&mut self, owner_of: impl Fn(u16) -> Option<(u32, String)>) {
        for s in self
            .slowest
            .iter_mut()
            .filter(|s| s.holder.is_none() && s.read != Some(true))
        {
            s.listener_holder = owner_of(s.local_port).map(|(pid, comm)| Holder {
                pid,
                comm,
                container: None,
            });
        }
        let tasks = self
            .slowest
            .iter_mut()
            .flat_map(|s| [s.holder.as_mut(), s.listener_holder.as_mut()])
            .flatten();
        for r in tasks {
            use std::io::Read;
            let mut text = String::new();
            let read = std::fs::File::open(format!("/proc/{}/cgroup", r.pid))
                .and_then(|f| f.take(64 * 1024).read_to_string(&mut text));
            r.container = read
                .ok()
                .and_then(|_| crate::origin::processes::container_id(&text));
        }
    }

    fn add_slow(&mut self, s: Slow) {
        self.slow += 1;
        self.slow_unread += u64::from(s.read == Some(false));
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

    fn answered(t0: SystemTime, began_ms: u64) -> Step {
        Step::ResponseBegan {
            request_at: t0 + Duration::from_millis(began_ms),
        }
    }

    fn looked(t0: SystemTime, began_ms: u64, read: bool, holder: Option<Task>) -> Step {
        Step::Looked {
            request_at: t0 + Duration::from_millis(began_ms),
            read,
            holder,
        }
    }

    fn waiting(t0: SystemTime, began_ms: u64, port: u16) -> WaitingRequest {
        WaitingRequest {
            peer: EDGE,
            peer_port: port,
            local_port: 8080,
            since: t0 + Duration::from_millis(began_ms),
            last_tick: 0,
        }
    }

    /// Recorded: a slow application (answers after 4 s; python3 held its socket, read when
    /// looked at), a fast request, and a request nothing read, still waiting when the window
    /// closes (looked at twice: unread).
    #[test]
    fn slow_responses_are_timed_and_named() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let mut x = Exchanges::new(Duration::from_secs(3), EDGE_IDLE_TIMEOUT);
        for ev in [
            at(t0, 12, 2, answered(t0, 10)),
            at(
                t0,
                1500,
                1,
                looked(t0, 0, true, Some((77, comm("python3")))),
            ),
            at(t0, 3500, 1, looked(t0, 0, false, None)),
            at(t0, 4003, 1, answered(t0, 0)),
            at(t0, 6500, 3, looked(t0, 5000, false, None)),
            at(
                t0,
                8500,
                3,
                looked(t0, 5000, false, Some((78, comm("php-fpm")))),
            ),
        ] {
            x.observe(&ev);
        }
        let w = x.take_window(t0 + Duration::from_millis(9000), &[waiting(t0, 5000, 3)]);
        assert_eq!(w.requests, 3);
        assert_eq!(w.responses.summary().count, 2);
        assert_eq!(w.responses.summary().max_ms, 4003.0);
        assert_eq!((w.slow, w.slow_unread), (2, 1));
        // The slowest first: answered after 4.003 s, then the one still waiting after 4 s.
        assert_eq!(w.slowest[1].time, Duration::from_millis(4000));
        assert!(!w.slowest[1].answered && w.slowest[1].read == Some(false));
        assert_eq!(w.slowest[1].local_port, 8080);
        assert_eq!(w.slowest[1].holder.as_ref().map(|h| h.pid), Some(78));
        // Read once is read: the later look found the queue filled again.
        assert_eq!(w.slowest[0].read, Some(true));
        assert_eq!(
            w.slowest[0].holder,
            Some(Holder {
                pid: 77,
                comm: "python3".into(),
                container: None,
            })
        );
        // The waiting request is neither a new request nor slow again, nor when it is
        // answered at last.
        let w = x.take_window(t0 + Duration::from_millis(12_000), &[waiting(t0, 5000, 3)]);
        assert_eq!((w.requests, w.slow), (0, 0));
        x.observe(&at(t0, 13_000, 3, answered(t0, 5000)));
        let w = x.take_window(t0 + Duration::from_millis(14_000), &[]);
        assert_eq!((w.requests, w.slow, w.responses.summary().count), (0, 0, 1));
        // A new request on the same connection is one.
        x.observe(&at(t0, 15_000, 3, answered(t0, 14_500)));
        assert_eq!(
            x.take_window(t0 + Duration::from_millis(16_000), &[])
                .requests,
            1
        );
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
            at(t0, 2, 1, answered(t0, 0)),
            at(t0, 1002, 1, closed),
            at(t0, 1402, 1, Step::RequestAfterClose),
            at(t0, 2001, 2, answered(t0, 2000)),
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
        let w = x.take_window(t0 + Duration::from_secs(3), &[]);
        assert_eq!((w.requests, w.after_close), (3, 1));
        assert_eq!(w.after_close_gap_max, Duration::from_millis(400));
        assert_eq!(w.idle_closes.summary().count, 1);
        assert_eq!(w.slow, 0);
    }
}
