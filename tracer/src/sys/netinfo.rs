//! Facts about this network namespace's interfaces and routes.

use anyhow::{bail, Result};

/// Interface names in this namespace, from /sys/class/net (falls back to /proc/net/dev).
pub fn interface_names() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_to_string("/proc/net/dev")
        .unwrap_or_default()
        .lines()
        .skip(2)
        .filter_map(|l| l.split(':').next())
        .map(|n| n.trim().to_string())
        .filter(|n| !n.is_empty())
        .collect();
    names.sort();
    names
}

/// The XDP program attached to the interface now, as the kernel names it: "id 6584
/// (xdp_syn)". Asked over netlink (the link's IFLA_XDP) and the bpf syscall (its name); `None`
/// when there is none or the kernel cannot say.
pub fn xdp_holder(iface: &str) -> Option<String> {
    let id = super::netlink::xdp_program_id(iface).ok()??;
    let name = aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .find(|p| p.id() == id)
        .and_then(|p| p.name_as_str().map(String::from));
    Some(holder_text(id, name.as_deref()))
}

fn holder_text(id: u32, name: Option<&str>) -> String {
    match name {
        Some(name) if !name.is_empty() => format!("id {id} ({name})"),
        _ => format!("id {id}"),
    }
}

/// The interface's driver name (ethtool ETHTOOL_GDRVINFO), e.g. "veth", "virtio_net".
pub fn driver_name(iface: &str) -> Option<String> {
    const SIOCETHTOOL: libc::c_ulong = 0x8946;
    const ETHTOOL_GDRVINFO: u32 = 0x3;
    #[repr(C)]
    struct DrvInfo {
        cmd: u32,
        driver: [u8; 32],
        rest: [u8; 160],
    }
    #[repr(C)]
    struct IfReq {
        name: [u8; 16],
        data: *mut DrvInfo,
        _pad: [u8; 16],
    }
    let mut info = DrvInfo {
        cmd: ETHTOOL_GDRVINFO,
        driver: [0; 32],
        rest: [0; 160],
    };
    let mut req = IfReq {
        name: [0; 16],
        data: &mut info,
        _pad: [0; 16],
    };
    let bytes = iface.as_bytes();
    if bytes.len() >= 16 {
        return None;
    }
    req.name[..bytes.len()].copy_from_slice(bytes);
    // SAFETY: a datagram socket for the ioctl, closed right after; buffers outlive the call.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return None;
        }
        let rc = libc::ioctl(fd, SIOCETHTOOL as _, &mut req);
        libc::close(fd);
        if rc != 0 {
            return None;
        }
    }
    let end = info.driver.iter().position(|b| *b == 0).unwrap_or(32);
    Some(String::from_utf8_lossy(&info.driver[..end]).into_owned())
}

/// Packets received by the interface so far (its own statistics, no per-packet cost to us).
pub fn rx_packets(iface: &str) -> u64 {
    std::fs::read_to_string(format!("/sys/class/net/{iface}/statistics/rx_packets"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// The interface holding the IPv4 default route, from `/proc/net/route` text.
pub fn default_route_iface_v4(route_table: &str) -> Option<String> {
    route_table.lines().skip(1).find_map(|l| {
        let cols: Vec<&str> = l.split_whitespace().collect();
        (cols.len() > 7 && cols[1] == "00000000" && cols[7] == "00000000")
            .then(|| cols[0].to_string())
    })
}

/// The interface holding the IPv6 default route, from `/proc/net/ipv6_route` text.
pub fn default_route_iface_v6(route_table: &str) -> Option<String> {
    route_table.lines().find_map(|l| {
        let cols: Vec<&str> = l.split_whitespace().collect();
        (cols.len() == 10
            && cols[0] == "00000000000000000000000000000000"
            && cols[1] == "00"
            && cols[9] != "lo")
            .then(|| cols[9].to_string())
    })
}

/// The interface to watch when none is given: the default route's; without a default route, the
/// only non-loopback interface.
pub fn default_interface() -> Result<String> {
    let v4 = std::fs::read_to_string("/proc/net/route").unwrap_or_default();
    if let Some(i) = default_route_iface_v4(&v4) {
        return Ok(i);
    }
    let v6 = std::fs::read_to_string("/proc/net/ipv6_route").unwrap_or_default();
    if let Some(i) = default_route_iface_v6(&v6) {
        return Ok(i);
    }
    let others: Vec<String> = interface_names()
        .into_iter()
        .filter(|n| n != "lo")
        .collect();
    match others.as_slice() {
        [only] => Ok(only.clone()),
        [] => bail!("no network interface besides lo: pass --iface"),
        many => bail!(
            "no default route to pick an interface from: pass --iface (one of: {})",
            many.join(", ")
        ),
    }
}

/// The addresses of `iface` (IPv4 first), from getifaddrs.
pub fn addresses(iface: &str) -> Vec<std::net::IpAddr> {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    let mut out = Vec::new();
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills a list we free below; each entry is read while it lives.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return out;
    }
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: cur is a node of the list getifaddrs returned.
        let ifa = unsafe { &*cur };
        cur = ifa.ifa_next;
        if ifa.ifa_addr.is_null() || ifa.ifa_name.is_null() {
            continue;
        }
        // SAFETY: ifa_name is a NUL-terminated string owned by the list.
        let name = unsafe { std::ffi::CStr::from_ptr(ifa.ifa_name) };
        if name.to_bytes() != iface.as_bytes() {
            continue;
        }
        // SAFETY: sa_family says which sockaddr this is.
        match i32::from(unsafe { (*ifa.ifa_addr).sa_family }) {
            libc::AF_INET => {
                // SAFETY: an AF_INET address is a sockaddr_in.
                let sin = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
                out.push(IpAddr::V4(Ipv4Addr::from(u32::from_be(
                    sin.sin_addr.s_addr,
                ))));
            }
            libc::AF_INET6 => {
                // SAFETY: an AF_INET6 address is a sockaddr_in6.
                let sin6 = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in6) };
                let a = Ipv6Addr::from(sin6.sin6_addr.s6_addr);
                if !a.is_unicast_link_local() {
                    out.push(IpAddr::V6(a));
                }
            }
            _ => {}
        }
    }
    // SAFETY: head came from getifaddrs.
    unsafe { libc::freeifaddrs(head) };
    out.sort_by_key(|a| a.is_ipv6());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_xdp_holder() {
        assert_eq!(holder_text(6584, Some("xdp_syn")), "id 6584 (xdp_syn)");
        assert_eq!(holder_text(6584, None), "id 6584");
        // lo never has one, and a missing interface is no holder.
        assert_eq!(xdp_holder("lo"), None);
        assert_eq!(xdp_holder("no-such-if0"), None);
    }

    #[test]
    fn finds_default_routes() {
        let v4 =
            "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
                  eth0\t0002000A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
                  eth1\t00000000\t0102000A\t0003\t0\t0\t0\t00000000\t0\t0\t0\n";
        assert_eq!(default_route_iface_v4(v4).as_deref(), Some("eth1"));
        assert_eq!(default_route_iface_v4("Iface\tDestination\n"), None);
        let v6 = "00000000000000000000000000000000 00 00000000000000000000000000000000 00 fe800000000000000000000000000001 00000400 00000001 00000000 00000003 ens5\n";
        assert_eq!(default_route_iface_v6(v6).as_deref(), Some("ens5"));
    }
}
