//! The tracer under a service manager (#26): readiness by systemd's notify protocol once every
//! program is attached, journald priorities on stderr when stderr is the journal's stream, and
//! options whose last occurrence wins (the unit's defaults, then `TRACER_OPTS`).

use std::{
    os::unix::{fs::MetadataExt as _, net::UnixDatagram},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use integration_tests::{arrival_programs_loaded, tracer_bin, Lab, TempDir, Tracer, ORIGIN_IF};

#[test]
fn the_agent_says_ready_once_every_program_is_attached() {
    let lab = Lab::new();
    let tmp = TempDir::new("notify");
    let socket_path = tmp.path("notify");
    let socket = UnixDatagram::bind(&socket_path).expect("bind the notify socket");
    socket
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let before = arrival_programs_loaded();
    let args = [
        "agent",
        "--iface",
        ORIGIN_IF,
        "--port",
        "443",
        "--window",
        "2",
        "--metrics-addr",
        "127.0.0.1:19522",
    ];
    let path = socket_path.to_str().unwrap().to_string();
    let tracer = Tracer::start_env(&lab.origin, &args, &[("NOTIFY_SOCKET", &path)]);
    let mut buf = [0u8; 64];
    let n = socket.recv(&mut buf).expect("READY=1 from the agent");
    assert_eq!(&buf[..n], b"READY=1\n");
    // By then its arrival hook is attached.
    assert!(arrival_programs_loaded() > before, "ready before attaching");
    tracer.stop();
}

/// Runs `tracer ARGS` with stderr into a file, optionally as the journal's stream: its stderr.
fn stderr_of(args: &[&str], as_journal: bool) -> String {
    let tmp = TempDir::new("journal-stream");
    let path = tmp.path("stderr");
    let file = std::fs::File::create(&path).unwrap();
    let meta = file.metadata().unwrap();
    let mut cmd = Command::new(tracer_bin());
    cmd.args(args).stdout(Stdio::null()).stderr(file);
    cmd.env_remove("JOURNAL_STREAM");
    if as_journal {
        cmd.env("JOURNAL_STREAM", format!("{}:{}", meta.dev(), meta.ino()));
    }
    let status = cmd.status().expect("run the tracer");
    assert_eq!(status.code(), Some(1), "a tracer error exits 1");
    std::fs::read_to_string(&path).unwrap()
}

#[test]
fn errors_carry_journald_priorities_only_in_the_journal() {
    let args = ["diagnose", "--iface", "no-such-if0", "--duration", "1"];
    let journal = stderr_of(&args, true);
    assert!(journal.starts_with("<3>error: "), "{journal}");
    let plain = stderr_of(&args, false);
    assert!(plain.starts_with("error: "), "{plain}");
    assert!(!plain.contains("<3>"), "{plain}");
}

#[test]
fn the_last_occurrence_of_an_option_wins() {
    // The unit's `--window 60` then TRACER_OPTS' own: here `--duration` given twice.
    let lab = Lab::new();
    let started = Instant::now();
    let args = [
        "diagnose",
        "--iface",
        ORIGIN_IF,
        "--port",
        "443",
        "--duration",
        "60",
        "--duration",
        "1",
        "--format",
        "json",
    ];
    let tracer = Tracer::start(&lab.origin, &args);
    let (code, out) = tracer.wait(Duration::from_secs(30));
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("\"window_secs\": 1"), "{out}");
    assert!(started.elapsed() < Duration::from_secs(30));
}
