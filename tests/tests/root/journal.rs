//! The change journal in the lab: the server stops, an nft drop appears, the route toward the
//! edge moves — each mid-window, after healthy connections. The report's `since` says when the
//! failure began and names the change, both within a second of the truth; the agent logs each
//! change and counts it.

use std::{
    net::TcpListener,
    time::{Duration, SystemTime},
};

use integration_tests::{
    agent::Agent,
    eventually, metric,
    scenarios::{Server, ServerMode, SHORT},
    sockaddr, Lab, TempDir, Tracer, EDGE_V4, ORIGIN_IF, ORIGIN_V4, ROUTE_IF,
};
use serde_json::Value;

fn parse_ts(s: &Value) -> SystemTime {
    humantime::parse_rfc3339_weak(s.as_str().unwrap()).unwrap()
}

fn within_a_second(seen: SystemTime, truth: SystemTime, what: &str) {
    let gap = match seen.duration_since(truth) {
        Ok(d) => d,
        Err(e) => e.duration(),
    };
    assert!(
        gap <= Duration::from_secs(1),
        "{what}: {gap:?} from the truth"
    );
}

/// Three handshakes to `port`: the healthy stretch before the change. Then a pause, so the
/// server has accepted them all (a listener closing with connections still queued resets
/// them: they would be failures).
fn healthy(lab: &Lab, port: u16) {
    for _ in 0..3 {
        lab.edge
            .connect(EDGE_V4, sockaddr(ORIGIN_V4, port), SHORT)
            .expect("a handshake before the change");
    }
    std::thread::sleep(Duration::from_millis(300));
}

/// Three attempts after the change: (when the first began).
fn failing(lab: &Lab, port: u16) -> SystemTime {
    let first = SystemTime::now();
    for _ in 0..3 {
        let _ = lab.edge.connect(EDGE_V4, sockaddr(ORIGIN_V4, port), SHORT);
    }
    first
}

fn diagnose(lab: &Lab, port: &str) -> Tracer {
    Tracer::diagnose_with(&lab.origin, port, "5", &[], &[])
}

/// `tracer agent` on port 8080 with `window` seconds, logging to `log`.
fn agent(lab: &Lab, window: &str, log: &std::path::Path) -> Agent {
    Agent::on(&lab.origin, "8080", window, log).start()
}

