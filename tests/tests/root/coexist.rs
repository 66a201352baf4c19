//! Several tracers, and other XDP users, on one interface: each tracer gets its full, exact
//! counts and none disturbs the others (TC ingress through tcx links composes; the slot XDP
//! has is never taken from its holder).

use std::time::Duration;

use integration_tests::{
    agent::{connections, Agent},
    arrival_programs_loaded, eventually,
    scenarios::{Server, ServerMode, SHORT},
    sockaddr, tracer_bin, Lab, TempDir, Tracer, EDGE_V4, ORIGIN_IF, ORIGIN_V4,
};
use serde_json::Value;

/// 5 handshakes on 443 and 3 refusals on 8080 from the edge.
fn traffic(lab: &Lab) {
    for _ in 0..5 {
        lab.edge
            .connect(EDGE_V4, sockaddr(ORIGIN_V4, 443), SHORT)
            .expect("443 serves");
    }
    for _ in 0..3 {
        assert!(lab
            .edge
            .connect(EDGE_V4, sockaddr(ORIGIN_V4, 8080), SHORT)
            .is_err());
    }
}

fn diagnose(lab: &Lab, extra: &[&str]) -> Tracer {
    Tracer::diagnose_with(&lab.origin, "443,8080", "4", extra, &[])
}

fn report(t: Tracer) -> Value {
    let stderr = t.stderr_text();
    let (code, out) = t.wait(Duration::from_secs(30));
    assert_eq!(code, 0, "{stderr}");
    serde_json::from_str(&out).unwrap()
}

fn assert_exact(r: &Value, who: &str) {
    assert_eq!(r["edge"]["syn"], 8, "{who}: {r:#}");
    assert_eq!(r["edge"]["handshakes"], 5, "{who}: {r:#}");
    assert_eq!(r["edge"]["refused"], 3, "{who}: {r:#}");
    assert_eq!(r["lost_events"], 0, "{who}: {r:#}");
}

fn agent(lab: &Lab, log: &std::path::Path) -> Agent {
    Agent::on(&lab.origin, "443,8080", "2", log).start()
}

/// The agent's counts reach exactly (handshakes on 443, refusals on 8080).
fn agent_counts(agent: &Agent, handshakes: f64, refused: f64) {
    agent.metrics_reach(
        Duration::from_secs(8),
        &[
            (connections(443, "handshake"), handshakes),
            (connections(8080, "refused"), refused),
        ],
    );
}

#[test]
fn diagnose_beside_a_running_agent() {
    let lab = Lab::new();
    let _server = Server::start(lab.origin.listen("0.0.0.0", 443, 128), ServerMode::Close);
    let tmp = TempDir::new("coexist-agent");
    let agent = agent(&lab, &tmp.path("log"));
    let d = diagnose(&lab, &[]);
    traffic(&lab);
    assert_exact(&report(d), "diagnose");
    agent_counts(&agent, 5.0, 3.0);
}

#[test]
fn two_diagnoses_at_once() {
    let lab = Lab::new();
    let _server = Server::start(lab.origin.listen("0.0.0.0", 443, 128), ServerMode::Close);
    let first = diagnose(&lab, &[]);
    let second = diagnose(&lab, &[]);
    assert_eq!(arrival_programs_loaded(), 2);
    traffic(&lab);
    assert_exact(&report(first), "first");
    assert_exact(&report(second), "second");
}

#[test]
fn an_agent_restarted_while_diagnose_runs() {
    let lab = Lab::new();
    let _server = Server::start(lab.origin.listen("0.0.0.0", 443, 128), ServerMode::Close);
    let tmp = TempDir::new("coexist-restart");
    let a = agent(&lab, &tmp.path("log"));
    let d = diagnose(&lab, &[]);
    a.tracer.signal(libc::SIGTERM);
    let _ = a.tracer.wait(Duration::from_secs(5));
    let again = agent(&lab, &tmp.path("log"));
    traffic(&lab);
    assert_exact(&report(d), "diagnose");
    agent_counts(&again, 5.0, 3.0);
}

