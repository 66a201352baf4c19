//! Other network namespaces the host forwards edge connections to (containers): found by
//! inode, named by a process in them and its container, and entered to read their listeners.

use std::{
    fs::File,
    net::IpAddr,
    os::{fd::AsRawFd as _, unix::fs::MetadataExt as _},
    path::{Path, PathBuf},
};

use super::{
    listeners::{self, Listener},
    processes::{container_id, inode_of, short_id, task_namespaces, tasks},
};

/// Where bind mounts of named namespaces live: `ip netns` and Docker.
const NAMED_NAMESPACE_DIRS: [&str; 2] = ["/run/netns", "/var/run/docker/netns"];

/// A network namespace, as far as it could be found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Namespace {
    pub inode: u32,
    /// A file that refers to it (a task's `ns/net` or a bind mount), to enter it by.
    pub path: Option<PathBuf>,
    /// A process in it, and its name.
    pub pid: Option<u32>,
    pub comm: Option<String>,
    /// The container the process belongs to, from its cgroup.
    pub container: Option<String>,
}

impl Namespace {
    /// Finds the namespace with this inode: named ones first, then the tasks in /proc.
    /// `None` when nothing refers to it any more (the container stopped) — or nothing the
    /// tracer may look at does ([`Namespace::lookup`] tells the two apart).
    pub fn find(inode: u32) -> Option<Namespace> {
        Namespace::lookup(inode).ok()
    }

    /// [`Namespace::find`], or why not in one line: it went away, or the processes that
    /// could show it were hidden from the tracer (their `/proc/PID/ns` needs CAP_SYS_PTRACE
    /// when they hold capabilities the tracer lacks — every container's do).
    pub fn lookup(inode: u32) -> Result<Namespace, Unseen> {
        let mut found = Namespace {
            inode,
            ..Namespace::default()
        };
        for dir in NAMED_NAMESPACE_DIRS {
            let Ok(entries) = std::fs::read_dir(dir) else {
                continue;
            };
            for entry in entries.flatten() {
                if inode_of(&entry.path()) == Some(inode) {
                    found.path = Some(entry.path());
                    break;
                }
            }
        }
        let (task, hidden) = find_task(inode);
        if let Some((pid, path)) = task {
            found.path.get_or_insert(path);
            found.pid = Some(pid);
            found.comm = std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .ok()
                .map(|c| c.trim().to_string());
            found.container = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
                .ok()
                .and_then(|text| container_id(&text));
        }
        if found.path.is_some() {
            return Ok(found);
        }
        // Hidden matters only when a capability would show them: with CAP_SYS_PTRACE, what
        // is still unreadable (a sandbox's own init) is not where a container lives.
        let hidden = if crate::kernel::privileges::sees_all_processes() {
            0
        } else {
            hidden
        };
        Err(if hidden > 0 {
            Unseen::Hidden { inode, hidden }
        } else {
            Unseen::Gone { inode }
        })
    }

    /// The namespace where `addr` is a local address (the container a DNAT target lives in),
    /// other than the tracer's own. Through a process in it, its local addresses are read
    /// without entering it (`/proc/PID/net`); a named namespace with no process is entered
    /// and the address bound there, which only succeeds where it is local.
    pub fn holding(addr: IpAddr, own: u32) -> Option<Namespace> {
        let mut tried = vec![own];
        // Tasks' namespaces first: readable without CAP_SYS_ADMIN.
        for (pid, path) in task_namespaces() {
            let Some(inode) = inode_of(&path).filter(|i| !tried.contains(i)) else {
                continue;
            };
            tried.push(inode);
            if super::proc_net::is_local(pid, addr) == Some(true) {
                return Namespace::find(inode);
            }
        }
        for dir in NAMED_NAMESPACE_DIRS {
            let Ok(entries) = std::fs::read_dir(dir) else {
                continue;
            };
            for path in entries.flatten().map(|e| e.path()) {
                let Some(inode) = inode_of(&path).filter(|i| !tried.contains(i)) else {
                    continue;
                };
                tried.push(inode);
                let local = in_namespace(&path, move || binds_only_its_own(addr));
                if local == Ok(true) {
                    return Namespace::find(inode);
                }
            }
        }
        None
    }

