//! Crafted Ethernet frames for the XDP parser checks and the XDP benchmark.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub const SYN: u8 = 0x02;
pub const ACK: u8 = 0x10;
pub const RST: u8 = 0x04;

/// A TCP frame description; `build` turns it into bytes.
#[derive(Clone)]
pub struct Frame {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub sport: u16,
    pub dport: u16,
    pub flags: u8,
    pub seq: u32,
    /// 802.1Q / 802.1ad tags to insert (their ethertypes).
    pub vlans: Vec<u16>,
    /// IPv4 fragment field (flags + offset), e.g. 0x2000 for MF.
    pub frag: u16,
    /// Extra IPv4 option bytes (multiple of 4).
    pub ip_options: usize,
    /// IPv6: insert a fragment extension header.
    pub v6_fragment: bool,
    /// IP protocol (6 = TCP).
    pub proto: u8,
}

impl Frame {
    pub fn syn(src: &str, dst: &str, dport: u16) -> Frame {
        Frame {
            src: src.parse().unwrap(),
            dst: dst.parse().unwrap(),
            sport: 40000,
            dport,
            flags: SYN,
            seq: 0x1234_5678,
            vlans: vec![],
            frag: 0x4000, // DF
            ip_options: 0,
            v6_fragment: false,
            proto: 6,
        }
    }

    pub fn build(&self) -> Vec<u8> {
        let mut f = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
        for tpid in &self.vlans {
            f.extend_from_slice(&tpid.to_be_bytes());
            f.extend_from_slice(&[0x00, 0x64]); // VLAN 100
        }
        let mut tcp = Vec::with_capacity(20);
        tcp.extend_from_slice(&self.sport.to_be_bytes());
        tcp.extend_from_slice(&self.dport.to_be_bytes());
        tcp.extend_from_slice(&self.seq.to_be_bytes());
        tcp.extend_from_slice(&0u32.to_be_bytes());
        tcp.extend_from_slice(&[0x50, self.flags, 0xff, 0xff, 0, 0, 0, 0]);
        match (self.src, self.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                f.extend_from_slice(&0x0800u16.to_be_bytes());
                f.extend_from_slice(&ipv4(
                    s,
                    d,
                    self.proto,
                    self.frag,
                    self.ip_options,
                    tcp.len(),
                ));
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                f.extend_from_slice(&0x86ddu16.to_be_bytes());
                f.extend_from_slice(&ipv6(s, d, self.proto, self.v6_fragment, tcp.len()));
            }
            _ => panic!("mixed families"),
        }
        f.extend_from_slice(&tcp);
        f
    }

    pub fn hex(&self) -> String {
        hex(&self.build())
    }
}

fn ipv4(s: Ipv4Addr, d: Ipv4Addr, proto: u8, frag: u16, options: usize, payload: usize) -> Vec<u8> {
    let ihl = 5 + options / 4;
    let total = (ihl * 4 + payload) as u16;
    let mut h = vec![(4 << 4) | ihl as u8, 0];
    h.extend_from_slice(&total.to_be_bytes());
    h.extend_from_slice(&[0, 1]);
    h.extend_from_slice(&frag.to_be_bytes());
    h.extend_from_slice(&[64, proto, 0, 0]);
    h.extend_from_slice(&s.octets());
    h.extend_from_slice(&d.octets());
    h.extend(std::iter::repeat_n(1u8, options)); // NOPs
    h
}

fn ipv6(s: Ipv6Addr, d: Ipv6Addr, proto: u8, fragment: bool, payload: usize) -> Vec<u8> {
    let ext = if fragment { 8 } else { 0 };
    let mut h = vec![0x60, 0, 0, 0];
    h.extend_from_slice(&((payload + ext) as u16).to_be_bytes());
    h.push(if fragment { 44 } else { proto });
    h.push(64);
    h.extend_from_slice(&s.octets());
    h.extend_from_slice(&d.octets());
    if fragment {
        h.extend_from_slice(&[proto, 0, 0, 1, 0, 0, 0, 7]); // offset 0, M=1
    }
    h
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A non-TCP frame: UDP/53 over IPv4.
pub fn udp() -> Frame {
    Frame {
        proto: 17,
        ..Frame::syn("173.245.48.10", "192.0.2.1", 443)
    }
}

/// An ARP request (not IP at all).
pub fn arp() -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 2, 0x08, 0x06]);
    f.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&[
        0x02, 0, 0, 0, 0, 2, 192, 0, 2, 10, 0, 0, 0, 0, 0, 0, 192, 0, 2, 1,
    ]);
    f
}
