//! `--hostname`: the TLS check against real servers in the origin namespace — `openssl
//! s_server` with certificates the test makes with openssl (valid for the name and signed by
//! a test CA given as the trust root, the same without that CA, a wrong name, expired,
//! self-signed, TLS 1.0 only) and plain HTTP on 443. Each gives the expected result and, where
//! it fails, a `tls_failure` cause with 525 or 526.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use integration_tests::{Lab, TempDir, Tracer, ORIGIN_IF};
use serde_json::Value;

const HOST: &str = "example.test";

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "openssl {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A test CA and the certificates the cases serve, made in `dir`.
struct Certs {
    dir: PathBuf,
}

impl Certs {
    fn make(dir: &Path) -> Certs {
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
        ];
        let mut ca = vec!["req", "-x509"];
        ca.extend(ec);
        ca.extend([
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "30",
            "-subj",
            "/CN=Test Origin CA",
        ]);
        openssl(dir, &ca);
        std::fs::create_dir_all(dir.join("db")).unwrap();
        std::fs::write(dir.join("db/index"), "").unwrap();
        std::fs::write(dir.join("db/serial"), "1000\n").unwrap();
        std::fs::write(
            dir.join("ca.cnf"),
            "[ca]\ndefault_ca = test\n[test]\ndatabase = db/index\nserial = db/serial\nnew_certs_dir = db\ndefault_md = sha256\npolicy = any\nunique_subject = no\n[any]\ncommonName = supplied\n",
        )
        .unwrap();
        for (name, san) in [("good", HOST), ("wrongname", "other.test")] {
            let mut csr = vec!["req"];
            csr.extend(ec);
            let key = format!("{name}.key");
            let req = format!("{name}.csr");
            let subj = format!("/CN={san}");
            csr.extend(["-keyout", &key, "-out", &req, "-subj", &subj]);
            openssl(dir, &csr);
            std::fs::write(
                dir.join(format!("{name}.ext")),
                format!("subjectAltName=DNS:{san}\n"),
            )
            .unwrap();
        }
        let sign = |csr: &str, out: &str, ext: &str, dates: (&str, &str)| {
            openssl(
                dir,
                &[
                    "ca",
                    "-batch",
                    "-config",
                    "ca.cnf",
                    "-cert",
                    "ca.pem",
                    "-keyfile",
                    "ca.key",
                    "-in",
                    csr,
                    "-out",
                    out,
                    "-extfile",
                    ext,
                    "-notext",
                    "-startdate",
                    dates.0,
                    "-enddate",
                    dates.1,
                ],
            )
        };
        sign(
            "good.csr",
            "good.pem",
            "good.ext",
            ("20260101000000Z", "20361231000000Z"),
        );
        sign(
            "wrongname.csr",
            "wrongname.pem",
            "wrongname.ext",
            ("20260101000000Z", "20361231000000Z"),
        );
        // Same key and name as the good one, expired on 2025-02-01.
        sign(
            "good.csr",
            "expired.pem",
            "good.ext",
            ("20250101000000Z", "20250201000000Z"),
        );
        let mut selfsigned = vec!["req", "-x509"];
        selfsigned.extend(ec);
        let san = format!("subjectAltName=DNS:{HOST}");
        let subj = format!("/CN={HOST}");
        selfsigned.extend([
            "-keyout", "self.key", "-out", "self.pem", "-days", "30", "-subj", &subj, "-addext",
            &san,
        ]);
        openssl(dir, &selfsigned);
        Certs {
            dir: dir.to_path_buf(),
        }
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).to_str().unwrap().to_string()
    }
}

/// `openssl s_server` on 0.0.0.0:443 in the origin namespace, until dropped.
struct TlsServer(Child);

impl TlsServer {
    fn start(lab: &Lab, cert: &str, key: &str, extra: &[&str]) -> TlsServer {
        TlsServer::start_on(lab, 443, cert, key, extra)
    }