    /// Its listening sockets: read from inside it (sock_diag gives the backlogs), else —
    /// without CAP_SYS_ADMIN, or where setns is filtered — through a process in it.
    pub fn listeners(&self) -> Result<Vec<Listener>, String> {
        let inode = self.inode;
        let entered = match &self.path {
            Some(path) => in_namespace(path, listeners::read),
            None => Err(format!("nothing refers to netns:[{inode}]")),
        };
        let mut all = match (entered, self.pid) {
            (Ok(all), _) => all,
            (Err(_), Some(pid)) => super::proc_net::listeners_of(pid)?,
            (Err(e), None) if !crate::kernel::privileges::sees_all_processes() => {
                return Err(format!(
                    "{e}: the tracer may neither enter it (CAP_SYS_ADMIN) nor see the processes in it (CAP_SYS_PTRACE, which the packaged unit and the DaemonSet grant)"
                ))
            }
            (Err(e), None) => {
                return Err(format!(
                    "{e}: entering another namespace needs CAP_SYS_ADMIN, and no process in it shows its sockets through /proc"
                ))
            }
        };
        for l in &mut all {
            l.netns = Some(inode);
        }
        Ok(all)
    }

    /// "container 3f2a9c4b1d2e" or "namespace netns:[4026532...] (pid 812 nginx)".
    pub fn describe(&self) -> String {
        if let Some(c) = &self.container {
            return format!("container {}", short_id(c));
        }
        match (self.pid, &self.comm) {
            (Some(pid), Some(comm)) => {
                format!("namespace netns:[{}] (pid {pid} {comm})", self.inode)
            }
            _ => format!("namespace netns:[{}]", self.inode),
        }
    }
}

/// Why a namespace was not found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unseen {
    /// Nothing refers to it any more: the container stopped.
    Gone { inode: u32 },
    /// Processes were hidden from the tracer (their namespaces need CAP_SYS_PTRACE to see).
    Hidden { inode: u32, hidden: usize },
}

impl std::fmt::Display for Unseen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Gone { inode } => write!(f, "namespace netns:[{inode}] went away (container stopped?)"),
            Self::Hidden { inode, hidden } => write!(
                f,
                "namespace netns:[{inode}] could not be looked at: {hidden} processes were hidden from the tracer (it needs CAP_SYS_PTRACE to see the namespaces of processes holding capabilities it lacks, as every container's do)"
            ),
        }
    }
}

/// A namespace other than the tracer's where the kernel did something to an edge connection
/// (dropped its answer), as the report names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Place {
    /// "the host's network namespace netns:[4026531840]", "container 3f2a9c4b1d2e
    /// (netns:[…])", "network namespace web1 (netns:[…])".
    pub text: String,
    /// How to run a command there: `nsenter --net=/proc/1/ns/net`.
    pub enter: Option<String>,
    pub namespace: Option<Namespace>,
}

impl Place {
    /// Names the namespace with this inode: the host's (pid 1's), a container's, a named one.
    pub fn of(inode: u32) -> Place {
        let ns = match Namespace::lookup(inode) {
            Ok(ns) => ns,
            Err(why) => {
                return Place {
                    text: format!("network namespace netns:[{inode}] ({why})"),
                    enter: None,
                    namespace: None,
                }
            }
        };
        let host = inode_of(Path::new("/proc/1/ns/net")) == Some(inode);
        let named = ns.path.as_ref().filter(|p| {
            NAMED_NAMESPACE_DIRS
                .iter()
                .any(|d| p.parent() == Some(Path::new(d)))
        });
        let text = if host {
            format!("the host's network namespace netns:[{inode}] (pid 1's)")
        } else if let Some(c) = &ns.container {
            format!("container {} (netns:[{inode}])", short_id(c))
        } else if let Some(name) = named.and_then(|p| p.file_name()) {
            format!(
                "network namespace {} (netns:[{inode}])",
                name.to_string_lossy()
            )
        } else {
            ns.describe()
        };
        let enter = if host {
            Some("nsenter --net=/proc/1/ns/net".to_string())
        } else {
            ns.path
                .as_ref()
                .map(|p| format!("nsenter --net={}", p.display()))
        };
        Place {
            text,
            enter,
            namespace: Some(ns),
        }
    }
}

