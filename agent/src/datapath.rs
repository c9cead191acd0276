//! The loaded XDP program and typed access to its maps.
//!
//! This is the only module that touches BPF maps. It keeps the derived parts
//! of the kernel configuration (which prefix lengths each list uses, policy
//! count) consistent with the tables, and publishes configuration changes
//! through the double-buffered `CONFIG` map.
use std::{
    collections::BTreeMap,
    os::fd::{AsFd, OwnedFd},
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, MapData, MapError, PerCpuArray, RingBuf},
    programs::{TestRun, TestRunOptions, Xdp},
};
use rampart_common::{
    abi::{
        BanEntry, CONFIG_SLOTS, COUNTER_ENTRIES, Config, Counter, ListEntry, MAX_POLICIES,
        MAX_PREFIX_LENS, PROGRAM_NAME, Policy, PrefixLens, RateBuckets, RateExtra, RateSet, V4Key,
        V6Key, config_flag, list_table_index, map_name, policy_flag, slash24, stat,
    },
    decide::{BanStarted, List, Tables},
    list_table::{self, WAYS},
};

pub use crate::{bpf_sys::DatapathError, config::Capacities};
use crate::{
    bpf_sys::{BPF_MAP_LOOKUP_BATCH, BatchAttr, batch_update, bpf_cmd, map_err},
    list_table::{ListTable, TableMaps},
    prefix::Prefix,
    slash24::Slash24Summary,
};

/// The XDP object, built by build.rs and embedded so one binary is enough.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/rampart"));

