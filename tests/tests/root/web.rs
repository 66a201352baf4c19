//! The agent's endpoint secured as a fleet runs it: `--web.config.file` (the exporter-toolkit
//! format node_exporter reads) with TLS and basic authentication, scraped with curl as
//! Prometheus would; `/history` beyond this host only with `--web.enable-history`.

use std::{path::PathBuf, process::Command, time::Duration};

use integration_tests::{agent::Agent, *};

/// `s3cret`, hashed as `htpasswd -nBC 10` would.
const HASH: &str = "$2b$10$/D87B8v6ypnzs1tNaa4bjevHNWY3OSJDo89vUHvpP1mR.zmX1KBe6";

fn testdata(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tracer/src/output/testdata/web")
        .join(name)
}

/// The HTTP status curl got from `url` in `ns` (000: no HTTP answer at all), with `extra`
/// curl options.
fn status(ns: &Netns, url: &str, extra: &str) -> String {
    ns.sh(&format!(
        "curl -s -o /dev/null -w '%{{http_code}}' --max-time 5 {extra} {url} || true"
    ))
    .trim()
    .to_string()
}

#[test]
fn tls_and_basic_auth_guard_metrics_and_history_but_not_healthz() {
    let lab = Lab::new();
    let dir = TempDir::new(&format!("web-tls-{}", lab.origin.name));
    for f in ["server.crt", "server.key"] {
        std::fs::copy(testdata(f), dir.path(f)).unwrap();
    }
    let config = dir.path("web.yml");
    std::fs::write(
        &config,
        format!(
            "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\nbasic_auth_users:\n  prometheus: {HASH}\n"
        ),
    )
    .unwrap();
    let agent = Agent::on(&lab.origin, "8080", "1", &dir.path("agent.log"))
        .metrics_addr("0.0.0.0:10521")
        .args(&["--web.config.file", config.to_str().unwrap()])
        .start();
    let ca = format!("--cacert {}", dir.path("server.crt").display());
    let https = |path: &str| format!("https://127.0.0.1:10521{path}");
    assert!(
        eventually(Duration::from_secs(10), || status(
            &lab.origin,
            &https("/healthz"),
            &ca
        ) == "200"),
        "/healthz over TLS, without a password: {}",
        agent.tracer.stderr_text()
    );
    assert_eq!(status(&lab.origin, &https("/metrics"), &ca), "401");
    assert_eq!(
        status(
            &lab.origin,
            &https("/metrics"),
            &format!("{ca} -u prometheus:wrong")
        ),
        "401"
    );
    assert_eq!(
        status(
            &lab.origin,
            &https("/metrics"),
            &format!("{ca} -u nobody:s3cret")
        ),
        "401"
    );
    let body = lab.origin.sh(&format!(
        "curl -sf --max-time 5 {ca} -u prometheus:s3cret {}",
        https("/metrics")
    ));
    assert!(body.contains("tracer_windows_total"), "{body}");
    // The history answers this host with the password, and another host not at all.
    assert_eq!(
        status(
            &lab.origin,
            &https("/history"),
            &format!("{ca} -u prometheus:s3cret")
        ),
        "200"
    );
    assert_eq!(status(&lab.origin, &https("/history"), &ca), "401");
    let remote = format!("https://{ORIGIN_V4}:10521/history");
    assert_eq!(status(&lab.edge, &remote, "-k -u prometheus:s3cret"), "403");
    // Plain HTTP gets no answer from a TLS endpoint.
    assert_ne!(
        status(&lab.origin, "http://127.0.0.1:10521/metrics", ""),
        "200"
    );
    agent.stop();
}

#[test]
fn history_reaches_other_hosts_only_when_asked() {
    let lab = Lab::new();
    let dir = TempDir::new(&format!("web-history-{}", lab.origin.name));
    let remote = format!("http://{ORIGIN_V4}:10521/history");
    for (flag, wanted) in [(None, "403"), (Some("--web.enable-history"), "200")] {
        let mut run = Agent::on(&lab.origin, "8080", "1", &dir.path("agent.log"))
            .metrics_addr("0.0.0.0:10521");
        if let Some(f) = flag {
            run = run.args(&[f]);
        }
        let agent = run.start();
        assert!(eventually(Duration::from_secs(10), || status(
            &lab.origin,
            "http://127.0.0.1:10521/history",
            ""
        ) == "200"));
        assert_eq!(status(&lab.edge, &remote, ""), wanted, "{flag:?}");
        // Metrics answer every host: what to expose is the address's choice.
        assert_eq!(
            status(&lab.edge, &format!("http://{ORIGIN_V4}:10521/metrics"), ""),
            "200"
        );
        agent.stop();
    }
}

/// A config that cannot be used stops the agent at start, before it loads anything, with one
/// line naming the fix.
#[test]
fn a_bad_web_config_is_one_line_at_start() {
    let dir = TempDir::new("web-bad");
    let cases = [
        ("missing.yml", None, "cannot read the web config"),
        (
            "typo.yml",
            Some("basic_auth_user:\n  prometheus: x\n"),
            "unknown field `basic_auth_user`",
        ),
        (
            "plain.yml",
            Some("basic_auth_users:\n  prometheus: hunter2\n"),
            "htpasswd -nBC 10 prometheus",
        ),
        (
            "nocert.yml",
            Some("tls_server_config:\n  cert_file: none.crt\n  key_file: none.key\n"),
            "cannot read the certificate file",
        ),
    ];
    for (name, text, wanted) in cases {
        let path = dir.path(name);
        if let Some(t) = text {
            std::fs::write(&path, t).unwrap();
        }
        let out = Command::new(tracer_bin())
            .args(["agent", "--iface", "lo", "--web.config.file"])
            .arg(&path)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{name}: started");
        let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "{name}: {err}");
        assert!(
            lines[0].contains("--web.config.file") && lines[0].contains(wanted),
            "{name}: {err}"
        );
    }
}
