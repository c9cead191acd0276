//! The decision order, written once for the kernel and the reference model:
//! allowlist, blocklist, bans, malformed check, then the first policy that
//! matches: its flood defence (SYN cookies, for unverified sources), its
//! newcomer budget (for sources it does not track yet) and its per-source
//! rate limit; else pass.
//!
//! Table access goes through [`Tables`]; the kernel implements it over BPF
//! maps, [`crate::model`] over plain collections.
use crate::{
    abi::{
        Addr, BanEntry, Config, FloodState, ListEntry, MAX_POLICIES, MAX_PREFIX_LENS, NO_POLICY,
        Policy, PrefixLens, RATE_TICK_SHIFT, RATE_WAYS, RateBuckets, RateExtra, RateSet, V4Key,
        V6Key, action, config_flag, entry_flag, policy_flag, proto, reason, slash24, stat,
        syn_cookies,
    },
    addr::{mask_v4_word, mask_v6, rate_hash, v4_key_word, v4_len, v6_key},
    bucket::{SCALE, refill, scaled},
    flood::{cookies_engaged, count_syn, take_newcomer},
    parse::{Packet, Parsed, Source, TcpAt, ipproto, tcp_flag},
};

/// Which address list: the one spelling of allow/block, in the kernel's
/// tables, the agent's state file, its feeds and its control API.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(
    feature = "user",
    derive(serde::Serialize, serde::Deserialize),
    serde(rename_all = "lowercase")
)]
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

    /// The list's name in the config, the CLI and metrics labels.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Allow => "allow",
            Self::Block => "block",
        }
    }

    /// The list a source on this one takes precedence over, or yields to.
    pub const fn other(self) -> Self {
        match self {
            Self::Allow => Self::Block,
            Self::Block => Self::Allow,
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

    /// The verdict as one scalar, a byte per field, the way the kernel's
    /// global functions pass it (a scalar costs no copy through memory).
    #[inline(always)]
    pub const fn to_u32(self) -> u32 {
        self.action as u32 | (self.reason as u32) << 8 | (self.policy as u32) << 16
    }

    /// What [`Verdict::to_u32`] made, back as a verdict.
    #[inline(always)]
    pub const fn from_u32(v: u32) -> Self {
        Self {
            action: v as u8,
            reason: (v >> 8) as u8,
            policy: (v >> 16) as u8,
        }
    }
}

/// What the kernel found for an ACK from an unverified source to a port
/// in cookie mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AckCheck {
    /// No socket matched, or one the check cannot judge: decided as usual.
    NoSocket,
    /// It belongs to an established connection: the source is real.
    Established,
    /// It completes a handshake with a SYN cookie the kernel accepts.
    ValidCookie,
    /// It reached a listener without a valid cookie.
    BadCookie,
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
    /// Whether `src` is in a range the program must never ban by itself.
    fn ban_exempt(&self, src: &Source) -> bool;
    /// Records a ban; false when the table is full.
    fn set_ban_v4(&self, key: &V4Key, ban: &BanEntry) -> bool;
    fn set_ban_v6(&self, key: &V6Key, ban: &BanEntry) -> bool;
    fn policy(&self, index: u32) -> Option<&Policy>;
    /// Runs `f` on one set of the rate table, its ways' packet buckets and
    /// its extras (entries `index` of `RATE_SETS`, `RATE_BUCKETS` and
    /// `RATE_EXTRA`); `None` if the index is out of range.
    fn with_rate_set<R>(
        &self,
        index: u32,
        f: impl FnOnce(&mut RateSet, &mut RateBuckets, &mut RateExtra) -> R,
    ) -> Option<R>;
    /// Runs `f` on a policy group's flood-defence state (`FLOOD`).
    fn with_flood<R>(&self, group: u32, f: impl FnOnce(&mut FloodState) -> R) -> Option<R>;
    /// Whether the source is verified (proved it can receive) at `now`.
    fn verified(&self, src: &Source, now: u64) -> bool;
    /// Records the source as verified until `expires_ns`.
    fn set_verified(&self, src: &Source, expires_ns: u64);
    /// Answers a SYN with a SYN-ACK carrying a SYN cookie from the local
    /// listener; false when there is none, or the kernel gave no cookie.
    fn challenge(&self, pkt: &Packet, at: &TcpAt) -> bool;
    /// Looks at an ACK from an unverified source to a port in cookie mode.
    fn check_ack(&self, pkt: &Packet, at: &TcpAt) -> AckCheck;
    /// Where the TCP headers of the frame being decided are
    /// ([`crate::parse::tcp_at`]).
    fn tcp_at(&self) -> Option<TcpAt>;
    /// Adds one to a [`stat`] counter.
    fn count(&self, stat: u32);
    /// Counts a packet of observed policy entry `index` for the traffic
    /// detector, with what became of it (an [`outcome`] set): in its
    /// `POLICY_STATS` slot, and its source in its group's sketch. The model
    /// does not count.
    #[inline(always)]
    fn observe(
        &self,
        _cfg: &Config,
        _index: u32,
        _pkt: &Packet,
        _len: u32,
        _now: u64,
        _outcome: u32,
    ) {
    }
    /// Announces a ban to user space.
    fn ban_started(&self, ban: &BanStarted);

    /// `list`'s live, visible entry for an IPv4 source (a native-order
    /// word), over the prefix lengths in use: [`probe_list_v4`]. The kernel
    /// runs that same function out of line, as a BPF global function: the
    /// verifier then checks the loop once, and the decision after it sees
    /// one outcome instead of one per loop exit.
    #[inline(always)]
    fn find_list_v4<F: Fn() -> u64>(
        &self,
        cfg: &Config,
        list: List,
        addr: u32,
        clock: &F,
    ) -> Option<ListEntry>
    where
        Self: Sized,
    {
        probe_list_v4(self, cfg, list, addr, clock)
    }

    /// As [`Tables::find_list_v4`], for IPv6: [`probe_list_v6`].
    #[inline(always)]
    fn find_list_v6<F: Fn() -> u64>(
        &self,
        cfg: &Config,
        list: List,
        addr: &Addr,
        clock: &F,
    ) -> Option<ListEntry>
    where
        Self: Sized,
    {
        probe_list_v6(self, cfg, list, addr, clock)
    }

    /// Whether a live ban covers an IPv4 source: [`probe_ban_v4`], out of
    /// line in the kernel for the same reason.
    #[inline(always)]
    fn find_ban_v4(&self, cfg: &Config, addr: u32, now: u64) -> bool
    where
        Self: Sized,
    {
        probe_ban_v4(self, cfg, addr, now)
    }

    /// Meters one packet against policy `index`: [`meter`]. The kernel
    /// runs it out of line, so that the verifier checks the rate table's
    /// paths once instead of once per path that reaches it.
    #[inline(always)]
    fn meter(&self, cfg: &Config, index: u32, src: &Source, len: u32, now: u64) -> Metered
    where
        Self: Sized,
    {
        meter(self, cfg, index, src, len, now)
    }

    /// A TCP policy's flood defence for one packet, as a verdict:
    /// [`syn_verdict`], out of line in the kernel for the same reason as
    /// metering.
    #[inline(always)]
    fn defend_syn(&self, cfg: &Config, index: u32, pkt: &Packet, now: u64, dry_run: bool) -> Verdict
    where
        Self: Sized,
    {
        syn_verdict(self, cfg, index, pkt, now, dry_run)
    }

    /// Bans `src` under policy `p` (number `index`), as metering found
    /// due: [`start_ban`]. Out of line in the kernel too, and called from
    /// the decision rather than from metering, so that neither function's
    /// stack sits on top of the other's.
    #[inline(always)]
    fn start_ban(&self, p: &Policy, index: u32, src: &Source, now: u64)
    where
        Self: Sized,
    {
        start_ban(self, p, index, src, now);
    }

    /// As [`Tables::find_ban_v4`], for IPv6: [`probe_ban_v6`].
    #[inline(always)]
    fn find_ban_v6(&self, cfg: &Config, addr: &Addr, now: u64) -> bool
    where
        Self: Sized,
    {
        probe_ban_v6(self, cfg, addr, now)
    }
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
    // The first rule that would have acted on the packet but for dry-run,
    // as it is counted (`would_drop`, `would_challenge`).
    let mut would: Option<Verdict> = None;
    if let Some(entry) = find_list(t, cfg, List::Block, src, clock) {
        let v = Verdict::new(action::DROP, reason::BLOCKLIST);
        if !global_dry && entry.flags & entry_flag::DRY_RUN == 0 {
            return v;
        }
        would.get_or_insert(dry(v));
    }
    let now = clock();
    if find_ban(t, cfg, src, now) {
        let v = Verdict::new(action::DROP, reason::BAN);
        if !global_dry {
            return v;
        }
        would.get_or_insert(dry(v));
    }
    let Some(pkt) = pkt else {
        return match would {
            Some(w) if cfg.malformed_pass != 0 => w,
            _ => malformed(cfg, global_dry),
        };
    };

    if let Some((index, policy)) = first_policy(t, cfg, pkt) {
        let dry_run = global_dry || policy.flags & policy_flag::DRY_RUN != 0;
        // The traffic detector counts each packet of an observed policy
        // once, where its fate is known: at each of the two exits below.
        // Nothing is held across the calls but what they already need (the
        // kernel's combined stack of three nested calls is 512 bytes).
        if policy.syn_cookies != syn_cookies::OFF && pkt.proto == ipproto::TCP {
            // The defence hands back the verdict whole (pass: go on), so
            // that its outcomes meet here as one state, not one apiece.
            let v = t.defend_syn(cfg, index, pkt, now, dry_run);
            if v.action == action::CHALLENGE || v.action == action::DROP {
                if policy.flags & policy_flag::OBSERVE != 0 {
                    let o = if v.action == action::DROP {
                        outcome::DROPPED
                    } else {
                        0
                    };
                    t.observe(cfg, index, pkt, len, now, o);
                }
                return v;
            }
            if v.action != action::PASS {
                would.get_or_insert(v);
            }
        }
        let metered = t.meter(cfg, index, src, len, now);
        if policy.flags & policy_flag::OBSERVE != 0 {
            let o = if metered.new_source {
                outcome::NEW_SOURCE
            } else {
                0
            } | if metered.conforms {
                0
            } else {
                outcome::DROPPED
            };
            t.observe(cfg, index, pkt, len, now, o);
        }
        if metered.ban_due && !dry_run {
            t.start_ban(policy, index, src, now);
        }
        if !metered.conforms {
            let mut v = Verdict::new(action::DROP, metered.drop_reason);
            v.policy = index as u8;
            if !dry_run {
                return v;
            }
            would.get_or_insert(dry(v));
        }
    }
    match would {
        Some(w) => w,
        None => Verdict::new(action::PASS, reason::NONE),
    }
}

