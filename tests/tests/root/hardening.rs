//! Hostile input and hostile places (#16): planted symlinks at every path the tracer writes as
//! root, oversized and malformed ranges, bad settings, a full output, a non-root user with the
//! capabilities. Each error is one line and a non-zero exit; nothing outside is written.

use std::{os::unix::fs::PermissionsExt as _, process::Command, time::Duration};

use integration_tests::{agent::Agent, tracer_bin, Lab, TempDir, ORIGIN_IF};

/// Runs the tracer with `args` and `env` in the host namespace: (exit code, stdout, stderr).
fn run(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let out = Command::new(tracer_bin())
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

/// The error is one short line that says `what`, and the exit status is not 0 (clap's own
/// errors add its standard "For more information, try '--help'." hint).
fn one_line_error((code, _, err): (i32, String, String), what: &str) {
    assert_ne!(code, 0, "expected a failure: {err}");
    // Start-up notes (`note:`, warnings) may precede it; the error itself is one line.
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("error")).collect();
    assert_eq!(lines.len(), 1, "one error line: {err}");
    let err = lines[0];
    assert!(err.len() < 400, "short: {err}");
    assert!(!err.contains('\x1b'), "no raw escapes: {err:?}");
    assert!(err.contains(what), "expected {what:?} in {err}");
    assert!(
        !err.contains("panicked") && !err.contains("backtrace"),
        "{err}"
    );
}

const GOOD: &str = r#"{"result":{"ipv4_cidrs":["173.245.48.0/20"],"ipv6_cidrs":["2400:cb00::/32"],"etag":"x"},"success":true}"#;

/// Answers one HTTP request on loopback with `body`: (URL, the server's thread). The thread
/// gives up after 30 s, so a tracer that never asks fails the test instead of hanging it.
fn serve_once(body: &'static str) -> (String, std::thread::JoinHandle<()>) {
    let server = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    server.set_nonblocking(true).unwrap();
    let url = format!("http://{}/ips", server.local_addr().unwrap());
    let t = std::thread::spawn(move || {
        use std::io::{Read as _, Write as _};
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let accepted = loop {
            match server.accept() {
                Ok((c, _)) => break Some(c),
                Err(_) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(5))
                }
                Err(_) => break None,
            }
        };
        if let Some(mut c) = accepted {
            c.set_nonblocking(false).unwrap();
            let mut buf = [0u8; 2048];
            let _ = c.read(&mut buf);
            let _ = c.write_all(
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                )
                .as_bytes(),
            );
        }
    });
    (url, t)
}

fn victim(dir: &TempDir) -> std::path::PathBuf {
    let v = dir.path("victim");
    std::fs::write(&v, "precious").unwrap();
    v
}

#[test]
fn the_ranges_cache_never_follows_a_planted_symlink() {
    let state = TempDir::new("harden-cache");
    let outside = TempDir::new("harden-outside");
    let v = victim(&outside);
    // At the cache's own name and at the name earlier versions used for its temporary file.
    std::os::unix::fs::symlink(&v, state.path("ranges.json")).unwrap();
    std::os::unix::fs::symlink(&v, state.path("ranges.json.tmp")).unwrap();
    let (url, server) = serve_once(GOOD);
    let state_dir = state.0.to_str().unwrap();
    let (code, _, err) = run(
        &["ranges", "--refresh", "--format", "json"],
        &[("TRACER_STATE_DIR", state_dir), ("TRACER_RANGES_URL", &url)],
    );
    server.join().unwrap();
    assert_eq!(code, 0, "{err}");
    assert_eq!(std::fs::read_to_string(&v).unwrap(), "precious");
    let cache = state.path("ranges.json");
    assert!(!std::fs::symlink_metadata(&cache)
        .unwrap()
        .file_type()
        .is_symlink());
    assert!(std::fs::read_to_string(&cache)
        .unwrap()
        .contains("173.245.48.0/20"));
}

