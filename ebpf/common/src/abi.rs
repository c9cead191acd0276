//! The layout of every BPF map shared by the program and the agent.
//!
//! All types are `#[repr(C)]` without implicit padding (sizes are asserted
//! below) and hold only integers and byte arrays, so they are valid `aya::Pod`.
//! Flags and enumerations are plain integer constants for the same reason.

/// Bumped whenever a map's key or value layout changes; pins live under a
/// directory named after it so an agent never adopts maps it cannot read.
pub const LAYOUT_VERSION: u32 = 5;

/// Entries each exempt-from-ban trie holds.
pub const NO_BAN_ENTRIES: u32 = 1024;

/// Map names as the kernel and the pin directory see them (at most 15 bytes).
pub mod map_name {
    /// Defines each map's name once, and [`ALL`] from the same list.
    macro_rules! names {
        ($($(#[$doc:meta])* $name:ident),* $(,)?) => {
            $($(#[$doc])* pub const $name: &str = stringify!($name);)*
            /// Every map of the program: each is pinned under its name.
            pub const ALL: &[&str] = &[$($name),*];
        };
    }
    names!(
        CONFIG,
        CONFIG_ACTIVE,
        IFACE_SLOTS,
        COUNTERS,
        STATS,
        ALLOW_V4,
        ALLOW_V6,
        BLOCK_V4,
        BLOCK_V6,
        /// Each list table's spill hash map and spill flags
        /// ([`crate::list_table`]).
        ALLOW_V4_SPILL,
        ALLOW_V6_SPILL,
        BLOCK_V4_SPILL,
        BLOCK_V6_SPILL,
        ALLOW_V4_SPFLAG,
        ALLOW_V6_SPFLAG,
        BLOCK_V4_SPFLAG,
        BLOCK_V6_SPFLAG,
        BANS_V4,
        BANS_V6,
        POLICIES,
        RATE_SETS,
        RATE_BUCKETS,
        RATE_EXTRA,
        EVENTS,
        V4_SLASH24,
        /// The sampler's and the clock cache's per-CPU state.
        SAMPLER,
        CLOCK,
        FLOOD,
        VERIFIED_V4,
        VERIFIED_V6,
        VERIFIED_HINT,
        /// Ranges the program never bans by itself (`[bans] exempt`): LPM
        /// tries, read only when a ban is due.
        NO_BAN_V4,
        NO_BAN_V6,
        /// The traffic detector's per-policy counters and source sketches
        /// ([`PolicyStats`], [`Sketch`]).
        POLICY_STATS,
        SKETCHES,
    );
}

/// The /24 summary of the IPv4 lists ([`map_name::V4_SLASH24`]): one bit per
/// /24 and list, set while the list holds an entry of [`slash24::MIN_LEN`]
/// bits or longer inside that /24. A source whose bit is clear skips the
/// probes of those lengths; on a typical list that is most sources and most
/// probes.
pub mod slash24 {
    /// The shortest prefix length the summary covers.
    pub const MIN_LEN: u8 = 24;
    /// Words per list: 2^24 /24s, 64 to a word.
    pub const WORDS_PER_LIST: u32 = 1 << 18;
    /// Words in the map: the allowlist's, then the blocklist's.
    pub const WORDS: u32 = 2 * WORDS_PER_LIST;

    /// The bit, counted across the whole map, of the /24 holding `addr`
    /// (the four address bytes as one native-order word) in list `list`
    /// (0 allow, 1 block).
    #[inline(always)]
    pub fn bit(list: u32, addr: u32) -> u32 {
        list << 24 | u32::from_be(addr) >> 8
    }

    /// The word of the map holding [`bit`], and the bit's mask in it.
    #[inline(always)]
    pub fn slot(list: u32, addr: u32) -> (u32, u64) {
        let b = bit(list, addr);
        (b >> 6, 1u64 << (b & 63))
    }
}

/// Name of the XDP program in the object file.
pub const PROGRAM_NAME: &str = "rampart";

/// What happened to a packet. Indexes the counters.
pub mod action {
    pub const PASS: u8 = 0;
    pub const DROP: u8 = 1;
    /// Would have been dropped, but dry-run let it pass.
    pub const WOULD_DROP: u8 = 2;
    /// Answered by the program itself (a SYN-ACK carrying a SYN cookie,
    /// sent back with `XDP_TX`): the packet never reaches the stack.
    pub const CHALLENGE: u8 = 3;
    /// Under dry-run: would have been answered with a SYN cookie; passed.
    pub const WOULD_CHALLENGE: u8 = 4;
    pub const COUNT: usize = 5;
    pub const NAMES: [&str; COUNT] = ["pass", "drop", "would_drop", "challenge", "would_challenge"];
}

/// Why it happened. Indexes the counters.
pub mod reason {
    /// No rule matched (or the source was within its rate limit).
    pub const NONE: u8 = 0;
    pub const ALLOWLIST: u8 = 1;
    pub const BLOCKLIST: u8 = 2;
    pub const BAN: u8 = 3;
    pub const RATELIMIT: u8 = 4;
    pub const MALFORMED: u8 = 5;
    pub const NON_IP: u8 = 6;
    /// A SYN answered with a SYN cookie (flood defence).
    pub const SYN_COOKIE: u8 = 7;
    /// An ACK from an unverified source whose cookie the kernel rejected.
    pub const BAD_COOKIE: u8 = 8;
    /// A packet of a source the policy does not track, over the policy's
    /// newcomer budget.
    pub const NEWCOMER: u8 = 9;
    pub const COUNT: usize = 10;
    pub const NAMES: [&str; COUNT] = [
        "none",
        "allowlist",
        "blocklist",
        "ban",
        "ratelimit",
        "malformed",
        "non_ip",
        "syn_cookie",
        "bad_cookie",
        "newcomer_budget",
    ];
}

/// Interfaces get a counter slot; slot 0 collects interfaces without one.
pub const MAX_IFACE_SLOTS: u32 = 64;
/// `IFACE_SLOTS` is an array indexed by ifindex (array lookups are inlined by
/// the verifier, a hash lookup is not); higher ifindexes count in slot 0.
/// Ifindexes are handed out cyclically, so they grow with every interface a
/// namespace has ever created: a host that churns veths (containers, tests)
/// passes 1024 within days. 65,536 entries are 256 KiB.
pub const MAX_IFINDEX: u32 = 1 << 16;

/// Index into `COUNTERS` (a per-CPU array).
#[inline(always)]
pub const fn counter_index(slot: u32, action: u8, reason: u8) -> u32 {
    (slot * action::COUNT as u32 + action as u32) * reason::COUNT as u32 + reason as u32
}
pub const COUNTER_ENTRIES: u32 = MAX_IFACE_SLOTS * (action::COUNT * reason::COUNT) as u32;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counter {
    pub packets: u64,
    pub bytes: u64,
}

/// Indexes of `STATS`, a per-CPU array of `u64` event counts.
pub mod stat {
    /// An idle rate-limit slot was taken over by a new source.
    pub const RATE_EVICTIONS: u32 = 0;
    /// A new source found every slot of its set busy and was metered by the
    /// set's shared overflow bucket.
    pub const RATE_OVERFLOW: u32 = 1;
    /// Events (samples or bans) that did not fit in the ring buffer.
    pub const EVENTS_LOST: u32 = 2;
    pub const EVENTS_SENT: u32 = 3;
    pub const BANS_STARTED: u32 = 4;
    /// A ban could not be recorded because the ban table was full.
    pub const BAN_TABLE_FULL: u32 = 5;
    /// Drop samples skipped by the per-second cap.
    pub const SAMPLES_CAPPED: u32 = 6;
    /// ACKs whose SYN cookie the kernel accepted: their source is verified.
    pub const COOKIES_VALID: u32 = 7;
    /// SYNs that cookie mode would have answered but could not: no listener
    /// in this network namespace, or the kernel refused a cookie (its
    /// `tcp_syncookies` is 0). They went on to the stack, metered.
    pub const COOKIE_FALLBACK: u32 = 8;
    /// Sources proven by an established connection (not a cookie): verified.
    pub const VERIFIED_BY_SOCKET: u32 = 9;
    /// Bans not started because the source is in an exempt range.
    pub const BAN_EXEMPT: u32 = 10;
    /// Bans not started because the source is verified: a spoofed flood in
    /// its name must not lock a real client out.
    pub const BAN_SPARED_VERIFIED: u32 = 11;
    pub const COUNT: u32 = 12;
}

/// Global flags in [`Config::flags`].
pub mod config_flag {
    pub const DRY_RUN: u32 = 1;
    /// The list generation in force is 1 (else 0). A whole feed is replaced
    /// atomically: its new entries are staged hidden from the current
    /// generation and its leaving entries hidden from the next one, then
    /// this bit flips, in one config publish (see [`super::entry_flag`]).
    pub const LIST_GEN1: u32 = 2;
    /// SYN cookies cannot work on this host (the agent found
    /// `net.ipv4.tcp_syncookies` off or missing): never challenge.
    pub const NO_SYN_COOKIES: u32 = 4;
}

/// Longest list of distinct prefix lengths a list can use per family.
/// IPv4 needs at most 33; IPv6 lists are refused a 45th distinct length.
pub const MAX_PREFIX_LENS: usize = 44;

/// The distinct prefix lengths present in one list, longest first, so that a
/// lookup probes one hash map per length in use instead of walking a trie.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PrefixLens {
    pub count: u32,
    pub lens: [u8; MAX_PREFIX_LENS],
}

impl Default for PrefixLens {
    fn default() -> Self {
        Self {
            count: 0,
            lens: [0; MAX_PREFIX_LENS],
        }
    }
}

impl PrefixLens {
    /// The lengths in use, longest first.
    pub fn as_slice(&self) -> &[u8] {
        let n = (self.count as usize).min(MAX_PREFIX_LENS);
        &self.lens[..n]
    }
}

/// `CONFIG` holds two of these; `CONFIG_ACTIVE[0]` says which one is live.
/// User space writes the idle copy whole, then flips the index (one aligned
/// 4-byte store), so a packet never sees a half-written configuration.
pub const CONFIG_SLOTS: u32 = 2;

/// The live configuration (one of the two `CONFIG` entries).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// [`config_flag`] bits.
    pub flags: u32,
    /// Non-zero: let IP packets that cannot be parsed pass. Zero (the value
    /// of a fresh map) drops them, so an unconfigured program fails closed.
    pub malformed_pass: u32,
    /// Number of entries of `POLICIES` in use, evaluated in order.
    pub policy_count: u32,
    /// Sample one drop in this many into the ring buffer; 0 turns samples off.
    pub sample_every: u32,
    /// At most this many samples per second on each CPU.
    pub sample_cap_per_sec: u32,
    /// Number of sets in `RATE_SETS` minus one (the count is a power of two).
    pub rate_set_mask: u32,
    /// Secret seed of the rate-table hash, so that an attacker cannot aim
    /// sources at the set of a legitimate client.
    pub hash_seed: u64,
    pub allow_v4: PrefixLens,
    pub allow_v6: PrefixLens,
    pub block_v4: PrefixLens,
    pub block_v6: PrefixLens,
    /// Aggregation prefixes used by policies: the lengths bans are keyed by.
    pub ban_v4: PrefixLens,
    pub ban_v6: PrefixLens,
    /// Bucket count minus one of each list table ([`crate::list_table`]),
    /// indexed by [`list_table_index`]. List lookups hash with `hash_seed`.
    pub list_masks: [u32; 4],
    /// How long a source stays verified after it last proved itself.
    pub verified_ttl_ns: u64,
}

/// The index of a list table in [`Config::list_masks`]: allow v4, allow
/// v6, block v4, block v6.
#[inline(always)]
pub const fn list_table_index(list: u32, v6: bool) -> usize {
    (list * 2 + v6 as u32) as usize
}

/// A 16-byte address as it sits in memory, held as two native-order words
/// (IPv4 takes the first four bytes). Words, not `[u8; 16]`: the BPF backend
/// splits a byte array into sixteen scalars, and every copy, mask and hash
/// of an address then costs sixteen instructions or more.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Addr {
    pub words: [u64; 2],
}

impl Addr {
    pub const fn from_bytes(b: [u8; 16]) -> Self {
        let [
            a0,
            a1,
            a2,
            a3,
            a4,
            a5,
            a6,
            a7,
            b0,
            b1,
            b2,
            b3,
            b4,
            b5,
            b6,
            b7,
        ] = b;
        Self {
            words: [
                u64::from_ne_bytes([a0, a1, a2, a3, a4, a5, a6, a7]),
                u64::from_ne_bytes([b0, b1, b2, b3, b4, b5, b6, b7]),
            ],
        }
    }

