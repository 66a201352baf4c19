//! Field verdicts on origins set up with the real tools (#15): the return path, fail2ban, ufw,
//! a stale allowlist, a server that closes first, a connection limit. Each asserts the
//! verdict, the counts, the evidence and a fix an admin can run on that host.

use integration_tests::{
    cause, lines as text, scenarios::verdict_of, EDGE2_V4, EDGE_V4, ORIGIN_IF, ROUTE_IF,
};
use serde_json::Value;

#[test]
fn replies_out_another_interface_are_the_return_path_not_overload() {
    let r = verdict_of("replies routed out another interface");
    assert_eq!(r["edge"]["syn"], 3, "{r:#}");
    assert_eq!(r["edge"]["unanswered"], 3, "{r:#}");
    assert_eq!(r["edge"]["overload_drops"], 0, "{r:#}");
    let c = cause(&r, "return_path");
    assert_eq!(c["attempts"], 3);
    assert_eq!(c["cloudflare_error"], 522);
    let ev = text(&c["evidence"]);
    assert!(
        ev.contains(&format!("dev {ROUTE_IF}")) && ev.contains(&format!("not {ORIGIN_IF}")),
        "{ev}"
    );
    assert!(ev.contains("(table 100)"), "{ev}");
    assert_eq!(c["peers"][0]["addr"], EDGE_V4, "{c:#}");
    assert_eq!(c["peers"][0]["attempts"], 3, "{c:#}");
    assert_eq!(c["peers"][0]["range"], "173.245.48.0/20", "{c:#}");
    let steps = text(&c["next_steps"]);
    assert!(steps.contains("ip rule add from 192.0.2.1"), "{steps}");
    assert!(!steps.contains("backlog="), "{steps}");
}

#[test]
fn strict_rp_filter_is_the_return_path_with_loose_mode() {
    let r = verdict_of("strict rp_filter drops the edge's SYNs");
    assert_eq!(r["edge"]["syn"], 3, "{r:#}");
    assert_eq!(r["edge"]["other_drops"], 3, "{r:#}");
    let c = cause(&r, "return_path");
    assert_eq!(c["attempts"], 3);
    let ev = text(&c["evidence"]);
    assert!(ev.contains("IP_RPFILTER"), "{ev}");
    assert!(ev.contains("strict (1)"), "{ev}");
    let steps = text(&c["next_steps"]);
    assert!(
        steps.contains(&format!("net.ipv4.conf.{ORIGIN_IF}.rp_filter=2")),
        "{steps}"
    );
    assert!(!steps.contains("dropreason-core.h"), "{steps}");
}

#[test]
fn fail2ban_ban_is_named_with_its_jail_and_unban_command() {
    let r = verdict_of("fail2ban banned an edge address");
    assert_eq!(r["edge"]["firewall_drops"], 3, "{r:#}");
    assert_eq!(r["non_edge"]["handshakes"], 2, "{r:#}");
    let c = cause(&r, "firewall_drop");
    // iptables-multiport rejects with an ICMP port unreachable: the edge sees 521.
    assert_eq!(c["cloudflare_error"], 521, "{c:#}");
    let ev = text(&c["evidence"]);
    assert!(
        ev.contains("INPUT → f2b-nginx-http-auth rule 1: ip saddr 173.245.48.10"),
        "{ev}"
    );
    assert!(ev.contains("fail2ban (jail nginx-http-auth)"), "{ev}");
    let steps = text(&c["next_steps"]);
    assert!(
        steps.contains(&format!(
            "fail2ban-client set nginx-http-auth unbanip {EDGE_V4}"
        )),
        "{steps}"
    );
    assert!(
        steps.contains("ignoreip") && steps.contains("CF-Connecting-IP"),
        "{steps}"
    );
    assert!(!steps.contains("inet filter"), "{steps}");
}

#[test]
fn ufw_default_deny_names_the_policy_and_gives_ufw_allow() {
    let r = verdict_of("ufw default deny, another source allowed");
    assert_eq!(r["edge"]["firewall_drops"], 3, "{r:#}");
    assert_eq!(r["non_edge"]["handshakes"], 2, "{r:#}");
    let c = cause(&r, "firewall_drop");
    let ev = text(&c["evidence"]);
    assert!(ev.contains("chain INPUT: policy drop"), "{ev}");
    assert!(ev.contains("written by ufw"), "{ev}");
    let steps = text(&c["next_steps"]);
    assert!(
        steps.contains("ufw allow from $r to any port 443 proto tcp"),
        "{steps}"
    );
}

