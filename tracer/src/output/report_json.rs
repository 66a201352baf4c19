//! The report as JSON: the `diagnose` document and the fields of the agent's `verdict` record.
//! These structs are the contract (`deploy/schema/report.schema.json`); they borrow from the
//! model and are built only here, so the model's types can change without moving the JSON.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
};

use serde::Serialize;
use serde_json::Value;

use crate::{
    correlate::Counts,
    journal::since::Since,
    origin::{backends::BackendReport, listeners::Listener},
    output::report::{RangesInfo, Report},
    tls::{CertificateInfo, TlsCheck},
    verdict::{Cause, Peer},
};

/// The `diagnose --format json` document.
#[derive(Serialize)]
pub struct ReportJson<'a> {
    verdict: &'static str,
    window_secs: &'a Value,
    interface: &'a str,
    ports: &'a [u16],
    edge: CountsJson,
    non_edge: CountsJson,
    causes: Vec<CauseJson<'a>>,
    /// Where the host forwarded edge attempts (DNAT to containers, other namespaces).
    backends: Vec<BackendJson<'a>>,
    listeners: Vec<ListenerJson<'a>>,
    /// TCP counter changes over the window.
    counters: &'a BTreeMap<String, u64>,
    ranges: &'a RangesInfo,
    lost_events: u64,
    /// When the window started (RFC 3339).
    started_at: &'a str,
    /// "driver" or "generic" XDP; "none" when the arrival hook is TC.
    xdp_mode: &'a str,
    /// `xdp_driver`, `xdp_generic`, `tcx`, `tc_clsact`.
    arrival_hook: &'a str,
    notes: &'a [String],
    /// One per port and hostname (`--hostname`).
    tls: Vec<TlsJson<'a>>,
    /// Null when the edge's attempts are not failing.
    since: Option<SinceJson<'a>>,
    /// How long the edge's handshakes took.
    timing: TimingJson,
    /// The Cloudflare Tunnel processes found and what was watched of them; null when none.
    tunnel: Option<super::tunnel_json::TunnelJson<'a>>,
}

/// `{count, p50, p99, max}` in milliseconds (zeros when there were none).
#[derive(Serialize)]
struct SummaryJson {
    count: u64,
    p50: f64,
    p99: f64,
    max: f64,
}

impl SummaryJson {
    fn of(s: &crate::correlate::timing::Summary) -> Self {
        let round = |v: f64| (v * 1000.0).round() / 1000.0;
        Self {
            count: s.count,
            p50: round(s.p50_ms),
            p99: round(s.p99_ms),
            max: round(s.max_ms),
        }
    }
}

#[derive(Serialize)]
struct TimingJson {
    /// First SYN seen to the final ACK.
    handshake_ms: SummaryJson,
    handshakes_after_syn_retransmits: u64,
    handshakes_after_synack_retransmits: u64,
    /// An edge request's arrival to the first response byte leaving.
    response_ms: SummaryJson,
    /// How long edge connections sat idle before the origin closed them.
    idle_close_ms: SummaryJson,
    requests: u64,
    /// Requests past the edge's read timeout (answered late or still waiting), and those of
    /// them the application had not read.
    slow_responses: u64,
    slow_responses_unread: u64,
    /// Requests that arrived on connections the origin had already closed.
    requests_after_close: u64,
    /// 1 in how many edge connections the exchange timing followed (1: every one; more above
    /// `--timing-sample-above` requests a second): the response and idle-close figures and
    /// the request counts are theirs.
    exchanges_followed_one_in: u32,
}

impl TimingJson {
    fn of(t: &crate::correlate::timing::Timing) -> Self {
        Self {
            handshake_ms: SummaryJson::of(&t.handshake),
            handshakes_after_syn_retransmits: t.after_syn_retransmits,
            handshakes_after_synack_retransmits: t.after_synack_retransmits,
            response_ms: SummaryJson::of(&t.response),
            idle_close_ms: SummaryJson::of(&t.idle_close),
            requests: t.requests,
            slow_responses: t.slow_responses,
            slow_responses_unread: t.slow_unread,
            requests_after_close: t.requests_after_close,
            exchanges_followed_one_in: t.exchanges_followed_one_in.max(1),
        }
    }
}

