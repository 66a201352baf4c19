//! Host utilities any stage may use: interfaces and their counters (`netinfo`), the kernel asked
//! over netlink (`netlink`: routes, sockets), files written
//! as root without following planted links (`safe_fs`), systemd's notify and journal
//! (`service`), a timer that wakes once at its deadline (`timer`).

pub mod netinfo;
pub mod netlink;
pub mod safe_fs;
pub mod service;
pub mod timer;