    pub const fn to_bytes(self) -> [u8; 16] {
        let [a0, a1, a2, a3, a4, a5, a6, a7] = self.words[0].to_ne_bytes();
        let [b0, b1, b2, b3, b4, b5, b6, b7] = self.words[1].to_ne_bytes();
        [
            a0, a1, a2, a3, a4, a5, a6, a7, b0, b1, b2, b3, b4, b5, b6, b7,
        ]
    }

    /// An IPv4 address from its four bytes loaded as one native-order word.
    /// The address as four 32-bit words in memory order (network order
    /// within each), as the kernel's socket tuples hold it.
    #[inline(always)]
    pub const fn to_words32(self) -> [u32; 4] {
        let [a, b, c, d, e, f, g, h, i, j, k, l, m, n, o, p] = self.to_bytes();
        [
            u32::from_ne_bytes([a, b, c, d]),
            u32::from_ne_bytes([e, f, g, h]),
            u32::from_ne_bytes([i, j, k, l]),
            u32::from_ne_bytes([m, n, o, p]),
        ]
    }

    #[inline(always)]
    pub const fn from_v4_word(w: u32) -> Self {
        let first = if cfg!(target_endian = "little") {
            w as u64
        } else {
            (w as u64) << 32
        };
        Self { words: [first, 0] }
    }

