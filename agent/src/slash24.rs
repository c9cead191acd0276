//! The agent's side of the IPv4 /24 summary (`abi::slash24`): how many
//! entries of /24 or longer each list holds in each /24, and the bit words
//! as the kernel holds them, so a change writes only the words it touches.
//!
//! Bits follow the same order as prefix lengths do: set after the entry is
//! in, cleared after the last one is out, so an entry is never skipped
//! while it is in a list, only not yet visible for a moment.
use std::collections::{BTreeSet, HashMap};

use rampart_common::{
    abi::{V4Key, slash24},
    decide::List,
};

#[derive(Default)]
pub(crate) struct Slash24Summary {
    /// The /24's bit (`slash24::bit`) -> entries of /24 or longer in it.
    counts: HashMap<u32, u32>,
    /// Words with a set bit, as last computed.
    words: HashMap<u32, u64>,
    /// Words changed since the last `take_dirty`.
    dirty: BTreeSet<u32>,
}

impl Slash24Summary {
    /// Counts an entry new to `list`.
    pub(crate) fn add(&mut self, list: List, key: &V4Key) {
        let Some(id) = count_key(list, key) else {
            return;
        };
        let n = self.counts.entry(id).or_default();
        *n += 1;
        if *n == 1 {
            self.flip(list, key, true);
        }
    }

    /// Uncounts an entry gone from `list`.
    pub(crate) fn remove(&mut self, list: List, key: &V4Key) {
        let Some(id) = count_key(list, key) else {
            return;
        };
        let Some(n) = self.counts.get_mut(&id) else {
            return;
        };
        *n -= 1;
        if *n == 0 {
            self.counts.remove(&id);
            self.flip(list, key, false);
        }
    }

    fn flip(&mut self, list: List, key: &V4Key, on: bool) {
        let (word, bit) = slash24::slot(list.index(), u32::from_ne_bytes(key.addr));
        let w = self.words.entry(word).or_default();
        if on {
            *w |= bit;
        } else {
            *w &= !bit;
        }
        if *w == 0 {
            self.words.remove(&word);
        }
        self.dirty.insert(word);
    }

    /// The words changed since the last call, with their new values.
    pub(crate) fn take_dirty(&mut self) -> Vec<(u32, u64)> {
        std::mem::take(&mut self.dirty)
            .into_iter()
            .map(|w| (w, self.words.get(&w).copied().unwrap_or(0)))
            .collect()
    }

    /// Every word of the map, for writing it whole (after re-adopting
    /// pinned maps, whose summary may predate this agent).
    pub(crate) fn all_words(&mut self) -> Vec<u64> {
        self.dirty.clear();
        let mut all = vec![0; slash24::WORDS as usize];
        for (&w, &v) in &self.words {
            all[w as usize] = v;
        }
        all
    }
}

/// The count slot of an entry, or `None` for one shorter than the summary.
fn count_key(list: List, key: &V4Key) -> Option<u32> {
    if key.prefix_len < u32::from(slash24::MIN_LEN) {
        return None;
    }
    Some(slash24::bit(list.index(), u32::from_ne_bytes(key.addr)))
}

#[cfg(test)]
mod tests {
    use rampart_common::addr::v4_key;

    use super::*;

    #[test]
    fn a_bit_lives_while_its_slash24_holds_an_entry() {
        let mut s = Slash24Summary::default();
        let a = v4_key([192, 0, 2, 7], 32);
        let b = v4_key([192, 0, 2, 9], 32);
        let c = v4_key([192, 0, 2, 0], 24);
        let (word, bit) = slash24::slot(List::Block.index(), u32::from_ne_bytes(a.addr));
        s.add(List::Block, &a);
        s.add(List::Block, &b);
        s.add(List::Block, &c);
        assert_eq!(s.take_dirty(), vec![(word, bit)]);
        s.remove(List::Block, &a);
        s.remove(List::Block, &c);
        assert!(s.take_dirty().is_empty(), "one entry is still there");
        s.remove(List::Block, &b);
        assert_eq!(s.take_dirty(), vec![(word, 0)]);
    }

    #[test]
    fn short_prefixes_and_other_lists_are_apart() {
        let mut s = Slash24Summary::default();
        s.add(List::Block, &v4_key([10, 0, 0, 0], 8));
        assert!(s.take_dirty().is_empty());
        let k = v4_key([10, 1, 2, 3], 32);
        s.add(List::Allow, &k);
        s.add(List::Block, &k);
        let dirty = s.take_dirty();
        assert_eq!(dirty.len(), 2);
        assert_eq!(dirty[1].0 - dirty[0].0, slash24::WORDS_PER_LIST);
        let all = s.all_words();
        assert_eq!(all.iter().filter(|w| **w != 0).count(), 2);
    }
}