impl Namespace {
    /// Its nftables ruleset, read from inside it (entering needs CAP_SYS_ADMIN).
    pub fn ruleset(&self) -> Result<super::firewall::Ruleset, String> {
        let path = self
            .path
            .clone()
            .ok_or_else(|| format!("nothing refers to netns:[{}]", self.inode))?;
        in_namespace(&path, super::firewall::Ruleset::read)
            .map_err(|e| {
                format!(
                    "{e}: reading another namespace's ruleset means entering it, which needs CAP_SYS_ADMIN (the packaged unit does not grant it; add it with `systemctl edit cf521-tracer`: CapabilityBoundingSet= and AmbientCapabilities= with CAP_SYS_ADMIN, RestrictNamespaces=net)"
                )
            })?
    }
}

/// True when this namespace can bind `addr` and could not bind just any address: with
/// `ip_nonlocal_bind=1` (keepalived and HAProxy hosts) or no local routes at all (a bare
/// namespace), every bind succeeds and proves nothing. The canaries are addresses no origin
/// holds (benchmarking and discard-only prefixes).
fn binds_only_its_own(addr: IpAddr) -> bool {
    let binds = |a: IpAddr| std::net::TcpListener::bind(std::net::SocketAddr::new(a, 0)).is_ok();
    let canary: IpAddr = match addr {
        IpAddr::V4(_) => std::net::Ipv4Addr::new(198, 19, 255, 254).into(),
        IpAddr::V6(_) => std::net::Ipv6Addr::new(0x100, 0, 0, 0, 0, 0, 0, 0xfe).into(),
    };
    binds(addr) && !binds(canary)
}

/// A task (thread) in the namespace: its process id and its `ns/net` path; and how many
/// tasks' namespaces the tracer was not allowed to look at.
fn find_task(inode: u32) -> (Option<(u32, PathBuf)>, usize) {
    let mut hidden = 0;
    for (pid, task) in tasks() {
        let ns = task.join("ns/net");
        match std::fs::metadata(&ns) {
            Ok(m) if u32::try_from(m.ino()).ok() == Some(inode) => {
                return (Some((pid, ns)), hidden)
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => hidden += 1,
            Err(_) => {}
        }
    }
    (None, hidden)
}

/// Runs `f` on a thread that joined the namespace at `path`; the caller's threads stay put.
fn in_namespace<T: Send + 'static>(
    path: &Path,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, String> {
    let file = File::open(path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    let shown = path.display().to_string();
    std::thread::spawn(move || {
        // SAFETY: a valid namespace fd; only this short-lived thread changes namespace.
        if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(format!(
                "cannot enter {shown}: {}",
                std::io::Error::last_os_error()
            ));
        }
        Ok(f())
    })
    .join()
    .map_err(|_| "namespace reader panicked".to_string())?
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "3f2a9c4b1d2e8f70aa11bb22cc33dd44ee55ff6600112233445566778899aabb";

    #[test]
    fn describes_by_container_or_process() {
        let mut ns = Namespace {
            inode: 4026532999,
            pid: Some(812),
            comm: Some("nginx".into()),
            ..Namespace::default()
        };
        assert_eq!(
            ns.describe(),
            "namespace netns:[4026532999] (pid 812 nginx)"
        );
        ns.container = Some(ID.into());
        assert_eq!(ns.describe(), "container 3f2a9c4b1d2e");
    }

    #[test]
    fn this_namespace_is_found_through_this_process() {
        let inode = inode_of(Path::new("/proc/self/ns/net")).unwrap();
        let ns = Namespace::find(inode).expect("own namespace");
        assert!(ns.path.is_some() && ns.pid.is_some());
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let listeners = ns.listeners().unwrap();
        assert!(listeners
            .iter()
            .any(|x| x.port == port && x.netns == Some(inode)));
    }

    #[test]
    fn the_namespace_holding_an_address() {
        // Loopback is local in every namespace, this one included: excluded as our own, any
        // other answer is a namespace that has it too; a documentation address is nowhere.
        let own = inode_of(Path::new("/proc/self/ns/net")).unwrap();
        assert_eq!(
            Namespace::holding("192.0.2.222".parse().unwrap(), own),
            None
        );
    }

    #[test]
    fn a_namespace_nothing_refers_to_is_gone() {
        assert_eq!(Namespace::find(1), None);
    }
}
