//! The program's maps and the `Tables` view of them used by the decision.
//!
//! Capacities here are defaults; the agent sets the real ones at load time.
//! The allow and block tables are arrays the agent places keys in
//! (`rampart_common::list_table`), the ban tables plain hash maps; none is
//! LRU: an explicit block must never be evicted by a flood of new sources.
use aya_ebpf::{
    bindings::{BPF_F_MMAPABLE, BPF_F_NO_PREALLOC},
    helpers::generated::{bpf_jiffies64, bpf_ktime_get_coarse_ns},
    macros::map,
    maps::{Array, HashMap, PerCpuArray, RingBuf},
};
use rampart_common::{
    abi::{
        Addr, BanEntry, CONFIG_SLOTS, COUNTER_ENTRIES, Config, Counter, Event, ListEntry,
        MAX_IFINDEX, MAX_POLICIES, Policy, RateBuckets, RateExtra, RateSet, V4Key, V6Key, action,
        event_kind, list_table_index, slash24, stat,
    },
    decide::{BanStarted, List, Tables, Verdict},
    list_table::{self, V4Slot, V6Slot},
    parse::Parsed,
};

#[map]
static CONFIG: Array<Config> = Array::with_max_entries(CONFIG_SLOTS, 0);
#[map]
static CONFIG_ACTIVE: Array<u32> = Array::with_max_entries(1, 0);
#[map]
pub static IFACE_SLOTS: Array<u32> = Array::with_max_entries(MAX_IFINDEX, 0);
#[map]
pub static COUNTERS: PerCpuArray<Counter> = PerCpuArray::with_max_entries(COUNTER_ENTRIES, 0);
#[map]
static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(stat::COUNT, 0);
/// The list tables are memory-mappable so the agent reads and writes slots
/// in place, without a syscall per slot (`agent/src/list_table.rs`).
#[map]
static ALLOW_V4: Array<V4Slot> = Array::with_max_entries(1 << 17, BPF_F_MMAPABLE);
#[map]
static ALLOW_V6: Array<V6Slot> = Array::with_max_entries(1 << 17, BPF_F_MMAPABLE);
#[map]
static BLOCK_V4: Array<V4Slot> = Array::with_max_entries(1 << 21, BPF_F_MMAPABLE);
#[map]
static BLOCK_V6: Array<V6Slot> = Array::with_max_entries(1 << 19, BPF_F_MMAPABLE);
#[map]
static ALLOW_V4_SPILL: HashMap<V4Key, ListEntry> =
    HashMap::with_max_entries(1 << 16, BPF_F_NO_PREALLOC);
#[map]
static ALLOW_V6_SPILL: HashMap<V6Key, ListEntry> =
    HashMap::with_max_entries(1 << 16, BPF_F_NO_PREALLOC);
#[map]
static BLOCK_V4_SPILL: HashMap<V4Key, ListEntry> =
    HashMap::with_max_entries(1 << 20, BPF_F_NO_PREALLOC);
#[map]
static BLOCK_V6_SPILL: HashMap<V6Key, ListEntry> =
    HashMap::with_max_entries(1 << 18, BPF_F_NO_PREALLOC);
#[map]
static ALLOW_V4_SPFLAG: Array<u64> = Array::with_max_entries(1 << 9, 0);
#[map]
static ALLOW_V6_SPFLAG: Array<u64> = Array::with_max_entries(1 << 9, 0);
#[map]
static BLOCK_V4_SPFLAG: Array<u64> = Array::with_max_entries(1 << 13, 0);
#[map]
static BLOCK_V6_SPFLAG: Array<u64> = Array::with_max_entries(1 << 11, 0);
#[map]
static V4_SLASH24: Array<u64> = Array::with_max_entries(slash24::WORDS, 0);
#[map]
static BANS_V4: HashMap<V4Key, BanEntry> = HashMap::with_max_entries(1 << 16, 0);
#[map]
static BANS_V6: HashMap<V6Key, BanEntry> = HashMap::with_max_entries(1 << 16, 0);
#[map]
static POLICIES: Array<Policy> = Array::with_max_entries(MAX_POLICIES, 0);
/// The rate table's maps are memory-mappable only for the alignment that
/// brings: values start on a page, so two sets share a cache line and each
/// set's buckets, and extras, fill one.
#[map]
static RATE_SETS: Array<RateSet> = Array::with_max_entries(1 << 16, BPF_F_MMAPABLE);
#[map]
static RATE_BUCKETS: Array<RateBuckets> = Array::with_max_entries(1 << 16, BPF_F_MMAPABLE);
#[map]
static RATE_EXTRA: Array<RateExtra> = Array::with_max_entries(1 << 16, BPF_F_MMAPABLE);
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(1 << 20, 0);
#[map]
static SAMPLER: PerCpuArray<SamplerState> = PerCpuArray::with_max_entries(1, 0);
#[map]
static CLOCK: PerCpuArray<ClockCache> = PerCpuArray::with_max_entries(1, 0);