/// Another XDP user holds the interface's XDP slot (here the tracer itself with native XDP,
/// through a separate handle): diagnose attaches beside it on TC, both see every SYN, and
/// the XDP program is still there after diagnose exits. Forcing XDP fails in one line that
/// names the holder.
#[test]
fn a_foreign_xdp_program_is_left_in_place() {
    let lab = Lab::new();
    let _server = Server::start(lab.origin.listen("0.0.0.0", 443, 128), ServerMode::Close);
    let holder = Tracer::start(
        &lab.origin,
        &[
            "events",
            "--iface",
            ORIGIN_IF,
            "--port",
            "443,8080",
            "--hook",
            "xdp",
            "--xdp-mode",
            "driver",
            "--format",
            "json",
        ],
    );
    let link = || lab.origin.sh(&format!("ip -details link show {ORIGIN_IF}"));
    assert!(link().contains("xdp"), "{}", link());
    let d = diagnose(&lab, &[]);
    traffic(&lab);
    let r = report(d);
    assert_exact(&r, "diagnose beside XDP");
    assert_eq!(r["arrival_hook"], "tcx");
    assert!(link().contains("prog/xdp"), "XDP left in place: {}", link());

    let forced = std::process::Command::new("ip")
        .args(["netns", "exec", &lab.origin.name])
        .arg(tracer_bin())
        .args([
            "diagnose",
            "--iface",
            ORIGIN_IF,
            "--duration",
            "1",
            "--hook",
            "xdp",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&forced.stderr).into_owned();
    assert!(!forced.status.success(), "{err}");
    assert!(
        err.contains("XDP program id ") && err.contains("(xdp_syn) holds it"),
        "{err}"
    );
    assert!(err.contains("--hook tc"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");

    let ev = holder.stop();
    let syns = ev.iter().filter(|e| e["kind"] == "syn").count();
    assert_eq!(syns, 8, "the XDP holder saw every SYN too");
}

/// Kernels before 6.6 have no tcx: the TC program is a clsact filter (forced here with
/// TRACER_NO_TCX). Verdicts and counts are the same; two tracers' filters compose; a filter a
/// SIGKILLed tracer left is removed by the next start, and a clean exit removes its own.
#[test]
fn the_clsact_path_of_kernels_without_tcx() {
    const NO_TCX: (&str, &str) = ("TRACER_NO_TCX", "1");
    let lab = Lab::new();
    let _server = Server::start(lab.origin.listen("0.0.0.0", 443, 128), ServerMode::Close);
    let first = Tracer::diagnose_with(&lab.origin, "443,8080", "4", &[], &[NO_TCX]);
    let second = Tracer::diagnose_with(&lab.origin, "443,8080", "4", &[], &[NO_TCX]);
    traffic(&lab);
    for (who, t) in [("first", first), ("second", second)] {
        let r = report(t);
        assert_exact(&r, who);
        assert_eq!(r["arrival_hook"], "tc_clsact", "{who}");
        assert_eq!(r["verdict"], "refused", "{who}");
    }
    let filters_at = |direction: &str, program: &str| {
        lab.origin
            .sh(&format!("tc filter show dev {ORIGIN_IF} {direction}"))
            .lines()
            .filter(|l| l.contains(program))
            .count()
    };
    let filters = || filters_at("ingress", "tc_syn");
    // The departure hook (TC egress) is a claimed filter too, removed alike.
    let egress = || filters_at("egress", "tc_reply");
    assert_eq!(filters(), 0, "a clean exit removes its filter");
    assert_eq!(egress(), 0, "a clean exit removes its egress filter");

    let killed = Tracer::start_env(
        &lab.origin,
        &["events", "--iface", ORIGIN_IF, "--port", "443"],
        &[NO_TCX],
    );
    killed.signal(libc::SIGKILL);
    let _ = killed.wait(Duration::from_secs(5));
    assert_eq!(filters(), 1, "SIGKILL leaves the filter behind");
    assert_eq!(egress(), 1, "and its egress filter");
    let again = Tracer::start_env(
        &lab.origin,
        &[
            "events", "--iface", ORIGIN_IF, "--port", "443", "--format", "json",
        ],
        &[NO_TCX],
    );
    assert_eq!(filters(), 1, "the stale filter replaced, not added to");
    assert_eq!(
        egress(),
        1,
        "the stale egress filter replaced, not added to"
    );
    // The old program goes once the kernel frees it (after RCU): wait a moment.
    assert!(eventually(
        Duration::from_secs(3),
        || arrival_programs_loaded() == 1
    ));
    lab.edge
        .connect(EDGE_V4, sockaddr(ORIGIN_V4, 443), SHORT)
        .expect("443 serves");
    let ev = again.stop();
    assert_eq!(ev.iter().filter(|e| e["kind"] == "syn").count(), 1);
    assert_eq!(filters(), 0);
    assert_eq!(egress(), 0);
}

/// `--hook auto` on an interface whose driver has no native XDP (a bridge, as on many cloud
/// NICs): it never falls back to generic XDP but to TC ingress, and says why.
#[test]
fn auto_without_native_xdp_takes_tc_not_generic_xdp() {
    let lab = Lab::new();
    lab.origin
        .sh("ip link add br521 type bridge; ip link set br521 up");
    let t = Tracer::start(
        &lab.origin,
        &["events", "--iface", "br521", "--duration", "1"],
    );
    let err = t.stderr_text();
    let _ = t.wait(Duration::from_secs(10));
    assert!(
        err.contains("br521: no native XDP here") && err.contains("TC ingress (tcx)"),
        "{err}"
    );
    assert!(!err.contains("generic"), "{err}");
}
