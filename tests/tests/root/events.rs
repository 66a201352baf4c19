//! `tracer events` on the real kernel: each scenario in its own namespaces, exact counts.

use std::{io::Write as _, time::Duration};

use integration_tests::*;

const PORT: u16 = 8080;
/// Below the kernel's first SYN retransmission (1 s): one SYN per attempt.
const SHORT: Duration = Duration::from_millis(500);

thread_local! {
    /// The arrival hook the scenarios below run with: the default (TC on the lab's veth), or
    /// XDP when `event_scenarios_with_the_xdp_hook` runs them again on its own thread.
    static HOOK: std::cell::Cell<&'static str> = const { std::cell::Cell::new("auto") };
}

fn events(lab: &Lab, extra: &[&str]) -> Tracer {
    events_on(lab, "8080", extra)
}

fn events_on(lab: &Lab, ports: &str, extra: &[&str]) -> Tracer {
    let mut args = vec![
        "events", "--iface", ORIGIN_IF, "--port", ports, "--format", "json",
    ];
    if !extra.contains(&"--hook") {
        args.extend(["--hook", HOOK.get()]);
    }
    args.extend_from_slice(extra);
    Tracer::start(&lab.origin, &args)
}

/// Every event scenario again with XDP as the arrival hook: the same events from either.
#[test]
fn event_scenarios_with_the_xdp_hook() {
    HOOK.set("xdp");
    syn_to_closed_port_is_refused_by_the_stack();
    listener_on_loopback_only_refuses_edge_syns();
    nft_drop_is_a_netfilter_drop();
    iptables_reject_with_tcp_reset_is_the_firewalls_rst();
    completed_handshake_is_established();
    application_reset_after_accept();
    full_accept_queue_drops_syns_silently();
    ipv6_closed_port_and_handshake();
    ipv6_nft_drop();
    non_edge_peers_only_with_all_peers();
    drop_inside_the_edge_namespace_is_not_the_origins();
    ranges_file_changes_what_is_edge();
    dual_stack_listener_reports_ipv4_peers_as_ipv4();
}

fn assert_counts(ev: &[serde_json::Value], expected: &[(&str, Option<&str>, usize)]) {
    for (kind, reason, n) in expected {
        assert_eq!(
            count(ev, kind, *reason),
            *n,
            "{kind} {reason:?}: expected {n}; events:\n{}",
            summary(ev)
        );
    }
}

#[test]
fn syn_to_closed_port_is_refused_by_the_stack() {
    let lab = Lab::new();
    let tracer = events(&lab, &[]);
    let r = lab.edge.connect(EDGE_V4, sockaddr(ORIGIN_V4, PORT), SHORT);
    assert_eq!(r.unwrap_err().kind(), std::io::ErrorKind::ConnectionRefused);
    let ev = tracer.stop();
    assert_counts(
        &ev,
        &[
            ("syn", None, 1),
            ("reset_sent", Some("NO_SOCKET"), 1),
            ("drop", Some("NO_SOCKET"), 1),
            ("established", None, 0),
            ("loss", None, 0),
        ],
    );
    let syn = ev.iter().find(|e| e["kind"] == "syn").unwrap();
    assert_eq!(syn["peer_addr"], EDGE_V4);
    assert_eq!(syn["local_addr"], ORIGIN_V4);
    assert_eq!(syn["local_port"], PORT);
    assert_eq!(syn["edge"], true);
    let rst = ev.iter().find(|e| e["kind"] == "reset_sent").unwrap();
    assert_eq!(rst["socket"], false);
    assert_eq!(rst["peer_port"], syn["peer_port"]);
}

#[test]
fn listener_on_loopback_only_refuses_edge_syns() {
    let lab = Lab::new();
    let _listener = lab.origin.listen("127.0.0.1", PORT, 16);
    let tracer = events(&lab, &[]);
    let r = lab.edge.connect(EDGE_V4, sockaddr(ORIGIN_V4, PORT), SHORT);
    assert!(r.is_err());
    let ev = tracer.stop();
    assert_counts(
        &ev,
        &[
            ("syn", None, 1),
            ("reset_sent", Some("NO_SOCKET"), 1),
            ("drop", Some("NO_SOCKET"), 1),
        ],
    );
}

