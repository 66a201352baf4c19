//! `tracer agent` in lab namespaces: metrics against generated traffic, promtool, logs,
//! signals, and a ranges change mid-run.

use std::{
    process::Command,
    time::{Duration, Instant},
};

use integration_tests::{
    scenarios::{Server, ServerMode, SHORT},
    *,
};
use serde_json::Value;

const METRICS: &str = "127.0.0.1:10521";

fn agent(lab: &Lab, log: &std::path::Path, extra: &[&str]) -> Tracer {
    integration_tests::agent::Agent::on(&lab.origin, "443,2053,8080", "2", log)
        .args(extra)
        .start()
        .tracer
}

fn scrape(lab: &Lab) -> String {
    let (status, body) = lab
        .origin
        .http_get(METRICS, "/metrics")
        .expect("GET /metrics");
    assert!(status.contains("200"), "{status}");
    body
}

fn series(port: u16, outcome: &str) -> String {
    integration_tests::agent::connections(port, outcome)
}

fn late_resets(port: u16) -> String {
    format!("tracer_edge_resets_after_handshake_total{{port=\"{port}\"}}")
}

fn log_lines(path: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad log line {l:?}: {e}")))
        .collect()
}

/// The arrival hooks an agent test runs with: the default (TC ingress on a veth) and XDP.
const HOOKS: [&str; 2] = ["auto", "xdp"];

fn promtool_check_metrics(text: &str) {
    use std::io::Write as _;
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (cargo xtask setup installs Debian's prometheus)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let msg = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && msg.trim().is_empty(),
        "promtool check metrics: {msg}"
    );
}