/// The text report on the same host: every line fits a 100-column terminal, prose wrapped at
/// word boundaries, the ufw command (22 ranges) in its own block that still pastes as one
/// command; each note once.
#[test]
fn the_text_report_fits_100_columns() {
    use integration_tests::{scenarios, Lab, Tracer};
    let s = scenarios::by_name("ufw default deny, another source allowed");
    let lab = Lab::new();
    let keep = (s.setup)(&lab);
    let window = scenarios::WINDOW_SECS.to_string();
    let tracer = Tracer::start_env(
        &lab.origin,
        &[
            "diagnose",
            "--iface",
            ORIGIN_IF,
            "--port",
            s.ports,
            "--duration",
            &window,
            "--format",
            "text",
        ],
        &[],
    );
    (s.traffic)(&lab);
    let stderr = tracer.stderr_text();
    let (code, out) = tracer.wait(std::time::Duration::from_secs(scenarios::WINDOW_SECS + 20));
    drop(keep);
    assert_eq!(code, 0, "{stderr}");
    assert!(out.starts_with("VERDICT: firewall_drop"), "{out}");
    for line in out.lines() {
        assert!(
            line.chars().count() <= 100,
            "{} columns: {line}\n{out}",
            line.chars().count()
        );
    }
    // The command block: continuation lines joined back are one `for ... done` command.
    let lines: Vec<&str> = out.lines().collect();
    let start = lines
        .iter()
        .position(|l| l.trim_start().starts_with("for r in "))
        .unwrap_or_else(|| panic!("no command block:\n{out}"));
    let mut cmd = String::new();
    for l in &lines[start..] {
        let (part, more) = match l.trim().strip_suffix('\\') {
            Some(p) => (p.trim(), true),
            None => (l.trim(), false),
        };
        if !cmd.is_empty() {
            cmd.push(' ');
        }
        cmd.push_str(part);
        if !more {
            break;
        }
    }
    assert!(cmd.ends_with("proto tcp; done"), "{cmd}");
    assert!(
        cmd.contains("173.245.48.0/20") && cmd.contains("2400:cb00::/32"),
        "{cmd}"
    );
    // Notes (if any) once each, on stdout only.
    let notes: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|l| l.starts_with("Note: "))
        .collect();
    let mut unique = notes.clone();
    unique.dedup();
    assert_eq!(notes, unique);
    assert!(!stderr.contains("note:"), "{stderr}");
}

#[test]
fn stale_allowlist_names_only_the_missing_range() {
    let r = verdict_of("nft allowlist set lacks 104.16.0.0/13");
    assert_eq!(r["edge"]["syn"], 5, "{r:#}");
    assert_eq!(r["edge"]["firewall_drops"], 3, "{r:#}");
    assert_eq!(r["edge"]["handshakes"], 2, "{r:#}");
    let c = cause(&r, "firewall_drop");
    assert_eq!(c["peers"][0]["addr"], EDGE2_V4, "{c:#}");
    assert_eq!(c["peers"][0]["range"], "104.16.0.0/13", "{c:#}");
    assert_eq!(c["peers"].as_array().unwrap().len(), 1, "{c:#}");
    let ev = text(&c["evidence"]);
    assert!(
        ev.contains("allowlist set inet filter cloudflare_v4 admits 14 of 15 Cloudflare IPv4 ranges; it lacks 104.16.0.0/13"),
        "{ev}"
    );
    let steps = text(&c["next_steps"]);
    assert!(
        steps.contains("nft add element inet filter cloudflare_v4 { 104.16.0.0/13 }"),
        "{steps}"
    );
    assert!(!steps.contains("173.245.48.0/20"), "{steps}");
}

