//! Raw SYN floods from a lab namespace: crafted Ethernet/IPv4/TCP SYNs sent on an
//! AF_PACKET socket, as fast as the machine allows or paced. Used by the hardening tests and
//! the exactness benchmark.

use std::{
    net::Ipv4Addr,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

fn checksum(chunks: &[&[u8]]) -> u16 {
    let mut sum = 0u32;
    for c in chunks {
        let mut i = 0;
        while i + 1 < c.len() {
            sum += u32::from(u16::from_be_bytes([c[i], c[i + 1]]));
            i += 2;
        }
        if i < c.len() {
            sum += u32::from(c[i]) << 8;
        }
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An Ethernet/IPv4/TCP SYN with valid checksums.
pub fn syn_frame(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    sport: u16,
    dport: u16,
    seq: u32,
) -> Vec<u8> {
    let mut tcp = [0u8; 20];
    tcp[0..2].copy_from_slice(&sport.to_be_bytes());
    tcp[2..4].copy_from_slice(&dport.to_be_bytes());
    tcp[4..8].copy_from_slice(&seq.to_be_bytes());
    tcp[12] = 0x50;
    tcp[13] = 0x02;
    tcp[14..16].copy_from_slice(&64240u16.to_be_bytes());
    let mut pseudo = [0u8; 12];
    pseudo[0..4].copy_from_slice(&src.octets());
    pseudo[4..8].copy_from_slice(&dst.octets());
    pseudo[9] = 6;
    pseudo[10..12].copy_from_slice(&20u16.to_be_bytes());
    let c = checksum(&[&pseudo, &tcp]);
    tcp[16..18].copy_from_slice(&c.to_be_bytes());
    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&40u16.to_be_bytes());
    ip[6] = 0x40;
    ip[8] = 64;
    ip[9] = 6;
    ip[12..16].copy_from_slice(&src.octets());
    ip[16..20].copy_from_slice(&dst.octets());
    let c = checksum(&[&ip]);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let mut f = Vec::with_capacity(54);
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&[0x08, 0x00]);
    f.extend_from_slice(&ip);
    f.extend_from_slice(&tcp);
    f
}

pub fn mac_of(text: &str) -> Result<[u8; 6]> {
    let parts: Vec<u8> = text
        .trim()
        .split(':')
        .map(|p| u8::from_str_radix(p, 16))
        .collect::<Result<_, _>>()
        .context("bad MAC")?;
    parts
        .try_into()
        .map_err(|_| anyhow::anyhow!("bad MAC {text}"))
}

/// Sends `count` SYNs with distinct source ports (1024 + i) on `ifindex`, paced at `rate` per
/// second (0: as fast as possible). Must run in the namespace that owns the interface.
/// Returns the achieved rate.
pub fn syn_flood(
    ifindex: i32,
    frames: impl Fn(u32) -> Vec<u8>,
    count: u32,
    rate: u64,
) -> Result<f64> {
    // SAFETY: plain socket(2), owned at once.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        bail!("AF_PACKET socket: {}", std::io::Error::last_os_error());
    }
    // SAFETY: fresh fd.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_ifindex = ifindex;
    addr.sll_halen = 6;
    let all: Vec<Vec<u8>> = (0..count).map(&frames).collect();
    let start = Instant::now();
    for (i, f) in all.iter().enumerate() {
        if rate > 0 {
            let due = Duration::from_secs_f64(i as f64 / rate as f64);
            while start.elapsed() < due {
                std::hint::spin_loop();
            }
        }
        loop {
            // SAFETY: valid buffer and address.
            let n = unsafe {
                libc::sendto(
                    sock.as_raw_fd(),
                    f.as_ptr().cast(),
                    f.len(),
                    0,
                    (&addr as *const libc::sockaddr_ll).cast(),
                    size_of::<libc::sockaddr_ll>() as u32,
                )
            };
            if n >= 0 {
                break;
            }
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::ENOBUFS) {
                bail!("sendto: {e}");
            }
        }
    }
    Ok(f64::from(count) / start.elapsed().as_secs_f64())
}

/// One SYN of a flood: its source address and port, destination port and sequence number.
pub struct Syn {
    pub src: Ipv4Addr,
    pub sport: u16,
    pub dport: u16,
    pub seq: u32,
}

/// Floods the origin (`ORIGIN_V4` in namespace `origin`) from the edge namespace `edge` with
/// `count` SYNs, the `i`-th being `syn(i)`, at `rate` a second (0: as fast as the machine
/// sends); returns the rate achieved. Blocks until sent (run it on a thread to act meanwhile).
pub fn flood_origin(
    edge: &str,
    origin: &str,
    count: u32,
    rate: u64,
    syn: impl Fn(u32) -> Syn + Send + 'static,
) -> Result<f64> {
    let (edge, origin) = (
        crate::Netns {
            name: edge.to_string(),
        },
        crate::Netns {
            name: origin.to_string(),
        },
    );
    let read = |ns: &crate::Netns, what: &str| ns.sh(&format!("cat /sys/class/net/{what}"));
    let src_mac = mac_of(&read(&edge, &format!("{}/address", crate::EDGE_IF)))?;
    let dst_mac = mac_of(&read(&origin, &format!("{}/address", crate::ORIGIN_IF)))?;
    let ifindex: i32 = read(&edge, &format!("{}/ifindex", crate::EDGE_IF))
        .trim()
        .parse()
        .context("the edge's ifindex")?;
    let dst: Ipv4Addr = crate::ORIGIN_V4.parse()?;
    edge.enter(move || {
        syn_flood(
            ifindex,
            |i| {
                let s = syn(i);
                syn_frame(src_mac, dst_mac, s.src, dst, s.sport, s.dport, s.seq)
            },
            count,
            rate,
        )
    })
}