#[test]
fn nft_drop_is_a_netfilter_drop() {
    let lab = Lab::new();
    let _listener = lab.origin.listen("0.0.0.0", PORT, 16);
    lab.origin.sh(&format!(
        "nft add table inet t521; \
         nft add chain inet t521 input '{{ type filter hook input priority 0; }}'; \
         nft add rule inet t521 input tcp dport {PORT} drop"
    ));
    let tracer = events(&lab, &[]);
    let r = lab.edge.connect(EDGE_V4, sockaddr(ORIGIN_V4, PORT), SHORT);
    assert_eq!(r.unwrap_err().kind(), std::io::ErrorKind::TimedOut);
    let ev = tracer.stop();
    assert_counts(
        &ev,
        &[
            ("syn", None, 1),
            ("drop", Some("NETFILTER_DROP"), 1),
            ("reset_sent", None, 0),
            ("established", None, 0),
        ],
    );
}

#[test]
fn iptables_reject_with_tcp_reset_is_the_firewalls_rst() {
    let lab = Lab::new();
    let _listener = lab.origin.listen("0.0.0.0", PORT, 16);
    lab.origin.sh(&format!(
        "iptables -A INPUT -p tcp --dport {PORT} -j REJECT --reject-with tcp-reset"
    ));
    let tracer = events(&lab, &[]);
    let r = lab.edge.connect(EDGE_V4, sockaddr(ORIGIN_V4, PORT), SHORT);
    assert_eq!(r.unwrap_err().kind(), std::io::ErrorKind::ConnectionRefused);
    let ev = tracer.stop();
    // netfilter builds the RST itself: no tcp_send_reset, the SYN is a NETFILTER_DROP.
    assert_counts(
        &ev,
        &[
            ("syn", None, 1),
            ("drop", Some("NETFILTER_DROP"), 1),
            ("reset_sent", None, 0),
        ],
    );
}

#[test]
fn completed_handshake_is_established() {
    let lab = Lab::new();
    let listener = lab.origin.listen("0.0.0.0", PORT, 16);
    let tracer = events(&lab, &[]);
    let client = lab
        .edge
        .connect(EDGE_V4, sockaddr(ORIGIN_V4, PORT), SHORT)
        .expect("connect");
    let (server, _) = listener.accept().expect("accept");
    drop(client);
    drop(server);
    let ev = tracer.stop();
    assert_counts(
        &ev,
        &[
            ("syn", None, 1),
            ("established", None, 1),
            ("reset_sent", None, 0),
        ],
    );
    // `events` shows every drop of a watched flow, teardown included: the kernel may purge a
    // closing socket's queue (QUEUE_PURGE, SOCKET_CLOSE) depending on which FIN came first.
    // Nothing else is dropped.
    let deciding: Vec<_> = ev
        .iter()
        .filter(|e| e["kind"] == "drop")
        .filter(|e| !matches!(e["reason"].as_str(), Some("QUEUE_PURGE" | "SOCKET_CLOSE")))
        .collect();
    assert!(deciding.is_empty(), "{}", summary(&ev));
    assert!(count(&ev, "closed", None) >= 1, "{}", summary(&ev));
}

#[test]
fn application_reset_after_accept() {
    let lab = Lab::new();
    let listener = lab.origin.listen("0.0.0.0", PORT, 16);
    let tracer = events(&lab, &[]);
    let mut client = lab
        .edge
        .connect(EDGE_V4, sockaddr(ORIGIN_V4, PORT), SHORT)
        .expect("connect");
    let (server, _) = listener.accept().expect("accept");
    // SO_LINGER 0: close() aborts with RST.
    socket2::SockRef::from(&server)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(server);
    std::thread::sleep(Duration::from_millis(100));
    let _ = client.write_all(b"x");
    let ev = tracer.stop();
    assert_counts(&ev, &[("syn", None, 1), ("established", None, 1)]);
    let resets: Vec<_> = ev.iter().filter(|e| e["kind"] == "reset_sent").collect();
    assert_eq!(resets.len(), 1, "{}", summary(&ev));
    assert_eq!(resets[0]["socket"], true);
    assert_eq!(resets[0]["peer_addr"], EDGE_V4);
}

