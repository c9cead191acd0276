//! The decision order, written once for the kernel and the reference model:
//! allowlist, blocklist, bans, malformed check, rate-limit policies, pass.
//!
//! Table access goes through [`Tables`]; the kernel implements it over BPF
//! maps, [`crate::model`] over plain collections.
use crate::{
    abi::{
        Addr, BanEntry, BucketSet, Config, ListEntry, MAX_POLICIES, MAX_PREFIX_LENS, NO_POLICY,
        OverflowBucket, Policy, PrefixLens, RATE_WAYS, V4Key, V6Key, action, config_flag,
        entry_flag, policy_flag, proto, reason, slash24, stat,
    },
    addr::{mask_v4_word, mask_v6, rate_hash, v4_key_word, v4_len, v6_key},
    bucket::{SCALE, refill, scaled},
    parse::{Packet, Parsed, Source, ipproto},
};

/// Which address list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum List {
    Allow,
    Block,
}

impl List {
    /// The list's index in tables kept per list ([`slash24`]).
    #[inline(always)]
    pub const fn index(self) -> u32 {
        match self {
            Self::Allow => 0,
            Self::Block => 1,
        }
    }
}

/// The outcome for one packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// An [`action`] constant.
    pub action: u8,
    /// A [`reason`] constant.
    pub reason: u8,
    /// The policy that metered the packet, or [`NO_POLICY`].
    pub policy: u8,
}

impl Verdict {
    pub const fn new(action: u8, reason: u8) -> Self {
        Self {
            action,
            reason,
            policy: NO_POLICY,
        }
    }
}

/// A ban the decision started, for the ring buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BanStarted {
    pub family: u8,
    pub prefix_len: u8,
    pub addr: Addr,
    pub ban: BanEntry,
}

/// The data plane's tables, as the decision sees them. Every method takes
/// `&self`: BPF maps are shared memory, and the model uses cells.
pub trait Tables {
    fn list_v4(&self, list: List, key: &V4Key) -> Option<ListEntry>;
    fn list_v6(&self, list: List, key: &V6Key) -> Option<ListEntry>;
    /// Whether `list` may hold an IPv4 entry of [`slash24::MIN_LEN`] bits or
    /// longer inside the /24 of `addr` (a native-order word). Never false
    /// while it does: a false here skips those probes.
    fn v4_slash24(&self, list: List, addr: u32) -> bool;
    fn ban_v4(&self, key: &V4Key) -> Option<BanEntry>;
    fn ban_v6(&self, key: &V6Key) -> Option<BanEntry>;
    /// Offences recorded for a ban key so far (0 if none). A plain count, not
    /// an `Option<BanEntry>`: the BPF backend mishandles that copy's `None` path.
    fn offences_v4(&self, key: &V4Key) -> u32;
    fn offences_v6(&self, key: &V6Key) -> u32;
    /// Records a ban; false when the table is full.
    fn set_ban_v4(&self, key: &V4Key, ban: &BanEntry) -> bool;
    fn set_ban_v6(&self, key: &V6Key, ban: &BanEntry) -> bool;
    fn policy(&self, index: u32) -> Option<&Policy>;
    /// Runs `f` on one set of the rate table and its overflow bucket;
    /// `None` if the index is out of range.
    fn with_rate_set<R>(
        &self,
        index: u32,
        f: impl FnOnce(&mut BucketSet, &mut OverflowBucket) -> R,
    ) -> Option<R>;
    /// Adds one to a [`stat`] counter.
    fn count(&self, stat: u32);
    /// Announces a ban to user space.
    fn ban_started(&self, ban: &BanStarted);
}

