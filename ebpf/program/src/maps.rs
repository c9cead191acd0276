//! The program's maps and the `Tables` view of them used by the decision.
//!
//! Capacities here are defaults; the agent sets the real ones at load time.
//! The allow and block tables are arrays the agent places keys in
//! (`rampart_common::list_table`), the ban tables plain hash maps; none is
//! LRU: an explicit block must never be evicted by a flood of new sources.
use aya_ebpf::{
    bindings::xdp_md,
    bindings::{BPF_F_MMAPABLE, BPF_F_NO_PREALLOC},
    helpers::generated::{bpf_jiffies64, bpf_ktime_get_coarse_ns},
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf, lpm_trie::Key},
    programs::XdpContext,
};
use rampart_common::{
    abi::{
        Addr, BanEntry, CONFIG_SLOTS, COUNTER_ENTRIES, Config, Counter, Event, FloodState,
        ListEntry, MAX_IFINDEX, MAX_POLICIES, NO_BAN_ENTRIES, Policy, RateBuckets, RateExtra,
        RateSet, V4Key, V6Key, VERIFIED_HINT_WORDS, Verified, action, event_kind, list_table_index,
        slash24, stat,
    },
    decide::{
        AckCheck, BanStarted, List, Metered, Tables, Verdict, meter, prefix_lens, probe_ban_v4,
        probe_ban_v6, probe_list_v4, probe_list_v6, start_ban, syn_verdict, v4_list_may_match,
    },
    flood::verified_hint,
    list_table::{self, V4Slot, V6Slot},
    parse::{Packet, Parsed, Source, TcpAt, tcp_at},
};

use crate::{
    cookie::{ack, rampart_ack_check, rampart_syn_answer},
    packet::XdpFrame,
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
static FLOOD: Array<FloodState> = Array::with_max_entries(MAX_POLICIES, 0);
/// Verified sources. LRU, unlike every other table: a source that is not
/// remembered only has to prove itself again, and a flood cannot fill the
/// table (spoofed sources never get in).
#[map]
static VERIFIED_V4: LruHashMap<u32, Verified> = LruHashMap::with_max_entries(1 << 16, 0);
#[map]
static VERIFIED_V6: LruHashMap<Addr, Verified> = LruHashMap::with_max_entries(1 << 16, 0);
/// Which addresses may be verified (`rampart_common::flood::verified_hint`).
#[map]
static VERIFIED_HINT: Array<u64> = Array::with_max_entries(VERIFIED_HINT_WORDS, 0);
/// Ranges never banned by the program (keys: the address bytes in network
/// order, as a source's). Read only on the ban path.
#[map]
static NO_BAN_V4: LpmTrie<u32, u8> = LpmTrie::with_max_entries(NO_BAN_ENTRIES, 0);
#[map]
static NO_BAN_V6: LpmTrie<Addr, u8> = LpmTrie::with_max_entries(NO_BAN_ENTRIES, 0);
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
        // SAFETY: a helper without arguments.
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
            // passed initialised memory of the key's size. Copied to this
            // function's stack, volatile so that the copy stays: the spill
            // lookup uses it as a map key, and verifiers before 6.2 take
            // only stack, packet or map memory there, not an argument.
            let key: $key = unsafe { core::ptr::read_volatile(key) };
            let key = &key;
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
            encode(found.filter(|entry| entry.live(now_ns)))
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

/// A whole list lookup out of line (see `Tables::find_list_v4`): the loop
/// over the prefix lengths in use, each length's probe a call to the
/// per-table global function above. Returns [`FOUND`] and the flags, or 0.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn rampart_find_v4(cfg: *const Config, list: u32, addr: u32) -> u32 {
    // SAFETY: null checked; the verifier checked that the caller passed a
    // Config's worth of initialised memory.
    let Some(cfg) = (unsafe { cfg.as_ref() }) else {
        return 0;
    };
    encode(probe_list_v4(
        &BpfTables::without_packet(cfg),
        cfg,
        list_of(list),
        addr,
        &now_ns,
    ))
}

/// [`rampart_find_v4`] for IPv6 sources.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn rampart_find_v6(cfg: *const Config, list: u32, addr: *const Addr) -> u32 {
    // SAFETY: both null checked; the verifier checked each points to
    // initialised memory of its type's size.
    let (Some(cfg), Some(addr)) = (unsafe { cfg.as_ref() }, unsafe { addr.as_ref() }) else {
        return 0;
    };
    encode(probe_list_v6(
        &BpfTables::without_packet(cfg),
        cfg,
        list_of(list),
        addr,
        &now_ns,
    ))
}

