//! The host's processes as /proc shows them: their tasks, the sockets they hold, the container
//! their cgroup names. Every walk is bounded, as a busy host has hundreds of thousands of
//! tasks and descriptors.

use std::{
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

/// Tasks looked at, at most, when searching /proc (a bound read on a busy host).
const MAX_TASKS: usize = 100_000;

/// Every process: (pid, its /proc directory).
fn processes() -> impl Iterator<Item = (u32, PathBuf)> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| Some((e.file_name().to_str()?.parse::<u32>().ok()?, e.path())))
}

/// File descriptors looked at, at most, when searching /proc for sockets' owners.
const MAX_FDS: usize = 200_000;

/// The processes holding these socket inodes: inode -> (pid, comm). One pass over /proc's
/// descriptors, bounded.
pub fn socket_owners(inodes: &[u64]) -> std::collections::HashMap<u64, (u32, String)> {
    let mut found = std::collections::HashMap::new();
    if inodes.is_empty() {
        return found;
    }
    let mut seen = 0;
    for (pid, dir) in processes() {
        let Ok(fds) = std::fs::read_dir(dir.join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            seen += 1;
            if seen > MAX_FDS || found.len() == inodes.len() {
                return found;
            }
            let Some(inode) = std::fs::read_link(fd.path())
                .ok()
                .and_then(|target| socket_inode(target.to_str()?))
            else {
                continue;
            };
            if inodes.contains(&inode) && !found.contains_key(&inode) {
                let comm = std::fs::read_to_string(format!("/proc/{pid}/comm"))
                    .map(|c| c.trim().to_string())
                    .unwrap_or_default();
                found.insert(inode, (pid, comm));
            }
        }
    }
    found
}

/// `socket:[12345]` -> 12345
fn socket_inode(link: &str) -> Option<u64> {
    link.strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// Every task (thread) of every process: (pid, `/proc/PID/task/TID`), at most `MAX_TASKS`.
pub fn tasks() -> impl Iterator<Item = (u32, PathBuf)> {
    processes()
        .flat_map(|(pid, dir)| {
            std::fs::read_dir(dir.join("task"))
                .into_iter()
                .flatten()
                .flatten()
                .map(move |task| (pid, task.path()))
        })
        .take(MAX_TASKS)
}

/// One task in each network namespace other than the tracer's own, as its /proc directory
/// (`/proc/PID/task/TID`, whose `net/` shows that namespace's tables): threads count, since a
/// namespace may have no process of its own, only a thread that joined it.
pub fn other_namespace_tasks() -> Vec<PathBuf> {
    let own = inode_of(Path::new("/proc/self/ns/net"));
    let mut seen = std::collections::HashSet::new();
    tasks()
        .filter_map(|(_, dir)| {
            let inode = inode_of(&dir.join("ns/net"))?;
            (Some(inode) != own && seen.insert(inode)).then_some(dir)
        })
        .collect()
}

/// One `(pid, ns/net path)` per process (its main thread's), bounded.
pub fn task_namespaces() -> Vec<(u32, PathBuf)> {
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    procs
        .flatten()
        .filter_map(|e| Some((e.file_name().to_str()?.parse::<u32>().ok()?, e.path())))
        .take(MAX_TASKS)
        .map(|(pid, dir)| (pid, dir.join("ns/net")))
        .collect()
}

/// The inode of the file at `path` (a namespace's, from its `ns/net`).
pub fn inode_of(path: &Path) -> Option<u32> {
    std::fs::metadata(path)
        .ok()
        .and_then(|m| u32::try_from(m.ino()).ok())
}

/// A container id as people see it: the first 12 characters.
pub fn short_id(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

/// The container id in a process's `/proc/PID/cgroup`: Docker (`docker-<id>.scope`,
/// `/docker/<id>`), Podman (`libpod-<id>.scope`), containerd/CRI-O (`cri-containerd-<id>`,
/// `crio-<id>`), or a Kubernetes pod UID (`kubepods…pod<uid>`) when no container id shows.
pub fn container_id(cgroup: &str) -> Option<String> {
    let is_id = |s: &str| s.len() >= 12 && s.chars().all(|c| c.is_ascii_hexdigit());
    let mut pod = None;
    for line in cgroup.lines() {
        let path = line.rsplit(':').next().unwrap_or(line);
        for part in path.split('/') {
            let part = part.trim_end_matches(".scope");
            for prefix in ["docker-", "libpod-", "cri-containerd-", "crio-", ""] {
                if let Some(id) = part.strip_prefix(prefix) {
                    if is_id(id) && id.len() >= 32 {
                        return Some(id.to_string());
                    }
                }
            }
            if let Some((_, rest)) = part
                .rsplit_once("pod")
                .filter(|_| part.starts_with("kubepods"))
            {
                let uid = rest.trim_end_matches(".slice").replace('_', "-");
                if uid.len() >= 32 {
                    pod = Some(format!("pod {uid}"));
                }
            }
        }
    }
    pod
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "3f2a9c4b1d2e8f70aa11bb22cc33dd44ee55ff6600112233445566778899aabb";

    #[test]
    fn container_ids_from_cgroups() {
        assert_eq!(
            container_id(&format!("0::/system.slice/docker-{ID}.scope\n")).as_deref(),
            Some(ID)
        );
        assert_eq!(
            container_id(&format!("12:pids:/docker/{ID}\n11:cpu:/docker/{ID}\n")).as_deref(),
            Some(ID)
        );
        assert_eq!(
            container_id(&format!("0::/machine.slice/libpod-{ID}.scope/container\n")).as_deref(),
            Some(ID)
        );
        assert_eq!(
            container_id(
                "0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1a2b3c4d_5e6f_7a8b_9c0d_1e2f3a4b5c6d.slice\n"
            )
            .as_deref(),
            Some("pod 1a2b3c4d-5e6f-7a8b-9c0d-1e2f3a4b5c6d")
        );
        assert_eq!(
            container_id("0::/user.slice/user-0.slice/session-3.scope\n"),
            None
        );
        assert_eq!(container_id(""), None);
    }

    #[test]
    fn a_sockets_owner_is_this_process() {
        assert_eq!(socket_inode("socket:[4026]"), Some(4026));
        assert_eq!(socket_inode("pipe:[4026]"), None);
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let me = crate::origin::listeners::read()
            .into_iter()
            .find(|x| x.port == port)
            .unwrap();
        let inode = me.inode.expect("sock_diag gives the inode");
        let owners = socket_owners(&[inode]);
        assert_eq!(owners.get(&inode).map(|o| o.0), Some(std::process::id()));
    }
}