#[test]
fn a_state_directory_others_can_write_is_refused() {
    let state = TempDir::new("harden-open-state");
    std::fs::set_permissions(&state.0, std::fs::Permissions::from_mode(0o777)).unwrap();
    let (url, server) = serve_once(GOOD);
    let (code, out, err) = run(
        &["ranges", "--refresh", "--format", "json"],
        &[
            ("TRACER_STATE_DIR", state.0.to_str().unwrap()),
            ("TRACER_RANGES_URL", &url),
        ],
    );
    server.join().unwrap();
    // The list is used, not cached in a directory others could plant files in; one line
    // says why.
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("\"source\": \"api\""), "{out}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.contains("writable by group or others"), "{err}");
    assert!(std::fs::read_dir(&state.0).unwrap().next().is_none());
}

#[test]
fn the_ready_file_never_follows_a_planted_symlink() {
    let lab = Lab::new();
    let dir = TempDir::new(&format!("harden-ready-{}", lab.origin.name));
    let v = victim(&dir);
    let ready = dir.path("ready");
    std::os::unix::fs::symlink(&v, &ready).unwrap();
    // Earlier versions wrote `<path>.<pid>.tmp`: plant it for the next few thousand pids.
    let next_pid = std::process::id();
    for pid in next_pid..next_pid + 4000 {
        let _ = std::os::unix::fs::symlink(&v, dir.path(&format!("ready.{pid}.tmp")));
    }
    let out = Command::new("ip")
        .args(["netns", "exec", &lab.origin.name])
        .arg(tracer_bin())
        .args([
            "events",
            "--iface",
            ORIGIN_IF,
            "--duration",
            "0.5",
            "--ready-file",
        ])
        .arg(&ready)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(std::fs::read_to_string(&v).unwrap(), "precious");
    let pid = std::fs::read_to_string(&ready).unwrap();
    assert!(pid.trim().parse::<u32>().is_ok(), "{pid}");
}

#[test]
fn the_agent_log_refuses_a_planted_symlink() {
    let lab = Lab::new();
    let dir = TempDir::new(&format!("harden-log-{}", lab.origin.name));
    let v = victim(&dir);
    let log = dir.path("agent.log");
    std::os::unix::fs::symlink(&v, &log).unwrap();
    let out = Command::new("ip")
        .args(["netns", "exec", &lab.origin.name])
        .arg(tracer_bin())
        .args([
            "agent",
            "--iface",
            ORIGIN_IF,
            "--metrics-addr",
            "127.0.0.1:0",
            "--log-file",
        ])
        .arg(&log)
        .output()
        .unwrap();
    one_line_error(
        (
            out.status.code().unwrap_or(-1),
            String::new(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ),
        "symlink",
    );
    assert_eq!(std::fs::read_to_string(&v).unwrap(), "precious");
}

#[test]
fn oversized_and_hostile_ranges_files_are_one_line_errors() {
    let dir = TempDir::new("harden-ranges");
    let file = |name: &str, text: &str| {
        let p = dir.path(name);
        std::fs::write(&p, text).unwrap();
        p.to_str().unwrap().to_string()
    };
    let lines = |n: usize| -> String {
        (0..n)
            .map(|i| format!("10.{}.{}.0/24\n", i / 256 % 256, i % 256))
            .collect()
    };
    let ok = file("4096", &lines(4096));
    let (code, out, err) = run(&["ranges", "--ranges", &ok, "--format", "json"], &[]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&out).unwrap()["ipv4"]
            .as_array()
            .unwrap()
            .len(),
        4096
    );
    let over = file("4097", &lines(4097));
    one_line_error(run(&["ranges", "--ranges", &over], &[]), "4097 IPv4 ranges");
    let huge = file(
        "100000",
        &(0..100_000)
            .map(|i| format!("11.{}.{}.{}/32\n", i / 65536, i / 256 % 256, i % 256))
            .collect::<String>(),
    );
    one_line_error(run(&["ranges", "--ranges", &huge], &[]), "at most 4096");
    one_line_error(
        run(&["ranges", "--ranges", "/dev/zero"], &[]),
        "larger than 4194304 bytes",
    );
    let long = file("long", &format!("\x1b[31m{}\n", "9".repeat(5_000_000)));
    one_line_error(run(&["ranges", "--ranges", &long], &[]), "larger than");
    let escape = file("escape", &format!("\x1b[2J\x1b[31m{}\n", "9".repeat(200)));
    one_line_error(run(&["ranges", "--ranges", &escape], &[]), "not a CIDR");
    let host_bits = file("hostbits", "1.2.3.4/8\n");
    one_line_error(run(&["ranges", "--ranges", &host_bits], &[]), "host bits");
    let all = file("all", "0.0.0.0/0\n");
    one_line_error(run(&["ranges", "--ranges", &all], &[]), "--all-peers");
}