    /// The first four bytes as one native-order word (the IPv4 address).
    #[inline(always)]
    pub const fn v4_word(self) -> u32 {
        if cfg!(target_endian = "little") {
            self.words[0] as u32
        } else {
            (self.words[0] >> 32) as u32
        }
    }
}

/// Key of the IPv4 allow, block and ban tables: a masked prefix. Keys are
/// 8-byte aligned: the kernel build writes them in 64-bit words, and the
/// verifier refuses misaligned stack access.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct V4Key {
    pub prefix_len: u32,
    pub addr: [u8; 4],
}

/// Key of the IPv6 allow, block and ban tables: a masked prefix.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct V6Key {
    pub prefix_len: u32,
    /// Always zero (keys are compared bytewise); keeps `addr` 8-byte aligned.
    pub pad: u32,
    pub addr: Addr,
}

/// Per-entry flags in [`ListEntry::flags`].
pub mod entry_flag {
    /// Count matches as `would_drop` instead of dropping.
    pub const DRY_RUN: u32 = 1;
    /// The entry does not match while list generation 0 is in force.
    pub const HIDDEN_GEN0: u32 = 2;
    /// The entry does not match while list generation 1 is in force.
    pub const HIDDEN_GEN1: u32 = 4;
}

/// Value of the allow and block tables.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ListEntry {
    /// `CLOCK_MONOTONIC` nanoseconds after which the entry no longer matches;
    /// 0 never expires. Monotonic so that a wall-clock jump changes nothing.
    pub expires_ns: u64,
    /// The rule or feed the entry came from (assigned by the agent).
    pub origin: u32,
    /// [`entry_flag`] bits.
    pub flags: u32,
}

