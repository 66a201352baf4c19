//! Timing in the verdict: handshakes that completed only after a retransmission are evidence
//! of the window's verdict (the 522 that is not a hard failure yet: each retransmission costs
//! the edge a second or more of its 19 s connect budget); responses later than the edge waits
//! (524, `slow_response`); idle connections the origin closes while the edge still reuses them
//! (520, `keepalive_race`).

use std::time::Duration;

use super::{Cause, Inputs, Verdict};
use crate::correlate::{
    exchanges::{ExchangeWindow, Holder, Slow},
    timing::{Summary, Timing},
};

fn secs(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s >= 10.0 {
        format!("{s:.0} s")
    } else {
        format!("{s:.1} s")
    }
}

fn ms_as_secs(ms: f64) -> String {
    secs(Duration::from_secs_f64(ms / 1000.0))
}

/// "python3 (pid 77, container 3f2a9c4b1d2e)"
fn task_text(r: &Holder) -> String {
    match &r.container {
        Some(c) => format!(
            "{} (pid {}, container {})",
            r.comm,
            r.pid,
            &c[..c.len().min(12)]
        ),
        None => format!("{} (pid {})", r.comm, r.pid),
    }
}

fn slow_line(s: &Slow) -> String {
    let port = if s.local_port == 0 {
        String::new()
    } else {
        format!(" to port {}", s.local_port)
    };
    let by = s
        .holder
        .as_ref()
        .map(task_text)
        .unwrap_or_else(|| "the application".into());
    // Who could have read it: the process holding the connection, else (not accepted yet)
    // the one holding the listener.
    let unread_by = match (&s.holder, &s.listener_holder) {
        (Some(h), _) => format!(" by {}, which holds the connection", task_text(h)),
        (None, Some(h)) => format!(
            " (not yet accepted) by {}, which holds the listener",
            task_text(h)
        ),
        (None, None) => String::new(),
    };
    let served_by = s
        .listener_holder
        .as_ref()
        .map(|h| format!(" (the port is served by {})", task_text(h)))
        .unwrap_or_default();
    let (peer, time) = (s.peer, secs(s.time));
    match (s.answered, s.read) {
        (true, Some(true)) => format!(
            "a request from {peer}{port} was read by {by} and answered only after {time}: the application is slow"
        ),
        (true, Some(false)) => format!(
            "a request from {peer}{port} waited unread{unread_by} and was answered only after {time}: every worker was busy"
        ),
        (true, None) => format!(
            "a request from {peer}{port} was answered only after {time}{served_by}"
        ),
        (false, Some(true)) => format!(
            "a request from {peer}{port} was read by {by} and still had no answer after {time}: the application is slow or stuck on it"
        ),
        (false, Some(false)) => format!(
            "a request from {peer}{port} was still unread after {time}{unread_by}: the application is not reading — a stuck worker or a full pool"
        ),
        (false, None) => format!(
            "a request from {peer}{port} still had no answer after {time}{served_by}"
        ),
    }
}

/// Requests that waited past the edge's read timeout for their first response byte.
pub(super) fn slow_response(i: &Inputs<'_>) -> Option<Cause> {
    let x: &ExchangeWindow = i.exchanges;
    if x.slow == 0 {
        return None;
    }
    let r = x.responses.summary();
    let mut evidence = vec![format!(
        "{} of {} edge requests waited longer than the edge's read timeout ({}) for the first response byte{}; Cloudflare stops waiting then",
        x.slow,
        x.requests.max(x.slow),
        secs(x.read_timeout),
        if r.count > 0 {
            format!(" (responses: p50 {}, p99 {}, max {})", ms_as_secs(r.p50_ms), ms_as_secs(r.p99_ms), ms_as_secs(r.max_ms))
        } else {
            String::new()
        }
    )];
    evidence.extend(x.slowest.iter().map(slow_line));
    evidence.extend(sampled_line(x));
    let mut next = Vec::new();
    if x.slow_unread > 0 {
        next.push(format!(
            "{} of them were never read: every worker is busy or stuck — raise the pool (PHP-FPM pm.max_children, gunicorn --workers/--threads, uWSGI processes, Puma threads) or find what the busy ones wait on.",
            x.slow_unread
        ));
    }
    if x.slow > x.slow_unread {
        next.push("Find what the handler named above waits on (slow queries, calls to other services, locks) and make it answer sooner.".into());
    }
    next.push(format!(
        "Cloudflare waits {} for the first byte (its proxy read timeout, 100 s by default; Enterprise plans can raise it to 6,000 s — tell the tracer with --edge-read-timeout): run long jobs in the background and answer at once (202 and a status URL), or send the response headers early.",
        secs(x.read_timeout)
    ));
    next.push("Behind nginx or Apache, their own proxy timeouts (proxy_read_timeout, fastcgi_read_timeout, ProxyTimeout) must exceed the application's time too, or they answer 504 first.".into());
    Some(Cause::new(Verdict::SlowResponse, x.slow, evidence, next))
}

