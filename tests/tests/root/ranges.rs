//! `tracer ranges` / `--refresh-ranges` against a local HTTP server on loopback: good,
//! malformed, HTML, empty, slow and not-modified answers, and the cache between runs.

use std::{
    io::{Read as _, Write as _},
    net::TcpListener,
    process::Command,
    sync::{Arc, Mutex},
    time::Duration,
};

use integration_tests::{tracer_bin, TempDir};
use serde_json::Value;

const GOOD: &str = r#"{"result":{"ipv4_cidrs":["173.245.48.0/20","103.21.244.0/22"],"ipv6_cidrs":["2400:cb00::/32"],"etag":"e-good"},"success":true,"errors":[],"messages":[]}"#;

/// One canned answer: status line, extra headers, body, delay before answering.
#[derive(Clone)]
struct Answer {
    status: &'static str,
    headers: Vec<String>,
    body: String,
    delay: Duration,
}

fn answer(status: &'static str, body: &str) -> Answer {
    Answer {
        status,
        headers: vec![],
        body: body.to_string(),
        delay: Duration::ZERO,
    }
}

/// Serves `answer` to every request; records the requests' If-None-Match headers.
struct Server {
    url: String,
    seen_if_none_match: Arc<Mutex<Vec<String>>>,
}

fn serve(answer: Answer) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/client/v4/ips", listener.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let seen2 = seen.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten().take(20) {
            let answer = answer.clone();
            let seen = seen2.clone();
            std::thread::spawn(move || {
                let mut conn = conn;
                let mut buf = [0u8; 4096];
                let n = conn.read(&mut buf).unwrap_or(0);
                let req = String::from_utf8_lossy(&buf[..n]).to_string();
                for line in req.lines() {
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("if-none-match:") {
                        seen.lock().unwrap().push(v.trim().to_string());
                    }
                }
                std::thread::sleep(answer.delay);
                let mut head = format!(
                    "HTTP/1.1 {}\r\nContent-Length: {}\r\nConnection: close\r\n",
                    answer.status,
                    answer.body.len()
                );
                for h in &answer.headers {
                    head.push_str(h);
                    head.push_str("\r\n");
                }
                let _ = conn.write_all(format!("{head}\r\n{}", answer.body).as_bytes());
            });
        }
    });
    Server {
        url,
        seen_if_none_match: seen,
    }
}

