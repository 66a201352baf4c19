//! The per-CPU SYN log, read through mmap. XDP appends one [`SynRecord`] per SYN to its CPU's
//! part of `SYN_LOG` and advances that CPU's `written` cursor; we copy what lies between `read`
//! and `written`, then advance `read`. No system call per drain, no lock shared by CPUs.

use std::{
    fs,
    ptr::NonNull,
    sync::atomic::{fence, Ordering},
};

use anyhow::{anyhow, Context as _, Result};
use aya::maps::{Map, MapData};
use std::os::fd::{AsFd as _, AsRawFd as _};
use tracer_common::{SynCursor, SynRecord};

/// Smallest and largest part of the log per CPU, in records.
const MIN_SLOTS: u32 = 1 << 10;
const MAX_SLOTS: u32 = 1 << 20;

/// Records per CPU for a log of about `bytes` in all: a power of two, so the kernel indexes
/// with a mask.
pub fn slots_per_cpu(bytes: u32, cpus: u32) -> u32 {
    let per_cpu = bytes as usize / cpus.max(1) as usize / size_of::<SynRecord>();
    let per_cpu = per_cpu.clamp(MIN_SLOTS as usize, MAX_SLOTS as usize) as u32;
    // Largest power of two not above it.
    1 << (31 - per_cpu.leading_zeros())
}

/// Highest possible CPU number plus one (`bpf_get_smp_processor_id()` stays below it).
pub fn possible_cpus() -> Result<u32> {
    let text = fs::read_to_string("/sys/devices/system/cpu/possible")
        .context("reading /sys/devices/system/cpu/possible")?;
    parse_possible(&text)
        .ok_or_else(|| anyhow!("cannot parse /sys/devices/system/cpu/possible: {text:?}"))
}

fn parse_possible(text: &str) -> Option<u32> {
    let mut max = None;
    for part in text.trim().split(',') {
        let last = part.rsplit('-').next()?.trim().parse::<u32>().ok()?;
        max = max.max(Some(last));
    }
    max.map(|m| m + 1)
}

/// A shared mapping of an mmapable array map's values. The mapping holds the map itself (the
/// kernel counts it), so it outlives the file descriptor it was made from.
pub(super) struct Mapping {
    pub(super) ptr: NonNull<u8>,
    len: usize,
}

impl Mapping {
    fn new(map: Map, bytes: usize, writable: bool) -> Result<Self> {
        let Map::Array(data) = map else {
            return Err(anyhow!("SYN log map is not an array"));
        };
        Self::of(&data, bytes, writable)
    }

    /// Maps the first `bytes` of the array map `data`'s values.
    pub(super) fn of(data: &MapData, bytes: usize, writable: bool) -> Result<Self> {
        let page = 4096usize.max(unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize);
        let len = bytes.div_ceil(page) * page;
        let prot = libc::PROT_READ | if writable { libc::PROT_WRITE } else { 0 };
        // SAFETY: a fresh shared mapping of the map's value area; unmapped on drop.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                prot,
                libc::MAP_SHARED,
                data.fd().as_fd().as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(anyhow!(
                "cannot map an event table: {}",
                std::io::Error::last_os_error()
            ));
        }
        Ok(Self {
            ptr: NonNull::new(ptr.cast()).ok_or_else(|| anyhow!("mmap returned null"))?,
            len,
        })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: mapped in `of` with this length.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

pub struct SynLog {
    records: Mapping,
    cursors: Mapping,
    cpus: usize,
    slots: usize,
}

// SAFETY: the mappings are owned and only touched through `&mut self`.
unsafe impl Send for SynLog {}

impl SynLog {
    pub fn new(records: Map, cursors: Map, cpus: u32, slots: u32) -> Result<Self> {
        let (cpus, slots) = (cpus as usize, slots as usize);
        Ok(Self {
            records: Mapping::new(records, cpus * slots * size_of::<SynRecord>(), false)?,
            cursors: Mapping::new(cursors, cpus * size_of::<SynCursor>(), true)?,
            cpus,
            slots,
        })
    }

    /// Hands every record written since the last call to `each`, CPU by CPU in write order;
    /// returns how many.
    pub fn drain(&mut self, mut each: impl FnMut(&SynRecord)) -> usize {
        let cursors = self.cursors.ptr.as_ptr().cast::<SynCursor>();
        let records = self.records.ptr.as_ptr().cast::<SynRecord>().cast_const();
        let mut total = 0;
        for cpu in 0..self.cpus {
            // SAFETY: `cpu` < cpus, inside the mapping; the kernel writes `written` and the
            // records, we write `read`: volatile accesses, ordered by the fences.
            unsafe {
                let cursor = cursors.add(cpu);
                let written = std::ptr::read_volatile(&raw const (*cursor).written);
                fence(Ordering::Acquire);
                let mut read = std::ptr::read_volatile(&raw const (*cursor).read);
                if written.wrapping_sub(read) > self.slots as u64 {
                    // Cannot happen with a kernel that respects `read`; resynchronise.
                    read = written;
                }
                while read != written {
                    let slot = cpu * self.slots + (read as usize & (self.slots - 1));
                    let record = std::ptr::read_volatile(records.add(slot));
                    each(&record);
                    read = read.wrapping_add(1);
                    total += 1;
                }
                // The records are copied before the kernel may reuse their slots.
                fence(Ordering::Release);
                std::ptr::write_volatile(&raw mut (*cursor).read, read);
            }
        }
        total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_a_power_of_two_within_bounds() {
        assert_eq!(slots_per_cpu(8 << 20, 2), 65536);
        assert_eq!(slots_per_cpu(4 << 20, 2), 32768);
        assert_eq!(slots_per_cpu(4 << 20, 256), MIN_SLOTS);
        assert_eq!(slots_per_cpu(u32::MAX, 1), MAX_SLOTS);
        assert_eq!(slots_per_cpu(100_000, 1), 1024);
    }

    #[test]
    fn possible_cpu_lists() {
        assert_eq!(parse_possible("0-1\n"), Some(2));
        assert_eq!(parse_possible("0"), Some(1));
        assert_eq!(parse_possible("0-3,8-11"), Some(12));
        assert_eq!(parse_possible("x"), None);
    }
}