/// A whole ban lookup out of line (see `Tables::find_ban_v4`): 1 when a
/// live ban covers the source, else 0.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn rampart_ban_v4(cfg: *const Config, addr: u32, now: u64) -> u32 {
    // SAFETY: as in `rampart_find_v4`.
    let Some(cfg) = (unsafe { cfg.as_ref() }) else {
        return 0;
    };
    probe_ban_v4(&BpfTables::without_packet(cfg), cfg, addr, now) as u32
}

/// [`rampart_ban_v4`] for IPv6 sources.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn rampart_ban_v6(cfg: *const Config, addr: *const Addr, now: u64) -> u32 {
    // SAFETY: as in `rampart_find_v6`.
    let (Some(cfg), Some(addr)) = (unsafe { cfg.as_ref() }, unsafe { addr.as_ref() }) else {
        return 0;
    };
    probe_ban_v6(&BpfTables::without_packet(cfg), cfg, addr, now) as u32
}

/// Metering out of line (see `Tables::meter`): bit 0 set when the packet
/// conforms, bit 1 when a ban is due, bit 2 for a new source; the drop
/// reason in bits 8-15.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn rampart_meter(
    cfg: *const Config,
    src: *const Source,
    index: u32,
    len: u32,
    now: u64,
) -> u32 {
    // SAFETY: both null checked; the verifier checked each points to
    // initialised memory of its type's size.
    let (Some(cfg), Some(src)) = (unsafe { cfg.as_ref() }, unsafe { src.as_ref() }) else {
        return 1;
    };
    let m = meter(&BpfTables::without_packet(cfg), cfg, index, src, len, now);
    m.conforms as u32
        | (m.ban_due as u32) << 1
        | (m.new_source as u32) << 2
        | (m.drop_reason as u32) << 8
}

/// A TCP policy's flood defence out of line (see `Tables::defend_syn`):
/// the verdict's action, reason and policy, a byte each. It takes the context, which the SYN
/// answer and the ACK check hand to the kernel's helpers. `policy` holds
/// the policy index, and bit 8 dry-run (BPF calls take five arguments).
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn rampart_syn_defence(
    ctx: *mut xdp_md,
    cfg: *const Config,
    pkt: *const Packet,
    policy: u32,
    now: u64,
) -> u32 {
    // SAFETY: both null checked; the verifier checked each points to
    // initialised memory of its type's size.
    let (Some(cfg), Some(pkt)) = (unsafe { cfg.as_ref() }, unsafe { pkt.as_ref() }) else {
        return 0;
    };
    let (index, dry_run) = (policy & 0xff, policy & 1 << 8 != 0);
    syn_verdict(&BpfTables { cfg, ctx }, cfg, index, pkt, now, dry_run).to_u32()
}

/// A ban out of line (see `Tables::start_ban`).
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn rampart_start_ban(
    cfg: *const Config,
    p: *const Policy,
    src: *const Source,
    index: u32,
    now: u64,
) -> u32 {
    // SAFETY: all null checked; the verifier checked each points to
    // initialised memory of its type's size.
    let (Some(cfg), Some(p), Some(src)) =
        (unsafe { cfg.as_ref() }, unsafe { p.as_ref() }, unsafe {
            src.as_ref()
        })
    else {
        return 0;
    };
    start_ban(&BpfTables::without_packet(cfg), p, index, src, now);
    0
}

/// Where a frame's TCP headers are, as the cookie functions take it: the
/// IP header's offset, the TCP header's, and bit 24 for IPv6.
#[inline(always)]
fn pack(at: &TcpAt) -> u32 {
    (at.l3 as u32 & 0xff) | (at.l4 as u32 & 0xffff) << 8 | (at.v6 as u32) << 24
}

/// The list a global function's scalar argument names.
#[inline(always)]
fn list_of(index: u32) -> List {
    if index == List::Allow.index() {
        List::Allow
    } else {
        List::Block
    }
}

/// A found entry as a global function returns it: a scalar, because
/// memory shared with the caller costs a copy each way.
#[inline(always)]
fn encode(found: Option<ListEntry>) -> u32 {
    match found {
        Some(e) => FOUND | e.flags,
        None => 0,
    }
}

/// What [`encode`] made, back as an entry. The probe has already dropped
/// expired entries, so what it found is returned as never expiring; the
/// decision still applies the flags.
#[inline(always)]
fn decode(found: u32) -> Option<ListEntry> {
    (found & FOUND != 0).then_some(ListEntry {
        expires_ns: 0,
        origin: 0,
        flags: found & !FOUND,
    })
}

/// Calls a probe with the live configuration's seed and this table's mask.
#[inline(always)]
fn probe<K>(
    cfg: &Config,
    table: usize,
    f: extern "C" fn(u64, u32, *const K) -> u32,
    key: &K,
) -> Option<ListEntry> {
    let mask = cfg.list_masks.get(table).copied().unwrap_or(0);
    decode(f(cfg.hash_seed, mask, key))
}