/// Per-CPU sampling state: drops left until the next sample (a countdown,
/// not a modulo: division is slow), and the current one-second window.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct SamplerState {
    until_next: u64,
    window_start_ns: u64,
    in_window: u64,
}

/// The live configuration (see `abi::CONFIG_SLOTS`).
#[inline(always)]
pub fn config() -> Option<&'static Config> {
    let active = CONFIG_ACTIVE.get(0).copied().unwrap_or(0);
    CONFIG.get(active & 1)
}

/// The coarse clock as last read on this CPU, and the tick it was read in.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ClockCache {
    jiffies: u64,
    ns: u64,
}

/// `CLOCK_MONOTONIC` at tick resolution: rate limits and expiries do not
/// need better than a few milliseconds.
///
/// The coarse clock only moves when the tick does, so it is read once per
/// tick per CPU and cached against `jiffies`: the verifier turns
/// `bpf_jiffies64` into a plain load, where the clock helper is a call
/// (about 15 ns a packet on a kernel with return-thunk mitigations).
#[inline(always)]
pub fn now_ns() -> u64 {
    // SAFETY: helpers without arguments.
    let jiffies = unsafe { bpf_jiffies64() };
    let Some(cache) = CLOCK.get_ptr_mut(0) else {
        return unsafe { bpf_ktime_get_coarse_ns() };
    };
    // SAFETY: per-CPU value, only this CPU writes it. A zero `ns` marks an
    // empty cache (the monotonic clock is never zero once booted).
    unsafe {
        if (*cache).jiffies != jiffies || (*cache).ns == 0 {
            (*cache).ns = bpf_ktime_get_coarse_ns();
            (*cache).jiffies = jiffies;
        }
        (*cache).ns
    }
}

/// Set in a probe's result when it found a live entry; the entry's flags
/// are the rest.
const FOUND: u32 = 1 << 31;

/// Defines a list table's probe as a BPF global function: the verifier
/// checks a global function once, for any arguments, where an inlined probe
/// is checked again at every prefix length of every list, which is more than
/// its budget allows. Exported by name in `build.rs`.
///
/// It returns [`FOUND`] and the entry's flags for a live entry, else 0: a
/// scalar, because memory shared with the caller costs a copy each way. A
/// key pointer may be null as far as the verifier knows, hence the check.
macro_rules! list_probe {
    ($name:ident, $key:ty, $slots:ident, $flags:ident, $spill:ident) => {
        #[unsafe(no_mangle)]
        #[inline(never)]
        pub extern "C" fn $name(seed: u64, mask: u32, key: *const $key) -> u32 {
            if key.is_null() {
                return 0;
            }
            // SAFETY: non-null, and the verifier checked that the caller
            // passed initialised memory of the key's size.
            let key = unsafe { &*key };
            let found = list_table::find(
                key,
                seed,
                mask,
                |i| $slots.get(i),
                |w| $flags.get(w).copied(),
                // SAFETY: copied out at once; a concurrent delete can at
                // worst give a stale entry for this one packet.
                |k| unsafe { $spill.get(k).copied() },
            );
            match found {
                Some(entry) if entry.live(now_ns) => FOUND | entry.flags,
                _ => 0,
            }
        }
    };
}