/// The flood defence's verdict: `challenge` (answered), `drop` (a bad
/// cookie), their dry-run forms, or `pass` for "on to metering".
#[inline(always)]
pub fn syn_verdict<T: Tables + ?Sized>(
    t: &T,
    cfg: &Config,
    index: u32,
    pkt: &Packet,
    now: u64,
    dry_run: bool,
) -> Verdict {
    let (action, reason) = match syn_defence(t, cfg, index, pkt, now, dry_run) {
        Defence::Answered if dry_run => (action::WOULD_CHALLENGE, reason::SYN_COOKIE),
        Defence::Answered => (action::CHALLENGE, reason::SYN_COOKIE),
        Defence::BadCookie if dry_run => (action::WOULD_DROP, reason::BAD_COOKIE),
        Defence::BadCookie => (action::DROP, reason::BAD_COOKIE),
        Defence::Meter => return Verdict::new(action::PASS, reason::NONE),
    };
    Verdict {
        action,
        reason,
        policy: index as u8,
    }
}

/// What a TCP policy's flood defence does with a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Defence {
    /// A SYN answered (or, under dry-run, that would have been).
    Answered,
    /// An ACK without a valid cookie: dropped.
    BadCookie,
    /// On to metering.
    Meter,
}

/// SYN cookies for a TCP policy: SYNs count toward `auto` mode; while it is
/// engaged, an unverified source's SYN is answered by the program and its
/// ACKs are checked. Whatever the check cannot judge is metered as usual.
/// Under dry-run the SYN is not answered (the caller counts it), while the
/// ACK check, which only reads, still runs.
#[inline(always)]
pub fn syn_defence<T: Tables + ?Sized>(
    t: &T,
    cfg: &Config,
    index: u32,
    pkt: &Packet,
    now: u64,
    dry_run: bool,
) -> Defence {
    let Some(policy) = t.policy(index) else {
        return Defence::Meter;
    };
    // A SYN opens a connection (the cookie helper takes no FIN, RST or
    // ACK with it); an ACK is anything later in one but a reset.
    let Some(at) = t.tcp_at() else {
        return Defence::Meter;
    };
    let flags = at.flags;
    let kind = tcp_flag::SYN | tcp_flag::ACK | tcp_flag::RST;
    let syn = flags & (kind | tcp_flag::FIN) == tcp_flag::SYN;
    let ack = flags & kind == tcp_flag::ACK;
    if pkt.later_fragment || !(syn || ack) {
        return Defence::Meter;
    }
    let engaged = t
        .with_flood(policy.group as u32, |fs| {
            if syn {
                count_syn(fs, policy, now);
            }
            cookies_engaged(fs, policy)
        })
        .unwrap_or(false);
    if !engaged || cfg.flags & config_flag::NO_SYN_COOKIES != 0 || t.verified(&pkt.src, now) {
        return Defence::Meter;
    }
    if syn {
        if dry_run || t.challenge(pkt, &at) {
            return Defence::Answered;
        }
        t.count(stat::COOKIE_FALLBACK);
        return Defence::Meter;
    }
    let proved = match t.check_ack(pkt, &at) {
        AckCheck::NoSocket => return Defence::Meter,
        AckCheck::BadCookie => return Defence::BadCookie,
        AckCheck::Established => stat::VERIFIED_BY_SOCKET,
        AckCheck::ValidCookie => stat::COOKIES_VALID,
    };
    t.count(proved);
    t.set_verified(&pkt.src, now.saturating_add(cfg.verified_ttl_ns));
    Defence::Meter
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

/// Looks a source up in a list: one probe per prefix length in use,
/// longest first; expired entries and entries hidden from the list
/// generation in force are skipped.
#[inline(always)]
pub fn find_list<T: Tables, F: Fn() -> u64>(
    t: &T,
    cfg: &Config,
    list: List,
    src: &Source,
    clock: &F,
) -> Option<ListEntry> {
    if src.family == 4 {
        t.find_list_v4(cfg, list, src.addr.v4_word(), clock)
    } else {
        t.find_list_v6(cfg, list, &src.addr, clock)
    }
}

/// Whether a live ban covers the source.
#[inline(always)]
pub fn find_ban<T: Tables>(t: &T, cfg: &Config, src: &Source, now: u64) -> bool {
    if src.family == 4 {
        t.find_ban_v4(cfg, src.addr.v4_word(), now)
    } else {
        t.find_ban_v6(cfg, &src.addr, now)
    }
}

/// The prefix lengths in use in a list, for one family.
#[inline(always)]
pub fn prefix_lens(cfg: &Config, list: List, v6: bool) -> &PrefixLens {
    match (list, v6) {
        (List::Allow, false) => &cfg.allow_v4,
        (List::Block, false) => &cfg.block_v4,
        (List::Allow, true) => &cfg.allow_v6,
        (List::Block, true) => &cfg.block_v6,
    }
}

/// The loop behind [`Tables::find_list_v4`].
#[inline(always)]
pub fn probe_list_v4<T: Tables + ?Sized, F: Fn() -> u64>(
    t: &T,
    cfg: &Config,
    list: List,
    addr: u32,
    clock: &F,
) -> Option<ListEntry> {
    let lens = prefix_lens(cfg, list, false);
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
}

/// Whether an IPv4 list can match `addr` at all: not when it is empty, nor
/// when every length it uses is /24 or longer and the /24 summary has no
/// entry near `addr`. The data plane asks this inline, so legitimate traffic
/// skips the probe's call; [`probe_list_v4`] reaches the same answer.
#[inline(always)]
pub fn v4_list_may_match<T: Tables + ?Sized>(t: &T, cfg: &Config, list: List, addr: u32) -> bool {
    let lens = prefix_lens(cfg, list, false);
    let n = lens.count as usize;
    if n == 0 {
        return false;
    }
    // Longest first: the last length in use is the shortest.
    let shortest = lens.lens[(n - 1).min(MAX_PREFIX_LENS - 1)];
    shortest < slash24::MIN_LEN || t.v4_slash24(list, addr)
}

/// The loop behind [`Tables::find_list_v6`].
#[inline(always)]
pub fn probe_list_v6<T: Tables + ?Sized, F: Fn() -> u64>(
    t: &T,
    cfg: &Config,
    list: List,
    addr: &Addr,
    clock: &F,
) -> Option<ListEntry> {
    let lens = prefix_lens(cfg, list, true);
    probe(
        lens,
        |len| t.list_v6(list, &v6_key(*addr, len)),
        |e| e.live(clock) && e.visible(cfg.flags),
    )
}

/// The loop behind [`Tables::find_ban_v4`].
#[inline(always)]
pub fn probe_ban_v4<T: Tables + ?Sized>(t: &T, cfg: &Config, addr: u32, now: u64) -> bool {
    let live = |b: &BanEntry| now < b.expires_ns;
    probe(&cfg.ban_v4, |len| t.ban_v4(&v4_key_word(addr, len)), live).is_some()
}

/// The loop behind [`Tables::find_ban_v6`].
#[inline(always)]
pub fn probe_ban_v6<T: Tables + ?Sized>(t: &T, cfg: &Config, addr: &Addr, now: u64) -> bool {
    let live = |b: &BanEntry| now < b.expires_ns;
    probe(&cfg.ban_v6, |len| t.ban_v6(&v6_key(*addr, len)), live).is_some()
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

/// A monotonic time in the ticks a [`RateSet`] stores (wrapping).
#[inline(always)]
pub fn rate_tick(now_ns: u64) -> u32 {
    (now_ns >> RATE_TICK_SHIFT) as u32
}

#[inline(always)]
fn ticks_ns(ticks: u32) -> u64 {
    (ticks as u64) << RATE_TICK_SHIFT
}

/// Ticks by which one CPU's clock may trail the one that last wrote a set
/// (each CPU reads a clock that moves with its own scheduler tick).
const SKEW_TICKS: u32 = 1 << 10;

/// Bits of what one observed packet came to, for the traffic detector.
pub mod outcome {
    pub const NEW_SOURCE: u32 = 1;
    pub const DROPPED: u32 = 2;
}

/// What metering one packet found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Metered {
    /// Within the policy's limits.
    pub conforms: bool,
    /// The source has exceeded them often enough to be banned.
    pub ban_due: bool,
    /// Why it does not conform: [`reason::RATELIMIT`], or
    /// [`reason::NEWCOMER`] when the policy does not track the source and
    /// its newcomer budget is spent. A value, not a flag, so the decision
    /// carries it on without branching.
    pub drop_reason: u8,
    /// The rate table did not hold the source: a new source for the
    /// traffic detector.
    pub new_source: bool,
}

impl Metered {
    const CONFORMS: Self = Self {
        conforms: true,
        ban_due: false,
        drop_reason: reason::RATELIMIT,
        new_source: false,
    };
}

/// Whether a source the policy does not track may take a way: a verified
/// source always may, any other only within the newcomer budget.
#[inline(always)]
fn admit_newcomer<T: Tables>(t: &T, p: &Policy, src: &Source, now: u64) -> bool {
    p.new_pps == 0
        || t.verified(src, now)
        || t.with_flood(p.group as u32, |fs| take_newcomer(fs, p, now))
            .unwrap_or(true)
}

/// Meters one packet against policy `index`.
#[inline(always)]
pub fn meter<T: Tables>(
    t: &T,
    cfg: &Config,
    index: u32,
    src: &Source,
    len: u32,
    now: u64,
) -> Metered {
    let Some(p) = t.policy(index) else {
        return Metered::CONFORMS;
    };
    let (addr, prefix_len) = aggregate(p, src);
    let family = src.family;
    let hash = rate_hash(&addr, family, index as u16, prefix_len, cfg.hash_seed);
    let set_index = (hash as u32) & cfg.rate_set_mask;
    // The tag uses the other half of the hash, so sources sharing a set
    // differ in it; never 0, which marks a free way.
    let tag = ((hash >> 32) as u32) | 1;
    let outcome = t.with_rate_set(set_index, |set, buckets, extra| {
        let mut found = RATE_WAYS;
        let mut free = false;
        for w in 0..RATE_WAYS {
            if set.tags[w] == tag {
                found = w;
                break;
            }
            free |= set.tags[w] == 0;
        }
        // `claimed`: the set's ways changed hands, so its oldest use is
        // counted afresh.
        let (way, placed, claimed) = if found < RATE_WAYS {
            (found, Placement::Held, false)
        } else {
            if !admit_newcomer(t, p, src, now) {
                return (false, false, Placement::Refused);
            }
            let victim = if free || may_have_idle_way(set, p, now) {
                idle_way(set, buckets, p, now)
            } else {
                RATE_WAYS
            };
            if victim == RATE_WAYS {
                // Every way is held by an active source: meter the newcomer
                // with the set's shared bucket rather than evict or wave it
                // through.
                let ok = take_overflow(set, extra, p, len, now);
                return (ok, false, Placement::Overflow);
            }
            let placed = if set.tags[victim] != 0 {
                Placement::Evicted
            } else {
                Placement::Free
            };
            claim(set, buckets, extra, victim, tag, p, now);
            (victim, placed, true)
        };
        let last = &mut buckets.last_ns[way];
        let elapsed = now.saturating_sub(*last);
        // Within the tick of its last use, a way's use leaves the set's
        // oldest as it was: a busy source skips the count.
        let new_tick = rate_tick(now) != rate_tick(*last);
        if now > *last {
            *last = now;
        }
        let (ok, refilled) = take(
            &mut buckets.pkt_tokens[way],
            &mut extra.byte_tokens[way],
            elapsed,
            p,
            len,
        );
        if claimed || new_tick {
            let oldest = rate_tick(oldest_use(set, buckets));
            if set.oldest != oldest {
                set.oldest = oldest;
            }
        }
        (
            ok,
            ban_due(&mut extra.violations[way], p, ok, refilled),
            placed,
        )
    });
    let Some((conforms, ban_due, placed)) = outcome else {
        // No rate table: a missing table never drops.
        return Metered::CONFORMS;
    };
    if let Some(stat) = placed.stat() {
        t.count(stat);
    }
    Metered {
        conforms,
        ban_due,
        drop_reason: if placed == Placement::Refused {
            reason::NEWCOMER
        } else {
            reason::RATELIMIT
        },
        new_source: placed != Placement::Held,
    }
}

/// Where a metered source found its way in its rate-table set.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Placement {
    /// It already held one.
    Held,
    /// It took a free way.
    Free,
    /// It took an idle source's way.
    Evicted,
    /// Every way was busy: the set's shared overflow bucket metered it.
    Overflow,
    /// A newcomer over the policy's newcomer budget: it took nothing.
    Refused,
}

