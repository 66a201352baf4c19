//! Edge connections the origin hands to a container: DNAT written as Docker writes it
//! (iptables nat PREROUTING -> DOCKER) and as nftables does, the container in a namespace of
//! its own behind the origin's. The tracer runs in the origin's namespace only.

use std::time::Duration;

use integration_tests::{
    scenarios::{verdict_of, SHORT},
    sockaddr, Lab, Tracer, CONTAINER_V4, CONTAINER_V6, EDGE_V4, ORIGIN_V4,
};
use serde_json::Value;

fn evidence(r: &Value) -> String {
    r["causes"][0]["evidence"].to_string()
}

fn only_backend(r: &Value) -> &Value {
    let b = r["backends"].as_array().expect("backends");
    assert_eq!(b.len(), 1, "{r:#}");
    &b[0]
}

#[test]
fn a_served_container_is_healthy_and_named() {
    let r = verdict_of("container behind Docker DNAT, serving");
    assert_eq!(r["edge"]["syn"], 5, "{r:#}");
    assert_eq!(r["edge"]["handshakes"], 5, "{r:#}");
    assert_eq!(r["edge"]["unanswered"], 0, "{r:#}");
    let b = only_backend(&r);
    assert_eq!(b["addr"], CONTAINER_V4);
    assert_eq!(b["port"], 80);
    assert_eq!(b["edge_port"], 443);
    assert!(b["netns"].as_u64().unwrap() > 0);
    assert!(
        b["dnat_rule"]
            .as_str()
            .is_some_and(|d| d.contains("chain DOCKER") && d.contains("dnat to 172.17.0.2:80")),
        "{b:#}"
    );
    assert_eq!(r["causes"][0]["backends"][0]["addr"], CONTAINER_V4);
    // The listener's own process: this test holds the container's socket.
    assert_eq!(b["pid"], std::process::id(), "{b:#}");
    // The container's listener is listed, marked with its namespace.
    let listeners = r["listeners"].as_array().unwrap();
    assert!(
        listeners
            .iter()
            .any(|l| l["port"] == 80 && l["netns"] == b["netns"]),
        "{r:#}"
    );
}

#[test]
fn nothing_listening_in_the_container_is_refused_there() {
    let r = verdict_of("container behind Docker DNAT, nothing listens");
    assert_eq!(r["edge"]["syn"], 3, "{r:#}");
    assert_eq!(r["edge"]["refused"], 3, "{r:#}");
    let ev = evidence(&r);
    assert!(ev.contains("nothing listens on 172.17.0.2:80 in"), "{ev}");
    assert!(
        ev.contains("port 443 is DNATed there by table ip nat chain DOCKER"),
        "{ev}"
    );
    assert_eq!(r["causes"][0]["backends"][0]["port"], 80);
}

#[test]
fn a_loopback_listener_in_the_container_is_named() {
    let r = verdict_of("container listens on its 127.0.0.1 only");
    assert_eq!(r["edge"]["refused"], 3, "{r:#}");
    let ev = evidence(&r);
    assert!(ev.contains("only on 127.0.0.1:80"), "{ev}");
    assert!(ev.contains("not on 172.17.0.2:80"), "{ev}");
    let steps = r["causes"][0]["next_steps"].to_string();
    assert!(steps.contains("0.0.0.0:80"), "{steps}");
}

#[test]
fn a_full_accept_queue_in_the_container_is_overload() {
    let r = verdict_of("container's accept queue full");
    assert_eq!(r["edge"]["syn"], 3, "{r:#}");
    assert_eq!(r["edge"]["handshakes"], 0, "{r:#}");
    assert_eq!(
        r["edge"]["unanswered"].as_u64().unwrap() + r["edge"]["overload_drops"].as_u64().unwrap(),
        3,
        "{r:#}"
    );
    let ev = evidence(&r);
    assert!(
        (ev.contains("accept queue of 0.0.0.0:80 in netns:[")
            || ev.contains("accept queue of 0.0.0.0:80 in container "))
            && ev.contains("was full"),
        "{ev}"
    );
    assert_eq!(r["causes"][0]["backends"][0]["port"], 80, "{r:#}");
}

