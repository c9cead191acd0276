//! What the program counts for the traffic detector: per policy slot
//! counters, and each policy group's sketch of distinct sources.
use aya::maps::PerCpuValues;
use rampart_common::abi::{MAX_POLICIES, PORT_SLOTS, PolicyStats, Sketch, map_name};

use super::{Datapath, DatapathError};
use crate::bpf_sys::map_err;

impl Datapath {
    /// The counters of the first `entries` policy entries' slots, summed
    /// over CPUs, indexed `entry * PORT_SLOTS + slot`.
    pub fn policy_stats(&self, entries: usize) -> Result<Vec<PolicyStats>, DatapathError> {
        let n = entries.min(MAX_POLICIES as usize) * PORT_SLOTS as usize;
        (0..n as u32)
            .map(|i| {
                let per_cpu = self
                    .policy_stats
                    .get(&i, 0)
                    .map_err(map_err(map_name::POLICY_STATS))?;
                Ok(per_cpu.iter().fold(PolicyStats::default(), |mut a, s| {
                    a.packets += s.packets;
                    a.bytes += s.bytes;
                    a.syns += s.syns;
                    a.new_sources += s.new_sources;
                    a.drops += s.drops;
                    a
                }))
            })
            .collect()
    }

    /// Group `group`'s sketch in `bank`, merged over CPUs, and cleared for
    /// its next epoch.
    pub fn take_sketch(&mut self, bank: u32, group: u32) -> Result<Sketch, DatapathError> {
        let index = bank * MAX_POLICIES + group;
        let per_cpu = self
            .sketches
            .get(&index, 0)
            .map_err(map_err(map_name::SKETCHES))?;
        let mut merged = Sketch::default();
        for s in per_cpu.iter() {
            for (m, r) in merged.registers.iter_mut().zip(s.registers) {
                *m = (*m).max(r);
            }
        }
        let cpus = per_cpu.iter().count();
        let zeros = PerCpuValues::try_from(vec![Sketch::default(); cpus])
            .map_err(|e| DatapathError::os(format!("clearing {}", map_name::SKETCHES), e))?;
        self.sketches
            .set(index, zeros, 0)
            .map_err(map_err(map_name::SKETCHES))?;
        Ok(merged)
    }
}
