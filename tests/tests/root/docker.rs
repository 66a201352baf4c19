//! With Docker's own tools: `docker run -p` on this machine, the tracer in the host's
//! namespace where Docker writes its iptables rules, the edge in a namespace of its own.

use std::time::Duration;

use integration_tests::{
    docker::{DockerLab, HOST_IF, HOST_V4},
    scenarios::SHORT,
    sockaddr, Tracer, EDGE_V4,
};
use serde_json::Value;

fn backend_for<'a>(r: &'a Value, addr: &str) -> &'a Value {
    r["backends"]
        .as_array()
        .and_then(|b| b.iter().find(|b| b["addr"] == addr))
        .unwrap_or_else(|| panic!("no backend {addr}: {r:#}"))
}

/// One container serves (`-p 443:80`), one runs but listens on nothing (`-p 8443:80`): the
/// first counts as handshakes, the second as refusals naming the container and Docker's chain.
#[test]
fn docker_published_ports_are_followed_into_their_containers() {
    let mut lab = DockerLab::new();
    let web = lab.run("443:80", "exec /bin/busybox httpd -f -p 80 -h /www");
    let idle = lab.run("8443:80", "exec /bin/busybox sleep 3600");
    let (web_ip, idle_ip) = (lab.address(&web), lab.address(&idle));
    // httpd is listening once the container's namespace shows it.
    std::thread::sleep(Duration::from_millis(500));
    let tracer = Tracer::start_in_host(&[
        "diagnose",
        "--iface",
        HOST_IF,
        "--port",
        "443,8443",
        "--duration",
        "4",
        "--format",
        "json",
    ]);
    for _ in 0..3 {
        lab.edge
            .connect(EDGE_V4, sockaddr(HOST_V4, 443), SHORT)
            .expect("edge to the published web container");
    }
    for _ in 0..2 {
        let refused = lab.edge.connect(EDGE_V4, sockaddr(HOST_V4, 8443), SHORT);
        assert!(refused.is_err(), "nothing listens in the idle container");
    }
    let stderr = tracer.stderr_text();
    let (code, out) = tracer.wait(Duration::from_secs(30));
    assert_eq!(code, 0, "{stderr}");
    let r: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(r["edge"]["syn"], 5, "{r:#}");
    assert_eq!(r["edge"]["handshakes"], 3, "{r:#}");
    assert_eq!(r["edge"]["refused"], 2, "{r:#}");
    assert_eq!(r["edge"]["unanswered"], 0, "{r:#}");
    assert_eq!(r["verdict"], "refused", "{r:#}");

    let served = backend_for(&r, &web_ip);
    assert_eq!(served["port"], 80);
    assert_eq!(served["edge_port"], 443);
    assert_eq!(served["container"], web.as_str(), "{served:#}");
    assert_eq!(served["comm"], "busybox", "{served:#}");
    assert!(
        served["dnat_rule"]
            .as_str()
            .is_some_and(|d| d.contains("chain DOCKER") && d.contains(&format!("{web_ip}:80"))),
        "{served:#}"
    );
    let idle_backend = backend_for(&r, &idle_ip);
    assert_eq!(idle_backend["container"], idle.as_str(), "{idle_backend:#}");

    let evidence = r["causes"][0]["evidence"].to_string();
    assert!(
        evidence.contains(&format!(
            "nothing listens on {idle_ip}:80 in container {}",
            &idle[..12]
        )),
        "{evidence}"
    );
    assert!(
        evidence.contains("port 8443 is DNATed there by table ip nat chain DOCKER"),
        "{evidence}"
    );
    // docker-proxy holds the published ports on the host: a reservation, not the server.
    let listeners = r["listeners"].as_array().unwrap();
    assert!(
        listeners
            .iter()
            .any(|l| l["port"] == 443 && l["role"] == "port_reservation"),
        "{r:#}"
    );
    assert!(
        listeners
            .iter()
            .any(|l| l["port"] == 80 && l["container"] == web.as_str()),
        "{r:#}"
    );
}
