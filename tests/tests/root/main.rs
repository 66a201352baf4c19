//! The root integration tests: one binary, one module per area. Each test makes its own lab
//! (network namespaces removed on drop, even on failure) and starts the real tracer in it.
//! `cargo xtask test` runs them one at a time (`--test-threads=1`): the labs share addresses
//! and the kernel's tracepoints see them all. A module runs alone by its name as the filter
//! (`cargo test -p integration-tests --test root -- containers::`).

mod agent;
mod bad_input;
mod coexist;
mod containers;
mod deploy;
mod diagnose;
mod docker;
mod events;
mod field;
mod hardening;
mod hostile;
mod journal;
mod lost_replies;
mod packages;
mod ranges;
mod service;
mod timing;
mod tls;
mod tunnel;
mod web;
mod xdp;
