//! The maps userspace writes and reads: the watched ports, the edge ranges (bitmaps and LPM
//! tries, swapped without a gap), the ring and SYN log handed to the capture, the counters.

use super::*;

impl Probe {
    pub(super) fn set_ports(&mut self, ports: &[u16]) -> Result<()> {
        let mut words = vec![0u64; PORT_BITMAP_WORDS as usize];
        for &p in ports {
            words[usize::from(p >> 6)] |= 1u64 << (p & 63);
        }
        let mut map: Array<&mut MapData, u64> = Array::try_from(
            self.ebpf
                .map_mut("PORTS")
                .ok_or_else(|| anyhow!("PORTS map missing"))?,
        )?;
        for (i, w) in words.iter().enumerate() {
            if *w != 0 {
                map.set(i as u32, w, 0)?;
            }
        }
        Ok(())
    }

    /// The processes whose outgoing connections the kernel follows (a tunnel's `cloudflared`,
    /// by thread group id): added ones first, then gone ones removed, then the count the
    /// state-change program checks first.
    pub fn set_dialers(&mut self, tgids: &[u32]) -> Result<()> {
        let wanted: std::collections::BTreeSet<u32> = tgids
            .iter()
            .copied()
            .take(tracer_common::DIALERS_MAX as usize)
            .collect();
        let mut map: aya::maps::HashMap<&mut MapData, u32, u8> = aya::maps::HashMap::try_from(
            self.ebpf
                .map_mut("DIALERS")
                .ok_or_else(|| anyhow!("DIALERS map missing"))?,
        )?;
        let present: Vec<u32> = map.keys().filter_map(|k| k.ok()).collect();
        for t in &wanted {
            map.insert(t, 1, 0).context("updating DIALERS")?;
        }
        for t in present.iter().filter(|t| !wanted.contains(t)) {
            let _ = map.remove(t);
        }
        let mut on: Array<&mut MapData, u32> = Array::try_from(
            self.ebpf
                .map_mut("DIALERS_ON")
                .ok_or_else(|| anyhow!("DIALERS_ON map missing"))?,
        )?;
        on.set(0, wanted.len() as u32, 0)
            .context("updating DIALERS_ON")?;
        Ok(())
    }

    /// Which edge connections the exchange timing follows from now on.
    pub fn set_exchange_sample(&mut self, sample: tracer_common::ExchangeSample) -> Result<()> {
        let mut map: Array<&mut MapData, tracer_common::ExchangeSample> = Array::try_from(
            self.ebpf
                .map_mut("EXCHANGE_SAMPLE")
                .ok_or_else(|| anyhow!("EXCHANGE_SAMPLE map missing"))?,
        )?;
        map.set(0, sample, 0).context("updating EXCHANGE_SAMPLE")
    }

    /// Replaces the watched ranges in place: new entries first, then stale ones removed, so a
    /// peer inside both lists never stops matching and nothing is detached.
    pub fn set_ranges(&mut self, ranges: &RangeSet) -> Result<()> {
        // Sizes first: nothing reaches the kernel that it cannot hold.
        crate::ranges::validate::check_counts(ranges.v4.len(), ranges.v6.len())?;
        // While the trie changes, the bitmaps admit old and new ranges; then exactly the new.
        let (full, part) = ranges.slash24_v4();
        let v6 = ranges.prefilter_v6();
        let union = |a: &SparseBits, b: &SparseBits| {
            let mut u = a.clone();
            for (k, w) in b {
                *u.entry(*k).or_default() |= w;
            }
            u
        };
        let (old_full, old_part) = self.bitmaps.0.clone();
        let union6: Vec<u64> = v6.iter().zip(&self.bitmaps.1).map(|(a, b)| a | b).collect();
        self.write_sparse(
            "EDGE_V4_FULL24",
            &union(&full, &old_full),
            &SparseBits::new(),
        )?;
        self.write_sparse(
            "EDGE_V4_PART24",
            &union(&part, &old_part),
            &SparseBits::new(),
        )?;
        self.write_words("EDGE_V6_PREFILTER", &union6)?;
        if let Err(e) = self.update_tries(ranges) {
            // The tries kept the old list: so do the bitmaps.
            let old6 = self.bitmaps.1.clone();
            let _ = self.write_sparse("EDGE_V4_FULL24", &old_full, &union(&full, &old_full));
            let _ = self.write_sparse("EDGE_V4_PART24", &old_part, &union(&part, &old_part));
            let _ = self.write_words("EDGE_V6_PREFILTER", &old6);
            return Err(e);
        }
        self.write_sparse("EDGE_V4_FULL24", &full, &old_full)?;
        self.write_sparse("EDGE_V4_PART24", &part, &old_part)?;
        self.write_words("EDGE_V6_PREFILTER", &v6)?;
        self.bitmaps = ((full, part), v6);
        Ok(())
    }

