//! Replacing a whole feed so that the data plane sees the old version or
//! the new one, never a mix and never an empty list.
//!
//! Entries carry two "hidden in generation N" bits and the config says which
//! generation is in force. A swap stages the new version under the current
//! generation g: entries that only the new version brings are written hidden
//! in g, entries that only the old version held are marked hidden in the
//! next generation. One config publish then flips to the next generation,
//! and a clean-up deletes the leavers and clears the staging bits. Entries
//! in both versions are never touched, so a source listed by both is
//! matched at every instant.
use std::collections::HashSet;

use rampart_common::abi::entry_flag;
use serde::{Deserialize, Serialize};

use super::{Core, CoreError, entry_for};
use rampart_common::decide::List;

use crate::{feed::MAX_FEEDS, prefix::OverlapIndex, prefix::Prefix};

/// What one feed version did to the lists.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct FeedApplied {
    /// Entries the feed now holds.
    pub entries: u64,
    pub added: u64,
    pub removed: u64,
    /// Block entries skipped because they overlap a protected range.
    pub skipped_protected: u64,
    /// Block entries skipped because they overlap an allowlisted range.
    pub skipped_allowlisted: u64,
}

const HIDDEN: [u32; 2] = [entry_flag::HIDDEN_GEN0, entry_flag::HIDDEN_GEN1];

impl Core {
    fn feed_slot(&mut self, name: &str) -> Result<u32, CoreError> {
        if let Some(s) = self.feed_slots.get(name) {
            return Ok(*s);
        }
        let used: HashSet<u32> = self.feed_slots.values().copied().collect();
        let slot = (0..MAX_FEEDS as u32)
            .find(|s| !used.contains(s))
            .ok_or_else(|| CoreError::Refused(format!("more than {MAX_FEEDS} feeds")))?;
        self.feed_slots.insert(name.to_string(), slot);
        Ok(slot)
    }

    /// Names of the feeds that hold entries.
    pub fn feed_names_known(&self) -> Vec<String> {
        self.feed_slots.keys().cloned().collect()
    }

    /// Replaces feed `name`'s entries in list `kind` with `prefixes`,
    /// atomically for the data plane. Block entries that overlap protected or
    /// allowlisted ranges are skipped and counted. `adopted`: keys the kernel
    /// already holds that the registry does not know yet (start-up after a
    /// restart); they are written visible at once, since they already are.
    pub fn replace_feed(
        &mut self,
        name: &str,
        kind: List,
        prefixes: &[Prefix],
        adopted: Option<&HashSet<Prefix>>,
        max_change_percent: Option<u32>,
    ) -> Result<FeedApplied, CoreError> {
        let slot = self.feed_slot(name)?;
        let bit = 1u64 << slot;
        let mut applied = FeedApplied::default();

        // Sorted vectors rather than hash sets: the difference is then one
        // merge, and the registry (a B-tree) is walked in order below.
        let mut wanted: Vec<Prefix> = Vec::with_capacity(prefixes.len());
        if kind == List::Block {
            let protected = OverlapIndex::new(&self.protected);
            let allowed = OverlapIndex::new(
                self.entries
                    .keys()
                    .filter(|(k, _)| *k == List::Allow)
                    .map(|(_, p)| p),
            );
            for p in prefixes {
                if protected.overlaps(p) {
                    applied.skipped_protected += 1;
                } else if allowed.overlaps(p) {
                    applied.skipped_allowlisted += 1;
                } else {
                    wanted.push(*p);
                }
            }
        } else {
            wanted.extend_from_slice(prefixes);
        }
        wanted.sort_unstable_by_key(Prefix::order_key);
        wanted.dedup();
        // In key order already: the registry is sorted by (list, prefix).
        let old: Vec<Prefix> = self
            .entries
            .iter()
            .filter(|((k, _), s)| *k == kind && s.feeds & bit != 0)
            .map(|((_, p), _)| *p)
            .collect();
        let (arriving, leaving) = sorted_difference(&wanted, &old);
        applied.entries = wanted.len() as u64;
        applied.added = arriving.len() as u64;
        applied.removed = leaving.len() as u64;
        if arriving.is_empty() && leaving.is_empty() {
            return Ok(applied);
        }
        if let Some(why) = max_change_percent.and_then(|pct| {
            crate::feed::change_refused(old.len(), arriving.len(), leaving.len(), pct)
        }) {
            return Err(CoreError::Refused(why));
        }
        self.check_room(kind, &arriving, name)?;

        let generation = self.dp.list_generation() as usize;
        let hide_now = HIDDEN[generation];
        let hide_next = HIDDEN[1 - generation];
        let adopted_has = |p: &Prefix| adopted.is_some_and(|a| a.contains(p));
        let dry = self.cfg.config.blocklist.dry_run;

        // Stage: arrivals hidden now, leavers hidden from the next generation.
        let mut staged = Vec::with_capacity(arriving.len() + leaving.len());
        // Arrivals new to the kernel, with the entry they settle to.
        let mut fresh = Vec::new();
        for p in &arriving {
            let s = self.entries.entry((kind, *p)).or_default();
            let in_kernel = !s.is_empty() || adopted_has(p);
            s.feeds |= bit;
            let Some(entry) = entry_for(kind, s, dry) else {
                continue;
            };
            if in_kernel {
                staged.push((*p, entry));
            } else {
                fresh.push((*p, entry));
                let mut hidden = entry;
                hidden.flags |= hide_now;
                staged.push((*p, hidden));
            }
        }
        let mut gone = Vec::new();
        for p in &leaving {
            let key = (kind, *p);
            let before = self.kernel_entry(&key);
            if let Some(s) = self.entries.get_mut(&key) {
                s.feeds &= !bit;
            }
            match (self.kernel_entry(&key), before) {
                (Some(entry), _) => staged.push((*p, entry)),
                (None, Some(mut entry)) => {
                    entry.flags |= hide_next;
                    staged.push((*p, entry));
                    gone.push(*p);
                }
                (None, None) => {}
            }
        }
        let list = kind;
        self.dp.list_insert_many(list, &staged)?;

        // The switch: one publish.
        self.dp.flip_list_generation()?;

        // Clean up: leavers out, arrivals' staging bit cleared.
        self.dp.list_remove_many(list, &gone)?;
        for p in &gone {
            self.entries.remove(&(kind, *p));
        }
        self.dp.list_insert_many(list, &fresh)?;
        Ok(applied)
    }

