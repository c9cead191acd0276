//! Rate-limit policies and the bans they start: the policy array, the ban
//! tables, and the ban prefix lengths the program probes.
use aya::maps::MapError;
use rampart_common::abi::{BanEntry, MAX_POLICIES, Policy, map_name, policy_flag};

use super::{Datapath, DatapathError, lens_of, unreachable_family};
use crate::{bpf_sys::map_err, prefix::Prefix};

impl Datapath {
    /// Replaces the policy list. Unchanged policies at the same index keep
    /// their buckets (the rate table is keyed by index).
    pub fn set_policies(&mut self, policies: &[Policy]) -> Result<(), DatapathError> {
        if policies.len() > MAX_POLICIES as usize {
            return Err(DatapathError::TooManyPolicies {
                max: MAX_POLICIES,
                got: policies.len(),
            });
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
}