#[test]
fn server_closing_first_is_explained_by_the_rst_reason() {
    let r = verdict_of("server closes idle connections before the request");
    assert_eq!(r["edge"]["handshakes"], 3, "{r:#}");
    assert_eq!(r["edge"]["origin_resets"], 3, "{r:#}");
    let c = cause(&r, "reset_by_origin");
    assert_eq!(c["cloudflare_error"], 520);
    let ev = text(&c["evidence"]);
    assert!(
        ev.contains("TCP_TIMEWAIT_SOCKET") || ev.contains("TCPAbortOnData"),
        "{ev}"
    );
    assert!(ev.contains("idle or keep-alive timeout"), "{ev}");
    assert!(!ev.contains("SO_LINGER 0"), "{ev}");
}

#[test]
fn connlimit_is_reported_as_a_rate_limit() {
    let r = verdict_of("iptables connlimit rejects beyond one connection");
    assert_eq!(r["edge"]["firewall_drops"], 3, "{r:#}");
    let c = cause(&r, "firewall_drop");
    let ev = text(&c["evidence"]);
    assert!(
        ev.contains("a rate limit (-m connlimit --connlimit-above 1"),
        "{ev}"
    );
    assert!(ev.contains("INPUT rule 1"), "{ev}");
}

/// `tracer ranges --audit --format json` in the lab's origin namespace.
fn audit(lab: &integration_tests::Lab) -> Value {
    audit_with_path(lab, &std::env::var("PATH").unwrap_or_default())
}

/// The same with `PATH` set (a directory without `ip` leaves the tracer none).
fn audit_with_path(lab: &integration_tests::Lab, path: &str) -> Value {
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", &lab.origin.name])
        .arg("env")
        .arg(format!("PATH={path}"))
        .arg(integration_tests::tracer_bin())
        .args(["ranges", "--audit", "--format", "json"])
        .output()
        .expect("tracer ranges --audit");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("one JSON document")
}

/// `tracer ranges --audit` without traffic: the stale set lacks exactly 104.16.0.0/13, a
/// complete one lacks nothing; exit 0 both ways.
#[test]
fn ranges_audit_names_exactly_the_missing_ranges() {
    let lab = integration_tests::Lab::new();
    let v = audit(&lab);
    assert_eq!(v["complete"], true, "{v:#}");
    assert_eq!(v["allowlists"].as_array().unwrap().len(), 0, "{v:#}");

    let stale = integration_tests::scenarios::stale_cloudflare_v4();
    lab.origin.sh(&format!(
        "nft add table inet filter; \
         nft add set inet filter cloudflare_v4 '{{ type ipv4_addr; flags interval; }}'; \
         nft add element inet filter cloudflare_v4 '{{ {} }}'; \
         nft add chain inet filter input '{{ type filter hook input priority 0; policy drop; }}'; \
         nft add rule inet filter input ip saddr @cloudflare_v4 tcp dport 443 accept",
        stale.join(", ")
    ));
    let v = audit(&lab);
    assert_eq!(v["complete"], false, "{v:#}");
    let lists = v["allowlists"].as_array().unwrap();
    assert_eq!(lists.len(), 1, "{v:#}");
    assert_eq!(lists[0]["name"], "cloudflare_v4");
    assert_eq!(
        lists[0]["missing"],
        serde_json::json!(["104.16.0.0/13"]),
        "{v:#}"
    );
    assert_eq!(lists[0]["admitted"].as_array().unwrap().len(), 14);

    lab.origin
        .sh("nft add element inet filter cloudflare_v4 '{ 104.16.0.0/13 }'");
    let v = audit(&lab);
    assert_eq!(v["complete"], true, "{v:#}");
    assert_eq!(
        v["allowlists"][0]["missing"],
        serde_json::json!([]),
        "{v:#}"
    );
}