#[test]
fn refresh_settings_are_checked_before_any_fetch() {
    let state = TempDir::new("harden-settings");
    let s = state.0.to_str().unwrap();
    for bad in ["0", "-1", "abc", "1e12"] {
        one_line_error(
            run(
                &["ranges", "--refresh"],
                &[("TRACER_STATE_DIR", s), ("TRACER_RANGES_TIMEOUT_SECS", bad)],
            ),
            "TRACER_RANGES_TIMEOUT_SECS",
        );
    }
    one_line_error(
        run(
            &["ranges", "--refresh"],
            &[
                ("TRACER_STATE_DIR", s),
                ("TRACER_RANGES_URL", "http://mirror.example/ips"),
            ],
        ),
        "plain http",
    );
}

#[test]
fn a_corrupt_cache_is_named_in_a_note() {
    let state = TempDir::new("harden-corrupt");
    std::fs::write(state.path("ranges.json"), "{ not json").unwrap();
    let (code, out, err) = run(
        &["ranges", "--format", "json"],
        &[("TRACER_STATE_DIR", state.0.to_str().unwrap())],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(
        err.contains("ranges cache") && err.contains("unusable"),
        "{err}"
    );
    assert!(err.contains("using the embedded list"), "{err}");
    assert!(out.contains("\"source\": \"embedded\""), "{out}");
}

#[test]
fn bad_durations_name_their_flag() {
    let lab = Lab::new();
    let run_ns = |args: &[&str]| {
        let out = Command::new("ip")
            .args(["netns", "exec", &lab.origin.name])
            .arg(tracer_bin())
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::new(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    one_line_error(
        run_ns(&[
            "diagnose",
            "--iface",
            ORIGIN_IF,
            "--duration",
            "99999999999",
        ]),
        "--duration 99999999999 is longer than a year",
    );
    one_line_error(
        run_ns(&["agent", "--iface", ORIGIN_IF, "--window", "0"]),
        "--window must be a positive number",
    );
    one_line_error(
        run_ns(&[
            "agent",
            "--iface",
            ORIGIN_IF,
            "--refresh-ranges-every",
            "1ms",
        ]),
        "at least 1s",
    );
    one_line_error(
        run_ns(&[
            "agent",
            "--iface",
            ORIGIN_IF,
            "--refresh-ranges-every",
            "10s",
        ]),
        "at least 1m when refreshing from the API",
    );
}

#[test]
fn events_to_a_full_output_fail() {
    let lab = Lab::new();
    let dir = TempDir::new(&format!("harden-full-{}", lab.origin.name));
    let ready = dir.path("ready");
    // A long duration: the first event written must end it, with the error.
    let mut child = Command::new("ip")
        .args(["netns", "exec", &lab.origin.name])
        .arg(tracer_bin())
        .args([
            "events",
            "--iface",
            ORIGIN_IF,
            "--port",
            "443",
            "--duration",
            "60",
            "--ready-file",
        ])
        .arg(&ready)
        .stdout(std::fs::File::create("/dev/full").unwrap())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Traffic only once every program is attached (a slow machine takes seconds to load).
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !ready.exists() {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "events never ready");
        std::thread::sleep(Duration::from_millis(20));
    }
    for _ in 0..3 {
        let _ = lab.edge.connect(
            integration_tests::EDGE_V4,
            integration_tests::sockaddr(integration_tests::ORIGIN_V4, 443),
            Duration::from_millis(300),
        );
    }
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    one_line_error(
        (out.status.code().unwrap_or(-1), String::new(), err),
        "cannot write events to stdout",
    );
}

#[test]
fn the_metrics_port_the_kernel_picked_is_said() {
    let lab = Lab::new();
    let dir = TempDir::new(&format!("harden-port-{}", lab.origin.name));
    let t = integration_tests::Tracer::start(
        &lab.origin,
        &[
            "agent",
            "--iface",
            ORIGIN_IF,
            "--metrics-addr",
            "127.0.0.1:0",
            "--log-file",
            dir.path("log").to_str().unwrap(),
        ],
    );
    std::thread::sleep(Duration::from_millis(300));
    let err = t.stderr_text();
    t.stop();
    let port = err
        .split("http://127.0.0.1:")
        .nth(1)
        .and_then(|r| r.split('/').next())
        .and_then(|p| p.parse::<u16>().ok());
    assert!(port.is_some_and(|p| p != 0), "{err}");
}

#[test]
fn a_non_root_user_with_the_capabilities_is_told_what_tracefs_lacks() {
    if Command::new("setpriv").arg("--help").output().is_err() {
        panic!("setpriv (util-linux) is needed for this test");
    }
    let lab = Lab::new();
    // A private tracefs mount only root may read, then the tracer as nobody with CAP_BPF,
    // CAP_PERFMON and CAP_NET_ADMIN.
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            &lab.origin.name,
            "unshare",
            "-m",
            "sh",
            "-c",
        ])
        .arg(format!(
            "mount -t tracefs -o mode=700 nodev /sys/kernel/tracing && \
             setpriv --reuid=65534 --regid=65534 --clear-groups \
               --inh-caps=+bpf,+perfmon,+net_admin --ambient-caps=+bpf,+perfmon,+net_admin \
               {} events --iface {ORIGIN_IF} --duration 0.5",
            tracer_bin().display()
        ))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    one_line_error(
        (out.status.code().unwrap_or(-1), String::new(), err),
        "mounted but not readable by this user",
    );
}

