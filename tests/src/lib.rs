//! Test lab for the integration tests: an origin and an edge network namespace joined by one
//! veth pair and nothing else, removed on drop even when the test fails.
//!
//! Addresses (the same in every lab; namespaces keep labs apart):
//! - origin: 192.0.2.1/24, 2001:db8::1/64
//! - edge: 173.245.48.10 (Cloudflare), 192.0.2.10 (not Cloudflare), 2606:4700::10 (Cloudflare),
//!   2001:db8::10 (not Cloudflare)

use std::{
    fs::File,
    io,
    net::{IpAddr, SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use serde_json::Value;
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

pub const ORIGIN_V4: &str = "192.0.2.1";
pub const ORIGIN_V6: &str = "2001:db8::1";
pub const EDGE_V4: &str = "173.245.48.10";
pub const EDGE_V6: &str = "2606:4700::10";
pub const OTHER_V4: &str = "192.0.2.10";
pub const OTHER_V6: &str = "2001:db8::10";
/// Interface names inside the namespaces.
pub const ORIGIN_IF: &str = "o521";
pub const EDGE_IF: &str = "e521";
/// The container behind the origin (as `docker run -p` would have it): the origin's end of
/// the pair plays docker0.
pub const BRIDGE_IF: &str = "d521";
/// The origin's second interface in return-path scenarios (a dummy: what leaves by it is lost).
pub const ROUTE_IF: &str = "r521";
/// An edge address in 104.16.0.0/13, a range stale allowlists lack.
pub const EDGE2_V4: &str = "104.16.0.5";
/// More edge addresses, in other Cloudflare ranges.
pub const EDGE3_V4: &str = "162.158.0.5";
pub const EDGE2_V6: &str = "2606:4700::11";
pub const EDGE3_V6: &str = "2a06:98c0::5";
pub const CONTAINER_IF: &str = "c521";
pub const BRIDGE_V4: &str = "172.17.0.1";
pub const CONTAINER_V4: &str = "172.17.0.2";
pub const BRIDGE_V6: &str = "fd00:17::1";
pub const CONTAINER_V6: &str = "fd00:17::2";

pub mod agent;
pub mod confine;
pub mod docker;
pub mod flood;
pub mod frames;
pub mod scenarios;
pub mod tools;
pub mod tunnel;

static NEXT_LAB: AtomicU32 = AtomicU32::new(0);

pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "integration tests need root (they create network namespaces and load eBPF): run `sudo cargo xtask test`"
    );
}

/// Runs a shell command, panicking with its output when it fails.
pub fn sh(cmd: &str) -> String {
    let out = Command::new("sh")
        .args(["-c", cmd])
        .output()
        .unwrap_or_else(|e| panic!("cannot run `{cmd}`: {e}"));
    assert!(
        out.status.success(),
        "`{cmd}` failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub struct Netns {
    pub name: String,
}

impl Netns {
    /// Runs a shell command inside the namespace.
    pub fn sh(&self, cmd: &str) -> String {
        sh(&format!(
            "ip netns exec {} sh -c '{}'",
            self.name,
            cmd.replace('\'', "'\\''")
        ))
    }

    /// Runs `f` on a thread that has joined this namespace; sockets it creates stay in it.
    pub fn enter<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/run/netns/{}", self.name);
        std::thread::spawn(move || {
            let ns = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
            // SAFETY: valid namespace fd; only this thread changes namespace.
            let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns {path}: {}", io::Error::last_os_error());
            f()
        })
        .join()
        .expect("namespace thread panicked")
    }

    /// A TCP listener inside the namespace with the given backlog.
    pub fn listen(&self, addr: &str, port: u16, backlog: i32) -> TcpListener {
        let addr = SocketAddr::new(addr.parse().expect("address"), port);
        self.enter(move || {
            let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))
                .expect("socket");
            socket.set_reuse_address(true).expect("SO_REUSEADDR");
            if addr.is_ipv6() {
                // `::` takes IPv4 too (dual stack); a specific v6 address only v6.
                socket
                    .set_only_v6(!addr.ip().is_unspecified())
                    .expect("IPV6_V6ONLY");
            }
            socket
                .bind(&addr.into())
                .unwrap_or_else(|e| panic!("bind {addr}: {e}"));
            socket.listen(backlog).expect("listen");
            socket.into()
        })
    }

    /// Connects from `from` to `to` inside the namespace. With a timeout below one second the
    /// kernel sends exactly one SYN when nothing answers.
    pub fn connect(&self, from: &str, to: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
        let from: IpAddr = from.parse().expect("address");
        self.enter(move || {
            let socket = Socket::new(Domain::for_address(to), Type::STREAM, Some(Protocol::TCP))?;
            socket.bind(&SockAddr::from(SocketAddr::new(from, 0)))?;
            socket.connect_timeout(&to.into(), timeout)?;
            Ok(socket.into())
        })
    }
}

