//! The origin's own state, read from its network namespace: what listens, what the kernel
//! counted, what the firewall says.

pub mod counters;
pub mod firewall;
pub mod listeners;
