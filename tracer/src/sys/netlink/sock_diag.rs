//! TCP sockets of this namespace over NETLINK_SOCK_DIAG (netlink-packet-sock-diag builds the
//! inet_diag request and reads the answers): the listeners, the connections of waiting
//! requests.

use std::io;

use netlink_packet_sock_diag::{
    inet::{ExtensionFlags, InetRequest, InetResponse, SocketId, StateFlags},
    SockDiagMessage,
};

/// Every TCP socket of both families in one of `states`.
pub fn tcp_sockets(states: StateFlags) -> io::Result<Vec<InetResponse>> {
    let mut out = Vec::new();
    for v6 in [false, true] {
        let request = InetRequest {
            family: if v6 { libc::AF_INET6 } else { libc::AF_INET } as u8,
            protocol: libc::IPPROTO_TCP as u8,
            extensions: ExtensionFlags::empty(),
            states: states.clone(),
            socket_id: if v6 {
                SocketId::new_v6()
            } else {
                SocketId::new_v4()
            },
        };
        let answers = super::ask(
            netlink_sys::protocols::NETLINK_SOCK_DIAG,
            SockDiagMessage::InetRequest(request),
            super::Answer::Dump,
        )?;
        out.extend(answers.into_iter().filter_map(|m| match m {
            SockDiagMessage::InetResponse(r) => Some(*r),
            _ => None,
        }));
    }
    Ok(out)
}
