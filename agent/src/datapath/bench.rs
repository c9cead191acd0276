//! Hooks for the benchmarks (`cargo xtask bench`), behind the `bench`
//! feature: never in the shipped binary.
use aya::programs::{TestRun, TestRunOptions, Xdp};
use rampart_common::abi::{RateBuckets, RateExtra, RateSet, map_name};

use super::{Capacities, Datapath, DatapathError};
use crate::bpf_sys::map_err;

/// The benchmark build of the program (`rampart_varied`, `floor`,
/// `generator`); see ebpf/program/src/bench.rs.
#[cfg(feature = "bench")]
pub static BENCH_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/rampart-bench"));

impl Datapath {
    /// Loads `program` from `object` (the production object, or the
    /// benchmark build) with the same maps.
    pub fn load_object(
        object: &[u8],
        program: &'static str,
        capacities: Capacities,
        pin_dir: Option<&std::path::Path>,
    ) -> Result<Self, DatapathError> {
        Self::load_from(object, program, capacities, pin_dir)
    }

    /// Runs the program `repeat` times on `frame`; returns the mean ns per run.
    pub fn test_run_timed(&self, frame: &[u8], repeat: u32) -> Result<f64, DatapathError> {
        let opts = TestRunOptions {
            data_in: Some(frame),
            repeat,
            ..TestRunOptions::default()
        };
        let r = self.program()?.test_run(opts)?;
        Ok(r.duration.as_nanos() as f64)
    }

    /// Another program of the same object (benchmarks: the floor and the
    /// generator), loaded on first use.
    pub fn other_program(&mut self, name: &str) -> Result<&mut Xdp, DatapathError> {
        let prog: &mut Xdp = self
            .ebpf
            .program_mut(name)
            .ok_or_else(|| DatapathError::MissingFromObject {
                kind: "program",
                name: name.into(),
            })?
            .try_into()?;
        if prog.fd().is_err() {
            prog.load().map_err(|source| DatapathError::Rejected {
                hint: crate::kernel::load_hint(&crate::kernel::release()),
                source,
            })?;
        }
        Ok(prog)
    }

    /// A map by name, for the benchmark build's own maps.
    pub fn raw_map(&mut self, name: &str) -> Option<aya::maps::Map> {
        self.ebpf.take_map(name)
    }

    /// Clears the rate table (tests and benchmarks).
    pub fn reset_rate_table(&mut self) -> Result<(), DatapathError> {
        for i in 0..self.capacities.rate_sets {
            self.rate_sets
                .set(i, RateSet::default(), 0)
                .map_err(map_err(map_name::RATE_SETS))?;
            self.rate_buckets
                .set(i, RateBuckets::default(), 0)
                .map_err(map_err(map_name::RATE_BUCKETS))?;
            self.rate_extra
                .set(i, RateExtra::default(), 0)
                .map_err(map_err(map_name::RATE_EXTRA))?;
        }
        Ok(())
    }
}
