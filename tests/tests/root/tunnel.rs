//! Cloudflare Tunnel origins (#31): a stand-in `cloudflared` (tests/src/tunnel.rs says why
//! and how it dials as the real one does) in the origin namespace. No edge SYN arrives; the
//! verdict comes from its dials and what it holds toward the edge.

use std::time::Duration;

use integration_tests::{
    scenarios::{verdict_of, Server, ServerMode},
    sockaddr,
    tunnel::StandIn,
    Lab, Tracer, EDGE_V4,
};
use serde_json::Value;

/// A two-second diagnosis in the lab's origin namespace.
fn diagnose(lab: &Lab, args: &[&str]) -> Value {
    let tracer = Tracer::diagnose_on(
        &lab.origin,
        integration_tests::ORIGIN_IF,
        "443",
        "2",
        args,
        &[],
    );
    let (code, out) = tracer.wait(Duration::from_secs(20));
    assert_eq!(code, 0, "{out}");
    serde_json::from_str(&out).expect("one JSON report")
}

fn texts(v: &Value) -> String {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join("\n")
        })
        .unwrap_or_default()
}

/// `localhost` resolving to ::1 while the service listens on 127.0.0.1 only: 502, both
/// addresses named, the fix in cloudflared's ingress terms and the server's.
#[test]
fn localhost_dialled_as_ipv6_while_the_service_listens_on_ipv4_is_named() {
    let r =
        verdict_of("tunnel: cloudflared dials [::1]:8080, the service listens on 127.0.0.1:8080");
    let cause = &r["causes"][0];
    assert_eq!(cause["cloudflare_error"], 502, "{r:#}");
    let evidence = texts(&cause["evidence"]);
    assert!(
        evidence.contains("dialled [::1]:8080; the service listens on 127.0.0.1:8080 only"),
        "{r:#}"
    );
    assert!(evidence.contains("ECONNREFUSED"), "{r:#}");
    let steps = texts(&cause["next_steps"]);
    assert!(steps.contains("`service: http://127.0.0.1:8080`"), "{r:#}");
    assert!(steps.contains("[::1]:8080"), "{r:#}");
    let t = &r["tunnel"];
    assert_eq!(t["process_name"], "cloudflared");
    assert_eq!(t["processes"][0]["name"], "cloudflared");
    assert_eq!(t["running"], true);
    let service = &t["services"][0];
    assert_eq!(service["target"], "[::1]:8080", "{r:#}");
    assert_eq!(service["connected"], 0, "{r:#}");
    assert!(
        service["errors"]["ECONNREFUSED"].as_u64() >= Some(5),
        "{r:#}"
    );
    assert_eq!(service["listeners"], serde_json::json!(["127.0.0.1:8080"]));
    // Its tunnel connection to the edge is up: not tunnel_down.
    assert_eq!(t["edge"]["tcp_established"], 1, "{r:#}");
    assert!(
        r["causes"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["verdict"] != "tunnel_down" && c["verdict"] != "never_arriving"),
        "{r:#}"
    );
    assert!(texts(&r["notes"]).contains("through the tunnel"), "{r:#}");
}

#[test]
fn the_service_down_behind_the_tunnel_is_refused() {
    let r = verdict_of("tunnel: the service behind cloudflared is down");
    let evidence = texts(&r["causes"][0]["evidence"]);
    assert!(evidence.contains("dialled 127.0.0.1:8080"), "{r:#}");
    assert!(evidence.contains("refused (ECONNREFUSED)"), "{r:#}");
    assert!(evidence.contains("nothing listens on port 8080"), "{r:#}");
    assert_eq!(
        r["tunnel"]["services"][0]["listeners"],
        serde_json::json!([])
    );
}

