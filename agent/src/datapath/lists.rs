//! The allow and block lists in the kernel: entries, the prefix lengths
//! the program probes for each list and family, and the IPv4 /24 summary,
//! kept consistent so no entry is ever half visible.
use std::collections::BTreeMap;

use rampart_common::{
    abi::{ListEntry, MAX_PREFIX_LENS, PrefixLens, V4Key, V6Key, config_flag, slash24},
    decide::List,
};

use super::{Datapath, DatapathError, lens_of, unreachable_family};
use crate::{
    bpf_sys::batch_update, list_table::ListTable, prefix::Prefix, slash24::Slash24Summary,
};

/// How many entries of each prefix length a list holds, per family, so the
/// kernel is told exactly which lengths to probe.
#[derive(Debug, Default, Clone)]
pub(super) struct LenCounts {
    pub(super) v4: BTreeMap<u8, u64>,
    pub(super) v6: BTreeMap<u8, u64>,
}

impl LenCounts {
    fn family(&mut self, v4: bool) -> &mut BTreeMap<u8, u64> {
        if v4 { &mut self.v4 } else { &mut self.v6 }
    }

    pub(super) fn publish(map: &BTreeMap<u8, u64>) -> PrefixLens {
        lens_of(map.keys().copied().collect())
    }
}

impl Datapath {
    /// Rebuilds the prefix-length counts and the /24 summary from the keys
    /// the tables hold (after re-adopting pinned maps) and republishes them.
    pub(super) fn recount_lens(
        &mut self,
        allow_v4: &[V4Key],
        allow_v6: &[V6Key],
        block_v4: &[V4Key],
        block_v6: &[V6Key],
    ) -> Result<(), DatapathError> {
        let mut allow = LenCounts::default();
        let mut block = LenCounts::default();
        let mut summary = Slash24Summary::default();
        for (list, counts, v4, v6) in [
            (List::Allow, &mut allow, allow_v4, allow_v6),
            (List::Block, &mut block, block_v4, block_v6),
        ] {
            for k in v4 {
                *counts.v4.entry(k.prefix_len as u8).or_default() += 1;
                summary.add(list, k);
            }
            for k in v6 {
                *counts.v6.entry(k.prefix_len as u8).or_default() += 1;
            }
        }
        self.allow_lens = allow;
        self.block_lens = block;
        // Written whole: pinned maps may come from an agent that stopped
        // between an entry and its bit.
        let words = summary.all_words();
        let index: Vec<u32> = (0..slash24::WORDS).collect();
        batch_update(&self.slash24_fd, &index, &words)?;
        self.slash24 = summary;
        self.publish(self.config)
    }

    /// Writes the summary words that changed (after the entries they cover
    /// went in, or came out).
    fn flush_slash24(&mut self) -> Result<(), DatapathError> {
        let (index, words): (Vec<u32>, Vec<u64>) = self.slash24.take_dirty().into_iter().unzip();
        batch_update(&self.slash24_fd, &index, &words)
    }

    fn lens_mut(&mut self, list: List) -> &mut LenCounts {
        match list {
            List::Allow => &mut self.allow_lens,
            List::Block => &mut self.block_lens,
        }
    }

    pub(super) fn tables(&self, list: List) -> (&ListTable<V4Key>, &ListTable<V6Key>) {
        match list {
            List::Allow => (&self.allow_v4, &self.allow_v6),
            List::Block => (&self.block_v4, &self.block_v6),
        }
    }

    fn tables_mut(&mut self, list: List) -> (&mut ListTable<V4Key>, &mut ListTable<V6Key>) {
        match list {
            List::Allow => (&mut self.allow_v4, &mut self.allow_v6),
            List::Block => (&mut self.block_v4, &mut self.block_v6),
        }
    }

    /// Adds or replaces a list entry.
    pub fn list_insert(
        &mut self,
        list: List,
        prefix: &Prefix,
        entry: ListEntry,
    ) -> Result<(), DatapathError> {
        self.list_insert_many(list, &[(*prefix, entry)])
    }