/// A spoofed-source SYN flood at a closed watched port while the agent runs with its default
/// `--log-events failures`: the log stays small (rate-limited, summed up), no attempt is
/// called unanswered, the kernel's own refusal count is exact, and the windows' refusals are
/// exact unless events were lost — then the loss is stated.
#[test]
fn a_syn_flood_cannot_fill_the_log_or_fake_unanswered() {
    use integration_tests::{flood, metric};
    const N: u32 = 200_000;
    let lab = Lab::new();
    lab.origin.sh(&format!(
        "sysctl -qw net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.{ORIGIN_IF}.rp_filter=0; \
         ip route add 173.245.48.0/20 dev {ORIGIN_IF}"
    ));
    let dir = TempDir::new(&format!("harden-flood-{}", lab.origin.name));
    let log = dir.path("agent.log");
    let agent = Agent::on(&lab.origin, "443", "3", &log)
        .metrics_addr("127.0.0.1:9531")
        .start();
    flood::flood_origin(&lab.edge.name, &lab.origin.name, N, 0, |i| flood::Syn {
        // Spoofed sources across 173.245.48.0/20, distinct ports and ISNs.
        src: std::net::Ipv4Addr::new(173, 245, 48 + ((i >> 8) & 0x0f) as u8, i as u8),
        sport: 1024 + (i % 60000) as u16,
        dport: 443,
        seq: i.wrapping_mul(2_654_435_761),
    })
    .unwrap();
    // Two windows after the flood: every attempt settles and is counted.
    std::thread::sleep(Duration::from_secs(8));
    let body = agent.scrape();
    let records = agent.stop();
    let size = std::fs::metadata(&log).unwrap().len();
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        size < 4 * 1024 * 1024,
        "the log grew to {size} bytes under {N} SYNs"
    );
    assert!(text.contains("\"kind\":\"suppressed\""), "no summary line");
    assert_eq!(
        metric(&body, "tracer_edge_syns_refused_total"),
        Some(f64::from(N)),
        "the kernel's count of refused edge SYNs is exact"
    );
    assert!(metric(&body, "tracer_log_lines_suppressed_total").unwrap_or(0.0) > 0.0);
    let verdicts: Vec<serde_json::Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["kind"] == "verdict")
        .collect();
    assert!(!verdicts.is_empty(), "{records:?}");
    let sum = |field: &str| -> u64 {
        verdicts
            .iter()
            .map(|v| v["edge"][field].as_u64().unwrap_or(0))
            .sum()
    };
    let lost: u64 = verdicts
        .iter()
        .map(|v| v["lost_events"].as_u64().unwrap_or(0))
        .sum();
    eprintln!(
        "flood of {N}: log {size} bytes, refused {}, unknown {}, unanswered {}, lost {lost}",
        sum("refused"),
        sum("unknown"),
        sum("unanswered")
    );
    assert_eq!(
        sum("unanswered"),
        0,
        "refusals counted as unanswered: {verdicts:#?}"
    );
    // Exact: what the events said, completed by the kernel's own count of refused SYNs.
    assert_eq!(sum("refused"), u64::from(N), "lost {lost}: {verdicts:#?}");
    assert_eq!(sum("unknown"), 0, "{verdicts:#?}");
}

