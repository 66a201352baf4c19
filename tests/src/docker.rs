//! Real Docker on the test machine: dockerd (started if it is not running), a busybox image
//! imported from the host's busybox-static (no registry), containers published with
//! `docker run -p`, and an edge namespace joined to the host by a veth pair. The tracer runs
//! in the host's namespace, where Docker writes its rules. Everything made is removed on drop.

use std::{
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use crate::{require_root, sh, Netns, EDGE_V4};

/// The host's end of the edge link, and its address.
pub const HOST_IF: &str = "h521";
pub const HOST_V4: &str = "203.0.113.1";
/// The edge's other (non-Cloudflare) address on the link.
pub const EDGE_LINK_V4: &str = "203.0.113.10";
const EDGE_IF: &str = "k521";
pub const IMAGE: &str = "t521-busybox:1";

static NEXT: AtomicU32 = AtomicU32::new(0);

pub struct DockerLab {
    pub edge: Netns,
    containers: Vec<String>,
    /// dockerd, when this lab started it.
    dockerd: Option<Child>,
}

fn docker_up() -> bool {
    Command::new("docker")
        .args(["info", "--format", "{{.ServerVersion}}"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

impl DockerLab {
    pub fn new() -> DockerLab {
        require_root();
        let dockerd = if docker_up() {
            None
        } else {
            let child = Command::new("dockerd")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("dockerd (cargo xtask setup installs docker.io)");
            let deadline = Instant::now() + Duration::from_secs(30);
            while !docker_up() {
                assert!(Instant::now() < deadline, "dockerd did not come up in 30 s");
                std::thread::sleep(Duration::from_millis(200));
            }
            Some(child)
        };
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let lab = DockerLab {
            edge: Netns {
                name: format!("t521-{}-{n}-dk", std::process::id()),
            },
            containers: Vec::new(),
            dockerd,
        };
        if !sh(&format!("docker images -q {IMAGE}")).contains(char::is_alphanumeric) {
            sh(&format!(
                "d=$(mktemp -d) && mkdir -p $d/bin $d/www && cp /bin/busybox $d/bin/ && \
                 echo ok > $d/www/index.html && tar -C $d -c . | docker import - {IMAGE} >/dev/null; \
                 rm -rf $d"
            ));
        }
        sh(&format!("ip netns add {}", lab.edge.name));
        sh(&format!(
            "ip link add {HOST_IF} type veth peer name {EDGE_IF} netns {}; \
             ip link set {HOST_IF} up; ip addr add {HOST_V4}/24 dev {HOST_IF}; \
             ip route add {EDGE_V4}/32 dev {HOST_IF}",
            lab.edge.name
        ));
        lab.edge.sh(&format!(
            "ip link set lo up; ip link set {EDGE_IF} up; \
             ip addr add {EDGE_LINK_V4}/24 dev {EDGE_IF}; ip addr add {EDGE_V4}/32 dev {EDGE_IF}; \
             ping -c1 -W2 -I {EDGE_V4} {HOST_V4} >/dev/null || true"
        ));
        lab
    }

    /// `docker run -d -p PUBLISH IMAGE /bin/busybox sh -c CMD`: the container's full id.
    pub fn run(&mut self, publish: &str, cmd: &str) -> String {
        let name = format!("{}-{}", self.edge.name, self.containers.len());
        self.containers.push(name.clone());
        let id = sh(&format!(
            "docker run -d --name {name} -p {publish} {IMAGE} /bin/busybox sh -c '{cmd}'"
        ));
        id.trim().to_string()
    }

    /// The container's address on Docker's bridge.
    pub fn address(&self, id: &str) -> String {
        sh(&format!(
            "docker inspect -f '{{{{.NetworkSettings.IPAddress}}}}' {id}"
        ))
        .trim()
        .to_string()
    }
}

impl Default for DockerLab {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for DockerLab {
    fn drop(&mut self) {
        let quiet = |args: &[&str]| {
            let _ = Command::new(args[0])
                .args(&args[1..])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        };
        for c in &self.containers {
            quiet(&["docker", "rm", "-f", c]);
        }
        quiet(&[
            "ip",
            "route",
            "del",
            &format!("{EDGE_V4}/32"),
            "dev",
            HOST_IF,
        ]);
        quiet(&["ip", "link", "del", HOST_IF]);
        quiet(&["ip", "netns", "del", &self.edge.name]);
        // A dockerd this lab started stops as it would under systemd (SIGTERM: it stops
        // containerd too), killed only if it hangs.
        if let Some(mut d) = self.dockerd.take() {
            // SAFETY: plain kill(2) of our own child.
            unsafe { libc::kill(d.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(15);
            while matches!(d.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = d.kill();
            let _ = d.wait();
        }
    }
}