/// Requests that met a connection the origin had already closed.
pub(super) fn keepalive_race(i: &Inputs<'_>) -> Option<Cause> {
    let x: &ExchangeWindow = i.exchanges;
    if x.after_close == 0 {
        return None;
    }
    let mut evidence = vec![format!(
        "{} edge requests arrived on connections the origin had already closed, up to {} after the close: the kernel answers each with a reset",
        x.after_close,
        secs(x.after_close_gap_max)
    )];
    evidence.extend(idle_close_line(x));
    evidence.extend(sampled_line(x));
    let next = vec![
        format!(
            "Keep idle connections open longer than Cloudflare does ({}): nginx `keepalive_timeout {}s;` (and a high `keepalive_requests`), Apache `KeepAliveTimeout {}`, Node.js `server.keepAliveTimeout` (and `headersTimeout` above it), gunicorn `--keep-alive`.",
            secs(x.idle_timeout),
            x.idle_timeout.as_secs() + 5,
            x.idle_timeout.as_secs() + 5
        ),
        "A load balancer or proxy in front of the server closes idle connections too: its idle timeout must also exceed Cloudflare's.".into(),
    ];
    Some(Cause::new(
        Verdict::KeepaliveRace,
        x.after_close,
        evidence,
        next,
    ))
}

/// On a busy host the counts are a sample's: said beside them.
fn sampled_line(x: &ExchangeWindow) -> Option<String> {
    (x.followed_one_in > 1).then(|| {
        format!(
            "these counts are of the 1 in {} edge connections the exchange timing followed (over --timing-sample-above requests a second): the edge met about {} times as many",
            x.followed_one_in, x.followed_one_in
        )
    })
}

/// "the origin closed idle edge connections after p50 1.0 s (max 1.0 s), sooner than …"
fn idle_close_line(x: &ExchangeWindow) -> Option<String> {
    let s: Summary = x.idle_closes.summary();
    (s.count > 0).then(|| {
        format!(
            "the origin closed {} idle edge connections after p50 {} (max {}){}",
            s.count,
            ms_as_secs(s.p50_ms),
            ms_as_secs(s.max_ms),
            if s.p50_ms < x.idle_timeout.as_secs_f64() * 1000.0 {
                format!(
                    ", sooner than Cloudflare keeps them for reuse ({})",
                    secs(x.idle_timeout)
                )
            } else {
                String::new()
            }
        )
    })
}

/// The risk before the race: idle closes sooner than the edge's idle timeout, no request
/// caught yet. Evidence of whatever the verdict is.
pub fn idle_close_risk(x: &ExchangeWindow) -> Option<String> {
    if x.after_close > 0 {
        return None;
    }
    let s = x.idle_closes.summary();
    if s.count == 0 || s.p50_ms >= x.idle_timeout.as_secs_f64() * 1000.0 {
        return None;
    }
    idle_close_line(x).map(|l| {
        format!("{l}: a request racing such a close meets a reset (520) — none did in this window")
    })
}

/// No new connection, but requests on open ones, none of them failing.
pub(super) fn healthy_reused(i: &Inputs<'_>) -> Cause {
    let r = i.exchanges.responses.summary();
    Cause::new(
        Verdict::Healthy,
        0,
        vec![format!(
            "no new edge connection in the window, but {} requests arrived on edge connections already open and {} were answered (p50 {}, max {})",
            i.exchanges.requests,
            r.count,
            ms_as_secs(r.p50_ms),
            ms_as_secs(r.max_ms)
        )],
        vec!["The edge reaches this origin on connections it keeps open: if errors continue, run this again while they happen.".into()],
    )
}