/// Decides what to do with a parsed packet of `len` bytes; `clock` reads
/// `CLOCK_MONOTONIC` ns. It is read once after the list lookups (bans and
/// rate limits need it), and by a list lookup only for an entry that can
/// expire: the verifier walks every path, so the time is never cached in a
/// "read yet" flag, which would double the paths it walks.
#[inline(always)]
pub fn decide<T: Tables, F: Fn() -> u64>(
    t: &T,
    cfg: &Config,
    parsed: &Parsed,
    len: u32,
    clock: &F,
) -> Verdict {
    let global_dry = cfg.flags & config_flag::DRY_RUN != 0;
    let (src, pkt) = match parsed {
        Parsed::NonIp => return Verdict::new(action::PASS, reason::NON_IP),
        Parsed::Malformed(None) => return malformed(cfg, global_dry),
        Parsed::Malformed(Some(src)) => (src, None),
        Parsed::Ip(pkt) => (&pkt.src, Some(pkt)),
    };

    if find_list(t, cfg, List::Allow, src, clock).is_some() {
        return Verdict::new(action::PASS, reason::ALLOWLIST);
    }
    // The first rule that would have dropped the packet under dry-run.
    let mut would: Option<Verdict> = None;
    if let Some(entry) = find_list(t, cfg, List::Block, src, clock) {
        let v = Verdict::new(action::DROP, reason::BLOCKLIST);
        if !global_dry && entry.flags & entry_flag::DRY_RUN == 0 {
            return v;
        }
        would.get_or_insert(v);
    }
    let now = clock();
    if find_ban(t, cfg, src, now) {
        let v = Verdict::new(action::DROP, reason::BAN);
        if !global_dry {
            return v;
        }
        would.get_or_insert(v);
    }
    let Some(pkt) = pkt else {
        return match would {
            Some(w) if cfg.malformed_pass != 0 => dry(w),
            _ => malformed(cfg, global_dry),
        };
    };

    if let Some((index, policy)) = first_policy(t, cfg, pkt) {
        if !meter(t, cfg, index, src, len, now, global_dry) {
            let mut v = Verdict::new(action::DROP, reason::RATELIMIT);
            v.policy = index as u8;
            if !global_dry && policy.flags & policy_flag::DRY_RUN == 0 {
                return v;
            }
            would.get_or_insert(v);
        }
    }
    match would {
        Some(w) => dry(w),
        None => Verdict::new(action::PASS, reason::NONE),
    }
}

/// The first policy, in order, that matches the packet. Kept apart from
/// metering so the verifier walks the metering code once, not per policy.
#[inline(always)]
fn first_policy<'t, T: Tables>(t: &'t T, cfg: &Config, pkt: &Packet) -> Option<(u32, &'t Policy)> {
    let n = if cfg.policy_count > MAX_POLICIES {
        MAX_POLICIES
    } else {
        cfg.policy_count
    };
    for i in 0..MAX_POLICIES {
        if i >= n {
            break;
        }
        let policy = t.policy(i)?;
        if policy_matches(policy, pkt) {
            return Some((i, policy));
        }
    }
    None
}

#[inline(always)]
fn dry(mut v: Verdict) -> Verdict {
    v.action = action::WOULD_DROP;
    v
}

#[inline(always)]
fn malformed(cfg: &Config, global_dry: bool) -> Verdict {
    if cfg.malformed_pass != 0 {
        Verdict::new(action::PASS, reason::MALFORMED)
    } else if global_dry {
        Verdict::new(action::WOULD_DROP, reason::MALFORMED)
    } else {
        Verdict::new(action::DROP, reason::MALFORMED)
    }
}

/// Looks a source up in a list: one hash probe per prefix length in use,
/// longest first; expired entries and entries hidden from the list
/// generation in force are skipped.
#[inline(always)]
pub fn find_list<T: Tables + ?Sized, F: Fn() -> u64>(
    t: &T,
    cfg: &Config,
    list: List,
    src: &Source,
    clock: &F,
) -> Option<ListEntry> {
    if src.family == 4 {
        let lens = match list {
            List::Allow => &cfg.allow_v4,
            List::Block => &cfg.block_v4,
        };
        let addr = src.addr.v4_word();
        // Lengths are probed longest first: when the first is under /24,
        // none is at or over it and the summary need not be read.
        let near = lens.count > 0 && lens.lens[0] >= slash24::MIN_LEN && t.v4_slash24(list, addr);
        probe(
            lens,
            |len| {
                if len >= slash24::MIN_LEN && !near {
                    return None;
                }
                t.list_v4(list, &v4_key_word(addr, len))
            },
            |e| e.live(clock) && e.visible(cfg.flags),
        )
    } else {
        let lens = match list {
            List::Allow => &cfg.allow_v6,
            List::Block => &cfg.block_v6,
        };
        probe(
            lens,
            |len| t.list_v6(list, &v6_key(src.addr, len)),
            |e| e.live(clock) && e.visible(cfg.flags),
        )
    }
}

/// Whether a live ban covers the source.
#[inline(always)]
pub fn find_ban<T: Tables + ?Sized>(t: &T, cfg: &Config, src: &Source, now: u64) -> bool {
    let live = |b: &BanEntry| now < b.expires_ns;
    if src.family == 4 {
        let addr = src.addr.v4_word();
        probe(&cfg.ban_v4, |len| t.ban_v4(&v4_key_word(addr, len)), live).is_some()
    } else {
        probe(&cfg.ban_v6, |len| t.ban_v6(&v6_key(src.addr, len)), live).is_some()
    }
}

