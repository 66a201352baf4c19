//! Timing from the origin's kernel (#29): how long the edge's handshakes take, and how many
//! needed a retransmission — the 522 that is not a hard failure yet.

use std::time::Duration;

use integration_tests::{
    scenarios::{Server, ServerMode},
    sockaddr, Lab, Tracer, EDGE_V4, ORIGIN_V4,
};
use serde_json::Value;

/// Every other SYN-ACK the origin sends is lost (an nft rule on its way out): those
/// handshakes complete only after a retransmission, about a second later. The report's
/// `timing` says so — all handshakes counted, the slowest over a second, the retransmissions
/// counted — and the text gives it a line.
#[test]
fn lost_synacks_show_in_the_handshake_times() {
    let lab = Lab::new();
    let _server = Server::start(lab.origin.listen("0.0.0.0", 443, 128), ServerMode::Close);
    lab.origin.sh(
        "nft add table inet lossy; \
         nft add chain inet lossy out '{ type filter hook output priority 0; }'; \
         nft add rule inet lossy out tcp sport 443 'tcp flags & (syn | ack) == syn | ack' numgen inc mod 2 == 0 drop",
    );
    let tracer = Tracer::diagnose_with(&lab.origin, "443", "10", &[], &[]);
    let mut connected = 0;
    for _ in 0..6 {
        if lab
            .edge
            .connect(EDGE_V4, sockaddr(ORIGIN_V4, 443), Duration::from_secs(4))
            .is_ok()
        {
            connected += 1;
        }
    }
    let (code, out) = tracer.wait(Duration::from_secs(40));
    assert_eq!(code, 0, "{out}");
    let r: Value = serde_json::from_str(&out).unwrap();
    let t = &r["timing"];
    assert_eq!(connected, 6, "{r:#}");
    assert_eq!(t["handshake_ms"]["count"], 6, "{r:#}");
    assert!(t["handshake_ms"]["max"].as_f64().unwrap() >= 900.0, "{t:#}");
    let retransmitted = t["handshakes_after_syn_retransmits"].as_u64().unwrap()
        + t["handshakes_after_synack_retransmits"].as_u64().unwrap();
    assert!(retransmitted >= 3, "{t:#}");
    assert_eq!(r["verdict"], "healthy", "{r:#}");
    // The retransmissions are evidence of the verdict.
    let evidence = r["causes"][0]["evidence"].to_string();
    assert!(
        evidence.contains("edge handshakes completed only after a retransmission"),
        "{evidence}"
    );
}

/// Healthy traffic: every handshake timed, none retransmitted, all well under a second; the
/// text report has the line.
#[test]
fn healthy_handshakes_are_timed() {
    let lab = Lab::new();
    let _server = Server::start(lab.origin.listen("0.0.0.0", 443, 128), ServerMode::Close);
    let tracer = Tracer::start_env(
        &lab.origin,
        &[
            "diagnose",
            "--iface",
            integration_tests::ORIGIN_IF,
            "--port",
            "443",
            "--duration",
            "2",
        ],
        &[],
    );
    for _ in 0..5 {
        lab.edge
            .connect(EDGE_V4, sockaddr(ORIGIN_V4, 443), Duration::from_secs(2))
            .expect("443 serves");
    }
    let (code, out) = tracer.wait(Duration::from_secs(30));
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("Handshake time (edge, first SYN to final ACK)")
            && out.contains("over 5 handshakes;")
            && out.contains("0 needed the edge's SYN again, 0 the origin's SYN-ACK again"),
        "{out}"
    );
}

/// The agent exports each edge handshake's time in `tracer_edge_handshake_seconds{port}`.
#[test]
fn the_agent_exports_handshake_times() {
    use integration_tests::{agent::Agent, metric, TempDir};
    let lab = Lab::new();
    let _server = Server::start(lab.origin.listen("0.0.0.0", 443, 128), ServerMode::Close);
    let dir = TempDir::new(&format!("timing-agent-{}", lab.origin.name));
    let agent = Agent::on(&lab.origin, "443", "1", &dir.path("agent.log")).start();
    for _ in 0..3 {
        lab.edge
            .connect(EDGE_V4, sockaddr(ORIGIN_V4, 443), Duration::from_secs(2))
            .expect("443 serves");
    }
    let body = agent.metrics_until(Duration::from_secs(10), |m| {
        metric(m, "tracer_edge_handshake_seconds_count{port=\"443\"}") == Some(3.0)
    });
    // All three under a second (no retransmission here).
    assert_eq!(
        metric(
            &body,
            "tracer_edge_handshake_seconds_bucket{port=\"443\",le=\"1\"}"
        ),
        Some(3.0),
        "{body}"
    );
    agent.stop();
}