impl ListEntry {
    /// Whether the entry is in force; `clock` (`CLOCK_MONOTONIC` ns) is read
    /// only for an entry that can expire: in the kernel a clock read is a
    /// helper call, and a blocklist hit without expiry should not pay for one.
    #[inline(always)]
    pub fn live(&self, clock: impl FnOnce() -> u64) -> bool {
        self.expires_ns == 0 || clock() < self.expires_ns
    }

    /// Whether the entry matches under the config flags `cfg_flags` (the
    /// list generation in force).
    #[inline(always)]
    pub const fn visible(&self, cfg_flags: u32) -> bool {
        let hidden = entry_flag::HIDDEN_GEN0 << ((cfg_flags & config_flag::LIST_GEN1) >> 1);
        self.flags & hidden == 0
    }
}

/// Value of the ban tables. Entries outlive their ban for a while so that a
/// repeat offence can be recognised and punished longer.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BanEntry {
    /// `CLOCK_MONOTONIC` nanoseconds at which the ban ends.
    pub expires_ns: u64,
    /// How many times this source has been banned.
    pub offences: u32,
    /// Index of the policy that banned it.
    pub policy: u32,
}

/// Protocols a policy can match.
pub mod proto {
    pub const ANY: u8 = 0;
    /// Matches ICMP and ICMPv6.
    pub const ICMP: u8 = 1;
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;
    pub const ICMPV6: u8 = 58;
}

