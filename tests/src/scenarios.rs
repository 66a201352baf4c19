//! 521 scenarios: each sets up a cause in a fresh lab, makes edge traffic, and names the verdict
//! `tracer diagnose` must give. Used by the integration tests and by `cargo xtask lab`.

use std::{
    any::Any,
    net::TcpListener,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::*;

/// What a scenario keeps alive while the tracer watches (listeners, servers).
pub type Keep = Vec<Box<dyn Any>>;

/// An edge address in Cloudflare's 172.64.0.0/13 (the range a `172.0.0.0/8` route swallows).
pub const SWALLOWED_EDGE_V4: &str = "172.64.1.10";

pub struct Scenario {
    pub name: &'static str,
    pub expected: &'static str,
    /// The edge counts it must give, exactly: `field=n` pairs; `a+b=n` for a sum (a full
    /// accept queue drops SYNs with a reason from 6.15 on, silently before).
    pub counts: &'static str,
    /// `--port` value for the tracer.
    pub ports: &'static str,
    /// Where the tracer runs.
    pub vantage: Vantage,
    /// More arguments for the tracer (`--edge-read-timeout 3s`).
    pub extra: &'static [&'static str],
    pub setup: fn(&Lab) -> Keep,
    pub traffic: fn(&Lab),
}

/// Where the tracer runs in a scenario.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Vantage {
    /// In the origin namespace, on its interface to the edge.
    Origin,
    /// In the container namespace, on its own interface: the origin is its host.
    Container,
}

/// Below the kernel's first SYN retransmission: one SYN per attempt.
pub const SHORT: Duration = Duration::from_millis(500);
/// Past the kernel's first SYN retransmission (1 s) and before its second (3 s): two SYNs
/// per attempt nothing answers, as the edge retransmits.
pub const RETRYING: Duration = Duration::from_millis(2500);
pub const WINDOW_SECS: u64 = 4;
/// A connection a scenario's setup needs before the tracer starts (the one that fills a
/// queue or a connlimit): past the kernel's SYN retransmissions at 1 s and 3 s, as a machine
/// loaded by the kernel matrix beside the tests can take more than `SHORT` to answer the first.
pub const SETUP_CONNECT: Duration = Duration::from_secs(5);

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum ServerMode {
    /// Accept, then close normally.
    Close,
    /// Accept, then abort with RST (SO_LINGER 0).
    Reset,
    /// Accept and hold the connection open (an edge's tunnel connection).
    Hold,
}