impl<'a> ReportJson<'a> {
    pub fn of(r: &'a Report) -> Self {
        Self {
            verdict: r.verdict.as_str(),
            window_secs: &r.window_secs,
            interface: &r.interface,
            ports: &r.ports,
            edge: CountsJson::of(&r.edge),
            non_edge: CountsJson::of(&r.non_edge),
            causes: r.causes.iter().map(CauseJson::of).collect(),
            backends: r.backends.iter().map(BackendJson::of).collect(),
            listeners: r.listeners.iter().map(ListenerJson::of).collect(),
            counters: &r.counters,
            ranges: &r.ranges,
            lost_events: r.lost_events,
            started_at: &r.started_at,
            xdp_mode: &r.xdp_mode,
            arrival_hook: &r.arrival_hook,
            notes: &r.notes,
            tls: r.tls.iter().map(TlsJson::of).collect(),
            since: r.since.as_ref().map(SinceJson::of),
            timing: TimingJson::of(&r.timing),
            tunnel: r.tunnel.as_ref().map(super::tunnel_json::TunnelJson::of),
        }
    }
}

/// Distinct attempts by outcome, for edge or non-edge peers.
#[derive(Serialize)]
struct CountsJson {
    syn: u64,
    handshakes: u64,
    refused: u64,
    firewall_drops: u64,
    overload_drops: u64,
    origin_resets: u64,
    unanswered: u64,
    other_drops: u64,
    unknown: u64,
}

impl CountsJson {
    fn of(c: &Counts) -> Self {
        Self {
            syn: c.syn,
            handshakes: c.handshakes,
            refused: c.refused,
            firewall_drops: c.firewall_drops,
            overload_drops: c.overload_drops,
            origin_resets: c.origin_resets,
            unanswered: c.unanswered,
            other_drops: c.other_drops,
            unknown: c.unknown,
        }
    }
}

#[derive(Serialize)]
struct CauseJson<'a> {
    verdict: &'static str,
    attempts: u64,
    evidence: &'a [String],
    next_steps: &'a [String],
    backends: Vec<BackendJson<'a>>,
    cloudflare_error: Option<u16>,
    peers: Vec<PeerJson<'a>>,
}

impl<'a> CauseJson<'a> {
    fn of(c: &'a Cause) -> Self {
        Self {
            verdict: c.verdict.as_str(),
            attempts: c.attempts,
            evidence: &c.evidence,
            next_steps: &c.next_steps,
            backends: c.backends.iter().map(BackendJson::of).collect(),
            cloudflare_error: c.cloudflare_error,
            peers: c.peers.iter().map(PeerJson::of).collect(),
        }
    }
}

#[derive(Serialize)]
struct PeerJson<'a> {
    addr: IpAddr,
    attempts: u64,
    range: Option<&'a str>,
}

impl<'a> PeerJson<'a> {
    fn of(p: &'a Peer) -> Self {
        Self {
            addr: p.addr,
            attempts: p.attempts,
            range: p.range.as_deref(),
        }
    }
}

#[derive(Serialize)]
struct BackendJson<'a> {
    addr: IpAddr,
    port: u16,
    netns: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    comm: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    container: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    dnat_rule: Option<&'a str>,
    edge_port: u16,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    gone: bool,
}

impl<'a> BackendJson<'a> {
    fn of(b: &'a BackendReport) -> Self {
        Self {
            addr: b.addr,
            port: b.port,
            netns: b.netns,
            pid: b.pid,
            comm: b.comm.as_deref(),
            container: b.container.as_deref(),
            dnat_rule: b.dnat_rule.as_deref(),
            edge_port: b.edge_port,
            gone: b.gone,
        }
    }
}

