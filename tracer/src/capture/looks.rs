//! When the capture looks at waiting requests' sockets, and the exchange steps the looks
//! become (`Step::Looked`): a request that has waited `after` is looked at, one still unread
//! again every `AGAIN` once its bytes have stopped arriving, one found read no more. While no
//! request waits that long nothing is asked of the kernel: a host whose application answers
//! in time pays for none of it, and an upload still streaming in is not looked at again and
//! again (its receive queue fills as its bytes come, which says nothing of the reader).

use std::{
    collections::{HashMap, HashSet},
    time::{Duration, Instant, SystemTime},
};

use crate::{
    model::exchange::{comm_bytes, ExchangeEvent, Step, WaitingRequest},
    origin::request_sockets::{Found, Peer},
};

/// An unread request is looked at again this often (was it read since?).
const AGAIN: Duration = Duration::from_secs(2);
/// How long a request waits before its first look, at most.
const FIRST_LOOK: Duration = Duration::from_secs(1);

/// Looks at waiting requests.
#[derive(Debug)]
pub struct Looks {
    after: Duration,
    every: Duration,
    last: Option<Instant>,
    /// Requests looked at, by connection.
    looked: HashMap<Peer, Seen>,
}

/// What the last look at a connection's request saw.
#[derive(Debug, Clone, Copy)]
struct Seen {
    /// When the request began (a new request on the connection is looked at anew).
    since: SystemTime,
    /// When it was looked at, or last seen still arriving.
    at: Instant,
    read: bool,
    /// The kernel's tick of its last payload then.
    tick: u64,
}

impl Looks {
    /// Looks that tell a request slower than `read_timeout` read or not: its first look
    /// comes by half the timeout (a second at most), so every slow request has one.
    pub fn new(read_timeout: Duration) -> Self {
        let after = FIRST_LOOK.min(read_timeout / 2);
        Self {
            after,
            every: (after / 2).clamp(Duration::from_millis(100), Duration::from_millis(500)),
            last: None,
            looked: HashMap::new(),
        }
    }

    /// Is a pass over the waiting requests due at `now`?
    pub fn due(&self, now: Instant) -> bool {
        self.last
            .is_none_or(|t| now.duration_since(t) >= self.every)
    }

    /// The waiting requests to look at now: waited `after`, not found read, and not looked at
    /// within `AGAIN`. Forgets requests no longer waiting.
    pub fn pick(
        &mut self,
        wall: SystemTime,
        now: Instant,
        waiting: &[WaitingRequest],
    ) -> Vec<WaitingRequest> {
        self.last = Some(now);
        let current: HashSet<(Peer, SystemTime)> = waiting
            .iter()
            .map(|r| ((r.peer, r.peer_port), r.since))
            .collect();
        self.looked
            .retain(|peer, seen| current.contains(&(*peer, seen.since)));
        let mut picked = Vec::new();
        for r in waiting {
            if wall.duration_since(r.since).unwrap_or_default() < self.after {
                continue;
            }
            match self.looked.get_mut(&(r.peer, r.peer_port)) {
                None => picked.push(*r),
                Some(seen) if seen.read => {}
                Some(seen) if seen.tick != r.last_tick => {
                    // More of it arrived since: the edge is still sending it. Looked at
                    // again `AGAIN` after its bytes stop.
                    seen.tick = r.last_tick;
                    seen.at = now;
                }
                Some(seen) => {
                    if now.duration_since(seen.at) >= AGAIN {
                        picked.push(*r);
                    }
                }
            }
        }
        picked
    }

    /// The steps of what the look at `picked` found (`found`, by peer); remembers it.
    pub fn steps(
        &mut self,
        wall: SystemTime,
        now: Instant,
        picked: &[WaitingRequest],
        found: &HashMap<Peer, Found>,
    ) -> Vec<ExchangeEvent> {
        let mut out = Vec::new();
        for r in picked {
            let peer = (r.peer, r.peer_port);
            let Some(f) = found.get(&peer) else {
                // Not in any table: it just ended, or is out of sight. Not looked at again
                // before AGAIN either way.
                self.looked.insert(peer, seen(r, now, false));
                continue;
            };
            self.looked.insert(peer, seen(r, now, f.read));
            out.push(ExchangeEvent {
                ts: wall,
                peer: r.peer,
                peer_port: r.peer_port,
                local_port: r.local_port,
                step: Step::Looked {
                    request_at: r.since,
                    read: f.read,
                    holder: f
                        .holder
                        .as_ref()
                        .map(|(pid, comm)| (*pid, comm_bytes(comm))),
                },
            });
        }
        out
    }
}