/// An accept loop on a listener inside the origin namespace, stopped on drop.
pub struct Server {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    pub fn start(listener: TcpListener, mode: ServerMode) -> Server {
        listener.set_nonblocking(true).expect("nonblocking");
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut held = Vec::new();
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        if mode == ServerMode::Reset {
                            let _ = socket2::SockRef::from(&conn).set_linger(Some(Duration::ZERO));
                        }
                        if mode == ServerMode::Hold {
                            held.push(conn);
                        }
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Server {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn attempts(lab: &Lab, from: &str, to: &str, port: u16, n: usize) -> usize {
    (0..n)
        .filter(|_| lab.edge.connect(from, sockaddr(to, port), SHORT).is_ok())
        .count()
}

/// One attempt from each address of `from` at once, each retransmitting its SYN while no
/// answer gets back.
fn retrying(lab: &Lab, from: &[&str], to: &str, port: u16) {
    std::thread::scope(|s| {
        for addr in from {
            s.spawn(|| lab.edge.connect(addr, sockaddr(to, port), RETRYING).is_ok());
        }
    });
}

/// The origin namespace's forwarding off, as on an origin that is no router (a namespace
/// inherits the host's, and a forwarding tracer would follow the lab edge's own drops).
fn no_forwarding(lab: &Lab) {
    lab.origin
        .sh("sysctl -qw net.ipv4.ip_forward=0 net.ipv6.conf.all.forwarding=0");
}

/// A Cloudflare Tunnel origin (#31): the stand-in `cloudflared` in the origin namespace
/// dialling `service` for each request, the service listening on `listen` (none: down), and
/// the edge answering its tunnel connection on 7844 when `edge_up`.
fn tunnel(lab: &Lab, service: &str, listen: Option<&str>, edge_up: bool) -> Keep {
    no_forwarding(lab);
    let mut keep: Keep = Vec::new();
    if let Some(addr) = listen {
        keep.extend(server(lab, addr, 8080, ServerMode::Close));
    }
    if edge_up {
        keep.push(Box::new(Server::start(
            lab.edge.listen(EDGE_V4, 7844, 16),
            ServerMode::Hold,
        )));
    }
    let edge = sockaddr(EDGE_V4, 7844);
    keep.push(Box::new(crate::tunnel::StandIn::start(
        &lab.origin,
        &[service.parse().expect("service address")],
        Some(edge),
    )));
    keep
}

fn nothing(_: &Lab) -> Keep {
    Vec::new()
}

fn server(lab: &Lab, addr: &str, port: u16, mode: ServerMode) -> Keep {
    vec![Box::new(Server::start(
        lab.origin.listen(addr, port, 128),
        mode,
    ))]
}

/// A web server in the container on `addr:80`.
fn container_server(lab: &Lab, addr: &str) -> Keep {
    vec![Box::new(Server::start(
        lab.container.listen(addr, 80, 128),
        ServerMode::Close,
    ))]
}

/// A listener on `port` in `ns` with backlog 0 that never accepts, and the one edge
/// connection (to the origin's 443) that fills its queue.
fn full_queue(lab: &Lab, ns: &Netns, port: u16) -> Keep {
    let l = ns.listen("0.0.0.0", port, 0);
    let first = lab
        .edge
        .connect(EDGE_V4, sockaddr(ORIGIN_V4, 443), SETUP_CONNECT)
        .expect("first connection");
    vec![Box::new(l), Box::new(first)]
}

/// Edge attempts that send a request 300 ms after connecting (a server that closes idle
/// connections sooner resets them).
fn requests_after_a_pause(lab: &Lab, n: usize) {
    use std::io::{Read as _, Write as _};
    for _ in 0..n {
        if let Ok(mut c) = lab.edge.connect(EDGE_V4, sockaddr(ORIGIN_V4, 443), SHORT) {
            std::thread::sleep(Duration::from_millis(300));
            let _ = c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
            let _ = c.set_read_timeout(Some(SHORT));
            let _ = c.read(&mut [0u8; 16]);
        }
    }
}

/// A one-connection HTTP/1.1 server on `listener`: answers each request after `delay`, and
/// closes the connection once it has been idle for `idle_close`. Runs on a thread named
/// `slow-app` (the process holding its sockets is the test's).
pub fn http_server(listener: TcpListener, delay: Duration, idle_close: Duration) -> JoinHandle<()> {
    use std::io::{Read as _, Write as _};
    std::thread::Builder::new()
        .name("slow-app".into())
        .spawn(move || {
            let Ok((mut conn, _)) = listener.accept() else {
                return;
            };
            conn.set_read_timeout(Some(idle_close))
                .expect("read timeout");
            let mut buf = [0u8; 4096];
            // Each read is one request here (the client sends each in one write).
            while let Ok(n) = conn.read(&mut buf) {
                if n == 0 {
                    break;
                }
                std::thread::sleep(delay);
                if conn
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                    .is_err()
                {
                    break;
                }
            }
            // Idle past `idle_close` (the read timed out) or the peer closed: close.
        })
        .expect("server thread")
}

/// Sends a request on `conn` and reads the answer (or the error the connection gives).
pub fn request(conn: &mut std::net::TcpStream) -> std::io::Result<usize> {
    use std::io::{Read as _, Write as _};
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    conn.write_all(b"GET / HTTP/1.1\r\nHost: origin\r\n\r\n")?;
    let mut buf = [0u8; 256];
    conn.read(&mut buf)
}

/// An HTTP server on the origin's 8080 (see [`http_server`]), kept for the scenario.
fn http_8080(lab: &Lab, delay: Duration, idle_close: Duration) -> Keep {
    vec![Box::new(http_server(
        lab.origin.listen("0.0.0.0", 8080, 16),
        delay,
        idle_close,
    ))]
}

/// Every Cloudflare IPv4 range but 104.16.0.0/13, as an old copy of the list.
pub fn stale_cloudflare_v4() -> Vec<String> {
    let v: Value = serde_json::from_str(include_str!("../../tracer/data/cloudflare-ips.json"))
        .expect("ranges JSON");
    v["result"]["ipv4_cidrs"]
        .as_array()
        .expect("ipv4_cidrs")
        .iter()
        .filter_map(Value::as_str)
        .filter(|r| *r != "104.16.0.0/13")
        .map(String::from)
        .collect()
}

/// `docker run -p 443:80`: the container wired behind the origin, port 443 published.
fn docker_443_to_80(lab: &Lab) {
    lab.wire_container();
    lab.docker_publish(443, 80);
}

pub fn all() -> Vec<Scenario> {
    vec![
        Scenario {
            name: "healthy",
            expected: "healthy",
            counts: "syn=5 handshakes=5",
            ports: "443",
            vantage: Vantage::Origin,
            extra: &[],
            setup: |lab| server(lab, "0.0.0.0", 443, ServerMode::Close),
            traffic: |lab| {
                attempts(lab, EDGE_V4, ORIGIN_V4, 443, 5);
            },
        },
        Scenario {
            name: "nothing listens",
            expected: "refused",
            counts: "syn=3 refused=3",
            ports: "443",
            vantage: Vantage::Origin,
            extra: &[],
            setup: nothing,
            traffic: |lab| {
                attempts(lab, EDGE_V4, ORIGIN_V4, 443, 3);
            },
        },
        Scenario {
            name: "listener on 127.0.0.1 only",
            expected: "refused",
            counts: "syn=3 refused=3",
            ports: "443",
            vantage: Vantage::Origin,
            extra: &[],
            setup: |lab| vec![Box::new(lab.origin.listen("127.0.0.1", 443, 16))],
            traffic: |lab| {
                attempts(lab, EDGE_V4, ORIGIN_V4, 443, 3);
            },
        },
        Scenario {
            name: "nft drops edge, allowlist admits others",
            expected: "firewall_drop",
            counts: "syn=3 firewall_drops=3",
            ports: "443",
            vantage: Vantage::Origin,
            extra: &[],
            setup: |lab| {
                lab.origin.sh(
                    "nft add table inet filter; \
                     nft add chain inet filter input '{ type filter hook input priority 0; policy drop; }'; \
                     nft add rule inet filter input iif lo accept; \
                     nft add rule inet filter input ct state established,related accept; \
                     nft add rule inet filter input ip saddr 192.0.2.0/24 tcp dport 443 accept; \
                     nft add rule inet filter input ip6 nexthdr icmpv6 accept; \
                     nft add rule inet filter input icmp type echo-request accept",
                );
                server(lab, "0.0.0.0", 443, ServerMode::Close)
            },
            traffic: |lab| {
                attempts(lab, EDGE_V4, ORIGIN_V4, 443, 3);
                attempts(lab, OTHER_V4, ORIGIN_V4, 443, 2);
            },
        },
        Scenario {
            name: "iptables REJECT tcp-reset",
            expected: "firewall_drop",
            counts: "syn=3 firewall_drops=3",
            ports: "443",
            vantage: Vantage::Origin,
            extra: &[],
            setup: |lab| {
                lab.origin.sh("iptables -A INPUT -p tcp --dport 443 -s 173.245.48.0/20 -j REJECT --reject-with tcp-reset");
                server(lab, "0.0.0.0", 443, ServerMode::Close)
            },
            traffic: |lab| {
                attempts(lab, EDGE_V4, ORIGIN_V4, 443, 3);
            },
        },
        Scenario {
            name: "accept queue full",
            expected: "overloaded",
            counts: "syn=3 handshakes=0 unanswered+overload_drops=3",
            ports: "443",
            vantage: Vantage::Origin,
            extra: &[],
            setup: |lab| full_queue(lab, &lab.origin, 443),
            traffic: |lab| {
                attempts(lab, EDGE_V4, ORIGIN_V4, 443, 3);
            },
        },
        Scenario {
            name: "application resets after accept",
            expected: "reset_by_origin",
            counts: "syn=3 handshakes=3 origin_resets=3",
            ports: "443",
            vantage: Vantage::Origin,
            extra: &[],
            setup: |lab| server(lab, "0.0.0.0", 443, ServerMode::Reset),
            traffic: |lab| {
                for _ in 0..3 {
                    if let Ok(mut c) = lab.edge.connect(EDGE_V4, sockaddr(ORIGIN_V4, 443), SHORT) {
                        use std::io::Read as _;
                        let _ = c.set_read_timeout(Some(SHORT));
                        let _ = c.read(&mut [0u8; 16]);
                    }
                }
            },
        },
        Scenario {
            name: "edge drops its own SYNs",
            expected: "never_arriving",
            counts: "syn=0",
            ports: "443",
            vantage: Vantage::Origin,
            extra: &[],
            setup: |lab| {
                lab.edge.sh("nft add table inet t; \
                     nft add chain inet t output '{ type filter hook output priority 0; }'; \
                     nft add rule inet t output ip saddr 173.245.48.0/20 tcp dport 443 drop");
                server(lab, "0.0.0.0", 443, ServerMode::Close)
            },
            traffic: |lab| {
                attempts(lab, EDGE_V4, ORIGIN_V4, 443, 3);
                attempts(lab, OTHER_V4, ORIGIN_V4, 443, 2);
            },
        },
        Scenario {
            name: "mixed: refused 8080, firewall 443",
            expected: "firewall_drop",
            counts: "syn=6 refused=2 firewall_drops=4",
            ports: "443,8080",
            vantage: Vantage::Origin,
            extra: &[],
            setup: |lab| {
                lab.origin.sh("nft add table inet filter; \
                     nft add chain inet filter input '{ type filter hook input priority 0; }'; \
                     nft add rule inet filter input tcp dport 443 drop");
                server(lab, "0.0.0.0", 443, ServerMode::Close)
            },
            traffic: |lab| {
                attempts(lab, EDGE_V4, ORIGIN_V4, 8080, 2);
                attempts(lab, EDGE_V4, ORIGIN_V4, 443, 4);
            },
        },
        Scenario {
            name: "IPv6, nothing listens",
            expected: "refused",
            counts: "syn=3 refused=3",
            ports: "443",
            vantage: Vantage::Origin,
            extra: &[],
            setup: |lab| vec![Box::new(lab.origin.listen("::1", 443, 16))],
            traffic: |lab| {
                attempts(lab, EDGE_V6, ORIGIN_V6, 443, 3);
            },
        },
        Scenario {
            name: "container behind Docker DNAT, serving",
            expected: "healthy",
            counts: "syn=5 handshakes=5",
            ports: "443",
            vantage: Vantage::Origin,
            extra: &[],
            setup: |lab| {
                docker_443_to_80(lab);
                container_server(lab, "0.0.0.0")
            },
            traffic: |lab| {
                attempts(lab, EDGE_V4, ORIGIN_V4, 443, 5);
            },
        },
        Scenario {
            name: "container behind Docker DNAT, nothing listens",
            expected: "refused",
            counts: "syn=3 refused=3",
            ports: "443",
            vantage: Vantage::Origin,
            extra: &[],
            setup: |lab| {
                docker_443_to_80(lab);
                Vec::new()
            },
            traffic: |lab| {
                attempts(lab, EDGE_V4, ORIGIN_V4, 443, 3);
            },
        },
        Scenario {
            name: "container listens on its 127.0.0.1 only",
            expected: "refused",
            counts: "syn=3 refused=3",
            ports: "443",
            vantage: Vantage::Origin,
            extra: &[],
            setup: |lab| {
                docker_443_to_80(lab);
                container_server(lab, "127.0.0.1")
            },
            traffic: |lab| {
                attempts(lab, EDGE_V4, ORIGIN_V4, 443, 3);
            },
        },
        Scenario {
            name: "DOCKER-USER drops Cloudflare",
            expected: "firewall_drop",
            counts: "syn=3 firewall_drops=3",
            ports: "443",
            vantage: Vantage::Origin,
            extra: &[],
            setup: |lab| {
                docker_443_to_80(lab);
                lab.origin
                    .sh("iptables -I DOCKER-USER -s 173.245.48.0/20 -j DROP");
                container_server(lab, "0.0.0.0")
            },
            traffic: |lab| {
                attempts(lab, EDGE_V4, ORIGIN_V4, 443, 3);
            },
        },
        Scenario {
            name: "container's accept queue full",
            expected: "overloaded",
            counts: "syn=3 handshakes=0 unanswered+overload_drops=3",
            ports: "443",
            vantage: Vantage::Origin,
            extra: &[],
            setup: |lab| {
                docker_443_to_80(lab);
                full_queue(lab, &lab.container, 80)
            },
            traffic: |lab| {
                attempts(lab, EDGE_V4, ORIGIN_V4, 443, 3);
            },
        },
        Scenario {
            name: "container behind nftables IPv6 DNAT, nothing listens",
            expected: "refused",
            counts: "syn=3 refused=3",
            ports: "443",
            vantage: Vantage::Origin,
            extra: &[],
            setup: |lab| {
                lab.wire_container();
                lab.nft_publish_v6(443, 80);
                Vec::new()
            },
            traffic: |lab| {
                attempts(lab, EDGE_V6, ORIGIN_V6, 443, 3);
            },
        },
        Scenario {
            name: "non-default port 9443, healthy",
            expected: "healthy",
            counts: "syn=4 handshakes=4",
            ports: "9443",
            vantage: Vantage::Origin,
            extra: &[],
            setup: |lab| server(lab, "::", 9443, ServerMode::Close),
            traffic: |lab| {
                attempts(lab, EDGE_V4, ORIGIN_V4, 9443, 2);
                attempts(lab, EDGE_V6, ORIGIN_V6, 9443, 2);
            },
        },
        Scenario {
            name: "replies routed out another interface",
            expected: "return_path",
            counts: "syn=3 handshakes=0 unanswered=3",
            ports: "443",
            vantage: Vantage::Origin,
            extra: &[],
            setup: |lab| {
                lab.dead_end_interface();
                lab.origin.sh(&format!(
                    "sysctl -qw net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.{ORIGIN_IF}.rp_filter=0; \
                     ip route add default via 10.99.0.2 dev {ROUTE_IF} table 100; \
                     ip rule add from {ORIGIN_V4} lookup 100 priority 100"
                ));
                server(lab, "0.0.0.0", 443, ServerMode::Close)
            },
            // The edge retransmits its SYN, as Cloudflare does: each retransmission meets the
            // pending request, which resends its SYN-ACK and frees the SYN (not a drop).
            traffic: |lab| retrying(lab, &[EDGE_V4; 3], ORIGIN_V4, 443),
        },
        Scenario {
            // #31: a VPN or VPC peering route `172.0.0.0/8` takes Cloudflare's 172.64.0.0/13;
            // the origin's default route is the right way.
            name: "a 172.0.0.0/8 route swallows 172.64.0.0/13",
            expected: "return_path",
            counts: "syn=3 handshakes=0 unanswered=3",
            ports: "443",
            vantage: Vantage::Origin,
            extra: &[],
            setup: |lab| {
                lab.edge_by_default_route(&[SWALLOWED_EDGE_V4]);
                lab.dead_end_interface();
                lab.origin.sh(&format!(
                    "ip route add 172.0.0.0/8 via 10.99.0.2 dev {ROUTE_IF}"
                ));
                server(lab, "0.0.0.0", 443, ServerMode::Close)
            },
            traffic: |lab| retrying(lab, &[SWALLOWED_EDGE_V4; 3], ORIGIN_V4, 443),
        },
        // #31: Cloudflare Tunnel origins. No edge SYN arrives; cloudflared's own dials say.
        Scenario {
            name: "tunnel: cloudflared dials [::1]:8080, the service listens on 127.0.0.1:8080",
            expected: "tunnel_origin_unreachable",
            counts: "syn=0",
            ports: "443",
            vantage: Vantage::Origin,
            extra: &[],
            setup: |lab| tunnel(lab, "[::1]:8080", Some("127.0.0.1"), true),
            traffic: |_| {},
        },
        Scenario {
            name: "tunnel: the service behind cloudflared is down",
            expected: "tunnel_origin_unreachable",
            counts: "syn=0",
            ports: "443",
            vantage: Vantage::Origin,
            extra: &[],
            setup: |lab| tunnel(lab, "127.0.0.1:8080", None, true),
            traffic: |_| {},
        },
        Scenario {
            name: "tunnel: cloudflared cannot connect to the edge",
            expected: "tunnel_down",
            counts: "syn=0",
            ports: "443",
            vantage: Vantage::Origin,
            extra: &[],
            setup: |lab| tunnel(lab, "127.0.0.1:8080", Some("127.0.0.1"), false),
            traffic: |_| {},
        },
        Scenario {
            name: "tunnel: a healthy tunnel origin",
            expected: "healthy",
            counts: "syn=0",
            ports: "443",
            vantage: Vantage::Origin,
            extra: &[],
            setup: |lab| tunnel(lab, "127.0.0.1:8080", Some("127.0.0.1"), true),
            traffic: |_| {},
        },
        Scenario {
            name: "SYN-ACKs lost beyond this host while the edge retransmits",
            expected: "return_path",
            counts: "syn=3 handshakes=0 unanswered=3",
            ports: "443",
            vantage: Vantage::Origin,
            extra: &[],
            setup: |lab| {
                no_forwarding(lab);
                // An upstream that drops the origin's outbound: here, the edge's own input.
                lab.edge.sh("nft add table inet t; \
                     nft add chain inet t input '{ type filter hook input priority 0; }'; \
                     nft add rule inet t input tcp flags '&' '(syn|ack)' == 'syn|ack' drop");
                server(lab, "0.0.0.0", 443, ServerMode::Close)
            },
            traffic: |lab| retrying(lab, &[EDGE_V4; 3], ORIGIN_V4, 443),
        },
        Scenario {
            name: "SYN-ACKs dropped in the host's forward path",
            expected: "return_path",
            counts: "syn=3 handshakes=0 unanswered=3",
            ports: "443",
            // The tracer runs in the container (a VM-like namespace with a routed address);
            // its host, the lab's origin, drops the replies in its forward path.
            vantage: Vantage::Container,
            extra: &[],
            setup: |lab| {
                lab.route_edge_to_container();
                lab.origin.sh(
                    "nft add table inet hostfw; \
                     nft add chain inet hostfw forward '{ type filter hook forward priority 0; }'; \
                     nft add rule inet hostfw forward ip daddr 173.245.48.0/20 tcp flags '&' '(syn|ack)' == 'syn|ack' drop",
                );
                vec![Box::new(Server::start(
                    lab.container.listen("0.0.0.0", 443, 128),
                    ServerMode::Close,
                ))]
            },
            traffic: |lab| retrying(lab, &[EDGE_V4; 3], CONTAINER_V4, 443),
        },
        Scenario {
            name: "null routes to edge addresses (IPv4 and IPv6)",
            expected: "return_path",
            counts: "syn=6 handshakes=0 unanswered=6",
            ports: "443",
            vantage: Vantage::Origin,
            extra: &[],
            setup: |lab| {
                no_forwarding(lab);
                lab.edge_by_default_route(&[EDGE2_V4, EDGE3_V4, EDGE2_V6, EDGE3_V6]);
                lab.origin.sh(&format!(
                    "ip route add unreachable {EDGE_V4}; ip route add blackhole {EDGE2_V4}; \
                     ip route add prohibit {EDGE3_V4}; ip -6 route add unreachable {EDGE_V6}; \
                     ip -6 route add blackhole {EDGE2_V6}; ip -6 route add prohibit {EDGE3_V6}"
                ));
                server(lab, "::", 443, ServerMode::Close)
            },
            traffic: |lab| {
                std::thread::scope(|s| {
                    s.spawn(|| retrying(lab, &[EDGE_V4, EDGE2_V4, EDGE3_V4], ORIGIN_V4, 443));
                    s.spawn(|| retrying(lab, &[EDGE_V6, EDGE2_V6, EDGE3_V6], ORIGIN_V6, 443));
                });
            },
        },
        Scenario {
            name: "strict rp_filter drops the edge's SYNs",
            expected: "return_path",
            counts: "syn=3 other_drops=3",
            ports: "443",
            vantage: Vantage::Origin,
            extra: &[],
            setup: |lab| {
                lab.dead_end_interface();
                lab.pin_origin_neighbour();
                lab.origin.sh(&format!(
                    "ip route replace {EDGE_V4}/32 via 10.99.0.2 dev {ROUTE_IF}; \
                     sysctl -qw net.ipv4.conf.all.rp_filter=1 net.ipv4.conf.{ORIGIN_IF}.rp_filter=1"
                ));
                server(lab, "0.0.0.0", 443, ServerMode::Close)
            },
            traffic: |lab| {
                attempts(lab, EDGE_V4, ORIGIN_V4, 443, 3);
            },
        },
        Scenario {
            name: "fail2ban banned an edge address",
            expected: "firewall_drop",
            counts: "syn=3 firewall_drops=3",
            ports: "443",
            vantage: Vantage::Origin,
            extra: &[],
            setup: |lab| {
                let f2b =
                    tools::Fail2ban::start(&lab.origin, "nginx-http-auth", "iptables-multiport");
                f2b.client(&format!("set nginx-http-auth banip {EDGE_V4}"));
                let mut keep = server(lab, "0.0.0.0", 443, ServerMode::Close);
                keep.push(Box::new(f2b));
                keep
            },
            traffic: |lab| {
                attempts(lab, EDGE_V4, ORIGIN_V4, 443, 3);
                attempts(lab, OTHER_V4, ORIGIN_V4, 443, 2);
            },
        },
        Scenario {
            name: "ufw default deny, another source allowed",
            expected: "firewall_drop",
            counts: "syn=3 firewall_drops=3",
            ports: "443",
            vantage: Vantage::Origin,
            extra: &[],
            setup: |lab| {
                let dir = TempDir::new(&format!("ufw-{}", lab.origin.name));
                tools::ufw(
                    &lab.origin,
                    &dir,
                    // Rules first, then one enable: each command while enabled reloads every
                    // chain (a minute each in the emulated kernel-matrix guests).
                    &[
                        "default deny incoming",
                        "allow from 192.0.2.0/24 to any port 443 proto tcp",
                        "--force enable",
                    ],
                );
                let mut keep = server(lab, "0.0.0.0", 443, ServerMode::Close);
                keep.push(Box::new(dir));
                keep
            },
            traffic: |lab| {
                attempts(lab, EDGE_V4, ORIGIN_V4, 443, 3);
                attempts(lab, OTHER_V4, ORIGIN_V4, 443, 2);
            },
        },
        Scenario {
            name: "nft allowlist set lacks 104.16.0.0/13",
            expected: "firewall_drop",
            counts: "syn=5 handshakes=2 firewall_drops=3",
            ports: "443",
            vantage: Vantage::Origin,
            extra: &[],
            setup: |lab| {
                lab.edge_alias(EDGE2_V4);
                lab.origin.sh(&format!(
                    "nft add table inet filter; \
                     nft add set inet filter cloudflare_v4 '{{ type ipv4_addr; flags interval; }}'; \
                     nft add element inet filter cloudflare_v4 '{{ {} }}'; \
                     nft add chain inet filter input '{{ type filter hook input priority 0; policy drop; }}'; \
                     nft add rule inet filter input iif lo accept; \
                     nft add rule inet filter input ct state established,related accept; \
                     nft add rule inet filter input ip saddr @cloudflare_v4 tcp dport 443 accept; \
                     nft add rule inet filter input icmp type echo-request accept",
                    stale_cloudflare_v4().join(", ")
                ));
                server(lab, "0.0.0.0", 443, ServerMode::Close)
            },
            traffic: |lab| {
                attempts(lab, EDGE2_V4, ORIGIN_V4, 443, 3);
                attempts(lab, EDGE_V4, ORIGIN_V4, 443, 2);
            },
        },
        Scenario {
            name: "server closes idle connections before the request",
            expected: "reset_by_origin",
            counts: "syn=3 handshakes=3 origin_resets=3",
            ports: "443",
            vantage: Vantage::Origin,
            extra: &[],
            setup: |lab| server(lab, "0.0.0.0", 443, ServerMode::Close),
            traffic: |lab| requests_after_a_pause(lab, 3),
        },
        Scenario {
            name: "iptables connlimit rejects beyond one connection",
            expected: "firewall_drop",
            counts: "syn=3 firewall_drops=3",
            ports: "443",
            vantage: Vantage::Origin,
            extra: &[],
            setup: |lab| {
                lab.origin.sh("iptables -A INPUT -p tcp --syn --dport 443 -m connlimit --connlimit-above 1 --connlimit-mask 0 -j REJECT --reject-with tcp-reset");
                let l = lab.origin.listen("0.0.0.0", 443, 16);
                let first = lab
                    .edge
                    .connect(EDGE_V4, sockaddr(ORIGIN_V4, 443), SETUP_CONNECT)
                    .expect("first connection");
                vec![Box::new(l), Box::new(first)]
            },
            traffic: |lab| {
                attempts(lab, EDGE_V4, ORIGIN_V4, 443, 3);
            },
        },
        Scenario {
            name: "application answers after 4 s",
            expected: "slow_response",
            counts: "syn=1 handshakes=1",
            ports: "8080",
            vantage: Vantage::Origin,
            extra: &["--edge-read-timeout", "3s"],
            setup: |lab| http_8080(lab, Duration::from_secs(4), Duration::from_secs(30)),
            traffic: |lab| {
                if let Ok(mut c) = lab.edge.connect(EDGE_V4, sockaddr(ORIGIN_V4, 8080), SHORT) {
                    let _ = request(&mut c);
                }
            },
        },
        Scenario {
            name: "keep-alive closed after 1 s, next request at 1.4 s",
            expected: "keepalive_race",
            counts: "syn=1",
            ports: "8080",
            vantage: Vantage::Origin,
            extra: &[],
            setup: |lab| http_8080(lab, Duration::ZERO, Duration::from_secs(1)),
            traffic: |lab| {
                if let Ok(mut c) = lab.edge.connect(EDGE_V4, sockaddr(ORIGIN_V4, 8080), SHORT) {
                    let _ = request(&mut c);
                    std::thread::sleep(Duration::from_millis(1400));
                    let _ = request(&mut c);
                }
            },
        },
        Scenario {
            name: "half the SYN-ACKs lost",
            expected: "healthy",
            counts: "syn=3 handshakes=3",
            ports: "443",
            vantage: Vantage::Origin,
            extra: &[],
            setup: |lab| {
                lab.origin.sh(
                    "nft add table inet lossy; \
                     nft add chain inet lossy out '{ type filter hook output priority 0; }'; \
                     nft add rule inet lossy out tcp sport 443 'tcp flags & (syn | ack) == syn | ack' numgen inc mod 2 == 0 drop",
                );
                server(lab, "0.0.0.0", 443, ServerMode::Close)
            },
            traffic: |lab| {
                // Every attempt loses one SYN-ACK and completes about a second later: three
                // fit the window with a second to spare (four filled it, and a slow VM's last
                // handshake ended after the window).
                for _ in 0..3 {
                    let _ = lab
                        .edge
                        .connect(EDGE_V4, sockaddr(ORIGIN_V4, 443), RETRYING);
                }
            },
        },
    ]
}

/// The scenario of this name; panics naming it when there is none.
pub fn by_name(name: &str) -> Scenario {
    all()
        .into_iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no scenario {name}"))
}

/// Scenarios an older kernel cannot show, with the first kernel that can and why: the lab
/// skips them there (the README's kernel table says the same).
pub fn needs_kernel(name: &str) -> Option<((u32, u32), &'static str)> {
    match name {
        "server closes idle connections before the request" => Some((
            (6, 10),
            "before 6.10 tcp_send_reset does not fire for a reset sent from a TIME_WAIT socket",
        )),
        _ => None,
    }
}

/// The running kernel's (major, minor).
pub fn kernel_version() -> (u32, u32) {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut parts = release
        .trim()
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|p| p.parse::<u32>().ok());
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
}

/// The scenario's expected edge counts against a report: the first that differs, if any.
pub fn counts_differ(s: &Scenario, report: &Value) -> Option<String> {
    for pair in s.counts.split_whitespace() {
        let (fields, want) = pair.split_once('=')?;
        let want: u64 = want.parse().ok()?;
        let got: u64 = fields
            .split('+')
            .map(|f| report["edge"][f].as_u64().unwrap_or(0))
            .sum();
        if got != want {
            return Some(format!("{fields} {got}, expected {want}"));
        }
    }
    None
}

/// Runs the scenario named and checks it gives the verdict it expects: the report.
pub fn verdict_of(name: &str) -> Value {
    let s = by_name(name);
    let (report, _) = run(&s);
    assert_eq!(report["verdict"], s.expected, "{name}: {report:#}");
    if let Some(d) = counts_differ(&s, &report) {
        panic!("{name}: {d}: {report:#}");
    }
    report
}

/// Runs one scenario in a fresh lab: the report and the seconds it took.
pub fn run(s: &Scenario) -> (Value, f64) {
    run_env(s, &[])
}

/// [`run`] with extra environment variables for the tracer.
pub fn run_env(s: &Scenario, env: &[(&str, &str)]) -> (Value, f64) {
    run_with(s, &[], env)
}

/// [`run`] with extra arguments (`--hook xdp`) and environment variables for the tracer.
pub fn run_with(s: &Scenario, args: &[&str], env: &[(&str, &str)]) -> (Value, f64) {
    let (code, report, secs) = run_exit(s, args, env);
    assert_eq!(code, 0, "diagnose exited {code}: {report:#}");
    (report, secs)
}

/// [`run_with`] returning the tracer's exit status too (`--exit-code`).
pub fn run_exit(s: &Scenario, args: &[&str], env: &[(&str, &str)]) -> (i32, Value, f64) {
    let started = Instant::now();
    let lab = Lab::new();
    let t_lab = started.elapsed().as_secs_f64();
    let keep = (s.setup)(&lab);
    let t_setup = started.elapsed().as_secs_f64();
    let window = WINDOW_SECS.to_string();
    let (ns, iface) = match s.vantage {
        Vantage::Origin => (&lab.origin, ORIGIN_IF),
        Vantage::Container => (&lab.container, CONTAINER_IF),
    };
    let args: Vec<&str> = s.extra.iter().chain(args).copied().collect();
    let tracer = Tracer::diagnose_on(ns, iface, s.ports, &window, &args, env);
    let t_ready = started.elapsed().as_secs_f64();
    (s.traffic)(&lab);
    let t_traffic = started.elapsed().as_secs_f64();
    let stderr = tracer.stderr_text();
    // The window, then the report: 20 s, or in a slow guest (TCG under load, where the
    // tracer's start may take TRACER_READY_SECS too) as long as a start may.
    let slack = std::env::var("TRACER_READY_SECS")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(20)
        .max(20);
    let (code, out) = tracer.wait(Duration::from_secs(WINDOW_SECS + slack));
    let t_report = started.elapsed().as_secs_f64();
    drop(keep);
    drop(lab);
    if std::env::var_os("LAB_PHASES").is_some() {
        eprintln!("PHASES {}: lab {t_lab:.1} setup {t_setup:.1} ready {t_ready:.1} traffic {t_traffic:.1} report {t_report:.1} end {:.1}", s.name, started.elapsed().as_secs_f64());
    }
    let report: Value = serde_json::from_str(&out).unwrap_or_else(|e| {
        panic!("diagnose (exit {code}) stdout is not one JSON document ({e}): {out}{stderr}")
    });
    (code, report, started.elapsed().as_secs_f64())
}
