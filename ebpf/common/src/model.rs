//! The reference model: the data plane in plain Rust over std collections.
//!
//! It runs the same parser and decision code as the kernel program, over
//! tables that mirror the BPF maps, so tests can predict every verdict and
//! differential tests can catch where the compiled program disagrees.
extern crate std;

use std::{
    cell::RefCell,
    collections::{HashMap, HashSet},
    vec::Vec,
};

use crate::{
    abi::{
        Addr, BanEntry, Config, FloodState, ListEntry, MAX_POLICIES, Policy, RateBuckets,
        RateExtra, RateSet, V4Key, V6Key, slash24, stat,
    },
    decide::{AckCheck, BanStarted, List, Tables, Verdict, decide},
    parse::{Packet, Source, TcpAt, parse, tcp_at},
};

/// Tables of the model, one field per BPF map.
#[derive(Debug, Default)]
pub struct ModelTables {
    pub allow_v4: HashMap<V4Key, ListEntry>,
    pub allow_v6: HashMap<V6Key, ListEntry>,
    pub block_v4: HashMap<V4Key, ListEntry>,
    pub block_v6: HashMap<V6Key, ListEntry>,
    pub bans_v4: RefCell<HashMap<V4Key, BanEntry>>,
    pub bans_v6: RefCell<HashMap<V6Key, BanEntry>>,
    /// Capacity of each ban table.
    pub ban_capacity: usize,
    pub policies: Vec<Policy>,
    pub rate_sets: RefCell<Vec<RateSet>>,
    pub rate_buckets: RefCell<Vec<RateBuckets>>,
    pub rate_extra: RefCell<Vec<RateExtra>>,
    pub stats: RefCell<[u64; stat::COUNT as usize]>,
    pub bans_started: RefCell<Vec<BanStarted>>,
    pub flood: RefCell<Vec<FloodState>>,
    /// Verified sources (family, address) and when they stop being.
    pub verified: RefCell<HashMap<(u8, Addr), u64>>,
    /// Ports with a local listener. The model cannot make the kernel's SYN
    /// cookies: it answers every SYN to such a port and calls every ACK to
    /// one a bad cookie, as the kernel does for ACKs nobody was sent.
    pub listening: HashSet<u16>,
    /// Ranges never banned: (family, address, prefix length).
    pub no_ban: Vec<(u8, Addr, u8)>,
    /// SYNs the model answered.
    pub challenged: RefCell<Vec<Packet>>,
    /// The frame being decided (its TCP headers, for the flood defence).
    pub frame: RefCell<Vec<u8>>,
}

impl Tables for ModelTables {
    fn list_v4(&self, list: List, key: &V4Key) -> Option<ListEntry> {
        match list {
            List::Allow => self.allow_v4.get(key).copied(),
            List::Block => self.block_v4.get(key).copied(),
        }
    }

    fn list_v6(&self, list: List, key: &V6Key) -> Option<ListEntry> {
        match list {
            List::Allow => self.allow_v6.get(key).copied(),
            List::Block => self.block_v6.get(key).copied(),
        }
    }

    /// Computed from the entries themselves: the ground truth the kernel's
    /// maintained summary is compared with.
    fn v4_slash24(&self, list: List, addr: u32) -> bool {
        let entries = match list {
            List::Allow => &self.allow_v4,
            List::Block => &self.block_v4,
        };
        let slot = slash24::slot(list.index(), addr);
        entries.keys().any(|k| {
            k.prefix_len >= u32::from(slash24::MIN_LEN)
                && slash24::slot(list.index(), u32::from_ne_bytes(k.addr)) == slot
        })
    }

    fn ban_v4(&self, key: &V4Key) -> Option<BanEntry> {
        self.bans_v4.borrow().get(key).copied()
    }

    fn ban_v6(&self, key: &V6Key) -> Option<BanEntry> {
        self.bans_v6.borrow().get(key).copied()
    }

    fn offences_v4(&self, key: &V4Key) -> u32 {
        self.ban_v4(key).map_or(0, |b| b.offences)
    }

    fn offences_v6(&self, key: &V6Key) -> u32 {
        self.ban_v6(key).map_or(0, |b| b.offences)
    }

    fn set_ban_v4(&self, key: &V4Key, ban: &BanEntry) -> bool {
        insert_bounded(
            &mut self.bans_v4.borrow_mut(),
            *key,
            *ban,
            self.ban_capacity,
        )
    }

    fn set_ban_v6(&self, key: &V6Key, ban: &BanEntry) -> bool {
        insert_bounded(
            &mut self.bans_v6.borrow_mut(),
            *key,
            *ban,
            self.ban_capacity,
        )
    }