    /// The same on `port`.
    fn start_on(lab: &Lab, port: u16, cert: &str, key: &str, extra: &[&str]) -> TlsServer {
        let accept = port.to_string();
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &lab.origin.name,
                "openssl",
                "s_server",
                "-accept",
                &accept,
            ])
            .args(["-cert", cert, "-key", key, "-www", "-quiet"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("openssl s_server");
        let server = TlsServer(child);
        assert!(
            integration_tests::eventually(Duration::from_secs(5), || lab
                .origin
                .sh(&format!("ss -Htln 'sport = :{port}'"))
                .contains(&accept)),
            "s_server did not listen"
        );
        server
    }
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// diagnose --hostname on port 443 for a second: the report.
fn diagnose(lab: &Lab, extra: &[&str]) -> Value {
    let mut args = vec!["--hostname", HOST];
    args.extend_from_slice(extra);
    let tracer = Tracer::diagnose_with(&lab.origin, "443", "1", &args, &[]);
    let stderr = tracer.stderr_text();
    let (code, out) = tracer.wait(Duration::from_secs(30));
    assert_eq!(code, 0, "{stderr}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

fn tls_cause(r: &Value) -> &Value {
    r["causes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["verdict"] == "tls_failure")
        .unwrap_or_else(|| panic!("no tls_failure cause: {r:#}"))
}

#[test]
fn tls_checks_name_each_failure_with_525_or_526() {
    let lab = Lab::new();
    let tmp = TempDir::new("tls");
    let certs = Certs::make(&tmp.0);
    let ca = certs.path("ca.pem");

    // Valid for the name, signed by the CA given as a trust root: OK under Full (Strict).
    {
        let _s = TlsServer::start(&lab, &certs.path("good.pem"), &certs.path("good.key"), &[]);
        let r = diagnose(&lab, &["--tls-ca", &ca]);
        let t = &r["tls"][0];
        assert_eq!(t["port"], 443, "{r:#}");
        assert_eq!(t["ok"], true, "{t:#}");
        assert_eq!(t["trusted_by"], "given_ca");
        assert_eq!(t["name_matches"], true);
        assert!(t["protocol"].as_str().unwrap().starts_with("TLS 1."), "{t}");
        assert!(
            t["cipher"].as_str().unwrap().contains("GCM")
                || t["cipher"].as_str().unwrap().contains("CHACHA")
        );
        assert_eq!(t["certificates"][0]["sans"][0], HOST);
        assert!(t["certificates"][0]["not_after"]
            .as_str()
            .unwrap()
            .starts_with("2036-12-31"));
        assert!(t["days_to_expiry"].as_i64().unwrap() > 3000);
        assert_ne!(r["verdict"], "tls_failure", "{r:#}");

        // The same server without that CA: an issuer Cloudflare does not trust → 526.
        let r = diagnose(&lab, &[]);
        assert_eq!(r["tls"][0]["ok"], false);
        assert_eq!(r["tls"][0]["chain_problem"], "untrusted_issuer");
        assert_eq!(r["verdict"], "tls_failure", "{r:#}");
        assert_eq!(tls_cause(&r)["cloudflare_error"], 526);
    }
    // A wrong name → 526, and the names it has are said.
    {
        let _s = TlsServer::start(
            &lab,
            &certs.path("wrongname.pem"),
            &certs.path("wrongname.key"),
            &[],
        );
        let r = diagnose(&lab, &["--tls-ca", &ca]);
        let t = &r["tls"][0];
        assert_eq!(t["chain_problem"], "wrong_name", "{t:#}");
        assert_eq!(t["name_matches"], false);
        let c = tls_cause(&r);
        assert_eq!(c["cloudflare_error"], 526);
        let ev = c["evidence"].to_string();
        assert!(ev.contains("other.test"), "{ev}");
    }
    // Expired → 526 with how long ago.
    {
        let _s = TlsServer::start(
            &lab,
            &certs.path("expired.pem"),
            &certs.path("good.key"),
            &[],
        );
        let r = diagnose(&lab, &["--tls-ca", &ca]);
        let t = &r["tls"][0];
        assert_eq!(t["chain_problem"], "expired", "{t:#}");
        assert!(t["days_to_expiry"].as_i64().unwrap() < -300, "{t}");
        let c = tls_cause(&r);
        assert_eq!(c["cloudflare_error"], 526);
        assert!(
            c["evidence"][0].as_str().unwrap().contains("expired"),
            "{c:#}"
        );
        assert!(c["next_steps"].to_string().contains("Renew"), "{c:#}");
    }
    // Self-signed → 526.
    {
        let _s = TlsServer::start(&lab, &certs.path("self.pem"), &certs.path("self.key"), &[]);
        let r = diagnose(&lab, &["--tls-ca", &ca]);
        assert_eq!(r["tls"][0]["chain_problem"], "untrusted_issuer", "{r:#}");
        assert_eq!(tls_cause(&r)["cloudflare_error"], 526);
    }
    // TLS 1.0 only → the handshake fails: 525.
    {
        let _s = TlsServer::start(
            &lab,
            &certs.path("good.pem"),
            &certs.path("good.key"),
            &["-tls1", "-cipher", "DEFAULT:@SECLEVEL=0"],
        );
        let r = diagnose(&lab, &["--tls-ca", &ca]);
        let t = &r["tls"][0];
        assert_eq!(t["handshake_ok"], false, "{t:#}");
        assert_eq!(t["failure"], "no_shared_version", "{t:#}");
        let c = tls_cause(&r);
        assert_eq!(c["cloudflare_error"], 525);
        assert!(c["next_steps"].to_string().contains("TLSv1.2"), "{c:#}");
    }
    // Plain HTTP on 443 → not TLS: 525.
    {
        let listener = lab.origin.listen("0.0.0.0", 443, 16);
        std::thread::spawn(move || {
            use std::io::{Read as _, Write as _};
            while let Ok((mut c, _)) = listener.accept() {
                let _ = c.read(&mut [0u8; 1024]);
                let _ = c.write_all(
                    b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                );
            }
        });
        let r = diagnose(&lab, &[]);
        let t = &r["tls"][0];
        assert_eq!(t["failure"], "not_tls", "{t:#}");
        assert_eq!(tls_cause(&r)["cloudflare_error"], 525);
    }
}

/// The text report says one line per port.
#[test]
fn the_text_report_has_a_tls_line_per_port() {
    let lab = Lab::new();
    let tmp = TempDir::new("tls-text");
    let certs = Certs::make(&tmp.0);
    let _s = TlsServer::start(
        &lab,
        &certs.path("expired.pem"),
        &certs.path("good.key"),
        &[],
    );
    let ca = certs.path("ca.pem");
    let tracer = Tracer::start_env(
        &lab.origin,
        &[
            "diagnose",
            "--iface",
            ORIGIN_IF,
            "--port",
            "443",
            "--duration",
            "1",
            "--hostname",
            HOST,
            "--tls-ca",
            &ca,
        ],
        &[],
    );
    let (code, out) = tracer.wait(Duration::from_secs(30));
    assert_eq!(code, 0);
    assert!(out.starts_with("VERDICT: tls_failure"), "{out}");
    assert!(
        out.contains("TLS 443: certificate expired")
            && out.contains("Cloudflare shows 526 under Full (Strict)"),
        "{out}"
    );
}

/// A certificate's subject is the server's text: one holding a terminal sequence (`ESC [2J`
/// clears the screen) is shown escaped in the text report, and as JSON escapes it in the JSON.
#[test]
fn a_certificate_subject_cannot_drive_the_terminal() {
    let lab = Lab::new();
    let tmp = TempDir::new("tls-escape");
    let dir = &tmp.0;
    let san = format!("subjectAltName=DNS:{HOST}");
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "esc.key",
            "-out",
            "esc.pem",
            "-days",
            "30",
            "-subj",
            "/CN=\u{1b}[2J\u{1b}]0;owned\u{7}evil",
            "-addext",
            &san,
        ],
    );
    let path = |f: &str| dir.join(f).to_str().unwrap().to_string();
    let _s = TlsServer::start(&lab, &path("esc.pem"), &path("esc.key"), &[]);
    let tracer = Tracer::start_env(
        &lab.origin,
        &[
            "diagnose",
            "--iface",
            ORIGIN_IF,
            "--port",
            "443",
            "--duration",
            "1",
            "--hostname",
            HOST,
        ],
        &[],
    );
    let (code, out) = tracer.wait(Duration::from_secs(30));
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("subject CN="), "the subject is shown: {out}");
    assert!(
        !out.contains('\u{1b}') && !out.contains('\u{7}'),
        "a raw control character reached the terminal: {out:?}"
    );
    assert!(out.contains("\\u{1b}[2J"), "shown escaped: {out}");
}

/// With the default ports, a failing TLS listener the edge never reached (a self-signed
/// control panel on 2096, as cPanel ships) is a note, not the verdict: the site the edge
/// reaches on 443 is valid and the report is healthy. Named with --port, it is judged.
#[test]
fn a_stray_tls_listener_the_edge_never_reached_is_a_note() {
    use integration_tests::{scenarios::SHORT, sockaddr, EDGE_V4, ORIGIN_V4};
    let lab = Lab::new();
    let tmp = TempDir::new("tls-stray");
    let certs = Certs::make(&tmp.0);
    let _site = TlsServer::start(&lab, &certs.path("good.pem"), &certs.path("good.key"), &[]);
    let _panel = TlsServer::start_on(
        &lab,
        2096,
        &certs.path("self.pem"),
        &certs.path("self.key"),
        &[],
    );
    let ca = certs.path("ca.pem");
    let run = |ports: &[&str]| -> Value {
        let mut args = vec![
            "diagnose",
            "--iface",
            ORIGIN_IF,
            "--duration",
            "2",
            "--format",
            "json",
        ];
        args.extend_from_slice(ports);
        args.extend(["--hostname", HOST, "--tls-ca", &ca]);
        let tracer = Tracer::start_env(&lab.origin, &args, &[]);
        for _ in 0..3 {
            let _ = lab.edge.connect(EDGE_V4, sockaddr(ORIGIN_V4, 443), SHORT);
        }
        let stderr = tracer.stderr_text();
        let (code, out) = tracer.wait(Duration::from_secs(30));
        assert_eq!(code, 0, "{stderr}");
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
    };
    let r = run(&[]);
    assert_eq!(r["verdict"], "healthy", "{r:#}");
    let panel = r["tls"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["port"] == 2096)
        .unwrap_or_else(|| panic!("2096 was checked: {r:#}"));
    assert_eq!(panel["ok"], false, "{r:#}");
    let notes = r["notes"].to_string();
    assert!(
        notes.contains("2096") && notes.contains("not judged"),
        "{r:#}"
    );
    // Named, it is judged.
    let r = run(&["--port", "443,2096"]);
    assert_eq!(r["verdict"], "tls_failure", "{r:#}");
    assert_eq!(tls_cause(&r)["cloudflare_error"], 526, "{r:#}");
}

/// The agent checks once per window: metrics for the port and hostname.
#[test]
fn the_agent_exports_the_tls_check() {
    let lab = Lab::new();
    let tmp = TempDir::new("tls-agent");
    let certs = Certs::make(&tmp.0);
    let _s = TlsServer::start(&lab, &certs.path("good.pem"), &certs.path("good.key"), &[]);
    let ca = certs.path("ca.pem");
    let log = tmp.path("log");
    let agent = integration_tests::agent::Agent::on(&lab.origin, "443", "1", &log)
        .args(&["--hostname", HOST, "--tls-ca", &ca])
        .start();
    let text = agent.metrics_until(Duration::from_secs(10), |text| {
        integration_tests::metric(
            text,
            &format!("tracer_tls_check_ok{{hostname=\"{HOST}\",port=\"443\"}}"),
        ) == Some(1.0)
    });
    let not_after = integration_tests::metric(
        &text,
        &format!(
            "tracer_tls_certificate_not_after_timestamp_seconds{{hostname=\"{HOST}\",port=\"443\"}}"
        ),
    )
    .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(not_after - now > 3000.0 * 86400.0, "{not_after}");
    // A later window's verdict record carries the results.
    assert!(integration_tests::eventually(
        Duration::from_secs(5),
        || std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("\"trusted_by\":\"given_ca\"")
    ));
    agent.stop();
}

/// Without --hostname: edge handshakes on 443 the origin closes at once (what a failing TLS
/// handshake leaves in the kernel) are said, with the check that would tell.
#[test]
fn quick_closes_on_a_tls_port_suggest_the_check() {
    use integration_tests::{
        scenarios::{Server, ServerMode, SHORT},
        sockaddr, EDGE_V4, ORIGIN_V4,
    };
    let lab = Lab::new();
    let _server = Server::start(lab.origin.listen("0.0.0.0", 443, 16), ServerMode::Close);
    let tracer = Tracer::diagnose_with(&lab.origin, "443", "2", &[], &[]);
    for _ in 0..4 {
        if let Ok(mut c) = lab.edge.connect(EDGE_V4, sockaddr(ORIGIN_V4, 443), SHORT) {
            use std::io::Read as _;
            let _ = c.set_read_timeout(Some(SHORT));
            let _ = c.read(&mut [0u8; 16]);
        }
    }
    let (code, out) = tracer.wait(Duration::from_secs(30));
    assert_eq!(code, 0);
    let r: Value = serde_json::from_str(&out).unwrap();
    let first = &r["causes"][0];
    assert!(
        first["evidence"]
            .to_string()
            .contains("the pattern a failing TLS handshake leaves"),
        "{r:#}"
    );
    assert!(
        first["next_steps"].to_string().contains("--hostname"),
        "{r:#}"
    );
}