#[test]
fn docker_user_drop_is_the_firewall_naming_the_chain() {
    let r = verdict_of("DOCKER-USER drops Cloudflare");
    assert_eq!(r["edge"]["syn"], 3, "{r:#}");
    assert_eq!(r["edge"]["firewall_drops"], 3, "{r:#}");
    let ev = evidence(&r);
    assert!(
        ev.contains("FORWARD → DOCKER-USER rule 1") && ev.contains("written by Docker"),
        "{ev}"
    );
    assert!(ev.contains("173.245.48.0/20"), "{ev}");
    assert!(
        r["causes"][0]["next_steps"]
            .to_string()
            .contains("DOCKER-USER"),
        "{r:#}"
    );
}

#[test]
fn ipv6_dnat_by_nftables_is_followed() {
    let r = verdict_of("container behind nftables IPv6 DNAT, nothing listens");
    assert_eq!(r["edge"]["syn"], 3, "{r:#}");
    assert_eq!(r["edge"]["refused"], 3, "{r:#}");
    let b = only_backend(&r);
    assert_eq!(b["addr"], CONTAINER_V6);
    assert!(
        evidence(&r).contains(&format!("nothing listens on [{CONTAINER_V6}]:80")),
        "{r:#}"
    );
    assert!(
        b["dnat_rule"]
            .as_str()
            .is_some_and(|d| d.contains("table ip6 nat chain prerouting")),
        "{b:#}"
    );
}

/// The container's own connections to edge addresses — one even from a watched port — are
/// not the edge's attempts: the counts stay exactly those of the edge's connections.
#[test]
fn the_containers_own_traffic_to_the_edge_does_not_count() {
    let lab = Lab::new();
    lab.wire_container();
    lab.docker_publish(443, 80);
    let _server = integration_tests::scenarios::Server::start(
        lab.container.listen("0.0.0.0", 80, 128),
        integration_tests::scenarios::ServerMode::Close,
    );
    let _edge_443 = integration_tests::scenarios::Server::start(
        lab.edge.listen(EDGE_V4, 443, 128),
        integration_tests::scenarios::ServerMode::Close,
    );
    let _edge_8443 = integration_tests::scenarios::Server::start(
        lab.edge.listen(EDGE_V4, 8443, 128),
        integration_tests::scenarios::ServerMode::Close,
    );
    let tracer = Tracer::diagnose(&lab.origin, "443,8443", "4");
    for _ in 0..3 {
        lab.container
            .connect(CONTAINER_V4, sockaddr(EDGE_V4, 443), SHORT)
            .expect("container to edge:443");
    }
    // From the container's port 443 (watched) to the edge.
    let from_watched = lab.container.enter(|| {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
        s.set_reuse_address(true)?;
        s.bind(&sockaddr(CONTAINER_V4, 443).into())?;
        s.connect_timeout(&sockaddr(EDGE_V4, 8443).into(), SHORT)
    });
    from_watched.expect("container port 443 to edge:8443");
    for _ in 0..2 {
        lab.edge
            .connect(EDGE_V4, sockaddr(ORIGIN_V4, 443), SHORT)
            .expect("edge to the published port");
    }
    let stderr = tracer.stderr_text();
    let (code, out) = tracer.wait(Duration::from_secs(30));
    assert_eq!(code, 0, "{stderr}");
    let r: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(r["verdict"], "healthy", "{r:#}");
    assert_eq!(r["edge"]["syn"], 2, "{r:#}");
    assert_eq!(r["edge"]["handshakes"], 2, "{r:#}");
    assert_eq!(r["non_edge"]["syn"], 0, "{r:#}");
}

/// The container stops mid-window (its namespace is deleted): the attempts it refused keep
/// their outcome, and the report says the backend went away.
#[test]
fn a_container_gone_mid_window_keeps_its_attempts() {
    let lab = Lab::new();
    lab.wire_container();
    lab.docker_publish(443, 80);
    let tracer = Tracer::diagnose(&lab.origin, "443", "4");
    for _ in 0..3 {
        let _ = lab.edge.connect(EDGE_V4, sockaddr(ORIGIN_V4, 443), SHORT);
    }
    lab.stop_container();
    let stderr = tracer.stderr_text();
    let (code, out) = tracer.wait(Duration::from_secs(30));
    assert_eq!(code, 0, "{stderr}");
    let r: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(r["verdict"], "refused", "{r:#}");
    assert_eq!(r["edge"]["refused"], 3, "{r:#}");
    let b = only_backend(&r);
    assert_eq!(b["gone"], true, "{b:#}");
    assert!(evidence(&r).contains("went away"), "{r:#}");
}