/// The benchmark build of the program (`rampart_varied`, `floor`,
/// `generator`); see ebpf/program/src/bench.rs.
#[cfg(feature = "bench")]
pub static BENCH_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/rampart-bench"));

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
        lens_of(map.keys().copied().collect())
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
            .ok_or_else(|| DatapathError::Invalid("the object has no XDP program".into()))?
            .try_into()?;
        prog.load().map_err(|source| DatapathError::Rejected {
            hint: crate::kernel::load_hint(&crate::kernel::release()),
            source,
        })?;

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
        // Array maps' fds are duplicated before typing, for batch updates.
        macro_rules! take_with_fd {
            ($name:expr) => {{
                let map = ebpf.take_map($name).ok_or_else(|| {
                    DatapathError::Invalid(format!("the object has no map {}", $name))
                })?;
                let fd = match &map {
                    aya::maps::Map::Array(d) => {
                        d.fd().as_fd().try_clone_to_owned().map_err(|e| {
                            DatapathError::Invalid(format!("duplicating the fd of {}: {e}", $name))
                        })?
                    }
                    _ => {
                        return Err(DatapathError::Invalid(format!("{} is not an array", $name)));
                    }
                };
                (map.try_into().map_err(map_err($name))?, fd)
            }};
        }
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

    /// Rebuilds the prefix-length counts and the /24 summary from the keys
    /// the tables hold (after re-adopting pinned maps) and republishes them.
    fn recount_lens(
        &mut self,
        allow_v4: &[V4Key],
        allow_v6: &[V6Key],
        block_v4: &[V4Key],
        block_v6: &[V6Key],
    ) -> Result<(), DatapathError> {
        let mut allow = LenCounts::default();
        let mut block = LenCounts::default();
        let mut summary = Slash24Summary::default();
        for (list, counts, v4, v6) in [
            (List::Allow, &mut allow, allow_v4, allow_v6),
            (List::Block, &mut block, block_v4, block_v6),
        ] {
            for k in v4 {
                *counts.v4.entry(k.prefix_len as u8).or_default() += 1;
                summary.add(list, k);
            }
            for k in v6 {
                *counts.v6.entry(k.prefix_len as u8).or_default() += 1;
            }
        }
        self.allow_lens = allow;
        self.block_lens = block;
        // Written whole: pinned maps may come from an agent that stopped
        // between an entry and its bit.
        let words = summary.all_words();
        let index: Vec<u32> = (0..slash24::WORDS).collect();
        batch_update(&self.slash24_fd, &index, &words)?;
        self.slash24 = summary;
        self.publish(self.config)
    }

    /// Writes the summary words that changed (after the entries they cover
    /// went in, or came out).
    fn flush_slash24(&mut self) -> Result<(), DatapathError> {
        let (index, words): (Vec<u32>, Vec<u64>) = self.slash24.take_dirty().into_iter().unzip();
        batch_update(&self.slash24_fd, &index, &words)
    }

    fn lens_mut(&mut self, list: List) -> &mut LenCounts {
        match list {
            List::Allow => &mut self.allow_lens,
            List::Block => &mut self.block_lens,
        }
    }

    fn tables(&self, list: List) -> (&ListTable<V4Key>, &ListTable<V6Key>) {
        match list {
            List::Allow => (&self.allow_v4, &self.allow_v6),
            List::Block => (&self.block_v4, &self.block_v6),
        }
    }

    fn tables_mut(&mut self, list: List) -> (&mut ListTable<V4Key>, &mut ListTable<V6Key>) {
        match list {
            List::Allow => (&mut self.allow_v4, &mut self.allow_v6),
            List::Block => (&mut self.block_v4, &mut self.block_v6),
        }
    }

    /// Adds or replaces a list entry.
    pub fn list_insert(
        &mut self,
        list: List,
        prefix: &Prefix,
        entry: ListEntry,
    ) -> Result<(), DatapathError> {
        self.list_insert_many(list, &[(*prefix, entry)])
    }

    /// Adds or replaces many entries with batch map updates (one syscall per
    /// 64k entries). Entries are in their table before a new prefix length
    /// or /24 bit is published, so none is ever half visible.
    pub fn list_insert_many(
        &mut self,
        list: List,
        items: &[(Prefix, ListEntry)],
    ) -> Result<(), DatapathError> {
        let counts = self.lens_mut(list);
        for v4 in [true, false] {
            // A bitmap, not a set: this runs over every item of a million-entry import.
            let mut seen = [false; 129];
            for len in counts.family(v4).keys() {
                seen[usize::from(*len).min(128)] = true;
            }
            for (p, _) in items.iter().filter(|(p, _)| p.is_ipv4() == v4) {
                seen[usize::from(p.prefix_len()).min(128)] = true;
            }
            let distinct = seen.iter().filter(|s| **s).count();
            if distinct > MAX_PREFIX_LENS {
                return Err(DatapathError::Invalid(format!(
                    "a list can hold at most {MAX_PREFIX_LENS} distinct prefix lengths per family, \
                     this change would make it {distinct}"
                )));
            }
        }
        let v4: Vec<(V4Key, ListEntry)> = items
            .iter()
            .filter_map(|(p, e)| p.v4_key().map(|k| (k, *e)))
            .collect();
        let v6: Vec<(V6Key, ListEntry)> = items
            .iter()
            .filter_map(|(p, e)| p.v6_key().map(|k| (k, *e)))
            .collect();
        // Each family is counted as soon as its table took it, so a refused
        // IPv6 part leaves the IPv4 part both in and visible.
        let new4 = self.tables_mut(list).0.insert_many(&v4);
        let mut added = BTreeMap::<(bool, u8), u64>::new();
        if let Ok(new) = &new4 {
            for ((k, _), _) in v4.iter().zip(new).filter(|(_, n)| **n) {
                self.slash24.add(list, k);
                *added.entry((true, k.prefix_len as u8)).or_default() += 1;
            }
        }
        let new6 = match new4 {
            Ok(_) => self.tables_mut(list).1.insert_many(&v6),
            Err(e) => Err(e),
        };
        if let Ok(new) = &new6 {
            for ((k, _), _) in v6.iter().zip(new).filter(|(_, n)| **n) {
                *added.entry((false, k.prefix_len as u8)).or_default() += 1;
            }
        }
        self.flush_slash24()?;
        let counts = self.lens_mut(list);
        let mut new_len = false;
        for ((v4, len), n) in added {
            let c = counts.family(v4).entry(len).or_default();
            new_len |= *c == 0;
            *c += n;
        }
        if new_len {
            self.publish(self.config)?;
        }
        new6.map(|_| ())
    }

    /// Removes entries (those not in the list are skipped); the prefix
    /// lengths and /24 bits they leave unused are withdrawn afterwards.
    pub fn list_remove_many(
        &mut self,
        list: List,
        prefixes: &[Prefix],
    ) -> Result<u64, DatapathError> {
        let k4: Vec<V4Key> = prefixes.iter().filter_map(Prefix::v4_key).collect();
        let k6: Vec<V6Key> = prefixes.iter().filter_map(Prefix::v6_key).collect();
        let (t4, t6) = self.tables_mut(list);
        let gone4 = t4.remove_many(&k4)?;
        let gone6 = t6.remove_many(&k6)?;
        let mut removed = BTreeMap::<(bool, u8), u64>::new();
        for (k, _) in k4.iter().zip(&gone4).filter(|(_, g)| **g) {
            self.slash24.remove(list, k);
            *removed.entry((true, k.prefix_len as u8)).or_default() += 1;
        }
        for (k, _) in k6.iter().zip(&gone6).filter(|(_, g)| **g) {
            *removed.entry((false, k.prefix_len as u8)).or_default() += 1;
        }
        self.flush_slash24()?;
        let counts = self.lens_mut(list);
        let mut gone = false;
        let mut total = 0;
        for ((v4, len), n) in removed {
            total += n;
            let lens = counts.family(v4);
            if let Some(c) = lens.get_mut(&len) {
                *c = c.saturating_sub(n);
                if *c == 0 {
                    lens.remove(&len);
                    gone = true;
                }
            }
        }
        if gone {
            self.publish(self.config)?;
        }
        Ok(total)
    }

    /// The list generation in force (0 or 1; see `config_flag::LIST_GEN1`).
    pub fn list_generation(&self) -> u32 {
        u32::from(self.config.flags & config_flag::LIST_GEN1 != 0)
    }

    /// Switches every list to the other generation in one config publish.
    pub fn flip_list_generation(&mut self) -> Result<(), DatapathError> {
        self.update_config(|c| c.flags ^= config_flag::LIST_GEN1)
    }

    /// Removes a list entry; false if it was not there.
    pub fn list_remove(&mut self, list: List, prefix: &Prefix) -> Result<bool, DatapathError> {
        Ok(self.list_remove_many(list, std::slice::from_ref(prefix))? == 1)
    }

    pub fn list_get(
        &self,
        list: List,
        prefix: &Prefix,
    ) -> Result<Option<ListEntry>, DatapathError> {
        let (t4, t6) = self.tables(list);
        match (prefix.v4_key(), prefix.v6_key()) {
            (Some(k), _) => t4.get(&k),
            (_, Some(k)) => t6.get(&k),
            _ => unreachable_family(),
        }
    }

    /// Every entry of a list.
    pub fn list_entries(&self, list: List) -> Result<Vec<(Prefix, ListEntry)>, DatapathError> {
        let (t4, t6) = self.tables(list);
        let mut out: Vec<(Prefix, ListEntry)> = t4
            .entries()?
            .iter()
            .map(|(k, e)| (Prefix::from_v4_key(k), *e))
            .collect();
        out.extend(
            t6.entries()?
                .iter()
                .map(|(k, e)| (Prefix::from_v6_key(k), *e)),
        );
        Ok(out)
    }

    /// Entries of a list's tables that found both their buckets full and
    /// sit in the spill maps (v4, v6).
    pub fn list_spilled(&self, list: List) -> (u64, u64) {
        let (t4, t6) = self.tables(list);
        (t4.spilled(), t6.spilled())
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

/// The live maps as the decision code sees them, read-only: rate-table sets
/// are copied, bans are not written, so asking changes nothing.
pub struct ReadOnlyView<'a>(pub &'a Datapath);