/// Flags in [`Policy::flags`].
pub mod policy_flag {
    pub const DRY_RUN: u8 = 1;
    /// The policy matches a destination port range (so never a non-first
    /// fragment, which carries no ports).
    pub const HAS_PORTS: u8 = 2;
    /// The traffic detector watches the policy: its packets are counted in
    /// `POLICY_STATS` and their sources in `SKETCHES`.
    pub const OBSERVE: u8 = 4;
    /// The detector has engaged the policy's flood defence for an anomaly:
    /// `auto` cookie mode answers as if its SYN rate were over the
    /// threshold (the agent also writes the tighter newcomer budget).
    pub const DEFEND: u8 = 8;
}

/// Each policy entry's traffic counters are split over this many slots by
/// destination port (see [`Policy::port_shift`]), so the detector can see a
/// flood aimed at one port of a range.
pub const PORT_SLOTS: u32 = 16;
/// Entries of `POLICY_STATS`: a slot per policy entry and port slot.
pub const POLICY_STATS_ENTRIES: u32 = MAX_POLICIES * PORT_SLOTS;

/// One slot's traffic, counted by the program for the detector (an entry
/// of the per-CPU `POLICY_STATS`, indexed by `entry * PORT_SLOTS + slot`).
/// Counts only grow; the agent takes differences a second apart.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PolicyStats {
    pub packets: u64,
    pub bytes: u64,
    /// TCP segments with SYN set and none of ACK, RST and FIN.
    pub syns: u64,
    /// Packets of sources the rate table did not hold (they took a way, the
    /// set's overflow bucket, or were refused by the newcomer budget).
    pub new_sources: u64,
    /// Packets the policy dropped, or would have under dry-run.
    pub drops: u64,
}

/// Registers of a [`Sketch`] (a HyperLogLog of distinct sources).
pub const SKETCH_REGISTERS: usize = 256;
/// A HyperLogLog sketch of the sources one configured policy saw in one
/// epoch of 2^[`SKETCH_EPOCH_SHIFT`] ns: an entry of the per-CPU
/// `SKETCHES`, indexed by `bank * MAX_POLICIES + group`, where the bank is
/// the epoch's parity. The agent merges a finished epoch's bank across
/// CPUs (register-wise maximum) and clears it before its turn comes again.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sketch {
    pub registers: [u8; SKETCH_REGISTERS],
}

impl Default for Sketch {
    fn default() -> Self {
        Self {
            registers: [0; SKETCH_REGISTERS],
        }
    }
}

/// Sketch epochs last 2^30 ns (about 1.07 s): a shift, not a division.
pub const SKETCH_EPOCH_SHIFT: u32 = 30;
/// `SKETCHES` entries: two banks of one sketch per policy group.
pub const SKETCH_ENTRIES: u32 = 2 * MAX_POLICIES;

/// [`Policy::syn_cookies`]: how a TCP policy answers SYNs from unverified
/// sources.
pub mod syn_cookies {
    pub const OFF: u8 = 0;
    /// Always, with a SYN cookie from the program.
    pub const ON: u8 = 1;
    /// Only while the policy's SYN rate is over `syn_above` (with hysteresis).
    pub const AUTO: u8 = 2;
}

/// SYN-rate windows under half of `syn_above` after which `auto` cookie
/// mode disengages.
pub const CALM_WINDOWS: u32 = 10;
/// The length of a SYN-rate window.
pub const SYN_WINDOW_NS: u64 = 1_000_000_000;

