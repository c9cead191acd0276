//! The loaded XDP program and typed access to its maps.
//!
//! This is the only module that touches BPF maps. It keeps the derived parts
//! of the kernel configuration (which prefix lengths each list uses, policy
//! count) consistent with the tables, and publishes configuration changes
//! through the double-buffered `CONFIG` map.
use std::{
    collections::BTreeMap,
    os::fd::{AsFd, AsRawFd, OwnedFd},
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, MapData, MapError, PerCpuArray, RingBuf},
    programs::{ProgramError, TestRun, TestRunOptions, Xdp},
};
use rampart_common::{
    abi::{
        BanEntry, BucketSet, CONFIG_SLOTS, COUNTER_ENTRIES, Config, Counter, ListEntry,
        MAX_POLICIES, MAX_PREFIX_LENS, OverflowBucket, PROGRAM_NAME, Policy, PrefixLens, V4Key,
        V6Key, config_flag, map_name, policy_flag, slash24, stat,
    },
    decide::{BanStarted, List, Tables},
};

use crate::{prefix::Prefix, slash24::Slash24Summary};

/// The XDP object, built by build.rs and embedded so one binary is enough.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/rampart"));

/// The benchmark build of the program (`rampart_varied`, `floor`,
/// `generator`); see ebpf/program/src/bench.rs.
#[cfg(feature = "bench")]
pub static BENCH_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/rampart-bench"));

/// Sizes of the tables, fixed when the maps are created.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Capacities {
    pub allow_v4: u32,
    pub allow_v6: u32,
    pub block_v4: u32,
    pub block_v6: u32,
    pub bans_v4: u32,
    pub bans_v6: u32,
    /// Sets of the rate table (rounded up to a power of two); each holds
    /// four sources. The default (65,536 sources, 2.5 MiB with the overflow
    /// buckets) stays in cache: a spoofed flood reads a random set per
    /// packet, and at four times the size each read costs a cache and TLB
    /// miss (docs/benchmarks.md). A spoofed flood fills any size within
    /// milliseconds, so more sets buy room for legitimate sources in calm
    /// times, not resilience under attack.
    pub rate_sets: u32,
}

impl Default for Capacities {
    fn default() -> Self {
        Self {
            allow_v4: 1 << 16,
            allow_v6: 1 << 16,
            block_v4: 1 << 20,
            block_v6: 1 << 18,
            bans_v4: 1 << 16,
            bans_v6: 1 << 16,
            rate_sets: 1 << 14,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    #[error(
        "this rampart binary was built without its XDP program (AYA_BUILD_SKIP was set); rebuild it with `cargo xtask build`"
    )]
    NoObject,
    #[error("loading the XDP program failed: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("XDP program: {0}")]
    Program(#[from] ProgramError),
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: MapError,
    },
    #[error("{0}")]
    Invalid(String),
}

fn map_err(name: &'static str) -> impl FnOnce(MapError) -> DatapathError {
    move |source| DatapathError::Map { name, source }
}

/// How many entries of each prefix length a list holds, per family, so the
/// kernel is told exactly which lengths to probe.
#[derive(Debug, Default, Clone)]
struct LenCounts {
    v4: BTreeMap<u8, u64>,
    v6: BTreeMap<u8, u64>,
}

impl LenCounts {
    fn family(&mut self, v4: bool) -> &mut BTreeMap<u8, u64> {
        if v4 { &mut self.v4 } else { &mut self.v6 }
    }

    fn publish(map: &BTreeMap<u8, u64>) -> PrefixLens {
        let mut out = PrefixLens::default();
        for (i, len) in map.keys().rev().take(MAX_PREFIX_LENS).enumerate() {
            out.lens[i] = *len;
            out.count = i as u32 + 1;
        }
        out
    }
}

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
    allow_v4: HashMap<MapData, V4Key, ListEntry>,
    allow_v6: HashMap<MapData, V6Key, ListEntry>,
    block_v4: HashMap<MapData, V4Key, ListEntry>,
    block_v6: HashMap<MapData, V6Key, ListEntry>,
    bans_v4: HashMap<MapData, V4Key, BanEntry>,
    bans_v6: HashMap<MapData, V6Key, BanEntry>,
    policies: Array<MapData, Policy>,
    rate_sets: Array<MapData, BucketSet>,
    rate_overflow: Array<MapData, OverflowBucket>,
    events: Option<RingBuf<MapData>>,
    allow_lens: LenCounts,
    block_lens: LenCounts,
    capacities: Capacities,
    /// The policies as last written (what `ReadOnlyView` reads).
    policy_cache: Vec<Policy>,
    /// The XDP program's name in the object.
    program: &'static str,
    /// Duplicated fds of the list maps, for batch updates (aya has none).
    list_fds: ListFds,
    slash24: Slash24Summary,
    slash24_map: Array<MapData, u64>,
}

