//! The flood defence's tables: each policy group's SYN-rate and newcomer
//! state, the verified sources, and whether SYN cookies can work here.
use std::net::IpAddr;

use rampart_common::{
    abi::{Addr, FloodState, MAX_POLICIES, VERIFIED_HINT_WORDS, Verified, config_flag, map_name},
    flood::verified_hint,
};

use super::{Datapath, DatapathError};
use crate::bpf_sys::map_err;

/// The key a verified IPv4 source has in `VERIFIED_V4`: the address word
/// as the program reads it from the packet.
fn v4_word(a: std::net::Ipv4Addr) -> u32 {
    u32::from_ne_bytes(a.octets())
}

/// An address as the program holds it (IPv4 in the first word).
fn addr_of(ip: IpAddr) -> Addr {
    match ip {
        IpAddr::V4(a) => Addr::from_v4_word(v4_word(a)),
        IpAddr::V6(a) => Addr::from_bytes(a.octets()),
    }
}

impl Datapath {
    /// Every policy group's flood-defence state, by group index.
    pub fn flood_states(&self) -> Result<Vec<FloodState>, DatapathError> {
        (0..MAX_POLICIES)
            .map(|i| self.flood.get(&i, 0).map_err(map_err(map_name::FLOOD)))
            .collect()
    }

    /// When `ip` stops being verified (monotonic ns), if it is listed.
    pub fn verified(&self, ip: IpAddr) -> Option<Verified> {
        match ip {
            IpAddr::V4(a) => self.verified_v4.get(&v4_word(a), 0).ok(),
            IpAddr::V6(a) => self.verified_v6.get(&Addr::from_bytes(a.octets()), 0).ok(),
        }
    }

    /// Records `ip` as verified until `expires_ns` (as the program does when
    /// a source proves itself).
    pub fn set_verified(&mut self, ip: IpAddr, expires_ns: u64) -> Result<(), DatapathError> {
        let v = Verified { expires_ns };
        let (word, bit) = verified_hint(&addr_of(ip), self.config.hash_seed);
        let w = self
            .verified_hint
            .get(&word, 0)
            .map_err(map_err(map_name::VERIFIED_HINT))?;
        self.verified_hint
            .set(word, w | bit, 0)
            .map_err(map_err(map_name::VERIFIED_HINT))?;
        match ip {
            IpAddr::V4(a) => self
                .verified_v4
                .insert(v4_word(a), v, 0)
                .map_err(map_err(map_name::VERIFIED_V4)),
            IpAddr::V6(a) => self
                .verified_v6
                .insert(Addr::from_bytes(a.octets()), v, 0)
                .map_err(map_err(map_name::VERIFIED_V6)),
        }
    }

    /// Rewrites `VERIFIED_HINT` from the sources verified at `now_ns`, so
    /// that bits of expired or evicted ones stop costing a lookup. A source
    /// verified meanwhile may lose its bit: it is challenged again and
    /// proves itself again.
    pub fn rebuild_verified_hint(&mut self, now_ns: u64) -> Result<(), DatapathError> {
        let seed = self.config.hash_seed;
        let mut words = vec![0u64; VERIFIED_HINT_WORDS as usize];
        let mut mark = |a: &Addr| {
            let (w, bit) = verified_hint(a, seed);
            words[w as usize] |= bit;
        };
        for (k, v) in self.verified_v4.iter().filter_map(Result::ok) {
            if v.expires_ns > now_ns {
                mark(&Addr::from_v4_word(k));
            }
        }
        for (k, v) in self.verified_v6.iter().filter_map(Result::ok) {
            if v.expires_ns > now_ns {
                mark(&k);
            }
        }
        for (i, w) in words.into_iter().enumerate() {
            self.verified_hint
                .set(i as u32, w, 0)
                .map_err(map_err(map_name::VERIFIED_HINT))?;
        }
        Ok(())
    }

    /// Sources verified at `now_ns` (a walk of both tables: for the slow
    /// gauges, not per request).
    pub fn verified_count(&self, now_ns: u64) -> usize {
        let live = |v: Verified| v.expires_ns > now_ns;
        let v4 = self
            .verified_v4
            .iter()
            .filter_map(Result::ok)
            .filter(|(_, v)| live(*v))
            .count();
        let v6 = self
            .verified_v6
            .iter()
            .filter_map(Result::ok)
            .filter(|(_, v)| live(*v))
            .count();
        v4 + v6
    }

    /// Lets the program answer SYNs with cookies, or forbids it where they
    /// cannot work (the agent's probe of the host).
    pub fn set_syn_cookies_available(&mut self, available: bool) -> Result<(), DatapathError> {
        self.update_config(|c| {
            if available {
                c.flags &= !config_flag::NO_SYN_COOKIES;
            } else {
                c.flags |= config_flag::NO_SYN_COOKIES;
            }
        })
    }
}