#[inline(always)]
fn probe<V>(
    lens: &PrefixLens,
    get: impl Fn(u8) -> Option<V>,
    live: impl Fn(&V) -> bool,
) -> Option<V> {
    let n = lens.count as usize;
    for i in 0..MAX_PREFIX_LENS {
        if i >= n {
            break;
        }
        if let Some(v) = get(lens.lens[i]) {
            if live(&v) {
                return Some(v);
            }
        }
    }
    None
}

#[inline(always)]
pub fn policy_matches(p: &Policy, pkt: &Packet) -> bool {
    let proto_ok = match p.proto {
        proto::ANY => true,
        proto::ICMP => pkt.proto == ipproto::ICMP || pkt.proto == ipproto::ICMPV6,
        other => pkt.proto == other,
    };
    if !proto_ok {
        return false;
    }
    if p.flags & policy_flag::HAS_PORTS == 0 {
        return true;
    }
    // A later fragment has no ports, so it only meets port-less policies.
    !pkt.later_fragment && pkt.dport >= p.port_lo && pkt.dport <= p.port_hi
}

/// The source aggregated to the policy's prefix: (address, prefix length).
#[inline(always)]
pub fn aggregate(p: &Policy, src: &Source) -> (Addr, u8) {
    if src.family == 4 {
        let len = v4_len(p.v4_prefix);
        (
            Addr::from_v4_word(mask_v4_word(src.addr.v4_word(), len)),
            len,
        )
    } else {
        let len = if p.v6_prefix > 128 { 128 } else { p.v6_prefix };
        (mask_v6(src.addr, len), len)
    }
}

/// One token bucket, wherever its fields live (a way of a set, or a set's
/// overflow bucket).
pub struct Bucket<'a> {
    pub last_ns: &'a mut u64,
    pub pkt_tokens: &'a mut u64,
    pub byte_tokens: &'a mut u64,
}

/// Meters one packet against policy `index`; true when it conforms. May
/// start a ban (unless dry-run).
#[inline(always)]
pub fn meter<T: Tables + ?Sized>(
    t: &T,
    cfg: &Config,
    index: u32,
    src: &Source,
    len: u32,
    now: u64,
    global_dry: bool,
) -> bool {
    let Some(p) = t.policy(index) else {
        return true;
    };
    let (addr, prefix_len) = aggregate(p, src);
    let family = src.family;
    let hash = rate_hash(&addr, family, index as u16, prefix_len, cfg.hash_seed);
    let set_index = (hash as u32) & cfg.rate_set_mask;
    // The tag uses the other half of the hash, so sources sharing a set
    // differ in it; never 0, which marks a free way.
    let tag = ((hash >> 32) as u32) | 1;
    let outcome = t.with_rate_set(set_index, |set, overflow| {
        let mut found = RATE_WAYS;
        let mut victim = RATE_WAYS;
        let mut victim_last = u64::MAX;
        for w in 0..RATE_WAYS {
            if set.tags[w] == tag {
                found = w;
                break;
            }
            let last = set.last_ns[w];
            let idle = set.tags[w] == 0 || now.saturating_sub(last) > p.idle_ns;
            if idle && last < victim_last {
                victim = w;
                victim_last = last;
            }
        }
        let (way, moved) = if found < RATE_WAYS {
            (found, u32::MAX)
        } else if victim < RATE_WAYS {
            let moved = if set.tags[victim] != 0 {
                stat::RATE_EVICTIONS
            } else {
                u32::MAX
            };
            claim(set, victim, tag, p, now);
            (victim, moved)
        } else {
            // Every way is held by an active source: meter the newcomer with
            // the set's shared bucket rather than evict or wave it through.
            let bucket = Bucket {
                last_ns: &mut overflow.last_ns,
                pkt_tokens: &mut overflow.pkt_tokens,
                byte_tokens: &mut overflow.byte_tokens,
            };
            let ok = take(bucket, p, len, now).0;
            return (ok, false, stat::RATE_OVERFLOW);
        };
        let bucket = Bucket {
            last_ns: &mut set.last_ns[way],
            pkt_tokens: &mut set.pkt_tokens[way],
            byte_tokens: &mut set.byte_tokens[way],
        };
        let (ok, refilled) = take(bucket, p, len, now);
        // A source that paused until its bucket filled starts its count afresh.
        let violations = &mut set.violations[way];
        if refilled {
            *violations = 0;
        }
        if !ok {
            *violations = violations.saturating_add(1);
        }
        let ban_due = !ok && p.ban_threshold != 0 && *violations >= p.ban_threshold;
        if ban_due {
            *violations = 0;
        }
        (ok, ban_due, moved)
    });
    let Some((ok, ban_due, moved)) = outcome else {
        // No rate table: a missing table never drops.
        return true;
    };
    if moved != u32::MAX {
        t.count(moved);
    }
    if ban_due && !global_dry && p.flags & policy_flag::DRY_RUN == 0 {
        start_ban(t, p, index, family, prefix_len, addr, now);
    }
    ok
}