    fn policy(&self, index: u32) -> Option<&Policy> {
        self.policies.get(index as usize)
    }

    fn with_rate_set<R>(
        &self,
        index: u32,
        f: impl FnOnce(&mut RateSet, &mut RateBuckets, &mut RateExtra) -> R,
    ) -> Option<R> {
        let i = index as usize;
        let mut sets = self.rate_sets.borrow_mut();
        let mut buckets = self.rate_buckets.borrow_mut();
        let mut extra = self.rate_extra.borrow_mut();
        Some(f(sets.get_mut(i)?, buckets.get_mut(i)?, extra.get_mut(i)?))
    }

    fn with_flood<R>(&self, group: u32, f: impl FnOnce(&mut FloodState) -> R) -> Option<R> {
        let mut flood = self.flood.borrow_mut();
        if flood.is_empty() {
            flood.resize(MAX_POLICIES as usize, FloodState::default());
        }
        flood.get_mut(group as usize).map(f)
    }

    fn ban_exempt(&self, src: &Source) -> bool {
        let bits = |a: &Addr| u128::from_be_bytes(a.to_bytes());
        // IPv4 sits in the first four bytes: its prefix is the top bits too.
        self.no_ban.iter().any(|(family, addr, len)| {
            let shift = 128 - u32::from((*len).min(128));
            *family == src.family && (*len == 0 || bits(addr) >> shift == bits(&src.addr) >> shift)
        })
    }

    fn verified(&self, src: &Source, now: u64) -> bool {
        self.verified
            .borrow()
            .get(&(src.family, src.addr))
            .is_some_and(|&expires| now < expires)
    }

    fn set_verified(&self, src: &Source, expires_ns: u64) {
        self.verified
            .borrow_mut()
            .insert((src.family, src.addr), expires_ns);
    }

    fn tcp_at(&self) -> Option<TcpAt> {
        tcp_at(&self.frame.borrow().as_slice())
    }

    /// The kernel answers only a SYN whose whole TCP header is in the frame.
    fn challenge(&self, pkt: &Packet, at: &TcpAt) -> bool {
        let whole = at.hlen >= 20 && at.l4 + at.hlen <= self.frame.borrow().len();
        let answered = whole && self.listening.contains(&pkt.dport);
        if answered {
            self.challenged.borrow_mut().push(*pkt);
        }
        answered
    }

    fn check_ack(&self, pkt: &Packet, _at: &TcpAt) -> AckCheck {
        if self.listening.contains(&pkt.dport) {
            AckCheck::BadCookie
        } else {
            AckCheck::NoSocket
        }
    }

    fn count(&self, stat: u32) {
        if let Some(c) = self.stats.borrow_mut().get_mut(stat as usize) {
            *c += 1;
        }
    }

    fn ban_started(&self, ban: &BanStarted) {
        self.bans_started.borrow_mut().push(*ban);
    }
}

/// Inserts like a non-evicting BPF hash map: replacing always works, a new key
/// only while there is room.
fn insert_bounded<K: std::hash::Hash + Eq, V>(
    map: &mut HashMap<K, V>,
    key: K,
    value: V,
    capacity: usize,
) -> bool {
    if map.len() >= capacity && !map.contains_key(&key) {
        return false;
    }
    map.insert(key, value);
    true
}

/// The whole data plane: configuration plus tables.
#[derive(Debug, Default)]
pub struct Model {
    pub config: Config,
    pub tables: ModelTables,
}

impl Model {
    /// An empty model with `rate_sets` sets in its rate table (a power of two).
    pub fn new(rate_sets: usize, ban_capacity: usize) -> Self {
        let sets = rate_sets.next_power_of_two();
        let mut m = Self::default();
        m.config.rate_set_mask = (sets - 1) as u32;
        m.tables.rate_sets = RefCell::new(std::vec![RateSet::default(); sets]);
        m.tables.rate_buckets = RefCell::new(std::vec![RateBuckets::default(); sets]);
        m.tables.rate_extra = RefCell::new(std::vec![RateExtra::default(); sets]);
        m.tables.ban_capacity = ban_capacity;
        m
    }

    /// The verdict for one frame at monotonic time `now_ns`.
    pub fn evaluate(&self, frame: &[u8], now_ns: u64) -> Verdict {
        *self.tables.frame.borrow_mut() = frame.to_vec();
        decide(
            &self.tables,
            &self.config,
            &parse(&frame),
            frame.len() as u32,
            &|| now_ns,
        )
    }
}