/// Raw fds of the four list maps and their IPv4 /24 summary.
struct ListFds {
    allow_v4: OwnedFd,
    allow_v6: OwnedFd,
    block_v4: OwnedFd,
    block_v6: OwnedFd,
    slash24: OwnedFd,
}

/// Names of every map, with the pin file each has under a pin directory.
pub const MAP_NAMES: [&str; 18] = [
    map_name::CONFIG,
    map_name::CONFIG_ACTIVE,
    map_name::IFACE_SLOTS,
    map_name::COUNTERS,
    map_name::STATS,
    map_name::ALLOW_V4,
    map_name::ALLOW_V6,
    map_name::BLOCK_V4,
    map_name::BLOCK_V6,
    map_name::BANS_V4,
    map_name::BANS_V6,
    map_name::POLICIES,
    map_name::RATE_SETS,
    map_name::RATE_OVERFLOW,
    map_name::EVENTS,
    map_name::V4_SLASH24,
    "SAMPLER",
    "CLOCK",
];

impl Datapath {
    /// Loads the program. With `pin_dir`, every map is created pinned there,
    /// or re-adopted if already pinned (keeping its contents).
    pub fn load(capacities: Capacities, pin_dir: Option<&Path>) -> Result<Self, DatapathError> {
        Self::load_object(OBJECT, PROGRAM_NAME, capacities, pin_dir)
    }