    /// Writes the words of `bits`, and zeroes the words of `previous` that `bits` lacks.
    fn write_sparse(&mut self, name: &str, bits: &SparseBits, previous: &SparseBits) -> Result<()> {
        let mut map: Array<&mut MapData, u64> = Array::try_from(
            self.ebpf
                .map_mut(name)
                .ok_or_else(|| anyhow!("{name} map missing"))?,
        )?;
        for (i, w) in bits {
            map.set(*i, w, 0)
                .with_context(|| format!("updating {name}"))?;
        }
        for i in previous.keys().filter(|i| !bits.contains_key(i)) {
            map.set(*i, 0, 0)
                .with_context(|| format!("updating {name}"))?;
        }
        Ok(())
    }

    fn write_words(&mut self, name: &str, words: &[u64]) -> Result<()> {
        let mut map: Array<&mut MapData, u64> = Array::try_from(
            self.ebpf
                .map_mut(name)
                .ok_or_else(|| anyhow!("{name} map missing"))?,
        )?;
        for (i, w) in words.iter().enumerate() {
            map.set(i as u32, w, 0)
                .with_context(|| format!("updating {name}"))?;
        }
        Ok(())
    }

    /// Both tries to `ranges`, all or nothing across the families: every new entry of both is
    /// added first; if one cannot be (a table full), the entries added to either are taken out
    /// again and both keep the old list. Only then are stale entries removed.
    fn update_tries(&mut self, ranges: &RangeSet) -> Result<()> {
        let v4: Vec<Key<Ipv4Key>> = ranges
            .v4
            .iter()
            .map(|n| Key::new(u32::from(n.prefix_len()), n.network().octets()))
            .collect();
        let v6: Vec<Key<Ipv6Key>> = ranges
            .v6
            .iter()
            .map(|n| Key::new(u32::from(n.prefix_len()), n.network().octets()))
            .collect();
        let added4 = add_new::<Ipv4Key>(&mut self.ebpf, "EDGE_V4", &v4, None)?;
        // Tests only: the IPv6 update fails halfway, as a full table would make it.
        let fail_at = crate::environment::get()
            .fail_ipv6_update
            .then_some(v6.len() / 2);
        if let Err(e) = add_new::<Ipv6Key>(&mut self.ebpf, "EDGE_V6", &v6, fail_at) {
            remove_keys::<Ipv4Key>(&mut self.ebpf, "EDGE_V4", &added4);
            return Err(e);
        }
        remove_stale::<Ipv4Key>(&mut self.ebpf, "EDGE_V4", &v4)?;
        remove_stale::<Ipv6Key>(&mut self.ebpf, "EDGE_V6", &v6)
    }

    /// The event ring buffer; call once.
    pub fn take_ring(&mut self) -> Result<RingBuf<MapData>> {
        let map = self
            .ebpf
            .take_map("EVENTS")
            .ok_or_else(|| anyhow!("EVENTS ring buffer already taken"))?;
        Ok(RingBuf::try_from(map)?)
    }

    /// The SYN log, mapped; call once.
    pub fn take_syn_log(&mut self) -> Result<synlog::SynLog> {
        let mut take = |name: &str| {
            self.ebpf
                .take_map(name)
                .ok_or_else(|| anyhow!("{name} map already taken"))
        };
        let (records, cursors) = (take("SYN_LOG")?, take("SYN_CURSORS")?);
        synlog::SynLog::new(records, cursors, self.syn_log.0, self.syn_log.1)
    }

    /// Refused edge SYNs by port (summed over CPUs), counted in the kernel.
    pub fn refused_by_port(&self) -> std::collections::BTreeMap<u16, u64> {
        let Some(map) = self.ebpf.map("EDGE_REFUSED_BY_PORT") else {
            return Default::default();
        };
        let Ok(map) = aya::maps::PerCpuHashMap::<&MapData, u16, u64>::try_from(map) else {
            return Default::default();
        };
        map.iter()
            .filter_map(Result::ok)
            .map(|(port, per_cpu)| (port, per_cpu.iter().sum()))
            .collect()
    }

