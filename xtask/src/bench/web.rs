//! The web-server lab of the load benchmarks: nginx (one worker) answering wrk from the
//! edge, in the origin's namespace or in a container behind Docker-style DNAT.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{anyhow, Context as _, Result};
use integration_tests::{Lab, EDGE_IF, EDGE_V4, ORIGIN_V4};

fn nginx_conf(dir: &Path) -> Result<PathBuf> {
    let conf = dir.join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "worker_processes 1;\ndaemon off;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
             events {{ worker_connections 4096; }}\n\
             http {{ access_log off; client_body_temp_path {d}; proxy_temp_path {d}; fastcgi_temp_path {d}; uwsgi_temp_path {d}; scgi_temp_path {d};\n\
             server {{ listen 80 backlog=4096; location / {{ return 200 \"ok\\n\"; }} }} }}\n",
            d = dir.display()
        ),
    )?;
    Ok(conf)
}

pub fn wrk(lab: &Lab, secs: u32) -> Result<f64> {
    let out = lab.edge.sh(&format!(
        "wrk -t2 -c32 -d{secs}s -H 'Connection: close' http://{ORIGIN_V4}:80/ 2>&1"
    ));
    out.lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("Requests/sec:")
                .and_then(|v| v.trim().parse().ok())
        })
        .ok_or_else(|| anyhow!("no Requests/sec in wrk output: {out}"))
}

/// Where the web server runs in a connection-rate run.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Topology {
    /// In the origin's namespace, beside the tracer.
    Direct,
    /// In a container namespace behind the origin, port 80 published as `docker run -p 80:80`
    /// writes it: every connection is DNATed and forwarded, and the tracer follows it there.
    Container,
}

/// A lab with nginx serving port 80, stopped and cleaned up on drop.
pub struct WebLab {
    pub lab: Lab,
    nginx: Child,
    dir: PathBuf,
}

impl WebLab {
    pub fn new(topology: Topology) -> Result<WebLab> {
        let lab = Lab::new();
        // Edge traffic to the origin leaves from the Cloudflare address. One client address
        // recycles its ports within seconds at this rate: without these harness settings new
        // connections pile up behind the origin's TIME_WAIT sockets and the rate collapses.
        lab.edge.sh(&format!(
            "ip route replace {ORIGIN_V4}/32 dev {EDGE_IF} src {EDGE_V4}; \
             sysctl -qw net.ipv4.ip_local_port_range='1024 65535' net.ipv4.tcp_tw_reuse=1"
        ));
        lab.origin.sh("sysctl -qw net.ipv4.tcp_max_tw_buckets=0");
        if topology == Topology::Direct {
            // A plain origin does not forward (Linux's default). A namespace made here may
            // inherit the host's ip_forward=1, and the tracer then also follows forwarded
            // connections, the Docker host's work, which the container topology measures.
            lab.origin
                .sh("sysctl -qw net.ipv4.ip_forward=0 net.ipv6.conf.all.forwarding=0");
        }
        if topology == Topology::Container {
            lab.wire_container();
            lab.docker_publish(80, 80);
            // The server's TIME_WAIT sockets are the container's now; the host's conntrack
            // keeps each closed connection 120 s by default, which fills its table at this
            // rate: the harness shortens it, as it recycles the client's ports.
            lab.container.sh("sysctl -qw net.ipv4.tcp_max_tw_buckets=0");
            lab.origin
                .sh("sysctl -qw net.netfilter.nf_conntrack_tcp_timeout_time_wait=1");
        }
        let server_ns = match topology {
            Topology::Direct => &lab.origin,
            Topology::Container => &lab.container,
        };
        let dir = std::env::temp_dir().join(format!("t521-nginx-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let conf = nginx_conf(&dir)?;
        let nginx = Command::new("ip")
            .args(["netns", "exec", &server_ns.name, "nginx", "-c"])
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting nginx (cargo xtask setup installs nginx-light)")?;
        std::thread::sleep(Duration::from_millis(500));
        Ok(WebLab { lab, nginx, dir })
    }
}

impl Drop for WebLab {
    fn drop(&mut self) {
        let _ = self.nginx.kill();
        let _ = self.nginx.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
