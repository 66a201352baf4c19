//! A stand-in for Cloudflare Tunnel's `cloudflared`. The real one cannot be installed here
//! (no registry this machine reaches ships it), so tests use a process that is named
//! `cloudflared` and dials the way it does: its origin request to the service's address
//! (`localhost:PORT` resolves to `::1` first, and the field failures name only that address),
//! one connection per request, and a long-lived connection to the edge on port 7844 (the
//! HTTP/2 transport; QUIC's UDP socket is not connected and shows no peer either way). What
//! the tracer sees of it — a process by that name, its connect() calls and the kernel's
//! answers — is what it sees of the real one.

use std::{
    mem::{size_of, zeroed},
    net::SocketAddr,
    time::Duration,
};

use crate::Netns;

/// A running stand-in; killed on drop.
pub struct StandIn {
    pid: libc::pid_t,
}

/// How often a request comes through the tunnel (a dial to the service each time).
const EVERY: Duration = Duration::from_millis(200);
/// The stand-in ends by itself after this long, should its owner never drop it.
const LIFETIME: Duration = Duration::from_secs(90);

fn sockaddr(a: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: all-zero is a valid sockaddr_storage.
    let mut ss: libc::sockaddr_storage = unsafe { zeroed() };
    match a {
        SocketAddr::V4(v4) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: v4.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(v4.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_in fits in sockaddr_storage.
            unsafe { std::ptr::write(&mut ss as *mut _ as *mut libc::sockaddr_in, sin) };
            (ss, size_of::<libc::sockaddr_in>() as libc::socklen_t)
        }
        SocketAddr::V6(v6) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: v6.port().to_be(),
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr {
                    s6_addr: v6.ip().octets(),
                },
                sin6_scope_id: 0,
            };
            // SAFETY: sockaddr_in6 fits in sockaddr_storage.
            unsafe { std::ptr::write(&mut ss as *mut _ as *mut libc::sockaddr_in6, sin6) };
            (ss, size_of::<libc::sockaddr_in6>() as libc::socklen_t)
        }
    }
}

/// A TCP connect with a one-second limit: the descriptor when it connected, else -1 (the
/// socket closed). Raw system calls only: this runs in a forked child of a threaded process.
fn dial(target: &(libc::sockaddr_storage, libc::socklen_t)) -> libc::c_int {
    // SAFETY: plain system calls on a socket this function owns.
    unsafe {
        let fd = libc::socket(libc::c_int::from(target.0.ss_family), libc::SOCK_STREAM, 0);
        if fd < 0 {
            return -1;
        }
        let limit = libc::timeval {
            tv_sec: 1,
            tv_usec: 0,
        };
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_SNDTIMEO,
            &limit as *const _ as *const libc::c_void,
            size_of::<libc::timeval>() as libc::socklen_t,
        );
        if libc::connect(fd, &target.0 as *const _ as *const libc::sockaddr, target.1) == 0 {
            fd
        } else {
            libc::close(fd);
            -1
        }
    }
}

impl StandIn {
    /// Starts it in `ns`: every 200 ms it dials each of `services` (and closes the
    /// connection); while `edge` is given it holds one connection to it, dialling again a
    /// second after each failure.
    pub fn start(ns: &Netns, services: &[SocketAddr], edge: Option<SocketAddr>) -> StandIn {
        Self::named(c"cloudflared", ns, services, edge)
    }

    /// [`StandIn::start`] under another process name (a renamed binary).
    pub fn named(
        name: &'static std::ffi::CStr,
        ns: &Netns,
        services: &[SocketAddr],
        edge: Option<SocketAddr>,
    ) -> StandIn {
        Self::spawn(name, ns, services, edge.map(|e| (e, false)))
    }

    /// [`StandIn::start`] with QUIC to the edge, cloudflared's default transport: one UDP
    /// socket, not connected (as quic-go's), sending a datagram to `edge` each round.
    pub fn quic(ns: &Netns, services: &[SocketAddr], edge: SocketAddr) -> StandIn {
        Self::spawn(c"cloudflared", ns, services, Some((edge, true)))
    }

    fn spawn(
        name: &'static std::ffi::CStr,
        ns: &Netns,
        services: &[SocketAddr],
        edge: Option<(SocketAddr, bool)>,
    ) -> StandIn {
        let services: Vec<_> = services.iter().map(|a| sockaddr(*a)).collect();
        let quic = edge.is_some_and(|(_, quic)| quic);
        let edge = edge.map(|(e, _)| sockaddr(e));
        let pid = ns.enter(move || {
            // SAFETY: the child only makes system calls on data prepared before the fork
            // (no allocation, no lock another thread may hold), then _exits.
            unsafe {
                let pid = libc::fork();
                if pid != 0 {
                    return pid;
                }
                libc::prctl(libc::PR_SET_NAME, name.as_ptr() as libc::c_ulong, 0, 0, 0);
                let rounds = LIFETIME.as_millis() / EVERY.as_millis();
                let mut edge_fd = -1;
                let mut edge_wait = 0u32;
                let pause = libc::timespec {
                    tv_sec: 0,
                    tv_nsec: EVERY.as_nanos() as libc::c_long,
                };
                for _ in 0..rounds {
                    if let (Some(e), true) = (&edge, quic) {
                        if edge_fd < 0 {
                            edge_fd =
                                libc::socket(libc::c_int::from(e.0.ss_family), libc::SOCK_DGRAM, 0);
                        }
                        libc::sendto(
                            edge_fd,
                            b"q".as_ptr() as *const libc::c_void,
                            1,
                            0,
                            &e.0 as *const _ as *const libc::sockaddr,
                            e.1,
                        );
                    } else if let Some(e) = &edge {
                        if edge_fd < 0 && edge_wait == 0 {
                            edge_fd = dial(e);
                            edge_wait = 5;
                        }
                        edge_wait = edge_wait.saturating_sub(1);
                    }
                    for s in &services {
                        let fd = dial(s);
                        if fd >= 0 {
                            libc::close(fd);
                        }
                    }
                    libc::nanosleep(&pause, std::ptr::null_mut());
                }
                libc::_exit(0);
            }
        });
        assert!(pid > 0, "fork: {}", std::io::Error::last_os_error());
        // Named before it returns: the tracer looks for it by name at its start.
        let comm = format!("/proc/{pid}/comm");
        let want = name.to_str().expect("UTF-8 name");
        for _ in 0..100 {
            if std::fs::read_to_string(&comm).is_ok_and(|c| c.trim() == want) {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        StandIn { pid }
    }

    pub fn pid(&self) -> u32 {
        self.pid as u32
    }
}

impl Drop for StandIn {
    fn drop(&mut self) {
        // SAFETY: our own child; reaped here.
        unsafe {
            libc::kill(self.pid, libc::SIGKILL);
            libc::waitpid(self.pid, std::ptr::null_mut(), 0);
        }
    }
}
