//! Hardening, second round (#28): what a hostile or unlucky host does to the agent — files
//! squatting where the log rotates to, a FIFO planted where it reopens. Each test fails
//! without its fix.

use std::time::Duration;

use integration_tests::{
    agent::{connections, Agent},
    metric,
    scenarios::SHORT,
    sockaddr, Lab, TempDir, EDGE_V4, ORIGIN_V4,
};

/// Edge attempts at port 8080, where nothing listens: each writes a few log lines.
fn refused_attempts(lab: &Lab, n: usize) {
    for _ in 0..n {
        let _ = lab.edge.connect(EDGE_V4, sockaddr(ORIGIN_V4, 8080), SHORT);
    }
}

/// A directory squatting `<log>.1` makes every rotation fail: the log keeps its size cap
/// anyway (cut back, counted) instead of growing without bound. A FIFO planted at the log's
/// path before a SIGHUP (logrotate's reopen) is refused at once: the agent keeps its file,
/// keeps counting, and never hangs on it.
#[test]
fn the_log_keeps_its_cap_and_never_reopens_a_fifo() {
    const CAP: u64 = 1024 * 1024;
    let lab = Lab::new();
    let dir = TempDir::new(&format!("hostile-log-{}", lab.origin.name));
    let log = dir.path("agent.log");
    // Nearly full already: the first lines cross the cap.
    let filler = format!("{}\n", "x".repeat(1023));
    std::fs::write(&log, filler.repeat((CAP / 1024) as usize - 2)).unwrap();
    let mut squat = log.as_os_str().to_owned();
    squat.push(".1");
    std::fs::create_dir(&squat).unwrap();
    std::fs::write(std::path::Path::new(&squat).join("keep"), "").unwrap();
    let agent = Agent::on(&lab.origin, "8080", "1", &log)
        .args(&["--log-events", "all", "--log-max-mb", "1"])
        .start();
    for round in 0..4 {
        refused_attempts(&lab, 20);
        std::thread::sleep(Duration::from_millis(1200));
        let size = std::fs::metadata(&log).unwrap().len();
        assert!(
            size <= CAP + 4096,
            "round {round}: the log grew to {size} bytes"
        );
    }
    let body = agent.metrics_until(Duration::from_secs(5), |m| {
        metric(m, "tracer_log_rotation_failures_total").unwrap_or(0.0) >= 1.0
    });
    assert!(
        agent
            .tracer
            .stderr_text()
            .contains("the log was truncated to keep its size cap"),
        "{}",
        agent.tracer.stderr_text()
    );
    let refused = metric(&body, &connections(8080, "refused")).unwrap_or(0.0);
    assert!(refused >= 20.0, "{body}");

    // A FIFO where logrotate's reopen looks.
    std::fs::rename(&log, dir.path("agent.log.moved")).unwrap();
    let c = std::ffi::CString::new(log.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    agent.tracer.signal(libc::SIGHUP);
    refused_attempts(&lab, 5);
    let want = refused + 5.0;
    agent.metrics_until(Duration::from_secs(10), |m| {
        metric(m, &connections(8080, "refused")).unwrap_or(0.0) >= want
    });
    assert!(
        agent
            .tracer
            .stderr_text()
            .contains("cannot reopen the log file"),
        "{}",
        agent.tracer.stderr_text()
    );
    agent.stop();
}

/// A refresh whose IPv6 part fails in the kernel (a full table, no memory: injected here by
/// `TRACER_TEST_FAIL_IPV6_UPDATE` halfway through the IPv6 table) leaves both families on the
/// old list: all or nothing. Before, IPv4 was committed alone and the edge's address, listed
/// only in the old list, stopped counting as edge.
#[test]
fn a_refresh_failing_for_one_family_changes_neither() {
    let lab = Lab::new();
    let dir = TempDir::new(&format!("hostile-swap-{}", lab.origin.name));
    let ranges = dir.path("ranges.txt");
    // A host route for the edge: looked up in the trie (a whole /24 would be answered by the
    // prefilter bitmap alone).
    std::fs::write(&ranges, format!("{EDGE_V4}/32\n2400:cb00::/32\n")).unwrap();
    let log = dir.path("agent.log");
    let agent = Agent::on(&lab.origin, "443", "2", &log)
        .args(&[
            "--ranges",
            ranges.to_str().unwrap(),
            "--refresh-ranges-every",
            "1s",
        ])
        .env("TRACER_TEST_FAIL_IPV6_UPDATE", "1")
        .start();
    std::fs::write(
        &ranges,
        "198.51.100.7/32\n2606:4700::/32\n2803:f800::/32\n2a06:98c0::/29\n",
    )
    .unwrap();
    assert!(
        integration_tests::eventually(Duration::from_secs(10), || agent
            .tracer
            .stderr_text()
            .contains("keeping the current list")),
        "the refresh did not fail: {}",
        agent.tracer.stderr_text()
    );
    for _ in 0..3 {
        let _ = lab.edge.connect(EDGE_V4, sockaddr(ORIGIN_V4, 443), SHORT);
    }
    agent.metrics_until(Duration::from_secs(10), |m| {
        metric(m, &connections(443, "refused")) == Some(3.0)
    });
    agent.stop();
}

/// Serves `response` (a whole HTTP answer) to each of `n` requests on `listener`, in a thread
/// that gives up after `limit`; returns how many it served.
fn serve(
    listener: std::net::TcpListener,
    response: String,
    n: usize,
    limit: Duration,
) -> std::thread::JoinHandle<usize> {
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        use std::io::{Read as _, Write as _};
        let deadline = std::time::Instant::now() + limit;
        let mut served = 0;
        while served < n && std::time::Instant::now() < deadline {
            match listener.accept() {
                Ok((mut c, _)) => {
                    c.set_nonblocking(false).unwrap();
                    let _ = c.read(&mut [0u8; 2048]);
                    let _ = c.write_all(response.as_bytes());
                    served += 1;
                }
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
        served
    })
}

/// Runs `tracer ARGS` in `ns` with `env`: (exit code, stdout, stderr).
fn tracer_in(
    ns: &integration_tests::Netns,
    args: &[&str],
    env: &[(&str, &str)],
) -> (i32, String, String) {
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", &ns.name])
        .arg(integration_tests::tracer_bin())
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("run tracer");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const LIST: &str = r#"{"result":{"ipv4_cidrs":["173.245.48.0/20"],"ipv6_cidrs":["2400:cb00::/32"],"etag":"swapped"},"success":true}"#;

/// A mirror on this host (plain http allowed there) that redirects to plain http elsewhere:
/// the redirect is refused, not followed — the list could be swapped on the way.
#[test]
fn a_redirect_to_plain_http_is_refused() {
    let lab = Lab::new();
    let state = TempDir::new(&format!("hostile-redirect-{}", lab.origin.name));
    let mirror = lab.origin.listen("127.0.0.1", 8081, 16);
    let elsewhere = lab.origin.listen(ORIGIN_V4, 8082, 16);
    let redirect = format!(
        "HTTP/1.1 302 Found\r\nLocation: http://{ORIGIN_V4}:8082/ips\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    let list = format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{LIST}",
        LIST.len()
    );
    let mirror = serve(mirror, redirect, 1, Duration::from_secs(20));
    // The tracer is done long before this one gives up.
    let elsewhere = serve(elsewhere, list, 1, Duration::from_secs(1));
    let (code, out, err) = tracer_in(
        &lab.origin,
        &["ranges", "--refresh", "--format", "json"],
        &[
            ("TRACER_STATE_DIR", state.0.to_str().unwrap()),
            ("TRACER_RANGES_URL", "http://127.0.0.1:8081/ips"),
        ],
    );
    assert_eq!(mirror.join().unwrap(), 1, "the mirror was asked");
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("redirected to") && err.contains("refused"),
        "{err}"
    );
    assert!(out.contains("\"source\": \"embedded\""), "{out}");
    assert!(!out.contains("swapped"), "{out}");
    // Nothing reached the plain-http target (its server gives up and served none).
    drop(lab);
    assert_eq!(elsewhere.join().unwrap(), 0);
}

/// The cache is the tracer's own file: in a state directory others can write, or planted as a
/// FIFO, it is not read (and nothing waits on it); a valid one in a trusted directory is.
#[test]
fn the_cache_is_read_only_as_the_tracers_own_file() {
    use std::os::unix::fs::PermissionsExt as _;
    let lab = Lab::new();
    let cache = r#"{"fetched_at":"2026-12-01T00:00:00Z","etag":"planted","http_etag":null,"ipv4_cidrs":["173.245.48.0/20"],"ipv6_cidrs":["2400:cb00::/32"]}"#;
    let ranges = |dir: &TempDir| {
        tracer_in(
            &lab.origin,
            &["ranges", "--format", "json"],
            &[("TRACER_STATE_DIR", dir.0.to_str().unwrap())],
        )
    };
    // Trusted: used.
    let good = TempDir::new("hostile-cache-good");
    std::fs::set_permissions(&good.0, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(good.path("ranges.json"), cache).unwrap();
    let (code, out, err) = ranges(&good);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("\"source\": \"cache\"") && out.contains("planted"),
        "{out}"
    );
    // Writable by others: refused, said once.
    let open = TempDir::new("hostile-cache-open");
    std::fs::write(open.path("ranges.json"), cache).unwrap();
    std::fs::set_permissions(&open.0, std::fs::Permissions::from_mode(0o777)).unwrap();
    let (code, out, err) = ranges(&open);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("\"source\": \"embedded\"") && !out.contains("planted"),
        "{out}"
    );
    assert!(err.contains("writable by group or others"), "{err}");
    // A FIFO: refused at once, no reader waited for.
    let fifo = TempDir::new("hostile-cache-fifo");
    std::fs::set_permissions(&fifo.0, std::fs::Permissions::from_mode(0o755)).unwrap();
    let c = std::ffi::CString::new(fifo.path("ranges.json").to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let started = std::time::Instant::now();
    let (code, out, err) = ranges(&fifo);
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("\"source\": \"embedded\""), "{out}");
    assert!(err.contains("not a regular file"), "{err}");
}

