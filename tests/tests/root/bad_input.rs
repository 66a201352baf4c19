//! Bad input ends in one line naming the fix, a non-zero exit, and no panic or backtrace.

use std::process::Command;

use integration_tests::*;

/// Runs the tracer in `ns` (or the test's namespace): (code, stdout, stderr).
fn tracer(ns: Option<&Netns>, args: &[&str]) -> (i32, String, String) {
    let mut cmd = match ns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", &ns.name]).arg(tracer_bin());
            c
        }
        None => Command::new(tracer_bin()),
    };
    let out = cmd.args(args).env("RUST_BACKTRACE", "1").output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn assert_one_line_error(code: i32, err: &str, must_contain: &[&str]) {
    assert_ne!(code, 0, "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one line expected: {err}");
    assert!(err.starts_with("error: "), "{err}");
    assert!(
        !err.contains("panicked") && !err.contains("backtrace"),
        "{err}"
    );
    for m in must_contain {
        assert!(err.contains(m), "expected {m:?} in {err}");
    }
}

#[test]
fn unknown_interface() {
    let lab = Lab::new();
    let (code, _, err) = tracer(
        Some(&lab.origin),
        &["events", "--iface", "nope0", "--duration", "1"],
    );
    assert_one_line_error(
        code,
        &err,
        &["unknown interface nope0", "--iface", ORIGIN_IF],
    );
}

#[test]
fn malformed_ranges_file() {
    let lab = Lab::new();
    let file = std::env::temp_dir().join(format!("t521-bad-{}.txt", std::process::id()));
    std::fs::write(&file, "173.245.48.0/20\nnot-a-cidr\n").unwrap();
    let (code, _, err) = tracer(
        Some(&lab.origin),
        &[
            "diagnose",
            "--iface",
            ORIGIN_IF,
            "--ranges",
            file.to_str().unwrap(),
            "--duration",
            "1",
        ],
    );
    let _ = std::fs::remove_file(&file);
    assert_one_line_error(
        code,
        &err,
        &["malformed ranges file", "line 2", "not-a-cidr"],
    );
}

#[test]
fn not_root_names_the_capabilities() {
    let lab = Lab::new();
    let out = Command::new("ip")
        .args(["netns", "exec", &lab.origin.name])
        .args([
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
        ])
        .arg(tracer_bin())
        .args(["events", "--iface", ORIGIN_IF, "--duration", "1"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_one_line_error(
        out.status.code().unwrap_or(-1),
        &err,
        &["CAP_BPF", "CAP_NET_ADMIN", "sudo"],
    );
}

#[test]
fn bad_duration_and_port() {
    let (code, _, err) = tracer(None, &["diagnose", "--duration", "0"]);
    assert_one_line_error(code, &err, &["--duration"]);
    let (code, _, err) = tracer(None, &["events", "--port", "0"]);
    assert_ne!(code, 0);
    assert!(err.contains("--port"), "{err}");
}

#[test]
fn unmounted_tracefs_is_mounted_again() {
    // A private mount namespace without tracefs, as `ip netns exec` can leave it.
    let lab = Lab::new();
    let out = Command::new("ip")
        .args(["netns", "exec", &lab.origin.name])
        .args(["unshare", "--mount", "--propagation", "private", "sh", "-c"])
        .arg(format!(
            "umount /sys/kernel/tracing 2>/dev/null; umount /sys/kernel/debug/tracing 2>/dev/null; \
             test ! -e /sys/kernel/tracing/events || exit 3; \
             {} events --iface {ORIGIN_IF} --duration 0.2",
            tracer_bin().display()
        ))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
}

#[test]
fn diagnose_runs_with_no_traffic_and_exits_zero() {
    let lab = Lab::new();
    let (code, out, err) = tracer(
        Some(&lab.origin),
        &[
            "diagnose",
            "--iface",
            ORIGIN_IF,
            "--duration",
            "1",
            "--format",
            "json",
        ],
    );
    assert_eq!(code, 0, "{err}");
    let r: serde_json::Value = serde_json::from_str(&out).expect("one JSON document on stdout");
    assert_eq!(r["verdict"], "never_arriving");
    assert_eq!(r["edge"]["syn"], 0);
}