/// Per-policy flood-defence state, an entry of `FLOOD` (indexed by
/// [`Policy::group`], so the ranges of one configured policy share it):
/// the SYN rate `auto` cookie mode watches, and the newcomer budget.
/// Shared by all CPUs and written without atomics: a lost update costs a
/// count or a token, never a wrong packet.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FloodState {
    /// Start of the current SYN window (monotonic ns).
    pub window_start_ns: u64,
    /// SYNs counted in the current window.
    pub syns: u32,
    /// 1 while `auto` cookie mode is engaged.
    pub engaged: u32,
    /// Consecutive calm windows while engaged.
    pub calm: u32,
    /// SYNs in the last whole window (for status and metrics).
    pub last_window_syns: u32,
    /// The newcomer budget: tokens (units of 1e-9 packet) and last refill.
    pub newcomer_tokens: u64,
    pub newcomer_last_ns: u64,
}

/// Words of `VERIFIED_HINT`, a bitmap with a bit per hashed address that
/// is set when a source is verified (see [`crate::flood::verified_hint`]).
pub const VERIFIED_HINT_WORDS: u32 = 1 << 15;

/// A verified source: when it stops being one (monotonic ns). Values of
/// the LRU tables `VERIFIED_V4` (keyed by the address word) and
/// `VERIFIED_V6` (keyed by [`Addr`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Verified {
    pub expires_ns: u64,
}

pub const MAX_POLICIES: u32 = 32;

/// One rate-limit policy, an entry of the `POLICIES` array. Derived values
/// (`*_fill_ns`) are computed by the agent so the kernel never divides.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Policy {
    pub proto: u8,
    pub flags: u8,
    /// Sources are aggregated to this prefix length before metering.
    pub v4_prefix: u8,
    pub v6_prefix: u8,
    /// Destination port range, inclusive (ICMP: the message type).
    pub port_lo: u16,
    pub port_hi: u16,
    /// Drops over the limit, without a full-bucket pause, that start a ban;
    /// 0 never bans.
    pub ban_threshold: u32,
    /// Each repeat offence multiplies the ban time by this factor.
    pub ban_factor: u32,
    pub pps: u64,
    pub pps_burst: u64,
    /// 0: no byte limit.
    pub bps: u64,
    pub bps_burst: u64,
    /// Time to fill the packet bucket from empty: `pps_burst / pps` seconds.
    pub pps_fill_ns: u64,
    pub bps_fill_ns: u64,
    /// A slot unused for this long may be given to a new source.
    pub idle_ns: u64,
    pub ban_base_ns: u64,
    pub ban_max_ns: u64,
    /// The newcomer budget: packets per second, burst and fill time, shared
    /// by every source the policy does not track yet. `new_pps` 0: none.
    pub new_pps: u64,
    pub new_burst: u64,
    pub new_fill_ns: u64,
    /// `auto` cookie mode engages over this many SYNs per second.
    pub syn_above: u32,
    /// A [`syn_cookies`] constant.
    pub syn_cookies: u8,
    /// The index of the first entry of the same configured policy: its
    /// `FLOOD` entry.
    pub group: u8,
    /// The destination port's slot in `POLICY_STATS` is
    /// `(port - port_lo) >> port_shift`: a range is cut into at most
    /// [`PORT_SLOTS`] equal runs of ports.
    pub port_shift: u8,
    pub pad: u8,
}

pub const RATE_WAYS: usize = 4;

/// Rate-table times a set packs into 32 bits count ticks of 2^20 ns (about
/// 1 ms, finer than the kernel clock the program reads, which moves with
/// the scheduler tick); they wrap after about 52 days.
pub const RATE_TICK_SHIFT: u32 = 20;