fn found<V>(r: Result<V, MapError>) -> Option<V> {
    r.ok()
}

impl Tables for ReadOnlyView<'_> {
    fn list_v4(&self, list: List, key: &V4Key) -> Option<ListEntry> {
        self.0.tables(list).0.get(key).ok().flatten()
    }

    fn list_v6(&self, list: List, key: &V6Key) -> Option<ListEntry> {
        self.0.tables(list).1.get(key).ok().flatten()
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
        f: impl FnOnce(&mut RateSet, &mut RateBuckets, &mut RateExtra) -> R,
    ) -> Option<R> {
        let mut set = self.0.rate_sets.get(&index, 0).ok()?;
        let mut buckets = self.0.rate_buckets.get(&index, 0).ok()?;
        let mut extra = self.0.rate_extra.get(&index, 0).ok()?;
        Some(f(&mut set, &mut buckets, &mut extra))
    }

    fn count(&self, _stat: u32) {}

    fn ban_started(&self, _ban: &BanStarted) {}
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
    Err(DatapathError::Invalid(
        "prefix is neither IPv4 nor IPv6".into(),
    ))
}

/// A random 64-bit seed from the kernel.
/// The secret seed of the list and rate tables' hashes: from getrandom, or
/// an error. Never from the clock: a guessable seed lets an attacker pick
/// sources that collide in one rate set or list bucket.
fn random_seed() -> Result<u64, DatapathError> {
    let mut buf = [0u8; 8];
    // SAFETY: getrandom writes at most buf.len() bytes into buf.
    let n = unsafe { libc::getrandom(buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n != buf.len() as isize {
        return Err(DatapathError::Invalid(format!(
            "could not read a random hash seed from getrandom(2): {}",
            std::io::Error::last_os_error()
        )));
    }
    Ok(u64::from_ne_bytes(buf) | 1)
}
