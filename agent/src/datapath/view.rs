//! The live maps as the shared decision code reads them, for `explain`.
use aya::maps::MapError;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use rampart_common::{
    abi::{
        BanEntry, FloodState, ListEntry, Policy, RateBuckets, RateExtra, RateSet, V4Key, V6Key,
        slash24,
    },
    decide::{AckCheck, BanStarted, List, Tables},
    parse::{Packet, Source, TcpAt, tcp_at},
};

use super::Datapath;

/// The live maps as the decision code sees them, read-only, with the frame
/// being asked about: rate-table sets are copied, bans are not written, so
/// asking changes nothing.
pub struct ReadOnlyView<'a>(pub &'a Datapath, pub &'a [u8]);

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

    fn with_flood<R>(&self, group: u32, f: impl FnOnce(&mut FloodState) -> R) -> Option<R> {
        let mut fs = self.0.flood.get(&group, 0).ok()?;
        Some(f(&mut fs))
    }

    fn verified(&self, src: &Source, now: u64) -> bool {
        let b = src.addr.to_bytes();
        let ip = if src.family == 4 {
            IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]))
        } else {
            IpAddr::V6(Ipv6Addr::from(b))
        };
        self.0.verified(ip).is_some_and(|v| now < v.expires_ns)
    }

    fn set_verified(&self, _src: &Source, _expires_ns: u64) {}

    fn ban_exempt(&self, src: &Source) -> bool {
        self.0.ban_exempt(src)
    }

    /// As if a listener answered: what the program does while one listens.
    fn challenge(&self, _pkt: &Packet, _at: &TcpAt) -> bool {
        true
    }

    fn check_ack(&self, _pkt: &Packet, _at: &TcpAt) -> AckCheck {
        AckCheck::NoSocket
    }

    fn tcp_at(&self) -> Option<TcpAt> {
        tcp_at(&self.1)
    }

    fn count(&self, _stat: u32) {}

    fn ban_started(&self, _ban: &BanStarted) {}
}