pub struct Lab {
    pub origin: Netns,
    pub edge: Netns,
    /// Unconnected until [`Lab::wire_container`].
    pub container: Netns,
}

impl Lab {
    pub fn new() -> Lab {
        require_root();
        let n = NEXT_LAB.fetch_add(1, Ordering::SeqCst);
        let base = format!("t521-{}-{n}", std::process::id());
        let lab = Lab {
            origin: Netns {
                name: format!("{base}-o"),
            },
            edge: Netns {
                name: format!("{base}-e"),
            },
            container: Netns {
                name: format!("{base}-c"),
            },
        };
        // Created before any command that can fail, so Drop removes whatever exists. One shell
        // for the three: under emulation (the VM matrix) every process started costs.
        sh(&format!(
            "ip netns add {} && ip netns add {} && ip netns add {}",
            lab.origin.name, lab.edge.name, lab.container.name
        ));
        lab.plug();
        lab
    }
}

impl Lab {
    /// Joins the origin and the edge by their veth pair, with addresses, routes and primed
    /// neighbour tables.
    pub fn plug(&self) {
        let lab = self;
        let (o, e) = (&lab.origin.name, &lab.edge.name);
        // Each side in one `ip netns exec` with its `ip` commands in one `ip -batch` (which takes
        // no per-line options: the family comes from the address): the same commands as one by
        // one, in a fraction of the processes.
        let side = |dev: &str, batch: &str, after: &str| {
            format!(
                "sysctl -qw net.ipv6.conf.all.accept_dad=0 net.ipv6.conf.default.accept_dad=0 && \
                 printf '%b' 'link set lo up\nlink set {dev} up\n{batch}' | ip -batch - {after}"
            )
        };
        sh(&format!(
            "ip link add {ORIGIN_IF} netns {o} type veth peer name {EDGE_IF} netns {e}"
        ));
        lab.origin.sh(&side(
            ORIGIN_IF,
            &format!(
                "addr add {ORIGIN_V4}/24 dev {ORIGIN_IF}\n\
                 addr add {ORIGIN_V6}/64 dev {ORIGIN_IF} nodad\n\
                 route add {EDGE_V4}/32 dev {ORIGIN_IF}\n\
                 route add {EDGE_V6}/128 dev {ORIGIN_IF}\n"
            ),
            "",
        ));
        // Prime neighbour tables both ways so the first SYN is not delayed or lost to ND.
        lab.edge.sh(&side(
            EDGE_IF,
            &format!(
                "addr add {OTHER_V4}/24 dev {EDGE_IF}\n\
                 addr add {EDGE_V4}/32 dev {EDGE_IF}\n\
                 addr add {OTHER_V6}/64 dev {EDGE_IF} nodad\n\
                 addr add {EDGE_V6}/128 dev {EDGE_IF} nodad\n"
            ),
            &format!(
                "&& {{ ping -c1 -W2 -I {EDGE_V4} {ORIGIN_V4}; \
                 ping -6 -c1 -W2 -I {EDGE_V6} {ORIGIN_V6}; \
                 ping -c1 -W2 {ORIGIN_V4}; ping -6 -c1 -W2 {ORIGIN_V6}; true; }} >/dev/null 2>&1"
            ),
        ));
    }