impl Placement {
    /// The statistic the placement counts, if any.
    #[inline(always)]
    const fn stat(self) -> Option<u32> {
        match self {
            Self::Held | Self::Free | Self::Refused => None,
            Self::Evicted => Some(stat::RATE_EVICTIONS),
            Self::Overflow => Some(stat::RATE_OVERFLOW),
        }
    }
}

/// False when every way of a full set is surely busy, from the set's
/// oldest use to the tick (rounded towards idle), so that a newcomer is
/// metered without reading the ways' buckets. A clock behind the set's
/// reads as long idle: the exact test then decides.
#[inline(always)]
fn may_have_idle_way(set: &RateSet, p: &Policy, now: u64) -> bool {
    let since = ticks_ns(rate_tick(now).wrapping_sub(set.oldest));
    since + ticks_ns(1) > p.idle_ns
}

/// The way a newcomer may take: free, or idle for longer than the policy
/// allows, the least recently used first; `RATE_WAYS` if none.
#[inline(always)]
fn idle_way(set: &RateSet, buckets: &RateBuckets, p: &Policy, now: u64) -> usize {
    let mut victim = RATE_WAYS;
    let mut victim_last = u64::MAX;
    for w in 0..RATE_WAYS {
        let last = buckets.last_ns[w];
        let idle = set.tags[w] == 0 || now.saturating_sub(last) > p.idle_ns;
        if idle && last < victim_last {
            victim = w;
            victim_last = last;
        }
    }
    victim
}

