//! The ranges the program never bans by itself (`[bans] exempt`): a flood
//! spoofing a partner's address gets it rate-limited, never banned.
use std::net::IpAddr;

use aya::maps::lpm_trie::Key;
use rampart_common::{
    abi::{Addr, map_name},
    parse::Source,
};

use super::{Datapath, DatapathError};
use crate::{bpf_sys::map_err, prefix::Prefix};

fn v4_key(p: &Prefix, a: std::net::Ipv4Addr) -> Key<u32> {
    Key::new(u32::from(p.prefix_len()), u32::from_ne_bytes(a.octets()))
}

fn v6_key(p: &Prefix, a: std::net::Ipv6Addr) -> Key<Addr> {
    Key::new(u32::from(p.prefix_len()), Addr::from_bytes(a.octets()))
}

impl Datapath {
    /// Makes the exempt ranges exactly `ranges`: those that left go, new
    /// ones come in (config validation bounds their number).
    pub fn set_ban_exempt(&mut self, ranges: &[Prefix]) -> Result<(), DatapathError> {
        let v4: Vec<Key<u32>> = self
            .no_ban_v4
            .keys()
            .collect::<Result<_, _>>()
            .map_err(map_err(map_name::NO_BAN_V4))?;
        for k in v4 {
            self.no_ban_v4
                .remove(&k)
                .map_err(map_err(map_name::NO_BAN_V4))?;
        }
        let v6: Vec<Key<Addr>> = self
            .no_ban_v6
            .keys()
            .collect::<Result<_, _>>()
            .map_err(map_err(map_name::NO_BAN_V6))?;
        for k in v6 {
            self.no_ban_v6
                .remove(&k)
                .map_err(map_err(map_name::NO_BAN_V6))?;
        }
        for p in ranges {
            match p.addr() {
                IpAddr::V4(a) => self
                    .no_ban_v4
                    .insert(&v4_key(p, a), 1, 0)
                    .map_err(map_err(map_name::NO_BAN_V4))?,
                IpAddr::V6(a) => self
                    .no_ban_v6
                    .insert(&v6_key(p, a), 1, 0)
                    .map_err(map_err(map_name::NO_BAN_V6))?,
            }
        }
        Ok(())
    }

    /// Whether the program would spare `src` a ban.
    pub fn ban_exempt(&self, src: &Source) -> bool {
        let b = src.addr.to_bytes();
        if src.family == 4 {
            let word = u32::from_ne_bytes([b[0], b[1], b[2], b[3]]);
            self.no_ban_v4.get(&Key::new(32, word), 0).is_ok()
        } else {
            self.no_ban_v6.get(&Key::new(128, src.addr), 0).is_ok()
        }
    }
}