#[derive(Serialize)]
struct ListenerJson<'a> {
    addr: IpAddr,
    port: u16,
    accept_queue: u32,
    /// Unknown (null) when read from /proc.
    backlog: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    netns: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    container: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    comm: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<&'static str>,
}

impl<'a> ListenerJson<'a> {
    fn of(l: &'a Listener) -> Self {
        Self {
            addr: l.addr,
            port: l.port,
            accept_queue: l.accept_queue,
            backlog: l.backlog,
            netns: l.netns,
            container: l.container.as_deref(),
            pid: l.pid,
            comm: l.comm.as_deref(),
            role: l.role,
        }
    }
}

#[derive(Serialize)]
struct TlsJson<'a> {
    port: u16,
    hostname: &'a str,
    address: Option<SocketAddr>,
    ok: bool,
    handshake_ok: bool,
    protocol: Option<&'static str>,
    cipher: Option<&'a str>,
    certificates: Vec<CertificateJson<'a>>,
    name_matches: Option<bool>,
    trusted_by: Option<&'static str>,
    chain_problem: Option<&'static str>,
    days_to_expiry: Option<i64>,
    failure: Option<&'static str>,
    detail: Option<&'a str>,
    cloudflare_error: Option<u16>,
}

impl<'a> TlsJson<'a> {
    fn of(t: &'a TlsCheck) -> Self {
        Self {
            port: t.port,
            hostname: &t.hostname,
            address: t.address,
            ok: t.ok,
            handshake_ok: t.handshake_ok,
            protocol: t.protocol,
            cipher: t.cipher.as_deref(),
            certificates: t.certificates.iter().map(CertificateJson::of).collect(),
            name_matches: t.name_matches,
            trusted_by: t.trusted_by.map(|b| b.as_str()),
            chain_problem: t.chain_problem.as_ref().map(|p| p.as_str()),
            days_to_expiry: t.days_to_expiry,
            failure: t.failure,
            detail: t.detail.as_deref(),
            cloudflare_error: t.cloudflare_error,
        }
    }
}

#[derive(Serialize)]
struct CertificateJson<'a> {
    subject: &'a str,
    sans: &'a [String],
    issuer: &'a str,
    not_before: &'a str,
    not_after: &'a str,
}

impl<'a> CertificateJson<'a> {
    fn of(c: &'a CertificateInfo) -> Self {
        Self {
            subject: &c.subject,
            sans: &c.sans,
            issuer: &c.issuer,
            not_before: &c.not_before,
            not_after: &c.not_after,
        }
    }
}

/// The report's `since`, also `/history`'s.
#[derive(Serialize)]
pub struct SinceJson<'a> {
    began: &'a str,
    from_start: bool,
    changes: Vec<NearChangeJson<'a>>,
    text: &'a str,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    dated: Vec<DatedJson<'a>>,
}

#[derive(Serialize)]
struct NearChangeJson<'a> {
    ts: &'a str,
    what: &'static str,
    detail: &'a str,
    before_secs: f64,
}

#[derive(Serialize)]
struct DatedJson<'a> {
    ts: &'a str,
    what: &'a str,
}