/// The agent's log lines.
fn log_lines(log: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(log)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The `change` records of the agent's log.
fn change_lines(log: &std::path::Path) -> Vec<Value> {
    log_lines(log)
        .into_iter()
        .filter(|l| l["kind"] == "change")
        .collect()
}

fn report(tracer: Tracer) -> Value {
    let (code, out) = tracer.wait(Duration::from_secs(40));
    assert_eq!(code, 0, "{out}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

#[test]
fn the_server_stopping_is_named_with_its_time() {
    let lab = Lab::new();
    let listener: TcpListener = lab.origin.listen("0.0.0.0", 8080, 64);
    let server = Server::start(listener, ServerMode::Close);
    let tracer = diagnose(&lab, "8080");
    healthy(&lab, 8080);
    let stopped = SystemTime::now();
    drop(server);
    std::thread::sleep(Duration::from_millis(600));
    let began = failing(&lab, 8080);
    let r = report(tracer);
    assert_eq!(r["verdict"], "refused", "{r:#}");
    let since = &r["since"];
    assert_eq!(since["from_start"], false, "{r:#}");
    within_a_second(parse_ts(&since["began"]), began, "began");
    let change = &since["changes"][0];
    assert_eq!(change["what"], "listener_down", "{since:#}");
    assert!(
        change["detail"]
            .as_str()
            .unwrap()
            .contains("stopped listening on 0.0.0.0:8080"),
        "{since:#}"
    );
    within_a_second(parse_ts(&change["ts"]), stopped, "the listener's change");
    assert!(
        since["text"]
            .as_str()
            .unwrap()
            .starts_with("refusals began ")
            && since["text"].as_str().unwrap().contains("s after"),
        "{since:#}"
    );
}

#[test]
fn an_nft_drop_added_mid_window_is_named() {
    let lab = Lab::new();
    let _server = Server::start(lab.origin.listen("0.0.0.0", 443, 64), ServerMode::Close);
    lab.origin.sh("nft add table inet filter; \
         nft add chain inet filter input '{ type filter hook input priority 0; }'");
    let tracer = diagnose(&lab, "443");
    healthy(&lab, 443);
    lab.origin
        .sh("nft add rule inet filter input tcp dport 443 drop");
    let added = SystemTime::now();
    let began = failing(&lab, 443);
    let r = report(tracer);
    assert_eq!(r["verdict"], "firewall_drop", "{r:#}");
    let since = &r["since"];
    within_a_second(parse_ts(&since["began"]), began, "began");
    let change = &since["changes"][0];
    assert_eq!(change["what"], "firewall", "{since:#}");
    let detail = change["detail"].as_str().unwrap();
    assert!(
        detail.contains("1 rule added to inet filter/input"),
        "{detail}"
    );
    within_a_second(parse_ts(&change["ts"]), added, "the ruleset's change");
}

#[test]
fn the_route_toward_the_edge_moving_is_named() {
    let lab = Lab::new();
    lab.dead_end_interface();
    lab.pin_origin_neighbour();
    lab.origin.sh(&format!(
        "sysctl -qw net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.{ORIGIN_IF}.rp_filter=0"
    ));
    let _server = Server::start(lab.origin.listen("0.0.0.0", 443, 64), ServerMode::Close);
    let tracer = diagnose(&lab, "443");
    healthy(&lab, 443);
    lab.origin.sh(&format!(
        "ip route replace {EDGE_V4}/32 via 10.99.0.2 dev {ROUTE_IF}"
    ));
    let moved = SystemTime::now();
    let began = failing(&lab, 443);
    let r = report(tracer);
    assert_eq!(r["verdict"], "return_path", "{r:#}");
    let since = &r["since"];
    within_a_second(parse_ts(&since["began"]), began, "began");
    let change = &since["changes"][0];
    assert_eq!(change["what"], "route", "{since:#}");
    assert_eq!(
        change["detail"],
        format!("route {EDGE_V4}/32 via 10.99.0.2 dev {ROUTE_IF} added (table main)"),
        "{since:#}"
    );
    within_a_second(parse_ts(&change["ts"]), moved, "the route's change");
}

/// Healthy throughout: no `since`.
#[test]
fn no_failure_no_since() {
    let lab = Lab::new();
    let _server = Server::start(lab.origin.listen("0.0.0.0", 443, 64), ServerMode::Close);
    let tracer = Tracer::diagnose_with(&lab.origin, "443", "1", &[], &[]);
    healthy(&lab, 443);
    let r = report(tracer);
    assert_eq!(r["verdict"], "healthy");
    assert!(r["since"].is_null(), "{r:#}");
}

/// The agent logs each change as it happens and counts it; the verdict record carries since.
#[test]
fn the_agent_logs_and_counts_changes() {
    let lab = Lab::new();
    let tmp = TempDir::new("journal-agent");
    let log = tmp.path("log");
    let server = Server::start(lab.origin.listen("0.0.0.0", 8080, 64), ServerMode::Close);
    let tracer = agent(&lab, "2", &log);
    healthy(&lab, 8080);
    drop(server);
    std::thread::sleep(Duration::from_millis(600));
    failing(&lab, 8080);
    tracer.metrics_until(Duration::from_secs(8), |text| {
        metric(text, "tracer_changes_total{what=\"listener_down\"}") == Some(1.0)
            && metric(text, "tracer_verdict{verdict=\"refused\"}") == Some(1.0)
    });
    tracer.stop();
    let lines = log_lines(&log);
    let change = lines
        .iter()
        .find(|l| l["kind"] == "change")
        .expect("a change line");
    assert_eq!(change["what"], "listener_down");
    let verdict = lines
        .iter()
        .rev()
        .find(|l| l["kind"] == "verdict" && l["verdict"] == "refused")
        .expect("a refused window");
    assert_eq!(
        verdict["since"]["changes"][0]["what"], "listener_down",
        "{verdict:#}"
    );
}

/// `diagnose --since` answers from the running agent: when the failure began and after what,
/// without a new window; with no agent, one line saying how to start one.
#[test]
fn diagnose_since_answers_from_the_agent() {
    let lab = Lab::new();
    let tmp = TempDir::new("journal-since");
    let run = |args: &[&str]| {
        let out = std::process::Command::new("ip")
            .args(["netns", "exec", &lab.origin.name])
            .arg(integration_tests::tracer_bin())
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, _, err) = run(&["diagnose", "--since", "5m"]);
    assert_ne!(code, 0);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains("no agent answers at 127.0.0.1:10521: start `tracer agent`"),
        "{err}"
    );

    let server = Server::start(lab.origin.listen("0.0.0.0", 8080, 64), ServerMode::Close);
    let tracer = agent(&lab, "60", &tmp.path("log"));
    healthy(&lab, 8080);
    drop(server);
    std::thread::sleep(Duration::from_millis(600));
    failing(&lab, 8080);
    // Long before the 60 s window ends, the agent already knows.
    let mut doc = Value::Null;
    assert!(
        integration_tests::eventually(Duration::from_secs(6), || {
            let (code, out, _) = run(&["diagnose", "--since", "5m", "--format", "json"]);
            doc = serde_json::from_str(&out).unwrap_or(Value::Null);
            code == 0 && doc["since"]["changes"][0]["what"] == "listener_down"
        }),
        "{doc:#}"
    );
    assert!(
        doc["since"]["text"]
            .as_str()
            .unwrap()
            .starts_with("refusals began "),
        "{doc:#}"
    );
    assert!(doc["changes"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["what"] == "listener_down"));
    let (code, text, _) = run(&["diagnose", "--since", "5m"]);
    assert_eq!(code, 0);
    assert!(text.contains("Since: refusals began"), "{text}");
    assert!(text.contains("listener_down"), "{text}");
    tracer.stop();
}

/// The container behind a published port stops (its namespace and veth go away) after
/// healthy connections: the failure that follows is tied to the veth's deletion.
#[test]
fn a_container_stopping_is_named() {
    let lab = Lab::new();
    lab.wire_container();
    lab.docker_publish(443, 80);
    let server = Server::start(lab.container.listen("0.0.0.0", 80, 64), ServerMode::Close);
    let tracer = diagnose(&lab, "443");
    healthy(&lab, 443);
    drop(server);
    let stopped = SystemTime::now();
    lab.stop_container();
    std::thread::sleep(Duration::from_millis(300));
    failing(&lab, 443);
    let r = report(tracer);
    let since = &r["since"];
    assert!(
        since.is_object(),
        "a failure after the healthy stretch: {r:#}"
    );
    let change = since["changes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["what"] == "link")
        .unwrap_or_else(|| panic!("{since:#}"));
    assert!(
        change["detail"]
            .as_str()
            .unwrap()
            .contains("was deleted: a container or network namespace on this host went away"),
        "{since:#}"
    );
    within_a_second(parse_ts(&change["ts"]), stopped, "the veth's deletion");
}

/// A listener opening and closing in another namespace (a container's) on a watched port is
/// journaled from the kernel's LISTEN transitions — nothing samples that namespace — with the
/// process that did it.
#[test]
fn a_listener_in_another_namespace_is_journaled_with_its_process() {
    let lab = Lab::new();
    let tmp = TempDir::new("journal-listen");
    let log = tmp.path("log");
    let tracer = agent(&lab, "2", &log);
    let opened = SystemTime::now();
    let listener = lab.container.listen("0.0.0.0", 8080, 16);
    std::thread::sleep(Duration::from_millis(800));
    let closed = SystemTime::now();
    drop(listener);
    tracer.metrics_until(Duration::from_secs(8), |text| {
        metric(text, "tracer_changes_total{what=\"listener_down\"}") == Some(1.0)
    });
    tracer.stop();
    let changes = change_lines(&log);
    let pid = format!("(pid {})", std::process::id());
    for (what, verb, truth) in [
        ("listener_up", "started", opened),
        ("listener_down", "stopped", closed),
    ] {
        let c = changes
            .iter()
            .find(|c| c["what"] == what)
            .unwrap_or_else(|| panic!("no {what} in {changes:#?}"));
        let detail = c["detail"].as_str().unwrap();
        assert!(detail.contains(&pid), "{detail}");
        assert!(detail.contains(" in namespace netns:["), "{detail}");
        assert!(
            detail.contains(&format!("{verb} listening on 0.0.0.0:8080")),
            "{detail}"
        );
        within_a_second(parse_ts(&c["ts"]), truth, what);
    }
}

/// A listener closed and opened again faster than the listeners are sampled (a quick
/// restart): the kernel's LISTEN transitions still show the gap, dated and named.
#[test]
fn a_restart_between_two_samples_is_journaled() {
    let lab = Lab::new();
    let tmp = TempDir::new("journal-restart");
    let log = tmp.path("log");
    let first = lab.origin.listen("0.0.0.0", 8080, 16);
    let tracer = agent(&lab, "2", &log);
    std::thread::sleep(Duration::from_millis(600));
    let closed = SystemTime::now();
    drop(first);
    let second = lab.origin.listen("0.0.0.0", 8080, 16);
    tracer.metrics_until(Duration::from_secs(8), |text| {
        metric(text, "tracer_changes_total{what=\"listener_down\"}") == Some(1.0)
    });
    // When a sample fell in the gap (a loaded machine slows the reopening), the close is said
    // first and the opening a sample later: that is waited for too before the agent stops.
    let said_reopened = |changes: &[Value]| {
        changes.iter().any(|c| {
            c["what"] == "listener_up"
                || c["detail"]
                    .as_str()
                    .is_some_and(|d| d.contains("listened again"))
        })
    };
    eventually(Duration::from_secs(5), || {
        said_reopened(&change_lines(&log))
    });
    tracer.stop();
    drop(second);
    let changes = change_lines(&log);
    let down = changes
        .iter()
        .find(|c| c["what"] == "listener_down")
        .unwrap_or_else(|| panic!("no listener_down in {changes:#?}"));
    let detail = down["detail"].as_str().unwrap();
    assert!(
        detail.contains(&format!(
            "(pid {}) stopped listening on 0.0.0.0:8080",
            std::process::id()
        )),
        "{detail}"
    );
    within_a_second(parse_ts(&down["ts"]), closed, "the close");
    // Between two samples (nearly always): one change saying both; when a sample fell in the
    // gap, the sampler saw it close and open.
    assert!(
        detail.contains("listened again") || changes.iter().any(|c| c["what"] == "listener_up"),
        "{changes:#?}"
    );
}
