//! The loaded XDP program and typed access to its maps.
//!
//! This is the only module that touches BPF maps. It keeps the derived parts
//! of the kernel configuration (which prefix lengths each list uses, policy
//! count) consistent with the tables, and publishes configuration changes
//! through the double-buffered `CONFIG` map. Loading and the configuration
//! are here; each kind of table has its own module.
#[cfg(feature = "bench")]
mod bench;
#[cfg(feature = "bench")]
pub use bench::BENCH_OBJECT;
mod bans;
mod counters;
mod detect;
mod flood;
mod lists;
mod no_ban;
mod view;
use lists::LenCounts;
use std::{
    os::fd::{AsFd, OwnedFd},
    path::{Path, PathBuf},
};
pub use view::ReadOnlyView;

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, LpmTrie, MapData, PerCpuArray, RingBuf},
    programs::{TestRun, TestRunOptions, Xdp},
};
use rampart_common::{
    abi::{
        Addr, BanEntry, CONFIG_SLOTS, Config, Counter, FloodState, MAX_PREFIX_LENS, PROGRAM_NAME,
        Policy, PrefixLens, RateBuckets, RateExtra, RateSet, V4Key, V6Key, Verified,
        list_table_index, map_name,
    },
    decide::List,
    list_table::{self, WAYS},
};

pub use crate::{bpf_sys::DatapathError, config::Capacities};
use crate::{
    bpf_sys::map_err,
    list_table::{ListTable, TableMaps},
    slash24::Slash24Summary,
};

/// The XDP object, built by build.rs and embedded so one binary is enough.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/rampart"));

/// The loaded program and its maps.
pub struct Datapath {
    ebpf: Ebpf,
    config: Config,
    config_maps: Array<MapData, Config>,
    config_active: Array<MapData, u32>,
    active: u32,
    iface_slots: Array<MapData, u32>,
    counters: PerCpuArray<MapData, Counter>,
    counters_fd: OwnedFd,
    stats: PerCpuArray<MapData, u64>,
    allow_v4: ListTable<V4Key>,
    allow_v6: ListTable<V6Key>,
    block_v4: ListTable<V4Key>,
    block_v6: ListTable<V6Key>,
    bans_v4: HashMap<MapData, V4Key, BanEntry>,
    bans_v6: HashMap<MapData, V6Key, BanEntry>,
    policies: Array<MapData, Policy>,
    rate_sets: Array<MapData, RateSet>,
    rate_buckets: Array<MapData, RateBuckets>,
    rate_extra: Array<MapData, RateExtra>,
    flood: Array<MapData, FloodState>,
    policy_stats: PerCpuArray<MapData, rampart_common::abi::PolicyStats>,
    sketches: PerCpuArray<MapData, rampart_common::abi::Sketch>,
    verified_v4: HashMap<MapData, u32, Verified>,
    verified_v6: HashMap<MapData, Addr, Verified>,
    verified_hint: Array<MapData, u64>,
    no_ban_v4: LpmTrie<MapData, u32, u8>,
    no_ban_v6: LpmTrie<MapData, Addr, u8>,
    events: Option<RingBuf<MapData>>,
    allow_lens: LenCounts,
    block_lens: LenCounts,
    capacities: Capacities,
    /// The policies as last written (what `ReadOnlyView` reads).
    policy_cache: Vec<Policy>,
    /// The XDP program's name in the object.
    program: &'static str,
    slash24: Slash24Summary,
    slash24_map: Array<MapData, u64>,
    /// A duplicate of the summary map's fd, for batch updates (aya has none).
    slash24_fd: OwnedFd,
}

/// The list tables' maps: (slots, spill, spill flags) per table, in
/// `list_table_index` order.
const LIST_TABLES: [(&str, &str, &str); 4] = [
    (
        map_name::ALLOW_V4,
        map_name::ALLOW_V4_SPILL,
        map_name::ALLOW_V4_SPFLAG,
    ),
    (
        map_name::ALLOW_V6,
        map_name::ALLOW_V6_SPILL,
        map_name::ALLOW_V6_SPFLAG,
    ),
    (
        map_name::BLOCK_V4,
        map_name::BLOCK_V4_SPILL,
        map_name::BLOCK_V4_SPFLAG,
    ),
    (
        map_name::BLOCK_V6,
        map_name::BLOCK_V6_SPILL,
        map_name::BLOCK_V6_SPFLAG,
    ),
];