impl<'a> SinceJson<'a> {
    pub fn of(s: &'a Since) -> Self {
        Self {
            began: &s.began,
            from_start: s.from_start,
            changes: s
                .changes
                .iter()
                .map(|c| NearChangeJson {
                    ts: &c.ts,
                    what: c.what,
                    detail: &c.detail,
                    before_secs: c.before_secs,
                })
                .collect(),
            text: &s.text,
            dated: s
                .dated
                .iter()
                .map(|d| DatedJson {
                    ts: &d.ts,
                    what: &d.what,
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{
        collections::BTreeMap,
        net::{IpAddr, SocketAddr},
        time::{Duration, UNIX_EPOCH},
    };

    use crate::{
        correlate::Counts,
        journal::{
            dated::Dated,
            since::{NearChange, Since},
        },
        origin::{backends::BackendReport, listeners::Listener},
        output::report::{window_value, RangesInfo, Report},
        tls::{CertificateInfo, ChainProblem, TlsCheck, TrustedBy},
        verdict::{Cause, Peer, Verdict},
    };

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// A report with every optional part filled, and every kind of value the JSON carries.
    pub fn full_report() -> Report {
        let counts = Counts {
            syn: 12,
            handshakes: 3,
            refused: 4,
            firewall_drops: 1,
            overload_drops: 1,
            origin_resets: 1,
            unanswered: 1,
            other_drops: 0,
            unknown: 1,
        };
        let backend = BackendReport {
            addr: ip("172.17.0.2"),
            port: 80,
            netns: 4026532901,
            pid: Some(812),
            comm: Some("nginx".into()),
            container: Some("3f2a9c4b1d2e".into()),
            dnat_rule: Some("ip nat DOCKER: tcp dport 443 dnat to 172.17.0.2:80".into()),
            edge_port: 443,
            gone: false,
            outcomes: BTreeMap::new(),
            listeners: Ok(Vec::new()),
            place: "container 3f2a9c4b1d2e".into(),
            elsewhere: true,
        };
        let gone = BackendReport {
            addr: ip("fd00::2"),
            port: 8080,
            netns: 4026532999,
            pid: None,
            comm: None,
            container: None,
            dnat_rule: None,
            edge_port: 8443,
            gone: true,
            ..backend.clone()
        };
        let listeners = vec![
            Listener {
                addr: ip("0.0.0.0"),
                port: 443,
                accept_queue: 0,
                backlog: Some(511),
                role: Some("port_reservation"),
                ..Listener::default()
            },
            Listener {
                addr: ip("::"),
                port: 80,
                accept_queue: 2,
                backlog: None,
                netns: Some(4026532901),
                container: Some("3f2a9c4b1d2e".into()),
                pid: Some(812),
                comm: Some("nginx".into()),
                ..Listener::default()
            },
        ];
        let cause = Cause {
            verdict: Verdict::Refused,
            attempts: 4,
            evidence: vec!["4 edge attempts were refused".into()],
            next_steps: vec!["start the server".into()],
            backends: vec![backend.clone()],
            cloudflare_error: Some(521),
            peers: vec![
                Peer {
                    addr: ip("173.245.48.10"),
                    attempts: 3,
                    range: Some("173.245.48.0/20".into()),
                },
                Peer {
                    addr: ip("2400:cb00::1"),
                    attempts: 1,
                    range: None,
                },
            ],
        };
        let healthy = Cause {
            verdict: Verdict::Healthy,
            attempts: 3,
            evidence: Vec::new(),
            next_steps: Vec::new(),
            backends: Vec::new(),
            cloudflare_error: None,
            peers: Vec::new(),
        };
        let cert = CertificateInfo {
            subject: "CN=example.com".into(),
            sans: vec!["example.com".into(), "192.0.2.1".into()],
            issuer: "CN=Example CA".into(),
            not_before: "2026-01-01T00:00:00Z".into(),
            not_after: "2027-01-01T00:00:00Z".into(),
            not_after_unix: 1_798_761_600,
        };
        let tls_ok = TlsCheck {
            port: 443,
            hostname: "example.com".into(),
            address: Some(SocketAddr::new(ip("192.0.2.1"), 443)),
            ok: false,
            handshake_ok: true,
            protocol: Some("TLSv1.3"),
            cipher: Some("TLS13_AES_256_GCM_SHA384".into()),
            certificates: vec![cert],
            name_matches: Some(true),
            trusted_by: Some(TrustedBy::CloudflareOriginCa),
            chain_problem: Some(ChainProblem::Expired),
            days_to_expiry: Some(-3),
            expiry_secs: Some(-259_200),
            failure: None,
            detail: None,
            cloudflare_error: Some(526),
        };
        let tls_failed = TlsCheck {
            port: 2096,
            hostname: "example.com".into(),
            address: None,
            ok: false,
            handshake_ok: false,
            protocol: None,
            cipher: None,
            certificates: Vec::new(),
            name_matches: None,
            trusted_by: None,
            chain_problem: None,
            days_to_expiry: None,
            expiry_secs: None,
            failure: Some("tcp_refused"),
            detail: Some("connection refused".into()),
            cloudflare_error: Some(521),
        };
        let at = UNIX_EPOCH + Duration::from_secs(1_796_000_000);
        let since = Since {
            began: "2026-11-30T10:13:20.000Z".into(),
            from_start: true,
            changes: vec![NearChange {
                ts: "2026-11-30T10:13:19.500Z".into(),
                what: "listener_down",
                detail: "0.0.0.0:443 nginx (pid 812)".into(),
                before_secs: 0.5,
            }],
            text: "the failure began before the tracer started".into(),
            dated: vec![Dated::new(at, "nginx (pid 812) started".into())],
        };
        Report {
            verdict: Verdict::Refused,
            window_secs: window_value(10.5),
            interface: "eth0".into(),
            ports: vec![443, 8443],
            edge: counts,
            non_edge: Counts::default(),
            causes: vec![cause, healthy],
            backends: vec![backend, gone],
            listeners,
            counters: BTreeMap::from([("ListenOverflows".to_string(), 2)]),
            ranges: RangesInfo {
                source: "cache".into(),
                ipv4: vec!["173.245.48.0/20".into()],
                ipv6: vec!["2400:cb00::/32".into()],
                etag: Some("\"abc\"".into()),
                fetched_at: Some("2026-11-30T00:00:00Z".into()),
                age_secs: Some(36_000),
                path: Some("/var/lib/cf521-tracer/ranges.json".into()),
            },
            lost_events: 7,
            started_at: "2026-11-30T10:13:10Z".into(),
            xdp_mode: "generic".into(),
            arrival_hook: "xdp_generic".into(),
            notes: vec!["a note".into()],
            tls: vec![tls_ok, tls_failed],
            since: Some(since),
            edge_ports: vec![443],
            timing: crate::correlate::timing::Timing {
                handshake: crate::correlate::timing::Summary {
                    count: 3,
                    p50_ms: 0.41,
                    p99_ms: 1003.5,
                    max_ms: 3001.0,
                },
                after_syn_retransmits: 1,
                after_synack_retransmits: 2,
                ..Default::default()
            },
            tunnel: Some(crate::correlate::tunnel::TunnelSeen::sample()),
        }
    }

    /// A report with nothing optional: empty lists, nulls.
    fn bare_report() -> Report {
        let mut r = full_report();
        r.causes.truncate(1);
        r.causes[0].backends.clear();
        r.causes[0].peers.clear();
        r.causes[0].cloudflare_error = None;
        r.backends.clear();
        r.listeners.clear();
        r.counters.clear();
        r.ranges.etag = None;
        r.ranges.fetched_at = None;
        r.ranges.age_secs = None;
        r.ranges.path = None;
        r.window_secs = window_value(10.0);
        r.notes.clear();
        r.tls.clear();
        r.since = None;
        r.timing = Default::default();
        r.tunnel = None;
        r
    }

    /// The agent's verdict record of a report, without its time stamp.
    fn record_of(report: &Report) -> String {
        let line = crate::output::verdict_record::verdict_record(
            report,
            &crate::ranges::RangeSet::embedded(),
        );
        let mut v: serde_json::Value = serde_json::from_str(&line).unwrap();
        v.as_object_mut().unwrap().remove("ts");
        serde_json::to_string_pretty(&v).unwrap()
    }

    /// The documents the contract test compares: a full report, a bare one, a verdict record.
    fn contract() -> String {
        format!(
            "{}\n{}\n{}\n",
            full_report().to_json(),
            bare_report().to_json(),
            record_of(&full_report())
        )
    }

    /// Records the contract again — only when it is extended on purpose (a new field), and
    /// the diff reviewed: `cargo test -p tracer --bins record_the_contract -- --ignored`.
    #[test]
    #[ignore]
    fn record_the_contract() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/src/output/testdata/report.json"
        );
        std::fs::write(path, contract()).unwrap();
    }

    /// The JSON as it was when the model serialized itself (recorded then, extended since by
    /// `timing` only): the views keep every field, its name, order and omission rule.
    #[test]
    fn the_json_is_the_recorded_contract() {
        let doc = contract();
        let recorded = include_str!("testdata/report.json");
        for (n, (got, want)) in doc.lines().zip(recorded.lines()).enumerate() {
            assert_eq!(got, want, "line {}", n + 1);
        }
        assert_eq!(doc.lines().count(), recorded.lines().count());
    }

    /// A sampled window's text says the sample beside the response line; a whole one does
    /// not.
    #[test]
    fn the_text_says_when_the_exchange_timing_was_sampled() {
        let mut r = full_report();
        r.timing.requests = 40;
        r.timing.response.count = 40;
        let flat = |r: &Report| r.to_text().split_whitespace().collect::<Vec<_>>().join(" ");
        r.timing.exchanges_followed_one_in = 16;
        assert!(
            flat(&r).contains("Exchange timing followed 1 in 16 edge connections"),
            "{}",
            r.to_text()
        );
        r.timing.exchanges_followed_one_in = 1;
        assert!(
            !flat(&r).contains("Exchange timing followed"),
            "{}",
            r.to_text()
        );
    }

    fn schema(name: &str) -> serde_json::Value {
        let path = format!("{}/../deploy/schema/{name}", env!("CARGO_MANIFEST_DIR"));
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    /// The report schema accepts the views' JSON, full and bare, and rejects a field it does
    /// not list (a new field must be added to the schema) or one missing.
    #[test]
    fn the_report_schema_accepts_the_json() {
        let validator = jsonschema::validator_for(&schema("report.schema.json")).unwrap();
        for report in [full_report(), bare_report()] {
            let v: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
            let errors: Vec<String> = validator.iter_errors(&v).map(|e| e.to_string()).collect();
            assert!(errors.is_empty(), "{errors:#?}");
            let mut extra = v.clone();
            extra["causes"][0]["unlisted"] = true.into();
            assert!(!validator.is_valid(&extra));
            let mut missing = v.clone();
            missing.as_object_mut().unwrap().remove("since");
            assert!(!validator.is_valid(&missing));
        }
    }

    /// The report schema and the log's `verdict` record say the same of every field but the
    /// ranges (listed in full in the one, counted in the other).
    #[test]
    fn the_report_schema_agrees_with_the_verdict_record() {
        fn loose(v: &mut serde_json::Value) {
            match v {
                serde_json::Value::Object(o) => {
                    if o.get("additionalProperties") == Some(&false.into()) {
                        o.remove("additionalProperties");
                    }
                    o.values_mut().for_each(loose);
                }
                serde_json::Value::Array(a) => a.iter_mut().for_each(loose),
                _ => {}
            }
        }
        let mut report = schema("report.schema.json");
        loose(&mut report);
        let record = schema("log-record.schema.json");
        let verdict = &record["$defs"]["verdict"];
        let fields = report["properties"].as_object().unwrap();
        for (name, def) in fields {
            if name != "ranges" {
                assert_eq!(def, &verdict["properties"][name], "{name}");
            }
        }
        let mut required: Vec<&str> = verdict["required"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|r| r.as_str())
            .filter(|r| !["ts", "kind"].contains(r))
            .collect();
        required.sort();
        let mut listed: Vec<&str> = fields.keys().map(String::as_str).collect();
        listed.sort();
        assert_eq!(required, listed);
    }
}