list_probe!(
    rampart_allow_v4,
    V4Key,
    ALLOW_V4,
    ALLOW_V4_SPFLAG,
    ALLOW_V4_SPILL
);
list_probe!(
    rampart_block_v4,
    V4Key,
    BLOCK_V4,
    BLOCK_V4_SPFLAG,
    BLOCK_V4_SPILL
);
list_probe!(
    rampart_allow_v6,
    V6Key,
    ALLOW_V6,
    ALLOW_V6_SPFLAG,
    ALLOW_V6_SPILL
);
list_probe!(
    rampart_block_v6,
    V6Key,
    BLOCK_V6,
    BLOCK_V6_SPFLAG,
    BLOCK_V6_SPILL
);

/// Calls a probe with the live configuration's seed and this table's mask.
/// The probe has already dropped expired entries, so what it finds is
/// returned as never expiring; the decision still applies the flags.
#[inline(always)]
fn probe<K>(
    cfg: &Config,
    table: usize,
    f: extern "C" fn(u64, u32, *const K) -> u32,
    key: &K,
) -> Option<ListEntry> {
    let mask = cfg.list_masks.get(table).copied().unwrap_or(0);
    let found = f(cfg.hash_seed, mask, key);
    (found & FOUND != 0).then_some(ListEntry {
        expires_ns: 0,
        origin: 0,
        flags: found & !FOUND,
    })
}

/// The maps as the decision sees them; list lookups need the live
/// configuration's table geometry and seed.
pub struct BpfTables<'c> {
    pub cfg: &'c Config,
}

impl Tables for BpfTables<'_> {
    #[inline(always)]
    fn list_v4(&self, list: List, key: &V4Key) -> Option<ListEntry> {
        let table = list_table_index(list.index(), false);
        match list {
            List::Allow => probe(self.cfg, table, rampart_allow_v4, key),
            List::Block => probe(self.cfg, table, rampart_block_v4, key),
        }
    }

    #[inline(always)]
    fn list_v6(&self, list: List, key: &V6Key) -> Option<ListEntry> {
        let table = list_table_index(list.index(), true);
        match list {
            List::Allow => probe(self.cfg, table, rampart_allow_v6, key),
            List::Block => probe(self.cfg, table, rampart_block_v6, key),
        }
    }

    #[inline(always)]
    fn v4_slash24(&self, list: List, addr: u32) -> bool {
        let (word, bit) = slash24::slot(list.index(), addr);
        // A word that cannot be read means probe, never skip.
        V4_SLASH24.get(word).is_none_or(|w| w & bit != 0)
    }

    #[inline(always)]
    fn ban_v4(&self, key: &V4Key) -> Option<BanEntry> {
        // SAFETY: as above.
        unsafe { BANS_V4.get(key).copied() }
    }

    #[inline(always)]
    fn ban_v6(&self, key: &V6Key) -> Option<BanEntry> {
        // SAFETY: as above.
        unsafe { BANS_V6.get(key).copied() }
    }

    #[inline(always)]
    fn offences_v4(&self, key: &V4Key) -> u32 {
        // SAFETY: read at once.
        match unsafe { BANS_V4.get(key) } {
            Some(b) => b.offences,
            None => 0,
        }
    }

    #[inline(always)]
    fn offences_v6(&self, key: &V6Key) -> u32 {
        // SAFETY: read at once.
        match unsafe { BANS_V6.get(key) } {
            Some(b) => b.offences,
            None => 0,
        }
    }

    #[inline(always)]
    fn set_ban_v4(&self, key: &V4Key, ban: &BanEntry) -> bool {
        BANS_V4.insert(key, ban, 0).is_ok()
    }

    #[inline(always)]
    fn set_ban_v6(&self, key: &V6Key, ban: &BanEntry) -> bool {
        BANS_V6.insert(key, ban, 0).is_ok()
    }

    #[inline(always)]
    fn policy(&self, index: u32) -> Option<&Policy> {
        POLICIES.get(index)
    }

    #[inline(always)]
    fn with_rate_set<R>(
        &self,
        index: u32,
        f: impl FnOnce(&mut RateSet, &mut RateBuckets, &mut RateExtra) -> R,
    ) -> Option<R> {
        // Only addresses: nothing is read from a map until `f` reads it.
        let set = RATE_SETS.get_ptr_mut(index)?;
        let buckets = RATE_BUCKETS.get_ptr_mut(index)?;
        let extra = RATE_EXTRA.get_ptr_mut(index)?;
        // SAFETY: valid map values. CPUs may race on one source's bucket;
        // the cost is an occasional lost token update, never unsafety, and
        // atomics on every packet would cost more than they save.
        Some(f(unsafe { &mut *set }, unsafe { &mut *buckets }, unsafe {
            &mut *extra
        }))
    }

    #[inline(always)]
    fn count(&self, index: u32) {
        bump(index);
    }

    #[inline(always)]
    fn ban_started(&self, ban: &BanStarted) {
        let Some(mut slot) = EVENTS.reserve::<Event>(0) else {
            bump(stat::EVENTS_LOST);
            return;
        };
        let ev = slot.as_mut_ptr();
        // SAFETY: a reserved, exclusively owned ring-buffer record of size
        // Event; every field is written before submit.
        unsafe {
            (*ev).ts_ns = now_ns();
            (*ev).ban_expires_ns = ban.ban.expires_ns;
            (*ev).src = ban.addr;
            (*ev).dst = Addr::default();
            (*ev).sport = 0;
            (*ev).dport = 0;
            (*ev).ifindex = 0;
            (*ev).len = 0;
            (*ev).kind = event_kind::BAN;
            (*ev).family = ban.family;
            (*ev).proto = 0;
            (*ev).action = action::DROP;
            (*ev).reason = 0;
            (*ev).policy = ban.ban.policy as u8;
            (*ev).prefix_len = ban.prefix_len;
            (*ev)._pad = 0;
            (*ev).offences = ban.ban.offences;
        }
        slot.submit(0);
        bump(stat::EVENTS_SENT);
    }
}