/// A set of the set-associative rate table (an entry of `RATE_SETS`): what
/// a packet of a new source reads. A source hashes to one set and takes any
/// of its ways; when every way is held by an active source, it is metered by
/// the set's shared overflow bucket instead of evicting one. Lookups never
/// insert into or evict from a kernel hash table, so a spoofed flood costs
/// what a flood from a few sources costs.
///
/// 32 bytes, two sets to a cache line: a spoofed flood reads a random set
/// per packet, and at this size the default table's sets (512 KiB) stay in
/// a core's cache, where a line per set (1 MiB) did not. The ways' buckets
/// live in [`RateBuckets`] and [`RateExtra`], indexed like the sets and read
/// only for a source that holds (or takes) a way.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RateSet {
    /// A keyed hash of the aggregated source, its prefix length and policy
    /// (never 0); 0 marks a free way.
    pub tags: [u32; RATE_WAYS],
    /// The tick of the least recent use of any held way, or earlier: when
    /// even that way is not idle, a newcomer goes to the overflow bucket
    /// without reading the ways. It only moves forward, so a write lost to
    /// a race leaves it earlier, which only costs a read of the ways.
    pub oldest: u32,
    /// The overflow bucket: the tick of its last refill, and its packet
    /// tokens (units of 1e-9 packet).
    pub overflow_at: u32,
    pub overflow_pkt_tokens: u64,
}

/// The packet buckets of one set's ways (an entry of `RATE_BUCKETS`): what a
/// tracked source's packet reads and writes, one cache line.
#[repr(C, align(64))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RateBuckets {
    /// Monotonic ns of each way's last refill.
    pub last_ns: [u64; RATE_WAYS],
    /// Packet tokens, in units of 1e-9 packet.
    pub pkt_tokens: [u64; RATE_WAYS],
}

/// What only some policies use (an entry of `RATE_EXTRA`): drop counts
/// toward a ban, and byte buckets (units of 1e-9 byte). A policy without a
/// ban threshold or a byte limit never touches it. A way keeps whatever its
/// fields held when a policy without them claimed it; a policy that gains a
/// byte limit refills the bucket capped at its burst (what a new source
/// starts with), and a claim under a banning policy clears the count.
#[repr(C, align(64))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RateExtra {
    /// Drops since the way's bucket was last full.
    pub violations: [u32; RATE_WAYS],
    pub byte_tokens: [u64; RATE_WAYS],
    pub overflow_byte_tokens: u64,
    pub pad: u64,
}

/// Kinds of [`Event`].
pub mod event_kind {
    pub const DROP_SAMPLE: u8 = 1;
    pub const BAN: u8 = 2;
}

/// A record in the `EVENTS` ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Event {
    pub ts_ns: u64,
    /// Ban events: when the ban ends (monotonic ns).
    pub ban_expires_ns: u64,
    pub src: Addr,
    pub dst: Addr,
    pub sport: u16,
    pub dport: u16,
    pub ifindex: u32,
    pub len: u32,
    pub kind: u8,
    pub family: u8,
    pub proto: u8,
    pub action: u8,
    pub reason: u8,
    /// Policy index, or [`NO_POLICY`].
    pub policy: u8,
    /// Ban events: the banned prefix length.
    pub prefix_len: u8,
    pub _pad: u8,
    /// Ban events: the offence count.
    pub offences: u32,
}

pub const NO_POLICY: u8 = 0xff;

// Layouts are part of the kernel ABI: catch accidental padding at compile time.
const _: () = {
    use core::mem::size_of;
    assert!(size_of::<Counter>() == 16);
    assert!(size_of::<PrefixLens>() == 48);
    assert!(size_of::<Config>() == 32 + 6 * 48 + 16 + 8);
    assert!(size_of::<Addr>() == 16);
    assert!(size_of::<V4Key>() == 8);
    assert!(size_of::<V6Key>() == 24);
    assert!(size_of::<ListEntry>() == 16);
    assert!(size_of::<BanEntry>() == 16);
    assert!(size_of::<Policy>() == 16 + 12 * 8 + 8);
    assert!(size_of::<FloodState>() == 40);
    assert!(size_of::<Verified>() == 8);
    assert!(size_of::<RateSet>() == 32);
    assert!(size_of::<RateBuckets>() == 64);
    assert!(size_of::<RateExtra>() == 64);
    assert!(size_of::<Event>() == 16 + 32 + 4 + 8 + 8 + 4);
    assert!(size_of::<PolicyStats>() == 40);
    assert!(size_of::<Sketch>() == SKETCH_REGISTERS);
};