#[test]
fn full_accept_queue_drops_syns_silently() {
    let lab = Lab::new();
    // Backlog 0: one connection fills the accept queue; it is never accepted.
    let _listener = lab.origin.listen("0.0.0.0", PORT, 0);
    let first = lab
        .edge
        .connect(EDGE_V4, sockaddr(ORIGIN_V4, PORT), SHORT)
        .expect("first connect");
    let tracer = events(&lab, &[]);
    let mut refused = 0;
    for _ in 0..3 {
        if lab
            .edge
            .connect(EDGE_V4, sockaddr(ORIGIN_V4, PORT), SHORT)
            .is_err()
        {
            refused += 1;
        }
    }
    assert_eq!(refused, 3, "the queue should have been full");
    let ev = tracer.stop();
    drop(first);
    assert_counts(
        &ev,
        &[
            ("syn", None, 3),
            ("established", None, 0),
            ("reset_sent", None, 0),
            ("drop", Some("NETFILTER_DROP"), 0),
            ("drop", Some("NO_SOCKET"), 0),
        ],
    );
}

#[test]
fn ipv6_closed_port_and_handshake() {
    let lab = Lab::new();
    let listener = lab.origin.listen("::", 443, 16);
    let tracer = events_on(&lab, "8080,443", &[]);
    let r = lab.edge.connect(EDGE_V6, sockaddr(ORIGIN_V6, PORT), SHORT);
    assert!(r.is_err());
    let client = lab
        .edge
        .connect(EDGE_V6, sockaddr(ORIGIN_V6, 443), SHORT)
        .expect("connect v6");
    let (server, _) = listener.accept().expect("accept");
    drop((client, server));
    let ev = tracer.stop();
    assert_counts(
        &ev,
        &[
            ("syn", None, 2),
            ("reset_sent", Some("NO_SOCKET"), 1),
            ("drop", Some("NO_SOCKET"), 1),
            ("established", None, 1),
        ],
    );
    for e in ev.iter().filter(|e| e["kind"] != "loss") {
        assert_eq!(e["peer_addr"], EDGE_V6, "{}", summary(&ev));
        assert_eq!(e["edge"], true);
    }
}

#[test]
fn ipv6_nft_drop() {
    let lab = Lab::new();
    lab.origin.sh(&format!(
        "nft add table inet t521; \
         nft add chain inet t521 input '{{ type filter hook input priority 0; }}'; \
         nft add rule inet t521 input ip6 saddr 2606:4700::/32 tcp dport {PORT} drop"
    ));
    let tracer = events(&lab, &[]);
    assert!(lab
        .edge
        .connect(EDGE_V6, sockaddr(ORIGIN_V6, PORT), SHORT)
        .is_err());
    let ev = tracer.stop();
    assert_counts(
        &ev,
        &[("syn", None, 1), ("drop", Some("NETFILTER_DROP"), 1)],
    );
}

/// One refused attempt from a non-edge and one from an edge address, seen by `events EXTRA`.
fn refused_from_both(lab: &Lab, extra: &[&str]) -> Vec<serde_json::Value> {
    let tracer = events(lab, extra);
    for from in [OTHER_V4, EDGE_V4] {
        assert!(lab
            .edge
            .connect(from, sockaddr(ORIGIN_V4, PORT), SHORT)
            .is_err());
    }
    tracer.stop()
}

#[test]
fn non_edge_peers_only_with_all_peers() {
    let lab = Lab::new();
    let ev = refused_from_both(&lab, &[]);
    assert_eq!(count_from(&ev, "syn", OTHER_V4), 0, "{}", summary(&ev));
    assert_eq!(count_from(&ev, "reset_sent", OTHER_V4), 0);
    assert_eq!(count_from(&ev, "syn", EDGE_V4), 1);

    let ev = refused_from_both(&lab, &["--all-peers"]);
    assert_eq!(count_from(&ev, "syn", OTHER_V4), 1, "{}", summary(&ev));
    assert_eq!(count_from(&ev, "reset_sent", OTHER_V4), 1);
    assert_eq!(count_from(&ev, "drop", OTHER_V4), 1);
    assert_eq!(count_from(&ev, "syn", EDGE_V4), 1);
    let other = ev.iter().find(|e| e["peer_addr"] == OTHER_V4).unwrap();
    assert_eq!(other["edge"], false);
}

#[test]
fn drop_inside_the_edge_namespace_is_not_the_origins() {
    let lab = Lab::new();
    // The edge drops its own SYNs on the way out: a drop in another namespace.
    lab.edge.sh(&format!(
        "nft add table inet t521; \
         nft add chain inet t521 output '{{ type filter hook output priority 0; }}'; \
         nft add rule inet t521 output tcp dport {PORT} drop"
    ));
    let tracer = events(&lab, &["--all-peers"]);
    assert!(lab
        .edge
        .connect(EDGE_V4, sockaddr(ORIGIN_V4, PORT), SHORT)
        .is_err());
    let ev = tracer.stop();
    assert!(ev.is_empty(), "origin saw events:\n{}", summary(&ev));
}