/// #31's routes that swallow the edge, on the real kernel without traffic: a VPN-style
/// `172.0.0.0/8` via a second interface takes Cloudflare's `172.64.0.0/13`, and an unreachable
/// route takes `173.245.48.0/20`; the audit lists exactly those two, each with its route and
/// fix, and nothing once they are gone. The default route is the reference.
#[test]
fn ranges_audit_names_exactly_the_swallowed_ranges() {
    let lab = integration_tests::Lab::new();
    lab.edge_by_default_route(&[]);
    let v = audit(&lab);
    assert_eq!(v["routes"], serde_json::json!([]), "{v:#}");
    lab.origin.sh(
        "ip link add vpn0 type veth peer name vpn1 && ip addr add 10.8.0.2/24 dev vpn0 && \
         ip link set vpn0 up && ip link set vpn1 up && \
         ip route add 172.0.0.0/8 via 10.8.0.1 dev vpn0 && \
         ip route add unreachable 173.245.48.0/20",
    );
    let v = audit(&lab);
    let routes = v["routes"].as_array().unwrap();
    let ranges: Vec<&str> = routes
        .iter()
        .map(|r| r["range"].as_str().unwrap())
        .collect();
    assert_eq!(ranges, ["173.245.48.0/20", "172.64.0.0/13"], "{v:#}");
    // The kernel is asked over netlink: a host without iproute2 gets the same answer (only
    // nft on the PATH, which the allowlist half of the audit reads).
    let bare = integration_tests::TempDir::new("no-tools");
    for dir in ["/usr/sbin", "/sbin", "/usr/bin"] {
        if std::path::Path::new(dir).join("nft").exists() {
            std::os::unix::fs::symlink(format!("{dir}/nft"), bare.path("nft")).unwrap();
            break;
        }
    }
    let without_ip = audit_with_path(&lab, bare.0.to_str().unwrap());
    assert_eq!(without_ip["routes"], v["routes"], "{without_ip:#}");
    assert_eq!(routes[0]["type"], "unreachable");
    assert_eq!(routes[0]["route"], "unreachable 173.245.48.0/20");
    assert!(routes[0]["fix"]
        .as_str()
        .unwrap()
        .contains("ip route del unreachable 173.245.48.0/20"));
    assert_eq!(routes[1]["type"], "unicast");
    assert_eq!(routes[1]["prefix"], "172.0.0.0/8");
    assert_eq!(routes[1]["dev"], "vpn0");
    assert_eq!(routes[1]["via"], "10.8.0.1");
    assert!(
        routes[1]["fix"]
            .as_str()
            .unwrap()
            .contains("ip route add 172.64.0.0/13 dev o521"),
        "{v:#}"
    );
    // The text names them too.
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", &lab.origin.name])
        .arg(integration_tests::tracer_bin())
        .args(["ranges", "--audit"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("Replies to 172.64.0.0/13 go by 172.0.0.0/8 via 10.8.0.1 dev vpn0"),
        "{text}"
    );
    lab.origin
        .sh("ip route del 172.0.0.0/8; ip route del unreachable 173.245.48.0/20");
    assert_eq!(audit(&lab)["routes"], serde_json::json!([]));
}

/// The agent's gauge of swallowed ranges follows the routes: 0, then 2 once a route takes
/// 172.64.0.0/13 and a null route 173.245.48.0/20 (the route changes trigger an audit), 0
/// again once they are gone.
#[test]
fn the_agent_counts_misrouted_ranges() {
    use integration_tests::{agent::Agent, metric, TempDir};
    use std::time::Duration;
    let lab = integration_tests::Lab::new();
    lab.edge_by_default_route(&[]);
    let dir = TempDir::new(&format!("misrouted-{}", lab.origin.name));
    let agent = Agent::on(&lab.origin, "443", "1", &dir.path("agent.log")).start();
    agent.metrics_until(Duration::from_secs(10), |m| {
        metric(m, "tracer_ranges_misrouted") == Some(0.0)
    });
    lab.origin.sh(
        "ip link add vpn0 type veth peer name vpn1 && ip addr add 10.8.0.2/24 dev vpn0 && \
         ip link set vpn0 up && ip link set vpn1 up && \
         ip route add 172.0.0.0/8 via 10.8.0.1 dev vpn0 && \
         ip route add unreachable 173.245.48.0/20",
    );
    agent.metrics_until(Duration::from_secs(15), |m| {
        metric(m, "tracer_ranges_misrouted") == Some(2.0)
    });
    lab.origin
        .sh("ip route del 172.0.0.0/8; ip route del unreachable 173.245.48.0/20");
    agent.metrics_until(Duration::from_secs(15), |m| {
        metric(m, "tracer_ranges_misrouted") == Some(0.0)
    });
    let stderr = agent.tracer.stderr_text();
    assert!(
        stderr.contains("172.64.0.0/13") && stderr.contains("do not leave by the default route"),
        "{stderr}"
    );
    agent.stop();
}