    /// Removes a feed that is no longer configured (atomically, as a swap
    /// to an empty version) and frees its slot.
    pub fn drop_feed(&mut self, name: &str) -> Result<u64, CoreError> {
        if !self.feed_slots.contains_key(name) {
            return Ok(0);
        }
        let mut removed = 0;
        for kind in [List::Allow, List::Block] {
            removed += self.replace_feed(name, kind, &[], None, None)?.removed;
        }
        self.feed_slots.remove(name);
        Ok(removed)
    }

    /// Refuses a version whose new entries do not fit; the old one stays.
    fn check_room(&self, kind: List, arriving: &[Prefix], name: &str) -> Result<(), CoreError> {
        self.room_for(kind, arriving).map_err(|full| {
            CoreError::Refused(format!(
                "feed {name} does not fit: {full}; the last good version stays (raise [capacity] and restart)"
            ))
        })
    }
}

/// (in `a` only, in `b` only) for two sorted, duplicate-free lists.
fn sorted_difference(a: &[Prefix], b: &[Prefix]) -> (Vec<Prefix>, Vec<Prefix>) {
    use std::cmp::Ordering::{Equal, Greater, Less};
    let (mut only_a, mut only_b) = (Vec::new(), Vec::new());
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        match a[i].cmp(&b[j]) {
            Less => {
                only_a.push(a[i]);
                i += 1;
            }
            Greater => {
                only_b.push(b[j]);
                j += 1;
            }
            Equal => {
                i += 1;
                j += 1;
            }
        }
    }
    only_a.extend_from_slice(&a[i..]);
    only_b.extend_from_slice(&b[j..]);
    (only_a, only_b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_difference_of_sorted_lists_splits_both_ways() {
        let p = |s: &[&str]| -> Vec<Prefix> { s.iter().map(|x| x.parse().unwrap()).collect() };
        let new = p(&["10.0.0.1", "10.0.0.3", "10.0.0.4", "2001:db8::/48"]);
        let old = p(&["10.0.0.2", "10.0.0.3", "2001:db8::/32", "2001:db8::/48"]);
        let (arriving, leaving) = sorted_difference(&new, &old);
        assert_eq!(arriving, p(&["10.0.0.1", "10.0.0.4"]));
        assert_eq!(leaving, p(&["10.0.0.2", "2001:db8::/32"]));
        assert_eq!(sorted_difference(&new, &[]), (new.clone(), vec![]));
        assert_eq!(sorted_difference(&[], &old), (vec![], old.clone()));
    }
}
