//! The order of the kernel's two streams: every ring record has a position (bytes reserved
//! before it), and every SYN record carries the ring's producer position when the SYN
//! arrived. A SYN goes after the ring events that start below its position and before the
//! rest. A SYN whose position the reader has not reached yet waits for the next drain: the
//! ring events reserved before it are still being written.

use tracer_common::SynRecord;

/// Bytes a ring record of `len` bytes occupies: an 8-byte header, rounded up to 8 (the BPF
/// ring buffer's ABI, `BPF_RINGBUF_HDR_SZ`).
pub(super) fn ring_record_bytes(len: usize) -> u64 {
    (8 + len).next_multiple_of(8) as u64
}

/// Sorts SYN records by ring position, keeping log order among equals (one CPU's records are
/// already in order; records of different CPUs with no ring event between them are
/// concurrent, and the tick is the best guess).
pub(super) fn sort_by_ring_pos(syns: &mut [SynRecord]) {
    syns.sort_by_key(|r| (r.ring_pos, r.jiffies));
}

/// Sorts the held SYNs and returns how many can go now: those whose preceding ring events have
/// all been read (`ring_pos` not beyond the reader's position).
pub(super) fn ready_syns(syns: &mut [SynRecord], read_up_to: u64) -> usize {
    sort_by_ring_pos(syns);
    syns.partition_point(|r| r.ring_pos <= read_up_to)
}

/// One record of the merged streams.
pub(super) enum Merged<'a, R, S> {
    Ring(&'a R),
    Syn(&'a S),
}

/// Merges ring records (ascending positions) with SYN records (ascending producer positions),
/// handing each to `each` in order: a SYN goes after the ring records starting below its
/// position, before the rest.
pub(super) fn merge_by_ring_pos<'a, R, S: RingPos>(
    ring: &'a [(u64, R)],
    syns: &'a [S],
    mut each: impl FnMut(Merged<'a, R, S>),
) {
    let mut ring = ring.iter().peekable();
    for syn in syns {
        while let Some((_, r)) = ring.next_if(|(pos, _)| *pos < syn.ring_pos()) {
            each(Merged::Ring(r));
        }
        each(Merged::Syn(syn));
    }
    ring.for_each(|(_, r)| each(Merged::Ring(r)));
}

/// Where a SYN stood in the ring when it arrived.
pub(super) trait RingPos {
    fn ring_pos(&self) -> u64;
}

impl RingPos for SynRecord {
    fn ring_pos(&self) -> u64 {
        self.ring_pos
    }
}

#[cfg(test)]
mod tests {
    use tracer_common::Event as RawEvent;

    use super::*;

    fn syn(ring_pos: u64, jiffies: u64) -> SynRecord {
        SynRecord {
            jiffies,
            ring_pos,
            peer_addr: [0; 16],
            local_addr: [0; 16],
            peer_port: 0,
            local_port: 0,
            seq: 0,
            _pad: 0,
            family: 4,
            tcp_flags: 2,
            flags: 0,
        }
    }

    #[test]
    fn ring_records_take_a_header_and_round_up_to_8() {
        assert_eq!(ring_record_bytes(size_of::<RawEvent>()), 88);
        assert_eq!(ring_record_bytes(1), 16);
        assert_eq!(ring_record_bytes(8), 16);
    }

    impl RingPos for (u64, &'static str) {
        fn ring_pos(&self) -> u64 {
            self.0
        }
    }

    fn merged(ring: &[(u64, &'static str)], syns: &[(u64, &'static str)]) -> Vec<&'static str> {
        let mut out = vec![];
        merge_by_ring_pos(ring, syns, |item| {
            out.push(match item {
                Merged::Ring(r) => *r,
                Merged::Syn(s) => s.1,
            })
        });
        out
    }

    #[test]
    fn a_syn_goes_after_ring_events_reserved_before_it() {
        // Ring: closed@0, established@88, closed@176. The SYN arrived when the producer stood at
        // 88: after the first close, before the rest (a port reused at once).
        let ring = [
            (0, "closed-old"),
            (88, "established-new"),
            (176, "closed-new"),
        ];
        assert_eq!(
            merged(&ring, &[(88, "syn-new")]),
            ["closed-old", "syn-new", "established-new", "closed-new"]
        );
    }

    #[test]
    fn syns_before_and_after_every_ring_event() {
        assert_eq!(
            merged(&[(0, "a"), (88, "b")], &[(0, "s0"), (0, "s1"), (176, "s2")]),
            ["s0", "s1", "a", "b", "s2"]
        );
    }

    #[test]
    fn syns_ahead_of_the_reader_wait() {
        let mut held = vec![syn(176, 3), syn(0, 5), syn(88, 1), syn(264, 0)];
        let ready = ready_syns(&mut held, 176);
        assert_eq!(ready, 3);
        let order: Vec<u64> = held.iter().map(|r| r.ring_pos).collect();
        assert_eq!(order, [0, 88, 176, 264]);
    }

    #[test]
    fn equal_positions_keep_the_tick_order() {
        let mut held = vec![syn(88, 9), syn(88, 2), syn(0, 7)];
        assert_eq!(ready_syns(&mut held, 88), 3);
        let ts: Vec<u64> = held.iter().map(|r| r.jiffies).collect();
        assert_eq!(ts, [7, 2, 9]);
    }
}