    /// The exchange table (`FLOWS`), mapped once for the capture's reads.
    pub fn take_flow_table(&mut self) -> Result<flow_table::FlowTable> {
        use tracer_common::{FlowSlot, EXCHANGE_FLOWS};
        let Some(aya::maps::Map::Array(data)) = self.ebpf.map("FLOWS") else {
            return Err(anyhow!("FLOWS map missing"));
        };
        let slots = EXCHANGE_FLOWS as usize;
        flow_table::FlowTable::new(data, slots)
            .with_context(|| format!("mapping FLOWS ({} bytes)", slots * size_of::<FlowSlot>()))
    }

    /// Sums of the per-CPU counters, indexed by `tracer_common::counter`.
    /// One of the kernel's counters, summed over CPUs (one syscall).
    pub fn counter(&self, index: u32) -> Result<u64> {
        Ok(self.counters_map()?.get(&index, 0)?.iter().sum())
    }

    /// Every counter, summed over CPUs (one syscall each).
    pub fn counters(&self) -> Result<[u64; counter::COUNT as usize]> {
        let map = self.counters_map()?;
        let mut out = [0u64; counter::COUNT as usize];
        for (i, slot) in out.iter_mut().enumerate() {
            *slot = map.get(&(i as u32), 0)?.iter().sum();
        }
        Ok(out)
    }

    fn counters_map(&self) -> Result<PerCpuArray<&MapData, u64>> {
        Ok(PerCpuArray::try_from(
            self.ebpf
                .map("COUNTERS")
                .ok_or_else(|| anyhow!("COUNTERS map missing"))?,
        )?)
    }
}

fn trie<'a, K: aya::Pod>(
    ebpf: &'a mut Ebpf,
    name: &str,
) -> Result<LpmTrie<&'a mut MapData, K, u8>> {
    Ok(LpmTrie::try_from(
        ebpf.map_mut(name)
            .ok_or_else(|| anyhow!("{name} map missing"))?,
    )?)
}

fn same<K: aya::Pod + PartialEq>(a: &Key<K>, b: &Key<K>) -> bool {
    a.prefix_len() == b.prefix_len() && a.data() == b.data()
}

/// Adds the entries of `wanted` an LPM trie lacks, returning them; if one cannot be added,
/// the ones added are taken out again (the trie holds exactly what it held) and it fails.
/// Adding before removing keeps a peer inside both the old and the new list matching.
fn add_new<K: aya::Pod + PartialEq>(
    ebpf: &mut Ebpf,
    name: &str,
    wanted: &[Key<K>],
    fail_at: Option<usize>,
) -> Result<Vec<Key<K>>> {
    let mut trie = trie::<K>(ebpf, name)?;
    let before: Vec<Key<K>> = trie.keys().filter_map(Result::ok).collect();
    // An injected failure is for updates, not the first fill at start.
    let fail_at = fail_at.filter(|_| !before.is_empty());
    let mut added: Vec<Key<K>> = Vec::new();
    for k in wanted {
        if before.iter().any(|b| same(b, k)) {
            continue;
        }
        let inserted = if fail_at == Some(added.len()) {
            Err(anyhow!(
                "a failure injected by TRACER_TEST_FAIL_IPV6_UPDATE"
            ))
        } else {
            trie.insert(k, 1, 0).map_err(anyhow::Error::from)
        };
        if let Err(e) = inserted {
            for a in &added {
                let _ = trie.remove(a);
            }
            return Err(e).with_context(|| format!("updating {name}"));
        }
        added.push(Key::new(k.prefix_len(), k.data()));
    }
    Ok(added)
}

/// Takes `keys` out of a trie again (undoing [`add_new`]).
fn remove_keys<K: aya::Pod + PartialEq>(ebpf: &mut Ebpf, name: &str, keys: &[Key<K>]) {
    if let Ok(mut trie) = trie::<K>(ebpf, name) {
        for k in keys {
            let _ = trie.remove(k);
        }
    }
}

/// Removes the entries not in `wanted`.
fn remove_stale<K: aya::Pod + PartialEq>(
    ebpf: &mut Ebpf,
    name: &str,
    wanted: &[Key<K>],
) -> Result<()> {
    let mut trie = trie::<K>(ebpf, name)?;
    let before: Vec<Key<K>> = trie.keys().filter_map(Result::ok).collect();
    for k in before.iter().filter(|k| !wanted.iter().any(|w| same(w, k))) {
        trie.remove(k).with_context(|| format!("updating {name}"))?;
    }
    Ok(())
}

pub(super) fn empty_bitmaps() -> ((SparseBits, SparseBits), Vec<u64>) {
    (
        (SparseBits::new(), SparseBits::new()),
        vec![0; tracer_common::PREFILTER_WORDS as usize],
    )
}