/// The least recent last use of any held way (called once a way is held).
#[inline(always)]
fn oldest_use(set: &RateSet, buckets: &RateBuckets) -> u64 {
    let mut oldest = u64::MAX;
    for w in 0..RATE_WAYS {
        if set.tags[w] != 0 && buckets.last_ns[w] < oldest {
            oldest = buckets.last_ns[w];
        }
    }
    oldest
}

/// Hands way `w` to a new source with full buckets. The extras are written
/// only when the policy uses them.
#[inline(always)]
fn claim(
    set: &mut RateSet,
    buckets: &mut RateBuckets,
    extra: &mut RateExtra,
    w: usize,
    tag: u32,
    p: &Policy,
    now: u64,
) {
    set.tags[w] = tag;
    buckets.last_ns[w] = now;
    buckets.pkt_tokens[w] = scaled(p.pps_burst);
    if p.bps != 0 {
        extra.byte_tokens[w] = scaled(p.bps_burst);
    }
    if p.ban_threshold != 0 {
        extra.violations[w] = 0;
    }
}

/// Meters a newcomer with the set's overflow bucket, whose time is kept in
/// ticks. A clock a little behind the last writer's refills nothing and
/// leaves the time alone. An overflow bucket left unused for a multiple of
/// about 52 days sees its time wrap and refills as if less time had passed:
/// at worst its newcomers wait one fill time, and never get more than a
/// burst.
#[inline(always)]
fn take_overflow(set: &mut RateSet, extra: &mut RateExtra, p: &Policy, len: u32, now: u64) -> bool {
    let now = rate_tick(now);
    let since = now.wrapping_sub(set.overflow_at);
    let elapsed = if since > u32::MAX - SKEW_TICKS {
        0
    } else {
        set.overflow_at = now;
        ticks_ns(since)
    };
    take(
        &mut set.overflow_pkt_tokens,
        &mut extra.overflow_byte_tokens,
        elapsed,
        p,
        len,
    )
    .0
}