    /// Gives the edge one more IPv4 address (another Cloudflare range) the origin routes back
    /// over the pair.
    pub fn edge_alias(&self, addr: &str) {
        self.edge
            .sh(&format!("ip addr add {addr}/32 dev {EDGE_IF}"));
        self.origin
            .sh(&format!("ip route add {addr}/32 dev {ORIGIN_IF}"));
        self.edge.sh(&format!(
            "ping -c1 -W2 -I {addr} {ORIGIN_V4} >/dev/null || true"
        ));
    }

    /// The origin reaches the edge by a default route out of its interface, as a real origin
    /// does (the lab's host routes to the edge's addresses are removed), so that a more
    /// specific route to an edge address — fail2ban's `ip route add unreachable <ip>` — can
    /// be added; and gives the edge the extra addresses named (any Cloudflare range), each
    /// primed in the origin's neighbour table.
    pub fn edge_by_default_route(&self, extra: &[&str]) {
        self.origin.sh(&format!(
            "sysctl -qw net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.{ORIGIN_IF}.rp_filter=0; \
             ip route del {EDGE_V4}/32 dev {ORIGIN_IF}; ip route add default dev {ORIGIN_IF}; \
             ip -6 route del {EDGE_V6}/128 dev {ORIGIN_IF}; ip -6 route add default dev {ORIGIN_IF}"
        ));
        for addr in extra {
            let (v, len, nodad) = if addr.contains(':') {
                ("-6", 128, " nodad")
            } else {
                ("-4", 32, "")
            };
            self.edge.sh(&format!(
                "ip {v} addr add {addr}/{len} dev {EDGE_IF}{nodad}"
            ));
            let origin = if v == "-6" { ORIGIN_V6 } else { ORIGIN_V4 };
            self.edge.sh(&format!(
                "ping {v} -c1 -W2 -I {addr} {origin} >/dev/null || true"
            ));
        }
    }

    /// The container reached directly by the edge through the origin, as a VM-like
    /// namespace or a container with a routed address: the origin forwards between the edge
    /// and the container (no DNAT), and the container forwards too (so a tracer there follows
    /// its connections into the origin, as on a Docker host whose namespaces inherit it).
    pub fn route_edge_to_container(&self) {
        self.wire_container();
        self.container
            .sh("sysctl -qw net.ipv4.ip_forward=1 net.ipv4.conf.all.rp_filter=0");
        self.edge
            .sh(&format!("ip route add 172.17.0.0/16 via {ORIGIN_V4}"));
        self.edge.sh(&format!(
            "ping -c1 -W2 -I {EDGE_V4} {CONTAINER_V4} >/dev/null || true"
        ));
    }

    /// A second interface on the origin that leads nowhere, as a NIC whose upstream drops
    /// everything: `ROUTE_IF`, a veth into the (unused) container namespace, with a gateway
    /// 10.99.0.2 whose link-layer address nothing there has.
    pub fn dead_end_interface(&self) {
        sh(&format!(
            "ip link add {ROUTE_IF} netns {} type veth peer name {ROUTE_IF}p netns {}",
            self.origin.name, self.container.name
        ));
        self.container.sh(&format!("ip link set {ROUTE_IF}p up"));
        self.origin.sh(&format!(
            "ip addr add 10.99.0.1/24 dev {ROUTE_IF}; ip link set {ROUTE_IF} up; \
             ip neigh replace 10.99.0.2 lladdr 02:00:00:00:99:02 dev {ROUTE_IF} nud permanent"
        ));
    }