#[test]
fn metrics_and_logs_follow_the_traffic() {
    let lab = Lab::new();
    let tmp = TempDir::new("agent-metrics");
    let log = tmp.path("events.jsonl");
    let _server = Server::start(lab.origin.listen("::", 443, 128), ServerMode::Close);
    lab.origin.sh("nft add table inet filter; \
         nft add chain inet filter input '{ type filter hook input priority 0; }'; \
         nft add rule inet filter input tcp dport 2053 drop");
    let tracer = agent(&lab, &log, &[]);
    let (status, body) = lab.origin.http_get(METRICS, "/healthz").unwrap();
    assert!(
        status.contains("200") && body.trim() == "ok",
        "{status} {body}"
    );

    for _ in 0..3 {
        assert!(lab
            .edge
            .connect(EDGE_V4, sockaddr(ORIGIN_V4, 8080), SHORT)
            .is_err());
    }
    for _ in 0..2 {
        lab.edge
            .connect(EDGE_V4, sockaddr(ORIGIN_V4, 443), SHORT)
            .expect("handshake");
        lab.edge
            .connect(EDGE_V6, sockaddr(ORIGIN_V6, 443), SHORT)
            .expect("handshake v6");
    }
    for _ in 0..2 {
        assert!(lab
            .edge
            .connect(EDGE_V4, sockaddr(ORIGIN_V4, 2053), SHORT)
            .is_err());
    }
    lab.edge
        .connect(OTHER_V4, sockaddr(ORIGIN_V4, 443), SHORT)
        .expect("non-edge handshake");

    let expected = [
        (series(8080, "refused"), 3.0),
        (series(443, "handshake"), 4.0),
        (series(2053, "firewall_drop"), 2.0),
        (series(443, "refused"), 0.0),
        (
            "tracer_non_edge_connections_total{outcome=\"handshake\",port=\"443\"}".into(),
            1.0,
        ),
        ("tracer_edge_syn_total{port=\"8080\"}".into(), 3.0),
        ("tracer_events_lost_total".into(), 0.0),
    ];
    let mut text = String::new();
    let ok = eventually(Duration::from_secs(10), || {
        text = scrape(&lab);
        expected.iter().all(|(s, v)| metric(&text, s) == Some(*v))
    });
    assert!(ok, "metrics never matched {expected:?}:\n{text}");
    // Which build, kernel and hook: one series, value 1.
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    let hook = ["tcx", "tc_clsact", "xdp_driver", "xdp_generic"]
        .into_iter()
        .find(|h| metric(&text, &format!("tracer_arrival_hook{{hook=\"{h}\"}}")) == Some(1.0))
        .expect("an arrival hook");
    let build_info = format!(
        "tracer_build_info{{arrival_hook=\"{hook}\",kernel=\"{}\",version=\"{}\"}}",
        release.trim(),
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(metric(&text, &build_info), Some(1.0), "{text}");
    // The standard process metrics, of the agent itself.
    assert!(
        metric(&text, "process_cpu_seconds_total").is_some(),
        "{text}"
    );
    for m in [
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_start_time_seconds",
    ] {
        assert!(metric(&text, m).is_some_and(|v| v > 0.0), "{m}:\n{text}");
    }
    // Each attempt is in one outcome: the outcomes of a port sum to its attempts.
    let attempts: f64 = [
        "handshake",
        "refused",
        "firewall_drop",
        "overload_drop",
        "origin_reset",
        "unanswered",
        "other_drop",
        "unknown",
    ]
    .iter()
    .map(|o| metric(&text, &series(443, o)).unwrap())
    .sum();
    assert_eq!(attempts, 4.0, "{text}");
    // A window of 2 s passed with refusals and firewall drops: the verdict names the largest.
    assert!(
        eventually(Duration::from_secs(6), || {
            text = scrape(&lab);
            metric(&text, "tracer_verdict{verdict=\"refused\"}") == Some(1.0)
                || metric(&text, "tracer_verdict{verdict=\"firewall_drop\"}") == Some(1.0)
                || metric(&text, "tracer_verdict{verdict=\"healthy\"}") == Some(1.0)
        }),
        "{text}"
    );
    assert!(
        text.contains(
            "tracer_ranges_info{etag=\"38f79d050aa027e3be3865e495dcc9bc\",source=\"embedded\"} 1"
        ),
        "{text}"
    );
    // The embedded ranges were recorded before this run began.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let fetched = metric(&text, "tracer_ranges_fetched_timestamp_seconds").unwrap();
    assert!(fetched > 1.6e9 && fetched < now, "{fetched}");
    promtool_check_metrics(&text);

    let events = tracer.stop();
    assert!(events.is_empty(), "--log-file given: stdout stays empty");
    let lines = log_lines(&log);
    let kinds = |k: &str| lines.iter().filter(|l| l["kind"] == k).count();
    // By default one line per failed attempt, not one per packet.
    for k in ["syn", "reset_sent", "drop", "established"] {
        assert_eq!(kinds(k), 0, "no {k} lines by default: {lines:?}");
    }
    let attempts = |outcome: &str, port: u16| {
        lines
            .iter()
            .filter(|l| {
                l["kind"] == "attempt" && l["outcome"] == outcome && l["local_port"] == port
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(attempts("refused", 8080).len(), 3, "{lines:?}");
    let dropped = attempts("firewall_drop", 2053);
    assert_eq!(dropped.len(), 2, "{lines:?}");
    assert!(dropped
        .iter()
        .all(|l| l["reason"] == "NETFILTER_DROP" && l["syns"].as_u64() >= Some(1)));
    assert_eq!(
        kinds("attempt"),
        5,
        "handshakes write no attempt line: {lines:?}"
    );
    let verdicts: Vec<&Value> = lines.iter().filter(|l| l["kind"] == "verdict").collect();
    assert!(!verdicts.is_empty(), "one verdict record per window");
    for key in [
        "ts",
        "verdict",
        "window_secs",
        "edge",
        "non_edge",
        "causes",
        "listeners",
        "counters",
        "ranges",
        "lost_events",
    ] {
        assert!(
            verdicts[0].get(key).is_some(),
            "verdict record lacks {key}: {}",
            verdicts[0]
        );
    }
    let refused: u64 = verdicts
        .iter()
        .map(|v| v["edge"]["refused"].as_u64().unwrap())
        .sum();
    assert_eq!(refused, 3, "windows together saw the 3 refusals");
}

/// A connection the origin accepts and then resets counts once, as a handshake, and once in
/// `tracer_edge_resets_after_handshake_total`: no attempt is in two outcomes. The agent settles an attempt at its handshake and reads the later reset from
/// the reset's own event; with `--log-events all` the kernel also reports closes, which must
/// change nothing but the log.
#[test]
fn resets_after_accept_count_once_with_and_without_closes() {
    for log_all in [false, true] {
        let lab = Lab::new();
        let tmp = TempDir::new("agent-resets");
        let log = tmp.path("events.jsonl");
        let _resetting = Server::start(lab.origin.listen("0.0.0.0", 8080, 128), ServerMode::Reset);
        let _closing = Server::start(lab.origin.listen("0.0.0.0", 443, 128), ServerMode::Close);
        let extra: &[&str] = if log_all {
            &["--log-events", "all"]
        } else {
            &[]
        };
        let tracer = agent(&lab, &log, extra);
        for port in [8080, 443] {
            for _ in 0..3 {
                // The resetting server's RST can beat connect()'s return (ECONNRESET): the
                // handshake happened all the same, and the counts below say so.
                if let Ok(mut c) = lab.edge.connect(EDGE_V4, sockaddr(ORIGIN_V4, port), SHORT) {
                    use std::io::Read as _;
                    let _ = c.set_read_timeout(Some(SHORT));
                    let _ = c.read(&mut [0u8; 16]);
                }
            }
        }
        let expected = [
            (series(8080, "handshake"), 3.0),
            (series(8080, "origin_reset"), 0.0),
            (late_resets(8080), 3.0),
            (series(443, "handshake"), 3.0),
            (series(443, "origin_reset"), 0.0),
            (late_resets(443), 0.0),
        ];
        let mut text = String::new();
        let matches = |text: &str| expected.iter().all(|(s, v)| metric(text, s) == Some(*v));
        let ok = eventually(Duration::from_secs(10), || {
            text = scrape(&lab);
            matches(&text)
        });
        assert!(
            ok,
            "log_all={log_all}: metrics never matched {expected:?}:\n{text}"
        );
        // Nothing counts twice later (a close or a reset finding the attempt gone).
        std::thread::sleep(Duration::from_secs(1));
        text = scrape(&lab);
        assert!(matches(&text), "log_all={log_all}: counts moved:\n{text}");
        assert!(
            eventually(Duration::from_secs(3), || metric(
                &scrape(&lab),
                "tracer_open_attempts"
            ) == Some(0.0)),
            "handshakes leave the table"
        );

        tracer.stop();
        let lines = log_lines(&log);
        let closed = lines.iter().filter(|l| l["kind"] == "closed").count();
        if log_all {
            assert!(closed >= 6, "every connection's close is logged: {closed}");
        } else {
            assert_eq!(closed, 0, "closes are neither wanted nor logged");
        }
        if log_all {
            let resets = lines
                .iter()
                .filter(|l| l["kind"] == "reset_sent" && l["local_port"] == 8080)
                .count();
            assert_eq!(resets, 3, "log_all={log_all}: {lines:?}");
        }
        // Either way, one attempt line per reset connection, saying it came after the
        // handshake.
        let reset_attempts = lines
            .iter()
            .filter(|l| {
                l["kind"] == "attempt"
                    && l["local_port"] == 8080
                    && l["outcome"] == "origin_reset"
                    && l["after_handshake"] == true
            })
            .count();
        assert_eq!(reset_attempts, 3, "log_all={log_all}: {lines:?}");
        assert!(
            !lines
                .iter()
                .any(|l| l["kind"] == "attempt" && l["local_port"] == 443),
            "closed connections are not failures: {lines:?}"
        );
    }
}

#[test]
fn sigterm_exits_fast_and_detaches() {
    for hook in HOOKS {
        let lab = Lab::new();
        let tmp = TempDir::new("agent-term");
        let tracer = agent(&lab, &tmp.path("log"), &["--hook", hook]);
        assert_eq!(arrival_programs_loaded(), 1, "{hook}");
        let t = Instant::now();
        tracer.signal(libc::SIGTERM);
        let (code, _) = tracer.wait(Duration::from_secs(5));
        assert_eq!(code, 0);
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "{hook}: took {:?}",
            t.elapsed()
        );
        assert!(
            eventually(Duration::from_secs(3), || arrival_programs_loaded() == 0),
            "{hook}: arrival program still loaded after exit"
        );
    }
}

/// (niceness, scheduling policy) of a running process, from /proc/PID/stat.
fn nice_and_policy(pid: u32) -> (i64, u32) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    // Fields after the command name, which may hold spaces: state is field 3.
    let rest: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    (rest[19 - 3].parse().unwrap(), rest[41 - 3].parse().unwrap())
}

/// The agent yields to the server it watches: SCHED_BATCH, niceness 10 unless told otherwise.
#[test]
fn agent_yields_to_the_workload() {
    const SCHED_BATCH: u32 = 3;
    let lab = Lab::new();
    let tmp = TempDir::new("agent-nice");
    let tracer = agent(&lab, &tmp.path("log"), &[]);
    assert_eq!(nice_and_policy(tracer.pid()), (10, SCHED_BATCH));
    tracer.stop();
    let tracer = agent(&lab, &tmp.path("log"), &["--nice", "0"]);
    assert_eq!(nice_and_policy(tracer.pid()), (0, SCHED_BATCH));
    tracer.stop();
}

#[test]
fn sigkill_leaves_nothing_attached_and_restart_works() {
    for hook in HOOKS {
        let lab = Lab::new();
        let tmp = TempDir::new("agent-kill");
        let tracer = agent(&lab, &tmp.path("log"), &["--hook", hook]);
        tracer.signal(libc::SIGKILL);
        let _ = tracer.wait(Duration::from_secs(5));
        assert!(
            eventually(Duration::from_secs(3), || arrival_programs_loaded() == 0),
            "{hook}: arrival hook left attached"
        );
        let again = agent(&lab, &tmp.path("log"), &["--hook", hook]);
        assert!(lab
            .edge
            .connect(EDGE_V4, sockaddr(ORIGIN_V4, 8080), SHORT)
            .is_err());
        assert!(
            eventually(Duration::from_secs(8), || metric(
                &scrape(&lab),
                &series(8080, "refused")
            ) == Some(1.0)),
            "{hook}"
        );
        drop(again);
    }
}

#[test]
fn sighup_reopens_the_log_file() {
    let lab = Lab::new();
    let tmp = TempDir::new("agent-hup");
    let log = tmp.path("events.jsonl");
    let rotated = tmp.path("events.jsonl.1");
    let tracer = agent(&lab, &log, &[]);
    assert!(lab
        .edge
        .connect(EDGE_V4, sockaddr(ORIGIN_V4, 8080), SHORT)
        .is_err());
    assert!(eventually(Duration::from_secs(5), || log_lines(&log)
        .iter()
        .any(|l| l["kind"] == "attempt")));
    std::fs::rename(&log, &rotated).unwrap();
    tracer.signal(libc::SIGHUP);
    assert!(
        eventually(Duration::from_secs(5), || log.exists()),
        "log not reopened"
    );
    assert!(lab
        .edge
        .connect(EDGE_V4, sockaddr(ORIGIN_V4, 8080), SHORT)
        .is_err());
    assert!(eventually(Duration::from_secs(5), || log_lines(&log)
        .iter()
        .any(|l| l["kind"] == "attempt")));
    assert_eq!(
        log_lines(&rotated)
            .iter()
            .filter(|l| l["kind"] == "attempt")
            .count(),
        1
    );
    tracer.stop();
}

#[test]
fn ranges_change_mid_run_without_losing_events() {
    let lab = Lab::new();
    let tmp = TempDir::new("agent-ranges");
    let ranges = tmp.path("ranges.txt");
    std::fs::write(&ranges, "198.51.100.0/24\n").unwrap();
    let tracer = agent(
        &lab,
        &tmp.path("log"),
        &[
            "--ranges",
            ranges.to_str().unwrap(),
            "--refresh-ranges-every",
            "1s",
            "--log-events",
            "all",
        ],
    );
    // Traffic runs across the change: every attempt must be counted, as edge or not.
    let total = 24;
    let mut made = 0;
    for i in 0..total {
        if i == total / 2 {
            std::fs::write(&ranges, "198.51.100.0/24\n173.245.48.0/20\n").unwrap();
        }
        assert!(lab
            .edge
            .connect(EDGE_V4, sockaddr(ORIGIN_V4, 8080), SHORT)
            .is_err());
        made += 1;
        std::thread::sleep(Duration::from_millis(150));
    }
    let mut text = String::new();
    let counted = |t: &str| {
        metric(t, &series(8080, "refused")).unwrap_or(0.0)
            + metric(
                t,
                "tracer_non_edge_connections_total{outcome=\"refused\",port=\"8080\"}",
            )
            .unwrap_or(0.0)
    };
    assert!(
        eventually(Duration::from_secs(8), || {
            text = scrape(&lab);
            counted(&text) == made as f64
        }),
        "expected {made} attempts counted:\n{text}"
    );
    let edge = metric(&text, &series(8080, "refused")).unwrap();
    assert!(
        edge >= 1.0 && edge < made as f64,
        "the change took effect mid-run: {edge} edge of {made}"
    );
    assert_eq!(metric(&text, "tracer_events_lost_total"), Some(0.0));
    assert!(text.contains("source=\"file\""), "{text}");
    let events = tracer.stop();
    assert!(events.is_empty());
    let lines = log_lines(&tmp.path("log"));
    let syns: Vec<&Value> = lines.iter().filter(|l| l["kind"] == "syn").collect();
    assert_eq!(syns.len(), made, "every SYN logged across the change");
    assert_eq!(syns[0]["edge"], false);
    assert_eq!(syns[made - 1]["edge"], true);
}

/// A fresh install starts on the embedded list (recorded weeks ago): with `--refresh-ranges-every
/// 6h` it asks the API at once, not after 6 h, and the age drops to seconds.
#[test]
fn a_fresh_install_refreshes_old_ranges_at_start() {
    let lab = Lab::new();
    let tmp = TempDir::new("agent-fresh");
    let state = tmp.path("state");
    // A mirror of the API on the origin's loopback, answering every request.
    let mirror = lab.origin.listen("127.0.0.1", 8099, 16);
    std::thread::spawn(move || {
        use std::io::{Read as _, Write as _};
        let body = r#"{"result":{"ipv4_cidrs":["173.245.48.0/20","131.0.72.0/22"],"ipv6_cidrs":["2400:cb00::/32"],"etag":"fresh"},"success":true}"#;
        while let Ok((mut c, _)) = mirror.accept() {
            let _ = c.read(&mut [0u8; 2048]);
            let _ = c.write_all(
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                )
                .as_bytes(),
            );
        }
    });
    let log = tmp.path("log");
    let tracer = Tracer::start_env(
        &lab.origin,
        &[
            "agent",
            "--iface",
            ORIGIN_IF,
            "--window",
            "2",
            "--refresh-ranges-every",
            "6h",
            "--log-file",
            log.to_str().unwrap(),
        ],
        &[
            ("TRACER_STATE_DIR", state.to_str().unwrap()),
            ("TRACER_RANGES_URL", "http://127.0.0.1:8099/ips"),
        ],
    );
    let mut text = String::new();
    assert!(
        eventually(Duration::from_secs(10), || {
            text = scrape(&lab);
            text.contains("tracer_ranges_info{etag=\"fresh\",source=\"api\"} 1")
        }),
        "the first refresh came at start:\n{text}\n{}",
        tracer.stderr_text()
    );
    assert!(
        metric(&text, "tracer_ranges_fetched_timestamp_seconds").is_some_and(|at| {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs_f64();
            now - at < 60.0
        }),
        "{text}"
    );
    tracer.stop();
}

/// The watched interface is deleted and an interface of that name comes back: the agent says
/// so once each, attaches its arrival hook to the new one, and counts what arrives there
/// (it must not run blind, reporting `never_arriving`).
#[test]
fn the_agent_reattaches_when_its_interface_comes_back() {
    for hook in HOOKS {
        let lab = Lab::new();
        let tmp = TempDir::new("agent-replug");
        let log = tmp.path("log");
        let tracer = agent(&lab, &log, &["--hook", hook]);
        lab.unplug();
        assert!(
            eventually(Duration::from_secs(5), || tracer
                .stderr_text()
                .contains("disappeared")),
            "{hook}: {}",
            tracer.stderr_text()
        );
        lab.plug();
        assert!(
            eventually(Duration::from_secs(5), || tracer
                .stderr_text()
                .contains("is back: arrival hook attached again")),
            "{hook}: {}",
            tracer.stderr_text()
        );
        // Its stderr is a file here, as under journald: no colour codes in it.
        assert!(
            !tracer.stderr_text().contains('\x1b'),
            "{:?}",
            tracer.stderr_text()
        );
        for _ in 0..2 {
            assert!(lab
                .edge
                .connect(EDGE_V4, sockaddr(ORIGIN_V4, 8080), SHORT)
                .is_err());
        }
        let mut text = String::new();
        let counted = eventually(Duration::from_secs(8), || {
            text = scrape(&lab);
            metric(&text, &series(8080, "refused")) == Some(2.0)
                && metric(&text, &series(8080, "unanswered")) == Some(0.0)
        });
        assert!(counted, "{hook}: refusals after the return:\n{text}");
        let stderr = tracer.stderr_text();
        assert_eq!(stderr.matches("disappeared").count(), 1, "{hook}: {stderr}");
        assert_eq!(stderr.matches("is back").count(), 1, "{hook}: {stderr}");
        // The window's verdict record says what happened to the interface.
        assert!(
            eventually(Duration::from_secs(5), || log_lines(&log).iter().any(|l| {
                l["kind"] == "verdict" && l["notes"].to_string().contains("disappeared at")
            })),
            "{hook}: no verdict note"
        );
        drop(tracer);
    }
}