/// Names of every map, with the pin file each has under a pin directory.
pub const MAP_NAMES: &[&str] = map_name::ALL;

impl Datapath {
    /// Loads the program. With `pin_dir`, every map is created pinned there,
    /// or re-adopted if already pinned (keeping its contents).
    pub fn load(capacities: Capacities, pin_dir: Option<&Path>) -> Result<Self, DatapathError> {
        Self::load_from(OBJECT, PROGRAM_NAME, capacities, pin_dir)
    }

    /// Loads `program` from `object` with the maps.
    fn load_from(
        object: &[u8],
        program: &'static str,
        capacities: Capacities,
        pin_dir: Option<&Path>,
    ) -> Result<Self, DatapathError> {
        if object.is_empty() {
            return Err(DatapathError::NoObject);
        }
        let rate_sets = capacities.rate_sets.max(1).next_power_of_two();
        let capacities = Capacities {
            rate_sets,
            ..capacities
        };
        let pins: Vec<(&str, PathBuf)> = match pin_dir {
            Some(dir) => MAP_NAMES.iter().map(|n| (*n, dir.join(n))).collect(),
            None => Vec::new(),
        };
        let mut loader = EbpfLoader::new();
        for ((slots, spill, flags), cap) in LIST_TABLES.iter().zip(capacities.lists()) {
            let buckets = list_table::buckets_for(cap);
            loader
                .map_max_entries(slots, buckets * WAYS)
                .map_max_entries(spill, cap.max(1))
                .map_max_entries(flags, list_table::flag_words(buckets));
        }
        loader
            .map_max_entries(map_name::BANS_V4, capacities.bans_v4)
            .map_max_entries(map_name::BANS_V6, capacities.bans_v6)
            .map_max_entries(map_name::RATE_SETS, rate_sets)
            .map_max_entries(map_name::RATE_BUCKETS, rate_sets)
            .map_max_entries(map_name::RATE_EXTRA, rate_sets);
        for (name, path) in &pins {
            loader.map_pin_path(name, path.as_path());
        }
        let mut ebpf = loader.load(object)?;
        let prog: &mut Xdp = ebpf
            .program_mut(program)
            .ok_or_else(|| missing_program(program))?
            .try_into()?;
        prog.load().map_err(|source| DatapathError::Rejected {
            hint: crate::kernel::load_hint(&crate::kernel::release()),
            source,
        })?;

        macro_rules! take {
            ($name:expr) => {
                ebpf.take_map($name)
                    .ok_or_else(|| missing_map($name))?
                    .try_into()
                    .map_err(map_err($name))?
            };
        }
        // Array maps' fds are duplicated before typing, for batch updates.
        macro_rules! take_with_fd {
            ($name:expr) => {{
                let map = ebpf.take_map($name).ok_or_else(|| missing_map($name))?;
                let fd = match &map {
                    aya::maps::Map::Array(d) => {
                        d.fd().as_fd().try_clone_to_owned().map_err(|e| {
                            DatapathError::os(format!("duplicating the fd of {}", $name), e)
                        })?
                    }
                    _ => {
                        return Err(DatapathError::WrongMapType {
                            name: $name,
                            expected: "an array",
                        });
                    }
                };
                (map.try_into().map_err(map_err($name))?, fd)
            }};
        }
        let (slash24_map, slash24_fd) = take_with_fd!(map_name::V4_SLASH24);
        // The counters' fd too, to read all CPUs' counters in one syscall.
        let counters_map = ebpf
            .take_map(map_name::COUNTERS)
            .ok_or_else(|| missing_map(map_name::COUNTERS))?;
        let counters_fd = match &counters_map {
            aya::maps::Map::PerCpuArray(d) => d.fd().as_fd().try_clone_to_owned().map_err(|e| {
                DatapathError::os(format!("duplicating the fd of {}", map_name::COUNTERS), e)
            })?,
            _ => {
                return Err(DatapathError::WrongMapType {
                    name: map_name::COUNTERS,
                    expected: "a per-CPU array",
                });
            }
        };
        let counters: PerCpuArray<MapData, Counter> = counters_map
            .try_into()
            .map_err(map_err(map_name::COUNTERS))?;
        let config_maps: Array<MapData, Config> = take!(map_name::CONFIG);
        let config_active: Array<MapData, u32> = take!(map_name::CONFIG_ACTIVE);
        let active = config_active
            .get(&0, 0)
            .map_err(map_err(map_name::CONFIG_ACTIVE))?
            & 1;
        let config = config_maps
            .get(&active, 0)
            .map_err(map_err(map_name::CONFIG))?;
        // A fresh (not re-adopted) data plane gets a new seed, before any
        // list key is placed with it.
        let fresh = config.rate_set_mask == 0 || config.hash_seed == 0;
        let seed = if fresh {
            random_seed()?
        } else {
            config.hash_seed
        };
        macro_rules! table {
            ($index:expr) => {{
                let (slots, spill, flags) = LIST_TABLES[$index];
                let (slots_map, slots_fd) = take_with_fd!(slots);
                let (flags_map, flags_fd) = take_with_fd!(flags);
                let maps = TableMaps {
                    slots: slots_map,
                    slots_fd,
                    spill: take!(spill),
                    flags: flags_map,
                    flags_fd,
                };
                ListTable::adopt(slots, maps, seed, capacities.lists()[$index])?
            }};
        }
        let (allow_v4, keys_a4) = table!(list_table_index(List::Allow.index(), false));
        let (allow_v6, keys_a6) = table!(list_table_index(List::Allow.index(), true));
        let (block_v4, keys_b4) = table!(list_table_index(List::Block.index(), false));
        let (block_v6, keys_b6) = table!(list_table_index(List::Block.index(), true));
        let mut dp = Self {
            config,
            config_maps,
            config_active,
            active,
            iface_slots: take!(map_name::IFACE_SLOTS),
            counters,
            counters_fd,
            stats: take!(map_name::STATS),
            allow_v4,
            allow_v6,
            block_v4,
            block_v6,
            bans_v4: take!(map_name::BANS_V4),
            bans_v6: take!(map_name::BANS_V6),
            policies: take!(map_name::POLICIES),
            rate_sets: take!(map_name::RATE_SETS),
            rate_buckets: take!(map_name::RATE_BUCKETS),
            rate_extra: take!(map_name::RATE_EXTRA),
            flood: take!(map_name::FLOOD),
            policy_stats: take!(map_name::POLICY_STATS),
            sketches: take!(map_name::SKETCHES),
            verified_v4: take!(map_name::VERIFIED_V4),
            verified_v6: take!(map_name::VERIFIED_V6),
            verified_hint: take!(map_name::VERIFIED_HINT),
            no_ban_v4: take!(map_name::NO_BAN_V4),
            no_ban_v6: take!(map_name::NO_BAN_V6),
            events: Some(take!(map_name::EVENTS)),
            ebpf,
            allow_lens: LenCounts::default(),
            block_lens: LenCounts::default(),
            capacities,
            policy_cache: Vec::new(),
            program,
            slash24: Slash24Summary::default(),
            slash24_map,
            slash24_fd,
        };
        let masks = [
            dp.allow_v4.mask(),
            dp.allow_v6.mask(),
            dp.block_v4.mask(),
            dp.block_v6.mask(),
        ];
        dp.update_config(|c| {
            if fresh {
                c.rate_set_mask = rate_sets - 1;
                c.hash_seed = seed;
            }
            c.list_masks = masks;
        })?;
        dp.recount_lens(&keys_a4, &keys_a6, &keys_b4, &keys_b6)?;
        Ok(dp)
    }