    /// Makes the edge's neighbour entry for the origin permanent, as a router in front of
    /// the origin has: the edge's packets then arrive whatever the origin answers to ARP
    /// (strict rp_filter ignores ARP requests from a source routed elsewhere).
    pub fn pin_origin_neighbour(&self) {
        let mac = self
            .origin
            .sh(&format!("cat /sys/class/net/{ORIGIN_IF}/address"));
        self.edge.sh(&format!(
            "ip neigh replace {ORIGIN_V4} lladdr {} dev {EDGE_IF} nud permanent",
            mac.trim()
        ));
    }

    /// Deletes the origin's interface (and so the pair), as a NIC removed or a veth deleted.
    pub fn unplug(&self) {
        self.origin.sh(&format!("ip link del {ORIGIN_IF}"));
    }

    /// Joins the container namespace to the origin by a veth pair, as Docker's bridge does:
    /// the origin forwards (ip_forward, IPv6 forwarding) and masquerades the container's own
    /// outbound connections; the container routes everything through the origin.
    pub fn wire_container(&self) {
        sh(&format!(
            "ip link add {BRIDGE_IF} netns {} type veth peer name {CONTAINER_IF} netns {}",
            self.origin.name, self.container.name
        ));
        self.origin.sh(&format!(
            "sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1; \
             ip link set {BRIDGE_IF} up; \
             ip addr add {BRIDGE_V4}/16 dev {BRIDGE_IF}; \
             ip -6 addr add {BRIDGE_V6}/64 dev {BRIDGE_IF} nodad; \
             iptables -t nat -A POSTROUTING -s 172.17.0.0/16 ! -o {BRIDGE_IF} -j MASQUERADE; \
             ip6tables -t nat -A POSTROUTING -s fd00:17::/64 ! -o {BRIDGE_IF} -j MASQUERADE"
        ));
        self.container.sh(&format!(
            "sysctl -qw net.ipv6.conf.all.accept_dad=0 net.ipv6.conf.default.accept_dad=0; \
             ip link set lo up; ip link set {CONTAINER_IF} up; \
             ip addr add {CONTAINER_V4}/16 dev {CONTAINER_IF}; \
             ip -6 addr add {CONTAINER_V6}/64 dev {CONTAINER_IF} nodad; \
             ip route add default via {BRIDGE_V4}; \
             ip -6 route add default via {BRIDGE_V6}"
        ));
        self.container
            .sh(&format!("ping -c1 -W2 {BRIDGE_V4} >/dev/null || true"));
        self.container
            .sh(&format!("ping -6 -c1 -W2 {BRIDGE_V6} >/dev/null || true"));
        // A container always has a process in it (its init): the tracer finds and reads the
        // namespace through it, as it does a real container's. Killed with the lab.
        self.container
            .sh("sleep 100000 </dev/null >/dev/null 2>&1 &");
    }

    /// The container stops: its processes end and its namespace (with its end of the veth)
    /// goes away.
    pub fn stop_container(&self) {
        sh(&format!(
            "ip netns pids {c} | xargs -r kill -9; ip netns del {c}",
            c = self.container.name
        ));
    }

    /// Publishes `container_port` of the container on the origin's `host_port` exactly as
    /// `docker run -p HOST:CONTAINER` writes it with iptables: nat PREROUTING (local
    /// destinations) -> DOCKER -> DNAT; filter FORWARD -> DOCKER-USER (RETURN), then an
    /// accept for the published port.
    pub fn docker_publish(&self, host_port: u16, container_port: u16) {
        // The chains and jumps once, as the daemon creates them at start; a rule per port.
        self.origin.sh(&format!(
            "iptables -t nat -N DOCKER 2>/dev/null || true; \
             iptables -t nat -C PREROUTING -m addrtype --dst-type LOCAL -j DOCKER 2>/dev/null \
               || iptables -t nat -A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER; \
             iptables -N DOCKER-USER 2>/dev/null || true; \
             iptables -C FORWARD -j DOCKER-USER 2>/dev/null || iptables -A FORWARD -j DOCKER-USER; \
             iptables -C DOCKER-USER -j RETURN 2>/dev/null || iptables -A DOCKER-USER -j RETURN; \
             iptables -N DOCKER 2>/dev/null || true; \
             iptables -C FORWARD -o {BRIDGE_IF} -j DOCKER 2>/dev/null \
               || iptables -A FORWARD -o {BRIDGE_IF} -j DOCKER; \
             iptables -t nat -A DOCKER ! -i {BRIDGE_IF} -p tcp -m tcp --dport {host_port} -j DNAT --to-destination {CONTAINER_V4}:{container_port}; \
             iptables -A DOCKER -d {CONTAINER_V4}/32 ! -i {BRIDGE_IF} -o {BRIDGE_IF} -p tcp -m tcp --dport {container_port} -j ACCEPT"
        ));
    }