/// The maps as the decision sees them; list lookups need the live
/// configuration's table geometry and seed, and the flood defence the
/// packet's context (null inside the global functions, which never answer
/// or check a packet).
pub struct BpfTables<'c> {
    pub cfg: &'c Config,
    pub ctx: *mut xdp_md,
}

impl<'c> BpfTables<'c> {
    #[inline(always)]
    pub fn without_packet(cfg: &'c Config) -> Self {
        Self {
            cfg,
            ctx: core::ptr::null_mut(),
        }
    }
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
    fn find_list_v4<F: Fn() -> u64>(
        &self,
        cfg: &Config,
        list: List,
        addr: u32,
        _clock: &F,
    ) -> Option<ListEntry> {
        // A list that cannot match costs no call.
        if !v4_list_may_match(self, cfg, list, addr) {
            return None;
        }
        decode(rampart_find_v4(cfg, list.index(), addr))
    }

    #[inline(always)]
    fn find_list_v6<F: Fn() -> u64>(
        &self,
        cfg: &Config,
        list: List,
        addr: &Addr,
        _clock: &F,
    ) -> Option<ListEntry> {
        if prefix_lens(cfg, list, true).count == 0 {
            return None;
        }
        decode(rampart_find_v6(cfg, list.index(), addr))
    }

    #[inline(always)]
    fn find_ban_v4(&self, cfg: &Config, addr: u32, now: u64) -> bool {
        cfg.ban_v4.count != 0 && rampart_ban_v4(cfg, addr, now) != 0
    }

    #[inline(always)]
    fn find_ban_v6(&self, cfg: &Config, addr: &Addr, now: u64) -> bool {
        cfg.ban_v6.count != 0 && rampart_ban_v6(cfg, addr, now) != 0
    }

    #[inline(always)]
    fn meter(&self, cfg: &Config, index: u32, src: &Source, len: u32, now: u64) -> Metered {
        let m = rampart_meter(cfg, src, index, len, now);
        Metered {
            conforms: m & 1 != 0,
            ban_due: m & 2 != 0,
            drop_reason: (m >> 8) as u8,
            new_source: m & 4 != 0,
        }
    }

    #[inline(always)]
    fn defend_syn(
        &self,
        cfg: &Config,
        index: u32,
        pkt: &Packet,
        now: u64,
        dry_run: bool,
    ) -> Verdict {
        let policy = index & 0xff | (dry_run as u32) << 8;
        Verdict::from_u32(rampart_syn_defence(self.ctx, cfg, pkt, policy, now))
    }

    #[inline(always)]
    fn start_ban(&self, p: &Policy, index: u32, src: &Source, now: u64) {
        rampart_start_ban(self.cfg, p, src, index, now);
    }

    #[inline(always)]
    fn v4_slash24(&self, list: List, addr: u32) -> bool {
        let (word, bit) = slash24::slot(list.index(), addr);
        // A word that cannot be read means probe, never skip.
        V4_SLASH24.get(word).is_none_or(|w| w & bit != 0)
    }

    #[inline(always)]
    fn ban_v4(&self, key: &V4Key) -> Option<BanEntry> {
        // SAFETY: the entry is copied out at once, so no reference to map
        // memory outlives the lookup; a concurrent update can at worst give
        // this one packet a stale ban.
        unsafe { BANS_V4.get(key).copied() }
    }

