//! What the data plane reports, decoded once for every reader: the packet
//! counters by interface, action and reason, and how full each table is.
//! The control API's `stats` and `status` and the metrics scrape all read
//! these, so they cannot disagree on a name or a number.
use rampart_common::{
    abi::{self, BanEntry, action, counter_index, map_name, reason},
    decide::List,
};

use super::{Core, CoreError};
use crate::{
    api::{StatRow, TableFill},
    prefix::Prefix,
};

/// The counter slot of interfaces without their own (see
/// `Core::assign_iface_slot`), and its name.
const OTHER: (u32, &str) = (0, "other");

impl Core {
    /// Every counter, summed over CPUs, for each named interface slot and
    /// the shared "other" slot (`slot` 0), zeros included.
    pub fn counter_rows(&self, slots: &[(u32, String)]) -> Result<Vec<(u32, StatRow)>, CoreError> {
        let counters = self.dp.counters()?;
        let mut rows = Vec::new();
        let named = slots.iter().map(|(slot, name)| (*slot, name.as_str()));
        for (slot, name) in named.chain(std::iter::once(OTHER)) {
            for a in 0..action::COUNT as u8 {
                for r in 0..reason::COUNT as u8 {
                    // A slot past the table (more interfaces than slots,
                    // which config validation refuses) reads as zero.
                    let c = counters
                        .get(counter_index(slot, a, r) as usize)
                        .copied()
                        .unwrap_or_default();
                    rows.push((
                        slot,
                        StatRow {
                            interface: name.to_string(),
                            action: action::NAMES[a as usize].into(),
                            reason: reason::NAMES[r as usize].into(),
                            packets: c.packets,
                            bytes: c.bytes,
                        },
                    ));
                }
            }
        }
        Ok(rows)
    }

    /// Entries and capacity of every table, named by its map (and pin file).
    /// The rate table counts sources (four per set), as last counted by
    /// housekeeping. `bans` is `dp.bans()`, which the caller may need too:
    /// the ban tables are walked once.
    pub fn table_fill(&self, bans: &[(Prefix, BanEntry)]) -> Vec<TableFill> {
        let caps = self.dp.capacities();
        let (a4, a6) = self.dp.list_len(List::Allow);
        let (b4, b6) = self.dp.list_len(List::Block);
        let (sa4, sa6) = self.dp.list_spilled(List::Allow);
        let (sb4, sb6) = self.dp.list_spilled(List::Block);
        let ban4 = bans.iter().filter(|(p, _)| p.is_ipv4()).count() as u64;
        let fill = |table: &str, entries: u64, capacity: u32| TableFill {
            table: table.into(),
            entries,
            capacity: u64::from(capacity),
        };
        vec![
            fill(map_name::ALLOW_V4, a4, caps.allow_v4),
            fill(map_name::ALLOW_V6, a6, caps.allow_v6),
            fill(map_name::BLOCK_V4, b4, caps.block_v4),
            fill(map_name::BLOCK_V6, b6, caps.block_v6),
            fill(map_name::BANS_V4, ban4, caps.bans_v4),
            fill(map_name::BANS_V6, bans.len() as u64 - ban4, caps.bans_v6),
            fill(
                map_name::POLICIES,
                u64::from(self.dp.config().policy_count),
                abi::MAX_POLICIES,
            ),
            // Keys whose two buckets were both full: a few per million
            // entries is expected; many mean a table too small for its list.
            fill(map_name::ALLOW_V4_SPILL, sa4, caps.allow_v4.max(1)),
            fill(map_name::ALLOW_V6_SPILL, sa6, caps.allow_v6.max(1)),
            fill(map_name::BLOCK_V4_SPILL, sb4, caps.block_v4.max(1)),
            fill(map_name::BLOCK_V6_SPILL, sb6, caps.block_v6.max(1)),
            TableFill {
                table: map_name::RATE_SETS.into(),
                entries: self.rate_slots_used,
                capacity: u64::from(caps.rate_sets) * abi::RATE_WAYS as u64,
            },
        ]
    }
}