    pub fn program(&self) -> Result<&Xdp, DatapathError> {
        Ok(self
            .ebpf
            .program(self.program)
            .ok_or_else(|| missing_program(self.program))?
            .try_into()?)
    }

    pub fn program_mut(&mut self) -> Result<&mut Xdp, DatapathError> {
        Ok(self
            .ebpf
            .program_mut(self.program)
            .ok_or_else(|| missing_program(self.program))?
            .try_into()?)
    }

    pub fn capacities(&self) -> Capacities {
        self.capacities
    }

    /// Runs the program once on `frame` (BPF_PROG_TEST_RUN) and returns the
    /// XDP action.
    pub fn test_run(&self, frame: &[u8]) -> Result<u32, DatapathError> {
        let opts = TestRunOptions {
            data_in: Some(frame),
            ..TestRunOptions::default()
        };
        Ok(self.program()?.test_run(opts)?.return_value)
    }

    /// As [`Datapath::test_run`], and the frame as the program left it (a
    /// SYN-ACK, when it answered).
    pub fn test_run_out(&self, frame: &[u8]) -> Result<(u32, Vec<u8>), DatapathError> {
        let mut out = vec![0u8; frame.len() + 256];
        let opts = TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ..TestRunOptions::default()
        };
        let r = self.program()?.test_run(opts)?;
        out.truncate(r.data_size_out as usize);
        Ok((r.return_value, out))
    }

    /// The configuration the kernel runs with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Changes the configuration: writes the idle copy, then flips to it.
    pub fn update_config(&mut self, f: impl FnOnce(&mut Config)) -> Result<(), DatapathError> {
        let mut next = self.config;
        f(&mut next);
        self.publish(next)
    }

    fn publish(&mut self, mut next: Config) -> Result<(), DatapathError> {
        next.allow_v4 = LenCounts::publish(&self.allow_lens.v4);
        next.allow_v6 = LenCounts::publish(&self.allow_lens.v6);
        next.block_v4 = LenCounts::publish(&self.block_lens.v4);
        next.block_v6 = LenCounts::publish(&self.block_lens.v6);
        let idle = (self.active + 1) % CONFIG_SLOTS;
        self.config_maps
            .set(idle, next, 0)
            .map_err(map_err(map_name::CONFIG))?;
        self.config_active
            .set(0, idle, 0)
            .map_err(map_err(map_name::CONFIG_ACTIVE))?;
        self.active = idle;
        self.config = next;
        Ok(())
    }

    /// Gives an interface its own counter slot.
    pub fn set_iface_slot(&mut self, ifindex: u32, slot: u32) -> Result<(), DatapathError> {
        self.iface_slots
            .set(ifindex, slot, 0)
            .map_err(map_err(map_name::IFACE_SLOTS))
    }

    /// The ring buffer of drop samples and ban events (taken by the reader).
    pub fn take_events(&mut self) -> Option<RingBuf<MapData>> {
        self.events.take()
    }
}