    /// Loads `program` from `object` (the production object, or the
    /// benchmark build) with the same maps.
    pub fn load_object(
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
        loader
            .map_max_entries(map_name::ALLOW_V4, capacities.allow_v4)
            .map_max_entries(map_name::ALLOW_V6, capacities.allow_v6)
            .map_max_entries(map_name::BLOCK_V4, capacities.block_v4)
            .map_max_entries(map_name::BLOCK_V6, capacities.block_v6)
            .map_max_entries(map_name::BANS_V4, capacities.bans_v4)
            .map_max_entries(map_name::BANS_V6, capacities.bans_v6)
            .map_max_entries(map_name::RATE_SETS, rate_sets)
            .map_max_entries(map_name::RATE_OVERFLOW, rate_sets);
        for (name, path) in &pins {
            loader.map_pin_path(name, path.as_path());
        }
        let mut ebpf = loader.load(object)?;
        let prog: &mut Xdp = ebpf
            .program_mut(program)
            .ok_or_else(|| DatapathError::Invalid("the object has no XDP program".into()))?
            .try_into()?;
        prog.load()?;

        macro_rules! take {
            ($name:expr) => {
                ebpf.take_map($name)
                    .ok_or_else(|| {
                        DatapathError::Invalid(format!("the object has no map {}", $name))
                    })?
                    .try_into()
                    .map_err(map_err($name))?
            };
        }
        // The list maps' fds are duplicated before typing, for batch updates.
        macro_rules! take_with_fd {
            ($name:expr) => {{
                let map = ebpf.take_map($name).ok_or_else(|| {
                    DatapathError::Invalid(format!("the object has no map {}", $name))
                })?;
                let fd = match &map {
                    aya::maps::Map::HashMap(d) | aya::maps::Map::Array(d) => {
                        d.fd().as_fd().try_clone_to_owned().map_err(|e| {
                            DatapathError::Invalid(format!("duplicating the fd of {}: {e}", $name))
                        })?
                    }
                    _ => {
                        return Err(DatapathError::Invalid(format!(
                            "{} is not a hash map or an array",
                            $name
                        )));
                    }
                };
                (map.try_into().map_err(map_err($name))?, fd)
            }};
        }
        let (allow_v4, allow_v4_fd) = take_with_fd!(map_name::ALLOW_V4);
        let (allow_v6, allow_v6_fd) = take_with_fd!(map_name::ALLOW_V6);
        let (block_v4, block_v4_fd) = take_with_fd!(map_name::BLOCK_V4);
        let (block_v6, block_v6_fd) = take_with_fd!(map_name::BLOCK_V6);
        let (slash24_map, slash24_fd) = take_with_fd!(map_name::V4_SLASH24);
        // The counters' fd too, to read all CPUs' counters in one syscall.
        let counters_map = ebpf.take_map(map_name::COUNTERS).ok_or_else(|| {
            DatapathError::Invalid(format!("the object has no map {}", map_name::COUNTERS))
        })?;
        let counters_fd = match &counters_map {
            aya::maps::Map::PerCpuArray(d) => d.fd().as_fd().try_clone_to_owned().map_err(|e| {
                DatapathError::Invalid(format!("duplicating the fd of COUNTERS: {e}"))
            })?,
            _ => {
                return Err(DatapathError::Invalid(
                    "COUNTERS is not a per-CPU array".into(),
                ));
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
            rate_overflow: take!(map_name::RATE_OVERFLOW),
            events: Some(take!(map_name::EVENTS)),
            ebpf,
            allow_lens: LenCounts::default(),
            block_lens: LenCounts::default(),
            capacities,
            policy_cache: Vec::new(),
            program,
            list_fds: ListFds {
                allow_v4: allow_v4_fd,
                allow_v6: allow_v6_fd,
                block_v4: block_v4_fd,
                block_v6: block_v6_fd,
                slash24: slash24_fd,
            },
            slash24: Slash24Summary::default(),
            slash24_map,
        };
        dp.recount_lens()?;
        if dp.config.rate_set_mask == 0 || dp.config.hash_seed == 0 {
            // A fresh (not re-adopted) data plane: size the hash and seed it.
            let seed = random_seed();
            dp.update_config(|c| {
                c.rate_set_mask = rate_sets - 1;
                c.hash_seed = seed;
            })?;
        }
        Ok(dp)
    }

    pub fn program(&self) -> Result<&Xdp, DatapathError> {
        Ok(self
            .ebpf
            .program(self.program)
            .ok_or_else(|| DatapathError::Invalid("program missing".into()))?
            .try_into()?)
    }

    pub fn program_mut(&mut self) -> Result<&mut Xdp, DatapathError> {
        Ok(self
            .ebpf
            .program_mut(self.program)
            .ok_or_else(|| DatapathError::Invalid("program missing".into()))?
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

    /// Rebuilds the prefix-length counts from the tables (after re-adopting
    /// pinned maps) and republishes them.
    fn recount_lens(&mut self) -> Result<(), DatapathError> {
        let mut allow = LenCounts::default();
        let mut block = LenCounts::default();
        let mut summary = Slash24Summary::default();
        for k in self.allow_v4.keys() {
            let k = k.map_err(map_err(map_name::ALLOW_V4))?;
            *allow.v4.entry(k.prefix_len as u8).or_default() += 1;
            summary.add(List::Allow, &k);
        }
        for k in self.allow_v6.keys() {
            *allow
                .v6
                .entry(k.map_err(map_err(map_name::ALLOW_V6))?.prefix_len as u8)
                .or_default() += 1;
        }
        for k in self.block_v4.keys() {
            let k = k.map_err(map_err(map_name::BLOCK_V4))?;
            *block.v4.entry(k.prefix_len as u8).or_default() += 1;
            summary.add(List::Block, &k);
        }
        for k in self.block_v6.keys() {
            *block
                .v6
                .entry(k.map_err(map_err(map_name::BLOCK_V6))?.prefix_len as u8)
                .or_default() += 1;
        }
        self.allow_lens = allow;
        self.block_lens = block;
        // Written whole: pinned maps may come from an agent that kept no
        // summary, or one that stopped between an entry and its bit.
        let words = summary.all_words();
        let index: Vec<u32> = (0..slash24::WORDS).collect();
        batch_update(&self.list_fds.slash24, &index, &words)?;
        self.slash24 = summary;
        self.publish(self.config)
    }

    /// Writes the summary words that changed (after the entries they cover
    /// went in, or came out).
    fn flush_slash24(&mut self) -> Result<(), DatapathError> {
        let (index, words): (Vec<u32>, Vec<u64>) = self.slash24.take_dirty().into_iter().unzip();
        batch_update(&self.list_fds.slash24, &index, &words)
    }

    fn lens_mut(&mut self, list: List) -> &mut LenCounts {
        match list {
            List::Allow => &mut self.allow_lens,
            List::Block => &mut self.block_lens,
        }
    }

    /// Adds or replaces a list entry. The entry is in the table before its
    /// prefix length is published, so it is never half visible.
    pub fn list_insert(
        &mut self,
        list: List,
        prefix: &Prefix,
        entry: ListEntry,
    ) -> Result<(), DatapathError> {
        let v4 = prefix.is_ipv4();
        let lens = self.lens_mut(list).family(v4);
        if !lens.contains_key(&prefix.prefix_len()) && lens.len() >= MAX_PREFIX_LENS {
            return Err(DatapathError::Invalid(format!(
                "{prefix}: a list can hold at most {MAX_PREFIX_LENS} distinct IPv6 prefix lengths"
            )));
        }
        let existed = self.list_get(list, prefix)?.is_some();
        match (list, prefix.v4_key(), prefix.v6_key()) {
            (List::Allow, Some(k), _) => self
                .allow_v4
                .insert(k, entry, 0)
                .map_err(map_err(map_name::ALLOW_V4)),
            (List::Allow, _, Some(k)) => self
                .allow_v6
                .insert(k, entry, 0)
                .map_err(map_err(map_name::ALLOW_V6)),
            (List::Block, Some(k), _) => self
                .block_v4
                .insert(k, entry, 0)
                .map_err(map_err(map_name::BLOCK_V4)),
            (List::Block, _, Some(k)) => self
                .block_v6
                .insert(k, entry, 0)
                .map_err(map_err(map_name::BLOCK_V6)),
            _ => unreachable_family(),
        }?;
        if !existed {
            if let Some(k) = prefix.v4_key() {
                self.slash24.add(list, &k);
                self.flush_slash24()?;
            }
            let lens = self.lens_mut(list).family(v4);
            let n = lens.entry(prefix.prefix_len()).or_default();
            *n += 1;
            if *n == 1 {
                self.publish(self.config)?;
            }
        }
        Ok(())
    }

    /// Adds or replaces many entries with batch map updates (one syscall per
    /// 64k entries). Each item says whether the list did not hold it yet
    /// (for the prefix-length counts); new lengths are published after the
    /// entries are in, as with single inserts.
    pub fn list_insert_many(
        &mut self,
        list: List,
        items: &[(Prefix, ListEntry, bool)],
    ) -> Result<(), DatapathError> {
        let mut v4 = BTreeMap::new();
        let mut v6 = BTreeMap::new();
        for (p, _, is_new) in items {
            let lens = if p.is_ipv4() { &mut v4 } else { &mut v6 };
            if *is_new {
                *lens.entry(p.prefix_len()).or_insert(0u64) += 1;
            }
        }
        let counts = self.lens_mut(list);
        for (fam, add) in [(true, &v4), (false, &v6)] {
            let have = counts.family(fam);
            let distinct = have
                .keys()
                .chain(add.keys())
                .collect::<std::collections::BTreeSet<_>>()
                .len();
            if distinct > MAX_PREFIX_LENS {
                return Err(DatapathError::Invalid(format!(
                    "a list can hold at most {MAX_PREFIX_LENS} distinct prefix lengths per family"
                )));
            }
        }
        let (k4, e4): (Vec<V4Key>, Vec<ListEntry>) = items
            .iter()
            .filter_map(|(p, e, _)| p.v4_key().map(|k| (k, *e)))
            .unzip();
        let (k6, e6): (Vec<V6Key>, Vec<ListEntry>) = items
            .iter()
            .filter_map(|(p, e, _)| p.v6_key().map(|k| (k, *e)))
            .unzip();
        let (fd4, fd6) = match list {
            List::Allow => (&self.list_fds.allow_v4, &self.list_fds.allow_v6),
            List::Block => (&self.list_fds.block_v4, &self.list_fds.block_v6),
        };
        batch_update(fd4, &k4, &e4)?;
        batch_update(fd6, &k6, &e6)?;
        for (p, _, is_new) in items {
            if let (true, Some(k)) = (*is_new, p.v4_key()) {
                self.slash24.add(list, &k);
            }
        }
        self.flush_slash24()?;
        let counts = self.lens_mut(list);
        let mut new_len = false;
        for (fam, add) in [(true, v4), (false, v6)] {
            let have = counts.family(fam);
            for (len, n) in add {
                let c = have.entry(len).or_default();
                new_len |= *c == 0;
                *c += n;
            }
        }
        if new_len {
            self.publish(self.config)?;
        }
        Ok(())
    }

    /// Removes many entries that are in the list, with batch deletes; the
    /// prefix lengths they leave unused are withdrawn afterwards.
    pub fn list_remove_many(
        &mut self,
        list: List,
        prefixes: &[Prefix],
    ) -> Result<(), DatapathError> {
        let k4: Vec<V4Key> = prefixes.iter().filter_map(Prefix::v4_key).collect();
        let k6: Vec<V6Key> = prefixes.iter().filter_map(Prefix::v6_key).collect();
        let (fd4, fd6) = match list {
            List::Allow => (&self.list_fds.allow_v4, &self.list_fds.allow_v6),
            List::Block => (&self.list_fds.block_v4, &self.list_fds.block_v6),
        };
        batch_delete(fd4, &k4)?;
        batch_delete(fd6, &k6)?;
        for k in &k4 {
            self.slash24.remove(list, k);
        }
        self.flush_slash24()?;
        let counts = self.lens_mut(list);
        let mut gone = false;
        for p in prefixes {
            let lens = counts.family(p.is_ipv4());
            if let Some(n) = lens.get_mut(&p.prefix_len()) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    lens.remove(&p.prefix_len());
                    gone = true;
                }
            }
        }
        if gone {
            self.publish(self.config)?;
        }
        Ok(())
    }

    /// The list generation in force (0 or 1; see `config_flag::LIST_GEN1`).
    pub fn list_generation(&self) -> u32 {
        u32::from(self.config.flags & config_flag::LIST_GEN1 != 0)
    }

    /// Switches every list to the other generation in one config publish.
    pub fn flip_list_generation(&mut self) -> Result<(), DatapathError> {
        self.update_config(|c| c.flags ^= config_flag::LIST_GEN1)
    }

    /// Removes a list entry; false if it was not there. The prefix length is
    /// withdrawn only after its last entry is gone.
    pub fn list_remove(&mut self, list: List, prefix: &Prefix) -> Result<bool, DatapathError> {
        if self.list_get(list, prefix)?.is_none() {
            return Ok(false);
        }
        match (list, prefix.v4_key(), prefix.v6_key()) {
            (List::Allow, Some(k), _) => self
                .allow_v4
                .remove(&k)
                .map_err(map_err(map_name::ALLOW_V4)),
            (List::Allow, _, Some(k)) => self
                .allow_v6
                .remove(&k)
                .map_err(map_err(map_name::ALLOW_V6)),
            (List::Block, Some(k), _) => self
                .block_v4
                .remove(&k)
                .map_err(map_err(map_name::BLOCK_V4)),
            (List::Block, _, Some(k)) => self
                .block_v6
                .remove(&k)
                .map_err(map_err(map_name::BLOCK_V6)),
            _ => unreachable_family(),
        }?;
        if let Some(k) = prefix.v4_key() {
            self.slash24.remove(list, &k);
            self.flush_slash24()?;
        }
        let lens = self.lens_mut(list).family(prefix.is_ipv4());
        if let Some(n) = lens.get_mut(&prefix.prefix_len()) {
            *n -= 1;
            if *n == 0 {
                lens.remove(&prefix.prefix_len());
                self.publish(self.config)?;
            }
        }
        Ok(true)
    }

    pub fn list_get(
        &self,
        list: List,
        prefix: &Prefix,
    ) -> Result<Option<ListEntry>, DatapathError> {
        let r = match (list, prefix.v4_key(), prefix.v6_key()) {
            (List::Allow, Some(k), _) => self.allow_v4.get(&k, 0),
            (List::Allow, _, Some(k)) => self.allow_v6.get(&k, 0),
            (List::Block, Some(k), _) => self.block_v4.get(&k, 0),
            (List::Block, _, Some(k)) => self.block_v6.get(&k, 0),
            _ => return unreachable_family(),
        };
        match r {
            Ok(e) => Ok(Some(e)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(map_err("list")(e)),
        }
    }

    /// Every entry of a list.
    pub fn list_entries(&self, list: List) -> Result<Vec<(Prefix, ListEntry)>, DatapathError> {
        let (m4, m6) = match list {
            List::Allow => (&self.allow_v4, &self.allow_v6),
            List::Block => (&self.block_v4, &self.block_v6),
        };
        let mut out = Vec::new();
        for kv in m4.iter() {
            let (k, v) = kv.map_err(map_err("list"))?;
            out.push((Prefix::from_v4_key(&k), v));
        }
        for kv in m6.iter() {
            let (k, v) = kv.map_err(map_err("list"))?;
            out.push((Prefix::from_v6_key(&k), v));
        }
        Ok(out)
    }

    /// Number of entries of a list, per family (v4, v6).
    pub fn list_len(&self, list: List) -> (u64, u64) {
        let l = match list {
            List::Allow => &self.allow_lens,
            List::Block => &self.block_lens,
        };
        (l.v4.values().sum(), l.v6.values().sum())
    }

    /// Replaces the policy list. Unchanged policies at the same index keep
    /// their buckets (the rate table is keyed by index).
    pub fn set_policies(&mut self, policies: &[Policy]) -> Result<(), DatapathError> {
        if policies.len() > MAX_POLICIES as usize {
            return Err(DatapathError::Invalid(format!(
                "at most {MAX_POLICIES} rate-limit policies are supported, got {}",
                policies.len()
            )));
        }
        // Shrinking: publish the shorter count first so no packet reads a
        // stale slot; growing: write slots first, then the count.
        let count = policies.len() as u32;
        if count < self.config.policy_count {
            self.update_config(|c| c.policy_count = count)?;
        }
        for (i, p) in policies.iter().enumerate() {
            self.policies
                .set(i as u32, p, 0)
                .map_err(map_err(map_name::POLICIES))?;
        }
        self.policy_cache = policies.to_vec();
        // Only policies that can ban add a length to probe: every packet
        // pays one hash probe per length.
        let banning = || {
            policies
                .iter()
                .filter(|p| p.ban_threshold != 0 && p.flags & policy_flag::DRY_RUN == 0)
        };
        let mut v4: Vec<u8> = banning().map(|p| p.v4_prefix.min(32)).collect();
        let mut v6: Vec<u8> = banning().map(|p| p.v6_prefix.min(128)).collect();
        // Bans already recorded stay findable under the lengths they used.
        for kv in self.bans_v4.keys() {
            v4.push(kv.map_err(map_err(map_name::BANS_V4))?.prefix_len as u8);
        }
        for kv in self.bans_v6.keys() {
            v6.push(kv.map_err(map_err(map_name::BANS_V6))?.prefix_len as u8);
        }
        self.update_config(|c| {
            c.policy_count = count;
            c.ban_v4 = lens_of(v4);
            c.ban_v6 = lens_of(v6);
        })
    }

    pub fn policies(&self) -> Result<Vec<Policy>, DatapathError> {
        (0..self.config.policy_count.min(MAX_POLICIES))
            .map(|i| {
                self.policies
                    .get(&i, 0)
                    .map_err(map_err(map_name::POLICIES))
            })
            .collect()
    }

    /// Every ban entry, live or remembered.
    pub fn bans(&self) -> Result<Vec<(Prefix, BanEntry)>, DatapathError> {
        let mut out = Vec::new();
        for kv in self.bans_v4.iter() {
            let (k, v) = kv.map_err(map_err(map_name::BANS_V4))?;
            out.push((Prefix::from_v4_key(&k), v));
        }
        for kv in self.bans_v6.iter() {
            let (k, v) = kv.map_err(map_err(map_name::BANS_V6))?;
            out.push((Prefix::from_v6_key(&k), v));
        }
        Ok(out)
    }

    pub fn ban_set(&mut self, prefix: &Prefix, ban: BanEntry) -> Result<(), DatapathError> {
        match (prefix.v4_key(), prefix.v6_key()) {
            (Some(k), _) => self
                .bans_v4
                .insert(k, ban, 0)
                .map_err(map_err(map_name::BANS_V4)),
            (_, Some(k)) => self
                .bans_v6
                .insert(k, ban, 0)
                .map_err(map_err(map_name::BANS_V6)),
            _ => unreachable_family(),
        }?;
        let mut lens = if prefix.is_ipv4() {
            self.config.ban_v4
        } else {
            self.config.ban_v6
        };
        if !lens.as_slice().contains(&prefix.prefix_len()) {
            let mut v = lens.as_slice().to_vec();
            v.push(prefix.prefix_len());
            lens = lens_of(v);
            let v4 = prefix.is_ipv4();
            self.update_config(|c| {
                if v4 {
                    c.ban_v4 = lens;
                } else {
                    c.ban_v6 = lens;
                }
            })?;
        }
        Ok(())
    }

    pub fn ban_remove(&mut self, prefix: &Prefix) -> Result<bool, DatapathError> {
        let r = match (prefix.v4_key(), prefix.v6_key()) {
            (Some(k), _) => self.bans_v4.remove(&k),
            (_, Some(k)) => self.bans_v6.remove(&k),
            _ => return unreachable_family(),
        };
        match r {
            Ok(()) => Ok(true),
            Err(MapError::KeyNotFound) => Ok(false),
            Err(e) => Err(map_err("bans")(e)),
        }
    }

    /// Gives an interface its own counter slot.
    pub fn set_iface_slot(&mut self, ifindex: u32, slot: u32) -> Result<(), DatapathError> {
        self.iface_slots
            .set(ifindex, slot, 0)
            .map_err(map_err(map_name::IFACE_SLOTS))
    }

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
        const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
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

    /// Another program of the same object (benchmarks: the floor and the
    /// generator), loaded on first use.
    pub fn other_program(&mut self, name: &str) -> Result<&mut Xdp, DatapathError> {
        let prog: &mut Xdp = self
            .ebpf
            .program_mut(name)
            .ok_or_else(|| DatapathError::Invalid(format!("the object has no program {name}")))?
            .try_into()?;
        if prog.fd().is_err() {
            prog.load()?;
        }
        Ok(prog)
    }

    /// A map by name, for the benchmark build's own maps.
    pub fn raw_map(&mut self, name: &str) -> Option<aya::maps::Map> {
        self.ebpf.take_map(name)
    }

    /// The ring buffer of drop samples and ban events (taken by the reader).
    pub fn take_events(&mut self) -> Option<RingBuf<MapData>> {
        self.events.take()
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

    /// Clears the rate table (tests and benchmarks).
    pub fn reset_rate_table(&mut self) -> Result<(), DatapathError> {
        for i in 0..self.capacities.rate_sets {
            self.rate_sets
                .set(i, BucketSet::default(), 0)
                .map_err(map_err(map_name::RATE_SETS))?;
            self.rate_overflow
                .set(i, OverflowBucket::default(), 0)
                .map_err(map_err(map_name::RATE_OVERFLOW))?;
        }
        Ok(())
    }
}

/// The live maps as the decision code sees them, read-only: rate-table sets
/// are copied, bans are not written, so asking changes nothing.
pub struct ReadOnlyView<'a>(pub &'a Datapath);

fn found<V>(r: Result<V, MapError>) -> Option<V> {
    r.ok()
}

impl Tables for ReadOnlyView<'_> {
    fn list_v4(&self, list: List, key: &V4Key) -> Option<ListEntry> {
        found(match list {
            List::Allow => self.0.allow_v4.get(key, 0),
            List::Block => self.0.block_v4.get(key, 0),
        })
    }

    fn list_v6(&self, list: List, key: &V6Key) -> Option<ListEntry> {
        found(match list {
            List::Allow => self.0.allow_v6.get(key, 0),
            List::Block => self.0.block_v6.get(key, 0),
        })
    }

    /// The kernel's summary word, so an explanation shows what the program
    /// would do with it.
    fn v4_slash24(&self, list: List, addr: u32) -> bool {
        let (word, bit) = slash24::slot(list.index(), addr);
        !self.0.slash24_map.get(&word, 0).is_ok_and(|w| w & bit == 0)
    }

    fn ban_v4(&self, key: &V4Key) -> Option<BanEntry> {
        found(self.0.bans_v4.get(key, 0))
    }

    fn ban_v6(&self, key: &V6Key) -> Option<BanEntry> {
        found(self.0.bans_v6.get(key, 0))
    }

    fn offences_v4(&self, key: &V4Key) -> u32 {
        self.ban_v4(key).map_or(0, |b| b.offences)
    }

    fn offences_v6(&self, key: &V6Key) -> u32 {
        self.ban_v6(key).map_or(0, |b| b.offences)
    }

    fn set_ban_v4(&self, _key: &V4Key, _ban: &BanEntry) -> bool {
        true
    }

    fn set_ban_v6(&self, _key: &V6Key, _ban: &BanEntry) -> bool {
        true
    }

    fn policy(&self, index: u32) -> Option<&Policy> {
        self.0.policy_cache.get(index as usize)
    }

    fn with_rate_set<R>(
        &self,
        index: u32,
        f: impl FnOnce(&mut BucketSet, &mut OverflowBucket) -> R,
    ) -> Option<R> {
        let mut set = self.0.rate_sets.get(&index, 0).ok()?;
        let mut overflow = self.0.rate_overflow.get(&index, 0).ok()?;
        Some(f(&mut set, &mut overflow))
    }

    fn count(&self, _stat: u32) {}

    fn ban_started(&self, _ban: &BanStarted) {}
}

/// The batch member of `union bpf_attr`: aya 0.14 has no batch API.
#[repr(C)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

impl BatchAttr {
    fn new(fd: &OwnedFd, keys: u64, values: u64, count: usize) -> Self {
        Self {
            in_batch: 0,
            out_batch: 0,
            keys,
            values,
            count: count as u32,
            map_fd: fd.as_raw_fd() as u32,
            elem_flags: 0,
            flags: 0,
        }
    }
}

/// Runs one `bpf(2)` command on `attr`.
///
/// # Safety
/// `attr` must be the member of `union bpf_attr` that `cmd` reads, and its
/// pointers must reference memory of the sizes the command expects.
unsafe fn bpf_cmd<A>(cmd: libc::c_long, attr: &mut A) -> std::io::Result<()> {
    // SAFETY: upheld by the caller.
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut A, std::mem::size_of::<A>()) };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Map updates in batches of 64k with `BPF_MAP_UPDATE_BATCH` (Linux 5.6),
/// from up to [`UPDATE_THREADS`] threads: a hash insert mostly waits on
/// cache misses in the kernel's table, and the kernel locks per bucket, so
/// a large batch goes about twice as fast on two CPUs.
fn batch_update<K: aya::Pod + Sync, V: aya::Pod + Sync>(
    fd: &OwnedFd,
    keys: &[K],
    values: &[V],
) -> Result<(), DatapathError> {
    let threads = std::thread::available_parallelism()
        .map_or(1, usize::from)
        .clamp(1, UPDATE_THREADS);
    let share = keys.len().div_ceil(threads).max(BATCH_CHUNK);
    if keys.len() <= share {
        return batch_update_serial(fd, keys, values);
    }
    std::thread::scope(|s| {
        let workers: Vec<_> = keys
            .chunks(share)
            .zip(values.chunks(share))
            .map(|(k, v)| s.spawn(move || batch_update_serial(fd, k, v)))
            .collect();
        // The scope joins every worker; the first error is reported.
        workers.into_iter().try_for_each(|w| {
            w.join().unwrap_or_else(|_| {
                Err(DatapathError::Invalid(
                    "a batch update thread failed".into(),
                ))
            })
        })
    })
}

