//! The exchange table (`FLOWS`), mapped read-only once: userspace reads the edge requests
//! still waiting for their first response byte from it without a system call.
//!
//! The table is 3 MiB; reading all of it at every pass (twice a second while the capture
//! looks at slow requests) streamed it through the caches of a host busy serving. The kernel
//! counts the requests it begins ([`counter::REQUESTS_BEGUN`], after the slot says so): while
//! that count stands, only the slots found waiting at the last whole pass can be waiting now,
//! and only they are read again.

use std::{
    cell::RefCell,
    time::{Duration, Instant},
};

use anyhow::Result;
use aya::maps::MapData;
use tracer_common::{ArrivalKey, FlowSlot, FlowState, PHASE_REQUEST};

use super::synlog::Mapping;

/// A whole pass at least this often whatever the count says: on CPUs that order stores
/// weakly the count may be seen before the slot it follows, and a request missed so is
/// found by the next whole pass.
const WHOLE_PASS_EVERY: Duration = Duration::from_secs(10);

/// Which slots a pass reads.
#[derive(Debug, PartialEq, Eq)]
pub enum Pass {
    /// Every slot.
    Whole,
    /// Only these (the ones found waiting by the last pass).
    Only(Vec<u32>),
}

/// What the last passes found, and when to read the whole table again.
#[derive(Debug, Default)]
pub struct PassPlan {
    /// The kernel's count of requests begun when the last whole pass started, and when.
    whole: Option<(u64, Instant)>,
    /// Slots found waiting by the last pass.
    found: Vec<u32>,
}

impl PassPlan {
    /// The pass to make now, `begun` being the kernel's count read just before (None when
    /// unreadable: a whole pass).
    pub fn plan(&self, begun: Option<u64>, now: Instant) -> Pass {
        match (self.whole, begun) {
            (Some((at_count, at)), Some(count))
                if count == at_count && now.duration_since(at) < WHOLE_PASS_EVERY =>
            {
                Pass::Only(self.found.clone())
            }
            _ => Pass::Whole,
        }
    }

    /// Records what the pass `pass`, planned with `begun` at `now`, found waiting.
    pub fn record(&mut self, pass: &Pass, begun: Option<u64>, now: Instant, found: Vec<u32>) {
        if *pass == Pass::Whole {
            self.whole = begun.map(|count| (count, now));
        }
        self.found = found;
    }
}

/// The mapped table.
pub struct FlowTable {
    slots: Mapping,
    len: usize,
    plan: RefCell<PassPlan>,
}

// SAFETY: a read-only mapping, owned, only read through `&self` with volatile copies; the
// plan is only touched by the thread that owns the table.
unsafe impl Send for FlowTable {}

impl FlowTable {
    pub(super) fn new(data: &MapData, len: usize) -> Result<Self> {
        Ok(Self {
            slots: Mapping::of(data, len * size_of::<FlowSlot>(), false)?,
            len,
            plan: RefCell::new(PassPlan::default()),
        })
    }

    /// Followed edge connections whose request is still waiting for its first response byte
    /// (phase request). `begun`: the kernel's count of requests begun, read just before;
    /// `epoch`: the sample's in force (a slot of an earlier one is no longer kept).
    pub fn waiting(&self, begun: Option<u64>, epoch: u32) -> Vec<(ArrivalKey, FlowState)> {
        let now = Instant::now();
        let mut plan = self.plan.borrow_mut();
        let pass = plan.plan(begun, now);
        let mut found = Vec::new();
        let mut out = Vec::new();
        let mut read = |i: u32| {
            if let Some(slot) = self.slot(i) {
                if slot.key.family != 0 && slot.epoch == epoch && slot.state.phase == PHASE_REQUEST
                {
                    found.push(i);
                    out.push((slot.key, slot.state));
                }
            }
        };
        match &pass {
            Pass::Whole => (0..self.len as u32).for_each(&mut read),
            Pass::Only(slots) => slots.iter().copied().for_each(&mut read),
        }
        plan.record(&pass, begun, now, found);
        out
    }

    /// A copy of slot `i`, taken whole before any field is looked at: the kernel may be
    /// writing it (a torn copy is one odd entry).
    fn slot(&self, i: u32) -> Option<FlowSlot> {
        if i as usize >= self.len {
            return None;
        }
        let table = self.slots.ptr.as_ptr().cast::<FlowSlot>().cast_const();
        // SAFETY: `i` < the slots mapped.
        Some(unsafe { std::ptr::read_volatile(table.add(i as usize)) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Recorded: a whole pass finds slots 7 and 9 waiting; while the count stands only they
    /// are read (and what that pass finds is what the next reads); a new request, an
    /// unreadable count or ten seconds make a whole pass again.
    #[test]
    fn the_whole_table_is_read_only_when_a_request_may_have_begun() {
        let t0 = Instant::now();
        let mut plan = PassPlan::default();
        assert_eq!(plan.plan(Some(3), t0), Pass::Whole, "nothing read yet");
        plan.record(&Pass::Whole, Some(3), t0, vec![7, 9]);

        let t1 = t0 + Duration::from_millis(500);
        let pass = plan.plan(Some(3), t1);
        assert_eq!(pass, Pass::Only(vec![7, 9]));
        // Slot 7's response began meanwhile.
        plan.record(&pass, Some(3), t1, vec![9]);
        assert_eq!(
            plan.plan(Some(3), t0 + Duration::from_secs(1)),
            Pass::Only(vec![9])
        );

        assert_eq!(plan.plan(Some(4), t1), Pass::Whole, "a request began");
        assert_eq!(plan.plan(None, t1), Pass::Whole, "count unreadable");
        assert_eq!(
            plan.plan(Some(3), t0 + WHOLE_PASS_EVERY),
            Pass::Whole,
            "ten seconds since the last whole pass"
        );
    }

    /// A pass found nothing waiting: until a request begins, the next reads no slot at all.
    #[test]
    fn an_idle_table_is_not_read() {
        let t0 = Instant::now();
        let mut plan = PassPlan::default();
        plan.record(&Pass::Whole, Some(0), t0, Vec::new());
        assert_eq!(
            plan.plan(Some(0), t0 + Duration::from_secs(2)),
            Pass::Only(Vec::new())
        );
        // An unreadable count at a whole pass leaves no basis for skipping the next.
        plan.record(&Pass::Whole, None, t0, Vec::new());
        assert_eq!(plan.plan(Some(0), t0), Pass::Whole);
    }
}
