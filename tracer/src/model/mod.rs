//! The typed internal events every stage shares: each kernel record decoded once
//! (`decode` → `event`), what became of an attempt (`outcome`), and the clocks that date them.

pub mod clock;
pub mod decode;
pub mod dial;
pub mod event;
pub mod exchange;
pub mod outcome;