#[test]
fn ranges_file_changes_what_is_edge() {
    let lab = Lab::new();
    let dir = std::env::temp_dir().join(format!("t521-ranges-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("ranges.txt");
    std::fs::write(&file, "# lab\n192.0.2.0/24\n").unwrap();
    let tracer = events(&lab, &["--ranges", file.to_str().unwrap()]);
    assert!(lab
        .edge
        .connect(OTHER_V4, sockaddr(ORIGIN_V4, PORT), SHORT)
        .is_err());
    assert!(lab
        .edge
        .connect(EDGE_V4, sockaddr(ORIGIN_V4, PORT), SHORT)
        .is_err());
    let ev = tracer.stop();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(count_from(&ev, "syn", OTHER_V4), 1, "{}", summary(&ev));
    assert_eq!(count_from(&ev, "syn", EDGE_V4), 0);
}

#[test]
fn dual_stack_listener_reports_ipv4_peers_as_ipv4() {
    let lab = Lab::new();
    let listener = lab.origin.listen("::", PORT, 16);
    let tracer = events(&lab, &[]);
    let client = lab
        .edge
        .connect(EDGE_V4, sockaddr(ORIGIN_V4, PORT), SHORT)
        .expect("connect");
    let (server, _) = listener.accept().expect("accept");
    drop((client, server));
    let ev = tracer.stop();
    // The socket says ::ffff:173.245.48.10; the event must match the IPv4 SYN.
    let est: Vec<_> = ev.iter().filter(|e| e["kind"] == "established").collect();
    assert_eq!(est.len(), 1, "{}", summary(&ev));
    assert_eq!(est[0]["peer_addr"], EDGE_V4);
    assert_eq!(est[0]["local_addr"], ORIGIN_V4);
    assert_eq!(est[0]["edge"], true);
}

#[test]
fn every_hook_attaches_on_this_kernel() {
    let lab = Lab::new();
    for args in [
        vec!["events", "--iface", ORIGIN_IF, "--all-peers"],
        vec!["diagnose", "--iface", ORIGIN_IF, "--duration", "30"],
        vec!["agent", "--iface", ORIGIN_IF, "--log-file", "/dev/null"],
    ] {
        let tracer = Tracer::start(&lab.origin, &args);
        let stderr = tracer.stderr_text();
        drop(tracer);
        // Notes name hooks that could not be attached; on this kernel there must be none.
        assert!(
            !stderr.contains("not traced")
                && !stderr.contains("could not")
                && !stderr.contains("unavailable"),
            "{args:?}: {stderr}"
        );
    }
}

#[test]
fn tc_on_veth_xdp_when_asked_native_when_forced() {
    let lab = Lab::new();
    let link = || lab.origin.sh(&format!("ip link show {ORIGIN_IF}"));
    // auto: a veth gets TC ingress (tcx), no XDP at all.
    let auto = events(&lab, &[]);
    assert!(
        auto.stderr_text().contains("is a veth: TC ingress (tcx)"),
        "{}",
        auto.stderr_text()
    );
    assert!(!link().contains("xdp"), "{}", link());
    drop(auto);
    // --hook xdp: generic XDP on a veth, said to cost more.
    let xdp = events(&lab, &["--hook", "xdp"]);
    assert!(link().contains("xdpgeneric"), "{}", link());
    assert!(
        xdp.stderr_text().contains("generic XDP forced"),
        "{}",
        xdp.stderr_text()
    );
    drop(xdp);
    // --hook xdp --xdp-mode driver: native XDP, and it sees SYNs.
    let forced = events(&lab, &["--hook", "xdp", "--xdp-mode", "driver"]);
    let l = link();
    assert!(l.contains("xdp") && !l.contains("xdpgeneric"), "{l}");
    assert!(lab
        .edge
        .connect(EDGE_V4, sockaddr(ORIGIN_V4, PORT), SHORT)
        .is_err());
    let ev = forced.stop();
    assert_eq!(count(&ev, "syn", None), 1, "{}", summary(&ev));
}