/// The prefix lengths the kernel probes, longest first (the longest match
/// wins), for lists and bans alike.
fn lens_of(mut v: Vec<u8>) -> PrefixLens {
    v.sort_unstable_by(|a, b| b.cmp(a));
    v.dedup();
    let mut out = PrefixLens::default();
    for (i, l) in v.iter().take(MAX_PREFIX_LENS).enumerate() {
        out.lens[i] = *l;
        out.count = i as u32 + 1;
    }
    out
}

fn unreachable_family<T>() -> Result<T, DatapathError> {
    Err(DatapathError::NotAnAddressFamily)
}

fn missing_map(name: &str) -> DatapathError {
    DatapathError::MissingFromObject {
        kind: "map",
        name: name.into(),
    }
}

fn missing_program(name: &str) -> DatapathError {
    DatapathError::MissingFromObject {
        kind: "program",
        name: name.into(),
    }
}

/// The secret seed of the list and rate tables' hashes: from getrandom, or
/// an error. Never from the clock: a guessable seed lets an attacker pick
/// sources that collide in one rate set or list bucket.
fn random_seed() -> Result<u64, DatapathError> {
    let mut buf = [0u8; 8];
    // SAFETY: getrandom writes at most buf.len() bytes into buf.
    let n = unsafe { libc::getrandom(buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n != buf.len() as isize {
        return Err(DatapathError::os(
            "could not read a random hash seed from getrandom(2)",
            std::io::Error::last_os_error(),
        ));
    }
    Ok(u64::from_ne_bytes(buf) | 1)
}
