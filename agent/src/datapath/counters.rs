//! What the program counts: packets and bytes per interface, action and
//! reason, its own statistics, and the rate table's occupancy.
use rampart_common::abi::{COUNTER_ENTRIES, Counter, map_name, stat};

use super::{Datapath, DatapathError};
use crate::bpf_sys::{BPF_MAP_LOOKUP_BATCH, BatchAttr, bpf_cmd, map_err};

impl Datapath {
    /// Every counter, summed over CPUs, indexed like `abi::counter_index`.
    pub fn counters(&self) -> Result<Vec<Counter>, DatapathError> {
        if let Some(all) = self.counters_batched() {
            return Ok(all);
        }
        let mut out = vec![Counter::default(); COUNTER_ENTRIES as usize];
        for (i, per_cpu) in self.counters.iter().enumerate() {
            let per_cpu = per_cpu.map_err(map_err(map_name::COUNTERS))?;
            for c in per_cpu.iter() {
                out[i].packets += c.packets;
                out[i].bytes += c.bytes;
            }
        }
        Ok(out)
    }

    /// Every counter summed over CPUs with one BPF_MAP_LOOKUP_BATCH (a
    /// scrape reads thousands of per-CPU slots); None if the kernel refuses,
    /// and the caller reads them one by one.
    fn counters_batched(&self) -> Option<Vec<Counter>> {
        let cpus = aya::util::nr_cpus().ok()?;
        let n = COUNTER_ENTRIES as usize;
        let mut keys = vec![0u32; n];
        // Counter is 16 bytes, already a multiple of 8 as per-CPU values need.
        let mut values = vec![Counter::default(); n * cpus];
        let mut out_batch = 0u32;
        let mut attr = BatchAttr::new(
            &self.counters_fd,
            keys.as_mut_ptr() as u64,
            values.as_mut_ptr() as u64,
            n,
        );
        attr.out_batch = (&raw mut out_batch) as u64;
        // SAFETY: keys and values have room for `count` entries of the
        // map's key type and `count` x CPUs values of its value type, and
        // out_batch for the map's key.
        let r = unsafe { bpf_cmd(BPF_MAP_LOOKUP_BATCH, &mut attr) };
        // The end of the array is reported as ENOENT with the entries read.
        let done = r.is_ok() || r.is_err_and(|e| e.raw_os_error() == Some(libc::ENOENT));
        if !done || attr.count as usize != n {
            return None;
        }
        let mut out = vec![Counter::default(); n];
        for (k, key) in keys.iter().enumerate() {
            let slot = out.get_mut(*key as usize)?;
            for c in &values[k * cpus..(k + 1) * cpus] {
                slot.packets += c.packets;
                slot.bytes += c.bytes;
            }
        }
        Some(out)
    }

    /// The `abi::stat` counters, summed over CPUs.
    pub fn stats(&self) -> Result<[u64; stat::COUNT as usize], DatapathError> {
        let mut out = [0u64; stat::COUNT as usize];
        for (i, per_cpu) in self.stats.iter().enumerate() {
            out[i] = per_cpu.map_err(map_err(map_name::STATS))?.iter().sum();
        }
        Ok(out)
    }

    /// Sources currently holding a rate-table slot (reads every set: slow on
    /// big tables, so callers refresh it in the background).
    pub fn rate_table_occupancy(&self) -> Result<u64, DatapathError> {
        let mut n = 0;
        for set in self.rate_sets.iter() {
            let set = set.map_err(map_err(map_name::RATE_SETS))?;
            n += set.tags.iter().filter(|&&t| t != 0).count() as u64;
        }
        Ok(n)
    }
}
