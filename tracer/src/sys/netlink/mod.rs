//! Asking the kernel over netlink, in this thread's network namespace: one request and its
//! answer (or a dump's parts), with the messages built and read by the rust-netlink crates
//! (netlink-packet-route, netlink-packet-sock-diag) rather than by hand. Routes are asked
//! here as `ip route get` and `ip route show table all` ask them — the kernel decides, policy
//! rules included — without depending on `ip` being installed.
//!
//! `route` asks for routes, `link` for what is attached to an interface (XDP, clsact filters),
//! `sock_diag` for TCP sockets.

mod link;
mod route;
mod sock_diag;

pub use link::{clsact_bpf_filters, delete_clsact_filter, xdp_program_id, BpfFilter};
#[cfg(test)]
pub use route::listed;
pub use route::{ip_of, route_get, routes_listed, ListedRoute, RouteAnswer, RouteKind, MAIN_TABLE};
pub use sock_diag::tcp_sockets;

use std::{fmt::Debug, io, os::fd::AsRawFd as _, time::Duration};

use netlink_packet_core::{
    NetlinkDeserializable, NetlinkHeader, NetlinkMessage, NetlinkPayload, NetlinkSerializable,
    NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST,
};
use netlink_sys::{Socket, SocketAddr};

/// How long the kernel may take to answer (it answers at once; this only bounds a wait that
/// should never happen).
const ANSWER_TIME: Duration = Duration::from_secs(2);
/// A dump larger than this is refused rather than held: a host carrying a full BGP table is
/// not one whose routes this tool lists.
pub const MAX_PARTS: usize = 200_000;

/// What a request expects back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    /// One message (a get).
    One,
    /// Many, ended by Done (a dump).
    Dump,
    /// Only the kernel's acknowledgement (a change: add, delete).
    Ack,
}

/// One request; every inner message of the answer. A dump ends at its Done; a get at its first
/// answer; a change at its acknowledgement. The kernel's error is returned as the errno it
/// carries.
pub fn ask<M>(protocol: isize, message: M, answer: Answer) -> io::Result<Vec<M>>
where
    M: NetlinkSerializable + NetlinkDeserializable + Debug,
    NetlinkPayload<M>: From<M>,
{
    let dump = answer == Answer::Dump;
    let mut socket = Socket::new(protocol)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    set_receive_timeout(&socket, ANSWER_TIME)?;
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST
        | match answer {
            Answer::One => 0,
            Answer::Dump => NLM_F_DUMP,
            Answer::Ack => NLM_F_ACK,
        };
    header.sequence_number = 1;
    let mut packet = NetlinkMessage::new(header, NetlinkPayload::from(message));
    packet.finalize();
    let mut buf = vec![0; packet.buffer_len()];
    packet.serialize(&mut buf);
    socket.send(&buf, 0)?;

    let mut out = Vec::new();
    let mut datagram = vec![0u8; 64 * 1024];
    loop {
        let n = socket.recv(&mut &mut datagram[..], 0)?;
        let mut rest = &datagram[..n];
        while !rest.is_empty() {
            let m = NetlinkMessage::<M>::deserialize(rest)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
            let len = (m.header.length as usize).next_multiple_of(4);
            match m.payload {
                NetlinkPayload::Done(_) => return Ok(out),
                NetlinkPayload::Error(e) if e.code.is_some() => return Err(e.to_io()),
                NetlinkPayload::InnerMessage(inner) => {
                    if out.len() >= MAX_PARTS {
                        return Err(io::Error::other(format!(
                            "the kernel's answer has more than {MAX_PARTS} parts"
                        )));
                    }
                    out.push(inner);
                    if !dump {
                        return Ok(out);
                    }
                }
                // An acknowledgement (error 0), a no-op or an overrun notice.
                _ if !dump => return Ok(out),
                _ => {}
            }
            if len == 0 || len >= rest.len() {
                break;
            }
            rest = &rest[len..];
        }
    }
}

fn set_receive_timeout(socket: &Socket, t: Duration) -> io::Result<()> {
    let tv = libc::timeval {
        tv_sec: t.as_secs() as libc::time_t,
        tv_usec: libc::suseconds_t::from(t.subsec_micros() as i32),
    };
    // SAFETY: setsockopt with a timeval of the size given, on a socket we own.
    let r = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
/// An interface's name by index, in this namespace (None once it is gone).
pub fn interface_name(index: u32) -> Option<String> {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: if_indextoname writes at most IF_NAMESIZE bytes, NUL included, into buf.
    let p = unsafe { libc::if_indextoname(index, buf.as_mut_ptr()) };
    if p.is_null() {
        return None;
    }
    // SAFETY: on success buf holds a NUL-terminated name.
    let name = unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) };
    Some(name.to_string_lossy().into_owned())
}
/// An interface's index by name, in this namespace (ENODEV once it is gone).
pub fn interface_index(iface: &str) -> io::Result<u32> {
    let name = std::ffi::CString::new(iface)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a NUL in an interface name"))?;
    // SAFETY: if_nametoindex reads a NUL-terminated string.
    match unsafe { libc::if_nametoindex(name.as_ptr()) } {
        0 => Err(io::Error::last_os_error()),
        i => Ok(i),
    }
}