const UPDATE_THREADS: usize = 4;

fn batch_update_serial<K: aya::Pod, V: aya::Pod>(
    fd: &OwnedFd,
    keys: &[K],
    values: &[V],
) -> Result<(), DatapathError> {
    const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
    for (kc, vc) in keys.chunks(BATCH_CHUNK).zip(values.chunks(BATCH_CHUNK)) {
        let mut attr = BatchAttr::new(fd, kc.as_ptr() as u64, vc.as_ptr() as u64, kc.len());
        // SAFETY: attr points to valid key and value arrays of `count`
        // elements each, of the map's key and value types, alive for the call.
        if let Err(e) = unsafe { bpf_cmd(BPF_MAP_UPDATE_BATCH, &mut attr) } {
            return Err(DatapathError::Invalid(format!(
                "batch update failed after {} of {} entries: {e}",
                attr.count,
                kc.len()
            )));
        }
    }
    Ok(())
}

const BATCH_CHUNK: usize = 1 << 16;

/// Deletes keys with BPF_MAP_DELETE_BATCH. A key that is already gone
/// stops a batch (ENOENT); the rest of that chunk is then deleted one by one.
fn batch_delete<K: aya::Pod>(fd: &OwnedFd, keys: &[K]) -> Result<(), DatapathError> {
    /// The elem member of `union bpf_attr`.
    #[repr(C)]
    struct ElemAttr {
        map_fd: u32,
        pad: u32,
        key: u64,
        value: u64,
        flags: u64,
    }
    const BPF_MAP_DELETE_ELEM: libc::c_long = 3;
    const BPF_MAP_DELETE_BATCH: libc::c_long = 27;
    for chunk in keys.chunks(BATCH_CHUNK) {
        let mut attr = BatchAttr::new(fd, chunk.as_ptr() as u64, 0, chunk.len());
        // SAFETY: attr points to `count` keys of the map's key type.
        if unsafe { bpf_cmd(BPF_MAP_DELETE_BATCH, &mut attr) }.is_ok() {
            continue;
        }
        let done = attr.count as usize;
        for key in &chunk[done.min(chunk.len())..] {
            let mut a = ElemAttr {
                map_fd: fd.as_raw_fd() as u32,
                pad: 0,
                key: (key as *const K) as u64,
                value: 0,
                flags: 0,
            };
            // SAFETY: a points to one key of the map's key type.
            if let Err(e) = unsafe { bpf_cmd(BPF_MAP_DELETE_ELEM, &mut a) } {
                if e.raw_os_error() != Some(libc::ENOENT) {
                    return Err(DatapathError::Invalid(format!("batch delete failed: {e}")));
                }
            }
        }
    }
    Ok(())
}

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
    Err(DatapathError::Invalid(
        "prefix is neither IPv4 nor IPv6".into(),
    ))
}

/// A random 64-bit seed from the kernel.
fn random_seed() -> u64 {
    let mut buf = [0u8; 8];
    // SAFETY: getrandom writes at most buf.len() bytes into buf.
    let n = unsafe { libc::getrandom(buf.as_mut_ptr().cast(), buf.len(), 0) };
    let seed = if n == 8 {
        u64::from_ne_bytes(buf)
    } else {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0x9e37_79b9_7f4a_7c15)
    };
    seed | 1
}