/// Hands way `w` to a new source with a full bucket.
#[inline(always)]
fn claim(set: &mut BucketSet, w: usize, tag: u32, p: &Policy, now: u64) {
    set.tags[w] = tag;
    set.violations[w] = 0;
    set.last_ns[w] = now;
    set.pkt_tokens[w] = scaled(p.pps_burst);
    set.byte_tokens[w] = scaled(p.bps_burst);
}

/// Refills a bucket and takes one packet (and its bytes) if both fit.
/// Returns (conforms, the packet bucket was full before this packet).
#[inline(always)]
pub fn take(b: Bucket<'_>, p: &Policy, len: u32, now: u64) -> (bool, bool) {
    let elapsed = now.saturating_sub(*b.last_ns);
    let pkt = refill(*b.pkt_tokens, elapsed, p.pps, p.pps_fill_ns, p.pps_burst);
    let bytes = if p.bps != 0 {
        refill(*b.byte_tokens, elapsed, p.bps, p.bps_fill_ns, p.bps_burst)
    } else {
        0
    };
    if now > *b.last_ns {
        *b.last_ns = now;
    }
    let refilled = pkt == scaled(p.pps_burst);
    let need_bytes = scaled(len as u64);
    let ok = pkt >= SCALE && (p.bps == 0 || bytes >= need_bytes);
    if ok {
        *b.pkt_tokens = pkt - SCALE;
        *b.byte_tokens = if p.bps != 0 { bytes - need_bytes } else { 0 };
    } else {
        *b.pkt_tokens = pkt;
        *b.byte_tokens = bytes;
    }
    (ok, refilled)
}

/// Longest ban time the agent accepts, and the largest repeat factor: their
/// product stays below 2^64, so the kernel multiplies unchecked.
pub const MAX_BAN_NS: u64 = 366 * 24 * 3600 * 1_000_000_000;
pub const MAX_BAN_FACTOR: u32 = 64;
const _: () = assert!(MAX_BAN_NS.checked_mul(MAX_BAN_FACTOR as u64).is_some());

/// Ban time for the `offences`-th ban: base, times factor per repeat, capped.
#[inline(always)]
pub fn ban_duration(p: &Policy, offences: u32) -> u64 {
    let mut d = p.ban_base_ns;
    for i in 1..32u32 {
        if i >= offences || d >= p.ban_max_ns {
            break;
        }
        // d < ban_max_ns <= MAX_BAN_NS and factor <= MAX_BAN_FACTOR.
        d = d.wrapping_mul(p.ban_factor as u64);
    }
    if d > p.ban_max_ns { p.ban_max_ns } else { d }
}

#[inline(always)]
fn start_ban<T: Tables + ?Sized>(
    t: &T,
    p: &Policy,
    index: u32,
    family: u8,
    prefix_len: u8,
    addr: Addr,
    now: u64,
) {
    let ban = |prev: u32| {
        let offences = prev.saturating_add(1);
        BanEntry {
            expires_ns: now.saturating_add(ban_duration(p, offences)),
            offences,
            policy: index,
        }
    };
    let (stored, ban) = if family == 4 {
        let key = v4_key_word(addr.v4_word(), prefix_len);
        let ban = ban(t.offences_v4(&key));
        (t.set_ban_v4(&key, &ban), ban)
    } else {
        let key = v6_key(addr, prefix_len);
        let ban = ban(t.offences_v6(&key));
        (t.set_ban_v6(&key, &ban), ban)
    };
    if !stored {
        t.count(stat::BAN_TABLE_FULL);
        return;
    }
    t.count(stat::BANS_STARTED);
    t.ban_started(&BanStarted {
        family,
        prefix_len,
        addr,
        ban,
    });
}