    #[inline(always)]
    fn ban_v6(&self, key: &V6Key) -> Option<BanEntry> {
        // SAFETY: the entry is copied out at once, so no reference to map
        // memory outlives the lookup; a concurrent update can at worst give
        // this one packet a stale ban.
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
    fn ban_exempt(&self, src: &Source) -> bool {
        if src.family == 4 {
            NO_BAN_V4.get(Key::new(32, src.addr.v4_word())).is_some()
        } else {
            NO_BAN_V6.get(Key::new(128, src.addr)).is_some()
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
    fn with_flood<R>(&self, group: u32, f: impl FnOnce(&mut FloodState) -> R) -> Option<R> {
        let fs = FLOOD.get_ptr_mut(group)?;
        // SAFETY: a valid map value; CPUs may race on it, which costs a
        // count or a token, never unsafety.
        Some(f(unsafe { &mut *fs }))
    }

    #[inline(always)]
    fn verified(&self, src: &Source, now: u64) -> bool {
        let (word, bit) = verified_hint(&src.addr, self.cfg.hash_seed);
        if VERIFIED_HINT.get(word).is_some_and(|w| w & bit == 0) {
            return false;
        }
        // SAFETY: read at once.
        let found = unsafe {
            if src.family == 4 {
                VERIFIED_V4.get(src.addr.v4_word()).map(|v| v.expires_ns)
            } else {
                VERIFIED_V6.get(src.addr).map(|v| v.expires_ns)
            }
        };
        found.is_some_and(|expires| now < expires)
    }

    #[inline(always)]
    fn set_verified(&self, src: &Source, expires_ns: u64) {
        let (word, bit) = verified_hint(&src.addr, self.cfg.hash_seed);
        if let Some(w) = VERIFIED_HINT.get_ptr_mut(word) {
            // SAFETY: a valid map value. A lost race on the word can leave
            // a bit clear: that source is challenged again and re-proves.
            unsafe { *w |= bit };
        }
        let v = Verified { expires_ns };
        // A full LRU table makes room; an error only means this source
        // proves itself again.
        let _ = if src.family == 4 {
            VERIFIED_V4.insert(src.addr.v4_word(), v, 0)
        } else {
            VERIFIED_V6.insert(src.addr, v, 0)
        };
    }

    #[inline(always)]
    fn tcp_at(&self) -> Option<TcpAt> {
        if self.ctx.is_null() {
            return None;
        }
        tcp_at(&XdpFrame::new(&XdpContext::new(self.ctx)))
    }

    #[inline(always)]
    fn challenge(&self, pkt: &Packet, at: &TcpAt) -> bool {
        !self.ctx.is_null() && rampart_syn_answer(self.ctx, pkt, pack(at)) != 0
    }

    #[inline(always)]
    fn check_ack(&self, pkt: &Packet, at: &TcpAt) -> AckCheck {
        if self.ctx.is_null() {
            return AckCheck::NoSocket;
        }
        match rampart_ack_check(self.ctx, pkt, pack(at)) {
            ack::ESTABLISHED => AckCheck::Established,
            ack::VALID => AckCheck::ValidCookie,
            ack::BAD => AckCheck::BadCookie,
            _ => AckCheck::NoSocket,
        }
    }

    #[inline(always)]
    fn count(&self, index: u32) {
        bump(index);
    }

    #[inline(always)]
    fn observe(&self, cfg: &Config, index: u32, pkt: &Packet, len: u32, now: u64, o: u32) {
        let packed = index & 0xff | (o & 0xff) << 8 | len.min(0xffff) << 16;
        crate::observe::rampart_observe(cfg, pkt, packed, now);
    }

    #[inline(always)]
    fn ban_started(&self, ban: &BanStarted) {
        emit(&Event {
            ts_ns: now_ns(),
            ban_expires_ns: ban.ban.expires_ns,
            src: ban.addr,
            dst: Addr::default(),
            sport: 0,
            dport: 0,
            ifindex: 0,
            len: 0,
            kind: event_kind::BAN,
            family: ban.family,
            proto: 0,
            action: action::DROP,
            reason: 0,
            policy: ban.ban.policy as u8,
            prefix_len: ban.prefix_len,
            _pad: 0,
            offences: ban.ban.offences,
        });
    }
}

/// Copies an event into the ring buffer; a full buffer is counted, never
/// waited on. A copy rather than a reservation: verifiers before 6.3 cannot
/// prune while a reservation is held, and walked every path through it.
#[inline(always)]
fn emit(ev: &Event) {
    if EVENTS.output::<Event>(ev, 0).is_ok() {
        bump(stat::EVENTS_SENT);
    } else {
        bump(stat::EVENTS_LOST);
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
    let dropped = v.action == action::DROP || v.action == action::WOULD_DROP;
    if !dropped || cfg.sample_every == 0 {
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
    let pkt = match parsed {
        Parsed::Ip(p) => *p,
        Parsed::Malformed(Some(src)) => Packet {
            src: *src,
            ..Packet::default()
        },
        _ => Packet::default(),
    };
    rampart_sample(&pkt, v.to_u32(), ifindex, len, now);
}

/// A sampled drop's event, built out of line: the main program's paths
/// reach it with one call, whatever they decided. `verdict` holds the
/// action, reason and policy, a byte each.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn rampart_sample(
    pkt: *const Packet,
    verdict: u32,
    ifindex: u32,
    len: u32,
    now: u64,
) -> u32 {
    // SAFETY: null checked; the verifier checked that it points to an
    // initialised Packet.
    let Some(pkt) = (unsafe { pkt.as_ref() }) else {
        return 0;
    };
    let v = Verdict::from_u32(verdict);
    emit(&Event {
        ts_ns: now,
        ban_expires_ns: 0,
        src: pkt.src.addr,
        dst: pkt.dst,
        sport: pkt.sport,
        dport: pkt.dport,
        ifindex,
        len,
        kind: event_kind::DROP_SAMPLE,
        family: pkt.src.family,
        proto: pkt.proto,
        action: v.action,
        reason: v.reason,
        policy: v.policy,
        prefix_len: 0,
        _pad: 0,
        offences: 0,
    });
    0
}