/// A running agent whose ranges file grows past the kernel tables keeps the list the kernel
/// holds, says why once, and its verdicts report that list — never half of each.
#[test]
fn a_refresh_that_would_overflow_keeps_the_current_list() {
    use integration_tests::{metric, sockaddr, EDGE_V4, ORIGIN_V4};
    let lab = Lab::new();
    let dir = TempDir::new(&format!("harden-refresh-{}", lab.origin.name));
    let ranges = dir.path("ranges.txt");
    std::fs::write(&ranges, "173.245.48.0/20\n").unwrap();
    let log = dir.path("agent.log");
    let agent = Agent::on(&lab.origin, "443", "2", &log)
        .args(&[
            "--ranges",
            ranges.to_str().unwrap(),
            "--refresh-ranges-every",
            "1s",
        ])
        .metrics_addr("127.0.0.1:9532")
        .start();
    // 5000 ranges without the edge's: applied (even halfway) the edge would stop counting as
    // edge.
    let mut big: String = (0..4999)
        .map(|i| format!("11.{}.{}.0/24\n", i / 256, i % 256))
        .collect();
    big.push_str("198.18.0.0/15\n");
    std::fs::write(&ranges, big).unwrap();
    std::thread::sleep(Duration::from_secs(4));
    for _ in 0..3 {
        let _ = lab.edge.connect(
            EDGE_V4,
            sockaddr(ORIGIN_V4, 443),
            Duration::from_millis(300),
        );
    }
    std::thread::sleep(Duration::from_secs(5));
    let body = agent.scrape();
    let err = agent.tracer.stderr_text();
    agent.stop();
    // Still the old list: the edge's refusals count as edge.
    assert_eq!(
        metric(
            &body,
            "tracer_edge_connections_total{outcome=\"refused\",port=\"443\"}"
        ),
        Some(3.0),
        "{body}"
    );
    let text = std::fs::read_to_string(&log).unwrap();
    let last = text
        .lines()
        .rev()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["kind"] == "verdict")
        .expect("a verdict record");
    // The verdict record counts the ranges (it does not list them): still the one range.
    assert_eq!(last["ranges"]["ipv4_count"], 1, "{last:#}");
    assert_eq!(last["ranges"]["source"], "file", "{last:#}");
    let warnings = err.matches("keeping the current list").count();
    assert_eq!(warnings, 1, "said once, not at every refresh: {err}");
    assert!(err.contains("5000 IPv4 ranges"), "{err}");
}
