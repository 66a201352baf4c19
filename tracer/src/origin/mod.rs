//! The origin's own state, read from its network namespace and the namespaces it forwards
//! edge connections to: what listens, what the kernel counted, what the firewall says.

pub mod backends;
pub mod conntrack;
pub mod counters;
pub mod firewall;
pub mod listeners;
pub mod namespaces;
pub mod routes;