/// Route changes faster than the journal reads overrun its rtnetlink socket (ENOBUFS): the
/// agent says changes were lost and states the interface as it is now, instead of silently
/// missing them.
#[test]
fn lost_route_notifications_are_said() {
    let lab = Lab::new();
    let dir = TempDir::new(&format!("hostile-enobufs-{}", lab.origin.name));
    let log = dir.path("agent.log");
    let agent = Agent::on(&lab.origin, "443", "2", &log).start();
    let batch = dir.path("routes.batch");
    let lines: String = (0..40_000u32)
        .map(|i| {
            format!(
                "route add 10.{}.{}.0/24 dev {}\n",
                i / 256,
                i % 256,
                integration_tests::ORIGIN_IF
            )
        })
        .collect();
    std::fs::write(&batch, lines).unwrap();
    lab.origin
        .sh(&format!("ip -batch {}", batch.to_str().unwrap()));
    assert!(
        integration_tests::eventually(Duration::from_secs(10), || agent
            .tracer
            .stderr_text()
            .contains("lost route/address/link notifications")),
        "{}",
        agent.tracer.stderr_text()
    );
    agent.stop();
}

/// A firewall drops the edge's SYNs and the ruleset holds a set of 600,000 addresses (listing
/// it whole takes seconds and more than the tracer reads): the windows keep closing on time
/// — their reports are assembled off the capture thread, the ruleset read without set
/// elements and the report says so — and the verdict still names the firewall.
#[test]
fn a_huge_ruleset_never_stalls_the_windows() {
    let lab = Lab::new();
    let dir = TempDir::new(&format!("hostile-bigset-{}", lab.origin.name));
    let mut script = String::from(
        "add table inet big\n\
         add set inet big many { type ipv4_addr; size 1000000; }\n\
         add chain inet big input { type filter hook input priority 0; }\n\
         add rule inet big input tcp dport 8443 drop\n",
    );
    for chunk in 0..12u32 {
        let elems: Vec<String> = (0..50_000u32)
            .map(|i| {
                let a = (10u32 << 24) + chunk * 50_000 + i;
                std::net::Ipv4Addr::from(a).to_string()
            })
            .collect();
        script += &format!("add element inet big many {{ {} }}\n", elems.join(", "));
    }
    let file = dir.path("big.nft");
    std::fs::write(&file, script).unwrap();
    lab.origin.sh(&format!("nft -f {}", file.to_str().unwrap()));
    let log = dir.path("agent.log");
    let agent = Agent::on(&lab.origin, "8443", "1", &log).start();
    let started = std::time::Instant::now();
    while started.elapsed() < Duration::from_secs(10) {
        let _ = lab.edge.connect(
            EDGE_V4,
            sockaddr(ORIGIN_V4, 8443),
            Duration::from_millis(200),
        );
    }
    std::thread::sleep(Duration::from_secs(2));
    agent.stop();
    let verdicts: Vec<serde_json::Value> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["kind"] == "verdict")
        .collect();
    // About one a second: a window waiting on the ruleset would hold the next ones back.
    assert!(verdicts.len() >= 7, "{} verdicts in 12 s", verdicts.len());
    let lost: u64 = verdicts
        .iter()
        .map(|v| v["lost_events"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(lost, 0);
    let firewall: Vec<&serde_json::Value> = verdicts
        .iter()
        .filter(|v| v["verdict"] == "firewall_drop")
        .collect();
    assert!(!firewall.is_empty(), "{verdicts:#?}");
    assert!(
        firewall
            .iter()
            .any(|v| v["notes"].to_string().contains("read without set elements")),
        "{firewall:#?}"
    );
}

/// CPU seconds a process has used (user + system).
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = stat.rsplit_once(')').unwrap().1;
    let f: Vec<&str> = after.split_whitespace().collect();
    // Fields 14 and 15 of stat (utime, stime), counted after the command name's ')'.
    let ticks: f64 = f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap();
    // SAFETY: sysconf has no preconditions.
    ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

/// Clients that hold connections to the metrics endpoint with headers that never end, more
/// of them than the agent has descriptors left: the endpoint caps and backs off (no spinning
/// on EMFILE), the capture keeps counting the edge's attempts, a header past the size bound is
/// refused, and once the clients are gone `/healthz` answers ok.
#[test]
fn hostile_metrics_clients_cannot_stall_the_capture() {
    use std::io::{Read as _, Write as _};
    let lab = Lab::new();
    let dir = TempDir::new(&format!("hostile-http-{}", lab.origin.name));
    let log = dir.path("agent.log");
    let agent = Agent::on(&lab.origin, "8080", "1", &log).start();
    let pid = agent.tracer.pid();
    let open = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count();
    integration_tests::sh(&format!("prlimit --pid {pid} --nofile={0}:{0}", open + 8));
    let addr = sockaddr("127.0.0.1", 10521);
    let holders = lab.origin.enter(move || {
        (0..60)
            .filter_map(|_| {
                let mut s = std::net::TcpStream::connect_timeout(&addr, SHORT).ok()?;
                let _ = write!(s, "GET /metrics HTTP/1.1\r\nX-Pad: {}", "a".repeat(4000));
                Some(s)
            })
            .collect::<Vec<_>>()
    });
    assert!(holders.len() > 20, "{} clients connected", holders.len());
    let cpu_before = cpu_secs(pid);
    refused_attempts(&lab, 5);
    std::thread::sleep(Duration::from_secs(3));
    let cpu = cpu_secs(pid) - cpu_before;
    assert!(
        cpu < 1.5,
        "the agent used {cpu:.2} CPU seconds in 3 s: spinning on accept"
    );
    drop(holders);
    let body = agent.metrics_until(Duration::from_secs(15), |m| {
        metric(m, &connections(8080, "refused")).unwrap_or(0.0) >= 5.0
    });
    assert_eq!(metric(&body, &connections(8080, "refused")), Some(5.0));
    // A header past the bound is refused, not buffered.
    let answer = lab.origin.enter(move || {
        let mut s = std::net::TcpStream::connect_timeout(&addr, SHORT).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let _ = write!(
            s,
            "GET /metrics HTTP/1.1\r\nX-Pad: {}\r\n\r\n",
            "a".repeat(64 * 1024)
        );
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    });
    assert!(!answer.contains("200 OK"), "{answer}");
    let (status, body) = lab.origin.http_get("127.0.0.1:10521", "/healthz").unwrap();
    assert!(
        status.contains("200") && body.trim() == "ok",
        "{status} {body}"
    );
    agent.stop();
}

/// On a kernel without tcx (forced here) an agent running as pid 1 of its own pid namespace
/// (`docker run --network host` without `--pid host`) holds a clsact filter; a `diagnose`
/// started and stopped beside it must not take it for a dead tracer's leftover. Before, the
/// filter's handle was the agent's pid (1), which the host's /proc does not show as a tracer,
/// and the diagnose deleted it: the agent counted nothing more.
#[test]
fn a_second_tracer_never_removes_a_running_agents_filter() {
    use integration_tests::{Tracer, ORIGIN_IF};
    const NO_TCX: (&str, &str) = ("TRACER_NO_TCX", "1");
    let lab = Lab::new();
    let dir = TempDir::new(&format!("hostile-clsact-{}", lab.origin.name));
    let (log, state) = (dir.path("agent.log"), dir.path("container-state"));
    let agent = Tracer::start_under(
        &lab.origin,
        &[
            "unshare",
            "--pid",
            "--fork",
            "--mount-proc",
            "--kill-child=SIGTERM",
        ],
        &[
            "agent",
            "--iface",
            ORIGIN_IF,
            "--port",
            "443",
            "--window",
            "1",
            "--log-file",
            log.to_str().unwrap(),
        ],
        // A container has a state directory of its own.
        &[NO_TCX, ("TRACER_STATE_DIR", state.to_str().unwrap())],
    );
    let syns = || {
        lab.origin
            .http_get("127.0.0.1:10521", "/metrics")
            .map(|(_, m)| metric(&m, "tracer_edge_syn_total{port=\"443\"}").unwrap_or(0.0))
            .unwrap_or(0.0)
    };
    let edge_syns = |n: usize| {
        for _ in 0..n {
            let _ = lab.edge.connect(EDGE_V4, sockaddr(ORIGIN_V4, 443), SHORT);
        }
    };
    edge_syns(2);
    assert!(integration_tests::eventually(
        Duration::from_secs(5),
        || syns() == 2.0
    ));
    let diagnose = Tracer::diagnose_with(&lab.origin, "443", "1", &[], &[NO_TCX]);
    let (code, _) = diagnose.wait(Duration::from_secs(30));
    assert_eq!(code, 0);
    edge_syns(3);
    assert!(
        integration_tests::eventually(Duration::from_secs(5), || syns() == 5.0),
        "the agent stopped counting: {} edge SYNs; filters now:\n{}",
        syns(),
        lab.origin
            .sh(&format!("tc filter show dev {ORIGIN_IF} ingress"))
    );
    drop(agent);
}

/// A random-source SYN flood from outside Cloudflare's ranges at a listening port fills the
/// agent's table of open attempts (its SYN-ACKs go nowhere) while the edge tries port 8443,
/// where nothing listens, five times: every edge refusal is counted — the table ends non-edge
/// attempts first — and the evictions are counted by class.
#[test]
fn a_non_edge_flood_never_evicts_the_edge() {
    use integration_tests::{flood, ORIGIN_IF};
    const N: u32 = 220_000;
    let lab = Lab::new();
    lab.origin.sh(&format!(
        "sysctl -qw net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.{ORIGIN_IF}.rp_filter=0; \
         ip route add 11.0.0.0/8 via {EDGE_V4} dev {ORIGIN_IF}"
    ));
    let _listener = lab.origin.listen("0.0.0.0", 443, 4096);
    let dir = TempDir::new(&format!("hostile-evict-{}", lab.origin.name));
    let log = dir.path("agent.log");
    let agent = Agent::on(&lab.origin, "443,8443", "2", &log)
        .args(&["--log-events", "none"])
        .start();
    let (edge, origin) = (lab.edge.name.clone(), lab.origin.name.clone());
    let flooder = std::thread::spawn(move || {
        flood::flood_origin(&edge, &origin, N, 40_000, |i| flood::Syn {
            // Distinct sources across 11.0.0.0/8, outside the ranges.
            src: std::net::Ipv4Addr::from((11u32 << 24) | (i * 7919 % (1 << 24))),
            sport: 1024 + (i % 60000) as u16,
            dport: 443,
            seq: i,
        })
        .unwrap()
    });
    // Once the table is full (131,072 open attempts), the edge tries 8443.
    std::thread::sleep(Duration::from_secs(4));
    for _ in 0..5 {
        let _ = lab.edge.connect(EDGE_V4, sockaddr(ORIGIN_V4, 8443), SHORT);
        std::thread::sleep(Duration::from_millis(200));
    }
    flooder.join().unwrap();
    let body = agent.metrics_until(Duration::from_secs(15), |m| {
        metric(m, &connections(8443, "refused")).unwrap_or(0.0) >= 5.0
            || metric(m, &connections(8443, "unknown")).unwrap_or(0.0) > 0.0
    });
    assert!(
        metric(&body, "tracer_attempts_evicted_total").unwrap_or(0.0) > 0.0,
        "the flood never filled the table: the test proves nothing\n{body}"
    );
    // Exactly the five, each once: none ended early as unknown (or counted again).
    assert_eq!(
        metric(&body, &connections(8443, "refused")),
        Some(5.0),
        "{body}"
    );
    assert_eq!(
        metric(&body, &connections(8443, "unknown")),
        Some(0.0),
        "{body}"
    );
    assert_eq!(
        metric(&body, "tracer_edge_attempts_evicted_total"),
        Some(0.0)
    );
    agent.stop();
}

/// A loop of listen/close on a watched port, for `secs` seconds (perl: in every Debian).
fn listen_loop(secs: u32) -> String {
    format!(
        "perl -MSocket -e 'my $t = time + {secs}; while (time < $t) {{ socket(S, PF_INET, SOCK_STREAM, 0); setsockopt(S, SOL_SOCKET, SO_REUSEADDR, 1); bind(S, sockaddr_in(8080, INADDR_ANY)); listen(S, 1); close(S) }}'"
    )
}

/// Any local user can make a network namespace (`unshare -rn`) and listen/close on a watched
/// port in a loop; a container's process can do the same in its own. Neither fills the ring
/// nor the journal: the kernel never reports an unprivileged user's namespace and gives any
/// other namespace 20 changes a second. The edge's attempts meanwhile are counted exactly, and
/// a real listener change in the tracer's namespace is still journaled.
#[test]
fn listener_floods_cannot_fill_the_ring_or_the_journal() {
    let lab = Lab::new();
    let dir = TempDir::new(&format!("hostile-listen-{}", lab.origin.name));
    let log = dir.path("agent.log");
    let agent = Agent::on(&lab.origin, "443,8080", "1", &log).start();
    let loop_cmd = listen_loop(3);
    let unprivileged = std::process::Command::new("ip")
        .args(["netns", "exec", &lab.origin.name])
        .args([
            "setpriv",
            "--reuid",
            "65534",
            "--regid",
            "65534",
            "--clear-groups",
        ])
        .args(["unshare", "-rn", "sh", "-c", &loop_cmd])
        .spawn()
        .unwrap();
    let container = std::process::Command::new("ip")
        .args(["netns", "exec", &lab.container.name, "sh", "-c", &loop_cmd])
        .spawn()
        .unwrap();
    refused_attempts(&lab, 5);
    for mut p in [unprivileged, container] {
        assert!(p.wait().unwrap().success());
    }
    // A real change in the tracer's own namespace, after the floods.
    let listener = lab.origin.listen("0.0.0.0", 8080, 16);
    let body = agent.metrics_until(Duration::from_secs(10), |m| {
        metric(m, &connections(8080, "refused")).unwrap_or(0.0) >= 5.0
            && metric(
                m,
                "tracer_listener_changes_dropped_total{reason=\"rate_limit\"}",
            )
            .unwrap_or(0.0)
                > 0.0
    });
    let history = lab
        .origin
        .http_get("127.0.0.1:10521", "/history")
        .unwrap()
        .1;
    drop(listener);
    agent.stop();
    let dropped = |r: &str| {
        metric(
            &body,
            &format!("tracer_listener_changes_dropped_total{{reason=\"{r}\"}}"),
        )
        .unwrap_or(0.0)
    };
    assert!(dropped("unprivileged_namespace") > 1000.0, "{body}");
    assert!(dropped("rate_limit") > 1000.0, "{body}");
    assert_eq!(
        metric(&body, &connections(8080, "refused")),
        Some(5.0),
        "{body}"
    );
    assert_eq!(
        metric(&body, &connections(8080, "unknown")),
        Some(0.0),
        "{body}"
    );
    // The container's 3 s at 20 a second, not its thousands.
    let ups = metric(&body, "tracer_changes_total{what=\"listener_up\"}").unwrap_or(0.0);
    assert!(ups <= 100.0, "{ups} listener_up changes journaled");
    let doc: serde_json::Value = serde_json::from_str(&history).unwrap();
    let own = doc["changes"].as_array().unwrap().iter().any(|c| {
        c["what"] == "listener_up"
            && c["detail"].as_str().is_some_and(|d| {
                d.contains("listening on 0.0.0.0:8080") && !d.contains(" in namespace netns:[")
            })
    });
    assert!(own, "the real listener is not in the journal: {history}");
}

/// A flood of SYNs from one edge address at a port where nothing listens, its source ports
/// wrapping (each four-tuple reused several times, with a new sequence number), fast enough
/// that the kernel's buffers lose events: every SYN is counted as the refusal the kernel says
/// it was — none unknown, none unanswered — and the SYN and refusal counters agree.
#[test]
fn a_flood_at_a_closed_port_is_counted_as_the_kernel_counted_it() {
    use integration_tests::flood;
    const N: u32 = 400_000;
    let lab = Lab::new();
    let dir = TempDir::new(&format!("hostile-closed-{}", lab.origin.name));
    let log = dir.path("agent.log");
    let agent = Agent::on(&lab.origin, "443", "2", &log)
        .args(&["--log-events", "none"])
        .start();
    let src: std::net::Ipv4Addr = EDGE_V4.parse().unwrap();
    flood::flood_origin(&lab.edge.name, &lab.origin.name, N, 0, move |i| {
        flood::Syn {
            src,
            // Source ports wrap: each four-tuple comes back every 64,512 SYNs.
            sport: 1024 + (i % 64_512) as u16,
            dport: 443,
            seq: i.wrapping_mul(2_654_435_761),
        }
    })
    .unwrap();
    let n = f64::from(N);
    // Attempts whose reset was lost end after 25 s without an answer.
    let body = agent.metrics_until(Duration::from_secs(60), |m| {
        metric(m, &connections(443, "refused")).unwrap_or(0.0)
            + metric(m, &connections(443, "unknown")).unwrap_or(0.0)
            + metric(m, &connections(443, "unanswered")).unwrap_or(0.0)
            >= n
            && metric(m, "tracer_open_attempts") == Some(0.0)
    });
    std::thread::sleep(Duration::from_secs(4));
    let body = {
        let later = agent.scrape();
        if later.is_empty() {
            body
        } else {
            later
        }
    };
    agent.stop();
    eprintln!(
        "closed-port flood of {N}: refused {:?} unknown {:?} unanswered {:?} syn {:?} kernel {:?} lost {:?}",
        metric(&body, &connections(443, "refused")),
        metric(&body, &connections(443, "unknown")),
        metric(&body, &connections(443, "unanswered")),
        metric(&body, "tracer_edge_syn_total{port=\"443\"}"),
        metric(&body, "tracer_edge_syns_refused_total"),
        metric(&body, "tracer_events_lost_total"),
    );
    assert_eq!(metric(&body, "tracer_edge_syns_refused_total"), Some(n));
    assert_eq!(
        metric(&body, &connections(443, "refused")),
        Some(n),
        "{body}"
    );
    assert_eq!(metric(&body, &connections(443, "unknown")), Some(0.0));
    assert_eq!(metric(&body, &connections(443, "unanswered")), Some(0.0));
    assert_eq!(
        metric(&body, "tracer_edge_syn_total{port=\"443\"}"),
        Some(n)
    );
}