/// Runs `tracer ranges ARGS --format json`: (exit code, JSON, stderr).
fn ranges(state: &TempDir, url: &str, args: &[&str]) -> (i32, Value, String) {
    let out = Command::new(tracer_bin())
        .arg("ranges")
        .args(args)
        .args(["--format", "json"])
        .env("TRACER_STATE_DIR", &state.0)
        .env("TRACER_RANGES_URL", url)
        .env("TRACER_RANGES_TIMEOUT_SECS", "1.5")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let json = serde_json::from_str(&stdout).unwrap_or(Value::Null);
    (
        out.status.code().unwrap_or(-1),
        json,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn good_answer_is_used_and_cached() {
    let state = TempDir::new("state-good");
    let mut a = answer("200 OK", GOOD);
    a.headers.push("ETag: \"v1\"".into());
    let server = serve(a);
    let (code, j, err) = ranges(&state, &server.url, &["--refresh"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(j["source"], "api", "{j} {err}");
    assert_eq!(
        j["ipv4"],
        serde_json::json!(["173.245.48.0/20", "103.21.244.0/22"])
    );
    assert_eq!(j["etag"], "e-good");
    assert!(err.is_empty(), "no note expected: {err}");
    assert!(state.0.join("ranges.json").is_file());

    // Next time without --refresh: the cache.
    let (_, j, _) = ranges(&state, "http://127.0.0.1:9/unused", &[]);
    assert_eq!(j["source"], "cache");
    assert_eq!(j["ipv6"], serde_json::json!(["2400:cb00::/32"]));

    // A refresh sends the cached ETag; 304 keeps the list.
    let mut nm = answer("304 Not Modified", "");
    nm.headers.push("ETag: \"v1\"".into());
    let server304 = serve(nm);
    let (code, j, err) = ranges(&state, &server304.url, &["--refresh"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(j["source"], "api");
    assert_eq!(j["etag"], "e-good");
    assert_eq!(
        server304.seen_if_none_match.lock().unwrap().as_slice(),
        ["\"v1\""]
    );
}

fn assert_falls_back_to_embedded(a: Answer, why: &str) {
    let state = TempDir::new("state-bad");
    let server = serve(a);
    let (code, j, err) = ranges(&state, &server.url, &["--refresh"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(j["source"], "embedded", "{j}");
    assert_eq!(j["ipv4"].as_array().unwrap().len(), 15);
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(err.contains("using the embedded list"), "{err}");
    assert!(err.contains(why), "expected {why:?} in {err}");
    assert!(
        !state.0.join("ranges.json").exists(),
        "a bad answer must not be cached"
    );
}

#[test]
fn malformed_answer_falls_back() {
    assert_falls_back_to_embedded(
        answer(
            "200 OK",
            r#"{"result":{"ipv4_cidrs":["1.2.3.0/24","bogus"],"ipv6_cidrs":["2001:db8::/32"]},"success":true}"#,
        ),
        "bogus",
    );
}

#[test]
fn html_answer_falls_back() {
    assert_falls_back_to_embedded(
        answer(
            "200 OK",
            "<!DOCTYPE html><html><title>Just a moment...</title></html>",
        ),
        "HTML",
    );
}

#[test]
fn empty_answer_falls_back() {
    assert_falls_back_to_embedded(answer("200 OK", ""), "not the Cloudflare API's JSON");
    assert_falls_back_to_embedded(
        answer(
            "200 OK",
            r#"{"result":{"ipv4_cidrs":[],"ipv6_cidrs":[]},"success":true}"#,
        ),
        "no IPv4 or no IPv6",
    );
    assert_falls_back_to_embedded(
        answer("200 OK", r#"{"success":false,"errors":[{"code":1}]}"#),
        "success=false",
    );
}

#[test]
fn slow_answer_times_out_and_falls_back() {
    let mut a = answer("200 OK", GOOD);
    a.delay = Duration::from_secs(4);
    assert_falls_back_to_embedded(a, "timed out");
}

#[test]
fn error_status_falls_back_to_the_cache() {
    let state = TempDir::new("state-cache-fallback");
    let good = serve(answer("200 OK", GOOD));
    assert_eq!(ranges(&state, &good.url, &["--refresh"]).1["source"], "api");
    let bad = serve(answer("503 Service Unavailable", "down"));
    let (code, j, err) = ranges(&state, &bad.url, &["--refresh"]);
    assert_eq!(code, 0);
    assert_eq!(j["source"], "cache", "{j}");
    assert_eq!(j["etag"], "e-good");
    assert!(
        err.contains("503") && err.contains("using the cached list"),
        "{err}"
    );
}

#[test]
fn unreachable_api_falls_back() {
    // Port 9 on loopback: nothing listens, connection refused at once.
    let state = TempDir::new("state-unreachable");
    let (code, j, err) = ranges(&state, "http://127.0.0.1:9/client/v4/ips", &["--refresh"]);
    assert_eq!(code, 0);
    assert_eq!(j["source"], "embedded");
    assert!(err.contains("cannot refresh ranges"), "{err}");
}

#[test]
fn malformed_ranges_file_names_file_and_line() {
    let state = TempDir::new("state-file");
    let file = state.0.join("mine.txt");
    std::fs::write(&file, "10.0.0.0/8\n# ok\n10.0.0.0/33\n").unwrap();
    let (code, _, err) = ranges(
        &state,
        "http://127.0.0.1:9/",
        &["--ranges", file.to_str().unwrap()],
    );
    assert_ne!(code, 0);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("mine.txt") && err.contains("line 3"), "{err}");
}

/// The refresh trusts the system's certificate store (`SSL_CERT_FILE` names it, as a
/// TLS-inspecting proxy's root installed on the origin would be): an API answering with a
/// certificate from a private CA is used when that CA is in the store, and refused when it is
/// not — the bundle compiled into the binary does not decide.
#[test]
fn the_refresh_trusts_the_system_store() {
    let dir = TempDir::new("ranges-tls");
    let d = dir.0.display().to_string();
    let sh = |cmd: &str| {
        let out = Command::new("sh").args(["-c", cmd]).output().unwrap();
        assert!(
            out.status.success(),
            "{cmd}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    sh(&format!(
        "cd {d} && openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 2 \
         -subj /CN=t521-test-ca -addext basicConstraints=critical,CA:TRUE \
         -addext keyUsage=critical,keyCertSign 2>/dev/null && \
         openssl req -newkey rsa:2048 -nodes -keyout srv.key -out srv.csr -subj /CN=127.0.0.1 2>/dev/null && \
         printf 'subjectAltName=IP:127.0.0.1\\nbasicConstraints=CA:FALSE\\nextendedKeyUsage=serverAuth\\n' > ext && \
         openssl x509 -req -in srv.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out srv.pem -days 2 -extfile ext 2>/dev/null"
    ));
    std::fs::write(dir.path("body"), GOOD).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let script = format!(
        "import http.server, ssl\n\
         body = open('{d}/body', 'rb').read()\n\
         class H(http.server.BaseHTTPRequestHandler):\n\
         \x20   def do_GET(self):\n\
         \x20       self.send_response(200)\n\
         \x20       self.send_header('Content-Length', str(len(body)))\n\
         \x20       self.end_headers()\n\
         \x20       self.wfile.write(body)\n\
         \x20   def log_message(self, *a):\n\
         \x20       pass\n\
         s = http.server.HTTPServer(('127.0.0.1', {port}), H)\n\
         c = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)\n\
         c.load_cert_chain('{d}/srv.pem', '{d}/srv.key')\n\
         s.socket = c.wrap_socket(s.socket, server_side=True)\n\
         s.serve_forever()\n"
    );
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _server = Kill(
        Command::new("python3")
            .args(["-c", &script])
            .spawn()
            .unwrap(),
    );
    let url = format!("https://127.0.0.1:{port}/ips");
    assert!(integration_tests::eventually(
        Duration::from_secs(5),
        || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    ));
    let run = |cert_file: &str| {
        let out = Command::new(tracer_bin())
            .args(["ranges", "--refresh", "--format", "json"])
            .env("TRACER_STATE_DIR", dir.path("state"))
            .env("TRACER_RANGES_URL", &url)
            .env("TRACER_RANGES_TIMEOUT_SECS", "3")
            .env("SSL_CERT_FILE", cert_file)
            .output()
            .unwrap();
        let json: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        (json, String::from_utf8_lossy(&out.stderr).into_owned())
    };
    std::fs::create_dir_all(dir.path("state")).unwrap();
    let (j, err) = run(&format!("{d}/ca.pem"));
    assert_eq!(j["source"], "api", "{j} {err}");
    // The system's usual store lacks the private CA: refused, said, and not used.
    let (j, err) = run("/etc/ssl/certs/ca-certificates.crt");
    assert_ne!(j["source"], "api", "{j} {err}");
    assert!(err.to_lowercase().contains("certificate"), "{err}");
}