    /// The same with nftables, for IPv6: `dnat to [CONTAINER_V6]:container_port`.
    pub fn nft_publish_v6(&self, host_port: u16, container_port: u16) {
        self.origin.sh(&format!(
            "nft add table ip6 nat; \
             nft add chain ip6 nat prerouting '{{ type nat hook prerouting priority dstnat; }}'; \
             nft add rule ip6 nat prerouting iifname {ORIGIN_IF} tcp dport {host_port} dnat to [{CONTAINER_V6}]:{container_port}"
        ));
    }
}

impl Default for Lab {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for ns in [&self.origin, &self.edge, &self.container] {
            let _ = Command::new("ip")
                .args(["netns", "pids", &ns.name])
                .output()
                .map(|o| {
                    for pid in String::from_utf8_lossy(&o.stdout).split_whitespace() {
                        let _ = Command::new("kill").args(["-9", pid]).status();
                    }
                });
            // Quiet: a test may have deleted it already (a container stopped mid-window).
            let _ = Command::new("ip")
                .args(["netns", "del", &ns.name])
                .stderr(Stdio::null())
                .status();
        }
    }
}

pub fn tracer_bin() -> PathBuf {
    let path = std::env::var_os("TRACER_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/tracer"));
    assert!(
        path.is_file(),
        "tracer binary not found at {}: run the tests with `cargo xtask test`",
        path.display()
    );
    path
}

/// A tracer process running in the origin namespace.
pub struct Tracer {
    child: Child,
    stdout: PathBuf,
    stderr: PathBuf,
    dir: PathBuf,
}

impl Tracer {
    /// Starts `tracer ARGS... --ready-file F` in `ns` and waits until it is attached.
    pub fn start(ns: &Netns, args: &[&str]) -> Tracer {
        Tracer::start_env(ns, args, &[])
    }

    /// [`Tracer::start`] with extra environment variables. Confined as `TRACER_CONFINE`
    /// says (the unit's or the DaemonSet's capabilities), when set.
    pub fn start_env(ns: &Netns, args: &[&str], env: &[(&str, &str)]) -> Tracer {
        Tracer::start_confined(ns, args, env, confine::Confinement::from_env().as_ref())
    }

    /// [`Tracer::start_env`] confined as a shipped form confines it (or not at all).
    pub fn start_confined(
        ns: &Netns,
        args: &[&str],
        env: &[(&str, &str)],
        confinement: Option<&confine::Confinement>,
    ) -> Tracer {
        let mut cmd = match confinement {
            // nsenter keeps the host's mounts: `ip netns exec` mounts a fresh /sys without
            // tracefs, which only a tracer with CAP_SYS_ADMIN can mount again — as a service
            // on the host, the tracer finds tracefs mounted.
            Some(c) => {
                confine::ensure_host_tracefs();
                let mut cmd = if c.protect_proc {
                    // ProtectProc=invisible: a /proc of its own, hidepid=invisible, in a
                    // private mount namespace.
                    let mut cmd = Command::new("unshare");
                    cmd.args([
                        "--mount",
                        "--propagation",
                        "private",
                        "--",
                        "sh",
                        "-c",
                        "mount -t proc -o hidepid=invisible proc /proc && exec \"$@\"",
                        "sh",
                        "nsenter",
                    ]);
                    cmd
                } else {
                    Command::new("nsenter")
                };
                cmd.arg(format!("--net=/run/netns/{}", ns.name))
                    .arg("setpriv")
                    .args(c.setpriv_args())
                    .arg("--");
                cmd
            }
            None => {
                let mut cmd = Command::new("ip");
                cmd.args(["netns", "exec", &ns.name]);
                cmd
            }
        };
        cmd.arg(tracer_bin());
        Tracer::launch(cmd, &ns.name, args, env)
    }

