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