/// The agent through the container: every forwarded connection counted once on the port the
/// edge used, and a connection the container's application resets after accepting it counted
/// as an origin reset on that port too (`2053`, published to the container's `8080`).
#[test]
fn the_agent_counts_forwarded_connections_on_the_edges_port() {
    use integration_tests::{
        scenarios::{Server, ServerMode},
        TempDir,
    };
    const CONNECTIONS: usize = 300;
    let lab = Lab::new();
    lab.wire_container();
    lab.docker_publish(443, 80);
    lab.docker_publish(2053, 8080);
    let _serving = Server::start(lab.container.listen("0.0.0.0", 80, 512), ServerMode::Close);
    let _resetting = Server::start(
        lab.container.listen("0.0.0.0", 8080, 128),
        ServerMode::Reset,
    );
    let tmp = TempDir::new("agent-container");
    let log = tmp.path("events.jsonl");
    let agent = integration_tests::agent::Agent::on(&lab.origin, "443,2053", "2", &log).start();
    for _ in 0..CONNECTIONS {
        lab.edge
            .connect(EDGE_V4, sockaddr(ORIGIN_V4, 443), SHORT)
            .expect("edge to the published port");
    }
    for _ in 0..3 {
        // The resetting server's RST can beat connect()'s return: the handshake happened.
        if let Ok(mut c) = lab.edge.connect(EDGE_V4, sockaddr(ORIGIN_V4, 2053), SHORT) {
            use std::io::Read as _;
            let _ = c.set_read_timeout(Some(SHORT));
            let _ = c.read(&mut [0u8; 16]);
        }
    }
    let series = integration_tests::agent::connections;
    let expected = [
        (series(443, "handshake"), CONNECTIONS as f64),
        (series(443, "refused"), 0.0),
        (series(443, "unanswered"), 0.0),
        (series(2053, "handshake"), 3.0),
        (series(2053, "origin_reset"), 0.0),
        (
            "tracer_edge_resets_after_handshake_total{port=\"2053\"}".to_string(),
            3.0,
        ),
        ("tracer_open_attempts".to_string(), 0.0),
    ];
    agent.metrics_reach(Duration::from_secs(10), &expected);
}

/// Confined with less than the shipped forms grant (the capabilities to load and attach, not
/// CAP_SYS_PTRACE): the container cannot be looked into, and the report says so and which
/// capability shows it — never that the container went away.
#[test]
fn what_confinement_hides_is_said_never_inferred() {
    use integration_tests::{confine::Confinement, Tracer, ORIGIN_IF};
    let lab = Lab::new();
    lab.wire_container();
    lab.docker_publish(443, 80);
    let bare = Confinement {
        caps: vec!["bpf".into(), "perfmon".into(), "net_admin".into()],
        noroot: true,
        protect_proc: false,
        from: "this test",
    };
    let args = [
        "diagnose",
        "--iface",
        ORIGIN_IF,
        "--port",
        "443",
        "--duration",
        "4",
        "--format",
        "json",
    ];
    let tracer = Tracer::start_confined(&lab.origin, &args, &[], Some(&bare));
    for _ in 0..3 {
        let _ = lab.edge.connect(EDGE_V4, sockaddr(ORIGIN_V4, 443), SHORT);
    }
    let stderr = tracer.stderr_text();
    let (code, out) = tracer.wait(Duration::from_secs(30));
    assert_eq!(code, 0, "{stderr}");
    let r: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(r["verdict"], "refused", "{r:#}");
    let ev = evidence(&r);
    assert!(ev.contains("CAP_SYS_PTRACE"), "{ev}");
    assert!(!ev.contains("went away"), "{ev}");
    assert_ne!(only_backend(&r)["gone"], true, "{r:#}");
}