    /// [`Tracer::start_env`] under a wrapper command (`unshare --pid --fork`: the tracer as
    /// pid 1 of a pid namespace of its own, as in a container without `--pid host`).
    pub fn start_under(
        ns: &Netns,
        wrapper: &[&str],
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Tracer {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &ns.name])
            .args(wrapper)
            .arg(tracer_bin());
        Tracer::launch(cmd, &ns.name, args, env)
    }

    /// Starts the tracer in the test's own (the host's) network namespace, as an admin runs
    /// it beside Docker.
    pub fn start_in_host(args: &[&str]) -> Tracer {
        Tracer::launch(Command::new(tracer_bin()), "t521-host", args, &[])
    }

    fn launch(mut cmd: Command, label: &str, args: &[&str], env: &[(&str, &str)]) -> Tracer {
        let dir = std::env::temp_dir().join(format!("{label}-{}", rand_suffix()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let ready = dir.join("ready");
        let stdout = dir.join("stdout");
        let stderr = dir.join("stderr");
        let child = cmd
            .args(args)
            .arg("--ready-file")
            .arg(&ready)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(File::create(&stdout).expect("stdout file"))
            .stderr(File::create(&stderr).expect("stderr file"))
            .spawn()
            .expect("spawn tracer");
        let mut tracer = Tracer {
            child,
            stdout,
            stderr,
            dir,
        };
        // 30 s on a real kernel; the VM guests (emulated CPUs, two VMs on two cores) set
        // TRACER_READY_SECS higher: loading and verifying the programs is slow there.
        let limit = std::env::var("TRACER_READY_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(30u64);
        let deadline = Instant::now() + Duration::from_secs(limit);
        while !ready.exists() {
            if let Ok(Some(status)) = tracer.child.try_wait() {
                panic!("tracer exited early ({status}): {}", tracer.stderr_text());
            }
            assert!(
                Instant::now() < deadline,
                "tracer not ready after {limit} s: {}",
                tracer.stderr_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        tracer
    }

    pub fn stderr_text(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal to the tracer.
    pub fn signal(&self, sig: i32) {
        // SAFETY: plain kill(2) of our own child.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    /// Waits for the tracer to exit on its own (e.g. `--duration`), returning stdout.
    pub fn wait(mut self, limit: Duration) -> (i32, String) {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                let out = std::fs::read_to_string(&self.stdout).unwrap_or_default();
                return (status.code().unwrap_or(-1), out);
            }
            assert!(
                Instant::now() < deadline,
                "tracer still running after {limit:?}: {}",
                self.stderr_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Lets in-flight events arrive, stops the tracer with SIGTERM and returns its JSON lines.
    pub fn stop(self) -> Vec<Value> {
        std::thread::sleep(Duration::from_millis(300));
        self.signal(libc::SIGTERM);
        let stderr = self.stderr_text();
        let (code, out) = self.wait(Duration::from_secs(10));
        assert_eq!(code, 0, "tracer exited with {code}: {stderr}");
        out.lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON line {l:?}: {e}")))
            .collect()
    }
}

impl Tracer {
    /// `tracer diagnose --format json` on the lab's origin interface, watching `ports` for `secs`.
    pub fn diagnose(ns: &Netns, ports: &str, secs: &str) -> Tracer {
        Tracer::diagnose_env(ns, ports, secs, &[])
    }

    /// [`Tracer::diagnose`] with extra environment variables.
    pub fn diagnose_env(ns: &Netns, ports: &str, secs: &str, env: &[(&str, &str)]) -> Tracer {
        Tracer::diagnose_with(ns, ports, secs, &[], env)
    }

    /// [`Tracer::diagnose`] with extra arguments and environment variables.
    pub fn diagnose_with(
        ns: &Netns,
        ports: &str,
        secs: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Tracer {
        Tracer::diagnose_on(ns, ORIGIN_IF, ports, secs, extra, env)
    }

    /// [`Tracer::diagnose_with`] watching `iface` (the container's, for a tracer run there).
    pub fn diagnose_on(
        ns: &Netns,
        iface: &str,
        ports: &str,
        secs: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Tracer {
        let mut args = vec![
            "diagnose",
            "--iface",
            iface,
            "--port",
            ports,
            "--duration",
            secs,
            "--format",
            "json",
        ];
        args.extend_from_slice(extra);
        Tracer::start_env(ns, &args, env)
    }
}

impl Drop for Tracer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

/// The report's cause of this verdict; panics with the report when there is none.
pub fn cause<'a>(report: &'a Value, verdict: &str) -> &'a Value {
    report["causes"]
        .as_array()
        .expect("causes")
        .iter()
        .find(|c| c["verdict"] == verdict)
        .unwrap_or_else(|| panic!("no {verdict} cause: {report:#}"))
}

/// A JSON array of strings (evidence, next steps) as lines.
pub fn lines(v: &Value) -> String {
    v.as_array()
        .expect("an array of strings")
        .iter()
        .map(|e| e.as_str().expect("a string"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Events of `kind` (and, when given, `reason`) — from the events JSON lines.
pub fn count(events: &[Value], kind: &str, reason: Option<&str>) -> usize {
    events
        .iter()
        .filter(|e| e["kind"] == kind)
        .filter(|e| reason.is_none_or(|r| e["reason"] == r))
        .count()
}

/// Events of `kind` from `peer`.
pub fn count_from(events: &[Value], kind: &str, peer: &str) -> usize {
    events
        .iter()
        .filter(|e| e["kind"] == kind && e["peer_addr"] == peer)
        .count()
}

pub fn sockaddr(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().expect("address"), port)
}

/// Summary of events for assertion messages.
pub fn summary(events: &[Value]) -> String {
    events
        .iter()
        .map(|e| {
            format!(
                "{} {}:{}->{} {}",
                e["kind"].as_str().unwrap_or("?"),
                e["peer_addr"].as_str().unwrap_or("-"),
                e["peer_port"],
                e["local_port"],
                e["reason"].as_str().unwrap_or("")
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

impl Netns {
    /// HTTP GET from inside the namespace: (status line, body).
    pub fn http_get(&self, addr: &str, path: &str) -> io::Result<(String, String)> {
        let addr: SocketAddr = addr.parse().expect("address");
        let path = path.to_string();
        self.enter(move || {
            use std::io::{Read as _, Write as _};
            let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            write!(
                s,
                "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
            )?;
            let mut raw = String::new();
            s.read_to_string(&mut raw)?;
            let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
            Ok((
                head.lines().next().unwrap_or("").to_string(),
                body.to_string(),
            ))
        })
    }
}

/// The value of one sample line in a Prometheus text exposition, e.g.
/// `metric(text, "tracer_edge_syn_total{port=\"443\"}")`.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
        })
        .and_then(|v| v.trim().parse().ok())
}

/// How many of the tracer's arrival programs (`xdp_syn`, `tc_syn`) the kernel holds now: one
/// per running tracer; none once every tracer has exited, however it ended.
pub fn arrival_programs_loaded() -> usize {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .filter(|p| matches!(p.name_as_str(), Some("xdp_syn" | "tc_syn")))
        .count()
}

/// Polls `f` until it returns true or `limit` passes.
pub fn eventually(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    f()
}

/// A directory under the system temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        let d = std::env::temp_dir().join(format!("t521-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("temp dir");
        TempDir(d)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