#[test]
fn no_connection_to_the_edge_is_tunnel_down() {
    let r = verdict_of("tunnel: cloudflared cannot connect to the edge");
    let cause = &r["causes"][0];
    assert_eq!(cause["cloudflare_error"], 1033, "{r:#}");
    let evidence = texts(&cause["evidence"]);
    assert!(evidence.contains("no TCP connection to port 7844"), "{r:#}");
    assert!(evidence.contains("refused (ECONNREFUSED)"), "{r:#}");
    let edge = &r["tunnel"]["edge"];
    assert_eq!(edge["tcp_established"], 0);
    assert!(edge["errors"]["ECONNREFUSED"].as_u64() >= Some(1), "{r:#}");
    // The service itself is reached.
    assert_eq!(r["tunnel"]["services"][0]["failed"], 0, "{r:#}");
}

#[test]
fn a_healthy_tunnel_origin_has_no_tunnel_cause() {
    let r = verdict_of("tunnel: a healthy tunnel origin");
    let verdicts: Vec<&str> = r["causes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["verdict"].as_str())
        .collect();
    assert_eq!(verdicts, ["healthy"], "{r:#}");
    let service = &r["tunnel"]["services"][0];
    assert!(service["connected"].as_u64() >= Some(5), "{r:#}");
    assert_eq!(service["failed"], 0, "{r:#}");
    assert_eq!(r["tunnel"]["edge"]["tcp_established"], 1, "{r:#}");
}

/// A renamed binary is found only by `--tunnel-process`; without a tunnel the report says
/// `tunnel: null` and nothing arriving is never_arriving, as before.
#[test]
fn a_renamed_tunnel_binary_is_watched_by_its_name() {
    let lab = Lab::new();
    let _edge = Server::start(lab.edge.listen(EDGE_V4, 7844, 16), ServerMode::Hold);
    let _tunnel = StandIn::named(
        c"edge-tunnel",
        &lab.origin,
        &["127.0.0.1:8080".parse().unwrap()],
        Some(sockaddr(EDGE_V4, 7844)),
    );
    let report = |args: &[&str]| diagnose(&lab, args);
    let r = report(&[]);
    assert_eq!(r["verdict"], "never_arriving", "{r:#}");
    assert_eq!(r["tunnel"], Value::Null, "{r:#}");
    let r = report(&["--tunnel-process", "edge-tunnel"]);
    assert_eq!(r["verdict"], "tunnel_origin_unreachable", "{r:#}");
    assert_eq!(r["tunnel"]["processes"][0]["name"], "edge-tunnel", "{r:#}");
}

/// The agent counts the tunnel's dials by outcome and gives the window its verdict.
#[test]
fn the_agent_counts_the_tunnels_dials() {
    use integration_tests::{agent::Agent, metric, TempDir};
    let lab = Lab::new();
    let _edge = Server::start(lab.edge.listen(EDGE_V4, 7844, 16), ServerMode::Hold);
    let dir = TempDir::new(&format!("tunnel-agent-{}", lab.origin.name));
    // 8080: nothing listens (refused); 8081: a firewall rule drops the SYNs.
    lab.origin.sh("nft add table inet t; \
         nft add chain inet t output '{ type filter hook output priority 0; }'; \
         nft add rule inet t output oif lo tcp dport 8081 drop");
    let _tunnel = StandIn::start(
        &lab.origin,
        &[
            "127.0.0.1:8080".parse().unwrap(),
            "127.0.0.1:8081".parse().unwrap(),
        ],
        Some(sockaddr(EDGE_V4, 7844)),
    );
    let agent = Agent::on(&lab.origin, "443", "1", &dir.path("agent.log")).start();
    let body = agent.metrics_until(Duration::from_secs(12), |m| {
        metric(m, "tracer_verdict{verdict=\"tunnel_origin_unreachable\"}") == Some(1.0)
            && metric(
                m,
                "tracer_tunnel_dials_total{outcome=\"refused\",to=\"service\"}",
            )
            .is_some_and(|n| n >= 3.0)
            && metric(
                m,
                "tracer_tunnel_syn_drops_total{reason=\"NETFILTER_DROP\",to=\"service\"}",
            )
            .is_some_and(|n| n >= 2.0)
    });
    assert_eq!(
        metric(&body, "tracer_tunnel_processes"),
        Some(1.0),
        "{body}"
    );
    assert_eq!(
        metric(&body, "tracer_tunnel_edge_connections{transport=\"tcp\"}"),
        Some(1.0),
        "{body}"
    );
    agent.stop();
}

/// A firewall rule dropping loopback traffic to the service (real nftables in the origin's
/// output path): cloudflared's dials go unanswered while a listener takes the address, and the
/// rule between them is what is named.
#[test]
fn a_firewall_between_cloudflared_and_the_service_is_named() {
    // On the output path the dropped SYN still holds cloudflared's socket; on the input path
    // (after loopback) it holds none and is matched by where it went.
    for chain in ["output", "input"] {
        let lab = Lab::new();
        let _service = Server::start(lab.origin.listen("127.0.0.1", 8080, 16), ServerMode::Close);
        let _edge = Server::start(lab.edge.listen(EDGE_V4, 7844, 16), ServerMode::Hold);
        let iface = if chain == "output" { "oif" } else { "iif" };
        lab.origin.sh(&format!(
            "nft add table inet t; \
             nft add chain inet t {chain} '{{ type filter hook {chain} priority 0; }}'; \
             nft add rule inet t {chain} {iface} lo tcp dport 8080 drop"
        ));
        let _tunnel = StandIn::start(
            &lab.origin,
            &["127.0.0.1:8080".parse().unwrap()],
            Some(sockaddr(EDGE_V4, 7844)),
        );
        let r = diagnose(&lab, &[]);
        assert_eq!(r["verdict"], "tunnel_origin_unreachable", "{chain}: {r:#}");
        let evidence = texts(&r["causes"][0]["evidence"]);
        assert!(
            evidence.contains(
                "a listener takes 127.0.0.1:8080 (127.0.0.1:8080): the SYNs never reached it"
            ),
            "{chain}: {r:#}"
        );
        assert!(
            evidence.contains("of cloudflared's SYNs to 127.0.0.1:8080 (NETFILTER_DROP"),
            "{chain}: {r:#}"
        );
        assert!(
            evidence.contains("given up by the process before an answer"),
            "{chain}: {r:#}"
        );
        assert!(
            texts(&r["causes"][0]["next_steps"]).contains("nft list ruleset"),
            "{chain}: {r:#}"
        );
        let service = &r["tunnel"]["services"][0];
        assert_eq!(service["connected"], 0, "{chain}: {r:#}");
        let drops = service["syn_drops"]["NETFILTER_DROP"].as_u64().unwrap_or(0);
        // Each dial's first SYN at least (a retransmission after 1 s may be dropped too).
        assert!(
            drops >= service["dials"].as_u64().unwrap() && drops > 0,
            "{chain}: {r:#}"
        );
        // The edge's connection is untouched: no SYN of it dropped.
        assert_eq!(
            r["tunnel"]["edge"]["syn_drops"],
            serde_json::json!({}),
            "{chain}: {r:#}"
        );
    }
}

/// QUIC, cloudflared's default transport: one unconnected UDP socket toward the edge. It
/// counts as a way to the edge (whether the edge answers on it is not in the socket tables):
/// a working service behind it is healthy, never tunnel_down.
#[test]
fn a_quic_tunnel_is_not_taken_for_down() {
    let lab = Lab::new();
    let _service = Server::start(lab.origin.listen("127.0.0.1", 8080, 16), ServerMode::Close);
    let _tunnel = StandIn::quic(
        &lab.origin,
        &["127.0.0.1:8080".parse().unwrap()],
        sockaddr(EDGE_V4, 7844),
    );
    let r = diagnose(&lab, &[]);
    assert_eq!(r["verdict"], "healthy", "{r:#}");
    let edge = &r["tunnel"]["edge"];
    assert_eq!(edge["udp_sockets"], 1, "{r:#}");
    assert_eq!(edge["tcp_established"], 0, "{r:#}");
    assert!(edge["udp_rcvbuf_errors"].is_u64(), "{r:#}");
}
