//! Timing in the verdict: handshakes that completed only after a retransmission are evidence
//! of the window's verdict (the 522 that is not a hard failure yet: each retransmission costs
//! the edge a second or more of its 19 s connect budget).

use crate::correlate::timing::Timing;

/// The evidence line for handshakes that needed a retransmission, if any did.
pub fn retransmitted_handshakes(t: &Timing) -> Option<String> {
    let n = t.after_syn_retransmits.max(t.after_synack_retransmits);
    if n == 0 || t.handshake.count == 0 {
        return None;
    }
    Some(format!(
        "{} of {} edge handshakes completed only after a retransmission ({} after the edge sent its SYN again, {} after the origin sent its SYN-ACK again; the slowest took {:.0} ms): each costs Cloudflare a second or more of its 19 s connect budget (522 when it runs out) — lost SYN-ACKs or a queue that was full for a moment",
        n,
        t.handshake.count,
        t.after_syn_retransmits,
        t.after_synack_retransmits,
        t.handshake.max_ms
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::correlate::timing::Summary;

    #[test]
    fn only_retransmitted_handshakes_are_evidence() {
        let mut t = Timing {
            handshake: Summary {
                count: 6,
                p50_ms: 0.5,
                p99_ms: 1010.0,
                max_ms: 1003.4,
            },
            after_syn_retransmits: 0,
            after_synack_retransmits: 3,
        };
        let line = retransmitted_handshakes(&t).unwrap();
        assert!(line.starts_with("3 of 6 edge handshakes"), "{line}");
        assert!(line.contains("the slowest took 1003 ms"), "{line}");
        t.after_synack_retransmits = 0;
        assert_eq!(retransmitted_handshakes(&t), None);
    }
}
