//! The fleet's files in `deploy/` against the real tools and the real agent: the alert rules
//! with promtool (syntax and behaviour), the log records against their JSON Schema, the
//! Grafana dashboard's queries against what the agent exports.

use std::{path::PathBuf, process::Command, time::Duration};

use integration_tests::{scenarios::SHORT, *};
use serde_json::Value;

fn deploy(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(path)
}

fn promtool(args: &[&str]) -> (bool, String) {
    let out = Command::new("promtool")
        .args(args)
        .output()
        .expect("promtool (cargo xtask setup installs Debian's prometheus)");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// The rules parse and lint clean, and their unit tests pass: a stray refusal never pages, a
/// sustained outage pages within 3 minutes and resolves within 5, a quiet site does not fire
/// never-arriving, a fresh install does not fire ranges-stale.
#[test]
fn alert_rules_check_and_pass_their_unit_tests() {
    let rules = deploy("alerts.yml");
    let (ok, msg) = promtool(&["check", "rules", rules.to_str().unwrap()]);
    assert!(ok, "promtool check rules: {msg}");
    let tests = deploy("alerts.test.yml");
    let (ok, msg) = promtool(&["test", "rules", tests.to_str().unwrap()]);
    assert!(ok && msg.contains("SUCCESS"), "promtool test rules: {msg}");
    // Every alert has a test in which it fires (its labels and annotations checked), not only
    // one in which it stays quiet.
    let rules = std::fs::read_to_string(&rules).unwrap();
    let tests = std::fs::read_to_string(&tests).unwrap();
    let fires: Vec<&str> = tests
        .lines()
        .zip(tests.lines().skip(1))
        .filter(|(_, next)| next.trim() == "exp_alerts:")
        .filter_map(|(line, _)| line.trim().strip_prefix("alertname: "))
        .collect();
    let alerts: Vec<&str> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
        .collect();
    assert!(alerts.len() >= 19, "{alerts:?}");
    // A fleet's own runbook base and job: the generated file passes promtool as the shipped
    // one does, and so do the PrometheusRule's groups.
    let dir = TempDir::new("deploy-rules");
    let generated = dir.path("fleet.yml");
    let out = std::process::Command::new(tracer_bin())
        .args([
            "monitoring",
            "--runbook-base",
            "https://wiki.example/ops/cf521",
            "--job",
            "origins",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    std::fs::write(&generated, &out.stdout).unwrap();
    let (ok, msg) = promtool(&["check", "rules", generated.to_str().unwrap()]);
    assert!(ok, "promtool check rules (generated): {msg}");
    let object = std::fs::read_to_string(deploy("kubernetes/prometheus-rule.yaml")).unwrap();
    let object: serde_norway::Value = serde_norway::from_str(&object).unwrap();
    let groups = dir.path("object.yml");
    std::fs::write(&groups, serde_norway::to_string(&object["spec"]).unwrap()).unwrap();
    let (ok, msg) = promtool(&["check", "rules", groups.to_str().unwrap()]);
    assert!(
        ok,
        "promtool check rules (the PrometheusRule's spec): {msg}"
    );
    let untested: Vec<&&str> = alerts.iter().filter(|a| !fires.contains(a)).collect();
    assert!(
        untested.is_empty(),
        "alerts without a promtool test that fires them: {untested:?}"
    );
}

/// The agent in the lab with traffic of every kind: each metric and each label value the
/// dashboard's queries name is one the agent exports, and each query is valid PromQL.
#[test]
fn the_dashboard_queries_only_what_the_agent_exports() {
    let lab = Lab::new();
    let tmp = TempDir::new("deploy-dash");
    let tracer =
        integration_tests::agent::Agent::on(&lab.origin, "443,8080", "2", &tmp.path("log"))
            .start()
            .tracer;
    // A refusal on 443, and on 8080 an exchange the server closes after 300 ms idle: every
    // series family the dashboard draws exists (histograms appear with their port's first
    // observation).
    let _ = lab.edge.connect(EDGE_V4, sockaddr(ORIGIN_V4, 443), SHORT);
    let app = scenarios::http_server(
        lab.origin.listen("0.0.0.0", 8080, 16),
        Duration::from_millis(10),
        Duration::from_millis(300),
    );
    let mut conn = lab
        .edge
        .connect(EDGE_V4, sockaddr(ORIGIN_V4, 8080), SHORT)
        .expect("8080 accepts");
    assert!(scenarios::request(&mut conn).expect("an answer") > 0);
    let _ = app.join();
    let mut text = String::new();
    assert!(
        eventually(Duration::from_secs(8), || {
            text = lab
                .origin
                .http_get("127.0.0.1:10521", "/metrics")
                .map(|(_, b)| b)
                .unwrap_or_default();
            metric(&text, "tracer_edge_idle_close_seconds_count{port=\"8080\"}") == Some(1.0)
        }),
        "{text}"
    );
    tracer.stop();
    let exported: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();

    let dash: Value = serde_json::from_str(
        &std::fs::read_to_string(deploy("grafana/cf521-tracer.json")).unwrap(),
    )
    .expect("the dashboard is JSON");
    let mut exprs: Vec<String> = Vec::new();
    for p in dash["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().unwrap() {
            exprs.push(t["expr"].as_str().unwrap().to_string());
        }
    }
    // Changes the agents journaled mark every panel.
    let marks: Vec<&str> = dash["annotations"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|a| a["expr"].as_str())
        .collect();
    assert!(
        marks.iter().any(|e| e.contains("tracer_changes_total")),
        "{marks:?}"
    );
    exprs.extend(marks.iter().map(|e| e.to_string()));
    // Every query follows the job and cluster chosen: none hard-codes a job.
    let variables: Vec<&str> = dash["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v["name"].as_str())
        .collect();
    for needed in ["datasource", "job", "cluster", "instance", "port"] {
        assert!(
            variables.contains(&needed),
            "no ${needed} variable: {variables:?}"
        );
    }
    for e in &exprs {
        assert!(
            e.contains("job=~\"$job\"") && e.contains("cluster=~\"$cluster\""),
            "a query ignores the job or cluster chosen: {e}"
        );
    }
    // No import input the dashboard does not use.
    let raw = std::fs::read_to_string(deploy("grafana/cf521-tracer.json")).unwrap();
    for input in dash["__inputs"].as_array().into_iter().flatten() {
        let name = input["name"].as_str().unwrap();
        assert!(raw.contains(&format!("${{{name}}}")), "unused input {name}");
    }
    for v in dash["templating"]["list"].as_array().unwrap() {
        if let Some(q) = v["query"]["query"].as_str() {
            // label_values(METRIC{...}, LABEL)
            let inner = q
                .strip_prefix("label_values(")
                .and_then(|q| q.strip_suffix(')'))
                .expect("label_values query");
            let (metric_part, label) = inner.rsplit_once(',').unwrap();
            exprs.push(metric_part.trim().to_string());
            let name = metric_part.split('{').next().unwrap().trim();
            // `instance` and `job` are the labels Prometheus adds to every scraped series;
            // `cluster` the one a multi-cluster setup adds (external or target labels).
            let label = label.trim();
            assert!(
                ["instance", "job", "cluster"].contains(&label)
                    || text
                        .lines()
                        .any(|l| l.starts_with(name) && l.contains(&format!("{label}=\""))),
                "template {} asks for label {label} of {name}, which has none",
                v["name"]
            );
        }
    }
    assert!(exprs.len() >= 10, "{exprs:?}");
    let mut names = std::collections::BTreeSet::new();
    for e in &exprs {
        for word in e.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            if word.starts_with("tracer_") || word.starts_with("process_") {
                names.insert(word.to_string());
            }
        }
    }
    for n in &names {
        // A histogram's series are its family's: `_bucket`, `_count`, `_sum`.
        let family = ["_bucket", "_count", "_sum"]
            .iter()
            .find_map(|s| n.strip_suffix(s))
            .filter(|f| exported.contains(f))
            .unwrap_or(n.as_str());
        // Families whose labels are only known when the first event comes (the kernel's drop
        // reason) have no series before it; the tunnel tests see them exported.
        const BORN_ON_FIRST_EVENT: [&str; 1] = ["tracer_tunnel_syn_drops_total"];
        assert!(
            exported.contains(&family) || BORN_ON_FIRST_EVENT.contains(&family),
            "the dashboard queries {family}, which the agent does not export:\n{text}"
        );
    }
    for needed in [
        "tracer_edge_connections_total",
        "tracer_verdict",
        "tracer_events_lost_total",
        "tracer_ranges_fetched_timestamp_seconds",
    ] {
        assert!(names.contains(needed), "the dashboard shows {needed}");
    }
    // Each query is PromQL promtool accepts, with Grafana's variables filled in.
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, e) in exprs.iter().enumerate() {
        let e = e
            .replace("$__rate_interval", "5m")
            .replace("$instance", ".*")
            .replace("$port", ".*")
            .replace("$job", ".*")
            .replace("$cluster", ".*");
        rules += &format!(
            "      - record: dashboard:query{i}\n        expr: {}\n",
            serde_json::to_string(&e).unwrap()
        );
    }
    let file = tmp.path("dashboard-rules.yml");
    std::fs::write(&file, rules).unwrap();
    let (ok, msg) = promtool(&["check", "rules", "--lint=none", file.to_str().unwrap()]);
    assert!(ok, "the dashboard's queries: {msg}");
}

/// Every line the agent writes — events of every kind, attempts, losses, verdicts — is valid
/// against `deploy/schema/log-record.schema.json`, at both log levels.
#[test]
fn log_records_match_their_json_schema() {
    let schema: Value = serde_json::from_str(
        &std::fs::read_to_string(deploy("schema/log-record.schema.json")).unwrap(),
    )
    .expect("the schema is JSON");
    let validator = jsonschema::options()
        .should_validate_formats(true)
        .build(&schema)
        .expect("a valid JSON Schema");
    for level in ["failures", "all"] {
        let lab = Lab::new();
        let _server = scenarios::Server::start(
            lab.origin.listen("0.0.0.0", 443, 128),
            scenarios::ServerMode::Reset,
        );
        lab.origin.sh("nft add table inet filter; \
             nft add chain inet filter input '{ type filter hook input priority 0; }'; \
             nft add rule inet filter input tcp dport 2053 drop");
        let tmp = TempDir::new("deploy-schema");
        let log = tmp.path("log");
        let tracer = integration_tests::agent::Agent::on(&lab.origin, "443,2053,8080", "1", &log)
            .args(&["--log-events", level])
            .start()
            .tracer;
        for _ in 0..2 {
            let _ = lab.edge.connect(EDGE_V4, sockaddr(ORIGIN_V4, 8080), SHORT);
            let _ = lab.edge.connect(EDGE_V4, sockaddr(ORIGIN_V4, 2053), SHORT);
            if let Ok(mut c) = lab.edge.connect(EDGE_V4, sockaddr(ORIGIN_V4, 443), SHORT) {
                use std::io::Read as _;
                let _ = c.set_read_timeout(Some(SHORT));
                let _ = c.read(&mut [0u8; 16]);
            }
        }
        std::thread::sleep(Duration::from_secs(3));
        tracer.stop();
        let text = std::fs::read_to_string(&log).unwrap();
        let mut kinds = std::collections::BTreeSet::new();
        for line in text.lines() {
            let v: Value = serde_json::from_str(line).expect("each line is JSON");
            let errors: Vec<String> = validator.iter_errors(&v).map(|e| e.to_string()).collect();
            assert!(errors.is_empty(), "{level}: {line}\n{errors:#?}");
            kinds.insert(v["kind"].as_str().unwrap().to_string());
        }
        let expected: &[&str] = if level == "all" {
            &[
                "syn",
                "drop",
                "reset_sent",
                "established",
                "attempt",
                "verdict",
            ]
        } else {
            &["attempt", "verdict"]
        };
        for k in expected {
            assert!(kinds.contains(*k), "{level}: no {k} line in\n{text}");
        }
        // The schema is not vacuous: a record missing a field, or with a field of the wrong
        // type, fails it.
        let first_attempt: Value = text
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .find(|v| v["kind"] == "attempt")
            .unwrap();
        let mut broken = first_attempt.clone();
        broken.as_object_mut().unwrap().remove("syns");
        assert!(!validator.is_valid(&broken));
        let mut broken = first_attempt;
        broken["outcome"] = "maybe".into();
        assert!(!validator.is_valid(&broken));
    }
}