    /// Adds or replaces many entries with batch map updates (one syscall per
    /// 64k entries). Entries are in their table before a new prefix length
    /// or /24 bit is published, so none is ever half visible.
    pub fn list_insert_many(
        &mut self,
        list: List,
        items: &[(Prefix, ListEntry)],
    ) -> Result<(), DatapathError> {
        let counts = self.lens_mut(list);
        for v4 in [true, false] {
            // A bitmap, not a set: this runs over every item of a million-entry import.
            let mut seen = [false; 129];
            for len in counts.family(v4).keys() {
                seen[usize::from(*len).min(128)] = true;
            }
            for (p, _) in items.iter().filter(|(p, _)| p.is_ipv4() == v4) {
                seen[usize::from(p.prefix_len()).min(128)] = true;
            }
            let distinct = seen.iter().filter(|s| **s).count();
            if distinct > MAX_PREFIX_LENS {
                return Err(DatapathError::TooManyPrefixLengths {
                    max: MAX_PREFIX_LENS,
                    wanted: distinct,
                });
            }
        }
        let v4: Vec<(V4Key, ListEntry)> = items
            .iter()
            .filter_map(|(p, e)| p.v4_key().map(|k| (k, *e)))
            .collect();
        let v6: Vec<(V6Key, ListEntry)> = items
            .iter()
            .filter_map(|(p, e)| p.v6_key().map(|k| (k, *e)))
            .collect();
        // Each family is counted as soon as its table took it, so a refused
        // IPv6 part leaves the IPv4 part both in and visible.
        let new4 = self.tables_mut(list).0.insert_many(&v4);
        let mut added = BTreeMap::<(bool, u8), u64>::new();
        if let Ok(new) = &new4 {
            for ((k, _), _) in v4.iter().zip(new).filter(|(_, n)| **n) {
                self.slash24.add(list, k);
                *added.entry((true, k.prefix_len as u8)).or_default() += 1;
            }
        }
        let new6 = match new4 {
            Ok(_) => self.tables_mut(list).1.insert_many(&v6),
            Err(e) => Err(e),
        };
        if let Ok(new) = &new6 {
            for ((k, _), _) in v6.iter().zip(new).filter(|(_, n)| **n) {
                *added.entry((false, k.prefix_len as u8)).or_default() += 1;
            }
        }
        self.flush_slash24()?;
        let counts = self.lens_mut(list);
        let mut new_len = false;
        for ((v4, len), n) in added {
            let c = counts.family(v4).entry(len).or_default();
            new_len |= *c == 0;
            *c += n;
        }
        if new_len {
            self.publish(self.config)?;
        }
        new6.map(|_| ())
    }

    /// Removes entries (those not in the list are skipped); the prefix
    /// lengths and /24 bits they leave unused are withdrawn afterwards.
    pub fn list_remove_many(
        &mut self,
        list: List,
        prefixes: &[Prefix],
    ) -> Result<u64, DatapathError> {
        let k4: Vec<V4Key> = prefixes.iter().filter_map(Prefix::v4_key).collect();
        let k6: Vec<V6Key> = prefixes.iter().filter_map(Prefix::v6_key).collect();
        let (t4, t6) = self.tables_mut(list);
        let gone4 = t4.remove_many(&k4)?;
        let gone6 = t6.remove_many(&k6)?;
        let mut removed = BTreeMap::<(bool, u8), u64>::new();
        for (k, _) in k4.iter().zip(&gone4).filter(|(_, g)| **g) {
            self.slash24.remove(list, k);
            *removed.entry((true, k.prefix_len as u8)).or_default() += 1;
        }
        for (k, _) in k6.iter().zip(&gone6).filter(|(_, g)| **g) {
            *removed.entry((false, k.prefix_len as u8)).or_default() += 1;
        }
        self.flush_slash24()?;
        let counts = self.lens_mut(list);
        let mut gone = false;
        let mut total = 0;
        for ((v4, len), n) in removed {
            total += n;
            let lens = counts.family(v4);
            if let Some(c) = lens.get_mut(&len) {
                *c = c.saturating_sub(n);
                if *c == 0 {
                    lens.remove(&len);
                    gone = true;
                }
            }
        }
        if gone {
            self.publish(self.config)?;
        }
        Ok(total)
    }

    /// The list generation in force (0 or 1; see `config_flag::LIST_GEN1`).
    pub fn list_generation(&self) -> u32 {
        u32::from(self.config.flags & config_flag::LIST_GEN1 != 0)
    }

    /// Switches every list to the other generation in one config publish.
    pub fn flip_list_generation(&mut self) -> Result<(), DatapathError> {
        self.update_config(|c| c.flags ^= config_flag::LIST_GEN1)
    }

    /// Removes a list entry; false if it was not there.
    pub fn list_remove(&mut self, list: List, prefix: &Prefix) -> Result<bool, DatapathError> {
        Ok(self.list_remove_many(list, std::slice::from_ref(prefix))? == 1)
    }

    pub fn list_get(
        &self,
        list: List,
        prefix: &Prefix,
    ) -> Result<Option<ListEntry>, DatapathError> {
        let (t4, t6) = self.tables(list);
        match (prefix.v4_key(), prefix.v6_key()) {
            (Some(k), _) => t4.get(&k),
            (_, Some(k)) => t6.get(&k),
            _ => unreachable_family(),
        }
    }

    /// Every entry of a list.
    pub fn list_entries(&self, list: List) -> Result<Vec<(Prefix, ListEntry)>, DatapathError> {
        let (t4, t6) = self.tables(list);
        let mut out: Vec<(Prefix, ListEntry)> = t4
            .entries()?
            .iter()
            .map(|(k, e)| (Prefix::from_v4_key(k), *e))
            .collect();
        out.extend(
            t6.entries()?
                .iter()
                .map(|(k, e)| (Prefix::from_v6_key(k), *e)),
        );
        Ok(out)
    }

    /// Entries of a list's tables that found both their buckets full and
    /// sit in the spill maps (v4, v6).
    pub fn list_spilled(&self, list: List) -> (u64, u64) {
        let (t4, t6) = self.tables(list);
        (t4.spilled(), t6.spilled())
    }

    /// Number of entries of a list, per family (v4, v6).
    pub fn list_len(&self, list: List) -> (u64, u64) {
        let l = match list {
            List::Allow => &self.allow_lens,
            List::Block => &self.block_lens,
        };
        (l.v4.values().sum(), l.v6.values().sum())
    }
}