/// Counts a way's drop toward a ban; true when the ban is due. Policies
/// without a ban threshold leave the count alone (it lives on another cache
/// line). A source that paused until its bucket filled starts afresh.
#[inline(always)]
fn ban_due(violations: &mut u32, p: &Policy, ok: bool, refilled: bool) -> bool {
    if p.ban_threshold == 0 {
        return false;
    }
    if refilled {
        *violations = 0;
    }
    if !ok {
        *violations = violations.saturating_add(1);
    }
    let due = !ok && *violations >= p.ban_threshold;
    if due {
        *violations = 0;
    }
    due
}

/// Refills a bucket by `elapsed` ns and takes one packet (and its bytes) if
/// both fit. Returns (conforms, the packet bucket was full before this
/// packet). Without a byte limit the byte bucket is neither read nor
/// written: it lives on another cache line.
#[inline(always)]
pub fn take(
    pkt_tokens: &mut u64,
    byte_tokens: &mut u64,
    elapsed: u64,
    p: &Policy,
    len: u32,
) -> (bool, bool) {
    let pkt = refill(*pkt_tokens, elapsed, p.pps, p.pps_fill_ns, p.pps_burst);
    let bytes = if p.bps != 0 {
        refill(*byte_tokens, elapsed, p.bps, p.bps_fill_ns, p.bps_burst)
    } else {
        0
    };
    let refilled = pkt == scaled(p.pps_burst);
    let need_bytes = scaled(len as u64);
    let ok = pkt >= SCALE && (p.bps == 0 || bytes >= need_bytes);
    *pkt_tokens = if ok { pkt - SCALE } else { pkt };
    if p.bps != 0 {
        *byte_tokens = if ok { bytes - need_bytes } else { bytes };
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

/// The ban behind [`Tables::start_ban`]: the source aggregated to the
/// policy's prefix, its offence count up by one and the ban time with it.
#[inline(always)]
pub fn start_ban<T: Tables + ?Sized>(t: &T, p: &Policy, index: u32, src: &Source, now: u64) {
    // Bans key on the claimed source, which a flood can spoof: an exempt
    // range, or a source that proved it can receive, is only rate-limited.
    if t.ban_exempt(src) {
        t.count(stat::BAN_EXEMPT);
        return;
    }
    if t.verified(src, now) {
        t.count(stat::BAN_SPARED_VERIFIED);
        return;
    }
    let (addr, prefix_len) = aggregate(p, src);
    let family = src.family;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(pps: u64, burst: u64) -> Policy {
        Policy {
            pps,
            pps_burst: burst,
            pps_fill_ns: crate::bucket::fill_ns(pps, burst),
            ..Policy::default()
        }
    }

    #[test]
    fn the_overflow_bucket_refills_by_ticks_and_never_from_a_clock_behind() {
        let p = policy(1000, 10);
        let (mut set, mut extra) = (RateSet::default(), RateExtra::default());
        // On a tick's edge, so that 5 ms later is 4 ticks later.
        let t0 = ticks_ns(1 << 22);
        // A fresh bucket fills at once (its time is far in the past).
        let passed = (0..20)
            .filter(|_| take_overflow(&mut set, &mut extra, &p, 64, t0))
            .count();
        assert_eq!(passed, 10, "one burst");
        let at = set.overflow_at;
        // A CPU whose clock trails by a tick refills nothing, and does not
        // move the bucket's time back.
        let behind = t0 - ticks_ns(1);
        assert!(!take_overflow(&mut set, &mut extra, &p, 64, behind));
        assert_eq!(set.overflow_at, at);
        // 5 ms later, 4 whole ticks (4.2 ms): 4 packets at 1000/s.
        let later = t0 + 5_000_000;
        let passed = (0..10)
            .filter(|_| take_overflow(&mut set, &mut extra, &p, 64, later))
            .count();
        assert_eq!(passed, 4);
    }

    #[test]
    fn a_set_reads_as_busy_only_while_its_oldest_way_is() {
        let p = Policy {
            idle_ns: SCALE,
            ..policy(10, 10)
        };
        // Ways last used anywhere within a tick.
        for offset in (0..ticks_ns(1)).step_by(100_000) {
            let t0 = ticks_ns(1 << 22) + offset;
            let mut set = RateSet::default();
            let mut buckets = RateBuckets::default();
            for w in 0..RATE_WAYS {
                set.tags[w] = w as u32 + 1;
                buckets.last_ns[w] = t0 + w as u64 * 1000;
            }
            set.oldest = rate_tick(oldest_use(&set, &buckets));
            // The filter must never call a set busy when a way is idle:
            // check it against the exact test at times around the edge.
            for dt in (0..4 * ticks_ns(1)).step_by(50_000) {
                let now = t0 + SCALE + dt;
                let exact = idle_way(&set, &buckets, &p, now) < RATE_WAYS;
                assert!(
                    may_have_idle_way(&set, &p, now) || !exact,
                    "busy by the filter, idle {dt} ns after {offset}"
                );
            }
        }
    }
}