/// The evidence line for handshakes that needed a retransmission, if any did.
pub fn retransmitted_handshakes(t: &Timing) -> Option<String> {
    let n = t.after_syn_retransmits.max(t.after_synack_retransmits);
    if n == 0 || t.handshake.count == 0 {
        return None;
    }
    Some(format!(
        "{} of {} edge handshakes completed only after a retransmission ({} after the edge sent its SYN again, {} after the origin sent its SYN-ACK again; the slowest took {:.0} ms): each costs Cloudflare a second or more of its 19 s connect budget (522 when it runs out) — lost SYN-ACKs or a queue that was full for a moment",
        n,
        t.handshake.count,
        t.after_syn_retransmits,
        t.after_synack_retransmits,
        t.handshake.max_ms
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::correlate::exchanges::{Exchanges, EDGE_IDLE_TIMEOUT};
    use crate::model::exchange::{ExchangeEvent, Step};
    use crate::verdict::tests::{fixture, inputs};
    use std::time::SystemTime;

    fn step(t0: SystemTime, ms: u64, port: u16, step: Step) -> ExchangeEvent {
        ExchangeEvent {
            ts: t0 + Duration::from_millis(ms),
            peer: "173.245.48.10".parse().unwrap(),
            peer_port: port,
            local_port: 8080,
            step,
        }
    }

    /// Recorded: a handshake, then a request the application reads and answers after 4 s,
    /// with a read timeout of 3 s: slow_response, 524, the process named.
    #[test]
    fn a_late_answer_is_a_slow_response() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let mut x = Exchanges::new(Duration::from_secs(3), EDGE_IDLE_TIMEOUT);
        let comm = crate::model::exchange::comm_bytes("python3");
        x.observe(&step(
            t0,
            1500,
            1,
            Step::Looked {
                request_at: t0,
                read: true,
                holder: Some((4242, comm)),
            },
        ));
        x.observe(&step(t0, 4001, 1, Step::ResponseBegan { request_at: t0 }));
        let mut f = fixture();
        f.exchanges = x.take_window(t0 + Duration::from_secs(10), &[]);
        let edge = crate::correlate::Counts {
            syn: 1,
            handshakes: 1,
            ..Default::default()
        };
        let (verdict, causes) = crate::verdict::decide(&inputs(&f, edge));
        assert_eq!(verdict, Verdict::SlowResponse);
        let c = &causes[0];
        assert_eq!(c.cloudflare_error, Some(524));
        assert!(
            c.evidence[1].contains("read by python3 (pid 4242)"),
            "{:?}",
            c.evidence
        );
        assert!(c.evidence[1].contains("after 4.0 s"), "{:?}", c.evidence);
        assert!(causes.iter().any(|c| c.verdict == Verdict::Healthy));
    }

    /// Recorded: a keep-alive connection the origin closes after 1 s idle and the edge's next
    /// request at 1.4 s, on a connection older than the window (no SYN seen).
    #[test]
    fn a_request_after_an_idle_close_is_a_keepalive_race() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let mut x = Exchanges::new(Duration::from_secs(100), EDGE_IDLE_TIMEOUT);
        let answered = Step::ResponseBegan { request_at: t0 };
        for e in [
            step(t0, 2, 1, answered),
            step(
                t0,
                1002,
                1,
                Step::OriginClosed {
                    idle: Some(Duration::from_millis(1000)),
                    pending: false,
                },
            ),
            step(t0, 1402, 1, Step::RequestAfterClose),
        ] {
            x.observe(&e);
        }
        let mut f = fixture();
        f.exchanges = x.take_window(t0 + Duration::from_secs(10), &[]);
        let (verdict, causes) =
            crate::verdict::decide(&inputs(&f, crate::correlate::Counts::default()));
        assert_eq!(verdict, Verdict::KeepaliveRace);
        assert_eq!(causes[0].cloudflare_error, Some(520));
        assert!(
            causes[0].evidence[1].contains("after p50 1.0 s"),
            "{:?}",
            causes[0].evidence
        );
        assert!(causes[0].next_steps[0].contains("keepalive_timeout 905s"));
        assert!(
            !causes[0]
                .evidence
                .iter()
                .any(|e| e.contains("connections the exchange timing followed")),
            "{:?}",
            causes[0].evidence
        );
        // A sampled window says its counts are a sample's.
        f.exchanges.followed_one_in = 16;
        let (_, causes) = crate::verdict::decide(&inputs(&f, crate::correlate::Counts::default()));
        assert!(
            causes[0].evidence[2].contains("the 1 in 16 edge connections"),
            "{:?}",
            causes[0].evidence
        );
        // Without the late request: healthy, with the risk said.
        let mut x = Exchanges::new(Duration::from_secs(100), EDGE_IDLE_TIMEOUT);
        x.observe(&step(t0, 2, 1, answered));
        x.observe(&step(
            t0,
            1002,
            1,
            Step::OriginClosed {
                idle: Some(Duration::from_millis(1000)),
                pending: false,
            },
        ));
        f.exchanges = x.take_window(t0 + Duration::from_secs(10), &[]);
        let (verdict, _) = crate::verdict::decide(&inputs(&f, crate::correlate::Counts::default()));
        assert_eq!(verdict, Verdict::Healthy);
        assert!(idle_close_risk(&f.exchanges).unwrap().contains("none did"));
    }

    #[test]
    fn only_retransmitted_handshakes_are_evidence() {
        let mut t = Timing {
            handshake: Summary {
                count: 6,
                p50_ms: 0.5,
                p99_ms: 1010.0,
                max_ms: 1003.4,
            },
            after_syn_retransmits: 0,
            after_synack_retransmits: 3,
            ..Timing::default()
        };
        let line = retransmitted_handshakes(&t).unwrap();
        assert!(line.starts_with("3 of 6 edge handshakes"), "{line}");
        assert!(line.contains("the slowest took 1003 ms"), "{line}");
        t.after_synack_retransmits = 0;
        assert_eq!(retransmitted_handshakes(&t), None);
    }
}