#[inline(always)]
fn bump(index: u32) {
    if let Some(c) = STATS.get_ptr_mut(index) {
        // SAFETY: per-CPU value, written only by this CPU.
        unsafe { *c += 1 };
    }
}

/// Samples drops (and would-be drops) into the ring buffer: one in
/// `sample_every`, at most `sample_cap_per_sec` per second per CPU.
#[inline(always)]
pub fn sample(cfg: &Config, parsed: &Parsed, v: &Verdict, ifindex: u32, len: u32) {
    if v.action == action::PASS || cfg.sample_every == 0 {
        return;
    }
    let Some(state) = SAMPLER.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: per-CPU value, written only by this CPU.
    let state = unsafe { &mut *state };
    if state.until_next > 0 {
        state.until_next -= 1;
        return;
    }
    state.until_next = cfg.sample_every as u64 - 1;
    // Read here, not per packet: only sampled drops need the time.
    let now = now_ns();
    if now.saturating_sub(state.window_start_ns) >= 1_000_000_000 {
        state.window_start_ns = now;
        state.in_window = 0;
    }
    if state.in_window >= cfg.sample_cap_per_sec as u64 {
        bump(stat::SAMPLES_CAPPED);
        return;
    }
    state.in_window += 1;
    // A full ring buffer is counted, never waited on.
    let Some(mut slot) = EVENTS.reserve::<Event>(0) else {
        bump(stat::EVENTS_LOST);
        return;
    };
    let ev = slot.as_mut_ptr();
    // SAFETY: a reserved, exclusively owned record; every field is written.
    unsafe {
        (*ev).ts_ns = now;
        (*ev).ban_expires_ns = 0;
        (*ev).src = Addr::default();
        (*ev).dst = Addr::default();
        (*ev).sport = 0;
        (*ev).dport = 0;
        (*ev).family = 0;
        (*ev).proto = 0;
        match parsed {
            Parsed::Ip(p) => {
                (*ev).family = p.src.family;
                (*ev).src = p.src.addr;
                (*ev).dst = p.dst;
                (*ev).proto = p.proto;
                (*ev).sport = p.sport;
                (*ev).dport = p.dport;
            }
            Parsed::Malformed(Some(src)) => {
                (*ev).family = src.family;
                (*ev).src = src.addr;
            }
            _ => {}
        }
        (*ev).ifindex = ifindex;
        (*ev).len = len;
        (*ev).kind = event_kind::DROP_SAMPLE;
        (*ev).action = v.action;
        (*ev).reason = v.reason;
        (*ev).policy = v.policy;
        (*ev).prefix_len = 0;
        (*ev)._pad = 0;
        (*ev).offences = 0;
    }
    slot.submit(0);
    bump(stat::EVENTS_SENT);
}