fn seen(r: &WaitingRequest, at: Instant, read: bool) -> Seen {
    Seen {
        since: r.since,
        at,
        read,
        tick: r.last_tick,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn waiting(t0: SystemTime, began_ms: u64, port: u16) -> WaitingRequest {
        WaitingRequest {
            peer: "173.245.48.10".parse().unwrap(),
            peer_port: port,
            local_port: 443,
            since: t0 + Duration::from_millis(began_ms),
            last_tick: 0,
        }
    }

    /// The wall clock's start of a recording, and the (wall, monotonic) pair `ms` into it.
    fn recorded_clock() -> (SystemTime, impl Fn(u64) -> (SystemTime, Instant)) {
        let (t0, i0) = (
            SystemTime::UNIX_EPOCH + Duration::from_secs(1_000),
            Instant::now(),
        );
        let at = move |ms: u64| {
            (
                t0 + Duration::from_millis(ms),
                i0 + Duration::from_millis(ms),
            )
        };
        (t0, at)
    }

    fn found(read: bool) -> Found {
        Found {
            read,
            holder: Some((77, "php-fpm".into())),
        }
    }

    /// Recorded: two requests waiting; one is read at the first look, the other stays unread
    /// and is looked at again only after `AGAIN`; a request under the bar is not looked at.
    #[test]
    fn slow_requests_are_looked_at_until_read() {
        let mut l = Looks::new(Duration::from_secs(100));
        assert_eq!(l.after, Duration::from_secs(1));
        let (t0, at) = recorded_clock();
        let w = [waiting(t0, 0, 1), waiting(t0, 0, 2), waiting(t0, 900, 3)];
        assert!(l.due(at(0).1));
        let (wall, now) = at(1000);
        let picked = l.pick(wall, now, &w);
        assert_eq!(
            picked.iter().map(|r| r.peer_port).collect::<Vec<_>>(),
            [1, 2]
        );
        let mut f = HashMap::new();
        f.insert((w[0].peer, 1), found(true));
        f.insert((w[0].peer, 2), found(false));
        let steps = l.steps(wall, now, &picked, &f);
        assert_eq!(steps.len(), 2);
        let Step::Looked {
            read,
            holder,
            request_at,
        } = steps[0].step
        else {
            panic!("{steps:?}");
        };
        assert!(read && request_at == t0);
        assert_eq!(holder.map(|h| h.0), Some(77));
        assert!(!l.due(now + Duration::from_millis(100)));
        // 1.5 s: only the third, now over the bar.
        let (wall, now) = at(1900);
        let picked = l.pick(wall, now, &w);
        assert_eq!(picked.iter().map(|r| r.peer_port).collect::<Vec<_>>(), [3]);
        // Found nowhere (ended meanwhile): not looked at again before AGAIN.
        assert!(l.steps(wall, now, &picked, &HashMap::new()).is_empty());
        // 3 s: the unread one again (the read one never).
        let (wall, now) = at(3000);
        let picked = l.pick(wall, now, &w);
        assert_eq!(picked.iter().map(|r| r.peer_port).collect::<Vec<_>>(), [2]);
        // A new request on the first connection is looked at anew.
        let w2 = [waiting(t0, 5000, 1)];
        let (wall, now) = at(6000);
        assert_eq!(l.pick(wall, now, &w2).len(), 1);
    }

    /// Recorded: an upload still streaming in (its last payload's tick moves between passes)
    /// is looked at once, found unread (its queue fills as its bytes come), and not again
    /// while its bytes keep arriving; `AGAIN` after they stop it is looked at again.
    #[test]
    fn a_request_still_arriving_is_not_looked_at_again() {
        let mut l = Looks::new(Duration::from_secs(100));
        let (t0, at) = recorded_clock();
        let upload = |tick: u64| WaitingRequest {
            last_tick: tick,
            ..waiting(t0, 0, 1)
        };
        let (wall, now) = at(1000);
        let picked = l.pick(wall, now, &[upload(250)]);
        assert_eq!(picked.len(), 1, "the first look");
        let mut f = HashMap::new();
        f.insert((picked[0].peer, 1), found(false));
        assert_eq!(l.steps(wall, now, &picked, &f).len(), 1);
        // Bytes keep arriving for ten seconds: no look.
        for (i, ms) in (1500..11_000).step_by(500).enumerate() {
            let (wall, now) = at(ms);
            let tick = 250 + 125 * (i as u64 + 1);
            assert!(l.pick(wall, now, &[upload(tick)]).is_empty(), "at {ms} ms");
        }
        let last = 250 + 125 * 19;
        // They stopped at 10.5 s: looked at again two seconds later, not before.
        let (wall, now) = at(12_000);
        assert!(l.pick(wall, now, &[upload(last)]).is_empty());
        let (wall, now) = at(12_500);
        assert_eq!(l.pick(wall, now, &[upload(last)]).len(), 1);
    }

    /// A short read timeout brings the first look earlier.
    #[test]
    fn the_first_look_comes_by_half_the_read_timeout() {
        let l = Looks::new(Duration::from_millis(600));
        assert_eq!(l.after, Duration::from_millis(300));
        assert_eq!(l.every, Duration::from_millis(150));
    }
}
